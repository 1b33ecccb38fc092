/* SPDX-License-Identifier: MIT */
/* Guest RAM: reservation, layout, copy-on-write file mapping and VMM-side dirty marking. */
#include "vmm/memory.h"

#include "base/log.h"
#include "kvm/dirty.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

static void guest_mem_layout(struct guest_mem *m)
{
	uint64_t low = MIN(m->size, GUEST_LOW_MAX);

	m->nregions = 1;
	m->regions[0] = (struct guest_mem_region){ .gpa = 0, .size = low, .host = m->base };
	if (m->size > low) {
		m->regions[1] = (struct guest_mem_region){
			.gpa = GUEST_HIGH_BASE,
			.size = m->size - low,
			.host = m->base + low,
			.offset = low,
		};
		m->nregions = 2;
	}
}

int guest_mem_create(struct guest_mem *m, uint64_t size, struct errbuf *e)
{
	size_t words;

	memset(m, 0, sizeof(*m));
	m->pagemap_fd = -1;
	if (size < GUEST_MEM_MIN || size > GUEST_MEM_MAX)
		return err_set(e, -EINVAL, "memory size %llu MiB out of range (16 MiB to 256 GiB)",
			       (unsigned long long)(size / MiB));
	if (size % (2 * MiB))
		return err_set(e, -EINVAL, "memory size must be a multiple of 2 MiB");
	m->base = mmap(NULL, size, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (m->base == MAP_FAILED) {
		m->base = NULL;
		return err_set(e, -errno, "mmap %llu MiB of guest memory: %s",
			       (unsigned long long)(size / MiB), strerror(errno));
	}
	m->size = size;
	/* indexed by host page, so only usable when guest pages are host pages */
	if (sysconf(_SC_PAGESIZE) == GUEST_PAGE_SIZE)
		m->pagemap_fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	m->pagemap_scan = m->pagemap_fd >= 0;
	words = (size / GUEST_PAGE_SIZE + 63) / 64;
	m->vmm_dirty = calloc(words, sizeof(uint64_t));
	m->vmm_dirty_sum = calloc((words + 63) / 64, sizeof(uint64_t));
	if (!m->vmm_dirty || !m->vmm_dirty_sum) {
		free((void *)m->vmm_dirty);
		free((void *)m->vmm_dirty_sum);
		if (m->pagemap_fd >= 0)
			close(m->pagemap_fd);
		munmap(m->base, size);
		m->base = NULL;
		return err_set(e, -ENOMEM, "out of memory for the dirty bitmap");
	}
	guest_mem_layout(m);
	return 0;
}

void guest_mem_destroy(struct guest_mem *m)
{
	if (m->base) {
		munmap(m->base, m->size);
		if (m->pagemap_fd >= 0)
			close(m->pagemap_fd);
	}
	free((void *)m->vmm_dirty);
	free((void *)m->vmm_dirty_sum);
	memset(m, 0, sizeof(*m));
}

int guest_mem_map_region_file(struct guest_mem *m, unsigned idx, int fd, uint64_t offset,
			      struct errbuf *e)
{
	struct guest_mem_region *r = &m->regions[idx];
	void *p;

	if (idx >= m->nregions)
		return err_set(e, -EINVAL, "no memory region %u", idx);
	p = mmap(r->host, r->size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED | MAP_NORESERVE,
		 fd, (off_t)offset);
	if (p == MAP_FAILED)
		return err_set(e, -errno, "map the memory file at offset 0x%llx: %s",
			       (unsigned long long)offset, strerror(errno));
	m->file_backed = true;
	return 0;
}

bool guest_mem_range_touched(struct guest_mem *m, const void *host, uint64_t len)
{
	uintptr_t start = ALIGN_DOWN((uintptr_t)host, GUEST_PAGE_SIZE);
	uint64_t pages = (len + ((uintptr_t)host - start) + GUEST_PAGE_SIZE - 1) / GUEST_PAGE_SIZE;
	bool touched = false;

	/* the whole range as a single range of the map */
	guest_mem_touched_map(m, (const void *)start, pages, pages, &touched);
	return touched;
}

void *guest_mem_ptr(struct guest_mem *m, uint64_t gpa, uint64_t len)
{
	for (unsigned i = 0; i < m->nregions; i++) {
		struct guest_mem_region *r = &m->regions[i];

		if (gpa >= r->gpa && gpa - r->gpa < r->size && len <= r->size - (gpa - r->gpa))
			return r->host + (gpa - r->gpa);
	}
	return NULL;
}

int64_t guest_mem_offset(struct guest_mem *m, uint64_t gpa)
{
	for (unsigned i = 0; i < m->nregions; i++) {
		struct guest_mem_region *r = &m->regions[i];

		if (gpa >= r->gpa && gpa - r->gpa < r->size)
			return (int64_t)(r->offset + (gpa - r->gpa));
	}
	return -1;
}

void guest_mem_mark_dirty(struct guest_mem *m, uint64_t gpa, uint64_t len)
{
	uint8_t *host = guest_mem_ptr(m, gpa, len);
	uint64_t first, last;

	if (!host || !len)
		return;
	first = (uint64_t)(host - m->base) >> GUEST_PAGE_SHIFT;
	last = ((uint64_t)(host - m->base) + len - 1) >> GUEST_PAGE_SHIFT;
	for (uint64_t pg = first; pg <= last; pg++)
		dirty_bitmap_mark(m->vmm_dirty, m->vmm_dirty_sum, pg);
}

int guest_mem_write(struct guest_mem *m, uint64_t gpa, const void *p, size_t len)
{
	uint8_t *dst = guest_mem_ptr(m, gpa, len);

	if (!dst)
		return -EFAULT;
	if (!len)
		return 0;
	memcpy(dst, p, len);
	guest_mem_mark_dirty(m, gpa, len);
	return 0;
}

int guest_mem_read(struct guest_mem *m, uint64_t gpa, void *p, size_t len)
{
	const uint8_t *src = guest_mem_ptr(m, gpa, len);

	if (!src)
		return -EFAULT;
	memcpy(p, src, len);
	return 0;
}

uint64_t guest_mem_pages(const struct guest_mem *m)
{
	return m->size / GUEST_PAGE_SIZE;
}

/*
 * /proc/self/pagemap has one u64 per host page of the process's address space. Bit 63: the
 * page is in RAM; bit 62: it is in swap (or otherwise stands behind a swap-type entry, e.g.
 * a page being migrated). Both mean the page was touched, and they mean the same on every
 * kernel, unlike mincore(), which reports a swapped-out anonymous page as resident on this
 * machine's 6.18 and as not resident on 6.1 and 5.14 (unless it sits in the swap cache).
 * A never-touched page has neither bit (bit 55, soft-dirty, may be set on a hole: ignored).
 * Reading it costs about what mincore costs for untouched memory (measured here: 1.6 ms for
 * 4 GiB of mostly untouched RAM against 1.1 ms for mincore), so it keeps the fast path.
 */
#define PAGEMAP_PRESENT (1ull << 63)
#define PAGEMAP_SWAPPED (1ull << 62)
#define PAGEMAP_CHUNK 8192u /* entries per pread: 32 MiB of guest RAM, a 64 KiB buffer */

struct guest_mem_pagemap {
	int fd;
	uint64_t *ent;
};

static int guest_mem_pagemap_open(struct guest_mem *m, struct guest_mem_pagemap *pm)
{
	static atomic_bool warned;

	pm->fd = m->pagemap_fd;
	pm->ent = pm->fd >= 0 ? malloc(PAGEMAP_CHUNK * sizeof(*pm->ent)) : NULL;
	if (pm->ent)
		return 0;
	if (!atomic_exchange(&warned, true))
		log_warn("cannot read /proc/self/pagemap (%s): guest memory is read whole, "
			 "untouched ranges included", pm->fd < 0 ? "not available" : "out of memory");
	return -1;
}

/* Reads the entries of n (<= PAGEMAP_CHUNK) pages from host page address host. */
static int guest_mem_pagemap_read(struct guest_mem_pagemap *pm, const void *host, uint64_t n)
{
	off_t off = (off_t)((uintptr_t)host / GUEST_PAGE_SIZE * sizeof(uint64_t));

	return io_pread_full(pm->fd, pm->ent, n * sizeof(uint64_t), off);
}

/*
 * Whether any of n pagemap entries says touched; a range stops at its first (an idle guest
 * of 64 GiB has 16 M entries to look at per scan, nearly all 0).
 */
static bool touched_any(const uint64_t *ent, uint64_t n)
{
	for (uint64_t i = 0; i < n; i++)
		if (ent[i] & (PAGEMAP_PRESENT | PAGEMAP_SWAPPED))
			return true;
	return false;
}

/*
 * PAGEMAP_SCAN (Linux 6.7): an ioctl on the pagemap file that returns the runs of pages
 * with given properties instead of one entry per page. The kernel walks only the page
 * tables that exist, so a scan of an idle 200 GiB guest costs what its few touched MiB
 * cost, where reading 52 M entries took 0.6 s here. Declared here because Debian 12's
 * kernel headers predate it; the layout is the kernel's ABI (include/uapi/linux/fs.h).
 */
#ifndef PAGEMAP_SCAN
#define PAGE_IS_PRESENT (1 << 3)
#define PAGE_IS_SWAPPED (1 << 4)

struct page_region {
	uint64_t start, end, categories;
};

struct pm_scan_arg {
	uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages;
	uint64_t category_inverted, category_mask, category_anyof_mask, return_mask;
};

#define PAGEMAP_SCAN _IOWR('f', 16, struct pm_scan_arg)
#endif

#define PAGEMAP_SCAN_VEC 128 /* runs per ioctl */

/*
 * Calls fn for each run of pages in [host, host + npages pages) that has any of the
 * categories in anyof; with first_only, for the first such page only. Returns 0, or -1
 * if the kernel cannot scan (older than 6.7): the caller then reads the entries.
 */
static int guest_mem_pagemap_scan(struct guest_mem *m, const void *host, uint64_t npages,
				  uint64_t anyof, bool first_only,
				  void (*fn)(uint64_t first, uint64_t n, void *arg), void *arg)
{
	uint64_t start = (uintptr_t)host, end = start + npages * GUEST_PAGE_SIZE;
	struct page_region vec[PAGEMAP_SCAN_VEC];

	if (!m->pagemap_scan)
		return -1;
	while (start < end) {
		struct pm_scan_arg a = {
			.size = sizeof(a),
			.start = start,
			.end = end,
			.vec = (uintptr_t)vec,
			.vec_len = PAGEMAP_SCAN_VEC,
			.category_anyof_mask = anyof,
			.return_mask = anyof,
			.max_pages = first_only ? 1 : 0,
		};
		int n = ioctl(m->pagemap_fd, PAGEMAP_SCAN, &a);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 || a.walk_end <= start || a.walk_end > end) {
			/* not this kernel's: stop asking; anything found so far is still true */
			m->pagemap_scan = false;
			return -1;
		}
		for (int i = 0; i < n; i++)
			fn((vec[i].start - (uintptr_t)host) / GUEST_PAGE_SIZE,
			   (vec[i].end - vec[i].start) / GUEST_PAGE_SIZE, arg);
		if (first_only && n > 0)
			break;
		start = a.walk_end;
	}
	return 0;
}

