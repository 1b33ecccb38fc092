/* SPDX-License-Identifier: MIT */
/*
 * Helpers for the selftest-style KVM test programs: assertions that print the
 * expression, both values and errno; a one-vCPU VM with in-kernel irqchip and PIT,
 * low guest memory and a 32-bit flat protected-mode guest; a run loop that stops at
 * the guest's port writes. Each program is single-threaded, so every vCPU ioctl is
 * made from the thread that runs the vCPU. A host without /dev/kvm skips (exit 77).
 * Also: the VMM's own VM with the guest kit (test_guest_*).
 */
#ifndef GODWIT_TESTS_KVM_TEST_H
#define GODWIT_TESTS_KVM_TEST_H

#include "base/buf.h"
#include "base/util.h"
#include "kvm/kvm.h"

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define KSFT_SKIP 77

#define TEST_FAIL(fmt, ...)                                                                 \
	test_fail(__FILE__, __LINE__, fmt, ##__VA_ARGS__)

#define TEST_ASSERT(cond, fmt, ...)                                                         \
	do {                                                                                \
		if (!(cond))                                                                \
			test_fail(__FILE__, __LINE__, "%s: " fmt, #cond, ##__VA_ARGS__);    \
	} while (0)

#define TEST_ASSERT_EQ(a, b)                                                                \
	do {                                                                                \
		unsigned long long a_ = (unsigned long long)(a);                            \
		unsigned long long b_ = (unsigned long long)(b);                            \
		if (a_ != b_)                                                               \
			test_fail(__FILE__, __LINE__, "%s == %s: 0x%llx != 0x%llx", #a, #b, \
				  a_, b_);                                                  \
	} while (0)

/* expr returns 0 or -errno and fills the struct errbuf `e` in scope */
#define TEST_OK(expr)                                                                       \
	do {                                                                                \
		int r_ = (expr);                                                            \
		if (r_ < 0)                                                                 \
			test_fail(__FILE__, __LINE__, "%s: %d (%s): %s", #expr, r_,         \
				  strerror(-r_), e.msg);                                    \
	} while (0)

void test_fail(const char *file, int line, const char *fmt, ...)
	__attribute__((format(printf, 3, 4), noreturn));

#define TVM_MEM_SIZE (1024 * 1024)
#define TVM_GDT_GPA 0x500
#define TVM_CODE_GPA 0x1000
#define TVM_STACK_GPA 0x8000
#define TVM_EXIT_PORT 0x501

struct tvm {
	struct kvm_sys kvm;
	int vmfd;
	int vcpufd;
	struct kvm_run *run;
	size_t run_size;
	uint8_t *mem;
	struct kvm_cpuid2 *cpuid;
};

/* Exits 77 if /dev/kvm does not exist; fails on any other error. */
void tvm_create(struct tvm *t);
void tvm_destroy(struct tvm *t);
/* Copies code to TVM_CODE_GPA and sets the vCPU to 32-bit flat protected mode there. */
void tvm_load_flat32(struct tvm *t, const uint8_t *code, size_t len, uint64_t cr4);
/* Runs until the guest writes to TVM_EXIT_PORT; returns the value written (up to 32 bits). */
uint32_t tvm_run_to_port(struct tvm *t);
/* Completes a pending I/O exit (KVM_RUN with immediate_exit) so the vCPU state is final. */
void tvm_pause(struct tvm *t);

/*
 * The VMM's own VM (vmm/vm.h) booting the guest kit, for the tests of run control and
 * state: 64 MiB, the guest's serial output in a temporary file. Those tests run vCPUs on
 * the VMM's threads, so they make vCPU ioctls through vcpu_call().
 */
struct evloop;
struct vm;

struct test_guest {
	struct evloop *loop;
	struct vm *vm;
	char serial[32];
	unsigned vcpus;
};

/*
 * Exits 77 without /dev/kvm; takes the guest kit's ELF from argv[1] (usage otherwise) and
 * creates the VM, which is not started yet.
 */
void test_guest_create(struct test_guest *g, int argc, char **argv, const char *name,
		       unsigned vcpus, const char *cmdline);
/* Starts the VM and waits for the guest kit to report all its vCPUs. */
void test_guest_start(struct test_guest *g);
void test_guest_destroy(struct test_guest *g);

/* Prints where two byte strings differ (at most a few spans) to stderr. */
void test_diff(const char *what, const struct buf *a, const struct buf *b);
bool test_buf_equal(const struct buf *a, const struct buf *b);

void test_msleep(unsigned ms);
/* Waits up to timeout_ms for text to appear in the file at path (a guest's serial output). */
bool test_file_wait(const char *path, const char *text, unsigned timeout_ms);

#endif
