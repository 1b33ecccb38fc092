"""How each VMM is started, stopped, snapshotted and migrated.

Both drivers expose the same small interface so the scenario code (ops.py)
is shared: launch(), wait_listening(), stop(), snapshot(), migrate().  What a
driver measures comes back in a dict with the harness's own field names."""
import json
import os
import re
import shlex
import subprocess
import time

from .netns import ns_prefix
from .procmem import guest_resident
from .qmp import QMP, QMPError
from .serial import SerialCapture
from .util import kill_proc, log, one_line, parse_size, run, spawn

UNAVAILABLE_RE = re.compile(
    r"not (yet )?(implemented|supported|available)|unknown (sub)?command|unknown (option|flag)|"
    r"unrecognized|unrecognised|invalid option|no such (sub)?command|unsupported (command|option|operation)",
    re.I)


class Unavailable(Exception):
    """The VMM does not offer this operation (yet)."""


class RunFailed(Exception):
    """The operation was attempted and failed."""


def classify(msg):
    """Raise Unavailable or RunFailed for an error message from a VMM."""
    msg = one_line(msg or "no error text", 400)
    if UNAVAILABLE_RE.search(msg):
        raise Unavailable(msg)
    raise RunFailed(msg)


def tail_file(path, n=6):
    try:
        with open(path, errors="replace") as f:
            lines = [x.strip() for x in f.read().splitlines() if x.strip()]
        return " | ".join(lines[-n:])
    except OSError:
        return ""


class Instance:
    """One running VMM process."""

    def __init__(self, vmm, role, proc, serial, sock, ns, stderr_path, t_launch):
        self.vmm = vmm
        self.role = role
        self.proc = proc
        self.serial = serial
        self.sock = sock
        self.ns = ns
        self.stderr_path = stderr_path
        self.t_launch = t_launch
        self.qmp = None
        self.mem = {}        # last /proc status read
        self.guest_rss = None

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc.poll() is None

    def why_dead(self):
        rc = self.proc.poll()
        return f"{self.vmm} {self.role} exited (status {rc}): {tail_file(self.stderr_path)}"


class Driver:
    name = "?"

    def __init__(self, guest, tmpdir, sampler):
        self.guest = guest
        self.tmpdir = tmpdir
        self.sampler = sampler
        self.params = {}     # what the driver set, recorded with the results
        self.tls_dir = None  # x509 credentials (QEMU's layout) for a TLS migration
        self.disk_aio = None  # godwit: --disk aio= (None: its default)

    DISK_BYTES = 64 << 20

    def disk_path(self):
        return os.path.join(self.tmpdir, f"{self.name}-disk.img")

    def disk_reset(self, sc):
        """A fresh zeroed disk for a scenario with the disk workload (both VMMs get the same)."""
        if not sc.has_disk:
            return
        with open(self.disk_path(), "wb") as f:
            f.truncate(self.DISK_BYTES)

    def _spawn(self, argv, role, ns, logprefix):
        serial = SerialCapture(f"{self.name}-{role}", logprefix + f"-{role}.serial")
        stderr_path = logprefix + f"-{role}.stderr"
        with open(logprefix + f"-{role}.cmd", "w") as f:
            f.write(" ".join(_q(a) for a in argv) + "\n")
        errf = open(stderr_path, "w")
        t = time.monotonic()
        proc = spawn(argv, stdin=subprocess.DEVNULL, stdout=serial.child_fd(), stderr=errf,
                     start_new_session=True)
        errf.close()
        serial.start()
        self.sampler.watch(proc.pid)
        return proc, serial, stderr_path, t

    def final_memory(self, inst):
        """Read /proc just before the process goes away."""
        st = self.sampler.sample(inst.pid) if inst.alive() else self.sampler.peek(inst.pid)
        inst.mem = st or inst.mem
        return inst.mem

    def sample_guest_rss(self, inst):
        inst.guest_rss = guest_resident(inst.pid)
        self.final_memory(inst)
        return inst.guest_rss

    def reap(self, inst, timeout):
        try:
            inst.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log(f"{self.name} {inst.role} did not exit within {timeout}s; killing it")
            kill_proc(inst.proc)
        inst.serial.close()
        kill_proc(inst.proc)
        self.sampler.unwatch(inst.pid)

    def kill(self, inst):
        if inst is None:
            return
        self.final_memory(inst)
        kill_proc(inst.proc, grace=1.0)
        self.sampler.unwatch(inst.pid)
        inst.serial.close()
        if inst.qmp:
            inst.qmp.close()


