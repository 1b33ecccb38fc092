// SPDX-License-Identifier: MIT
/*
 * content.c - what the memory workloads write into a page with content=text|random|mixed,
 * so that memory compresses like real memory instead of being one word per page (which
 * any compressor shrinks a hundredfold and would make a compression benchmark lie).
 *
 * Generating content costs emulated instructions (~1 us each here), so it is made once,
 * when the workload starts, into 1 MiB pools (every vCPU makes a share), and each page
 * write copies from a pool with one `rep movsq`; a check is one `repe cmpsq`.
 * Word 0 of the page is then the workload's own stamp. Where in the pool a page's body
 * comes from depends on its address and on one of two variants (abcheck: the pass's
 * parity; dirty: a bit of the value written), so a rewrite changes the page.
 *
 * - text: 8-byte chunks of two 4-byte units ("the ", "ing,", "ers.", ...: 16 syllables
 *   times 8 endings), 14 random bits a chunk: about 2.9x with zstd -1.
 * - random: LCG output, incompressible.
 * - mixed: by page number, 4 of 8 pages text, 2 random, 2 sparse (zero but for word 0).
 */
#include "guest.h"

#define POOL_SIZE	(1ul << 20)
#define POOL_WORDS	(POOL_SIZE / 8)
#define PAGE_WORDS	(PAGE_SIZE / 8)

enum page_kind { KIND_SPARSE, KIND_TEXT, KIND_RANDOM };

/* Not zeroed at boot: made only when used. */
static u64 pool_text[POOL_WORDS] __attribute__((section(".noinit"), aligned(4096)));
static u64 pool_random[POOL_WORDS] __attribute__((section(".noinit"), aligned(4096)));

static const char *const content_names[] = {
	[CONTENT_ZERO] = "zero", [CONTENT_TEXT] = "text", [CONTENT_RANDOM] = "random",
	[CONTENT_MIXED] = "mixed",
};

const char *content_name(void)
{
	return content_names[cfg.content];
}

/* The text units: 16 syllables times 8 endings, 4 bytes each ("the ", "ing,", ...). */
static u32 text_units[128];

/*
 * Page `page` of the text pool. Each page starts from a seed of its own, so the pools can
 * be made in any order, by any number of vCPUs, with the same result.
 */
static void pool_text_page(u64 page)
{
	u64 x = (page + 1) * 0x9e3779b97f4a7c15ull ^ 0x746578745f706f6full;
	u64 *w = &pool_text[page * PAGE_WORDS];

	for (u64 i = 0; i < PAGE_WORDS; i++) {
		u64 r;

		x = x * LCG_MUL + LCG_ADD;
		r = x >> 50;			/* 14 bits: two units */
		w[i] = text_units[r & 127] | (u64)text_units[r >> 7] << 32;
	}
}

static void pool_random_page(u64 page)
{
	u64 x = (page + 1) * 0x9e3779b97f4a7c15ull ^ 0x72616e646f6d2121ull;
	u64 *w = &pool_random[page * PAGE_WORDS];

	for (u64 i = 0; i < PAGE_WORDS; i++) {
		x = x * LCG_MUL + LCG_ADD;
		w[i] = x ^ x >> 29;		/* the LCG's low bits have short periods */
	}
}

static bool content_has(enum page_kind k)
{
	return cfg.content == CONTENT_MIXED || (k == KIND_TEXT && cfg.content == CONTENT_TEXT) ||
	       (k == KIND_RANDOM && cfg.content == CONTENT_RANDOM);
}

/* Before the vCPUs start making pools: the text units. */
void content_init(void)
{
	static const char syl[16][4] = {
		"the", "ing", "and", "ion", "ent", "for", "tio", "ere",
		"her", "ate", "ver", "ter", "tha", "ati", "hat", "ers",
	};
	static const char tail[8] = { ' ', 's', 'e', ',', 'd', '.', 'r', 'y' };

	for (u32 i = 0; i < 128; i++)
		text_units[i] = (u32)(u8)syl[i & 15][0] | (u32)(u8)syl[i & 15][1] << 8 |
				(u32)(u8)syl[i & 15][2] << 16 | (u32)(u8)tail[i >> 4] << 24;
}

/* Pool pages to make for the chosen content: 256 per pool (about 6 ms each here). */
u64 content_pages(void)
{
	return (content_has(KIND_TEXT) + content_has(KIND_RANDOM)) * (POOL_SIZE / PAGE_SIZE);
}

