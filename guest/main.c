// SPDX-License-Identifier: MIT
/*
 * main.c - boot of the godwit test guest: take what the loader handed over in the PVH
 * start_info, read the command line and the memory map, finish the page tables, start the
 * timer and the other vCPUs, then hand over to the workload (work.c).
 */
#include "virtio.h"

/* Xen public header arch-x86/hvm/start_info.h, the PVH boot ABI. */
#define HVM_START_MAGIC	0x336ec578

struct hvm_start_info {
	u32 magic;
	u32 version;
	u32 flags;
	u32 nr_modules;
	u64 modlist_paddr;
	u64 cmdline_paddr;
	u64 rsdp_paddr;
	u64 memmap_paddr;	/* version >= 1 */
	u32 memmap_entries;	/* version >= 1 */
	u32 reserved;
};

struct hvm_memmap_entry {
	u64 addr;
	u64 size;
	u32 type;
	u32 reserved;
};

#define E820_RAM	1

#define CMDLINE_MAX	1024
#define MEMMAP_MAX	128

/* The working set starts here, clear of the image, its stacks and extra page tables. */
#define WS_BASE		(16 * MiB)

struct guest_config cfg = {
	.workload = WORK_IDLE,
	.wss = 16 * MiB,
	.hz = 250,
	.disk_blocks = 1024,
	.disk_write = 50,
	.net_port = 7,
};

static char cmdline[CMDLINE_MAX];
static struct hvm_memmap_entry memmap[MEMMAP_MAX];
static u32 memmap_entries;
static const char *boot_error;

static struct mem_extent ram[MEM_EXTENTS_MAX];	/* RAM from WS_BASE on, sorted, in pages */
static u32 nram;

/*
 * Copy the command line and the memory map out of the loader's memory before anything
 * else: start_info may sit in low memory we reuse (the AP trampoline page, for one).
 */
static void boot_copy_start_info(const struct hvm_start_info *si)
{
	if (si->magic != HVM_START_MAGIC) {
		boot_error = "error: no PVH start_info (bad magic)";
		return;
	}
	if (si->cmdline_paddr) {
		const char *s = (const char *)si->cmdline_paddr;
		u32 i;

		for (i = 0; i < CMDLINE_MAX - 1 && s[i]; i++)
			cmdline[i] = s[i];
		cmdline[i] = '\0';
	}
	if (si->version < 1 || !si->memmap_paddr || !si->memmap_entries) {
		boot_error = "error: start_info has no memory map (version 0?): workloads disabled";
		return;
	}
	memmap_entries = MIN(si->memmap_entries, MEMMAP_MAX);
	memcpy(memmap, (const void *)si->memmap_paddr, memmap_entries * sizeof(memmap[0]));
}

/* A decimal number ending at a space or the end of the line. */
static bool parse_u64(const char *s, u64 *out, const char **end)
{
	u64 v = 0;

	if (*s < '0' || *s > '9')
		return false;
	while (*s >= '0' && *s <= '9')
		v = v * 10 + (u64)(*s++ - '0');
	*out = v;
	*end = s;
	return true;
}

static bool parse_number(const char *s, u64 *out)
{
	u64 v;

	if (!parse_u64(s, &v, &s) || (*s && *s != ' '))
		return false;
	*out = v;
	return true;
}

/* "16M", "4096", "1G": bytes, binary suffixes K, M, G, T. */
static bool parse_size(const char *s, u64 *out)
{
	u32 shift = 0;
	u64 v;

	if (!parse_u64(s, &v, &s))
		return false;
	switch (*s) {
	case 'k': case 'K': shift = 10; s++; break;
	case 'm': case 'M': shift = 20; s++; break;
	case 'g': case 'G': shift = 30; s++; break;
	case 't': case 'T': shift = 40; s++; break;
	}
	if ((*s && *s != ' ') || v > (~0ull >> shift))
		return false;
	*out = v << shift;
	return true;
}

static bool key_is(const char *key, size_t len, const char *name)
{
	return len == strlen(name) && !memcmp(key, name, len);
}

static bool word_is(const char *s, const char *word)
{
	size_t n = strlen(word);

	return !memcmp(s, word, n) && (s[n] == ' ' || s[n] == '\0');
}

/*
 * workload=NAME[,NAME...]: at most one memory workload (idle, dirty, abcheck) and any of
 * the device workloads (disk) beside it.
 */
