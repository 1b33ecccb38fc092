/* SPDX-License-Identifier: MIT */
/*
 * A migration over several connections (migrate --connections N, warm and live moves).
 * The first connection carries everything it always did: HELLO, STREAMS, CONFIG, rounds,
 * state and the handover. Each extra connection proves it belongs to this move (its own
 * TLS handshake when TLS is on, then JOIN with the random token STREAMS carried on the
 * first) and then carries only PAGES and FENCE records.
 *
 * Source: the engine thread fills batches as before; a batch goes to an extra connection's
 * sender thread when one can take it, else the engine writes it on the first connection
 * itself, so every connection (and, compressing, every core) works. With --delta a batch's
 * pages lie in a buffer of delta.c's, which goes with the batch to its sender (a written one
 * comes back in exchange): the engine never reuses bytes a sender has yet to write, and the
 * delta cache stays the engine's alone. Destination: one receiving thread per extra
 * connection installs its pages.
 *
 * The barrier: pages are independent, so their order across connections does not matter
 * within a round; a page may only never be overtaken by its older copy from an earlier
 * round (a delta would then meet the wrong base). Each round (and the stop-and-copy,
 * before any SECTION) ends with FENCE seq on every connection: the destination's first
 * connection goes past its FENCE only once every extra connection has read its own (so all
 * of the round's pages are installed before the PING after it is answered, and before
 * SECTIONs and DONE), and no extra connection reads past its FENCE before the first has
 * arrived there (the rules: fences.h). A connection that breaks or stalls fails the move
 * on both sides, as a broken first connection does.
 */
#include "base/log.h"
#include "migration/fences.h"
#include "migration/mig_internal.h"
#include "migration/params.h"
#include "vmm/memory.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

_Static_assert(MIG_CONNECTIONS_MAX == MIG_STREAMS_MAX, "one bound for connections");
_Static_assert(sizeof(((struct mig_status *)0)->stream_bytes) / sizeof(uint64_t) ==
		       MIG_STREAMS_MAX, "a status entry per connection");

/*
 * A batch handed to a sender thread: page references, read when the thread writes them.
 * With --delta the pages lie in a buffer of the batch's own (data), which it keeps until it
 * is written (mig_streams_give).
 */
struct mig_xbatch {
	struct state_page pages[STATE_PAGES_MAX];
	uint32_t n;
	unsigned flags;
	uint8_t *data;
};

/* an extra connection, index 1..n-1 (the first is mig.fd, mig.w, mig.r) */
struct mig_xstream {
	_Atomic int fd;
	struct channel *ch;
	struct channel *plain;        /* without TLS: ch's storage, allocated here */
	struct state_writer *w;
	struct state_reader *r;
	pthread_t thread;
	bool started;
	_Atomic uint64_t bytes;       /* payload sent (source) or received (destination) */
	bool busy;                    /* source: writing a batch (under xs.lock) */
	struct state_inflater *z;     /* destination */
	uint64_t pages;               /* destination: pages since its last FENCE */
};

static struct {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	unsigned n;                   /* connections in all; 1: the first only */
	uint8_t token[MIG_TOKEN_LEN];
	struct mig_xstream s[MIG_STREAMS_MAX];
	/* source: batches waiting for a sender (a ring) and free batches (a stack) */
	struct mig_xbatch *slots;
	unsigned nslots;
	struct mig_xbatch *queue[2 * MIG_STREAMS_MAX], *free[2 * MIG_STREAMS_MAX];
	unsigned qhead, qcount, nfree;
	uint64_t fence;               /* source: the last FENCE sent */
	struct mig_fences f;          /* destination: the barrier (fences.h) */
	bool quit;
	int err;                      /* the first failure of an extra connection */
	char msg[ERRBUF_LEN];
} xs = { .lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER, .n = 1 };

unsigned mig_streams_count(void)
{
	return xs.n;
}

/*
 * Records the first failure, wakes everyone, and cuts the first connection so that the
 * engine thread, wherever it is blocked, fails too. Called without xs.lock.
 */
