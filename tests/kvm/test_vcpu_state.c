/* SPDX-License-Identifier: MIT */
/*
 * vCPU state save and restore on real KVM: a tiny 32-bit guest counts in registers
 * and memory and writes each count to a port; its state is read, encoded, decoded and
 * set on a vCPU of a second VM with a copy of the memory, and the guest there goes on
 * counting from the saved value. Also: the digest encoding is stable on a paused vCPU
 * and identical after get -> encode -> decode -> set -> get; decoding rejects every
 * truncation and survives every flipped byte; targeted corruptions are refused with a
 * message naming the problem.
 */
#include "kvm_test.h"
#include "arch/x86/vcpu_state.h"

#define COUNTER_GPA 0x2000
#define FXSAVE_GPA 0x3000
#define XMM0_OFFSET 160 /* in the FXSAVE/XSAVE legacy region */
#define MSR_IA32_TSC 0x10u
#define MSR_IA32_SYSENTER_CS 0x174u
#define CR4_OSFXSR (1u << 9)
#define RUN_STEPS 50

/*
 * 32-bit flat protected mode at TVM_CODE_GPA (assembled from):
 *	fxrstor 0x3000                  ; x87/SSE state with a pattern in xmm0
 *	mov $0x174, %ecx ; mov $0x1234, %eax ; xor %edx, %edx ; wrmsr  ; SYSENTER_CS
 *	mov $0xfee00000, %edi           ; LAPIC
 *	movl $0x1ff, 0xf0(%edi)         ; SVR: enabled, spurious vector 0xff
 *	movl $0xb, 0x3e0(%edi)          ; TDCR: divide by 1
 *	movl $0x30040, 0x320(%edi)      ; LVTT: periodic, masked, vector 0x40
 *	movl $0x7fffffff, 0x380(%edi)   ; TMICT: the timer counts down
 *	xor %ebx, %ebx ; mov $7, %esi ; mov $0x501, %edx
 * 1:	inc %ebx ; add $3, %esi ; mov %ebx, 0x2000 ; mov %ebx, %eax ; out %eax, %dx ; jmp 1b
 */
static const uint8_t guest_code[] = {
	0x0f, 0xae, 0x0d, 0x00, 0x30, 0x00, 0x00, 0xb9, 0x74, 0x01, 0x00, 0x00, 0xb8, 0x34,
	0x12, 0x00, 0x00, 0x31, 0xd2, 0x0f, 0x30, 0xbf, 0x00, 0x00, 0xe0, 0xfe, 0xc7, 0x87,
	0xf0, 0x00, 0x00, 0x00, 0xff, 0x01, 0x00, 0x00, 0xc7, 0x87, 0xe0, 0x03, 0x00, 0x00,
	0x0b, 0x00, 0x00, 0x00, 0xc7, 0x87, 0x20, 0x03, 0x00, 0x00, 0x40, 0x00, 0x03, 0x00,
	0xc7, 0x87, 0x80, 0x03, 0x00, 0x00, 0xff, 0xff, 0xff, 0x7f, 0x31, 0xdb, 0xbe, 0x07,
	0x00, 0x00, 0x00, 0xba, 0x01, 0x05, 0x00, 0x00, 0x43, 0x83, 0xc6, 0x03, 0x89, 0x1d,
	0x00, 0x20, 0x00, 0x00, 0x89, 0xd8, 0xef, 0xeb, 0xf1,
};

/* payload offsets (see vcpu_state.h) */
#define OFF_CS_TYPE (4 + 18 * 8 + 8 + 4 + 2)
#define OFF_XSAVE_LEN (4 + 18 * 8 + 8 * 23 + 2 * 10 + 7 * 8 + 4 * 8)
#define TAIL_EVENTS 37
#define TAIL_DEBUG 56
#define TAIL_MP 4
#define OFF_LAPIC_LEN_FROM_END (TAIL_MP + TAIL_DEBUG + TAIL_EVENTS + KVM_APIC_REG_SIZE + 4)

static uint8_t xmm0_pattern(unsigned i)
{
	return (uint8_t)(0xa0 + i);
}

