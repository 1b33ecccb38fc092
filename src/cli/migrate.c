/* SPDX-License-Identifier: MIT */
/*
 * godwit migrate, migrate-status and migrate-cancel. `migrate` sends one request that
 * the VMM answers when the migration has ended; meanwhile, on a terminal, it polls
 * migrate-status and redraws a progress line.
 */
#include "api/client.h"
#include "cli/cli.h"
#include "migration/params.h"

#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MIGRATE_TIMEOUT_MS (24 * 3600 * 1000)
#define STATUS_TIMEOUT_MS 10000

enum {
	OPT_API = 256, OPT_MODE, OPT_DOWNTIME, OPT_BANDWIDTH, OPT_ROUNDS, OPT_TIMEOUT, OPT_DIRTY,
	OPT_STALL, OPT_DIGEST, OPT_JSON, OPT_POSTCOPY_AFTER, OPT_RESUME, OPT_COMPRESS, OPT_TLS_DIR,
	OPT_TLS_PSK, OPT_TLS_HOSTNAME, OPT_CONNECTIONS, OPT_DELTA,
};

static void migrate_usage(FILE *out)
{
	fputs("usage: godwit migrate --api-socket PATH [--mode live|warm|postcopy] [--downtime-ms N]\n"
	      "                      [--bandwidth RATE] [--max-rounds N] [--timeout S]\n"
	      "                      [--dirty-tracking bitmap|ring] [--postcopy-after auto|N]\n"
	      "                      [--on-stall throttle|pause|cancel|postcopy]\n"
	      "                      [--compress none|zstd[:LEVEL]|auto[:LEVEL]] [--connections N]\n"
	      "                      [--delta none|xbzrle[:CACHE_SIZE]]\n"
	      "                      [--json] [--digest]\n"
	      "                      [--tls-dir DIR [--tls-hostname NAME] | --tls-psk FILE] URI\n"
	      "       godwit migrate --api-socket PATH --resume URI\n"
	      "  move the running guest to a godwit started with `run --incoming URI`\n"
	      "  URI: tcp:HOST:PORT or unix:PATH; RATE: bytes per second, e.g. 100M, 1G\n"
	      "  live (default): copy memory in rounds while the guest runs, pause for the\n"
	      "  remainder (target --downtime-ms, default 300); warm: pause, then copy\n"
	      "  --max-rounds N, --timeout S: limits of the live rounds (0, the default: none)\n"
	      "  postcopy: one pass, then the guest runs on the destination and fetches the\n"
	      "  rest (lost if the source dies before the end); --postcopy-after N|auto: live\n"
	      "  rounds, then post-copy after N rounds or when they stall; --resume: reconnect\n"
	      "  a post-copy whose link broke (state postcopy-paused) to the destination\n"
	      "  (without TLS options: over TLS with those the migration started with)\n"
	      "  --compress: zstd (LEVEL 1-19, default 1) each batch of pages that shrinks;\n"
	      "  auto: only while the link, not the CPU, is the bound; none (default)\n"
	      "  --connections N: spread pages over N connections (1-16, default 1; warm and\n"
	      "  live moves: post-copy uses one)\n"
	      "  --delta xbzrle: a page sent again in a live move goes as its difference from\n"
	      "  the copy sent before, kept in a cache of CACHE_SIZE (default 64M, 1M-1T), over\n"
	      "  any number of connections; none (default)\n"
	      "  --json: print the final migration status as JSON; --digest: include a digest\n"
	      "  of the paused guest taken just before the handover (adds to the downtime)\n"
	      "  --tls-dir DIR: TLS 1.3 with ca-cert.pem, client-cert.pem, client-key.pem; the\n"
	      "  destination's certificate must name --tls-hostname (default: the URI's host)\n"
	      "  --tls-psk FILE: TLS 1.3 with the first key of FILE (lines identity:hexkey)\n", out);
}

struct migrate_call {
	const char *sock;
	char *line;
	char *resp;
	struct errbuf e;
	int ret;
	_Atomic bool done;
};

