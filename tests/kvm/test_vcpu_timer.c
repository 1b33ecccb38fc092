/* SPDX-License-Identifier: MIT */
/*
 * A halted vCPU waiting on its LAPIC timer is saved and restored into a second VM,
 * where the timer keeps ticking and the tick count continues from the saved value.
 * Two timer modes: periodic (SET_LAPIC restarts it from the saved current count) and
 * TSC-deadline (the deadline MSR only arms the timer once the LAPIC is in that mode,
 * so vcpu_state_set must write it after SET_LAPIC; in the wrong order the restored
 * guest would wait forever and the watchdog ends the test). The mode is the program's
 * argument; without KVM_CAP_TSC_DEADLINE_TIMER the tsc-deadline run skips (exit 77).
 */
#include "kvm_test.h"
#include "arch/x86/cpuid.h"
#include "arch/x86/vcpu_state.h"

#include <signal.h>
#include <time.h>
#include <unistd.h>

#define IDT_GPA 0x600
#define TIMER_VECTOR 0x40
#define SPURIOUS_VECTOR 0xff
#define HANDLER_OFF 0x80
#define SPURIOUS_OFF 0xc0
#define DEADLINE_DELTA 0x00c00000u /* TSC cycles between ticks: a few ms */
#define TICKS_BEFORE 5
#define TICKS_AFTER 3
#define MSR_IA32_TSC_DEADLINE 0x6e0u
#define CPUID_1_ECX_TSC_DEADLINE (1u << 24)
#define WATCHDOG_S 60

/*
 * 32-bit, at TVM_CODE_GPA; esi is 0 for a periodic timer, else the deadline delta:
 *	mov $0xfee00000, %edi ; movl $0x1ff, 0xf0(%edi) ; movl $0xb, 0x3e0(%edi)
 *	cmp $0, %esi ; jne deadline
 *	movl $0x20040, 0x320(%edi) ; movl $5000000, 0x380(%edi) ; jmp go   ; periodic 200 Hz
 * deadline:
 *	movl $0x40040, 0x320(%edi) ; rdtsc ; add %esi, %eax ; adc $0, %edx
 *	mov $0x6e0, %ecx ; wrmsr
 * go:	xor %ebx, %ebx
 * 1:	sti ; hlt ; jmp 1b
 */
static const uint8_t guest_main[] = {
	0xbf, 0x00, 0x00, 0xe0, 0xfe, 0xc7, 0x87, 0xf0, 0x00, 0x00, 0x00, 0xff, 0x01, 0x00,
	0x00, 0xc7, 0x87, 0xe0, 0x03, 0x00, 0x00, 0x0b, 0x00, 0x00, 0x00, 0x83, 0xfe, 0x00,
	0x75, 0x16, 0xc7, 0x87, 0x20, 0x03, 0x00, 0x00, 0x40, 0x00, 0x02, 0x00, 0xc7, 0x87,
	0x80, 0x03, 0x00, 0x00, 0x40, 0x4b, 0x4c, 0x00, 0xeb, 0x18, 0xc7, 0x87, 0x20, 0x03,
	0x00, 0x00, 0x40, 0x00, 0x04, 0x00, 0x0f, 0x31, 0x01, 0xf0, 0x83, 0xd2, 0x00, 0xb9,
	0xe0, 0x06, 0x00, 0x00, 0x0f, 0x30, 0x31, 0xdb, 0xfb, 0xf4, 0xeb, 0xfc,
};

/*
 * Timer interrupt at TVM_CODE_GPA + 0x80: count, report, re-arm a deadline, EOI, and
 * back to the sti/hlt loop by hand (32-bit IRET fails in this host's emulator; the
 * interrupted instruction is always in that loop):
 *	inc %ebx ; mov %ebx, %eax ; mov $0x501, %edx ; out %eax, %dx
 *	cmp $0, %esi ; je 2f ; rdtsc ; add %esi, %eax ; adc $0, %edx ; mov $0x6e0, %ecx ; wrmsr
 * 2:	movl $0, 0xb0(%edi) ; add $12, %esp ; jmp 1b
 */
static const uint8_t guest_handler[] = {
	0x43, 0x89, 0xd8, 0xba, 0x01, 0x05, 0x00, 0x00, 0xef, 0x83, 0xfe, 0x00, 0x74, 0x0e,
	0x0f, 0x31, 0x01, 0xf0, 0x83, 0xd2, 0x00, 0xb9, 0xe0, 0x06, 0x00, 0x00, 0x0f, 0x30,
	0xc7, 0x87, 0xb0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x83, 0xc4, 0x0c, 0xeb,
	0xa3,
};

/* Spurious interrupt at TVM_CODE_GPA + 0xc0: add $12, %esp ; jmp 1b */
static const uint8_t guest_spurious[] = { 0x83, 0xc4, 0x0c, 0xeb, 0x89 };