static void mig_streams_fail(unsigned i, int ret, const char *why)
{
	bool first = false;

	pthread_mutex_lock(&xs.lock);
	if (!xs.quit && !xs.err) {
		xs.err = ret;
		snprintf(xs.msg, sizeof(xs.msg), "connection %u of %u: %s", i + 1, xs.n, why);
		first = true;
	}
	pthread_cond_broadcast(&xs.cond);
	pthread_mutex_unlock(&xs.lock);
	if (!first)
		return;
	/* a destination still answers ERROR on it, naming this connection */
	pthread_mutex_lock(&mig.lock);
	if (mig.fd >= 0)
		shutdown(mig.fd, mig.st.incoming ? SHUT_RD : SHUT_RDWR);
	pthread_mutex_unlock(&mig.lock);
}

int mig_streams_error(struct errbuf *e, int ret)
{
	pthread_mutex_lock(&xs.lock);
	if (xs.err && ret < 0)
		ret = err_set(e, xs.err, "%s", xs.msg);
	pthread_mutex_unlock(&xs.lock);
	return ret;
}

void mig_streams_shutdown(void)
{
	for (unsigned i = 1; i < MIG_STREAMS_MAX; i++) {
		int fd = atomic_load(&xs.s[i].fd);

		if (fd > 0)
			shutdown(fd, SHUT_RDWR);
	}
}

/* Ends every thread and connection; status figures (bytes) stay for migrate-status. */
void mig_streams_close(void)
{
	pthread_mutex_lock(&xs.lock);
	xs.quit = true;
	pthread_cond_broadcast(&xs.cond);
	pthread_mutex_unlock(&xs.lock);
	mig_streams_shutdown();
	for (unsigned i = 1; i < MIG_STREAMS_MAX; i++) {
		struct mig_xstream *s = &xs.s[i];
		int fd = atomic_load(&s->fd);

		if (s->started)
			pthread_join(s->thread, NULL);
		s->started = false;
		if (s->w)
			state_writer_free(s->w);
		if (s->r)
			state_reader_free(s->r);
		if (s->plain)
			free(s->plain);
		else
			channel_free(s->ch);
		s->plain = NULL;
		state_inflater_free(s->z);
		s->w = NULL;
		s->r = NULL;
		s->ch = NULL;
		s->z = NULL;
		if (fd > 0)
			close(fd);
		atomic_store(&s->fd, -1);
	}
	for (unsigned k = 0; xs.slots && k < xs.nslots; k++)
		free(xs.slots[k].data);
	free(xs.slots);
	xs.slots = NULL;
	xs.nslots = 0;
}

/* Forgets the last migration's connections; n: connections of the next one. */
static void mig_streams_reset(unsigned n)
{
	mig_streams_close();
	pthread_mutex_lock(&xs.lock);
	for (unsigned i = 0; i < MIG_STREAMS_MAX; i++) {
		atomic_store(&xs.s[i].fd, -1);
		atomic_store(&xs.s[i].bytes, 0);
		xs.s[i].pages = 0;
		xs.s[i].busy = false;
	}
	xs.n = n;
	xs.qhead = xs.qcount = xs.nfree = 0;
	xs.fence = 0;
	xs.f = (struct mig_fences){ .n = n };
	xs.quit = false;
	xs.err = 0;
	xs.msg[0] = '\0';
	pthread_mutex_unlock(&xs.lock);
}

void mig_streams_status_fill(struct mig_status *st)
{
	uint64_t sum = st->stream_bytes[0];
	unsigned n;

	/* a source's count is its request's until HELLO goes out */
	if (st->incoming)
		st->connections = xs.n;
	n = MIN(st->connections, MIG_STREAMS_MAX);
	for (unsigned i = 1; i < n; i++) {
		st->stream_bytes[i] = atomic_load(&xs.s[i].bytes);
		sum += st->stream_bytes[i];
	}
	if (st->incoming) /* the source counts its own total as it sends */
		st->bytes_sent = st->bytes_total = sum;
}

uint64_t mig_streams_bytes(void)
{
	uint64_t sum = 0;

	for (unsigned i = 1; i < xs.n; i++)
		sum += atomic_load(&xs.s[i].bytes);
	return sum;
}

/* A GODWIT_MIGRATION_JOIN_DELAY_MS pause before the extra connections (tests only). */
static void mig_streams_test_delay(void)
{
	const char *s = getenv("GODWIT_MIGRATION_JOIN_DELAY_MS");
	uint64_t ms;

	if (s && parse_u64(s, 0, 60000, &ms) == 0 && ms)
		usleep((useconds_t)(ms * 1000));
}

/* ---- source ---- */

