/* SPDX-License-Identifier: MIT */
/*
 * The VM's state as sections: save (for snapshots, migration and digests), load with
 * every section validated before any is applied, and the CPUID compatibility check a
 * receiver makes before it accepts a guest.
 *
 * Sections and their order:
 *   pic@master, pic@slave, ioapic@kvm, pit@kvm, kvmclock@kvm   (VM-wide, in-kernel)
 *   vcpu@0 .. vcpu@N-1                                        (taken on each vCPU's thread)
 *   one per registered device, e.g. serial8250@io:3f8
 */
#include "arch/x86/vcpu_state.h"
#include "arch/x86/vm_state.h"
#include "base/crc32c.h"
#include "base/log.h"
#include "vmm/vm_impl.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const struct {
	const char *name;
	const char *instance;
	uint32_t chip;
} vm_irqchips[] = {
	{ "pic", "master", KVM_IRQCHIP_PIC_MASTER },
	{ "pic", "slave", KVM_IRQCHIP_PIC_SLAVE },
	{ "ioapic", "kvm", KVM_IRQCHIP_IOAPIC },
};

static int vm_section_emit(vm_section_cb *cb, void *opaque, const char *name,
			   const char *instance, uint32_t version, struct buf *b, struct errbuf *e)
{
	struct vm_section s = { name, instance, version, b->data, b->len };
	int ret = buf_status(b);

	if (ret < 0)
		return err_set(e, ret, "out of memory saving %s@%s", name, instance);
	ret = cb(opaque, &s, e);
	buf_reset(b);
	return ret;
}

struct vm_vcpu_save_arg {
	bool digest;
	struct buf *out;
	struct errbuf *e;
};

static int vm_vcpu_save(struct vcpu *v, void *arg)
{
	struct vm_vcpu_save_arg *a = arg;
	struct vcpu_state st;
	int ret;

	memset(&st, 0, sizeof(st));
	ret = vcpu_state_get(v->fd, v->vm->msr_indices, v->vm->nmsrs, v->vm->xsave_size, &st,
			     a->e);
	if (ret < 0) {
		err_prefix(a->e, ret, "vCPU %u", v->index);
		vcpu_state_free(&st);
		return ret;
	}
	ret = a->digest ? vcpu_state_encode_digest(&st, a->out) : vcpu_state_encode(&st, a->out);
	vcpu_state_free(&st);
	if (ret < 0)
		return err_set(a->e, ret, "vCPU %u: encoding state: %s", v->index, strerror(-ret));
	return 0;
}

int vm_sections_save(struct vm *vm, bool digest, vm_section_cb *cb, void *opaque,
		     struct errbuf *e)
{
	struct buf b;
	int ret = 0;

	if (vm->state == VM_STATE_RUNNING)
		return err_set(e, -EBUSY, "the VM must be paused to save its state");
	buf_init(&b);
	for (size_t i = 0; i < ARRAY_SIZE(vm_irqchips); i++) {
		ret = digest ? vm_state_irqchip_digest(vm->fd, vm_irqchips[i].chip, &b, e) :
			       vm_state_irqchip_get(vm->fd, vm_irqchips[i].chip, &b, e);
		if (ret < 0)
			goto out;
		ret = vm_section_emit(cb, opaque, vm_irqchips[i].name, vm_irqchips[i].instance,
				      VM_STATE_IRQCHIP_VERSION, &b, e);
		if (ret < 0)
			goto out;
	}
	ret = digest ? vm_state_pit_digest(vm->fd, &b, e) : vm_state_pit_get(vm->fd, &b, e);
	if (ret < 0)
		goto out;
	ret = vm_section_emit(cb, opaque, "pit", "kvm", VM_STATE_PIT_VERSION, &b, e);
	if (ret < 0)
		goto out;
	ret = digest ? vm_state_clock_digest(vm->fd, &b, e) : vm_state_clock_get(vm->fd, &b, e);
	if (ret < 0)
		goto out;
	ret = vm_section_emit(cb, opaque, "kvmclock", "kvm", VM_STATE_CLOCK_VERSION, &b, e);
	if (ret < 0)
		goto out;
	for (unsigned i = 0; i < vm->nvcpus; i++) {
		struct vm_vcpu_save_arg a = { digest, &b, e };
		char inst[16];

		ret = vcpu_call(&vm->vcpus[i], vm_vcpu_save, &a);
		if (ret < 0) {
			if (ret == -EBUSY)
				err_set(e, ret, "vCPU %u is not paused", i);
			goto out;
		}
		snprintf(inst, sizeof(inst), "%u", i);
		ret = vm_section_emit(cb, opaque, "vcpu", inst, VCPU_STATE_VERSION, &b, e);
		if (ret < 0)
			goto out;
	}
	for (unsigned i = 0; i < vm->ndevices; i++) {
		struct vm_device_entry *d = &vm->devices[i];

		ret = d->ops->save(d->opaque, &b);
		if (ret < 0) {
			err_set(e, ret, "saving %s@%s: %s", d->ops->name, d->instance, strerror(-ret));
			goto out;
		}
		ret = vm_section_emit(cb, opaque, d->ops->name, d->instance, d->ops->version, &b, e);
		if (ret < 0)
			goto out;
	}
out:
	buf_free(&b);
	return ret;
}

