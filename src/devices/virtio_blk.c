/* SPDX-License-Identifier: MIT */
/*
 * virtio-blk (virtio spec 5.2) on the virtio-mmio transport, backed by a raw file: one
 * request queue; IN, OUT, FLUSH (fdatasync: it really reaches the disk), GET_ID, and
 * DISCARD and WRITE_ZEROES (one range each, fallocate: holes punched or zeroed). The
 * disk's emulation, its lock and its state save/validate/load are all in this file.
 *
 * I/O never runs on a vCPU thread: a notification only wakes this device's I/O thread
 * (an eventfd, which the VMM wires to the QueueNotify register with KVM_IOEVENTFD so the
 * write never leaves the kernel: the guest kit's disk workload went from 1.8 to 1.1-1.4 s a
 * pass of 1024 blocks with it, on this loaded two-core host), which walks the queue and does the file I/O with preadv/pwritev straight
 * into and out of guest memory, then publishes the used entries and raises the interrupt.
 * With aio=uring (optional, liburing) the same thread hands reads, writes and FLUSH to
 * io_uring instead and walks on, up to BLK_URING_SLOTS in flight. The thread's synchronous
 * I/O stays the default, by measurement (docs/benchmarks.md, "Disk I/O"): the guest's
 * request rate was the same within this host's noise with both (the emulated guest spends
 * 500-1050 us of vCPU time a request, the device 10-35 us of CPU), while the device's time
 * from taking a request to completing it was 5-26 us with the thread and 29-164 us with
 * io_uring, whose buffered writes and fdatasync go to its worker threads.
 *
 * Every byte the device writes into guest memory (read data, the status byte, the used
 * ring) is marked in the VMM's dirty bitmap after it is written, so a live migration sends
 * it; the VMM quiesces the device after the vCPUs stop and before its final dirty sync.
 *
 * Locks: while the guest runs, a writable disk holds an exclusive OFD lock on the file (a
 * readonly disk a shared one), so a second godwit opening it is refused. A migration's
 * destination opens the file early (pre-flight: it exists, it has the same size) but
 * claims the lock only after COMMIT, when the source has flushed and released it.
 *
 * State payload, version 1 (little-endian): the transport (virtio_mmio.h), then
 *   u64 size       bytes, the capacity the guest was given
 *   u32 flags      bit 0: readonly; the rest zero
 */
#include "devices/virtio_blk.h"
#include "base/log.h"
#include "devices/virtio_mmio.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/virtio_blk.h>
#include <linux/virtio_config.h>
#include <linux/virtio_ids.h>
#include <linux/virtio_mmio.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
#ifdef GODWIT_HAVE_LIBURING
#include <liburing.h>
#endif

#define BLK_SECTOR 512u
#define BLK_HDR_LEN 16u
#define BLK_REQ_MAX (64u * 1024 * 1024) /* data bytes in one request */
#define BLK_F_READONLY 1u
#define BLK_RANGE_LEN 16u		/* a DISCARD / WRITE_ZEROES range */
#define BLK_RANGE_SECTORS 0x400000u	/* 2 GiB at most in one range */
#define BLK_URING_SLOTS 32u		/* aio=uring: requests in flight at once */
#define BLK_URING_KICK UINT64_MAX	/* aio=uring: user_data of the doorbell's poll */

#ifdef GODWIT_HAVE_LIBURING
/* aio=uring: one request taken off the ring, its file I/O in the kernel's hands */
struct blk_slot {
	struct virtq_elem el;
	struct iovec iov[VIRTQ_NUM_MAX];
	unsigned niov;
	uint32_t type;
	uint64_t off, len;
	uint64_t t0;
	bool busy;
};
#endif

struct virtio_blk {
	struct virtio_mmio t;
	struct device_spec spec;
	int fd;
	uint64_t size;
	bool locked;
	atomic_bool unflushed; /* written since the last fdatasync */

	pthread_t thread;
	bool thread_started;
	int kick_fd;
	pthread_mutex_t lock; /* quiesced, busy, stop */
	pthread_cond_t idle;
	atomic_bool quiesced;
	bool busy;
	bool stop;
	struct virtq_elem el; /* the I/O thread's current request */
	enum dev_aio aio;     /* DEV_AIO_THREAD or DEV_AIO_URING */
#ifdef GODWIT_HAVE_LIBURING
	struct io_uring ring;
	bool ring_ready;
	struct blk_slot *slots; /* BLK_URING_SLOTS */
	unsigned inflight;	/* slots busy: the I/O thread's own count */
	bool more;		/* the last walk stopped with every slot busy */
#endif

	/* for `status`: written by the I/O thread only, read by anyone */
	struct {
		atomic_uint_least64_t reads, writes, flushes, others, bytes_read, bytes_written,
			errors, service_ns, notifies;
	} n;
};

/* ---- requests (I/O thread) ---- */

/* Copies the first n readable bytes of the chain into out. */
static void blk_gather(const struct virtq_elem *el, uint8_t *out, size_t n)
{
	size_t done = 0;

	for (unsigned i = 0; i < el->nreadable && done < n; i++) {
		size_t k = MIN((size_t)el->segs[i].len, n - done);

		memcpy(out + done, el->segs[i].host, k);
		done += k;
	}
}

/*
 * The data part of a request as host iovecs: the readable bytes after the header (OUT), or
 * the writable bytes before the status byte (IN, GET_ID). Zero-length pieces are skipped.
 */
