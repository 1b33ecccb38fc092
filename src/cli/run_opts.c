/* SPDX-License-Identifier: MIT */
/* `godwit run` option parsing and validation. */
#include "cli/run_opts.h"

#include <errno.h>
#include <getopt.h>
#include <string.h>

#define RUN_MAX_CPUS 64

enum {
	OPT_MEMORY = 256, OPT_CPUS, OPT_KERNEL, OPT_CMDLINE, OPT_SERIAL, OPT_API, OPT_NAME,
	OPT_RESTORE, OPT_PAUSED, OPT_RESTORE_MODE, OPT_INCOMING, OPT_DIRTY, OPT_INITRD,
};

static const struct option run_longopts[] = {
	{ "memory", required_argument, NULL, OPT_MEMORY },
	{ "cpus", required_argument, NULL, OPT_CPUS },
	{ "kernel", required_argument, NULL, OPT_KERNEL },
	{ "cmdline", required_argument, NULL, OPT_CMDLINE },
	{ "initrd", required_argument, NULL, OPT_INITRD },
	{ "serial", required_argument, NULL, OPT_SERIAL },
	{ "api-socket", required_argument, NULL, OPT_API },
	{ "name", required_argument, NULL, OPT_NAME },
	{ "restore", required_argument, NULL, OPT_RESTORE },
	{ "paused", no_argument, NULL, OPT_PAUSED },
	{ "restore-mode", required_argument, NULL, OPT_RESTORE_MODE },
	{ "incoming", required_argument, NULL, OPT_INCOMING },
	{ "dirty-tracking", required_argument, NULL, OPT_DIRTY },
	{ "help", no_argument, NULL, 'h' },
	{ NULL, 0, NULL, 0 },
};

void run_opts_usage(FILE *out)
{
	fputs("usage: godwit run --memory SIZE [--cpus N] --kernel FILE [--cmdline STR]\n"
	      "                  [--initrd FILE] [--serial stdio|file:PATH|none]\n"
	      "                  --api-socket PATH [--name NAME]\n"
	      "  FILE: a bzImage or ELF vmlinux (Linux 64-bit boot protocol) or a PVH ELF\n"
	      "       godwit run --restore DIR [--restore-mode lazy|eager] [--paused]\n"
	      "                  --api-socket PATH [--serial ...] [--name NAME]\n"
	      "       godwit run --incoming URI [--paused] --api-socket PATH [--serial ...]\n"
	      "                  [--name NAME]\n"
	      "  every form also takes --dirty-tracking bitmap|ring (default bitmap): how a live\n"
	      "  migration of this VM finds written pages; the ring must be chosen at start\n"
	      "  SIZE: 64M, 1G, 8G ... (16M to 256G, a multiple of 2M); N: 1 to 64 vCPUs\n"
	      "  URI: tcp:HOST:PORT or unix:PATH\n", out);
}

static int run_opts_check(struct run_opts *o, struct errbuf *e)
{
	int modes = !!o->kernel + !!o->restore + !!o->incoming;

	if (o->help)
		return 0;
	if (!o->api_socket)
		return err_set(e, -EINVAL, "--api-socket PATH is required");
	if (modes == 0)
		return err_set(e, -EINVAL, "one of --kernel, --restore or --incoming is required");
	if (o->kernel && o->restore)
		return err_set(e, -EINVAL, "--kernel conflicts with --restore (the kernel comes "
					   "from the snapshot)");
	if (o->incoming && (o->kernel || o->restore))
		return err_set(e, -EINVAL, "--incoming conflicts with --%s",
			       o->kernel ? "kernel" : "restore");
	if (o->kernel && !o->memory_set)
		return err_set(e, -EINVAL, "--memory SIZE is required with --kernel");
	if (o->restore || o->incoming) {
		const char *what = o->restore ? "--restore" : "--incoming";

		if (o->memory_set)
			return err_set(e, -EINVAL, "--memory conflicts with %s (memory size "
						   "comes from the %s)", what,
				       o->restore ? "snapshot" : "migration source");
		if (o->cpus_set)
			return err_set(e, -EINVAL, "--cpus conflicts with %s", what);
		if (o->cmdline)
			return err_set(e, -EINVAL, "--cmdline conflicts with %s", what);
		if (o->initrd)
			return err_set(e, -EINVAL, "--initrd conflicts with %s", what);
	}
	if (!o->restore && o->restore_mode_set)
		return err_set(e, -EINVAL, "--restore-mode needs --restore");
	if (o->kernel && o->paused)
		return err_set(e, -EINVAL, "--paused needs --restore or --incoming");
	if (o->incoming && strncmp(o->incoming, "tcp:", 4) && strncmp(o->incoming, "unix:", 5))
		return err_set(e, -EINVAL, "--incoming %s: URI must be tcp:HOST:PORT or unix:PATH",
			       o->incoming);
	return 0;
}

