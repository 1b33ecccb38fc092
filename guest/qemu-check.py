#!/usr/bin/env python3
"""Self-test of the guest kit under QEMU, independent of godwit.

    qemu-check.py GUEST_ELF [--machine microvm|pc] [--checks memory,disk]
                                                      run the checks below
    qemu-check.py GUEST_ELF --run "CMDLINE" [--smp N] [--memory M] [--seconds S]
                                                      boot once, print timestamped lines
                                                      and a heartbeat/stats summary

Exit status 0 on success, 1 on a failed check, 77 (skip) without QEMU or /dev/kvm.
"""
import argparse
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time

QEMU = "qemu-system-x86_64"
CHECK_GROUPS = ("memory", "disk")


def boot(elf, cmdline, machine="microvm", smp=1, memory="256M", seconds=5.0, until=None,
         extra=()):
    """Runs the guest for `seconds` (or until a line matches `until`); returns [(t, line)]
    with t in seconds since QEMU started. `extra`: more QEMU arguments (devices)."""
    cmd = [QEMU, "-accel", "kvm", "-cpu", "host,-arch-capabilities", "-M", machine,
           "-m", memory, "-smp", str(smp), "-display", "none", "-nodefaults",
           "-serial", "stdio", "-no-reboot", "-kernel", elf, "-append", cmdline, *extra]
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


# The disk workload's block format (docs/guest-kit.md, "The disk workload").
SECTOR = 512
DISK_MAGIC = 0x4757443100000000
M64 = (1 << 64) - 1


