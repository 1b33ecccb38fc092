/* SPDX-License-Identifier: MIT */
/* A stand-in for the VM behind the control socket: records calls, fails on demand. */
#ifndef GODWIT_TESTS_FAKE_VM_H
#define GODWIT_TESTS_FAKE_VM_H

#include "vmm/vm.h"

struct vm {
	struct vm_status st;
	int pause_ret;		/* what vm_pause() returns (0 or -errno) */
	const char *pause_msg;	/* and the message it sets when failing */
	int resume_ret;
	unsigned pauses, resumes, stops;
	const struct device_stats *devs; /* what vm_devices_stats() reports */
	unsigned ndevs;
};

/* The parameters of the last migration_start() (which then fails), and how many calls. */
struct mig_params;
extern struct mig_params fake_mig_params;
extern unsigned fake_mig_starts;
/* What migration_status_get() reports (all zero: no migration). */
struct mig_status;
extern struct mig_status fake_mig_status;

/* A running VM named name with 256 MiB and 2 vCPUs. */
void fake_vm_init(struct vm *vm, const char *name);

#endif
