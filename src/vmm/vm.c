/* SPDX-License-Identifier: MIT */
/*
 * VM lifecycle: create (KVM VM, irqchip, PIT, memory, devices, vCPUs, kernel),
 * start, pause/resume handshake with every vCPU, stop, and the report of a fatal
 * guest exit.
 */
#include "vmm/vm.h"
#include "arch/x86/boot.h"
#include "arch/x86/cpuid.h"
#include "arch/x86/vcpu_state.h"
#include "base/log.h"
#include "devices/serial.h"
#include "kvm/dirty.h"
#include "vmm/console.h"
#include "vmm/vm_impl.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define VM_PAUSE_TIMEOUT_MS 5000
#define SERIAL_PORT_BASE 0x3f8
#define SERIAL_IRQ 4

const char *vm_state_name(enum vm_state st)
{
	switch (st) {
	case VM_STATE_CREATED: return "created";
	case VM_STATE_RUNNING: return "running";
	case VM_STATE_PAUSED: return "paused";
	case VM_STATE_INCOMING: return "incoming";
	case VM_STATE_STOPPED: return "stopped";
	case VM_STATE_FAILED: return "failed";
	case VM_STATE_HANDED_OVER: return "handed-over";
	}
	return "unknown";
}

/* ---- serial console ---- */

static void vm_serial_irq(void *opaque, bool level)
{
	struct vm *vm = opaque;
	struct kvm_irq_level irq = { .irq = SERIAL_IRQ, .level = level };

	if (kvm_ioctl(vm->fd, KVM_IRQ_LINE, &irq) < 0)
		log_warn("KVM_IRQ_LINE %u: %s", SERIAL_IRQ, strerror(errno));
}

static void vm_serial_output(void *opaque, const uint8_t *p, size_t n)
{
	struct vm *vm = opaque;

	/* never blocks: a stalled reader must not hold a vCPU (and every pause) hostage */
	if (vm->console)
		console_write(vm->console, p, n);
}

static void vm_stdin_cb(struct evloop *loop, int fd, uint32_t events, void *opaque)
{
	struct vm *vm = opaque;
	uint8_t buf[64];
	ssize_t n = read(fd, buf, sizeof(buf));

	if (n <= 0) {
		if (n < 0 && (errno == EAGAIN || errno == EINTR))
			return;
		evloop_fd_del(loop, fd);
		return;
	}
	/* bytes that do not fit the receive FIFO are dropped, as on a real UART */
	serial_input(vm->serial, buf, (size_t)n);
}

static int vm_serial_setup(struct vm *vm, const struct vm_config *cfg, struct errbuf *e)
{
	static const struct serial_ops ops = { .irq_set = vm_serial_irq,
					       .output = vm_serial_output };
	struct device_info dev;
	int ret;

	vm->serial_fd = -1;
	switch (cfg->serial) {
	case VM_SERIAL_STDIO:
		vm->serial_fd = STDOUT_FILENO;
		break;
	case VM_SERIAL_FILE: {
		struct stat st;

		/*
		 * A file, a character device (/dev/null, a terminal) or a FIFO someone reads:
		 * the console's writer thread absorbs a slow reader. A FIFO nobody reads would
		 * hold open() forever: refused.
		 */
		vm->serial_fd = io_open_nonblock(AT_FDCWD, cfg->serial_path,
						 O_WRONLY | O_CREAT | O_APPEND, 0600, &st);
		if (vm->serial_fd == -ENXIO)
			return err_set(e, -EINVAL, "serial output %s is a FIFO that nobody reads "
						   "(start its reader first)", cfg->serial_path);
		if (vm->serial_fd < 0)
			return err_set(e, vm->serial_fd, "open serial output %s: %s",
				       cfg->serial_path, strerror(-vm->serial_fd));
		vm->serial_fd_owned = true;
		if (!S_ISREG(st.st_mode) && !S_ISCHR(st.st_mode) && !S_ISFIFO(st.st_mode))
			return err_set(e, -EINVAL, "serial output %s is not a regular file, a "
						   "character device or a FIFO", cfg->serial_path);
		break;
	}
	case VM_SERIAL_NONE:
		break;
	}
	if (vm->serial_fd >= 0) {
		ret = console_create(&vm->console, vm->serial_fd, e);
		if (ret < 0)
			return ret;
	}
	ret = serial_create(&vm->serial, &ops, vm);
	if (ret < 0)
		return err_set(e, ret, "create serial device: %s", strerror(-ret));
	dev = (struct device_info){ .ops = &serial_device_ops, .dev = vm->serial,
				    .io_kind = DEV_IO_PIO, .io_base = SERIAL_PORT_BASE, .io_len = 8,
				    .io_fn = serial_pio, .instance = VM_SERIAL_INSTANCE, .notify_fd = -1 };
	ret = vm_device_attach(vm, &dev, e);
	if (ret < 0) {
		serial_destroy(vm->serial);
		vm->serial = NULL;
		return ret;
	}
	if (cfg->serial == VM_SERIAL_STDIO && isatty(STDIN_FILENO)) {
		/*
		 * Keyboard input reaches the guest; never for pipes or /dev/null. O_NONBLOCK is
		 * set on the terminal's file description, which the shell shares: vm_destroy()
		 * puts the flags back.
		 */
		int fl = fcntl(STDIN_FILENO, F_GETFL);

		if (fl < 0 || fcntl(STDIN_FILENO, F_SETFL, fl | O_NONBLOCK) < 0) {
			log_warn("serial input from stdin unavailable: %s", strerror(errno));
			return 0;
		}
		vm->stdin_flags = fl;
		if (evloop_fd_add(vm->loop, STDIN_FILENO, EPOLLIN, vm_stdin_cb, vm) < 0)
			log_warn("serial input from stdin unavailable");
	}
	return 0;
}

