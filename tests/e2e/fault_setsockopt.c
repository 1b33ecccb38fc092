/* SPDX-License-Identifier: MIT */
/*
 * Fault injection for e2e tests, loaded with LD_PRELOAD into one godwit: every attempt to
 * set a socket's receive timeout (SO_RCVTIMEO) fails with ENOPROTOOPT, so a test can check
 * that the VMM refuses to go on without the timeout instead of waiting without bound.
 */
#include <dlfcn.h>
#include <errno.h>
#include <sys/socket.h>

int setsockopt(int fd, int level, int name, const void *val, socklen_t len)
{
	static int (*next)(int, int, int, const void *, socklen_t);

	if (level == SOL_SOCKET && name == SO_RCVTIMEO) {
		errno = ENOPROTOOPT;
		return -1;
	}
	if (!next)
		next = (int (*)(int, int, int, const void *, socklen_t))dlsym(RTLD_NEXT,
									      "setsockopt");
	return next(fd, level, name, val, len);
}
