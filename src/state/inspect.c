/* SPDX-License-Identifier: MIT */
/* Human-readable dumps of snapshots and captured streams that report problems and go on. */
#include "state/inspect.h"

#include "state/internal.h"
#include "state/record.h"
#include "state/snapshot.h"
#include "vmm/vm.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct pages_run {
	uint64_t records;
	uint64_t first_index;
	uint64_t first_offset;
	uint64_t pages;
	uint64_t zero;
	uint64_t delta;
	uint64_t bytes; /* a whole page counts 4096 (before zstd), a delta its own length */
};

struct inspect {
	FILE *out;
	uint64_t problems;
	struct errbuf first;
	bool snapshot_dir; /* payloads stay valid: the memory index may be kept */
	bool have_config;
	struct state_config *cfg;
	bool have_mem;
	struct snapshot_memory mem;
	uint64_t sections;
	uint64_t records;
	struct pages_run run;
	struct pages_run pages_total;
	/* the VM's sections (CRC good, framing decoded), copied, for the loader's checks */
	struct vm_section *secs;
	size_t nsecs, cap;
	bool secs_lost; /* out of memory keeping them: not checked */
	struct state_inflater *z; /* made at the first compressed batch */
};

/* Keeps a copy of a section for inspect_sections_check. */
static void inspect_section_keep(struct inspect *in, const struct state_section *s)
{
	char *name = strdup(s->name), *inst = strdup(s->instance);
	void *data = malloc(s->len ? s->len : 1);

	if (in->nsecs == in->cap) {
		size_t cap = in->cap ? 2 * in->cap : 16;
		struct vm_section *n = realloc(in->secs, cap * sizeof(*n));

		if (n) {
			in->secs = n;
			in->cap = cap;
		}
	}
	if (in->nsecs == in->cap || !name || !inst || !data) {
		free(name);
		free(inst);
		free(data);
		in->secs_lost = true;
		return;
	}
	memcpy(data, s->data, s->len);
	in->secs[in->nsecs++] = (struct vm_section){ name, inst, s->version, data, s->len };
}

static void inspect_sections_free(struct inspect *in)
{
	for (size_t i = 0; i < in->nsecs; i++) {
		free((void *)in->secs[i].name);
		free((void *)in->secs[i].instance);
		free((void *)in->secs[i].data);
	}
	free(in->secs);
	in->secs = NULL;
	in->nsecs = in->cap = 0;
}

static void problem(struct inspect *in, const struct errbuf *msg)
{
	fprintf(in->out, "    BAD: %s\n", msg->msg);
	if (!in->problems)
		in->first = *msg;
	in->problems++;
}

static void print_record(struct inspect *in, const struct state_record *rec, const char *crc)
{
	fprintf(in->out, "  %-6" PRIu64 " %-12" PRIu64 " %-8s %-10" PRIu64 " %-4s ", rec->index,
		rec->offset, state_record_type_name(rec->type), rec->len, crc);
}

static void flush_pages_run(struct inspect *in)
{
	struct pages_run *r = &in->run;
	char b[32], d[40] = "";

	if (!r->records)
		return;
	if (r->delta)
		snprintf(d, sizeof(d), ", %" PRIu64 " delta%s", r->delta, r->delta == 1 ? "" : "s");
	fprintf(in->out,
		"  %-6" PRIu64 " %-12" PRIu64 " PAGES    x%-9" PRIu64 " ok   %" PRIu64
		" pages (%" PRIu64 " zero%s, %s of data)\n",
		r->first_index, r->first_offset, r->records, r->pages, r->zero, d,
		fmt_bytes(r->bytes, b, sizeof(b)));
	memset(r, 0, sizeof(*r));
}

