/* SPDX-License-Identifier: MIT */
/*
 * Migration parameters: their defaults, their names and the one validation that every
 * way of starting a migration goes through (the `godwit migrate` options, checked before
 * the request is sent, and the API's migrate request, checked before anything starts).
 * One set of bounds, in the API's units. This file knows no JSON and no VM.
 */
#ifndef GODWIT_MIGRATION_PARAMS_H
#define GODWIT_MIGRATION_PARAMS_H

#include "base/util.h"
#include "migration/migrate.h"

#include <stdint.h>

#define MIG_DOWNTIME_MS_DEFAULT 300
#define MIG_DOWNTIME_MS_MAX 3600000ull       /* 1 h: a target, not a timeout */
#define MIG_BANDWIDTH_MAX (1ull << 50)       /* bytes/s; 0 = no cap */
#define MIG_ROUNDS_LIMIT 100000ull           /* max_rounds bound; also the engine's own cap */
#define MIG_TIMEOUT_MS_MAX (86400ull * 1000) /* 24 h; 0 = no limit */
#define MIG_CONNECTIONS_MAX 16ull            /* the protocol's MIG_STREAMS_MAX */
#define MIG_COMPRESS_LEVEL_DEFAULT 1         /* zstd's fastest: the aim is the link's pace */

/*
 * The defaults: live, 300 ms target, no cap, no round or time limit, throttle on stall, no
 * compression.
 */
void mig_params_init(struct mig_params *p);

/*
 * Checks every field but the URI (migration_start parses that) against its bounds; the
 * message names the API's key and the bounds ("timeout_ms must be 0 (no limit) to
 * 86400000"). Fields are wide enough that a negative or oversized request value stays
 * out of bounds instead of wrapping into them.
 */
int __must_check mig_params_validate(const struct mig_params *p, struct errbuf *e);

/* Sets a choice by its name ("mode": live|warm|postcopy, "dirty_tracking": bitmap|ring,
 * "on_stall": throttle|pause|cancel|postcopy, "compress": none|zstd[:LEVEL]|auto[:LEVEL],
 * "delta": none|xbzrle[:CACHE_SIZE], a size as "64M"),
 * the URI or a TLS string ("tls_dir", "tls_psk", "tls_hostname"); -EINVAL naming the key
 * otherwise. */
int __must_check mig_params_choice_set(struct mig_params *p, const char *key, const char *value,
				       struct errbuf *e);

#endif
