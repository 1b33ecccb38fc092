/* SPDX-License-Identifier: MIT */
/*
 * The control socket server: accepts clients on the event loop, splits their input
 * into lines and runs each line through a table of commands. A connection is served
 * one request at a time: while its reply is pending or unsent, its input is not read,
 * so a slow or hostile client can make us hold at most one line and one reply.
 */
#include "api/api.h"
#include "api/client.h"
#include "base/buf.h"
#include "base/log.h"
#include "devices/virtio_blk.h"
#include "migration/migrate.h"
#include "migration/params.h"
#include "migration/proto.h"
#include "migration/snapshot.h"
#include "vmm/vm.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

/* A handler's promise to call api_client_reply() later. */
#define API_REPLY_LATER 1
/* a full line plus its newline */
#define API_IN_CAP (API_LINE_MAX + 1)

struct api_client {
	struct api_server *server;
	int fd;			/* -1 once closed while a reply is pending */
	char *in;		/* API_IN_CAP bytes of unprocessed input */
	size_t in_len;
	size_t in_scanned;	/* leading bytes of in known to hold no newline */
	struct buf out;		/* queued reply bytes */
	size_t out_off;		/* bytes of out already sent */
	uint32_t events;	/* what the loop watches this fd for */
	bool eof;		/* the peer has sent all it will send */
	bool closing;		/* send what is queued, then close */
	bool broken;		/* the connection failed: close now */
	bool nowrite;		/* the peer stopped reading: replies are dropped */
	bool pending;		/* a handler will reply later */
	bool dispatching;	/* inside a handler: a reply must not recurse */
	struct api_client *next;
};

struct api_server {
	struct evloop *loop;
	struct vm *vm;
	int fd;
	char *path;
	dev_t dev;		/* identity of our socket file, so destroy only */
	ino_t ino;		/* unlinks what it created */
	struct api_client *clients;
	unsigned nclients;	/* with an open fd */
	struct api_client *mig_client;	/* waits for the outgoing migration to end */
};

enum api_arg_type { API_ARG_BOOL, API_ARG_STRING, API_ARG_INT };

struct api_arg {
	const char *name;
	enum api_arg_type type;
	bool required;
};

/* What a handler works with. */
struct api_ctx {
	struct api_server *server;
	struct api_client *client;	/* NULL when driven by api_request_handle() */
	json_t *req;			/* the request, arguments already type-checked */
	json_t *reply;			/* {"ok": true}: result fields go here */
};

struct api_command {
	const char *name;
	/* 0: answer with ctx->reply; API_REPLY_LATER: api_client_reply() later; -errno: e */
	int (*fn)(struct api_ctx *ctx, struct errbuf *e);
	const struct api_arg *args;		/* ends with a NULL name; NULL for none */
	void (*after)(struct api_server *s);	/* runs once a successful reply is queued */
};

/* json_string() refuses invalid UTF-8, which a message cut at the errbuf's end can be. */
static json_t *api_json_string(const char *s)
{
	json_t *j = json_string(s);
	char *copy;

	if (j)
		return j;
	copy = strdup(s);
	if (!copy)
		return NULL;
	for (char *p = copy; *p; p++)
		if ((unsigned char)*p >= 0x80)
			*p = '?';
	j = json_string(copy);
	free(copy);
	return j;
}

static json_t *api_error_new(const char *msg)
{
	return json_pack("{s:b, s:o}", "ok", 0, "error", api_json_string(msg));
}

/* Merges fields (reference stolen) into the reply. */
static int api_reply_merge(struct api_ctx *ctx, json_t *fields, struct errbuf *e)
{
	int ret;

	if (!fields)
		return err_set(e, -ENOMEM, "out of memory");
	ret = json_object_update(ctx->reply, fields);
	json_decref(fields);
	return ret ? err_set(e, -ENOMEM, "out of memory") : 0;
}

/* ---- commands ---- */

static json_t *api_disk_json(const struct device_stats *d)
{
	return json_pack("{s:o, s:o, s:b, s:I, s:b, s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, "
			 "s:I, s:I}",
			 "id", api_json_string(d->spec.id), "path", api_json_string(d->spec.path),
			 "readonly", d->spec.readonly, "size", (json_int_t)d->spec.size,
			 "locked", d->locked, "aio", d->aio ? d->aio : "-",
			 "reads", (json_int_t)d->reads, "writes", (json_int_t)d->writes,
			 "bytes_read", (json_int_t)d->bytes_read,
			 "bytes_written", (json_int_t)d->bytes_written,
			 "flushes", (json_int_t)d->flushes, "other_requests", (json_int_t)d->others,
			 "errors", (json_int_t)d->errors,
			 "service_us", (json_int_t)(d->service_ns / 1000),
			 "io_cpu_us", (json_int_t)(d->cpu_ns / 1000),
			 "notifies", (json_int_t)d->notifies);
}

static json_t *api_nic_json(const struct device_stats *d)
{
	char mac[18];
	const uint8_t *m = d->spec.mac;

	snprintf(mac, sizeof(mac), "%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4],
		 m[5]);
	return json_pack("{s:o, s:o, s:s}", "id", api_json_string(d->spec.id), "tap",
			 api_json_string(d->spec.path), "mac", mac);
}

