#!/usr/bin/env python3
"""bench/gwbench/main.py run_order: without --interleave each scenario's runs come in a row;
with it run 1 of every scenario comes first, then run 2 in the reverse order, and so on, so
two rows compared with each other alternate (A B, B A, A B) and share the host's drift.
Every (scenario, run) pair comes exactly once either way.

    test_run_order.py REPO_ROOT
"""
import os
import sys

ROOT = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else
                       os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "bench"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gwbench.main import run_order  # noqa: E402
from expect import Expect  # noqa: E402


def names(order):
    return [(sc["name"], i) for sc, i in order]


def main():
    expect = Expect()

    chosen = [{"name": "a"}, {"name": "b"}, {"name": "c"}]
    expect("in a row", names(run_order(chosen, 2, False)),
           [("a", 1), ("a", 2), ("b", 1), ("b", 2), ("c", 1), ("c", 2)])
    expect("interleaved", names(run_order(chosen, 3, True)),
           [("a", 1), ("b", 1), ("c", 1), ("c", 2), ("b", 2), ("a", 2),
            ("a", 3), ("b", 3), ("c", 3)])
    for inter in (False, True):
        got = names(run_order(chosen, 5, inter))
        expect(f"each pair once (interleave={inter})", sorted(got),
               sorted((sc["name"], i) for sc in chosen for i in range(1, 6)))
    expect("one scenario interleaved", names(run_order(chosen[:1], 2, True)),
           [("a", 1), ("a", 2)])
    return expect.result()


if __name__ == "__main__":
    sys.exit(main())
