/* SPDX-License-Identifier: MIT */
/*
 * migrate --delta xbzrle[:CACHE_SIZE], the source's side: pages of a live move go through
 * a bounded cache of what was sent (state/xbzrle.h), and a page sent again goes as a delta
 * against its cached copy when that is short enough.
 *
 * The rule that keeps both sides equal: the destination applies a delta to its own copy of
 * the page, which is exactly the bytes last sent, so the cache must hold exactly those
 * bytes too. The guest writes its pages while they are read, so each page is read once,
 * into a snapshot; its zero test, its delta, the cached copy and the bytes sent all come
 * from that snapshot. Batches are built in a buffer of their own (whole pages and deltas
 * back to back) that stays put until the batch is written, so the writer sends it without
 * another copy. A page that became zero is sent as a flag and leaves the cache.
 *
 * Several connections (streams.c). Only the engine thread touches the cache and the
 * batch buffer: a batch handed to an extra connection's sender takes its buffer along and
 * leaves a written one in its place, so no lock guards the cache. The cache is updated when
 * a page is queued, not when it is written; that is sound because the destination applies
 * each page's copies in the order the engine queued them, whichever connection carries
 * them:
 *   - within a round the engine queues a page at most once (round 0 reads each window
 *     once; a later round clears each page's dirty bit as it queues it, and only a sync
 *     between rounds sets bits), so no two copies of a page are ever in flight between
 *     the same two FENCEs;
 *   - every round, the stop-and-copy's too, ends with FENCE on every connection, sent only
 *     once each sender has written all it was given, and the destination installs
 *     everything before FENCE k before anything after it (fences.h; tests/unit/
 *     test_fences.c drives that rule with this cache and decoder through random
 *     interleavings and shows a delta applied early breaks the copy).
 * So when the destination applies a delta of round k, its copy of the page is the one the
 * cache held when the delta was made. A failed move is never resumed from this cache.
 * Post-copy pages never go through here (mig_complete stops deltas before a switch, and
 * post-copy takes one connection): UFFDIO_COPY installs whole pages. Each attempt starts
 * with an empty cache, as the destination starts empty. Memory: the cache, plus a batch
 * buffer (MIG_BATCH_DATA, 4 MiB) for the engine and one for each of the 2 (N - 1) batches
 * that may wait for or be with a sender, allocated at their first use.
 */
#include "migration/mig_internal.h"
#include "state/xbzrle.h"

_Static_assert(XBZRLE_PAGE == STATE_PAGE_SIZE, "a batch buffer holds whole pages");

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static struct {
	struct xbzrle_cache *cache;
	uint8_t *buf;		/* the batch being built: MIG_BATCH_DATA bytes */
	size_t used;
	uint8_t snap[XBZRLE_PAGE]; /* the page as read once */
} md;

int mig_delta_start(struct errbuf *e)
{
	int ret;

	mig_delta_stop();
	if (!mig.p.delta_cache)
		return 0;
	ret = xbzrle_cache_new(&md.cache, mig.p.delta_cache, e);
	if (ret < 0)
		return ret;
	md.buf = malloc(MIG_BATCH_DATA);
	if (!md.buf) {
		mig_delta_stop();
		return err_set(e, -ENOMEM, "out of memory for the delta batch");
	}
	return 0;
}

void mig_delta_stop(void)
{
	xbzrle_cache_free(md.cache);
	free(md.buf);
	md.cache = NULL;
	md.buf = NULL;
	md.used = 0;
}

bool mig_delta_on(void)
{
	return md.cache != NULL;
}

int mig_delta_page(uint64_t pg, const void *host, struct state_page *out)
{
	uint8_t *at = md.buf + md.used;
	size_t len;

	memcpy(md.snap, host, XBZRLE_PAGE);
	if (page_is_zero(md.snap)) {
		xbzrle_cache_drop(md.cache, pg);
		out->data = NULL;
		return 0;
	}
	if (xbzrle_cache_update(md.cache, pg, md.snap, at, XBZRLE_BOUND, &len)) {
		out->data = at;
		out->delta = true;
		out->delta_len = (uint32_t)len;
		md.used += len;
		return 1;
	}
	memcpy(at, md.snap, XBZRLE_PAGE);
	out->data = at;
	md.used += XBZRLE_PAGE;
	return 0;
}

uint8_t **mig_delta_batch_buf(void)
{
	return md.cache ? &md.buf : NULL;
}

void mig_delta_batch_sent(void)
{
	md.used = 0;
}
