/* SPDX-License-Identifier: MIT */
/*
 * Migration parameters: defaults, names and bounds (see params.h). The CLI and the API
 * both end here, so a value one accepts the other accepts too.
 */
#include "migration/params.h"
#include "migration/proto.h"
#include "state/record.h"
#include "state/xbzrle.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void mig_params_init(struct mig_params *p)
{
	memset(p, 0, sizeof(*p));
	p->mode = MIG_MODE_LIVE;
	p->downtime_ms = MIG_DOWNTIME_MS_DEFAULT;
	p->dirty_tracking = -1;
	p->on_stall = MIG_STALL_THROTTLE;
	p->compress = MIG_COMPRESS_NONE;
	p->compress_level = MIG_COMPRESS_LEVEL_DEFAULT;
	p->connections = 1;
}

int mig_params_validate(const struct mig_params *p, struct errbuf *e)
{
	if (p->mode != MIG_MODE_LIVE && p->mode != MIG_MODE_WARM && p->mode != MIG_MODE_POSTCOPY)
		return err_set(e, -EINVAL, "mode must be live, warm or postcopy");
	if (p->downtime_ms < 1 || p->downtime_ms > MIG_DOWNTIME_MS_MAX)
		return err_set(e, -EINVAL, "downtime_ms must be 1 to %llu",
			       (unsigned long long)MIG_DOWNTIME_MS_MAX);
	if (p->bandwidth > MIG_BANDWIDTH_MAX)
		return err_set(e, -EINVAL, "bandwidth must be 0 (no cap) to %llu bytes/s",
			       (unsigned long long)MIG_BANDWIDTH_MAX);
	if (p->max_rounds > MIG_ROUNDS_LIMIT)
		return err_set(e, -EINVAL, "max_rounds must be 0 (no limit) to %llu",
			       (unsigned long long)MIG_ROUNDS_LIMIT);
	if (p->timeout_ms > MIG_TIMEOUT_MS_MAX)
		return err_set(e, -EINVAL, "timeout_ms must be 0 (no limit) to %llu",
			       (unsigned long long)MIG_TIMEOUT_MS_MAX);
	if (p->dirty_tracking != -1 && p->dirty_tracking != VM_DIRTY_BITMAP &&
	    p->dirty_tracking != VM_DIRTY_RING)
		return err_set(e, -EINVAL, "dirty_tracking must be bitmap or ring");
	if (p->on_stall != MIG_STALL_THROTTLE && p->on_stall != MIG_STALL_PAUSE &&
	    p->on_stall != MIG_STALL_CANCEL && p->on_stall != MIG_STALL_POSTCOPY)
		return err_set(e, -EINVAL, "on_stall must be throttle, pause, cancel or postcopy");
	if (p->postcopy_after > MIG_ROUNDS_LIMIT)
		return err_set(e, -EINVAL, "postcopy_after must be 0 (never) to %llu",
			       (unsigned long long)MIG_ROUNDS_LIMIT);
	if ((p->postcopy_after || p->on_stall == MIG_STALL_POSTCOPY) && p->mode != MIG_MODE_LIVE)
		return err_set(e, -EINVAL, "postcopy_after and on_stall postcopy are for live "
					   "migration (mode postcopy switches after the first pass)");
	if ((p->compress != MIG_COMPRESS_NONE && p->compress != MIG_COMPRESS_ZSTD &&
	     p->compress != MIG_COMPRESS_AUTO) ||
	    p->compress_level < STATE_ZSTD_LEVEL_MIN || p->compress_level > STATE_ZSTD_LEVEL_MAX)
		return err_set(e, -EINVAL, "compress must be none, zstd[:LEVEL] or auto[:LEVEL] "
			       "with LEVEL %d to %d", STATE_ZSTD_LEVEL_MIN, STATE_ZSTD_LEVEL_MAX);
	if (p->connections < 1 || p->connections > MIG_CONNECTIONS_MAX)
		return err_set(e, -EINVAL, "connections must be 1 to %llu",
			       (unsigned long long)MIG_CONNECTIONS_MAX);
	/* post-copy's request path and its reconnects are written for one connection */
	if (p->connections > 1 && (p->mode == MIG_MODE_POSTCOPY || p->postcopy_after ||
				   p->on_stall == MIG_STALL_POSTCOPY || p->resume))
		return err_set(e, -EINVAL, "connections above 1 are for warm and live moves; "
					   "post-copy (mode postcopy, postcopy_after, on_stall "
					   "postcopy, resume) uses one connection");
	if (p->delta_cache && (p->delta_cache < XBZRLE_CACHE_MIN ||
			       p->delta_cache > XBZRLE_CACHE_MAX))
		return err_set(e, -EINVAL, "delta must be none or xbzrle[:CACHE_SIZE] with "
			       "CACHE_SIZE 1M to 1T");
	/* deltas are for pages sent again in later live rounds, over any number of connections */
	if (p->delta_cache && (p->mode != MIG_MODE_LIVE || p->resume))
		return err_set(e, -EINVAL, "delta xbzrle is for live moves (not mode warm or "
					   "postcopy, or resume)");
	if (p->tls.dir[0] && p->tls.psk[0])
		return err_set(e, -EINVAL, "tls_dir and tls_psk exclude each other");
	return 0;
}

