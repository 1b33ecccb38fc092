#!/usr/bin/env python3
"""A test-only forwarder for migrations over several connections: every connection accepted
on LISTEN gets its own connection to CONNECT, bytes forwarded both ways untouched; one
chosen connection can be broken after some of the source's bytes.

usage: gwfanproxy.py LISTEN_HOST:PORT CONNECT_HOST:PORT MODE
MODE: pass | cut:K:BYTES | stall:K:BYTES | delta:K | missing:K | missingdone:K | fences | late:K
K counts accepted connections from 1 (1 is a migration's first connection, 2 its first
extra one); once BYTES of the source's bytes went through connection K, cut closes both
of its sides, stall stops forwarding the source's bytes on it and keeps it open (a link
that went silent); delta makes the first delta of at least 2 bytes on connection K
hostile, as gwproxy.py's delta:past; missing adds a MISSING (post-copy's pages to fetch)
right after the first ROUND on connection K, which no source sends over several
connections, and missingdone the same right before DONE, after the last pages; fences
sends every FENCE s on every connection as FENCE 2s-1 and FENCE 2s (numbered on, so the
barrier holds), two a round, which no source sends; late sends, right
after the first FENCE s on connection K (K > 1), its last PAGES record again and FENCE s+1,
and holds DONE on the first connection until a second after that (so the destination has
read them before DONE), pages after the last FENCE, which no source sends.
Prints "listening" once ready and "injected" when it acted."""
import socket
import struct
import sys
import threading
import time

import gwstate
from gwproxy import MISSING, ROUND, shutdown_both

DONE, FENCE = 0x104, 0x112
late_sent = threading.Event()


def pump(a, b, limit=None, action=None):
    """a -> b; with limit, acts after that many bytes."""
    sent = 0
    try:
        while True:
            data = a.recv(65536)
            if not data:
                break
            if limit is not None and sent + len(data) >= limit:
                b.sendall(data[:limit - sent])
                print("injected", flush=True)
                if action == "stall":
                    time.sleep(3600)
                break
            b.sendall(data)
            sent += len(data)
    except OSError:
        pass
    shutdown_both(a, b)


def pump_records(a, b, edit, once=True):
    """a -> b record by record; edit(type, payload) gives the bytes to send in a record's
    place, or None to send it as it came; with once, only until it gave bytes once."""
    armed, said = True, False
    try:
        b.sendall(gwstate.recv_exact(a, 32))
        while True:
            typ, payload, rec = gwstate.record_recv(a)
            out = edit(typ, payload) if armed else None
            if out:
                rec = out
                armed = not once
                if not said:
                    print("injected", flush=True)
                    said = True
            b.sendall(rec)
    except (EOFError, OSError):
        pass
    shutdown_both(a, b)


def edit_delta(typ, payload):
    """The first uncompressed PAGES batch with a delta goes hostile."""
    bad = gwstate.delta_past(payload) if typ == gwstate.PAGES else None
    return gwstate.record(typ, bad) if bad else None


def edit_missing(typ, payload):
    """After the first ROUND, a MISSING naming pages 0-7 (docs/migration-protocol.md)."""
    if typ != ROUND:
        return None
    return gwstate.record(typ, payload) + \
        gwstate.record(MISSING, struct.pack("<QQ", 0, 8) + b"\xff")


def edit_missing_done(typ, payload):
    """Right before DONE, after every page, the same MISSING as edit_missing."""
    if typ != DONE:
        return None
    return gwstate.record(MISSING, struct.pack("<QQ", 0, 8) + b"\xff") + \
        gwstate.record(typ, payload)


def edit_fences(typ, payload):
    """FENCE s goes as FENCE 2s-1 and FENCE 2s."""
    if typ != FENCE:
        return None
    seq = struct.unpack("<Q", payload)[0]
    return b"".join(gwstate.record(FENCE, struct.pack("<Q", s)) for s in (2 * seq - 1, 2 * seq))


def edit_late():
    """An edit for late:K's connection K: remembers the last PAGES record, and after the
    first FENCE sends it again and the next FENCE."""
    last = [b""]

    def edit(typ, payload):
        if typ == gwstate.PAGES:
            last[0] = gwstate.record(typ, payload)
            return None
        if typ != FENCE:
            return None
        seq = struct.unpack("<Q", payload)[0]
        late_sent.set()
        return gwstate.record(typ, payload) + last[0] + \
            gwstate.record(FENCE, struct.pack("<Q", seq + 1))
    return edit


def edit_hold_done(typ, payload):
    """late:K's first connection: DONE waits until a second after connection K's extras."""
    if typ == DONE:
        late_sent.wait(120)
        time.sleep(1)
    return None


def main():
    lhost, lport = sys.argv[1].rsplit(":", 1)
    chost, cport = sys.argv[2].rsplit(":", 1)
    action, _, rest = sys.argv[3].partition(":")
    k, _, limit = rest.partition(":")
    k, limit = int(k or 0), int(limit or 0)
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((lhost, int(lport)))
    ls.listen(16)
    print("listening", flush=True)
    n = 0
    while True:
        src, _ = ls.accept()
        n += 1
        dst = socket.create_connection((chost, int(cport)))
        hit = action in ("cut", "stall") and n == k
        if action == "late" and n in (1, k):
            edit = edit_hold_done if n == 1 else edit_late()
            threading.Thread(target=pump_records, args=(src, dst, edit), daemon=True).start()
        elif action in ("delta", "missing", "missingdone") and n == k or action == "fences":
            edit = {"delta": edit_delta, "missing": edit_missing,
                    "missingdone": edit_missing_done, "fences": edit_fences}[action]
            threading.Thread(target=pump_records, args=(src, dst, edit, action != "fences"),
                             daemon=True).start()
        else:
            threading.Thread(target=pump, daemon=True,
                             args=(src, dst, limit if hit else None, action)).start()
        # an extra connection's return path carries ACCEPT only: it stays as it is
        threading.Thread(target=pump, args=(dst, src), daemon=True).start()


main()
