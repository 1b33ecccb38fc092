/* SPDX-License-Identifier: MIT */
/*
 * The control socket: request handling driven directly (api_request_handle), then the
 * real socket with the server's event loop on a thread, then the `godwit status|pause|
 * resume|stop` client subcommands. The VM is the fake from fake_vm.c.
 */
#include "api/api.h"
#include "api/client.h"
#include "cli/cli.h"
#include "cli/ctl.h"
#include "migration/migrate.h"
#include "migration/proto.h"
#include "fake_vm.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <setjmp.h>
#include <cmocka.h>

/* ---- direct request handling ---- */

struct direct {
	struct vm vm;
	struct api_server *s;
};

static int direct_setup(void **state)
{
	struct direct *d = calloc(1, sizeof(*d));
	struct errbuf e = { .msg = "" };

	assert_non_null(d);
	fake_vm_init(&d->vm, "vm0");
	assert_int_equal(api_server_create(&d->s, NULL, NULL, &d->vm, &e), 0);
	*state = d;
	return 0;
}

static int direct_teardown(void **state)
{
	struct direct *d = *state;

	api_server_destroy(d->s);
	free(d);
	return 0;
}

/* Runs one request and returns the parsed response; checks it is an object with "ok". */
static json_t *req_run(struct direct *d, const char *line)
{
	char *out = api_request_handle(d->s, line, strlen(line));
	json_error_t jerr;
	json_t *resp;

	assert_non_null(out);
	assert_null(strchr(out, '\n'));
	resp = json_loads(out, 0, &jerr);
	if (!resp)
		fail_msg("response is not JSON: %s (%s)", out, jerr.text);
	free(out);
	assert_true(json_is_object(resp));
	assert_true(json_is_boolean(json_object_get(resp, "ok")));
	return resp;
}

/* Expects {"ok": false, "error": want} for line. */
static void req_expect_error(struct direct *d, const char *line, const char *want)
{
	json_t *resp = req_run(d, line);
	const char *msg = json_string_value(json_object_get(resp, "error"));

	if (json_is_true(json_object_get(resp, "ok")) || !msg || strcmp(msg, want))
		fail_msg("request %s: expected error \"%s\", got %s", line, want,
			 msg ? msg : "no error");
	assert_int_equal(json_object_size(resp), 2);
	json_decref(resp);
}

/* Expects an error that starts with prefix. */
static void req_expect_error_prefix(struct direct *d, const char *line, const char *prefix)
{
	json_t *resp = req_run(d, line);
	const char *msg = json_string_value(json_object_get(resp, "error"));

	if (json_is_true(json_object_get(resp, "ok")) || !msg ||
	    strncmp(msg, prefix, strlen(prefix)))
		fail_msg("request %s: expected error \"%s...\", got %s", line, prefix,
			 msg ? msg : "no error");
	json_decref(resp);
}

static void req_expect_ok(struct direct *d, const char *line)
{
	json_t *resp = req_run(d, line);

	if (!json_is_true(json_object_get(resp, "ok")))
		fail_msg("request %s failed: %s", line,
			 json_string_value(json_object_get(resp, "error")));
	json_decref(resp);
}

static void test_status_fields(void **state)
{
	struct direct *d = *state;
	json_t *resp = req_run(d, "{\"cmd\": \"status\"}");
	const char *key;
	json_t *v;
	size_t i = 0;
	static const char *const order[] = {
		"ok", "name", "state", "memory", "guest_resident", "vcpus", "uptime_ms", "paused_ms",
		"console_dropped", "pid", "disks", "nics",
	};

	assert_true(json_is_true(json_object_get(resp, "ok")));
	assert_string_equal(json_string_value(json_object_get(resp, "name")), "vm0");
	assert_string_equal(json_string_value(json_object_get(resp, "state")), "running");
	assert_int_equal(json_integer_value(json_object_get(resp, "memory")), 256 * MiB);
	assert_int_equal(json_integer_value(json_object_get(resp, "guest_resident")), 2 * MiB);
	assert_int_equal(json_integer_value(json_object_get(resp, "vcpus")), 2);
	assert_int_equal(json_integer_value(json_object_get(resp, "uptime_ms")), 12345);
	assert_int_equal(json_integer_value(json_object_get(resp, "paused_ms")), 2500);
	assert_int_equal(json_integer_value(json_object_get(resp, "console_dropped")), 4096);
	assert_int_equal(json_integer_value(json_object_get(resp, "pid")), getpid());
	/* "ok" first, then a stable order people can read */
	json_object_foreach(resp, key, v) {
		assert_true(i < ARRAY_SIZE(order));
		assert_string_equal(key, order[i]);
		i++;
	}
	assert_int_equal(i, ARRAY_SIZE(order));
	json_decref(resp);
	assert_int_equal(d->vm.pauses + d->vm.resumes + d->vm.stops, 0);
}

/* Disks with their counters and NICs with their tap and MAC, from the devices' plain stats. */
static void test_status_devices(void **state)
{
	struct direct *d = *state;
	struct device_stats devs[3] = {
		{ .spec = { .type = "virtio-blk", .id = "disk0", .path = "/srv/a.img",
			    .size = 1 << 20 },
		  .locked = true, .aio = "thread", .reads = 10, .writes = 4, .flushes = 2,
		  .others = 1, .bytes_read = 5120, .bytes_written = 2048, .errors = 3,
		  .service_ns = 7000, .cpu_ns = 9000, .notifies = 11 },
		{ .spec = { .type = "virtio-net", .id = "n0", .path = "tap7",
			    .mac = { 0x52, 0x54, 0, 0xab, 0xcd, 0xef } } },
		{ .spec = { .type = "virtio-blk", .id = "ro", .path = "/srv/b.img", .size = 4096,
			    .readonly = true }, .aio = "uring" },
	};
	json_t *resp, *disks, *nics, *a, *b, *n;

	d->vm.devs = devs;
	d->vm.ndevs = 3;
	resp = req_run(d, "{\"cmd\": \"status\"}");
	disks = json_object_get(resp, "disks");
	nics = json_object_get(resp, "nics");
	assert_int_equal(json_array_size(disks), 2);
	assert_int_equal(json_array_size(nics), 1);
	a = json_array_get(disks, 0);
	b = json_array_get(disks, 1);
	n = json_array_get(nics, 0);
	assert_string_equal(json_string_value(json_object_get(a, "id")), "disk0");
	assert_string_equal(json_string_value(json_object_get(a, "path")), "/srv/a.img");
	assert_true(json_is_false(json_object_get(a, "readonly")));
	assert_true(json_is_true(json_object_get(a, "locked")));
	assert_int_equal(json_integer_value(json_object_get(a, "size")), 1 << 20);
	assert_string_equal(json_string_value(json_object_get(a, "aio")), "thread");
	assert_int_equal(json_integer_value(json_object_get(a, "reads")), 10);
	assert_int_equal(json_integer_value(json_object_get(a, "writes")), 4);
	assert_int_equal(json_integer_value(json_object_get(a, "bytes_read")), 5120);
	assert_int_equal(json_integer_value(json_object_get(a, "bytes_written")), 2048);
	assert_int_equal(json_integer_value(json_object_get(a, "flushes")), 2);
	assert_int_equal(json_integer_value(json_object_get(a, "other_requests")), 1);
	assert_int_equal(json_integer_value(json_object_get(a, "errors")), 3);
	assert_int_equal(json_integer_value(json_object_get(a, "service_us")), 7);
	assert_int_equal(json_integer_value(json_object_get(a, "io_cpu_us")), 9);
	assert_int_equal(json_integer_value(json_object_get(a, "notifies")), 11);
	assert_string_equal(json_string_value(json_object_get(b, "id")), "ro");
	assert_true(json_is_true(json_object_get(b, "readonly")));
	assert_true(json_is_false(json_object_get(b, "locked")));
	assert_string_equal(json_string_value(json_object_get(b, "aio")), "uring");
	assert_string_equal(json_string_value(json_object_get(n, "id")), "n0");
	assert_string_equal(json_string_value(json_object_get(n, "tap")), "tap7");
	assert_string_equal(json_string_value(json_object_get(n, "mac")), "52:54:00:ab:cd:ef");
	assert_int_equal(json_object_size(n), 3);
	json_decref(resp);
}

