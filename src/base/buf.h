/* SPDX-License-Identifier: MIT */
/*
 * Byte buffers for state payloads: a growable writer and a bounded reader of explicit
 * little-endian fields. State is never encoded as raw C structs. The reader never reads
 * past its end: once a read would overrun, it sets `bad` and returns zeros, so a decoder
 * checks buf_reader_ok() once at the end instead of after every field.
 */
#ifndef GODWIT_BASE_BUF_H
#define GODWIT_BASE_BUF_H

#include "base/util.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct buf {
	uint8_t *data;
	size_t len;
	size_t cap;
	bool oom; /* an allocation failed; later puts are dropped */
};

void buf_init(struct buf *b);
void buf_free(struct buf *b);
void buf_reset(struct buf *b);
/* 0, or -ENOMEM if any put since init/reset failed to allocate */
int __must_check buf_status(const struct buf *b);
void buf_put_bytes(struct buf *b, const void *p, size_t n);
void buf_put_u8(struct buf *b, uint8_t v);
void buf_put_u16(struct buf *b, uint16_t v);
void buf_put_u32(struct buf *b, uint32_t v);
void buf_put_u64(struct buf *b, uint64_t v);
/* a u32 length followed by the bytes */
void buf_put_blob(struct buf *b, const void *p, uint32_t n);

struct buf_reader {
	const uint8_t *p;
	size_t len;
	size_t pos;
	bool bad;
};

void buf_reader_init(struct buf_reader *r, const void *p, size_t len);
bool buf_reader_ok(const struct buf_reader *r);
/* true if the reader was consumed exactly and never overran */
bool buf_reader_done(const struct buf_reader *r);
size_t buf_reader_left(const struct buf_reader *r);
uint8_t buf_get_u8(struct buf_reader *r);
uint16_t buf_get_u16(struct buf_reader *r);
uint32_t buf_get_u32(struct buf_reader *r);
uint64_t buf_get_u64(struct buf_reader *r);
void buf_get_bytes(struct buf_reader *r, void *out, size_t n);
/* a u32 length then bytes; fails (bad) if the length exceeds max or the data left */
const void *buf_get_blob(struct buf_reader *r, uint32_t max, uint32_t *len);

static inline void le_put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}

static inline void le_put32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
	p[2] = (uint8_t)(v >> 16);
	p[3] = (uint8_t)(v >> 24);
}

static inline void le_put64(uint8_t *p, uint64_t v)
{
	le_put32(p, (uint32_t)v);
	le_put32(p + 4, (uint32_t)(v >> 32));
}

static inline uint32_t le_get32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint64_t le_get64(const uint8_t *p)
{
	return (uint64_t)le_get32(p) | (uint64_t)le_get32(p + 4) << 32;
}

static inline uint16_t le_get16(const uint8_t *p)
{
	return (uint16_t)(p[0] | p[1] << 8);
}

#endif
