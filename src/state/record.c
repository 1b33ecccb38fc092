/* SPDX-License-Identifier: MIT */
/* Record framing: the stream reader (fd or memory, hostile input) and the buffered writer. */
#include "state/record.h"

#include "base/channel.h"
#include "base/crc32c.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
#include <zstd.h>

/* Records up to this size are gathered in the output buffer, larger ones go out directly. */
#define WRITER_COPY_MAX (64u * 1024)
/* The output buffer is flushed once it holds this much. */
#define WRITER_FLUSH_AT (256u * 1024)

static void record_header_encode(uint8_t h[STATE_RECORD_HEADER_SIZE], uint32_t type,
				 uint64_t len)
{
	le_put32(h, type);
	le_put64(h + 4, len);
	le_put32(h + 12, crc32c(0, h, 12));
}

static bool type_is_known(uint32_t type)
{
	return type >= STATE_REC_CONFIG && type <= STATE_REC_END;
}

/* ---- reader ---- */

struct state_reader {
	struct channel *ch; /* NULL for a memory reader */
	struct channel own_ch; /* state_reader_open_fd's */
	const uint8_t *mem;
	size_t mem_len;
	uint64_t pos;
	uint64_t max_record;
	uint32_t kind;
	bool allow_control;
	bool keep_going;
	struct state_header hdr;
	uint8_t *buf; /* fd readers: the current record's payload and trailer */
	size_t cap;
	uint64_t index;
	bool seen_config;
	bool ended;
	bool failed;
};

/* Reads up to len bytes; *got says how many arrived. -EPIPE if the stream ended first. */
static int reader_fill(struct state_reader *r, uint8_t *dst, size_t len, size_t *got)
{
	*got = 0;
	while (*got < len) {
		ssize_t n = channel_read(r->ch, dst + *got, len - *got);

		if (n < 0)
			return (int)n;
		if (n == 0)
			return -EPIPE;
		*got += (size_t)n;
	}
	return 0;
}

/*
 * Makes len bytes of the stream available at *out, advancing the position. For memory
 * readers this is a pointer into the buffer; for fd readers the bytes land in dst.
 */
static int reader_take(struct state_reader *r, uint8_t *dst, size_t len, const uint8_t **out,
		       size_t *got)
{
	int ret;

	if (!r->ch) {
		size_t left = r->mem_len - (size_t)r->pos;

		*out = r->mem + r->pos;
		if (left < len) {
			*got = left;
			return -EPIPE;
		}
		*got = len;
		r->pos += len;
		return 0;
	}
	ret = reader_fill(r, dst, len, got);
	r->pos += *got;
	*out = dst;
	return ret;
}

static void reader_opts_apply(struct state_reader *r, const struct state_reader_opts *o)
{
	r->max_record = STATE_RECORD_MAX;
	if (!o)
		return;
	if (o->max_record && o->max_record < STATE_RECORD_MAX)
		r->max_record = o->max_record;
	r->kind = o->kind;
	r->allow_control = o->allow_control;
	r->seen_config = o->config_elsewhere;
	r->keep_going = o->keep_going;
}

static int reader_start(struct state_reader *r, struct errbuf *e)
{
	uint8_t raw[STATE_HEADER_SIZE];
	const uint8_t *p = raw;
	size_t got;
	int ret;

	ret = reader_take(r, raw, sizeof(raw), &p, &got);
	if (ret && ret != -EPIPE)
		return err_set(e, ret, "read stream header: %s", strerror(-ret));
	if (got == 0)
		return err_set(e, -EPIPE, "stream is empty (no header)");
	ret = state_header_decode(p, got, &r->hdr, e);
	if (ret)
		return ret;
	if (r->kind && r->hdr.kind != r->kind)
		return err_set(e, -EPROTO, "stream is a %s, expected a %s",
			       r->hdr.kind == STATE_KIND_SNAPSHOT ? "snapshot state file"
								  : "migration stream",
			       r->kind == STATE_KIND_SNAPSHOT ? "snapshot state file"
							      : "migration stream");
	return 0;
}

