/* SPDX-License-Identifier: MIT */
/*
 * Dirty page tracking for live migration: which guest pages were written since they
 * were last read. Two KVM backends behind one API, plus the merge of the VMM's own
 * writes:
 *
 *   DIRTY_MODE_BITMAP  KVM_MEM_LOG_DIRTY_PAGES and KVM_GET_DIRTY_LOG, with manual
 *                      re-protection (KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 and
 *                      KVM_CLEAR_DIRTY_LOG) when the host has it;
 *   DIRTY_MODE_RING    the per-vCPU KVM dirty ring (KVM_CAP_DIRTY_LOG_RING), harvested
 *                      while the vCPUs run, including their ring-full exits.
 *
 * Pages are numbered in the caller's flat numbering: each struct dirty_slot says where
 * its pages start (first_page). A caller bitmap has bit i (of 64-bit words, bit i % 64
 * of word i / 64) for flat page i and at least DIV_ROUND_UP(dirty_tracker_pages(), 64)
 * words. The tracker only ever sets bits in it; the caller clears the bits of the
 * pages it has read.
 *
 * The caller's protocol, in both modes (the live-migration rounds):
 *   1. dirty_tracker_start(); from then on every page counts as dirty (round 0 reads
 *      them all), since writes made before logging was on are not tracked.
 *   2. dirty_tracker_sync(bitmap) ORs in the pages written since the previous sync.
 *   3. For each range about to be read: dirty_tracker_clear(range), then read the
 *      pages of the range that are set in the bitmap (after step 1: every page of the
 *      range), clearing their bits. Never read first and clear afterwards.
 *   4. Repeat 2-3; the last sync runs with every vCPU out of KVM_RUN.
 * dirty_bitmap_take() ORs the VMM-side bitmap in at step 2 (see below).
 *
 * Why no write is missed (a page written after the caller read it is reported by a
 * later sync):
 *
 * Bitmap mode with manual protection. KVM sets a page's bit when a vCPU writes it
 * (the write fault that makes a write-protected page writable, or an emulated write,
 * after the data is stored); the bit stays set and the page writable until
 * KVM_CLEAR_DIRTY_LOG clears the bit and write-protects the page again (TLBs flushed
 * before the ioctl returns). sync only copies the bits (KVM_GET_DIRTY_LOG does not
 * clear them). clear() re-arms a page before the caller reads it: a write that came
 * before the clear is in what the caller then reads, a write after it faults and sets
 * the bit again for a later sync. clear() re-arms only pages the tracker has reported
 * (by the latest sync, or, with KVM_DIRTY_LOG_INITIALLY_SET, every page since start)
 * and not re-armed since: those are set in the caller's bitmap and will be read. A
 * page written after the latest sync is in no caller bitmap yet, so clearing its bit
 * would lose that write; it stays set for the next sync.
 * KVM only clears in 64-page-aligned blocks (first_page a multiple of 64, num_pages a
 * multiple of 64 or reaching the slot's end); clear() rounds the range out to those
 * blocks but passes KVM a mask with only the reported pages inside the asked range, so
 * no page outside the range is ever re-armed.
 * Without manual protection (an old kernel, or no_manual_protect): KVM_GET_DIRTY_LOG
 * clears the bits and write-protects the pages itself, atomically with reporting them;
 * the caller reads after the sync, and clear() has nothing to do.
 *
 * Ring mode. When a vCPU writes a write-protected page (or on each emulated write), KVM
 * pushes (slot, offset) onto that vCPU's ring, publishing the entry with a release
 * store of its flags, and leaves the page writable. Harvesting reads an entry after an
 * acquire load of its flags, records the page, and marks the entry RESET; then
 * KVM_RESET_DIRTY_RINGS write-protects every harvested page again and frees its entry
 * (TLBs flushed before it returns; retried on EINTR until it is complete). Writes
 * between the push and the reset make no new entry, but they happened before the sync
 * returned, so a read after the sync sees them; a write after the reset pushes a new
 * entry. So: read a page only after the sync that reported it, which the protocol
 * above does. A vCPU whose ring is nearly full exits with KVM_EXIT_DIRTY_RING_FULL;
 * dirty_tracker_ring_full() harvests and resets that ring into a pending bitmap that
 * the next sync returns (and only then may the caller read those pages: the reset
 * came first). The write that filled the ring may not have happened yet when the vCPU
 * exits; it is retried when the vCPU runs again, the page is protected again by then,
 * and the write is logged again. clear() is a no-op in this mode.
 *
 * Ring overflow. KVM makes a vCPU exit once its ring is full up to a reserve (64
 * entries on x86 without PML), trusting it to push fewer than that before it exits.
 * On kvm_pvm, where every guest instruction is emulated, a vCPU can overshoot the
 * reserve (measured: up to a whole 256- or 1024-entry ring); KVM then overwrites
 * unharvested entries (the kernel logs a WARNING in kvm_dirty_ring_push) and counts
 * pushes the ring no longer holds, so its later entries land past where we read and
 * every later ring-full exit would find nothing. The tracker notices (a whole ring
 * harvested without a reset in between, an empty entry where it reads with a filled
 * one after it, or ring-full exits that keep finding nothing, when KVM's own reset is
 * stuck on an entry), steps over the gap, and recovers without losing a write: it turns
 * logging off and on again for every slot, which write-protects every page (the page
 * of a lost entry may have stayed writable, and its later writes would make no entry),
 * and reports every page: they are read after the next sync, so anything written
 * before the re-arming is read and anything after it is logged. That costs a full
 * round; calling dirty_tracker_harvest() every few ms keeps the rings far from full.
 * stats.ring_overflows counts them.
 *
 * Untouched slots (with a touched callback). Turning logging on costs KVM a walk over
 * every page of the slot (write-protecting; about 25 ms per 200 GiB here), whether the
 * guest ever touched it or not. A page nobody touched has no host page: the guest's
 * first write to it goes through a KVM page fault that maps a host page in (and a write
 * by KVM itself or the VMM touches the host page too), and a host page, once there,
 * stays in RAM or swap, where the callback sees it. So a slot the callback finds
 * without a touched page has not been written since the guest started. start() logs
 * only slots with a touched page; sync() asks again about the unlogged slots (adjacent
 * ones together) and, for a slot now touched, turns logging on first and then
 * reports every touched page of it (in ring mode: into the pending bitmap). A write
 * before logging went on touched its page before the look, so it is reported and read
 * after this sync; a write after it is logged by KVM (the slot was write-protected
 * as logging went on, without KVM_DIRTY_LOG_INITIALLY_SET; with it, every page of the
 * slot is reported until cleared). The caller's protocol is unchanged: an unlogged slot
 * has nothing reported, so clear() has nothing to re-arm there. Memory whose contents
 * do not come from this process (a file mapping) or a kernel without a cheap answer
 * makes the callback fail: that slot is logged at start as before. stop() turns off
 * what is on; the next start() asks again.
 *
 * VMM writes. The VMM writes guest memory through its own mapping, which neither
 * backend sees: it marks its own bitmap, setting the bit only after the data is
 * written (release). dirty_bitmap_take() exchanges each word with zero (acquire)
 * before the caller reads the pages: a write whose bit was taken is complete and seen
 * by the read, a write whose bit is set after the take is reported next time. With a
 * summary, the writer sets the summary bit after the page's bit and the taker exchanges
 * the summary word before the page words: a summary bit taken means the page bits set
 * before it are seen; one set after the take is looked at next time.
 *
 * Threads: every function except create and destroy may be called from any thread,
 * concurrently (one lock inside). dirty_tracker_ring_full() is meant for the vCPU
 * thread that got the exit; the harvesting never waits for a vCPU.
 */
