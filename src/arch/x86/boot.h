/* SPDX-License-Identifier: MIT */
/*
 * PVH boot: the hvm_start_info block (with memory map and command line) in low
 * guest memory, and the 32-bit flat protected-mode entry state of the boot vCPU.
 */
#ifndef GODWIT_ARCH_X86_BOOT_H
#define GODWIT_ARCH_X86_BOOT_H

#include "base/util.h"

#include <stdint.h>

#define BOOT_GDT_GPA 0x5000ull
#define BOOT_START_INFO_GPA 0x6000ull
#define BOOT_MEMMAP_GPA 0x6040ull
#define BOOT_MEMMAP_MAX 8
#define BOOT_CMDLINE_GPA 0x7000ull
#define BOOT_CMDLINE_MAX 4096  /* including the terminating NUL */

/* KVM's private pages (TSS, identity map) sit in the 3-4 GiB hole, outside RAM */
#define BOOT_IDENTITY_MAP_GPA 0xfeffc000ull
#define BOOT_TSS_GPA 0xfeffd000ull

struct boot_ram_range {
	uint64_t gpa;
	uint64_t size;
};

/*
 * Writes GDT, start_info, memory map and command line into low RAM (ram points at
 * guest-physical 0; low_size bytes). ranges are the guest RAM regions.
 */
int __must_check boot_pvh_info_write(uint8_t *ram, uint64_t low_size,
				     const struct boot_ram_range *ranges, unsigned nranges,
				     const char *cmdline, struct errbuf *e);
/* Sets the PVH entry state on the boot vCPU (call on that vCPU's thread). */
int __must_check boot_pvh_vcpu_setup(int vcpufd, uint32_t entry, struct errbuf *e);

#endif
