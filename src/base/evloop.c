/* SPDX-License-Identifier: MIT */
/* epoll event loop with a cross-thread call queue woken through an eventfd. */
#include "base/evloop.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

struct evloop_handler {
	int fd;
	evloop_fd_cb cb;
	void *opaque;
	struct evloop_handler *next;
};

struct evloop_callreq {
	void (*fn)(void *opaque);
	void *opaque;
	struct evloop_callreq *next;
};

struct evloop {
	int epfd;
	int wakefd;
	bool stop;
	struct evloop_handler *handlers;
	pthread_mutex_t lock;
	struct evloop_callreq *calls, **calls_tail;
};

int evloop_create(struct evloop **out)
{
	struct evloop *loop = calloc(1, sizeof(*loop));
	struct epoll_event ev = { .events = EPOLLIN };
	int ret;

	if (!loop)
		return -ENOMEM;
	loop->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (loop->epfd < 0) {
		ret = -errno;
		goto err_free;
	}
	loop->wakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (loop->wakefd < 0) {
		ret = -errno;
		goto err_epoll;
	}
	ev.data.ptr = NULL; /* NULL marks the wake fd */
	if (epoll_ctl(loop->epfd, EPOLL_CTL_ADD, loop->wakefd, &ev) < 0) {
		ret = -errno;
		goto err_wake;
	}
	ret = -pthread_mutex_init(&loop->lock, NULL);
	if (ret < 0)
		goto err_wake;
	loop->calls_tail = &loop->calls;
	*out = loop;
	return 0;

err_wake:
	close(loop->wakefd);
err_epoll:
	close(loop->epfd);
err_free:
	free(loop);
	return ret;
}

void evloop_destroy(struct evloop *loop)
{
	struct evloop_handler *h, *hn;
	struct evloop_callreq *c, *cn;

	if (!loop)
		return;
	for (h = loop->handlers; h; h = hn) {
		hn = h->next;
		free(h);
	}
	for (c = loop->calls; c; c = cn) {
		cn = c->next;
		free(c);
	}
	close(loop->wakefd);
	close(loop->epfd);
	pthread_mutex_destroy(&loop->lock);
	free(loop);
}

int evloop_fd_add(struct evloop *loop, int fd, uint32_t events, evloop_fd_cb cb, void *opaque)
{
	struct evloop_handler *h = calloc(1, sizeof(*h));
	struct epoll_event ev = { .events = events };

	if (!h)
		return -ENOMEM;
	h->fd = fd;
	h->cb = cb;
	h->opaque = opaque;
	ev.data.ptr = h;
	if (epoll_ctl(loop->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
		int ret = -errno;

		free(h);
		return ret;
	}
	h->next = loop->handlers;
	loop->handlers = h;
	return 0;
}

static struct evloop_handler *evloop_handler_find(struct evloop *loop, int fd)
{
	struct evloop_handler *h;

	for (h = loop->handlers; h; h = h->next)
		if (h->fd == fd && h->cb)
			return h;
	return NULL;
}

int evloop_fd_mod(struct evloop *loop, int fd, uint32_t events)
{
	struct evloop_handler *h = evloop_handler_find(loop, fd);
	struct epoll_event ev = { .events = events };

	if (!h)
		return -ENOENT;
	ev.data.ptr = h;
	return epoll_ctl(loop->epfd, EPOLL_CTL_MOD, fd, &ev) < 0 ? -errno : 0;
}

void evloop_fd_del(struct evloop *loop, int fd)
{
	struct evloop_handler *h = evloop_handler_find(loop, fd);

	if (!h)
		return;
	epoll_ctl(loop->epfd, EPOLL_CTL_DEL, fd, NULL);
	/* freed lazily after the current dispatch round: events may still point at it */
	h->cb = NULL;
}

static void evloop_handlers_reap(struct evloop *loop)
{
	struct evloop_handler **pp = &loop->handlers, *h;

	while ((h = *pp)) {
		if (!h->cb) {
			*pp = h->next;
			free(h);
		} else {
			pp = &h->next;
		}
	}
}

static void evloop_calls_run(struct evloop *loop)
{
	struct evloop_callreq *c, *cn;
	uint64_t v;

	if (read(loop->wakefd, &v, sizeof(v)) < 0 && errno != EAGAIN)
		return;
	pthread_mutex_lock(&loop->lock);
	c = loop->calls;
	loop->calls = NULL;
	loop->calls_tail = &loop->calls;
	pthread_mutex_unlock(&loop->lock);
	for (; c; c = cn) {
		cn = c->next;
		c->fn(c->opaque);
		free(c);
	}
}

int evloop_run(struct evloop *loop)
{
	struct epoll_event evs[32];

	loop->stop = false;
	while (!loop->stop) {
		int n = epoll_wait(loop->epfd, evs, (int)ARRAY_SIZE(evs), -1);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		for (int i = 0; i < n; i++) {
			struct evloop_handler *h = evs[i].data.ptr;

			if (!h)
				evloop_calls_run(loop);
			else if (h->cb)
				h->cb(loop, h->fd, evs[i].events, h->opaque);
		}
		evloop_handlers_reap(loop);
	}
	return 0;
}

void evloop_stop(struct evloop *loop)
{
	uint64_t one = 1;

	loop->stop = true;
	if (write(loop->wakefd, &one, sizeof(one)) < 0) {
		/* the counter cannot overflow in practice; nothing to do */
	}
}

int evloop_call(struct evloop *loop, void (*fn)(void *opaque), void *opaque)
{
	struct evloop_callreq *c = calloc(1, sizeof(*c));
	uint64_t one = 1;

	if (!c)
		return -ENOMEM;
	c->fn = fn;
	c->opaque = opaque;
	pthread_mutex_lock(&loop->lock);
	*loop->calls_tail = c;
	loop->calls_tail = &c->next;
	/*
	 * Under the lock, so a failure can take the call back out before the loop sees it:
	 * a caller told "failed" must be able to rely on fn never running. EAGAIN means the
	 * counter is saturated, so the loop is woken already.
	 */
	if (write(loop->wakefd, &one, sizeof(one)) < 0 && errno != EAGAIN) {
		int ret = -errno;
		struct evloop_callreq **pp = &loop->calls;

		while (*pp != c)
			pp = &(*pp)->next;
		*pp = NULL;
		loop->calls_tail = pp;
		pthread_mutex_unlock(&loop->lock);
		free(c);
		return ret;
	}
	pthread_mutex_unlock(&loop->lock);
	return 0;
}
