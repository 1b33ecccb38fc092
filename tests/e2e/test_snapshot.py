#!/usr/bin/env python3
"""Suspend to files and restore: abcheck guests on 1 and 2 vCPUs, eager restore from a
moved copy with the original deleted, lazy restore, digests equal, heartbeats and
`check ok` continue with no restart; two snapshots of one guest; one snapshot restored
twice at once; the LAPIC timer keeps ticking after restore."""
import os
import re
import shutil
import time

import gwtest


def hb_last(vm):
    return vm.heartbeats()[-1]


def paused_digest(vm):
    return vm.status("--digest")["digest"]


def restore(env, name, snap, mode=None, paused=True):
    args = ["run", "--restore", snap, "--api-socket", env.path(f"{name}.sock"), "--name", name]
    if mode:
        args += ["--restore-mode", mode]
    if paused:
        args.append("--paused")
    vm = env.vm(name, args=args)
    vm.wait_socket()
    return vm


def check_continues(vm, last_hb, last_check, what, prefix=""):
    """After resume: the first heartbeat is last_hb + 1 and abcheck passes go on."""
    vm.ctl("resume")
    vm.wait_line(rf"^hb {last_hb + 30}$", timeout=60)
    seqs = vm.heartbeats(prefix=prefix)
    assert seqs[0] == last_hb + 1, f"{what}: first heartbeat after restore {seqs[0]}, " \
                                   f"expected {last_hb + 1}"
    gwtest.check_seq_continuous(seqs, what)
    if last_check is not None:
        vm.wait_line(rf"^check ok {last_check + 2}$", timeout=120)
        texts = [t for _, t in vm.lines]
        if prefix:
            texts[0] = prefix + texts[0]
        oks = [int(m.group(1)) for m in (re.fullmatch(r"check ok (\d+)", t) for t in texts) if m]
        assert oks[0] == last_check + 1, f"{what}: first check after restore {oks[0]}"
    fails = [t for _, t in vm.lines if t.startswith("check fail") or "ready" in t]
    assert not fails, f"{what}: {fails[:3]}"


def last_check(vm):
    oks = [int(m.group(1)) for m in (re.fullmatch(r"check ok (\d+)", t) for _, t in vm.lines)
           if m]
    return oks[-1] if oks else 0


def test_cpus(env, cpus):
    src = env.vm(f"src{cpus}", cpus=cpus, memory="128M", cmdline="workload=abcheck wss=8M")
    src.wait_line(r"^check ok 2$", timeout=120)
    src.wait_socket()
    src.ctl("pause")
    digest = paused_digest(src)
    snap = env.path(f"snap{cpus}")
    src.ctl("snapshot", snap, "--stop")
    assert src.wait_exit() == 0
    # the VMM's log says where the snapshot's time went: the memory (at least abcheck's 8M)
    # with its rate and how long it waited for the writes, then the sync
    m = re.search(r"snapshot \S+: (\d+) MiB of memory written in [\d.]+ ms \(\d+ MiB/s; "
                  r"[\d.]+ ms of it waiting for the writes\).* synced and renamed in [\d.]+ ms",
                  src.stderr())
    assert m and int(m.group(1)) >= 8, f"no snapshot timing in the log: {src.stderr()[-500:]}"
    hb, chk, partial = hb_last(src), last_check(src), src.partial
    assert os.path.isfile(os.path.join(snap, "state"))

    # eager, from a copy elsewhere, the original deleted
    moved = env.path(f"moved/snap{cpus}")
    os.makedirs(os.path.dirname(moved), exist_ok=True)
    shutil.copytree(snap, moved)
    shutil.rmtree(snap + "-lazy", ignore_errors=True)
    shutil.copytree(snap, snap + "-lazy")
    shutil.rmtree(snap)
    eager = restore(env, f"eager{cpus}", moved, "eager")
    assert paused_digest(eager) == digest, "eager restore: digest differs"
    shutil.rmtree(moved)  # eager: the snapshot is no longer needed
    check_continues(eager, hb, chk, f"eager {cpus} vCPUs", partial)
    eager.ctl("stop")
    assert eager.wait_exit() == 0

    lazy = restore(env, f"lazy{cpus}", snap + "-lazy")
    assert lazy.status()["state"] == "paused"
    assert paused_digest(lazy) == digest, "lazy restore: digest differs"
    check_continues(lazy, hb, chk, f"lazy {cpus} vCPUs", partial)
    lazy.ctl("stop")
    assert lazy.wait_exit() == 0


def test_twice(env):
    vm = env.vm("twice", cmdline="workload=idle")
    vm.wait_line(r"^hb 100$")
    vm.wait_socket()
    a, b = env.path("snapA"), env.path("snapB")
    vm.ctl("pause")
    time.sleep(0.2)  # lines already in the pipe
    hb_a, partial_a = hb_last(vm), vm.partial
    vm.ctl("snapshot", a)
    assert vm.status()["state"] == "paused", "a snapshot of a paused VM leaves it paused"
    vm.ctl("resume")
    vm.wait_line(rf"^hb {hb_a + 100}$")
    vm.ctl("snapshot", b)
    assert vm.status()["state"] == "running", "a snapshot of a running VM resumes it"
    vm.wait_line(rf"^hb {hb_last(vm) + 20}$")
    rc, _, err = vm.ctl("snapshot", a, check=False)
    assert rc != 0 and "exists" in err, f"snapshot over an existing one: {rc} {err}"
    vm.ctl("stop")
    vm.wait_exit()
    # the older one, twice at once in two processes (lazy: both map the same file)
    r1 = restore(env, "older1", a)
    r2 = restore(env, "older2", a)
    for r in (r1, r2):
        check_continues(r, hb_a, None, r.name, partial_a)
    for r in (r1, r2):
        r.ctl("stop")
        assert r.wait_exit() == 0


def test(env):
    test_cpus(env, 1)
    test_cpus(env, 2)
    test_twice(env)


gwtest.main(test)
