/* SPDX-License-Identifier: MIT */
/* Error buffers, number parsing, clocks and full-length I/O. */
#include "base/util.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

int err_set(struct errbuf *e, int ret, const char *fmt, ...)
{
	va_list ap;

	if (!e)
		return ret;
	va_start(ap, fmt);
	vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
	va_end(ap);
	return ret;
}

int err_prefix(struct errbuf *e, int ret, const char *fmt, ...)
{
	char old[ERRBUF_LEN];
	size_t n;
	va_list ap;

	if (!e)
		return ret;
	memcpy(old, e->msg, sizeof(old));
	old[sizeof(old) - 1] = '\0';
	va_start(ap, fmt);
	vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
	va_end(ap);
	n = strlen(e->msg);
	if (n + 2 < sizeof(e->msg)) {
		memcpy(e->msg + n, ": ", 2);
		memccpy(e->msg + n + 2, old, '\0', sizeof(e->msg) - n - 2);
		e->msg[sizeof(e->msg) - 1] = '\0';
	}
	return ret;
}

/* One zero check for every layer: snapshots, migration rounds, digests. */
bool page_is_zero(const void *page)
{
	const uint8_t *p = page;

	/* OR whole cache lines together so the compiler can vectorise; stop at the first hit */
	for (size_t off = 0; off < PAGE_BYTES; off += 256) {
		uint64_t acc = 0;

		for (size_t i = 0; i < 256; i += 8) {
			uint64_t v;

			memcpy(&v, p + off + i, sizeof(v));
			acc |= v;
		}
		if (acc)
			return false;
	}
	return true;
}

int parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
	unsigned long long v;
	char *end;

	if (!s || !*s || *s == '-' || *s == '+' || *s == ' ')
		return -EINVAL;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || *end)
		return -EINVAL;
	if (v < min || v > max)
		return -ERANGE;
	*out = v;
	return 0;
}

int parse_size(const char *s, uint64_t *out)
{
	unsigned long long v;
	unsigned shift = 0;
	char *end;

	if (!s || *s < '0' || *s > '9')
		return -EINVAL;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno)
		return -ERANGE;
	switch (*end) {
	case '\0':
		break;
	case 'k': case 'K': shift = 10; end++; break;
	case 'm': case 'M': shift = 20; end++; break;
	case 'g': case 'G': shift = 30; end++; break;
	case 't': case 'T': shift = 40; end++; break;
	default:
		return -EINVAL;
	}
	/* accept an optional "iB" or "B" suffix: 64MiB, 64MB */
	if (shift && (*end == 'i' || *end == 'I'))
		end++;
	if (shift && (*end == 'b' || *end == 'B'))
		end++;
	if (*end)
		return -EINVAL;
	if (v == 0)
		return -EINVAL;
	if (shift && v > (ULLONG_MAX >> shift))
		return -ERANGE;
	*out = (uint64_t)v << shift;
	return 0;
}

const char *fmt_bytes(uint64_t bytes, char *buf, size_t len)
{
	static const char *const units[] = { "B", "KiB", "MiB", "GiB", "TiB" };
	double v = (double)bytes;
	unsigned u = 0;

	while (v >= 1024.0 && u + 1 < ARRAY_SIZE(units)) {
		v /= 1024.0;
		u++;
	}
	if (u == 0)
		snprintf(buf, len, "%llu B", (unsigned long long)bytes);
	else
		snprintf(buf, len, "%.1f %s", v, units[u]);
	return buf;
}

static uint64_t time_ns(clockid_t clk)
{
	struct timespec ts;

	clock_gettime(clk, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

uint64_t time_mono_ns(void)
{
	return time_ns(CLOCK_MONOTONIC);
}

uint64_t time_real_ns(void)
{
	return time_ns(CLOCK_REALTIME);
}

uint64_t time_deadline_ns(uint64_t now_ns, uint64_t ms)
{
	uint64_t ns;

	if (__builtin_mul_overflow(ms, 1000000ull, &ns) || __builtin_add_overflow(now_ns, ns, &ns))
		return UINT64_MAX;
	return ns;
}

int io_read_full(int fd, void *buf, size_t len)
{
	char *p = buf;

	while (len) {
		ssize_t n = read(fd, p, len);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0)
			return -EPIPE;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

int io_write_full(int fd, const void *buf, size_t len)
{
	const char *p = buf;

	while (len) {
		ssize_t n = write(fd, p, len);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

int io_preadv_full(int fd, struct iovec *iov, int n, off_t off)
{
	while (n > 0) {
		ssize_t got = preadv(fd, iov, n, off);

		if (got < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (got == 0)
			return -EPIPE;
		off += got;
		while (n > 0 && (size_t)got >= iov->iov_len) {
			got -= (ssize_t)iov->iov_len;
			iov++;
			n--;
		}
		if (n > 0) {
			iov->iov_base = (char *)iov->iov_base + got;
			iov->iov_len -= (size_t)got;
		}
	}
	return 0;
}

int io_pread_full(int fd, void *buf, size_t len, off_t off)
{
	struct iovec v = { buf, len };

	return io_preadv_full(fd, &v, 1, off);
}

int io_pwrite_full(int fd, const void *buf, size_t len, off_t off)
{
	const char *p = buf;

	while (len) {
		ssize_t n = pwrite(fd, p, len, off);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += n;
		off += n;
		len -= (size_t)n;
	}
	return 0;
}

int file_open_bounded(const char *path, const char *what, uint64_t max, int *out,
		      uint64_t *size, struct errbuf *e)
{
	struct stat st;
	int fd, ret;

	fd = io_open_nonblock(AT_FDCWD, path, O_RDONLY, 0, &st);
	if (fd < 0)
		return err_set(e, fd, "open %s %s: %s", what, path, strerror(-fd));
	if (!S_ISREG(st.st_mode)) {
		ret = err_set(e, -EINVAL, "%s %s is not a regular file", what, path);
		goto err;
	}
	if ((uint64_t)st.st_size > max) {
		ret = err_set(e, -EFBIG, "%s %s is %lld bytes, more than the %llu MiB limit", what,
			      path, (long long)st.st_size, (unsigned long long)(max / MiB));
		goto err;
	}
	*out = fd;
	*size = (uint64_t)st.st_size;
	return 0;
err:
	close(fd);
	return ret;
}

int file_read_bounded(const char *path, const char *what, uint64_t max, uint8_t **data,
		      size_t *len, struct errbuf *e)
{
	uint64_t size;
	uint8_t *p;
	int fd, ret;

	ret = file_open_bounded(path, what, max, &fd, &size, e);
	if (ret < 0)
		return ret;
	p = malloc(size ? (size_t)size : 1);
	if (!p) {
		close(fd);
		return err_set(e, -ENOMEM, "%s %s: out of memory", what, path);
	}
	ret = io_read_full(fd, p, (size_t)size);
	close(fd);
	if (ret) {
		free(p);
		return err_set(e, ret, "read %s %s: %s", what, path,
			       ret == -EPIPE ? "file shrank while reading" : strerror(-ret));
	}
	*data = p;
	*len = (size_t)size;
	return 0;
}

int io_open_nonblock(int dfd, const char *path, int flags, mode_t mode, struct stat *st)
{
	int fd = openat(dfd, path, flags | O_NONBLOCK | O_CLOEXEC, mode), fl, ret;

	if (fd < 0)
		return -errno;
	fl = fcntl(fd, F_GETFL);
	if (fstat(fd, st) < 0 || fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) < 0) {
		ret = -errno;
		close(fd);
		return ret;
	}
	return fd;
}
