#!/usr/bin/env python3
"""A destination fed garbage, a truncated stream or a stream of another protocol version
exits non-zero with a clear error and runs nothing. So does a destination whose source
trickles one byte at a time, never letting a single read time out: during the setup
(a hand-made stream) and later, mid-record in round 0 (a real source behind
gwproxy.py trickle:round0); the source then keeps its guest. So does a destination sent a
MISSING on a move over several connections (post-copy uses one) or on a warm move (its
source serves no page after the handover), two FENCEs in a round
(more FENCEs than rounds would let a stream go on for ever), or pages and a FENCE after the
last FENCE on an extra connection. A destination that is merely
slow to build its VM (longer than the I/O timeout) is no such case: the move completes."""
import os
import socket
import struct
import time

import gwstate
import gwtest

# short I/O timeouts (the setup deadline is the I/O timeout, a record's twice it)
IO_TIMEOUT_MS = "1000"
TRICKLE_S = 0.25           # a byte every 0.25 s: no single read ever waits 1 s
TRICKLE_BOUND_S = 60       # old code would wait for ever; give up on it after this
record = gwstate.record


def feed(env, name, data, expect, close=True):
    path = env.path(f"{name}.mig")
    dst = gwtest.start_dest(env, name, f"unix:{path}")
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    s.sendall(data)
    if close:
        s.shutdown(socket.SHUT_WR)
    rc = dst.wait_exit(30)
    s.close()
    err = dst.stderr()
    assert rc != 0, f"{name}: the destination exited 0"
    assert expect.lower() in err.lower(), f"{name}: expected {expect!r} in {err!r}"
    assert "nothing was started" in err, f"{name}: {err!r}"
    assert not dst.heartbeats()


def trickle_setup(env, hdr, hello):
    """HELLO, then a CONFIG record that claims 64 KiB, one byte every TRICKLE_S."""
    path = env.path("trickle.mig")
    dst = gwtest.start_dest(env, "trickle", f"unix:{path}")
    h = struct.pack("<IQ", gwstate.CONFIG, 65536)
    stream = hdr + hello + h + struct.pack("<I", gwstate.crc32c(h)) + b"\0" * 65536
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    t0 = time.monotonic()
    sent = 0
    cut = False
    try:
        while dst.proc.poll() is None and time.monotonic() - t0 < TRICKLE_BOUND_S:
            s.sendall(stream[sent:sent + 1])
            sent += 1
            time.sleep(TRICKLE_S)
    except OSError:
        cut = True   # the destination cut the connection
    still = not cut and dst.proc.poll() is None
    s.close()
    assert not still, f"trickle: the destination still waits after {TRICKLE_BOUND_S} s " \
                      f"of trickling ({sent} bytes)"
    rc = dst.wait_exit(10)
    err = dst.stderr()
    assert rc != 0, "trickle: the destination exited 0"
    for want in ("the migration setup", "deadline of 1000 ms", "nothing was started"):
        assert want in err, f"trickle: expected {want!r} in {err!r}"
    assert sent < len(stream), "trickle: the whole stream went through"
    print(f"trickle during setup, {sent} bytes sent: {err.strip().splitlines()[-1]}")


def trickle_round0(env, hosts):
    """A real live migration whose stream turns into a trickle at round 0's first PAGES.
    Only the destination is under test: the source keeps the default I/O timeout, so a
    loaded host that is slow to answer the PING before round 0 cannot fail it first."""
    uri = f"tcp:{hosts.dst_ip}:4444"
    short = os.environ.pop("GODWIT_MIGRATION_IO_TIMEOUT_MS")
    try:
        src = gwtest.start_source(env, "trickle-src", cmdline="workload=abcheck wss=8M",
                                  netns=hosts.src)
    finally:
        os.environ["GODWIT_MIGRATION_IO_TIMEOUT_MS"] = short
    dst = gwtest.start_dest(env, "trickle-dst", uri, netns=hosts.dst)
    p = gwtest.proxy(hosts, "trickle:round0")
    try:
        rc, _, merr = gwtest.migrate(src, "tcp:127.0.0.1:5555", check=False,
                                     timeout=TRICKLE_BOUND_S)
        assert rc != 0, "trickle-round0: the migration succeeded"
        assert p.stdout.readline().strip() == "injected", "trickle-round0: no trickle"
        rc = dst.wait_exit(TRICKLE_BOUND_S)
        err = dst.stderr()
        assert rc not in (0, None), f"trickle-round0: destination exit {rc}: {err}"
        for want in ("receiving one record", "deadline of 2000 ms", "nothing was started"):
            assert want in err, f"trickle-round0: expected {want!r} in {err!r}"
        assert not dst.heartbeats(), "trickle-round0: the destination ran the guest"
        print(f"trickle in round 0: {err.strip().splitlines()[-1]}")
        n = src.line_count()
        src.wait_line(r"^hb \d+$", start=n, timeout=20)
        assert src.status()["state"] == "running"
    finally:
        p.kill()
        p.wait()
    src.ctl("stop")
    assert src.wait_exit() == 0


