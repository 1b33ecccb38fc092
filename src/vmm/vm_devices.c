/* SPDX-License-Identifier: MIT */
/*
 * The device registry: attaching devices (I/O window on the bus, state section in the
 * registry), building the configurable ones from their specs with what they may touch
 * (guest memory through struct dev_mem, an IOAPIC pin through struct dev_irq), announcing
 * virtio-mmio devices on the kernel command line, and driving all of them through their
 * ops at pause, resume, handover and teardown. Nothing here knows a device type.
 */
#include "base/log.h"
#include "vmm/vm_impl.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

static int vm_device_check_new(struct vm *vm, const struct device_ops *ops, const char *instance,
				struct errbuf *e)
{
	if (vm->ndevices >= VM_MAX_DEVICES)
		return err_set(e, -ENOSPC, "too many devices (at most %u)", VM_MAX_DEVICES);
	for (unsigned i = 0; i < vm->ndevices; i++)
		if (!strcmp(vm->devices[i].ops->name, ops->name) &&
		    !strcmp(vm->devices[i].instance, instance))
			return err_set(e, -EEXIST, "device %s@%s exists twice", ops->name, instance);
	return 0;
}

int vm_device_register(struct vm *vm, const struct device_ops *ops, const char *instance,
		       void *dev, struct errbuf *e)
{
	struct vm_device_entry *ent;
	int ret = vm_device_check_new(vm, ops, instance, e);

	if (ret < 0)
		return ret;
	ent = &vm->devices[vm->ndevices++];
	memset(ent, 0, sizeof(*ent));
	ent->ops = ops;
	snprintf(ent->instance, sizeof(ent->instance), "%s", instance);
	ent->opaque = dev;
	return 0;
}

int vm_device_attach(struct vm *vm, const struct device_info *d, struct errbuf *e)
{
	struct vm_device_entry *ent;
	int ret = vm_device_check_new(vm, d->ops, d->instance, e);

	if (ret < 0)
		return ret;
	ret = iobus_register(&vm->iobus, d->io_kind == DEV_IO_PIO ? IOBUS_PIO : IOBUS_MMIO,
			     d->io_base, d->io_len, d->io_fn, d->dev);
	if (ret < 0)
		return err_set(e, ret, "device %s@%s: registering its I/O window 0x%llx+0x%llx: %s",
			       d->ops->name, d->instance, (unsigned long long)d->io_base,
			       (unsigned long long)d->io_len, strerror(-ret));
	if (d->notify_fd >= 0 && d->io_kind == DEV_IO_MMIO) {
		struct kvm_ioeventfd io = { .addr = d->io_base + d->notify_offset, .len = 4,
					    .fd = d->notify_fd };

		/* without it the doorbell still works, through an exit to the vCPU thread */
		ret = kvm_ioctl(vm->fd, KVM_IOEVENTFD, &io);
		if (ret < 0)
			log_warn("device %s@%s: KVM_IOEVENTFD: %s (notifications exit to userspace)",
				 d->ops->name, d->instance, strerror(-ret));
	}
	ent = &vm->devices[vm->ndevices++];
	memset(ent, 0, sizeof(*ent));
	ent->ops = d->ops;
	snprintf(ent->instance, sizeof(ent->instance), "%s", d->instance);
	ent->opaque = d->dev;
	ent->mmio_base = d->io_base;
	ent->mmio_len = d->io_len;
	ent->virtio_mmio = d->virtio_mmio;
	return 0;
}

/* ---- what devices may touch ---- */

static void *vm_dev_translate(void *opaque, uint64_t gpa, uint64_t len)
{
	return guest_mem_ptr(opaque, gpa, len);
}

static void vm_dev_mark_dirty(void *opaque, uint64_t gpa, uint64_t len)
{
	guest_mem_mark_dirty(opaque, gpa, len);
}

static void vm_dev_irq(void *opaque, unsigned gsi, bool level)
{
	struct vm *vm = opaque;
	struct kvm_irq_level irq = { .irq = gsi, .level = level };

	if (kvm_ioctl(vm->fd, KVM_IRQ_LINE, &irq) < 0)
		log_warn("KVM_IRQ_LINE %u: %s", gsi, strerror(errno));
}