int mig_streams_hello(struct mig_ctrl *hello, unsigned n, struct errbuf *e)
{
	mig_streams_reset(n);
	if (n < 2)
		return 0;
	if (getrandom(xs.token, sizeof(xs.token), 0) != (ssize_t)sizeof(xs.token))
		return err_set(e, -EIO, "getrandom for the connections' token: %s",
			       strerror(errno));
	hello->u64a |= MIG_CAP_STREAMS;
	return 0;
}

int mig_streams_announce(struct state_writer *w, struct errbuf *e)
{
	struct mig_ctrl m = { .type = MIG_MSG_STREAMS, .u32a = xs.n };

	if (xs.n < 2)
		return 0;
	memcpy(m.token, xs.token, sizeof(m.token));
	return mig_ctrl_send(w, &m, e);
}

static void *mig_sender_main(void *arg)
{
	unsigned i = (unsigned)(uintptr_t)arg;
	struct mig_xstream *s = &xs.s[i];
	struct errbuf e;
	int ret = 0;

	pthread_mutex_lock(&xs.lock);
	for (;;) {
		struct mig_xbatch *b;

		while (!xs.quit && !xs.err && !xs.qcount)
			pthread_cond_wait(&xs.cond, &xs.lock);
		if (xs.quit || xs.err)
			break;
		b = xs.queue[xs.qhead];
		xs.qhead = (xs.qhead + 1) % ARRAY_SIZE(xs.queue);
		xs.qcount--;
		s->busy = true;
		pthread_mutex_unlock(&xs.lock);
		ret = mig_pages_write(s->w, b->pages, b->n, b->flags, &e);
		if (ret == 0)
			ret = state_writer_flush(s->w, &e);
		atomic_store(&s->bytes, state_writer_bytes(s->w));
		if (ret < 0) {
			const char *why = mig_tls_channel_error(s->ch);

			if (why)
				err_set(&e, ret, "%s (TLS: %s)", e.msg, why);
			mig_streams_fail(i, ret, e.msg);
		}
		pthread_mutex_lock(&xs.lock);
		s->busy = false;
		xs.free[xs.nfree++] = b;
		pthread_cond_broadcast(&xs.cond);
		if (ret < 0)
			break;
	}
	pthread_mutex_unlock(&xs.lock);
	return NULL;
}

/* Connects extra connection i and has it accepted. */
static int mig_stream_join(unsigned i, const char *host, struct errbuf *e)
{
	struct state_reader_opts ro = { .kind = STATE_KIND_MIGRATION, .allow_control = true,
					.max_record = 1 << 20 };
	struct mig_xstream *s = &xs.s[i];
	struct mig_ctrl m = { .type = MIG_MSG_JOIN, .u32a = i };
	struct state_record rec;
	struct mig_tls_info info;
	int fd, ret;

	ret = mig_connect(&mig.uri, MIG_IO_TIMEOUT_MS, &fd, e);
	if (ret < 0)
		return ret;
	atomic_store(&s->fd, fd);
	if (mig.tls) {
		ret = mig_tls_handshake(mig.tls, fd, host,
					time_mono_ns() + (uint64_t)MIG_IO_TIMEOUT_MS * 1000000ull,
					&s->ch, &info, e);
		if (ret < 0)
			return ret;
	} else {
		s->plain = malloc(sizeof(*s->plain));
		if (!s->plain)
			return err_set(e, -ENOMEM, "out of memory");
		channel_fd_init(s->plain, fd);
		s->ch = s->plain;
	}
	ret = state_writer_open_channel(&s->w, s->ch, STATE_KIND_MIGRATION, e);
	if (ret == 0)
		state_writer_config_elsewhere(s->w);
	if (ret == 0 && mig.p.compress != MIG_COMPRESS_NONE)
		ret = state_writer_compress(s->w, mig.p.compress_level, e);
	memcpy(m.token, xs.token, sizeof(m.token));
	if (ret == 0)
		ret = mig_ctrl_send(s->w, &m, e);
	if (ret == 0)
		ret = state_writer_flush(s->w, e);
	if (ret == 0)
		ret = state_reader_open_channel(&s->r, s->ch, &ro, e);
	if (ret == 0)
		ret = state_reader_next(s->r, &rec, e);
	if (ret == 0)
		ret = mig_ctrl_decode(&rec, &m, e);
	if (ret < 0)
		return ret;
	if (m.type == MIG_MSG_REFUSE)
		return err_set(e, -EPROTO, "the destination refused it: %s", m.reason);
	if (m.type != MIG_MSG_ACCEPT)
		return err_set(e, -EPROTO, "expected ACCEPT, got %s", mig_msg_name(m.type));
	atomic_store(&s->bytes, state_writer_bytes(s->w));
	ret = pthread_create(&s->thread, NULL, mig_sender_main, (void *)(uintptr_t)i);
	if (ret)
		return err_set(e, -ret, "start its sender thread: %s", strerror(ret));
	s->started = true;
	return 0;
}

