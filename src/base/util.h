/* SPDX-License-Identifier: MIT */
/* Small helpers shared by every layer: error messages, parsing, time, full reads and writes. */
#ifndef GODWIT_BASE_UTIL_H
#define GODWIT_BASE_UTIL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>

#define __must_check __attribute__((warn_unused_result))
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))
#define ALIGN_UP(x, a) (((x) + ((a) - 1)) & ~((__typeof__(x))(a) - 1))
#define ALIGN_DOWN(x, a) ((x) & ~((__typeof__(x))(a) - 1))

#define KiB (1024ull)
#define MiB (1024ull * KiB)
#define GiB (1024ull * MiB)

/*
 * An operation that can fail in many ways fills the caller's errbuf with what it
 * was doing and why ("open /x/kernel: No such file or directory") and returns a
 * negative errno. The message is what the user sees.
 */
#define ERRBUF_LEN 512
struct errbuf {
	char msg[ERRBUF_LEN];
};

/* Formats the message into e (if not NULL) and returns ret (a negative errno). */
int err_set(struct errbuf *e, int ret, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Prefixes an existing message: "<prefix>: <old message>". Returns ret. */
int err_prefix(struct errbuf *e, int ret, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* "64M", "1G", "8G", "4096", "512K", "2T": binary multiples; rejects junk, zero and overflow. */
int __must_check parse_size(const char *s, uint64_t *out);
/* Decimal unsigned integer within [min, max]. */
int __must_check parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out);
/* Formats bytes as "1.5 GiB" etc. */
const char *fmt_bytes(uint64_t bytes, char *buf, size_t len);

/* The page size of guest memory, snapshots and migration streams. */
#define PAGE_BYTES 4096u
/* True if the PAGE_BYTES bytes at page are all zero. */
bool page_is_zero(const void *page);

uint64_t time_mono_ns(void);
uint64_t time_real_ns(void);
/* now_ns plus ms milliseconds, saturating: a huge ms is "never", not a deadline in the past. */
uint64_t time_deadline_ns(uint64_t now_ns, uint64_t ms);

/* Read/write exactly len bytes, retrying on EINTR and short transfers. 0 or -errno. -EPIPE at EOF. */
int __must_check io_read_full(int fd, void *buf, size_t len);
int __must_check io_write_full(int fd, const void *buf, size_t len);
int __must_check io_pread_full(int fd, void *buf, size_t len, off_t off);
int __must_check io_pwrite_full(int fd, const void *buf, size_t len, off_t off);
struct iovec;
/* preadv() until every iovec is filled; advances iov in place. 0, -errno, -EPIPE at EOF. */
int __must_check io_preadv_full(int fd, struct iovec *iov, int n, off_t off);
/*
 * Opens path for reading if it is a regular file of at most max bytes (a FIFO cannot
 * hang the open); what names the file in errors ("kernel", "initrd").
 */
int __must_check file_open_bounded(const char *path, const char *what, uint64_t max, int *fd,
				   uint64_t *size, struct errbuf *e);
/* Reads such a file whole into a malloc'ed buffer (*data, freed by the caller). */
int __must_check file_read_bounded(const char *path, const char *what, uint64_t max,
				   uint8_t **data, size_t *len, struct errbuf *e);
/*
 * openat(dfd, path, flags | O_NONBLOCK | O_CLOEXEC, mode), then fstat into st and clear
 * O_NONBLOCK again: opening a FIFO never waits for its other end (it would block forever,
 * deaf to signals the event loop handles), so the caller can look at st->st_mode and refuse
 * what is not the kind of file it wants. Returns the fd or -errno (-ENXIO: a FIFO opened
 * for writing has no reader).
 */
int __must_check io_open_nonblock(int dfd, const char *path, int flags, mode_t mode,
				  struct stat *st);

#endif
