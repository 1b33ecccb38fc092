/* SPDX-License-Identifier: MIT */
/*
 * virtio-blk over virtio-mmio against the fake guest of fake_guest.h (RAM that records the
 * pages the device marks dirty, an interrupt line that is a flag), the disk a temporary
 * file. The driver side is written here from the virtio spec, so the tests exercise the
 * device's real I/O thread: requests, dirty marking, every kind of bad input from the
 * guest, quiesce, state round trips and the disk lock.
 */
#include "devices/virtio_blk.h"
#include "devices/virtio_mmio.h"
#include "fake_guest.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/virtio_blk.h>
#include <linux/virtio_config.h>
#include <linux/virtio_mmio.h>
#include <linux/virtio_ring.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#define RAM_SIZE (1u << 20)
#define QNUM 16u
#define DESC 0x1000u
#define AVAIL 0x2000u
#define USED 0x3000u
#define HDR 0x4000u    /* request headers, 16 bytes per request slot */
#define STATUS 0x5000u /* status bytes, one per slot */
#define DATA 0x10000u
#define DISK_SIZE (64u * 1024)

struct tg {
	struct fake_guest fg;
	struct device_info d;
	char path[64];
	uint16_t avail_idx;
};

/* every test runs once per backend: the I/O thread, then io_uring */
static enum dev_aio tg_aio = DEV_AIO_THREAD;

static void reg_write(struct tg *g, uint64_t off, uint32_t v)
{
	fake_guest_reg_write(&g->d, off, v);
}

static uint32_t reg_read(struct tg *g, uint64_t off)
{
	return fake_guest_reg_read(&g->d, off);
}

static void tg_file(struct tg *g, uint32_t size)
{
	int fd;

	snprintf(g->path, sizeof(g->path), "/tmp/godwit-blk-XXXXXX");
	fd = mkstemp(g->path);
	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, size), 0);
	close(fd);
}

static int tg_create(struct tg *g, const char *path, bool readonly, struct errbuf *e)
{
	struct device_spec spec = { .type = VIRTIO_BLK_TYPE, .id = "vda", .readonly = readonly,
				    .aio = tg_aio };
	struct device_env env;

	snprintf(spec.path, sizeof(spec.path), "%s", path);
	if (!g->fg.ram)
		assert_int_equal(fake_guest_init(&g->fg, RAM_SIZE, 21), 0);
	env = fake_guest_env(&g->fg, 0xd0000000);
	return virtio_blk_type.create(&spec, &env, &g->d, e);
}

