/* SPDX-License-Identifier: MIT */
/*
 * Dirty-page tracking on the real /dev/kvm, in the manner of the kernel's
 * dirty_log_test, for every tracker variant: the bitmap with manual protection and
 * INITIALLY_SET, the bitmap with manual protection only, the bitmap whose
 * KVM_GET_DIRTY_LOG clears itself, and the dirty ring (small, so that vCPUs exit with
 * KVM_EXIT_DIRTY_RING_FULL all the time; their threads call dirty_tracker_ring_full()).
 *
 * Two vCPUs run a tiny 32-bit guest that stamps pseudo-random pages of a 48 MiB
 * region (two memory slots of sizes that are not multiples of 64 pages, the second
 * starting at a flat page that is not a multiple of 64 either) with the iteration
 * number it reads from a control page. The host plays the migration source: each
 * round syncs the tracker, takes the VMM-side bitmap (the host itself stamps a few
 * pages per round at another offset, as device emulation would), then, chunk by chunk
 * (300 pages, so never 64-aligned), re-arms the chunk with dirty_tracker_clear() and
 * copies its dirty pages into a shadow copy of guest memory, while the guest runs.
 *
 * An iteration ends by asking the guest to stop (a flag in the control page; the
 * guest answers with a port write carrying its write count, so no write is ever left
 * half done as it can be when a vCPU is stopped by a signal or a full ring), and one
 * more round. Then, with every vCPU stopped:
 *   - every page equals its shadow copy: a page changed since it was last copied was
 *     reported again (no missed write, in whatever round the write happened);
 *   - every region page reported during the iteration holds this iteration's stamp
 *     from the guest or from the VMM: dirty bits are re-armed only when the pages
 *     are read, so nothing is reported from an older iteration (no stale report);
 *   - every region page not reported holds older stamps only.
 * Midway, logging is stopped, the guest runs untracked, and logging is started again
 * while it runs, with a round 0 that copies every page; that iteration is checked for
 * missed writes only (round 0 reports every page).
 *
 * The "-untouched" variants give the tracker a touched callback (pagemap's present and
 * swapped bits): the region's two slots, untouched when logging starts, stay unlogged
 * (round 0 reads only touched pages, as the migration's round 0 does), and the syncs of
 * iteration 1 find them touched by the running guest and turn logging on late. The
 * same checks then prove that no write made before, during or after that is missed.
 */
#include "kvm_test.h"
#include "arch/x86/cpuid.h"
#include "kvm/dirty.h"

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096u
#define LOW_PAGES 256u          /* slot 0: 1 MiB at GPA 0 with GDT, code and control page */
#define GDT_GPA 0x500u
#define CODE_GPA 0x1000u
#define CTRL_GPA 0x2000u        /* u32 iteration at +0, u32 stop flag at +4 */
#define CTRL_ITER 0u
#define CTRL_STOP 4u
#define STOP_PORT 0x510u
#define REGION_GPA (16u << 20)
#define SLOT1_PAGES 6001u
#define SLOT2_PAGES 6290u
#define REGION_PAGES (SLOT1_PAGES + SLOT2_PAGES)
#define TOTAL_PAGES (LOW_PAGES + REGION_PAGES)
#define BITMAP_WORDS ((TOTAL_PAGES + 63) / 64)
#define GUEST_STAMP_OFF 0u      /* where the guest stamps a page */
#define VMM_STAMP_OFF 8u        /* where the "VMM" stamps one */
#define NVCPUS 2
#define ITERATIONS 24
#define RESTART_ITERATION 12
#define CHUNK_PAGES 300u
#define VMM_WRITES_PER_ROUND 8
#define MIN_REPORTED 256        /* pages each iteration must see reported while running */
#define PROGRESS_LIMIT_NS (20ull * 1000000000ull)
#define IDENTITY_MAP_GPA 0xfeffc000ull
#define TSS_GPA 0xfeffd000ull
#define WATCHDOG_S 240

/*
 * 32-bit flat, no paging, at CODE_GPA; esi = seed, edi = REGION_GPA, ebp = REGION_PAGES,
 * ecx = writes since the last stop:
 * top:	cmpl $0, 0x2004 ; jne stop
 *	imul $1103515245, %esi, %esi ; add $12345, %esi    ; LCG
 *	mov %esi, %eax ; mul %ebp ; shl $12, %edx           ; page = (seed * pages) >> 32
 *	mov 0x2000, %eax ; mov %eax, (%edi,%edx)            ; stamp it with the iteration
 *	inc %ecx ; jmp top
 * stop:	mov %ecx, %eax ; mov $0x510, %dx ; out %eax, %dx    ; report the count and stop
 *	xor %ecx, %ecx ; jmp top
 */
