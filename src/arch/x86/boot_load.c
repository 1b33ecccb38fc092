/* SPDX-License-Identifier: MIT */
/*
 * Loading a kernel into guest RAM: format detection, kernel and initrd placement, the
 * memory map, command line and ACPI tables, and the boot data of the chosen protocol
 * (hvm_start_info for PVH; boot_params and page tables for the 64-bit Linux entry).
 * No KVM here, so the unit tests load real and crafted kernels into plain memory.
 */
#include "arch/x86/acpi.h"
#include "arch/x86/boot.h"
#include "arch/x86/pvh.h"
#include "base/buf.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define HVM_START_MAGIC 0x336ec578u
#define PTE_PRESENT_RW 0x3ull
#define PTE_HUGE 0x80ull
#define VMLINUX_INITRD_MAX 0x7fffffffull  /* protocol 2.03+'s default initrd_addr_max */
#define LOW_MEM_END 0xa0000ull
#define BIOS_END 0x100000ull

/* flat GDT: null, null, code at 0x10 (32-bit for PVH, 64-bit for Linux), data at 0x18 */
static const uint64_t boot_gdt32[] = { 0, 0, 0x00cf9b000000ffffull, 0x00cf93000000ffffull };
static const uint64_t boot_gdt64[] = { 0, 0, 0x00af9b000000ffffull, 0x00cf93000000ffffull };

unsigned boot_e820_build(const struct boot_ram_range *ranges, unsigned nranges,
			 struct boot_e820 *out)
{
	unsigned n = 0;

	/* conventional PC layout: RAM below 640K, the legacy hole (ACPI tables), the rest */
	out[n++] = (struct boot_e820){ 0, LOW_MEM_END, BOOT_E820_RAM };
	out[n++] = (struct boot_e820){ LOW_MEM_END, BIOS_END - LOW_MEM_END, BOOT_E820_RESERVED };
	for (unsigned i = 0; i < nranges; i++) {
		uint64_t gpa = ranges[i].gpa, size = ranges[i].size;

		if (gpa == 0) {
			gpa = BIOS_END;
			size -= BIOS_END;
		}
		out[n++] = (struct boot_e820){ gpa, size, BOOT_E820_RAM };
		/* KVM's TSS and identity-map pages, below the 4 GiB RAM */
		if (gpa + size <= BOOT_IDENTITY_MAP_GPA &&
		    (i + 1 == nranges || ranges[i + 1].gpa >= BOOT_KVM_PAGES_END))
			out[n++] = (struct boot_e820){ BOOT_IDENTITY_MAP_GPA,
						       BOOT_KVM_PAGES_END - BOOT_IDENTITY_MAP_GPA,
						       BOOT_E820_RESERVED };
	}
	return n;
}

static void boot_gdt_write(uint8_t *ram, bool long_mode)
{
	const uint64_t *gdt = long_mode ? boot_gdt64 : boot_gdt32;

	for (size_t i = 0; i < ARRAY_SIZE(boot_gdt32); i++)
		le_put64(ram + BOOT_GDT_GPA + i * 8, gdt[i]);
}

/* Identity map of the first 4 GiB with 2 MiB pages: what the 64-bit entry requires. */
static void boot_page_tables_write(uint8_t *ram)
{
	memset(ram + BOOT_PML4_GPA, 0, 6 * 4096);
	le_put64(ram + BOOT_PML4_GPA, BOOT_PDPT_GPA | PTE_PRESENT_RW);
	for (uint64_t i = 0; i < 4; i++) {
		uint64_t pd = BOOT_PD_GPA + i * 4096;

		le_put64(ram + BOOT_PDPT_GPA + i * 8, pd | PTE_PRESENT_RW);
		for (uint64_t j = 0; j < 512; j++)
			le_put64(ram + pd + j * 8,
				 ((i << 30) | (j << 21)) | PTE_PRESENT_RW | PTE_HUGE);
	}
}

