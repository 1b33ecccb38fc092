/* SPDX-License-Identifier: MIT */
/*
 * Snapshot directories: the atomic writer (temporary directory, fsync, rename), the memory
 * index (present-page bitmap and per-chunk CRC32C), and the validating reader with memory
 * verify and eager load.
 */
#include "state/snapshot.h"

#include "base/crc32c.h"
#include "state/internal.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

/* Non-zero pages are written in runs of at most this much, while they are still cached. */
#define WRITE_RUN_MAX (256u * 1024)
/* Direct writes: runs of up to 4 MiB, several in flight (see the direct writer below). */
#define DIRECT_RUN_MAX (4096u * 1024)
#define DIRECT_THREADS 2
#define DIRECT_QUEUE 16
/* How many memory problems verify prints before only counting them. */
#define VERIFY_REPORT_MAX 20u

/* ---- small helpers ---- */

/* A copy of path without trailing slashes ("/" stays "/"); NULL if empty or out of memory. */
static char *path_clean(const char *path)
{
	size_t n = strlen(path);
	char *p;

	while (n > 1 && path[n - 1] == '/')
		n--;
	if (n == 0)
		return NULL;
	p = malloc(n + 1);
	if (!p)
		return NULL;
	memcpy(p, path, n);
	p[n] = '\0';
	return p;
}

