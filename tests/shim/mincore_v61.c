/* SPDX-License-Identifier: MIT */
/*
 * LD_PRELOAD shim: mincore() with the answer kernels before 6.x give for swapped-out
 * anonymous memory. Debian 12's 6.1 and RHEL 9's 5.14 report a page that is in swap (and
 * not in the swap cache) as not resident; this machine's 6.18 reports it resident. Tests
 * load this into godwit so that code asking mincore() whether a page was ever touched
 * shows, here, the data loss it would cause on those kernels: a page pagemap says is
 * swapped and not present is reported not resident. Everything else is the kernel's answer.
 * Built without sanitizers: it is loaded into tools that have none.
 */
#include <fcntl.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#define SHIM_PAGE 4096u
#define SHIM_CHUNK 512u
#define PM_PRESENT (1ull << 63)
#define PM_SWAPPED (1ull << 62)

int mincore(void *addr, size_t len, unsigned char *vec)
{
	uint64_t ent[SHIM_CHUNK];
	size_t pages = (len + SHIM_PAGE - 1) / SHIM_PAGE;
	int fd;

	if (syscall(SYS_mincore, addr, len, vec) < 0)
		return -1;
	fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	for (size_t first = 0; first < pages; first += SHIM_CHUNK) {
		size_t n = pages - first < SHIM_CHUNK ? pages - first : SHIM_CHUNK;
		off_t off = (off_t)(((uintptr_t)addr / SHIM_PAGE + first) * sizeof(uint64_t));

		if (pread(fd, ent, n * sizeof(uint64_t), off) != (ssize_t)(n * sizeof(uint64_t)))
			break;
		for (size_t i = 0; i < n; i++)
			if ((ent[i] & (PM_PRESENT | PM_SWAPPED)) == PM_SWAPPED)
				vec[first + i] &= (unsigned char)~1u;
	}
	close(fd);
	return 0;
}
