/* SPDX-License-Identifier: MIT */
/*
 * The ACPI tables a Linux guest reads to find its CPUs and interrupt controllers:
 * RSDP -> XSDT -> FADT (hardware-reduced, with a sleep control port for power-off),
 * DSDT (only \_S5) and MADT (one local APIC per vCPU, the IOAPIC, LINT1 as NMI).
 * Debian's kernels are built without MP-table parsing (CONFIG_X86_MPPARSE unset), so
 * ACPI is how an SMP guest learns its vCPUs.
 */
#ifndef GODWIT_ARCH_X86_ACPI_H
#define GODWIT_ARCH_X86_ACPI_H

#include "base/util.h"

#include <stddef.h>
#include <stdint.h>

/* the tables sit in the BIOS area, where Linux also scans for the RSDP */
#define ACPI_TABLES_GPA 0xe0000ull
#define ACPI_TABLES_MAX 0x10000ull
#define ACPI_MAX_CPUS 255          /* one-byte xAPIC IDs in the MADT entries used here */
#define ACPI_IOAPIC_GPA 0xfec00000u
#define ACPI_LAPIC_GPA 0xfee00000u
/* the FADT's sleep control register: SLP_EN | SLP_TYP written here powers off */
#define ACPI_SLEEP_CONTROL_PORT 0x600
#define ACPI_SLEEP_STATUS_PORT 0x601
#define ACPI_SLEEP_LEN 2
#define ACPI_S5_TYPE 5             /* the SLP_TYP \_S5 announces */

/*
 * Writes the tables for nvcpus vCPUs into buf, which is guest-physical ACPI_TABLES_GPA
 * and holds len bytes. Returns the size used, or a negative errno (the error names why).
 * The RSDP is at the start (ACPI_TABLES_GPA).
 */
int __must_check acpi_tables_write(uint8_t *buf, size_t len, unsigned nvcpus, struct errbuf *e);

#endif
