#!/usr/bin/env python3
"""Self-test of the guest kit under QEMU, independent of godwit.

    qemu-check.py GUEST_ELF [--machine microvm|pc]   run the checks below
    qemu-check.py GUEST_ELF --run "CMDLINE" [--smp N] [--memory M] [--seconds S]
                                                      boot once, print timestamped lines
                                                      and a heartbeat/stats summary

Exit status 0 on success, 1 on a failed check, 77 (skip) without QEMU or /dev/kvm.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import threading
import time

QEMU = "qemu-system-x86_64"


def boot(elf, cmdline, machine="microvm", smp=1, memory="256M", seconds=5.0, until=None):
    """Runs the guest for `seconds` (or until a line matches `until`); returns [(t, line)]
    with t in seconds since QEMU started."""
    cmd = [QEMU, "-accel", "kvm", "-cpu", "host,-arch-capabilities", "-M", machine,
           "-m", memory, "-smp", str(smp), "-display", "none", "-nodefaults",
           "-serial", "stdio", "-no-reboot", "-kernel", elf, "-append", cmdline]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, errors="replace")
    lines = []
    done = threading.Event()

    def reader():
        for raw in proc.stdout:
            text = raw.rstrip("\r\n")
            lines.append((time.monotonic() - t0, text))
            if until and re.fullmatch(until, text):
                done.set()
        done.set()

    threading.Thread(target=reader, daemon=True).start()
    done.wait(seconds)
    proc.kill()
    proc.wait()
    return lines


def heartbeats(lines):
    return [(t, int(m.group(1))) for t, s in lines if (m := re.fullmatch(r"hb (\d+)", s))]


def summary(lines, hz=250):
    """Heartbeat count, continuity and rate (host clock, from the first second after
    the first heartbeat), plus the pages/s from `stats` lines (guest clock)."""
    out = {}
    hb = heartbeats(lines)
    seqs = [s for _, s in hb]
    out["hb"] = len(hb)
    out["continuous"] = bool(seqs) and seqs[0] == 1 and all(
        b == a + 1 for a, b in zip(seqs, seqs[1:]))
    win = [(t, s) for t, s in hb if hb and t >= hb[0][0] + 1.0]
    if len(win) > 1 and win[-1][0] > win[0][0]:
        out["hb_per_s"] = (win[-1][1] - win[0][1]) / (win[-1][0] - win[0][0])
    st = [tuple(map(int, re.findall(r"=(\d+)", s))) for _, s in lines if s.startswith("stats ")]
    if len(st) >= 3:
        (t1, p1), (t2, p2) = st[1], st[-1]
        out["pages_per_s"] = (p2 - p1) * hz / (t2 - t1)
    return out


class Checks:
    def __init__(self):
        self.failed = 0

    def expect(self, ok, what):
        print(("ok   " if ok else "FAIL ") + what)
        if not ok:
            self.failed += 1


def text_of(lines):
    return [s for _, s in lines]


def run_checks(elf, machine):
    c = Checks()
    slow = 15.0 if machine == "pc" else 0.0      # SeaBIOS takes seconds here

    for smp in (1, 2):
        lines = boot(elf, "workload=idle", machine, smp, seconds=slow + 4)
        s = summary(lines)
        c.expect(f"godwit-guest ready cpus={smp}" in text_of(lines), f"idle smp={smp}: ready")
        c.expect(s["continuous"] and s["hb"] > 300, f"idle smp={smp}: {s['hb']} heartbeats, "
                 f"continuous={s['continuous']}")
        rate = s.get("hb_per_s", 0)
        c.expect(150 <= rate <= 260, f"idle smp={smp}: {rate:.0f} heartbeats/s (250 nominal)")

    for smp in (1, 2):
        lines = boot(elf, "workload=abcheck wss=8M", machine, smp, seconds=slow + 30,
                     until=r"check ok 5")
        t = text_of(lines)
        bad = [s for s in t if s.startswith(("check fail", "check bad", "exception", "error"))]
        c.expect("check ok 5" in t and not bad, f"abcheck smp={smp}: 5 passes, {bad[:3]}")
        c.expect(summary(lines)["continuous"], f"abcheck smp={smp}: heartbeats continuous")

    for pattern in ("seq", "random"):
        lines = boot(elf, f"workload=dirty wss=16M rate=20000 pattern={pattern} stats=1",
                     machine, 2, seconds=slow + 6)
        s = summary(lines)
        rate = s.get("pages_per_s", 0)
        c.expect(18000 <= rate <= 22000, f"dirty {pattern} rate=20000 smp=2: {rate:.0f} pages/s")
        c.expect(s["continuous"], f"dirty {pattern}: heartbeats continuous")

    lines = boot(elf, "workload=abcheck wss=1G", machine, 1, memory="128M", seconds=slow + 3)
    t = text_of(lines)
    c.expect("error: wss 1G does not fit in memory" in t and "workload idle hz=250" in t,
             "wss larger than RAM: error line, falls back to idle")
    return c.failed


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("elf")
    ap.add_argument("--machine", default="microvm")
    ap.add_argument("--run", metavar="CMDLINE")
    ap.add_argument("--smp", type=int, default=1)
    ap.add_argument("--memory", default="256M")
    ap.add_argument("--seconds", type=float, default=10)
    a = ap.parse_args()

    if not shutil.which(QEMU) or not os.access("/dev/kvm", os.R_OK | os.W_OK):
        print(f"skip: needs {QEMU} and /dev/kvm")
        return 77
    if a.run is not None:
        lines = boot(a.elf, a.run, a.machine, a.smp, a.memory, a.seconds)
        for t, s in lines:
            if not re.fullmatch(r"hb \d+", s):
                print(f"{t:8.3f}  {s}")
        print(summary(lines))
        return 0
    failed = run_checks(a.elf, a.machine)
    print(f"{failed} check(s) failed" if failed else "all checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
