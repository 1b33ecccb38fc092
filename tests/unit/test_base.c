/* SPDX-License-Identifier: MIT */
/* Unit tests for base/: size and number parsing, state buffers, error messages, event loop. */
#include "base/buf.h"
#include "base/evloop.h"
#include "base/util.h"

#include <dirent.h>
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

static void size_ok(const char *s, uint64_t want)
{
	uint64_t v = 0;
	int ret = parse_size(s, &v);

	if (ret != 0 || v != want)
		fail_msg("parse_size(\"%s\") = %d, %llu; want 0, %llu", s, ret,
			 (unsigned long long)v, (unsigned long long)want);
}

static void size_bad(const char *s, int want)
{
	uint64_t v = 12345;
	int ret = parse_size(s, &v);

	if (ret != want)
		fail_msg("parse_size(\"%s\") = %d, want %d", s ? s : "(null)", ret, want);
	assert_int_equal(v, 12345); /* untouched on failure */
}

static void test_parse_size(void **state)
{
	size_ok("64M", 64 * MiB);
	size_ok("1G", GiB);
	size_ok("8G", 8 * GiB);
	size_ok("4096", 4096);
	size_ok("1GiB", GiB);
	size_ok("512K", 512 * KiB);
	size_ok("512k", 512 * KiB);
	size_ok("2T", 2 * 1024 * GiB);
	size_ok("64MB", 64 * MiB);
	size_ok("64mib", 64 * MiB);
	size_ok("1", 1);
	size_ok("16777215T", 16777215ull << 40);
	size_ok("18446744073709551615", UINT64_MAX);

	size_bad("", -EINVAL);
	size_bad(NULL, -EINVAL);
	size_bad("junk", -EINVAL);
	size_bad("M", -EINVAL);
	size_bad("12X", -EINVAL);
	size_bad("1.5G", -EINVAL);
	size_bad("1iB", -EINVAL);
	size_bad("1GiBs", -EINVAL);
	size_bad("1 G", -EINVAL);
	size_bad(" 1G", -EINVAL);
	size_bad("1G ", -EINVAL);
	size_bad("0", -EINVAL);
	size_bad("0M", -EINVAL);
	size_bad("-1", -EINVAL);
	size_bad("-1G", -EINVAL);
	size_bad("+1G", -EINVAL);
	size_bad("0x10", -EINVAL);
	size_bad("18446744073709551616", -ERANGE);
	size_bad("99999999999999999999999", -ERANGE);
	size_bad("16777216T", -ERANGE);
	size_bad("17179869184G", -ERANGE);
	size_bad("18014398509481984K", -ERANGE);
}

static void test_parse_u64(void **state)
{
	uint64_t v = 7;

	assert_int_equal(parse_u64("0", 0, 10, &v), 0);
	assert_int_equal(v, 0);
	assert_int_equal(parse_u64("10", 1, 10, &v), 0);
	assert_int_equal(v, 10);
	assert_int_equal(parse_u64("1", 1, 10, &v), 0);
	assert_int_equal(v, 1);
	assert_int_equal(parse_u64("18446744073709551615", 0, UINT64_MAX, &v), 0);
	assert_int_equal(v, UINT64_MAX);

	v = 7;
	assert_int_equal(parse_u64("11", 1, 10, &v), -ERANGE);
	assert_int_equal(parse_u64("0", 1, 10, &v), -ERANGE);
	assert_int_equal(parse_u64("18446744073709551616", 0, UINT64_MAX, &v), -EINVAL);
	assert_int_equal(parse_u64("-1", 0, UINT64_MAX, &v), -EINVAL);
	assert_int_equal(parse_u64("+1", 0, 10, &v), -EINVAL);
	assert_int_equal(parse_u64(" 1", 0, 10, &v), -EINVAL);
	assert_int_equal(parse_u64("1 ", 0, 10, &v), -EINVAL);
	assert_int_equal(parse_u64("", 0, 10, &v), -EINVAL);
	assert_int_equal(parse_u64(NULL, 0, 10, &v), -EINVAL);
	assert_int_equal(parse_u64("0x10", 0, 100, &v), -EINVAL);
	assert_int_equal(parse_u64("4k", 0, 10000, &v), -EINVAL);
	assert_int_equal(v, 7);
}

