/* SPDX-License-Identifier: MIT */
/*
 * The console's bounded output buffer and its writer thread (see console.h).
 *
 * The writer waits for the sink to accept data with poll() (100 ms at a time, so it
 * notices a stop) and writes at most PIPE_BUF bytes once it does: on a pipe or a
 * terminal a write that small does not block when poll said writable, so a stalled
 * reader never holds the thread for long and console_destroy() can give up on it.
 */
#include "vmm/console.h"
#include "base/log.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define CONSOLE_POLL_MS 100
#define CONSOLE_DRAIN_MS 1000 /* how long destroy waits for a stalled reader */
#define CONSOLE_LOG_NS 1000000000ull /* at most one "dropped" line a second */

struct console {
	int fd;
	bool direct;        /* the sink is a pipe, socket or terminal: try writing at once */
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	uint8_t buf[CONSOLE_BUF_SIZE];
	size_t head;        /* oldest unwritten byte */
	size_t len;         /* bytes buffered */
	bool stop;          /* destroy: drain, then exit */
	bool broken;        /* the sink failed (reader gone): output is discarded */
	uint64_t stop_deadline;
	_Atomic uint64_t dropped;
	uint64_t dropped_logged;
	uint64_t logged_ns;
};

/*
 * With nothing queued (so no write in flight), hands the bytes straight to a sink that
 * can take them now, from the calling (vCPU) thread, as the guest wrote them: a writer
 * thread that a loaded host leaves unscheduled held heartbeat lines back for hundreds of
 * milliseconds and then let them out in one burst. Never waits: poll() says the sink has
 * room and at most PIPE_BUF bytes go, as in console_main(). Returns the bytes written;
 * whatever it could not write is queued as before (the writer thread reports errors).
 */
static size_t console_write_now(struct console *c, const uint8_t *p, size_t n)
{
	struct pollfd pfd = { .fd = c->fd, .events = POLLOUT };
	ssize_t w;

	if (!c->direct || c->len || c->stop)
		return 0;
	if (poll(&pfd, 1, 0) != 1 || pfd.revents != POLLOUT)
		return 0;
	w = write(c->fd, p, MIN(n, (size_t)PIPE_BUF));
	return w > 0 ? (size_t)w : 0;
}

void console_write(struct console *c, const uint8_t *p, size_t n)
{
	size_t fit, tail, first, done;

	pthread_mutex_lock(&c->lock);
	if (c->broken) {
		pthread_mutex_unlock(&c->lock);
		return;
	}
	done = console_write_now(c, p, n);
	p += done;
	n -= done;
	fit = MIN(n, CONSOLE_BUF_SIZE - c->len);
	if (fit < n)
		atomic_fetch_add(&c->dropped, n - fit);
	tail = (c->head + c->len) % CONSOLE_BUF_SIZE;
	first = MIN(fit, CONSOLE_BUF_SIZE - tail);
	memcpy(c->buf + tail, p, first);
	memcpy(c->buf, p + first, fit - first);
	c->len += fit;
	if (fit)
		pthread_cond_signal(&c->cond);
	pthread_mutex_unlock(&c->lock);
}

uint64_t console_dropped(struct console *c)
{
	return c ? atomic_load(&c->dropped) : 0;
}

/* Called with the lock held, after progress: says how much was lost, now and then. */
static void console_drops_log(struct console *c)
{
	uint64_t d = atomic_load(&c->dropped), now = time_mono_ns();

	if (d == c->dropped_logged || now - c->logged_ns < CONSOLE_LOG_NS)
		return;
	log_warn("serial console: %llu bytes of guest output dropped so far (the output "
		 "reader did not keep up)", (unsigned long long)d);
	c->dropped_logged = d;
	c->logged_ns = now;
}

static void *console_main(void *arg)
{
	struct console *c = arg;

	pthread_mutex_lock(&c->lock);
	for (;;) {
		struct pollfd pfd = { .fd = c->fd, .events = POLLOUT };
		size_t chunk;
		ssize_t n;
		int r;

		while (!c->len && !c->stop)
			pthread_cond_wait(&c->cond, &c->lock);
		if (!c->len || c->broken)
			break;
		if (c->stop && time_mono_ns() > c->stop_deadline) {
			/* the reader stalled: what is left is lost, and counted */
			atomic_fetch_add(&c->dropped, c->len);
			break;
		}
		/* only the writer consumes: [head, head + chunk) stays put while unlocked */
		chunk = MIN(MIN(c->len, CONSOLE_BUF_SIZE - c->head), (size_t)PIPE_BUF);
		pthread_mutex_unlock(&c->lock);
		r = poll(&pfd, 1, CONSOLE_POLL_MS);
		n = 0;
		if (r > 0 && (pfd.revents & POLLOUT))
			n = write(c->fd, c->buf + c->head, chunk);
		else if (r > 0)
			n = -1, errno = EPIPE; /* POLLERR/POLLHUP: the reader is gone */
		pthread_mutex_lock(&c->lock);
		if (n < 0 && errno != EINTR && errno != EAGAIN) {
			/* a closed reader must not stop the VM: discard the output from now on */
			log_warn("serial console: writing guest output failed (%s); further output "
				 "is discarded", strerror(errno));
			c->broken = true;
			c->len = 0;
			break;
		}
		if (n > 0) {
			c->head = (c->head + (size_t)n) % CONSOLE_BUF_SIZE;
			c->len -= (size_t)n;
			console_drops_log(c);
		}
	}
	pthread_mutex_unlock(&c->lock);
	return NULL;
}

int console_create(struct console **out, int fd, struct errbuf *e)
{
	struct console *c = calloc(1, sizeof(*c));
	struct stat st;
	sigset_t all, old;
	int ret;

	if (!c)
		return err_set(e, -ENOMEM, "out of memory");
	c->fd = fd;
	/* a regular file's write can wait for the disk whatever poll() says: queue only */
	c->direct = fstat(fd, &st) == 0 &&
		    (S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode) || S_ISCHR(st.st_mode));
	ret = -pthread_mutex_init(&c->lock, NULL);
	if (ret < 0)
		goto err_free;
	ret = -pthread_cond_init(&c->cond, NULL);
	if (ret < 0)
		goto err_lock;
	/* signals are for the main thread's signalfd and the vCPU kicks, never this one */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	ret = -pthread_create(&c->thread, NULL, console_main, c);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (ret < 0)
		goto err_cond;
	*out = c;
	return 0;

err_cond:
	pthread_cond_destroy(&c->cond);
err_lock:
	pthread_mutex_destroy(&c->lock);
err_free:
	free(c);
	return err_set(e, ret, "start the serial console writer: %s", strerror(-ret));
}

void console_destroy(struct console *c)
{
	if (!c)
		return;
	pthread_mutex_lock(&c->lock);
	c->stop = true;
	c->stop_deadline = time_mono_ns() + CONSOLE_DRAIN_MS * 1000000ull;
	pthread_cond_signal(&c->cond);
	pthread_mutex_unlock(&c->lock);
	pthread_join(c->thread, NULL);
	if (atomic_load(&c->dropped) != c->dropped_logged)
		log_warn("serial console: %llu bytes of guest output were dropped (the output "
			 "reader did not keep up)", (unsigned long long)atomic_load(&c->dropped));
	pthread_cond_destroy(&c->cond);
	pthread_mutex_destroy(&c->lock);
	free(c);
}