static int reader_open(struct state_reader **rp, struct state_reader *r,
		       const struct state_reader_opts *opts, struct errbuf *e)
{
	int ret;

	reader_opts_apply(r, opts);
	ret = reader_start(r, e);
	if (ret) {
		free(r);
		return ret;
	}
	*rp = r;
	return 0;
}

int state_reader_open_fd(struct state_reader **rp, int fd, const struct state_reader_opts *opts,
			 struct errbuf *e)
{
	struct state_reader *r = calloc(1, sizeof(*r));

	*rp = NULL;
	if (!r)
		return err_set(e, -ENOMEM, "stream reader: out of memory");
	channel_fd_init(&r->own_ch, fd);
	r->ch = &r->own_ch;
	return reader_open(rp, r, opts, e);
}

int state_reader_open_channel(struct state_reader **rp, struct channel *ch,
			      const struct state_reader_opts *opts, struct errbuf *e)
{
	struct state_reader *r = calloc(1, sizeof(*r));

	*rp = NULL;
	if (!r)
		return err_set(e, -ENOMEM, "stream reader: out of memory");
	r->ch = ch;
	return reader_open(rp, r, opts, e);
}

int state_reader_open_mem(struct state_reader **rp, const void *p, size_t len,
			  const struct state_reader_opts *opts, struct errbuf *e)
{
	struct state_reader *r = calloc(1, sizeof(*r));

	*rp = NULL;
	if (!r)
		return err_set(e, -ENOMEM, "stream reader: out of memory");
	r->mem = p;
	r->mem_len = p ? len : 0;
	return reader_open(rp, r, opts, e);
}

const struct state_header *state_reader_header(const struct state_reader *r)
{
	return &r->hdr;
}

bool state_reader_ended(const struct state_reader *r)
{
	return r->ended;
}

bool state_reader_failed(const struct state_reader *r)
{
	return r->failed;
}

uint64_t state_reader_offset(const struct state_reader *r)
{
	return r->pos;
}

void state_reader_free(struct state_reader *r)
{
	if (!r)
		return;
	free(r->buf);
	free(r);
}

static int reader_grow(struct state_reader *r, size_t need)
{
	uint8_t *p;
	size_t cap;

	if (need <= r->cap)
		return 0;
	cap = r->cap ? r->cap : 4096;
	while (cap < need)
		cap *= 2;
	p = realloc(r->buf, cap);
	if (!p)
		return -ENOMEM;
	r->buf = p;
	r->cap = cap;
	return 0;
}

/* Hard failure: the reader cannot go on. */
static int reader_fail(struct state_reader *r, int ret)
{
	r->failed = true;
	return ret;
}

/* A problem with one record whose framing is sound: with keep_going, reading may go on. */
static int reader_soft(struct state_reader *r, int ret)
{
	if (!r->keep_going)
		r->failed = true;
	return ret;
}

/* Stream order rules, checked once the record's type is trusted. */
static int reader_check_order(struct state_reader *r, const struct state_record *rec,
			      struct errbuf *e)
{
	const char *tn = state_record_type_name(rec->type);

	if (state_record_type_is_control(rec->type))
		return 0;
	if (rec->type == STATE_REC_CONFIG) {
		if (r->seen_config)
			return err_set(e, -EPROTO,
				       "record %" PRIu64 " (CONFIG) at offset %" PRIu64
				       ": a second CONFIG record",
				       rec->index, rec->offset);
		r->seen_config = true;
		return 0;
	}
	if (!r->seen_config)
		return err_set(e, -EPROTO,
			       "record %" PRIu64 " (%s) at offset %" PRIu64
			       ": comes before the CONFIG record",
			       rec->index, tn, rec->offset);
	if (rec->type == STATE_REC_PAGES && r->hdr.kind == STATE_KIND_SNAPSHOT)
		return err_set(e, -EPROTO,
			       "record %" PRIu64 " (PAGES) at offset %" PRIu64
			       ": PAGES records do not belong in a snapshot state file",
			       rec->index, rec->offset);
	return 0;
}

