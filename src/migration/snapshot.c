/* SPDX-License-Identifier: MIT */
/* Snapshot save and restore: the glue between the VM (vmm/) and the snapshot files (state/). */
#include "migration/snapshot.h"
#include "base/log.h"
#include "state/snapshot.h"
#include "vmm/memory.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

void vm_state_config_build(struct vm *vm, struct state_config *cfg)
{
	struct device_spec specs[DEV_MAX];
	struct vm_machine m;
	struct vm_status st;

	vm_machine_get(vm, &m);
	vm_status_get(vm, &st);
	memset(cfg, 0, sizeof(*cfg));
	cfg->nr_vcpus = m.nvcpus;
	cfg->nr_regions = m.nregions;
	for (unsigned i = 0; i < m.nregions; i++) {
		cfg->regions[i].gpa = m.regions[i].gpa;
		cfg->regions[i].size = m.regions[i].size;
	}
	cfg->nr_cpuid = MIN(m.cpuid->nent, STATE_MAX_CPUID);
	for (uint32_t i = 0; i < cfg->nr_cpuid; i++) {
		const struct kvm_cpuid_entry2 *c = &m.cpuid->entries[i];

		cfg->cpuid[i] = (struct state_cpuid_entry){ c->function, c->index, c->flags,
							    c->eax, c->ebx, c->ecx, c->edx };
	}
	snprintf(cfg->machine, sizeof(cfg->machine), "%s", st.name);
	cfg->tsc_khz = m.tsc_khz;
	cfg->xsave_size = m.xsave_size;
	cfg->nr_devices = vm_device_specs(vm, specs, ARRAY_SIZE(specs));
	for (unsigned i = 0; i < cfg->nr_devices; i++) {
		struct state_device *d = &cfg->devices[i];

		/* each field is at least as large as the spec's */
		memcpy(d->type, specs[i].type, sizeof(specs[i].type));
		memcpy(d->id, specs[i].id, sizeof(specs[i].id));
		memcpy(d->backend, specs[i].path, sizeof(specs[i].path));
		d->size = specs[i].size;
		d->flags = specs[i].readonly ? STATE_DEV_F_READONLY : 0;
	}
}

int vm_state_config_devices(const struct state_config *cfg, const struct device_override *ov,
			    unsigned nov, struct device_spec *out, unsigned *n, struct errbuf *e)
{
	for (unsigned k = 0; k < nov; k++) {
		bool found = false;

		const char *opt = ov[k].type && !strcmp(ov[k].type, "virtio-net") ?
					  "--net-override" : "--disk-override";

		for (uint32_t i = 0; i < cfg->nr_devices; i++) {
			if (strcmp(cfg->devices[i].id, ov[k].id))
				continue;
			if (ov[k].type && strcmp(cfg->devices[i].type, ov[k].type))
				return err_set(e, -EINVAL, "%s id=%s: the guest's %s is a %s", opt,
					       ov[k].id, ov[k].id, cfg->devices[i].type);
			found = true;
		}
		if (!found)
			return err_set(e, -ENOENT, "%s id=%s: the guest has no device %s", opt,
				       ov[k].id, ov[k].id);
	}
	if (cfg->nr_devices > DEV_MAX)
		return err_set(e, -EINVAL, "the guest has %u devices, this build builds at most %u",
			       cfg->nr_devices, DEV_MAX);
	for (uint32_t i = 0; i < cfg->nr_devices; i++) {
		const struct state_device *d = &cfg->devices[i];
		struct device_spec *sp = &out[i];
		const char *path = d->backend;
		enum dev_aio aio = DEV_AIO_DEFAULT;

		for (unsigned k = 0; k < nov; k++) {
			if (strcmp(ov[k].id, d->id))
				continue;
			path = ov[k].path ? ov[k].path : path;
			aio = ov[k].aio;
		}
		if (strlen(d->type) > DEV_TYPE_MAX || !device_id_valid(d->id) ||
		    strlen(path) > DEV_PATH_MAX)
			return err_set(e, -EINVAL, "device %s (%s) is not one this build can name",
				       d->id, d->type);
		memset(sp, 0, sizeof(*sp));
		memcpy(sp->type, d->type, strlen(d->type));
		memcpy(sp->id, d->id, strlen(d->id));
		memcpy(sp->path, path, strlen(path));
		sp->readonly = d->flags & STATE_DEV_F_READONLY;
		sp->size = d->size;
		sp->aio = aio;
	}
	*n = cfg->nr_devices;
	return 0;
}

struct kvm_cpuid2 *vm_state_config_cpuid(const struct state_config *cfg)
{
	struct kvm_cpuid2 *c = calloc(1, sizeof(*c) + cfg->nr_cpuid * sizeof(c->entries[0]));

