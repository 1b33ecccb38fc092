/* SPDX-License-Identifier: MIT */
/*
 * A byte channel under the state record reader and writer: a plain file descriptor, or
 * something layered on one (the migration's TLS session). The stream code reads, writes
 * gathered buffers and shuts down without knowing which; the plain fd keeps its direct
 * readv/sendmsg path, so pages still go from guest memory to the socket without a copy.
 */
#ifndef GODWIT_BASE_CHANNEL_H
#define GODWIT_BASE_CHANNEL_H

#include "base/util.h"

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>
#include <sys/uio.h>

struct channel;

struct channel_ops {
	/* Reads up to len bytes: the count, 0 at end of stream, or a negative errno. */
	ssize_t (*read)(struct channel *c, void *p, size_t len);
	/* Writes some of iov (at most IOV_MAX entries): the count or a negative errno. */
	ssize_t (*writev)(struct channel *c, const struct iovec *iov, int n);
	/* Ends the stream in both directions (unblocks a reader or writer elsewhere). */
	void (*shutdown)(struct channel *c);
	/* Frees the channel; the fd is the owner's to close. */
	void (*free)(struct channel *c);
};

struct channel {
	const struct channel_ops *ops;
	int fd;
	bool sock; /* plain fds: written with sendmsg(MSG_NOSIGNAL), not writev */
};

/* A plain fd channel in storage the caller owns (no free needed). */
void channel_fd_init(struct channel *c, int fd);

static inline ssize_t channel_read(struct channel *c, void *p, size_t len)
{
	return c->ops->read(c, p, len);
}

static inline ssize_t channel_writev(struct channel *c, const struct iovec *iov, int n)
{
	return c->ops->writev(c, iov, n);
}

static inline void channel_shutdown(struct channel *c)
{
	c->ops->shutdown(c);
}

static inline void channel_free(struct channel *c)
{
	if (c && c->ops->free)
		c->ops->free(c);
}

#endif
