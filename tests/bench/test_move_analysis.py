#!/usr/bin/env python3
"""bench/gwbench/serial.py analyse_move on crafted heartbeat timelines: the guest-observed
downtime of a move is the longest of its gaps before, at and after the switch, counts a gap
that began before the move only from the move's start, ends a second after the guest's first
heartbeat on the new side, and the destination's first lines read together are counted.

    test_move_analysis.py REPO_ROOT
"""
import os
import sys

ROOT = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else
                       os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from gwbench.serial import AFTER_WINDOW_S, analyse_move  # noqa: E402

TICK = 0.004


def beats(seq0, t0, n, step=TICK):
    return [(t0 + i * step, f"hb {seq0 + i}") for i in range(n)]


def close(a, b):
    return a is not None and abs(a - b) < 1e-6


def main():
    failures = 0

    def expect(name, ok, detail):
        nonlocal failures
        print(f"{'ok  ' if ok else 'FAIL'} {name}" + ("" if ok else f": {detail}"))
        failures += not ok

    # source: steady, a 300 ms stall that began 100 ms before the move (t=10.0), steady,
    # a 50 ms switchover; destination: steady, one 120 ms gap, then a 2 s gap far later
    src = beats(1, 9.0, 200) + beats(201, 10.2, 50)          # 9.796 -> 10.2: the stall
    t_last = src[-1][0]
    dst = [(t_last + 0.050, "hb 251")] * 1 + beats(252, t_last + 0.054, 40)
    t = dst[-1][0]
    dst += [(t + 0.120, "hb 292")] + beats(293, t + 0.124, 200)
    dst += [(dst[-1][0] + 2.0, "hb 493")]
    res = analyse_move(src + dst, len(src), 10.0)
    expect("move passes", res["ok"], res["reason"])
    expect("a gap that began before the move counts from its start",
           close(res["gap_before_ms"], 200.0) and close(res["gap_before_at"], 10.0),
           f"gap_before_ms={res['gap_before_ms']} at {res['gap_before_at']}")
    expect("switchover gap", close(res["switchover_gap_ms"], 50.0), res["switchover_gap_ms"])
    expect("the longest gap after the switch, within its window",
           close(res["gap_after_ms"], 120.0), res["gap_after_ms"])
    expect("downtime is the longest part, and ignores gaps past the window",
           close(res["gap_ms"], 200.0), f"gap_ms={res['gap_ms']} (window {AFTER_WINDOW_S}s)")

    # the destination's first three heartbeats arrive in one read: printed a tick apart,
    # so the first was read at least two ticks late
    dst = [(t_last + 0.030, f"hb {251 + i}") for i in range(3)] + beats(254, t_last + 0.034, 60)
    res = analyse_move(src + dst, len(src), 10.0)
    expect("lines read together with the first on the destination",
           res["first_after_burst"] == 3, res["first_after_burst"])
    if failures:
        print(f"{failures} case(s) wrong")
        return 1
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
