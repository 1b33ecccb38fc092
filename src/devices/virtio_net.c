/* SPDX-License-Identifier: MIT */
/*
 * virtio-net (virtio spec 5.1) on the virtio-mmio transport over a Linux tap device
 * (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, 12-byte header): a receive, a transmit and a control
 * queue; features VERSION_1, MAC, STATUS, CTRL_VQ and GUEST_ANNOUNCE, no offloads, so every
 * frame is at most the tap's MTU plus an Ethernet header and a VLAN tag. The NIC's
 * emulation, its announcements after a move and its state save/validate/load are all here.
 *
 * Packet I/O never runs on a vCPU thread: one I/O thread polls the tap and an eventfd the
 * VMM wires to QueueNotify (KVM_IOEVENTFD). Each wakeup moves at most NET_BUDGET frames each
 * way and then polls again, so a flood from the tap costs this thread's time but never holds
 * off the guest's notifications, a pause (quiesce waits for one bounded round) or the
 * control socket. A frame read from the tap when the guest has no receive buffer is kept
 * (one frame) and the tap is not read again until the guest adds buffers; at a pause it is
 * handed to the guest if a buffer is there, else dropped, and the frames the guest queued for
 * transmission are sent. A chain is always completed in the wakeup that took it, so a
 * quiesced NIC has no descriptor half-used.
 *
 * The guest is untrusted: a receive chain too short for the frame or with device-readable
 * parts, a transmit chain shorter than the header or longer than the MTU, is completed empty
 * and the frame dropped (counted, logged rate-limited); a malformed queue (loops, addresses
 * outside RAM) sets NEEDS_RESET through virtq_pop's checks. Every byte written to guest
 * memory (frames, headers, control acks, used rings) is marked dirty.
 *
 * A tap that stops working (its interface deleted) is logged once; the link goes down (the
 * STATUS bit, a configuration interrupt), transmitted frames are dropped, the guest runs on.
 *
 * Announcing: a NIC whose state was loaded (restore, incoming migration) and whose tap is
 * claimed starts, when the guest first runs, announcing its MAC: if the driver negotiated
 * GUEST_ANNOUNCE it sets VIRTIO_NET_S_ANNOUNCE and raises the configuration interrupt (the
 * guest sends its gratuitous ARP and acknowledges with VIRTIO_NET_CTRL_ANNOUNCE_ACK), and
 * the host sends RARP frames from the guest's MAC on the tap on the schedule of struct
 * virtio_net_announce (by default 5 rounds: 50, 200, 450, 800, 1250 ms after the start,
 * QEMU's schedule), so switches learn the new port even if the guest cannot announce.
 *
 * The destination of a migration opens its tap when it builds the NIC, in pre-flight, so a
 * missing tap refuses the move before the source pauses. Frames that queued on the tap
 * before the guest runs here belong to the copy that was still running on the source:
 * claim() discards them, so the guest never sees a request twice.
 *
 * State payload, version 1 (little-endian): the transport (virtio_mmio.h), then
 *   u8 mac[6]
 *   u16 status     VIRTIO_NET_S_LINK_UP | VIRTIO_NET_S_ANNOUNCE
 *   u32 flags      zero
 */
#include "devices/virtio_net.h"
#include "base/log.h"
#include "devices/virtio_mmio.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <linux/virtio_config.h>
#include <linux/virtio_ids.h>
#include <linux/virtio_mmio.h>
#include <linux/virtio_net.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#define NET_HDR_LEN 12u	   /* struct virtio_net_hdr_v1: VERSION_1 always has num_buffers */
#define NET_ETH_HLEN 14u
#define NET_VLAN_LEN 4u
#define NET_MTU_DEFAULT 1500u
#define NET_MTU_MAX 9000u
#define NET_READ_MAX (NET_HDR_LEN + 65536u) /* a tap never hands over more in one read */
#define NET_BUDGET 64u	   /* frames each way per wakeup */
#define NET_RXQ 0u
#define NET_TXQ 1u
#define NET_CTRLQ 2u
#define NET_RARP_LEN 60u   /* the Ethernet minimum, padding included */
#define NET_STATUS_KNOWN (VIRTIO_NET_S_LINK_UP | VIRTIO_NET_S_ANNOUNCE)

static struct virtio_net_announce net_announce_cfg = VIRTIO_NET_ANNOUNCE_DEFAULT;

struct virtio_net {
	struct virtio_mmio t;
	struct device_spec spec;
	uint8_t mac[6];
	atomic_uint status; /* the config space's status field */
	int tap_fd;
	int kick_fd;
	unsigned frame_max; /* the tap's MTU + Ethernet header + a VLAN tag */

	pthread_t thread;
	bool thread_started;
	pthread_mutex_t lock; /* quiesced, busy, stop */
	pthread_cond_t idle;
	atomic_bool quiesced;
	bool busy;
	bool stop;

