/* SPDX-License-Identifier: MIT */
/*
 * Encoders and validating decoders for the stream header and the CONFIG, SECTION, PAGES and
 * END payloads. Every field is an explicit little-endian integer; see docs/state-format.md.
 */
#include "state/record.h"

#include "base/crc32c.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <zstd.h>

const char *state_record_type_name(uint32_t type)
{
	switch (type) {
	case STATE_REC_CONFIG:
		return "CONFIG";
	case STATE_REC_SECTION:
		return "SECTION";
	case STATE_REC_PAGES:
		return "PAGES";
	case STATE_REC_END:
		return "END";
	default:
		return state_record_type_is_control(type) ? "CONTROL" : "UNKNOWN";
	}
}

bool state_record_type_is_control(uint32_t type)
{
	return type >= STATE_REC_CTRL_FIRST && type <= STATE_REC_CTRL_LAST;
}

/* ---- stream header ---- */

void state_header_encode(const struct state_header *h, uint8_t out[STATE_HEADER_SIZE])
{
	memcpy(out, STATE_MAGIC, STATE_MAGIC_LEN);
	le_put32(out + 8, h->version);
	le_put32(out + 12, h->page_size);
	le_put32(out + 16, h->kind);
	le_put32(out + 20, h->flags);
	le_put32(out + 24, 0);
	le_put32(out + 28, crc32c(0, out, 28));
}

int state_header_decode(const uint8_t *p, size_t len, struct state_header *h, struct errbuf *e)
{
	uint32_t stored, computed;

	if (len == 0 || memcmp(p, STATE_MAGIC, MIN(len, (size_t)STATE_MAGIC_LEN)) != 0)
		return err_set(e, -EBADMSG, "not a godwit state stream/snapshot (bad magic)");
	if (len < STATE_HEADER_SIZE)
		return err_set(e, -EPIPE, "stream header truncated (%zu of %u bytes)", len,
			       STATE_HEADER_SIZE);
	h->version = le_get32(p + 8);
	h->page_size = le_get32(p + 12);
	h->kind = le_get32(p + 16);
	h->flags = le_get32(p + 20);
	/* the version first: another version may lay out the rest of the header differently */
	if (h->version != STATE_FORMAT_VERSION)
		return err_set(e, -ENOTSUP,
			       "format version %" PRIu32 " is not supported by this build (reads %u)",
			       h->version, STATE_FORMAT_VERSION);
	stored = le_get32(p + 28);
	computed = crc32c(0, p, 28);
	if (stored != computed)
		return err_set(e, -EBADMSG,
			       "stream header: CRC mismatch (stored 0x%08" PRIx32
			       ", computed 0x%08" PRIx32 ")",
			       stored, computed);
	if (h->page_size != STATE_PAGE_SIZE)
		return err_set(e, -ENOTSUP,
			       "page size %" PRIu32 " is not supported (this build uses %u)",
			       h->page_size, STATE_PAGE_SIZE);
	if (h->kind != STATE_KIND_SNAPSHOT && h->kind != STATE_KIND_MIGRATION)
		return err_set(e, -EBADMSG, "stream header: unknown stream kind %" PRIu32, h->kind);
	if (h->flags)
		return err_set(e, -ENOTSUP,
			       "stream header: flags 0x%" PRIx32 " are not supported by this build",
			       h->flags);
	if (le_get32(p + 24))
		return err_set(e, -EBADMSG, "stream header: reserved field is not zero");
	return 0;
}

/* ---- names and strings ---- */

int state_name_check(const char *what, const char *s, struct errbuf *e)
{
	size_t n = strnlen(s, STATE_NAME_MAX + 1);

	if (n == 0)
		return err_set(e, -EINVAL, "%s is empty", what);
	if (n > STATE_NAME_MAX)
		return err_set(e, -EINVAL, "%s is longer than %u bytes", what, STATE_NAME_MAX);
	for (size_t i = 0; i < n; i++)
		if (s[i] < 0x21 || s[i] > 0x7e)
			return err_set(e, -EINVAL,
				       "%s has a byte 0x%02x at %zu that is not printable ASCII",
				       what, (unsigned char)s[i], i);
	return 0;
}

