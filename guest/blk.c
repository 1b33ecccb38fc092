// SPDX-License-Identifier: MIT
/*
 * blk.c - virtio-blk driver and the disk workload: every block of a working set on the
 * disk is read and verified once a pass, and a share of them rewritten with the next
 * generation, so a VMM that loses, reorders or replays a write (across a migration, or by
 * never writing it to the file) shows as a `disk fail` line.
 *
 * A block is one 512-byte sector (the guest's instructions are emulated, ~1 us each, so a
 * block costs a few hundred of them to stamp or check). Its contents are fully determined
 * by its number and generation: word 0 names the block, word 1 its generation, the rest
 * come from a generator seeded by both. A pass's first visit of each block learns the
 * generation from the disk (a zero block is generation 0), so a second boot continues
 * from what the first one wrote.
 *
 * The workload runs on the boot vCPU beside any memory workload: disk_poll() is called
 * whenever its timer tick moves (and in a busy loop when nothing else runs), harvests
 * completions from the used ring and keeps up to DISK_SLOTS requests in flight.
 */
#include "virtio.h"

#define VIRTIO_BLK_F_RO		5
#define VIRTIO_BLK_F_FLUSH	9

#define VIRTIO_BLK_T_IN		0
#define VIRTIO_BLK_T_OUT	1
#define VIRTIO_BLK_T_FLUSH	4
#define VIRTIO_BLK_T_GET_ID	8

#define VIRTIO_BLK_S_OK		0

#define SECTOR_SIZE		512
#define BLOCK_WORDS		(SECTOR_SIZE / 8)
#define DISK_SLOTS		8
#define DISK_TIMEOUT_S		10	/* a request not done after this is an error */
#define DISK_LINES_MAX		4	/* `disk fail` lines a pass */
#define GEN_UNKNOWN		0xffffffffu

/* "GWD1" in the high half of word 0; the block number in the low half. */
#define DISK_MAGIC		0x4757443100000000ull
#define SEED_LBA		0x9e3779b97f4a7c15ull
#define SEED_GEN		0xc2b2ae3d27d4eb4full

struct blk_hdr {
	u32 type;
	u32 reserved;
	u64 sector;
};

enum slot_state { SLOT_IDLE, SLOT_READ, SLOT_WRITE, SLOT_FLUSH };

struct disk_slot {
	struct blk_hdr hdr;
	u64 data[BLOCK_WORDS];
	u8 status;
	u8 state;
	bool rewrite;		/* write the next generation once the read is verified */
	u32 block;
	u64 issued;		/* tick the request was made */
} __attribute__((aligned(64)));

static struct {
	struct virtio_dev *dev;
	struct virtq vq;
	bool flush;		/* VIRTIO_BLK_F_FLUSH negotiated */
	bool stopped;		/* after a device error: the workload ends, the guest runs on */
	u32 nblocks;
	u64 capacity;		/* sectors */
	u64 pass;		/* from 1; pass 1 learns generations from the disk */
	u64 step, period;	/* this pass's walk: steps taken, of period */
	u64 x, c;		/* pattern=random: the LCG walking 0..period-1 */
	u32 write_acc;		/* Bresenham counter for the write share */
	u32 inflight;
	bool flushing;		/* the pass's FLUSH is in flight */
	u64 bad;		/* mismatches this pass */
	u64 start_tick, visits;	/* rate accounting */
	u64 checked_tick;	/* last tick the device's registers were looked at */
	bool unkicked;		/* requests added since the last notify */
	u64 found_written, found_sum, found_max;	/* pass 1: what the disk held */
	struct disk_slot *by_head[VIRTQ_SIZE_MAX];
	struct disk_slot slots[DISK_SLOTS];
} disk;

/* Each block's generation; only the working set's part is set up, so no zeroing at boot. */
static u32 gens[DISK_BLOCKS_MAX] __attribute__((section(".noinit")));

/* The first word of the body; each next one is x * LCG_MUL + LCG_ADD. */
static inline u64 block_seed(u64 lba, u64 gen)
{
	return (lba + 1) * SEED_LBA ^ (gen + 1) * SEED_GEN;
}

