// SPDX-License-Identifier: MIT
/*
 * cpu.c - interrupts, the local APIC timer and bringing up the other vCPUs.
 *
 * The BSP's LAPIC timer is the guest's only clock: its ISR counts `ticks` and everything
 * that needs time (heartbeats, rate limits, SMP start-up waits) reads that counter.
 */
#include "guest.h"
#include "smpwait.h"

volatile u64 ticks;
u64 lapic;			/* LAPIC base, read from the MSR; used through a register */
volatile u32 ap_arrivals;	/* APs that reached long mode (entry.S) */

/* An interrupt gate: 16 bytes in long mode. */
struct idt_gate {
	u16 offset_lo;
	u16 selector;
	u8 ist;
	u8 type;
	u16 offset_mid;
	u32 offset_hi;
	u32 reserved;
} __attribute__((packed));

struct idt_ptr {
	u16 limit;
	u64 base;
} __attribute__((packed));

static struct idt_gate idt[256] __attribute__((aligned(16)));

static void idt_set(u32 vec, const void *handler)
{
	u64 a = (u64)handler;

	idt[vec] = (struct idt_gate){
		.offset_lo = (u16)a,
		.selector = KERNEL_CS,
		.type = 0x8e,		/* present, interrupt gate: IF cleared on entry */
		.offset_mid = (u16)(a >> 16),
		.offset_hi = (u32)(a >> 32),
	};
}

void idt_init(void)
{
	for (u32 v = 0; v < 256; v++)
		idt_set(v, isr_stubs + 16 * v);
	idt_set(2, isr_nmi);
	idt_set(VEC_TIMER, isr_timer);
	idt_set(VEC_WAKE, isr_wake);
	idt_set(VEC_SPURIOUS, isr_spurious);
	idt_load();
}

void idt_load(void)
{
	struct idt_ptr p = { sizeof(idt) - 1, (u64)idt };

	asm volatile("lidt %0" : : "m"(p));
}

static inline u32 lapic_read(u32 reg)
{
	return *(volatile u32 *)(lapic + reg);
}

static inline void lapic_write(u32 reg, u32 v)
{
	*(volatile u32 *)(lapic + reg) = v;
}

/*
 * Enable this vCPU's LAPIC and, if timer_vector is not 0, start its timer: periodic at
 * cfg.hz, divide-by-1 on KVM's 1 GHz APIC bus clock.
 */
void lapic_init(u32 timer_vector)
{
	lapic_write(LAPIC_TPR, 0);
	lapic_write(LAPIC_SVR, 0x100 | VEC_SPURIOUS);
	if (!timer_vector)
		return;
	lapic_write(LAPIC_TDCR, 0xb);
	lapic_write(LAPIC_LVT_TIMER, 0x20000 | timer_vector);
	lapic_write(LAPIC_TMICT, 1000000000u / cfg.hz);
}

/*
 * The BIOS (under QEMU) or KVM's reset state routes the 8259 PIC through LINT0 as ExtINT,
 * and an unprogrammed PIC would deliver the PIT on vectors 0-7, i.e. as exceptions. Mask
 * both the PIC and LINT0; the LAPIC timer is the only interrupt source we want.
 */
void pic_mask(void)
{
	outb(0x21, 0xff);
	outb(0xa1, 0xff);
	lapic_write(LAPIC_LVT_LINT0, 0x10000);
}

/*
 * Sleep until `ticks` moves on from `seen` (on an AP: until its own wake timer fires).
 * cli before the check and `sti; hlt` after it: sti's one-instruction shadow means an
 * interrupt arriving in between still ends the hlt rather than being missed.
 */
void wait_tick(u64 seen)
{
	asm volatile("cli" : : : "memory");
	if (ticks == seen)
		asm volatile("sti; hlt" : : : "memory");
	else
		asm volatile("sti" : : : "memory");
}

/*
 * Nanoseconds since the timer started, from the tick count and the LAPIC timer's current
 * count (1 GHz bus, divide by 1: one count per ns), never less than the previous answer
 * (see smpwait_clock). Interrupts must be enabled. BSP only: the APs count no ticks.
 */
static u64 time_ns(void)
{
	static u64 last;
	u64 period = 1000000000ull / cfg.hz;

	for (;;) {
		u64 t = ticks;
		u32 cc = lapic_read(LAPIC_TMCCT);

		if (ticks == t)
			return smpwait_clock(&last, t, cc, period);
	}
}

static void delay_us(u32 us)
{
	u64 end = time_ns() + (u64)us * 1000;

	while (time_ns() < end)
		asm volatile("pause");
}

