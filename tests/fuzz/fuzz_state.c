/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for the state reader: the bytes are a stream (migration or snapshot
 * `state` file). Every record is decoded fully, strictly and then leniently (inspect), and
 * the whole image is checked as a snapshot state file would be. Nothing may crash, leak or
 * read out of bounds, whatever the input.
 *
 * Random mutations almost never get past a CRC32C, so each input is also tried a second
 * time with every CRC it frames recomputed: that lets the fuzzer reach the payload decoders.
 */
#include "state/inspect.h"
#include "state/record.h"
#include "state/snapshot.h"
#include "state/xbzrle.h"

#include "base/crc32c.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static FILE *devnull;
static struct state_inflater *inflater;
static uint8_t scratch[XBZRLE_PAGE]; /* the page a delta is applied to */

static void decode_stream(const uint8_t *data, size_t size, struct state_config *cfg)
{
	struct state_reader_opts opts = { .allow_control = true, .max_record = 1 << 20 };
	struct state_reader *r;
	struct state_record rec;
	struct errbuf e;
	bool have_config = false;

	if (state_reader_open_mem(&r, data, size, &opts, &e))
		return;
	while (!state_reader_ended(r) && !state_reader_next(r, &rec, &e)) {
		struct state_section s;
		struct state_pages_iter it;
		struct state_page pg;
		struct snapshot_memory m;
		uint64_t n;

		switch (rec.type) {
		case STATE_REC_CONFIG:
			have_config = !state_config_decode(rec.payload, rec.len, cfg, &e);
			break;
		case STATE_REC_SECTION:
			if (state_section_decode(rec.payload, rec.len, &s, &e))
				break;
			/* touch every byte the decoder hands out */
			n = 0;
			for (uint32_t i = 0; i < s.len; i++)
				n += ((const uint8_t *)s.data)[i];
			if (have_config && !snapshot_memory_decode(s.data, s.len, cfg, &m, &e)) {
				for (uint64_t p = 0; p < m.nr_pages; p++)
					n += snapshot_memory_page_present(&m, p);
				for (uint64_t c = 0; c < m.nr_chunks; c++)
					n += snapshot_memory_chunk_crc(&m, c);
			}
			if (n == 0xdeadbeef)
				fputc('.', devnull);
			break;
		case STATE_REC_PAGES:
			if (state_pages_decode(rec.payload, rec.len, &it, &e) ||
			    (inflater && state_pages_inflate(&it, inflater, &e)))
				break;
			while (state_pages_next(&it, &pg)) {
				if (have_config)
					(void)state_config_region_find(cfg, pg.gpa, STATE_PAGE_SIZE);
				/* a delta is applied as the destination does; it is not a page */
				if (pg.delta)
					(void)xbzrle_decode(scratch, pg.data, pg.delta_len, &e);
				else if (pg.data && page_is_zero(pg.data))
					fputc('.', devnull);
			}
			break;
		default:
			break;
		}
	}
	if (state_reader_ended(r))
		(void)state_reader_expect_eof(r, &e);
	state_reader_free(r);
}

/* Recomputes the header CRC and the CRCs of every record whose framing fits in p. */
static void fix_crcs(uint8_t *p, size_t size)
{
	size_t pos = STATE_HEADER_SIZE;

	if (size < STATE_HEADER_SIZE)
		return;
	le_put32(p + 28, crc32c(0, p, 28));
	while (size - pos >= STATE_RECORD_HEADER_SIZE) {
		uint8_t *h = p + pos;
		uint64_t len = le_get64(h + 4);

		le_put32(h + 12, crc32c(0, h, 12));
		if (len > size - pos - STATE_RECORD_HEADER_SIZE ||
		    size - pos - STATE_RECORD_HEADER_SIZE - len < STATE_RECORD_TRAILER_SIZE)
			return;
		le_put32(h + STATE_RECORD_HEADER_SIZE + len,
			 crc32c(0, h, STATE_RECORD_HEADER_SIZE + (size_t)len));
		pos += STATE_RECORD_HEADER_SIZE + (size_t)len + STATE_RECORD_TRAILER_SIZE;
	}
}

/* The fd reader (bounded reads into its own buffer) on the same bytes, through a memfd. */
static void read_fd(const uint8_t *data, size_t size)
{
	static int fd = -1;
	struct state_reader_opts opts = { .allow_control = true, .max_record = 1 << 20 };
	struct state_reader *r;
	struct state_record rec;
	struct errbuf e;

	if (fd < 0)
		fd = memfd_create("fuzz", MFD_CLOEXEC);
	if (fd < 0 || ftruncate(fd, 0) || (size && io_pwrite_full(fd, data, size, 0)) ||
	    lseek(fd, 0, SEEK_SET))
		abort();
	if (state_reader_open_fd(&r, fd, &opts, &e))
		return;
	while (!state_reader_ended(r) && !state_reader_next(r, &rec, &e))
		;
	if (state_reader_ended(r))
		(void)state_reader_expect_eof(r, &e);
	state_reader_free(r);
}

static void run_all(const uint8_t *data, size_t size)
{
	static struct state_config cfg;
	struct errbuf e;

	decode_stream(data, size, &cfg);
	read_fd(data, size);
	(void)snapshot_state_check(data, size, &e);
	(void)state_inspect_buf(data, size, devnull, &e);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint8_t *fixed;

	struct errbuf e;

	if (!devnull)
		devnull = fopen("/dev/null", "w");
	if (!inflater && state_inflater_new(&inflater, &e))
		inflater = NULL;
	run_all(data, size);
	/* an exact-size copy, so AddressSanitizer catches a read one byte past the end */
	fixed = malloc(size ? size : 1);
	if (!fixed)
		return 0;
	memcpy(fixed, data, size);
	fix_crcs(fixed, size);
	if (memcmp(fixed, data, size))
		run_all(fixed, size);
	free(fixed);
	return 0;
}