static void boot_start_info_write(uint8_t *ram, const struct boot_kernel *k)
{
	uint8_t *si = ram + BOOT_START_INFO_GPA;
	uint8_t *mm = ram + BOOT_MEMMAP_GPA;
	uint8_t *mod = ram + BOOT_MODLIST_GPA;

	for (unsigned i = 0; i < k->ne820; i++) {
		le_put64(mm + 24 * i, k->e820[i].addr);
		le_put64(mm + 24 * i + 8, k->e820[i].size);
		le_put32(mm + 24 * i + 16, k->e820[i].type);
		le_put32(mm + 24 * i + 20, 0);
	}
	memset(si, 0, 0x40);
	le_put32(si + 0, HVM_START_MAGIC);
	le_put32(si + 4, 1);                     /* version 1: has the memory map */
	le_put32(si + 12, k->initrd_size ? 1 : 0); /* nr_modules: the initrd */
	le_put64(si + 16, k->initrd_size ? BOOT_MODLIST_GPA : 0);
	le_put64(si + 24, BOOT_CMDLINE_GPA);
	le_put64(si + 32, ACPI_TABLES_GPA);      /* rsdp_paddr */
	le_put64(si + 40, BOOT_MEMMAP_GPA);
	le_put32(si + 48, k->ne820);
	memset(mod, 0, 32);
	le_put64(mod, k->initrd_gpa);
	le_put64(mod + 8, k->initrd_size);
}

/* The initrd goes as high as allowed, page-aligned, above everything the kernel uses. */
static int boot_initrd_place(const struct boot_machine *m, uint64_t size, uint64_t addr_max,
			     struct boot_kernel *k, struct errbuf *e)
{
	uint64_t top = MIN(m->low_size, addr_max + 1);
	uint64_t floor = ALIGN_UP(k->kernel_high, 4096);

	if (!size)
		return 0;
	if (top < floor || top - floor < size)
		return err_set(e, -ENOSPC,
			       "initrd of %llu bytes does not fit between the kernel's end (0x%llx) "
			       "and 0x%llx (%s): give the guest more --memory",
			       (unsigned long long)size, (unsigned long long)floor,
			       (unsigned long long)top,
			       top < m->low_size ? "the kernel's initrd_addr_max" :
						   "the end of low RAM");
	k->initrd_gpa = ALIGN_DOWN(top - size, 4096);
	k->initrd_size = size;
	return 0;
}

static int boot_bzimage_load(const struct boot_machine *m, const uint8_t *p, size_t len,
			     struct bzimage *bz, struct boot_kernel *k, struct errbuf *e)
{
	uint64_t at;
	int ret;

	ret = bzimage_parse(p, len, bz, e);
	if (ret < 0)
		return ret;
	at = bz->relocatable ? ALIGN_UP(bz->pref_address, bz->kernel_alignment) : bz->pref_address;
	if (at > m->low_size || bz->init_size > m->low_size - at)
		return err_set(e, -ENOSPC,
			       "the kernel needs RAM from 0x%llx to 0x%llx (init_size 0x%x), low RAM "
			       "ends at 0x%llx: give the guest more --memory",
			       (unsigned long long)at, (unsigned long long)(at + bz->init_size),
			       bz->init_size, (unsigned long long)m->low_size);
	k->protocol = BOOT_PROTO_LINUX64;
	k->format = "bzImage";
	k->kernel_low = at;
	k->kernel_high = at + bz->init_size;
	k->entry = at + BZIMAGE_ENTRY64_OFFSET;
	return 0;
}

