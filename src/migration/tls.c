/* SPDX-License-Identifier: MIT */
/*
 * TLS 1.3 for the migration channel: credentials, the handshake under a deadline, and the
 * TLS channel the record reader and writer use. Nothing the peer sends reaches the stream
 * parser before the handshake has authenticated it; OpenSSL's own record buffers (a few
 * tens of KiB) are all a destination holds for an unauthenticated peer.
 *
 * Post-copy reads and writes one channel from two threads (pages one way, page requests
 * the other). One SSL object must never be entered by two threads at once, so after the
 * handshake the socket stays non-blocking: every SSL call runs under the channel's lock
 * and never blocks, and a thread waits for the socket in poll() with the lock released,
 * so a reader waiting for a request never holds up a writer sending pages.
 */
#include "migration/tls.h"

#include "state/record.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#define TLS_PSK_MAX 16	       /* entries in a PSK file */
#define TLS_PSK_KEY_MIN 16     /* bytes: shorter keys are refused as guessable */
#define TLS_PSK_KEY_MAX 64
#define TLS_PSK_ID_MAX 127
#define TLS_PSK_FILE_MAX 65536
#define TLS_WBUF 65536	       /* small pieces are gathered into TLS records this large */
#define TLS_DIRECT_MIN 16384   /* a piece this large is handed to OpenSSL as it is */

struct tls_psk {
	char identity[TLS_PSK_ID_MAX + 1];
	uint8_t key[TLS_PSK_KEY_MAX];
	size_t key_len;
};

struct mig_tls {
	SSL_CTX *ctx;
	bool server;
	bool x509; /* else PSK */
	struct tls_psk psk[TLS_PSK_MAX];
	unsigned npsk;
};

struct tls_channel {
	struct channel ch;
	struct mig_tls *t;
	pthread_mutex_t lock; /* held for every call on ssl, never while waiting */
	SSL *ssl;
	bool ktls_send;
	char psk_identity[TLS_PSK_ID_MAX + 1]; /* the identity a PSK handshake used */
	char err[256];
	uint8_t *wbuf;
};

bool mig_tls_wanted(const struct mig_tls_opts *o)
{
	return o->dir[0] || o->psk[0];
}

/* OpenSSL's most recent reason, or fallback. */
static const char *tls_reason(const char *fallback)
{
	unsigned long err = ERR_peek_last_error();
	const char *r = err ? ERR_reason_error_string(err) : NULL;

	return r ? r : fallback;
}

/* A private key or PSK file: a regular file that no one but its owner can read. */
static int tls_secret_check(const char *path, const char *what, struct errbuf *e)
{
	struct stat st;

	if (stat(path, &st) < 0)
		return err_set(e, -errno, "%s %s: %s", what, path, strerror(errno));
	if (!S_ISREG(st.st_mode))
		return err_set(e, -EINVAL, "%s %s: not a regular file", what, path);
	if (st.st_mode & (S_IRWXG | S_IRWXO))
		return err_set(e, -EPERM, "%s %s is accessible by group or others (mode %04o): "
					  "refusing it (chmod 600 %s)", what, path,
			       (unsigned)(st.st_mode & 07777), path);
	return 0;
}

static int tls_file(char *out, size_t n, const char *dir, const char *name, struct errbuf *e)
{
	if ((size_t)snprintf(out, n, "%s/%s", dir, name) >= n)
		return err_set(e, -ENAMETOOLONG, "--tls-dir %s: path too long", dir);
	return 0;
}

