// SPDX-License-Identifier: MIT
/*
 * net.c - virtio-net driver and the net workload: a tiny IPv4 host that answers ARP for its
 * address, echoes UDP datagrams on one port (each reply carries the heartbeat sequence and
 * the count of datagrams seen, so a client watching replies during a migration sees
 * whether the guest ran on, lost or repeated anything), and announces itself with a
 * gratuitous ARP when the device asks (VIRTIO_NET_S_ANNOUNCE), as after a live migration.
 *
 * Like the disk workload it runs on the boot vCPU: net_poll() takes frames from the used
 * ring whenever that vCPU looks (every tick beside a memory workload, continuously
 * otherwise). No interrupts; InterruptStatus is acknowledged so the device's line drops.
 */
#include "virtio.h"

#define VIRTIO_NET_F_MAC		5
#define VIRTIO_NET_F_STATUS		16
#define VIRTIO_NET_F_CTRL_VQ		17
#define VIRTIO_NET_F_GUEST_ANNOUNCE	21

#define VIRTIO_NET_S_LINK_UP		1
#define VIRTIO_NET_S_ANNOUNCE		2

#define VIRTIO_NET_CTRL_ANNOUNCE	3
#define VIRTIO_NET_CTRL_ANNOUNCE_ACK	0
#define VIRTIO_NET_OK			0

#define NET_RXQ		0
#define NET_TXQ		1
#define NET_CTRLQ	2	/* without VIRTIO_NET_F_MQ the control queue is queue 2 */

#define NET_RX_BUFS	16
#define NET_TX_BUFS	8
#define NET_BUF_SIZE	2048	/* header + a 1514-byte frame */
#define FRAME_MAX	1514
#define NET_TIMEOUT_S	5	/* control requests */

#define ETH_HLEN	14
#define ETH_P_IP	0x0800
#define ETH_P_ARP	0x0806
#define IP_HLEN		20
#define IPPROTO_UDP	17
#define UDP_HLEN	8

static struct {
	struct virtio_dev *dev;
	struct virtq rx, tx, ctrl;
	u32 hdr_len;		/* virtio_net_hdr: 12 bytes with VERSION_1, 10 legacy */
	bool stopped;
	bool announce;		/* GUEST_ANNOUNCE negotiated */
	bool ctrl_vq;
	u8 mac[6];
	u32 ip;			/* host byte order */
	u32 prefix;
	u16 ip_id;
	u16 status;		/* last config status seen */
	u64 checked_tick;
	u64 datagrams;		/* UDP datagrams to our port seen */
	u64 arps;		/* ARP requests answered */
	u64 announces;
	u64 tx_drops;		/* no free transmit buffer */
	bool rx_refilled, tx_added;
	u32 tx_free;		/* bitmap of free transmit buffers */
	u8 rx_buf[NET_RX_BUFS][NET_BUF_SIZE] __attribute__((aligned(64)));
	u8 tx_buf[NET_TX_BUFS][NET_BUF_SIZE] __attribute__((aligned(64)));
	s8 tx_of_head[VIRTQ_SIZE_MAX];	/* transmit buffer of a chain, -1: none */
	s8 rx_of_head[VIRTQ_SIZE_MAX];	/* receive buffer of a chain */
	struct {
		u8 class, cmd;
		u8 ack;
	} ctl;
} net;

static inline u16 be16(const u8 *p)
{
	return (u16)(p[0] << 8 | p[1]);
}

static inline u32 be32(const u8 *p)
{
	return (u32)p[0] << 24 | (u32)p[1] << 16 | (u32)p[2] << 8 | p[3];
}

static inline void put16(u8 *p, u16 v)
{
	p[0] = (u8)(v >> 8);
	p[1] = (u8)v;
}

static inline void put32(u8 *p, u32 v)
{
	put16(p, (u16)(v >> 16));
	put16(p + 2, (u16)v);
}

static void net_stop(const char *why)
{
	con_printf("net error: %s: net workload stopped\n", why);
	net.stopped = true;
}

static int rx_post(u32 i)
{
	struct virtq_buf b = { net.rx_buf[i], NET_BUF_SIZE, true };
	int head = virtq_add(&net.rx, &b, 0, 1);

	if (head < 0)
		return head;
	net.rx_of_head[head] = (s8)i;
	net.rx_refilled = true;
	return 0;
}

