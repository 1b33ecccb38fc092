/* SPDX-License-Identifier: MIT */
/* Control message encoding and the tcp/unix transports of a migration. */
#include "migration/proto.h"
#include "base/buf.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

const char *mig_msg_name(uint32_t type)
{
	switch (type) {
	case MIG_MSG_HELLO: return "HELLO";
	case MIG_MSG_ACCEPT: return "ACCEPT";
	case MIG_MSG_REFUSE: return "REFUSE";
	case MIG_MSG_ROUND: return "ROUND";
	case MIG_MSG_DONE: return "DONE";
	case MIG_MSG_READY: return "READY";
	case MIG_MSG_ERROR: return "ERROR";
	case MIG_MSG_COMMIT: return "COMMIT";
	case MIG_MSG_STARTED: return "STARTED";
	case MIG_MSG_ABORT: return "ABORT";
	case MIG_MSG_RANGES: return "RANGES";
	case MIG_MSG_PING: return "PING";
	case MIG_MSG_PONG: return "PONG";
	case MIG_MSG_MISSING: return "MISSING";
	case MIG_MSG_REQUEST: return "REQUEST";
	case MIG_MSG_COMPLETE: return "COMPLETE";
	case MIG_MSG_STREAMS: return "STREAMS";
	case MIG_MSG_JOIN: return "JOIN";
	case MIG_MSG_FENCE: return "FENCE";
	}
	return state_record_type_name(type);
}

const char *mig_mode_name(uint32_t mode)
{
	switch (mode) {
	case MIG_MODE_WARM: return "warm";
	case MIG_MODE_LIVE: return "live";
	case MIG_MODE_POSTCOPY: return "postcopy";
	case MIG_HELLO_RESUME: return "resume";
	}
	return "unknown";
}

int mig_ctrl_send(struct state_writer *w, const struct mig_ctrl *m, struct errbuf *e)
{
	struct buf b;
	int ret;

	buf_init(&b);
	switch (m->type) {
	case MIG_MSG_HELLO:
		buf_put_u32(&b, m->u32a);
		buf_put_u32(&b, m->u32b);
		buf_put_u64(&b, m->u64a);
		break;
	case MIG_MSG_ACCEPT:
		buf_put_u32(&b, m->u32a);
		break;
	case MIG_MSG_ROUND:
		buf_put_u32(&b, m->u32a);
		buf_put_u64(&b, m->u64a);
		break;
	case MIG_MSG_DONE:
	case MIG_MSG_COMPLETE:
		buf_put_u64(&b, m->u64a);
		buf_put_u64(&b, m->u64b);
		break;
	case MIG_MSG_MISSING:
		buf_put_u64(&b, m->u64a);
		buf_put_u64(&b, m->u64b);
		buf_put_bytes(&b, m->bitmap, (size_t)((m->u64b + 7) / 8));
		break;
	case MIG_MSG_COMMIT:
	case MIG_MSG_STARTED:
	case MIG_MSG_PING:
	case MIG_MSG_PONG:
	case MIG_MSG_REQUEST:
	case MIG_MSG_FENCE:
		buf_put_u64(&b, m->u64a);
		break;
	case MIG_MSG_STREAMS:
	case MIG_MSG_JOIN:
		buf_put_u32(&b, m->u32a);
		buf_put_bytes(&b, m->token, MIG_TOKEN_LEN);
		break;
	case MIG_MSG_REFUSE:
	case MIG_MSG_ERROR:
	case MIG_MSG_ABORT:
		buf_put_blob(&b, m->reason, (uint32_t)strnlen(m->reason, MIG_MSG_MAX));
		break;
	case MIG_MSG_RANGES:
		buf_put_u64(&b, m->u64a);
		buf_put_bytes(&b, m->bitmap, (size_t)((m->u64a + 7) / 8));
		break;
	case MIG_MSG_READY:
		break;
	default:
		buf_free(&b);
		return err_set(e, -EINVAL, "unknown control message 0x%x", m->type);
	}
	ret = buf_status(&b);
	if (ret == 0)
		ret = state_writer_record(w, m->type, b.data ? b.data : (const void *)"", b.len, e);
	else
		err_set(e, ret, "out of memory");
	buf_free(&b);
	return ret;
}

