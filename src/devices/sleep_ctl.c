/* SPDX-License-Identifier: MIT */
/* ACPI sleep control register: only S5 (soft off) does anything; see sleep_ctl.h. */
#include "devices/sleep_ctl.h"

#include <string.h>

#define SLP_EN 0x20
#define SLP_TYP_SHIFT 2
#define SLP_TYP_MASK 0x7

void sleep_ctl_io(struct sleep_ctl *s, unsigned offset, uint8_t *data, unsigned len,
		  bool is_write)
{
	if (!is_write) {
		memset(data, 0, len);
		return;
	}
	if (offset == 0 && (data[0] & SLP_EN) &&
	    ((data[0] >> SLP_TYP_SHIFT) & SLP_TYP_MASK) == s->s5_type && s->poweroff)
		s->poweroff(s->opaque);
}
