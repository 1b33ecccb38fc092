/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of the delta encoding of rewritten pages (state/xbzrle.c): round trips of the
 * rewrites the guest kit makes (an eighth of a page, scattered words, the first and last
 * byte, nothing), the encoder giving up at its bound, hostile deltas refused by name with
 * the page left as it was, and the sender's cache (hits, misses, evictions, its bound).
 */
#include "state/xbzrle.h"

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "assert_err.h"

#define PAGE XBZRLE_PAGE

static uint64_t rng = 88172645463325252ull;

static uint8_t rnd8(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (uint8_t)rng;
}

static void fill_random(uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		p[i] = rnd8();
}

/* Encodes cur against old, decodes it onto a copy of old, and checks it gives cur. */
static size_t round_trip(const uint8_t *old, const uint8_t *cur)
{
	uint8_t delta[PAGE], page[PAGE];
	struct errbuf e = { "" };
	size_t len = 99;

	assert_int_equal(xbzrle_encode(old, cur, delta, PAGE - 1, &len), 0);
	assert_true(len < PAGE);
	memcpy(page, old, PAGE);
	if (xbzrle_decode(page, delta, len, &e))
		fail_msg("decode of its own delta failed: %s", e.msg);
	assert_memory_equal(page, cur, PAGE);
	return len;
}

static void test_round_trips(void **state)
{
	uint8_t old[PAGE], cur[PAGE];
	size_t len;

	(void)state;
	fill_random(old, PAGE);
	memcpy(cur, old, PAGE);
	assert_int_equal(round_trip(old, cur), 0); /* unchanged: an empty delta */

	/* one 512-byte eighth rewritten, as the kit's dirty workload does */
	fill_random(cur + 1536, 512);
	len = round_trip(old, cur);
	assert_true(len >= 512 && len <= 512 + 4);

	/* the first and the last byte */
	memcpy(cur, old, PAGE);
	cur[0] ^= 1;
	cur[PAGE - 1] ^= 0x80;
	assert_int_equal(round_trip(old, cur), 2 + 1 + 3 + 1);

	/* scattered words, and gaps shorter than a run's cost inside a literal */
	memcpy(cur, old, PAGE);
	for (size_t i = 8; i < PAGE; i += 200)
		cur[i] ^= 0x5a;
	cur[100] ^= 1;
	cur[102] ^= 1; /* one equal byte between: stays one literal run */
	round_trip(old, cur);

	/* many random edits over many pages */
	for (int t = 0; t < 500; t++) {
		int edits = rnd8() % 40;

		fill_random(old, PAGE);
		memcpy(cur, old, PAGE);
		for (int k = 0; k < edits; k++) {
			size_t at = ((size_t)rnd8() << 8 | rnd8()) % PAGE;
			size_t n = 1 + rnd8() % 64;

			fill_random(cur + at, MIN(n, PAGE - at));
		}
		round_trip(old, cur);
	}
}

static void test_gives_up(void **state)
{
	uint8_t old[PAGE], cur[PAGE], delta[PAGE];
	size_t len, need;

	(void)state;
	/* a whole-page rewrite never fits */
	fill_random(old, PAGE);
	fill_random(cur, PAGE);
	for (size_t i = 0; i < PAGE; i++)
		cur[i] = (uint8_t)(old[i] + 1);
	assert_int_equal(xbzrle_encode(old, cur, delta, XBZRLE_BOUND, &len), -ENOSPC);
	assert_int_equal(xbzrle_encode(old, cur, delta, PAGE - 1, &len), -ENOSPC);

	/* a delta of exactly max bytes fits; one byte less does not */
	memcpy(cur, old, PAGE);
	cur[1000] ^= 0xff;
	cur[3000] ^= 0xff;
	assert_int_equal(xbzrle_encode(old, cur, delta, PAGE - 1, &need), 0);
	assert_int_equal(xbzrle_encode(old, cur, delta, need, &len), 0);
	assert_int_equal(len, need);
	assert_int_equal(xbzrle_encode(old, cur, delta, need - 1, &len), -ENOSPC);
}

/* Decodes a hostile delta onto a page and checks it is refused and the page untouched. */
static void refused(const uint8_t *delta, size_t len, const char *needle)
{
	uint8_t page[PAGE], before[PAGE];
	struct errbuf e = { "" };

	fill_random(page, PAGE);
	memcpy(before, page, PAGE);
	assert_fails_with(xbzrle_decode(page, delta, len, &e), -EINVAL, &e, needle);
	assert_memory_equal(page, before, PAGE);
}