int mig_ctrl_decode(const struct state_record *rec, struct mig_ctrl *m, struct errbuf *e)
{
	struct buf_reader r;
	const char *s;
	uint32_t n;

	memset(m, 0, sizeof(*m));
	m->type = rec->type;
	if (!state_record_type_is_control(rec->type))
		return err_set(e, -EPROTO, "expected a control message, got a %s record",
			       state_record_type_name(rec->type));
	buf_reader_init(&r, rec->payload, rec->len);
	switch (rec->type) {
	case MIG_MSG_HELLO:
		m->u32a = buf_get_u32(&r);
		m->u32b = buf_get_u32(&r);
		m->u64a = buf_get_u64(&r);
		break;
	case MIG_MSG_ACCEPT:
		m->u32a = buf_get_u32(&r);
		break;
	case MIG_MSG_ROUND:
		m->u32a = buf_get_u32(&r);
		m->u64a = buf_get_u64(&r);
		break;
	case MIG_MSG_DONE:
	case MIG_MSG_COMPLETE:
		m->u64a = buf_get_u64(&r);
		m->u64b = buf_get_u64(&r);
		break;
	case MIG_MSG_MISSING:
		m->u64a = buf_get_u64(&r);
		m->u64b = buf_get_u64(&r);
		if (m->u64b == 0 || m->u64b > MIG_MISSING_CHUNK || m->u64a % 8)
			return err_set(e, -EBADMSG, "MISSING names %llu pages from page %llu (1 to %llu "
						    "from a multiple of 8)",
				       (unsigned long long)m->u64b, (unsigned long long)m->u64a,
				       (unsigned long long)MIG_MISSING_CHUNK);
		m->bitmap = rec->payload + 16;
		if (buf_reader_left(&r) != (m->u64b + 7) / 8)
			return err_set(e, -EBADMSG, "malformed MISSING message (%llu bytes)",
				       (unsigned long long)rec->len);
		r.pos = r.len;
		break;
	case MIG_MSG_COMMIT:
	case MIG_MSG_STARTED:
	case MIG_MSG_PING:
	case MIG_MSG_PONG:
	case MIG_MSG_REQUEST:
	case MIG_MSG_FENCE:
		m->u64a = buf_get_u64(&r);
		break;
	case MIG_MSG_STREAMS:
	case MIG_MSG_JOIN:
		m->u32a = buf_get_u32(&r);
		buf_get_bytes(&r, m->token, MIG_TOKEN_LEN);
		if (!buf_reader_done(&r))
			break; /* malformed: said below */
		/* STREAMS counts every connection; JOIN names an extra one, 1 to count - 1 */
		if (rec->type == MIG_MSG_STREAMS && (m->u32a < 2 || m->u32a > MIG_STREAMS_MAX))
			return err_set(e, -EBADMSG, "STREAMS announces %u connections (2 to %u)",
				       m->u32a, MIG_STREAMS_MAX);
		if (rec->type == MIG_MSG_JOIN && (m->u32a < 1 || m->u32a >= MIG_STREAMS_MAX))
			return err_set(e, -EBADMSG, "JOIN names connection %u (1 to %u)", m->u32a,
				       MIG_STREAMS_MAX - 1);
		break;
	case MIG_MSG_REFUSE:
	case MIG_MSG_ERROR:
	case MIG_MSG_ABORT:
		s = buf_get_blob(&r, MIG_MSG_MAX, &n);
		if (s) {
			memcpy(m->reason, s, n);
			m->reason[n] = '\0';
			for (uint32_t i = 0; i < n; i++)
				if ((unsigned char)m->reason[i] < 0x20 || m->reason[i] == 0x7f)
					m->reason[i] = '?';
		}
		break;
	case MIG_MSG_RANGES:
		m->u64a = buf_get_u64(&r);
		if (m->u64a > MIG_RANGES_MAX)
			return err_set(e, -EBADMSG, "RANGES names %llu ranges (at most %llu)",
				       (unsigned long long)m->u64a, (unsigned long long)MIG_RANGES_MAX);
		m->bitmap = rec->payload + 8;
		if (buf_reader_left(&r) != (m->u64a + 7) / 8)
			return err_set(e, -EBADMSG, "malformed RANGES message (%llu bytes)",
				       (unsigned long long)rec->len);
		r.pos = r.len;
		break;
	case MIG_MSG_READY:
		break;
	default:
		return err_set(e, -EPROTO, "unknown control message 0x%x", rec->type);
	}
	if (!buf_reader_done(&r))
		return err_set(e, -EBADMSG, "malformed %s message (%llu bytes)", mig_msg_name(rec->type),
			       (unsigned long long)rec->len);
	return 0;
}