static int reader_bad_type(struct state_reader *r, const struct state_record *rec,
			   struct errbuf *e)
{
	if (state_record_type_is_control(rec->type))
		return reader_soft(r, err_set(e, -EPROTO,
					      "record %" PRIu64 " at offset %" PRIu64
					      ": control record 0x%" PRIx32 " is not expected here",
					      rec->index, rec->offset, rec->type));
	return reader_soft(r, err_set(e, -EBADMSG,
				      "record %" PRIu64 " at offset %" PRIu64
				      ": unknown record type 0x%" PRIx32,
				      rec->index, rec->offset, rec->type));
}

int state_reader_next(struct state_reader *r, struct state_record *rec, struct errbuf *e)
{
	uint8_t hraw[STATE_RECORD_HEADER_SIZE];
	const uint8_t *h = hraw, *body = NULL;
	uint32_t stored, computed;
	uint64_t len;
	size_t got;
	int ret;

	memset(rec, 0, sizeof(*rec));
	if (r->failed)
		return err_set(e, -EIO, "stream reader stopped after an earlier error");
	if (r->ended)
		return err_set(e, -EPROTO, "no records after END");
	rec->index = r->index;
	rec->offset = r->pos;

	ret = reader_take(r, hraw, sizeof(hraw), &h, &got);
	if (ret == -EPIPE && got == 0)
		return reader_fail(r, err_set(e, -EPIPE,
					      "stream ends after %" PRIu64
					      " records at offset %" PRIu64
					      " without an END record (truncated)",
					      rec->index, rec->offset));
	if (ret == -EPIPE)
		return reader_fail(r, err_set(e, -EPIPE,
					      "record %" PRIu64 " at offset %" PRIu64
					      ": truncated inside the record header (%zu of %u bytes)",
					      rec->index, rec->offset, got,
					      STATE_RECORD_HEADER_SIZE));
	if (ret)
		return reader_fail(r, err_set(e, ret,
					      "record %" PRIu64 " at offset %" PRIu64 ": read: %s",
					      rec->index, rec->offset, strerror(-ret)));
	stored = le_get32(h + 12);
	computed = crc32c(0, h, 12);
	if (stored != computed)
		return reader_fail(r, err_set(e, -EBADMSG,
					      "record %" PRIu64 " at offset %" PRIu64
					      ": record header CRC mismatch (stored 0x%08" PRIx32
					      ", computed 0x%08" PRIx32 ")",
					      rec->index, rec->offset, stored, computed));
	rec->type = le_get32(h);
	len = le_get64(h + 4);
	rec->len = len;
	if (len > r->max_record)
		return reader_fail(r, err_set(e, -EFBIG,
					      "record %" PRIu64 " (%s) at offset %" PRIu64
					      ": length %" PRIu64 " exceeds the limit of %" PRIu64
					      " bytes",
					      rec->index, state_record_type_name(rec->type),
					      rec->offset, len, r->max_record));
	if (!r->keep_going && !type_is_known(rec->type) &&
	    !(r->allow_control && state_record_type_is_control(rec->type)))
		return reader_bad_type(r, rec, e); /* before waiting for a payload */
	computed = crc32c(0, h, STATE_RECORD_HEADER_SIZE);

	if (r->ch && reader_grow(r, (size_t)len + STATE_RECORD_TRAILER_SIZE))
		return reader_fail(r, err_set(e, -ENOMEM,
					      "record %" PRIu64 " at offset %" PRIu64
					      ": out of memory for %" PRIu64 " bytes",
					      rec->index, rec->offset, len));
	ret = reader_take(r, r->buf, (size_t)len + STATE_RECORD_TRAILER_SIZE, &body, &got);
	if (ret == -EPIPE)
		return reader_fail(r, err_set(e, -EPIPE,
					      "record %" PRIu64 " (%s) at offset %" PRIu64
					      ": truncated (%zu of %" PRIu64 " payload+CRC bytes)",
					      rec->index, state_record_type_name(rec->type),
					      rec->offset, got, len + STATE_RECORD_TRAILER_SIZE));
	if (ret)
		return reader_fail(r, err_set(e, ret,
					      "record %" PRIu64 " at offset %" PRIu64 ": read: %s",
					      rec->index, rec->offset, strerror(-ret)));
	r->index++;
	rec->payload = body;
	rec->crc_stored = le_get32(body + len);
	rec->crc_computed = crc32c(computed, body, (size_t)len);
	rec->crc_ok = rec->crc_stored == rec->crc_computed;

	if (!type_is_known(rec->type) &&
	    !(r->allow_control && state_record_type_is_control(rec->type)))
		return reader_bad_type(r, rec, e);
	if (!rec->crc_ok && !r->keep_going)
		return reader_fail(r, err_set(e, -EBADMSG,
					      "record %" PRIu64 " (%s) at offset %" PRIu64
					      ": CRC mismatch (stored 0x%08" PRIx32
					      ", computed 0x%08" PRIx32 ")",
					      rec->index, state_record_type_name(rec->type),
					      rec->offset, rec->crc_stored, rec->crc_computed));
	if (rec->type == STATE_REC_END)
		r->ended = true;
	ret = reader_check_order(r, rec, e);
	if (ret)
		return reader_soft(r, ret);
	if (rec->type == STATE_REC_END) {
		uint64_t n = 0;

		if (!rec->crc_ok)
			return 0;
		ret = state_end_decode(rec->payload, (size_t)rec->len, &n, e);
		if (ret)
			return reader_fail(r, err_prefix(e, ret,
							 "record %" PRIu64 " (END) at offset %" PRIu64,
							 rec->index, rec->offset));
		if (n != rec->index)
			return reader_fail(r, err_set(e, -EBADMSG,
						      "record %" PRIu64 " (END) at offset %" PRIu64
						      ": END counts %" PRIu64
						      " records before it, the stream had %" PRIu64,
						      rec->index, rec->offset, n, rec->index));
	}
	return 0;
}

