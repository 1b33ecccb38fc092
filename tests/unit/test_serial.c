/* SPDX-License-Identifier: MIT */
/* Unit tests for the 16550A UART: registers, FIFO, interrupts, loopback, state. */
#include "devices/serial.h"

#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

enum { RBR, IER, IIR, LCR, MCR, LSR, MSR, SCR };

/* Records what the device did through its ops. */
struct fake {
	uint8_t out[512];
	size_t out_len;
	bool level;
	unsigned irq_calls;
	unsigned same_level_calls; /* irq_set with the level it already had */
};

static void fake_irq_set(void *opaque, bool level)
{
	struct fake *f = opaque;

	if (level == f->level)
		f->same_level_calls++;
	f->level = level;
	f->irq_calls++;
}

static void fake_output(void *opaque, const uint8_t *p, size_t n)
{
	struct fake *f = opaque;

	assert_true(f->out_len + n <= sizeof(f->out));
	memcpy(f->out + f->out_len, p, n);
	f->out_len += n;
}

static const struct serial_ops fake_ops = {
	.irq_set = fake_irq_set,
	.output = fake_output,
};

static struct serial *mk(struct fake *f)
{
	struct serial *s = NULL;

	memset(f, 0, sizeof(*f));
	assert_int_equal(serial_create(&s, &fake_ops, f), 0);
	assert_non_null(s);
	return s;
}

static void wr(struct serial *s, unsigned off, uint8_t v)
{
	serial_io_write(s, off, v);
}

static uint8_t rd(struct serial *s, unsigned off)
{
	return serial_io_read(s, off);
}

static void test_create_rejects_null_ops(void **state)
{
	struct serial *s = NULL;

	assert_int_equal(serial_create(&s, NULL, NULL), -EINVAL);
	assert_null(s);
	serial_destroy(NULL);
}

static void test_thr_output(void **state)
{
	struct fake f;
	struct serial *s = mk(&f);

	wr(s, RBR, 'h');
	wr(s, RBR, 'i');
	assert_int_equal(f.out_len, 2);
	assert_memory_equal(f.out, "hi", 2);
	/* nothing enabled: no interrupt traffic at all */
	assert_int_equal(f.irq_calls, 0);
	serial_destroy(s);
}

static void test_reset_values_and_lsr(void **state)
{
	struct fake f;
	struct serial *s = mk(&f);
	uint8_t b = 'x';

	assert_int_equal(rd(s, IER), 0);
	assert_int_equal(rd(s, IIR), 0x01);
	assert_int_equal(rd(s, LCR), 0);
	assert_int_equal(rd(s, MCR), 0);
	assert_int_equal(rd(s, LSR), 0x60); /* THRE | TEMT, always */
	assert_int_equal(rd(s, MSR), 0xb0); /* DCD | DSR | CTS: a connected line */
	assert_int_equal(serial_input(s, &b, 1), 1);
	assert_int_equal(rd(s, LSR), 0x61);
	assert_int_equal(rd(s, LSR), 0x61); /* DR is not cleared by reading LSR */
	assert_int_equal(rd(s, RBR), 'x');
	assert_int_equal(rd(s, LSR), 0x60);
	/* an empty FIFO returns the last byte again */
	assert_int_equal(rd(s, RBR), 'x');
	/* LSR and MSR ignore writes; out-of-range offsets read as 0xff */
	wr(s, LSR, 0);
	wr(s, MSR, 0);
	assert_int_equal(rd(s, LSR), 0x60);
	assert_int_equal(rd(s, 8), 0xff);
	wr(s, 9, 0x55);
	wr(s, SCR, 0x5a);
	assert_int_equal(rd(s, SCR), 0x5a);
	serial_destroy(s);
}

