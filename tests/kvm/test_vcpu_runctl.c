/* SPDX-License-Identifier: MIT */
/*
 * Run control of the VMM's vCPU threads on real KVM, with the guest kit:
 *  - vcpu_call() from two threads at once: the second call waits for the first, both
 *    run with their own argument and each caller gets its own result (a call made while
 *    another was in flight used to replace it, so one never ran);
 *  - a pause that times out (one vCPU held in KVM_RUN by the fault-injection hook) is
 *    undone: the vCPUs that did pause run again and the VM stays running; and while
 *    that pause waits, the VM's state lock is free, so status answers;
 *  - a vCPU whose KVM_RUN fails while it is being asked to exit does exit (the error path
 *    used to overwrite the EXITING request with PAUSED, so a join would hang).
 * Usage: test_vcpu_runctl GUEST_ELF
 */
#include "kvm_test.h"
#include "vmm/vm.h"
#include "vmm/vm_impl.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

static enum vcpu_run_state vcpu_state_of(struct vcpu *v)
{
	enum vcpu_run_state st;

	pthread_mutex_lock(&v->lock);
	st = v->state;
	pthread_mutex_unlock(&v->lock);
	return st;
}

/* Polls (up to timeout_ms) until vCPU v is in state want. */
static bool vcpu_state_reach(struct vcpu *v, enum vcpu_run_state want, unsigned timeout_ms)
{
	for (unsigned t = 0; t < timeout_ms; t += 5) {
		if (vcpu_state_of(v) == want)
			return true;
		test_msleep(5);
	}
	return vcpu_state_of(v) == want;
}

/* ---- two callers of vcpu_call() at once ---- */

struct call_arg {
	struct vcpu *v;
	_Atomic bool started, release, ran;
	int ret;
};

/* Holds the vCPU thread until the test releases it. */
static int call_slow(struct vcpu *v, void *arg)
{
	struct call_arg *a = arg;

	atomic_store(&a->started, true);
	while (!atomic_load(&a->release))
		test_msleep(1);
	atomic_store(&a->ran, true);
	return 11;
}

static int call_fast(struct vcpu *v, void *arg)
{
	struct call_arg *a = arg;

	atomic_store(&a->ran, true);
	return 22;
}

static void *call_slow_thread(void *arg)
{
	struct call_arg *a = arg;

	a->ret = vcpu_call(a->v, call_slow, a);
	return NULL;
}

static void *call_fast_thread(void *arg)
{
	struct call_arg *a = arg;

	atomic_store(&a->started, true);
	a->ret = vcpu_call(a->v, call_fast, a);
	return NULL;
}

static void test_calls_do_not_overwrite(struct vm *vm)
{
	struct call_arg a = { .v = &vm->vcpus[0] }, b = { .v = &vm->vcpus[0] };
	pthread_t ta, tb;

	TEST_ASSERT(!pthread_create(&ta, NULL, call_slow_thread, &a), "thread");
	while (!atomic_load(&a.started))
		test_msleep(1);
	/* the first call is running on the vCPU thread: a second one arrives */
	TEST_ASSERT(!pthread_create(&tb, NULL, call_fast_thread, &b), "thread");
	while (!atomic_load(&b.started))
		test_msleep(1);
	test_msleep(100);
	atomic_store(&a.release, true);
	pthread_join(ta, NULL);
	pthread_join(tb, NULL);
	TEST_ASSERT_EQ(a.ret, 11);
	TEST_ASSERT(atomic_load(&b.ran), "the second call never ran (it replaced the first)");
	TEST_ASSERT_EQ(b.ret, 22);
}

/* ---- a pause that times out ---- */

struct pause_arg {
	struct vm *vm;
	struct errbuf e;
	int ret;
	_Atomic bool done;
};

static void *pause_thread(void *arg)
{
	struct pause_arg *p = arg;

	p->ret = vm_pause(p->vm, &p->e);
	atomic_store(&p->done, true);
	return NULL;
}

