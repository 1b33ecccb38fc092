/* SPDX-License-Identifier: MIT */
/*
 * PVH ELF loader. The kernel file is untrusted: every header field is decoded
 * explicitly (little-endian, no struct overlays), every offset and size is checked
 * with overflow-safe arithmetic, and guest RAM is written only after the whole
 * image has been validated, so a rejected kernel leaves RAM untouched.
 */
#include "arch/x86/pvh.h"
#include "base/buf.h"

#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define PVH_FILE_MAX (64 * MiB)
#define XEN_ELFNOTE_PHYS32_ENTRY 18

/* ELF32 and ELF64 headers decoded into one shape. */
struct pvh_elf {
	const uint8_t *p;
	size_t len;
	bool is64;
	uint16_t machine;
	uint64_t entry;     /* e_entry */
	uint64_t phoff;
	uint64_t shoff;
	uint16_t phentsize;
	uint16_t phnum;
	uint16_t shentsize;
	uint16_t shnum;
};

struct pvh_phdr {
	uint32_t type;
	uint64_t offset;
	uint64_t paddr;
	uint64_t filesz;
	uint64_t memsz;
	uint64_t align;
};

struct pvh_shdr {
	uint32_t type;
	uint64_t offset;
	uint64_t size;
	uint64_t align;
};

/* [off, off + size) lies inside [0, len), without overflow */
static bool pvh_range_ok(uint64_t off, uint64_t size, uint64_t len)
{
	return off <= len && size <= len - off;
}

static int pvh_ehdr_parse(struct pvh_elf *elf, const void *p, size_t len, struct errbuf *e)
{
	const uint8_t *b = p;
	uint16_t type, machine, ehsize;
	size_t hdr_len;
	uint32_t version;

	memset(elf, 0, sizeof(*elf));
	elf->p = b;
	elf->len = len;
	if (len < EI_NIDENT || memcmp(b, ELFMAG, SELFMAG) != 0)
		return err_set(e, -ENOEXEC, "kernel is not an ELF file");
	if (b[EI_CLASS] == ELFCLASS64)
		elf->is64 = true;
	else if (b[EI_CLASS] != ELFCLASS32)
		return err_set(e, -ENOEXEC, "kernel ELF class %u is neither ELF32 nor ELF64",
			       b[EI_CLASS]);
	if (b[EI_DATA] != ELFDATA2LSB)
		return err_set(e, -ENOEXEC, "kernel is not a little-endian ELF file");
	if (b[EI_VERSION] != EV_CURRENT)
		return err_set(e, -ENOEXEC, "kernel ELF identification version %u is not %u",
			       b[EI_VERSION], EV_CURRENT);
	hdr_len = elf->is64 ? sizeof(Elf64_Ehdr) : sizeof(Elf32_Ehdr);
	if (len < hdr_len)
		return err_set(e, -ENOEXEC, "kernel ELF header truncated (%zu of %zu bytes)", len,
			       hdr_len);

	type = le_get16(b + 16);
	machine = le_get16(b + 18);
	version = le_get32(b + 20);
	elf->machine = machine;
	if (elf->is64) {
		elf->entry = le_get64(b + 24);
		elf->phoff = le_get64(b + 32);
		elf->shoff = le_get64(b + 40);
		ehsize = le_get16(b + 52);
		elf->phentsize = le_get16(b + 54);
		elf->phnum = le_get16(b + 56);
		elf->shentsize = le_get16(b + 58);
		elf->shnum = le_get16(b + 60);
	} else {
		elf->entry = le_get32(b + 24);
		elf->phoff = le_get32(b + 28);
		elf->shoff = le_get32(b + 32);
		ehsize = le_get16(b + 40);
		elf->phentsize = le_get16(b + 42);
		elf->phnum = le_get16(b + 44);
		elf->shentsize = le_get16(b + 46);
		elf->shnum = le_get16(b + 48);
	}

	if (type != ET_EXEC)
		return err_set(e, -ENOEXEC, "kernel is not an ELF executable (e_type %u)", type);
	if (machine != EM_X86_64 && machine != EM_386)
		return err_set(e, -ENOEXEC, "kernel is not an x86 ELF file (e_machine %u)", machine);
	if (version != EV_CURRENT)
		return err_set(e, -ENOEXEC, "kernel ELF version %u is not %u", version, EV_CURRENT);
	if (ehsize != hdr_len)
		return err_set(e, -ENOEXEC, "kernel ELF header size %u, expected %zu", ehsize,
			       hdr_len);

	if (elf->phnum == 0)
		return err_set(e, -ENOEXEC, "kernel has no program headers");
	/* PN_XNUM moves the count into section 0; no kernel needs that many */
	if (elf->phnum == PN_XNUM)
		return err_set(e, -ENOEXEC, "kernel uses extended program header numbering");
	if (elf->phentsize != (elf->is64 ? sizeof(Elf64_Phdr) : sizeof(Elf32_Phdr)))
		return err_set(e, -ENOEXEC, "kernel program header size %u, expected %zu",
			       elf->phentsize, elf->is64 ? sizeof(Elf64_Phdr) : sizeof(Elf32_Phdr));
	if (!pvh_range_ok(elf->phoff, (uint64_t)elf->phnum * elf->phentsize, len))
		return err_set(e, -ENOEXEC,
			       "kernel program header table (offset 0x%llx, %u entries) lies outside the file (%zu bytes)",
			       (unsigned long long)elf->phoff, elf->phnum, len);

	/* section headers are only a fallback for finding the note, but must be sane */
	if (elf->shnum) {
		if (elf->shentsize != (elf->is64 ? sizeof(Elf64_Shdr) : sizeof(Elf32_Shdr)))
			return err_set(e, -ENOEXEC, "kernel section header size %u, expected %zu",
				       elf->shentsize,
				       elf->is64 ? sizeof(Elf64_Shdr) : sizeof(Elf32_Shdr));
		if (!pvh_range_ok(elf->shoff, (uint64_t)elf->shnum * elf->shentsize, len))
			return err_set(e, -ENOEXEC,
				       "kernel section header table (offset 0x%llx, %u entries) lies outside the file (%zu bytes)",
				       (unsigned long long)elf->shoff, elf->shnum, len);
	}
	return 0;
}

