/* SPDX-License-Identifier: MIT */
/*
 * Dirty page tracking: the KVM dirty bitmap with manual re-protection and the KVM dirty
 * ring, behind one API (dirty.h, which also gives the ordering argument).
 */
#include "kvm/dirty.h"
#include "kvm/kvm.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#define DIRTY_PAGE_SIZE 4096ull
#define DIRTY_WORDS(n) (((n) + 63) / 64)

struct dirty_slot_state {
	struct dirty_slot s;
	/*
	 * Bitmap mode: pages KVM reported (its bits at the latest sync, or every page
	 * after an INITIALLY_SET start) that clear() has not re-armed since. Slot-relative.
	 */
	uint64_t *reported;
	bool logged;  /* KVM_MEM_LOG_DIRTY_PAGES is on: off for an untouched slot (dirty.h) */
};

struct dirty_ring_vcpu {
	struct kvm_dirty_gfn *gfns;  /* NULL until dirty_tracker_vcpu_add() */
	uint32_t fetch;              /* next entry to harvest */
	uint32_t unreset;            /* harvested since the last complete reset */
	bool suspect;                /* overflowed: KVM may push ahead of fetch */
	unsigned empty_exits;        /* ring-full exits in a row with nothing to harvest */
};

struct dirty_tracker {
	enum dirty_mode mode;
	int vmfd;
	bool no_manual_protect, no_initially_set;
	uint64_t npages;             /* flat pages covered */
	unsigned nslots;
	struct dirty_slot_state *slots;
	uint64_t *scratch;           /* bitmap: the mask passed to KVM_CLEAR_DIRTY_LOG */
	uint32_t ring_bytes, ring_entries;
	unsigned nvcpus;
	struct dirty_ring_vcpu *vcpus;
	uint64_t *pending;           /* ring: harvested, not yet returned by a sync (flat) */
	uint64_t pending_span[2];    /* ring: the pages of pending that may have bits */
	int64_t (*touched)(void *opaque, const void *host, uint64_t npages, uint64_t *bitmap);
	void *touched_opaque;

	pthread_mutex_t lock;        /* everything below, and the rings, the slot bitmaps */
	bool started;
	bool caps_done;              /* bitmap: manual protection configured on the VM */
	uint32_t manual_caps;
	struct dirty_stats stats;
};

const char *dirty_mode_name(enum dirty_mode m)
{
	switch (m) {
	case DIRTY_MODE_BITMAP:
		return "bitmap";
	case DIRTY_MODE_RING:
		return "ring";
	}
	return "?";
}

uint64_t dirty_tracker_pages(const struct dirty_tracker *t)
{
	return t->npages;
}

static uint64_t popcount64(uint64_t w)
{
	return (uint64_t)__builtin_popcountll(w);
}

/* ORs nbits of src (bit 0 first) into dst starting at bit at; returns the bits newly set. */
static uint64_t bitmap_or_at(uint64_t *dst, uint64_t at, const uint64_t *src, uint64_t nbits)
{
	uint64_t words = DIRTY_WORDS(nbits), d = at / 64, added = 0;
	unsigned shift = at % 64;

	for (uint64_t i = 0; i < words; i++) {
		uint64_t w = src[i], lo, hi;

		if (i == words - 1 && nbits % 64)
			w &= (1ull << (nbits % 64)) - 1;
		if (!w)
			continue;
		lo = w << shift;
		added += popcount64(lo & ~dst[d + i]);
		dst[d + i] |= lo;
		/* bits moved past the word: they are below at + nbits, so dst has that word */
		hi = shift ? w >> (64 - shift) : 0;
		if (hi) {
			added += popcount64(hi & ~dst[d + i + 1]);
			dst[d + i + 1] |= hi;
		}
	}
	return added;
}

/* Widens span (flat [span[0], span[1]), empty when span[0] >= span[1]) to [first, end). */
static void dirty_span_add(uint64_t *span, uint64_t first, uint64_t end)
{
	if (!span || first >= end)
		return;
	if (span[0] >= span[1]) {
		span[0] = first;
		span[1] = end;
		return;
	}
	span[0] = MIN(span[0], first);
	span[1] = MAX(span[1], end);
}

/* Takes words [w0, w1) of src into dst. */
static uint64_t dirty_words_take(uint64_t *dst, _Atomic uint64_t *src, uint64_t w0, uint64_t w1,
				 uint64_t npages, uint64_t *span)
{
	uint64_t moved = 0;

	for (uint64_t i = w0; i < w1; i++) {
		uint64_t w;

		/* a cheap look first: most words of the VMM's bitmap are zero */
		if (!atomic_load_explicit(&src[i], memory_order_relaxed))
			continue;
		w = atomic_exchange_explicit(&src[i], 0, memory_order_acquire);
		moved += popcount64(w);
		dst[i] |= w;
		if (w)
			dirty_span_add(span, i * 64, MIN(i * 64 + 64, npages));
	}
	return moved;
}