	/* the I/O thread's (or, while quiesced, the quiescing thread's) */
	bool tap_gone;
	bool rx_wait;	   /* a frame waits for a receive buffer: do not read the tap */
	size_t rx_len;	   /* bytes in rx_buf (header included); 0: none waiting */
	uint8_t *rx_buf;   /* NET_READ_MAX: a frame over the MTU is read whole, then dropped */
	uint8_t *tx_buf;
	struct virtq_elem el;
	uint64_t rx_dropped, tx_dropped;

	/* announcing: armed by load + claim, started at the next resume */
	bool loaded, claimed;
	atomic_bool announce_start;
	unsigned announce_round;
	uint64_t announce_next_ns;
	atomic_ullong announced; /* RARP frames sent since the guest started here */
};

/* ---- configuration ---- */

void virtio_net_announce_set(const struct virtio_net_announce *a)
{
	net_announce_cfg = *a;
}

int virtio_net_announce_parse(const char *arg, struct virtio_net_announce *a, struct errbuf *e)
{
	char copy[128], *save = NULL;

	*a = (struct virtio_net_announce)VIRTIO_NET_ANNOUNCE_DEFAULT;
	if (strlen(arg) >= sizeof(copy))
		return err_set(e, -EINVAL, "--announce: value too long");
	strcpy(copy, arg);
	for (char *kv = strtok_r(copy, ",", &save); kv; kv = strtok_r(NULL, ",", &save)) {
		char *eq = strchr(kv, '='), *end;
		unsigned long v;
		unsigned *dst;

		if (!eq || eq == kv || !eq[1])
			return err_set(e, -EINVAL, "--announce: '%s' is not KEY=VALUE", kv);
		*eq = '\0';
		if (!strcmp(kv, "rounds"))
			dst = &a->rounds;
		else if (!strcmp(kv, "initial"))
			dst = &a->initial_ms;
		else if (!strcmp(kv, "step"))
			dst = &a->step_ms;
		else if (!strcmp(kv, "max"))
			dst = &a->max_ms;
		else
			return err_set(e, -EINVAL, "--announce: unknown key '%s' (rounds, initial, "
						   "step, max)", kv);
		errno = 0;
		v = strtoul(eq + 1, &end, 10);
		if (errno || *end || eq[1] == '-' || v > (strcmp(kv, "rounds") ? 100000ul : 100ul))
			return err_set(e, -EINVAL, "--announce: %s=%s: use 0 to %s", kv, eq + 1,
				       strcmp(kv, "rounds") ? "100000 ms" : "100 rounds");
		*dst = (unsigned)v;
	}
	return 0;
}

int virtio_net_mac_parse(const char *s, uint8_t mac[6])
{
	unsigned v[6];
	char tail;

	if (strlen(s) != 17 || sscanf(s, "%2x:%2x:%2x:%2x:%2x:%2x%c", &v[0], &v[1], &v[2], &v[3],
				       &v[4], &v[5], &tail) != 6)
		return -EINVAL;
	for (unsigned i = 0; i < 6; i++)
		mac[i] = (uint8_t)v[i];
	/* a NIC's own address is unicast and not zero */
	if ((mac[0] & 1) || !(mac[0] | mac[1] | mac[2] | mac[3] | mac[4] | mac[5]))
		return -EINVAL;
	return 0;
}

/* Locally administered 02:67:77 ("gw") and 24 bits of a hash of id and tap: stable per NIC. */
static void net_mac_default(const struct device_spec *s, uint8_t mac[6])
{
	uint32_t h = 2166136261u;

	for (const char *p = s->id; *p; p++)
		h = (h ^ (uint8_t)*p) * 16777619u;
	h = (h ^ '/') * 16777619u;
	for (const char *p = s->path; *p; p++)
		h = (h ^ (uint8_t)*p) * 16777619u;
	mac[0] = 0x02;
	mac[1] = 0x67;
	mac[2] = 0x77;
	mac[3] = (uint8_t)(h >> 16);
	mac[4] = (uint8_t)(h >> 8);
	mac[5] = (uint8_t)h;
}

/* ---- frames (I/O thread) ---- */

static void net_dropped(struct virtio_net *n, bool rx, const char *why)
{
	static struct log_ratelimit rl = LOG_RATELIMIT_INIT(1000, 5);
	uint32_t suppressed;

	if (rx)
		n->rx_dropped++;
	else
		n->tx_dropped++;
	if (log_ratelimit_allow(&rl, &suppressed))
		log_warn("net %s: %s frame dropped: %s", n->spec.id,
			 rx ? "received" : "transmitted", why);
}

/* Errors that mean the tap is gone (its interface deleted, the fd detached), not a bad frame. */
static bool net_errno_lost(int err)
{
	return err == EBADFD || err == EIO || err == ENXIO || err == ENODEV || err == EPIPE ||
	       err == EBADF;
}