struct touched_scan {
	bool *touched;
	uint64_t range_pages;
};

static void touched_scan_run(uint64_t first, uint64_t n, void *arg)
{
	struct touched_scan *ts = arg;

	for (uint64_t r = first / ts->range_pages; r <= (first + n - 1) / ts->range_pages; r++)
		ts->touched[r] = true;
}

void guest_mem_touched_map(struct guest_mem *m, const void *host, uint64_t npages,
			   uint64_t range_pages, bool *touched)
{
	uint64_t nranges = (npages + range_pages - 1) / range_pages;
	struct touched_scan ts = { touched, range_pages };
	struct guest_mem_pagemap pm;

	/* a file-backed region's contents are in the file, not in this process */
	if (m->file_backed) {
		for (uint64_t r = 0; r < nranges; r++)
			touched[r] = true;
		return;
	}
	memset(touched, 0, nranges * sizeof(*touched));
	if (guest_mem_pagemap_scan(m, host, npages, PAGE_IS_PRESENT | PAGE_IS_SWAPPED, false,
				   touched_scan_run, &ts) == 0)
		return;
	if (guest_mem_pagemap_open(m, &pm) < 0) {
		for (uint64_t r = 0; r < nranges; r++)
			touched[r] = true;
		return;
	}
	for (uint64_t first = 0; first < npages; first += PAGEMAP_CHUNK) {
		uint64_t n = MIN(PAGEMAP_CHUNK, npages - first);

		/* if the map cannot tell, the ranges have to be read */
		if (guest_mem_pagemap_read(&pm, (const uint8_t *)host + first * GUEST_PAGE_SIZE,
					   n) < 0) {
			for (uint64_t i = 0; i < n; i++)
				touched[(first + i) / range_pages] = true;
			continue;
		}
		for (uint64_t i = 0; i < n;) {
			uint64_t r = (first + i) / range_pages;
			uint64_t end = MIN(n, (r + 1) * range_pages - first);

			if (!touched[r])
				touched[r] = touched_any(pm.ent + i, end - i);
			i = end;
		}
	}
	free(pm.ent);
}