int state_reader_expect_eof(struct state_reader *r, struct errbuf *e)
{
	uint8_t c;
	ssize_t n;

	if (!r->ch) {
		if (r->pos == r->mem_len)
			return 0;
		return err_set(e, -EBADMSG, "%zu unexpected bytes after END at offset %" PRIu64,
			       r->mem_len - (size_t)r->pos, r->pos);
	}
	n = channel_read(r->ch, &c, 1);
	if (n < 0)
		return err_set(e, (int)n, "read after END: %s", strerror((int)-n));
	if (n > 0)
		return err_set(e, -EBADMSG, "unexpected bytes after END at offset %" PRIu64,
			       r->pos);
	return 0;
}

/* ---- writer ---- */

struct state_writer {
	struct channel *ch;
	struct channel own_ch; /* state_writer_open's */
	uint32_t kind;
	struct buf out;
	struct buf scratch;
	struct iovec *iov; /* for PAGES batches: STATE_PAGES_MAX + 4 entries */
	ZSTD_CCtx *cctx;   /* with state_writer_compress() */
	uint8_t *zraw;     /* a stable batch's data gathered for the compressor */
	uint8_t *zout;     /* ZSTD_compressBound(STATE_PAGES_MAX pages) bytes */
	size_t zout_cap;
	struct state_zstats zs;
	uint64_t flushed;
	uint64_t nr_records;
	bool seen_config;
	bool ended;
	bool failed;
};

