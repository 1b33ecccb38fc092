/* SPDX-License-Identifier: MIT */
/*
 * The outgoing side of a migration and the status both sides report. The engine runs
 * on its own thread; the main loop only starts it, reads its status and cancels it.
 *
 * Live migration: dirty logging on; round 0 sends every non-zero page (2 MiB ranges the
 * guest never touched are not even read); each next round sends the pages written since
 * they were last read. Each round ends with a PING whose PONG says the round's data has
 * arrived. The expected downtime is then made of measured parts: the dirty sync, the
 * remainder and the vCPU and device state over the bandwidth the round achieved, and the
 * handover's round trips; once it fits the target, the guest is paused for the final
 * sync, the remainder, and the vCPU and device state. A guest that
 * dirties faster than the link is throttled, paused or left alone, per --on-stall.
 *
 * Correctness of the rounds: a page's dirty bit is cleared (re-armed) just before the
 * page is read, never earlier, so a write that lands after the read is seen by a later
 * sync; the final sync happens with every vCPU paused. Every attempt starts with a full
 * round 0, so a retry after a failure can never skip a page.
 */
#include "migration/migrate.h"
#include "migration/mig_internal.h"
#include "migration/autocompress.h"
#include "migration/params.h"
#include "base/log.h"
#include "migration/postcopy.h"
#include "migration/proto.h"
#include "migration/snapshot.h"
#include "state/record.h"
#include "vmm/memory.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define MIG_CONNECT_TIMEOUT_MS 10000
#define MIG_RANGE_PAGES 512 /* 2 MiB: the unit of clearing and of skipping untouched memory */

struct migration mig = { .lock = PTHREAD_MUTEX_INITIALIZER, .fd = -1 };

int mig_io_timeout_ms(void)
{
	const char *s = getenv("GODWIT_MIGRATION_IO_TIMEOUT_MS");
	uint64_t v;

	if (s && parse_u64(s, 100, 3600000, &v) == 0)
		return (int)v;
	return 30000;
}

const char *mig_state_name(enum mig_state st)
{
	switch (st) {
	case MIG_STATE_NONE: return "none";
	case MIG_STATE_SETUP: return "setup";
	case MIG_STATE_ACTIVE: return "active";
	case MIG_STATE_COMPLETING: return "completing";
	case MIG_STATE_COMPLETED: return "completed";
	case MIG_STATE_FAILED: return "failed";
	case MIG_STATE_CANCELLED: return "cancelled";
	case MIG_STATE_POSTCOPY_PAUSED: return "postcopy-paused";
	}
	return "unknown";
}

void migration_status_get(struct mig_status *st)
{
	pthread_mutex_lock(&mig.lock);
	*st = mig.st;
	if (st->state == MIG_STATE_SETUP || st->state == MIG_STATE_ACTIVE ||
	    st->state == MIG_STATE_COMPLETING)
		st->elapsed_ns = time_mono_ns() - mig.t_start;
	if (st->elapsed_ns)
		st->throughput = (uint64_t)((double)st->bytes_sent * 1e9 / (double)st->elapsed_ns);
	mig_postcopy_status_fill(st);
	mig_streams_status_fill(st);
	if (st->incoming && st->state == MIG_STATE_COMPLETED && mig.vm)
		st->announced = vm_devices_announced(mig.vm);
	/* the vCPU threads note it themselves, some time after they were asked to run */
	if (st->incoming && st->times.started && mig.vm)
		st->times.running = vm_vcpus_first_run(mig.vm);
	pthread_mutex_unlock(&mig.lock);
}

/* Stamps one step of mig.st.times (CLOCK_REALTIME) as it happens. */
void mig_time_mark(uint64_t *field)
{
	uint64_t now = time_real_ns();

	pthread_mutex_lock(&mig.lock);
	*field = now;
	pthread_mutex_unlock(&mig.lock);
}

static void mig_state_set(enum mig_state s)
{
	pthread_mutex_lock(&mig.lock);
	mig.st.state = s;
	pthread_mutex_unlock(&mig.lock);
}

/* Bytes handed to every connection of this migration. */
static uint64_t mig_wire_bytes(void)
{
	return (mig.w ? state_writer_bytes(mig.w) : 0) + mig_streams_bytes();
}

static void mig_bytes_update(void)
{
	uint64_t b = mig_wire_bytes();

	pthread_mutex_lock(&mig.lock);
	mig.st.bytes_sent = b;
	mig.st.stream_bytes[0] = mig.w ? state_writer_bytes(mig.w) : 0;
	if (mig.st.bytes_total < b)
		mig.st.bytes_total = b;
	pthread_mutex_unlock(&mig.lock);
}

/* Adds " (why)" to the message in e. */
static int __attribute__((format(printf, 3, 4))) mig_err_append(struct errbuf *e, int ret,
								  const char *fmt, ...)
{
	char msg[ERRBUF_LEN], why[ERRBUF_LEN];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);
	snprintf(msg, sizeof(msg), "%s", e->msg);
	return err_set(e, ret, "%s (%s)", msg, why);
}

/* ---- bandwidth cap and cancellation ---- */

static int mig_check_cancel(struct errbuf *e)
{
	if (atomic_load(&mig.cancel))
		return err_set(e, -ECANCELED, "cancelled");
	return 0;
}

/* Ring mode: keep the dirty rings from filling while the guest runs (every 2 ms). */
static int mig_harvest_maybe(struct errbuf *e)
{
	static uint64_t last;
	uint64_t now = time_mono_ns();

	if (!mig.tracking || now - last < 2000000ull)
		return 0;
	last = now;
	return vm_dirty_harvest(mig.vm, e);
}

static void mig_bandwidth_wait(void)
{
	uint64_t sent, due_ns, now;

	if (!mig.p.bandwidth)
		return;
	sent = mig_wire_bytes() - mig.bw_start_bytes;
	due_ns = (uint64_t)((double)sent * 1e9 / (double)mig.p.bandwidth);
	now = time_mono_ns() - mig.bw_start_ns;
	while (now < due_ns && !atomic_load(&mig.cancel)) {
		uint64_t d = MIN(due_ns - now, 2000000ull);
		struct errbuf e;

		if (mig_harvest_maybe(&e) < 0)
			log_warn("migration: harvesting the dirty rings: %s", e.msg);

		usleep((useconds_t)(d / 1000));
		now = time_mono_ns() - mig.bw_start_ns;
	}
}

/* ---- sending pages ---- */

struct mig_batch {
	struct state_page pages[STATE_PAGES_MAX];
	uint32_t n;
	unsigned flags;
	uint64_t sent_pages, zero_pages;
	uint64_t shown_pages, shown_zero; /* already added to the status */
};

/* Adds what was sent since the last call to the status, so progress moves within a round. */
static void mig_batch_show(struct mig_batch *b)
{
	pthread_mutex_lock(&mig.lock);
	mig.st.pages_normal += b->sent_pages - b->shown_pages;
	mig.st.pages_zero += b->zero_pages - b->shown_zero;
	pthread_mutex_unlock(&mig.lock);
	b->shown_pages = b->sent_pages;
	b->shown_zero = b->zero_pages;
}

/*
 * --compress auto (migration/autocompress.c says how it chooses). Each batch's sender
 * measures what the batch cost: the time to compress it and hand it to the socket (a full
 * socket buffer blocks, so on a slow link this is the link's pace; a bandwidth cap's waits
 * count too) and the bytes before and after. The senders of several connections share one
 * measurement and one choice.
 */
static struct mig_autoc mig_auto;
static pthread_mutex_t mig_auto_lock = PTHREAD_MUTEX_INITIALIZER;

enum mig_zchoice { MIG_Z_PLAIN, MIG_Z_BATCH, MIG_Z_SAMPLE };

static enum mig_zchoice mig_compress_now(void)
{
	enum mig_zchoice z;

	/* post-copy sends what the destination waits for: latency, not bytes, counts there */
	if (mig.p.compress == MIG_COMPRESS_NONE || mig.postcopy)
		return MIG_Z_PLAIN;
	if (mig.p.compress == MIG_COMPRESS_ZSTD)
		return MIG_Z_BATCH;
	pthread_mutex_lock(&mig_auto_lock);
	if (mig_auto.on)
		z = MIG_Z_BATCH;
	else if (mig_autoc_probe_due(&mig_auto))
		z = MIG_Z_SAMPLE;
	else
		z = MIG_Z_PLAIN;
	pthread_mutex_unlock(&mig_auto_lock);
	return z;
}

static void mig_auto_account(const struct mig_autoc_batch *b)
{
	bool on;

	pthread_mutex_lock(&mig_auto_lock);
	if (!mig_autoc_account(&mig_auto, b)) {
		pthread_mutex_unlock(&mig_auto_lock);
		return;
	}
	on = mig_auto.on;
	log_debug("compress auto: %s (plain %.2f ns/byte, compressor %.2f ns/byte saving %.0f%%)",
		  on ? "on" : "off", mig_auto.link,
		  mig_auto.cz_raw > 0 ? mig_auto.cz_ns / mig_auto.cz_raw : 0.0,
		  mig_auto.cz_raw > 0 ? 100 * mig_auto.cz_saved / mig_auto.cz_raw : 0.0);
	pthread_mutex_unlock(&mig_auto_lock);
	pthread_mutex_lock(&mig.lock);
	mig.st.compressing = on;
	pthread_mutex_unlock(&mig.lock);
}

/*
 * The calling thread's time on a CPU and time runnable but waiting for one, in ns, from the
 * scheduler's statistics; zero where the kernel keeps none (auto then assumes a free CPU).
 */
static void mig_thread_sched(uint64_t *run_ns, uint64_t *wait_ns)
{
	char buf[96];
	unsigned long long run = 0, wait = 0;
	int fd = open("/proc/thread-self/schedstat", O_RDONLY | O_CLOEXEC);
	ssize_t n = fd >= 0 ? read(fd, buf, sizeof(buf) - 1) : -1;

	if (fd >= 0)
		close(fd);
	if (n > 0) {
		buf[n] = '\0';
		if (sscanf(buf, "%llu %llu", &run, &wait) != 2)
			run = wait = 0;
	}
	*run_ns = run;
	*wait_ns = wait;
}

