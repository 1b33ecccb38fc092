/* SPDX-License-Identifier: MIT */
/*
 * godwit status|pause|resume|stop: one request to a running godwit's control socket.
 * status prints the VMM's answer as one JSON object on stdout; the others are silent
 * on success. A refusal from the VMM is printed as "godwit CMD: <error>", exit 1.
 */
#include "cli/ctl.h"
#include "api/client.h"

#include <getopt.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* long enough for a pause that waits on every vCPU of a loaded host */
#define CTL_TIMEOUT_MS 30000

enum { OPT_API = 256, OPT_DIGEST };

struct ctl_command {
	const char *name;
	const char *what;
	bool digest;	/* takes --digest */
	bool prints;	/* prints the answer */
};

static const struct ctl_command ctl_commands[] = {
	{ "status", "print the VM's state as one JSON object", true, true },
	{ "pause", "pause every vCPU; returns once none is running guest code", false, false },
	{ "resume", "resume every vCPU", false, false },
	{ "stop", "stop the VM; `godwit run` then exits 0", false, false },
};

static const struct option ctl_longopts[] = {
	{ "api-socket", required_argument, NULL, OPT_API },
	{ "help", no_argument, NULL, 'h' },
	{ NULL, 0, NULL, 0 },
};

static const struct option ctl_status_longopts[] = {
	{ "api-socket", required_argument, NULL, OPT_API },
	{ "digest", no_argument, NULL, OPT_DIGEST },
	{ "help", no_argument, NULL, 'h' },
	{ NULL, 0, NULL, 0 },
};

static void ctl_usage(const struct ctl_command *cmd, FILE *out)
{
	fprintf(out, "usage: godwit %s --api-socket PATH%s\n  %s\n", cmd->name,
		cmd->digest ? " [--digest]" : "", cmd->what);
	if (cmd->digest)
		fputs("  --digest  also a checksum of guest memory and device state (paused VM)\n",
		      out);
}

static const struct ctl_command *ctl_command_find(const char *name)
{
	for (size_t i = 0; i < ARRAY_SIZE(ctl_commands); i++)
		if (!strcmp(ctl_commands[i].name, name))
			return &ctl_commands[i];
	return NULL;
}

static char *ctl_request_build(const struct ctl_command *cmd, bool digest)
{
	json_t *req = json_pack("{s:s}", "cmd", cmd->name);
	char *line = NULL;

	if (req && (!digest || !json_object_set_new(req, "digest", json_true())))
		line = json_dumps(req, JSON_COMPACT);
	json_decref(req);
	return line;
}

/* Checks the VMM's answer and prints what the command shows. Returns the exit code. */
static int ctl_response_show(const struct ctl_command *cmd, const char *path, const char *line)
{
	json_error_t jerr;
	json_t *resp = json_loads(line, 0, &jerr);
	json_t *ok = resp ? json_object_get(resp, "ok") : NULL;
	char *text;
	int ret = 1;

	if (!json_is_boolean(ok)) {
		fprintf(stderr, "godwit %s: malformed response from %s: %.100s\n", cmd->name, path,
			line);
		goto out;
	}
	if (!json_is_true(ok)) {
		const char *msg = json_string_value(json_object_get(resp, "error"));

		fprintf(stderr, "godwit %s: %s\n", cmd->name, msg ? msg : "request refused");
		goto out;
	}
	ret = 0;
	if (!cmd->prints)
		goto out;
	json_object_del(resp, "ok");
	text = json_dumps(resp, 0);
	if (!text || printf("%s\n", text) < 0 || fflush(stdout) != 0) {
		fprintf(stderr, "godwit %s: cannot print the response\n", cmd->name);
		ret = 1;
	}
	free(text);
out:
	json_decref(resp);
	return ret;
}

int cli_ctl_main(int argc, char **argv)
{
	const struct ctl_command *cmd = argc > 0 ? ctl_command_find(argv[0]) : NULL;
	struct errbuf e = { .msg = "" };
	const char *path = NULL;
	bool digest = false, help = false;
	char *req, *resp;
	int c, ret;

	if (!cmd) {
		fprintf(stderr, "godwit: unknown command '%s'\n", argc > 0 ? argv[0] : "");
		return 2;
	}
	/* 0, not 1: glibc then also forgets a half-parsed option group of an earlier call */
	optind = 0;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":h", cmd->digest ? ctl_status_longopts : ctl_longopts,
				NULL)) != -1) {
		switch (c) {
		case OPT_API:
			if (!*optarg) {
				fprintf(stderr, "godwit %s: --api-socket: empty path\n", cmd->name);
				return 2;
			}
			path = optarg;
			break;
		case OPT_DIGEST:
			digest = true;
			break;
		case 'h':
			help = true;
			break;
		case ':':
			fprintf(stderr, "godwit %s: option %s needs a value\n", cmd->name,
				argv[optind - 1]);
			return 2;
		default:
			if (optopt)
				fprintf(stderr, "godwit %s: unknown option -%c\n", cmd->name, optopt);
			else
				fprintf(stderr, "godwit %s: unknown option %.*s\n", cmd->name,
					(int)strcspn(argv[optind - 1], "="), argv[optind - 1]);
			return 2;
		}
	}
	if (help) {
		ctl_usage(cmd, stdout);
		return 0;
	}
	if (optind < argc) {
		fprintf(stderr, "godwit %s: unexpected argument '%s'\n", cmd->name, argv[optind]);
		return 2;
	}
	if (!path) {
		fprintf(stderr, "godwit %s: --api-socket PATH is required\n", cmd->name);
		return 2;
	}

	req = ctl_request_build(cmd, digest);
	if (!req) {
		fprintf(stderr, "godwit %s: out of memory\n", cmd->name);
		return 1;
	}
	ret = api_client_call(path, req, &resp, CTL_TIMEOUT_MS, &e);
	free(req);
	if (ret < 0) {
		fprintf(stderr, "godwit %s: %s\n", cmd->name, e.msg);
		return 1;
	}
	ret = ctl_response_show(cmd, path, resp);
	free(resp);
	return ret;
}
