/* SPDX-License-Identifier: MIT */
/*
 * 16550A UART. Transmit is immediate (the transmitter is always empty), receive
 * goes through a 64-byte FIFO, and the interrupt output follows the 16550's
 * priority scheme, gated by MCR.OUT2 as on PC serial ports.
 *
 * Locking: one mutex per device. vCPU threads enter through serial_io_*, the main
 * thread through serial_input, the state code through serial_state_*. The ops
 * callbacks (irq_set, output) are called with the lock held, so they must not call
 * back into this device; in exchange, output from several vCPUs stays in order and
 * irq_set calls are never reordered against each other.
 *
 * State payload, version 1 (79 bytes, little-endian):
 *   u16 divisor      DLL | DLM << 8
 *   u8  ier          bits 7:4 reserved, zero
 *   u8  fcr          FIFO enable, DMA mode, trigger level (bits 0, 3, 7:6); zero if disabled
 *   u8  lcr
 *   u8  mcr          bits 7:5 reserved, zero
 *   u8  lsr          as the guest would read it: DR matches the FIFO count, THRE|TEMT set
 *   u8  msr          status bits 7:4 must match MCR (loopback) or the fixed modem lines
 *   u8  scr
 *   u8  rbr          last byte read (returned again when the FIFO is empty)
 *   u8  flags        bit 0 THRE interrupt pending, bit 1 interrupt line level, rest zero
 *   u32 fifo count   0..64
 *   u8  fifo[64]     oldest byte first; bytes past the count are written as zero
 * The interrupt identification register is derived, so it is not stored; the saved
 * line level must agree with the level the other fields imply.
 */
#include "devices/serial.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

enum {
	UART_RBR = 0, /* THR on write; DLL with DLAB */
	UART_IER = 1, /* DLM with DLAB */
	UART_IIR = 2, /* FCR on write */
	UART_LCR = 3,
	UART_MCR = 4,
	UART_LSR = 5,
	UART_MSR = 6,
	UART_SCR = 7,
};

#define IER_ERBFI 0x01 /* received data available */
#define IER_ETBEI 0x02 /* transmitter holding register empty */
#define IER_ELSI 0x04  /* receiver line status */
#define IER_EDSSI 0x08 /* modem status */
#define IER_MASK 0x0f

#define IIR_NONE 0x01
#define IIR_MSR 0x00
#define IIR_THRE 0x02
#define IIR_RDA 0x04
#define IIR_RLS 0x06
#define IIR_TIMEOUT 0x0c
#define IIR_FIFO 0xc0

#define FCR_ENABLE 0x01
#define FCR_CLEAR_RX 0x02
#define FCR_CLEAR_TX 0x04
#define FCR_DMA 0x08
#define FCR_TRIGGER 0xc0
#define FCR_KEEP (FCR_ENABLE | FCR_DMA | FCR_TRIGGER)

#define LCR_DLAB 0x80

#define MCR_DTR 0x01
#define MCR_RTS 0x02
#define MCR_OUT1 0x04
#define MCR_OUT2 0x08
#define MCR_LOOP 0x10
#define MCR_MASK 0x1f

#define LSR_DR 0x01
#define LSR_OE 0x02
#define LSR_PE 0x04
#define LSR_FE 0x08
#define LSR_BI 0x10
#define LSR_THRE 0x20
#define LSR_TEMT 0x40
#define LSR_RXERR 0x80
#define LSR_ERRORS (LSR_OE | LSR_PE | LSR_FE | LSR_BI)

#define MSR_DCTS 0x01
#define MSR_DDSR 0x02
#define MSR_TERI 0x04
#define MSR_DDCD 0x08
#define MSR_DELTAS 0x0f
#define MSR_CTS 0x10
#define MSR_DSR 0x20
#define MSR_RI 0x40
#define MSR_DCD 0x80

#define FLAG_THR_PENDING 0x01
#define FLAG_IRQ_LEVEL 0x02

#define SERIAL_STATE_LEN (2 + 9 + 4 + SERIAL_FIFO_LEN)

