#!/usr/bin/env python3
"""Warm and live migration between two hosts (network namespaces joined by a veth pair)
and over a unix socket: heartbeats continue with the next seq, abcheck keeps passing,
the paused source's digest equals the destination's before it resumes; live migrations
run several rounds; a guest dirtying faster than the link converges with throttling,
and with --on-stall cancel stays running on the source."""
import gwtest

VCPU_STATE_BOUND = VM_STATE_BOUND = 16384   # src/migration/migrate.c, until measured


def check_estimate(res, cpus, what):
    """A live migration reports what its downtime estimate was made of, each part measured:
    the dirty sync, the control round trip (PING/PONG), the bandwidth, the state; the
    transfer part is the last live round's dirty pages plus the state over that bandwidth.
    The state actually sent fits the bound assumed before this process measured any."""
    est = res["downtime_estimate"]
    for k in ("dirty_sync_us", "rtt_us", "bandwidth", "state_bytes", "transfer_us"):
        assert isinstance(est[k], int) and est[k] >= 0, f"{what}: {k} in {est}"
    assert est["bandwidth"] > 0 and est["state_bytes_measured"] is False, f"{what}: {est}"
    assert est["state_bytes"] == cpus * VCPU_STATE_BOUND + VM_STATE_BOUND, f"{what}: {est}"
    assert 0 < res["state_bytes"] <= est["state_bytes"], f"{what}: state {res['state_bytes']}"
    dirty = res["rounds"][-2]["dirty_pages"]     # the last round before the pause
    want = (dirty * 4096 + est["state_bytes"]) * 1e6 / est["bandwidth"]
    assert abs(est["transfer_us"] - want) <= 2, f"{what}: transfer {est} vs {want:.0f} us"


# Live moves that must run several rounds end at --max-rounds, whatever the host's speed.
# A low bandwidth cap alone did not make that certain: how much the guest dirties during a
# round depends on how much CPU it gets, and a slow guest converged after 2. With the cap,
# the downtime estimate always holds the vCPU state over it (at least 8 ms at 4 MB/s), so
# a 1 ms target is never met and the move ends at the round limit, by design.
LIVE_ROUNDS = 3


def rounds_opts(bandwidth):
    return ("--bandwidth", bandwidth, "--downtime-ms", "1", "--max-rounds", str(LIVE_ROUNDS))


def check_rounds(res):
    """The live rounds, then the stop-and-copy pass."""
    assert len(res["rounds"]) == LIVE_ROUNDS + 1, f"{len(res['rounds'])} rounds: {res['rounds']}"


def move(env, hosts, name, mode, cpus, cmdline, opts=(), abcheck=True, unix=False,
         src_extra=None):
    if unix:
        uri, sns, dns = f"unix:{env.path(name + '.mig')}", None, None
    else:
        uri, sns, dns = f"tcp:{hosts.dst_ip}:4444", hosts.src, hosts.dst
    src = gwtest.start_source(env, f"{name}-src", cpus=cpus, cmdline=cmdline, netns=sns,
                              extra=src_extra)
    dst = gwtest.start_dest(env, f"{name}-dst", uri, netns=dns, paused=True)
    assert dst.status()["state"] == "incoming"
    if abcheck:
        src.wait_line(r"^check ok 2$", timeout=120)
    else:
        src.wait_line(r"^hb 100$")
    _, res, _ = gwtest.migrate(src, uri, "--mode", mode, "--digest", *opts)
    assert src.wait_exit() == 0, "the source must exit 0 once it handed the guest over"
    assert res["state"] == "completed" and res["mode"] == mode, res
    if mode == "live":
        check_estimate(res, cpus, name)
    else:
        assert "downtime_estimate" not in res, f"{name}: a warm move has no rounds to estimate"
    st = dst.status("--digest")
    assert st["state"] == "paused", st
    assert st["digest"] == res["digest"], f"{name}: digests differ: {st['digest']} {res['digest']}"
    ms = gwtest.json.loads(dst.ctl("migrate-status")[1])
    assert ms["state"] == "completed" and ms["incoming"] and ms["downtime_ms"] > 0, ms
    dst.ctl("resume")
    gwtest.check_moved(src, dst, name, abcheck=abcheck)
    # the timeline is the handover's: a later pause and resume do not move its steps
    tl = gwtest.json.loads(dst.ctl("migrate-status")[1])["timeline_unix_us"]
    dst.ctl("pause")
    dst.ctl("resume")
    later = gwtest.json.loads(dst.ctl("migrate-status")[1])["timeline_unix_us"]
    assert "running" in tl and later == tl, f"{name}: timeline {tl}, after pause/resume {later}"
    dst.ctl("stop")
    assert dst.wait_exit() == 0
    return res


