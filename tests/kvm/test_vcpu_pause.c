/* SPDX-License-Identifier: MIT */
/*
 * The VMM's vCPU run state machine on real KVM, in the selftests' style:
 *  - SMP start-up: the guest kit with 2 vCPUs brings up its AP through INIT/SIPI from the
 *    in-kernel LAPIC: the AP's MP state leaves UNINITIALIZED and the guest reports cpus=2;
 *  - pause/resume under load (both vCPUs writing pages): every pause returns with each
 *    vCPU out of KVM_RUN (its exit count and registers stay frozen while paused), and every
 *    resume makes both run again (exit counts and RIPs move).
 * Usage: test_vcpu_pause GUEST_ELF
 */
#include "kvm_test.h"
#include "vmm/vm.h"
#include "vmm/vm_impl.h"

#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* a bound on waiting for a resumed vCPU to run, far above any scheduling delay */
#define RUN_WAIT_MS 20000u

static int regs_get(struct vcpu *v, void *arg)
{
	return kvm_ioctl(v->fd, KVM_GET_REGS, arg);
}

static int mp_get(struct vcpu *v, void *arg)
{
	return kvm_ioctl(v->fd, KVM_GET_MP_STATE, arg);
}

static uint64_t exits_total(struct vm *vm, unsigned i)
{
	uint64_t n;

	pthread_mutex_lock(&vm->vcpus[i].lock);
	n = vm->vcpus[i].exits;
	pthread_mutex_unlock(&vm->vcpus[i].lock);
	return n;
}

/*
 * Resumes the VM and waits until each vCPU has run again: its registers moved on from
 * before[] (the BSP's exit count too, as it exits for serial output). How soon the vCPU
 * threads get a CPU is the host scheduler's business, so this looks again, with a longer
 * run each time, until a bound far above any scheduling delay. Returns with the VM paused.
 */
static void vcpus_wait_run(struct vm *vm, const struct kvm_regs *before, uint64_t exits0,
			   int round)
{
	struct errbuf e = { { 0 } };
	bool ran[2] = { false, false }, exited = false;
	unsigned waited = 0, step = 10;
	struct kvm_regs r;

	while (waited < RUN_WAIT_MS) {
		TEST_OK(vm_resume(vm, &e));
		test_msleep(step);
		waited += step;
		step = MIN(step * 2, 500u);
		TEST_OK(vm_pause(vm, &e));
		exited = exited || exits_total(vm, 0) > exits0;
		for (unsigned i = 0; i < 2; i++) {
			TEST_OK(vcpu_call(&vm->vcpus[i], regs_get, &r));
			ran[i] = ran[i] || memcmp(&before[i], &r, sizeof(r));
		}
		if (exited && ran[0] && ran[1])
			return;
	}
	TEST_ASSERT(exited, "round %d: the BSP did not run within %u ms", round, RUN_WAIT_MS);
	for (unsigned i = 0; i < 2; i++)
		TEST_ASSERT(ran[i], "round %d: vCPU %u did not run within %u ms after resume",
			    round, i, RUN_WAIT_MS);
}

int main(int argc, char **argv)
{
	struct kvm_mp_state mp;
	struct kvm_regs r1[2], r2[2];
	struct errbuf e = { { 0 } };
	struct test_guest g;
	struct vm *vm;

	test_guest_create(&g, argc, argv, "pause-test", 2, "workload=dirty wss=8M rate=0");
	vm = g.vm;
	/* before start: the AP waits for INIT/SIPI */
	TEST_OK(vcpu_call(&vm->vcpus[1], mp_get, &mp));
	TEST_ASSERT_EQ(mp.mp_state, KVM_MP_STATE_UNINITIALIZED);
	test_guest_start(&g);
	TEST_OK(vm_pause(vm, &e));
	TEST_OK(vcpu_call(&vm->vcpus[1], mp_get, &mp));
	TEST_ASSERT(mp.mp_state == KVM_MP_STATE_RUNNABLE || mp.mp_state == KVM_MP_STATE_HALTED,
		    "AP MP state %u after SMP start", mp.mp_state);
	TEST_OK(vm_resume(vm, &e));

	for (int round = 0; round < 40; round++) {
		uint64_t before[2];

		test_msleep(20 + (unsigned)(round % 5) * 7);
		TEST_OK(vm_pause(vm, &e));
		for (unsigned i = 0; i < 2; i++) {
			TEST_ASSERT_EQ(vm->vcpus[i].state, VCPU_PAUSED);
			TEST_ASSERT(!vm->vcpus[i].io_pending, "vCPU %u paused with I/O pending", i);
			before[i] = exits_total(vm, i);
			TEST_OK(vcpu_call(&vm->vcpus[i], regs_get, &r1[i]));
		}
		test_msleep(30);
		for (unsigned i = 0; i < 2; i++) {
			TEST_OK(vcpu_call(&vm->vcpus[i], regs_get, &r2[i]));
			TEST_ASSERT(!memcmp(&r1[i], &r2[i], sizeof(r1[i])),
				    "round %d: vCPU %u registers changed while paused", round, i);
			TEST_ASSERT_EQ(exits_total(vm, i), before[i]);
		}
		/* both run again: the working vCPUs' registers move on */
		vcpus_wait_run(vm, r1, before[0], round);
		TEST_OK(vm_resume(vm, &e));
	}
	TEST_ASSERT(test_file_wait(g.serial, "hb 20", RUN_WAIT_MS), "no heartbeats");
	test_guest_destroy(&g);
	printf("PASS\n");
	return 0;
}
