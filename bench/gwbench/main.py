"""bench/run: godwit beside QEMU on the same guest kit, workload and link."""
import argparse
import csv
import datetime
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
import traceback

from . import limits as limits_mod
from . import report, scenarios as scen_mod
from .drivers import Godwit, Qemu, RunFailed, Unavailable
from .netns import Net
from .ops import Ctx, run_op
from .procmem import MemSampler
from .schema import COLUMNS
from .util import kill_all_children, log, one_line, run

BENCH = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(BENCH)
BUILD = os.path.join(REPO, "build-bench")
GUEST_REL = os.path.join("guest", "godwit-guest.elf")
GODWIT_REL = os.path.join("src", "cli", "godwit")


def parse_args(argv):
    p = argparse.ArgumentParser(prog="bench/run", description=__doc__)
    p.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                   help="scenario names or globs from the table (default: the full set)")
    p.add_argument("--quick", action="store_true",
                   help="the quick set, 1 run each, short limit probes (under two minutes)")
    p.add_argument("--runs", type=int, default=None, help="runs per VMM and scenario (default 5, quick 1)")
    p.add_argument("--out", help="results folder (default bench/results/<UTC timestamp>)")
    p.add_argument("--table", default=scen_mod.DEFAULT_FILE, help="scenario table (default bench/scenarios.tsv)")
    p.add_argument("--vmm", choices=("both", "godwit", "qemu"), default="both")
    p.add_argument("--guest", help="guest kit ELF (default build-bench/guest/godwit-guest.elf)")
    p.add_argument("--godwit", help="godwit binary (default build-bench/src/cli/godwit)")
    p.add_argument("--no-build", action="store_true", help="do not run meson/ninja")
    p.add_argument("--qemu", default="qemu-system-x86_64", help="QEMU binary")
    p.add_argument("--qemu-machine", default="microvm",
                   help="QEMU machine type: microvm (default; fastest start here) or pc")
    p.add_argument("--no-limits", action="store_true", help="skip measuring the machine's limits")
    p.add_argument("--interleave", action="store_true",
                   help="run 1 of every scenario, then run 2, ... (the order reversed on even "
                        "runs), so that scenarios compared with each other share the host's drift")
    p.add_argument("--list", action="store_true", help="list the scenarios and exit")
    p.add_argument("--report", metavar="DIR",
                   help="only rewrite results.md and the plots of DIR from its runs.csv")
    p.add_argument("-q", "--quiet", action="store_true")
    return p.parse_args(argv)


def run_order(chosen, runs, interleave):
    """(scenario, run) pairs: each scenario's runs in a row, or with interleave run 1 of every
    scenario first, then run 2 in the reverse order (A B, B A, A B, ...)."""
    if not interleave:
        return [(sc, i) for sc in chosen for i in range(1, runs + 1)]
    return [(sc, i) for i in range(1, runs + 1)
            for sc in (chosen if i % 2 else list(reversed(chosen)))]


def utcnow():
    return datetime.datetime.now(datetime.timezone.utc)


def build_godwit(logpath):
    """meson setup (once) + ninja for build-bench; returns an error string or None."""
    with open(logpath, "w") as lf:
        def step(argv, timeout):
            lf.write("$ " + " ".join(argv) + "\n")
            lf.flush()
            r = run(argv, timeout=timeout, cwd=REPO, stdout=lf, stderr=lf)
            return r.returncode
        # werror off: a warning that only -O3 raises must not keep the benchmark from
        # running (the test builds keep -Werror)
        if not os.path.exists(os.path.join(BUILD, "build.ninja")):
            if shutil.which("meson") is None:
                return "meson not installed"
            if step(["meson", "setup", BUILD, "--buildtype=release", "-Dtests=false",
                     "-Dwerror=false"], 600) != 0:
                return f"meson setup failed (see {os.path.basename(logpath)})"
        elif "werror=false" not in _configured(BUILD):
            step(["meson", "configure", BUILD, "-Dwerror=false"], 120)
        # -k 0: build everything that can be built (the guest kit even if godwit breaks)
        if step(["ninja", "-C", BUILD, "-k", "0"], 1200) != 0:
            return f"ninja failed (see {os.path.basename(logpath)})"
    return None


def _configured(build):
    try:
        with open(os.path.join(build, "meson-info", "intro-buildoptions.json")) as f:
            opts = json.load(f)
        return " ".join(f"{o['name']}={str(o['value']).lower()}" for o in opts)
    except (OSError, ValueError, KeyError):
        return ""


def git_commit():
    r = run(["git", "-C", REPO, "describe", "--always", "--dirty"], timeout=10)
    return r.stdout.strip() if r.returncode == 0 else "?"


