/* SPDX-License-Identifier: MIT */
/*
 * The migration's TLS layer on its own: PSK files (format, key length, file mode), missing
 * X.509 files, and a PSK handshake over a socketpair whose channel carries a record stream
 * both ways (large pieces and gathered small ones), plus a wrong key refused on both sides.
 */
#include "migration/tls.h"
#include "state/record.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cmocka.h>

#define KEY_A "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
#define KEY_B "ff112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"

static char tmpdir[] = "/tmp/gw-test-tls.XXXXXX";

static const char *psk_write(const char *name, const char *text, mode_t mode)
{
	static char path[4][256];
	static unsigned n;
	char *p = path[n++ % 4];
	FILE *f;

	snprintf(p, 256, "%s/%s", tmpdir, name);
	f = fopen(p, "w");
	assert_non_null(f);
	fputs(text, f);
	fclose(f);
	assert_int_equal(chmod(p, mode), 0);
	return p;
}

static int psk_create(const char *text, mode_t mode, bool server, struct mig_tls **t,
		      struct errbuf *e)
{
	struct mig_tls_opts o = { 0 };

	snprintf(o.psk, sizeof(o.psk), "%s", psk_write("k.psk", text, mode));
	return mig_tls_create(t, &o, server, e);
}

static void expect_psk_error(const char *text, mode_t mode, int want, const char *msg)
{
	struct mig_tls *t = NULL;
	struct errbuf e;
	int ret = psk_create(text, mode, true, &t, &e);

	if (ret != want || !strstr(e.msg, msg))
		fail_msg("PSK file \"%s\" (mode %o): %d \"%s\"; want %d and \"%s\"", text, mode, ret,
			 ret ? e.msg : "", want, msg);
	assert_null(t);
}

static void test_psk_file(void **state)
{
	struct mig_tls *t = NULL;
	struct errbuf e;

	assert_int_equal(psk_create("# comment\n\nid:" KEY_A "\r\nother:" KEY_B "\n", 0600, true,
				    &t, &e), 0);
	mig_tls_free(t);
	expect_psk_error("id:" KEY_A "\n", 0640, -EPERM, "accessible by group or others");
	expect_psk_error("id:" KEY_A "\n", 0604, -EPERM, "accessible by group or others");
	expect_psk_error("# nothing\n", 0600, -EINVAL, "holds no key");
	expect_psk_error(KEY_A "\n", 0600, -EINVAL, "line 1: expected identity:hexkey");
	expect_psk_error("id:abc\n", 0600, -EINVAL, "line 1: the key must be 16 to 64 bytes");
	expect_psk_error("id:00112233445566778899aabbccddee\n", 0600, -EINVAL, "16 to 64 bytes");
	expect_psk_error("ok:" KEY_A "\nid:" KEY_A "zz\n", 0600, -EINVAL, "line 2");
	expect_psk_error("id:0011223344556677889gaabbccddeeff\n", 0600, -EINVAL, "not hex");
	expect_psk_error("i d:" KEY_A "\n", 0600, -EINVAL, "not printable");
}

static void test_x509_missing(void **state)
{
	struct mig_tls_opts o = { 0 };
	struct mig_tls *t = NULL;
	struct errbuf e;

	snprintf(o.dir, sizeof(o.dir), "%s/nowhere", tmpdir);
	assert_int_equal(mig_tls_create(&t, &o, true, &e), -ENOENT);
	assert_non_null(strstr(e.msg, "ca-cert.pem"));
	assert_null(t);
	snprintf(o.psk, sizeof(o.psk), "x");
	assert_int_equal(mig_tls_create(&t, &o, true, &e), -EINVAL);
	assert_non_null(strstr(e.msg, "exclude each other"));
}

struct side {
	struct mig_tls *t;
	int fd;
	struct channel *ch;
	struct mig_tls_info info;
	struct errbuf e;
	int ret;
};

static void *side_handshake(void *arg)
{
	struct side *s = arg;

	s->ret = mig_tls_handshake(s->t, s->fd, "unused", time_mono_ns() + 10000000000ull, &s->ch,
				   &s->info, &s->e);
	return NULL;
}

