// SPDX-License-Identifier: MIT
/*
 * work.c - what the guest does once it runs: heartbeats, and the dirty and abcheck memory
 * workloads over a working set split into one slice per vCPU.
 *
 * Every instruction here goes through KVM's emulator (~1 us each), so the page loops are
 * kept to about ten instructions a page. They return whenever the BSP's tick counter moves
 * so the caller can print the heartbeat (BSP) and recheck the rate budget; the heartbeat
 * sequence is therefore paced by the timer whatever the workload does.
 */
#include "guest.h"

/* Stamp multiplier for abcheck: odd, so stamps of different passes differ. */
#define AB_MUL		0x9e3779b97f4a7c15ull
#define AB_LINES_MAX	4		/* `check fail` lines per pass */

struct cpu {
	u32 id;
	u32 next;			/* extents used in ext[] */
	u64 seen_tick;			/* last tick this vCPU acted on */
	u64 pages;			/* size of this vCPU's slice */
	u64 rate;			/* its share of rate=, pages/s; 0 = unlimited */
	u64 start_tick;			/* rate accounting: written `done` since then */
	u64 done;			/* pages written (also read for `stats`) */
	u64 val;			/* next value for dirty */
	u64 rng;			/* LCG state for pattern=random */
	u64 bad;			/* abcheck mismatches in this pass */
	struct mem_extent ext[MEM_EXTENTS_MAX];
} __attribute__((aligned(64)));

static struct cpu cpus[MAX_CPUS];
static u32 ncpus_run;
static u32 go;				/* set once the slices are ready */
static u64 hb_seq;			/* BSP only */

/* abcheck's barrier: the last vCPU to finish a pass reports it and releases the others. */
static u32 ab_arrived;
static u64 ab_bad;
static u32 ab_lines;
static u64 ab_released;			/* passes completed by every vCPU */

/* content=: the pools are made by all vCPUs before the workload starts. */
static u32 content_arrived;
static u32 content_done;
static u64 content_start;		/* tick the making started */

static const char *const workload_names[] = {
	[WORK_IDLE] = "idle", [WORK_DIRTY] = "dirty", [WORK_ABCHECK] = "abcheck",
};

/* Sizes are printed the way they are written on the command line: 16M, not 16777216. */
static void size_split(u64 bytes, u64 *n, const char **unit)
{
	static const char *const units[] = { "", "K", "M", "G", "T" };
	u32 i = 0;

	while (i + 1 < ARRAY_SIZE(units) && bytes && !(bytes & 1023)) {
		bytes >>= 10;
		i++;
	}
	*n = bytes;
	*unit = units[i];
}

/* Pages [lo, hi) of the working set (extents ws in order) become c's slice. */
static void slice_build(struct cpu *c, const struct mem_extent *ws, u32 nws, u64 lo, u64 hi)
{
	u64 base = 0;

	c->pages = hi - lo;
	for (u32 i = 0; i < nws; base += ws[i].npages, i++) {
		u64 s = lo > base ? lo : base;
		u64 e = MIN(hi, base + ws[i].npages);

		if (s < e)
			c->ext[c->next++] = (struct mem_extent){
				ws[i].gpa + ((s - base) << PAGE_SHIFT), e - s };
	}
}

/*
 * The working set is the first wss bytes of RAM from 16 MiB up (ram[]: sorted, may span
 * a hole such as the one below 4 GiB), cut into one contiguous slice per vCPU.
 */
int work_setup(u32 ncpus, const struct mem_extent *ram, u32 nram)
{
	struct mem_extent ws[MEM_EXTENTS_MAX];
	u64 want = cfg.wss >> PAGE_SHIFT, total = 0, n;
	const char *unit;
	u32 nws = 0;

	for (u32 i = 0; i < nram && total < want; i++) {
		u64 take = MIN(ram[i].npages, want - total);

		ws[nws++] = (struct mem_extent){ ram[i].gpa, take };
		total += take;
	}
	if (!want || total < want) {
		size_split(cfg.wss, &n, &unit);
		con_printf("error: wss %lu%s does not fit in memory\n", n, unit);
		return -1;
	}
	for (u32 i = 0; i < nws; i++)
		con_printf("wss range 0x%lx-0x%lx\n", ws[i].gpa,
			   ws[i].gpa + (ws[i].npages << PAGE_SHIFT));
	for (u32 i = 0; i < ncpus; i++) {
		struct cpu *c = &cpus[i];

		slice_build(c, ws, nws, want * i / ncpus, want * (i + 1) / ncpus);
		c->rate = cfg.rate / ncpus + (i < cfg.rate % ncpus);
		c->val = (u64)(i + 1) << 48;
		c->rng = i;			/* any seed works for an LCG */
	}
	if (cfg.content)
		content_init();
	return 0;
}

