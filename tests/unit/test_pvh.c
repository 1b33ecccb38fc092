/* SPDX-License-Identifier: MIT */
/*
 * Unit tests for the PVH ELF loader: ELF32 and ELF64 images are built byte by byte
 * here, then loaded intact or with one field broken at a time.
 */
#include "arch/x86/pvh.h"
#include "base/buf.h"

#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#define RAM_SIZE (4 * MiB)
#define TEXT_OFF 0x1000
#define TEXT_PADDR 0x100000
#define TEXT_SIZE 0x200
#define DATA_OFF 0x1200
#define DATA_PADDR 0x102000
#define DATA_FILESZ 0x100
#define DATA_MEMSZ 0x1000
#define NOTE_OFF 0x1400
#define ENTRY 0x100010u
#define SHOFF 0x200

/* program header indices of the standard image */
enum { PH_TEXT, PH_DATA, PH_NOTE, PH_COUNT };

struct img {
	uint8_t b[0x2000];
	size_t len;
	bool is64;
	size_t notes_len;
	size_t xen_desc_off; /* file offset of the Xen note's descriptor */
	size_t xen_hdr_off;  /* file offset of the Xen note's header */
};

enum ph_field { F_TYPE, F_OFFSET, F_PADDR, F_FILESZ, F_MEMSZ, F_ALIGN };

static void put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}

/* Writes v as a 4- or 8-byte field depending on the class. */
static void put_word(struct img *m, size_t off, uint64_t v)
{
	if (m->is64)
		le_put64(m->b + off, v);
	else
		le_put32(m->b + off, (uint32_t)v);
}

static size_t ph_base(const struct img *m, unsigned i)
{
	return (m->is64 ? 64 : 52) + i * (m->is64 ? 56u : 32u);
}

static void ph_set(struct img *m, unsigned i, enum ph_field f, uint64_t v)
{
	static const size_t off64[] = { 0, 8, 24, 32, 40, 48 };
	static const size_t off32[] = { 0, 4, 12, 16, 20, 28 };
	size_t at = ph_base(m, i) + (m->is64 ? off64[f] : off32[f]);

	if (f == F_TYPE)
		le_put32(m->b + at, (uint32_t)v);
	else
		put_word(m, at, v);
}

static void ph_put(struct img *m, unsigned i, uint32_t type, uint64_t off, uint64_t paddr,
		   uint64_t filesz, uint64_t memsz, uint64_t align)
{
	ph_set(m, i, F_TYPE, type);
	ph_set(m, i, F_OFFSET, off);
	ph_set(m, i, F_PADDR, paddr);
	ph_set(m, i, F_FILESZ, filesz);
	ph_set(m, i, F_MEMSZ, memsz);
	ph_set(m, i, F_ALIGN, align);
	/* p_vaddr: a high kernel address, which the loader must ignore */
	put_word(m, ph_base(m, i) + (m->is64 ? 16 : 8),
		 m->is64 ? 0xffffffff80000000ull + paddr : 0xc0000000u + paddr);
}

/* ELF header fields that the tests break, at their class-specific offsets */
static void eh_set_phoff(struct img *m, uint64_t v)
{
	put_word(m, m->is64 ? 32 : 28, v);
}

static void eh_set_shoff(struct img *m, uint64_t v)
{
	put_word(m, m->is64 ? 40 : 32, v);
}

static void eh_set16(struct img *m, unsigned off64, unsigned off32, uint16_t v)
{
	put16(m->b + (m->is64 ? off64 : off32), v);
}

#define EH_EHSIZE 52, 40
#define EH_PHENTSIZE 54, 42
#define EH_PHNUM 56, 44
#define EH_SHENTSIZE 58, 46
#define EH_SHNUM 60, 48

static size_t note_put(uint8_t *p, const char *name, uint32_t type, const void *desc,
		       uint32_t descsz)
{
	uint32_t namesz = (uint32_t)strlen(name) + 1;
	size_t n = 12;

	le_put32(p, namesz);
	le_put32(p + 4, descsz);
	le_put32(p + 8, type);
	memcpy(p + n, name, namesz);
	n += ALIGN_UP(namesz, 4);
	memcpy(p + n, desc, descsz);
	n += ALIGN_UP(descsz, 4);
	return n;
}

/*
 * A valid PVH kernel: text at 1 MiB, data plus bss at 1 MiB + 8 KiB, a note segment
 * holding a build-id note and then the Xen entry note, and a section table with the
 * same notes as an SHT_NOTE section.
 */
