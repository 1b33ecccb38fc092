/* SPDX-License-Identifier: MIT */
/*
 * Split virtqueues (virtio 1.x, section 2.7) as a device walks them, against guest memory
 * it reaches only through struct dev_mem. The guest is untrusted: a descriptor loop, a
 * buffer outside RAM, a device-readable buffer after a device-writable one, an indirect
 * descriptor (not offered), an available index that runs ahead by more than the queue
 * size: each is an error the caller turns into NEEDS_RESET, never an access outside RAM or
 * an endless loop (a chain is at most `num` descriptors long).
 *
 * Not thread-safe: one thread (the device's I/O thread) walks a queue at a time.
 */
#ifndef GODWIT_DEVICES_VIRTQ_H
#define GODWIT_DEVICES_VIRTQ_H

#include "devices/device.h"

#include <stdbool.h>
#include <stdint.h>

#define VIRTQ_NUM_MAX 256 /* the largest queue this build offers */

struct virtq {
	/* as the driver configured it */
	uint32_t num; /* a power of two, 1..VIRTQ_NUM_MAX */
	bool ready;
	uint64_t desc, avail, used; /* guest-physical addresses of the three areas */
	/* the device's own progress: saved explicitly, never rebuilt from the rings */
	uint16_t next_avail; /* the next available-ring entry to take */
	uint16_t next_used;  /* the used index the device has published */
};

struct virtq_seg {
	uint64_t gpa;
	uint32_t len;
	bool writable; /* device-writable (driver reads it) */
	uint8_t *host;
};

/* One request: a descriptor chain, device-readable segments first. */
struct virtq_elem {
	uint16_t head;
	unsigned nsegs;
	unsigned nreadable; /* segs[0 .. nreadable) are device-readable, the rest writable */
	uint64_t readable_bytes, writable_bytes;
	struct virtq_seg segs[VIRTQ_NUM_MAX];
};

/*
 * Checks a queue the driver marks ready (or a loaded one): size a power of two within
 * 1..num_max, areas aligned (16, 2, 4) and inside RAM (not checked when m is NULL: a
 * saved state read without a guest). 0 or -EINVAL with a message.
 */
int __must_check virtq_check(const struct virtq *q, uint32_t num_max, const struct dev_mem *m,
			     struct errbuf *e);
/*
 * Takes the next available chain into el. Returns 1 with a request, 0 when the ring is
 * empty, -EINVAL with a message when the queue or the chain is malformed (the queue must
 * then be left alone until the driver resets the device).
 */
int __must_check virtq_pop(struct virtq *q, const struct dev_mem *m, struct virtq_elem *el,
			   struct errbuf *e);
/* Publishes a used element (head, bytes written) and marks the used ring dirty. */
int __must_check virtq_push(struct virtq *q, const struct dev_mem *m, uint16_t head,
			    uint32_t written);
/* False if the driver asked for no interrupts (VRING_AVAIL_F_NO_INTERRUPT). */
bool virtq_should_notify(const struct virtq *q, const struct dev_mem *m);

#endif