static void pvh_phdr_get(const struct pvh_elf *elf, unsigned i, struct pvh_phdr *ph)
{
	const uint8_t *b = elf->p + elf->phoff + (size_t)i * elf->phentsize;

	ph->type = le_get32(b);
	if (elf->is64) {
		ph->offset = le_get64(b + 8);
		ph->paddr = le_get64(b + 24);
		ph->filesz = le_get64(b + 32);
		ph->memsz = le_get64(b + 40);
		ph->align = le_get64(b + 48);
	} else {
		ph->offset = le_get32(b + 4);
		ph->paddr = le_get32(b + 12);
		ph->filesz = le_get32(b + 16);
		ph->memsz = le_get32(b + 20);
		ph->align = le_get32(b + 28);
	}
}

static void pvh_shdr_get(const struct pvh_elf *elf, unsigned i, struct pvh_shdr *sh)
{
	const uint8_t *b = elf->p + elf->shoff + (size_t)i * elf->shentsize;

	sh->type = le_get32(b + 4);
	if (elf->is64) {
		sh->offset = le_get64(b + 24);
		sh->size = le_get64(b + 32);
		sh->align = le_get64(b + 48);
	} else {
		sh->offset = le_get32(b + 16);
		sh->size = le_get32(b + 20);
		sh->align = le_get32(b + 32);
	}
}

/*
 * Walks the notes in [off, off + size) of the file (already checked to be inside
 * it). Notes are 4-byte aligned; a region aligned to 8 (GNU property notes) pads
 * to 8, as readelf does. Returns 1 and sets *entry if the PVH entry note is there,
 * 0 if not, or a negative errno for a malformed note; what names the region. Notes named
 * "Linux" (every vmlinux since 4.20 has one) set *is_linux.
 */
static int pvh_notes_find(const struct pvh_elf *elf, uint64_t off, uint64_t size, uint64_t align,
			  const char *what, unsigned idx, uint32_t *entry, bool *is_linux,
			  struct errbuf *e)
{
	const uint8_t *base = elf->p + off;
	uint64_t a = align == 8 ? 8 : 4;
	uint64_t pos = 0;

