/* SPDX-License-Identifier: MIT */
/*
 * Post-copy on the destination: the guest runs here before all of its memory has
 * arrived. The source's MISSING list names the pages written since round 0 sent them;
 * their stale copies are dropped and guest RAM is registered with userfaultfd (missing
 * mode), so a vCPU (or the VMM) touching one of them blocks until it is installed. A fault
 * thread asks the source for the page (REQUEST); the receiving thread installs every page
 * that arrives with UFFDIO_COPY or UFFDIO_ZEROPAGE, which map it atomically and wake any
 * waiter. A fault on a page that is not missing (never touched on the source, or zero
 * there) is answered here with a zero page, without asking.
 *
 * Nothing here reads or writes a missing page directly: the receiving thread is the one
 * that would have to resolve the fault, so it only ever installs through the ioctls.
 */
#include "base/log.h"
#include "migration/mig_internal.h"
#include "migration/postcopy.h"
#include "vmm/memory.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#define PC_LAT_SAMPLES 4096 /* the latest fault latencies, for the median */

static struct {
	struct guest_mem *mem;
	uint64_t npages;
	uint64_t *missing;            /* pages to fetch from the source (dropped here) */
	uint64_t *fresh;              /* scratch: the pages one MISSING adds */
	_Atomic uint64_t *received;   /* missing pages installed */
	_Atomic uint64_t *req_ns;     /* when a page was requested (0: not yet) */
	uint64_t nmissing, nreceived, duplicates;
	int uffd;
	bool registered;
	pthread_t fault_thread;
	bool fault_started;
	_Atomic bool stop;
	_Atomic bool stop_wait;       /* the process is stopping: no more waiting for a resume */
	_Atomic int listen_fd;        /* while waiting for the source to reconnect */
	pthread_mutex_t wlock;        /* the fault thread and the receiver both write */
	uint64_t lat[PC_LAT_SAMPLES]; /* under mig.lock */
	unsigned nlat;
	uint64_t lat_count;
} pc = { .uffd = -1, .listen_fd = -1, .wlock = PTHREAD_MUTEX_INITIALIZER };

static bool pc_bit(const uint64_t *bm, uint64_t pg)
{
	return bm[pg / 64] & (1ull << (pg % 64));
}

bool inc_postcopy_active(void)
{
	return pc.missing != NULL;
}

/*
 * Records the pages a MISSING message names and drops the stale copies of those not named
 * before, at once. Why dropping here is safe, and why every page the guest touches after
 * the switch is then either the latest copy or faults to the source:
 * - The source sends MISSING only after the last round's pages have all arrived here (its
 *   round ends with FENCE on every connection and a PING answered after them), and sends
 *   no page of a pre-copy round after it: from now on a missing page is written only by
 *   UFFDIO_COPY/ZEROPAGE after the switch, which never overwrite a present page. So a
 *   dropped page stays absent until post-copy installs the source's copy.
 * - The populate thread (which faults in round 0's ranges ahead of the data) is stopped
 *   first by the caller: it would map a fresh zero page over a dropped one.
 * - The source may name pages early, while the guest still runs there (to move this cost
 *   out of its pause), then again at the pause: the sets only grow, and the source sends
 *   every page it ever named after the switch (its dirty bitmap only gains bits). A page
 *   the guest writes after the early MISSING is in the final one, since the source's
 *   final sync runs with every vCPU stopped.
 * - A page never named holds the last copy the source sent, which it did not write again
 *   before its final sync: the latest copy.
 */
