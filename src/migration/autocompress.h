/* SPDX-License-Identifier: MIT */
/*
 * The --compress auto policy as a pure state machine: it is fed what each batch cost (times
 * and byte counts the sender measured) and says whether the next batches are compressed and
 * when a small sample is compressed to keep the compressor's figures current. No clock, no
 * lock and no I/O here, so the choice can be tested on recorded figures.
 */
#ifndef GODWIT_MIGRATION_AUTOCOMPRESS_H
#define GODWIT_MIGRATION_AUTOCOMPRESS_H

#include <stdbool.h>
#include <stdint.h>

/*
 * The choice is taken again at the end of each window, from that window's figures. Sending
 * plain, a window is at least MIG_AUTOC_WINDOW batches and MIG_AUTOC_WINDOW_NS of the
 * senders' time (on a slow link: two batches and 8 * MIG_AUTOC_WINDOW_NS), and the link's
 * pace is its batches' mean with the slowest quarter left out, so that on a fast link a
 * batch held up by a passing stall does not decide. Compressing, a window ends once
 * it has taken MIG_AUTOC_WINDOW_NS: a compressor starved of CPU is given up after one slow
 * batch.
 */
#define MIG_AUTOC_WINDOW 4
#define MIG_AUTOC_WINDOW_NS 50000000ull
/* a probe compresses the first MIG_AUTOC_SAMPLE pages of a batch (64 KiB) */
#define MIG_AUTOC_SAMPLE 16
/* samples may take at most 1/MIG_AUTOC_PROBE_SHARE of the time spent sending pages so far */
#define MIG_AUTOC_PROBE_SHARE 100
/*
 * That share is halved for each plain window in a row in which compressing could not have
 * paid whatever it saved (the compressor or the unsaved bytes alone slower than 0.85 * link),
 * down to 1/(MIG_AUTOC_PROBE_SHARE << MIG_AUTOC_BACKOFF_MAX); it is at that floor at once
 * while the compressor takes more than twice a plain byte's time (loopback, 10 Gbit/s), so a
 * move of a few hundred MiB there carries one sample.
 */
#define MIG_AUTOC_BACKOFF_MAX 6
/*
 * Compressing, after this many windows in which the socket never made the sender wait, the
 * link's pace is measured again with a plain window (then after twice as many, up to 64).
 */
#define MIG_AUTOC_RECHECK 16

/* What one batch cost the sender. */
struct mig_autoc_batch {
	uint64_t ns;     /* time to compress and hand over the batch (and a bandwidth cap's wait) */
	uint64_t wire;   /* bytes it put on the connection */
	uint64_t raw;    /* bytes of page data it carried */
	uint64_t zns;    /* of ns, the compressor's time */
	uint64_t zraw;   /* of raw, bytes given to the compressor */
	uint64_t zsaved; /* bytes the compressor saved */
	/*
	 * The sender thread's time on a CPU meanwhile and its time runnable but waiting for one;
	 * both 0: not measured (the sender reads them only for batches that carry a sample).
	 */
	uint64_t run_ns;
	uint64_t wait_ns;
};

#define MIG_AUTOC_PACES 64 /* a window's batches whose pace is kept */

struct mig_autoc {
	bool on;                /* whole batches are compressed */
	bool settling;          /* the next batch is the first compressed one */
	uint32_t batches;       /* in the current window */
	uint64_t ns, wire, raw, zns; /* the current window's writes */
	uint64_t run_ns, wait_ns;    /* and the senders' CPU time and run-queue wait */
	float pace[MIG_AUTOC_PACES]; /* plain: each batch's ns per wire byte */
	uint32_t npace;
	double cz_ns, cz_raw, cz_saved; /* the compressor's figures, older windows weighing less */
	double link;            /* ns per byte of the last window sent plain; 0: not measured yet */
	uint64_t probe_ns;      /* compressor time spent on samples */
	uint64_t sent_ns;       /* time spent sending pages, every batch's ns */
	uint32_t backoff;       /* plain windows in a row that could not have paid, up to MAX */
	double share;           /* the sender's CPU share last measured (1: none yet) */
	uint32_t unblocked;     /* compressed windows the link did not hold up */
	uint32_t recheck;       /* re-measure the link after that many such windows */
};

void mig_autoc_init(struct mig_autoc *a);

/*
 * The rule, in ns per byte of page data: link, the time a plain byte takes to hand over
 * (when the link is the bound the socket blocks and this is the link's pace); zcost and
 * saved, the compressor's time per byte (a sample's, divided by the share of time the sender
 * got a CPU when it wanted one: the guest's vCPUs and the destination compete for the same
 * cores, and a 4 MiB batch is preempted where a 64 KiB sample is not) and the fraction it
 * saves; measured, the time per
 * byte with compression on (0 when compression is off). Off: compress when the predicted
 * time, max(zcost, (1 - saved) * link) plus half the shorter of the two (the compressor
 * overlaps the link only in part: both share this host's cores), is below 0.85 * link. On:
 * stay on while what compressed batches cost stays below 0.95 * link, so a CPU that became
 * the bound turns compression off within a window.
 */
bool mig_autoc_choose(bool on, double link, double zcost, double saved, double measured);

/*
 * Whether the next batch, sent plain, should carry a compressed sample (and its sender read
 * the scheduler's statistics).
 */
bool mig_autoc_probe_due(const struct mig_autoc *a);

/*
 * Adds a batch; returns true when the choice (a->on) changed. Compressing, the link's pace
 * is not seen: a window whose hand-over took under half the last plain window's pace says
 * the CPU, not the link, is the bound, and after enough of them a window is sent plain
 * again, so that a link that became faster (or a plain window slowed by a passing stall)
 * does not keep compression on for the rest of the move.
 */
bool mig_autoc_account(struct mig_autoc *a, const struct mig_autoc_batch *b);

#endif
