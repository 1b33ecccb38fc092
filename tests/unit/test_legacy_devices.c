/* SPDX-License-Identifier: MIT */
/*
 * Unit tests for the legacy port devices: the i8042 (controller commands, the reset
 * pulse Linux's `reboot=k` sends, state save/load), the PCI configuration ports with no
 * PCI behind them (latch, all-ones data, 0xcf9 reset) and the ACPI sleep control port.
 */
#include "devices/i8042.h"
#include "devices/pci_cfg.h"
#include "devices/sleep_ctl.h"

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

static int resets;

static void count_reset(void *opaque)
{
	(void)opaque;
	resets++;
}

static struct i8042 *kbc_new(void)
{
	static const struct i8042_ops ops = { .reset = count_reset };
	struct i8042 *k;

	assert_int_equal(i8042_create(&k, &ops, NULL), 0);
	return k;
}

/* a command whose answer is one byte in the output buffer */
static uint8_t kbc_ask(struct i8042 *k, uint8_t cmd)
{
	i8042_io_write(k, I8042_CMD_PORT, cmd);
	assert_true(i8042_io_read(k, I8042_CMD_PORT) & 0x01);
	return i8042_io_read(k, I8042_DATA_PORT);
}

static void test_i8042_commands(void **state)
{
	struct i8042 *k = kbc_new();

	(void)state;
	resets = 0;
	/* nothing to read at first; the system flag is set */
	assert_int_equal(i8042_io_read(k, I8042_CMD_PORT) & 0x05, 0x04);
	assert_int_equal(kbc_ask(k, 0xaa), 0x55);
	assert_int_equal(i8042_io_read(k, I8042_CMD_PORT) & 0x01, 0);
	assert_int_equal(kbc_ask(k, 0xab), 0x00);
	assert_int_equal(kbc_ask(k, 0xa9), 0x00);
	/* the command byte reads back what was written, reserved bits dropped */
	i8042_io_write(k, I8042_CMD_PORT, 0x60);
	i8042_io_write(k, I8042_DATA_PORT, 0x8f);
	assert_int_equal(kbc_ask(k, 0x20), 0x07);
	i8042_io_write(k, I8042_CMD_PORT, 0xad);
	assert_int_equal(kbc_ask(k, 0x20), 0x17);
	/* a byte for the (absent) keyboard is swallowed, no answer */
	i8042_io_write(k, I8042_DATA_PORT, 0xff);
	assert_int_equal(i8042_io_read(k, I8042_CMD_PORT) & 0x01, 0);
	/* 0xd2 loops a byte back through the output buffer */
	i8042_io_write(k, I8042_CMD_PORT, 0xd2);
	i8042_io_write(k, I8042_DATA_PORT, 0x42);
	assert_int_equal(i8042_io_read(k, I8042_DATA_PORT), 0x42);
	assert_int_equal(resets, 0);

	/* pulses that leave line 0 alone do nothing; 0xfe resets */
	i8042_io_write(k, I8042_CMD_PORT, 0xff);
	assert_int_equal(resets, 0);
	i8042_io_write(k, I8042_CMD_PORT, 0xfe);
	assert_int_equal(resets, 1);
	/* so does writing the output port with the reset line low */
	i8042_io_write(k, I8042_CMD_PORT, 0xd1);
	i8042_io_write(k, I8042_DATA_PORT, 0x03);
	assert_int_equal(resets, 1);
	i8042_io_write(k, I8042_CMD_PORT, 0xd1);
	i8042_io_write(k, I8042_DATA_PORT, 0x02);
	assert_int_equal(resets, 2);
	i8042_destroy(k);
}