/*
 * The number of logical processors CPUID leaf 1 announces (EBX[23:16] when EDX.HTT is
 * set; otherwise one): a hint that lets start-up stop waiting as soon as all have arrived.
 */
static u32 cpu_count_hint(void)
{
	u32 a = 1, b, c = 0, d;

	asm volatile("cpuid" : "+a"(a), "=b"(b), "+c"(c), "=d"(d));
	return (d & (1u << 28)) ? (b >> 16) & 0xff : 1;
}

static void lapic_send_ipi(u32 icr)
{
	lapic_write(LAPIC_ICR_HI, 0);
	lapic_write(LAPIC_ICR_LO, icr);
	for (u32 i = 0; i < 1000 && (lapic_read(LAPIC_ICR_LO) & (1 << 12)); i++)
		cpu_relax();		/* delivery pending */
}

#define ICR_INIT_ALL_BUT_SELF	0x000c4500
#define ICR_SIPI_ALL_BUT_SELF	0x000c4600

/*
 * Start every other vCPU with INIT, SIPI, SIPI (a second SIPI is ignored by an AP that
 * already left wait-for-SIPI). There is no table of CPUs to consult, so count arrivals
 * until CPUID's count has arrived or the count has stood still (see below). Needs the BSP timer
 * running and interrupts on. Returns the number of vCPUs including the BSP.
 */
u32 smp_start(void)
{
	struct smpwait w;
	u32 seen, hint;

	memcpy((void *)AP_TRAMPOLINE, ap_trampoline, (size_t)(ap_trampoline_end - ap_trampoline));

	/*
	 * INIT, then SIPI twice. The waits are far shorter than the MP specification's
	 * 10 ms and 200 us: KVM's in-kernel LAPIC (with or without QEMU) handles each IPI at
	 * once, in order.
	 */
	hint = cpu_count_hint();
	lapic_send_ipi(ICR_INIT_ALL_BUT_SELF);
	delay_us(200);
	lapic_send_ipi(ICR_SIPI_ALL_BUT_SELF | AP_TRAMPOLINE >> 12);
	delay_us(200);
	lapic_send_ipi(ICR_SIPI_ALL_BUT_SELF | AP_TRAMPOLINE >> 12);

	/*
	 * Done when CPUID's count has arrived. Without a count, when arrivals stop for 10 ms
	 * (200 ms cap). With one, the quiet window is 500 ms and the cap 2 s: AP threads on a
	 * loaded 2-core host can be descheduled for more than 100 ms (seen: one AP of 4 late
	 * by over 100 ms in about one boot in 200), and stopping then started the guest with
	 * fewer vCPUs than it was given; a count that is too high only costs the window.
	 * Between checks the BSP halts until its next tick rather than spinning, so its vCPU
	 * thread leaves the host CPU to the APs' threads.
	 */
	w.hint = hint;
	w.quiet = hint > 1 ? 500000000ull : 10000000ull;
	w.cap = hint > 1 ? 2000000000ull : 200000000ull;
	w.start = w.changed = time_ns();
	w.seen = READ_ONCE(ap_arrivals);
	do
		wait_tick(ticks);
	while (!smpwait_done(&w, time_ns(), READ_ONCE(ap_arrivals)));
	seen = w.seen;
	if (hint > 1 && seen + 1 < hint)
		con_printf("warning: %u of %u vCPUs arrived; stopped waiting after %lu ms, the last "
			   "arrival at %lu ms\n", seen + 1, hint, (time_ns() - w.start) / 1000000,
			   (w.changed - w.start) / 1000000);
	if (seen + 1 > MAX_CPUS) {
		con_printf("warning: %u vCPUs, using %u\n", seen + 1, MAX_CPUS);
		return MAX_CPUS;
	}
	return seen + 1;
}

/* The common exception stub's frame: what it pushed, then what the CPU pushed. */
enum { FRAME_VEC, FRAME_ERR, FRAME_RIP, FRAME_CS, FRAME_RFLAGS, FRAME_RSP, FRAME_SS };

void trap_report(const u64 *frame)
{
	u64 cr2;

	asm volatile("mov %%cr2, %0" : "=r"(cr2));
	con_printf_force("exception %lu err=0x%lx rip=0x%lx rsp=0x%lx cr2=0x%lx apic=%u\n",
			 frame[FRAME_VEC], frame[FRAME_ERR], frame[FRAME_RIP], frame[FRAME_RSP],
			 cr2, lapic ? lapic_read(LAPIC_ID) >> 24 : 0);
	cpu_park();
}