/* Copies a length-prefixed string out of r into out[max + 1]; refuses embedded NULs. */
static int get_string(struct buf_reader *r, const char *what, char *out, uint32_t max,
		      struct errbuf *e)
{
	uint32_t n;
	const char *p = buf_get_blob(r, max, &n);

	if (!p) {
		out[0] = '\0';
		return err_set(e, -EBADMSG, "%s: truncated or longer than %" PRIu32 " bytes", what,
			       max);
	}
	if (memchr(p, '\0', n))
		return err_set(e, -EBADMSG, "%s contains a NUL byte", what);
	memcpy(out, p, n);
	out[n] = '\0';
	return 0;
}

/* ---- CONFIG ---- */

/* At most STATE_PATH_MAX bytes, no control characters (may be empty). */
static int state_path_check(const char *what, const char *p, struct errbuf *e)
{
	size_t n = strnlen(p, STATE_PATH_MAX + 1);

	if (n > STATE_PATH_MAX)
		return err_set(e, -EINVAL, "%s is longer than %u bytes", what, STATE_PATH_MAX);
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)p[i] < 0x20 || p[i] == 0x7f)
			return err_set(e, -EINVAL, "%s has a control character 0x%02x", what,
				       (unsigned char)p[i]);
	return 0;
}

static int state_devices_validate(const struct state_config *c, struct errbuf *e)
{
	int ret;

	if (c->nr_devices > STATE_MAX_DEVICES)
		return err_set(e, -EINVAL, "config: %" PRIu32 " devices (at most %u)", c->nr_devices,
			       STATE_MAX_DEVICES);
	for (uint32_t i = 0; i < c->nr_devices; i++) {
		const struct state_device *d = &c->devices[i];

		ret = state_name_check("config: device type", d->type, e);
		if (ret == 0)
			ret = state_name_check("config: device id", d->id, e);
		if (ret == 0)
			ret = state_path_check("config: device backend", d->backend, e);
		if (ret)
			return ret;
		if (d->flags & ~STATE_DEV_F_READONLY)
			return err_set(e, -EINVAL, "config: device %s has unknown flags 0x%" PRIx32,
				       d->id, d->flags);
		for (uint32_t j = 0; j < i; j++)
			if (!strcmp(c->devices[j].id, d->id))
				return err_set(e, -EINVAL, "config: device id %s appears twice", d->id);
	}
	return 0;
}

int state_machine_name_check(const char *name, struct errbuf *e)
{
	size_t n = strlen(name);

	if (n > STATE_NAME_MAX)
		return err_set(e, -EINVAL, "machine name is longer than %u bytes", STATE_NAME_MAX);
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)name[i] < 0x20 || (unsigned char)name[i] > 0x7e)
			return err_set(e, -EINVAL, "machine name has a byte 0x%02x: only printable "
						   "ASCII (0x20..0x7e) is allowed",
				       (unsigned char)name[i]);
	return 0;
}