def _fsync_file(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _wait_children_exited(pid, timeout):
    """Waits until every child process of pid has exited (a zombie has); RunFailed if not."""
    deadline = time.monotonic() + timeout
    while True:
        alive = []
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            return      # the parent is gone, so are its children's writes
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    kids = f.read().split()
            except OSError:
                continue
            for k in kids:
                try:
                    with open(f"/proc/{k}/stat") as f:
                        state = f.read().rsplit(")", 1)[1].split()[0]
                except (OSError, IndexError):
                    continue
                if state != "Z":
                    alive.append(k)
        if not alive:
            return
        if time.monotonic() > deadline:
            raise RunFailed(f"child processes {alive} of {pid} still running after {timeout}s")
        time.sleep(0.002)


def _q(a):
    return a if re.fullmatch(r"[\w@%+=:,./-]+", a) else "'" + a.replace("'", "'\\''") + "'"


# ---------------------------------------------------------------------------
class Godwit(Driver):
    name = "godwit"

    def __init__(self, binary, guest, tmpdir, sampler):
        super().__init__(guest, tmpdir, sampler)
        self.binary = binary

    def ctl(self, inst, sub, *args, timeout=30):
        return run([self.binary, sub, "--api-socket", inst.sock, *args], timeout=timeout)

    def status(self, inst, sub="status"):
        try:
            r = self.ctl(inst, sub, timeout=10)
        except subprocess.TimeoutExpired:
            return None
        if r.returncode != 0:
            return None
        try:
            return json.loads(r.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return None

    def launch(self, sc, role, ns, logprefix, incoming=None, restore=None, restore_mode=None):
        sock = os.path.join(self.tmpdir, f"gw-{role}.sock")
        if os.path.exists(sock):
            os.unlink(sock)
        argv = ns_prefix(ns) + [self.binary, "run", "--api-socket", sock, "--serial", "stdio",
                                "--name", f"bench-{role}"]
        if incoming:
            # the guest's size up front, as QEMU's destination gets -m: RAM registered early
            argv += ["--incoming", incoming, "--memory", sc["memory"]]
            if self.tls_dir:
                argv += ["--tls-dir", self.tls_dir]
            elif incoming.startswith("tcp:"):
                argv.append("--insecure")  # plaintext scenarios, between test namespaces
        elif restore:
            argv += ["--restore", restore]
            if restore_mode:
                argv += ["--restore-mode", restore_mode]
        else:
            argv += ["--memory", sc["memory"], "--cpus", sc["cpus"], "--kernel", self.guest,
                     "--cmdline", sc["workload"]]
            # a restored or incoming guest keeps its disks (CONFIG names the same file)
            if sc.has_disk:
                aio = f",aio={self.disk_aio}" if self.disk_aio else ""
                argv += ["--disk", f"path={self.disk_path()}{aio}"]
        proc, serial, errp, t = self._spawn(argv, role, ns, logprefix)
        return Instance(self.name, role, proc, serial, sock, ns, errp, t)

    def vcpu_tids(self, inst):
        return set()   # godwit names its vCPU threads vcpuN

    def disk_counters(self, inst):
        """The first disk's request counters (godwit status): ops, bytes, service ns."""
        st = self.status(inst) or {}
        d = (st.get("disks") or [None])[0]
        if not d:
            raise RunFailed(f"godwit status lists no disk: {one_line(json.dumps(st), 200)}")
        return {"ops": d["reads"] + d["writes"] + d["flushes"],
                "bytes": d["bytes_read"] + d["bytes_written"],
                "service_ns": d["service_us"] * 1000, "notifies": d.get("notifies"),
                "aio": d.get("aio")}

    def wait_api(self, inst, timeout=10.0, want_state=None):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not inst.alive():
                classify(inst.why_dead())
            if os.path.exists(inst.sock):
                st = self.status(inst)
                if st is not None and (want_state is None or st.get("state") == want_state):
                    return st
            time.sleep(0.01)
        raise RunFailed(f"godwit {inst.role}: control socket not ready within {timeout}s "
                        f"(want state {want_state}): {tail_file(inst.stderr_path)}")

    def wait_listening(self, inst, timeout=10.0):
        return self.wait_api(inst, timeout, want_state="incoming")

    def guest_resident_reported(self, inst):
        st = self.status(inst) or {}
        for k in ("guest_resident_bytes", "guest_resident", "resident_bytes", "guest_rss_bytes"):
            if isinstance(st.get(k), int):
                return st[k]
        return None

    def stop(self, inst, timeout=10.0):
        self.final_memory(inst)
        if inst.alive():
            r = self.ctl(inst, "stop", timeout=timeout)
            if r.returncode != 0 and inst.alive():
                log(f"godwit stop failed: {one_line(r.stderr)}")
        self.reap(inst, timeout)

    def snapshot(self, inst, snapdir):
        """godwit snapshot DIR --stop; returns {} with what godwit reported."""
        r = self.ctl(inst, "snapshot", snapdir, "--stop", timeout=600)
        t_synced = time.monotonic()     # the command returns once the snapshot is synced
        if r.returncode != 0:
            classify(f"godwit snapshot exit {r.returncode}: {r.stderr.strip() or r.stdout.strip()}")
        self.final_memory(inst)
        self.reap(inst, 30)
        # "... 1505 ms (guest paused 1496 ms), VM stopped": its own time, without the CLI's
        m = re.search(r"(\d+) ms \(guest paused", r.stdout)
        info = {"t_synced": t_synced}
        if m:
            info["vmm_total_ms"] = float(m.group(1))
        return info

    def migrate(self, src, dst, uri, sc, mode, samples):
        args = ["--mode", mode]
        if mode == "live" and sc.downtime is not None:
            args += ["--downtime-ms", str(sc.downtime)]
        if sc["bandwidth"] != "-":
            args += ["--bandwidth", sc["bandwidth"]]
        if mode == "live" and sc["on_stall"] != "-":
            args += ["--on-stall", sc["on_stall"]]
        if self.tls_dir:
            args += ["--tls-dir", self.tls_dir]
        if sc["compress"] != "-":
            args += ["--compress", sc["compress"]]
        if sc["connections"] != "-":
            args += ["--connections", sc["connections"]]
        if sc["delta"] != "-":
            args += ["--delta", sc["delta"]]
        self.params = {"godwit migrate": " ".join(args + [uri])}
        argv = [self.binary, "migrate", "--api-socket", src.sock, "--json", *args, uri]
        t0 = time.monotonic()
        p = spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                  stdin=subprocess.DEVNULL)
        last = None
        deadline = t0 + migrate_timeout(sc)
        try:
            while p.poll() is None:
                if time.monotonic() > deadline:
                    self.ctl(src, "migrate-cancel", timeout=10)
                    raise RunFailed(f"migration did not finish within {migrate_timeout(sc):.0f}s")
                st = self.status(src, "migrate-status") if src.alive() else None
                if st:
                    st["_t"] = time.monotonic() - t0
                    samples.append(st)
                    last = st
                self.final_memory(src)
                time.sleep(0.05)
            out, err = p.communicate(timeout=10)
        finally:
            kill_proc(p)
        t_done = time.monotonic()
        if p.returncode != 0:
            classify(f"godwit migrate exit {p.returncode}: {err.strip() or out.strip()}")
        # the source exits after COMMIT: its final status is what --json printed; the
        # destination keeps the figures of the handover
        final = dict(last or {})
        try:
            done = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
        except ValueError:
            done = {}
        if isinstance(done, dict):
            final.update(done)
        dst_st = self.status(dst, "migrate-status") or {}
        # each side's steps (CLOCK_REALTIME us): the destination's must not hide the source's
        src_tl = final.get("timeline_unix_us")
        dst_tl = dst_st.get("timeline_unix_us")
        final.update({k: v for k, v in dst_st.items() if v is not None})
        if isinstance(src_tl, dict):   # kept in the samples' log too
            final["timeline_src_unix_us"] = src_tl
        final["_t"] = t_done - t0
        samples.append(final)
        # per-round details: the source's last list of them (the destination has none)
        per_round = next((s["rounds"] for s in reversed(samples)
                          if isinstance(s.get("rounds"), list) and s["rounds"]), [])
        rounds = len(per_round) if per_round else _num(final, "rounds")
        if rounds is None and mode == "live" and _num(final, "round") is not None:
            rounds = _num(final, "round") + 1       # 'round' counts from 0
        throttle = [_num(s, "throttle_pct", "throttle", "throttle_percent") or 0 for s in samples]
        throttle += [_num(r, "throttle_pct") or 0 for r in per_round if isinstance(r, dict)]
        downtime = _num(final, "downtime_ms")
        if downtime is None and _num(final, "downtime_us") is not None:
            downtime = _num(final, "downtime_us") / 1000
        # the estimate that decided the last round: its measured parts (docs/migration-protocol.md)
        est = next((s["downtime_estimate"] for s in reversed(samples)
                    if isinstance(s.get("downtime_estimate"), dict)), None)
        est_ms = None
        if est:
            est_ms = ((_num(est, "dirty_sync_us") or 0) + (_num(est, "transfer_us") or 0)
                      + 2 * (_num(est, "rtt_us") or 0)) / 1000
        lat = {k: _num(final, f"fault_latency_{k}_us") for k in ("median", "max")}
        return {
            "pages_requested": _num(final, "pages_requested") if mode == "postcopy" else None,
            "fault_latency_median_ms": lat["median"] / 1000 if lat["median"] is not None
            and mode == "postcopy" else None,
            "fault_latency_max_ms": lat["max"] / 1000 if lat["max"] is not None
            and mode == "postcopy" else None,
            "downtime_estimate_ms": est_ms,
            "timeline": {"src": src_tl if isinstance(src_tl, dict) else {},
                         "dst": dst_tl if isinstance(dst_tl, dict) else {}},
            "t_done": t_done,
            "vmm_total_ms": _num(final, "elapsed_ms", "total_ms", "total_time_ms"),
            "downtime_vmm_ms": downtime,
            "vmm_bytes": _num(final, "bytes_sent", "bytes", "sent_bytes"),
            "rounds": rounds if rounds is not None else (0 if mode == "warm" else None),
            "throttle_pct": max(throttle or [0]) or None,
        }


def _num(d, *keys):
    for k in keys:
        v = d.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return v
    return None


def migrate_timeout(sc):
    """Generous bound on one migration: 10x the memory over a slow rate, at least 60 s."""
    rate = (sc.link_bits or 8e9) / 8
    return max(60.0, 10 * sc.memory_bytes / rate)


# ---------------------------------------------------------------------------
QEMU_UNLIMITED = 1 << 40      # bytes/s: QEMU's max-bandwidth "as fast as it goes"


class Qemu(Driver):
    name = "qemu"

    def __init__(self, binary, guest, tmpdir, sampler, machine):
        super().__init__(guest, tmpdir, sampler)
        self.binary = binary
        self.machine = machine

    def argv(self, sc, sock):
        return [self.binary, "-accel", "kvm", "-cpu", "host,-arch-capabilities",
                "-M", self.machine, "-m", sc["memory"], "-smp", sc["cpus"],
                "-display", "none", "-nodefaults", "-serial", "stdio",
                "-kernel", self.guest, "-append", sc["workload"],
                "-qmp", f"unix:{sock},server=on,wait=off"]

    def launch(self, sc, role, ns, logprefix, incoming=None, restore=None, restore_mode=None):
        sock = os.path.join(self.tmpdir, f"qm-{role}.qmp")
        if os.path.exists(sock):
            os.unlink(sock)
        argv = ns_prefix(ns) + self.argv(sc, sock)
        if sc.has_disk:
            if not self.machine.startswith("microvm"):
                raise Unavailable(f"the guest kit's disk driver is virtio-mmio: QEMU needs "
                                  f"-M microvm, not {self.machine}")
            argv += ["-drive", f"file={self.disk_path()},if=none,id=d0,format=raw",
                     "-device", "virtio-blk-device,drive=d0"]
            # microvm announces virtio-mmio devices on the command line only without ACPI
            m = argv.index("-M") + 1
            if "acpi=" not in argv[m]:
                argv[m] += ",acpi=off"
        multifd = self._multifd(sc)
        if self.tls_dir and (incoming or role == "src"):
            # the same files as godwit's: QEMU's x509 layout, mutual on the destination
            end = "server,verify-peer=on" if incoming else "client"
            argv += ["-object", f"tls-creds-x509,id=tls0,dir={self.tls_dir},endpoint={end}"]
        if incoming:
            argv += ["-incoming", "defer"]
        elif restore:
            argv += ["-incoming", f"exec:cat {shlex.quote(os.path.join(restore, 'qemu.state'))}"]
        proc, serial, errp, t = self._spawn(argv, role, ns, logprefix)
        inst = Instance(self.name, role, proc, serial, sock, ns, errp, t)
        try:
            inst.qmp = QMP(sock).connect(wait=30)
            if incoming:
                if self.tls_dir:
                    inst.qmp.cmd("migrate-set-parameters", **{"tls-creds": "tls0"})
                if sc["op"] == "postcopy-migrate":
                    # both sides must have it before the stream starts
                    inst.qmp.cmd("migrate-set-capabilities", capabilities=[
                        {"capability": "postcopy-ram", "state": True}])
                if multifd:  # both sides: the destination must expect the same channels
                    self._set_params(inst, *multifd)
                inst.qmp.cmd("migrate-incoming", uri=incoming)
        except (QMPError, OSError) as e:
            if not inst.alive():
                raise RunFailed(inst.why_dead()) from e
            self.kill(inst)
            raise RunFailed(f"qemu {role}: {e}") from e
        return inst

    def wait_listening(self, inst, timeout=10.0):
        return inst.qmp.cmd("query-status")

    def vcpu_tids(self, inst):
        return {c["thread-id"] for c in inst.qmp.cmd("query-cpus-fast")}

    def disk_counters(self, inst):
        """The disk's block-layer accounting (query-blockstats): ops, bytes, and the time
        from a request's submission to its completion, summed."""
        devs = inst.qmp.cmd("query-blockstats")
        if not devs:
            raise RunFailed("qemu query-blockstats lists no disk")
        s = devs[0]["stats"]
        return {"ops": s["rd_operations"] + s["wr_operations"] + s["flush_operations"],
                "bytes": s["rd_bytes"] + s["wr_bytes"],
                "service_ns": s["rd_total_time_ns"] + s["wr_total_time_ns"]
                + s["flush_total_time_ns"], "aio": "qemu default (threads)"}

    def guest_resident_reported(self, inst):
        return None

    def stop(self, inst, timeout=10.0):
        self.final_memory(inst)
        if inst.alive() and inst.qmp:
            try:
                inst.qmp.cmd("quit")
            except (QMPError, OSError):
                pass
        if inst.qmp:
            inst.qmp.close()
        self.reap(inst, timeout)

    @staticmethod
    def _multifd(sc):
        """QEMU's peer of godwit's --compress/--connections: multifd with as many channels,
        zstd at the same level; (params, caps), or None for the plain stream."""
        comp = sc["compress"]
        if comp.startswith("auto"):
            raise Unavailable("QEMU has no automatic choice of compression (compress auto)")
        zstd = comp.startswith("zstd")
        if not zstd and sc.nconnections == 1:
            return None
        params = {"multifd-channels": sc.nconnections,
                  "multifd-compression": "zstd" if zstd else "none"}
        if zstd:
            params["multifd-zstd-level"] = int(comp.partition(":")[2] or 1)
        return params, {"multifd": True}

    def _set_params(self, inst, params, caps):
        if caps:
            inst.qmp.cmd("migrate-set-capabilities",
                         capabilities=[{"capability": k, "state": v} for k, v in caps.items()])
        inst.qmp.cmd("migrate-set-parameters", **params)
        self.params = {"capabilities": dict(caps), "parameters": dict(params)}

    def _wait_migration(self, inst, timeout, samples=None, t0=None):
        deadline = time.monotonic() + timeout
        while True:
            r = inst.qmp.cmd("query-migrate")
            st = r.get("status")
            if samples is not None and st in ("active", "device", "postcopy-active", "completed"):
                r2 = dict(r)
                r2["_t"] = time.monotonic() - t0
                samples.append(r2)
            if st == "completed":
                return r
            if st in ("failed", "cancelled"):
                raise RunFailed(f"qemu migration {st}: {r.get('error-desc', '')}")
            if time.monotonic() > deadline:
                inst.qmp.cmd("migrate_cancel")
                raise RunFailed(f"qemu migration did not finish within {timeout:.0f}s")
            self.final_memory(inst)
            time.sleep(0.05 if samples is not None else 0.002)

    def _resume_when_loaded(self, inst, timeout, src=None):
        """A stopped source's guest arrives paused: `cont` once the load finished."""
        deadline = time.monotonic() + timeout
        n = 0
        while time.monotonic() < deadline:
            if not inst.alive():
                raise RunFailed(inst.why_dead())
            n += 1
            if src is not None and n % 50 == 0:
                r = src.qmp.cmd("query-migrate")
                if r.get("status") in ("failed", "cancelled"):
                    raise RunFailed(f"qemu migration {r['status']}: {r.get('error-desc', '')}")
            st = inst.qmp.cmd("query-status")
            if st.get("status") == "paused":
                inst.qmp.cmd("cont")
                return
            if st.get("status") == "running":
                return
            time.sleep(0.002)
        raise RunFailed(f"qemu {inst.role}: incoming state not loaded within {timeout:.0f}s")

    def snapshot(self, inst, snapdir):
        os.makedirs(snapdir, exist_ok=True)
        path = os.path.join(snapdir, "qemu.state")
        inst.qmp.cmd("stop")
        self._set_params(inst, {"max-bandwidth": QEMU_UNLIMITED}, {})
        self.params["stop, then migrate"] = f"exec:cat > {os.path.basename(path)} (then fsync)"
        inst.qmp.cmd("migrate", uri=f"exec:cat > {shlex.quote(path)}")
        r = self._wait_migration(inst, 600)
        # completed means handed to the pipe: the file is complete once the `cat` QEMU
        # started has exited, and durable once synced; QEMU's own exit is not part of it
        _wait_children_exited(inst.pid, 60)
        _fsync_file(path)
        t_synced = time.monotonic()
        self.stop(inst)
        return {"vmm_total_ms": r.get("total-time"), "t_synced": t_synced}

    def restore_started(self, inst, timeout):
        self._resume_when_loaded(inst, timeout)

    def _start_postcopy(self, src, timeout):
        """migrate-start-postcopy as soon as the first full pass is done (the second dirty
        bitmap sync), as godwit --mode postcopy switches."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = src.qmp.cmd("query-migrate")
            st = r.get("status")
            if st in ("failed", "cancelled"):
                raise RunFailed(f"qemu migration {st}: {r.get('error-desc', '')}")
            if st != "active" and st != "setup":
                return      # finished or switched already
            if r.get("ram", {}).get("dirty-sync-count", 0) >= 2:
                src.qmp.cmd("migrate-start-postcopy")
                return
            time.sleep(0.002)
        raise RunFailed(f"qemu: the first pass did not end within {timeout:.0f}s")

    def migrate(self, src, dst, uri, sc, mode, samples):
        bw = sc.bandwidth_bytes or ((sc.link_bits // 8) if sc.link_bits else QEMU_UNLIMITED)
        params = {"max-bandwidth": bw}
        if self.tls_dir:
            params["tls-creds"] = "tls0"  # tls-hostname defaults to the URI's host
        caps = {}
        multifd = self._multifd(sc)
        if multifd:
            params.update(multifd[0])
            caps.update(multifd[1])
        if sc["delta"].startswith("xbzrle"):
            # QEMU's XBZRLE, the source's capability, with the same cache size
            caps["xbzrle"] = True
            params["xbzrle-cache-size"] = parse_size(sc["delta"].partition(":")[2] or "64M")
        if mode == "live":
            params["downtime-limit"] = sc.downtime
            if sc["on_stall"] == "throttle":
                caps["auto-converge"] = True
        if mode == "postcopy":
            caps["postcopy-ram"] = True
            # never complete in pre-copy: like godwit --mode postcopy, switch after one pass
            params["downtime-limit"] = 1
            self.params["postcopy"] = ("migrate-start-postcopy once query-migrate's "
                                       "dirty-sync-count reaches 2 (the first pass is done)")
        self._set_params(src, params, caps)
        t0 = time.monotonic()
        if mode == "warm":
            src.qmp.cmd("stop")
            self.params["warm"] = "stop on the source, migrate, cont on the destination"
        src.qmp.cmd("migrate", uri=uri)
        if mode == "warm":
            # a stopped guest arrives paused: watch the destination and `cont` it as soon
            # as it has loaded (as libvirt does), not after noticing the source completed
            self._resume_when_loaded(dst, migrate_timeout(sc), src)
        if mode == "postcopy":
            self._start_postcopy(src, migrate_timeout(sc))
        r = self._wait_migration(src, migrate_timeout(sc), samples, t0)
        t_done = time.monotonic()
        self.final_memory(src)
        ram = r.get("ram", {})
        return {
            "pages_requested": ram.get("postcopy-requests") if mode == "postcopy" else None,
            "t_done": t_done,
            "vmm_total_ms": r.get("total-time"),
            "downtime_vmm_ms": r.get("downtime"),
            "vmm_bytes": ram.get("transferred"),
            "rounds": ram.get("dirty-sync-count"),
            "throttle_pct": max([s.get("cpu-throttle-percentage", 0) for s in samples] or [0]) or None,
        }


def _godwit_restore_started(self, inst, timeout):
    """godwit runs a restored guest at once (no --paused)."""
    return None


Godwit.restore_started = _godwit_restore_started
