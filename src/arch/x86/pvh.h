/* SPDX-License-Identifier: MIT */
/*
 * PVH boot: validate an ELF kernel image that carries a Xen PVH entry note
 * (XEN_ELFNOTE_PHYS32_ENTRY) and copy its PT_LOAD segments into guest memory.
 * Every offset and size in the file is checked; the image is untrusted input.
 */
#ifndef GODWIT_ARCH_X86_PVH_H
#define GODWIT_ARCH_X86_PVH_H

#include "base/util.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PVH_LOAD_MIN 0x100000ull /* segments may not load below 1 MiB */

struct pvh_image {
	bool pvh;           /* entered through PVH (the note); else the Linux 64-bit protocol */
	uint32_t entry;     /* 32-bit physical entry point from the note, or e_entry */
	uint64_t load_low;  /* lowest guest-physical byte loaded */
	uint64_t load_high; /* one past the highest byte loaded (including bss) */
};

/*
 * ram points at guest-physical 0 and holds ram_size contiguous bytes (the low
 * RAM region). Segments must fit in [PVH_LOAD_MIN, ram_size).
 */
int __must_check pvh_load(const void *elf, size_t len, uint8_t *ram, uint64_t ram_size,
			  struct pvh_image *img, struct errbuf *e);
/*
 * The same for any x86 ELF kernel: with the PVH note as above; without it, an x86-64
 * ELF (a vmlinux) whose physical e_entry is its 64-bit entry (img->pvh false).
 */
int __must_check pvh_elf_load(const void *elf, size_t len, uint8_t *ram, uint64_t ram_size,
			      struct pvh_image *img, struct errbuf *e);
/* Reads a file (bounded to 64 MiB) and calls pvh_load(). */
int __must_check pvh_load_file(const char *path, uint8_t *ram, uint64_t ram_size,
			       struct pvh_image *img, struct errbuf *e);

#endif