static unsigned blk_data_iov(const struct virtq_elem *el, bool writable, struct iovec *iov,
			     uint64_t *total)
{
	uint64_t skip = writable ? 0 : BLK_HDR_LEN;
	uint64_t left = writable ? el->writable_bytes - 1 : el->readable_bytes - BLK_HDR_LEN;
	unsigned first = writable ? el->nreadable : 0, last = writable ? el->nsegs : el->nreadable;
	unsigned n = 0;

	*total = left;
	for (unsigned i = first; i < last && left; i++) {
		const struct virtq_seg *s = &el->segs[i];
		uint64_t off = MIN(skip, (uint64_t)s->len), k = MIN((uint64_t)s->len - off, left);

		skip -= off;
		if (!k)
			continue;
		iov[n++] = (struct iovec){ s->host + off, (size_t)k };
		left -= k;
	}
	return n;
}

/* preadv/pwritev until done; -EIO on a short transfer (the file shrank) */
static int blk_rw(int fd, struct iovec *iov, unsigned n, uint64_t off, bool write)
{
	while (n) {
		ssize_t r = write ? pwritev(fd, iov, (int)n, (off_t)off) :
				    preadv(fd, iov, (int)n, (off_t)off);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		if (r == 0)
			return -EIO;
		off += (uint64_t)r;
		while (n && (size_t)r >= iov->iov_len) {
			r -= (ssize_t)iov->iov_len;
			iov++;
			n--;
		}
		if (n) {
			iov->iov_base = (uint8_t *)iov->iov_base + r;
			iov->iov_len -= (size_t)r;
		}
	}
	return 0;
}

static void blk_mark_written(struct virtio_blk *b, const struct virtq_elem *el)
{
	for (unsigned i = el->nreadable; i < el->nsegs; i++)
		if (el->segs[i].len)
			b->t.mem.mark_dirty(b->t.mem.opaque, el->segs[i].gpa, el->segs[i].len);
}

/* The guest asked for something the disk refuses: it gets IOERR, the operator a line. */
static void blk_refused(struct virtio_blk *b, const char *what, uint64_t sector)
{
	static struct log_ratelimit rl = LOG_RATELIMIT_INIT(1000, 5);
	uint32_t suppressed;

	if (log_ratelimit_allow(&rl, &suppressed))
		log_warn("disk %s: %s at sector %llu was refused (I/O error to the guest)",
			 b->spec.id, what, (unsigned long long)sector);
}

/* Zeroes [off, off + len) by writing zeros: where the file system cannot do it for us. */
static int blk_zero_write(int fd, uint64_t off, uint64_t len)
{
	static const uint8_t zero[64 * 1024];

	while (len) {
		size_t k = (size_t)MIN(len, sizeof(zero));
		int ret = io_pwrite_full(fd, zero, k, (off_t)off);

		if (ret < 0)
			return ret;
		off += k;
		len -= k;
	}
	return 0;
}

/* DISCARD and WRITE_ZEROES: one range {u64 sector, u32 sectors, u32 flags} after the header. */
static uint8_t blk_range(struct virtio_blk *b, const struct virtq_elem *el, uint32_t type)
{
	uint8_t hdr_range[BLK_HDR_LEN + BLK_RANGE_LEN];
	uint64_t sector, off, len;
	uint32_t count, flags;
	int mode;

	if (el->readable_bytes != sizeof(hdr_range) || el->writable_bytes != 1)
		return VIRTIO_BLK_S_IOERR; /* one range, data the device reads */
	blk_gather(el, hdr_range, sizeof(hdr_range));
	sector = le_get64(hdr_range + BLK_HDR_LEN);
	count = le_get32(hdr_range + BLK_HDR_LEN + 8);
	flags = le_get32(hdr_range + BLK_HDR_LEN + 12);
	if (flags & ~(uint32_t)VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP ||
	    (type == VIRTIO_BLK_T_DISCARD && flags))
		return VIRTIO_BLK_S_UNSUPP;
	if (count > BLK_RANGE_SECTORS)
		return VIRTIO_BLK_S_IOERR;
	if (b->spec.readonly) {
		blk_refused(b, "a discard or zeroing of a readonly disk", sector);
		return VIRTIO_BLK_S_IOERR;
	}
	if (sector > b->size / BLK_SECTOR || count > b->size / BLK_SECTOR - sector) {
		blk_refused(b, "a range beyond the end of the disk", sector);
		return VIRTIO_BLK_S_IOERR;
	}
	off = sector * BLK_SECTOR;
	len = (uint64_t)count * BLK_SECTOR;
	if (!len)
		return VIRTIO_BLK_S_OK;
	atomic_store(&b->unflushed, true);
	mode = type == VIRTIO_BLK_T_DISCARD || flags ? FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE :
						      FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE;
	if (fallocate(b->fd, mode, (off_t)off, (off_t)len) == 0)
		return VIRTIO_BLK_S_OK;
	if (errno != EOPNOTSUPP)
		return VIRTIO_BLK_S_IOERR;
	/* a discard is a hint; zeroes must be written one way or another */
	if (type == VIRTIO_BLK_T_DISCARD)
		return VIRTIO_BLK_S_OK;
	return blk_zero_write(b->fd, off, len) < 0 ? VIRTIO_BLK_S_IOERR : VIRTIO_BLK_S_OK;
}

