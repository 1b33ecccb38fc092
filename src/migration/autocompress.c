/* SPDX-License-Identifier: MIT */
/*
 * --compress auto: compress only while the link, not this host's CPU, is the bound.
 *
 * Why it starts plain and probes small samples: on a fast link (loopback, 10 Gbit/s) zstd
 * at its fastest level is several times slower than handing raw pages to the socket, so
 * every compressed byte there is a loss; the policy must find that out without
 * compressing much. It sends plain and compresses a 64 KiB sample of a batch only while
 * samples have taken under 1% of the time spent sending pages, which is enough to know what the
 * compressor costs and saves on this content. Where compressing clearly cannot pay, that
 * budget shrinks (MIG_AUTOC_BACKOFF_MAX): measured on loopback (loaded host), a 256 MiB warm
 * move spent 4-10 ms on samples and 1.5-25 ms reading the scheduler's statistics twice per
 * batch, of 360-560 ms; that measuring was what auto lost to plain, so where it cannot gain
 * it measures as little as it can (the statistics are now read with a sample only).
 * On a slow link a plain batch blocks on the full socket, which shows the link's pace within
 * the first window or two; compression then goes on, and stays on while compressed batches
 * cost less than plain ones did.
 */
#include "migration/autocompress.h"

#include <stdlib.h>
#include <string.h>

void mig_autoc_init(struct mig_autoc *a)
{
	memset(a, 0, sizeof(*a));
	a->recheck = MIG_AUTOC_RECHECK;
	a->share = 1;
}

static double mig_autoc_max(double x, double y)
{
	return x > y ? x : y;
}

bool mig_autoc_choose(bool on, double link, double zcost, double saved, double measured)
{
	double rest, pred;

	if (link <= 0)
		return false;
	if (on)
		return measured > 0 ? measured < 0.95 * link : true;
	if (zcost <= 0 || saved <= 0)
		return false;
	/* no compressor saves more than all: an odd figure must not make a time negative */
	if (saved > 1)
		saved = 1;
	rest = (1 - saved) * link;
	pred = mig_autoc_max(zcost, rest) + 0.5 * (zcost + rest - mig_autoc_max(zcost, rest));
	return pred < 0.85 * link;
}

/*
 * Whether the compressor, with a CPU to itself, takes over twice a plain byte's time on the
 * link: the current window's pace so far, else the last window's.
 */
static bool mig_autoc_hopeless(const struct mig_autoc *a)
{
	double pace = a->link;

	if (a->cz_raw <= 0)
		return false;
	if (a->wire)
		pace = (double)(a->ns > a->zns ? a->ns - a->zns : 0) / (double)a->wire;
	return pace > 0 && a->cz_ns / a->cz_raw > 2 * pace;
}

bool mig_autoc_probe_due(const struct mig_autoc *a)
{
	uint32_t shift = mig_autoc_hopeless(a) ? MIG_AUTOC_BACKOFF_MAX : a->backoff;

	/* divided, not multiplied: large totals must not wrap into a budget that looks unspent */
	return !a->on && a->probe_ns <= a->sent_ns / ((uint64_t)MIG_AUTOC_PROBE_SHARE << shift);
}

static int mig_autoc_cmp(const void *x, const void *y)
{
	float a = *(const float *)x, b = *(const float *)y;

	return (a > b) - (a < b);
}

/*
 * The link's pace from the window's plain batches: their mean, the slowest quarter left out.
 * Not the median: a token bucket lets batches through in a short-long rhythm (24 and 48 ms
 * for 4 MiB at 1 Gbit/s) whose mean is the link's pace; leaving the slowest out drops a batch
 * held up by a passing stall on a fast link.
 */
static double mig_autoc_pace(struct mig_autoc *a)
{
	uint32_t n = a->npace, keep = n - n / 4;
	double sum = 0;

	if (!n)
		return a->link;
	qsort(a->pace, n, sizeof(a->pace[0]), mig_autoc_cmp);
	for (uint32_t i = 0; i < keep; i++)
		sum += a->pace[i];
	return sum / keep;
}

bool mig_autoc_account(struct mig_autoc *a, const struct mig_autoc_batch *b)
{
	double zcost = 0, saved = 0, measured = 0, share = 1, ran, waited;
	bool on;

	a->sent_ns += b->ns;
	if (!b->raw)
		return false; /* only zero pages: nothing to learn from */
	if (b->zraw) {
		a->cz_ns += (double)b->zns;
		a->cz_raw += (double)b->zraw;
		a->cz_saved += (double)b->zsaved;
		if (!a->on)
			a->probe_ns += b->zns;
	}
	/*
	 * The first compressed batch waits for the plain ones still in the socket buffer: it
	 * does not show what compressing costs.
	 */
	if (a->settling) {
		a->settling = false;
		return false;
	}
	if (!a->on && a->npace < MIG_AUTOC_PACES && b->wire)
		/* the samples' compressor time is not the link's */
		a->pace[a->npace++] = (float)(b->ns > b->zns ? b->ns - b->zns : 0) / (float)b->wire;
	a->ns += b->ns;
	a->wire += b->wire;
	a->raw += b->raw;
	a->zns += b->zns;
	a->run_ns += b->run_ns;
	a->wait_ns += b->wait_ns;
	a->batches++;
	if (a->ns < MIG_AUTOC_WINDOW_NS)
		return false;
	/* plain: a slow link decides within two batches, a fast one after four or more */
	if (!a->on && a->batches < MIG_AUTOC_WINDOW &&
	    (a->batches < 2 || a->ns < 8 * MIG_AUTOC_WINDOW_NS))
		return false;

	if (a->on) {
		measured = (double)a->ns / (double)a->raw;
		if ((double)(a->ns > a->zns ? a->ns - a->zns : 0) < 0.5 * a->link * (double)a->wire)
			a->unblocked++;
	} else {
		a->link = mig_autoc_pace(a);
		/*
		 * Read with the samples only: a window without one keeps the last figure. Summed
		 * as doubles: an integer sum of large figures could wrap and make the share huge.
		 */
		ran = (double)a->run_ns;
		waited = (double)a->wait_ns;
		if (ran + waited > 0)
			a->share = ran / (ran + waited);
		share = a->share;
	}
	if (a->cz_raw > 0) {
		zcost = a->cz_ns / a->cz_raw / (share > 0.05 ? share : 0.05);
		saved = a->cz_saved / a->cz_raw;
	}
	on = mig_autoc_choose(a->on, a->link, zcost, saved, measured);
	/* plain and could not have paid, whatever it saved or however fast it compressed */
	if (!a->on && !on && zcost > 0 && (zcost >= 0.85 * a->link || saved <= 0.15))
		a->backoff += a->backoff < MIG_AUTOC_BACKOFF_MAX;
	else
		a->backoff = 0;
	if (on && a->on && a->unblocked >= a->recheck) {
		on = false;
		a->unblocked = 0;
		a->recheck = a->recheck < 64 ? 2 * a->recheck : 64;
	}
	/* the compressor's figures follow the content and the host's load: older ones fade */
	a->cz_ns /= 2;
	a->cz_raw /= 2;
	a->cz_saved /= 2;
	a->batches = a->npace = 0;
	a->ns = a->wire = a->raw = a->zns = a->run_ns = a->wait_ns = 0;
	if (on == a->on)
		return false;
	a->on = on;
	a->settling = on;
	return true;
}
