/* SPDX-License-Identifier: MIT */
/*
 * CRC32C, fast enough to checksum guest memory on the migration hot path.
 *
 * The SSE4.2 crc32 instruction has a latency of three cycles but can start one per cycle,
 * so one dependency chain uses a third of it. Long buffers are therefore cut into three
 * blocks of HW_BLOCK bytes checksummed as three independent chains; the chains are then
 * joined with a precomputed "append HW_BLOCK zero bytes" operator, which is linear over
 * GF(2) on the 32-bit CRC state and so fits in four 256-entry tables. HW_BLOCK is chosen so
 * that a 4 KiB page is three blocks plus 16 bytes.
 *
 * Without SSE4.2, a slicing-by-8 table walk (8 KiB of tables) is used.
 */
#include "base/crc32c.h"

#include <pthread.h>
#include <string.h>

#if defined(__x86_64__)
#include <nmmintrin.h>
#define CRC32C_HAVE_HW 1
#else
#define CRC32C_HAVE_HW 0
#endif

#define POLY 0x82F63B78u
#define HW_BLOCK 1360u

static uint32_t sw_table[8][256];
static uint32_t shift_table[4][256]; /* raw state -> state after HW_BLOCK zero bytes */
static pthread_once_t tables_once = PTHREAD_ONCE_INIT;

static uint64_t load64(const uint8_t *p)
{
	uint64_t v;

	memcpy(&v, p, sizeof(v));
#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
	v = __builtin_bswap64(v);
#endif
	return v;
}

/* The raw (not inverted) CRC state after feeding len zero bytes, one bit at a time. */
static uint32_t raw_zeros_slow(uint32_t c, size_t len)
{
	for (size_t i = 0; i < len * 8; i++)
		c = (c & 1) ? (c >> 1) ^ POLY : c >> 1;
	return c;
}

static void tables_init(void)
{
	uint32_t col[32];

	for (unsigned i = 0; i < 256; i++)
		sw_table[0][i] = raw_zeros_slow(i, 1);
	for (unsigned k = 1; k < 8; k++)
		for (unsigned i = 0; i < 256; i++)
			sw_table[k][i] = (sw_table[k - 1][i] >> 8) ^
					 sw_table[0][sw_table[k - 1][i] & 0xff];

	for (unsigned j = 0; j < 32; j++)
		col[j] = raw_zeros_slow(1u << j, HW_BLOCK);
	for (unsigned k = 0; k < 4; k++) {
		for (unsigned b = 0; b < 256; b++) {
			uint32_t v = 0;

			for (unsigned i = 0; i < 8; i++)
				if (b & (1u << i))
					v ^= col[8 * k + i];
			shift_table[k][b] = v;
		}
	}
}

static void tables_ensure(void)
{
	pthread_once(&tables_once, tables_init);
}

static uint32_t raw_sw(uint32_t c, const uint8_t *p, size_t len)
{
	while (len && ((uintptr_t)p & 7)) {
		c = (c >> 8) ^ sw_table[0][(c ^ *p++) & 0xff];
		len--;
	}
	while (len >= 8) {
		uint64_t w = load64(p) ^ c;

		c = sw_table[7][w & 0xff] ^ sw_table[6][(w >> 8) & 0xff] ^
		    sw_table[5][(w >> 16) & 0xff] ^ sw_table[4][(w >> 24) & 0xff] ^
		    sw_table[3][(w >> 32) & 0xff] ^ sw_table[2][(w >> 40) & 0xff] ^
		    sw_table[1][(w >> 48) & 0xff] ^ sw_table[0][w >> 56];
		p += 8;
		len -= 8;
	}
	while (len--)
		c = (c >> 8) ^ sw_table[0][(c ^ *p++) & 0xff];
	return c;
}

uint32_t crc32c_sw(uint32_t crc, const void *p, size_t len)
{
	tables_ensure();
	return ~raw_sw(~crc, p, len);
}

#if CRC32C_HAVE_HW
static uint32_t shift_block(uint32_t c)
{
	return shift_table[0][c & 0xff] ^ shift_table[1][(c >> 8) & 0xff] ^
	       shift_table[2][(c >> 16) & 0xff] ^ shift_table[3][c >> 24];
}

__attribute__((target("sse4.2"))) static uint32_t raw_hw(uint32_t c, const uint8_t *p, size_t len)
{
	uint64_t a = c;

	while (len && ((uintptr_t)p & 7)) {
		a = _mm_crc32_u8((uint32_t)a, *p++);
		len--;
	}
	while (len >= 3 * HW_BLOCK) {
		uint64_t b = 0, d = 0;

		for (size_t i = 0; i < HW_BLOCK; i += 8) {
			a = _mm_crc32_u64(a, load64(p + i));
			b = _mm_crc32_u64(b, load64(p + HW_BLOCK + i));
			d = _mm_crc32_u64(d, load64(p + 2 * HW_BLOCK + i));
		}
		a = shift_block(shift_block((uint32_t)a) ^ (uint32_t)b) ^ (uint32_t)d;
		p += 3 * HW_BLOCK;
		len -= 3 * HW_BLOCK;
	}
	while (len >= 8) {
		a = _mm_crc32_u64(a, load64(p));
		p += 8;
		len -= 8;
	}
	while (len--)
		a = _mm_crc32_u8((uint32_t)a, *p++);
	return (uint32_t)a;
}

bool crc32c_hw_available(void)
{
	return __builtin_cpu_supports("sse4.2");
}

uint32_t crc32c_hw(uint32_t crc, const void *p, size_t len)
{
	tables_ensure();
	return ~raw_hw(~crc, p, len);
}
#else
bool crc32c_hw_available(void)
{
	return false;
}

uint32_t crc32c_hw(uint32_t crc, const void *p, size_t len)
{
	return crc32c_sw(crc, p, len);
}
#endif

uint32_t crc32c(uint32_t crc, const void *p, size_t len)
{
	if (crc32c_hw_available())
		return crc32c_hw(crc, p, len);
	return crc32c_sw(crc, p, len);
}