/* Everything that is guest-visible state; the unit of save, validate and apply. */
struct serial_regs {
	uint16_t divisor;
	uint8_t ier;
	uint8_t fcr; /* the FCR bits that persist (FCR_KEEP) */
	uint8_t lcr;
	uint8_t mcr;
	uint8_t lsr_errors; /* latched LSR_ERRORS bits, cleared by reading LSR */
	uint8_t msr_deltas; /* MSR bits 3:0, cleared by reading MSR */
	uint8_t scr;
	uint8_t rbr;
	bool thr_pending; /* THRE interrupt latched: THR emptied and not yet acknowledged */
	bool irq_level;
	uint8_t fifo[SERIAL_FIFO_LEN];
	unsigned fifo_head;
	unsigned fifo_count;
};

struct serial {
	pthread_mutex_t lock;
	struct serial_ops ops;
	void *opaque;
	struct serial_regs r;
};

static const uint8_t serial_trigger_levels[4] = { 1, 4, 8, 14 };

static bool serial_fifo_enabled(const struct serial_regs *r)
{
	return r->fcr & FCR_ENABLE;
}

/* The modem status inputs: MCR outputs wired back in loopback, else a connected line. */
static uint8_t serial_msr_lines(uint8_t mcr)
{
	uint8_t v = 0;

	if (!(mcr & MCR_LOOP))
		return MSR_DCD | MSR_DSR | MSR_CTS;
	if (mcr & MCR_DTR)
		v |= MSR_DSR;
	if (mcr & MCR_RTS)
		v |= MSR_CTS;
	if (mcr & MCR_OUT1)
		v |= MSR_RI;
	if (mcr & MCR_OUT2)
		v |= MSR_DCD;
	return v;
}

static uint8_t serial_lsr(const struct serial_regs *r)
{
	uint8_t v = LSR_THRE | LSR_TEMT | r->lsr_errors;

	if (r->fifo_count)
		v |= LSR_DR;
	return v;
}

/* The highest-priority pending interrupt source, as IIR bits 3:0. */
static uint8_t serial_iir_id(const struct serial_regs *r)
{
	if ((r->ier & IER_ELSI) && (r->lsr_errors & LSR_ERRORS))
		return IIR_RLS;
	if ((r->ier & IER_ERBFI) && r->fifo_count) {
		/*
		 * Below the trigger level a real FIFO reports a character timeout after
		 * four idle character times. Input arrives in bursts and there is no
		 * timer here, so the timeout is treated as already expired.
		 */
		if (serial_fifo_enabled(r) &&
		    r->fifo_count < serial_trigger_levels[(r->fcr & FCR_TRIGGER) >> 6])
			return IIR_TIMEOUT;
		return IIR_RDA;
	}
	if ((r->ier & IER_ETBEI) && r->thr_pending)
		return IIR_THRE;
	if ((r->ier & IER_EDSSI) && (r->msr_deltas & MSR_DELTAS))
		return IIR_MSR;
	return IIR_NONE;
}

/*
 * On a PC the UART's interrupt pin reaches the PIC only through a buffer enabled by
 * the OUT2 pin. Loopback forces the modem outputs, OUT2 included, inactive, so no
 * interrupt leaves the chip in loopback either (IIR still reports it).
 */
static bool serial_irq_wanted(const struct serial_regs *r)
{
	return serial_iir_id(r) != IIR_NONE && (r->mcr & MCR_OUT2) && !(r->mcr & MCR_LOOP);
}

static void serial_irq_update(struct serial *s)
{
	bool level = serial_irq_wanted(&s->r);

	if (level == s->r.irq_level)
		return;
	s->r.irq_level = level;
	if (s->ops.irq_set)
		s->ops.irq_set(s->opaque, level);
}

static void serial_fifo_clear(struct serial_regs *r)
{
	r->fifo_head = 0;
	r->fifo_count = 0;
}

static void serial_fifo_push(struct serial_regs *r, uint8_t v)
{
	r->fifo[(r->fifo_head + r->fifo_count) % SERIAL_FIFO_LEN] = v;
	r->fifo_count++;
}

static void serial_reset(struct serial_regs *r)
{
	memset(r, 0, sizeof(*r));
	r->divisor = 12; /* 9600 baud from the PC's 1.8432 MHz clock */
	/* the transmitter starts empty, so enabling ETBEI raises THRE at once */
	r->thr_pending = true;
}

int serial_create(struct serial **out, const struct serial_ops *ops, void *opaque)
{
	struct serial *s;
	int ret;

	if (!ops)
		return -EINVAL;
	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	ret = pthread_mutex_init(&s->lock, NULL);
	if (ret) {
		free(s);
		return -ret;
	}
	s->ops = *ops;
	s->opaque = opaque;
	serial_reset(&s->r);
	*out = s;
	return 0;
}

