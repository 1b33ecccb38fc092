#!/usr/bin/env python3
"""Post-copy between two hosts on a 1 Gbit/s link: abcheck guests whose working set the
link cannot send within the downtime target move with --mode postcopy and with the hybrid
policies (--postcopy-after N, --on-stall postcopy); the guest runs on the destination
while its last pages follow, heartbeats continue and every check passes; both sides report
the phase, the pages requested and remaining, and the fault latency. A link cut after the
switch pauses both sides (the source handed-over, never running the guest again) until
migrate --resume completes the move. A destination abusing the return path (requests out
of range, unaligned, a flood of duplicates) cannot harm the source. The source names the
dirty pages before it pauses (so the destination drops them outside the downtime), again
at the pause, and sends every page it named. A destination refuses a RANGES or a PAGES that
comes after MISSING (either would make a dropped page present, so post-copy would never
install it) by name, runs nothing, and the guest stays on the source."""
import json
import os
import socket
import struct
import threading
import time

import gwstate
import gwtest

ACCEPT, ROUND, DONE, READY, COMMIT, STARTED = 0x101, 0x103, 0x104, 0x105, 0x107, 0x108
PINGS_PER_ROUND = 4  # MIG_PINGS_PER_ROUND_MAX: a destination refuses more
PING, PONG, MISSING, REQUEST, COMPLETE = 0x10b, 0x10c, 0x10d, 0x10e, 0x10f
WINDOW = 2 << 20  # MIG_PC_WINDOW

AB = "workload=abcheck wss=64M"


def mstatus(vm):
    return json.loads(vm.ctl("migrate-status")[1])


def wait_state(vm, state, timeout=30):
    """The destination ends its side just after the source has seen COMPLETE."""
    deadline = time.monotonic() + timeout
    ms = mstatus(vm)
    while ms["state"] != state and time.monotonic() < deadline:
        time.sleep(0.1)
        ms = mstatus(vm)
    return ms


def move(env, hosts, name, port, opts, cpus=2, faults=False, tls=None):
    """tls: the destination's TLS options (the source's are in opts). Returns both sides'
    final migration status."""
    uri = f"tcp:{hosts.dst_ip}:{port}"
    src = gwtest.start_source(env, f"{name}-src", memory="256M", cpus=cpus, cmdline=AB,
                              netns=hosts.src)
    dst = gwtest.start_dest(env, f"{name}-dst", uri, netns=hosts.dst, tls=tls)
    src.wait_line(r"^check ok 2$", timeout=120)
    _, res, _ = gwtest.migrate(src, uri, *opts)
    assert src.wait_exit() == 0, "the source must exit 0 once post-copy completed"
    assert res["state"] == "completed" and res["phase"] == "postcopy", res
    assert res["pages_remaining"] == 0 and res["throttle_pct"] == 0, res
    ms = wait_state(dst, "completed")
    assert ms["state"] == "completed" and ms["incoming"] and ms["phase"] == "postcopy", ms
    assert ms["pages_remaining"] == 0 and res["fault_latency_max_us"] == \
        ms["fault_latency_max_us"], (res, ms)
    if faults:
        # the remainder trickles at the cap while the guest rewrites its whole working set
        # each second: it cannot go on without asking for pages
        assert res["pages_requested"] >= 1 and ms["pages_requested"] >= 1, (res, ms)
        assert 0 < ms["fault_latency_median_us"] <= ms["fault_latency_max_us"], ms
    print(f"{name}: {res['elapsed_ms']} ms, downtime {res['downtime_ms']:.1f} ms, "
          f"{ms['pages_requested']} pages requested, fault latency median "
          f"{ms['fault_latency_median_us']} us, max {ms['fault_latency_max_us']} us")
    gwtest.check_moved(src, dst, name, abcheck=True)
    dst.ctl("stop")
    assert dst.wait_exit() == 0
    return res, ms