/* Writes all of iov, however many entries and however short the kernel's writes. */
static int writer_writev(struct state_writer *w, struct iovec *iov, size_t n)
{
	while (n) {
		size_t chunk = MIN(n, (size_t)IOV_MAX);
		ssize_t done;

		if (iov->iov_len == 0) {
			iov++;
			n--;
			continue;
		}
		done = channel_writev(w->ch, iov, (int)chunk);
		if (done < 0)
			return (int)done;
		w->flushed += (uint64_t)done;
		while (n && (size_t)done >= iov->iov_len) {
			done -= (ssize_t)iov->iov_len;
			iov++;
			n--;
		}
		if (n && done) {
			iov->iov_base = (uint8_t *)iov->iov_base + done;
			iov->iov_len -= (size_t)done;
		}
	}
	return 0;
}

static int writer_fail(struct state_writer *w, int ret, struct errbuf *e)
{
	w->failed = true;
	return err_set(e, ret, "write state stream at offset %" PRIu64 ": %s", w->flushed,
		       strerror(-ret));
}

int state_writer_flush(struct state_writer *w, struct errbuf *e)
{
	struct iovec iov = { .iov_base = w->out.data, .iov_len = w->out.len };
	int ret;

	if (w->failed)
		return err_set(e, -EIO, "state stream writer failed earlier");
	ret = writer_writev(w, &iov, 1);
	if (ret)
		return writer_fail(w, ret, e);
	buf_reset(&w->out);
	return 0;
}

static int writer_open(struct state_writer **wp, struct channel *ch, int fd, uint32_t kind,
		       struct errbuf *e)
{
	struct state_header h = { .version = STATE_FORMAT_VERSION,
				  .page_size = STATE_PAGE_SIZE,
				  .kind = kind };
	uint8_t raw[STATE_HEADER_SIZE];
	struct state_writer *w;
	struct stat st;

	*wp = NULL;
	if (kind != STATE_KIND_SNAPSHOT && kind != STATE_KIND_MIGRATION)
		return err_set(e, -EINVAL, "state writer: unknown stream kind %" PRIu32, kind);
	if (!ch && fstat(fd, &st) < 0)
		return err_set(e, -errno, "state writer: fstat: %s", strerror(errno));
	w = calloc(1, sizeof(*w));
	if (!w)
		return err_set(e, -ENOMEM, "state writer: out of memory");
	if (!ch) {
		channel_fd_init(&w->own_ch, fd);
		ch = &w->own_ch;
	}
	w->ch = ch;
	w->kind = kind;
	buf_init(&w->out);
	buf_init(&w->scratch);
	state_header_encode(&h, raw);
	buf_put_bytes(&w->out, raw, sizeof(raw));
	if (buf_status(&w->out)) {
		state_writer_free(w);
		return err_set(e, -ENOMEM, "state writer: out of memory");
	}
	*wp = w;
	return 0;
}

int state_writer_open(struct state_writer **wp, int fd, uint32_t kind, struct errbuf *e)
{
	return writer_open(wp, NULL, fd, kind, e);
}

int state_writer_open_channel(struct state_writer **wp, struct channel *ch, uint32_t kind,
			      struct errbuf *e)
{
	return writer_open(wp, ch, -1, kind, e);
}

void state_writer_free(struct state_writer *w)
{
	if (!w)
		return;
	buf_free(&w->out);
	buf_free(&w->scratch);
	free(w->iov);
	ZSTD_freeCCtx(w->cctx);
	free(w->zraw);
	free(w->zout);
	free(w);
}

