/* SPDX-License-Identifier: MIT */
/* The vm.h functions api/ uses, over struct vm from fake_vm.h instead of KVM. */
#include "fake_vm.h"

#include "migration/migrate.h"
#include "migration/proto.h"
#include "migration/snapshot.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

void fake_vm_init(struct vm *vm, const char *name)
{
	memset(vm, 0, sizeof(*vm));
	snprintf(vm->st.name, sizeof(vm->st.name), "%s", name);
	vm->st.state = VM_STATE_RUNNING;
	vm->st.memory_bytes = 256 * MiB;
	vm->st.vcpus = 2;
	vm->st.uptime_ns = 12345678901ull;
	vm->st.paused_ns = 2500000000ull;
	vm->st.console_dropped = 4096;
}

const char *vm_state_name(enum vm_state st)
{
	switch (st) {
	case VM_STATE_CREATED:
		return "created";
	case VM_STATE_RUNNING:
		return "running";
	case VM_STATE_PAUSED:
		return "paused";
	case VM_STATE_INCOMING:
		return "incoming";
	case VM_STATE_STOPPED:
		return "stopped";
	case VM_STATE_FAILED:
		return "failed";
	case VM_STATE_HANDED_OVER:
		return "handed-over";
	}
	return "unknown";
}

void vm_status_get(struct vm *vm, struct vm_status *st)
{
	*st = vm->st;
}

unsigned vm_devices_stats(struct vm *vm, struct device_stats *out, unsigned max)
{
	unsigned n = MIN(vm->ndevs, max);

	if (n)
		memcpy(out, vm->devs, n * sizeof(*out));
	return n;
}

uint64_t vm_guest_resident(struct vm *vm)
{
	return 2 << 20;
}

int vm_pause(struct vm *vm, struct errbuf *e)
{
	vm->pauses++;
	if (vm->pause_ret)
		return vm->pause_msg ? err_set(e, vm->pause_ret, "%s", vm->pause_msg) : vm->pause_ret;
	vm->st.state = VM_STATE_PAUSED;
	return 0;
}

int vm_resume(struct vm *vm, struct errbuf *e)
{
	vm->resumes++;
	if (vm->resume_ret)
		return vm->resume_ret;	/* no message: the api must supply one */
	vm->st.state = VM_STATE_RUNNING;
	return 0;
}

void vm_stop_request(struct vm *vm)
{
	vm->stops++;
}

/* Snapshots and digests need a real VM: the fake refuses them with a clear error. */
int vm_digest(struct vm *vm, char *mem_hex, char *state_hex, struct errbuf *e)
{
	return err_set(e, -ENOTSUP, "fake VM: no digest");
}

int vm_snapshot_save(struct vm *vm, const char *dir, struct vm_snapshot_stats *st,
		     void (*captured)(void *opaque), void *opaque, struct errbuf *e)
{
	return err_set(e, -ENOSPC, "fake VM: no space for %s", dir);
}

/* The migration engine needs a real VM too: the fake has none in progress. */
const char *mig_state_name(enum mig_state st)
{
	return st == MIG_STATE_NONE ? "none" : "other";
}

const char *mig_mode_name(uint32_t mode)
{
	return mode == MIG_MODE_WARM ? "warm" : "live";
}

struct mig_status fake_mig_status;

void migration_status_get(struct mig_status *st)
{
	*st = fake_mig_status;
}

int migration_cancel(struct errbuf *e)
{
	return err_set(e, -EINVAL, "no migration in progress");
}

struct mig_params fake_mig_params;
unsigned fake_mig_starts;

int migration_start(struct vm *vm, struct evloop *loop, const struct mig_params *p,
		    void (*done)(void *opaque), void *opaque, struct errbuf *e)
{
	fake_mig_params = *p;
	fake_mig_starts++;
	return err_set(e, -ENOTSUP, "fake VM: no migration");
}
