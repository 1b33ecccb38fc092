/* SPDX-License-Identifier: MIT */
/*
 * The destination of a migration. Every byte from the source is hostile: records are
 * bounded and CRC-checked (state/record.c), the configuration is checked against what
 * this host can give before any memory moves, pages must fall inside guest RAM, and all
 * vCPU and device state is validated before READY. The guest runs only after COMMIT;
 * on any failure the process exits non-zero having run nothing.
 */
#include "base/log.h"
#include "migration/mig_internal.h"
#include "migration/migrate.h"
#include "migration/params.h"
#include "migration/postcopy.h"
#include "migration/proto.h"
#include "migration/snapshot.h"
#include "state/xbzrle.h"
#include "vmm/memory.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

/* the largest record a source may send: a PAGES batch of STATE_PAGES_MAX pages */
#define MIG_RECV_RECORD_MAX (STATE_PAGES_MAX * (STATE_PAGE_SIZE + 16) + 64)
#define MIG_RECV_SECTIONS_MAX 256

struct mig_incoming {
	int listen_fd;
	struct mig_incoming_opts o;
	struct vm_section secs[MIG_RECV_SECTIONS_MAX];
	void *sec_data[MIG_RECV_SECTIONS_MAX];
	size_t nsecs;
	uint64_t t_commit;
	/* faulting in the ranges the source announced, ahead of the data */
	pthread_t populate_thread;
	bool populating;
	bool ranges_seen;                /* RANGES came: once per move, before any MISSING */
	_Atomic bool populate_stop;
	uint8_t *ranges;
	uint64_t nranges;
	uint64_t resume_ns;
	/* bounds on a slow or endless source: see inc_receive() */
	struct mig_deadline dl;
	uint32_t next_round;
	bool round_fenced;               /* this round's FENCE came: one a round */
	uint64_t round_pages;
	unsigned round_pings;
	struct state_inflater *inflater; /* made at the first compressed batch */
	bool delta;                      /* HELLO announced deltas (MIG_CAP_DELTA) */
};

static struct mig_incoming inc = { .listen_fd = -1 };

/* The listener stays open until the extra connections, if any, have joined. */
static void inc_listen_close(void)
{
	if (inc.listen_fd >= 0)
		close(inc.listen_fd);
	inc.listen_fd = -1;
}

static int inc_reply(uint32_t type, const char *reason)
{
	struct mig_ctrl m = { .type = type };
	struct errbuf e;

	if (!mig.w)
		return -EPIPE;
	if (reason)
		snprintf(m.reason, sizeof(m.reason), "%s", reason);
	if (mig_ctrl_send(mig.w, &m, &e) < 0 || state_writer_flush(mig.w, &e) < 0)
		return -EPIPE;
	return 0;
}

/* A plaintext listener: a TLS ClientHello starts with 0x16; say so rather than "bad magic". */
static int inc_plain_check(struct errbuf *e)
{
	uint8_t b;

	if (!mig.tls && recv(mig.fd, &b, 1, MSG_PEEK) == 1 && b == 0x16)
		return err_set(e, -EPROTO, "the source started a TLS handshake; this destination "
					   "listens without TLS (start it with --tls-dir or --tls-psk)");
	return 0;
}

static int inc_next(struct state_record *rec, struct errbuf *e)
{
	int ret = state_reader_next(mig.r, rec, e);

	if (ret < 0)
		return err_prefix(e, ret, "from the source");
	pthread_mutex_lock(&mig.lock);
	mig.st.bytes_sent = state_reader_offset(mig.r);
	mig.st.bytes_total = mig.st.bytes_sent;
	mig.st.stream_bytes[0] = mig.st.bytes_sent;
	pthread_mutex_unlock(&mig.lock);
	return 0;
}