/* Tell the APs waiting in ap_main() how many run, and let them go. */
void work_release(u32 ncpus)
{
	const char *unit;
	u64 n;

	size_split(cfg.wss, &n, &unit);
	if (cfg.workload == WORK_IDLE)
		con_printf("workload idle hz=%u\n", cfg.hz);
	else
		con_printf("workload %s wss=%lu%s pages=%lu rate=%lu pattern=%s hz=%u%s%s\n",
			   workload_names[cfg.workload], n, unit, cfg.wss >> PAGE_SHIFT,
			   cfg.rate, cfg.random ? "random" : "seq", cfg.hz,
			   cfg.content ? " content=" : "", cfg.content ? content_name() : "");
	if (cfg.disk)
		disk_describe();
	if (cfg.net)
		net_describe();
	ncpus_run = ncpus;
	content_start = ticks;
	__atomic_store_n(&go, 1, __ATOMIC_RELEASE);
}

/* The last heartbeat printed (the net workload's replies carry it). */
u64 work_hb_seq(void)
{
	return READ_ONCE(hb_seq);
}

/* The device workloads, on the BSP. */
static void dev_poll(void)
{
	if (cfg.disk)
		disk_poll();
	if (cfg.net)
		net_poll();
}

/* Whether a device workload wants the idle BSP polling instead of sleeping. */
static bool dev_busy(void)
{
	return (cfg.disk && !cfg.disk_rate && disk_active()) || (cfg.net && net_active());
}

/* stats=N: pages written by all vCPUs, for checking the rate a workload really runs at. */
static void stats_print(u64 t)
{
	u64 pages = 0;

	for (u32 i = 0; i < ncpus_run; i++)
		pages += READ_ONCE(cpus[i].done);
	con_printf("stats ticks=%lu pages=%lu\n", t, pages);
}

/* Called whenever a loop returns: one heartbeat per tick seen changed, never a burst. */
static void cpu_poll(struct cpu *c)
{
	u64 t = ticks;

	if (t == c->seen_tick)
		return;
	c->seen_tick = t;
	if (c->id)
		return;
	con_printf("hb %lu\n", ++hb_seq);
	dev_poll();
	if (cfg.crash_after && hb_seq == cfg.crash_after) {
		con_printf("crashing on purpose: movq %%rax, %%xmm0\n");
		/* movq %rax,%xmm0, as bytes: the guest is built without SSE */
		asm volatile(".byte 0x66, 0x48, 0x0f, 0x6e, 0xc0" ::: "memory");
	}
	if (cfg.stats && hb_seq % ((u64)cfg.stats * cfg.hz) == 0)
		stats_print(t);
}

/* How many of want pages c may write now; sleeps to the next tick while over its share. */
static u64 rate_allow(struct cpu *c, u64 want)
{
	if (!c->rate)
		return want;
	for (;;) {
		u64 allowed = c->rate * (c->seen_tick - c->start_tick + 1) / cfg.hz;

		if (allowed > c->done)
			return MIN(want, allowed - c->done);
		wait_tick(c->seen_tick);
		cpu_poll(c);
	}
}

/* pattern=seq: n pages from gpa on, one word each. */
static u64 dirty_seq_run(struct cpu *c, u64 gpa, u64 n)
{
	u64 *p = (u64 *)gpa, v = c->val, t = c->seen_tick, i = 0;

	if (cfg.content) {		/* whole pages: see content.c */
		while (i < n) {
			content_rewrite(gpa, v, v);
			v++;
			gpa += PAGE_SIZE;
			i++;
			if (ticks != t)
				break;
		}
		c->val = v;
		return i;
	}
	while (i < n) {
		*p = v++;
		p += PAGE_SIZE / sizeof(*p);
		i++;
		if (ticks != t)
			break;
	}
	c->val = v;
	return i;
}