static void *migrate_call_thread(void *arg)
{
	struct migrate_call *c = arg;

	c->ret = api_client_call(c->sock, c->line, &c->resp, MIGRATE_TIMEOUT_MS, &c->e);
	c->done = true;
	return NULL;
}

static json_t *status_fetch(const char *sock)
{
	struct errbuf e;
	char *resp = NULL;
	json_t *j;

	if (api_client_call(sock, "{\"cmd\":\"migrate-status\"}", &resp, STATUS_TIMEOUT_MS, &e) < 0)
		return NULL;
	j = json_loads(resp, 0, NULL);
	free(resp);
	return j;
}

static long long jint(json_t *o, const char *k)
{
	return (long long)json_integer_value(json_object_get(o, k));
}

static double compress_ratio(json_t *st)
{
	json_t *c = json_object_get(st, "compression");

	return json_is_real(json_object_get(c, "ratio")) ?
		       json_real_value(json_object_get(c, "ratio")) : 1.0;
}

/* ", delta 1200 pages (saved 4 MiB)" with --delta, else nothing */
static void progress_delta(json_t *st, char *out, size_t n)
{
	json_t *d = json_object_get(st, "delta");

	out[0] = '\0';
	if (!strcmp(json_string_value(json_object_get(d, "mode")) ?: "none", "none"))
		return;
	snprintf(out, n, ", delta %lld pages (saved %lld MiB)", jint(d, "pages"),
		 jint(d, "saved_bytes") >> 20);
}

/* " (auto: on)" while --compress auto is compressing, " (auto: off)" while not, else nothing */
static const char *progress_auto(json_t *st)
{
	json_t *c = json_object_get(st, "compression");
	const char *mode = json_string_value(json_object_get(c, "mode"));

	if (!mode || strncmp(mode, "auto", 4))
		return "";
	return json_is_true(json_object_get(c, "compressing")) ? " (auto: on)" : " (auto: off)";
}

/* ", 2 connections 40/38 MiB/s" with several connections, else nothing */
static void progress_streams(json_t *st, char *out, size_t n)
{
	json_t *conns = json_object_get(st, "connections");
	size_t len;

	out[0] = '\0';
	if (json_array_size(conns) < 2)
		return;
	len = (size_t)snprintf(out, n, ", %zu connections ", json_array_size(conns));
	for (size_t i = 0; i < json_array_size(conns) && len < n; i++)
		len += (size_t)snprintf(out + len, n - len, "%s%lld", i ? "/" : "",
					jint(json_array_get(conns, i), "throughput") >> 20);
	if (len < n)
		snprintf(out + len, n - len, " MiB/s");
}

static void progress_print(json_t *st)
{
	char streams[256], delta[96];
	const char *state = json_string_value(json_object_get(st, "state"));

	if (!state)
		return;
	if (!strcmp(json_string_value(json_object_get(st, "phase")) ?: "", "postcopy")) {
		/* the guest runs on the destination: what matters is what is still here */
		fprintf(stderr, "\r\033[K%s post-copy: %lld MiB sent, %lld MiB/s, %lld pages "
			"still here, %lld requested", state, jint(st, "bytes_sent") >> 20,
			jint(st, "throughput") >> 20, jint(st, "pages_remaining"),
			jint(st, "pages_requested"));
		return;
	}
	progress_streams(st, streams, sizeof(streams));
	progress_delta(st, delta, sizeof(delta));
	fprintf(stderr, "\r\033[K%s round %lld: %lld/%lld MiB sent, %lld MiB/s, dirty %lld pages/s, "
		"remaining %lld MiB, expected downtime %lld ms, throttle %lld%%, "
		"compression %.2fx%s%s%s",
		state, jint(st, "round"), jint(st, "bytes_sent") >> 20,
		jint(st, "bytes_total") >> 20, jint(st, "throughput") >> 20, jint(st, "dirty_rate"),
		jint(st, "remaining_bytes") >> 20, jint(st, "expected_downtime_ms"),
		jint(st, "throttle_pct"), compress_ratio(st), progress_auto(st), delta, streams);
}