def slow_build(env):
    """Both sides with the short I/O timeout, the destination's VM taking three times that
    to build (LD_PRELOAD delays KVM_CREATE_VM): the source waits for ACCEPT and the
    destination's setup deadline does not count its own building; the guest moves on."""
    uri = f"unix:{env.path('slow.mig')}"
    src = gwtest.start_source(env, "slow-src", cmdline="workload=abcheck wss=8M")
    os.environ.update(LD_PRELOAD=os.environ["GW_FAULT_SLOW_BUILD"],
                      GW_SLOW_BUILD_MS=str(3 * int(IO_TIMEOUT_MS)))
    try:
        dst = gwtest.start_dest(env, "slow-dst", uri)
    finally:
        del os.environ["LD_PRELOAD"], os.environ["GW_SLOW_BUILD_MS"]
    src.wait_line(r"^check ok 1$", timeout=120)
    _, res, _ = gwtest.migrate(src, uri, "--mode", "live")
    assert res["state"] == "completed", res
    assert src.wait_exit() == 0
    gwtest.check_moved(src, dst, "slow-build", abcheck=True)
    dst.ctl("stop")
    assert dst.wait_exit() == 0


def fanned_refused(env, hosts, name, fanmode, mode, needle, connections=2):
    """A move over CONNECTIONS connections (MODE) through gwfanproxy.py FANMODE, which makes the stream
    one no source sends: the destination refuses it naming needle and runs nothing; the
    source keeps its guest."""
    uri = f"tcp:{hosts.dst_ip}:4444"
    # the default I/O timeouts: a loaded host must not fail the move before the injection
    short = os.environ.pop("GODWIT_MIGRATION_IO_TIMEOUT_MS")
    try:
        src = gwtest.start_source(env, f"{name}-src", cmdline="workload=abcheck wss=8M",
                                  netns=hosts.src)
        dst = gwtest.start_dest(env, f"{name}-dst", uri, netns=hosts.dst)
    finally:
        os.environ["GODWIT_MIGRATION_IO_TIMEOUT_MS"] = short
    src.wait_line(r"^check ok 1$", timeout=120)
    p = gwtest.fanproxy(hosts, fanmode)
    try:
        rc, _, merr = gwtest.migrate(src, "tcp:127.0.0.1:5555", "--mode", mode,
                                     "--connections", str(connections), "--bandwidth", "8M",
                                     check=False, timeout=120)
    finally:
        p.kill()
        out = p.communicate()[0]
    assert "injected" in out, f"{name}: nothing injected: {out!r}"
    assert rc != 0, f"{name}: the move succeeded"
    assert "keeps running here" in merr, merr
    gwtest.check_refused(dst, name, needle, "nothing was started")
    gwtest.check_kept(src, name)
    src.ctl("stop")
    assert src.wait_exit() == 0


def missing_fanned(env, hosts):
    """A MISSING (post-copy's pages to fetch) on a move over 2 connections, which no source
    sends (post-copy goes over one): gwfanproxy.py missing:1 adds one after the first ROUND."""
    fanned_refused(env, hosts, "missing-fanned", "missing:1", "live",
                   "MISSING on a move over 2 connections: post-copy uses one")


def missing_warm(env, hosts):
    """A MISSING on a warm move over one connection, after its last pages, right before DONE
    (gwfanproxy.py missingdone:1): a warm source never switches to post-copy and serves no
    page after the handover, so the pages MISSING drops would never come."""
    fanned_refused(env, hosts, "missing-warm", "missingdone:1", "warm",
                   "MISSING on a warm move", connections=1)


def fences_doubled(env, hosts):
    """Two FENCEs a round on every connection, numbered on so that the barrier alone lets
    them pass (gwfanproxy.py fences): with more FENCEs than rounds, extra connections could
    carry pages for ever, so the second FENCE of round 0 is refused."""
    fanned_refused(env, hosts, "fences-doubled", "fences", "warm",
                   "a second FENCE in round 0")


def pages_late(env, hosts):
    """Pages and a FENCE after the last FENCE on the extra connection (gwfanproxy.py late:2,
    DONE held back until they were read): the FENCE reset that connection's count of pages
    since its last FENCE, so the check at DONE saw none; now an extra connection that read a
    FENCE the first never did is refused."""
    fanned_refused(env, hosts, "pages-late", "late:2", "warm",
                   "connection 2 of 2 read FENCE 2, beyond the last FENCE (1)")


def test(env):
    os.environ["GODWIT_MIGRATION_IO_TIMEOUT_MS"] = IO_TIMEOUT_MS
    hello = record(0x100, struct.pack("<IIQ", gwstate.PROTOCOL, 2, 0))   # live
    feed(env, "garbage", b"GET / HTTP/1.0\r\n\r\n" + b"x" * 100, "bad magic")
    feed(env, "random", bytes(range(256)) * 4, "bad magic")
    feed(env, "empty", b"", "empty")
    hdr = gwstate.header(kind=2)
    feed(env, "truncated-header", hdr[:20], "truncated")
    feed(env, "truncated-record", hdr + hello[:10], "truncated")
    feed(env, "v1-format", gwstate.header(version=1, kind=2) + hello, "format version 1")
    feed(env, "v9-protocol", hdr + record(0x100, struct.pack("<IIQ", 9, 2, 0)),
         "protocol version 9")
    feed(env, "no-config", hdr + hello + record(gwstate.PAGES, b"\0" * 8), "CONFIG")
    bad = bytearray(hdr + hello)
    bad[40] ^= 1
    feed(env, "flipped", bytes(bad), "CRC")
    feed(env, "huge-length", hdr + struct.pack("<IQ", 3, 1 << 40) +
         struct.pack("<I", gwstate.crc32c(struct.pack("<IQ", 3, 1 << 40))), "exceeds")
    trickle_setup(env, hdr, hello)
    slow_build(env)
    hosts = gwtest.Hosts(env)
    trickle_round0(env, hosts)
    missing_fanned(env, hosts)
    missing_warm(env, hosts)
    fences_doubled(env, hosts)
    pages_late(env, hosts)


gwtest.main(test)