def link_cut(env, hosts):
    """The link goes down after the switch: both sides pause and keep everything; once it
    is back, migrate --resume reconnects, the destination lists what it lacks, and the
    guest goes on with nothing lost."""
    uri = f"tcp:{hosts.dst_ip}:4449"
    src = gwtest.start_source(env, "cut-src", memory="256M", cmdline=AB, netns=hosts.src)
    dst = gwtest.start_dest(env, "cut-dst", uri, netns=hosts.dst)
    src.wait_line(r"^check ok 2$", timeout=120)
    # a slow remainder, so the cut lands while pages are still missing
    rc, err = [None], [None]

    def run():
        rc[0], _, err[0] = gwtest.migrate(src, uri, "--mode", "postcopy", "--bandwidth", "8M",
                                          check=False)
    t = threading.Thread(target=run)
    t.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        st = mstatus(src)
        if st["phase"] == "postcopy" and st["pages_remaining"] > 0:
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"never switched to post-copy: {st}")
    hosts.link(False)
    t.join(120)
    assert rc[0] != 0, "the migration cannot complete over a cut link"
    assert "will not run it" in err[0] and "--resume" in err[0], err[0]
    st = mstatus(src)
    assert st["state"] == "postcopy-paused" and st["pages_remaining"] > 0, st
    assert src.status()["state"] == "handed-over", src.status()
    rc2, _, _ = src.ctl("resume", check=False)
    assert rc2 != 0, "a source that handed over must never run the guest again"
    ms = wait_state(dst, "postcopy-paused", 60)
    assert ms["state"] == "postcopy-paused" and ms["pages_remaining"] > 0, ms
    # a resume that cannot reach the destination leaves both paused as they were
    rc3, _, err3 = gwtest.migrate(src, uri, "--resume", check=False)
    assert rc3 != 0 and mstatus(src)["state"] == "postcopy-paused", err3
    hosts.link(True)
    _, res, _ = gwtest.migrate(src, uri, "--resume")
    assert res["state"] == "completed" and res["pages_remaining"] == 0, res
    assert src.wait_exit() == 0
    ms = wait_state(dst, "completed")
    assert ms["state"] == "completed" and ms["pages_remaining"] == 0, ms
    gwtest.check_moved(src, dst, "link cut and resumed", abcheck=True)
    dst.ctl("stop")
    assert dst.wait_exit() == 0


def peer_death(env, hosts):
    """The source dies after the switch: the destination says plainly that the guest is
    lost. The destination dies: the source says it has all memory but not the latest vCPU
    state, and never runs the guest."""
    for port, victim in ((4450, "source"), (4451, "destination")):
        uri = f"tcp:{hosts.dst_ip}:{port}"
        src = gwtest.start_source(env, f"die-{victim}-src", memory="128M",
                                  cmdline="workload=abcheck wss=32M", netns=hosts.src)
        dst = gwtest.start_dest(env, f"die-{victim}-dst", uri, netns=hosts.dst)
        src.wait_line(r"^check ok 1$", timeout=120)
        out = {}
        t = threading.Thread(target=lambda: out.update(zip(("rc", "res", "err"), gwtest.migrate(
            src, uri, "--mode", "postcopy", "--bandwidth", "4M", check=False))))
        t.start()
        deadline = time.monotonic() + 120
        st = mstatus(src)
        while not (st["phase"] == "postcopy" and st["pages_remaining"] > 0):
            assert time.monotonic() < deadline, f"never switched to post-copy: {st}"
            time.sleep(0.05)
            st = mstatus(src)
        if victim == "source":
            src.kill()
            t.join(60)
            ms = wait_state(dst, "postcopy-paused", 60)
            assert ms["state"] == "postcopy-paused" and ms["pages_remaining"] > 0, ms
            assert "the guest is lost" in ms["error"], ms
            dst.ctl("stop")
            dst.wait_exit(60)
        else:
            dst.kill()
            t.join(60)
            assert out["rc"] != 0 and "not its latest vCPU state" in out["err"] and \
                "will not run it" in out["err"], out
            assert mstatus(src)["state"] == "postcopy-paused"
            assert src.status()["state"] == "handed-over", src.status()
            assert src.ctl("resume", check=False)[0] != 0, "the stale guest must never run"
            src.ctl("stop")
            src.wait_exit()


