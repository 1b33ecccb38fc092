#!/usr/bin/env python3
"""An idle 64 GiB guest (reserved, almost all untouched) moves live and warm over a unix
socket and continues with the next heartbeat: the move reads only what the guest touched
(a few MiB), and neither side populates the rest. A destination started with --memory has
its RAM registered before the source connects: a guest of that size moves into it, and a
guest of another size is refused before the source pauses, naming both sizes, while the
guest keeps running on the source. A guest writing random pages all over 16 GiB moves live with every
page (the paused source's digest equals the destination's): most of what it writes
during the move lands in 64 MiB windows that round 0's look found untouched and skipped,
and those pages must come with the later rounds."""
import gwtest


def move(env, mode, dst_extra=None):
    uri = f"unix:{env.path(mode + '.mig')}"
    src = gwtest.start_source(env, f"big-{mode}-src", memory="64G")
    dst = gwtest.start_dest(env, f"big-{mode}-dst", uri, extra=dst_extra)
    if dst_extra:
        # prepared before any source connects: the RAM is there, nothing of it populated
        st = dst.status()
        assert st["state"] == "incoming" and st["memory"] == 64 << 30, st
        assert st["guest_resident"] < 64 << 20, st
    src.wait_line(r"^hb 20$")
    _, res, _ = gwtest.migrate(src, uri, "--mode", mode.split("-")[0])
    assert src.wait_exit() == 0
    assert res["state"] == "completed", res
    # the kit's image and stack: well under 64 MiB of 64 GiB
    assert res["pages_normal"] * 4096 < 64 << 20, f"{mode}: {res['pages_normal']} pages sent"
    gwtest.check_moved(src, dst, f"big-{mode}")
    st = dst.status()
    assert st["state"] == "running", st
    print(f"{mode}: {res['elapsed_ms']} ms, downtime {res['downtime_ms']:.1f} ms, "
          f"{res['pages_normal']} pages")
    dst.ctl("stop")
    assert dst.wait_exit() == 0


def fresh_writes(env):
    uri = f"unix:{env.path('fresh.mig')}"
    # 200 random pages a second over 16 GiB (256 windows of 64 MiB): nearly every page the
    # guest writes during the move lands in a window that was untouched when round 0 looked
    src = gwtest.start_source(env, "big-fresh-src", memory="64G",
                              cmdline="workload=dirty wss=16G rate=200 pattern=random")
    dst = gwtest.start_dest(env, "big-fresh-dst", uri, paused=True)
    src.wait_line(r"^hb 20$")
    _, res, _ = gwtest.migrate(src, uri, "--mode", "live", "--digest")
    assert src.wait_exit() == 0
    assert res["state"] == "completed", res
    # every page the paused source holds, the destination holds
    st = dst.status("--digest")
    assert st["state"] == "paused" and st["digest"] == res["digest"], (st, res["digest"])
    dst.ctl("resume")
    gwtest.check_moved(src, dst, "big-fresh")
    print(f"fresh: {res['elapsed_ms']} ms, {len(res['rounds'])} rounds, "
          f"{res['pages_normal']} pages")
    dst.ctl("stop")
    assert dst.wait_exit() == 0


def refused_size(env):
    uri = f"unix:{env.path('size.mig')}"
    src = gwtest.start_source(env, "big-size-src", memory="64G")
    dst = gwtest.start_dest(env, "big-size-dst", uri, extra=["--memory", "128M"])
    src.wait_line(r"^hb 20$")
    rc, _, err = gwtest.migrate(src, uri, "--mode", "live", check=False)
    assert rc != 0, "a 64 GiB guest moved into a destination prepared for 128 MiB"
    assert "65536 MiB" in err and "--memory 128 MiB" in err, err
    assert dst.wait_exit() == 1
    # refused at pre-flight: the guest never paused and goes on here
    last = src.heartbeats()[-1]
    src.wait_line(rf"^hb {last + 20}$")
    assert src.status()["state"] == "running"
    src.ctl("stop")
    assert src.wait_exit() == 0


def test(env):
    for mode in ("live", "warm"):
        move(env, mode)
    move(env, "live-prepared", dst_extra=["--memory", "64G"])
    refused_size(env)
    fresh_writes(env)


gwtest.main(test)