/* ---- load ---- */

struct vm_load_plan {
	const struct vm_section *irqchip[ARRAY_SIZE(vm_irqchips)];
	const struct vm_section *pit, *clock;
	const struct vm_section *devices[16];
	struct vcpu_state vcpus[VM_MAX_VCPUS];
	bool vcpu_seen[VM_MAX_VCPUS];
};

static int vm_section_dup(const struct vm_section **slot, const struct vm_section *s,
			  struct errbuf *e)
{
	if (*slot)
		return err_set(e, -EINVAL, "section %s@%s appears twice", s->name, s->instance);
	*slot = s;
	return 0;
}

static int vm_section_classify(struct vm *vm, struct vm_load_plan *p, const struct vm_section *s,
			       struct errbuf *e)
{
	struct kvm_irqchip chip;
	struct kvm_pit_state2 pit;
	struct kvm_clock_data clk;
	int ret;

	for (size_t i = 0; i < ARRAY_SIZE(vm_irqchips); i++) {
		if (strcmp(s->name, vm_irqchips[i].name) || strcmp(s->instance, vm_irqchips[i].instance))
			continue;
		ret = vm_state_irqchip_decode(vm_irqchips[i].chip, s->data, s->len, s->version, &chip,
					      e);
		if (ret < 0)
			return ret;
		return vm_section_dup(&p->irqchip[i], s, e);
	}
	if (!strcmp(s->name, "pit") && !strcmp(s->instance, "kvm")) {
		ret = vm_state_pit_decode(s->data, s->len, s->version, &pit, e);
		return ret < 0 ? ret : vm_section_dup(&p->pit, s, e);
	}
	if (!strcmp(s->name, "kvmclock") && !strcmp(s->instance, "kvm")) {
		ret = vm_state_clock_decode(s->data, s->len, s->version, &clk, e);
		return ret < 0 ? ret : vm_section_dup(&p->clock, s, e);
	}
	if (!strcmp(s->name, "vcpu")) {
		uint64_t idx;

		if (parse_u64(s->instance, 0, VM_MAX_VCPUS - 1, &idx) < 0 || idx >= vm->nvcpus)
			return err_set(e, -EINVAL, "section vcpu@%s: no such vCPU (the VM has %u)",
				       s->instance, vm->nvcpus);
		if (p->vcpu_seen[idx])
			return err_set(e, -EINVAL, "section vcpu@%s appears twice", s->instance);
		ret = vcpu_state_decode(s->data, s->len, s->version, &p->vcpus[idx], e);
		if (ret < 0)
			return ret;
		p->vcpu_seen[idx] = true;
		return 0;
	}
	for (unsigned i = 0; i < vm->ndevices; i++) {
		struct vm_device_entry *d = &vm->devices[i];

		if (strcmp(s->name, d->ops->name) || strcmp(s->instance, d->instance))
			continue;
		if (s->version != d->ops->version)
			return err_set(e, -EINVAL, "section %s@%s has version %u, this build reads %u",
				       s->name, s->instance, s->version, d->ops->version);
		ret = d->ops->validate ? d->ops->validate(d->opaque, s->version, s->data, s->len, e) :
					 0;
		if (ret < 0)
			return err_prefix(e, ret, "section %s@%s", s->name, s->instance);
		return vm_section_dup(&p->devices[i], s, e);
	}
	return err_set(e, -EINVAL, "unknown section %s@%s", s->name, s->instance);
}