static void kick_handler(int sig)
{
	(void)sig; /* only there to interrupt KVM_RUN */
}

static void idt_gate(uint8_t *mem, unsigned vector, uint32_t handler)
{
	uint8_t *g = mem + IDT_GPA + 8 * vector;

	le_put32(g, 0x00080000u | (handler & 0xffff));
	le_put32(g + 4, (handler & 0xffff0000u) | 0x8e00u); /* present 32-bit interrupt gate */
}

static void guest_setup(struct tvm *t, bool deadline)
{
	uint8_t code[0x100] = { 0 };
	struct kvm_sregs sr;
	struct kvm_regs regs;
	struct errbuf e = { "" };

	memcpy(code, guest_main, sizeof(guest_main));
	memcpy(code + HANDLER_OFF, guest_handler, sizeof(guest_handler));
	memcpy(code + SPURIOUS_OFF, guest_spurious, sizeof(guest_spurious));
	tvm_load_flat32(t, code, sizeof(code), 0);
	idt_gate(t->mem, TIMER_VECTOR, TVM_CODE_GPA + HANDLER_OFF);
	idt_gate(t->mem, SPURIOUS_VECTOR, TVM_CODE_GPA + SPURIOUS_OFF);
	TEST_OK(kvm_ioctl(t->vcpufd, KVM_GET_SREGS, &sr));
	sr.idt.base = IDT_GPA;
	sr.idt.limit = 256 * 8 - 1;
	TEST_OK(kvm_ioctl(t->vcpufd, KVM_SET_SREGS, &sr));
	TEST_OK(kvm_ioctl(t->vcpufd, KVM_GET_REGS, &regs));
	regs.rsi = deadline ? DEADLINE_DELTA : 0;
	TEST_OK(kvm_ioctl(t->vcpufd, KVM_SET_REGS, &regs));
}

/* The TSC-deadline timer must be in the guest's CPUID for the LAPIC to offer the mode. */
static void cpuid_deadline_set(struct tvm *t)
{
	struct errbuf e = { "" };

	for (uint32_t i = 0; i < t->cpuid->nent; i++)
		if (t->cpuid->entries[i].function == 1)
			t->cpuid->entries[i].ecx |= CPUID_1_ECX_TSC_DEADLINE;
	TEST_OK(cpuid_vcpu_set(t->vcpufd, t->cpuid, 0, 1, &e));
}

static void vm_make(struct tvm *t, bool deadline)
{
	tvm_create(t);
	if (deadline)
		cpuid_deadline_set(t);
}

/*
 * Runs until the vCPU is caught halted: a timer signal kicks it out of KVM_RUN (the
 * guest sleeps in hlt between ticks). Returns the tick count reached.
 */
static uint32_t pause_while_halted(struct tvm *t, timer_t kick, uint32_t ticks)
{
	struct itimerspec once = { .it_value = { .tv_sec = 0, .tv_nsec = 1000000 } };
	struct errbuf e = { "" };

	for (unsigned tries = 0; tries < 200; tries++) {
		struct kvm_mp_state mp;
		int ret;

		TEST_ASSERT(timer_settime(kick, 0, &once, NULL) == 0, "timer_settime");
		ret = kvm_ioctl(t->vcpufd, KVM_RUN, NULL);
		if (ret == 0) {
			struct kvm_run *run = t->run;
			uint32_t v = 0;

			TEST_ASSERT(run->exit_reason == KVM_EXIT_IO &&
					    run->io.port == TVM_EXIT_PORT,
				    "exit reason %u", run->exit_reason);
			memcpy(&v, (uint8_t *)run + run->io.data_offset, 4);
			TEST_ASSERT_EQ(v, ticks + 1);
			ticks = v;
			continue;
		}
		TEST_ASSERT(ret == -EINTR, "KVM_RUN: %s", strerror(-ret));
		tvm_pause(t);
		TEST_OK(kvm_ioctl(t->vcpufd, KVM_GET_MP_STATE, &mp));
		if (mp.mp_state == KVM_MP_STATE_HALTED)
			return ticks;
	}
	TEST_FAIL("never caught the vCPU halted");
}

static bool timer_irr(const struct vcpu_state *s)
{
	const uint8_t *irr = (const uint8_t *)s->lapic.regs + 0x200 + 0x10 * (TIMER_VECTOR / 32);

	return le_get32(irr) & (1u << (TIMER_VECTOR % 32));
}