int mig_streams_connect(const char *host, struct errbuf *e)
{
	unsigned nslots = 2 * (xs.n - 1);
	int ret;

	if (xs.n < 2)
		return 0;
	xs.slots = calloc(nslots, sizeof(*xs.slots));
	if (!xs.slots)
		return err_set(e, -ENOMEM, "out of memory for %u batches", nslots);
	xs.nslots = nslots;
	for (unsigned k = 0; k < nslots; k++)
		xs.free[xs.nfree++] = &xs.slots[k];
	mig_streams_test_delay();
	for (unsigned i = 1; i < xs.n; i++) {
		ret = mig_stream_join(i, host, e);
		if (ret < 0)
			return err_prefix(e, ret, "connection %u of %u", i + 1, xs.n);
	}
	log_info("migration: %u connections", xs.n);
	return 0;
}

int mig_streams_give(const struct state_page *pages, uint32_t n, unsigned flags, uint8_t **data,
		     struct errbuf *e)
{
	struct mig_xbatch *b = NULL;
	int ret = 0;

	if (xs.n < 2)
		return 0;
	pthread_mutex_lock(&xs.lock);
	if (xs.err) {
		ret = err_set(e, xs.err, "%s", xs.msg);
	} else if (xs.qcount < xs.n - 1 && xs.nfree) {
		b = xs.free[xs.nfree - 1];
		/* a free slot's buffer was written: it becomes the caller's next one */
		if (data && !b->data)
			b->data = malloc(MIG_BATCH_DATA);
		if (data && !b->data) {
			pthread_mutex_unlock(&xs.lock);
			return 0; /* no memory for a spare: the caller writes this batch itself */
		}
		xs.nfree--;
		if (data) {
			uint8_t *spare = b->data;

			b->data = *data;
			*data = spare;
		}
		memcpy(b->pages, pages, n * sizeof(*pages));
		b->n = n;
		b->flags = flags;
		xs.queue[(xs.qhead + xs.qcount++) % ARRAY_SIZE(xs.queue)] = b;
		pthread_cond_broadcast(&xs.cond);
		ret = 1;
	}
	pthread_mutex_unlock(&xs.lock);
	return ret;
}

int mig_streams_fence(struct errbuf *e)
{
	struct mig_ctrl m = { .type = MIG_MSG_FENCE };
	bool busy;
	int ret = 0;

	if (xs.n < 2)
		return 0;
	pthread_mutex_lock(&xs.lock);
	/* every queued batch written: a sender's writes are bounded by its send timeout */
	for (;;) {
		busy = xs.qcount != 0;
		for (unsigned i = 1; i < xs.n; i++)
			busy |= xs.s[i].busy;
		if (!busy || xs.err)
			break;
		pthread_cond_wait(&xs.cond, &xs.lock);
	}
	if (xs.err)
		ret = err_set(e, xs.err, "%s", xs.msg);
	m.u64a = ++xs.fence;
	pthread_mutex_unlock(&xs.lock);
	/* the senders wait for a batch that cannot come while this thread writes here */
	for (unsigned i = 1; i < xs.n && ret == 0; i++) {
		ret = mig_ctrl_send(xs.s[i].w, &m, e);
		if (ret == 0)
			ret = state_writer_flush(xs.s[i].w, e);
		atomic_store(&xs.s[i].bytes, state_writer_bytes(xs.s[i].w));
		if (ret < 0)
			return err_prefix(e, ret, "connection %u of %u: FENCE", i + 1, xs.n);
	}
	if (ret == 0)
		ret = mig_ctrl_send(mig.w, &m, e);
	return ret;
}

/* ---- destination ---- */

