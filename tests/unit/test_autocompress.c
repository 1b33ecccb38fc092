/* SPDX-License-Identifier: MIT */
/*
 * The --compress auto policy (src/migration/autocompress.c) fed the figures measured on this
 * 2-core host: a 4 MiB batch of content=mixed takes zstd -1 about 2.4 ns per byte (4.3 under
 * load) and saves 54%; a plain byte takes about 0.3 ns to hand over on loopback, 0.8 ns
 * through a 10 Gbit/s link and 8 ns through a 1 Gbit/s one, where the socket blocks. A small
 * model of the sender turns those into per-batch figures (the first batch fills an empty
 * socket buffer; a compressed batch costs its compression or its bytes over the link,
 * whichever is longer, as the link drains the socket buffer meanwhile)
 * and the tests check what the policy chose: on fast links it never compresses a batch and
 * its samples stay a small share of the data; on 1 Gbit/s it compresses from the first
 * windows; when the CPU becomes the bound it turns off again.
 */
#include "migration/autocompress.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#define BATCH (4u << 20)
#define BATCHES 64 /* 256 MiB, the conn-* scenarios' working set */
#define SAMPLE ((uint64_t)MIG_AUTOC_SAMPLE * 4096)

struct link {
	double link;   /* ns per wire byte once the socket buffer is full */
	double zcost;  /* compressor ns per raw byte, with a CPU to itself */
	double saved;  /* fraction of the raw bytes the compressor saves */
	double share;  /* of the time the sender wants a CPU, the share it gets */
	int stall;     /* every stall-th plain batch is held up 80 ms (0: never) */
};

struct run {
	uint64_t ns;            /* simulated time of the move */
	uint64_t zraw;          /* raw bytes given to the compressor */
	uint64_t zns;           /* the compressor's time */
	int whole;              /* batches compressed whole */
	int samples;            /* batches that carried a sample */
	int first_on, last_off; /* batch index; -1: never */
	bool on_end;            /* compressing when the move ended */
};

#define MAX(a, b) ((a) > (b) ? (a) : (b))

/* What one batch costs the sender: compressing (all, a sample or nothing), then handing over. */
static struct mig_autoc_batch batch_cost(const struct link *l, int i, bool whole, bool sample)
{
	struct mig_autoc_batch b = { .raw = BATCH };
	double zraw = whole ? BATCH : sample ? SAMPLE : 0, wire;
	/* the first batch goes into an empty socket buffer: a copy, not the link's pace */
	double pace = i == 0 && l->link > 0.2 ? 0.2 : l->link;

	double share = l->share;

	wire = BATCH - zraw * l->saved;
	b.zraw = (uint64_t)zraw;
	b.zsaved = (uint64_t)(zraw * l->saved);
	/* a sample is too short to be preempted; a whole batch waits for the CPU it shares */
	b.zns = (uint64_t)(zraw * l->zcost / (whole ? share : 1));
	b.wire = (uint64_t)wire;
	b.ns = b.zns + (uint64_t)(wire * pace);
	/* the link drains the socket buffer while the next batch is compressed (as measured) */
	if (whole)
		b.ns = MAX(b.zns + (uint64_t)(0.1 * wire), (uint64_t)(wire * pace));
	else if (l->stall && i % l->stall == l->stall - 1)
		b.ns += 80000000;
	/*
	 * The sender's CPU time: the copy, the compressor; and what it waited for a CPU. The
	 * sender reads them only for a batch that carries a sample.
	 */
	if (sample) {
		b.run_ns = (uint64_t)(0.2 * wire + zraw * l->zcost);
		b.wait_ns = (uint64_t)((double)b.run_ns * (1 - share) / share);
	}
	return b;
}

/* A move of n batches; from batch change on the link is l2 (NULL: unchanged). */
static struct run simulate(const struct link *l1, const struct link *l2, int change, int n)
{
	struct run r = { .first_on = -1, .last_off = -1 };
	struct mig_autoc a;

