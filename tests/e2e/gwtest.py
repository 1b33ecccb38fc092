"""Helpers for end-to-end tests that drive the real godwit binary and the guest kit.

A test starts `godwit run` with the guest's serial console on a pipe, timestamps
every line as it arrives, and talks to the VM through the godwit client commands.
Failures raise AssertionError with the context needed to debug them.
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time


class TestEnv:
    """Paths from the command line (godwit binary, guest ELF) and a scratch directory."""

    def __init__(self):
        if len(sys.argv) < 3:
            sys.exit("usage: TEST GODWIT_BINARY GUEST_ELF")
        self.godwit = os.path.abspath(sys.argv[1])
        self.guest = os.path.abspath(sys.argv[2])
        self.tmp = tempfile.mkdtemp(prefix="gw-e2e-")
        self.procs = []

    def path(self, name):
        return os.path.join(self.tmp, name)

    def ctl(self, *args, timeout=30, check=True):
        """Runs a godwit client command; returns (rc, stdout, stderr)."""
        p = subprocess.run([self.godwit, *args], capture_output=True, text=True,
                           timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError(f"godwit {' '.join(args)} exited {p.returncode}: "
                                 f"{p.stderr.strip()}")
        return p.returncode, p.stdout, p.stderr

    def vm(self, name="vm", **kw):
        v = Vm(self, name, **kw)
        self.procs.append(v)
        return v

    def cleanup(self):
        for v in self.procs:
            v.kill()
        for h in getattr(self, "hosts", []):
            h.cleanup()
        shutil.rmtree(self.tmp, ignore_errors=True)


class Vm:
    """One `godwit run` process with its serial output captured line by line."""

    def __init__(self, env, name, memory="64M", cpus=1, cmdline="workload=idle",
                 extra=None, kernel=None, args=None, netns=None):
        self.env = env
        self.name = name
        self.sock = env.path(f"{name}.sock")
        self.lines = []          # (monotonic time, text)
        self.partial = ""        # an unterminated last line (output cut by a pause + exit)
        self.cond = threading.Condition()
        if args is None:
            args = ["run", "--memory", memory, "--cpus", str(cpus),
                    "--kernel", kernel or env.guest, "--cmdline", cmdline,
                    "--api-socket", self.sock, "--name", name]
        cmd = [env.godwit, *args, *(extra or [])]
        if netns:
            cmd = ["ip", "netns", "exec", netns, *cmd]
        self.stderr_path = env.path(f"{name}.stderr")
        self.stderr_file = open(self.stderr_path, "w")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=self.stderr_file)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        fd = self.proc.stdout.fileno()
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            t = time.monotonic()
            with self.cond:
                text = self.partial + chunk.decode(errors="replace")
                *full, self.partial = text.split("\n")
                for line in full:
                    self.lines.append((t, line.rstrip("\r")))
                self.cond.notify_all()

    def stderr(self):
        self.stderr_file.flush()
        with open(self.stderr_path) as f:
            return f.read()

    def wait_line(self, pattern, timeout=30, start=0, cpu_limit=None):
        """Waits for a serial line matching pattern at index >= start; returns (index, match).
        cpu_limit: also gives up once the VM's process has used that many CPU seconds, a
        bound on the guest's work that a loaded host stretches in wall time only."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        i = start
        with self.cond:
            while True:
                while i < len(self.lines):
                    m = rx.search(self.lines[i][1])
                    if m:
                        return i, m
                    i += 1
                left = deadline - time.monotonic()
                cpu = self.cpu_seconds() if cpu_limit is not None else 0
                if left <= 0 or (self.proc.poll() is not None and i >= len(self.lines)) or \
                        (cpu_limit is not None and cpu > cpu_limit):
                    tail = "\n".join(t for _, t in self.lines[-5:])
                    used = f", {cpu:.0f} of {cpu_limit} CPU s" if cpu_limit is not None else ""
                    raise AssertionError(
                        f"{self.name}: no line matching {pattern!r} within {timeout}s{used} "
                        f"(exit={self.proc.poll()}); last lines:\n{tail}\n"
                        f"stderr:\n{self.stderr()[-2000:]}")
                self.cond.wait(min(left, 0.2))

    def cpu_seconds(self):
        """CPU time (user and system) the VM's process has used so far; 0 once it is gone."""
        try:
            with open(f"/proc/{self.proc.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def wait_socket(self, timeout=10):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if os.path.exists(self.sock):
                try:
                    s = socket.socket(socket.AF_UNIX)
                    s.connect(self.sock)
                    s.close()
                    return
                except OSError:
                    pass
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited {self.proc.returncode}: "
                                     f"{self.stderr()[-2000:]}")
            time.sleep(0.02)
        raise AssertionError(f"{self.name}: api socket did not appear")

    def heartbeats(self, start=0, prefix=""):
        """Heartbeat seqs seen from line index start on. prefix: the unterminated last line
        of the VM this one continues (a guest paused mid-line finishes it here)."""
        out = []
        with self.cond:
            texts = [t for _, t in self.lines[start:]]
            if prefix and texts:
                texts[0] = prefix + texts[0]
            for text in texts:
                m = re.fullmatch(r"hb (\d+)", text)
                if m:
                    out.append(int(m.group(1)))
        return out

    def line_count(self):
        with self.cond:
            return len(self.lines)

    def ctl(self, cmd, *args, check=True, timeout=30):
        return self.env.ctl(cmd, "--api-socket", self.sock, *args, check=check,
                            timeout=timeout)

    def status(self, *args):
        _, out, _ = self.ctl("status", *args)
        return json.loads(out)

    def request(self, raw):
        """Sends raw bytes on the control socket; returns the first response line."""
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(10)
        s.connect(self.sock)
        s.sendall(raw)
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        s.close()
        return data.decode()

    def wait_exit(self, timeout=30):
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} did not exit within {timeout}s")
        self.reader.join(10)  # every line the process wrote is in self.lines
        return rc

    def kill(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self.stderr_file.close()


def check_seq_continuous(seqs, what):
    """Heartbeat seqs must increase by exactly one: no gap in numbering, no repeat, no restart."""
    assert seqs, f"{what}: no heartbeats"
    for a, b in zip(seqs, seqs[1:]):
        assert b == a + 1, f"{what}: heartbeat {b} after {a} (expected {a + 1})"


def main(test):
    """Runs test(env), cleans up, exits 0 on success and 1 with the message on failure."""
    env = TestEnv()
    try:
        test(env)
    except AssertionError as e:
        print(f"FAIL: {e}", file=sys.stderr)
        env.cleanup()
        sys.exit(1)
    except BaseException:
        env.cleanup()
        raise
    env.cleanup()
    print("PASS")


class Hosts:
    """Two test hosts: network namespaces joined by a veth pair, addresses inside them only."""

    def __init__(self, env, rate=None):
        tag = f"{os.getpid() % 100000}"
        self.src, self.dst = f"gwt{tag}s", f"gwt{tag}d"
        self.src_if, self.dst_if = f"gw{tag}s", f"gw{tag}d"
        net = 10 + os.getpid() % 240
        self.src_ip, self.dst_ip = f"10.77.{net}.1", f"10.77.{net}.2"
        self._run("ip", "netns", "add", self.src)
        self._run("ip", "netns", "add", self.dst)
        env.hosts = getattr(env, "hosts", []) + [self]
        self._run("ip", "link", "add", self.src_if, "type", "veth", "peer", "name", self.dst_if)
        for ns, ifname, ip in ((self.src, self.src_if, self.src_ip),
                               (self.dst, self.dst_if, self.dst_ip)):
            self._run("ip", "link", "set", ifname, "netns", ns)
            self._ns(ns, "ip", "addr", "add", f"{ip}/24", "dev", ifname)
            self._ns(ns, "ip", "link", "set", ifname, "up")
            self._ns(ns, "ip", "link", "set", "lo", "up")
            if rate:
                self._ns(ns, "tc", "qdisc", "add", "dev", ifname, "root", "tbf", "rate", rate,
                         "burst", "1mb", "latency", "50ms")

    @staticmethod
    def _run(*cmd):
        subprocess.run(cmd, check=True, capture_output=True)

    def _ns(self, ns, *cmd):
        self._run("ip", "netns", "exec", ns, *cmd)

    def link(self, up):
        self._ns(self.src, "ip", "link", "set", self.src_if, "up" if up else "down")

    def cleanup(self):
        for ns in (self.src, self.dst):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)