static void block_fill(u64 *w, u64 lba, u64 gen)
{
	u64 x = block_seed(lba, gen);

	w[0] = DISK_MAGIC | lba;
	w[1] = gen;
	for (u32 i = 2; i < BLOCK_WORDS; i++) {
		w[i] = x;
		x = x * LCG_MUL + LCG_ADD;
	}
}

/* Index of the first word that differs from block (lba, gen), or BLOCK_WORDS. */
static u32 block_check(const u64 *w, u64 lba, u64 gen, u64 *want)
{
	u64 x = block_seed(lba, gen);
	u32 i;

	if (w[0] != (DISK_MAGIC | lba)) {
		*want = DISK_MAGIC | lba;
		return 0;
	}
	if (w[1] != gen) {
		*want = gen;
		return 1;
	}
	for (i = 2; i < BLOCK_WORDS; i++) {
		if (w[i] != x) {
			*want = x;
			return i;
		}
		x = x * LCG_MUL + LCG_ADD;
	}
	return i;
}

/* Index of the first word that is not zero, or BLOCK_WORDS. */
static u32 block_zero_check(const u64 *w)
{
	u32 i;

	for (i = 0; i < BLOCK_WORDS && !w[i]; i++)
		;
	return i;
}

static void disk_stop(const char *why, u64 lba)
{
	con_printf("disk error: %s (block %lu, pass %lu): disk workload stopped\n", why, lba,
		   disk.pass);
	disk.stopped = true;
}

static int disk_submit(struct disk_slot *s, u32 type, u32 len)
{
	struct virtq_buf b[3] = {
		{ &s->hdr, sizeof(s->hdr), false },
		{ s->data, len, type != VIRTIO_BLK_T_OUT },
		{ &s->status, 1, true },
	};
	int head;

	s->hdr = (struct blk_hdr){ .type = type, .sector = s->block };
	s->status = 0xff;
	if (len)
		head = virtq_add(&disk.vq, b, type == VIRTIO_BLK_T_OUT ? 2 : 1,
				 type == VIRTIO_BLK_T_OUT ? 1 : 2);
	else
		head = virtq_add(&disk.vq, (struct virtq_buf[]){ b[0], b[2] }, 1, 1);
	if (head < 0)
		return head;
	disk.by_head[head] = s;
	s->issued = ticks;
	disk.inflight++;
	disk.unkicked = true;
	return head;
}

/* GET_ID once at start: the device's serial, or why there is none. */
static void disk_get_id(void)
{
	struct disk_slot *s = &disk.slots[0];
	char id[21];
	int head;

	memset(s->data, 0, 20);
	s->block = 0;
	head = disk_submit(s, VIRTIO_BLK_T_GET_ID, 20);
	if (head < 0)
		return;
	disk.unkicked = false;
	virtq_kick(&disk.vq);
	if (virtq_wait(&disk.vq, head, DISK_TIMEOUT_S, NULL) < 0) {
		disk_stop("GET_ID timed out", 0);
		return;
	}
	disk.by_head[head] = NULL;
	disk.inflight--;
	memcpy(id, s->data, 20);
	id[20] = '\0';
	for (u32 i = 0; id[i]; i++)
		if (id[i] <= ' ' || id[i] > '~')
			id[i] = '?';
	if (s->status == VIRTIO_BLK_S_OK)
		con_printf("disk id \"%s\"\n", id);
	else
		con_printf("disk id unsupported (status %u)\n", s->status);
}

