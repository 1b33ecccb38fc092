/* SPDX-License-Identifier: MIT */
/*
 * The device model every device builds on. A device is one file in devices/ holding its
 * emulation and, beside it, its state save/validate/load. The VMM knows a device only
 * through struct device_ops and hands it, when it builds it, what it may touch:
 *   - guest memory (struct dev_mem): bounds-checked translation of guest-physical ranges;
 *     every write a device makes is reported back so the page is marked in the VMM's dirty
 *     bitmap (KVM's dirty log cannot see writes the VMM makes), and live migration sends it;
 *   - an interrupt line (struct dev_irq) by GSI.
 * devices/ never includes vmm/ or kvm/: these two small interfaces are the whole contract.
 */
#ifndef GODWIT_DEVICES_DEVICE_H
#define GODWIT_DEVICES_DEVICE_H

#include "base/buf.h"
#include "base/util.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- what the VMM hands down ---- */

struct dev_mem {
	void *opaque;
	/* Host address of [gpa, gpa + len) if all of it is guest RAM in one region, else NULL. */
	void *(*translate)(void *opaque, uint64_t gpa, uint64_t len);
	/*
	 * The device wrote [gpa, gpa + len): marks those pages dirty. Called after the write,
	 * so a dirty sync that clears the mark has seen the new contents.
	 */
	void (*mark_dirty)(void *opaque, uint64_t gpa, uint64_t len);
};

/* Copies out of / into guest RAM; -EFAULT if any byte is outside it. Writes mark dirty. */
int __must_check dev_mem_read(const struct dev_mem *m, uint64_t gpa, void *p, size_t len);
int __must_check dev_mem_write(const struct dev_mem *m, uint64_t gpa, const void *p, size_t len);

struct dev_irq {
	void *opaque;
	void (*set)(void *opaque, unsigned gsi, bool level);
	unsigned gsi;
};

static inline void dev_irq_set(const struct dev_irq *irq, bool level)
{
	irq->set(irq->opaque, irq->gsi, level);
}

/* ---- what a device gives the VMM ---- */

struct device_stats;

/*
 * Operations, all called from the main thread (or a migration thread) unless noted.
 * Lifecycle: built quiesced; resume() before the guest first runs; at every pause the VMM
 * calls quiesce() after every vCPU is out of KVM_RUN, then may save, and resume() before
 * the vCPUs run again. Optional ops may be NULL.
 */
struct device_ops {
	const char *name; /* its state section's name: "serial8250", "virtio-blk" */
	uint32_t version; /* its state payload version */
	/* Stops taking work and finishes every request already taken (nothing half-done). */
	void (*quiesce)(void *dev);
	/* Takes work again, and looks for work that arrived while quiesced. */
	void (*resume)(void *dev);
	/* Power-on state (a quiesced device). */
	void (*reset)(void *dev);
	/* Appends the state of a quiesced device as explicit little-endian fields. */
	int __must_check (*save)(void *dev, struct buf *out);
	/*
	 * Checks a payload completely against this device without changing anything; with dev
	 * NULL, everything that can be checked without a device and a guest.
	 */
	int __must_check (*validate)(void *dev, uint32_t version, const void *p, size_t len,
				     struct errbuf *e);
	/* Validates, then applies; on error the device is unchanged. */
	int __must_check (*load)(void *dev, uint32_t version, const void *p, size_t len,
				 struct errbuf *e);
	/*
	 * Makes everything the guest wrote durable (a disk's fdatasync) on a quiesced device:
	 * before a snapshot completes and before a migration's COMMIT, which fail if it fails.
	 */
	int __must_check (*flush)(void *dev, struct errbuf *e);
	/* Takes exclusive use of the backend (a disk's lock): before the guest runs here. */
	int __must_check (*claim)(void *dev, struct errbuf *e);
	/* Flushes and gives up the backend: at a migration's COMMIT, on the source. */
	void (*release)(void *dev);
	void (*destroy)(void *dev);
	/* Announcements sent for the guest since it started on this host (a NIC's RARPs). */
	uint64_t (*announced)(void *dev);
	/* Adds its counters to out (any thread, any time: `status`). */
	void (*stats)(void *dev, struct device_stats *out);
};

typedef void dev_io_fn(void *dev, uint64_t offset, uint8_t *data, unsigned len, bool is_write);