/* "disks" and "nics": each configurable device, from the plain counters devices keep. */
static int api_status_devices(struct api_ctx *ctx, struct errbuf *e)
{
	struct device_stats *st = calloc(DEV_MAX, sizeof(*st));
	json_t *disks = json_array(), *nics = json_array();
	unsigned n;
	int ret = -ENOMEM;

	if (!st || !disks || !nics)
		goto out;
	n = vm_devices_stats(ctx->server->vm, st, DEV_MAX);
	for (unsigned i = 0; i < n; i++) {
		bool disk = !strcmp(st[i].spec.type, VIRTIO_BLK_TYPE);
		json_t *j;

		st[i].spec.id[sizeof(st[i].spec.id) - 1] = '\0';
		st[i].spec.path[sizeof(st[i].spec.path) - 1] = '\0';
		j = disk ? api_disk_json(&st[i]) : api_nic_json(&st[i]);
		if (!j || json_array_append_new(disk ? disks : nics, j))
			goto out;
	}
	ret = api_reply_merge(ctx, json_pack("{s:O, s:O}", "disks", disks, "nics", nics), e);
out:
	json_decref(disks);
	json_decref(nics);
	free(st);
	return ret == -ENOMEM ? err_set(e, ret, "out of memory") : ret;
}

static int api_cmd_status(struct api_ctx *ctx, struct errbuf *e)
{
	struct vm_status st;
	int ret;

	memset(&st, 0, sizeof(st));
	vm_status_get(ctx->server->vm, &st);
	st.name[sizeof(st.name) - 1] = '\0';
	if (json_is_true(json_object_get(ctx->req, "digest"))) {
		char mem[17], state[17];

		if (st.state != VM_STATE_PAUSED)
			return err_set(e, -EBUSY, "digest needs a paused VM");
		ret = vm_digest(ctx->server->vm, mem, state, e);
		if (ret < 0)
			return ret;
		ret = api_reply_merge(ctx, json_pack("{s:{s:s, s:s}}", "digest", "memory", mem,
						     "state", state), e);
		if (ret < 0)
			return ret;
	}
	ret = api_reply_merge(ctx, json_pack("{s:o, s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I}",
					      "name", api_json_string(st.name),
					      "state", vm_state_name(st.state),
					      "memory", (json_int_t)st.memory_bytes,
					      "guest_resident",
					      (json_int_t)vm_guest_resident(ctx->server->vm),
					      "vcpus", (json_int_t)st.vcpus,
					      "uptime_ms", (json_int_t)(st.uptime_ns / 1000000),
					      "paused_ms", (json_int_t)(st.paused_ns / 1000000),
					      "console_dropped", (json_int_t)st.console_dropped,
					      "pid", (json_int_t)getpid()), e);
	return ret < 0 ? ret : api_status_devices(ctx, e);
}

static int api_cmd_pause(struct api_ctx *ctx, struct errbuf *e)
{
	return vm_pause(ctx->server->vm, e);
}

static int api_cmd_resume(struct api_ctx *ctx, struct errbuf *e)
{
	return vm_resume(ctx->server->vm, e);
}

static int api_cmd_stop(struct api_ctx *ctx, struct errbuf *e)
{
	return 0;
}

/* The reply goes out before the loop is asked to stop, so the client sees it. */
static void api_cmd_stop_after(struct api_server *s)
{
	vm_stop_request(s->vm);
}

struct api_snapshot_run {
	struct vm *vm;
	bool resume;      /* the VM was running and is not to be stopped */
	bool resumed;
	uint64_t t0, paused_ns;
	int resume_ret;
	struct errbuf e;
};

/* Guest state is captured: let the guest run while the snapshot is synced. */
static void api_snapshot_captured(void *opaque)
{
	struct api_snapshot_run *r = opaque;

	r->paused_ns = time_mono_ns() - r->t0;
	if (!r->resume)
		return;
	r->resume_ret = vm_resume(r->vm, &r->e);
	r->resumed = r->resume_ret == 0;
}

/*
 * Pauses the VM, writes the snapshot, and resumes it (if it was running) as soon as its
 * state is captured, while the files are synced; with "stop" the VM stays paused and is
 * stopped once the snapshot is complete and synced. A failed snapshot leaves nothing that
 * looks like one, and the guest keeps running.
 */
static int api_cmd_snapshot(struct api_ctx *ctx, struct errbuf *e)
{
	const char *dir = json_string_value(json_object_get(ctx->req, "dir"));
	bool stop = json_is_true(json_object_get(ctx->req, "stop"));
	struct vm *vm = ctx->server->vm;
	struct vm_snapshot_stats st = { 0 };
	struct api_snapshot_run run = { .vm = vm, .t0 = time_mono_ns() };
	struct vm_status vs;
	struct errbuf e2;
	int ret;

	vm_status_get(vm, &vs);
	if (vs.state == VM_STATE_HANDED_OVER)
		return err_set(e, -EPERM, "cannot snapshot: %s", VM_HANDED_OVER_MSG);
	if (vs.state != VM_STATE_RUNNING && vs.state != VM_STATE_PAUSED)
		return err_set(e, -EBUSY, "cannot snapshot a VM that is %s", vm_state_name(vs.state));
	run.resume = vs.state == VM_STATE_RUNNING && !stop;
	ret = vm_pause(vm, e);
	if (ret < 0)
		return ret;
	ret = vm_snapshot_save(vm, dir, &st, api_snapshot_captured, &run, e);
	if (!run.paused_ns)
		run.paused_ns = time_mono_ns() - run.t0;
	if (ret < 0) {
		err_prefix(e, ret, "snapshot %s", dir);
		if (run.resume && !run.resumed && vm_resume(vm, &e2) < 0)
			log_err("resume after a failed snapshot: %s", e2.msg);
		return ret;
	}
	if (run.resume_ret < 0)
		return err_set(e, run.resume_ret, "snapshot written, but resuming failed: %s",
			       run.e.msg);
	if (stop)
		vm_stop_request(vm);
	return api_reply_merge(ctx, json_pack("{s:s, s:I, s:I, s:I, s:I, s:I, s:b}",
					      "dir", dir,
					      "pages_present", (json_int_t)st.pages_present,
					      "pages_zero", (json_int_t)st.pages_zero,
					      "memory_bytes", (json_int_t)st.bytes,
					      "elapsed_ms", (json_int_t)(st.elapsed_ns / 1000000),
					      "paused_ms", (json_int_t)(run.paused_ns / 1000000),
					      "stopped", stop), e);
}