int vm_devices_create(struct vm *vm, const struct device_spec *specs, unsigned n, bool claim,
		      struct errbuf *e)
{
	if (n > DEV_MAX)
		return err_set(e, -EINVAL, "%u devices (at most %u)", n, DEV_MAX);
	for (unsigned i = 0; i < n; i++) {
		const struct device_type *t = device_type_find(specs[i].type);
		struct device_env env = {
			.mem = { &vm->mem, vm_dev_translate, vm_dev_mark_dirty },
			.irq = { vm, vm_dev_irq, VM_DEV_GSI_BASE + i },
			.mmio_base = VM_DEV_MMIO_BASE + i * VM_DEV_MMIO_STRIDE,
		};
		struct device_info d;
		int ret;

		if (!t)
			return err_set(e, -ENOTSUP, "device %s: type %s is not one this build has",
				       specs[i].id, specs[i].type);
		for (unsigned j = 0; j < i; j++)
			if (!strcmp(specs[j].id, specs[i].id))
				return err_set(e, -EINVAL, "two devices are called %s", specs[i].id);
		ret = t->create(&specs[i], &env, &d, e);
		if (ret < 0)
			return ret;
		ret = vm_device_attach(vm, &d, e);
		if (ret < 0) {
			d.ops->destroy(d.dev);
			return ret;
		}
		vm->devices[vm->ndevices - 1].type = t;
		vm->devices[vm->ndevices - 1].gsi = env.irq.gsi;
		if (claim && d.ops->claim) {
			ret = d.ops->claim(d.dev, e);
			if (ret < 0)
				return ret;
		}
	}
	return 0;
}

int vm_devices_cmdline(struct vm *vm, char *cmdline, size_t size, struct errbuf *e)
{
	for (unsigned i = 0; i < vm->ndevices; i++) {
		struct vm_device_entry *d = &vm->devices[i];
		size_t len = strlen(cmdline);
		int n;

		if (!d->virtio_mmio)
			continue;
		/* the convention of Linux's virtio_mmio driver and QEMU's microvm */
		n = snprintf(cmdline + len, size - len, "%svirtio_mmio.device=%lluK@0x%llx:%u",
			     len ? " " : "", (unsigned long long)(d->mmio_len / 1024),
			     (unsigned long long)d->mmio_base, d->gsi);
		if (n < 0 || (size_t)n >= size - len)
			return err_set(e, -E2BIG, "the kernel command line is too long once the "
						  "devices are added (at most %zu bytes)", size - 1);
	}
	return 0;
}

unsigned vm_device_specs(struct vm *vm, struct device_spec *out, unsigned max)
{
	unsigned n = 0;

	for (unsigned i = 0; i < vm->ndevices && n < max; i++)
		if (vm->devices[i].type)
			vm->devices[i].type->spec_get(vm->devices[i].opaque, &out[n++]);
	return n;
}

void vm_devices_quiesce(struct vm *vm)
{
	for (unsigned i = 0; i < vm->ndevices; i++)
		if (vm->devices[i].ops->quiesce)
			vm->devices[i].ops->quiesce(vm->devices[i].opaque);
}

void vm_devices_resume(struct vm *vm)
{
	for (unsigned i = 0; i < vm->ndevices; i++)
		if (vm->devices[i].ops->resume)
			vm->devices[i].ops->resume(vm->devices[i].opaque);
}

int vm_devices_flush(struct vm *vm, struct errbuf *e)
{
	for (unsigned i = 0; i < vm->ndevices; i++) {
		struct vm_device_entry *d = &vm->devices[i];
		int ret;

		if (!d->ops->flush)
			continue;
		ret = d->ops->flush(d->opaque, e);
		if (ret < 0)
			return ret;
	}
	return 0;
}

int vm_devices_claim(struct vm *vm, struct errbuf *e)
{
	for (unsigned i = 0; i < vm->ndevices; i++) {
		struct vm_device_entry *d = &vm->devices[i];
		int ret;

		if (!d->ops->claim)
			continue;
		ret = d->ops->claim(d->opaque, e);
		if (ret < 0)
			return ret;
	}
	return 0;
}

void vm_devices_release(struct vm *vm)
{
	for (unsigned i = 0; i < vm->ndevices; i++)
		if (vm->devices[i].ops->release)
			vm->devices[i].ops->release(vm->devices[i].opaque);
}

uint64_t vm_devices_announced(struct vm *vm)
{
	uint64_t n = 0;

	for (unsigned i = 0; i < vm->ndevices; i++)
		if (vm->devices[i].ops->announced)
			n += vm->devices[i].ops->announced(vm->devices[i].opaque);
	return n;
}

unsigned vm_devices_stats(struct vm *vm, struct device_stats *out, unsigned max)
{
	unsigned n = 0;

	for (unsigned i = 0; i < vm->ndevices && n < max; i++) {
		struct vm_device_entry *d = &vm->devices[i];

		if (!d->type)
			continue;
		memset(&out[n], 0, sizeof(out[n]));
		d->type->spec_get(d->opaque, &out[n].spec);
		if (d->ops->stats)
			d->ops->stats(d->opaque, &out[n]);
		n++;
	}
	return n;
}

void vm_devices_destroy(struct vm *vm)
{
	while (vm->ndevices) {
		struct vm_device_entry *d = &vm->devices[--vm->ndevices];

		if (d->ops->destroy)
			d->ops->destroy(d->opaque);
	}
}
