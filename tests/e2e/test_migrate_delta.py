#!/usr/bin/env python3
"""migrate --delta xbzrle: live moves of the guest kit's dirty workload (content=mixed,
which rewrites an eighth of a page per write) with deltas on, over several rounds: the
guest continues (heartbeats with the next seq), the paused source's digest equals the
destination's, both sides count the same delta pages and bytes, and bytes were saved; with
a cache of 1 MiB (most pages evicted), with zstd after the deltas too, and over 2 and 4
connections (the extra ones carry pages and deltas, each connection's bytes counted alike
on both sides). abcheck (whole pages rewritten) passes its checks after the move. Refused
by name: deltas with warm or post-copy, a bad cache size; a hostile delta (a run past the
page) from the wire, on the first connection or on an extra one, fails the move before
anything runs there, the guest staying on the source. A live move that switches to
post-copy uses deltas before the switch and whole pages after it."""
import json
import os

import gwtest

DIRTY = "workload=dirty wss=16M rate=4000 pattern=random content=mixed"
AB = "workload=abcheck wss=8M content=mixed"
# several rounds whatever the host's speed (see test_migrate.py's rounds_opts)
ROUNDS = ("--bandwidth", "8M", "--downtime-ms", "1", "--max-rounds", "3")


def fill_done(src):
    src.wait_line(r"^content \w+ ready", timeout=300)
    src.wait_line(rf"^hb {src.heartbeats()[-1] + 500}$", timeout=300)


def move(env, hosts, name, cmdline, opts, abcheck=False):
    uri = f"tcp:{hosts.dst_ip}:4444"
    src = gwtest.start_source(env, f"{name}-src", cpus=2, cmdline=cmdline, netns=hosts.src)
    dst = gwtest.start_dest(env, f"{name}-dst", uri, netns=hosts.dst, paused=True)
    if abcheck:
        src.wait_line(r"^check ok 1$", timeout=300)
    else:
        # the content's pools first (the guest builds them before it writes), then about
        # 2 s of writes, so most of the working set holds data to rewrite
        fill_done(src)
    _, res, _ = gwtest.migrate(src, uri, "--mode", "live", "--digest", *ROUNDS, *opts)
    assert src.wait_exit() == 0, f"{name}: the source must exit 0 once it handed over"
    assert res["state"] == "completed" and len(res["rounds"]) >= 3, res
    delta = res["delta"]
    print(f"{name}: delta {delta}, compression {res['compression']}, "
          f"{len(res['rounds'])} rounds, {res['elapsed_ms']} ms")
    st = dst.status("--digest")
    assert st["digest"] == res["digest"], f"{name}: digests differ: {st['digest']} {res['digest']}"
    ms = json.loads(dst.ctl("migrate-status")[1])
    assert ms["state"] == "completed" and ms["delta"]["mode"] == "xbzrle", ms["delta"]
    for k in ("pages", "bytes", "saved_bytes"):
        assert ms["delta"][k] == delta[k], f"{name}: {k}: destination {ms['delta']}, {delta}"
    comp, dcomp = res["compression"], ms["compression"]
    assert dcomp["page_bytes"] == comp["page_bytes"], (dcomp, comp)
    assert dcomp["page_bytes_sent"] == comp["page_bytes_sent"], (dcomp, comp)
    conns, dconns = res["connections"], ms["connections"]
    assert [c["bytes"] for c in dconns[1:]] == [c["bytes"] for c in conns[1:]], (conns, dconns)
    if len(conns) > 1:
        # a batch is at least a few KiB of deltas; JOIN, ACCEPT and FENCEs under 1 KiB
        assert sum(c["bytes"] for c in conns[1:]) > 65536, f"{name}: not spread: {conns}"
    dst.ctl("resume")
    gwtest.check_moved(src, dst, name, abcheck=abcheck)
    dst.ctl("stop")
    assert dst.wait_exit() == 0
    return res


def saved(res, name):
    d = res["delta"]
    assert d["pages"] > 0 and d["saved_bytes"] > 0, f"{name}: no page went as a delta: {d}"
    assert d["bytes"] + d["saved_bytes"] == 4096 * d["pages"], d
    assert d["bytes"] <= 3072 * d["pages"], f"{name}: a delta above the bound: {d}"
    comp = res["compression"]
    assert comp["page_bytes_sent"] <= comp["page_bytes"] - d["saved_bytes"], (comp, d)


