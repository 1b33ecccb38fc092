/* SPDX-License-Identifier: MIT */
/*
 * The state record format: round trips of every record and payload, hostile input
 * (truncation at every offset, a flipped byte anywhere, bad headers, oversize lengths, bad
 * page addresses, out-of-order records), sockets, and snapshot directories (atomic commit,
 * abort, memory verify and load, directories that are not snapshots, inspect).
 */
#include "base/crc32c.h"
#include "state/inspect.h"
#include "state/record.h"
#include "state/snapshot.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>
#include <cmocka.h>

#include "assert_err.h"

#define PS STATE_PAGE_SIZE

static char tmp_root[64];

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	return remove(path);
}

static void rm_rf(const char *path)
{
	nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static int group_setup(void **state)
{
	strcpy(tmp_root, "/tmp/godwit-test-state-XXXXXX");
	if (!mkdtemp(tmp_root))
		return -1;
	signal(SIGPIPE, SIG_DFL); /* a writer that raises SIGPIPE kills the test */
	return 0;
}

static int group_teardown(void **state)
{
	rm_rf(tmp_root);
	return 0;
}

/* A fresh empty directory under tmp_root for one test. */
static void test_dir(char *out, size_t len, const char *name)
{
	snprintf(out, len, "%s/%s", tmp_root, name);
	rm_rf(out);
	assert_int_equal(mkdir(out, 0755), 0);
}

static size_t dir_entries(const char *path)
{
	DIR *d = opendir(path);
	struct dirent *de;
	size_t n = 0;

	assert_non_null(d);
	while ((de = readdir(d)))
		if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
			n++;
	closedir(d);
	return n;
}

static void make_config(struct state_config *c)
{
	memset(c, 0, sizeof(*c));
	c->flags = 0x5;
	c->nr_vcpus = 2;
	c->nr_regions = 2;
	c->regions[0].gpa = 0;
	c->regions[0].size = 5 * 1024 * 1024 + 3 * PS; /* a partial last chunk */
	c->regions[1].gpa = 1ull << 32;
	c->regions[1].size = 64 * PS;
	c->nr_cpuid = 3;
	c->cpuid[0] = (struct state_cpuid_entry){ 0, 0, 0, 0xd, 0x756e6547, 0x6c65746e, 0x49656e69 };
	c->cpuid[1] = (struct state_cpuid_entry){ 1, 0, 0, 0x806f8, 0x800, 0xfffa3203, 0x178bfbff };
	c->cpuid[2] = (struct state_cpuid_entry){ 7, 0, 1, 0, 0x219c07ab, 0, 0 };
	c->nr_caps = 2;
	c->caps[0] = 1;
	c->caps[1] = 124;
	strcpy(c->machine, "test vm");
	strcpy(c->kernel, "/boot/guest-kit.elf");
}

static void assert_config_equal(const struct state_config *a, const struct state_config *b)
{
	assert_int_equal(a->flags, b->flags);
	assert_int_equal(a->nr_vcpus, b->nr_vcpus);
	assert_int_equal(a->nr_regions, b->nr_regions);
	assert_memory_equal(a->regions, b->regions, a->nr_regions * sizeof(a->regions[0]));
	assert_int_equal(a->nr_cpuid, b->nr_cpuid);
	assert_memory_equal(a->cpuid, b->cpuid, a->nr_cpuid * sizeof(a->cpuid[0]));
	assert_int_equal(a->nr_caps, b->nr_caps);
	assert_memory_equal(a->caps, b->caps, a->nr_caps * sizeof(a->caps[0]));
	assert_string_equal(a->machine, b->machine);
	assert_string_equal(a->kernel, b->kernel);
	assert_int_equal(a->nr_devices, b->nr_devices);
	for (uint32_t i = 0; i < a->nr_devices; i++) {
		assert_string_equal(a->devices[i].type, b->devices[i].type);
		assert_string_equal(a->devices[i].id, b->devices[i].id);
		assert_string_equal(a->devices[i].backend, b->devices[i].backend);
		assert_int_equal(a->devices[i].size, b->devices[i].size);
		assert_int_equal(a->devices[i].flags, b->devices[i].flags);
	}
}

/* Page contents derivable from the address, so a reader can check each page. */
static void fill_page(uint8_t *p, uint64_t gpa)
{
	for (size_t i = 0; i < PS; i += 8) {
		uint64_t v = gpa * 0x9E3779B97F4A7C15ull + i;

		memcpy(p + i, &v, 8);
	}
}

static uint8_t *read_fd_all(int fd, size_t *len)
{
	struct stat st;
	uint8_t *p;

	assert_int_equal(fstat(fd, &st), 0);
	p = malloc((size_t)st.st_size + 1);
	assert_non_null(p);
	assert_int_equal(io_pread_full(fd, p, (size_t)st.st_size, 0), 0);
	*len = (size_t)st.st_size;
	return p;
}

/* ---- the reference migration stream ---- */

static uint8_t page_a[PS], page_b[PS];
static const char section_blob[] = "registers and such";

static void write_reference(struct state_writer *w)
{
	struct state_config c;
	struct state_page pages[3] = { { .gpa = 0x1000, .data = page_a },
				       { .gpa = 0x2000 },
				       { .gpa = 0x100000000ull, .data = page_b } };
	struct errbuf e;

	make_config(&c);
	fill_page(page_a, 0x1000);
	fill_page(page_b, 0x100000000ull);
	assert_int_equal(state_writer_record(w, STATE_REC_CTRL_FIRST, "hello", 5, &e), 0);
	assert_int_equal(state_writer_config(w, &c, &e), 0);
	assert_int_equal(state_writer_section(w, "vcpu", "0", 1, section_blob, sizeof(section_blob), &e), 0);
	assert_int_equal(state_writer_section(w, "serial8250", "io:3f8", 2, "", 0, &e), 0);
	assert_int_equal(state_writer_pages(w, pages, 3, STATE_PAGES_STABLE, &e), 0);
	assert_int_equal(state_writer_pages(w, pages, 2, 0, &e), 0);
	assert_int_equal(state_writer_end(w, &e), 0);
}

/* The reference stream as bytes. */
static uint8_t *reference_stream(size_t *len)
{
	struct state_writer *w;
	struct errbuf e;
	uint8_t *p;
	int fd = memfd_create("stream", 0);

	assert_true(fd >= 0);
	assert_int_equal(state_writer_open(&w, fd, STATE_KIND_MIGRATION, &e), 0);
	write_reference(w);
	assert_int_equal(state_writer_bytes(w), state_writer_bytes_flushed(w));
	state_writer_free(w);
	p = read_fd_all(fd, len);
	close(fd);
	return p;
}

/* Reads a whole stream, decoding every payload; 0 only if everything checks out. */
static int read_all(struct state_reader *r, struct errbuf *e)
{
	struct state_record rec;
	int ret;

	while (!state_reader_ended(r)) {
		ret = state_reader_next(r, &rec, e);
		if (ret)
			return ret;
		if (rec.type == STATE_REC_CONFIG) {
			struct state_config c;

			ret = state_config_decode(rec.payload, rec.len, &c, e);
		} else if (rec.type == STATE_REC_SECTION) {
			struct state_section s;

			ret = state_section_decode(rec.payload, rec.len, &s, e);
		} else if (rec.type == STATE_REC_PAGES) {
			struct state_pages_iter it;

			ret = state_pages_decode(rec.payload, rec.len, &it, e);
		}
		if (ret)
			return ret;
	}
	return state_reader_expect_eof(r, e);
}

static int read_buf(const uint8_t *p, size_t len, struct errbuf *e)
{
	struct state_reader_opts o = { .allow_control = true };
	struct state_reader *r;
	int ret = state_reader_open_mem(&r, p, len, &o, e);

	if (ret)
		return ret;
	ret = read_all(r, e);
	state_reader_free(r);
	return ret;
}

/* Checks the reference stream record by record. */
static void check_reference(struct state_reader *r)
{
	struct state_config c, want;
	struct state_section s;
	struct state_record rec;
	struct state_pages_iter it;
	struct state_page pg;
	struct errbuf e;

	make_config(&want);
	assert_int_equal(state_reader_header(r)->kind, STATE_KIND_MIGRATION);
	assert_int_equal(state_reader_next(r, &rec, &e), 0);
	assert_int_equal(rec.type, STATE_REC_CTRL_FIRST);
	assert_int_equal(rec.offset, STATE_HEADER_SIZE);
	assert_int_equal(rec.len, 5);
	assert_memory_equal(rec.payload, "hello", 5);

	assert_int_equal(state_reader_next(r, &rec, &e), 0);
	assert_int_equal(rec.type, STATE_REC_CONFIG);
	assert_int_equal(rec.index, 1);
	assert_int_equal(state_config_decode(rec.payload, rec.len, &c, &e), 0);
	assert_config_equal(&c, &want);

	assert_int_equal(state_reader_next(r, &rec, &e), 0);
	assert_int_equal(rec.type, STATE_REC_SECTION);
	assert_int_equal(state_section_decode(rec.payload, rec.len, &s, &e), 0);
	assert_string_equal(s.name, "vcpu");
	assert_string_equal(s.instance, "0");
	assert_int_equal(s.version, 1);
	assert_int_equal(s.len, sizeof(section_blob));
	assert_memory_equal(s.data, section_blob, sizeof(section_blob));

	assert_int_equal(state_reader_next(r, &rec, &e), 0);
	assert_int_equal(state_section_decode(rec.payload, rec.len, &s, &e), 0);
	assert_string_equal(s.name, "serial8250");
	assert_string_equal(s.instance, "io:3f8");
	assert_int_equal(s.version, 2);
	assert_int_equal(s.len, 0);

	for (int batch = 0; batch < 2; batch++) {
		assert_int_equal(state_reader_next(r, &rec, &e), 0);
		assert_int_equal(rec.type, STATE_REC_PAGES);
		assert_int_equal(state_pages_decode(rec.payload, rec.len, &it, &e), 0);
		assert_int_equal(it.count, batch ? 2 : 3);
		assert_true(state_pages_next(&it, &pg));
		assert_int_equal(pg.gpa, 0x1000);
		assert_memory_equal(pg.data, page_a, PS);
		assert_true(state_pages_next(&it, &pg));
		assert_int_equal(pg.gpa, 0x2000);
		assert_null(pg.data);
		if (!batch) {
			assert_true(state_pages_next(&it, &pg));
			assert_int_equal(pg.gpa, 0x100000000ull);
			assert_memory_equal(pg.data, page_b, PS);
		}
		assert_false(state_pages_next(&it, &pg));
	}
	assert_int_equal(state_reader_next(r, &rec, &e), 0);
	assert_int_equal(rec.type, STATE_REC_END);
	assert_true(state_reader_ended(r));
	assert_int_equal(state_reader_expect_eof(r, &e), 0);
	assert_int_equal(state_reader_next(r, &rec, &e), -EPROTO);
}

static void test_stream_roundtrip_mem(void **state)
{
	struct state_reader_opts o = { .allow_control = true, .kind = STATE_KIND_MIGRATION };
	struct state_reader *r;
	struct errbuf e;
	size_t len;
	uint8_t *p = reference_stream(&len);

	assert_int_equal(state_reader_open_mem(&r, p, len, &o, &e), 0);
	check_reference(r);
	state_reader_free(r);
	free(p);
}

static void test_stream_roundtrip_fd(void **state)
{
	struct state_reader_opts o = { .allow_control = true };
	struct state_reader *r;
	struct errbuf e;
	size_t len;
	uint8_t *p = reference_stream(&len);
	int fd = memfd_create("stream", 0);

	assert_int_equal(io_write_full(fd, p, len), 0);
	assert_int_equal(lseek(fd, 0, SEEK_SET), 0);
	assert_int_equal(state_reader_open_fd(&r, fd, &o, &e), 0);
	check_reference(r);
	assert_int_equal(state_reader_offset(r), len);
	state_reader_free(r);
	close(fd);
	free(p);
}

/* Every proper prefix of a valid stream is refused as truncated, by both readers. */
static void test_truncated_everywhere(void **state)
{
	struct errbuf e;
	size_t len;
	uint8_t *p = reference_stream(&len);

	assert_int_equal(read_buf(p, len, &e), 0);
	for (size_t cut = 0; cut < len; cut++) {
		uint8_t *copy = malloc(cut + 1); /* exact size, so ASan sees any over-read */
		int ret;

		memcpy(copy, p, cut);
		ret = read_buf(copy, cut, &e);
		if (ret != -EPIPE)
			fail_msg("cut at %zu: got %d \"%s\"", cut, ret, e.msg);
		free(copy);
	}
	/* and through a pipe-like fd at a few places */
	for (size_t cut = 0; cut < len; cut += 997) {
		struct state_reader_opts o = { .allow_control = true };
		struct state_reader *r;
		int fd = memfd_create("cut", 0), ret;

		assert_int_equal(io_write_full(fd, p, cut), 0);
		lseek(fd, 0, SEEK_SET);
		ret = state_reader_open_fd(&r, fd, &o, &e);
		if (!ret) {
			ret = read_all(r, &e);
			state_reader_free(r);
		}
		assert_int_equal(ret, -EPIPE);
		close(fd);
	}
	free(p);
}

/* A flipped byte anywhere is caught (by a CRC or a check before it). */
static void test_flipped_byte_everywhere(void **state)
{
	struct errbuf e;
	size_t len;
	uint8_t *p = reference_stream(&len);

	for (size_t i = 0; i < len; i++) {
		for (unsigned bit = 0; bit < 8; bit += (i < 64 ? 1 : 3)) {
			int ret;

			p[i] ^= (uint8_t)(1u << bit);
			ret = read_buf(p, len, &e);
			if (ret == 0)
				fail_msg("flip of bit %u at offset %zu was not detected", bit, i);
			p[i] ^= (uint8_t)(1u << bit);
		}
	}
	assert_int_equal(read_buf(p, len, &e), 0);
	free(p);
}

static void test_flipped_byte_message(void **state)
{
	struct errbuf e;
	size_t len;
	uint8_t *p = reference_stream(&len);
	size_t section_payload = STATE_HEADER_SIZE + 16 + 5 + 4; /* past the control record */

	/* find the first SECTION record: skip control and CONFIG by reading their lengths */
	section_payload += 16 + (size_t)le_get64(p + section_payload + 4) + 4;
	p[section_payload + 16 + 2] ^= 0x40;
	assert_fails_with(read_buf(p, len, &e), -EBADMSG, &e, "record 2 (SECTION) at offset");
	assert_non_null(strstr(e.msg, "CRC mismatch"));
	free(p);
}

/* A header with chosen fields and a correct CRC. */
static void put_header(uint8_t *out, uint32_t version, uint32_t page_size, uint32_t kind,
		       uint32_t flags)
{
	memcpy(out, STATE_MAGIC, 8);
	le_put32(out + 8, version);
	le_put32(out + 12, page_size);
	le_put32(out + 16, kind);
	le_put32(out + 20, flags);
	le_put32(out + 24, 0);
	le_put32(out + 28, crc32c(0, out, 28));
}

static void test_bad_headers(void **state)
{
	uint8_t h[STATE_HEADER_SIZE];
	struct errbuf e;

	put_header(h, STATE_FORMAT_VERSION, PS, STATE_KIND_MIGRATION, 0);
	assert_fails_with(read_buf(h, sizeof(h), &e), -EPIPE, &e, "without an END record");
	memcpy(h, "QFI\xfbxxxx", 8);
	assert_fails_with(read_buf(h, sizeof(h), &e), -EBADMSG, &e,
			  "not a godwit state stream/snapshot (bad magic)");
	put_header(h, 1, PS, STATE_KIND_MIGRATION, 0);
	assert_fails_with(read_buf(h, sizeof(h), &e), -ENOTSUP, &e,
			  "format version 1 is not supported by this build (reads 2)");
	put_header(h, STATE_FORMAT_VERSION, 65536, STATE_KIND_MIGRATION, 0);
	assert_fails_with(read_buf(h, sizeof(h), &e), -ENOTSUP, &e,
			  "page size 65536 is not supported");
	put_header(h, STATE_FORMAT_VERSION, PS, 7, 0);
	assert_fails_with(read_buf(h, sizeof(h), &e), -EBADMSG, &e, "unknown stream kind 7");
	put_header(h, STATE_FORMAT_VERSION, PS, STATE_KIND_MIGRATION, 0x10);
	assert_fails_with(read_buf(h, sizeof(h), &e), -ENOTSUP, &e, "flags 0x10");
	put_header(h, STATE_FORMAT_VERSION, PS, STATE_KIND_MIGRATION, 0);
	h[29] ^= 1;
	assert_fails_with(read_buf(h, sizeof(h), &e), -EBADMSG, &e, "stream header: CRC mismatch");
	assert_fails_with(read_buf(h, 0, &e), -EPIPE, &e, "stream is empty");
	assert_fails_with(read_buf(h, 12, &e), -EPIPE, &e, "stream header truncated (12 of 32");
	assert_fails_with(read_buf((const uint8_t *)"hello", 5, &e), -EBADMSG, &e, "bad magic");
	{
		struct state_reader_opts o = { .kind = STATE_KIND_SNAPSHOT };
		struct state_reader *r;

		put_header(h, STATE_FORMAT_VERSION, PS, STATE_KIND_MIGRATION, 0);
		assert_fails_with(state_reader_open_mem(&r, h, sizeof(h), &o, &e), -EPROTO, &e,
				  "expected a snapshot state file");
	}
}

/* A stream builder for hand-made (possibly invalid) records with correct CRCs. */
struct raw {
	uint8_t b[65536];
	size_t len;
	uint32_t n;
};

static void raw_begin(struct raw *s, uint32_t kind)
{
	s->len = 0;
	s->n = 0;
	put_header(s->b, STATE_FORMAT_VERSION, PS, kind, 0);
	s->len = STATE_HEADER_SIZE;
}

static void raw_record_len(struct raw *s, uint32_t type, const void *p, size_t len,
			   uint64_t claimed)
{
	uint8_t *h = s->b + s->len;

	le_put32(h, type);
	le_put64(h + 4, claimed);
	le_put32(h + 12, crc32c(0, h, 12));
	memcpy(h + 16, p, len);
	le_put32(h + 16 + len, crc32c(0, h, 16 + len));
	s->len += 16 + len + 4;
	s->n++;
}

static void raw_record(struct raw *s, uint32_t type, const void *p, size_t len)
{
	raw_record_len(s, type, p, len, len);
}

static void raw_config(struct raw *s)
{
	struct state_config c;
	struct buf b;
	struct errbuf e;

	make_config(&c);
	buf_init(&b);
	assert_int_equal(state_config_encode(&c, &b, &e), 0);
	raw_record(s, STATE_REC_CONFIG, b.data, b.len);
	buf_free(&b);
}

static void raw_end(struct raw *s)
{
	uint8_t p[8];

	le_put64(p, s->n);
	raw_record(s, STATE_REC_END, p, 8);
}

static void test_record_errors(void **state)
{
	static struct raw s;
	struct state_reader_opts o = { .max_record = 1000 };
	struct state_reader *r;
	struct state_record rec;
	struct errbuf e;
	uint8_t big[2000] = { 0 };

	/* unknown record type */
	raw_begin(&s, STATE_KIND_MIGRATION);
	raw_config(&s);
	raw_record(&s, 0x77, "x", 1);
	raw_end(&s);
	assert_fails_with(read_buf(s.b, s.len, &e), -EBADMSG, &e,
			  "record 1 at offset");
	assert_non_null(strstr(e.msg, "unknown record type 0x77"));

	/* a length over the bound is refused before anything is read or allocated */
	raw_begin(&s, STATE_KIND_MIGRATION);
	raw_config(&s);
	raw_record_len(&s, STATE_REC_SECTION, "", 0, 1ull << 40);
	assert_fails_with(read_buf(s.b, s.len, &e), -EFBIG, &e,
			  "record 1 (SECTION) at offset");
	assert_non_null(strstr(e.msg, "length 1099511627776 exceeds the limit of 67108864"));

	/* a caller-given bound */
	raw_begin(&s, STATE_KIND_MIGRATION);
	raw_config(&s);
	raw_record(&s, STATE_REC_SECTION, big, sizeof(big));
	assert_int_equal(state_reader_open_mem(&r, s.b, s.len, &o, &e), 0);
	assert_int_equal(state_reader_next(r, &rec, &e), 0);
	assert_fails_with(state_reader_next(r, &rec, &e), -EFBIG, &e, "limit of 1000 bytes");
	assert_int_equal(state_reader_next(r, &rec, &e), -EIO);
	state_reader_free(r);

	/* records before CONFIG, a second CONFIG, END counting wrong, PAGES in a snapshot */
	raw_begin(&s, STATE_KIND_MIGRATION);
	raw_end(&s);
	assert_fails_with(read_buf(s.b, s.len, &e), -EPROTO, &e, "comes before the CONFIG record");
	raw_begin(&s, STATE_KIND_MIGRATION);
	raw_config(&s);
	raw_config(&s);
	assert_fails_with(read_buf(s.b, s.len, &e), -EPROTO, &e, "a second CONFIG record");
	raw_begin(&s, STATE_KIND_MIGRATION);
	raw_config(&s);
	s.n = 5;
	raw_end(&s);
	assert_fails_with(read_buf(s.b, s.len, &e), -EBADMSG, &e,
			  "END counts 5 records before it, the stream had 1");
	raw_begin(&s, STATE_KIND_SNAPSHOT);
	raw_config(&s);
	{
		uint8_t pages[8 + 12];

		le_put32(pages, 1);
		le_put32(pages + 4, 0);
		le_put64(pages + 8, 0);
		le_put32(pages + 16, STATE_PAGE_F_ZERO);
		raw_record(&s, STATE_REC_PAGES, pages, sizeof(pages));
	}
	assert_fails_with(read_buf(s.b, s.len, &e), -EPROTO, &e,
			  "PAGES records do not belong in a snapshot");

	/* control records only where allowed */
	raw_begin(&s, STATE_KIND_MIGRATION);
	raw_record(&s, 0x101, "", 0);
	raw_config(&s);
	raw_end(&s);
	assert_int_equal(read_buf(s.b, s.len, &e), 0);
	assert_int_equal(state_reader_open_mem(&r, s.b, s.len, NULL, &e), 0);
	assert_fails_with(state_reader_next(r, &rec, &e), -EPROTO, &e,
			  "control record 0x101 is not expected here");
	state_reader_free(r);

	/* bytes after END */
	raw_begin(&s, STATE_KIND_MIGRATION);
	raw_config(&s);
	raw_end(&s);
	s.b[s.len++] = 0;
	assert_fails_with(read_buf(s.b, s.len, &e), -EBADMSG, &e, "1 unexpected bytes after END");

	/* a record header whose own CRC is wrong names the record, not a bogus type */
	raw_begin(&s, STATE_KIND_MIGRATION);
	raw_config(&s);
	s.b[STATE_HEADER_SIZE + 5] ^= 1;
	assert_fails_with(read_buf(s.b, s.len, &e), -EBADMSG, &e,
			  "record 0 at offset 32: record header CRC mismatch");
}

static void test_writer_order(void **state)
{
	struct state_writer *w;
	struct state_config c;
	struct state_page pg = { .gpa = 0x1000 };
	struct errbuf e;
	int fd = memfd_create("w", 0);

	make_config(&c);
	assert_int_equal(state_writer_open(&w, fd, STATE_KIND_SNAPSHOT, &e), 0);
	assert_fails_with(state_writer_section(w, "vcpu", "0", 1, "", 0, &e), -EPROTO, &e,
			  "SECTION record before CONFIG");
	assert_int_equal(state_writer_config(w, &c, &e), 0);
	assert_fails_with(state_writer_config(w, &c, &e), -EPROTO, &e, "a second CONFIG");
	assert_fails_with(state_writer_pages(w, &pg, 1, 0, &e), -EPROTO, &e,
			  "PAGES records do not belong in a snapshot");
	assert_fails_with(state_writer_record(w, 0x42, "", 0, &e), -EINVAL, &e,
			  "unknown record type 0x42");
	assert_fails_with(state_writer_section(w, "bad name", "0", 1, "", 0, &e), -EINVAL, &e,
			  "section name has a byte 0x20");
	assert_int_equal(state_writer_end(w, &e), 0);
	assert_fails_with(state_writer_section(w, "vcpu", "0", 1, "", 0, &e), -EPROTO, &e,
			  "after END");
	state_writer_free(w);
	close(fd);
}

static void test_config_validation(void **state)
{
	struct state_config c;
	struct buf b;
	struct errbuf e;

	make_config(&c);
	assert_int_equal(state_config_validate(&c, &e), 0);
	c.nr_vcpus = 0;
	assert_fails_with(state_config_validate(&c, &e), -EINVAL, &e, "0 vCPUs (supported: 1..64)");
	c.nr_vcpus = 65;
	assert_fails_with(state_config_validate(&c, &e), -EINVAL, &e, "65 vCPUs");
	c.nr_vcpus = 64;
	assert_int_equal(state_config_validate(&c, &e), 0);
	make_config(&c);
	c.nr_regions = 0;
	assert_fails_with(state_config_validate(&c, &e), -EINVAL, &e, "0 memory regions");
	c.nr_regions = 5;
	assert_fails_with(state_config_validate(&c, &e), -EINVAL, &e, "5 memory regions");
	make_config(&c);
	c.regions[1].gpa = 0x1800;
	assert_fails_with(state_config_validate(&c, &e), -EINVAL, &e, "not page-aligned");
	c.regions[1].gpa = 0x100000;
	assert_fails_with(state_config_validate(&c, &e), -EINVAL, &e, "overlaps region 0");
	c.regions[1].gpa = (1ull << 52) - PS;
	assert_fails_with(state_config_validate(&c, &e), -EINVAL, &e, "2^52");
	c.regions[1].gpa = UINT64_MAX & ~(uint64_t)(PS - 1);
	assert_fails_with(state_config_validate(&c, &e), -EINVAL, &e, "2^52");
	make_config(&c);
	c.regions[1].size = 0;
	assert_fails_with(state_config_validate(&c, &e), -EINVAL, &e, "empty");
	make_config(&c);
	c.cpuid[2].function = 1;
	assert_fails_with(state_config_validate(&c, &e), -EINVAL, &e,
			  "CPUID leaf 0x1 index 0 appears twice");
	make_config(&c);
	c.nr_cpuid = STATE_MAX_CPUID + 1;
	assert_fails_with(state_config_validate(&c, &e), -EINVAL, &e, "257 CPUID entries");
	make_config(&c);
	c.caps[1] = 1;
	assert_fails_with(state_config_validate(&c, &e), -EINVAL, &e, "capability 1 appears twice");
	make_config(&c);
	c.machine[2] = '\n';
	assert_fails_with(state_config_validate(&c, &e), -EINVAL, &e, "machine name");
	make_config(&c);
	c.kernel[2] = '\t';
	assert_fails_with(state_config_validate(&c, &e), -EINVAL, &e, "kernel path");

	/* a full-size config round-trips */
	make_config(&c);
	c.nr_cpuid = STATE_MAX_CPUID;
	for (uint32_t i = 0; i < c.nr_cpuid; i++)
		c.cpuid[i] = (struct state_cpuid_entry){ i, i % 3, 1, i, ~i, i * 3, i ^ 0x55 };
	c.nr_caps = STATE_MAX_CAPS;
	for (uint32_t i = 0; i < c.nr_caps; i++)
		c.caps[i] = i * 7;
	memset(c.machine, 'm', STATE_NAME_MAX);
	memset(c.kernel, 'k', STATE_PATH_MAX);
	c.nr_regions = 4;
	for (uint32_t i = 0; i < 4; i++)
		c.regions[i] = (struct state_region){ (uint64_t)i << 40, (uint64_t)(i + 1) << 20 };
	buf_init(&b);
	assert_int_equal(state_config_encode(&c, &b, &e), 0);
	{
		struct state_config d;

		assert_int_equal(state_config_decode(b.data, b.len, &d, &e), 0);
		assert_config_equal(&c, &d);
		assert_int_equal(state_config_region_find(&d, 3ull << 40, 4ull << 20), 3);
		assert_int_equal(state_config_region_find(&d, 3ull << 40, (4ull << 20) + 1), -1);
		assert_int_equal(state_config_region_find(&d, 5ull << 40, 1), -1);
		assert_int_equal(state_config_mem_size(&d), 10ull << 20);
		/* every truncation and a trailing byte are refused */
		for (size_t cut = 0; cut < b.len; cut++)
			assert_int_equal(state_config_decode(b.data, cut, &d, &e), -EBADMSG);
		buf_put_u8(&b, 0);
		assert_fails_with(state_config_decode(b.data, b.len, &d, &e), -EBADMSG, &e,
				  "1 unexpected bytes");
	}
	buf_free(&b);
}

/* The device list of CONFIG: round trip, truncation, and what validation refuses. */
static void test_config_devices(void **state)
{
	struct state_config *c = calloc(2, sizeof(*c)), *d = c + 1;
	struct buf b;
	struct errbuf e;

	(void)state;
	make_config(c);
	c->nr_devices = 2;
	c->devices[0] = (struct state_device){ .type = "virtio-blk", .id = "disk0",
					       .backend = "/srv/a.img", .size = 1 << 20 };
	c->devices[1] = (struct state_device){ .type = "virtio-blk", .id = "data",
					       .backend = "/srv/b c.img", .size = 512,
					       .flags = STATE_DEV_F_READONLY };
	buf_init(&b);
	assert_int_equal(state_config_encode(c, &b, &e), 0);
	assert_int_equal(state_config_decode(b.data, b.len, d, &e), 0);
	assert_config_equal(c, d);
	for (size_t cut = 0; cut < b.len; cut++)
		assert_int_equal(state_config_decode(b.data, cut, d, &e), -EBADMSG);

	strcpy(c->devices[1].id, "disk0");
	assert_fails_with(state_config_validate(c, &e), -EINVAL, &e, "device id disk0 appears twice");
	strcpy(c->devices[1].id, "data");
	c->devices[1].flags = 6;
	assert_fails_with(state_config_validate(c, &e), -EINVAL, &e, "unknown flags 0x6");
	c->devices[1].flags = 0;
	c->devices[1].backend[3] = '\n';
	assert_fails_with(state_config_validate(c, &e), -EINVAL, &e, "backend has a control");
	strcpy(c->devices[1].backend, "/x");
	c->devices[1].type[0] = '\0';
	assert_fails_with(state_config_validate(c, &e), -EINVAL, &e, "device type is empty");
	strcpy(c->devices[1].type, "virtio-blk");
	c->nr_devices = STATE_MAX_DEVICES + 1;
	assert_fails_with(state_config_validate(c, &e), -EINVAL, &e, "17 devices");
	/* a count beyond the limit in a payload is refused before anything is read for it */
	c->nr_devices = 0;
	buf_reset(&b);
	assert_int_equal(state_config_encode(c, &b, &e), 0);
	le_put32(b.data + b.len - 4, 1000);
	assert_fails_with(state_config_decode(b.data, b.len, d, &e), -EBADMSG, &e, "1000 devices");
	buf_free(&b);
	free(c);
}

static void test_section_codec(void **state)
{
	struct state_section s;
	struct buf b;
	struct errbuf e;
	char long_name[STATE_NAME_MAX + 2];

	buf_init(&b);
	assert_int_equal(state_section_encode(&b, "ioapic", "kvm", 7, "abc", 3, &e), 0);
	assert_int_equal(state_section_decode(b.data, b.len, &s, &e), 0);
	assert_string_equal(s.name, "ioapic");
	assert_string_equal(s.instance, "kvm");
	assert_int_equal(s.version, 7);
	assert_int_equal(s.len, 3);
	assert_memory_equal(s.data, "abc", 3);
	for (size_t cut = 0; cut < b.len; cut++)
		assert_int_equal(state_section_decode(b.data, cut, &s, &e), -EBADMSG);
	buf_put_u8(&b, 1);
	assert_fails_with(state_section_decode(b.data, b.len, &s, &e), -EBADMSG, &e,
			  "unexpected bytes after the data");

	buf_reset(&b);
	assert_fails_with(state_section_encode(&b, "", "0", 1, "", 0, &e), -EINVAL, &e,
			  "section name is empty");
	memset(long_name, 'a', sizeof(long_name) - 1);
	long_name[sizeof(long_name) - 1] = '\0';
	assert_fails_with(state_section_encode(&b, long_name, "0", 1, "", 0, &e), -EINVAL, &e,
			  "longer than 63 bytes");
	assert_fails_with(state_section_encode(&b, "vcpu", "caf\xc3\xa9", 1, "", 0, &e), -EINVAL,
			  &e, "not printable ASCII");
	long_name[STATE_NAME_MAX] = '\0';
	assert_int_equal(state_section_encode(&b, long_name, long_name, 1, "", 0, &e), 0);
	assert_int_equal(state_section_decode(b.data, b.len, &s, &e), 0);
	assert_string_equal(s.name, long_name);

	/* hand-made: a NUL inside a name, a control character */
	buf_reset(&b);
	buf_put_blob(&b, "vc\0u", 4);
	buf_put_blob(&b, "0", 1);
	buf_put_u32(&b, 1);
	buf_put_blob(&b, "", 0);
	assert_fails_with(state_section_decode(b.data, b.len, &s, &e), -EBADMSG, &e, "NUL");
	buf_reset(&b);
	buf_put_blob(&b, "vcpu", 4);
	buf_put_blob(&b, "0\x01", 2);
	buf_put_u32(&b, 1);
	buf_put_blob(&b, "", 0);
	assert_fails_with(state_section_decode(b.data, b.len, &s, &e), -EBADMSG, &e,
			  "section vcpu: section instance has a byte 0x01");
	buf_free(&b);
}

static void put_pages_hdr(struct buf *b, uint32_t count, uint32_t flags)
{
	buf_reset(b);
	buf_put_u32(b, count);
	buf_put_u32(b, flags);
}

/* Text-like page content: compresses well, but not to nothing. */
static void fill_text_page(uint8_t *p, uint64_t seed)
{
	static const char *const words[] = { "guest ", "memory ", "pages ", "moves ", "zstd  ", "line\n " };

	for (size_t i = 0; i < PS; i++) {
		seed = seed * 6364136223846793005ull + 1442695040888963407ull;
		p[i] = (uint8_t)words[(seed >> 33) % 6][i % 5];
	}
}

/* Data no compressor shrinks. */
static void fill_random_page(uint8_t *p, uint64_t seed)
{
	for (size_t i = 0; i < PS; i += 8) {
		seed ^= seed << 13;
		seed ^= seed >> 7;
		seed ^= seed << 17;
		memcpy(p + i, &seed, 8);
	}
}

/* A batch that shrinks travels compressed and inflates to the same pages; one that does not travels raw. */
static void test_pages_zstd_roundtrip(void **state)
{
	static uint8_t text[3][PS], rnd[2][PS];
	struct state_page shrinks[4] = { { .gpa = 0x1000, .data = text[0] },
					 { .gpa = 0x2000 },
					 { .gpa = 0x3000, .data = text[1] },
					 { .gpa = 0x5000, .data = text[2] } };
	struct state_page raw[2] = { { .gpa = 0x8000, .data = rnd[0] },
				     { .gpa = 0x9000, .data = rnd[1] } };
	struct state_reader_opts o = { .allow_control = true };
	struct state_inflater *z;
	struct state_writer *w;
	struct state_reader *r;
	struct state_record rec;
	struct state_pages_iter it;
	struct state_page pg;
	struct state_zstats zs;
	struct state_config c;
	struct errbuf e;
	size_t len;
	uint8_t *p;
	int fd = memfd_create("stream", 0);

	for (int i = 0; i < 3; i++)
		fill_text_page(text[i], (uint64_t)i + 1);
	fill_random_page(rnd[0], 1);
	fill_random_page(rnd[1], 2);
	make_config(&c);
	assert_true(fd >= 0);
	assert_int_equal(state_writer_open(&w, fd, STATE_KIND_MIGRATION, &e), 0);
	assert_fails_with(state_writer_compress(w, 0, &e), -EINVAL, &e, "zstd level 0");
	assert_int_equal(state_writer_compress(w, 1, &e), 0);
	assert_int_equal(state_writer_config(w, &c, &e), 0);
	assert_int_equal(state_writer_pages(w, shrinks, 4, STATE_PAGES_COMPRESS, &e), 0);
	assert_int_equal(state_writer_pages(w, raw, 2, STATE_PAGES_COMPRESS | STATE_PAGES_STABLE,
					    &e), 0);
	assert_int_equal(state_writer_end(w, &e), 0);
	state_writer_zstats(w, &zs);
	assert_int_equal(zs.batches, 2);
	assert_int_equal(zs.shrunk, 1);
	assert_int_equal(zs.raw_bytes, 5 * PS);
	assert_true(zs.out_bytes < zs.raw_bytes && zs.out_bytes > 2 * PS);
	state_writer_free(w);
	p = read_fd_all(fd, &len);
	close(fd);

	assert_int_equal(state_inflater_new(&z, &e), 0);
	assert_int_equal(state_reader_open_mem(&r, p, len, &o, &e), 0);
	assert_int_equal(state_reader_next(r, &rec, &e), 0);
	assert_int_equal(state_reader_next(r, &rec, &e), 0);
	assert_int_equal(rec.type, STATE_REC_PAGES);
	assert_true(rec.len < 3 * PS);
	assert_int_equal(le_get32(rec.payload + 4), STATE_PAGES_F_ZSTD);
	assert_int_equal(state_pages_decode(rec.payload, rec.len, &it, &e), 0);
	assert_false(state_pages_next(&it, &pg)); /* no data before it is inflated */
	assert_int_equal(state_pages_inflate(&it, z, &e), 0);
	for (int i = 0, t = 0; i < 4; i++) {
		assert_true(state_pages_next(&it, &pg));
		assert_int_equal(pg.gpa, shrinks[i].gpa);
		if (!shrinks[i].data)
			assert_null(pg.data);
		else
			assert_memory_equal(pg.data, text[t++], PS);
	}
	assert_false(state_pages_next(&it, &pg));
	assert_int_equal(state_reader_next(r, &rec, &e), 0);
	assert_int_equal(le_get32(rec.payload + 4), 0);
	assert_int_equal(rec.len, 8 + 2 * 12 + 2 * PS);
	assert_int_equal(state_pages_decode(rec.payload, rec.len, &it, &e), 0);
	assert_int_equal(state_pages_inflate(&it, z, &e), 0);
	assert_true(state_pages_next(&it, &pg));
	assert_memory_equal(pg.data, rnd[0], PS);
	assert_int_equal(state_reader_next(r, &rec, &e), 0);
	assert_true(state_reader_ended(r));
	state_reader_free(r);
	state_inflater_free(z);
	free(p);
}

/*
 * Batches with deltas (migrate --delta): written with 16-byte descriptors carrying each
 * page's data length, plain and compressed, and read back page by page.
 */
static void test_pages_delta_roundtrip(void **state)
{
	static uint8_t whole[PS], delta[100];
	struct state_page pages[4] = { { .gpa = 0x1000, .data = whole },
				       { .gpa = 0x2000 },
				       { .gpa = 0x3000, .data = delta, .delta = true, .delta_len = 100 },
				       { .gpa = 0x4000, .data = delta, .delta = true } };
	struct state_reader_opts o = { .allow_control = true };
	struct state_inflater *z;
	struct state_writer *w;
	struct state_reader *r;
	struct state_record rec;
	struct state_pages_iter it;
	struct state_page pg;
	struct state_config c;
	struct errbuf e;
	size_t len;
	uint8_t *p;
	int fd = memfd_create("stream", 0);

	(void)state;
	fill_text_page(whole, 9);
	memset(delta, 'd', sizeof(delta));
	make_config(&c);
	assert_true(fd >= 0);
	assert_int_equal(state_writer_open(&w, fd, STATE_KIND_MIGRATION, &e), 0);
	assert_int_equal(state_writer_compress(w, 1, &e), 0);
	assert_int_equal(state_writer_config(w, &c, &e), 0);
	assert_int_equal(state_writer_pages(w, pages, 4, 0, &e), 0);
	assert_int_equal(state_writer_pages(w, pages, 4, STATE_PAGES_STABLE, &e), 0);
	assert_int_equal(state_writer_pages(w, pages, 4, STATE_PAGES_COMPRESS, &e), 0);
	/* a delta as long as the page is no delta */
	pages[3].delta_len = PS;
	assert_fails_with(state_writer_pages(w, pages, 4, 0, &e), -EINVAL, &e, "a delta of 4096");
	assert_int_equal(state_writer_end(w, &e), 0);
	state_writer_free(w);
	p = read_fd_all(fd, &len);
	close(fd);

	assert_int_equal(state_inflater_new(&z, &e), 0);
	assert_int_equal(state_reader_open_mem(&r, p, len, &o, &e), 0);
	assert_int_equal(state_reader_next(r, &rec, &e), 0);
	for (int batch = 0; batch < 3; batch++) {
		assert_int_equal(state_reader_next(r, &rec, &e), 0);
		assert_int_equal(rec.type, STATE_REC_PAGES);
		assert_int_equal(le_get32(rec.payload + 4),
				 STATE_PAGES_F_DELTA | (batch == 2 ? STATE_PAGES_F_ZSTD : 0));
		if (batch < 2)
			assert_int_equal(rec.len, 8 + 4 * 16 + PS + 100);
		assert_int_equal(state_pages_decode(rec.payload, rec.len, &it, &e), 0);
		assert_int_equal(state_pages_inflate(&it, z, &e), 0);
		assert_int_equal(it.nr_data, 3);
		assert_int_equal(it.nr_delta, 2);
		assert_true(state_pages_next(&it, &pg));
		assert_false(pg.delta);
		assert_memory_equal(pg.data, whole, PS);
		assert_true(state_pages_next(&it, &pg));
		assert_null(pg.data);
		assert_true(state_pages_next(&it, &pg));
		assert_true(pg.delta);
		assert_int_equal(pg.gpa, 0x3000);
		assert_int_equal(pg.delta_len, 100);
		assert_memory_equal(pg.data, delta, 100);
		assert_true(state_pages_next(&it, &pg));
		assert_true(pg.delta);
		assert_non_null(pg.data);
		assert_int_equal(pg.delta_len, 0);
		assert_false(state_pages_next(&it, &pg));
	}
	state_reader_free(r);
	state_inflater_free(z);

	/* inspect counts the deltas, and a delta's own length as its data, not a page */
	{
		char *text;
		size_t text_len;
		FILE *out = open_memstream(&text, &text_len);
		int ret = state_inspect_buf(p, len, out, &e);

		fclose(out);
		/* the stream carries no VM's sections: that is a problem, the pages are not */
		assert_int_equal(ret, -EBADMSG);
		assert_non_null(strstr(e.msg, "1 problem found, the first: missing section"));
		/* 3 batches of a whole page, a zero page and deltas of 100 and 0 bytes */
		assert_non_null(strstr(text, "12 pages (3 zero, 6 deltas, 12.3 KiB of data)"));
		assert_non_null(strstr(text, "3 zero (sent as flags), 6 deltas, 12.3 KiB of data"));
		free(text);
	}
	free(p);
}

static void put_delta_desc(struct buf *b, uint64_t gpa, uint32_t flags, uint32_t len)
{
	buf_put_u64(b, gpa);
	buf_put_u32(b, flags);
	buf_put_u32(b, len);
}

/* Hostile delta batches: each page's length must match its kind, and the data the lengths. */
static void test_pages_delta_hostile(void **state)
{
	static uint8_t data[2 * PS];
	struct state_pages_iter it;
	struct buf b;
	struct errbuf e;

	(void)state;
	buf_init(&b);
	/* a delta page outside a delta batch is an unknown flag */
	put_pages_hdr(&b, 1, 0);
	buf_put_u64(&b, 0x1000);
	buf_put_u32(&b, STATE_PAGE_F_DELTA);
	assert_fails_with(state_pages_decode(b.data, b.len, &it, &e), -EBADMSG, &e,
			  "unknown flags 0x2");
	/* zero and delta at once */
	put_pages_hdr(&b, 1, STATE_PAGES_F_DELTA);
	put_delta_desc(&b, 0x1000, STATE_PAGE_F_ZERO | STATE_PAGE_F_DELTA, 0);
	assert_fails_with(state_pages_decode(b.data, b.len, &it, &e), -EBADMSG, &e,
			  "unknown flags 0x3");
	/* a delta of a whole page or more */
	put_pages_hdr(&b, 1, STATE_PAGES_F_DELTA);
	put_delta_desc(&b, 0x1000, STATE_PAGE_F_DELTA, PS);
	buf_put_bytes(&b, data, PS);
	assert_fails_with(state_pages_decode(b.data, b.len, &it, &e), -EBADMSG, &e,
			  "has 4096 data bytes (a delta must be under a page)");
	put_pages_hdr(&b, 1, STATE_PAGES_F_DELTA);
	put_delta_desc(&b, 0x1000, STATE_PAGE_F_DELTA, UINT32_MAX);
	assert_fails_with(state_pages_decode(b.data, b.len, &it, &e), -EBADMSG, &e,
			  "a delta must be under a page");
	/* a whole page of another length, a zero page with data */
	put_pages_hdr(&b, 1, STATE_PAGES_F_DELTA);
	put_delta_desc(&b, 0x1000, 0, 100);
	buf_put_bytes(&b, data, 100);
	assert_fails_with(state_pages_decode(b.data, b.len, &it, &e), -EBADMSG, &e,
			  "a whole page has 4096");
	put_pages_hdr(&b, 1, STATE_PAGES_F_DELTA);
	put_delta_desc(&b, 0x1000, STATE_PAGE_F_ZERO, 8);
	buf_put_bytes(&b, data, 8);
	assert_fails_with(state_pages_decode(b.data, b.len, &it, &e), -EBADMSG, &e,
			  "a zero page has none");
	/* the data must be exactly what the lengths add up to */
	put_pages_hdr(&b, 2, STATE_PAGES_F_DELTA);
	put_delta_desc(&b, 0x1000, STATE_PAGE_F_DELTA, 10);
	put_delta_desc(&b, 0x2000, 0, PS);
	buf_put_bytes(&b, data, PS + 9);
	assert_fails_with(state_pages_decode(b.data, b.len, &it, &e), -EBADMSG, &e,
			  "4105 data bytes for 2 non-zero pages (expected 4106)");
	buf_put_u8(&b, 0);
	assert_int_equal(state_pages_decode(b.data, b.len, &it, &e), 0);
	/* compressed: shorter than the deltas' own length, and never an empty frame */
	put_pages_hdr(&b, 1, STATE_PAGES_F_DELTA | STATE_PAGES_F_ZSTD);
	put_delta_desc(&b, 0x1000, STATE_PAGE_F_DELTA, 10);
	buf_put_bytes(&b, data, 10);
	assert_fails_with(state_pages_decode(b.data, b.len, &it, &e), -EBADMSG, &e,
			  "compressed data of 10 bytes for 1 non-zero pages (must be 1 to 9)");
	put_pages_hdr(&b, 1, STATE_PAGES_F_DELTA | STATE_PAGES_F_ZSTD);
	put_delta_desc(&b, 0x1000, STATE_PAGE_F_DELTA, 0);
	buf_put_bytes(&b, data, 1);
	assert_fails_with(state_pages_decode(b.data, b.len, &it, &e), -EBADMSG, &e,
			  "must be 1 to 0");
	buf_free(&b);
}

/* A compressed batch of the given descriptors (page i non-zero if its bit is set) and frame. */
static void put_zstd_batch(struct buf *b, uint32_t count, uint32_t nonzero_mask, const void *frame,
			   size_t flen)
{
	put_pages_hdr(b, count, STATE_PAGES_F_ZSTD);
	for (uint32_t i = 0; i < count; i++) {
		buf_put_u64(b, 0x1000ull * (i + 1));
		buf_put_u32(b, nonzero_mask & (1u << i) ? 0 : STATE_PAGE_F_ZERO);
	}
	buf_put_bytes(b, frame, flen);
}

/* Hostile compressed batches: refused by name, and never inflated past the batch's pages. */
static void test_pages_zstd_hostile(void **state)
{
	static uint8_t src[4 * PS], frame[4 * PS];
	struct state_inflater *z;
	struct state_pages_iter it;
	ZSTD_CCtx *cctx = ZSTD_createCCtx();
	struct buf b;
	struct errbuf e;
	size_t two, four_nosize;

	memset(src, 'a', sizeof(src));
	two = ZSTD_compress(frame, sizeof(frame), src, 2 * PS, 1);
	assert_false(ZSTD_isError(two));
	/* a frame of 4 pages that does not say how big it is: only decompressing tells */
	assert_false(ZSTD_isError(ZSTD_CCtx_setParameter(cctx, ZSTD_c_contentSizeFlag, 0)));
	four_nosize = ZSTD_compress2(cctx, frame + two, sizeof(frame) - two, src, 4 * PS);
	assert_false(ZSTD_isError(four_nosize));
	ZSTD_freeCCtx(cctx);
	assert_int_equal(state_inflater_new(&z, &e), 0);
	buf_init(&b);

	/* declares 2 pages, the batch has 1 */
	put_zstd_batch(&b, 2, 0x1, frame, two);
	assert_int_equal(state_pages_decode(b.data, b.len, &it, &e), 0);
	assert_fails_with(state_pages_inflate(&it, z, &e), -EBADMSG, &e,
			  "declares 8192 bytes for 1 non-zero pages (expected 4096)");
	/* says nothing, yields 4 pages: stopped at the batch's 2 */
	put_zstd_batch(&b, 3, 0x5, frame + two, four_nosize);
	assert_int_equal(state_pages_decode(b.data, b.len, &it, &e), 0);
	assert_fails_with(state_pages_inflate(&it, z, &e), -EBADMSG, &e, "bad zstd frame");
	/* yields fewer than declared descriptors need */
	put_zstd_batch(&b, 3, 0x7, frame, two);
	assert_int_equal(state_pages_decode(b.data, b.len, &it, &e), 0);
	assert_fails_with(state_pages_inflate(&it, z, &e), -EBADMSG, &e, "expected 12288");
	/* trailing bytes after the frame */
	put_zstd_batch(&b, 2, 0x3, frame, two);
	buf_put_u8(&b, 0);
	assert_int_equal(state_pages_decode(b.data, b.len, &it, &e), 0);
	assert_fails_with(state_pages_inflate(&it, z, &e), -EBADMSG, &e, "not one zstd frame");
	/* not zstd at all */
	put_zstd_batch(&b, 2, 0x3, src, 100);
	assert_int_equal(state_pages_decode(b.data, b.len, &it, &e), 0);
	assert_fails_with(state_pages_inflate(&it, z, &e), -EBADMSG, &e, "not one zstd frame");
	/* "compressed" data as long as the raw data, or a compressed batch of zero pages */
	put_zstd_batch(&b, 1, 0x1, src, PS);
	assert_fails_with(state_pages_decode(b.data, b.len, &it, &e), -EBADMSG, &e,
			  "compressed data of 4096 bytes for 1 non-zero pages (must be 1 to 4095)");
	put_zstd_batch(&b, 1, 0x0, frame, two);
	assert_fails_with(state_pages_decode(b.data, b.len, &it, &e), -EBADMSG, &e,
			  "for 0 non-zero pages");
	/* and a good one still inflates */
	put_zstd_batch(&b, 3, 0x6, frame, two);
	assert_int_equal(state_pages_decode(b.data, b.len, &it, &e), 0);
	assert_int_equal(state_pages_inflate(&it, z, &e), 0);

	/* inspect inflates as a destination does: a frame that is not zstd is a problem */
	{
		static struct raw s;
		char *text;
		size_t text_len;
		FILE *out;

		raw_begin(&s, STATE_KIND_MIGRATION);
		raw_config(&s);
		put_zstd_batch(&b, 2, 0x3, frame, two); /* good */
		raw_record(&s, STATE_REC_PAGES, b.data, b.len);
		put_zstd_batch(&b, 2, 0x3, src, 100);
		raw_record(&s, STATE_REC_PAGES, b.data, b.len);
		raw_end(&s);
		out = open_memstream(&text, &text_len);
		assert_fails_with(state_inspect_buf(s.b, s.len, out, &e), -EBADMSG, &e, "problem");
		fclose(out);
		assert_non_null(strstr(text, "BAD: pages: compressed data is not one zstd frame"));
		assert_null(strstr(text, "outside guest memory"));
		free(text);
	}
	buf_free(&b);
	state_inflater_free(z);
}

static void test_pages_codec(void **state)
{
	static uint8_t page[PS];
	struct state_pages_iter it;
	struct buf b;
	struct errbuf e;

	buf_init(&b);
	put_pages_hdr(&b, 0, 0);
	assert_fails_with(state_pages_decode(b.data, b.len, &it, &e), -EBADMSG, &e,
			  "batch of 0 pages");
	put_pages_hdr(&b, STATE_PAGES_MAX + 1, 0);
	assert_fails_with(state_pages_decode(b.data, b.len, &it, &e), -EBADMSG, &e,
			  "batch of 1025 pages");
	put_pages_hdr(&b, 1, 4);
	assert_fails_with(state_pages_decode(b.data, b.len, &it, &e), -EBADMSG, &e,
			  "unknown batch flags");
	put_pages_hdr(&b, 2, 0);
	buf_put_u64(&b, 0x1000);
	buf_put_u32(&b, STATE_PAGE_F_ZERO);
	assert_fails_with(state_pages_decode(b.data, b.len, &it, &e), -EBADMSG, &e,
			  "cannot hold 2 descriptors");
	buf_put_u64(&b, 0x2010);
	buf_put_u32(&b, STATE_PAGE_F_ZERO);
	assert_fails_with(state_pages_decode(b.data, b.len, &it, &e), -EBADMSG, &e,
			  "page 1 has gpa 0x2010, not page-aligned");
	put_pages_hdr(&b, 1, 0);
	buf_put_u64(&b, 1ull << 52);
	buf_put_u32(&b, 0);
	buf_put_bytes(&b, page, PS);
	assert_fails_with(state_pages_decode(b.data, b.len, &it, &e), -EBADMSG, &e, "beyond 2^52");
	put_pages_hdr(&b, 1, 0);
	buf_put_u64(&b, 0x3000);
	buf_put_u32(&b, 0x8);
	assert_fails_with(state_pages_decode(b.data, b.len, &it, &e), -EBADMSG, &e,
			  "unknown flags 0x8");
	/* data length must be exact */
	put_pages_hdr(&b, 2, 0);
	buf_put_u64(&b, 0x3000);
	buf_put_u32(&b, 0);
	buf_put_u64(&b, 0x4000);
	buf_put_u32(&b, STATE_PAGE_F_ZERO);
	buf_put_bytes(&b, page, PS - 1);
	assert_fails_with(state_pages_decode(b.data, b.len, &it, &e), -EBADMSG, &e,
			  "4095 data bytes for 1 non-zero pages (expected 4096)");
	buf_put_bytes(&b, page, 2);
	assert_fails_with(state_pages_decode(b.data, b.len, &it, &e), -EBADMSG, &e,
			  "4097 data bytes");
	b.len--;
	assert_int_equal(state_pages_decode(b.data, b.len, &it, &e), 0);
	assert_int_equal(it.count, 2);
	assert_int_equal(it.nr_data, 1);
	buf_free(&b);

	assert_true(page_is_zero(page));
	page[PS - 1] = 1;
	assert_false(page_is_zero(page));
	page[PS - 1] = 0;
	page[0] = 1;
	assert_false(page_is_zero(page));
	page[0] = 0;
}

/* A maximal PAGES batch over a socket: more iovecs than IOV_MAX, short writes, both modes. */
struct sock_writer {
	int fd;
	uint8_t *mem;
	int ret;
	struct errbuf e;
};

static void *sock_writer_main(void *arg)
{
	struct sock_writer *sw = arg;
	struct state_page pages[STATE_PAGES_MAX];
	struct state_writer *w;
	struct state_config c;

	make_config(&c);
	sw->ret = state_writer_open(&w, sw->fd, STATE_KIND_MIGRATION, &sw->e);
	if (sw->ret)
		return NULL;
	sw->ret = state_writer_config(w, &c, &sw->e);
	for (unsigned round = 0; round < 4 && !sw->ret; round++) {
		for (uint32_t i = 0; i < STATE_PAGES_MAX; i++) {
			pages[i].gpa = (uint64_t)i * PS;
			pages[i].data = (i % 5 == 4) ? NULL : sw->mem + (size_t)i * PS;
		}
		sw->ret = state_writer_pages(w, pages, STATE_PAGES_MAX,
					     round % 2 ? STATE_PAGES_STABLE : 0, &sw->e);
	}
	if (!sw->ret)
		sw->ret = state_writer_end(w, &sw->e);
	state_writer_free(w);
	close(sw->fd);
	return NULL;
}

static void test_socket_stream(void **state)
{
	struct sock_writer sw = { 0 };
	struct state_reader *r;
	struct state_record rec;
	struct state_pages_iter it;
	struct state_page pg;
	struct errbuf e;
	pthread_t t;
	int sv[2], bufsz = 4096;
	unsigned batches = 0;

	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	/* small socket buffers force many short writes */
	setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &bufsz, sizeof(bufsz));
	setsockopt(sv[1], SOL_SOCKET, SO_RCVBUF, &bufsz, sizeof(bufsz));
	sw.fd = sv[0];
	sw.mem = malloc((size_t)STATE_PAGES_MAX * PS);
	assert_non_null(sw.mem);
	for (uint32_t i = 0; i < STATE_PAGES_MAX; i++)
		fill_page(sw.mem + (size_t)i * PS, (uint64_t)i * PS);
	assert_int_equal(pthread_create(&t, NULL, sock_writer_main, &sw), 0);
	assert_int_equal(state_reader_open_fd(&r, sv[1], NULL, &e), 0);
	while (!state_reader_ended(r)) {
		assert_int_equal(state_reader_next(r, &rec, &e), 0);
		if (rec.type != STATE_REC_PAGES)
			continue;
		batches++;
		assert_int_equal(state_pages_decode(rec.payload, rec.len, &it, &e), 0);
		for (uint32_t i = 0; state_pages_next(&it, &pg); i++) {
			assert_int_equal(pg.gpa, (uint64_t)i * PS);
			if (i % 5 == 4)
				assert_null(pg.data);
			else
				assert_memory_equal(pg.data, sw.mem + (size_t)i * PS, PS);
		}
	}
	pthread_join(t, NULL);
	assert_int_equal(sw.ret, 0);
	assert_int_equal(batches, 4);
	state_reader_free(r);
	close(sv[1]);
	free(sw.mem);
}

