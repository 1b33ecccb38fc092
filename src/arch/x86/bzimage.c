/* SPDX-License-Identifier: MIT */
/*
 * bzImage setup header and boot_params. Offsets are those of boot.rst and
 * zero-page.rst; godwit enters the kernel at its 64-bit entry (load address + 0x200)
 * with paging on, so only protocol 2.12+ kernels that announce XLF_KERNEL_64 qualify.
 */
#include "arch/x86/bzimage.h"
#include "base/buf.h"

#include <errno.h>
#include <string.h>

/* setup header fields (file offsets, the same in boot_params) */
#define HDR_SETUP_SECTS 0x1f1
#define HDR_VID_MODE 0x1fa
#define HDR_BOOT_FLAG 0x1fe
#define HDR_JUMP 0x200
#define HDR_MAGIC 0x202
#define HDR_VERSION 0x206
#define HDR_TYPE_OF_LOADER 0x210
#define HDR_LOADFLAGS 0x211
#define HDR_RAMDISK_IMAGE 0x218
#define HDR_RAMDISK_SIZE 0x21c
#define HDR_CMD_LINE_PTR 0x228
#define HDR_INITRD_ADDR_MAX 0x22c
#define HDR_KERNEL_ALIGNMENT 0x230
#define HDR_RELOCATABLE 0x234
#define HDR_XLOADFLAGS 0x236
#define HDR_CMDLINE_SIZE 0x238
#define HDR_PREF_ADDRESS 0x258
#define HDR_INIT_SIZE 0x260
#define HDR_END_MAX 0x280   /* the setup header ends before boot_params' next field */
/* boot_params fields outside the setup header */
#define BP_ACPI_RSDP_ADDR 0x070
#define BP_EXT_RAMDISK_IMAGE 0x0c0
#define BP_EXT_RAMDISK_SIZE 0x0c4
#define BP_EXT_CMD_LINE_PTR 0x0c8
#define BP_E820_ENTRIES 0x1e8
#define BP_E820_TABLE 0x2d0

#define BOOT_FLAG 0xaa55
#define HDR_MAGIC_VALUE 0x53726448u  /* "HdrS" */
#define LOADED_HIGH 0x01
#define XLF_KERNEL_64 0x01
#define LOADER_UNDEFINED 0xff        /* type_of_loader: a loader without an assigned ID */
#define VID_MODE_NORMAL 0xffff
#define VMLINUX_VERSION BZIMAGE_MIN_VERSION

bool bzimage_detect(const uint8_t *p, size_t len)
{
	return len >= HDR_MAGIC + 4 && le_get16(p + HDR_BOOT_FLAG) == BOOT_FLAG &&
	       le_get32(p + HDR_MAGIC) == HDR_MAGIC_VALUE;
}