static void print_config(struct inspect *in, const struct state_config *c)
{
	char b[32];

	fprintf(in->out, "%u vCPU%s, %s in %" PRIu32 " region%s, %" PRIu32 " CPUID entries, %" PRIu32
		" capabilities, flags 0x%" PRIx64 "\n",
		c->nr_vcpus, c->nr_vcpus == 1 ? "" : "s",
		fmt_bytes(state_config_mem_size(c), b, sizeof(b)), c->nr_regions,
		c->nr_regions == 1 ? "" : "s", c->nr_cpuid, c->nr_caps, c->flags);
	fprintf(in->out, "    machine \"%s\", kernel \"%s\"\n", c->machine, c->kernel);
	for (uint32_t i = 0; i < c->nr_regions; i++)
		fprintf(in->out, "    region %" PRIu32 ": gpa 0x%" PRIx64 "-0x%" PRIx64 " (%s)\n", i,
			c->regions[i].gpa, c->regions[i].gpa + c->regions[i].size - 1,
			fmt_bytes(c->regions[i].size, b, sizeof(b)));
	for (uint32_t i = 0; i < c->nr_devices; i++)
		fprintf(in->out, "    device %s \"%s\": %s, %s%s\n", c->devices[i].type,
			c->devices[i].id, c->devices[i].backend,
			fmt_bytes(c->devices[i].size, b, sizeof(b)),
			c->devices[i].flags & STATE_DEV_F_READONLY ? ", readonly" : "");
}

static void inspect_section(struct inspect *in, const struct state_record *rec)
{
	struct state_section s;
	struct errbuf msg;

	if (state_section_decode(rec->payload, (size_t)rec->len, &s, &msg)) {
		fputc('\n', in->out);
		problem(in, &msg);
		return;
	}
	in->sections++;
	fprintf(in->out, "%s@%s version %" PRIu32 ", %" PRIu32 " bytes\n", s.name, s.instance,
		s.version, s.len);
	if (strcmp(s.name, SNAPSHOT_MEMORY_SECTION) || strcmp(s.instance, SNAPSHOT_MEMORY_INSTANCE)) {
		inspect_section_keep(in, &s);
		return;
	}
	if (!in->snapshot_dir) {
		err_set(&msg, -EBADMSG, "a memory index does not belong in a migration stream");
		problem(in, &msg);
	} else if (in->have_mem) {
		err_set(&msg, -EBADMSG, "a second memory index");
		problem(in, &msg);
	} else if (!in->have_config) {
		err_set(&msg, -EBADMSG, "memory index without a valid config: not checked");
		problem(in, &msg);
	} else if (s.version != SNAPSHOT_MEMORY_VERSION) {
		err_set(&msg, -ENOTSUP, "memory index version %" PRIu32 " is not supported",
			s.version);
		problem(in, &msg);
	} else if (snapshot_memory_decode(s.data, s.len, in->cfg, &in->mem, &msg)) {
		problem(in, &msg);
	} else {
		in->have_mem = true;
	}
}

/* data_len: whole pages' 4096 bytes (inflated) and each delta's own length */
static void pages_run_add(struct pages_run *r, const struct state_pages_iter *it)
{
	r->records++;
	r->pages += it->count;
	r->zero += it->count - it->nr_data;
	r->delta += it->nr_delta;
	r->bytes += it->data_len;
}

/* A PAGES record whose framing is good but whose contents are not: shown on a line of its own. */
static void pages_bad(struct inspect *in, const struct state_record *rec,
		      const struct errbuf *msg)
{
	flush_pages_run(in);
	print_record(in, rec, "ok");
	fputc('\n', in->out);
	problem(in, msg);
}

static void inspect_pages(struct inspect *in, const struct state_record *rec)
{
	struct state_pages_iter it;
	struct state_page pg;
	struct errbuf msg;

	if (state_pages_decode(rec->payload, (size_t)rec->len, &it, &msg)) {
		pages_bad(in, rec, &msg);
		return;
	}
	/* inflated as a destination would: its frame checked, its pages' addresses seen */
	if (state_pages_inflate_lazy(&it, &in->z, &msg)) {
		pages_bad(in, rec, &msg);
		return;
	}
	if (in->have_config) {
		while (state_pages_next(&it, &pg)) {
			if (state_config_region_find(in->cfg, pg.gpa, STATE_PAGE_SIZE) >= 0)
				continue;
			err_set(&msg, -EBADMSG, "page at gpa 0x%" PRIx64 " is outside guest memory",
				pg.gpa);
			pages_bad(in, rec, &msg);
			return;
		}
	}
	if (!in->run.records) {
		in->run.first_index = rec->index;
		in->run.first_offset = rec->offset;
	}
	pages_run_add(&in->run, &it);
	pages_run_add(&in->pages_total, &it);
}