	if (!c)
		return NULL;
	c->nent = cfg->nr_cpuid;
	for (uint32_t i = 0; i < cfg->nr_cpuid; i++) {
		const struct state_cpuid_entry *s = &cfg->cpuid[i];

		c->entries[i] = (struct kvm_cpuid_entry2){ .function = s->function, .index = s->index,
							   .flags = s->flags, .eax = s->eax,
							   .ebx = s->ebx, .ecx = s->ecx,
							   .edx = s->edx };
	}
	return c;
}

int vm_state_config_layout_check(const struct state_config *cfg, struct vm *vm, struct errbuf *e)
{
	struct vm_machine m;

	vm_machine_get(vm, &m);
	if (m.nregions != cfg->nr_regions)
		goto bad;
	for (unsigned i = 0; i < m.nregions; i++)
		if (m.regions[i].gpa != cfg->regions[i].gpa ||
		    m.regions[i].size != cfg->regions[i].size)
			goto bad;
	return 0;
bad:
	return err_set(e, -EINVAL, "memory layout of the saved guest (%u regions, %llu MiB) is not "
				   "one this build creates", cfg->nr_regions,
		       (unsigned long long)(state_config_mem_size(cfg) / MiB));
}

static int vm_snapshot_section(void *opaque, const struct vm_section *s, struct errbuf *e)
{
	return snapshot_writer_section(opaque, s->name, s->instance, s->version, s->data, s->len,
				       e);
}

/*
 * Writes a region's memory, skipping 2 MiB ranges the guest never touched; touched ranges
 * next to each other go to the writer together, so that its runs (and direct writes) may
 * be longer than one range.
 */
static int vm_snapshot_region(struct snapshot_writer *w, struct guest_mem *mem,
			      const struct guest_mem_region *r, struct errbuf *e)
{
	const uint64_t chunk = 2 * MiB, span_max = 64 * MiB;
	uint64_t start = 0, span = 0;
	int ret;

	for (uint64_t off = 0; off < r->size; off += chunk) {
		uint64_t len = MIN(chunk, r->size - off);
		bool touched = guest_mem_range_touched(mem, r->host + off, len);

		if (touched && span < span_max) {
			if (!span)
				start = off;
			span += len;
			continue;
		}
		if (span) {
			ret = snapshot_writer_memory(w, r->gpa + start, r->host + start, span, e);
			if (ret < 0)
				return ret;
		}
		start = off;
		span = touched ? len : 0;
	}
	if (!span)
		return 0;
	return snapshot_writer_memory(w, r->gpa + start, r->host + start, span, e);
}

/*
 * Where a snapshot's time went, for an operator comparing it with the disk: the memory
 * phase's rate is the one to hold against the disk's own (docs/benchmarks.md), and its wait
 * says whether the disk or the zero checks and CRCs were the bound.
 */
static void vm_snapshot_log(const char *dir, const struct snapshot_stats *ss, uint64_t t0,
			    uint64_t t_state, uint64_t t_mem, uint64_t t_flush, uint64_t t_end)
{
	double mem_ms = (double)(t_mem - t_state) / 1e6;
	double mib = (double)(ss->pages_present * GUEST_PAGE_SIZE) / (double)MiB;

	log_info("snapshot %s: %.0f MiB of memory written in %.1f ms (%.0f MiB/s; %.1f ms of it "
		 "waiting for the writes), state %.1f ms, disks flushed in %.1f ms, synced and "
		 "renamed in %.1f ms",
		 dir, mib, mem_ms, mem_ms > 0 ? mib * 1000 / mem_ms : 0.0,
		 (double)ss->write_wait_ns / 1e6, (double)(t_state - t0) / 1e6,
		 (double)(t_flush - t_mem) / 1e6, (double)(t_end - t_flush) / 1e6);
}

int vm_snapshot_save(struct vm *vm, const char *dir, struct vm_snapshot_stats *st,
		     void (*captured)(void *opaque), void *opaque, struct errbuf *e)
{
	struct guest_mem *mem = vm_memory(vm);
	struct snapshot_writer *w = NULL;
	struct snapshot_stats ss;
	struct state_config *cfg;
	uint64_t t0 = time_mono_ns(), t_state = 0, t_mem = 0, t_flush = 0;
	int ret;

	cfg = calloc(1, sizeof(*cfg));
	if (!cfg)
		return err_set(e, -ENOMEM, "out of memory");
	vm_state_config_build(vm, cfg);
	ret = snapshot_writer_begin(dir, &w, e);
	if (ret < 0)
		goto out;
	ret = snapshot_writer_config(w, cfg, e);
	if (ret < 0)
		goto err;
	ret = vm_sections_save(vm, false, vm_snapshot_section, w, e);
	if (ret < 0)
		goto err;
	t_state = time_mono_ns();
	for (unsigned i = 0; i < mem->nregions; i++) {
		ret = vm_snapshot_region(w, mem, &mem->regions[i], e);
		if (ret < 0)
			goto err;
	}
	/* the memory writes read guest memory until they are done */
	ret = snapshot_writer_memory_done(w, e);
	if (ret < 0)
		goto err;
	t_mem = time_mono_ns();
	/* the disks as the snapshot's guest left them, durable before the guest may go on */
	ret = vm_devices_flush(vm, e);
	if (ret < 0)
		goto err;
	t_flush = time_mono_ns();
	snapshot_writer_stats(w, &ss);
	if (captured)
		captured(opaque);
	ret = snapshot_writer_commit(w, e);
	w = NULL;
	if (ret < 0)
		goto out;
	vm_snapshot_log(dir, &ss, t0, t_state, t_mem, t_flush, time_mono_ns());
	if (st) {
		st->pages_present = ss.pages_present;
		st->pages_zero = ss.pages_total - ss.pages_present;
		st->bytes = ss.pages_present * GUEST_PAGE_SIZE;
		st->elapsed_ns = time_mono_ns() - t0;
	}
	goto out;
err:
	snapshot_writer_abort(w);
out:
	free(cfg);
	return ret;
}

