#!/usr/bin/env python3
"""Sixteen vCPUs moved. An idle 16-vCPU guest kit is snapshotted and restored, then
live-migrated between the two namespace hosts: heartbeats go on with the next seq. Then a
16-vCPU abcheck guest is live-migrated: every pass ends at a barrier all 16 vCPUs must
reach, so `check ok` going on at the destination shows that each vCPU kept running (and
that no page was lost). The digest of the paused source equals the destination's."""
import os

import gwtest

CPUS = 16


def snapshot_restore(env):
    src = gwtest.start_source(env, "snap-src", cpus=CPUS, cmdline="workload=idle")
    src.wait_line(rf"^godwit-guest ready cpus={CPUS}$")
    src.wait_line(r"^hb 100$")
    assert src.status()["vcpus"] == CPUS
    src.ctl("pause")
    digest = src.status("--digest")["digest"]
    snap = env.path("snap16")
    src.ctl("snapshot", snap, "--stop")
    assert src.wait_exit() == 0
    assert os.path.isfile(os.path.join(snap, "state"))
    args = ["run", "--restore", snap, "--paused", "--api-socket", env.path("rest.sock"),
            "--name", "rest"]
    dst = env.vm("rest", args=args)
    dst.wait_socket()
    st = dst.status("--digest")
    assert st["vcpus"] == CPUS, st
    assert st["digest"] == digest, "16-vCPU restore: digest differs"
    dst.ctl("resume")
    gwtest.check_moved(src, dst, "16 vCPUs restored")
    return dst


def live(env, hosts, src, name, abcheck):
    uri = f"tcp:{hosts.dst_ip}:4444"
    dst = gwtest.start_dest(env, f"{name}-dst", uri, netns=hosts.dst, paused=True)
    _, res, _ = gwtest.migrate(src, uri, "--mode", "live", "--digest")
    assert src.wait_exit() == 0
    assert res["state"] == "completed", res
    st = dst.status("--digest")
    assert st["vcpus"] == CPUS and st["digest"] == res["digest"], (st, res)
    dst.ctl("resume")
    gwtest.check_moved(src, dst, name, abcheck=abcheck)
    dst.ctl("stop")
    assert dst.wait_exit() == 0


def test(env):
    hosts = gwtest.Hosts(env)
    # the restored idle guest (in the root namespace) cannot reach the destination's
    # address: start the live move from a fresh source on the source host instead
    rest = snapshot_restore(env)
    rest.ctl("stop")
    assert rest.wait_exit() == 0

    src = gwtest.start_source(env, "idle-src", cpus=CPUS, cmdline="workload=idle",
                              netns=hosts.src)
    src.wait_line(rf"^godwit-guest ready cpus={CPUS}$")
    src.wait_line(r"^hb 100$")
    live(env, hosts, src, "idle 16 vCPUs live", abcheck=False)

    src = gwtest.start_source(env, "ab-src", cpus=CPUS, cmdline="workload=abcheck wss=4M",
                              netns=hosts.src)
    src.wait_line(rf"^godwit-guest ready cpus={CPUS}$")
    src.wait_line(r"^check ok 3$", timeout=120)
    live(env, hosts, src, "abcheck 16 vCPUs live", abcheck=True)


gwtest.main(test)
