/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for the split-virtqueue walker: the input is a guest's RAM (64 KiB at
 * guest-physical 0) preceded by a queue configuration. The walker takes chains until the
 * ring is empty or malformed and publishes each; every buffer it hands out is touched end to
 * end, so AddressSanitizer sees any translation that strays outside the fake RAM. Nothing
 * may crash, hang (a chain is at most the queue size), or read or write outside RAM.
 */
#include "devices/virtq.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define FUZZ_RAM (64u * 1024)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct fuzz_ram {
	uint8_t *p;
	uint64_t dirtied;
};

static void *fuzz_translate(void *opaque, uint64_t gpa, uint64_t len)
{
	struct fuzz_ram *r = opaque;

	if (gpa > FUZZ_RAM || len > FUZZ_RAM - gpa)
		return NULL;
	return r->p + gpa;
}

static void fuzz_mark_dirty(void *opaque, uint64_t gpa, uint64_t len)
{
	struct fuzz_ram *r = opaque;

	if (gpa > FUZZ_RAM || len > FUZZ_RAM - gpa)
		abort(); /* the walker marked something that is not RAM */
	r->dirtied += len;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct virtq_elem el;
	struct fuzz_ram ram = { 0 };
	struct dev_mem m = { &ram, fuzz_translate, fuzz_mark_dirty };
	struct virtq q = { 0 };
	struct errbuf e;
	volatile uint8_t sink = 0;

	if (size < 12)
		return 0;
	/* an exactly sized heap block, so an overrun is caught */
	ram.p = calloc(1, FUZZ_RAM);
	if (!ram.p)
		return 0;
	memcpy(ram.p, data + 12, size - 12 < FUZZ_RAM ? size - 12 : FUZZ_RAM);
	q.num = 1u << (data[0] % 10); /* 1..512: beyond VIRTQ_NUM_MAX is refused by the check */
	q.desc = le_get16(data + 1) * 16ull % (FUZZ_RAM + 4096);
	q.avail = le_get16(data + 3) * 2ull % (FUZZ_RAM + 4096);
	q.used = le_get16(data + 5) * 4ull % (FUZZ_RAM + 4096);
	q.next_avail = q.next_used = le_get16(data + 7);
	if (virtq_check(&q, VIRTQ_NUM_MAX, &m, &e) < 0)
		goto out;
	q.ready = true;
	for (unsigned i = 0; i < 2 * VIRTQ_NUM_MAX; i++) {
		int r = virtq_pop(&q, &m, &el, &e);

		if (r <= 0)
			break;
		if (el.nsegs < 1 || el.nsegs > q.num || el.nreadable > el.nsegs)
			abort();
		for (unsigned s = 0; s < el.nsegs; s++) {
			if (!el.segs[s].len)
				continue;
			sink ^= el.segs[s].host[0];
			el.segs[s].host[el.segs[s].len - 1] = sink;
		}
		if (virtq_push(&q, &m, el.head, data[9]) < 0)
			abort();
	}
out:
	free(ram.p);
	return 0;
}
