/* SPDX-License-Identifier: MIT */
/* vCPU threads: the KVM_RUN loop, exit dispatch, and the pause/resume handshake. */
#include "vmm/vcpu.h"
#include "base/log.h"
#include "kvm/kvm.h"
#include "vmm/vm_impl.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define VCPU_KICK_SIGNAL SIGUSR1

static void vcpu_kick_handler(int sig)
{
	(void)sig; /* only there to interrupt KVM_RUN with EINTR */
}

int vcpu_signal_setup(void)
{
	struct sigaction sa = { .sa_handler = vcpu_kick_handler }; /* no SA_RESTART */

	sigemptyset(&sa.sa_mask);
	return sigaction(VCPU_KICK_SIGNAL, &sa, NULL) < 0 ? -errno : 0;
}

int vcpu_create(struct vcpu *v, struct vm *vm, int vmfd, unsigned index, int mmap_size,
		struct errbuf *e)
{
	int ret;

	memset(v, 0, sizeof(*v));
	v->vm = vm;
	v->index = index;
	v->fd = kvm_ioctl(vmfd, KVM_CREATE_VCPU, (void *)(uintptr_t)index);
	if (v->fd < 0)
		return err_set(e, v->fd, "KVM_CREATE_VCPU %u: %s", index, strerror(-v->fd));
	v->run_size = (size_t)mmap_size;
	v->run = mmap(NULL, v->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, v->fd, 0);
	if (v->run == MAP_FAILED) {
		ret = err_set(e, -errno, "mmap kvm_run of vCPU %u: %s", index, strerror(errno));
		close(v->fd);
		v->fd = -1;
		v->run = NULL;
		return ret;
	}
	ret = -pthread_mutex_init(&v->lock, NULL);
	if (ret == 0) {
		ret = -pthread_cond_init(&v->cond, NULL);
		if (ret < 0)
			pthread_mutex_destroy(&v->lock);
	}
	if (ret < 0) {
		munmap(v->run, v->run_size);
		close(v->fd);
		v->fd = -1;
		v->run = NULL;
		return err_set(e, ret, "vCPU %u lock: %s", index, strerror(-ret));
	}
	v->state = VCPU_PAUSED;
	v->req = VCPU_PAUSED;
	return 0;
}

/* Reads up to 15 instruction bytes at the guest's current RIP for a crash report. */
static int vcpu_insn_bytes(struct vcpu *v, uint64_t *rip, char *hex, size_t hexlen)
{
	struct kvm_regs regs;
	struct kvm_sregs sregs;
	struct kvm_translation tr;
	uint8_t bytes[15];
	size_t n = 0;
	int pos = 0;

	hex[0] = '\0';
	if (kvm_ioctl(v->fd, KVM_GET_REGS, &regs) < 0 || kvm_ioctl(v->fd, KVM_GET_SREGS, &sregs) < 0)
		return -EIO;
	*rip = regs.rip;
	while (n < sizeof(bytes)) {
		uint64_t la = sregs.cs.base + regs.rip + n;
		uint64_t chunk;
		void *p;

		memset(&tr, 0, sizeof(tr));
		tr.linear_address = la;
		if (kvm_ioctl(v->fd, KVM_TRANSLATE, &tr) < 0 || !tr.valid)
			break;
		chunk = MIN(sizeof(bytes) - n, GUEST_PAGE_SIZE - (la & (GUEST_PAGE_SIZE - 1)));
		p = guest_mem_ptr(&v->vm->mem, tr.physical_address, chunk);
		if (!p)
			break;
		memcpy(bytes + n, p, chunk);
		n += chunk;
	}
	for (size_t i = 0; i < n && (size_t)pos + 4 < hexlen; i++)
		pos += snprintf(hex + pos, hexlen - (size_t)pos, "%s%02x", i ? " " : "", bytes[i]);
	if (!n)
		snprintf(hex, hexlen, "(unreadable)");
	return 0;
}