/* Handshakes a server with key server_key and a client with client_key on a socketpair. */
static void pair(const char *server_key, const char *client_key, struct side *srv,
		 struct side *cli)
{
	char text[256];
	int sv[2];
	pthread_t th;
	struct errbuf e;

	memset(srv, 0, sizeof(*srv));
	memset(cli, 0, sizeof(*cli));
	snprintf(text, sizeof(text), "godwit:%s\n", server_key);
	assert_int_equal(psk_create(text, 0600, true, &srv->t, &e), 0);
	snprintf(text, sizeof(text), "godwit:%s\n", client_key);
	assert_int_equal(psk_create(text, 0600, false, &cli->t, &e), 0);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	srv->fd = sv[0];
	cli->fd = sv[1];
	assert_int_equal(pthread_create(&th, NULL, side_handshake, srv), 0);
	side_handshake(cli);
	pthread_join(th, NULL);
}

static void unpair(struct side *srv, struct side *cli)
{
	channel_free(srv->ch);
	channel_free(cli->ch);
	close(srv->fd);
	close(cli->fd);
	mig_tls_free(srv->t);
	mig_tls_free(cli->t);
}

#define NPAGES 64

static uint8_t pages[NPAGES][STATE_PAGE_SIZE];

/* The client's stream: small records gathered, one large record, a stable PAGES batch. */
static void *side_write(void *arg)
{
	static uint8_t big[100000];
	struct state_config cfg = { .nr_vcpus = 1, .nr_regions = 1,
				    .regions = { { 0, NPAGES * STATE_PAGE_SIZE } },
				    .machine = "test" };
	struct state_page pg[NPAGES];
	struct side *s = arg;
	struct state_writer *w;

	for (int i = 0; i < NPAGES; i++) {
		memset(pages[i], i + 1, sizeof(pages[i]));
		pg[i] = (struct state_page){ .gpa = (uint64_t)i * STATE_PAGE_SIZE,
					     .data = i % 7 ? pages[i] : NULL };
	}
	memset(big, 0x5a, sizeof(big));
	s->ret = state_writer_open_channel(&w, s->ch, STATE_KIND_MIGRATION, &s->e);
	if (s->ret)
		return NULL;
	s->ret = state_writer_record(w, 0x100, "hello", 5, &s->e);
	if (!s->ret)
		s->ret = state_writer_record(w, 0x101, big, sizeof(big), &s->e);
	if (!s->ret)
		s->ret = state_writer_config(w, &cfg, &s->e);
	if (!s->ret)
		s->ret = state_writer_pages(w, pg, NPAGES, STATE_PAGES_STABLE, &s->e);
	if (!s->ret)
		s->ret = state_writer_flush(w, &s->e);
	state_writer_free(w);
	return NULL;
}

