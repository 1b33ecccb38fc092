/* SPDX-License-Identifier: MIT */
/*
 * The small legacy devices a PC guest probes early, wired to the io bus and the device
 * registry: the i8042 (reset), the PCI configuration ports (no PCI; 0xcf9 reset) and the
 * ACPI sleep control port (power-off). A guest reset or power-off ends `godwit run`
 * with status 0, like a stop request.
 */
#include "arch/x86/acpi.h"
#include "base/log.h"
#include "devices/i8042.h"
#include "devices/pci_cfg.h"
#include "devices/sleep_ctl.h"
#include "vmm/vm_impl.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct vm_legacy {
	struct i8042 *i8042;
	struct pci_cfg pci;
	struct sleep_ctl sleep;
};

static void vm_guest_reset(void *opaque)
{
	log_info("the guest reset the machine: stopping");
	vm_stop_request(opaque);
}

static void vm_guest_poweroff(void *opaque)
{
	log_info("the guest powered off: stopping");
	vm_stop_request(opaque);
}

static void vm_i8042_pio(void *opaque, uint64_t port, uint8_t *data, unsigned len,
			 bool is_write)
{
	struct i8042 *k = opaque;

	if (is_write)
		i8042_io_write(k, (unsigned)port, data[0]);
	else
		data[0] = i8042_io_read(k, (unsigned)port);
	for (unsigned i = 1; i < len; i++)
		if (!is_write)
			data[i] = 0xff;
}

static void vm_i8042_data_pio(void *opaque, uint64_t off, uint8_t *data, unsigned len,
			      bool is_write)
{
	vm_i8042_pio(opaque, I8042_DATA_PORT + off, data, len, is_write);
}

static void vm_i8042_cmd_pio(void *opaque, uint64_t off, uint8_t *data, unsigned len,
			     bool is_write)
{
	vm_i8042_pio(opaque, I8042_CMD_PORT + off, data, len, is_write);
}

static int vm_i8042_save(void *opaque, struct buf *out)
{
	return i8042_state_save(opaque, out);
}

static int vm_i8042_load(void *opaque, uint32_t version, const void *p, size_t len,
			 struct errbuf *e)
{
	return i8042_state_load(opaque, version, p, len, e);
}

static int vm_i8042_validate(void *opaque, uint32_t version, const void *p, size_t len,
			     struct errbuf *e)
{
	return i8042_state_validate(version, p, len, e);
}

const struct device_ops vm_i8042_dev = {
	.name = "i8042",
	.version = I8042_STATE_VERSION,
	.save = vm_i8042_save,
	.validate = vm_i8042_validate,
	.load = vm_i8042_load,
};

static void vm_pci_cfg_pio(void *opaque, uint64_t off, uint8_t *data, unsigned len,
			   bool is_write)
{
	pci_cfg_io(opaque, (unsigned)off, data, len, is_write);
}

static int vm_pci_cfg_save(void *opaque, struct buf *out)
{
	return pci_cfg_state_save(opaque, out);
}

static int vm_pci_cfg_load(void *opaque, uint32_t version, const void *p, size_t len,
			   struct errbuf *e)
{
	return pci_cfg_state_load(opaque, version, p, len, e);
}

static int vm_pci_cfg_validate(void *opaque, uint32_t version, const void *p, size_t len,
			       struct errbuf *e)
{
	return pci_cfg_state_validate(version, p, len, e);
}

const struct device_ops vm_pci_cfg_dev = {
	.name = "pci-cfg",
	.version = PCI_CFG_STATE_VERSION,
	.save = vm_pci_cfg_save,
	.validate = vm_pci_cfg_validate,
	.load = vm_pci_cfg_load,
};

static void vm_sleep_pio(void *opaque, uint64_t off, uint8_t *data, unsigned len, bool is_write)
{
	sleep_ctl_io(opaque, (unsigned)off, data, len, is_write);
}

int vm_legacy_setup(struct vm *vm, struct errbuf *e)
{
	static const struct i8042_ops kops = { .reset = vm_guest_reset };
	struct vm_legacy *l = calloc(1, sizeof(*l));
	int ret;

	if (!l)
		return err_set(e, -ENOMEM, "out of memory");
	vm->legacy = l;
	ret = i8042_create(&l->i8042, &kops, vm);
	if (ret < 0)
		return err_set(e, ret, "create i8042: %s", strerror(-ret));
	pci_cfg_init(&l->pci, vm_guest_reset, vm);
	l->sleep = (struct sleep_ctl){ .s5_type = ACPI_S5_TYPE, .poweroff = vm_guest_poweroff,
				       .opaque = vm };

	ret = iobus_register(&vm->iobus, IOBUS_PIO, I8042_DATA_PORT, 1, vm_i8042_data_pio,
			     l->i8042);
	if (!ret)
		ret = iobus_register(&vm->iobus, IOBUS_PIO, I8042_CMD_PORT, 1, vm_i8042_cmd_pio,
				     l->i8042);
	if (!ret)
		ret = iobus_register(&vm->iobus, IOBUS_PIO, PCI_CFG_PORT, PCI_CFG_LEN,
				     vm_pci_cfg_pio, &l->pci);
	if (!ret)
		ret = iobus_register(&vm->iobus, IOBUS_PIO, ACPI_SLEEP_CONTROL_PORT, ACPI_SLEEP_LEN,
				     vm_sleep_pio, &l->sleep);
	if (ret < 0)
		return err_set(e, ret, "register legacy device ports: %s", strerror(-ret));
	ret = vm_device_register(vm, &vm_i8042_dev, VM_I8042_INSTANCE, l->i8042, e);
	if (!ret)
		ret = vm_device_register(vm, &vm_pci_cfg_dev, VM_PCI_CFG_INSTANCE, &l->pci, e);
	if (ret < 0)
		return err_prefix(e, ret, "register legacy device state");
	return 0;
}

void vm_legacy_destroy(struct vm *vm)
{
	struct vm_legacy *l = vm->legacy;

	if (!l)
		return;
	i8042_destroy(l->i8042);
	free(l);
	vm->legacy = NULL;
}