static void guest_setup(struct tvm *t)
{
	uint8_t *fx = t->mem + FXSAVE_GPA;

	memset(fx, 0, 512);
	fx[0] = 0x7f; /* FCW 0x37f */
	fx[1] = 0x03;
	le_put32(fx + 24, 0x1f80); /* MXCSR */
	for (unsigned i = 0; i < 16; i++)
		fx[XMM0_OFFSET + i] = xmm0_pattern(i);
	tvm_load_flat32(t, guest_code, sizeof(guest_code), CR4_OSFXSR);
}

static bool msr_find(const struct vcpu_state *s, uint32_t index, uint64_t *value)
{
	for (uint32_t i = 0; i < s->msrs->nmsrs; i++) {
		if (s->msrs->entries[i].index == index) {
			*value = s->msrs->entries[i].data;
			return true;
		}
	}
	return false;
}

static uint32_t lapic_reg(const struct vcpu_state *s, unsigned off)
{
	return le_get32((const uint8_t *)s->lapic.regs + off);
}

/* What the guest has done after `count` loop iterations shows in s. */
static void state_check(const struct vcpu_state *s, uint32_t count)
{
	uint64_t v = 0;

	TEST_ASSERT_EQ(s->regs.rbx, count);
	TEST_ASSERT_EQ(s->regs.rsi, 7 + 3 * (uint64_t)count);
	TEST_ASSERT(msr_find(s, MSR_IA32_SYSENTER_CS, &v), "SYSENTER_CS in the state");
	TEST_ASSERT_EQ(v, 0x1234);
	TEST_ASSERT_EQ(lapic_reg(s, 0xf0), 0x1ff);
	TEST_ASSERT_EQ(lapic_reg(s, 0x320), 0x30040);
	TEST_ASSERT_EQ(lapic_reg(s, 0x380), 0x7fffffff);
	TEST_ASSERT_EQ(lapic_reg(s, 0x3e0), 0xb);
	TEST_ASSERT_EQ(s->sregs.cr0 & 1, 1);
	TEST_ASSERT_EQ(s->mp_state.mp_state, KVM_MP_STATE_RUNNABLE);
	if (s->has_xsave) {
		const uint8_t *x = (const uint8_t *)s->xsave;

		for (unsigned i = 0; i < 16; i++)
			TEST_ASSERT_EQ(x[XMM0_OFFSET + i], xmm0_pattern(i));
	} else {
		for (unsigned i = 0; i < 16; i++)
			TEST_ASSERT_EQ(s->fpu.xmm[0][i], xmm0_pattern(i));
	}
}

static void run_steps(struct tvm *t, uint32_t first, unsigned n)
{
	for (unsigned i = 0; i < n; i++) {
		uint32_t v = tvm_run_to_port(t);

		TEST_ASSERT_EQ(v, first + i);
		TEST_ASSERT_EQ(le_get32(t->mem + COUNTER_GPA), first + i);
	}
	tvm_pause(t);
}

static void encode(const struct vcpu_state *s, struct buf *b, bool digest)
{
	buf_reset(b);
	TEST_ASSERT((digest ? vcpu_state_encode_digest(s, b) : vcpu_state_encode(s, b)) == 0,
		    "encode");
}

/* Decoding p must fail, with a message containing want (if not NULL). */
static void decode_fails(const uint8_t *p, size_t len, uint32_t version, const char *want)
{
	struct vcpu_state s;
	struct errbuf e = { "" };
	int ret = vcpu_state_decode(p, len, version, &s, &e);

	TEST_ASSERT(ret < 0, "decode of a bad payload (%s) succeeded", want ? want : "?");
	TEST_ASSERT(!strncmp(e.msg, "vcpu state: ", 12), "message \"%s\"", e.msg);
	if (want)
		TEST_ASSERT(strstr(e.msg, want), "message \"%s\" lacks \"%s\"", e.msg, want);
	TEST_ASSERT(!s.xsave && !s.msrs, "decode left allocations after failing");
}

static void corrupt_u32(const struct buf *good, size_t off, uint32_t v, const char *want)
{
	uint8_t *p = malloc(good->len);

	TEST_ASSERT(p, "malloc");
	memcpy(p, good->data, good->len);
	le_put32(p + off, v);
	decode_fails(p, good->len, VCPU_STATE_VERSION, want);
	free(p);
}