/* fsync the directory that holds path. */
static int fsync_parent(const char *path)
{
	const char *slash = strrchr(path, '/');
	char parent[4096];
	int fd, ret = 0;

	if (!slash) {
		strcpy(parent, ".");
	} else if (slash == path) {
		strcpy(parent, "/");
	} else {
		size_t n = (size_t)(slash - path);

		if (n >= sizeof(parent))
			return -ENAMETOOLONG;
		memcpy(parent, path, n);
		parent[n] = '\0';
	}
	fd = open(parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (fsync(fd) < 0)
		ret = -errno;
	close(fd);
	return ret;
}

int state_file_read_at(int dfd, const char *dir, const char *name, uint64_t max, uint8_t **out,
		       size_t *len, struct errbuf *e)
{
	struct stat st;
	uint8_t *p = NULL;
	int fd, ret;

	*out = NULL;
	*len = 0;
	fd = io_open_nonblock(dfd, name, O_RDONLY, 0, &st);
	if (fd < 0) {
		if (fd == -ENOENT)
			return -ENOENT;
		return err_set(e, fd, "open %s/%s: %s", dir, name, strerror(-fd));
	}
	if (!S_ISREG(st.st_mode)) {
		ret = err_set(e, -EINVAL, "%s/%s is not a regular file", dir, name);
		goto out;
	}
	if ((uint64_t)st.st_size > max) {
		ret = err_set(e, -EFBIG, "%s/%s is %" PRIu64 " bytes, more than the %" PRIu64
			      " allowed", dir, name, (uint64_t)st.st_size, max);
		goto out;
	}
	p = malloc(st.st_size ? (size_t)st.st_size : 1);
	if (!p) {
		ret = err_set(e, -ENOMEM, "read %s/%s: out of memory", dir, name);
		goto out;
	}
	ret = io_read_full(fd, p, (size_t)st.st_size);
	if (ret) {
		free(p);
		ret = err_set(e, ret, "read %s/%s: %s", dir, name,
			      ret == -EPIPE ? "file shrank while being read" : strerror(-ret));
		goto out;
	}
	*out = p;
	*len = (size_t)st.st_size;
out:
	close(fd);
	return ret;
}

/* ---- memory index ---- */

static uint64_t div_up(uint64_t a, uint64_t b)
{
	return a / b + (a % b != 0);
}

bool snapshot_memory_page_present(const struct snapshot_memory *m, uint64_t page)
{
	return page < m->nr_pages && (m->bitmap[page / 8] >> (page % 8)) & 1;
}

uint32_t snapshot_memory_chunk_crc(const struct snapshot_memory *m, uint64_t chunk)
{
	return chunk < m->nr_chunks ? le_get32(m->crcs + chunk * 4) : 0;
}

bool snapshot_memory_next_extent(const struct snapshot_memory *m, uint32_t idx, uint64_t from,
				 uint64_t *first, uint64_t *count)
{
	const struct snapshot_mem_region *rg;
	uint64_t pages, p;

	if (idx >= m->nr_regions)
		return false;
	rg = &m->regions[idx];
	pages = rg->size / STATE_PAGE_SIZE;
	p = from;
	while (p < pages && !snapshot_memory_page_present(m, rg->first_page + p)) {
		/* skip whole zero bytes of the bitmap at once */
		uint64_t g = rg->first_page + p;

		if (g % 8 == 0 && p + 8 <= pages && m->bitmap[g / 8] == 0)
			p += 8;
		else
			p++;
	}
	if (p >= pages)
		return false;
	*first = p;
	while (p < pages && snapshot_memory_page_present(m, rg->first_page + p))
		p++;
	*count = p - *first;
	return true;
}

/* Lays out regions in the memory file: each starts on a chunk boundary, in config order. */
static void memory_layout(const struct state_config *cfg, uint32_t chunk_size,
			  struct snapshot_mem_region *regions, uint64_t *nr_pages,
			  uint64_t *nr_chunks, uint64_t *file_size)
{
	uint64_t off = 0, pages = 0, chunks = 0;

	for (uint32_t i = 0; i < cfg->nr_regions; i++) {
		struct snapshot_mem_region *rg = &regions[i];

		rg->gpa = cfg->regions[i].gpa;
		rg->size = cfg->regions[i].size;
		rg->file_offset = off;
		rg->first_page = pages;
		rg->first_chunk = chunks;
		pages += rg->size / STATE_PAGE_SIZE;
		chunks += div_up(rg->size, chunk_size);
		off += ALIGN_UP(rg->size, (uint64_t)chunk_size);
	}
	*nr_pages = pages;
	*nr_chunks = chunks;
	*file_size = off;
}

static void memory_index_encode(struct buf *b, const struct snapshot_memory *m)
{
	buf_put_u32(b, STATE_PAGE_SIZE);
	buf_put_u32(b, m->chunk_size);
	buf_put_u64(b, m->file_size);
	buf_put_u32(b, m->nr_regions);
	for (uint32_t i = 0; i < m->nr_regions; i++) {
		buf_put_u64(b, m->regions[i].gpa);
		buf_put_u64(b, m->regions[i].size);
		buf_put_u64(b, m->regions[i].file_offset);
	}
	buf_put_u64(b, m->nr_pages);
	buf_put_u64(b, m->pages_present);
	buf_put_u64(b, m->nr_chunks);
	buf_put_bytes(b, m->bitmap, (size_t)div_up(m->nr_pages, 8));
	buf_put_bytes(b, m->crcs, (size_t)m->nr_chunks * 4);
}

/* True if any page of [first, first + n) is present. */
static bool pages_any_present(const struct snapshot_memory *m, uint64_t first, uint64_t n)
{
	for (uint64_t i = first; i < first + n; i++)
		if (snapshot_memory_page_present(m, i))
			return true;
	return false;
}

int snapshot_memory_decode(const void *p, size_t len, const struct state_config *cfg,
			   struct snapshot_memory *m, struct errbuf *e)
{
	uint64_t nr_pages = 0, nr_chunks = 0, present = 0, bitmap_len;
	uint32_t page_size;
	struct buf_reader r;

	memset(m, 0, sizeof(*m));
	buf_reader_init(&r, p, len);
	page_size = buf_get_u32(&r);
	m->chunk_size = buf_get_u32(&r);
	m->file_size = buf_get_u64(&r);
	m->nr_regions = buf_get_u32(&r);
	if (!buf_reader_ok(&r))
		return err_set(e, -EBADMSG, "memory index: truncated");
	if (page_size != STATE_PAGE_SIZE)
		return err_set(e, -EBADMSG, "memory index: page size %" PRIu32 " (expected %u)",
			       page_size, STATE_PAGE_SIZE);
	if (m->chunk_size < STATE_PAGE_SIZE || m->chunk_size > (1u << 30) ||
	    (m->chunk_size & (m->chunk_size - 1)))
		return err_set(e, -EBADMSG, "memory index: bad chunk size %" PRIu32, m->chunk_size);
	if (m->file_size & (STATE_PAGE_SIZE - 1) || m->file_size > (1ull << 60))
		return err_set(e, -EBADMSG, "memory index: bad memory file size %" PRIu64,
			       m->file_size);
	if (m->nr_regions != cfg->nr_regions)
		return err_set(e, -EBADMSG,
			       "memory index: %" PRIu32 " regions, the config has %" PRIu32,
			       m->nr_regions, cfg->nr_regions);
	for (uint32_t i = 0; i < m->nr_regions; i++) {
		struct snapshot_mem_region *rg = &m->regions[i];

		rg->gpa = buf_get_u64(&r);
		rg->size = buf_get_u64(&r);
		rg->file_offset = buf_get_u64(&r);
		if (!buf_reader_ok(&r))
			return err_set(e, -EBADMSG, "memory index: truncated");
		if (rg->gpa != cfg->regions[i].gpa || rg->size != cfg->regions[i].size)
			return err_set(e, -EBADMSG,
				       "memory index: region %" PRIu32 " (gpa 0x%" PRIx64
				       ", size 0x%" PRIx64 ") differs from the config's",
				       i, rg->gpa, rg->size);
		if (rg->file_offset & (STATE_PAGE_SIZE - 1) || rg->file_offset > m->file_size ||
		    rg->size > m->file_size - rg->file_offset)
			return err_set(e, -EBADMSG,
				       "memory index: region %" PRIu32 " at file offset 0x%" PRIx64
				       " does not fit in the memory file (0x%" PRIx64 " bytes)",
				       i, rg->file_offset, m->file_size);
		for (uint32_t j = 0; j < i; j++) {
			const struct snapshot_mem_region *o = &m->regions[j];

			if (rg->file_offset < o->file_offset + o->size &&
			    o->file_offset < rg->file_offset + rg->size)
				return err_set(e, -EBADMSG,
					       "memory index: regions %" PRIu32 " and %" PRIu32
					       " overlap in the memory file",
					       j, i);
		}
		rg->first_page = nr_pages;
		rg->first_chunk = nr_chunks;
		nr_pages += rg->size / STATE_PAGE_SIZE;
		nr_chunks += div_up(rg->size, m->chunk_size);
	}
	m->nr_pages = buf_get_u64(&r);
	m->pages_present = buf_get_u64(&r);
	m->nr_chunks = buf_get_u64(&r);
	if (!buf_reader_ok(&r))
		return err_set(e, -EBADMSG, "memory index: truncated");
	if (m->nr_pages != nr_pages || m->nr_chunks != nr_chunks)
		return err_set(e, -EBADMSG,
			       "memory index: %" PRIu64 " pages in %" PRIu64
			       " chunks, the regions make %" PRIu64 " in %" PRIu64,
			       m->nr_pages, m->nr_chunks, nr_pages, nr_chunks);
	bitmap_len = div_up(nr_pages, 8);
	if (buf_reader_left(&r) != bitmap_len + nr_chunks * 4)
		return err_set(e, -EBADMSG,
			       "memory index: %zu bytes of bitmap and CRCs, expected %" PRIu64,
			       buf_reader_left(&r), bitmap_len + nr_chunks * 4);
	m->bitmap = (const uint8_t *)p + r.pos;
	m->crcs = m->bitmap + bitmap_len;
	if (nr_pages % 8 && m->bitmap[bitmap_len - 1] >> (nr_pages % 8))
		return err_set(e, -EBADMSG, "memory index: bits set past the last page");
	for (uint64_t i = 0; i + 8 <= bitmap_len; i += 8)
		present += (uint64_t)__builtin_popcountll(le_get64(m->bitmap + i));
	for (uint64_t i = bitmap_len & ~7ull; i < bitmap_len; i++)
		present += (uint64_t)__builtin_popcount(m->bitmap[i]);
	if (present != m->pages_present)
		return err_set(e, -EBADMSG,
			       "memory index: counts %" PRIu64 " present pages, the bitmap %" PRIu64,
			       m->pages_present, present);
	for (uint32_t i = 0; i < m->nr_regions; i++) {
		const struct snapshot_mem_region *rg = &m->regions[i];
		uint64_t per = m->chunk_size / STATE_PAGE_SIZE, pages = rg->size / STATE_PAGE_SIZE;

		for (uint64_t c = 0; c * per < pages; c++) {
			uint64_t n = MIN(per, pages - c * per);

			if (snapshot_memory_chunk_crc(m, rg->first_chunk + c) &&
			    !pages_any_present(m, rg->first_page + c * per, n))
				return err_set(e, -EBADMSG,
					       "memory index: chunk %" PRIu64
					       " has a CRC but no pages",
					       rg->first_chunk + c);
		}
	}
	return 0;
}

/* ---- writer ---- */

/*
 * The direct writer: memory runs written with O_DIRECT by DIRECT_THREADS threads, from a
 * queue of (address, length, offset), while the caller goes on finding the next runs
 * (zero checks and CRCs cost about as much CPU as the writes cost disk). With one direct
 * write at a time the disk idles between writes and the CPU between scans; measured here,
 * see docs/benchmarks.md. The runs point into guest memory, which must not change until
 * direct_drain() has returned: the caller keeps the guest paused until then.
 */
struct direct_job {
	const uint8_t *p;
	uint64_t len, off;
};

struct direct_writer {
	pthread_t thr[DIRECT_THREADS];
	unsigned nthr;
	pthread_mutex_t lock;
	pthread_cond_t cond;        /* a job was queued, taken or finished; or stop */
	struct direct_job q[DIRECT_QUEUE];
	unsigned head, count, busy;
	bool stop;
	int fd, buffered_fd;        /* O_DIRECT fd; the page-cache fd for EINVAL */
	int err;                    /* the first failure */
	uint64_t err_off;
	atomic_bool refused;        /* the filesystem refused a direct write: go buffered */
};

static void *direct_main(void *arg)
{
	struct direct_writer *d = arg;

	pthread_mutex_lock(&d->lock);
	for (;;) {
		struct direct_job j;
		int ret;

		while (!d->count && !d->stop)
			pthread_cond_wait(&d->cond, &d->lock);
		if (!d->count)
			break;
		j = d->q[d->head];
		d->head = (d->head + 1) % DIRECT_QUEUE;
		d->count--;
		d->busy++;
		pthread_cond_broadcast(&d->cond);
		pthread_mutex_unlock(&d->lock);
		ret = atomic_load(&d->refused) ? -EINVAL :
		      io_pwrite_full(d->fd, j.p, (size_t)j.len, (off_t)j.off);
		if (ret == -EINVAL) {
			atomic_store(&d->refused, true);
			ret = io_pwrite_full(d->buffered_fd, j.p, (size_t)j.len, (off_t)j.off);
		}
		pthread_mutex_lock(&d->lock);
		d->busy--;
		if (ret && !d->err) {
			d->err = ret;
			d->err_off = j.off;
		}
		pthread_cond_broadcast(&d->cond);
	}
	pthread_mutex_unlock(&d->lock);
	return NULL;
}

/* Starts the threads; on failure the caller writes synchronously. */
static struct direct_writer *direct_start(int fd, int buffered_fd)
{
	struct direct_writer *d = calloc(1, sizeof(*d));

	if (!d)
		return NULL;
	d->fd = fd;
	d->buffered_fd = buffered_fd;
	if (pthread_mutex_init(&d->lock, NULL)) {
		free(d);
		return NULL;
	}
	if (pthread_cond_init(&d->cond, NULL)) {
		pthread_mutex_destroy(&d->lock);
		free(d);
		return NULL;
	}
	for (; d->nthr < DIRECT_THREADS; d->nthr++)
		if (pthread_create(&d->thr[d->nthr], NULL, direct_main, d))
			break;
	return d;
}

/*
 * Queues a run, waiting while the queue is full (adding the wait to *wait_ns: the disk, not
 * the scan, was the bound then); returns an earlier run's failure.
 */
static int direct_queue(struct direct_writer *d, const uint8_t *p, uint64_t len, uint64_t off,
			uint64_t *err_off, uint64_t *wait_ns)
{
	int ret;

	pthread_mutex_lock(&d->lock);
	if (d->count == DIRECT_QUEUE && !d->err) {
		uint64_t t = time_mono_ns();

		while (d->count == DIRECT_QUEUE && !d->err)
			pthread_cond_wait(&d->cond, &d->lock);
		*wait_ns += time_mono_ns() - t;
	}
	ret = d->err;
	*err_off = d->err_off;
	if (!ret) {
		d->q[(d->head + d->count) % DIRECT_QUEUE] = (struct direct_job){ p, len, off };
		d->count++;
		pthread_cond_broadcast(&d->cond);
	}
	pthread_mutex_unlock(&d->lock);
	return ret;
}

/* Waits until every queued run is written; returns the first failure. */
static int direct_drain(struct direct_writer *d, uint64_t *err_off)
{
	int ret;

	pthread_mutex_lock(&d->lock);
	while ((d->count || d->busy) && !d->err)
		pthread_cond_wait(&d->cond, &d->lock);
	/* after a failure the rest still reads guest memory: let it finish first */
	while (d->busy)
		pthread_cond_wait(&d->cond, &d->lock);
	d->count = 0;
	ret = d->err;
	*err_off = d->err_off;
	pthread_mutex_unlock(&d->lock);
	return ret;
}

static void direct_stop(struct direct_writer *d)
{
	uint64_t off;

	if (!d)
		return;
	(void)direct_drain(d, &off);
	pthread_mutex_lock(&d->lock);
	d->stop = true;
	pthread_cond_broadcast(&d->cond);
	pthread_mutex_unlock(&d->lock);
	for (unsigned i = 0; i < d->nthr; i++)
		pthread_join(d->thr[i], NULL);
	pthread_cond_destroy(&d->cond);
	pthread_mutex_destroy(&d->lock);
	free(d);
}

struct section_key {
	char name[STATE_NAME_MAX + 1];
	char instance[STATE_NAME_MAX + 1];
};

struct snapshot_writer {
	char *dir;
	char *tmp;
	int dfd;
	int state_fd;
	int mem_fd;
	int mem_direct_fd; /* the memory file opened O_DIRECT, or -1: see writer_put_run() */
	struct direct_writer *direct; /* its writer threads, or NULL: synchronous writes */
	struct state_writer *sw;
	bool have_config;
	bool failed;
	struct state_config cfg;
	struct snapshot_memory mem;
	uint8_t *bitmap;
	uint32_t *chunk_crc;
	uint32_t *chunk_next; /* per chunk: the lowest page within it that may still be given */
	struct section_key *keys;
	size_t nr_keys;
	struct snapshot_stats stats;
};

static void writer_remove_tmp(struct snapshot_writer *w)
{
	if (w->dfd >= 0) {
		unlinkat(w->dfd, SNAPSHOT_STATE_FILE, 0);
		unlinkat(w->dfd, SNAPSHOT_MEMORY_FILE, 0);
	}
	if (w->tmp)
		rmdir(w->tmp);
}

static void writer_free(struct snapshot_writer *w)
{
	direct_stop(w->direct);
	state_writer_free(w->sw);
	if (w->state_fd >= 0)
		close(w->state_fd);
	if (w->mem_fd >= 0)
		close(w->mem_fd);
	if (w->mem_direct_fd >= 0)
		close(w->mem_direct_fd);
	if (w->dfd >= 0)
		close(w->dfd);
	free(w->bitmap);
	free(w->chunk_crc);
	free(w->chunk_next);
	free(w->keys);
	free(w->dir);
	free(w->tmp);
	free(w);
}

void snapshot_writer_abort(struct snapshot_writer *w)
{
	if (!w)
		return;
	writer_remove_tmp(w);
	writer_free(w);
}

int snapshot_writer_begin(const char *dir, struct snapshot_writer **wp, struct errbuf *e)
{
	struct snapshot_writer *w;
	struct stat st;
	int ret;

	*wp = NULL;
	w = calloc(1, sizeof(*w));
	if (!w)
		return err_set(e, -ENOMEM, "snapshot %s: out of memory", dir);
	w->dfd = w->state_fd = w->mem_fd = w->mem_direct_fd = -1;
	w->dir = path_clean(dir);
	if (!w->dir) {
		ret = err_set(e, -EINVAL, "snapshot: empty directory name");
		goto fail;
	}
	if (lstat(w->dir, &st) == 0) {
		ret = err_set(e, -EEXIST, "snapshot %s: already exists", w->dir);
		goto fail;
	}
	if (errno != ENOENT) {
		ret = err_set(e, -errno, "snapshot %s: %s", w->dir, strerror(errno));
		goto fail;
	}
	if (asprintf(&w->tmp, "%s.tmp-XXXXXX", w->dir) < 0) {
		w->tmp = NULL;
		ret = err_set(e, -ENOMEM, "snapshot %s: out of memory", w->dir);
		goto fail;
	}
	if (!mkdtemp(w->tmp)) {
		ret = err_set(e, -errno, "snapshot %s: create temporary directory: %s", w->dir,
			      strerror(errno));
		free(w->tmp);
		w->tmp = NULL;
		goto fail;
	}
	w->dfd = open(w->tmp, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (w->dfd < 0) {
		ret = err_set(e, -errno, "snapshot: open %s: %s", w->tmp, strerror(errno));
		goto fail;
	}
	w->state_fd = openat(w->dfd, SNAPSHOT_STATE_FILE, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC,
			     0600);
	if (w->state_fd < 0) {
		ret = err_set(e, -errno, "snapshot: create %s/state: %s", w->tmp, strerror(errno));
		goto fail;
	}
	w->mem_fd = openat(w->dfd, SNAPSHOT_MEMORY_FILE, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC,
			   0600);
	if (w->mem_fd < 0) {
		ret = err_set(e, -errno, "snapshot: create %s/memory: %s", w->tmp, strerror(errno));
		goto fail;
	}
	/* where the filesystem has no O_DIRECT (tmpfs), -1: memory goes through the page cache */
	w->mem_direct_fd = openat(w->dfd, SNAPSHOT_MEMORY_FILE, O_WRONLY | O_DIRECT | O_CLOEXEC);
	if (w->mem_direct_fd >= 0)
		w->direct = direct_start(w->mem_direct_fd, w->mem_fd);
	ret = state_writer_open(&w->sw, w->state_fd, STATE_KIND_SNAPSHOT, e);
	if (ret)
		goto fail;
	*wp = w;
	return 0;
fail:
	snapshot_writer_abort(w);
	return ret;
}

static int writer_usable(struct snapshot_writer *w, bool need_config, struct errbuf *e)
{
	if (w->failed)
		return err_set(e, -EIO, "snapshot %s: writer failed earlier", w->dir);
	if (need_config && !w->have_config)
		return err_set(e, -EPROTO, "snapshot %s: the config must come first", w->dir);
	return 0;
}

int snapshot_writer_config(struct snapshot_writer *w, const struct state_config *cfg,
			   struct errbuf *e)
{
	struct snapshot_memory *m = &w->mem;
	int ret = writer_usable(w, false, e);

	if (ret)
		return ret;
	if (w->have_config)
		return err_set(e, -EPROTO, "snapshot %s: config given twice", w->dir);
	ret = state_writer_config(w->sw, cfg, e);
	if (ret) {
		w->failed = ret != -EINVAL;
		return err_prefix(e, ret, "snapshot %s", w->dir);
	}
	w->cfg = *cfg;
	m->chunk_size = SNAPSHOT_CHUNK_SIZE;
	m->nr_regions = cfg->nr_regions;
	memory_layout(cfg, m->chunk_size, m->regions, &m->nr_pages, &m->nr_chunks,
		      &m->file_size);
	w->bitmap = calloc(div_up(m->nr_pages, 8) + 1, 1);
	w->chunk_crc = calloc(m->nr_chunks, sizeof(*w->chunk_crc));
	w->chunk_next = calloc(m->nr_chunks, sizeof(*w->chunk_next));
	w->failed = true;
	if (!w->bitmap || !w->chunk_crc || !w->chunk_next)
		return err_set(e, -ENOMEM, "snapshot %s: out of memory for the memory index",
			       w->dir);
	if (ftruncate(w->mem_fd, (off_t)m->file_size) < 0)
		return err_set(e, -errno, "snapshot %s: size memory file to %" PRIu64 ": %s",
			       w->dir, m->file_size, strerror(errno));
	w->stats.pages_total = m->nr_pages;
	w->have_config = true;
	w->failed = false;
	return 0;
}

int snapshot_writer_section(struct snapshot_writer *w, const char *name, const char *instance,
			    uint32_t version, const void *data, size_t len, struct errbuf *e)
{
	struct section_key *k;
	int ret = writer_usable(w, true, e);

	if (ret)
		return ret;
	if (strcmp(name, SNAPSHOT_MEMORY_SECTION) == 0)
		return err_set(e, -EINVAL, "snapshot %s: section name \"%s\" is reserved", w->dir,
			       name);
	ret = state_name_check("section name", name, e);
	if (!ret)
		ret = state_name_check("section instance", instance, e);
	if (ret)
		return err_prefix(e, ret, "snapshot %s", w->dir);
	for (size_t i = 0; i < w->nr_keys; i++)
		if (!strcmp(w->keys[i].name, name) && !strcmp(w->keys[i].instance, instance))
			return err_set(e, -EEXIST, "snapshot %s: section %s@%s given twice", w->dir,
				       name, instance);
	if (w->nr_keys >= SNAPSHOT_MAX_SECTIONS)
		return err_set(e, -E2BIG, "snapshot %s: more than %u sections", w->dir,
			       SNAPSHOT_MAX_SECTIONS);
	if (!(w->nr_keys & (w->nr_keys + 1))) {
		k = realloc(w->keys, (w->nr_keys * 2 + 1) * sizeof(*k));
		if (!k)
			return err_set(e, -ENOMEM, "snapshot %s: out of memory", w->dir);
		w->keys = k;
	}
	ret = state_writer_section(w->sw, name, instance, version, data, len, e);
	if (ret) {
		w->failed = ret != -EFBIG && ret != -EINVAL;
		return err_prefix(e, ret, "snapshot %s", w->dir);
	}
	k = &w->keys[w->nr_keys++];
	strcpy(k->name, name);
	strcpy(k->instance, instance);
	return 0;
}

static int writer_put_run(struct snapshot_writer *w, const uint8_t *p, uint64_t len, uint64_t off,
			  struct errbuf *e)
{
	int ret;

	if (!len)
		return 0;
	/*
	 * Guest memory goes to the file with O_DIRECT, straight from the guest's pages (runs
	 * are whole pages at page-aligned offsets, and guest RAM is page-aligned): a buffered
	 * write first fills the page cache, which on this host costs as much as populating
	 * fresh memory, and fsync then writes it all again. A filesystem that refuses a
	 * direct write (EINVAL) gets this and every later run buffered.
	 */
	if (w->direct && w->direct->nthr && !atomic_load(&w->direct->refused)) {
		uint64_t err_off;

		ret = direct_queue(w->direct, p, len, off, &err_off, &w->stats.write_wait_ns);
		if (ret)
			off = err_off;
		goto done;
	}
	if (w->mem_direct_fd >= 0) {
		ret = io_pwrite_full(w->mem_direct_fd, p, (size_t)len, (off_t)off);
		if (ret != -EINVAL)
			goto done;
		close(w->mem_direct_fd);
		w->mem_direct_fd = -1;
	}
	ret = io_pwrite_full(w->mem_fd, p, (size_t)len, (off_t)off);
done:
	if (ret) {
		w->failed = true;
		return err_set(e, ret, "snapshot %s: write memory file at offset 0x%" PRIx64 ": %s",
			       w->dir, off, strerror(-ret));
	}
	return 0;
}

int snapshot_writer_memory(struct snapshot_writer *w, uint64_t gpa, const void *host,
			   uint64_t len, struct errbuf *e)
{
	const struct snapshot_mem_region *rg;
	const uint8_t *p = host;
	uint64_t run_start = 0, run_len = 0, base;
	int idx, ret = writer_usable(w, true, e);

	if (ret)
		return ret;
	if (len == 0 || (gpa | len) & (STATE_PAGE_SIZE - 1))
		return err_set(e, -EINVAL,
			       "snapshot %s: memory at gpa 0x%" PRIx64 " length 0x%" PRIx64
			       " is empty or not page-aligned",
			       w->dir, gpa, len);
	idx = state_config_region_find(&w->cfg, gpa, len);
	if (idx < 0)
		return err_set(e, -EINVAL,
			       "snapshot %s: memory at gpa 0x%" PRIx64 " length 0x%" PRIx64
			       " is not inside one memory region",
			       w->dir, gpa, len);
	rg = &w->mem.regions[idx];
	base = gpa - rg->gpa;
	for (uint64_t i = 0; i < len; i += STATE_PAGE_SIZE) {
		uint64_t roff = base + i;
		uint64_t page = rg->first_page + roff / STATE_PAGE_SIZE;
		uint64_t chunk = rg->first_chunk + roff / w->mem.chunk_size;
		uint32_t in_chunk = (uint32_t)(roff % w->mem.chunk_size / STATE_PAGE_SIZE);

		if (in_chunk < w->chunk_next[chunk]) {
			w->failed = true;
			return err_set(e, -EINVAL,
				       "snapshot %s: memory page at gpa 0x%" PRIx64
				       " given twice or out of order",
				       w->dir, gpa + i);
		}
		w->chunk_next[chunk] = in_chunk + 1;
		if (page_is_zero(p + i)) {
			w->stats.pages_zero++;
			ret = writer_put_run(w, p + run_start, run_len, rg->file_offset + base + run_start, e);
			if (ret)
				return ret;
			run_len = 0;
			continue;
		}
		w->chunk_crc[chunk] = crc32c(w->chunk_crc[chunk], p + i, STATE_PAGE_SIZE);
		w->bitmap[page / 8] |= (uint8_t)(1u << (page % 8));
		w->stats.pages_present++;
		if (run_len == 0)
			run_start = i;
		run_len += STATE_PAGE_SIZE;
		if (run_len >= (w->direct ? DIRECT_RUN_MAX : WRITE_RUN_MAX)) {
			ret = writer_put_run(w, p + run_start, run_len, rg->file_offset + base + run_start, e);
			if (ret)
				return ret;
			run_len = 0;
		}
	}
	return writer_put_run(w, p + run_start, run_len, rg->file_offset + base + run_start, e);
}

int snapshot_writer_memory_done(struct snapshot_writer *w, struct errbuf *e)
{
	uint64_t off, t = time_mono_ns();
	int ret;

	if (!w->direct)
		return 0;
	ret = direct_drain(w->direct, &off);
	w->stats.write_wait_ns += time_mono_ns() - t;
	if (ret) {
		w->failed = true;
		return err_set(e, ret, "snapshot %s: write memory file at offset 0x%" PRIx64 ": %s",
			       w->dir, off, strerror(-ret));
	}
	return 0;
}

void snapshot_writer_stats(const struct snapshot_writer *w, struct snapshot_stats *st)
{
	*st = w->stats;
	st->state_bytes = w->sw ? state_writer_bytes(w->sw) : 0;
}

static int writer_finish(struct snapshot_writer *w, struct errbuf *e)
{
	struct snapshot_memory *m = &w->mem;
	struct buf crcs, idx;
	int ret = snapshot_writer_memory_done(w, e);

	if (ret)
		return ret;
	buf_init(&crcs);
	buf_init(&idx);
	for (uint64_t i = 0; i < m->nr_chunks; i++)
		buf_put_u32(&crcs, w->chunk_crc[i]);
	m->bitmap = w->bitmap;
	m->crcs = crcs.data;
	m->pages_present = w->stats.pages_present;
	if (!buf_status(&crcs))
		memory_index_encode(&idx, m);
	if (buf_status(&crcs) || buf_status(&idx))
		ret = err_set(e, -ENOMEM, "out of memory for the memory index");
	else
		ret = state_writer_section(w->sw, SNAPSHOT_MEMORY_SECTION,
					   SNAPSHOT_MEMORY_INSTANCE, SNAPSHOT_MEMORY_VERSION,
					   idx.data, idx.len, e);
	m->crcs = NULL;
	buf_free(&crcs);
	buf_free(&idx);
	if (ret)
		return ret;
	ret = state_writer_end(w->sw, e);
	if (ret)
		return ret;
	if (fsync(w->state_fd) < 0)
		return err_set(e, -errno, "fsync state: %s", strerror(errno));
	if (fsync(w->mem_fd) < 0)
		return err_set(e, -errno, "fsync memory: %s", strerror(errno));
	if (fsync(w->dfd) < 0)
		return err_set(e, -errno, "fsync %s: %s", w->tmp, strerror(errno));
	return 0;
}

/*
 * rename() that never replaces an existing target. Filesystems without RENAME_NOREPLACE get
 * a check first; the window left open there is only against a concurrent creator.
 */
static int rename_noreplace(const char *from, const char *to)
{
	struct stat st;

	if (renameat2(AT_FDCWD, from, AT_FDCWD, to, RENAME_NOREPLACE) == 0)
		return 0;
	if (errno != EINVAL && errno != ENOSYS)
		return -1;
	if (lstat(to, &st) == 0) {
		errno = EEXIST;
		return -1;
	}
	return rename(from, to);
}

int snapshot_writer_commit(struct snapshot_writer *w, struct errbuf *e)
{
	int ret = writer_usable(w, true, e);

	if (ret)
		goto fail;
	ret = writer_finish(w, e);
	if (ret) {
		err_prefix(e, ret, "snapshot %s", w->dir);
		goto fail;
	}
	if (rename_noreplace(w->tmp, w->dir) < 0) {
		ret = -errno;
		if (errno == EEXIST)
			err_set(e, ret, "snapshot %s: already exists", w->dir);
		else
			err_set(e, ret, "snapshot %s: rename %s into place: %s", w->dir, w->tmp,
				strerror(errno));
		goto fail;
	}
	ret = fsync_parent(w->dir);
	if (ret) {
		/* the rename may not be durable: do not leave something that may vanish */
		err_set(e, ret, "snapshot %s: fsync of its parent directory: %s", w->dir,
			strerror(-ret));
		if (rename_noreplace(w->dir, w->tmp) < 0)
			w->tmp[0] = '\0';
		goto fail;
	}
	free(w->tmp);
	w->tmp = NULL;
	if (w->dfd >= 0) {
		close(w->dfd);
		w->dfd = -1;
	}
	writer_free(w);
	return 0;
fail:
	snapshot_writer_abort(w);
	return ret;
}

/* ---- reader ---- */

struct snapshot_reader {
	char *dir;
	uint8_t *state;
	size_t state_len;
	struct state_header hdr;
	struct state_config cfg;
	struct state_section *sections;
	size_t nr_sections;
	struct snapshot_memory mem;
	int mem_fd;
	struct snapshot_load_stats load;
};

/* Walks a whole state file image; every problem is fatal. */
static int reader_parse(struct snapshot_reader *r, struct errbuf *e)
{
	struct state_reader_opts opts = { .kind = STATE_KIND_SNAPSHOT };
	struct state_reader *sr;
	struct state_record rec;
	bool have_mem = false, have_config = false;
	size_t cap = 0;
	int ret;

	ret = state_reader_open_mem(&sr, r->state, r->state_len, &opts, e);
	if (ret)
		return ret;
	r->hdr = *state_reader_header(sr);
	while (!state_reader_ended(sr)) {
		struct state_section s;

		ret = state_reader_next(sr, &rec, e);
		if (ret)
			goto out;
		if (rec.type == STATE_REC_CONFIG) {
			ret = state_config_decode(rec.payload, (size_t)rec.len, &r->cfg, e);
			if (ret)
				goto bad_record;
			have_config = true;
			continue;
		}
		if (rec.type != STATE_REC_SECTION)
			continue;
		ret = state_section_decode(rec.payload, (size_t)rec.len, &s, e);
		if (ret)
			goto bad_record;
		if (!strcmp(s.name, SNAPSHOT_MEMORY_SECTION)) {
			if (have_mem || strcmp(s.instance, SNAPSHOT_MEMORY_INSTANCE)) {
				ret = err_set(e, -EBADMSG, "section %s@%s: unexpected", s.name,
					      s.instance);
				goto bad_record;
			}
			if (s.version != SNAPSHOT_MEMORY_VERSION) {
				ret = err_set(e, -ENOTSUP,
					      "memory index version %" PRIu32
					      " is not supported (reads %u)",
					      s.version, SNAPSHOT_MEMORY_VERSION);
				goto bad_record;
			}
			ret = snapshot_memory_decode(s.data, s.len, &r->cfg, &r->mem, e);
			if (ret)
				goto bad_record;
			have_mem = true;
			continue;
		}
		for (size_t i = 0; i < r->nr_sections; i++) {
			if (!strcmp(r->sections[i].name, s.name) &&
			    !strcmp(r->sections[i].instance, s.instance)) {
				ret = err_set(e, -EBADMSG, "section %s@%s appears twice", s.name,
					      s.instance);
				goto bad_record;
			}
		}
		if (r->nr_sections >= SNAPSHOT_MAX_SECTIONS) {
			ret = err_set(e, -E2BIG, "more than %u sections", SNAPSHOT_MAX_SECTIONS);
			goto bad_record;
		}
		if (r->nr_sections == cap) {
			struct state_section *n;

			cap = cap ? cap * 2 : 16;
			n = realloc(r->sections, cap * sizeof(*n));
			if (!n) {
				ret = err_set(e, -ENOMEM, "out of memory");
				goto out;
			}
			r->sections = n;
		}
		r->sections[r->nr_sections++] = s;
	}
	ret = state_reader_expect_eof(sr, e);
	if (ret)
		goto out;
	if (!have_config) /* the reader refuses everything before CONFIG; an empty stream */
		ret = err_set(e, -EBADMSG, "no CONFIG record");
	else if (!have_mem)
		ret = err_set(e, -EBADMSG, "no memory index section (%s@%s)",
			      SNAPSHOT_MEMORY_SECTION, SNAPSHOT_MEMORY_INSTANCE);
	goto out;
bad_record:
	err_prefix(e, ret, "record %" PRIu64 " (%s) at offset %" PRIu64, rec.index,
		   state_record_type_name(rec.type), rec.offset);
out:
	state_reader_free(sr);
	return ret;
}

void snapshot_close(struct snapshot_reader *r)
{
	if (!r)
		return;
	if (r->mem_fd >= 0)
		close(r->mem_fd);
	free(r->sections);
	free(r->state);
	free(r->dir);
	free(r);
}

int snapshot_state_check(const void *p, size_t len, struct errbuf *e)
{
	struct snapshot_reader *r = calloc(1, sizeof(*r));
	int ret;

	if (!r)
		return err_set(e, -ENOMEM, "out of memory");
	r->mem_fd = -1;
	r->state = (uint8_t *)p; /* only read; detached again before the close */
	r->state_len = len;
	ret = reader_parse(r, e);
	r->state = NULL;
	snapshot_close(r);
	return ret;
}

int snapshot_memory_check_size(int fd, const struct snapshot_memory *m, struct errbuf *e)
{
	struct stat st;

	if (fstat(fd, &st) < 0)
		return err_set(e, -errno, "memory file: stat: %s", strerror(errno));
	if (!S_ISREG(st.st_mode))
		return err_set(e, -EINVAL, "memory file is not a regular file");
	if ((uint64_t)st.st_size != m->file_size)
		return err_set(e, -EBADMSG,
			       "memory file is %" PRIu64 " bytes, the index says %" PRIu64
			       " (truncated or altered)",
			       (uint64_t)st.st_size, m->file_size);
	return 0;
}

int snapshot_open(const char *dir, struct snapshot_reader **rp, struct errbuf *e)
{
	struct snapshot_reader *r;
	struct stat st;
	int dfd = -1, ret;

	*rp = NULL;
	r = calloc(1, sizeof(*r));
	if (!r)
		return err_set(e, -ENOMEM, "snapshot %s: out of memory", dir);
	r->mem_fd = -1;
	r->dir = path_clean(dir);
	if (!r->dir) {
		ret = err_set(e, -EINVAL, "snapshot: empty directory name");
		goto fail;
	}
	dfd = open(r->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0) {
		ret = -errno;
		if (errno == ENOTDIR)
			err_set(e, ret, "%s is not a godwit snapshot (not a directory)", r->dir);
		else
			err_set(e, ret, "snapshot %s: %s", r->dir, strerror(errno));
		goto fail;
	}
	ret = state_file_read_at(dfd, r->dir, SNAPSHOT_STATE_FILE, SNAPSHOT_STATE_MAX, &r->state,
				 &r->state_len, e);
	if (ret == -ENOENT)
		err_set(e, ret, "%s is not a godwit snapshot (no state file)", r->dir);
	if (ret)
		goto fail;
	ret = reader_parse(r, e);
	if (ret) {
		err_prefix(e, ret, "snapshot %s: state", r->dir);
		goto fail;
	}
	r->mem_fd = io_open_nonblock(dfd, SNAPSHOT_MEMORY_FILE, O_RDONLY, 0, &st);
	if (r->mem_fd < 0) {
		ret = r->mem_fd;
		if (ret == -ENOENT)
			err_set(e, ret, "snapshot %s: no memory file", r->dir);
		else
			err_set(e, ret, "snapshot %s: open memory: %s", r->dir, strerror(-ret));
		goto fail;
	}
	if (!S_ISREG(st.st_mode)) {
		ret = err_set(e, -EINVAL, "snapshot %s: memory is not a regular file", r->dir);
		goto fail;
	}
	ret = snapshot_memory_check_size(r->mem_fd, &r->mem, e);
	if (ret) {
		err_prefix(e, ret, "snapshot %s", r->dir);
		goto fail;
	}
	close(dfd);
	*rp = r;
	return 0;
fail:
	if (dfd >= 0)
		close(dfd);
	snapshot_close(r);
	return ret;
}

const struct state_header *snapshot_header(const struct snapshot_reader *r)
{
	return &r->hdr;
}

const struct state_config *snapshot_config(const struct snapshot_reader *r)
{
	return &r->cfg;
}

size_t snapshot_section_count(const struct snapshot_reader *r)
{
	return r->nr_sections;
}

const struct state_section *snapshot_section(const struct snapshot_reader *r, size_t i)
{
	return i < r->nr_sections ? &r->sections[i] : NULL;
}

const struct state_section *snapshot_section_find(const struct snapshot_reader *r,
						  const char *name, const char *instance)
{
	for (size_t i = 0; i < r->nr_sections; i++)
		if (!strcmp(r->sections[i].name, name) && !strcmp(r->sections[i].instance, instance))
			return &r->sections[i];
	return NULL;
}

const struct snapshot_memory *snapshot_memory(const struct snapshot_reader *r)
{
	return &r->mem;
}

int snapshot_memory_fd(const struct snapshot_reader *r)
{
	return r->mem_fd;
}

/*
 * Eager load. LOAD_THREADS threads take a region's chunks in turn and read each chunk's
 * present pages straight into guest memory, checking the chunk's CRC.
 *
 * Where from: a chunk whose present pages are all in the page cache (mincore() on a
 * read-only mapping of the file, which faults nothing in) is copied from the cache with
 * plain reads; any other chunk is read with O_DIRECT, around the cache: a snapshot written
 * with O_DIRECT is not in the cache when it is restored, and filling the cache on the way
 * costs here about as much as filling guest memory (docs/benchmarks.md). So a restore reads
 * the disk only for what the cache lacks and leaves the cache as it found it. A filesystem
 * or a buffer that refuses O_DIRECT (EINVAL) gets that read and every later one through the
 * page cache.
 *
 * A direct read covers a span of present pages; a gap of at most LOAD_GAP_PAGES absent pages
 * inside it is read into a scratch buffer, never into guest memory, so a page the index
 * calls zero stays zero whatever the file holds there, and a fragmented chunk is still a few
 * large reads. Reads from the cache skip gaps (copies are cheap, disk reads of gaps not).
 *
 * Into what: populating fresh guest memory, not reading, is most of the cost (about
 * 0.5-1 s/GiB with 4 KiB pages here, 0.1-0.2 s with transparent huge pages). Where the
 * system leaves huge pages to madvise() and the region's non-empty chunks are at least half
 * full, the region is marked MADV_HUGEPAGE while it loads and each chunk is populated before
 * its read. But a huge page the host has taken back (this machine's balloon reports free
 * 2 MiB blocks to its hypervisor) took 13-250 ms to populate against about 1 ms for 512
 * small pages, and once the free blocks the host still backs are used up the rest are such,
 * so after one chunk slower than LOAD_HUGE_SLOW_NS per 2 MiB the rest of the load goes back
 * to small pages. Either way the region ends with MADV_NOHUGEPAGE (under "madvise" the
 * same as the default), so the guest's own later faults stay small pages as
 * src/vmm/memory.h chose; the huge pages already in place stay.
 */
#define LOAD_THREADS 4
#define LOAD_GAP_PAGES 16u
#define LOAD_GAP_BYTES (LOAD_GAP_PAGES * STATE_PAGE_SIZE)
#define LOAD_IOV_MAX 128
#define LOAD_READ_MAX (4u * 1024 * 1024)
#define LOAD_HUGE_SIZE (2u * 1024 * 1024)
#define LOAD_HUGE_SLOW_NS 3000000ull
#define LOAD_MINCORE_PAGES 512u

/* Where chunk_read() reads from: the O_DIRECT fd (or -1) with its page-cache twin. */
struct chunk_src {
	int direct_fd, fd;
	atomic_bool *refused; /* set once O_DIRECT was refused: buffered from then on */
	uint8_t *gap;         /* LOAD_GAP_BYTES, page-aligned: where gaps are read to */
	bool cached;          /* this chunk's present pages are in the page cache */
};

static int chunk_preadv(const struct chunk_src *s, const struct iovec *iov, int n, uint64_t off)
{
	struct iovec cur[LOAD_IOV_MAX];
	int ret;

	if (!s->cached && s->direct_fd >= 0 && !atomic_load(s->refused)) {
		memcpy(cur, iov, (size_t)n * sizeof(*iov));
		ret = io_preadv_full(s->direct_fd, cur, n, (off_t)off);
		if (ret != -EINVAL)
			return ret;
		atomic_store(s->refused, true);
	}
	memcpy(cur, iov, (size_t)n * sizeof(*iov));
	return io_preadv_full(s->fd, cur, n, (off_t)off);
}

static bool region_page_present(const struct snapshot_memory *m,
				const struct snapshot_mem_region *rg, uint64_t off)
{
	return snapshot_memory_page_present(m, rg->first_page + off / STATE_PAGE_SIZE);
}

/*
 * Reads the present pages of chunk ci of region rg to dst (which stands for the chunk's first
 * byte), each at its place, and returns their CRC in *crc. Nothing else of dst is written.
 */

static int chunk_read(const struct chunk_src *s, const struct snapshot_memory *m,
		      const struct snapshot_mem_region *rg, uint64_t ci, uint8_t *dst,
		      uint32_t *crc, struct errbuf *e)
{
	uint64_t start = ci * m->chunk_size, end = MIN(start + m->chunk_size, rg->size);
	uint64_t pos = start, gap_max = s->cached ? 0 : LOAD_GAP_BYTES;
	uint32_t c = 0;

	while (pos < end) {
		struct iovec iov[LOAD_IOV_MAX];
		uint64_t req;
		int n = 0, ret;

		while (pos < end && !region_page_present(m, rg, pos))
			pos += STATE_PAGE_SIZE;
		if (pos >= end)
			break;
		req = pos;
		/* present runs into dst, short gaps between them into s->gap */
		for (;;) {
			uint64_t run = pos, gap;

			while (run < end && run - req < LOAD_READ_MAX &&
			       region_page_present(m, rg, run))
				run += STATE_PAGE_SIZE;
			iov[n++] = (struct iovec){ dst + (pos - start), (size_t)(run - pos) };
			pos = run;
			gap = pos;
			while (gap < end && gap - pos < gap_max && !region_page_present(m, rg, gap))
				gap += STATE_PAGE_SIZE;
			/* stop at the chunk's end, at a gap too long to read through, or when full */
			if (gap >= end || gap == pos || !region_page_present(m, rg, gap) ||
			    n + 2 > LOAD_IOV_MAX || gap - req >= LOAD_READ_MAX)
				break;
			iov[n++] = (struct iovec){ s->gap, (size_t)(gap - pos) };
			pos = gap;
		}
		ret = chunk_preadv(s, iov, n, rg->file_offset + req);
		if (ret)
			return err_set(e, ret, "memory file: read at offset 0x%" PRIx64 ": %s",
				       rg->file_offset + req,
				       ret == -EPIPE ? "truncated" : strerror(-ret));
		for (int i = 0; i < n; i++)
			if (iov[i].iov_base != s->gap)
				c = crc32c(c, iov[i].iov_base, iov[i].iov_len);
	}
	*crc = c;
	return 0;
}

static int chunk_mismatch(const struct snapshot_memory *m, const struct snapshot_mem_region *rg,
			  uint64_t ci, uint32_t computed, struct errbuf *e)
{
	uint64_t start = ci * m->chunk_size, end = MIN(start + m->chunk_size, rg->size);

	return err_set(e, -EBADMSG,
		       "memory chunk %" PRIu64 " (gpa 0x%" PRIx64 "-0x%" PRIx64
		       ", file offset 0x%" PRIx64 "): CRC mismatch (stored 0x%08" PRIx32
		       ", computed 0x%08" PRIx32 ")",
		       rg->first_chunk + ci, rg->gpa + start, rg->gpa + end - 1,
		       rg->file_offset + start, snapshot_memory_chunk_crc(m, rg->first_chunk + ci),
		       computed);
}

/* One eager load of a region: the chunks still to read and the first failure. */
struct load_ctx {
	struct chunk_src src;
	const struct snapshot_memory *m;
	const struct snapshot_mem_region *rg;
	uint8_t *host;
	const uint8_t *map;        /* the region's file range mapped read-only, or NULL */
	uint64_t nr_chunks;
	atomic_uint_fast64_t next; /* the next chunk to take */
	atomic_uint slots;         /* the next gap buffer to take */
	atomic_bool failed;        /* stop taking chunks */
	atomic_bool huge;          /* populate chunks first, with huge pages (see above) */
	atomic_uint_fast64_t cached_bytes, direct_bytes, huge_bytes; /* snapshot_load_stats */
	pthread_mutex_t lock;      /* guards the failure below */
	uint64_t err_chunk;        /* the lowest failing chunk: its error is the one reported */
	int err;
	struct errbuf e;
};

/* How many of pages [first, first + n) are present. */
static uint64_t pages_count_present(const struct snapshot_memory *m, uint64_t first, uint64_t n)
{
	uint64_t i = first, end = first + n, count = 0;

	for (; i < end && i % 8; i++)
		count += snapshot_memory_page_present(m, i);
	for (; i + 8 <= end; i += 8)
		count += (uint64_t)__builtin_popcount(m->bitmap[i / 8]);
	for (; i < end; i++)
		count += snapshot_memory_page_present(m, i);
	return count;
}

/* True if every present page of [start, end) of the region is in the page cache. */
static bool chunk_cached(const struct load_ctx *l, uint64_t start, uint64_t end)
{
	unsigned char vec[LOAD_MINCORE_PAGES];

	if (!l->map)
		return false;
	for (uint64_t pos = start; pos < end;) {
		uint64_t len = MIN(end - pos, (uint64_t)LOAD_MINCORE_PAGES * STATE_PAGE_SIZE);

		if (mincore((void *)(l->map + pos), (size_t)len, vec) < 0)
			return false;
		for (uint64_t i = 0; i < len / STATE_PAGE_SIZE; i++) {
			uint64_t off = pos + i * STATE_PAGE_SIZE;

			if (!(vec[i] & 1) && region_page_present(l->m, l->rg, off))
				return false;
		}
		pos += len;
	}
	return true;
}

/* Back to small pages for what is still to be faulted in: the default under "madvise". */
static void load_huge_stop(struct load_ctx *l)
{
	if (atomic_exchange(&l->huge, false))
		(void)madvise(l->host, (size_t)l->rg->size, MADV_NOHUGEPAGE);
}

/* Populates a chunk's guest memory before it is read, in huge pages while they come fast. */
static void chunk_populate(struct load_ctx *l, uint8_t *dst, uint64_t len)
{
	uint64_t t0 = time_mono_ns();

	if (madvise(dst, (size_t)len, MADV_POPULATE_WRITE) < 0) {
		/* no MADV_POPULATE_WRITE (before 5.14): nothing to time the huge pages by */
		load_huge_stop(l);
		return;
	}
	if (time_mono_ns() - t0 > LOAD_HUGE_SLOW_NS * div_up(len, LOAD_HUGE_SIZE))
		load_huge_stop(l);
}

static void *load_main(void *arg)
{
	struct load_ctx *l = arg;
	struct chunk_src src = l->src;
	uint64_t ci;

	src.gap += (size_t)atomic_fetch_add(&l->slots, 1) * LOAD_GAP_BYTES;
	while (!atomic_load(&l->failed) && (ci = atomic_fetch_add(&l->next, 1)) < l->nr_chunks) {
		uint64_t start = ci * l->m->chunk_size;
		uint64_t end = MIN(start + l->m->chunk_size, l->rg->size), present;
		struct errbuf e;
		uint32_t crc;
		int ret;

		present = pages_count_present(l->m, l->rg->first_page + start / STATE_PAGE_SIZE,
					      (end - start) / STATE_PAGE_SIZE);
		if (present && atomic_load(&l->huge)) {
			chunk_populate(l, l->host + start, end - start);
			atomic_fetch_add(&l->huge_bytes, end - start);
		}
		src.cached = chunk_cached(l, start, end);
		atomic_fetch_add(src.cached ? &l->cached_bytes : &l->direct_bytes,
				 present * STATE_PAGE_SIZE);
		ret = chunk_read(&src, l->m, l->rg, ci, l->host + start, &crc, &e);
		if (!ret && crc != snapshot_memory_chunk_crc(l->m, l->rg->first_chunk + ci))
			ret = chunk_mismatch(l->m, l->rg, ci, crc, &e);
		if (!ret)
			continue;
		atomic_store(&l->failed, true);
		pthread_mutex_lock(&l->lock);
		if (!l->err || ci < l->err_chunk) {
			l->err = ret;
			l->err_chunk = ci;
			l->e = e;
		}
		pthread_mutex_unlock(&l->lock);
	}
	return NULL;
}

/* A second open of the same memory file with other flags, or -1 where there is none. */
static int memory_fd_reopen(int fd, int flags)
{
	struct stat a, b;
	char path[64];
	int dfd;

	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	dfd = open(path, O_RDONLY | O_CLOEXEC | flags);
	if (dfd < 0)
		return -1;
	if (fstat(fd, &a) < 0 || fstat(dfd, &b) < 0 || a.st_dev != b.st_dev ||
	    a.st_ino != b.st_ino) {
		close(dfd);
		return -1;
	}
	return dfd;
}

/*
 * True if the chunks of rg that hold any page are at least half full: a huge page for a
 * chunk of a few pages would cost the host up to 512 times the memory.
 */
static bool region_dense(const struct snapshot_memory *m, const struct snapshot_mem_region *rg)
{
	uint64_t per = m->chunk_size / STATE_PAGE_SIZE, pages = rg->size / STATE_PAGE_SIZE;
	uint64_t present = 0, spanned = 0;

	for (uint64_t p = 0; p < pages; p += per) {
		uint64_t n = MIN(per, pages - p), c = pages_count_present(m, rg->first_page + p, n);

		present += c;
		spanned += c ? n : 0;
	}
	return present && present * 2 >= spanned;
}

/* True if the system gives anonymous memory huge pages only where madvise() asks. */
static bool thp_madvise_only(void)
{
	char buf[128] = "";
	int fd = open("/sys/kernel/mm/transparent_hugepage/enabled", O_RDONLY | O_CLOEXEC);
	ssize_t n;

	if (fd < 0)
		return false;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return false;
	buf[n] = '\0';
	return strstr(buf, "[madvise]") != NULL;
}

int snapshot_memory_load(struct snapshot_reader *r, uint32_t idx, void *host, struct errbuf *e)
{
	const struct snapshot_memory *m = &r->mem;
	pthread_t thr[LOAD_THREADS - 1];
	unsigned nthr = 0, want;
	atomic_bool refused = false;
	struct load_ctx *l;
	void *map;
	int ret;

	if (idx >= m->nr_regions)
		return err_set(e, -EINVAL, "snapshot %s: no memory region %" PRIu32, r->dir, idx);
	l = calloc(1, sizeof(*l));
	if (!l)
		return err_set(e, -ENOMEM, "snapshot %s: out of memory", r->dir);
	l->m = m;
	l->rg = &m->regions[idx];
	l->host = host;
	l->nr_chunks = div_up(l->rg->size, m->chunk_size);
	l->src = (struct chunk_src){ .direct_fd = memory_fd_reopen(r->mem_fd, O_DIRECT), .fd = -1,
				     .refused = &refused };
	/* its own buffered fd, so that no readahead state is shared with other users of mem_fd */
	l->src.fd = memory_fd_reopen(r->mem_fd, 0);
	if (l->src.fd < 0)
		l->src.fd = r->mem_fd;
	else
		(void)posix_fadvise(l->src.fd, 0, 0, POSIX_FADV_RANDOM);
	/* only looked at with mincore(): nothing of it is ever faulted in */
	map = l->rg->size ? mmap(NULL, (size_t)l->rg->size, PROT_READ, MAP_SHARED, r->mem_fd,
				 (off_t)l->rg->file_offset)
			  : MAP_FAILED;
	l->map = map == MAP_FAILED ? NULL : map;
	l->src.gap = aligned_alloc(STATE_PAGE_SIZE, LOAD_THREADS * LOAD_GAP_BYTES);
	if (!l->src.gap || pthread_mutex_init(&l->lock, NULL)) {
		ret = err_set(e, -ENOMEM, "snapshot %s: out of memory", r->dir);
		goto out;
	}
	if (m->chunk_size % LOAD_HUGE_SIZE == 0 && (uintptr_t)host % LOAD_HUGE_SIZE == 0 &&
	    region_dense(m, l->rg) && thp_madvise_only() &&
	    madvise(host, (size_t)l->rg->size, MADV_HUGEPAGE) == 0)
		atomic_store(&l->huge, true);
	/* the caller reads too; a thread that cannot start leaves its share to the others */
	want = (unsigned)MIN(l->nr_chunks, (uint64_t)LOAD_THREADS) - 1;
	for (; nthr < want; nthr++)
		if (pthread_create(&thr[nthr], NULL, load_main, l))
			break;
	load_main(l);
	for (unsigned i = 0; i < nthr; i++)
		pthread_join(thr[i], NULL);
	load_huge_stop(l);
	r->load.cached_bytes += atomic_load(&l->cached_bytes);
	r->load.direct_bytes += atomic_load(&l->direct_bytes);
	r->load.huge_bytes += atomic_load(&l->huge_bytes);
	pthread_mutex_destroy(&l->lock);
	ret = l->err;
	if (ret && e)
		*e = l->e;
	if (ret)
		err_prefix(e, ret, "snapshot %s", r->dir);
out:
	if (l->src.direct_fd >= 0)
		close(l->src.direct_fd);
	if (l->src.fd != r->mem_fd)
		close(l->src.fd);
	if (l->map)
		munmap((void *)l->map, (size_t)l->rg->size);
	free(l->src.gap);
	free(l);
	return ret;
}

void snapshot_load_stats(const struct snapshot_reader *r, struct snapshot_load_stats *st)
{
	*st = r->load;
}

/* The index page a memory file offset holds, or UINT64_MAX for space between regions. */
static uint64_t file_offset_page(const struct snapshot_memory *m, uint64_t off)
{
	for (uint32_t i = 0; i < m->nr_regions; i++) {
		const struct snapshot_mem_region *rg = &m->regions[i];

		if (off >= rg->file_offset && off - rg->file_offset < rg->size)
			return rg->first_page + (off - rg->file_offset) / STATE_PAGE_SIZE;
	}
	return UINT64_MAX;
}

struct verify_state {
	FILE *report;
	struct errbuf *e;
	uint64_t problems;
};

static void verify_problem(struct verify_state *v, struct errbuf *tmp)
{
	if (v->report && v->problems < VERIFY_REPORT_MAX)
		fprintf(v->report, "  BAD %s\n", tmp->msg);
	if (v->problems == 0 && v->e)
		memcpy(v->e->msg, tmp->msg, sizeof(v->e->msg));
	v->problems++;
}

/* Data found where the index says there is none must at least be zeroes. */
static int verify_holes(int fd, const struct snapshot_memory *m, uint8_t *page,
			struct verify_state *v)
{
	off_t pos = 0, data, hole;
	struct errbuf tmp;
	int ret;

	while ((uint64_t)pos < m->file_size) {
		data = lseek(fd, pos, SEEK_DATA);
		if (data < 0 && errno == ENXIO)
			break;
		if (data < 0) {
			data = pos; /* no SEEK_DATA here: check every page */
			hole = (off_t)m->file_size;
		} else {
			hole = lseek(fd, data, SEEK_HOLE);
			if (hole < 0)
				hole = (off_t)m->file_size;
		}
		for (uint64_t off = ALIGN_DOWN((uint64_t)data, (uint64_t)STATE_PAGE_SIZE);
		     off < (uint64_t)hole && off < m->file_size; off += STATE_PAGE_SIZE) {
			uint64_t pg = file_offset_page(m, off);

			if (pg != UINT64_MAX && snapshot_memory_page_present(m, pg))
				continue;
			ret = io_pread_full(fd, page, STATE_PAGE_SIZE, (off_t)off);
			if (ret)
				return err_set(v->e, ret, "memory file: read at offset 0x%" PRIx64 ": %s",
					       off, ret == -EPIPE ? "truncated" : strerror(-ret));
			if (page_is_zero(page))
				continue;
			if (pg == UINT64_MAX)
				err_set(&tmp, -EBADMSG,
					"memory file offset 0x%" PRIx64
					": data between regions, where there should be none",
					off);
			else
				err_set(&tmp, -EBADMSG,
					"memory file offset 0x%" PRIx64
					": page %" PRIu64 " is zero in the index but holds data",
					off, pg);
			verify_problem(v, &tmp);
		}
		pos = hole;
	}
	return 0;
}

int snapshot_memory_verify_fd(int fd, const struct snapshot_memory *m, FILE *report,
			      uint64_t *problems, struct errbuf *e)
{
	struct verify_state v = { .report = report, .e = e };
	uint8_t *scratch = malloc(m->chunk_size);
	atomic_bool refused = true;
	struct chunk_src src = { .direct_fd = -1, .fd = fd, .refused = &refused,
				 .gap = aligned_alloc(STATE_PAGE_SIZE, LOAD_GAP_BYTES) };
	struct errbuf tmp;
	int ret = 0;

	if (!scratch || !src.gap) {
		free(scratch);
		free(src.gap);
		return err_set(e, -ENOMEM, "memory verify: out of memory");
	}
	for (uint32_t i = 0; i < m->nr_regions; i++) {
		const struct snapshot_mem_region *rg = &m->regions[i];

		for (uint64_t ci = 0; ci * m->chunk_size < rg->size; ci++) {
			uint32_t crc;

			ret = chunk_read(&src, m, rg, ci, scratch, &crc, e);
			if (ret)
				goto out;
			if (crc != snapshot_memory_chunk_crc(m, rg->first_chunk + ci)) {
				chunk_mismatch(m, rg, ci, crc, &tmp);
				verify_problem(&v, &tmp);
			}
		}
	}
	ret = verify_holes(fd, m, scratch, &v);
	if (ret)
		goto out;
	if (v.problems) {
		if (report && v.problems > VERIFY_REPORT_MAX)
			fprintf(report, "  ... %" PRIu64 " problems in all\n", v.problems);
		ret = err_prefix(e, -EBADMSG, "%" PRIu64 " memory problem%s, the first", v.problems,
				 v.problems == 1 ? "" : "s");
	}
out:
	*problems = v.problems;
	free(scratch);
	free(src.gap);
	return ret;
}

int snapshot_memory_verify(struct snapshot_reader *r, FILE *report, struct errbuf *e)
{
	uint64_t problems;
	int ret = snapshot_memory_verify_fd(r->mem_fd, &r->mem, report, &problems, e);

	return ret ? err_prefix(e, ret, "snapshot %s", r->dir) : 0;
}