/* ---- migration ---- */

/* The steps reached so far, CLOCK_REALTIME in microseconds since the epoch. */
static json_t *api_mig_times_json(const struct mig_times *t)
{
	const struct { const char *name; uint64_t ns; } steps[] = {
		{ "start", t->start }, { "tracking", t->tracking }, { "pause", t->pause },
		{ "paused", t->paused }, { "ready", t->ready }, { "commit", t->commit },
		{ "started", t->started },
		{ "running", t->running },
	};
	json_t *j = json_object();

	for (size_t i = 0; j && i < ARRAY_SIZE(steps); i++)
		if (steps[i].ns)
			json_object_set_new(j, steps[i].name,
					    json_integer((json_int_t)(steps[i].ns / 1000)));
	return j;
}

static json_t *api_mig_status_json(void)
{
	struct mig_status *st = calloc(1, sizeof(*st));
	json_t *j, *rounds, *pc;

	if (!st)
		return NULL;
	migration_status_get(st);
	rounds = json_array();
	for (uint32_t i = 0; rounds && i < st->nrounds; i++) {
		struct mig_round *r = &st->rounds[i];

		json_array_append_new(rounds, json_pack("{s:I, s:I, s:I, s:I, s:I, s:I}",
			"pages", (json_int_t)r->pages, "bytes", (json_int_t)r->bytes,
			"ms", (json_int_t)(r->duration_ns / 1000000),
			"dirty_pages", (json_int_t)r->dirty_pages,
			"dirty_rate", (json_int_t)r->dirty_rate,
			"throttle_pct", (json_int_t)r->throttle_pct));
	}
	j = json_pack("{s:s, s:s, s:b, s:s, s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:o*, s:I, "
		      "s:I, s:I, s:I}",
		      "state", mig_state_name(st->state),
		      "mode", mig_mode_name(st->mode),
		      "incoming", st->incoming,
		      "uri", st->uri,
		      "dirty_tracking", st->dirty_tracking,
		      "bytes_sent", (json_int_t)st->bytes_sent,
		      "bytes_total", (json_int_t)st->bytes_total,
		      "pages_zero", (json_int_t)st->pages_zero,
		      "pages_normal", (json_int_t)st->pages_normal,
		      "elapsed_ms", (json_int_t)(st->elapsed_ns / 1000000),
		      "throughput", (json_int_t)st->throughput,
		      "round", (json_int_t)st->round,
		      "dirty_rate", (json_int_t)st->dirty_rate,
		      "rounds", rounds,
		      "remaining_bytes", (json_int_t)st->remaining_bytes,
		      "expected_downtime_ms", (json_int_t)st->expected_downtime_ms,
		      "throttle_pct", (json_int_t)st->throttle_pct,
		      "downtime_us", (json_int_t)(st->downtime_ns / 1000));
	if (j && st->state == MIG_STATE_COMPLETED)
		json_object_set_new(j, "downtime_ms", json_real((double)st->downtime_ns / 1e6));
	if (j && st->estimate.bandwidth) /* what expected_downtime_ms is made of (live) */
		json_object_set_new(j, "downtime_estimate", json_pack(
			"{s:I, s:I, s:I, s:I, s:b, s:I}",
			"dirty_sync_us", (json_int_t)(st->estimate.sync_ns / 1000),
			"rtt_us", (json_int_t)(st->estimate.rtt_ns / 1000),
			"bandwidth", (json_int_t)st->estimate.bandwidth,
			"state_bytes", (json_int_t)st->estimate.state_bytes,
			"state_bytes_measured", st->estimate.state_measured,
			"transfer_us", (json_int_t)(st->estimate.transfer_ns / 1000)));
	if (j && st->state_bytes)
		json_object_set_new(j, "state_bytes", json_integer((json_int_t)st->state_bytes));
	if (j && st->times.start)
		json_object_set_new(j, "timeline_unix_us", api_mig_times_json(&st->times));
	if (j) /* non-zero page data before and after compression; ratio 1.0 when none */
		json_object_set_new(j, "compression", json_pack(
			"{s:s, s:b, s:I, s:I, s:f}", "mode", st->compress[0] ? st->compress : "none",
			"compressing", st->compressing,
			"page_bytes", (json_int_t)st->page_bytes,
			"page_bytes_sent", (json_int_t)st->page_bytes_sent,
			"ratio", st->page_bytes_sent ? (double)st->page_bytes /
					(double)st->page_bytes_sent : 1.0));
	if (j) /* pages that went as deltas against the copy sent before, and their bytes */
		json_object_set_new(j, "delta", json_pack(
			"{s:s, s:I, s:I, s:I}", "mode", st->delta[0] ? st->delta : "none",
			"pages", (json_int_t)st->delta_pages,
			"bytes", (json_int_t)st->delta_bytes,
			"saved_bytes", (json_int_t)(st->delta_pages * PAGE_BYTES -
						    MIN(st->delta_bytes,
							st->delta_pages * PAGE_BYTES))));
	if (j) { /* each connection's bytes and its throughput over the whole move */
		json_t *conns = json_array();

		for (uint32_t i = 0; conns && i < st->connections && i < 16; i++)
			json_array_append_new(conns, json_pack("{s:I, s:I}",
				"bytes", (json_int_t)st->stream_bytes[i],
				"throughput", (json_int_t)(st->elapsed_ns ?
					(double)st->stream_bytes[i] * 1e9 / (double)st->elapsed_ns : 0)));
		if (conns)
			json_object_set_new(j, "connections", conns);
	}
	if (j && st->incoming)
		json_object_set_new(j, "announcements", json_integer((json_int_t)st->announced));
	if (j && st->error[0])
		json_object_set_new(j, "error", api_json_string(st->error));
	pc = json_pack("{s:s, s:I, s:I, s:I, s:I, s:I}",
			"phase", st->postcopy ? "postcopy" : "precopy",
			"pages_requested", (json_int_t)st->pages_requested,
			"pages_remaining", (json_int_t)st->pages_remaining,
			"requests_refused", (json_int_t)st->requests_refused,
			"fault_latency_median_us", (json_int_t)(st->fault_latency_median_ns / 1000),
			"fault_latency_max_us", (json_int_t)(st->fault_latency_max_ns / 1000));
	if (j && pc)
		json_object_update(j, pc);
	json_decref(pc);
	if (j && st->tls.offload[0])
		json_object_set_new(j, "tls", json_pack("{s:s, s:s, s:s, s:s}",
							"offload", st->tls.offload,
							"version", st->tls.version,
							"cipher", st->tls.cipher,
							"peer", st->tls.peer));
	if (j && st->digest_memory[0])
		json_object_set_new(j, "digest", json_pack("{s:s, s:s}", "memory", st->digest_memory,
							   "state", st->digest_state));
	free(st);
	return j;
}

