#!/usr/bin/env python3
"""A booting Linux kernel moved: Debian's cloud kernel (PVH, 2 vCPUs, an initrd) is
snapshotted and restored while it prints its boot log, then the restored VM is live-
migrated to the other namespace host and finishes the boot there. Its log, stitched
across the three processes, must be the log of a boot that was not moved: the same
messages in the same order (numbers aside: times, addresses, cycle counts), none lost or
repeated, printk timestamps never going back, and the same last line. On this host the
emulator ends the boot (MACHINE-NOTES); a reference boot that has not ended within the
bound is cut there, and the moved boot is then compared up to that line."""
import os
import re
import time

import gwlinux
import gwtest

BOUND = 240  # seconds for a boot to reach its end (or be cut there)


def start(env, name, kdir, initrd, netns=None):
    return env.vm(name, memory=f"{gwlinux.MEMORY >> 20}M", cpus=2,
                  kernel=os.path.join(kdir, "vmlinux"), cmdline=gwlinux.CMDLINE,
                  extra=["--initrd", initrd], netns=netns)


def run_out(vm, deadline, lines=None):
    """Waits for the VM to end by itself (the emulator's limit here), or for it to print
    lines log lines, or for the deadline; stops it in the last two cases. True if it ended
    by itself."""
    while vm.proc.poll() is None and time.monotonic() < deadline:
        if lines is not None and len(gwlinux.log_lines(vm)) >= lines:
            break
        time.sleep(0.2)
    if vm.proc.poll() is None:
        vm.ctl("stop")
        vm.wait_exit()
        return False
    vm.wait_exit()
    return True


def wait_log(vm, n, timeout=BOUND):
    """Waits until the VM printed n kernel log lines."""
    deadline = time.monotonic() + timeout
    while len(gwlinux.log_lines(vm)) < n:
        assert vm.proc.poll() is None, f"{vm.name} ended early: {vm.stderr()[-1500:]}"
        assert time.monotonic() < deadline, f"{vm.name}: fewer than {n} log lines in {timeout}s"
        time.sleep(0.2)


def test(env):
    kdir = gwlinux.kernel_dir()
    initrd = env.path("initrd.cpio")
    gwlinux.make_initrd(initrd)

    ref = start(env, "ref", kdir, initrd)
    ref_ended = run_out(ref, time.monotonic() + BOUND)
    want = gwlinux.log_lines(ref)
    assert len(want) > 40, f"the reference boot printed only {len(want)} log lines"

    hosts = gwtest.Hosts(env)
    src = start(env, "src", kdir, initrd, netns=hosts.src)
    wait_log(src, len(want) // 4)
    src.wait_socket()
    snap = env.path("snap")
    src.ctl("snapshot", snap, "--stop")
    assert src.wait_exit() == 0
    got = gwlinux.log_lines(src)

    args = ["run", "--restore", snap, "--api-socket", env.path("rest.sock"), "--name", "rest"]
    rest = env.vm("rest", args=args, netns=hosts.src)
    rest.wait_socket()
    wait_log(rest, len(want) // 2 - len(got))
    uri = f"tcp:{hosts.dst_ip}:4444"
    dst = gwtest.start_dest(env, "dst", uri, netns=hosts.dst)
    _, res, _ = gwtest.migrate(rest, uri, "--mode", "live")
    assert res["state"] == "completed", res
    assert rest.wait_exit() == 0
    got += gwlinux.log_lines(rest, prefix=src.partial)
    n = len(got)
    run_out(dst, time.monotonic() + BOUND, None if ref_ended else len(want) - n)
    got += gwlinux.log_lines(dst, prefix=rest.partial)
    if not ref_ended:
        got = got[:len(want)]

    times = [t for t, _ in got]
    for i in range(1, len(times)):
        assert times[i] >= times[i - 1], \
            f"printk time went back: {got[i - 1]} then {got[i]}"
    a = [gwlinux.normalized(m) for _, m in want]
    b = [gwlinux.normalized(m) for _, m in got]
    for i, (x, y) in enumerate(zip(a, b)):
        assert x == y, (f"line {i} differs from the unmoved boot:\n  moved:   {got[i][1]}\n"
                        f"  unmoved: {want[i][1]}")
    assert len(b) == len(a), (f"the moved boot printed {len(b)} lines, the unmoved one "
                              f"{len(a)}; last moved: {got[-1][1]!r}, unmoved: {want[-1][1]!r}")


gwtest.main(test)