/* ---- creation ---- */

static int vm_kvm_setup(struct vm *vm, const char *kvm_path, struct errbuf *e)
{
	struct kvm_pit_config pit = { .flags = 0 };
	uint64_t ident = BOOT_IDENTITY_MAP_GPA;
	int ret;

	ret = kvm_sys_open(&vm->kvm, kvm_path ? kvm_path : "/dev/kvm", e);
	if (ret < 0)
		return ret;
	ret = kvm_vm_create(&vm->kvm, &vm->fd, e);
	if (ret < 0)
		return ret;
	ret = kvm_ioctl(vm->fd, KVM_SET_TSS_ADDR, (void *)(uintptr_t)BOOT_TSS_GPA);
	if (ret < 0)
		return err_set(e, ret, "KVM_SET_TSS_ADDR: %s", strerror(-ret));
	ret = kvm_ioctl(vm->fd, KVM_SET_IDENTITY_MAP_ADDR, &ident);
	if (ret < 0)
		return err_set(e, ret, "KVM_SET_IDENTITY_MAP_ADDR: %s", strerror(-ret));
	ret = kvm_ioctl(vm->fd, KVM_CREATE_IRQCHIP, NULL);
	if (ret < 0)
		return err_set(e, ret, "KVM_CREATE_IRQCHIP: %s", strerror(-ret));
	ret = kvm_ioctl(vm->fd, KVM_CREATE_PIT2, &pit);
	if (ret < 0)
		return err_set(e, ret, "KVM_CREATE_PIT2: %s", strerror(-ret));
	ret = kvm_cpuid_supported(&vm->kvm, &vm->cpuid, e);
	if (ret < 0)
		return ret;
	cpuid_vm_prepare(vm->cpuid);
	return 0;
}

static int vm_memory_setup(struct vm *vm, uint64_t size, struct errbuf *e)
{
	struct dirty_slot *slots;
	unsigned n;
	int ret = guest_mem_create(&vm->mem, size, e);

	if (ret < 0)
		return ret;
	slots = calloc(VM_SLOTS_MAX, sizeof(*slots));
	if (!slots)
		return err_set(e, -ENOMEM, "out of memory");
	n = vm_memslots(vm, slots);
	for (unsigned i = 0; i < n && ret == 0; i++)
		ret = kvm_vm_memslot_set(vm->fd, slots[i].slot, 0, slots[i].gpa,
					 slots[i].npages * GUEST_PAGE_SIZE, slots[i].host, e);
	free(slots);
	return ret;
}

struct vm_boot_arg {
	struct boot_kernel k;
	struct errbuf *e;
};