static void corrupt_state(const struct vcpu_state *good, void (*edit)(struct vcpu_state *),
			  const char *want)
{
	struct vcpu_state s;
	struct errbuf e = { "" };
	struct buf b;

	buf_init(&b);
	/* a deep copy through the codec, then edited */
	encode(good, &b, false);
	TEST_OK(vcpu_state_decode(b.data, b.len, VCPU_STATE_VERSION, &s, &e));
	edit(&s);
	encode(&s, &b, false);
	decode_fails(b.data, b.len, VCPU_STATE_VERSION, want);
	vcpu_state_free(&s);
	buf_free(&b);
}

static void edit_mp_state(struct vcpu_state *s)
{
	s->mp_state.mp_state = 77;
}

static void edit_segment(struct vcpu_state *s)
{
	s->sregs.ss.present = 2;
}

static void edit_exception(struct vcpu_state *s)
{
	s->events.exception.injected = 1;
	s->events.exception.nr = 40;
}

static void edit_debugregs(struct vcpu_state *s)
{
	s->debugregs.dr7 = 1ull << 40;
}

static void edit_msr_dup(struct vcpu_state *s)
{
	if (s->msrs->nmsrs >= 2)
		s->msrs->entries[1].index = s->msrs->entries[0].index;
}

static void edit_apic_base(struct vcpu_state *s)
{
	s->sregs.apic_base |= 1;
}

static void bad_payloads(const struct vcpu_state *s, const struct buf *good)
{
	size_t xlen = s->has_xsave ? s->xsave_len : 0;
	/* after the XSAVE blob, or after the 411 bytes of FPU fields */
	size_t off_xcrs = s->has_xsave ? OFF_XSAVE_LEN + 4 + xlen : OFF_XSAVE_LEN + 411;
	size_t off_msrs = off_xcrs + 8 + 12 * (size_t)s->xcrs.nr_xcrs;
	/* the CPUID table ends the payload (version 2) */
	size_t tail_cpuid = 4 + 28 * (size_t)s->cpuid->nent;
	uint8_t *p = malloc(good->len + 1);
	unsigned rejected = 0;

	TEST_ASSERT(p, "malloc");
	TEST_ASSERT_EQ(le_get32(good->data + off_msrs), s->msrs->nmsrs);

	/* every truncation fails cleanly */
	for (size_t len = 0; len < good->len; len++)
		decode_fails(good->data, len, VCPU_STATE_VERSION, NULL);
	/* so does a byte too many */
	memcpy(p, good->data, good->len);
	p[good->len] = 0;
	decode_fails(p, good->len + 1, VCPU_STATE_VERSION, "after the end");
	decode_fails(good->data, good->len, 0, "version 0 not supported");
	decode_fails(good->data, good->len, VCPU_STATE_VERSION + 1, "not supported");

	/* a flipped byte anywhere never crashes; where it breaks an invariant it is refused */
	for (size_t i = 0; i < good->len; i++) {
		struct vcpu_state d;
		struct errbuf e = { "" };

		memcpy(p, good->data, good->len);
		p[i] ^= 0xff;
		if (vcpu_state_decode(p, good->len, VCPU_STATE_VERSION, &d, &e) < 0) {
			TEST_ASSERT(e.msg[0], "failure without a message at byte %zu", i);
			rejected++;
		}
		vcpu_state_free(&d);
	}
	printf("flipped bytes: %u of %zu refused, the rest are plain register values\n",
	       rejected, good->len);

	corrupt_u32(good, 0, 0x80, "unknown flags");
	memcpy(p, good->data, good->len);
	p[OFF_CS_TYPE] = 16;
	decode_fails(p, good->len, VCPU_STATE_VERSION, "segment cs: type 16");
	if (s->has_xsave) {
		corrupt_u32(good, OFF_XSAVE_LEN, 100000, "xsave size 100000 exceeds 65536");
		corrupt_u32(good, OFF_XSAVE_LEN, 4095, "xsave size 4095");
		corrupt_u32(good, OFF_XSAVE_LEN, 9000, "truncated");
		memcpy(p, good->data, good->len);
		p[OFF_XSAVE_LEN + 4 + 520 + 7] = 0x80; /* XCOMP_BV bit 63 */
		decode_fails(p, good->len, VCPU_STATE_VERSION, "compacted");
	}
	corrupt_u32(good, off_xcrs, 17, "17 XCRs exceed 16");
	corrupt_u32(good, off_msrs, 5000, "MSR count 5000 exceeds 1024");
	corrupt_u32(good, off_msrs, s->msrs->nmsrs + 1, NULL); /* reads into the LAPIC */
	corrupt_u32(good, good->len - tail_cpuid - OFF_LAPIC_LEN_FROM_END, 1023,
		    "LAPIC page of 1023 bytes");
	corrupt_u32(good, good->len - tail_cpuid - 4, 77, "mp state 77 unknown");
	corrupt_u32(good, good->len - tail_cpuid, 0, "0 CPUID entries");
	corrupt_u32(good, good->len - tail_cpuid, 257, "257 CPUID entries");
	corrupt_u32(good, good->len - tail_cpuid, s->cpuid->nent + 1, "truncated");
	if (s->cpuid->nent >= 2) {
		memcpy(p, good->data, good->len);
		memcpy(p + good->len - 28, p + good->len - 56, 8); /* the last leaf's function, index */
		decode_fails(p, good->len, VCPU_STATE_VERSION, "appears twice");
	}
	corrupt_state(s, edit_mp_state, "mp state 77 unknown");
	corrupt_state(s, edit_segment, "segment ss: present 2");
	corrupt_state(s, edit_exception, "exception vector 40");
	corrupt_state(s, edit_debugregs, "dr7");
	corrupt_state(s, edit_apic_base, "apic base");
	if (s->msrs->nmsrs >= 2)
		corrupt_state(s, edit_msr_dup, "appears twice");
	free(p);
}