def disk_block(lba, gen):
    """The 512 bytes the guest writes as generation `gen` of block `lba`."""
    words = [DISK_MAGIC | lba, gen]
    x = ((lba + 1) * 0x9e3779b97f4a7c15 ^ (gen + 1) * 0xc2b2ae3d27d4eb4f) & M64
    for _ in range(2, SECTOR // 8):
        words.append(x)
        x = (x * 6364136223846793005 + 1442695040888963407) & M64
    return struct.pack("<64Q", *words)


def disk_scan(path, nblocks):
    """What the guest's blocks in a disk image hold: (written, maxgen, sum, malformed)."""
    written = maxgen = total = 0
    bad = []
    with open(path, "rb") as f:
        data = f.read(nblocks * SECTOR)
    for lba in range(nblocks):
        blk = data[lba * SECTOR:(lba + 1) * SECTOR]
        if blk == bytes(SECTOR):
            continue
        gen = struct.unpack_from("<Q", blk, 8)[0]
        if gen == 0 or gen > 0xffffffff or blk != disk_block(lba, gen):
            bad.append(lba)
            continue
        written += 1
        maxgen = max(maxgen, gen)
        total += gen
    return written, maxgen, total, bad


def disk_checks(elf, c):
    """virtio-mmio + virtio-blk under microvm: passes verify, writes reach the image file
    (read back here and by a second boot, which must continue the generations), a damaged
    block is reported, and both register layouts (legacy and version 2) work."""
    blocks = 512
    with tempfile.TemporaryDirectory() as tmp:
        img = os.path.join(tmp, "disk.img")
        with open(img, "wb") as f:
            f.truncate(4 << 20)

        def disk_boot(cmdline, until, legacy=True, readonly=False, smp=2):
            drive = f"file={img},if=none,id=d0,format=raw" + (",readonly=on" if readonly else "")
            extra = ["-drive", drive, "-device", "virtio-blk-device,drive=d0,serial=gwcheck",
                     "-global", f"virtio-mmio.force-legacy={'true' if legacy else 'false'}"]
            # microvm adds virtio_mmio.device= to the command line itself with acpi=off
            return text_of(boot(elf, cmdline, "microvm,acpi=off", smp, seconds=40,
                                until=until, extra=extra))

        def failures(t):
            return [s for s in t if s.startswith(
                ("disk fail", "disk bad", "disk error", "virtio error", "check fail",
                 "check bad", "exception", "error"))]

        t = disk_boot(f"workload=abcheck,disk wss=8M disk_blocks={blocks} disk_write=50",
                      r"disk ok 3")
        c.expect(any(re.fullmatch(r"virtio-mmio 0x[0-9a-f]+ irq=\d+ version=1 device=2", s)
                     for s in t), "disk: legacy virtio-mmio transport found")
        c.expect('disk id "gwcheck"' in t, "disk: GET_ID returns the serial")
        c.expect("disk found written=0 maxgen=0 sum=0" in t, "disk: a fresh disk reads as zero")
        c.expect("disk ok 3" in t and "check ok 1" in t and not failures(t),
                 f"disk: 3 passes beside abcheck on 2 vCPUs, {failures(t)[:3]}")
        written, maxgen, total, bad = disk_scan(img, blocks)
        c.expect(written >= blocks // 2 and maxgen >= 2 and not bad,
                 f"disk: the image holds the guest's blocks: written={written} "
                 f"maxgen={maxgen} malformed={bad[:5]}")

        t = disk_boot(f"workload=disk disk_blocks={blocks} disk_write=30 disk_pattern=random",
                      r"disk ok 2", legacy=False, smp=1)
        c.expect(any(re.fullmatch(r"virtio-mmio 0x[0-9a-f]+ irq=\d+ version=2 device=2", s)
                     for s in t), "disk: version 2 virtio-mmio transport found")
        want = f"disk found written={written} maxgen={maxgen} sum={total}"
        c.expect(want in t, f"disk: a second boot continues the generations ({want})")
        c.expect("disk ok 2" in t and not failures(t),
                 f"disk: 2 random passes on version 2, {failures(t)[:3]}")

        written, maxgen, total, bad = disk_scan(img, blocks)
        victim = next(lba for lba in range(7, blocks)
                      if disk_scan_one(img, lba))
        with open(img, "r+b") as f:
            f.seek(victim * SECTOR + 100)
            byte = f.read(1)
            f.seek(victim * SECTOR + 100)
            f.write(bytes([byte[0] ^ 0x10]))
        t = disk_boot(f"workload=disk disk_blocks={blocks} disk_write=0", r"disk (ok|bad) 2",
                      readonly=True, smp=1)
        fails = [s for s in t if s.startswith("disk fail ")]
        c.expect(bool(fails) and all(s.startswith(f"disk fail {victim} ") for s in fails)
                 and "disk bad 1 1" in t and "disk bad 2 1" in t,
                 f"disk: a damaged block {victim} is reported: {fails[:2]}")


def disk_scan_one(path, lba):
    """True if block lba of the image holds a stamped (written) block."""
    with open(path, "rb") as f:
        f.seek(lba * SECTOR)
        return f.read(SECTOR) != bytes(SECTOR)


def run_checks(elf, machine, groups):
    c = Checks()
    if "memory" in groups:
        memory_checks(elf, machine, c)
    if "disk" in groups:
        if machine == "microvm":        # virtio-mmio devices need microvm
            disk_checks(elf, c)
        else:
            print(f"skip disk checks: no virtio-mmio on -M {machine}")
    return c.failed


def memory_checks(elf, machine, c):
    """Boot, heartbeats, abcheck, dirty rates and the wss fallback."""
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


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("elf")
    ap.add_argument("--machine", default="microvm")
    ap.add_argument("--run", metavar="CMDLINE")
    ap.add_argument("--smp", type=int, default=1)
    ap.add_argument("--memory", default="256M")
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--checks", default=",".join(CHECK_GROUPS),
                    help="comma list of check groups: " + ", ".join(CHECK_GROUPS))
    a = ap.parse_args()
    groups = a.checks.split(",")
    if not set(groups) <= set(CHECK_GROUPS):
        ap.error(f"--checks: unknown group in {a.checks}")

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
    failed = run_checks(a.elf, a.machine, groups)
    print(f"{failed} check(s) failed" if failed else "all checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