static void test_dlab_divisor(void **state)
{
	struct fake f;
	struct serial *s = mk(&f);

	wr(s, IER, 0x05);
	wr(s, LCR, 0x83); /* DLAB, 8N1 */
	wr(s, RBR, 0x01);
	wr(s, IER, 0x02);
	assert_int_equal(rd(s, RBR), 0x01);
	assert_int_equal(rd(s, IER), 0x02);
	assert_int_equal(f.out_len, 0); /* DLL writes are not transmitted */
	wr(s, LCR, 0x03);
	assert_int_equal(rd(s, LCR), 0x03);
	assert_int_equal(rd(s, IER), 0x05); /* IER kept apart from DLM */
	wr(s, RBR, 'A');
	assert_int_equal(f.out_len, 1);
	wr(s, LCR, 0x83);
	assert_int_equal(rd(s, RBR), 0x01);
	assert_int_equal(rd(s, IER), 0x02);
	/* IER's upper bits are reserved */
	wr(s, LCR, 0x03);
	wr(s, IER, 0xff);
	assert_int_equal(rd(s, IER), 0x0f);
	serial_destroy(s);
}

static void test_fifo_receive_overflow(void **state)
{
	struct fake f;
	struct serial *s = mk(&f);
	uint8_t in[100];
	unsigned i;

	for (i = 0; i < sizeof(in); i++)
		in[i] = (uint8_t)i;
	wr(s, IIR, 0x07); /* enable and clear FIFOs */
	assert_int_equal(rd(s, IIR) & 0xc0, 0xc0);
	assert_int_equal(serial_input(s, in, sizeof(in)), SERIAL_FIFO_LEN);
	assert_int_equal(serial_input(s, in, 1), 0); /* full: the caller keeps it */
	assert_int_equal(rd(s, LSR) & 0x02, 0);     /* host input never overruns */
	for (i = 0; i < SERIAL_FIFO_LEN; i++)
		assert_int_equal(rd(s, RBR), i);
	assert_int_equal(rd(s, LSR) & 0x01, 0);

	/* the ring wraps: partial reads and refills keep the order */
	assert_int_equal(serial_input(s, in, 10), 10);
	for (i = 0; i < 5; i++)
		assert_int_equal(rd(s, RBR), i);
	assert_int_equal(serial_input(s, in + 10, 90), 59);
	for (i = 5; i < 69; i++)
		assert_int_equal(rd(s, RBR), i);
	assert_int_equal(rd(s, LSR) & 0x01, 0);

	/* FCR clear-receive empties the FIFO; disabling FIFOs clears it too */
	assert_int_equal(serial_input(s, in, 3), 3);
	wr(s, IIR, 0x03);
	assert_int_equal(rd(s, LSR) & 0x01, 0);
	assert_int_equal(serial_input(s, in, 3), 3);
	wr(s, IIR, 0x00);
	assert_int_equal(rd(s, LSR) & 0x01, 0);
	assert_int_equal(rd(s, IIR) & 0xc0, 0);
	/* without FIFOs the buffer still holds what the host sent */
	assert_int_equal(serial_input(s, in, 100), SERIAL_FIFO_LEN);
	assert_int_equal(rd(s, RBR), 0);
	assert_int_equal(rd(s, RBR), 1);
	serial_destroy(s);
}

static void test_iir_priority(void **state)
{
	struct fake f;
	struct serial *s = mk(&f);
	uint8_t b[4] = { 1, 2, 3, 4 };

	wr(s, IIR, 0x41); /* FIFO on, trigger level 4 */
	wr(s, IER, 0x0f);
	/* only THRE pending (raised by enabling ETBEI) */
	assert_int_equal(rd(s, IIR), 0xc2);
	assert_int_equal(rd(s, IIR), 0xc1); /* acknowledged by the read */

	/* data below the trigger level: character timeout; at the level: data available */
	assert_int_equal(serial_input(s, b, 1), 1);
	assert_int_equal(rd(s, IIR), 0xcc);
	assert_int_equal(serial_input(s, b + 1, 3), 3);
	assert_int_equal(rd(s, IIR), 0xc4);

	/* a line status error outranks received data */
	wr(s, MCR, 0x10); /* loopback (changes the modem lines too) */
	wr(s, IIR, 0x01); /* FIFO stays on, keeps its content */
	{
		unsigned i;

		for (i = 0; i < SERIAL_FIFO_LEN; i++)
			wr(s, RBR, 0xee);
	}
	assert_int_equal(rd(s, IIR), 0xc6);
	assert_int_equal(rd(s, LSR) & 0x02, 0x02); /* OE, cleared by this read */
	assert_int_equal(rd(s, LSR) & 0x02, 0);
	assert_int_equal(rd(s, IIR), 0xc4);
	while (rd(s, LSR) & 0x01)
		(void)rd(s, RBR);
	/* then THRE (the THR writes left it pending), then modem status */
	assert_int_equal(rd(s, IIR), 0xc2);
	assert_int_equal(rd(s, IIR), 0xc0);
	assert_int_equal(rd(s, MSR) & 0x0f, 0x0b); /* DCTS, DDSR, DDCD; cleared by the read */
	assert_int_equal(rd(s, IIR), 0xc1);
	serial_destroy(s);
}

