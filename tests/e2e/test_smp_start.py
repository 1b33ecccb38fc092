#!/usr/bin/env python3
"""SMP start-up, boot after boot. The guest kit starts its APs with INIT, SIPI, SIPI and
waits for them (guest/cpu.c smp_start); a clock that ran backwards when a tick landed late
once made it stop early, so that one boot in ten to three came up with fewer vCPUs
than it was given ("ready cpus=3" of 4) and parked the latecomers. Here every boot, many
times over at 4 and 16 vCPUs and twice at the maximum 64, must say `ready cpus=N` for its N
and park no AP, and status must agree."""
import gwtest

# (vCPUs, boots): the old loss (about one boot in ten here) shows in 60 boots almost surely
PLAN = [(4, 30), (16, 30), (64, 2)]


def boot(env, cpus, n):
    name = f"c{cpus}-{n}"
    vm = env.vm(name, memory="128M", cpus=cpus, cmdline="workload=idle")
    _, m = vm.wait_line(r"^godwit-guest ready cpus=(\d+)$", timeout=120)
    got = int(m.group(1))
    # a late AP parks itself with a warning just after the count: let a few ticks pass
    vm.wait_line(r"^hb 5$", timeout=60)
    vm.wait_socket()
    with vm.cond:
        warnings = [t for _, t in vm.lines if t.startswith("warning")]
    assert got == cpus, f"{name}: boot {n} at {cpus} vCPUs came up with {got}: {warnings}"
    assert not warnings, f"{name}: {warnings}"
    assert vm.status()["vcpus"] == cpus
    vm.ctl("stop")
    assert vm.wait_exit() == 0


def test(env):
    for cpus, boots in PLAN:
        for n in range(boots):
            boot(env, cpus, n)


gwtest.main(test)