int boot_load(const struct boot_machine *m, const uint8_t *p, size_t len, uint64_t initrd_size,
	      const char *cmdline, struct boot_kernel *k, struct errbuf *e)
{
	struct boot_params_layout l = { 0 };
	struct bzimage bz = { 0 };
	bool is_bz;
	size_t cmdlen = strlen(cmdline);
	int ret;

	memset(k, 0, sizeof(*k));
	if (m->low_size < 2 * MiB || m->nranges == 0 || m->nranges > BOOT_MEMMAP_MAX - 4)
		return err_set(e, -EINVAL, "invalid guest memory layout for booting");
	if (cmdlen >= BOOT_CMDLINE_MAX)
		return err_set(e, -E2BIG, "--cmdline is %zu bytes, the limit is %u", cmdlen,
			       BOOT_CMDLINE_MAX - 1);

	is_bz = bzimage_detect(p, len);
	if (is_bz) {
		ret = boot_bzimage_load(m, p, len, &bz, k, e);
		if (ret < 0)
			return ret;
		if (cmdlen > bz.cmdline_size)
			return err_set(e, -E2BIG, "--cmdline is %zu bytes, this kernel accepts at "
						  "most %u (its cmdline_size)", cmdlen,
				       bz.cmdline_size);
		ret = boot_initrd_place(m, initrd_size, bz.initrd_addr_max, k, e);
		if (ret < 0)
			return ret;
		/* everything checked: now write */
		memcpy(m->ram + k->kernel_low, bz.kernel, bz.kernel_len);
	} else {
		struct pvh_image img;

		ret = pvh_elf_load(p, len, m->ram, m->low_size, &img, e);
		if (ret < 0)
			return ret;
		k->protocol = img.pvh ? BOOT_PROTO_PVH : BOOT_PROTO_LINUX64;
		k->format = img.pvh ? "PVH ELF" : "ELF vmlinux";
		k->entry = img.entry;
		k->kernel_low = img.load_low;
		k->kernel_high = img.load_high;
		/* PVH gives no limit: the end of low RAM bounds it */
		ret = boot_initrd_place(m, initrd_size,
					img.pvh ? UINT64_MAX - 1 : VMLINUX_INITRD_MAX, k, e);
		if (ret < 0)
			return ret;
	}

	k->ne820 = boot_e820_build(m->ranges, m->nranges, k->e820);
	ret = acpi_tables_write(m->ram + ACPI_TABLES_GPA, ACPI_TABLES_MAX, m->nvcpus, e);
	if (ret < 0)
		return ret;
	memcpy(m->ram + BOOT_CMDLINE_GPA, cmdline, cmdlen + 1);
	boot_gdt_write(m->ram, k->protocol == BOOT_PROTO_LINUX64);
	if (k->protocol == BOOT_PROTO_PVH) {
		boot_start_info_write(m->ram, k);
		return 0;
	}
	boot_page_tables_write(m->ram);
	l.cmdline_gpa = BOOT_CMDLINE_GPA;
	l.initrd_gpa = k->initrd_gpa;
	l.initrd_size = k->initrd_size;
	l.rsdp_gpa = ACPI_TABLES_GPA;
	l.e820 = k->e820;
	l.ne820 = k->ne820;
	boot_params_write(m->ram + BOOT_PARAMS_GPA, is_bz ? p : NULL, &bz, &l);
	return 0;
}

int boot_load_files(const struct boot_machine *m, const char *kernel, const char *initrd,
		    const char *cmdline, struct boot_kernel *k, struct errbuf *e)
{
	uint64_t isize = 0;
	uint8_t *data = NULL;
	size_t klen;
	int ifd = -1, ret;

	if (initrd) {
		ret = file_open_bounded(initrd, "initrd", BOOT_INITRD_FILE_MAX, &ifd, &isize, e);
		if (ret < 0)
			return ret;
		if (!isize) {
			ret = err_set(e, -EINVAL, "initrd %s is empty", initrd);
			goto out;
		}
	}
	ret = file_read_bounded(kernel, "kernel", BOOT_KERNEL_FILE_MAX, &data, &klen, e);
	if (ret < 0)
		goto out;
	ret = boot_load(m, data, klen, isize, cmdline, k, e);
	if (ret < 0) {
		err_prefix(e, ret, "kernel %s", kernel);
		goto out;
	}
	if (initrd) {
		/* placed inside low RAM by boot_load, so the range is valid */
		ret = io_read_full(ifd, m->ram + k->initrd_gpa, (size_t)isize);
		if (ret)
			err_set(e, ret, "read initrd %s: %s", initrd,
				ret == -EPIPE ? "file shrank while reading" : strerror(-ret));
	}
out:
	free(data);
	if (ifd >= 0)
		close(ifd);
	return ret;
}
