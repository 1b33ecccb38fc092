"""Two hosts on one machine: network namespaces joined by a veth pair.

    <src ns>  veth 10.99.0.1/24  <====>  10.99.0.2/24 veth  <dst ns>

Shaped links put a tc tbf qdisc on both veth ends.  "loopback" scenarios run
both VMMs inside the source namespace and use its own 127.0.0.1, so the lo
byte counters see nothing but the migration.  Names carry the harness's pid,
so two harnesses never share a namespace; namespaces left by a harness that
died are removed at the next start.
"""
import json
import os
import re

from .util import log, parse_link_rate, run

SRC_ADDR = "10.99.0.1"
DST_ADDR = "10.99.0.2"
PREFIX = "gwb-"


class Net:
    def __init__(self):
        tag = str(os.getpid())
        self.src = f"{PREFIX}src-{tag}"
        self.dst = f"{PREFIX}dst-{tag}"
        self.vsrc = f"gwbs{tag}"[:15]
        self.vdst = f"gwbd{tag}"[:15]
        self.up = False
        self.shaped = None

    # -- setup / teardown --------------------------------------------------
    @staticmethod
    def remove_stale():
        r = run(["ip", "netns", "list"], timeout=10)
        for line in r.stdout.splitlines():
            name = line.split()[0] if line.split() else ""
            m = re.match(rf"^{PREFIX}(?:src|dst)-(\d+)$", name)
            if m and not os.path.exists(f"/proc/{m.group(1)}"):
                log(f"removing stale namespace {name}")
                run(["ip", "netns", "del", name], timeout=10)

    def setup(self):
        self.remove_stale()
        cmds = [
            ["ip", "netns", "add", self.src],
            ["ip", "netns", "add", self.dst],
            ["ip", "link", "add", self.vsrc, "type", "veth", "peer", "name", self.vdst],
            ["ip", "link", "set", self.vsrc, "netns", self.src],
            ["ip", "link", "set", self.vdst, "netns", self.dst],
            ["ip", "-n", self.src, "addr", "add", f"{SRC_ADDR}/24", "dev", self.vsrc],
            ["ip", "-n", self.dst, "addr", "add", f"{DST_ADDR}/24", "dev", self.vdst],
            ["ip", "-n", self.src, "link", "set", "lo", "up"],
            ["ip", "-n", self.dst, "link", "set", "lo", "up"],
            ["ip", "-n", self.src, "link", "set", self.vsrc, "up"],
            ["ip", "-n", self.dst, "link", "set", self.vdst, "up"],
        ]
        self.up = True
        for c in cmds:
            run(c, timeout=20, check=True)
        log(f"namespaces {self.src} ({SRC_ADDR}) and {self.dst} ({DST_ADDR}) joined by veth")

    def teardown(self):
        if not self.up:
            return
        for ns in (self.src, self.dst):
            run(["ip", "netns", "del", ns], timeout=20)
        self.up = False

    # -- links ---------------------------------------------------------------
    def shape(self, link):
        """Configure the veth for `link` (loopback | veth | a tc rate like 1gbit)."""
        if link == self.shaped:
            return
        for ns, dev in ((self.src, self.vsrc), (self.dst, self.vdst)):
            run(["tc", "-n", ns, "qdisc", "del", "dev", dev, "root"], timeout=10)
            if link not in ("loopback", "veth"):
                bits = parse_link_rate(link)
                # tbf needs a bucket of at least rate/HZ; 4 ms worth of the
                # rate (min 1 MiB) keeps the measured throughput at the rate.
                burst = max(1 << 20, bits // 8 // 250)
                run(["tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "tbf", "rate", link,
                     "burst", str(burst), "latency", "50ms"], timeout=10, check=True)
        self.shaped = link

    def endpoints(self, link):
        """(src_ns, dst_ns, dst_addr, counter_ns, counter_dev) for a link."""
        if link == "loopback":
            return self.src, self.src, "127.0.0.1", self.src, "lo"
        return self.src, self.dst, DST_ADDR, self.src, self.vsrc

    def tx_bytes(self, ns, dev):
        r = run(["ip", "-n", ns, "-s", "-j", "link", "show", dev], timeout=10)
        try:
            return int(json.loads(r.stdout)[0]["stats64"]["tx"]["bytes"])
        except (ValueError, KeyError, IndexError):
            return None

    def tc_desc(self, link):
        if link in ("loopback", "veth"):
            return "none"
        r = run(["tc", "-n", self.src, "qdisc", "show", "dev", self.vsrc], timeout=10)
        return r.stdout.strip()


def ns_prefix(ns):
    return ["ip", "netns", "exec", ns] if ns else []