int state_config_validate(const struct state_config *c, struct errbuf *e)
{
	int ret;

	if (c->nr_vcpus < 1 || c->nr_vcpus > STATE_MAX_VCPUS)
		return err_set(e, -EINVAL, "config: %" PRIu32 " vCPUs (supported: 1..%u)",
			       c->nr_vcpus, STATE_MAX_VCPUS);
	if (c->nr_regions < 1 || c->nr_regions > STATE_MAX_REGIONS)
		return err_set(e, -EINVAL, "config: %" PRIu32 " memory regions (supported: 1..%u)",
			       c->nr_regions, STATE_MAX_REGIONS);
	for (uint32_t i = 0; i < c->nr_regions; i++) {
		const struct state_region *a = &c->regions[i];

		if (a->size == 0 || (a->gpa | a->size) & (STATE_PAGE_SIZE - 1))
			return err_set(e, -EINVAL,
				       "config: memory region %" PRIu32 " (gpa 0x%" PRIx64
				       ", size 0x%" PRIx64 ") is empty or not page-aligned",
				       i, a->gpa, a->size);
		if (a->gpa >= STATE_GPA_LIMIT || a->size > STATE_GPA_LIMIT - a->gpa)
			return err_set(e, -EINVAL,
				       "config: memory region %" PRIu32 " (gpa 0x%" PRIx64
				       ", size 0x%" PRIx64 ") ends beyond the 2^52 physical limit",
				       i, a->gpa, a->size);
		for (uint32_t j = 0; j < i; j++) {
			const struct state_region *b = &c->regions[j];

			if (a->gpa < b->gpa + b->size && b->gpa < a->gpa + a->size)
				return err_set(e, -EINVAL,
					       "config: memory region %" PRIu32 " (gpa 0x%" PRIx64
					       ", size 0x%" PRIx64 ") overlaps region %" PRIu32,
					       i, a->gpa, a->size, j);
		}
	}
	if (c->nr_cpuid > STATE_MAX_CPUID)
		return err_set(e, -EINVAL, "config: %" PRIu32 " CPUID entries (at most %u)",
			       c->nr_cpuid, STATE_MAX_CPUID);
	for (uint32_t i = 0; i < c->nr_cpuid; i++)
		for (uint32_t j = 0; j < i; j++)
			if (c->cpuid[i].function == c->cpuid[j].function &&
			    c->cpuid[i].index == c->cpuid[j].index)
				return err_set(e, -EINVAL,
					       "config: CPUID leaf 0x%" PRIx32 " index %" PRIu32
					       " appears twice",
					       c->cpuid[i].function, c->cpuid[i].index);
	if (c->nr_caps > STATE_MAX_CAPS)
		return err_set(e, -EINVAL, "config: %" PRIu32 " capabilities (at most %u)",
			       c->nr_caps, STATE_MAX_CAPS);
	for (uint32_t i = 0; i < c->nr_caps; i++)
		for (uint32_t j = 0; j < i; j++)
			if (c->caps[i] == c->caps[j])
				return err_set(e, -EINVAL,
					       "config: capability %" PRIu32 " appears twice",
					       c->caps[i]);
	if (strnlen(c->machine, sizeof(c->machine)) > STATE_NAME_MAX)
		return err_set(e, -EINVAL, "config: machine name is longer than %u bytes",
			       STATE_NAME_MAX);
	ret = state_machine_name_check(c->machine, e);
	if (ret)
		return err_prefix(e, ret, "config");
	if (c->xsave_size && (c->xsave_size < STATE_XSAVE_MIN || c->xsave_size > STATE_XSAVE_MAX ||
			      c->xsave_size % 4))
		return err_set(e, -EINVAL, "config: XSAVE size %" PRIu32 " (0, or %u to %u in "
					   "4-byte words)", c->xsave_size, STATE_XSAVE_MIN,
			       STATE_XSAVE_MAX);
	ret = state_path_check("config: kernel path", c->kernel, e);
	if (ret)
		return ret;
	return state_devices_validate(c, e);
}

int state_config_encode(const struct state_config *c, struct buf *out, struct errbuf *e)
{
	int ret = state_config_validate(c, e);

	if (ret)
		return ret;
	buf_put_u64(out, c->flags);
	buf_put_u32(out, c->nr_vcpus);
	buf_put_u32(out, c->nr_regions);
	for (uint32_t i = 0; i < c->nr_regions; i++) {
		buf_put_u64(out, c->regions[i].gpa);
		buf_put_u64(out, c->regions[i].size);
	}
	buf_put_u32(out, c->nr_cpuid);
	for (uint32_t i = 0; i < c->nr_cpuid; i++) {
		const struct state_cpuid_entry *x = &c->cpuid[i];

		buf_put_u32(out, x->function);
		buf_put_u32(out, x->index);
		buf_put_u32(out, x->flags);
		buf_put_u32(out, x->eax);
		buf_put_u32(out, x->ebx);
		buf_put_u32(out, x->ecx);
		buf_put_u32(out, x->edx);
	}
	buf_put_u32(out, c->nr_caps);
	for (uint32_t i = 0; i < c->nr_caps; i++)
		buf_put_u32(out, c->caps[i]);
	buf_put_blob(out, c->machine, (uint32_t)strlen(c->machine));
	buf_put_blob(out, c->kernel, (uint32_t)strlen(c->kernel));
	buf_put_u32(out, c->tsc_khz);
	buf_put_u32(out, c->xsave_size);
	buf_put_u32(out, c->nr_devices);
	for (uint32_t i = 0; i < c->nr_devices; i++) {
		const struct state_device *d = &c->devices[i];

		buf_put_blob(out, d->type, (uint32_t)strlen(d->type));
		buf_put_blob(out, d->id, (uint32_t)strlen(d->id));
		buf_put_blob(out, d->backend, (uint32_t)strlen(d->backend));
		buf_put_u64(out, d->size);
		buf_put_u32(out, d->flags);
	}
	if (buf_status(out))
		return err_set(e, -ENOMEM, "config: out of memory encoding");
	return 0;
}

