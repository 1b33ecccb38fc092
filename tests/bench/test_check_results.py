#!/usr/bin/env python3
"""bench/check_results.py on crafted results folders: the suite's benchmark smoke test
(bench/smoke-test) is only as strict as this checker, so a run whose godwit rows failed
their correctness checks (abcheck, heartbeats) or were never measured must be refused,
while a well-formed run with every godwit row measured (QEMU's may be unavailable) is
accepted. No time is judged anywhere.

    test_check_results.py REPO_ROOT
"""
import csv
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else
                       os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from gwbench.schema import COLUMNS, REQUIRED_OK, SWITCH_PARTS  # noqa: E402
from gwbench import scenarios as scen_mod  # noqa: E402

QUICK = [s for s in scen_mod.load(scen_mod.DEFAULT_FILE) if s["set"] == "quick"]


def row(sc, vmm, status, reason=""):
    r = {c: "" for c in COLUMNS}
    r.update(scenario=sc["name"], set="quick", op=sc["op"], vmm=vmm, run="1", status=status,
             reason=reason, memory=sc["memory"], cpus=sc["cpus"], workload=sc["workload"],
             link=sc["link"], started_utc="2026-01-01T00:00:00Z")
    if status == "ok":
        for c in REQUIRED_OK[sc["op"]]:
            r[c] = "12.5"
        if sc["op"] in SWITCH_PARTS:
            # a live move: the guest's downtime, where it went, and godwit's breakdown
            r.update(downtime_guest_ms="30.5", gap_before_switch_ms="30.5",
                     gap_before_at_ms="-2.0", gap_after_switch_ms="6.1")
            if vmm == "godwit":
                r.update(downtime_vmm_ms="9.0", switchover_gap_ms="20.2",
                         switch_pause_lag_ms="3.1", switch_unreported_ms="0.1",
                         switch_resume_lag_ms="8.0", switch_read_lag_ms="4.0")
            else:
                r.update(downtime_vmm_ms="11", switchover_gap_ms="19.0")
    return r


def with_(rows, op, **cols):
    """rows with cols changed on the godwit row(s) of op."""
    out = []
    for r in rows:
        r = dict(r)
        if r["op"] == op and r["vmm"] == "godwit":
            r.update(cols)
        out.append(r)
    return out


def write_results(d, rows):
    with open(os.path.join(d, "runs.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    with open(os.path.join(d, "meta.json"), "w") as f:
        json.dump({"vmms": ["godwit", "qemu"], "interrupted": False,
                   "scenarios": [s["name"] for s in QUICK]}, f)
    with open(os.path.join(d, "results.md"), "w") as f:
        f.write("| scenario | vmm |\n|---|---|\n")
        for s in QUICK:
            f.write(f"| {s['name']} | godwit |\n")
    for doc in ("machine.md", "qemu-params.md"):
        with open(os.path.join(d, doc), "w") as f:
            f.write("crafted\n")


def check(rows):
    with tempfile.TemporaryDirectory(prefix="godwit-check-results.") as d:
        write_results(d, rows)
        p = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "check_results.py"),
                            "--quick", d], capture_output=True, text=True)
        return p.returncode, p.stderr


def main():
    failures = 0

    def expect(name, rows, ok, needle=None):
        nonlocal failures
        rc, err = check(rows)
        good = (rc == 0) == ok and (needle is None or needle in err)
        print(f"{'ok  ' if good else 'FAIL'} {name}: exit {rc}"
              + ("" if good else f" (expected {'0' if ok else 'non-zero'}"
                 f"{', stderr naming ' + repr(needle) if needle else ''}); stderr: {err.strip()}"))
        failures += not good

    qemu_ok = [row(s, "qemu", "ok") for s in QUICK]
    qemu_unavail = [row(s, "qemu", "unavailable", "qemu-system-x86_64 not found") for s in QUICK]
    expect("every row measured", [row(s, "godwit", "ok") for s in QUICK] + qemu_ok, True)
    expect("godwit measured, QEMU unavailable",
           [row(s, "godwit", "ok") for s in QUICK] + qemu_unavail, True)
    expect("every godwit row failed its correctness check",
           [row(s, "godwit", "failed", "abcheck: check fail at page 7") for s in QUICK]
           + qemu_ok, False, "godwit run failed")
    expect("one godwit row failed",
           [row(s, "godwit", "ok") for s in QUICK[:-1]]
           + [row(QUICK[-1], "godwit", "failed", "heartbeat seq not consecutive")] + qemu_ok,
           False, "godwit run failed")
    expect("godwit never measured (unavailable)",
           [row(s, "godwit", "unavailable", "ninja failed") for s in QUICK] + qemu_ok,
           False, "no measured (ok) godwit run")
    live = [s for s in QUICK if s["op"] == "live-migrate"]
    if live:
        measured = [row(s, "godwit", "ok") for s in QUICK] + qemu_ok
        expect("godwit live move without its downtime breakdown",
               with_(measured, "live-migrate", switch_pause_lag_ms="", switch_resume_lag_ms=""),
               False, "without its downtime breakdown")
        expect("a gap before the switch longer than the guest's downtime",
               with_(measured, "live-migrate", gap_before_switch_ms="31.0"),
               False, "gap_before_switch_ms=31.0 exceeds downtime_guest_ms")
        expect("a switchover gap longer than the guest's downtime",
               with_(measured, "live-migrate", switchover_gap_ms="40"),
               False, "switchover_gap_ms=40 exceeds downtime_guest_ms")
        expect("a breakdown figure that is not a number",
               with_(measured, "live-migrate", switch_unreported_ms="n/a"),
               False, "switch_unreported_ms='n/a' is not a number")
    else:
        print("FAIL no quick live-migrate scenario to check the downtime breakdown on")
        failures += 1
    if any(s["op"] == "snapshot-restore" for s in QUICK):
        measured = [row(s, "godwit", "ok") for s in QUICK] + qemu_ok
        beside = dict(throughput_bytes_per_s="1.5e+09", limit_name="disk_direct_beside",
                      limit_bytes_per_s="1.5e+09", limit_fraction="1",
                      disk_direct_before_bytes_per_s="1e+09",
                      disk_direct_after_bytes_per_s="2e+09", limit_start_fraction="0.5")
        expect("a snapshot against the disk probes beside it",
               with_(measured, "snapshot-restore", **beside), True)
        expect("a limit_fraction that is not throughput over the limit",
               with_(measured, "snapshot-restore", **{**beside, "limit_fraction": "0.7"}),
               False, "limit_fraction=0.7 is not")
        expect("a limit beside the snapshot that is not the probes' mean",
               with_(measured, "snapshot-restore", **{**beside, "limit_bytes_per_s": "2e+09",
                                                       "limit_fraction": "0.75"}),
               False, "is not the mean of the disk probes")
        expect("a limit beside the snapshot without a probe",
               with_(measured, "snapshot-restore", **{**beside,
                                                       "disk_direct_before_bytes_per_s": "",
                                                       "disk_direct_after_bytes_per_s": ""}),
               False, "without a disk probe beside")
    else:
        print("FAIL no quick snapshot scenario to check the disk limit on")
        failures += 1
    if failures:
        print(f"{failures} case(s) wrong")
        return 1
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
