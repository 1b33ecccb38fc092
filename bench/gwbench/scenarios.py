"""The scenario table (bench/scenarios.tsv): one row per scenario."""
import fnmatch
import os
import re

from .util import parse_link_rate, parse_size

COLUMNS = ["name", "set", "op", "memory", "cpus", "workload", "link", "downtime_ms",
           "bandwidth", "restore", "on_stall", "warmup_s", "tls"]
# trailing columns a row may leave out ('-'), so rows written before them stay valid
OPTIONAL = ["compress", "connections", "delta"]
OPS = ("boot", "snapshot-restore", "warm-migrate", "live-migrate", "postcopy-migrate", "net-live",
       "net-rate", "disk-io")
# post-copy: one full pass while the guest runs, then the switch (godwit --mode postcopy;
# QEMU postcopy-ram on both sides and migrate-start-postcopy once the first pass is done)
MIGRATE_OPS = ("warm-migrate", "live-migrate", "postcopy-migrate")
DEFAULT_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "scenarios.tsv")


class Scenario(dict):
    __getattr__ = dict.get

    @property
    def memory_bytes(self):
        return parse_size(self["memory"])

    @property
    def wss_bytes(self):
        m = re.search(r"\bwss=(\S+)", self["workload"])
        return parse_size(m.group(1)) if m else 0

    @property
    def dirty_rate(self):
        m = re.search(r"\brate=(\d+)", self["workload"])
        return int(m.group(1)) if m else 0

    @property
    def hb_period_s(self):
        """The guest kit's heartbeat period: one line a timer tick (hz=, default 250)."""
        m = re.search(r"\bhz=(\d+)", self["workload"])
        return 1.0 / int(m.group(1)) if m and int(m.group(1)) > 0 else 0.004

    @property
    def kind(self):
        m = re.search(r"\bworkload=(\w+)", self["workload"])
        return m.group(1) if m else "idle"

    @property
    def workloads(self):
        """The guest kit's workloads, e.g. ['abcheck', 'net'] for workload=abcheck,net."""
        m = re.search(r"\bworkload=(\S+)", self["workload"])
        return m.group(1).split(",") if m else []

    @property
    def has_disk(self):
        """The guest kit's disk workload (alone or beside a memory one) needs a disk."""
        return "disk" in self.workloads

    @property
    def has_net(self):
        """The guest kit's UDP echo (alone or beside a memory one), for the net-* ops."""
        return "net" in self.workloads

    def _opt(self, key, default):
        m = re.search(rf"\b{key}=(\S+)", self["workload"])
        return m.group(1) if m else default

    @property
    def disk_blocks(self):
        """The guest kit's disk working set in 512-byte blocks (its default 1024)."""
        return int(self._opt("disk_blocks", "1024"))

    @property
    def disk_write(self):
        """Percent of visited blocks the guest rewrites (its default 50)."""
        return int(self._opt("disk_write", "50"))

    @property
    def disk_random(self):
        return self._opt("disk_pattern", "seq") == "random"

    @property
    def link_bits(self):
        """Shaped rate in bits/s, or None for loopback / unshaped veth / no link."""
        if self["link"] in ("-", "loopback", "veth"):
            return None
        return parse_link_rate(self["link"])

    @property
    def bandwidth_bytes(self):
        return None if self["bandwidth"] == "-" else parse_size(self["bandwidth"])

    @property
    def nconnections(self):
        return 1 if self["connections"] == "-" else int(self["connections"])

    @property
    def downtime(self):
        return None if self["downtime_ms"] == "-" else int(self["downtime_ms"])

    def warmup(self):
        """Seconds to let the workload run before the operation."""
        if self["warmup_s"] != "auto":
            return float(self["warmup_s"])
        pages = self.wss_bytes // 4096
        if self.kind == "dirty" and pages:
            # ~60k pages/s per vCPU on this machine's emulated guests
            rate = self.dirty_rate or 60000 * int(self["cpus"])
            return min(1.0 + pages / rate, 30.0)
        return 0.5


