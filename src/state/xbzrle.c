/* SPDX-License-Identifier: MIT */
/*
 * Delta encoding of rewritten pages and the sender's bounded cache of sent pages (see
 * xbzrle.h). The decoder reads deltas from the network: every length is bounded by the
 * page before it is used, and nothing is written until the whole delta has been checked.
 */
#include "state/xbzrle.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

/* Page lengths fit in two ULEB128 bytes (14 bits); a third is refused as an overflow. */
#define XBZRLE_ULEB_MAX 2u
/*
 * A new run costs at least two bytes (skip and count), so a literal run goes on across
 * equal gaps shorter than this rather than ending.
 */
#define XBZRLE_GAP_MIN 3u

static size_t xbzrle_uleb_len(size_t v)
{
	return v < 0x80 ? 1 : 2;
}

static size_t xbzrle_uleb_put(uint8_t *o, size_t v)
{
	if (v < 0x80) {
		o[0] = (uint8_t)v;
		return 1;
	}
	o[0] = (uint8_t)(0x80 | (v & 0x7f));
	o[1] = (uint8_t)(v >> 7);
	return 2;
}

/* The end of the run of equal bytes starting at i (eight at a time where it can). */
static size_t xbzrle_equal_end(const uint8_t *old, const uint8_t *cur, size_t i)
{
	while (i < XBZRLE_PAGE && (i & 7))
		if (old[i] == cur[i])
			i++;
		else
			return i;
	while (i + 8 <= XBZRLE_PAGE) {
		uint64_t a, b;

		memcpy(&a, old + i, 8);
		memcpy(&b, cur + i, 8);
		if (a != b)
			break;
		i += 8;
	}
	while (i < XBZRLE_PAGE && old[i] == cur[i])
		i++;
	return i;
}

int xbzrle_encode(const uint8_t *old, const uint8_t *cur, uint8_t *out, size_t max, size_t *len)
{
	size_t i = 0, o = 0;

	*len = 0;
	while (i < XBZRLE_PAGE) {
		size_t start = i, lit, need;

		i = xbzrle_equal_end(old, cur, i);
		if (i == XBZRLE_PAGE)
			break; /* the rest is unchanged: implicit */
		lit = i;
		for (;;) {
			size_t eq;

			while (i < XBZRLE_PAGE && old[i] != cur[i])
				i++;
			for (eq = 0; i + eq < XBZRLE_PAGE && eq < XBZRLE_GAP_MIN &&
				     old[i + eq] == cur[i + eq];
			     eq++)
				;
			if (i + eq == XBZRLE_PAGE || eq >= XBZRLE_GAP_MIN)
				break;
			i += eq;
		}
		need = xbzrle_uleb_len(lit - start) + xbzrle_uleb_len(i - lit) + (i - lit);
		if (need > max - o)
			return -ENOSPC;
		o += xbzrle_uleb_put(out + o, lit - start);
		o += xbzrle_uleb_put(out + o, i - lit);
		memcpy(out + o, cur + lit, i - lit);
		o += i - lit;
	}
	*len = o;
	return 0;
}

static int xbzrle_uleb_get(const uint8_t *d, size_t len, size_t *pos, size_t *v, const char *what,
			   struct errbuf *e)
{
	size_t at = *pos, x = 0;

	for (unsigned k = 0;; k++) {
		uint8_t b;

		if (k == XBZRLE_ULEB_MAX)
			return err_set(e, -EINVAL, "delta: %s at offset %zu is longer than %u bytes "
				       "(a length that overflows the page)", what, at, XBZRLE_ULEB_MAX);
		if (*pos >= len)
			return err_set(e, -EINVAL, "delta: truncated inside the %s at offset %zu", what,
				       at);
		b = d[(*pos)++];
		x |= (size_t)(b & 0x7f) << (7 * k);
		if (!(b & 0x80))
			break;
	}
	*v = x;
	return 0;
}

