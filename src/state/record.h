/* SPDX-License-Identifier: MIT */
/*
 * The state record stream: the one encoding of VM state shared by snapshot files and
 * migration streams. A stream is a 32-byte header followed by records; each record is a
 * 16-byte record header (type, payload length, CRC32C of those), the payload, and a CRC32C
 * over the record header and payload. docs/state-format.md has the byte layout.
 *
 * Readers treat every byte as hostile: lengths are bounded before anything is allocated,
 * CRCs are checked before a payload is handed out, and every error names the record index,
 * type and stream offset. Payload decoders fill staging structs and validate them fully;
 * callers apply nothing that a decoder did not accept.
 */
#ifndef GODWIT_STATE_RECORD_H
#define GODWIT_STATE_RECORD_H

#include "base/buf.h"
#include "base/channel.h"
#include "base/util.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define STATE_MAGIC "GODWIT\r\n"
#define STATE_MAGIC_LEN 8
/*
 * 2: CONFIG gained tsc_khz, xsave_size and the device list, vcpu sections carry their CPUID
 * (version 2). A version 1 file is refused by its header, naming the version.
 */
#define STATE_FORMAT_VERSION 2u
#define STATE_PAGE_SIZE 4096u
#define STATE_HEADER_SIZE 32u
#define STATE_RECORD_HEADER_SIZE 16u
#define STATE_RECORD_TRAILER_SIZE 4u
/* The largest record payload format version 1 allows; readers may set a lower bound. */
#define STATE_RECORD_MAX (64ull * 1024 * 1024)

/* What a stream is; a reader can insist on one. */
enum state_kind {
	STATE_KIND_SNAPSHOT = 1,  /* a snapshot's `state` file: memory lives in `memory` */
	STATE_KIND_MIGRATION = 2, /* a migration stream: memory travels in PAGES records */
};

enum state_record_type {
	STATE_REC_CONFIG = 1,
	STATE_REC_SECTION = 2,
	STATE_REC_PAGES = 3,
	STATE_REC_END = 4,
	/*
	 * Migration control messages (hello, ready, commit, ...): framed and checked like any
	 * record, payloads defined by the migration layer (docs/migration-protocol.md). Only
	 * accepted by readers opened with allow_control.
	 */
	STATE_REC_CTRL_FIRST = 0x100,
	STATE_REC_CTRL_LAST = 0x1ff,
};

/* "CONFIG", "SECTION", "PAGES", "END", "CONTROL" or "UNKNOWN". */
const char *state_record_type_name(uint32_t type);
bool state_record_type_is_control(uint32_t type);

struct state_header {
	uint32_t version;   /* STATE_FORMAT_VERSION */
	uint32_t page_size; /* STATE_PAGE_SIZE */
	uint32_t kind;      /* enum state_kind */
	uint32_t flags;     /* none defined in version 1: must be 0 */
};

void state_header_encode(const struct state_header *h, uint8_t out[STATE_HEADER_SIZE]);
/* Checks magic, version, CRC, page size, kind and flags, in that order. */
int __must_check state_header_decode(const uint8_t *p, size_t len, struct state_header *h,
				     struct errbuf *e);

/* ---- CONFIG: what the guest was given; checked before any memory or state moves ---- */

#define STATE_MAX_REGIONS 4u
#define STATE_MAX_VCPUS 64u
#define STATE_MAX_CPUID 256u
#define STATE_MAX_CAPS 64u
#define STATE_NAME_MAX 63u  /* machine name, section name, section instance */
#define STATE_PATH_MAX 4095u
#define STATE_GPA_LIMIT (1ull << 52) /* x86-64 architectural physical address limit */
#define STATE_XSAVE_MIN 4096u
#define STATE_XSAVE_MAX (64u * 1024)

struct state_region {
	uint64_t gpa;
	uint64_t size;
};

struct state_cpuid_entry {
	uint32_t function;
	uint32_t index;
	uint32_t flags; /* KVM_CPUID_FLAG_* */
	uint32_t eax, ebx, ecx, edx;
};

/*
 * A device the guest was given, so a receiver builds it (and refuses what it cannot build)
 * before any state arrives. type, id and backend mean what the VMM's device model says.
 */
#define STATE_MAX_DEVICES 16u
#define STATE_DEV_F_READONLY 1u

