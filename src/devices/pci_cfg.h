/* SPDX-License-Identifier: MIT */
/*
 * PCI configuration mechanism #1 on a machine without PCI: the address latch at 0xcf8
 * reads back what was written (so Linux finds a type-1 host bridge), every config data
 * read at 0xcfc-0xcff is all-ones (no device at any address), data writes are dropped.
 * Port 0xcf9, the reset control register, resets the machine when its reset bit is
 * written (Linux's `reboot=p`). The latch is the only state.
 */
#ifndef GODWIT_DEVICES_PCI_CFG_H
#define GODWIT_DEVICES_PCI_CFG_H

#include "base/buf.h"
#include "base/util.h"

#include <stddef.h>
#include <stdint.h>

#define PCI_CFG_PORT 0xcf8
#define PCI_CFG_LEN 8
#define PCI_CFG_STATE_VERSION 1

struct pci_cfg {
	_Atomic uint32_t latch;
	void (*reset)(void *opaque); /* called on the vCPU thread */
	void *opaque;
};

void pci_cfg_init(struct pci_cfg *p, void (*reset)(void *opaque), void *opaque);
/* offset 0..7 from PCI_CFG_PORT; data holds len (1, 2 or 4) bytes */
void pci_cfg_io(struct pci_cfg *p, unsigned offset, uint8_t *data, unsigned len, bool is_write);
int __must_check pci_cfg_state_save(struct pci_cfg *p, struct buf *out);
/* The checks of pci_cfg_state_load alone: no device is needed or touched. */
int __must_check pci_cfg_state_validate(uint32_t version, const void *d, size_t len,
					struct errbuf *e);
int __must_check pci_cfg_state_load(struct pci_cfg *p, uint32_t version, const void *d,
				    size_t len, struct errbuf *e);

#endif
