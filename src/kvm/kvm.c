/* SPDX-License-Identifier: MIT */
/* /dev/kvm: version and capability checks, VM creation, supported CPUID and MSR lists. */
#include "kvm/kvm.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

int kvm_ioctl(int fd, unsigned long req, void *arg)
{
	int ret = ioctl(fd, req, arg);

	return ret < 0 ? -errno : ret;
}

int kvm_cap_check(int fd, long cap)
{
	int ret = ioctl(fd, KVM_CHECK_EXTENSION, cap);

	return ret < 0 ? 0 : ret;
}

int kvm_sys_open(struct kvm_sys *kvm, const char *path, struct errbuf *e)
{
	static const struct {
		long cap;
		const char *name;
	} required[] = {
		{ KVM_CAP_IRQCHIP, "KVM_CAP_IRQCHIP" },
		{ KVM_CAP_USER_MEMORY, "KVM_CAP_USER_MEMORY" },
		{ KVM_CAP_PIT2, "KVM_CAP_PIT2" },
		{ KVM_CAP_SET_TSS_ADDR, "KVM_CAP_SET_TSS_ADDR" },
		{ KVM_CAP_EXT_CPUID, "KVM_CAP_EXT_CPUID" },
		{ KVM_CAP_IMMEDIATE_EXIT, "KVM_CAP_IMMEDIATE_EXIT" },
		{ KVM_CAP_ADJUST_CLOCK, "KVM_CAP_ADJUST_CLOCK" },
		{ KVM_CAP_VCPU_EVENTS, "KVM_CAP_VCPU_EVENTS" },
		{ KVM_CAP_DEBUGREGS, "KVM_CAP_DEBUGREGS" },
		{ KVM_CAP_XCRS, "KVM_CAP_XCRS" },
	};
	int ret, version;

	kvm->fd = open(path, O_RDWR | O_CLOEXEC);
	if (kvm->fd < 0) {
		ret = -errno;
		if (ret == -ENOENT)
			return err_set(e, ret, "open %s: no such device (is KVM available on this host?)",
				       path);
		if (ret == -EACCES || ret == -EPERM)
			return err_set(e, ret, "open %s: permission denied (need access to %s)",
				       path, path);
		return err_set(e, ret, "open %s: %s", path, strerror(-ret));
	}
	version = ioctl(kvm->fd, KVM_GET_API_VERSION, 0);
	if (version != KVM_API_VERSION) {
		ret = err_set(e, -ENOTSUP, "%s: KVM API version %d, expected %d", path, version,
			      KVM_API_VERSION);
		goto err_close;
	}
	for (size_t i = 0; i < ARRAY_SIZE(required); i++) {
		if (!kvm_cap_check(kvm->fd, required[i].cap)) {
			ret = err_set(e, -ENOTSUP, "%s lacks %s", path, required[i].name);
			goto err_close;
		}
	}
	kvm->vcpu_mmap_size = ioctl(kvm->fd, KVM_GET_VCPU_MMAP_SIZE, 0);
	if (kvm->vcpu_mmap_size < (int)sizeof(struct kvm_run)) {
		ret = err_set(e, -EIO, "KVM_GET_VCPU_MMAP_SIZE: %s", strerror(errno));
		goto err_close;
	}
	return 0;

err_close:
	close(kvm->fd);
	kvm->fd = -1;
	return ret;
}

void kvm_sys_close(struct kvm_sys *kvm)
{
	if (kvm->fd >= 0)
		close(kvm->fd);
	kvm->fd = -1;
}

int kvm_vm_create(struct kvm_sys *kvm, int *vmfd, struct errbuf *e)
{
	int fd;

	do {
		fd = ioctl(kvm->fd, KVM_CREATE_VM, 0);
	} while (fd < 0 && errno == EINTR);
	if (fd < 0)
		return err_set(e, -errno, "KVM_CREATE_VM: %s", strerror(errno));
	*vmfd = fd;
	return 0;
}

int kvm_cpuid_supported(struct kvm_sys *kvm, struct kvm_cpuid2 **out, struct errbuf *e)
{
	uint32_t nent = 128;

	for (;;) {
		struct kvm_cpuid2 *c = calloc(1, sizeof(*c) + nent * sizeof(c->entries[0]));
		int ret;

		if (!c)
			return err_set(e, -ENOMEM, "out of memory");
		c->nent = nent;
		ret = kvm_ioctl(kvm->fd, KVM_GET_SUPPORTED_CPUID, c);
		if (ret == 0) {
			*out = c;
			return 0;
		}
		free(c);
		if (ret != -E2BIG || nent >= 4096)
			return err_set(e, ret, "KVM_GET_SUPPORTED_CPUID: %s", strerror(-ret));
		nent *= 2;
	}
}

int kvm_msr_index_list(struct kvm_sys *kvm, uint32_t **out, uint32_t *n, struct errbuf *e)
{
	struct kvm_msr_list probe = { .nmsrs = 0 };
	struct kvm_msr_list *list;
	int ret;

	ret = kvm_ioctl(kvm->fd, KVM_GET_MSR_INDEX_LIST, &probe);
	if (ret < 0 && ret != -E2BIG)
		return err_set(e, ret, "KVM_GET_MSR_INDEX_LIST: %s", strerror(-ret));
	if (probe.nmsrs > 4096)
		return err_set(e, -E2BIG, "KVM_GET_MSR_INDEX_LIST: %u MSRs", probe.nmsrs);
	list = calloc(1, sizeof(*list) + probe.nmsrs * sizeof(uint32_t));
	if (!list)
		return err_set(e, -ENOMEM, "out of memory");
	list->nmsrs = probe.nmsrs;
	ret = kvm_ioctl(kvm->fd, KVM_GET_MSR_INDEX_LIST, list);
	if (ret < 0) {
		free(list);
		return err_set(e, ret, "KVM_GET_MSR_INDEX_LIST: %s", strerror(-ret));
	}
	*out = malloc(list->nmsrs * sizeof(uint32_t) + 1);
	if (!*out) {
		free(list);
		return err_set(e, -ENOMEM, "out of memory");
	}
	memcpy(*out, list->indices, list->nmsrs * sizeof(uint32_t));
	*n = list->nmsrs;
	free(list);
	return 0;
}

int kvm_vm_memslot_set(int vmfd, uint32_t slot, uint32_t flags, uint64_t gpa, uint64_t size,
		       void *host, struct errbuf *e)
{
	struct kvm_userspace_memory_region r = {
		.slot = slot,
		.flags = flags,
		.guest_phys_addr = gpa,
		.memory_size = size,
		.userspace_addr = (uint64_t)(uintptr_t)host,
	};
	int ret = kvm_ioctl(vmfd, KVM_SET_USER_MEMORY_REGION, &r);

	if (ret < 0)
		return err_set(e, ret, "KVM_SET_USER_MEMORY_REGION slot %u at 0x%llx size 0x%llx: %s",
			       slot, (unsigned long long)gpa, (unsigned long long)size,
			       strerror(-ret));
	return 0;
}
