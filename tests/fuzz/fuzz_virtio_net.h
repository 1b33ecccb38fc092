/* SPDX-License-Identifier: MIT */
/*
 * The input language of fuzz_virtio_net: a stream of operations, each an opcode byte
 * (taken modulo FN_NR) and its operands (little-endian; an input that ends early reads
 * zeros). Shared with the seed generator so the seeds are valid streams.
 */
#ifndef GODWIT_TESTS_FUZZ_VIRTIO_NET_H
#define GODWIT_TESTS_FUZZ_VIRTIO_NET_H

#define FN_RAM (64u * 1024) /* the guest's RAM, at guest-physical 0 */

enum fuzz_net_op {
	FN_REG_WRITE,	/* u8 register / 4, le32 value: any register, any value */
	FN_CFG_READ,	/* u8 offset, u8 length (1..8): the configuration space */
	FN_RAM_WRITE,	/* le16 gpa, u8 length, bytes: whatever the guest writes */
	FN_DRIVER_INIT, /* le32 low features, u8 log2 queue size, le16 ring base / 16 */
	FN_DESC_SET,	/* u8 queue, u8 index, le16 addr, le16 len, u8 flags, u8 next */
	FN_AVAIL_PUSH,	/* u8 queue, le16 head: published and notified */
	FN_TAP_SEND,	/* le16 length, bytes: a frame from the tap (header in front) */
	FN_SETTLE,	/* the I/O thread runs a round, then a pause and a resume */
	FN_STATE,	/* le16 offset, u8 xor: saved, one byte changed, validated, loaded */
	FN_MOVE,	/* its own state loaded and the tap claimed: it announces on resume */
	FN_RESET,	/* the VM's reset of the device */
	FN_NR
};

#endif
