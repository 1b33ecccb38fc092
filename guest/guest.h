/* SPDX-License-Identifier: MIT */
/*
 * The godwit guest kit: a freestanding PVH test guest. This header holds the constants the
 * assembly and the C parts share, and the C declarations and small CPU helpers.
 */
#ifndef GODWIT_GUEST_H
#define GODWIT_GUEST_H

/* Segment selectors in our GDT (entry.S). */
#define KERNEL_CS	0x08
#define KERNEL_DS	0x10
#define GDT_SIZE	24

#define MAX_CPUS	64
#define STACK_SHIFT	13			/* 8 KiB stack per vCPU, index = cpu number */
#define STACK_SIZE	(1 << STACK_SHIFT)

/*
 * The AP start-up code is copied here: below 1 MiB as SIPI requires, above godwit's
 * start_info/cmdline/memmap at 0x6000-0x7fff.
 */
#define AP_TRAMPOLINE	0x8000

#define CR0_PE		0x00000001
#define CR0_ET		0x00000010
#define CR0_NW		0x20000000
#define CR0_CD		0x40000000
#define CR0_PG		0x80000000
#define CR4_PAE		0x00000020
#define MSR_EFER	0xc0000080
#define EFER_LME	0x00000100
#define MSR_APIC_BASE	0x1b

/* Page table entry bits. */
#define PTE_P		0x001
#define PTE_W		0x002
#define PTE_PWT		0x008
#define PTE_PCD		0x010
#define PTE_PS		0x080

/* Interrupt vectors. */
#define VEC_TIMER	0x20			/* BSP tick: counts `ticks` */
#define VEC_WAKE	0x21			/* AP timer: only wakes a halted AP */
#define VEC_SPURIOUS	0xff

/* Local APIC registers (offsets from its base). */
#define LAPIC_ID	0x020
#define LAPIC_TPR	0x080
#define LAPIC_EOI	0x0b0
#define LAPIC_SVR	0x0f0
#define LAPIC_ICR_LO	0x300
#define LAPIC_ICR_HI	0x310
#define LAPIC_LVT_TIMER	0x320
#define LAPIC_LVT_LINT0	0x350
#define LAPIC_TMICT	0x380
#define LAPIC_TMCCT	0x390
#define LAPIC_TDCR	0x3e0

#ifndef __ASSEMBLER__

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef uint8_t u8;
typedef uint16_t u16;
typedef uint32_t u32;
typedef uint64_t u64;
typedef int64_t s64;
typedef int32_t s32;
typedef int8_t s8;

#define READ_ONCE(x)		(*(const volatile __typeof__(x) *)&(x))
#define WRITE_ONCE(x, v)	(*(volatile __typeof__(x) *)&(x) = (v))
#define ARRAY_SIZE(a)		(sizeof(a) / sizeof((a)[0]))
#define MIN(a, b)		((a) < (b) ? (a) : (b))

/* errno values (no libc): functions return 0 or one of these, negated */
#define EIO			5
#define ENOMEM			12
#define ENODEV			19
#define EINVAL			22
#define ENOSPC			28
#define ETIMEDOUT		110

/* A 64-bit LCG (Knuth's MMIX constants): the guest's cheap pseudo-random sequence. */
#define LCG_MUL			6364136223846793005ull
#define LCG_ADD			1442695040888963407ull

#define PAGE_SHIFT		12
#define PAGE_SIZE		(1ul << PAGE_SHIFT)
#define MiB			(1ul << 20)
#define GiB			(1ul << 30)

static inline void outb(u16 port, u8 v)
{
	asm volatile("outb %0, %1" : : "a"(v), "Nd"(port));
}

static inline u64 rdmsr(u32 msr)
{
	u32 lo, hi;

	asm volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
	return (u64)hi << 32 | lo;
}

static inline void cpu_relax(void)
{
	asm volatile("pause" : : : "memory");
}

static inline __attribute__((noreturn)) void cpu_park(void)
{
	for (;;)
		asm volatile("cli; hlt" : : : "memory");
}

