/* SPDX-License-Identifier: MIT */
/* One request/response exchange on the control socket, bounded in time and size. */
#include "api/client.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

/* Milliseconds left until deadline (CLOCK_MONOTONIC ns), 0 once it has passed. */
static int api_client_ms_left(uint64_t deadline)
{
	uint64_t now = time_mono_ns();

	if (now >= deadline)
		return 0;
	return (int)MIN((deadline - now + 999999) / 1000000, (uint64_t)INT32_MAX);
}

/* Waits for events on fd; 0 when ready, -ETIMEDOUT at the deadline. */
static int api_client_wait(int fd, short events, uint64_t deadline)
{
	struct pollfd pfd = { .fd = fd, .events = events };

	for (;;) {
		int ms = api_client_ms_left(deadline);
		int n;

		if (!ms)
			return -ETIMEDOUT;
		n = poll(&pfd, 1, ms);
		if (n > 0)
			return 0;
		if (n < 0 && errno != EINTR)
			return -errno;
	}
}

static int api_client_connect(int fd, const char *path, uint64_t deadline, struct errbuf *e)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };

	memcpy(sa.sun_path, path, strlen(path) + 1);
	while (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		int err = errno;

		if (err == EINTR)
			continue;
		/* the server's backlog is full: it is busy, not gone */
		if (err == EAGAIN && api_client_ms_left(deadline)) {
			poll(NULL, 0, 5);
			continue;
		}
		if (err == ENOENT || err == ECONNREFUSED)
			return err_set(e, -err, "connect %s: %s (is godwit running?)", path,
				       strerror(err));
		return err_set(e, -err, "connect %s: %s", path, strerror(err));
	}
	return 0;
}

/* Sends all of buf. -EPIPE when the server closed its end (it may have said why). */
static int api_client_send(int fd, const char *buf, size_t len, uint64_t deadline)
{
	while (len) {
		ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
		int ret;

		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == ECONNRESET)
				return -EPIPE;
			if (errno != EAGAIN && errno != EWOULDBLOCK)
				return -errno;
			ret = api_client_wait(fd, POLLOUT, deadline);
			if (ret < 0)
				return ret;
			continue;
		}
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Reads up to the first newline. -EPIPE at EOF before it, -EMSGSIZE if it is too long. */
static int api_client_recv_line(int fd, char **line, uint64_t deadline)
{
	size_t len = 0, cap = 4096;
	char *buf = malloc(cap);
	int ret;

	if (!buf)
		return -ENOMEM;
	for (;;) {
		char *nl;
		ssize_t n;

		if (len == cap) {
			char *bigger;

			if (cap > API_RESPONSE_MAX) {
				ret = -EMSGSIZE;
				goto err;
			}
			cap *= 2;
			bigger = realloc(buf, cap);
			if (!bigger) {
				ret = -ENOMEM;
				goto err;
			}
			buf = bigger;
		}
		n = recv(fd, buf + len, cap - len, 0);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN && errno != EWOULDBLOCK) {
				ret = errno == ECONNRESET ? -EPIPE : -errno;
				goto err;
			}
			ret = api_client_wait(fd, POLLIN, deadline);
			if (ret < 0)
				goto err;
			continue;
		}
		if (n == 0) {
			ret = -EPIPE;
			goto err;
		}
		nl = memchr(buf + len, '\n', (size_t)n);
		len += (size_t)n;
		if (nl) {
			if ((size_t)(nl - buf) > API_RESPONSE_MAX) {
				ret = -EMSGSIZE;
				goto err;
			}
			*nl = '\0';
			*line = buf;
			return 0;
		}
	}

err:
	free(buf);
	return ret;
}

int api_client_call(const char *path, const char *request_line, char **response_line,
		    int timeout_ms, struct errbuf *e)
{
	uint64_t deadline = time_mono_ns() + (uint64_t)MAX(timeout_ms, 1) * 1000000;
	struct sockaddr_un sa;
	size_t len = strlen(request_line);
	char *req;
	int fd, ret, send_ret;

	if (!*path)
		return err_set(e, -EINVAL, "api socket path is empty");
	if (strlen(path) >= sizeof(sa.sun_path))
		return err_set(e, -ENAMETOOLONG, "api socket path too long (max %zu bytes)",
			       sizeof(sa.sun_path) - 1);
	if (memchr(request_line, '\n', len))
		return err_set(e, -EINVAL, "request must be a single line");
	if (len > API_LINE_MAX)
		return err_set(e, -EMSGSIZE, "request too long (max %d bytes)", API_LINE_MAX);
	req = malloc(len + 1);
	if (!req)
		return err_set(e, -ENOMEM, "out of memory");
	memcpy(req, request_line, len);
	req[len] = '\n';

	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		ret = err_set(e, -errno, "socket: %s", strerror(errno));
		goto out_free;
	}
	ret = api_client_connect(fd, path, deadline, e);
	if (ret < 0)
		goto out_close;
	send_ret = api_client_send(fd, req, len + 1, deadline);
	if (send_ret < 0 && send_ret != -EPIPE) {
		ret = send_ret == -ETIMEDOUT ?
			err_set(e, send_ret, "%s: sending the request timed out after %d ms", path,
				timeout_ms) :
			err_set(e, send_ret, "send to %s: %s", path, strerror(-send_ret));
		goto out_close;
	}
	/* even after -EPIPE: a server that hung up may have sent its reason first */
	ret = api_client_recv_line(fd, response_line, deadline);
	if (ret == -ETIMEDOUT)
		err_set(e, ret, "no response from %s within %d ms", path, timeout_ms);
	else if (ret == -EPIPE)
		err_set(e, ret, "%s closed the connection without a response", path);
	else if (ret == -EMSGSIZE)
		err_set(e, ret, "response from %s too long (max %d bytes)", path,
			API_RESPONSE_MAX);
	else if (ret < 0)
		err_set(e, ret, "read from %s: %s", path, strerror(-ret));

out_close:
	close(fd);
out_free:
	free(req);
	return ret;
}