static int vm_kernel_load(struct vm *vm, const struct vm_config *cfg, struct boot_kernel *k,
			  struct errbuf *e)
{
	struct boot_ram_range ranges[GUEST_MEM_MAX_REGIONS];
	struct boot_machine m = {
		.ram = vm->mem.regions[0].host,
		.low_size = vm->mem.regions[0].size,
		.ranges = ranges,
		.nranges = vm->mem.nregions,
		.nvcpus = vm->nvcpus,
	};
	char cmdline[BOOT_CMDLINE_MAX];
	int ret;

	for (unsigned i = 0; i < vm->mem.nregions; i++)
		ranges[i] = (struct boot_ram_range){ vm->mem.regions[i].gpa,
						     vm->mem.regions[i].size };
	snprintf(cmdline, sizeof(cmdline), "%s", cfg->cmdline ? cfg->cmdline : "");
	ret = vm_devices_cmdline(vm, cmdline, sizeof(cmdline), e);
	if (ret < 0)
		return ret;
	ret = boot_load_files(&m, cfg->kernel, cfg->initrd, cmdline, k, e);
	if (ret < 0)
		return ret;
	log_debug("kernel %s: %s, entry 0x%llx%s", cfg->kernel, k->format,
		 (unsigned long long)k->entry, k->initrd_size ? ", initrd loaded" : "");
	return 0;
}

struct vm_build_args {
	const char *name;
	uint64_t memory;
	unsigned nvcpus;
	enum vm_serial_mode serial;
	const char *serial_path;
	const char *kvm_path;
	const struct kvm_cpuid2 *cpuid; /* NULL: what this host supports */
	uint32_t tsc_khz, xsave_size;   /* the guest's (restore), 0: this host's */
	enum vm_dirty_mode dirty;
	const struct device_spec *devices;
	unsigned ndevices;
	bool claim; /* take the devices' backend locks now */
};

static int vm_vcpu_cpuid_setup(struct vcpu *v, void *arg)
{
	return cpuid_vcpu_set(v->fd, v->vm->cpuid, v->index, v->vm->nvcpus, arg);
}

static int vm_vcpu_cpuid_restore(struct vcpu *v, void *arg)
{
	int ret = kvm_ioctl(v->fd, KVM_SET_CPUID2, v->vm->cpuid);

	if (ret < 0)
		return err_set(arg, ret, "KVM_SET_CPUID2 on vCPU %u: %s", v->index, strerror(-ret));
	return 0;
}

/* Everything but the guest's contents: KVM VM, irqchip, PIT, memory, devices, vCPUs. */
static struct vm *vm_alloc(struct evloop *loop, const char *name)
{
	struct vm *vm = calloc(1, sizeof(*vm));

	if (!vm)
		return NULL;
	vm->devices = calloc(VM_MAX_DEVICES, sizeof(*vm->devices));
	if (!vm->devices) {
		free(vm);
		return NULL;
	}
	vm->fd = -1;
	vm->kvm.fd = -1;
	vm->serial_fd = -1;
	vm->stdin_flags = -1;
	vm->loop = loop;
	vm->state = VM_STATE_CREATED;
	if (pthread_mutex_init(&vm->fail_lock, NULL)) {
		free(vm->devices);
		free(vm);
		return NULL;
	}
	if (pthread_mutex_init(&vm->lock, NULL)) {
		pthread_mutex_destroy(&vm->fail_lock);
		free(vm->devices);
		free(vm);
		return NULL;
	}
	if (pthread_mutex_init(&vm->run_lock, NULL)) {
		pthread_mutex_destroy(&vm->lock);
		pthread_mutex_destroy(&vm->fail_lock);
		free(vm->devices);
		free(vm);
		return NULL;
	}
	snprintf(vm->name, sizeof(vm->name), "%s", name);
	for (unsigned i = 0; i < VM_MAX_VCPUS; i++)
		vm->vcpus[i].fd = -1;
	return vm;
}

/*
 * GODWIT_VCPU_PAUSE_DELAY_MS=INDEX:MS, fault injection for tests: vCPU INDEX takes MS
 * longer to leave KVM_RUN when it is kicked, as a vCPU stuck in the kernel would.
 */