uint64_t dirty_bitmap_take(uint64_t *dst, _Atomic uint64_t *src, _Atomic uint64_t *sum,
			   uint64_t npages, uint64_t *span)
{
	uint64_t words = DIRTY_WORDS(npages), moved = 0;

	if (!sum)
		return dirty_words_take(dst, src, 0, words, npages, span);
	for (uint64_t j = 0; j < (npages + DIRTY_SUM_PAGES - 1) / DIRTY_SUM_PAGES; j++) {
		uint64_t s;

		if (!atomic_load_explicit(&sum[j], memory_order_relaxed))
			continue;
		/* acquire: every page bit set before a summary bit taken here is seen below */
		s = atomic_exchange_explicit(&sum[j], 0, memory_order_acquire);
		while (s) {
			uint64_t w0 = j * 64 + (uint64_t)__builtin_ctzll(s);

			s &= s - 1;
			if (w0 < words)
				moved += dirty_words_take(dst, src, w0, w0 + 1, npages, span);
		}
	}
	return moved;
}

int dirty_ring_enable(int vmfd, uint32_t ring_bytes, struct errbuf *e)
{
	long cap = KVM_CAP_DIRTY_LOG_RING_ACQ_REL;
	const char *name = "KVM_CAP_DIRTY_LOG_RING_ACQ_REL";
	struct kvm_enable_cap c;
	int max, ret;

	/* the harvest uses acquire/release either way; prefer the cap that promises it */
	max = kvm_cap_check(vmfd, cap);
	if (max <= 0) {
		cap = KVM_CAP_DIRTY_LOG_RING;
		name = "KVM_CAP_DIRTY_LOG_RING";
		max = kvm_cap_check(vmfd, cap);
	}
	if (max <= 0)
		return err_set(e, -ENOTSUP, "dirty ring: this kernel lacks KVM_CAP_DIRTY_LOG_RING");
	if (ring_bytes < DIRTY_PAGE_SIZE || (ring_bytes & (ring_bytes - 1)) ||
	    ring_bytes > (uint32_t)max)
		return err_set(e, -EINVAL,
			       "dirty ring of %u bytes: must be a power of two from %llu to %d",
			       ring_bytes, DIRTY_PAGE_SIZE, max);
	memset(&c, 0, sizeof(c));
	c.cap = (uint32_t)cap;
	c.args[0] = ring_bytes;
	ret = kvm_ioctl(vmfd, KVM_ENABLE_CAP, &c);
	if (ret == -EINVAL)
		return err_set(e, ret,
			       "KVM_ENABLE_CAP %s, %u bytes: invalid (already enabled, a vCPU "
			       "already exists, or the ring is too small for this host's "
			       "reserved entries)", name, ring_bytes);
	if (ret < 0)
		return err_set(e, ret, "KVM_ENABLE_CAP %s, %u bytes: %s", name, ring_bytes,
			       strerror(-ret));
	return 0;
}

static int dirty_config_check(const struct dirty_config *cfg, uint64_t *npages,
			      uint64_t *max_slot_pages, struct errbuf *e)
{
	*npages = *max_slot_pages = 0;
	if (cfg->mode != DIRTY_MODE_BITMAP && cfg->mode != DIRTY_MODE_RING)
		return err_set(e, -EINVAL, "dirty tracking: unknown mode %d", (int)cfg->mode);
	if (!cfg->nslots || !cfg->slots)
		return err_set(e, -EINVAL, "dirty tracking: no memory slot to track");
	if (cfg->mode == DIRTY_MODE_RING) {
		if (cfg->ring_bytes < sizeof(struct kvm_dirty_gfn) ||
		    (cfg->ring_bytes & (cfg->ring_bytes - 1)))
			return err_set(e, -EINVAL, "dirty ring of %u bytes: not a power of two",
				       cfg->ring_bytes);
		if (!cfg->nvcpus)
			return err_set(e, -EINVAL, "dirty ring: no vCPU");
	}
	for (unsigned i = 0; i < cfg->nslots; i++) {
		const struct dirty_slot *a = &cfg->slots[i];

		if (!a->npages || a->first_page + a->npages < a->first_page ||
		    a->npages > UINT32_MAX)
			return err_set(e, -EINVAL, "dirty tracking: slot %u has %llu pages at "
						   "flat page %llu",
				       a->slot, (unsigned long long)a->npages,
				       (unsigned long long)a->first_page);
		if (a->flags & KVM_MEM_LOG_DIRTY_PAGES)
			return err_set(e, -EINVAL, "dirty tracking: slot %u is given with "
						   "KVM_MEM_LOG_DIRTY_PAGES already set", a->slot);
		for (unsigned j = 0; j < i; j++) {
			const struct dirty_slot *b = &cfg->slots[j];

			if (a->slot == b->slot)
				return err_set(e, -EINVAL, "dirty tracking: slot %u given twice",
					       a->slot);
			if (a->first_page < b->first_page + b->npages &&
			    b->first_page < a->first_page + a->npages)
				return err_set(e, -EINVAL, "dirty tracking: slots %u and %u "
							   "overlap in the flat page numbering",
					       b->slot, a->slot);
		}
		*npages = MAX(*npages, a->first_page + a->npages);
		*max_slot_pages = MAX(*max_slot_pages, a->npages);
	}
	return 0;
}

int dirty_tracker_create(struct dirty_tracker **out, const struct dirty_config *cfg,
			 struct errbuf *e)
{
	uint64_t npages, max_slot_pages;
	struct dirty_tracker *t;
	int ret;

