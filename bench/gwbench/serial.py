"""Serial console capture: every line timestamped with time.monotonic() on arrival.

The VMM's serial output goes to a pty (raw mode, so no CR is added and a C
program's stdout stays line-buffered); a stamper process timestamps each chunk as
it arrives, and a reader thread keeps the lines and writes them to a log file.
"""
import os
import re
import subprocess
import sys
import threading
import time
import tty

HB_RE = re.compile(r"^hb (\d+)\s*$")
READY_RE = re.compile(r"godwit-guest ready cpus=(\d+)")
CHECK_OK_RE = re.compile(r"^check ok (\d+)")
CHECK_FAIL_RE = re.compile(r"^check fail")
DISK_OK_RE = re.compile(r"^disk ok (\d+)")
DISK_FAIL_RE = re.compile(r"^disk (fail|bad|error)")


# The stamper: a process of its own reads the pty and stamps each chunk with
# time.monotonic() (the same clock as the harness's) the moment read() returns, then frames
# it as "T LEN\n" + data for the reader thread. A thread of the harness stamped lines only
# once it held Python's lock again, which a loaded host's busy main thread kept for up to
# 0.8 s; measured on a 2-CPU host at load 8, 40-58% of heartbeat lines came in bursts of up
# to 136. It runs SCHED_FIFO (nice -10 without the privilege): it only blocks in read(), so
# it takes nothing from the VMMs.
STAMPER = r"""
import os, sys, time
try:
    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
except (OSError, AttributeError):
    try:
        os.setpriority(os.PRIO_PROCESS, 0, -10)
    except OSError:
        pass
out = sys.stdout.buffer
while True:
    try:
        d = os.read(0, 65536)
    except OSError:
        d = b""
    t = time.monotonic()
    if not d:
        break
    out.write(b"%.9f %d\n" % (t, len(d)) + d)
    out.flush()
"""


