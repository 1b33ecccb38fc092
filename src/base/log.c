/* SPDX-License-Identifier: MIT */
/* Logging to stderr: one line per message, prefixed with "godwit:" and the level. */
#include "base/log.h"
#include "base/util.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>

static enum log_level log_threshold = LOG_INFO;

void log_level_set(enum log_level level)
{
	log_threshold = level;
}

void log_msg(enum log_level level, const char *fmt, ...)
{
	static const char *const names[] = { "error", "warning", "info", "debug" };
	char line[1024];
	va_list ap;

	if (level > log_threshold)
		return;
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	/* one fprintf per line so concurrent threads do not interleave */
	fprintf(stderr, "godwit: %s: %s\n", names[level], line);
}

bool log_ratelimit_allow(struct log_ratelimit *rl, uint32_t *suppressed)
{
	static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
	uint64_t now = time_mono_ns();
	bool ok;

	pthread_mutex_lock(&lock);
	if (now - rl->window_start_ns > (uint64_t)rl->interval_ms * 1000000ull) {
		rl->window_start_ns = now;
		rl->printed = 0;
	}
	ok = rl->printed < rl->burst;
	if (ok) {
		rl->printed++;
		*suppressed = rl->suppressed;
		rl->suppressed = 0;
	} else {
		rl->suppressed++;
	}
	pthread_mutex_unlock(&lock);
	return ok;
}