static int vm_restore_memory(struct vm *vm, struct snapshot_reader *r, bool eager,
			     struct errbuf *e)
{
	const struct snapshot_memory *sm = snapshot_memory(r);
	struct guest_mem *mem = vm_memory(vm);
	uint64_t t0 = time_mono_ns();
	int ret;

	for (uint32_t i = 0; i < sm->nr_regions; i++) {
		struct guest_mem_region *reg = &mem->regions[i];

		if (eager) {
			ret = snapshot_memory_load(r, i, reg->host, e);
		} else {
			ret = guest_mem_map_region_file(mem, i, snapshot_memory_fd(r),
							sm->regions[i].file_offset, e);
		}
		if (ret < 0)
			return ret;
	}
	if (eager) {
		struct snapshot_load_stats ls;

		snapshot_load_stats(r, &ls);
		log_info("restore: %llu MiB of memory read and checked in %.1f ms (%llu MiB from "
			 "the page cache, %llu MiB from the file; %llu MiB populated in huge pages)",
			 (unsigned long long)(sm->pages_present * GUEST_PAGE_SIZE / MiB),
			 (double)(time_mono_ns() - t0) / 1e6,
			 (unsigned long long)(ls.cached_bytes / MiB),
			 (unsigned long long)(ls.direct_bytes / MiB),
			 (unsigned long long)(ls.huge_bytes / MiB));
	}
	return 0;
}

int vm_snapshot_restore(struct vm **out, struct evloop *loop, const char *dir,
			const struct vm_restore_opts *o, struct errbuf *e)
{
	struct vm_restore_config rc = { 0 };
	struct snapshot_reader *r = NULL;
	const struct state_config *cfg;
	struct vm_section *secs = NULL;
	struct kvm_cpuid2 *cpuid = NULL;
	struct device_spec *specs = NULL;
	struct vm *vm = NULL;
	size_t n;
	int ret;

	ret = snapshot_open(dir, &r, e);
	if (ret < 0)
		return ret;
	cfg = snapshot_config(r);
	cpuid = vm_state_config_cpuid(cfg);
	n = snapshot_section_count(r);
	secs = calloc(n ? n : 1, sizeof(*secs));
	specs = calloc(STATE_MAX_DEVICES, sizeof(*specs));
	if (!cpuid || !secs || !specs) {
		ret = err_set(e, -ENOMEM, "out of memory");
		goto out;
	}
	ret = vm_state_config_devices(cfg, o->overrides, o->noverrides, specs, &rc.ndevices, e);
	if (ret < 0)
		goto out;
	rc.devices = specs;
	snprintf(rc.name, sizeof(rc.name), "%s", o->name ? o->name : cfg->machine);
	rc.nvcpus = cfg->nr_vcpus;
	rc.memory = state_config_mem_size(cfg);
	rc.cpuid = cpuid;
	rc.tsc_khz = cfg->tsc_khz;
	rc.xsave_size = cfg->xsave_size;
	rc.serial = o->serial;
	rc.serial_path = o->serial_path;
	rc.kvm_path = o->kvm_path;
	rc.dirty = o->dirty;
	ret = vm_create_restore(&vm, loop, &rc, e);
	if (ret < 0)
		goto out;
	ret = vm_state_config_layout_check(cfg, vm, e);
	if (ret < 0)
		goto out;
	ret = vm_restore_memory(vm, r, o->eager, e);
	if (ret < 0)
		goto out;
	for (size_t i = 0; i < n; i++) {
		const struct state_section *s = snapshot_section(r, i);

		secs[i] = (struct vm_section){ s->name, s->instance, s->version, s->data, s->len };
	}
	ret = vm_sections_load(vm, secs, n, e);
	if (ret < 0)
		goto out;
	*out = vm;
	vm = NULL;
out:
	if (vm)
		vm_destroy(vm);
	free(secs);
	free(specs);
	free(cpuid);
	snapshot_close(r);
	return ret;
}