static void img_build(struct img *m, bool is64, uint32_t xen_descsz)
{
	uint8_t desc[8] = { 0 };
	uint8_t build_id[8] = { 1, 2, 3, 4, 5, 6, 7, 8 };
	size_t i, sh;

	memset(m, 0, sizeof(*m));
	m->is64 = is64;
	memcpy(m->b, ELFMAG, SELFMAG);
	m->b[EI_CLASS] = is64 ? ELFCLASS64 : ELFCLASS32;
	m->b[EI_DATA] = ELFDATA2LSB;
	m->b[EI_VERSION] = EV_CURRENT;
	put16(m->b + 16, ET_EXEC);
	put16(m->b + 18, is64 ? EM_X86_64 : EM_386);
	le_put32(m->b + 20, EV_CURRENT);
	put_word(m, 24, 0xffffffff81000000ull); /* e_entry: virtual, not used for PVH */
	eh_set_phoff(m, is64 ? 64 : 52);
	eh_set_shoff(m, SHOFF);
	eh_set16(m, EH_EHSIZE, is64 ? 64 : 52);
	eh_set16(m, EH_PHENTSIZE, is64 ? 56 : 32);
	eh_set16(m, EH_PHNUM, PH_COUNT);
	eh_set16(m, EH_SHENTSIZE, is64 ? 64 : 40);
	eh_set16(m, EH_SHNUM, 2);

	for (i = 0; i < TEXT_SIZE; i++)
		m->b[TEXT_OFF + i] = (uint8_t)(i * 7 + 1);
	for (i = 0; i < DATA_FILESZ; i++)
		m->b[DATA_OFF + i] = (uint8_t)(i * 3 + 2);

	m->notes_len = note_put(m->b + NOTE_OFF, "GNU", NT_GNU_BUILD_ID, build_id, 8);
	le_put32(desc, ENTRY);
	le_put32(desc + 4, 0xdeadbeef); /* upper half of an 8-byte descriptor: ignored */
	m->xen_hdr_off = NOTE_OFF + m->notes_len;
	m->xen_desc_off = m->xen_hdr_off + 16;
	m->notes_len += note_put(m->b + m->xen_hdr_off, "Xen", 18, desc, xen_descsz);
	m->len = NOTE_OFF + m->notes_len;

	ph_put(m, PH_TEXT, PT_LOAD, TEXT_OFF, TEXT_PADDR, TEXT_SIZE, TEXT_SIZE, 0x1000);
	ph_put(m, PH_DATA, PT_LOAD, DATA_OFF, DATA_PADDR, DATA_FILESZ, DATA_MEMSZ, 0x1000);
	ph_put(m, PH_NOTE, PT_NOTE, NOTE_OFF, 0, m->notes_len, 0, 4);

	/* section 0 is the null section; section 1 is the note section */
	sh = SHOFF + (is64 ? 64 : 40);
	le_put32(m->b + sh + 4, SHT_NOTE);
	if (is64) {
		le_put64(m->b + sh + 24, NOTE_OFF);
		le_put64(m->b + sh + 32, m->notes_len);
		le_put64(m->b + sh + 48, 4);
	} else {
		le_put32(m->b + sh + 16, NOTE_OFF);
		le_put32(m->b + sh + 20, (uint32_t)m->notes_len);
		le_put32(m->b + sh + 32, 4);
	}
}

static void sh_set_type(struct img *m, uint32_t type)
{
	le_put32(m->b + SHOFF + (m->is64 ? 64 : 40) + 4, type);
}

static uint8_t *ram_new(void)
{
	uint8_t *ram = malloc(RAM_SIZE);

	assert_non_null(ram);
	memset(ram, 0xaa, RAM_SIZE);
	return ram;
}

static bool ram_untouched(const uint8_t *ram)
{
	size_t i;

	for (i = 0; i < RAM_SIZE; i++)
		if (ram[i] != 0xaa)
			return false;
	return true;
}

