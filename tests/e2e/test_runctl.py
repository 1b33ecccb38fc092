#!/usr/bin/env python3
"""Run control that nothing outside the VMM can wedge, through the real binary:
- a console reader that stops reading (a full stdout pipe) does not hold the vCPUs:
  pause, resume and stop still work, the guest keeps running, the output that did not fit
  is counted in status (console_dropped) and logged, and output flows again once read;
- a pause that times out (one vCPU held in KVM_RUN by the GODWIT_VCPU_PAUSE_DELAY_MS
  fault-injection hook) is undone: the error says so, status says running, and the guest
  really runs (heartbeats go on); a migration whose pause times out likewise fails and
  leaves the guest running;
- on a terminal, stdin's file flags (shared with the shell) are as they were after exit."""
import fcntl
import json
import os
import pty
import re
import select
import subprocess
import threading
import time

import gwtest

F_SETPIPE_SZ = 1031
FIONREAD = 0x541B


def run_args(env, name, cpus=1, cmdline="workload=idle"):
    return [env.godwit, "run", "--memory", "64M", "--cpus", str(cpus), "--kernel", env.guest,
            "--cmdline", cmdline, "--api-socket", env.path(f"{name}.sock"), "--name", name]


def ctl(env, name, *args, check=True):
    return env.ctl(args[0], "--api-socket", env.path(f"{name}.sock"), *args[1:], check=check,
                   timeout=30)


def wait_socket(env, name, proc):
    deadline = time.monotonic() + 20
    while not os.path.exists(env.path(f"{name}.sock")):
        assert proc.poll() is None, f"{name} exited {proc.returncode}"
        assert time.monotonic() < deadline, f"{name}: no api socket"
        time.sleep(0.02)


def reap(proc):
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def pipe_queued(fd):
    buf = bytearray(4)
    fcntl.ioctl(fd, FIONREAD, buf)
    return int.from_bytes(buf, "little")


def stalled_console(env):
    name = "stall"
    r, w = os.pipe()
    fcntl.fcntl(w, F_SETPIPE_SZ, 4096)  # the smallest pipe: it fills in well under a second
    err = open(env.path(f"{name}.stderr"), "w")
    proc = subprocess.Popen(run_args(env, name, cmdline="workload=idle hz=1000"),
                            stdin=subprocess.DEVNULL, stdout=w, stderr=err)
    os.close(w)
    try:
        wait_socket(env, name, proc)
        deadline = time.monotonic() + 60
        while pipe_queued(r) == 0:
            assert time.monotonic() < deadline, "the guest wrote nothing"
            time.sleep(0.05)
        # the guest writes about 9 kB/s: the one-page pipe is full within a second
        time.sleep(2)
        # nobody reads stdout now: run control must not care
        ctl(env, name, "pause")
        st = json.loads(ctl(env, name, "status")[1])
        assert st["state"] == "paused", st
        ctl(env, name, "resume")
        deadline = time.monotonic() + 60
        while st["console_dropped"] == 0:
            assert time.monotonic() < deadline, f"no output was counted as dropped: {st}"
            time.sleep(0.2)
            st = json.loads(ctl(env, name, "status")[1])
        assert st["state"] == "running", st
        # read again: the guest's output flows again, and it kept running meanwhile
        out = b""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if select.select([r], [], [], 1)[0]:
                out += os.read(r, 65536)
            seqs = [int(m) for m in re.findall(rb"hb (\d+)\n", out)]
            if any(b != a + 1 for a, b in zip(seqs, seqs[1:])):
                break
        seqs = [int(m) for m in re.findall(rb"hb (\d+)\n", out)]
        assert len(seqs) > 2 and any(b != a + 1 for a, b in zip(seqs, seqs[1:])), \
            f"expected output with a gap where bytes were dropped: {seqs[:5]}...{seqs[-5:]} " \
            f"({len(seqs)} lines, {st})"
        ctl(env, name, "stop")
        assert proc.wait(30) == 0
    finally:
        reap(proc)
        err.close()
        os.close(r)
    with open(env.path(f"{name}.stderr")) as f:
        log = f.read()
    assert "dropped" in log, f"no log line about the dropped output: {log[-2000:]}"


def pause_timeout(env):
    os.environ["GODWIT_VCPU_PAUSE_DELAY_MS"] = "1:8000"
    try:
        vm = env.vm("stuck", cpus=2, cmdline="workload=dirty wss=8M rate=0")
    finally:
        del os.environ["GODWIT_VCPU_PAUSE_DELAY_MS"]
    _, m = vm.wait_line(r"^godwit-guest ready cpus=(\d+)")
    assert m.group(1) == "2", f"the guest started {m.group(1)} vCPUs"
    vm.wait_socket()
    rc, _, err = vm.ctl("pause", check=False)
    assert rc != 0, "the pause succeeded although vCPU 1 was held in KVM_RUN"
    assert "vCPU 1 did not leave KVM_RUN" in err and "keeps running" in err, err
    assert vm.status()["state"] == "running"
    # all or nothing: vCPU 0 (the heartbeat) was resumed
    n = vm.line_count()
    vm.wait_line(r"^hb \d+$", start=n, timeout=20)
    # a migration whose pause times out fails and leaves the guest running, not half-paused
    uri = f"unix:{env.path('stuck-dst.mig')}"
    dst = gwtest.start_dest(env, "stuck-dst", uri)
    time.sleep(4)  # vCPU 1 is back in KVM_RUN (its 8 s from the first kick are over)
    rc, _, err = gwtest.migrate(vm, uri, "--mode", "warm", check=False)
    assert rc != 0 and "did not leave KVM_RUN" in err, f"migrate: {rc} {err}"
    assert vm.status()["state"] == "running"
    n = vm.line_count()
    vm.wait_line(r"^hb \d+$", start=n, timeout=20)
    assert dst.wait_exit(60) != 0 and not dst.heartbeats()
    vm.ctl("stop")
    assert vm.wait_exit(60) == 0


def terminal_flags(env):
    name = "tty"
    master, slave = pty.openpty()
    before = fcntl.fcntl(slave, fcntl.F_GETFL)
    proc = subprocess.Popen(run_args(env, name), stdin=slave, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_socket(env, name, proc)
        ctl(env, name, "status")
        ctl(env, name, "stop")
        assert proc.wait(30) == 0
    finally:
        reap(proc)
    after = fcntl.fcntl(slave, fcntl.F_GETFL)
    os.close(master)
    os.close(slave)
    assert after == before, f"the terminal's flags changed: {before:#o} -> {after:#o} " \
                            f"(O_NONBLOCK left set: {bool(after & os.O_NONBLOCK)})"


def test(env):
    terminal_flags(env)
    stalled_console(env)
    pause_timeout(env)


gwtest.main(test)