/* Checks an IN or OUT request and builds its data iovecs: VIRTIO_BLK_S_OK if it may run. */
static uint8_t blk_rw_check(struct virtio_blk *b, const struct virtq_elem *el, uint32_t type,
			    uint64_t sector, struct iovec *iov, unsigned *n, uint64_t *len)
{
	/* data only in the direction the request moves it */
	if (type == VIRTIO_BLK_T_IN ? el->readable_bytes != BLK_HDR_LEN : el->writable_bytes != 1)
		return VIRTIO_BLK_S_IOERR;
	*n = blk_data_iov(el, type == VIRTIO_BLK_T_IN, iov, len);
	if (*len % BLK_SECTOR || *len > BLK_REQ_MAX)
		return VIRTIO_BLK_S_IOERR;
	if (sector > b->size / BLK_SECTOR || *len > b->size - sector * BLK_SECTOR) {
		blk_refused(b, "a request beyond the end of the disk", sector);
		return VIRTIO_BLK_S_IOERR;
	}
	if (type == VIRTIO_BLK_T_OUT && b->spec.readonly) {
		blk_refused(b, "a write to a readonly disk", sector);
		return VIRTIO_BLK_S_IOERR;
	}
	return VIRTIO_BLK_S_OK;
}

static uint8_t blk_execute(struct virtio_blk *b, const struct virtq_elem *el, uint32_t type,
			   uint64_t sector, uint32_t *data_written)
{
	struct iovec iov[VIRTQ_NUM_MAX];
	uint64_t len;
	unsigned n;
	uint8_t st;

	switch (type) {
	case VIRTIO_BLK_T_DISCARD:
	case VIRTIO_BLK_T_WRITE_ZEROES:
		return blk_range(b, el, type);
	case VIRTIO_BLK_T_IN:
	case VIRTIO_BLK_T_OUT:
		st = blk_rw_check(b, el, type, sector, iov, &n, &len);
		if (st != VIRTIO_BLK_S_OK)
			return st;
		if (type == VIRTIO_BLK_T_OUT)
			atomic_store(&b->unflushed, true);
		if (blk_rw(b->fd, iov, n, sector * BLK_SECTOR, type == VIRTIO_BLK_T_OUT) < 0)
			return VIRTIO_BLK_S_IOERR;
		if (type == VIRTIO_BLK_T_IN)
			*data_written = (uint32_t)len;
		return VIRTIO_BLK_S_OK;
	case VIRTIO_BLK_T_FLUSH:
		if (!b->spec.readonly && fdatasync(b->fd) < 0)
			return VIRTIO_BLK_S_IOERR;
		atomic_store(&b->unflushed, false);
		return VIRTIO_BLK_S_OK;
	case VIRTIO_BLK_T_GET_ID: {
		uint8_t id[VIRTIO_BLK_ID_BYTES] = { 0 };
		uint64_t done = 0;

		memcpy(id, b->spec.id, MIN(strlen(b->spec.id), sizeof(id)));
		n = blk_data_iov(el, true, iov, &len);
		for (unsigned i = 0; i < n && done < sizeof(id); i++) {
			size_t k = MIN(iov[i].iov_len, sizeof(id) - done);

			memcpy(iov[i].iov_base, id + done, k);
			done += k;
		}
		*data_written = (uint32_t)done;
		return VIRTIO_BLK_S_OK;
	}
	}
	return VIRTIO_BLK_S_UNSUPP;
}

static void blk_count(atomic_uint_least64_t *c, uint64_t n)
{
	atomic_fetch_add_explicit(c, n, memory_order_relaxed);
}

/* Counts a completed request of type (UINT32_MAX: no header) for `status`. */
static void blk_account(struct virtio_blk *b, uint32_t type, uint8_t status, uint64_t bytes)
{
	if (status != VIRTIO_BLK_S_OK) {
		blk_count(&b->n.errors, 1);
		return;
	}
	switch (type) {
	case VIRTIO_BLK_T_IN:
		blk_count(&b->n.reads, 1);
		blk_count(&b->n.bytes_read, bytes);
		break;
	case VIRTIO_BLK_T_OUT:
		blk_count(&b->n.writes, 1);
		blk_count(&b->n.bytes_written, bytes);
		break;
	case VIRTIO_BLK_T_FLUSH:
		blk_count(&b->n.flushes, 1);
		break;
	default:
		blk_count(&b->n.others, 1);
	}
}

/*
 * A request of type is done (written data bytes into the chain): puts its status, marks
 * what the device wrote dirty, counts it; returns the used length. The chain has a
 * writable byte.
 */
static uint32_t blk_complete(struct virtio_blk *b, const struct virtq_elem *el, uint32_t type,
			     uint8_t status, uint32_t written)
{
	const struct virtq_seg *st = NULL;

	blk_account(b, type, status, type == VIRTIO_BLK_T_OUT ? el->readable_bytes - BLK_HDR_LEN :
								  written);
	/* the status is the last byte of the last writable buffer that has any */
	for (unsigned i = el->nsegs; i-- > el->nreadable && !st;)
		if (el->segs[i].len)
			st = &el->segs[i];
	st->host[st->len - 1] = status;
	blk_mark_written(b, el);
	return written + 1;
}

