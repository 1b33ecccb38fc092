/* SPDX-License-Identifier: MIT */
/* A cmocka assertion for the project's error convention: a return value and a message. */
#ifndef GODWIT_TESTS_ASSERT_ERR_H
#define GODWIT_TESTS_ASSERT_ERR_H

#include <string.h>

/* asserts that a call failed with ret and that its errbuf message e contains needle */
#define assert_fails_with(call, ret, e, needle)                                                \
	do {                                                                                   \
		int r_ = (call);                                                               \
		if (r_ != (ret) || !strstr((e)->msg, (needle)))                                \
			fail_msg("%s: got %d \"%s\", expected %d and \"%s\"", #call, r_,        \
				 (e)->msg, (ret), (needle));                                   \
	} while (0)

#endif
