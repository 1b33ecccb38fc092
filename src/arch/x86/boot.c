/* SPDX-License-Identifier: MIT */
/*
 * The boot vCPU's entry state. PVH (Xen's hvm_start_info ABI, which QEMU's -kernel
 * also uses): 32-bit protected mode, paging off, flat 4 GiB segments, EBX = start_info.
 * Linux 64-bit entry (boot.rst): long mode with the identity-mapped page tables,
 * __BOOT_CS 0x10 and __BOOT_DS 0x18 flat, interrupts off, RSI = boot_params.
 */
#include "arch/x86/boot.h"
#include "kvm/kvm.h"

#include <errno.h>
#include <string.h>

#define CR0_PE 0x1ull
#define CR0_ET 0x10ull
#define CR0_PG 0x80000000ull
#define CR4_PAE 0x20ull
#define EFER_LME 0x100ull
#define EFER_LMA 0x400ull

static void boot_seg_flat(struct kvm_segment *s, uint16_t sel, uint8_t type, bool code64)
{
	*s = (struct kvm_segment){
		.base = 0,
		.limit = 0xffffffff,
		.selector = sel,
		.type = type,
		.present = 1,
		.dpl = 0,
		.db = !code64,
		.s = 1,
		.l = code64,
		.g = 1,
	};
}

int boot_vcpu_setup(int vcpufd, const struct boot_kernel *k, struct errbuf *e)
{
	bool lm = k->protocol == BOOT_PROTO_LINUX64;
	struct kvm_sregs sregs;
	struct kvm_regs regs;
	int ret;

	ret = kvm_ioctl(vcpufd, KVM_GET_SREGS, &sregs);
	if (ret < 0)
		return err_set(e, ret, "KVM_GET_SREGS: %s", strerror(-ret));
	boot_seg_flat(&sregs.cs, 0x10, 0xb, lm);
	boot_seg_flat(&sregs.ds, 0x18, 0x3, false);
	sregs.es = sregs.fs = sregs.gs = sregs.ss = sregs.ds;
	sregs.tr = (struct kvm_segment){ .limit = 0x67, .type = 0xb, .present = 1 };
	sregs.ldt = (struct kvm_segment){ .limit = 0xffff, .type = 0x2, .present = 1 };
	sregs.gdt.base = BOOT_GDT_GPA;
	sregs.gdt.limit = 4 * 8 - 1;
	sregs.idt.base = 0;
	sregs.idt.limit = 0;
	sregs.cr0 = CR0_PE | CR0_ET | (lm ? CR0_PG : 0);
	sregs.cr3 = lm ? BOOT_PML4_GPA : 0;
	sregs.cr4 = lm ? CR4_PAE : 0;
	sregs.efer = lm ? EFER_LME | EFER_LMA : 0;
	ret = kvm_ioctl(vcpufd, KVM_SET_SREGS, &sregs);
	if (ret < 0)
		return err_set(e, ret, "KVM_SET_SREGS: %s", strerror(-ret));

	memset(&regs, 0, sizeof(regs));
	regs.rip = k->entry;
	if (lm) {
		regs.rsi = BOOT_PARAMS_GPA;
		regs.rsp = BOOT_STACK_GPA;
	} else {
		regs.rbx = BOOT_START_INFO_GPA;
	}
	regs.rflags = 0x2;
	ret = kvm_ioctl(vcpufd, KVM_SET_REGS, &regs);
	if (ret < 0)
		return err_set(e, ret, "KVM_SET_REGS: %s", strerror(-ret));
	return 0;
}
