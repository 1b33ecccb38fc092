/* SPDX-License-Identifier: MIT */
/*
 * Deadlines on a migration connection. A blocking read with a receive timeout bounds
 * each read, not a phase: a peer that sends one byte just before every timeout holds
 * the other side forever. A deadline bounds a whole phase (the destination's setup from
 * accept to ACCEPT, then each record): when it passes, a watchdog thread shuts the
 * connection down, so whatever is blocked on it (a record read, a write, a handshake
 * layered under the stream) fails at once, and mig_deadline_check() turns that failure
 * into an error naming the phase and its limit.
 */
#include "migration/mig_internal.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

static void *mig_deadline_main(void *arg)
{
	struct mig_deadline *d = arg;

	pthread_mutex_lock(&d->lock);
	while (!d->quit) {
		uint64_t now = time_mono_ns();

		if (!d->at_ns || d->at_ns == UINT64_MAX) {
			pthread_cond_wait(&d->cond, &d->lock);
		} else if (now < d->at_ns) {
			struct timespec ts = { .tv_sec = (time_t)(d->at_ns / 1000000000ull),
					       .tv_nsec = (long)(d->at_ns % 1000000000ull) };

			pthread_cond_timedwait(&d->cond, &d->lock, &ts);
		} else {
			/* passed: cut the connection; the owner closes the fd after stop */
			d->fired = true;
			d->at_ns = 0;
			shutdown(d->fd, SHUT_RDWR);
		}
	}
	pthread_mutex_unlock(&d->lock);
	return NULL;
}

int mig_deadline_start(struct mig_deadline *d, int fd, struct errbuf *e)
{
	pthread_condattr_t ca;
	int ret;

	memset(d, 0, sizeof(*d));
	d->fd = fd;
	ret = pthread_mutex_init(&d->lock, NULL);
	if (ret)
		return err_set(e, -ret, "deadline: mutex: %s", strerror(ret));
	ret = pthread_condattr_init(&ca);
	if (ret == 0) {
		ret = pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
		if (ret == 0)
			ret = pthread_cond_init(&d->cond, &ca);
		pthread_condattr_destroy(&ca);
	}
	if (ret) {
		pthread_mutex_destroy(&d->lock);
		return err_set(e, -ret, "deadline: condition variable: %s", strerror(ret));
	}
	ret = pthread_create(&d->thread, NULL, mig_deadline_main, d);
	if (ret) {
		pthread_cond_destroy(&d->cond);
		pthread_mutex_destroy(&d->lock);
		return err_set(e, -ret, "deadline: start the watchdog thread: %s", strerror(ret));
	}
	d->started = true;
	return 0;
}

void mig_deadline_set(struct mig_deadline *d, uint64_t ms, const char *what)
{
	uint64_t at = time_deadline_ns(time_mono_ns(), ms);

	if (!d->started)
		return;
	pthread_mutex_lock(&d->lock);
	/* a later deadline needs no wake-up: the watchdog looks again when the old one passes */
	if (!d->at_ns || at < d->at_ns)
		pthread_cond_signal(&d->cond);
	d->at_ns = at;
	d->ms = ms;
	snprintf(d->what, sizeof(d->what), "%s", what);
	pthread_mutex_unlock(&d->lock);
}

int mig_deadline_check(struct mig_deadline *d, int ret, struct errbuf *e)
{
	bool fired;

	if (!d->started || ret >= 0)
		return ret;
	pthread_mutex_lock(&d->lock);
	fired = d->fired;
	pthread_mutex_unlock(&d->lock);
	if (!fired)
		return ret;
	return err_set(e, -ETIMEDOUT, "%s took longer than its deadline of %llu ms (the peer is "
				      "too slow or trickles bytes; the connection was cut)",
		       d->what, (unsigned long long)d->ms);
}

void mig_deadline_stop(struct mig_deadline *d)
{
	if (!d->started)
		return;
	pthread_mutex_lock(&d->lock);
	d->quit = true;
	pthread_cond_signal(&d->cond);
	pthread_mutex_unlock(&d->lock);
	pthread_join(d->thread, NULL);
	pthread_cond_destroy(&d->cond);
	pthread_mutex_destroy(&d->lock);
	d->started = false;
}