int mig_streams_expect(const struct mig_ctrl *hello, struct state_reader *r, struct errbuf *e)
{
	struct state_record rec;
	struct mig_ctrl m;
	int ret;

	mig_streams_reset(1);
	if (!(hello->u64a & MIG_CAP_STREAMS))
		return 0;
	ret = state_reader_next(r, &rec, e);
	if (ret == 0)
		ret = mig_ctrl_decode(&rec, &m, e);
	if (ret < 0)
		return err_prefix(e, ret, "the source's STREAMS");
	if (m.type != MIG_MSG_STREAMS)
		return err_set(e, -EPROTO, "expected STREAMS after HELLO, got %s",
			       mig_msg_name(m.type));
	pthread_mutex_lock(&xs.lock);
	xs.n = m.u32a;
	xs.f.n = m.u32a;
	memcpy(xs.token, m.token, sizeof(xs.token));
	pthread_mutex_unlock(&xs.lock);
	return 0;
}

/* constant time: how much of the token matches must not show in the timing */
static bool mig_token_equal(const uint8_t *a, const uint8_t *b)
{
	uint8_t d = 0;

	for (unsigned i = 0; i < MIG_TOKEN_LEN; i++)
		d |= a[i] ^ b[i];
	return d == 0;
}

static void mig_stream_refuse(struct state_writer *w, const char *why)
{
	struct mig_ctrl m = { .type = MIG_MSG_REFUSE };
	struct errbuf e;

	snprintf(m.reason, sizeof(m.reason), "%s", why);
	if (mig_ctrl_send(w, &m, &e) < 0 || state_writer_flush(w, &e) < 0)
		log_debug("incoming migration: a REFUSE was not delivered: %s", e.msg);
}

/*
 * An accepted connection: its TLS handshake, then JOIN with this move's token and an
 * index not taken yet, all before deadline_ns. On success it is extra connection *idx.
 */
static int mig_stream_admit(int fd, uint64_t deadline_ns, uint64_t max_record, unsigned *idx,
			    struct errbuf *e)
{
	struct state_reader_opts ro = { .kind = STATE_KIND_MIGRATION, .allow_control = true,
					.max_record = max_record, .config_elsewhere = true };
	uint64_t left_ms = (deadline_ns - time_mono_ns()) / 1000000 + 1;
	struct mig_xstream t = { .fd = fd };
	struct mig_deadline dl;
	struct state_record rec;
	struct mig_tls_info info;
	struct mig_ctrl m;
	int ret;

	ret = mig_socket_timeouts(fd, (int)MIN(left_ms, (uint64_t)MIG_IO_TIMEOUT_MS), e);
	if (ret < 0)
		return ret;
	/* the whole admission, handshake included, is bounded: a trickle cannot hold it */
	ret = mig_deadline_start(&dl, fd, e);
	if (ret < 0)
		return ret;
	mig_deadline_set(&dl, left_ms, "an extra connection's setup (TLS handshake, JOIN)");
	if (mig.tls) {
		ret = mig_tls_handshake(mig.tls, fd, NULL, 0, &t.ch, &info, e);
	} else {
		t.plain = malloc(sizeof(*t.plain));
		if (t.plain)
			channel_fd_init(t.plain, fd);
		t.ch = t.plain;
		ret = t.plain ? 0 : err_set(e, -ENOMEM, "out of memory");
	}
	if (ret == 0)
		ret = state_reader_open_channel(&t.r, t.ch, &ro, e);
	if (ret == 0)
		ret = state_writer_open_channel(&t.w, t.ch, STATE_KIND_MIGRATION, e);
	if (ret == 0)
		ret = state_reader_next(t.r, &rec, e);
	if (ret == 0)
		ret = mig_ctrl_decode(&rec, &m, e);
	if (ret == 0 && m.type != MIG_MSG_JOIN)
		ret = err_set(e, -EPROTO, "expected JOIN, got %s", mig_msg_name(m.type));
	if (ret == 0 && !mig_token_equal(m.token, xs.token))
		ret = err_set(e, -EACCES, "its JOIN does not carry this migration's token");
	if (ret == 0 && (m.u32a >= xs.n || atomic_load(&xs.s[m.u32a].fd) >= 0))
		ret = err_set(e, -EPROTO, "its JOIN names connection %u, which is %s", m.u32a + 1,
			      m.u32a >= xs.n ? "beyond the count STREAMS gave" : "taken");
	if (ret < 0 && t.w && ret != -EPIPE && ret != -ECONNRESET)
		mig_stream_refuse(t.w, e->msg);
	if (ret == 0) {
		struct mig_ctrl ok = { .type = MIG_MSG_ACCEPT, .u32a = MIG_PROTOCOL_VERSION };

		ret = mig_ctrl_send(t.w, &ok, e);
		if (ret == 0)
			ret = state_writer_flush(t.w, e);
	}
	ret = mig_deadline_check(&dl, ret, e);
	mig_deadline_stop(&dl);
	/* admitted: for the move, the usual timeout, not what the setup deadline had left */
	if (ret == 0)
		ret = mig_socket_timeouts(fd, MIG_IO_TIMEOUT_MS, e);
	if (ret < 0) {
		if (t.w)
			state_writer_free(t.w);
		if (t.r)
			state_reader_free(t.r);
		if (t.plain)
			free(t.plain);
		else
			channel_free(t.ch);
		return ret;
	}
	*idx = m.u32a;
	xs.s[*idx].ch = t.ch;
	xs.s[*idx].plain = t.plain;
	xs.s[*idx].w = t.w;
	xs.s[*idx].r = t.r;
	atomic_store(&xs.s[*idx].bytes, state_reader_offset(t.r));
	atomic_store(&xs.s[*idx].fd, fd);
	return 0;
}

