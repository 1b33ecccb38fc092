/* SPDX-License-Identifier: MIT */
/*
 * xbzrle: would delta-encoding rewritten pages (QEMU's XBZRLE: XOR against the copy sent
 * last, then run-length encode) send fewer bytes than godwit's zstd, and at what CPU cost?
 *
 *   cc -O2 -o xbzrle bench/tools/xbzrle.c -lzstd && ./xbzrle
 *
 * It replays the guest kit's memory workloads with content=mixed on the host, byte for byte
 * as guest/content.c writes them (the same pools, page kinds, fills and eighth-page
 * rewrites), over a 64 MiB working set: round 0 sends every page and fills the cache of
 * sent pages; each later round the workload writes, then every page it wrote is encoded
 * four ways: raw, zstd -1 per 1024-page batch (what `migrate --compress zstd` sends),
 * XBZRLE against the cached copy (falling back to the raw page when the delta is not
 * smaller, as QEMU does), and XBZRLE's deltas then zstd -1 per batch. It prints bytes per
 * sent page and encoder time per page (one core of this machine). The cache holds the
 * whole working set, the best case for XBZRLE (QEMU's default cache is 64 MiB).
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zstd.h>

#define PAGE 4096u
#define WORDS (PAGE / 8)
#define POOL (1u << 20)
#define NPAGES 16384u /* 64 MiB */
#define BATCH 1024u
#define LCG_MUL 6364136223846793005ull
#define LCG_ADD 1442695040888963407ull

enum kind { SPARSE, TEXT, RANDOM };

static uint64_t pool_text[POOL / 8], pool_random[POOL / 8];
static uint8_t *mem, *cache;

static double now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

/* guest/content.c's pools */
static void pools_make(void)
{
	static const char syl[16][4] = {
		"the", "ing", "and", "ion", "ent", "for", "tio", "ere",
		"her", "ate", "ver", "ter", "tha", "ati", "hat", "ers",
	};
	static const char tail[8] = { ' ', 's', 'e', ',', 'd', '.', 'r', 'y' };
	uint32_t units[128];

	for (uint32_t i = 0; i < 128; i++)
		units[i] = (uint32_t)(uint8_t)syl[i & 15][0] | (uint32_t)(uint8_t)syl[i & 15][1] << 8 |
			   (uint32_t)(uint8_t)syl[i & 15][2] << 16 | (uint32_t)(uint8_t)tail[i >> 4] << 24;
	for (uint64_t page = 0; page < POOL / PAGE; page++) {
		uint64_t x = (page + 1) * 0x9e3779b97f4a7c15ull ^ 0x746578745f706f6full;
		uint64_t y = (page + 1) * 0x9e3779b97f4a7c15ull ^ 0x72616e646f6d2121ull;

		for (uint64_t i = 0; i < WORDS; i++) {
			uint64_t r;

			x = x * LCG_MUL + LCG_ADD;
			r = x >> 50;
			pool_text[page * WORDS + i] = units[r & 127] | (uint64_t)units[r >> 7] << 32;
			y = y * LCG_MUL + LCG_ADD;
			pool_random[page * WORDS + i] = y ^ y >> 29;
		}
	}
}

/* mixed: by page number, 4 of 8 text, 2 random, 2 sparse (gpa = page * PAGE + 1 MiB) */
static const uint64_t *page_src(uint64_t gpa, uint64_t variant)
{
	static const uint8_t mixed[8] = { TEXT, RANDOM, TEXT, SPARSE, TEXT, RANDOM, TEXT, SPARSE };
	enum kind k = mixed[(gpa / PAGE) & 7];
	uint64_t off = ((gpa + (variant & 1) * POOL / 2) & (POOL - 1)) / 8;

	if (k == SPARSE)
		return NULL;
	return (k == TEXT ? pool_text : pool_random) + off;
}

static uint64_t *page_at(uint64_t gpa)
{
	return (uint64_t *)(mem + (gpa - (1u << 20)));
}