static void inspect_record(struct inspect *in, const struct state_record *rec, int ret,
			   const struct errbuf *rmsg)
{
	struct errbuf msg;
	char crc[64];

	in->records++;
	if (rec->type == STATE_REC_PAGES && !ret && rec->crc_ok) {
		inspect_pages(in, rec);
		return;
	}
	flush_pages_run(in);
	print_record(in, rec, rec->crc_ok ? "ok" : "BAD");
	if (ret) {
		fputc('\n', in->out);
		problem(in, rmsg);
		return;
	}
	if (!rec->crc_ok) {
		struct state_section s;

		/* name the damaged section if its header still decodes; use nothing from it */
		if (rec->type == STATE_REC_SECTION &&
		    !state_section_decode(rec->payload, (size_t)rec->len, &s, &msg))
			fprintf(in->out, "(unverified) %s@%s version %" PRIu32 ", %" PRIu32 " bytes",
				s.name, s.instance, s.version, s.len);
		snprintf(crc, sizeof(crc), "stored 0x%08" PRIx32 ", computed 0x%08" PRIx32,
			 rec->crc_stored, rec->crc_computed);
		fputc('\n', in->out);
		err_set(&msg, -EBADMSG, "record %" PRIu64 " (%s) at offset %" PRIu64
			": CRC mismatch (%s)", rec->index, state_record_type_name(rec->type),
			rec->offset, crc);
		problem(in, &msg);
		return;
	}
	switch (rec->type) {
	case STATE_REC_CONFIG:
		if (state_config_decode(rec->payload, (size_t)rec->len, in->cfg, &msg)) {
			fputc('\n', in->out);
			problem(in, &msg);
			break;
		}
		in->have_config = true;
		print_config(in, in->cfg);
		break;
	case STATE_REC_SECTION:
		inspect_section(in, rec);
		break;
	case STATE_REC_END:
		fprintf(in->out, "%" PRIu64 " records before it\n", rec->index);
		break;
	default:
		fprintf(in->out, "control message 0x%" PRIx32 "\n", rec->type);
		break;
	}
}

/*
 * The VM's sections, checked as a restore or an incoming migration checks them before it
 * loads any (vm_sections_check): what inspect accepts, a restore accepts.
 */
static void inspect_sections_check(struct inspect *in)
{
	struct vm_check_device devs[STATE_MAX_DEVICES];
	struct errbuf msg;

	if (!in->have_config || in->secs_lost)
		return;
	for (uint32_t i = 0; i < in->cfg->nr_devices; i++)
		devs[i] = (struct vm_check_device){ in->cfg->devices[i].type, in->cfg->devices[i].id };
	if (vm_sections_check(in->cfg->nr_vcpus, in->cfg->xsave_size, devs, in->cfg->nr_devices,
			      in->secs, in->nsecs, &msg)) {
		fprintf(in->out, "sections:\n");
		problem(in, &msg);
	} else {
		fprintf(in->out, "sections: %zu, all valid for a %" PRIu32 "-vCPU machine\n",
			in->nsecs, in->cfg->nr_vcpus);
	}
}

