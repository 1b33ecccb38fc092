/* SPDX-License-Identifier: MIT */
/*
 * The touched map of guest memory (vmm/memory.c) with pages pushed to swap: ranges the
 * guest wrote and whose pages now sit in a swap file are touched, ranges never written are
 * not, and the data comes back intact. Runs with mincore() answering as Debian 12's 6.1
 * does (the gwmincore61 LD_PRELOAD shim, whose path is argv[1]: the program re-executes
 * itself with it), so a touched map built on mincore() fails here as it would there.
 * Needs root and a filesystem that takes a swap file; skips (77) saying why otherwise.
 * Usage: test_mem_swap SHIM.so
 */
#include "kvm_test.h"
#include "vmm/memory.h"

#include <fcntl.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/swap.h>
#include <unistd.h>

#define MEM_SIZE (64 * MiB)
#define RANGE_PAGES 512u /* 2 MiB */
#define NRANGES (MEM_SIZE / GUEST_PAGE_SIZE / RANGE_PAGES)
#define SWAP_SIZE (64 * MiB)

static char swap_dir[64];
static char swap_path[96];
static bool swap_on;

static void swap_cleanup(void)
{
	if (swap_on && swapoff(swap_path) < 0)
		fprintf(stderr, "swapoff %s: %s\n", swap_path, strerror(errno));
	swap_on = false;
	if (swap_path[0])
		unlink(swap_path);
	if (swap_dir[0])
		rmdir(swap_dir);
}

static void __attribute__((noreturn)) skip(const char *why, int err)
{
	printf("SKIP: %s%s%s\n", why, err ? ": " : "", err ? strerror(err) : "");
	swap_cleanup();
	exit(KSFT_SKIP);
}

static void swap_enable(void)
{
	static const uint8_t zero[1 << 16];
	char cmd[160];
	int fd;

	if (geteuid() != 0)
		skip("enabling a swap file needs root", 0);
	snprintf(swap_dir, sizeof(swap_dir), "/var/tmp/gwswapXXXXXX");
	if (!mkdtemp(swap_dir))
		skip("mkdtemp in /var/tmp", errno);
	snprintf(swap_path, sizeof(swap_path), "%s/swap", swap_dir);
	atexit(swap_cleanup);
	fd = open(swap_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0)
		skip("create the swap file", errno);
	/* written, not fallocated: some filesystems refuse swap files with unwritten extents */
	for (uint64_t off = 0; off < SWAP_SIZE; off += sizeof(zero))
		if (io_write_full(fd, zero, sizeof(zero)) < 0)
			skip("write the swap file", errno);
	fsync(fd);
	close(fd);
	snprintf(cmd, sizeof(cmd), "mkswap %s >/dev/null 2>&1", swap_path);
	if (system(cmd) != 0)
		skip("mkswap failed (util-linux's mkswap missing?)", 0);
	if (swapon(swap_path, 0) < 0)
		skip("swapon", errno);
	swap_on = true;
}

static void pagemap_read(const uint8_t *p, uint64_t npages, uint64_t *ent)
{
	int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);

	TEST_ASSERT(fd >= 0, "open /proc/self/pagemap");
	TEST_ASSERT(io_pread_full(fd, ent, npages * 8, (off_t)((uintptr_t)p / 4096 * 8)) == 0,
		    "read pagemap");
	close(fd);
}

static uint8_t page_byte(uint64_t page)
{
	return (uint8_t)(page * 7 + 1);
}

