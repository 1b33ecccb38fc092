/* SPDX-License-Identifier: MIT */
/*
 * The migration deadline watchdog (src/migration/deadline.c) on a socketpair: a read
 * blocked on the connection fails once the deadline passes and the error names the phase;
 * a deadline re-armed to "never" before it passes leaves the connection alone.
 */
#include "migration/mig_internal.h"

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <cmocka.h>

static void test_deadline_cuts_a_blocked_read(void **state)
{
	struct mig_deadline d;
	struct errbuf e;
	int fds[2];
	char c;

	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
	assert_int_equal(mig_deadline_start(&d, fds[0], &e), 0);
	/* before it fires, an error is passed through as it is */
	assert_int_equal(mig_deadline_check(&d, -EPIPE, &e), -EPIPE);
	mig_deadline_set(&d, 50, "the test phase");
	/* nothing is ever written: only the watchdog can end this read */
	assert_int_equal(read(fds[0], &c, 1), 0);
	assert_int_equal(mig_deadline_check(&d, 0, &e), 0);
	assert_int_equal(mig_deadline_check(&d, -EPIPE, &e), -ETIMEDOUT);
	if (!strstr(e.msg, "the test phase took longer than its deadline of 50 ms"))
		fail_msg("message: %s", e.msg);
	mig_deadline_stop(&d);
	close(fds[0]);
	close(fds[1]);
}

static void test_deadline_rearmed_to_never(void **state)
{
	struct mig_deadline d;
	struct errbuf e;
	int fds[2];
	char c = 0;

	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
	assert_int_equal(mig_deadline_start(&d, fds[0], &e), 0);
	mig_deadline_set(&d, 1000, "a phase that ended in time");
	mig_deadline_set(&d, UINT64_MAX, "after the phase");
	usleep(1500000); /* past the first deadline */
	assert_int_equal(write(fds[1], "x", 1), 1);
	assert_int_equal(read(fds[0], &c, 1), 1);
	assert_int_equal(c, 'x');
	assert_int_equal(mig_deadline_check(&d, -EPIPE, &e), -EPIPE);
	mig_deadline_stop(&d);
	close(fds[0]);
	close(fds[1]);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_deadline_cuts_a_blocked_read),
		cmocka_unit_test(test_deadline_rearmed_to_never),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
