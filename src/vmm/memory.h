/* SPDX-License-Identifier: MIT */
/*
 * Guest memory, owned in one place. RAM is one host mapping split into at most two
 * guest-physical regions: [0, low) and, for guests over 3 GiB, [4 GiB, 4 GiB + rest),
 * leaving 3-4 GiB for the LAPIC/IOAPIC and KVM's TSS pages.
 *
 * Backing, chosen by measurement: populating fresh memory, not the wire, bounds how fast
 * restore and receive can be. MACHINE-NOTES.md measured 2.4 s/GiB with 4 KiB anonymous
 * pages, 1.2 s for a memfd and 0.5 s with transparent huge pages; re-measured on this
 * machine while godwit was built (touching every page of 1 GiB, several runs), 4 KiB
 * anonymous pages took a steady 0.38-0.48 s/GiB while MADV_HUGEPAGE ranged from 0.2 to
 * 2.3 s/GiB depending on whether the kernel had to compact memory for huge pages. So RAM
 * is private anonymous memory with the system's default page size policy, reserved
 * (MAP_NORESERVE) and untouched until the guest uses it: predictable beats sometimes
 * faster. A restore may instead map a snapshot's memory file copy-on-write in place. An
 * eager restore fills dense parts with huge pages for as long as they come fast (here the
 * variance followed whether the host had taken the free 2 MiB blocks back, with no
 * compaction stalls: src/state/snapshot.c), then leaves the policy as it was for the
 * guest's own faults.
 *
 * The VMM never writes guest RAM behind the dirty tracker's back: device writes go
 * through guest_mem_write(), which marks the VMM-side dirty bitmap.
 */
#ifndef GODWIT_VMM_MEMORY_H
#define GODWIT_VMM_MEMORY_H

#include "base/util.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#define GUEST_PAGE_SIZE 4096ull
#define GUEST_PAGE_SHIFT 12
#define GUEST_LOW_MAX 0xC0000000ull   /* RAM below 4 GiB ends at 3 GiB at most */
#define GUEST_HIGH_BASE 0x100000000ull
#define GUEST_MEM_MIN (16 * MiB)
#define GUEST_MEM_MAX (256 * GiB)
#define GUEST_MEM_MAX_REGIONS 2

struct guest_mem_region {
	uint64_t gpa;
	uint64_t size;
	uint8_t *host;
	uint64_t offset;  /* offset of this region in the flat RAM (and in a snapshot's memory file) */
};

struct guest_mem {
	uint8_t *base;    /* the whole RAM, regions back to back */
	uint64_t size;
	unsigned nregions;
	struct guest_mem_region regions[GUEST_MEM_MAX_REGIONS];
	_Atomic uint64_t *vmm_dirty;  /* one bit per page, indexed by flat RAM offset */
	_Atomic uint64_t *vmm_dirty_sum;  /* its summary (kvm/dirty.h: dirty_bitmap_mark) */
	bool file_backed;             /* some region maps a snapshot file */
	int pagemap_fd;               /* /proc/self/pagemap, -1 if it cannot be read */
	_Atomic bool pagemap_scan;    /* it answers PAGEMAP_SCAN (else entries are read) */
};

/* Reserves size bytes of RAM (page-aligned, GUEST_MEM_MIN..GUEST_MEM_MAX). */
int __must_check guest_mem_create(struct guest_mem *m, uint64_t size, struct errbuf *e);
void guest_mem_destroy(struct guest_mem *m);
/*
 * Replaces region idx by a private (copy-on-write) mapping of fd at offset: a lazy
 * restore. Pages are read from the file when the guest first touches them.
 */
int __must_check guest_mem_map_region_file(struct guest_mem *m, unsigned idx, int fd,
					   uint64_t offset, struct errbuf *e);
/*
 * False only if no page of [host, host+len) was ever touched, so the range is all
 * zero without reading it (anonymous memory, asked of /proc/self/pagemap: a page in RAM
 * or in swap was touched). Always true for file-backed memory, whose contents are in the
 * file, and when pagemap cannot be read.
 */
bool guest_mem_range_touched(struct guest_mem *m, const void *host, uint64_t len);
/*
 * The same for many ranges at once: touched[i] for the range_pages-page range i of the
 * npages pages at host. With PAGEMAP_SCAN this costs what the touched pages cost; without
 * it, one pagemap read per 32 MiB.
 */
void guest_mem_touched_map(struct guest_mem *m, const void *host, uint64_t npages,
			   uint64_t range_pages, bool *touched);
/* Host pointer for [gpa, gpa+len) if it lies inside one region, else NULL. */
/*
 * The touched pages (in RAM or in swap) of the npages pages at host: sets their bits in
 * bitmap (bit i for page i) and returns how many, costing what the touched pages cost
 * (PAGEMAP_SCAN). With a NULL bitmap: 1 at the first touched page found, else 0.
 * -ENOTSUP when that cannot be told cheaply: the memory is file-backed, or the kernel
 * lacks PAGEMAP_SCAN (older than 6.7).
 */
int64_t guest_mem_touched_pages(struct guest_mem *m, const void *host, uint64_t npages,
				uint64_t *bitmap);
void *guest_mem_ptr(struct guest_mem *m, uint64_t gpa, uint64_t len);
/* Flat RAM offset of gpa, or -1 if gpa is not RAM */
int64_t guest_mem_offset(struct guest_mem *m, uint64_t gpa);
/*
 * Marks the pages of [gpa, gpa+len) in the VMM dirty bitmap (a write the VMM or a device
 * made, after making it). Ranges outside RAM are ignored.
 */
void guest_mem_mark_dirty(struct guest_mem *m, uint64_t gpa, uint64_t len);
/* Copies into guest RAM and marks the pages in the VMM dirty bitmap. */
int __must_check guest_mem_write(struct guest_mem *m, uint64_t gpa, const void *p, size_t len);
int __must_check guest_mem_read(struct guest_mem *m, uint64_t gpa, void *p, size_t len);
uint64_t guest_mem_pages(const struct guest_mem *m);
/*
 * Drops the pages of flat page range [first, first+n) whose bit is set in bits (indexed
 * by flat page number): their contents are freed and they read as zero (or fault to a
 * userfaultfd that registered them) from now on; pages whose bit is clear keep theirs.
 * Runs of set bits go to the kernel up to UIO_MAXIOV at a time through
 * process_madvise(), one madvise() each where that kernel does not take MADV_DONTNEED.
 */
int __must_check guest_mem_drop_pages(struct guest_mem *m, const uint64_t *bits, uint64_t first,
				      uint64_t n, struct errbuf *e);
/* Bytes of guest RAM in RAM in this process now (pagemap's present bit; swapped pages not). */
uint64_t guest_mem_resident(struct guest_mem *m);

#endif