static void parse_workloads(const char *v)
{
	static const char *const names[] = { "idle", "dirty", "abcheck", "disk", "net" };
	enum workload mem = WORK_IDLE;
	bool disk = false, net = false, mems = false;

	for (;;) {
		size_t len = 0;
		u32 i;

		while (v[len] && v[len] != ' ' && v[len] != ',')
			len++;
		for (i = 0; i < ARRAY_SIZE(names) && !key_is(v, len, names[i]); i++)
			;
		if (i == ARRAY_SIZE(names) || (i < 3 && mems)) {
			con_printf("error: %s workload list, running idle\n",
				   i == ARRAY_SIZE(names) ? "unknown workload in the" :
				   "more than one memory workload in the");
			return;
		}
		if (i == 3) {
			disk = true;
		} else if (i == 4) {
			net = true;
		} else {
			mem = (enum workload)i;
			mems = true;
		}
		if (v[len] != ',')
			break;
		v += len + 1;
	}
	cfg.workload = mem;
	cfg.disk = disk;
	cfg.net = net;
}

/* ip=A.B.C.D/N */
static bool parse_ip(const char *s, u32 *ip, u32 *prefix)
{
	u32 a = 0;
	u64 n;

	for (u32 i = 0; i < 4; i++) {
		if (!parse_u64(s, &n, &s) || n > 255 || *s++ != (i < 3 ? '.' : '/'))
			return false;
		a = a << 8 | (u32)n;
	}
	if (!parse_u64(s, &n, &s) || n < 1 || n > 32 || (*s && *s != ' ') || !a)
		return false;
	*ip = a;
	*prefix = (u32)n;
	return true;
}

/* Space-separated key=value; unknown keys are ignored so callers can add their own. */
static void parse_cmdline(void)
{
	const char *s = cmdline;

	while (*s) {
		const char *v;
		u64 n;

		while (*s == ' ')
			s++;
		if (!*s)
			break;
		v = s;
		while (*v && *v != ' ' && *v != '=')
			v++;
		if (*v == '=') {
			size_t klen = (size_t)(v - s);

			v++;
			if (key_is(s, klen, "workload")) {
				parse_workloads(v);
			} else if (key_is(s, klen, "virtio_mmio.device")) {
				if (!virtio_cmdline_add(v))
					con_printf("error: bad virtio_mmio.device= (want "
						   "<size>@<base>:<irq>), ignored\n");
			} else if (key_is(s, klen, "ip")) {
				if (!parse_ip(v, &cfg.net_ip, &cfg.net_prefix))
					con_printf("error: bad ip= (want A.B.C.D/N)\n");
			} else if (key_is(s, klen, "net_port")) {
				if (parse_number(v, &n) && n >= 1 && n <= 65535)
					cfg.net_port = (u16)n;
				else
					con_printf("error: net_port must be 1..65535, using %u\n",
						   cfg.net_port);
			} else if (key_is(s, klen, "disk_blocks")) {
				if (parse_number(v, &n) && n >= 1 && n <= DISK_BLOCKS_MAX)
					cfg.disk_blocks = (u32)n;
				else
					con_printf("error: disk_blocks must be 1..%u, using %u\n",
						   DISK_BLOCKS_MAX, cfg.disk_blocks);
			} else if (key_is(s, klen, "disk_rate")) {
				if (!parse_number(v, &cfg.disk_rate))
					con_printf("error: bad disk_rate, using %lu\n", cfg.disk_rate);
			} else if (key_is(s, klen, "disk_write")) {
				if (parse_number(v, &n) && n <= 100)
					cfg.disk_write = (u32)n;
				else
					con_printf("error: disk_write must be 0..100, using %u\n",
						   cfg.disk_write);
			} else if (key_is(s, klen, "disk_pattern")) {
				if (word_is(v, "random"))
					cfg.disk_random = true;
				else if (word_is(v, "seq"))
					cfg.disk_random = false;
				else
					con_printf("error: unknown disk_pattern, using seq\n");
			} else if (key_is(s, klen, "crash")) {
				/* a test of the VMM's report: an instruction the emulator lacks */
				if (word_is(v, "sse"))
					cfg.crash_after = 20;
				else
					con_printf("error: unknown crash kind\n");
			} else if (key_is(s, klen, "fault")) {
				/* a test of the checker itself: abcheck must report this */
				if (word_is(v, "flip"))
					cfg.fault_flip = true;
				else
					con_printf("error: unknown fault kind\n");
			} else if (key_is(s, klen, "wss")) {
				if (!parse_size(v, &cfg.wss))
					con_printf("error: bad wss, using %luM\n", cfg.wss >> 20);
			} else if (key_is(s, klen, "rate")) {
				if (!parse_number(v, &cfg.rate))
					con_printf("error: bad rate, using %lu\n", cfg.rate);
			} else if (key_is(s, klen, "pattern")) {
				if (word_is(v, "random"))
					cfg.random = true;
				else if (word_is(v, "seq"))
					cfg.random = false;
				else
					con_printf("error: unknown pattern, using seq\n");
			} else if (key_is(s, klen, "content")) {
				static const char *const kinds[] = { "zero", "text", "random",
								     "mixed" };
				u32 k;

				for (k = 0; k < ARRAY_SIZE(kinds) && !word_is(v, kinds[k]); k++)
					;
				if (k < ARRAY_SIZE(kinds))
					cfg.content = (enum content)k;
				else
					con_printf("error: unknown content, using zero\n");
			} else if (key_is(s, klen, "stats")) {
				if (parse_number(v, &n) && n <= 3600)
					cfg.stats = (u32)n;
				else
					con_printf("error: stats must be 0..3600, using 0\n");
			} else if (key_is(s, klen, "hz")) {
				if (parse_number(v, &n) && n >= 10 && n <= 1000)
					cfg.hz = (u32)n;
				else
					con_printf("error: hz must be 10..1000, using %u\n", cfg.hz);
			}
		}
		while (*v && *v != ' ')
			v++;
		s = v;
	}
}