/*
 * Hands a batch to w, compressed as z says. A sample goes first as a record of its own,
 * compressed, and the rest of the batch plain.
 */
static int mig_pages_write_z(struct state_writer *w, const struct state_page *pages, uint32_t n,
			     unsigned flags, enum mig_zchoice z, struct errbuf *e)
{
	int ret;

	if (z == MIG_Z_SAMPLE && n > MIG_AUTOC_SAMPLE) {
		ret = state_writer_pages(w, pages, MIG_AUTOC_SAMPLE, flags | STATE_PAGES_COMPRESS,
					 e);
		if (ret < 0)
			return ret;
		return state_writer_pages(w, pages + MIG_AUTOC_SAMPLE, n - MIG_AUTOC_SAMPLE, flags,
					  e);
	}
	if (z != MIG_Z_PLAIN)
		flags |= STATE_PAGES_COMPRESS;
	return state_writer_pages(w, pages, n, flags, e);
}

/*
 * Writes a batch on w and counts its data. With --compress auto the time it took to hand
 * the bytes over counts as the link's (on the first connection the caller adds the
 * bandwidth cap's wait; an extra connection's sender measures its own writes).
 */
static int mig_pages_write_timed(struct state_writer *w, const struct state_page *pages,
				 uint32_t n, unsigned flags, void (*wait)(void), struct errbuf *e)
{
	struct state_zstats z0, z1;
	uint64_t t0, bytes0, data = 0, deltas = 0, delta_bytes = 0;
	uint64_t run0 = 0, wait0 = 0, run1 = 0, wait1 = 0;
	bool autoc = mig.p.compress == MIG_COMPRESS_AUTO;
	enum mig_zchoice z = mig_compress_now();
	int ret;

	for (uint32_t i = 0; i < n; i++) {
		data += pages[i].data ? STATE_PAGE_SIZE : 0;
		deltas += pages[i].delta;
		delta_bytes += pages[i].delta ? pages[i].delta_len : 0;
	}
	/* a sample's cost is scaled by the CPU share; reading it costs 20+ us: only then */
	if (z == MIG_Z_SAMPLE)
		mig_thread_sched(&run0, &wait0);
	state_writer_zstats(w, &z0);
	t0 = time_mono_ns();
	bytes0 = state_writer_bytes_flushed(w);
	ret = mig_pages_write_z(w, pages, n, flags, z, e);
	if (ret < 0)
		return ret;
	state_writer_zstats(w, &z1);
	pthread_mutex_lock(&mig.lock);
	mig.st.page_bytes += data;
	mig.st.page_bytes_sent += data - (deltas * STATE_PAGE_SIZE - delta_bytes) -
				  ((z1.raw_bytes - z1.out_bytes) - (z0.raw_bytes - z0.out_bytes));
	mig.st.delta_pages += deltas;
	mig.st.delta_bytes += delta_bytes;
	pthread_mutex_unlock(&mig.lock);
	if (wait)
		wait();
	if (!autoc)
		return 0;
	if (z == MIG_Z_SAMPLE)
		mig_thread_sched(&run1, &wait1);
	mig_auto_account(&(struct mig_autoc_batch){
		.ns = time_mono_ns() - t0,
		.wire = state_writer_bytes_flushed(w) - bytes0,
		.raw = data - (deltas * STATE_PAGE_SIZE - delta_bytes),
		.zns = z1.ns - z0.ns,
		.zraw = z1.raw_bytes - z0.raw_bytes,
		.zsaved = (z1.raw_bytes - z1.out_bytes) - (z0.raw_bytes - z0.out_bytes),
		.run_ns = run1 >= run0 && wait1 >= wait0 ? run1 - run0 : 0,
		.wait_ns = run1 >= run0 && wait1 >= wait0 ? wait1 - wait0 : 0,
	});
	return 0;
}

int mig_pages_write(struct state_writer *w, const struct state_page *pages, uint32_t n,
		    unsigned flags, struct errbuf *e)
{
	return mig_pages_write_timed(w, pages, n, flags, NULL, e);
}

/* The first connection's share: the batch an extra connection's sender could not take. */
static void mig_batch_wait(void)
{
	mig_bytes_update();
	mig_bandwidth_wait();
}

static int mig_batch_flush(struct mig_batch *b, struct errbuf *e)
{
	unsigned flags;
	int ret;

	if (!b->n)
		return 0;
	/* a batch built by delta.c lies in its own buffer (stable), which goes with it */
	flags = b->flags | (mig_delta_on() ? STATE_PAGES_STABLE : 0);
	ret = mig_streams_give(b->pages, b->n, flags, mig_delta_batch_buf(), e);
	if (ret == 0)
		ret = mig_pages_write_timed(mig.w, b->pages, b->n, flags, mig_batch_wait, e);
	else if (ret > 0)
		mig_batch_wait();
	if (mig_delta_on())
		mig_delta_batch_sent();
	b->n = 0;
	if (ret < 0)
		return ret;
	mig_batch_show(b);
	ret = mig_harvest_maybe(e);
	if (ret < 0)
		return ret;
	return mig_check_cancel(e);
}

/*
 * Queues flat page pg. In round 0 (send_zero false) zero pages are skipped: the
 * destination's memory starts zeroed. Later, a page that became zero goes as a flag.
 */
static int mig_page_queue(struct mig_batch *b, uint64_t pg, bool send_zero, struct errbuf *e)
{
	struct state_page page = { 0 };
	uint8_t *host = vm_page_host(mig.vm, pg, &page.gpa);

	/* --delta: read once into the batch's own buffer, whole or as a delta (delta.c) */
	if (mig_delta_on())
		mig_delta_page(pg, host, &page);
	else if (!page_is_zero(host))
		page.data = host;
	if (!page.data) {
		b->zero_pages++;
		if (!send_zero)
			return 0;
		b->pages[b->n++] = page;
	} else {
		b->sent_pages++;
		b->pages[b->n++] = page;
	}
	if (b->n == STATE_PAGES_MAX)
		return mig_batch_flush(b, e);
	return 0;
}

/*
 * Round 0: every page that may be non-zero. Memory is taken in 64 MiB windows: tracking
 * is re-armed for the window first, then pagemap tells which 2 MiB ranges the guest ever
 * touched, and only those are read. In that order a page the guest first writes while
 * the window is looked at is either read now or reported by the next sync. A window in
 * which one look over the whole memory, taken after logging started, found nothing is
 * skipped without re-arming it: every write to it since the start is still logged (the
 * tracker starts with nothing reported; a slot nobody had touched is not logged yet, but
 * a write there touches a page, which the next sync finds: kvm/dirty.h), so the next
 * sync reports it. An idle guest thus costs one scan of its page tables, whatever its
 * size.
 */
#define MIG_WINDOW_RANGES 32
#define MIG_WINDOW_PAGES (MIG_WINDOW_RANGES * MIG_RANGE_PAGES)

static int mig_round0(struct mig_batch *b, struct errbuf *e)
{
	struct guest_mem *mem = vm_memory(mig.vm);
	uint64_t nwin = (mig.npages + MIG_WINDOW_PAGES - 1) / MIG_WINDOW_PAGES, gpa;
	bool touched[MIG_WINDOW_RANGES], *win = calloc(nwin, sizeof(*win));
	int ret = 0;

	if (!win)
		return err_set(e, -ENOMEM, "out of memory");
	guest_mem_touched_map(mem, vm_page_host(mig.vm, 0, &gpa), mig.npages, MIG_WINDOW_PAGES,
			      win);
	for (uint64_t w0 = 0; w0 < mig.npages && ret == 0; w0 += MIG_WINDOW_PAGES) {
		uint64_t wn = MIN(MIG_WINDOW_PAGES, mig.npages - w0);

		if (!win[w0 / MIG_WINDOW_PAGES]) {
			b->zero_pages += wn;
			continue;
		}
		if (mig.tracking) {
			ret = vm_dirty_clear(mig.vm, w0, wn, e);
			if (ret < 0)
				break;
		}
		guest_mem_touched_map(mem, vm_page_host(mig.vm, w0, &gpa), wn, MIG_RANGE_PAGES,
				      touched);
		for (uint64_t first = w0; first < w0 + wn && ret == 0; first += MIG_RANGE_PAGES) {
			uint64_t n = MIN(MIG_RANGE_PAGES, w0 + wn - first);

			if (!touched[(first - w0) / MIG_RANGE_PAGES]) {
				b->zero_pages += n;
				continue;
			}
			for (uint64_t pg = first; pg < first + n && ret == 0; pg++)
				ret = mig_page_queue(b, pg, false, e);
		}
	}
	free(win);
	return ret < 0 ? ret : mig_batch_flush(b, e);
}

/*
 * Sends the pages set in mig.dirty, clearing each range's tracking before reading it.
 * Only mig.dirty_span can have bits (the syncs of the live rounds widen it): an idle big
 * guest's round, and the downtime's, look at what it touched, not at its whole bitmap.
 */
static int mig_round_dirty(struct mig_batch *b, struct errbuf *e)
{
	uint64_t end = MIN(mig.dirty_span[1], mig.npages);
	int ret;

	for (uint64_t first = ALIGN_DOWN(mig.dirty_span[0], MIG_RANGE_PAGES); first < end;
	     first += MIG_RANGE_PAGES) {
		uint64_t n = MIN(MIG_RANGE_PAGES, mig.npages - first);
		bool any = false;

		for (uint64_t w = first / 64; w < (first + n + 63) / 64; w++)
			if (mig.dirty[w])
				any = true;
		if (!any)
			continue;
		if (mig.tracking) {
			ret = vm_dirty_clear(mig.vm, first, n, e);
			if (ret < 0)
				return ret;
		}
		for (uint64_t pg = first; pg < first + n; pg++) {
			if (!(mig.dirty[pg / 64] & (1ull << (pg % 64))))
				continue;
			mig.dirty[pg / 64] &= ~(1ull << (pg % 64));
			ret = mig_page_queue(b, pg, true, e);
			if (ret < 0)
				return ret;
		}
	}
	mig.dirty_span[0] = mig.dirty_span[1] = 0; /* every bit was read and cleared */
	return mig_batch_flush(b, e);
}

