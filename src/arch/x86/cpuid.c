/* SPDX-License-Identifier: MIT */
/* CPUID given to the guest: KVM's supported leaves plus topology per vCPU. */
#include "arch/x86/cpuid.h"
#include "kvm/kvm.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define CPUID_1_ECX_HYPERVISOR (1u << 31)
#define KVM_CPUID_SIGNATURE_LEAF 0x40000000u

void cpuid_vm_prepare(struct kvm_cpuid2 *c)
{
	for (uint32_t i = 0; i < c->nent; i++) {
		struct kvm_cpuid_entry2 *ent = &c->entries[i];

		if (ent->function == 1)
			ent->ecx |= CPUID_1_ECX_HYPERVISOR;
		if (ent->function == KVM_CPUID_SIGNATURE_LEAF) {
			/* "KVMKVMKVM\0\0\0": guests look here for kvmclock */
			ent->ebx = 0x4b4d564b;
			ent->ecx = 0x564b4d56;
			ent->edx = 0x4d;
		}
	}
}

/* bits of the APIC ID that number the vCPUs: ceil(log2(n)) */
static uint32_t cpuid_id_bits(unsigned n)
{
	uint32_t b = 0;

	while ((1u << b) < n)
		b++;
	return b;
}

/*
 * One package of nvcpus single-thread cores, APIC ID = vCPU index: the same picture in
 * every leaf a guest may read it from (the MADT lists the same IDs).
 */
static void cpuid_topology_set(struct kvm_cpuid_entry2 *ent, unsigned index, unsigned nvcpus)
{
	uint32_t bits = cpuid_id_bits(nvcpus);

	switch (ent->function) {
	case 1:
		/* initial APIC ID and logical processor count */
		ent->ebx = (ent->ebx & 0x0000ffffu) | (index << 24) | (MIN(nvcpus, 255u) << 16);
		if (nvcpus > 1)
			ent->edx |= 1u << 28; /* HTT: the count above is valid */
		break;
	case 4:
		/* cores per package - 1, for each cache level */
		if (ent->eax & 0x1f)
			ent->eax = (ent->eax & 0x03ffffffu) | ((MIN(nvcpus, 64u) - 1) << 26);
		break;
	case 0xb:
	case 0x1f:
		/* extended topology: level 0 SMT (one thread), level 1 core (all vCPUs) */
		if (ent->index == 0) {
			ent->eax = 0;
			ent->ebx = 1;
			ent->ecx = 1u << 8;
		} else if (ent->index == 1) {
			ent->eax = bits;
			ent->ebx = nvcpus;
			ent->ecx = (2u << 8) | 1;
		} else {
			ent->eax = 0;
			ent->ebx = 0;
			ent->ecx = ent->index;
		}
		ent->edx = index; /* x2APIC ID */
		break;
	case 0x80000008:
		/* AMD: cores in the package - 1 and the APIC ID bits that number them */
		ent->ecx = (ent->ecx & ~0xf0ffu) | (bits << 12) | ((nvcpus - 1) & 0xff);
		break;
	case 0x8000001e:
		/* AMD: extended APIC ID, one thread per compute unit, node 0 */
		ent->eax = index;
		ent->ebx = index & 0xff;
		ent->ecx = 0;
		break;
	default:
		break;
	}
}

int cpuid_vcpu_set(int vcpufd, const struct kvm_cpuid2 *c, unsigned index, unsigned nvcpus,
		   struct errbuf *e)
{
	size_t sz = sizeof(*c) + c->nent * sizeof(c->entries[0]);
	struct kvm_cpuid2 *v = malloc(sz);
	int ret;

	if (!v)
		return err_set(e, -ENOMEM, "out of memory");
	memcpy(v, c, sz);
	for (uint32_t i = 0; i < v->nent; i++)
		cpuid_topology_set(&v->entries[i], index, nvcpus);
	ret = kvm_ioctl(vcpufd, KVM_SET_CPUID2, v);
	free(v);
	if (ret < 0)
		return err_set(e, ret, "KVM_SET_CPUID2 on vCPU %u: %s", index, strerror(-ret));
	return 0;
}