/*
 * RAM (type 1) from WS_BASE up, sorted by address, in whole pages, touching ranges merged.
 * Returns the end of the highest RAM range of the whole map.
 */
static u64 ram_collect(void)
{
	u64 top = 0;

	for (u32 i = 0; i < memmap_entries; i++) {
		const struct hvm_memmap_entry *m = &memmap[i];
		u64 start = m->addr, end = m->addr + m->size;
		u32 j;

		if (m->type != E820_RAM || end <= start)
			continue;
		if (end > top)
			top = end;
		if (start < WS_BASE)
			start = WS_BASE;
		start = (start + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1);
		end &= ~(PAGE_SIZE - 1);
		if (end <= start || nram == MEM_EXTENTS_MAX)
			continue;
		for (j = nram; j > 0 && ram[j - 1].gpa > start; j--)
			ram[j] = ram[j - 1];
		ram[j] = (struct mem_extent){ start, (end - start) >> PAGE_SHIFT };
		nram++;
	}
	for (u32 i = 1; i < nram;) {
		struct mem_extent *a = &ram[i - 1];

		if (a->gpa + (a->npages << PAGE_SHIFT) >= ram[i].gpa) {
			u64 end = ram[i].gpa + (ram[i].npages << PAGE_SHIFT);

			if (end > a->gpa + (a->npages << PAGE_SHIFT))
				a->npages = (end - a->gpa) >> PAGE_SHIFT;
			memmove(&ram[i], &ram[i + 1], (nram - i - 1) * sizeof(ram[0]));
			nram--;
		} else {
			i++;
		}
	}
	return top;
}

/*
 * entry.S maps 0-4 GiB. For RAM above that, add page directories (2 MiB pages) taken from
 * the free memory between the image and WS_BASE; PML4 entry 0 covers 512 GiB.
 */
static void paging_extend(u64 top)
{
	u64 next = (u64)__image_end;
	u32 gbs = (u32)MIN((top + GiB - 1) / GiB, 512);
	u64 *pd;

	for (u32 g = 4; g < gbs; g++) {
		if (next + PAGE_SIZE > WS_BASE) {
			con_printf("error: no room for page tables above %u GiB\n", g);
			break;
		}
		pd = (u64 *)next;
		next += PAGE_SIZE;
		for (u32 i = 0; i < 512; i++)
			pd[i] = ((u64)g << 30) + ((u64)i << 21) + (PTE_P | PTE_W | PTE_PS);
		pdpt[g] = (u64)pd + (PTE_P | PTE_W);
	}
	asm volatile("mov %%cr3, %%rax; mov %%rax, %%cr3" : : : "rax", "memory");
}

void boot_main(u32 start_info)
{
	u32 ncpus;
	u64 top;

	boot_copy_start_info((const struct hvm_start_info *)(u64)start_info);
	uart_init();
	parse_cmdline();
	if (boot_error) {
		con_printf("%s\n", boot_error);
		cfg.workload = WORK_IDLE;
	}

	top = ram_collect();
	if (top > 4 * GiB)
		paging_extend(top);

	lapic = rdmsr(MSR_APIC_BASE) & ~0xfffull;
	idt_init();
	lapic_init(VEC_TIMER);
	pic_mask();
	asm volatile("sti");

	ncpus = smp_start();
	if (cfg.workload != WORK_IDLE && work_setup(ncpus, ram, nram) < 0)
		cfg.workload = WORK_IDLE;
	virtio_probe();
	if (cfg.disk && disk_setup() < 0)
		cfg.disk = false;
	if (cfg.net && net_setup() < 0)
		cfg.net = false;
	con_printf("godwit-guest ready cpus=%u\n", ncpus);
	work_release(ncpus);
	work_run(0);
}
