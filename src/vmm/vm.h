/* SPDX-License-Identifier: MIT */
/*
 * One VM: guest memory, vCPU threads, in-kernel irqchip/PIT, the io bus and the
 * registered devices. The lifecycle API here is what api/ and migration/ drive.
 * Every function is called from the main (event loop) thread unless noted.
 */
#ifndef GODWIT_VMM_VM_H
#define GODWIT_VMM_VM_H

#include "base/buf.h"
#include "base/evloop.h"
#include "base/util.h"
#include "devices/device.h"

#include <linux/kvm.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define VM_MAX_VCPUS 64
#define VM_NAME_MAX 64

struct vm;
struct guest_mem;

enum vm_state {
	VM_STATE_CREATED,  /* built, vCPUs not started */
	VM_STATE_RUNNING,
	VM_STATE_PAUSED,
	VM_STATE_INCOMING, /* waiting for an incoming migration */
	VM_STATE_STOPPED,  /* stopped on request */
	VM_STATE_FAILED,   /* the guest hit a fatal exit (emulation failure, shutdown) */
	/*
	 * A migration sent COMMIT: the destination may be running the guest, so this copy
	 * must never run again (QEMU's postmigrate). Only stop is accepted.
	 */
	VM_STATE_HANDED_OVER,
};

#define VM_HANDED_OVER_MSG "the guest was handed over to a migration destination and may " \
			   "be running there; this copy can only be stopped"

struct vm_status {
	char name[VM_NAME_MAX];
	enum vm_state state;
	uint64_t memory_bytes;
	unsigned vcpus;
	uint64_t uptime_ns;      /* since the process started the VM (run or restore) */
	uint64_t paused_ns;      /* total time spent paused */
	uint64_t console_dropped; /* guest console bytes dropped: the output reader stalled */
};

/*
 * Dirty page tracking, chosen when the VM is created (KVM's dirty ring must be enabled
 * before any vCPU exists): the KVM dirty bitmap with manual clearing, or the dirty ring.
 */
enum vm_dirty_mode { VM_DIRTY_BITMAP, VM_DIRTY_RING };

/* Serial console sink of `godwit run --serial` */
enum vm_serial_mode { VM_SERIAL_STDIO, VM_SERIAL_FILE, VM_SERIAL_NONE };

struct vm_config {
	char name[VM_NAME_MAX];
	uint64_t memory;         /* bytes */
	unsigned vcpus;
	const char *kernel;      /* bzImage, ELF vmlinux or PVH ELF */
	const char *initrd;      /* NULL: none */
	const char *cmdline;
	enum vm_serial_mode serial;
	const char *serial_path; /* for VM_SERIAL_FILE */
	const char *kvm_path;    /* normally /dev/kvm */
	enum vm_dirty_mode dirty;
	const struct device_spec *devices; /* --disk ...: built, claimed, announced to the kernel */
	unsigned ndevices;
};

/* Creates the VM, loads the kernel and prepares the boot vCPU; vCPUs stay paused. */
int __must_check vm_create(struct vm **out, struct evloop *loop, const struct vm_config *cfg,
			   struct errbuf *e);
/* Starts the vCPUs for the first time. */
int __must_check vm_start(struct vm *vm, struct errbuf *e);
/*
 * When the last vCPU first went from paused to running (about to enter KVM_RUN),
 * CLOCK_REALTIME ns; 0 if one has not yet: when the guest first ran in this process.
 */
uint64_t vm_vcpus_first_run(struct vm *vm);
/* Stops every vCPU thread and frees everything. */
void vm_destroy(struct vm *vm);
/* The exit status `godwit run` should return: 0 after a requested stop, 1 after a guest failure. */
int vm_exit_code(struct vm *vm);

/*
 * The device registry (vm_devices.c). Every device, the UART included, is attached through
 * one interface: its I/O window goes on the bus and its state section into the registry;
 * the VM then drives it only through its struct device_ops (quiesce at every pause, resume
 * before the vCPUs run, save/validate/load with the VM's sections, destroy).
 */
int __must_check vm_device_attach(struct vm *vm, const struct device_info *d, struct errbuf *e);
/*
 * Only the state section, for a device whose I/O ports the caller wires itself (the legacy
 * PC ports of vm_legacy.c); ops without quiesce, validate or destroy are fine.
 */
int __must_check vm_device_register(struct vm *vm, const struct device_ops *ops,
				    const char *instance, void *dev, struct errbuf *e);
/* The configurable devices as they would be rebuilt elsewhere (for CONFIG); returns the count. */
unsigned vm_device_specs(struct vm *vm, struct device_spec *out, unsigned max);
/* Makes what the guest wrote durable (paused VM); fails naming the device that could not. */
int __must_check vm_devices_flush(struct vm *vm, struct errbuf *e);
/* Takes every device's backend lock: before the guest runs on this host. */
int __must_check vm_devices_claim(struct vm *vm, struct errbuf *e);
/* Flushes and releases every backend: at a migration's COMMIT on the source. */
void vm_devices_release(struct vm *vm);
/* Announcements the devices sent since the guest started here (NICs' RARPs). */
uint64_t vm_devices_announced(struct vm *vm);
/* The configurable devices (disks, NICs) as `status` shows them; returns the count. */
unsigned vm_devices_stats(struct vm *vm, struct device_stats *out, unsigned max);