int bzimage_parse(const uint8_t *p, size_t len, struct bzimage *bz, struct errbuf *e)
{
	unsigned sects;

	memset(bz, 0, sizeof(*bz));
	if (!bzimage_detect(p, len))
		return err_set(e, -ENOEXEC, "not a bzImage (no boot sector signature and HdrS)");
	if (len < HDR_END_MAX)
		return err_set(e, -ENOEXEC, "bzImage truncated: %zu bytes, the setup header "
					    "alone is %u", len, HDR_END_MAX);
	bz->version = le_get16(p + HDR_VERSION);
	if (bz->version < BZIMAGE_MIN_VERSION)
		return err_set(e, -ENOEXEC, "bzImage boot protocol %u.%02u is older than 2.12 "
					    "(godwit needs its 64-bit entry)",
			       bz->version >> 8, bz->version & 0xff);
	bz->loadflags = p[HDR_LOADFLAGS];
	bz->xloadflags = le_get16(p + HDR_XLOADFLAGS);
	if (!(bz->xloadflags & XLF_KERNEL_64))
		return err_set(e, -ENOEXEC, "bzImage has no 64-bit entry point (XLF_KERNEL_64 "
					    "not set: a 32-bit kernel?)");
	if (!(bz->loadflags & LOADED_HIGH))
		return err_set(e, -ENOEXEC, "bzImage is not loaded high (LOADED_HIGH not set: a "
					    "zImage?)");
	sects = p[HDR_SETUP_SECTS] ? p[HDR_SETUP_SECTS] : 4;
	if (sects > BZIMAGE_MAX_SETUP_SECTS)
		return err_set(e, -ENOEXEC, "bzImage setup is %u sectors, more than %u", sects,
			       BZIMAGE_MAX_SETUP_SECTS);
	bz->setup_size = (sects + 1) * 512;
	if (bz->setup_size >= len)
		return err_set(e, -ENOEXEC, "bzImage setup (%u bytes) leaves no kernel in the "
					    "%zu-byte file", bz->setup_size, len);
	/* the jump's 8-bit displacement, from the byte after it, ends the header */
	bz->hdr_end = HDR_MAGIC + (uint32_t)p[HDR_JUMP + 1];
	if (p[HDR_JUMP] != 0xeb || bz->hdr_end < HDR_INIT_SIZE + 4 || bz->hdr_end > HDR_END_MAX)
		return err_set(e, -ENOEXEC, "bzImage setup header length 0x%x is not within "
					    "0x%x-0x%x",
			       bz->hdr_end, HDR_INIT_SIZE + 4, HDR_END_MAX);
	bz->initrd_addr_max = le_get32(p + HDR_INITRD_ADDR_MAX);
	bz->kernel_alignment = le_get32(p + HDR_KERNEL_ALIGNMENT);
	bz->relocatable = p[HDR_RELOCATABLE] != 0;
	bz->cmdline_size = le_get32(p + HDR_CMDLINE_SIZE);
	bz->pref_address = le_get64(p + HDR_PREF_ADDRESS);
	bz->init_size = le_get32(p + HDR_INIT_SIZE);
	if (bz->kernel_alignment & (bz->kernel_alignment - 1) || bz->kernel_alignment < 4096 ||
	    bz->kernel_alignment > 1 * GiB)
		return err_set(e, -ENOEXEC, "bzImage kernel_alignment 0x%x is not a power of two "
					    "from 4 KiB to 1 GiB", bz->kernel_alignment);
	if (bz->pref_address < 1 * MiB || bz->pref_address % 4096)
		return err_set(e, -ENOEXEC, "bzImage pref_address 0x%llx is below 1 MiB or not "
					    "page-aligned", (unsigned long long)bz->pref_address);
	bz->kernel = p + bz->setup_size;
	bz->kernel_len = len - bz->setup_size;
	if (bz->init_size < bz->kernel_len)
		return err_set(e, -ENOEXEC, "bzImage init_size 0x%x is smaller than its kernel "
					    "(%zu bytes)", bz->init_size, bz->kernel_len);
	if (bz->initrd_addr_max < 1 * MiB)
		return err_set(e, -ENOEXEC, "bzImage initrd_addr_max 0x%x is below 1 MiB",
			       bz->initrd_addr_max);
	return 0;
}

void boot_params_write(uint8_t *zp, const uint8_t *file, const struct bzimage *bz,
		       const struct boot_params_layout *l)
{
	unsigned n = MIN(l->ne820, BOOT_E820_MAX);

	memset(zp, 0, BOOT_PARAMS_SIZE);
	if (file) {
		memcpy(zp + HDR_SETUP_SECTS, file + HDR_SETUP_SECTS, bz->hdr_end - HDR_SETUP_SECTS);
	} else {
		/* an ELF vmlinux: the fields the kernel reads from a bzImage's header */
		le_put16(zp + HDR_BOOT_FLAG, BOOT_FLAG);
		le_put32(zp + HDR_MAGIC, HDR_MAGIC_VALUE);
		le_put16(zp + HDR_VERSION, VMLINUX_VERSION);
		zp[HDR_LOADFLAGS] = LOADED_HIGH;
	}
	le_put16(zp + HDR_VID_MODE, VID_MODE_NORMAL);
	zp[HDR_TYPE_OF_LOADER] = LOADER_UNDEFINED;
	le_put32(zp + HDR_CMD_LINE_PTR, (uint32_t)l->cmdline_gpa);
	le_put32(zp + BP_EXT_CMD_LINE_PTR, (uint32_t)(l->cmdline_gpa >> 32));
	le_put32(zp + HDR_RAMDISK_IMAGE, (uint32_t)l->initrd_gpa);
	le_put32(zp + BP_EXT_RAMDISK_IMAGE, (uint32_t)(l->initrd_gpa >> 32));
	le_put32(zp + HDR_RAMDISK_SIZE, (uint32_t)l->initrd_size);
	le_put32(zp + BP_EXT_RAMDISK_SIZE, (uint32_t)(l->initrd_size >> 32));
	le_put64(zp + BP_ACPI_RSDP_ADDR, l->rsdp_gpa);
	zp[BP_E820_ENTRIES] = (uint8_t)n;
	for (unsigned i = 0; i < n; i++) {
		uint8_t *p = zp + BP_E820_TABLE + 20 * i;

		le_put64(p, l->e820[i].addr);
		le_put64(p + 8, l->e820[i].size);
		le_put32(p + 16, l->e820[i].type);
	}
}
