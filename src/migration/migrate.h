/* SPDX-License-Identifier: MIT */
/*
 * Migration engine: the source (warm: pause then copy; live: copy in rounds while the
 * guest runs, then a short stop-and-copy) and the destination, each on one thread of
 * its own so the control socket keeps answering. One migration per process at a time.
 * Handover is two-phase: the destination loads and validates everything and answers
 * READY; only then does the source send COMMIT. Before COMMIT any failure resumes the
 * guest on the source; after it the source never resumes.
 */
#ifndef GODWIT_MIGRATION_MIGRATE_H
#define GODWIT_MIGRATION_MIGRATE_H

#include "base/util.h"
#include "vmm/vm.h"

#include <stdbool.h>
#include <stdint.h>

enum mig_state {
	MIG_STATE_NONE,
	MIG_STATE_SETUP,      /* connecting, handshake, configuration check */
	MIG_STATE_ACTIVE,     /* memory moving */
	MIG_STATE_COMPLETING, /* guest paused: last pages, state, handover */
	MIG_STATE_COMPLETED,
	MIG_STATE_FAILED,
	MIG_STATE_CANCELLED,
	/* post-copy's link broke: both sides keep everything until `migrate --resume` */
	MIG_STATE_POSTCOPY_PAUSED,
};

enum mig_stall { MIG_STALL_THROTTLE, MIG_STALL_PAUSE, MIG_STALL_CANCEL, MIG_STALL_POSTCOPY };
/* PAGES compression: never, always (batches that shrink), or while the link is the bound */
enum mig_compress { MIG_COMPRESS_NONE, MIG_COMPRESS_ZSTD, MIG_COMPRESS_AUTO };

#define MIG_TLS_PATH_MAX 4096

/* TLS for the migration channel; all empty: plaintext. dir and psk exclude each other. */
struct mig_tls_opts {
	char dir[MIG_TLS_PATH_MAX]; /* QEMU's layout: ca-cert.pem, server-*.pem, client-*.pem */
	char psk[MIG_TLS_PATH_MAX]; /* a file of identity:hexkey lines (TLS 1.3 external PSK) */
	char hostname[256];	    /* source: the name the server's certificate must carry */
};

/* What a TLS channel negotiated; offload empty: no TLS. */
struct mig_tls_info {
	char offload[16]; /* "kernel" (kTLS) or "userspace" (OpenSSL) */
	char version[16];
	char cipher[64];
	char peer[256]; /* the peer certificate's subject, or psk:IDENTITY */
};

struct mig_params {
	uint32_t mode;          /* MIG_MODE_WARM or MIG_MODE_LIVE */
	uint64_t downtime_ms;   /* target pause (live) */
	uint64_t bandwidth;     /* bytes/s cap, 0 = none */
	uint64_t max_rounds;    /* 0 = no limit (but at most MIG_ROUNDS_LIMIT, params.h) */
	uint64_t timeout_ms;    /* 0 = no limit (for the iteration phase) */
	/* bounds and defaults: migration/params.h, checked by mig_params_validate() */
	int dirty_tracking;     /* -1: the VM's, else enum vm_dirty_mode */
	enum mig_stall on_stall;
	uint64_t postcopy_after; /* 0: never; N: switch to post-copy after N live rounds */
	bool digest;            /* verification: digest the paused guest before COMMIT */
	bool resume;            /* reconnect a post-copy migration whose link broke */
	enum mig_compress compress;
	int compress_level;     /* zstd level, STATE_ZSTD_LEVEL_MIN..MAX */
	uint64_t connections;   /* 1..MIG_CONNECTIONS_MAX (params.h): pages spread over them */
	/* delta encoding of rewritten pages: 0 off, else its cache's bytes (state/xbzrle.h) */
	uint64_t delta_cache;
	char uri[512];
	struct mig_tls_opts tls;
};

#define MIG_ROUNDS_MAX 64

struct mig_round {
	uint64_t pages;          /* pages sent in the round */
	uint64_t bytes;
	uint64_t duration_ns;
	uint64_t dirty_pages;    /* found dirty when the round ended */
	uint64_t dirty_rate;     /* pages/s dirtied during the round */
	unsigned throttle_pct;
};

