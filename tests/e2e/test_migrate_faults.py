#!/usr/bin/env python3
"""Faults during warm and live migration leave the guest running on exactly one side:
the destination killed mid-stream, the link cut (veth down), the destination refusing
the configuration, a cancel, a corrupted record on the wire, injected during round 0, a
later round and stop-and-copy. After each, a second migration of the same guest succeeds."""
import json
import os
import signal
import subprocess
import time

import gwtest

IO_TIMEOUT = {"GODWIT_MIGRATION_IO_TIMEOUT_MS": "3000"}


def retry(env, hosts, src, what):
    uri = f"tcp:{hosts.dst_ip}:4445"
    dst = gwtest.start_dest(env, f"retry-{what}", uri, netns=hosts.dst)
    gwtest.migrate(src, uri, "--bandwidth", "20M")
    assert src.wait_exit() == 0
    gwtest.check_moved(src, dst, f"retry after {what}", abcheck=True)
    dst.ctl("stop")
    assert dst.wait_exit() == 0


def scenario(env, hosts, name, mode, fault, opts=()):
    """fault(src, dst) injects the fault while `migrate` runs in the background."""
    uri = f"tcp:{hosts.dst_ip}:4444"
    src = gwtest.start_source(env, f"{name}-src", cpus=2, cmdline="workload=abcheck wss=16M",
                              netns=hosts.src, extra=None)
    src.wait_line(r"^check ok 1$", timeout=120)
    dst = gwtest.start_dest(env, f"{name}-dst", uri, netns=hosts.dst)
    target = fault(src, dst)
    mig = subprocess.Popen([env.godwit, "migrate", "--mode", mode, "--api-socket", src.sock,
                            *opts, target or uri], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    if hasattr(fault, "during"):
        fault.during(src, dst)
    out, err = mig.communicate(timeout=120)
    assert mig.returncode != 0, f"{name}: migrate succeeded: {out}"
    if hasattr(fault, "after"):
        fault.after()
    gwtest.check_kept(src, name)
    gwtest.check_refused(dst, name)
    retry(env, hosts, src, name)
    return err


def wait_round(src, n):
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ms = json.loads(src.ctl("migrate-status")[1])
        # mid-stream: in the round asked for (warm: its single pass) with data moving
        if ms["state"] in ("active", "completing") and ms["round"] >= n and \
                ms["bytes_sent"] > (1 << 20) + (ms["rounds"][n - 1]["bytes"] if n else 0):
            return
        time.sleep(0.05)
    raise AssertionError(f"round {n} never started: {ms}")


class Kill:
    """Kills the destination once round `n` is under way."""
    def __init__(self, n):
        self.n = n

    def __call__(self, src, dst):
        self.dst = dst

    def during(self, src, dst):
        wait_round(src, self.n)
        dst.proc.send_signal(signal.SIGKILL)


class LinkDown:
    def __init__(self, hosts, n):
        self.hosts, self.n = hosts, n

    def __call__(self, src, dst):
        pass

    def during(self, src, dst):
        wait_round(src, self.n)
        self.hosts.link(False)

    def after(self):
        self.hosts.link(True)


class Cancel:
    def __init__(self, env, n):
        self.env, self.n = env, n

    def __call__(self, src, dst):
        pass

    def during(self, src, dst):
        wait_round(src, self.n)
        src.ctl("migrate-cancel")


class Proxy:
    def __init__(self, hosts, mode):
        self.hosts, self.mode = hosts, mode

    def __call__(self, src, dst):
        self.p = gwtest.proxy(self.hosts, self.mode)
        return "tcp:127.0.0.1:5555"

    def after(self):
        assert self.p.stdout.readline().strip() == "injected", f"{self.mode}: nothing injected"
        self.p.kill()
        self.p.wait()


def test(env):
    os.environ.update(IO_TIMEOUT)
    hosts = gwtest.Hosts(env)
    slow = ("--bandwidth", "4M")
    # warm: one stream, faults mid-stream
    scenario(env, hosts, "warm-kill", "warm", Kill(0), slow)
    scenario(env, hosts, "warm-linkdown", "warm", LinkDown(hosts, 0), slow)
    err = scenario(env, hosts, "warm-refuse", "warm", Proxy(hosts, "cpuid"))
    assert "refused" in err and "cannot give" in err, err
    # a TSC rate the destination cannot give: refused in pre-flight, the source never paused
    err = scenario(env, hosts, "warm-refuse-tsc", "warm", Proxy(hosts, "tsc"))
    assert "refused" in err and "TSC runs at 1 kHz" in err, err
    scenario(env, hosts, "warm-cancel", "warm", Cancel(env, 0), slow)
    err = scenario(env, hosts, "warm-corrupt", "warm", Proxy(hosts, "flip:round0"))
    # live: during round 0, a later round, and stop-and-copy
    scenario(env, hosts, "live-kill-r0", "live", Kill(0), slow)
    scenario(env, hosts, "live-linkdown-r2", "live", LinkDown(hosts, 2), slow)
    scenario(env, hosts, "live-cancel-r2", "live", Cancel(env, 2), slow)
    scenario(env, hosts, "live-corrupt-r2", "live", Proxy(hosts, "flip:round2"), slow)
    scenario(env, hosts, "live-cut-r0", "live", Proxy(hosts, "cut:round0"), slow)
    scenario(env, hosts, "live-corrupt-stopcopy", "live", Proxy(hosts, "flip:sections"))
    scenario(env, hosts, "live-cut-stopcopy", "live", Proxy(hosts, "cut:sections"))


gwtest.main(test)
