"""One run of one scenario on one VMM: the shared choreography of each operation.

Each function returns a row (dict of schema.COLUMNS fields); it raises
Unavailable or RunFailed (drivers.py) when the operation cannot be measured,
and the caller turns that into a failed/unavailable row."""
import json
import os
import re
import shutil
import subprocess
import time

from . import netops
from .drivers import RunFailed
from .limits import disk_direct_probe
from .serial import (HB_RE, READY_RE, CHECK_OK_RE, DISK_FAIL_RE, DISK_OK_RE, analyse_move,
                     gaps_between, merge_streams)
from .util import log

STATS_RE = re.compile(r"^stats ticks=\d+ pages=(\d+)$")

FIRST_LINE_TIMEOUT = 60.0


class Ctx:
    """What a run needs besides the scenario and the driver."""

    def __init__(self, net, workdir, logprefix, port):
        self.net = net
        self.workdir = workdir
        self.logprefix = logprefix
        self.port = port
        self.samples = []
        self.run = 1


def _first_line(inst, timeout=FIRST_LINE_TIMEOUT):
    r = inst.serial.wait_for(lambda t, x: True, timeout)
    if r is None:
        raise RunFailed(inst.why_dead() if not inst.alive()
                        else f"no serial output within {timeout:.0f}s")
    return r


def _first_hb(inst, timeout, start=0):
    r = inst.serial.wait_for(lambda t, x: HB_RE.match(x) is not None, timeout, start)
    if r is None:
        raise RunFailed(inst.why_dead() if not inst.alive()
                        else f"no heartbeat within {timeout:.0f}s; last lines: {inst.serial.tail(3)}")
    lines, _, _ = inst.serial.snapshot()
    for _, text in lines[:r[0]]:
        if text.startswith("error:"):   # the guest kit refused part of its command line
            raise RunFailed(f"guest: {text}")
    return r


