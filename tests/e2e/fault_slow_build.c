/* SPDX-License-Identifier: MIT */
/*
 * Fault injection for e2e tests, loaded with LD_PRELOAD into one godwit: creating a KVM VM
 * takes GW_SLOW_BUILD_MS longer (as building a very large guest, or a heavily loaded host,
 * would), so a test can check that a source waits for a destination still building its VM.
 */
#include <dlfcn.h>
#include <linux/kvm.h>
#include <stdarg.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <time.h>

int ioctl(int fd, unsigned long req, ...)
{
	static int (*next)(int, unsigned long, void *);
	va_list ap;
	void *arg;

	va_start(ap, req);
	arg = va_arg(ap, void *);
	va_end(ap);
	if (req == KVM_CREATE_VM) {
		const char *s = getenv("GW_SLOW_BUILD_MS");
		long ms = s ? atol(s) : 0;
		struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = ms % 1000 * 1000000 };

		while (nanosleep(&ts, &ts) < 0)
			;
	}
	if (!next)
		next = (int (*)(int, unsigned long, void *))dlsym(RTLD_NEXT, "ioctl");
	return next(fd, req, arg);
}
