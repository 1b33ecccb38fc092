/* SPDX-License-Identifier: MIT */
/*
 * VM-wide state on real KVM: a tiny guest programs the PIC pair, the PIT and the
 * IOAPIC; their state and kvmclock are read, encoded, decoded and set on a second VM,
 * then read back: the PIC and IOAPIC payloads are identical, the PIT's are identical
 * apart from count_load_time (compared through the digest forms), and the restored
 * kvmclock continues from the saved value (never behind it, and not ahead by the pause).
 * Decoding rejects wrong lengths, versions, chip ids and out-of-range fields.
 */
#include "kvm_test.h"
#include "arch/x86/vm_state.h"

#include <time.h>

#define PAUSE_MS 200

/*
 * 32-bit flat protected mode at TVM_CODE_GPA (assembled from):
 *	PIC master: ICW1 0x11, ICW2 0x20, ICW3 0x04, ICW4 0x01, OCW1 mask 0xfa
 *	PIC slave:  ICW1 0x11, ICW2 0x28, ICW3 0x02, ICW4 0x01, OCW1 mask 0xbf
 *	PIT ch0: 0x34 (lo/hi, mode 2), count 0xffff; ch2: 0xb6 (lo/hi, mode 3), count 0x1233
 *	mov $0xfec00000, %edi
 *	IOAPIC pin 2: low 0x10030 (masked, vector 0x30), high 0x01000000 (dest 1)
 *	IOAPIC pin 9: low 0x1a041 (masked, level, active low, vector 0x41)
 *	mov $0x501, %edx
 * 1:	out %al, %dx ; jmp 1b
 */
static const uint8_t guest_code[] = {
	0xb0, 0x11, 0xe6, 0x20, 0xb0, 0x20, 0xe6, 0x21, 0xb0, 0x04, 0xe6, 0x21, 0xb0, 0x01,
	0xe6, 0x21, 0xb0, 0xfa, 0xe6, 0x21, 0xb0, 0x11, 0xe6, 0xa0, 0xb0, 0x28, 0xe6, 0xa1,
	0xb0, 0x02, 0xe6, 0xa1, 0xb0, 0x01, 0xe6, 0xa1, 0xb0, 0xbf, 0xe6, 0xa1, 0xb0, 0x34,
	0xe6, 0x43, 0xb0, 0xff, 0xe6, 0x40, 0xe6, 0x40, 0xb0, 0xb6, 0xe6, 0x43, 0xb0, 0x33,
	0xe6, 0x42, 0xb0, 0x12, 0xe6, 0x42, 0xbf, 0x00, 0x00, 0xc0, 0xfe, 0xc7, 0x07, 0x14,
	0x00, 0x00, 0x00, 0xc7, 0x47, 0x10, 0x30, 0x00, 0x01, 0x00, 0xc7, 0x07, 0x15, 0x00,
	0x00, 0x00, 0xc7, 0x47, 0x10, 0x00, 0x00, 0x00, 0x01, 0xc7, 0x07, 0x22, 0x00, 0x00,
	0x00, 0xc7, 0x47, 0x10, 0x41, 0xa0, 0x01, 0x00, 0xba, 0x01, 0x05, 0x00, 0x00, 0xee,
	0xeb, 0xfd,
};

enum section { SEC_PIC_MASTER, SEC_PIC_SLAVE, SEC_IOAPIC, SEC_PIT, SEC_CLOCK, SEC_COUNT };

static const char *const sec_names[SEC_COUNT] = { "pic master", "pic slave", "ioapic", "pit",
						  "kvmclock" };

static int sec_get(int vmfd, enum section s, struct buf *b, bool digest, struct errbuf *e)
{
	buf_reset(b);
	switch (s) {
	case SEC_PIT:
		return digest ? vm_state_pit_digest(vmfd, b, e) : vm_state_pit_get(vmfd, b, e);
	case SEC_CLOCK:
		return digest ? vm_state_clock_digest(vmfd, b, e) : vm_state_clock_get(vmfd, b, e);
	default:
		return digest ? vm_state_irqchip_digest(vmfd, (uint32_t)s, b, e) :
				vm_state_irqchip_get(vmfd, (uint32_t)s, b, e);
	}
}