def _warmup(inst, sc):
    """Let the workload run: abcheck until a verified pass, dirty until the set was touched."""
    if sc.kind == "abcheck":
        pages = max(sc.wss_bytes // 4096, 1)
        timeout = 20 + 3 * pages / 20000
        r = inst.serial.wait_for(lambda t, x: CHECK_OK_RE.match(x) is not None, timeout)
        if r is None:
            raise RunFailed(inst.why_dead() if not inst.alive()
                            else f"abcheck printed no 'check ok' within {timeout:.0f}s "
                                 f"(last lines {inst.serial.tail(3)})")
        time.sleep(0.2)
    elif sc.kind == "dirty" and sc["warmup_s"] == "auto" and "stats=" in sc["workload"]:
        # the guest counts the pages it wrote: both VMMs' guests hold the whole working set
        # when the move starts, however fast each one's vCPUs write (content= pages are slow)
        pages = max(sc.wss_bytes // 4096, 1)
        timeout = 30 + pages / 250
        r = inst.serial.wait_for(lambda t, x: (m := STATS_RE.match(x)) is not None and
                                 int(m.group(1)) >= pages, timeout)
        if r is None:
            raise RunFailed(inst.why_dead() if not inst.alive()
                            else f"the guest wrote fewer than {pages} pages within "
                                 f"{timeout:.0f}s (last lines {inst.serial.tail(3)})")
    else:
        time.sleep(sc.warmup())
    if not inst.alive():
        raise RunFailed(inst.why_dead())


def _settle(inst, sc, start_index, hb=50):
    """After a move: enough heartbeats, and for abcheck or the disk workload a verified pass,
    on the new side."""
    r = inst.serial.wait_heartbeats(hb, 10 + hb / 100, start_index)
    if r is None:
        raise RunFailed(inst.why_dead() if not inst.alive()
                        else f"fewer than {hb} heartbeats after the move; last lines "
                             f"{inst.serial.tail(3)}")
    if sc.kind == "abcheck":
        pages = max(sc.wss_bytes // 4096, 1)
        timeout = 20 + 3 * pages / 20000
        r = inst.serial.wait_for(lambda t, x: CHECK_OK_RE.match(x) is not None or
                                 x.startswith("check fail"), timeout, start_index)
        if r is None:
            raise RunFailed(f"abcheck printed no 'check ok' after the move within {timeout:.0f}s")
    if sc.has_disk:
        r = inst.serial.wait_for(lambda t, x: DISK_OK_RE.match(x) is not None or
                                 DISK_FAIL_RE.match(x) is not None, 60, start_index)
        if r is None:
            raise RunFailed("the disk workload printed no 'disk ok' after the move within 60s")


def _mem_fields(row, prefix, mem):
    row[f"{prefix}_vmhwm_bytes"] = mem.get("VmHWM")
    if prefix == "src":
        row["rss_anon_bytes"] = mem.get("RssAnon")
        row["rss_file_bytes"] = mem.get("RssFile")
        row["rss_shmem_bytes"] = mem.get("RssShmem")


def _dir_size(path):
    """(allocated bytes, apparent bytes) of every file under path."""
    alloc = apparent = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                st = os.stat(os.path.join(root, f))
            except OSError:
                continue
            alloc += st.st_blocks * 512
            apparent += st.st_size
    return alloc, apparent


def _check_ready(inst, sc):
    lines, _, _ = inst.serial.snapshot()
    for _, text in lines[:5]:
        m = READY_RE.search(text)
        if m:
            if int(m.group(1)) != int(sc["cpus"]):
                raise RunFailed(f"guest reports cpus={m.group(1)}, expected {sc['cpus']}")
            return
    raise RunFailed(f"no 'godwit-guest ready' line; first lines {[x for _, x in lines[:3]]}")


# ---------------------------------------------------------------------------
def boot(drv, sc, ctx):
    row = {}
    drv.disk_reset(sc)
    inst = drv.launch(sc, "vm", None, ctx.logprefix)
    try:
        t_line, _ = _first_line(inst)[1:]
        row["boot_ms"] = (t_line - inst.t_launch) * 1000
        _, t_hb, _ = _first_hb(inst, 30)
        row["first_hb_ms"] = (t_hb - inst.t_launch) * 1000
        row["total_ms"] = row["boot_ms"]
        if inst.serial.wait_heartbeats(100, 15) is None:
            raise RunFailed(inst.why_dead() if not inst.alive() else "heartbeats stopped after boot")
        _check_ready(inst, sc)
        hb = [int(HB_RE.match(x).group(1)) for _, x in inst.serial.snapshot()[0] if HB_RE.match(x)]
        if any(b != a + 1 for a, b in zip(hb, hb[1:])):
            raise RunFailed("heartbeat seq not consecutive")
        guest = drv.guest_resident_reported(inst)
        row["guest_rss_source"] = "vmm" if guest is not None else "smaps"
        if guest is None:
            guest = drv.sample_guest_rss(inst)
        mem = drv.final_memory(inst)
        row["guest_rss_bytes"] = guest
        if guest is not None and mem.get("VmRSS") is not None:
            row["overhead_bytes"] = mem["VmRSS"] - guest
    finally:
        drv.stop(inst)
    _mem_fields(row, "src", inst.mem)
    return row


def _read_data(fd):
    """Reads a file's data ranges, skipping holes (godwit's memory file is sparse)."""
    end = os.fstat(fd).st_size
    pos = 0
    while pos < end:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
            hole = os.lseek(fd, data, os.SEEK_HOLE)
        except OSError:     # ENXIO: no data after pos
            return
        while data < hole:
            n = len(os.pread(fd, min(1 << 20, hole - data), data))
            if not n:
                return
            data += n
        pos = hole


def _cache_files(path, cached):
    """Puts every file under path into the page cache (read through once) or out of it
    (fsync, then POSIX_FADV_DONTNEED): QEMU writes its snapshot through the cache and
    godwit its memory around it, so restores are timed from the same state for both."""
    for root, _, files in os.walk(path):
        for f in files:
            fd = os.open(os.path.join(root, f), os.O_RDONLY)
            try:
                if cached:
                    _read_data(fd)
                else:
                    os.fsync(fd)
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def _restore_timed(drv, sc, ctx, snapdir, role):
    """Launches a restore of snapdir; returns (instance, ms from launch to first heartbeat)."""
    rst = drv.launch(sc, role, None, ctx.logprefix, restore=snapdir, restore_mode=sc["restore"])
    try:
        drv.restore_started(rst, 120)
        _, t_hb, _ = _first_hb(rst, 120)
    except BaseException:
        drv.stop(rst)
        raise
    return rst, (t_hb - rst.t_launch) * 1000


def _disk_fields(row, before, after):
    """The probes beside a snapshot into its row; limit_name says whether both were direct."""
    for name, p in (("before", before), ("after", after)):
        if p and p.get("bytes_per_s"):
            row[f"disk_direct_{name}_bytes_per_s"] = p["bytes_per_s"]
            row[f"disk_direct_{name}_bytes"] = p["bytes"]
    if any(p and not p.get("direct") for p in (before, after)):
        row["disk_probe_buffered"] = 1


def snapshot_restore(drv, sc, ctx):
    row = {}
    snapdir = os.path.join(ctx.workdir, f"snap-{drv.name}")
    shutil.rmtree(snapdir, ignore_errors=True)
    src = rst = warm = None
    drv.disk_reset(sc)
    try:
        src = drv.launch(sc, "src", None, ctx.logprefix)
        _first_hb(src, FIRST_LINE_TIMEOUT)
        _warmup(src, sc)
        # the disk's own rate right before, for about as many bytes as the snapshot will
        # write (the guest's resident memory), and right after, for exactly as many
        before = disk_direct_probe(ctx.workdir, drv.sample_guest_rss(src))
        t0 = time.monotonic()
        info = drv.snapshot(src, snapdir)
        t1 = time.monotonic()
        # complete and synced; the VMM's process exit (freeing the guest's memory) after it
        # is reported apart
        row["snapshot_ms"] = (info.get("t_synced", t1) - t0) * 1000
        row["snapshot_stopped_ms"] = (t1 - t0) * 1000
        row["vmm_total_ms"] = info.get("vmm_total_ms")
        row["snapshot_bytes"], row["snapshot_apparent_bytes"] = _dir_size(snapdir)
        after = disk_direct_probe(ctx.workdir, row["snapshot_bytes"])
        _disk_fields(row, before, after)
        _mem_fields(row, "src", src.mem)
        _cache_files(snapdir, False)
        rst, row["restore_ms"] = _restore_timed(drv, sc, ctx, snapdir, "dst")
        row["total_ms"] = row["snapshot_ms"] + row["restore_ms"]
        _settle(rst, sc, 0)
        lines, boundary = merge_streams(src.serial, rst.serial)
        _judge(row, analyse_move(lines, boundary, t0))
        drv.final_memory(rst)
        _mem_fields(row, "dst", rst.mem)
        drv.stop(rst)
        _mem_fields(row, "dst", rst.mem)
        rst = None
        # the same restore again with the snapshot's files in the page cache
        _cache_files(snapdir, True)
        warm, row["restore_warm_ms"] = _restore_timed(drv, sc, ctx, snapdir, "warm")
    finally:
        if src is not None and src.alive():
            drv.kill(src)
        if rst is not None:
            drv.stop(rst)
            _mem_fields(row, "dst", rst.mem)
        if warm is not None:
            drv.stop(warm)
        shutil.rmtree(snapdir, ignore_errors=True)
    return row


def _certs(ctx, addr):
    """Throwaway certificates (scripts/make-certs) naming addr, made once per address."""
    d = os.path.join(ctx.workdir, f"pki-{addr}")
    if not os.path.exists(os.path.join(d, "client-cert.pem")):
        tool = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
            os.path.abspath(__file__)))), "scripts", "make-certs")
        subprocess.run([tool, "--san", f"IP:{addr}", d], check=True, capture_output=True)
    return d


