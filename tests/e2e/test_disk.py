#!/usr/bin/env python3
"""Disks (virtio-blk) through the real binary, with the guest kit's disk workload writing:
every pass the guest reads back every block of its working set and checks the generation it
last wrote there (`disk ok N`), so a lost or stale write shows as `disk fail`/`disk bad`.
- Errors at start: a missing disk, a bad --disk, a disk that is not whole sectors, a disk
  another godwit holds (its lock), a readonly disk (the guest is told; it does not write).
- Snapshot and restore onto a copy of the disk with --disk-override: heartbeats and disk
  passes continue; a resized copy, an unknown override id and a held lock are refused.
- Warm, live and post-copy migration between the two network-namespace hosts on one shared
  disk file, the guest writing at full rate: no write lost, heartbeats continue, the lock moved to the
  destination. A destination that cannot open the disk refuses before the source pauses,
  a link cut during stop-and-copy fails the move before COMMIT, and so does a disk whose
  fdatasync fails (a snapshot too): each time the source keeps running, writing, and
  holding the lock. The warm and live moves run again with aio=uring where io_uring works.
- `status` lists each disk (file, lock, request and byte counters) and each NIC."""
import os
import re
import shutil

import gwtest

WORK = "workload=disk disk_blocks=256"


def disk(env, name, size=512 * 1024):
    path = env.path(name)
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def run_fails(env, *args):
    """A godwit run that must fail before the guest starts; returns its stderr."""
    rc, _, err = env.ctl("run", "--memory", "32M", "--kernel", env.guest, "--serial", "none",
                         "--api-socket", env.path("fail.sock"), *args, check=False, timeout=60)
    assert rc != 0, f"godwit run {args} succeeded"
    return err


def disk_passes(vm, start=0):
    """The pass numbers of `disk ok N` lines; fails on any disk failure line."""
    out = []
    with vm.cond:
        texts = [t for _, t in vm.lines[start:]]
    for t in texts:
        assert not re.match(r"disk (fail|bad|error)", t), f"{vm.name}: {t}"
        m = re.fullmatch(r"disk ok (\d+)", t)
        if m:
            out.append(int(m.group(1)))
    return out


def check_locked(env, path):
    err = run_fails(env, "--disk", f"path={path}")
    assert "in use by another process" in err, err


def test_errors(env):
    d = disk(env, "e.img")
    err = run_fails(env, "--disk", f"path={env.path('missing.img')}")
    assert "missing.img" in err and "No such file" in err, err
    err = run_fails(env, "--disk", "readonly=on")
    assert "path=FILE is required" in err, err
    err = run_fails(env, "--disk", f"path={d},cache=none")
    assert "unknown key 'cache'" in err, err
    odd = disk(env, "odd.img", 1000)
    err = run_fails(env, "--disk", f"path={odd}")
    assert "multiple of 512" in err, err
    err = run_fails(env, *sum((["--disk", f"path={d},id=x{i}"] for i in range(9)), []))
    assert "at most 8" in err, err

    vm = env.vm("holder", cmdline=WORK, extra=["--disk", f"path={d}"])
    vm.wait_line(r"^disk ok 1$", timeout=120)
    check_locked(env, d)
    vm.ctl("stop")
    assert vm.wait_exit() == 0
    # readonly: the guest sees VIRTIO_BLK_F_RO and only reads
    ro = env.vm("ro", cmdline=WORK, extra=["--disk", f"path={d},readonly=on,id=ro0"])
    ro.wait_line(r"the disk is read-only", timeout=60)
    ro.wait_line(r"^disk ok 2$", timeout=120)
    assert disk_passes(ro)
    ro.ctl("stop")
    assert ro.wait_exit() == 0


