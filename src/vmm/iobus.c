/* SPDX-License-Identifier: MIT */
/* Port I/O and MMIO dispatch with once-per-address reporting of unhandled accesses. */
#include "vmm/iobus.h"
#include "base/log.h"

#include <errno.h>
#include <pthread.h>
#include <string.h>

int iobus_register(struct iobus *bus, enum iobus_kind kind, uint64_t base, uint64_t len,
		   iobus_handler_fn *fn, void *opaque)
{
	if (bus->n[kind] >= IOBUS_MAX_RANGES || !len || base + len < base)
		return -EINVAL;
	for (unsigned i = 0; i < bus->n[kind]; i++) {
		struct iobus_range *r = &bus->ranges[kind][i];

		if (base < r->base + r->len && r->base < base + len)
			return -EEXIST;
	}
	bus->ranges[kind][bus->n[kind]++] = (struct iobus_range){ base, len, fn, opaque };
	return 0;
}

static void iobus_unhandled(struct iobus *bus, enum iobus_kind kind, uint64_t addr,
			    unsigned len, bool is_write, const uint8_t *data)
{
	static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
	static struct log_ratelimit rl = LOG_RATELIMIT_INIT(1000, 10);
	uint32_t suppressed;
	bool seen = false;

	pthread_mutex_lock(&lock);
	for (unsigned i = 0; i < bus->nreported[kind]; i++)
		if (bus->reported[kind][i] == addr)
			seen = true;
	if (!seen && bus->nreported[kind] < ARRAY_SIZE(bus->reported[kind]))
		bus->reported[kind][bus->nreported[kind]++] = addr;
	pthread_mutex_unlock(&lock);
	if (seen || !log_ratelimit_allow(&rl, &suppressed))
		return;
	if (is_write) {
		uint64_t v = 0;

		memcpy(&v, data, MIN(len, sizeof(v)));
		log_warn("unhandled %s write at 0x%llx (%u bytes, value 0x%llx)%s",
			 kind == IOBUS_PIO ? "port" : "mmio", (unsigned long long)addr, len,
			 (unsigned long long)v, " (reported once)");
	} else {
		log_warn("unhandled %s read at 0x%llx (%u bytes) (reported once)",
			 kind == IOBUS_PIO ? "port" : "mmio", (unsigned long long)addr, len);
	}
}

void iobus_access(struct iobus *bus, enum iobus_kind kind, uint64_t addr, uint8_t *data,
		  unsigned len, bool is_write)
{
	for (unsigned i = 0; i < bus->n[kind]; i++) {
		struct iobus_range *r = &bus->ranges[kind][i];

		if (addr >= r->base && addr - r->base < r->len) {
			r->fn(r->opaque, addr - r->base, data, len, is_write);
			return;
		}
	}
	if (!is_write)
		memset(data, 0xff, len);
	iobus_unhandled(bus, kind, addr, len, is_write, data);
}
