"""The network scenarios (ops net-live and net-rate): what a client sees of a live migration,
and the guest's packet rate, godwit beside QEMU microvm on the same guest kit.

Topology: tests/e2e/test_net.py's, built afresh for each run in namespaces of this process:
host A and host B each bridge a tap to an uplink veth, and the uplinks meet on a "switch"
bridge in a client's namespace; the hosts migrate over the same switch. A scenario's link
(1gbit, 10gbit) shapes both hosts' uplinks with tc tbf, so the migration and the probes share
it. The guest kit answers UDP probes (`workload=...net`, the address is added here).

net-live: the guest (abcheck beside the echo) runs on A; a client sends a probe every
millisecond (tests/e2e/gwprobe.py); the guest moves live to B. godwit: `--net` on A's tap,
`--net-override` onto B's, its default RARP schedule, and the guest announces itself
(GUEST_ANNOUNCE). QEMU: `-device virtio-net-device` on the same taps (vhost off), whose
announce-self runs after the incoming migration with its defaults (the same schedule). Both
get the scenario's downtime target and bandwidth cap, as drivers.py gives them (QEMU the
link's rate without a cap). The run is
checked like e2e-net (no probe answered twice, the guest counted no duplicate, replies from
both sides) and like every move (heartbeats continue with the next seq, abcheck passes);
then measured: the guest's downtime (its last heartbeat line on A to its first on B, as the
serial lines arrive), the client's outage at the switch (the reply gap around that moment),
the probes sent in that gap never answered, the longest reply gap of the whole run, and the
VMM's downtime.

net-rate: the guest kit alone (`workload=net`) on A, a client sending as fast as it can for
3 s; replies a second."""
import bisect
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from .drivers import QEMU_UNLIMITED, RunFailed
from .qmp import QMP
from .serial import HB_RE

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "tests", "e2e"))
import gwtest  # noqa: E402
import test_net  # noqa: E402

MAC = "02:67:77:00:be:01"
RATE_SECONDS = 3.0


class _Env(gwtest.TestEnv):
    """gwtest's scratch and process bookkeeping, with the paths given here (not argv)."""

    def __init__(self, godwit, guest, parent):
        self.godwit = godwit
        self.guest = guest
        self.tmp = tempfile.mkdtemp(prefix="gwb-net-", dir=parent)
        self.procs = []


def outage(r, t_src_last, t_dst_first):
    """The client's view of the switch: the gap between the two consecutive replies around the
    moment the guest stopped on the source and ran on the destination (the midpoint of its
    last heartbeat line there and its first here), and the probes sent in that gap that were
    never answered."""
    reps = sorted(r["replies"], key=lambda x: x[2])
    times = [x[2] for x in reps]
    i = bisect.bisect_left(times, (t_src_last + t_dst_first) / 2)
    if i == 0 or i == len(reps):
        return None
    a, b = reps[i - 1], reps[i]
    answered = {x[0] for x in reps}
    lo, hi = min(a[0], b[0]), max(a[0], b[0])
    return {"client_outage_ms": (b[2] - a[2]) * 1e3,
            "probes_lost": sum(1 for k in range(lo + 1, hi) if k not in answered),
            "reply_gap_max_ms": max(y - x for x, y in zip(times, times[1:])) * 1e3,
            "probes_sent": r["sent"], "probe_replies": len(reps)}


def _hb_times(vm):
    with vm.cond:
        return [(t, int(m.group(1))) for t, x in vm.lines if (m := HB_RE.match(x))]


def _guest_downtime(src, dst):
    """The guest's last heartbeat line on the source to its first on the destination, with
    their host times."""
    a, b = _hb_times(src), _hb_times(dst)
    if not a or not b:
        raise RunFailed("no heartbeat on one side of the move")
    return {"downtime_guest_ms": (b[0][0] - a[-1][0]) * 1e3, "hb_last_before": a[-1][1],
            "hb_first_after": b[0][1]}, a[-1][0], b[0][0]


def _probed_a_while(vm, beats=25):
    """The guest ran (and so answered probes: once a 4 ms tick) for beats heartbeats with the
    client probing: a wait in guest time, not wall time, which a loaded host stretches."""
    seqs = vm.heartbeats()
    vm.wait_line(rf"^hb {(seqs[-1] if seqs else 0) + beats}$", timeout=60)


def _qemu(env, drv, sc, name, ns, tap, cmdline, incoming=None):
    """A gwtest Vm (serial capture) running QEMU microvm with a virtio-net-device on tap."""
    qmp_path = env.path(f"{name}.qmp")
    args = ["-accel", "kvm", "-cpu", "host,-arch-capabilities", "-M", "microvm,acpi=off",
            "-m", sc["memory"], "-smp", sc["cpus"], "-display", "none", "-nodefaults",
            "-serial", "stdio", "-no-reboot", "-kernel", env.guest, "-append", cmdline,
            "-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no,vhost=off",
            "-device", f"virtio-net-device,netdev=n0,mac={MAC}",
            "-qmp", f"unix:{qmp_path},server=on,wait=off"]
    if incoming:
        args += ["-incoming", incoming]
    vm = env.vm(name, args=args, netns=ns)  # env.godwit is QEMU's binary for QEMU's runs
    for _ in range(100):
        if os.path.exists(qmp_path):
            break
        time.sleep(0.1)
    q = QMP(qmp_path)
    q.connect()
    return vm, q


