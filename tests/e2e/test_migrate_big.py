#!/usr/bin/env python3
"""An idle 64 GiB guest (reserved, almost all untouched) moves live and warm over a unix
socket and continues with the next heartbeat: the move reads only what the guest touched
(a few MiB), and neither side populates the rest."""
import gwtest


def test(env):
    for mode in ("live", "warm"):
        uri = f"unix:{env.path(mode + '.mig')}"
        src = gwtest.start_source(env, f"big-{mode}-src", memory="64G")
        dst = gwtest.start_dest(env, f"big-{mode}-dst", uri)
        src.wait_line(r"^hb 20$")
        _, res, _ = gwtest.migrate(src, uri, "--mode", mode)
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


gwtest.main(test)
