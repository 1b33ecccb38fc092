/* SPDX-License-Identifier: MIT */
/*
 * An i8042 keyboard controller with no keyboard or mouse behind it: enough for Linux to
 * find the controller (self-test, command byte, port tests) and, above all, to reset the
 * machine: a pulse of output line 0 (command 0xfe, Linux's `reboot=k`) or an output-port
 * write with the reset bit clear calls ops->reset. Ports 0x60 (data) and 0x64
 * (status/command). No interrupts: nothing behind it ever sends a byte.
 */
#ifndef GODWIT_DEVICES_I8042_H
#define GODWIT_DEVICES_I8042_H

#include "base/buf.h"
#include "base/util.h"

#include <stddef.h>
#include <stdint.h>

#define I8042_DATA_PORT 0x60
#define I8042_CMD_PORT 0x64
#define I8042_STATE_VERSION 1

struct i8042;

struct i8042_ops {
	/* the guest reset the machine (called on the vCPU thread, device lock not held) */
	void (*reset)(void *opaque);
};

int __must_check i8042_create(struct i8042 **out, const struct i8042_ops *ops, void *opaque);
void i8042_destroy(struct i8042 *k);
/* port is I8042_DATA_PORT or I8042_CMD_PORT */
void i8042_io_write(struct i8042 *k, unsigned port, uint8_t val);
uint8_t i8042_io_read(struct i8042 *k, unsigned port);
int __must_check i8042_state_save(struct i8042 *k, struct buf *out);
/* The checks of i8042_state_load alone: no device is needed or touched. */
int __must_check i8042_state_validate(uint32_t version, const void *p, size_t len,
				      struct errbuf *e);
/* Validates everything first, then applies; on error the device is unchanged. */
int __must_check i8042_state_load(struct i8042 *k, uint32_t version, const void *p, size_t len,
				  struct errbuf *e);

#endif