static int tls_x509_load(struct mig_tls *t, const char *dir, struct errbuf *e)
{
	const char *role = t->server ? "server" : "client";
	char ca[MIG_TLS_PATH_MAX + 32], cert[MIG_TLS_PATH_MAX + 32], key[MIG_TLS_PATH_MAX + 32];
	char name[32];
	int ret;

	if (tls_file(ca, sizeof(ca), dir, "ca-cert.pem", e) < 0)
		return -ENAMETOOLONG;
	snprintf(name, sizeof(name), "%s-cert.pem", role);
	if (tls_file(cert, sizeof(cert), dir, name, e) < 0)
		return -ENAMETOOLONG;
	snprintf(name, sizeof(name), "%s-key.pem", role);
	if (tls_file(key, sizeof(key), dir, name, e) < 0)
		return -ENAMETOOLONG;
	if (access(ca, R_OK) < 0)
		return err_set(e, -errno, "TLS CA certificate %s: %s", ca, strerror(errno));
	if (SSL_CTX_load_verify_locations(t->ctx, ca, NULL) != 1)
		return err_set(e, -EINVAL, "TLS CA certificate %s: %s", ca,
			       tls_reason("cannot be loaded"));
	/* the source may go without a certificate; the destination then refuses it */
	if (!t->server && access(cert, F_OK) < 0 && errno == ENOENT)
		goto verify;
	if (access(cert, R_OK) < 0)
		return err_set(e, -errno, "TLS certificate %s: %s", cert, strerror(errno));
	ret = tls_secret_check(key, "TLS private key", e);
	if (ret < 0)
		return ret;
	if (SSL_CTX_use_certificate_chain_file(t->ctx, cert) != 1)
		return err_set(e, -EINVAL, "TLS certificate %s: %s", cert,
			       tls_reason("cannot be loaded"));
	if (SSL_CTX_use_PrivateKey_file(t->ctx, key, SSL_FILETYPE_PEM) != 1)
		return err_set(e, -EINVAL, "TLS private key %s: %s", key,
			       tls_reason("cannot be loaded"));
	if (SSL_CTX_check_private_key(t->ctx) != 1)
		return err_set(e, -EINVAL, "TLS private key %s does not match certificate %s", key,
			       cert);
verify:
	SSL_CTX_set_verify(t->ctx, SSL_VERIFY_PEER |
			   (t->server ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT : 0), NULL);
	return 0;
}

