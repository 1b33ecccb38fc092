/* SPDX-License-Identifier: MIT */
/*
 * The ordering rule that deltas over several connections rely on (migration/fences.h,
 * delta.c): the source updates its delta cache as it queues a page, sends a page at most
 * once per round, spreads batches over the connections as it likes and ends every round
 * with FENCE on each; the destination's connections install their records in any
 * interleaving the barrier allows. Here a model of both sides runs on the real delta cache,
 * encoder and decoder (state/xbzrle.h) and the real barrier rules, with a random
 * interleaving per seed: every delta must meet, in the destination's page, the exact base
 * it was made against, and the destination must end holding what the source sent last. Without the
 * barrier (a receiver reading past its FENCE at once) the same model must see a delta meet
 * the wrong base: the check can fail.
 */
#include "base/util.h"
#include "migration/fences.h"
#include "state/xbzrle.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

/* more pages than the smallest cache has slots (256): pages evict each other too */
#define NPAGES 320u
#define ROUNDS 5u
#define BATCH_MAX 8u
#define ITEMS_MAX (ROUNDS * NPAGES + ROUNDS * 2)

enum kind { PAGE_WHOLE, PAGE_ZERO, PAGE_DELTA, FENCE };

struct item {
	enum kind kind;
	uint32_t pg;
	uint64_t seq;               /* FENCE */
	uint8_t *data;              /* WHOLE: the page; DELTA: the delta */
	size_t len;
	uint8_t *base;              /* DELTA: the copy the delta was made against */
};

struct conn {
	struct item items[ITEMS_MAX];
	unsigned n, at;
	bool waiting;               /* an extra connection that read its FENCE, not past it */
};

struct sim {
	uint8_t src[NPAGES][XBZRLE_PAGE];
	uint8_t sent[NPAGES][XBZRLE_PAGE];  /* the source's idea of what the destination holds */
	uint8_t dst[NPAGES][XBZRLE_PAGE];
	struct conn c[MIG_STREAMS_MAX];
	unsigned n;
	uint64_t rng;
	unsigned deltas, bad_base;
};

static uint32_t sim_rand(struct sim *s)
{
	s->rng ^= s->rng << 13;
	s->rng ^= s->rng >> 7;
	s->rng ^= s->rng << 17;
	return (uint32_t)(s->rng >> 11);
}

static void sim_push(struct conn *c, struct item it)
{
	assert_true(c->n < ITEMS_MAX);
	c->items[c->n++] = it;
}

static uint8_t *dup_bytes(const void *p, size_t len)
{
	uint8_t *d = malloc(len ? len : 1);

	assert_non_null(d);
	memcpy(d, p, len);
	return d;
}

/* The guest's writes between rounds: a few bytes of a page, the whole page, or zero. */
static void sim_write(struct sim *s, uint32_t pg)
{
	uint32_t how = sim_rand(s) % 16;

	if (how == 0) {
		memset(s->src[pg], 0, XBZRLE_PAGE);
	} else if (how == 1) {
		for (unsigned i = 0; i < XBZRLE_PAGE; i++)
			s->src[pg][i] = (uint8_t)sim_rand(s);
	} else {
		for (unsigned k = 1 + sim_rand(s) % 6; k; k--)
			s->src[pg][sim_rand(s) % XBZRLE_PAGE] = (uint8_t)sim_rand(s);
	}
}

/* The source: rounds of dirty pages, queued once each, batches spread at random. */
static void sim_source(struct sim *s, struct xbzrle_cache *cache)
{
	static uint8_t out[XBZRLE_PAGE];
	bool dirty[NPAGES];

	for (uint32_t pg = 0; pg < NPAGES; pg++) {
		for (unsigned i = 0; i < XBZRLE_PAGE; i += 8)
			s->src[pg][i] = (uint8_t)(pg + i);
		dirty[pg] = true;
	}
	for (unsigned round = 0; round < ROUNDS; round++) {
		struct conn *c = NULL;
		unsigned left = 0;

		for (uint32_t pg = 0; pg < NPAGES; pg++) {
			struct item it = { .pg = pg };
			size_t len;

			if (!dirty[pg])
				continue;
			dirty[pg] = false;
			if (!left) { /* a new batch, to whichever connection */
				c = &s->c[sim_rand(s) % s->n];
				left = 1 + sim_rand(s) % BATCH_MAX;
			}
			left--;
			if (page_is_zero(s->src[pg])) {
				xbzrle_cache_drop(cache, pg);
				it.kind = PAGE_ZERO;
			} else if (xbzrle_cache_update(cache, pg, s->src[pg], out, XBZRLE_BOUND,
						       &len)) {
				it.kind = PAGE_DELTA;
				it.data = dup_bytes(out, len);
				it.len = len;
				it.base = dup_bytes(s->sent[pg], XBZRLE_PAGE);
			} else {
				it.kind = PAGE_WHOLE;
				it.data = dup_bytes(s->src[pg], XBZRLE_PAGE);
			}
			memcpy(s->sent[pg], s->src[pg], XBZRLE_PAGE);
			sim_push(c, it);
		}
		for (unsigned i = 0; i < s->n; i++)
			sim_push(&s->c[i], (struct item){ .kind = FENCE, .seq = round + 1 });
		/* the guest runs between rounds */
		for (unsigned k = sim_rand(s) % NPAGES; k; k--) {
			uint32_t pg = sim_rand(s) % NPAGES;

			sim_write(s, pg);
			dirty[pg] = true;
		}
	}
}