int main(int argc, char **argv)
{
	static const unsigned written[] = { 1, 5, 30 }; /* whole 2 MiB ranges */
	const unsigned lone = 9;                        /* one page, the range's last */
	static uint64_t ent[MEM_SIZE / GUEST_PAGE_SIZE];
	const uint64_t npages = MEM_SIZE / GUEST_PAGE_SIZE;
	bool expect[NRANGES] = { false }, touched[NRANGES];
	unsigned char vec[RANGE_PAGES];
	struct guest_mem m;
	struct errbuf e;
	uint64_t swapped = 0, want = 0;

	if (argc > 1 && !getenv("GODWIT_SHIM_LOADED")) {
		setenv("LD_PRELOAD", argv[1], 1);
		setenv("GODWIT_SHIM_LOADED", "1", 1);
		execv("/proc/self/exe", argv);
		TEST_FAIL("re-executing with the shim %s", argv[1]);
	}
	swap_enable();
	TEST_OK(guest_mem_create(&m, MEM_SIZE, &e));
	for (size_t i = 0; i < ARRAY_SIZE(written); i++) {
		uint64_t first = written[i] * RANGE_PAGES;

		expect[written[i]] = true;
		for (uint64_t pg = first; pg < first + RANGE_PAGES; pg++)
			memset(m.base + pg * GUEST_PAGE_SIZE, page_byte(pg), GUEST_PAGE_SIZE);
	}
	expect[lone] = true;
	m.base[((lone + 1) * RANGE_PAGES - 1) * GUEST_PAGE_SIZE] = page_byte(0);

	/* push every written page out; reclaim may need more than one go */
	for (int tries = 0; tries < 5; tries++) {
		if (madvise(m.base, MEM_SIZE, MADV_PAGEOUT) < 0)
			skip("madvise(MADV_PAGEOUT)", errno);
		pagemap_read(m.base, npages, ent);
		swapped = want = 0;
		for (uint64_t pg = 0; pg < npages; pg++) {
			if (!expect[pg / RANGE_PAGES])
				continue;
			swapped += (ent[pg] >> 62) == 1; /* swapped and not present */
			want += !!(ent[pg] >> 62);
		}
		if (swapped == want)
			break;
	}
	printf("%llu of %llu written pages in swap\n", (unsigned long long)swapped,
	       (unsigned long long)want);
	if (swapped != want || want != ARRAY_SIZE(written) * RANGE_PAGES + 1)
		skip("MADV_PAGEOUT did not push every written page to swap", 0);
	if (argc > 1) {
		/* the shim is in place: mincore answers like 6.1 for swapped pages */
		TEST_ASSERT(mincore(m.base + written[0] * RANGE_PAGES * GUEST_PAGE_SIZE,
				    RANGE_PAGES * GUEST_PAGE_SIZE, vec) == 0, "mincore");
		TEST_ASSERT(!(vec[0] & 1), "the mincore shim is not active (LD_PRELOAD=%s)",
			    getenv("LD_PRELOAD"));
	}

	guest_mem_touched_map(&m, m.base, npages, RANGE_PAGES, touched);
	for (unsigned r = 0; r < NRANGES; r++)
		TEST_ASSERT(touched[r] == expect[r], "range %u (2 MiB at %u MiB): touched %d, "
			    "expected %d", r, r * 2, touched[r], expect[r]);
	TEST_ASSERT(guest_mem_range_touched(&m, m.base + 5 * 2 * MiB + 4096, 4096),
		    "one swapped page");
	TEST_ASSERT(!guest_mem_range_touched(&m, m.base + 3 * 2 * MiB, 2 * MiB),
		    "an untouched range");
	/* and a range left in the middle of a read still counts from its own start */
	guest_mem_touched_map(&m, m.base + RANGE_PAGES * GUEST_PAGE_SIZE, RANGE_PAGES * 9,
			      RANGE_PAGES, touched);
	TEST_ASSERT(touched[0] && !touched[1] && touched[4] && !touched[5] && touched[8],
		    "touched map at an offset");

	/* the data itself comes back from swap */
	for (size_t i = 0; i < ARRAY_SIZE(written); i++)
		for (uint64_t pg = written[i] * RANGE_PAGES; pg < (written[i] + 1) * RANGE_PAGES;
		     pg++)
			TEST_ASSERT_EQ(m.base[pg * GUEST_PAGE_SIZE + 100], page_byte(pg));
	guest_mem_destroy(&m);
	swap_cleanup();
	printf("PASS\n");
	return 0;
}
