/* SPDX-License-Identifier: MIT */
/*
 * Booting a kernel: the file's format decides the protocol. A bzImage, or an x86-64
 * ELF without a PVH note (a vmlinux), is entered through the Linux 64-bit boot protocol
 * (boot_params zero page, e820 map, identity-mapped page tables, long mode); an ELF with
 * the Xen PVH note through PVH (hvm_start_info, 32-bit flat protected mode). Both get
 * the same memory map, command line, initrd and ACPI tables (boot_load.c); boot.c sets
 * the boot vCPU's registers.
 *
 * Low memory used for boot data (all below 640 KiB, which Linux keeps reserved):
 *   0x4ff0 initial stack (64-bit entry)   0x5000 GDT
 *   0x6000 hvm_start_info, memory map, module list (PVH)
 *   0x7000 command line                   0x8000 boot_params (64-bit entry)
 *   0x9000-0xefff page tables identity-mapping the first 4 GiB with 2 MiB pages
 *   0xe0000 ACPI tables (in the reserved BIOS area)
 */
#ifndef GODWIT_ARCH_X86_BOOT_H
#define GODWIT_ARCH_X86_BOOT_H

#include "arch/x86/bzimage.h"
#include "base/util.h"

#include <stddef.h>
#include <stdint.h>

#define BOOT_STACK_GPA 0x4ff0ull
#define BOOT_GDT_GPA 0x5000ull
#define BOOT_START_INFO_GPA 0x6000ull
#define BOOT_MEMMAP_GPA 0x6040ull
#define BOOT_MEMMAP_MAX 8
#define BOOT_MODLIST_GPA 0x6200ull
#define BOOT_CMDLINE_GPA 0x7000ull
#define BOOT_CMDLINE_MAX 4096  /* including the terminating NUL */
#define BOOT_PARAMS_GPA 0x8000ull
#define BOOT_PML4_GPA 0x9000ull
#define BOOT_PDPT_GPA 0xa000ull
#define BOOT_PD_GPA 0xb000ull  /* four page directories: 4 GiB */
#define BOOT_KERNEL_FILE_MAX (64 * MiB)
#define BOOT_INITRD_FILE_MAX (2 * GiB)

/* KVM's private pages (TSS, identity map) sit in the 3-4 GiB hole, outside RAM */
#define BOOT_IDENTITY_MAP_GPA 0xfeffc000ull
#define BOOT_TSS_GPA 0xfeffd000ull
#define BOOT_KVM_PAGES_END 0xff000000ull

struct boot_ram_range {
	uint64_t gpa;
	uint64_t size;
};

/* What the kernel boots into. */
struct boot_machine {
	uint8_t *ram;       /* guest-physical 0 */
	uint64_t low_size;  /* bytes of RAM from guest-physical 0 */
	const struct boot_ram_range *ranges;
	unsigned nranges;
	unsigned nvcpus;
};

enum boot_protocol { BOOT_PROTO_PVH, BOOT_PROTO_LINUX64 };

/* What was loaded where, and how to enter it. */
struct boot_kernel {
	enum boot_protocol protocol;
	const char *format;           /* "bzImage", "ELF vmlinux", "PVH ELF" */
	uint64_t entry;
	uint64_t kernel_low, kernel_high;  /* RAM the kernel may use from its load address */
	uint64_t initrd_gpa, initrd_size;
	unsigned ne820;
	struct boot_e820 e820[BOOT_MEMMAP_MAX];
};

/*
 * Detects the format of the kernel image in p, loads it, places an initrd of
 * initrd_size bytes (0: none; its contents are the caller's to copy to k->initrd_gpa)
 * and writes the command line, memory map, ACPI tables and the protocol's boot data.
 * Everything about the kernel is checked first; the error names what does not fit.
 */
int __must_check boot_load(const struct boot_machine *m, const uint8_t *p, size_t len,
			   uint64_t initrd_size, const char *cmdline, struct boot_kernel *k,
			   struct errbuf *e);
/* The same from files; initrd may be NULL. */
int __must_check boot_load_files(const struct boot_machine *m, const char *kernel,
				 const char *initrd, const char *cmdline, struct boot_kernel *k,
				 struct errbuf *e);
/* The guest-physical memory map godwit gives every guest (RAM, legacy hole, KVM pages). */
unsigned boot_e820_build(const struct boot_ram_range *ranges, unsigned nranges,
			 struct boot_e820 *out);
/* Sets the boot vCPU's registers for k's entry (call on that vCPU's thread). */
int __must_check boot_vcpu_setup(int vcpufd, const struct boot_kernel *k, struct errbuf *e);

#endif