static int inc_config(const struct state_record *rec, struct errbuf *e)
{
	struct vm_restore_config rc = { 0 };
	struct state_config *cfg;
	struct kvm_cpuid2 *cpuid = NULL;
	struct device_spec *specs = NULL;
	int ret;

	if (rec->type != STATE_REC_CONFIG)
		return err_set(e, -EPROTO, "expected the source's CONFIG, got %s",
			       state_record_type_name(rec->type));
	cfg = calloc(1, sizeof(*cfg));
	if (!cfg)
		return err_set(e, -ENOMEM, "out of memory");
	ret = state_config_decode(rec->payload, rec->len, cfg, e);
	if (ret < 0) {
		err_prefix(e, ret, "the source's configuration");
		goto out;
	}
	if (cfg->flags != MIG_MODE_WARM && cfg->flags != MIG_MODE_LIVE &&
	    cfg->flags != MIG_MODE_POSTCOPY) {
		ret = err_set(e, -EPROTO, "the source's configuration names unknown mode %llu",
			      (unsigned long long)cfg->flags);
		goto out;
	}
	cpuid = vm_state_config_cpuid(cfg);
	specs = calloc(STATE_MAX_DEVICES, sizeof(*specs));
	if (!cpuid || !specs) {
		ret = err_set(e, -ENOMEM, "out of memory");
		goto out;
	}
	/* pre-flight: the disks open here with the sizes the guest saw, before the source pauses */
	ret = vm_state_config_devices(cfg, inc.o.overrides, inc.o.noverrides, specs,
				      &rc.ndevices, e);
	if (ret < 0)
		goto out;
	rc.devices = specs;
	/* the source holds the disks' locks until COMMIT */
	rc.defer_claim = true;
	rc.nvcpus = cfg->nr_vcpus;
	rc.memory = state_config_mem_size(cfg);
	rc.cpuid = cpuid;
	rc.tsc_khz = cfg->tsc_khz;
	rc.xsave_size = cfg->xsave_size;
	rc.serial = inc.o.serial;
	rc.serial_path = inc.o.serial_path;
	rc.kvm_path = inc.o.kvm_path;
	rc.dirty = inc.o.dirty;
	ret = vm_incoming_build(mig.vm, &rc, e);
	if (ret < 0)
		goto out;
	ret = vm_state_config_layout_check(cfg, mig.vm, e);
out:
	free(specs);
	free(cpuid);
	free(cfg);
	return ret;
}

/* Decodes and inflates with *z, made at the first compressed batch. */
static int inc_pages_decode_z(const struct state_record *rec, struct state_pages_iter *it,
			      struct state_inflater **z, struct errbuf *e)
{
	int ret = state_pages_decode(rec->payload, rec->len, it, e);

	if (ret == 0)
		ret = state_pages_inflate_lazy(it, z, e);
	if (ret < 0)
		return err_prefix(e, ret, "record %llu", (unsigned long long)rec->index);
	return 0;
}

int inc_pages_decode(const struct state_record *rec, struct state_pages_iter *it,
		     struct errbuf *e)
{
	return inc_pages_decode_z(rec, it, &inc.inflater, e);
}

int inc_pages_install(const struct state_record *rec, struct state_inflater **z, uint64_t *n,
		      struct errbuf *e)
{
	struct guest_mem *mem = vm_memory(mig.vm);
	struct state_pages_iter it;
	struct state_page pg;
	uint64_t normal = 0, zero = 0, delta_bytes = 0;
	int ret = inc_pages_decode_z(rec, &it, z, e);

	if (ret < 0)
		return ret;
	if (it.nr_delta && !inc.delta)
		return err_set(e, -EPROTO, "record %llu: a page sent as a delta, but the source's "
			       "HELLO did not announce deltas", (unsigned long long)rec->index);
	pthread_mutex_lock(&mig.lock);
	mig.st.page_bytes += (uint64_t)it.nr_data * STATE_PAGE_SIZE;
	mig.st.page_bytes_sent += it.zdata ? it.zlen : it.data_len;
	mig.st.delta_pages += it.nr_delta;
	pthread_mutex_unlock(&mig.lock);
	while (state_pages_next(&it, &pg)) {
		uint8_t *dst = guest_mem_ptr(mem, pg.gpa, GUEST_PAGE_SIZE);

		if (!dst)
			return err_set(e, -EFAULT, "record %llu: page 0x%llx is outside guest memory",
				       (unsigned long long)rec->index, (unsigned long long)pg.gpa);
		if (pg.delta) {
			/* against this side's copy, which is exactly what the source sent last */
			ret = xbzrle_decode(dst, pg.data, pg.delta_len, e);
			if (ret < 0)
				return err_prefix(e, ret, "record %llu: page 0x%llx",
						  (unsigned long long)rec->index,
						  (unsigned long long)pg.gpa);
			delta_bytes += pg.delta_len;
			normal++;
		} else if (pg.data) {
			memcpy(dst, pg.data, GUEST_PAGE_SIZE);
			normal++;
		} else {
			/* only pages that hold something need writing: fresh memory reads zero */
			if (!page_is_zero(dst))
				memset(dst, 0, GUEST_PAGE_SIZE);
			zero++;
		}
	}
	pthread_mutex_lock(&mig.lock);
	mig.st.pages_normal += normal;
	mig.st.pages_zero += zero;
	mig.st.delta_bytes += delta_bytes;
	pthread_mutex_unlock(&mig.lock);
	*n = normal + zero;
	return 0;
}

