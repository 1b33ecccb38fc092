/* SPDX-License-Identifier: MIT */
/*
 * Linux x86 boot protocol (Documentation/arch/x86/boot.rst): the bzImage setup header,
 * checked for what godwit's 64-bit entry needs, and the boot_params "zero page" built
 * from it (or, for an ELF vmlinux, from a header made up here). The kernel file is
 * untrusted: every field is decoded explicitly and checked before anything is written.
 */
#ifndef GODWIT_ARCH_X86_BZIMAGE_H
#define GODWIT_ARCH_X86_BZIMAGE_H

#include "base/util.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define BZIMAGE_MIN_VERSION 0x020c  /* 2.12: XLF_KERNEL_64 tells a 64-bit entry exists */
#define BZIMAGE_MAX_SETUP_SECTS 64  /* real-mode setup is at most 32 KiB */
#define BZIMAGE_ENTRY64_OFFSET 0x200
#define BOOT_PARAMS_SIZE 4096
#define BOOT_E820_MAX 128           /* entries in boot_params' e820_table */

enum boot_e820_type { BOOT_E820_RAM = 1, BOOT_E820_RESERVED = 2 };

struct boot_e820 {
	uint64_t addr;
	uint64_t size;
	uint32_t type;
};

struct bzimage {
	uint16_t version;
	uint8_t loadflags;
	uint16_t xloadflags;
	uint32_t setup_size;       /* bytes before the protected-mode kernel in the file */
	uint32_t hdr_end;          /* file offset one past the setup header */
	uint32_t initrd_addr_max;  /* highest address the initrd may occupy */
	uint32_t cmdline_size;     /* longest command line, without the NUL */
	uint32_t kernel_alignment;
	bool relocatable;
	uint64_t pref_address;
	uint32_t init_size;        /* bytes the kernel needs from its load address */
	const uint8_t *kernel;     /* the protected-mode kernel, inside the file */
	size_t kernel_len;
};

/* True if p looks like a bzImage (boot sector signature and "HdrS"): worth parsing. */
bool bzimage_detect(const uint8_t *p, size_t len);
/* Decodes and checks the setup header; the error says what is missing or wrong. */
int __must_check bzimage_parse(const uint8_t *p, size_t len, struct bzimage *bz,
			       struct errbuf *e);

/* Where the loader put things, for the zero page. */
struct boot_params_layout {
	uint64_t cmdline_gpa;
	uint64_t initrd_gpa;
	uint64_t initrd_size;   /* 0: no initrd */
	uint64_t rsdp_gpa;
	const struct boot_e820 *e820;
	unsigned ne820;
};

/*
 * Fills the zero page zp (BOOT_PARAMS_SIZE bytes). file is the bzImage whose setup
 * header is copied (bz as parsed from it), or NULL for an ELF vmlinux, which gets a
 * minimal header of its own.
 */
void boot_params_write(uint8_t *zp, const uint8_t *file, const struct bzimage *bz,
		       const struct boot_params_layout *l);

#endif