static void test_status_name_not_utf8(void **state)
{
	struct direct *d = *state;
	json_t *resp;

	/* a name cut inside a multi-byte character must not break the reply */
	snprintf(d->vm.st.name, sizeof(d->vm.st.name), "vm-\xc3");
	resp = req_run(d, "{\"cmd\": \"status\"}");
	assert_true(json_is_true(json_object_get(resp, "ok")));
	assert_string_equal(json_string_value(json_object_get(resp, "name")), "vm-?");
	json_decref(resp);
}

static void test_pause_resume(void **state)
{
	struct direct *d = *state;
	json_t *resp;

	resp = req_run(d, "{\"cmd\": \"pause\"}");
	assert_true(json_is_true(json_object_get(resp, "ok")));
	assert_int_equal(json_object_size(resp), 1);
	json_decref(resp);
	assert_int_equal(d->vm.pauses, 1);
	assert_int_equal(d->vm.st.state, VM_STATE_PAUSED);

	resp = req_run(d, "{\"cmd\": \"status\"}");
	assert_string_equal(json_string_value(json_object_get(resp, "state")), "paused");
	json_decref(resp);

	req_expect_ok(d, "{\"cmd\": \"resume\"}");
	assert_int_equal(d->vm.resumes, 1);
	assert_int_equal(d->vm.st.state, VM_STATE_RUNNING);
	assert_int_equal(d->vm.stops, 0);
}

static void test_vm_errors(void **state)
{
	struct direct *d = *state;

	d->vm.pause_ret = -ETIMEDOUT;
	d->vm.pause_msg = "vcpu 1 did not leave KVM_RUN within 1000 ms";
	req_expect_error(d, "{\"cmd\": \"pause\"}", "vcpu 1 did not leave KVM_RUN within 1000 ms");
	assert_int_equal(d->vm.st.state, VM_STATE_RUNNING);

	/* a message cut inside a UTF-8 sequence still gives valid JSON */
	d->vm.pause_msg = "bad \xe2\x82";
	req_expect_error(d, "{\"cmd\": \"pause\"}", "bad ??");

	/* a failure without a message gets one naming the command */
	d->vm.resume_ret = -EIO;
	req_expect_error(d, "{\"cmd\": \"resume\"}", "resume: Input/output error");
}

/* A VM handed over to a migration destination is not paused and written to disk. */
static void test_snapshot_handed_over(void **state)
{
	struct direct *d = *state;

	d->vm.st.state = VM_STATE_HANDED_OVER;
	req_expect_error(d, "{\"cmd\": \"snapshot\", \"dir\": \"/nonexistent/x\"}",
			 "cannot snapshot: " VM_HANDED_OVER_MSG);
	assert_int_equal(d->vm.pauses, 0);
}

static void test_stop(void **state)
{
	struct direct *d = *state;

	req_expect_ok(d, "{\"cmd\": \"stop\"}");
	assert_int_equal(d->vm.stops, 1);
	assert_int_equal(d->vm.pauses, 0);
}

static void test_malformed_json(void **state)
{
	struct direct *d = *state;
	static const char *const bad[] = {
		"{", "{\"cmd\": ", "status", "{'cmd': 'status'}", "{\"cmd\": \"status\",}",
		"{\"cmd\": \"status\"} {\"cmd\": \"status\"}", "{\"cmd\": \"status\"} x", "",
		"   ", "{\"cmd\": \"status\", \"cmd\": \"pause\"}", "{\"cmd\": \"st\xff\"}",
	};

	for (size_t i = 0; i < ARRAY_SIZE(bad); i++)
		req_expect_error_prefix(d, bad[i], "malformed JSON at column ");
	/* a NUL byte inside the line */
	{
		static const char nul[] = "{\"cmd\": \"status\"}\0x";
		char *out = api_request_handle(d->s, nul, sizeof(nul) - 1);

		assert_non_null(out);
		assert_non_null(strstr(out, "malformed JSON"));
		free(out);
	}
	assert_int_equal(d->vm.pauses + d->vm.resumes + d->vm.stops, 0);
}

static void test_not_object(void **state)
{
	struct direct *d = *state;
	static const char *const bad[] = {
		"[]", "[{\"cmd\": \"status\"}]", "5", "\"status\"", "null", "true", "-1.5",
	};

	for (size_t i = 0; i < ARRAY_SIZE(bad); i++)
		req_expect_error(d, bad[i], "request must be a JSON object");
}

static void test_missing_cmd(void **state)
{
	struct direct *d = *state;

	req_expect_error(d, "{}", "missing \"cmd\"");
	req_expect_error(d, "{\"command\": \"status\"}", "missing \"cmd\"");
	req_expect_error(d, "{\"CMD\": \"status\"}", "missing \"cmd\"");
}

static void test_cmd_wrong_type(void **state)
{
	struct direct *d = *state;
	static const char *const bad[] = {
		"{\"cmd\": 5}", "{\"cmd\": null}", "{\"cmd\": [\"status\"]}",
		"{\"cmd\": {\"name\": \"status\"}}", "{\"cmd\": true}",
	};

	for (size_t i = 0; i < ARRAY_SIZE(bad); i++)
		req_expect_error(d, bad[i], "\"cmd\" must be a string");
}

static void test_unknown_cmd(void **state)
{
	struct direct *d = *state;
	char line[512];

	req_expect_error(d, "{\"cmd\": \"reboot\"}", "unknown command \"reboot\"");
	req_expect_error(d, "{\"cmd\": \"\"}", "unknown command \"\"");
	req_expect_error(d, "{\"cmd\": \"Status\"}", "unknown command \"Status\"");
	/* a long name is cut in the message */
	snprintf(line, sizeof(line), "{\"cmd\": \"%0300d\"}", 7);
	req_expect_error_prefix(d, line, "unknown command \"0000");
	assert_int_equal(d->vm.pauses + d->vm.resumes + d->vm.stops, 0);
}

static void test_arguments(void **state)
{
	struct direct *d = *state;
	json_t *resp;

	req_expect_error(d, "{\"cmd\": \"status\", \"digest\": \"yes\"}",
			 "status: \"digest\" must be a boolean");
	req_expect_error(d, "{\"cmd\": \"status\", \"digest\": 1}",
			 "status: \"digest\" must be a boolean");
	req_expect_error(d, "{\"cmd\": \"status\", \"verbose\": true}",
			 "status: unknown argument \"verbose\"");
	req_expect_error(d, "{\"cmd\": \"pause\", \"digest\": true}",
			 "pause: unknown argument \"digest\"");
	req_expect_error(d, "{\"cmd\": \"stop\", \"force\": true}",
			 "stop: unknown argument \"force\"");
	assert_int_equal(d->vm.pauses + d->vm.stops, 0);

	resp = req_run(d, "{\"cmd\": \"status\", \"digest\": false}");
	assert_true(json_is_true(json_object_get(resp, "ok")));
	assert_string_equal(json_string_value(json_object_get(resp, "name")), "vm0");
	json_decref(resp);
}

static void test_digest(void **state)
{
	struct direct *d = *state;

	req_expect_error(d, "{\"cmd\": \"status\", \"digest\": true}", "digest needs a paused VM");
	req_expect_ok(d, "{\"cmd\": \"pause\"}");
	req_expect_error(d, "{\"cmd\": \"status\", \"digest\": true}", "fake VM: no digest");
}

/* ---- the socket ---- */

struct sock {
	char dir[64];
	char path[128];
	struct vm vm;
	struct evloop *loop;
	struct api_server *s;
	pthread_t thread;
	bool running;
};

static void *sock_loop_thread(void *opaque)
{
	struct sock *k = opaque;

	if (evloop_run(k->loop) < 0)
		abort();
	return NULL;
}