static int tls_hex(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* One `identity:hexkey` line (QEMU's tls-creds-psk format). */
static int tls_psk_line(struct tls_psk *p, const char *line, const char *path, unsigned lineno,
			struct errbuf *e)
{
	const char *colon = strchr(line, ':'), *hex;
	size_t idlen, hexlen;

	if (!colon || colon == line)
		return err_set(e, -EINVAL, "TLS PSK file %s line %u: expected identity:hexkey", path,
			       lineno);
	idlen = (size_t)(colon - line);
	if (idlen > TLS_PSK_ID_MAX)
		return err_set(e, -EINVAL, "TLS PSK file %s line %u: identity longer than %d bytes",
			       path, lineno, TLS_PSK_ID_MAX);
	for (size_t i = 0; i < idlen; i++)
		if ((unsigned char)line[i] < 0x21 || (unsigned char)line[i] > 0x7e)
			return err_set(e, -EINVAL, "TLS PSK file %s line %u: identity is not printable",
				       path, lineno);
	hex = colon + 1;
	hexlen = strlen(hex);
	if (hexlen % 2 || hexlen / 2 < TLS_PSK_KEY_MIN || hexlen / 2 > TLS_PSK_KEY_MAX)
		return err_set(e, -EINVAL, "TLS PSK file %s line %u: the key must be %d to %d bytes "
					   "in hex", path, lineno, TLS_PSK_KEY_MIN, TLS_PSK_KEY_MAX);
	for (size_t i = 0; i < hexlen / 2; i++) {
		int hi = tls_hex(hex[2 * i]), lo = tls_hex(hex[2 * i + 1]);

		if (hi < 0 || lo < 0)
			return err_set(e, -EINVAL, "TLS PSK file %s line %u: the key is not hex",
				       path, lineno);
		p->key[i] = (uint8_t)(hi << 4 | lo);
	}
	memcpy(p->identity, line, idlen);
	p->identity[idlen] = '\0';
	p->key_len = hexlen / 2;
	return 0;
}

static int tls_psk_load(struct mig_tls *t, const char *path, struct errbuf *e)
{
	char *text, *line, *save = NULL;
	unsigned lineno = 0;
	ssize_t n;
	int fd, ret;

	ret = tls_secret_check(path, "TLS PSK file", e);
	if (ret < 0)
		return ret;
	text = calloc(1, TLS_PSK_FILE_MAX + 1);
	if (!text)
		return err_set(e, -ENOMEM, "out of memory");
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		ret = err_set(e, -errno, "TLS PSK file %s: %s", path, strerror(errno));
		goto out;
	}
	n = read(fd, text, TLS_PSK_FILE_MAX + 1);
	close(fd);
	if (n < 0 || n > TLS_PSK_FILE_MAX) {
		ret = err_set(e, n < 0 ? -errno : -EFBIG, "TLS PSK file %s: %s", path,
			      n < 0 ? strerror(errno) : "larger than 64 KiB");
		goto out;
	}
	for (line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		size_t len = strlen(line);

		lineno++;
		if (len && line[len - 1] == '\r')
			line[--len] = '\0';
		if (!len || line[0] == '#')
			continue;
		if (t->npsk == TLS_PSK_MAX) {
			ret = err_set(e, -E2BIG, "TLS PSK file %s: more than %d keys", path,
				      TLS_PSK_MAX);
			goto out;
		}
		ret = tls_psk_line(&t->psk[t->npsk], line, path, lineno, e);
		if (ret < 0)
			goto out;
		t->npsk++;
	}
	ret = t->npsk ? 0 : err_set(e, -EINVAL, "TLS PSK file %s holds no key", path);
out:
	OPENSSL_cleanse(text, TLS_PSK_FILE_MAX + 1);
	free(text);
	return ret;
}

/* A TLS 1.3 session carrying an external PSK (TLS_AES_128_GCM_SHA256 as its hash). */
static SSL_SESSION *tls_psk_session(SSL *ssl, const struct tls_psk *p)
{
	static const unsigned char aes128gcm[] = { 0x13, 0x01 };
	const SSL_CIPHER *c = SSL_CIPHER_find(ssl, aes128gcm);
	SSL_SESSION *s = c ? SSL_SESSION_new() : NULL;

	if (s && (!SSL_SESSION_set1_master_key(s, p->key, p->key_len) ||
		  !SSL_SESSION_set_cipher(s, c) ||
		  !SSL_SESSION_set_protocol_version(s, TLS1_3_VERSION))) {
		SSL_SESSION_free(s);
		s = NULL;
	}
	return s;
}

/* The source offers the first key of its file. */
static int tls_psk_use_cb(SSL *ssl, const EVP_MD *md, const unsigned char **id, size_t *idlen,
			  SSL_SESSION **sess)
{
	struct tls_channel *tc = SSL_get_app_data(ssl);
	const struct tls_psk *p = &tc->t->psk[0];
	SSL_SESSION *s = tls_psk_session(ssl, p);

	*sess = NULL;
	*id = NULL;
	*idlen = 0;
	if (!s)
		return 0;
	if (md && md != SSL_CIPHER_get_handshake_digest(SSL_SESSION_get0_cipher(s))) {
		SSL_SESSION_free(s); /* after a HelloRetryRequest for another hash: no PSK */
		return 1;
	}
	*sess = s;
	*id = (const unsigned char *)p->identity;
	*idlen = strlen(p->identity);
	snprintf(tc->psk_identity, sizeof(tc->psk_identity), "%s", p->identity);
	return 1;
}

/* The destination knows every key of its file, by identity. */
static int tls_psk_find_cb(SSL *ssl, const unsigned char *id, size_t idlen, SSL_SESSION **sess)
{
	struct tls_channel *tc = SSL_get_app_data(ssl);

	*sess = NULL;
	for (unsigned i = 0; i < tc->t->npsk; i++) {
		const struct tls_psk *p = &tc->t->psk[i];

		if (strlen(p->identity) != idlen || memcmp(p->identity, id, idlen))
			continue;
		*sess = tls_psk_session(ssl, p);
		if (!*sess)
			return 0;
		snprintf(tc->psk_identity, sizeof(tc->psk_identity), "%s", p->identity);
		break;
	}
	return 1; /* an unknown identity: no PSK, and without a certificate the handshake fails */
}

/* In PSK mode no certificate is trusted, whoever presents one. */
static int tls_no_cert_cb(int ok, X509_STORE_CTX *x)
{
	(void)ok;
	X509_STORE_CTX_set_error(x, X509_V_ERR_CERT_REJECTED);
	return 0;
}

int mig_tls_create(struct mig_tls **tp, const struct mig_tls_opts *o, bool server,
		   struct errbuf *e)
{
	struct mig_tls *t;
	int ret;

	*tp = NULL;
	if (o->dir[0] && o->psk[0])
		return err_set(e, -EINVAL, "--tls-dir and --tls-psk exclude each other");
	t = calloc(1, sizeof(*t));
	if (!t)
		return err_set(e, -ENOMEM, "out of memory");
	t->server = server;
	t->x509 = o->dir[0];
	ERR_clear_error();
	t->ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
	if (!t->ctx) {
		ret = err_set(e, -ENOMEM, "TLS: %s", tls_reason("cannot create a context"));
		goto fail;
	}
	SSL_CTX_set_min_proto_version(t->ctx, TLS1_3_VERSION);
	SSL_CTX_set_max_proto_version(t->ctx, TLS1_3_VERSION);
	/* AES-128-GCM first: AES-NI makes it the cheapest per byte, and it is ample */
	SSL_CTX_set_ciphersuites(t->ctx, "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:"
					 "TLS_CHACHA20_POLY1305_SHA256");
	/* one connection per migration: no session tickets, no resumption */
	SSL_CTX_set_num_tickets(t->ctx, 0);
	SSL_CTX_set_session_cache_mode(t->ctx, SSL_SESS_CACHE_OFF);
	/* read what the socket has, not a 5-byte record header and then its body */
	SSL_CTX_set_read_ahead(t->ctx, 1);
	/* a cut link is the record stream's to report (it has its own END and framing) */
	SSL_CTX_set_options(t->ctx, SSL_OP_IGNORE_UNEXPECTED_EOF | SSL_OP_NO_TICKET);
#ifdef SSL_OP_ENABLE_KTLS
	SSL_CTX_set_options(t->ctx, SSL_OP_ENABLE_KTLS);
#endif
	if (t->x509) {
		ret = tls_x509_load(t, o->dir, e);
	} else {
		ret = tls_psk_load(t, o->psk, e);
		if (server)
			SSL_CTX_set_psk_find_session_callback(t->ctx, tls_psk_find_cb);
		else
			SSL_CTX_set_psk_use_session_callback(t->ctx, tls_psk_use_cb);
		/* a server asks for no certificate; a client trusts none it is shown */
		if (!server)
			SSL_CTX_set_verify(t->ctx, SSL_VERIFY_PEER, tls_no_cert_cb);
	}
	if (ret < 0)
		goto fail;
	*tp = t;
	return 0;
fail:
	mig_tls_free(t);
	return ret;
}

void mig_tls_free(struct mig_tls *t)
{
	if (!t)
		return;
	SSL_CTX_free(t->ctx);
	OPENSSL_cleanse(t->psk, sizeof(t->psk));
	free(t);
}

/* ---- the channel ---- */

static void tls_channel_error(struct tls_channel *tc, int sslerr)
{
	unsigned long err = ERR_peek_last_error();

	if (sslerr == SSL_ERROR_SSL && err)
		snprintf(tc->err, sizeof(tc->err), "%s", tls_reason("TLS error"));
	ERR_clear_error();
}

/* Maps a failed SSL_read/SSL_write (sslerr, errno saved) to a negative errno. */
static ssize_t tls_io_fail(struct tls_channel *tc, int sslerr, int saved)
{
	switch (sslerr) {
	case SSL_ERROR_ZERO_RETURN:
		return 0;
	case SSL_ERROR_SYSCALL:
		ERR_clear_error();
		return saved ? -saved : 0;
	default:
		tls_channel_error(tc, sslerr);
		/* a record that fails authentication, or an alert: the stream cannot be trusted */
		return -EBADMSG;
	}
}

/*
 * Waits, without the lock, until the socket can give what OpenSSL asked for (sslerr: WANT_READ
 * or WANT_WRITE), for at most the socket's own receive or send timeout, as a blocking socket
 * would: -EAGAIN when it passes. A shut-down socket wakes the wait; the retried call fails.
 */
static int tls_wait(struct tls_channel *tc, int sslerr)
{
	bool rd = sslerr == SSL_ERROR_WANT_READ;
	struct pollfd p = { .fd = tc->ch.fd, .events = rd ? POLLIN : POLLOUT };
	struct timeval tv = { 0 };
	socklen_t len = sizeof(tv);
	int ms = -1, r;

	if (getsockopt(tc->ch.fd, SOL_SOCKET, rd ? SO_RCVTIMEO : SO_SNDTIMEO, &tv, &len) == 0 &&
	    (tv.tv_sec || tv.tv_usec))
		ms = (int)MIN((int64_t)tv.tv_sec * 1000 + (tv.tv_usec + 999) / 1000, INT32_MAX);
	do
		r = poll(&p, 1, ms);
	while (r < 0 && errno == EINTR);
	if (r == 0)
		return -EAGAIN;
	return r < 0 ? -errno : 0;
}

/*
 * One SSL_read_ex or SSL_write_ex (write: p is const) under the lock, waiting outside it
 * until it completes; a write is retried with the same buffer, as OpenSSL requires.
 */
static ssize_t tls_io(struct tls_channel *tc, bool write, void *p, size_t len)
{
	for (;;) {
		size_t n = 0;
		int r, sslerr, saved, ret;

		pthread_mutex_lock(&tc->lock);
		ERR_clear_error();
		errno = 0;
		r = write ? SSL_write_ex(tc->ssl, p, len, &n) : SSL_read_ex(tc->ssl, p, len, &n);
		if (r == 1) {
			pthread_mutex_unlock(&tc->lock);
			return (ssize_t)n;
		}
		saved = errno;
		sslerr = SSL_get_error(tc->ssl, r);
		if (sslerr != SSL_ERROR_WANT_READ && sslerr != SSL_ERROR_WANT_WRITE) {
			ssize_t fail = tls_io_fail(tc, sslerr, saved);

			pthread_mutex_unlock(&tc->lock);
			return write && !fail ? -EPIPE : fail;
		}
		pthread_mutex_unlock(&tc->lock);
		ret = tls_wait(tc, sslerr);
		if (ret < 0)
			return ret;
	}
}

static ssize_t tls_channel_read(struct channel *c, void *p, size_t len)
{
	return tls_io((struct tls_channel *)c, false, p, len);
}

static ssize_t tls_write_all(struct tls_channel *tc, const void *p, size_t len)
{
	return tls_io(tc, true, (void *)p, len);
}

/* Kernel TLS: the socket encrypts; the lock keeps records whole beside OpenSSL's own. */
static ssize_t tls_ktls_writev(struct tls_channel *tc, const struct iovec *iov, int n)
{
	struct msghdr msg = { .msg_iov = (struct iovec *)iov, .msg_iovlen = (size_t)n };

	for (;;) {
		ssize_t done;
		int ret;

		pthread_mutex_lock(&tc->lock);
		do
			done = sendmsg(tc->ch.fd, &msg, MSG_NOSIGNAL);
		while (done < 0 && errno == EINTR);
		ret = done < 0 ? -errno : 0;
		pthread_mutex_unlock(&tc->lock);
		if (done >= 0)
			return done;
		if (ret != -EAGAIN)
			return ret;
		ret = tls_wait(tc, SSL_ERROR_WANT_WRITE);
		if (ret < 0)
			return ret;
	}
}

/*
 * With kernel TLS the iovecs go to the socket as they are (the kernel encrypts, no copy
 * here). In userspace a large piece is encrypted straight from where it lies; small ones
 * are gathered first so that TLS records stay full-sized.
 */
static ssize_t tls_channel_writev(struct channel *c, const struct iovec *iov, int n)
{
	struct tls_channel *tc = (struct tls_channel *)c;
	size_t used = 0;

	if (tc->ktls_send)
		return tls_ktls_writev(tc, iov, n);
	if (n > 0 && iov[0].iov_len >= TLS_DIRECT_MIN)
		return tls_write_all(tc, iov[0].iov_base, iov[0].iov_len);
	for (int i = 0; i < n && used < TLS_WBUF; i++) {
		size_t k = MIN(iov[i].iov_len, TLS_WBUF - used);

		if (iov[i].iov_len >= TLS_DIRECT_MIN && used)
			break; /* send what is gathered; the large piece goes next time */
		memcpy(tc->wbuf + used, iov[i].iov_base, k);
		used += k;
	}
	if (!used)
		return 0;
	return tls_write_all(tc, tc->wbuf, used);
}

static void tls_channel_shutdown(struct channel *c)
{
	/* the socket, not the session: this unblocks another thread's read or write */
	shutdown(c->fd, SHUT_RDWR);
}

static void tls_channel_free(struct channel *c)
{
	struct tls_channel *tc = (struct tls_channel *)c;

	SSL_free(tc->ssl);
	pthread_mutex_destroy(&tc->lock);
	free(tc->wbuf);
	free(tc);
}

static const struct channel_ops tls_channel_ops = {
	.read = tls_channel_read,
	.writev = tls_channel_writev,
	.shutdown = tls_channel_shutdown,
	.free = tls_channel_free,
};

const char *mig_tls_channel_error(struct channel *ch)
{
	if (!ch || ch->ops != &tls_channel_ops)
		return NULL;
	return ((struct tls_channel *)ch)->err[0] ? ((struct tls_channel *)ch)->err : NULL;
}

/* ---- the handshake ---- */

static bool tls_is_ip(const char *host)
{
	unsigned char buf[16];

	return inet_pton(AF_INET, host, buf) == 1 || inet_pton(AF_INET6, host, buf) == 1;
}

/* How long poll may wait for deadline_ns: -1 for ever (0: no deadline), 0 if it passed. */
static int tls_poll_ms(uint64_t deadline_ns)
{
	uint64_t now = time_mono_ns();

	if (!deadline_ns)
		return -1;
	if (now >= deadline_ns)
		return 0;
	return (int)MIN((deadline_ns - now) / 1000000 + 1, 3600000ull);
}

/* A plaintext godwit stream on a TLS listener starts with the stream magic. */
static bool tls_peer_is_plaintext(int fd)
{
	char b[STATE_MAGIC_LEN];
	ssize_t n = recv(fd, b, sizeof(b), MSG_PEEK | MSG_DONTWAIT);

	return n >= 1 && !memcmp(b, STATE_MAGIC, (size_t)n);
}

static int tls_handshake_fail(struct tls_channel *tc, int r, struct errbuf *e)
{
	int sslerr = SSL_get_error(tc->ssl, r), saved = errno;
	long v = SSL_get_verify_result(tc->ssl);
	const char *peer = tc->t->server ? "the source" : "the destination";
	unsigned long err = ERR_peek_last_error();
	const char *reason = err ? ERR_reason_error_string(err) : NULL;

	if (v != X509_V_OK && tc->t->x509)
		return err_set(e, -EACCES, "TLS handshake: %s's certificate was refused: %s", peer,
			       X509_verify_cert_error_string(v));
	if (sslerr == SSL_ERROR_SYSCALL || sslerr == SSL_ERROR_ZERO_RETURN ||
	    (sslerr == SSL_ERROR_SSL && err &&
	     ERR_GET_REASON(err) == SSL_R_UNEXPECTED_EOF_WHILE_READING))
		return err_set(e, saved ? -saved : -ECONNRESET,
			       "TLS handshake: %s closed the connection (%s)%s", peer,
			       saved ? strerror(saved) : "end of stream",
			       tc->t->server ? "" : "; is it listening without TLS, or did it "
						    "refuse this source's credentials?");
	if (!tc->t->x509 && err && (ERR_GET_REASON(err) == SSL_R_NO_SHARED_CIPHER ||
				    ERR_GET_REASON(err) == SSL_R_BAD_PSK ||
				    ERR_GET_REASON(err) == SSL_R_BINDER_DOES_NOT_VERIFY ||
				    ERR_GET_REASON(err) == SSL_R_SSLV3_ALERT_HANDSHAKE_FAILURE ||
				    ERR_GET_REASON(err) == SSL_R_TLSV1_ALERT_DECRYPT_ERROR ||
				    ERR_GET_REASON(err) == SSL_R_SSLV3_ALERT_ILLEGAL_PARAMETER))
		return err_set(e, -EACCES, "TLS handshake with %s failed: %s (the PSK identity or "
					   "key does not match)", peer, reason ? reason : "error");
	return err_set(e, -EPROTO, "TLS handshake with %s failed: %s", peer,
		       reason ? reason : "protocol error");
}

static void tls_info_fill(struct tls_channel *tc, struct mig_tls_info *info)
{
	X509 *peer;

	memset(info, 0, sizeof(*info));
	snprintf(info->offload, sizeof(info->offload), "%s", tc->ktls_send ? "kernel" : "userspace");
	snprintf(info->version, sizeof(info->version), "%s", SSL_get_version(tc->ssl));
	snprintf(info->cipher, sizeof(info->cipher), "%s",
		 SSL_CIPHER_get_name(SSL_get_current_cipher(tc->ssl)));
	if (!tc->t->x509) {
		snprintf(info->peer, sizeof(info->peer), "psk:%s", tc->psk_identity);
		return;
	}
	peer = SSL_get1_peer_certificate(tc->ssl);
	if (peer) {
		BIO *b = BIO_new(BIO_s_mem());
		char *p;
		long n;

		if (b && X509_NAME_print_ex(b, X509_get_subject_name(peer), 0, XN_FLAG_RFC2253) >= 0) {
			n = BIO_get_mem_data(b, &p);
			snprintf(info->peer, sizeof(info->peer), "%.*s", (int)MIN(n, 255L), p);
		}
		BIO_free(b);
		X509_free(peer);
	}
}

int mig_tls_handshake(struct mig_tls *t, int fd, const char *host, uint64_t deadline_ns,
		      struct channel **ch, struct mig_tls_info *info, struct errbuf *e)
{
	struct tls_channel *tc = calloc(1, sizeof(*tc));
	int flags = -1, ret;

	*ch = NULL;
	if (!tc)
		return err_set(e, -ENOMEM, "out of memory");
	pthread_mutex_init(&tc->lock, NULL);
	tc->t = t;
	tc->ch.ops = &tls_channel_ops;
	tc->ch.fd = fd;
	tc->ch.sock = true;
	tc->wbuf = malloc(TLS_WBUF);
	ERR_clear_error();
	tc->ssl = tc->wbuf ? SSL_new(t->ctx) : NULL;
	if (!tc->ssl || !SSL_set_fd(tc->ssl, fd)) {
		ret = err_set(e, -ENOMEM, "TLS: %s", tls_reason("out of memory"));
		goto fail;
	}
	SSL_set_app_data(tc->ssl, tc);
	if (!t->server && t->x509) {
		/* the server's certificate must name host: as an IP SAN for an address */
		if (tls_is_ip(host)) {
			if (X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(tc->ssl), host) != 1)
				ret = -EINVAL;
			else
				ret = 0;
		} else {
			ret = SSL_set1_host(tc->ssl, host) == 1 &&
			      SSL_set_tlsext_host_name(tc->ssl, host) == 1 ? 0 : -EINVAL;
		}
		if (ret < 0) {
			err_set(e, ret, "TLS: cannot check the server's name against '%s'", host);
			goto fail;
		}
	}
	flags = fcntl(fd, F_GETFL);
	fcntl(fd, F_SETFL, flags | O_NONBLOCK);
	if (t->server) {
		/* look at the first bytes before OpenSSL consumes them */
		struct pollfd p = { .fd = fd, .events = POLLIN };
		int ms = tls_poll_ms(deadline_ns), r;

		do
			r = ms ? poll(&p, 1, ms) : 0;
		while (r < 0 && errno == EINTR && (ms = tls_poll_ms(deadline_ns)) != 0);
		if (r == 0) {
			ret = err_set(e, -ETIMEDOUT, "TLS handshake with the source: nothing received "
						     "within the deadline (the peer stalled)");
			goto fail_fl;
		}
		if (tls_peer_is_plaintext(fd)) {
			ret = err_set(e, -EPROTONOSUPPORT, "the source sent a plaintext migration "
							   "stream; this destination requires TLS "
							   "(migrate with --tls-dir or --tls-psk)");
			goto fail_fl;
		}
	}
	for (;;) {
		struct pollfd p = { .fd = fd };
		int r, sslerr, ms;

		ERR_clear_error();
		errno = 0;
		r = t->server ? SSL_accept(tc->ssl) : SSL_connect(tc->ssl);
		if (r == 1) {
			ret = 0;
			break;
		}
		sslerr = SSL_get_error(tc->ssl, r);
		if (sslerr != SSL_ERROR_WANT_READ && sslerr != SSL_ERROR_WANT_WRITE) {
			ret = tls_handshake_fail(tc, r, e);
			break;
		}
		p.events = sslerr == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT;
		ms = tls_poll_ms(deadline_ns);
		if (ms == 0 || (r = poll(&p, 1, ms)) == 0) {
			ret = err_set(e, -ETIMEDOUT, "TLS handshake with the %s: no progress within "
						     "the deadline (the peer stalled)",
				      t->server ? "source" : "destination");
			break;
		}
		if (r < 0 && errno != EINTR) {
			ret = err_set(e, -errno, "TLS handshake: poll: %s", strerror(errno));
			break;
		}
	}
fail_fl:
	if (ret < 0)
		goto fail;
	/* PSK: the key, not some certificate, must have authenticated the peer */
	if (!t->x509 && (!SSL_session_reused(tc->ssl) || !tc->psk_identity[0])) {
		ret = err_set(e, -EACCES, "TLS handshake: the peer did not authenticate with the PSK");
		goto fail;
	}
#ifdef BIO_get_ktls_send
	tc->ktls_send = BIO_get_ktls_send(SSL_get_wbio(tc->ssl));
#endif
	tls_info_fill(tc, info);
	/* the socket stays non-blocking: the channel waits in poll(), see tls_io() */
	*ch = &tc->ch;
	return 0;
fail:
	/* a refused peer may still be told why on the plain socket, blocking as before */
	if (flags >= 0)
		fcntl(fd, F_SETFL, flags);
	ERR_clear_error();
	SSL_free(tc->ssl);
	pthread_mutex_destroy(&tc->lock);
	free(tc->wbuf);
	free(tc);
	return ret;
}
