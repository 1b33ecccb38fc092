"""results.md (medians, min-max, godwit/QEMU ratios) and gnuplot PNGs."""
import json
import os
import shutil
import statistics
import subprocess

from .util import fmt_bytes, log, run

VMMS = ("godwit", "qemu")

# (metric column, label, kind) per operation; kind: ms | bytes | rate | count | pct
METRICS = {
    "boot": [("boot_ms", "first serial line", "ms"), ("first_hb_ms", "first heartbeat", "ms"),
             ("src_vmhwm_bytes", "peak RSS (VmHWM)", "bytes"),
             ("guest_rss_bytes", "guest pages resident", "bytes"),
             ("overhead_bytes", "VMM overhead (RSS - guest)", "bytes")],
    "snapshot-restore": [("snapshot_ms", "snapshot time", "ms"),
                         ("snapshot_bytes", "snapshot size (allocated)", "bytes"),
                         ("throughput_bytes_per_s", "snapshot throughput", "rate"),
                         ("snapshot_stopped_ms", "snapshot and the VMM's exit", "ms"),
                         ("disk_direct_before_bytes_per_s", "disk's direct rate just before",
                          "rate"),
                         ("disk_direct_after_bytes_per_s", "disk's direct rate just after",
                          "rate"),
                         ("limit_start_fraction", "throughput / run-start dd direct", "frac"),
                         ("restore_ms", "restore to first heartbeat (cold files)", "ms"),
                         ("restore_warm_ms", "restore, files in the page cache", "ms"),
                         ("total_ms", "snapshot + restore", "ms"),
                         ("downtime_guest_ms", "guest-observed gap", "ms"),
                         ("baseline_gap_ms", "longest gap before (noise)", "ms"),
                         ("src_vmhwm_bytes", "peak RSS source", "bytes"),
                         ("dst_vmhwm_bytes", "peak RSS restored", "bytes")],
    "warm-migrate": [("total_ms", "total time (to running on the destination)", "ms"),
                     ("command_ms", "migrate command returned", "ms"),
                     ("downtime_vmm_ms", "downtime (VMM)", "ms"),
                     ("downtime_guest_ms", "downtime (guest, longest gap)", "ms"),
                     ("switchover_gap_ms", "switchover gap (guest)", "ms"),
                     ("baseline_gap_ms", "longest gap before (noise)", "ms"),
                     ("vmm_bytes", "bytes (VMM)", "bytes"), ("wire_bytes", "bytes on the wire", "bytes"),
                     ("throughput_bytes_per_s", "throughput", "rate"),
                     ("src_vmhwm_bytes", "peak RSS source", "bytes"),
                     ("dst_vmhwm_bytes", "peak RSS destination", "bytes")],
    "live-migrate": [("total_ms", "total time (to running on the destination)", "ms"),
                     ("command_ms", "migrate command returned", "ms"),
                     ("downtime_vmm_ms", "downtime (VMM)", "ms"),
                     ("downtime_estimate_ms", "downtime estimated before the pause", "ms"),
                     ("downtime_guest_ms", "downtime (guest, longest gap)", "ms"),
                     ("switchover_gap_ms", "switchover gap (guest)", "ms"),
                     ("gap_before_switch_ms", "longest gap before the switch (guest)", "ms"),
                     ("gap_after_switch_ms", "longest gap after the switch (guest)", "ms"),
                     ("baseline_gap_ms", "longest gap before (noise)", "ms"),
                     ("rounds", "rounds", "count"), ("throttle_pct", "throttle reached", "pct"),
                     ("vmm_bytes", "bytes (VMM)", "bytes"), ("wire_bytes", "bytes on the wire", "bytes"),
                     ("throughput_bytes_per_s", "throughput", "rate"),
                     ("src_vmhwm_bytes", "peak RSS source", "bytes"),
                     ("dst_vmhwm_bytes", "peak RSS destination", "bytes")],
    "postcopy-migrate": [("total_ms", "total time (to the last page)", "ms"),
                         ("downtime_vmm_ms", "downtime (VMM)", "ms"),
                         ("downtime_guest_ms", "downtime (guest, longest gap)", "ms"),
                         ("switchover_gap_ms", "switchover gap (guest)", "ms"),
                         ("postcopy_hb_gap_ms", "longest heartbeat gap after the switch", "ms"),
                         ("postcopy_hb_gaps_50ms", "heartbeat gaps > 50 ms after the switch",
                          "count"),
                         ("pages_requested", "pages requested", "count"),
                         ("fault_latency_median_ms", "fault latency median (VMM)", "ms"),
                         ("fault_latency_max_ms", "fault latency max (VMM)", "ms"),
                         ("throttle_pct", "throttle reached", "pct"),
                         ("vmm_bytes", "bytes (VMM)", "bytes"),
                         ("wire_bytes", "bytes on the wire", "bytes"),
                         ("throughput_bytes_per_s", "throughput", "rate"),
                         ("baseline_gap_ms", "longest gap before (noise)", "ms")],
    "net-live": [("client_outage_ms", "client's outage (reply gap at the switch)", "ms"),
                 ("probes_lost", "probes lost in it", "count"),
                 ("downtime_guest_ms", "downtime (guest: last heartbeat to first)", "ms"),
                 ("downtime_vmm_ms", "downtime (VMM)", "ms"),
                 ("reply_gap_max_ms", "longest reply gap of the run", "ms"),
                 ("probes_sent", "probes sent", "count")],
    "net-rate": [("packet_rate_pps", "guest replies a second", "count"),
                 ("probes_sent", "probes sent", "count")],
    "disk-io": [("disk_iops", "requests/s (VMM counters)", "count"),
                ("disk_mib_s", "MiB/s (VMM counters)", "count"),
                ("disk_guest_iops", "requests/s (guest passes)", "count"),
                ("disk_service_us", "VMM time per request, us", "count"),
                ("disk_vmm_cpu_us", "host CPU per request outside vCPUs, us", "count"),
                ("disk_vcpu_us", "host CPU per request in vCPUs, us", "count"),
                ("disk_notifies_per_req", "guest notifications per request", "count"),
                ("uring_iops", "godwit aio=uring: requests/s", "count"),
                ("uring_mib_s", "godwit aio=uring: MiB/s", "count"),
                ("uring_service_us", "godwit aio=uring: time per request, us", "count"),
                ("uring_vmm_cpu_us", "godwit aio=uring: CPU per request outside vCPUs, us",
                 "count"),
                ("uring_vcpu_us", "godwit aio=uring: CPU per request in vCPUs, us", "count"),
                ("uring_notifies_per_req", "godwit aio=uring: notifications per request",
                 "count"),
                ("raw_iops", "raw file (fio, 512 B): requests/s", "count"),
                ("raw_mib_s", "raw file (fio, 512 B): MiB/s", "count"),
                ("raw_64k_mib_s", "raw file (fio, 64 KiB): MiB/s", "count")],
}
OPS = ("boot", "snapshot-restore", "warm-migrate", "live-migrate", "postcopy-migrate")
NET_OPS = ("net-live", "net-rate")