/* Walks the whole stream r, printing every record; problems are counted in in. */
static void inspect_walk(struct inspect *in, struct state_reader *r)
{
	const struct state_header *h = state_reader_header(r);
	struct state_record rec;
	struct errbuf msg;
	char b[32];

	fprintf(in->out, "header: format version %" PRIu32 ", page size %" PRIu32
		", %s, flags 0x%" PRIx32 "\n", h->version, h->page_size,
		h->kind == STATE_KIND_SNAPSHOT ? "snapshot state" : "migration stream", h->flags);
	fprintf(in->out, "  %-6s %-12s %-8s %-10s %-4s %s\n", "RECORD", "OFFSET", "TYPE", "LENGTH",
		"CRC", "CONTENT");
	while (!state_reader_ended(r)) {
		int ret = state_reader_next(r, &rec, &msg);

		if (ret && state_reader_failed(r)) {
			flush_pages_run(in);
			problem(in, &msg);
			fprintf(in->out, "  (the rest of the stream cannot be read)\n");
			break;
		}
		inspect_record(in, &rec, ret, &msg);
	}
	flush_pages_run(in);
	if (state_reader_ended(r) && state_reader_expect_eof(r, &msg))
		problem(in, &msg);
	/* a stream cut short is a problem already; its sections are not all there to check */
	if (state_reader_ended(r) && !state_reader_failed(r))
		inspect_sections_check(in);
	inspect_sections_free(in);
	state_inflater_free(in->z);
	in->z = NULL;
	if (in->pages_total.records)
		fprintf(in->out, "pages: %" PRIu64 " in %" PRIu64 " records, %" PRIu64
			" zero (sent as flags), %" PRIu64 " deltas, %s of data\n",
			in->pages_total.pages, in->pages_total.records, in->pages_total.zero,
			in->pages_total.delta, fmt_bytes(in->pages_total.bytes, b, sizeof(b)));
}

static int inspect_result(struct inspect *in, struct errbuf *e)
{
	fprintf(in->out, "summary: %" PRIu64 " records, %" PRIu64 " sections, %" PRIu64
		" problem%s\n", in->records, in->sections, in->problems,
		in->problems == 1 ? "" : "s");
	if (!in->problems)
		return 0;
	return err_set(e, -EBADMSG, "%" PRIu64 " problem%s found, the first: %s", in->problems,
		       in->problems == 1 ? "" : "s", in->first.msg);
}

static int inspect_init(struct inspect *in, FILE *out, struct errbuf *e)
{
	memset(in, 0, sizeof(*in));
	in->out = out;
	in->cfg = calloc(1, sizeof(*in->cfg));
	if (!in->cfg)
		return err_set(e, -ENOMEM, "inspect: out of memory");
	return 0;
}

static int inspect_reader(struct inspect *in, struct state_reader *r, int ret, struct errbuf *e)
{
	if (ret) {
		fprintf(in->out, "BAD: %s\n", e->msg);
		free(in->cfg);
		return ret;
	}
	inspect_walk(in, r);
	state_reader_free(r);
	ret = inspect_result(in, e);
	free(in->cfg);
	return ret;
}

static const struct state_reader_opts inspect_opts = {
	.allow_control = true,
	.keep_going = true,
};

int state_inspect_stream(int fd, FILE *out, struct errbuf *e)
{
	struct state_reader *r = NULL;
	struct inspect in;
	int ret = inspect_init(&in, out, e);

	if (ret)
		return ret;
	ret = state_reader_open_fd(&r, fd, &inspect_opts, e);
	return inspect_reader(&in, r, ret, e);
}

int state_inspect_buf(const void *p, size_t len, FILE *out, struct errbuf *e)
{
	struct state_reader *r = NULL;
	struct inspect in;
	int ret = inspect_init(&in, out, e);

	if (ret)
		return ret;
	ret = state_reader_open_mem(&r, p, len, &inspect_opts, e);
	return inspect_reader(&in, r, ret, e);
}