static uint32_t sec_version(enum section s)
{
	return s == SEC_PIT ? VM_STATE_PIT_VERSION :
	       s == SEC_CLOCK ? VM_STATE_CLOCK_VERSION : VM_STATE_IRQCHIP_VERSION;
}

static int sec_set(int vmfd, enum section s, const void *p, size_t len, uint32_t version,
		   struct errbuf *e)
{
	switch (s) {
	case SEC_PIT:
		return vm_state_pit_set(vmfd, p, len, version, e);
	case SEC_CLOCK:
		return vm_state_clock_set(vmfd, p, len, version, e);
	default:
		return vm_state_irqchip_set(vmfd, (uint32_t)s, p, len, version, e);
	}
}

/* Decode only (no KVM): 0 or -errno. */
static int sec_decode(enum section s, const void *p, size_t len, uint32_t version,
		      struct errbuf *e)
{
	struct kvm_irqchip c;
	struct kvm_pit_state2 pit;
	struct kvm_clock_data clk;

	switch (s) {
	case SEC_PIT:
		return vm_state_pit_decode(p, len, version, &pit, e);
	case SEC_CLOCK:
		return vm_state_clock_decode(p, len, version, &clk, e);
	default:
		return vm_state_irqchip_decode((uint32_t)s, p, len, version, &c, e);
	}
}

static void decode_fails(enum section s, const void *p, size_t len, uint32_t version,
			 const char *want)
{
	struct errbuf e = { "" };
	int ret = sec_decode(s, p, len, version, &e);

	TEST_ASSERT(ret < 0, "%s: decode of a bad payload (%s) succeeded", sec_names[s],
		    want ? want : "?");
	TEST_ASSERT(strstr(e.msg, sec_names[s]), "message \"%s\" does not name %s", e.msg,
		    sec_names[s]);
	if (want)
		TEST_ASSERT(strstr(e.msg, want), "message \"%s\" lacks \"%s\"", e.msg, want);
}

static void corrupt_u8(enum section s, const struct buf *good, size_t off, uint8_t v,
		       const char *want)
{
	uint8_t p[256];

	TEST_ASSERT(good->len <= sizeof(p), "payload of %zu bytes", good->len);
	memcpy(p, good->data, good->len);
	p[off] = v;
	decode_fails(s, p, good->len, sec_version(s), want);
}

static void bad_payloads(enum section s, const struct buf *good)
{
	uint8_t p[256];
	struct errbuf e = { "" };
	unsigned rejected = 0;

	TEST_ASSERT(good->len < sizeof(p), "payload of %zu bytes", good->len);
	for (size_t len = 0; len < good->len; len++)
		decode_fails(s, good->data, len, sec_version(s), "length");
	memcpy(p, good->data, good->len);
	p[good->len] = 0;
	decode_fails(s, p, good->len + 1, sec_version(s), "length");
	decode_fails(s, good->data, good->len, 0, "version 0 not supported");
	decode_fails(s, good->data, good->len, sec_version(s) + 1, "not supported");
	for (size_t i = 0; i < good->len; i++) {
		memcpy(p, good->data, good->len);
		p[i] ^= 0xff;
		if (sec_decode(s, p, good->len, sec_version(s), &e) < 0) {
			TEST_ASSERT(e.msg[0], "failure without a message");
			rejected++;
		}
	}
	printf("%s: %zu bytes; flipped bytes refused: %u\n", sec_names[s], good->len, rejected);
}