def start_source(env, name, memory="128M", cpus=1, cmdline="workload=idle", netns=None,
                 extra=None):
    vm = env.vm(name, memory=memory, cpus=cpus, cmdline=cmdline, netns=netns, extra=extra)
    vm.wait_line(r"^godwit-guest ready")
    vm.wait_socket()
    return vm


def start_dest(env, name, uri, netns=None, paused=False, extra=None, tls=None):
    """tls: the destination's TLS options (--tls-dir DIR ...); without them a tcp: listener
    is started --insecure (plaintext, between the test's own namespaces)."""
    args = ["run", "--incoming", uri, "--api-socket", env.path(f"{name}.sock"), "--name", name]
    if paused:
        args.append("--paused")
    if tls is not None:
        args += tls
    elif uri.startswith("tcp:"):
        args.append("--insecure")
    vm = env.vm(name, args=args + (extra or []), netns=netns)
    vm.wait_socket()
    return vm


def proxy(hosts, mode):
    """gwproxy.py in the source's namespace at 127.0.0.1:5555, forwarding to the destination's
    port 4444 and injecting a fault (MODE as gwproxy.py takes it)."""
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gwproxy.py")
    p = subprocess.Popen(["ip", "netns", "exec", hosts.src, sys.executable, script,
                          "127.0.0.1:5555", f"{hosts.dst_ip}:4444", mode],
                         stdout=subprocess.PIPE, text=True,
                         env=dict(os.environ, PYTHONPATH=os.path.dirname(script)))
    assert p.stdout.readline().strip() == "listening"
    return p


