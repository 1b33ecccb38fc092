#!/usr/bin/env python3
"""The abcheck guest runs several passes with only `check ok`, on 1 and 2 vCPUs."""
import gwtest


def test(env):
    for cpus in (1, 2):
        vm = env.vm(f"ab{cpus}", cpus=cpus, memory="128M", cmdline="workload=abcheck wss=8M")
        vm.wait_line(rf"^godwit-guest ready cpus={cpus}$")
        vm.wait_line(r"^check ok 3$", timeout=120)
        fails = [t for _, t in vm.lines if t.startswith("check fail")]
        assert not fails, fails[:5]
        gwtest.check_seq_continuous(vm.heartbeats(), "abcheck")
        vm.ctl("stop")
        assert vm.wait_exit() == 0


gwtest.main(test)
