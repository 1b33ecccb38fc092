/* SPDX-License-Identifier: MIT */
/*
 * Shared helpers for the KVM test programs: assertions, a tiny 32-bit guest VM, a run loop,
 * and the VMM's own VM with the guest kit.
 */
#include "kvm_test.h"
#include "arch/x86/cpuid.h"
#include "base/evloop.h"
#include "vmm/vm.h"

#include <fcntl.h>
#include <stdarg.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

/* KVM's private pages, outside guest RAM */
#define TVM_IDENTITY_MAP_GPA 0xfeffc000ull
#define TVM_TSS_GPA 0xfeffd000ull

void test_fail(const char *file, int line, const char *fmt, ...)
{
	int err = errno;
	va_list ap;

	fprintf(stderr, "FAIL %s:%d: ", file, line);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, " (errno %d: %s)\n", err, strerror(err));
	exit(1);
}

void tvm_create(struct tvm *t)
{
	struct kvm_pit_config pit = { .flags = 0 };
	uint64_t ident = TVM_IDENTITY_MAP_GPA;
	struct errbuf e = { "" };
	int ret;

	memset(t, 0, sizeof(*t));
	t->vmfd = t->vcpufd = -1;
	if (access("/dev/kvm", F_OK) < 0 && errno == ENOENT) {
		printf("SKIP: /dev/kvm does not exist\n");
		exit(KSFT_SKIP);
	}
	TEST_OK(kvm_sys_open(&t->kvm, "/dev/kvm", &e));
	TEST_OK(kvm_vm_create(&t->kvm, &t->vmfd, &e));
	TEST_OK(kvm_ioctl(t->vmfd, KVM_SET_TSS_ADDR, (void *)(uintptr_t)TVM_TSS_GPA));
	TEST_OK(kvm_ioctl(t->vmfd, KVM_SET_IDENTITY_MAP_ADDR, &ident));
	TEST_OK(kvm_ioctl(t->vmfd, KVM_CREATE_IRQCHIP, NULL));
	TEST_OK(kvm_ioctl(t->vmfd, KVM_CREATE_PIT2, &pit));
	t->mem = mmap(NULL, TVM_MEM_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
		      -1, 0);
	TEST_ASSERT(t->mem != MAP_FAILED, "mmap guest memory");
	TEST_OK(kvm_vm_memslot_set(t->vmfd, 0, 0, 0, TVM_MEM_SIZE, t->mem, &e));
	ret = kvm_ioctl(t->vmfd, KVM_CREATE_VCPU, (void *)0);
	TEST_OK(ret);
	t->vcpufd = ret;
	t->run_size = (size_t)t->kvm.vcpu_mmap_size;
	t->run = mmap(NULL, t->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, t->vcpufd, 0);
	TEST_ASSERT(t->run != MAP_FAILED, "mmap kvm_run");
	/* CPUID first: other vCPU state is checked against it */
	TEST_OK(kvm_cpuid_supported(&t->kvm, &t->cpuid, &e));
	cpuid_vm_prepare(t->cpuid);
	TEST_OK(cpuid_vcpu_set(t->vcpufd, t->cpuid, 0, 1, &e));
}

void tvm_destroy(struct tvm *t)
{
	if (t->run && t->run != MAP_FAILED)
		munmap(t->run, t->run_size);
	if (t->vcpufd >= 0)
		close(t->vcpufd);
	if (t->mem && t->mem != MAP_FAILED)
		munmap(t->mem, TVM_MEM_SIZE);
	if (t->vmfd >= 0)
		close(t->vmfd);
	free(t->cpuid);
	kvm_sys_close(&t->kvm);
	memset(t, 0, sizeof(*t));
}

static void tvm_seg(struct kvm_segment *s, uint16_t sel, uint8_t type)
{
	memset(s, 0, sizeof(*s));
	s->base = 0;
	s->limit = 0xffffffff;
	s->selector = sel;
	s->type = type;
	s->present = 1;
	s->db = 1;
	s->s = 1;
	s->g = 1;
}

void tvm_load_flat32(struct tvm *t, const uint8_t *code, size_t len, uint64_t cr4)
{
	/* null, flat 32-bit code (0x08), flat data (0x10) */
	static const uint64_t gdt[] = { 0, 0x00cf9b000000ffffull, 0x00cf93000000ffffull };
	struct kvm_sregs sr;
	struct kvm_regs regs;
	struct errbuf e = { "" };

	TEST_ASSERT(len <= 0x1000, "guest code of %zu bytes", len);
	for (size_t i = 0; i < ARRAY_SIZE(gdt); i++)
		le_put64(t->mem + TVM_GDT_GPA + 8 * i, gdt[i]);
	memcpy(t->mem + TVM_CODE_GPA, code, len);

	TEST_OK(kvm_ioctl(t->vcpufd, KVM_GET_SREGS, &sr));
	tvm_seg(&sr.cs, 0x08, 0xb);
	tvm_seg(&sr.ds, 0x10, 0x3);
	sr.es = sr.fs = sr.gs = sr.ss = sr.ds;
	sr.gdt.base = TVM_GDT_GPA;
	sr.gdt.limit = sizeof(gdt) - 1;
	sr.cr0 |= 1; /* PE */
	sr.cr4 = cr4;
	TEST_OK(kvm_ioctl(t->vcpufd, KVM_SET_SREGS, &sr));
	memset(&regs, 0, sizeof(regs));
	regs.rip = TVM_CODE_GPA;
	regs.rsp = TVM_STACK_GPA;
	regs.rflags = 0x2;
	TEST_OK(kvm_ioctl(t->vcpufd, KVM_SET_REGS, &regs));
}