static void fill(uint64_t gpa, uint64_t salt, uint64_t word0)
{
	const uint64_t *src = page_src(gpa, salt);
	uint64_t *p = page_at(gpa);

	if (src)
		memcpy(p + 1, src + 1, PAGE - 8);
	else
		memset(p + 1, 0, PAGE - 8);
	p[0] = word0;
}

static void rewrite(uint64_t gpa, uint64_t salt, uint64_t word0)
{
	const uint64_t *src = page_src(gpa, salt >> 3);
	uint64_t first = (salt & 7) * (WORDS / 8), n = WORDS / 8, *p = page_at(gpa);

	if (!p[0]) {
		fill(gpa, salt, word0);
		return;
	}
	if (src) {
		if (!first) {
			first = 1;
			n--;
		}
		memcpy(p + first, src + first, n * 8);
	}
	p[0] = word0;
}

/* XOR against the old copy, then (zero run, literal run) pairs as ULEB128 lengths. */
static size_t uleb(uint8_t *o, size_t v)
{
	size_t n = 0;

	do {
		o[n++] = (uint8_t)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
		v >>= 7;
	} while (v);
	return n;
}

static size_t xbzrle_encode(const uint8_t *old, const uint8_t *cur, uint8_t *out, size_t max)
{
	size_t i = 0, o = 0;

	while (i < PAGE) {
		size_t z = i, l;

		while (i < PAGE && old[i] == cur[i])
			i++;
		if (i == PAGE)
			break;
		l = i;
		while (i < PAGE && old[i] != cur[i])
			i++;
		if (o + 20 + (i - l) > max)
			return 0; /* no smaller than the page: send it whole */
		o += uleb(out + o, l - z);
		o += uleb(out + o, i - l);
		memcpy(out + o, cur + l, i - l);
		o += i - l;
	}
	return o;
}

struct tally {
	double pages, raw, zstd, xb, xbz, ns_zstd, ns_xb, ns_xbz, fallbacks;
};

/* Sends pages list[0..n): every encoding, batch by batch. */
static void send_pages(const uint32_t *list, size_t n, struct tally *t, ZSTD_CCtx *z)
{
	static uint8_t batch[BATCH * PAGE], deltas[BATCH * (PAGE + 8)], out[BATCH * PAGE * 2];

	for (size_t b0 = 0; b0 < n; b0 += BATCH) {
		size_t bn = n - b0 < BATCH ? n - b0 : BATCH, dlen = 0, r;
		double t0;

		for (size_t i = 0; i < bn; i++)
			memcpy(batch + i * PAGE, mem + (size_t)list[b0 + i] * PAGE, PAGE);
		t0 = now_ns();
		r = ZSTD_compressCCtx(z, out, sizeof(out), batch, bn * PAGE, 1);
		t->ns_zstd += now_ns() - t0;
		t->zstd += (double)(r < bn * PAGE ? r : bn * PAGE);
		t0 = now_ns();
		for (size_t i = 0; i < bn; i++) {
			uint8_t *c = cache + (size_t)list[b0 + i] * PAGE;
			size_t d = xbzrle_encode(c, batch + i * PAGE, deltas + dlen + 2, PAGE - 2);

			if (!d) {
				memcpy(deltas + dlen, batch + i * PAGE, PAGE);
				dlen += PAGE;
				t->fallbacks++;
			} else {
				dlen += d + 2; /* its length */
			}
			memcpy(c, batch + i * PAGE, PAGE);
		}
		t->ns_xb += now_ns() - t0;
		t->xb += (double)dlen;
		t0 = now_ns();
		r = ZSTD_compressCCtx(z, out, sizeof(out), deltas, dlen, 1);
		t->ns_xbz += now_ns() - t0;
		t->xbz += (double)(r < dlen ? r : dlen);
		t->raw += (double)(bn * PAGE);
		t->pages += (double)bn;
	}
}

