/* SPDX-License-Identifier: MIT */
/* Thin wrappers over the /dev/kvm ioctls: open and check the API, create VMs and vCPUs. */
#ifndef GODWIT_KVM_KVM_H
#define GODWIT_KVM_KVM_H

#include "base/util.h"

#include <linux/kvm.h>
#include <stdint.h>

struct kvm_sys {
	int fd;                 /* /dev/kvm */
	int vcpu_mmap_size;     /* size of each vCPU's kvm_run mapping */
};

/* Opens path (normally /dev/kvm), checks the API version and the capabilities godwit needs. */
int __must_check kvm_sys_open(struct kvm_sys *kvm, const char *path, struct errbuf *e);
void kvm_sys_close(struct kvm_sys *kvm);
/* KVM_CHECK_EXTENSION on a system or VM fd: >0 if present (value), 0 if absent. */
int kvm_cap_check(int fd, long cap);
int __must_check kvm_vm_create(struct kvm_sys *kvm, int *vmfd, struct errbuf *e);
/* KVM_GET_SUPPORTED_CPUID into a malloc'ed buffer the caller frees. */
int __must_check kvm_cpuid_supported(struct kvm_sys *kvm, struct kvm_cpuid2 **out,
				     struct errbuf *e);
/* KVM_GET_MSR_INDEX_LIST into a malloc'ed list the caller frees. */
int __must_check kvm_msr_index_list(struct kvm_sys *kvm, uint32_t **out, uint32_t *n,
				    struct errbuf *e);
int __must_check kvm_vm_memslot_set(int vmfd, uint32_t slot, uint32_t flags, uint64_t gpa,
				    uint64_t size, void *host, struct errbuf *e);
/* ioctl() returning 0/positive or -errno */
int kvm_ioctl(int fd, unsigned long req, void *arg);

#endif
