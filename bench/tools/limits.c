/* Machine limits for the benchmark harness (compiled at run time by bench/run).
 *
 *   limits memcpy MIB SECONDS        copy bandwidth between two MIB buffers
 *   limits populate MIB anon|memfd|thp   time to fault in fresh memory
 *   limits recv ADDR PORT            accept one TCP connection, count bytes
 *   limits send ADDR PORT SECONDS    send zeros for SECONDS
 *
 * Every mode prints one line of key=value pairs on stdout.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
	fprintf(stderr, "limits: %s: %s\n", what, strerror(errno));
	exit(1);
}

static int do_memcpy(size_t mib, double secs)
{
	size_t len = mib << 20;
	char *a = malloc(len), *b = malloc(len);
	if (!a || !b)
		die("malloc");
	memset(a, 1, len);
	memset(b, 2, len);
	double t0 = now(), t = t0;
	size_t bytes = 0;
	int i = 0;
	do {
		if (i++ & 1)
			memcpy(a, b, len);
		else
			memcpy(b, a, len);
		bytes += len;
		t = now();
	} while (t - t0 < secs);
	printf("memcpy_bytes_per_s=%.0f bytes=%zu seconds=%.3f check=%d\n",
	       (double)bytes / (t - t0), bytes, t - t0, a[len / 2] + b[len / 3]);
	return 0;
}

static int do_populate(size_t mib, const char *kind)
{
	size_t len = mib << 20;
	char *p;
	if (!strcmp(kind, "memfd")) {
		int fd = memfd_create("limits", 0);
		if (fd < 0 || ftruncate(fd, (off_t)len) < 0)
			die("memfd");
		p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
		close(fd);
	} else {
		p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (p != MAP_FAILED && !strcmp(kind, "thp"))
			madvise(p, len, MADV_HUGEPAGE);
	}
	if (p == MAP_FAILED)
		die("mmap");
	double t0 = now();
	for (size_t off = 0; off < len; off += 4096)
		p[off] = 1;
	double t = now() - t0;
	printf("populate_%s_bytes_per_s=%.0f bytes=%zu seconds=%.3f\n", kind, (double)len / t, len, t);
	munmap(p, len);
	return 0;
}

static struct sockaddr_in addr_of(const char *host, const char *port)
{
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(port))};
	if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
		fprintf(stderr, "limits: bad address %s\n", host);
		exit(1);
	}
	return sa;
}

static int do_recv(const char *host, const char *port)
{
	struct sockaddr_in sa = addr_of(host, port);
	int one = 1, ls = socket(AF_INET, SOCK_STREAM, 0);
	if (ls < 0)
		die("socket");
	setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(ls, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(ls, 1) < 0)
		die("bind/listen");
	printf("listening\n");
	fflush(stdout);
	int s = accept(ls, NULL, NULL);
	if (s < 0)
		die("accept");
	static char buf[1 << 20];
	size_t bytes = 0;
	double t0 = 0, t1 = 0;
	for (;;) {
		ssize_t n = read(s, buf, sizeof(buf));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		if (!bytes)
			t0 = now();
		bytes += (size_t)n;
		t1 = now();
	}
	double t = t1 > t0 ? t1 - t0 : 1e-9;
	printf("recv_bytes_per_s=%.0f bytes=%zu seconds=%.3f\n", (double)bytes / t, bytes, t);
	return 0;
}

static int do_send(const char *host, const char *port, double secs)
{
	struct sockaddr_in sa = addr_of(host, port);
	int s = socket(AF_INET, SOCK_STREAM, 0);
	if (s < 0)
		die("socket");
	for (int tries = 0; connect(s, (struct sockaddr *)&sa, sizeof(sa)) < 0; tries++) {
		if (tries > 200)
			die("connect");
		usleep(10000);
	}
	static char buf[1 << 20];
	size_t bytes = 0;
	double t0 = now(), t = t0;
	do {
		ssize_t n = write(s, buf, sizeof(buf));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			die("write");
		bytes += (size_t)n;
		t = now();
	} while (t - t0 < secs);
	close(s);
	printf("send_bytes_per_s=%.0f bytes=%zu seconds=%.3f\n", (double)bytes / (t - t0), bytes, t - t0);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc >= 4 && !strcmp(argv[1], "memcpy"))
		return do_memcpy((size_t)atol(argv[2]), atof(argv[3]));
	if (argc >= 4 && !strcmp(argv[1], "populate"))
		return do_populate((size_t)atol(argv[2]), argv[3]);
	if (argc >= 4 && !strcmp(argv[1], "recv"))
		return do_recv(argv[2], argv[3]);
	if (argc >= 5 && !strcmp(argv[1], "send"))
		return do_send(argv[2], argv[3], atof(argv[4]));
	fprintf(stderr, "usage: limits memcpy MIB SECONDS | populate MIB anon|memfd|thp | "
			"recv ADDR PORT | send ADDR PORT SECONDS\n");
	return 2;
}
