/* SPDX-License-Identifier: MIT */
/* The fake guest of device tests: see fake_guest.h. */
#include "fake_guest.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void *fake_guest_translate(void *opaque, uint64_t gpa, uint64_t len)
{
	struct fake_guest *g = opaque;

	if (gpa > g->ram_size || len > g->ram_size - gpa)
		return NULL;
	return g->ram + gpa;
}

static void fake_guest_mark_dirty(void *opaque, uint64_t gpa, uint64_t len)
{
	struct fake_guest *g = opaque;

	if (gpa > g->ram_size || len > g->ram_size - gpa) {
		fprintf(stderr, "fake guest: the device marked [0x%llx, +0x%llx) dirty, outside "
				"RAM\n", (unsigned long long)gpa, (unsigned long long)len);
		abort();
	}
	for (uint64_t pg = gpa / 4096; len && pg <= (gpa + len - 1) / 4096; pg++)
		atomic_fetch_or(&g->dirty[pg / 64], 1ull << (pg % 64));
}

static void fake_guest_irq(void *opaque, unsigned gsi, bool level)
{
	struct fake_guest *g = opaque;

	if (gsi != g->gsi) {
		fprintf(stderr, "fake guest: the device raised GSI %u, it was given %u\n", gsi,
			g->gsi);
		abort();
	}
	atomic_store(&g->irq, level);
}

int fake_guest_init(struct fake_guest *g, uint64_t ram_size, unsigned gsi)
{
	memset(g, 0, sizeof(*g));
	if (ram_size > FAKE_GUEST_RAM_MAX)
		return -EINVAL;
	/* exactly sized, so AddressSanitizer sees an access just past the end */
	g->ram = calloc(1, ram_size);
	if (!g->ram)
		return -ENOMEM;
	g->ram_size = ram_size;
	g->gsi = gsi;
	return 0;
}

void fake_guest_free(struct fake_guest *g)
{
	free(g->ram);
	g->ram = NULL;
}

struct device_env fake_guest_env(struct fake_guest *g, uint64_t mmio_base)
{
	return (struct device_env){ .mem = { g, fake_guest_translate, fake_guest_mark_dirty },
				    .irq = { g, fake_guest_irq, g->gsi },
				    .mmio_base = mmio_base };
}

bool fake_guest_dirty(struct fake_guest *g, uint64_t gpa)
{
	uint64_t pg = gpa / 4096;

	return atomic_load(&g->dirty[pg / 64]) & (1ull << (pg % 64));
}

void fake_guest_reg_write(const struct device_info *d, uint64_t off, uint32_t v)
{
	uint8_t b[4];

	le_put32(b, v);
	d->io_fn(d->dev, off, b, 4, true);
}

uint32_t fake_guest_reg_read(const struct device_info *d, uint64_t off)
{
	uint8_t b[4];

	d->io_fn(d->dev, off, b, 4, false);
	return le_get32(b);
}

void fake_guest_desc_set(struct fake_guest *g, uint64_t desc, unsigned i, uint64_t addr,
			 uint32_t len, uint16_t flags, uint16_t next)
{
	uint8_t *d = g->ram + desc + 16 * i;

	le_put64(d, addr);
	le_put32(d + 8, len);
	d[12] = (uint8_t)flags;
	d[13] = (uint8_t)(flags >> 8);
	d[14] = (uint8_t)next;
	d[15] = (uint8_t)(next >> 8);
}

void fake_guest_avail_push(struct fake_guest *g, uint64_t avail, unsigned qnum,
			   uint16_t *avail_idx, uint16_t head)
{
	uint8_t *ring = g->ram + avail + 4 + 2 * (*avail_idx % qnum);

	ring[0] = (uint8_t)head;
	ring[1] = (uint8_t)(head >> 8);
	(*avail_idx)++;
	/* the entry before the index, as a driver's write barrier orders them */
	__atomic_store_n((uint16_t *)(g->ram + avail + 2), *avail_idx, __ATOMIC_RELEASE);
}

uint16_t fake_guest_used_idx(struct fake_guest *g, uint64_t used)
{
	return __atomic_load_n((uint16_t *)(g->ram + used + 2), __ATOMIC_ACQUIRE);
}

uint32_t fake_guest_used_len(struct fake_guest *g, uint64_t used, unsigned qnum, uint16_t i)
{
	return le_get32(g->ram + used + 4 + 8 * (i % qnum) + 4);
}