class SerialCapture:
    def __init__(self, label, log_path=None):
        self.label = label
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.lines = []          # [(t, text)]
        self.partial = b""
        self.partial_t = None
        self.first_byte_t = None
        self.eof = False
        self.cond = threading.Condition()
        self.stamper = None
        self.log = open(log_path, "w", encoding="utf-8", errors="replace") if log_path else None
        self.thread = threading.Thread(target=self._reader, name=f"serial-{label}", daemon=True)

    def child_fd(self):
        return self.slave

    def start(self):
        """Call after the child was spawned with child_fd() as its stdout."""
        os.close(self.slave)
        self.slave = None
        self.stamper = subprocess.Popen([sys.executable, "-c", STAMPER], stdin=self.master,
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        os.close(self.master)   # the stamper's now
        self.master = None
        self.thread.start()
        return self

    def _reader(self):
        f = self.stamper.stdout
        while True:
            head = f.readline().split()
            data = f.read(int(head[1])) if len(head) == 2 else b""
            if not data:   # the VMM closed its side (EIO), or the stamper ended
                break
            t = float(head[0])
            with self.cond:
                if self.first_byte_t is None:
                    self.first_byte_t = t
                buf = self.partial + data
                parts = buf.split(b"\n")
                self.partial = parts.pop()
                self.partial_t = t if self.partial else None
                for raw in parts:
                    text = raw.decode("utf-8", "replace").rstrip("\r")
                    self.lines.append((t, text))
                    if self.log:
                        self.log.write(f"{t:.6f} {text}\n")
                self.cond.notify_all()
        with self.cond:
            self.eof = True
            self.cond.notify_all()
        if self.log:
            if self.partial:
                self.log.write(f"{self.partial_t:.6f} {self.partial.decode('utf-8', 'replace')} [no newline]\n")
            self.log.flush()

    def wait_for(self, pred, timeout, start_index=0):
        """Wait until pred(t, text) holds for a line at index >= start_index.

        Returns (index, t, text) or None on timeout or EOF."""
        deadline = time.monotonic() + timeout
        i = start_index
        with self.cond:
            while True:
                while i < len(self.lines):
                    t, text = self.lines[i]
                    if pred(t, text):
                        return i, t, text
                    i += 1
                if self.eof:
                    return None
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(min(left, 0.1))

    def wait_heartbeats(self, n, timeout, start_index=0):
        """Wait for n heartbeat lines at or after start_index; returns the last (index, t, text)."""
        count = [0]

        def pred(t, text):
            if HB_RE.match(text):
                count[0] += 1
                return count[0] >= n
            return False
        return self.wait_for(pred, timeout, start_index)

    def snapshot(self):
        with self.cond:
            return list(self.lines), self.partial, self.partial_t

    def tail(self, n=5):
        with self.cond:
            return [text for _, text in self.lines[-n:]]

    def close(self):
        if self.slave is not None:
            os.close(self.slave)
            self.slave = None
        if self.stamper is not None:
            # it ends once the VMM's side is closed; one that does not is stopped
            try:
                self.stamper.wait(2.0)
            except subprocess.TimeoutExpired:
                self.stamper.kill()
                self.stamper.wait()
        if self.thread.is_alive():
            self.thread.join(2.0)
        if self.stamper is not None:
            self.stamper.stdout.close()
            self.stamper = None
        if self.master is not None:
            os.close(self.master)
            self.master = None
        if self.log:
            self.log.close()
            self.log = None


def merge_streams(src, dst):
    """Lines of the source then the destination, as one console.

    A line the source had begun but not finished when it was paused is
    completed by the destination's first bytes: join them."""
    s_lines, s_partial, _ = src.snapshot()
    d_lines, d_partial, d_pt = dst.snapshot()
    out = list(s_lines)
    d_lines = list(d_lines)
    if s_partial:
        p = s_partial.decode("utf-8", "replace")
        if d_lines:
            t, text = d_lines[0]
            d_lines[0] = (t, p + text)
        elif d_partial:
            d_partial = s_partial + d_partial
    out.extend(d_lines)
    return out, len(s_lines)


def heartbeats(lines):
    """[(t, seq, index)] of heartbeat lines."""
    hb = []
    for i, (t, text) in enumerate(lines):
        m = HB_RE.match(text)
        if m:
            hb.append((t, int(m.group(1)), i))
    return hb


def gaps_between(lines, start, t_until):
    """Gaps (s) between consecutive heartbeats from line index start on, up to time t_until:
    after a post-copy switch, what the guest felt of its faults while its pages arrived."""
    hb = [h for h in heartbeats(lines) if h[2] >= start and h[0] <= t_until]
    return [b[0] - a[0] for a, b in zip(hb, hb[1:])]


AFTER_WINDOW_S = 1.0     # how long after the switch gap_after_ms looks


def analyse_move(lines, boundary, t_from, settle_hb=20):
    """Check and measure a move (source lines [0, boundary), destination after).

    Returns dict: ok, reason, last_before, first_after,
      gap_ms            the longest gap between consecutive heartbeats from t_from
                        (the operation's start) on: the guest-observed downtime,
                        including any stall while a live migration's rounds run (a gap
                        that began before t_from counts from t_from), up to AFTER_WINDOW_S
                        after the first heartbeat on the new side: the longest of
                        gap_before_ms, switchover_gap_ms and gap_after_ms;
      switchover_gap_ms from the source's last heartbeat (or t_from, if later) to the
                        destination's first;
      baseline_gap_ms   the longest gap in the second before t_from (the noise floor);
      gap_before_ms     the longest gap on the source from t_from to its last heartbeat
                        (rounds, throttling, dirty logging starting: before the switch);
      gap_before_at     when that gap began (host time);
      gap_after_ms      the longest gap on the destination within AFTER_WINDOW_S of its
                        first heartbeat (the guest slowed down after the switch);
      check_ok_before/after, check_fail; disk_ok_before/after, disk_fail (the disk workload:
      every pass reads back every block as last written)."""
    res = {"ok": False, "reason": "", "last_before": None, "first_after": None,
           "gap_ms": None, "switchover_gap_ms": None, "baseline_gap_ms": None,
           "gap_before_ms": None, "gap_before_at": None, "gap_after_ms": None,
           "t_last_before": None, "t_first_after": None, "first_after_burst": None,
           "check_ok_before": None, "check_ok_after": None, "check_fail": None,
           "disk_ok_before": None, "disk_ok_after": None, "disk_fail": None}
    hb = heartbeats(lines)
    before = [h for h in hb if h[2] < boundary]
    after = [h for h in hb if h[2] >= boundary]
    for t, text in lines:
        if CHECK_FAIL_RE.match(text):
            res["check_fail"] = text
            break
    for t, text in lines:
        if DISK_FAIL_RE.match(text):
            res["disk_fail"] = text
            break
    disk_before = [int(DISK_OK_RE.match(x).group(1)) for _, x in lines[:boundary] if DISK_OK_RE.match(x)]
    disk_after = [int(DISK_OK_RE.match(x).group(1)) for _, x in lines[boundary:] if DISK_OK_RE.match(x)]
    res["disk_ok_before"] = disk_before[-1] if disk_before else None
    res["disk_ok_after"] = disk_after[-1] if disk_after else None
    oks_before = [int(CHECK_OK_RE.match(x).group(1)) for _, x in lines[:boundary] if CHECK_OK_RE.match(x)]
    oks_after = [int(CHECK_OK_RE.match(x).group(1)) for _, x in lines[boundary:] if CHECK_OK_RE.match(x)]
    res["check_ok_before"] = oks_before[-1] if oks_before else None
    res["check_ok_after"] = oks_after[-1] if oks_after else None
    if before:
        res["last_before"] = before[-1][1]
    if after:
        res["first_after"] = after[0][1]
    pairs = list(zip(hb, hb[1:]))
    # a gap that began before the operation counts from its start: the rest is not its doing;
    # and the move is over a second after the guest's first heartbeat on the new side
    t_until = after[0][0] + AFTER_WINDOW_S if after else float("inf")
    gaps = [(b[0] - max(a[0], t_from)) for a, b in pairs if t_from <= b[0] <= t_until]
    if gaps:
        res["gap_ms"] = max(gaps) * 1000.0
    base = [(b[0] - a[0]) for a, b in pairs if t_from - 1.0 <= a[0] and b[0] < t_from]
    if base:
        res["baseline_gap_ms"] = max(base) * 1000.0
    pre = [(b[0] - max(a[0], t_from), max(a[0], t_from)) for a, b in zip(before, before[1:])
           if b[0] >= t_from]
    if pre:
        g, at = max(pre)
        res["gap_before_ms"], res["gap_before_at"] = g * 1000.0, at
    post = [b[0] - a[0] for a, b in zip(after, after[1:]) if b[0] <= after[0][0] + AFTER_WINDOW_S]
    if post:
        res["gap_after_ms"] = max(post) * 1000.0
    if before:
        res["t_last_before"] = before[-1][0]
    if after:
        res["t_first_after"] = after[0][0]
        # heartbeat lines the harness read in one go with the destination's first: the
        # guest prints at most one a tick, so the first was printed (k-1) ticks before
        # it arrived, at least (the console path or this reader was late)
        res["first_after_burst"] = sum(1 for h in after if h[0] == after[0][0])
    if before and after:
        res["switchover_gap_ms"] = (after[0][0] - max(before[-1][0], t_from)) * 1000.0
    if not before:
        res["reason"] = "no heartbeat on the source before the move"
    elif not after:
        res["reason"] = "no heartbeat after the move"
    elif after[0][1] != before[-1][1] + 1:
        res["reason"] = (f"heartbeat seq did not continue: last before {before[-1][1]}, "
                         f"first after {after[0][1]}")
    elif any(b[1] != a[1] + 1 for a, b in zip(after, after[1:])):
        res["reason"] = "heartbeat seq not consecutive after the move"
    elif len(after) < settle_hb:
        res["reason"] = f"only {len(after)} heartbeats after the move"
    elif res["check_fail"]:
        res["reason"] = f"abcheck failed: {res['check_fail']}"
    elif res["check_ok_before"] is not None and (res["check_ok_after"] is None or
                                                  res["check_ok_after"] <= res["check_ok_before"]):
        res["reason"] = (f"abcheck did not continue: last pass before {res['check_ok_before']}, "
                         f"after {res['check_ok_after']}")
    elif res["disk_fail"]:
        res["reason"] = f"disk check failed: {res['disk_fail']}"
    elif res["disk_ok_before"] is not None and (res["disk_ok_after"] is None or
                                                 res["disk_ok_after"] <= res["disk_ok_before"]):
        res["reason"] = (f"disk passes did not continue: last before {res['disk_ok_before']}, "
                         f"after {res['disk_ok_after']}")
    else:
        res["ok"] = True
    return res