static void tvm_report_exit(struct tvm *t)
{
	struct kvm_run *run = t->run;
	struct kvm_regs regs;

	memset(&regs, 0, sizeof(regs));
	(void)kvm_ioctl(t->vcpufd, KVM_GET_REGS, &regs);
	if (run->exit_reason == KVM_EXIT_INTERNAL_ERROR)
		TEST_FAIL("guest stopped: internal error, suberror %u, rip 0x%llx",
			  run->internal.suberror, (unsigned long long)regs.rip);
	if (run->exit_reason == KVM_EXIT_IO)
		TEST_FAIL("guest stopped: unexpected %s port 0x%x, rip 0x%llx",
			  run->io.direction == KVM_EXIT_IO_OUT ? "write to" : "read from",
			  run->io.port, (unsigned long long)regs.rip);
	TEST_FAIL("guest stopped: exit reason %u, rip 0x%llx", run->exit_reason,
		  (unsigned long long)regs.rip);
}

uint32_t tvm_run_to_port(struct tvm *t)
{
	struct kvm_run *run = t->run;
	uint32_t v = 0;
	int ret;

	for (;;) {
		ret = kvm_ioctl(t->vcpufd, KVM_RUN, NULL);
		if (ret == -EINTR)
			continue;
		TEST_ASSERT(ret == 0, "KVM_RUN: %s", strerror(-ret));
		if (run->exit_reason == KVM_EXIT_IO && run->io.direction == KVM_EXIT_IO_OUT &&
		    run->io.port == TVM_EXIT_PORT && run->io.count == 1 && run->io.size <= 4) {
			memcpy(&v, (uint8_t *)run + run->io.data_offset, run->io.size);
			return v;
		}
		tvm_report_exit(t);
	}
}

void tvm_pause(struct tvm *t)
{
	int ret;

	t->run->immediate_exit = 1;
	ret = kvm_ioctl(t->vcpufd, KVM_RUN, NULL);
	t->run->immediate_exit = 0;
	TEST_ASSERT(ret == -EINTR, "KVM_RUN with immediate_exit returned %d", ret);
}

bool test_buf_equal(const struct buf *a, const struct buf *b)
{
	return a->len == b->len && (!a->len || !memcmp(a->data, b->data, a->len));
}

void test_diff(const char *what, const struct buf *a, const struct buf *b)
{
	size_t n = MIN(a->len, b->len), shown = 0;

	if (a->len != b->len)
		fprintf(stderr, "%s: lengths %zu and %zu\n", what, a->len, b->len);
	for (size_t i = 0; i < n && shown < 8; i++) {
		size_t j = i;

		if (a->data[i] == b->data[i])
			continue;
		while (j < n && a->data[j] != b->data[j])
			j++;
		fprintf(stderr, "%s: bytes %zu..%zu differ\n", what, i, j - 1);
		shown++;
		i = j;
	}
}

void test_msleep(unsigned ms)
{
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000 };

	nanosleep(&ts, NULL);
}

bool test_file_wait(const char *path, const char *text, unsigned timeout_ms)
{
	char buf[1 << 16];

	for (unsigned t = 0; t < timeout_ms; t += 20) {
		int fd = open(path, O_RDONLY);
		ssize_t n = fd >= 0 ? read(fd, buf, sizeof(buf) - 1) : -1;

		if (fd >= 0)
			close(fd);
		if (n > 0) {
			buf[n] = '\0';
			if (strstr(buf, text))
				return true;
		}
		test_msleep(20);
	}
	return false;
}

/* the guest kit reports its vCPUs once SMP start-up is done; bounded far above that */
#define TEST_GUEST_START_MS 60000

void test_guest_create(struct test_guest *g, int argc, char **argv, const char *name,
		       unsigned vcpus, const char *cmdline)
{
	struct vm_config cfg = {
		.memory = 64 * MiB,
		.vcpus = vcpus,
		.cmdline = cmdline,
		.serial = VM_SERIAL_FILE,
		.serial_path = g->serial,
	};
	struct errbuf e = { { 0 } };
	int fd;

	if (access("/dev/kvm", R_OK | W_OK)) {
		printf("SKIP: no /dev/kvm\n");
		exit(KSFT_SKIP);
	}
	TEST_ASSERT(argc == 2, "usage: %s GUEST_ELF", argv[0]);
	cfg.kernel = argv[1];
	snprintf(cfg.name, sizeof(cfg.name), "%s", name);
	snprintf(g->serial, sizeof(g->serial), "/tmp/gw-kvmtest-XXXXXX");
	fd = mkstemp(g->serial);
	TEST_ASSERT(fd >= 0, "mkstemp");
	close(fd);
	g->vcpus = vcpus;
	TEST_OK(evloop_create(&g->loop));
	TEST_OK(vm_create(&g->vm, g->loop, &cfg, &e));
}

void test_guest_start(struct test_guest *g)
{
	struct errbuf e = { { 0 } };
	char ready[48];

	snprintf(ready, sizeof(ready), "godwit-guest ready cpus=%u", g->vcpus);
	TEST_OK(vm_start(g->vm, &e));
	TEST_ASSERT(test_file_wait(g->serial, ready, TEST_GUEST_START_MS),
		    "the guest did not report %u CPUs within %u ms", g->vcpus, TEST_GUEST_START_MS);
}

void test_guest_destroy(struct test_guest *g)
{
	vm_destroy(g->vm);
	evloop_destroy(g->loop);
	unlink(g->serial);
	memset(g, 0, sizeof(*g));
}