int inc_postcopy_missing(struct guest_mem *mem, const struct mig_ctrl *m, struct errbuf *e)
{
	uint64_t npages = guest_mem_pages(mem), lo = UINT64_MAX, hi = 0, nnew = 0;
	int ret;

	if (m->u64a >= npages || m->u64b > npages - m->u64a)
		return err_set(e, -EPROTO, "MISSING names pages %llu..%llu, guest memory has %llu",
			       (unsigned long long)m->u64a,
			       (unsigned long long)(m->u64a + m->u64b - 1),
			       (unsigned long long)npages);
	if (!pc.missing) {
		pc.missing = calloc((npages + 63) / 64, sizeof(uint64_t));
		pc.fresh = calloc((npages + 63) / 64, sizeof(uint64_t));
		if (!pc.missing || !pc.fresh) {
			free(pc.missing);
			free(pc.fresh);
			pc.missing = pc.fresh = NULL;
			return err_set(e, -ENOMEM, "out of memory for the missing-page bitmap");
		}
		pc.mem = mem;
		pc.npages = npages;
	}
	for (uint64_t i = 0; i < m->u64b; i++) {
		uint64_t pg = m->u64a + i;

		if (i % 8 == 0 && !m->bitmap[i / 8]) {
			i += 7; /* a zero byte: eight pages not named */
			continue;
		}
		if ((m->bitmap[i / 8] & (1u << (i % 8))) && !pc_bit(pc.missing, pg)) {
			pc.fresh[pg / 64] |= 1ull << (pg % 64);
			lo = MIN(lo, pg);
			hi = pg;
			nnew++;
		}
	}
	if (nnew) {
		/* round 0's copies of these pages are stale: dropped, touching one faults */
		ret = guest_mem_drop_pages(mem, pc.fresh, lo, hi + 1 - lo, e);
		if (ret < 0)
			return err_prefix(e, ret, "dropping stale pages");
		for (uint64_t w = lo / 64; w <= hi / 64; w++) {
			pc.missing[w] |= pc.fresh[w];
			pc.fresh[w] = 0;
		}
		pc.nmissing += nnew;
	}
	pthread_mutex_lock(&mig.lock);
	mig.st.pages_remaining = pc.nmissing;
	pthread_mutex_unlock(&mig.lock);
	return 0;
}

static int pc_uffd_open(struct errbuf *e)
{
	int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK), dev;

	/* without the sysctl an unprivileged process may still have /dev/userfaultfd */
	if (fd < 0 && (errno == EPERM || errno == ENOSYS)) {
		dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
		if (dev >= 0) {
			fd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
			close(dev);
		}
	}
	if (fd < 0)
		return err_set(e, -errno, "post-copy needs userfaultfd on the destination: %s",
			       strerror(errno));
	pc.uffd = fd;
	return 0;
}

int inc_postcopy_prepare(struct errbuf *e)
{
	struct uffdio_api api = { .api = UFFD_API };
	struct uffdio_register reg = { .mode = UFFDIO_REGISTER_MODE_MISSING };
	uint64_t need = (1ull << _UFFDIO_COPY) | (1ull << _UFFDIO_ZEROPAGE) | (1ull << _UFFDIO_WAKE);
	int ret;

	if (!pc.missing)
		return 0;
	pc.received = calloc((pc.npages + 63) / 64, sizeof(uint64_t));
	pc.req_ns = calloc(pc.npages, sizeof(uint64_t));
	if (!pc.received || !pc.req_ns)
		return err_set(e, -ENOMEM, "out of memory for post-copy's page maps");
	ret = pc_uffd_open(e);
	if (ret < 0)
		return ret;
	if (ioctl(pc.uffd, UFFDIO_API, &api) < 0)
		return err_set(e, -errno, "userfaultfd API handshake: %s", strerror(errno));
	/* the missing pages' stale copies were dropped as MISSING named them */
	reg.range.start = (uintptr_t)pc.mem->base;
	reg.range.len = pc.mem->size;
	if (ioctl(pc.uffd, UFFDIO_REGISTER, &reg) < 0)
		return err_set(e, -errno, "registering guest memory with userfaultfd: %s",
			       strerror(errno));
	pc.registered = true;
	if ((reg.ioctls & need) != need)
		return err_set(e, -EOPNOTSUPP, "userfaultfd here cannot copy, zero and wake pages");
	return 0;
}

static int pc_send(const struct mig_ctrl *m, struct errbuf *e)
{
	int ret;

	pthread_mutex_lock(&pc.wlock);
	ret = mig.w ? mig_ctrl_send(mig.w, m, e) : err_set(e, -EPIPE, "no link to the source");
	if (ret == 0)
		ret = state_writer_flush(mig.w, e);
	pthread_mutex_unlock(&pc.wlock);
	return ret;
}

