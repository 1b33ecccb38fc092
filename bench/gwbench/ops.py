"""One run of one scenario on one VMM: the shared choreography of each operation.

Each function returns a row (dict of schema.COLUMNS fields); it raises
Unavailable or RunFailed (drivers.py) when the operation cannot be measured,
and the caller turns that into a failed/unavailable row."""
import os
import shutil
import subprocess
import time

from . import netops
from .drivers import RunFailed
from .serial import (HB_RE, READY_RE, CHECK_OK_RE, DISK_FAIL_RE, DISK_OK_RE, analyse_move,
                     merge_streams)
from .util import log

FIRST_LINE_TIMEOUT = 60.0


class Ctx:
    """What a run needs besides the scenario and the driver."""

    def __init__(self, net, workdir, logprefix, port):
        self.net = net
        self.workdir = workdir
        self.logprefix = logprefix
        self.port = port
        self.samples = []


def _first_line(inst, timeout=FIRST_LINE_TIMEOUT):
    r = inst.serial.wait_for(lambda t, x: True, timeout)
    if r is None:
        raise RunFailed(inst.why_dead() if not inst.alive()
                        else f"no serial output within {timeout:.0f}s")
    return r


def _first_hb(inst, timeout, start=0):
    r = inst.serial.wait_for(lambda t, x: HB_RE.match(x) is not None, timeout, start)
    if r is None:
        raise RunFailed(inst.why_dead() if not inst.alive()
                        else f"no heartbeat within {timeout:.0f}s; last lines: {inst.serial.tail(3)}")
    lines, _, _ = inst.serial.snapshot()
    for _, text in lines[:r[0]]:
        if text.startswith("error:"):   # the guest kit refused part of its command line
            raise RunFailed(f"guest: {text}")
    return r