int mig_uri_parse(const char *s, struct mig_uri *u, struct errbuf *e)
{
	memset(u, 0, sizeof(*u));
	if (!strncmp(s, "unix:", 5)) {
		if (!s[5] || strlen(s + 5) >= sizeof(u->path))
			return err_set(e, -EINVAL, "%s: unix socket path empty or too long (max %zu)",
				       s, sizeof(u->path) - 1);
		u->kind = MIG_URI_UNIX;
		snprintf(u->path, sizeof(u->path), "%s", s + 5);
		return 0;
	}
	if (!strncmp(s, "tcp:", 4)) {
		const char *hp = s + 4, *colon = strrchr(hp, ':');
		size_t hl;
		uint64_t port;

		if (!colon || colon == hp)
			return err_set(e, -EINVAL, "%s: expected tcp:HOST:PORT", s);
		hl = (size_t)(colon - hp);
		if (hp[0] == '[' && hl >= 2 && hp[hl - 1] == ']') {
			hp++;
			hl -= 2;
		}
		if (hl >= sizeof(u->host))
			return err_set(e, -EINVAL, "%s: host name too long", s);
		if (parse_u64(colon + 1, 1, 65535, &port) < 0)
			return err_set(e, -EINVAL, "%s: port must be 1 to 65535", s);
		u->kind = MIG_URI_TCP;
		memcpy(u->host, hp, hl);
		snprintf(u->port, sizeof(u->port), "%u", (unsigned)port);
		return 0;
	}
	return err_set(e, -EINVAL, "%s: URI must be tcp:HOST:PORT or unix:PATH", s);
}

bool mig_uri_is_loopback(const struct mig_uri *u)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV };
	struct addrinfo *res, *ai;
	bool loop = true;

	if (u->kind != MIG_URI_TCP)
		return false;
	if (getaddrinfo(u->host, u->port, &hints, &res))
		return false;
	for (ai = res; ai; ai = ai->ai_next) {
		if (ai->ai_family == AF_INET) {
			const struct sockaddr_in *s = (const struct sockaddr_in *)ai->ai_addr;

			loop &= (ntohl(s->sin_addr.s_addr) >> 24) == 127;
		} else if (ai->ai_family == AF_INET6) {
			const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)ai->ai_addr;

			loop &= IN6_IS_ADDR_LOOPBACK(&s->sin6_addr);
		} else {
			loop = false;
		}
	}
	freeaddrinfo(res);
	return loop;
}

void mig_peer_name(int fd, char *out, size_t n)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	char host[INET6_ADDRSTRLEN] = "?";

	if (getpeername(fd, (struct sockaddr *)&ss, &len) < 0 || ss.ss_family == AF_UNIX) {
		snprintf(out, n, "the unix socket");
		return;
	}
	if (ss.ss_family == AF_INET) {
		struct sockaddr_in *s = (struct sockaddr_in *)&ss;

		inet_ntop(AF_INET, &s->sin_addr, host, sizeof(host));
		snprintf(out, n, "%s:%u", host, ntohs(s->sin_port));
	} else {
		struct sockaddr_in6 *s = (struct sockaddr_in6 *)&ss;

		inet_ntop(AF_INET6, &s->sin6_addr, host, sizeof(host));
		snprintf(out, n, "[%s]:%u", host, ntohs(s->sin6_port));
	}
}

int mig_socket_timeouts(int fd, int timeout_ms, struct errbuf *e)
{
	struct timeval tv = { .tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000 };

	/* without them a peer that goes silent would block this side for ever */
	if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0 ||
	    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) < 0)
		return err_set(e, -errno, "set the migration socket's %d ms timeouts: %s",
			       timeout_ms, strerror(errno));
	return 0;
}

static void mig_socket_tune(int fd, int family)
{
	int one = 1, sz = 4 << 20;

	if (family != AF_UNIX)
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
	setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof(sz));
}

/* connect() with a deadline on a non-blocking socket, then back to blocking */
static int mig_connect_one(int fd, const struct sockaddr *sa, socklen_t len, int timeout_ms)
{
	struct pollfd p = { .fd = fd, .events = POLLOUT };
	int flags = fcntl(fd, F_GETFL), err = 0;
	socklen_t el = sizeof(err);

	if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
		return -errno;
	if (connect(fd, sa, len) < 0) {
		if (errno != EINPROGRESS)
			return -errno;
		if (poll(&p, 1, timeout_ms) <= 0)
			return -ETIMEDOUT;
		if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0)
			return -errno;
		if (err)
			return -err;
	}
	/* a socket left non-blocking would turn every timeout into an EAGAIN failure */
	if (fcntl(fd, F_SETFL, flags) < 0)
		return -errno;
	return 0;
}

