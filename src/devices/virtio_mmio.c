/* SPDX-License-Identifier: MIT */
/*
 * virtio-mmio transport (register layout version 2). Everything the driver writes is checked
 * where it takes effect: features when it sets FEATURES_OK (a subset of what was offered,
 * VERSION_1 included, or FEATURES_OK stays clear), a queue when it is made ready (size a
 * power of two, areas aligned and inside RAM, or the device needs a reset), notifications
 * only for ready queues of a driver that set DRIVER_OK (others are ignored).
 */
#include "devices/virtio_mmio.h"
#include "base/log.h"

#include <errno.h>
#include <linux/virtio_config.h>
#include <linux/virtio_mmio.h>
#include <string.h>

#define VIRTIO_MMIO_MAGIC 0x74726976u  /* "virt" */
#define VIRTIO_MMIO_VENDOR 0x54574447u /* "GDWT" */
#define VIRTIO_STATUS_KNOWN                                                                  \
	(VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_DRIVER_OK |  \
	 VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_NEEDS_RESET | VIRTIO_CONFIG_S_FAILED)

void virtio_mmio_init(struct virtio_mmio *t, const struct virtio_mmio_dev *vd, void *dev,
		      const struct device_env *env, uint64_t device_features)
{
	memset(t, 0, sizeof(*t));
	pthread_mutex_init(&t->lock, NULL);
	t->vd = vd;
	t->dev = dev;
	t->mem = env->mem;
	t->irq = env->irq;
	t->device_features = device_features | (1ull << VIRTIO_F_VERSION_1);
}

void virtio_mmio_destroy(struct virtio_mmio *t)
{
	pthread_mutex_destroy(&t->lock);
}

/* with t->lock held */
static void virtio_mmio_irq_update(struct virtio_mmio *t)
{
	dev_irq_set(&t->irq, t->isr != 0);
}

void virtio_mmio_reset(struct virtio_mmio *t)
{
	pthread_mutex_lock(&t->lock);
	t->driver_features = 0;
	t->device_features_sel = t->driver_features_sel = t->queue_sel = 0;
	t->status = 0;
	t->isr = 0;
	memset(t->q, 0, sizeof(t->q));
	virtio_mmio_irq_update(t);
	pthread_mutex_unlock(&t->lock);
}

bool virtio_mmio_queue_live(struct virtio_mmio *t, unsigned qi)
{
	bool live;

	pthread_mutex_lock(&t->lock);
	live = qi < t->vd->nqueues && t->q[qi].ready && (t->status & VIRTIO_CONFIG_S_DRIVER_OK) &&
	       !(t->status & VIRTIO_CONFIG_S_NEEDS_RESET);
	pthread_mutex_unlock(&t->lock);
	return live;
}

void virtio_mmio_used_notify(struct virtio_mmio *t, unsigned qi)
{
	if (!virtq_should_notify(&t->q[qi], &t->mem))
		return;
	pthread_mutex_lock(&t->lock);
	t->isr |= VIRTIO_MMIO_INT_VRING;
	virtio_mmio_irq_update(t);
	pthread_mutex_unlock(&t->lock);
}

void virtio_mmio_config_notify(struct virtio_mmio *t)
{
	pthread_mutex_lock(&t->lock);
	t->config_generation++;
	/* a driver that has not finished initialising reads the configuration when it does */
	if (t->status & VIRTIO_CONFIG_S_DRIVER_OK) {
		t->isr |= VIRTIO_MMIO_INT_CONFIG;
		virtio_mmio_irq_update(t);
	}
	pthread_mutex_unlock(&t->lock);
}

static void virtio_mmio_needs_reset_locked(struct virtio_mmio *t, const char *why)
{
	static struct log_ratelimit rl = LOG_RATELIMIT_INIT(1000, 5);
	uint32_t suppressed;

	if (t->status & VIRTIO_CONFIG_S_NEEDS_RESET)
		return;
	if (log_ratelimit_allow(&rl, &suppressed))
		log_warn("virtio device %u: %s: the device needs a reset", t->vd->device_id, why);
	t->status |= VIRTIO_CONFIG_S_NEEDS_RESET;
	/* only a driver that completed initialisation is told through an interrupt */
	if (t->status & VIRTIO_CONFIG_S_DRIVER_OK) {
		t->isr |= VIRTIO_MMIO_INT_CONFIG;
		virtio_mmio_irq_update(t);
	}
}

