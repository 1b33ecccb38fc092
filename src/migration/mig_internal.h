/* SPDX-License-Identifier: MIT */
/* The migration engine's shared state, for the files of migration/ only. */
#ifndef GODWIT_MIGRATION_MIG_INTERNAL_H
#define GODWIT_MIGRATION_MIG_INTERNAL_H

#include "migration/migrate.h"
#include "migration/proto.h"
#include "migration/tls.h"
#include "state/record.h"

#include <pthread.h>
#include <stdatomic.h>

/* how long a send or receive may block; GODWIT_MIGRATION_IO_TIMEOUT_MS overrides (tests) */
int mig_io_timeout_ms(void);
#define MIG_IO_TIMEOUT_MS mig_io_timeout_ms()
#define MIG_HANDOVER_TIMEOUT_MS (2 * mig_io_timeout_ms())
/*
 * The destination builds the VM between CONFIG and ACCEPT: its own work, not a stalled
 * link (registering 200 GiB took 1.3 s on the nested host, a loaded host takes longer), so
 * the source waits for ACCEPT this long, and the destination's setup deadline stops at CONFIG.
 */
#define MIG_BUILD_TIMEOUT_MS (mig_io_timeout_ms() + 60000)
/* the destination's whole setup (accept to CONFIG), and each later record, as a whole */
#define MIG_SETUP_DEADLINE_MS ((uint64_t)mig_io_timeout_ms())
#define MIG_RECORD_DEADLINE_MS ((uint64_t)MIG_HANDOVER_TIMEOUT_MS)

/*
 * A deadline for a whole phase on one connection (deadline.c): when it passes, the
 * connection is shut down so every blocked read or write on it fails at once. Arm it
 * right after connecting or accepting, so a handshake that runs first is bounded too.
 */
struct mig_deadline {
	pthread_mutex_t lock;
	pthread_cond_t cond;    /* CLOCK_MONOTONIC */
	pthread_t thread;
	bool started, quit, fired;
	int fd;
	uint64_t at_ns;         /* 0: none armed */
	uint64_t ms;            /* the armed limit and phase, for the message */
	char what[96];
};

int __must_check mig_deadline_start(struct mig_deadline *d, int fd, struct errbuf *e);
/* (Re)arms the deadline ms from now for the phase what (replacing any earlier one). */
void mig_deadline_set(struct mig_deadline *d, uint64_t ms, const char *what);
/* ret unchanged unless the deadline cut the connection: then -ETIMEDOUT naming the phase. */
int __must_check mig_deadline_check(struct mig_deadline *d, int ret, struct errbuf *e);
/* Joins the watchdog; the fd is the caller's to close afterwards. */
void mig_deadline_stop(struct mig_deadline *d);

struct migration {
	pthread_mutex_t lock;
	struct mig_status st;     /* under lock */
	bool running;             /* a source or destination thread exists */
	pthread_t thread;
	_Atomic bool cancel;
	_Atomic bool committed;
	int fd;                   /* the connection, for cancel to cut */
	struct channel *ch;       /* the stream's channel over fd: plain_ch or a TLS one */
	struct channel plain_ch;
	struct mig_tls *tls;      /* credentials, when the migration uses TLS */

	struct vm *vm;
	struct evloop *loop;
	struct mig_params p;
	struct mig_uri uri;       /* p.uri, parsed */
	void (*done)(void *opaque);
	void *done_opaque;

	/* source working state */
	struct state_writer *w;
	struct state_reader *r;
	uint64_t *dirty;          /* flat page bitmap */
	uint64_t dirty_span[2];   /* live rounds: the pages of dirty that may have bits */
	uint64_t npages;
	uint64_t t_start, t_pause;
	bool guest_paused;        /* the guest is paused for the final phase */
	bool paused_by_us;        /* a failure before COMMIT resumes the guest */
	bool operator_paused;     /* the VM was paused before the migration: it stays so */
	bool tracking;
	bool postcopy;            /* this attempt switches to post-copy after its rounds */
	_Atomic bool throttle_on;
	pthread_t throttle_thread;
	bool throttle_thread_started;
	uint64_t bw_start_ns, bw_start_bytes; /* bandwidth cap accounting */
	/* for the downtime estimate (mig_iterate) */
	uint32_t nvcpus;
	uint64_t rtt_ns;          /* the smallest PING -> PONG so far, 0: none yet */
	uint64_t state_bytes_last; /* state sent by this process's last completion, 0: none */
};

extern struct migration mig;

/* Sets *field, one of mig.st.times, to now (CLOCK_REALTIME), under mig.lock. */
void mig_time_mark(uint64_t *field);