#ifndef GODWIT_KVM_DIRTY_H
#define GODWIT_KVM_DIRTY_H

#include "base/util.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

enum dirty_mode { DIRTY_MODE_BITMAP, DIRTY_MODE_RING };

/* One KVM memory slot the guest may write. */
struct dirty_slot {
	uint32_t slot;        /* as for KVM_SET_USER_MEMORY_REGION: address space << 16 | id */
	uint32_t flags;       /* the slot's flags without KVM_MEM_LOG_DIRTY_PAGES */
	uint64_t gpa;
	uint64_t npages;      /* 4 KiB pages */
	void *host;
	uint64_t first_page;  /* where this slot's pages start in the caller's flat numbering */
};

struct dirty_config {
	enum dirty_mode mode;
	int vmfd;
	const struct dirty_slot *slots;  /* copied; flat ranges must not overlap */
	unsigned nslots;
	/* ring mode */
	uint32_t ring_bytes;             /* as passed to dirty_ring_enable() */
	unsigned nvcpus;                 /* indices 0..nvcpus-1; all added before start */
	/* bitmap mode, for tests and debugging: use less of KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 */
	bool no_manual_protect;          /* KVM_GET_DIRTY_LOG clears itself */
	bool no_initially_set;           /* start write-protects everything at once */
	/*
	 * Optional, both modes: which of the npages pages at host were ever touched (in
	 * RAM or swap), as set bits (bit i: page i) in bitmap; returns how many. With a
	 * NULL bitmap: whether any (0 or more; it may stop at the first). A negative errno
	 * if it cannot tell cheaply. With it, slots nobody touched are logged only once
	 * touched (see "Untouched slots" above).
	 */
	int64_t (*touched)(void *opaque, const void *host, uint64_t npages, uint64_t *bitmap);
	void *touched_opaque;
};