void virtio_mmio_needs_reset(struct virtio_mmio *t, const char *why)
{
	pthread_mutex_lock(&t->lock);
	virtio_mmio_needs_reset_locked(t, why);
	pthread_mutex_unlock(&t->lock);
}

static struct virtq *virtio_mmio_selq(struct virtio_mmio *t)
{
	return t->queue_sel < t->vd->nqueues ? &t->q[t->queue_sel] : NULL;
}

static uint32_t virtio_mmio_read_reg(struct virtio_mmio *t, uint64_t off)
{
	struct virtq *q = virtio_mmio_selq(t);

	switch (off) {
	case VIRTIO_MMIO_MAGIC_VALUE: return VIRTIO_MMIO_MAGIC;
	case VIRTIO_MMIO_VERSION: return 2;
	case VIRTIO_MMIO_DEVICE_ID: return t->vd->device_id;
	case VIRTIO_MMIO_VENDOR_ID: return VIRTIO_MMIO_VENDOR;
	case VIRTIO_MMIO_DEVICE_FEATURES:
		return t->device_features_sel < 2 ?
			       (uint32_t)(t->device_features >> (32 * t->device_features_sel)) : 0;
	case VIRTIO_MMIO_QUEUE_NUM_MAX: return q ? VIRTQ_NUM_MAX : 0;
	case VIRTIO_MMIO_QUEUE_READY: return q ? q->ready : 0;
	case VIRTIO_MMIO_INTERRUPT_STATUS: return t->isr;
	case VIRTIO_MMIO_STATUS: return t->status;
	case VIRTIO_MMIO_CONFIG_GENERATION: return t->config_generation;
	}
	return 0;
}

/* Features are accepted only as a subset of the offer that includes VERSION_1. */
static uint32_t virtio_mmio_status_filter(struct virtio_mmio *t, uint32_t val)
{
	val &= VIRTIO_STATUS_KNOWN;
	if ((val & VIRTIO_CONFIG_S_FEATURES_OK) && !(t->status & VIRTIO_CONFIG_S_FEATURES_OK) &&
	    ((t->driver_features & ~t->device_features) ||
	     !(t->driver_features & (1ull << VIRTIO_F_VERSION_1))))
		val &= ~VIRTIO_CONFIG_S_FEATURES_OK;
	/* NEEDS_RESET is the device's to set and only a reset clears it */
	val = (val & ~VIRTIO_CONFIG_S_NEEDS_RESET) | (t->status & VIRTIO_CONFIG_S_NEEDS_RESET);
	return val;
}

static void virtio_mmio_addr_set(uint64_t *a, bool high, uint32_t val)
{
	*a = high ? (*a & 0xffffffffull) | (uint64_t)val << 32 : (*a & ~0xffffffffull) | val;
}