static void net_link_down(struct virtio_net *n, const char *what, int err)
{
	if (n->tap_gone)
		return;
	n->tap_gone = true;
	log_err("net %s: tap %s: %s: %s; the link is down, the guest keeps running", n->spec.id,
		n->spec.path, what, strerror(err));
	atomic_fetch_and(&n->status, ~(unsigned)VIRTIO_NET_S_LINK_UP);
	virtio_mmio_config_notify(&n->t);
}

/* Writes hdr + frame to the tap; a full tap queue drops the frame, like a busy wire. */
static bool net_tap_send(struct virtio_net *n, const uint8_t *frame, size_t len)
{
	static const uint8_t hdr[NET_HDR_LEN];
	struct iovec iov[2] = { { (void *)hdr, sizeof(hdr) }, { (void *)frame, len } };
	ssize_t r;

	if (n->tap_gone) {
		n->tx_dropped++;
		return false;
	}
	do
		r = writev(n->tap_fd, iov, 2);
	while (r < 0 && errno == EINTR);
	if (r >= 0)
		return true;
	if (errno == EAGAIN || errno == ENOBUFS)
		net_dropped(n, false, "the tap's queue is full");
	else if (!net_errno_lost(errno))
		net_dropped(n, false, strerror(errno));
	else
		net_link_down(n, "write", errno);
	return false;
}

/* Takes one transmit chain: header, then the frame, all device-readable. */
static void net_tx_one(struct virtio_net *n, const struct virtq_elem *el)
{
	uint64_t skip = NET_HDR_LEN, len;
	size_t done = 0;

	if (el->readable_bytes < NET_HDR_LEN + NET_ETH_HLEN) {
		net_dropped(n, false, "chain shorter than a header and an Ethernet header");
		return;
	}
	len = el->readable_bytes - NET_HDR_LEN;
	if (len > n->frame_max) {
		net_dropped(n, false, "longer than the MTU");
		return;
	}
	for (unsigned i = 0; i < el->nreadable; i++) {
		const struct virtq_seg *s = &el->segs[i];
		uint64_t off = MIN(skip, (uint64_t)s->len), k = s->len - off;

		skip -= off;
		if (!k)
			continue; /* an empty descriptor has no host address */
		memcpy(n->tx_buf + done, s->host + off, (size_t)k);
		done += (size_t)k;
	}
	net_tap_send(n, n->tx_buf, done);
}

/*
 * Returns true if the queue still has work (the budget ran out). draining: at a pause, with
 * the vCPUs stopped, everything the guest queued goes out (at most a queue's worth).
 */
static bool net_tx_run(struct virtio_net *n, bool draining)
{
	struct virtq *q = &n->t.q[NET_TXQ];
	unsigned done = 0;
	struct errbuf e;
	bool more = false;

	while ((draining || !atomic_load(&n->quiesced)) &&
	       virtio_mmio_queue_live(&n->t, NET_TXQ)) {
		int r;

		if (done == (draining ? VIRTQ_NUM_MAX : NET_BUDGET)) {
			more = true;
			break;
		}
		r = virtq_pop(q, &n->t.mem, &n->el, &e);
		if (r < 0) {
			virtio_mmio_needs_reset(&n->t, e.msg);
			break;
		}
		if (r == 0)
			break;
		net_tx_one(n, &n->el);
		if (virtq_push(q, &n->t.mem, n->el.head, 0) < 0) {
			virtio_mmio_needs_reset(&n->t, "used ring outside guest RAM");
			break;
		}
		done++;
	}
	if (done)
		virtio_mmio_used_notify(&n->t, NET_TXQ);
	return more;
}

/* Copies the waiting frame into one receive chain. Returns the used length (0: dropped). */
static uint32_t net_rx_fill(struct virtio_net *n, const struct virtq_elem *el)
{
	size_t done = 0;

	if (el->nreadable) {
		net_dropped(n, true, "the receive chain has device-readable buffers");
		return 0;
	}
	if (el->writable_bytes < n->rx_len) {
		net_dropped(n, true, "the receive chain is too short for it");
		return 0;
	}
	for (unsigned i = 0; i < el->nsegs && done < n->rx_len; i++) {
		const struct virtq_seg *s = &el->segs[i];
		size_t k = MIN((size_t)s->len, n->rx_len - done);

		if (!k)
			continue;
		memcpy(s->host, n->rx_buf + done, k);
		n->t.mem.mark_dirty(n->t.mem.opaque, s->gpa, k);
		done += k;
	}
	return (uint32_t)done;
}

/*
 * Hands the waiting frame to the guest. Returns 1 if it went (or was dropped), 0 if the
 * guest has no buffer (the frame keeps waiting), -1 if the queue broke or is not live.
 */
