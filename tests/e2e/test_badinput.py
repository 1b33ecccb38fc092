#!/usr/bin/env python3
"""Bad input gets a one-line error naming the problem and a non-zero exit; bad API
requests get an error response while the VM keeps running."""
import json
import os
import struct
import subprocess

import gwtest


def run_fails(env, args, expect, extra_env=None):
    e = dict(os.environ, **(extra_env or {}))
    p = subprocess.run([env.godwit, *args], capture_output=True, text=True, timeout=30,
                       env=e)
    assert p.returncode != 0, f"godwit {args} succeeded: {p.stdout} {p.stderr}"
    err = p.stderr.strip()
    assert expect in err, f"godwit {args}: expected {expect!r} in error, got {err!r}"
    assert len(err.splitlines()) == 1, f"godwit {args}: not a one-line error: {err!r}"


def test(env):
    sock = env.path("x.sock")
    base = ["run", "--memory", "64M", "--kernel", env.guest, "--api-socket", sock]
    run_fails(env, ["frobnicate"], "unknown command")
    run_fails(env, [*base, "--bogus"], "unknown option --bogus")
    run_fails(env, ["run", "--memory", "lots", "--kernel", env.guest, "--api-socket", sock],
              "--memory lots")
    run_fails(env, ["run", "--memory", "0", "--kernel", env.guest, "--api-socket", sock],
              "--memory 0")
    run_fails(env, ["run", "--memory", "99999999G", "--kernel", env.guest, "--api-socket",
                    sock], "--memory")
    run_fails(env, [*base, "--cpus", "65"], "--cpus 65")
    run_fails(env, [*base, "--cpus", "0"], "--cpus 0")
    run_fails(env, [*base, "--serial", "tty"], "--serial tty")
    run_fails(env, ["run", "--memory", "64M", "--api-socket", sock], "--kernel")
    run_fails(env, ["run", "--memory", "64M", "--kernel", env.guest], "--api-socket")
    run_fails(env, ["run", "--memory", "64M", "--kernel", env.path("nope"), "--api-socket",
                    sock], "nope")
    notpvh = env.path("notpvh")
    with open(notpvh, "wb") as f:
        f.write(b"\x7fELF" + b"\0" * 200)
    run_fails(env, ["run", "--memory", "64M", "--kernel", notpvh, "--api-socket", sock],
              "kernel")
    run_fails(env, ["run", "--memory", "64M", "--kernel", "/bin/true", "--api-socket", sock],
              "not an ELF executable")
    # the guest kit with its PVH entry note turned into another note type
    with open(env.guest, "rb") as f:
        img = f.read()
    note = struct.pack("<III", 4, 4, 18) + b"Xen\0"
    assert img.count(note) == 1
    nopvh = env.path("nopvh.elf")
    with open(nopvh, "wb") as f:
        f.write(img.replace(note, struct.pack("<III", 4, 4, 19) + b"Xen\0"))
    run_fails(env, ["run", "--memory", "64M", "--kernel", nopvh, "--api-socket", sock],
              "no PVH entry note")
    run_fails(env, ["run", "--memory", "64M", "--kernel", env.guest, "--api-socket",
                    env.path("no/such/dir/x.sock")], "no/such/dir")
    run_fails(env, ["run", "--memory", "64M", "--kernel", env.guest, "--api-socket",
                    env.path("s" * 120)], "too long")
    run_fails(env, base, "/nonexistent/kvm", {"GODWIT_KVM_DEVICE": "/nonexistent/kvm"})
    run_fails(env, ["migrate", "--api-socket", sock, "--mode", "fast", "unix:/x"], "--mode fast")
    run_fails(env, ["migrate", "--api-socket", sock, "--bandwidth", "lots", "unix:/x"],
              "--bandwidth lots")
    run_fails(env, ["migrate", "--api-socket", sock, "--timeout", "86401", "unix:/x"],
              "--timeout 86401: timeout_ms must be 0 (no limit) to 86400000")
    run_fails(env, ["status"], "--api-socket")
    run_fails(env, ["status", "--api-socket", env.path("absent.sock")], "absent.sock")
    assert not os.path.exists(sock), "a failed run left its socket behind"

    # an instruction the emulator lacks: the VM stops with a report, godwit exits 1, no hang
    crash = env.vm("crash", cmdline="crash=sse")
    rc = crash.wait_exit(60)
    err = crash.stderr()
    assert rc == 1, f"guest emulation failure: exit {rc}: {err}"
    for want in ("vCPU 0", "emulation failed", "RIP 0x", "instruction bytes: 66 48 0f 6e c0"):
        assert want in err, f"crash report lacks {want!r}: {err}"
    assert not os.path.exists(crash.sock), "the crashed VM left its socket"

    # a live VM: malformed requests are answered with errors, the guest keeps running
    vm = env.vm("live")
    vm.wait_line(r"^hb 10$")
    vm.wait_socket()
    for raw, expect in [(b"this is not json\n", "json"),
                        (b"[1,2]\n", "object"),
                        (b"{}\n", "cmd"),
                        (b'{"cmd": 7}\n', "cmd"),
                        (b'{"cmd": "explode"}\n', "explode")]:
        resp = json.loads(vm.request(raw))
        assert resp["ok"] is False and expect in resp["error"].lower(), (raw, resp)
    # a second godwit on the same socket path is refused; the first keeps running
    run_fails(env, ["run", "--memory", "64M", "--kernel", env.guest, "--api-socket", vm.sock],
              "in use")
    n = vm.line_count()
    vm.wait_line(r"^hb \d+$", start=n)
    assert vm.status()["state"] == "running"
    mode = os.stat(vm.sock).st_mode & 0o777
    assert mode == 0o600, f"api socket mode {oct(mode)}"
    vm.ctl("stop")
    assert vm.wait_exit() == 0


gwtest.main(test)