static void sock_loop_stop_cb(void *opaque)
{
	evloop_stop(opaque);
}

/* Stops the server's loop so the test can look at the fake VM and the server safely. */
static void sock_loop_stop(struct sock *k)
{
	if (!k->running)
		return;
	assert_int_equal(evloop_call(k->loop, sock_loop_stop_cb, k->loop), 0);
	assert_int_equal(pthread_join(k->thread, NULL), 0);
	k->running = false;
}

static void sock_loop_start(struct sock *k)
{
	assert_int_equal(pthread_create(&k->thread, NULL, sock_loop_thread, k), 0);
	k->running = true;
}

static int sock_setup(void **state)
{
	struct sock *k = calloc(1, sizeof(*k));
	struct errbuf e = { .msg = "" };

	assert_non_null(k);
	snprintf(k->dir, sizeof(k->dir), "/tmp/godwit-test-api.XXXXXX");
	assert_non_null(mkdtemp(k->dir));
	snprintf(k->path, sizeof(k->path), "%s/api.sock", k->dir);
	fake_vm_init(&k->vm, "sockvm");
	assert_int_equal(evloop_create(&k->loop), 0);
	if (api_server_create(&k->s, k->loop, k->path, &k->vm, &e) < 0)
		fail_msg("api_server_create: %s", e.msg);
	sock_loop_start(k);
	*state = k;
	return 0;
}

static void sock_dir_clean(const char *dir)
{
	static const char *const names[] = { "api.sock", "api2.sock", "file", "out", "err" };
	char p[160];

	for (size_t i = 0; i < ARRAY_SIZE(names); i++) {
		snprintf(p, sizeof(p), "%s/%s", dir, names[i]);
		unlink(p);
	}
	rmdir(dir);
}

static int sock_teardown(void **state)
{
	struct sock *k = *state;
	struct stat st;

	sock_loop_stop(k);
	api_server_destroy(k->s);
	/* the server removes its socket */
	assert_int_equal(lstat(k->path, &st), -1);
	evloop_destroy(k->loop);
	sock_dir_clean(k->dir);
	free(k);
	return 0;
}

static json_t *sock_call(struct sock *k, const char *req)
{
	struct errbuf e = { .msg = "" };
	json_error_t jerr;
	char *line;
	json_t *resp;

	if (api_client_call(k->path, req, &line, 5000, &e) < 0)
		fail_msg("api_client_call %s: %s", req, e.msg);
	resp = json_loads(line, 0, &jerr);
	if (!resp)
		fail_msg("not JSON: %s", line);
	free(line);
	return resp;
}

static void sun_set(struct sockaddr_un *sa, const char *path)
{
	assert_true(strlen(path) < sizeof(sa->sun_path));
	memcpy(sa->sun_path, path, strlen(path) + 1);
}

/* A raw connection, for what api_client_call() will not send. */
static int raw_connect(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

	assert_true(fd >= 0);
	sun_set(&sa, path);
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		fail_msg("connect %s: %s", path, strerror(errno));
	return fd;
}

static void raw_sendn(int fd, const char *s, size_t len)
{
	assert_int_equal(io_write_full(fd, s, len), 0);
}

static void raw_send(int fd, const char *s)
{
	raw_sendn(fd, s, strlen(s));
}

/* Reads one line (without newline) into buf; returns its length, or -1 at EOF/reset. */
static ssize_t raw_read_line(int fd, char *buf, size_t cap)
{
	size_t len = 0;

	for (;;) {
		struct pollfd pfd = { .fd = fd, .events = POLLIN };
		ssize_t n;

		if (poll(&pfd, 1, 5000) != 1)
			fail_msg("no data within 5 s");
		n = recv(fd, buf + len, 1, 0);
		if (n <= 0)
			return -1;
		if (buf[len] == '\n') {
			buf[len] = '\0';
			return (ssize_t)len;
		}
		len++;
		assert_true(len < cap);
	}
}

static void raw_expect(int fd, const char *want_substr)
{
	char line[4096];

	assert_true(raw_read_line(fd, line, sizeof(line)) >= 0);
	if (!strstr(line, want_substr))
		fail_msg("expected a line with %s, got %s", want_substr, line);
}

static void test_socket_round_trip(void **state)
{
	struct sock *k = *state;
	json_t *resp;

	resp = sock_call(k, "{\"cmd\":\"status\"}");
	assert_true(json_is_true(json_object_get(resp, "ok")));
	assert_string_equal(json_string_value(json_object_get(resp, "name")), "sockvm");
	assert_string_equal(json_string_value(json_object_get(resp, "state")), "running");
	json_decref(resp);

	resp = sock_call(k, "{\"cmd\":\"pause\"}");
	assert_true(json_is_true(json_object_get(resp, "ok")));
	json_decref(resp);
	resp = sock_call(k, "{\"cmd\":\"status\"}");
	assert_string_equal(json_string_value(json_object_get(resp, "state")), "paused");
	json_decref(resp);
	resp = sock_call(k, "{\"cmd\":\"resume\"}");
	assert_true(json_is_true(json_object_get(resp, "ok")));
	json_decref(resp);

	resp = sock_call(k, "{\"cmd\":\"stop\"}");
	assert_true(json_is_true(json_object_get(resp, "ok")));
	json_decref(resp);
	sock_loop_stop(k);
	assert_int_equal(k->vm.pauses, 1);
	assert_int_equal(k->vm.resumes, 1);
	assert_int_equal(k->vm.stops, 1);
	assert_int_equal(k->vm.st.state, VM_STATE_RUNNING);
}