int disk_setup(void)
{
	struct virtio_dev *d = virtio_find(VIRTIO_ID_BLOCK);
	u64 capacity;

	if (!d) {
		con_printf("error: workload disk: no virtio-blk device (virtio_mmio.device=...)\n");
		return -ENODEV;
	}
	disk.dev = d;
	if (virtio_init(d, 1ull << VIRTIO_BLK_F_RO | 1ull << VIRTIO_BLK_F_FLUSH) < 0 ||
	    virtq_setup(d, &disk.vq, 0, 4 * DISK_SLOTS) < 0)
		return -EIO;
	virtio_driver_ok(d);
	disk.flush = d->features >> VIRTIO_BLK_F_FLUSH & 1;
	capacity = virtio_cfg64(d, 0);
	if (d->features >> VIRTIO_BLK_F_RO & 1) {
		con_printf("warning: the disk is read-only: disk_write=0\n");
		cfg.disk_write = 0;
	}
	if (cfg.disk_blocks > capacity) {
		con_printf("error: disk_blocks=%u is more than the disk's %lu sectors, using %lu\n",
			   cfg.disk_blocks, capacity, capacity);
		cfg.disk_blocks = (u32)capacity;
	}
	if (!cfg.disk_blocks) {
		con_printf("error: workload disk: empty disk\n");
		return -EINVAL;
	}
	disk.nblocks = cfg.disk_blocks;
	for (u32 i = 0; i < disk.nblocks; i++)
		gens[i] = GEN_UNKNOWN;
	disk.capacity = capacity;
	disk_get_id();
	return disk.stopped ? -EIO : 0;
}

void disk_describe(void)
{
	con_printf("workload disk blocks=%u capacity=%lu rate=%lu write=%u pattern=%s flush=%s\n",
		   disk.nblocks, disk.capacity, cfg.disk_rate, cfg.disk_write,
		   cfg.disk_random ? "random" : "seq", disk.flush ? "yes" : "no");
}

static void pass_begin(void)
{
	disk.pass++;
	disk.step = 0;
	disk.bad = 0;
	if (cfg.disk_random) {
		for (disk.period = 1; disk.period < disk.nblocks; disk.period <<= 1)
			;
		disk.x = disk.pass * 0x5bd1e995;
		disk.c = 2 * disk.pass + 1;
	} else {
		disk.period = disk.nblocks;
	}
}

/*
 * The next block of this pass, or -1 when the pass has visited them all. pattern=random
 * walks x -> 5x + c (c odd) modulo a power of two: a full period (Hull-Dobell), so every
 * block comes once a pass, in an order that changes with c from pass to pass.
 */
static s64 pass_next(void)
{
	while (disk.step < disk.period) {
		disk.step++;
		if (!cfg.disk_random)
			return (s64)disk.step - 1;
		disk.x = (disk.x * 5 + disk.c) & (disk.period - 1);
		if (disk.x < disk.nblocks)
			return (s64)disk.x;
	}
	return -1;
}

static __attribute__((noinline, cold)) void disk_mismatch(struct disk_slot *s, u32 word,
							   u64 want)
{
	if (disk.bad++ < DISK_LINES_MAX)
		con_printf("disk fail %u 0x%lx 0x%lx word=%u\n", s->block, want, s->data[word],
			   word);
	gens[s->block] = GEN_UNKNOWN;	/* learn it again on the next visit */
	s->rewrite = false;
}

/* A read came back: check it against what the block must hold (or learn that). */
static void read_done(struct disk_slot *s)
{
	u64 tag = DISK_MAGIC | s->block, want = 0;
	u32 g = gens[s->block], word;

	s->state = SLOT_IDLE;
	if (g == GEN_UNKNOWN) {
		if (block_zero_check(s->data) == BLOCK_WORDS) {
			g = 0;
		} else if (s->data[0] == tag && s->data[1] < GEN_UNKNOWN) {
			g = (u32)s->data[1];
		} else {
			disk_mismatch(s, 0, tag);
			return;
		}
		if (disk.pass == 1 && g) {
			disk.found_written++;
			disk.found_sum += g;
			if (g > disk.found_max)
				disk.found_max = g;
		}
		gens[s->block] = g;
	}
	/* generation 0 is a block never written: all zero */
	word = g ? block_check(s->data, s->block, g, &want) : block_zero_check(s->data);
	if (word < BLOCK_WORDS) {
		disk_mismatch(s, word, want);
		return;
	}
	if (!s->rewrite)
		return;
	block_fill(s->data, s->block, g + 1);
	if (disk_submit(s, VIRTIO_BLK_T_OUT, SECTOR_SIZE) < 0) {
		disk_stop("no descriptors for a write", s->block);
		return;
	}
	s->state = SLOT_WRITE;
}

