#!/usr/bin/env python3
"""Migration over TLS between the two test hosts and over loopback: mutual X.509 and PSK
migrations succeed with abcheck and heartbeats going on; each bad credential (another CA,
expired or not-yet-valid certificates, a wrong name, no client certificate, a wrong PSK),
a plaintext peer on a TLS listener and the reverse, a peer that stalls in the handshake,
a flipped byte and a cut link are refused or fail with a message naming the cause while
the source keeps running; a TLS destination keeps waiting for the real source after each
refusal, having grown by nothing while an unauthenticated peer sent a huge RANGES claim;
plaintext tcp on a non-loopback address needs --insecure; a group-readable key is refused."""
import json
import os
import re
import struct
import subprocess
import sys
import threading
import time

import gwstate
import gwtest

HERE = os.path.dirname(os.path.abspath(__file__))
MAKE_CERTS = os.path.join(HERE, "..", "..", "scripts", "make-certs")
PROXY = os.path.join(HERE, "gwproxy.py")
IO_TIMEOUT = {"GODWIT_MIGRATION_IO_TIMEOUT_MS": "3000"}
AB = "workload=abcheck wss=8M"


def certs(env, name, *opts):
    d = env.path(name)
    subprocess.run([MAKE_CERTS, *opts, d], check=True, capture_output=True)
    return d


def psk_file(env, name, key, mode=0o600):
    path = env.path(name)
    with open(path, "w") as f:
        f.write(f"# test key\ngodwit:{key}\n")
    os.chmod(path, mode)
    return path


def refused(src, uri, opts, expect, what, started=True):
    """migrate fails with a message matching expect; the guest keeps running here.
    started=False: refused before a migration began (bad local credentials)."""
    rc, _, err = gwtest.migrate(src, uri, "--mode", "warm", *opts, check=False, timeout=60)
    assert rc != 0, f"{what}: migrate succeeded"
    assert re.search(expect, err, re.I), f"{what}: expected /{expect}/ in {err!r}"
    assert not started or "keeps running here" in err, f"{what}: {err!r}"
    gwtest.check_kept(src, what, started)
    return err


def dest_says(dst, expect, what, timeout=20):
    """The destination logged expect about a refused peer and still waits for the source."""
    deadline = time.monotonic() + timeout
    while not re.search(expect, dst.stderr(), re.I):
        assert time.monotonic() < deadline, \
            f"{what}: the destination did not log /{expect}/: {dst.stderr()[-2000:]}"
        time.sleep(0.1)
    assert dst.proc.poll() is None, f"{what}: the destination exited: {dst.stderr()[-2000:]}"
    assert dst.status()["state"] == "incoming", what
    ms = json.loads(dst.ctl("migrate-status")[1])
    assert ms["state"] == "none" and "refused" in ms.get("error", ""), f"{what}: {ms}"