def test_snapshot(env):
    d = disk(env, "s.img")
    ro = disk(env, "s-ro.img", 4096)
    # a second, readonly disk: the guest works on the first; both are rebuilt from CONFIG
    src = env.vm("snap-src", cmdline=WORK,
                 extra=["--disk", f"path={d}", "--disk", f"path={ro},readonly=on,id=ro"])
    src.wait_line(r"^disk ok 2$", timeout=120)
    snap = env.path("snap")
    env.ctl("snapshot", "--api-socket", src.sock, snap, "--stop")
    assert src.wait_exit() == 0
    last_pass = disk_passes(src)[-1]
    _, out, _ = env.ctl("inspect", snap)
    assert re.search(r'device virtio-blk "disk0": .*s\.img, 512\.0 KiB', out), out
    assert re.search(r'device virtio-blk "ro": .*s-ro\.img, 4\.0 KiB, readonly', out), out
    assert "virtio-blk@disk0" in out and "virtio-blk@ro" in out, out
    # inspect checks the sections as a restore would: CONFIG's disks are known by type
    assert re.search(r"sections: \d+, all valid", out), out

    # the disk as the snapshot left it, copied: the restore writes the copy
    copy = env.path("s-copy.img")
    shutil.copyfile(d, copy)
    resized = env.path("s-big.img")
    shutil.copyfile(d, resized)
    os.truncate(resized, 1024 * 1024)
    err = run_fails_restore(env, snap, "--disk-override", f"id=disk0,path={resized}")
    assert "changed size" in err, err
    err = run_fails_restore(env, snap, "--disk-override", f"id=vdb,path={copy}")
    assert "no device vdb" in err, err
    err = run_fails_restore(env, snap, "--disk", f"path={copy}")
    assert "--disk-override" in err, err
    # the original is held by another guest: a restore onto it is refused
    holder = env.vm("snap-holder", cmdline="workload=idle", extra=["--disk", f"path={d}"])
    holder.wait_line(r"^hb 1$")
    err = run_fails_restore(env, snap)
    assert "in use by another process" in err, err
    holder.ctl("stop")
    holder.wait_exit()

    dst = env.vm("snap-dst", args=["run", "--restore", snap, "--api-socket",
                                   env.path("snap-dst.sock"),
                                   "--disk-override", f"id=disk0,path={copy}"])
    gwtest.check_moved(src, dst, "restore")
    dst.wait_line(rf"^disk ok {last_pass + 2}$", timeout=120)
    passes = disk_passes(dst)
    assert passes[0] == last_pass + 1, f"restore: first pass {passes[0]} after {last_pass}"
    print(f"restore: disk passes {last_pass} before, {passes[0]}..{passes[-1]} after")
    check_locked(env, copy)
    dst.ctl("stop")
    assert dst.wait_exit() == 0


def run_fails_restore(env, snap, *args):
    rc, _, err = env.ctl("run", "--restore", snap, "--serial", "none", "--api-socket",
                         env.path("fail.sock"), *args, check=False, timeout=60)
    assert rc != 0, f"restore {args} succeeded"
    return err