static void vm_test_delay_setup(struct vm *vm)
{
	const char *s = getenv("GODWIT_VCPU_PAUSE_DELAY_MS");
	char idx[16];
	const char *colon;
	uint64_t i, ms;

	if (!s)
		return;
	colon = strchr(s, ':');
	if (!colon || (size_t)(colon - s) >= sizeof(idx)) {
		log_warn("GODWIT_VCPU_PAUSE_DELAY_MS=%s ignored: INDEX:MS expected", s);
		return;
	}
	memcpy(idx, s, (size_t)(colon - s));
	idx[colon - s] = '\0';
	if (parse_u64(idx, 0, vm->nvcpus - 1, &i) < 0 || parse_u64(colon + 1, 0, 600000, &ms) < 0) {
		log_warn("GODWIT_VCPU_PAUSE_DELAY_MS=%s ignored: INDEX:MS expected", s);
		return;
	}
	atomic_store(&vm->vcpus[i].delay_ms, (unsigned)ms);
	log_warn("fault injection: vCPU %llu leaves KVM_RUN %llu ms late",
		 (unsigned long long)i, (unsigned long long)ms);
}

/*
 * Builds everything into vm; on failure the caller destroys it. Not under vm->lock:
 * nothing else looks at the parts being built until the state changes.
 */
static int vm_build_into(struct vm *vm, const struct vm_build_args *a, struct errbuf *e)
{
	struct vm_config serial_cfg = { .serial = a->serial, .serial_path = a->serial_path };
	int ret;

	if (a->nvcpus < 1 || a->nvcpus > VM_MAX_VCPUS)
		return err_set(e, -EINVAL, "%u vCPUs out of range (1 to %u)", a->nvcpus,
			       VM_MAX_VCPUS);
	ret = vcpu_signal_setup();
	if (ret < 0)
		return err_set(e, ret, "install the vCPU kick signal: %s", strerror(-ret));
	/* an incoming VM may have its KVM VM and RAM already (vm_incoming_create) */
	if (vm->fd < 0) {
		ret = vm_kvm_setup(vm, a->kvm_path, e);
		if (ret < 0)
			return ret;
	}
	if (a->cpuid) {
		ret = vm_cpuid_check(vm, a->cpuid, e);
		if (ret < 0)
			return ret;
		free(vm->cpuid);
		vm->cpuid = malloc(sizeof(*a->cpuid) + a->cpuid->nent * sizeof(a->cpuid->entries[0]));
		if (!vm->cpuid)
			return err_set(e, -ENOMEM, "out of memory");
		memcpy(vm->cpuid, a->cpuid,
		       sizeof(*a->cpuid) + a->cpuid->nent * sizeof(a->cpuid->entries[0]));
	}
	ret = kvm_msr_index_list(&vm->kvm, &vm->msr_indices, &vm->nmsrs, e);
	if (ret < 0)
		return ret;
	vm->xsave_size = vcpu_state_xsave_size(vm->fd);
	if (!vm->mem.base) {
		ret = vm_memory_setup(vm, a->memory, e);
		if (ret < 0)
			return ret;
	} else if (vm->mem.size != a->memory) {
		return err_set(e, -EINVAL, "the guest has %llu MiB of memory; this destination "
					   "was started with --memory %llu MiB",
			       (unsigned long long)(a->memory / MiB),
			       (unsigned long long)(vm->mem.size / MiB));
	}
	ret = vm_serial_setup(vm, &serial_cfg, e);
	if (ret < 0)
		return ret;
	ret = vm_legacy_setup(vm, e);
	if (ret < 0)
		return ret;
	ret = vm_devices_create(vm, a->devices, a->ndevices, a->claim, e);
	if (ret < 0)
		return ret;
	vm->dirty_mode = a->dirty;
	ret = vm_dirty_setup(vm, a->nvcpus, e);
	if (ret < 0)
		return ret;
	vm->nvcpus = a->nvcpus;
	for (unsigned i = 0; i < vm->nvcpus; i++) {
		ret = vcpu_create(&vm->vcpus[i], vm, vm->fd, i, vm->kvm.vcpu_mmap_size, e);
		if (ret < 0)
			return ret;
		ret = vm_dirty_vcpu_setup(vm, &vm->vcpus[i], e);
		if (ret < 0)
			return ret;
		ret = vcpu_thread_start(&vm->vcpus[i], e);
		if (ret < 0)
			return ret;
		/* CPUID before any other vCPU state (MACHINE-NOTES) */
		ret = vcpu_call(&vm->vcpus[i], a->cpuid ? vm_vcpu_cpuid_restore : vm_vcpu_cpuid_setup,
				e);
		if (ret < 0)
			return ret;
	}
	vm_test_delay_setup(vm);
	return vm_machine_preflight(vm, a->tsc_khz, a->xsave_size, e);
}

