/* SPDX-License-Identifier: MIT */
/*
 * i8042 controller emulation: the command byte, a one-byte output buffer and the
 * commands Linux's i8042 driver and reboot code send. Keyboard and aux device commands
 * go nowhere (no device answers), as on a machine with nothing plugged in.
 */
#include "devices/i8042.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define ST_OBF 0x01      /* output buffer full */
#define ST_SYS 0x04      /* system flag: self-test passed */
#define ST_CMD 0x08      /* the last write was a command */
#define CTR_DEFAULT 0x45 /* keyboard interrupt, system flag, translation */
#define CTR_MASK 0x77
#define OUTPORT_RESET 0x01 /* output line 0: low resets the CPU */
#define STATE_LEN 4

enum {
	CMD_READ_CTR = 0x20,
	CMD_WRITE_CTR = 0x60,
	CMD_AUX_DISABLE = 0xa7,
	CMD_AUX_ENABLE = 0xa8,
	CMD_AUX_TEST = 0xa9,
	CMD_SELF_TEST = 0xaa,
	CMD_KBD_TEST = 0xab,
	CMD_KBD_DISABLE = 0xad,
	CMD_KBD_ENABLE = 0xae,
	CMD_READ_OUTPORT = 0xd0,
	CMD_WRITE_OUTPORT = 0xd1,
	CMD_WRITE_KBD_OUT = 0xd2,
	CMD_WRITE_AUX_OUT = 0xd3,
	CMD_WRITE_AUX = 0xd4,
	CMD_PULSE = 0xf0, /* 0xf0-0xff: pulse the output lines whose bits are clear */
};

struct i8042_regs {
	uint8_t ctr;
	uint8_t out;     /* output buffer */
	uint8_t status;  /* ST_OBF | ST_SYS | ST_CMD */
	uint8_t pending; /* command waiting for its data byte, or 0 */
};

struct i8042 {
	pthread_mutex_t lock;
	struct i8042_regs r;
	struct i8042_ops ops;
	void *opaque;
};

int i8042_create(struct i8042 **out, const struct i8042_ops *ops, void *opaque)
{
	struct i8042 *k = calloc(1, sizeof(*k));

	if (!k)
		return -ENOMEM;
	pthread_mutex_init(&k->lock, NULL);
	k->r.ctr = CTR_DEFAULT;
	k->r.status = ST_SYS;
	k->ops = *ops;
	k->opaque = opaque;
	*out = k;
	return 0;
}

void i8042_destroy(struct i8042 *k)
{
	if (!k)
		return;
	pthread_mutex_destroy(&k->lock);
	free(k);
}

static void i8042_output(struct i8042_regs *r, uint8_t v)
{
	r->out = v;
	r->status |= ST_OBF;
}

/* Returns true if the command resets the machine. */
static bool i8042_command(struct i8042_regs *r, uint8_t cmd)
{
	r->status |= ST_CMD;
	if (cmd >= CMD_PULSE)
		return !(cmd & OUTPORT_RESET);
	switch (cmd) {
	case CMD_READ_CTR:
		i8042_output(r, r->ctr);
		break;
	case CMD_WRITE_CTR:
	case CMD_WRITE_OUTPORT:
	case CMD_WRITE_KBD_OUT:
	case CMD_WRITE_AUX_OUT:
	case CMD_WRITE_AUX:
		r->pending = cmd;
		break;
	case CMD_AUX_DISABLE:
		r->ctr |= 0x20;
		break;
	case CMD_AUX_ENABLE:
		r->ctr &= (uint8_t)~0x20;
		break;
	case CMD_KBD_DISABLE:
		r->ctr |= 0x10;
		break;
	case CMD_KBD_ENABLE:
		r->ctr &= (uint8_t)~0x10;
		break;
	case CMD_SELF_TEST:
		r->status |= ST_SYS;
		i8042_output(r, 0x55);
		break;
	case CMD_AUX_TEST:
	case CMD_KBD_TEST:
		i8042_output(r, 0x00); /* the port's lines test good */
		break;
	case CMD_READ_OUTPORT:
		i8042_output(r, OUTPORT_RESET);
		break;
	default:
		break;
	}
	return false;
}