static void test_socket_mode(void **state)
{
	struct sock *k = *state;
	struct errbuf e = { .msg = "" };
	struct api_server *s2;
	struct evloop *loop2;
	char path2[160];
	struct stat st;
	mode_t mask;

	assert_int_equal(lstat(k->path, &st), 0);
	assert_true(S_ISSOCK(st.st_mode));
	assert_int_equal(st.st_mode & 07777, 0600);

	/* a permissive umask does not loosen it */
	snprintf(path2, sizeof(path2), "%s/api2.sock", k->dir);
	assert_int_equal(evloop_create(&loop2), 0);
	mask = umask(0);
	assert_int_equal(api_server_create(&s2, loop2, path2, &k->vm, &e), 0);
	umask(mask);
	assert_int_equal(lstat(path2, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0600);
	api_server_destroy(s2);
	assert_int_equal(lstat(path2, &st), -1);
	evloop_destroy(loop2);
}

static void test_socket_in_use(void **state)
{
	struct sock *k = *state;
	struct errbuf e = { .msg = "" };
	struct api_server *s2 = NULL;
	struct evloop *loop2;
	char want[256];
	json_t *resp;

	assert_int_equal(evloop_create(&loop2), 0);
	assert_int_equal(api_server_create(&s2, loop2, k->path, &k->vm, &e), -EADDRINUSE);
	snprintf(want, sizeof(want), "api socket %s is in use by another godwit", k->path);
	assert_string_equal(e.msg, want);
	assert_null(s2);
	evloop_destroy(loop2);

	/* the first server still answers */
	resp = sock_call(k, "{\"cmd\":\"status\"}");
	assert_true(json_is_true(json_object_get(resp, "ok")));
	json_decref(resp);
}

static void test_socket_stale_replaced(void **state)
{
	struct sock *k = *state;
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct errbuf e = { .msg = "" };
	struct api_server *s2;
	struct evloop *loop2;
	char path2[160];
	struct stat st;
	int fd;

	/* a socket file nobody listens on, as a crashed godwit leaves behind */
	snprintf(path2, sizeof(path2), "%s/api2.sock", k->dir);
	sun_set(&sa, path2);
	fd = socket(AF_UNIX, SOCK_STREAM, 0);
	assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	close(fd);
	assert_int_equal(lstat(path2, &st), 0);

	assert_int_equal(evloop_create(&loop2), 0);
	if (api_server_create(&s2, loop2, path2, &k->vm, &e) < 0)
		fail_msg("stale socket not replaced: %s", e.msg);
	/* now something listens there */
	fd = raw_connect(path2);
	close(fd);
	api_server_destroy(s2);
	evloop_destroy(loop2);
}

static void test_socket_refusals(void **state)
{
	struct sock *k = *state;
	struct errbuf e = { .msg = "" };
	struct api_server *s2 = NULL;
	struct evloop *loop2;
	char path2[300], want[700], buf[32];
	struct stat st;
	int fd;

	assert_int_equal(evloop_create(&loop2), 0);

	/* a regular file is never deleted */
	snprintf(path2, sizeof(path2), "%s/file", k->dir);
	fd = open(path2, O_WRONLY | O_CREAT | O_EXCL, 0644);
	assert_true(fd >= 0);
	raw_send(fd, "precious");
	close(fd);
	assert_int_equal(api_server_create(&s2, loop2, path2, &k->vm, &e), -EEXIST);
	snprintf(want, sizeof(want), "api socket %s: exists and is not a socket", path2);
	assert_string_equal(e.msg, want);
	fd = open(path2, O_RDONLY);
	assert_true(fd >= 0);
	assert_int_equal(read(fd, buf, sizeof(buf)), 8);
	assert_memory_equal(buf, "precious", 8);
	close(fd);

	/* nor is a directory */
	assert_int_equal(api_server_create(&s2, loop2, k->dir, &k->vm, &e), -EEXIST);

	/* a missing directory */
	snprintf(path2, sizeof(path2), "%s/nope/api.sock", k->dir);
	assert_int_equal(api_server_create(&s2, loop2, path2, &k->vm, &e), -ENOENT);
	snprintf(want, sizeof(want), "api socket %s: directory %s/nope does not exist", path2,
		 k->dir);
	assert_string_equal(e.msg, want);
	assert_int_equal(lstat(path2, &st), -1);

	/* too long for sun_path: 108 bytes refused, 107 would fit */
	memset(path2, 'a', 108);
	path2[0] = '/';
	path2[108] = '\0';
	assert_int_equal(api_server_create(&s2, loop2, path2, &k->vm, &e), -ENAMETOOLONG);
	assert_string_equal(e.msg, "api socket path too long (max 107 bytes)");

	assert_int_equal(api_server_create(&s2, loop2, "", &k->vm, &e), -EINVAL);
	assert_null(s2);
	evloop_destroy(loop2);
}

static void test_socket_session(void **state)
{
	struct sock *k = *state;
	static const char pipelined[] =
		"{\"cmd\":\"pause\"}\n{\"cmd\":\"status\"}\n{\"cmd\":\"resume\"}\n";
	int fd = raw_connect(k->path);

	/* errors leave the connection usable */
	raw_send(fd, "not json\n");
	raw_expect(fd, "\"ok\":false,\"error\":\"malformed JSON");
	raw_send(fd, "[1]\n");
	raw_expect(fd, "request must be a JSON object");
	raw_send(fd, "{\"cmd\":\"nope\"}\n");
	raw_expect(fd, "unknown command");
	raw_send(fd, "{\"cmd\":7}\n");
	raw_expect(fd, "must be a string");

	/* blank lines get no answer; CRLF is accepted */
	raw_send(fd, "\n  \n\r\n{\"cmd\":\"status\"}\r\n");
	raw_expect(fd, "\"ok\":true,\"name\":\"sockvm\"");

	/* a request in pieces */
	raw_send(fd, "{\"cmd\":");
	usleep(20000);
	raw_send(fd, "\"status\"}\n");
	raw_expect(fd, "\"state\":\"running\"");

	/* several requests in one write: answered in order */
	raw_send(fd, pipelined);
	raw_expect(fd, "{\"ok\":true}");
	raw_expect(fd, "\"state\":\"paused\"");
	raw_expect(fd, "{\"ok\":true}");
	close(fd);
}

static void test_socket_half_close(void **state)
{
	struct sock *k = *state;
	char line[4096];
	int fd = raw_connect(k->path);

	/* send, shut the writing side, still get every answer, then EOF */
	raw_send(fd, "{\"cmd\":\"status\"}\n{\"cmd\":\"status\"}\n{\"cmd\":\"st");
	shutdown(fd, SHUT_WR);
	raw_expect(fd, "\"ok\":true");
	raw_expect(fd, "\"ok\":true");
	assert_int_equal(raw_read_line(fd, line, sizeof(line)), -1);
	close(fd);
}

static void test_socket_line_limits(void **state)
{
	struct sock *k = *state;
	static const char pad_prefix[] = "{\"cmd\":\"status\",\"pad\":\"";
	size_t big = API_LINE_MAX + 100;
	char *line = malloc(big + 1);
	char reply[4096];
	int fd;

	assert_non_null(line);

	/* exactly API_LINE_MAX bytes is still a request (here with an unknown argument) */
	fd = raw_connect(k->path);
	memset(line, 'x', API_LINE_MAX);
	memcpy(line, pad_prefix, strlen(pad_prefix));
	memcpy(line + API_LINE_MAX - 2, "\"}\n", 3);
	raw_sendn(fd, line, API_LINE_MAX + 1);
	raw_expect(fd, "status: unknown argument \\\"pad\\\"");
	raw_send(fd, "{\"cmd\":\"status\"}\n");
	raw_expect(fd, "\"ok\":true");
	close(fd);

	/* one byte more without a newline: an error, then the connection closes */
	fd = raw_connect(k->path);
	memset(line, 'y', big);
	raw_sendn(fd, line, API_LINE_MAX + 1);
	raw_expect(fd, "request line too long (max 65536 bytes)");
	assert_int_equal(raw_read_line(fd, reply, sizeof(reply)), -1);
	close(fd);
	free(line);

	/* the server is fine */
	json_decref(sock_call(k, "{\"cmd\":\"status\"}"));
}

static void test_socket_disconnects(void **state)
{
	struct sock *k = *state;
	json_t *resp;
	int fd;

	/* mid-line */
	fd = raw_connect(k->path);
	raw_send(fd, "{\"cmd\":\"sta");
	close(fd);
	/* before reading the answers: what it sent still runs (fire-and-forget "stop") */
	fd = raw_connect(k->path);
	raw_send(fd, "{\"cmd\":\"pause\"}\n{\"cmd\":\"resume\"}\n{\"cmd\":\"pause\"}\n");
	close(fd);
	/* without sending anything */
	fd = raw_connect(k->path);
	close(fd);

	resp = sock_call(k, "{\"cmd\":\"status\"}");
	assert_true(json_is_true(json_object_get(resp, "ok")));
	json_decref(resp);
	sock_loop_stop(k);
	assert_int_equal(k->vm.pauses, 2);
	assert_int_equal(k->vm.resumes, 1);
}

static void test_socket_client_limit(void **state)
{
	struct sock *k = *state;
	int fds[API_CLIENTS_MAX], extra, i;
	json_t *resp = NULL;
	char line[4096];

	for (i = 0; i < API_CLIENTS_MAX; i++) {
		fds[i] = raw_connect(k->path);
		/* a reply proves the server took the client on */
		raw_send(fds[i], "{\"cmd\":\"status\"}\n");
		raw_expect(fds[i], "\"ok\":true");
	}
	extra = raw_connect(k->path);
	raw_expect(extra, "too many api clients (max 16)");
	assert_int_equal(raw_read_line(extra, line, sizeof(line)), -1);
	close(extra);

	/* a slot frees when a client leaves (the server notices asynchronously) */
	close(fds[0]);
	for (i = 0; i < 100; i++) {
		resp = sock_call(k, "{\"cmd\":\"status\"}");
		if (json_is_true(json_object_get(resp, "ok")))
			break;
		json_decref(resp);
		resp = NULL;
		usleep(10000);
	}
	assert_non_null(resp);
	json_decref(resp);
	for (i = 1; i < API_CLIENTS_MAX; i++)
		close(fds[i]);
}

static void test_client_errors(void **state)
{
	struct sock *k = *state;
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct errbuf e = { .msg = "" };
	char path2[300], want[400];
	char *line = NULL;
	int fd;

	snprintf(path2, sizeof(path2), "%s/api2.sock", k->dir);
	assert_int_equal(api_client_call(path2, "{}", &line, 1000, &e), -ENOENT);
	snprintf(want, sizeof(want),
		 "connect %s: No such file or directory (is godwit running?)", path2);
	assert_string_equal(e.msg, want);

	/* a stale socket */
	sun_set(&sa, path2);
	fd = socket(AF_UNIX, SOCK_STREAM, 0);
	assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	close(fd);
	assert_int_equal(api_client_call(path2, "{}", &line, 1000, &e), -ECONNREFUSED);
	snprintf(want, sizeof(want), "connect %s: Connection refused (is godwit running?)",
		 path2);
	assert_string_equal(e.msg, want);
	unlink(path2);

	/* a listener that never answers */
	fd = socket(AF_UNIX, SOCK_STREAM, 0);
	assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(listen(fd, 1), 0);
	assert_int_equal(api_client_call(path2, "{}", &line, 100, &e), -ETIMEDOUT);
	snprintf(want, sizeof(want), "no response from %s within 100 ms", path2);
	assert_string_equal(e.msg, want);
	close(fd);
	unlink(path2);

	memset(path2, 'a', 200);
	path2[200] = '\0';
	assert_int_equal(api_client_call(path2, "{}", &line, 1000, &e), -ENAMETOOLONG);
	assert_string_equal(e.msg, "api socket path too long (max 107 bytes)");
	assert_int_equal(api_client_call(k->path, "{}\n{}", &line, 1000, &e), -EINVAL);
	assert_null(line);
}

/* ---- godwit status|pause|resume|stop ---- */

struct ctl_result {
	int code;
	char out[4096];
	char err[4096];
};

static void ctl_file_read(const char *path, char *buf, size_t cap)
{
	FILE *f = fopen(path, "r");
	size_t n;

	assert_non_null(f);
	n = fread(buf, 1, cap - 1, f);
	buf[n] = '\0';
	fclose(f);
}

/* Runs cli_ctl_main() with stdout and stderr captured. */
/* Runs a client subcommand's main with argv (NULL-terminated), capturing its output. */
static void ctl_run_argv(struct sock *k, struct ctl_result *r, int (*main_fn)(int, char **),
			 char **argv)
{
	char out_path[160], err_path[160];
	int argc = 0, saved_out, saved_err, fd;

	while (argv[argc])
		argc++;

	snprintf(out_path, sizeof(out_path), "%s/out", k->dir);
	snprintf(err_path, sizeof(err_path), "%s/err", k->dir);
	fflush(stdout);
	fflush(stderr);
	saved_out = dup(1);
	saved_err = dup(2);
	fd = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	dup2(fd, 1);
	close(fd);
	fd = open(err_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	dup2(fd, 2);
	close(fd);
	r->code = main_fn(argc, argv);
	fflush(stdout);
	fflush(stderr);
	dup2(saved_out, 1);
	dup2(saved_err, 2);
	close(saved_out);
	close(saved_err);
	ctl_file_read(out_path, r->out, sizeof(r->out));
	ctl_file_read(err_path, r->err, sizeof(r->err));
}

static void ctl_run(struct sock *k, struct ctl_result *r, ...)
{
	char *argv[16];
	int argc = 0;
	va_list ap;

	va_start(ap, r);
	while ((argv[argc] = va_arg(ap, char *)))
		argc++;
	va_end(ap);
	ctl_run_argv(k, r, cli_ctl_main, argv);
}

static void test_ctl_commands(void **state)
{
	struct sock *k = *state;
	struct ctl_result r;
	json_t *out;

	ctl_run(k, &r, "status", "--api-socket", k->path, NULL);
	assert_int_equal(r.code, 0);
	assert_string_equal(r.err, "");
	/* one line, one object, no "ok" */
	assert_non_null(strchr(r.out, '\n'));
	assert_int_equal(strchr(r.out, '\n') - r.out, strlen(r.out) - 1);
	out = json_loads(r.out, 0, NULL);
	assert_non_null(out);
	assert_null(json_object_get(out, "ok"));
	assert_string_equal(json_string_value(json_object_get(out, "name")), "sockvm");
	assert_string_equal(json_string_value(json_object_get(out, "state")), "running");
	assert_int_equal(json_integer_value(json_object_get(out, "memory")), 256 * MiB);
	assert_int_equal(json_integer_value(json_object_get(out, "vcpus")), 2);
	assert_true(json_is_integer(json_object_get(out, "uptime_ms")));
	json_decref(out);

	ctl_run(k, &r, "pause", "--api-socket", k->path, NULL);
	assert_int_equal(r.code, 0);
	assert_string_equal(r.out, "");
	assert_string_equal(r.err, "");
	ctl_run(k, &r, "status", "--api-socket=x", "--api-socket", k->path, NULL);
	assert_int_equal(r.code, 0);
	assert_non_null(strstr(r.out, "\"state\": \"paused\""));

	/* --digest goes through: the server refuses it for now */
	ctl_run(k, &r, "status", "--digest", "--api-socket", k->path, NULL);
	assert_int_equal(r.code, 1);
	assert_string_equal(r.out, "");
	assert_string_equal(r.err, "godwit status: fake VM: no digest\n");

	ctl_run(k, &r, "resume", "--api-socket", k->path, NULL);
	assert_int_equal(r.code, 0);
	ctl_run(k, &r, "status", "--digest", "--api-socket", k->path, NULL);
	assert_int_equal(r.code, 1);
	assert_string_equal(r.err, "godwit status: digest needs a paused VM\n");

	ctl_run(k, &r, "stop", "--api-socket", k->path, NULL);
	assert_int_equal(r.code, 0);
	assert_string_equal(r.out, "");
	sock_loop_stop(k);
	assert_int_equal(k->vm.pauses, 1);
	assert_int_equal(k->vm.resumes, 1);
	assert_int_equal(k->vm.stops, 1);
}

static void test_ctl_vm_error(void **state)
{
	struct sock *k = *state;
	struct ctl_result r;

	k->vm.pause_ret = -EBUSY;
	k->vm.pause_msg = "cannot pause: VM is stopping";
	ctl_run(k, &r, "pause", "--api-socket", k->path, NULL);
	assert_int_equal(r.code, 1);
	assert_string_equal(r.out, "");
	assert_string_equal(r.err, "godwit pause: cannot pause: VM is stopping\n");
}

static void test_ctl_usage(void **state)
{
	struct sock *k = *state;
	struct ctl_result r;
	char want[400];

	ctl_run(k, &r, "status", "--foo", NULL);
	assert_int_equal(r.code, 2);
	assert_string_equal(r.err, "godwit status: unknown option --foo\n");
	ctl_run(k, &r, "status", "--api-socket", k->path, "--foo=1", NULL);
	assert_int_equal(r.code, 2);
	assert_string_equal(r.err, "godwit status: unknown option --foo\n");
	ctl_run(k, &r, "pause", "-x", "--api-socket", k->path, NULL);
	assert_int_equal(r.code, 2);
	assert_string_equal(r.err, "godwit pause: unknown option -x\n");
	ctl_run(k, &r, "pause", "--digest", "--api-socket", k->path, NULL);
	assert_int_equal(r.code, 2);
	assert_string_equal(r.err, "godwit pause: unknown option --digest\n");
	ctl_run(k, &r, "resume", "--api-socket", k->path, "extra", NULL);
	assert_int_equal(r.code, 2);
	assert_string_equal(r.err, "godwit resume: unexpected argument 'extra'\n");
	ctl_run(k, &r, "stop", NULL);
	assert_int_equal(r.code, 2);
	assert_string_equal(r.err, "godwit stop: --api-socket PATH is required\n");
	ctl_run(k, &r, "stop", "--api-socket", NULL);
	assert_int_equal(r.code, 2);
	assert_string_equal(r.err, "godwit stop: option --api-socket needs a value\n");
	ctl_run(k, &r, "status", "--api-socket", "", NULL);
	assert_int_equal(r.code, 2);

	ctl_run(k, &r, "status", "-h", NULL);
	assert_int_equal(r.code, 0);
	assert_non_null(strstr(r.out, "usage: godwit status --api-socket PATH [--digest]"));
	assert_string_equal(r.err, "");
	ctl_run(k, &r, "stop", "--help", NULL);
	assert_int_equal(r.code, 0);
	assert_non_null(strstr(r.out, "usage: godwit stop --api-socket PATH\n"));

	/* nobody listening */
	snprintf(want, sizeof(want),
		 "godwit status: connect %s/api2.sock: No such file or directory "
		 "(is godwit running?)\n", k->dir);
	{
		char p[200];

		snprintf(p, sizeof(p), "%s/api2.sock", k->dir);
		ctl_run(k, &r, "status", "--api-socket", p, NULL);
	}
	assert_int_equal(r.code, 1);
	assert_string_equal(r.err, want);

	sock_loop_stop(k);
	assert_int_equal(k->vm.pauses + k->vm.resumes + k->vm.stops, 0);
}

/* ---- migration parameters: one validation for the API and `godwit migrate` ---- */

/* Valid values reach the engine as given; 0 means "no limit" for rounds and time. */
/*
 * migrate-status says when each step of a move happened, as wall-clock microseconds, so
 * the bench can line the pause and the resume up with what the guest printed; steps not
 * reached are left out, and a VM that never migrated shows no timeline.
 */
static void test_migrate_status_timeline(void **state)
{
	struct direct *d = *state;
	json_t *resp, *tl;

	memset(&fake_mig_status, 0, sizeof(fake_mig_status));
	resp = req_run(d, "{\"cmd\": \"migrate-status\"}");
	assert_true(json_is_true(json_object_get(resp, "ok")));
	assert_null(json_object_get(resp, "timeline_unix_us"));
	json_decref(resp);

	fake_mig_status.state = MIG_STATE_COMPLETING;
	fake_mig_status.times.start = 1764600000123456789ull;
	fake_mig_status.times.tracking = 1764600000223456999ull;
	fake_mig_status.times.pause = 1764600004000001000ull;
	fake_mig_status.times.paused = 1764600004000251000ull;
	resp = req_run(d, "{\"cmd\": \"migrate-status\"}");
	tl = json_object_get(resp, "timeline_unix_us");
	assert_true(json_is_object(tl));
	assert_int_equal(json_object_size(tl), 4);
	assert_int_equal(json_integer_value(json_object_get(tl, "start")), 1764600000123456ll);
	assert_int_equal(json_integer_value(json_object_get(tl, "tracking")), 1764600000223456ll);
	assert_int_equal(json_integer_value(json_object_get(tl, "pause")), 1764600004000001ll);
	assert_int_equal(json_integer_value(json_object_get(tl, "paused")), 1764600004000251ll);
	assert_null(json_object_get(tl, "commit"));
	json_decref(resp);

	/* the destination's side of the handover */
	memset(&fake_mig_status, 0, sizeof(fake_mig_status));
	fake_mig_status.state = MIG_STATE_COMPLETED;
	fake_mig_status.incoming = true;
	fake_mig_status.times.start = 1764600000100000000ull;
	fake_mig_status.times.ready = 1764600004008000000ull;
	fake_mig_status.times.commit = 1764600004009000000ull;
	fake_mig_status.times.started = 1764600004009300000ull;
	fake_mig_status.times.running = 1764600004009350000ull;
	resp = req_run(d, "{\"cmd\": \"migrate-status\"}");
	tl = json_object_get(resp, "timeline_unix_us");
	assert_int_equal(json_object_size(tl), 5);
	assert_int_equal(json_integer_value(json_object_get(tl, "ready")), 1764600004008000ll);
	assert_int_equal(json_integer_value(json_object_get(tl, "commit")), 1764600004009000ll);
	assert_int_equal(json_integer_value(json_object_get(tl, "started")), 1764600004009300ll);
	assert_int_equal(json_integer_value(json_object_get(tl, "running")), 1764600004009350ll);
	json_decref(resp);
	memset(&fake_mig_status, 0, sizeof(fake_mig_status));
}

static void test_migrate_params_reach_engine(void **state)
{
	struct direct *d = *state;
	unsigned starts = fake_mig_starts;

	req_expect_error(d, "{\"cmd\": \"migrate\", \"uri\": \"unix:/x\", \"mode\": \"warm\", "
			    "\"downtime_ms\": 3600000, \"bandwidth\": 1125899906842624, "
			    "\"max_rounds\": 0, \"timeout_ms\": 86400000, "
			    "\"dirty_tracking\": \"ring\", \"on_stall\": \"cancel\", "
			    "\"compress\": \"auto:19\"}",
			 "fake VM: no migration");
	assert_int_equal(fake_mig_params.compress, MIG_COMPRESS_AUTO);
	assert_int_equal(fake_mig_params.compress_level, 19);
	assert_int_equal(fake_mig_starts, starts + 1);
	assert_string_equal(fake_mig_params.uri, "unix:/x");
	assert_int_equal(fake_mig_params.mode, MIG_MODE_WARM);
	assert_int_equal(fake_mig_params.downtime_ms, 3600000);
	assert_int_equal(fake_mig_params.bandwidth, 1ull << 50);
	assert_int_equal(fake_mig_params.max_rounds, 0);
	assert_int_equal(fake_mig_params.timeout_ms, 86400000);
	assert_int_equal(fake_mig_params.dirty_tracking, VM_DIRTY_RING);
	assert_int_equal(fake_mig_params.on_stall, MIG_STALL_CANCEL);
	req_expect_error(d, "{\"cmd\": \"migrate\", \"uri\": \"unix:/x\"}", "fake VM: no migration");
	assert_int_equal(fake_mig_params.mode, MIG_MODE_LIVE);
	assert_int_equal(fake_mig_params.downtime_ms, 300);
	assert_int_equal(fake_mig_params.timeout_ms, 0);
	assert_int_equal(fake_mig_params.dirty_tracking, -1);
	assert_int_equal(fake_mig_params.on_stall, MIG_STALL_THROTTLE);
	assert_int_equal(fake_mig_params.compress, MIG_COMPRESS_NONE);
	req_expect_error(d, "{\"cmd\": \"migrate\", \"uri\": \"unix:/x\", \"compress\": \"zstd\"}",
			 "fake VM: no migration");
	assert_int_equal(fake_mig_params.compress, MIG_COMPRESS_ZSTD);
	assert_int_equal(fake_mig_params.compress_level, 1);
	assert_int_equal(fake_mig_params.connections, 1);
	req_expect_error(d, "{\"cmd\": \"migrate\", \"uri\": \"unix:/x\", \"connections\": 16}",
			 "fake VM: no migration");
	assert_int_equal(fake_mig_params.connections, 16);
	assert_int_equal(fake_mig_params.delta_cache, 0);
	req_expect_error(d, "{\"cmd\": \"migrate\", \"uri\": \"unix:/x\", \"delta\": \"xbzrle\"}",
			 "fake VM: no migration");
	assert_int_equal(fake_mig_params.delta_cache, 64ull << 20);
	req_expect_error(d, "{\"cmd\": \"migrate\", \"uri\": \"unix:/x\", "
			    "\"delta\": \"xbzrle:1G\", \"compress\": \"zstd\"}", "fake VM: no migration");
	assert_int_equal(fake_mig_params.delta_cache, 1ull << 30);
	assert_int_equal(fake_mig_params.compress, MIG_COMPRESS_ZSTD);
	/* deltas over several connections reach the engine */
	req_expect_error(d, "{\"cmd\": \"migrate\", \"uri\": \"unix:/x\", "
			    "\"delta\": \"xbzrle:8M\", \"connections\": 4}",
			 "fake VM: no migration");
	assert_int_equal(fake_mig_params.delta_cache, 8ull << 20);
	assert_int_equal(fake_mig_params.connections, 4);
}

/* The TLS options reach the engine as given; a directory and a PSK together never do. */
static void test_migrate_tls_params(void **state)
{
	struct direct *d = *state;
	unsigned starts = fake_mig_starts;

	req_expect_error(d, "{\"cmd\": \"migrate\", \"uri\": \"tcp:10.0.0.2:4444\", "
			    "\"tls_dir\": \"/etc/pki/godwit\", \"tls_hostname\": \"dst.example\"}",
			 "fake VM: no migration");
	assert_int_equal(fake_mig_starts, starts + 1);
	assert_string_equal(fake_mig_params.tls.dir, "/etc/pki/godwit");
	assert_string_equal(fake_mig_params.tls.hostname, "dst.example");
	assert_string_equal(fake_mig_params.tls.psk, "");
	req_expect_error(d, "{\"cmd\": \"migrate\", \"uri\": \"unix:/x\", \"tls_psk\": \"/k.psk\"}",
			 "fake VM: no migration");
	assert_string_equal(fake_mig_params.tls.psk, "/k.psk");
	assert_string_equal(fake_mig_params.tls.dir, "");
	req_expect_error(d, "{\"cmd\": \"migrate\", \"uri\": \"unix:/x\", \"tls_dir\": \"/d\", "
			    "\"tls_psk\": \"/k.psk\"}", "migrate: tls_dir and tls_psk exclude each other");
	req_expect_error(d, "{\"cmd\": \"migrate\", \"uri\": \"unix:/x\", \"tls_dir\": \"\"}",
			 "migrate: tls_dir must be 1 to 4095 bytes");
	assert_int_equal(fake_mig_starts, starts + 2);
}

/*
 * Post-copy in any form (and its resume) with any TLS option reaches the engine, which runs
 * it over TLS: the parameter validation no longer turns it away.
 */
static void test_migrate_tls_postcopy(void **state)
{
	static const char *const pc[] = { "\"mode\": \"postcopy\"", "\"postcopy_after\": 3",
					  "\"on_stall\": \"postcopy\"", "\"resume\": true" };
	static const char *const tls[] = { "\"tls_dir\": \"/d\"", "\"tls_psk\": \"/k.psk\"",
					   "\"tls_hostname\": \"dst.example\"" };
	struct direct *d = *state;
	unsigned starts = fake_mig_starts;
	char req[256];

	for (size_t i = 0; i < sizeof(pc) / sizeof(pc[0]); i++) {
		for (size_t j = 0; j < sizeof(tls) / sizeof(tls[0]); j++) {
			snprintf(req, sizeof(req), "{\"cmd\": \"migrate\", \"uri\": \"unix:/x\", "
				 "%s, %s}", pc[i], tls[j]);
			req_expect_error(d, req, "fake VM: no migration");
		}
	}
	assert_int_equal(fake_mig_starts, starts + 12);
}

/*
 * Out-of-bounds values never reach the engine: a timeout_ms so large that the deadline
 * would wrap into the past, negative numbers, a max_rounds that a 32-bit field would
 * have truncated into range.
 */
#define COMPRESS_BAD \
	"migrate: compress must be none, zstd[:LEVEL] or auto[:LEVEL] with LEVEL 1 to 19"

#define DELTA_BAD "migrate: delta must be none or xbzrle[:CACHE_SIZE] with CACHE_SIZE 1M to 1T"
#define DELTA_LIVE \
	"migrate: delta xbzrle is for live moves (not mode warm or postcopy, or resume)"

#define CONNECTIONS_PC \
	"migrate: connections above 1 are for warm and live moves; post-copy (mode postcopy, " \
	"postcopy_after, on_stall postcopy, resume) uses one connection"

static void test_migrate_params_bounds(void **state)
{
	static const struct {
		const char *arg;
		const char *err;
	} bad[] = {
		{ "\"timeout_ms\": 9223372036854775807",
		  "migrate: timeout_ms must be 0 (no limit) to 86400000" },
		{ "\"timeout_ms\": 18446744073709552", /* ms whose ns product wraps 2^64 */
		  "migrate: timeout_ms must be 0 (no limit) to 86400000" },
		{ "\"timeout_ms\": 86400001", "migrate: timeout_ms must be 0 (no limit) to 86400000" },
		{ "\"timeout_ms\": -1", "migrate: timeout_ms must be 0 (no limit) to 86400000" },
		{ "\"downtime_ms\": 0", "migrate: downtime_ms must be 1 to 3600000" },
		{ "\"downtime_ms\": -300", "migrate: downtime_ms must be 1 to 3600000" },
		{ "\"bandwidth\": -1", "migrate: bandwidth must be 0 (no cap) to 1125899906842624 bytes/s" },
		{ "\"bandwidth\": 1125899906842625",
		  "migrate: bandwidth must be 0 (no cap) to 1125899906842624 bytes/s" },
		{ "\"max_rounds\": 4294967297", "migrate: max_rounds must be 0 (no limit) to 100000" },
		{ "\"max_rounds\": 100001", "migrate: max_rounds must be 0 (no limit) to 100000" },
		{ "\"mode\": \"fast\"", "migrate: mode must be live, warm or postcopy" },
		{ "\"on_stall\": \"wait\"",
		  "migrate: on_stall must be throttle, pause, cancel or postcopy" },
		{ "\"postcopy_after\": 100001", "migrate: postcopy_after must be 0 (never) to 100000" },
		{ "\"postcopy_after\": -1", "migrate: postcopy_after must be 0 (never) to 100000" },
		{ "\"mode\": \"warm\", \"postcopy_after\": 2",
		  "migrate: postcopy_after and on_stall postcopy are for live migration (mode "
		  "postcopy switches after the first pass)" },
		{ "\"mode\": \"postcopy\", \"on_stall\": \"postcopy\"",
		  "migrate: postcopy_after and on_stall postcopy are for live migration (mode "
		  "postcopy switches after the first pass)" },
		{ "\"dirty_tracking\": \"pml\"", "migrate: dirty_tracking must be bitmap or ring" },
		{ "\"compress\": \"lz4\"", COMPRESS_BAD },
		{ "\"compress\": \"zstd:0\"", COMPRESS_BAD },
		{ "\"compress\": \"auto:20\"", COMPRESS_BAD },
		{ "\"compress\": \"zstd:99999999999999999999\"", COMPRESS_BAD },
		{ "\"compress\": \"none:1\"", COMPRESS_BAD },
		{ "\"compress\": \"\"", COMPRESS_BAD },
		{ "\"connections\": 0", "migrate: connections must be 1 to 16" },
		{ "\"connections\": 17", "migrate: connections must be 1 to 16" },
		{ "\"connections\": -1", "migrate: connections must be 1 to 16" },
		{ "\"connections\": 4294967298", "migrate: connections must be 1 to 16" },
		{ "\"mode\": \"postcopy\", \"connections\": 2", CONNECTIONS_PC },
		{ "\"postcopy_after\": 1, \"connections\": 2", CONNECTIONS_PC },
		{ "\"on_stall\": \"postcopy\", \"connections\": 16", CONNECTIONS_PC },
		{ "\"resume\": true, \"connections\": 2", CONNECTIONS_PC },
		{ "\"delta\": \"xor\"", DELTA_BAD },
		{ "\"delta\": \"xbzrle:\"", DELTA_BAD },
		{ "\"delta\": \"xbzrle:512K\"", DELTA_BAD },
		{ "\"delta\": \"xbzrle:2T\"", DELTA_BAD },
		{ "\"delta\": \"xbzrle64M\"", DELTA_BAD },
		{ "\"delta\": \"\"", DELTA_BAD },
		{ "\"mode\": \"warm\", \"delta\": \"xbzrle\"", DELTA_LIVE },
		{ "\"mode\": \"postcopy\", \"delta\": \"xbzrle\"", DELTA_LIVE },
		{ "\"mode\": \"warm\", \"delta\": \"xbzrle\", \"connections\": 2", DELTA_LIVE },
		{ "\"delta\": \"xbzrle\", \"resume\": true", DELTA_LIVE },
	};
	struct direct *d = *state;
	unsigned starts = fake_mig_starts;
	char line[256], longline[700];

	for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
		snprintf(line, sizeof(line), "{\"cmd\": \"migrate\", \"uri\": \"unix:/x\", %s}",
			 bad[i].arg);
		req_expect_error(d, line, bad[i].err);
	}
	/* a URI longer than the engine's field is refused, not cut short */
	snprintf(longline, sizeof(longline), "{\"cmd\": \"migrate\", \"uri\": \"unix:/%0600d\"}", 0);
	req_expect_error(d, longline, "migrate: uri must be 1 to 511 bytes");
	assert_int_equal(fake_mig_starts, starts);
}

/*
 * The CLI checks its options with the API's validation: on each side of every bound,
 * `godwit migrate` refuses (exit 2, naming the option) exactly what the API refuses,
 * and what it accepts reaches the engine through the API with the same value.
 */
static void test_migrate_cli_api_agree(void **state)
{
	static const struct {
		const char *opt, *val, *key;
		long long api_val;
		bool ok;
	} cases[] = {
		{ "--downtime-ms", "0", "downtime_ms", 0, false },
		{ "--downtime-ms", "1", "downtime_ms", 1, true },
		{ "--downtime-ms", "3600000", "downtime_ms", 3600000, true },
		{ "--downtime-ms", "3600001", "downtime_ms", 3600001, false },
		{ "--timeout", "0", "timeout_ms", 0, true },
		{ "--timeout", "86400", "timeout_ms", 86400000, true },
		{ "--timeout", "86401", "timeout_ms", 86401000, false },
		{ "--timeout", "18446744073709552", "timeout_ms", -1, false },
		{ "--max-rounds", "0", "max_rounds", 0, true },
		{ "--max-rounds", "100000", "max_rounds", 100000, true },
		{ "--max-rounds", "100001", "max_rounds", 100001, false },
		{ "--bandwidth", "1024T", "bandwidth", 1ll << 50, true },
		{ "--bandwidth", "1025T", "bandwidth", 1025ll << 40, false },
		{ "--connections", "0", "connections", 0, false },
		{ "--connections", "1", "connections", 1, true },
		{ "--connections", "16", "connections", 16, true },
		{ "--connections", "17", "connections", 17, false },
	};
	struct sock *k = *state;
	struct direct d = { .s = k->s };

	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		char *argv[] = { "migrate", "--api-socket", k->path, (char *)cases[i].opt,
				 (char *)cases[i].val, "unix:/x", NULL };
		unsigned starts = fake_mig_starts;
		struct ctl_result r;
		json_t *resp;
		char line[200], want[200];
		bool api_ok;

		ctl_run_argv(k, &r, cli_migrate_main, argv);
		snprintf(line, sizeof(line), "{\"cmd\": \"migrate\", \"uri\": \"unix:/x\", \"%s\": %lld}",
			 cases[i].key, cases[i].api_val);
		resp = req_run(&d, line);
		api_ok = !strcmp(json_string_value(json_object_get(resp, "error")) ?: "",
				 "fake VM: no migration");
		json_decref(resp);
		if (api_ok != cases[i].ok)
			fail_msg("API %s: %s, expected %s", line, api_ok ? "accepted" : "refused",
				 cases[i].ok ? "accepted" : "refused");
		if (cases[i].ok) {
			/* through the socket to the (fake) engine, then the request made directly */
			if (r.code != 1 || !strstr(r.err, "fake VM: no migration"))
				fail_msg("migrate %s %s: exit %d: %s", cases[i].opt, cases[i].val,
					 r.code, r.err);
			assert_int_equal(fake_mig_starts, starts + 2);
		} else {
			snprintf(want, sizeof(want), "godwit migrate: %s %s: %s must be", cases[i].opt,
				 cases[i].val, cases[i].key);
			if (r.code != 2 || strncmp(r.err, want, strlen(want)))
				fail_msg("migrate %s %s: exit %d: %s (want \"%s...\")", cases[i].opt,
					 cases[i].val, r.code, r.err, want);
			assert_int_equal(fake_mig_starts, starts);
		}
	}
	sock_loop_stop(k);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_status_fields, direct_setup, direct_teardown),
		cmocka_unit_test_setup_teardown(test_status_devices, direct_setup, direct_teardown),
		cmocka_unit_test_setup_teardown(test_status_name_not_utf8, direct_setup,
						direct_teardown),
		cmocka_unit_test_setup_teardown(test_pause_resume, direct_setup, direct_teardown),
		cmocka_unit_test_setup_teardown(test_vm_errors, direct_setup, direct_teardown),
		cmocka_unit_test_setup_teardown(test_snapshot_handed_over, direct_setup,
						direct_teardown),
		cmocka_unit_test_setup_teardown(test_stop, direct_setup, direct_teardown),
		cmocka_unit_test_setup_teardown(test_malformed_json, direct_setup, direct_teardown),
		cmocka_unit_test_setup_teardown(test_not_object, direct_setup, direct_teardown),
		cmocka_unit_test_setup_teardown(test_missing_cmd, direct_setup, direct_teardown),
		cmocka_unit_test_setup_teardown(test_cmd_wrong_type, direct_setup, direct_teardown),
		cmocka_unit_test_setup_teardown(test_unknown_cmd, direct_setup, direct_teardown),
		cmocka_unit_test_setup_teardown(test_arguments, direct_setup, direct_teardown),
		cmocka_unit_test_setup_teardown(test_digest, direct_setup, direct_teardown),
		cmocka_unit_test_setup_teardown(test_migrate_status_timeline, direct_setup,
						direct_teardown),
		cmocka_unit_test_setup_teardown(test_socket_round_trip, sock_setup, sock_teardown),
		cmocka_unit_test_setup_teardown(test_socket_mode, sock_setup, sock_teardown),
		cmocka_unit_test_setup_teardown(test_socket_in_use, sock_setup, sock_teardown),
		cmocka_unit_test_setup_teardown(test_socket_stale_replaced, sock_setup,
						sock_teardown),
		cmocka_unit_test_setup_teardown(test_socket_refusals, sock_setup, sock_teardown),
		cmocka_unit_test_setup_teardown(test_socket_session, sock_setup, sock_teardown),
		cmocka_unit_test_setup_teardown(test_socket_half_close, sock_setup, sock_teardown),
		cmocka_unit_test_setup_teardown(test_socket_line_limits, sock_setup, sock_teardown),
		cmocka_unit_test_setup_teardown(test_socket_disconnects, sock_setup, sock_teardown),
		cmocka_unit_test_setup_teardown(test_socket_client_limit, sock_setup, sock_teardown),
		cmocka_unit_test_setup_teardown(test_client_errors, sock_setup, sock_teardown),
		cmocka_unit_test_setup_teardown(test_ctl_commands, sock_setup, sock_teardown),
		cmocka_unit_test_setup_teardown(test_ctl_vm_error, sock_setup, sock_teardown),
		cmocka_unit_test_setup_teardown(test_ctl_usage, sock_setup, sock_teardown),
		cmocka_unit_test_setup_teardown(test_migrate_params_reach_engine, direct_setup,
						direct_teardown),
		cmocka_unit_test_setup_teardown(test_migrate_tls_params, direct_setup,
						direct_teardown),
		cmocka_unit_test_setup_teardown(test_migrate_tls_postcopy, direct_setup,
						direct_teardown),
		cmocka_unit_test_setup_teardown(test_migrate_params_bounds, direct_setup,
						direct_teardown),
		cmocka_unit_test_setup_teardown(test_migrate_cli_api_agree, sock_setup,
						sock_teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
