"""Helpers for the tests that boot Debian's cloud kernel: the kernel files (fetched by
scripts/get-linux-kernel into the build directory), a tiny initrd, the command line this
host's emulator needs (MACHINE-NOTES: "Linux guests here") and parsing of the kernel log."""
import os
import re
import struct
import subprocess
import sys

# CPU features the kernel would otherwise use and this host's instruction emulator lacks
EMULATOR_OPTS = ("noxsave nopku nofsgsbase noinvpcid nopcid mitigations=off "
                 "clearcpuid=141,308,295,288,298,145,515,158,306,154,534,151")
CMDLINE = f"console=ttyS0 earlyprintk=serial reboot=k panic=1 {EMULATOR_OPTS}"
MEMORY = 256 << 20
FETCH_S = 600               # scripts/get-linux-kernel, when the build has no kernel yet
TS_LINE = re.compile(r"^\[\s*(\d+\.\d+)\] (.*)$")


def kernel_dir():
    """The directory with vmlinuz, vmlinux and vmlinux-nopvh; exits 77 (skip) without it."""
    d = os.environ.get("GODWIT_LINUX_DIR")
    if not d:
        print("SKIP: GODWIT_LINUX_DIR is not set (run through meson)")
        sys.exit(77)
    if not all(os.path.isfile(os.path.join(d, f)) for f in ("vmlinuz", "vmlinux", "vmlinux-nopvh")):
        script = os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "get-linux-kernel")
        try:
            # the script bounds itself (5 min for a lock, 4 for the download); so does this
            p = subprocess.run([script, d], capture_output=True, text=True, timeout=FETCH_S)
        except subprocess.TimeoutExpired:
            print(f"SKIP: fetching Debian's cloud kernel took over {FETCH_S} s")
            sys.exit(77)
        if p.returncode != 0:
            print(f"SKIP: Debian's cloud kernel could not be fetched: {p.stderr.strip()}")
            sys.exit(77)
    return d


def make_initrd(path):
    """A newc cpio archive holding /init (a shell script) and /hello: an initrd to find."""
    def entry(name, data, mode, ino):
        nb = name.encode() + b"\0"
        hdr = b"070701" + b"".join(b"%08X" % v for v in
                                   (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(nb), 0))
        out = hdr + nb
        out += b"\0" * (-len(out) % 4) + data
        return out + b"\0" * (-len(out) % 4)
    d = (entry("init", b"#!/bin/sh\necho hello from the initrd\n", 0o100755, 1) +
         entry("hello", b"godwit\n" * 600, 0o100644, 2) + entry("TRAILER!!!", b"", 0, 0))
    d += b"\0" * (-len(d) % 512)
    with open(path, "wb") as f:
        f.write(d)
    return len(d)


def e820_expected(memory=MEMORY):
    """The map godwit builds for a guest of this size (below 3 GiB)."""
    return [(0, 0x9ffff, "usable"), (0xa0000, 0xfffff, "reserved"),
            (0x100000, memory - 1, "usable"), (0xfeffc000, 0xfeffffff, "reserved")]


def e820_logged(texts):
    out = []
    for t in texts:
        m = re.search(r"BIOS-e820: \[mem 0x([0-9a-f]+)-0x([0-9a-f]+)\] (\w+)", t)
        if m:
            out.append((int(m.group(1), 16), int(m.group(2), 16), m.group(3)))
    return out


def log_lines(vm, start=0, prefix=""):
    """(timestamp, message) of the kernel's log lines from line index start on."""
    with vm.cond:
        texts = [t for _, t in vm.lines[start:]]
    if prefix and texts:
        texts[0] = prefix + texts[0]
    out = []
    for t in texts:
        m = TS_LINE.match(t)
        if m:
            out.append((float(m.group(1)), m.group(2)))
    return out


def normalized(msg):
    """A log message with its numbers blanked: what two boots of one kernel share."""
    return re.sub(r"[0-9a-fA-F]*[0-9][0-9a-fA-F]*", "#", msg)
