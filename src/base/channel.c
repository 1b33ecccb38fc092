/* SPDX-License-Identifier: MIT */
/* The plain file descriptor channel: read, writev or sendmsg(MSG_NOSIGNAL), shutdown. */
#include "base/channel.h"

#include <errno.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

static ssize_t channel_fd_read(struct channel *c, void *p, size_t len)
{
	ssize_t n;

	do
		n = read(c->fd, p, len);
	while (n < 0 && errno == EINTR);
	return n < 0 ? -errno : n;
}

static ssize_t channel_fd_writev(struct channel *c, const struct iovec *iov, int n)
{
	ssize_t done;

	do {
		if (c->sock) {
			struct msghdr msg = { .msg_iov = (struct iovec *)iov, .msg_iovlen = (size_t)n };

			done = sendmsg(c->fd, &msg, MSG_NOSIGNAL);
		} else {
			done = writev(c->fd, iov, n);
		}
	} while (done < 0 && errno == EINTR);
	return done < 0 ? -errno : done;
}

static void channel_fd_shutdown(struct channel *c)
{
	shutdown(c->fd, SHUT_RDWR);
}

static const struct channel_ops channel_fd_ops = {
	.read = channel_fd_read,
	.writev = channel_fd_writev,
	.shutdown = channel_fd_shutdown,
	.free = NULL,
};

void channel_fd_init(struct channel *c, int fd)
{
	struct stat st;

	c->ops = &channel_fd_ops;
	c->fd = fd;
	c->sock = fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode);
}