static int vm_vcpu_load(struct vcpu *v, void *arg)
{
	struct vm_load_plan *p = arg;
	struct errbuf e;
	int ret = vcpu_state_set(v->fd, &p->vcpus[v->index], &e);

	if (ret < 0)
		log_err("vCPU %u: %s", v->index, e.msg);
	return ret;
}

int vm_sections_load(struct vm *vm, const struct vm_section *secs, size_t n, struct errbuf *e)
{
	struct vm_load_plan *p = calloc(1, sizeof(*p));
	int ret = 0;

	if (!p)
		return err_set(e, -ENOMEM, "out of memory");
	for (size_t i = 0; i < n; i++) {
		ret = vm_section_classify(vm, p, &secs[i], e);
		if (ret < 0)
			goto out;
	}
	/* every mandatory section must be there before anything is applied */
	for (size_t i = 0; i < ARRAY_SIZE(vm_irqchips); i++)
		if (!p->irqchip[i]) {
			ret = err_set(e, -ENOENT, "missing section %s@%s", vm_irqchips[i].name,
				      vm_irqchips[i].instance);
			goto out;
		}
	if (!p->pit || !p->clock) {
		ret = err_set(e, -ENOENT, "missing section %s", !p->pit ? "pit@kvm" : "kvmclock@kvm");
		goto out;
	}
	for (unsigned i = 0; i < vm->nvcpus; i++)
		if (!p->vcpu_seen[i]) {
			ret = err_set(e, -ENOENT, "missing section vcpu@%u", i);
			goto out;
		}
	for (unsigned i = 0; i < vm->ndevices; i++)
		if (!p->devices[i]) {
			ret = err_set(e, -ENOENT, "missing section %s@%s", vm->devices[i].ops->name,
				      vm->devices[i].instance);
			goto out;
		}

	/* apply: interrupt controllers first, then timers and clock, vCPUs, devices */
	for (size_t i = 0; i < ARRAY_SIZE(vm_irqchips); i++) {
		const struct vm_section *s = p->irqchip[i];

		ret = vm_state_irqchip_set(vm->fd, vm_irqchips[i].chip, s->data, s->len, s->version,
					   e);
		if (ret < 0)
			goto out;
	}
	ret = vm_state_pit_set(vm->fd, p->pit->data, p->pit->len, p->pit->version, e);
	if (ret < 0)
		goto out;
	ret = vm_state_clock_set(vm->fd, p->clock->data, p->clock->len, p->clock->version, e);
	if (ret < 0)
		goto out;
	for (unsigned i = 0; i < vm->nvcpus; i++) {
		ret = vcpu_call(&vm->vcpus[i], vm_vcpu_load, p);
		if (ret < 0) {
			err_set(e, ret, "vCPU %u: loading state failed: %s", i, strerror(-ret));
			goto out;
		}
	}
	for (unsigned i = 0; i < vm->ndevices; i++) {
		struct vm_device_entry *d = &vm->devices[i];
		const struct vm_section *s = p->devices[i];

		ret = d->ops->load(d->opaque, s->version, s->data, s->len, e);
		if (ret < 0) {
			err_prefix(e, ret, "section %s@%s", s->name, s->instance);
			goto out;
		}
	}
out:
	for (unsigned i = 0; i < VM_MAX_VCPUS; i++)
		vcpu_state_free(&p->vcpus[i]);
	free(p);
	return ret;
}

/* ---- digest ---- */

static uint64_t vm_mix64(uint64_t x)
{
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ull;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebull;
	x ^= x >> 31;
	return x;
}

static int vm_digest_section(void *opaque, const struct vm_section *s, struct errbuf *e)
{
	uint64_t *h = opaque;
	uint32_t crc = crc32c(0, s->name, strlen(s->name));

	crc = crc32c(crc, s->instance, strlen(s->instance));
	crc = crc32c(crc, &s->version, sizeof(s->version));
	crc = crc32c(crc, s->data, s->len);
	*h = vm_mix64(*h ^ crc) + s->len;
	return 0;
}