/* Executes one request; returns the bytes written into the chain (the used length). */
static uint32_t blk_request(struct virtio_blk *b, const struct virtq_elem *el)
{
	uint8_t hdr[BLK_HDR_LEN], status;
	uint32_t written = 0, type = UINT32_MAX;

	/* without a device-writable byte there is nowhere to put a status: complete it empty */
	if (el->writable_bytes < 1) {
		blk_account(b, type, VIRTIO_BLK_S_IOERR, 0);
		return 0;
	}
	if (el->readable_bytes < BLK_HDR_LEN) {
		status = VIRTIO_BLK_S_IOERR;
	} else {
		blk_gather(el, hdr, sizeof(hdr));
		type = le_get32(hdr);
		status = blk_execute(b, el, type, le_get64(hdr + 8), &written);
	}
	return blk_complete(b, el, type, status, written);
}

static void blk_queue_run(struct virtio_blk *b)
{
	struct virtq *q = &b->t.q[0];
	bool used = false;
	struct errbuf e;

	while (!atomic_load(&b->quiesced) && virtio_mmio_queue_live(&b->t, 0)) {
		int r = virtq_pop(q, &b->t.mem, &b->el, &e);
		uint64_t t0 = time_mono_ns();

		if (r < 0) {
			virtio_mmio_needs_reset(&b->t, e.msg);
			break;
		}
		if (r == 0)
			break;
		if (virtq_push(q, &b->t.mem, b->el.head, blk_request(b, &b->el)) < 0) {
			virtio_mmio_needs_reset(&b->t, "used ring outside guest RAM");
			break;
		}
		blk_count(&b->n.service_ns, time_mono_ns() - t0);
		used = true;
	}
	if (used)
		virtio_mmio_used_notify(&b->t, 0);
}

/* Clears the doorbell, counting the notifications it coalesced; <0 if it broke. */
static int blk_kicks_take(struct virtio_blk *b)
{
	uint64_t v;

	if (read(b->kick_fd, &v, sizeof(v)) == sizeof(v))
		blk_count(&b->n.notifies, v);
	else if (errno != EAGAIN)
		return -errno;
	return 0;
}

static void *blk_thread(void *arg)
{
	struct virtio_blk *b = arg;
	sigset_t all;

	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, NULL);
	for (;;) {
		struct pollfd pfd = { .fd = b->kick_fd, .events = POLLIN };

		if (poll(&pfd, 1, -1) < 0 && errno != EINTR)
			break;
		if (blk_kicks_take(b) < 0)
			break;
		pthread_mutex_lock(&b->lock);
		if (b->stop) {
			pthread_mutex_unlock(&b->lock);
			break;
		}
		if (atomic_load(&b->quiesced)) {
			pthread_mutex_unlock(&b->lock);
			continue;
		}
		b->busy = true;
		pthread_mutex_unlock(&b->lock);
		blk_queue_run(b);
		pthread_mutex_lock(&b->lock);
		b->busy = false;
		pthread_cond_broadcast(&b->idle);
		pthread_mutex_unlock(&b->lock);
	}
	return NULL;
}

static void blk_kick(struct virtio_blk *b)
{
	uint64_t one = 1;

	/* the counter only saturates after 2^64 - 2 kicks: a failure here cannot lose one */
	if (write(b->kick_fd, &one, sizeof(one)) < 0)
		log_warn("disk %s: waking the I/O thread: %s", b->spec.id, strerror(errno));
}

#ifdef GODWIT_HAVE_LIBURING
/*
 * aio=uring: the same I/O thread walks the ring, but a read, a write or a FLUSH is handed to
 * io_uring and the walk goes on; up to BLK_URING_SLOTS requests are in flight, completed in
 * the order the kernel finishes them. The doorbell is a poll on the eventfd in the same
 * ring, so one wait covers both. Quiescing waits until no slot is busy: every request
 * taken is complete, as with the thread. A FLUSH covers what was complete when it was
 * submitted (the virtio rule); a write completing after that marks the disk unflushed
 * again, so the quiesce at a pause still syncs it.
 */

static int blk_uring_arm(struct virtio_blk *b)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&b->ring);

	if (!sqe)
		return -EBUSY;
	io_uring_prep_poll_add(sqe, b->kick_fd, POLLIN);
	io_uring_sqe_set_data64(sqe, BLK_URING_KICK);
	return 0;
}

static void blk_uring_push(struct virtio_blk *b, struct blk_slot *sl, uint32_t used_len)
{
	sl->busy = false;
	if (virtq_push(&b->t.q[0], &b->t.mem, sl->el.head, used_len) < 0) {
		virtio_mmio_needs_reset(&b->t, "used ring outside guest RAM");
		return;
	}
	blk_count(&b->n.service_ns, time_mono_ns() - sl->t0);
}