	while (size - pos >= 12) {
		uint32_t namesz = le_get32(base + pos);
		uint32_t descsz = le_get32(base + pos + 4);
		uint32_t type = le_get32(base + pos + 8);
		uint64_t name_off = pos + 12;
		uint64_t desc_off = name_off + ALIGN_UP((uint64_t)namesz, 4);
		const uint8_t *name = base + name_off;

		/* the sizes are 32-bit, so these sums cannot wrap in 64 bits */
		if (desc_off > size || descsz > size - desc_off)
			return err_set(e, -ENOEXEC,
				       "kernel %s %u: note at offset 0x%llx (name size %u, descriptor size %u) overruns the %s",
				       what, idx, (unsigned long long)pos, namesz, descsz, what);
		if (namesz == 6 && memcmp(name, "Linux", 6) == 0)
			*is_linux = true;
		if (type == XEN_ELFNOTE_PHYS32_ENTRY && namesz == 4 && memcmp(name, "Xen", 4) == 0) {
			if (descsz != 4 && descsz != 8)
				return err_set(e, -ENOEXEC,
					       "kernel PVH entry note has a %u-byte descriptor (expected 4 or 8)",
					       descsz);
			/* an 8-byte descriptor is a 64-bit address; the entry is 32-bit */
			*entry = le_get32(base + desc_off);
			return 1;
		}
		/* the last note's padding may be cut off by the end of the region */
		pos = MIN(desc_off + ALIGN_UP((uint64_t)descsz, a), size);
	}
	/* fewer than 12 bytes left: section padding, not a note */
	return 0;
}

static int pvh_entry_find(const struct pvh_elf *elf, uint32_t *entry, bool *is_linux,
			  struct errbuf *e)
{
	struct pvh_phdr ph;
	struct pvh_shdr sh;
	unsigned i;
	int ret;

	for (i = 0; i < elf->phnum; i++) {
		pvh_phdr_get(elf, i, &ph);
		if (ph.type != PT_NOTE)
			continue;
		if (!pvh_range_ok(ph.offset, ph.filesz, elf->len))
			return err_set(e, -ENOEXEC,
				       "kernel note segment %u (offset 0x%llx size 0x%llx) lies outside the file (%zu bytes)",
				       i, (unsigned long long)ph.offset,
				       (unsigned long long)ph.filesz, elf->len);
		ret = pvh_notes_find(elf, ph.offset, ph.filesz, ph.align, "segment", i, entry,
				     is_linux, e);
		if (ret)
			return ret;
	}
	for (i = 0; i < elf->shnum; i++) {
		pvh_shdr_get(elf, i, &sh);
		if (sh.type != SHT_NOTE)
			continue;
		if (!pvh_range_ok(sh.offset, sh.size, elf->len))
			return err_set(e, -ENOEXEC,
				       "kernel note section %u (offset 0x%llx size 0x%llx) lies outside the file (%zu bytes)",
				       i, (unsigned long long)sh.offset,
				       (unsigned long long)sh.size, elf->len);
		ret = pvh_notes_find(elf, sh.offset, sh.size, sh.align, "section", i, entry,
				     is_linux, e);
		if (ret)
			return ret;
	}
	return -ENOENT;
}

/* Checks one PT_LOAD segment against the file and guest RAM. */
static int pvh_segment_check(const struct pvh_elf *elf, unsigned i, const struct pvh_phdr *ph,
			     uint64_t ram_size, struct errbuf *e)
{
	if (ph->filesz > ph->memsz)
		return err_set(e, -ENOEXEC,
			       "segment %u file size 0x%llx exceeds its memory size 0x%llx", i,
			       (unsigned long long)ph->filesz, (unsigned long long)ph->memsz);
	if (!pvh_range_ok(ph->offset, ph->filesz, elf->len))
		return err_set(e, -ENOEXEC,
			       "segment %u (offset 0x%llx size 0x%llx) lies outside the file (%zu bytes)",
			       i, (unsigned long long)ph->offset, (unsigned long long)ph->filesz,
			       elf->len);
	/* an empty segment loads nothing, wherever it claims to be */
	if (!ph->memsz)
		return 0;
	if (ph->paddr < PVH_LOAD_MIN)
		return err_set(e, -ENOEXEC,
			       "segment %u at 0x%llx size 0x%llx lies below 0x%llx (the first 1 MiB is reserved for boot data)",
			       i, (unsigned long long)ph->paddr, (unsigned long long)ph->memsz,
			       PVH_LOAD_MIN);
	if (!pvh_range_ok(ph->paddr, ph->memsz, ram_size))
		return err_set(e, -ENOEXEC,
			       "segment %u at 0x%llx size 0x%llx lies outside guest RAM (0x%llx-0x%llx)",
			       i, (unsigned long long)ph->paddr, (unsigned long long)ph->memsz,
			       PVH_LOAD_MIN, (unsigned long long)ram_size);
	return 0;
}

/*
 * An ELF kernel without the PVH note is entered through the Linux 64-bit boot protocol
 * at e_entry, which a vmlinux gives as a physical address.
 */