int vm_digest(struct vm *vm, char *mem_hex, char *state_hex, struct errbuf *e)
{
	uint64_t hs = 0x6a09e667f3bcc908ull, hm = 0xbb67ae8584caa73bull;
	int ret;

	if (vm->state != VM_STATE_PAUSED)
		return err_set(e, -EBUSY, "digest needs a paused VM (it is %s)",
			       vm_state_name(vm->state));
	ret = vm_sections_save(vm, true, vm_digest_section, &hs, e);
	if (ret < 0)
		return ret;
	/* zero pages are left out: a restored VM may hold them as holes or untouched memory */
	for (unsigned r = 0; r < vm->mem.nregions; r++) {
		struct guest_mem_region *reg = &vm->mem.regions[r];

		for (uint64_t off = 0; off < reg->size; off += GUEST_PAGE_SIZE) {
			const uint64_t *pg = (const uint64_t *)(reg->host + off);
			uint64_t gpa = reg->gpa + off;

			if (page_is_zero(pg))
				continue;
			hm = vm_mix64(hm ^ (gpa | crc32c(0, pg, GUEST_PAGE_SIZE)) ^
				      ((uint64_t)crc32c(0x12345678u, pg, GUEST_PAGE_SIZE) << 32));
		}
	}
	snprintf(mem_hex, 17, "%016llx", (unsigned long long)hm);
	snprintf(state_hex, 17, "%016llx", (unsigned long long)hs);
	return 0;
}

/* ---- CPUID compatibility ---- */

static const struct {
	uint32_t function, index;
	uint8_t regs; /* bit 0 eax, 1 ebx, 2 ecx, 3 edx: registers holding feature flags */
} vm_cpuid_features[] = {
	{ 0x1, 0, 0xc },	{ 0x7, 0, 0xe },	{ 0x7, 1, 0x1 },
	{ 0xd, 1, 0x1 },	{ 0x80000001, 0, 0xc }, { 0x80000008, 0, 0x2 },
	{ 0x40000001, 0, 0x1 },
};

static const struct kvm_cpuid_entry2 *vm_cpuid_find(const struct kvm_cpuid2 *c, uint32_t fn,
						     uint32_t idx)
{
	for (uint32_t i = 0; i < c->nent; i++)
		if (c->entries[i].function == fn &&
		    (c->entries[i].index == idx ||
		     !(c->entries[i].flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX)))
			return &c->entries[i];
	return NULL;
}

int vm_cpuid_check(struct vm *vm, const struct kvm_cpuid2 *cpuid, struct errbuf *e)
{
	static const char *const rn[] = { "EAX", "EBX", "ECX", "EDX" };

	for (size_t i = 0; i < ARRAY_SIZE(vm_cpuid_features); i++) {
		const struct kvm_cpuid_entry2 *want, *have;
		uint32_t wr[4], hr[4];

		want = vm_cpuid_find(cpuid, vm_cpuid_features[i].function, vm_cpuid_features[i].index);
		if (!want)
			continue;
		have = vm_cpuid_find(vm->cpuid, vm_cpuid_features[i].function,
				     vm_cpuid_features[i].index);
		wr[0] = want->eax, wr[1] = want->ebx, wr[2] = want->ecx, wr[3] = want->edx;
		for (unsigned r = 0; r < 4; r++) {
			uint32_t missing;

			if (!(vm_cpuid_features[i].regs & (1u << r)))
				continue;
			if (have) {
				hr[0] = have->eax, hr[1] = have->ebx, hr[2] = have->ecx, hr[3] = have->edx;
				missing = wr[r] & ~hr[r];
			} else {
				missing = wr[r];
			}
			if (missing)
				return err_set(e, -ENOTSUP, "the guest's CPUID leaf 0x%x.%u %s has "
							    "features 0x%08x this host cannot give",
					       vm_cpuid_features[i].function,
					       vm_cpuid_features[i].index, rn[r], missing);
		}
	}
	return 0;
}