def _f(v):
    if v in (None, ""):
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def fmt(v, kind):
    if v is None:
        return "–"
    if kind == "ms":
        return f"{v:.0f} ms" if v >= 100 else f"{v:.1f} ms"
    if kind == "bytes":
        return fmt_bytes(v)
    if kind == "rate":
        return f"{v / (1 << 20):.0f} MiB/s"
    if kind == "pct":
        return f"{v:.0f}%"
    if kind == "frac":
        return f"{v:.2f}"
    return f"{v:.0f}" if v == int(v) else f"{v:.1f}"


def stats(rows, col):
    vals = [_f(r.get(col)) for r in rows if r["status"] == "ok"]
    vals = [v for v in vals if v is not None]
    if not vals:
        return None
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def group(rows):
    out = {}
    for r in rows:
        out.setdefault(r["scenario"], {v: [] for v in VMMS})
        out[r["scenario"]].setdefault(r["vmm"], []).append(r)
    return out


def fmt_limit(name, v):
    if v is None:
        return "not measured"
    s = f"{v / (1 << 20):,.0f} MiB/s"
    if name.startswith("link_"):
        s += f" ({v * 8 / 1e9:.2f} Gbit/s)"
    return s


def downtime_targets(rows, scenarios):
    """Live migrations: the downtime the VMM reports against the scenario's target, per run;
    a miss is flagged here (and in the run log), never turned into a failed run."""
    live = {s["name"]: s for s in scenarios if s["op"] == "live-migrate"}
    runs = [r for r in rows if r["scenario"] in live and r["status"] == "ok"
            and r.get("downtime_target_met") not in (None, "")]
    if not runs:
        return []
    L = ["## Downtime targets (live)\n",
         "Each measured live run's downtime (as the VMM reports it: pause to running on the "
         "destination) against the scenario's `--downtime-ms` / `downtime-limit`; godwit's "
         "estimate is the one that decided its last round. Timing on a shared machine is "
         "indicative; a miss is flagged, not failed.\n",
         "| scenario | VMM | target | runs within target | downtime (VMM) max | "
         "estimate (godwit) max | guest gap max | |",
         "|---|---|---|---|---|---|---|---|"]
    for name in live:
        for v in VMMS:
            rs = [r for r in runs if r["scenario"] == name and r["vmm"] == v]
            if not rs:
                continue
            met = sum(str(r["downtime_target_met"]) in ("1", "1.0") for r in rs)
            mx = {c: max((x for x in (_f(r.get(c)) for r in rs) if x is not None), default=None)
                  for c in ("downtime_vmm_ms", "downtime_estimate_ms", "downtime_guest_ms")}
            flag = "" if met == len(rs) else "**missed**"
            L.append(f"| {name} | {v} | {live[name].downtime} ms | {met}/{len(rs)} | "
                     f"{fmt(mx['downtime_vmm_ms'], 'ms')} | {fmt(mx['downtime_estimate_ms'], 'ms')} "
                     f"| {fmt(mx['downtime_guest_ms'], 'ms')} | {flag} |")
    L.append("")
    return L


