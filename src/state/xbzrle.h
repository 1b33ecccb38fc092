/* SPDX-License-Identifier: MIT */
/*
 * Delta encoding of rewritten pages (as QEMU's XBZRLE): a page sent again is described by
 * how it differs from the copy sent last, which the receiver still holds. A delta is a
 * series of runs, each ULEB128 skip (bytes equal to the old copy), ULEB128 count (>= 1),
 * then count literal bytes (the new contents); the bytes after the last run are unchanged,
 * so an empty delta means "the same". docs/state-format.md has the layout and what a
 * decoder refuses.
 *
 * The sender's side keeps a bounded cache of the bytes it last sent per page
 * (xbzrle_cache_*): direct-mapped by page number, a fixed number of 4 KiB slots allocated
 * once, so its memory never grows past the bound the caller chose.
 *
 * Pure C, no KVM: the migration engine and the tests use it alike.
 */
#ifndef GODWIT_STATE_XBZRLE_H
#define GODWIT_STATE_XBZRLE_H

#include "base/util.h"

#include <stddef.h>
#include <stdint.h>

#define XBZRLE_PAGE PAGE_BYTES
/*
 * A delta is worth sending only when it saves at least a quarter of the page: beyond that
 * the page is mostly new (a whole-page rewrite), zstd does as well on it as on a delta, and
 * the encoder stops scanning early.
 */
#define XBZRLE_BOUND (XBZRLE_PAGE * 3 / 4)

/*
 * Encodes cur against old into out, at most max bytes (max < XBZRLE_PAGE). 0 and the
 * delta's length in *len, or -ENOSPC when the delta would not fit (send the page whole).
 */
int __must_check xbzrle_encode(const uint8_t *old, const uint8_t *cur, uint8_t *out, size_t max,
			       size_t *len);

/*
 * Applies a delta of len bytes to page (XBZRLE_PAGE bytes) in place. The whole delta is
 * checked before any byte of page changes: a run past the page's end, a length of more
 * than two ULEB128 bytes or above the page size, an empty literal run, or a delta that
 * ends inside a run is refused with -EINVAL naming the problem and its offset.
 */
int __must_check xbzrle_decode(uint8_t *page, const uint8_t *delta, size_t len,
			       struct errbuf *e);

/* ---- the sender's cache of what it sent ---- */

#define XBZRLE_CACHE_MIN (1ull << 20)  /* 256 pages */
#define XBZRLE_CACHE_MAX (1ull << 40)
#define XBZRLE_CACHE_DEFAULT (64ull << 20)

struct xbzrle_cache;

/*
 * A cache of bytes / XBZRLE_PAGE slots (bytes within XBZRLE_CACHE_MIN..MAX). The slots
 * are reserved, not touched: memory is used as pages are cached, never more than bytes.
 */
int __must_check xbzrle_cache_new(struct xbzrle_cache **cp, uint64_t bytes, struct errbuf *e);
void xbzrle_cache_free(struct xbzrle_cache *c);

/*
 * The sender's step for page key (any number naming the page, e.g. its flat index) whose
 * bytes about to be sent are cur. When the cache holds key and cur's delta against it is
 * shorter than max: returns 1 with the delta in out and its length in *len. Otherwise
 * returns 0: the page goes whole. Either way the cache then holds cur for key (evicting
 * whatever shared its slot), so the caller must send exactly the bytes at cur.
 */
int xbzrle_cache_update(struct xbzrle_cache *c, uint64_t key, const uint8_t *cur, uint8_t *out,
			size_t max, size_t *len);
/* key is no longer what the receiver holds as last sent (it was sent as a zero page). */
void xbzrle_cache_drop(struct xbzrle_cache *c, uint64_t key);

#endif