static void vcpu_fatal(struct vcpu *v, const char *what)
{
	char report[900], hex[64];
	uint64_t rip = 0;

	vcpu_insn_bytes(v, &rip, hex, sizeof(hex));
	snprintf(report, sizeof(report), "vCPU %u: %s at RIP 0x%llx, instruction bytes: %s",
		 v->index, what, (unsigned long long)rip, hex);
	vm_vcpu_fatal(v->vm, v, report);
}

/* Returns 1 if the exit needs completing by a later KVM_RUN, 0 to go on, -1 if fatal. */
static int vcpu_exit_handle(struct vcpu *v)
{
	struct kvm_run *run = v->run;
	char what[256];

	switch (run->exit_reason) {
	case KVM_EXIT_IO: {
		uint8_t *data = (uint8_t *)run + run->io.data_offset;

		for (uint32_t i = 0; i < run->io.count; i++, data += run->io.size)
			iobus_access(&v->vm->iobus, IOBUS_PIO, run->io.port, data, run->io.size,
				     run->io.direction == KVM_EXIT_IO_OUT);
		return 1;
	}
	case KVM_EXIT_MMIO:
		iobus_access(&v->vm->iobus, IOBUS_MMIO, run->mmio.phys_addr, run->mmio.data,
			     MIN(run->mmio.len, 8u), run->mmio.is_write);
		return 1;
	case KVM_EXIT_DIRTY_RING_FULL:
		/* harvest the ring, then go on: the guest loses nothing */
		if (vm_dirty_ring_full(v->vm, v) < 0) {
			vcpu_fatal(v, "dirty ring full and could not be harvested");
			return -1;
		}
		return 0;
	case KVM_EXIT_HLT:
	case KVM_EXIT_IRQ_WINDOW_OPEN:
	case KVM_EXIT_INTR:
		return 0;
	case KVM_EXIT_SHUTDOWN:
		vcpu_fatal(v, "guest shutdown (triple fault)");
		return -1;
	case KVM_EXIT_SYSTEM_EVENT:
		snprintf(what, sizeof(what), "guest system event %u (%s)", run->system_event.type,
			 run->system_event.type == KVM_SYSTEM_EVENT_SHUTDOWN ? "shutdown" :
			 run->system_event.type == KVM_SYSTEM_EVENT_RESET ? "reset" : "other");
		vcpu_fatal(v, what);
		return -1;
	case KVM_EXIT_INTERNAL_ERROR:
		snprintf(what, sizeof(what), "KVM internal error (suberror %u%s)",
			 run->internal.suberror,
			 run->internal.suberror == KVM_INTERNAL_ERROR_EMULATION ?
				 ": instruction emulation failed" : "");
		vcpu_fatal(v, what);
		return -1;
	case KVM_EXIT_FAIL_ENTRY:
		snprintf(what, sizeof(what), "VM entry failed (hardware reason 0x%llx)",
			 (unsigned long long)run->fail_entry.hardware_entry_failure_reason);
		vcpu_fatal(v, what);
		return -1;
	default:
		snprintf(what, sizeof(what), "unexpected exit reason %u", run->exit_reason);
		vcpu_fatal(v, what);
		return -1;
	}
}

/* Completes a pending I/O exit so that state read now is consistent. */
static void vcpu_io_complete(struct vcpu *v)
{
	int ret;

	v->run->immediate_exit = 1;
	ret = ioctl(v->fd, KVM_RUN, 0);
	if (ret < 0 && errno != EINTR)
		log_warn("vCPU %u: completing I/O before pause: %s", v->index, strerror(errno));
	v->io_pending = false;
}

/* Sleeps pct% of the throttle period (vm.h). */
static void vcpu_throttle_sleep(struct vcpu *v)
{
	unsigned pct = atomic_load(&v->vm->throttle_pct);
	uint64_t ns;
	struct timespec ts;

	if (!pct || v->req != VCPU_RUNNING)
		return;
	ns = vm_throttle_sleep_ns(pct);
	ts.tv_sec = (time_t)(ns / 1000000000ull);
	ts.tv_nsec = (long)(ns % 1000000000ull);
	/* a pause request's signal cuts the sleep short, as it should */
	nanosleep(&ts, NULL);
	/* a kick that came while asleep (a late wake-up) must not put it straight back */
	atomic_store(&v->throttle_kick, false);
}