def migrate(drv, sc, ctx, mode):
    row = {}
    net = ctx.net
    net.shape(sc["link"])
    src_ns, dst_ns, addr, cns, cdev = net.endpoints(sc["link"])
    uri = f"tcp:{addr}:{ctx.port}"
    src = dst = None
    drv.disk_reset(sc)
    drv.tls_dir = _certs(ctx, addr) if sc["tls"] == "x509" else None
    try:
        # the destination first: it waits, and a godwit without --incoming says so at once
        dst = drv.launch(sc, "dst", dst_ns, ctx.logprefix, incoming=uri)
        drv.wait_listening(dst)
        src = drv.launch(sc, "src", src_ns, ctx.logprefix)
        _first_hb(src, FIRST_LINE_TIMEOUT)
        _warmup(src, sc)
        tx0 = net.tx_bytes(cns, cdev)
        t0 = time.monotonic()
        # wall clock minus the serial lines' clock: lines up the VMM's CLOCK_REALTIME steps
        wall_off = time.time() - time.monotonic()
        info = drv.migrate(src, dst, uri, sc, mode, ctx.samples)
        # for reading the samples' log beside the serial logs (both on the harness's clock)
        ctx.samples.append({"_t0_monotonic": t0, "_wall_minus_monotonic": wall_off})
        _, t_hb, _ = _first_hb(dst, 60)
        # total: until the guest runs on the destination (its first heartbeat there), so
        # neither VMM's figure depends on how often anyone polls for completion
        row["total_ms"] = (t_hb - t0) * 1000
        row["command_ms"] = (info["t_done"] - t0) * 1000
        if mode == "postcopy":
            # the guest runs there from the switch, but the move ends with its last page
            row["total_ms"] = row["command_ms"]
        tx1 = net.tx_bytes(cns, cdev)
        if tx0 is not None and tx1 is not None:
            row["wire_bytes"] = tx1 - tx0
        for k in ("vmm_total_ms", "downtime_vmm_ms", "downtime_estimate_ms", "vmm_bytes", "rounds",
                  "throttle_pct", "pages_requested", "fault_latency_median_ms",
                  "fault_latency_max_ms"):
            row[k] = info.get(k)
        _mem_fields(row, "src", src.mem)
        # a second of heartbeats on the destination: gap_after_switch_ms looks that far
        _settle(dst, sc, 0, hb=250)
        lines, boundary = merge_streams(src.serial, dst.serial)
        res = analyse_move(lines, boundary, t0)
        _judge(row, res)
        _switch_parts(row, res, info.get("timeline"), wall_off, t0, sc.hb_period_s)
        if mode == "postcopy":
            gaps = gaps_between(lines, boundary, info["t_done"])
            row["postcopy_hb_gap_ms"] = max(gaps) * 1000 if gaps else None
            row["postcopy_hb_gaps_50ms"] = sum(g > 0.05 for g in gaps)
        drv.final_memory(dst)
        _mem_fields(row, "dst", dst.mem)
    finally:
        if src is not None:
            drv.stop(src)
            _mem_fields(row, "src", src.mem)
        if dst is not None:
            drv.stop(dst)
            _mem_fields(row, "dst", dst.mem)
        drv.tls_dir = None
    return row


