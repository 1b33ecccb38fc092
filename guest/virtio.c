// SPDX-License-Identifier: MIT
/*
 * virtio.c - virtio-mmio transport (register layout version 2, and legacy version 1) and
 * split virtqueues for the guest kit's drivers.
 *
 * The rings live in static memory of the image (identity mapped, so an address is its own
 * guest-physical address), laid out the legacy way (descriptors and available ring in the
 * first page, used ring in the second) so the same memory serves both register layouts.
 * Completions are polled: the guest programs no IOAPIC, it only acknowledges
 * InterruptStatus so that a device's level-triggered line does not stay raised.
 */
#include "virtio.h"

#define VIRTIO_MMIO_MAGIC		0x74726976	/* "virt" */

#define VMMIO_MAGIC			0x000
#define VMMIO_VERSION			0x004
#define VMMIO_DEVICE_ID			0x008
#define VMMIO_DEVICE_FEATURES		0x010
#define VMMIO_DEVICE_FEATURES_SEL	0x014
#define VMMIO_DRIVER_FEATURES		0x020
#define VMMIO_DRIVER_FEATURES_SEL	0x024
#define VMMIO_GUEST_PAGE_SIZE		0x028	/* legacy */
#define VMMIO_QUEUE_SEL			0x030
#define VMMIO_QUEUE_NUM_MAX		0x034
#define VMMIO_QUEUE_NUM			0x038
#define VMMIO_QUEUE_ALIGN		0x03c	/* legacy */
#define VMMIO_QUEUE_PFN			0x040	/* legacy */
#define VMMIO_QUEUE_READY		0x044
#define VMMIO_QUEUE_NOTIFY		0x050
#define VMMIO_INTERRUPT_STATUS		0x060
#define VMMIO_INTERRUPT_ACK		0x064
#define VMMIO_STATUS			0x070
#define VMMIO_QUEUE_DESC_LOW		0x080
#define VMMIO_QUEUE_DESC_HIGH		0x084
#define VMMIO_QUEUE_DRIVER_LOW		0x090
#define VMMIO_QUEUE_DRIVER_HIGH		0x094
#define VMMIO_QUEUE_DEVICE_LOW		0x0a0
#define VMMIO_QUEUE_DEVICE_HIGH		0x0a4
#define VMMIO_CONFIG			0x100

#define VIRTQ_MEM_SIZE			(2 * PAGE_SIZE)
#define VIRTQ_POOL			4	/* queues over all devices (net uses 3) */

struct virtio_dev virtio_devs[VIRTIO_MMIO_MAX];
u32 virtio_ndevs;

static u8 virtq_pool[VIRTQ_POOL][VIRTQ_MEM_SIZE] __attribute__((aligned(4096)));
static u32 virtq_pool_used;

static inline u32 mmio_read(struct virtio_dev *d, u32 reg)
{
	return *(volatile u32 *)(d->base + reg);
}

static inline void mmio_write(struct virtio_dev *d, u32 reg, u32 v)
{
	*(volatile u32 *)(d->base + reg) = v;
}

/* Linux's form: size with an optional K/M/G suffix, '@', base (0x... or decimal), ':', irq. */
static bool parse_num(const char **sp, u64 *out)
{
	const char *s = *sp;
	u32 base = 10;
	u64 v = 0;

	if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
		base = 16;
		s += 2;
	}
	for (;; s++) {
		u32 digit;

		if (*s >= '0' && *s <= '9')
			digit = (u32)(*s - '0');
		else if (base == 16 && *s >= 'a' && *s <= 'f')
			digit = (u32)(*s - 'a' + 10);
		else if (base == 16 && *s >= 'A' && *s <= 'F')
			digit = (u32)(*s - 'A' + 10);
		else
			break;
		if (v > (~0ull - digit) / base)
			return false;
		v = v * base + digit;
	}
	if (s == *sp || (base == 16 && s == *sp + 2))
		return false;
	*out = v;
	*sp = s;
	return true;
}