static void test_thre_semantics(void **state)
{
	struct fake f;
	struct serial *s = mk(&f);
	unsigned calls;

	wr(s, MCR, 0x08); /* OUT2 */
	assert_int_equal(f.irq_calls, 0);
	wr(s, IER, 0x02);
	assert_true(f.level);
	assert_int_equal(rd(s, IIR), 0x02);
	assert_false(f.level);
	assert_int_equal(rd(s, IIR), 0x01);
	/* rewriting the same IER does not re-raise an acknowledged THRE */
	wr(s, IER, 0x02);
	assert_false(f.level);
	/* a THR write empties at once, so THRE is raised again */
	wr(s, RBR, 'a');
	assert_true(f.level);
	/* writing THR while the line is high gives a fresh edge (low then high) */
	calls = f.irq_calls;
	wr(s, RBR, 'b');
	assert_int_equal(f.irq_calls, calls + 2);
	assert_true(f.level);
	/* masking ETBEI drops the line; unmasking raises THRE again */
	wr(s, IER, 0x00);
	assert_false(f.level);
	assert_int_equal(rd(s, IIR), 0x01);
	wr(s, IER, 0x02);
	assert_true(f.level);
	/* a reading of IIR that reports something else does not acknowledge THRE */
	{
		uint8_t c = 'z';

		wr(s, IER, 0x03);
		assert_int_equal(serial_input(s, &c, 1), 1);
		assert_int_equal(rd(s, IIR), 0x04);
		assert_int_equal(rd(s, RBR), 'z');
		assert_int_equal(rd(s, IIR), 0x02);
		assert_int_equal(rd(s, IIR), 0x01);
	}
	assert_false(f.level);
	assert_int_equal(f.same_level_calls, 0);
	assert_memory_equal(f.out, "ab", 2);
	serial_destroy(s);
}

static void test_out2_gating(void **state)
{
	struct fake f;
	struct serial *s = mk(&f);
	uint8_t b = 'q';

	wr(s, IER, 0x01);
	assert_int_equal(serial_input(s, &b, 1), 1);
	assert_int_equal(rd(s, IIR), 0x04); /* pending inside the chip ... */
	assert_int_equal(f.irq_calls, 0);   /* ... but OUT2 is off */
	wr(s, MCR, 0x03);                   /* DTR | RTS only */
	assert_int_equal(f.irq_calls, 0);
	wr(s, MCR, 0x0b);
	assert_true(f.level);
	assert_int_equal(f.irq_calls, 1);
	wr(s, MCR, 0x03);
	assert_false(f.level);
	wr(s, MCR, 0x0b);
	assert_true(f.level);
	(void)rd(s, RBR);
	assert_false(f.level);
	assert_int_equal(f.irq_calls, 4);
	assert_int_equal(f.same_level_calls, 0);
	serial_destroy(s);
}

