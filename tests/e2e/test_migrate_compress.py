#!/usr/bin/env python3
"""migrate --compress: warm and live moves of a guest whose memory holds content=mixed
(text, random and sparse pages) with zstd and with auto on a slow link: the guest
continues (heartbeats with the next seq, abcheck passes), the paused source's digest equals
the destination's, both sides report a compression ratio above 1 from bytes actually
saved; an unknown method or level is refused before anything moves."""
import json

import gwtest

AB = "workload=abcheck wss=8M content=mixed"


def move(env, hosts, name, mode, opts):
    uri = f"tcp:{hosts.dst_ip}:4444"
    src = gwtest.start_source(env, f"{name}-src", cpus=2, cmdline=AB, netns=hosts.src)
    dst = gwtest.start_dest(env, f"{name}-dst", uri, netns=hosts.dst, paused=True)
    src.wait_line(r"^check ok 1$", timeout=300)
    _, res, _ = gwtest.migrate(src, uri, "--mode", mode, "--digest", *opts)
    assert src.wait_exit() == 0, f"{name}: the source must exit 0 once it handed over"
    assert res["state"] == "completed" and res["mode"] == mode, res
    comp = res["compression"]
    assert comp["page_bytes"] >= 2048 * 4096, f"{name}: {comp}"
    assert comp["page_bytes_sent"] < comp["page_bytes"] and comp["ratio"] > 1.0, \
        f"{name}: nothing saved: {comp}"
    print(f"{name}: {comp}, {len(res['rounds'])} rounds, {res['elapsed_ms']} ms")
    st = dst.status("--digest")
    assert st["digest"] == res["digest"], f"{name}: digests differ: {st['digest']} {res['digest']}"
    ms = json.loads(dst.ctl("migrate-status")[1])
    dcomp = ms["compression"]
    assert ms["state"] == "completed" and dcomp["page_bytes"] == comp["page_bytes"], ms
    assert dcomp["page_bytes_sent"] == comp["page_bytes_sent"], (dcomp, comp)
    dst.ctl("resume")
    gwtest.check_moved(src, dst, name, abcheck=True)
    dst.ctl("stop")
    assert dst.wait_exit() == 0
    return res


def test(env):
    # a 40 Mbit/s link: the link, not the CPU, is the bound, so auto compresses too
    hosts = gwtest.Hosts(env, rate="40mbit")
    res = move(env, hosts, "warm-zstd", "warm", ("--compress", "zstd"))
    assert res["compression"]["mode"] == "zstd:1", res["compression"]
    res = move(env, hosts, "live-zstd", "live", ("--compress", "zstd:3", "--bandwidth", "4M"))
    assert len(res["rounds"]) >= 2 and res["compression"]["mode"] == "zstd:3", res
    res = move(env, hosts, "live-auto", "live", ("--compress", "auto"))
    assert res["compression"]["mode"] == "auto:1", res["compression"]

    src = gwtest.start_source(env, "bad-src")
    for bad in ("lz4", "zstd:0", "zstd:20", "zstd:", "none:3", "zstd:1x", "auto:-1"):
        rc, _, err = gwtest.migrate(src, "unix:" + env.path("nowhere"), "--compress", bad,
                                    check=False)
        assert rc != 0 and "compress must be none, zstd[:LEVEL] or auto[:LEVEL]" in err, \
            f"--compress {bad}: {rc} {err}"
    assert src.status()["state"] == "running"
    src.ctl("stop")
    assert src.wait_exit() == 0


gwtest.main(test)