/* Bits set in mig.dirty among flat pages [first, end). */
static uint64_t mig_dirty_count_in(uint64_t first, uint64_t end)
{
	uint64_t n = 0;

	end = MIN(end, mig.npages);
	for (uint64_t w = first / 64; first < end && w < (end + 63) / 64; w++)
		n += (uint64_t)__builtin_popcountll(mig.dirty[w]);
	return n;
}

static uint64_t mig_dirty_count(void)
{
	return mig_dirty_count_in(0, mig.npages);
}

static void mig_round_record(uint32_t round, struct mig_batch *b, uint64_t bytes,
			     uint64_t ns, uint64_t dirty, uint64_t expected_ms)
{
	mig_batch_show(b);
	pthread_mutex_lock(&mig.lock);
	if (round < MIG_ROUNDS_MAX) {
		struct mig_round *r = &mig.st.rounds[round];

		r->pages = b->sent_pages;
		r->bytes = bytes;
		r->duration_ns = ns;
		r->dirty_pages = dirty;
		r->dirty_rate = ns ? (uint64_t)((double)dirty * 1e9 / (double)ns) : 0;
		r->throttle_pct = mig.st.throttle_pct;
		mig.st.nrounds = round + 1;
		mig.st.dirty_rate = r->dirty_rate;
	}
	mig.st.round = round;
	mig.st.remaining_bytes = dirty * GUEST_PAGE_SIZE;
	mig.st.expected_downtime_ms = expected_ms;
	mig.st.bytes_total = mig.st.bytes_sent + mig.st.remaining_bytes;
	pthread_mutex_unlock(&mig.lock);
}

/* ---- throttling (auto-converge) ---- */

/* Kicks the vCPUs once a period: each sleeps its share of it at its next exit (vm.h). */
static void *mig_throttle_main(void *arg)
{
	while (atomic_load(&mig.throttle_on)) {
		vm_throttle_kick(mig.vm);
		usleep((useconds_t)(VM_THROTTLE_PERIOD_NS / 1000));
	}
	return NULL;
}

static void mig_throttle_step(void)
{
	unsigned pct;

	pthread_mutex_lock(&mig.lock);
	pct = mig.st.throttle_pct ? MIN(mig.st.throttle_pct + 10, 99u) : 20;
	mig.st.throttle_pct = pct;
	pthread_mutex_unlock(&mig.lock);
	vm_throttle_set(mig.vm, pct);
	if (!mig.throttle_thread_started) {
		atomic_store(&mig.throttle_on, true);
		if (pthread_create(&mig.throttle_thread, NULL, mig_throttle_main, NULL) == 0)
			mig.throttle_thread_started = true;
	}
	log_info("migration: guest dirties memory faster than it is sent: throttled to %u%%", pct);
}

static void mig_throttle_stop(void)
{
	vm_throttle_set(mig.vm, 0);
	if (mig.throttle_thread_started) {
		atomic_store(&mig.throttle_on, false);
		pthread_join(mig.throttle_thread, NULL);
		mig.throttle_thread_started = false;
	}
}

/* ---- the phases ---- */

static int mig_expect(uint32_t type, struct mig_ctrl *m, struct errbuf *e)
{
	struct state_record rec;
	int ret = state_reader_next(mig.r, &rec, e);

	if (ret < 0)
		return err_prefix(e, ret, "waiting for %s from the destination", mig_msg_name(type));
	ret = mig_ctrl_decode(&rec, m, e);
	if (ret < 0)
		return ret;
	if (m->type == MIG_MSG_REFUSE)
		return err_set(e, -EPROTO, "the destination refused the migration: %s", m->reason);
	if (m->type == MIG_MSG_ERROR)
		return err_set(e, -EPROTO, "the destination failed: %s", m->reason);
	if (m->type == MIG_MSG_ABORT)
		return err_set(e, -EPROTO, "the destination aborted: %s", m->reason);
	if (m->type != type)
		return err_set(e, -EPROTO, "expected %s from the destination, got %s",
			       mig_msg_name(type), mig_msg_name(m->type));
	return 0;
}

/* CONFIG: what the guest was given, so the destination can check it fits */
static int mig_config_send(struct errbuf *e)
{
	struct state_config *cfg = calloc(1, sizeof(*cfg));
	int ret;

	if (!cfg)
		return err_set(e, -ENOMEM, "out of memory");
	vm_state_config_build(mig.vm, cfg);
	cfg->flags = mig.p.mode;
	mig.nvcpus = cfg->nr_vcpus;
	ret = state_writer_config(mig.w, cfg, e);
	free(cfg);
	return ret;
}

/*
 * In TLS 1.3 the client's handshake ends before the server has checked the client's
 * certificate: a destination that refuses it closes the connection during HELLO/ACCEPT.
 */
static int mig_setup_error(struct errbuf *e, int ret)
{
	if ((ret != -EPIPE && ret != -ECONNRESET) || !mig.tls || mig_tls_channel_error(mig.ch))
		return ret;
	return mig_err_append(e, ret, "the destination closed the TLS connection before ACCEPT: "
				      "it may have refused this source's credentials; its log says why");
}

/* Connects, sends HELLO (with mode: a migration mode, or MIG_HELLO_RESUME) and CONFIG. */
static int mig_handshake(uint32_t mode, struct errbuf *e)
{
	struct state_reader_opts ro = { .kind = STATE_KIND_MIGRATION, .allow_control = true,
					.max_record = 1 << 20 };
	struct mig_ctrl m = { .type = MIG_MSG_HELLO, .u32a = MIG_PROTOCOL_VERSION, .u32b = mode };
	int ret, fd;

	ret = mig_connect(&mig.uri, MIG_CONNECT_TIMEOUT_MS, &fd, e);
	if (ret < 0)
		return ret;
	pthread_mutex_lock(&mig.lock);
	mig.fd = fd;
	pthread_mutex_unlock(&mig.lock);
	ret = mig_socket_timeouts(fd, MIG_IO_TIMEOUT_MS, e);
	if (ret < 0)
		return ret;
	/* nothing of the guest, not even HELLO, goes to a destination TLS did not authenticate */
	ret = mig_channel_open(mig.p.tls.hostname[0] ? mig.p.tls.hostname : mig.uri.host,
			       time_mono_ns() + (uint64_t)MIG_IO_TIMEOUT_MS * 1000000ull, e);
	if (ret < 0)
		return ret;
	ret = state_writer_open_channel(&mig.w, mig.ch, STATE_KIND_MIGRATION, e);
	if (ret < 0)
		return ret;
	if (mig.p.compress != MIG_COMPRESS_NONE) {
		ret = state_writer_compress(mig.w, mig.p.compress_level, e);
		if (ret < 0)
			return ret;
		m.u64a |= MIG_CAP_ZSTD;
	}
	if (mig.p.delta_cache && mode != MIG_HELLO_RESUME)
		m.u64a |= MIG_CAP_DELTA;
	ret = mig_streams_hello(&m, mode == MIG_HELLO_RESUME ? 1 : (unsigned)mig.p.connections, e);
	if (ret < 0)
		return ret;
	ret = mig_ctrl_send(mig.w, &m, e);
	if (ret == 0)
		ret = mig_streams_announce(mig.w, e);
	if (ret < 0)
		return mig_setup_error(e, ret);
	ret = mig_config_send(e);
	if (ret < 0)
		return ret;
	ret = state_writer_flush(mig.w, e);
	if (ret < 0)
		return mig_setup_error(e, ret);
	/* the destination answers once it has built the VM: allow for that, not one read */
	ret = mig_socket_timeouts(fd, MIG_BUILD_TIMEOUT_MS, e);
	if (ret < 0)
		return ret;
	ret = state_reader_open_channel(&mig.r, mig.ch, &ro, e);
	if (ret < 0)
		return mig_setup_error(e, err_prefix(e, ret, "reading from the destination"));
	ret = mig_expect(MIG_MSG_ACCEPT, &m, e);
	if (ret < 0)
		return mig_setup_error(e, ret);
	ret = mig_socket_timeouts(fd, MIG_IO_TIMEOUT_MS, e);
	if (ret < 0)
		return ret;
	return mig_streams_connect(mig.p.tls.hostname[0] ? mig.p.tls.hostname : mig.uri.host, e);
}

static int mig_pause_guest(struct errbuf *e)
{
	int ret;

	mig.t_pause = time_mono_ns();
	mig_time_mark(&mig.st.times.pause);
	ret = vm_owner_pause(mig.vm, e);
	if (ret < 0)
		return ret;
	mig_time_mark(&mig.st.times.paused);
	mig.guest_paused = true;
	/* an operator's pause is theirs: a failed migration leaves that guest paused */
	mig.paused_by_us = !mig.operator_paused;
	return 0;
}

static int mig_section_send(void *opaque, const struct vm_section *s, struct errbuf *e)
{
	return state_writer_section(mig.w, s->name, s->instance, s->version, s->data, s->len, e);
}

static int mig_round_marker(uint32_t round, struct errbuf *e)
{
	struct mig_ctrl m = { .type = MIG_MSG_ROUND, .u32a = round };

	return mig_ctrl_send(mig.w, &m, e);
}

/*
 * PING and wait for its PONG: the destination answers once it has read everything sent
 * before, so after a round this is when the round's data had arrived. Returns the time
 * taken; the smallest such time is the round trip.
 */
static int mig_ping(uint64_t *ns, struct errbuf *e)
{
	uint64_t t0 = time_mono_ns();
	struct mig_ctrl m = { .type = MIG_MSG_PING, .u64a = t0 };
	int ret = mig_ctrl_send(mig.w, &m, e);

	if (ret == 0)
		ret = state_writer_flush(mig.w, e);
	if (ret == 0)
		ret = mig_expect(MIG_MSG_PONG, &m, e);
	if (ret < 0 && ret != -EPROTO && mig_streams_count() > 1)
		return mig_err_append(e, ret, "over %u connections PONG comes once every one of "
				      "them has delivered its pages: one may have stalled",
				      mig_streams_count());
	if (ret < 0)
		return ret;
	if (m.u64a != t0)
		return err_set(e, -EPROTO, "the destination's PONG answers another PING");
	*ns = time_mono_ns() - t0;
	if (!mig.rtt_ns || *ns < mig.rtt_ns)
		mig.rtt_ns = *ns;
	return 0;
}