static int vm_build(struct vm **out, struct evloop *loop, const struct vm_build_args *a,
		    struct errbuf *e)
{
	struct vm *vm = vm_alloc(loop, a->name);
	int ret;

	if (!vm)
		return err_set(e, -ENOMEM, "out of memory");
	ret = vm_build_into(vm, a, e);
	if (ret < 0) {
		vm_destroy(vm);
		return ret;
	}
	*out = vm;
	return 0;
}

static int vm_vcpu_boot_setup(struct vcpu *v, void *arg)
{
	struct vm_boot_arg *b = arg;

	return boot_vcpu_setup(v->fd, &b->k, b->e);
}

int vm_create(struct vm **out, struct evloop *loop, const struct vm_config *cfg,
	      struct errbuf *e)
{
	struct vm_build_args a = {
		.name = cfg->name,
		.memory = cfg->memory,
		.nvcpus = cfg->vcpus,
		.serial = cfg->serial,
		.serial_path = cfg->serial_path,
		.kvm_path = cfg->kvm_path,
		.dirty = cfg->dirty,
		.devices = cfg->devices,
		.ndevices = cfg->ndevices,
		.claim = true,
	};
	struct vm_boot_arg boot = { .e = e };
	struct vm *vm = NULL;
	int ret;

	ret = vm_build(&vm, loop, &a, e);
	if (ret < 0)
		return ret;
	ret = vm_kernel_load(vm, cfg, &boot.k, e);
	if (ret < 0)
		goto err;
	/* the APs wait for INIT/SIPI from the guest through the in-kernel LAPIC */
	ret = vcpu_call(&vm->vcpus[0], vm_vcpu_boot_setup, &boot);
	if (ret < 0)
		goto err;
	*out = vm;
	return 0;

err:
	vm_destroy(vm);
	return ret;
}

static struct vm_build_args vm_restore_args(const struct vm_restore_config *cfg, const char *name)
{
	return (struct vm_build_args){
		.name = name,
		.memory = cfg->memory,
		.nvcpus = cfg->nvcpus,
		.serial = cfg->serial,
		.serial_path = cfg->serial_path,
		.kvm_path = cfg->kvm_path,
		.cpuid = cfg->cpuid,
		.tsc_khz = cfg->tsc_khz,
		.xsave_size = cfg->xsave_size,
		.dirty = cfg->dirty,
		.devices = cfg->devices,
		.ndevices = cfg->ndevices,
		.claim = !cfg->defer_claim,
	};
}

int vm_create_restore(struct vm **out, struct evloop *loop, const struct vm_restore_config *cfg,
		      struct errbuf *e)
{
	struct vm_build_args a = vm_restore_args(cfg, cfg->name);

	return vm_build(out, loop, &a, e);
}

void vm_start_paused(struct vm *vm)
{
	pthread_mutex_lock(&vm->run_lock);
	pthread_mutex_lock(&vm->lock);
	vm->start_ns = time_mono_ns();
	vm->paused_since_ns = vm->start_ns;
	vm->state = VM_STATE_PAUSED;
	pthread_mutex_unlock(&vm->lock);
	pthread_mutex_unlock(&vm->run_lock);
}

uint64_t vm_guest_resident(struct vm *vm)
{
	return vm->mem.base ? guest_mem_resident(&vm->mem) : 0;
}

struct guest_mem *vm_memory(struct vm *vm)
{
	return &vm->mem;
}

void vm_machine_get(struct vm *vm, struct vm_machine *m)
{
	memset(m, 0, sizeof(*m));
	m->nvcpus = vm->nvcpus;
	m->memory = vm->mem.size;
	m->nregions = vm->mem.nregions;
	for (unsigned i = 0; i < vm->mem.nregions; i++) {
		m->regions[i].gpa = vm->mem.regions[i].gpa;
		m->regions[i].size = vm->mem.regions[i].size;
		m->regions[i].offset = vm->mem.regions[i].offset;
		m->regions[i].host = vm->mem.regions[i].host;
	}
	m->cpuid = vm->cpuid;
	m->tsc_khz = vm->tsc_khz;
	m->xsave_size = vm->xsave_size;
}

/* ---- run control ---- */

static void vm_state_set(struct vm *vm, enum vm_state st)
{
	pthread_mutex_lock(&vm->lock);
	vm->state = st;
	pthread_mutex_unlock(&vm->lock);
}