def idle(env):
    """A guest that wrote nothing since round 0 (paused here) leaves nothing to fetch:
    --mode postcopy hands it over as pre-copy would, instead of waiting for pages that
    never come."""
    uri = "unix:" + env.path("idle.mig")
    src = gwtest.start_source(env, "idle-src")
    dst = gwtest.start_dest(env, "idle-dst", uri)
    src.wait_line(r"^hb 20$")
    src.ctl("pause")
    _, res, _ = gwtest.migrate(src, uri, "--mode", "postcopy")
    assert res["state"] == "completed" and res["phase"] == "precopy", res
    assert src.wait_exit() == 0
    if dst.status()["state"] == "paused":
        dst.ctl("resume")
    gwtest.check_moved(src, dst, "idle post-copy")
    dst.ctl("stop")
    assert dst.wait_exit() == 0


def bad_options(env):
    """Post-copy options that make no sense are refused, naming what was wrong; the guest
    keeps running."""
    src = gwtest.start_source(env, "opts-src")
    uri = "unix:" + env.path("nowhere")
    for opts, words in ((("--postcopy-after", "soon"), "--postcopy-after"),
                        (("--postcopy-after", "100001"), "--postcopy-after"),
                        (("--mode", "warm", "--postcopy-after", "2"), "live migration"),
                        (("--mode", "postcopy", "--on-stall", "postcopy"), "live migration"),
                        (("--resume",), "nothing to resume")):
        rc, _, err = gwtest.migrate(src, uri, *opts, check=False)
        assert rc != 0 and words in err, (opts, err)
    assert src.status()["state"] == "running"
    src.ctl("stop")
    assert src.wait_exit() == 0


rec = gwstate.record
recv_exact = gwstate.recv_exact


def fake_destination(ls, requests, result):
    """Plays a destination that takes the handover and then floods the return path with
    requests (out of range, unaligned, duplicates); records what the source sent."""
    c, _ = ls.accept()
    c.settimeout(60)
    recv_exact(c, 32)
    c.sendall(gwstate.header(kind=2))
    sender = None
    seen = []
    try:
        while True:
            typ, body, _ = gwstate.record_recv(c)
            seen.append(typ)
            if typ == gwstate.CONFIG:
                c.sendall(rec(ACCEPT, struct.pack("<I", 1)))
            elif typ == PING:
                if sender:
                    sender.join()   # post-copy's PINGs: one writer on the socket at a time
                c.sendall(rec(PONG, body))
            elif typ == DONE:
                c.sendall(rec(READY))
            elif typ == COMMIT:
                c.sendall(rec(STARTED, struct.pack("<Q", 1000)))
                sender = threading.Thread(target=lambda: c.sendall(b"".join(
                    rec(REQUEST, struct.pack("<Q", gpa)) for gpa in requests)))
                sender.start()
            elif typ == COMPLETE:
                sender.join()
                c.sendall(rec(COMPLETE, struct.pack("<QQ", 1000, 2000)))
                break
    except (EOFError, OSError) as e:
        result["error"] = repr(e)
    result["seen"] = seen
    c.close()