static void inspect_memory(struct inspect *in, int dfd, const char *dir)
{
	const struct snapshot_memory *m = &in->mem;
	struct errbuf msg;
	uint64_t problems = 0;
	char b1[32], b2[32], b3[32];
	int fd;

	fprintf(in->out, "memory: %" PRIu64 " pages (%s), %" PRIu64 " present (%s), %" PRIu64
		" zero pages skipped; %" PRIu64 " chunks of %s\n", m->nr_pages,
		fmt_bytes(m->nr_pages * STATE_PAGE_SIZE, b1, sizeof(b1)), m->pages_present,
		fmt_bytes(m->pages_present * STATE_PAGE_SIZE, b2, sizeof(b2)),
		m->nr_pages - m->pages_present, m->nr_chunks,
		fmt_bytes(m->chunk_size, b3, sizeof(b3)));
	fd = openat(dfd, SNAPSHOT_MEMORY_FILE, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		err_set(&msg, -errno, "%s/memory: %s", dir, strerror(errno));
		problem(in, &msg);
		return;
	}
	if (snapshot_memory_check_size(fd, m, &msg)) {
		problem(in, &msg);
	} else {
		int ret = snapshot_memory_verify_fd(fd, m, in->out, &problems, &msg);

		if (ret && !problems)
			problem(in, &msg); /* an I/O error stopped verification */
		else if (!in->problems && problems)
			in->first = msg;
		in->problems += problems;
		fprintf(in->out, "memory file: %s, %s\n", fmt_bytes(m->file_size, b1, sizeof(b1)),
			problems ? "CRC or hole check FAILED" : ret ? "not fully verified"
								   : "all chunk CRCs ok");
	}
	close(fd);
}

int state_inspect_dir(const char *dir, FILE *out, struct errbuf *e)
{
	struct state_reader *r = NULL;
	struct inspect in;
	uint8_t *state = NULL;
	size_t len;
	int dfd, ret;

	dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0) {
		if (errno == ENOTDIR)
			return err_set(e, -ENOTDIR, "%s is not a godwit snapshot (not a directory)", dir);
		return err_set(e, -errno, "%s: %s", dir, strerror(errno));
	}
	ret = state_file_read_at(dfd, dir, SNAPSHOT_STATE_FILE, SNAPSHOT_STATE_MAX, &state, &len, e);
	if (ret == -ENOENT)
		err_set(e, ret, "%s is not a godwit snapshot (no state file)", dir);
	if (ret)
		goto out;
	ret = inspect_init(&in, out, e);
	if (ret)
		goto out;
	in.snapshot_dir = true;
	fprintf(out, "snapshot %s\n", dir);
	ret = state_reader_open_mem(&r, state, len, &inspect_opts, e);
	if (ret) {
		fprintf(out, "BAD: %s\n", e->msg);
		free(in.cfg);
		goto out;
	}
	if (state_reader_header(r)->kind != STATE_KIND_SNAPSHOT) {
		struct errbuf msg;

		err_set(&msg, -EBADMSG, "the state file holds a migration stream");
		problem(&in, &msg);
	}
	inspect_walk(&in, r);
	state_reader_free(r);
	if (in.have_mem) {
		inspect_memory(&in, dfd, dir);
	} else {
		struct errbuf msg;

		err_set(&msg, -EBADMSG, "no usable memory index: memory not checked");
		problem(&in, &msg);
	}
	ret = inspect_result(&in, e);
	free(in.cfg);
out:
	free(state);
	close(dfd);
	return ret;
}

int state_inspect_path(const char *path, FILE *out, struct errbuf *e)
{
	struct stat st;
	int fd, ret;

	/* without blocking: a FIFO nobody writes to would hold inspect in open() forever */
	fd = io_open_nonblock(AT_FDCWD, path, O_RDONLY, 0, &st);
	if (fd < 0)
		return err_set(e, fd, "%s: %s", path, strerror(-fd));
	if (S_ISDIR(st.st_mode)) {
		close(fd);
		return state_inspect_dir(path, out, e);
	}
	if (!S_ISREG(st.st_mode)) {
		close(fd);
		return err_set(e, -EINVAL, "%s is not a regular file or a snapshot directory", path);
	}
	ret = state_inspect_stream(fd, out, e);
	close(fd);
	if (ret)
		err_prefix(e, ret, "%s", path);
	return ret;
}
