/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for kernel loading: arbitrary bytes as a kernel image (bzImage, ELF
 * vmlinux, PVH ELF or junk), with an initrd size and command line taken from the input,
 * loaded into 96 MiB of RAM. Any crash, sanitizer report or write outside RAM is a bug;
 * a rejected image must leave an error message.
 */
#include "arch/x86/boot.h"
#include "base/buf.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define RAM_SIZE (96 * MiB)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static uint8_t *ram;
	static const struct boot_ram_range ranges[] = { { 0, RAM_SIZE } };
	struct boot_machine m = { .low_size = RAM_SIZE, .ranges = ranges, .nranges = 1 };
	struct boot_kernel k;
	struct errbuf e = { { 0 } };
	char cmdline[64];
	uint64_t initrd;
	size_t n;

	if (!ram) {
		ram = mmap(NULL, RAM_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
			   -1, 0);
		if (ram == MAP_FAILED)
			abort();
	}
	if (size < 6)
		return 0;
	/* first byte: vCPUs; next 4: initrd size; then a short command line; the rest: kernel */
	m.ram = ram;
	m.nvcpus = data[0];
	initrd = le_get32(data + 1) * 4096ull / 256;
	n = data[5] % sizeof(cmdline);
	if (n > size - 6)
		n = size - 6;
	memcpy(cmdline, data + 6, n);
	cmdline[n] = 0;
	data += 6 + n;
	size -= 6 + n;
	if (boot_load(&m, data, size, initrd, cmdline, &k, &e) < 0) {
		if (!e.msg[0])
			abort();
		return 0;
	}
	if (k.entry >= RAM_SIZE || k.initrd_gpa + k.initrd_size > RAM_SIZE || k.ne820 == 0)
		abort();
	return 0;
}