def window_destination(ls, src, result):
    """Plays a destination that, after the switch, reads the source's pages but holds back
    its PONGs: the background must stop within the window while a requested page still
    comes at once; then PONGs flow and the move completes. Its first PING before the pause
    is answered only once the source's guest rewrote its whole set after it, so that set is
    missing at the switch however little of it a loaded host let the guest rewrite during
    round 0."""
    c, _ = ls.accept()
    c.settimeout(60)
    recv_exact(c, 32)
    c.sendall(gwstate.header(kind=2))
    missing, seen, pings, started = set(), set(), [], False
    ahead = requested = None
    paused = waited = False

    def record():
        typ, length = struct.unpack_from("<IQ", recv_exact(c, 16))
        return typ, recv_exact(c, length + 4)[:-4]

    def pages(body):
        n = struct.unpack_from("<I", body)[0]
        return [struct.unpack_from("<Q", body, 8 + 12 * i)[0] // 4096 for i in range(n)]
    try:
        while True:
            typ, body = record()
            if typ == gwstate.CONFIG:
                c.sendall(rec(ACCEPT, struct.pack("<I", gwstate.PROTOCOL)))
            elif typ == PING and not started:
                if not paused and not waited:
                    # a pass that starts after this line rewrites every page of the set
                    i, _ = src.wait_line(r"^check ok \d+$", timeout=60, start=len(src.lines))
                    src.wait_line(r"^check ok \d+$", timeout=60, start=i + 1)
                    waited = True
                c.sendall(rec(PONG, body))
            elif typ == gwstate.SECTION:
                paused = True
            elif typ == MISSING:
                first, n = struct.unpack_from("<QQ", body)
                missing |= {first + i for i in range(n) if body[16 + i // 8] >> (i % 8) & 1}
            elif typ == DONE:
                c.sendall(rec(READY))
            elif typ == COMMIT:
                c.sendall(rec(STARTED, struct.pack("<Q", 1000)))
                started, ahead = True, 0
            elif typ == gwstate.PAGES and started:
                got = pages(body)
                seen |= set(got)
                if requested is None:
                    ahead += 16 + len(body) + 4
                    if ahead > WINDOW + 512 * 1024:
                        break       # the background ran past the window unacknowledged
                elif requested in got:
                    result["requested_came"] = True
                    for token in pings:
                        c.sendall(rec(PONG, token))
                    pings = None
            elif typ == PING and pings is None:
                c.sendall(rec(PONG, body))
            elif typ == PING:
                pings.append(body)
            elif typ == COMPLETE:
                c.sendall(rec(COMPLETE, struct.pack("<QQ", 1000, 2000)))
                break
            if started and requested is None and ahead > WINDOW // 2:
                # past half the window, ask for a page not sent yet: it must overtake
                c.settimeout(2)
                try:
                    while True:     # drain what the window lets through
                        typ, body = record()
                        if typ == gwstate.PAGES:
                            got = pages(body)
                            seen |= set(got)
                            ahead += 16 + len(body) + 4
                        elif typ == PING:
                            pings.append(body)
                        if ahead > WINDOW + 512 * 1024:
                            break
                except socket.timeout:
                    pass
                c.settimeout(60)
                if ahead > WINDOW + 512 * 1024:
                    break
                requested = min(missing - seen)
                c.sendall(rec(REQUEST, struct.pack("<Q", requested * 4096)))
    except (EOFError, OSError) as e:
        result["error"] = repr(e)
    result.update(ahead=ahead, missing=len(missing), seen=len(seen))
    c.close()


def fake_setup(env, name, cmdline="workload=abcheck wss=32M", ready=r"^check ok 1$"):
    """A 128 MiB source (by default rewriting 32 MiB), and a unix socket for a fake
    destination."""
    uri = f"unix:{env.path(name + '.mig')}"
    ls = socket.socket(socket.AF_UNIX)
    ls.bind(env.path(name + ".mig"))
    ls.listen(1)
    src = gwtest.start_source(env, f"{name}-src", memory="128M", cmdline=cmdline)
    src.wait_line(ready, timeout=120)
    return uri, ls, src


def window(env):
    """Post-copy's background stays within the window of what the destination acknowledged
    (PONG): a destination that reads but does not acknowledge gets at most the window, yet a
    page it asks for comes at once; acknowledged, the rest follows."""
    uri, ls, src = fake_setup(env, "window")
    result = {}
    t = threading.Thread(target=window_destination, args=(ls, src, result))
    t.start()
    rc, res, err = gwtest.migrate(src, uri, "--mode", "postcopy", check=False)
    t.join(60)
    # enough to run past the window (the guest rewrites its set while round 0 runs)
    assert result["missing"] * 4096 > WINDOW + (1 << 20), f"too few missing pages: {result}"
    assert result["ahead"] <= WINDOW + 512 * 1024, \
        f"the source sent {result['ahead']} bytes unacknowledged, window {WINDOW}: {result}"
    assert result.get("requested_came") and "error" not in result, result
    assert rc == 0 and res["state"] == "completed" and res["pages_remaining"] == 0, (err, res)
    assert src.wait_exit() == 0


def early_destination(ls, src, result):
    """Plays a destination and records the MISSING sets: those named before the source
    paused (the PING after them is answered only after looking at the source's guest) and
    the one with the state, then every page sent after the switch."""
    c, _ = ls.accept()
    c.settimeout(60)
    recv_exact(c, 32)
    c.sendall(gwstate.header(kind=2))
    early, final, seen = set(), set(), set()
    named, paused, started, pings = set(), False, False, 0
    result["states"] = []

    def pages(body):
        n = struct.unpack_from("<I", body)[0]
        return [struct.unpack_from("<Q", body, 8 + 12 * i)[0] // 4096 for i in range(n)]
    try:
        while True:
            typ, body, _ = gwstate.record_recv(c)
            if typ == gwstate.CONFIG:
                c.sendall(rec(ACCEPT, struct.pack("<I", 3)))
            elif typ == ROUND:
                pings = 0
            elif typ == PING and not started and pings == PINGS_PER_ROUND:
                raise OSError(f"more than {PINGS_PER_ROUND} PINGs in one round")
            elif typ == MISSING:
                first, n = struct.unpack_from("<QQ", body)
                named |= {first + i for i in range(n) if body[16 + i // 8] >> (i % 8) & 1}
            if typ == PING and not started:
                pings += 1
            if typ == PING and named and not paused:
                # an early pass: the guest must still be running on the source
                result["states"].append(src.status()["state"])
                time.sleep(0.3)     # a slow drop: the guest dirties more meanwhile
                early |= named
                named = set()
                c.sendall(rec(PONG, body))
            elif typ == PING:
                c.sendall(rec(PONG, body))
            elif typ == gwstate.SECTION and not paused:
                paused, final = True, named
            elif typ == DONE:
                c.sendall(rec(READY))
            elif typ == COMMIT:
                c.sendall(rec(STARTED, struct.pack("<Q", 1000)))
                started = True
            elif typ == gwstate.PAGES and started:
                seen |= set(pages(body))
            elif typ == COMPLETE:
                c.sendall(rec(COMPLETE, struct.pack("<QQ", 1000, 2000)))
                break
    except (EOFError, OSError) as e:
        result["error"] = repr(e)
    result.update(early=early, final=final, seen=seen)
    c.close()


def early_missing(env):
    """The source names the dirty pages while the guest still runs (the destination drops
    their stale copies outside the pause), then names every dirty page again at the pause;
    every page ever named is sent after the switch. However slowly the destination drops,
    the PINGs of these passes stay within what a destination accepts in one round."""
    # random writes over 96 MiB: each pass finds new pages, so the source uses every pass
    uri, ls, src = fake_setup(env, "early", "workload=dirty wss=96M rate=16384 pattern=random",
                              r"^hb 20$")
    result = {}
    t = threading.Thread(target=early_destination, args=(ls, src, result))
    t.start()
    rc, res, err = gwtest.migrate(src, uri, "--mode", "postcopy", check=False)
    t.join(60)
    early, final, seen = result["early"], result["final"], result["seen"]
    assert "error" not in result and rc == 0 and res["state"] == "completed", \
        (err, result.get("error"), result["states"], len(early), len(final), len(seen))
    assert early and result["states"] and all(st == "running" for st in result["states"]), \
        f"no MISSING before the pause ({len(early)} pages, states {result['states']})"
    assert early <= final, f"{len(early - final)} early pages not named again at the pause"
    assert final <= seen, f"{len(final - seen)} named pages never sent after the switch"
    assert src.wait_exit() == 0
    print(f"early MISSING: {len(early)} pages named while running, {len(final)} at the pause, "
          f"over {len(result['states'])} passes")


def bad_requests(env):
    """Requests outside guest memory, unaligned or repeated are refused or served once; the
    source neither crashes nor stalls, and completes."""
    uri = f"unix:{env.path('bad.mig')}"
    ls = socket.socket(socket.AF_UNIX)
    ls.bind(env.path("bad.mig"))
    ls.listen(1)
    src = gwtest.start_source(env, "bad-src", memory="64M", cmdline="workload=abcheck wss=8M")
    src.wait_line(r"^check ok 1$", timeout=120)
    bad = [1 << 40, 0x1001, 0xFFFFFFFFFFFFF000, 64 << 20]
    requests = bad + [0x200000] * 20000 + [0x201000 + i * 4096 for i in range(512)]
    result = {}
    t = threading.Thread(target=fake_destination, args=(ls, requests, result))
    t.start()
    _, res, _ = gwtest.migrate(src, uri, "--mode", "postcopy")
    t.join(60)
    assert "error" not in result, result
    assert res["state"] == "completed" and res["phase"] == "postcopy", res
    assert res["requests_refused"] == len(bad), res
    assert res["pages_requested"] == len(requests) - len(bad), res
    assert res["pages_remaining"] == 0 and res["fault_latency_max_us"] == 2, res
    assert src.wait_exit() == 0


def after_missing(env, hosts, what):
    """RANGES (what "ranges") or the last PAGES record ("pages") again right after the first
    MISSING, injected on the wire. Faulting those ranges in would map fresh zero pages over
    the pages MISSING dropped, and a page written there would hold a pre-copy copy; either
    way post-copy then never installs the page (UFFDIO_COPY finds it present). The
    destination refuses it by name and exits having run nothing; the guest keeps running
    on the source."""
    src = gwtest.start_source(env, f"{what}-src", memory="64M",
                              cmdline="workload=abcheck wss=8M", netns=hosts.src)
    dst = gwtest.start_dest(env, f"{what}-dst", f"tcp:{hosts.dst_ip}:4444", netns=hosts.dst)
    src.wait_line(r"^check ok 1$", timeout=120)
    p = gwtest.proxy(hosts, f"{what}:missing")
    try:
        rc, _, err = gwtest.migrate(src, "tcp:127.0.0.1:5555", "--mode", "postcopy",
                                    check=False)
        assert p.stdout.readline().strip() == "injected", f"no MISSING went by: {err}"
    finally:
        p.kill()
        p.wait()
    assert rc != 0, f"migrate succeeded although {what} came after MISSING"
    gwtest.check_refused(dst, what, f"{what.upper()} after MISSING")
    gwtest.check_kept(src, what)
    src.ctl("stop")
    assert src.wait_exit() == 0


def test(env):
    if not os.path.exists("/dev/userfaultfd") and os.geteuid() != 0:
        print("SKIP: post-copy needs userfaultfd (root or /dev/userfaultfd)")
        raise SystemExit(77)
    os.environ["GODWIT_MIGRATION_IO_TIMEOUT_MS"] = "3000"
    idle(env)
    bad_options(env)
    window(env)
    early_missing(env)
    bad_requests(env)
    hosts = gwtest.Hosts(env, rate="1gbit")
    move(env, hosts, "pure1", 4441, ("--mode", "postcopy"), cpus=1)
    move(env, hosts, "pure2", 4442, ("--mode", "postcopy", "--bandwidth", "16M"), faults=True)
    # a 1 ms target never converges while abcheck writes: the policy decides the switch
    res, _ = move(env, hosts, "after2", 4443, ("--postcopy-after", "2", "--downtime-ms", "1"))
    assert len(res["rounds"]) == 2, res["rounds"]
    # capped below the guest's write rate, the second round finds as much dirty as the first:
    # stalled, it switches instead of throttling
    res, _ = move(env, hosts, "stall", 4444, ("--on-stall", "postcopy", "--bandwidth", "16M"),
               faults=True)
    assert len(res["rounds"]) >= 2, res["rounds"]
    after_missing(env, hosts, "ranges")
    after_missing(env, hosts, "pages")
    link_cut(env, hosts)
    peer_death(env, hosts)


if __name__ == "__main__":  # test_postcopy_tls.py imports the moves
    gwtest.main(test)