/* Returns the queue to notify, or -1. With t->lock held. */
static int virtio_mmio_write_reg(struct virtio_mmio *t, uint64_t off, uint32_t val)
{
	struct virtq *q = virtio_mmio_selq(t);
	struct errbuf e;

	switch (off) {
	case VIRTIO_MMIO_DEVICE_FEATURES_SEL:
		t->device_features_sel = val;
		break;
	case VIRTIO_MMIO_DRIVER_FEATURES_SEL:
		t->driver_features_sel = val;
		break;
	case VIRTIO_MMIO_DRIVER_FEATURES:
		if (t->status & VIRTIO_CONFIG_S_FEATURES_OK || t->driver_features_sel > 1)
			break;
		virtio_mmio_addr_set(&t->driver_features, t->driver_features_sel, val);
		break;
	case VIRTIO_MMIO_QUEUE_SEL:
		t->queue_sel = val;
		break;
	case VIRTIO_MMIO_QUEUE_NUM:
		if (q && !q->ready)
			q->num = val;
		break;
	case VIRTIO_MMIO_QUEUE_DESC_LOW:
	case VIRTIO_MMIO_QUEUE_DESC_HIGH:
		if (q && !q->ready)
			virtio_mmio_addr_set(&q->desc, off == VIRTIO_MMIO_QUEUE_DESC_HIGH, val);
		break;
	case VIRTIO_MMIO_QUEUE_AVAIL_LOW:
	case VIRTIO_MMIO_QUEUE_AVAIL_HIGH:
		if (q && !q->ready)
			virtio_mmio_addr_set(&q->avail, off == VIRTIO_MMIO_QUEUE_AVAIL_HIGH, val);
		break;
	case VIRTIO_MMIO_QUEUE_USED_LOW:
	case VIRTIO_MMIO_QUEUE_USED_HIGH:
		if (q && !q->ready)
			virtio_mmio_addr_set(&q->used, off == VIRTIO_MMIO_QUEUE_USED_HIGH, val);
		break;
	case VIRTIO_MMIO_QUEUE_READY:
		/* disabling a queue is handled by the caller, which quiesces the device first */
		if (!q || !val || q->ready)
			break;
		if (virtq_check(q, VIRTQ_NUM_MAX, &t->mem, &e) < 0) {
			virtio_mmio_needs_reset_locked(t, e.msg);
			break;
		}
		q->ready = true;
		q->next_avail = q->next_used = 0;
		break;
	case VIRTIO_MMIO_QUEUE_NOTIFY:
		if (val < t->vd->nqueues && t->q[val].ready &&
		    (t->status & VIRTIO_CONFIG_S_DRIVER_OK) &&
		    !(t->status & VIRTIO_CONFIG_S_NEEDS_RESET))
			return (int)val;
		break;
	case VIRTIO_MMIO_INTERRUPT_ACK:
		t->isr &= ~val;
		virtio_mmio_irq_update(t);
		break;
	case VIRTIO_MMIO_STATUS:
		t->status = virtio_mmio_status_filter(t, val);
		break;
	}
	return -1;
}

void virtio_mmio_access(struct virtio_mmio *t, uint64_t off, uint8_t *data, unsigned len,
			bool is_write)
{
	uint32_t val = 0;
	int notify;

	if (off >= VIRTIO_MMIO_CONFIG) {
		if (is_write)
			return; /* the configuration space is read-only here */
		t->vd->config_read(t->dev, off - VIRTIO_MMIO_CONFIG, data, len);
		return;
	}
	/* registers are 32 bits wide and aligned; anything else reads zero, writes nothing */
	if (len != 4 || off & 3) {
		if (!is_write)
			memset(data, 0, len);
		return;
	}
	if (!is_write) {
		pthread_mutex_lock(&t->lock);
		val = virtio_mmio_read_reg(t, off);
		pthread_mutex_unlock(&t->lock);
		le_put32(data, val);
		return;
	}
	val = le_get32(data);
	if ((off == VIRTIO_MMIO_STATUS && val == 0) || (off == VIRTIO_MMIO_QUEUE_READY && !val)) {
		/* a reset or a disabled queue: no request may be in flight while it changes */
		t->vd->quiesce(t->dev);
		if (off == VIRTIO_MMIO_STATUS) {
			virtio_mmio_reset(t);
			if (t->vd->driver_reset)
				t->vd->driver_reset(t->dev);
		} else {
			pthread_mutex_lock(&t->lock);
			if (virtio_mmio_selq(t))
				virtio_mmio_selq(t)->ready = false;
			pthread_mutex_unlock(&t->lock);
		}
		t->vd->resume(t->dev);
		return;
	}
	pthread_mutex_lock(&t->lock);
	notify = virtio_mmio_write_reg(t, off, val);
	pthread_mutex_unlock(&t->lock);
	if (notify >= 0)
		t->vd->notify(t->dev, (unsigned)notify);
}

/* ---- state ---- */