static int api_cmd_migrate_status(struct api_ctx *ctx, struct errbuf *e)
{
	return api_reply_merge(ctx, api_mig_status_json(), e);
}

static int api_cmd_migrate_cancel(struct api_ctx *ctx, struct errbuf *e)
{
	return migration_cancel(e);
}

/* The migration ended: answer the `migrate` request; a guest handed over stops here. */
static void api_mig_done(void *opaque)
{
	struct api_server *s = opaque;
	struct api_client *c = s->mig_client;
	struct mig_status st;
	json_t *j = api_mig_status_json();

	migration_status_get(&st);
	s->mig_client = NULL;
	if (c) {
		if (st.state == MIG_STATE_COMPLETED)
			api_client_reply(c, j);
		else {
			api_client_reply_error(c, st.error[0] ? st.error : mig_state_name(st.state));
			json_decref(j);
		}
	} else {
		json_decref(j);
	}
	if (st.state == MIG_STATE_COMPLETED)
		vm_stop_request(s->vm);
}

/*
 * The request's values go into struct mig_params as they are (a negative number becomes
 * one too large) and migration/params.c judges them, with the same bounds as the CLI's.
 */
static int api_cmd_migrate(struct api_ctx *ctx, struct errbuf *e)
{
	static const char *const choices[] = { "uri", "mode", "dirty_tracking", "on_stall",
					       "compress", "delta", "tls_dir", "tls_psk",
					       "tls_hostname" };
	json_t *req = ctx->req;
	struct mig_params p;
	const struct {
		const char *key;
		uint64_t *v;
	} nums[] = {
		{ "downtime_ms", &p.downtime_ms }, { "bandwidth", &p.bandwidth },
		{ "max_rounds", &p.max_rounds }, { "timeout_ms", &p.timeout_ms },
		{ "postcopy_after", &p.postcopy_after }, { "connections", &p.connections },
	};
	int ret;

	mig_params_init(&p);
	for (size_t i = 0; i < ARRAY_SIZE(choices); i++) {
		const char *str = json_string_value(json_object_get(req, choices[i]));

		if (str) {
			ret = mig_params_choice_set(&p, choices[i], str, e);
			if (ret < 0)
				return err_prefix(e, ret, "migrate");
		}
	}
	for (size_t i = 0; i < ARRAY_SIZE(nums); i++) {
		json_t *v = json_object_get(req, nums[i].key);

		if (v)
			*nums[i].v = (uint64_t)json_integer_value(v);
	}
	p.digest = json_is_true(json_object_get(req, "digest"));
	p.resume = json_is_true(json_object_get(req, "resume"));
	ret = mig_params_validate(&p, e);
	if (ret < 0)
		return err_prefix(e, ret, "migrate");
	if (ctx->server->mig_client)
		return err_set(e, -EBUSY, "a migration is already in progress");
	ret = migration_start(ctx->server->vm, ctx->server->loop, &p, api_mig_done, ctx->server, e);
	if (ret < 0)
		return ret;
	if (!ctx->client)
		return 0;
	ctx->server->mig_client = ctx->client;
	return API_REPLY_LATER;
}

