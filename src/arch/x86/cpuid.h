/* SPDX-License-Identifier: MIT */
/* The CPUID a vCPU is given: KVM's supported set with per-vCPU topology and kvmclock. */
#ifndef GODWIT_ARCH_X86_CPUID_H
#define GODWIT_ARCH_X86_CPUID_H

#include "base/util.h"

#include <linux/kvm.h>

/*
 * Prepares the VM-wide CPUID from KVM_GET_SUPPORTED_CPUID: sets the hypervisor
 * bit, keeps the KVM paravirt leaves (kvmclock), in place.
 */
void cpuid_vm_prepare(struct kvm_cpuid2 *c);
/* Copies c with vCPU index's APIC IDs filled in and calls KVM_SET_CPUID2 on vcpufd. */
int __must_check cpuid_vcpu_set(int vcpufd, const struct kvm_cpuid2 *c, unsigned index,
				unsigned nvcpus, struct errbuf *e);

#endif
