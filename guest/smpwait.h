/* SPDX-License-Identifier: MIT */
/*
 * smpwait.h - the arithmetic of the guest kit's SMP start-up wait: a clock that never runs
 * backwards, and when to stop waiting for APs. Pure functions on integers, so that a host
 * unit test (tests/unit/test_guest_smpwait.c) checks them with the freestanding guest's
 * exact code.
 */
#ifndef GODWIT_GUEST_SMPWAIT_H
#define GODWIT_GUEST_SMPWAIT_H

#include <stdbool.h>
#include <stdint.h>

/*
 * Nanoseconds from the BSP's tick count and the LAPIC timer's current count (one count
 * per ns, counting down from period). The raw sum is not monotonic: the periodic timer reloads
 * its count when it fires, but the tick interrupt that advances `ticks` reaches the vCPU
 * later (milliseconds on a loaded or nested host), and a reading in between is up to a whole
 * period behind the previous one. Such a reading is answered with the previous one, so time
 * stands still until the interrupt lands instead of going backwards. *last holds the
 * previous answer (0 at first).
 */
static inline uint64_t smpwait_clock(uint64_t *last, uint64_t tick, uint32_t count,
				     uint64_t period)
{
	uint64_t ns = tick * period + (count < period ? period - count : 0);

	if (ns < *last)
		ns = *last;
	*last = ns;
	return ns;
}

/* How long the BSP waits for APs to arrive, and what it has seen so far. */
struct smpwait {
	uint32_t hint;		/* CPUID's processor count, BSP included; 1 if unknown */
	uint64_t quiet;		/* stop when no AP arrived for this long (ns) */
	uint64_t cap;		/* and in any case after this long (ns) */
	uint64_t start;		/* when the INIT was sent */
	uint64_t changed;	/* when the count last moved */
	uint32_t seen;		/* APs arrived */
};

/* now - then, or 0 if now is earlier: an elapsed time never wraps to a huge one. */
static inline uint64_t smpwait_since(uint64_t now, uint64_t then)
{
	return now > then ? now - then : 0;
}

/*
 * Whether to stop waiting, given the time and the APs that have arrived by then: every CPU
 * of CPUID's count has arrived, or arrivals stood still for the quiet window, or the cap
 * passed.
 */
static inline bool smpwait_done(struct smpwait *w, uint64_t now, uint32_t arrived)
{
	if (arrived != w->seen) {
		w->seen = arrived;
		w->changed = now;
	}
	if (w->hint > 1 && w->seen + 1 >= w->hint)
		return true;
	return smpwait_since(now, w->changed) >= w->quiet ||
	       smpwait_since(now, w->start) >= w->cap;
}

#endif