static const uint8_t guest_code[] = {
	0x83, 0x3d, 0x04, 0x20, 0x00, 0x00, 0x00, 0x75, 0x1e, 0x69, 0xf6, 0x6d, 0x4e, 0xc6,
	0x41, 0x81, 0xc6, 0x39, 0x30, 0x00, 0x00, 0x89, 0xf0, 0xf7, 0xe5, 0xc1, 0xe2, 0x0c,
	0xa1, 0x00, 0x20, 0x00, 0x00, 0x89, 0x04, 0x17, 0x41, 0xeb, 0xd9, 0x89, 0xc8, 0x66,
	0xba, 0x10, 0x05, 0xef, 0x31, 0xc9, 0xeb, 0xce,
};

struct variant {
	const char *name;
	enum dirty_mode mode;
	bool no_manual_protect, no_initially_set;
	uint32_t ring_bytes;         /* the smallest tried; larger ones if the host refuses */
	bool reap;                   /* dirty_tracker_harvest() every ms between rounds */
	bool untouched;              /* a touched callback: untouched slots logged late */
};

static const struct variant variants[] = {
	{ "bitmap", DIRTY_MODE_BITMAP, false, false, 0, false, false },
	{ "bitmap-no-initially-set", DIRTY_MODE_BITMAP, false, true, 0, false, false },
	{ "bitmap-get-clears", DIRTY_MODE_BITMAP, true, true, 0, false, false },
	/* fills up between rounds: ring-full exits all the time, overflows on kvm_pvm */
	{ "ring-small", DIRTY_MODE_RING, false, false, 4096, false, false },
	/* harvested every ms: should rarely fill up */
	{ "ring", DIRTY_MODE_RING, false, false, 65536, true, false },
	{ "bitmap-untouched", DIRTY_MODE_BITMAP, false, true, 0, false, true },
	{ "ring-untouched", DIRTY_MODE_RING, false, false, 65536, true, true },
};

struct test_vm;

struct vcpu_ctx {
	struct test_vm *vm;
	unsigned index;
	int fd;
	struct kvm_run *run;
	pthread_t thread;
	uint32_t writes;             /* the guest's count at its last stop */
	uint64_t ring_full;
};

struct test_vm {
	const struct variant *v;
	struct kvm_sys kvm;
	int vmfd;
	uint8_t *low, *region;
	struct kvm_cpuid2 *cpuid;
	uint32_t ring_bytes;
	struct dirty_tracker *t;
	struct vcpu_ctx vcpus[NVCPUS];

	pthread_mutex_t lock;
	pthread_cond_t cond;
	unsigned gen;                /* bumped to let the vCPUs run */
	unsigned stopped;            /* vCPUs stopped since */
	bool quit;

	_Atomic uint64_t vmm_dirty[BITMAP_WORDS];
	_Atomic uint64_t vmm_dirty_sum[(BITMAP_WORDS + 63) / 64];
	uint64_t bitmap[BITMAP_WORDS];     /* the round's dirty pages */
	uint64_t reported[BITMAP_WORDS];   /* every page reported this iteration */
	uint8_t *shadow;                   /* what the "destination" has */
	unsigned seed;
	int pagemap_fd;
	uint64_t touched_calls;
};

static bool bit_test(const uint64_t *b, uint64_t i)
{
	return b[i / 64] & (1ull << (i % 64));
}

static uint8_t *page_host(struct test_vm *vm, uint64_t pg)
{
	return pg < LOW_PAGES ? vm->low + pg * PAGE : vm->region + (pg - LOW_PAGES) * PAGE;
}

static uint64_t page_gpa(uint64_t pg)
{
	return pg < LOW_PAGES ? pg * PAGE : REGION_GPA + (pg - LOW_PAGES) * PAGE;
}

static uint32_t page_word(struct test_vm *vm, uint64_t pg, unsigned off)
{
	return __atomic_load_n((uint32_t *)(void *)(page_host(vm, pg) + off), __ATOMIC_RELAXED);
}

static uint32_t shadow_word(struct test_vm *vm, uint64_t pg, unsigned off)
{
	uint32_t v;

	memcpy(&v, vm->shadow + pg * PAGE + off, sizeof(v));
	return v;
}

/* Pagemap entry of the host page at p: bit 63 present, bit 62 swapped. */
static uint64_t pagemap_entry(struct test_vm *vm, const void *p)
{
	uint64_t ent = 0;
	off_t off = (off_t)((uintptr_t)p / PAGE * sizeof(ent));

	TEST_ASSERT(pread(vm->pagemap_fd, &ent, sizeof(ent), off) == (ssize_t)sizeof(ent),
		    "pread /proc/self/pagemap");
	return ent;
}

static bool page_touched(struct test_vm *vm, const void *p)
{
	return pagemap_entry(vm, p) & (3ull << 62);
}