def move(env, hosts, name, mode, opts=(), aio="thread"):
    """aio: the disk's backend on both sides (the destination's through --disk-override)."""
    d = disk(env, f"{name}.img")
    uri = f"tcp:{hosts.dst_ip}:4444"
    src = gwtest.start_source(env, f"{name}-src", cmdline=WORK, netns=hosts.src,
                              extra=["--disk", f"path={d},aio={aio}"])
    assert src.status()["disks"][0]["aio"] == aio
    src.wait_line(r"^disk ok 2$", timeout=120)

    # a destination that cannot build the disk refuses before the source pauses
    bad = gwtest.start_dest(env, f"{name}-bad", uri, netns=hosts.dst,
                            extra=["--disk-override", f"id=disk0,path={env.path('nope.img')}"])
    rc, _, err = gwtest.migrate(src, uri, "--mode", mode, check=False)
    assert rc != 0 and "nope.img" in err, err
    bad.wait_exit()
    assert src.status()["state"] == "running"
    n = src.line_count()
    src.wait_line(r"^disk ok \d+$", timeout=120, start=n)
    check_locked(env, d)

    # cut at stop-and-copy (the guest paused, its disk quiesced): before COMMIT, so the
    # source resumes, keeps writing and keeps the lock
    cut = gwtest.start_dest(env, f"{name}-cut", uri, netns=hosts.dst)
    p = gwtest.proxy(hosts, "cut:sections")
    rc, _, err = gwtest.migrate(src, "tcp:127.0.0.1:5555", "--mode", mode, check=False)
    assert rc != 0, f"{name}: the migration through a cut link succeeded"
    assert p.stdout.readline().strip() == "injected"
    p.kill()
    p.wait()
    assert cut.wait_exit(60) != 0 and not cut.heartbeats()
    assert src.status()["state"] == "running"
    n = src.line_count()
    src.wait_line(r"^disk ok \d+$", timeout=120, start=n)
    disk_passes(src)
    check_locked(env, d)

    dst = gwtest.start_dest(env, f"{name}-dst", uri, netns=hosts.dst,
                            extra=["--disk-override", f"id=disk0,aio={aio}"])
    _, res, _ = gwtest.migrate(src, uri, "--mode", mode, *opts)
    assert res["state"] == "completed", res
    assert src.wait_exit() == 0
    last_pass = disk_passes(src)[-1]
    gwtest.check_moved(src, dst, name)
    dst.wait_line(rf"^disk ok {last_pass + 2}$", timeout=120)
    passes = disk_passes(dst, 0)
    assert passes[0] == last_pass + 1, f"{name}: first pass {passes[0]} after {last_pass}"
    print(f"{name}: disk passes {last_pass} before, {passes[0]}..{passes[-1]} after, "
          f"{len(res['rounds'])} rounds, downtime {res.get('downtime_ms')} ms")
    # the lock moved with the guest
    st = dst.status()["disks"][0]
    assert st["locked"] and st["aio"] == aio and st["errors"] == 0, st
    check_locked(env, d)
    dst.ctl("stop")
    assert dst.wait_exit() == 0
    return res


def test_flush_fails(env):
    """A disk that cannot make writes durable stops a migration before COMMIT (and a
    snapshot): the guest keeps running on the source, which keeps the lock."""
    d = disk(env, "fdatasync-fails.img")
    os.environ["LD_PRELOAD"] = os.environ["GW_FAULT_FDATASYNC"]
    try:
        # no network namespace: `ip netns exec` would load the library too
        src = gwtest.start_source(env, "flush-src", cmdline="workload=idle",
                                  extra=["--disk", f"path={d}"])
    finally:
        del os.environ["LD_PRELOAD"]
    uri = f"unix:{env.path('flush.mig')}"
    dst = gwtest.start_dest(env, "flush-dst", uri)
    rc, _, err = gwtest.migrate(src, uri, "--mode", "warm", check=False)
    assert rc != 0 and "fdatasync" in err and "Input/output error" in err, \
        f"a migration with a disk that cannot flush: exit {rc}: {err}"
    assert dst.wait_exit(60) != 0 and not dst.heartbeats()
    rc, _, err = env.ctl("snapshot", "--api-socket", src.sock, env.path("flush-snap"),
                         check=False)
    assert rc != 0 and "fdatasync" in err, err
    assert not os.path.exists(env.path("flush-snap"))
    assert src.status()["state"] == "running"
    n = src.line_count()
    src.wait_line(r"^hb \d+$", start=n)
    check_locked(env, d)
    src.ctl("stop")
    assert src.wait_exit() == 0


def postcopy(env, hosts):
    """Post-copy: the destination runs the guest (and its disk) while memory still arrives;
    the device's writes into pages not yet fetched wait for them like the vCPUs do."""
    d = disk(env, "pc.img")
    uri = f"tcp:{hosts.dst_ip}:4444"
    src = gwtest.start_source(env, "pc-src", cmdline="workload=abcheck,disk wss=16M "
                              "disk_blocks=256", netns=hosts.src, extra=["--disk", f"path={d}"])
    src.wait_line(r"^disk ok 2$", timeout=120)
    dst = gwtest.start_dest(env, "pc-dst", uri, netns=hosts.dst)
    _, res, _ = gwtest.migrate(src, uri, "--mode", "postcopy", "--bandwidth", "8M")
    assert res["state"] == "completed", res
    assert src.wait_exit() == 0
    last_pass = disk_passes(src)[-1]
    gwtest.check_moved(src, dst, "postcopy", abcheck=True)
    dst.wait_line(rf"^disk ok {last_pass + 2}$", timeout=120)
    passes = disk_passes(dst)
    assert passes[0] == last_pass + 1, f"postcopy: first pass {passes[0]} after {last_pass}"
    check_locked(env, d)
    dst.ctl("stop")
    assert dst.wait_exit() == 0