static void test_psk_stream(void **state)
{
	struct state_reader_opts ro = { .kind = STATE_KIND_MIGRATION, .allow_control = true };
	struct state_pages_iter it;
	struct state_page got;
	struct side srv, cli;
	struct state_reader *r;
	struct state_record rec;
	struct errbuf e;
	pthread_t th;
	int n = 0;

	pair(KEY_A, KEY_A, &srv, &cli);
	assert_int_equal(srv.ret, 0);
	assert_int_equal(cli.ret, 0);
	assert_string_equal(srv.info.peer, "psk:godwit");
	assert_string_equal(cli.info.peer, "psk:godwit");
	assert_string_equal(srv.info.version, "TLSv1.3");
	assert_true(!strcmp(cli.info.offload, "userspace") || !strcmp(cli.info.offload, "kernel"));
	assert_int_equal(pthread_create(&th, NULL, side_write, &cli), 0);
	assert_int_equal(state_reader_open_channel(&r, srv.ch, &ro, &e), 0);
	assert_int_equal(state_reader_next(r, &rec, &e), 0);
	assert_int_equal(rec.type, 0x100);
	assert_int_equal(rec.len, 5);
	assert_memory_equal(rec.payload, "hello", 5);
	assert_int_equal(state_reader_next(r, &rec, &e), 0);
	assert_int_equal(rec.type, 0x101);
	assert_int_equal(rec.len, 100000);
	for (uint64_t i = 0; i < rec.len; i++)
		if (rec.payload[i] != 0x5a)
			fail_msg("byte %llu of the large record differs", (unsigned long long)i);
	assert_int_equal(state_reader_next(r, &rec, &e), 0);
	assert_int_equal(rec.type, STATE_REC_CONFIG);
	assert_int_equal(state_reader_next(r, &rec, &e), 0);
	assert_int_equal(rec.type, STATE_REC_PAGES);
	assert_int_equal(state_pages_decode(rec.payload, rec.len, &it, &e), 0);
	while (state_pages_next(&it, &got)) {
		assert_int_equal(got.gpa, (uint64_t)n * STATE_PAGE_SIZE);
		if (n % 7)
			assert_memory_equal(got.data, pages[n], STATE_PAGE_SIZE);
		else
			assert_null(got.data);
		n++;
	}
	assert_int_equal(n, NPAGES);
	pthread_join(th, NULL);
	assert_int_equal(cli.ret, 0);
	state_reader_free(r);
	unpair(&srv, &cli);
}

/* ---- one channel, two threads (post-copy: pages one way, requests the other) ---- */

#define DUPLEX_BYTES (4u << 20)
#define DUPLEX_CHUNK 65536

struct duplex {
	struct channel *ch;
	uint8_t seed;     /* what this side's writer sends: byte i is seed + i * 7 */
	uint8_t peer;     /* what its reader expects */
	uint64_t got;     /* bytes read and checked */
	int ret;
};

static void *duplex_write(void *arg)
{
	static _Thread_local uint8_t buf[DUPLEX_CHUNK];
	struct duplex *d = arg;

	for (uint64_t off = 0; off < DUPLEX_BYTES && !d->ret;) {
		struct iovec iov;
		ssize_t n;

		for (unsigned i = 0; i < DUPLEX_CHUNK; i++)
			buf[i] = (uint8_t)(d->seed + (off + i) * 7);
		iov = (struct iovec){ buf, DUPLEX_CHUNK };
		while (iov.iov_len && !d->ret) {
			n = channel_writev(d->ch, &iov, 1);
			if (n <= 0)
				d->ret = n < 0 ? (int)n : -EPIPE;
			else
				iov = (struct iovec){ (uint8_t *)iov.iov_base + n, iov.iov_len - (size_t)n };
		}
		off += DUPLEX_CHUNK;
	}
	return NULL;
}

static void *duplex_read(void *arg)
{
	static _Thread_local uint8_t buf[DUPLEX_CHUNK];
	struct duplex *d = arg;

	while (d->got < DUPLEX_BYTES) {
		ssize_t n = channel_read(d->ch, buf, sizeof(buf));

		if (n <= 0) {
			d->ret = n < 0 ? (int)n : -EPIPE;
			return NULL;
		}
		for (ssize_t i = 0; i < n; i++)
			if (buf[i] != (uint8_t)(d->peer + (d->got + (uint64_t)i) * 7)) {
				d->ret = -EBADMSG;
				return NULL;
			}
		d->got += (uint64_t)n;
	}
	return NULL;
}

static void *duplex_read_one(void *arg)
{
	struct duplex *d = arg;
	uint8_t b;

	d->ret = (int)channel_read(d->ch, &b, 1);
	return NULL;
}

/*
 * Both sides write 4 MiB while reading the other's 4 MiB on the same channel from another
 * thread: every byte arrives in order both ways, and neither thread waits for the other (a
 * reader waiting for data never holds up the writer). A quiet channel times out like a
 * blocking socket, and a shutdown wakes a reader waiting on it.
 */