/* Saves the source through KVM_GET_FPU, restores with KVM_SET_FPU, runs on. */
static void fpu_path(struct tvm *a, const uint32_t *msr_idx, uint32_t nmsr, uint32_t count)
{
	struct vcpu_state f, d;
	struct buf b1, b2;
	struct errbuf e = { "" };
	struct tvm c;

	TEST_OK(vcpu_state_get(a->vcpufd, msr_idx, nmsr, 0, &f, &e));
	TEST_ASSERT(!f.has_xsave && !f.xsave && !f.xcrs.nr_xcrs, "FPU form without XSAVE");
	state_check(&f, count);
	buf_init(&b1);
	buf_init(&b2);
	encode(&f, &b1, false);
	TEST_OK(vcpu_state_decode(b1.data, b1.len, VCPU_STATE_VERSION, &d, &e));
	encode(&d, &b2, false);
	TEST_ASSERT(test_buf_equal(&b1, &b2), "FPU form: decode + encode changed the payload");
	tvm_create(&c);
	memcpy(c.mem, a->mem, TVM_MEM_SIZE);
	TEST_OK(vcpu_state_set(c.vcpufd, &d, &e));
	run_steps(&c, count + 1, RUN_STEPS);
	vcpu_state_free(&f);
	TEST_OK(vcpu_state_get(c.vcpufd, msr_idx, nmsr, 0, &f, &e));
	state_check(&f, count + RUN_STEPS);
	printf("FPU form (%zu bytes): restored guest continued %u -> %u\n", b1.len, count,
	       count + RUN_STEPS);
	bad_payloads(&d, &b1);
	vcpu_state_free(&f);
	vcpu_state_free(&d);
	buf_free(&b1);
	buf_free(&b2);
	tvm_destroy(&c);
}