	mig_autoc_init(&a);
	for (int i = 0; i < n; i++) {
		const struct link *l = l2 && i >= change ? l2 : l1;
		bool whole = a.on, sample = !whole && mig_autoc_probe_due(&a);
		struct mig_autoc_batch b = batch_cost(l, i, whole, sample);

		r.ns += b.ns;
		r.zraw += b.zraw;
		r.zns += b.zns;
		r.whole += whole;
		r.samples += sample;
		if (mig_autoc_account(&a, &b)) {
			if (a.on && r.first_on < 0)
				r.first_on = i;
			if (!a.on)
				r.last_off = i;
		}
	}
	r.on_end = a.on;
	return r;
}

static const struct link loopback = { 0.3, 2.4, 0.54, 1, 0 };
static const struct link gbit10 = { 0.8, 2.4, 0.54, 1, 0 };
static const struct link gbit10_loaded = { 0.8, 4.3, 0.54, 1, 0 };
/* live moves on a loaded host: one plain batch in 4 held up 80 ms, the CPU shared */
static const struct link gbit10_stalls = { 0.8, 2.6, 0.54, 0.5, 4 };
static const struct link gbit1 = { 8.0, 2.4, 0.54, 1, 0 };
static const struct link gbit1_loaded = { 8.0, 4.3, 0.54, 1, 0 };
/* the guest's two vCPUs and the destination take three quarters of the two cores */
static const struct link gbit1_starved = { 8.0, 2.6, 0.54, 0.2, 0 };
static const struct link random_content = { 8.0, 1.0, 0.0, 1, 0 };

/*
 * On a link faster than the compressor no batch is compressed and samples take under 1% of
 * the time,
 * also when batches are held up now and then (figures of a live move on a loaded host: one
 * plain window's mean then said 6.4 ns per byte at 10 Gbit/s).
 */
static void test_fast_links_stay_plain(void **state)
{
	const struct link *fast[] = { &loopback, &gbit10, &gbit10_loaded, &gbit10_stalls };

	(void)state;
	for (unsigned i = 0; i < sizeof(fast) / sizeof(fast[0]); i++) {
		struct run r = simulate(fast[i], NULL, 0, BATCHES);

		assert_int_equal(r.whole, 0);
		assert_int_equal(r.first_on, -1);
		/* samples: 1% of the time, give or take the last one; about as much of the data */
		if (r.zns > r.ns / 100 + (uint64_t)(SAMPLE * fast[i]->zcost))
			fail_msg("link %u: samples took %llu of %llu ns", i,
				 (unsigned long long)r.zns, (unsigned long long)r.ns);
		if (r.zraw * 50 > (uint64_t)BATCHES * BATCH)
			fail_msg("link %u: %llu of %u bytes compressed", i,
				 (unsigned long long)r.zraw, BATCHES * BATCH);
	}
}

/*
 * Where the compressor takes over twice a plain byte's time (loopback, 10 Gbit/s, idle or
 * loaded), one sample is all a 256 MiB move carries; in a move 16 times as long, stalls and
 * all, the samples take under 0.1% of the time (a fixed 1% budget was most of what auto lost
 * to plain on loopback).
 */
static void test_fast_links_sample_rarely(void **state)
{
	const struct link *fast[] = { &loopback, &gbit10, &gbit10_loaded, &gbit10_stalls };

	(void)state;
	for (unsigned i = 0; i < sizeof(fast) / sizeof(fast[0]); i++) {
		struct run r = simulate(fast[i], NULL, 0, BATCHES);
		struct run l = simulate(fast[i], NULL, 0, 16 * BATCHES);

		if (fast[i]->stall == 0 && r.samples > 1)
			fail_msg("link %u: %d samples in %d batches", i, r.samples, BATCHES);
		if (l.zns * 1000 > l.ns)
			fail_msg("link %u: samples took %llu of %llu ns", i,
				 (unsigned long long)l.zns, (unsigned long long)l.ns);
		assert_int_equal(l.whole, 0);
	}
}

