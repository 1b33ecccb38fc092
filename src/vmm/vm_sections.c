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
#include "devices/serial.h"
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

/* ---- load: decode and validate every section into staging structs, then apply ---- */

#define VM_STAGE_MAX_DEVICES 16

/* The machine sections are checked against: a VM being restored, or (inspect) its CONFIG. */
struct vm_stage_target {
	unsigned nvcpus;
	uint32_t xsave_size;            /* XSAVE bytes a vCPU holds; 0: no XSAVE */
	const struct vm_device_entry *devices;
	unsigned ndevices;
};

/* Everything a load applies, decoded and validated: nothing is applied before all is here. */
struct vm_stage {
	struct kvm_irqchip irqchip[ARRAY_SIZE(vm_irqchips)];
	bool irqchip_seen[ARRAY_SIZE(vm_irqchips)];
	struct kvm_pit_state2 pit;
	struct kvm_clock_data clock;
	bool pit_seen, clock_seen;
	struct vcpu_state vcpus[VM_MAX_VCPUS];
	bool vcpu_seen[VM_MAX_VCPUS];
	const struct vm_section *devices[VM_STAGE_MAX_DEVICES];
};

static int vm_section_once(bool *seen, struct errbuf *e)
{
	if (*seen)
		return err_set(e, -EINVAL, "appears twice");
	*seen = true;
	return 0;
}

static int vm_stage_vcpu(const struct vm_stage_target *t, struct vm_stage *st,
			 const struct vm_section *s, struct errbuf *e)
{
	struct vcpu_state *v;
	uint64_t idx;
	int ret;

	if (parse_u64(s->instance, 0, VM_MAX_VCPUS - 1, &idx) < 0 || idx >= t->nvcpus)
		return err_set(e, -EINVAL, "no such vCPU (the VM has %u)", t->nvcpus);
	ret = vm_section_once(&st->vcpu_seen[idx], e);
	if (ret < 0)
		return ret;
	v = &st->vcpus[idx];
	/*
	 * Its CPUID is applied as saved, not compared with CONFIG's table: the features were
	 * checked on that in pre-flight, and a vCPU's own table differs from it by more than
	 * APIC IDs (KVM fills in bits, e.g. leaf 1 ECX on this host).
	 */
	ret = vcpu_state_decode(s->data, s->len, s->version, v, e);
	if (ret < 0)
		return ret;
	if (v->has_xsave && v->xsave_len > t->xsave_size)
		return err_set(e, -ENOTSUP, "the saved XSAVE area is %u bytes; %s", v->xsave_len,
			       t->xsave_size ? "the VM's vCPUs hold fewer" :
					       "the VM's vCPUs have no XSAVE");
	return 0;
}

/* Decodes one section into st: 0, a negative errno, or 1 if no such section is known. */
static int vm_stage_section(const struct vm_stage_target *t, struct vm_stage *st,
			    const struct vm_section *s, struct errbuf *e)
{
	int ret;

	for (size_t i = 0; i < ARRAY_SIZE(vm_irqchips); i++) {
		if (strcmp(s->name, vm_irqchips[i].name) || strcmp(s->instance, vm_irqchips[i].instance))
			continue;
		ret = vm_section_once(&st->irqchip_seen[i], e);
		return ret < 0 ? ret : vm_state_irqchip_decode(vm_irqchips[i].chip, s->data, s->len,
							       s->version, &st->irqchip[i], e);
	}
	if (!strcmp(s->name, "pit") && !strcmp(s->instance, "kvm")) {
		ret = vm_section_once(&st->pit_seen, e);
		return ret < 0 ? ret : vm_state_pit_decode(s->data, s->len, s->version, &st->pit, e);
	}
	if (!strcmp(s->name, "kvmclock") && !strcmp(s->instance, "kvm")) {
		ret = vm_section_once(&st->clock_seen, e);
		return ret < 0 ? ret : vm_state_clock_decode(s->data, s->len, s->version, &st->clock,
							     e);
	}
	if (!strcmp(s->name, "vcpu"))
		return vm_stage_vcpu(t, st, s, e);
	for (unsigned i = 0; i < t->ndevices; i++) {
		const struct vm_device_entry *d = &t->devices[i];

		if (strcmp(s->name, d->ops->name) || strcmp(s->instance, d->instance))
			continue;
		if (st->devices[i])
			return err_set(e, -EINVAL, "appears twice");
		st->devices[i] = s;
		if (s->version != d->ops->version)
			return err_set(e, -EINVAL, "version %u, this build reads %u", s->version,
				       d->ops->version);
		return d->ops->validate ? d->ops->validate(d->opaque, s->version, s->data, s->len, e)
					: 0;
	}
	return 1;
}

