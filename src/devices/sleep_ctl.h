/* SPDX-License-Identifier: MIT */
/*
 * The hardware-reduced ACPI sleep control and status registers (two byte ports that the
 * FADT announces): writing SLP_EN with the \_S5 sleep type powers the machine off
 * (Linux's `poweroff`). No state: the registers read as zero.
 */
#ifndef GODWIT_DEVICES_SLEEP_CTL_H
#define GODWIT_DEVICES_SLEEP_CTL_H

#include <stdbool.h>
#include <stdint.h>

struct sleep_ctl {
	uint8_t s5_type;                /* the SLP_TYP the DSDT gives \_S5 */
	void (*poweroff)(void *opaque); /* called on the vCPU thread */
	void *opaque;
};

/* offset 0 is the control register, 1 the status register */
void sleep_ctl_io(struct sleep_ctl *s, unsigned offset, uint8_t *data, unsigned len,
		  bool is_write);

#endif
