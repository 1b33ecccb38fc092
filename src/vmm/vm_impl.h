/* SPDX-License-Identifier: MIT */
/* The VM object's layout, shared by the files of vmm/ only. */
#ifndef GODWIT_VMM_VM_IMPL_H
#define GODWIT_VMM_VM_IMPL_H

#include "kvm/kvm.h"
#include "vmm/iobus.h"
#include "vmm/memory.h"
#include "vmm/vcpu.h"
#include "vmm/vm.h"

struct serial;

struct vm_device_entry {
	const struct vm_device_ops *ops;
	char instance[64];
	void *opaque;
};

struct vm {
	char name[VM_NAME_MAX];
	struct kvm_sys kvm;
	int fd;
	struct guest_mem mem;
	struct iobus iobus;
	struct kvm_cpuid2 *cpuid;
	uint32_t *msr_indices;  /* MSRs KVM reports as saveable */
	uint32_t nmsrs;
	uint32_t xsave_size;
	unsigned nvcpus;
	struct vcpu vcpus[VM_MAX_VCPUS];
	struct evloop *loop;

	enum vm_state state;
	uint64_t start_ns;
	uint64_t paused_since_ns;
	uint64_t paused_total_ns;

	struct serial *serial;
	int serial_fd;       /* where guest serial output goes, -1 for none */
	bool serial_fd_owned;

	struct vm_device_entry *devices;
	unsigned ndevices;

	pthread_mutex_t fail_lock;
	bool failed;
	char fail_report[1024];
	int exit_code;
};

/* Called on a vCPU thread after a fatal exit: records the report, asks the main loop to stop. */
void vm_vcpu_fatal(struct vm *vm, struct vcpu *v, const char *report);

#endif
