/* SPDX-License-Identifier: MIT */
/*
 * The guest console (vmm/console.c) on a pipe: output reaches a sink that can take it
 * before console_write() returns, in order, byte by byte as a guest's UART sends it (a
 * writer thread left unscheduled on a loaded host held heartbeat lines back and let them
 * out in bursts); a full pipe never blocks the writer and loses nothing that fits the
 * buffer; a regular file still gets everything through the writer thread.
 */
#include "vmm/console.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

static void test_pipe_written_at_once(void **state)
{
	struct console *c;
	struct errbuf e = { .msg = "" };
	int fds[2];

	(void)state;
	assert_int_equal(pipe2(fds, O_CLOEXEC), 0);
	assert_int_equal(fcntl(fds[0], F_SETFL, O_NONBLOCK), 0);
	assert_int_equal(console_create(&c, fds[1], &e), 0);
	/* 200 lines a byte at a time: each byte is in the pipe when console_write() returns */
	for (int line = 0; line < 200; line++) {
		char text[16];
		int len = snprintf(text, sizeof(text), "hb %d\n", line + 1);

		for (int i = 0; i < len; i++) {
			char got;

			console_write(c, (const uint8_t *)&text[i], 1);
			if (read(fds[0], &got, 1) != 1)
				fail_msg("line %d byte %d not written before console_write() "
					 "returned (%s)", line + 1, i, strerror(errno));
			assert_int_equal(got, text[i]);
		}
	}
	assert_int_equal(console_dropped(c), 0);
	console_destroy(c);
	close(fds[0]);
	close(fds[1]);
}

static void test_full_pipe_queues(void **state)
{
	struct console *c;
	struct errbuf e = { .msg = "" };
	static uint8_t big[CONSOLE_BUF_SIZE / 2], out[CONSOLE_BUF_SIZE];
	size_t total = 0, filled = 0;
	int fds[2];

	(void)state;
	assert_int_equal(pipe2(fds, O_CLOEXEC), 0);
	/* a full pipe: nothing more fits until the reader reads */
	assert_int_equal(fcntl(fds[1], F_SETFL, O_NONBLOCK), 0);
	for (;;) {
		ssize_t n = write(fds[1], big, sizeof(big));

		if (n <= 0)
			break;
		filled += (size_t)n;
	}
	assert_int_equal(fcntl(fds[1], F_SETFL, 0), 0);
	assert_int_equal(console_create(&c, fds[1], &e), 0);
	for (size_t i = 0; i < sizeof(big); i++)
		big[i] = (uint8_t)(i * 7 + 1);
	console_write(c, big, sizeof(big)); /* returns: queued, not waited for */
	/* drain the filler, then everything queued arrives, in order */
	while (total < filled + sizeof(big)) {
		ssize_t n = read(fds[0], out, sizeof(out));

		assert_true(n > 0);
		for (ssize_t i = 0; i < n; i++, total++)
			if (total >= filled)
				assert_int_equal(out[i], big[total - filled]);
	}
	assert_int_equal(console_dropped(c), 0);
	console_destroy(c);
	close(fds[0]);
	close(fds[1]);
}

static void test_regular_file(void **state)
{
	char path[] = "/tmp/godwit-console-test.XXXXXX";
	struct console *c;
	struct errbuf e = { .msg = "" };
	char buf[64] = "";
	int fd = mkstemp(path);

	(void)state;
	assert_true(fd >= 0);
	unlink(path);
	assert_int_equal(console_create(&c, fd, &e), 0);
	console_write(c, (const uint8_t *)"hb 1\nhb 2\n", 10);
	console_destroy(c); /* writes out what is queued */
	assert_int_equal(pread(fd, buf, sizeof(buf) - 1, 0), 10);
	assert_string_equal(buf, "hb 1\nhb 2\n");
	close(fd);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_pipe_written_at_once),
		cmocka_unit_test(test_full_pipe_queues),
		cmocka_unit_test(test_regular_file),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