static void pc_wake(uint64_t addr)
{
	struct uffdio_range r = { .start = addr, .len = GUEST_PAGE_SIZE };

	if (ioctl(pc.uffd, UFFDIO_WAKE, &r) < 0)
		log_warn("post-copy: waking a fault at 0x%llx: %s", (unsigned long long)addr,
			 strerror(errno));
}

static void pc_fault(uint64_t addr)
{
	uint64_t off = addr - (uintptr_t)pc.mem->base, pg = off / GUEST_PAGE_SIZE, gpa;
	struct mig_ctrl m = { .type = MIG_MSG_REQUEST };
	uint64_t zero = 0;
	struct errbuf e;

	if (addr < (uintptr_t)pc.mem->base || off >= pc.mem->size)
		return;
	if (pc_bit((const uint64_t *)pc.received, pg)) {
		pc_wake(addr);
		return;
	}
	if (!pc_bit(pc.missing, pg)) {
		/* zero or never touched on the source: nothing to fetch */
		struct uffdio_zeropage z = { .range = { addr, GUEST_PAGE_SIZE } };

		if (ioctl(pc.uffd, UFFDIO_ZEROPAGE, &z) < 0 && errno != EEXIST)
			log_warn("post-copy: zero page at 0x%llx: %s", (unsigned long long)off,
				 strerror(errno));
		if (errno == EEXIST)
			pc_wake(addr);
		return;
	}
	if (!atomic_compare_exchange_strong(&pc.req_ns[pg], &zero, time_mono_ns()))
		return; /* asked already: the page is on its way (or asked again on resume) */
	vm_page_host(mig.vm, pg, &gpa);
	m.u64a = gpa;
	if (pc_send(&m, &e) < 0) {
		log_debug("post-copy: requesting page 0x%llx: %s", (unsigned long long)gpa, e.msg);
		return;
	}
	pthread_mutex_lock(&mig.lock);
	mig.st.pages_requested++;
	pthread_mutex_unlock(&mig.lock);
}

static void *pc_fault_main(void *arg)
{
	struct pollfd pfd = { .fd = pc.uffd, .events = POLLIN };
	struct uffd_msg msgs[16];

	(void)arg;
	while (!atomic_load(&pc.stop)) {
		ssize_t n;

		if (poll(&pfd, 1, 100) <= 0)
			continue;
		n = read(pc.uffd, msgs, sizeof(msgs));
		if (n < 0) {
			if (errno == EAGAIN || errno == EINTR)
				continue;
			log_err("post-copy: reading faults: %s", strerror(errno));
			break;
		}
		for (size_t i = 0; i < (size_t)n / sizeof(msgs[0]); i++)
			if (msgs[i].event == UFFD_EVENT_PAGEFAULT)
				pc_fault(msgs[i].arg.pagefault.address & ~(GUEST_PAGE_SIZE - 1));
	}
	return NULL;
}

static void pc_latency_add(uint64_t ns)
{
	pthread_mutex_lock(&mig.lock);
	pc.lat[pc.lat_count++ % PC_LAT_SAMPLES] = ns;
	if (pc.nlat < PC_LAT_SAMPLES)
		pc.nlat++;
	if (ns > mig.st.fault_latency_max_ns)
		mig.st.fault_latency_max_ns = ns;
	pthread_mutex_unlock(&mig.lock);
}