void vcpu_throttle_kick(struct vcpu *v)
{
	bool running;

	pthread_mutex_lock(&v->lock);
	running = v->state == VCPU_RUNNING && v->req == VCPU_RUNNING;
	pthread_mutex_unlock(&v->lock);
	if (!running || !v->thread_started)
		return;
	atomic_store(&v->throttle_kick, true);
	pthread_kill(v->thread, VCPU_KICK_SIGNAL);
}

/*
 * The fault-injection hook (tests only): a vCPU slow to get out of KVM_RUN once asked to
 * leave it, or after KVM_RUN failed. err is KVM_RUN's errno.
 */
static void vcpu_test_delay(struct vcpu *v, int err)
{
	unsigned ms = atomic_load(&v->delay_ms);
	struct timespec ts;
	bool asked;

	if (!ms)
		return;
	if (err == EINTR || err == EAGAIN) {
		/* not for the other early returns (an AP's wait for SIPI ends with EAGAIN) */
		pthread_mutex_lock(&v->lock);
		asked = v->req != VCPU_RUNNING;
		pthread_mutex_unlock(&v->lock);
		if (!asked)
			return;
	}
	ts.tv_sec = ms / 1000;
	ts.tv_nsec = (long)(ms % 1000) * 1000000;
	/* the kick signal may cut it short: sleep the whole delay regardless */
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

static void *vcpu_thread_main(void *arg)
{
	struct vcpu *v = arg;
	char tname[16];

	snprintf(tname, sizeof(tname), "vcpu%u", v->index);
	pthread_setname_np(pthread_self(), tname);

	pthread_mutex_lock(&v->lock);
	for (;;) {
		int ret;

		if (v->call) {
			struct vcpu_callreq *c = v->call;

			pthread_mutex_unlock(&v->lock);
			ret = c->fn(v, c->arg);
			pthread_mutex_lock(&v->lock);
			c->ret = ret;
			c->done = true;
			v->call = NULL;
			pthread_cond_broadcast(&v->cond);
			continue;
		}
		if (v->req == VCPU_EXITING)
			break;
		if (v->req == VCPU_PAUSED) {
			if (v->io_pending) {
				pthread_mutex_unlock(&v->lock);
				vcpu_io_complete(v);
				pthread_mutex_lock(&v->lock);
				continue;
			}
			if (v->state != VCPU_PAUSED) {
				v->state = VCPU_PAUSED;
				pthread_cond_broadcast(&v->cond);
			}
			pthread_cond_wait(&v->cond, &v->lock);
			continue;
		}
		if (v->state != VCPU_RUNNING) {
			v->run->immediate_exit = 0;
			v->state = VCPU_RUNNING;
			if (!atomic_load(&v->first_run_ns))
				atomic_store(&v->first_run_ns, time_real_ns());
			pthread_cond_broadcast(&v->cond);
		}
		pthread_mutex_unlock(&v->lock);

		ret = ioctl(v->fd, KVM_RUN, 0);
		if (ret < 0) {
			int err = errno;

			vcpu_test_delay(v, err);
			if (err == EINTR || err == EAGAIN) {
				/* kicked: any pending I/O was completed by this entry */
				v->io_pending = false;
			} else {
				char what[128];

				snprintf(what, sizeof(what), "KVM_RUN failed: %s", strerror(err));
				vcpu_fatal(v, what);
				pthread_mutex_lock(&v->lock);
				/* park, unless asked to exit meanwhile: EXITING must stand */
				if (v->req == VCPU_RUNNING)
					v->req = VCPU_PAUSED;
				continue;
			}
		} else {
			v->exits++;
			ret = vcpu_exit_handle(v);
			v->io_pending = ret == 1;
			if (ret < 0) {
				pthread_mutex_lock(&v->lock);
				/* park: the main thread stops the VM */
				if (v->req == VCPU_RUNNING)
					v->req = VCPU_PAUSED;
				continue;
			}
		}
		if (atomic_exchange(&v->throttle_kick, false))
			vcpu_throttle_sleep(v);
		pthread_mutex_lock(&v->lock);
	}
	v->state = VCPU_EXITED;
	pthread_cond_broadcast(&v->cond);
	pthread_mutex_unlock(&v->lock);
	return NULL;
}

int vcpu_thread_start(struct vcpu *v, struct errbuf *e)
{
	sigset_t all, old;
	int ret;

	/* the thread inherits a mask with only the kick signal deliverable */
	sigfillset(&all);
	sigdelset(&all, VCPU_KICK_SIGNAL);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	ret = pthread_create(&v->thread, NULL, vcpu_thread_main, v);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (ret)
		return err_set(e, -ret, "start vCPU %u thread: %s", v->index, strerror(ret));
	v->thread_started = true;
	return 0;
}

void vcpu_state_request(struct vcpu *v, enum vcpu_run_state req)
{
	bool kick;

	pthread_mutex_lock(&v->lock);
	if (v->state == VCPU_EXITED) {
		pthread_mutex_unlock(&v->lock);
		return;
	}
	v->req = req;
	kick = req != VCPU_RUNNING && v->state == VCPU_RUNNING;
	if (kick)
		v->run->immediate_exit = 1;
	pthread_cond_broadcast(&v->cond);
	pthread_mutex_unlock(&v->lock);
	if (kick && v->thread_started)
		pthread_kill(v->thread, VCPU_KICK_SIGNAL);
}

int vcpu_state_wait(struct vcpu *v, uint64_t deadline)
{
	int ret = 0;

	pthread_mutex_lock(&v->lock);
	while (v->state != v->req && v->state != VCPU_EXITED) {
		struct timespec ts;

		if (time_mono_ns() > deadline) {
			ret = -ETIMEDOUT;
			break;
		}
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += 10 * 1000000;
		if (ts.tv_nsec >= 1000000000) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000;
		}
		pthread_cond_timedwait(&v->cond, &v->lock, &ts);
		/* a kick can race with the thread entering KVM_RUN: kick again */
		if (v->state == VCPU_RUNNING && v->req != VCPU_RUNNING && v->thread_started)
			pthread_kill(v->thread, VCPU_KICK_SIGNAL);
	}
	pthread_mutex_unlock(&v->lock);
	return ret;
}