void virtio_mmio_state_save(struct virtio_mmio *t, struct buf *out)
{
	pthread_mutex_lock(&t->lock);
	buf_put_u64(out, t->device_features);
	buf_put_u64(out, t->driver_features);
	buf_put_u32(out, t->device_features_sel);
	buf_put_u32(out, t->driver_features_sel);
	buf_put_u32(out, t->queue_sel);
	buf_put_u32(out, t->status);
	buf_put_u32(out, t->isr);
	buf_put_u32(out, t->config_generation);
	buf_put_u32(out, t->vd->nqueues);
	for (unsigned i = 0; i < t->vd->nqueues; i++) {
		const struct virtq *q = &t->q[i];

		buf_put_u32(out, q->num);
		buf_put_u32(out, q->ready);
		buf_put_u64(out, q->desc);
		buf_put_u64(out, q->avail);
		buf_put_u64(out, q->used);
		buf_put_u16(out, q->next_avail);
		buf_put_u16(out, q->next_used);
	}
	pthread_mutex_unlock(&t->lock);
}

int virtio_mmio_state_parse(const struct virtio_mmio_dev *vd, const struct dev_mem *mem,
			    struct buf_reader *r, struct virtio_mmio *s, struct errbuf *e)
{
	uint32_t nq, ready;

	memset(s, 0, sizeof(*s));
	s->vd = vd;
	if (mem)
		s->mem = *mem;
	s->device_features = buf_get_u64(r);
	s->driver_features = buf_get_u64(r);
	s->device_features_sel = buf_get_u32(r);
	s->driver_features_sel = buf_get_u32(r);
	s->queue_sel = buf_get_u32(r);
	s->status = buf_get_u32(r);
	s->isr = buf_get_u32(r);
	s->config_generation = buf_get_u32(r);
	nq = buf_get_u32(r);
	if (!buf_reader_ok(r))
		return err_set(e, -EINVAL, "transport state truncated");
	if (s->driver_features & ~s->device_features)
		return err_set(e, -EINVAL, "driver features 0x%llx were never offered",
			       (unsigned long long)s->driver_features);
	if (s->status & ~VIRTIO_STATUS_KNOWN)
		return err_set(e, -EINVAL, "device status 0x%x has unknown bits", s->status);
	if (s->isr & ~(uint32_t)(VIRTIO_MMIO_INT_VRING | VIRTIO_MMIO_INT_CONFIG))
		return err_set(e, -EINVAL, "interrupt status 0x%x has unknown bits", s->isr);
	if (nq != vd->nqueues)
		return err_set(e, -EINVAL, "%u queues saved, the device has %u", nq, vd->nqueues);
	for (unsigned i = 0; i < nq; i++) {
		struct virtq *q = &s->q[i];

		q->num = buf_get_u32(r);
		ready = buf_get_u32(r);
		q->desc = buf_get_u64(r);
		q->avail = buf_get_u64(r);
		q->used = buf_get_u64(r);
		q->next_avail = buf_get_u16(r);
		q->next_used = buf_get_u16(r);
		if (!buf_reader_ok(r))
			return err_set(e, -EINVAL, "queue %u state truncated", i);
		if (ready > 1)
			return err_set(e, -EINVAL, "queue %u: ready is %u", i, ready);
		q->ready = ready;
		if (q->ready && virtq_check(q, VIRTQ_NUM_MAX, mem, e) < 0)
			return err_prefix(e, -EINVAL, "queue %u", i);
		/* a quiesced device has completed everything it took: nothing half-done */
		if (q->next_avail != q->next_used)
			return err_set(e, -EINVAL, "queue %u: %u requests taken but not completed",
				       i, (uint16_t)(q->next_avail - q->next_used));
	}
	return 0;
}

void virtio_mmio_state_apply(struct virtio_mmio *t, const struct virtio_mmio *s)
{
	pthread_mutex_lock(&t->lock);
	t->driver_features = s->driver_features;
	t->device_features_sel = s->device_features_sel;
	t->driver_features_sel = s->driver_features_sel;
	t->queue_sel = s->queue_sel;
	t->status = s->status;
	t->isr = s->isr;
	t->config_generation = s->config_generation;
	memcpy(t->q, s->q, sizeof(t->q));
	virtio_mmio_irq_update(t);
	pthread_mutex_unlock(&t->lock);
}