/*
 * Options are checked here, before the VMM is asked, by the same validation the VMM's
 * API applies (migration/params.c): p holds the values so far, req the request to send.
 */
static int migrate_opt_set(struct mig_params *p, json_t *req, const char *key, uint64_t *field,
			   uint64_t v, struct errbuf *e)
{
	*field = v;
	if (mig_params_validate(p, e) < 0)
		return -EINVAL;
	json_object_set_new(req, key, json_integer((json_int_t)v));
	return 0;
}

/* s is a whole number of units of scale (a product too large for the field: out of bounds) */
static int migrate_opt_number(struct mig_params *p, json_t *req, const char *key, uint64_t *field,
			      const char *s, uint64_t scale, struct errbuf *e)
{
	uint64_t v;

	if (parse_u64(s, 0, UINT64_MAX, &v) < 0)
		return err_set(e, -EINVAL, "not a whole number");
	if (__builtin_mul_overflow(v, scale, &v))
		v = UINT64_MAX;
	return migrate_opt_set(p, req, key, field, v, e);
}

/* Sets key to s if the validation knows that name for it. */
static int migrate_opt_choice(struct mig_params *p, json_t *req, const char *key, const char *s,
			      struct errbuf *e)
{
	if (mig_params_choice_set(p, key, s, e) < 0)
		return -EINVAL;
	json_object_set_new(req, key, json_string(s));
	return 0;
}

/* Sets key to the absolute path of s: the VMM that reads the file runs elsewhere. */
static int migrate_opt_path(struct mig_params *p, json_t *req, const char *key, const char *s,
			    struct errbuf *e)
{
	char *abs = realpath(s, NULL);
	int ret;

	if (!abs)
		return err_set(e, -errno, "%s", strerror(errno));
	ret = migrate_opt_choice(p, req, key, abs, e);
	free(abs);
	return ret;
}