static int net_rx_deliver(struct virtio_net *n)
{
	struct virtq *q = &n->t.q[NET_RXQ];
	struct errbuf e;
	int r;

	if (!virtio_mmio_queue_live(&n->t, NET_RXQ))
		return -1;
	r = virtq_pop(q, &n->t.mem, &n->el, &e);
	if (r < 0) {
		virtio_mmio_needs_reset(&n->t, e.msg);
		return -1;
	}
	if (r == 0)
		return 0;
	if (virtq_push(q, &n->t.mem, n->el.head, net_rx_fill(n, &n->el)) < 0) {
		virtio_mmio_needs_reset(&n->t, "used ring outside guest RAM");
		return -1;
	}
	n->rx_len = 0;
	return 1;
}

/* Reads one frame from the tap into rx_buf. 1: a frame, 0: none, -1: the tap failed. */
static int net_tap_read(struct virtio_net *n)
{
	ssize_t r;

	do
		r = read(n->tap_fd, n->rx_buf, NET_READ_MAX);
	while (r < 0 && errno == EINTR);
	if (r < 0 && errno == EAGAIN)
		return 0;
	if (r < 0 && !net_errno_lost(errno)) {
		net_dropped(n, true, strerror(errno));
		return 1;
	}
	if (r < 0) {
		net_link_down(n, "read", errno);
		return -1;
	}
	if (r == 0) {
		net_link_down(n, "read", EPIPE);
		return -1;
	}
	if ((size_t)r < NET_HDR_LEN + NET_ETH_HLEN) {
		net_dropped(n, true, "shorter than a header and an Ethernet header");
		return 1;
	}
	if ((size_t)r > NET_HDR_LEN + n->frame_max) {
		net_dropped(n, true, "longer than the MTU");
		return 1;
	}
	/* no offloads were asked of the tap: a frame is whole, the header carries nothing */
	memset(n->rx_buf, 0, NET_HDR_LEN);
	n->rx_buf[10] = 1; /* num_buffers (le16): one buffer a frame */
	n->rx_len = (size_t)r;
	return 1;
}

/* Returns true if the tap may still hold frames (the budget ran out). */
static bool net_rx_run(struct virtio_net *n)
{
	bool used = false, more = false;
	unsigned done = 0;

	while (!atomic_load(&n->quiesced) && !n->tap_gone) {
		int r;

		if (!n->rx_len) {
			if (done == NET_BUDGET) {
				more = true;
				break;
			}
			r = net_tap_read(n);
			if (r <= 0)
				break;
			done++;
			if (!n->rx_len)
				continue; /* dropped */
		}
		r = net_rx_deliver(n);
		if (r == 1) {
			used = true;
			continue;
		}
		if (r == 0) {
			n->rx_wait = true; /* until the guest adds buffers and notifies */
		} else {
			/* no receive queue (not set up, or broken): the frame goes nowhere */
			n->rx_len = 0;
			n->rx_dropped++;
		}
		break;
	}
	if (used)
		virtio_mmio_used_notify(&n->t, NET_RXQ);
	return more;
}

/* One control command: {u8 class, u8 cmd, data...} readable, then a writable ack byte. */
static uint32_t net_ctrl_one(struct virtio_net *n, const struct virtq_elem *el)
{
	uint8_t cmd[2], ack = VIRTIO_NET_ERR;
	const struct virtq_seg *st = NULL;
	size_t done = 0;

	for (unsigned i = el->nsegs; i-- > el->nreadable && !st;)
		if (el->segs[i].len)
			st = &el->segs[i];
	if (!st)
		return 0;
	for (unsigned i = 0; i < el->nreadable && done < sizeof(cmd); i++) {
		size_t k = MIN((size_t)el->segs[i].len, sizeof(cmd) - done);

		if (!k)
			continue;
		memcpy(cmd + done, el->segs[i].host, k);
		done += k;
	}
	if (done == sizeof(cmd) && cmd[0] == VIRTIO_NET_CTRL_ANNOUNCE &&
	    cmd[1] == VIRTIO_NET_CTRL_ANNOUNCE_ACK) {
		atomic_fetch_and(&n->status, ~(unsigned)VIRTIO_NET_S_ANNOUNCE);
		ack = VIRTIO_NET_OK;
	}
	st->host[st->len - 1] = ack;
	n->t.mem.mark_dirty(n->t.mem.opaque, st->gpa + st->len - 1, 1);
	return 1;
}

static void net_ctrl_run(struct virtio_net *n)
{
	struct virtq *q = &n->t.q[NET_CTRLQ];
	unsigned done = 0;
	struct errbuf e;

	while (done < NET_BUDGET && !atomic_load(&n->quiesced) &&
	       virtio_mmio_queue_live(&n->t, NET_CTRLQ)) {
		int r = virtq_pop(q, &n->t.mem, &n->el, &e);

		if (r < 0) {
			virtio_mmio_needs_reset(&n->t, e.msg);
			break;
		}
		if (r == 0)
			break;
		if (virtq_push(q, &n->t.mem, n->el.head, net_ctrl_one(n, &n->el)) < 0) {
			virtio_mmio_needs_reset(&n->t, "used ring outside guest RAM");
			break;
		}
		done++;
	}
	if (done)
		virtio_mmio_used_notify(&n->t, NET_CTRLQ);
}

