#!/usr/bin/env python3
"""A test-only forwarder for migrations over several connections: every connection accepted
on LISTEN gets its own connection to CONNECT, bytes forwarded both ways untouched; one
chosen connection can be broken after some of the source's bytes.

usage: gwfanproxy.py LISTEN_HOST:PORT CONNECT_HOST:PORT MODE
MODE: pass | cut:K:BYTES | stall:K:BYTES
K counts accepted connections from 1 (1 is a migration's first connection, 2 its first
extra one); once BYTES of the source's bytes went through connection K, cut closes both
of its sides, stall stops forwarding the source's bytes on it and keeps it open (a link
that went silent). Prints "listening" once ready and "injected" when it acted."""
import socket
import sys
import threading
import time


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
    for s in (a, b):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def main():
    lhost, lport = sys.argv[1].rsplit(":", 1)
    chost, cport = sys.argv[2].rsplit(":", 1)
    action, _, rest = sys.argv[3].partition(":")
    k, limit = (int(x) for x in rest.split(":")) if rest else (0, 0)
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
        threading.Thread(target=pump, daemon=True,
                         args=(src, dst, limit if hit else None, action)).start()
        # an extra connection's return path carries ACCEPT only: it stays as it is
        threading.Thread(target=pump, args=(dst, src), daemon=True).start()


main()