int state_config_decode(const void *p, size_t len, struct state_config *c, struct errbuf *e)
{
	struct buf_reader r;
	int ret;

	memset(c, 0, sizeof(*c));
	buf_reader_init(&r, p, len);
	c->flags = buf_get_u64(&r);
	c->nr_vcpus = buf_get_u32(&r);
	c->nr_regions = buf_get_u32(&r);
	if (c->nr_regions > STATE_MAX_REGIONS)
		return err_set(e, -EBADMSG, "config: %" PRIu32 " memory regions (supported: 1..%u)",
			       c->nr_regions, STATE_MAX_REGIONS);
	for (uint32_t i = 0; i < c->nr_regions; i++) {
		c->regions[i].gpa = buf_get_u64(&r);
		c->regions[i].size = buf_get_u64(&r);
	}
	c->nr_cpuid = buf_get_u32(&r);
	if (c->nr_cpuid > STATE_MAX_CPUID)
		return err_set(e, -EBADMSG, "config: %" PRIu32 " CPUID entries (at most %u)",
			       c->nr_cpuid, STATE_MAX_CPUID);
	for (uint32_t i = 0; i < c->nr_cpuid; i++) {
		struct state_cpuid_entry *x = &c->cpuid[i];

		x->function = buf_get_u32(&r);
		x->index = buf_get_u32(&r);
		x->flags = buf_get_u32(&r);
		x->eax = buf_get_u32(&r);
		x->ebx = buf_get_u32(&r);
		x->ecx = buf_get_u32(&r);
		x->edx = buf_get_u32(&r);
	}
	c->nr_caps = buf_get_u32(&r);
	if (c->nr_caps > STATE_MAX_CAPS)
		return err_set(e, -EBADMSG, "config: %" PRIu32 " capabilities (at most %u)",
			       c->nr_caps, STATE_MAX_CAPS);
	for (uint32_t i = 0; i < c->nr_caps; i++)
		c->caps[i] = buf_get_u32(&r);
	if (!buf_reader_ok(&r))
		return err_set(e, -EBADMSG, "config: payload truncated (%zu bytes)", len);
	ret = get_string(&r, "config: machine name", c->machine, STATE_NAME_MAX, e);
	if (ret)
		return ret;
	ret = get_string(&r, "config: kernel path", c->kernel, STATE_PATH_MAX, e);
	if (ret)
		return ret;
	c->tsc_khz = buf_get_u32(&r);
	c->xsave_size = buf_get_u32(&r);
	c->nr_devices = buf_get_u32(&r);
	if (!buf_reader_ok(&r))
		return err_set(e, -EBADMSG, "config: payload truncated (%zu bytes)", len);
	if (c->nr_devices > STATE_MAX_DEVICES)
		return err_set(e, -EBADMSG, "config: %" PRIu32 " devices (at most %u)",
			       c->nr_devices, STATE_MAX_DEVICES);
	for (uint32_t i = 0; i < c->nr_devices; i++) {
		struct state_device *d = &c->devices[i];

		ret = get_string(&r, "config: device type", d->type, STATE_NAME_MAX, e);
		if (ret == 0)
			ret = get_string(&r, "config: device id", d->id, STATE_NAME_MAX, e);
		if (ret == 0)
			ret = get_string(&r, "config: device backend", d->backend, STATE_PATH_MAX, e);
		if (ret)
			return ret;
		d->size = buf_get_u64(&r);
		d->flags = buf_get_u32(&r);
		if (!buf_reader_ok(&r))
			return err_set(e, -EBADMSG, "config: device %" PRIu32 " truncated", i);
	}
	if (!buf_reader_done(&r))
		return err_set(e, -EBADMSG, "config: %zu unexpected bytes after the payload",
			       buf_reader_left(&r));
	ret = state_config_validate(c, e);
	return ret == -EINVAL ? -EBADMSG : ret;
}

