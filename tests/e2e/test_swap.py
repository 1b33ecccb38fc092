#!/usr/bin/env python3
"""A guest whose memory the host pushed to swap moves with nothing lost: the paused
guest's pages are pushed into a swap file (process_madvise(MADV_PAGEOUT) on the godwit
process), then a snapshot + eager restore and a warm migration carry it; digests are equal
and abcheck keeps passing. The source godwit runs with mincore() answering as Debian 12's
6.1 does (the gwmincore61 LD_PRELOAD shim; this machine's 6.18 reports swapped pages
resident), so a VMM that took "not resident" for "never touched" loses those pages here.
Skips (77) when a swap file cannot be enabled or pages cannot be pushed out."""
import ctypes
import os
import re
import struct
import subprocess
import sys
import time

import gwtest

SYS_PIDFD_OPEN = 434
SYS_PROCESS_MADVISE = 440
MADV_PAGEOUT = 21
MEMORY = 128 << 20
SHIM = os.environ.get("GODWIT_TEST_MINCORE_SHIM", "")
libc = ctypes.CDLL(None, use_errno=True)


class Skip(Exception):
    pass


class SwapFile:
    """A swap file enabled for the test's length (root only)."""

    def __init__(self, path, size=192 << 20):
        self.path, self.on = path, False
        if os.geteuid() != 0:
            raise Skip("enabling a swap file needs root")
        with open(path, "wb") as f:  # written, not fallocated: no unwritten extents
            os.fchmod(f.fileno(), 0o600)
            chunk = bytes(1 << 20)
            for _ in range(size >> 20):
                f.write(chunk)
        p = subprocess.run(["mkswap", path], capture_output=True, text=True)
        if p.returncode != 0:
            raise Skip(f"mkswap: {p.stderr.strip()}")
        p = subprocess.run(["swapon", path], capture_output=True, text=True)
        if p.returncode != 0:
            raise Skip(f"swapon: {p.stderr.strip()}")
        self.on = True

    def close(self):
        if self.on:
            subprocess.run(["swapoff", self.path], capture_output=True)
            self.on = False
        if os.path.exists(self.path):
            os.unlink(self.path)


def anon_ranges(pid):
    """pid's private writable anonymous mappings up to 4 GiB (guest RAM is one of them, maybe
    merged with a neighbour; the sanitizer's huge shadow reservations are left out)."""
    out = []
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split()
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            if parts[1] == "rw-p" and parts[4] == "0" and len(parts) == 5 and hi - lo <= 4 << 30:
                out.append((lo, hi - lo))
    assert any(size >= MEMORY for _, size in out), \
        f"no anonymous mapping of guest RAM's size in godwit {pid}"
    return out


def pagemap_count(pid, ranges):
    """(pages in swap and not in RAM, pages in RAM or in swap) over ranges."""
    swapped = used = 0
    with open(f"/proc/{pid}/pagemap", "rb") as f:
        for lo, size in ranges:
            f.seek(lo // 4096 * 8)
            data = f.read(size // 4096 * 8)
            for (ent,) in struct.iter_unpack("<Q", data):
                top = ent >> 62
                swapped += top == 1
                used += top != 0
    return swapped, used


class Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def page_out(vm):
    """Pushes the anonymous memory of vm's godwit, guest RAM included, to swap; skips if too
    little of it went."""
    pid = vm.proc.pid
    ranges = anon_ranges(pid)
    pidfd = libc.syscall(SYS_PIDFD_OPEN, pid, 0)
    if pidfd < 0:
        raise Skip(f"pidfd_open: {os.strerror(ctypes.get_errno())}")
    try:
        for _ in range(5):
            # one call per mapping: a call stops at the first mapping it cannot advise
            done = 0
            for lo, size in ranges:
                iov = Iovec(lo, size)
                done += libc.syscall(SYS_PROCESS_MADVISE, pidfd, ctypes.byref(iov), 1,
                                     MADV_PAGEOUT, 0) >= 0
            if not done:
                raise Skip(f"process_madvise(MADV_PAGEOUT): {os.strerror(ctypes.get_errno())}")
            swapped, used = pagemap_count(pid, ranges)
            if swapped * 10 >= used * 9:
                break
            time.sleep(0.2)
    finally:
        os.close(pidfd)
    print(f"{vm.name}: {swapped} of {used} anonymous pages in swap")
    if swapped * 10 < used * 9 or used == 0:
        raise Skip(f"MADV_PAGEOUT pushed only {swapped} of {used} pages to swap")


def start_with_shim(env, name):
    assert SHIM and os.path.exists(SHIM), f"the mincore shim is missing: {SHIM!r}"
    os.environ["LD_PRELOAD"] = SHIM
    try:
        vm = env.vm(name, memory="128M", cmdline="workload=abcheck wss=8M")
    finally:
        del os.environ["LD_PRELOAD"]
    vm.wait_line(r"^check ok 2$", timeout=180)
    vm.wait_socket()
    with open(f"/proc/{vm.proc.pid}/maps") as f:
        assert "gwmincore61" in f.read(), "the mincore shim is not loaded into godwit"
    return vm


def pause_quiet(vm):
    vm.ctl("pause")
    time.sleep(0.3)  # lines already in the pipe


def checks_ok(vm):
    return [int(t.split()[2]) for _, t in vm.lines if re.fullmatch(r"check ok \d+", t)]


def test_snapshot(env):
    src = start_with_shim(env, "swsnap")
    pause_quiet(src)
    page_out(src)
    snap = env.path("snap")
    src.ctl("snapshot", snap)
    # the digest only now: reading every page maps the zero page where the guest never
    # wrote, and then every range would look touched, however the VMM asks
    digest = src.status("--digest")["digest"]
    src.ctl("stop")
    assert src.wait_exit() == 0
    dst = env.vm("swsnap-restored", args=["run", "--restore", snap, "--restore-mode", "eager",
                                          "--paused", "--api-socket",
                                          env.path("swsnap-restored.sock")])
    dst.wait_socket()
    assert dst.status("--digest")["digest"] == digest, \
        "the restored guest's digest differs: swapped-out memory was lost"
    dst.ctl("resume")
    gwtest.check_moved(src, dst, "snapshot of a swapped-out guest", abcheck=True)
    dst.ctl("stop")
    assert dst.wait_exit() == 0


def test_warm(env):
    uri = f"unix:{env.path('sw.mig')}"
    src = start_with_shim(env, "swwarm")
    dst = gwtest.start_dest(env, "swwarm-dst", uri, paused=True)
    pause_quiet(src)
    page_out(src)
    _, res, _ = gwtest.migrate(src, uri, "--mode", "warm", "--digest")
    assert src.wait_exit() == 0
    st = dst.status("--digest")
    assert st["digest"] == res["digest"], \
        f"warm migration: digests differ {st['digest']} {res['digest']}"
    dst.ctl("resume")
    gwtest.check_moved(src, dst, "warm migration of a swapped-out guest", abcheck=True)
    dst.ctl("stop")
    assert dst.wait_exit() == 0


def test(env):
    swap = None
    try:
        swap = SwapFile(os.path.join("/var/tmp", f"gw-e2e-swap-{os.getpid()}"))
        test_snapshot(env)
        test_warm(env)
    except Skip as e:
        print(f"SKIP: {e}")
        if swap:
            swap.close()
        env.cleanup()
        sys.exit(77)
    finally:
        if swap:
            swap.close()


gwtest.main(test)