static void sim_install(struct sim *s, const struct item *it)
{
	struct errbuf e;

	switch (it->kind) {
	case PAGE_WHOLE:
		memcpy(s->dst[it->pg], it->data, XBZRLE_PAGE);
		break;
	case PAGE_ZERO:
		memset(s->dst[it->pg], 0, XBZRLE_PAGE);
		break;
	case PAGE_DELTA:
		s->deltas++;
		if (memcmp(s->dst[it->pg], it->base, XBZRLE_PAGE))
			s->bad_base++;
		assert_int_equal(xbzrle_decode(s->dst[it->pg], it->data, it->len, &e), 0);
		break;
	case FENCE:
		break;
	}
}

/*
 * One step of connection i, if it can take one now: true when it did. barrier false: FENCEs
 * are read past at once (what a destination without the barrier would do).
 */
static bool sim_step(struct sim *s, struct mig_fences *f, unsigned i, bool barrier)
{
	struct conn *c = &s->c[i];
	const struct item *it = &c->items[c->at];

	if (c->at == c->n)
		return false;
	if (it->kind != FENCE || !barrier) {
		sim_install(s, it);
		c->at++;
		return true;
	}
	if (i == 0) {
		assert_int_equal(mig_fences_first_check(f, it->seq), 0);
		if (mig_fences_first_late(f, it->seq))
			return false;
		mig_fences_first_pass(f, it->seq);
		c->at++;
		return true;
	}
	if (!c->waiting) {
		assert_int_equal(mig_fences_extra_read(f, i, it->seq), 0);
		c->waiting = true;
		return true;
	}
	if (!mig_fences_extra_may_go(f, i))
		return false;
	c->waiting = false;
	c->at++;
	return true;
}

/* The destination: a random runnable connection steps until all are drained. */
static void sim_destination(struct sim *s, bool barrier)
{
	struct mig_fences f = { .n = s->n };

	for (;;) {
		unsigned start = sim_rand(s) % s->n, k;
		bool done = true;

		for (unsigned i = 0; i < s->n; i++)
			done &= s->c[i].at == s->c[i].n;
		if (done)
			return;
		/* the first runnable one from a random place: every interleaving can happen */
		for (k = 0; k < s->n; k++)
			if (sim_step(s, &f, (start + k) % s->n, barrier))
				break;
		assert_true(k < s->n); /* the barrier never deadlocks */
	}
}

static void sim_free(struct sim *s)
{
	for (unsigned i = 0; i < s->n; i++)
		for (unsigned k = 0; k < s->c[i].n; k++) {
			free(s->c[i].items[k].data);
			free(s->c[i].items[k].base);
		}
}

/* Runs one seed over n connections; returns the deltas that met the wrong base. */
static unsigned sim_run(unsigned n, uint64_t seed, bool barrier, bool *equal)
{
	struct sim *s = calloc(1, sizeof(*s));
	struct xbzrle_cache *cache;
	struct errbuf e;
	unsigned bad;

	assert_non_null(s);
	s->n = n;
	s->rng = seed * 0x9E3779B97F4A7C15ull + 1;
	assert_int_equal(xbzrle_cache_new(&cache, XBZRLE_CACHE_MIN, &e), 0);
	sim_source(s, cache);
	sim_destination(s, barrier);
	assert_true(s->deltas > 0);
	*equal = !memcmp(s->dst, s->sent, sizeof(s->dst));
	bad = s->bad_base;
	xbzrle_cache_free(cache);
	sim_free(s);
	free(s);
	return bad;
}

static void test_deltas_in_order(void **state)
{
	(void)state;
	for (unsigned n = 1; n <= 4; n++)
		for (uint64_t seed = 1; seed <= 40; seed++) {
			bool equal;

			assert_int_equal(sim_run(n, seed, true, &equal), 0);
			assert_true(equal);
		}
}

/* The same model without the barrier: some delta meets a later or earlier copy. */
static void test_without_barrier_fails(void **state)
{
	unsigned bad = 0, unequal = 0;

	(void)state;
	for (uint64_t seed = 1; seed <= 40; seed++) {
		bool equal;

		bad += sim_run(2, seed, false, &equal);
		unequal += !equal;
	}
	assert_true(bad > 0);
	assert_true(unequal > 0);
}

static void test_fences_out_of_sequence(void **state)
{
	struct mig_fences f = { .n = 3 };

	(void)state;
	assert_int_equal(mig_fences_extra_read(&f, 1, 2), -EPROTO);
	assert_int_equal(mig_fences_extra_read(&f, 1, 1), 0);
	assert_false(mig_fences_extra_may_go(&f, 1));
	assert_int_equal(mig_fences_extra_read(&f, 1, 1), -EPROTO);
	assert_int_equal(mig_fences_first_check(&f, 2), -EPROTO);
	assert_int_equal(mig_fences_first_check(&f, 1), 0);
	/* connection 2 has not read FENCE 1: the first waits */
	assert_int_equal(mig_fences_first_late(&f, 1), 2);
	assert_int_equal(mig_fences_extra_read(&f, 2, 1), 0);
	assert_int_equal(mig_fences_first_late(&f, 1), 0);
	mig_fences_first_pass(&f, 1);
	assert_true(mig_fences_extra_may_go(&f, 1));
	assert_true(mig_fences_extra_may_go(&f, 2));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_deltas_in_order),
		cmocka_unit_test(test_without_barrier_fails),
		cmocka_unit_test(test_fences_out_of_sequence),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