static void test_hostile(void **state)
{
	static uint8_t big[PAGE];
	/* a valid run first, so a late error must not leave the early run applied */
	const uint8_t skip_past[] = { 0x00, 0x01, 0xaa, 0xa0, 0x20 /* 4128 */, 0x01, 0xbb };
	const uint8_t lit_past[] = { 0xff, 0x1f /* 4095 */, 0x02, 0xaa, 0xbb };
	const uint8_t three_bytes[] = { 0x80, 0x80, 0x00, 0x01, 0xaa };
	const uint8_t cut_uleb[] = { 0x05, 0x01, 0xaa, 0x80 };
	const uint8_t cut_count[] = { 0x05 };
	const uint8_t cut_literal[] = { 0x05, 0x04, 0xaa, 0xbb };
	const uint8_t empty_run[] = { 0x05, 0x00 };
	const uint8_t skip_whole[] = { 0x80, 0x20 /* 4096 */, 0x01, 0xaa };
	const uint8_t big_count[] = { 0x00, 0xff, 0x7f /* 16383 */ };
	uint8_t page[PAGE], want[PAGE];
	struct errbuf e = { "" };

	(void)state;
	refused(skip_past, sizeof(skip_past), "past the page's end");
	refused(lit_past, sizeof(lit_past), "past the page's end");
	refused(three_bytes, sizeof(three_bytes), "longer than 2 bytes");
	refused(cut_uleb, sizeof(cut_uleb), "truncated inside the skip length at offset 3");
	refused(cut_count, sizeof(cut_count), "truncated inside the literal length");
	refused(cut_literal, sizeof(cut_literal), "truncated: the run at offset 0 has 4");
	refused(empty_run, sizeof(empty_run), "no literal bytes");
	refused(skip_whole, sizeof(skip_whole), "past the page's end");
	refused(big_count, sizeof(big_count), "past the page's end");
	refused(big, PAGE, "not shorter than the page");

	/* the last byte exactly, and a skip to the very end with nothing after, are fine */
	const uint8_t last[] = { 0xff, 0x1f, 0x01, 0x42 };

	fill_random(page, PAGE);
	memcpy(want, page, PAGE);
	want[PAGE - 1] = 0x42;
	assert_int_equal(xbzrle_decode(page, last, sizeof(last), &e), 0);
	assert_memory_equal(page, want, PAGE);
}

static void test_cache(void **state)
{
	struct xbzrle_cache *c;
	struct errbuf e = { "" };
	uint8_t a[PAGE], b[PAGE], delta[PAGE], page[PAGE];
	uint64_t slots = XBZRLE_CACHE_MIN / PAGE;
	size_t len;

	(void)state;
	assert_fails_with(xbzrle_cache_new(&c, XBZRLE_CACHE_MIN - 1, &e), -EINVAL, &e,
			  "delta cache of");
	assert_null(c);
	assert_int_equal(xbzrle_cache_new(&c, XBZRLE_CACHE_MIN, &e), 0);

	fill_random(a, PAGE);
	memcpy(b, a, PAGE);
	memset(b + 512, 0x33, 512);
	/* first send: nothing cached, the page goes whole and is cached */
	assert_int_equal(xbzrle_cache_update(c, 7, a, delta, XBZRLE_BOUND, &len), 0);
	/* second send: a delta against exactly what was sent */
	assert_int_equal(xbzrle_cache_update(c, 7, b, delta, XBZRLE_BOUND, &len), 1);
	memcpy(page, a, PAGE);
	assert_int_equal(xbzrle_decode(page, delta, len, &e), 0);
	assert_memory_equal(page, b, PAGE);
	/* the cache now holds b: sending b again is an empty delta */
	assert_int_equal(xbzrle_cache_update(c, 7, b, delta, XBZRLE_BOUND, &len), 1);
	assert_int_equal(len, 0);

	/* another page sharing the slot evicts it; its own next send is a delta */
	assert_int_equal(xbzrle_cache_update(c, 7 + slots, a, delta, XBZRLE_BOUND, &len), 0);
	assert_int_equal(xbzrle_cache_update(c, 7, b, delta, XBZRLE_BOUND, &len), 0);
	assert_int_equal(xbzrle_cache_update(c, 7 + slots, a, delta, XBZRLE_BOUND, &len), 0);
	assert_int_equal(xbzrle_cache_update(c, 7 + slots, b, delta, XBZRLE_BOUND, &len), 1);

	/* a page sent as zero is dropped: the next send is whole */
	xbzrle_cache_drop(c, 7 + slots);
	assert_int_equal(xbzrle_cache_update(c, 7 + slots, b, delta, XBZRLE_BOUND, &len), 0);
	/* dropping a key the slot does not hold leaves the slot's page alone */
	xbzrle_cache_drop(c, 7);
	assert_int_equal(xbzrle_cache_update(c, 7 + slots, b, delta, XBZRLE_BOUND, &len), 1);

	/* a rewrite beyond the bound goes whole, and is still cached */
	fill_random(a, PAGE);
	assert_int_equal(xbzrle_cache_update(c, 7 + slots, a, delta, XBZRLE_BOUND, &len), 0);
	assert_int_equal(xbzrle_cache_update(c, 7 + slots, a, delta, XBZRLE_BOUND, &len), 1);
	assert_int_equal(len, 0);
	xbzrle_cache_free(c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_round_trips),
		cmocka_unit_test(test_gives_up),
		cmocka_unit_test(test_hostile),
		cmocka_unit_test(test_cache),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
