/* SPDX-License-Identifier: MIT */
/* The VM object's layout, shared by the files of vmm/ only. */
#ifndef GODWIT_VMM_VM_IMPL_H
#define GODWIT_VMM_VM_IMPL_H

#include "kvm/dirty.h"
#include "kvm/kvm.h"
#include "vmm/iobus.h"
#include "vmm/memory.h"
#include "vmm/vcpu.h"
#include "vmm/vm.h"

#include <stdatomic.h>

struct serial;
struct console;
struct vm_legacy;
struct dirty_tracker;

/* 65536 entries of 16 bytes per vCPU, KVM's maximum here: a round rarely fills it */
#define VM_DIRTY_RING_BYTES (1024u * 1024)

/* The devices every VM has, so a snapshot can be checked without a VM (inspect) */
#define VM_SERIAL_INSTANCE "io:3f8"
#define VM_I8042_INSTANCE "io:60"
#define VM_PCI_CFG_INSTANCE "io:cf8"
extern const struct device_ops vm_i8042_dev, vm_pci_cfg_dev;

struct vm_device_entry {
	const struct device_ops *ops;
	char instance[64];
	void *opaque;
	const struct device_type *type; /* configurable devices only (CONFIG lists them) */
	uint64_t mmio_base;
	uint64_t mmio_len;
	unsigned gsi;
	bool virtio_mmio;
};

#define VM_MAX_DEVICES 16 /* the UART and up to DEV_MAX configurable devices */

/* Configurable devices: 4 KiB MMIO windows in the 3-4 GiB hole, IOAPIC pins 16-23. */
#define VM_DEV_MMIO_BASE 0xd0000000ull
#define VM_DEV_MMIO_STRIDE 0x1000ull
#define VM_DEV_GSI_BASE 16u

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
	uint32_t tsc_khz;       /* the guest's TSC frequency, 0 if KVM cannot tell */
	unsigned nvcpus;
	struct vcpu vcpus[VM_MAX_VCPUS];
	struct evloop *loop;

	pthread_mutex_t run_lock; /* serialises run-state changes (held across vCPU handshakes) */
	pthread_mutex_t lock;   /* state, paused times, busy: never held across a wait */
	enum vm_state state;
	const char *busy;       /* an operation that owns run control ("a migration") */
	_Atomic unsigned throttle_pct;
	enum vm_dirty_mode dirty_mode;
	struct dirty_tracker *dirty;
	uint64_t start_ns;
	uint64_t paused_since_ns;
	uint64_t paused_total_ns;

	struct serial *serial;
	int serial_fd;       /* where guest serial output goes, -1 for none */
	bool serial_fd_owned;
	struct console *console; /* buffers the output for serial_fd, off the vCPU threads */
	int stdin_flags;     /* a terminal's file flags before we set O_NONBLOCK, or -1 */
	struct vm_legacy *legacy;  /* i8042, PCI config ports, ACPI sleep port (vm_legacy.c) */

	struct vm_device_entry *devices;
	unsigned ndevices;

	pthread_mutex_t fail_lock;
	bool failed;
	char fail_report[1024];
	int exit_code;
};

/* The legacy port devices (vm_legacy.c). */
int vm_legacy_setup(struct vm *vm, struct errbuf *e);
void vm_legacy_destroy(struct vm *vm);

/* vm_devices.c */
int vm_devices_create(struct vm *vm, const struct device_spec *specs, unsigned n, bool claim,
		      struct errbuf *e);
/* Appends " virtio_mmio.device=..." for each virtio-mmio device to cmdline (size bytes). */
int vm_devices_cmdline(struct vm *vm, char *cmdline, size_t size, struct errbuf *e);
void vm_devices_quiesce(struct vm *vm);
void vm_devices_resume(struct vm *vm);
void vm_devices_destroy(struct vm *vm);

/*
 * Guest RAM goes to KVM in slots of at most VM_SLOT_BYTES (numbered from 0 in flat RAM
 * order): dirty logging is turned on per slot, and only for slots the guest has touched
 * (kvm/dirty.h), so a move of a big, mostly untouched guest costs what it touched.
 */
#define VM_SLOT_BYTES (1 * GiB)
#define VM_SLOTS_MAX (GUEST_MEM_MAX / VM_SLOT_BYTES + GUEST_MEM_MAX_REGIONS)
/* Fills slots (VM_SLOTS_MAX entries) with the KVM slots of vm's RAM; returns how many. */
unsigned vm_memslots(struct vm *vm, struct dirty_slot *slots);
int vm_dirty_setup(struct vm *vm, unsigned nvcpus, struct errbuf *e);
int vm_dirty_vcpu_setup(struct vm *vm, struct vcpu *v, struct errbuf *e);
int vm_dirty_ring_full(struct vm *vm, struct vcpu *v);

/* Called on a vCPU thread after a fatal exit: records the report, asks the main loop to stop. */
void vm_vcpu_fatal(struct vm *vm, struct vcpu *v, const char *report);

#endif