/* A driver's initialisation (virtio spec 3.1.1) with one queue of QNUM entries. */
static void tg_driver_init(struct tg *g, uint32_t qnum)
{
	reg_write(g, VIRTIO_MMIO_STATUS, 0);
	reg_write(g, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER);
	reg_write(g, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
	reg_write(g, VIRTIO_MMIO_DRIVER_FEATURES, 1u << VIRTIO_BLK_F_FLUSH);
	reg_write(g, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
	reg_write(g, VIRTIO_MMIO_DRIVER_FEATURES, 1u << (VIRTIO_F_VERSION_1 - 32));
	reg_write(g, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER |
						 VIRTIO_CONFIG_S_FEATURES_OK);
	assert_true(reg_read(g, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_FEATURES_OK);
	reg_write(g, VIRTIO_MMIO_QUEUE_SEL, 0);
	assert_int_equal(reg_read(g, VIRTIO_MMIO_QUEUE_NUM_MAX), VIRTQ_NUM_MAX);
	reg_write(g, VIRTIO_MMIO_QUEUE_NUM, qnum);
	reg_write(g, VIRTIO_MMIO_QUEUE_DESC_LOW, DESC);
	reg_write(g, VIRTIO_MMIO_QUEUE_DESC_HIGH, 0);
	reg_write(g, VIRTIO_MMIO_QUEUE_AVAIL_LOW, AVAIL);
	reg_write(g, VIRTIO_MMIO_QUEUE_USED_LOW, USED);
	reg_write(g, VIRTIO_MMIO_QUEUE_READY, 1);
	reg_write(g, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER |
						 VIRTIO_CONFIG_S_FEATURES_OK |
						 VIRTIO_CONFIG_S_DRIVER_OK);
	g->avail_idx = 0;
}

static void tg_setup(struct tg *g, bool readonly)
{
	struct errbuf e;

	memset(g, 0, sizeof(*g));
	tg_file(g, DISK_SIZE);
	assert_int_equal(tg_create(g, g->path, readonly, &e), 0);
	g->d.ops->resume(g->d.dev);
	tg_driver_init(g, QNUM);
}

static void tg_teardown(struct tg *g)
{
	g->d.ops->destroy(g->d.dev);
	unlink(g->path);
	fake_guest_free(&g->fg);
}

static void desc_set(struct tg *g, unsigned i, uint64_t addr, uint32_t len, uint16_t flags,
		     uint16_t next)
{
	fake_guest_desc_set(&g->fg, DESC, i, addr, len, flags, next);
}

static void avail_push(struct tg *g, uint16_t head)
{
	fake_guest_avail_push(&g->fg, AVAIL, QNUM, &g->avail_idx, head);
	reg_write(g, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
}

static uint16_t used_idx(struct tg *g)
{
	return fake_guest_used_idx(&g->fg, USED);
}

/* Waits (bounded, not timed) until the device published n used entries. */
static void wait_used(struct tg *g, uint16_t n)
{
	for (int i = 0; i < 10000 && used_idx(g) != n; i++)
		usleep(1000);
	assert_int_equal(used_idx(g), n);
}

static void wait_needs_reset(struct tg *g)
{
	for (int i = 0; i < 10000 && !(reg_read(g, VIRTIO_MMIO_STATUS) &
				       VIRTIO_CONFIG_S_NEEDS_RESET); i++)
		usleep(1000);
	assert_true(reg_read(g, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET);
}

static uint32_t used_len(struct tg *g, uint16_t i)
{
	return fake_guest_used_len(&g->fg, USED, QNUM, i);
}

/* A three-descriptor request in slot s (descriptors 3s..3s+2); returns the head. */
static uint16_t req_build(struct tg *g, unsigned s, uint32_t type, uint64_t sector,
			  uint64_t data, uint32_t len, bool device_writes)
{
	uint16_t h = (uint16_t)(3 * s);

	le_put32(g->fg.ram + HDR + 16 * s, type);
	le_put32(g->fg.ram + HDR + 16 * s + 4, 0);
	le_put64(g->fg.ram + HDR + 16 * s + 8, sector);
	g->fg.ram[STATUS + s] = 0xee;
	desc_set(g, h, HDR + 16 * s, 16, VRING_DESC_F_NEXT, h + 1);
	desc_set(g, h + 1, data, len, VRING_DESC_F_NEXT | (device_writes ? VRING_DESC_F_WRITE : 0),
		 h + 2);
	desc_set(g, h + 2, STATUS + s, 1, VRING_DESC_F_WRITE, 0);
	return h;
}

static uint8_t req_run(struct tg *g, unsigned s, uint32_t type, uint64_t sector, uint64_t data,
		       uint32_t len, bool device_writes)
{
	uint16_t n = used_idx(g);

	avail_push(g, req_build(g, s, type, sector, data, len, device_writes));
	wait_used(g, (uint16_t)(n + 1));
	return g->fg.ram[STATUS + s];
}

static void test_write_read_back(void **state)
{
	struct device_stats st = { 0 };
	struct tg g;
	uint8_t file[1024];
	int fd;

	(void)state;
	tg_setup(&g, false);
	assert_int_equal(reg_read(&g, VIRTIO_MMIO_MAGIC_VALUE), 0x74726976);
	assert_int_equal(reg_read(&g, VIRTIO_MMIO_VERSION), 2);
	assert_int_equal(reg_read(&g, VIRTIO_MMIO_DEVICE_ID), 2);
	assert_int_equal(reg_read(&g, VIRTIO_MMIO_CONFIG), DISK_SIZE / 512);
	for (unsigned i = 0; i < 1024; i++)
		g.fg.ram[DATA + i] = (uint8_t)(i * 7 + 1);
	assert_int_equal(req_run(&g, 0, VIRTIO_BLK_T_OUT, 3, DATA, 1024, false), VIRTIO_BLK_S_OK);
	assert_int_equal(used_len(&g, 0), 1);
	assert_true(atomic_load(&g.fg.irq));
	reg_write(&g, VIRTIO_MMIO_INTERRUPT_ACK, reg_read(&g, VIRTIO_MMIO_INTERRUPT_STATUS));
	assert_false(atomic_load(&g.fg.irq));
	/* it is in the file, at sector 3 */
	fd = open(g.path, O_RDONLY);
	assert_int_equal(pread(fd, file, sizeof(file), 3 * 512), sizeof(file));
	close(fd);
	assert_memory_equal(file, g.fg.ram + DATA, sizeof(file));
	/* read back elsewhere: the data pages and the used ring are marked dirty */
	memset(g.fg.dirty, 0, sizeof(g.fg.dirty));
	assert_false(fake_guest_dirty(&g.fg, DATA + 0x8000));
	assert_int_equal(req_run(&g, 1, VIRTIO_BLK_T_IN, 3, DATA + 0x8000, 1024, true),
			 VIRTIO_BLK_S_OK);
	assert_int_equal(used_len(&g, 1), 1025);
	assert_memory_equal(g.fg.ram + DATA + 0x8000, file, sizeof(file));
	assert_true(fake_guest_dirty(&g.fg, DATA + 0x8000));
	assert_true(fake_guest_dirty(&g.fg, USED));
	assert_true(fake_guest_dirty(&g.fg, STATUS));
	/* FLUSH and GET_ID */
	assert_int_equal(req_run(&g, 2, VIRTIO_BLK_T_FLUSH, 0, DATA, 0, false), VIRTIO_BLK_S_OK);
	assert_int_equal(req_run(&g, 0, VIRTIO_BLK_T_GET_ID, 0, DATA + 0x9000, 20, true),
			 VIRTIO_BLK_S_OK);
	assert_string_equal((char *)g.fg.ram + DATA + 0x9000, "vda");
	/* what `status` shows: one of each, the data bytes each way */
	g.d.ops->stats(g.d.dev, &st);
	assert_true(st.reads == 1 && st.writes == 1 && st.flushes == 1 && st.others == 1);
	assert_true(st.bytes_read == 1024 && st.bytes_written == 1024 && st.errors == 0);
	assert_string_equal(st.aio, tg_aio == DEV_AIO_URING ? "uring" : "thread");
	tg_teardown(&g);
}

static void range_set(struct tg *g, uint64_t gpa, uint64_t sector, uint32_t n, uint32_t flags)
{
	le_put64(g->fg.ram + gpa, sector);
	le_put32(g->fg.ram + gpa + 8, n);
	le_put32(g->fg.ram + gpa + 12, flags);
}

static void test_discard_write_zeroes(void **state)
{
	static const uint8_t zero[512];
	struct tg g;

	(void)state;
	tg_setup(&g, false);
	assert_true(reg_read(&g, VIRTIO_MMIO_DEVICE_FEATURES) & (1u << VIRTIO_BLK_F_DISCARD));
	assert_int_equal(reg_read(&g, VIRTIO_MMIO_CONFIG +
				       offsetof(struct virtio_blk_config, max_write_zeroes_seg)), 1);
	memset(g.fg.ram + DATA, 0x5a, 2048);
	assert_int_equal(req_run(&g, 0, VIRTIO_BLK_T_OUT, 4, DATA, 2048, false), VIRTIO_BLK_S_OK);
	range_set(&g, DATA + 0x4000, 4, 1, 0);
	assert_int_equal(req_run(&g, 1, VIRTIO_BLK_T_WRITE_ZEROES, 0, DATA + 0x4000, 16, false),
			 VIRTIO_BLK_S_OK);
	range_set(&g, DATA + 0x4000, 6, 1, 0);
	assert_int_equal(req_run(&g, 2, VIRTIO_BLK_T_DISCARD, 0, DATA + 0x4000, 16, false),
			 VIRTIO_BLK_S_OK);
	range_set(&g, DATA + 0x4000, 7, 1, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP);
	assert_int_equal(req_run(&g, 0, VIRTIO_BLK_T_WRITE_ZEROES, 0, DATA + 0x4000, 16, false),
			 VIRTIO_BLK_S_OK);
	assert_int_equal(req_run(&g, 1, VIRTIO_BLK_T_IN, 4, DATA + 0x8000, 2048, true),
			 VIRTIO_BLK_S_OK);
	assert_memory_equal(g.fg.ram + DATA + 0x8000, zero, 512);
	assert_memory_equal(g.fg.ram + DATA + 0x8000 + 512, g.fg.ram + DATA, 512);
	assert_memory_equal(g.fg.ram + DATA + 0x8000 + 1024, zero, 512);
	assert_memory_equal(g.fg.ram + DATA + 0x8000 + 1536, zero, 512);
	/* past the end, unknown flags, a discard with flags, two ranges */
	range_set(&g, DATA + 0x4000, DISK_SIZE / 512 - 1, 2, 0);
	assert_int_equal(req_run(&g, 2, VIRTIO_BLK_T_DISCARD, 0, DATA + 0x4000, 16, false),
			 VIRTIO_BLK_S_IOERR);
	range_set(&g, DATA + 0x4000, 0, 1, 2);
	assert_int_equal(req_run(&g, 0, VIRTIO_BLK_T_WRITE_ZEROES, 0, DATA + 0x4000, 16, false),
			 VIRTIO_BLK_S_UNSUPP);
	range_set(&g, DATA + 0x4000, 0, 1, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP);
	assert_int_equal(req_run(&g, 1, VIRTIO_BLK_T_DISCARD, 0, DATA + 0x4000, 16, false),
			 VIRTIO_BLK_S_UNSUPP);
	assert_int_equal(req_run(&g, 2, VIRTIO_BLK_T_DISCARD, 0, DATA + 0x4000, 32, false),
			 VIRTIO_BLK_S_IOERR);
	tg_teardown(&g);
	/* a readonly disk refuses them */
	tg_setup(&g, true);
	range_set(&g, DATA + 0x4000, 0, 1, 0);
	assert_int_equal(req_run(&g, 0, VIRTIO_BLK_T_WRITE_ZEROES, 0, DATA + 0x4000, 16, false),
			 VIRTIO_BLK_S_IOERR);
	tg_teardown(&g);
}

static void test_bad_requests_get_error_status(void **state)
{
	struct device_stats st = { 0 };
	struct tg g;

	(void)state;
	tg_setup(&g, false);
	/* beyond the end of the disk, and a length that is not whole sectors */
	assert_int_equal(req_run(&g, 0, VIRTIO_BLK_T_IN, DISK_SIZE / 512, DATA, 512, true),
			 VIRTIO_BLK_S_IOERR);
	assert_int_equal(req_run(&g, 1, VIRTIO_BLK_T_IN, UINT64_MAX / 512, DATA, 512, true),
			 VIRTIO_BLK_S_IOERR);
	assert_int_equal(req_run(&g, 2, VIRTIO_BLK_T_OUT, 0, DATA, 100, false), VIRTIO_BLK_S_IOERR);
	/* wrong directions: a read whose buffer the device may not write, and the reverse */
	assert_int_equal(req_run(&g, 0, VIRTIO_BLK_T_IN, 0, DATA, 512, false), VIRTIO_BLK_S_IOERR);
	assert_int_equal(req_run(&g, 1, VIRTIO_BLK_T_OUT, 0, DATA, 512, true), VIRTIO_BLK_S_IOERR);
	/* an unknown request type */
	assert_int_equal(req_run(&g, 2, 99, 0, DATA, 512, true), VIRTIO_BLK_S_UNSUPP);
	/* no writable byte for the status: completed with nothing written */
	desc_set(&g, 0, HDR, 16, 0, 0);
	avail_push(&g, 0);
	wait_used(&g, 7);
	assert_int_equal(used_len(&g, 6), 0);
	/* the device still works */
	assert_int_equal(req_run(&g, 1, VIRTIO_BLK_T_IN, 0, DATA, 512, true), VIRTIO_BLK_S_OK);
	assert_false(reg_read(&g, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET);
	/* the seven refused requests are errors, not reads or writes */
	g.d.ops->stats(g.d.dev, &st);
	assert_true(st.errors == 7 && st.reads == 1 && st.writes == 0 && st.bytes_read == 512);
	tg_teardown(&g);
}

static void test_readonly_disk_refuses_writes(void **state)
{
	struct tg g;

	(void)state;
	tg_setup(&g, true);
	assert_true(reg_read(&g, VIRTIO_MMIO_DEVICE_FEATURES) & (1u << VIRTIO_BLK_F_RO));
	assert_int_equal(req_run(&g, 0, VIRTIO_BLK_T_OUT, 0, DATA, 512, false), VIRTIO_BLK_S_IOERR);
	assert_int_equal(req_run(&g, 1, VIRTIO_BLK_T_IN, 0, DATA, 512, true), VIRTIO_BLK_S_OK);
	tg_teardown(&g);
}

/* Each malformed queue sets NEEDS_RESET; a reset and a new initialisation recover. */
static void expect_needs_reset_then_recover(struct tg *g)
{
	wait_needs_reset(g);
	reg_write(g, VIRTIO_MMIO_STATUS, 0);
	assert_int_equal(reg_read(g, VIRTIO_MMIO_STATUS), 0);
	memset(g->fg.ram + AVAIL, 0, 0x2000);
	tg_driver_init(g, QNUM);
	assert_int_equal(req_run(g, 0, VIRTIO_BLK_T_IN, 0, DATA, 512, true), VIRTIO_BLK_S_OK);
}

static void test_malformed_queues_need_reset(void **state)
{
	struct tg g;

	(void)state;
	tg_setup(&g, false);
	/* a descriptor loop */
	desc_set(&g, 0, HDR, 16, VRING_DESC_F_NEXT, 1);
	desc_set(&g, 1, HDR, 16, VRING_DESC_F_NEXT, 0);
	avail_push(&g, 0);
	expect_needs_reset_then_recover(&g);
	/* a buffer outside RAM, and one whose length runs past its end */
	desc_set(&g, 0, RAM_SIZE + 4096, 16, 0, 0);
	avail_push(&g, 0);
	expect_needs_reset_then_recover(&g);
	desc_set(&g, 0, DATA, UINT32_MAX, VRING_DESC_F_WRITE, 0);
	avail_push(&g, 0);
	expect_needs_reset_then_recover(&g);
	/* a readable buffer after a writable one; an indirect descriptor; next out of range */
	desc_set(&g, 0, STATUS, 1, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 1);
	desc_set(&g, 1, HDR, 16, 0, 0);
	avail_push(&g, 0);
	expect_needs_reset_then_recover(&g);
	desc_set(&g, 0, HDR, 16, VRING_DESC_F_INDIRECT, 0);
	avail_push(&g, 0);
	expect_needs_reset_then_recover(&g);
	desc_set(&g, 0, HDR, 16, VRING_DESC_F_NEXT, QNUM);
	avail_push(&g, 0);
	expect_needs_reset_then_recover(&g);
	/* a head out of range; an available index far ahead of the device */
	avail_push(&g, QNUM + 3);
	expect_needs_reset_then_recover(&g);
	__atomic_store_n((uint16_t *)(g.fg.ram + AVAIL + 2), 1000, __ATOMIC_RELEASE);
	reg_write(&g, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
	expect_needs_reset_then_recover(&g);
	tg_teardown(&g);
}

static void test_queue_setup_checked(void **state)
{
	struct tg g;
	uint16_t n;

	(void)state;
	tg_setup(&g, false);
	/* a size that is not a power of two, and rings outside RAM, are never made ready */
	reg_write(&g, VIRTIO_MMIO_STATUS, 0);
	reg_write(&g, VIRTIO_MMIO_QUEUE_NUM, 6);
	reg_write(&g, VIRTIO_MMIO_QUEUE_DESC_LOW, DESC);
	reg_write(&g, VIRTIO_MMIO_QUEUE_AVAIL_LOW, AVAIL);
	reg_write(&g, VIRTIO_MMIO_QUEUE_USED_LOW, USED);
	reg_write(&g, VIRTIO_MMIO_QUEUE_READY, 1);
	assert_int_equal(reg_read(&g, VIRTIO_MMIO_QUEUE_READY), 0);
	assert_true(reg_read(&g, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET);
	reg_write(&g, VIRTIO_MMIO_STATUS, 0);
	reg_write(&g, VIRTIO_MMIO_QUEUE_NUM, QNUM);
	reg_write(&g, VIRTIO_MMIO_QUEUE_DESC_LOW, RAM_SIZE - 64);
	reg_write(&g, VIRTIO_MMIO_QUEUE_READY, 1);
	assert_int_equal(reg_read(&g, VIRTIO_MMIO_QUEUE_READY), 0);
	/* features without VERSION_1 are not accepted */
	reg_write(&g, VIRTIO_MMIO_STATUS, 0);
	reg_write(&g, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
	reg_write(&g, VIRTIO_MMIO_DRIVER_FEATURES, 1u << VIRTIO_BLK_F_FLUSH);
	reg_write(&g, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_FEATURES_OK);
	assert_false(reg_read(&g, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_FEATURES_OK);
	/* a notification before the queue is ready does nothing */
	reg_write(&g, VIRTIO_MMIO_STATUS, 0);
	n = used_idx(&g);
	reg_write(&g, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
	reg_write(&g, VIRTIO_MMIO_QUEUE_NOTIFY, 77);
	assert_int_equal(used_idx(&g), n);
	/* odd-sized and misaligned register accesses read zero */
	{
		uint8_t b[2] = { 1, 1 };

		g.d.io_fn(g.d.dev, VIRTIO_MMIO_MAGIC_VALUE, b, 2, false);
		assert_int_equal(b[0] | b[1], 0);
	}
	tg_driver_init(&g, QNUM);
	assert_int_equal(req_run(&g, 0, VIRTIO_BLK_T_IN, 0, DATA, 512, true), VIRTIO_BLK_S_OK);
	tg_teardown(&g);
}

static void test_quiesce_takes_no_work(void **state)
{
	struct tg g;

	(void)state;
	tg_setup(&g, false);
	g.d.ops->quiesce(g.d.dev);
	avail_push(&g, req_build(&g, 0, VIRTIO_BLK_T_IN, 0, DATA, 512, true));
	usleep(50 * 1000);
	g.d.ops->quiesce(g.d.dev);
	assert_int_equal(used_idx(&g), 0);
	/* resume finds the request queued while quiesced, without a new notification */
	g.d.ops->resume(g.d.dev);
	wait_used(&g, 1);
	tg_teardown(&g);
}

/* Quiesce returns with every request the device took complete (none left in a kernel ring). */
static void test_quiesce_completes_taken(void **state)
{
	struct virtio_mmio *t;
	struct tg g;

	(void)state;
	tg_setup(&g, false);
	t = (struct virtio_mmio *)g.d.dev; /* the transport is the device's first member */
	/* many rounds: the pause lands at a different point of the device's work each time */
	for (unsigned round = 0; round < 200; round++) {
		for (unsigned s = 0; s < 5; s++)
			avail_push(&g, req_build(&g, s, s % 2 ? VIRTIO_BLK_T_OUT : VIRTIO_BLK_T_IN,
						 0, DATA + s * 0x10000, DISK_SIZE, s % 2 == 0));
		usleep(round % 100);
		g.d.ops->quiesce(g.d.dev);
		assert_int_equal(used_idx(&g), t->q[0].next_avail);
		g.d.ops->resume(g.d.dev);
		wait_used(&g, (uint16_t)(5 * (round + 1)));
		for (unsigned s = 0; s < 5; s++)
			assert_int_equal(g.fg.ram[STATUS + s], VIRTIO_BLK_S_OK);
	}
	tg_teardown(&g);
}

static void test_state_round_trip(void **state)
{
	struct tg g, h;
	struct errbuf e;
	struct buf b;

	(void)state;
	tg_setup(&g, false);
	assert_int_equal(req_run(&g, 0, VIRTIO_BLK_T_OUT, 1, DATA, 512, false), VIRTIO_BLK_S_OK);
	assert_int_equal(req_run(&g, 1, VIRTIO_BLK_T_OUT, 2, DATA, 512, false), VIRTIO_BLK_S_OK);
	g.d.ops->quiesce(g.d.dev);
	buf_init(&b);
	assert_int_equal(g.d.ops->save(g.d.dev, &b), 0);
	assert_int_equal(b.len, 92);

	/* a second device on a copy of the guest's memory continues where the first stopped */
	memset(&h, 0, sizeof(h));
	assert_int_equal(fake_guest_init(&h.fg, RAM_SIZE, 21), 0);
	memcpy(h.fg.ram, g.fg.ram, RAM_SIZE);
	assert_int_equal(tg_create(&h, g.path, false, &e), 0);
	assert_int_equal(h.d.ops->validate(h.d.dev, VIRTIO_BLK_STATE_VERSION, b.data, b.len, &e), 0);
	assert_int_equal(h.d.ops->load(h.d.dev, VIRTIO_BLK_STATE_VERSION, b.data, b.len, &e), 0);
	h.avail_idx = g.avail_idx;
	h.d.ops->resume(h.d.dev);
	assert_int_equal(reg_read(&h, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_DRIVER_OK,
			 VIRTIO_CONFIG_S_DRIVER_OK);
	assert_int_equal(req_run(&h, 2, VIRTIO_BLK_T_IN, 1, DATA + 0x8000, 1024, true),
			 VIRTIO_BLK_S_OK);
	assert_int_equal(used_idx(&h), 3);
	assert_memory_equal(h.fg.ram + DATA + 0x8000, g.fg.ram + DATA, 512);

	/* without a device or a guest (inspect): the structure alone */
	assert_int_equal(virtio_blk_type.ops->validate(NULL, 1, b.data, b.len, &e), 0);
	assert_int_equal(virtio_blk_type.ops->validate(NULL, 1, b.data, b.len - 2, &e), -EINVAL);

	/* what validate refuses, naming it; the device is left unchanged */
	{
		uint8_t bad[92];

		assert_int_equal(h.d.ops->validate(h.d.dev, 2, b.data, b.len, &e), -EINVAL);
		assert_int_equal(h.d.ops->validate(h.d.dev, 1, b.data, b.len - 1, &e), -EINVAL);
		memcpy(bad, b.data, sizeof(bad));
		le_put64(bad + 80, DISK_SIZE * 2);
		assert_int_equal(h.d.ops->validate(h.d.dev, 1, bad, sizeof(bad), &e), -EINVAL);
		assert_non_null(strstr(e.msg, "changed size"));
		memcpy(bad, b.data, sizeof(bad));
		bad[88] = 1; /* readonly in the saved guest, but it was not offered RO */
		assert_int_equal(h.d.ops->validate(h.d.dev, 1, bad, sizeof(bad), &e), -EINVAL);
		assert_int_equal(virtio_blk_type.ops->validate(NULL, 1, bad, sizeof(bad), &e),
				 -EINVAL);
		bad[0] |= 1u << VIRTIO_BLK_F_RO; /* consistent, but the disk here is writable */
		assert_int_equal(virtio_blk_type.ops->validate(NULL, 1, bad, sizeof(bad), &e), 0);
		assert_int_equal(h.d.ops->validate(h.d.dev, 1, bad, sizeof(bad), &e), -EINVAL);
		assert_non_null(strstr(e.msg, "was readonly for the guest"));
		memcpy(bad, b.data, sizeof(bad));
		bad[76] = 9; /* a request taken and never completed */
		assert_int_equal(h.d.ops->load(h.d.dev, 1, bad, sizeof(bad), &e), -EINVAL);
		memcpy(bad, b.data, sizeof(bad));
		le_put64(bad + 52, RAM_SIZE); /* descriptors outside RAM */
		assert_int_equal(h.d.ops->validate(h.d.dev, 1, bad, sizeof(bad), &e), -EINVAL);
		memcpy(bad, b.data, sizeof(bad));
		le_put32(bad + 44, 6); /* not a power of two */
		assert_int_equal(h.d.ops->validate(h.d.dev, 1, bad, sizeof(bad), &e), -EINVAL);
		memcpy(bad, b.data, sizeof(bad));
		le_put64(bad + 8, 1ull << 40); /* a feature never offered */
		assert_int_equal(h.d.ops->validate(h.d.dev, 1, bad, sizeof(bad), &e), -EINVAL);
		assert_int_equal(req_run(&h, 0, VIRTIO_BLK_T_IN, 1, DATA, 512, true),
				 VIRTIO_BLK_S_OK);
	}
	buf_free(&b);
	h.d.ops->destroy(h.d.dev);
	fake_guest_free(&h.fg);
	tg_teardown(&g);
}

static void test_disk_lock(void **state)
{
	struct tg g, h, r;
	struct errbuf e;

	(void)state;
	memset(&g, 0, sizeof(g));
	memset(&h, 0, sizeof(h));
	memset(&r, 0, sizeof(r));
	tg_file(&g, DISK_SIZE);
	assert_int_equal(tg_create(&g, g.path, false, &e), 0);
	assert_int_equal(tg_create(&h, g.path, false, &e), 0);
	assert_int_equal(tg_create(&r, g.path, true, &e), 0);
	assert_int_equal(g.d.ops->claim(g.d.dev, &e), 0);
	assert_int_equal(h.d.ops->claim(h.d.dev, &e), -EBUSY);
	assert_non_null(strstr(e.msg, "in use"));
	assert_int_equal(r.d.ops->claim(r.d.dev, &e), -EBUSY);
	/* released (at a migration's COMMIT): the next one gets it */
	g.d.ops->release(g.d.dev);
	assert_int_equal(h.d.ops->claim(h.d.dev, &e), 0);
	h.d.ops->release(h.d.dev);
	/* readonly users share */
	assert_int_equal(r.d.ops->claim(r.d.dev, &e), 0);
	g.d.ops->destroy(g.d.dev);
	h.d.ops->destroy(h.d.dev);
	r.d.ops->destroy(r.d.dev);
	/* files that cannot be disks */
	assert_int_equal(tg_create(&g, "/nonexistent/disk", false, &e), -ENOENT);
	assert_non_null(strstr(e.msg, "/nonexistent/disk"));
	assert_int_equal(truncate(g.path, 1000), 0);
	assert_int_equal(tg_create(&g, g.path, false, &e), -EINVAL);
	assert_int_equal(tg_create(&g, "/tmp", true, &e), -EINVAL);
	assert_non_null(strstr(e.msg, "not a regular file"));
	unlink(g.path);
	fake_guest_free(&g.fg);
	fake_guest_free(&h.fg);
	fake_guest_free(&r.fg);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_write_read_back),
		cmocka_unit_test(test_bad_requests_get_error_status),
		cmocka_unit_test(test_discard_write_zeroes),
		cmocka_unit_test(test_readonly_disk_refuses_writes),
		cmocka_unit_test(test_malformed_queues_need_reset),
		cmocka_unit_test(test_queue_setup_checked),
		cmocka_unit_test(test_quiesce_takes_no_work),
		cmocka_unit_test(test_state_round_trip),
		cmocka_unit_test(test_quiesce_completes_taken),
		cmocka_unit_test(test_disk_lock),
	};
	struct tg g = { 0 };
	struct errbuf e;
	int failed = cmocka_run_group_tests_name("aio=thread", tests, NULL, NULL);

	/* aio=uring where this build and kernel have it */
	tg_aio = DEV_AIO_URING;
	tg_file(&g, DISK_SIZE);
	if (tg_create(&g, g.path, false, &e) < 0) {
		printf("aio=uring skipped: %s\n", e.msg);
	} else {
		g.d.ops->destroy(g.d.dev);
		failed += cmocka_run_group_tests_name("aio=uring", tests, NULL, NULL);
	}
	unlink(g.path);
	fake_guest_free(&g.fg);
	return failed;
}