def machine_info(args, guest, godwit_bin):
    info = {}

    def cmd(argv):
        try:
            r = run(argv, timeout=10)
            return r.stdout.strip() or r.stderr.strip()
        except (OSError, Exception):  # noqa: BLE001
            return "?"
    info["uname"] = " ".join(platform.uname())
    try:
        with open("/proc/cpuinfo") as f:
            models = [x.split(":", 1)[1].strip() for x in f if x.startswith("model name")]
        info["cpu"] = f"{models[0]} x {len(models)}" if models else "?"
    except OSError:
        info["cpu"] = "?"
    try:
        with open("/proc/meminfo") as f:
            info["memory"] = f.readline().split(":", 1)[1].strip()
    except OSError:
        pass
    try:
        mods = sorted(m for m in os.listdir("/sys/module") if "kvm" in m)
        info["kvm_modules"] = " ".join(mods) or "none listed"
    except OSError:
        info["kvm_modules"] = "?"
    info["thp"] = cmd(["cat", "/sys/kernel/mm/transparent_hugepage/enabled"])
    info["qemu"] = cmd([args.qemu, "--version"]).splitlines()[0] if shutil.which(args.qemu) else "missing"
    info["qemu_machine"] = args.qemu_machine
    info["python"] = sys.version.split()[0] + " " + sys.executable
    info["gnuplot"] = cmd(["gnuplot", "--version"])
    info["cc"] = cmd(["cc", "--version"]).splitlines()[0] if shutil.which("cc") else "missing"
    info["godwit_commit"] = git_commit()
    info["godwit_binary"] = godwit_bin
    info["guest"] = guest
    return info


def write_machine(resdir, info, limits, notes):
    with open(os.path.join(resdir, "machine.json"), "w") as f:
        json.dump({"machine": info, "limits_bytes_per_s": limits, "limit_notes": notes}, f, indent=1)
    with open(os.path.join(resdir, "machine.md"), "w") as f:
        f.write("# Machine\n\n| item | value |\n|---|---|\n")
        for k, v in info.items():
            f.write(f"| {k} | {str(v).replace('|', '/')} |\n")
        f.write("\n## Limits (bytes/s)\n\n| limit | bytes/s | note |\n|---|---|---|\n")
        for k, v in limits.items():
            f.write(f"| {k} | {v:.0f} | {notes.get(k, '')} |\n" if v else f"| {k} | – | {notes.get(k, '')} |\n")


def write_qemu_params(resdir, qemu_params, qemu_argv):
    with open(os.path.join(resdir, "qemu-params.md"), "w") as f:
        f.write("# QEMU settings used\n\n")
        f.write("Base command line (memory, vCPUs and the guest command line from the scenario):\n\n")
        f.write("```\n" + " ".join(qemu_argv) + "\n```\n\n")
        f.write("Destination: the same command line plus `-incoming defer`, then QMP "
                "`migrate-incoming tcp:ADDR:PORT`; restore: plus `-incoming \"exec:cat FILE\"`. "
                "A guest that was stopped on the source arrives paused: the harness sends `cont` "
                "as soon as `query-status` says `paused`, as an operator would.\n\n")
        f.write("| scenario | settings |\n|---|---|\n")
        for name, p in qemu_params.items():
            f.write(f"| {name} | `{json.dumps(p, sort_keys=True)}` |\n")
        f.write("\nmax-bandwidth 1099511627776 (1 TiB/s) means: no cap. On shaped links it is the "
                "link rate; a scenario's bandwidth column overrides both.\n")


def add_throughput(row, sc, limits):
    def f(k):
        v = row.get(k)
        return float(v) if v not in (None, "") else None
    start = None
    if sc["op"] == "snapshot-restore":
        # the disk's own direct rate, the yardstick for snapshot writes: measured
        # beside this snapshot if the probes worked (the shared disk swings from minute to
        # minute), else the run-start probe; that one stays a separate figure either way
        b, ms = f("snapshot_bytes"), f("snapshot_ms")
        start = "disk_write_direct" if limits.get("disk_write_direct") else "disk_write"
        beside = [v for v in (f("disk_direct_before_bytes_per_s"),
                              f("disk_direct_after_bytes_per_s")) if v]
        if beside:
            lim = ("disk_buffered_beside" if row.get("disk_probe_buffered")
                   else "disk_direct_beside")
            rate = sum(beside) / len(beside)
        else:
            lim, rate = start, limits.get(start)
    elif sc["op"] in scen_mod.MIGRATE_OPS:
        b = f("vmm_bytes") or f("wire_bytes")
        ms, lim = f("total_ms"), f"link_{sc['link']}"
        rate = limits.get(lim)
    else:
        return
    if not (b and ms):
        return
    row["throughput_bytes_per_s"] = b / (ms / 1000)
    if start and limits.get(start):
        row["limit_start_fraction"] = row["throughput_bytes_per_s"] / limits[start]
    if rate:
        row["limit_name"] = lim
        row["limit_bytes_per_s"] = rate
        row["limit_fraction"] = row["throughput_bytes_per_s"] / rate