struct mig_status {
	enum mig_state state;
	bool incoming;
	uint32_t mode;
	char uri[512];
	char dirty_tracking[16];
	uint64_t bytes_sent;     /* on the wire, both directions' payloads of this side */
	uint64_t bytes_total;    /* sent + still to send (estimate while live) */
	uint64_t pages_zero;
	uint64_t pages_normal;
	/* non-zero page data, and what it travelled as (less once compressed) */
	uint64_t page_bytes;
	uint64_t page_bytes_sent;
	char compress[16];       /* "none", "zstd:LEVEL", "auto:LEVEL" */
	uint32_t connections;    /* in use (1: the first only) */
	uint64_t stream_bytes[16]; /* per connection, the first (state and control) included */
	bool compressing;        /* batches are compressed now (auto switches it) */
	/* --delta: "none" or "xbzrle:CACHE_BYTES"; pages sent (received) as deltas, their bytes */
	char delta[32];
	uint64_t delta_pages;
	uint64_t delta_bytes;
	uint64_t elapsed_ns;
	uint64_t throughput;     /* bytes/s over the whole migration */
	uint64_t downtime_ns;    /* for a completed migration */
	/*
	 * When each step happened, CLOCK_REALTIME ns (0: not reached), so that what the guest
	 * felt can be lined up with the pause and the resume: on one host exactly, across
	 * hosts as well as their clocks agree.
	 */
	struct mig_times {
		uint64_t start;    /* source: the move began; destination: the source connected */
		uint64_t tracking; /* source, live: dirty logging on, round 0 begins */
		uint64_t pause;    /* source: the guest's pause was asked for */
		uint64_t paused;   /* source: every vCPU out of KVM_RUN */
		uint64_t ready;    /* source: READY received (last round, state and the
				    * destination's load done); destination: READY sent */
		uint64_t commit;   /* source: COMMIT about to be sent; destination: received */
		uint64_t started;  /* source: STARTED received; destination: vCPUs asked to run
				    * (where the downtime it reports ends) */
		uint64_t running;  /* destination: the last vCPU about to enter KVM_RUN */
	} times;
	uint64_t announced;      /* destination: announcements sent for the guest (RARPs) */
	uint32_t round;
	uint32_t nrounds;        /* entries used in rounds[] */
	struct mig_round rounds[MIG_ROUNDS_MAX];
	uint64_t dirty_rate;     /* pages/s, last round */
	uint64_t remaining_bytes;
	uint64_t expected_downtime_ms;
	/*
	 * What expected_downtime_ms is made of (live), each measured during this migration:
	 * the last dirty sync, the control round trip (PING/PONG, the smallest seen; the
	 * handover costs two), the bandwidth the last round achieved until its data had
	 * arrived, and the remaining pages plus the vCPU and device state over it.
	 */
	struct mig_estimate {
		uint64_t sync_ns;
		uint64_t rtt_ns;
		uint64_t bandwidth;      /* bytes/s */
		uint64_t state_bytes;    /* measured at this process's last completion, else a bound */
		bool state_measured;
		uint64_t transfer_ns;    /* (remaining_bytes + state_bytes) / bandwidth */
	} estimate;
	uint64_t state_bytes;    /* vCPU and device state sent (once completing) */
	unsigned throttle_pct;
	char digest_memory[17], digest_state[17]; /* with mig_params.digest */
	struct mig_tls_info tls;
	/* post-copy: the guest runs on the destination and its last pages follow */
	bool postcopy;           /* phase: postcopy (else precopy) */
	uint64_t pages_requested; /* faults the destination asked the source for */
	uint64_t pages_remaining; /* pages still on the source */
	uint64_t requests_refused; /* requests outside guest memory (source) */
	uint64_t fault_latency_median_ns, fault_latency_max_ns; /* request to installed */
	/* an engine error (ERRBUF_LEN) with the URI (512) and a sentence of advice */
	char error[2 * ERRBUF_LEN + 512];
};

const char *mig_state_name(enum mig_state st);
/*
 * Starts an outgoing migration on its own thread. done(opaque) runs on the main loop
 * thread once it has ended (completed, failed or cancelled).
 */
int __must_check migration_start(struct vm *vm, struct evloop *loop, const struct mig_params *p,
				 void (*done)(void *opaque), void *opaque, struct errbuf *e);
/* Cancels the outgoing migration if COMMIT was not sent yet; the guest keeps running here. */
int __must_check migration_cancel(struct errbuf *e);
void migration_status_get(struct mig_status *st);

/* Cancels (before COMMIT) and joins any migration thread; for process exit. */
void migration_shutdown(void);

struct mig_incoming_opts {
	enum vm_serial_mode serial;
	const char *serial_path;
	const char *kvm_path;
	bool paused;   /* keep the guest paused after the handover (tests) */
	enum vm_dirty_mode dirty;
	const struct device_override *overrides; /* --disk-override */
	unsigned noverrides;
	struct mig_tls_opts tls;
	bool insecure; /* allow a plaintext listener on an address other than loopback */
};

/*
 * Listens on uri (synchronously, so errors are immediate) and accepts one migration on
 * its own thread into vm (created with vm_incoming_create()). On failure the process
 * exits non-zero having run nothing; on success the guest runs here.
 */
int __must_check migration_incoming_start(struct vm *vm, struct evloop *loop, const char *uri,
					  const struct mig_incoming_opts *o, struct errbuf *e);

#endif