/* Returns true if the data byte resets the machine. */
static bool i8042_data(struct i8042_regs *r, uint8_t v)
{
	uint8_t cmd = r->pending;

	r->status &= (uint8_t)~ST_CMD;
	r->pending = 0;
	switch (cmd) {
	case CMD_WRITE_CTR:
		r->ctr = v & CTR_MASK;
		break;
	case CMD_WRITE_OUTPORT:
		return !(v & OUTPORT_RESET);
	case CMD_WRITE_KBD_OUT:
	case CMD_WRITE_AUX_OUT:
		i8042_output(r, v); /* loop back, as if the device had sent it */
		break;
	default:
		break; /* to the keyboard or mouse: nothing is there to answer */
	}
	return false;
}

void i8042_io_write(struct i8042 *k, unsigned port, uint8_t val)
{
	bool reset;

	pthread_mutex_lock(&k->lock);
	reset = port == I8042_CMD_PORT ? i8042_command(&k->r, val) : i8042_data(&k->r, val);
	pthread_mutex_unlock(&k->lock);
	if (reset && k->ops.reset)
		k->ops.reset(k->opaque);
}

uint8_t i8042_io_read(struct i8042 *k, unsigned port)
{
	uint8_t v;

	pthread_mutex_lock(&k->lock);
	if (port == I8042_CMD_PORT) {
		v = k->r.status;
	} else {
		v = k->r.out;
		k->r.status &= (uint8_t)~ST_OBF;
	}
	pthread_mutex_unlock(&k->lock);
	return v;
}

int i8042_state_save(struct i8042 *k, struct buf *out)
{
	pthread_mutex_lock(&k->lock);
	buf_put_u8(out, k->r.ctr);
	buf_put_u8(out, k->r.out);
	buf_put_u8(out, k->r.status);
	buf_put_u8(out, k->r.pending);
	pthread_mutex_unlock(&k->lock);
	return buf_status(out);
}

static bool i8042_pending_ok(uint8_t cmd)
{
	return cmd == 0 || cmd == CMD_WRITE_CTR || cmd == CMD_WRITE_OUTPORT ||
	       cmd == CMD_WRITE_KBD_OUT || cmd == CMD_WRITE_AUX_OUT || cmd == CMD_WRITE_AUX;
}

/* Decodes and checks a payload into r without touching a device. */
static int i8042_state_parse(struct i8042_regs *out, uint32_t version, const void *p, size_t len,
			     struct errbuf *e)
{
	struct i8042_regs r;
	const uint8_t *b = p;

	if (version != I8042_STATE_VERSION)
		return err_set(e, -EINVAL, "i8042 state: version %u not supported (this build "
					   "reads %u)", version, I8042_STATE_VERSION);
	if (len != STATE_LEN)
		return err_set(e, -EINVAL, "i8042 state: length %zu, expected %u", len, STATE_LEN);
	r = (struct i8042_regs){ .ctr = b[0], .out = b[1], .status = b[2], .pending = b[3] };
	if (r.ctr & ~CTR_MASK)
		return err_set(e, -EINVAL, "i8042 state: command byte 0x%02x has reserved bits set",
			       r.ctr);
	if (r.status & ~(ST_OBF | ST_SYS | ST_CMD))
		return err_set(e, -EINVAL, "i8042 state: status 0x%02x has bits this device never "
					   "sets", r.status);
	if (!i8042_pending_ok(r.pending))
		return err_set(e, -EINVAL, "i8042 state: 0x%02x is not a command that waits for "
					   "data", r.pending);
	*out = r;
	return 0;
}

int i8042_state_validate(uint32_t version, const void *p, size_t len, struct errbuf *e)
{
	struct i8042_regs r;

	return i8042_state_parse(&r, version, p, len, e);
}

int i8042_state_load(struct i8042 *k, uint32_t version, const void *p, size_t len,
		     struct errbuf *e)
{
	struct i8042_regs r = { 0 };
	int ret = i8042_state_parse(&r, version, p, len, e);

	if (ret < 0)
		return ret;
	pthread_mutex_lock(&k->lock);
	k->r = r;
	pthread_mutex_unlock(&k->lock);
	return 0;
}