/*
 * FENCE on extra connection i: it waits here until the first connection has reached the
 * same FENCE (so it never runs a round ahead), within the record deadline.
 */
static int mig_receiver_fence(unsigned i, uint64_t seq, struct errbuf *e)
{
	struct mig_xstream *s = &xs.s[i];
	struct timespec ts;
	int ret = 0;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += (time_t)(MIG_RECORD_DEADLINE_MS / 1000);
	pthread_mutex_lock(&xs.lock);
	if (mig_fences_extra_read(&xs.f, i, seq) < 0)
		ret = err_set(e, -EPROTO, "FENCE %llu out of order (expected %llu)",
			      (unsigned long long)seq, (unsigned long long)xs.f.extra[i] + 1);
	if (ret == 0) {
		s->pages = 0;
		pthread_cond_broadcast(&xs.cond);
	}
	while (ret == 0 && !mig_fences_extra_may_go(&xs.f, i) && !xs.quit && !xs.err)
		if (pthread_cond_timedwait(&xs.cond, &xs.lock, &ts) == ETIMEDOUT)
			ret = err_set(e, -ETIMEDOUT, "the first connection did not reach FENCE "
				      "%llu within %llu ms", (unsigned long long)seq,
				      (unsigned long long)MIG_RECORD_DEADLINE_MS);
	pthread_mutex_unlock(&xs.lock);
	return ret;
}

static void *mig_receiver_main(void *arg)
{
	unsigned i = (unsigned)(uintptr_t)arg;
	struct mig_xstream *s = &xs.s[i];
	uint64_t limit = vm_memory(mig.vm)->size / GUEST_PAGE_SIZE;
	struct state_record rec;
	struct mig_ctrl m;
	struct errbuf e;
	int ret;

	for (;;) {
		uint64_t n;

		ret = state_reader_next(s->r, &rec, &e);
		atomic_store(&s->bytes, state_reader_offset(s->r));
		if (ret < 0)
			break;
		if (rec.type == STATE_REC_PAGES) {
			ret = inc_pages_install(&rec, &s->z, &n, &e);
			/* between two FENCEs a connection carries each page at most once */
			if (ret == 0 && (s->pages += n) > limit)
				ret = err_set(&e, -EPROTO, "more pages between two FENCEs than guest "
					      "memory holds");
		} else {
			ret = mig_ctrl_decode(&rec, &m, &e);
			if (ret == 0 && m.type != MIG_MSG_FENCE)
				ret = err_set(&e, -EPROTO, "unexpected %s (an extra connection carries "
					      "PAGES and FENCE only)", mig_msg_name(m.type));
			if (ret == 0)
				ret = mig_receiver_fence(i, m.u64a, &e);
		}
		if (ret < 0)
			break;
	}
	{
		const char *why = mig_tls_channel_error(s->ch);

		if (why)
			err_set(&e, ret, "%s (TLS: %s)", e.msg, why);
	}
	mig_streams_fail(i, ret, e.msg);
	return NULL;
}

