#!/usr/bin/env python3
"""Debian 12's cloud kernel boots under godwit as a bzImage, as an ELF vmlinux (64-bit
boot protocol: a copy with its PVH note renamed) and as a PVH ELF, each with an initrd and
2 vCPUs. Its own log must show the command line godwit passed, an e820 map equal to the
one godwit built, the initrd where godwit put it, the ACPI tables with 2 CPUs and the
IOAPIC, and godwit must not have logged the early probes (PCI config ports) as
unhandled. Bounded: each boot is stopped once those lines are there (on this host the
emulator ends the boot not much later; see MACHINE-NOTES)."""
import os

import gwlinux
import gwtest

# kind, file, wall-clock bound for reaching "Allowing 2 CPUs" (a bzImage first
# decompresses itself, about a minute here)
KERNELS = [("bzImage", "vmlinuz", 180), ("vmlinux", "vmlinux-nopvh", 120),
           ("pvh", "vmlinux", 120)]


def boot(env, kdir, kind, fname, bound, initrd, initrd_len):
    cmdline = f"{gwlinux.CMDLINE} godwit.test={kind}"
    vm = env.vm(f"linux-{kind}", memory=f"{gwlinux.MEMORY >> 20}M", cpus=2,
                kernel=os.path.join(kdir, fname), cmdline=cmdline, extra=["--initrd", initrd])
    vm.wait_line(r"smpboot: Allowing 2 CPUs, 0 hotplug CPUs", timeout=bound)
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
    for kind, fname, bound in KERNELS:
        boot(env, kdir, kind, fname, bound, initrd, n)


gwtest.main(test)
