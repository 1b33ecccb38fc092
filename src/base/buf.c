/* SPDX-License-Identifier: MIT */
/* Growable little-endian writer and bounded reader for state payloads. */
#include "base/buf.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

void buf_init(struct buf *b)
{
	memset(b, 0, sizeof(*b));
}

void buf_free(struct buf *b)
{
	free(b->data);
	buf_init(b);
}

void buf_reset(struct buf *b)
{
	b->len = 0;
	b->oom = false;
}

int buf_status(const struct buf *b)
{
	return b->oom ? -ENOMEM : 0;
}

static bool buf_reserve(struct buf *b, size_t n)
{
	size_t cap;
	uint8_t *p;

	if (b->oom)
		return false;
	if (n > SIZE_MAX - b->len) {
		b->oom = true;
		return false;
	}
	if (b->len + n <= b->cap)
		return true;
	cap = b->cap ? b->cap : 256;
	while (cap < b->len + n)
		cap = cap > SIZE_MAX / 2 ? b->len + n : cap * 2;
	p = realloc(b->data, cap);
	if (!p) {
		b->oom = true;
		return false;
	}
	b->data = p;
	b->cap = cap;
	return true;
}

void buf_put_bytes(struct buf *b, const void *p, size_t n)
{
	if (!n || !buf_reserve(b, n))
		return;
	memcpy(b->data + b->len, p, n);
	b->len += n;
}

void buf_put_u8(struct buf *b, uint8_t v)
{
	buf_put_bytes(b, &v, 1);
}

void buf_put_u16(struct buf *b, uint16_t v)
{
	uint8_t p[2] = { (uint8_t)v, (uint8_t)(v >> 8) };

	buf_put_bytes(b, p, 2);
}

void buf_put_u32(struct buf *b, uint32_t v)
{
	uint8_t p[4];

	le_put32(p, v);
	buf_put_bytes(b, p, 4);
}

void buf_put_u64(struct buf *b, uint64_t v)
{
	uint8_t p[8];

	le_put64(p, v);
	buf_put_bytes(b, p, 8);
}

void buf_put_blob(struct buf *b, const void *p, uint32_t n)
{
	buf_put_u32(b, n);
	buf_put_bytes(b, p, n);
}

void buf_reader_init(struct buf_reader *r, const void *p, size_t len)
{
	r->p = p;
	r->len = len;
	r->pos = 0;
	r->bad = false;
}

bool buf_reader_ok(const struct buf_reader *r)
{
	return !r->bad;
}

bool buf_reader_done(const struct buf_reader *r)
{
	return !r->bad && r->pos == r->len;
}

size_t buf_reader_left(const struct buf_reader *r)
{
	return r->len - r->pos;
}

static const uint8_t *buf_take(struct buf_reader *r, size_t n)
{
	const uint8_t *p;

	if (r->bad || n > r->len - r->pos) {
		r->bad = true;
		return NULL;
	}
	p = r->p + r->pos;
	r->pos += n;
	return p;
}

uint8_t buf_get_u8(struct buf_reader *r)
{
	const uint8_t *p = buf_take(r, 1);

	return p ? p[0] : 0;
}

uint16_t buf_get_u16(struct buf_reader *r)
{
	const uint8_t *p = buf_take(r, 2);

	return p ? le_get16(p) : 0;
}

uint32_t buf_get_u32(struct buf_reader *r)
{
	const uint8_t *p = buf_take(r, 4);

	return p ? le_get32(p) : 0;
}

uint64_t buf_get_u64(struct buf_reader *r)
{
	const uint8_t *p = buf_take(r, 8);

	return p ? le_get64(p) : 0;
}

void buf_get_bytes(struct buf_reader *r, void *out, size_t n)
{
	const uint8_t *p = buf_take(r, n);

	if (p)
		memcpy(out, p, n);
	else if (n)
		memset(out, 0, n);
}

const void *buf_get_blob(struct buf_reader *r, uint32_t max, uint32_t *len)
{
	uint32_t n = buf_get_u32(r);

	*len = 0;
	if (r->bad)
		return NULL;
	if (n > max) {
		r->bad = true;
		return NULL;
	}
	*len = n;
	return buf_take(r, n);
}