static int pc_u64_cmp(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/* Called with mig.lock held. */
void mig_postcopy_status_fill(struct mig_status *st)
{
	static uint64_t tmp[PC_LAT_SAMPLES];

	if (!st->incoming || !pc.nlat)
		return;
	memcpy(tmp, pc.lat, pc.nlat * sizeof(tmp[0]));
	qsort(tmp, pc.nlat, sizeof(tmp[0]), pc_u64_cmp);
	st->fault_latency_median_ns = tmp[pc.nlat / 2];
}

/* Installs one page from the source; a page that came already is left alone. */
static int pc_install(const struct state_page *p, struct errbuf *e)
{
	int64_t off = guest_mem_offset(pc.mem, p->gpa);
	uint64_t pg, addr, t;
	int ret;

	if (off < 0 || (uint64_t)off + GUEST_PAGE_SIZE > pc.mem->size)
		return err_set(e, -EFAULT, "page 0x%llx is outside guest memory",
			       (unsigned long long)p->gpa);
	pg = (uint64_t)off / GUEST_PAGE_SIZE;
	addr = (uintptr_t)pc.mem->base + (uint64_t)off;
	if (!pc_bit(pc.missing, pg))
		return err_set(e, -EPROTO, "page 0x%llx was not missing", (unsigned long long)p->gpa);
	if (pc_bit((const uint64_t *)pc.received, pg)) {
		pc.duplicates++;
		return 0;
	}
	do {
		if (p->data) {
			struct uffdio_copy c = { .dst = addr, .src = (uintptr_t)p->data,
						 .len = GUEST_PAGE_SIZE };

			ret = ioctl(pc.uffd, UFFDIO_COPY, &c);
		} else {
			struct uffdio_zeropage z = { .range = { addr, GUEST_PAGE_SIZE } };

			ret = ioctl(pc.uffd, UFFDIO_ZEROPAGE, &z);
		}
	} while (ret < 0 && errno == EAGAIN);
	if (ret < 0 && errno != EEXIST)
		return err_set(e, -errno, "installing page 0x%llx: %s", (unsigned long long)p->gpa,
			       strerror(errno));
	atomic_fetch_or(&pc.received[pg / 64], 1ull << (pg % 64));
	pc.nreceived++;
	t = atomic_load(&pc.req_ns[pg]);
	if (t)
		pc_latency_add(time_mono_ns() - t);
	return 0;
}

static int pc_pages(const struct state_record *rec, struct errbuf *e)
{
	struct state_pages_iter it;
	struct state_page p;
	uint64_t normal = 0, zero = 0;
	int ret = inc_pages_decode(rec, &it, e);

	if (ret < 0)
		return ret;
	while (state_pages_next(&it, &p)) {
		/* UFFDIO_COPY maps whole pages; a source never sends deltas after the switch */
		if (p.delta)
			return err_set(e, -EPROTO, "record %llu: page 0x%llx came as a delta in "
				       "post-copy, where pages are whole",
				       (unsigned long long)rec->index, (unsigned long long)p.gpa);
		ret = pc_install(&p, e);
		if (ret < 0)
			return err_prefix(e, ret, "record %llu", (unsigned long long)rec->index);
		p.data ? normal++ : zero++;
	}
	pthread_mutex_lock(&mig.lock);
	mig.st.pages_normal += normal;
	mig.st.pages_zero += zero;
	mig.st.pages_remaining = pc.nmissing - pc.nreceived;
	mig.st.bytes_sent = state_reader_offset(mig.r);
	mig.st.bytes_total = mig.st.bytes_sent + mig.st.pages_remaining * GUEST_PAGE_SIZE;
	pthread_mutex_unlock(&mig.lock);
	return 0;
}

static int pc_receive(struct errbuf *e)
{
	struct state_record rec;
	struct mig_ctrl m;
	int ret;

	for (;;) {
		ret = state_reader_next(mig.r, &rec, e);
		if (ret < 0)
			return err_prefix(e, ret, "from the source");
		if (rec.type == STATE_REC_PAGES) {
			ret = pc_pages(&rec, e);
			if (ret < 0)
				return ret;
			continue;
		}
		ret = mig_ctrl_decode(&rec, &m, e);
		if (ret < 0)
			return ret;
		if (m.type == MIG_MSG_ABORT)
			return err_set(e, -ECANCELED, "the source aborted: %s", m.reason);
		if (m.type == MIG_MSG_PING) {
			/* everything before it is installed: the source's window moves on */
			struct mig_ctrl pong = { .type = MIG_MSG_PONG, .u64a = m.u64a };

			ret = pc_send(&pong, e);
			if (ret < 0)
				return err_prefix(e, ret, "answering PING");
			continue;
		}
		if (m.type != MIG_MSG_COMPLETE)
			return err_set(e, -EPROTO, "unexpected %s from the source during post-copy",
				       mig_msg_name(m.type));
		if (pc.nreceived != pc.nmissing)
			return err_set(e, -EPROTO, "the source says it sent everything, but %llu of "
						   "%llu missing pages never came",
				       (unsigned long long)(pc.nmissing - pc.nreceived),
				       (unsigned long long)pc.nmissing);
		return 0;
	}
}

/* Sends MISSING messages for the pages this side still lacks, then DONE. */
static int pc_lacking_send(struct state_writer *w, struct errbuf *e)
{
	uint64_t words = (pc.npages + 63) / 64, n = 0;
	uint64_t *lack = calloc(words, sizeof(uint64_t));
	struct mig_ctrl m = { .type = MIG_MSG_DONE };
	int ret = 0;

	if (!lack)
		return err_set(e, -ENOMEM, "out of memory");
	for (uint64_t i = 0; i < words; i++) {
		lack[i] = pc.missing[i] & ~atomic_load(&pc.received[i]);
		n += (uint64_t)__builtin_popcountll(lack[i]);
	}
	for (uint64_t first = 0; first < pc.npages && ret == 0; first += MIG_MISSING_CHUNK) {
		struct mig_ctrl mm = { .type = MIG_MSG_MISSING, .u64a = first,
				       .u64b = MIN(MIG_MISSING_CHUNK, pc.npages - first),
				       .bitmap = (const uint8_t *)&lack[first / 64] };

		ret = mig_ctrl_send(w, &mm, e);
	}
	free(lack);
	m.u64a = n;
	if (ret == 0)
		ret = mig_ctrl_send(w, &m, e);
	return ret;
}

/* The reconnecting source's CONFIG must describe the guest that runs here. */
static int pc_resume_config(struct state_reader *r, struct errbuf *e)
{
	struct state_config *cfg;
	struct state_record rec;
	int ret = state_reader_next(r, &rec, e);

	if (ret < 0)
		return ret;
	if (rec.type != STATE_REC_CONFIG)
		return err_set(e, -EPROTO, "expected CONFIG, got %s",
			       state_record_type_name(rec.type));
	cfg = calloc(1, sizeof(*cfg));
	if (!cfg)
		return err_set(e, -ENOMEM, "out of memory");
	ret = state_config_decode(rec.payload, rec.len, cfg, e);
	if (ret == 0 && state_config_mem_size(cfg) != pc.mem->size)
		ret = err_set(e, -EPROTO, "the reconnecting source has %llu MiB of guest memory, "
					  "this guest %llu MiB: another migration?",
			      (unsigned long long)(state_config_mem_size(cfg) / MiB),
			      (unsigned long long)(pc.mem->size / MiB));
	free(cfg);
	return ret;
}

/*
 * The source reconnected: the same channel as the first connection (a TLS listener requires
 * TLS with the same credentials again, and tells a plaintext source so), HELLO (resume) and
 * CONFIG, then what this side lacks. On failure the connection is closed.
 */
static int pc_resume_handshake(int fd, struct errbuf *e)
{
	struct state_reader_opts ro = { .kind = STATE_KIND_MIGRATION, .allow_control = true,
					.max_record = STATE_PAGES_MAX * (STATE_PAGE_SIZE + 16) + 64 };
	struct mig_ctrl m = { .type = MIG_MSG_ACCEPT, .u32a = MIG_PROTOCOL_VERSION };
	struct state_reader *r = NULL;
	struct state_writer *w = NULL;
	struct state_record rec;
	int ret;

	/* the fault thread writes only once mig.w is set, below: the stream is this thread's */
	pthread_mutex_lock(&mig.lock);
	mig.fd = fd;
	pthread_mutex_unlock(&mig.lock);
	ret = mig_socket_timeouts(fd, MIG_IO_TIMEOUT_MS, e);
	if (ret == 0)
		ret = inc_channel_accept(time_mono_ns() + (uint64_t)MIG_IO_TIMEOUT_MS * 1000000ull, e);
	if (ret == 0)
		ret = state_reader_open_channel(&r, mig.ch, &ro, e);
	if (ret == 0)
		ret = state_reader_next(r, &rec, e);
	if (ret == 0)
		ret = mig_ctrl_decode(&rec, &m, e);
	if (ret == 0 && (m.type != MIG_MSG_HELLO || m.u32a != MIG_PROTOCOL_VERSION ||
			 m.u32b != MIG_HELLO_RESUME))
		ret = err_set(e, -EPROTO, "expected HELLO to resume post-copy, got %s (mode %u)",
			      mig_msg_name(m.type), m.u32b);
	if (ret == 0)
		ret = pc_resume_config(r, e);
	if (ret == 0)
		ret = state_writer_open_channel(&w, mig.ch, STATE_KIND_MIGRATION, e);
	m = (struct mig_ctrl){ .type = MIG_MSG_ACCEPT, .u32a = MIG_PROTOCOL_VERSION };
	if (ret == 0)
		ret = mig_ctrl_send(w, &m, e);
	if (ret == 0)
		ret = pc_lacking_send(w, e);
	if (ret == 0)
		ret = state_writer_flush(w, e);
	if (ret < 0) {
		if (w)
			state_writer_free(w);
		if (r)
			state_reader_free(r);
		mig_channel_error(e, ret);
		mig_stream_close();
		return ret;
	}
	pthread_mutex_lock(&pc.wlock);
	mig.w = w;
	mig.r = r;
	pthread_mutex_unlock(&pc.wlock);
	/* requests the broken link swallowed: ask again */
	for (uint64_t pg = 0; pg < pc.npages; pg++) {
		uint64_t gpa;

		if (!atomic_load(&pc.req_ns[pg]) || pc_bit((const uint64_t *)pc.received, pg))
			continue;
		vm_page_host(mig.vm, pg, &gpa);
		m = (struct mig_ctrl){ .type = MIG_MSG_REQUEST, .u64a = gpa };
		ret = pc_send(&m, e);
		if (ret < 0)
			return ret;
	}
	return 0;
}

/* Drops the broken connection; the fault thread's requests fail until the next one. */
static void pc_stream_drop(void)
{
	pthread_mutex_lock(&pc.wlock);
	mig_stream_close();
	pthread_mutex_unlock(&pc.wlock);
}

/*
 * The link broke with pages still on the source: keep everything (the vCPUs wait on
 * their faults) and listen again on the incoming URI until the source reconnects with
 * `migrate --resume`, or the process is stopped.
 */
static int pc_wait_resume(struct errbuf *e)
{
	struct mig_uri u;
	int ret, lfd, fd;

	pc_stream_drop();
	pthread_mutex_lock(&mig.lock);
	mig.st.state = MIG_STATE_POSTCOPY_PAUSED;
	snprintf(mig.st.error, sizeof(mig.st.error), "%s; %llu pages still on the source: "
		 "waiting on %s for `godwit migrate --resume` there (if the source is gone, the "
		 "guest is lost: those pages existed only there)", e->msg,
		 (unsigned long long)(pc.nmissing - pc.nreceived), mig.st.uri);
	ret = mig_uri_parse(mig.st.uri, &u, e);
	pthread_mutex_unlock(&mig.lock);
	log_err("post-copy paused: %s", mig.st.error);
	if (ret == 0)
		ret = mig_listen(&u, &lfd, e);
	if (ret < 0)
		return ret;
	atomic_store(&pc.listen_fd, lfd);
	for (;;) {
		fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
		if (fd < 0 && errno == EINTR)
			continue;
		if (fd < 0 || atomic_load(&pc.stop_wait)) {
			ret = err_set(e, fd < 0 ? -errno : -ECANCELED, "waiting for the source to "
				      "resume: %s", fd < 0 ? strerror(errno) : "stopped");
			if (fd >= 0)
				close(fd);
			break;
		}
		ret = pc_resume_handshake(fd, e);
		if (ret == 0)
			break;
		log_warn("post-copy: a resume attempt failed: %s", e->msg);
	}
	atomic_store(&pc.listen_fd, -1);
	close(lfd);
	if (ret < 0)
		return ret;
	pthread_mutex_lock(&mig.lock);
	mig.st.state = MIG_STATE_ACTIVE;
	mig.st.error[0] = '\0';
	pthread_mutex_unlock(&mig.lock);
	log_info("post-copy resumed: %llu pages to come", (unsigned long long)(pc.nmissing -
										pc.nreceived));
	return 0;
}

/* A broken or silent link can be mended by a new connection; a lying source cannot. */
static bool pc_resumable(int ret)
{
	return ret != -EPROTO && ret != -EBADMSG && ret != -EFAULT && ret != -ECANCELED &&
	       !atomic_load(&pc.stop_wait);
}

void inc_postcopy_unblock(void)
{
	int fd = atomic_load(&pc.listen_fd);

	atomic_store(&pc.stop_wait, true);
	if (fd >= 0)
		shutdown(fd, SHUT_RDWR);
}

int inc_postcopy_run(struct errbuf *e)
{
	struct mig_ctrl m = { .type = MIG_MSG_COMPLETE };
	struct mig_status st;
	int ret;

	pthread_mutex_lock(&mig.lock);
	mig.st.postcopy = true;
	mig.st.state = MIG_STATE_ACTIVE;
	pthread_mutex_unlock(&mig.lock);
	atomic_store(&pc.stop, false);
	ret = pthread_create(&pc.fault_thread, NULL, pc_fault_main, NULL);
	if (ret)
		return err_set(e, -ret, "post-copy: start the fault thread: %s", strerror(ret));
	pc.fault_started = true;
	log_info("post-copy: the guest runs here; %llu pages follow from the source",
		 (unsigned long long)pc.nmissing);
	while ((ret = pc_receive(e)) < 0 && pc_resumable(ret))
		if (pc_wait_resume(e) < 0)
			break;
	if (ret < 0) {
		/* the pages on the source are the only copy: say so instead of guessing */
		return err_prefix(e, ret, "post-copy broke off with %llu pages still on the source: "
					  "the guest cannot run on without them and is lost unless "
					  "the source still has them",
				  (unsigned long long)(pc.nmissing - pc.nreceived));
	}
	migration_status_get(&st);
	m.u64a = st.fault_latency_median_ns;
	m.u64b = st.fault_latency_max_ns;
	if (pc_send(&m, e) < 0)
		log_warn("post-copy: the source did not get COMPLETE: %s", e->msg);
	log_info("post-copy completed: %llu pages fetched, %llu requested, %llu duplicates",
		 (unsigned long long)pc.nreceived, (unsigned long long)st.pages_requested,
		 (unsigned long long)pc.duplicates);
	inc_postcopy_cleanup();
	return 0;
}

void inc_postcopy_cleanup(void)
{
	if (pc.fault_started) {
		atomic_store(&pc.stop, true);
		pthread_join(pc.fault_thread, NULL);
		pc.fault_started = false;
	}
	if (pc.registered && pc.nreceived == pc.nmissing) {
		/* every missing page is here: untouched memory faults in as usual again */
		struct uffdio_range r = { (uintptr_t)pc.mem->base, pc.mem->size };

		if (ioctl(pc.uffd, UFFDIO_UNREGISTER, &r) < 0)
			log_warn("post-copy: unregistering guest memory: %s", strerror(errno));
		pc.registered = false;
	}
	if (pc.registered)
		return; /* a guest with pages still missing keeps blocking on them: never zero */
	if (pc.uffd >= 0)
		close(pc.uffd);
	pc.uffd = -1;
	free(pc.missing);
	free(pc.fresh);
	pc.fresh = NULL;
	free((void *)pc.received);
	free((void *)pc.req_ns);
	pc.missing = NULL;
	pc.received = NULL;
	pc.req_ns = NULL;
}

void inc_postcopy_release(void)
{
	if (pc.registered)
		log_warn("post-copy: %llu pages never came; the guest is discarded",
			 (unsigned long long)(pc.nmissing - pc.nreceived));
	pc.registered = false;
	inc_postcopy_cleanup();
}
