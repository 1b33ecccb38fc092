/* SPDX-License-Identifier: MIT */
/*
 * Snapshot directories. A snapshot is a directory holding
 *   state   a record stream of kind SNAPSHOT: header, CONFIG, SECTIONs, END
 *   memory  a sparse file: every guest page at a fixed page-aligned offset, zero pages holes
 * The `state` file carries a "memory@ram" section (written by this module, never by callers)
 * with the memory file's region table, a bitmap of the pages present and a CRC32C per 2 MiB
 * chunk, so a flipped byte in the memory file is found when memory is loaded or verified.
 *
 * A snapshot is written into DIR.tmp-XXXXXX next to DIR, synced, and renamed into place only
 * when complete: a crash or a full disk never leaves something that looks like a snapshot.
 */
#ifndef GODWIT_STATE_SNAPSHOT_H
#define GODWIT_STATE_SNAPSHOT_H

#include "state/record.h"

#include <stdio.h>

#define SNAPSHOT_STATE_FILE "state"
#define SNAPSHOT_MEMORY_FILE "memory"
#define SNAPSHOT_MEMORY_SECTION "memory" /* reserved section name */
#define SNAPSHOT_MEMORY_INSTANCE "ram"
#define SNAPSHOT_MEMORY_VERSION 1u
#define SNAPSHOT_CHUNK_SIZE (2u * 1024 * 1024)
/* Readers refuse larger `state` files (memory is in `memory`, so this is generous). */
#define SNAPSHOT_STATE_MAX (256ull * 1024 * 1024)
#define SNAPSHOT_MAX_SECTIONS 4096u

/* ---- the memory index ---- */

struct snapshot_mem_region {
	uint64_t gpa;
	uint64_t size;
	uint64_t file_offset; /* where the region's first page is in the memory file */
	uint64_t first_page;  /* the region's first bit in the present bitmap */
	uint64_t first_chunk; /* the region's first entry in the chunk CRC table */
};

struct snapshot_memory {
	uint32_t chunk_size;
	uint32_t nr_regions;
	uint64_t file_size;
	struct snapshot_mem_region regions[STATE_MAX_REGIONS];
	uint64_t nr_pages;	/* all pages of all regions */
	uint64_t pages_present; /* pages with data in the memory file; the rest are zero */
	uint64_t nr_chunks;
	const uint8_t *bitmap; /* bit (i % 8) of byte i / 8: page i is present */
	const uint8_t *crcs;   /* nr_chunks little-endian u32: CRC32C of the chunk's present pages */
};

/* Decodes and validates a memory index payload against the snapshot's configuration. */
int __must_check snapshot_memory_decode(const void *p, size_t len, const struct state_config *cfg,
					struct snapshot_memory *m, struct errbuf *e);
/* page: index over all regions (snapshot_mem_region.first_page + page within region) */
bool snapshot_memory_page_present(const struct snapshot_memory *m, uint64_t page);
uint32_t snapshot_memory_chunk_crc(const struct snapshot_memory *m, uint64_t chunk);
/*
 * Extent list view of the bitmap: the first run of present pages of region idx at or after
 * region page `from` (pages counted from the region's start). Fills *first and *count and
 * returns true, or returns false when no present page follows.
 */
bool snapshot_memory_next_extent(const struct snapshot_memory *m, uint32_t idx, uint64_t from,
				 uint64_t *first, uint64_t *count);

/* ---- writing ---- */

struct snapshot_writer;

struct snapshot_stats {
	uint64_t pages_total;	/* pages of all regions */
	uint64_t pages_present; /* non-zero pages written */
	uint64_t pages_zero;	/* pages given but found zero: holes */
	uint64_t state_bytes;
	uint64_t write_wait_ns; /* the caller waited this long for memory writes to finish */
};

/* Creates DIR.tmp-XXXXXX next to dir; refuses if dir already exists. */
int __must_check snapshot_writer_begin(const char *dir, struct snapshot_writer **wp,
				       struct errbuf *e);
/* First, once: the CONFIG record; also lays out the memory file from cfg's regions. */
int __must_check snapshot_writer_config(struct snapshot_writer *w, const struct state_config *cfg,
					struct errbuf *e);