/*
 * vCPU and device state: what this process sent at its last completion, else a bound on
 * today's sections (a vCPU's is about 7 KiB with a 4 KiB XSAVE area; the VM-wide ones
 * under 2 KiB), until a completion measures it.
 */
#define MIG_VCPU_STATE_BOUND (16 * KiB)
#define MIG_VM_STATE_BOUND (16 * KiB)

/*
 * The pause that stop-and-copy would take now: the final dirty sync (as long as this
 * round's), the remaining pages and the state over the bandwidth the round achieved,
 * and the handover's two round trips (DONE -> READY, COMMIT -> STARTED).
 */
static uint64_t mig_downtime_estimate(uint64_t dirty, uint64_t bw, uint64_t sync_ns,
				      struct mig_estimate *est)
{
	est->sync_ns = sync_ns;
	est->rtt_ns = mig.rtt_ns;
	est->bandwidth = bw;
	est->state_measured = mig.state_bytes_last != 0;
	est->state_bytes = est->state_measured ? mig.state_bytes_last :
			   mig.nvcpus * MIG_VCPU_STATE_BOUND + MIG_VM_STATE_BOUND;
	est->transfer_ns = (uint64_t)((double)(dirty * GUEST_PAGE_SIZE + est->state_bytes) * 1e9 /
				      (double)bw);
	return est->sync_ns + est->transfer_ns + 2 * est->rtt_ns;
}

/* Hybrid: --on-stall postcopy (--postcopy-after auto) switches where pre-copy would stall. */
static bool mig_postcopy_allowed(void)
{
	return mig.p.on_stall == MIG_STALL_POSTCOPY;
}

/* Live iteration: returns 0 when it is time for stop-and-copy (or, mig.postcopy, the switch). */
static int mig_iterate(struct mig_batch *b, struct errbuf *e)
{
	uint64_t prev_dirty = UINT64_MAX, deadline = 0, ping_ns;
	/* until a round of at least 1 MiB measures it: the cap, else 1 GB/s */
	uint64_t bw = mig.p.bandwidth ? mig.p.bandwidth : 1000000000ull;
	unsigned stalls = 0;
	uint32_t round = 0;
	int ret;

	if (mig.p.timeout_ms)
		deadline = time_deadline_ns(mig.t_start, mig.p.timeout_ms);
	/* the round trip, while nothing else is on the way */
	ret = mig_ping(&ping_ns, e);
	if (ret < 0)
		return ret;
	ret = vm_dirty_start(mig.vm, e);
	if (ret < 0)
		return ret;
	mig.tracking = true;
	mig_time_mark(&mig.st.times.tracking);
	for (;;) {
		uint64_t t0 = time_mono_ns(), bytes0 = mig_wire_bytes();
		uint64_t ns, bytes, dirty, sync_ns, expected_ns, expected_ms;
		struct mig_estimate est;
		bool stalled, limit;

		b->n = 0;
		b->flags = 0; /* the guest runs: pages are copied before they are sent */
		b->sent_pages = b->zero_pages = b->shown_pages = b->shown_zero = 0;
		ret = mig_round_marker(round, e);
		if (ret == 0)
			ret = round == 0 ? mig_round0(b, e) : mig_round_dirty(b, e);
		if (ret == 0)
			ret = mig_streams_fence(e);
		if (ret == 0)
			ret = state_writer_flush(mig.w, e);
		/* the round ends when its data has arrived, not when it was queued to send */
		if (ret == 0)
			ret = mig_ping(&ping_ns, e);
		if (ret < 0)
			return ret;
		mig_bytes_update();
		ns = time_mono_ns() - t0;
		bytes = mig_wire_bytes() - bytes0;
		sync_ns = time_mono_ns();
		ret = vm_dirty_sync(mig.vm, mig.dirty, mig.dirty_span, e);
		if (ret < 0)
			return ret;
		sync_ns = time_mono_ns() - sync_ns;
		dirty = mig_dirty_count_in(mig.dirty_span[0], mig.dirty_span[1]);
		/* the bandwidth this round achieved; a tiny round says little: keep the last */
		if (bytes > (1 << 20) && ns > mig.rtt_ns)
			bw = (uint64_t)((double)bytes * 1e9 / (double)(ns - mig.rtt_ns));
		if (mig.p.bandwidth && bw > mig.p.bandwidth)
			bw = mig.p.bandwidth;
		expected_ns = mig_downtime_estimate(dirty, bw, sync_ns, &est);
		expected_ms = (expected_ns + 999999) / 1000000;
		mig_round_record(round, b, bytes, ns, dirty, expected_ms);
		pthread_mutex_lock(&mig.lock);
		mig.st.estimate = est;
		pthread_mutex_unlock(&mig.lock);
		log_debug("round %u: %llu pages, %llu dirty, expected downtime %llu ms (sync %llu us, "
			  "rtt %llu us, %llu MB/s)", round, (unsigned long long)b->sent_pages,
			  (unsigned long long)dirty, (unsigned long long)expected_ms,
			  (unsigned long long)sync_ns / 1000, (unsigned long long)mig.rtt_ns / 1000,
			  (unsigned long long)bw / 1000000);
		round++;
		/* post-copy mode switches after the first full pass, whatever is left */
		if (mig.p.mode == MIG_MODE_POSTCOPY) {
			mig.postcopy = true;
			return 0;
		}
		/* 10% left for what cannot be measured before the pause: stopping the vCPUs,
		 * the destination applying the state and starting them */
		if (expected_ns <= mig.p.downtime_ms * 900000ull)
			return 0;
		if (mig.p.postcopy_after && round >= mig.p.postcopy_after) {
			mig.postcopy = true;
			return 0;
		}
		/* stalled: the remainder does not shrink round over round */
		stalled = round >= 2 && dirty * 100 >= prev_dirty * 95;
		prev_dirty = dirty;
		limit = (mig.p.max_rounds && round >= mig.p.max_rounds) ||
			round >= MIG_ROUNDS_LIMIT || (deadline && time_mono_ns() >= deadline);
		if ((limit || stalled) && mig_postcopy_allowed()) {
			log_info("migration: round %u did not converge: switching to post-copy", round);
			mig.postcopy = true;
			return 0;
		}
		if (limit) {
			if (mig.p.on_stall == MIG_STALL_CANCEL)
				return err_set(e, -ETIMEDOUT, "the migration did not converge within "
							      "its round or time limit (%llu MiB "
							      "still dirty)",
					       (unsigned long long)(dirty * GUEST_PAGE_SIZE / MiB));
			return 0;
		}
		if (!stalled)
			continue;
		stalls++;
		switch (mig.p.on_stall) {
		case MIG_STALL_CANCEL:
			return err_set(e, -ETIMEDOUT, "the guest dirties memory faster than it can be "
						      "sent (%llu pages/s dirtied, link %llu MB/s)",
				       (unsigned long long)mig.st.dirty_rate,
				       (unsigned long long)(bw / 1000000));
		case MIG_STALL_PAUSE:
		case MIG_STALL_POSTCOPY: /* handled above */
			return 0;
		case MIG_STALL_THROTTLE:
			if (mig.st.throttle_pct >= 99 && stalls > 3)
				return 0; /* throttled as far as it goes: finish with a longer pause */
			mig_throttle_step();
			break;
		}
	}
}

/* ---- post-copy, source side ---- */

/*
 * Tells the destination which pages are dirty here (every page of mig.dirty, also those
 * named before): those it must not take from round 0 and must fetch. Everything else it
 * already has, or is zero.
 */
static int mig_missing_send(struct errbuf *e)
{
	int ret = 0;

	for (uint64_t first = 0; first < mig.npages && ret == 0; first += MIG_MISSING_CHUNK) {
		uint64_t nbits = MIN(MIG_MISSING_CHUNK, mig.npages - first);
		bool any = false;
		struct mig_ctrl m = { .type = MIG_MSG_MISSING, .u64a = first, .u64b = nbits,
				      .bitmap = (const uint8_t *)&mig.dirty[first / 64] };

		for (uint64_t w = first / 64; w < (first + nbits + 63) / 64 && !any; w++)
			any = mig.dirty[w] != 0;
		if (any)
			ret = mig_ctrl_send(mig.w, &m, e);
	}
	return ret;
}

/* early MISSING passes, each with a PING: with the round's own PING, within what a
 * destination accepts per round (older ones of this protocol version too) */
#define MIG_PC_PREDROP_PASSES (MIG_PINGS_PER_ROUND_MAX - 1)
#define MIG_PC_PREDROP_ENOUGH 256 /* fewer new dirty pages than this: drop them in the pause */

/*
 * Before the post-copy pause, while the guest still runs here: names the pages dirty so
 * far, so the destination drops their stale copies now (one madvise range per run of
 * pages: ~3-7 us each here, 100 ms for the ~14,000 runs of a random 256 MiB working
 * set) rather than inside the downtime. The PONG comes once it has. Pages the guest
 * dirties meanwhile are named again by the next pass, and the final sync in the pause
 * names the rest; the destination drops only pages not named before. Every page named
 * stays in mig.dirty, so each is sent after the switch whichever pass named it.
 */
static int mig_postcopy_predrop(struct errbuf *e)
{
	uint64_t named = 0, now, ns;
	int ret;

	for (unsigned pass = 0; pass < MIG_PC_PREDROP_PASSES; pass++) {
		now = mig_dirty_count();
		if (now - named < MIG_PC_PREDROP_ENOUGH)
			break;
		ret = mig_missing_send(e);
		if (ret == 0)
			ret = state_writer_flush(mig.w, e);
		if (ret == 0)
			ret = mig_ping(&ns, e);
		if (ret == 0)
			ret = vm_dirty_sync(mig.vm, mig.dirty, mig.dirty_span, e);
		if (ret < 0)
			return err_prefix(e, ret, "naming dirty pages before the post-copy switch");
		log_debug("post-copy: named %llu dirty pages before the pause (%llu new), %llu us",
			  (unsigned long long)now, (unsigned long long)(now - named),
			  (unsigned long long)ns / 1000);
		named = now;
	}
	return 0;
}