def load(path=DEFAULT_FILE):
    rows = []
    header = None
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            cells = [c.strip() for c in line.split("\t")]
            if header is None:
                header = cells
                missing = [c for c in COLUMNS if c not in header]
                if missing:
                    raise ValueError(f"{path}: header lacks columns {missing}")
                continue
            short = len(header) - len(cells)
            if short > 0 and all(c in OPTIONAL for c in header[len(cells):]):
                cells += ["-"] * short
            if len(cells) != len(header):
                raise ValueError(f"{path}:{lineno}: {len(cells)} cells, header has {len(header)}")
            sc = Scenario(zip(header, cells))
            for c in OPTIONAL:
                sc.setdefault(c, "-")
            validate(sc, f"{path}:{lineno}")
            rows.append(sc)
    names = [s["name"] for s in rows]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ValueError(f"{path}: duplicate scenario names {sorted(dup)}")
    return rows


def validate(sc, where):
    if sc["op"] not in OPS:
        raise ValueError(f"{where}: op must be one of {OPS}")
    sc.memory_bytes  # noqa: B018 - raises on a bad size
    if not 1 <= int(sc["cpus"]) <= 8:
        raise ValueError(f"{where}: cpus out of range")
    if sc["op"] in MIGRATE_OPS + ("net-live", "net-rate"):
        if sc["link"] == "-":
            raise ValueError(f"{where}: migration needs a link")
        sc.link_bits  # noqa: B018
    if sc["op"] == "snapshot-restore" and sc["restore"] not in ("lazy", "eager"):
        raise ValueError(f"{where}: restore must be lazy or eager")
    if sc["op"].startswith("net-") and (not sc.has_net or sc["link"] == "loopback"):
        raise ValueError(f"{where}: network scenarios need the guest kit's net workload and "
                         "a link between namespaces (veth or a rate)")
    if sc["op"] in ("live-migrate", "net-live") and sc.downtime is None:
        raise ValueError(f"{where}: live migration needs a downtime target")
    sc.bandwidth_bytes  # noqa: B018
    if sc["on_stall"] not in ("-", "throttle", "pause", "cancel"):
        raise ValueError(f"{where}: on_stall must be -, throttle, pause or cancel")
    if sc["tls"] not in ("-", "x509"):
        raise ValueError(f"{where}: tls must be - or x509")
    if sc["op"] == "disk-io" and not sc.has_disk:
        raise ValueError(f"{where}: disk-io needs the disk workload (workload=disk ...)")
    if sc["tls"] != "-" and sc["op"] not in MIGRATE_OPS:
        raise ValueError(f"{where}: tls applies to migrations only")
    if not re.fullmatch(r"-|none|(zstd|auto)(:\d+)?", sc["compress"]):
        raise ValueError(f"{where}: compress must be -, none, zstd[:LEVEL] or auto[:LEVEL]")
    if sc["connections"] != "-" and not (sc["connections"].isdigit() and
                                         1 <= int(sc["connections"]) <= 16):
        raise ValueError(f"{where}: connections must be - or 1 to 16")
    if not re.fullmatch(r"-|none|xbzrle(:\d+[KMGT]?)?", sc["delta"]):
        raise ValueError(f"{where}: delta must be -, none or xbzrle[:CACHE_SIZE]")
    if sc["delta"] not in ("-", "none") and sc["op"] != "live-migrate":
        raise ValueError(f"{where}: delta applies to live migrations only")
    if (sc["compress"], sc["connections"]) != ("-", "-") and \
            sc["op"] not in ("warm-migrate", "live-migrate"):
        raise ValueError(f"{where}: compress and connections apply to migrations only")


def select(rows, names, quick):
    if names:
        out = []
        for pat in names:
            hit = [r for r in rows if fnmatch.fnmatchcase(r["name"], pat)]
            if not hit:
                raise ValueError(f"no scenario matches {pat!r} (see bench/scenarios.tsv)")
            out.extend(h for h in hit if h not in out)
        return out
    want = "quick" if quick else "full"
    return [r for r in rows if r["set"] == want]
