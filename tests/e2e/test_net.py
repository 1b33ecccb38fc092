#!/usr/bin/env python3
"""virtio-net over taps through the real binary, with the guest kit's net workload answering
UDP probes (each reply carries the guest's heartbeat and its count of datagrams seen).

Topology, all in namespaces of this test: host A and host B each bridge a tap (the guest's
NIC) to an uplink veth; the uplinks meet on a "switch" bridge in the client's namespace,
where a client (gwprobe.py) sends a probe every millisecond and records every reply. The
hosts migrate over the same switch.
- Errors at start: a missing tap, bad --net values, a --disk-override on a NIC's id.
- A tap deleted while the guest runs: logged, the guest sees the link go down and runs on.
- A flood from the client: the control socket, a pause and heartbeats go on.
- Live and warm migration A -> B with --net-override: replies resume from B (after the
  source exited), no probe is answered twice and the guest's count never runs ahead of the
  probes sent (it counted no duplicate), heartbeats continue, abcheck passes, the
  destination reports its RARP announcements and the guest announced itself (GUEST_ANNOUNCE).
  Lost probes and the longest reply gap are printed, not asserted.
- A destination whose tap is missing refuses in pre-flight; a destination killed during the
  move: either way the source keeps answering.
- Snapshot on A and restore on B with --net-override: replies resume from B."""
import json
import os
import subprocess
import sys
import time

import gwtest

PORT = 7


class Net:
    """Host A, host B and a client joined by a bridge; each host bridges a tap to its uplink."""

    def __init__(self, env):
        tag = f"{os.getpid() % 100000}"
        net = 10 + os.getpid() % 240
        self.a, self.b, self.c = f"gwn{tag}a", f"gwn{tag}b", f"gwn{tag}c"
        self.a_ip, self.b_ip = f"10.78.{net}.1", f"10.78.{net}.2"
        self.client_ip, self.guest_ip = f"10.78.{net}.100", f"10.78.{net}.50"
        self.tap_a, self.tap_b = "gwtapa", "gwtapb"
        self.src, self.dst, self.dst_ip = self.a, self.b, self.b_ip  # for gwtest helpers
        env.hosts = getattr(env, "hosts", []) + [self]
        self.uplinks = []  # (namespace, device): the hosts' ends of their uplinks
        for ns in (self.a, self.b, self.c):
            self._run("ip", "netns", "add", ns)
            self._ns(ns, "ip", "link", "set", "lo", "up")
        self._ns(self.c, "ip", "link", "add", "sw", "type", "bridge", "forward_delay", "0")
        self._ns(self.c, "ip", "addr", "add", f"{self.client_ip}/24", "dev", "sw")
        self._ns(self.c, "ip", "link", "set", "sw", "up")
        for ns, ip, tap, h in ((self.a, self.a_ip, self.tap_a, "a"),
                               (self.b, self.b_ip, self.tap_b, "b")):
            up, port = f"gw{tag}u{h}", f"gw{tag}p{h}"
            self._run("ip", "link", "add", up, "type", "veth", "peer", "name", port)
            self.uplinks.append((ns, up))
            self._run("ip", "link", "set", up, "netns", ns)
            self._run("ip", "link", "set", port, "netns", self.c)
            self._ns(self.c, "ip", "link", "set", port, "master", "sw")
            self._ns(self.c, "ip", "link", "set", port, "up")
            self._ns(ns, "ip", "link", "add", "br0", "type", "bridge", "forward_delay", "0")
            self._ns(ns, "ip", "tuntap", "add", tap, "mode", "tap", "vnet_hdr")
            for dev in (up, tap):
                self._ns(ns, "ip", "link", "set", dev, "master", "br0")
                self._ns(ns, "ip", "link", "set", dev, "up")
            self._ns(ns, "ip", "addr", "add", f"{ip}/24", "dev", "br0")
            self._ns(ns, "ip", "link", "set", "br0", "up")

    @staticmethod
    def _run(*cmd):
        subprocess.run(cmd, check=True, capture_output=True)

    def _ns(self, ns, *cmd):
        self._run("ip", "netns", "exec", ns, *cmd)

    def cleanup(self):
        for ns in (self.a, self.b, self.c):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


class Prober:
    """gwprobe.py in the client's namespace, probing the guest every millisecond."""

    def __init__(self, env, net, name, interval_ms=1):
        self.stop_path = env.path(f"{name}.stop")
        if os.path.exists(self.stop_path):
            os.unlink(self.stop_path)
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gwprobe.py")
        self.p = subprocess.Popen(["ip", "netns", "exec", net.c, sys.executable, script,
                                   net.guest_ip, str(PORT), str(interval_ms), self.stop_path],
                                  stdout=subprocess.PIPE, text=True)
        assert self.p.stdout.readline().strip() == "probing"

    def finish(self):
        open(self.stop_path, "w").close()
        out, _ = self.p.communicate(timeout=60)
        return json.loads(out)