enum dev_io_kind { DEV_IO_PIO, DEV_IO_MMIO };

/* A built device: its ops, its I/O window and the section instance its state is saved as. */
struct device_info {
	const struct device_ops *ops;
	void *dev;
	enum dev_io_kind io_kind;
	uint64_t io_base, io_len;
	dev_io_fn *io_fn;
	char instance[64];
	bool virtio_mmio; /* announce it on the kernel command line (virtio_mmio.device=) */
	/*
	 * A doorbell the VMM may wire to an eventfd in the kernel (KVM ioeventfd): a guest
	 * write of 4 bytes at io_base + notify_offset then signals notify_fd without leaving
	 * the kernel. -1 for none; the device handles the register itself either way.
	 */
	int notify_fd;
	uint64_t notify_offset;
};

/* ---- configurable devices: `--disk ...` and the device list in CONFIG ---- */

#define DEV_TYPE_MAX 31
#define DEV_ID_MAX 31
#define DEV_PATH_MAX 4095
#define DEV_MAX 8 /* configurable devices per VM (IOAPIC pins 16..23), disks and NICs */

/*
 * How a disk does its file I/O (`--disk aio=`): a choice of this host, not part of the
 * guest's state (CONFIG does not carry it; `--disk-override id=,aio=` sets it on restore
 * and incoming). DEFAULT: the device's own default.
 */
enum dev_aio { DEV_AIO_DEFAULT, DEV_AIO_THREAD, DEV_AIO_URING };

struct device_spec {
	char type[DEV_TYPE_MAX + 1]; /* "virtio-blk" */
	char id[DEV_ID_MAX + 1];     /* letters, digits, '-', '_' */
	char path[DEV_PATH_MAX + 1]; /* the backend */
	bool readonly;
	/* the backend's size the guest was given (restore, incoming); 0: whatever it is now */
	uint64_t size;
	uint8_t mac[6]; /* a NIC's address, if mac_set (else one derived from id and path) */
	bool mac_set;
	enum dev_aio aio; /* a disk's */
};

/*
 * What `status` shows of a configurable device, as plain C (api/ makes it JSON): the spec
 * it was built from, then what its stats op counts since it was built on this host.
 */
struct device_stats {
	struct device_spec spec; /* type, id, backend path (a NIC's tap), readonly, size, mac */
	bool locked;		 /* holds its backend's lock */
	/* a disk's requests */
	uint64_t reads, writes, flushes, others; /* others: GET_ID, DISCARD, WRITE_ZEROES */
	uint64_t bytes_read, bytes_written;
	uint64_t errors;	/* completed with a status other than OK */
	/*
	 * The device's own cost: summed nanoseconds from the I/O thread taking a request off
	 * the ring to its used entry published, and the I/O thread's CPU time.
	 */
	uint64_t service_ns, cpu_ns;
	uint64_t notifies;	/* queue notifications the guest made (doorbell writes) */
	const char *aio;	/* how its I/O is done ("thread", "uring"); NULL: not a disk */
};

/*
 * `--disk-override id=NAME,path=FILE`, `--net-override id=NAME,tap=TAP`: device NAME's
 * backend is FILE (TAP) on this host. type: the device type it must name (NULL: any).
 */
struct device_override {
	const char *id;
	const char *path; /* NULL: the backend CONFIG names */
	const char *type;
	enum dev_aio aio; /* a disk's I/O on this host */
};

/* What the VMM gives a configurable device it builds. */
struct device_env {
	struct dev_mem mem;
	struct dev_irq irq;
	uint64_t mmio_base;
};

struct device_type {
	const char *name;
	/* its ops; validate takes dev == NULL to check a payload alone (inspect) */
	const struct device_ops *ops;
	uint64_t mmio_len;
	/* Opens the backend (without claiming it) and builds the device, quiesced. */
	int __must_check (*create)(const struct device_spec *spec, const struct device_env *env,
				   struct device_info *out, struct errbuf *e);
	/* The spec a running device would be rebuilt from (its size now, its path). */
	void (*spec_get)(void *dev, struct device_spec *out);
};

/* NULL if this build has no such device type. */
const struct device_type *device_type_find(const char *name);
/* An id is 1..31 letters, digits, '-' or '_'. */
bool device_id_valid(const char *id);

#endif