static const struct api_arg api_migrate_args[] = {
	{ "uri", API_ARG_STRING, true },
	{ "mode", API_ARG_STRING, false },
	{ "downtime_ms", API_ARG_INT, false },
	{ "bandwidth", API_ARG_INT, false },
	{ "max_rounds", API_ARG_INT, false },
	{ "timeout_ms", API_ARG_INT, false },
	{ "dirty_tracking", API_ARG_STRING, false },
	{ "on_stall", API_ARG_STRING, false },
	{ "postcopy_after", API_ARG_INT, false },
	{ "resume", API_ARG_BOOL, false },
	{ "compress", API_ARG_STRING, false },
	{ "delta", API_ARG_STRING, false },
	{ "connections", API_ARG_INT, false },
	{ "digest", API_ARG_BOOL, false },
	{ "tls_dir", API_ARG_STRING, false },
	{ "tls_psk", API_ARG_STRING, false },
	{ "tls_hostname", API_ARG_STRING, false },
	{ NULL, API_ARG_BOOL, false },
};

static const struct api_arg api_snapshot_args[] = {
	{ "dir", API_ARG_STRING, true },
	{ "stop", API_ARG_BOOL, false },
	{ NULL, API_ARG_BOOL, false },
};

static const struct api_arg api_status_args[] = {
	{ "digest", API_ARG_BOOL, false },
	{ NULL, API_ARG_BOOL, false },
};

static const struct api_command api_commands[] = {
	{ "status", api_cmd_status, api_status_args, NULL },
	{ "pause", api_cmd_pause, NULL, NULL },
	{ "resume", api_cmd_resume, NULL, NULL },
	{ "stop", api_cmd_stop, NULL, api_cmd_stop_after },
	{ "snapshot", api_cmd_snapshot, api_snapshot_args, NULL },
	{ "migrate", api_cmd_migrate, api_migrate_args, NULL },
	{ "migrate-status", api_cmd_migrate_status, NULL, NULL },
	{ "migrate-cancel", api_cmd_migrate_cancel, NULL, NULL },
};

/* ---- request dispatch ---- */

static const struct api_command *api_command_find(const char *name)
{
	for (size_t i = 0; i < ARRAY_SIZE(api_commands); i++)
		if (!strcmp(api_commands[i].name, name))
			return &api_commands[i];
	return NULL;
}

static bool api_arg_type_ok(enum api_arg_type type, json_t *v)
{
	switch (type) {
	case API_ARG_BOOL:
		return json_is_boolean(v);
	case API_ARG_STRING:
		return json_is_string(v);
	case API_ARG_INT:
		return json_is_integer(v);
	}
	return false;
}

static const char *api_arg_type_name(enum api_arg_type type)
{
	switch (type) {
	case API_ARG_BOOL:
		return "a boolean";
	case API_ARG_STRING:
		return "a string";
	case API_ARG_INT:
		return "an integer";
	}
	return "?";
}

static int api_args_check(const struct api_command *cmd, json_t *req, struct errbuf *e)
{
	const struct api_arg *a;
	const char *key;
	json_t *val;

	json_object_foreach(req, key, val) {
		if (!strcmp(key, "cmd"))
			continue;
		for (a = cmd->args; a && a->name; a++)
			if (!strcmp(a->name, key))
				break;
		if (!a || !a->name)
			return err_set(e, -EINVAL, "%s: unknown argument \"%.64s\"", cmd->name, key);
		if (!api_arg_type_ok(a->type, val))
			return err_set(e, -EINVAL, "%s: \"%s\" must be %s", cmd->name, key,
				       api_arg_type_name(a->type));
	}
	for (a = cmd->args; a && a->name; a++)
		if (a->required && !json_object_get(req, a->name))
			return err_set(e, -EINVAL, "%s: missing argument \"%s\"", cmd->name, a->name);
	return 0;
}

/*
 * Parses and runs one request line. Returns 0 with *reply set (a success or an error
 * response), API_REPLY_LATER when the handler will answer through the client, or
 * -ENOMEM. *done is the command whose `after` hook must run once the reply is queued.
 */