static void check_loaded(const struct img *m, const uint8_t *ram, const struct pvh_image *pi)
{
	size_t i;

	assert_int_equal(pi->entry, ENTRY);
	assert_int_equal(pi->load_low, TEXT_PADDR);
	assert_int_equal(pi->load_high, DATA_PADDR + DATA_MEMSZ);
	assert_memory_equal(ram + TEXT_PADDR, m->b + TEXT_OFF, TEXT_SIZE);
	assert_memory_equal(ram + DATA_PADDR, m->b + DATA_OFF, DATA_FILESZ);
	for (i = DATA_PADDR + DATA_FILESZ; i < DATA_PADDR + DATA_MEMSZ; i++)
		assert_int_equal(ram[i], 0);
	/* nothing outside the segments was written */
	assert_int_equal(ram[TEXT_PADDR - 1], 0xaa);
	assert_int_equal(ram[TEXT_PADDR + TEXT_SIZE], 0xaa);
	assert_int_equal(ram[DATA_PADDR - 1], 0xaa);
	assert_int_equal(ram[DATA_PADDR + DATA_MEMSZ], 0xaa);
	assert_int_equal(ram[0], 0xaa);
}

static void expect_ok(const struct img *m)
{
	uint8_t *ram = ram_new();
	struct pvh_image pi;
	struct errbuf e = { { 0 } };
	int ret;

	ret = pvh_load(m->b, m->len, ram, RAM_SIZE, &pi, &e);
	if (ret)
		fail_msg("load failed (%d): %s", ret, e.msg);
	check_loaded(m, ram, &pi);
	free(ram);
}

/* The load must fail with ret and a message containing msg, leaving RAM alone. */
static void expect_fail_len(const struct img *m, size_t len, int ret, const char *msg)
{
	uint8_t *ram = ram_new();
	struct pvh_image pi;
	struct errbuf e = { { 0 } };

	assert_int_equal(pvh_load(m->b, len, ram, RAM_SIZE, &pi, &e), ret);
	if (!strstr(e.msg, msg))
		fail_msg("error \"%s\" does not contain \"%s\"", e.msg, msg);
	assert_true(ram_untouched(ram));
	free(ram);
}

static void expect_fail(const struct img *m, const char *msg)
{
	expect_fail_len(m, m->len, -ENOEXEC, msg);
}

static void test_load_elf64(void **state)
{
	struct img m;

	img_build(&m, true, 4);
	expect_ok(&m);
}

static void test_load_elf32(void **state)
{
	struct img m;

	img_build(&m, false, 4);
	expect_ok(&m);
}

static void test_load_desc8_uses_low_half(void **state)
{
	struct img m;

	img_build(&m, true, 8);
	expect_ok(&m);
	img_build(&m, false, 8);
	expect_ok(&m);
}

static void test_load_note_from_section(void **state)
{
	struct img m;
	int c;

	for (c = 0; c < 2; c++) {
		img_build(&m, c, 4);
		ph_set(&m, PH_NOTE, F_TYPE, PT_NULL);
		expect_ok(&m);
	}
}

static void test_load_segment_at_ram_end(void **state)
{
	uint8_t *ram = ram_new();
	struct pvh_image pi;
	struct errbuf e = { { 0 } };
	struct img m;

	img_build(&m, true, 4);
	ph_set(&m, PH_DATA, F_PADDR, RAM_SIZE - DATA_MEMSZ);
	assert_int_equal(pvh_load(m.b, m.len, ram, RAM_SIZE, &pi, &e), 0);
	assert_int_equal(pi.load_high, RAM_SIZE);
	assert_int_equal(ram[RAM_SIZE - 1], 0);
	assert_memory_equal(ram + RAM_SIZE - DATA_MEMSZ, m.b + DATA_OFF, DATA_FILESZ);
	free(ram);
}

static void test_reject_not_elf(void **state)
{
	struct img m;

	img_build(&m, true, 4);
	expect_fail_len(&m, 0, -ENOEXEC, "kernel is not an ELF file");
	expect_fail_len(&m, 10, -ENOEXEC, "kernel is not an ELF file");
	expect_fail_len(&m, 40, -ENOEXEC, "ELF header truncated (40 of 64 bytes)");
	img_build(&m, false, 4);
	expect_fail_len(&m, 51, -ENOEXEC, "ELF header truncated (51 of 52 bytes)");
	m.b[1] = 'e';
	expect_fail(&m, "kernel is not an ELF file");
	img_build(&m, true, 4);
	m.b[EI_CLASS] = 3;
	expect_fail(&m, "ELF class 3");
	img_build(&m, true, 4);
	m.b[EI_DATA] = ELFDATA2MSB;
	expect_fail(&m, "not a little-endian ELF");
	img_build(&m, true, 4);
	m.b[EI_VERSION] = 2;
	expect_fail(&m, "identification version 2");
	img_build(&m, true, 4);
	le_put32(m.b + 20, 0);
	expect_fail(&m, "ELF version 0");
}