/* A transmit buffer: its frame starts after the (zeroed: no offloads) virtio header. */
static u8 *tx_get(s32 *slot)
{
	for (u32 i = 0; i < NET_TX_BUFS; i++) {
		if (net.tx_free & (1u << i)) {
			net.tx_free &= ~(1u << i);
			memset(net.tx_buf[i], 0, net.hdr_len);
			*slot = (s32)i;
			return net.tx_buf[i] + net.hdr_len;
		}
	}
	net.tx_drops++;
	return NULL;
}

static void tx_send(s32 slot, u32 frame_len)
{
	struct virtq_buf b = { net.tx_buf[slot], net.hdr_len + frame_len, false };
	int head;

	if (frame_len < 60) {		/* pad to Ethernet's minimum */
		memset(net.tx_buf[slot] + net.hdr_len + frame_len, 0, 60 - frame_len);
		b.len = net.hdr_len + 60;
	}
	head = virtq_add(&net.tx, &b, 1, 0);
	if (head < 0) {
		net.tx_free |= 1u << slot;
		net.tx_drops++;
		return;
	}
	net.tx_of_head[head] = (s8)slot;
	net.tx_added = true;
}

static void eth_header(u8 *f, const u8 *dst, u16 type)
{
	memcpy(f, dst, 6);
	memcpy(f + 6, net.mac, 6);
	put16(f + 12, type);
}

/* An ARP packet from us: op 1 (request) or 2 (reply). */
static void arp_send(u16 op, const u8 *eth_dst, const u8 *tha, u32 tpa)
{
	s32 slot;
	u8 *f = tx_get(&slot), *a;

	if (!f)
		return;
	eth_header(f, eth_dst, ETH_P_ARP);
	a = f + ETH_HLEN;
	put16(a, 1);			/* Ethernet */
	put16(a + 2, ETH_P_IP);
	a[4] = 6;
	a[5] = 4;
	put16(a + 6, op);
	memcpy(a + 8, net.mac, 6);
	put32(a + 14, net.ip);
	memcpy(a + 18, tha, 6);
	put32(a + 24, tpa);
	tx_send(slot, ETH_HLEN + 28);
}

/*
 * The gratuitous ARP: a broadcast request for our own address, so switches and neighbours
 * learn where our MAC now is. With the control queue, tell the device it was sent.
 */
static void net_announce(bool asked)
{
	static const u8 bcast[6] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };
	static const u8 zero[6];

	arp_send(1, bcast, zero, net.ip);
	net.announces++;
	con_printf("net announce %lu%s\n", net.announces, asked ? "" : " (link up)");
	if (!asked || !net.ctrl_vq)
		return;
	{
		struct virtq_buf b[2] = { { &net.ctl, 2, false }, { &net.ctl.ack, 1, true } };
		int head;

		net.ctl.class = VIRTIO_NET_CTRL_ANNOUNCE;
		net.ctl.cmd = VIRTIO_NET_CTRL_ANNOUNCE_ACK;
		net.ctl.ack = 0xff;
		head = virtq_add(&net.ctrl, b, 1, 1);
		if (head < 0) {
			net_stop("control queue full");
			return;
		}
		virtq_kick(&net.ctrl);
		if (virtq_wait(&net.ctrl, head, NET_TIMEOUT_S, NULL) < 0)
			net_stop("VIRTIO_NET_CTRL_ANNOUNCE_ACK timed out");
		else if (net.ctl.ack != VIRTIO_NET_OK)
			con_printf("net error: VIRTIO_NET_CTRL_ANNOUNCE_ACK refused (%u)\n",
				   net.ctl.ack);
	}
}

static void arp_input(const u8 *f, u32 len)
{
	const u8 *a = f + ETH_HLEN;

	if (len < ETH_HLEN + 28 || be16(a) != 1 || be16(a + 2) != ETH_P_IP || a[4] != 6 ||
	    a[5] != 4 || be16(a + 6) != 1 || be32(a + 24) != net.ip)
		return;
	net.arps++;
	arp_send(2, a + 8, a + 8, be32(a + 14));
}

static u16 ip_checksum(const u8 *p, u32 len)
{
	u32 sum = 0;

	for (u32 i = 0; i + 1 < len; i += 2)
		sum += be16(p + i);
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return (u16)~sum;
}