/*
 * The sampling budget backs off only while compressing cannot pay: when the link turns slow
 * (10 Gbit/s, then 1 Gbit/s for the rest of a long move), compression goes on within three
 * windows of the change.
 */
static void test_backoff_follows_link(void **state)
{
	struct run r = simulate(&gbit10, &gbit1, 4 * BATCHES, 8 * BATCHES);

	(void)state;
	assert_in_range(r.first_on, 4 * BATCHES, 4 * BATCHES + 3 * MIG_AUTOC_WINDOW);
	assert_true(r.on_end);
}

/*
 * On 1 Gbit/s compression goes on within the first three windows and stays on but for a
 * re-measure of the link when the compressor is the bound (loaded host); the move then
 * costs little more than compressing everything would (the model's time).
 */
static void test_slow_link_compresses(void **state)
{
	const struct link *slow[] = { &gbit1, &gbit1_loaded };

	(void)state;
	for (unsigned i = 0; i < sizeof(slow) / sizeof(slow[0]); i++) {
		struct run r = simulate(slow[i], NULL, 0, BATCHES);
		uint64_t all = 0;

		for (int k = 0; k < BATCHES; k++)
			all += batch_cost(slow[i], k, true, false).ns;
		assert_in_range(r.first_on, 0, 3 * MIG_AUTOC_WINDOW);
		/* at most one plain window to measure the link again, and the settling batch */
		assert_true(r.whole >= BATCHES - 6 * MIG_AUTOC_WINDOW);
		if (r.ns * 100 > all * 115)
			fail_msg("link %u: %llu ns vs %llu compressing everything", i,
				 (unsigned long long)r.ns, (unsigned long long)all);
	}
}

/*
 * A sample takes 0.2 ms and is rarely preempted, a 4 MiB batch is: with the guest's vCPUs
 * taking most of the cores (a live move measured 63 ns per byte for whole batches while its
 * samples said 3.3), compressing would lose even on 1 Gbit/s, so it stays off.
 */
static void test_starved_cpu_stays_plain(void **state)
{
	struct run r = simulate(&gbit1_starved, NULL, 0, BATCHES);

	(void)state;
	assert_int_equal(r.whole, 0);
}

/* Content that does not compress is never compressed, however slow the link. */
static void test_incompressible_stays_plain(void **state)
{
	struct run r = simulate(&random_content, NULL, 0, BATCHES);

	(void)state;
	assert_int_equal(r.whole, 0);
}

/*
 * Compressing on 1 Gbit/s, the compressor becomes 5x slower (other work took the cores):
 * off within two windows (a compressed batch then takes 50 ms, a window of its own).
 */
static void test_cpu_bound_turns_off(void **state)
{
	const struct link busy = { 8.0, 12.0, 0.54, 1, 0 };
	struct run r = simulate(&gbit1, &busy, 24, BATCHES);

	(void)state;
	assert_in_range(r.first_on, 0, 23);
	assert_in_range(r.last_off, 24, 24 + 2 * MIG_AUTOC_WINDOW);
	assert_false(r.on_end);
}

/*
 * The link turns fast while compressing (say, another move's traffic ended): the compressed
 * batches no longer wait for the socket, so the link is measured again after
 * MIG_AUTOC_RECHECK windows and compression goes off, and stays off.
 */
static void test_link_speeds_up_turns_off(void **state)
{
	struct run r = simulate(&gbit1, &gbit10, 24, 4 * BATCHES);

	(void)state;
	assert_in_range(r.first_on, 0, 23);
	assert_true(r.last_off >= 24);
	assert_false(r.on_end);
}

