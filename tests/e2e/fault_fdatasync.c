/* SPDX-License-Identifier: MIT */
/*
 * Fault injection for e2e tests, loaded with LD_PRELOAD into one godwit: fdatasync fails
 * with EIO on any file whose path contains "fdatasync-fails", as a disk that cannot make
 * writes durable would, so a test can check that such a disk stops a migration before
 * COMMIT instead of handing over a guest whose writes may not be on the disk.
 */
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int fdatasync(int fd)
{
	static int (*next)(int);
	char link[64], path[4096];
	ssize_t n;

	snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
	n = readlink(link, path, sizeof(path) - 1);
	if (n > 0) {
		path[n] = '\0';
		if (strstr(path, "fdatasync-fails")) {
			errno = EIO;
			return -1;
		}
	}
	if (!next)
		next = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
	return next(fd);
}