/* Prefix of a reply: the guest's heartbeat sequence and the datagrams seen so far. */
static u32 reply_prefix(char *out, u32 room)
{
	return (u32)con_format(out, room, "godwit hb=%lu n=%lu ", work_hb_seq(), net.datagrams);
}

static void udp_input(const u8 *f, u32 len)
{
	const u8 *ip = f + ETH_HLEN, *udp, *data;
	u32 ihl, tot, ulen, dlen, plen;
	u8 *r, *rip, *rudp;
	s32 slot;

	if (len < ETH_HLEN + IP_HLEN || (ip[0] >> 4) != 4)
		return;
	ihl = (ip[0] & 15) * 4u;
	tot = be16(ip + 2);
	if (ihl < IP_HLEN || tot < ihl + UDP_HLEN || ETH_HLEN + tot > len ||
	    ip[9] != IPPROTO_UDP || be32(ip + 16) != net.ip || (be16(ip + 6) & 0x3fff))
		return;			/* not for us, or a fragment */
	udp = ip + ihl;
	ulen = be16(udp + 4);
	if (be16(udp + 2) != cfg.net_port || ulen < UDP_HLEN || ulen > tot - ihl)
		return;
	net.datagrams++;
	data = udp + UDP_HLEN;
	dlen = ulen - UDP_HLEN;

	r = tx_get(&slot);
	if (!r)
		return;
	eth_header(r, f + 6, ETH_P_IP);
	rip = r + ETH_HLEN;
	rudp = rip + IP_HLEN;
	plen = reply_prefix((char *)rudp + UDP_HLEN, 64);
	dlen = MIN(dlen, FRAME_MAX - ETH_HLEN - IP_HLEN - UDP_HLEN - plen);
	memcpy(rudp + UDP_HLEN + plen, data, dlen);
	ulen = UDP_HLEN + plen + dlen;

	rip[0] = 0x45;
	rip[1] = 0;
	put16(rip + 2, (u16)(IP_HLEN + ulen));
	put16(rip + 4, net.ip_id++);
	put16(rip + 6, 0x4000);		/* don't fragment */
	rip[8] = 64;
	rip[9] = IPPROTO_UDP;
	put16(rip + 10, 0);
	put32(rip + 12, net.ip);
	memcpy(rip + 16, ip + 12, 4);
	put16(rip + 10, ip_checksum(rip, IP_HLEN));
	put16(rudp, cfg.net_port);
	memcpy(rudp + 2, udp, 2);
	put16(rudp + 4, (u16)ulen);
	put16(rudp + 6, 0);		/* no UDP checksum (allowed over IPv4) */
	tx_send(slot, ETH_HLEN + IP_HLEN + ulen);
}

static void frame_input(const u8 *f, u32 len)
{
	if (len < ETH_HLEN)
		return;
	switch (be16(f + 12)) {
	case ETH_P_ARP:
		arp_input(f, len);
		break;
	case ETH_P_IP:
		udp_input(f, len);
		break;
	}
}