int cli_migrate_main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "api-socket", required_argument, NULL, OPT_API },
		{ "mode", required_argument, NULL, OPT_MODE },
		{ "downtime-ms", required_argument, NULL, OPT_DOWNTIME },
		{ "bandwidth", required_argument, NULL, OPT_BANDWIDTH },
		{ "max-rounds", required_argument, NULL, OPT_ROUNDS },
		{ "timeout", required_argument, NULL, OPT_TIMEOUT },
		{ "dirty-tracking", required_argument, NULL, OPT_DIRTY },
		{ "on-stall", required_argument, NULL, OPT_STALL },
		{ "postcopy-after", required_argument, NULL, OPT_POSTCOPY_AFTER },
		{ "resume", no_argument, NULL, OPT_RESUME },
		{ "digest", no_argument, NULL, OPT_DIGEST },
		{ "compress", required_argument, NULL, OPT_COMPRESS },
		{ "connections", required_argument, NULL, OPT_CONNECTIONS },
		{ "delta", required_argument, NULL, OPT_DELTA },
		{ "json", no_argument, NULL, OPT_JSON },
		{ "tls-dir", required_argument, NULL, OPT_TLS_DIR },
		{ "tls-psk", required_argument, NULL, OPT_TLS_PSK },
		{ "tls-hostname", required_argument, NULL, OPT_TLS_HOSTNAME },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct migrate_call call = { 0 };
	struct mig_params p;
	struct errbuf e;
	json_t *req = json_object(), *r;
	bool tty = isatty(STDERR_FILENO), json_out = false;
	pthread_t th;
	uint64_t v;
	int c, ret = 0, longindex = 0;

	optind = 1;
	opterr = 0;
	mig_params_init(&p);
	json_object_set_new(req, "cmd", json_string("migrate"));
	while ((c = getopt_long(argc, argv, ":h", opts, &longindex)) != -1) {
		switch (c) {
		case OPT_API:
			call.sock = optarg;
			break;
		case OPT_MODE:
			ret = migrate_opt_choice(&p, req, "mode", optarg, &e);
			break;
		case OPT_DOWNTIME:
			ret = migrate_opt_number(&p, req, "downtime_ms", &p.downtime_ms, optarg, 1, &e);
			break;
		case OPT_BANDWIDTH:
			ret = parse_size(optarg, &v);
			if (ret < 0)
				err_set(&e, ret, "not a size (like 100M or 1G)");
			else
				ret = migrate_opt_set(&p, req, "bandwidth", &p.bandwidth, v, &e);
			break;
		case OPT_ROUNDS:
			ret = migrate_opt_number(&p, req, "max_rounds", &p.max_rounds, optarg, 1, &e);
			break;
		case OPT_TIMEOUT:
			ret = migrate_opt_number(&p, req, "timeout_ms", &p.timeout_ms, optarg, 1000,
						 &e);
			break;
		case OPT_DIRTY:
			ret = migrate_opt_choice(&p, req, "dirty_tracking", optarg, &e);
			break;
		case OPT_STALL:
			ret = migrate_opt_choice(&p, req, "on_stall", optarg, &e);
			break;
		case OPT_POSTCOPY_AFTER:
			/* auto: when the rounds stall, which is what --on-stall postcopy says */
			if (!strcmp(optarg, "auto"))
				ret = migrate_opt_choice(&p, req, "on_stall", "postcopy", &e);
			else
				ret = migrate_opt_number(&p, req, "postcopy_after", &p.postcopy_after,
							 optarg, 1, &e);
			break;
		case OPT_RESUME:
			json_object_set_new(req, "resume", json_true());
			break;
		case OPT_COMPRESS:
			ret = migrate_opt_choice(&p, req, "compress", optarg, &e);
			break;
		case OPT_DELTA:
			ret = migrate_opt_choice(&p, req, "delta", optarg, &e);
			break;
		case OPT_CONNECTIONS:
			ret = migrate_opt_number(&p, req, "connections", &p.connections, optarg, 1,
						 &e);
			break;
		case OPT_DIGEST:
			json_object_set_new(req, "digest", json_true());
			break;
		case OPT_JSON:
			json_out = true;
			break;
		case OPT_TLS_DIR:
		case OPT_TLS_PSK:
			ret = migrate_opt_path(&p, req, c == OPT_TLS_DIR ? "tls_dir" : "tls_psk", optarg,
					       &e);
			break;
		case OPT_TLS_HOSTNAME:
			ret = migrate_opt_choice(&p, req, "tls_hostname", optarg, &e);
			break;
		case 'h':
			migrate_usage(stdout);
			json_decref(req);
			return 0;
		case ':':
			fprintf(stderr, "godwit migrate: option %s needs a value\n", argv[optind - 1]);
			json_decref(req);
			return 2;
		default:
			fprintf(stderr, "godwit migrate: unknown option %s\n", argv[optind - 1]);
			json_decref(req);
			return 2;
		}
		if (ret < 0)
			goto bad_value;
	}
	ret = 1; /* until the VMM reports success */
	if (!call.sock || optind != argc - 1) {
		fprintf(stderr, "godwit migrate: %s\n", !call.sock ? "--api-socket PATH is required" :
			optind >= argc ? "the destination URI is required" : "only one URI may be given");
		json_decref(req);
		return 2;
	}
	json_object_set_new(req, "uri", json_string(argv[optind]));
	call.line = json_dumps(req, JSON_COMPACT);
	json_decref(req);
	if (!call.line || pthread_create(&th, NULL, migrate_call_thread, &call)) {
		fprintf(stderr, "godwit migrate: out of resources\n");
		free(call.line);
		return 1;
	}
	for (unsigned tick = 1; !call.done; tick++) {
		/* notice the end within 5 ms; redraw the progress line every 200 ms */
		usleep(5000);
		if (tty && !call.done && tick % 40 == 0) {
			json_t *st = status_fetch(call.sock);

			if (st)
				progress_print(st);
			json_decref(st);
		}
	}
	pthread_join(th, NULL);
	if (tty)
		fputs("\r\033[K", stderr);
	if (call.ret < 0) {
		fprintf(stderr, "godwit migrate: %s\n", call.e.msg);
		goto out;
	}
	r = json_loads(call.resp, 0, NULL);
	if (!r || !json_is_object(r)) {
		fprintf(stderr, "godwit migrate: malformed response from the VMM\n");
	} else if (!json_is_true(json_object_get(r, "ok"))) {
		fprintf(stderr, "godwit migrate: %s\n",
			json_string_value(json_object_get(r, "error")) ?: "failed");
	} else if (json_out) {
		char *out;

		json_object_del(r, "ok");
		out = json_dumps(r, JSON_COMPACT | JSON_PRESERVE_ORDER);
		if (out)
			puts(out);
		free(out);
		ret = 0;
	} else {
		json_t *rounds = json_object_get(r, "rounds");
		char delta[96];

		progress_delta(r, delta, sizeof(delta));
		printf("migration completed: %s, %zu round%s, %lld MiB sent (%lld pages, %lld zero), "
		       "%lld ms total, downtime %.1f ms, compression %.2fx%s\n",
		       json_string_value(json_object_get(r, "mode")) ?: "?",
		       json_array_size(rounds), json_array_size(rounds) == 1 ? "" : "s",
		       jint(r, "bytes_sent") >> 20, jint(r, "pages_normal"), jint(r, "pages_zero"),
		       jint(r, "elapsed_ms"), json_real_value(json_object_get(r, "downtime_ms")),
		       compress_ratio(r), delta);
		ret = 0;
	}
	json_decref(r);