def _switch_parts(row, res, timeline, wall_off, t0, hb_period):
    """Where the guest-observed downtime goes: the longest gap before the switch (and when,
    from the start of the move), the longest after it, and the switchover gap split by the
    VMM's own steps (godwit's migrate-status timeline_unix_us, wall clock, converted to the
    serial lines' clock with wall_off): the source's last heartbeat to the pause, the VMM's
    downtime, what its figure leaves out (COMMIT on the wire, the destination's vCPU threads
    getting back into KVM_RUN), and the destination's running vCPUs to their first heartbeat;
    of that last part, how late the harness read the first heartbeat at least (lines that
    arrived together were printed a tick apart)."""
    row["gap_before_switch_ms"] = res["gap_before_ms"]
    if res["gap_before_at"] is not None:
        row["gap_before_at_ms"] = (res["gap_before_at"] - t0) * 1000
    row["gap_after_switch_ms"] = res["gap_after_ms"]
    if res["first_after_burst"]:
        row["switch_read_lag_ms"] = (res["first_after_burst"] - 1) * hb_period * 1000
    src, dst = (timeline or {}).get("src") or {}, (timeline or {}).get("dst") or {}

    def mono(d, k):
        v = d.get(k)
        return v / 1e6 - wall_off if isinstance(v, (int, float)) and v > 0 else None
    pause, running = mono(src, "pause"), mono(dst, "running")
    if pause is not None and res["t_last_before"] is not None:
        row["switch_pause_lag_ms"] = (pause - res["t_last_before"]) * 1000
    # the pause to the vCPUs running again, less what the VMM reports of it: COMMIT's trip
    # and the vCPU threads getting back into KVM_RUN (negative: the VMM counted a little
    # past their start)
    if pause is not None and running is not None and row.get("downtime_vmm_ms") is not None:
        row["switch_unreported_ms"] = (running - pause) * 1000 - row["downtime_vmm_ms"]
    if running is not None and res["t_first_after"] is not None:
        row["switch_resume_lag_ms"] = (res["t_first_after"] - running) * 1000