int state_writer_compress(struct state_writer *w, int level, struct errbuf *e)
{
	size_t raw = (size_t)STATE_PAGES_MAX * STATE_PAGE_SIZE;

	if (level < STATE_ZSTD_LEVEL_MIN || level > STATE_ZSTD_LEVEL_MAX)
		return err_set(e, -EINVAL, "state writer: zstd level %d (allowed %d..%d)", level,
			       STATE_ZSTD_LEVEL_MIN, STATE_ZSTD_LEVEL_MAX);
	if (!w->cctx) {
		w->cctx = ZSTD_createCCtx();
		w->zraw = malloc(raw);
		w->zout_cap = ZSTD_compressBound(raw);
		w->zout = malloc(w->zout_cap);
		if (!w->cctx || !w->zraw || !w->zout)
			return err_set(e, -ENOMEM, "state writer: out of memory for compression");
	}
	/* no checksum: the record CRC covers the frame; the content size lets readers check */
	if (ZSTD_isError(ZSTD_CCtx_setParameter(w->cctx, ZSTD_c_compressionLevel, level)) ||
	    ZSTD_isError(ZSTD_CCtx_setParameter(w->cctx, ZSTD_c_checksumFlag, 0)) ||
	    ZSTD_isError(ZSTD_CCtx_setParameter(w->cctx, ZSTD_c_contentSizeFlag, 1)))
		return err_set(e, -EINVAL, "state writer: zstd refused level %d", level);
	return 0;
}

void state_writer_zstats(const struct state_writer *w, struct state_zstats *zs)
{
	*zs = w->zs;
}

static uint64_t writer_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/*
 * Compresses a batch's data (raw, len bytes) into w->zout; returns the frame's length,
 * or 0 when it would not be shorter (the batch then goes raw).
 */
static size_t writer_compress(struct state_writer *w, const void *raw, size_t len)
{
	uint64_t t0 = writer_now_ns();
	size_t out;

	out = ZSTD_compress2(w->cctx, w->zout, w->zout_cap, raw, len);
	w->zs.ns += writer_now_ns() - t0;
	w->zs.batches++;
	w->zs.raw_bytes += len;
	if (ZSTD_isError(out) || out >= len) {
		w->zs.out_bytes += len;
		return 0;
	}
	w->zs.shrunk++;
	w->zs.out_bytes += out;
	return out;
}

uint64_t state_writer_bytes(const struct state_writer *w)
{
	return w->flushed + w->out.len;
}

uint64_t state_writer_bytes_flushed(const struct state_writer *w)
{
	return w->flushed;
}

static int writer_check_order(struct state_writer *w, uint32_t type, struct errbuf *e)
{
	if (w->failed)
		return err_set(e, -EIO, "state stream writer failed earlier");
	if (w->ended)
		return err_set(e, -EPROTO, "state writer: %s record after END",
			       state_record_type_name(type));
	if (!type_is_known(type) && !state_record_type_is_control(type))
		return err_set(e, -EINVAL, "state writer: unknown record type 0x%" PRIx32, type);
	if (state_record_type_is_control(type))
		return 0;
	if (type == STATE_REC_CONFIG) {
		if (w->seen_config)
			return err_set(e, -EPROTO, "state writer: a second CONFIG record");
		return 0;
	}
	if (!w->seen_config)
		return err_set(e, -EPROTO, "state writer: %s record before CONFIG",
			       state_record_type_name(type));
	if (type == STATE_REC_PAGES && w->kind == STATE_KIND_SNAPSHOT)
		return err_set(e, -EPROTO, "state writer: PAGES records do not belong in a snapshot");
	return 0;
}

/*
 * Frames a record whose payload is the concatenation of parts (the caller leaves parts[0]
 * and parts[n + 1] free for the record header and trailer). Small records are appended to
 * the output buffer; large ones are written with the buffer in one writev.
 */
static int writer_emit(struct state_writer *w, uint32_t type, struct iovec *parts, size_t n,
		       struct errbuf *e)
{
	uint8_t hdr[STATE_RECORD_HEADER_SIZE], trailer[STATE_RECORD_TRAILER_SIZE];
	uint64_t len = 0;
	uint32_t crc;
	int ret;