static int inc_pages(const struct state_record *rec, struct errbuf *e)
{
	struct guest_mem *mem = vm_memory(mig.vm);
	uint64_t n;
	int ret;

	/*
	 * Every round's pages come before MISSING names the pages to fetch: one written now
	 * could land on a page MISSING dropped, which post-copy then finds present and never
	 * installs.
	 */
	if (inc_postcopy_active())
		return err_set(e, -EPROTO, "record %llu: PAGES after MISSING (pre-copy pages come "
			       "before the pages to fetch are named)",
			       (unsigned long long)rec->index);
	ret = inc_pages_install(rec, &inc.inflater, &n, e);
	if (ret < 0)
		return ret;
	/* a round sends each page at most once (on this connection: see streams.c) */
	inc.round_pages += n;
	if (inc.round_pages > mem->size / GUEST_PAGE_SIZE)
		return err_set(e, -EPROTO, "round %u carries more pages than guest memory holds",
			       inc.next_round ? inc.next_round - 1 : 0);
	return 0;
}

/*
 * PING: the source measures the round trip, and at the end of a round how long the
 * round's data took to arrive (this answer goes out once everything before it was read).
 */
static int inc_ping(const struct mig_ctrl *m, struct errbuf *e)
{
	struct mig_ctrl pong = { .type = MIG_MSG_PONG, .u64a = m->u64a };
	int ret;

	if (++inc.round_pings > MIG_PINGS_PER_ROUND_MAX)
		return err_set(e, -EPROTO, "more than %u PINGs in one round",
			       MIG_PINGS_PER_ROUND_MAX);
	ret = mig_ctrl_send(mig.w, &pong, e);
	if (ret == 0)
		ret = state_writer_flush(mig.w, e);
	return ret < 0 ? err_prefix(e, ret, "answering PING") : 0;
}

/* Rounds come numbered 0, 1, 2, ... and end within the engine's round limit. */
static int inc_round(const struct mig_ctrl *m, struct errbuf *e)
{
	if (m->u32a != inc.next_round || m->u32a > MIG_ROUNDS_LIMIT + 1)
		return err_set(e, -EPROTO, "ROUND %u out of order (expected %u, at most %llu)",
			       m->u32a, inc.next_round, (unsigned long long)MIG_ROUNDS_LIMIT + 1);
	inc.next_round++;
	inc.round_fenced = false;
	inc.round_pages = 0;
	inc.round_pings = 0;
	pthread_mutex_lock(&mig.lock);
	mig.st.round = m->u32a; /* per-round figures are the source's to report */
	pthread_mutex_unlock(&mig.lock);
	return 0;
}

static int inc_section(const struct state_record *rec, struct errbuf *e)
{
	struct state_section s;
	struct vm_section *v;
	char *copy;
	int ret = state_section_decode(rec->payload, rec->len, &s, e);

	if (ret < 0)
		return err_prefix(e, ret, "record %llu", (unsigned long long)rec->index);
	if (inc.nsecs >= MIG_RECV_SECTIONS_MAX)
		return err_set(e, -E2BIG, "more than %u sections", MIG_RECV_SECTIONS_MAX);
	/* name, instance and data together; the record buffer is reused by the next read */
	copy = malloc(sizeof(s.name) + sizeof(s.instance) + s.len + 1);
	if (!copy)
		return err_set(e, -ENOMEM, "out of memory");
	memcpy(copy, s.name, sizeof(s.name));
	memcpy(copy + sizeof(s.name), s.instance, sizeof(s.instance));
	memcpy(copy + sizeof(s.name) + sizeof(s.instance), s.data, s.len);
	inc.sec_data[inc.nsecs] = copy;
	v = &inc.secs[inc.nsecs++];
	*v = (struct vm_section){ copy, copy + sizeof(s.name), s.version,
				  copy + sizeof(s.name) + sizeof(s.instance), s.len };
	return 0;
}