/* ---- state for snapshots, migration and digests (vm_sections.c) ---- */

/* One piece of VM state as the state layer carries it. */
struct vm_section {
	const char *name;
	const char *instance;
	uint32_t version;
	const void *data;
	size_t len;
};

/* What the guest was given: checked by a receiver before any state is loaded. */
struct vm_machine {
	unsigned nvcpus;
	uint64_t memory;
	unsigned nregions;
	struct {
		uint64_t gpa, size, offset;
		uint8_t *host;
	} regions[2];
	const struct kvm_cpuid2 *cpuid;
	uint32_t tsc_khz;    /* the guest's TSC frequency (0 if KVM cannot tell) */
	uint32_t xsave_size; /* the vCPUs' XSAVE area size (0: no XSAVE) */
};

void vm_machine_get(struct vm *vm, struct vm_machine *m);

typedef int vm_section_cb(void *opaque, const struct vm_section *s, struct errbuf *e);

/*
 * Saves every section of a paused VM, in a fixed order: irqchips, PIT, clock, vCPUs,
 * devices. With digest, the time-varying fields are zeroed (not loadable).
 */
int __must_check vm_sections_save(struct vm *vm, bool digest, vm_section_cb *cb, void *opaque,
				  struct errbuf *e);
/*
 * Loads the given sections into a VM that has not run: every section is decoded and
 * validated first; an unknown section or a missing mandatory one fails the load naming
 * it, before anything is applied.
 */
int __must_check vm_sections_load(struct vm *vm, const struct vm_section *secs, size_t n,
				  struct errbuf *e);
/* A configurable device as CONFIG lists it: its type and id (its sections' instance). */
struct vm_check_device {
	const char *type;
	const char *id;
};
/*
 * The checks of vm_sections_load without a VM: the sections as a restore into a VM with
 * nvcpus vCPUs whose XSAVE area holds xsave_size bytes (0: no XSAVE) and the configurable
 * devices devs would decode and validate them, unknown and missing sections included (a
 * device type's validate runs without a device). inspect uses it, so that it refuses what
 * a restore refuses.
 */
int __must_check vm_sections_check(unsigned nvcpus, uint32_t xsave_size,
				   const struct vm_check_device *devs, unsigned ndevs,
				   const struct vm_section *secs, size_t n, struct errbuf *e);
/* A digest (hex) of non-zero guest pages and of the digest form of every section. */
int __must_check vm_digest(struct vm *vm, char *mem_hex, char *state_hex, struct errbuf *e);

/*
 * Creates a VM for a restore or an incoming migration: memory layout, vCPUs and CPUID
 * from the source; no kernel is loaded and nothing runs. The caller fills memory and
 * loads the sections, then calls vm_start() (or leaves it paused with vm_start_paused()).
 */
struct vm_restore_config {
	char name[VM_NAME_MAX];
	unsigned nvcpus;
	uint64_t memory;
	const struct kvm_cpuid2 *cpuid;  /* the CPUID the guest was given */
	uint32_t tsc_khz;                /* its TSC frequency; 0: not recorded, keep this host's */
	uint32_t xsave_size;             /* its XSAVE area size; 0: none */
	enum vm_serial_mode serial;
	const char *serial_path;
	const char *kvm_path;
	enum vm_dirty_mode dirty;
	const struct device_spec *devices; /* from CONFIG, paths overridden where asked */
	unsigned ndevices;
	bool defer_claim; /* incoming: backends are claimed after COMMIT (vm_devices_claim) */
};
int __must_check vm_create_restore(struct vm **out, struct evloop *loop,
				   const struct vm_restore_config *cfg, struct errbuf *e);
/* Checks that this host can give the guest that CPUID (every feature bit supported). */
int __must_check vm_cpuid_check(struct vm *vm, const struct kvm_cpuid2 *cpuid, struct errbuf *e);
/*
 * The rest of a receiver's pre-flight, once the vCPUs exist and before any state is
 * loaded: the guest's XSAVE area must fit this host's, and its TSC frequency is set on
 * every vCPU (KVM_SET_TSC_KHZ), or the guest is refused when KVM cannot give it. With
 * tsc_khz 0 (a new VM, or not recorded) the VM keeps this host's frequency.
 */
int __must_check vm_machine_preflight(struct vm *vm, uint32_t tsc_khz, uint32_t xsave_size,
				      struct errbuf *e);

/*
 * An incoming migration: an empty VM (state "incoming") is created first so the control
 * socket can report on it; it is built once the source's configuration arrived. With
 * memory non-zero (`run --incoming --memory`), the KVM VM and its RAM, registered with
 * KVM, are made now, before any source connects: registering RAM costs about 5 ms per GiB
 * on this host (KVM's per-page bookkeeping), which a move then no longer waits for. A
 * source whose guest has another size is then refused at pre-flight.
 */