struct touched_bits {
	uint64_t *bitmap, n;
};

static void touched_bits_run(uint64_t first, uint64_t n, void *arg)
{
	struct touched_bits *tb = arg;

	tb->n += n;
	if (!tb->bitmap)
		return;
	for (uint64_t pg = first; pg < first + n; pg++)
		tb->bitmap[pg / 64] |= 1ull << (pg % 64);
}

int64_t guest_mem_touched_pages(struct guest_mem *m, const void *host, uint64_t npages,
				uint64_t *bitmap)
{
	struct touched_bits tb = { bitmap, 0 };

	/* reading every pagemap entry would cost the size this is meant to avoid */
	if (m->file_backed)
		return -ENOTSUP;
	if (guest_mem_pagemap_scan(m, host, npages, PAGE_IS_PRESENT | PAGE_IS_SWAPPED, !bitmap,
				   touched_bits_run, &tb) < 0)
		return -ENOTSUP;
	return (int64_t)tb.n;
}

static void resident_scan_run(uint64_t first, uint64_t n, void *arg)
{
	(void)first;
	*(uint64_t *)arg += n;
}

uint64_t guest_mem_resident(struct guest_mem *m)
{
	uint64_t pages = m->size / GUEST_PAGE_SIZE, n = 0;
	struct guest_mem_pagemap pm;

	if (guest_mem_pagemap_scan(m, m->base, pages, PAGE_IS_PRESENT, false, resident_scan_run,
				   &n) == 0)
		return n * GUEST_PAGE_SIZE;
	n = 0;
	if (guest_mem_pagemap_open(m, &pm) < 0)
		return 0;
	for (uint64_t first = 0; first < pages; first += PAGEMAP_CHUNK) {
		uint64_t cnt = MIN(PAGEMAP_CHUNK, pages - first);

		if (guest_mem_pagemap_read(&pm, m->base + first * GUEST_PAGE_SIZE, cnt) < 0)
			continue;
		for (uint64_t i = 0; i < cnt; i++)
			n += pm.ent[i] >> 63;
	}
	free(pm.ent);
	return n * GUEST_PAGE_SIZE;
}