def _judge(row, res):
    row["hb_last_before"] = res["last_before"]
    row["hb_first_after"] = res["first_after"]
    row["downtime_guest_ms"] = res["gap_ms"]
    row["switchover_gap_ms"] = res["switchover_gap_ms"]
    row["baseline_gap_ms"] = res["baseline_gap_ms"]
    row["check_ok_after"] = res["check_ok_after"]
    if not res["ok"]:
        raise RunFailed(res["reason"])


# ---------------------------------------------------------------------------
DISK_IO_S = 8.0          # measuring window of a disk-io run, after pass 1
VCPU_THREAD_RE = re.compile(r"^(vcpu\d+|CPU \d+/KVM)$")   # godwit's and QEMU's vCPU threads


def _thread_cpu_ns(pid, vcpu_tids):
    """(CPU ns of the vCPU threads, CPU ns of every other thread) of a process, from
    /proc/PID/task/*/schedstat (nanoseconds on the CPU); vCPU threads by name (godwit's) or
    by the thread ids the VMM reports (QEMU names its threads only with debug-threads=on)."""
    vcpu = other = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                comm = f.read().strip()
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                ns = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        if VCPU_THREAD_RE.match(comm) or int(tid) in vcpu_tids:
            vcpu += ns
        else:
            other += ns
    return vcpu, other


def raw_file(path, sc, seconds=2):
    """fio on the file the guest's disk is, in the guest's pattern (its working set, seq or
    random, the same share of writes; synchronous pread/pwrite): {raw_iops, raw_mib_s,
    raw_64k_mib_s}. Leaves the file's contents changed: the caller zeroes it again."""
    if shutil.which("fio") is None:
        log("fio is not installed: no raw-file figures (apt-get install fio)")
        return {}
    w = sc.disk_write
    if w:
        rw = ["--rw=randrw" if sc.disk_random else "--rw=rw",
              f"--rwmixwrite={round(100 * w / (100 + w))}"]
    else:
        rw = ["--rw=randread" if sc.disk_random else "--rw=read"]
    out = {}
    for bs, key in ((512, "raw"), (65536, "raw_64k")):
        size = max(sc.disk_blocks * 512, 16 * bs)
        argv = ["fio", "--name=raw", f"--filename={path}", f"--bs={bs}", f"--size={size}",
                "--ioengine=psync", "--time_based", f"--runtime={seconds}",
                "--output-format=json", *rw]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        try:
            job = json.loads(r.stdout[r.stdout.index("{"):])["jobs"][0]
        except (ValueError, KeyError, IndexError):
            raise RunFailed(f"fio: {r.stderr.strip()[:200] or r.stdout.strip()[:200]}")
        secs = job["job_runtime"] / 1000
        ios = job["read"]["total_ios"] + job["write"]["total_ios"]
        nbytes = job["read"]["io_bytes"] + job["write"]["io_bytes"]
        if key == "raw":
            out["raw_iops"] = ios / secs
        out[f"{key}_mib_s"] = nbytes / secs / (1 << 20)
    return out


