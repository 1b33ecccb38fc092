/* SPDX-License-Identifier: MIT */
/*
 * Suspend to files and restore: a paused VM's complete state into a snapshot
 * directory (state/snapshot.h lays it out), and a new VM built from one.
 */
#ifndef GODWIT_MIGRATION_SNAPSHOT_H
#define GODWIT_MIGRATION_SNAPSHOT_H

#include "base/evloop.h"
#include "base/util.h"
#include "vmm/vm.h"

#include <stdbool.h>
#include <stdint.h>

struct state_config;

struct vm_snapshot_stats {
	uint64_t pages_present;
	uint64_t pages_zero;
	uint64_t bytes;        /* memory bytes written */
	uint64_t elapsed_ns;
};

/*
 * Writes the paused VM's state into dir (which must not exist yet), atomically.
 * captured(opaque), if given, runs once every byte of guest state has been handed to the
 * kernel and before the files are synced and renamed into place: the guest may run
 * again from then on (the sync of a large snapshot need not be guest downtime).
 */
int __must_check vm_snapshot_save(struct vm *vm, const char *dir, struct vm_snapshot_stats *st,
				  void (*captured)(void *opaque), void *opaque, struct errbuf *e);

struct vm_restore_opts {
	const char *name;        /* NULL: the snapshot's machine name */
	bool eager;              /* read memory in (else map the memory file copy-on-write) */
	enum vm_serial_mode serial;
	const char *serial_path;
	const char *kvm_path;
	enum vm_dirty_mode dirty;
	const struct device_override *overrides; /* --disk-override */
	unsigned noverrides;
};

/* Builds a paused, not yet started VM from the snapshot in dir. */
int __must_check vm_snapshot_restore(struct vm **out, struct evloop *loop, const char *dir,
				     const struct vm_restore_opts *o, struct errbuf *e);

/* The CONFIG record describing vm (memory layout, vCPUs, CPUID, name). */
void vm_state_config_build(struct vm *vm, struct state_config *cfg);
/*
 * The devices a CONFIG record lists, as the VMM builds them, each override's path put in
 * place; an override naming no device is refused. out holds STATE_MAX_DEVICES entries.
 */
int __must_check vm_state_config_devices(const struct state_config *cfg,
					 const struct device_override *ov, unsigned nov,
					 struct device_spec *out, unsigned *n, struct errbuf *e);
/* The CPUID of a CONFIG record as KVM takes it; malloc'ed. */
struct kvm_cpuid2 *vm_state_config_cpuid(const struct state_config *cfg);
/* Checks that a VM restored from cfg would get the same memory layout. */
int __must_check vm_state_config_layout_check(const struct state_config *cfg, struct vm *vm,
					      struct errbuf *e);

#endif
