/* SPDX-License-Identifier: MIT */
/* Parsing of `godwit run` options into a checked structure (unit-tested on its own). */
#ifndef GODWIT_CLI_RUN_OPTS_H
#define GODWIT_CLI_RUN_OPTS_H

#include "base/util.h"
#include "devices/device.h"
#include "devices/virtio_net.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdint.h>

enum run_serial { RUN_SERIAL_STDIO, RUN_SERIAL_FILE, RUN_SERIAL_NONE };

struct run_opts {
	uint64_t memory;
	bool memory_set;
	unsigned cpus;
	bool cpus_set;
	const char *kernel;
	const char *cmdline;
	const char *initrd;
	enum run_serial serial;
	const char *serial_path;
	const char *api_socket;
	const char *name;
	const char *restore;
	bool paused;
	bool restore_eager;
	bool restore_mode_set;
	const char *incoming;
	const char *tls_dir;  /* --tls-dir: x509 credentials in QEMU's layout */
	const char *tls_psk;  /* --tls-psk: identity:hexkey lines */
	bool insecure;        /* --insecure: plaintext tcp on a non-loopback address */
	bool dirty_ring;
	bool help;
	/* --disk path=FILE[,readonly=on][,id=NAME]: type virtio-blk, ids default to diskN */
	struct device_spec disks[DEV_MAX];
	unsigned ndisks;
	/* --net tap=NAME[,mac=MAC][,id=NAME]: type virtio-net, ids default to netN */
	struct device_spec nets[VIRTIO_NET_MAX];
	unsigned nnets;
	/* disks then NICs: what the VM builds */
	struct device_spec devices[DEV_MAX];
	unsigned ndevices;
	/* --announce: how NICs are announced after a move */
	struct virtio_net_announce announce;
	bool announce_set;
	/*
	 * --disk-override id=NAME,path=FILE and --net-override id=NAME,tap=NAME (restore,
	 * incoming); pointing into override_specs
	 */
	struct device_override overrides[DEV_MAX];
	struct device_spec override_specs[DEV_MAX];
	unsigned noverrides;
};

/* argv[0] is "run". Returns 0, or -EINVAL with a one-line message naming the problem. */
int __must_check run_opts_parse(int argc, char **argv, struct run_opts *o, struct errbuf *e);
void run_opts_usage(FILE *out);

#endif
