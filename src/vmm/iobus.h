/* SPDX-License-Identifier: MIT */
/*
 * Port I/O and MMIO dispatch from vCPU exits to device handlers. Ranges are
 * registered before the vCPUs start and never change while they run, so lookups
 * take no lock. Accesses nobody handles read as all-ones and are logged once per
 * address (rate-limited overall): never fatal.
 */
#ifndef GODWIT_VMM_IOBUS_H
#define GODWIT_VMM_IOBUS_H

#include "base/util.h"

#include <stdbool.h>
#include <stdint.h>

#define IOBUS_MAX_RANGES 16

enum iobus_kind { IOBUS_PIO, IOBUS_MMIO };

/* data holds len (1, 2, 4 or 8) bytes; offset is relative to the range base */
typedef void iobus_handler_fn(void *opaque, uint64_t offset, uint8_t *data, unsigned len,
			      bool is_write);

struct iobus_range {
	uint64_t base;
	uint64_t len;
	iobus_handler_fn *fn;
	void *opaque;
};

struct iobus {
	struct iobus_range ranges[2][IOBUS_MAX_RANGES];
	unsigned n[2];
	/* addresses already reported as unhandled (small, best-effort) */
	uint64_t reported[2][64];
	unsigned nreported[2];
};

int __must_check iobus_register(struct iobus *bus, enum iobus_kind kind, uint64_t base,
				uint64_t len, iobus_handler_fn *fn, void *opaque);
/* Dispatches one access; unhandled reads fill data with 0xff. */
void iobus_access(struct iobus *bus, enum iobus_kind kind, uint64_t addr, uint8_t *data,
		  unsigned len, bool is_write);

#endif
