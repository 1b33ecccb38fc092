#!/usr/bin/env python3
"""A test-only man in the middle for migration streams: forwards source -> destination
record by record (docs/state-format.md framing) and can corrupt or cut the stream at a
chosen point; destination -> source is forwarded untouched.

usage: gwproxy.py LISTEN_HOST:PORT CONNECT_HOST:PORT MODE
MODE: pass | flip:WHERE | cut:WHERE | trickle:WHERE | cpuid | tsc | cutafter:commit |
      rawflip:N | rawcut:N | delta:past | ranges:missing | pages:missing
WHERE: round0 (the first PAGES record), round2 (the first PAGES record after ROUND 2),
       sections (the first SECTION record)
flip changes one payload byte (the record CRC no longer matches); cut closes both
connections at that point; trickle forwards from that record on one byte every 0.25 s
(a hostile source that never lets a single read time out); cpuid sets unsupported CPUID
bits in CONFIG, tsc a TSC rate of 1 kHz (no KVM gives it), CRCs fixed; cutafter:commit
forwards COMMIT, then closes both connections without letting the destination's answer
(STARTED) through: a failure after the point of no return.
rawflip/rawcut act on byte N of the source's bytes without parsing them (a TLS stream).
delta:past rewrites the first delta of at least 2 bytes in an uncompressed PAGES batch
(migrate --delta) to start with a skip of 16383 bytes, past the page's end, CRC fixed.
ranges:missing sends the source's RANGES record again right after its first MISSING (a
source announcing round 0's ranges once the pages it names were dropped); pages:missing
sends its last PAGES record again there (a pre-copy page after MISSING).
Prints "listening" once ready and "injected" when it acted."""
import socket
import struct
import sys
import threading
import time

import gwstate

ROUND = 0x103
COMMIT = 0x107
RANGES = 0x10a
MISSING = 0x10d
back_stop = threading.Event()


def shutdown_both(*socks):
    for s in socks:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def pump_back(dst, src):
    try:
        while True:
            data = dst.recv(65536)
            if not data:
                break
            if not back_stop.is_set():
                src.sendall(data)
    except OSError:
        pass
    shutdown_both(src, dst)


def raw(src, dst, action, at):
    """Forwards bytes; at offset `at` flips one bit (rawflip) or closes both sides (rawcut)."""
    pos = 0
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            if pos <= at < pos + len(data):
                if action == "rawcut":
                    dst.sendall(data[:at - pos])
                    print("injected", flush=True)
                    break
                data = bytearray(data)
                data[at - pos] ^= 0x20
                data = bytes(data)
                print("injected", flush=True)
            pos += len(data)
            dst.sendall(data)
    except OSError:
        pass
    shutdown_both(src, dst)


def main():
    lhost, lport = sys.argv[1].rsplit(":", 1)
    chost, cport = sys.argv[2].rsplit(":", 1)
    mode = sys.argv[3]
    action, _, where = mode.partition(":")
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((lhost, int(lport)))
    ls.listen(1)
    print("listening", flush=True)
    src, _ = ls.accept()
    dst = socket.create_connection((chost, int(cport)))
    threading.Thread(target=pump_back, args=(dst, src), daemon=True).start()
    if action.startswith("raw"):
        raw(src, dst, action, int(where))
        return
    dst.sendall(gwstate.recv_exact(src, 32))
    rounds_seen = -1
    armed = True
    again = None            # ranges:missing, pages:missing: the record to send again
    try:
        while True:
            typ, payload, rec = gwstate.record_recv(src)
            if typ == ROUND:
                rounds_seen = struct.unpack_from("<I", payload)[0]
            hit = armed and (
                (where == "round0" and typ == gwstate.PAGES) or
                (where == "round2" and typ == gwstate.PAGES and rounds_seen >= 2) or
                (where == "sections" and typ == gwstate.SECTION))
            if action in ("cpuid", "tsc") and typ == gwstate.CONFIG:
                rec = gwstate.record(typ, gwstate.config_cpuid_patch(payload, 7, 0, 2, 0xFFFFFFFF)
                                     if action == "cpuid" else
                                     gwstate.config_machine_patch(payload, tsc_khz=1))
                print("injected", flush=True)
            elif hit and action == "flip":
                rec = bytearray(rec)
                rec[16 + (len(rec) - 16) // 2] ^= 0x20   # in the payload (or its CRC)
                rec = bytes(rec)
                armed = False
                print("injected", flush=True)
            elif hit and action == "cut":
                print("injected", flush=True)
                break
            elif action == "cutafter" and where == "commit" and typ == COMMIT:
                back_stop.set()
                dst.sendall(rec)
                print("injected", flush=True)
                break
            elif armed and action == "delta" and typ == gwstate.PAGES and \
                    gwstate.delta_past(payload):
                rec = gwstate.record(typ, gwstate.delta_past(payload))
                armed = False
                print("injected", flush=True)
            elif action in ("ranges", "pages") and typ == (RANGES if action == "ranges"
                                                          else gwstate.PAGES):
                again = rec
            elif armed and action in ("ranges", "pages") and typ == MISSING and again:
                dst.sendall(rec)
                rec = again
                armed = False
                print("injected", flush=True)
            elif hit and action == "trickle":
                print("injected", flush=True)
                for b in rec:
                    dst.sendall(bytes([b]))
                    time.sleep(0.25)
                break
            dst.sendall(rec)
    except (EOFError, OSError):
        pass
    shutdown_both(src, dst)


if __name__ == "__main__":
    main()
