#!/usr/bin/env python3
"""Debian 12's cloud kernel boots under godwit as a bzImage, as an ELF vmlinux (64-bit
boot protocol: a copy with its PVH note renamed) and as a PVH ELF, each with an initrd and
2 vCPUs. Its own log must show the command line godwit passed, an e820 map equal to the
one godwit built, the initrd where godwit put it, the ACPI tables with 2 CPUs and the
IOAPIC, and godwit must not have logged the early probes (PCI config ports) as
unhandled. Bounded: each boot is stopped once those lines are there (on this host the
emulator ends the boot not much later; see MACHINE-NOTES)."""
import os
import time

import gwlinux
import gwtest

# kind, file, CPU seconds godwit may use until the kernel says "Allowing 2 CPUs": a bound
# on the guest's work, which a loaded host stretches in wall time only. Measured at load
# 15-46: bzImage (it first decompresses itself) 104 CPU s in 735 s, vmlinux and PVH 21
# CPU s in 163-184 s; the old wall bounds (180/120/120 s) would have failed all three.
KERNELS = [("bzImage", "vmlinuz", 300), ("vmlinux", "vmlinux-nopvh", 100),
           ("pvh", "vmlinux", 100)]
# wall seconds for the three boots together, against a hang only. The fetch
# (gwlinux.FETCH_S), this and the stops fit in meson's timeout (tests/e2e/meson.build), so
# the test's own bounds, with their messages, pass first.
WALL_BOUND = 1500


def boot(env, kdir, kind, fname, cpu_bound, deadline, initrd, initrd_len):
    cmdline = f"{gwlinux.CMDLINE} godwit.test={kind}"
    vm = env.vm(f"linux-{kind}", memory=f"{gwlinux.MEMORY >> 20}M", cpus=2,
                kernel=os.path.join(kdir, fname), cmdline=cmdline, extra=["--initrd", initrd])
    t0 = time.monotonic()
    vm.wait_line(r"smpboot: Allowing 2 CPUs, 0 hotplug CPUs",
                 timeout=max(1, deadline - t0), cpu_limit=cpu_bound)
    print(f"{kind}: the kernel listed 2 CPUs after {time.monotonic() - t0:.0f} s, "
          f"{vm.cpu_seconds():.0f} CPU s (bound {cpu_bound} CPU s)", flush=True)
    texts = [m for _, m in gwlinux.log_lines(vm)]
    what = f"{kind}: "

    assert f"Command line: {cmdline}" in texts, what + "no 'Command line:' with godwit's"
    assert gwlinux.e820_logged(texts) == gwlinux.e820_expected(), \
        what + f"e820 {gwlinux.e820_logged(texts)} != {gwlinux.e820_expected()}"
    # the initrd at the top of RAM, page-aligned
    start = gwlinux.MEMORY - ((initrd_len + 4095) & ~4095)
    want = f"RAMDISK: [mem 0x{start:08x}-0x{gwlinux.MEMORY - 1:08x}]"
    assert want in texts, what + f"no '{want}'"
    assert any(t.startswith("ACPI: RSDP 0x00000000000E0000") for t in texts), what + "no RSDP"
    assert any(t.startswith("ACPI: APIC ") for t in texts), what + "no MADT"
    assert any(t.startswith("IOAPIC[0]: apic_id 0, version 17, address 0xfec00000")
               for t in texts), what + "no IOAPIC from the MADT"
    assert not any("not listed by BIOS" in t for t in texts), what + "CPU not in the MADT"
    err = vm.stderr()
    assert "unhandled port" not in err, what + f"godwit logged unhandled ports: {err}"
    if vm.proc.poll() is None:
        vm.ctl("stop")
    vm.wait_exit()


def test(env):
    kdir = gwlinux.kernel_dir()
    initrd = env.path("initrd.cpio")
    n = gwlinux.make_initrd(initrd)
    deadline = time.monotonic() + WALL_BOUND
    for kind, fname, cpu_bound in KERNELS:
        boot(env, kdir, kind, fname, cpu_bound, deadline, initrd, n)


gwtest.main(test)