def wait_replies(env, net, what, timeout=60):
    """Probes until the guest answers (ARP resolved, workload running)."""
    p = Prober(env, net, f"{what}-warmup")
    t = time.monotonic()
    while time.monotonic() - t < timeout:
        time.sleep(0.5)
        r = p.finish()
        if r["replies"]:
            return r
        p = Prober(env, net, f"{what}-warmup")
    p.finish()
    raise AssertionError(f"{what}: the guest never answered")


def analyse(r, what, src_last_hb):
    """Checks the replies of one probing run; prints lost probes and the longest gaps.
    A reply whose heartbeat is past the source's last one came from the destination."""
    reps = sorted(r["replies"])
    assert not r["bad"], f"{what}: malformed replies {r['bad'][:3]}"
    probes = [k for k, *_ in reps]
    assert len(set(probes)) == len(probes), f"{what}: a probe was answered twice"
    ns = [n for *_, n in reps]
    for (k1, n1), (k2, n2) in zip(zip(probes, ns), zip(probes[1:], ns[1:])):
        # the count grows by one a datagram seen; never faster than the probes sent
        assert n2 > n1 and n2 - n1 <= k2 - k1, \
            f"{what}: probe {k2} got count {n2} after probe {k1} got {n1}: counted twice"
    after = [rep for rep in reps if rep[3] > src_last_hb]
    assert after, f"{what}: no reply from the destination (heartbeat past {src_last_hb})"
    assert reps[0][3] <= src_last_hb, f"{what}: no reply from the source"
    first, last = probes[0], probes[-1]
    lost = (last - first + 1) - len(probes)
    times = sorted(t for _, _, t, _, _ in reps)
    gaps = sorted(((b - a, a) for a, b in zip(times, times[1:])), reverse=True)
    # the switch: the longest gap in the half second before the first reply that must come
    # from the destination (its heartbeat is past the source's last)
    t_dst = min(t for _, _, t, _, _ in after)
    switch = max(((g, a) for g, a in gaps if t_dst - 0.5 < a < t_dst), default=(0, 0))
    print(f"{what}: {r['sent']} probes, {len(reps)} replies, {lost} lost between the first "
          f"and last reply; longest reply gap {gaps[0][0] * 1e3:.1f} ms at "
          f"{(gaps[0][1] - t_dst) * 1e3:+.0f} ms from the destination's first certain reply; "
          f"at the switch {switch[0] * 1e3:.1f} ms (at {(switch[1] - t_dst) * 1e3:+.0f} ms)")
    return reps


def run_fails(env, *args, netns=None):
    cmd = [env.godwit, "run", "--memory", "32M", "--kernel", env.guest, "--serial", "none",
           "--api-socket", env.path("fail.sock"), *args]
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert p.returncode != 0, f"godwit run {args} succeeded"
    return p.stderr


def test_errors(env, net):
    err = run_fails(env, "--net", "tap=gwnosuch", netns=net.a)
    assert "gwnosuch" in err and "no such interface" in err, err
    err = run_fails(env, "--net", "id=x")
    assert "tap=NAME is required" in err, err
    err = run_fails(env, "--net", "tap=t0,mac=01:00:00:00:00:01")
    assert "unicast" in err, err
    err = run_fails(env, "--net", "tap=t0,speed=10")
    assert "unknown key 'speed'" in err, err
    err = run_fails(env, *sum((["--net", f"tap=t{i}"] for i in range(5)), []))
    assert "at most 4" in err, err


def test_tap_lost(env, net):
    """A tap deleted under a running guest: logged, the link goes down, the guest runs on."""
    net._ns(net.a, "ip", "tuntap", "add", "gwtapx", "mode", "tap", "vnet_hdr")
    vm = env.vm("lost", cmdline=f"workload=net ip={net.guest_ip}/24", netns=net.a,
                extra=["--net", "tap=gwtapx"])
    vm.wait_line(r"^workload net ")
    vm.wait_socket()
    net._ns(net.a, "ip", "link", "del", "gwtapx")
    vm.wait_line(r"^net link down$", timeout=30)
    deadline = time.monotonic() + 30
    while "link is down" not in vm.stderr() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "tap gwtapx" in vm.stderr() and "link is down" in vm.stderr(), vm.stderr()
    last = vm.heartbeats()[-1]
    vm.wait_line(rf"^hb {last + 50}$", timeout=60)
    assert vm.status()["state"] == "running"
    vm.ctl("stop")
    assert vm.wait_exit() == 0


def test_flood(env, net):
    """A client sending as fast as it can: the control socket answers, a pause and a
    resume go through, heartbeats go on, the guest keeps answering."""
    vm = gwtest.start_source(env, "flood", cmdline=f"workload=net ip={net.guest_ip}/24",
                             netns=net.a, extra=["--net", f"tap={net.tap_a}"])
    wait_replies(env, net, "flood-warm")
    p = Prober(env, net, "flood", interval_ms=0.02)
    for _ in range(3):
        assert vm.status()["state"] == "running"
    vm.ctl("pause")
    assert vm.status()["state"] == "paused"
    vm.ctl("resume")
    last = vm.heartbeats()[-1]
    vm.wait_line(rf"^hb {last + 50}$", timeout=60)
    r = p.finish()
    assert r["replies"], "no reply under the flood"
    print(f"flood: {r['sent']} probes sent, {len(r['replies'])} answered")
    vm.ctl("stop")
    assert vm.wait_exit() == 0


