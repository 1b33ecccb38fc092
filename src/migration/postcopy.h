/* SPDX-License-Identifier: MIT */
/*
 * Post-copy on the destination (postcopy_in.c), for incoming.c: the source's MISSING list,
 * userfaultfd set up before READY, and the phase after STARTED in which the guest runs
 * here while its last pages arrive.
 */
#ifndef GODWIT_MIGRATION_POSTCOPY_H
#define GODWIT_MIGRATION_POSTCOPY_H

#include "base/util.h"
#include "migration/migrate.h"
#include "migration/proto.h"
#include "vmm/memory.h"

#include <stdbool.h>

/* Adds a MISSING message's pages to the ones this side must fetch. */
int __must_check inc_postcopy_missing(struct guest_mem *mem, const struct mig_ctrl *m,
				      struct errbuf *e);
/* True once a MISSING message arrived: this migration ends in post-copy. */
bool inc_postcopy_active(void);
/* Before READY: drops the stale copies of missing pages and registers RAM with userfaultfd. */
int __must_check inc_postcopy_prepare(struct errbuf *e);
/* After STARTED: serves faults and installs pages until the source's COMPLETE. */
int __must_check inc_postcopy_run(struct errbuf *e);
/* Frees what post-copy holds; memory stays registered while pages are still missing. */
void inc_postcopy_cleanup(void);
/*
 * At process exit: lets vCPUs blocked on pages that will never come go (closing the
 * userfaultfd), so that the VM can be torn down. The guest is being destroyed anyway.
 */
void inc_postcopy_release(void);
/* At process exit: stops waiting for a source to resume a broken post-copy. */
void inc_postcopy_unblock(void);
/* Fills the destination's fault latency median (mig.lock held). */
void mig_postcopy_status_fill(struct mig_status *st);

#endif