static void *inc_populate_main(void *arg)
{
	struct guest_mem *mem = vm_memory(mig.vm);

	(void)arg;
	for (uint64_t r = 0; r < inc.nranges && !atomic_load(&inc.populate_stop); r++) {
		uint64_t off = r << MIG_RANGE_SHIFT, len;

		if (!(inc.ranges[r / 8] & (1u << (r % 8))) || off >= mem->size)
			continue;
		len = MIN(1ull << MIG_RANGE_SHIFT, mem->size - off);
		/* best effort: on failure the receiver simply faults the pages in itself */
		if (madvise(mem->base + off, len, MADV_POPULATE_WRITE) < 0 && errno != EINTR)
			break;
	}
	return NULL;
}

static int inc_populate_start(const struct mig_ctrl *m, struct errbuf *e)
{
	struct guest_mem *mem = vm_memory(mig.vm);

	/*
	 * Faulting ranges in after MISSING would map fresh zero pages over the pages it
	 * dropped, which post-copy then never installs (UFFDIO_COPY finds them present).
	 */
	if (inc_postcopy_active())
		return err_set(e, -EPROTO, "RANGES after MISSING (round 0's ranges come before "
			       "the pages to fetch are named)");
	if (inc.ranges_seen)
		return err_set(e, -EPROTO, "RANGES sent twice");
	inc.ranges_seen = true;
	if (m->u64a != (mem->size + (1ull << MIG_RANGE_SHIFT) - 1) >> MIG_RANGE_SHIFT)
		return err_set(e, -EPROTO, "RANGES covers %llu ranges, guest memory has %llu",
			       (unsigned long long)m->u64a,
			       (unsigned long long)((mem->size + (1ull << MIG_RANGE_SHIFT) - 1) >>
						    MIG_RANGE_SHIFT));
	inc.ranges = malloc((m->u64a + 7) / 8 + 1);
	if (!inc.ranges)
		return err_set(e, -ENOMEM, "out of memory");
	memcpy(inc.ranges, m->bitmap, (m->u64a + 7) / 8);
	inc.nranges = m->u64a;
	atomic_store(&inc.populate_stop, false);
	if (pthread_create(&inc.populate_thread, NULL, inc_populate_main, NULL) == 0)
		inc.populating = true;
	return 0;
}

static void inc_populate_stop(void)
{
	if (inc.populating) {
		atomic_store(&inc.populate_stop, true);
		pthread_join(inc.populate_thread, NULL);
		inc.populating = false;
	}
	free(inc.ranges);
	inc.ranges = NULL;
}

/*
 * The source flushed and released its disks' locks before it sent COMMIT; take them before
 * the guest runs here. A lock still held after a few tries belongs to someone else: the
 * guest then runs nowhere rather than on two hosts writing one disk.
 */
static int inc_claim_devices(struct errbuf *e)
{
	int ret = 0;

	for (unsigned i = 0; i < 20; i++) {
		ret = vm_devices_claim(mig.vm, e);
		if (ret != -EBUSY)
			break;
		usleep(100 * 1000);
	}
	if (ret < 0)
		return err_prefix(e, ret, "after COMMIT, the guest was not started here");
	return 0;
}

