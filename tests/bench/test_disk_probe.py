#!/usr/bin/env python3
"""The disk probe beside each snapshot (bench/gwbench/limits.py disk_direct_probe) and the
snapshot's limit (bench/gwbench/main.py add_throughput): the probe writes as many bytes as
asked (whole pages), fsyncs, removes its file and says whether it wrote direct; a snapshot's
limit_fraction is taken against the mean of the probes beside it, falling back to the
run-start probe only when none worked, and the run-start fraction is kept beside it. No
rate is judged, only that one was measured.

    test_disk_probe.py REPO_ROOT
"""
import os
import sys
import tempfile

ROOT = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else
                       os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "bench"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gwbench.limits import disk_direct_probe  # noqa: E402
from gwbench.main import add_throughput  # noqa: E402
from gwbench.util import set_verbose  # noqa: E402
from expect import Expect  # noqa: E402

SNAP = {"op": "snapshot-restore", "link": "-"}
LIMITS = {"disk_write": 1e9, "disk_write_direct": 3e9}


def direct_allowed(d):
    """Whether d's file system takes O_DIRECT, asked independently of the probe."""
    try:
        fd = os.open(os.path.join(d, "odirect-check"), os.O_WRONLY | os.O_CREAT | os.O_DIRECT)
    except OSError:
        return False
    os.close(fd)
    os.unlink(os.path.join(d, "odirect-check"))
    return True


def main():
    expect = Expect()

    set_verbose(False)
    # next to the sources, not /tmp: a tmpfs there may refuse O_DIRECT
    with tempfile.TemporaryDirectory(prefix="godwit-disk-probe.", dir=ROOT) as d:
        p = disk_direct_probe(d, 5 * (1 << 20) + 123)
        expect("probe measured", p is not None and p["bytes_per_s"] > 0, True)
        if p:
            expect("bytes rounded up to whole pages", p["bytes"], 5 * (1 << 20) + 4096)
            expect("direct where the file system allows it", p["direct"], direct_allowed(d))
            expect("rate is bytes over seconds", abs(p["bytes_per_s"] * p["seconds"] - p["bytes"])
                   < 1, True)
        expect("its file removed", os.listdir(d), [])
        expect("nothing to write: no figure", disk_direct_probe(d, 0), None)
        expect("no size: no figure", disk_direct_probe(d, None), None)
    expect("missing directory: no figure",
           disk_direct_probe(os.path.join(ROOT, "no-such-dir-for-the-probe"), 1 << 20), None)

    # 1.5 GB in 1 s against probes of 1 and 2 GB/s beside it: exactly the disk's rate
    row = {"snapshot_bytes": 1.5e9, "snapshot_ms": 1000.0,
           "disk_direct_before_bytes_per_s": 1e9, "disk_direct_after_bytes_per_s": 2e9}
    add_throughput(row, SNAP, LIMITS)
    expect("limit beside the snapshot", (row.get("limit_name"), row.get("limit_bytes_per_s"),
                                         row.get("limit_fraction")),
           ("disk_direct_beside", 1.5e9, 1.0))
    expect("run-start fraction kept", row.get("limit_start_fraction"), 0.5)
    row = {"snapshot_bytes": 1.5e9, "snapshot_ms": 1000.0, "disk_direct_after_bytes_per_s": 3e9}
    add_throughput(row, SNAP, LIMITS)
    expect("one probe beside it", (row.get("limit_name"), row.get("limit_fraction")),
           ("disk_direct_beside", 0.5))
    row = {"snapshot_bytes": 1.5e9, "snapshot_ms": 1000.0, "disk_direct_after_bytes_per_s": 3e9,
           "disk_probe_buffered": 1}
    add_throughput(row, SNAP, LIMITS)
    expect("a buffered probe is named so", row.get("limit_name"), "disk_buffered_beside")
    row = {"snapshot_bytes": 1.5e9, "snapshot_ms": 1000.0}
    add_throughput(row, SNAP, LIMITS)
    expect("no probe beside it: the run-start one",
           (row.get("limit_name"), row.get("limit_fraction"), row.get("limit_start_fraction")),
           ("disk_write_direct", 0.5, 0.5))
    row = {"snapshot_bytes": 1.5e9, "snapshot_ms": 1000.0, "disk_direct_after_bytes_per_s": 3e9}
    add_throughput(row, SNAP, {})
    expect("no run-start probe: beside only", ("limit_start_fraction" in row,
                                                row.get("limit_fraction")), (False, 0.5))
    row = {"vmm_bytes": 1e9, "total_ms": 1000.0, "disk_direct_after_bytes_per_s": 3e9}
    add_throughput(row, {"op": "warm-migrate", "link": "loopback"}, {"link_loopback": 2e9})
    expect("migrations keep their link", (row.get("limit_name"), row.get("limit_fraction")),
           ("link_loopback", 0.5))
    return expect.result()


if __name__ == "__main__":
    sys.exit(main())
