/* SPDX-License-Identifier: MIT */
/*
 * Writes fuzz_virtio_net's seed corpus into the directory given: operation streams
 * (fuzz_virtio_net.h) of a driver that initialises the NIC and then transmits a frame,
 * receives one, acknowledges an announcement on the control queue, is moved (announces),
 * has its state changed, or hands over a descriptor loop, so the fuzzer starts past the
 * driver's set-up.
 */
#include "fuzz_virtio_net.h"

#include <errno.h>
#include <linux/virtio_net.h>
#include <linux/virtio_ring.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

struct seed {
	uint8_t b[4096];
	size_t len;
};

static void put8(struct seed *s, unsigned v)
{
	s->b[s->len++] = (uint8_t)v;
}

static void put16(struct seed *s, unsigned v)
{
	put8(s, v & 0xff);
	put8(s, (v >> 8) & 0xff);
}

static void put32(struct seed *s, uint32_t v)
{
	put16(s, v & 0xffff);
	put16(s, v >> 16);
}

/* Queues of 16 at 0x1000, 0x3000, 0x5000 (fuzz_virtio_net's layout from the base). */
static void op_init(struct seed *s)
{
	put8(s, FN_DRIVER_INIT);
	put32(s, 1u << VIRTIO_NET_F_MAC | 1u << VIRTIO_NET_F_STATUS | 1u << VIRTIO_NET_F_CTRL_VQ |
		 1u << VIRTIO_NET_F_GUEST_ANNOUNCE);
	put8(s, 4);
	put16(s, 0x1000 / 16);
}

static void op_desc(struct seed *s, unsigned q, unsigned i, unsigned addr, unsigned len,
		    unsigned flags, unsigned next)
{
	put8(s, FN_DESC_SET);
	put8(s, q);
	put8(s, i);
	put16(s, addr);
	put16(s, len);
	put8(s, flags);
	put8(s, next);
}

static void op_push(struct seed *s, unsigned q, unsigned head)
{
	put8(s, FN_AVAIL_PUSH);
	put8(s, q);
	put16(s, head);
}

static void op_ram(struct seed *s, unsigned gpa, const uint8_t *p, unsigned len)
{
	put8(s, FN_RAM_WRITE);
	put16(s, gpa);
	put8(s, len);
	memcpy(s->b + s->len, p, len);
	s->len += len;
}

static void op_tap(struct seed *s, const uint8_t *frame, unsigned len)
{
	put8(s, FN_TAP_SEND);
	put16(s, len);
	memcpy(s->b + s->len, frame, len);
	s->len += len;
}

static int seed_write(const char *dir, const char *name, const struct seed *s)
{
	char path[4096];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "wb");
	if (!f || fwrite(s->b, 1, s->len, f) != s->len) {
		perror(path);
		if (f)
			fclose(f);
		return 1;
	}
	return fclose(f) ? 1 : 0;
}

int main(int argc, char **argv)
{
	uint8_t frame[12 + 60] = { 0 };
	struct seed s;
	int bad = 0;

	if (argc != 2) {
		fprintf(stderr, "usage: %s DIR\n", argv[0]);
		return 2;
	}
	if (mkdir(argv[1], 0755) < 0 && errno != EEXIST) {
		perror(argv[1]);
		return 1;
	}
	memset(frame + 12, 0xff, 6); /* broadcast, from 02:00:00:00:00:01, ethertype 0x88b5 */
	frame[18] = 2;
	frame[23] = 1;
	frame[24] = 0x88;
	frame[25] = 0xb5;

	memset(&s, 0, sizeof(s)); /* transmit: header and frame in two descriptors */
	op_init(&s);
	op_ram(&s, 0x8000, frame, sizeof(frame));
	op_desc(&s, 1, 0, 0x8000, 12, VRING_DESC_F_NEXT, 1);
	op_desc(&s, 1, 1, 0x800c, 60, 0, 0);
	op_push(&s, 1, 0);
	put8(&s, FN_SETTLE);
	bad |= seed_write(argv[1], "tx", &s);

	/* an empty descriptor inside a transmit, a receive and a control chain */
	memset(&s, 0, sizeof(s));
	op_init(&s);
	op_ram(&s, 0x8000, frame, sizeof(frame));
	op_desc(&s, 1, 0, 0x8000, 12, VRING_DESC_F_NEXT, 1);
	op_desc(&s, 1, 1, 0x8000, 0, VRING_DESC_F_NEXT, 2);
	op_desc(&s, 1, 2, 0x800c, 60, 0, 0);
	op_push(&s, 1, 0);
	op_desc(&s, 0, 0, 0x9000, 0, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 1);
	op_desc(&s, 0, 1, 0x9000, 2048, VRING_DESC_F_WRITE, 0);
	op_push(&s, 0, 0);
	op_desc(&s, 2, 0, 0xa000, 0, VRING_DESC_F_NEXT, 1);
	op_desc(&s, 2, 1, 0xa000, 2, VRING_DESC_F_NEXT, 2);
	op_desc(&s, 2, 2, 0xa100, 1, VRING_DESC_F_WRITE, 0);
	op_push(&s, 2, 0);
	op_tap(&s, frame + 12, 60);
	put8(&s, FN_SETTLE);
	bad |= seed_write(argv[1], "empty-desc", &s);

	memset(&s, 0, sizeof(s)); /* receive: a buffer, then a frame from the tap */
	op_init(&s);
	op_desc(&s, 0, 0, 0x9000, 2048, VRING_DESC_F_WRITE, 0);
	op_push(&s, 0, 0);
	op_tap(&s, frame + 12, 60);
	put8(&s, FN_SETTLE);
	bad |= seed_write(argv[1], "rx", &s);

	memset(&s, 0, sizeof(s)); /* control queue: ANNOUNCE_ACK */
	op_init(&s);
	op_ram(&s, 0xa000, (const uint8_t[]){ VIRTIO_NET_CTRL_ANNOUNCE,
					      VIRTIO_NET_CTRL_ANNOUNCE_ACK }, 2);
	op_desc(&s, 2, 0, 0xa000, 2, VRING_DESC_F_NEXT, 1);
	op_desc(&s, 2, 1, 0xa100, 1, VRING_DESC_F_WRITE, 0);
	op_push(&s, 2, 0);
	put8(&s, FN_SETTLE);
	bad |= seed_write(argv[1], "ctrl", &s);

	memset(&s, 0, sizeof(s)); /* a move: announcements, then a driver reset */
	op_init(&s);
	put8(&s, FN_MOVE);
	put16(&s, 0);
	put8(&s, FN_SETTLE);
	put8(&s, FN_REG_WRITE);
	put8(&s, 0x70 / 4); /* Status */
	put32(&s, 0);
	put8(&s, FN_SETTLE);
	bad |= seed_write(argv[1], "move", &s);

	memset(&s, 0, sizeof(s)); /* a state with one byte changed, then the VM's reset */
	op_init(&s);
	put8(&s, FN_STATE);
	put16(&s, 36);
	put8(&s, 0x80);
	put8(&s, FN_RESET);
	bad |= seed_write(argv[1], "state", &s);

	memset(&s, 0, sizeof(s)); /* a descriptor loop on the transmit queue */
	op_init(&s);
	op_desc(&s, 1, 0, 0x8000, 64, VRING_DESC_F_NEXT, 1);
	op_desc(&s, 1, 1, 0x8000, 64, VRING_DESC_F_NEXT, 0);
	op_push(&s, 1, 0);
	put8(&s, FN_SETTLE);
	bad |= seed_write(argv[1], "loop", &s);
	return bad;
}