/* ---- announcing ---- */

static void net_rarp_send(struct virtio_net *n)
{
	uint8_t f[NET_RARP_LEN] = { 0 };

	memset(f, 0xff, 6);
	memcpy(f + 6, n->mac, 6);
	f[12] = 0x80; /* ETH_P_RARP */
	f[13] = 0x35;
	f[15] = 1;    /* hardware type Ethernet */
	f[16] = 0x08; /* protocol IPv4 */
	f[18] = 6;
	f[19] = 4;
	f[21] = 3;    /* reverse request */
	memcpy(f + 22, n->mac, 6); /* sender hardware address; sender IP 0 */
	memcpy(f + 32, n->mac, 6); /* target hardware address; target IP 0 */
	if (net_tap_send(n, f, sizeof(f)))
		atomic_fetch_add(&n->announced, 1);
}

/* Starts announcing (first resume after a move): the guest is told, the RARPs scheduled. */
static void net_announce_begin(struct virtio_net *n)
{
	bool guest;

	pthread_mutex_lock(&n->t.lock);
	guest = (n->t.status & VIRTIO_CONFIG_S_DRIVER_OK) &&
		(n->t.driver_features & (1ull << VIRTIO_NET_F_GUEST_ANNOUNCE));
	pthread_mutex_unlock(&n->t.lock);
	if (guest) {
		atomic_fetch_or(&n->status, VIRTIO_NET_S_ANNOUNCE);
		virtio_mmio_config_notify(&n->t);
	}
	n->announce_round = 0;
	n->announce_next_ns = time_mono_ns() + net_announce_cfg.initial_ms * 1000000ull;
}

/* Sends the RARP rounds that are due; returns the poll timeout to the next one (-1: none). */
static int net_announce_step(struct virtio_net *n)
{
	const struct virtio_net_announce *a = &net_announce_cfg;
	uint64_t now = time_mono_ns();

	if (atomic_exchange(&n->announce_start, false)) {
		net_announce_begin(n);
		now = time_mono_ns();
	}
	if (n->announce_round >= a->rounds || !n->announce_next_ns)
		return -1;
	if (now >= n->announce_next_ns) {
		uint64_t gap;

		net_rarp_send(n);
		n->announce_round++;
		gap = MIN((uint64_t)a->initial_ms + (uint64_t)a->step_ms * n->announce_round,
			  (uint64_t)a->max_ms);
		n->announce_next_ns = now + gap * 1000000ull;
		if (n->announce_round >= a->rounds)
			return -1;
	}
	return (int)((n->announce_next_ns - now + 999999) / 1000000);
}

/* ---- the I/O thread ---- */

static void net_kick(struct virtio_net *n)
{
	uint64_t one = 1;

	/* the counter only saturates after 2^64 - 2 kicks: a failure here cannot lose one */
	if (write(n->kick_fd, &one, sizeof(one)) < 0)
		log_warn("net %s: waking the I/O thread: %s", n->spec.id, strerror(errno));
}

static void *net_thread(void *arg)
{
	struct virtio_net *n = arg;
	int timeout = -1;
	bool more = false;
	sigset_t all;

	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, NULL);
	for (;;) {
		struct pollfd pfd[2] = { { .fd = n->kick_fd, .events = POLLIN },
					 { .fd = n->tap_fd } };
		bool quiesced = atomic_load(&n->quiesced);
		uint64_t v;
		int r;

		/* quiesced, a lost tap, a frame waiting for a buffer: the tap is not looked at */
		if (quiesced || n->tap_gone || n->rx_wait)
			pfd[1].fd = -1;
		else
			pfd[1].events = POLLIN;
		r = poll(pfd, 2, more ? 0 : (quiesced ? -1 : timeout));
		if (r < 0 && errno != EINTR)
			break;
		if (pfd[0].revents & POLLIN) {
			if (read(n->kick_fd, &v, sizeof(v)) < 0 && errno != EAGAIN)
				break;
			n->rx_wait = false; /* receive buffers may have come */
		}
		pthread_mutex_lock(&n->lock);
		if (n->stop) {
			pthread_mutex_unlock(&n->lock);
			break;
		}
		if (atomic_load(&n->quiesced)) {
			pthread_mutex_unlock(&n->lock);
			more = false;
			continue;
		}
		n->busy = true;
		pthread_mutex_unlock(&n->lock);
		if ((pfd[1].revents & (POLLERR | POLLHUP | POLLNVAL)) && !n->rx_len)
			net_tap_read(n); /* names the error and takes the link down */
		more = net_tx_run(n, false);
		net_ctrl_run(n);
		more |= net_rx_run(n);
		timeout = net_announce_step(n);
		pthread_mutex_lock(&n->lock);
		n->busy = false;
		pthread_cond_broadcast(&n->idle);
		pthread_mutex_unlock(&n->lock);
	}
	return NULL;
}