static int inc_receive(struct errbuf *e)
{
	struct state_reader_opts ro = { .kind = STATE_KIND_MIGRATION, .allow_control = true,
					.max_record = MIG_RECV_RECORD_MAX };
	struct state_record rec;
	struct mig_ctrl m;
	struct errbuf e2;
	int ret;

	ret = mig_socket_timeouts(mig.fd, MIG_IO_TIMEOUT_MS, e);
	if (ret < 0)
		return ret;
	ret = inc_plain_check(e);
	if (ret < 0)
		return ret;
	ret = state_reader_open_channel(&mig.r, mig.ch, &ro, e);
	if (ret < 0)
		return err_prefix(e, ret, "from the source");
	ret = inc_next(&rec, e);
	if (ret < 0)
		return ret;
	ret = mig_ctrl_decode(&rec, &m, e);
	if (ret < 0 || m.type != MIG_MSG_HELLO)
		return ret < 0 ? ret : err_set(e, -EPROTO, "expected HELLO, got %s",
					       mig_msg_name(m.type));
	ret = state_writer_open_channel(&mig.w, mig.ch, STATE_KIND_MIGRATION, e);
	if (ret < 0)
		return ret;
	if (m.u32a != MIG_PROTOCOL_VERSION) {
		err_set(e, -EPROTO, "the source speaks migration protocol version %u, this build "
				    "speaks %u", m.u32a, MIG_PROTOCOL_VERSION);
		inc_reply(MIG_MSG_REFUSE, e->msg);
		return -EPROTO;
	}
	inc.delta = m.u64a & MIG_CAP_DELTA;
	pthread_mutex_lock(&mig.lock);
	mig.st.mode = m.u32b;
	snprintf(mig.st.delta, sizeof(mig.st.delta), "%s", inc.delta ? "xbzrle" : "none");
	pthread_mutex_unlock(&mig.lock);
	ret = mig_streams_expect(&m, mig.r, e);
	if (ret < 0) {
		inc_reply(MIG_MSG_REFUSE, e->msg);
		return ret;
	}
	ret = inc_next(&rec, e);
	if (ret < 0)
		return ret;
	/* the source is done with its part of the setup; building the VM is this host's */
	mig_deadline_set(&inc.dl, UINT64_MAX, "building the VM");
	ret = inc_config(&rec, e);
	if (ret < 0) {
		inc_reply(MIG_MSG_REFUSE, e->msg);
		return ret;
	}
	m = (struct mig_ctrl){ .type = MIG_MSG_ACCEPT, .u32a = MIG_PROTOCOL_VERSION };
	ret = mig_ctrl_send(mig.w, &m, e);
	if (ret == 0)
		ret = state_writer_flush(mig.w, e);
	if (ret < 0)
		return ret;
	/* the extra connections, if any, under a setup deadline of their own (this one's
	 * watchdog, armed at accept, must not cut the first connection meanwhile) */
	if (mig_streams_count() > 1)
		mig_deadline_set(&inc.dl, MIG_SETUP_DEADLINE_MS + 1000,
				 "the extra connections' setup");
	ret = mig_streams_accept(inc.listen_fd, MIG_RECV_RECORD_MAX, e);
	inc_listen_close();
	if (ret < 0)
		return ret;
	mig_state_set_incoming(MIG_STATE_ACTIVE);

	/*
	 * From here each record must arrive whole within MIG_RECORD_DEADLINE_MS (a PAGES
	 * record is at most 4 MiB), so a trickling source cannot stretch one; rounds are
	 * numbered and bounded and each carries at most guest memory, so the stream ends.
	 */
	for (;;) {
		mig_deadline_set(&inc.dl, MIG_RECORD_DEADLINE_MS, "receiving one record");
		ret = inc_next(&rec, e);
		if (ret < 0) {
			/* an extra connection's failure cut this one: that is the cause */
			ret = mig_streams_error(e, ret);
			inc_reply(MIG_MSG_ERROR, e->msg); /* best effort: the link may be gone */
			return ret;
		}
		if (rec.type == STATE_REC_PAGES) {
			ret = inc_pages(&rec, e);
		} else if (rec.type == STATE_REC_SECTION) {
			ret = inc_section(&rec, e);
		} else {
			ret = mig_ctrl_decode(&rec, &m, e);
			if (ret < 0)
				return ret;
			if (m.type == MIG_MSG_DONE) {
				ret = mig_streams_finish(e);
				if (ret < 0) {
					inc_reply(MIG_MSG_ERROR, e->msg);
					return ret;
				}
				break;
			}
			if (m.type == MIG_MSG_FENCE) {
				/*
				 * One a round, after its pages: between two FENCEs an extra
				 * connection may carry as many pages as guest memory holds, so
				 * more FENCEs than rounds would let the stream go on for ever.
				 */
				if (!inc.next_round)
					ret = err_set(e, -EPROTO, "FENCE before any ROUND");
				else if (inc.round_fenced)
					ret = err_set(e, -EPROTO, "a second FENCE in round %u (a round "
						      "ends with one)", inc.next_round - 1);
				inc.round_fenced = true;
				mig_deadline_set(&inc.dl, MIG_RECORD_DEADLINE_MS + 1000,
						 "waiting for FENCE on every connection");
				if (ret == 0)
					ret = mig_streams_fence_wait(m.u64a, e);
				if (ret < 0) {
					inc_reply(MIG_MSG_ERROR, e->msg);
					return ret;
				}
				continue;
			}
			if (m.type == MIG_MSG_ABORT)
				return err_set(e, -ECANCELED, "the source aborted: %s", m.reason);
			if (m.type == MIG_MSG_PING) {
				ret = inc_ping(&m, e);
				if (ret < 0)
					return ret;
				continue;
			}
			if (m.type == MIG_MSG_MISSING) {
				/*
				 * A warm source never switches to post-copy and serves no
				 * page after the handover: the pages MISSING drops would
				 * never come, and the guest would wait for them for ever.
				 */
				if (mig.st.mode == MIG_MODE_WARM) {
					ret = err_set(e, -EPROTO, "MISSING on a warm move: "
						      "post-copy is for live and post-copy moves");
					inc_reply(MIG_MSG_ERROR, e->msg);
					return ret;
				}
				/*
				 * Post-copy fetches over the first connection alone (the
				 * source refuses it with several): a MISSING here would let
				 * an extra connection's queued PAGES land on dropped pages.
				 */
				if (mig_streams_count() > 1) {
					ret = err_set(e, -EPROTO, "MISSING on a move over %u "
						      "connections: post-copy uses one",
						      mig_streams_count());
					inc_reply(MIG_MSG_ERROR, e->msg);
					return ret;
				}
				/* it would fault zero pages in over the ones MISSING drops */
				inc_populate_stop();
				ret = inc_postcopy_missing(vm_memory(mig.vm), &m, e);
				if (ret < 0) {
					inc_reply(MIG_MSG_ERROR, e->msg);
					return ret;
				}
				continue;
			}
			if (m.type == MIG_MSG_RANGES) {
				ret = inc_populate_start(&m, e);
				if (ret < 0) {
					inc_reply(MIG_MSG_ERROR, e->msg);
					return ret;
				}
				continue;
			}
			if (m.type != MIG_MSG_ROUND)
				return err_set(e, -EPROTO, "unexpected %s from the source",
					       mig_msg_name(m.type));
			ret = inc_round(&m, e);
		}
		if (ret < 0) {
			inc_reply(MIG_MSG_ERROR, e->msg);
			return ret;
		}
	}
	mig_state_set_incoming(MIG_STATE_COMPLETING);
	inc_populate_stop();
	ret = vm_sections_load(mig.vm, inc.secs, inc.nsecs, e);
	if (ret == 0)
		ret = inc_postcopy_prepare(e);
	if (ret < 0) {
		inc_reply(MIG_MSG_ERROR, e->msg);
		return ret;
	}
	ret = inc_reply(MIG_MSG_READY, NULL);
	if (ret < 0)
		return err_set(e, ret, "sending READY: the source went away");
	mig_time_mark(&mig.st.times.ready);

	/* wait for COMMIT: without it, nothing runs here */
	ret = mig_socket_timeouts(mig.fd, MIG_HANDOVER_TIMEOUT_MS, e);
	if (ret < 0) {
		inc_reply(MIG_MSG_ERROR, e->msg);
		return ret;
	}
	mig_deadline_set(&inc.dl, MIG_HANDOVER_TIMEOUT_MS, "waiting for COMMIT");
	ret = inc_next(&rec, e);
	if (ret < 0)
		return err_prefix(e, ret, "waiting for COMMIT (nothing was started)");
	ret = mig_ctrl_decode(&rec, &m, e);
	if (ret < 0)
		return ret;
	if (m.type == MIG_MSG_ABORT)
		return err_set(e, -ECANCELED, "the source aborted: %s", m.reason);
	if (m.type != MIG_MSG_COMMIT)
		return err_set(e, -EPROTO, "expected COMMIT, got %s", mig_msg_name(m.type));
	/* committed: the guest runs here whatever happens to the link now */
	mig_deadline_set(&inc.dl, UINT64_MAX, "after COMMIT");
	/* straight from this thread: the vCPUs' run state has its own locking */
	inc.t_commit = time_mono_ns();
	mig_time_mark(&mig.st.times.commit);
	ret = inc_claim_devices(e);
	if (ret < 0)
		return ret;
	if (inc.o.paused) {
		vm_start_paused(mig.vm);
	} else {
		ret = vm_start(mig.vm, e);
		if (ret < 0)
			return err_prefix(e, ret, "starting the guest after COMMIT failed");
	}
	inc.resume_ns = time_mono_ns() - inc.t_commit;
	pthread_mutex_lock(&mig.lock);
	mig.st.times.started = time_real_ns();
	mig.st.downtime_ns = m.u64a + inc.resume_ns;
	pthread_mutex_unlock(&mig.lock);
	m = (struct mig_ctrl){ .type = MIG_MSG_STARTED, .u64a = inc.resume_ns };
	/* this direction carries no CONFIG, so it ends without END: the source closes */
	if (mig_ctrl_send(mig.w, &m, &e2) < 0 || state_writer_flush(mig.w, &e2) < 0)
		log_warn("migration: the source did not get STARTED: %s", e2.msg);
	if (inc_postcopy_active())
		return inc_postcopy_run(e);
	return 0;
}