def add_target(row, sc):
    """Live: is the downtime the VMM reports within the target? A flag in the results
    (results.md lists misses); a missed target is not a failed run."""
    dt = row.get("downtime_vmm_ms")
    if sc["op"] == "live-migrate" and sc.downtime is not None and dt not in (None, ""):
        row["downtime_target_met"] = 1 if float(dt) <= sc.downtime else 0


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from .util import set_verbose
    set_verbose(not args.quiet)
    all_sc = scen_mod.load(args.table)
    if args.report:
        return regenerate(os.path.abspath(args.report), all_sc)
    if args.list:
        for s in all_sc:
            print(f"{s['name']:40} {s['set']:6} {s['op']:17} {s['memory']:5} cpus={s['cpus']} "
                  f"link={s['link']} {s['workload']}")
        return 0
    try:
        chosen = scen_mod.select(all_sc, args.scenarios, args.quick)
    except ValueError as e:
        print(f"bench/run: {e}", file=sys.stderr)
        return 2
    runs = args.runs or (1 if args.quick else 5)
    started = utcnow()
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    default_root = os.path.join(BENCH, "results")
    resdir = os.path.abspath(args.out or os.path.join(default_root, stamp))
    os.makedirs(os.path.join(resdir, "logs"), exist_ok=True)
    log(f"results -> {resdir}; {len(chosen)} scenario(s), {runs} run(s) per VMM")

    # SIGTERM behaves like Ctrl-C: stop, clean up, keep the partial results
    signal.signal(signal.SIGTERM, _sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)   # even if started with SIGINT ignored

    tmpdir = tempfile.mkdtemp(prefix="gwb-")
    net = None
    sampler = MemSampler()
    rows = []
    samples_by_run = {}
    qemu_params = {}
    limits, notes = {}, {}
    interrupted = False
    csv_path = os.path.join(resdir, "runs.csv")
    csvf = open(csv_path, "w", newline="")
    writer = csv.DictWriter(csvf, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    csvf.flush()
    info = {}
    try:
        # -- build ----------------------------------------------------------
        godwit_err = build_msg = None
        if not args.no_build and not (args.godwit and args.guest):
            log("building godwit (build-bench, release)")
            godwit_err = build_msg = build_godwit(os.path.join(resdir, "build.log"))
            if godwit_err:
                log(f"build: {godwit_err}")
        godwit_bin = os.path.abspath(args.godwit or os.path.join(BUILD, GODWIT_REL))
        guest = os.path.abspath(args.guest or os.path.join(BUILD, GUEST_REL))
        guest_err = None if os.path.isfile(guest) else f"guest kit {guest} not found"
        if not os.access(godwit_bin, os.X_OK):
            godwit_err = f"godwit binary {godwit_bin} not built" + (f" ({godwit_err})" if godwit_err else "")
        else:
            godwit_err = None      # a stale binary is still usable; the build log says why
        qemu_bin = shutil.which(args.qemu)
        qemu_err = None if qemu_bin else f"{args.qemu} not installed"
        info = machine_info(args, guest, godwit_bin)
        info["build"] = ("skipped (--no-build)" if args.no_build or (args.godwit and args.guest)
                         else build_msg or "ok")
        if build_msg and not godwit_err and os.path.exists(godwit_bin):
            mtime = datetime.datetime.fromtimestamp(os.path.getmtime(godwit_bin), datetime.timezone.utc)
            info["build"] += f"; using the godwit binary built {mtime.strftime('%Y-%m-%d %H:%M:%SZ')}"

        # -- network and limits --------------------------------------------
        need_net = (any(s["op"] in scen_mod.MIGRATE_OPS for s in chosen)
                    or not args.no_limits)
        # loopback always, then every link a chosen scenario uses
        links = sorted({"loopback"} | {s["link"] for s in chosen if s["link"] != "-"},
                       key=lambda x: (x != "loopback", x))
        if need_net:
            net = Net()
            net.setup()
        if not args.no_limits:
            log("measuring limits")
            limits, notes = limits_mod.measure(net, links, resdir, tmpdir, args.quick)
        elif any(s["op"] == "snapshot-restore" for s in chosen):
            # snapshots are judged against the disk's own rate in the same run, so that much
            # is measured even without the other limits
            log("measuring the disk's write rates")
            limits_mod.measure_disk(limits, notes, resdir, args.quick)
        write_machine(resdir, info, limits, notes)

        # -- scenarios -------------------------------------------------------
        drivers = []
        if args.vmm in ("both", "godwit"):
            drivers.append(("godwit", Godwit(godwit_bin, guest, tmpdir, sampler),
                            godwit_err or guest_err))
        if args.vmm in ("both", "qemu"):
            drivers.append(("qemu", Qemu(qemu_bin or args.qemu, guest, tmpdir, sampler, args.qemu_machine),
                            qemu_err or guest_err))
        port = 47100
        unavailable = {}    # (scenario, vmm) -> reason: not offered, so not retried
        for sc, i in run_order(chosen, runs, args.interleave):
            scdir = os.path.join(resdir, "logs", sc["name"])
            os.makedirs(scdir, exist_ok=True)
            for vname, drv, err in drivers:
                port += 1
                row = base_row(sc, vname, i)
                logprefix = os.path.join(scdir, f"{vname}-{i}")
                row["log"] = os.path.relpath(logprefix, resdir)
                ctx = Ctx(net, tmpdir if sc["op"] != "snapshot-restore" else resdir, logprefix, port)
                ctx.run = i
                if sc["op"] == "snapshot-restore":
                    ctx.workdir = os.path.join(resdir, "snapshots")
                    os.makedirs(ctx.workdir, exist_ok=True)
                if not err and (sc["name"], vname) in unavailable:
                    err = f"{unavailable[(sc['name'], vname)]} (run 1; not retried)"
                if err:
                    row.update(status="unavailable", reason=err)
                else:
                    log(f"{sc['name']} [{vname} {i}/{runs}]")
                    try:
                        row.update(run_op(drv, sc, ctx))
                        row["status"] = "ok"
                    except Unavailable as e:
                        row = failed_row(sc, vname, i, row, "unavailable", str(e))
                        unavailable[(sc["name"], vname)] = row["reason"]
                    except RunFailed as e:
                        row = failed_row(sc, vname, i, row, "failed", str(e))
                    except KeyboardInterrupt:
                        raise
                    except Exception as e:  # noqa: BLE001 - a harness bug must not stop the run
                        with open(logprefix + "-harness-error.txt", "w") as f:
                            traceback.print_exc(file=f)
                        row = failed_row(sc, vname, i, row, "failed",
                                         f"harness error: {type(e).__name__}: {e}")
                    if ctx.samples:
                        with open(logprefix + "-migrate-status.jsonl", "w") as f:
                            for s in ctx.samples:
                                f.write(json.dumps(s) + "\n")
                        samples_by_run[(sc["name"], vname, str(i))] = ctx.samples
                    if vname == "qemu" and drv.params:
                        qemu_params.setdefault(sc["name"], drv.params)
                    drv.params = {}
                if row["status"] == "ok":
                    add_throughput(row, sc, limits)
                    add_target(row, sc)
                log(f"  -> {summary(row)}")
                rows.append(row)
                writer.writerow(clean(row))
                csvf.flush()
            if args.interleave or i == runs:
                shutil.rmtree(os.path.join(resdir, "snapshots"), ignore_errors=True)
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: cleaning up, writing partial results")
    except Exception as e:  # noqa: BLE001 - e.g. no permission for namespaces: still report
        interrupted = f"aborted: {type(e).__name__}: {e}"
        log(interrupted)
        with open(os.path.join(resdir, "harness-error.txt"), "w") as f:
            traceback.print_exc(file=f)
    finally:
        kill_all_children()
        sampler.stop()
        if net is not None:
            net.teardown()
        shutil.rmtree(tmpdir, ignore_errors=True)
        shutil.rmtree(os.path.join(resdir, "snapshots"), ignore_errors=True)
        csvf.close()
    # -- report ------------------------------------------------------------------
    meta = {"started_utc": started.strftime("%Y-%m-%d %H:%M:%SZ"), "runs": runs,
            "build": info.get("build", "?"),
            "godwit_commit": info.get("godwit_commit"), "qemu_version": info.get("qemu"),
            "qemu_machine": args.qemu_machine, "guest": os.path.relpath(info.get("guest") or "?", REPO),
            "quick": args.quick, "interleave": args.interleave, "interrupted": interrupted,
            "vmms": ["godwit", "qemu"] if args.vmm == "both" else [args.vmm]}
    qemu_argv = Qemu("qemu-system-x86_64", "GUEST.elf", "TMP", None, args.qemu_machine).argv(
        {"memory": "SIZE", "cpus": "N", "workload": "WORKLOAD"}, "QMP.sock")
    write_qemu_params(resdir, qemu_params, qemu_argv)
    plots = []
    try:
        plots = report.make_plots(resdir, rows, chosen, samples_by_run)
    except Exception as e:  # noqa: BLE001
        log(f"plots failed: {e}")
    report.write_markdown(os.path.join(resdir, "results.md"), rows, chosen, limits, notes, meta, plots)
    with open(os.path.join(resdir, "meta.json"), "w") as f:
        json.dump({**meta, "scenarios": [s["name"] for s in chosen]}, f, indent=1)
    if os.path.dirname(resdir) == default_root:
        link = os.path.join(default_root, "latest")
        try:
            if os.path.islink(link) or os.path.exists(link):
                os.unlink(link)
            os.symlink(os.path.basename(resdir), link)
        except OSError as e:
            log(f"cannot update {link}: {e}")
    n_ok = sum(r["status"] == "ok" for r in rows)
    log(f"done: {n_ok}/{len(rows)} runs measured; {os.path.join(resdir, 'results.md')}")
    print(resdir)
    return 0 if not interrupted else (130 if interrupted is True else 1)


def regenerate(resdir, all_sc):
    """Rewrite results.md and plots/ from runs.csv, machine.json, meta.json and the logs."""
    with open(os.path.join(resdir, "runs.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    try:
        with open(os.path.join(resdir, "meta.json")) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        meta = {"started_utc": "?", "runs": "?"}
    try:
        with open(os.path.join(resdir, "machine.json")) as f:
            mj = json.load(f)
    except (OSError, ValueError):
        mj = {}
    by_name = {s["name"]: s for s in all_sc}
    names = meta.get("scenarios") or list(dict.fromkeys(r["scenario"] for r in rows))
    chosen = []
    for n in names:
        if n in by_name:
            chosen.append(by_name[n])
        else:   # a scenario since removed from the table: enough to report it
            r = next((r for r in rows if r["scenario"] == n), None)
            if r:
                chosen.append(scen_mod.Scenario(name=n, op=r["op"]))
    samples = {}
    for r in rows:
        p = os.path.join(resdir, (r.get("log") or "") + "-migrate-status.jsonl")
        if r.get("log") and os.path.exists(p):
            samples[(r["scenario"], r["vmm"], str(r["run"]))] = report.load_samples(p)
    plots = report.make_plots(resdir, rows, chosen, samples)
    report.write_markdown(os.path.join(resdir, "results.md"), rows, chosen,
                          mj.get("limits_bytes_per_s", {}), mj.get("limit_notes", {}), meta, plots)
    print(os.path.join(resdir, "results.md"))
    return 0


def _sigterm(signum, frame):
    raise KeyboardInterrupt()


def base_row(sc, vmm, i):
    return {"scenario": sc["name"], "set": sc["set"], "op": sc["op"], "vmm": vmm, "run": i,
            "status": "", "reason": "", "memory": sc["memory"], "cpus": sc["cpus"],
            "workload": sc["workload"], "link": sc["link"], "downtime_target_ms": sc["downtime_ms"],
            "bandwidth": sc["bandwidth"], "restore": sc["restore"], "on_stall": sc["on_stall"],
            "started_utc": utcnow().strftime("%Y-%m-%dT%H:%M:%SZ")}


def failed_row(sc, vmm, i, old, status, reason):
    row = base_row(sc, vmm, i)
    row["started_utc"] = old.get("started_utc", row["started_utc"])
    row["log"] = old.get("log", "")
    row["status"] = status
    row["reason"] = one_line(reason, 500) or status
    return row


def clean(row):
    out = {}
    for k in COLUMNS:
        v = row.get(k)
        if v is None:
            v = ""
        elif isinstance(v, float):
            v = f"{v:.6g}" if abs(v) < 1e6 else f"{v:.0f}"
        out[k] = v
    return out


def summary(row):
    if row["status"] != "ok":
        return f"{row['status']}: {row['reason']}"
    parts = []
    for k in ("boot_ms", "snapshot_ms", "restore_ms", "total_ms", "downtime_vmm_ms", "downtime_guest_ms",
              "rounds", "client_outage_ms", "probes_lost", "packet_rate_pps"):
        v = row.get(k)
        if v not in (None, ""):
            parts.append(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}")
    if row.get("downtime_target_met") == 0:
        parts.append(f"MISSED downtime target {row['downtime_target_ms']} ms")
    return "ok " + " ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
