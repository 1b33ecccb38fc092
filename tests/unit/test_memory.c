/* SPDX-License-Identifier: MIT */
/*
 * Guest memory's touched map (what an idle big guest's move skips): exactly the ranges
 * holding a page the guest wrote are reported, for range sizes that do and do not divide
 * pagemap's batches or the eight-entry steps, and an untouched 64 GiB reservation is
 * reported untouched without anything being populated. Both ways of asking are checked:
 * the PAGEMAP_SCAN ioctl (runs of touched pages) and reading one entry per page.
 * Dropping pages named in a bitmap (post-copy's stale copies): exactly the named pages
 * inside the asked range read zero afterwards, every other page keeps its contents.
 */
#include "vmm/memory.h"

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

static void check_map(struct guest_mem *m, uint64_t npages, uint64_t range_pages,
		      const uint64_t *written, size_t nwritten)
{
	uint64_t nranges = (npages + range_pages - 1) / range_pages;
	bool *got = calloc(nranges, sizeof(*got)), *want = calloc(nranges, sizeof(*want));

	assert_non_null(got);
	assert_non_null(want);
	for (size_t i = 0; i < nwritten; i++)
		if (written[i] < npages)
			want[written[i] / range_pages] = true;
	guest_mem_touched_map(m, m->base, npages, range_pages, got);
	for (uint64_t r = 0; r < nranges; r++)
		if (got[r] != want[r])
			fail_msg("range %llu of %llu pages: touched %d, expected %d",
				 (unsigned long long)r, (unsigned long long)range_pages, got[r],
				 want[r]);
	free(got);
	free(want);
}

/* The same from page first on, with ranges counted from there. */
static void check_map_at(struct guest_mem *m, uint64_t first, uint64_t npages,
			 const uint64_t *written, size_t nwritten)
{
	uint64_t shifted[16];
	size_t n = 0;

	for (size_t i = 0; i < nwritten && n < 16; i++)
		if (written[i] >= first && written[i] - first < npages)
			shifted[n++] = written[i] - first;
	for (uint64_t range_pages = 1; range_pages <= 4096; range_pages *= 8) {
		uint64_t nranges = (npages + range_pages - 1) / range_pages;
		bool *got = calloc(nranges, sizeof(*got)), *want = calloc(nranges, sizeof(*want));

		assert_non_null(got);
		assert_non_null(want);
		for (size_t i = 0; i < n; i++)
			want[shifted[i] / range_pages] = true;
		guest_mem_touched_map(m, m->base + first * GUEST_PAGE_SIZE, npages, range_pages,
				      got);
		for (uint64_t r = 0; r < nranges; r++)
			if (got[r] != want[r])
				fail_msg("from page %llu, range %llu of %llu pages: touched %d, "
					 "expected %d", (unsigned long long)first,
					 (unsigned long long)r, (unsigned long long)range_pages,
					 got[r], want[r]);
		free(got);
		free(want);
	}
}

static void test_touched_map_one(bool scan)
{
	/* first and last pages, odd positions, and one page past a mincore batch */
	static const uint64_t written[] = { 0, 13, 1023, 1031, 16383, 16384 + 7, 20000, 32767 };
	const uint64_t ranges[] = { 1, 3, 7, 8, 9, 512, 4096, 16384, 32768 };
	struct guest_mem m;
	struct errbuf e;

	assert_int_equal(guest_mem_create(&m, 128 * MiB, &e), 0);
	if (scan && !m.pagemap_scan) {
		guest_mem_destroy(&m);
		skip(); /* a kernel before 6.7 */
	}
	m.pagemap_scan = scan;
	check_map(&m, 32768, 512, NULL, 0);
	for (size_t i = 0; i < sizeof(written) / sizeof(written[0]); i++)
		m.base[written[i] * GUEST_PAGE_SIZE + 5] = 1;
	for (size_t i = 0; i < sizeof(ranges) / sizeof(ranges[0]); i++) {
		check_map(&m, 32768, ranges[i], written, sizeof(written) / sizeof(written[0]));
		/* a window that ends inside a range */
		check_map(&m, 20001, ranges[i], written, sizeof(written) / sizeof(written[0]));
	}
	/* a window that starts inside the memory */
	check_map_at(&m, 1031, 20001 - 1031, written, sizeof(written) / sizeof(written[0]));
	assert_int_equal(guest_mem_resident(&m),
			 sizeof(written) / sizeof(written[0]) * GUEST_PAGE_SIZE);
	assert_int_equal(m.pagemap_scan, scan);
	guest_mem_destroy(&m);
}

