#!/usr/bin/env python3
"""Validate a bench/run results folder: exit 0 if well-formed, 1 otherwise.

    bench/check_results.py [--quick] [--table FILE] DIR

Checks the shape of the results, never a time: runs.csv has the expected
columns; every row is either measured (status ok, with its operation's key
figures as non-negative numbers) or marked failed/unavailable with a reason
and no figures; every scenario of the run (with --quick: every quick
scenario of the table) has at least one row per VMM; results.md, machine.md,
qemu-params.md exist and the plots results.md names exist. The guest's
downtime (its longest heartbeat gap) is at least each gap it is the longest
of (before, at and after the switch); a limit_fraction is the row's throughput
over its limit, and a snapshot's limit measured beside it is the mean of the
disk probes beside it.

godwit is the VMM under test, so its rows must also have worked: a godwit row
marked failed (a correctness check such as abcheck or the heartbeat sequence
failed, or the run broke) is a problem, and so is a scenario without a
measured godwit row; a measured godwit live move carries its downtime
breakdown (the switchover split along its migrate-status timeline). QEMU rows
may be failed or unavailable with a reason."""
import argparse
import csv
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gwbench.schema import (COLUMNS, GUEST_GAPS, METRIC_COLUMNS, REQUIRED_OK,  # noqa: E402
                            STATUSES, SWITCH_PARTS)
from gwbench import scenarios as scen_mod  # noqa: E402

TEXT_METRICS = {"guest_rss_source", "limit_name"}


def _num(r, c):
    try:
        return float(r.get(c, ""))
    except ValueError:
        return None


def _close(a, b):
    return abs(a - b) <= 0.01 * max(abs(a), abs(b))


def _limit_check(r):
    """A fraction of a limit is the row's throughput over that limit; a snapshot's limit
    measured beside it is the mean of the probes beside it. None, or what is wrong."""
    thr, lim, frac = (_num(r, c) for c in ("throughput_bytes_per_s", "limit_bytes_per_s",
                                            "limit_fraction"))
    if None not in (thr, lim, frac) and lim > 0 and not _close(frac, thr / lim):
        return (f"limit_fraction={r['limit_fraction']} is not throughput_bytes_per_s / "
                f"limit_bytes_per_s ({thr / lim:.4g})")
    if r.get("limit_name", "").endswith("_beside"):
        probes = [v for v in (_num(r, "disk_direct_before_bytes_per_s"),
                              _num(r, "disk_direct_after_bytes_per_s")) if v is not None]
        if not probes:
            return f"limit {r['limit_name']} without a disk probe beside the snapshot"
        if lim is None or not _close(lim, sum(probes) / len(probes)):
            return (f"limit_bytes_per_s={r.get('limit_bytes_per_s')} is not the mean of the "
                    f"disk probes beside the snapshot ({sum(probes) / len(probes):.4g})")
    return None