static enum vm_state vm_state_get(struct vm *vm)
{
	enum vm_state st;

	pthread_mutex_lock(&vm->lock);
	st = vm->state;
	pthread_mutex_unlock(&vm->lock);
	return st;
}

/*
 * Asks every vCPU for req; for PAUSED, waits for all of them against one deadline.
 * Pausing is all or nothing: if a vCPU does not leave KVM_RUN in time, those that did
 * are resumed and the VM keeps running. Called under run_lock and never under vm->lock,
 * so status answers while a pause is in progress.
 */
static int vm_vcpus_request(struct vm *vm, enum vcpu_run_state req, struct errbuf *e)
{
	uint64_t deadline;
	unsigned i;
	int ret = 0;

	for (i = 0; i < vm->nvcpus; i++)
		vcpu_state_request(&vm->vcpus[i], req);
	if (req == VCPU_RUNNING)
		return 0;
	deadline = time_mono_ns() + VM_PAUSE_TIMEOUT_MS * 1000000ull;
	for (i = 0; i < vm->nvcpus; i++) {
		ret = vcpu_state_wait(&vm->vcpus[i], deadline);
		if (ret < 0)
			break;
	}
	if (ret == 0)
		return 0;
	for (unsigned j = 0; j < vm->nvcpus; j++)
		vcpu_state_request(&vm->vcpus[j], VCPU_RUNNING);
	return err_set(e, ret, "vCPU %u did not leave KVM_RUN within %d ms; the pause was undone "
			       "and the VM keeps running", i, VM_PAUSE_TIMEOUT_MS);
}

int vm_start(struct vm *vm, struct errbuf *e)
{
	int ret;

	pthread_mutex_lock(&vm->run_lock);
	pthread_mutex_lock(&vm->lock);
	vm->start_ns = time_mono_ns();
	vm->state = VM_STATE_RUNNING;
	pthread_mutex_unlock(&vm->lock);
	vm_devices_resume(vm);
	ret = vm_vcpus_request(vm, VCPU_RUNNING, e);
	pthread_mutex_unlock(&vm->run_lock);
	return ret;
}

/* Why st refuses a pause or resume ("pause", "resume"); 0 if it does not. */
static int vm_run_refusal(struct vm *vm, const char *verb, bool owner, struct errbuf *e)
{
	if (vm->busy && !owner)
		return err_set(e, -EBUSY, "cannot %s: %s is in progress", verb, vm->busy);
	if (vm->state == VM_STATE_HANDED_OVER)
		return err_set(e, -EPERM, "cannot %s: %s", verb, VM_HANDED_OVER_MSG);
	if (vm->state != VM_STATE_RUNNING && vm->state != VM_STATE_PAUSED)
		return err_set(e, -EINVAL, "cannot %s a VM that is %s", verb,
			       vm_state_name(vm->state));
	return 0;
}

/*
 * run_lock serialises the changes of run state (each may wait seconds for the vCPUs);
 * vm->lock only guards the fields, so readers never wait for a handshake.
 */
static int vm_run_change(struct vm *vm, bool pause, bool owner, struct errbuf *e)
{
	const char *verb = pause ? "pause" : "resume";
	enum vm_state want = pause ? VM_STATE_PAUSED : VM_STATE_RUNNING;
	int ret;

	/* refused at once, without waiting for an owner's handshake in progress */
	pthread_mutex_lock(&vm->lock);
	ret = vm_run_refusal(vm, verb, owner, e);
	pthread_mutex_unlock(&vm->lock);
	if (ret < 0)
		return ret;

	pthread_mutex_lock(&vm->run_lock);
	pthread_mutex_lock(&vm->lock);
	ret = vm_run_refusal(vm, verb, owner, e);
	if (ret < 0 || vm->state == want) {
		pthread_mutex_unlock(&vm->lock);
		goto out;
	}
	if (!pause) {
		vm->paused_total_ns += time_mono_ns() - vm->paused_since_ns;
		vm->state = VM_STATE_RUNNING;
	}
	pthread_mutex_unlock(&vm->lock);
	if (!pause)
		vm_devices_resume(vm);
	ret = vm_vcpus_request(vm, pause ? VCPU_PAUSED : VCPU_RUNNING, e);
	if (pause && ret == 0) {
		/* with no vCPU left to queue work: complete every request taken, flush the disks */
		vm_devices_quiesce(vm);
		pthread_mutex_lock(&vm->lock);
		vm->state = VM_STATE_PAUSED;
		vm->paused_since_ns = time_mono_ns();
		pthread_mutex_unlock(&vm->lock);
	}
out:
	pthread_mutex_unlock(&vm->run_lock);
	return ret;
}