static void test_touched_map_scan(void **state)
{
	test_touched_map_one(true);
}

static void test_touched_map_read(void **state)
{
	test_touched_map_one(false);
}

static void test_touched_map_big_idle(void **state)
{
	uint64_t npages = 64 * GiB / GUEST_PAGE_SIZE, nranges = npages / 512;
	bool *got = calloc(nranges, sizeof(*got));
	struct guest_mem m;
	struct errbuf e;

	assert_non_null(got);
	if (guest_mem_create(&m, 64 * GiB, &e) < 0)
		skip();
	m.base[40 * GiB + 3 * GUEST_PAGE_SIZE] = 1;
	guest_mem_touched_map(&m, m.base, npages, 512, got);
	for (uint64_t r = 0; r < nranges; r++)
		assert_int_equal(got[r], r == 40 * GiB / (512 * GUEST_PAGE_SIZE));
	assert_true(guest_mem_resident(&m) <= 2 * MiB);
	guest_mem_destroy(&m);
	free(got);
}

/* A page's contents before the drop: its number in every word (never zero). */
static uint64_t page_word(uint64_t pg, uint64_t i)
{
	return (pg << 12 | i) + 1;
}

/*
 * Runs of named pages of every length from 1 to 13 and one of 200 (across words), gaps of
 * every length from 1 to 9 and some of whole zero words, over 64 MiB: more than one batch
 * of ranges for the kernel. The asked range starts and ends mid-word; named pages outside
 * it must stay.
 */
static void test_drop_pages(void **state)
{
	uint64_t npages = 64 * MiB / GUEST_PAGE_SIZE, first = 37, end = npages - 1000;
	uint64_t *bits = calloc(npages / 64, sizeof(uint64_t)), *w, pg = 0, nruns = 0;
	unsigned len = 1, gap = 1;
	struct guest_mem m;
	struct errbuf e;

	(void)state;
	assert_non_null(bits);
	if (guest_mem_create(&m, 64 * MiB, &e) < 0)
		fail_msg("%s", e.msg);
	for (uint64_t p = 0; p < npages; p++) {
		w = (uint64_t *)(m.base + p * GUEST_PAGE_SIZE);
		for (uint64_t i = 0; i < GUEST_PAGE_SIZE / 8; i++)
			w[i] = page_word(p, i);
	}
	while (pg < npages) {
		/* one run over several words, then short ones; now and then zero words */
		uint64_t n = nruns == 0 ? 200 : len;

		for (uint64_t k = 0; k < n && pg < npages; k++, pg++)
			bits[pg / 64] |= 1ull << (pg % 64);
		pg += nruns % 200 == 199 ? 300 : gap;
		len = len % 13 + 1;
		gap = gap % 9 + 1;
		nruns++;
	}
	assert_true(nruns > 1024);
	/* the range ends inside a run, as it starts inside the first one */
	while (!(bits[end / 64] & (1ull << (end % 64))) ||
	       !(bits[(end - 1) / 64] & (1ull << ((end - 1) % 64))))
		end++;
	assert_int_equal(guest_mem_drop_pages(&m, bits, first, end - first, &e), 0);
	for (uint64_t p = 0; p < npages; p++) {
		bool dropped = (bits[p / 64] & (1ull << (p % 64))) && p >= first && p < end;

		w = (uint64_t *)(m.base + p * GUEST_PAGE_SIZE);
		for (uint64_t i = 0; i < GUEST_PAGE_SIZE / 8; i++)
			if (w[i] != (dropped ? 0 : page_word(p, i)))
				fail_msg("page %llu word %llu: 0x%llx, expected %s",
					 (unsigned long long)p, (unsigned long long)i,
					 (unsigned long long)w[i], dropped ? "zero (dropped)" :
					 "its contents (not named or outside the range)");
	}
	/* a range beyond the memory is refused, nothing dropped */
	assert_int_equal(guest_mem_drop_pages(&m, bits, npages - 10, 11, &e), -EINVAL);
	assert_int_equal(*(uint64_t *)(m.base + (npages - 1) * GUEST_PAGE_SIZE),
			 page_word(npages - 1, 0));
	guest_mem_destroy(&m);
	free(bits);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_touched_map_scan),
		cmocka_unit_test(test_touched_map_read),
		cmocka_unit_test(test_touched_map_big_idle),
		cmocka_unit_test(test_drop_pages),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
