/* SPDX-License-Identifier: MIT */
/*
 * PVH entry (Xen's hvm_start_info ABI, which QEMU's -kernel also uses): 32-bit
 * protected mode, paging off, flat 4 GiB segments, EBX = start_info address.
 */
#include "arch/x86/boot.h"
#include "base/buf.h"
#include "kvm/kvm.h"

#include <errno.h>
#include <string.h>

#define HVM_START_MAGIC 0x336ec578u
#define E820_RAM 1
#define E820_RESERVED 2

/* flat GDT: null, null, 32-bit code (0x10), data (0x18) */
static const uint64_t boot_gdt[] = {
	0,
	0,
	0x00cf9b000000ffffull,
	0x00cf93000000ffffull,
};

static void boot_memmap_entry(uint8_t *p, uint64_t addr, uint64_t size, uint32_t type)
{
	le_put64(p, addr);
	le_put64(p + 8, size);
	le_put32(p + 16, type);
	le_put32(p + 20, 0);
}

int boot_pvh_info_write(uint8_t *ram, uint64_t low_size, const struct boot_ram_range *ranges,
			unsigned nranges, const char *cmdline, struct errbuf *e)
{
	uint8_t *si = ram + BOOT_START_INFO_GPA;
	uint8_t *mm = ram + BOOT_MEMMAP_GPA;
	size_t cmdlen = strlen(cmdline);
	unsigned n = 0;

	if (cmdlen >= BOOT_CMDLINE_MAX)
		return err_set(e, -E2BIG, "--cmdline is %zu bytes, the limit is %u", cmdlen,
			       BOOT_CMDLINE_MAX - 1);
	if (low_size < 2 * MiB || nranges == 0 || nranges > BOOT_MEMMAP_MAX - 2)
		return err_set(e, -EINVAL, "invalid guest memory layout for PVH boot");

	for (size_t i = 0; i < ARRAY_SIZE(boot_gdt); i++)
		le_put64(ram + BOOT_GDT_GPA + i * 8, boot_gdt[i]);

	/* conventional PC layout: RAM below 640K, the legacy hole, then the rest */
	boot_memmap_entry(mm + 24 * n++, 0, 0xa0000, E820_RAM);
	boot_memmap_entry(mm + 24 * n++, 0xa0000, 0x60000, E820_RESERVED);
	for (unsigned i = 0; i < nranges; i++) {
		uint64_t gpa = ranges[i].gpa, size = ranges[i].size;

		if (gpa == 0) {
			gpa = 0x100000;
			size -= 0x100000;
		}
		boot_memmap_entry(mm + 24 * n++, gpa, size, E820_RAM);
	}

	memcpy(ram + BOOT_CMDLINE_GPA, cmdline, cmdlen + 1);

	memset(si, 0, 0x40);
	le_put32(si + 0, HVM_START_MAGIC);
	le_put32(si + 4, 1);                 /* version 1: has the memory map */
	le_put32(si + 8, 0);                 /* flags */
	le_put32(si + 12, 0);                /* nr_modules */
	le_put64(si + 16, 0);                /* modlist_paddr */
	le_put64(si + 24, BOOT_CMDLINE_GPA); /* cmdline_paddr */
	le_put64(si + 32, 0);                /* rsdp_paddr */
	le_put64(si + 40, BOOT_MEMMAP_GPA);  /* memmap_paddr */
	le_put32(si + 48, n);                /* memmap_entries */
	return 0;
}

static void boot_seg_flat(struct kvm_segment *s, uint16_t sel, uint8_t type)
{
	*s = (struct kvm_segment){
		.base = 0,
		.limit = 0xffffffff,
		.selector = sel,
		.type = type,
		.present = 1,
		.dpl = 0,
		.db = 1,
		.s = 1,
		.l = 0,
		.g = 1,
	};
}

int boot_pvh_vcpu_setup(int vcpufd, uint32_t entry, struct errbuf *e)
{
	struct kvm_sregs sregs;
	struct kvm_regs regs;
	int ret;

	ret = kvm_ioctl(vcpufd, KVM_GET_SREGS, &sregs);
	if (ret < 0)
		return err_set(e, ret, "KVM_GET_SREGS: %s", strerror(-ret));
	boot_seg_flat(&sregs.cs, 0x10, 0xb);
	boot_seg_flat(&sregs.ds, 0x18, 0x3);
	sregs.es = sregs.fs = sregs.gs = sregs.ss = sregs.ds;
	sregs.tr = (struct kvm_segment){ .limit = 0x67, .type = 0xb, .present = 1 };
	sregs.ldt = (struct kvm_segment){ .limit = 0xffff, .type = 0x2, .present = 1 };
	sregs.gdt.base = BOOT_GDT_GPA;
	sregs.gdt.limit = sizeof(boot_gdt) - 1;
	sregs.idt.base = 0;
	sregs.idt.limit = 0;
	sregs.cr0 = 0x11; /* PE | ET */
	sregs.cr3 = 0;
	sregs.cr4 = 0;
	sregs.efer = 0;
	ret = kvm_ioctl(vcpufd, KVM_SET_SREGS, &sregs);
	if (ret < 0)
		return err_set(e, ret, "KVM_SET_SREGS: %s", strerror(-ret));

	memset(&regs, 0, sizeof(regs));
	regs.rip = entry;
	regs.rbx = BOOT_START_INFO_GPA;
	regs.rflags = 0x2;
	ret = kvm_ioctl(vcpufd, KVM_SET_REGS, &regs);
	if (ret < 0)
		return err_set(e, ret, "KVM_SET_REGS: %s", strerror(-ret));
	return 0;
}
