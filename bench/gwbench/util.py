"""Small helpers: sizes, logging, child-process bookkeeping."""
import os
import re
import signal
import subprocess
import sys
import time

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B?)?\s*$", re.I)
_RATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(bit|bps)\s*$", re.I)
_MUL = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(s):
    """'256M' -> bytes (binary multiples, as godwit and QEMU read them)."""
    m = _SIZE_RE.match(str(s))
    if not m:
        raise ValueError(f"bad size: {s!r}")
    return int(float(m.group(1)) * _MUL[m.group(2).upper()])


def parse_link_rate(s):
    """'1gbit' -> bits per second (decimal multiples, as tc reads them)."""
    m = _RATE_RE.match(str(s))
    if not m:
        raise ValueError(f"bad link rate: {s!r}")
    mul = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}[m.group(2).lower()]
    return int(float(m.group(1)) * mul)


def fmt_bytes(n):
    if n is None:
        return ""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


_t0 = time.monotonic()
_verbose = True


def set_verbose(v):
    global _verbose
    _verbose = v


def log(msg):
    if _verbose:
        sys.stderr.write(f"[{time.monotonic() - _t0:7.1f}s] {msg}\n")
        sys.stderr.flush()


# --- child processes -------------------------------------------------------
# Every process the harness starts is registered here, so that Ctrl-C or an
# error kills exactly those (by pid), never anything else.
_children = {}


def spawn(argv, **kw):
    p = subprocess.Popen(argv, **kw)
    _children[p.pid] = p
    return p


def forget(p):
    _children.pop(p.pid, None)


def kill_proc(p, grace=2.0):
    """SIGTERM, then SIGKILL after `grace` seconds; reaps the child."""
    if p.poll() is None:
        try:
            p.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            try:
                p.kill()
            except ProcessLookupError:
                pass
            p.wait()
    forget(p)


def kill_all_children():
    for p in list(_children.values()):
        try:
            kill_proc(p, grace=1.0)
        except Exception:  # noqa: BLE001 - best effort on cleanup
            pass


def run(argv, timeout=60, check=False, **kw):
    """Run a command to completion; returns CompletedProcess with text output."""
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    kw.setdefault("text", True)
    r = subprocess.run(argv, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}): {(r.stderr or '').strip()}")
    return r


def wait_until(pred, timeout, interval=0.01):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            return v
        time.sleep(interval)


def one_line(s, limit=300):
    s = " ".join(str(s).split())
    return s if len(s) <= limit else s[: limit - 3] + "..."