out:
	free(call.line);
	free(call.resp);
	return ret;

bad_value:
	fprintf(stderr, "godwit migrate: --%s %s: %s\n", opts[longindex].name, optarg, e.msg);
	json_decref(req);
	return 2;
}

/* migrate-status and migrate-cancel: one request, the answer printed or checked. */
int cli_migrate_ctl_main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "api-socket", required_argument, NULL, OPT_API },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	bool status = !strcmp(argv[0], "migrate-status");
	const char *sock = NULL;
	struct errbuf e;
	char *resp = NULL;
	json_t *r;
	int c, ret = 1;

	optind = 1;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
		if (c == OPT_API) {
			sock = optarg;
		} else if (c == 'h') {
			printf("usage: godwit %s --api-socket PATH\n  %s\n", argv[0],
			       status ? "print the migration's state as one JSON object" :
					"cancel the outgoing migration; the guest keeps running here");
			return 0;
		} else {
			fprintf(stderr, "godwit %s: %s %s\n", argv[0],
				c == ':' ? "option needs a value:" : "unknown option", argv[optind - 1]);
			return 2;
		}
	}
	if (!sock || optind != argc) {
		fprintf(stderr, "godwit %s: %s\n", argv[0], !sock ? "--api-socket PATH is required" :
			"unexpected argument");
		return 2;
	}
	if (api_client_call(sock, status ? "{\"cmd\":\"migrate-status\"}" :
					   "{\"cmd\":\"migrate-cancel\"}", &resp, STATUS_TIMEOUT_MS,
			    &e) < 0) {
		fprintf(stderr, "godwit %s: %s\n", argv[0], e.msg);
		return 1;
	}
	r = json_loads(resp, 0, NULL);
	if (!r || !json_is_object(r)) {
		fprintf(stderr, "godwit %s: malformed response from the VMM\n", argv[0]);
	} else if (!json_is_true(json_object_get(r, "ok"))) {
		fprintf(stderr, "godwit %s: %s\n", argv[0],
			json_string_value(json_object_get(r, "error")) ?: "failed");
	} else {
		if (status) {
			char *out;

			json_object_del(r, "ok");
			out = json_dumps(r, JSON_COMPACT | JSON_PRESERVE_ORDER);
			if (out)
				puts(out);
			free(out);
		}
		ret = 0;
	}
	json_decref(r);
	free(resp);
	return ret;
}