	*out = NULL;
	ret = dirty_config_check(cfg, &npages, &max_slot_pages, e);
	if (ret < 0)
		return ret;
	t = calloc(1, sizeof(*t));
	if (!t)
		return err_set(e, -ENOMEM, "out of memory for the dirty tracker");
	t->mode = cfg->mode;
	t->vmfd = cfg->vmfd;
	t->no_manual_protect = cfg->no_manual_protect;
	t->no_initially_set = cfg->no_initially_set;
	t->touched = cfg->touched;
	t->touched_opaque = cfg->touched_opaque;
	t->npages = npages;
	t->nslots = cfg->nslots;
	ret = -ENOMEM;
	t->slots = calloc(cfg->nslots, sizeof(*t->slots));
	if (!t->slots)
		goto err_nomem;
	for (unsigned i = 0; i < cfg->nslots; i++) {
		t->slots[i].s = cfg->slots[i];
		if (t->mode == DIRTY_MODE_BITMAP) {
			t->slots[i].reported = calloc(DIRTY_WORDS(cfg->slots[i].npages),
						      sizeof(uint64_t));
			if (!t->slots[i].reported)
				goto err_nomem;
		}
	}
	if (t->mode == DIRTY_MODE_BITMAP || t->touched) {
		t->scratch = calloc(DIRTY_WORDS(max_slot_pages), sizeof(uint64_t));
		if (!t->scratch)
			goto err_nomem;
	}
	if (t->mode == DIRTY_MODE_RING) {
		t->ring_bytes = cfg->ring_bytes;
		t->ring_entries = cfg->ring_bytes / (uint32_t)sizeof(struct kvm_dirty_gfn);
		t->nvcpus = cfg->nvcpus;
		t->vcpus = calloc(cfg->nvcpus, sizeof(*t->vcpus));
		t->pending = calloc(DIRTY_WORDS(npages), sizeof(uint64_t));
		if (!t->vcpus || !t->pending)
			goto err_nomem;
	}
	ret = pthread_mutex_init(&t->lock, NULL);
	if (ret) {
		ret = err_set(e, -ret, "dirty tracker: pthread_mutex_init: %s", strerror(ret));
		goto err_free;
	}
	*out = t;
	return 0;

err_nomem:
	ret = err_set(e, -ENOMEM, "out of memory for the dirty tracker's bitmaps");
err_free:
	if (t->slots)
		for (unsigned i = 0; i < t->nslots; i++)
			free(t->slots[i].reported);
	free(t->slots);
	free(t->scratch);
	free(t->vcpus);
	free(t->pending);
	free(t);
	return ret;
}

int dirty_tracker_vcpu_add(struct dirty_tracker *t, unsigned index, int vcpufd, struct errbuf *e)
{
	long psize = sysconf(_SC_PAGESIZE);
	void *p;
	int ret = 0;

	if (t->mode != DIRTY_MODE_RING)
		return 0;
	if (index >= t->nvcpus)
		return err_set(e, -EINVAL, "dirty ring: vCPU %u of %u", index, t->nvcpus);
	p = mmap(NULL, t->ring_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, vcpufd,
		 (off_t)KVM_DIRTY_LOG_PAGE_OFFSET * psize);
	if (p == MAP_FAILED)
		return err_set(e, -errno, "dirty ring of vCPU %u: mmap %u bytes: %s (was the "
					  "ring enabled before the vCPU was created?)",
			       index, t->ring_bytes, strerror(errno));
	pthread_mutex_lock(&t->lock);
	if (t->vcpus[index].gfns)
		ret = err_set(e, -EEXIST, "dirty ring of vCPU %u: added twice", index);
	else
		t->vcpus[index] = (struct dirty_ring_vcpu){ .gfns = p, .fetch = 0 };
	pthread_mutex_unlock(&t->lock);
	if (ret < 0)
		munmap(p, t->ring_bytes);
	return ret;
}

static int dirty_slot_log_set(struct dirty_tracker *t, struct dirty_slot_state *ss, bool on,
			      struct errbuf *e)
{
	const struct dirty_slot *s = &ss->s;
	uint32_t flags = s->flags | (on ? KVM_MEM_LOG_DIRTY_PAGES : 0);
	int ret;

	ret = kvm_vm_memslot_set(t->vmfd, s->slot, flags, s->gpa, s->npages * DIRTY_PAGE_SIZE,
				 s->host, e);
	if (ret < 0)
		return err_prefix(e, ret, "dirty logging %s", on ? "on" : "off");
	ss->logged = on;
	return 0;
}

/* Bitmap mode, first start: what KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 offers and we want. */
static int dirty_manual_caps_enable(struct dirty_tracker *t, struct errbuf *e)
{
	struct kvm_enable_cap c;
	int avail, ret;
	uint32_t caps;

	avail = kvm_cap_check(t->vmfd, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2);
	caps = (uint32_t)avail &
	       (KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE | KVM_DIRTY_LOG_INITIALLY_SET);
	if (t->no_manual_protect || !(caps & KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE))
		caps = 0;
	if (t->no_initially_set)
		caps &= ~(uint32_t)KVM_DIRTY_LOG_INITIALLY_SET;
	if (avail > 0) {
		/* also when caps is 0: the VM may have had it on from an earlier user */
		memset(&c, 0, sizeof(c));
		c.cap = KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2;
		c.args[0] = caps;
		ret = kvm_ioctl(t->vmfd, KVM_ENABLE_CAP, &c);
		if (ret < 0)
			return err_set(e, ret, "KVM_ENABLE_CAP KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 "
					       "0x%x: %s", caps, strerror(-ret));
	}
	t->manual_caps = caps;
	t->caps_done = true;
	return 0;
}