/* Makes pool page n of content_pages(): the text pool's first if it is needed. */
void content_make(u64 n)
{
	static const u64 per_pool = POOL_SIZE / PAGE_SIZE;

	if (content_has(KIND_TEXT) && n < per_pool)
		pool_text_page(n);
	else
		pool_random_page(n % per_pool);
}

static enum page_kind page_kind(u64 gpa)
{
	static const u8 mixed[8] = {
		KIND_TEXT, KIND_RANDOM, KIND_TEXT, KIND_SPARSE,
		KIND_TEXT, KIND_RANDOM, KIND_TEXT, KIND_SPARSE,
	};

	switch (cfg.content) {
	case CONTENT_TEXT:
		return KIND_TEXT;
	case CONTENT_RANDOM:
		return KIND_RANDOM;
	case CONTENT_MIXED:
		return mixed[(gpa >> PAGE_SHIFT) & 7];
	default:
		return KIND_SPARSE;
	}
}

/*
 * The page's words in its variant (0 or 1), or NULL for a sparse page. A byte at address
 * a comes from pool offset (a + variant * POOL_SIZE / 2) mod POOL_SIZE, so two bytes less
 * than POOL_SIZE / 2 apart never come from the same place: no stretch of memory shorter
 * than 512 KiB (zstd -1's window) holds a repeat, whatever the order of the writes.
 */
static const u64 *page_src(u64 gpa, u64 variant)
{
	enum page_kind k = page_kind(gpa);
	u64 off;

	if (k == KIND_SPARSE)
		return NULL;
	off = ((gpa + (variant & 1) * POOL_SIZE / 2) & (POOL_SIZE - 1)) / 8;
	return (k == KIND_TEXT ? pool_text : pool_random) + off;
}

void content_fill(u64 gpa, u64 salt, u64 word0)
{
	const u64 *src = page_src(gpa, salt);
	u64 *dst = (u64 *)gpa + 1, n = PAGE_WORDS - 1;

	if (src) {
		src++;
		asm volatile("rep movsq" : "+D"(dst), "+S"(src), "+c"(n) : : "memory");
	} else {
		asm volatile("rep stosq" : "+D"(dst), "+c"(n) : "a"(0ul) : "memory");
	}
	*(volatile u64 *)gpa = word0;
}

/*
 * dirty's write: the first write of a page (word 0 still zero: the working set starts as
 * fresh memory) fills it; a rewrite copies one 512-byte eighth of it (salt bits 0-2) in
 * the variant of salt bit 3 from the pool. A whole page is 511 `rep movsq` steps, which the
 * emulator runs at about 1 us each (about 2,000 pages/s); an eighth keeps the dirty rate
 * near 10,000 pages/s while each rewrite still changes the page by 512 bytes, and the
 * page stays made of its kind's content.
 */
void content_rewrite(u64 gpa, u64 salt, u64 word0)
{
	const u64 *src = page_src(gpa, salt >> 3);
	u64 first = (salt & 7) * (PAGE_WORDS / 8), n = PAGE_WORDS / 8, *dst;

	if (!*(volatile u64 *)gpa) {
		content_fill(gpa, salt, word0);
		return;
	}
	if (src) {
		if (!first) {		/* word 0 is the stamp */
			first = 1;
			n--;
		}
		dst = (u64 *)gpa + first;
		src += first;
		asm volatile("rep movsq" : "+D"(dst), "+S"(src), "+c"(n) : : "memory");
	}
	*(volatile u64 *)gpa = word0;
}

/*
 * Whether the page holds what content_fill(gpa, salt, word0) wrote; if not, *word is the
 * first wrong word and *want what it should be.
 */
bool content_check(u64 gpa, u64 salt, u64 word0, u32 *word, u64 *want)
{
	const u64 *src = page_src(gpa, salt), *p = (const u64 *)gpa + 1;
	u64 n = PAGE_WORDS - 1;
	bool differ;

	if (*(const u64 *)gpa != word0) {
		*word = 0;
		*want = word0;
		return false;
	}
	if (src)
		src++;
	if (src)
		asm volatile("repe cmpsq" : "=@ccne"(differ), "+D"(p), "+S"(src), "+c"(n)
			     : : "memory", "cc");
	else
		asm volatile("repe scasq" : "=@ccne"(differ), "+D"(p), "+c"(n) : "a"(0ul)
			     : "memory", "cc");
	if (!differ)
		return true;
	/* the instruction stopped one word past the difference */
	*word = (u32)(p - (const u64 *)gpa - 1);
	*want = src ? src[-1] : 0;
	return false;
}