#define MIG_PC_QUEUE 4096  /* requests waiting; more are dropped: the page follows anyway */
#define MIG_PC_BACKGROUND 64 /* pages per background batch: requests wait at most one */

static struct {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	uint64_t queue[MIG_PC_QUEUE]; /* flat page numbers */
	unsigned head, count;
	bool finished;          /* the destination sent COMPLETE */
	uint64_t pinged;        /* stream offset carried by the last PING sent */
	uint64_t acked;         /* the latest PONG's: the destination read this far */
	int err;                /* the return path failed */
	char msg[ERRBUF_LEN];
} pcs = { .lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER };

/* Reads the return path: page requests, then the destination's COMPLETE. */
static void *mig_pc_reader_main(void *arg)
{
	struct guest_mem *mem = vm_memory(mig.vm);
	struct state_record rec;
	struct mig_ctrl m;
	struct errbuf e;
	int ret;

	(void)arg;
	for (;;) {
		int64_t off;

		ret = state_reader_next(mig.r, &rec, &e);
		if (ret == 0)
			ret = mig_ctrl_decode(&rec, &m, &e);
		if (ret == 0 && (m.type == MIG_MSG_ERROR || m.type == MIG_MSG_ABORT))
			ret = err_set(&e, -EPROTO, "the destination failed: %s", m.reason);
		if (ret == 0 && m.type != MIG_MSG_REQUEST && m.type != MIG_MSG_COMPLETE &&
		    m.type != MIG_MSG_PONG)
			ret = err_set(&e, -EPROTO, "unexpected %s from the destination",
				      mig_msg_name(m.type));
		if (ret == 0 && m.type == MIG_MSG_PONG) {
			pthread_mutex_lock(&pcs.lock);
			if (m.u64a > pcs.pinged || m.u64a < pcs.acked)
				ret = err_set(&e, -EPROTO, "the destination's PONG answers no PING");
			else
				pcs.acked = m.u64a;
			pthread_cond_broadcast(&pcs.cond);
			pthread_mutex_unlock(&pcs.lock);
			if (ret == 0)
				continue;
		}
		if (ret < 0) {
			pthread_mutex_lock(&pcs.lock);
			pcs.err = ret;
			snprintf(pcs.msg, sizeof(pcs.msg), "%s", e.msg);
			pthread_cond_broadcast(&pcs.cond);
			pthread_mutex_unlock(&pcs.lock);
			return NULL;
		}
		if (m.type == MIG_MSG_COMPLETE) {
			pthread_mutex_lock(&mig.lock);
			mig.st.fault_latency_median_ns = m.u64a;
			mig.st.fault_latency_max_ns = m.u64b;
			pthread_mutex_unlock(&mig.lock);
			pthread_mutex_lock(&pcs.lock);
			pcs.finished = true;
			pthread_cond_broadcast(&pcs.cond);
			pthread_mutex_unlock(&pcs.lock);
			return NULL;
		}
		/* a request is only a hint: a bad one is counted and dropped, never served */
		off = m.u64a % GUEST_PAGE_SIZE ? -1 : guest_mem_offset(mem, m.u64a);
		pthread_mutex_lock(&mig.lock);
		if (off < 0)
			mig.st.requests_refused++;
		else
			mig.st.pages_requested++;
		pthread_mutex_unlock(&mig.lock);
		if (off < 0) {
			log_debug("migration: the destination asked for 0x%llx, not a page of guest "
				  "memory: ignored", (unsigned long long)m.u64a);
			continue;
		}
		pthread_mutex_lock(&pcs.lock);
		if (pcs.count < MIG_PC_QUEUE)
			pcs.queue[(pcs.head + pcs.count++) % MIG_PC_QUEUE] =
				(uint64_t)off / GUEST_PAGE_SIZE;
		pthread_cond_broadcast(&pcs.cond); /* a sender waiting on the window serves it */
		pthread_mutex_unlock(&pcs.lock);
	}
}

/* Writes the queued pages and flushes them, without the bandwidth cap's wait. */
static int mig_batch_send_now(struct mig_batch *b, struct errbuf *e)
{
	int ret = 0;

	if (b->n)
		ret = state_writer_pages(mig.w, b->pages, b->n, b->flags, e);
	b->n = 0;
	if (ret == 0)
		ret = state_writer_flush(mig.w, e);
	if (ret < 0)
		return ret;
	mig_batch_show(b);
	mig_bytes_update();
	return mig_check_cancel(e);
}

/* How long until --bandwidth allows more bytes (0 without a cap). */
static uint64_t mig_bandwidth_ahead_ns(void)
{
	uint64_t sent, due, now;

	if (!mig.p.bandwidth)
		return 0;
	sent = mig_wire_bytes() - mig.bw_start_bytes;
	due = (uint64_t)((double)sent * 1e9 / (double)mig.p.bandwidth);
	now = time_mono_ns() - mig.bw_start_ns;
	return due > now ? due - now : 0;
}

static void mig_pc_remaining_show(uint64_t left)
{
	pthread_mutex_lock(&mig.lock);
	mig.st.pages_remaining = left;
	mig.st.remaining_bytes = left * GUEST_PAGE_SIZE;
	pthread_mutex_unlock(&mig.lock);
}

/* Takes pg if it is still to send; the caller queues it. */
static bool mig_pc_take(uint64_t pg)
{
	if (pg >= mig.npages || !(mig.dirty[pg / 64] & (1ull << (pg % 64))))
		return false;
	mig.dirty[pg / 64] &= ~(1ull << (pg % 64));
	return true;
}

/* The next page still to send at or after *cursor, wrapping; false when none is left. */
static bool mig_pc_next(uint64_t *cursor)
{
	uint64_t words = (mig.npages + 63) / 64, w0 = (*cursor % mig.npages) / 64;

	for (uint64_t i = 0; i <= words; i++) {
		uint64_t w = (w0 + i) % words, bits = mig.dirty[w];

		if (i == 0)
			bits &= ~0ull << (*cursor % 64);
		if (bits) {
			*cursor = w * 64 + (uint64_t)__builtin_ctzll(bits);
			return true;
		}
	}
	return false;
}

/*
 * The background may go on when the destination has acknowledged all but MIG_PC_WINDOW of
 * the stream; else waits (pcs.lock held) for a PONG, a request or a failure. 0: go on (or
 * serve requests first), -ETIMEDOUT: nothing acknowledged within the handover timeout.
 */
static int mig_pc_window_wait(uint64_t written, struct errbuf *e)
{
	struct timespec ts;

	if (written - pcs.acked <= MIG_PC_WINDOW || pcs.count || pcs.err || pcs.finished)
		return 0;
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += MIG_HANDOVER_TIMEOUT_MS / 1000;
	while (written - pcs.acked > MIG_PC_WINDOW && !pcs.count && !pcs.err && !pcs.finished)
		if (pthread_cond_timedwait(&pcs.cond, &pcs.lock, &ts) == ETIMEDOUT)
			return err_set(e, -ETIMEDOUT, "the destination acknowledged no post-copy page "
					  "for %d ms", MIG_HANDOVER_TIMEOUT_MS);
	return 0;
}

/*
 * Sends the queued pages at once, followed by a PING once MIG_PC_PING_EVERY bytes went since
 * the last: its PONG opens the window (requested pages count too, so it always reopens).
 */
static int mig_pc_send(struct mig_batch *b, struct errbuf *e)
{
	struct mig_ctrl m = { .type = MIG_MSG_PING };
	uint64_t written;
	int ret = 0;

	if (b->n)
		ret = state_writer_pages(mig.w, b->pages, b->n, b->flags, e);
	b->n = 0;
	written = state_writer_bytes(mig.w);
	pthread_mutex_lock(&pcs.lock);
	if (ret == 0 && written - pcs.pinged >= MIG_PC_PING_EVERY) {
		pcs.pinged = written;
		m.u64a = written;
	}
	pthread_mutex_unlock(&pcs.lock);
	if (ret == 0 && m.u64a)
		ret = mig_ctrl_send(mig.w, &m, e);
	return ret < 0 ? ret : mig_batch_send_now(b, e);
}

/*
 * After STARTED: the guest runs on the destination. Requested pages go first, between
 * small background batches that continue just after the last request (a guest touching
 * one page soon touches its neighbours) and stay within MIG_PC_WINDOW of what the
 * destination acknowledged; then COMPLETE, and the destination's COMPLETE.
 */