void serial_destroy(struct serial *s)
{
	if (!s)
		return;
	pthread_mutex_destroy(&s->lock);
	free(s);
}

static void serial_thr_write(struct serial *s, uint8_t val)
{
	struct serial_regs *r = &s->r;

	/*
	 * Writing THR acknowledges THRE; the byte then leaves at once and THR is empty
	 * again. Dropping the line first gives an edge-triggered PIC a fresh edge for
	 * the next THRE, as the real chip does one character time later.
	 */
	r->thr_pending = false;
	serial_irq_update(s);
	if (r->mcr & MCR_LOOP) {
		unsigned room = serial_fifo_enabled(r) ? SERIAL_FIFO_LEN : 1;

		if (r->fifo_count < room)
			serial_fifo_push(r, val);
		else
			r->lsr_errors |= LSR_OE;
	} else if (s->ops.output) {
		s->ops.output(s->opaque, &val, 1);
	}
	r->thr_pending = true;
}

static void serial_fcr_write(struct serial_regs *r, uint8_t val)
{
	/* toggling FIFO enable resets both FIFOs; other bits need the enable bit set */
	if ((val ^ r->fcr) & FCR_ENABLE)
		serial_fifo_clear(r);
	if (!(val & FCR_ENABLE)) {
		r->fcr = 0;
		return;
	}
	if (val & FCR_CLEAR_RX)
		serial_fifo_clear(r);
	/* FCR_CLEAR_TX: the transmit FIFO is always empty */
	r->fcr = val & FCR_KEEP;
}

static void serial_mcr_write(struct serial_regs *r, uint8_t val)
{
	uint8_t old = serial_msr_lines(r->mcr);
	uint8_t new = serial_msr_lines(val & MCR_MASK);
	uint8_t diff = old ^ new;

	r->mcr = val & MCR_MASK;
	if (diff & MSR_CTS)
		r->msr_deltas |= MSR_DCTS;
	if (diff & MSR_DSR)
		r->msr_deltas |= MSR_DDSR;
	if (diff & MSR_DCD)
		r->msr_deltas |= MSR_DDCD;
	/* TERI reports only the trailing edge of RI */
	if ((old & MSR_RI) && !(new & MSR_RI))
		r->msr_deltas |= MSR_TERI;
}

void serial_io_write(struct serial *s, unsigned offset, uint8_t val)
{
	struct serial_regs *r = &s->r;

	pthread_mutex_lock(&s->lock);
	switch (offset) {
	case UART_RBR:
		if (r->lcr & LCR_DLAB)
			r->divisor = (uint16_t)((r->divisor & 0xff00) | val);
		else
			serial_thr_write(s, val);
		break;
	case UART_IER:
		if (r->lcr & LCR_DLAB) {
			r->divisor = (uint16_t)((r->divisor & 0x00ff) | val << 8);
			break;
		}
		/* enabling ETBEI while THR is empty (always) raises THRE */
		if ((val & IER_ETBEI) && !(r->ier & IER_ETBEI))
			r->thr_pending = true;
		r->ier = val & IER_MASK;
		break;
	case UART_IIR:
		serial_fcr_write(r, val);
		break;
	case UART_LCR:
		r->lcr = val;
		break;
	case UART_MCR:
		serial_mcr_write(r, val);
		break;
	case UART_SCR:
		r->scr = val;
		break;
	default:
		/* LSR and MSR are read-only; the factory test writes are not modelled */
		break;
	}
	serial_irq_update(s);
	pthread_mutex_unlock(&s->lock);
}

uint8_t serial_io_read(struct serial *s, unsigned offset)
{
	struct serial_regs *r = &s->r;
	uint8_t v;

	pthread_mutex_lock(&s->lock);
	switch (offset) {
	case UART_RBR:
		if (r->lcr & LCR_DLAB) {
			v = (uint8_t)r->divisor;
		} else {
			if (r->fifo_count) {
				r->rbr = r->fifo[r->fifo_head];
				r->fifo_head = (r->fifo_head + 1) % SERIAL_FIFO_LEN;
				r->fifo_count--;
			}
			v = r->rbr;
		}
		break;
	case UART_IER:
		v = (r->lcr & LCR_DLAB) ? (uint8_t)(r->divisor >> 8) : r->ier;
		break;
	case UART_IIR:
		v = serial_iir_id(r);
		/* reading IIR acknowledges THRE only when THRE is what it reports */
		if (v == IIR_THRE)
			r->thr_pending = false;
		if (serial_fifo_enabled(r))
			v |= IIR_FIFO;
		break;
	case UART_LCR:
		v = r->lcr;
		break;
	case UART_MCR:
		v = r->mcr;
		break;
	case UART_LSR:
		v = serial_lsr(r);
		r->lsr_errors = 0;
		break;
	case UART_MSR:
		v = serial_msr_lines(r->mcr) | r->msr_deltas;
		r->msr_deltas = 0;
		break;
	case UART_SCR:
		v = r->scr;
		break;
	default:
		v = 0xff;
		break;
	}
	serial_irq_update(s);
	pthread_mutex_unlock(&s->lock);
	return v;
}