def check(resdir, quick, table):
    errors = []

    def err(msg):
        errors.append(msg)

    if not os.path.isdir(resdir):
        return [f"{resdir}: not a directory"]
    csv_path = os.path.join(resdir, "runs.csv")
    rows = []
    try:
        with open(csv_path, newline="") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            missing = [c for c in COLUMNS if c not in header]
            if missing:
                err(f"runs.csv: missing columns {missing}")
            rows = list(reader)
    except OSError as e:
        return [f"runs.csv: {e}"]
    if not rows:
        err("runs.csv: no rows")
    for n, r in enumerate(rows, 2):
        where = f"runs.csv line {n} ({r.get('scenario')}/{r.get('vmm')}/{r.get('run')})"
        if r.get("status") not in STATUSES:
            err(f"{where}: status {r.get('status')!r} not one of {STATUSES}")
            continue
        if r.get("vmm") not in ("godwit", "qemu"):
            err(f"{where}: vmm {r.get('vmm')!r}")
        if r.get("op") not in scen_mod.OPS:
            err(f"{where}: op {r.get('op')!r}")
            continue
        if not re.fullmatch(r"\d+", r.get("run") or ""):
            err(f"{where}: run {r.get('run')!r} is not a number")
        figures = {c: r.get(c, "") for c in METRIC_COLUMNS if r.get(c, "") != ""}
        for c, v in figures.items():
            if c in TEXT_METRICS:
                continue
            try:
                float(v)
            except ValueError:
                err(f"{where}: {c}={v!r} is not a number")
        if r["status"] == "ok":
            for c in REQUIRED_OK[r["op"]]:
                v = r.get(c, "")
                try:
                    if float(v) < 0:
                        err(f"{where}: {c} is negative")
                except ValueError:
                    err(f"{where}: measured run without {c}")
            if r.get("reason"):
                err(f"{where}: ok run with a reason")
            # the guest's downtime is the longest of its gaps: a part above it is a harness bug
            try:
                dt = float(r.get("downtime_guest_ms") or "nan")
                for c in GUEST_GAPS:
                    if r.get(c, "") != "" and float(r[c]) > dt + 1e-6:
                        err(f"{where}: {c}={r[c]} exceeds downtime_guest_ms={r['downtime_guest_ms']}")
            except ValueError:
                pass   # reported above as not a number
            limit_problem = _limit_check(r)
            if limit_problem:
                err(f"{where}: {limit_problem}")
            if r.get("vmm") == "godwit":
                lacking = [c for c in SWITCH_PARTS.get(r["op"], []) if r.get(c, "") == ""]
                if lacking:
                    err(f"{where}: godwit run without its downtime breakdown {lacking}")
        else:
            if not (r.get("reason") or "").strip():
                err(f"{where}: {r['status']} run without a reason")
            if figures:
                err(f"{where}: {r['status']} run carries figures {sorted(figures)}")
    # coverage
    try:
        with open(os.path.join(resdir, "meta.json")) as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        meta = {}
        err(f"meta.json: {e}")
    if quick:
        expected = [s["name"] for s in scen_mod.load(table) if s["set"] == "quick"]
    else:
        expected = meta.get("scenarios", [])
    if meta.get("interrupted"):
        err("meta.json: the run was interrupted; results are incomplete")
    vmms = meta.get("vmms") or sorted({r.get("vmm") for r in rows}) or ["godwit", "qemu"]
    for name in expected:
        for v in vmms:
            if not any(r.get("scenario") == name and r.get("vmm") == v for r in rows):
                err(f"runs.csv: no row for scenario {name} on {v}")
    # the VMM under test: a failed godwit run is a failure of the run, not a shape
    if "godwit" in vmms:
        for n, r in enumerate(rows, 2):
            if r.get("vmm") == "godwit" and r.get("status") == "failed":
                err(f"runs.csv line {n} ({r.get('scenario')}/godwit/{r.get('run')}): "
                    f"godwit run failed: {r.get('reason')}")
        for name in expected:
            if any(r.get("scenario") == name and r.get("vmm") == "godwit" for r in rows) and \
               not any(r.get("scenario") == name and r.get("vmm") == "godwit" and
                       r.get("status") == "ok" for r in rows):
                err(f"runs.csv: scenario {name} has no measured (ok) godwit run")
    # documents
    for doc in ("results.md", "machine.md", "qemu-params.md"):
        p = os.path.join(resdir, doc)
        if not os.path.isfile(p) or os.path.getsize(p) == 0:
            err(f"{doc}: missing or empty")
    md = os.path.join(resdir, "results.md")
    if os.path.isfile(md):
        text = open(md, encoding="utf-8").read()
        if "|---" not in text:
            err("results.md: no table")
        for name in expected:
            if name not in text:
                err(f"results.md: scenario {name} not mentioned")
        for img in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
            if not os.path.isfile(os.path.join(resdir, img)):
                err(f"results.md: plot {img} missing")
    return errors


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dir")
    p.add_argument("--quick", action="store_true", help="require a row for every quick scenario")
    p.add_argument("--table", default=scen_mod.DEFAULT_FILE)
    a = p.parse_args()
    errors = check(a.dir, a.quick, a.table)
    for e in errors:
        print(f"check_results: {e}", file=sys.stderr)
    if errors:
        print(f"check_results: {a.dir}: {len(errors)} problem(s)", file=sys.stderr)
        return 1
    print(f"check_results: {a.dir}: well-formed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