struct dirty_stats {
	uint64_t syncs;
	uint64_t pages_reported;  /* bits set in caller bitmaps (a page may count once per sync) */
	uint64_t pages_rearmed;   /* bitmap: pages re-protected by dirty_tracker_clear() */
	uint64_t clear_ioctls;    /* bitmap: KVM_CLEAR_DIRTY_LOG calls */
	uint64_t ring_entries;    /* ring: entries harvested */
	uint64_t ring_full;       /* ring: dirty_tracker_ring_full() calls */
	uint64_t ring_overflows;  /* ring: overflows recovered from (all re-armed and reported) */
	uint64_t ring_resyncs;    /* ring: times a ring was found out of step after one */
	uint64_t ring_unsticks;   /* ring: times KVM's reset was stuck after one */
	uint32_t manual_caps;     /* bitmap: KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 options in use */
	uint64_t slots_deferred;  /* starts that left a slot unlogged: nobody had touched it */
	uint64_t slots_late;      /* deferred slots a sync found touched and started logging */
	unsigned slots_logged;    /* slots logged now */
};

struct dirty_tracker;

/*
 * Enables the dirty ring on a VM: ring_bytes per vCPU, a power of two, at least one
 * page and at most what KVM_CAP_DIRTY_LOG_RING reports. Must happen before any vCPU
 * is created; a VM with the ring cannot use KVM_GET_DIRTY_LOG.
 */
int __must_check dirty_ring_enable(int vmfd, uint32_t ring_bytes, struct errbuf *e);

int __must_check dirty_tracker_create(struct dirty_tracker **out, const struct dirty_config *cfg,
				      struct errbuf *e);
/* Stops logging if it is on, unmaps the rings, frees t (NULL is fine). */
void dirty_tracker_destroy(struct dirty_tracker *t);

/* Ring mode: maps vCPU index's ring (once per vCPU, after creating it, from any thread). */
int __must_check dirty_tracker_vcpu_add(struct dirty_tracker *t, unsigned index, int vcpufd,
					struct errbuf *e);

/*
 * Turns logging on: KVM_MEM_LOG_DIRTY_PAGES on every slot (with a touched callback: on
 * every touched slot, the others at the sync that finds them touched). Bitmap mode, at
 * the first start: enables KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 with
 * KVM_DIRTY_LOG_INITIALLY_SET when the host has them, so that starting does not
 * write-protect all memory at once (every page then counts as reported until clear()
 * re-arms it). Every page written before start is untracked: the caller treats all
 * pages as dirty after a start.
 */
int __must_check dirty_tracker_start(struct dirty_tracker *t, struct errbuf *e);

/*
 * ORs every page dirtied since the previous sync (and, after a start, possibly more)
 * into bitmap, after logging the slots found touched since (see "Untouched slots").
 * Bitmap mode: KVM_GET_DIRTY_LOG per logged slot; with manual protection the bits are
 * not cleared in KVM (clear() does that), so a page stays reported by every sync until
 * it is cleared. Ring mode: harvests every vCPU's ring (the vCPUs may be
 * running), resets the rings, and adds what ring_full() harvested since the last sync.
 */