struct state_device {
	char type[STATE_NAME_MAX + 1];	 /* "virtio-blk" */
	char id[STATE_NAME_MAX + 1];	 /* "disk0" */
	char backend[STATE_PATH_MAX + 1]; /* the file on the writing host */
	uint64_t size;			 /* the backend's size the guest was given */
	uint32_t flags;			 /* STATE_DEV_F_* */
};

struct state_config {
	uint64_t flags; /* defined and checked by the VMM; carried unchanged */
	uint32_t nr_vcpus;
	uint32_t nr_regions;
	struct state_region regions[STATE_MAX_REGIONS];
	uint32_t nr_cpuid;
	struct state_cpuid_entry cpuid[STATE_MAX_CPUID];
	uint32_t nr_caps;
	uint32_t caps[STATE_MAX_CAPS]; /* KVM_CAP_* ids / features the guest relies on */
	char machine[STATE_NAME_MAX + 1];
	char kernel[STATE_PATH_MAX + 1]; /* informational */
	uint32_t tsc_khz;    /* the guest's TSC frequency; 0: not recorded */
	uint32_t xsave_size; /* bytes of the vCPUs' XSAVE area; 0: none */
	uint32_t nr_devices;
	struct state_device devices[STATE_MAX_DEVICES];
};

/*
 * Validation: 1..64 vCPUs; 1..4 regions, page-aligned, non-empty, below 2^52, not
 * overlapping; up to 256 CPUID entries without duplicate (function, index); up to 64
 * capabilities without duplicates; a printable machine name of at most 63 bytes; a kernel
 * path of at most 4095 bytes without control characters; an XSAVE size of 0 or 4096..64 KiB;
 * up to 16 devices with printable type and id (ids unique), a backend path without control
 * characters, known flags.
 */
int __must_check state_config_validate(const struct state_config *cfg, struct errbuf *e);
/*
 * The one rule for a machine name (CONFIG's machine, `godwit run --name`): at most 63 bytes
 * of printable ASCII, 0x20..0x7e.
 */
int __must_check state_machine_name_check(const char *name, struct errbuf *e);
/* Validates, then appends the CONFIG payload to out. */
int __must_check state_config_encode(const struct state_config *cfg, struct buf *out,
				     struct errbuf *e);
/* Decodes a CONFIG payload into cfg and validates it; cfg is only meaningful on success. */
int __must_check state_config_decode(const void *p, size_t len, struct state_config *cfg,
				     struct errbuf *e);
uint64_t state_config_mem_size(const struct state_config *cfg);
/* Index of the region holding all of [gpa, gpa + len), or -1. */
int state_config_region_find(const struct state_config *cfg, uint64_t gpa, uint64_t len);

/* ---- SECTION: one piece of device or vCPU state ---- */

struct state_section {
	char name[STATE_NAME_MAX + 1];     /* "vcpu", "serial8250", "ioapic" */
	char instance[STATE_NAME_MAX + 1]; /* "0", "io:3f8", "kvm" */
	uint32_t version;		   /* the section's own payload version */
	const void *data;		   /* points into the decoded payload */
	uint32_t len;
};

/* Names and instances: 1..63 bytes of printable ASCII without spaces (0x21..0x7e). */
int __must_check state_name_check(const char *what, const char *s, struct errbuf *e);
int __must_check state_section_encode(struct buf *out, const char *name, const char *instance,
				      uint32_t version, const void *data, size_t len,
				      struct errbuf *e);
int __must_check state_section_decode(const void *p, size_t len, struct state_section *s,
				      struct errbuf *e);

/* ---- PAGES: a batch of guest pages (migration streams) ---- */

#define STATE_PAGES_MAX 1024u
#define STATE_PAGE_F_ZERO 0x1u /* the page is all zeroes; no data follows for it */
/*
 * The page's data is a delta (state/xbzrle.h) against the copy the receiver holds; only in
 * a batch with STATE_PAGES_F_DELTA, whose descriptors carry each page's data length.
 */
#define STATE_PAGE_F_DELTA 0x2u
/*
 * Batch flag: the data of the non-zero pages is one zstd frame, strictly shorter than the
 * raw data, that decompresses to exactly 4096 bytes per non-zero page.
 */
#define STATE_PAGES_F_ZSTD 0x1u
/* Batch flag: descriptors are 16 bytes, ending in the page's data length; pages may be deltas. */
#define STATE_PAGES_F_DELTA 0x2u
#define STATE_ZSTD_LEVEL_MIN 1
#define STATE_ZSTD_LEVEL_MAX 19

