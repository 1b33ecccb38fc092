"""Resident memory of a VMM process, read from /proc.

VmHWM (peak resident set) only grows, so the last value read before the
process exits is its peak; a sampler thread reads it every 50 ms because a
migration source may exit on its own."""
import threading

GUEST_MAP_MIN = 128 << 20   # mappings this large are taken to be guest RAM


def read_status(pid):
    """{'VmHWM': bytes, 'VmRSS':..., 'RssAnon':..., 'RssFile':..., 'RssShmem':...} or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            text = f.read()
    except OSError:
        return None
    out = {}
    for line in text.splitlines():
        k, _, v = line.partition(":")
        if k in ("VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem"):
            out[k] = int(v.split()[0]) * 1024
    return out or None


def guest_resident(pid, min_size=GUEST_MAP_MIN):
    """Resident bytes in the process's large mappings (guest RAM), from smaps.

    Both godwit and QEMU map guest RAM as one or a few large regions; VMM heap,
    stacks and libraries are far smaller than GUEST_MAP_MIN."""
    try:
        with open(f"/proc/{pid}/smaps") as f:
            text = f.read()
    except OSError:
        return None
    total = 0
    size = 0
    for line in text.splitlines():
        first = line.split(None, 1)[0] if line else ""
        if "-" in first and ":" not in first:
            lo, hi = first.split("-")
            try:
                size = int(hi, 16) - int(lo, 16)
            except ValueError:
                size = 0
        elif first == "Rss:" and size >= min_size:
            total += int(line.split()[1]) * 1024
    return total


class MemSampler:
    """Keeps the last /proc/PID/status read of each watched pid."""

    def __init__(self, interval=0.05):
        self.interval = interval
        self.last = {}
        self.pids = set()
        self.stop_ev = threading.Event()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._loop, daemon=True, name="memsampler")
        self.thread.start()

    def watch(self, pid):
        with self.lock:
            self.pids.add(pid)

    def unwatch(self, pid):
        with self.lock:
            self.pids.discard(pid)

    def sample(self, pid):
        st = read_status(pid)
        if st:
            with self.lock:
                self.last[pid] = st
        return self.peek(pid)

    def peek(self, pid):
        with self.lock:
            return dict(self.last.get(pid) or {})

    def _loop(self):
        while not self.stop_ev.wait(self.interval):
            with self.lock:
                pids = list(self.pids)
            for pid in pids:
                self.sample(pid)

    def stop(self):
        self.stop_ev.set()
        self.thread.join(1.0)