static void test_i8042_state(void **state)
{
	struct i8042 *a = kbc_new(), *b = kbc_new();
	struct errbuf e = { { 0 } };
	struct buf out = { 0 };
	uint8_t bad[4];

	(void)state;
	/* mid-command: the data byte for "write command byte" has not come yet */
	i8042_io_write(a, I8042_CMD_PORT, 0xaa);
	i8042_io_write(a, I8042_CMD_PORT, 0x60);
	assert_int_equal(i8042_state_save(a, &out), 0);
	assert_int_equal(out.len, 4);
	assert_int_equal(i8042_state_load(b, I8042_STATE_VERSION, out.data, out.len, &e), 0);
	i8042_io_write(b, I8042_DATA_PORT, 0x21);
	assert_int_equal(i8042_io_read(b, I8042_DATA_PORT), 0x55); /* the pending answer */
	assert_int_equal(kbc_ask(b, 0x20), 0x21);

	assert_int_equal(i8042_state_load(b, 2, out.data, out.len, &e), -EINVAL);
	assert_non_null(strstr(e.msg, "version 2"));
	assert_int_equal(i8042_state_load(b, 1, out.data, 3, &e), -EINVAL);
	assert_non_null(strstr(e.msg, "length 3, expected 4"));
	memcpy(bad, out.data, 4);
	bad[0] = 0x80;
	assert_int_equal(i8042_state_load(b, 1, bad, 4, &e), -EINVAL);
	assert_non_null(strstr(e.msg, "command byte 0x80"));
	memcpy(bad, out.data, 4);
	bad[2] = 0x02;
	assert_int_equal(i8042_state_load(b, 1, bad, 4, &e), -EINVAL);
	assert_non_null(strstr(e.msg, "status 0x02"));
	memcpy(bad, out.data, 4);
	bad[3] = 0xaa;
	assert_int_equal(i8042_state_load(b, 1, bad, 4, &e), -EINVAL);
	assert_non_null(strstr(e.msg, "0xaa is not a command that waits"));
	/* a rejected load left b as it was */
	assert_int_equal(kbc_ask(b, 0x20), 0x21);
	buf_free(&out);
	i8042_destroy(a);
	i8042_destroy(b);
}

static void test_pci_cfg(void **state)
{
	struct pci_cfg p, q;
	struct errbuf e = { { 0 } };
	struct buf out = { 0 };
	uint8_t d[4];

	(void)state;
	resets = 0;
	pci_cfg_init(&p, count_reset, NULL);
	/* Linux's type-1 probe: the latch reads back the enable bit and address */
	le_put32(d, 0x80000000);
	pci_cfg_io(&p, 0, d, 4, true);
	memset(d, 0, 4);
	pci_cfg_io(&p, 0, d, 4, false);
	assert_int_equal(le_get32(d), 0x80000000);
	le_put32(d, 0x80001003); /* the low two bits are not part of the address */
	pci_cfg_io(&p, 0, d, 4, true);
	pci_cfg_io(&p, 0, d, 4, false);
	assert_int_equal(le_get32(d), 0x80001000);
	/* no device anywhere: every config data read is all-ones, at any width */
	for (unsigned off = 4; off < 8; off++) {
		memset(d, 0, 4);
		pci_cfg_io(&p, off, d, 1, false);
		assert_int_equal(d[0], 0xff);
	}
	memset(d, 0, 4);
	pci_cfg_io(&p, 4, d, 4, false);
	assert_int_equal(le_get32(d), 0xffffffff);
	pci_cfg_io(&p, 6, d, 2, false);
	assert_int_equal(le_get16(d), 0xffff);
	/* 0xcf9: only the reset bit resets */
	d[0] = 0x02;
	pci_cfg_io(&p, 1, d, 1, true);
	assert_int_equal(resets, 0);
	d[0] = 0x06;
	pci_cfg_io(&p, 1, d, 1, true);
	assert_int_equal(resets, 1);

	assert_int_equal(pci_cfg_state_save(&p, &out), 0);
	pci_cfg_init(&q, count_reset, NULL);
	assert_int_equal(pci_cfg_state_load(&q, PCI_CFG_STATE_VERSION, out.data, out.len, &e), 0);
	pci_cfg_io(&q, 0, d, 4, false);
	assert_int_equal(le_get32(d), 0x80001000);
	le_put32(d, 0x7f000000);
	assert_int_equal(pci_cfg_state_load(&q, 1, d, 4, &e), -EINVAL);
	assert_non_null(strstr(e.msg, "latch 0x7f000000 has reserved bits"));
	assert_int_equal(pci_cfg_state_load(&q, 1, d, 2, &e), -EINVAL);
	assert_int_equal(pci_cfg_state_load(&q, 9, out.data, out.len, &e), -EINVAL);
	buf_free(&out);
}

static void test_sleep_ctl(void **state)
{
	struct sleep_ctl s = { .s5_type = 5, .poweroff = count_reset };
	uint8_t d[1];

	(void)state;
	resets = 0;
	d[0] = (5 << 2); /* S5 without SLP_EN */
	sleep_ctl_io(&s, 0, d, 1, true);
	d[0] = (3 << 2) | 0x20; /* S3 */
	sleep_ctl_io(&s, 0, d, 1, true);
	d[0] = (5 << 2) | 0x20;
	sleep_ctl_io(&s, 1, d, 1, true); /* the status register */
	assert_int_equal(resets, 0);
	sleep_ctl_io(&s, 0, d, 1, true);
	assert_int_equal(resets, 1);
	sleep_ctl_io(&s, 0, d, 1, false);
	assert_int_equal(d[0], 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_i8042_commands),
		cmocka_unit_test(test_i8042_state),
		cmocka_unit_test(test_pci_cfg),
		cmocka_unit_test(test_sleep_ctl),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