/*
 * pattern=random: n pages picked by a 64-bit LCG, scaled to the slice by a multiply. An
 * LCG costs two instructions where xorshift takes six, and every instruction counts here;
 * its high half, the part used, scatters well enough for a dirty-page workload.
 */
/* content is a constant in each caller, so each gets a loop without the test. */
static inline __attribute__((always_inline)) u64 dirty_random_loop(struct cpu *c, u64 n,
								   bool content)
{
	u64 x = c->rng, v = c->val, t = c->seen_tick, pages = c->pages, i = 0;

	while (i < n) {
		const struct mem_extent *e = c->ext;
		u64 idx;

		x = x * LCG_MUL + LCG_ADD;
		idx = ((x >> 32) * pages) >> 32;
		while (idx >= e->npages) {	/* slices rarely span more than one extent */
			idx -= e->npages;
			e++;
		}
		if (content)
			content_rewrite(e->gpa + (idx << PAGE_SHIFT), v, v);
		else
			*(u64 *)(e->gpa + (idx << PAGE_SHIFT)) = v;
		v++;
		i++;
		if (ticks != t)
			break;
	}
	c->rng = x;
	c->val = v;
	return i;
}

static u64 dirty_random_run(struct cpu *c, u64 n)
{
	return cfg.content ? dirty_random_loop(c, n, true) : dirty_random_loop(c, n, false);
}

static void dirty(struct cpu *c)
{
	u64 off = 0;
	u32 e = 0;

	c->start_tick = c->seen_tick;
	for (;;) {
		u64 n;

		if (cfg.random) {
			n = dirty_random_run(c, rate_allow(c, ~0ull));
		} else {
			n = dirty_seq_run(c, c->ext[e].gpa + (off << PAGE_SHIFT),
					  rate_allow(c, c->ext[e].npages - off));
			off += n;
			if (off == c->ext[e].npages) {
				off = 0;
				if (++e == c->next)
					e = 0;
			}
		}
		c->done += n;
		cpu_poll(c);
	}
}

static __attribute__((noinline, cold)) void ab_mismatch(struct cpu *c, u64 gpa, u64 want,
							 u64 got)
{
	c->bad++;
	if (__atomic_fetch_add(&ab_lines, 1, __ATOMIC_RELAXED) < AB_LINES_MAX)
		con_printf("check fail 0x%lx 0x%lx 0x%lx\n", gpa, want, got);
}

/* ab_run() with content: the whole page is checked and rewritten (content.c). */
static u64 ab_run_content(struct cpu *c, u64 gpa, u64 n, u64 pass)
{
	const u64 old = (pass - 1) * AB_MUL, cur = pass * AB_MUL, t = c->seen_tick;
	u64 i = 0, want;
	u32 word;

	while (i < n) {
		if (pass && !content_check(gpa, pass - 1, old ^ gpa, &word, &want))
			ab_mismatch(c, gpa + word * 8, want, ((const u64 *)gpa)[word]);
		content_fill(gpa, pass, cur ^ gpa);
		gpa += PAGE_SIZE;
		i++;
		if (ticks != t)
			break;
	}
	return i;
}

/*
 * One stretch of an abcheck pass: each page must hold the stamp of the previous pass
 * ((pass - 1) * AB_MUL ^ gpa; pass 0 only writes) and gets this pass's stamp.
 */
static u64 ab_run(struct cpu *c, u64 gpa, u64 n, u64 pass)
{
	const u64 old = (pass - 1) * AB_MUL, cur = pass * AB_MUL, t = c->seen_tick;
	u64 i = 0;

	if (cfg.content)
		return ab_run_content(c, gpa, n, pass);
	while (i < n) {
		u64 *p = (u64 *)gpa;

		if (pass && *p != (old ^ gpa))
			ab_mismatch(c, gpa, old ^ gpa, *p);
		*p = cur ^ gpa;
		gpa += PAGE_SIZE;
		i++;
		if (ticks != t)
			break;
	}
	return i;
}