/*
 * Several connections (streams.c). Source: mig_streams_hello() before HELLO goes out,
 * mig_streams_announce() right after it, mig_streams_connect() after ACCEPT; then
 * mig_streams_give() hands a batch to a sender (1), or leaves it to the caller (0), and
 * mig_streams_fence() ends a round on every connection (FENCE on the first is the caller's
 * to flush). Destination: mig_streams_expect() after HELLO, mig_streams_accept() after
 * ACCEPT, mig_streams_fence_wait() at the first connection's FENCE, mig_streams_finish()
 * at DONE. With one connection each is a no-op.
 */
unsigned mig_streams_count(void);
int __must_check mig_streams_hello(struct mig_ctrl *hello, unsigned n, struct errbuf *e);
int __must_check mig_streams_announce(struct state_writer *w, struct errbuf *e);
int __must_check mig_streams_connect(const char *host, struct errbuf *e);
/*
 * data: NULL when the pages point into guest memory; else where the caller's pages lie, a
 * buffer of MIG_BATCH_DATA bytes: a sender that takes the batch takes the buffer with it
 * and leaves in *data one it has written (allocated at its first use), so the caller
 * builds its next batch without waiting or copying.
 */
int __must_check mig_streams_give(const struct state_page *pages, uint32_t n, unsigned flags,
				  uint8_t **data, struct errbuf *e);
int __must_check mig_streams_fence(struct errbuf *e);
int __must_check mig_streams_expect(const struct mig_ctrl *hello, struct state_reader *r,
				    struct errbuf *e);
int __must_check mig_streams_accept(int listen_fd, uint64_t max_record, struct errbuf *e);
int __must_check mig_streams_fence_wait(uint64_t seq, struct errbuf *e);
int __must_check mig_streams_finish(struct errbuf *e);
/* ret, or the first extra connection's failure (the cause) if there was one */
int mig_streams_error(struct errbuf *e, int ret);
/* Unblocks every extra connection (cancel); close ends their threads and frees them. */
void mig_streams_shutdown(void);
void mig_streams_close(void);
/* Bytes on the extra connections; the status's per-connection figures (under mig.lock). */
uint64_t mig_streams_bytes(void);
void mig_streams_status_fill(struct mig_status *st);

/* the most a batch's pages take when each is a whole page */
#define MIG_BATCH_DATA ((size_t)STATE_PAGES_MAX * STATE_PAGE_SIZE)

/*
 * migrate --delta (delta.c): mig_delta_start() at the start of an attempt (nothing to do
 * without --delta), mig_delta_stop() at its end or before post-copy. While on, the engine
 * queues each page through mig_delta_page(): out gets the page's data (NULL: it is zero),
 * whole or as a delta (returns 1), in the batch buffer (mig_delta_batch_buf(), which a
 * sender thread may swap for another: mig_streams_give), which mig_delta_batch_sent()
 * empties once the batch is written or handed over. Only the engine thread calls these.
 */
int __must_check mig_delta_start(struct errbuf *e);
void mig_delta_stop(void);
bool mig_delta_on(void);
int mig_delta_page(uint64_t pg, const void *host, struct state_page *out);
uint8_t **mig_delta_batch_buf(void);
void mig_delta_batch_sent(void);

/* Writes one batch on w, compressed as --compress says, and counts it in the status. */
int __must_check mig_pages_write(struct state_writer *w, const struct state_page *pages,
				 uint32_t n, unsigned flags, struct errbuf *e);
/*
 * Installs a PAGES record's pages into guest memory (inflater *z made at the first
 * compressed batch) and counts them in the status; *n: the pages it held.
 */
int __must_check inc_pages_install(const struct state_record *rec, struct state_inflater **z,
				   uint64_t *n, struct errbuf *e);

/* Decodes a PAGES record and inflates it if compressed (one inflater per destination). */
int __must_check inc_pages_decode(const struct state_record *rec, struct state_pages_iter *it,
				  struct errbuf *e);
void mig_state_set_incoming(enum mig_state s);
void mig_incoming_unblock(void);
/*
 * Puts the stream's channel over the connected socket mig.fd: TLS when mig.tls is set
 * (the handshake must complete by deadline_ns), else plain. host: see mig_tls_handshake.
 */
int __must_check mig_channel_open(const char *host, uint64_t deadline_ns, struct errbuf *e);
/*
 * The destination's channel over the accepted socket mig.fd, as mig_channel_open; a
 * plaintext source on a TLS listener is told why (REFUSE), a TLS one on a plaintext
 * listener is named as such.
 */
int __must_check inc_channel_accept(uint64_t deadline_ns, struct errbuf *e);
/* Adds the TLS layer's reason for a failed read or write on the stream, if it has one. */
int mig_channel_error(struct errbuf *e, int ret);
/* Frees the stream reader and writer and closes the connection. */
void mig_stream_close(void);
/* Runs the done callback on the main loop thread. */
void mig_done_cb(void *opaque);

#endif