/* Takes the next request into sl: submitted (true) or completed at once; false: none. */
static bool blk_uring_take(struct virtio_blk *b, struct blk_slot *sl, bool *used)
{
	struct io_uring_sqe *sqe;
	uint8_t hdr[BLK_HDR_LEN] = { 0 }, st;
	struct errbuf e;
	int r = virtq_pop(&b->t.q[0], &b->t.mem, &sl->el, &e);

	if (r < 0)
		virtio_mmio_needs_reset(&b->t, e.msg);
	if (r <= 0)
		return false;
	sl->t0 = time_mono_ns();
	sl->busy = true;
	*used = true;
	sl->type = UINT32_MAX;
	if (sl->el.writable_bytes >= 1 && sl->el.readable_bytes >= BLK_HDR_LEN) {
		blk_gather(&sl->el, hdr, sizeof(hdr));
		sl->type = le_get32(hdr);
	}
	if (sl->type == VIRTIO_BLK_T_IN || sl->type == VIRTIO_BLK_T_OUT) {
		st = blk_rw_check(b, &sl->el, sl->type, le_get64(hdr + 8), sl->iov, &sl->niov,
				  &sl->len);
		if (st != VIRTIO_BLK_S_OK) {
			blk_uring_push(b, sl, blk_complete(b, &sl->el, sl->type, st, 0));
			return true;
		}
		sl->off = le_get64(hdr + 8) * BLK_SECTOR;
		sqe = io_uring_get_sqe(&b->ring); /* never NULL: the ring has a place per slot */
		if (sl->type == VIRTIO_BLK_T_OUT) {
			atomic_store(&b->unflushed, true);
			io_uring_prep_writev(sqe, b->fd, sl->iov, sl->niov, sl->off);
		} else {
			io_uring_prep_readv(sqe, b->fd, sl->iov, sl->niov, sl->off);
		}
	} else if (sl->type == VIRTIO_BLK_T_FLUSH && !b->spec.readonly) {
		atomic_store(&b->unflushed, false);
		sqe = io_uring_get_sqe(&b->ring);
		io_uring_prep_fsync(sqe, b->fd, IORING_FSYNC_DATASYNC);
	} else {
		/* the rest (GET_ID, DISCARD, WRITE_ZEROES, malformed): at once, like the thread */
		blk_uring_push(b, sl, blk_request(b, &sl->el));
		return true;
	}
	io_uring_sqe_set_data(sqe, sl);
	b->inflight++;
	return true;
}

/* The kernel finished sl's I/O with result res. */
static void blk_uring_done(struct virtio_blk *b, struct blk_slot *sl, int res)
{
	bool out = sl->type == VIRTIO_BLK_T_OUT;
	uint8_t st = VIRTIO_BLK_S_OK;

	b->inflight--;
	if (sl->type == VIRTIO_BLK_T_FLUSH) {
		if (res < 0) {
			atomic_store(&b->unflushed, true);
			st = VIRTIO_BLK_S_IOERR;
		}
		blk_uring_push(b, sl, blk_complete(b, &sl->el, sl->type, st, 0));
		return;
	}
	if (out)
		atomic_store(&b->unflushed, true);
	/* a short transfer (or a retry the kernel left to us) is finished here */
	if ((res >= 0 && (uint64_t)res < sl->len) || res == -EAGAIN || res == -EINTR) {
		struct iovec *iov = sl->iov;
		unsigned n = sl->niov;
		size_t left = res > 0 ? (size_t)res : 0;

		while (n && left >= iov->iov_len) {
			left -= iov->iov_len;
			iov++;
			n--;
		}
		if (n) {
			iov->iov_base = (uint8_t *)iov->iov_base + left;
			iov->iov_len -= left;
		}
		res = blk_rw(b->fd, iov, n, sl->off + (res > 0 ? (uint64_t)res : 0), out);
	}
	if (res < 0)
		st = VIRTIO_BLK_S_IOERR;
	blk_uring_push(b, sl, blk_complete(b, &sl->el, sl->type, st,
					   !out && st == VIRTIO_BLK_S_OK ? (uint32_t)sl->len : 0));
}

/* Fills free slots from the ring while the device takes work. */
static void blk_uring_walk(struct virtio_blk *b, bool *used)
{
	for (;;) {
		struct blk_slot *sl = NULL;

		for (unsigned i = 0; i < BLK_URING_SLOTS && !sl; i++)
			if (!b->slots[i].busy)
				sl = &b->slots[i];
		/* every slot busy: walk on when one completes */
		b->more = !sl;
		if (!sl || atomic_load(&b->quiesced) || !virtio_mmio_queue_live(&b->t, 0) ||
		    !blk_uring_take(b, sl, used))
			return;
	}
}

static void *blk_uring_thread(void *arg)
{
	struct virtio_blk *b = arg;
	sigset_t all;
	bool armed = false;

	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, NULL);
	for (;;) {
		struct io_uring_cqe *cqe;
		unsigned head, seen = 0;
		bool kicked = false, used = false, walk, stop;
		int r;

		if (!armed && blk_uring_arm(b) == 0)
			armed = true;
		r = io_uring_submit_and_wait(&b->ring, 1);
		if (r < 0 && r != -EINTR && r != -EAGAIN && r != -EBUSY) {
			log_err("disk %s: io_uring: %s", b->spec.id, strerror(-r));
			break;
		}
		io_uring_for_each_cqe(&b->ring, head, cqe) {
			seen++;
			if (cqe->user_data == BLK_URING_KICK) {
				kicked = true;
				armed = false;
				continue;
			}
			blk_uring_done(b, io_uring_cqe_get_data(cqe), cqe->res);
			used = true;
		}
		io_uring_cq_advance(&b->ring, seen);
		if (kicked && blk_kicks_take(b) < 0)
			break;
		pthread_mutex_lock(&b->lock);
		stop = b->stop;
		walk = !stop && (kicked || b->more) && !atomic_load(&b->quiesced);
		if (walk)
			b->busy = true;
		pthread_mutex_unlock(&b->lock);
		if (walk)
			blk_uring_walk(b, &used);
		if (used)
			virtio_mmio_used_notify(&b->t, 0);
		pthread_mutex_lock(&b->lock);
		/* idle only once nothing taken is still in the kernel */
		b->busy = b->inflight > 0;
		if (!b->busy)
			pthread_cond_broadcast(&b->idle);
		stop = b->stop && !b->inflight;
		pthread_mutex_unlock(&b->lock);
		if (stop)
			break;
	}
	/* a broken ring: requests still in it are abandoned, but nobody waits for them */
	pthread_mutex_lock(&b->lock);
	b->busy = false;
	pthread_cond_broadcast(&b->idle);
	pthread_mutex_unlock(&b->lock);
	return NULL;
}