struct state_page {
	uint64_t gpa;	  /* page-aligned */
	const void *data; /* STATE_PAGE_SIZE bytes, NULL for a zero page, or a delta */
	bool delta;	  /* data is a delta of delta_len bytes against the receiver's copy */
	uint32_t delta_len; /* 0..STATE_PAGE_SIZE - 1 */
};

/* Walks a decoded PAGES payload without copying: data points into the payload. */
struct state_pages_iter {
	const uint8_t *desc;
	const uint8_t *data;	/* NULL for a compressed batch until state_pages_inflate() */
	const uint8_t *zdata;	/* a compressed batch's frame */
	size_t zlen;
	uint32_t count;
	uint32_t nr_data;	/* pages that are not zero (whole or delta) */
	uint32_t nr_delta;	/* of them, deltas */
	size_t data_len;	/* bytes of data (inflated), all pages together */
	size_t desc_size;	/* 12, or 16 in a batch with STATE_PAGES_F_DELTA */
	uint32_t pos;
	size_t data_off;
};

/*
 * Checks count (1..STATE_PAGES_MAX), flags, alignment, each page's data length (with
 * STATE_PAGES_F_DELTA: 0 for a zero page, under a page for a delta, a page otherwise) and
 * the exact data length (for a compressed batch: that the frame is shorter than the raw
 * data would be). A delta's own contents are checked when it is applied (xbzrle_decode).
 */
int __must_check state_pages_decode(const void *p, size_t len, struct state_pages_iter *it,
				    struct errbuf *e);
/* The next page of a decoded (and, if compressed, inflated) batch; false when none are left. */
bool state_pages_next(struct state_pages_iter *it, struct state_page *pg);

/*
 * Decompresses a compressed batch into the inflater's buffer, which holds exactly
 * STATE_PAGES_MAX pages and is never grown: a frame that declares or yields anything but
 * 4096 bytes per non-zero page is refused. Nothing to do for a raw batch. The pages' data
 * then points into the inflater until its next use.
 */
struct state_inflater;
int __must_check state_inflater_new(struct state_inflater **zp, struct errbuf *e);
void state_inflater_free(struct state_inflater *z);
int __must_check state_pages_inflate(struct state_pages_iter *it, struct state_inflater *z,
				     struct errbuf *e);
/* The same with *zp made at the first compressed batch (NULL until then; the caller frees it). */
int __must_check state_pages_inflate_lazy(struct state_pages_iter *it,
					  struct state_inflater **zp, struct errbuf *e);

/* ---- END: the last record; carries the number of records before it ---- */

int __must_check state_end_decode(const void *p, size_t len, uint64_t *nr_records,
				  struct errbuf *e);

/* ---- Reading ---- */

struct state_reader_opts {
	uint64_t max_record; /* payload limit; 0 or more than STATE_RECORD_MAX: the format's */
	uint32_t kind;	     /* required enum state_kind, 0 for any */
	bool allow_control;  /* accept STATE_REC_CTRL_* records */
	/* a migration's extra connection: its CONFIG came on the first one, none comes here */
	bool config_elsewhere;
	/*
	 * For inspection only: a payload whose CRC does not match is still returned, with
	 * crc_ok false, and reading continues (the record header has its own CRC, so framing
	 * is still trustworthy). Loaders never set this.
	 */
	bool keep_going;
};

struct state_record {
	uint32_t type;
	uint64_t index;		/* 0 for the first record after the stream header */
	uint64_t offset;	/* stream offset of the record header */
	const uint8_t *payload; /* valid until the next state_reader_next() */
	uint64_t len;
	bool crc_ok;
	uint32_t crc_stored, crc_computed;
};

struct state_reader;

/*
 * Opens a reader and reads and checks the stream header. The fd reader never reads past
 * the record it returns, so after END the fd can carry other traffic. It must be blocking;
 * a receive timeout (SO_RCVTIMEO) surfaces as an error.
 */
int __must_check state_reader_open_fd(struct state_reader **rp, int fd,
				      const struct state_reader_opts *opts, struct errbuf *e);
/* The same over a channel (base/channel.h), which must outlive the reader. */
int __must_check state_reader_open_channel(struct state_reader **rp, struct channel *ch,
					   const struct state_reader_opts *opts, struct errbuf *e);
/* Payloads point straight into p, which must outlive the reader. */
int __must_check state_reader_open_mem(struct state_reader **rp, const void *p, size_t len,
				       const struct state_reader_opts *opts, struct errbuf *e);
const struct state_header *state_reader_header(const struct state_reader *r);