/* ---- transport callbacks ---- */

static void net_config_read(void *dev, uint64_t off, uint8_t *data, unsigned len)
{
	struct virtio_net *n = dev;
	uint8_t cfg[8] = { 0 };
	unsigned status = atomic_load(&n->status);

	/* struct virtio_net_config: mac[6], then le16 status */
	memcpy(cfg, n->mac, 6);
	cfg[6] = (uint8_t)status;
	cfg[7] = (uint8_t)(status >> 8);
	for (unsigned i = 0; i < len; i++)
		data[i] = off + i < sizeof(cfg) ? cfg[off + i] : 0;
}

static void net_notify(void *dev, unsigned q)
{
	(void)q;
	net_kick(dev);
}

static void net_quiesce(void *dev)
{
	struct virtio_net *n = dev;

	pthread_mutex_lock(&n->lock);
	atomic_store(&n->quiesced, true);
	while (n->busy)
		pthread_cond_wait(&n->idle, &n->lock);
	pthread_mutex_unlock(&n->lock);
	/*
	 * The thread is idle until resume. What the guest sent before the pause leaves from
	 * here (where the network still expects the guest); a waiting frame goes to the guest
	 * now or never.
	 */
	net_tx_run(n, true);
	if (n->rx_len) {
		if (net_rx_deliver(n) == 1) {
			virtio_mmio_used_notify(&n->t, NET_RXQ);
		} else {
			n->rx_len = 0;
			n->rx_dropped++;
		}
	}
	n->rx_wait = false;
}

static void net_resume(void *dev)
{
	struct virtio_net *n = dev;

	if (n->loaded && n->claimed) {
		n->loaded = false;
		atomic_store(&n->announce_start, true);
	}
	atomic_store(&n->quiesced, false);
	net_kick(n);
}

/*
 * A driver reset withdraws a request to announce: the next driver may not have negotiated
 * GUEST_ANNOUNCE, and would otherwise see ANNOUNCE set with no way to acknowledge it. (The
 * transport's reset already cleared the configuration interrupt.) The host's RARPs, which do
 * not depend on the driver, go on.
 */
static void net_driver_reset(void *dev)
{
	struct virtio_net *n = dev;

	atomic_fetch_and(&n->status, ~(unsigned)VIRTIO_NET_S_ANNOUNCE);
}

static const struct virtio_mmio_dev net_virtio = {
	.device_id = VIRTIO_ID_NET,
	.nqueues = 3,
	.config_read = net_config_read,
	.notify = net_notify,
	.quiesce = net_quiesce,
	.resume = net_resume,
	.driver_reset = net_driver_reset,
};

static uint64_t net_features(void)
{
	return 1ull << VIRTIO_F_VERSION_1 | 1ull << VIRTIO_NET_F_MAC |
	       1ull << VIRTIO_NET_F_STATUS | 1ull << VIRTIO_NET_F_CTRL_VQ |
	       1ull << VIRTIO_NET_F_GUEST_ANNOUNCE;
}

static void net_io(void *dev, uint64_t off, uint8_t *data, unsigned len, bool is_write)
{
	struct virtio_net *n = dev;

	virtio_mmio_access(&n->t, off, data, len, is_write);
}

/* ---- device ops ---- */

static void net_reset(void *dev)
{
	struct virtio_net *n = dev;

	virtio_mmio_reset(&n->t);
	atomic_store(&n->status, n->tap_gone ? 0 : VIRTIO_NET_S_LINK_UP);
}

static int net_save(void *dev, struct buf *out)
{
	struct virtio_net *n = dev;

	virtio_mmio_state_save(&n->t, out);
	buf_put_bytes(out, n->mac, sizeof(n->mac));
	buf_put_u16(out, (uint16_t)atomic_load(&n->status));
	buf_put_u32(out, 0);
	return buf_status(out);
}

static int net_parse(struct virtio_net *n, uint32_t version, const void *p, size_t len,
		     struct virtio_mmio *staged, uint8_t mac[6], uint16_t *status,
		     struct errbuf *e)
{
	struct buf_reader r;
	uint32_t flags;
	int ret;