/* Configuration from the command line (main.c). */
enum workload { WORK_IDLE, WORK_DIRTY, WORK_ABCHECK };
enum content { CONTENT_ZERO, CONTENT_TEXT, CONTENT_RANDOM, CONTENT_MIXED };

struct guest_config {
	enum workload workload;
	u64 wss;		/* bytes */
	u64 rate;		/* pages per second over all vCPUs, 0 = unlimited */
	bool random;		/* pattern=random */
	enum content content;	/* what dirty and abcheck write into a page */
	u32 hz;			/* timer and heartbeat rate */
	u32 stats;		/* seconds between `stats` lines, 0 = none */
	u32 crash_after;	/* crash=sse: heartbeats before an SSE instruction, 0 = never */
	bool fault_flip;	/* fault=flip: abcheck flips a bit before pass 3 */
	bool disk;		/* workload=...,disk: the disk workload beside the memory one */
	u32 disk_blocks;	/* working set on the disk, 512-byte blocks from sector 0 */
	u64 disk_rate;		/* blocks visited per second, 0 = as fast as possible */
	u32 disk_write;		/* percent of visited blocks rewritten */
	bool disk_random;	/* disk_pattern=random */
	bool net;		/* workload=...,net */
	u32 net_ip;		/* ip=A.B.C.D/N, host byte order; 0 = none */
	u32 net_prefix;
	u16 net_port;		/* UDP echo port */
};

#define DISK_BLOCKS_MAX		65536

extern struct guest_config cfg;

/* Guest-physical RAM above the kernel that the working set may use (main.c). */
#define MEM_EXTENTS_MAX	8

struct mem_extent {
	u64 gpa;
	u64 npages;
};

/* console.c */
void uart_init(void);
size_t con_vformat(char *buf, size_t size, const char *fmt, va_list ap);
__attribute__((format(printf, 3, 4))) size_t con_format(char *buf, size_t size,
							 const char *fmt, ...);
__attribute__((format(printf, 1, 2))) void con_printf(const char *fmt, ...);
__attribute__((format(printf, 1, 2))) void con_printf_force(const char *fmt, ...);

/* cpu.c */
extern volatile u64 ticks;
extern u64 lapic;
extern volatile u32 ap_arrivals;
void idt_init(void);
void idt_load(void);
void lapic_init(u32 timer_vector);
void pic_mask(void);
u32 smp_start(void);
void wait_tick(u64 seen);

/* work.c */
int work_setup(u32 ncpus, const struct mem_extent *ram, u32 nram);
__attribute__((noreturn)) void work_run(u32 cpu);
void work_release(u32 ncpus);
u64 work_hb_seq(void);
__attribute__((noreturn)) void ap_main(u32 cpu);

/* content.c: page contents for content=text|random|mixed */
void content_init(void);
u64 content_pages(void);
void content_make(u64 n);
const char *content_name(void);
void content_fill(u64 gpa, u64 salt, u64 word0);
void content_rewrite(u64 gpa, u64 salt, u64 word0);
bool content_check(u64 gpa, u64 salt, u64 word0, u32 *word, u64 *want);

/* blk.c: the disk workload, driven from the boot vCPU's poll */
__attribute__((warn_unused_result)) int disk_setup(void);
void disk_describe(void);
void disk_poll(void);
bool disk_active(void);

/* net.c: the net workload, driven like the disk one */
__attribute__((warn_unused_result)) int net_setup(void);
void net_describe(void);
void net_poll(void);
bool net_active(void);

/* entry.S, trampoline.S */
extern u64 pml4[512], pdpt[512];
extern char ap_trampoline[], ap_trampoline_end[];
extern char isr_stubs[], isr_timer[], isr_wake[], isr_spurious[], isr_nmi[];
extern char __image_end[];
__attribute__((noreturn)) void boot_main(u32 start_info);
__attribute__((noreturn)) void trap_report(const u64 *frame);

/* lib.c: the compiler may emit calls to these even in freestanding code */
void *memcpy(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);
void *memmove(void *dst, const void *src, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);

#endif /* __ASSEMBLER__ */
#endif /* GODWIT_GUEST_H */