static int blk_uring_setup(struct virtio_blk *b, struct errbuf *e)
{
	int ret;

	b->slots = calloc(BLK_URING_SLOTS, sizeof(*b->slots));
	if (!b->slots)
		return err_set(e, -ENOMEM, "out of memory");
	ret = io_uring_queue_init(2 * BLK_URING_SLOTS, &b->ring, 0);
	if (ret < 0)
		return err_set(e, ret, "disk %s: aio=uring: io_uring_queue_init: %s (use "
				       "aio=thread)", b->spec.id, strerror(-ret));
	b->ring_ready = true;
	return 0;
}

static void blk_uring_teardown(struct virtio_blk *b)
{
	if (b->ring_ready)
		io_uring_queue_exit(&b->ring);
	free(b->slots);
}
#else
static void *blk_uring_thread(void *arg)
{
	return arg;
}

static int blk_uring_setup(struct virtio_blk *b, struct errbuf *e)
{
	return err_set(e, -ENOTSUP, "disk %s: aio=uring: this build has no io_uring (liburing "
				    "was missing when it was built; use aio=thread)", b->spec.id);
}

static void blk_uring_teardown(struct virtio_blk *b)
{
}
#endif

/* ---- transport callbacks ---- */

static void blk_config_read(void *dev, uint64_t off, uint8_t *data, unsigned len)
{
	struct virtio_blk *b = dev;
	uint8_t cfg[sizeof(struct virtio_blk_config)] = { 0 };

	le_put64(cfg + offsetof(struct virtio_blk_config, capacity), b->size / BLK_SECTOR);
	le_put32(cfg + offsetof(struct virtio_blk_config, max_discard_sectors), BLK_RANGE_SECTORS);
	le_put32(cfg + offsetof(struct virtio_blk_config, max_discard_seg), 1);
	le_put32(cfg + offsetof(struct virtio_blk_config, discard_sector_alignment), 1);
	le_put32(cfg + offsetof(struct virtio_blk_config, max_write_zeroes_sectors),
		 BLK_RANGE_SECTORS);
	le_put32(cfg + offsetof(struct virtio_blk_config, max_write_zeroes_seg), 1);
	cfg[offsetof(struct virtio_blk_config, write_zeroes_may_unmap)] = 1;
	for (unsigned i = 0; i < len; i++)
		data[i] = off + i < sizeof(cfg) ? cfg[off + i] : 0;
}

static void blk_notify(void *dev, unsigned q)
{
	(void)q;
	blk_kick(dev);
}

static void blk_quiesce(void *dev)
{
	struct virtio_blk *b = dev;

	pthread_mutex_lock(&b->lock);
	atomic_store(&b->quiesced, true);
	while (b->busy)
		pthread_cond_wait(&b->idle, &b->lock);
	pthread_mutex_unlock(&b->lock);
	/* what the guest wrote is on the disk before anyone else may look at it */
	if (atomic_exchange(&b->unflushed, false) && fdatasync(b->fd) < 0) {
		log_err("disk %s: fdatasync %s: %s", b->spec.id, b->spec.path, strerror(errno));
		atomic_store(&b->unflushed, true);
	}
}

static void blk_resume(void *dev)
{
	struct virtio_blk *b = dev;

	atomic_store(&b->quiesced, false);
	/* requests may have been queued while quiesced (or before a migration) */
	blk_kick(b);
}

static const struct virtio_mmio_dev blk_virtio = {
	.device_id = VIRTIO_ID_BLOCK,
	.nqueues = 1,
	.config_read = blk_config_read,
	.notify = blk_notify,
	.quiesce = blk_quiesce,
	.resume = blk_resume,
};

/* What a disk offers: VERSION_1, FLUSH, DISCARD, WRITE_ZEROES, and RO if readonly. */
static uint64_t blk_features(bool readonly)
{
	return 1ull << VIRTIO_F_VERSION_1 | 1ull << VIRTIO_BLK_F_FLUSH |
	       1ull << VIRTIO_BLK_F_DISCARD | 1ull << VIRTIO_BLK_F_WRITE_ZEROES |
	       (readonly ? 1ull << VIRTIO_BLK_F_RO : 0);
}

static void blk_io(void *dev, uint64_t off, uint8_t *data, unsigned len, bool is_write)
{
	struct virtio_blk *b = dev;

	virtio_mmio_access(&b->t, off, data, len, is_write);
}

/* ---- device ops ---- */

static void blk_reset(void *dev)
{
	struct virtio_blk *b = dev;

	virtio_mmio_reset(&b->t);
}

static int blk_save(void *dev, struct buf *out)
{
	struct virtio_blk *b = dev;

	virtio_mmio_state_save(&b->t, out);
	buf_put_u64(out, b->size);
	buf_put_u32(out, b->spec.readonly ? BLK_F_READONLY : 0);
	return buf_status(out);
}