int vm_pause(struct vm *vm, struct errbuf *e)
{
	return vm_run_change(vm, true, false, e);
}

int vm_resume(struct vm *vm, struct errbuf *e)
{
	return vm_run_change(vm, false, false, e);
}

int vm_owner_pause(struct vm *vm, struct errbuf *e)
{
	return vm_run_change(vm, true, true, e);
}

int vm_owner_resume(struct vm *vm, struct errbuf *e)
{
	return vm_run_change(vm, false, true, e);
}

int vm_handover(struct vm *vm, struct errbuf *e)
{
	int ret = 0;

	pthread_mutex_lock(&vm->run_lock);
	pthread_mutex_lock(&vm->lock);
	if (vm->state != VM_STATE_PAUSED)
		ret = err_set(e, -EINVAL, "cannot hand over a VM that is %s",
			      vm_state_name(vm->state));
	else
		vm->state = VM_STATE_HANDED_OVER;
	pthread_mutex_unlock(&vm->lock);
	pthread_mutex_unlock(&vm->run_lock);
	return ret;
}

int vm_busy_set(struct vm *vm, const char *what, bool *paused, struct errbuf *e)
{
	int ret = 0;

	pthread_mutex_lock(&vm->lock);
	if (vm->busy)
		ret = err_set(e, -EBUSY, "%s is already in progress", vm->busy);
	else if (vm->state == VM_STATE_HANDED_OVER)
		ret = err_set(e, -EPERM, "%s", VM_HANDED_OVER_MSG);
	else if (vm->state == VM_STATE_INCOMING)
		ret = err_set(e, -EINVAL, "the VM is still waiting for its incoming migration");
	else if (vm->state != VM_STATE_RUNNING && vm->state != VM_STATE_PAUSED)
		ret = err_set(e, -EINVAL, "the VM is %s", vm_state_name(vm->state));
	else
		vm->busy = what;
	if (ret == 0 && paused)
		*paused = vm->state == VM_STATE_PAUSED;
	pthread_mutex_unlock(&vm->lock);
	return ret;
}

void vm_busy_clear(struct vm *vm)
{
	pthread_mutex_lock(&vm->lock);
	vm->busy = NULL;
	pthread_mutex_unlock(&vm->lock);
}

void vm_throttle_set(struct vm *vm, unsigned pct)
{
	atomic_store(&vm->throttle_pct, MIN(pct, 99u));
}

uint64_t vm_vcpus_first_run(struct vm *vm)
{
	uint64_t last = 0;

	for (unsigned i = 0; i < vm->nvcpus; i++) {
		uint64_t t = atomic_load(&vm->vcpus[i].first_run_ns);

		if (!t)
			return 0;
		last = MAX(last, t);
	}
	return last;
}

void vm_throttle_kick(struct vm *vm)
{
	for (unsigned i = 0; i < vm->nvcpus; i++)
		vcpu_throttle_kick(&vm->vcpus[i]);
}

void vm_status_get(struct vm *vm, struct vm_status *st)
{
	uint64_t now = time_mono_ns();

	memset(st, 0, sizeof(*st));
	pthread_mutex_lock(&vm->lock);
	snprintf(st->name, sizeof(st->name), "%s", vm->name);
	st->state = vm->state;
	st->memory_bytes = vm->mem.size;
	st->vcpus = vm->nvcpus;
	st->uptime_ns = vm->start_ns ? now - vm->start_ns : 0;
	st->paused_ns = vm->paused_total_ns;
	st->console_dropped = console_dropped(vm->console);
	if (vm->state == VM_STATE_PAUSED)
		st->paused_ns += now - vm->paused_since_ns;
	pthread_mutex_unlock(&vm->lock);
}