def _disk_window(drv, inst, sc, prefix):
    """The guest's disk workload measured over DISK_IO_S once pass 1 (which learns what
    the disk holds) is done: rates from the VMM's counters and from the guest's passes,
    and the VMM's time and CPU per request."""
    r = inst.serial.wait_for(lambda t, x: DISK_OK_RE.match(x) is not None or
                             DISK_FAIL_RE.match(x) is not None, 120)
    if r is None or not DISK_OK_RE.match(r[2]):
        raise RunFailed(inst.why_dead() if not inst.alive() else
                        f"no 'disk ok 1' within 120 s: {r[2] if r else inst.serial.tail(3)}")
    tids = drv.vcpu_tids(inst)
    c0, cpu0, t0 = drv.disk_counters(inst), _thread_cpu_ns(inst.pid, tids), time.monotonic()
    time.sleep(DISK_IO_S)
    c1, cpu1, t1 = drv.disk_counters(inst), _thread_cpu_ns(inst.pid, tids), time.monotonic()
    lines, _, _ = inst.serial.snapshot()
    bad = [x for _, x in lines if DISK_FAIL_RE.match(x)]
    if bad:
        raise RunFailed(f"disk check failed: {bad[0]}")
    ops = c1["ops"] - c0["ops"]
    if ops <= 0:
        raise RunFailed(f"no disk requests completed in {DISK_IO_S:.0f} s")
    row = {f"{prefix}_iops": ops / (t1 - t0),
           f"{prefix}_mib_s": (c1["bytes"] - c0["bytes"]) / (t1 - t0) / (1 << 20),
           f"{prefix}_service_us": (c1["service_ns"] - c0["service_ns"]) / ops / 1000}
    if cpu0 and cpu1:
        row[f"{prefix}_vmm_cpu_us"] = (cpu1[1] - cpu0[1]) / ops / 1000
        row[f"{prefix}_vcpu_us"] = (cpu1[0] - cpu0[0]) / ops / 1000
    if c0.get("notifies") is not None:
        row[f"{prefix}_notifies_per_req"] = (c1["notifies"] - c0["notifies"]) / ops
    # the guest's own view: whole passes inside the window, each a read of every block, the
    # write share rewritten, one FLUSH
    passes = [(t, int(DISK_OK_RE.match(x).group(1))) for t, x in lines
              if t0 <= t <= t1 and DISK_OK_RE.match(x)]
    if len(passes) >= 2 and passes[-1][0] > passes[0][0]:
        per_pass = sc.disk_blocks * (1 + sc.disk_write / 100) + 1
        row[f"{prefix}_guest_iops"] = ((passes[-1][1] - passes[0][1]) * per_pass /
                                       (passes[-1][0] - passes[0][0]))
    return row


def disk_io(drv, sc, ctx):
    """The guest's disk workload at full rate beside the raw file's rate (fio, same run, same
    file and pattern); godwit twice, with its default I/O thread and with aio=uring, in an
    order that alternates from run to run."""
    row = {}
    drv.disk_reset(sc)
    row.update(raw_file(drv.disk_path(), sc))
    variants = [(None, "disk")] + ([("uring", "uring")] if drv.name == "godwit" else [])
    if ctx.run % 2 == 0:
        variants.reverse()   # neither backend always runs first, on a host whose load drifts
    for aio, prefix in variants:
        drv.disk_reset(sc)
        drv.disk_aio = aio
        inst = None
        try:
            inst = drv.launch(sc, "vm", None, ctx.logprefix + (f"-{aio}" if aio else ""))
            _first_hb(inst, FIRST_LINE_TIMEOUT)
            row.update(_disk_window(drv, inst, sc, prefix))
            if prefix == "disk":
                drv.final_memory(inst)
                _mem_fields(row, "src", inst.mem)
        finally:
            drv.disk_aio = None
            if inst is not None:
                drv.stop(inst)
    return row


def run_op(drv, sc, ctx):
    op = sc["op"]
    if op == "boot":
        return boot(drv, sc, ctx)
    if op == "snapshot-restore":
        return snapshot_restore(drv, sc, ctx)
    if op == "warm-migrate":
        return migrate(drv, sc, ctx, "warm")
    if op == "live-migrate":
        return migrate(drv, sc, ctx, "live")
    if op in ("net-live", "net-rate"):
        return netops.run(drv, sc, ctx)
    if op == "disk-io":
        return disk_io(drv, sc, ctx)
    if op == "postcopy-migrate":
        return migrate(drv, sc, ctx, "postcopy")
    raise ValueError(op)