int run_opts_parse(int argc, char **argv, struct run_opts *o, struct errbuf *e)
{
	uint64_t v;
	int c;

	memset(o, 0, sizeof(*o));
	o->cpus = 1;
	o->serial = RUN_SERIAL_STDIO;
	optind = 1;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":h", run_longopts, NULL)) != -1) {
		switch (c) {
		case OPT_MEMORY:
			if (parse_size(optarg, &v) < 0)
				return err_set(e, -EINVAL, "--memory %s: not a size (use e.g. 256M, 1G)",
					       optarg);
			if (v < 16 * MiB || v > 256 * GiB || v % (2 * MiB))
				return err_set(e, -EINVAL, "--memory %s: must be 16M to 256G and a "
							   "multiple of 2M", optarg);
			o->memory = v;
			o->memory_set = true;
			break;
		case OPT_CPUS:
			if (parse_u64(optarg, 1, RUN_MAX_CPUS, &v) < 0)
				return err_set(e, -EINVAL, "--cpus %s: must be a number from 1 to %d",
					       optarg, RUN_MAX_CPUS);
			o->cpus = (unsigned)v;
			o->cpus_set = true;
			break;
		case OPT_KERNEL:
			o->kernel = optarg;
			break;
		case OPT_CMDLINE:
			o->cmdline = optarg;
			break;
		case OPT_INITRD:
			if (!*optarg)
				return err_set(e, -EINVAL, "--initrd: empty path");
			o->initrd = optarg;
			break;
		case OPT_SERIAL:
			if (!strcmp(optarg, "stdio")) {
				o->serial = RUN_SERIAL_STDIO;
			} else if (!strcmp(optarg, "none")) {
				o->serial = RUN_SERIAL_NONE;
			} else if (!strncmp(optarg, "file:", 5) && optarg[5]) {
				o->serial = RUN_SERIAL_FILE;
				o->serial_path = optarg + 5;
			} else {
				return err_set(e, -EINVAL, "--serial %s: use stdio, file:PATH or none",
					       optarg);
			}
			break;
		case OPT_API:
			if (!*optarg)
				return err_set(e, -EINVAL, "--api-socket: empty path");
			o->api_socket = optarg;
			break;
		case OPT_NAME:
			if (!*optarg || strlen(optarg) >= 64)
				return err_set(e, -EINVAL, "--name must be 1 to 63 characters");
			o->name = optarg;
			break;
		case OPT_RESTORE:
			o->restore = optarg;
			break;
		case OPT_PAUSED:
			o->paused = true;
			break;
		case OPT_RESTORE_MODE:
			if (!strcmp(optarg, "lazy"))
				o->restore_eager = false;
			else if (!strcmp(optarg, "eager"))
				o->restore_eager = true;
			else
				return err_set(e, -EINVAL, "--restore-mode %s: use lazy or eager",
					       optarg);
			o->restore_mode_set = true;
			break;
		case OPT_INCOMING:
			o->incoming = optarg;
			break;
		case OPT_DIRTY:
			if (!strcmp(optarg, "ring"))
				o->dirty_ring = true;
			else if (!strcmp(optarg, "bitmap"))
				o->dirty_ring = false;
			else
				return err_set(e, -EINVAL, "--dirty-tracking %s: use bitmap or ring",
					       optarg);
			break;
		case 'h':
			o->help = true;
			break;
		case ':':
			return err_set(e, -EINVAL, "option %s needs a value", argv[optind - 1]);
		default:
			return err_set(e, -EINVAL, "unknown option %s", argv[optind - 1]);
		}
	}
	if (optind < argc)
		return err_set(e, -EINVAL, "unexpected argument '%s'", argv[optind]);
	return run_opts_check(o, e);
}