static void test_two_threads(void **state)
{
	struct side srv, cli;
	struct duplex sw, sr, cw, cr, one;
	struct timeval tv = { 0, 100000 };
	pthread_t th[4];
	uint8_t b;

	pair(KEY_A, KEY_A, &srv, &cli);
	assert_int_equal(srv.ret, 0);
	assert_int_equal(cli.ret, 0);
	sw = (struct duplex){ .ch = srv.ch, .seed = 3 };
	sr = (struct duplex){ .ch = srv.ch, .peer = 11 };
	cw = (struct duplex){ .ch = cli.ch, .seed = 11 };
	cr = (struct duplex){ .ch = cli.ch, .peer = 3 };
	assert_int_equal(pthread_create(&th[0], NULL, duplex_read, &sr), 0);
	assert_int_equal(pthread_create(&th[1], NULL, duplex_read, &cr), 0);
	assert_int_equal(pthread_create(&th[2], NULL, duplex_write, &sw), 0);
	assert_int_equal(pthread_create(&th[3], NULL, duplex_write, &cw), 0);
	for (int i = 0; i < 4; i++)
		pthread_join(th[i], NULL);
	assert_int_equal(sw.ret, 0);
	assert_int_equal(cw.ret, 0);
	assert_int_equal(sr.ret, 0);
	assert_int_equal(cr.ret, 0);
	assert_int_equal(sr.got, DUPLEX_BYTES);
	assert_int_equal(cr.got, DUPLEX_BYTES);

	/* nothing to read: the socket's receive timeout ends the wait */
	assert_int_equal(setsockopt(cli.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)), 0);
	assert_int_equal(channel_read(cli.ch, &b, 1), -EAGAIN);
	/* a reader waiting without a timeout is woken by a shutdown from another thread */
	tv = (struct timeval){ 0 };
	assert_int_equal(setsockopt(cli.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)), 0);
	one = (struct duplex){ .ch = cli.ch, .ret = 1 };
	assert_int_equal(pthread_create(&th[0], NULL, duplex_read_one, &one), 0);
	usleep(50000);
	channel_shutdown(cli.ch);
	pthread_join(th[0], NULL);
	assert_true(one.ret <= 0);
	unpair(&srv, &cli);
}

static void test_psk_wrong_key(void **state)
{
	struct side srv, cli;

	pair(KEY_A, KEY_B, &srv, &cli);
	assert_int_equal(srv.ret, -EACCES);
	assert_non_null(strstr(srv.e.msg, "PSK identity or key does not match"));
	assert_true(cli.ret < 0);
	assert_null(srv.ch);
	assert_null(cli.ch);
	unpair(&srv, &cli);
}

/* A peer that sends nothing, or half a ClientHello, is given up at the deadline. */
static void test_stalled_peer(void **state)
{
	struct mig_tls *t = NULL;
	struct mig_tls_info info;
	struct channel *ch = NULL;
	struct errbuf e;
	int sv[2];

	assert_int_equal(psk_create("godwit:" KEY_A "\n", 0600, true, &t, &e), 0);
	for (int half = 0; half < 2; half++) {
		assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
		if (half)
			assert_int_equal(write(sv[1], "\x16\x03\x01\x02\x00\x01", 6), 6);
		assert_int_equal(mig_tls_handshake(t, sv[0], "x", time_mono_ns() + 200000000ull,
						   &ch, &info, &e), -ETIMEDOUT);
		assert_non_null(strstr(e.msg, "stalled"));
		assert_null(ch);
		close(sv[0]);
		close(sv[1]);
	}
	mig_tls_free(t);
}

static int setup(void **state)
{
	return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown(void **state)
{
	char cmd[128];

	snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
	return system(cmd) == 0 ? 0 : -1;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_psk_file),
		cmocka_unit_test(test_x509_missing),
		cmocka_unit_test(test_psk_stream),
		cmocka_unit_test(test_two_threads),
		cmocka_unit_test(test_psk_wrong_key),
		cmocka_unit_test(test_stalled_peer),
	};

	signal(SIGPIPE, SIG_IGN); /* a refused peer's socket closes under a write: an error */
	return cmocka_run_group_tests(tests, setup, teardown);
}
