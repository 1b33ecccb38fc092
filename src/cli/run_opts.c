/* SPDX-License-Identifier: MIT */
/* `godwit run` option parsing and validation. */
#include "cli/run_opts.h"
#include "devices/virtio_blk.h"
#include "devices/virtio_net.h"
#include "state/record.h"

#include <errno.h>
#include <getopt.h>
#include <string.h>

#define RUN_MAX_CPUS 64

enum {
	OPT_MEMORY = 256, OPT_CPUS, OPT_KERNEL, OPT_CMDLINE, OPT_SERIAL, OPT_API, OPT_NAME,
	OPT_RESTORE, OPT_PAUSED, OPT_RESTORE_MODE, OPT_INCOMING, OPT_DIRTY, OPT_INITRD,
	OPT_DISK, OPT_DISK_OVERRIDE, OPT_NET, OPT_NET_OVERRIDE, OPT_ANNOUNCE, OPT_TLS_DIR,
	OPT_TLS_PSK, OPT_INSECURE,
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
	{ "disk", required_argument, NULL, OPT_DISK },
	{ "disk-override", required_argument, NULL, OPT_DISK_OVERRIDE },
	{ "net", required_argument, NULL, OPT_NET },
	{ "net-override", required_argument, NULL, OPT_NET_OVERRIDE },
	{ "announce", required_argument, NULL, OPT_ANNOUNCE },
	{ "tls-dir", required_argument, NULL, OPT_TLS_DIR },
	{ "tls-psk", required_argument, NULL, OPT_TLS_PSK },
	{ "insecure", no_argument, NULL, OPT_INSECURE },
	{ "help", no_argument, NULL, 'h' },
	{ NULL, 0, NULL, 0 },
};

