/* SPDX-License-Identifier: MIT */
/*
 * The migration protocol's control messages and transports. A migration uses two record
 * streams (state/record.h), one each way over one connection; control messages are
 * control records (types 0x100..0x1ff) with small explicit little-endian payloads.
 * docs/migration-protocol.md describes both sides' state machines.
 *
 *   source -> destination: HELLO [STREAMS] CONFIG [PING] [ROUND PAGES... [FENCE] PING]...
 *                          [FENCE] SECTION... DONE COMMIT
 *   destination -> source: ACCEPT|REFUSE [PONG]... READY|ERROR STARTED
 * With STREAMS, each extra connection carries JOIN (answered ACCEPT|REFUSE), then only
 * PAGES and FENCE: the barrier that closes every round on all connections.
 * Post-copy adds MISSING before DONE, and after STARTED: PAGES... COMPLETE one way and
 * REQUEST... COMPLETE the other (docs/migration-protocol.md).
 * Either side may send ABORT (with a reason) instead of its next message.
 */
#ifndef GODWIT_MIGRATION_PROTO_H
#define GODWIT_MIGRATION_PROTO_H

#include "base/util.h"
#include "state/record.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* 2: PING/PONG; 3: PING/PONG in post-copy (its window); 4: PAGES batches with deltas */
#define MIG_PROTOCOL_VERSION 4u
/* HELLO capabilities: what the source may send beyond protocol 2's basics */
#define MIG_CAP_ZSTD 0x1ull /* PAGES batches with the ZSTD flag (docs/state-format.md) */
#define MIG_CAP_STREAMS 0x2ull /* STREAMS follows HELLO: pages also come on extra connections */
#define MIG_CAP_DELTA 0x4ull /* PAGES batches with deltas (migrate --delta), on any connection */
#define MIG_MSG_MAX 1024u /* control payloads and reasons are small */

enum mig_msg {
	MIG_MSG_HELLO = 0x100,   /* u32 protocol version, u32 mode, u64 capabilities */
	MIG_MSG_ACCEPT = 0x101,  /* u32 protocol version */
	MIG_MSG_REFUSE = 0x102,  /* str reason */
	MIG_MSG_ROUND = 0x103,   /* u32 round, u64 reserved (0) */
	MIG_MSG_DONE = 0x104,    /* all memory and state sent: u64 pages sent, u64 bytes */
	MIG_MSG_READY = 0x105,   /* destination loaded and validated everything */
	MIG_MSG_ERROR = 0x106,   /* str reason: the destination failed to load */
	MIG_MSG_COMMIT = 0x107,  /* u64 ns the guest has been paused on the source so far */
	MIG_MSG_STARTED = 0x108, /* u64 ns from COMMIT received to the guest running */
	MIG_MSG_ABORT = 0x109,   /* str reason */
	MIG_MSG_RANGES = 0x10a,  /* u64 nr_ranges, bitmap: the 2 MiB ranges round 0 will send */
	MIG_MSG_PING = 0x10b,    /* u64 token: answer with PONG once everything before it is read */
	MIG_MSG_PONG = 0x10c,    /* u64 the PING's token */
	MIG_MSG_MISSING = 0x10d, /* u64 first page, u64 nr pages, bitmap: pages to fetch later */
	MIG_MSG_REQUEST = 0x10e, /* u64 gpa: the destination faulted on this page, send it now */
	MIG_MSG_COMPLETE = 0x10f, /* post-copy end: u64 pages, u64 max fault latency ns */
	MIG_MSG_STREAMS = 0x110, /* u32 connections in all, 16-byte token the extra ones show */
	MIG_MSG_JOIN = 0x111,    /* first on an extra connection: u32 index, 16-byte token */
	MIG_MSG_FENCE = 0x112,   /* u64 seq: every stream's pages before it come before all after */
};

/* connections of one migration, the first (state and control) included */
#define MIG_STREAMS_MAX 16u
#define MIG_TOKEN_LEN 16u

/* PINGs the destination answers per round (live: one before round 0, one after each) */
#define MIG_PINGS_PER_ROUND_MAX 4

/*
 * Post-copy's background pages run at most this far (bytes of stream) ahead of what the
 * destination has acknowledged reading (PONG): a requested page then waits behind at most
 * this much, not behind every buffer on the way (socket buffers, a router's queue, a
 * receiving thread starved of CPU). A PING goes every MIG_PC_PING_EVERY bytes.
 */
#define MIG_PC_WINDOW (2ull << 20)
#define MIG_PC_PING_EVERY (256ull << 10)

/* MISSING: at most 2^20 pages (a 128 KiB bitmap) per message, 8-aligned first page */
#define MIG_MISSING_CHUNK (1ull << 20)

/* RANGES: one bit per 2 MiB of guest RAM in flat order; at most 256 GiB of guest RAM */
#define MIG_RANGE_SHIFT 21
#define MIG_RANGES_MAX ((256ull << 30) >> MIG_RANGE_SHIFT)

/* post-copy: round 0 while the guest runs, then the switch; memory follows on demand */
enum mig_mode { MIG_MODE_WARM = 1, MIG_MODE_LIVE = 2, MIG_MODE_POSTCOPY = 3 };
/* HELLO's mode when the source reconnects a post-copy migration whose link broke */
#define MIG_HELLO_RESUME 4u

const char *mig_msg_name(uint32_t type);
const char *mig_mode_name(uint32_t mode);

/* A decoded control message. */
struct mig_ctrl {
	uint32_t type;
	uint32_t u32a, u32b;
	uint64_t u64a, u64b;
	char reason[MIG_MSG_MAX + 1];
	uint8_t token[MIG_TOKEN_LEN]; /* STREAMS, JOIN */
	/* RANGES, MISSING: points into the record (decode) or the caller's (send) */
	const uint8_t *bitmap;
};

int __must_check mig_ctrl_send(struct state_writer *w, const struct mig_ctrl *m, struct errbuf *e);
/* Decodes a control record; fails on a non-control record or a malformed payload. */
int __must_check mig_ctrl_decode(const struct state_record *rec, struct mig_ctrl *m,
				 struct errbuf *e);

/* ---- transports: tcp:HOST:PORT or unix:PATH ---- */

struct mig_uri {
	enum { MIG_URI_TCP, MIG_URI_UNIX } kind;
	char host[256];
	char port[16];
	char path[108];
};

int __must_check mig_uri_parse(const char *s, struct mig_uri *u, struct errbuf *e);
/* Connects with a timeout; the socket is blocking, with send/receive timeouts of timeout_ms. */
int __must_check mig_connect(const struct mig_uri *u, int timeout_ms, int *fd, struct errbuf *e);
/*
 * Binds and listens (backlog MIG_STREAMS_MAX: a move's extra connections arrive together).
 * Listens only where told: no wildcard unless given one.
 */
int __must_check mig_listen(const struct mig_uri *u, int *fd, struct errbuf *e);
/* True if every address a tcp: URI's host resolves to is a loopback address. */
bool mig_uri_is_loopback(const struct mig_uri *u);
/* "ADDR:PORT" (or "the unix socket") of a connected socket's peer, for logs. */
void mig_peer_name(int fd, char *out, size_t n);
/* Sets SO_RCVTIMEO/SO_SNDTIMEO (0 = none); a failure is an error, never ignored. */
int __must_check mig_socket_timeouts(int fd, int timeout_ms, struct errbuf *e);

#endif