bool virtio_cmdline_add(const char *s)
{
	struct virtio_dev d = { 0 };
	u64 irq;

	if (!parse_num(&s, &d.size))
		return false;
	switch (*s) {
	case 'k': case 'K': d.size <<= 10; s++; break;
	case 'm': case 'M': d.size <<= 20; s++; break;
	case 'g': case 'G': d.size <<= 30; s++; break;
	}
	if (*s++ != '@' || !parse_num(&s, &d.base) || *s++ != ':' || !parse_num(&s, &irq))
		return false;
	if ((*s && *s != ' ') || d.size < 0x100 || (d.base & 0xff) || d.base >= 4 * GiB ||
	    irq > 255)
		return false;
	d.irq = (u32)irq;
	if (virtio_ndevs == VIRTIO_MMIO_MAX) {
		con_printf("warning: more than %u virtio_mmio.device= entries, extra ignored\n",
			   VIRTIO_MMIO_MAX);
		return true;
	}
	virtio_devs[virtio_ndevs++] = d;
	return true;
}

/*
 * Device registers must not be cached: mark the 2 MiB page that holds them uncached, as
 * entry.S does for the LAPIC. (Under KVM an access to them exits either way; on hardware
 * it would matter.)
 */
static void mmio_map_uncached(u64 base)
{
	u64 *pd = (u64 *)(pdpt[base >> 30] & ~0xfffull);

	pd[(base >> 21) & 511] |= PTE_PCD | PTE_PWT;
	asm volatile("invlpg (%0)" : : "r"(base) : "memory");
}

void virtio_probe(void)
{
	for (u32 i = 0; i < virtio_ndevs; i++) {
		struct virtio_dev *d = &virtio_devs[i];
		u32 magic;

		mmio_map_uncached(d->base);
		magic = mmio_read(d, VMMIO_MAGIC);
		if (magic != VIRTIO_MMIO_MAGIC) {
			con_printf("virtio error: 0x%lx: no virtio-mmio device (magic 0x%x)\n",
				   d->base, magic);
			continue;
		}
		d->version = mmio_read(d, VMMIO_VERSION);
		if (d->version != 1 && d->version != 2) {
			con_printf("virtio error: 0x%lx: unknown virtio-mmio version %u\n", d->base,
				   d->version);
			continue;
		}
		d->device_id = mmio_read(d, VMMIO_DEVICE_ID);
		if (d->device_id)	/* id 0: an empty transport (QEMU makes many) */
			con_printf("virtio-mmio 0x%lx irq=%u version=%u device=%u\n", d->base,
				   d->irq, d->version, d->device_id);
	}
}

struct virtio_dev *virtio_find(u32 device_id)
{
	for (u32 i = 0; i < virtio_ndevs; i++)
		if (virtio_devs[i].device_id == device_id && !virtio_devs[i].claimed)
			return &virtio_devs[i];
	return NULL;
}

void virtio_error(struct virtio_dev *d, const char *fmt, ...)
{
	char msg[120];
	va_list ap;
	size_t n;

	va_start(ap, fmt);
	n = con_vformat(msg, sizeof(msg) - 1, fmt, ap);
	va_end(ap);
	msg[n] = '\0';
	con_printf("virtio error: 0x%lx: %s\n", d->base, msg);
}

u32 virtio_status(struct virtio_dev *d)
{
	return mmio_read(d, VMMIO_STATUS);
}

static void virtio_status_set(struct virtio_dev *d, u32 bits)
{
	mmio_write(d, VMMIO_STATUS, mmio_read(d, VMMIO_STATUS) | bits);
}