/* Decodes and validates every section into st; fails naming the first that is wrong. */
static int vm_stage_build(const struct vm_stage_target *t, struct vm_stage *st,
			  const struct vm_section *secs, size_t n, struct errbuf *e)
{
	int ret;

	if (t->ndevices > VM_STAGE_MAX_DEVICES)
		return err_set(e, -E2BIG, "%u devices (at most %u)", t->ndevices,
			       VM_STAGE_MAX_DEVICES);
	for (size_t i = 0; i < n; i++) {
		ret = vm_stage_section(t, st, &secs[i], e);
		if (ret > 0)
			return err_set(e, -EINVAL, "unknown section %s@%s", secs[i].name,
				       secs[i].instance);
		if (ret < 0)
			return err_prefix(e, ret, "section %s@%s", secs[i].name, secs[i].instance);
	}
	/* every mandatory section must be there before anything is applied */
	for (size_t i = 0; i < ARRAY_SIZE(vm_irqchips); i++)
		if (!st->irqchip_seen[i])
			return err_set(e, -ENOENT, "missing section %s@%s", vm_irqchips[i].name,
				       vm_irqchips[i].instance);
	if (!st->pit_seen || !st->clock_seen)
		return err_set(e, -ENOENT, "missing section %s",
			       !st->pit_seen ? "pit@kvm" : "kvmclock@kvm");
	for (unsigned i = 0; i < t->nvcpus; i++)
		if (!st->vcpu_seen[i])
			return err_set(e, -ENOENT, "missing section vcpu@%u", i);
	for (unsigned i = 0; i < t->ndevices; i++)
		if (!st->devices[i])
			return err_set(e, -ENOENT, "missing section %s@%s", t->devices[i].ops->name,
				       t->devices[i].instance);
	return 0;
}

static void vm_stage_free(struct vm_stage *st)
{
	for (unsigned i = 0; i < VM_MAX_VCPUS; i++)
		vcpu_state_free(&st->vcpus[i]);
	free(st);
}

static int vm_sections_stage(const struct vm_stage_target *t, const struct vm_section *secs,
			     size_t n, struct vm_stage **out, struct errbuf *e)
{
	struct vm_stage *st = calloc(1, sizeof(*st));
	int ret;

	if (!st)
		return err_set(e, -ENOMEM, "out of memory");
	ret = vm_stage_build(t, st, secs, n, e);
	if (ret < 0) {
		vm_stage_free(st);
		return ret;
	}
	*out = st;
	return 0;
}

int vm_sections_check(unsigned nvcpus, uint32_t xsave_size, const struct vm_check_device *devs,
		      unsigned ndevs, const struct vm_section *secs, size_t n, struct errbuf *e)
{
	/* the devices every VM has (inspect has no VM to ask), then CONFIG's */
	static const struct vm_device_entry fixed[] = {
		{ .ops = &serial_device_ops, .instance = VM_SERIAL_INSTANCE },
		{ .ops = &vm_i8042_dev, .instance = VM_I8042_INSTANCE },
		{ .ops = &vm_pci_cfg_dev, .instance = VM_PCI_CFG_INSTANCE },
	};
	struct vm_device_entry devices[ARRAY_SIZE(fixed) + DEV_MAX];
	struct vm_stage_target t = {
		.nvcpus = nvcpus,
		.xsave_size = xsave_size,
		.devices = devices,
		.ndevices = ARRAY_SIZE(fixed),
	};
	struct vm_stage *st = NULL;
	int ret;

	if (nvcpus < 1 || nvcpus > VM_MAX_VCPUS)
		return err_set(e, -EINVAL, "%u vCPUs (1 to %u)", nvcpus, VM_MAX_VCPUS);
	if (ndevs > DEV_MAX)
		return err_set(e, -EINVAL, "%u devices (at most %u)", ndevs, DEV_MAX);
	memcpy(devices, fixed, sizeof(fixed));
	for (unsigned i = 0; i < ndevs; i++) {
		const struct device_type *type = device_type_find(devs[i].type);
		struct vm_device_entry *d = &devices[t.ndevices++];

		if (!type)
			return err_set(e, -ENOTSUP, "device %s: type %s is not one this build has",
				       devs[i].id, devs[i].type);
		*d = (struct vm_device_entry){ .ops = type->ops, .type = type };
		snprintf(d->instance, sizeof(d->instance), "%s", devs[i].id);
	}
	ret = vm_sections_stage(&t, secs, n, &st, e);
	if (ret == 0)
		vm_stage_free(st);
	return ret;
}

