"""The machine's limits, measured in the same run as the scenarios."""
import errno
import mmap
import os
import re
import shutil
import time

from .netns import ns_prefix
from .util import log, one_line, run, spawn, kill_proc
import subprocess

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIMITS_C = os.path.join(HERE, "tools", "limits.c")


def build_tool(outdir):
    """Compile tools/limits.c with the system C compiler; returns its path or None."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        return None
    exe = os.path.join(outdir, "limits")
    r = run([cc, "-O2", "-o", exe, LIMITS_C], timeout=120)
    if r.returncode != 0:
        log(f"cannot compile {LIMITS_C}: {one_line(r.stderr)}")
        return None
    return exe


def _kv(text):
    return {k: float(v) for k, v in re.findall(r"(\w+)=([0-9.]+)", text)}


def memcpy_bw(tool, quick):
    r = run([tool, "memcpy", "128" if quick else "256", "0.5" if quick else "1.5"], timeout=60)
    return _kv(r.stdout).get("memcpy_bytes_per_s")


def populate_bw(tool, kind, quick):
    r = run([tool, "populate", "256" if quick else "1024", kind], timeout=120)
    return _kv(r.stdout).get(f"populate_{kind}_bytes_per_s")


def tcp_bw(tool, src_ns, dst_ns, addr, seconds, port=47001):
    """Throughput of one TCP stream from src_ns to addr (in dst_ns), bytes/s."""
    recv = spawn(ns_prefix(dst_ns) + [tool, "recv", addr, str(port)],
                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = recv.stdout.readline()
        if "listening" not in line:
            return None
        s = run(ns_prefix(src_ns) + [tool, "send", addr, str(port), str(seconds)],
                timeout=seconds + 30)
        out, _ = recv.communicate(timeout=30)
        v = _kv(out).get("recv_bytes_per_s")
        if v is None:
            v = _kv(s.stdout).get("send_bytes_per_s")
        return v
    finally:
        kill_proc(recv)


def disk_write_bw(directory, quick, flag="conv=fsync"):
    """Sequential write ending with an fsync (dd conv=fsync), plus flag (oflag=direct: the
    disk's own rate, the yardstick of O_DIRECT snapshot writes), bytes/s."""
    path = os.path.join(directory, "dd-limit.tmp")
    count = 256 if quick else 1024
    flags = ["conv=fsync"] + ([flag] if flag != "conv=fsync" else [])
    t0 = time.monotonic()
    r = run(["dd", "if=/dev/zero", f"of={path}", "bs=1M", f"count={count}", *flags],
            timeout=600)
    t = time.monotonic() - t0
    try:
        os.unlink(path)
    except OSError:
        pass
    if r.returncode != 0:
        log(f"dd failed: {one_line(r.stderr)}")
        return None
    return count * (1 << 20) / t


PROBE_FILE = "disk-probe.tmp"
PROBE_BLOCK = 1 << 20
PROBE_PAGE = 4096


def disk_direct_probe(directory, nbytes):
    """The disk's own write rate beside a snapshot: nbytes (rounded up to whole 4 KiB pages)
    of non-zero data into a new file in directory, with O_DIRECT in 1 MiB writes (as dd
    bs=1M oflag=direct), then fsync of the file and of the directory, as a snapshot's memory
    is written and synced. The data are random, so nothing below the file system can skip or
    shrink them. A file system that refuses O_DIRECT gets buffered writes, as godwit's
    writer does. Returns {bytes, seconds, bytes_per_s, direct}, or None (nothing to write,
    or the probe failed; logged)."""
    try:
        nbytes = int(nbytes)
    except (TypeError, ValueError):
        return None
    if nbytes <= 0:
        return None
    nbytes = -(-nbytes // PROBE_PAGE) * PROBE_PAGE
    path = os.path.join(directory, PROBE_FILE)
    buf = mmap.mmap(-1, PROBE_BLOCK)    # page-aligned, as O_DIRECT wants
    buf.write(os.urandom(PROBE_BLOCK))
    view = memoryview(buf)
    fd = -1
    direct = True
    try:
        t0 = time.monotonic()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o600)
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            direct = False
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        done = 0
        while done < nbytes:
            n = min(PROBE_BLOCK, nbytes - done)
            try:
                w = os.write(fd, view[:n])
            except OSError as e:
                if e.errno != errno.EINVAL or not direct or done:
                    raise
                # O_DIRECT opened but refused on write: the page cache, from the start
                os.close(fd)
                fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
                direct = False
                continue
            if w <= 0:
                raise OSError(errno.EIO, f"write returned {w}")
            done += w
        os.fsync(fd)
        os.close(fd)
        fd = -1
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        t = time.monotonic() - t0
    except OSError as e:
        log(f"disk probe in {directory}: {e}")
        return None
    finally:
        if fd >= 0:
            os.close(fd)
        try:
            os.unlink(path)
        except OSError:
            pass
        view.release()
        buf.close()
    return {"bytes": nbytes, "seconds": t, "bytes_per_s": nbytes / t if t > 0 else None,
            "direct": direct}


def measure_disk(lim, notes, resdir, quick):
    """The disk's write rates into lim and notes, at the start of the run."""
    lim["disk_write"] = disk_write_bw(resdir, quick)
    notes["disk_write"] = f"dd bs=1M conv=fsync into {resdir}"
    lim["disk_write_direct"] = disk_write_bw(resdir, quick, "oflag=direct")
    notes["disk_write_direct"] = f"dd bs=1M oflag=direct conv=fsync into {resdir}"


def measure(net, links, resdir, tooldir, quick):
    """Returns {name: value (bytes/s), 'notes': {...}}."""
    lim = {}
    notes = {}
    tool = build_tool(tooldir)
    if tool:
        lim["memcpy"] = memcpy_bw(tool, quick)
        for kind in ("anon", "memfd", "thp"):
            lim[f"populate_{kind}"] = populate_bw(tool, kind, quick)
        secs = 1.0 if quick else 3.0
        if net is not None:
            for link in links:
                net.shape(link)
                src, dst, addr, _, _ = net.endpoints(link)
                lim[f"link_{link}"] = tcp_bw(tool, src, dst, addr, secs)
                notes[f"link_{link}"] = net.tc_desc(link)
    else:
        notes["tool"] = "no C compiler: memory and network limits not measured"
    measure_disk(lim, notes, resdir, quick)
    for k, v in lim.items():
        if v:
            log(f"limit {k}: {v / (1 << 20):.0f} MiB/s ({v * 8 / 1e9:.2f} Gbit/s)")
    return lim, notes