static void inc_fail_cb(void *opaque)
{
	(void)opaque;
	vm_exit_code_set(mig.vm, 1);
	vm_stop_request(mig.vm);
}

/*
 * A plaintext source on a TLS listener is told why in its own language: a plaintext
 * REFUSE, so its operator reads the reason rather than a dropped connection.
 */
static void inc_refuse_plaintext(int fd, const char *why)
{
	struct state_writer *w;
	struct mig_ctrl m = { .type = MIG_MSG_REFUSE };
	struct errbuf e;

	snprintf(m.reason, sizeof(m.reason), "%s", why);
	if (state_writer_open(&w, fd, STATE_KIND_MIGRATION, &e) < 0)
		return;
	if (mig_ctrl_send(w, &m, &e) < 0 || state_writer_flush(w, &e) < 0)
		log_debug("incoming migration: the plaintext REFUSE was not delivered: %s", e.msg);
	state_writer_free(w);
}

int inc_channel_accept(uint64_t deadline_ns, struct errbuf *e)
{
	int ret = mig_channel_open(NULL, deadline_ns, e);

	if (ret == -EPROTONOSUPPORT)
		inc_refuse_plaintext(mig.fd, e->msg);
	return ret < 0 ? ret : inc_plain_check(e);
}

/*
 * Accepts connections until one is authenticated (with TLS) or the first one (without):
 * a peer that fails the TLS handshake was given nothing but OpenSSL's buffers, so it is
 * refused and the listener waits on for the real source.
 */
