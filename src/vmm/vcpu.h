/* SPDX-License-Identifier: MIT */
/*
 * A vCPU and its thread. The thread owns every ioctl on the vCPU fd and moves
 * through an explicit run state machine:
 *
 *   PAUSED <-> RUNNING, and from either -> EXITING -> EXITED
 *
 * The main thread requests a state and kicks the thread out of KVM_RUN (signal +
 * run->immediate_exit); the thread acknowledges. Before a vCPU reports PAUSED it
 * has completed any pending I/O exit (one KVM_RUN with immediate_exit set, as the
 * KVM API documentation asks), so its state can be read consistently. Work that
 * must run on the vCPU thread (boot setup, state save/load) is passed with
 * vcpu_call() while the vCPU is paused; calls from several threads (a migration's state
 * save and a `status --digest`) run one after the other, each caller getting its own result.
 */
#ifndef GODWIT_VMM_VCPU_H
#define GODWIT_VMM_VCPU_H

#include "base/util.h"

#include <linux/kvm.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

struct vm;

enum vcpu_run_state { VCPU_PAUSED, VCPU_RUNNING, VCPU_EXITING, VCPU_EXITED };

struct vcpu;
typedef int vcpu_call_fn(struct vcpu *v, void *arg);

/* One vcpu_call() in flight: lives on the caller's stack until it is done. */
struct vcpu_callreq {
	vcpu_call_fn *fn;
	void *arg;
	int ret;
	bool done;
};

struct vcpu {
	struct vm *vm;
	unsigned index;
	int fd;
	struct kvm_run *run;
	size_t run_size;
	pthread_t thread;
	bool thread_started;

	pthread_mutex_t lock;
	pthread_cond_t cond;
	enum vcpu_run_state state;  /* what the thread is doing (written by the thread) */
	enum vcpu_run_state req;    /* what the main thread asked for */
	bool io_pending;        /* an I/O exit was handled but KVM has not completed it yet */

	struct vcpu_callreq *call;  /* the call the thread runs next; others wait for the slot */

	/*
	 * Fault injection for tests (GODWIT_VCPU_PAUSE_DELAY_MS): after KVM_RUN returns
	 * because of a kick or an error, the thread sleeps this long before it acts, as a
	 * vCPU that cannot leave KVM_RUN in time would.
	 */
	_Atomic unsigned delay_ms;

	uint64_t exits;
	/*
	 * CLOCK_REALTIME (ns) the thread first went from paused to running (about to KVM_RUN):
	 * when an incoming guest started here, which a later pause and resume do not change
	 */
	_Atomic uint64_t first_run_ns;
	_Atomic bool throttle_kick;  /* sleep for the VM's throttle share at the next exit */
};

int __must_check vcpu_create(struct vcpu *v, struct vm *vm, int vmfd, unsigned index,
			     int mmap_size, struct errbuf *e);
/* Starts the thread; the vCPU waits in PAUSED until vcpu_state_request(RUNNING). */
int __must_check vcpu_thread_start(struct vcpu *v, struct errbuf *e);
/* Asks for RUNNING, PAUSED or EXITING and kicks the thread out of KVM_RUN if needed. */
void vcpu_state_request(struct vcpu *v, enum vcpu_run_state req);
/*
 * Waits until the thread acknowledged the last request (PAUSED/EXITED) or the monotonic
 * deadline (ns) passed. 0 or -ETIMEDOUT.
 */
int __must_check vcpu_state_wait(struct vcpu *v, uint64_t deadline_ns);
/*
 * Runs fn(v, arg) on the vCPU thread; the vCPU must be paused (-EBUSY otherwise). A call
 * made while another is in flight waits for it: none is lost or overwritten. Returns fn's
 * result. Any thread but the vCPU's own.
 */
int vcpu_call(struct vcpu *v, vcpu_call_fn *fn, void *arg);
/* Interrupts KVM_RUN so the vCPU sleeps its throttle share (auto-converge). */
void vcpu_throttle_kick(struct vcpu *v);
/* Joins the thread (after EXITING) and releases the vCPU. */
void vcpu_destroy(struct vcpu *v);
/* Installs the no-op kick signal handler (once per process). */
int __must_check vcpu_signal_setup(void);

#endif