def _warmup(inst, sc):
    """Let the workload run: abcheck until a verified pass, dirty until the set was touched."""
    if sc.kind == "abcheck":
        pages = max(sc.wss_bytes // 4096, 1)
        timeout = 20 + 3 * pages / 20000
        r = inst.serial.wait_for(lambda t, x: CHECK_OK_RE.match(x) is not None, timeout)
        if r is None:
            raise RunFailed(inst.why_dead() if not inst.alive()
                            else f"abcheck printed no 'check ok' within {timeout:.0f}s "
                                 f"(last lines {inst.serial.tail(3)})")
        time.sleep(0.2)
    else:
        time.sleep(sc.warmup())
    if not inst.alive():
        raise RunFailed(inst.why_dead())


def _settle(inst, sc, start_index, hb=50):
    """After a move: enough heartbeats, and for abcheck or the disk workload a verified pass,
    on the new side."""
    r = inst.serial.wait_heartbeats(hb, 10 + hb / 100, start_index)
    if r is None:
        raise RunFailed(inst.why_dead() if not inst.alive()
                        else f"fewer than {hb} heartbeats after the move; last lines "
                             f"{inst.serial.tail(3)}")
    if sc.kind == "abcheck":
        pages = max(sc.wss_bytes // 4096, 1)
        timeout = 20 + 3 * pages / 20000
        r = inst.serial.wait_for(lambda t, x: CHECK_OK_RE.match(x) is not None or
                                 x.startswith("check fail"), timeout, start_index)
        if r is None:
            raise RunFailed(f"abcheck printed no 'check ok' after the move within {timeout:.0f}s")
    if sc.has_disk:
        r = inst.serial.wait_for(lambda t, x: DISK_OK_RE.match(x) is not None or
                                 DISK_FAIL_RE.match(x) is not None, 60, start_index)
        if r is None:
            raise RunFailed("the disk workload printed no 'disk ok' after the move within 60s")


def _mem_fields(row, prefix, mem):
    row[f"{prefix}_vmhwm_bytes"] = mem.get("VmHWM")
    if prefix == "src":
        row["rss_anon_bytes"] = mem.get("RssAnon")
        row["rss_file_bytes"] = mem.get("RssFile")
        row["rss_shmem_bytes"] = mem.get("RssShmem")


def _dir_size(path):
    """(allocated bytes, apparent bytes) of every file under path."""
    alloc = apparent = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                st = os.stat(os.path.join(root, f))
            except OSError:
                continue
            alloc += st.st_blocks * 512
            apparent += st.st_size
    return alloc, apparent


def _check_ready(inst, sc):
    lines, _, _ = inst.serial.snapshot()
    for _, text in lines[:5]:
        m = READY_RE.search(text)
        if m:
            if int(m.group(1)) != int(sc["cpus"]):
                raise RunFailed(f"guest reports cpus={m.group(1)}, expected {sc['cpus']}")
            return
    raise RunFailed(f"no 'godwit-guest ready' line; first lines {[x for _, x in lines[:3]]}")


# ---------------------------------------------------------------------------
def boot(drv, sc, ctx):
    row = {}
    drv.disk_reset(sc)
    inst = drv.launch(sc, "vm", None, ctx.logprefix)
    try:
        t_line, _ = _first_line(inst)[1:]
        row["boot_ms"] = (t_line - inst.t_launch) * 1000
        _, t_hb, _ = _first_hb(inst, 30)
        row["first_hb_ms"] = (t_hb - inst.t_launch) * 1000
        row["total_ms"] = row["boot_ms"]
        if inst.serial.wait_heartbeats(100, 15) is None:
            raise RunFailed(inst.why_dead() if not inst.alive() else "heartbeats stopped after boot")
        _check_ready(inst, sc)
        hb = [int(HB_RE.match(x).group(1)) for _, x in inst.serial.snapshot()[0] if HB_RE.match(x)]
        if any(b != a + 1 for a, b in zip(hb, hb[1:])):
            raise RunFailed("heartbeat seq not consecutive")
        guest = drv.guest_resident_reported(inst)
        row["guest_rss_source"] = "vmm" if guest is not None else "smaps"
        if guest is None:
            guest = drv.sample_guest_rss(inst)
        mem = drv.final_memory(inst)
        row["guest_rss_bytes"] = guest
        if guest is not None and mem.get("VmRSS") is not None:
            row["overhead_bytes"] = mem["VmRSS"] - guest
    finally:
        drv.stop(inst)
    _mem_fields(row, "src", inst.mem)
    return row


def snapshot_restore(drv, sc, ctx):
    row = {}
    snapdir = os.path.join(ctx.workdir, f"snap-{drv.name}")
    shutil.rmtree(snapdir, ignore_errors=True)
    src = rst = None
    drv.disk_reset(sc)
    try:
        src = drv.launch(sc, "src", None, ctx.logprefix)
        _first_hb(src, FIRST_LINE_TIMEOUT)
        _warmup(src, sc)
        t0 = time.monotonic()
        info = drv.snapshot(src, snapdir)
        t1 = time.monotonic()
        row["snapshot_ms"] = (t1 - t0) * 1000
        row["vmm_total_ms"] = info.get("vmm_total_ms")
        row["snapshot_bytes"], row["snapshot_apparent_bytes"] = _dir_size(snapdir)
        _mem_fields(row, "src", src.mem)
        rst = drv.launch(sc, "dst", None, ctx.logprefix, restore=snapdir,
                         restore_mode=sc["restore"])
        drv.restore_started(rst, 120)
        _, t_hb, _ = _first_hb(rst, 120)
        row["restore_ms"] = (t_hb - rst.t_launch) * 1000
        row["total_ms"] = row["snapshot_ms"] + row["restore_ms"]
        _settle(rst, sc, 0)
        lines, boundary = merge_streams(src.serial, rst.serial)
        _judge(row, analyse_move(lines, boundary, t0))
        drv.final_memory(rst)
        _mem_fields(row, "dst", rst.mem)
    finally:
        if src is not None and src.alive():
            drv.kill(src)
        if rst is not None:
            drv.stop(rst)
            _mem_fields(row, "dst", rst.mem)
        shutil.rmtree(snapdir, ignore_errors=True)
    return row


def _certs(ctx, addr):
    """Throwaway certificates (scripts/make-certs) naming addr, made once per address."""
    d = os.path.join(ctx.workdir, f"pki-{addr}")
    if not os.path.exists(os.path.join(d, "client-cert.pem")):
        tool = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
            os.path.abspath(__file__)))), "scripts", "make-certs")
        subprocess.run([tool, "--san", f"IP:{addr}", d], check=True, capture_output=True)
    return d