int __must_check vm_incoming_create(struct vm **out, struct evloop *loop, const char *name,
				    uint64_t memory, const char *kvm_path, struct errbuf *e);
int __must_check vm_incoming_build(struct vm *vm, const struct vm_restore_config *cfg,
				   struct errbuf *e);
/* Sets the exit status `godwit run` returns (e.g. 1 after a failed incoming migration). */
void vm_exit_code_set(struct vm *vm, int code);
/* Marks the VM paused without having run (a restore with --paused). */
void vm_start_paused(struct vm *vm);
struct guest_mem *vm_memory(struct vm *vm);

const char *vm_state_name(enum vm_state st);
void vm_status_get(struct vm *vm, struct vm_status *st);
/* Bytes of guest RAM resident in the VMM process (pagemap over all of it: not for hot paths). */
uint64_t vm_guest_resident(struct vm *vm);
/*
 * Returns once every vCPU is out of KVM_RUN (state PAUSED). Pausing a paused VM is a no-op.
 * All or nothing: if a vCPU does not leave KVM_RUN within 5 s, the others are resumed,
 * the VM stays running and the error says so.
 */
int __must_check vm_pause(struct vm *vm, struct errbuf *e);
/* Restarts every vCPU. Resuming a running VM is a no-op. */
int __must_check vm_resume(struct vm *vm, struct errbuf *e);
/*
 * An operation (a migration) that owns run control marks the VM busy: vm_pause() and
 * vm_resume() are then refused with a message naming it, and the owner uses the
 * vm_owner_* variants. vm_busy_set() tells in *paused (if not NULL) whether the VM was
 * paused already, so the owner leaves an operator's pause in place. Any thread.
 */
int __must_check vm_busy_set(struct vm *vm, const char *what, bool *paused, struct errbuf *e);
void vm_busy_clear(struct vm *vm);
int __must_check vm_owner_pause(struct vm *vm, struct errbuf *e);
int __must_check vm_owner_resume(struct vm *vm, struct errbuf *e);
/* A paused VM whose migration is about to COMMIT becomes handed-over, for good. Any thread. */
int __must_check vm_handover(struct vm *vm, struct errbuf *e);
/*
 * Throttling (auto-converge): the caller kicks the vCPUs every VM_THROTTLE_PERIOD_NS while
 * pct > 0 (vm_throttle_kick()); at its next exit each vCPU sleeps pct% of that period, so
 * it runs (100-pct)% of the time and never stops for longer than one period. Sleeps of
 * pct/(100-pct) periods (QEMU's) freeze the guest for up to 990 ms at 99%; and a kick
 * period shorter than the sleep, as godwit had, left no time to run from 50% on: a vCPU
 * slept again at its very next exit (a guest printing a line slept once for every byte).
 */
#define VM_THROTTLE_PERIOD_NS 10000000ull
void vm_throttle_set(struct vm *vm, unsigned pct);
void vm_throttle_kick(struct vm *vm);

/* How long a vCPU sleeps at each kick when throttled to pct (clamped to 99). */
static inline uint64_t vm_throttle_sleep_ns(unsigned pct)
{
	pct = pct > 99 ? 99 : pct;
	return VM_THROTTLE_PERIOD_NS * pct / 100;
}

/* ---- dirty page tracking for live migration (vm_dirty.c); pages in flat RAM order ---- */
enum vm_dirty_mode vm_dirty_mode_get(struct vm *vm);
const char *vm_dirty_mode_name(enum vm_dirty_mode m);
/* Turns logging on: writes from now on are reported (round 0 reads every page anyway). */
int __must_check vm_dirty_start(struct vm *vm, struct errbuf *e);
/*
 * ORs into bitmap the pages written since the last sync, by the guest or by the VMM;
 * widens span (NULL: none; see dirty_tracker_sync_span()) to cover every bit it set.
 */
int __must_check vm_dirty_sync(struct vm *vm, uint64_t *bitmap, uint64_t *span,
			       struct errbuf *e);
/*
 * Ring mode: reads and resets the dirty rings while the guest runs, so they never fill
 * (a full ring overflows on this host's emulator and costs a full resend); the pages are
 * kept for the next sync. Bitmap mode: nothing to do.
 */
int __must_check vm_dirty_harvest(struct vm *vm, struct errbuf *e);
/* Re-arms tracking for pages about to be read (bitmap mode: KVM_CLEAR_DIRTY_LOG). */
int __must_check vm_dirty_clear(struct vm *vm, uint64_t first_page, uint64_t npages,
				struct errbuf *e);
void vm_dirty_stop(struct vm *vm);
/* Host address and guest-physical address of flat page i. */
uint8_t *vm_page_host(struct vm *vm, uint64_t page, uint64_t *gpa);
uint64_t vm_pages(struct vm *vm);

/* Asks the main loop to stop the VM and make `godwit run` exit 0. */
void vm_stop_request(struct vm *vm);

#endif