/* b may be NULL: the payload is then checked on its own (inspect has no disk or guest). */
static int blk_parse(struct virtio_blk *b, uint32_t version, const void *p, size_t len,
		     struct virtio_mmio *staged, struct errbuf *e)
{
	struct buf_reader r;
	uint64_t size, offer;
	uint32_t flags;
	int ret;

	if (version != VIRTIO_BLK_STATE_VERSION)
		return err_set(e, -EINVAL, "version %u (this build reads %u)", version,
			       VIRTIO_BLK_STATE_VERSION);
	buf_reader_init(&r, p, len);
	ret = virtio_mmio_state_parse(&blk_virtio, b ? &b->t.mem : NULL, &r, staged, e);
	if (ret < 0)
		return ret;
	size = buf_get_u64(&r);
	flags = buf_get_u32(&r);
	if (!buf_reader_done(&r))
		return err_set(e, -EINVAL, "payload of %zu bytes is truncated or too long", len);
	if (flags & ~BLK_F_READONLY)
		return err_set(e, -EINVAL, "unknown flags 0x%x", flags);
	if (!size || size % BLK_SECTOR)
		return err_set(e, -EINVAL, "disk size %llu is not a non-zero multiple of 512",
			       (unsigned long long)size);
	offer = blk_features(flags & BLK_F_READONLY);
	if (staged->device_features != offer)
		return err_set(e, -EINVAL, "the saved device offered features 0x%llx, this build "
					   "offers 0x%llx", (unsigned long long)staged->device_features,
			       (unsigned long long)offer);
	if (!b)
		return 0;
	if (size != b->size)
		return err_set(e, -EINVAL, "disk %s: the guest was given %llu bytes but %s has %llu "
					   "(the disk changed size)", b->spec.id,
			       (unsigned long long)size, b->spec.path, (unsigned long long)b->size);
	if (!!(flags & BLK_F_READONLY) != b->spec.readonly)
		return err_set(e, -EINVAL, "disk %s was %s for the guest, it is %s here",
			       b->spec.id, flags & BLK_F_READONLY ? "readonly" : "writable",
			       b->spec.readonly ? "readonly" : "writable");
	return 0;
}

static int blk_validate(void *dev, uint32_t version, const void *p, size_t len, struct errbuf *e)
{
	struct virtio_mmio staged;

	return blk_parse(dev, version, p, len, &staged, e);
}

static int blk_load(void *dev, uint32_t version, const void *p, size_t len, struct errbuf *e)
{
	struct virtio_blk *b = dev;
	struct virtio_mmio staged;
	int ret = blk_parse(b, version, p, len, &staged, e);

	if (ret < 0)
		return ret;
	virtio_mmio_state_apply(&b->t, &staged);
	return 0;
}

static int blk_claim(void *dev, struct errbuf *e)
{
	struct virtio_blk *b = dev;
	struct flock fl = { .l_type = b->spec.readonly ? F_RDLCK : F_WRLCK,
			    .l_whence = SEEK_SET };

	if (b->locked)
		return 0;
	if (fcntl(b->fd, F_OFD_SETLK, &fl) < 0) {
		int err = errno;

		if (err == EAGAIN || err == EACCES)
			return err_set(e, -EBUSY, "disk %s: %s is in use by another process (it holds "
						  "the file's lock)", b->spec.id, b->spec.path);
		return err_set(e, -err, "disk %s: locking %s: %s", b->spec.id, b->spec.path,
			       strerror(err));
	}
	b->locked = true;
	return 0;
}

static int blk_flush(void *dev, struct errbuf *e)
{
	struct virtio_blk *b = dev;

	if (b->spec.readonly)
		return 0;
	if (fdatasync(b->fd) < 0)
		return err_set(e, -errno, "disk %s: fdatasync %s: %s", b->spec.id, b->spec.path,
			       strerror(errno));
	atomic_store(&b->unflushed, false);
	return 0;
}

static void blk_release(void *dev)
{
	struct virtio_blk *b = dev;
	struct flock fl = { .l_type = F_UNLCK, .l_whence = SEEK_SET };

	if (!b->spec.readonly && fdatasync(b->fd) < 0)
		log_err("disk %s: fdatasync %s: %s", b->spec.id, b->spec.path, strerror(errno));
	if (b->locked && fcntl(b->fd, F_OFD_SETLK, &fl) < 0)
		log_err("disk %s: unlocking %s: %s", b->spec.id, b->spec.path, strerror(errno));
	b->locked = false;
}

static void blk_destroy(void *dev)
{
	struct virtio_blk *b = dev;

	if (!b)
		return;
	if (b->thread_started) {
		pthread_mutex_lock(&b->lock);
		b->stop = true;
		pthread_mutex_unlock(&b->lock);
		blk_kick(b);
		pthread_join(b->thread, NULL);
	}
	if (b->fd >= 0) {
		if (!b->spec.readonly && atomic_load(&b->unflushed) && fdatasync(b->fd) < 0)
			log_err("disk %s: fdatasync %s: %s", b->spec.id, b->spec.path,
				strerror(errno));
		close(b->fd);
	}
	if (b->aio == DEV_AIO_URING)
		blk_uring_teardown(b);
	if (b->kick_fd >= 0)
		close(b->kick_fd);
	virtio_mmio_destroy(&b->t);
	pthread_cond_destroy(&b->idle);
	pthread_mutex_destroy(&b->lock);
	free(b);
}

