/* SPDX-License-Identifier: MIT */
/*
 * 16550A UART emulation (8 registers at a base port, FIFOs, DLAB, interrupt
 * identification). Pure emulation: the VMM supplies the output sink and the
 * interrupt line through serial_ops. Thread-safe (vCPU threads write registers,
 * the main thread feeds input).
 */
#ifndef GODWIT_DEVICES_SERIAL_H
#define GODWIT_DEVICES_SERIAL_H

#include "base/buf.h"
#include "base/util.h"
#include "devices/device.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SERIAL_STATE_VERSION 1
#define SERIAL_FIFO_LEN 64

struct serial;

struct serial_ops {
	/* the interrupt output changed level (called with the device lock held: do not re-enter) */
	void (*irq_set)(void *opaque, bool level);
	/* bytes the guest transmitted */
	void (*output)(void *opaque, const uint8_t *p, size_t n);
};

int __must_check serial_create(struct serial **out, const struct serial_ops *ops, void *opaque);
void serial_destroy(struct serial *s);
/* offset is 0..7 from the base port */
void serial_io_write(struct serial *s, unsigned offset, uint8_t val);
uint8_t serial_io_read(struct serial *s, unsigned offset);
/* Host to guest: queues received bytes; returns how many fit in the receive FIFO. */
size_t serial_input(struct serial *s, const uint8_t *p, size_t n);
/* Appends the device state as explicit little-endian fields. */
int __must_check serial_state_save(struct serial *s, struct buf *out);
/* Validates everything first, then applies; on error the device is unchanged. */
int __must_check serial_state_load(struct serial *s, uint32_t version, const void *p, size_t len,
				   struct errbuf *e);

/* The UART in the device model: state section "serial8250", 8 ports from its base. */
extern const struct device_ops serial_device_ops;
dev_io_fn serial_pio;

#endif
