/* SPDX-License-Identifier: MIT */
/*
 * virtio.h - the guest kit's virtio-mmio transport and split virtqueues (virtio.c), shared
 * by the block (blk.c) and network (net.c) drivers. Devices come from the kernel command
 * line (`virtio_mmio.device=<size>@<base>:<irq>`, Linux's convention); completions are
 * found by polling the used ring, so no interrupt controller is programmed.
 */
#ifndef GODWIT_GUEST_VIRTIO_H
#define GODWIT_GUEST_VIRTIO_H

#include "guest.h"

#define VIRTIO_ID_NET		1
#define VIRTIO_ID_BLOCK		2

/* Device status bits. */
#define VIRTIO_STATUS_ACK		0x01
#define VIRTIO_STATUS_DRIVER		0x02
#define VIRTIO_STATUS_DRIVER_OK		0x04
#define VIRTIO_STATUS_FEATURES_OK	0x08
#define VIRTIO_STATUS_NEEDS_RESET	0x40
#define VIRTIO_STATUS_FAILED		0x80

#define VIRTIO_F_VERSION_1	32

#define VIRTQ_DESC_F_NEXT	1
#define VIRTQ_DESC_F_WRITE	2

#define VIRTIO_MMIO_MAX		8	/* virtio_mmio.device= entries used */
#define VIRTQ_SIZE_MAX		64	/* ring entries; the rings of a queue fit in 8 KiB */

struct virtq_desc {
	u64 addr;
	u32 len;
	u16 flags;
	u16 next;
};

struct virtq_used_elem {
	u32 id;
	u32 len;
};

/* One virtio-mmio transport found on the command line. */
struct virtio_dev {
	u64 base;		/* MMIO registers */
	u64 size;
	u32 irq;
	u32 version;		/* 2 = virtio 1.x register layout, 1 = legacy */
	u32 device_id;		/* 0: nothing behind this transport */
	bool claimed;		/* a driver has taken it */
	u64 features;		/* negotiated */
};

struct virtq {
	struct virtio_dev *dev;
	u16 index;		/* queue number on the device */
	u16 size;		/* entries */
	u16 free_head;		/* chain of free descriptors through .next */
	u16 nfree;
	u16 last_used;		/* next used ring entry to look at */
	u16 avail_idx;		/* our copy of avail->idx */
	volatile struct virtq_desc *desc;
	volatile u16 *avail;	/* flags, idx, ring[size], used_event */
	volatile u16 *used_hdr;	/* flags, idx */
	volatile struct virtq_used_elem *used;
	u16 chain_len[VIRTQ_SIZE_MAX];	/* descriptors per head, to free a chain */
};

/* One piece of a request: guest-physical = virtual (identity map). */
struct virtq_buf {
	const void *addr;
	u32 len;
	bool device_writes;
};

extern struct virtio_dev virtio_devs[VIRTIO_MMIO_MAX];
extern u32 virtio_ndevs;

/* command line: "<size>@<base>:<irq>"; returns false on a malformed value */
bool virtio_cmdline_add(const char *v);
/* reads each transport's identity and prints one `virtio-mmio` line per device */
void virtio_probe(void);
/* the first unclaimed device with this id, or NULL */
struct virtio_dev *virtio_find(u32 device_id);

/*
 * Reset, ACKNOWLEDGE, DRIVER, feature negotiation (VERSION_1 is added on a v2 transport,
 * and must be accepted: FEATURES_OK is read back). `want` are the features the driver
 * understands; dev->features gets the negotiated set. Errors are printed.
 */
__attribute__((warn_unused_result)) int virtio_init(struct virtio_dev *d, u64 want);
__attribute__((warn_unused_result)) int virtq_setup(struct virtio_dev *d, struct virtq *q,
						    u16 index, u16 size);
void virtio_driver_ok(struct virtio_dev *d);
u32 virtio_status(struct virtio_dev *d);
/* reads and acknowledges InterruptStatus so the device's interrupt line drops */
u32 virtio_irq_ack(struct virtio_dev *d);
/* device config space, byte offset off */
u8 virtio_cfg8(struct virtio_dev *d, u32 off);
u32 virtio_cfg32(struct virtio_dev *d, u32 off);
u64 virtio_cfg64(struct virtio_dev *d, u32 off);
/* a driver's message naming the device: "virtio error: 0xBASE: ..." */
__attribute__((format(printf, 2, 3))) void virtio_error(struct virtio_dev *d, const char *fmt,
							 ...);

/* A chain of n_out device-readable then n_in device-writable buffers. Returns its head. */
__attribute__((warn_unused_result)) int virtq_add(struct virtq *q, const struct virtq_buf *b,
						  u32 n_out, u32 n_in);
void virtq_kick(struct virtq *q);
/* the next completed chain's head (its chain freed), or -1; *len = bytes written */
int virtq_get(struct virtq *q, u32 *len);

/*
 * Wait for head to complete, at most `seconds` of ticks (interrupts must be on); other
 * completions seen meanwhile are dropped. Returns 0 or -ETIMEDOUT.
 */
__attribute__((warn_unused_result)) int virtq_wait(struct virtq *q, int head, u32 seconds,
						   u32 *len);

#endif /* GODWIT_GUEST_VIRTIO_H */