int __must_check dirty_tracker_sync(struct dirty_tracker *t, uint64_t *bitmap, struct errbuf *e);
/*
 * The same, and widens span (flat pages [span[0], span[1]); empty when span[0] >=
 * span[1]) to cover every bit it set: a caller whose bitmap was empty outside its span
 * need look only inside it (an idle big guest's syncs then cost what it touched).
 */
int __must_check dirty_tracker_sync_span(struct dirty_tracker *t, uint64_t *bitmap,
					 uint64_t *span, struct errbuf *e);

/*
 * Ring mode: harvests every ring into the pending bitmap and resets them, like a sync
 * that returns nothing yet. Call it often (every few ms, from any thread) while the
 * caller is busy between syncs, so that rings rarely fill up (see overflows above).
 * Bitmap mode: a no-op.
 */
int __must_check dirty_tracker_harvest(struct dirty_tracker *t, struct errbuf *e);

/*
 * Bitmap mode with manual protection: re-arms tracking (KVM_CLEAR_DIRTY_LOG) for the
 * pages of flat [first_page, first_page + npages) that were reported and not re-armed
 * since; call it just before reading the range's dirty pages. Pages outside the range
 * are never touched (see the top of this file for the 64-page rounding). Otherwise a
 * no-op.
 */
int __must_check dirty_tracker_clear(struct dirty_tracker *t, uint64_t first_page,
				     uint64_t npages, struct errbuf *e);

/*
 * Ring mode, on a vCPU thread that got KVM_EXIT_DIRTY_RING_FULL: harvests that vCPU's
 * ring into the tracker's pending bitmap (the next sync returns those pages) and
 * resets it, so that the vCPU can run on.
 */
int __must_check dirty_tracker_ring_full(struct dirty_tracker *t, unsigned vcpu_index,
					 struct errbuf *e);

/*
 * Turns logging off (slot flags back to their own). Bitmap mode: KVM drops its bitmap,
 * so pages dirtied since the last sync are forgotten (sync first if they matter). Ring
 * mode: entries still in the rings are returned by a later sync. The tracker can be
 * started again.
 */
int __must_check dirty_tracker_stop(struct dirty_tracker *t, struct errbuf *e);

/* Flat pages covered: the largest first_page + npages of the slots. */
uint64_t dirty_tracker_pages(const struct dirty_tracker *t);
void dirty_tracker_stats(struct dirty_tracker *t, struct dirty_stats *out);
const char *dirty_mode_name(enum dirty_mode m);

/*
 * A bitmap other threads set concurrently, such as the VMM's own writes to guest memory,
 * with an optional summary: bit i of sum says word i of bits may have a bit set (sum has
 * one word per DIRTY_SUM_PAGES pages), so that taking from a big, nearly empty bitmap
 * costs its summary, 1/4096 of its size.
 * dirty_bitmap_mark() sets page pg's bit, then its summary bit; call it only after the
 * write (both are release stores).
 */
#define DIRTY_SUM_PAGES (64 * 64)
static inline void dirty_bitmap_mark(_Atomic uint64_t *bits, _Atomic uint64_t *sum, uint64_t pg)
{
	atomic_fetch_or_explicit(&bits[pg / 64], 1ull << (pg % 64), memory_order_release);
	/* release: whoever takes the summary bit sees the page's bit */
	if (sum)
		atomic_fetch_or_explicit(&sum[pg / DIRTY_SUM_PAGES], 1ull << (pg / 64 % 64),
					 memory_order_release);
}

/*
 * Moves the set bits of src into dst: each word is atomically exchanged with zero; with
 * sum (NULL: look at every word), only the words its bits name, taking each summary
 * word first. Returns the number of bits moved; widens span (NULL: none), as
 * dirty_tracker_sync_span() does, over the words it moved bits from.
 */
uint64_t dirty_bitmap_take(uint64_t *dst, _Atomic uint64_t *src, _Atomic uint64_t *sum,
			   uint64_t npages, uint64_t *span);

#endif