	if (version != VIRTIO_NET_STATE_VERSION)
		return err_set(e, -EINVAL, "version %u (this build reads %u)", version,
			       VIRTIO_NET_STATE_VERSION);
	buf_reader_init(&r, p, len);
	ret = virtio_mmio_state_parse(&net_virtio, n ? &n->t.mem : NULL, &r, staged, e);
	if (ret < 0)
		return ret;
	buf_get_bytes(&r, mac, 6);
	*status = buf_get_u16(&r);
	flags = buf_get_u32(&r);
	if (!buf_reader_done(&r))
		return err_set(e, -EINVAL, "payload of %zu bytes is truncated or too long", len);
	if (flags)
		return err_set(e, -EINVAL, "unknown flags 0x%x", flags);
	if ((mac[0] & 1) || !(mac[0] | mac[1] | mac[2] | mac[3] | mac[4] | mac[5]))
		return err_set(e, -EINVAL,
			       "MAC %02x:%02x:%02x:%02x:%02x:%02x is not a unicast address",
			       mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]);
	if (*status & ~NET_STATUS_KNOWN)
		return err_set(e, -EINVAL, "status 0x%x has unknown bits", *status);
	if (staged->device_features != net_features())
		return err_set(e, -EINVAL,
			       "the saved device offered features 0x%llx, this build offers 0x%llx",
			       (unsigned long long)staged->device_features,
			       (unsigned long long)net_features());
	return 0;
}

static int net_validate(void *dev, uint32_t version, const void *p, size_t len, struct errbuf *e)
{
	struct virtio_mmio staged;
	uint8_t mac[6];
	uint16_t status;

	return net_parse(dev, version, p, len, &staged, mac, &status, e);
}

static int net_load(void *dev, uint32_t version, const void *p, size_t len, struct errbuf *e)
{
	struct virtio_net *n = dev;
	struct virtio_mmio staged;
	uint8_t mac[6];
	uint16_t status = 0; /* set by net_parse on success */
	int ret = net_parse(n, version, p, len, &staged, mac, &status, e);

	if (ret < 0)
		return ret;
	virtio_mmio_state_apply(&n->t, &staged);
	/* the guest keeps the address it was given; the link is this host's tap */
	memcpy(n->mac, mac, 6);
	atomic_store(&n->status, (status & VIRTIO_NET_S_ANNOUNCE) |
					 (n->tap_gone ? 0 : VIRTIO_NET_S_LINK_UP));
	n->loaded = true;
	return 0;
}

/* The guest runs here from now: frames queued on the tap before were not for this copy. */
static int net_claim(void *dev, struct errbuf *e)
{
	struct virtio_net *n = dev;
	uint8_t buf[64];

	(void)e;
	if (!n->claimed) {
		for (unsigned i = 0; i < 4096 && read(n->tap_fd, buf, sizeof(buf)) > 0; i++)
			;
		n->claimed = true;
	}
	return 0;
}

static void net_release(void *dev)
{
	struct virtio_net *n = dev;

	n->claimed = false;
}

static uint64_t net_announced(void *dev)
{
	struct virtio_net *n = dev;

	return atomic_load(&n->announced);
}

static void net_destroy(void *dev)
{
	struct virtio_net *n = dev;

	if (!n)
		return;
	if (n->thread_started) {
		pthread_mutex_lock(&n->lock);
		n->stop = true;
		pthread_mutex_unlock(&n->lock);
		net_kick(n);
		pthread_join(n->thread, NULL);
	}
	if (n->rx_dropped || n->tx_dropped)
		log_info("net %s: %llu received and %llu transmitted frames dropped", n->spec.id,
			 (unsigned long long)n->rx_dropped, (unsigned long long)n->tx_dropped);
	if (n->tap_fd >= 0)
		close(n->tap_fd);
	if (n->kick_fd >= 0)
		close(n->kick_fd);
	free(n->rx_buf);
	free(n->tx_buf);
	virtio_mmio_destroy(&n->t);
	pthread_cond_destroy(&n->idle);
	pthread_mutex_destroy(&n->lock);
	free(n);
}

static const struct device_ops net_ops = {
	.name = VIRTIO_NET_TYPE,
	.version = VIRTIO_NET_STATE_VERSION,
	.quiesce = net_quiesce,
	.resume = net_resume,
	.reset = net_reset,
	.save = net_save,
	.validate = net_validate,
	.load = net_load,
	.claim = net_claim,
	.release = net_release,
	.destroy = net_destroy,
	.announced = net_announced,
};