/* Index of value in the NULL-terminated names, or -1. */
static int mig_params_name_find(const char *value, const char *const *names)
{
	for (int i = 0; names[i]; i++)
		if (!strcmp(value, names[i]))
			return i;
	return -1;
}

/* A string parameter: 1 byte up to what its field holds. */
static int mig_params_string_set(char *field, size_t size, const char *key, const char *value,
				 struct errbuf *e)
{
	if (!value[0] || strlen(value) >= size)
		return err_set(e, -EINVAL, "%s must be 1 to %zu bytes", key, size - 1);
	memcpy(field, value, strlen(value) + 1);
	return 0;
}

/*
 * An unknown name leaves the field out of bounds, so the error is the validation's own
 * (one message per parameter, whichever way the value came in).
 */
int mig_params_choice_set(struct mig_params *p, const char *key, const char *value,
			  struct errbuf *e)
{
	static const char *const modes[] = { "warm", "live", "postcopy", NULL };
	static const char *const dirty[] = { "bitmap", "ring", NULL };
	static const char *const stall[] = { "throttle", "pause", "cancel", "postcopy", NULL };
	int i, ret;

	if (!strcmp(key, "uri")) {
		return mig_params_string_set(p->uri, sizeof(p->uri), key, value, e);
	} else if (!strcmp(key, "tls_dir")) {
		ret = mig_params_string_set(p->tls.dir, sizeof(p->tls.dir), key, value, e);
		return ret < 0 ? ret : mig_params_validate(p, e);
	} else if (!strcmp(key, "tls_psk")) {
		ret = mig_params_string_set(p->tls.psk, sizeof(p->tls.psk), key, value, e);
		return ret < 0 ? ret : mig_params_validate(p, e);
	} else if (!strcmp(key, "tls_hostname")) {
		return mig_params_string_set(p->tls.hostname, sizeof(p->tls.hostname), key, value, e);
	} else if (!strcmp(key, "mode")) {
		i = mig_params_name_find(value, modes);
		p->mode = i < 0 ? 0 : (uint32_t[]){ MIG_MODE_WARM, MIG_MODE_LIVE, MIG_MODE_POSTCOPY }[i];
	} else if (!strcmp(key, "dirty_tracking")) {
		i = mig_params_name_find(value, dirty);
		p->dirty_tracking = i < 0 ? -2 : i == 0 ? VM_DIRTY_BITMAP : VM_DIRTY_RING;
	} else if (!strcmp(key, "on_stall")) {
		i = mig_params_name_find(value, stall);
		p->on_stall = i < 0 ? (enum mig_stall)-1 :
				      (enum mig_stall[]){ MIG_STALL_THROTTLE, MIG_STALL_PAUSE,
							  MIG_STALL_CANCEL, MIG_STALL_POSTCOPY }[i];
	} else if (!strcmp(key, "compress")) {
		static const char *const kinds[] = { "none", "zstd", "auto", NULL };
		const char *colon = strchr(value, ':');
		char kind[8] = "";
		char *end;
		long level = MIG_COMPRESS_LEVEL_DEFAULT;

		if (colon && (size_t)(colon - value) < sizeof(kind))
			memcpy(kind, value, (size_t)(colon - value));
		else if (!colon && strlen(value) < sizeof(kind))
			memcpy(kind, value, strlen(value) + 1);
		i = mig_params_name_find(kind, kinds);
		if (colon) {
			errno = 0;
			level = strtol(colon + 1, &end, 10);
			if (errno || end == colon + 1 || *end || i == 0)
				i = -1;
		}
		p->compress = i < 0 ? (enum mig_compress)-1 :
				      (enum mig_compress[]){ MIG_COMPRESS_NONE, MIG_COMPRESS_ZSTD,
							     MIG_COMPRESS_AUTO }[i];
		p->compress_level = level < INT_MIN || level > INT_MAX ? INT_MIN : (int)level;
	} else if (!strcmp(key, "delta")) {
		uint64_t size = XBZRLE_CACHE_DEFAULT;

		if (!strcmp(value, "none"))
			size = 0;
		else if (strncmp(value, "xbzrle", 6) || (value[6] && value[6] != ':') ||
			 (value[6] == ':' && parse_size(value + 7, &size)))
			size = UINT64_MAX; /* out of bounds: the validation's message */
		p->delta_cache = size;
	} else {
		return err_set(e, -EINVAL, "unknown parameter %s", key);
	}
	return mig_params_validate(p, e);
}