#define GUEST_MEM_DROP_IOV 1024 /* UIO_MAXIOV: the most one process_madvise() takes */

/* One madvise() per range, from range i on: older kernels' process_madvise() refuses DONTNEED. */
static int guest_mem_drop_each(const struct iovec *iov, unsigned i, unsigned n, struct errbuf *e)
{
	for (; i < n; i++)
		if (madvise(iov[i].iov_base, iov[i].iov_len, MADV_DONTNEED) < 0)
			return err_set(e, -errno, "dropping %zu bytes of guest memory: %s",
				       iov[i].iov_len, strerror(errno));
	return 0;
}

/*
 * Hands a batch of ranges to the kernel. A short count means the range holding that byte
 * and those after it were not done; MADV_DONTNEED again over a dropped page is harmless.
 */
static int guest_mem_drop_batch(int *pidfd, const struct iovec *iov, unsigned n, struct errbuf *e)
{
	size_t total = 0, done = 0;
	unsigned i = 0;
	ssize_t r = -1;

	for (unsigned k = 0; k < n; k++)
		total += iov[k].iov_len;
	if (*pidfd >= 0)
		r = syscall(SYS_process_madvise, *pidfd, iov, (size_t)n, MADV_DONTNEED, 0u);
	if (r < 0 && *pidfd >= 0) {
		/* EINVAL: this kernel takes only COLD/PAGEOUT/WILLNEED remotely */
		close(*pidfd);
		*pidfd = -1;
	}
	if (r >= 0 && (size_t)r == total)
		return 0;
	for (; r > 0 && i < n && done + iov[i].iov_len <= (size_t)r; i++)
		done += iov[i].iov_len;
	return guest_mem_drop_each(iov, i, n, e);
}

int guest_mem_drop_pages(struct guest_mem *m, const uint64_t *bits, uint64_t first, uint64_t n,
			 struct errbuf *e)
{
	uint64_t end = first + n, pg = first;
	struct iovec *iov;
	unsigned niov = 0;
	int pidfd, ret = 0;

	if (first > guest_mem_pages(m) || n > guest_mem_pages(m) - first)
		return err_set(e, -EINVAL, "dropping pages %llu..+%llu outside guest memory",
			       (unsigned long long)first, (unsigned long long)n);
	iov = malloc(GUEST_MEM_DROP_IOV * sizeof(*iov));
	if (!iov)
		return err_set(e, -ENOMEM, "out of memory");
	pidfd = (int)syscall(SYS_pidfd_open, getpid(), 0u);
	while (pg < end && ret == 0) {
		uint64_t run;

		/* whole zero words at once: the set bits are usually sparse */
		if (pg % 64 == 0 && !bits[pg / 64]) {
			pg += 64;
			continue;
		}
		if (!(bits[pg / 64] & (1ull << (pg % 64)))) {
			pg++;
			continue;
		}
		for (run = pg + 1; run < end && (bits[run / 64] & (1ull << (run % 64))); run++)
			;
		iov[niov++] = (struct iovec){ .iov_base = m->base + pg * GUEST_PAGE_SIZE,
					      .iov_len = (run - pg) * GUEST_PAGE_SIZE };
		pg = run;
		if (niov == GUEST_MEM_DROP_IOV) {
			ret = guest_mem_drop_batch(&pidfd, iov, niov, e);
			niov = 0;
		}
	}
	if (ret == 0 && niov)
		ret = guest_mem_drop_batch(&pidfd, iov, niov, e);
	if (pidfd >= 0)
		close(pidfd);
	free(iov);
	return ret;
}