static void test_reject_header_fields(void **state)
{
	struct img m;
	int c;

	for (c = 0; c < 2; c++) {
		img_build(&m, c, 4);
		put16(m.b + 18, EM_ARM);
		expect_fail(&m, "not an x86 ELF file (e_machine 40)");
		img_build(&m, c, 4);
		put16(m.b + 16, ET_DYN);
		expect_fail(&m, "not an ELF executable (e_type 3)");
		img_build(&m, c, 4);
		eh_set16(&m, EH_EHSIZE, 0x40 + 0x10);
		expect_fail(&m, "ELF header size");
		img_build(&m, c, 4);
		eh_set16(&m, EH_PHENTSIZE, 16);
		expect_fail(&m, "program header size 16");
		img_build(&m, c, 4);
		eh_set16(&m, EH_SHENTSIZE, 8);
		expect_fail(&m, "section header size 8");
	}
}

static void test_reject_phdr_table(void **state)
{
	struct img m;
	int c;

	for (c = 0; c < 2; c++) {
		img_build(&m, c, 4);
		eh_set_phoff(&m, m.len);
		expect_fail(&m, "program header table");
		img_build(&m, c, 4);
		eh_set_phoff(&m, m.len - 8);
		expect_fail(&m, "lies outside the file");
		img_build(&m, c, 4);
		eh_set_phoff(&m, c ? UINT64_MAX - 7 : UINT32_MAX - 7);
		expect_fail(&m, "program header table");
		/* a count whose table would run far past the end */
		img_build(&m, c, 4);
		eh_set16(&m, EH_PHNUM, 0xfffe);
		expect_fail(&m, "65534 entries");
		img_build(&m, c, 4);
		eh_set16(&m, EH_PHNUM, PN_XNUM);
		expect_fail(&m, "extended program header numbering");
		img_build(&m, c, 4);
		eh_set16(&m, EH_PHNUM, 0);
		expect_fail(&m, "no program headers");
		/* the section table is checked too */
		img_build(&m, c, 4);
		eh_set_shoff(&m, c ? UINT64_MAX - 7 : UINT32_MAX - 7);
		expect_fail(&m, "section header table");
		img_build(&m, c, 4);
		eh_set16(&m, EH_SHNUM, 200);
		expect_fail(&m, "section header table (offset 0x200, 200 entries)");
	}
}

static void test_reject_segment_file_range(void **state)
{
	struct img m;
	int c;

	for (c = 0; c < 2; c++) {
		img_build(&m, c, 4);
		ph_set(&m, PH_TEXT, F_OFFSET, m.len - 0x10);
		expect_fail(&m, "segment 0 (offset 0x");
		img_build(&m, c, 4);
		ph_set(&m, PH_DATA, F_OFFSET, c ? UINT64_MAX - 0x10 : UINT32_MAX - 0x10);
		expect_fail(&m, "segment 1 (offset 0x");
		img_build(&m, c, 4);
		ph_set(&m, PH_DATA, F_FILESZ, c ? UINT64_MAX : UINT32_MAX);
		ph_set(&m, PH_DATA, F_MEMSZ, c ? UINT64_MAX : UINT32_MAX);
		expect_fail(&m, "lies outside the file");
		img_build(&m, c, 4);
		ph_set(&m, PH_DATA, F_FILESZ, DATA_MEMSZ + 1);
		expect_fail(&m, "segment 1 file size 0x1001 exceeds its memory size 0x1000");
	}
}

static void test_reject_segment_ram_range(void **state)
{
	struct img m;
	int c;

	for (c = 0; c < 2; c++) {
		img_build(&m, c, 4);
		ph_set(&m, PH_DATA, F_PADDR, RAM_SIZE - 0x100);
		expect_fail(&m, "segment 1 at 0x3fff00 size 0x1000 lies outside guest RAM (0x100000-0x400000)");
		img_build(&m, c, 4);
		ph_set(&m, PH_DATA, F_PADDR, RAM_SIZE);
		expect_fail(&m, "lies outside guest RAM");
		img_build(&m, c, 4);
		ph_set(&m, PH_TEXT, F_PADDR, 0xf0000);
		expect_fail(&m, "segment 0 at 0xf0000 size 0x200 lies below 0x100000");
		img_build(&m, c, 4);
		ph_set(&m, PH_TEXT, F_PADDR, 0);
		expect_fail(&m, "lies below");
		/* wrapping the address space */
		img_build(&m, c, 4);
		ph_set(&m, PH_DATA, F_PADDR, c ? UINT64_MAX - 0xfff : UINT32_MAX - 0xfff);
		ph_set(&m, PH_DATA, F_MEMSZ, 0x2000);
		expect_fail(&m, "lies outside guest RAM");
		img_build(&m, c, 4);
		ph_set(&m, PH_DATA, F_MEMSZ, c ? UINT64_MAX : UINT32_MAX);
		expect_fail(&m, "lies outside guest RAM");
	}
}