static int api_request_run(struct api_server *s, struct api_client *c, const char *line,
			   size_t len, json_t **reply, const struct api_command **done)
{
	struct errbuf e = { .msg = "" };
	const struct api_command *cmd;
	struct api_ctx ctx;
	json_error_t jerr;
	json_t *req, *name;
	int ret;

	*reply = NULL;
	*done = NULL;
	req = json_loadb(line, len, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &jerr);
	if (!req) {
		err_set(&e, -EINVAL, "malformed JSON at column %d: %s", jerr.column, jerr.text);
		goto fail;
	}
	if (!json_is_object(req)) {
		err_set(&e, -EINVAL, "request must be a JSON object");
		goto fail;
	}
	name = json_object_get(req, "cmd");
	if (!name) {
		err_set(&e, -EINVAL, "missing \"cmd\"");
		goto fail;
	}
	if (!json_is_string(name)) {
		err_set(&e, -EINVAL, "\"cmd\" must be a string");
		goto fail;
	}
	cmd = api_command_find(json_string_value(name));
	if (!cmd) {
		err_set(&e, -EINVAL, "unknown command \"%.64s\"", json_string_value(name));
		goto fail;
	}
	if (api_args_check(cmd, req, &e) < 0)
		goto fail;

	ctx = (struct api_ctx){ .server = s, .client = c, .req = req };
	ctx.reply = json_pack("{s:b}", "ok", 1);
	if (!ctx.reply) {
		json_decref(req);
		return -ENOMEM;
	}
	/* set before the call: a handler may reply before it returns */
	if (c)
		c->pending = true;
	ret = cmd->fn(&ctx, &e);
	if (ret == API_REPLY_LATER && c) {
		json_decref(ctx.reply);
		json_decref(req);
		return API_REPLY_LATER;
	}
	if (c)
		c->pending = false;
	if (ret == API_REPLY_LATER)
		ret = err_set(&e, -ENOTSUP, "%s needs a socket client", cmd->name);
	if (ret < 0) {
		json_decref(ctx.reply);
		if (!e.msg[0])
			err_set(&e, ret, "%s: %s", cmd->name, strerror(-ret));
		goto fail;
	}
	json_decref(req);
	*reply = ctx.reply;
	*done = cmd;
	return 0;

fail:
	json_decref(req);
	*reply = api_error_new(e.msg);
	return *reply ? 0 : -ENOMEM;
}

char *api_request_handle(struct api_server *s, const char *line, size_t len)
{
	const struct api_command *done;
	json_t *reply;
	char *out;

	if (api_request_run(s, NULL, line, len, &reply, &done) < 0)
		return NULL;
	out = json_dumps(reply, JSON_COMPACT);
	json_decref(reply);
	if (done && done->after)
		done->after(s);
	return out;
}

/* ---- connections ---- */

static void api_client_free(struct api_client *c)
{
	struct api_client **pp;

	for (pp = &c->server->clients; *pp; pp = &(*pp)->next) {
		if (*pp == c) {
			*pp = c->next;
			break;
		}
	}
	buf_free(&c->out);
	free(c->in);
	free(c);
}

static void api_client_close(struct api_client *c)
{
	struct api_server *s = c->server;

	if (c->fd >= 0) {
		evloop_fd_del(s->loop, c->fd);
		close(c->fd);
		c->fd = -1;
		s->nclients--;
	}
	/* a handler still holds it: api_client_reply() frees it */
	if (!c->pending)
		api_client_free(c);
}

static void api_client_flush(struct api_client *c)
{
	while (c->out_off < c->out.len) {
		ssize_t n = send(c->fd, c->out.data + c->out_off, c->out.len - c->out_off,
				 MSG_NOSIGNAL | MSG_DONTWAIT);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return;
			/* the peer stopped reading; requests it already sent still run */
			c->nowrite = true;
			break;
		}
		c->out_off += (size_t)n;
	}
	buf_reset(&c->out);
	c->out_off = 0;
}

static void api_client_queue(struct api_client *c, json_t *reply)
{
	char *text;

	if (c->nowrite)
		return;
	text = json_dumps(reply, JSON_COMPACT);
	if (!text) {
		c->broken = true;
		return;
	}
	buf_put_bytes(&c->out, text, strlen(text));
	buf_put_u8(&c->out, '\n');
	free(text);
	if (buf_status(&c->out) < 0)
		c->broken = true;
}

static void api_client_queue_error(struct api_client *c, const char *msg)
{
	json_t *reply = api_error_new(msg);

	if (!reply) {
		c->broken = true;
		return;
	}
	api_client_queue(c, reply);
	json_decref(reply);
}

static bool api_line_blank(const char *line, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (line[i] != ' ' && line[i] != '\t' && line[i] != '\r')
			return false;
	return true;
}

static void api_client_line(struct api_client *c, const char *line, size_t len)
{
	const struct api_command *done;
	json_t *reply;
	int ret;

	if (api_line_blank(line, len))
		return;
	c->dispatching = true;
	ret = api_request_run(c->server, c, line, len, &reply, &done);
	c->dispatching = false;
	if (ret == API_REPLY_LATER)
		return;
	if (ret < 0) {
		c->broken = true;
		return;
	}
	api_client_queue(c, reply);
	json_decref(reply);
	api_client_flush(c);
	if (done && done->after)
		done->after(c->server);
}

/* Runs complete lines until one needs waiting for: a later reply or unsent output. */
static void api_client_process(struct api_client *c)
{
	while (!c->broken && !c->pending && !c->closing && c->out.len == 0) {
		char *nl = memchr(c->in + c->in_scanned, '\n', c->in_len - c->in_scanned);
		size_t len;

		if (!nl) {
			c->in_scanned = c->in_len;
			if (c->in_len == API_IN_CAP) {
				char msg[64];

				snprintf(msg, sizeof(msg), "request line too long (max %d bytes)",
					 API_LINE_MAX);
				api_client_queue_error(c, msg);
				api_client_flush(c);
				c->closing = true;
			}
			return;
		}
		len = (size_t)(nl - c->in);
		api_client_line(c, c->in, len);
		c->in_len -= len + 1;
		memmove(c->in, nl + 1, c->in_len);
		c->in_scanned = 0;
		api_client_flush(c);
	}
}

