#!/usr/bin/env python3
"""A network client for the guest kit's net workload: sends a UDP probe (its number as the
payload) to IP:PORT every INTERVAL ms until the file STOP exists, records every reply
(`godwit hb=SEQ n=COUNT <payload>`) with its arrival time, then prints one JSON object:
{"sent": N, "replies": [[probe, t_sent, t_recv, hb, n], ...], "bad": [...]} (times in
seconds on CLOCK_MONOTONIC). Run inside the client's network namespace.

usage: gwprobe.py IP PORT INTERVAL_MS STOP"""
import json
import os
import re
import select
import socket
import sys
import time


def main():
    ip, port, interval, stop = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]) / 1e3, sys.argv[4]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setblocking(False)
    sent_at, replies, bad = [], [], []
    nxt = time.monotonic()
    print("probing", flush=True)
    while True:
        now = time.monotonic()
        if now >= nxt:
            if os.path.exists(stop):
                break
            try:
                s.sendto(str(len(sent_at)).encode(), (ip, port))
            except OSError:
                pass  # no ARP answer yet: counted as lost like any other probe
            sent_at.append(now)
            nxt += interval
            if nxt < now:
                nxt = now + interval  # a stall of this client is not a burst of probes
        r, _, _ = select.select([s], [], [], max(0.0, nxt - time.monotonic()))
        while r:
            try:
                data = s.recv(2048)
            except BlockingIOError:
                break
            t = time.monotonic()
            m = re.fullmatch(rb"godwit hb=(\d+) n=(\d+) (\d+)", data)
            if not m or int(m.group(3)) >= len(sent_at):
                bad.append(data.decode(errors="replace")[:80])
                continue
            k = int(m.group(3))
            replies.append([k, sent_at[k], t, int(m.group(1)), int(m.group(2))])
    # late replies
    end = time.monotonic() + 0.2
    while time.monotonic() < end:
        r, _, _ = select.select([s], [], [], 0.05)
        if r:
            data = s.recv(2048)
            m = re.fullmatch(rb"godwit hb=(\d+) n=(\d+) (\d+)", data)
            if m and int(m.group(3)) < len(sent_at):
                k = int(m.group(3))
                replies.append([k, sent_at[k], time.monotonic(), int(m.group(1)),
                                int(m.group(2))])
    print(json.dumps({"sent": len(sent_at), "replies": replies, "bad": bad}), flush=True)


if __name__ == "__main__":
    main()