static void test_buf_roundtrip(void **state)
{
	static const uint8_t want[] = {
		0xab,
		0x34, 0x12,
		0x78, 0x56, 0x34, 0x12,
		0xef, 0xcd, 0xab, 0x89, 0x67, 0x45, 0x23, 0x01,
		'x', 'y', 'z',
		3, 0, 0, 0, 'a', 'b', 'c',
		0, 0, 0, 0,
	};
	struct buf b;
	struct buf_reader r;
	uint8_t bytes[3];
	const void *blob;
	uint32_t n;

	buf_init(&b);
	buf_put_u8(&b, 0xab);
	buf_put_u16(&b, 0x1234);
	buf_put_u32(&b, 0x12345678);
	buf_put_u64(&b, 0x0123456789abcdefull);
	buf_put_bytes(&b, "xyz", 3);
	buf_put_blob(&b, "abc", 3);
	buf_put_blob(&b, NULL, 0);
	buf_put_bytes(&b, NULL, 0);
	assert_int_equal(buf_status(&b), 0);
	/* explicit little-endian layout, whatever the host */
	assert_int_equal(b.len, sizeof(want));
	assert_memory_equal(b.data, want, sizeof(want));

	buf_reader_init(&r, b.data, b.len);
	assert_int_equal(buf_get_u8(&r), 0xab);
	assert_int_equal(buf_get_u16(&r), 0x1234);
	assert_int_equal(buf_get_u32(&r), 0x12345678);
	assert_int_equal(buf_get_u64(&r), 0x0123456789abcdefull);
	buf_get_bytes(&r, bytes, 3);
	assert_memory_equal(bytes, "xyz", 3);
	blob = buf_get_blob(&r, 16, &n);
	assert_int_equal(n, 3);
	assert_memory_equal(blob, "abc", 3);
	blob = buf_get_blob(&r, 16, &n);
	assert_int_equal(n, 0);
	assert_true(buf_reader_ok(&r));
	assert_int_equal(buf_reader_left(&r), 0);
	assert_true(buf_reader_done(&r));

	/* reset keeps the allocation and starts over */
	buf_reset(&b);
	assert_int_equal(b.len, 0);
	buf_put_u32(&b, 1);
	assert_int_equal(b.len, 4);

	/* growth past the first allocation keeps the content */
	buf_reset(&b);
	for (n = 0; n < 10000; n++)
		buf_put_u32(&b, n);
	assert_int_equal(buf_status(&b), 0);
	buf_reader_init(&r, b.data, b.len);
	for (n = 0; n < 10000; n++)
		assert_int_equal(buf_get_u32(&r), n);
	assert_true(buf_reader_done(&r));
	buf_free(&b);
	assert_null(b.data);
	assert_int_equal(b.len, 0);
}

static void test_buf_reader_overrun(void **state)
{
	/* heap, exact size: the sanitizers catch any read past the end */
	uint8_t *p = malloc(3);
	struct buf_reader r;
	uint8_t out[8];

	assert_non_null(p);
	memcpy(p, "\x01\x02\x03", 3);
	buf_reader_init(&r, p, 3);
	assert_int_equal(buf_get_u16(&r), 0x0201);
	assert_int_equal(buf_get_u32(&r), 0); /* would overrun: zero, bad */
	assert_false(buf_reader_ok(&r));
	assert_false(buf_reader_done(&r));
	/* once bad, even reads that would fit return zero */
	assert_int_equal(buf_get_u8(&r), 0);
	memset(out, 0xff, sizeof(out));
	buf_get_bytes(&r, out, 1);
	assert_int_equal(out[0], 0);
	assert_int_equal(buf_reader_left(&r), 1);

	buf_reader_init(&r, p, 3);
	memset(out, 0xff, sizeof(out));
	buf_get_bytes(&r, out, 8);
	assert_false(buf_reader_ok(&r));
	for (unsigned i = 0; i < 8; i++)
		assert_int_equal(out[i], 0);

	buf_reader_init(&r, p, 3);
	assert_int_equal(buf_get_u64(&r), 0);
	assert_false(buf_reader_ok(&r));

	/* a consumed reader is done; one more byte is an overrun */
	buf_reader_init(&r, p, 3);
	buf_get_bytes(&r, out, 3);
	assert_true(buf_reader_done(&r));
	assert_int_equal(buf_get_u8(&r), 0);
	assert_false(buf_reader_done(&r));

	/* an empty reader */
	buf_reader_init(&r, NULL, 0);
	assert_true(buf_reader_done(&r));
	assert_int_equal(buf_get_u8(&r), 0);
	assert_false(buf_reader_ok(&r));
	free(p);
}

