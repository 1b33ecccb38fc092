/* SPDX-License-Identifier: MIT */
/* Logging to stderr with a level, a module tag and rate limiting for noisy guests. */
#ifndef GODWIT_BASE_LOG_H
#define GODWIT_BASE_LOG_H

#include <stdbool.h>
#include <stdint.h>

enum log_level { LOG_ERR, LOG_WARN, LOG_INFO, LOG_DEBUG };

void log_level_set(enum log_level level);
void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_err(...) log_msg(LOG_ERR, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARN, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)

/*
 * A rate limiter: at most `burst` messages per `interval_ms`; the number
 * suppressed is reported with the next message that passes.
 */
struct log_ratelimit {
	uint64_t window_start_ns;
	uint32_t interval_ms;
	uint32_t burst;
	uint32_t printed;
	uint32_t suppressed;
};

#define LOG_RATELIMIT_INIT(ms, n) { .interval_ms = (ms), .burst = (n) }

bool log_ratelimit_allow(struct log_ratelimit *rl, uint32_t *suppressed);

#endif