/*
 * Reads the next record. Checks the record header CRC, the type, the length bound, the
 * payload CRC and the stream order: records other than control messages may not come before
 * CONFIG; there is one CONFIG; no PAGES in a snapshot; END's record count matches; nothing is
 * read after END. An error leaves the reader unusable except with keep_going, where a payload
 * CRC mismatch is not an error. Returns 0 or a negative errno (-EPIPE: the stream was
 * truncated, -EBADMSG: corrupt, -EPROTO: out of order, -EFBIG: over the size bound).
 */
int __must_check state_reader_next(struct state_reader *r, struct state_record *rec,
				   struct errbuf *e);
/* True once END was returned. */
bool state_reader_ended(const struct state_reader *r);
/* True once an error stopped the reader (with keep_going, some errors do not). */
bool state_reader_failed(const struct state_reader *r);
/* After END on a file or buffer: fails if any bytes follow. */
int __must_check state_reader_expect_eof(struct state_reader *r, struct errbuf *e);
/* Bytes consumed so far, header included. */
uint64_t state_reader_offset(const struct state_reader *r);
void state_reader_free(struct state_reader *r);

/* ---- Writing ---- */

/*
 * PAGES data is written straight from the caller's pages with writev, without a copy, when
 * the caller promises the pages do not change until state_writer_pages() returns (a paused
 * guest). Otherwise (a running guest in a live round) each page is copied first so that the
 * data sent and its CRC agree; a page changed meanwhile is dirty again and is resent later.
 */
#define STATE_PAGES_STABLE 0x1u
/* Compress the batch's data (state_writer_compress()); it goes raw if that does not shrink it. */
#define STATE_PAGES_COMPRESS 0x2u

/* What the writer's compression did so far. */
struct state_zstats {
	uint64_t raw_bytes; /* page data handed to the compressor */
	uint64_t out_bytes; /* what it was sent as (compressed, or raw when that was smaller) */
	uint64_t ns;	    /* time spent compressing */
	uint64_t batches, shrunk;
};

struct state_writer;

/*
 * Writes a stream to fd (a regular file, pipe or blocking socket; sockets are written with
 * MSG_NOSIGNAL so a dropped peer is an error, not SIGPIPE). Small records are gathered in an
 * output buffer; nothing reaches fd before a flush, a large record, or state_writer_end().
 * After any error the writer refuses further records: the stream is broken.
 */
int __must_check state_writer_open(struct state_writer **wp, int fd, uint32_t kind,
				   struct errbuf *e);
/* The same over a channel (base/channel.h), which must outlive the writer. */
int __must_check state_writer_open_channel(struct state_writer **wp, struct channel *ch,
					   uint32_t kind, struct errbuf *e);
int __must_check state_writer_record(struct state_writer *w, uint32_t type, const void *payload,
				     size_t len, struct errbuf *e);
int __must_check state_writer_config(struct state_writer *w, const struct state_config *cfg,
				     struct errbuf *e);
int __must_check state_writer_section(struct state_writer *w, const char *name,
				      const char *instance, uint32_t version, const void *data,
				      size_t len, struct errbuf *e);
/* A migration's extra connection: CONFIG went on the first; PAGES may follow at once. */
void state_writer_config_elsewhere(struct state_writer *w);
/* Sets the zstd level (STATE_ZSTD_LEVEL_MIN..MAX) for batches sent with STATE_PAGES_COMPRESS. */
int __must_check state_writer_compress(struct state_writer *w, int level, struct errbuf *e);
void state_writer_zstats(const struct state_writer *w, struct state_zstats *zs);
/*
 * One PAGES record of 1..STATE_PAGES_MAX pages; flags: STATE_PAGES_STABLE, _COMPRESS. A
 * batch with any delta page goes with STATE_PAGES_F_DELTA.
 */
int __must_check state_writer_pages(struct state_writer *w, const struct state_page *pages,
				    uint32_t count, unsigned flags, struct errbuf *e);
/* Writes END and flushes. */
int __must_check state_writer_end(struct state_writer *w, struct errbuf *e);
int __must_check state_writer_flush(struct state_writer *w, struct errbuf *e);
/* Bytes produced so far (written to fd or still buffered). */
uint64_t state_writer_bytes(const struct state_writer *w);
/* Bytes handed to fd so far. */
uint64_t state_writer_bytes_flushed(const struct state_writer *w);
void state_writer_free(struct state_writer *w);

#endif