static void test_buf_blob_limits(void **state)
{
	struct buf b;
	struct buf_reader r;
	const void *blob;
	uint32_t n;

	buf_init(&b);
	buf_put_blob(&b, "0123456789", 10);
	assert_int_equal(buf_status(&b), 0);

	/* exactly the maximum is fine */
	buf_reader_init(&r, b.data, b.len);
	blob = buf_get_blob(&r, 10, &n);
	assert_non_null(blob);
	assert_int_equal(n, 10);
	assert_true(buf_reader_done(&r));

	/* over the maximum: refused before looking at the data */
	buf_reader_init(&r, b.data, b.len);
	n = 99;
	assert_null(buf_get_blob(&r, 9, &n));
	assert_int_equal(n, 0);
	assert_false(buf_reader_ok(&r));

	/* a length beyond the data left */
	buf_reader_init(&r, b.data, b.len - 1);
	n = 99;
	assert_null(buf_get_blob(&r, UINT32_MAX, &n));
	assert_false(buf_reader_ok(&r));

	/* a hostile length near 4 GiB */
	b.data[0] = 0xff;
	b.data[1] = 0xff;
	b.data[2] = 0xff;
	b.data[3] = 0xff;
	buf_reader_init(&r, b.data, b.len);
	assert_null(buf_get_blob(&r, UINT32_MAX, &n));
	assert_false(buf_reader_ok(&r));

	/* a truncated length field */
	buf_reader_init(&r, b.data, 2);
	assert_null(buf_get_blob(&r, 100, &n));
	assert_int_equal(n, 0);
	assert_false(buf_reader_ok(&r));
	buf_free(&b);
}

static void test_buf_oom(void **state)
{
	struct buf b;
	uint8_t x = 1;

	buf_init(&b);
	buf_put_u8(&b, 1);
	/* a size that cannot fit marks the buffer failed without allocating */
	buf_put_bytes(&b, &x, SIZE_MAX);
	assert_int_equal(buf_status(&b), -ENOMEM);
	buf_put_u8(&b, 2); /* dropped */
	assert_int_equal(b.len, 1);
	buf_reset(&b);
	assert_int_equal(buf_status(&b), 0);
	buf_put_u8(&b, 3);
	assert_int_equal(b.len, 1);
	assert_int_equal(b.data[0], 3);
	buf_free(&b);
}

static void test_err(void **state)
{
	struct errbuf e;
	char longp[700];

	memset(&e, 0, sizeof(e));
	assert_int_equal(err_set(&e, -ENOENT, "open %s: %s", "/x", "No such file or directory"),
			 -ENOENT);
	assert_string_equal(e.msg, "open /x: No such file or directory");
	assert_int_equal(err_prefix(&e, -ENOENT, "kernel %d", 2), -ENOENT);
	assert_string_equal(e.msg, "kernel 2: open /x: No such file or directory");
	assert_int_equal(err_set(NULL, -EIO, "x"), -EIO);
	assert_int_equal(err_prefix(NULL, -EIO, "x"), -EIO);

	/* an over-long message is cut, never overflowed */
	memset(longp, 'a', sizeof(longp) - 1);
	longp[sizeof(longp) - 1] = '\0';
	err_set(&e, -EINVAL, "%s", longp);
	assert_int_equal(strlen(e.msg), ERRBUF_LEN - 1);
	err_set(&e, -EINVAL, "old");
	err_prefix(&e, -EINVAL, "%s", longp);
	assert_int_equal(strlen(e.msg), ERRBUF_LEN - 1);
	/* a prefix that leaves room for part of the old message */
	err_set(&e, -EINVAL, "%s", longp);
	err_prefix(&e, -EINVAL, "pre");
	assert_int_equal(strlen(e.msg), ERRBUF_LEN - 1);
	assert_memory_equal(e.msg, "pre: aaa", 8);
	/* an empty old message */
	e.msg[0] = '\0';
	err_prefix(&e, -EINVAL, "ctx");
	assert_string_equal(e.msg, "ctx: ");
}