def uring_available(env):
    """Whether `--disk aio=uring` starts here (built with liburing, io_uring allowed)."""
    d = disk(env, "uring-probe.img")
    vm = env.vm("uring-probe", cmdline="workload=idle", extra=["--disk", f"path={d},aio=uring"])
    try:
        vm.wait_line(r"^hb 1$", timeout=30)
    except AssertionError:
        err = vm.stderr()
        assert "io_uring" in err, err
        return False
    vm.ctl("stop")
    assert vm.wait_exit() == 0
    return True


def test_status(env, hosts):
    """status lists every disk (its file, lock and request counters) and every NIC."""
    d = disk(env, "st.img")
    ro = disk(env, "st-ro.img", 4096)
    tap = "gwst0"
    hosts._ns(hosts.src, "ip", "tuntap", "add", tap, "mode", "tap", "vnet_hdr")
    vm = gwtest.start_source(env, "status", cmdline=WORK, netns=hosts.src,
                             extra=["--disk", f"path={d}", "--disk", f"path={ro},readonly=on,id=ro",
                                    "--net", f"tap={tap},mac=52:54:00:12:34:56,id=n0"])
    vm.wait_line(r"^disk ok 2$", timeout=120)
    st = vm.status()
    disks = {x["id"]: x for x in st["disks"]}
    assert sorted(disks) == ["disk0", "ro"], st["disks"]
    d0, r = disks["disk0"], disks["ro"]
    assert (d0["path"], d0["size"], d0["readonly"], d0["locked"]) == (d, 512 * 1024, False,
                                                                      True), d0
    # two passes over 256 blocks, half of them rewritten, one 512-byte block a request
    assert d0["reads"] >= 512 and d0["bytes_read"] == 512 * d0["reads"], d0
    assert d0["writes"] >= 256 and d0["bytes_written"] == 512 * d0["writes"], d0
    assert d0["flushes"] >= 2 and d0["other_requests"] == 1 and d0["errors"] == 0, d0
    assert d0["aio"] == "thread" and d0["notifies"] >= 1, d0
    # the readonly disk holds a shared lock and the guest never touched it
    assert (r["path"], r["size"], r["readonly"], r["locked"]) == (ro, 4096, True, True), r
    assert r["reads"] == r["writes"] == r["flushes"] == r["errors"] == 0, r
    assert st["nics"] == [{"id": "n0", "tap": tap, "mac": "52:54:00:12:34:56"}], st["nics"]
    # the counters are live
    n = vm.line_count()
    vm.wait_line(r"^disk ok \d+$", timeout=120, start=n)
    assert vm.status()["disks"][0]["reads"] > d0["reads"]
    vm.ctl("stop")
    assert vm.wait_exit() == 0


def test(env):
    test_errors(env)
    test_snapshot(env)
    test_flush_fails(env)
    hosts = gwtest.Hosts(env)
    test_status(env, hosts)
    move(env, hosts, "warm", "warm")
    res = move(env, hosts, "live", "live", ("--bandwidth", "4M"))
    assert len(res["rounds"]) >= 2, res["rounds"]
    # io_uring: in-flight requests drained at the pause as the thread's are
    if uring_available(env):
        move(env, hosts, "warm-uring", "warm", aio="uring")
        move(env, hosts, "live-uring", "live", ("--bandwidth", "4M"), aio="uring")
    else:
        print("aio=uring moves skipped: this build or kernel has no io_uring")
    postcopy(env, hosts)


if __name__ == "__main__":
    gwtest.main(test)
