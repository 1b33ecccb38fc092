/* SPDX-License-Identifier: MIT */
/*
 * Guest memory's touched map (what an idle big guest's move skips): exactly the ranges
 * holding a page the guest wrote are reported, for range sizes that do and do not divide
 * pagemap's batches or the eight-entry steps, and an untouched 64 GiB reservation is
 * reported untouched without anything being populated. Both ways of asking are checked:
 * the PAGEMAP_SCAN ioctl (runs of touched pages) and reading one entry per page.
 */
#include "vmm/memory.h"

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

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_touched_map_scan),
		cmocka_unit_test(test_touched_map_read),
		cmocka_unit_test(test_touched_map_big_idle),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