size_t serial_input(struct serial *s, const uint8_t *p, size_t n)
{
	struct serial_regs *r = &s->r;
	size_t done = 0;

	pthread_mutex_lock(&s->lock);
	/*
	 * Loopback disconnects the receive pin: nothing is taken. Otherwise the FIFO
	 * buffers the host's bytes even while the guest runs the UART in 16450 mode, so
	 * a slow guest loses nothing; the caller keeps what did not fit.
	 */
	if (!(r->mcr & MCR_LOOP)) {
		while (done < n && r->fifo_count < SERIAL_FIFO_LEN)
			serial_fifo_push(r, p[done++]);
	}
	serial_irq_update(s);
	pthread_mutex_unlock(&s->lock);
	return done;
}

int serial_state_save(struct serial *s, struct buf *out)
{
	const struct serial_regs *r = &s->r;
	unsigned i;

	pthread_mutex_lock(&s->lock);
	buf_put_u16(out, r->divisor);
	buf_put_u8(out, r->ier);
	buf_put_u8(out, r->fcr);
	buf_put_u8(out, r->lcr);
	buf_put_u8(out, r->mcr);
	buf_put_u8(out, serial_lsr(r));
	buf_put_u8(out, serial_msr_lines(r->mcr) | r->msr_deltas);
	buf_put_u8(out, r->scr);
	buf_put_u8(out, r->rbr);
	buf_put_u8(out, (uint8_t)((r->thr_pending ? FLAG_THR_PENDING : 0) |
				  (r->irq_level ? FLAG_IRQ_LEVEL : 0)));
	buf_put_u32(out, r->fifo_count);
	for (i = 0; i < SERIAL_FIFO_LEN; i++)
		buf_put_u8(out, i < r->fifo_count ?
					r->fifo[(r->fifo_head + i) % SERIAL_FIFO_LEN] : 0);
	pthread_mutex_unlock(&s->lock);
	return buf_status(out);
}

/* Decodes and checks a payload into r without touching the device. */
static int serial_state_parse(struct serial_regs *r, uint32_t version, const void *p, size_t len,
			      struct errbuf *e)
{
	struct buf_reader rd;
	uint8_t lsr, msr, flags, want;
	uint32_t count;

	if (version != SERIAL_STATE_VERSION)
		return err_set(e, -EINVAL, "serial state: version %u not supported (this build reads %u)",
			       version, SERIAL_STATE_VERSION);
	if (len != SERIAL_STATE_LEN)
		return err_set(e, -EINVAL, "serial state: length %zu, expected %u", len,
			       SERIAL_STATE_LEN);

	memset(r, 0, sizeof(*r));
	buf_reader_init(&rd, p, len);
	r->divisor = buf_get_u16(&rd);
	r->ier = buf_get_u8(&rd);
	r->fcr = buf_get_u8(&rd);
	r->lcr = buf_get_u8(&rd);
	r->mcr = buf_get_u8(&rd);
	lsr = buf_get_u8(&rd);
	msr = buf_get_u8(&rd);
	r->scr = buf_get_u8(&rd);
	r->rbr = buf_get_u8(&rd);
	flags = buf_get_u8(&rd);
	count = buf_get_u32(&rd);
	buf_get_bytes(&rd, r->fifo, SERIAL_FIFO_LEN);
	if (!buf_reader_done(&rd))
		return err_set(e, -EINVAL, "serial state: truncated payload");