static void scenario(bool deadline, const uint32_t *msr_idx, uint32_t nmsr, timer_t kick)
{
	const char *mode = deadline ? "tsc-deadline" : "periodic";
	struct vcpu_state s1, d, s2;
	struct buf b1, dig1, dig2;
	struct errbuf e = { "" };
	struct tvm a, b;
	uint32_t ticks = 0, xsave_size;
	uint64_t dl = 0;

	vm_make(&a, deadline);
	guest_setup(&a, deadline);
	xsave_size = vcpu_state_xsave_size(a.vmfd);
	for (uint32_t i = 1; i <= TICKS_BEFORE; i++)
		TEST_ASSERT_EQ(tvm_run_to_port(&a), i);
	ticks = pause_while_halted(&a, kick, TICKS_BEFORE);

	TEST_OK(vcpu_state_get(a.vcpufd, msr_idx, nmsr, xsave_size, &s1, &e));
	TEST_ASSERT_EQ(s1.mp_state.mp_state, KVM_MP_STATE_HALTED);
	TEST_ASSERT_EQ(s1.regs.rbx, ticks);
	for (uint32_t i = 0; i < s1.msrs->nmsrs; i++)
		if (s1.msrs->entries[i].index == MSR_IA32_TSC_DEADLINE)
			dl = s1.msrs->entries[i].data;
	/* KVM clears the deadline when it fires: then the tick waits in the LAPIC's IRR */
	TEST_ASSERT(!deadline || dl || timer_irr(&s1), "a TSC deadline is armed or has fired");
	buf_init(&b1);
	buf_init(&dig1);
	buf_init(&dig2);
	TEST_OK(vcpu_state_encode(&s1, &b1));
	TEST_OK(vcpu_state_encode_digest(&s1, &dig1));
	TEST_OK(vcpu_state_decode(b1.data, b1.len, VCPU_STATE_VERSION, &d, &e));

	vm_make(&b, deadline);
	memcpy(b.mem, a.mem, TVM_MEM_SIZE);
	TEST_OK(vcpu_state_set(b.vcpufd, &d, &e));
	TEST_OK(vcpu_state_get(b.vcpufd, msr_idx, nmsr, xsave_size, &s2, &e));
	TEST_OK(vcpu_state_encode_digest(&s2, &dig2));
	if (!test_buf_equal(&dig1, &dig2)) {
		test_diff(mode, &dig1, &dig2);
		TEST_FAIL("%s: restored state differs from the saved one", mode);
	}
	for (uint32_t i = 1; i <= TICKS_AFTER; i++)
		TEST_ASSERT_EQ(tvm_run_to_port(&b), ticks + i);
	printf("%s timer: saved halted after %u ticks; restored guest ticked on to %u\n", mode,
	       ticks, ticks + TICKS_AFTER);

	vcpu_state_free(&s1);
	vcpu_state_free(&d);
	vcpu_state_free(&s2);
	buf_free(&b1);
	buf_free(&dig1);
	buf_free(&dig2);
	tvm_destroy(&a);
	tvm_destroy(&b);
}

static void usage_fail(const char *argv0)
{
	fprintf(stderr, "usage: %s periodic|tsc-deadline\n", argv0);
	exit(2);
}

/*
 * One timer mode per run (a test each in meson), so a host without the TSC-deadline
 * timer reports that case as skipped, with the reason, instead of passing it.
 */
int main(int argc, char **argv)
{
	struct sigaction sa = { .sa_handler = kick_handler }; /* no SA_RESTART */
	struct sigevent sev = { .sigev_notify = SIGEV_SIGNAL, .sigev_signo = SIGUSR1 };
	struct errbuf e = { "" };
	struct tvm probe;
	uint32_t *msr_idx = NULL, nmsr = 0;
	timer_t kick;
	bool deadline;
	int cap;

	if (argc != 2)
		usage_fail(argv[0]);
	if (!strcmp(argv[1], "tsc-deadline"))
		deadline = true;
	else if (!strcmp(argv[1], "periodic"))
		deadline = false;
	else
		usage_fail(argv[0]);
	setvbuf(stdout, NULL, _IONBF, 0);
	alarm(WATCHDOG_S); /* a restored guest that never ticks again fails here */
	TEST_ASSERT(sigaction(SIGUSR1, &sa, NULL) == 0, "sigaction");
	TEST_ASSERT(timer_create(CLOCK_MONOTONIC, &sev, &kick) == 0, "timer_create");

	tvm_create(&probe);
	TEST_OK(kvm_msr_index_list(&probe.kvm, &msr_idx, &nmsr, &e));
	cap = kvm_cap_check(probe.kvm.fd, KVM_CAP_TSC_DEADLINE_TIMER);
	tvm_destroy(&probe);
	if (deadline && cap <= 0) {
		printf("SKIP: this host's KVM lacks KVM_CAP_TSC_DEADLINE_TIMER (check returned "
		       "%d): the tsc-deadline save/restore case cannot run here\n", cap);
		free(msr_idx);
		return KSFT_SKIP;
	}

	scenario(deadline, msr_idx, nmsr, kick);

	timer_delete(kick);
	free(msr_idx);
	printf("PASS\n");
	return 0;
}