	ret = writer_check_order(w, type, e);
	if (ret)
		return ret;
	for (size_t i = 1; i <= n; i++)
		len += parts[i].iov_len;
	if (len > STATE_RECORD_MAX)
		return err_set(e, -EFBIG, "state writer: %s record of %" PRIu64 " bytes is too large",
			       state_record_type_name(type), len);
	record_header_encode(hdr, type, len);
	crc = crc32c(0, hdr, sizeof(hdr));
	for (size_t i = 1; i <= n; i++)
		crc = crc32c(crc, parts[i].iov_base, parts[i].iov_len);
	le_put32(trailer, crc);
	parts[0].iov_base = hdr;
	parts[0].iov_len = sizeof(hdr);
	parts[n + 1].iov_base = trailer;
	parts[n + 1].iov_len = sizeof(trailer);

	if (len <= WRITER_COPY_MAX) {
		for (size_t i = 0; i <= n + 1; i++)
			buf_put_bytes(&w->out, parts[i].iov_base, parts[i].iov_len);
		if (buf_status(&w->out)) {
			w->failed = true;
			return err_set(e, -ENOMEM, "state writer: out of memory");
		}
	} else {
		/* parts[-1] is reserved by callers for the pending output buffer */
		parts[-1].iov_base = w->out.data;
		parts[-1].iov_len = w->out.len;
		ret = writer_writev(w, parts - 1, n + 3);
		if (ret)
			return writer_fail(w, ret, e);
		buf_reset(&w->out);
	}
	w->nr_records++;
	if (type == STATE_REC_CONFIG)
		w->seen_config = true;
	if (type == STATE_REC_END)
		w->ended = true;
	if (w->out.len >= WRITER_FLUSH_AT)
		return state_writer_flush(w, e);
	return 0;
}

void state_writer_config_elsewhere(struct state_writer *w)
{
	w->seen_config = true;
}

int state_writer_record(struct state_writer *w, uint32_t type, const void *payload, size_t len,
			struct errbuf *e)
{
	struct iovec iov[4] = { [2] = { .iov_base = (void *)payload, .iov_len = len } };

	return writer_emit(w, type, iov + 1, 1, e);
}

int state_writer_config(struct state_writer *w, const struct state_config *cfg,
			struct errbuf *e)
{
	int ret;

	buf_reset(&w->scratch);
	ret = state_config_encode(cfg, &w->scratch, e);
	if (ret)
		return ret;
	return state_writer_record(w, STATE_REC_CONFIG, w->scratch.data, w->scratch.len, e);
}

int state_writer_section(struct state_writer *w, const char *name, const char *instance,
			 uint32_t version, const void *data, size_t len, struct errbuf *e)
{
	int ret;

	buf_reset(&w->scratch);
	ret = state_section_encode(&w->scratch, name, instance, version, data, len, e);
	if (ret)
		return ret;
	return state_writer_record(w, STATE_REC_SECTION, w->scratch.data, w->scratch.len, e);
}

/* The PAGES iovec array (pending output, header, descriptors, pages, trailer), allocated once. */
static __must_check int writer_iov_get(struct state_writer *w, struct iovec **iov,
					  struct errbuf *e)
{
	if (!w->iov) {
		w->iov = calloc(STATE_PAGES_MAX + 4, sizeof(*w->iov));
		if (!w->iov)
			return err_set(e, -ENOMEM, "state writer: out of memory");
	}
	*iov = w->iov;
	return 0;
}

/* A page's data length in a batch: none for a zero page, the delta's or a whole page. */
static size_t writer_page_len(const struct state_page *pg)
{
	return !pg->data ? 0 : pg->delta ? pg->delta_len : STATE_PAGE_SIZE;
}