static int mig_postcopy_run(struct mig_batch *b, struct errbuf *e)
{
	struct timeval none = { 0 };
	uint64_t left = mig_dirty_count(), cursor = 0;
	struct mig_ctrl m = { .type = MIG_MSG_COMPLETE };
	pthread_t reader;
	struct timespec ts;
	int ret;

	pthread_mutex_lock(&pcs.lock);
	pcs.head = pcs.count = 0;
	pcs.finished = false;
	pcs.err = 0;
	/* a new stream (the first, or a resume's): the destination read all of it so far */
	pcs.pinged = pcs.acked = state_writer_bytes(mig.w);
	pthread_mutex_unlock(&pcs.lock);
	mig_state_set(MIG_STATE_ACTIVE); /* the guest runs there; its memory is still moving */
	/* the return path may be quiet for long: a dead link shows on the sending side */
	if (setsockopt(mig.fd, SOL_SOCKET, SO_RCVTIMEO, &none, sizeof(none)) < 0)
		return err_set(e, -errno, "post-copy: clearing the receive timeout: %s",
			       strerror(errno));
	ret = pthread_create(&reader, NULL, mig_pc_reader_main, NULL);
	if (ret)
		return err_set(e, -ret, "post-copy: start the request reader: %s", strerror(ret));
	memset(b, 0, sizeof(*b));
	b->flags = STATE_PAGES_STABLE;
	while (left && ret == 0) {
		uint64_t req[64], ahead;
		unsigned nreq = 0;
		bool window_full;

		pthread_mutex_lock(&pcs.lock);
		ret = mig_pc_window_wait(state_writer_bytes(mig.w), e);
		while (pcs.count && nreq < 64) {
			req[nreq++] = pcs.queue[pcs.head];
			pcs.head = (pcs.head + 1) % MIG_PC_QUEUE;
			pcs.count--;
		}
		if (ret == 0 && pcs.err < 0)
			ret = err_set(e, pcs.err, "%s", pcs.msg);
		window_full = state_writer_bytes(mig.w) - pcs.acked > MIG_PC_WINDOW;
		pthread_mutex_unlock(&pcs.lock);
		for (unsigned i = 0; i < nreq && ret == 0; i++) {
			if (!mig_pc_take(req[i]))
				continue; /* sent already: it is on its way */
			left--;
			cursor = req[i] + 1;
			ret = mig_page_queue(b, req[i], true, e);
		}
		/* requested pages leave at once; the background waits for the cap, in short
		 * sleeps so that a request never waits long behind it */
		if (ret == 0 && nreq) {
			ret = mig_pc_send(b, e);
			mig_pc_remaining_show(left);
		}
		if (window_full)
			continue; /* requests only, until the destination catches up */
		ahead = mig_bandwidth_ahead_ns();
		if (ret == 0 && ahead) {
			usleep((useconds_t)(MIN(ahead, 1000000ull) / 1000));
			continue;
		}
		for (unsigned i = 0; i < MIG_PC_BACKGROUND && left && ret == 0; i++) {
			if (!mig_pc_next(&cursor))
				break;
			mig_pc_take(cursor);
			left--;
			ret = mig_page_queue(b, cursor, true, e);
		}
		if (ret == 0)
			ret = mig_pc_send(b, e);
		mig_pc_remaining_show(left);
	}
	mig_pc_remaining_show(left);
	if (ret == 0) {
		m.u64a = mig.st.pages_normal;
		ret = mig_ctrl_send(mig.w, &m, e);
	}
	if (ret == 0)
		ret = state_writer_flush(mig.w, e);
	if (ret == 0) {
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_sec += MIG_HANDOVER_TIMEOUT_MS / 1000;
		pthread_mutex_lock(&pcs.lock);
		while (!pcs.finished && !pcs.err && ret == 0)
			if (pthread_cond_timedwait(&pcs.cond, &pcs.lock, &ts) == ETIMEDOUT)
				ret = err_set(e, -ETIMEDOUT, "no COMPLETE from the destination");
		if (ret == 0 && pcs.err)
			ret = err_set(e, pcs.err, "%s", pcs.msg);
		pthread_mutex_unlock(&pcs.lock);
	}
	/* unblocks the reader if it still waits */
	pthread_mutex_lock(&mig.lock);
	if (mig.fd >= 0)
		shutdown(mig.fd, SHUT_RDWR);
	pthread_mutex_unlock(&mig.lock);
	pthread_join(reader, NULL);
	if (ret < 0)
		return err_prefix(e, ret, "post-copy broke off with %llu pages still here (the "
					  "destination runs the guest; this side keeps all its memory "
					  "but not its latest vCPU state and will not run it)",
				  (unsigned long long)left);
	return 0;
}

static int mig_complete(struct mig_batch *b, struct errbuf *e)
{
	struct mig_ctrl m = { .type = MIG_MSG_DONE };
	uint64_t t0 = time_mono_ns(), bytes0;
	int ret;

	if (mig.tracking && mig.postcopy && !mig.guest_paused) {
		ret = mig_postcopy_predrop(e);
		if (ret < 0)
			return ret;
	}
	mig_state_set(MIG_STATE_COMPLETING);
	/* post-copy installs whole pages (UFFDIO_COPY): never a delta from here on */
	if (mig.postcopy)
		mig_delta_stop();
	if (!mig.guest_paused) {
		ret = mig_pause_guest(e);
		if (ret < 0)
			return ret;
	}
	mig_throttle_stop();
	bytes0 = mig_wire_bytes();
	memset(b, 0, sizeof(*b));
	b->flags = STATE_PAGES_STABLE; /* paused: straight from guest memory */
	if (mig.tracking && mig.postcopy) {
		/* the last sync: what it finds stays here until asked for or sent behind */
		ret = vm_dirty_sync(mig.vm, mig.dirty, NULL, e);
		if (ret == 0 && !mig_dirty_count())
			mig.postcopy = false; /* nothing to fetch: an ordinary handover */
		if (ret == 0 && mig.postcopy) {
			uint64_t n = mig_dirty_count();

			ret = mig_missing_send(e);
			pthread_mutex_lock(&mig.lock);
			mig.st.pages_remaining = n;
			mig.st.remaining_bytes = n * GUEST_PAGE_SIZE;
			pthread_mutex_unlock(&mig.lock);
			log_info("migration: post-copy switch with %llu pages still to send",
				 (unsigned long long)n);
		}
	} else if (mig.tracking) {
		/* the last sync, with every vCPU out of KVM_RUN */
		ret = vm_dirty_sync(mig.vm, mig.dirty, mig.dirty_span, e);
		if (ret == 0)
			ret = mig_round_marker(mig.st.round + 1, e);
		if (ret == 0)
			ret = mig_round_dirty(b, e);
	} else {
		ret = mig_round_marker(0, e);
		if (ret == 0)
			ret = mig_round0(b, e);
	}
	/* every page of the stop-and-copy before any state, on every connection */
	if (ret == 0 && !mig.postcopy)
		ret = mig_streams_fence(e);
	if (ret < 0)
		return ret;
	if (!mig.postcopy) /* post-copy's remainder is not a round: it follows the switch */
		mig_round_record(mig.tracking ? mig.st.round + 1 : 0, b,
				 mig_wire_bytes() - bytes0, time_mono_ns() - t0, 0, 0);
	bytes0 = state_writer_bytes(mig.w);
	ret = vm_sections_save(mig.vm, false, mig_section_send, NULL, e);
	if (ret < 0)
		return ret;
	/* measured for the next estimate of this process (a retry, the next move) */
	mig.state_bytes_last = state_writer_bytes(mig.w) - bytes0;
	pthread_mutex_lock(&mig.lock);
	mig.st.state_bytes = mig.state_bytes_last;
	pthread_mutex_unlock(&mig.lock);
	m.u64a = mig.st.pages_normal;
	m.u64b = mig_wire_bytes();
	ret = mig_ctrl_send(mig.w, &m, e);
	if (ret == 0)
		ret = state_writer_flush(mig.w, e);
	if (ret < 0)
		return ret;
	mig_bytes_update();
	/* the destination now loads and validates everything */
	ret = mig_socket_timeouts(mig.fd, MIG_HANDOVER_TIMEOUT_MS, e);
	if (ret < 0)
		return ret;
	ret = mig_expect(MIG_MSG_READY, &m, e);
	if (ret < 0)
		return ret;
	mig_time_mark(&mig.st.times.ready);
	ret = mig_check_cancel(e);
	if (ret < 0)
		return ret;
	if (mig.p.digest) {
		char dm[17], ds[17];

		ret = vm_digest(mig.vm, dm, ds, e);
		if (ret < 0)
			return ret;
		pthread_mutex_lock(&mig.lock);
		memcpy(mig.st.digest_memory, dm, sizeof(dm));
		memcpy(mig.st.digest_state, ds, sizeof(ds));
		pthread_mutex_unlock(&mig.lock);
	}

	/* what the guest wrote must be on the disks before the destination may read them */
	ret = vm_devices_flush(mig.vm, e);
	if (ret < 0)
		return err_prefix(e, ret, "before the handover");
	/*
	 * The point of no return: once COMMIT may have left, the destination may run the
	 * guest, so this copy is handed-over for good (only stop), whatever happens next.
	 */
	ret = vm_handover(mig.vm, e);
	if (ret < 0)
		return ret;
	pthread_mutex_lock(&mig.lock);
	atomic_store(&mig.committed, true);
	mig.st.postcopy = mig.postcopy;
	pthread_mutex_unlock(&mig.lock);
	/* the disks are flushed and unlocked before the destination may take them */
	vm_devices_release(mig.vm);
	m = (struct mig_ctrl){ .type = MIG_MSG_COMMIT, .u64a = time_mono_ns() - mig.t_pause };
	/* stamped with the source's share of the downtime it carries, before it can arrive */
	mig_time_mark(&mig.st.times.commit);
	ret = mig_ctrl_send(mig.w, &m, e);
	if (ret == 0)
		ret = state_writer_flush(mig.w, e);
	if (ret < 0)
		return err_prefix(e, ret, "sending COMMIT (the guest stays paused here; it may be "
					  "running on the destination)");
	ret = mig_expect(MIG_MSG_STARTED, &m, e);
	if (ret < 0)
		return err_prefix(e, ret, "COMMIT was sent but not acknowledged (the guest stays "
					  "paused here; it may be running on the destination)");
	pthread_mutex_lock(&mig.lock);
	mig.st.times.started = time_real_ns();
	mig.st.downtime_ns = time_mono_ns() - mig.t_pause;
	if (!mig.postcopy)
		mig.st.remaining_bytes = 0;
	pthread_mutex_unlock(&mig.lock);
	if (mig.postcopy)
		return mig_postcopy_run(b, e);
	/* the destination closes after STARTED: the stream ends with COMMIT, without END */
	return 0;
}

/*
 * Tells the destination which 2 MiB ranges round 0 will send, so it can fault them in
 * on another thread while the data is still on the wire (populating fresh memory costs
 * about as much as receiving it).
 */