int main(void)
{
	struct vcpu_state s1, s1b, d, s2, s3;
	struct buf b1, b1b, bd, b2, dig1, dig2;
	struct tvm a, b;
	struct errbuf e = { "" };
	uint32_t *msr_idx = NULL, nmsr = 0, xsave_size;
	uint64_t tsc1 = 0, tsc2 = 0;

	setvbuf(stdout, NULL, _IONBF, 0);
	tvm_create(&a);
	guest_setup(&a);
	TEST_OK(kvm_msr_index_list(&a.kvm, &msr_idx, &nmsr, &e));
	xsave_size = vcpu_state_xsave_size(a.vmfd);
	printf("KVM lists %u MSRs; XSAVE area %u bytes\n", nmsr, xsave_size);

	/* run, pause, read */
	run_steps(&a, 1, RUN_STEPS);
	TEST_OK(vcpu_state_get(a.vcpufd, msr_idx, nmsr, xsave_size, &s1, &e));
	state_check(&s1, RUN_STEPS);
	printf("saved: rbx %llu rip 0x%llx, %u MSRs, %s %u bytes\n",
	       (unsigned long long)s1.regs.rbx, (unsigned long long)s1.regs.rip, s1.msrs->nmsrs,
	       s1.has_xsave ? "XSAVE" : "FPU", s1.has_xsave ? s1.xsave_len : 0);
	TEST_ASSERT(s1.msrs->nmsrs <= nmsr, "more MSRs read than listed");
	TEST_ASSERT(msr_find(&s1, MSR_IA32_TSC, &tsc1), "TSC in the state");

	/* a second read of the paused vCPU: only time-varying fields differ */
	TEST_OK(vcpu_state_get(a.vcpufd, msr_idx, nmsr, xsave_size, &s1b, &e));
	buf_init(&b1);
	buf_init(&b1b);
	buf_init(&bd);
	buf_init(&b2);
	buf_init(&dig1);
	buf_init(&dig2);
	encode(&s1, &b1, false);
	encode(&s1b, &b1b, false);
	if (!test_buf_equal(&b1, &b1b))
		test_diff("two reads of a paused vCPU (TSC and LAPIC timer count expected)", &b1,
			  &b1b);
	encode(&s1, &dig1, true);
	encode(&s1b, &dig2, true);
	if (!test_buf_equal(&dig1, &dig2)) {
		test_diff("digest of two reads", &dig1, &dig2);
		TEST_FAIL("the digest encoding of a paused vCPU is not stable");
	}

	/* the codec is exact: decode then encode gives the same bytes */
	TEST_OK(vcpu_state_decode(b1.data, b1.len, VCPU_STATE_VERSION, &d, &e));
	state_check(&d, RUN_STEPS);
	encode(&d, &bd, false);
	TEST_ASSERT(test_buf_equal(&b1, &bd), "decode + encode changed the payload");

	/* restore into a second VM with a copy of the memory */
	tvm_create(&b);
	memcpy(b.mem, a.mem, TVM_MEM_SIZE);
	TEST_OK(vcpu_state_set(b.vcpufd, &d, &e));
	TEST_OK(vcpu_state_get(b.vcpufd, msr_idx, nmsr, xsave_size, &s2, &e));
	state_check(&s2, RUN_STEPS);
	encode(&s2, &b2, false);
	if (!test_buf_equal(&b1, &b2))
		test_diff("saved and restored (TSC and LAPIC timer count expected)", &b1, &b2);
	encode(&s2, &dig2, true);
	if (!test_buf_equal(&dig1, &dig2)) {
		test_diff("digest of saved and restored", &dig1, &dig2);
		TEST_FAIL("get -> encode -> decode -> set -> get changed the state");
	}
	TEST_ASSERT(msr_find(&s2, MSR_IA32_TSC, &tsc2), "TSC in the restored state");
	TEST_ASSERT(tsc2 >= tsc1, "restored TSC 0x%llx went back from 0x%llx",
		    (unsigned long long)tsc2, (unsigned long long)tsc1);

	/* the guest continues from the saved count */
	run_steps(&b, RUN_STEPS + 1, RUN_STEPS);
	TEST_OK(vcpu_state_get(b.vcpufd, msr_idx, nmsr, xsave_size, &s3, &e));
	state_check(&s3, 2 * RUN_STEPS);
	printf("restored guest continued: counter %u -> %u\n", RUN_STEPS, 2 * RUN_STEPS);

	/* and the source can go on too: its state was only read */
	run_steps(&a, RUN_STEPS + 1, 3);

	bad_payloads(&s1, &b1);

	/* the path for hosts without XSAVE: x87/SSE state through KVM_GET/SET_FPU */
	fpu_path(&a, msr_idx, nmsr, RUN_STEPS + 3);

	vcpu_state_free(&s1);
	vcpu_state_free(&s1b);
	vcpu_state_free(&d);
	vcpu_state_free(&s2);
	vcpu_state_free(&s3);
	buf_free(&b1);
	buf_free(&b1b);
	buf_free(&bd);
	buf_free(&b2);
	buf_free(&dig1);
	buf_free(&dig2);
	free(msr_idx);
	tvm_destroy(&a);
	tvm_destroy(&b);
	printf("PASS\n");
	return 0;
}
