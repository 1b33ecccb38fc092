/* SPDX-License-Identifier: MIT */
/*
 * One VM: guest memory, vCPU threads, in-kernel irqchip/PIT, the io bus and the
 * registered devices. The lifecycle API here is what api/ and migration/ drive.
 * Every function is called from the main (event loop) thread unless noted.
 */
#ifndef GODWIT_VMM_VM_H
#define GODWIT_VMM_VM_H

#include "base/evloop.h"
#include "base/util.h"

#include <stdbool.h>
#include <stdint.h>

#define VM_MAX_VCPUS 8
#define VM_NAME_MAX 64

struct vm;

enum vm_state {
	VM_STATE_CREATED,  /* built, vCPUs not started */
	VM_STATE_RUNNING,
	VM_STATE_PAUSED,
	VM_STATE_INCOMING, /* waiting for an incoming migration */
	VM_STATE_STOPPED,  /* stopped on request */
	VM_STATE_FAILED,   /* the guest hit a fatal exit (emulation failure, shutdown) */
};

struct vm_status {
	char name[VM_NAME_MAX];
	enum vm_state state;
	uint64_t memory_bytes;
	unsigned vcpus;
	uint64_t uptime_ns;      /* since the process started the VM (run or restore) */
	uint64_t paused_ns;      /* total time spent paused */
};

const char *vm_state_name(enum vm_state st);
void vm_status_get(struct vm *vm, struct vm_status *st);
/* Returns once every vCPU is out of KVM_RUN (state PAUSED). Pausing a paused VM is a no-op. */
int __must_check vm_pause(struct vm *vm, struct errbuf *e);
/* Restarts every vCPU. Resuming a running VM is a no-op. */
int __must_check vm_resume(struct vm *vm, struct errbuf *e);
/* Asks the main loop to stop the VM and make `godwit run` exit 0. */
void vm_stop_request(struct vm *vm);

#endif