/* The tracker's touched callback (dirty.h), from pagemap one entry at a time. */
static int64_t touched_cb(void *opaque, const void *host, uint64_t npages, uint64_t *bitmap)
{
	struct test_vm *vm = opaque;
	int64_t n = 0;

	vm->touched_calls++;
	for (uint64_t i = 0; i < npages; i++) {
		if (!page_touched(vm, (const uint8_t *)host + i * PAGE))
			continue;
		n++;
		if (bitmap)
			bitmap[i / 64] |= 1ull << (i % 64);
	}
	return n;
}

/* A write by the "VMM": the data first, then its bit and summary bit (dirty.h: VMM writes). */
static void vmm_write32(struct test_vm *vm, uint64_t pg, unsigned off, uint32_t v)
{
	__atomic_store_n((uint32_t *)(void *)(page_host(vm, pg) + off), v, __ATOMIC_RELAXED);
	dirty_bitmap_mark(vm->vmm_dirty, vm->vmm_dirty_sum, pg);
}

static void sleep_ms(unsigned ms)
{
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L };

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

static void seg_flat(struct kvm_segment *s, uint16_t sel, uint8_t type)
{
	memset(s, 0, sizeof(*s));
	s->limit = 0xffffffff;
	s->selector = sel;
	s->type = type;
	s->present = 1;
	s->db = 1;
	s->s = 1;
	s->g = 1;
}

static void vcpu_setup(struct vcpu_ctx *c)
{
	struct errbuf e = { "" };
	struct kvm_sregs sr;
	struct kvm_regs regs;

	TEST_OK(kvm_ioctl(c->fd, KVM_GET_SREGS, &sr));
	seg_flat(&sr.cs, 0x08, 0xb);
	seg_flat(&sr.ds, 0x10, 0x3);
	sr.es = sr.fs = sr.gs = sr.ss = sr.ds;
	sr.gdt.base = GDT_GPA;
	sr.gdt.limit = 3 * 8 - 1;
	sr.cr0 |= 1; /* PE, no paging */
	TEST_OK(kvm_ioctl(c->fd, KVM_SET_SREGS, &sr));
	memset(&regs, 0, sizeof(regs));
	regs.rip = CODE_GPA;
	regs.rflags = 0x2;
	regs.rsi = 0x2545f491u + 0x9e3779b9u * (c->index + 1);
	regs.rdi = REGION_GPA;
	regs.rbp = REGION_PAGES;
	TEST_OK(kvm_ioctl(c->fd, KVM_SET_REGS, &regs));
}

static void vcpu_exit_fail(struct vcpu_ctx *c)
{
	struct kvm_run *run = c->run;
	struct kvm_regs regs;

	memset(&regs, 0, sizeof(regs));
	(void)kvm_ioctl(c->fd, KVM_GET_REGS, &regs);
	if (run->exit_reason == KVM_EXIT_INTERNAL_ERROR)
		TEST_FAIL("vCPU %u: internal error, suberror %u, rip 0x%llx", c->index,
			  run->internal.suberror, (unsigned long long)regs.rip);
	if (run->exit_reason == KVM_EXIT_IO)
		TEST_FAIL("vCPU %u: unexpected I/O on port 0x%x, rip 0x%llx", c->index,
			  run->io.port, (unsigned long long)regs.rip);
	TEST_FAIL("vCPU %u: exit reason %u, rip 0x%llx", c->index, run->exit_reason,
		  (unsigned long long)regs.rip);
}

/* Each vCPU on its own thread: runs while the host lets it, until the guest stops. */
static void *vcpu_thread(void *arg)
{
	struct vcpu_ctx *c = arg;
	struct test_vm *vm = c->vm;
	struct kvm_run *run = c->run;
	struct errbuf e = { "" };
	unsigned gen = 0;

	vcpu_setup(c);
	for (;;) {
		pthread_mutex_lock(&vm->lock);
		while (!vm->quit && vm->gen == gen)
			pthread_cond_wait(&vm->cond, &vm->lock);
		gen = vm->gen;
		if (vm->quit) {
			pthread_mutex_unlock(&vm->lock);
			return NULL;
		}
		pthread_mutex_unlock(&vm->lock);
		for (;;) {
			int ret = kvm_ioctl(c->fd, KVM_RUN, NULL);

			if (ret == -EINTR)
				continue;
			TEST_ASSERT(ret == 0, "vCPU %u: KVM_RUN: %s", c->index, strerror(-ret));
			if (run->exit_reason == KVM_EXIT_DIRTY_RING_FULL) {
				TEST_OK(dirty_tracker_ring_full(vm->t, c->index, &e));
				c->ring_full++;
				continue;
			}
			if (run->exit_reason == KVM_EXIT_IO && run->io.port == STOP_PORT &&
			    run->io.direction == KVM_EXIT_IO_OUT && run->io.size == 4) {
				memcpy(&c->writes, (uint8_t *)run + run->io.data_offset, 4);
				break;
			}
			vcpu_exit_fail(c);
		}
		pthread_mutex_lock(&vm->lock);
		vm->stopped++;
		pthread_cond_broadcast(&vm->cond);
		pthread_mutex_unlock(&vm->lock);
	}
}

