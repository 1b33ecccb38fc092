/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for the delta decoder (state/xbzrle.c): the input is a delta from the
 * network, applied to a page of exactly 4096 heap bytes, so AddressSanitizer sees any write
 * or read past the page or the delta. A refused delta must leave the page as it was; an
 * accepted one must round-trip: the encoder's own delta from the old page to the result
 * decodes to the same result.
 */
#include "state/xbzrle.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint8_t *page = malloc(XBZRLE_PAGE), *old = malloc(XBZRLE_PAGE);
	uint8_t *delta = malloc(size ? size : 1), *again = malloc(XBZRLE_PAGE - 1);
	struct errbuf e;
	size_t len;

	if (!page || !old || !delta || !again)
		abort();
	/* the delta in a buffer of its own exact size: a read past it is caught */
	memcpy(delta, data, size);
	for (size_t i = 0; i < XBZRLE_PAGE; i++)
		old[i] = (uint8_t)(i * 7 + (i >> 9));
	memcpy(page, old, XBZRLE_PAGE);
	if (xbzrle_decode(page, delta, size, &e) < 0) {
		if (memcmp(page, old, XBZRLE_PAGE) || !e.msg[0])
			abort(); /* a refused delta changed the page, or said nothing */
	} else if (xbzrle_encode(old, page, again, XBZRLE_PAGE - 1, &len) == 0) {
		/* old becomes the page rebuilt from the encoder's own delta */
		if (xbzrle_decode(old, again, len, &e) < 0 || memcmp(old, page, XBZRLE_PAGE))
			abort(); /* the encoder's delta does not give the same page */
	}
	free(page);
	free(old);
	free(delta);
	free(again);
	return 0;
}
