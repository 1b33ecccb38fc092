"""Paired comparison of two scenarios run interleaved (bench/run --interleave): run k of A
against run k of B from the same results folder, so that each ratio compares moves made
minutes apart, under the same drift of the host. Pools several folders of the same code.

On this host the second of two moves run back to back tends to be slower, so a pair's order
counts: the summary gives B/A separately for the pairs where A ran first and where B did,
and their geometric mean, in which that order's effect cancels out (each order's median
carries it once, with opposite signs)."""
import csv
import math
import statistics


def load(paths, vmm="godwit"):
    """Measured rows of vmm from each folder's runs.csv, tagged with the folder."""
    rows = []
    for path in paths:
        with open(path if path.endswith(".csv") else f"{path}/runs.csv", newline="") as f:
            for r in csv.DictReader(f):
                if r.get("status") == "ok" and r.get("vmm") == vmm:
                    rows.append(dict(r, _folder=path))
    return rows


def pairs(rows, a, b, metric):
    """[(folder, run, value_a, value_b, a_first)] for every (folder, run) that has both a and
    b; a_first: A started before B (started_utc), None when that is not known."""
    seen = {}
    for r in rows:
        if r["scenario"] in (a, b) and r.get(metric) not in (None, ""):
            seen.setdefault((r["_folder"], int(r["run"])), {})[r["scenario"]] = (
                float(r[metric]), r.get("started_utc") or "")
    out = []
    for (folder, run), d in sorted(seen.items()):
        if a in d and b in d:
            (va, ta), (vb, tb) = d[a], d[b]
            out.append((folder, run, va, vb, ta < tb if ta and tb and ta != tb else None))
    return out


def summary(prs):
    """Median, lowest and highest of B/A over the pairs, in how many B <= A, the medians of
    B/A with A first and with B first, and their geometric mean ("balanced": None unless
    both orders occur)."""
    prs = [p for p in prs if p[2] > 0]
    if not prs:
        return None
    ratios = [vb / va for _, _, va, vb, _ in prs]
    by = {order: [vb / va for _, _, va, vb, first in prs if first is order]
          for order in (True, False)}
    med = {order: statistics.median(v) if v else None for order, v in by.items()}
    return {"n": len(ratios), "median": statistics.median(ratios), "low": min(ratios),
            "high": max(ratios), "b_not_slower": sum(x <= 1 for x in ratios),
            "median_a": statistics.median(p[2] for p in prs),
            "median_b": statistics.median(p[3] for p in prs),
            "n_a_first": len(by[True]), "median_a_first": med[True],
            "n_b_first": len(by[False]), "median_b_first": med[False],
            "balanced": math.sqrt(med[True] * med[False])
            if med[True] and med[False] else None}