uint64_t state_config_mem_size(const struct state_config *c)
{
	uint64_t total = 0;

	for (uint32_t i = 0; i < c->nr_regions && i < STATE_MAX_REGIONS; i++)
		total += c->regions[i].size;
	return total;
}

int state_config_region_find(const struct state_config *c, uint64_t gpa, uint64_t len)
{
	for (uint32_t i = 0; i < c->nr_regions && i < STATE_MAX_REGIONS; i++) {
		const struct state_region *x = &c->regions[i];

		if (gpa >= x->gpa && gpa - x->gpa <= x->size && len <= x->size - (gpa - x->gpa))
			return (int)i;
	}
	return -1;
}

/* ---- SECTION ---- */

int state_section_encode(struct buf *out, const char *name, const char *instance,
			 uint32_t version, const void *data, size_t len, struct errbuf *e)
{
	int ret = state_name_check("section name", name, e);

	if (ret)
		return ret;
	ret = state_name_check("section instance", instance, e);
	if (ret)
		return err_prefix(e, ret, "section %s", name);
	if (len > STATE_RECORD_MAX - 4 - 2 * (4 + STATE_NAME_MAX) - 4)
		return err_set(e, -EFBIG, "section %s@%s: %zu bytes is too large", name, instance,
			       len);
	buf_put_blob(out, name, (uint32_t)strlen(name));
	buf_put_blob(out, instance, (uint32_t)strlen(instance));
	buf_put_u32(out, version);
	buf_put_blob(out, data, (uint32_t)len);
	if (buf_status(out))
		return err_set(e, -ENOMEM, "section %s@%s: out of memory encoding", name, instance);
	return 0;
}

int state_section_decode(const void *p, size_t len, struct state_section *s, struct errbuf *e)
{
	struct buf_reader r;
	int ret;

	memset(s, 0, sizeof(*s));
	buf_reader_init(&r, p, len);
	ret = get_string(&r, "section name", s->name, STATE_NAME_MAX, e);
	if (ret)
		return ret;
	ret = state_name_check("section name", s->name, e);
	if (ret)
		return -EBADMSG;
	ret = get_string(&r, "section instance", s->instance, STATE_NAME_MAX, e);
	if (ret)
		return err_prefix(e, ret, "section %s", s->name);
	ret = state_name_check("section instance", s->instance, e);
	if (ret)
		return err_prefix(e, -EBADMSG, "section %s", s->name);
	s->version = buf_get_u32(&r);
	s->data = buf_get_blob(&r, UINT32_MAX, &s->len);
	if (!buf_reader_ok(&r))
		return err_set(e, -EBADMSG, "section %s@%s: data truncated", s->name, s->instance);
	if (!s->data)
		s->data = (const uint8_t *)p + len; /* empty data: a valid, non-NULL pointer */
	if (!buf_reader_done(&r))
		return err_set(e, -EBADMSG, "section %s@%s: %zu unexpected bytes after the data",
			       s->name, s->instance, buf_reader_left(&r));
	return 0;
}

/* ---- PAGES ---- */

#define PAGES_HDR 8u
#define PAGES_DESC 12u
#define PAGES_DESC_DELTA 16u

/* One descriptor: its flags, and the data length they (or, in a delta batch, it) give. */
static int pages_desc_check(const uint8_t *d, uint32_t i, bool delta_batch, uint32_t *dlen,
			    struct errbuf *e)
{
	uint64_t gpa = le_get64(d);
	uint32_t pflags = le_get32(d + 8), len;
	uint32_t known = STATE_PAGE_F_ZERO | (delta_batch ? STATE_PAGE_F_DELTA : 0);

