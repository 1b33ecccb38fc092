/* SPDX-License-Identifier: MIT */
/* "No PCI" behind the type-1 configuration ports; see pci_cfg.h. */
#include "devices/pci_cfg.h"

#include <errno.h>
#include <string.h>

#define RCR_OFFSET 1       /* 0xcf9 */
#define RCR_RESET 0x04     /* RST_CPU */
#define LATCH_MASK 0x80fffffcu /* enable, bus, device, function, register (dword) */

void pci_cfg_init(struct pci_cfg *p, void (*reset)(void *opaque), void *opaque)
{
	p->latch = 0;
	p->reset = reset;
	p->opaque = opaque;
}

void pci_cfg_io(struct pci_cfg *p, unsigned offset, uint8_t *data, unsigned len, bool is_write)
{
	if (offset == 0 && len == 4) {
		/* only a 32-bit access to 0xcf8 is the address latch */
		if (is_write)
			p->latch = le_get32(data) & LATCH_MASK;
		else
			le_put32(data, p->latch);
		return;
	}
	if (offset == RCR_OFFSET && len == 1) {
		if (is_write && (data[0] & RCR_RESET) && p->reset)
			p->reset(p->opaque);
		else if (!is_write)
			data[0] = 0;
		return;
	}
	/* config data (0xcfc-0xcff) and narrow latch accesses: no device answers */
	if (!is_write)
		memset(data, 0xff, len);
}

int pci_cfg_state_save(struct pci_cfg *p, struct buf *out)
{
	buf_put_u32(out, p->latch);
	return buf_status(out);
}

/* Decodes and checks a payload into *latch without touching a device. */
static int pci_cfg_state_parse(uint32_t *latch, uint32_t version, const void *d, size_t len,
			       struct errbuf *e)
{
	uint32_t v;

	if (version != PCI_CFG_STATE_VERSION)
		return err_set(e, -EINVAL, "pci config state: version %u not supported (this build "
					   "reads %u)", version, PCI_CFG_STATE_VERSION);
	if (len != 4)
		return err_set(e, -EINVAL, "pci config state: length %zu, expected 4", len);
	v = le_get32(d);
	if (v & ~LATCH_MASK)
		return err_set(e, -EINVAL, "pci config state: address latch 0x%08x has reserved "
					   "bits set", v);
	*latch = v;
	return 0;
}

int pci_cfg_state_validate(uint32_t version, const void *d, size_t len, struct errbuf *e)
{
	uint32_t v;

	return pci_cfg_state_parse(&v, version, d, len, e);
}

int pci_cfg_state_load(struct pci_cfg *p, uint32_t version, const void *d, size_t len,
		       struct errbuf *e)
{
	uint32_t v = 0;
	int ret = pci_cfg_state_parse(&v, version, d, len, e);

	if (ret < 0)
		return ret;
	p->latch = v;
	return 0;
}