static void vcpus_resume(struct test_vm *vm)
{
	pthread_mutex_lock(&vm->lock);
	vm->stopped = 0;
	vm->gen++;
	pthread_cond_broadcast(&vm->cond);
	pthread_mutex_unlock(&vm->lock);
}

/* Asks the guest to stop and waits until every vCPU has: no write is left in flight. */
static void vcpus_stop(struct test_vm *vm)
{
	vmm_write32(vm, CTRL_GPA / PAGE, CTRL_STOP, 1);
	pthread_mutex_lock(&vm->lock);
	while (vm->stopped < NVCPUS)
		pthread_cond_wait(&vm->cond, &vm->lock);
	pthread_mutex_unlock(&vm->lock);
	vmm_write32(vm, CTRL_GPA / PAGE, CTRL_STOP, 0);
}

/* Enables the variant's dirty ring, or the next size up that this host accepts. */
static void ring_enable(struct test_vm *vm)
{
	struct errbuf e = { "" };
	int ret = -EINVAL;

	for (vm->ring_bytes = vm->v->ring_bytes; vm->ring_bytes <= 1048576; vm->ring_bytes *= 2) {
		ret = dirty_ring_enable(vm->vmfd, vm->ring_bytes, &e);
		if (ret != -EINVAL)
			break;
	}
	TEST_ASSERT(ret == 0, "dirty_ring_enable: %s", e.msg);
	printf("%s: ring of %u bytes (%zu entries) per vCPU\n", vm->v->name, vm->ring_bytes,
	       vm->ring_bytes / sizeof(struct kvm_dirty_gfn));
}