static void dirty_slot_reported_fill(struct dirty_slot_state *ss)
{
	uint64_t n = ss->s.npages, words = DIRTY_WORDS(n);

	memset(ss->reported, 0xff, words * sizeof(uint64_t));
	if (n % 64)
		ss->reported[words - 1] = (1ull << (n % 64)) - 1;
}

/* Whether any page of the host memory of slots [i, j) (adjacent in host memory) was touched. */
static bool dirty_slots_touched(struct dirty_tracker *t, unsigned i, unsigned j)
{
	uint64_t npages = 0;

	for (unsigned k = i; k < j; k++)
		npages += t->slots[k].s.npages;
	/* a callback that cannot tell says touched: the slot is then logged */
	return t->touched(t->touched_opaque, t->slots[i].s.host, npages, NULL) != 0;
}

/*
 * How many unlogged slots from slot i are untouched (0: slot i is touched, or the
 * callback cannot tell). Adjacent unlogged slots (whose host memory follows on) are asked
 * about together: an idle guest's RAM takes one question or two, and a run with a touched
 * slot is bisected for its untouched head, so each touched slot costs a few questions
 * (each stops at the first touched page it finds).
 */
static unsigned dirty_untouched_run(struct dirty_tracker *t, unsigned i)
{
	unsigned j = i + 1, lo, hi;

	if (!t->touched)
		return 0;
	while (j < t->nslots && !t->slots[j].logged &&
	       (const uint8_t *)t->slots[j].s.host ==
		       (const uint8_t *)t->slots[j - 1].s.host +
			       t->slots[j - 1].s.npages * DIRTY_PAGE_SIZE)
		j++;
	if (!dirty_slots_touched(t, i, j))
		return j - i;
	if (j == i + 1 || dirty_slots_touched(t, i, i + 1))
		return 0;
	/* [i, lo) untouched, [i, hi) touched */
	lo = i + 1;
	hi = j;
	while (hi - lo > 1) {
		unsigned mid = lo + (hi - lo) / 2;

		if (dirty_slots_touched(t, i, mid))
			hi = mid;
		else
			lo = mid;
	}
	return lo - i;
}

/* Logging on for slot i; bitmap mode with KVM_DIRTY_LOG_INITIALLY_SET: all reported. */
static int dirty_slot_start(struct dirty_tracker *t, unsigned i, struct errbuf *e)
{
	int ret = dirty_slot_log_set(t, &t->slots[i], true, e);

	if (ret == 0 && t->mode == DIRTY_MODE_BITMAP &&
	    (t->manual_caps & KVM_DIRTY_LOG_INITIALLY_SET))
		dirty_slot_reported_fill(&t->slots[i]);
	return ret;
}

int dirty_tracker_start(struct dirty_tracker *t, struct errbuf *e)
{
	unsigned i = 0;
	int ret = 0;

	pthread_mutex_lock(&t->lock);
	if (t->started) {
		ret = err_set(e, -EALREADY, "dirty logging is already on");
		goto out;
	}
	if (t->mode == DIRTY_MODE_RING) {
		/* a ring nobody harvests would stall its vCPU and hide its writes */
		for (unsigned v = 0; v < t->nvcpus; v++) {
			if (!t->vcpus[v].gfns) {
				ret = err_set(e, -EINVAL, "dirty ring of vCPU %u is not mapped", v);
				goto out;
			}
		}
	} else if (!t->caps_done) {
		ret = dirty_manual_caps_enable(t, e);
		if (ret < 0)
			goto out;
	}
	for (i = 0; i < t->nslots;) {
		unsigned skip = dirty_untouched_run(t, i);

		if (skip) {
			/* untouched: logged by the first sync that finds it touched */
			t->stats.slots_deferred += skip;
			i += skip;
			continue;
		}
		ret = dirty_slot_start(t, i, e);
		if (ret < 0)
			goto err_undo;
		i++;
	}
	t->started = true;
	goto out;

err_undo:
	while (i-- > 0)
		if (t->slots[i].logged)
			dirty_slot_log_set(t, &t->slots[i], false, NULL);
out:
	pthread_mutex_unlock(&t->lock);
	return ret;
}

/*
 * Each unlogged slot that is touched now: logging on, then every touched page of it
 * reported, into bitmap (flat; the caller's, or in ring mode the pending one). See
 * "Untouched slots" in dirty.h for why in that order. Locked.
 */
