#!/usr/bin/env python3
"""Post-copy over mutual TLS between two hosts on a 1 Gbit/s link. Pure post-copy (with the
remainder capped so the guest must ask for pages while they stream: requests and pages
share one TLS session from two threads on each side) and the hybrid (--postcopy-after 2)
move abcheck guests; every check after the switch is ok and both sides report TLS 1.3 and
the authenticated peer. A link cut after the switch pauses both sides; the destination
listens again requiring TLS: a plaintext source trying to resume there is refused by name
and a source with another CA's certificate is refused, each leaving both sides paused;
then `migrate --resume` with no TLS option reconnects over TLS with the credentials the move
started with and completes it."""
import os
import struct
import subprocess
import sys
import threading
import time

import gwstate
import gwtest
import test_postcopy as pc

HERE = os.path.dirname(os.path.abspath(__file__))
MAKE_CERTS = os.path.join(HERE, "..", "..", "scripts", "make-certs")
HELLO = 0x100
CLIENT, SERVER = "CN=godwit-client", "CN=godwit-server"

# a plaintext source: stream header and HELLO (mode 4: resume), then whatever comes back
PLAIN_RESUME = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20)
s.sendall(bytes.fromhex(sys.argv[3]))
got = b""
try:
    while True:
        b = s.recv(65536)
        if not b:
            break
        got += b
except OSError:
    pass
sys.stdout.write(got.decode("latin-1"))
"""


def certs(env, name, *opts):
    d = env.path(name)
    subprocess.run([MAKE_CERTS, *opts, d], check=True, capture_output=True)
    return d


def tls_checked(st, peer, what):
    tls = st.get("tls")
    assert tls and tls["version"] == "TLSv1.3" and tls["peer"] == peer, f"{what}: {st}"


def plaintext_resume(hosts, port, dst):
    """A source without TLS tries to resume: the destination answers with a plaintext REFUSE
    naming TLS, logs it, and stays paused for the real source."""
    hello = pc.rec(HELLO, struct.pack("<IIQ", gwstate.PROTOCOL, 4, 0))
    n = dst.stderr().count("a resume attempt failed")
    p = subprocess.run(["ip", "netns", "exec", hosts.src, sys.executable, "-c", PLAIN_RESUME,
                        hosts.dst_ip, str(port), (gwstate.header(kind=2) + hello).hex()],
                       capture_output=True, text=True, timeout=60)
    assert "requires TLS" in p.stdout, f"the plaintext source was not told: {p.stdout!r}"
    deadline = time.monotonic() + 20
    while dst.stderr().count("a resume attempt failed") == n:
        assert time.monotonic() < deadline, dst.stderr()[-1500:]
        time.sleep(0.1)
    last = dst.stderr().split("a resume attempt failed")[-1]
    assert "plaintext migration stream" in last and "requires TLS" in last, last[:500]
    ms = pc.mstatus(dst)
    assert ms["state"] == "postcopy-paused" and ms["pages_remaining"] > 0, ms


def link_cut(env, hosts, good, other):
    port = 4482
    uri = f"tcp:{hosts.dst_ip}:{port}"
    src = gwtest.start_source(env, "cut-src", memory="256M", cmdline=pc.AB, netns=hosts.src)
    dst = gwtest.start_dest(env, "cut-dst", uri, netns=hosts.dst, tls=["--tls-dir", good])
    src.wait_line(r"^check ok 2$", timeout=120)
    out = {}

    def run():
        out["rc"], _, out["err"] = gwtest.migrate(src, uri, "--mode", "postcopy", "--bandwidth",
                                                  "8M", "--tls-dir", good, check=False)
    t = threading.Thread(target=run)
    t.start()
    deadline = time.monotonic() + 120
    st = pc.mstatus(src)
    while not (st["phase"] == "postcopy" and st["pages_remaining"] > 0):
        assert time.monotonic() < deadline, f"never switched to post-copy: {st}"
        time.sleep(0.05)
        st = pc.mstatus(src)
    hosts.link(False)
    t.join(120)
    assert out["rc"] != 0 and "--resume" in out["err"], out
    assert pc.mstatus(src)["state"] == "postcopy-paused"
    ms = pc.wait_state(dst, "postcopy-paused", 60)
    assert ms["state"] == "postcopy-paused" and ms["pages_remaining"] > 0, ms
    hosts.link(True)
    plaintext_resume(hosts, port, dst)
    # a source with another CA's certificate: refused, and both sides stay paused
    rc, _, err = gwtest.migrate(src, uri, "--resume", "--tls-dir", other, check=False)
    assert rc != 0 and "certificate was refused" in err, err
    st = pc.mstatus(src)
    assert st["state"] == "postcopy-paused" and st["pages_remaining"] > 0, st
    assert src.status()["state"] == "handed-over", src.status()
    assert pc.mstatus(dst)["state"] == "postcopy-paused"
    # no TLS option: the resume goes over TLS with the credentials the move started with
    _, res, _ = gwtest.migrate(src, uri, "--resume")
    assert res["state"] == "completed" and res["pages_remaining"] == 0, res
    tls_checked(res, SERVER, "resumed (source)")
    assert src.wait_exit() == 0
    ms = pc.wait_state(dst, "completed")
    assert ms["state"] == "completed" and ms["pages_remaining"] == 0, ms
    tls_checked(ms, CLIENT, "resumed (destination)")
    gwtest.check_moved(src, dst, "TLS link cut and resumed", abcheck=True)
    dst.ctl("stop")
    assert dst.wait_exit() == 0


def test(env):
    if not os.path.exists("/dev/userfaultfd") and os.geteuid() != 0:
        print("SKIP: post-copy needs userfaultfd (root or /dev/userfaultfd)")
        raise SystemExit(77)
    os.environ["GODWIT_MIGRATION_IO_TIMEOUT_MS"] = "3000"
    hosts = gwtest.Hosts(env, rate="1gbit")
    san = ("--san", f"IP:{hosts.dst_ip}")
    good = certs(env, "good", *san)
    other = certs(env, "other", *san)
    tls = ["--tls-dir", good]
    for name, port, opts, faults in (
            # capped: the guest faults while the remainder streams, over one TLS session
            ("tls-pure", 4480, ("--mode", "postcopy", "--bandwidth", "16M"), True),
            ("tls-after2", 4481, ("--postcopy-after", "2", "--downtime-ms", "1"), False)):
        res, ms = pc.move(env, hosts, name, port, opts + tuple(tls), faults=faults, tls=tls)
        tls_checked(res, SERVER, f"{name} (source)")
        tls_checked(ms, CLIENT, f"{name} (destination)")
    link_cut(env, hosts, good, other)


gwtest.main(test)