def cmdline(net):
    return f"workload=abcheck,net wss=4M ip={net.guest_ip}/24"


def start_src(env, net, name):
    src = gwtest.start_source(env, name, cmdline=cmdline(net), netns=net.a,
                              extra=["--net", f"tap={net.tap_a},id=nic"])
    src.wait_line(r"^workload net ")
    wait_replies(env, net, name)
    return src


def check_announced(dst, what):
    """The guest announced itself when asked; the host sent its RARP rounds."""
    dst.wait_line(r"^net announce \d+$", timeout=30)
    deadline = time.monotonic() + 10
    while True:
        st = dst.ctl("migrate-status", check=False)
        n = json.loads(st[1]).get("announcements", 0) if st[0] == 0 else 0
        if n >= 5 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert n == 5, f"{what}: the destination reports {n} announcements, expected 5"


def move(env, net, name, mode):
    uri = f"tcp:{net.b_ip}:4444"
    src = start_src(env, net, f"{name}-src")

    # a destination without its tap refuses in pre-flight: the source never paused
    bad = gwtest.start_dest(env, f"{name}-bad", uri, netns=net.b,
                            extra=["--net-override", "id=nic,tap=gwnosuch"])
    rc, _, err = gwtest.migrate(src, uri, "--mode", mode, check=False)
    assert rc != 0 and "gwnosuch" in err, err
    bad.wait_exit()
    assert src.status()["state"] == "running"
    wait_replies(env, net, f"{name}-after-refusal")

    # a destination killed during the move: the source goes on answering
    dead = gwtest.start_dest(env, f"{name}-dead", uri, netns=net.b,
                             extra=["--net-override", f"id=nic,tap={net.tap_b}"])
    mig = subprocess.Popen([env.godwit, "migrate", "--api-socket", src.sock, "--mode", mode,
                            "--bandwidth", "2M", uri], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    dead.kill()
    _, err = mig.communicate(timeout=120)
    assert mig.returncode != 0, f"{name}: the move to a killed destination succeeded"
    assert src.status()["state"] == "running"
    wait_replies(env, net, f"{name}-after-kill")

    dst = gwtest.start_dest(env, f"{name}-dst", uri, netns=net.b,
                            extra=["--net-override", f"id=nic,tap={net.tap_b}"])
    probe = Prober(env, net, name)
    time.sleep(1)
    _, res, _ = gwtest.migrate(src, uri, "--mode", mode)
    assert res["state"] == "completed", res
    assert src.wait_exit() == 0
    time.sleep(2)
    r = probe.finish()
    analyse(r, name, src.heartbeats()[-1])
    print(f"{name}: guest downtime {res.get('downtime_ms')} ms")
    gwtest.check_moved(src, dst, name, abcheck=True)
    check_announced(dst, name)
    dst.ctl("stop")
    assert dst.wait_exit() == 0


def test_snapshot(env, net):
    src = start_src(env, net, "snap-src")
    snap = env.path("snap")
    env.ctl("snapshot", "--api-socket", src.sock, snap, "--stop")
    assert src.wait_exit() == 0
    _, out, _ = env.ctl("inspect", snap)
    assert "virtio-net" in out and net.tap_a in out, out
    p = subprocess.run(["ip", "netns", "exec", net.b, env.godwit, "run", "--restore", snap,
                        "--serial", "none", "--api-socket", env.path("fail.sock"),
                        "--disk-override", "id=nic,path=/x.img"], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode != 0 and "the guest's nic is a virtio-net" in p.stderr, p.stderr
    p = subprocess.run(["ip", "netns", "exec", net.b, env.godwit, "run", "--restore", snap,
                        "--serial", "none", "--api-socket", env.path("fail.sock")],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and net.tap_a in p.stderr, "restore onto a host without tap " \
        f"{net.tap_a} (no --net-override) did not fail naming it: {p.stderr}"
    dst = env.vm("snap-dst", args=["run", "--restore", snap, "--api-socket",
                                   env.path("snap-dst.sock"),
                                   "--net-override", f"id=nic,tap={net.tap_b}"], netns=net.b)
    dst.wait_socket()
    gwtest.check_moved(src, dst, "restore", abcheck=True)
    r = wait_replies(env, net, "restore")
    assert r["replies"]
    dst.wait_line(r"^net announce \d+$", timeout=30)
    dst.ctl("stop")
    assert dst.wait_exit() == 0


def test(env):
    net = Net(env)
    test_errors(env, net)
    test_tap_lost(env, net)
    test_flood(env, net)
    test_snapshot(env, net)
    move(env, net, "warm", "warm")
    move(env, net, "live", "live")


if __name__ == "__main__":
    gwtest.main(test)