static int vm_vcpu_load(struct vcpu *v, void *arg)
{
	struct vm_stage *st = arg;
	struct errbuf e;
	int ret = vcpu_state_set(v->fd, &st->vcpus[v->index], &e);

	if (ret < 0)
		log_err("vCPU %u: %s", v->index, e.msg);
	return ret;
}

int vm_sections_load(struct vm *vm, const struct vm_section *secs, size_t n, struct errbuf *e)
{
	const struct vm_stage_target t = {
		.nvcpus = vm->nvcpus,
		.xsave_size = vm->xsave_size,
		.devices = vm->devices,
		.ndevices = vm->ndevices,
	};
	struct vm_stage *st = NULL;
	int ret;

	ret = vm_sections_stage(&t, secs, n, &st, e);
	if (ret < 0)
		return ret;
	/* apply: interrupt controllers first, then timers and clock, vCPUs, devices */
	for (size_t i = 0; i < ARRAY_SIZE(vm_irqchips); i++) {
		ret = vm_state_irqchip_apply(vm->fd, &st->irqchip[i], e);
		if (ret < 0)
			goto out;
	}
	ret = vm_state_pit_apply(vm->fd, &st->pit, e);
	if (ret < 0)
		goto out;
	ret = vm_state_clock_apply(vm->fd, &st->clock, e);
	if (ret < 0)
		goto out;
	for (unsigned i = 0; i < vm->nvcpus; i++) {
		ret = vcpu_call(&vm->vcpus[i], vm_vcpu_load, st);
		if (ret < 0) {
			err_set(e, ret, "vCPU %u: loading state failed: %s", i, strerror(-ret));
			goto out;
		}
	}
	for (unsigned i = 0; i < vm->ndevices; i++) {
		struct vm_device_entry *d = &vm->devices[i];
		const struct vm_section *s = st->devices[i];

		ret = d->ops->load(d->opaque, s->version, s->data, s->len, e);
		if (ret < 0) {
			err_prefix(e, ret, "section %s@%s", s->name, s->instance);
			goto out;
		}
	}
out:
	vm_stage_free(st);
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
	/*
	 * Zero pages are left out: a restored VM may hold them as holes or untouched memory.
	 * 2 MiB ranges never touched are all zero and not read (reading them would fault in
	 * every page of a big idle guest).
	 */
	for (unsigned r = 0; r < vm->mem.nregions; r++) {
		struct guest_mem_region *reg = &vm->mem.regions[r];
		const uint64_t range = 2 * MiB;
		bool *touched = calloc(reg->size / range + 1, sizeof(*touched));

		if (!touched)
			return err_set(e, -ENOMEM, "out of memory");
		guest_mem_touched_map(&vm->mem, reg->host, reg->size / GUEST_PAGE_SIZE,
				      range / GUEST_PAGE_SIZE, touched);
		for (uint64_t off = 0; off < reg->size; off += GUEST_PAGE_SIZE) {
			const uint64_t *pg = (const uint64_t *)(reg->host + off);
			uint64_t gpa = reg->gpa + off;

			if (!touched[off / range]) {
				off = ALIGN_DOWN(off, range) + range - GUEST_PAGE_SIZE;
				continue;
			}
			if (page_is_zero(pg))
				continue;
			hm = vm_mix64(hm ^ (gpa | crc32c(0, pg, GUEST_PAGE_SIZE)) ^
				      ((uint64_t)crc32c(0x12345678u, pg, GUEST_PAGE_SIZE) << 32));
		}
		free(touched);
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
	{ 0xd, 0, 0x9 }, /* the XCR0 bits the guest may enable: its XSAVE state must fit */
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
		uint32_t fn = vm_cpuid_features[i].function, idx = vm_cpuid_features[i].index;
		const struct kvm_cpuid_entry2 *want = vm_cpuid_find(cpuid, fn, idx);
		const struct kvm_cpuid_entry2 *have = vm_cpuid_find(vm->cpuid, fn, idx);
		uint32_t wr[4], hr[4] = { 0 };

		if (!want)
			continue;
		wr[0] = want->eax, wr[1] = want->ebx, wr[2] = want->ecx, wr[3] = want->edx;
		if (have)
			hr[0] = have->eax, hr[1] = have->ebx, hr[2] = have->ecx, hr[3] = have->edx;
		for (unsigned r = 0; r < 4; r++) {
			uint32_t missing = wr[r] & ~hr[r];

			if ((vm_cpuid_features[i].regs & (1u << r)) && missing)
				return err_set(e, -ENOTSUP, "the guest's CPUID leaf 0x%x.%u %s has "
							    "features 0x%08x this host cannot give",
					       fn, idx, rn[r], missing);
		}
	}
	return 0;
}