def migrate(drv, sc, ctx, mode):
    row = {}
    net = ctx.net
    net.shape(sc["link"])
    src_ns, dst_ns, addr, cns, cdev = net.endpoints(sc["link"])
    uri = f"tcp:{addr}:{ctx.port}"
    src = dst = None
    drv.disk_reset(sc)
    drv.tls_dir = _certs(ctx, addr) if sc["tls"] == "x509" else None
    try:
        # the destination first: it waits, and a godwit without --incoming says so at once
        dst = drv.launch(sc, "dst", dst_ns, ctx.logprefix, incoming=uri)
        drv.wait_listening(dst)
        src = drv.launch(sc, "src", src_ns, ctx.logprefix)
        _first_hb(src, FIRST_LINE_TIMEOUT)
        _warmup(src, sc)
        tx0 = net.tx_bytes(cns, cdev)
        t0 = time.monotonic()
        info = drv.migrate(src, dst, uri, sc, mode, ctx.samples)
        _, t_hb, _ = _first_hb(dst, 60)
        # total: until the guest runs on the destination (its first heartbeat there), so
        # neither VMM's figure depends on how often anyone polls for completion
        row["total_ms"] = (t_hb - t0) * 1000
        row["command_ms"] = (info["t_done"] - t0) * 1000
        tx1 = net.tx_bytes(cns, cdev)
        if tx0 is not None and tx1 is not None:
            row["wire_bytes"] = tx1 - tx0
        for k in ("vmm_total_ms", "downtime_vmm_ms", "downtime_estimate_ms", "vmm_bytes", "rounds",
                  "throttle_pct"):
            row[k] = info.get(k)
        _mem_fields(row, "src", src.mem)
        _settle(dst, sc, 0)
        lines, boundary = merge_streams(src.serial, dst.serial)
        _judge(row, analyse_move(lines, boundary, t0))
        drv.final_memory(dst)
        _mem_fields(row, "dst", dst.mem)
    finally:
        if src is not None:
            drv.stop(src)
            _mem_fields(row, "src", src.mem)
        if dst is not None:
            drv.stop(dst)
            _mem_fields(row, "dst", dst.mem)
        drv.tls_dir = None
    return row


def _judge(row, res):
    row["hb_last_before"] = res["last_before"]
    row["hb_first_after"] = res["first_after"]
    row["downtime_guest_ms"] = res["gap_ms"]
    row["switchover_gap_ms"] = res["switchover_gap_ms"]
    row["baseline_gap_ms"] = res["baseline_gap_ms"]
    row["check_ok_after"] = res["check_ok_after"]
    if not res["ok"]:
        raise RunFailed(res["reason"])


def run_op(drv, sc, ctx):
    op = sc["op"]
    if op == "boot":
        return boot(drv, sc, ctx)
    if op == "snapshot-restore":
        return snapshot_restore(drv, sc, ctx)
    if op == "warm-migrate":
        return migrate(drv, sc, ctx, "warm")
    if op == "live-migrate":
        return migrate(drv, sc, ctx, "live")
    if op in ("net-live", "net-rate"):
        return netops.run(drv, sc, ctx)
    raise ValueError(op)