/* After the config, any number, any order; (name, instance) must be unique. */
int __must_check snapshot_writer_section(struct snapshot_writer *w, const char *name,
					 const char *instance, uint32_t version, const void *data,
					 size_t len, struct errbuf *e);
/*
 * Guest memory [gpa, gpa + len) inside one region, read from host. Zero pages become holes;
 * the others are written at their offset and CRC'd. Within one 2 MiB chunk, pages must be
 * given in increasing gpa order, each at most once; pages never given are zero. Writes
 * may still be in flight when it returns: the memory must not change (the guest stays
 * paused) until snapshot_writer_memory_done() or the commit has returned.
 */
int __must_check snapshot_writer_memory(struct snapshot_writer *w, uint64_t gpa,
					const void *host, uint64_t len, struct errbuf *e);
/* Waits for every memory write in flight; after it the guest's memory may change. */
int __must_check snapshot_writer_memory_done(struct snapshot_writer *w, struct errbuf *e);
void snapshot_writer_stats(const struct snapshot_writer *w, struct snapshot_stats *st);
/*
 * Writes the memory index and END, fsyncs both files and the directory, renames the
 * temporary directory to DIR and fsyncs its parent. On failure nothing is left behind.
 * Frees w either way.
 */
int __must_check snapshot_writer_commit(struct snapshot_writer *w, struct errbuf *e);
/* Removes the temporary directory and frees w. NULL is fine. */
void snapshot_writer_abort(struct snapshot_writer *w);

/* ---- reading ---- */

struct snapshot_reader;

/*
 * Opens DIR, reads and checks all of `state` (every CRC, the stream order, the config, the
 * memory index, no duplicate sections, nothing after END) and opens `memory`, checking its
 * size against the index. Memory contents are only checked by verify or load.
 */
int __must_check snapshot_open(const char *dir, struct snapshot_reader **rp, struct errbuf *e);
void snapshot_close(struct snapshot_reader *r);
/* The checks snapshot_open() makes on a `state` file, on an image in memory (tests, fuzzing). */
int __must_check snapshot_state_check(const void *p, size_t len, struct errbuf *e);

const struct state_header *snapshot_header(const struct snapshot_reader *r);
const struct state_config *snapshot_config(const struct snapshot_reader *r);
/* The caller's sections in file order (the memory index is not among them). */
size_t snapshot_section_count(const struct snapshot_reader *r);
const struct state_section *snapshot_section(const struct snapshot_reader *r, size_t i);
/* NULL if absent; the caller decides whether that is an error. */
const struct state_section *snapshot_section_find(const struct snapshot_reader *r,
						  const char *name, const char *instance);

const struct snapshot_memory *snapshot_memory(const struct snapshot_reader *r);
/* Open read-only; valid until snapshot_close(). Map it MAP_PRIVATE for a lazy restore. */
int snapshot_memory_fd(const struct snapshot_reader *r);
/*
 * Reads every present page and checks the chunk CRCs, and checks that pages the index calls
 * zero hold no data. Each problem is printed to report (if not NULL); returns -EBADMSG naming
 * the first problem and the count.
 */
int __must_check snapshot_memory_verify(struct snapshot_reader *r, FILE *report,
					struct errbuf *e);
/*
 * Eager restore of region idx: reads its present pages into host (region size bytes, which
 * must read as zero where pages are absent, as fresh anonymous memory does) and checks each
 * chunk's CRC as it goes.
 */
int __must_check snapshot_memory_load(struct snapshot_reader *r, uint32_t idx, void *host,
				      struct errbuf *e);

/* What the eager loads so far read from where: for the restore's log line. */
struct snapshot_load_stats {
	uint64_t cached_bytes; /* present pages copied from the page cache */
	uint64_t direct_bytes; /* present pages read from the file (O_DIRECT where allowed) */
	uint64_t huge_bytes;   /* guest memory populated with huge pages first */
};
void snapshot_load_stats(const struct snapshot_reader *r, struct snapshot_load_stats *st);

#endif
