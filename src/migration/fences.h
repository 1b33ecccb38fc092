/* SPDX-License-Identifier: MIT */
/*
 * The destination's FENCE barrier over several connections (streams.c), as pure rules on
 * plain counters so that a test can drive every interleaving of the receiving threads
 * (tests/unit/test_fences.c). The caller holds the lock that guards the counters and
 * waits on its condition variable wherever a rule says "not yet".
 *
 * What the barrier guarantees: every PAGES record that came before FENCE seq on any
 * connection is installed before any PAGES record that came after FENCE seq on any
 * connection. An extra connection installs its records in its own order and reads on past
 * its FENCE seq only once the first connection passed FENCE seq; the first connection
 * passes FENCE seq only once every extra connection has read its own FENCE seq (having
 * installed all it carried before it). The source ends every round with FENCE on every
 * connection and sends a page at most once per round, so a page's copies are installed
 * in the order they were sent whichever connections carried them: what a delta
 * (migrate --delta) needs, its base being the copy sent before it.
 */
#ifndef GODWIT_MIGRATION_FENCES_H
#define GODWIT_MIGRATION_FENCES_H

#include "migration/proto.h"

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>

struct mig_fences {
	unsigned n;                        /* connections in all; index 0 is the first */
	uint64_t first;                    /* the last FENCE the first connection passed */
	uint64_t extra[MIG_STREAMS_MAX];   /* [i]: the last FENCE extra connection i read */
};

/* FENCE seq read on extra connection i (1..n-1): 0, or -EPROTO when out of sequence. */
static inline int mig_fences_extra_read(struct mig_fences *f, unsigned i, uint64_t seq)
{
	if (seq != f->extra[i] + 1)
		return -EPROTO;
	f->extra[i] = seq;
	return 0;
}

/* May extra connection i read on past the FENCE it read last? */
static inline bool mig_fences_extra_may_go(const struct mig_fences *f, unsigned i)
{
	return f->first >= f->extra[i];
}

/* FENCE seq on the first connection: -EPROTO when out of sequence, else 0. */
static inline int mig_fences_first_check(const struct mig_fences *f, uint64_t seq)
{
	return seq == f->first + 1 ? 0 : -EPROTO;
}

/* The first extra connection that has not read FENCE seq yet, 0: none (the first may pass). */
static inline unsigned mig_fences_first_late(const struct mig_fences *f, uint64_t seq)
{
	for (unsigned i = 1; i < f->n; i++)
		if (f->extra[i] < seq)
			return i;
	return 0;
}

/* The first connection passes FENCE seq (once mig_fences_first_late() said 0). */
static inline void mig_fences_first_pass(struct mig_fences *f, uint64_t seq)
{
	f->first = seq;
}

#endif