int vcpu_call(struct vcpu *v, vcpu_call_fn *fn, void *arg)
{
	struct vcpu_callreq c = { .fn = fn, .arg = arg };
	int ret = -EBUSY;

	pthread_mutex_lock(&v->lock);
	/* one slot: wait for a call in flight (the vCPU stays paused while it runs) */
	while (v->call && v->state == VCPU_PAUSED && v->req == VCPU_PAUSED)
		pthread_cond_wait(&v->cond, &v->lock);
	if (v->state == VCPU_PAUSED && v->req == VCPU_PAUSED) {
		v->call = &c;
		pthread_cond_broadcast(&v->cond);
		while (!c.done)
			pthread_cond_wait(&v->cond, &v->lock);
		ret = c.ret;
	}
	pthread_mutex_unlock(&v->lock);
	return ret;
}

void vcpu_destroy(struct vcpu *v)
{
	if (v->thread_started) {
		vcpu_state_request(v, VCPU_EXITING);
		pthread_join(v->thread, NULL);
		v->thread_started = false;
	}
	if (v->run)
		munmap(v->run, v->run_size);
	if (v->fd >= 0)
		close(v->fd);
	pthread_mutex_destroy(&v->lock);
	pthread_cond_destroy(&v->cond);
	v->run = NULL;
	v->fd = -1;
}