def hybrid(env, hosts):
    """Live rounds with deltas, then post-copy: the pages after the switch go whole (the
    destination refuses a delta there), and abcheck's checks pass on the destination."""
    uri = f"tcp:{hosts.dst_ip}:4444"
    src = gwtest.start_source(env, "hybrid-src", cpus=2, cmdline=AB, netns=hosts.src)
    dst = gwtest.start_dest(env, "hybrid-dst", uri, netns=hosts.dst)
    src.wait_line(r"^check ok 2$", timeout=300)
    _, res, _ = gwtest.migrate(src, uri, "--delta", "xbzrle", "--postcopy-after", "2",
                               "--downtime-ms", "1", "--bandwidth", "8M")
    assert src.wait_exit() == 0
    assert res["state"] == "completed" and res["phase"] == "postcopy", res
    assert len(res["rounds"]) == 2 and res["delta"]["pages"] > 0, (res["rounds"], res["delta"])
    print(f"hybrid: delta {res['delta']}, {res['elapsed_ms']} ms")
    gwtest.check_moved(src, dst, "hybrid", abcheck=True)
    dst.ctl("stop")
    assert dst.wait_exit() == 0


def refusals(env, hosts):
    src = gwtest.start_source(env, "bad-src")
    nowhere = "unix:" + env.path("nowhere")
    for opts, want in (
            (("--delta", "xor"), "delta must be none or xbzrle[:CACHE_SIZE]"),
            (("--delta", "xbzrle:100K"), "CACHE_SIZE 1M to 1T"),
            (("--mode", "warm", "--delta", "xbzrle"), "delta xbzrle is for live moves"),
            (("--delta", "xbzrle", "--mode", "postcopy"), "delta xbzrle is for live moves"),
            (("--delta", "xbzrle", "--connections", "2", "--mode", "warm"),
             "delta xbzrle is for live moves")):
        rc, _, err = gwtest.migrate(src, nowhere, *opts, check=False)
        assert rc != 0 and want in err, f"{opts}: {rc} {err}"
    assert src.status()["state"] == "running"
    src.ctl("stop")
    assert src.wait_exit() == 0


def hostile(env, hosts, conn=1):
    """A delta whose first run skips past the page, injected on the wire with its CRC fixed
    (conn > 1: on that extra connection of 2): the destination refuses it by name and exits
    having run nothing; the guest stays."""
    name = f"hostile{conn}"
    src = gwtest.start_source(env, f"{name}-src", cpus=2, cmdline=DIRTY, netns=hosts.src)
    dst = gwtest.start_dest(env, f"{name}-dst", f"tcp:{hosts.dst_ip}:4444", netns=hosts.dst)
    fill_done(src)
    p = gwtest.proxy(hosts, "delta:past") if conn == 1 else gwtest.fanproxy(hosts, f"delta:{conn}")
    opts = ("--connections", "2") if conn > 1 else ()
    try:
        rc, _, err = gwtest.migrate(src, "tcp:127.0.0.1:5555", "--delta", "xbzrle", *ROUNDS,
                                    *opts, check=False)
    finally:
        p.kill()
        out = p.communicate()[0]
    assert "injected" in out, f"{name}: no delta to corrupt was sent: {out!r}"
    assert rc != 0, "migrate succeeded with a hostile delta"
    gwtest.check_refused(dst, name, "past the page's end",
                         *([f"connection {conn} of 2"] if conn > 1 else []))
    gwtest.check_kept(src, name)
    src.ctl("stop")
    assert src.wait_exit() == 0


def test(env):
    hosts = gwtest.Hosts(env)
    res = move(env, hosts, "dirty", DIRTY, ("--delta", "xbzrle"))
    assert res["delta"]["mode"] == f"xbzrle:{64 << 20}", res["delta"]
    saved(res, "dirty")
    # deltas, then zstd over each batch's deltas and whole pages
    res = move(env, hosts, "dirty-zstd", DIRTY, ("--delta", "xbzrle", "--compress", "zstd"))
    saved(res, "dirty-zstd")
    assert res["compression"]["ratio"] > 1.0, res["compression"]
    # a cache of 2048 pages for 4096: pages evict each other all the time; still exact
    res = move(env, hosts, "dirty-small", DIRTY, ("--delta", "xbzrle:8M"))
    assert res["delta"]["mode"] == f"xbzrle:{8 << 20}", res["delta"]
    # whole pages rewritten: deltas rarely pay, the checks must still pass
    move(env, hosts, "abcheck", AB, ("--delta", "xbzrle"), abcheck=True)
    # pages and deltas spread over several connections: each page's versions still arrive
    # in order (the rounds' FENCEs, docs/migration-protocol.md), so the digests agree
    for n in (2, 4):
        res = move(env, hosts, f"dirty-conn{n}", DIRTY,
                   ("--delta", "xbzrle", "--connections", str(n)))
        saved(res, f"dirty-conn{n}")
    move(env, hosts, "abcheck-conn2", AB, ("--delta", "xbzrle:8M", "--connections", "2"),
         abcheck=True)
    if os.path.exists("/dev/userfaultfd") or os.geteuid() == 0:
        hybrid(env, hosts)
    else:
        print("post-copy needs userfaultfd (root or /dev/userfaultfd): hybrid move not run")
    refusals(env, hosts)
    hostile(env, hosts)
    hostile(env, hosts, conn=2)


gwtest.main(test)
