/* SPDX-License-Identifier: MIT */
/* godwit snapshot (through the control socket) and godwit inspect (offline). */
#include "api/client.h"
#include "cli/cli.h"
#include "state/inspect.h"

#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <libgen.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* a snapshot of a large guest to a slow disk takes a while */
#define SNAPSHOT_TIMEOUT_MS (3600 * 1000)

enum { OPT_API = 256, OPT_STOP };

static void snapshot_usage(FILE *out)
{
	fputs("usage: godwit snapshot --api-socket PATH DIR [--stop]\n"
	      "  pause the VM, write its complete state to the new directory DIR, then resume\n"
	      "  it (or, with --stop, stop it once the snapshot is complete and synced)\n", out);
}

/* The VMM may run in another directory: send an absolute path (DIR itself does not exist). */
static int snapshot_dir_absolute(const char *dir, char *out, size_t len)
{
	char *d1 = strdup(dir), *d2 = strdup(dir);
	char parent[PATH_MAX];
	int ret = -EINVAL;

	if (!d1 || !d2)
		goto out;
	if (!realpath(dirname(d1), parent)) {
		ret = -errno;
		goto out;
	}
	ret = snprintf(out, len, "%s/%s", strcmp(parent, "/") ? parent : "", basename(d2)) <
			      (int)len ? 0 : -ENAMETOOLONG;
out:
	free(d1);
	free(d2);
	return ret;
}

int cli_snapshot_main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "api-socket", required_argument, NULL, OPT_API },
		{ "stop", no_argument, NULL, OPT_STOP },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *sock = NULL, *dir;
	char abs[PATH_MAX], *line = NULL, *resp = NULL;
	struct errbuf e = { { 0 } };
	json_t *req, *r;
	bool stop = false;
	int c, ret = 1;

	optind = 1;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
		switch (c) {
		case OPT_API:
			sock = optarg;
			break;
		case OPT_STOP:
			stop = true;
			break;
		case 'h':
			snapshot_usage(stdout);
			return 0;
		case ':':
			fprintf(stderr, "godwit snapshot: option %s needs a value\n", argv[optind - 1]);
			return 2;
		default:
			fprintf(stderr, "godwit snapshot: unknown option %s\n", argv[optind - 1]);
			return 2;
		}
	}
	if (!sock) {
		fprintf(stderr, "godwit snapshot: --api-socket PATH is required\n");
		return 2;
	}
	if (optind != argc - 1) {
		fprintf(stderr, "godwit snapshot: %s\n",
			optind >= argc ? "the snapshot directory DIR is required" :
					 "only one snapshot directory may be given");
		return 2;
	}
	dir = argv[optind];
	if (snapshot_dir_absolute(dir, abs, sizeof(abs)) < 0) {
		fprintf(stderr, "godwit snapshot: %s: parent directory not found\n", dir);
		return 1;
	}
	req = json_pack("{s:s, s:s, s:b}", "cmd", "snapshot", "dir", abs, "stop", stop);
	line = req ? json_dumps(req, JSON_COMPACT) : NULL;
	json_decref(req);
	if (!line) {
		fprintf(stderr, "godwit snapshot: out of memory\n");
		return 1;
	}
	if (api_client_call(sock, line, &resp, SNAPSHOT_TIMEOUT_MS, &e) < 0) {
		fprintf(stderr, "godwit snapshot: %s\n", e.msg);
		goto out;
	}
	r = json_loads(resp, 0, NULL);
	if (!r || !json_is_object(r)) {
		fprintf(stderr, "godwit snapshot: malformed response from the VMM\n");
	} else if (!json_is_true(json_object_get(r, "ok"))) {
		fprintf(stderr, "godwit snapshot: %s\n",
			json_string_value(json_object_get(r, "error")) ?: "failed");
	} else {
		printf("snapshot %s: %lld pages written, %lld zero pages skipped, %lld ms "
		       "(guest paused %lld ms)%s\n", abs,
		       (long long)json_integer_value(json_object_get(r, "pages_present")),
		       (long long)json_integer_value(json_object_get(r, "pages_zero")),
		       (long long)json_integer_value(json_object_get(r, "elapsed_ms")),
		       (long long)json_integer_value(json_object_get(r, "paused_ms")),
		       stop ? ", VM stopped" : "");
		ret = 0;
	}
	json_decref(r);
out:
	free(line);
	free(resp);
	return ret;
}

int cli_inspect_main(int argc, char **argv)
{
	struct errbuf e = { { 0 } };

	if (argc == 2 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help"))) {
		puts("usage: godwit inspect DIR|FILE\n"
		     "  print a snapshot directory or a captured migration stream: header,\n"
		     "  configuration, sections (name, instance, version, size, CRC) and memory");
		return 0;
	}
	if (argc != 2) {
		fprintf(stderr, "godwit inspect: give one snapshot directory or stream file\n");
		return 2;
	}
	if (state_inspect_path(argv[1], stdout, &e) < 0) {
		fflush(stdout);
		fprintf(stderr, "godwit inspect: %s\n", e.msg);
		return 1;
	}
	return 0;
}
