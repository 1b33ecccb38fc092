"""Columns of runs.csv, shared by the harness and bench/check_results.py."""

STATUSES = ("ok", "failed", "unavailable")

SCENARIO_COLUMNS = ["scenario", "set", "op", "vmm", "run", "status", "reason",
                    "memory", "cpus", "workload", "link", "downtime_target_ms", "bandwidth",
                    "restore", "on_stall", "started_utc"]

# measured values: empty unless status is ok
METRIC_COLUMNS = [
    "total_ms",                  # whole operation, see docs/benchmarks.md
    "command_ms",                # migrations: until the migrate command returned / QEMU said completed
    "boot_ms",                   # launch -> first serial line
    "first_hb_ms",               # launch -> first heartbeat
    "snapshot_ms",               # snapshot command -> snapshot complete and synced
    "snapshot_stopped_ms",       # snapshot command -> the VMM process exited too (--stop / quit)
    "snapshot_bytes",            # allocated on disk (sparse files count holes as 0)
    "snapshot_apparent_bytes",   # sum of file sizes
    "restore_ms",                # launch of the restoring VMM -> first heartbeat, the
                                 # snapshot's files evicted from the page cache first
    "restore_warm_ms",           # the same again with the files read into the page cache
    "downtime_vmm_ms",           # as the VMM reports it
    "downtime_estimate_ms",      # godwit live: its last estimate before the pause (sum of the measured parts)
    "downtime_target_met",       # live: 1 if downtime_vmm_ms <= the target, else 0 (flagged, never a failure)
    "downtime_guest_ms",         # longest gap between consecutive heartbeats during the move
    "switchover_gap_ms",         # source's last heartbeat -> destination's first
    "baseline_gap_ms",           # longest gap in the second before the move (noise floor)
    # where the guest's downtime goes (migrations; docs/benchmarks.md "VMM-reported and
    # guest-observed downtime"): the guest's gaps before, at and after the switch, and the
    # switchover gap split along godwit's migrate-status timeline
    "gap_before_switch_ms",      # longest gap on the source from the start to its last heartbeat
    "gap_before_at_ms",          # when that gap began, from the start of the move
    "gap_after_switch_ms",       # longest gap on the destination in the second after its first
    "switch_pause_lag_ms",       # godwit: the source's last heartbeat -> the pause
    "switch_unreported_ms",      # godwit: COMMIT on the wire + the destination's vCPUs into KVM_RUN
    "switch_resume_lag_ms",      # godwit: the destination's vCPUs running -> its first heartbeat
    "switch_read_lag_ms",        # at least this much of the switchover gap is the destination's
                                 # first heartbeat waiting to be read (lines read together)
    "vmm_total_ms",              # total time as the VMM reports it
    "vmm_bytes",                 # bytes sent as the VMM reports it
    "wire_bytes",                # tx bytes counted on the source's interface
    "rounds",
    "throttle_pct",              # highest throttle seen
    "src_vmhwm_bytes",           # peak RSS of the (source) VMM process
    "dst_vmhwm_bytes",           # peak RSS of the destination / restored VMM
    "rss_anon_bytes", "rss_file_bytes", "rss_shmem_bytes",
    "guest_rss_bytes",           # guest pages resident (VMM report, else large mappings)
    "guest_rss_source",
    "overhead_bytes",            # VmRSS - guest_rss_bytes
    "hb_last_before", "hb_first_after", "check_ok_after",
    "pages_requested",           # post-copy: pages the destination asked for (faults)
    "fault_latency_median_ms", "fault_latency_max_ms",  # post-copy, godwit: request to installed
    "postcopy_hb_gap_ms",        # post-copy: longest heartbeat gap on the destination after
                                 # its first heartbeat until the last page arrived
    "postcopy_hb_gaps_50ms",     # post-copy: how many gaps in that window exceeded 50 ms
    "throughput_bytes_per_s",    # bytes moved / time (snapshot or migration)
    "limit_name", "limit_bytes_per_s", "limit_fraction",
    # snapshots: the disk's own rate beside each snapshot (docs/benchmarks.md), O_DIRECT and
    # fsync'd into the same directory: just before it (as many bytes as the guest had
    # resident) and just after it (the snapshot's allocated bytes); their mean is the limit
    "disk_direct_before_bytes_per_s", "disk_direct_before_bytes",
    "disk_direct_after_bytes_per_s", "disk_direct_after_bytes",
    "disk_probe_buffered",       # 1 if the file system refused O_DIRECT to a probe
    "limit_start_fraction",      # snapshots: throughput / the run-start dd probe (disk_write_direct)
    # network scenarios (netops.py): a client probing the guest's UDP echo
    "client_outage_ms",          # net-live: the longest reply gap at the switch to the destination
    "probes_lost",               # net-live: probes unanswered in that gap
    "reply_gap_max_ms",          # longest gap between replies over the whole run
    "probes_sent", "probe_replies",
    "packet_rate_pps",           # net-rate: the guest's replies a second to a flood of probes
    # disk-io: the guest's disk workload at full rate (docs/benchmarks.md); godwit's own
    # columns with its default aio, uring_* the same guest again with --disk aio=uring
    "disk_iops", "disk_mib_s",   # requests and data per second, from the VMM's counters
    "disk_guest_iops",           # from the guest's `disk ok` passes
    "disk_service_us",           # VMM per request: taken off the ring -> completed
    "disk_vmm_cpu_us",           # host CPU per request outside the vCPU threads
    "disk_vcpu_us",              # host CPU per request in the vCPU threads (the emulated guest)
    "disk_notifies_per_req",     # godwit: the guest's queue notifications per request
    "uring_iops", "uring_mib_s", "uring_guest_iops", "uring_service_us", "uring_vmm_cpu_us",
    "uring_vcpu_us", "uring_notifies_per_req",
    "raw_iops", "raw_mib_s",     # fio on the same file, the guest's pattern, 512-byte requests
    "raw_64k_mib_s",             # the same with 64 KiB requests
]

COLUMNS = SCENARIO_COLUMNS + METRIC_COLUMNS + ["log"]

# the guest's gaps the downtime is the longest of: none may exceed downtime_guest_ms
GUEST_GAPS = ("switchover_gap_ms", "gap_before_switch_ms", "gap_after_switch_ms")
# godwit's switchover split along its migrate-status timeline: all set on its ok live rows
SWITCH_PARTS = {"live-migrate": ["switchover_gap_ms", "switch_pause_lag_ms",
                                 "switch_unreported_ms", "switch_resume_lag_ms"],
                "postcopy-migrate": ["switchover_gap_ms", "switch_pause_lag_ms",
                                     "switch_unreported_ms", "switch_resume_lag_ms"]}

# at least one of these is set on an ok row of each operation
REQUIRED_OK = {
    "boot": ["boot_ms"],
    "snapshot-restore": ["snapshot_ms", "restore_ms"],
    "warm-migrate": ["total_ms"],
    "live-migrate": ["total_ms"],
    "net-live": ["client_outage_ms"],
    "net-rate": ["packet_rate_pps"],
    "disk-io": ["disk_iops"],
    "postcopy-migrate": ["total_ms"],
}
