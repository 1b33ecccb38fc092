#!/usr/bin/env python3
"""Run state around migration handover, through the real binary:
- a destination still waiting for its guest refuses `migrate` at once and keeps answering;
- a guest that arrived by migration is snapshotted and moves on again (A -> B -> C);
- a VM the operator paused stays paused when its migration fails (cancelled);
- a source whose socket timeouts cannot be set (LD_PRELOAD fault injection) refuses to
  migrate and keeps running;
- a failure after COMMIT (the destination's STARTED never arrives) leaves the source
  "handed-over": resume, pause, migrate and snapshot are refused with a message saying the
  guest may run on the destination, the guest does not run there, and stop works."""
import json
import os
import subprocess
import time

import gwtest



def refused(vm, what, *args, expect):
    """Runs a client command that must fail at once with a message containing expect."""
    try:
        rc, _, err = vm.ctl(*args, check=False, timeout=20)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{what}: `{' '.join(args)}` got no answer within 20 s")
    assert rc != 0, f"{what}: `{' '.join(args)}` was accepted"
    assert expect in err, f"{what}: `{' '.join(args)}`: {err.strip()}"
    return err


def incoming_refuses_migrate(env):
    b = gwtest.start_dest(env, "wait-b", f"unix:{env.path('wait-b.mig')}")
    refused(b, "incoming", "migrate", f"unix:{env.path('nowhere.mig')}",
            expect="still waiting for its incoming migration")
    assert b.status()["state"] == "incoming"
    b.ctl("stop")
    b.wait_exit()


def chain(env):
    """A -> B -> C, with a snapshot of B in between."""
    a = gwtest.start_source(env, "chain-a", cpus=2, cmdline="workload=abcheck wss=8M")
    a.wait_line(r"^check ok 1$", timeout=120)
    uri_b, uri_c = f"unix:{env.path('chain-b.mig')}", f"unix:{env.path('chain-c.mig')}"
    b = gwtest.start_dest(env, "chain-b", uri_b)
    gwtest.migrate(a, uri_b, "--mode", "live")
    assert a.wait_exit() == 0
    gwtest.check_moved(a, b, "A -> B")
    rc, out, err = b.ctl("snapshot", env.path("chain-b.snap"), check=False)
    assert rc == 0, f"snapshot of a migrated guest: {err.strip()}"
    assert b.status()["state"] == "running"
    c = gwtest.start_dest(env, "chain-c", uri_c)
    gwtest.migrate(b, uri_c, "--mode", "live")
    assert b.wait_exit() == 0
    gwtest.check_moved(b, c, "B -> C", abcheck=True)
    c.ctl("stop")
    assert c.wait_exit() == 0


def operator_pause_kept(env):
    src = gwtest.start_source(env, "opause-src", cmdline="workload=dirty wss=32M rate=0")
    uri = f"unix:{env.path('opause-dst.mig')}"
    dst = gwtest.start_dest(env, "opause-dst", uri)
    src.ctl("pause")
    mig = subprocess.Popen([env.godwit, "migrate", "--mode", "warm", "--bandwidth", "4M",
                            "--api-socket", src.sock, uri], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while True:
        ms = json.loads(src.ctl("migrate-status")[1])
        # past the handshake and the (no-op) pause: pages are moving
        if ms["state"] in ("active", "completing") and ms["bytes_sent"] > (1 << 20):
            break
        assert time.monotonic() < deadline, f"the migration did not get going: {ms}"
        time.sleep(0.05)
    src.ctl("migrate-cancel")
    _, err = mig.communicate(timeout=60)
    assert mig.returncode != 0, "the cancelled migration succeeded"
    st = src.status()
    assert st["state"] == "paused", f"the operator's pause was undone: {st['state']}"
    n = src.line_count()
    time.sleep(1)
    assert not src.heartbeats(start=n), "the paused guest runs after the failed migration"
    src.ctl("resume")
    src.wait_line(r"^hb \d+$", start=n, timeout=20)
    assert dst.wait_exit(60) != 0
    src.ctl("stop")
    assert src.wait_exit() == 0


def socket_timeouts_checked(env):
    """A source that cannot set its socket timeouts refuses to migrate (it would wait without
    bound for a silent destination) and keeps the guest running."""
    os.environ["LD_PRELOAD"] = os.environ["GW_FAULT_SETSOCKOPT"]
    try:
        src = gwtest.start_source(env, "sockopt-src")
    finally:
        del os.environ["LD_PRELOAD"]
    uri = f"unix:{env.path('sockopt-dst.mig')}"
    dst = gwtest.start_dest(env, "sockopt-dst", uri)
    rc, _, err = gwtest.migrate(src, uri, check=False)
    assert rc != 0, "migrated without socket timeouts"
    assert "timeouts" in err and "Protocol not available" in err, err
    assert src.status()["state"] == "running"
    n = src.line_count()
    src.wait_line(r"^hb \d+$", start=n, timeout=20)
    assert dst.wait_exit(60) != 0 and not dst.heartbeats()
    src.ctl("stop")
    assert src.wait_exit() == 0


def handed_over(env):
    hosts = gwtest.Hosts(env)
    src = gwtest.start_source(env, "ho-src", cpus=2, cmdline="workload=abcheck wss=8M",
                              netns=hosts.src)
    src.wait_line(r"^check ok 1$", timeout=120)
    dst = gwtest.start_dest(env, "ho-dst", f"tcp:{hosts.dst_ip}:4444", netns=hosts.dst)
    p = gwtest.proxy(hosts, "cutafter:commit")
    try:
        rc, _, err = gwtest.migrate(src, "tcp:127.0.0.1:5555", "--mode", "warm", check=False)
        assert p.stdout.readline().strip() == "injected", "the proxy never saw COMMIT"
    finally:
        p.kill()
        p.wait()
    assert rc != 0, "the migration succeeded without STARTED"
    assert "may be running on the destination" in err, err
    assert src.proc.poll() is None, "the source exited"
    st = src.status()
    assert st["state"] == "handed-over", f"source state after a failure past COMMIT: {st}"
    msg = "may be running there"
    refused(src, "handed-over", "resume", expect=msg)
    refused(src, "handed-over", "pause", expect=msg)
    refused(src, "handed-over", "migrate", f"unix:{env.path('again.mig')}", expect=msg)
    refused(src, "handed-over", "snapshot", env.path("ho.snap"), expect=msg)
    assert not os.path.exists(env.path("ho.snap"))
    # the guest runs on the destination only
    n = src.line_count()
    gwtest.check_moved(src, dst, "handed over")
    assert not src.heartbeats(start=n), "the guest ran on the source after COMMIT"
    assert src.status()["state"] == "handed-over"
    src.ctl("stop")
    assert src.wait_exit() == 0
    dst.ctl("stop")
    assert dst.wait_exit() == 0


def test(env):
    incoming_refuses_migrate(env)
    chain(env)
    operator_pause_kept(env)
    socket_timeouts_checked(env)
    handed_over(env)


gwtest.main(test)