void run_opts_usage(FILE *out)
{
	fputs("usage: godwit run --memory SIZE [--cpus N] --kernel FILE [--cmdline STR]\n"
	      "                  [--initrd FILE] [--serial stdio|file:PATH|none]\n"
	      "                  --api-socket PATH [--name NAME]\n"
	      "  FILE: a bzImage or ELF vmlinux (Linux 64-bit boot protocol) or a PVH ELF\n"
	      "                  [--disk path=FILE[,readonly=on][,id=NAME][,aio=thread|uring]]...\n"
	      "                  [--net tap=NAME[,mac=MAC][,id=NAME]]...\n"
	      "       godwit run --restore DIR [--restore-mode lazy|eager] [--paused]\n"
	      "                  --api-socket PATH [--serial ...] [--name NAME]\n"
	      "                  [--disk-override id=NAME[,path=FILE][,aio=thread|uring]]...\n"
	      "                  [--net-override id=NAME,tap=NAME]... [--announce ...]\n"
	      "       godwit run --incoming URI [--memory SIZE] [--paused] --api-socket PATH\n"
	      "                  [--serial ...] [--name NAME]\n"
	      "                  [--disk-override id=NAME[,path=FILE][,aio=...]]...\n"
	      "                  [--net-override id=NAME,tap=NAME]... [--announce ...]\n"
	      "                  [--tls-dir DIR | --tls-psk FILE | --insecure]\n"
	      "  --tls-dir DIR: mutual TLS 1.3 (DIR holds ca-cert.pem, server-cert.pem,\n"
	      "  server-key.pem; the source needs a client certificate from that CA);\n"
	      "  --tls-psk FILE: TLS 1.3 with a pre-shared key (lines identity:hexkey);\n"
	      "  tcp: on an address other than loopback needs one of them, or --insecure\n"
	      "  every form also takes --dirty-tracking bitmap|ring (default bitmap): how a live\n"
	      "  migration of this VM finds written pages; the ring must be chosen at start\n"
	      "  SIZE: 64M, 1G, 8G ... (16M to 256G, a multiple of 2M); N: 1 to 64 vCPUs\n"
	      "  URI: tcp:HOST:PORT or unix:PATH\n"
	      "  --incoming with --memory: RAM of that size is reserved and registered with KVM\n"
	      "    at start, so a move does not wait for it; a guest of another size is refused\n"
	      "  --disk: a raw file as a virtio-blk disk (up to 8; ids default to disk0,\n"
	      "    disk1...); aio: its file I/O on an I/O thread (default) or through io_uring\n"
	      "  --net: an existing tap as a virtio-net NIC (up to 4, at most 8 devices in all;\n"
	      "    ids default to net0, net1...; the MAC defaults to one derived from id and tap)\n"
	      "  --announce rounds=N,initial=MS,step=MS,max=MS: RARP frames sent for each NIC\n"
	      "    after the guest starts on a new host (default 5,50,100,550; rounds=0: none)\n",
	      out);
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

		if (o->memory_set && o->restore)
			return err_set(e, -EINVAL, "--memory conflicts with --restore (memory size "
						   "comes from the snapshot)");
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
	if (o->ndisks && !o->kernel)
		return err_set(e, -EINVAL, "--disk needs --kernel (a restored or incoming guest "
					   "keeps its disks: use --disk-override to move one)");
	if (o->nnets && !o->kernel)
		return err_set(e, -EINVAL, "--net needs --kernel (a restored or incoming guest "
					   "keeps its NICs: use --net-override to move one)");
	if (o->noverrides && o->kernel)
		return err_set(e, -EINVAL, "--%s-override needs --restore or --incoming",
			       strcmp(o->overrides[0].type, VIRTIO_NET_TYPE) ? "disk" : "net");
	if (o->ndisks + o->nnets > DEV_MAX)
		return err_set(e, -EINVAL, "--disk and --net: at most %u devices in all", DEV_MAX);
	for (unsigned i = 0; i < o->nnets; i++)
		for (unsigned j = 0; j < o->ndisks; j++)
			if (!strcmp(o->nets[i].id, o->disks[j].id))
				return err_set(e, -EINVAL, "a disk and a NIC are both called %s",
					       o->nets[i].id);
	o->ndevices = 0;
	for (unsigned i = 0; i < o->ndisks; i++)
		o->devices[o->ndevices++] = o->disks[i];
	for (unsigned i = 0; i < o->nnets; i++)
		o->devices[o->ndevices++] = o->nets[i];
	if ((o->tls_dir || o->tls_psk || o->insecure) && !o->incoming)
		return err_set(e, -EINVAL, "--%s needs --incoming", o->tls_dir ? "tls-dir" :
			       o->tls_psk ? "tls-psk" : "insecure");
	if (o->tls_dir && o->tls_psk)
		return err_set(e, -EINVAL, "--tls-dir conflicts with --tls-psk");
	if (o->insecure && (o->tls_dir || o->tls_psk))
		return err_set(e, -EINVAL, "--insecure conflicts with --%s",
			       o->tls_dir ? "tls-dir" : "tls-psk");
	if (o->incoming && strncmp(o->incoming, "tcp:", 4) && strncmp(o->incoming, "unix:", 5))
		return err_set(e, -EINVAL, "--incoming %s: URI must be tcp:HOST:PORT or unix:PATH",
			       o->incoming);
	return 0;
}

/*
 * Splits "k1=v1,k2=v2" (a copy of arg) and calls back for each pair. Values cannot hold
 * commas, so neither can paths given this way.
 */
static int run_kv_each(const char *opt, const char *arg,
		       int (*cb)(void *ctx, const char *k, const char *v, struct errbuf *e),
		       void *ctx, struct errbuf *e)
{
	char copy[DEV_PATH_MAX + 64], *save = NULL;

	if (strlen(arg) >= sizeof(copy))
		return err_set(e, -EINVAL, "%s: value too long", opt);
	strcpy(copy, arg);
	for (char *kv = strtok_r(copy, ",", &save); kv; kv = strtok_r(NULL, ",", &save)) {
		char *eq = strchr(kv, '=');
		int ret;

		if (!eq || eq == kv || !eq[1])
			return err_set(e, -EINVAL, "%s: '%s' is not KEY=VALUE", opt, kv);
		*eq = '\0';
		ret = cb(ctx, kv, eq + 1, e);
		if (ret < 0)
			return ret;
	}
	return 0;
}

static int run_path_set(const char *opt, char *dst, const char *v, struct errbuf *e)
{
	if (strlen(v) > DEV_PATH_MAX)
		return err_set(e, -EINVAL, "%s: path longer than %u bytes", opt, DEV_PATH_MAX);
	strcpy(dst, v);
	return 0;
}