static void ab_barrier(struct cpu *c, u64 pass)
{
	if (c->bad) {
		__atomic_fetch_add(&ab_bad, c->bad, __ATOMIC_RELAXED);
		c->bad = 0;
	}
	if (__atomic_add_fetch(&ab_arrived, 1, __ATOMIC_ACQ_REL) == ncpus_run) {
		if (pass && ab_bad)
			con_printf("check bad %lu %lu\n", pass, ab_bad);
		else if (pass)
			con_printf("check ok %lu\n", pass);
		ab_bad = 0;
		ab_lines = 0;
		ab_arrived = 0;
		__atomic_store_n(&ab_released, pass + 1, __ATOMIC_RELEASE);
		return;
	}
	while (__atomic_load_n(&ab_released, __ATOMIC_ACQUIRE) <= pass) {
		cpu_relax();
		cpu_poll(c);
	}
}

static void abcheck(struct cpu *c)
{
	for (u64 pass = 0;; pass++) {
		if (cfg.fault_flip && pass == 3 && !c->id) {
			/* fault=flip: proof that a wrong word is seen (word 0 is all zero checks) */
			con_printf("flipping a bit on purpose\n");
			((volatile u64 *)c->ext[0].gpa)[cfg.content ? 100 : 0] ^= 1;
		}
		for (u32 e = 0; e < c->next; e++) {
			u64 gpa = c->ext[e].gpa, left = c->ext[e].npages;

			while (left) {
				u64 n = ab_run(c, gpa, left, pass);

				gpa += n << PAGE_SHIFT;
				left -= n;
				c->done += n;
				cpu_poll(c);
			}
		}
		ab_barrier(c, pass);
	}
}

/*
 * Each vCPU makes its share of the content pools (content.c) a page at a time, keeping
 * the heartbeat going; the last one to finish reports and lets all start.
 */
static void content_prepare(struct cpu *c)
{
	u64 n = content_pages();

	for (u64 p = n * c->id / ncpus_run; p < n * (c->id + 1) / ncpus_run; p++) {
		content_make(p);
		cpu_poll(c);
	}
	if (__atomic_add_fetch(&content_arrived, 1, __ATOMIC_ACQ_REL) == ncpus_run) {
		con_printf("content %s ready in %lu ms\n", content_name(),
			   (ticks - content_start) * 1000 / cfg.hz);
		__atomic_store_n(&content_done, 1, __ATOMIC_RELEASE);
		return;
	}
	while (!__atomic_load_n(&content_done, __ATOMIC_ACQUIRE)) {
		cpu_relax();
		cpu_poll(c);
	}
}

void work_run(u32 cpu)
{
	struct cpu *c = &cpus[cpu];

	c->id = cpu;
	c->seen_tick = ticks;
	if (cfg.content && cfg.workload != WORK_IDLE)
		content_prepare(c);
	switch (cfg.workload) {
	case WORK_DIRTY:
		if (!c->pages || (cfg.rate && !c->rate))
			break;			/* nothing for this vCPU to do */
		if (cpu && c->rate) {
			/* an AP has no tick of its own: a timer to wake it from hlt */
			lapic_init(VEC_WAKE);
			asm volatile("sti");
		}
		dirty(c);
		break;
	case WORK_ABCHECK:
		abcheck(c);
		break;
	case WORK_IDLE:
		break;
	}
	if (cpu)
		cpu_park();
	/* the BSP: heartbeats, and any device workload; it sleeps unless those want it busy */
	for (;;) {
		if (dev_busy())
			dev_poll();
		else
			wait_tick(c->seen_tick);
		cpu_poll(c);
	}
}

void ap_main(u32 cpu)
{
	idt_load();
	lapic_init(0);
	while (!__atomic_load_n(&go, __ATOMIC_ACQUIRE))
		cpu_relax();
	if (cpu >= ncpus_run) {
		con_printf("warning: cpu %u started after the count, parked\n", cpu);
		cpu_park();
	}
	work_run(cpu);
}
