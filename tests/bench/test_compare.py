#!/usr/bin/env python3
"""bench/compare and bench/gwbench/pairs.py on crafted runs.csv files: runs pair by (folder,
run) only, failed rows and other VMMs are left out, the order of a pair comes from
started_utc, and the balanced ratio cancels an effect of the order alone (here: the second
move of a pair always 10% slower, B otherwise equal to A) where the plain median does not.

    test_compare.py REPO_ROOT
"""
import csv
import os
import subprocess
import sys
import tempfile

ROOT = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else
                       os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "bench"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from expect import Expect  # noqa: E402
from gwbench.pairs import load, pairs, summary  # noqa: E402

FIELDS = ["scenario", "vmm", "run", "status", "started_utc", "total_ms"]


def write(folder, rows):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "runs.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow(dict(zip(FIELDS, r)))


def main():
    expect = Expect()

    with tempfile.TemporaryDirectory() as tmp:
        one, two = os.path.join(tmp, "one"), os.path.join(tmp, "two")
        # B equals A; whichever runs second pays 10%. Three pairs with A first, two with B
        # first, as three runs of --interleave then two more would give.
        rows = []
        for run, a_first in ((1, True), (2, False), (3, True)):
            ta, tb = ("T00:01", "T00:02") if a_first else ("T00:02", "T00:01")
            rows.append(("A", "godwit", run, "ok", ta, 100.0 if a_first else 110.0))
            rows.append(("B", "godwit", run, "ok", tb, 110.0 if a_first else 100.0))
        rows.append(("A", "qemu", 1, "ok", "T00:03", 1.0))     # another VMM: ignored
        rows.append(("B", "godwit", 4, "ok", "T00:04", 1.0))   # no A in run 4: no pair
        rows.append(("A", "godwit", 5, "failed", "T00:05", ""))
        rows.append(("B", "godwit", 5, "ok", "T00:06", 1.0))   # its A failed: no pair
        write(one, rows)
        write(two, [("A", "godwit", 1, "ok", "T00:02", 110.0),
                    ("B", "godwit", 1, "ok", "T00:01", 100.0),
                    ("A", "godwit", 2, "ok", "T00:01", 100.0),
                    ("B", "godwit", 2, "ok", "T00:02", 110.0)])
        prs = pairs(load([one, two]), "A", "B", "total_ms")
        expect("pairs by folder and run", [(os.path.basename(f), r) for f, r, *_ in prs],
               [("one", 1), ("one", 2), ("one", 3), ("two", 1), ("two", 2)])
        expect("order from started_utc", [p[4] for p in prs], [True, False, True, False, True])
        s = summary(prs)
        expect("plain median carries the order", round(s["median"], 9), 1.1)
        expect("by order", (s["n_a_first"], s["n_b_first"], round(s["median_a_first"], 9),
                            round(s["median_b_first"], 9)), (3, 2, 1.1, round(100 / 110, 9)))
        expect("balanced cancels the order", round(s["balanced"], 9), 1.0)
        only = summary([p for p in prs if p[4]])
        expect("one order only: no balanced figure", only["balanced"], None)
        expect("no pairs: no summary", summary([]), None)

        cmd = [os.path.join(ROOT, "bench", "compare"), "A", "B", one, two]
        r = subprocess.run(cmd, capture_output=True, text=True)
        expect("compare prints the balanced ratio",
               (r.returncode, "balanced B/A 1.000" in r.stdout, "5 pairs" in r.stdout),
               (0, True, True))
        r = subprocess.run(cmd[:1] + ["A", "C", one], capture_output=True, text=True)
        expect("no pair: exit 1 naming both", (r.returncode, "A and C" in r.stderr), (1, True))
        r = subprocess.run(cmd[:1] + ["A", "B", os.path.join(tmp, "none")],
                           capture_output=True, text=True)
        expect("missing folder: exit 2 naming it", (r.returncode, "none" in r.stderr), (2, True))
    return expect.result()


if __name__ == "__main__":
    sys.exit(main())