	if (count > SERIAL_FIFO_LEN)
		return err_set(e, -EINVAL, "serial state: fifo count %u exceeds %u", count,
			       SERIAL_FIFO_LEN);
	r->fifo_count = count;
	if (r->ier & ~IER_MASK)
		return err_set(e, -EINVAL, "serial state: IER 0x%02x has reserved bits set", r->ier);
	if (r->fcr & ~FCR_KEEP)
		return err_set(e, -EINVAL, "serial state: FCR 0x%02x has reserved bits set", r->fcr);
	if (r->fcr && !(r->fcr & FCR_ENABLE))
		return err_set(e, -EINVAL, "serial state: FCR 0x%02x sets FIFO modes without enabling FIFOs",
			       r->fcr);
	if (r->mcr & ~MCR_MASK)
		return err_set(e, -EINVAL, "serial state: MCR 0x%02x has reserved bits set", r->mcr);
	if ((lsr & (LSR_THRE | LSR_TEMT)) != (LSR_THRE | LSR_TEMT) || (lsr & LSR_RXERR))
		return err_set(e, -EINVAL, "serial state: LSR 0x%02x is not possible here (transmitter is always empty, no FIFO errors)",
			       lsr);
	if (!!(lsr & LSR_DR) != !!count)
		return err_set(e, -EINVAL, "serial state: LSR data-ready bit disagrees with fifo count %u",
			       count);
	r->lsr_errors = lsr & LSR_ERRORS;
	want = serial_msr_lines(r->mcr);
	if ((msr & ~MSR_DELTAS) != want)
		return err_set(e, -EINVAL, "serial state: MSR 0x%02x does not match MCR 0x%02x (expected lines 0x%02x)",
			       msr, r->mcr, want);
	r->msr_deltas = msr & MSR_DELTAS;
	if (flags & ~(FLAG_THR_PENDING | FLAG_IRQ_LEVEL))
		return err_set(e, -EINVAL, "serial state: flags 0x%02x has reserved bits set", flags);
	r->thr_pending = flags & FLAG_THR_PENDING;
	r->irq_level = flags & FLAG_IRQ_LEVEL;
	if (r->irq_level != serial_irq_wanted(r))
		return err_set(e, -EINVAL, "serial state: interrupt line %s but the registers say %s",
			       r->irq_level ? "high" : "low", r->irq_level ? "low" : "high");
	return 0;
}

int serial_state_load(struct serial *s, uint32_t version, const void *p, size_t len,
		      struct errbuf *e)
{
	struct serial_regs staged;
	int ret;

	ret = serial_state_parse(&staged, version, p, len, e);
	if (ret)
		return ret;
	pthread_mutex_lock(&s->lock);
	s->r = staged;
	/* always, even if unchanged: the interrupt controller may be fresh or restored */
	if (s->ops.irq_set)
		s->ops.irq_set(s->opaque, s->r.irq_level);
	pthread_mutex_unlock(&s->lock);
	return 0;
}

/* ---- the UART as a device of the device model ---- */

static int serial_dev_validate(void *dev, uint32_t version, const void *p, size_t len,
			       struct errbuf *e)
{
	struct serial_regs staged;

	(void)dev;
	return serial_state_parse(&staged, version, p, len, e);
}

static int serial_dev_save(void *dev, struct buf *out)
{
	return serial_state_save(dev, out);
}

static int serial_dev_load(void *dev, uint32_t version, const void *p, size_t len,
			   struct errbuf *e)
{
	return serial_state_load(dev, version, p, len, e);
}

static void serial_dev_reset(void *dev)
{
	struct serial *s = dev;

	pthread_mutex_lock(&s->lock);
	serial_reset(&s->r);
	pthread_mutex_unlock(&s->lock);
}

static void serial_dev_destroy(void *dev)
{
	serial_destroy(dev);
}

void serial_pio(void *dev, uint64_t offset, uint8_t *data, unsigned len, bool is_write)
{
	struct serial *s = dev;

	if (is_write)
		serial_io_write(s, (unsigned)offset, data[0]);
	else
		data[0] = serial_io_read(s, (unsigned)offset);
	for (unsigned i = 1; i < len; i++)
		if (!is_write)
			data[i] = 0xff;
}

/* No quiesce: a register access completes on the vCPU thread that made it. */
const struct device_ops serial_device_ops = {
	.name = "serial8250",
	.version = SERIAL_STATE_VERSION,
	.reset = serial_dev_reset,
	.save = serial_dev_save,
	.validate = serial_dev_validate,
	.load = serial_dev_load,
	.destroy = serial_dev_destroy,
};
