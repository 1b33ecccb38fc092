/* SPDX-License-Identifier: MIT */
/*
 * A fake guest for device tests (the virtio-blk and virtio-net unit tests, the virtio-net
 * fuzz target): RAM is an exactly sized heap block at guest-physical 0 handed to the device
 * through struct dev_mem, whose translation refuses anything outside it and whose dirty
 * marking records pages (and aborts on a range outside RAM: a device bug, not a guest's);
 * the interrupt line is a flag. The driver side (registers, descriptors, rings) is written
 * from the virtio spec; each test chooses its rings' layout and keeps its device. No cmocka
 * here, so the virtio-net fuzz target uses it too.
 */
#ifndef GODWIT_TESTS_FAKE_GUEST_H
#define GODWIT_TESTS_FAKE_GUEST_H

#include "devices/device.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#define FAKE_GUEST_RAM_MAX (1u << 20)

struct fake_guest {
	uint8_t *ram;
	uint64_t ram_size;
	_Atomic uint64_t dirty[FAKE_GUEST_RAM_MAX / 4096 / 64];
	atomic_bool irq;
	unsigned gsi; /* the only line the device may raise */
};

/* Zeroed RAM of ram_size bytes (at most FAKE_GUEST_RAM_MAX); returns 0 or -ENOMEM. */
int __must_check fake_guest_init(struct fake_guest *g, uint64_t ram_size, unsigned gsi);
void fake_guest_free(struct fake_guest *g);
/* The memory and interrupt line a device is created with. */
struct device_env fake_guest_env(struct fake_guest *g, uint64_t mmio_base);
bool fake_guest_dirty(struct fake_guest *g, uint64_t gpa);

/* 32-bit register accesses to a device's MMIO window. */
void fake_guest_reg_write(const struct device_info *d, uint64_t off, uint32_t v);
uint32_t fake_guest_reg_read(const struct device_info *d, uint64_t off);

/* Descriptor i of the table at desc. */
void fake_guest_desc_set(struct fake_guest *g, uint64_t desc, unsigned i, uint64_t addr,
			 uint32_t len, uint16_t flags, uint16_t next);
/* Puts head in the available ring at avail (qnum entries) and publishes it (no notify). */
void fake_guest_avail_push(struct fake_guest *g, uint64_t avail, unsigned qnum,
			   uint16_t *avail_idx, uint16_t head);
uint16_t fake_guest_used_idx(struct fake_guest *g, uint64_t used);
/* The length the device reported in used entry i of the ring at used (qnum entries). */
uint32_t fake_guest_used_len(struct fake_guest *g, uint64_t used, unsigned qnum, uint16_t i);

#endif