static int dirty_late_start(struct dirty_tracker *t, uint64_t *bitmap, uint64_t *span,
			    struct errbuf *e)
{
	for (unsigned i = 0; i < t->nslots;) {
		struct dirty_slot_state *ss = &t->slots[i];
		unsigned skip;
		int64_t n;
		int ret;

		if (ss->logged) {
			i++;
			continue;
		}
		skip = dirty_untouched_run(t, i);
		if (skip) {
			i += skip;
			continue;
		}
		ret = dirty_slot_start(t, i, e);
		if (ret < 0)
			return ret;
		t->stats.slots_late++;
		memset(t->scratch, 0, DIRTY_WORDS(ss->s.npages) * sizeof(uint64_t));
		n = t->touched(t->touched_opaque, ss->s.host, ss->s.npages, t->scratch);
		if (n < 0) /* cannot tell which: all of them */
			memset(t->scratch, 0xff, DIRTY_WORDS(ss->s.npages) * sizeof(uint64_t));
		n = (int64_t)bitmap_or_at(bitmap, ss->s.first_page, t->scratch, ss->s.npages);
		if (t->mode == DIRTY_MODE_BITMAP) /* ring: counted as they leave pending */
			t->stats.pages_reported += (uint64_t)n;
		if (n)
			dirty_span_add(span, ss->s.first_page, ss->s.first_page + ss->s.npages);
		i++;
	}
	return 0;
}

/* Logging off on every slot, going on past a failure; returns the first one. Locked. */
static int dirty_log_off(struct dirty_tracker *t, struct errbuf *e)
{
	int ret = 0;

	if (!t->started)
		return 0;
	for (unsigned i = 0; i < t->nslots; i++) {
		int r = t->slots[i].logged ?
				dirty_slot_log_set(t, &t->slots[i], false, ret < 0 ? NULL : e) : 0;

		if (r < 0 && ret == 0)
			ret = r;
		t->slots[i].logged = false;
		if (t->slots[i].reported)
			memset(t->slots[i].reported, 0,
			       DIRTY_WORDS(t->slots[i].s.npages) * sizeof(uint64_t));
	}
	t->started = false;
	return ret;
}

int dirty_tracker_stop(struct dirty_tracker *t, struct errbuf *e)
{
	int ret;

	pthread_mutex_lock(&t->lock);
	ret = dirty_log_off(t, e);
	pthread_mutex_unlock(&t->lock);
	return ret;
}

void dirty_tracker_destroy(struct dirty_tracker *t)
{
	if (!t)
		return;
	pthread_mutex_lock(&t->lock);
	dirty_log_off(t, NULL);
	pthread_mutex_unlock(&t->lock);
	for (unsigned v = 0; v < t->nvcpus; v++)
		if (t->vcpus[v].gfns)
			munmap(t->vcpus[v].gfns, t->ring_bytes);
	for (unsigned i = 0; i < t->nslots; i++)
		free(t->slots[i].reported);
	pthread_mutex_destroy(&t->lock);
	free(t->slots);
	free(t->scratch);
	free(t->vcpus);
	free(t->pending);
	free(t);
}

static int dirty_bitmap_sync(struct dirty_tracker *t, uint64_t *bitmap, uint64_t *span,
			     struct errbuf *e)
{
	int ret;

	if (!t->started)
		return err_set(e, -EINVAL, "dirty sync: logging is off");
	ret = dirty_late_start(t, bitmap, span, e);
	if (ret < 0)
		return ret;
	for (unsigned i = 0; i < t->nslots; i++) {
		struct dirty_slot_state *ss = &t->slots[i];
		struct kvm_dirty_log log;
		uint64_t added;

		if (!ss->logged)
			continue;
		memset(&log, 0, sizeof(log));
		log.slot = ss->s.slot;
		log.dirty_bitmap = ss->reported;
		/*
		 * With manual protection the bits stay set in KVM until cleared, so this
		 * is a superset of what was reported before and not cleared since.
		 */
		ret = kvm_ioctl(t->vmfd, KVM_GET_DIRTY_LOG, &log);
		if (ret < 0)
			return err_set(e, ret, "KVM_GET_DIRTY_LOG slot %u: %s", ss->s.slot,
				       strerror(-ret));
		added = bitmap_or_at(bitmap, ss->s.first_page, ss->reported, ss->s.npages);
		t->stats.pages_reported += added;
		if (added)
			dirty_span_add(span, ss->s.first_page, ss->s.first_page + ss->s.npages);
	}
	return 0;
}

static struct dirty_slot_state *dirty_slot_find(struct dirty_tracker *t, uint32_t slot,
						unsigned *hint)
{
	if (*hint < t->nslots && t->slots[*hint].s.slot == slot)
		return &t->slots[*hint];
	for (unsigned i = 0; i < t->nslots; i++) {
		if (t->slots[i].s.slot == slot) {
			*hint = i;
			return &t->slots[i];
		}
	}
	return NULL;
}

static bool dirty_gfn_dirty(struct kvm_dirty_gfn *g)
{
	/* pairs with KVM's write barrier between the entry's fields and its flags */
	return __atomic_load_n(&g->flags, __ATOMIC_ACQUIRE) & KVM_DIRTY_GFN_F_DIRTY;
}

/*
 * The ring is out of step: the entry at fetch is empty, yet KVM has filled a later
 * one. That happens after an overflow, when KVM counted pushes we never saw (they
 * overwrote entries): its next push lands past fetch. Skips to the first filled entry,
 * marking the skipped ones harvested so that KVM's reset, which walks from its own
 * position over harvested entries only, gets past them too. Returns the entries
 * skipped (0: in step, or KVM has pushed nothing since).
 */