static void test_loopback(void **state)
{
	struct fake f;
	struct serial *s = mk(&f);
	uint8_t b = 'h';

	wr(s, IIR, 0x01);
	wr(s, MCR, 0x10);
	assert_int_equal(rd(s, MSR) & 0xf0, 0x00);
	wr(s, MCR, 0x1a); /* loop | OUT2 | RTS: Linux's probe expects DCD | CTS */
	assert_int_equal(rd(s, MSR) & 0xf0, 0x90);
	wr(s, MCR, 0x15); /* loop | OUT1 | DTR */
	assert_int_equal(rd(s, MSR) & 0xf0, 0x60);
	wr(s, MCR, 0x11);
	assert_int_equal(rd(s, MSR), 0x24); /* DSR, and TERI for RI's trailing edge */

	wr(s, RBR, 'L');
	wr(s, RBR, 'B');
	assert_int_equal(f.out_len, 0);
	assert_int_equal(rd(s, LSR) & 0x01, 0x01);
	assert_int_equal(rd(s, RBR), 'L');
	assert_int_equal(rd(s, RBR), 'B');
	/* the receive pin is disconnected */
	assert_int_equal(serial_input(s, &b, 1), 0);

	/* no interrupt leaves the chip in loopback, OUT2 or not */
	wr(s, IER, 0x0f);
	wr(s, MCR, 0x1f);
	wr(s, RBR, 'x');
	assert_int_equal(rd(s, IIR) & 0x0f, 0x04);
	assert_int_equal(f.irq_calls, 0);
	/* leaving loopback restores the lines, transmission and the interrupt */
	wr(s, MCR, 0x0b);
	assert_true(f.level);
	assert_int_equal(rd(s, MSR) & 0xf0, 0xb0);
	(void)rd(s, RBR);
	wr(s, RBR, 'o');
	assert_int_equal(f.out_len, 1);
	assert_int_equal(f.out[0], 'o');

	/* without FIFOs the loopback receiver holds one byte, then overruns */
	wr(s, IER, 0);
	wr(s, IIR, 0x00);
	wr(s, MCR, 0x10);
	wr(s, RBR, '1');
	wr(s, RBR, '2');
	assert_int_equal(rd(s, LSR), 0x63);
	assert_int_equal(rd(s, RBR), '1');
	assert_int_equal(rd(s, LSR), 0x60);
	serial_destroy(s);
}

static void test_irq_level_transitions(void **state)
{
	struct fake f;
	struct serial *s = mk(&f);
	uint8_t in[8] = "abcdefgh";
	unsigned i;

	wr(s, MCR, 0x08);
	wr(s, IER, 0x01);
	assert_int_equal(f.irq_calls, 0);
	for (i = 0; i < 3; i++) {
		assert_int_equal(serial_input(s, in, 4), 4);
		assert_true(f.level);
		assert_int_equal(serial_input(s, in + 4, 4), 4); /* still high: no call */
		while (rd(s, LSR) & 0x01) {
			assert_true(f.level);
			(void)rd(s, RBR);
		}
		assert_false(f.level);
	}
	assert_int_equal(f.irq_calls, 6);
	assert_int_equal(f.same_level_calls, 0);
	serial_destroy(s);
}

/* A device with most state away from reset, and the interrupt line high. */
static struct serial *mk_busy(struct fake *f)
{
	struct serial *s = mk(f);
	uint8_t in[70];
	unsigned i;

	for (i = 0; i < sizeof(in); i++)
		in[i] = (uint8_t)(0x30 + i);
	wr(s, LCR, 0x80);
	wr(s, RBR, 0x34);
	wr(s, IER, 0x12);
	wr(s, LCR, 0x1b);
	wr(s, IIR, 0x87); /* FIFO, trigger 8 */
	wr(s, SCR, 0xa5);
	assert_int_equal(serial_input(s, in, 40), 40);
	for (i = 0; i < 30; i++)
		(void)rd(s, RBR);
	/* wraps the ring: head at 30, 40 bytes */
	assert_int_equal(serial_input(s, in + 40, 30), 30);
	(void)rd(s, RBR);
	wr(s, MCR, 0x0b);
	wr(s, IER, 0x0e);
	assert_true(f->level);
	return s;
}

static void save(struct serial *s, struct buf *b)
{
	buf_init(b);
	assert_int_equal(serial_state_save(s, b), 0);
}