/* The rule itself, on the figures above (ns per byte). */
static void test_choose(void **state)
{
	(void)state;
	assert_false(mig_autoc_choose(false, 0, 2.4, 0.54, 0));   /* link not measured yet */
	assert_false(mig_autoc_choose(false, 8.0, 0, 0, 0));      /* compressor not measured */
	assert_false(mig_autoc_choose(false, 0.8, 2.4, 0.54, 0)); /* 10 Gbit/s */
	assert_false(mig_autoc_choose(false, 0.3, 2.4, 0.54, 0)); /* loopback */
	assert_true(mig_autoc_choose(false, 8.0, 2.4, 0.54, 0));  /* 1 Gbit/s */
	assert_true(mig_autoc_choose(false, 8.0, 4.3, 0.54, 0));  /* 1 Gbit/s, loaded host */
	assert_false(mig_autoc_choose(false, 8.0, 7.5, 0.54, 0)); /* a gain too small to risk */
	assert_false(mig_autoc_choose(false, 8.0, 1.0, 0.05, 0)); /* saves too little */
	assert_true(mig_autoc_choose(true, 8.0, 2.4, 0.54, 4.0)); /* compressed batches cheaper */
	assert_false(mig_autoc_choose(true, 8.0, 2.4, 0.54, 7.9)); /* no longer */
}

/*
 * Odd figures. A sample batch whose compressor took all of its time, 2^62 ns: the samples'
 * time times the budget's divisor wrapped to 0, so the budget looked unspent and the next
 * batch carried another sample.
 */
static void test_odd_probe_budget(void **state)
{
	struct mig_autoc a;
	const struct mig_autoc_batch b = {
		.ns = 1ull << 62, .wire = BATCH, .raw = BATCH,
		.zns = 1ull << 62, .zraw = SAMPLE, .zsaved = SAMPLE / 2,
	};

	(void)state;
	mig_autoc_init(&a);
	assert_true(mig_autoc_probe_due(&a));
	mig_autoc_account(&a, &b);
	assert_false(mig_autoc_probe_due(&a));
}

/*
 * Odd figures. A sample's scheduler figures that sum past 2^64 (run time near 2^64, 20 ns
 * waiting): summed as integers they wrapped to 9 ns, the sender's CPU share came out near
 * 10^18, the compressor looked free and compression went on over loopback.
 */
static void test_odd_cpu_share(void **state)
{
	struct mig_autoc a;

	(void)state;
	mig_autoc_init(&a);
	for (int i = 0; i < BATCHES; i++) {
		bool sample = mig_autoc_probe_due(&a);
		struct mig_autoc_batch b = batch_cost(&loopback, i, false, sample);

		b.run_ns = i == 0 ? UINT64_MAX - 10 : 0;
		b.wait_ns = i == 0 ? 20 : 0;
		mig_autoc_account(&a, &b);
		assert_false(a.on);
	}
}

/*
 * Odd figures. A compressor said to save more than everything (saved 100 times the bytes
 * it was given): the rest's time went negative and a compressor eight times slower than
 * loopback was chosen.
 */
static void test_odd_saved(void **state)
{
	(void)state;
	assert_false(mig_autoc_choose(false, 0.3, 2.4, 100, 0));
	assert_false(mig_autoc_choose(false, 0.3, 2.4, 1.0, 0));
	assert_true(mig_autoc_choose(false, 8.0, 2.4, 100, 0)); /* 1 Gbit/s: still worth it */
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_choose),
		cmocka_unit_test(test_fast_links_stay_plain),
		cmocka_unit_test(test_fast_links_sample_rarely),
		cmocka_unit_test(test_backoff_follows_link),
		cmocka_unit_test(test_slow_link_compresses),
		cmocka_unit_test(test_starved_cpu_stays_plain),
		cmocka_unit_test(test_incompressible_stays_plain),
		cmocka_unit_test(test_cpu_bound_turns_off),
		cmocka_unit_test(test_link_speeds_up_turns_off),
		cmocka_unit_test(test_odd_probe_budget),
		cmocka_unit_test(test_odd_cpu_share),
		cmocka_unit_test(test_odd_saved),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