int net_setup(void)
{
	struct virtio_dev *d = virtio_find(VIRTIO_ID_NET);
	u64 want = 1ull << VIRTIO_NET_F_MAC | 1ull << VIRTIO_NET_F_STATUS |
		   1ull << VIRTIO_NET_F_CTRL_VQ | 1ull << VIRTIO_NET_F_GUEST_ANNOUNCE;

	if (!d) {
		con_printf("error: workload net: no virtio-net device (virtio_mmio.device=...)\n");
		return -ENODEV;
	}
	if (!cfg.net_ip) {
		con_printf("error: workload net needs ip=A.B.C.D/N\n");
		return -EINVAL;
	}
	net.dev = d;
	net.ip = cfg.net_ip;
	if (virtio_init(d, want) < 0)
		return -EIO;
	/* GUEST_ANNOUNCE without the control queue is not a valid combination */
	if (!(d->features >> VIRTIO_NET_F_CTRL_VQ & 1))
		d->features &= ~(1ull << VIRTIO_NET_F_GUEST_ANNOUNCE);
	net.ctrl_vq = d->features >> VIRTIO_NET_F_CTRL_VQ & 1;
	net.announce = d->features >> VIRTIO_NET_F_GUEST_ANNOUNCE & 1;
	net.hdr_len = d->version == 2 ? 12 : 10;
	if (virtq_setup(d, &net.rx, NET_RXQ, NET_RX_BUFS) < 0 ||
	    virtq_setup(d, &net.tx, NET_TXQ, NET_TX_BUFS) < 0 ||
	    (net.ctrl_vq && virtq_setup(d, &net.ctrl, NET_CTRLQ, 2) < 0))
		return -EIO;
	if (d->features >> VIRTIO_NET_F_MAC & 1) {
		for (u32 i = 0; i < 6; i++)
			net.mac[i] = virtio_cfg8(d, i);
	} else {
		/* a locally administered address from the IP */
		net.mac[0] = 0x52;
		net.mac[1] = 0x54;
		put32(net.mac + 2, net.ip);
	}
	net.tx_free = (1u << NET_TX_BUFS) - 1;
	memset(net.tx_of_head, -1, sizeof(net.tx_of_head));
	memset(net.rx_of_head, -1, sizeof(net.rx_of_head));
	for (u32 i = 0; i < NET_RX_BUFS; i++)
		if (rx_post(i) < 0) {
			virtio_error(d, "receive queue smaller than %u", NET_RX_BUFS);
			return -EIO;
		}
	virtio_driver_ok(d);
	virtq_kick(&net.rx);
	net.rx_refilled = false;
	net.status = d->features >> VIRTIO_NET_F_STATUS & 1 ? (u16)(virtio_cfg8(d, 6) |
						  virtio_cfg8(d, 7) << 8) : VIRTIO_NET_S_LINK_UP;
	return 0;
}

void net_describe(void)
{
	con_printf("workload net ip=%u.%u.%u.%u/%u mac=%02x:%02x:%02x:%02x:%02x:%02x port=%u "
		   "announce=%s link=%s\n",
		   net.ip >> 24, net.ip >> 16 & 255, net.ip >> 8 & 255, net.ip & 255, cfg.net_prefix,
		   net.mac[0], net.mac[1], net.mac[2], net.mac[3], net.mac[4], net.mac[5],
		   cfg.net_port, net.announce ? "yes" : "no",
		   net.status & VIRTIO_NET_S_LINK_UP ? "up" : "down");
}

/* Once a tick: interrupt acknowledge, device status, link and announce requests. */
static void net_check(void)
{
	u16 st;

	virtio_irq_ack(net.dev);
	if (virtio_status(net.dev) & VIRTIO_STATUS_NEEDS_RESET) {
		net_stop("device needs reset (DEVICE_NEEDS_RESET)");
		return;
	}
	if (!(net.dev->features >> VIRTIO_NET_F_STATUS & 1))
		return;
	st = (u16)(virtio_cfg8(net.dev, 6) | virtio_cfg8(net.dev, 7) << 8);
	if ((st ^ net.status) & VIRTIO_NET_S_LINK_UP)
		con_printf("net link %s\n", st & VIRTIO_NET_S_LINK_UP ? "up" : "down");
	if (st & VIRTIO_NET_S_ANNOUNCE && net.announce)
		net_announce(true);
	net.status = st;
}

void net_poll(void)
{
	int head;
	u32 len;

	if (net.stopped || !net.dev)
		return;
	if (!net.checked_tick) {
		/* first poll: tell the network where we are */
		net_announce(false);
	}
	if (net.checked_tick != ticks) {
		net.checked_tick = ticks;
		net_check();
		if (net.stopped)
			return;
	}
	while ((head = virtq_get(&net.tx, NULL)) >= 0) {
		s8 slot = net.tx_of_head[head];

		if (slot >= 0)
			net.tx_free |= 1u << slot;
		net.tx_of_head[head] = -1;
	}
	while ((head = virtq_get(&net.rx, &len)) >= 0) {
		s32 i = net.rx_of_head[head];

		net.rx_of_head[head] = -1;
		if (i < 0 || len < net.hdr_len || len > NET_BUF_SIZE) {
			net_stop("receive completion out of range");
			return;
		}
		frame_input(net.rx_buf[i] + net.hdr_len, len - net.hdr_len);
		if (rx_post((u32)i) < 0) {
			net_stop("receive queue full on refill");
			return;
		}
	}
	if (net.tx_added) {
		net.tx_added = false;
		virtq_kick(&net.tx);
	}
	if (net.rx_refilled) {
		net.rx_refilled = false;
		virtq_kick(&net.rx);
	}
}

bool net_active(void)
{
	return net.dev && !net.stopped;
}
