#!/usr/bin/env python3
"""Boot the guest kit with 1 and 2 vCPUs: ready line, heartbeats, status, pause, resume, stop."""
import time

import gwtest


def boot_cycle(env, cpus):
    vm = env.vm(f"boot{cpus}", cpus=cpus, memory="128M")
    vm.wait_line(rf"^godwit-guest ready cpus={cpus}$", timeout=30)
    i, _ = vm.wait_line(r"^hb 50$", timeout=30)
    vm.wait_socket()

    st = vm.status()
    assert st["name"] == f"boot{cpus}", st
    assert st["state"] == "running", st
    assert st["memory"] == 128 << 20, st
    assert st["vcpus"] == cpus, st
    assert st["uptime_ms"] > 0, st

    # pause returns only once every vCPU is out of KVM_RUN: no more output after it
    vm.ctl("pause")
    time.sleep(0.2)  # drain lines already in the pipe
    n = vm.line_count()
    last = vm.heartbeats()[-1]
    assert vm.status()["state"] == "paused"
    time.sleep(1.0)
    assert vm.line_count() == n, f"output continued while paused: {vm.lines[n:][:5]}"

    vm.ctl("resume")
    assert vm.status()["state"] == "running"
    vm.wait_line(rf"^hb {last + 20}$", timeout=30, start=n)
    gwtest.check_seq_continuous(vm.heartbeats(), f"{cpus} vCPUs")
    assert vm.heartbeats(n)[0] == last + 1

    vm.ctl("stop")
    rc = vm.wait_exit()
    assert rc == 0, f"godwit run exited {rc} after stop: {vm.stderr()}"


def test(env):
    boot_cycle(env, 1)
    boot_cycle(env, 2)


gwtest.main(test)