int mig_connect(const struct mig_uri *u, int timeout_ms, int *out, struct errbuf *e)
{
	if (u->kind == MIG_URI_UNIX) {
		struct sockaddr_un sa = { .sun_family = AF_UNIX };
		int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0), ret;

		if (fd < 0)
			return err_set(e, -errno, "socket: %s", strerror(errno));
		memcpy(sa.sun_path, u->path, strlen(u->path));
		mig_socket_tune(fd, AF_UNIX);
		ret = mig_connect_one(fd, (struct sockaddr *)&sa, sizeof(sa), timeout_ms);
		if (ret < 0) {
			close(fd);
			return err_set(e, ret, "connect unix:%s: %s", u->path, strerror(-ret));
		}
		ret = mig_socket_timeouts(fd, timeout_ms, e);
		if (ret < 0) {
			close(fd);
			return ret;
		}
		*out = fd;
		return 0;
	} else {
		struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *res, *ai;
		int ret, gai = getaddrinfo(u->host, u->port, &hints, &res);

		if (gai)
			return err_set(e, -EHOSTUNREACH, "connect tcp:%s:%s: %s", u->host, u->port,
				       gai_strerror(gai));
		ret = -ECONNREFUSED;
		for (ai = res; ai; ai = ai->ai_next) {
			int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);

			if (fd < 0) {
				ret = -errno;
				continue;
			}
			mig_socket_tune(fd, ai->ai_family);
			ret = mig_connect_one(fd, ai->ai_addr, ai->ai_addrlen, timeout_ms);
			if (ret == 0) {
				freeaddrinfo(res);
				ret = mig_socket_timeouts(fd, timeout_ms, e);
				if (ret < 0) {
					close(fd);
					return ret;
				}
				*out = fd;
				return 0;
			}
			close(fd);
		}
		freeaddrinfo(res);
		return err_set(e, ret, "connect tcp:%s:%s: %s", u->host, u->port, strerror(-ret));
	}
}

int mig_listen(const struct mig_uri *u, int *out, struct errbuf *e)
{
	int fd, ret, one = 1;

	if (u->kind == MIG_URI_UNIX) {
		struct sockaddr_un sa = { .sun_family = AF_UNIX };
		struct stat st;
		mode_t old;

		if (lstat(u->path, &st) == 0) {
			if (!S_ISSOCK(st.st_mode))
				return err_set(e, -EEXIST, "listen unix:%s: exists and is not a socket",
					       u->path);
			unlink(u->path); /* a stale socket from an earlier run */
		}
		fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd < 0)
			return err_set(e, -errno, "socket: %s", strerror(errno));
		memcpy(sa.sun_path, u->path, strlen(u->path));
		old = umask(0177);
		ret = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
		umask(old);
		if (ret < 0 || listen(fd, MIG_STREAMS_MAX) < 0) {
			ret = -errno;
			close(fd);
			return err_set(e, ret, "listen unix:%s: %s", u->path, strerror(-ret));
		}
		mig_socket_tune(fd, AF_UNIX);
		*out = fd;
		return 0;
	} else {
		struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV };
		struct addrinfo *res;
		int gai;

		if (!u->host[0])
			return err_set(e, -EINVAL, "tcp:%s: a listening address is required "
						   "(use 0.0.0.0 to listen on every address)", u->port);
		gai = getaddrinfo(u->host, u->port, &hints, &res);
		if (gai)
			return err_set(e, -EADDRNOTAVAIL, "listen tcp:%s:%s: %s", u->host, u->port,
				       gai_strerror(gai));
		fd = socket(res->ai_family, res->ai_socktype | SOCK_CLOEXEC, res->ai_protocol);
		if (fd < 0) {
			ret = -errno;
			freeaddrinfo(res);
			return err_set(e, ret, "socket: %s", strerror(-ret));
		}
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		mig_socket_tune(fd, res->ai_family);
		if (bind(fd, res->ai_addr, res->ai_addrlen) < 0 || listen(fd, MIG_STREAMS_MAX) < 0) {
			ret = -errno;
			close(fd);
			freeaddrinfo(res);
			return err_set(e, ret, "listen tcp:%s:%s: %s", u->host, u->port, strerror(-ret));
		}
		freeaddrinfo(res);
		*out = fd;
		return 0;
	}
}