static int inc_accept(struct errbuf *e)
{
	for (;;) {
		char peer[80];
		uint64_t t0;
		int fd, ret;

		fd = accept4(inc.listen_fd, NULL, NULL, SOCK_CLOEXEC);
		if (fd < 0 && errno == EINTR)
			continue;
		if (fd < 0)
			return err_set(e, -errno, "accept: %s", strerror(errno));
		t0 = time_mono_ns();
		mig_peer_name(fd, peer, sizeof(peer));
		pthread_mutex_lock(&mig.lock);
		mig.fd = fd;
		mig.t_start = t0;
		mig.st.times.start = time_real_ns();
		mig.st.state = MIG_STATE_SETUP;
		pthread_mutex_unlock(&mig.lock);
		ret = mig_socket_timeouts(fd, MIG_IO_TIMEOUT_MS, e);
		if (ret < 0)
			return ret;
		/* one deadline for the source's part: from here (TLS handshake too) to CONFIG */
		ret = mig_deadline_start(&inc.dl, fd, e);
		if (ret < 0)
			return ret;
		mig_deadline_set(&inc.dl, MIG_SETUP_DEADLINE_MS, "the migration setup (TLS handshake, "
				 "stream header, HELLO, CONFIG)");
		ret = mig_deadline_check(&inc.dl, mig_channel_open(NULL, 0, e), e);
		if (ret == 0 || !mig.tls)
			return ret; /* inc_receive goes on under the same deadline */
		mig_deadline_stop(&inc.dl);
		log_warn("incoming migration: refused a connection from %s: %s; still waiting for "
			 "an authenticated source", peer, e->msg);
		if (ret == -EPROTONOSUPPORT)
			inc_refuse_plaintext(fd, e->msg);
		pthread_mutex_lock(&mig.lock);
		snprintf(mig.st.error, sizeof(mig.st.error), "refused %.80s: %.400s", peer,
			 e->msg);
		mig.st.state = MIG_STATE_NONE;
		close(mig.fd);
		mig.fd = -1;
		pthread_mutex_unlock(&mig.lock);
	}
}

