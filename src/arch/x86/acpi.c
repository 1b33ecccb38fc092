/* SPDX-License-Identifier: MIT */
/*
 * ACPI tables for a guest without firmware. Hardware-reduced ACPI (as microVMs use):
 * no PM timer, SCI or GPE blocks to emulate; reset through the i8042 port and power-off
 * through one sleep control port. Fields are written one by one, little-endian.
 */
#include "arch/x86/acpi.h"
#include "base/buf.h"

#include <errno.h>
#include <string.h>

#define ACPI_HDR_LEN 36
#define ACPI_RSDP_LEN 36
#define ACPI_FADT_LEN 276
#define ACPI_GAS_IO 1
#define ACPI_FADT_RESET_REG_SUP (1u << 10)
#define ACPI_FADT_HW_REDUCED (1u << 20)
#define ACPI_BOOT_8042 (1u << 1)
#define ACPI_BOOT_NO_VGA (1u << 2)
#define ACPI_BOOT_NO_CMOS_RTC (1u << 5)
#define ACPI_MADT_PCAT_COMPAT 1u
#define ACPI_RESET_PORT 0x64  /* the i8042's command port; 0xfe pulses the reset line */
#define ACPI_RESET_VALUE 0xfe

/* Name (_S5, Package () { 5, 0, 0, 0 }): lets Linux power off through the FADT */
static const uint8_t acpi_dsdt_aml[] = {
	0x08, '_', 'S', '5', '_', 0x12, 0x07, 0x04, 0x0a, ACPI_S5_TYPE, 0x00, 0x00, 0x00,
};

static uint8_t acpi_sum(const uint8_t *p, size_t n)
{
	uint8_t s = 0;

	while (n--)
		s += *p++;
	return s;
}

static void acpi_header(uint8_t *p, const char *sig, uint32_t len, uint8_t rev)
{
	memcpy(p, sig, 4);
	le_put32(p + 4, len);
	p[8] = rev;
	p[9] = 0;
	memcpy(p + 10, "GODWIT", 6);
	memcpy(p + 16, "GODWITVM", 8);
	le_put32(p + 24, 1);
	memcpy(p + 28, "GDWT", 4);
	le_put32(p + 32, 1);
}

static void acpi_checksum(uint8_t *p, uint32_t len)
{
	p[9] = 0;
	p[9] = (uint8_t)-acpi_sum(p, len);
}

/* Generic Address Structure: a byte-wide I/O port */
static void acpi_gas_io(uint8_t *p, uint16_t port)
{
	p[0] = ACPI_GAS_IO;
	p[1] = 8;
	p[2] = 0;
	p[3] = 1;
	le_put64(p + 4, port);
}

static uint32_t acpi_madt_write(uint8_t *p, unsigned nvcpus)
{
	uint32_t off = ACPI_HDR_LEN + 8;

	le_put32(p + 36, ACPI_LAPIC_GPA);
	le_put32(p + 40, ACPI_MADT_PCAT_COMPAT);
	for (unsigned i = 0; i < nvcpus; i++) {
		/* processor local APIC: ACPI UID and APIC ID both the vCPU index, enabled */
		p[off] = 0;
		p[off + 1] = 8;
		p[off + 2] = (uint8_t)i;
		p[off + 3] = (uint8_t)i;
		le_put32(p + off + 4, 1);
		off += 8;
	}
	/* KVM's in-kernel IOAPIC: ID 0 as its register reads, GSIs from 0 */
	p[off] = 1;
	p[off + 1] = 12;
	p[off + 2] = 0;
	p[off + 3] = 0;
	le_put32(p + off + 4, ACPI_IOAPIC_GPA);
	le_put32(p + off + 8, 0);
	off += 12;
	/* every local APIC's LINT1 is the NMI input (UID 0xff: all processors) */
	p[off] = 4;
	p[off + 1] = 6;
	p[off + 2] = 0xff;
	le_put16(p + off + 3, 0);
	p[off + 5] = 1;
	off += 6;
	acpi_header(p, "APIC", off, 5);
	acpi_checksum(p, off);
	return off;
}

