/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of the control messages' decoding (migration/proto.c): post-copy's, and those
 * of a move over several connections (STREAMS, JOIN, FENCE), with hostile values.
 */
#include "migration/proto.h"

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

static uint8_t payload[64 + MIG_MISSING_CHUNK / 8];

static void put_u64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static int decode(uint32_t type, size_t len, struct mig_ctrl *m)
{
	struct state_record rec = { .type = type, .payload = payload, .len = len };
	struct errbuf e;

	return mig_ctrl_decode(&rec, m, &e);
}

/* first page, page count, and a bitmap of the matching length */
static size_t missing_build(uint64_t first, uint64_t n, uint64_t bitmap_bytes)
{
	put_u64(payload, first);
	put_u64(payload + 8, n);
	memset(payload + 16, 0xa5, bitmap_bytes);
	return 16 + bitmap_bytes;
}

static void test_missing_valid(void **state)
{
	struct mig_ctrl m;

	(void)state;
	assert_int_equal(decode(MIG_MSG_MISSING, missing_build(8, 13, 2), &m), 0);
	assert_int_equal(m.u64a, 8);
	assert_int_equal(m.u64b, 13);
	assert_ptr_equal(m.bitmap, payload + 16);
	assert_int_equal(decode(MIG_MSG_MISSING, missing_build(0, MIG_MISSING_CHUNK,
							       MIG_MISSING_CHUNK / 8), &m), 0);
}

static void test_missing_refused(void **state)
{
	struct mig_ctrl m;

	(void)state;
	/* no pages, too many, an unaligned first page, a bitmap too short or too long */
	assert_int_equal(decode(MIG_MSG_MISSING, missing_build(0, 0, 0), &m), -EBADMSG);
	assert_int_equal(decode(MIG_MSG_MISSING, missing_build(0, MIG_MISSING_CHUNK + 1,
							       MIG_MISSING_CHUNK / 8 + 1), &m),
			 -EBADMSG);
	assert_int_equal(decode(MIG_MSG_MISSING, missing_build(3, 8, 1), &m), -EBADMSG);
	assert_int_equal(decode(MIG_MSG_MISSING, missing_build(0, 16, 1), &m), -EBADMSG);
	assert_int_equal(decode(MIG_MSG_MISSING, missing_build(0, 16, 3), &m), -EBADMSG);
	/* a header cut short */
	assert_int_equal(decode(MIG_MSG_MISSING, 12, &m), -EBADMSG);
}

static void test_request_complete(void **state)
{
	struct mig_ctrl m;

	(void)state;
	put_u64(payload, 0x123000);
	assert_int_equal(decode(MIG_MSG_REQUEST, 8, &m), 0);
	assert_int_equal(m.u64a, 0x123000);
	assert_int_equal(decode(MIG_MSG_REQUEST, 7, &m), -EBADMSG);
	assert_int_equal(decode(MIG_MSG_REQUEST, 16, &m), -EBADMSG);
	put_u64(payload + 8, 77);
	assert_int_equal(decode(MIG_MSG_COMPLETE, 16, &m), 0);
	assert_int_equal(m.u64b, 77);
	assert_int_equal(decode(MIG_MSG_COMPLETE, 8, &m), -EBADMSG);
	assert_string_equal(mig_msg_name(MIG_MSG_MISSING), "MISSING");
	assert_string_equal(mig_mode_name(MIG_MODE_POSTCOPY), "postcopy");
}

/* count or index, then a token of token_len bytes */
static size_t streams_build(uint32_t v, size_t token_len)
{
	for (int i = 0; i < 4; i++)
		payload[i] = (uint8_t)(v >> (8 * i));
	memset(payload + 4, 0x3c, token_len);
	return 4 + token_len;
}

static void test_streams_join(void **state)
{
	struct mig_ctrl m;

	(void)state;
	assert_int_equal(decode(MIG_MSG_STREAMS, streams_build(2, MIG_TOKEN_LEN), &m), 0);
	assert_int_equal(m.u32a, 2);
	assert_int_equal(m.token[0], 0x3c);
	assert_int_equal(m.token[MIG_TOKEN_LEN - 1], 0x3c);
	assert_int_equal(decode(MIG_MSG_STREAMS, streams_build(MIG_STREAMS_MAX, MIG_TOKEN_LEN),
				&m), 0);
	assert_int_equal(decode(MIG_MSG_JOIN, streams_build(1, MIG_TOKEN_LEN), &m), 0);
	assert_int_equal(decode(MIG_MSG_JOIN, streams_build(MIG_STREAMS_MAX - 1, MIG_TOKEN_LEN),
				&m), 0);
	assert_int_equal(m.u32a, MIG_STREAMS_MAX - 1);
	/* counts of 0, 1 (no extra connection), 17 and 2^32-1; indexes 0 (the first) and 16 */
	assert_int_equal(decode(MIG_MSG_STREAMS, streams_build(0, MIG_TOKEN_LEN), &m), -EBADMSG);
	assert_int_equal(decode(MIG_MSG_STREAMS, streams_build(1, MIG_TOKEN_LEN), &m), -EBADMSG);
	assert_int_equal(decode(MIG_MSG_STREAMS, streams_build(MIG_STREAMS_MAX + 1, MIG_TOKEN_LEN),
				&m), -EBADMSG);
	assert_int_equal(decode(MIG_MSG_STREAMS, streams_build(UINT32_MAX, MIG_TOKEN_LEN), &m),
			 -EBADMSG);
	assert_int_equal(decode(MIG_MSG_JOIN, streams_build(0, MIG_TOKEN_LEN), &m), -EBADMSG);
	assert_int_equal(decode(MIG_MSG_JOIN, streams_build(MIG_STREAMS_MAX, MIG_TOKEN_LEN), &m),
			 -EBADMSG);
	/* a token short or long, or none at all */
	assert_int_equal(decode(MIG_MSG_JOIN, streams_build(1, MIG_TOKEN_LEN - 1), &m), -EBADMSG);
	assert_int_equal(decode(MIG_MSG_JOIN, streams_build(1, MIG_TOKEN_LEN + 1), &m), -EBADMSG);
	assert_int_equal(decode(MIG_MSG_STREAMS, streams_build(2, 0), &m), -EBADMSG);
	assert_int_equal(decode(MIG_MSG_STREAMS, 3, &m), -EBADMSG);
	assert_string_equal(mig_msg_name(MIG_MSG_JOIN), "JOIN");
}

static void test_fence(void **state)
{
	struct mig_ctrl m;

	(void)state;
	put_u64(payload, 7);
	assert_int_equal(decode(MIG_MSG_FENCE, 8, &m), 0);
	assert_int_equal(m.u64a, 7);
	assert_int_equal(decode(MIG_MSG_FENCE, 0, &m), -EBADMSG);
	assert_int_equal(decode(MIG_MSG_FENCE, 9, &m), -EBADMSG);
	assert_string_equal(mig_msg_name(MIG_MSG_FENCE), "FENCE");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_missing_valid),
		cmocka_unit_test(test_missing_refused),
		cmocka_unit_test(test_request_complete),
		cmocka_unit_test(test_streams_join),
		cmocka_unit_test(test_fence),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