static uint32_t dirty_ring_resync(struct dirty_tracker *t, struct dirty_ring_vcpu *v)
{
	uint32_t mask = t->ring_entries - 1, j;

	for (j = 1; j < t->ring_entries; j++)
		if (dirty_gfn_dirty(&v->gfns[(v->fetch + j) & mask]))
			break;
	/* KVM fills entries in order: once a later one is seen, this one is final */
	if (j == t->ring_entries || dirty_gfn_dirty(&v->gfns[v->fetch & mask]))
		return 0;
	for (uint32_t i = 0; i < j; i++)
		__atomic_store_n(&v->gfns[(v->fetch + i) & mask].flags, KVM_DIRTY_GFN_F_RESET,
				 __ATOMIC_RELEASE);
	v->fetch += j;
	v->unreset += j;
	return j;
}

/*
 * Harvests vCPU index's ring into t->pending, marking each entry for reset. Sets
 * *overflow when entries may have been lost: the ring filled up completely (KVM keeps
 * a reserve past the point where it makes the vCPU exit, but a vCPU that overshoots
 * it overwrites unharvested entries), or the ring was out of step. scan: look for an
 * out-of-step ring even if it never overflowed before (a ring-full exit with nothing
 * to harvest). An entry naming no tracked page is harvested all the same (so the ring
 * does not wedge) and reported as -EIO once the ring is done.
 */
static int dirty_ring_harvest(struct dirty_tracker *t, unsigned index, bool scan,
			      uint32_t *harvested, bool *overflow, struct errbuf *e)
{
	struct dirty_ring_vcpu *v = &t->vcpus[index];
	uint32_t mask = t->ring_entries - 1, bad_slot = 0, n = 0;
	uint64_t bad_offset = 0, bad = 0;
	unsigned hint = 0;
	bool lost = false;

	*harvested = 0;
	if (!v->gfns)
		return 0;
	if ((v->suspect || scan) && !dirty_gfn_dirty(&v->gfns[v->fetch & mask]) &&
	    dirty_ring_resync(t, v)) {
		t->stats.ring_resyncs++;
		lost = true;
	}
	while (v->unreset < t->ring_entries) {
		struct kvm_dirty_gfn *g = &v->gfns[v->fetch & mask];
		struct dirty_slot_state *ss;
		uint32_t slot;
		uint64_t offset;

		if (!dirty_gfn_dirty(g))
			break;
		slot = g->slot;
		offset = g->offset;
		ss = dirty_slot_find(t, slot, &hint);
		if (ss && offset < ss->s.npages) {
			uint64_t pg = ss->s.first_page + offset;

			t->pending[pg / 64] |= 1ull << (pg % 64);
			dirty_span_add(t->pending_span, pg, pg + 1);
		} else if (!bad++) {
			bad_slot = slot;
			bad_offset = offset;
		}
		/* the fields are read: KVM may reset and reuse the entry from now on */
		__atomic_store_n(&g->flags, KVM_DIRTY_GFN_F_RESET, __ATOMIC_RELEASE);
		v->fetch++;
		v->unreset++;
		n++;
	}
	t->stats.ring_entries += n;
	*harvested = n;
	/* a whole ring without a reset: KVM ran out of reserve and may have overwritten */
	if (v->unreset >= t->ring_entries)
		lost = true;
	if (lost) {
		v->suspect = true;
		*overflow = true;
	} else if (n) {
		v->suspect = false; /* KVM's pushes land where we read: in step */
	}
	if (bad)
		return err_set(e, -EIO, "dirty ring of vCPU %u: %llu entries for untracked pages "
					"(first: slot 0x%x page %llu)",
			       index, (unsigned long long)bad, bad_slot,
			       (unsigned long long)bad_offset);
	return 0;
}

/*
 * Re-protects every harvested page; it must be complete before any of them is read.
 * Keeps each ring's count of harvested entries not yet reset an upper bound (the
 * overflow test relies on it): KVM returns how many it reset, except after a signal.
 */
static int dirty_ring_reset(struct dirty_tracker *t, struct errbuf *e)
{
	uint64_t marked = 0;
	int ret;

	for (unsigned v = 0; v < t->nvcpus; v++)
		marked += t->vcpus[v].unreset;
	do {
		/* newer kernels stop early on a pending signal; the rest is still marked */
		ret = kvm_ioctl(t->vmfd, KVM_RESET_DIRTY_RINGS, NULL);
	} while (ret == -EINTR);
	if (ret < 0)
		return err_set(e, ret, "KVM_RESET_DIRTY_RINGS: %s", strerror(-ret));
	for (unsigned v = 0; v < t->nvcpus; v++) {
		struct dirty_ring_vcpu *r = &t->vcpus[v];

		if ((uint64_t)ret >= marked || !r->unreset) {
			r->unreset = 0;
			continue;
		}
		/* interrupted, or KVM stuck on an entry: count what is still marked */
		r->unreset = 0;
		for (uint32_t i = 0; i < t->ring_entries; i++)
			if (__atomic_load_n(&r->gfns[i].flags, __ATOMIC_RELAXED) &
			    KVM_DIRTY_GFN_F_RESET)
				r->unreset++;
	}
	return 0;
}

/*
 * After a ring overflow some writes were never reported, and their pages may still be
 * writable without logging. Re-arms every page (logging off and on again write-protects
 * the whole slot) and reports every page: the caller reads them all after the next
 * sync, which comes after the re-arming.
 */