int state_writer_pages(struct state_writer *w, const struct state_page *pages, uint32_t count,
		       unsigned flags, struct errbuf *e)
{
	bool stable = flags & STATE_PAGES_STABLE;
	bool compress = (flags & STATE_PAGES_COMPRESS) && w->cctx;
	bool delta = false;
	size_t n = 1, desc_end, zlen = 0, data_len = 0;
	struct iovec *iov = NULL;
	int ret;

	if (count < 1 || count > STATE_PAGES_MAX)
		return err_set(e, -EINVAL, "state writer: batch of %" PRIu32 " pages (allowed 1..%u)",
			       count, STATE_PAGES_MAX);
	for (uint32_t i = 0; i < count; i++) {
		if (pages[i].delta && (!pages[i].data || pages[i].delta_len >= STATE_PAGE_SIZE))
			return err_set(e, -EINVAL, "state writer: a delta of %" PRIu32 " bytes for "
				       "page 0x%" PRIx64, pages[i].delta_len, pages[i].gpa);
		delta |= pages[i].delta;
	}
	buf_reset(&w->scratch);
	buf_put_u32(&w->scratch, count);
	buf_put_u32(&w->scratch, delta ? STATE_PAGES_F_DELTA : 0);
	for (uint32_t i = 0; i < count; i++) {
		if (pages[i].gpa & (STATE_PAGE_SIZE - 1) || pages[i].gpa >= STATE_GPA_LIMIT)
			return err_set(e, -EINVAL, "state writer: page gpa 0x%" PRIx64
				       " is not page-aligned or beyond 2^52", pages[i].gpa);
		buf_put_u64(&w->scratch, pages[i].gpa);
		buf_put_u32(&w->scratch, !pages[i].data ? STATE_PAGE_F_ZERO :
					 pages[i].delta ? STATE_PAGE_F_DELTA : 0);
		if (delta)
			buf_put_u32(&w->scratch, (uint32_t)writer_page_len(&pages[i]));
		data_len += writer_page_len(&pages[i]);
	}
	if (buf_status(&w->scratch))
		return err_set(e, -ENOMEM, "state writer: out of memory");
	desc_end = w->scratch.len;
	if (compress && data_len) {
		size_t at = 0;

		/* a running guest's pages are copied first here too: the frame must be coherent */
		for (uint32_t i = 0; i < count; i++) {
			if (!writer_page_len(&pages[i]))
				continue;
			memcpy(w->zraw + at, pages[i].data, writer_page_len(&pages[i]));
			at += writer_page_len(&pages[i]);
		}
		zlen = writer_compress(w, w->zraw, data_len);
	}
	if (zlen) {
		le_put32(w->scratch.data + 4, STATE_PAGES_F_ZSTD | (delta ? STATE_PAGES_F_DELTA : 0));
		ret = writer_iov_get(w, &iov, e);
		if (ret < 0)
			return ret;
		iov[2].iov_base = w->scratch.data;
		iov[2].iov_len = desc_end;
		iov[3].iov_base = w->zout;
		iov[3].iov_len = zlen;
		return writer_emit(w, STATE_REC_PAGES, iov + 1, 2, e);
	}
	if (!stable) {
		/* copy first, so the CRC is computed over exactly the bytes sent */
		for (uint32_t i = 0; i < count; i++)
			if (writer_page_len(&pages[i]))
				buf_put_bytes(&w->scratch, pages[i].data,
					      writer_page_len(&pages[i]));
	}
	if (buf_status(&w->scratch))
		return err_set(e, -ENOMEM, "state writer: out of memory");
	/* [pending output][record header][descriptors][pages...][trailer] */
	ret = writer_iov_get(w, &iov, e);
	if (ret < 0)
		return ret;
	iov[2].iov_base = w->scratch.data;
	iov[2].iov_len = w->scratch.len;
	if (stable) {
		for (uint32_t i = 0; i < count; i++) {
			if (!writer_page_len(&pages[i]))
				continue;
			iov[2 + n].iov_base = (void *)pages[i].data;
			iov[2 + n].iov_len = writer_page_len(&pages[i]);
			n++;
		}
	}
	return writer_emit(w, STATE_REC_PAGES, iov + 1, n, e);
}

int state_writer_end(struct state_writer *w, struct errbuf *e)
{
	uint8_t p[8];
	int ret;

	le_put64(p, w->nr_records);
	ret = state_writer_record(w, STATE_REC_END, p, sizeof(p), e);
	if (ret)
		return ret;
	return state_writer_flush(w, e);
}
