/* SPDX-License-Identifier: MIT */
/*
 * The virtio-mmio transport, virtio 1.x register layout version 2 (virtio spec 4.2.2), shared
 * by every virtio device: a device embeds a struct virtio_mmio, forwards its MMIO window to
 * virtio_mmio_access() and saves the transport's state inside its own section.
 *
 * Threads: vCPU threads access registers; the device's I/O thread walks the queues and raises
 * interrupts. A queue's configuration never changes while it is ready, and a driver reset or
 * a queue being disabled first quiesces the device (through the device's callbacks, outside
 * the transport lock), so the I/O thread can use t->q[] without the lock.
 */
#ifndef GODWIT_DEVICES_VIRTIO_MMIO_H
#define GODWIT_DEVICES_VIRTIO_MMIO_H

#include "devices/device.h"
#include "devices/virtq.h"

#include <pthread.h>

#define VIRTIO_MMIO_SIZE 0x1000u /* the window each device gets (registers + config) */
#define VIRTIO_MMIO_MAX_QUEUES 3u /* virtio-net: receive, transmit, control */
#define VIRTIO_MMIO_CONFIG 0x100u

/* What a virtio device gives its transport. */
struct virtio_mmio_dev {
	uint32_t device_id;
	unsigned nqueues;
	/* reads of the device-specific configuration space (read-only for the driver here) */
	void (*config_read)(void *dev, uint64_t off, uint8_t *data, unsigned len);
	/* a ready queue was notified (vCPU thread): wake the I/O thread, never block */
	void (*notify)(void *dev, unsigned q);
	/* stop and restart the device's I/O around a driver reset or a queue change */
	void (*quiesce)(void *dev);
	void (*resume)(void *dev);
	/*
	 * Optional: the driver reset the device (wrote 0 to Status), quiesced, after the
	 * transport's own reset: the device's configuration goes back to what a new driver
	 * may expect (nothing the old driver was asked to do stays pending).
	 */
	void (*driver_reset)(void *dev);
};

struct virtio_mmio {
	pthread_mutex_t lock;
	const struct virtio_mmio_dev *vd;
	void *dev;
	struct dev_mem mem;
	struct dev_irq irq;
	uint64_t device_features; /* offered; includes VIRTIO_F_VERSION_1 */
	uint64_t driver_features;
	uint32_t device_features_sel, driver_features_sel;
	uint32_t queue_sel;
	uint32_t status;
	uint32_t isr;
	uint32_t config_generation;
	struct virtq q[VIRTIO_MMIO_MAX_QUEUES];
};

void virtio_mmio_init(struct virtio_mmio *t, const struct virtio_mmio_dev *vd, void *dev,
		      const struct device_env *env, uint64_t device_features);
void virtio_mmio_destroy(struct virtio_mmio *t);
/* Register access from a vCPU (offset within the window). */
void virtio_mmio_access(struct virtio_mmio *t, uint64_t off, uint8_t *data, unsigned len,
			bool is_write);
/* Back to power-on state; the device must be quiesced. */
void virtio_mmio_reset(struct virtio_mmio *t);
/* True if queue qi may be walked: driver OK, no reset needed, queue ready. */
bool virtio_mmio_queue_live(struct virtio_mmio *t, unsigned qi);
/* Used buffers were published on queue qi: interrupt unless the driver asked for none. */
void virtio_mmio_used_notify(struct virtio_mmio *t, unsigned qi);
/* The device's configuration changed: a new generation and a configuration interrupt. */
void virtio_mmio_config_notify(struct virtio_mmio *t);
/* The driver broke the protocol: set DEVICE_NEEDS_RESET and tell it (logged once). */
void virtio_mmio_needs_reset(struct virtio_mmio *t, const char *why);

/*
 * Transport state, inside the device's section (little-endian):
 *   u64 device_features, u64 driver_features, u32 device_features_sel,
 *   u32 driver_features_sel, u32 queue_sel, u32 status, u32 isr, u32 config_generation,
 *   u32 nqueues, then per queue: u32 num, u32 ready, u64 desc, u64 avail, u64 used,
 *   u16 next_avail, u16 next_used.
 */
void virtio_mmio_state_save(struct virtio_mmio *t, struct buf *out);
/*
 * Reads and checks a transport state for a device with vd's queues into staged, touching
 * nothing else. Queue areas are checked against mem, unless it is NULL (no guest: inspect).
 * The caller compares staged->device_features with what the device offers.
 */
int __must_check virtio_mmio_state_parse(const struct virtio_mmio_dev *vd,
					 const struct dev_mem *mem, struct buf_reader *r,
					 struct virtio_mmio *staged, struct errbuf *e);
/* Applies a parsed state (the device is quiesced) and sets the interrupt line to match. */
void virtio_mmio_state_apply(struct virtio_mmio *t, const struct virtio_mmio *staged);

#endif