static void test_pause_all_or_nothing(struct vm *vm)
{
	struct pause_arg p = { .vm = vm };
	struct vm_status st;
	struct errbuf e = { { 0 } };
	uint64_t exits;
	pthread_t t;
	int locked;

	/* vCPU 1 cannot get out of KVM_RUN for longer than the pause waits (5 s) */
	atomic_store(&vm->vcpus[1].delay_ms, 8000);
	TEST_ASSERT(!pthread_create(&t, NULL, pause_thread, &p), "thread");
	TEST_ASSERT(vcpu_state_reach(&vm->vcpus[0], VCPU_PAUSED, 4000), "vCPU 0 did not pause");
	/* the pause is in progress (vCPU 0 paused, vCPU 1 not yet): the state lock is free */
	locked = pthread_mutex_trylock(&vm->lock);
	TEST_ASSERT(!atomic_load(&p.done), "the pause ended before the check");
	TEST_ASSERT(locked == 0, "vm->lock is held while the pause waits for the vCPUs");
	pthread_mutex_unlock(&vm->lock);
	vm_status_get(vm, &st);
	TEST_ASSERT_EQ(st.state, VM_STATE_RUNNING);

	pthread_join(t, NULL);
	TEST_ASSERT_EQ(p.ret, -ETIMEDOUT);
	TEST_ASSERT(strstr(p.e.msg, "vCPU 1 did not leave KVM_RUN") &&
		    strstr(p.e.msg, "keeps running"), "message: %s", p.e.msg);
	vm_status_get(vm, &st);
	TEST_ASSERT_EQ(st.state, VM_STATE_RUNNING);
	/* all or nothing: vCPU 0 was resumed and runs (it exits for every serial byte) */
	TEST_ASSERT(vcpu_state_reach(&vm->vcpus[0], VCPU_RUNNING, 2000),
		    "vCPU 0 stayed paused after the pause was given up");
	pthread_mutex_lock(&vm->vcpus[0].lock);
	exits = vm->vcpus[0].exits;
	pthread_mutex_unlock(&vm->vcpus[0].lock);
	test_msleep(200);
	pthread_mutex_lock(&vm->vcpus[0].lock);
	TEST_ASSERT(vm->vcpus[0].exits > exits, "vCPU 0 does not run");
	pthread_mutex_unlock(&vm->vcpus[0].lock);

	/* without the hook, pause and resume work again */
	atomic_store(&vm->vcpus[1].delay_ms, 0);
	TEST_OK(vm_pause(vm, &e));
	TEST_ASSERT_EQ(vcpu_state_of(&vm->vcpus[0]), VCPU_PAUSED);
	TEST_ASSERT_EQ(vcpu_state_of(&vm->vcpus[1]), VCPU_PAUSED);
	TEST_OK(vm_resume(vm, &e));
}

/* ---- KVM_RUN failing while the vCPU is asked to exit ---- */

static void test_exit_request_stands(struct vm *vm)
{
	struct vcpu *v = &vm->vcpus[0];
	struct errbuf e = { { 0 } };
	int ret;

	TEST_OK(vm_pause(vm, &e));
	/* an invalid sync-regs mask makes every KVM_RUN fail with EINVAL */
	v->run->kvm_dirty_regs = 1u << 31;
	atomic_store(&v->delay_ms, 1000);
	TEST_OK(vm_resume(vm, &e));
	test_msleep(200);
	/* the thread is between the failed KVM_RUN and its report: ask it to exit */
	vcpu_state_request(v, VCPU_EXITING);
	ret = vcpu_state_wait(v, time_mono_ns() + 10000000000ull);
	TEST_ASSERT_EQ(ret, 0);
	TEST_ASSERT(vcpu_state_of(v) == VCPU_EXITED,
		    "vCPU 0 is in state %d, not EXITED: the error path replaced EXITING",
		    vcpu_state_of(v));
}

int main(int argc, char **argv)
{
	struct test_guest g;

	test_guest_create(&g, argc, argv, "runctl-test", 2, "workload=dirty wss=8M rate=0");
	test_calls_do_not_overwrite(g.vm);
	printf("ok: concurrent vcpu_call\n");
	test_guest_start(&g);
	test_pause_all_or_nothing(g.vm);
	printf("ok: a timed-out pause is undone\n");
	test_exit_request_stands(g.vm);
	printf("ok: EXITING survives a failed KVM_RUN\n");
	test_guest_destroy(&g);
	printf("PASS\n");
	return 0;
}