/* A writer whose peer went away gets an error, not SIGPIPE. */
static void test_socket_peer_gone(void **state)
{
	struct state_writer *w;
	struct state_config c;
	struct errbuf e;
	int sv[2], ret;
	static uint8_t blob[200000];

	make_config(&c);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	close(sv[1]);
	assert_int_equal(state_writer_open(&w, sv[0], STATE_KIND_MIGRATION, &e), 0);
	assert_int_equal(state_writer_config(w, &c, &e), 0);
	ret = state_writer_section(w, "vcpu", "0", 1, blob, sizeof(blob), &e);
	assert_int_equal(ret, -EPIPE);
	assert_non_null(strstr(e.msg, "write state stream"));
	assert_fails_with(state_writer_end(w, &e), -EIO, &e, "failed earlier");
	state_writer_free(w);
	close(sv[0]);
}

/* ---- snapshots ---- */

/* Guest memory for make_config(): region 0 and region 1, with zero and non-zero pages. */
struct guest {
	uint8_t *r0, *r1;
	size_t s0, s1;
};

/* Zeroed memory for both regions of c. */
static void guest_alloc(struct guest *g, const struct state_config *c)
{
	g->s0 = c->regions[0].size;
	g->s1 = c->regions[1].size;
	g->r0 = mmap(NULL, g->s0, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	g->r1 = mmap(NULL, g->s1, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_true(g->r0 != MAP_FAILED && g->r1 != MAP_FAILED);
}

static void guest_make(struct guest *g, const struct state_config *c)
{
	guest_alloc(g, c);
	/* every third page of region 0 and every other page of region 1 hold data */
	for (size_t off = 0; off < g->s0; off += 3 * PS)
		fill_page(g->r0 + off, c->regions[0].gpa + off);
	for (size_t off = 0; off < g->s1; off += 2 * PS)
		fill_page(g->r1 + off, c->regions[1].gpa + off);
	g->r0[g->s0 - 1] = 0xaa; /* the last page of the partial chunk */
}

static void guest_free(struct guest *g)
{
	munmap(g->r0, g->s0);
	munmap(g->r1, g->s1);
}

static uint64_t guest_present(const struct guest *g)
{
	uint64_t n = 0;

	for (size_t off = 0; off < g->s0; off += PS)
		n += !page_is_zero(g->r0 + off);
	for (size_t off = 0; off < g->s1; off += PS)
		n += !page_is_zero(g->r1 + off);
	return n;
}

static void snapshot_write(const char *dir, const struct guest *g)
{
	struct snapshot_writer *w;
	struct snapshot_stats st;
	struct state_config c;
	struct errbuf e;

	make_config(&c);
	assert_int_equal(snapshot_writer_begin(dir, &w, &e), 0);
	assert_int_equal(snapshot_writer_config(w, &c, &e), 0);
	assert_int_equal(snapshot_writer_section(w, "vcpu", "0", 1, "vcpu zero", 9, &e), 0);
	assert_int_equal(snapshot_writer_section(w, "vcpu", "1", 1, "vcpu one", 8, &e), 0);
	/* region 0 in two calls, region 1 in one */
	assert_int_equal(snapshot_writer_memory(w, 0, g->r0, 1024 * 1024, &e), 0);
	assert_int_equal(snapshot_writer_memory(w, 1024 * 1024, g->r0 + 1024 * 1024,
						g->s0 - 1024 * 1024, &e), 0);
	assert_int_equal(snapshot_writer_memory(w, c.regions[1].gpa, g->r1, g->s1, &e), 0);
	assert_int_equal(snapshot_writer_section(w, "serial8250", "io:3f8", 3, "", 0, &e), 0);
	snapshot_writer_stats(w, &st);
	assert_int_equal(st.pages_present, guest_present(g));
	assert_int_equal(st.pages_present + st.pages_zero, (g->s0 + g->s1) / PS);
	assert_int_equal(snapshot_writer_commit(w, &e), 0);
}

static void test_snapshot_roundtrip(void **state)
{
	struct snapshot_reader *r;
	const struct snapshot_memory *m;
	const struct state_section *s;
	struct state_config want;
	struct guest g, back;
	struct errbuf e;
	struct stat st;
	char dir[128], snap[160];
	uint64_t first_unused, count_unused;

	make_config(&want);
	guest_make(&g, &want);
	test_dir(dir, sizeof(dir), "roundtrip");
	snprintf(snap, sizeof(snap), "%s/snap/", dir); /* a trailing slash is fine */
	snapshot_write(snap, &g);
	assert_int_equal(dir_entries(dir), 1); /* no temporary directory left */
	/* guest memory is secret: only the owner reads the snapshot, whatever the umask */
	{
		static const char *const names[] = { "", "state", "memory" };

		for (size_t i = 0; i < ARRAY_SIZE(names); i++) {
			char p[200];

			snprintf(p, sizeof(p), "%s%s", snap, names[i]);
			assert_int_equal(stat(p, &st), 0);
			assert_int_equal(st.st_mode & 07777, i ? 0600 : 0700);
		}
	}

	/* a FIFO in place of the state or the memory file is refused at once, never waited on */
	{
		char fsnap[200], p[240];

		snprintf(fsnap, sizeof(fsnap), "%s/fifo-mem", dir);
		snapshot_write(fsnap, &g);
		snprintf(p, sizeof(p), "%s/memory", fsnap);
		assert_int_equal(unlink(p), 0);
		assert_int_equal(mkfifo(p, 0600), 0);
		assert_fails_with(snapshot_open(fsnap, &r, &e), -EINVAL, &e,
				  "memory is not a regular file");
		snprintf(p, sizeof(p), "%s/state", fsnap);
		assert_int_equal(unlink(p), 0);
		assert_int_equal(mkfifo(p, 0600), 0);
		assert_fails_with(snapshot_open(fsnap, &r, &e), -EINVAL, &e,
				  "state is not a regular file");
		assert_fails_with(state_inspect_path(p, stderr, &e), -EINVAL, &e,
				  "not a regular file or a snapshot directory");
		assert_fails_with(state_inspect_dir(fsnap, stderr, &e), -EINVAL, &e,
				  "state is not a regular file");
	}

	assert_int_equal(snapshot_open(snap, &r, &e), 0);
	assert_config_equal(snapshot_config(r), &want);
	assert_int_equal(snapshot_header(r)->kind, STATE_KIND_SNAPSHOT);
	assert_int_equal(snapshot_section_count(r), 3);
	assert_string_equal(snapshot_section(r, 0)->name, "vcpu");
	assert_string_equal(snapshot_section(r, 2)->name, "serial8250");
	assert_null(snapshot_section(r, 3));
	s = snapshot_section_find(r, "vcpu", "1");
	assert_non_null(s);
	assert_int_equal(s->len, 8);
	assert_memory_equal(s->data, "vcpu one", 8);
	assert_null(snapshot_section_find(r, "vcpu", "2"));
	assert_null(snapshot_section_find(r, "memory", "ram")); /* not the caller's */

	m = snapshot_memory(r);
	assert_int_equal(m->nr_pages, (g.s0 + g.s1) / PS);
	assert_int_equal(m->pages_present, guest_present(&g));
	assert_int_equal(m->chunk_size, SNAPSHOT_CHUNK_SIZE);
	assert_int_equal(m->nr_chunks, 3 + 1);
	assert_true(snapshot_memory_page_present(m, 0));
	assert_false(snapshot_memory_page_present(m, 1));
	assert_int_equal(m->regions[1].file_offset, 6 * 1024 * 1024);
	assert_int_equal(snapshot_memory_verify(r, NULL, &e), 0);

	/* the extent view agrees with the guest's non-zero pages */
	for (uint32_t idx = 0; idx < 2; idx++) {
		const uint8_t *base = idx ? g.r1 : g.r0;
		uint64_t pages = (idx ? g.s1 : g.s0) / PS, from = 0, first, count, seen = 0;

		while (snapshot_memory_next_extent(m, idx, from, &first, &count)) {
			assert_true(count > 0);
			for (uint64_t p = from; p < first; p++)
				assert_true(page_is_zero(base + p * PS));
			for (uint64_t p = first; p < first + count; p++)
				assert_false(page_is_zero(base + p * PS));
			seen += count;
			from = first + count;
		}
		for (uint64_t p = from; p < pages; p++)
			assert_true(page_is_zero(base + p * PS));
		assert_true(seen > 0);
	}
	assert_false(snapshot_memory_next_extent(m, 2, 0, &first_unused, &count_unused));

	/* the memory file is sparse: zero pages take no blocks */
	assert_int_equal(fstat(snapshot_memory_fd(r), &st), 0);
	assert_int_equal(st.st_size, m->file_size);
	assert_true((uint64_t)st.st_blocks * 512 < m->file_size / 2);

	/* eager load gives back exactly what was saved */
	back.s0 = g.s0;
	back.s1 = g.s1;
	back.r0 = mmap(NULL, g.s0, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	back.r1 = mmap(NULL, g.s1, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_int_equal(snapshot_memory_load(r, 0, back.r0, &e), 0);
	assert_int_equal(snapshot_memory_load(r, 1, back.r1, &e), 0);
	assert_memory_equal(back.r0, g.r0, g.s0);
	assert_memory_equal(back.r1, g.r1, g.s1);
	assert_int_equal(snapshot_memory_load(r, 2, back.r1, &e), -EINVAL);

	/* a lazy mapping of the memory file sees the same bytes */
	{
		uint8_t *map = mmap(NULL, g.s1, PROT_READ | PROT_WRITE, MAP_PRIVATE,
				    snapshot_memory_fd(r), (off_t)m->regions[1].file_offset);

		assert_true(map != MAP_FAILED);
		assert_memory_equal(map, g.r1, g.s1);
		munmap(map, g.s1);
	}
	snapshot_close(r);
	guest_free(&back);
	guest_free(&g);
}

static void test_snapshot_abort_and_refusals(void **state)
{
	struct snapshot_writer *w;
	struct state_config c;
	struct guest g;
	struct errbuf e;
	char dir[128], snap[160];

	make_config(&c);
	guest_make(&g, &c);
	test_dir(dir, sizeof(dir), "abort");
	snprintf(snap, sizeof(snap), "%s/snap", dir);

	/* abort after writing everything leaves nothing */
	assert_int_equal(snapshot_writer_begin(snap, &w, &e), 0);
	assert_int_equal(dir_entries(dir), 1);
	assert_int_equal(snapshot_writer_config(w, &c, &e), 0);
	assert_int_equal(snapshot_writer_memory(w, 0, g.r0, g.s0, &e), 0);
	assert_int_equal(snapshot_writer_section(w, "vcpu", "0", 1, "x", 1, &e), 0);
	snapshot_writer_abort(w);
	assert_int_equal(dir_entries(dir), 0);

	/* misuse is refused with a message; commit without config cleans up too */
	assert_int_equal(snapshot_writer_begin(snap, &w, &e), 0);
	assert_fails_with(snapshot_writer_section(w, "vcpu", "0", 1, "x", 1, &e), -EPROTO, &e,
			  "the config must come first");
	assert_fails_with(snapshot_writer_commit(w, &e), -EPROTO, &e, "config must come first");
	assert_int_equal(dir_entries(dir), 0);

	assert_int_equal(snapshot_writer_begin(snap, &w, &e), 0);
	assert_int_equal(snapshot_writer_config(w, &c, &e), 0);
	assert_fails_with(snapshot_writer_section(w, "memory", "x", 1, "", 0, &e), -EINVAL, &e,
			  "reserved");
	assert_int_equal(snapshot_writer_section(w, "vcpu", "0", 1, "x", 1, &e), 0);
	assert_fails_with(snapshot_writer_section(w, "vcpu", "0", 1, "x", 1, &e), -EEXIST, &e,
			  "section vcpu@0 given twice");
	assert_fails_with(snapshot_writer_memory(w, 0x1000, g.r0, 100, &e), -EINVAL, &e,
			  "not page-aligned");
	assert_fails_with(snapshot_writer_memory(w, g.s0, g.r0, PS, &e), -EINVAL, &e,
			  "not inside one memory region");
	assert_int_equal(snapshot_writer_memory(w, 0x2000, g.r0, PS, &e), 0);
	assert_fails_with(snapshot_writer_memory(w, 0x1000, g.r0, PS, &e), -EINVAL, &e,
			  "gpa 0x1000 given twice or out of order");
	assert_fails_with(snapshot_writer_commit(w, &e), -EIO, &e, "failed earlier");
	assert_int_equal(dir_entries(dir), 0);

	/* the target appears while writing: commit refuses and leaves it alone */
	assert_int_equal(snapshot_writer_begin(snap, &w, &e), 0);
	assert_int_equal(snapshot_writer_config(w, &c, &e), 0);
	assert_int_equal(mkdir(snap, 0755), 0);
	assert_fails_with(snapshot_writer_commit(w, &e), -EEXIST, &e, "already exists");
	assert_int_equal(dir_entries(dir), 1);
	assert_int_equal(dir_entries(snap), 0);
	assert_fails_with(snapshot_writer_begin(snap, &w, &e), -EEXIST, &e, "already exists");
	rmdir(snap);
	guest_free(&g);
}

/* Snapshot to a directory where writing fails (ENOSPC-like) leaves nothing. */
static void test_snapshot_write_failure(void **state)
{
	struct snapshot_writer *w;
	struct state_config c;
	struct guest g;
	struct errbuf e;
	char dir[128], snap[160];
	int ret;

	make_config(&c);
	guest_make(&g, &c);
	test_dir(dir, sizeof(dir), "wfail");
	snprintf(snap, sizeof(snap), "%s/snap", dir);
	assert_int_equal(snapshot_writer_begin(snap, &w, &e), 0);
	assert_int_equal(snapshot_writer_config(w, &c, &e), 0);
	/* make the memory file unwritable under the writer: replace its fd with a read-only one */
	{
		char tmpl[512];
		DIR *d = opendir(dir);
		struct dirent *de;
		int ro, fd = -1;

		while ((de = readdir(d)))
			if (strstr(de->d_name, "snap.tmp-"))
				snprintf(tmpl, sizeof(tmpl), "%s/%s/memory", dir, de->d_name);
		closedir(d);
		ro = open(tmpl, O_RDONLY);
		assert_true(ro >= 0);
		/* the writer's memory fd is the most recent writable one; find it by probing */
		for (int i = 3; i < 64; i++) {
			char link[64], target[256];
			ssize_t n;

			snprintf(link, sizeof(link), "/proc/self/fd/%d", i);
			n = readlink(link, target, sizeof(target) - 1);
			if (n > 0 && i != ro) {
				target[n] = '\0';
				if (strstr(target, "snap.tmp-") && strstr(target, "/memory"))
					fd = i;
			}
		}
		assert_true(fd >= 0);
		assert_int_equal(dup2(ro, fd), fd);
		close(ro);
	}
	ret = snapshot_writer_memory(w, 0, g.r0, g.s0, &e);
	/* direct writes may still be in flight: their failure shows when they are awaited */
	if (ret == 0)
		ret = snapshot_writer_memory_done(w, &e);
	assert_int_equal(ret, -EBADF);
	assert_non_null(strstr(e.msg, "write memory file"));
	snapshot_writer_abort(w);
	assert_int_equal(dir_entries(dir), 0);
	guest_free(&g);
}

/*
 * A real full filesystem: a 1 MiB tmpfs in a private mount namespace (needs root; skipped
 * otherwise). Running out of space in the memory file or in the state file fails cleanly and
 * leaves nothing behind.
 */
static int full_fs_child(const char *dir)
{
	static uint8_t big[2 * 1024 * 1024];
	struct snapshot_writer *w;
	struct state_config c;
	struct guest g;
	struct errbuf e;
	char snap[200];
	int ret;

	if (unshare(CLONE_NEWNS) < 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0 ||
	    mount("tmpfs", dir, "tmpfs", 0, "size=1m") < 0)
		return 77;
	make_config(&c);
	guest_make(&g, &c);
	for (size_t off = 0; off < g.s0; off += PS) /* more data than fits */
		fill_page(g.r0 + off, off);
	snprintf(snap, sizeof(snap), "%s/snap", dir);
	if (snapshot_writer_begin(snap, &w, &e) || snapshot_writer_config(w, &c, &e))
		return 1;
	ret = snapshot_writer_memory(w, 0, g.r0, g.s0, &e);
	if (ret == 0)
		ret = snapshot_writer_memory_done(w, &e);
	snapshot_writer_abort(w);
	if (ret != -ENOSPC || !strstr(e.msg, "No space left") || dir_entries(dir) != 0)
		return 2;
	/* now the state file: little memory, one big section */
	memset(big, 0x77, sizeof(big));
	if (snapshot_writer_begin(snap, &w, &e) || snapshot_writer_config(w, &c, &e))
		return 3;
	ret = snapshot_writer_section(w, "blob", "0", 1, big, sizeof(big), &e);
	if (!ret)
		ret = snapshot_writer_commit(w, &e);
	else
		snapshot_writer_abort(w);
	if (ret != -ENOSPC || dir_entries(dir) != 0)
		return 4;
	guest_free(&g);
	return 0;
}

static void test_snapshot_full_filesystem(void **state)
{
	char dir[128];
	int status;
	pid_t pid;

	if (geteuid() != 0)
		skip();
	test_dir(dir, sizeof(dir), "fullfs");
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0)
		_exit(full_fs_child(dir));
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	if (WEXITSTATUS(status) == 77)
		skip();
	assert_int_equal(WEXITSTATUS(status), 0);
}

static void flip_file_byte(const char *path, off_t off)
{
	uint8_t c;
	int fd = open(path, O_RDWR);

	assert_true(fd >= 0);
	assert_int_equal(io_pread_full(fd, &c, 1, off), 0);
	c ^= 0x10;
	assert_int_equal(io_pwrite_full(fd, &c, 1, off), 0);
	close(fd);
}

/* A snapshot of g in a fresh test directory called name; snap and mem get its paths. */
static void snapshot_write_new(const char *name, const struct guest *g, char snap[160],
			       char mem[200])
{
	char dir[128];

	test_dir(dir, sizeof(dir), name);
	snprintf(snap, 160, "%s/snap", dir);
	snprintf(mem, 200, "%s/memory", snap);
	snapshot_write(snap, g);
}

static void test_snapshot_memory_corruption(void **state)
{
	struct snapshot_reader *r;
	struct state_config c;
	struct guest g, back;
	struct errbuf e;
	char snap[160], mem[200];

	make_config(&c);
	guest_make(&g, &c);
	snapshot_write_new("memflip", &g, snap, mem);

	/* a flipped byte in a present page: verify and load both catch it */
	flip_file_byte(mem, 3 * PS + 100);
	assert_int_equal(snapshot_open(snap, &r, &e), 0); /* open does not read memory */
	assert_fails_with(snapshot_memory_verify(r, NULL, &e), -EBADMSG, &e,
			  "memory chunk 0 (gpa 0x0-0x1fffff, file offset 0x0): CRC mismatch");
	back.s0 = g.s0;
	back.r0 = mmap(NULL, g.s0, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_fails_with(snapshot_memory_load(r, 0, back.r0, &e), -EBADMSG, &e, "CRC mismatch");
	munmap(back.r0, back.s0);
	snapshot_close(r);
	flip_file_byte(mem, 3 * PS + 100);

	/* data written into a hole (a page the index calls zero) */
	flip_file_byte(mem, 4 * PS + 5);
	assert_int_equal(snapshot_open(snap, &r, &e), 0);
	assert_fails_with(snapshot_memory_verify(r, NULL, &e), -EBADMSG, &e,
			  "page 4 is zero in the index but holds data");
	snapshot_close(r);
	flip_file_byte(mem, 4 * PS + 5);

	/* data between regions */
	flip_file_byte(mem, 6 * 1024 * 1024 - PS);
	assert_int_equal(snapshot_open(snap, &r, &e), 0);
	assert_fails_with(snapshot_memory_verify(r, NULL, &e), -EBADMSG, &e, "between regions");
	snapshot_close(r);
	flip_file_byte(mem, 6 * 1024 * 1024 - PS);

	/* all clean again */
	assert_int_equal(snapshot_open(snap, &r, &e), 0);
	assert_int_equal(snapshot_memory_verify(r, NULL, &e), 0);
	snapshot_close(r);

	/* a truncated memory file is refused at open */
	assert_int_equal(truncate(mem, 6 * 1024 * 1024), 0);
	assert_fails_with(snapshot_open(snap, &r, &e), -EBADMSG, &e,
			  "memory file is 6291456 bytes, the index says");
	guest_free(&g);
}

/*
 * Guest memory whose present pages in region 0 make every kind of read the eager load
 * issues: single pages, a gap of 16 absent pages (read through) and of 17 (split), a long
 * run, a chunk of alternating pages (more pieces than one read takes), and a partial last
 * chunk; region 1 is one run.
 */
static void guest_make_pattern(struct guest *g, const struct state_config *c)
{
	static const uint64_t single[] = { 0, 2, 19, 37, 1282 };

	guest_alloc(g, c);
	for (size_t i = 0; i < ARRAY_SIZE(single); i++)
		fill_page(g->r0 + single[i] * PS, single[i] * PS);
	for (uint64_t pg = 40; pg < 300; pg++)
		fill_page(g->r0 + pg * PS, pg * PS);
	for (uint64_t pg = 512; pg < 1024; pg += 2)
		fill_page(g->r0 + pg * PS, pg * PS);
	for (uint64_t pg = 1100; pg < 1200; pg++)
		fill_page(g->r0 + pg * PS, pg * PS);
	for (size_t off = 0; off < g->s1; off += PS)
		fill_page(g->r1 + off, c->regions[1].gpa + off);
}

/* Which pages of the memory file are in the page cache (the file mapped, nothing faulted). */
static unsigned char *file_pages_cached_map(const char *path, size_t *npages)
{
	int fd = open(path, O_RDONLY);
	struct stat st;
	unsigned char *vec;
	void *map;

	assert_true(fd >= 0);
	assert_int_equal(fstat(fd, &st), 0);
	*npages = (size_t)st.st_size / PS;
	map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
	assert_true(map != MAP_FAILED);
	vec = calloc(*npages, 1);
	assert_non_null(vec);
	assert_int_equal(mincore(map, (size_t)st.st_size, vec), 0);
	for (size_t i = 0; i < *npages; i++)
		vec[i] &= 1;
	munmap(map, (size_t)st.st_size);
	close(fd);
	return vec;
}

/* How many of the memory file's pages are in the page cache. */
static uint64_t file_pages_cached(const char *path)
{
	size_t npages;
	unsigned char *vec = file_pages_cached_map(path, &npages);
	uint64_t n = 0;

	for (size_t i = 0; i < npages; i++)
		n += vec[i];
	free(vec);
	return n;
}

/* Loads both regions of r into back (zeroed) and checks they hold g's memory. */
static void snapshot_load_check(struct snapshot_reader *r, struct guest *back,
				const struct guest *g)
{
	struct errbuf e;

	memset(back->r0, 0, back->s0);
	memset(back->r1, 0, back->s1);
	assert_int_equal(snapshot_memory_load(r, 0, back->r0, &e), 0);
	assert_int_equal(snapshot_memory_load(r, 1, back->r1, &e), 0);
	assert_memory_equal(back->r0, g->r0, g->s0);
	assert_memory_equal(back->r1, g->r1, g->s1);
}

static void file_evict(const char *path)
{
	int fd = open(path, O_RDONLY);

	assert_true(fd >= 0);
	assert_int_equal(fsync(fd), 0);
	assert_int_equal(posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED), 0);
	close(fd);
}

/*
 * One call for a whole region of several chunks, as the VM hands the writer adjacent touched
 * ranges together: runs longer than a chunk, cut at the direct writes' longest run, at a zero
 * page and at a zero chunk, give back every page, with holes where the memory was zero.
 */
static void test_snapshot_long_runs(void **state)
{
	const uint64_t zero_page = 4 * 1024 * 1024 + 5 * PS, hole = 8 * 1024 * 1024;
	struct snapshot_writer *w;
	struct snapshot_reader *r;
	struct snapshot_stats st;
	struct state_config c;
	struct guest g, back;
	struct errbuf e;
	struct stat sb;
	char dir[128], snap[160];

	(void)state;
	make_config(&c);
	c.regions[0].size = 13 * 1024 * 1024 + 3 * PS;
	guest_alloc(&g, &c);
	for (size_t off = 0; off < g.s0; off += PS)
		if (off != zero_page && (off < hole || off >= hole + 2 * 1024 * 1024))
			fill_page(g.r0 + off, off);
	fill_page(g.r1, c.regions[1].gpa);
	test_dir(dir, sizeof(dir), "longruns");
	snprintf(snap, sizeof(snap), "%s/snap", dir);
	assert_int_equal(snapshot_writer_begin(snap, &w, &e), 0);
	assert_int_equal(snapshot_writer_config(w, &c, &e), 0);
	assert_int_equal(snapshot_writer_memory(w, 0, g.r0, g.s0, &e), 0);
	assert_int_equal(snapshot_writer_memory(w, c.regions[1].gpa, g.r1, g.s1, &e), 0);
	snapshot_writer_stats(w, &st);
	assert_int_equal(st.pages_present, guest_present(&g));
	assert_int_equal(snapshot_writer_commit(w, &e), 0);

	assert_int_equal(snapshot_open(snap, &r, &e), 0);
	assert_int_equal(snapshot_memory(r)->pages_present, guest_present(&g));
	assert_int_equal(snapshot_memory_verify(r, NULL, &e), 0);
	guest_alloc(&back, &c);
	snapshot_load_check(r, &back, &g);
	/* the zero chunk is a hole in the file */
	assert_int_equal(fstat(snapshot_memory_fd(r), &sb), 0);
	assert_true((uint64_t)sb.st_blocks * 512 <= snapshot_memory(r)->file_size - 2 * 1024 * 1024);
	snapshot_close(r);
	guest_free(&back);
	guest_free(&g);
}

/*
 * Eager load gives back exactly the present pages however they lie; data hidden in holes
 * that a read spans never reaches guest memory; and a buffer O_DIRECT refuses (misaligned)
 * still loads, through the page cache.
 */
static void test_snapshot_load_pattern(void **state)
{
	struct snapshot_reader *r;
	struct state_config c;
	struct guest g, back;
	struct errbuf e;
	char snap[160], mem[200];
	uint8_t *odd;

	make_config(&c);
	guest_make_pattern(&g, &c);
	snapshot_write_new("loadpattern", &g, snap, mem);
	/* pages 1 and 10 are absent but inside reads: one gap of 1, one of 16 */
	flip_file_byte(mem, 1 * PS + 7);
	flip_file_byte(mem, 10 * PS + 9);

	assert_int_equal(snapshot_open(snap, &r, &e), 0);
	guest_alloc(&back, &c);
	snapshot_load_check(r, &back, &g);

	/* an odd address: O_DIRECT refuses it, the page-cache read does not */
	odd = mmap(NULL, g.s0 + PS, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_true(odd != MAP_FAILED);
	assert_int_equal(snapshot_memory_load(r, 0, odd + 1, &e), 0);
	assert_memory_equal(odd + 1, g.r0, g.s0);
	snapshot_close(r);

	/* a flipped byte in the alternating chunk (not the first read of it) is still caught */
	flip_file_byte(mem, 1020 * PS + 3);
	assert_int_equal(snapshot_open(snap, &r, &e), 0);
	memset(odd, 0, g.s0 + PS);
	assert_fails_with(snapshot_memory_load(r, 0, odd, &e), -EBADMSG, &e,
			  "memory chunk 1 (gpa 0x200000-0x3fffff, file offset 0x200000): CRC");
	snapshot_close(r);
	munmap(odd, g.s0 + PS);
	guest_free(&back);
	guest_free(&g);
}

/*
 * Random present-page patterns of every density, with data written over every absent page
 * of the file: the load gives exactly the present pages and zero everywhere else.
 */
static void test_snapshot_load_random(void **state)
{
	struct state_config c;
	uint64_t seed = 0x5eed;

	make_config(&c);
	for (int iter = 0; iter < 8; iter++) {
		struct snapshot_reader *r;
		struct guest g, back;
		struct errbuf e;
		char snap[160], mem[200], name[32];
		uint8_t junk[PS];
		unsigned density = 1 + iter * 13 % 97; /* percent of pages present */
		int fd;

		bool on = false;

		guest_alloc(&g, &c);
		for (size_t off = 0; off < g.s0; off += PS) {
			seed = seed * 6364136223846793005ull + 1442695040888963407ull;
			/* a fresh draw for every other page, or for one in 16 (long runs and gaps) */
			if ((seed >> 50) % (iter % 2 ? 16 : 2) == 0)
				on = (seed >> 33) % 100 < density;
			if (on)
				fill_page(g.r0 + off, off);
		}
		snprintf(name, sizeof(name), "loadrandom%d", iter);
		snapshot_write_new(name, &g, snap, mem);
		memset(junk, 0xee, sizeof(junk));
		fd = open(mem, O_WRONLY);
		assert_true(fd >= 0);
		for (size_t off = 0; off < g.s0; off += PS)
			if (page_is_zero(g.r0 + off))
				assert_int_equal(io_pwrite_full(fd, junk, PS, (off_t)off), 0);
		close(fd);
		assert_int_equal(snapshot_open(snap, &r, &e), 0);
		guest_alloc(&back, &c);
		assert_int_equal(snapshot_memory_load(r, 0, back.r0, &e), 0);
		assert_memory_equal(back.r0, g.r0, g.s0);
		snapshot_close(r);
		guest_free(&back);
		guest_free(&g);
	}
}

/* Bytes this process had read from storage (/proc/self/io read_bytes), or -1 if unknown. */
static long long proc_read_bytes(void)
{
	FILE *f = fopen("/proc/self/io", "r");
	char line[128];
	long long v = -1;

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "read_bytes: %lld", &v) == 1)
			break;
	fclose(f);
	return v;
}

/* Skips the test unless mem can be opened O_DIRECT and evicted from the page cache. */
static void memory_file_evict_or_skip(const char *mem, struct guest *g)
{
	int fd = open(mem, O_RDONLY | O_DIRECT);

	if (fd < 0) {
		print_message("no O_DIRECT for %s: %s\n", mem, strerror(errno));
		guest_free(g);
		skip();
	}
	close(fd);
	file_evict(mem);
	if (file_pages_cached(mem) != 0) {
		print_message("the page cache kept %s after POSIX_FADV_DONTNEED\n", mem);
		guest_free(g);
		skip();
	}
}

/*
 * Eager load reads around the page cache where the filesystem allows O_DIRECT: restoring a
 * snapshot neither pays for filling the cache nor leaves the guest's memory in it twice.
 */
static void test_snapshot_load_uncached(void **state)
{
	struct snapshot_reader *r;
	struct state_config c;
	struct guest g, back;
	struct errbuf e;
	char snap[160], mem[200];

	make_config(&c);
	guest_make_pattern(&g, &c);
	snapshot_write_new("loaduncached", &g, snap, mem);
	memory_file_evict_or_skip(mem, &g);
	assert_int_equal(snapshot_open(snap, &r, &e), 0);
	guest_alloc(&back, &c);
	snapshot_load_check(r, &back, &g);
	assert_int_equal(file_pages_cached(mem), 0);
	snapshot_close(r);
	guest_free(&back);
	guest_free(&g);
}

/*
 * What the page cache holds is copied from it, not read from the disk again, and the rest is
 * still read around the cache: with chunks 0 and 2 of region 0 cached and chunk 1 not, the
 * load reads from storage no more than chunk 1's span, gives the same bytes, and leaves the
 * cache as it was; with the whole file cached it reads nothing from storage. (O_DIRECT reads
 * of cached pages count in read_bytes: the old code read every present page again.)
 */
static void test_snapshot_load_cached(void **state)
{
	const struct snapshot_mem_region *rg;
	struct snapshot_load_stats ls;
	struct snapshot_reader *r;
	unsigned char *before, *after;
	struct state_config c;
	struct guest g, back;
	size_t npages, n2;
	struct errbuf e;
	char snap[160], mem[200];
	long long rb;
	uint8_t *buf;
	int fd;

	make_config(&c);
	guest_make_pattern(&g, &c);
	snapshot_write_new("loadcached", &g, snap, mem);
	memory_file_evict_or_skip(mem, &g);
	if (proc_read_bytes() < 0) {
		print_message("no read_bytes in /proc/self/io\n");
		guest_free(&g);
		skip();
	}
	assert_int_equal(snapshot_open(snap, &r, &e), 0);
	rg = &snapshot_memory(r)->regions[0];
	assert_int_equal(snapshot_memory(r)->chunk_size, 512 * PS);
	/* chunks 0 and 2 of region 0 into the cache, chunk 1 (pages 512-1023) not */
	fd = open(mem, O_RDONLY);
	assert_true(fd >= 0);
	assert_int_equal(posix_fadvise(fd, 0, 0, POSIX_FADV_RANDOM), 0); /* no readahead */
	buf = malloc(512 * PS);
	assert_non_null(buf);
	assert_int_equal(io_pread_full(fd, buf, 512 * PS, (off_t)rg->file_offset), 0);
	assert_int_equal(io_pread_full(fd, buf, 512 * PS, (off_t)(rg->file_offset + 1024 * PS)),
			 0);
	free(buf);
	close(fd);
	before = file_pages_cached_map(mem, &npages);
	if (!before[rg->file_offset / PS + 1100] || before[rg->file_offset / PS + 700]) {
		print_message("the page cache did not keep chunk 2 or read ahead into chunk 1\n");
		free(before);
		snapshot_close(r);
		guest_free(&g);
		skip();
	}

	guest_alloc(&back, &c);
	rb = proc_read_bytes();
	assert_int_equal(snapshot_memory_load(r, 0, back.r0, &e), 0);
	rb = proc_read_bytes() - rb;
	assert_memory_equal(back.r0, g.r0, g.s0);
	if (rb > (long long)(512 * PS)) {
		print_message("read %lld bytes from storage, chunk 1 spans %llu\n", rb,
			      (unsigned long long)(512 * PS));
		fail();
	}
	/* chunk 0: pages 0, 2, 19, 37, 40-299; chunk 2: 1100-1199, 1282; chunk 1: every other */
	snapshot_load_stats(r, &ls);
	assert_int_equal(ls.cached_bytes, (4 + 260 + 101) * PS);
	assert_int_equal(ls.direct_bytes, 256 * PS);
	after = file_pages_cached_map(mem, &n2);
	assert_int_equal(n2, npages);
	assert_memory_equal(after, before, npages);
	free(after);
	free(before);

	/* the whole file cached: nothing read from storage */
	fd = open(mem, O_RDONLY);
	assert_true(fd >= 0);
	{
		size_t len;

		free(read_fd_all(fd, &len));
	}
	close(fd);
	rb = proc_read_bytes();
	snapshot_load_check(r, &back, &g);
	rb = proc_read_bytes() - rb;
	if (rb != 0) {
		print_message("read %lld bytes from storage with the whole file cached\n", rb);
		fail();
	}
	snapshot_close(r);
	guest_free(&back);
	guest_free(&g);
}

/* A smaps field (kB) of the mapping holding addr, or -1 if there is no such line. */
static long long smaps_field(const void *addr, const char *field)
{
	FILE *f = fopen("/proc/self/smaps", "r");
	char line[256];
	bool in = false;
	long long v = -1;

	assert_non_null(f);
	while (fgets(line, sizeof(line), f)) {
		unsigned long lo, hi;
		char name[64];

		if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && strchr(line, '-') < strchr(line, ' ')) {
			if (in)
				break;
			in = (uintptr_t)addr >= lo && (uintptr_t)addr < hi;
			continue;
		}
		if (in && sscanf(line, "%63[^:]: %lld", name, &v) == 2 && !strcmp(name, field))
			break;
		v = -1;
	}
	fclose(f);
	return v;
}

/* A /proc/vmstat counter. */
static long long vmstat_get(const char *name)
{
	FILE *f = fopen("/proc/vmstat", "r");
	char key[64];
	long long v, found = -1;

	assert_non_null(f);
	while (fscanf(f, "%63s %lld", key, &v) == 2)
		if (!strcmp(key, name))
			found = v;
	fclose(f);
	return found;
}

/* size bytes of fresh anonymous memory starting on a 2 MiB boundary; *base, *len to unmap. */
static uint8_t *alloc_huge_aligned(size_t size, void **base, size_t *len)
{
	*len = size + 2 * 1024 * 1024;
	*base = mmap(NULL, *len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_true(*base != MAP_FAILED);
	return (uint8_t *)ALIGN_UP((uintptr_t)*base, 2ull * 1024 * 1024);
}

/*
 * Eager load populates a dense region with huge pages where the system leaves them to
 * madvise() (the first chunk always: the switch back to small pages comes only after a slow
 * one), never a sparse one (a huge page per chunk of a few pages would multiply its memory),
 * and leaves the region's policy as the default for the guest's own later faults.
 */
static void test_snapshot_load_huge(void **state)
{
	struct snapshot_reader *r;
	struct state_config c;
	struct guest g, sparse;
	struct errbuf e;
	char snap[160], mem[200], thp[128] = "";
	long long fallback;
	uint8_t *host;
	size_t len;
	void *base;
	int fd;

	fd = open("/sys/kernel/mm/transparent_hugepage/enabled", O_RDONLY);
	if (fd >= 0) {
		assert_true(read(fd, thp, sizeof(thp) - 1) >= 0);
		close(fd);
	}
	if (!strstr(thp, "[madvise]")) {
		print_message("transparent huge pages are not left to madvise() here: '%s'\n", thp);
		skip();
	}
	make_config(&c);
	/* region 0: chunks 0 and 1 full, the partial chunk 2 empty; region 1 full */
	guest_alloc(&g, &c);
	for (size_t off = 0; off < 4 * 1024 * 1024; off += PS)
		fill_page(g.r0 + off, off);
	for (size_t off = 0; off < g.s1; off += PS)
		fill_page(g.r1 + off, c.regions[1].gpa + off);
	snapshot_write_new("loadhuge", &g, snap, mem);
	assert_int_equal(snapshot_open(snap, &r, &e), 0);
	host = alloc_huge_aligned(g.s0, &base, &len);
	fallback = vmstat_get("thp_fault_fallback");
	assert_int_equal(snapshot_memory_load(r, 0, host, &e), 0);
	assert_memory_equal(host, g.r0, g.s0);
	if (smaps_field(host, "AnonHugePages") < 2048 &&
	    vmstat_get("thp_fault_fallback") > fallback) {
		print_message("the kernel had no huge page to give\n");
		skip();
	}
	assert_true(smaps_field(host, "AnonHugePages") >= 2048);
	assert_int_equal(smaps_field(host, "THPeligible"), 0);
	munmap(base, len);
	snapshot_close(r);

	/* every third page present: small pages only */
	guest_make(&sparse, &c);
	snapshot_write_new("loadhugesparse", &sparse, snap, mem);
	assert_int_equal(snapshot_open(snap, &r, &e), 0);
	host = alloc_huge_aligned(sparse.s0, &base, &len);
	assert_int_equal(snapshot_memory_load(r, 0, host, &e), 0);
	assert_memory_equal(host, sparse.r0, sparse.s0);
	assert_int_equal(smaps_field(host, "AnonHugePages"), 0);
	munmap(base, len);
	snapshot_close(r);
	guest_free(&sparse);
	guest_free(&g);
}

static void test_snapshot_state_corruption(void **state)
{
	struct snapshot_reader *r;
	struct state_config c;
	struct guest g;
	struct errbuf e;
	char dir[128], snap[160], path[200];
	uint8_t *orig;
	size_t len;
	int fd;

	make_config(&c);
	guest_make(&g, &c);
	test_dir(dir, sizeof(dir), "stateflip");
	snprintf(snap, sizeof(snap), "%s/snap", dir);
	snprintf(path, sizeof(path), "%s/state", snap);
	snapshot_write(snap, &g);
	fd = open(path, O_RDWR);
	orig = read_fd_all(fd, &len);

	/* every byte of the state file matters */
	for (size_t i = 0; i < len; i += (i < 256 ? 1 : 7)) {
		uint8_t c2 = orig[i] ^ 0x04;

		assert_int_equal(io_pwrite_full(fd, &c2, 1, (off_t)i), 0);
		if (snapshot_open(snap, &r, &e) == 0)
			fail_msg("flipped state byte at %zu not detected", i);
		assert_int_equal(io_pwrite_full(fd, orig + i, 1, (off_t)i), 0);
	}
	/* truncated anywhere */
	for (size_t cut = 0; cut < len; cut += (cut < 256 ? 1 : 13)) {
		assert_int_equal(ftruncate(fd, (off_t)cut), 0);
		if (snapshot_open(snap, &r, &e) == 0)
			fail_msg("state truncated at %zu not detected", cut);
	}
	assert_int_equal(ftruncate(fd, 0), 0);
	assert_int_equal(io_pwrite_full(fd, orig, len, 0), 0);
	assert_int_equal(snapshot_open(snap, &r, &e), 0);
	snapshot_close(r);
	/* a message names the problem */
	assert_int_equal(ftruncate(fd, (off_t)len - 3), 0);
	assert_fails_with(snapshot_open(snap, &r, &e), -EPIPE, &e, "snapshot ");
	assert_non_null(strstr(e.msg, "truncated"));
	assert_int_equal(ftruncate(fd, 0), 0);
	assert_int_equal(io_pwrite_full(fd, orig, len, 0), 0);
	close(fd);
	free(orig);
	guest_free(&g);
}

static void test_not_a_snapshot(void **state)
{
	struct snapshot_reader *r;
	struct errbuf e;
	char dir[128], path[200];
	int fd;

	test_dir(dir, sizeof(dir), "notsnap");
	assert_fails_with(snapshot_open(dir, &r, &e), -ENOENT, &e,
			  "is not a godwit snapshot (no state file)");
	assert_non_null(strstr(e.msg, dir));
	assert_fails_with(state_inspect_dir(dir, stdout, &e), -ENOENT, &e,
			  "is not a godwit snapshot (no state file)");
	snprintf(path, sizeof(path), "%s/file", dir);
	fd = open(path, O_CREAT | O_WRONLY, 0644);
	assert_int_equal(io_write_full(fd, "hello", 5), 0);
	close(fd);
	assert_fails_with(snapshot_open(path, &r, &e), -ENOTDIR, &e, "not a directory");
	snprintf(path, sizeof(path), "%s/missing", dir);
	assert_fails_with(snapshot_open(path, &r, &e), -ENOENT, &e, "No such file");
	/* a state file that is something else entirely */
	snprintf(path, sizeof(path), "%s/state", dir);
	fd = open(path, O_CREAT | O_WRONLY, 0644);
	assert_int_equal(io_write_full(fd, "#!/bin/sh\necho hi\n", 18), 0);
	close(fd);
	assert_fails_with(snapshot_open(dir, &r, &e), -EBADMSG, &e, "bad magic");
	/* an empty state file (a crash before anything was written) */
	assert_int_equal(truncate(path, 0), 0);
	assert_fails_with(snapshot_open(dir, &r, &e), -EPIPE, &e, "stream is empty");
}

/* inspect prints everything it can and flags what is wrong. */
static void test_inspect(void **state)
{
	struct state_config c;
	struct guest g;
	struct errbuf e;
	char dir[128], snap[160], path[200];
	char *text;
	size_t text_len;
	FILE *out;
	uint8_t *stream;
	size_t len;

	make_config(&c);
	guest_make(&g, &c);
	test_dir(dir, sizeof(dir), "inspect");
	snprintf(snap, sizeof(snap), "%s/snap", dir);
	snapshot_write(snap, &g);

	/*
	 * The sections are this test's own bytes, not a VM's: well framed, but the loader's own
	 * checks (vm_sections_check, as a restore runs them) refuse them, and so does inspect.
	 */
	out = open_memstream(&text, &text_len);
	assert_fails_with(state_inspect_dir(snap, out, &e), -EBADMSG, &e,
			  "1 problem found, the first: section vcpu@0: vcpu state: version 1 not "
			  "supported");
	fclose(out);
	assert_non_null(strstr(text, "format version 2, page size 4096"));
	assert_non_null(strstr(text, "2 vCPUs"));
	assert_non_null(strstr(text, "vcpu@1 version 1, 8 bytes"));
	assert_non_null(strstr(text, "serial8250@io:3f8 version 3"));
	assert_non_null(strstr(text, "zero pages skipped"));
	assert_non_null(strstr(text, "all chunk CRCs ok"));
	assert_non_null(strstr(text, "1 problem\n"));
	free(text);

	/* corrupt the first section's payload and a memory page: both flagged, walk goes on */
	{
		struct snapshot_reader *r;
		uint8_t *st;
		size_t st_len, off = STATE_HEADER_SIZE;
		int fd;

		snprintf(path, sizeof(path), "%s/state", snap);
		fd = open(path, O_RDONLY);
		st = read_fd_all(fd, &st_len);
		close(fd);
		off += 16 + (size_t)le_get64(st + off + 4) + 4; /* past CONFIG */
		free(st);
		flip_file_byte(path, (off_t)(off + 16 + 3));
		snprintf(path, sizeof(path), "%s/memory", snap);
		flip_file_byte(path, 0);
		assert_int_equal(snapshot_open(snap, &r, &e), -EBADMSG);
	}
	out = open_memstream(&text, &text_len);
	/* the CRC, the memory page, and the sections (vcpu@1 is no VM's either) */
	assert_fails_with(state_inspect_dir(snap, out, &e), -EBADMSG, &e, "3 problems found");
	fclose(out);
	assert_non_null(strstr(text, "CRC mismatch"));
	assert_non_null(strstr(text, "vcpu@1 version 1")); /* the next section is still shown */
	assert_non_null(strstr(text, "serial8250@io:3f8"));
	assert_non_null(strstr(text, "memory chunk 0"));
	assert_non_null(strstr(text, "zero pages skipped"));
	free(text);

	/* a captured migration stream */
	stream = reference_stream(&len);
	out = open_memstream(&text, &text_len);
	assert_fails_with(state_inspect_buf(stream, len, out, &e), -EBADMSG, &e,
			  "1 problem found, the first: section vcpu@0: vcpu state: version 1");
	fclose(out);
	assert_non_null(strstr(text, "migration stream"));
	assert_non_null(strstr(text, "PAGES    x2"));
	assert_non_null(strstr(text, "5 pages (2 zero"));
	assert_non_null(strstr(text, "control message 0x100"));
	free(text);
	snprintf(path, sizeof(path), "%s/stream", dir);
	{
		int fd = open(path, O_CREAT | O_RDWR, 0644);

		stream[len - 40] ^= 1; /* inside the last PAGES record's data */
		assert_int_equal(io_write_full(fd, stream, len - 7), 0);
		close(fd);
	}
	out = open_memstream(&text, &text_len);
	assert_fails_with(state_inspect_path(path, out, &e), -EBADMSG, &e, "2 problems found");
	fclose(out);
	assert_non_null(strstr(text, "PAGES    x1"));
	assert_non_null(strstr(text, "BAD"));
	assert_non_null(strstr(text, "truncated"));
	free(text);
	free(stream);
	guest_free(&g);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_stream_roundtrip_mem),
		cmocka_unit_test(test_stream_roundtrip_fd),
		cmocka_unit_test(test_truncated_everywhere),
		cmocka_unit_test(test_flipped_byte_everywhere),
		cmocka_unit_test(test_flipped_byte_message),
		cmocka_unit_test(test_bad_headers),
		cmocka_unit_test(test_record_errors),
		cmocka_unit_test(test_writer_order),
		cmocka_unit_test(test_config_validation),
		cmocka_unit_test(test_config_devices),
		cmocka_unit_test(test_section_codec),
		cmocka_unit_test(test_pages_codec),
		cmocka_unit_test(test_pages_zstd_roundtrip),
		cmocka_unit_test(test_pages_zstd_hostile),
		cmocka_unit_test(test_pages_delta_roundtrip),
		cmocka_unit_test(test_pages_delta_hostile),
		cmocka_unit_test(test_socket_stream),
		cmocka_unit_test(test_socket_peer_gone),
		cmocka_unit_test(test_snapshot_roundtrip),
		cmocka_unit_test(test_snapshot_abort_and_refusals),
		cmocka_unit_test(test_snapshot_write_failure),
		cmocka_unit_test(test_snapshot_full_filesystem),
		cmocka_unit_test(test_snapshot_memory_corruption),
		cmocka_unit_test(test_snapshot_long_runs),
		cmocka_unit_test(test_snapshot_load_pattern),
		cmocka_unit_test(test_snapshot_load_random),
		cmocka_unit_test(test_snapshot_load_uncached),
		cmocka_unit_test(test_snapshot_load_cached),
		cmocka_unit_test(test_snapshot_load_huge),
		cmocka_unit_test(test_snapshot_state_corruption),
		cmocka_unit_test(test_not_a_snapshot),
		cmocka_unit_test(test_inspect),
	};

	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
