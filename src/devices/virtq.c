/* SPDX-License-Identifier: MIT */
/*
 * Split virtqueue walker. Layout (little-endian, x86 only so no byte swapping):
 *   descriptor table  num x { u64 addr, u32 len, u16 flags, u16 next }   aligned 16
 *   available ring    u16 flags, u16 idx, u16 ring[num] (, u16 used_event) aligned 2
 *   used ring         u16 flags, u16 idx, { u32 id, u32 len }[num]       aligned 4
 * The driver writes the available ring and reads the used ring concurrently, so indices
 * are read and published with acquire/release ordering, and each descriptor is copied
 * once before it is checked (the guest cannot change it between check and use).
 */
#include "devices/virtq.h"

#include <errno.h>
#include <linux/virtio_ring.h>
#include <string.h>

#define VIRTQ_DESC_SIZE 16u

static uint64_t virtq_avail_size(uint32_t num)
{
	return 4 + 2ull * num + 2;
}

static uint64_t virtq_used_size(uint32_t num)
{
	return 4 + 8ull * num + 2;
}

int virtq_check(const struct virtq *q, uint32_t num_max, const struct dev_mem *m,
		struct errbuf *e)
{
	if (q->num < 1 || q->num > num_max || (q->num & (q->num - 1)))
		return err_set(e, -EINVAL, "queue size %u is not a power of two within 1..%u",
			       q->num, num_max);
	if (q->desc & 15 || q->avail & 1 || q->used & 3)
		return err_set(e, -EINVAL, "queue areas misaligned (descriptors 0x%llx, available "
					   "0x%llx, used 0x%llx)", (unsigned long long)q->desc,
			       (unsigned long long)q->avail, (unsigned long long)q->used);
	if (!m)
		return 0;
	if (!m->translate(m->opaque, q->desc, (uint64_t)q->num * VIRTQ_DESC_SIZE))
		return err_set(e, -EINVAL, "descriptor table at 0x%llx is outside guest RAM",
			       (unsigned long long)q->desc);
	if (!m->translate(m->opaque, q->avail, virtq_avail_size(q->num)))
		return err_set(e, -EINVAL, "available ring at 0x%llx is outside guest RAM",
			       (unsigned long long)q->avail);
	if (!m->translate(m->opaque, q->used, virtq_used_size(q->num)))
		return err_set(e, -EINVAL, "used ring at 0x%llx is outside guest RAM",
			       (unsigned long long)q->used);
	return 0;
}

static uint16_t virtq_load16(const uint8_t *p)
{
	return __atomic_load_n((const uint16_t *)p, __ATOMIC_ACQUIRE);
}

int virtq_pop(struct virtq *q, const struct dev_mem *m, struct virtq_elem *el, struct errbuf *e)
{
	const uint8_t *avail = m->translate(m->opaque, q->avail, virtq_avail_size(q->num));
	const uint8_t *desc = m->translate(m->opaque, q->desc, (uint64_t)q->num * VIRTQ_DESC_SIZE);
	uint16_t avail_idx, idx;
	unsigned count = 0;

	if (!q->ready || !avail || !desc)
		return err_set(e, -EINVAL, "queue is not ready or outside guest RAM");
	avail_idx = virtq_load16(avail + 2);
	if ((uint16_t)(avail_idx - q->next_avail) > q->num)
		return err_set(e, -EINVAL, "available index %u is %u ahead of the device's %u "
					   "(queue size %u)", avail_idx,
			       (uint16_t)(avail_idx - q->next_avail), q->next_avail, q->num);
	if (avail_idx == q->next_avail)
		return 0;
	/* the ring entry is read after the index that published it */
	idx = le_get16(avail + 4 + 2 * (q->next_avail % q->num));
	if (idx >= q->num)
		return err_set(e, -EINVAL, "available ring entry %u names descriptor %u (queue "
					   "size %u)", q->next_avail, idx, q->num);
	memset(el, 0, offsetof(struct virtq_elem, segs));
	el->head = idx;
	for (;;) {
		const uint8_t *d = desc + (uint64_t)idx * VIRTQ_DESC_SIZE;
		uint64_t addr = le_get64(d);
		uint32_t len = le_get32(d + 8);
		uint16_t flags = le_get16(d + 12), next = le_get16(d + 14);
		struct virtq_seg *s;

		if (++count > q->num)
			return err_set(e, -EINVAL, "descriptor chain from %u loops or is longer than "
						   "the queue (%u)", el->head, q->num);
		if (flags & VRING_DESC_F_INDIRECT)
			return err_set(e, -EINVAL, "descriptor %u is indirect (not negotiated)", idx);
		if (!(flags & VRING_DESC_F_WRITE) && el->nsegs > el->nreadable)
			return err_set(e, -EINVAL, "descriptor %u is device-readable after a "
						   "device-writable one", idx);
		s = &el->segs[el->nsegs++];
		s->gpa = addr;
		s->len = len;
		s->writable = flags & VRING_DESC_F_WRITE;
		/* a zero-length buffer has no address to check and is never touched */
		s->host = len ? m->translate(m->opaque, addr, len) : NULL;
		if (len && !s->host)
			return err_set(e, -EINVAL, "descriptor %u (0x%llx, %u bytes) is outside guest "
						   "RAM", idx, (unsigned long long)addr, len);
		if (s->writable) {
			el->writable_bytes += len;
		} else {
			el->nreadable++;
			el->readable_bytes += len;
		}
		if (!(flags & VRING_DESC_F_NEXT))
			break;
		if (next >= q->num)
			return err_set(e, -EINVAL, "descriptor %u chains to %u (queue size %u)", idx,
				       next, q->num);
		idx = next;
	}
	q->next_avail++;
	return 1;
}

int virtq_push(struct virtq *q, const struct dev_mem *m, uint16_t head, uint32_t written)
{
	uint8_t *used = m->translate(m->opaque, q->used, virtq_used_size(q->num));
	uint64_t off;

	if (!used)
		return -EFAULT;
	off = 4 + 8ull * (q->next_used % q->num);
	le_put32(used + off, head);
	le_put32(used + off + 4, written);
	q->next_used++;
	/* the element is visible before the index that publishes it */
	__atomic_store_n((uint16_t *)(used + 2), q->next_used, __ATOMIC_RELEASE);
	m->mark_dirty(m->opaque, q->used + off, 8);
	m->mark_dirty(m->opaque, q->used + 2, 2);
	return 0;
}

bool virtq_should_notify(const struct virtq *q, const struct dev_mem *m)
{
	const uint8_t *avail = m->translate(m->opaque, q->avail, 2);

	return !avail || !(virtq_load16(avail) & VRING_AVAIL_F_NO_INTERRUPT);
}