	if (gpa & (STATE_PAGE_SIZE - 1) || gpa >= STATE_GPA_LIMIT)
		return err_set(e, -EBADMSG,
			       "pages: page %" PRIu32 " has gpa 0x%" PRIx64
			       ", not page-aligned or beyond 2^52",
			       i, gpa);
	if (pflags & ~known || pflags == (STATE_PAGE_F_ZERO | STATE_PAGE_F_DELTA))
		return err_set(e, -EBADMSG,
			       "pages: page %" PRIu32 " (gpa 0x%" PRIx64
			       ") has unknown flags 0x%" PRIx32,
			       i, gpa, pflags);
	len = pflags & STATE_PAGE_F_ZERO ? 0 : STATE_PAGE_SIZE;
	if (delta_batch) {
		uint32_t got = le_get32(d + 12);

		if (pflags & STATE_PAGE_F_DELTA ? got >= STATE_PAGE_SIZE : got != len)
			return err_set(e, -EBADMSG,
				       "pages: page %" PRIu32 " (gpa 0x%" PRIx64 ") has %" PRIu32
				       " data bytes (%s)",
				       i, gpa, got,
				       pflags & STATE_PAGE_F_DELTA ? "a delta must be under a page" :
				       pflags & STATE_PAGE_F_ZERO ? "a zero page has none" :
								    "a whole page has 4096");
		len = got;
	}
	*dlen = len;
	return 0;
}

int state_pages_decode(const void *p, size_t len, struct state_pages_iter *it, struct errbuf *e)
{
	const uint8_t *b = p;
	uint32_t count, flags, nr_data = 0, nr_delta = 0;
	size_t desc_end, desc_size, data_len = 0;
	bool delta;

	memset(it, 0, sizeof(*it));
	if (len < PAGES_HDR)
		return err_set(e, -EBADMSG, "pages: payload truncated (%zu bytes)", len);
	count = le_get32(b);
	flags = le_get32(b + 4);
	if (count < 1 || count > STATE_PAGES_MAX)
		return err_set(e, -EBADMSG, "pages: batch of %" PRIu32 " pages (allowed: 1..%u)",
			       count, STATE_PAGES_MAX);
	if (flags & ~(STATE_PAGES_F_ZSTD | STATE_PAGES_F_DELTA))
		return err_set(e, -EBADMSG, "pages: unknown batch flags 0x%" PRIx32, flags);
	delta = flags & STATE_PAGES_F_DELTA;
	desc_size = delta ? PAGES_DESC_DELTA : PAGES_DESC;
	desc_end = PAGES_HDR + (size_t)count * desc_size;
	if (len < desc_end)
		return err_set(e, -EBADMSG, "pages: %zu bytes cannot hold %" PRIu32 " descriptors",
			       len, count);
	for (uint32_t i = 0; i < count; i++) {
		const uint8_t *d = b + PAGES_HDR + (size_t)i * desc_size;
		uint32_t dlen = 0;
		int ret = pages_desc_check(d, i, delta, &dlen, e);

		if (ret < 0)
			return ret;
		if (!(le_get32(d + 8) & STATE_PAGE_F_ZERO))
			nr_data++;
		if (le_get32(d + 8) & STATE_PAGE_F_DELTA)
			nr_delta++;
		data_len += dlen;
	}
	if (flags & STATE_PAGES_F_ZSTD) {
		/* a writer only compresses what shrinks: anything else is not ours to inflate */
		if (!data_len || len - desc_end == 0 || len - desc_end >= data_len)
			return err_set(e, -EBADMSG,
				       "pages: compressed data of %zu bytes for %" PRIu32
				       " non-zero pages (must be 1 to %zu)",
				       len - desc_end, nr_data, data_len ? data_len - 1 : 0);
		it->zdata = b + desc_end;
		it->zlen = len - desc_end;
	} else if (len - desc_end != data_len) {
		return err_set(e, -EBADMSG,
			       "pages: %zu data bytes for %" PRIu32 " non-zero pages (expected %zu)",
			       len - desc_end, nr_data, data_len);
	} else {
		it->data = b + desc_end;
	}
	it->desc = b + PAGES_HDR;
	it->desc_size = desc_size;
	it->count = count;
	it->nr_data = nr_data;
	it->nr_delta = nr_delta;
	it->data_len = data_len;
	return 0;
}

