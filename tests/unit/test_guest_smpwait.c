/* SPDX-License-Identifier: MIT */
/*
 * The guest kit's SMP start-up wait (guest/smpwait.h), compiled for the host: its clock
 * never runs backwards when the tick interrupt lands late, and the wait for APs stops only
 * for the reasons it means to (all arrived, quiet window, cap), never because a reading
 * came out earlier than the one before.
 */
#include "smpwait.h"

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#define MS 1000000ull
#define PERIOD (4 * MS) /* the guest kit's default 250 Hz */

static uint32_t rng_state = 0x2545f491;

static uint32_t rng_next(void)
{
	/* xorshift32: deterministic, so a failure reproduces */
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 17;
	rng_state ^= rng_state << 5;
	return rng_state;
}

/*
 * A periodic LAPIC timer as a late-delivering host shows it: the count reloads on time,
 * the tick interrupt (which advances the guest's tick counter) arrives `late` ns after the
 * reload, and ticks missed meanwhile coalesce into one, as KVM's do.
 */
struct fake_timer {
	uint64_t ticks;		/* what the guest's ISR has counted */
	uint64_t fired;		/* reloads the ISR has seen, in periods */
};

/* The guest's view at real time now: its tick count and the timer's current count. */
static void fake_timer_read(struct fake_timer *ft, uint64_t now, uint64_t late, uint64_t *ticks,
			    uint32_t *count)
{
	uint64_t reloads = now / PERIOD;

	/* the interrupt for the latest reload is delivered once `late` has passed */
	if (reloads > ft->fired && now - reloads * PERIOD >= late) {
		ft->ticks++;
		ft->fired = reloads;
	}
	*ticks = ft->ticks;
	*count = (uint32_t)(PERIOD - now % PERIOD);
}

/* The readings of a boot that lost APs: the timer reloaded, its tick not yet counted. */
static void test_clock_late_tick(void **state)
{
	uint64_t last = 0;

	(void)state;
	assert_int_equal(smpwait_clock(&last, 2, (uint32_t)(PERIOD - 3703532), PERIOD), 11703532);
	/* raw: 2 * 4 ms + 12523 ns = 8012523, 3.7 ms before the previous answer */
	assert_int_equal(smpwait_clock(&last, 2, (uint32_t)(PERIOD - 12523), PERIOD), 11703532);
	/* the tick lands: time goes on from where it really is */
	assert_int_equal(smpwait_clock(&last, 3, (uint32_t)(PERIOD - 20000), PERIOD), 12020000);
}

/* A count above the period (a timer just reprogrammed) adds nothing rather than wrapping. */
static void test_clock_count_above_period(void **state)
{
	uint64_t last = 0;

	(void)state;
	assert_int_equal(smpwait_clock(&last, 5, (uint32_t)PERIOD + 7, PERIOD), 5 * PERIOD);
}

/* Random delivery delays up to three periods: never backwards, never ahead of real time. */
static void test_clock_monotonic_random(void **state)
{
	struct fake_timer ft = { 0, 0 };
	uint64_t last = 0, prev = 0, now = 0;

	(void)state;
	for (int i = 0; i < 200000; i++) {
		uint64_t late = rng_next() % (3 * PERIOD), ticks, ns;
		uint32_t count;

		now += rng_next() % (PERIOD / 8);
		fake_timer_read(&ft, now, late, &ticks, &count);
		ns = smpwait_clock(&last, ticks, count, PERIOD);
		assert_true(ns >= prev);
		assert_true(ns <= now);
		prev = ns;
	}
}

static struct smpwait wait_new(uint32_t hint, uint64_t start)
{
	return (struct smpwait){
		.hint = hint, .quiet = 100 * MS, .cap = 1000 * MS, .start = start,
		.changed = start, .seen = 0,
	};
}

/* An earlier reading than the last arrival's never counts as a long quiet spell. */
static void test_wait_earlier_reading(void **state)
{
	struct smpwait w = wait_new(16, 5546110);

	(void)state;
	assert_false(smpwait_done(&w, 11703532, 7));
	assert_false(smpwait_done(&w, 8012523, 7));
	assert_false(smpwait_done(&w, 5000000, 7));	/* before start too */
	assert_int_equal(w.seen, 7);
	assert_true(smpwait_done(&w, 11703532 + 100 * MS, 7));
}

static void test_wait_policy(void **state)
{
	struct smpwait w = wait_new(4, 0);

	(void)state;
	/* all of CPUID's count (BSP included) arrived: done at once */
	assert_false(smpwait_done(&w, 1 * MS, 2));
	assert_true(smpwait_done(&w, 2 * MS, 3));

	/* one missing: the quiet window from the last arrival ends the wait */
	w = wait_new(4, 0);
	assert_false(smpwait_done(&w, 50 * MS, 2));
	assert_false(smpwait_done(&w, 149 * MS, 2));
	assert_true(smpwait_done(&w, 150 * MS, 2));

	/* arrivals that keep trickling in stop at the cap */
	w = wait_new(64, 0);
	for (uint64_t t = 0; t < 1000 * MS; t += 50 * MS)
		assert_false(smpwait_done(&w, t, (uint32_t)(t / (50 * MS)) + 1));
	assert_true(smpwait_done(&w, 1000 * MS, 21));

	/* no count known: only the windows end it */
	w = wait_new(1, 0);
	w.quiet = 10 * MS;
	assert_false(smpwait_done(&w, 5 * MS, 3));
	assert_true(smpwait_done(&w, 15 * MS, 3));
}

/*
 * The start-up loop as the guest runs it, against the late-ticking timer: APs arriving
 * every 3 ms are all waited for, however late the ticks land.
 */
static void test_wait_with_late_ticks(void **state)
{
	(void)state;
	for (int run = 0; run < 2000; run++) {
		struct fake_timer ft = { 0, 0 };
		uint64_t last = 0, now = 1 * MS + rng_next() % PERIOD, ticks;
		uint32_t count, arrived = 0;
		struct smpwait w;

		fake_timer_read(&ft, now, 0, &ticks, &count);
		w = wait_new(16, smpwait_clock(&last, ticks, count, PERIOD));
		for (;;) {
			uint64_t late = rng_next() % (2 * PERIOD);

			now += 100000 + rng_next() % 50000;
			arrived = (uint32_t)((now - 1 * MS) / (3 * MS));
			if (arrived > 15)
				arrived = 15;
			fake_timer_read(&ft, now, late, &ticks, &count);
			if (smpwait_done(&w, smpwait_clock(&last, ticks, count, PERIOD), arrived))
				break;
		}
		assert_int_equal(w.seen, 15);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_clock_late_tick),
		cmocka_unit_test(test_clock_count_above_period),
		cmocka_unit_test(test_clock_monotonic_random),
		cmocka_unit_test(test_wait_earlier_reading),
		cmocka_unit_test(test_wait_policy),
		cmocka_unit_test(test_wait_with_late_ticks),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