static void blk_stats(void *dev, struct device_stats *out)
{
	struct virtio_blk *b = dev;
	clockid_t cid;
	struct timespec ts;

	out->locked = b->locked;
	out->aio = b->aio == DEV_AIO_URING ? "uring" : "thread";
	out->reads = atomic_load(&b->n.reads);
	out->writes = atomic_load(&b->n.writes);
	out->flushes = atomic_load(&b->n.flushes);
	out->others = atomic_load(&b->n.others);
	out->bytes_read = atomic_load(&b->n.bytes_read);
	out->bytes_written = atomic_load(&b->n.bytes_written);
	out->errors = atomic_load(&b->n.errors);
	out->service_ns = atomic_load(&b->n.service_ns);
	out->notifies = atomic_load(&b->n.notifies);
	if (b->thread_started && !pthread_getcpuclockid(b->thread, &cid) &&
	    !clock_gettime(cid, &ts))
		out->cpu_ns = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static const struct device_ops blk_ops = {
	.name = VIRTIO_BLK_TYPE,
	.version = VIRTIO_BLK_STATE_VERSION,
	.quiesce = blk_quiesce,
	.resume = blk_resume,
	.reset = blk_reset,
	.save = blk_save,
	.validate = blk_validate,
	.load = blk_load,
	.flush = blk_flush,
	.claim = blk_claim,
	.release = blk_release,
	.destroy = blk_destroy,
	.stats = blk_stats,
};

static int blk_open(struct virtio_blk *b, struct errbuf *e)
{
	const struct device_spec *s = &b->spec;
	struct stat st;

	b->fd = open(s->path, (s->readonly ? O_RDONLY : O_RDWR) | O_CLOEXEC);
	if (b->fd < 0)
		return err_set(e, -errno, "disk %s: open %s%s: %s", s->id, s->path,
			       s->readonly ? "" : " for writing", strerror(errno));
	if (fstat(b->fd, &st) < 0)
		return err_set(e, -errno, "disk %s: stat %s: %s", s->id, s->path, strerror(errno));
	if (!S_ISREG(st.st_mode))
		return err_set(e, -EINVAL, "disk %s: %s is not a regular file (raw disk images "
					   "only)", s->id, s->path);
	b->size = (uint64_t)st.st_size;
	if (!b->size || b->size % BLK_SECTOR)
		return err_set(e, -EINVAL, "disk %s: %s is %llu bytes, not a non-zero multiple of "
					   "512", s->id, s->path, (unsigned long long)b->size);
	if (s->size && s->size != b->size)
		return err_set(e, -EINVAL, "disk %s: the guest was given %llu bytes but %s has %llu "
					   "(the disk changed size)", s->id,
			       (unsigned long long)s->size, s->path, (unsigned long long)b->size);
	return 0;
}

static int blk_create(const struct device_spec *spec, const struct device_env *env,
		      struct device_info *out, struct errbuf *e)
{
	struct virtio_blk *b = calloc(1, sizeof(*b));
	int ret;

	if (!b)
		return err_set(e, -ENOMEM, "out of memory");
	b->fd = b->kick_fd = -1;
	b->spec = *spec;
	pthread_mutex_init(&b->lock, NULL);
	pthread_cond_init(&b->idle, NULL);
	atomic_init(&b->quiesced, true);
	atomic_init(&b->unflushed, false);
	virtio_mmio_init(&b->t, &blk_virtio, b, env, blk_features(spec->readonly));
	ret = blk_open(b, e);
	if (ret < 0)
		goto err;
	b->kick_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (b->kick_fd < 0) {
		ret = err_set(e, -errno, "disk %s: eventfd: %s", spec->id, strerror(errno));
		goto err;
	}
	b->aio = spec->aio == DEV_AIO_URING ? DEV_AIO_URING : DEV_AIO_THREAD;
	if (b->aio == DEV_AIO_URING) {
		ret = blk_uring_setup(b, e);
		if (ret < 0)
			goto err;
	}
	ret = -pthread_create(&b->thread, NULL, b->aio == DEV_AIO_URING ? blk_uring_thread :
									 blk_thread, b);
	if (ret < 0) {
		err_set(e, ret, "disk %s: starting its I/O thread: %s", spec->id, strerror(-ret));
		goto err;
	}
	b->thread_started = true;
	*out = (struct device_info){ .ops = &blk_ops, .dev = b, .io_kind = DEV_IO_MMIO,
				     .io_base = env->mmio_base, .io_len = VIRTIO_MMIO_SIZE,
				     .io_fn = blk_io, .virtio_mmio = true, .notify_fd = b->kick_fd,
				     .notify_offset = VIRTIO_MMIO_QUEUE_NOTIFY };
	snprintf(out->instance, sizeof(out->instance), "%s", spec->id);
	return 0;
err:
	blk_destroy(b);
	return ret;
}

static void blk_spec_get(void *dev, struct device_spec *out)
{
	struct virtio_blk *b = dev;

	*out = b->spec;
	out->size = b->size;
}

const struct device_type virtio_blk_type = {
	.name = VIRTIO_BLK_TYPE,
	.ops = &blk_ops,
	.mmio_len = VIRTIO_MMIO_SIZE,
	.create = blk_create,
	.spec_get = blk_spec_get,
};