static int run_id_set(const char *opt, char *dst, const char *v, struct errbuf *e)
{
	if (!device_id_valid(v))
		return err_set(e, -EINVAL, "%s: id '%s' must be 1 to %u letters, digits, '-' or '_'",
			       opt, v, DEV_ID_MAX);
	strcpy(dst, v);
	return 0;
}

static int run_aio_set(const char *opt, enum dev_aio *dst, const char *v, struct errbuf *e)
{
	if (!strcmp(v, "thread"))
		*dst = DEV_AIO_THREAD;
	else if (!strcmp(v, "uring"))
		*dst = DEV_AIO_URING;
	else
		return err_set(e, -EINVAL, "%s: aio=%s: use thread or uring", opt, v);
	return 0;
}

static int run_disk_kv(void *ctx, const char *k, const char *v, struct errbuf *e)
{
	struct device_spec *d = ctx;

	if (!strcmp(k, "aio"))
		return run_aio_set("--disk", &d->aio, v, e);
	if (!strcmp(k, "path"))
		return run_path_set("--disk", d->path, v, e);
	if (!strcmp(k, "id"))
		return run_id_set("--disk", d->id, v, e);
	if (!strcmp(k, "readonly")) {
		if (strcmp(v, "on") && strcmp(v, "off"))
			return err_set(e, -EINVAL, "--disk: readonly=%s: use on or off", v);
		d->readonly = !strcmp(v, "on");
		return 0;
	}
	return err_set(e, -EINVAL, "--disk: unknown key '%s' (path, readonly, id, aio)", k);
}

static int run_disk_parse(struct run_opts *o, const char *arg, struct errbuf *e)
{
	struct device_spec *d = &o->disks[o->ndisks];
	int ret;

	if (o->ndisks >= DEV_MAX)
		return err_set(e, -EINVAL, "--disk: at most %u disks", DEV_MAX);
	memset(d, 0, sizeof(*d));
	strcpy(d->type, VIRTIO_BLK_TYPE);
	ret = run_kv_each("--disk", arg, run_disk_kv, d, e);
	if (ret < 0)
		return ret;
	if (!d->path[0])
		return err_set(e, -EINVAL, "--disk %s: path=FILE is required", arg);
	if (!d->id[0])
		snprintf(d->id, sizeof(d->id), "disk%u", o->ndisks);
	for (unsigned i = 0; i < o->ndisks; i++)
		if (!strcmp(o->disks[i].id, d->id))
			return err_set(e, -EINVAL, "--disk: two disks are called %s", d->id);
	o->ndisks++;
	return 0;
}

static int run_override_kv(void *ctx, const char *k, const char *v, struct errbuf *e)
{
	struct device_spec *d = ctx;
	bool net = !strcmp(d->type, VIRTIO_NET_TYPE);
	const char *opt = net ? "--net-override" : "--disk-override";

	if (!strcmp(k, "id"))
		return run_id_set(opt, d->id, v, e);
	if (!strcmp(k, net ? "tap" : "path"))
		return run_path_set(opt, d->path, v, e);
	if (!net && !strcmp(k, "aio"))
		return run_aio_set(opt, &d->aio, v, e);
	return err_set(e, -EINVAL, "%s: unknown key '%s' (id, %s)", opt, k,
		       net ? "tap" : "path, aio");
}

/* --disk-override and --net-override: one list, each entry naming the type it must match. */
static int run_override_parse(struct run_opts *o, const char *type, const char *arg,
			      struct errbuf *e)
{
	struct device_spec *d = &o->override_specs[o->noverrides];
	bool net = !strcmp(type, VIRTIO_NET_TYPE);
	const char *opt = net ? "--net-override" : "--disk-override";
	int ret;

	if (o->noverrides >= DEV_MAX)
		return err_set(e, -EINVAL, "%s: at most %u", opt, DEV_MAX);
	memset(d, 0, sizeof(*d));
	strcpy(d->type, type);
	ret = run_kv_each(opt, arg, run_override_kv, d, e);
	if (ret < 0)
		return ret;
	if (!d->id[0] || (!d->path[0] && !d->aio))
		return err_set(e, -EINVAL, "%s %s: use id=NAME,%s", opt, arg,
			       net ? "tap=NAME" : "path=FILE and/or aio=thread|uring");
	for (unsigned i = 0; i < o->noverrides; i++)
		if (!strcmp(o->overrides[i].id, d->id))
			return err_set(e, -EINVAL, "%s: id %s given twice", opt, d->id);
	o->overrides[o->noverrides++] = (struct device_override){
		d->id, d->path[0] ? d->path : NULL, d->type, d->aio };
	return 0;
}