static int dirty_ring_recover(struct dirty_tracker *t, struct errbuf *e)
{
	int ret = 0;

	t->stats.ring_overflows++;
	for (unsigned i = 0; i < t->nslots; i++) {
		const struct dirty_slot *s = &t->slots[i].s;

		/* an unlogged slot had no write: the sync that finds one reports it */
		if (t->started && !t->slots[i].logged)
			continue;
		if (t->started && ret == 0) {
			ret = dirty_slot_log_set(t, &t->slots[i], false, e);
			if (ret == 0)
				ret = dirty_slot_log_set(t, &t->slots[i], true, e);
		}
		for (uint64_t pg = s->first_page; pg < s->first_page + s->npages; pg++)
			t->pending[pg / 64] |= 1ull << (pg % 64);
		dirty_span_add(t->pending_span, s->first_page, s->first_page + s->npages);
	}
	if (ret < 0)
		return err_prefix(e, ret, "re-arming after a dirty ring overflow");
	return 0;
}

/* Harvests every ring (or one: only >= 0), resets, recovers from an overflow. Locked. */
static int dirty_ring_collect(struct dirty_tracker *t, int only, bool scan, uint32_t *harvested,
			      struct errbuf *e)
{
	bool overflow = false;
	int ret = 0, r;

	*harvested = 0;
	for (unsigned v = 0; v < t->nvcpus; v++) {
		uint32_t n;

		if (only >= 0 && v != (unsigned)only)
			continue;
		r = dirty_ring_harvest(t, v, scan, &n, &overflow, ret < 0 ? NULL : e);
		*harvested += n;
		if (r < 0 && ret == 0)
			ret = r;
	}
	/* reset even after a bad entry: the good ones are recorded and must be re-armed */
	r = dirty_ring_reset(t, ret < 0 ? NULL : e);
	if (r < 0 && ret == 0)
		ret = r;
	if (overflow) {
		r = dirty_ring_recover(t, ret < 0 ? NULL : e);
		if (r < 0 && ret == 0)
			ret = r;
	}
	return ret;
}

static int dirty_ring_sync(struct dirty_tracker *t, uint64_t *bitmap, uint64_t *span,
			   struct errbuf *e)
{
	uint32_t n;
	int ret;

	ret = dirty_ring_collect(t, -1, false, &n, e);
	if (ret < 0 || !bitmap)
		return ret; /* pending keeps everything for the next sync */
	if (t->started) {
		ret = dirty_late_start(t, t->pending, t->pending_span, e);
		if (ret < 0)
			return ret;
	}
	/* only the words that may have bits: an idle big guest's rings hold a few pages */
	for (uint64_t i = t->pending_span[0] / 64;
	     t->pending_span[0] < t->pending_span[1] && i < DIRTY_WORDS(t->pending_span[1]); i++) {
		uint64_t w = t->pending[i];

		if (!w)
			continue;
		t->stats.pages_reported += popcount64(w & ~bitmap[i]);
		bitmap[i] |= w;
		t->pending[i] = 0;
		dirty_span_add(span, i * 64, MIN(i * 64 + 64, t->npages));
	}
	t->pending_span[0] = t->pending_span[1] = 0;
	return 0;
}

int dirty_tracker_sync(struct dirty_tracker *t, uint64_t *bitmap, struct errbuf *e)
{
	return dirty_tracker_sync_span(t, bitmap, NULL, e);
}

int dirty_tracker_sync_span(struct dirty_tracker *t, uint64_t *bitmap, uint64_t *span,
			    struct errbuf *e)
{
	int ret;

	pthread_mutex_lock(&t->lock);
	t->stats.syncs++;
	if (t->mode == DIRTY_MODE_BITMAP)
		ret = dirty_bitmap_sync(t, bitmap, span, e);
	else
		ret = dirty_ring_sync(t, bitmap, span, e);
	pthread_mutex_unlock(&t->lock);
	return ret;
}

/* Re-arms the reported pages of slot-relative [a, b) (non-empty, inside the slot). */
static int dirty_slot_clear(struct dirty_tracker *t, struct dirty_slot_state *ss, uint64_t a,
			    uint64_t b, struct errbuf *e)
{
	/* KVM wants a 64-aligned start and a length in 64s unless it ends the slot */
	uint64_t a0 = ALIGN_DOWN(a, 64), b0 = MIN(ALIGN_UP(b, 64), ss->s.npages);
	uint64_t words = DIRTY_WORDS(b0 - a0), n = 0;
	struct kvm_clear_dirty_log c;
	int ret;

	for (uint64_t i = 0; i < words; i++) {
		uint64_t lo = a0 + 64 * i, m = ~0ull, w;

		if (lo < a)
			m &= ~0ull << (a - lo);
		if (b - lo < 64)
			m &= (1ull << (b - lo)) - 1;
		/* only pages inside [a, b) that were reported: see dirty.h */
		w = ss->reported[a0 / 64 + i] & m;
		ss->reported[a0 / 64 + i] &= ~w;
		t->scratch[i] = w;
		n += popcount64(w);
	}
	if (!n)
		return 0;
	memset(&c, 0, sizeof(c));
	c.slot = ss->s.slot;
	c.first_page = a0;
	c.num_pages = (uint32_t)(b0 - a0);
	c.dirty_bitmap = t->scratch;
	ret = kvm_ioctl(t->vmfd, KVM_CLEAR_DIRTY_LOG, &c);
	if (ret < 0)
		/* the bits stay set in KVM, so the next sync reports those pages again */
		return err_set(e, ret, "KVM_CLEAR_DIRTY_LOG slot %u pages %llu-%llu: %s",
			       ss->s.slot, (unsigned long long)a0, (unsigned long long)b0 - 1,
			       strerror(-ret));
	t->stats.clear_ioctls++;
	t->stats.pages_rearmed += n;
	return 0;
}

