#!/usr/bin/env python3
"""A destination fed garbage, a truncated stream or a stream of another protocol version
exits non-zero with a clear error and runs nothing."""
import socket
import struct
import time

import gwstate
import gwtest


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


def record(typ, payload):
    h = struct.pack("<IQ", typ, len(payload))
    h += struct.pack("<I", gwstate.crc32c(h))
    return h + payload + struct.pack("<I", gwstate.crc32c(payload, gwstate.crc32c(h)))


def test(env):
    hello = record(0x100, struct.pack("<IIQ", 1, 2, 0))
    feed(env, "garbage", b"GET / HTTP/1.0\r\n\r\n" + b"x" * 100, "bad magic")
    feed(env, "random", bytes(range(256)) * 4, "bad magic")
    feed(env, "empty", b"", "empty")
    hdr = gwstate.header(kind=2)
    feed(env, "truncated-header", hdr[:20], "truncated")
    feed(env, "truncated-record", hdr + hello[:10], "truncated")
    feed(env, "v2-format", gwstate.header(version=2, kind=2) + hello, "format version 2")
    feed(env, "v9-protocol", hdr + record(0x100, struct.pack("<IIQ", 9, 2, 0)),
         "protocol version 9")
    feed(env, "no-config", hdr + hello + record(gwstate.PAGES, b"\0" * 8), "CONFIG")
    bad = bytearray(hdr + hello)
    bad[40] ^= 1
    feed(env, "flipped", bytes(bad), "CRC")
    feed(env, "huge-length", hdr + struct.pack("<IQ", 3, 1 << 40) +
         struct.pack("<I", gwstate.crc32c(struct.pack("<IQ", 3, 1 << 40))), "exceeds")


gwtest.main(test)