static int pvh_entry64_get(const struct pvh_elf *elf, bool is_linux, uint32_t *entry,
			   struct errbuf *e)
{
	if (!elf->is64 || elf->machine != EM_X86_64)
		return err_set(e, -ENOEXEC,
			       "kernel has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY) and is not a 64-bit x86 ELF");
	if (!is_linux)
		return err_set(e, -ENOEXEC,
			       "kernel has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY) and is not a Linux vmlinux (no \"Linux\" ELF note)");
	if (elf->entry > UINT32_MAX)
		return err_set(e, -ENOEXEC,
			       "kernel entry 0x%llx is not a physical address below 4 GiB (a vmlinux gives its physical entry)",
			       (unsigned long long)elf->entry);
	*entry = (uint32_t)elf->entry;
	return 0;
}

static int pvh_load_common(const void *p, size_t len, uint8_t *ram, uint64_t ram_size,
			   bool need_note, struct pvh_image *img, struct errbuf *e)
{
	struct pvh_elf elf;
	struct pvh_phdr ph;
	uint64_t low = UINT64_MAX, high = 0;
	bool entry_loaded = false, is_linux = false;
	uint32_t entry = 0;
	unsigned i, nload = 0;
	int ret;

	if (!p || !ram || !img)
		return err_set(e, -EINVAL, "kernel load: missing image, RAM or result");
	ret = pvh_ehdr_parse(&elf, p, len, e);
	if (ret)
		return ret;

	/* first pass: validate everything; nothing is written yet */
	for (i = 0; i < elf.phnum; i++) {
		pvh_phdr_get(&elf, i, &ph);
		if (ph.type != PT_LOAD)
			continue;
		ret = pvh_segment_check(&elf, i, &ph, ram_size, e);
		if (ret)
			return ret;
		if (!ph.memsz)
			continue;
		nload++;
		low = MIN(low, ph.paddr);
		high = MAX(high, ph.paddr + ph.memsz);
	}
	if (!nload)
		return err_set(e, -ENOEXEC, "kernel has no loadable (PT_LOAD) segment");
	ret = pvh_entry_find(&elf, &entry, &is_linux, e);
	if (ret < 0 && ret != -ENOENT)
		return ret;
	img->pvh = ret > 0;
	if (ret == -ENOENT) {
		if (need_note)
			return err_set(e, -ENOEXEC,
				       "kernel has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); only PVH kernels are supported");
		ret = pvh_entry64_get(&elf, is_linux, &entry, e);
		if (ret < 0)
			return ret;
	}
	for (i = 0; i < elf.phnum; i++) {
		pvh_phdr_get(&elf, i, &ph);
		if (ph.type == PT_LOAD && entry >= ph.paddr && entry - ph.paddr < ph.memsz)
			entry_loaded = true;
	}
	if (!entry_loaded)
		return err_set(e, -ENOEXEC, "kernel %s entry 0x%x is not inside a loaded segment",
			       img->pvh ? "PVH" : "64-bit", entry);

	/* second pass: copy; ram_size bounds every range, so size_t casts are exact */
	for (i = 0; i < elf.phnum; i++) {
		pvh_phdr_get(&elf, i, &ph);
		if (ph.type != PT_LOAD || !ph.memsz)
			continue;
		memcpy(ram + ph.paddr, elf.p + ph.offset, (size_t)ph.filesz);
		memset(ram + ph.paddr + ph.filesz, 0, (size_t)(ph.memsz - ph.filesz));
	}
	img->entry = entry;
	img->load_low = low;
	img->load_high = high;
	return 0;
}

int pvh_load(const void *p, size_t len, uint8_t *ram, uint64_t ram_size, struct pvh_image *img,
	     struct errbuf *e)
{
	return pvh_load_common(p, len, ram, ram_size, true, img, e);
}

int pvh_elf_load(const void *p, size_t len, uint8_t *ram, uint64_t ram_size,
		 struct pvh_image *img, struct errbuf *e)
{
	return pvh_load_common(p, len, ram, ram_size, false, img, e);
}

int pvh_load_file(const char *path, uint8_t *ram, uint64_t ram_size, struct pvh_image *img,
		  struct errbuf *e)
{
	uint8_t *data;
	size_t len;
	int ret;

	ret = file_read_bounded(path, "kernel", PVH_FILE_MAX, &data, &len, e);
	if (ret < 0)
		return ret;
	ret = pvh_load(data, len, ram, ram_size, img, e);
	if (ret)
		err_prefix(e, ret, "%s", path);
	free(data);
	return ret;
}