static int mig_ranges_send(struct errbuf *e)
{
	struct guest_mem *mem = vm_memory(mig.vm);
	uint64_t nranges = (mig.npages + MIG_RANGE_PAGES - 1) / MIG_RANGE_PAGES, gpa;
	struct mig_ctrl m = { .type = MIG_MSG_RANGES, .u64a = nranges };
	uint8_t *bm = calloc((nranges + 7) / 8 + 1, 1);
	bool *touched = calloc(nranges, sizeof(*touched));
	int ret;

	if (!bm || !touched) {
		free(bm);
		free(touched);
		return err_set(e, -ENOMEM, "out of memory");
	}
	guest_mem_touched_map(mem, vm_page_host(mig.vm, 0, &gpa), mig.npages, MIG_RANGE_PAGES,
			      touched);
	for (uint64_t r = 0; r < nranges; r++)
		if (touched[r])
			bm[r / 8] |= (uint8_t)(1u << (r % 8));
	free(touched);
	m.bitmap = bm;
	ret = mig_ctrl_send(mig.w, &m, e);
	if (ret == 0)
		ret = state_writer_flush(mig.w, e);
	free(bm);
	return ret;
}

static int mig_send_run(struct errbuf *e)
{
	struct mig_batch *b = calloc(1, sizeof(*b));
	int ret;

	if (!b)
		return err_set(e, -ENOMEM, "out of memory");
	mig.npages = vm_pages(mig.vm);
	mig.dirty = calloc((mig.npages + 63) / 64, sizeof(uint64_t));
	if (!mig.dirty) {
		free(b);
		return err_set(e, -ENOMEM, "out of memory for the dirty bitmap");
	}
	mig.dirty_span[0] = mig.dirty_span[1] = 0;
	ret = mig_handshake(mig.p.mode, e);
	if (ret < 0)
		goto out;
	mig_state_set(MIG_STATE_ACTIVE);
	ret = mig_ranges_send(e);
	if (ret == 0) /* a fresh cache: the destination starts from nothing too */
		ret = mig_delta_start(e);
	if (ret < 0)
		goto out;
	mig.bw_start_ns = time_mono_ns();
	mig.bw_start_bytes = mig_wire_bytes();
	if (mig.p.mode == MIG_MODE_WARM) {
		ret = mig_pause_guest(e);
	} else {
		ret = mig_iterate(b, e);
	}
	if (ret < 0)
		goto out;
	ret = mig_complete(b, e);
out:
	mig_delta_stop();
	free(b);
	return ret;
}

int mig_channel_open(const char *host, uint64_t deadline_ns, struct errbuf *e)
{
	struct mig_tls_info info;
	struct channel *ch;
	int ret;

	if (!mig.tls) {
		channel_fd_init(&mig.plain_ch, mig.fd);
		mig.ch = &mig.plain_ch;
		return 0;
	}
	ret = mig_tls_handshake(mig.tls, mig.fd, host, deadline_ns, &ch, &info, e);
	if (ret < 0)
		return ret;
	pthread_mutex_lock(&mig.lock);
	mig.ch = ch;
	mig.st.tls = info;
	pthread_mutex_unlock(&mig.lock);
	log_info("migration: TLS with %s (%s, %s, %s)", info.peer, info.version, info.cipher,
		 info.offload);
	return 0;
}

int mig_channel_error(struct errbuf *e, int ret)
{
	const char *why = mig_tls_channel_error(mig.ch);

	return why ? mig_err_append(e, ret, "TLS: %s", why) : ret;
}

void mig_stream_close(void)
{
	mig_streams_close();
	if (mig.w)
		state_writer_free(mig.w);
	if (mig.r)
		state_reader_free(mig.r);
	mig.w = NULL;
	mig.r = NULL;
	channel_free(mig.ch);
	mig.ch = NULL;
	pthread_mutex_lock(&mig.lock);
	if (mig.fd >= 0)
		close(mig.fd);
	mig.fd = -1;
	pthread_mutex_unlock(&mig.lock);
}

void mig_done_cb(void *opaque)
{
	(void)opaque;
	if (mig.done)
		mig.done(mig.done_opaque);
}

static void mig_send_finish(int ret, bool resumable, struct errbuf *ep);
static bool mig_postcopy_resumable(int ret);

static void *mig_send_thread(void *arg)
{
	struct errbuf e = { { 0 } };
	struct errbuf e2;
	int ret;

	(void)arg;
	ret = mig_send_run(&e);
	if (ret < 0 && mig_streams_error(&e, ret) == ret)
		mig_channel_error(&e, ret);
	mig_throttle_stop();
	if (mig.tracking) {
		vm_dirty_stop(mig.vm);
		mig.tracking = false;
	}
	if (ret < 0 && !atomic_load(&mig.committed)) {
		/* before COMMIT: the guest is ours, keep it running here */
		if (mig.w)
			state_writer_free(mig.w), mig.w = NULL;
		if (mig.paused_by_us && vm_owner_resume(mig.vm, &e2) < 0)
			log_err("migration: resuming the guest after failure: %s", e2.msg);
	}
	mig_send_finish(ret, ret < 0 && mig_postcopy_resumable(ret), &e);
	return NULL;
}

/*
 * A post-copy failure that a new connection can mend: the link, not the peer's word.
 * The destination's ERROR or a malformed message ends it for good.
 */
static bool mig_postcopy_resumable(int ret)
{
	return mig.postcopy && atomic_load(&mig.committed) && !atomic_load(&mig.cancel) &&
	       ret != -EPROTO && ret != -EBADMSG && ret != -ECANCELED;
}

/*
 * The end of a source thread: status, stream, and the main loop told. resumable: a failed
 * post-copy stays postcopy-paused, keeping its pages for `migrate --resume`.
 */
static void mig_send_finish(int ret, bool resumable, struct errbuf *ep)
{
	struct errbuf e = *ep;
	bool paused = ret < 0 && resumable;

	pthread_mutex_lock(&mig.lock);
	if (ret == 0) {
		mig.st.state = MIG_STATE_COMPLETED;
	} else if (paused) {
		mig.st.state = MIG_STATE_POSTCOPY_PAUSED;
		snprintf(mig.st.error, sizeof(mig.st.error), "%s; continue with `godwit migrate "
			 "--resume URI` once the destination can be reached", e.msg);
	} else if (ret == -ECANCELED || (atomic_load(&mig.cancel) && !atomic_load(&mig.committed))) {
		mig.st.state = MIG_STATE_CANCELLED;
		snprintf(mig.st.error, sizeof(mig.st.error), "cancelled; the guest keeps running here");
	} else {
		mig.st.state = MIG_STATE_FAILED;
		snprintf(mig.st.error, sizeof(mig.st.error), "%s%s", e.msg,
			 atomic_load(&mig.committed) ? "" : "; the guest keeps running here");
	}
	mig.st.elapsed_ns = time_mono_ns() - mig.t_start;
	pthread_mutex_unlock(&mig.lock);
	mig_stream_close();
	mig_tls_free(mig.tls);
	mig.tls = NULL;
	if (!paused) { /* a paused post-copy keeps its list of pages still to send */
		free(mig.dirty);
		mig.dirty = NULL;
	}
	if (ret < 0)
		log_warn("migration %s: %s", mig_state_name(mig.st.state), mig.st.error);
	else
		log_info("migration completed: %llu pages, downtime %.1f ms",
			 (unsigned long long)mig.st.pages_normal, (double)mig.st.downtime_ns / 1e6);
	/* after COMMIT the VM is handed-over: that state, not busy, keeps it from running */
	vm_busy_clear(mig.vm);
	if (evloop_call(mig.loop, mig_done_cb, NULL) < 0)
		log_err("migration: cannot notify the main loop");
}

/*
 * migrate --resume: a new connection to the destination, which lists the pages it still
 * lacks (MISSING... DONE); they become the pages to send, and post-copy goes on.
 */
static int mig_resume_run(struct mig_batch *b, bool *accepted, struct errbuf *e)
{
	struct state_record rec;
	struct mig_ctrl m;
	uint64_t lacking = 0;
	int ret;

	ret = mig_handshake(MIG_HELLO_RESUME, e);
	if (ret < 0)
		return ret;
	*accepted = true;
	/* a new stream: the bandwidth cap counts from here */
	mig.bw_start_ns = time_mono_ns();
	mig.bw_start_bytes = mig_wire_bytes();
	memset(mig.dirty, 0, (mig.npages + 63) / 64 * sizeof(uint64_t));
	for (;;) {
		ret = state_reader_next(mig.r, &rec, e);
		if (ret == 0)
			ret = mig_ctrl_decode(&rec, &m, e);
		if (ret < 0)
			return err_prefix(e, ret, "the destination's list of missing pages");
		if (m.type == MIG_MSG_DONE)
			break;
		if (m.type != MIG_MSG_MISSING)
			return err_set(e, -EPROTO, "expected MISSING or DONE from the destination, "
						   "got %s", mig_msg_name(m.type));
		if (m.u64a >= mig.npages || m.u64b > mig.npages - m.u64a)
			return err_set(e, -EPROTO, "the destination lists pages %llu..%llu missing; "
						   "guest memory has %llu",
				       (unsigned long long)m.u64a,
				       (unsigned long long)(m.u64a + m.u64b - 1),
				       (unsigned long long)mig.npages);
		for (uint64_t i = 0; i < m.u64b; i++)
			if (m.bitmap[i / 8] & (1u << (i % 8)))
				mig.dirty[(m.u64a + i) / 64] |= 1ull << ((m.u64a + i) % 64);
	}
	lacking = mig_dirty_count();
	log_info("migration: resumed; the destination still lacks %llu pages",
		 (unsigned long long)lacking);
	pthread_mutex_lock(&mig.lock);
	mig.st.state = MIG_STATE_ACTIVE;
	pthread_mutex_unlock(&mig.lock);
	return mig_postcopy_run(b, e);
}

static void *mig_resume_thread(void *arg)
{
	struct errbuf e = { { 0 } };
	struct mig_batch *b = calloc(1, sizeof(*b));
	bool accepted = false;
	int ret;

	(void)arg;
	ret = b ? mig_resume_run(b, &accepted, &e) : err_set(&e, -ENOMEM, "out of memory");
	free(b);
	if (ret < 0)
		mig_channel_error(&e, ret);
	/* refused before ACCEPT (credentials, a wrong guest): the destination still waits */
	mig_send_finish(ret, ret < 0 && (!accepted || mig_postcopy_resumable(ret)), &e);
	return NULL;
}

