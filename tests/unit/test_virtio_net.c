/* SPDX-License-Identifier: MIT */
/*
 * virtio-net over virtio-mmio against the fake guest of fake_guest.h (RAM that records the
 * pages the device marks dirty, an interrupt line that is a flag), the tap one end of a
 * SOCK_SEQPACKET pair (a frame a message, with the 12-byte virtio_net_hdr in front, as a
 * tap with IFF_VNET_HDR gives them). The driver side is written here from the virtio spec:
 * frames both ways, dirty marking, bad chains from the guest, the control queue, a frame
 * waiting at a pause, a lost tap, a flood, state round trips and the announcements after a
 * move.
 */
#include "devices/virtio_mmio.h"
#include "devices/virtio_net.h"
#include "fake_guest.h"

#include <errno.h>
#include <linux/sockios.h>
#include <linux/virtio_config.h>
#include <linux/virtio_mmio.h>
#include <linux/virtio_net.h>
#include <linux/virtio_ring.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#define RAM_SIZE (1u << 20)
#define QNUM 16u
#define QBASE(q) (0x1000u + 0x3000u * (q)) /* descriptors; avail +0x1000, used +0x2000 */
#define BUF 0x10000u			  /* buffer i at BUF + 0x1000 * i */
#define HDR_LEN 12u
#define RXQ 0u
#define TXQ 1u
#define CTRLQ 2u

struct tg {
	struct fake_guest fg;
	struct device_info d;
	int peer; /* the host side of the "tap" */
	int tap;  /* the device's side (it owns it): what it has not read yet */
	uint16_t avail_idx[3];
};

static void reg_write(struct tg *g, uint64_t off, uint32_t v)
{
	fake_guest_reg_write(&g->d, off, v);
}

static uint32_t reg_read(struct tg *g, uint64_t off)
{
	return fake_guest_reg_read(&g->d, off);
}

static uint16_t cfg_status(struct tg *g)
{
	uint8_t b[2];

	g->d.io_fn(g->d.dev, VIRTIO_MMIO_CONFIG + 6, b, 2, false);
	return le_get16(b);
}

