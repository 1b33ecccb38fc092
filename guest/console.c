// SPDX-License-Identifier: MIT
/*
 * console.c - line output on the 16550 UART at 0x3f8.
 *
 * Each byte written to the data port is one VM exit (~60 us here), so bytes go straight to
 * THR without polling LSR first, which would double the exits. A line is formatted on the
 * stack and written under a spinlock, so lines from different vCPUs never interleave.
 */
#include "guest.h"

#define COM1		0x3f8
#define UART_THR	0
#define UART_IER	1
#define UART_FCR	2
#define UART_LCR	3
#define UART_MCR	4

#define LINE_MAX	160

static u32 con_lock;

void uart_init(void)
{
	outb(COM1 + UART_IER, 0);		/* no UART interrupts */
	outb(COM1 + UART_LCR, 0x80);		/* divisor latch: 115200 baud */
	outb(COM1 + UART_THR, 1);
	outb(COM1 + UART_IER, 0);
	outb(COM1 + UART_LCR, 0x03);		/* 8N1 */
	outb(COM1 + UART_FCR, 0x07);		/* FIFO on and cleared */
	outb(COM1 + UART_MCR, 0x03);		/* DTR, RTS */
}

struct fmt_buf {
	char *p;
	char *end;
};

static void fmt_putc(struct fmt_buf *b, char c)
{
	if (b->p < b->end)
		*b->p++ = c;
}

static void fmt_num(struct fmt_buf *b, u64 v, u32 base, u32 width, char pad)
{
	char digits[24];
	u32 n = 0;

	do {
		digits[n++] = "0123456789abcdef"[v % base];
		v /= base;
	} while (v);
	while (width > n) {
		fmt_putc(b, pad);
		width--;
	}
	while (n)
		fmt_putc(b, digits[--n]);
}

/*
 * A printf subset: %s %c %d %u %x with optional '0', width and 'l'/'ll'. Returns the
 * length written (the line is truncated to the buffer).
 */
size_t con_vformat(char *buf, size_t size, const char *fmt, va_list ap)
{
	struct fmt_buf b = { buf, buf + size };

	for (; *fmt; fmt++) {
		u32 width = 0, longs = 0;
		char pad = ' ';
		u64 v;

		if (*fmt != '%') {
			fmt_putc(&b, *fmt);
			continue;
		}
		fmt++;
		if (*fmt == '0')
			pad = '0';
		while (*fmt >= '0' && *fmt <= '9')
			width = width * 10 + (u32)(*fmt++ - '0');
		while (*fmt == 'l') {
			longs++;
			fmt++;
		}
		switch (*fmt) {
		case 's': {
			const char *s = va_arg(ap, const char *);

			while (*s)
				fmt_putc(&b, *s++);
			break;
		}
		case 'c':
			fmt_putc(&b, (char)va_arg(ap, int));
			break;
		case 'd': {
			int64_t s = longs ? va_arg(ap, long) : va_arg(ap, int);

			if (s < 0) {
				fmt_putc(&b, '-');
				v = -(u64)s;
			} else {
				v = (u64)s;
			}
			fmt_num(&b, v, 10, width, pad);
			break;
		}
		case 'u':
		case 'x':
			v = longs ? va_arg(ap, unsigned long) : va_arg(ap, unsigned int);
			fmt_num(&b, v, *fmt == 'u' ? 10 : 16, width, pad);
			break;
		case '\0':
			fmt--;
			break;
		default:
			fmt_putc(&b, *fmt);
			break;
		}
	}
	return (size_t)(b.p - buf);
}

/* Formats into buf (not NUL-terminated); returns the length. */
size_t con_format(char *buf, size_t size, const char *fmt, ...)
{
	va_list ap;
	size_t n;

	va_start(ap, fmt);
	n = con_vformat(buf, size, fmt, ap);
	va_end(ap);
	return n;
}

static void con_write(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		outb(COM1 + UART_THR, (u8)s[i]);
}

void con_printf(const char *fmt, ...)
{
	char line[LINE_MAX];
	va_list ap;
	size_t n;

	va_start(ap, fmt);
	n = con_vformat(line, sizeof(line), fmt, ap);
	va_end(ap);

	while (__atomic_exchange_n(&con_lock, 1, __ATOMIC_ACQUIRE))
		cpu_relax();
	con_write(line, n);
	__atomic_store_n(&con_lock, 0, __ATOMIC_RELEASE);
}

/*
 * For the exception path, which may have interrupted a holder of the lock: wait a bounded
 * time, then print anyway. A mangled line beats a silent hang.
 */
void con_printf_force(const char *fmt, ...)
{
	char line[LINE_MAX];
	va_list ap;
	size_t n;
	u32 spins;

	va_start(ap, fmt);
	n = con_vformat(line, sizeof(line), fmt, ap);
	va_end(ap);

	for (spins = 0; spins < 100000; spins++) {
		if (!__atomic_exchange_n(&con_lock, 1, __ATOMIC_ACQUIRE))
			break;
		cpu_relax();
	}
	con_write(line, n);
	__atomic_store_n(&con_lock, 0, __ATOMIC_RELEASE);
}