def fanproxy(hosts, mode):
    """gwfanproxy.py (several connections) in the source's namespace at 127.0.0.1:5555,
    forwarding each connection to the destination's port 4444 (MODE as it takes it)."""
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gwfanproxy.py")
    p = subprocess.Popen(["ip", "netns", "exec", hosts.src, sys.executable, script,
                          "127.0.0.1:5555", f"{hosts.dst_ip}:4444", mode],
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "listening"
    return p


def migrate(src, uri, *opts, check=True, timeout=300):
    """Runs godwit migrate --json; returns (rc, result dict or None, stderr)."""
    rc, out, err = src.ctl("migrate", "--json", *opts, uri, check=False, timeout=timeout)
    if check and rc != 0:
        raise AssertionError(f"migrate {uri} failed ({rc}): {err.strip()}\n"
                             f"source stderr: {src.stderr()[-1500:]}")
    return rc, (json.loads(out) if rc == 0 and out.strip() else None), err


def check_kept(src, what, started=True):
    """A move that failed left the guest on the source: the process lives, the guest writes
    new heartbeats and runs; with started, the source's move is failed or cancelled (not a
    move refused before it began)."""
    assert src.proc.poll() is None, f"{what}: the source exited {src.proc.returncode}: " \
                                    f"{src.stderr()[-3000:]}"
    n = src.line_count()
    src.wait_line(r"^hb \d+$", start=n, timeout=20)
    st = src.status()
    assert st["state"] == "running", f"{what}: source is {st['state']}"
    ms = json.loads(src.ctl("migrate-status")[1])
    assert not started or ms["state"] in ("failed", "cancelled"), f"{what}: {ms}"


def check_refused(dst, what, *needles):
    """The destination of a failed move exited non-zero without running the guest, its
    stderr naming each of needles."""
    rc = dst.wait_exit(60)
    assert rc not in (0, None), f"{what}: the destination exited {rc}"
    assert not dst.heartbeats(), f"{what}: the destination ran the guest"
    err = dst.stderr()
    for needle in needles:
        assert needle in err, f"{what}: {needle!r} not in {err[-1500:]}"


def check_moved(src, dst, what, abcheck=False):
    """The guest continued on dst: first heartbeat is the next seq, no restart, checks ok."""
    last = src.heartbeats()[-1]
    dst.wait_line(rf"^hb {last + 30}$", timeout=60)
    seqs = dst.heartbeats(prefix=src.partial)
    assert seqs[0] == last + 1, f"{what}: first heartbeat on the destination {seqs[0]}, " \
                                f"source's last {last}"
    check_seq_continuous(seqs, f"{what} (destination)")
    texts = [t for _, t in dst.lines]
    assert not any("ready" in t for t in texts), f"{what}: the guest restarted"
    if abcheck:
        oks = [int(t.split()[2]) for _, t in src.lines if t.startswith("check ok")]
        dst.wait_line(rf"^check ok {(oks[-1] if oks else 0) + 2}$", timeout=120)
        fails = [t for t in texts if t.startswith("check fail")]
        assert not fails, f"{what}: {fails[:3]}"