static int tg_create(struct tg *g, const struct device_spec *spec, struct errbuf *e)
{
	struct device_env env = fake_guest_env(&g->fg, 0xd0000000);
	int sv[2];

	assert_int_equal(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
	g->peer = sv[1];
	g->tap = sv[0];
	return virtio_net_create_fd(spec, &env, sv[0], 1500, &g->d, e);
}

static void queue_setup(struct tg *g, unsigned q)
{
	reg_write(g, VIRTIO_MMIO_QUEUE_SEL, q);
	reg_write(g, VIRTIO_MMIO_QUEUE_NUM, QNUM);
	reg_write(g, VIRTIO_MMIO_QUEUE_DESC_LOW, QBASE(q));
	reg_write(g, VIRTIO_MMIO_QUEUE_AVAIL_LOW, QBASE(q) + 0x1000);
	reg_write(g, VIRTIO_MMIO_QUEUE_USED_LOW, QBASE(q) + 0x2000);
	reg_write(g, VIRTIO_MMIO_QUEUE_READY, 1);
}

/* Initialisation (virtio spec 3.1.1) with the three queues and the given features. */
static void tg_driver_init(struct tg *g, uint64_t features)
{
	reg_write(g, VIRTIO_MMIO_STATUS, 0);
	reg_write(g, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER);
	reg_write(g, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
	reg_write(g, VIRTIO_MMIO_DRIVER_FEATURES, (uint32_t)features);
	reg_write(g, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
	reg_write(g, VIRTIO_MMIO_DRIVER_FEATURES, (uint32_t)(features >> 32) | 1);
	reg_write(g, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER |
						 VIRTIO_CONFIG_S_FEATURES_OK);
	assert_true(reg_read(g, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_FEATURES_OK);
	for (unsigned q = 0; q < 3; q++)
		queue_setup(g, q);
	reg_write(g, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER |
						 VIRTIO_CONFIG_S_FEATURES_OK |
						 VIRTIO_CONFIG_S_DRIVER_OK);
	memset(g->avail_idx, 0, sizeof(g->avail_idx));
}

#define FEATURES_ALL                                                                        \
	(1ull << VIRTIO_NET_F_MAC | 1ull << VIRTIO_NET_F_STATUS | 1ull << VIRTIO_NET_F_CTRL_VQ | \
	 1ull << VIRTIO_NET_F_GUEST_ANNOUNCE)

static void tg_setup(struct tg *g)
{
	struct device_spec spec = { .type = VIRTIO_NET_TYPE, .id = "net0", .path = "fake",
				    .mac = { 0x02, 0, 0, 0, 0, 0x42 }, .mac_set = true };
	struct errbuf e;

	memset(g, 0, sizeof(*g));
	assert_int_equal(fake_guest_init(&g->fg, RAM_SIZE, 16), 0);
	assert_int_equal(tg_create(g, &spec, &e), 0);
	g->d.ops->resume(g->d.dev);
	tg_driver_init(g, FEATURES_ALL);
}

static void tg_teardown(struct tg *g)
{
	g->d.ops->destroy(g->d.dev);
	if (g->peer >= 0)
		close(g->peer);
	fake_guest_free(&g->fg);
}

static void desc_set(struct tg *g, unsigned q, unsigned i, uint64_t addr, uint32_t len,
		     uint16_t flags, uint16_t next)
{
	fake_guest_desc_set(&g->fg, QBASE(q), i, addr, len, flags, next);
}

static void avail_push(struct tg *g, unsigned q, uint16_t head)
{
	fake_guest_avail_push(&g->fg, QBASE(q) + 0x1000, QNUM, &g->avail_idx[q], head);
	reg_write(g, VIRTIO_MMIO_QUEUE_NOTIFY, q);
}

static uint16_t used_idx(struct tg *g, unsigned q)
{
	return fake_guest_used_idx(&g->fg, QBASE(q) + 0x2000);
}

static uint32_t used_len(struct tg *g, unsigned q, uint16_t i)
{
	return fake_guest_used_len(&g->fg, QBASE(q) + 0x2000, QNUM, i);
}

/* Waits (bounded, not timed) until queue q published n used entries. */
static void wait_used(struct tg *g, unsigned q, uint16_t n)
{
	for (int i = 0; i < 10000 && used_idx(g, q) != n; i++)
		usleep(1000);
	assert_int_equal(used_idx(g, q), n);
}

static void wait_needs_reset(struct tg *g)
{
	for (int i = 0; i < 10000 && !(reg_read(g, VIRTIO_MMIO_STATUS) &
				       VIRTIO_CONFIG_S_NEEDS_RESET); i++)
		usleep(1000);
	assert_true(reg_read(g, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET);
}

/* Bytes queued on the "tap" that the device has not read. */
static int tap_pending(struct tg *g)
{
	int n = -1;

	assert_int_equal(ioctl(g->tap, SIOCINQ, &n), 0);
	return n;
}

/* Waits (bounded, not timed) until the device's I/O thread took every frame from the tap. */
static void wait_tap_read(struct tg *g)
{
	for (int i = 0; i < 10000 && tap_pending(g); i++)
		usleep(1000);
	assert_int_equal(tap_pending(g), 0);
}

/* A frame of len bytes: broadcast destination, our MAC, ethertype 0x88b5, then a pattern. */
static void frame_fill(uint8_t *f, size_t len, uint8_t seed)
{
	memset(f, 0xff, 6);
	memcpy(f + 6, (uint8_t[]){ 0x02, 0, 0, 0, 0, 0x42 }, 6);
	f[12] = 0x88;
	f[13] = 0xb5;
	for (size_t i = 14; i < len; i++)
		f[i] = (uint8_t)(seed + i);
}

/* Receives one message from the device (or -1 if none comes within a bounded wait). */
static ssize_t peer_recv(struct tg *g, uint8_t *buf, size_t size, int wait_ms)
{
	struct pollfd p = { .fd = g->peer, .events = POLLIN };

	if (poll(&p, 1, wait_ms) != 1)
		return -1;
	return recv(g->peer, buf, size, 0);
}

static void peer_send(struct tg *g, const uint8_t *frame, size_t len)
{
	uint8_t msg[HDR_LEN + 10000] = { 0 };

	memcpy(msg + HDR_LEN, frame, len);
	assert_int_equal(send(g->peer, msg, HDR_LEN + len, 0), (ssize_t)(HDR_LEN + len));
}

/* A transmit chain: header in one descriptor, the frame in a second. */
static void tx_post(struct tg *g, unsigned slot, const uint8_t *frame, uint32_t len)
{
	uint64_t b = BUF + 0x4000 * slot;

	memset(g->fg.ram + b, 0, HDR_LEN);
	memcpy(g->fg.ram + b + 0x100, frame, len);
	desc_set(g, TXQ, 2 * slot, b, HDR_LEN, VRING_DESC_F_NEXT, 2 * slot + 1);
	desc_set(g, TXQ, 2 * slot + 1, b + 0x100, len, 0, 0);
	avail_push(g, TXQ, (uint16_t)(2 * slot));
}

/* A receive buffer of len bytes, one descriptor. */
static void rx_post(struct tg *g, unsigned slot, uint32_t len)
{
	desc_set(g, RXQ, slot, BUF + 0x40000 + 0x1000 * slot, len, VRING_DESC_F_WRITE, 0);
	avail_push(g, RXQ, (uint16_t)slot);
}

static void test_config_and_features(void **state)
{
	struct tg g;
	uint8_t mac[6];

	(void)state;
	tg_setup(&g);
	assert_int_equal(reg_read(&g, VIRTIO_MMIO_DEVICE_ID), VIRTIO_ID_NET);
	reg_write(&g, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
	assert_int_equal(reg_read(&g, VIRTIO_MMIO_DEVICE_FEATURES), (uint32_t)FEATURES_ALL);
	for (unsigned i = 0; i < 6; i++)
		g.d.io_fn(g.d.dev, VIRTIO_MMIO_CONFIG + i, &mac[i], 1, false);
	assert_memory_equal(mac, ((uint8_t[]){ 0x02, 0, 0, 0, 0, 0x42 }), 6);
	assert_int_equal(cfg_status(&g), VIRTIO_NET_S_LINK_UP);
	tg_teardown(&g);
}

static void test_tx_rx(void **state)
{
	uint8_t f[1514], got[HDR_LEN + 2000];
	struct tg g;
	ssize_t n;

	(void)state;
	tg_setup(&g);
	/* transmit: the tap gets a zero header and the frame as the guest wrote it */
	frame_fill(f, 100, 1);
	tx_post(&g, 0, f, 100);
	wait_used(&g, TXQ, 1);
	n = peer_recv(&g, got, sizeof(got), 5000);
	assert_int_equal(n, HDR_LEN + 100);
	assert_memory_equal(got + HDR_LEN, f, 100);
	assert_true(fake_guest_dirty(&g.fg, QBASE(TXQ) + 0x2000)); /* the used ring */

	/* receive: header (num_buffers 1) and the whole frame, its pages marked dirty */
	frame_fill(f, 1514, 7);
	rx_post(&g, 0, 2048);
	peer_send(&g, f, 1514);
	wait_used(&g, RXQ, 1);
	assert_int_equal(used_len(&g, RXQ, 0), HDR_LEN + 1514);
	assert_int_equal(le_get16(g.fg.ram + BUF + 0x40000 + 10), 1);
	assert_memory_equal(g.fg.ram + BUF + 0x40000 + HDR_LEN, f, 1514);
	assert_true(fake_guest_dirty(&g.fg, BUF + 0x40000));
	assert_true(fake_guest_dirty(&g.fg, QBASE(RXQ) + 0x2000));
	assert_true(atomic_load(&g.fg.irq));
	tg_teardown(&g);
}

static void test_bad_tx_dropped(void **state)
{
	uint8_t f[1600], got[2048];
	struct tg g;

	(void)state;
	tg_setup(&g);
	/* over the MTU (1500 + 14 + a VLAN tag): completed, nothing sent */
	frame_fill(f, 1519, 3);
	tx_post(&g, 0, f, 1519);
	wait_used(&g, TXQ, 1);
	/* header only, no Ethernet header */
	desc_set(&g, TXQ, 4, BUF, 8, 0, 0);
	avail_push(&g, TXQ, 4);
	wait_used(&g, TXQ, 2);
	assert_int_equal(peer_recv(&g, got, sizeof(got), 100), -1);
	/* the device goes on: a good frame after them goes out */
	frame_fill(f, 60, 9);
	tx_post(&g, 1, f, 60);
	wait_used(&g, TXQ, 3);
	assert_int_equal(peer_recv(&g, got, sizeof(got), 5000), HDR_LEN + 60);
	assert_false(reg_read(&g, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET);
	tg_teardown(&g);
}

static void test_bad_rx_chains(void **state)
{
	uint8_t f[1000];
	struct tg g;

	(void)state;
	tg_setup(&g);
	/* a buffer too short for the frame: completed empty, the frame dropped */
	rx_post(&g, 0, 64);
	frame_fill(f, 1000, 5);
	peer_send(&g, f, 1000);
	wait_used(&g, RXQ, 1);
	assert_int_equal(used_len(&g, RXQ, 0), 0);
	/* a frame over the MTU from the tap: dropped, the buffer stays for the next one */
	{
		static uint8_t big[3000];

		frame_fill(big, sizeof(big), 1);
		peer_send(&g, big, sizeof(big));
	}
	/* a device-readable buffer in a receive chain: the same */
	desc_set(&g, RXQ, 1, BUF + 0x40000, 2048, 0, 0);
	avail_push(&g, RXQ, 1);
	peer_send(&g, f, 1000);
	wait_used(&g, RXQ, 2);
	assert_int_equal(used_len(&g, RXQ, 1), 0);
	/* and a good one still works */
	rx_post(&g, 2, 2048);
	peer_send(&g, f, 100);
	wait_used(&g, RXQ, 3);
	assert_int_equal(used_len(&g, RXQ, 2), HDR_LEN + 100);
	tg_teardown(&g);
}

static void test_malformed_queues_need_reset(void **state)
{
	struct tg g;

	(void)state;
	/* a descriptor loop on the transmit queue */
	tg_setup(&g);
	desc_set(&g, TXQ, 0, BUF, 64, VRING_DESC_F_NEXT, 1);
	desc_set(&g, TXQ, 1, BUF, 64, VRING_DESC_F_NEXT, 0);
	avail_push(&g, TXQ, 0);
	wait_needs_reset(&g);
	tg_teardown(&g);
	/* a buffer outside guest RAM */
	tg_setup(&g);
	desc_set(&g, TXQ, 0, RAM_SIZE - 8, 64, 0, 0);
	avail_push(&g, TXQ, 0);
	wait_needs_reset(&g);
	tg_teardown(&g);
	/* a receive chain naming a descriptor past the queue */
	tg_setup(&g);
	desc_set(&g, RXQ, 0, BUF, 64, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, QNUM + 3);
	avail_push(&g, RXQ, 0);
	peer_send(&g, (uint8_t[60]){ 0 }, 60);
	wait_needs_reset(&g);
	tg_teardown(&g);
}

static void test_ctrl_announce_ack(void **state)
{
	struct tg g;
	uint64_t cmd = BUF + 0x80000, ack = cmd + 0x100;

	(void)state;
	tg_setup(&g);
	/* an unknown command is refused */
	g.fg.ram[cmd] = 99;
	g.fg.ram[cmd + 1] = 0;
	g.fg.ram[ack] = 0xee;
	desc_set(&g, CTRLQ, 0, cmd, 2, VRING_DESC_F_NEXT, 1);
	desc_set(&g, CTRLQ, 1, ack, 1, VRING_DESC_F_WRITE, 0);
	avail_push(&g, CTRLQ, 0);
	wait_used(&g, CTRLQ, 1);
	assert_int_equal(g.fg.ram[ack], VIRTIO_NET_ERR);
	assert_true(fake_guest_dirty(&g.fg, ack));
	/* ANNOUNCE_ACK answers OK */
	g.fg.ram[cmd] = VIRTIO_NET_CTRL_ANNOUNCE;
	g.fg.ram[cmd + 1] = VIRTIO_NET_CTRL_ANNOUNCE_ACK;
	avail_push(&g, CTRLQ, 0);
	wait_used(&g, CTRLQ, 2);
	assert_int_equal(g.fg.ram[ack], VIRTIO_NET_OK);
	tg_teardown(&g);
}

/* A frame that waits for a receive buffer is delivered when one comes. */
static void test_rx_waits_for_buffer(void **state)
{
	uint8_t f[200];
	struct tg g;

	(void)state;
	tg_setup(&g);
	frame_fill(f, 200, 11);
	peer_send(&g, f, 200);
	wait_tap_read(&g);
	assert_int_equal(used_idx(&g, RXQ), 0);
	rx_post(&g, 0, 2048);
	wait_used(&g, RXQ, 1);
	assert_int_equal(used_len(&g, RXQ, 0), HDR_LEN + 200);
	assert_memory_equal(g.fg.ram + BUF + 0x40000 + HDR_LEN, f, 200);
	tg_teardown(&g);
}

/*
 * At a pause a waiting frame goes to a buffer if the guest has one, else it is dropped:
 * either way the saved queues have nothing taken and not completed (load checks that).
 */
static void test_quiesce_settles_rx(void **state)
{
	uint8_t f[200];
	struct buf out;
	struct tg g;
	struct errbuf e;

	(void)state;
	tg_setup(&g);
	frame_fill(f, 200, 13);
	peer_send(&g, f, 200);
	wait_tap_read(&g); /* the thread has it and waits for a buffer */
	g.d.ops->quiesce(g.d.dev);
	buf_init(&out);
	assert_int_equal(g.d.ops->save(g.d.dev, &out), 0);
	assert_int_equal(g.d.ops->validate(g.d.dev, VIRTIO_NET_STATE_VERSION, out.data, out.len,
					   &e), 0);
	buf_free(&out);
	/* the guest adds a buffer while paused: nothing arrives until it runs again */
	desc_set(&g, RXQ, 0, BUF + 0x40000, 2048, VRING_DESC_F_WRITE, 0);
	g.fg.ram[QBASE(RXQ) + 0x1000 + 4] = 0;
	g.avail_idx[RXQ] = 1;
	__atomic_store_n((uint16_t *)(g.fg.ram + QBASE(RXQ) + 0x1000 + 2), 1, __ATOMIC_RELEASE);
	peer_send(&g, f, 100);
	usleep(20000); /* time to misbehave: a paused NIC neither reads the tap nor delivers */
	assert_int_equal(used_idx(&g, RXQ), 0);
	assert_int_equal(tap_pending(&g), HDR_LEN + 100);
	g.d.ops->resume(g.d.dev);
	/* the frame from before the pause was dropped; the one after is delivered */
	wait_used(&g, RXQ, 1);
	assert_int_equal(used_len(&g, RXQ, 0), HDR_LEN + 100);
	tg_teardown(&g);
}

/* Frames the guest queued before a pause (no notification seen yet) go out at the pause. */
static void test_quiesce_finishes_tx(void **state)
{
	uint8_t f[80], got[256];
	struct tg g;

	(void)state;
	tg_setup(&g);
	frame_fill(f, 80, 21);
	for (unsigned i = 0; i < 3; i++) {
		uint64_t b = BUF + 0x4000 * i;

		memset(g.fg.ram + b, 0, HDR_LEN);
		memcpy(g.fg.ram + b + 0x100, f, 80);
		desc_set(&g, TXQ, 2 * i, b, HDR_LEN, VRING_DESC_F_NEXT, 2 * i + 1);
		desc_set(&g, TXQ, 2 * i + 1, b + 0x100, 80, 0, 0);
		g.fg.ram[QBASE(TXQ) + 0x1000 + 4 + 2 * i] = (uint8_t)(2 * i);
	}
	__atomic_store_n((uint16_t *)(g.fg.ram + QBASE(TXQ) + 0x1000 + 2), 3, __ATOMIC_RELEASE);
	g.d.ops->quiesce(g.d.dev);
	assert_int_equal(used_idx(&g, TXQ), 3);
	for (unsigned i = 0; i < 3; i++)
		assert_int_equal(peer_recv(&g, got, sizeof(got), 1000), HDR_LEN + 80);
	g.d.ops->resume(g.d.dev);
	tg_teardown(&g);
}

static void *flood_thread(void *arg)
{
	struct tg *g = arg;
	uint8_t msg[HDR_LEN + 60] = { 0 };

	frame_fill(msg + HDR_LEN, 60, 0);
	while (send(g->peer, msg, sizeof(msg), MSG_NOSIGNAL) > 0)
		;
	return NULL;
}

/* A flood from the tap: pauses and transmits still get through, the device stays sound. */
static void test_flood(void **state)
{
	uint8_t f[60], got[128];
	pthread_t th;
	struct tg g;

	(void)state;
	tg_setup(&g);
	for (unsigned i = 0; i < QNUM; i++)
		rx_post(&g, i, 2048);
	assert_int_equal(pthread_create(&th, NULL, flood_thread, &g), 0);
	for (unsigned k = 0; k < 20; k++) {
		g.d.ops->quiesce(g.d.dev);
		g.d.ops->resume(g.d.dev);
	}
	frame_fill(f, 60, 1);
	tx_post(&g, 0, f, 60);
	wait_used(&g, TXQ, 1);
	wait_used(&g, RXQ, QNUM);
	shutdown(g.peer, SHUT_RDWR);
	pthread_join(th, NULL);
	(void)got;
	assert_false(reg_read(&g, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET);
	tg_teardown(&g);
}

/* The tap goes away: the link goes down, transmits complete (dropped), nothing crashes. */
static void test_tap_lost(void **state)
{
	uint8_t f[60];
	struct tg g;

	(void)state;
	tg_setup(&g);
	close(g.peer);
	g.peer = -1;
	for (int i = 0; i < 10000 && (cfg_status(&g) & VIRTIO_NET_S_LINK_UP); i++)
		usleep(1000);
	assert_int_equal(cfg_status(&g) & VIRTIO_NET_S_LINK_UP, 0);
	assert_true(reg_read(&g, VIRTIO_MMIO_INTERRUPT_STATUS) & VIRTIO_MMIO_INT_CONFIG);
	frame_fill(f, 60, 1);
	tx_post(&g, 0, f, 60);
	wait_used(&g, TXQ, 1);
	assert_false(reg_read(&g, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET);
	tg_teardown(&g);
}

/* Saves a running NIC's state, quiesced. */
static void state_of(struct tg *g, struct buf *out)
{
	g->d.ops->quiesce(g->d.dev);
	buf_init(out);
	assert_int_equal(g->d.ops->save(g->d.dev, out), 0);
}

static void test_state_round_trip_and_announce(void **state)
{
	struct device_spec spec = { .type = VIRTIO_NET_TYPE, .id = "net0", .path = "other" };
	struct virtio_net_announce a = { .rounds = 3, .initial_ms = 0, .step_ms = 1, .max_ms = 5 };
	uint8_t got[128], mac[6] = { 0x02, 0, 0, 0, 0, 0x42 };
	struct tg src, dst;
	struct buf out;
	struct errbuf e;
	uint8_t f[100];

	(void)state;
	virtio_net_announce_set(&a);
	tg_setup(&src);
	tx_post(&src, 0, (frame_fill(f, 100, 2), f), 100);
	wait_used(&src, TXQ, 1);
	state_of(&src, &out);

	/* the destination: another tap, a MAC derived from it, until the state says otherwise */
	memset(&dst, 0, sizeof(dst));
	assert_int_equal(fake_guest_init(&dst.fg, RAM_SIZE, 16), 0);
	memcpy(dst.fg.ram, src.fg.ram, RAM_SIZE);
	assert_int_equal(tg_create(&dst, &spec, &e), 0);
	memcpy(dst.avail_idx, src.avail_idx, sizeof(dst.avail_idx));
	assert_int_equal(dst.d.ops->load(dst.d.dev, VIRTIO_NET_STATE_VERSION, out.data, out.len,
					 &e), 0);
	assert_int_equal(dst.d.ops->claim(dst.d.dev, &e), 0);
	assert_int_equal(dst.d.ops->announced(dst.d.dev), 0);
	dst.d.ops->resume(dst.d.dev);
	/* the guest negotiated GUEST_ANNOUNCE: asked to announce, through a config interrupt */
	for (int i = 0; i < 10000 && !(cfg_status(&dst) & VIRTIO_NET_S_ANNOUNCE); i++)
		usleep(1000);
	assert_int_equal(cfg_status(&dst), VIRTIO_NET_S_LINK_UP | VIRTIO_NET_S_ANNOUNCE);
	assert_true(reg_read(&dst, VIRTIO_MMIO_INTERRUPT_STATUS) & VIRTIO_MMIO_INT_CONFIG);
	/* and the host sends its RARPs from the guest's MAC */
	for (unsigned r = 0; r < 3; r++) {
		assert_int_equal(peer_recv(&dst, got, sizeof(got), 5000), HDR_LEN + 60);
		assert_memory_equal(got + HDR_LEN + 6, mac, 6);
		assert_int_equal(got[HDR_LEN + 12], 0x80);
		assert_int_equal(got[HDR_LEN + 13], 0x35);
		assert_memory_equal(got + HDR_LEN + 22, mac, 6);
	}
	for (int i = 0; i < 10000 && dst.d.ops->announced(dst.d.dev) != 3; i++)
		usleep(1000);
	assert_int_equal(dst.d.ops->announced(dst.d.dev), 3);
	/* the queues carried on: the next transmit uses the next used slot */
	tx_post(&dst, 1, f, 100);
	wait_used(&dst, TXQ, 2);
	dst.d.ops->destroy(dst.d.dev);
	close(dst.peer);
	fake_guest_free(&dst.fg);
	buf_free(&out);
	tg_teardown(&src);
	a = (struct virtio_net_announce)VIRTIO_NET_ANNOUNCE_DEFAULT;
	virtio_net_announce_set(&a);
}

/* A NIC that booted here (nothing loaded) does not announce. */
static void test_no_announce_at_boot(void **state)
{
	struct virtio_net_announce a = { .rounds = 3, .initial_ms = 0, .step_ms = 1, .max_ms = 5 };
	uint8_t got[128];
	struct errbuf e;
	struct tg g;

	(void)state;
	virtio_net_announce_set(&a);
	tg_setup(&g);
	assert_int_equal(g.d.ops->claim(g.d.dev, &e), 0);
	g.d.ops->quiesce(g.d.dev);
	g.d.ops->resume(g.d.dev);
	assert_int_equal(peer_recv(&g, got, sizeof(got), 100), -1);
	assert_int_equal(g.d.ops->announced(g.d.dev), 0);
	assert_int_equal(cfg_status(&g), VIRTIO_NET_S_LINK_UP);
	tg_teardown(&g);
	a = (struct virtio_net_announce)VIRTIO_NET_ANNOUNCE_DEFAULT;
	virtio_net_announce_set(&a);
}

/*
 * A driver reset while an announcement is pending withdraws it: the next driver (which may
 * not negotiate GUEST_ANNOUNCE, and could not acknowledge it) starts with a plain status and
 * no configuration interrupt.
 */
static void test_driver_reset_clears_announce(void **state)
{
	struct virtio_net_announce a = { .rounds = 0 }; /* the guest's part only, no RARPs */
	struct errbuf e;
	struct buf out;
	struct tg g;

	(void)state;
	virtio_net_announce_set(&a);
	tg_setup(&g);
	/* as after a move: the NIC's own state loaded back, the tap claimed, the guest resumed */
	state_of(&g, &out);
	assert_int_equal(g.d.ops->load(g.d.dev, VIRTIO_NET_STATE_VERSION, out.data, out.len, &e),
			 0);
	buf_free(&out);
	assert_int_equal(g.d.ops->claim(g.d.dev, &e), 0);
	g.d.ops->resume(g.d.dev);
	for (int i = 0; i < 10000 && !(cfg_status(&g) & VIRTIO_NET_S_ANNOUNCE); i++)
		usleep(1000);
	assert_int_equal(cfg_status(&g), VIRTIO_NET_S_LINK_UP | VIRTIO_NET_S_ANNOUNCE);
	assert_true(reg_read(&g, VIRTIO_MMIO_INTERRUPT_STATUS) & VIRTIO_MMIO_INT_CONFIG);
	assert_true(atomic_load(&g.fg.irq));

	reg_write(&g, VIRTIO_MMIO_STATUS, 0);
	assert_int_equal(cfg_status(&g), VIRTIO_NET_S_LINK_UP);
	assert_int_equal(reg_read(&g, VIRTIO_MMIO_INTERRUPT_STATUS), 0);
	assert_false(atomic_load(&g.fg.irq));
	/* a new driver without GUEST_ANNOUNCE is not asked to announce */
	memset(g.fg.ram, 0, RAM_SIZE);
	tg_driver_init(&g, FEATURES_ALL & ~(1ull << VIRTIO_NET_F_GUEST_ANNOUNCE));
	assert_int_equal(cfg_status(&g), VIRTIO_NET_S_LINK_UP);
	assert_int_equal(reg_read(&g, VIRTIO_MMIO_INTERRUPT_STATUS), 0);
	tg_teardown(&g);
	a = (struct virtio_net_announce)VIRTIO_NET_ANNOUNCE_DEFAULT;
	virtio_net_announce_set(&a);
}

static void test_state_rejects(void **state)
{
	struct tg g;
	struct buf out;
	struct errbuf e;
	uint8_t *p;
	size_t mac_off;

	(void)state;
	tg_setup(&g);
	state_of(&g, &out);
	p = out.data;
	mac_off = out.len - 12;
	assert_int_equal(g.d.ops->validate(NULL, VIRTIO_NET_STATE_VERSION, p, out.len, &e), 0);
	assert_int_equal(g.d.ops->validate(NULL, 2, p, out.len, &e), -EINVAL);
	assert_int_equal(g.d.ops->validate(NULL, VIRTIO_NET_STATE_VERSION, p, out.len - 1, &e),
			 -EINVAL);
	p[mac_off] |= 1; /* multicast */
	assert_int_equal(g.d.ops->validate(g.d.dev, VIRTIO_NET_STATE_VERSION, p, out.len, &e),
			 -EINVAL);
	assert_non_null(strstr(e.msg, "unicast"));
	p[mac_off] &= (uint8_t)~1;
	p[mac_off + 6] = 0x80; /* unknown status bit */
	assert_int_equal(g.d.ops->validate(g.d.dev, VIRTIO_NET_STATE_VERSION, p, out.len, &e),
			 -EINVAL);
	assert_non_null(strstr(e.msg, "status"));
	/* a rejected load changes nothing */
	assert_int_equal(g.d.ops->load(g.d.dev, VIRTIO_NET_STATE_VERSION, p, out.len, &e),
			 -EINVAL);
	assert_int_equal(cfg_status(&g), VIRTIO_NET_S_LINK_UP);
	buf_free(&out);
	g.d.ops->resume(g.d.dev);
	tg_teardown(&g);
}

static void test_parsers(void **state)
{
	struct virtio_net_announce a;
	uint8_t mac[6];
	struct errbuf e;

	(void)state;
	assert_int_equal(virtio_net_mac_parse("52:54:00:12:34:56", mac), 0);
	assert_int_equal(mac[5], 0x56);
	assert_int_equal(virtio_net_mac_parse("01:00:5e:00:00:01", mac), -EINVAL);
	assert_int_equal(virtio_net_mac_parse("00:00:00:00:00:00", mac), -EINVAL);
	assert_int_equal(virtio_net_mac_parse("52:54:00:12:34", mac), -EINVAL);
	assert_int_equal(virtio_net_mac_parse("52:54:00:12:34:567", mac), -EINVAL);
	assert_int_equal(virtio_net_announce_parse("rounds=2,step=10", &a, &e), 0);
	assert_int_equal(a.rounds, 2);
	assert_int_equal(a.step_ms, 10);
	assert_int_equal(a.initial_ms, 50);
	assert_int_equal(virtio_net_announce_parse("rounds=0", &a, &e), 0);
	assert_int_equal(a.rounds, 0);
	assert_int_equal(virtio_net_announce_parse("rounds=-1", &a, &e), -EINVAL);
	assert_int_equal(virtio_net_announce_parse("rounds=1000", &a, &e), -EINVAL);
	assert_int_equal(virtio_net_announce_parse("speed=1", &a, &e), -EINVAL);
	assert_int_equal(virtio_net_announce_parse("initial", &a, &e), -EINVAL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_config_and_features),
		cmocka_unit_test(test_tx_rx),
		cmocka_unit_test(test_bad_tx_dropped),
		cmocka_unit_test(test_bad_rx_chains),
		cmocka_unit_test(test_malformed_queues_need_reset),
		cmocka_unit_test(test_ctrl_announce_ack),
		cmocka_unit_test(test_rx_waits_for_buffer),
		cmocka_unit_test(test_quiesce_settles_rx),
		cmocka_unit_test(test_quiesce_finishes_tx),
		cmocka_unit_test(test_flood),
		cmocka_unit_test(test_tap_lost),
		cmocka_unit_test(test_state_round_trip_and_announce),
		cmocka_unit_test(test_no_announce_at_boot),
		cmocka_unit_test(test_driver_reset_clears_announce),
		cmocka_unit_test(test_state_rejects),
		cmocka_unit_test(test_parsers),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