static void test_reject_note(void **state)
{
	struct img m;
	int c;

	for (c = 0; c < 2; c++) {
		/* no note anywhere */
		img_build(&m, c, 4);
		ph_set(&m, PH_NOTE, F_TYPE, PT_NULL);
		sh_set_type(&m, SHT_PROGBITS);
		expect_fail(&m, "kernel has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); only PVH kernels are supported");
		/* a Xen note of another type, or with another name, is not the entry */
		img_build(&m, c, 4);
		le_put32(m.b + m.xen_hdr_off + 8, 17);
		expect_fail(&m, "no PVH entry note");
		img_build(&m, c, 4);
		memcpy(m.b + m.xen_hdr_off + 12, "Xan", 4);
		expect_fail(&m, "no PVH entry note");
		/* bad descriptor sizes */
		img_build(&m, c, 4);
		le_put32(m.b + m.xen_hdr_off + 4, 2);
		expect_fail(&m, "PVH entry note has a 2-byte descriptor (expected 4 or 8)");
		img_build(&m, c, 4);
		le_put32(m.b + m.xen_hdr_off + 4, 0xfffffff0);
		expect_fail(&m, "overruns the segment");
		img_build(&m, c, 4);
		le_put32(m.b + m.xen_hdr_off, 0xffffffff);
		expect_fail(&m, "segment 2: note at offset 0x18 (name size 4294967295");
		/* the same breakage found through the section table */
		img_build(&m, c, 4);
		ph_set(&m, PH_NOTE, F_TYPE, PT_NULL);
		le_put32(m.b + NOTE_OFF + 4, 0x7fffffff);
		expect_fail(&m, "section 1: note at offset 0x0");
		/* the note segment itself outside the file */
		img_build(&m, c, 4);
		ph_set(&m, PH_NOTE, F_FILESZ, m.len);
		expect_fail(&m, "note segment 2 (offset 0x1400");
		/* the entry must be inside what is loaded */
		img_build(&m, c, 4);
		le_put32(m.b + m.xen_desc_off, 0x200000);
		expect_fail(&m, "PVH entry 0x200000 is not inside a loaded segment");
	}
}

static void test_note_walk_edges(void **state)
{
	struct img m;

	/* trailing padding shorter than a note header is not an error */
	img_build(&m, true, 4);
	ph_set(&m, PH_NOTE, F_FILESZ, m.notes_len + 8);
	m.len += 8;
	expect_ok(&m);
	/*
	 * An 8-aligned region: the build-id note (8-byte descriptor) walks the same, and
	 * the Xen note's 4-byte descriptor has its padding to 8 cut off by the end.
	 */
	img_build(&m, true, 4);
	ph_set(&m, PH_NOTE, F_ALIGN, 8);
	expect_ok(&m);
	/* an empty note segment is skipped, the section still has the note */
	img_build(&m, false, 4);
	ph_set(&m, PH_NOTE, F_FILESZ, 0);
	expect_ok(&m);
}

static void test_reject_no_load(void **state)
{
	struct img m;
	int c;

	for (c = 0; c < 2; c++) {
		img_build(&m, c, 4);
		ph_set(&m, PH_TEXT, F_TYPE, PT_NULL);
		ph_set(&m, PH_DATA, F_TYPE, PT_NULL);
		expect_fail(&m, "kernel has no loadable (PT_LOAD) segment");
		img_build(&m, c, 4);
		ph_set(&m, PH_TEXT, F_MEMSZ, 0);
		ph_set(&m, PH_TEXT, F_FILESZ, 0);
		ph_set(&m, PH_DATA, F_TYPE, PT_NULL);
		expect_fail(&m, "no loadable");
	}
	/* an empty PT_LOAD is ignored even at an address that could not be loaded */
	img_build(&m, true, 4);
	ph_put(&m, PH_NOTE, PT_LOAD, 0, 0, 0, 0, 0x1000);
	expect_ok(&m);
}