int virtio_net_create_fd(const struct device_spec *spec, const struct device_env *env, int fd,
			 unsigned mtu, struct device_info *out, struct errbuf *e)
{
	struct virtio_net *n = calloc(1, sizeof(*n));
	int ret;

	if (!n) {
		close(fd);
		return err_set(e, -ENOMEM, "out of memory");
	}
	n->tap_fd = fd;
	n->kick_fd = -1;
	n->spec = *spec;
	n->frame_max = MIN(mtu, NET_MTU_MAX) + NET_ETH_HLEN + NET_VLAN_LEN;
	if (spec->mac_set)
		memcpy(n->mac, spec->mac, 6);
	else
		net_mac_default(spec, n->mac);
	atomic_init(&n->status, VIRTIO_NET_S_LINK_UP);
	atomic_init(&n->announced, 0);
	atomic_init(&n->announce_start, false);
	pthread_mutex_init(&n->lock, NULL);
	pthread_cond_init(&n->idle, NULL);
	atomic_init(&n->quiesced, true);
	virtio_mmio_init(&n->t, &net_virtio, n, env, net_features());
	n->rx_buf = malloc(NET_READ_MAX);
	n->tx_buf = malloc(n->frame_max);
	if (!n->rx_buf || !n->tx_buf) {
		ret = err_set(e, -ENOMEM, "out of memory");
		goto err;
	}
	if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0) {
		ret = err_set(e, -errno, "net %s: making the tap non-blocking: %s", spec->id,
			      strerror(errno));
		goto err;
	}
	n->kick_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (n->kick_fd < 0) {
		ret = err_set(e, -errno, "net %s: eventfd: %s", spec->id, strerror(errno));
		goto err;
	}
	ret = -pthread_create(&n->thread, NULL, net_thread, n);
	if (ret < 0) {
		err_set(e, ret, "net %s: starting its I/O thread: %s", spec->id, strerror(-ret));
		goto err;
	}
	n->thread_started = true;
	*out = (struct device_info){ .ops = &net_ops, .dev = n, .io_kind = DEV_IO_MMIO,
				     .io_base = env->mmio_base, .io_len = VIRTIO_MMIO_SIZE,
				     .io_fn = net_io, .virtio_mmio = true, .notify_fd = n->kick_fd,
				     .notify_offset = VIRTIO_MMIO_QUEUE_NOTIFY };
	snprintf(out->instance, sizeof(out->instance), "%s", spec->id);
	return 0;
err:
	net_destroy(n);
	return ret;
}

/* Attaches to the existing tap spec->path (the operator creates and bridges it). */
static int net_tap_open(const struct device_spec *s, int *fd_out, unsigned *mtu,
			struct errbuf *e)
{
	struct ifreq ifr = { 0 };
	int fd, sock, hdr = NET_HDR_LEN, ret;

	if (strlen(s->path) >= IFNAMSIZ)
		return err_set(e, -EINVAL, "net %s: tap name '%s' is longer than %u characters",
			       s->id, s->path, IFNAMSIZ - 1);
	fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC | O_NONBLOCK);
	if (fd < 0)
		return err_set(e, -errno, "net %s: open /dev/net/tun: %s", s->id, strerror(errno));
	snprintf(ifr.ifr_name, IFNAMSIZ, "%s", s->path);
	ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
	/* TUNSETIFF would create a missing tap: refuse instead, it would be bridged nowhere */
	sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (sock < 0) {
		ret = err_set(e, -errno, "net %s: socket: %s", s->id, strerror(errno));
		goto err;
	}
	if (ioctl(sock, SIOCGIFMTU, &ifr) < 0) {
		ret = err_set(e, -errno, "net %s: tap %s: %s", s->id, s->path,
			      errno == ENODEV ? "no such interface on this host (create it first: "
						"ip tuntap add NAME mode tap)" : strerror(errno));
		close(sock);
		goto err;
	}
	close(sock);
	*mtu = ifr.ifr_mtu > 0 ? (unsigned)ifr.ifr_mtu : NET_MTU_DEFAULT;
	ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
	if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
		int err = errno;

		ret = err_set(e, -err, "net %s: attaching to tap %s: %s%s", s->id, s->path,
			      strerror(err), err == EBUSY ? " (another process has it, or it is "
							    "not a tap with vnet headers)" : "");
		goto err;
	}
	if (ioctl(fd, TUNSETVNETHDRSZ, &hdr) < 0) {
		ret = err_set(e, -errno, "net %s: tap %s: TUNSETVNETHDRSZ: %s", s->id, s->path,
			      strerror(errno));
		goto err;
	}
	/* no offloads: the tap hands over whole frames of at most the MTU */
	if (ioctl(fd, TUNSETOFFLOAD, 0) < 0) {
		ret = err_set(e, -errno, "net %s: tap %s: TUNSETOFFLOAD: %s", s->id, s->path,
			      strerror(errno));
		goto err;
	}
	*fd_out = fd;
	return 0;
err:
	close(fd);
	return ret;
}

static int net_create(const struct device_spec *spec, const struct device_env *env,
		      struct device_info *out, struct errbuf *e)
{
	unsigned mtu = 0; /* set by net_tap_open on success (gcc -O3 cannot see it) */
	int fd = -1, ret = net_tap_open(spec, &fd, &mtu, e);

	if (ret < 0)
		return ret;
	return virtio_net_create_fd(spec, env, fd, mtu, out, e);
}

static void net_spec_get(void *dev, struct device_spec *out)
{
	struct virtio_net *n = dev;

	*out = n->spec;
	memcpy(out->mac, n->mac, 6);
	out->mac_set = true;
	out->size = 0;
}

const struct device_type virtio_net_type = {
	.name = VIRTIO_NET_TYPE,
	.ops = &net_ops,
	.mmio_len = VIRTIO_MMIO_SIZE,
	.create = net_create,
	.spec_get = net_spec_get,
};