int virtio_init(struct virtio_dev *d, u64 want)
{
	u64 offered;

	d->claimed = true;
	mmio_write(d, VMMIO_STATUS, 0);		/* reset */
	if (mmio_read(d, VMMIO_STATUS)) {
		virtio_error(d, "did not reset");
		return -EIO;
	}
	virtio_status_set(d, VIRTIO_STATUS_ACK);
	virtio_status_set(d, VIRTIO_STATUS_DRIVER);

	mmio_write(d, VMMIO_DEVICE_FEATURES_SEL, 0);
	offered = mmio_read(d, VMMIO_DEVICE_FEATURES);
	mmio_write(d, VMMIO_DEVICE_FEATURES_SEL, 1);
	offered |= (u64)mmio_read(d, VMMIO_DEVICE_FEATURES) << 32;
	if (d->version == 2) {
		if (!(offered >> VIRTIO_F_VERSION_1 & 1)) {
			virtio_error(d, "VIRTIO_F_VERSION_1 not offered (features 0x%lx)",
				     offered);
			virtio_status_set(d, VIRTIO_STATUS_FAILED);
			return -ENODEV;
		}
		want |= 1ull << VIRTIO_F_VERSION_1;
	} else {
		want &= ~(1ull << VIRTIO_F_VERSION_1);
	}
	d->features = offered & want;
	mmio_write(d, VMMIO_DRIVER_FEATURES_SEL, 0);
	mmio_write(d, VMMIO_DRIVER_FEATURES, (u32)d->features);
	mmio_write(d, VMMIO_DRIVER_FEATURES_SEL, 1);
	mmio_write(d, VMMIO_DRIVER_FEATURES, (u32)(d->features >> 32));

	if (d->version == 1) {
		/* legacy: no FEATURES_OK; queues are given by page frame number */
		mmio_write(d, VMMIO_GUEST_PAGE_SIZE, PAGE_SIZE);
		return 0;
	}
	virtio_status_set(d, VIRTIO_STATUS_FEATURES_OK);
	if (!(mmio_read(d, VMMIO_STATUS) & VIRTIO_STATUS_FEATURES_OK)) {
		virtio_error(d, "features 0x%lx refused (FEATURES_OK not set)", d->features);
		virtio_status_set(d, VIRTIO_STATUS_FAILED);
		return -ENODEV;
	}
	return 0;
}

int virtq_setup(struct virtio_dev *d, struct virtq *q, u16 index, u16 size)
{
	u64 mem, avail, used;
	u32 max;

	mmio_write(d, VMMIO_QUEUE_SEL, index);
	if (d->version == 2 ? mmio_read(d, VMMIO_QUEUE_READY) : mmio_read(d, VMMIO_QUEUE_PFN)) {
		virtio_error(d, "queue %u already in use after reset", index);
		return -EIO;
	}
	max = mmio_read(d, VMMIO_QUEUE_NUM_MAX);
	if (!max) {
		virtio_error(d, "queue %u does not exist", index);
		return -ENODEV;
	}
	if (virtq_pool_used == VIRTQ_POOL) {
		virtio_error(d, "out of queue memory (%u queues)", VIRTQ_POOL);
		return -ENOMEM;
	}
	size = (u16)MIN(MIN((u32)size, max), VIRTQ_SIZE_MAX);
	/* a queue size must be a power of 2 */
	while (size & (size - 1))
		size &= (u16)(size - 1);
	mem = (u64)virtq_pool[virtq_pool_used++];
	memset((void *)mem, 0, VIRTQ_MEM_SIZE);
	avail = mem + size * sizeof(struct virtq_desc);
	used = mem + PAGE_SIZE;

	*q = (struct virtq){
		.dev = d, .index = index, .size = size, .nfree = size,
		.desc = (volatile struct virtq_desc *)mem,
		.avail = (volatile u16 *)avail,
		.used_hdr = (volatile u16 *)used,
		.used = (volatile struct virtq_used_elem *)(used + 4),
	};
	for (u16 i = 0; i < size; i++)
		q->desc[i].next = (u16)(i + 1);

	mmio_write(d, VMMIO_QUEUE_NUM, size);
	if (d->version == 1) {
		mmio_write(d, VMMIO_QUEUE_ALIGN, PAGE_SIZE);
		mmio_write(d, VMMIO_QUEUE_PFN, (u32)(mem >> PAGE_SHIFT));
		return 0;
	}
	mmio_write(d, VMMIO_QUEUE_DESC_LOW, (u32)mem);
	mmio_write(d, VMMIO_QUEUE_DESC_HIGH, (u32)(mem >> 32));
	mmio_write(d, VMMIO_QUEUE_DRIVER_LOW, (u32)avail);
	mmio_write(d, VMMIO_QUEUE_DRIVER_HIGH, (u32)(avail >> 32));
	mmio_write(d, VMMIO_QUEUE_DEVICE_LOW, (u32)used);
	mmio_write(d, VMMIO_QUEUE_DEVICE_HIGH, (u32)(used >> 32));
	mmio_write(d, VMMIO_QUEUE_READY, 1);
	return 0;
}