static void *inc_thread(void *arg)
{
	struct errbuf e = { { 0 } };
	bool committed = false;
	int ret;

	(void)arg;
	ret = inc_accept(&e);
	if (ret == 0) {
		pthread_mutex_lock(&mig.lock);
		mig.st.error[0] = '\0';
		pthread_mutex_unlock(&mig.lock);
		ret = mig_deadline_check(&inc.dl, inc_receive(&e), &e);
		if (ret < 0 && mig_streams_error(&e, ret) == ret)
			mig_channel_error(&e, ret);
		inc_populate_stop();
		committed = inc.t_commit != 0 && inc_postcopy_active();
		inc_postcopy_cleanup();
	}
	inc_listen_close();
	mig_deadline_stop(&inc.dl); /* started for the connection inc_accept returned, if any */
	for (size_t i = 0; i < inc.nsecs; i++)
		free(inc.sec_data[i]);
	inc.nsecs = 0;
	state_inflater_free(inc.inflater);
	inc.inflater = NULL;
	pthread_mutex_lock(&mig.lock);
	mig.st.state = ret == 0 ? MIG_STATE_COMPLETED : MIG_STATE_FAILED;
	if (ret < 0)
		snprintf(mig.st.error, sizeof(mig.st.error), "%s", e.msg);
	mig.st.elapsed_ns = time_mono_ns() - mig.t_start;
	pthread_mutex_unlock(&mig.lock);
	mig_stream_close();
	mig_tls_free(mig.tls);
	mig.tls = NULL;
	if (ret < 0 && committed) {
		/* post-copy: this side holds the only current vCPU state; keep it for the operator */
		log_err("incoming migration failed after the switch: %s", e.msg);
	} else if (ret < 0) {
		log_err("incoming migration failed: %s; nothing was started", e.msg);
		if (evloop_call(mig.loop, inc_fail_cb, NULL) < 0)
			log_err("cannot stop the VM after a failed migration");
	} else {
		log_info("incoming migration completed: the guest runs here (downtime %.1f ms)",
			 (double)mig.st.downtime_ns / 1e6);
	}
	return NULL;
}

void mig_state_set_incoming(enum mig_state s)
{
	pthread_mutex_lock(&mig.lock);
	mig.st.state = s;
	pthread_mutex_unlock(&mig.lock);
}

int migration_incoming_start(struct vm *vm, struct evloop *loop, const char *uri,
			     const struct mig_incoming_opts *o, struct errbuf *e)
{
	struct mig_uri u;
	int ret;

	ret = mig_uri_parse(uri, &u, e);
	if (ret < 0)
		return ret;
	if (mig_tls_wanted(&o->tls)) {
		ret = mig_tls_create(&mig.tls, &o->tls, true, e);
		if (ret < 0)
			return ret;
	} else if (u.kind == MIG_URI_TCP && !o->insecure && !mig_uri_is_loopback(&u)) {
		return err_set(e, -EPERM, "--incoming %s: a migration listener on an address other "
					  "than loopback hands the VM to whoever connects first: give "
					  "--tls-dir or --tls-psk (or --insecure to accept plaintext)",
			       uri);
	}
	ret = mig_listen(&u, &inc.listen_fd, e);
	if (ret < 0) {
		mig_tls_free(mig.tls);
		mig.tls = NULL;
		return ret;
	}
	inc.o = *o;
	pthread_mutex_lock(&mig.lock);
	memset(&mig.st, 0, sizeof(mig.st));
	mig.st.incoming = true;
	mig.st.state = MIG_STATE_NONE;
	snprintf(mig.st.uri, sizeof(mig.st.uri), "%s", uri);
	snprintf(mig.st.dirty_tracking, sizeof(mig.st.dirty_tracking), "%s",
		 vm_dirty_mode_name(o->dirty));
	mig.vm = vm;
	mig.loop = loop;
	mig.t_start = time_mono_ns();
	ret = pthread_create(&mig.thread, NULL, inc_thread, NULL);
	if (ret == 0)
		mig.running = true;
	pthread_mutex_unlock(&mig.lock);
	if (ret) {
		close(inc.listen_fd);
		inc.listen_fd = -1;
		mig_tls_free(mig.tls);
		mig.tls = NULL;
		return err_set(e, -ret, "start the incoming migration thread: %s", strerror(ret));
	}
	return 0;
}

void mig_incoming_unblock(void)
{
	/* wakes a thread blocked in accept(): it then fails and exits */
	if (inc.listen_fd >= 0)
		shutdown(inc.listen_fd, SHUT_RDWR);
	inc_postcopy_unblock();
}