static bool api_client_wants_input(const struct api_client *c)
{
	return !c->pending && !c->closing && !c->eof && c->out.len == 0 &&
	       c->in_len < API_IN_CAP;
}

/* Closes the client when it is done, else watches for what it waits on. */
static void api_client_update(struct api_client *c)
{
	uint32_t events = 0;

	if (c->broken)
		goto close;
	if (!c->pending && c->out.len == 0 && (c->closing || c->eof))
		goto close;	/* any line left is a partial one: dropped */
	if (c->out.len)
		events |= EPOLLOUT;
	if (api_client_wants_input(c))
		events |= EPOLLIN;
	if (events != c->events) {
		if (evloop_fd_mod(c->server->loop, c->fd, events) < 0)
			goto close;
		c->events = events;
	}
	return;

close:
	api_client_close(c);
}

static void api_client_read(struct api_client *c)
{
	ssize_t n = recv(c->fd, c->in + c->in_len, API_IN_CAP - c->in_len, MSG_DONTWAIT);

	if (n > 0)
		c->in_len += (size_t)n;
	else if (n == 0)
		c->eof = true;
	else if (errno == ECONNRESET)
		c->eof = true;
	else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
		c->broken = true;
}

static void api_client_on_event(struct evloop *loop, int fd, uint32_t events, void *opaque)
{
	struct api_client *c = opaque;

	if (events & EPOLLERR)
		c->broken = true;
	/* the peer is gone entirely; a pending reply would find nobody */
	if ((events & EPOLLHUP) && c->pending) {
		api_client_close(c);
		return;
	}
	if (!c->broken && c->out.len)
		api_client_flush(c);
	if (!c->broken && (events & (EPOLLIN | EPOLLHUP)) && api_client_wants_input(c))
		api_client_read(c);
	api_client_process(c);
	api_client_update(c);
}

static void api_client_complete(struct api_client *c, json_t *reply)
{
	if (c->fd < 0) {
		/* the peer left while the handler worked */
		json_decref(reply);
		c->pending = false;
		api_client_free(c);
		return;
	}
	c->pending = false;
	if (reply) {
		api_client_queue(c, reply);
		json_decref(reply);
	} else {
		c->broken = true;
	}
	/* a reply from inside the handler: the dispatch loop carries on */
	if (c->dispatching)
		return;
	api_client_flush(c);
	api_client_process(c);
	api_client_update(c);
}

void api_client_reply(struct api_client *c, json_t *fields)
{
	json_t *reply = json_pack("{s:b}", "ok", 1);

	if (reply && fields && json_object_update(reply, fields) < 0) {
		json_decref(reply);
		reply = NULL;
	}
	json_decref(fields);
	api_client_complete(c, reply);
}

void api_client_reply_error(struct api_client *c, const char *msg)
{
	api_client_complete(c, api_error_new(msg));
}

/* Tells a client over the limit why, without waiting for it. */
static void api_client_refuse(int fd, const char *msg)
{
	json_t *reply = api_error_new(msg);
	char *text = reply ? json_dumps(reply, JSON_COMPACT) : NULL;

	if (text) {
		size_t n = strlen(text);

		text[n] = '\n';
		if (send(fd, text, n + 1, MSG_NOSIGNAL | MSG_DONTWAIT) < 0) {
			/* nothing more to do for a client we are turning away */
		}
		text[n] = '\0';
	}
	free(text);
	json_decref(reply);
}

static int api_client_new(struct api_server *s, int fd)
{
	struct api_client *c = calloc(1, sizeof(*c));
	int ret;

	if (!c)
		return -ENOMEM;
	c->in = malloc(API_IN_CAP);
	if (!c->in) {
		free(c);
		return -ENOMEM;
	}
	buf_init(&c->out);
	c->server = s;
	c->fd = fd;
	c->events = EPOLLIN;
	ret = evloop_fd_add(s->loop, fd, EPOLLIN, api_client_on_event, c);
	if (ret < 0) {
		buf_free(&c->out);
		free(c->in);
		free(c);
		return ret;
	}
	c->next = s->clients;
	s->clients = c;
	s->nclients++;
	return 0;
}