static void acpi_fadt_write(uint8_t *p, uint64_t dsdt)
{
	memset(p, 0, ACPI_FADT_LEN);
	acpi_header(p, "FACP", ACPI_FADT_LEN, 6);
	le_put32(p + 40, (uint32_t)dsdt);
	le_put16(p + 109, ACPI_BOOT_8042 | ACPI_BOOT_NO_VGA | ACPI_BOOT_NO_CMOS_RTC);
	le_put32(p + 112, ACPI_FADT_HW_REDUCED | ACPI_FADT_RESET_REG_SUP);
	acpi_gas_io(p + 116, ACPI_RESET_PORT);
	p[128] = ACPI_RESET_VALUE;
	p[131] = 0; /* FADT minor version */
	le_put64(p + 140, dsdt);
	acpi_gas_io(p + 244, ACPI_SLEEP_CONTROL_PORT);
	acpi_gas_io(p + 256, ACPI_SLEEP_STATUS_PORT);
	memcpy(p + 268, "GODWIT\0\0", 8);
	acpi_checksum(p, ACPI_FADT_LEN);
}

int acpi_tables_write(uint8_t *buf, size_t len, unsigned nvcpus, struct errbuf *e)
{
	/* RSDP, XSDT (two entries), FADT, DSDT, MADT; each table 16-byte aligned */
	uint32_t xsdt = ACPI_RSDP_LEN + 12; /* 48 */
	uint32_t fadt = ALIGN_UP(xsdt + ACPI_HDR_LEN + 16, 16);
	uint32_t dsdt = ALIGN_UP(fadt + ACPI_FADT_LEN, 16);
	uint32_t dsdt_len = ACPI_HDR_LEN + sizeof(acpi_dsdt_aml);
	uint32_t madt = ALIGN_UP(dsdt + dsdt_len, 16);
	uint32_t need = madt + ACPI_HDR_LEN + 8 + 8 * nvcpus + 12 + 6;
	uint8_t *r = buf;

	if (nvcpus < 1 || nvcpus > ACPI_MAX_CPUS)
		return err_set(e, -EINVAL, "ACPI tables: %u vCPUs (1 to %u)", nvcpus,
			       ACPI_MAX_CPUS);
	if (need > len)
		return err_set(e, -ENOSPC, "ACPI tables need %u bytes, %zu available", need, len);
	memset(buf, 0, need);

	acpi_header(buf + xsdt, "XSDT", ACPI_HDR_LEN + 16, 1);
	le_put64(buf + xsdt + ACPI_HDR_LEN, ACPI_TABLES_GPA + fadt);
	le_put64(buf + xsdt + ACPI_HDR_LEN + 8, ACPI_TABLES_GPA + madt);
	acpi_checksum(buf + xsdt, ACPI_HDR_LEN + 16);

	acpi_fadt_write(buf + fadt, ACPI_TABLES_GPA + dsdt);
	acpi_header(buf + dsdt, "DSDT", dsdt_len, 2);
	memcpy(buf + dsdt + ACPI_HDR_LEN, acpi_dsdt_aml, sizeof(acpi_dsdt_aml));
	acpi_checksum(buf + dsdt, dsdt_len);
	acpi_madt_write(buf + madt, nvcpus);

	/* RSDP revision 2: no RSDT, the XSDT's 64-bit address */
	memcpy(r, "RSD PTR ", 8);
	memcpy(r + 9, "GODWIT", 6);
	r[15] = 2;
	le_put32(r + 16, 0);
	le_put32(r + 20, ACPI_RSDP_LEN);
	le_put64(r + 24, ACPI_TABLES_GPA + xsdt);
	r[8] = (uint8_t)-acpi_sum(r, 20);
	r[32] = (uint8_t)-acpi_sum(r, ACPI_RSDP_LEN);
	return (int)need;
}