bool state_pages_next(struct state_pages_iter *it, struct state_page *pg)
{
	const uint8_t *d;
	uint32_t pflags;

	if (it->pos >= it->count || (it->zdata && !it->data))
		return false;
	d = it->desc + (size_t)it->pos * it->desc_size;
	pflags = le_get32(d + 8);
	*pg = (struct state_page){ .gpa = le_get64(d) };
	if (pflags & STATE_PAGE_F_DELTA) {
		pg->delta = true;
		pg->delta_len = le_get32(d + 12);
		pg->data = it->data + it->data_off;
		it->data_off += pg->delta_len;
	} else if (!(pflags & STATE_PAGE_F_ZERO)) {
		pg->data = it->data + it->data_off;
		it->data_off += STATE_PAGE_SIZE;
	}
	it->pos++;
	return true;
}

struct state_inflater {
	ZSTD_DCtx *dctx;
	uint8_t *buf; /* STATE_PAGES_MAX pages, the most a batch can carry */
};

int state_inflater_new(struct state_inflater **zp, struct errbuf *e)
{
	struct state_inflater *z = calloc(1, sizeof(*z));

	*zp = NULL;
	if (z) {
		z->dctx = ZSTD_createDCtx();
		z->buf = malloc((size_t)STATE_PAGES_MAX * STATE_PAGE_SIZE);
	}
	if (!z || !z->dctx || !z->buf) {
		state_inflater_free(z);
		return err_set(e, -ENOMEM, "pages: out of memory for decompression");
	}
	*zp = z;
	return 0;
}

void state_inflater_free(struct state_inflater *z)
{
	if (!z)
		return;
	ZSTD_freeDCtx(z->dctx);
	free(z->buf);
	free(z);
}

int state_pages_inflate(struct state_pages_iter *it, struct state_inflater *z, struct errbuf *e)
{
	size_t want = it->data_len, got;
	unsigned long long declared;

	if (!it->zdata)
		return 0;
	/* one frame, covering the data exactly: no trailing bytes, no second frame */
	got = ZSTD_findFrameCompressedSize(it->zdata, it->zlen);
	if (ZSTD_isError(got) || got != it->zlen)
		return err_set(e, -EBADMSG, "pages: compressed data is not one zstd frame of %zu bytes",
			       it->zlen);
	declared = ZSTD_getFrameContentSize(it->zdata, it->zlen);
	if (declared != ZSTD_CONTENTSIZE_UNKNOWN && declared != want)
		return err_set(e, -EBADMSG,
			       "pages: zstd frame declares %llu bytes for %" PRIu32
			       " non-zero pages (expected %zu)",
			       declared, it->nr_data, want);
	/* the output bound is the batch's own size: a hostile frame can never write more */
	got = ZSTD_decompressDCtx(z->dctx, z->buf, want, it->zdata, it->zlen);
	if (ZSTD_isError(got))
		return err_set(e, -EBADMSG, "pages: bad zstd frame: %s", ZSTD_getErrorName(got));
	if (got != want)
		return err_set(e, -EBADMSG,
			       "pages: zstd frame yields %zu bytes for %" PRIu32
			       " non-zero pages (expected %zu)",
			       got, it->nr_data, want);
	it->data = z->buf;
	return 0;
}

int state_pages_inflate_lazy(struct state_pages_iter *it, struct state_inflater **zp,
			     struct errbuf *e)
{
	int ret = 0;

	if (it->zdata && !*zp)
		ret = state_inflater_new(zp, e);
	return ret ? ret : state_pages_inflate(it, *zp, e);
}

/* ---- END ---- */

int state_end_decode(const void *p, size_t len, uint64_t *nr_records, struct errbuf *e)
{
	if (len != 8)
		return err_set(e, -EBADMSG, "end: payload is %zu bytes (expected 8)", len);
	*nr_records = le_get64(p);
	return 0;
}