static void report(const char *name, const struct tally *t)
{
	double p = t->pages ? t->pages : 1;

	printf("| %s | %.0f | %.0f | %.0f (%.2fx) | %.0f (%.2fx, %.0f%% whole) | %.0f (%.2fx) | "
	       "%.1f | %.1f | %.1f |\n",
	       name, t->pages, t->raw / p, t->zstd / p, t->raw / t->zstd, t->xb / p, t->raw / t->xb,
	       100 * t->fallbacks / p, t->xbz / p, t->raw / t->xbz, t->ns_zstd / p / 1e3,
	       t->ns_xb / p / 1e3, (t->ns_xb + t->ns_xbz) / p / 1e3);
}

/*
 * One scenario: `rounds` rounds after round 0, each `writes` page writes of the workload
 * (dirty seq, dirty random, or abcheck's pass over the working set).
 */
static void scenario(const char *name, int workload, uint64_t writes, int rounds, ZSTD_CCtx *z)
{
	uint32_t *list = malloc(NPAGES * sizeof(*list));
	uint8_t *dirty = calloc(NPAGES, 1);
	uint64_t v = 1, rng = 12345, seq = 0, pass = 0;
	struct tally t = { 0 };

	memset(mem, 0, (size_t)NPAGES * PAGE);
	/* round 0: the workload's first pass has filled every page; all are sent and cached */
	for (uint64_t i = 0; i < NPAGES; i++) {
		uint64_t gpa = (1u << 20) + i * PAGE;

		if (workload == 2)
			fill(gpa, 0, gpa);
		else
			rewrite(gpa, v, v), v++;
	}
	memcpy(cache, mem, (size_t)NPAGES * PAGE);
	pass = 1;
	for (int r = 0; r < rounds; r++) {
		size_t n = 0;

		for (uint64_t w = 0; w < writes; w++) {
			uint64_t idx;

			if (workload == 0) {
				idx = seq++ % NPAGES;
			} else if (workload == 1) {
				rng = rng * LCG_MUL + LCG_ADD;
				idx = ((rng >> 32) * NPAGES) >> 32;
			} else {
				idx = seq++ % NPAGES;
				if (idx == 0 && seq > 1)
					pass++;
			}
			if (workload == 2)
				fill((1u << 20) + idx * PAGE, pass, pass * 0x9e37ull ^ idx);
			else
				rewrite((1u << 20) + idx * PAGE, v, v), v++;
			dirty[idx] = 1;
		}
		for (uint32_t i = 0; i < NPAGES; i++)
			if (dirty[i]) {
				list[n++] = i;
				dirty[i] = 0;
			}
		send_pages(list, n, &t, z);
	}
	report(name, &t);
	free(list);
	free(dirty);
}

int main(void)
{
	ZSTD_CCtx *z = ZSTD_createCCtx();

	mem = aligned_alloc(PAGE, (size_t)NPAGES * PAGE);
	cache = aligned_alloc(PAGE, (size_t)NPAGES * PAGE);
	if (!z || !mem || !cache)
		return 1;
	pools_make();
	printf("| workload (content=mixed, 64 MiB) | pages sent | raw B/page | zstd -1 B/page | "
	       "XBZRLE B/page | XBZRLE+zstd B/page | zstd us/page | XBZRLE us/page | "
	       "XBZRLE+zstd us/page |\n|---|---|---|---|---|---|---|---|---|\n");
	/* a round of 1/4 of the working set: each sent page was written about once */
	scenario("dirty seq, 1/4 per round", 0, NPAGES / 4, 8, z);
	scenario("dirty random, 1/4 per round", 1, NPAGES / 4, 8, z);
	/* rounds as long as the working set: many pages written 2-3 times before sending */
	scenario("dirty random, 1x per round", 1, NPAGES, 8, z);
	scenario("dirty random, 4x per round", 1, 4 * (uint64_t)NPAGES, 8, z);
	scenario("abcheck, 1/4 pass per round", 2, NPAGES / 4, 8, z);
	scenario("abcheck, 1 pass per round", 2, NPAGES, 8, z);
	ZSTD_freeCCtx(z);
	return 0;
}