BREAKDOWN_OPS = ("live-migrate", "postcopy-migrate")


def _where(r):
    """Which part of the move held the guest's longest gap in run r: before, switch, after."""
    parts = {"before": _f(r.get("gap_before_switch_ms")), "switch": _f(r.get("switchover_gap_ms")),
             "after": _f(r.get("gap_after_switch_ms"))}
    parts = {k: v for k, v in parts.items() if v is not None}
    return max(parts, key=parts.get) if parts else None


def downtime_breakdown(rows, scenarios):
    """Every live move: the downtime each VMM reports beside the guest's longest heartbeat gap,
    and where that gap was (docs/benchmarks.md, "VMM-reported and guest-observed downtime")."""
    g = group(rows)
    L = []
    for sc in scenarios:
        if sc["op"] not in BREAKDOWN_OPS or sc["name"] not in g:
            continue
        for v in VMMS:
            ok = [r for r in g[sc["name"]].get(v, []) if r["status"] == "ok"]
            if not ok:
                continue
            if not L:
                L += ["## Downtime: VMM-reported and guest-observed\n",
                      "Medians over passed runs. The guest's downtime is its longest heartbeat "
                      "gap from the start of the move; *where* counts the runs whose longest gap "
                      "fell before the switch (rounds, throttling, dirty logging starting, a "
                      "starved vCPU), at it, or in the second after it. The switchover gap "
                      "(the source's last heartbeat to the destination's first) is split along "
                      "godwit's `migrate-status` `timeline_unix_us`: last heartbeat to the "
                      "pause, the VMM's downtime, what that figure leaves out (COMMIT on the "
                      "wire, vCPU threads back into KVM_RUN), and the running vCPUs to the first "
                      "heartbeat read, of which *read lag* at least is the harness receiving "
                      "lines late. QEMU reports no such steps. Heartbeats are 4 ms apart.\n",
                      "| scenario | VMM | n | downtime (VMM) | guest: longest gap | where "
                      "(before/switch/after) | longest gap before the switch (at) | switchover "
                      "gap | = last hb → pause | + VMM downtime | + unreported | + running → "
                      "first hb (read lag ≥) | longest gap after | noise before the move |",
                      "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

            def med(col):
                st = stats(ok, col)
                return st["median"] if st else None
            where = [_where(r) for r in ok]
            counts = "/".join(str(where.count(k)) for k in ("before", "switch", "after"))
            at = med("gap_before_at_ms")
            before = fmt(med("gap_before_switch_ms"), "ms")
            if at is not None and med("gap_before_switch_ms") is not None:
                before += f" ({at / 1000:.2f} s)"
            resume = fmt(med("switch_resume_lag_ms"), "ms")
            if med("switch_read_lag_ms") is not None and med("switch_resume_lag_ms") is not None:
                resume += f" ({fmt(med('switch_read_lag_ms'), 'ms')})"
            L.append(f"| {sc['name']} | {v} | {len(ok)} | {fmt(med('downtime_vmm_ms'), 'ms')} | "
                     f"{fmt(med('downtime_guest_ms'), 'ms')} | {counts} | {before} | "
                     f"{fmt(med('switchover_gap_ms'), 'ms')} | "
                     f"{fmt(med('switch_pause_lag_ms'), 'ms')} | "
                     f"{fmt(med('downtime_vmm_ms'), 'ms')} | "
                     f"{fmt(med('switch_unreported_ms'), 'ms')} | {resume} | "
                     f"{fmt(med('gap_after_switch_ms'), 'ms')} | "
                     f"{fmt(med('baseline_gap_ms'), 'ms')} |")
    return L + [""] if L else []


def net_aims(rows, scenarios):
    """Issue 11's aims per net-live scenario, on medians: the client's outage at most the
    guest's downtime + 5 ms (the network learns the new place at once) and below QEMU's;
    fewer probes lost than QEMU."""
    g = group(rows)
    L = []
    for sc in scenarios:
        if sc["op"] != "net-live" or sc["name"] not in g:
            continue
        st = {(v, c): stats(g[sc["name"]].get(v, []), c) for v in VMMS
              for c in ("client_outage_ms", "downtime_guest_ms", "probes_lost")}
        m = {k: (s["median"] if s else None) for k, s in st.items()}
        if m[("godwit", "client_outage_ms")] is None:
            continue
        if not L:
            L += ["## Network aims (issue 11)\n",
                  "Medians. Aim: godwit's client outage <= its guest downtime + 5 ms and below "
                  "QEMU's; godwit's lost probes below QEMU's.\n",
                  "| scenario | godwit outage | guest downtime + 5 ms | met | QEMU outage | below "
                  "QEMU | godwit lost | QEMU lost | fewer lost |", "|---|---|---|---|---|---|---|---|---|"]

        def cmp(a, b, strict=True):
            if a is None or b is None:
                return "–"
            return "yes" if (a < b if strict else a <= b) else "**no**"
        go, gd = m[("godwit", "client_outage_ms")], m[("godwit", "downtime_guest_ms")]
        qo, gl, ql = m[("qemu", "client_outage_ms")], m[("godwit", "probes_lost")], \
            m[("qemu", "probes_lost")]
        bound = gd + 5 if gd is not None else None
        L.append(f"| {sc['name']} | {fmt(go, 'ms')} | {fmt(bound, 'ms')} | "
                 f"{cmp(go, bound, False)} | {fmt(qo, 'ms')} | {cmp(go, qo)} | {fmt(gl, 'count')} "
                 f"| {fmt(ql, 'count')} | {cmp(gl, ql)} |")
    return L + [""] if L else []


def write_markdown(path, rows, scenarios, limits, limit_notes, meta, plots):
    g = group(rows)
    L = []
    L.append("# godwit beside QEMU: benchmark results\n")
    L.append(f"Run {meta['started_utc']} · godwit {meta.get('godwit_commit', '?')} · "
             f"{meta.get('qemu_version', 'QEMU ?')} (machine `{meta.get('qemu_machine')}`) · "
             f"{meta['runs']} run(s) per VMM and scenario, alternating godwit/QEMU · "
             f"guest kit `{meta.get('guest')}`.  Machine: see machine.md; QEMU settings: "
             f"qemu-params.md; every run: runs.csv.\n")
    if meta.get("build") not in (None, "ok"):
        L.append(f"**Build:** {meta['build']}.\n")
    if meta.get("interrupted"):
        why = "" if meta["interrupted"] is True else f" ({meta['interrupted']})"
        L.append(f"**Interrupted{why}:** this run was stopped early; the tables hold the runs "
                 "that finished.\n")
    L.append("Medians over the runs that passed the correctness checks (heartbeats continue with "
             "the next seq, abcheck keeps passing); min–max beside them; n = passed runs / runs. "
             "godwit/QEMU < 1 means godwit's figure is smaller (faster, less memory).\n")
    L.append("## Limits measured in this run\n")
    L.append("| limit | value | how |")
    L.append("|---|---|---|")
    how = {"memcpy": "memcpy between two buffers (tools/limits.c)",
           "populate_anon": "fault in fresh anonymous memory, 4 KiB pages",
           "populate_memfd": "fault in fresh memfd pages",
           "populate_thp": "fault in anonymous memory with MADV_HUGEPAGE",
           "disk_write": "dd bs=1M conv=fsync in the results folder",
           "disk_write_direct": "dd bs=1M oflag=direct conv=fsync in the results folder at the "
                                "start (snapshots' limit when no probe beside them worked)"}
    for k, v in limits.items():
        h = how.get(k) or (f"one TCP stream, tc: {limit_notes.get(k, '')}" if k.startswith("link_") else "")
        L.append(f"| {k} | {fmt_limit(k, v)} | {h} |")
    L.append("")
    for op in OPS + NET_OPS + ("disk-io",):
        scs = [s for s in scenarios if s["op"] == op and s["name"] in g]
        if not scs:
            continue
        L.append(f"## {op}\n")
        L.append("| scenario | metric | godwit median | godwit min–max | QEMU median | QEMU min–max "
                 "| godwit/QEMU | godwit % of limit | QEMU % of limit |")
        L.append("|---|---|---|---|---|---|---|---|---|")
        for sc in scs:
            per = g[sc["name"]]
            n = {v: f"{sum(r['status'] == 'ok' for r in per.get(v, []))}/{len(per.get(v, []))}"
                 for v in VMMS}
            L.append(f"| **{sc['name']}** | runs passed | n={n['godwit']} | | n={n['qemu']} | | | | |")
            for col, label, kind in METRICS[op]:
                st = {v: stats(per.get(v, []), col) for v in VMMS}
                if not any(st.values()):
                    continue
                cells = []
                for v in VMMS:
                    s = st[v]
                    cells.append(fmt(s["median"], kind) if s else "–")
                    cells.append(f"{fmt(s['min'], kind)} – {fmt(s['max'], kind)}" if s else "–")
                ratio = "–"
                if st["godwit"] and st["qemu"] and st["qemu"]["median"]:
                    ratio = f"{st['godwit']['median'] / st['qemu']['median']:.2f}"
                fr = ["", ""]
                if col == "throughput_bytes_per_s":
                    for i, v in enumerate(VMMS):
                        s = stats(per.get(v, []), "limit_fraction")
                        lim = next((r.get("limit_name") for r in per.get(v, []) if r.get("limit_name")), "")
                        fr[i] = f"{100 * s['median']:.0f}% of {lim}" if s else ""
                L.append(f"| | {label} | {cells[0]} | {cells[1]} | {cells[2]} | {cells[3]} | {ratio} "
                         f"| {fr[0]} | {fr[1]} |")
        L.append("")
    L += downtime_targets(rows, scenarios)
    L += downtime_breakdown(rows, scenarios)
    L += net_aims(rows, scenarios)
    bad = [r for r in rows if r["status"] != "ok"]
    if bad:
        L.append("## Runs not measured\n")
        L.append("| scenario | VMM | run | status | reason |")
        L.append("|---|---|---|---|---|")
        seen = set()
        for r in bad:
            key = (r["scenario"], r["vmm"], r["status"], r["reason"])
            if key in seen and r["status"] == "unavailable":
                continue
            seen.add(key)
            reason = str(r["reason"]).replace("|", "\\|")
            L.append(f"| {r['scenario']} | {r['vmm']} | {r['run']} | {r['status']} | {reason} |")
        L.append("")
    if plots:
        L.append("## Plots\n")
        for p in plots:
            L.append(f"![{os.path.basename(p)}]({p})\n")
    with open(path, "w") as f:
        f.write("\n".join(L) + "\n")


# --- gnuplot -----------------------------------------------------------------
def _nan(v):
    return "NaN" if v is None else f"{v:.6g}"


def _gnuplot(script, cwd):
    if not shutil.which("gnuplot"):
        return False
    r = run(["gnuplot"], input=script, cwd=cwd, timeout=120)
    if r.returncode != 0:
        log(f"gnuplot failed: {r.stderr.strip()[:300]}")
        return False
    return True


def plot_bars(plotdir, name, title, ylabel, scen_names, series, logscale=True):
    """series: [(label, {scenario: stats or None})]; clustered bars with min-max error bars."""
    if not any(st for _, d in series for st in d.values() if st):
        return None
    dat = os.path.join(plotdir, f"{name}.dat")
    with open(dat, "w") as f:
        f.write("# scenario " + " ".join(f"{lab.replace(' ', '_')}_med min max" for lab, _ in series) + "\n")
        for sc in scen_names:
            cells = [sc]
            for _, d in series:
                s = d.get(sc)
                cells += [_nan(s["median"]) if s else "NaN", _nan(s["min"]) if s else "NaN",
                          _nan(s["max"]) if s else "NaN"]
            f.write(" ".join(cells) + "\n")
    width = max(700, 160 + 26 * len(scen_names) * max(2, len(series)))
    plots = ", ".join(
        f"'{name}.dat' using {2 + 3 * i}:{3 + 3 * i}:{4 + 3 * i}:xtic(1) title '{lab}'"
        for i, (lab, _) in enumerate(series))
    script = f"""
set terminal pngcairo size {width},560 font 'sans,9'
set output '{name}.png'
set title '{title}'
set ylabel '{ylabel}'
set style data histogram
set style histogram errorbars gap 1 lw 1
set style fill solid 0.8 border -1
set boxwidth 0.9
set xtics rotate by 40 right noenhanced
set key top left
set grid ytics
set datafile missing 'NaN'
{'set logscale y' if logscale else ''}
set bmargin 12
set lmargin 12
plot {plots}
"""
    return f"{name}.png" if _gnuplot(script, plotdir) else None


def plot_timeline(plotdir, name, title, traces, rounds):
    """Live migration: top, pages sent and dirty rate over time (labels mark a new round);
    bottom, pages sent in each round and the dirty rate at its end.

    traces: {vmm: [(t_s, pages_sent, dirty_rate, round)]}; rounds: {vmm: [(round, pages, dirty)]}"""
    if not any(traces.values()):
        return None
    top, bottom = [], []
    vmms = [v for v in traces if traces[v]]
    for k, vmm in enumerate(vmms):
        pts = traces[vmm]
        with open(os.path.join(plotdir, f"{name}-{vmm}.dat"), "w") as f:
            f.write("# t_s pages_sent dirty_pages_per_s round label\n")
            prev = None
            for t, pages, dirty, rnd in pts:
                label = f"r{int(rnd)}" if rnd is not None and rnd != prev else ""
                prev = rnd
                f.write(f"{_nan(t)} {_nan(pages)} {_nan(dirty)} {_nan(rnd)} \"{label}\"\n")
        top.append(f"'{name}-{vmm}.dat' using 1:2 with linespoints lc {k + 1} pt 7 ps 0.4 "
                   f"title '{vmm} pages sent'")
        top.append(f"'{name}-{vmm}.dat' using 1:3 axes x1y2 with steps dt 2 lw 2 lc {k + 1} "
                   f"title '{vmm} dirty rate'")
        top.append(f"'{name}-{vmm}.dat' using 1:2:5 with labels offset 0,0.8 font ',7' "
                   f"tc lt {k + 1} notitle")
        rr = rounds.get(vmm) or []
        if rr:
            with open(os.path.join(plotdir, f"{name}-{vmm}-rounds.dat"), "w") as f:
                f.write("# round pages_sent_in_round dirty_pages_per_s\n")
                for r in rr:
                    f.write(" ".join(_nan(x) for x in r) + "\n")
            off = -0.2 + 0.4 * k
            bottom.append(f"'{name}-{vmm}-rounds.dat' using ($1+{off}):2 with boxes lc {k + 1} "
                          f"title '{vmm} pages sent in round'")
            bottom.append(f"'{name}-{vmm}-rounds.dat' using 1:3 axes x1y2 with linespoints dt 2 "
                          f"lc {k + 1} title '{vmm} dirty rate'")
    script = f"""
set terminal pngcairo size 1000,{820 if bottom else 480} font 'sans,9'
set output '{name}.png'
set datafile missing 'NaN'
{'set multiplot layout 2,1' if bottom else ''}
set title '{title}' noenhanced
set xlabel 'seconds since migrate command'
set ylabel 'pages sent (cumulative)'
set y2label 'dirty rate (pages/s)'
set ytics nomirror
set y2tics
set key top left
set grid
plot {', '.join(top)}
"""
    if bottom:
        script += f"""
set title 'per round (QEMU: derived from polled query-migrate; godwit: from migrate-status)'
set xlabel 'round'
set ylabel 'pages sent in round'
set style fill solid 0.6
set boxwidth 0.4
set yrange [0:*]
set y2range [0:*]
set xtics 1
plot {', '.join(bottom)}
unset multiplot
"""
    return f"{name}.png" if _gnuplot(script, plotdir) else None


def timeline_points(vmm, samples):
    """Normalise polled migrate-status samples of either VMM to (t, pages, dirty, round)."""
    pts = []
    for s in samples:
        t = s.get("_t")
        if vmm == "qemu":
            ram = s.get("ram") or {}
            pages = ram.get("normal")           # pages sent with their data (zero pages apart)
            dirty = ram.get("dirty-pages-rate")
            rnd = ram.get("dirty-sync-count")
        else:
            pages = _first(s, "pages_normal", "pages_sent")
            if pages is None:
                b = _first(s, "bytes_sent", "bytes")
                pages = b / 4096 if b is not None else None
            dirty = _first(s, "dirty_rate", "dirty_pages_rate")
            rnd = _first(s, "round")
        if t is None or pages is None:
            continue
        pts.append((t, pages, dirty, rnd))
    return pts


def _first(d, *keys):
    for k in keys:
        v = d.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return v
    return None


def per_round(vmm, samples):
    """[(round, pages sent in it, dirty rate at its end)].

    godwit: the per-round list of its last migrate-status that has one
    ('rounds': [{pages, bytes, ms, dirty_pages, dirty_rate, throttle_pct}, ...]).
    Otherwise derived from the polled samples: the growth of pages sent between
    the last sample of one round and the last sample of the next."""
    for s in reversed(samples):
        lst = s.get("rounds") if isinstance(s.get("rounds"), list) else s.get("per_round")
        if isinstance(lst, list) and lst:
            out = []
            for i, d in enumerate(lst):
                if isinstance(d, dict):
                    out.append((_first(d, "round") if _first(d, "round") is not None else i,
                                _first(d, "pages", "pages_sent"),
                                _first(d, "dirty_rate", "dirty_pages_rate")))
            return out
    last = {}
    for t, pages, dirty, rnd in timeline_points(vmm, samples):
        if rnd is not None:
            last[rnd] = (pages, dirty)
    out = []
    prev_pages = 0
    for rnd in sorted(last):
        pages, dirty = last[rnd]
        out.append((rnd, pages - prev_pages, dirty))
        prev_pages = pages
    return out


def make_plots(resdir, rows, scenarios, samples_by_run):
    plotdir = os.path.join(resdir, "plots")
    os.makedirs(plotdir, exist_ok=True)
    g = group(rows)
    out = []
    for op in OPS:
        names = [s["name"] for s in scenarios if s["name"] in g and s["op"] == op]
        if not names:
            continue
        col, what = ("boot_ms", "Boot: launch to first serial line") if op == "boot" else \
            ("total_ms", f"{op}: total time")
        p = plot_bars(plotdir, f"total-time-{op}", f"{what} (median, min-max)", "ms", names,
                      [(v, {n: stats(g[n].get(v, []), col) for n in names}) for v in VMMS])
        if p:
            out.append(f"plots/{p}")
        if op == "boot":
            continue
        series = []
        for v in VMMS:
            if op != "snapshot-restore":
                series.append((f"{v} (VMM)", {n: stats(g[n].get(v, []), "downtime_vmm_ms") for n in names}))
            series.append((f"{v} (guest gap)", {n: stats(g[n].get(v, []), "downtime_guest_ms") for n in names}))
        p = plot_bars(plotdir, f"downtime-{op}", f"{op}: downtime as the VMM reports it and as the "
                      "guest sees it (median, min-max)", "ms", names, series)
        if p:
            out.append(f"plots/{p}")
    for s in scenarios:
        if s["op"] != "live-migrate" or s["name"] not in g:
            continue
        traces, rounds = {}, {}
        for v in VMMS:
            ok = [r for r in g[s["name"]].get(v, []) if r["status"] == "ok"]
            if ok:
                smp = samples_by_run.get((s["name"], v, str(ok[0]["run"])), [])
                traces[v] = timeline_points(v, smp)
                rounds[v] = per_round(v, smp)
        p = plot_timeline(plotdir, f"timeline-{s['name']}", f"{s['name']}: pages sent and dirty rate "
                          f"(first passed run; labels mark a new round)", traces, rounds)
        if p:
            out.append(f"plots/{p}")
    return out


def load_samples(path):
    try:
        with open(path) as f:
            return [json.loads(x) for x in f if x.strip()]
    except (OSError, ValueError):
        return []
