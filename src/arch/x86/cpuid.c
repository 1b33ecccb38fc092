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

int cpuid_vcpu_set(int vcpufd, const struct kvm_cpuid2 *c, unsigned index, unsigned nvcpus,
		   struct errbuf *e)
{
	size_t sz = sizeof(*c) + c->nent * sizeof(c->entries[0]);
	struct kvm_cpuid2 *v = malloc(sz);
	int ret;

	if (!v)
		return err_set(e, -ENOMEM, "out of memory");
	memcpy(v, c, sz);
	for (uint32_t i = 0; i < v->nent; i++) {
		struct kvm_cpuid_entry2 *ent = &v->entries[i];

		switch (ent->function) {
		case 1:
			/* initial APIC ID and logical processor count */
			ent->ebx = (ent->ebx & 0x0000ffffu) | (index << 24) | ((nvcpus & 0xff) << 16);
			if (nvcpus > 1)
				ent->edx |= 1u << 28; /* HTT: the count above is valid */
			break;
		case 0xb:
		case 0x1f:
			ent->edx = index; /* x2APIC ID */
			break;
		default:
			break;
		}
	}
	ret = kvm_ioctl(vcpufd, KVM_SET_CPUID2, v);
	free(v);
	if (ret < 0)
		return err_set(e, ret, "KVM_SET_CPUID2 on vCPU %u: %s", index, strerror(-ret));
	return 0;
}