/* the TLS options a migration started with: a resume without any uses them */
static struct mig_tls_opts mig_tls_first;

/*
 * The source's credentials for uri (none without a TLS option), loaded and checked now so
 * that mistakes are refused synchronously, before anything starts.
 */
static int mig_tls_setup(const struct mig_tls_opts *o, const struct mig_uri *uri,
			 const char *uristr, struct mig_tls **tls, struct errbuf *e)
{
	*tls = NULL;
	if (o->hostname[0] && !mig_tls_wanted(o))
		return err_set(e, -EINVAL, "tls_hostname (--tls-hostname) needs tls_dir (--tls-dir)");
	if (uri->kind == MIG_URI_UNIX && o->dir[0] && !o->hostname[0])
		return err_set(e, -EINVAL, "%s: a unix socket has no host name to check the "
					   "destination's certificate against: give tls_hostname "
					   "(--tls-hostname)",
			       uristr);
	return mig_tls_wanted(o) ? mig_tls_create(tls, o, false, e) : 0;
}

/*
 * Called with mig.lock held; the previous thread has ended in postcopy-paused. The resume
 * runs over TLS with the credentials given now or else those the migration started with
 * (a later attempt without any goes back to those): a post-copy that began over TLS never
 * goes on in plaintext.
 */
static int mig_resume_start(const struct mig_params *p, const struct mig_uri *uri,
			    void (*done)(void *opaque), void *opaque, struct errbuf *e)
{
	const struct mig_tls_opts *tls_opts;
	struct mig_tls *tls;
	int ret;

	if (mig.st.incoming || mig.st.state != MIG_STATE_POSTCOPY_PAUSED || !mig.dirty)
		return err_set(e, -EINVAL, "nothing to resume: --resume continues a post-copy "
					   "migration whose link broke (migrate-status state "
					   "postcopy-paused)");
	tls_opts = mig_tls_wanted(&p->tls) || p->tls.hostname[0] ? &p->tls : &mig_tls_first;
	ret = mig_tls_setup(tls_opts, uri, p->uri, &tls, e);
	if (ret < 0)
		return ret;
	if (mig.running) {
		pthread_mutex_unlock(&mig.lock);
		pthread_join(mig.thread, NULL);
		pthread_mutex_lock(&mig.lock);
		mig.running = false;
	}
	mig.p.tls = *tls_opts; /* this attempt's, for the handshake's host name */
	mig.tls = tls;
	memset(&mig.st.tls, 0, sizeof(mig.st.tls));
	snprintf(mig.p.uri, sizeof(mig.p.uri), "%s", p->uri);
	snprintf(mig.st.uri, sizeof(mig.st.uri), "%s", p->uri);
	mig.uri = *uri;
	mig.done = done;
	mig.done_opaque = opaque;
	mig.st.state = MIG_STATE_SETUP;
	mig.st.error[0] = '\0';
	ret = pthread_create(&mig.thread, NULL, mig_resume_thread, NULL);
	if (ret) {
		mig.st.state = MIG_STATE_POSTCOPY_PAUSED;
		mig.tls = NULL;
		mig_tls_free(tls);
		return err_set(e, -ret, "start the migration thread: %s", strerror(ret));
	}
	mig.running = true;
	return 0;
}

int migration_start(struct vm *vm, struct evloop *loop, const struct mig_params *p,
		    void (*done)(void *opaque), void *opaque, struct errbuf *e)
{
	struct mig_tls *tls = NULL;
	struct mig_uri uri;
	bool was_paused = false;
	int ret;

	/* bad parameters are refused here, synchronously, before anything starts */
	ret = mig_params_validate(p, e);
	if (ret < 0)
		return ret;
	ret = mig_uri_parse(p->uri, &uri, e);
	if (ret < 0)
		return ret;
	pthread_mutex_lock(&mig.lock);
	if (p->resume) {
		ret = mig_resume_start(p, &uri, done, opaque, e);
		pthread_mutex_unlock(&mig.lock);
		return ret;
	}
	/* never join a destination's thread that still waits: the main loop would freeze */
	if (mig.running && mig.st.incoming && mig.st.state != MIG_STATE_COMPLETED &&
	    mig.st.state != MIG_STATE_FAILED) {
		pthread_mutex_unlock(&mig.lock);
		return err_set(e, -EBUSY, "this VM is still waiting for its incoming migration "
					  "(state incoming): it can move on once it runs here");
	}
	if (mig.running && (mig.st.state == MIG_STATE_SETUP || mig.st.state == MIG_STATE_ACTIVE ||
			    mig.st.state == MIG_STATE_COMPLETING)) {
		pthread_mutex_unlock(&mig.lock);
		return err_set(e, -EBUSY, "a migration is already in progress");
	}
	/* a VM migrated away is handed-over: vm_busy_set() refuses it, naming why */
	if (mig.running) {
		pthread_mutex_unlock(&mig.lock);
		pthread_join(mig.thread, NULL);
		pthread_mutex_lock(&mig.lock);
		mig.running = false;
	}
	pthread_mutex_unlock(&mig.lock);
	if (p->dirty_tracking >= 0 && (enum vm_dirty_mode)p->dirty_tracking != vm_dirty_mode_get(vm))
		return err_set(e, -EINVAL, "--dirty-tracking %s: this VM was started with %s "
					   "tracking (start it with --dirty-tracking %s)",
			       vm_dirty_mode_name(p->dirty_tracking),
			       vm_dirty_mode_name(vm_dirty_mode_get(vm)),
			       vm_dirty_mode_name(p->dirty_tracking));
	ret = mig_tls_setup(&p->tls, &uri, p->uri, &tls, e);
	if (ret < 0)
		return ret;
	ret = vm_busy_set(vm, "a migration", &was_paused, e);
	if (ret < 0) {
		mig_tls_free(tls);
		return ret;
	}

	pthread_mutex_lock(&mig.lock);
	memset(&mig.st, 0, sizeof(mig.st));
	mig.st.state = MIG_STATE_SETUP;
	mig.st.mode = p->mode;
	snprintf(mig.st.uri, sizeof(mig.st.uri), "%s", p->uri);
	snprintf(mig.st.dirty_tracking, sizeof(mig.st.dirty_tracking), "%s",
		 vm_dirty_mode_name(vm_dirty_mode_get(vm)));
	if (p->compress == MIG_COMPRESS_NONE)
		snprintf(mig.st.compress, sizeof(mig.st.compress), "none");
	else
		snprintf(mig.st.compress, sizeof(mig.st.compress), "%s:%d",
			 p->compress == MIG_COMPRESS_ZSTD ? "zstd" : "auto", p->compress_level);
	/* auto starts plain: on a fast link every compressed byte is a loss */
	mig.st.compressing = p->compress == MIG_COMPRESS_ZSTD;
	if (p->delta_cache)
		snprintf(mig.st.delta, sizeof(mig.st.delta), "xbzrle:%llu",
			 (unsigned long long)p->delta_cache);
	else
		snprintf(mig.st.delta, sizeof(mig.st.delta), "none");
	mig.st.connections = (uint32_t)p->connections;
	mig_autoc_init(&mig_auto);
	mig.vm = vm;
	mig.loop = loop;
	mig.p = *p;
	mig_tls_first = p->tls;
	mig.uri = uri;
	mig.tls = tls;
	mig.done = done;
	mig.done_opaque = opaque;
	atomic_store(&mig.cancel, false);
	atomic_store(&mig.committed, false);
	mig.guest_paused = false;
	mig.paused_by_us = false;
	mig.operator_paused = was_paused;
	mig.tracking = false;
	mig.rtt_ns = 0;
	mig.postcopy = false;
	mig.t_start = time_mono_ns();
	mig.st.times.start = time_real_ns();
	mig.running = true;
	ret = pthread_create(&mig.thread, NULL, mig_send_thread, NULL);
	if (ret) {
		mig.running = false;
		mig.st.state = MIG_STATE_FAILED;
		mig.tls = NULL;
		pthread_mutex_unlock(&mig.lock);
		mig_tls_free(tls);
		vm_busy_clear(vm);
		return err_set(e, -ret, "start the migration thread: %s", strerror(ret));
	}
	pthread_mutex_unlock(&mig.lock);
	return 0;
}

int migration_cancel(struct errbuf *e)
{
	int ret = 0;

	pthread_mutex_lock(&mig.lock);
	if (mig.st.incoming)
		ret = err_set(e, -EINVAL, "this is the destination: cancel on the source");
	else if (mig.st.state != MIG_STATE_SETUP && mig.st.state != MIG_STATE_ACTIVE &&
		 mig.st.state != MIG_STATE_COMPLETING)
		ret = err_set(e, -EINVAL, "no migration in progress");
	else if (atomic_load(&mig.committed))
		ret = err_set(e, -EINVAL, "too late to cancel: COMMIT was sent");
	else {
		atomic_store(&mig.cancel, true);
		/* unblock any send or receive; the engine then resumes the guest */
		if (mig.fd >= 0)
			shutdown(mig.fd, SHUT_RDWR);
		mig_streams_shutdown();
	}
	pthread_mutex_unlock(&mig.lock);
	return ret;
}

void migration_shutdown(void)
{
	pthread_mutex_lock(&mig.lock);
	if (!mig.running) {
		pthread_mutex_unlock(&mig.lock);
		inc_postcopy_release();
		return;
	}
	if (!atomic_load(&mig.committed))
		atomic_store(&mig.cancel, true);
	if (mig.fd >= 0)
		shutdown(mig.fd, SHUT_RDWR);
	mig_streams_shutdown();
	pthread_mutex_unlock(&mig.lock);
	mig_incoming_unblock();
	pthread_join(mig.thread, NULL);
	pthread_mutex_lock(&mig.lock);
	mig.running = false;
	pthread_mutex_unlock(&mig.lock);
	/* a post-copy source that was never resumed: its guest goes with the process */
	free(mig.dirty);
	mig.dirty = NULL;
	inc_postcopy_release();
}