static void disk_complete(struct disk_slot *s)
{
	disk.inflight--;
	if (s->status != VIRTIO_BLK_S_OK) {
		disk_stop(s->state == SLOT_FLUSH ? "FLUSH failed" :
			  s->state == SLOT_WRITE ? "write failed" : "read failed", s->block);
		return;
	}
	switch (s->state) {
	case SLOT_READ:
		read_done(s);
		break;
	case SLOT_WRITE:
		gens[s->block]++;
		s->state = SLOT_IDLE;
		break;
	case SLOT_FLUSH:
		disk.flushing = false;
		s->state = SLOT_IDLE;
		break;
	}
}

/* Requests this tick may still start under disk_rate (visits per second). */
static bool rate_allows(void)
{
	if (!cfg.disk_rate)
		return true;
	return cfg.disk_rate * (ticks - disk.start_tick + 1) / cfg.hz > disk.visits;
}

static void pass_end(void)
{
	if (disk.pass == 1)
		con_printf("disk found written=%lu maxgen=%lu sum=%lu\n", disk.found_written,
			   disk.found_max, disk.found_sum);
	if (disk.bad)
		con_printf("disk bad %lu %lu\n", disk.pass, disk.bad);
	else
		con_printf("disk ok %lu\n", disk.pass);
	pass_begin();
}

/* Start what the pass and the rate allow. */
static void disk_start(void)
{
	for (u32 i = 0; i < DISK_SLOTS && !disk.stopped && !disk.flushing; i++) {
		struct disk_slot *s = &disk.slots[i];
		s64 b;

		if (s->state != SLOT_IDLE || !rate_allows() || disk.vq.nfree < 3)
			continue;
		b = pass_next();
		if (b < 0) {
			if (disk.inflight)
				break;
			/* every block visited and done: make the writes durable, then report */
			if (disk.flush && s->state == SLOT_IDLE) {
				s->block = 0;
				if (disk_submit(s, VIRTIO_BLK_T_FLUSH, 0) < 0) {
					disk_stop("no descriptors for FLUSH", 0);
					break;
				}
				s->state = SLOT_FLUSH;
				disk.flushing = true;
				break;
			}
			pass_end();
			continue;
		}
		s->block = (u32)b;
		disk.write_acc += cfg.disk_write;
		s->rewrite = disk.write_acc >= 100;
		if (s->rewrite)
			disk.write_acc -= 100;
		if (disk_submit(s, VIRTIO_BLK_T_IN, SECTOR_SIZE) < 0) {
			disk_stop("no descriptors for a read", s->block);
			break;
		}
		s->state = SLOT_READ;
		disk.visits++;
	}
}

void disk_poll(void)
{
	bool flushed = false;
	int head;

	if (disk.stopped || !disk.dev)
		return;
	if (!disk.pass) {
		pass_begin();
		disk.start_tick = ticks;
	}
	while ((head = virtq_get(&disk.vq, NULL)) >= 0) {
		struct disk_slot *s = disk.by_head[head];

		disk.by_head[head] = NULL;
		if (!s) {
			disk_stop("completion of no request", 0);
			return;
		}
		flushed |= s->state == SLOT_FLUSH;
		disk_complete(s);
		if (disk.stopped)
			return;
	}
	if (flushed)
		pass_end();
	/* device registers cost a VM exit each: look at them once a tick */
	if (disk.checked_tick != ticks) {
		disk.checked_tick = ticks;
		virtio_irq_ack(disk.dev);
		if (virtio_status(disk.dev) & VIRTIO_STATUS_NEEDS_RESET) {
			disk_stop("device needs reset (DEVICE_NEEDS_RESET)", 0);
			return;
		}
		for (u32 i = 0; i < DISK_SLOTS; i++) {
			struct disk_slot *s = &disk.slots[i];

			if (s->state != SLOT_IDLE &&
			    ticks - s->issued > (u64)DISK_TIMEOUT_S * cfg.hz) {
				disk_stop("request timed out", s->block);
				return;
			}
		}
	}
	disk_start();
	if (disk.unkicked) {
		disk.unkicked = false;
		virtq_kick(&disk.vq);
	}
}

bool disk_active(void)
{
	return disk.dev && !disk.stopped;
}