void virtio_driver_ok(struct virtio_dev *d)
{
	virtio_status_set(d, VIRTIO_STATUS_DRIVER_OK);
}

u32 virtio_irq_ack(struct virtio_dev *d)
{
	u32 isr = mmio_read(d, VMMIO_INTERRUPT_STATUS);

	if (isr)
		mmio_write(d, VMMIO_INTERRUPT_ACK, isr);
	return isr;
}

u8 virtio_cfg8(struct virtio_dev *d, u32 off)
{
	return *(volatile u8 *)(d->base + VMMIO_CONFIG + off);
}

u32 virtio_cfg32(struct virtio_dev *d, u32 off)
{
	return mmio_read(d, VMMIO_CONFIG + off);
}

u64 virtio_cfg64(struct virtio_dev *d, u32 off)
{
	return virtio_cfg32(d, off) | (u64)virtio_cfg32(d, off + 4) << 32;
}

int virtq_add(struct virtq *q, const struct virtq_buf *b, u32 n_out, u32 n_in)
{
	u32 n = n_out + n_in;
	u16 head = q->free_head, i = head;

	if (!n || n > q->nfree)
		return -ENOSPC;
	for (u32 k = 0; k < n; k++) {
		volatile struct virtq_desc *dsc = &q->desc[i];

		dsc->addr = (u64)b[k].addr;
		dsc->len = b[k].len;
		dsc->flags = (u16)((k + 1 < n ? VIRTQ_DESC_F_NEXT : 0) |
				   (k >= n_out ? VIRTQ_DESC_F_WRITE : 0));
		i = dsc->next;
	}
	q->free_head = i;
	q->nfree = (u16)(q->nfree - n);
	q->chain_len[head] = (u16)n;
	q->avail[2 + (q->avail_idx & (q->size - 1))] = head;
	/* the ring entry before the index that publishes it (x86: a compiler barrier) */
	__atomic_thread_fence(__ATOMIC_RELEASE);
	q->avail_idx++;
	q->avail[1] = q->avail_idx;
	return head;
}

void virtq_kick(struct virtq *q)
{
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	mmio_write(q->dev, VMMIO_QUEUE_NOTIFY, q->index);
}

int virtq_get(struct virtq *q, u32 *len)
{
	u16 head, i, n;

	if (q->used_hdr[1] == q->last_used)
		return -1;
	__atomic_thread_fence(__ATOMIC_ACQUIRE);
	head = (u16)q->used[q->last_used & (q->size - 1)].id;
	if (len)
		*len = q->used[q->last_used & (q->size - 1)].len;
	q->last_used++;
	if (head >= q->size || !q->chain_len[head]) {
		virtio_error(q->dev, "queue %u: device used unknown descriptor %u", q->index,
			     head);
		return -1;
	}
	/* give the chain back: its last descriptor links to the old free list */
	n = q->chain_len[head];
	q->chain_len[head] = 0;
	q->nfree = (u16)(q->nfree + n);
	for (i = head; --n; i = q->desc[i].next)
		;
	q->desc[i].next = q->free_head;
	q->free_head = head;
	return head;
}

int virtq_wait(struct virtq *q, int head, u32 seconds, u32 *len)
{
	u64 end = ticks + (u64)seconds * cfg.hz;

	while (ticks < end) {
		int h = virtq_get(q, len);

		if (h == head) {
			virtio_irq_ack(q->dev);
			return 0;
		}
		if (h < 0)
			cpu_relax();
	}
	return -ETIMEDOUT;
}
