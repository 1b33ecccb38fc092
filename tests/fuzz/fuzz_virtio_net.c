/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for virtio-net on virtio-mmio: a guest that controls everything a guest
 * controls (every register with any value, its RAM: descriptors, rings, headers and frames,
 * on the receive, transmit and control queues) and a tap that hands over frames of any size,
 * interleaved with pauses, state save/validate/load round trips with a byte changed, a move's
 * announcements and resets. The input is an operation stream (fuzz_virtio_net.h).
 *
 * RAM is the shared fake guest's (tests/unit/fake_guest.c): an exactly sized heap block, so
 * AddressSanitizer reports any device access outside it, and dirty marking outside RAM
 * aborts. The device's real I/O thread runs; the tap is one end of a SOCK_SEQPACKET pair.
 * Checked besides: no frame reaches the tap longer than the MTU, and the device never stops
 * answering a pause (a hang is a libFuzzer timeout).
 */
#include "../unit/fake_guest.h"
#include "devices/virtio_mmio.h"
#include "devices/virtio_net.h"
#include "fuzz_virtio_net.h"

#include <errno.h>
#include <linux/sockios.h>
#include <linux/virtio_config.h>
#include <linux/virtio_mmio.h>
#include <linux/virtio_net.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#define FN_MTU 1500u
#define FN_HDR 12u
#define FN_FRAME_MAX (FN_HDR + FN_MTU + 14u + 4u)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct fuzz_in {
	const uint8_t *p;
	size_t left;
};

static uint8_t in_u8(struct fuzz_in *in)
{
	if (!in->left)
		return 0;
	in->left--;
	return *in->p++;
}

static uint16_t in_u16(struct fuzz_in *in)
{
	return (uint16_t)(in_u8(in) | in_u8(in) << 8);
}

static uint32_t in_u32(struct fuzz_in *in)
{
	return (uint32_t)in_u16(in) | (uint32_t)in_u16(in) << 16;
}

struct fuzz_nic {
	struct fake_guest g;
	struct device_info d;
	int peer;
	unsigned qnum;
	uint64_t desc[3], avail[3];
	uint16_t avail_idx[3];
};

/* Everything the device sent on the tap so far: nothing over the MTU may leave. */
static void nic_drain(struct fuzz_nic *n)
{
	static uint8_t buf[65536];
	ssize_t r;

	while ((r = recv(n->peer, buf, sizeof(buf), MSG_DONTWAIT)) > 0) {
		if ((size_t)r > FN_FRAME_MAX) {
			fprintf(stderr, "fuzz_virtio_net: a %zd-byte frame reached the tap\n", r);
			abort();
		}
	}
}

/* The I/O thread takes the kick (bounded wait), then the NIC is paused and resumed. */
static void nic_settle(struct fuzz_nic *n)
{
	uint64_t one = 1;
	struct pollfd p = { .fd = n->d.notify_fd, .events = POLLIN };

	if (write(n->d.notify_fd, &one, sizeof(one)) != sizeof(one))
		return;
	for (int i = 0; i < 200 && poll(&p, 1, 0) == 1; i++)
		usleep(50);
	n->d.ops->quiesce(n->d.dev);
	n->d.ops->resume(n->d.dev);
}