def test(env):
    hosts = gwtest.Hosts(env)
    ab = "workload=abcheck wss=8M"
    for cpus in (1, 2):
        move(env, hosts, f"warm{cpus}", "warm", cpus, ab)
    move(env, hosts, "warm-unix", "warm", 2, ab, unix=True)
    for cpus in (1, 2):
        check_rounds(move(env, hosts, f"live-ab{cpus}", "live", cpus, ab, rounds_opts("4M")))
        check_rounds(move(env, hosts, f"live-dirty{cpus}", "live", cpus,
                          "workload=dirty wss=16M rate=2000 pattern=random", rounds_opts("8M"),
                          abcheck=False))
    move(env, hosts, "live-unix", "live", 1, ab, unix=True)
    # the dirty ring instead of the bitmap (chosen when the VM starts)
    ring = ["--dirty-tracking", "ring"]
    res = move(env, hosts, "live-ring-ab", "live", 2, ab, rounds_opts("4M"), src_extra=ring)
    check_rounds(res)
    assert res["dirty_tracking"] == "ring", res
    res = move(env, hosts, "live-ring-dirty", "live", 2,
               "workload=dirty wss=16M rate=0 pattern=random",
               (*rounds_opts("8M"), "--dirty-tracking", "ring"), abcheck=False, src_extra=ring)
    check_rounds(res)
    assert res["dirty_tracking"] == "ring", res
    # asking for the tracker the VM was not started with is refused; the guest runs on
    src = gwtest.start_source(env, "mismatch-src")
    rc, _, err = gwtest.migrate(src, "unix:" + env.path("nowhere"), "--dirty-tracking", "ring",
                                check=False)
    assert rc != 0 and "--dirty-tracking ring" in err, err
    assert src.status()["state"] == "running"
    src.ctl("stop")
    src.wait_exit()

    # faster than the link: throttled until it converges
    res = move(env, hosts, "throttle", "live", 2, "workload=dirty wss=32M rate=0",
               ("--bandwidth", "10M", "--downtime-ms", "300"), abcheck=False)
    assert res["throttle_pct"] >= 20, f"no throttling: {res['throttle_pct']}"

    # ... or, with --on-stall cancel, left running on the source
    uri = f"tcp:{hosts.dst_ip}:4444"
    src = gwtest.start_source(env, "cancel-src", cpus=2, cmdline="workload=dirty wss=32M rate=0",
                              netns=hosts.src)
    dst = gwtest.start_dest(env, "cancel-dst", uri, netns=hosts.dst)
    rc, _, err = gwtest.migrate(src, uri, "--bandwidth", "10M", "--on-stall", "cancel",
                                check=False)
    assert rc != 0 and "faster" in err, f"cancel on stall: {rc} {err}"
    assert dst.wait_exit() != 0, "the destination must exit non-zero having run nothing"
    assert not dst.heartbeats(), "the destination ran the guest"
    n = src.line_count()
    src.wait_line(r"^hb \d+$", start=n)
    assert src.status()["state"] == "running"
    src.ctl("stop")
    assert src.wait_exit() == 0


gwtest.main(test)