int vm_incoming_create(struct vm **out, struct evloop *loop, const char *name,
		       uint64_t memory, const char *kvm_path, struct errbuf *e)
{
	struct vm *vm = vm_alloc(loop, name);
	int ret = 0;

	if (!vm)
		return err_set(e, -ENOMEM, "out of memory");
	vm->state = VM_STATE_INCOMING;
	if (memory) {
		ret = vm_kvm_setup(vm, kvm_path, e);
		if (ret == 0)
			ret = vm_memory_setup(vm, memory, e);
		if (ret < 0) {
			vm_destroy(vm);
			return ret;
		}
	}
	*out = vm;
	return 0;
}

int vm_incoming_build(struct vm *vm, const struct vm_restore_config *cfg, struct errbuf *e)
{
	struct vm_build_args a = vm_restore_args(cfg, vm->name);

	if (vm->nvcpus)
		return err_set(e, -EBUSY, "the VM was already built");
	return vm_build_into(vm, &a, e);
}

static void vm_stop_cb(void *opaque)
{
	struct vm *vm = opaque;
	struct errbuf e;

	if (vm_owner_pause(vm, &e) < 0 && vm_state_get(vm) == VM_STATE_RUNNING)
		log_err("stop: %s", e.msg);
	pthread_mutex_lock(&vm->run_lock);
	pthread_mutex_lock(&vm->lock);
	if (vm->state != VM_STATE_FAILED)
		vm->state = VM_STATE_STOPPED;
	pthread_mutex_unlock(&vm->lock);
	pthread_mutex_unlock(&vm->run_lock);
	evloop_stop(vm->loop);
}

void vm_stop_request(struct vm *vm)
{
	if (evloop_call(vm->loop, vm_stop_cb, vm) < 0)
		evloop_stop(vm->loop);
}

static void vm_fail_cb(void *opaque)
{
	struct vm *vm = opaque;
	struct errbuf e;

	if (vm_state_get(vm) == VM_STATE_FAILED)
		return;
	if (vm_owner_pause(vm, &e) < 0 && vm_state_get(vm) == VM_STATE_RUNNING)
		log_err("pausing after a guest failure: %s", e.msg);
	pthread_mutex_lock(&vm->fail_lock);
	log_err("guest stopped: %s", vm->fail_report);
	pthread_mutex_unlock(&vm->fail_lock);
	pthread_mutex_lock(&vm->run_lock);
	vm_state_set(vm, VM_STATE_FAILED);
	pthread_mutex_unlock(&vm->run_lock);
	vm->exit_code = 1;
	evloop_stop(vm->loop);
}

void vm_vcpu_fatal(struct vm *vm, struct vcpu *v, const char *report)
{
	bool first;

	pthread_mutex_lock(&vm->fail_lock);
	first = !vm->failed;
	if (first) {
		vm->failed = true;
		snprintf(vm->fail_report, sizeof(vm->fail_report), "%s", report);
	}
	pthread_mutex_unlock(&vm->fail_lock);
	if (first && evloop_call(vm->loop, vm_fail_cb, vm) < 0)
		log_err("guest stopped: %s", report);
}

int vm_exit_code(struct vm *vm)
{
	return vm->exit_code;
}

void vm_destroy(struct vm *vm)
{
	if (!vm)
		return;
	for (unsigned i = 0; i < VM_MAX_VCPUS; i++)
		if (vm->vcpus[i].fd >= 0 || vm->vcpus[i].thread_started)
			vcpu_destroy(&vm->vcpus[i]);
	if (vm->dirty)
		dirty_tracker_destroy(vm->dirty);
	/* after the vCPUs, before the memory their I/O threads use and the UART's console */
	vm_devices_destroy(vm);
	console_destroy(vm->console);
	vm_legacy_destroy(vm);
	if (vm->serial_fd_owned && vm->serial_fd >= 0)
		close(vm->serial_fd);
	if (vm->stdin_flags >= 0 && fcntl(STDIN_FILENO, F_SETFL, vm->stdin_flags) < 0)
		log_warn("restoring the terminal's flags: %s", strerror(errno));
	guest_mem_destroy(&vm->mem);
	free(vm->cpuid);
	free(vm->msr_indices);
	if (vm->fd >= 0)
		close(vm->fd);
	kvm_sys_close(&vm->kvm);
	free(vm->devices);
	pthread_mutex_destroy(&vm->fail_lock);
	pthread_mutex_destroy(&vm->lock);
	pthread_mutex_destroy(&vm->run_lock);
	free(vm);
}

void vm_exit_code_set(struct vm *vm, int code)
{
	vm->exit_code = code;
}