static void nic_driver_init(struct fuzz_nic *n, struct fuzz_in *in)
{
	uint32_t features = in_u32(in);
	unsigned qlog = in_u8(in) % 9; /* 1..256: 512 is over the maximum, refused */
	uint64_t base = in_u16(in) * 16ull % (FN_RAM + 0x2000);

	n->qnum = 1u << qlog;
	fake_guest_reg_write(&n->d, VIRTIO_MMIO_STATUS, 0);
	fake_guest_reg_write(&n->d, VIRTIO_MMIO_STATUS,
			     VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER);
	fake_guest_reg_write(&n->d, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
	fake_guest_reg_write(&n->d, VIRTIO_MMIO_DRIVER_FEATURES, features);
	fake_guest_reg_write(&n->d, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
	fake_guest_reg_write(&n->d, VIRTIO_MMIO_DRIVER_FEATURES, 1);
	fake_guest_reg_write(&n->d, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE |
			     VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK);
	for (unsigned q = 0; q < 3; q++) {
		uint64_t desc = base + 0x2000ull * q, avail = desc + 16ull * n->qnum;
		uint64_t used = (avail + 6 + 2ull * n->qnum + 3) & ~3ull;

		n->desc[q] = desc;
		n->avail[q] = avail;
		n->avail_idx[q] = 0;
		fake_guest_reg_write(&n->d, VIRTIO_MMIO_QUEUE_SEL, q);
		fake_guest_reg_write(&n->d, VIRTIO_MMIO_QUEUE_NUM, n->qnum);
		fake_guest_reg_write(&n->d, VIRTIO_MMIO_QUEUE_DESC_LOW, (uint32_t)desc);
		fake_guest_reg_write(&n->d, VIRTIO_MMIO_QUEUE_AVAIL_LOW, (uint32_t)avail);
		fake_guest_reg_write(&n->d, VIRTIO_MMIO_QUEUE_USED_LOW, (uint32_t)used);
		fake_guest_reg_write(&n->d, VIRTIO_MMIO_QUEUE_READY, 1);
	}
	fake_guest_reg_write(&n->d, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE |
			     VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK |
			     VIRTIO_CONFIG_S_DRIVER_OK);
}

/* Writes inside RAM only: the harness is the guest, and a guest's stores stay in its RAM. */
static bool ram_fits(uint64_t gpa, uint64_t len)
{
	return gpa <= FN_RAM && len <= FN_RAM - gpa;
}

static void nic_desc_set(struct fuzz_nic *n, struct fuzz_in *in)
{
	unsigned q = in_u8(in) % 3, i = in_u8(in);
	uint64_t addr = in_u16(in);
	uint32_t len = in_u16(in);
	uint16_t flags = in_u8(in) & 7, next = in_u8(in);

	if (n->qnum && ram_fits(n->desc[q] + 16ull * (i % n->qnum), 16))
		fake_guest_desc_set(&n->g, n->desc[q], i % n->qnum, addr, len, flags, next);
}

static void nic_avail_push(struct fuzz_nic *n, struct fuzz_in *in)
{
	unsigned q = in_u8(in) % 3;
	uint16_t head = in_u16(in);

	if (n->qnum && ram_fits(n->avail[q], 4 + 2ull * n->qnum))
		fake_guest_avail_push(&n->g, n->avail[q], n->qnum, &n->avail_idx[q], head);
	fake_guest_reg_write(&n->d, VIRTIO_MMIO_QUEUE_NOTIFY, q);
}

static void nic_tap_send(struct fuzz_nic *n, struct fuzz_in *in)
{
	static uint8_t msg[FN_HDR + 9000];
	size_t len = in_u16(in) % (sizeof(msg) - FN_HDR + 1), k = len < in->left ? len : in->left;

	memset(msg, 0, FN_HDR);
	memcpy(msg + FN_HDR, in->p, k);
	memset(msg + FN_HDR + k, 0x5a, len - k);
	in->p += k;
	in->left -= k;
	/* a full tap queue (the device not reading: no buffers, paused) drops it, like a wire */
	(void)send(n->peer, msg, FN_HDR + len, MSG_DONTWAIT | MSG_NOSIGNAL);
}

/* Saves the quiesced NIC, changes one byte, and loads that back if it validates. */
static void nic_state(struct fuzz_nic *n, struct fuzz_in *in, bool move)
{
	uint16_t off = in_u16(in);
	uint8_t x = move ? 0 : in_u8(in);
	struct errbuf e;
	struct buf b;

	n->d.ops->quiesce(n->d.dev);
	buf_init(&b);
	if (n->d.ops->save(n->d.dev, &b) == 0 && b.len) {
		((uint8_t *)b.data)[off % b.len] ^= x;
		if (n->d.ops->validate(n->d.dev, VIRTIO_NET_STATE_VERSION, b.data, b.len, &e) == 0 &&
		    n->d.ops->load(n->d.dev, VIRTIO_NET_STATE_VERSION, b.data, b.len, &e) != 0)
			abort(); /* validate accepted what load refused */
		if (move && n->d.ops->claim(n->d.dev, &e) != 0)
			abort();
	}
	buf_free(&b);
	n->d.ops->resume(n->d.dev);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const struct virtio_net_announce fast = { .rounds = 2 };
	struct device_spec spec = { .type = VIRTIO_NET_TYPE, .id = "net0", .path = "fuzz" };
	struct fuzz_in in = { data, size };
	struct fuzz_nic n = { .peer = -1 };
	struct device_env env;
	struct errbuf e;
	int sv[2];

	virtio_net_announce_set(&fast);
	if (fake_guest_init(&n.g, FN_RAM, 16) < 0)
		return 0;
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
		goto out_ram;
	n.peer = sv[1];
	env = fake_guest_env(&n.g, 0xd0000000);
	if (virtio_net_create_fd(&spec, &env, sv[0], FN_MTU, &n.d, &e) < 0)
		goto out_peer;
	n.d.ops->resume(n.d.dev);
	for (unsigned ops = 0; in.left && ops < 256; ops++) {
		switch (in_u8(&in) % FN_NR) {
		case FN_REG_WRITE: {
			uint64_t off = (uint64_t)in_u8(&in) * 4;

			fake_guest_reg_write(&n.d, off, in_u32(&in));
			break;
		}
		case FN_CFG_READ: {
			uint8_t b[8];
			unsigned off = in_u8(&in), len = in_u8(&in) % 8 + 1;

			n.d.io_fn(n.d.dev, VIRTIO_MMIO_CONFIG + off, b, len, false);
			break;
		}
		case FN_RAM_WRITE: {
			uint64_t gpa = in_u16(&in);
			size_t len = in_u8(&in);

			len = len < in.left ? len : in.left;
			if (ram_fits(gpa, len))
				memcpy(n.g.ram + gpa, in.p, len);
			in.p += len;
			in.left -= len;
			break;
		}
		case FN_DRIVER_INIT:
			nic_driver_init(&n, &in);
			break;
		case FN_DESC_SET:
			nic_desc_set(&n, &in);
			break;
		case FN_AVAIL_PUSH:
			nic_avail_push(&n, &in);
			break;
		case FN_TAP_SEND:
			nic_tap_send(&n, &in);
			break;
		case FN_SETTLE:
			nic_settle(&n);
			break;
		case FN_STATE:
			nic_state(&n, &in, false);
			break;
		case FN_MOVE:
			nic_state(&n, &in, true);
			break;
		case FN_RESET:
			n.d.ops->quiesce(n.d.dev);
			n.d.ops->reset(n.d.dev);
			n.d.ops->resume(n.d.dev);
			break;
		}
		nic_drain(&n);
	}
	nic_settle(&n);
	n.d.ops->quiesce(n.d.dev);
	nic_drain(&n);
	n.d.ops->destroy(n.d.dev);
out_peer:
	close(n.peer);
out_ram:
	fake_guest_free(&n.g);
	return 0;
}