/* Checks the whole delta; with page, applies it too (only called once it checked). */
static int xbzrle_walk(uint8_t *page, const uint8_t *d, size_t len, struct errbuf *e)
{
	size_t pos = 0, at = 0;

	while (pos < len) {
		size_t run = pos, skip = 0, n = 0;
		int ret;

		ret = xbzrle_uleb_get(d, len, &pos, &skip, "skip length", e);
		if (ret < 0)
			return ret;
		if (skip > XBZRLE_PAGE - at)
			return err_set(e, -EINVAL, "delta: the run at offset %zu skips %zu bytes from "
				       "page byte %zu, past the page's end", run, skip, at);
		at += skip;
		ret = xbzrle_uleb_get(d, len, &pos, &n, "literal length", e);
		if (ret < 0)
			return ret;
		if (n == 0)
			return err_set(e, -EINVAL, "delta: the run at offset %zu has no literal bytes",
				       run);
		if (n > XBZRLE_PAGE - at)
			return err_set(e, -EINVAL, "delta: the run at offset %zu writes %zu bytes at "
				       "page byte %zu, past the page's end", run, n, at);
		if (n > len - pos)
			return err_set(e, -EINVAL, "delta: truncated: the run at offset %zu has %zu "
				       "literal bytes, %zu are left", run, n, len - pos);
		if (page)
			memcpy(page + at, d + pos, n);
		pos += n;
		at += n;
	}
	return 0;
}

int xbzrle_decode(uint8_t *page, const uint8_t *delta, size_t len, struct errbuf *e)
{
	int ret;

	if (len >= XBZRLE_PAGE)
		return err_set(e, -EINVAL, "delta: %zu bytes, not shorter than the page", len);
	ret = xbzrle_walk(NULL, delta, len, e);
	return ret < 0 ? ret : xbzrle_walk(page, delta, len, e);
}

/* ---- the cache ---- */

struct xbzrle_cache {
	uint8_t *slots;	 /* nslots pages, reserved with mmap, touched as they fill */
	uint64_t *keys;	 /* per slot: its key + 1, 0 when empty */
	uint64_t nslots;
};

int xbzrle_cache_new(struct xbzrle_cache **cp, uint64_t bytes, struct errbuf *e)
{
	struct xbzrle_cache *c;

	*cp = NULL;
	if (bytes < XBZRLE_CACHE_MIN || bytes > XBZRLE_CACHE_MAX)
		return err_set(e, -EINVAL, "delta cache of %llu bytes (allowed %llu to %llu)",
			       (unsigned long long)bytes, (unsigned long long)XBZRLE_CACHE_MIN,
			       (unsigned long long)XBZRLE_CACHE_MAX);
	c = calloc(1, sizeof(*c));
	if (!c)
		return err_set(e, -ENOMEM, "out of memory for the delta cache");
	c->nslots = bytes / XBZRLE_PAGE;
	c->keys = calloc(c->nslots, sizeof(*c->keys));
	c->slots = mmap(NULL, c->nslots * XBZRLE_PAGE, PROT_READ | PROT_WRITE,
			MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (c->slots == MAP_FAILED)
		c->slots = NULL;
	if (!c->keys || !c->slots) {
		xbzrle_cache_free(c);
		return err_set(e, -ENOMEM, "out of memory for a delta cache of %llu bytes",
			       (unsigned long long)bytes);
	}
	*cp = c;
	return 0;
}

void xbzrle_cache_free(struct xbzrle_cache *c)
{
	if (!c)
		return;
	if (c->slots)
		munmap(c->slots, c->nslots * XBZRLE_PAGE);
	free(c->keys);
	free(c);
}

int xbzrle_cache_update(struct xbzrle_cache *c, uint64_t key, const uint8_t *cur, uint8_t *out,
			size_t max, size_t *len)
{
	uint64_t i = key % c->nslots;
	uint8_t *slot = c->slots + i * XBZRLE_PAGE;
	int ret = 0;

	if (c->keys[i] == key + 1 && xbzrle_encode(slot, cur, out, max, len) == 0)
		ret = 1;
	memcpy(slot, cur, XBZRLE_PAGE);
	c->keys[i] = key + 1;
	return ret;
}

void xbzrle_cache_drop(struct xbzrle_cache *c, uint64_t key)
{
	uint64_t i = key % c->nslots;

	if (c->keys[i] == key + 1)
		c->keys[i] = 0;
}