static int run_net_kv(void *ctx, const char *k, const char *v, struct errbuf *e)
{
	struct device_spec *d = ctx;

	if (!strcmp(k, "tap")) {
		if (strlen(v) > 15)
			return err_set(e, -EINVAL, "--net: tap=%s: interface names have at most 15 "
						   "characters", v);
		return run_path_set("--net", d->path, v, e);
	}
	if (!strcmp(k, "id"))
		return run_id_set("--net", d->id, v, e);
	if (!strcmp(k, "mac")) {
		if (virtio_net_mac_parse(v, d->mac) < 0)
			return err_set(e, -EINVAL, "--net: mac=%s: use a unicast aa:bb:cc:dd:ee:ff",
				       v);
		d->mac_set = true;
		return 0;
	}
	return err_set(e, -EINVAL, "--net: unknown key '%s' (tap, mac, id)", k);
}

static int run_net_parse(struct run_opts *o, const char *arg, struct errbuf *e)
{
	struct device_spec *d = &o->nets[o->nnets];
	int ret;

	if (o->nnets >= VIRTIO_NET_MAX)
		return err_set(e, -EINVAL, "--net: at most %u NICs", VIRTIO_NET_MAX);
	memset(d, 0, sizeof(*d));
	strcpy(d->type, VIRTIO_NET_TYPE);
	ret = run_kv_each("--net", arg, run_net_kv, d, e);
	if (ret < 0)
		return ret;
	if (!d->path[0])
		return err_set(e, -EINVAL, "--net %s: tap=NAME is required", arg);
	if (!d->id[0])
		snprintf(d->id, sizeof(d->id), "net%u", o->nnets);
	for (unsigned i = 0; i < o->nnets; i++) {
		if (!strcmp(o->nets[i].id, d->id))
			return err_set(e, -EINVAL, "--net: two NICs are called %s", d->id);
		if (!strcmp(o->nets[i].path, d->path))
			return err_set(e, -EINVAL, "--net: tap %s is given twice", d->path);
	}
	o->nnets++;
	return 0;
}

int run_opts_parse(int argc, char **argv, struct run_opts *o, struct errbuf *e)
{
	uint64_t v;
	int c, ret;

	memset(o, 0, sizeof(*o));
	o->announce = (struct virtio_net_announce)VIRTIO_NET_ANNOUNCE_DEFAULT;
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
			/* the state format's rule, or a snapshot or migration fails later */
			if (!*optarg)
				return err_set(e, -EINVAL, "--name must be 1 to 63 characters");
			if (state_machine_name_check(optarg, e) < 0)
				return err_prefix(e, -EINVAL, "--name");
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
		case OPT_DISK:
			ret = run_disk_parse(o, optarg, e);
			if (ret < 0)
				return ret;
			break;
		case OPT_DISK_OVERRIDE:
		case OPT_NET_OVERRIDE:
			ret = run_override_parse(o, c == OPT_NET_OVERRIDE ? VIRTIO_NET_TYPE :
									    VIRTIO_BLK_TYPE,
						 optarg, e);
			if (ret < 0)
				return ret;
			break;
		case OPT_NET:
			ret = run_net_parse(o, optarg, e);
			if (ret < 0)
				return ret;
			break;
		case OPT_ANNOUNCE:
			ret = virtio_net_announce_parse(optarg, &o->announce, e);
			if (ret < 0)
				return ret;
			o->announce_set = true;
			break;
		case OPT_TLS_DIR:
		case OPT_TLS_PSK:
			if (!*optarg || strlen(optarg) >= 4096)
				return err_set(e, -EINVAL, "--%s: path empty or too long",
					       c == OPT_TLS_DIR ? "tls-dir" : "tls-psk");
			*(c == OPT_TLS_DIR ? &o->tls_dir : &o->tls_psk) = optarg;
			break;
		case OPT_INSECURE:
			o->insecure = true;
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