static void test_vm_create(struct test_vm *vm, const struct variant *v)
{
	static const uint64_t gdt[] = { 0, 0x00cf9b000000ffffull, 0x00cf93000000ffffull };
	uint64_t ident = IDENTITY_MAP_GPA;
	struct dirty_slot slots[3];
	struct dirty_config cfg;
	struct errbuf e = { "" };

	memset(vm, 0, sizeof(*vm));
	vm->v = v;
	vm->vmfd = -1;
	vm->pagemap_fd = -1;
	TEST_OK(kvm_sys_open(&vm->kvm, "/dev/kvm", &e));
	TEST_OK(kvm_vm_create(&vm->kvm, &vm->vmfd, &e));
	TEST_OK(kvm_ioctl(vm->vmfd, KVM_SET_TSS_ADDR, (void *)(uintptr_t)TSS_GPA));
	TEST_OK(kvm_ioctl(vm->vmfd, KVM_SET_IDENTITY_MAP_ADDR, &ident));
	if (v->mode == DIRTY_MODE_RING)
		ring_enable(vm);

	vm->low = mmap(NULL, LOW_PAGES * PAGE, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	vm->region = mmap(NULL, (size_t)REGION_PAGES * PAGE, PROT_READ | PROT_WRITE,
			  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	vm->shadow = mmap(NULL, (size_t)TOTAL_PAGES * PAGE, PROT_READ | PROT_WRITE,
			  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	TEST_ASSERT(vm->low != MAP_FAILED && vm->region != MAP_FAILED &&
		    vm->shadow != MAP_FAILED, "mmap guest memory");
	for (size_t i = 0; i < ARRAY_SIZE(gdt); i++)
		memcpy(vm->low + GDT_GPA + 8 * i, &gdt[i], 8);
	memcpy(vm->low + CODE_GPA, guest_code, sizeof(guest_code));

	slots[0] = (struct dirty_slot){ .slot = 0, .gpa = 0, .npages = LOW_PAGES,
					.host = vm->low, .first_page = 0 };
	slots[1] = (struct dirty_slot){ .slot = 1, .gpa = REGION_GPA, .npages = SLOT1_PAGES,
					.host = vm->region, .first_page = LOW_PAGES };
	slots[2] = (struct dirty_slot){ .slot = 2, .gpa = REGION_GPA + SLOT1_PAGES * PAGE,
					.npages = SLOT2_PAGES,
					.host = vm->region + (size_t)SLOT1_PAGES * PAGE,
					.first_page = LOW_PAGES + SLOT1_PAGES };
	for (unsigned i = 0; i < ARRAY_SIZE(slots); i++)
		TEST_OK(kvm_vm_memslot_set(vm->vmfd, slots[i].slot, 0, slots[i].gpa,
					   slots[i].npages * PAGE, slots[i].host, &e));
	memset(&cfg, 0, sizeof(cfg));
	cfg.mode = v->mode;
	cfg.vmfd = vm->vmfd;
	cfg.slots = slots;
	cfg.nslots = ARRAY_SIZE(slots);
	cfg.ring_bytes = vm->ring_bytes;
	cfg.nvcpus = NVCPUS;
	cfg.no_manual_protect = v->no_manual_protect;
	cfg.no_initially_set = v->no_initially_set;
	if (v->untouched) {
		vm->pagemap_fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
		TEST_ASSERT(vm->pagemap_fd >= 0, "open /proc/self/pagemap");
		cfg.touched = touched_cb;
		cfg.touched_opaque = vm;
	}
	TEST_OK(dirty_tracker_create(&vm->t, &cfg, &e));
	TEST_ASSERT_EQ(dirty_tracker_pages(vm->t), TOTAL_PAGES);

	TEST_OK(kvm_cpuid_supported(&vm->kvm, &vm->cpuid, &e));
	cpuid_vm_prepare(vm->cpuid);
	pthread_mutex_init(&vm->lock, NULL);
	pthread_cond_init(&vm->cond, NULL);
	for (unsigned i = 0; i < NVCPUS; i++) {
		struct vcpu_ctx *c = &vm->vcpus[i];
		int ret = kvm_ioctl(vm->vmfd, KVM_CREATE_VCPU, (void *)(uintptr_t)i);

		TEST_OK(ret);
		c->vm = vm;
		c->index = i;
		c->fd = ret;
		c->run = mmap(NULL, (size_t)vm->kvm.vcpu_mmap_size, PROT_READ | PROT_WRITE,
			      MAP_SHARED, c->fd, 0);
		TEST_ASSERT(c->run != MAP_FAILED, "mmap kvm_run of vCPU %u", i);
		TEST_OK(cpuid_vcpu_set(c->fd, vm->cpuid, i, NVCPUS, &e));
		TEST_OK(dirty_tracker_vcpu_add(vm->t, i, c->fd, &e));
		TEST_ASSERT(pthread_create(&c->thread, NULL, vcpu_thread, c) == 0,
			    "pthread_create");
	}
}

static void test_vm_destroy(struct test_vm *vm)
{
	pthread_mutex_lock(&vm->lock);
	vm->quit = true;
	pthread_cond_broadcast(&vm->cond);
	pthread_mutex_unlock(&vm->lock);
	for (unsigned i = 0; i < NVCPUS; i++) {
		pthread_join(vm->vcpus[i].thread, NULL);
		munmap(vm->vcpus[i].run, (size_t)vm->kvm.vcpu_mmap_size);
	}
	dirty_tracker_destroy(vm->t);
	for (unsigned i = 0; i < NVCPUS; i++)
		close(vm->vcpus[i].fd);
	close(vm->vmfd);
	if (vm->pagemap_fd >= 0)
		close(vm->pagemap_fd);
	munmap(vm->low, LOW_PAGES * PAGE);
	munmap(vm->region, (size_t)REGION_PAGES * PAGE);
	munmap(vm->shadow, (size_t)TOTAL_PAGES * PAGE);
	free(vm->cpuid);
	kvm_sys_close(&vm->kvm);
	pthread_mutex_destroy(&vm->lock);
	pthread_cond_destroy(&vm->cond);
}

/*
 * One round of the migration source: sync, merge the VMM's own writes, then chunk by
 * chunk re-arm the chunk and copy its dirty pages, only inside the span the sync and the
 * merge report (a bit left outside it fails the test). all: round 0, every page is dirty
 * (with a touched callback: every touched page, looked at after the re-arming, as the
 * migration's round 0 does; an untouched page is zero, as the copy is). Returns the
 * pages copied.
 */
static uint64_t round_run(struct test_vm *vm, bool all)
{
	struct errbuf e = { "" };
	uint64_t copied = 0, span[2] = { 0, 0 };

	/* only the span can have bits: the chunks outside it are not even looked at */
	TEST_OK(dirty_tracker_sync_span(vm->t, vm->bitmap, span, &e));
	dirty_bitmap_take(vm->bitmap, vm->vmm_dirty, vm->vmm_dirty_sum, TOTAL_PAGES, span);
	if (all) {
		for (uint64_t pg = 0; pg < TOTAL_PAGES; pg++)
			vm->bitmap[pg / 64] |= 1ull << (pg % 64);
		span[0] = 0;
		span[1] = TOTAL_PAGES;
	}
	TEST_ASSERT(span[1] <= TOTAL_PAGES, "%s: span ends at page %llu of %u", vm->v->name,
		    (unsigned long long)span[1], TOTAL_PAGES);
	for (uint64_t first = span[0] / CHUNK_PAGES * CHUNK_PAGES; first < span[1];
	     first += CHUNK_PAGES) {
		uint64_t n = MIN(CHUNK_PAGES, TOTAL_PAGES - first);
		bool any = false;

		for (uint64_t pg = first; pg < first + n && !any; pg++)
			any = bit_test(vm->bitmap, pg);
		if (!any)
			continue;
		TEST_OK(dirty_tracker_clear(vm->t, first, n, &e));
		for (uint64_t pg = first; pg < first + n; pg++) {
			if (!bit_test(vm->bitmap, pg))
				continue;
			if (all && vm->v->untouched && !page_touched(vm, page_host(vm, pg))) {
				vm->bitmap[pg / 64] &= ~(1ull << (pg % 64));
				continue;
			}
			memcpy(vm->shadow + pg * PAGE, page_host(vm, pg), PAGE);
			vm->bitmap[pg / 64] &= ~(1ull << (pg % 64));
			vm->reported[pg / 64] |= 1ull << (pg % 64);
			copied++;
		}
	}
	for (uint64_t w = 0; w < BITMAP_WORDS; w++)
		TEST_ASSERT(!vm->bitmap[w], "%s: page %llu was reported outside the sync's span "
					    "[%llu, %llu)", vm->v->name,
			    (unsigned long long)(w * 64 + (uint64_t)__builtin_ctzll(vm->bitmap[w])),
			    (unsigned long long)span[0], (unsigned long long)span[1]);
	return copied;
}

static void vmm_writes(struct test_vm *vm, uint32_t iter)
{
	for (unsigned i = 0; i < VMM_WRITES_PER_ROUND; i++) {
		uint64_t pg = LOW_PAGES + (uint64_t)rand_r(&vm->seed) % REGION_PAGES;

		vmm_write32(vm, pg, VMM_STAMP_OFF, iter);
	}
}

/*
 * Whether the guest has stamped a page with this iteration, i.e. its vCPUs have run: on a
 * loaded host they may not have had a CPU yet while the VMM's own writes alone already
 * make enough pages reported.
 */
static bool guest_stamped(struct test_vm *vm, uint32_t iter)
{
	for (uint64_t pg = LOW_PAGES; pg < TOTAL_PAGES; pg++)
		if (page_word(vm, pg, GUEST_STAMP_OFF) == iter)
			return true;
	return false;
}

/* Runs the guest for a while with rounds in between, then stops it; returns the rounds. */
static unsigned iteration_run(struct test_vm *vm, uint32_t iter, bool restart)
{
	struct errbuf e = { "" };
	uint64_t t0, planned_ms = 5 + (uint64_t)rand_r(&vm->seed) % 30, copied = 0;
	unsigned rounds = 0;
	bool ran = false;

	vmm_write32(vm, CTRL_GPA / PAGE, CTRL_ITER, iter);
	if (restart)
		TEST_OK(dirty_tracker_stop(vm->t, &e));
	vcpus_resume(vm);
	t0 = time_mono_ns();
	if (restart) {
		/* the guest writes untracked for a while; logging comes back while it runs */
		sleep_ms(10);
		TEST_OK(dirty_tracker_start(vm->t, &e));
		copied += round_run(vm, true);
		rounds++;
	}
	for (;;) {
		uint64_t ms = (time_mono_ns() - t0) / 1000000;

		if (ms >= planned_ms && copied >= MIN_REPORTED &&
		    (ran || (ran = guest_stamped(vm, iter))))
			break;
		TEST_ASSERT(time_mono_ns() - t0 < PROGRESS_LIMIT_NS,
			    "%s: iteration %u: only %llu pages reported dirty in %llu s%s: the "
			    "guest is stuck or the tracker reports nothing", vm->v->name, iter,
			    (unsigned long long)copied, PROGRESS_LIMIT_NS / 1000000000ull,
			    ran ? "" : ", no page stamped by the guest");
		for (unsigned n = 1 + (unsigned)rand_r(&vm->seed) % 8; n; n--) {
			sleep_ms(1);
			if (vm->v->reap)
				TEST_OK(dirty_tracker_harvest(vm->t, &e));
		}
		vmm_writes(vm, iter);
		copied += round_run(vm, false);
		rounds++;
	}
	vcpus_stop(vm);
	round_run(vm, false); /* the last round, every vCPU stopped */
	return rounds + 1;
}

/*
 * With every vCPU stopped: no missed write, no stale report. Not full: this iteration
 * reported every page (a restart's round 0, a ring overflow), only the first applies.
 */
static void iteration_verify(struct test_vm *vm, uint32_t iter, bool full, const char *why,
			     unsigned rounds)
{
	uint64_t dirty = 0, clean = 0, stamped = 0, writes = 0;

	for (uint64_t pg = 0; pg < TOTAL_PAGES; pg++) {
		bool rep = bit_test(vm->reported, pg);
		uint8_t *host = page_host(vm, pg), *copy = vm->shadow + pg * PAGE;

		if (pg >= LOW_PAGES && full) {
			uint32_t g = page_word(vm, pg, GUEST_STAMP_OFF);
			uint32_t d = page_word(vm, pg, VMM_STAMP_OFF);

			if (rep)
				TEST_ASSERT(g == iter || d == iter,
					    "%s: iteration %u: page %llu (gpa 0x%llx) reported "
					    "dirty but holds guest stamp %u and VMM stamp %u, "
					    "expected %u in one of them (a stale report)",
					    vm->v->name, iter, (unsigned long long)pg,
					    (unsigned long long)page_gpa(pg), g, d, iter);
			else
				TEST_ASSERT(g < iter && d < iter,
					    "%s: iteration %u: page %llu (gpa 0x%llx) not "
					    "reported dirty but holds guest stamp %u, VMM stamp "
					    "%u: expected both < %u (a missed write; last copy "
					    "had %u and %u)",
					    vm->v->name, iter, (unsigned long long)pg,
					    (unsigned long long)page_gpa(pg), g, d, iter,
					    shadow_word(vm, pg, GUEST_STAMP_OFF),
					    shadow_word(vm, pg, VMM_STAMP_OFF));
			stamped += g == iter;
		}
		if (memcmp(host, copy, PAGE)) {
			unsigned off = 0;

			while (host[off] == copy[off])
				off++;
			TEST_FAIL("%s: iteration %u: page %llu (gpa 0x%llx) changed after it was "
				  "last copied but was not reported again: byte %u is 0x%02x, the "
				  "copy has 0x%02x (guest stamp %u, copy's %u; VMM stamp %u, "
				  "copy's %u)",
				  vm->v->name, iter, (unsigned long long)pg,
				  (unsigned long long)page_gpa(pg), off, host[off], copy[off],
				  page_word(vm, pg, GUEST_STAMP_OFF),
				  shadow_word(vm, pg, GUEST_STAMP_OFF),
				  page_word(vm, pg, VMM_STAMP_OFF),
				  shadow_word(vm, pg, VMM_STAMP_OFF));
		}
		if (rep)
			dirty++;
		else
			clean++;
	}
	for (unsigned i = 0; i < NVCPUS; i++)
		writes += vm->vcpus[i].writes;
	TEST_ASSERT(writes > 0, "%s: iteration %u: the guest made no write", vm->v->name, iter);
	TEST_ASSERT(stamped <= writes, "%s: iteration %u: %llu pages carry this iteration's "
				       "stamp, but the guest made %llu writes",
		    vm->v->name, iter, (unsigned long long)stamped, (unsigned long long)writes);
	printf("%s: iteration %2u: %u rounds, dirty %5llu clean %5llu, guest writes %llu "
	       "(%llu pages stamped)%s%s%s\n", vm->v->name, iter, rounds,
	       (unsigned long long)dirty, (unsigned long long)clean, (unsigned long long)writes,
	       (unsigned long long)stamped, full ? "" : ", ", full ? "" : why,
	       full ? "" : ": checked for missed writes only");
	memset(vm->reported, 0, sizeof(vm->reported));
}

static void variant_run(const struct variant *v)
{
	struct errbuf e = { "" };
	struct dirty_stats st;
	struct test_vm *vm = calloc(1, sizeof(*vm));
	uint64_t ring_full = 0, first;

	TEST_ASSERT(vm, "out of memory");
	test_vm_create(vm, v);
	vm->seed = (unsigned)time(NULL) ^ (unsigned)(v - variants) * 7919u;
	printf("%s: seed %u\n", v->name, vm->seed);

	/* round 0 before the guest ever runs */
	TEST_OK(dirty_tracker_start(vm->t, &e));
	TEST_OK(dirty_tracker_sync(vm->t, vm->bitmap, &e));
	first = 0;
	for (unsigned i = 0; i < BITMAP_WORDS; i++)
		first += (uint64_t)__builtin_popcountll(vm->bitmap[i]);
	dirty_tracker_stats(vm->t, &st);
	if (st.manual_caps & KVM_DIRTY_LOG_INITIALLY_SET)
		TEST_ASSERT(first == TOTAL_PAGES, "%s: the first sync after an INITIALLY_SET "
						  "start reported %llu of %u pages",
			    v->name, (unsigned long long)first, TOTAL_PAGES);
	else
		TEST_ASSERT(first == 0, "%s: the first sync reported %llu pages the guest never "
					"wrote", v->name, (unsigned long long)first);
	round_run(vm, true);
	memset(vm->reported, 0, sizeof(vm->reported));
	if (v->untouched) {
		dirty_tracker_stats(vm->t, &st);
		TEST_ASSERT(st.slots_deferred == 2 && st.slots_logged == 1,
			    "%s: the start left %llu slots unlogged and logs %u, expected the "
			    "region's 2 unlogged and 1 logged", v->name,
			    (unsigned long long)st.slots_deferred, st.slots_logged);
	}

	for (uint32_t iter = 1; iter <= ITERATIONS; iter++) {
		bool restart = iter == RESTART_ITERATION;
		uint64_t overflows = st.ring_overflows;
		unsigned rounds = iteration_run(vm, iter, restart);

		dirty_tracker_stats(vm->t, &st);
		iteration_verify(vm, iter, !restart && st.ring_overflows == overflows,
				 restart ? "logging restarted" : "ring overflow recovered", rounds);
	}

	dirty_tracker_stats(vm->t, &st);
	for (unsigned i = 0; i < NVCPUS; i++)
		ring_full += vm->vcpus[i].ring_full;
	if (v->untouched) {
		/* iteration 1's guest touched both; the restart found them touched at once */
		TEST_ASSERT(st.slots_late == 2 && st.slots_deferred == 2 && st.slots_logged == 3,
			    "%s: %llu slots logged late of %llu left unlogged, %u logged now; "
			    "expected 2 of 2, and all 3", v->name,
			    (unsigned long long)st.slots_late,
			    (unsigned long long)st.slots_deferred, st.slots_logged);
		printf("%s: %llu touched calls\n", v->name, (unsigned long long)vm->touched_calls);
	}
	printf("%s: %llu syncs, %llu pages reported, %llu re-armed in %llu KVM_CLEAR_DIRTY_LOG, "
	       "%llu ring entries, %llu ring-full exits, %llu overflows (%llu resyncs, %llu "
	       "unsticks), manual caps 0x%x\n", v->name,
	       (unsigned long long)st.syncs, (unsigned long long)st.pages_reported,
	       (unsigned long long)st.pages_rearmed, (unsigned long long)st.clear_ioctls,
	       (unsigned long long)st.ring_entries, (unsigned long long)ring_full,
	       (unsigned long long)st.ring_overflows, (unsigned long long)st.ring_resyncs,
	       (unsigned long long)st.ring_unsticks, st.manual_caps);
	if (v->mode == DIRTY_MODE_RING && !v->reap) {
		TEST_ASSERT(ring_full > 0, "%s: no vCPU ever found its ring full", v->name);
		TEST_ASSERT_EQ(st.ring_full, ring_full);
	} else if (st.manual_caps & KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE) {
		TEST_ASSERT(st.clear_ioctls > 0, "%s: KVM_CLEAR_DIRTY_LOG never ran", v->name);
	}
	TEST_OK(dirty_tracker_stop(vm->t, &e));
	test_vm_destroy(vm);
	free(vm);
	printf("%s: ok\n", v->name);
}

/* A ring that overflows makes the kernel WARN (kvm_pvm); never on a host that panics then. */
static bool kernel_panics_on_warn(void)
{
	FILE *f = fopen("/proc/sys/kernel/panic_on_warn", "r");
	int v = 0;

	if (!f)
		return false;
	if (fscanf(f, "%d", &v) != 1)
		v = 0;
	fclose(f);
	return v != 0;
}

static void watchdog(int sig)
{
	static const char msg[] = "FAIL: watchdog: the test ran too long\n";

	(void)sig;
	(void)!write(2, msg, sizeof(msg) - 1);
	_exit(1);
}

/* With an argument, runs only the variant of that name. */
int main(int argc, char **argv)
{
	const char *only = argc > 1 ? argv[1] : NULL;
	bool ring_skipped = false;
	int fd;

	setvbuf(stdout, NULL, _IOLBF, 0);
	if (access("/dev/kvm", F_OK) < 0 && errno == ENOENT) {
		printf("SKIP: /dev/kvm does not exist\n");
		return KSFT_SKIP;
	}
	signal(SIGALRM, watchdog);
	alarm(WATCHDOG_S);
	fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	TEST_ASSERT(fd >= 0, "open /dev/kvm");
	for (size_t i = 0; i < ARRAY_SIZE(variants); i++) {
		if (only && strcmp(only, variants[i].name))
			continue;
		if (variants[i].mode == DIRTY_MODE_RING &&
		    kvm_cap_check(fd, KVM_CAP_DIRTY_LOG_RING) <= 0 &&
		    kvm_cap_check(fd, KVM_CAP_DIRTY_LOG_RING_ACQ_REL) <= 0) {
			printf("SKIP %s: KVM_CAP_DIRTY_LOG_RING is absent\n", variants[i].name);
			ring_skipped = true;
			continue;
		}
		if (variants[i].mode == DIRTY_MODE_RING && !variants[i].reap &&
		    kernel_panics_on_warn()) {
			printf("SKIP %s: kernel.panic_on_warn is set\n", variants[i].name);
			continue;
		}
		variant_run(&variants[i]);
	}
	close(fd);
	/* a missing capability is a skip, not a pass; the bitmap variants did pass */
	return ring_skipped ? KSFT_SKIP : 0;
}