static void test_state_roundtrip(void **state)
{
	struct fake f1, f2;
	struct serial *a = mk_busy(&f1);
	struct serial *b = mk(&f2);
	struct buf sa, sb;
	struct errbuf e = { { 0 } };
	unsigned i;

	save(a, &sa);
	assert_int_equal(sa.len, 79);
	assert_int_equal(serial_state_load(b, SERIAL_STATE_VERSION, sa.data, sa.len, &e), 0);
	/* the line is re-asserted so the interrupt controller matches */
	assert_int_equal(f2.irq_calls, 1);
	assert_true(f2.level);
	save(b, &sb);
	assert_int_equal(sb.len, sa.len);
	assert_memory_equal(sb.data, sa.data, sa.len);

	/* both devices now behave the same */
	for (i = 0; i < 8; i++)
		assert_int_equal(rd(a, i), rd(b, i));
	wr(a, LCR, 0x9b);
	wr(b, LCR, 0x9b);
	assert_int_equal(rd(a, RBR), 0x34);
	assert_int_equal(rd(b, RBR), 0x34);
	wr(a, LCR, 0x1b);
	wr(b, LCR, 0x1b);
	for (i = 0; i < 70; i++) {
		assert_int_equal(rd(a, LSR), rd(b, LSR));
		assert_int_equal(rd(a, IIR), rd(b, IIR));
		assert_int_equal(rd(a, RBR), rd(b, RBR));
		assert_int_equal(f1.level, f2.level);
	}
	buf_free(&sa);
	buf_free(&sb);
	serial_destroy(a);
	serial_destroy(b);
}

/* Loading p must fail with a message containing msg and change nothing. */
static void expect_load_fails(uint32_t version, const uint8_t *p, size_t len, const char *msg)
{
	struct fake f;
	struct serial *s = mk_busy(&f);
	struct buf before, after;
	struct errbuf e = { { 0 } };
	unsigned calls = f.irq_calls;

	save(s, &before);
	assert_int_equal(serial_state_load(s, version, p, len, &e), -EINVAL);
	if (!strstr(e.msg, msg))
		fail_msg("error \"%s\" does not contain \"%s\"", e.msg, msg);
	assert_int_equal(f.irq_calls, calls);
	save(s, &after);
	assert_int_equal(before.len, after.len);
	assert_memory_equal(before.data, after.data, before.len);
	buf_free(&before);
	buf_free(&after);
	serial_destroy(s);
}

static void test_state_load_rejects(void **state)
{
	struct fake f;
	struct serial *s = mk(&f);
	struct buf good;
	uint8_t p[128];

	/* a reset device's state, to be corrupted field by field */
	save(s, &good);
	serial_destroy(s);
	assert_int_equal(good.len, 79);

	expect_load_fails(2, good.data, good.len, "version 2 not supported");
	expect_load_fails(0, good.data, good.len, "version 0");
	expect_load_fails(1, good.data, good.len - 1, "length 78, expected 79");
	memcpy(p, good.data, good.len);
	p[good.len] = 0;
	expect_load_fails(1, p, good.len + 1, "length 80");
	expect_load_fails(1, p, 0, "length 0");

	memcpy(p, good.data, good.len);
	le_put32(p + 11, 900);
	p[6] |= 0x01; /* keep DR consistent so the count is what is wrong */
	expect_load_fails(1, p, good.len, "serial state: fifo count 900 exceeds 64");
	le_put32(p + 11, 65);
	expect_load_fails(1, p, good.len, "fifo count 65 exceeds 64");

	memcpy(p, good.data, good.len);
	p[2] = 0x10;
	expect_load_fails(1, p, good.len, "IER 0x10 has reserved bits");
	memcpy(p, good.data, good.len);
	p[3] = 0x02;
	expect_load_fails(1, p, good.len, "FCR 0x02 has reserved bits");
	p[3] = 0x80;
	expect_load_fails(1, p, good.len, "without enabling FIFOs");
	memcpy(p, good.data, good.len);
	p[5] = 0x20;
	expect_load_fails(1, p, good.len, "MCR 0x20 has reserved bits");
	memcpy(p, good.data, good.len);
	p[6] = 0x40;
	expect_load_fails(1, p, good.len, "LSR 0x40");
	p[6] = 0x61;
	expect_load_fails(1, p, good.len, "data-ready bit disagrees with fifo count 0");
	memcpy(p, good.data, good.len);
	p[7] = 0x30;
	expect_load_fails(1, p, good.len, "MSR 0x30 does not match MCR");
	memcpy(p, good.data, good.len);
	p[10] = 0x04;
	expect_load_fails(1, p, good.len, "flags 0x04 has reserved bits");
	p[10] = 0x03; /* line high, but OUT2 is off and nothing is enabled */
	expect_load_fails(1, p, good.len, "interrupt line high but the registers say low");

	/* the unmodified payload loads; a NULL errbuf is fine */
	{
		struct fake f2;
		struct serial *s2 = mk(&f2);

		assert_int_equal(serial_state_load(s2, 1, good.data, good.len, NULL), 0);
		assert_int_equal(f2.irq_calls, 1);
		assert_false(f2.level);
		assert_int_equal(serial_state_load(s2, 3, good.data, good.len, NULL), -EINVAL);
		serial_destroy(s2);
	}
	buf_free(&good);
}