int dirty_tracker_clear(struct dirty_tracker *t, uint64_t first_page, uint64_t npages,
			struct errbuf *e)
{
	uint64_t end = first_page + npages;
	int ret = 0;

	if (end < first_page || end > t->npages)
		return err_set(e, -EINVAL, "dirty clear: pages %llu+%llu beyond the %llu tracked",
			       (unsigned long long)first_page, (unsigned long long)npages,
			       (unsigned long long)t->npages);
	if (t->mode != DIRTY_MODE_BITMAP || !npages)
		return 0;
	pthread_mutex_lock(&t->lock);
	if (!t->started || !(t->manual_caps & KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE))
		goto out;
	for (unsigned i = 0; i < t->nslots && ret == 0; i++) {
		struct dirty_slot_state *ss = &t->slots[i];
		uint64_t s0 = ss->s.first_page, s1 = s0 + ss->s.npages;

		if (end <= s0 || first_page >= s1)
			continue;
		ret = dirty_slot_clear(t, ss, MAX(first_page, s0) - s0, MIN(end, s1) - s0, e);
	}
out:
	pthread_mutex_unlock(&t->lock);
	return ret;
}

/*
 * The vCPU keeps exiting with a full ring, yet there is nothing to harvest and the
 * ring is in step: after an overflow KVM's reset position can sit on an entry that is
 * neither filled nor harvested (two pushes of different laps met in one entry), and
 * its reset, which stops there, never frees anything again. Walking back from fetch
 * over the harvested entries, the first other one is that entry: mark it harvested.
 * Were KVM's position elsewhere, the entry would be a free one that KVM's reset never
 * reaches before pushing into it, so the mark is harmless. Returns whether one was
 * marked. Locked.
 */
static bool dirty_ring_unstick(struct dirty_tracker *t, struct dirty_ring_vcpu *v)
{
	uint32_t mask = t->ring_entries - 1;

	for (uint32_t j = 1; j < t->ring_entries; j++) {
		struct kvm_dirty_gfn *g = &v->gfns[(v->fetch - j) & mask];
		uint32_t flags = __atomic_load_n(&g->flags, __ATOMIC_ACQUIRE);

		if (flags & KVM_DIRTY_GFN_F_RESET)
			continue;
		if (flags & KVM_DIRTY_GFN_F_DIRTY)
			return false;
		__atomic_store_n(&g->flags, KVM_DIRTY_GFN_F_RESET, __ATOMIC_RELEASE);
		v->unreset++;
		return true;
	}
	return false;
}

int dirty_tracker_ring_full(struct dirty_tracker *t, unsigned vcpu_index, struct errbuf *e)
{
	struct dirty_ring_vcpu *v;
	uint32_t n;
	int ret;

	if (t->mode != DIRTY_MODE_RING)
		return err_set(e, -EINVAL, "dirty ring full exit, but the tracker uses the bitmap");
	if (vcpu_index >= t->nvcpus)
		return err_set(e, -EINVAL, "dirty ring full: vCPU %u of %u", vcpu_index,
			       t->nvcpus);
	v = &t->vcpus[vcpu_index];
	pthread_mutex_lock(&t->lock);
	t->stats.ring_full++;
	ret = dirty_ring_collect(t, (int)vcpu_index, false, &n, e);
	if (ret == 0 && n == 0) {
		/*
		 * Nothing to harvest: a sync got there first, or the ring is out of step
		 * and the vCPU would exit again and again. Look for the latter.
		 */
		ret = dirty_ring_collect(t, (int)vcpu_index, true, &n, e);
	}
	if (ret == 0 && n == 0 && ++v->empty_exits >= 3 && dirty_ring_unstick(t, v)) {
		/* a sync getting there first twice in a row is possible, but harmless here */
		t->stats.ring_unsticks++;
		v->suspect = true;
		ret = dirty_ring_reset(t, e);
		if (ret == 0)
			ret = dirty_ring_recover(t, e);
		v->empty_exits = 0;
	} else if (n) {
		v->empty_exits = 0;
	}
	pthread_mutex_unlock(&t->lock);
	return ret;
}

int dirty_tracker_harvest(struct dirty_tracker *t, struct errbuf *e)
{
	int ret;

	if (t->mode != DIRTY_MODE_RING)
		return 0;
	pthread_mutex_lock(&t->lock);
	ret = dirty_ring_sync(t, NULL, NULL, e);
	pthread_mutex_unlock(&t->lock);
	return ret;
}

void dirty_tracker_stats(struct dirty_tracker *t, struct dirty_stats *out)
{
	pthread_mutex_lock(&t->lock);
	*out = t->stats;
	out->manual_caps = t->manual_caps;
	out->slots_logged = 0;
	for (unsigned i = 0; i < t->nslots; i++)
		out->slots_logged += t->slots[i].logged;
	pthread_mutex_unlock(&t->lock);
}
