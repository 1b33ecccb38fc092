#!/usr/bin/env python3
"""Broken snapshots are refused with a message naming the problem, a non-zero exit and
no VM left running, and `godwit inspect` reports a problem for each of them (it says 0
problems only for what a restore accepts); a snapshot to a full filesystem fails cleanly
and the guest keeps running."""
import os
import shutil
import struct
import subprocess
import time

import gwstate
import gwtest


def restore_fails(env, snap, expect, mode="eager"):
    sock = env.path("bad.sock")
    p = subprocess.run([env.godwit, "run", "--restore", snap, "--restore-mode", mode,
                        "--api-socket", sock], capture_output=True, text=True, timeout=60)
    err = p.stderr.strip()
    assert p.returncode != 0, f"restore of {snap} succeeded"
    assert expect.lower() in err.lower(), f"{os.path.basename(snap)}: expected {expect!r} in {err!r}"
    assert not os.path.exists(sock), "a refused restore left its socket (a VM?) behind"


def inspect(env, snap):
    p = subprocess.run([env.godwit, "inspect", snap], capture_output=True, text=True, timeout=60)
    return p.returncode, p.stdout + p.stderr


def refused(env, snap, expect, mode="eager"):
    """Restore refuses snap, and inspect agrees that it has a problem (the same one)."""
    restore_fails(env, snap, expect, mode)
    rc, out = inspect(env, snap)
    assert rc != 0 and "0 problems" not in out, \
        f"{os.path.basename(snap)}: restore refuses it, inspect says: {out[-400:]}"
    return out


def variant(env, good, name):
    d = env.path(name)
    shutil.copytree(good, d)
    return d


