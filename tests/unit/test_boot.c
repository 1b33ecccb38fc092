/* SPDX-License-Identifier: MIT */
/*
 * Unit tests for kernel loading (boot_load.c, bzimage.c, acpi.c): crafted bzImages and
 * ELF kernels, good and broken one field at a time, loaded into plain memory; then the
 * zero page, e820 map, page tables, PVH start_info and ACPI tables are read back.
 * With the argument "debian", the same checks run on Debian's real cloud kernel
 * ($GODWIT_LINUX_DIR/vmlinuz, fetched by scripts/get-linux-kernel; skipped without it).
 */
#include "arch/x86/acpi.h"
#include "arch/x86/boot.h"
#include "base/buf.h"

#include <elf.h>
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmocka.h>

#define RAM_SIZE (64 * MiB)
#define BZ_LEN 0x3000
#define BZ_SETUP_SECTS 4
#define BZ_KERNEL_OFF ((BZ_SETUP_SECTS + 1) * 512)
#define BZ_PREF 0x1000000ull
#define BZ_INIT_SIZE 0x100000u

static uint8_t *ram;

static int ram_setup(void **state)
{
	(void)state;
	/* anonymous: pages a test does not touch cost nothing */
	ram = mmap(NULL, RAM_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	return ram == MAP_FAILED ? -1 : 0;
}

static int ram_teardown(void **state)
{
	(void)state;
	munmap(ram, RAM_SIZE);
	return 0;
}

static struct boot_ram_range ranges[] = { { 0, RAM_SIZE } };

static struct boot_machine machine(unsigned nvcpus)
{
	return (struct boot_machine){ .ram = ram, .low_size = RAM_SIZE, .ranges = ranges,
				      .nranges = 1, .nvcpus = nvcpus };
}

/* A bzImage that godwit accepts: protocol 2.15, 64-bit entry, relocatable. */
static void bz_build(uint8_t *b)
{
	memset(b, 0, BZ_LEN);
	b[0x1f1] = BZ_SETUP_SECTS;
	le_put16(b + 0x1fe, 0xaa55);
	b[0x200] = 0xeb;
	b[0x201] = 0x6a; /* header ends at 0x26c */
	memcpy(b + 0x202, "HdrS", 4);
	le_put16(b + 0x206, 0x020f);
	b[0x211] = 0x01;                     /* LOADED_HIGH */
	le_put32(b + 0x22c, 0x7fffffff);     /* initrd_addr_max */
	le_put32(b + 0x230, 0x200000);       /* kernel_alignment */
	b[0x234] = 1;                        /* relocatable */
	le_put16(b + 0x236, 0x0001);         /* XLF_KERNEL_64 */
	le_put32(b + 0x238, 2047);           /* cmdline_size */
	le_put64(b + 0x258, BZ_PREF);
	le_put32(b + 0x260, BZ_INIT_SIZE);
	for (unsigned i = BZ_KERNEL_OFF; i < BZ_LEN; i++)
		b[i] = (uint8_t)(i * 7);
}

static void expect_fail(const uint8_t *p, size_t len, uint64_t initrd, const char *cmdline,
			int err, const char *msg)
{
	struct boot_machine m = machine(1);
	struct boot_kernel k;
	struct errbuf e = { { 0 } };

	assert_int_equal(boot_load(&m, p, len, initrd, cmdline, &k, &e), err);
	if (!strstr(e.msg, msg))
		fail_msg("error \"%s\" does not contain \"%s\"", e.msg, msg);
}

static uint8_t acpi_sum(const uint8_t *p, size_t n)
{
	uint8_t s = 0;

	while (n--)
		s += *p++;
	return s;
}

/* Walks RSDP -> XSDT -> FADT/MADT like a guest; returns the MADT's local APIC count. */
static unsigned acpi_check(void)
{
	const uint8_t *rsdp = ram + ACPI_TABLES_GPA, *xsdt, *madt = NULL;
	unsigned nlapic = 0;

	assert_memory_equal(rsdp, "RSD PTR ", 8);
	assert_int_equal(acpi_sum(rsdp, 20), 0);
	assert_int_equal(acpi_sum(rsdp, 36), 0);
	assert_int_equal(rsdp[15], 2);
	xsdt = ram + le_get64(rsdp + 24);
	assert_memory_equal(xsdt, "XSDT", 4);
	assert_int_equal(acpi_sum(xsdt, le_get32(xsdt + 4)), 0);
	for (uint32_t off = 36; off < le_get32(xsdt + 4); off += 8) {
		const uint8_t *t = ram + le_get64(xsdt + off);

		assert_int_equal(acpi_sum(t, le_get32(t + 4)), 0);
		if (!memcmp(t, "FACP", 4)) {
			const uint8_t *dsdt = ram + le_get64(t + 140);

			assert_memory_equal(dsdt, "DSDT", 4);
			assert_int_equal(acpi_sum(dsdt, le_get32(dsdt + 4)), 0);
			assert_true(le_get32(t + 112) & (1u << 20)); /* hardware-reduced */
			assert_int_equal(le_get64(t + 244 + 4), ACPI_SLEEP_CONTROL_PORT);
		} else if (!memcmp(t, "APIC", 4)) {
			madt = t;
		}
	}
	assert_non_null(madt);
	assert_int_equal(le_get32(madt + 36), ACPI_LAPIC_GPA);
	for (uint32_t off = 44; off < le_get32(madt + 4); off += madt[off + 1]) {
		assert_true(madt[off + 1] >= 2);
		if (madt[off] == 0) {
			assert_int_equal(madt[off + 3], nlapic); /* APIC ID = vCPU index */
			assert_int_equal(le_get32(madt + off + 4), 1);
			nlapic++;
		} else if (madt[off] == 1) {
			assert_int_equal(le_get32(madt + off + 4), ACPI_IOAPIC_GPA);
		}
	}
	return nlapic;
}

/* The e820 table in the zero page equals the map godwit built. */
static void zero_page_e820_check(const struct boot_kernel *k)
{
	const uint8_t *zp = ram + BOOT_PARAMS_GPA;

	assert_int_equal(zp[0x1e8], k->ne820);
	for (unsigned i = 0; i < k->ne820; i++) {
		const uint8_t *p = zp + 0x2d0 + 20 * i;

		assert_int_equal(le_get64(p), k->e820[i].addr);
		assert_int_equal(le_get64(p + 8), k->e820[i].size);
		assert_int_equal(le_get32(p + 16), k->e820[i].type);
	}
}

static void page_tables_check(void)
{
	uint64_t pdpt = le_get64(ram + BOOT_PML4_GPA) & ~0xfffull;
	uint64_t pd = le_get64(ram + pdpt) & ~0xfffull;

	assert_int_equal(pdpt, BOOT_PDPT_GPA);
	/* 16 MiB (the kernel) is the 9th 2 MiB page of the first gigabyte, identity-mapped */
	assert_int_equal(le_get64(ram + pd + 8 * 8), 0x1000000ull | 0x83);
	/* the last 2 MiB below 4 GiB */
	pd = le_get64(ram + pdpt + 3 * 8) & ~0xfffull;
	assert_int_equal(le_get64(ram + pd + 511 * 8), 0xffe00000ull | 0x83);
}

static void test_bzimage_load(void **state)
{
	static uint8_t b[BZ_LEN];
	const char *cmdline = "console=ttyS0 reboot=k panic=1";
	struct boot_machine m = machine(3);
	struct boot_kernel k;
	struct errbuf e = { { 0 } };
	const uint8_t *zp = ram + BOOT_PARAMS_GPA;
	struct boot_e820 want[BOOT_MEMMAP_MAX];

	(void)state;
	bz_build(b);
	assert_int_equal(boot_load(&m, b, BZ_LEN, 5000, cmdline, &k, &e), 0);
	assert_int_equal(k.protocol, BOOT_PROTO_LINUX64);
	assert_string_equal(k.format, "bzImage");
	assert_int_equal(k.entry, BZ_PREF + 0x200);
	assert_memory_equal(ram + BZ_PREF, b + BZ_KERNEL_OFF, BZ_LEN - BZ_KERNEL_OFF);
	/* the initrd at the top of RAM, page-aligned, clear of the kernel */
	assert_int_equal(k.initrd_gpa, RAM_SIZE - 8192);
	assert_int_equal(k.initrd_size, 5000);
	assert_true(k.initrd_gpa >= BZ_PREF + BZ_INIT_SIZE);

	/* the setup header copied, the loader's fields filled */
	assert_memory_equal(zp + 0x1f1, b + 0x1f1, 0x1fa - 0x1f1);
	assert_int_equal(le_get16(zp + 0x1fa), 0xffff); /* vid_mode: normal */
	assert_memory_equal(zp + 0x1fc, b + 0x1fc, 0x210 - 0x1fc);
	assert_memory_equal(zp + 0x211, b + 0x211, 0x218 - 0x211);
	assert_memory_equal(zp + 0x22c, b + 0x22c, 0x26c - 0x22c);
	assert_int_equal(le_get16(zp + 0x1fe), 0xaa55);
	assert_int_equal(zp[0x210], 0xff);
	assert_int_equal(le_get32(zp + 0x228), BOOT_CMDLINE_GPA);
	assert_string_equal((const char *)ram + BOOT_CMDLINE_GPA, cmdline);
	assert_int_equal(le_get32(zp + 0x218), k.initrd_gpa);
	assert_int_equal(le_get32(zp + 0x21c), 5000);
	assert_int_equal(le_get64(zp + 0x070), ACPI_TABLES_GPA);
	assert_int_equal(zp[0x1ef], 0); /* sentinel: the header was not blindly copied */

	/* e820: RAM below 640K, the BIOS hole, RAM from 1 MiB, KVM's pages reserved */
	assert_int_equal(boot_e820_build(ranges, 1, want), 4);
	assert_int_equal(k.ne820, 4);
	for (unsigned i = 0; i < 4; i++) {
		assert_int_equal(k.e820[i].addr, want[i].addr);
		assert_int_equal(k.e820[i].size, want[i].size);
		assert_int_equal(k.e820[i].type, want[i].type);
	}
	assert_int_equal(want[2].addr, 0x100000);
	assert_int_equal(want[2].size, RAM_SIZE - 0x100000);
	assert_int_equal(want[3].addr, BOOT_IDENTITY_MAP_GPA);
	assert_int_equal(want[3].type, BOOT_E820_RESERVED);
	zero_page_e820_check(&k);
	page_tables_check();
	/* 64-bit code segment at __BOOT_CS */
	assert_int_equal(le_get64(ram + BOOT_GDT_GPA + 0x10), 0x00af9b000000ffffull);
	assert_int_equal(acpi_check(), 3);
}

static void test_bzimage_reject(void **state)
{
	static uint8_t b[BZ_LEN];
	char longline[2100];

	(void)state;
	bz_build(b);
	le_put16(b + 0x206, 0x020b);
	expect_fail(b, BZ_LEN, 0, "", -ENOEXEC, "boot protocol 2.11 is older than 2.12");

	bz_build(b);
	le_put16(b + 0x236, 0);
	expect_fail(b, BZ_LEN, 0, "", -ENOEXEC, "no 64-bit entry point (XLF_KERNEL_64 not set");

	bz_build(b);
	b[0x1f1] = 200;
	expect_fail(b, BZ_LEN, 0, "", -ENOEXEC, "setup is 200 sectors, more than 64");
	bz_build(b);
	b[0x1f1] = 30; /* 15.5 KiB of setup in a 12 KiB file */
	expect_fail(b, BZ_LEN, 0, "", -ENOEXEC, "setup (15872 bytes) leaves no kernel");

	bz_build(b);
	b[0x211] = 0;
	expect_fail(b, BZ_LEN, 0, "", -ENOEXEC, "LOADED_HIGH not set");
	bz_build(b);
	b[0x201] = 0x10;
	expect_fail(b, BZ_LEN, 0, "", -ENOEXEC, "setup header length 0x212");
	bz_build(b);
	le_put32(b + 0x230, 0x300000);
	expect_fail(b, BZ_LEN, 0, "", -ENOEXEC, "kernel_alignment 0x300000 is not a power of two");
	bz_build(b);
	le_put32(b + 0x260, 0x100);
	expect_fail(b, BZ_LEN, 0, "", -ENOEXEC, "init_size 0x100 is smaller than its kernel");
	bz_build(b);
	expect_fail(b, 0x250, 0, "", -ENOEXEC, "bzImage truncated: 592 bytes");

	/* the kernel itself does not fit the guest's RAM */
	bz_build(b);
	le_put32(b + 0x260, 0x4000000);
	expect_fail(b, BZ_LEN, 0, "", -ENOSPC,
		    "the kernel needs RAM from 0x1000000 to 0x5000000 (init_size 0x4000000), low RAM ends at 0x4000000");

	/* a command line over the kernel's cmdline_size, and over godwit's own limit */
	bz_build(b);
	le_put32(b + 0x238, 16);
	expect_fail(b, BZ_LEN, 0, "console=ttyS0 abc", -E2BIG,
		    "--cmdline is 17 bytes, this kernel accepts at most 16 (its cmdline_size)");
	assert_int_equal(boot_load(&(struct boot_machine){ .ram = ram, .low_size = RAM_SIZE,
							    .ranges = ranges, .nranges = 1,
							    .nvcpus = 1 },
				   b, BZ_LEN, 0, "console=ttyS0 ab", &(struct boot_kernel){ 0 },
				   &(struct errbuf){ { 0 } }), 0);
	bz_build(b);
	memset(longline, 'x', sizeof(longline) - 1);
	longline[sizeof(longline) - 1] = 0;
	expect_fail(b, BZ_LEN, 0, longline, -E2BIG, "this kernel accepts at most 2047");
}

static void test_initrd_placement(void **state)
{
	static uint8_t b[BZ_LEN];
	struct boot_machine m = machine(1);
	struct boot_kernel k;
	struct errbuf e = { { 0 } };

	(void)state;
	bz_build(b);
	/* 64 MiB RAM, the kernel up to 17 MiB: 47 MiB are free above it */
	expect_fail(b, BZ_LEN, 48 * MiB, "", -ENOSPC,
		    "initrd of 50331648 bytes does not fit between the kernel's end (0x1100000) "
		    "and 0x4000000 (the end of low RAM)");
	assert_int_equal(boot_load(&m, b, BZ_LEN, 47 * MiB, "", &k, &e), 0);
	assert_int_equal(k.initrd_gpa, 0x1100000);

	/* initrd_addr_max below the end of RAM bounds it */
	le_put32(b + 0x22c, 0x1ffffff);
	assert_int_equal(boot_load(&m, b, BZ_LEN, 4096, "", &k, &e), 0);
	assert_int_equal(k.initrd_gpa, 0x1fff000);
	expect_fail(b, BZ_LEN, 16 * MiB, "", -ENOSPC, "and 0x2000000 (the kernel's initrd_addr_max)");
}

/*
 * An x86 ELF with one segment at 16 MiB; the 64-bit one has a "Linux" note and no PVH
 * note: a vmlinux without CONFIG_PVH.
 */
static size_t elf_build(uint8_t *b, bool is64)
{
	static const uint8_t linux_note[] = { 6, 0, 0, 0, 4, 0, 0, 0, 0, 1, 0, 0,
					      'L', 'i', 'n', 'u', 'x', 0, 0, 0, 1, 2, 3, 4 };

	size_t ph = is64 ? 64 : 52, phsz = is64 ? 56 : 32, off = 0x1000;

	memset(b, 0, 0x2000);
	memcpy(b, ELFMAG, SELFMAG);
	b[EI_CLASS] = is64 ? ELFCLASS64 : ELFCLASS32;
	b[EI_DATA] = ELFDATA2LSB;
	b[EI_VERSION] = EV_CURRENT;
	le_put16(b + 16, ET_EXEC);
	le_put16(b + 18, is64 ? EM_X86_64 : EM_386);
	le_put32(b + 20, EV_CURRENT);
	if (is64) {
		le_put64(b + 24, 0x1000040);
		le_put64(b + 32, ph);
		le_put16(b + 52, 64);
		le_put16(b + 54, (uint16_t)phsz);
		le_put16(b + 56, 2);
		le_put32(b + ph + phsz, PT_NOTE);
		le_put64(b + ph + phsz + 8, 0x200);
		le_put64(b + ph + phsz + 32, sizeof(linux_note));
		le_put64(b + ph + phsz + 48, 4);
		memcpy(b + 0x200, linux_note, sizeof(linux_note));
		le_put32(b + ph, PT_LOAD);
		le_put64(b + ph + 8, off);
		le_put64(b + ph + 16, 0xffffffff81000000ull);
		le_put64(b + ph + 24, 0x1000000);
		le_put64(b + ph + 32, 0x1000);
		le_put64(b + ph + 40, 0x3000);
	} else {
		le_put32(b + 24, 0x1000040);
		le_put32(b + 28, (uint32_t)ph);
		le_put16(b + 40, 52);
		le_put16(b + 42, (uint16_t)phsz);
		le_put16(b + 44, 1);
		le_put32(b + ph, PT_LOAD);
		le_put32(b + ph + 4, (uint32_t)off);
		le_put32(b + ph + 12, 0x1000000);
		le_put32(b + ph + 16, 0x1000);
		le_put32(b + ph + 20, 0x3000);
	}
	memset(b + off, 0x90, 0x1000);
	return 0x2000;
}

static void test_vmlinux_load(void **state)
{
	static uint8_t b[0x2000];
	struct boot_machine m = machine(2);
	struct boot_kernel k;
	struct errbuf e = { { 0 } };
	const uint8_t *zp = ram + BOOT_PARAMS_GPA;
	size_t len = elf_build(b, true);

	(void)state;
	assert_int_equal(boot_load(&m, b, len, 4096, "root=/dev/vda", &k, &e), 0);
	assert_int_equal(k.protocol, BOOT_PROTO_LINUX64);
	assert_string_equal(k.format, "ELF vmlinux");
	assert_int_equal(k.entry, 0x1000040);
	assert_int_equal(k.kernel_high, 0x1003000);
	/* a made-up setup header: what a kernel reads from a bzImage's */
	assert_int_equal(le_get16(zp + 0x1fe), 0xaa55);
	assert_memory_equal(zp + 0x202, "HdrS", 4);
	assert_true(le_get16(zp + 0x206) >= 0x020c);
	assert_int_equal(zp[0x210], 0xff);
	assert_int_equal(le_get32(zp + 0x228), BOOT_CMDLINE_GPA);
	assert_int_equal(le_get32(zp + 0x218), RAM_SIZE - 4096);
	zero_page_e820_check(&k);
	page_tables_check();
	assert_int_equal(acpi_check(), 2);

	/* without the PVH note, a 32-bit ELF has no entry godwit can use */
	len = elf_build(b, false);
	expect_fail(b, len, 0, "", -ENOEXEC, "no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY) and is "
					     "not a 64-bit x86 ELF");
	/* nor does a 64-bit ELF that is not Linux (no "Linux" note) */
	len = elf_build(b, true);
	b[0x200 + 12] = 'l';
	expect_fail(b, len, 0, "", -ENOEXEC, "is not a Linux vmlinux (no \"Linux\" ELF note)");
	/* e_entry outside the loaded segment */
	len = elf_build(b, true);
	le_put64(b + 24, 0x2000000);
	expect_fail(b, len, 0, "", -ENOEXEC, "kernel 64-bit entry 0x2000000 is not inside a loaded segment");
}

/* A 32-bit PVH ELF: the initrd becomes start_info's module, the RSDP is announced. */
static void test_pvh_initrd(void **state)
{
	static uint8_t b[0x2000];
	static const uint8_t note[] = { 4, 0, 0, 0, 4, 0, 0, 0, 18, 0, 0, 0, 'X', 'e', 'n', 0,
					0x40, 0, 0, 1 };
	struct boot_machine m = machine(4);
	struct boot_kernel k;
	struct errbuf e = { { 0 } };
	const uint8_t *si = ram + BOOT_START_INFO_GPA, *mod;
	size_t len = elf_build(b, false);

	(void)state;
	/* a second program header: the note */
	le_put16(b + 44, 2);
	le_put32(b + 52 + 32, PT_NOTE);
	le_put32(b + 52 + 32 + 4, 0x1800);
	le_put32(b + 52 + 32 + 16, sizeof(note));
	le_put32(b + 52 + 32 + 28, 4);
	memcpy(b + 0x1800, note, sizeof(note));
	assert_int_equal(boot_load(&m, b, len, 10000, "x", &k, &e), 0);
	assert_int_equal(k.protocol, BOOT_PROTO_PVH);
	assert_int_equal(k.entry, 0x1000040);
	assert_int_equal(le_get32(si), 0x336ec578u);
	assert_int_equal(le_get32(si + 12), 1);
	mod = ram + le_get64(si + 16);
	assert_int_equal(le_get64(mod), k.initrd_gpa);
	assert_int_equal(le_get64(mod + 8), 10000);
	assert_int_equal(le_get64(si + 32), ACPI_TABLES_GPA);
	assert_int_equal(le_get32(si + 48), k.ne820);
	for (unsigned i = 0; i < k.ne820; i++)
		assert_int_equal(le_get64(ram + BOOT_MEMMAP_GPA + 24 * i), k.e820[i].addr);
	/* 32-bit code segment for PVH */
	assert_int_equal(le_get64(ram + BOOT_GDT_GPA + 0x10), 0x00cf9b000000ffffull);
	assert_int_equal(acpi_check(), 4);
}

static void test_acpi_limits(void **state)
{
	static uint8_t buf[ACPI_TABLES_MAX];
	struct errbuf e = { { 0 } };

	(void)state;
	assert_true(acpi_tables_write(buf, sizeof(buf), 64, &e) > 0);
	assert_int_equal(acpi_tables_write(buf, sizeof(buf), 0, &e), -EINVAL);
	assert_int_equal(acpi_tables_write(buf, sizeof(buf), 256, &e), -EINVAL);
	assert_int_equal(acpi_tables_write(buf, 100, 1, &e), -ENOSPC);
	assert_non_null(strstr(e.msg, "100 available"));
}

/* Debian's real bzImage: its header as godwit reads it, then a load into RAM. */
static void test_debian_bzimage(void **state)
{
	const char *dir = getenv("GODWIT_LINUX_DIR");
	char path[512], longline[2100];
	struct boot_machine m = machine(2);
	struct boot_kernel k;
	struct errbuf e = { { 0 } };
	struct bzimage bz;
	uint8_t *data;
	FILE *f;
	long len;

	(void)state;
	snprintf(path, sizeof(path), "%s/vmlinuz", dir);
	f = fopen(path, "rb");
	assert_non_null(f);
	assert_int_equal(fseek(f, 0, SEEK_END), 0);
	len = ftell(f);
	rewind(f);
	data = malloc((size_t)len);
	assert_non_null(data);
	assert_int_equal(fread(data, 1, (size_t)len, f), (size_t)len);
	fclose(f);

	assert_true(bzimage_detect(data, (size_t)len));
	assert_int_equal(bzimage_parse(data, (size_t)len, &bz, &e), 0);
	assert_true(bz.version >= 0x020c);
	assert_true(bz.xloadflags & 1);
	assert_true(bz.relocatable);
	assert_int_equal(bz.pref_address, 0x1000000);
	assert_int_equal(bz.kernel_len, (size_t)len - bz.setup_size);
	/* the kernel needs more RAM than this test gives it: 16 MiB + init_size */
	assert_true(bz.init_size > RAM_SIZE - 16 * MiB);
	assert_int_equal(boot_load(&m, data, (size_t)len, 0, "", &k, &e), -ENOSPC);
	assert_non_null(strstr(e.msg, "the kernel needs RAM from 0x1000000"));

	/* with room: loaded at 16 MiB, entered at +0x200, the header's limits enforced */
	m.low_size = ALIGN_UP(16 * MiB + bz.init_size, 2 * MiB) + 8 * MiB;
	assert_true(m.low_size <= 128 * MiB);
	{
		uint8_t *big = mmap(NULL, 128 * MiB, PROT_READ | PROT_WRITE,
				    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		struct boot_ram_range r = { 0, m.low_size };

		assert_true(big != MAP_FAILED);
		m.ram = big;
		m.ranges = &r;
		memset(longline, 'x', sizeof(longline) - 1);
		longline[sizeof(longline) - 1] = 0;
		longline[bz.cmdline_size + 1] = 0;
		assert_int_equal(boot_load(&m, data, (size_t)len, 0, longline, &k, &e), -E2BIG);
		assert_non_null(strstr(e.msg, "(its cmdline_size)"));
		assert_int_equal(boot_load(&m, data, (size_t)len, 9 * MiB, "", &k, &e), -ENOSPC);
		assert_non_null(strstr(e.msg, "initrd of 9437184 bytes does not fit"));
		assert_int_equal(boot_load(&m, data, (size_t)len, 1 * MiB, "console=ttyS0", &k, &e),
				 0);
		assert_int_equal(k.entry, 0x1000200);
		assert_memory_equal(big + 0x1000000, data + bz.setup_size, bz.kernel_len);
		assert_memory_equal(big + BOOT_PARAMS_GPA + 0x1fc, data + 0x1fc, 0x210 - 0x1fc);
		assert_memory_equal(big + BOOT_PARAMS_GPA + 0x22c, data + 0x22c, 0x264 - 0x22c);
		assert_int_equal(k.initrd_gpa, m.low_size - 1 * MiB);
		munmap(big, 128 * MiB);
	}
	free(data);
}

int main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_bzimage_load),
		cmocka_unit_test(test_bzimage_reject),
		cmocka_unit_test(test_initrd_placement),
		cmocka_unit_test(test_vmlinux_load),
		cmocka_unit_test(test_pvh_initrd),
		cmocka_unit_test(test_acpi_limits),
	};
	const struct CMUnitTest debian[] = {
		cmocka_unit_test(test_debian_bzimage),
	};
	const char *dir = getenv("GODWIT_LINUX_DIR");
	char path[512];

	if (argc > 1 && !strcmp(argv[1], "debian")) {
		snprintf(path, sizeof(path), "%s/vmlinuz", dir ? dir : "");
		if (!dir || access(path, R_OK) != 0) {
			printf("SKIP: no Debian kernel at %s (scripts/get-linux-kernel fetches it)\n",
			       path);
			return 77;
		}
		return cmocka_run_group_tests(debian, ram_setup, ram_teardown);
	}
	return cmocka_run_group_tests(tests, ram_setup, ram_teardown);
}