static void targeted_corruptions(struct buf *good)
{
	struct kvm_irqchip c;
	struct errbuf e = { "" };

	/* PIC: init_state is byte 9, irq_base byte 5, init4 byte 13 */
	corrupt_u8(SEC_PIC_MASTER, &good[SEC_PIC_MASTER], 9, 9, "init_state 9 exceeds 3");
	corrupt_u8(SEC_PIC_MASTER, &good[SEC_PIC_MASTER], 5, 0x21, "irq_base 0x21");
	corrupt_u8(SEC_PIC_SLAVE, &good[SEC_PIC_SLAVE], 13, 2, "init4 2 exceeds 1");
	/* IOAPIC: base address first, id at 12 */
	corrupt_u8(SEC_IOAPIC, &good[SEC_IOAPIC], 2, 0xd0, "base address");
	corrupt_u8(SEC_IOAPIC, &good[SEC_IOAPIC], 12, 16, "id 16 exceeds 15");
	/* PIT channel 0: count 0..3, mode at 13, gate at 15; flags at the end */
	corrupt_u8(SEC_PIT, &good[SEC_PIT], 13, 7, "channel 0 mode 7");
	corrupt_u8(SEC_PIT, &good[SEC_PIT], 15, 2, "gate 2 exceeds 1");
	corrupt_u8(SEC_PIT, &good[SEC_PIT], 2, 1, "count 131071 exceeds 65536");
	corrupt_u8(SEC_PIT, &good[SEC_PIT], good[SEC_PIT].len - 4, 0x80, "flags 0x80 unknown");
	/* kvmclock: flags at 8 */
	corrupt_u8(SEC_CLOCK, &good[SEC_CLOCK], 9, 0x10, "unknown");
	corrupt_u8(SEC_CLOCK, &good[SEC_CLOCK], 7, 0x80, "out of range");
	/* a PIC payload is not an IOAPIC payload and chip 3 does not exist */
	TEST_ASSERT(vm_state_irqchip_decode(KVM_IRQCHIP_IOAPIC, good[SEC_PIC_MASTER].data,
					    good[SEC_PIC_MASTER].len, VM_STATE_IRQCHIP_VERSION,
					    &c, &e) < 0 && strstr(e.msg, "ioapic state: length"),
		    "PIC payload accepted as IOAPIC: %s", e.msg);
	TEST_ASSERT(vm_state_irqchip_decode(3, good[SEC_PIC_MASTER].data, good[SEC_PIC_MASTER].len,
					    VM_STATE_IRQCHIP_VERSION, &c, &e) < 0 &&
			    strstr(e.msg, "chip id 3"),
		    "chip 3 accepted: %s", e.msg);
}

static void pit_check(const struct buf *b)
{
	struct kvm_pit_state2 pit;
	struct errbuf e = { "" };

	TEST_OK(vm_state_pit_decode(b->data, b->len, 1, &pit, &e));
	TEST_ASSERT_EQ(pit.channels[0].mode, 2);
	TEST_ASSERT_EQ(pit.channels[0].count, 0xffff);
	TEST_ASSERT_EQ(pit.channels[2].mode, 3);
	TEST_ASSERT_EQ(pit.channels[2].count, 0x1233);
	TEST_ASSERT(pit.channels[2].count_load_time != 0, "channel 2 was loaded");
}

/* The guest's programming shows in the decoded sections. */
static void contents_check(const struct buf *b)
{
	struct kvm_irqchip c;
	struct errbuf e = { "" };

	TEST_OK(vm_state_irqchip_decode(0, b[0].data, b[0].len, 1, &c, &e));
	TEST_ASSERT_EQ(c.chip.pic.irq_base, 0x20);
	TEST_ASSERT_EQ(c.chip.pic.imr, 0xfa);
	TEST_ASSERT_EQ(c.chip.pic.init4, 1);
	TEST_OK(vm_state_irqchip_decode(1, b[1].data, b[1].len, 1, &c, &e));
	TEST_ASSERT_EQ(c.chip.pic.irq_base, 0x28);
	TEST_ASSERT_EQ(c.chip.pic.imr, 0xbf);
	TEST_OK(vm_state_irqchip_decode(2, b[2].data, b[2].len, 1, &c, &e));
	TEST_ASSERT_EQ(c.chip.ioapic.base_address, VM_STATE_IOAPIC_BASE);
	TEST_ASSERT_EQ(c.chip.ioapic.redirtbl[2].bits, 0x0100000000010030ull);
	TEST_ASSERT_EQ(c.chip.ioapic.redirtbl[9].bits & 0xffffefffu, 0x1a041);
	pit_check(&b[3]);
}

static uint64_t clock_of(const struct buf *b)
{
	struct kvm_clock_data c;
	struct errbuf e = { "" };

	TEST_OK(vm_state_clock_decode(b->data, b->len, VM_STATE_CLOCK_VERSION, &c, &e));
	return c.clock;
}

