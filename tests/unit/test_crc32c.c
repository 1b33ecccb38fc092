/* SPDX-License-Identifier: MIT */
/* CRC32C: published vectors, chaining, and the SSE4.2 path against the table path. */
#include "base/crc32c.h"

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

static uint32_t rng_state = 0x12345678;

static uint32_t rng_next(void)
{
	/* xorshift32: deterministic, so a failure reproduces */
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 17;
	rng_state ^= rng_state << 5;
	return rng_state;
}

static void fill_random(uint8_t *p, size_t len)
{
	for (size_t i = 0; i < len; i++)
		p[i] = (uint8_t)rng_next();
}

typedef uint32_t crc_fn(uint32_t, const void *, size_t);

static void check_vectors(crc_fn *fn)
{
	uint8_t buf[32];

	assert_int_equal(fn(0, "123456789", 9), 0xE3069283u);
	assert_int_equal(fn(0, "", 0), 0);
	/* RFC 3720 (iSCSI) appendix B.4 */
	memset(buf, 0, sizeof(buf));
	assert_int_equal(fn(0, buf, 32), 0x8A9136AAu);
	memset(buf, 0xff, sizeof(buf));
	assert_int_equal(fn(0, buf, 32), 0x62A8AB43u);
	for (unsigned i = 0; i < 32; i++)
		buf[i] = (uint8_t)i;
	assert_int_equal(fn(0, buf, 32), 0x46DD794Eu);
	for (unsigned i = 0; i < 32; i++)
		buf[i] = (uint8_t)(31 - i);
	assert_int_equal(fn(0, buf, 32), 0x113FDB5Cu);
}

static void test_vectors_default(void **state)
{
	check_vectors(crc32c);
}

static void test_vectors_sw(void **state)
{
	check_vectors(crc32c_sw);
}

static void test_vectors_hw(void **state)
{
	if (!crc32c_hw_available())
		skip();
	check_vectors(crc32c_hw);
}

static void test_chaining(void **state)
{
	uint8_t buf[10000];
	uint32_t whole;

	fill_random(buf, sizeof(buf));
	whole = crc32c(0, buf, sizeof(buf));
	for (size_t cut = 0; cut <= sizeof(buf); cut += 997) {
		uint32_t c = crc32c(0, buf, cut);

		assert_int_equal(crc32c(c, buf + cut, sizeof(buf) - cut), whole);
		c = crc32c_sw(0, buf, cut);
		assert_int_equal(crc32c_sw(c, buf + cut, sizeof(buf) - cut), whole);
	}
}

/* Lengths around the three-way block boundaries of the hardware path, and odd ones. */
static void test_hw_equals_sw(void **state)
{
	static const size_t lens[] = { 0,    1,    2,    3,    7,    8,     9,     15,   16,
				       17,   63,   255,  1359, 1360, 1361,  4079,  4080, 4081,
				       4095, 4096, 4097, 8160, 8161, 12288, 65537, 2 << 20 };
	size_t max = 2u << 20;
	uint8_t *buf = malloc(max + 64);

	if (!crc32c_hw_available()) {
		free(buf);
		skip();
	}
	assert_non_null(buf);
	fill_random(buf, max + 64);
	for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
		for (size_t align = 0; align < 9; align++) {
			uint32_t seed = rng_next();

			assert_int_equal(crc32c_hw(seed, buf + align, lens[i]),
					 crc32c_sw(seed, buf + align, lens[i]));
		}
	}
	for (int n = 0; n < 2000; n++) {
		size_t len = rng_next() % 20000, align = rng_next() % 64;
		uint32_t seed = rng_next();

		assert_int_equal(crc32c_hw(seed, buf + align, len),
				 crc32c_sw(seed, buf + align, len));
	}
	free(buf);
}

/* A single flipped bit anywhere in a page changes the CRC (CRC32C detects all 1-bit errors). */
static void test_bit_flip(void **state)
{
	uint8_t page[4096];
	uint32_t ref;

	fill_random(page, sizeof(page));
	ref = crc32c(0, page, sizeof(page));
	for (size_t bit = 0; bit < sizeof(page) * 8; bit += 13) {
		page[bit / 8] ^= (uint8_t)(1u << (bit % 8));
		assert_int_not_equal(crc32c(0, page, sizeof(page)), ref);
		page[bit / 8] ^= (uint8_t)(1u << (bit % 8));
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_vectors_default), cmocka_unit_test(test_vectors_sw),
		cmocka_unit_test(test_vectors_hw),	cmocka_unit_test(test_chaining),
		cmocka_unit_test(test_hw_equals_sw),	cmocka_unit_test(test_bit_flip),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