/* A deadline never wraps into the past: huge timeouts saturate at "never". */
static void test_time_deadline(void **state)
{
	assert_int_equal(time_deadline_ns(1000, 0), 1000);
	assert_int_equal(time_deadline_ns(1000, 5), 5001000);
	assert_int_equal(time_deadline_ns(0, UINT64_MAX / 1000000), UINT64_MAX / 1000000 * 1000000);
	/* the product overflows: 18446744073710 ms * 10^6 > 2^64 */
	assert_int_equal(time_deadline_ns(1000, UINT64_MAX / 1000000 + 1), UINT64_MAX);
	assert_int_equal(time_deadline_ns(1000, 9223372036854775807ull), UINT64_MAX);
	/* the sum overflows */
	assert_int_equal(time_deadline_ns(UINT64_MAX - 10, 1), UINT64_MAX);
	assert_true(time_deadline_ns(time_mono_ns(), UINT64_MAX) > time_mono_ns());
}

static void test_fmt_bytes(void **state)
{
	char s[32];

	assert_string_equal(fmt_bytes(0, s, sizeof(s)), "0 B");
	assert_string_equal(fmt_bytes(1023, s, sizeof(s)), "1023 B");
	assert_string_equal(fmt_bytes(1536, s, sizeof(s)), "1.5 KiB");
	assert_string_equal(fmt_bytes(8 * GiB, s, sizeof(s)), "8.0 GiB");
	assert_string_equal(fmt_bytes(UINT64_MAX, s, sizeof(s)), "16777216.0 TiB");
}

/* The event loop's wake-up eventfd, found among this process's descriptors. */
static int eventfd_find(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *de;
	int fd = -1;

	assert_non_null(d);
	while ((de = readdir(d))) {
		char path[32 + sizeof(de->d_name)], target[64];
		ssize_t n;

		snprintf(path, sizeof(path), "/proc/self/fd/%s", de->d_name);
		n = readlink(path, target, sizeof(target) - 1);
		if (n <= 0)
			continue;
		target[n] = '\0';
		if (!strcmp(target, "anon_inode:[eventfd]"))
			fd = atoi(de->d_name);
	}
	closedir(d);
	return fd;
}

struct evloop_test {
	struct evloop *loop;
	unsigned runs;
};

static void evloop_test_fn(void *opaque)
{
	struct evloop_test *t = opaque;

	t->runs++;
	evloop_stop(t->loop);
}

/*
 * evloop_call() says whether fn will run: with the wake-up counter saturated (the loop
 * is woken already) the call is queued and runs, so it must report success.
 */
static void test_evloop_call_saturated(void **state)
{
	struct evloop_test t = { 0 };
	uint64_t big = 0xfffffffffffffffeull;
	int fd;

	assert_int_equal(evloop_create(&t.loop), 0);
	fd = eventfd_find();
	assert_true(fd >= 0);
	assert_int_equal(write(fd, &big, sizeof(big)), (ssize_t)sizeof(big));
	assert_int_equal(evloop_call(t.loop, evloop_test_fn, &t), 0);
	assert_int_equal(evloop_run(t.loop), 0);
	assert_int_equal(t.runs, 1);
	evloop_destroy(t.loop);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse_size),
		cmocka_unit_test(test_parse_u64),
		cmocka_unit_test(test_buf_roundtrip),
		cmocka_unit_test(test_buf_reader_overrun),
		cmocka_unit_test(test_buf_blob_limits),
		cmocka_unit_test(test_buf_oom),
		cmocka_unit_test(test_err),
		cmocka_unit_test(test_fmt_bytes),
		cmocka_unit_test(test_evloop_call_saturated),
		cmocka_unit_test(test_time_deadline),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