int mig_streams_accept(int listen_fd, uint64_t max_record, struct errbuf *e)
{
	uint64_t deadline = time_deadline_ns(time_mono_ns(), MIG_SETUP_DEADLINE_MS);
	unsigned joined = 0;
	int ret;

	if (xs.n < 2)
		return 0;
	while (joined < xs.n - 1) {
		struct pollfd p = { .fd = listen_fd, .events = POLLIN };
		uint64_t now = time_mono_ns();
		char peer[80];
		unsigned idx;
		int fd;

		if (now >= deadline ||
		    poll(&p, 1, (int)MIN((deadline - now) / 1000000 + 1, 60000ull)) == 0) {
			if (time_mono_ns() < deadline)
				continue;
			return err_set(e, -ETIMEDOUT, "%u of the %u extra connections joined within "
				       "the setup deadline of %llu ms", joined, xs.n - 1,
				       (unsigned long long)MIG_SETUP_DEADLINE_MS);
		}
		fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
		if (fd < 0 && (errno == EINTR || errno == EAGAIN || errno == ECONNABORTED))
			continue;
		if (fd < 0)
			return err_set(e, -errno, "accept an extra connection: %s", strerror(errno));
		mig_peer_name(fd, peer, sizeof(peer));
		ret = mig_stream_admit(fd, deadline, max_record, &idx, e);
		if (ret < 0) {
			/* a stranger is refused and never counts; the real ones may still come */
			log_warn("incoming migration: refused an extra connection from %s: %s", peer,
				 e->msg);
			close(fd);
			continue;
		}
		joined++;
	}
	for (unsigned i = 1; i < xs.n; i++) {
		ret = pthread_create(&xs.s[i].thread, NULL, mig_receiver_main,
				     (void *)(uintptr_t)i);
		if (ret)
			return err_set(e, -ret, "start a receiving thread: %s", strerror(ret));
		xs.s[i].started = true;
	}
	log_info("incoming migration: %u connections", xs.n);
	return 0;
}

int mig_streams_fence_wait(uint64_t seq, struct errbuf *e)
{
	struct timespec ts;
	unsigned late = 0;
	int ret = 0;

	if (xs.n < 2)
		return err_set(e, -EPROTO, "FENCE on a migration of one connection");
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += (time_t)(MIG_RECORD_DEADLINE_MS / 1000);
	pthread_mutex_lock(&xs.lock);
	if (mig_fences_first_check(&xs.f, seq) < 0)
		ret = err_set(e, -EPROTO, "FENCE %llu out of order (expected %llu)",
			      (unsigned long long)seq, (unsigned long long)xs.f.first + 1);
	for (;;) {
		late = mig_fences_first_late(&xs.f, seq);
		if (ret < 0 || !late || xs.err)
			break;
		if (pthread_cond_timedwait(&xs.cond, &xs.lock, &ts) == ETIMEDOUT)
			ret = err_set(e, -ETIMEDOUT, "connection %u of %u did not reach FENCE %llu "
				      "within %llu ms", late + 1, xs.n, (unsigned long long)seq,
				      (unsigned long long)MIG_RECORD_DEADLINE_MS);
	}
	if (ret == 0 && xs.err)
		ret = err_set(e, xs.err, "%s", xs.msg);
	if (ret == 0) {
		mig_fences_first_pass(&xs.f, seq);
		pthread_cond_broadcast(&xs.cond);
	}
	pthread_mutex_unlock(&xs.lock);
	return ret;
}

int mig_streams_finish(struct errbuf *e)
{
	int ret = 0;

	if (xs.n < 2)
		return 0;
	pthread_mutex_lock(&xs.lock);
	if (xs.err)
		ret = err_set(e, xs.err, "%s", xs.msg);
	else if (!xs.f.first)
		ret = err_set(e, -EPROTO, "DONE before any FENCE on a migration of %u "
			      "connections", xs.n);
	pthread_mutex_unlock(&xs.lock);
	if (ret < 0)
		return ret;
	/* nothing more may come on them: stop the receivers before the state is applied */
	mig_streams_close();
	for (unsigned i = 1; i < xs.n; i++) {
		if (xs.s[i].pages)
			return err_set(e, -EPROTO, "connection %u of %u sent pages after the last "
				       "FENCE", i + 1, xs.n);
		/* a FENCE beyond the last one restarted its count of pages: those came after */
		if (xs.f.extra[i] != xs.f.first)
			return err_set(e, -EPROTO, "connection %u of %u read FENCE %llu, beyond the "
				       "last FENCE (%llu)", i + 1, xs.n,
				       (unsigned long long)xs.f.extra[i],
				       (unsigned long long)xs.f.first);
	}
	return 0;
}