static void test_reject_bad_args(void **state)
{
	struct img m;
	struct pvh_image pi;
	struct errbuf e = { { 0 } };
	uint8_t ram[16];

	img_build(&m, true, 4);
	assert_int_equal(pvh_load(NULL, 0, ram, sizeof(ram), &pi, &e), -EINVAL);
	/* RAM too small for anything at 1 MiB */
	assert_int_equal(pvh_load(m.b, m.len, ram, sizeof(ram), &pi, &e), -ENOEXEC);
	assert_non_null(strstr(e.msg, "lies outside guest RAM"));
	assert_int_equal(pvh_load(m.b, m.len, ram, sizeof(ram), &pi, NULL), -ENOEXEC);
}

static void write_file(const char *path, const void *p, size_t n)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);

	assert_true(fd >= 0);
	assert_int_equal(io_write_full(fd, p, n), 0);
	assert_int_equal(close(fd), 0);
}

static void test_load_file(void **state)
{
	char dir[] = "/tmp/godwit-test-pvh-XXXXXX";
	char path[128], msg[256];
	uint8_t *ram = ram_new();
	struct pvh_image pi;
	struct errbuf e = { { 0 } };
	struct img m;
	int fd;

	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/missing", dir);
	assert_int_equal(pvh_load_file(path, ram, RAM_SIZE, &pi, &e), -ENOENT);
	snprintf(msg, sizeof(msg), "open kernel %s: No such file or directory", path);
	assert_string_equal(e.msg, msg);

	assert_int_equal(pvh_load_file(dir, ram, RAM_SIZE, &pi, &e), -EINVAL);
	assert_non_null(strstr(e.msg, "is not a regular file"));
	assert_non_null(strstr(e.msg, dir));
	assert_int_equal(pvh_load_file("/dev/null", ram, RAM_SIZE, &pi, &e), -EINVAL);
	assert_non_null(strstr(e.msg, "/dev/null is not a regular file"));

	snprintf(path, sizeof(path), "%s/fifo", dir);
	assert_int_equal(mkfifo(path, 0600), 0);
	assert_int_equal(pvh_load_file(path, ram, RAM_SIZE, &pi, &e), -EINVAL);
	assert_int_equal(unlink(path), 0);

	snprintf(path, sizeof(path), "%s/big", dir);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, 64 * MiB + 1), 0);
	close(fd);
	assert_int_equal(pvh_load_file(path, ram, RAM_SIZE, &pi, &e), -EFBIG);
	assert_non_null(strstr(e.msg, "64 MiB"));
	assert_int_equal(unlink(path), 0);

	snprintf(path, sizeof(path), "%s/junk", dir);
	write_file(path, "#!/bin/sh\n", 10);
	assert_int_equal(pvh_load_file(path, ram, RAM_SIZE, &pi, &e), -ENOEXEC);
	snprintf(msg, sizeof(msg), "%s: kernel is not an ELF file", path);
	assert_string_equal(e.msg, msg);
	write_file(path, "", 0);
	assert_int_equal(pvh_load_file(path, ram, RAM_SIZE, &pi, &e), -ENOEXEC);
	assert_true(ram_untouched(ram));
	assert_int_equal(unlink(path), 0);

	snprintf(path, sizeof(path), "%s/kernel", dir);
	img_build(&m, true, 4);
	write_file(path, m.b, m.len);
	assert_int_equal(pvh_load_file(path, ram, RAM_SIZE, &pi, &e), 0);
	check_loaded(&m, ram, &pi);
	assert_int_equal(unlink(path), 0);
	assert_int_equal(rmdir(dir), 0);
	free(ram);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_load_elf64),
		cmocka_unit_test(test_load_elf32),
		cmocka_unit_test(test_load_desc8_uses_low_half),
		cmocka_unit_test(test_load_note_from_section),
		cmocka_unit_test(test_load_segment_at_ram_end),
		cmocka_unit_test(test_reject_not_elf),
		cmocka_unit_test(test_reject_header_fields),
		cmocka_unit_test(test_reject_phdr_table),
		cmocka_unit_test(test_reject_segment_file_range),
		cmocka_unit_test(test_reject_segment_ram_range),
		cmocka_unit_test(test_reject_note),
		cmocka_unit_test(test_note_walk_edges),
		cmocka_unit_test(test_reject_no_load),
		cmocka_unit_test(test_reject_bad_args),
		cmocka_unit_test(test_load_file),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