def in_ns(ns, code, *args):
    """Runs python code inside network namespace ns (a peer on the test's own link)."""
    return subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", code, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def vm_rss_kib(vm):
    with open(f"/proc/{vm.proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


record = gwstate.record


SEND = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
data = open(sys.argv[3], "rb").read()
try:
    s.sendall(data)
    s.shutdown(socket.SHUT_WR)
    s.recv(65536)
except OSError:
    pass
"""

STALL = """
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
s.sendall(bytes.fromhex("160301020001"))  # the start of a ClientHello, then nothing
time.sleep(float(sys.argv[3]))
"""

SILENT_SERVER = """
import socket, sys, time
ls = socket.socket()
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind((sys.argv[1], int(sys.argv[2])))
ls.listen(1)
print("listening", flush=True)
c, _ = ls.accept()
time.sleep(float(sys.argv[3]))  # accepts, then answers nothing
"""


def unauthenticated_flood(env, hosts, dst, port):
    """A peer without credentials sends HELLO and a RANGES record claiming 256 GiB, then
    32 MiB more, in plaintext and as TLS-shaped junk: the destination grows by nothing."""
    hello = record(0x100, struct.pack("<IIQ", 1, 2, 0))
    nranges = (256 << 30) >> 21
    ranges = record(0x10a, struct.pack("<Q", nranges) + b"\xff" * (nranges // 8))
    plain = env.path("flood-plain.bin")
    with open(plain, "wb") as f:
        f.write(gwstate.header(kind=2) + hello + ranges + b"\xa5" * (32 << 20))
    tlsish = env.path("flood-tls.bin")
    with open(tlsish, "wb") as f:
        f.write(b"\x16\x03\x01\xff\xff" + b"\xa5" * (32 << 20))
    before = vm_rss_kib(dst)
    for path, expect in ((plain, "plaintext migration stream"), (tlsish, "TLS handshake")):
        n = dst.stderr().count("refused a connection")
        p = in_ns(hosts.src, SEND, hosts.dst_ip, str(port), path)
        p.communicate(timeout=60)
        deadline = time.monotonic() + 20
        while dst.stderr().count("refused a connection") == n:
            assert time.monotonic() < deadline, f"flood not refused: {dst.stderr()[-1500:]}"
            time.sleep(0.1)
        assert expect in dst.stderr().split("refused a connection")[-1], dst.stderr()[-1500:]
    after = vm_rss_kib(dst)
    assert after - before < 16 << 10, \
        f"the destination grew from {before} to {after} KiB for an unauthenticated peer"
    assert dst.status()["state"] == "incoming"


def tls_checked(res, peer, what):
    tls = res.get("tls")
    assert tls, f"{what}: no TLS in {res}"
    assert tls["offload"] in ("kernel", "userspace") and tls["version"] == "TLSv1.3", tls
    assert tls["cipher"].startswith("TLS_"), tls
    assert tls["peer"] == peer, f"{what}: peer {tls['peer']!r}, expected {peer!r}"


def moved(src, dst, uri, opts, mode, what, src_peer, dst_peer):
    _, res, _ = gwtest.migrate(src, uri, "--mode", mode, *opts)
    assert src.wait_exit() == 0
    tls_checked(res, dst_peer, f"{what} (source)")
    tls_checked(json.loads(dst.ctl("migrate-status")[1]), src_peer, f"{what} (destination)")
    gwtest.check_moved(src, dst, what, abcheck=True)
    dst.ctl("stop")
    assert dst.wait_exit() == 0


def proxied_fault(env, hosts, good, mode, port):
    """A man in the middle flips or drops the source's bytes once 1 MiB has passed: TLS
    (not the record CRC) catches the flip; the source keeps running, nothing ran there."""
    uri = f"tcp:{hosts.dst_ip}:{port}"
    src = gwtest.start_source(env, f"{mode}-src", cpus=2, cmdline=AB, netns=hosts.src)
    src.wait_line(r"^check ok 1$", timeout=120)
    dst = gwtest.start_dest(env, f"{mode}-dst", uri, netns=hosts.dst, tls=["--tls-dir", good])
    p = subprocess.Popen(["ip", "netns", "exec", hosts.src, sys.executable, PROXY,
                          f"127.0.0.1:{port + 100}", f"{hosts.dst_ip}:{port}", f"{mode}:1048576"],
                         stdout=subprocess.PIPE, text=True,
                         env=dict(os.environ, PYTHONPATH=HERE))
    assert p.stdout.readline().strip() == "listening"
    rc, _, err = gwtest.migrate(src, f"tcp:127.0.0.1:{port + 100}", "--mode", "warm",
                                "--bandwidth", "8M", "--tls-dir", good, "--tls-hostname",
                                hosts.dst_ip, check=False, timeout=120)
    assert p.stdout.readline().strip() == "injected", f"{mode}: nothing injected"
    p.kill()
    p.wait()
    assert rc != 0, f"{mode}: migrate succeeded"
    gwtest.check_kept(src, mode)
    gwtest.check_refused(dst, mode)
    if mode == "rawflip":
        assert re.search(r"TLS: .*(bad record mac|decryption failed)", dst.stderr()), \
            dst.stderr()[-1500:]
    src.ctl("stop")
    src.wait_exit()


def test(env):
    os.environ.update(IO_TIMEOUT)
    hosts = gwtest.Hosts(env)
    san = ("--san", f"IP:{hosts.dst_ip},IP:127.0.0.1,DNS:localhost")
    good = certs(env, "good", *san)
    other = certs(env, "other", *san)
    expired = certs(env, "expired", "--ca", good, "--expired", *san)
    future = certs(env, "future", "--ca", good, "--not-yet-valid", *san)
    nocert = env.path("nocert")
    os.mkdir(nocert)
    with open(os.path.join(good, "ca-cert.pem")) as f, \
            open(os.path.join(nocert, "ca-cert.pem"), "w") as g:
        g.write(f.read())

    # secure by default: plaintext tcp off loopback needs --insecure; keys must be private
    rc, _, err = env.ctl("run", "--incoming", "tcp:0.0.0.0:4460", "--api-socket",
                         env.path("x.sock"), check=False)
    assert rc != 0 and "--insecure" in err and "--tls-dir" in err, err
    loose = certs(env, "loose", "--ca", good, *san)
    os.chmod(os.path.join(loose, "server-key.pem"), 0o640)
    rc, _, err = env.ctl("run", "--incoming", "tcp:127.0.0.1:4460", "--tls-dir", loose,
                         "--api-socket", env.path("x.sock"), check=False)
    assert rc != 0 and "accessible by group or others" in err, err
    rc, _, err = env.ctl("run", "--incoming", "tcp:127.0.0.1:4460", "--tls-psk",
                         psk_file(env, "loose.psk", "ab" * 32, 0o644), "--api-socket",
                         env.path("x.sock"), check=False)
    assert rc != 0 and "accessible by group or others" in err, err

    # one source, one TLS destination: every bad peer is refused, the real one gets in
    uri = f"tcp:{hosts.dst_ip}:4450"
    src = gwtest.start_source(env, "src", cpus=2, cmdline=AB, netns=hosts.src)
    src.wait_line(r"^check ok 1$", timeout=120)
    os.chmod(os.path.join(loose, "client-key.pem"), 0o604)
    refused(src, uri, ["--tls-dir", loose], "accessible by group or others", "loose client key",
            started=False)
    dst = gwtest.start_dest(env, "dst", uri, netns=hosts.dst, tls=["--tls-dir", good])
    refused(src, uri, ["--tls-dir", other], r"certificate was refused: (self-signed certificate "
            r"in certificate chain|unable to get local issuer)", "another CA")
    dest_says(dst, "unknown ca", "another CA")
    refused(src, uri, ["--tls-dir", good, "--tls-hostname", "elsewhere.example"],
            "certificate was refused: hostname mismatch", "wrong name")
    refused(src, uri, ["--tls-dir", nocert], "certificate required|refused this source",
            "no client certificate")
    dest_says(dst, "peer did not return a certificate", "no client certificate")
    refused(src, uri, ["--tls-dir", expired], "certificate (expired|required)|refused this source",
            "expired client certificate")
    dest_says(dst, "source's certificate was refused: certificate has expired", "expired")
    refused(src, uri, ["--tls-dir", future], "bad certificate|refused this source",
            "client certificate not yet valid")
    dest_says(dst, "certificate is not yet valid", "not yet valid")
    refused(src, uri, [], "refused the migration: .*requires TLS", "plaintext source")
    dest_says(dst, "plaintext migration stream", "plaintext source")
    p = in_ns(hosts.src, STALL, hosts.dst_ip, "4450", "6")
    dest_says(dst, "stalled|took longer than its deadline", "stalled handshake")
    p.kill()
    p.wait()
    unauthenticated_flood(env, hosts, dst, 4450)

    # the destination's certificate is checked too
    for port, name, d, expect in (
            (4451, "dst-expired", expired, "certificate has expired"),
            (4452, "dst-future", future, "certificate is not yet valid"),
            (4453, "dst-other", other, "self-signed certificate in certificate chain|"
                                       "unable to get local issuer"),
            # the address the source dialled must be one of the certificate's IP SANs
            (4454, "dst-noip", certs(env, "noip", "--ca", good, "--san", "DNS:localhost"),
             "IP address mismatch")):
        bad = gwtest.start_dest(env, name, f"tcp:{hosts.dst_ip}:{port}", netns=hosts.dst,
                                tls=["--tls-dir", d])
        refused(src, f"tcp:{hosts.dst_ip}:{port}", ["--tls-dir", good],
                f"destination's certificate was refused: ({expect})", name)
        bad.kill()
    # a destination that accepts and then says nothing
    p = in_ns(hosts.dst, SILENT_SERVER, hosts.dst_ip, "4459", "20")
    assert p.stdout.readline().strip() == "listening"
    refused(src, f"tcp:{hosts.dst_ip}:4459", ["--tls-dir", good], "stalled", "silent destination")
    p.kill()
    p.wait()
    # a TLS source on a plaintext listener: named on both sides; that destination gives up
    plain = gwtest.start_dest(env, "plain", f"tcp:{hosts.dst_ip}:4458", netns=hosts.dst)
    refused(src, f"tcp:{hosts.dst_ip}:4458", ["--tls-dir", good], "listening without TLS",
            "TLS source, plaintext destination")
    assert plain.wait_exit(30) != 0
    assert "started a TLS handshake" in plain.stderr(), plain.stderr()[-1500:]

    # after all that, the real source: live, between the hosts, abcheck and heartbeats go on
    moved(src, dst, uri, ["--tls-dir", good, "--bandwidth", "8M"], "live", "tls-live",
          "CN=godwit-client", "CN=godwit-server")

    # PSK over loopback: a wrong key is refused, the right one migrates (warm)
    key = "0123456789abcdef" * 4
    src = gwtest.start_source(env, "psk-src", cpus=2, cmdline=AB)
    src.wait_line(r"^check ok 1$", timeout=120)
    dst = gwtest.start_dest(env, "psk-dst", "tcp:127.0.0.1:47461",
                            tls=["--tls-psk", psk_file(env, "good.psk", key)])
    refused(src, "tcp:127.0.0.1:47461", ["--tls-psk", psk_file(env, "bad.psk", "ff" + key[2:])],
            "PSK identity or key does not match", "wrong PSK")
    dest_says(dst, "PSK identity or key does not match", "wrong PSK")
    moved(src, dst, "tcp:127.0.0.1:47461", ["--tls-psk", env.path("good.psk")], "warm",
          "psk-warm", "psk:godwit", "psk:godwit")

    # X.509 over loopback, warm
    src = gwtest.start_source(env, "lo-src", cpus=1, cmdline=AB)
    src.wait_line(r"^check ok 1$", timeout=120)
    refused(src, f"unix:{env.path('none.mig')}", ["--tls-dir", good], "give tls_hostname",
            "unix socket without a name to check", started=False)
    dst = gwtest.start_dest(env, "lo-dst", "tcp:127.0.0.1:47462", tls=["--tls-dir", good])
    moved(src, dst, "tcp:127.0.0.1:47462", ["--tls-dir", good], "warm", "tls-warm-loopback",
          "CN=godwit-client", "CN=godwit-server")

    # on the wire: a flipped byte is caught by TLS, a cut link fails; the source keeps running
    proxied_fault(env, hosts, good, "rawflip", 4470)
    proxied_fault(env, hosts, good, "rawcut", 4471)


gwtest.main(test)
