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
 * One connection only (params.c): an extra connection's sender writes a batch later from
 * references the engine made, and the cache is the engine's. Post-copy pages never go
 * through here (mig_complete stops deltas before a switch): UFFDIO_COPY installs whole
 * pages. Each attempt starts with an empty cache, as the destination starts empty.
 */
#include "migration/mig_internal.h"
#include "state/xbzrle.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static struct {
	struct xbzrle_cache *cache;
	uint8_t *buf;		/* the batch being built: STATE_PAGES_MAX pages at most */
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
	md.buf = malloc((size_t)STATE_PAGES_MAX * XBZRLE_PAGE);
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

void mig_delta_batch_sent(void)
{
	md.used = 0;
}