static void api_server_on_accept(struct evloop *loop, int fd, uint32_t events, void *opaque)
{
	static struct log_ratelimit rl = LOG_RATELIMIT_INIT(5000, 3);
	struct api_server *s = opaque;
	uint32_t suppressed;

	for (;;) {
		int cfd = accept4(s->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		int ret;

		if (cfd < 0) {
			ret = errno;
			if (ret == EINTR || ret == ECONNABORTED)
				continue;
			if (ret != EAGAIN && ret != EWOULDBLOCK &&
			    log_ratelimit_allow(&rl, &suppressed))
				log_warn("api socket %s: accept: %s (%u more suppressed)", s->path,
					 strerror(ret), suppressed);
			return;
		}
		if (s->nclients >= API_CLIENTS_MAX) {
			char msg[64];

			snprintf(msg, sizeof(msg), "too many api clients (max %d)",
				 API_CLIENTS_MAX);
			api_client_refuse(cfd, msg);
			close(cfd);
			continue;
		}
		ret = api_client_new(s, cfd);
		if (ret < 0) {
			log_warn("api socket %s: new client: %s", s->path, strerror(-ret));
			close(cfd);
		}
	}
}

/* ---- the listening socket ---- */

static int api_socket_dir_missing(const char *path, struct errbuf *e)
{
	char dir[sizeof(((struct sockaddr_un *)0)->sun_path)];
	char *slash;

	snprintf(dir, sizeof(dir), "%s", path);
	slash = strrchr(dir, '/');
	if (!slash)
		snprintf(dir, sizeof(dir), ".");
	else if (slash == dir)
		slash[1] = '\0';
	else
		*slash = '\0';
	return err_set(e, -ENOENT, "api socket %s: directory %s does not exist", path, dir);
}

/* Refuses a live socket or a non-socket at path; removes a stale socket. */
static int api_socket_clear(const char *path, const struct sockaddr_un *sa, struct errbuf *e)
{
	struct stat st;
	int fd, ret, err;

	if (lstat(path, &st) < 0) {
		if (errno == ENOENT)
			return 0;	/* a missing directory is reported by bind() */
		return err_set(e, -errno, "api socket %s: %s", path, strerror(errno));
	}
	if (!S_ISSOCK(st.st_mode))
		return err_set(e, -EEXIST, "api socket %s: exists and is not a socket", path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return err_set(e, -errno, "api socket %s: socket: %s", path, strerror(errno));
	ret = connect(fd, (const struct sockaddr *)sa, sizeof(*sa));
	err = errno;
	close(fd);
	/* EAGAIN: its backlog is full, so someone is listening */
	if (ret == 0 || err == EAGAIN)
		return err_set(e, -EADDRINUSE, "api socket %s is in use by another godwit", path);
	if (err != ECONNREFUSED)
		return err_set(e, -err, "api socket %s: connect: %s", path, strerror(err));
	if (unlink(path) < 0 && errno != ENOENT)
		return err_set(e, -errno, "remove stale api socket %s: %s", path, strerror(errno));
	log_debug("api socket %s: replaced a stale socket", path);
	return 0;
}

static int api_socket_listen(struct api_server *s, const char *path, struct errbuf *e)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	size_t len = strlen(path);
	struct stat st;
	mode_t mask;
	int ret, fd;

	if (!len)
		return err_set(e, -EINVAL, "api socket path is empty");
	if (len >= sizeof(sa.sun_path))
		return err_set(e, -ENAMETOOLONG, "api socket path too long (max %zu bytes)",
			       sizeof(sa.sun_path) - 1);
	memcpy(sa.sun_path, path, len + 1);
	ret = api_socket_clear(path, &sa, e);
	if (ret < 0)
		return ret;

	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return err_set(e, -errno, "api socket %s: socket: %s", path, strerror(errno));
	/* created 0600 from the start: nobody else ever gets to connect */
	mask = umask(0177);
	ret = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
	umask(mask);
	if (ret < 0) {
		ret = -errno;
		if (ret == -ENOENT)
			api_socket_dir_missing(path, e);
		else if (ret == -EADDRINUSE)
			err_set(e, ret, "api socket %s is in use by another godwit", path);
		else
			err_set(e, ret, "bind %s: %s", path, strerror(-ret));
		goto err_close;
	}
	if (chmod(path, 0600) < 0 || stat(path, &st) < 0) {
		ret = err_set(e, -errno, "api socket %s: %s", path, strerror(errno));
		goto err_unlink;
	}
	if (listen(fd, API_CLIENTS_MAX) < 0) {
		ret = err_set(e, -errno, "listen %s: %s", path, strerror(errno));
		goto err_unlink;
	}
	s->path = strdup(path);
	if (!s->path) {
		ret = err_set(e, -ENOMEM, "api socket %s: out of memory", path);
		goto err_unlink;
	}
	s->fd = fd;
	s->dev = st.st_dev;
	s->ino = st.st_ino;
	return 0;

err_unlink:
	unlink(path);
err_close:
	close(fd);
	return ret;
}

int api_server_create(struct api_server **out, struct evloop *loop, const char *path,
		      struct vm *vm, struct errbuf *e)
{
	struct api_server *s = calloc(1, sizeof(*s));
	int ret;

	if (!s)
		return err_set(e, -ENOMEM, "api server: out of memory");
	s->loop = loop;
	s->vm = vm;
	s->fd = -1;
	if (path) {
		ret = api_socket_listen(s, path, e);
		if (ret < 0)
			goto err_free;
		ret = evloop_fd_add(loop, s->fd, EPOLLIN, api_server_on_accept, s);
		if (ret < 0) {
			err_set(e, ret, "api socket %s: event loop: %s", path, strerror(-ret));
			goto err_socket;
		}
	}
	*out = s;
	return 0;

err_socket:
	close(s->fd);
	unlink(s->path);
	free(s->path);
err_free:
	free(s);
	return ret;
}

void api_server_destroy(struct api_server *s)
{
	struct stat st;

	if (!s)
		return;
	while (s->clients) {
		struct api_client *c = s->clients;

		if (c->fd >= 0) {
			if (c->out.len)
				api_client_flush(c);	/* e.g. the reply to "stop" */
			evloop_fd_del(s->loop, c->fd);
			close(c->fd);
		}
		api_client_free(c);
	}
	if (s->fd >= 0) {
		evloop_fd_del(s->loop, s->fd);
		close(s->fd);
	}
	/* only our own socket: another godwit may have replaced it since */
	if (s->path && lstat(s->path, &st) == 0 && st.st_dev == s->dev && st.st_ino == s->ino)
		unlink(s->path);
	free(s->path);
	free(s);
}