/* ---- the rest of a receiver's pre-flight: XSAVE size and TSC frequency ---- */

struct vm_tsc_arg {
	uint32_t khz;
	struct errbuf *e;
};

static int vm_vcpu_tsc_get(struct vcpu *v, void *arg)
{
	struct vm_tsc_arg *a = arg;
	int ret = kvm_ioctl(v->fd, KVM_GET_TSC_KHZ, NULL);

	a->khz = ret > 0 ? (uint32_t)ret : 0;
	return 0;
}

static int vm_vcpu_tsc_set(struct vcpu *v, void *arg)
{
	struct vm_tsc_arg *a = arg;
	int ret = kvm_ioctl(v->fd, KVM_SET_TSC_KHZ, (void *)(uintptr_t)a->khz);

	if (ret < 0)
		return err_set(a->e, ret, "vCPU %u: KVM_SET_TSC_KHZ %u: %s", v->index, a->khz,
			       strerror(-ret));
	ret = kvm_ioctl(v->fd, KVM_GET_TSC_KHZ, NULL);
	if (ret >= 0 && (uint32_t)ret != a->khz)
		return err_set(a->e, -ENOTSUP, "vCPU %u: KVM runs the TSC at %d kHz, not %u",
			       v->index, ret, a->khz);
	return 0;
}

int vm_machine_preflight(struct vm *vm, uint32_t tsc_khz, uint32_t xsave_size, struct errbuf *e)
{
	struct vm_tsc_arg a = { .e = e };
	uint32_t host_khz;
	int ret;

	if (xsave_size && !vm->xsave_size)
		return err_set(e, -ENOTSUP, "the guest's vCPUs have a %u-byte XSAVE area; this "
					    "host's KVM has no XSAVE", xsave_size);
	if (xsave_size > vm->xsave_size)
		return err_set(e, -ENOTSUP, "the guest's vCPUs have a %u-byte XSAVE area; this "
					    "host's KVM holds %u bytes", xsave_size, vm->xsave_size);
	ret = vcpu_call(&vm->vcpus[0], vm_vcpu_tsc_get, &a);
	if (ret < 0)
		return err_set(e, ret, "vCPU 0: reading the TSC frequency: %s", strerror(-ret));
	host_khz = a.khz;
	vm->tsc_khz = host_khz;
	if (!tsc_khz || tsc_khz == host_khz)
		return 0;
	/* a guest reads its TSC at the rate it booted with: scale it, or refuse the guest */
	a.khz = tsc_khz;
	for (unsigned i = 0; i < vm->nvcpus; i++) {
		ret = vcpu_call(&vm->vcpus[i], vm_vcpu_tsc_set, &a);
		if (ret < 0)
			return err_prefix(e, ret, "the guest's TSC runs at %u kHz, this host's at %u "
						  "kHz and KVM cannot give it the guest's rate",
					  tsc_khz, host_khz);
	}
	vm->tsc_khz = tsc_khz;
	return 0;
}