/* Counts output bytes; called with the device lock held, so no lock of its own. */
struct counter {
	size_t out;
	unsigned irq_calls;
	bool level;
	bool same_level;
};

static void counter_irq_set(void *opaque, bool level)
{
	struct counter *c = opaque;

	if (level == c->level)
		c->same_level = true;
	c->level = level;
	c->irq_calls++;
}

static void counter_output(void *opaque, const uint8_t *p, size_t n)
{
	struct counter *c = opaque;

	c->out += n;
}

#define WRITERS 4
#define WRITES 5000

static void *writer_thread(void *opaque)
{
	struct serial *s = opaque;
	unsigned i;

	for (i = 0; i < WRITES; i++) {
		serial_io_write(s, RBR, (uint8_t)i);
		if (i % 7 == 0)
			(void)serial_io_read(s, IIR);
		if (i % 5 == 0)
			(void)serial_io_read(s, RBR);
	}
	return NULL;
}

/* vCPU threads and the main thread at once: nothing lost, no irq_set out of order. */
static void test_concurrent_access(void **state)
{
	static const struct serial_ops ops = {
		.irq_set = counter_irq_set,
		.output = counter_output,
	};
	struct counter c = { 0 };
	struct serial *s = NULL;
	pthread_t t[WRITERS];
	uint8_t in[16] = { 0 };
	size_t fed = 0;
	unsigned i;

	assert_int_equal(serial_create(&s, &ops, &c), 0);
	serial_io_write(s, IIR, 0x07);
	serial_io_write(s, MCR, 0x08);
	serial_io_write(s, IER, 0x03);
	for (i = 0; i < WRITERS; i++)
		assert_int_equal(pthread_create(&t[i], NULL, writer_thread, s), 0);
	for (i = 0; i < 20000; i++)
		fed += serial_input(s, in, sizeof(in));
	for (i = 0; i < WRITERS; i++)
		assert_int_equal(pthread_join(t[i], NULL), 0);
	assert_int_equal(c.out, WRITERS * WRITES);
	assert_true(fed >= SERIAL_FIFO_LEN);
	assert_false(c.same_level);
	assert_true(c.irq_calls > 0);
	serial_destroy(s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_create_rejects_null_ops),
		cmocka_unit_test(test_thr_output),
		cmocka_unit_test(test_reset_values_and_lsr),
		cmocka_unit_test(test_dlab_divisor),
		cmocka_unit_test(test_fifo_receive_overflow),
		cmocka_unit_test(test_iir_priority),
		cmocka_unit_test(test_thre_semantics),
		cmocka_unit_test(test_out2_gating),
		cmocka_unit_test(test_loopback),
		cmocka_unit_test(test_irq_level_transitions),
		cmocka_unit_test(test_state_roundtrip),
		cmocka_unit_test(test_state_load_rejects),
		cmocka_unit_test(test_concurrent_access),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
