/* SPDX-License-Identifier: MIT */
/*
 * The main thread's event loop (epoll): file descriptors with callbacks, and
 * evloop_call() so other threads (vCPUs, migration) can run a function on the
 * loop thread.
 */
#ifndef GODWIT_BASE_EVLOOP_H
#define GODWIT_BASE_EVLOOP_H

#include "base/util.h"

#include <stdint.h>
#include <sys/epoll.h>

struct evloop;

typedef void (*evloop_fd_cb)(struct evloop *loop, int fd, uint32_t events, void *opaque);

int __must_check evloop_create(struct evloop **out);
void evloop_destroy(struct evloop *loop);
/* events are EPOLLIN/EPOLLOUT/...; one registration per fd */
int __must_check evloop_fd_add(struct evloop *loop, int fd, uint32_t events, evloop_fd_cb cb,
			       void *opaque);
int __must_check evloop_fd_mod(struct evloop *loop, int fd, uint32_t events);
void evloop_fd_del(struct evloop *loop, int fd);
/* Runs until evloop_stop(); returns 0 or -errno on an epoll failure. */
int evloop_run(struct evloop *loop);
/* Thread-safe and async-signal-unsafe: makes evloop_run() return after this iteration. */
void evloop_stop(struct evloop *loop);
/* Thread-safe: queue fn(opaque) to run on the loop thread. */
int __must_check evloop_call(struct evloop *loop, void (*fn)(void *opaque), void *opaque);

#endif