int main(void)
{
	struct buf saved[SEC_COUNT], dig[SEC_COUNT], got, again;
	struct timespec pause = { .tv_sec = 0, .tv_nsec = PAUSE_MS * 1000000L };
	struct errbuf e = { "" };
	struct tvm a, b;
	uint64_t c_saved, c_restored;

	setvbuf(stdout, NULL, _IONBF, 0);
	tvm_create(&a);
	tvm_load_flat32(&a, guest_code, sizeof(guest_code), 0);
	tvm_run_to_port(&a);
	tvm_pause(&a);

	buf_init(&got);
	buf_init(&again);
	for (int s = 0; s < SEC_COUNT; s++) {
		buf_init(&saved[s]);
		buf_init(&dig[s]);
		TEST_OK(sec_get(a.vmfd, s, &saved[s], false, &e));
		TEST_OK(sec_get(a.vmfd, s, &dig[s], true, &e));
		/* a second read of the paused VM gives the same digest bytes */
		TEST_OK(sec_get(a.vmfd, s, &got, true, &e));
		TEST_ASSERT(test_buf_equal(&dig[s], &got), "%s digest not stable", sec_names[s]);
	}
	TEST_ASSERT_EQ(saved[SEC_PIC_MASTER].len, VM_STATE_PIC_LEN);
	TEST_ASSERT_EQ(saved[SEC_IOAPIC].len, VM_STATE_IOAPIC_LEN);
	TEST_ASSERT_EQ(saved[SEC_PIT].len, VM_STATE_PIT_LEN);
	TEST_ASSERT_EQ(saved[SEC_CLOCK].len, VM_STATE_CLOCK_LEN);
	contents_check(saved);
	c_saved = clock_of(&saved[SEC_CLOCK]);

	/* a pause, as a transfer would take; then a fresh VM in the documented order */
	nanosleep(&pause, NULL);
	tvm_create(&b);
	for (int s = 0; s < SEC_COUNT; s++)
		TEST_OK(sec_set(b.vmfd, s, saved[s].data, saved[s].len, sec_version(s), &e));

	TEST_OK(sec_get(b.vmfd, SEC_CLOCK, &got, false, &e));
	c_restored = clock_of(&got);
	printf("kvmclock saved %llu ns, restored reads %llu ns (+%llu ns) after a %d ms pause\n",
	       (unsigned long long)c_saved, (unsigned long long)c_restored,
	       (unsigned long long)(c_restored - c_saved), PAUSE_MS);
	TEST_ASSERT(c_restored >= c_saved, "kvmclock went back: %llu < %llu",
		    (unsigned long long)c_restored, (unsigned long long)c_saved);
	TEST_ASSERT(c_restored - c_saved < PAUSE_MS * 1000000ull / 2,
		    "kvmclock jumped by %llu ns across a %d ms pause",
		    (unsigned long long)(c_restored - c_saved), PAUSE_MS);

	for (int s = 0; s < SEC_COUNT; s++) {
		TEST_OK(sec_get(b.vmfd, s, &got, false, &e));
		TEST_OK(sec_get(b.vmfd, s, &again, true, &e));
		if (s <= SEC_IOAPIC && !test_buf_equal(&saved[s], &got)) {
			test_diff(sec_names[s], &saved[s], &got);
			TEST_FAIL("%s: restored state differs", sec_names[s]);
		}
		if (!test_buf_equal(&dig[s], &again)) {
			test_diff(sec_names[s], &dig[s], &again);
			TEST_FAIL("%s: restored digest differs", sec_names[s]);
		}
	}
	TEST_OK(sec_get(b.vmfd, SEC_PIT, &got, false, &e));
	pit_check(&got);

	for (int s = 0; s < SEC_COUNT; s++)
		bad_payloads(s, &saved[s]);
	targeted_corruptions(saved);

	for (int s = 0; s < SEC_COUNT; s++) {
		buf_free(&saved[s]);
		buf_free(&dig[s]);
	}
	buf_free(&got);
	buf_free(&again);
	tvm_destroy(&a);
	tvm_destroy(&b);
	printf("PASS\n");
	return 0;
}
