/* SPDX-License-Identifier: MIT */
/*
 * Writes a small seed corpus for fuzz_state into the directory given: valid migration
 * streams and a snapshot `state` file, built with the real writers so the fuzzer starts from
 * inputs that get past every CRC.
 */
#include "state/record.h"
#include "state/snapshot.h"

#include <errno.h>
#include <stdbool.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static void config_make(struct state_config *c)
{
	memset(c, 0, sizeof(*c));
	c->nr_vcpus = 1;
	c->nr_regions = 2;
	c->regions[0] = (struct state_region){ 0, 16 * STATE_PAGE_SIZE };
	c->regions[1] = (struct state_region){ 1ull << 32, 4 * STATE_PAGE_SIZE };
	c->nr_cpuid = 2;
	c->cpuid[0] = (struct state_cpuid_entry){ 0, 0, 0, 0xd, 1, 2, 3 };
	c->cpuid[1] = (struct state_cpuid_entry){ 7, 0, 1, 0, 4, 5, 6 };
	c->nr_caps = 1;
	c->caps[0] = 124;
	strcpy(c->machine, "seed");
	strcpy(c->kernel, "/k");
}

static int seed_open(const char *dir, const char *name)
{
	char path[4096];
	int fd;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0) {
		fprintf(stderr, "gen_seeds: %s: %s\n", path, strerror(errno));
		exit(1);
	}
	return fd;
}

static void check(int ret, const struct errbuf *e)
{
	if (ret) {
		fprintf(stderr, "gen_seeds: %s\n", e->msg);
		exit(1);
	}
}

static void migration_seed(const char *dir, const char *name, unsigned npages, int zstd,
			   bool with_delta)
{
	static uint8_t page[STATE_PAGE_SIZE];
	struct state_page pages[8];
	struct state_writer *w;
	struct state_config c;
	struct errbuf e;
	int fd = seed_open(dir, name);

	config_make(&c);
	memset(page, 0x5a, sizeof(page));
	static const uint8_t delta[] = { 0x10, 0x03, 'a', 'b', 'c', 0x80, 0x01, 0x01, 'z' };

	memset(pages, 0, sizeof(pages));
	for (unsigned i = 0; i < npages && i < 8; i++) {
		pages[i].gpa = (uint64_t)i * STATE_PAGE_SIZE;
		pages[i].data = i % 2 ? NULL : page;
		/* with deltas (migrate --delta): every fourth page */
		if (with_delta && i % 4 == 2) {
			pages[i].data = delta;
			pages[i].delta = true;
			pages[i].delta_len = sizeof(delta);
		}
	}
	check(state_writer_open(&w, fd, STATE_KIND_MIGRATION, &e), &e);
	if (zstd)
		check(state_writer_compress(w, zstd, &e), &e);
	check(state_writer_record(w, STATE_REC_CTRL_FIRST, "hello", 5, &e), &e);
	check(state_writer_config(w, &c, &e), &e);
	check(state_writer_section(w, "vcpu", "0", 1, "regs", 4, &e), &e);
	if (npages)
		check(state_writer_pages(w, pages, npages,
					 STATE_PAGES_STABLE | (zstd ? STATE_PAGES_COMPRESS : 0), &e),
		      &e);
	check(state_writer_end(w, &e), &e);
	state_writer_free(w);
	close(fd);
}

static void snapshot_seed(const char *dir)
{
	char snap[4096], path[4200], seed[4200];
	struct snapshot_writer *w;
	struct state_config c;
	struct errbuf e;
	uint8_t *mem;

	config_make(&c);
	mem = calloc(16, STATE_PAGE_SIZE);
	if (!mem)
		exit(1);
	memset(mem + 3 * STATE_PAGE_SIZE, 0x11, STATE_PAGE_SIZE);
	snprintf(snap, sizeof(snap), "%s/.snapshot-seed", dir);
	snprintf(path, sizeof(path), "%s/state", snap);
	snprintf(seed, sizeof(seed), "%s/snapshot-state", dir);
	unlink(path);
	snprintf(path, sizeof(path), "%s/memory", snap);
	unlink(path);
	rmdir(snap);
	check(snapshot_writer_begin(snap, &w, &e), &e);
	check(snapshot_writer_config(w, &c, &e), &e);
	check(snapshot_writer_section(w, "serial8250", "io:3f8", 1, "uart", 4, &e), &e);
	check(snapshot_writer_memory(w, 0, mem, 16 * STATE_PAGE_SIZE, &e), &e);
	check(snapshot_writer_commit(w, &e), &e);
	snprintf(path, sizeof(path), "%s/state", snap);
	if (rename(path, seed) < 0)
		exit(1);
	snprintf(path, sizeof(path), "%s/memory", snap);
	unlink(path);
	rmdir(snap);
	free(mem);
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: gen_seeds DIR\n");
		return 2;
	}
	if (mkdir(argv[1], 0755) < 0 && errno != EEXIST) {
		fprintf(stderr, "gen_seeds: %s: %s\n", argv[1], strerror(errno));
		return 1;
	}
	migration_seed(argv[1], "migration-empty", 0, 0, false);
	migration_seed(argv[1], "migration-1page", 1, 0, false);
	migration_seed(argv[1], "migration-8pages", 8, 0, false);
	migration_seed(argv[1], "migration-8pages-zstd", 8, 1, false);
	migration_seed(argv[1], "migration-8pages-delta", 8, 0, true);
	migration_seed(argv[1], "migration-8pages-delta-zstd", 8, 1, true);
	snapshot_seed(argv[1]);
	return 0;
}