def _live_godwit(env, net, drv, sc, cmdline):
    uri = f"tcp:{net.b_ip}:4444"
    src = gwtest.start_source(env, "src", memory=sc["memory"], cpus=int(sc["cpus"]),
                              cmdline=cmdline, netns=net.a,
                              extra=["--net", f"tap={net.tap_a},id=nic"])
    test_net.wait_replies(env, net, "src")
    dst = gwtest.start_dest(env, "dst", uri, netns=net.b,
                            extra=["--net-override", f"id=nic,tap={net.tap_b}"])
    probe = test_net.Prober(env, net, "live")
    _probed_a_while(src)
    args = ["--mode", "live", "--downtime-ms", str(sc.downtime)]
    if sc["bandwidth"] != "-":
        args += ["--bandwidth", sc["bandwidth"]]
    drv.params = {"godwit migrate": " ".join(args + [uri])}
    _, res, _ = gwtest.migrate(src, uri, *args)
    src.wait_exit()
    return src, dst, probe, {"downtime_vmm_ms": res.get("downtime_ms")}


def _live_qemu(env, net, drv, sc, cmdline):
    uri = f"tcp:{net.b_ip}:4445"
    src, qs = _qemu(env, drv, sc, "src", net.a, net.tap_a, cmdline)
    src.wait_line(r"^workload net ")
    test_net.wait_replies(env, net, "src")
    dst, _ = _qemu(env, drv, sc, "dst", net.b, net.tap_b, cmdline, incoming=uri)
    probe = test_net.Prober(env, net, "live")
    _probed_a_while(src)
    # as drivers.Qemu.migrate: the link's rate, since QEMU's default cap is far below it
    bw = sc.bandwidth_bytes or ((sc.link_bits // 8) if sc.link_bits else QEMU_UNLIMITED)
    params = {"downtime-limit": sc.downtime, "max-bandwidth": bw}
    qs.cmd("migrate-set-parameters", **params)
    drv.params = {"parameters": params, "announce": "QEMU's defaults after the incoming migration"}
    qs.cmd("migrate", uri=uri)
    st = {}
    for _ in range(6000):
        st = qs.cmd("query-migrate")
        if st.get("status") in ("completed", "failed", "cancelled"):
            break
        time.sleep(0.05)
    if st.get("status") != "completed":
        raise RunFailed(f"QEMU migration {st.get('status')}: {st.get('error-desc', '')}")
    return src, dst, probe, {"downtime_vmm_ms": st.get("downtime")}


def _live(env, net, drv, sc):
    cmdline = f"{sc['workload']} ip={net.guest_ip}/24"
    src, dst, probe, row = (_live_godwit if drv.name == "godwit" else _live_qemu)(
        env, net, drv, sc, cmdline)
    gwtest.check_moved(src, dst, "net-live", abcheck=sc.kind == "abcheck")
    r = env.probes = probe.finish()
    last = src.heartbeats()[-1]
    test_net.analyse(r, f"net-live {drv.name}", last)
    guest, t_src_last, t_dst_first = _guest_downtime(src, dst)
    out = outage(r, t_src_last, t_dst_first)
    if out is None:
        raise RunFailed("no reply on one side of the guest's switch")
    row.update(out)
    row.update(guest)
    return row


def _rate(env, net, drv, sc):
    cmdline = f"{sc['workload']} ip={net.guest_ip}/24"
    if drv.name == "godwit":
        gwtest.start_source(env, "rate", memory=sc["memory"], cpus=int(sc["cpus"]),
                            cmdline=cmdline, netns=net.a,
                            extra=["--net", f"tap={net.tap_a},id=nic"])
    else:
        vm, _ = _qemu(env, drv, sc, "rate", net.a, net.tap_a, cmdline)
        vm.wait_line(r"^workload net ")
    test_net.wait_replies(env, net, "rate")
    p = test_net.Prober(env, net, "rate", interval_ms=0.02)
    time.sleep(RATE_SECONDS)
    r = p.finish()
    times = sorted(x[2] for x in r["replies"])
    span = times[-1] - times[0] if len(times) > 1 else 0
    if not span:
        raise RunFailed("fewer than two replies")
    return {"packet_rate_pps": (len(times) - 1) / span, "probes_sent": r["sent"],
            "probe_replies": len(times)}


def _keep_logs(env, logprefix):
    """The VMMs' stderr and serial lines, beside the run's other logs."""
    for vm in env.procs:
        try:
            shutil.copy(vm.stderr_path, f"{logprefix}-{vm.name}.stderr")
            with vm.cond, open(f"{logprefix}-{vm.name}.serial", "w") as f:
                f.writelines(f"{t:.6f} {x}\n" for t, x in vm.lines)
        except OSError:
            pass
    if getattr(env, "probes", None):
        with open(f"{logprefix}-probes.json", "w") as f:
            json.dump(env.probes, f)


def run(drv, sc, ctx):
    env = _Env(drv.binary, drv.guest, ctx.workdir)
    try:
        try:
            net = test_net.Net(env)
            for ns, dev in net.uplinks if sc.link_bits else ():
                subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev,
                                "root", "tbf", "rate", sc["link"], "burst", "4mb", "latency",
                                "50ms"], check=True, capture_output=True)
            return (_live if sc["op"] == "net-live" else _rate)(env, net, drv, sc)
        except (AssertionError, subprocess.SubprocessError, OSError) as e:
            raise RunFailed(f"{type(e).__name__}: {e}") from e
    finally:
        for vm in env.procs:
            vm.kill()
        _keep_logs(env, ctx.logprefix)
        env.cleanup()