def test(env):
    vm = env.vm("src", memory="64M", cmdline="workload=abcheck wss=4M")
    vm.wait_line(r"^check ok 1$", timeout=120)
    vm.wait_socket()
    good = env.path("good")
    vm.ctl("snapshot", good)

    # a full filesystem: the snapshot fails, nothing that looks like one is left, the guest runs
    small = env.path("small")
    os.mkdir(small)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", small], check=True)
    try:
        rc, _, err = vm.ctl("snapshot", os.path.join(small, "snap"), check=False)
        assert rc != 0 and "space" in err.lower(), f"snapshot to a full disk: {rc} {err}"
        assert os.listdir(small) == [], f"left behind: {os.listdir(small)}"
    finally:
        subprocess.run(["umount", small], check=True)
    n = vm.line_count()
    vm.wait_line(r"^hb \d+$", start=n)
    vm.wait_line(r"^check ok \d+$", start=n, timeout=60)
    assert vm.status()["state"] == "running"
    vm.ctl("stop")
    vm.wait_exit()

    state = os.path.join(good, "state")
    size = os.path.getsize(state)
    hdr, recs = gwstate.read(state)
    rc, out = inspect(env, good)
    assert rc == 0 and "0 problems" in out and "all valid for a 1-vCPU machine" in out, out

    d = variant(env, good, "trunc-state")
    os.truncate(os.path.join(d, "state"), size // 2)
    restore_fails(env, d, "truncated")

    d = variant(env, good, "trunc-mem")
    os.truncate(os.path.join(d, "memory"), 1 << 20)
    restore_fails(env, d, "memory")

    # a flipped byte inside every record of the state file
    off = 32
    for i, (typ, payload) in enumerate(recs):
        d = variant(env, good, f"flip-rec{i}")
        with open(os.path.join(d, "state"), "r+b") as f:
            pos = off + 16 + len(payload) // 2
            f.seek(pos)
            b = f.read(1)
            f.seek(pos)
            f.write(bytes([b[0] ^ 0x40]))
        restore_fails(env, d, "CRC")
        off += 16 + len(payload) + 4

    # a flipped byte in the memory file's covered range (a present page)
    d = variant(env, good, "flip-mem")
    with open(os.path.join(d, "memory"), "r+b") as f:
        pos = os.lseek(f.fileno(), 16 << 20, os.SEEK_DATA)  # the guest's working set
        f.seek(pos + 100)
        b = f.read(1)
        f.seek(pos + 100)
        f.write(bytes([b[0] ^ 1]))
    restore_fails(env, d, "CRC")

    d = variant(env, good, "magic")
    with open(os.path.join(d, "state"), "r+b") as f:
        f.write(b"NOTGODWT")
    restore_fails(env, d, "bad magic")

    d = variant(env, good, "version")
    # a snapshot written by a build before format 2 (CONFIG without the TSC rate, XSAVE size
    # and devices): refused by its header, not as a truncated CONFIG
    gwstate.write(os.path.join(d, "state"), gwstate.header(version=1), recs)
    restore_fails(env, d, "format version 1 is not supported by this build (reads 2)")

    d = variant(env, good, "unknown-section")
    extra = (gwstate.SECTION, gwstate.section_build("bogus", "x", 1, b"\0" * 8))
    gwstate.write(os.path.join(d, "state"), hdr, recs[:-1] + [extra, recs[-1]])
    out = refused(env, d, "unknown section bogus@x")
    assert "unknown section bogus@x" in out, out

    d = variant(env, good, "missing-section")
    keep = [r for r in recs if r[0] != gwstate.SECTION or
            gwstate.section_parse(r[1])[0] != "serial8250"]
    assert len(keep) == len(recs) - 1
    gwstate.write(os.path.join(d, "state"), hdr, keep)
    refused(env, d, "missing section serial8250@io:3f8")

    # a device payload that decodes but breaks an invariant: refused before anything is applied
    d = variant(env, good, "serial-payload")
    gwstate.write(os.path.join(d, "state"), hdr,
                  gwstate.section_patch(recs, "serial8250", lambda p: p[:2] + b"\xf0" + p[3:]))
    out = refused(env, d, "serial8250@io:3f8: serial state: IER 0xf0 has reserved bits")
    assert "IER 0xf0 has reserved bits" in out, out
    d = variant(env, good, "i8042-payload")
    gwstate.write(os.path.join(d, "state"), hdr,
                  gwstate.section_patch(recs, "i8042", lambda p: b"\xff" + p[1:]))
    out = refused(env, d, "i8042@io:60: i8042 state: command byte 0xff has reserved bits")
    assert "command byte 0xff has reserved bits" in out, out

    # a vCPU's CPUID that is not one (a leaf twice)
    def cpuid_dup(p):
        return p[:-28] + p[-56:-48] + p[-20:]
    d = variant(env, good, "vcpu-cpuid")
    gwstate.write(os.path.join(d, "state"), hdr, gwstate.section_patch(recs, "vcpu", cpuid_dup))
    refused(env, d, "appears twice")

    # a TSC rate KVM cannot give, an XSAVE area no vCPU here holds: refused in pre-flight
    for name, kw, expect in (("tsc", {"tsc_khz": 1}, "TSC runs at 1 kHz"),
                             ("xsave", {"xsave_size": 65536}, "65536-byte XSAVE area")):
        d = variant(env, good, name)
        gwstate.write(os.path.join(d, "state"), hdr,
                      [(t, gwstate.config_machine_patch(p, **kw) if t == gwstate.CONFIG else p)
                       for t, p in recs])
        restore_fails(env, d, expect, mode="lazy")

    d = variant(env, good, "vcpu-version")
    bumped = []
    for typ, p in recs:
        if typ == gwstate.SECTION and gwstate.section_parse(p)[0] == "vcpu":
            name, inst, ver, data = gwstate.section_parse(p)
            p = gwstate.section_build(name, inst, ver + 1, data)
        bumped.append((typ, p))
    gwstate.write(os.path.join(d, "state"), hdr, bumped)
    refused(env, d, "version")

    d = variant(env, good, "cpuid")
    patched = [(t, gwstate.config_cpuid_patch(p, 7, 0, 2, 0xFFFFFFFF) if t == gwstate.CONFIG
                else p) for t, p in recs]
    gwstate.write(os.path.join(d, "state"), hdr, patched)
    restore_fails(env, d, "cannot give", mode="lazy")

    # FIFOs are refused at once, never waited on (open() would block, deaf to SIGTERM)
    fifo = env.path("fifo")
    os.mkfifo(fifo)
    rc, out = inspect(env, fifo)
    assert rc != 0 and "not a regular file or a snapshot directory" in out, out
    for name in ("state", "memory"):
        d = variant(env, good, f"fifo-{name}")
        os.unlink(os.path.join(d, name))
        os.mkfifo(os.path.join(d, name))
        restore_fails(env, d, f"{name} is not a regular file")
    p = subprocess.run([env.godwit, "run", "--memory", "64M", "--kernel", env.guest,
                        "--api-socket", env.path("fifo.sock"), "--serial", f"file:{fifo}"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode != 0 and "is a FIFO that nobody reads" in p.stderr, \
        f"--serial file:FIFO: {p.stderr}"
    # a FIFO with a reader is a fine serial output
    rfd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    vm = env.vm("fifo-reader", extra=["--serial", f"file:{fifo}"])
    vm.wait_socket()
    got, deadline = b"", time.monotonic() + 30
    while b"godwit-guest ready" not in got and time.monotonic() < deadline:
        try:
            got += os.read(rfd, 4096)
        except BlockingIOError:
            time.sleep(0.05)
    assert b"godwit-guest ready" in got, f"nothing through the FIFO: {got[:200]!r}"
    vm.ctl("stop")
    assert vm.wait_exit() == 0
    os.close(rfd)
    # a character device is fine for the serial output
    vm = env.vm("devnull", extra=["--serial", "file:/dev/null"])
    vm.wait_socket()
    assert vm.status()["state"] == "running"
    vm.ctl("stop")
    assert vm.wait_exit() == 0

    empty = env.path("empty")
    os.mkdir(empty)
    restore_fails(env, empty, "not a godwit snapshot")
    restore_fails(env, env.path("nonexistent"), "nonexistent")
    # a running VM's memory file is not a snapshot either
    restore_fails(env, os.path.join(good, "memory"), "memory")


gwtest.main(test)
