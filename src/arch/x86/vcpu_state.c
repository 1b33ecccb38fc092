/* SPDX-License-Identifier: MIT */
/* x86 vCPU state: KVM get/set in one fixed order, and its explicit little-endian payload. */
#include "arch/x86/vcpu_state.h"
#include "base/log.h"
#include "kvm/kvm.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define MSR_IA32_TSC 0x10u
#define MSR_IA32_TSC_DEADLINE 0x6e0u
#define HV_X64_MSR_TIME_REF_COUNT 0x40000020u
#define APIC_TMCCT 0x390u

/* the XSAVE legacy region's XMM registers, then the header: XSTATE_BV at 512,
 * XCOMP_BV at 520, then 48 reserved bytes */
#define XSAVE_LEGACY_XMM 160u
#define XSAVE_HDR_XSTATE_BV 512u
#define XSAVE_HDR_XCOMP_BV 520u
#define XSAVE_HDR_RESERVED 528u
#define XSAVE_HDR_END 576u
#define XSTATE_X87 (1ull << 0)
#define XSTATE_SSE (1ull << 1)

#define VCPU_EVENTS_KNOWN_FLAGS                                                              \
	(KVM_VCPUEVENT_VALID_NMI_PENDING | KVM_VCPUEVENT_VALID_SIPI_VECTOR |                  \
	 KVM_VCPUEVENT_VALID_SHADOW | KVM_VCPUEVENT_VALID_SMM | KVM_VCPUEVENT_VALID_PAYLOAD | \
	 KVM_VCPUEVENT_VALID_TRIPLE_FAULT)

/* bytes per MSR and per CPUID entry in the payload, for bounding counts by what is left */
#define MSR_ENTRY_LEN 12u
#define CPUID_ENTRY_LEN 28u

static const char *const vcpu_seg_names[] = { "cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt" };

static struct kvm_segment *vcpu_seg(struct kvm_sregs *sr, unsigned i)
{
	struct kvm_segment *segs[] = { &sr->cs, &sr->ds, &sr->es, &sr->fs,
				       &sr->gs, &sr->ss, &sr->tr, &sr->ldt };

	return segs[i];
}

static const struct kvm_segment *vcpu_seg_const(const struct kvm_sregs *sr, unsigned i)
{
	return vcpu_seg((struct kvm_sregs *)sr, i);
}

void vcpu_state_free(struct vcpu_state *s)
{
	free(s->cpuid);
	free(s->xsave);
	free(s->msrs);
	memset(s, 0, sizeof(*s));
}

uint32_t vcpu_state_xsave_size(int vmfd)
{
	int n;

	if (kvm_cap_check(vmfd, KVM_CAP_XSAVE) <= 0)
		return 0;
	n = kvm_cap_check(vmfd, KVM_CAP_XSAVE2);
	return n > (int)VCPU_STATE_XSAVE_MIN ? (uint32_t)n : VCPU_STATE_XSAVE_MIN;
}

/* ---- reading and writing the vCPU ---- */

static int vcpu_ioctl_err(struct errbuf *e, int ret, const char *what)
{
	return err_set(e, ret, "vcpu state: %s: %s", what, strerror(-ret));
}

static struct kvm_msrs *vcpu_msrs_alloc(uint32_t n)
{
	struct kvm_msrs *m = calloc(1, sizeof(*m) + (size_t)n * sizeof(m->entries[0]));

	if (m)
		m->nmsrs = n;
	return m;
}

/*
 * KVM_GET_MSRS returns how many entries it read and stops at the first one it refuses.
 * Such an MSR is dropped and the read goes on after it.
 */
static int vcpu_msrs_read(int vcpufd, const uint32_t *idx, uint32_t n, struct vcpu_state *s,
			  struct errbuf *e)
{
	struct kvm_msrs *req, *got;
	uint32_t pos = 0;
	int ret = 0;

	if (n > VCPU_STATE_MAX_MSRS)
		return err_set(e, -E2BIG, "vcpu state: %u MSRs exceed %u", n, VCPU_STATE_MAX_MSRS);
	req = vcpu_msrs_alloc(n);
	got = vcpu_msrs_alloc(n);
	if (!req || !got) {
		ret = err_set(e, -ENOMEM, "vcpu state: out of memory");
		goto out;
	}
	got->nmsrs = 0;
	while (pos < n) {
		req->nmsrs = n - pos;
		for (uint32_t i = 0; i < req->nmsrs; i++) {
			req->entries[i].index = idx[pos + i];
			req->entries[i].reserved = 0;
			req->entries[i].data = 0;
		}
		ret = kvm_ioctl(vcpufd, KVM_GET_MSRS, req);
		if (ret < 0) {
			vcpu_ioctl_err(e, ret, "KVM_GET_MSRS");
			goto out;
		}
		if ((uint32_t)ret > req->nmsrs) {
			ret = err_set(e, -EIO, "vcpu state: KVM_GET_MSRS read %d of %u MSRs", ret,
				      req->nmsrs);
			goto out;
		}
		memcpy(&got->entries[got->nmsrs], req->entries,
		       (size_t)ret * sizeof(req->entries[0]));
		got->nmsrs += (uint32_t)ret;
		pos += (uint32_t)ret;
		if (pos < n) {
			log_debug("vcpu state: MSR 0x%x not readable on this vCPU, left out",
				  idx[pos]);
			pos++;
		}
	}
	s->msrs = got;
	got = NULL;
	ret = 0;
out:
	free(req);
	free(got);
	return ret;
}

static struct kvm_cpuid2 *vcpu_cpuid_alloc(uint32_t n)
{
	struct kvm_cpuid2 *c = calloc(1, sizeof(*c) + (size_t)n * sizeof(c->entries[0]));

	if (c)
		c->nent = n;
	return c;
}

static int vcpu_state_read(int vcpufd, const uint32_t *msr_indices, uint32_t nmsrs,
			   uint32_t xsave_size, struct vcpu_state *s, struct errbuf *e)
{
	int ret;

	/* this vCPU's own CPUID: its APIC IDs (leaves 1, 0xB, 0x1F) are its alone */
	s->cpuid = vcpu_cpuid_alloc(VCPU_STATE_MAX_CPUID);
	if (!s->cpuid)
		return err_set(e, -ENOMEM, "vcpu state: out of memory");
	ret = kvm_ioctl(vcpufd, KVM_GET_CPUID2, s->cpuid);
	if (ret < 0)
		return vcpu_ioctl_err(e, ret, "KVM_GET_CPUID2");
	ret = kvm_ioctl(vcpufd, KVM_GET_REGS, &s->regs);
	if (ret < 0)
		return vcpu_ioctl_err(e, ret, "KVM_GET_REGS");
	ret = kvm_ioctl(vcpufd, KVM_GET_SREGS, &s->sregs);
	if (ret < 0)
		return vcpu_ioctl_err(e, ret, "KVM_GET_SREGS");
	if (xsave_size) {
		if (xsave_size < VCPU_STATE_XSAVE_MIN || xsave_size > VCPU_STATE_XSAVE_MAX ||
		    xsave_size % 4)
			return err_set(e, -EINVAL, "vcpu state: XSAVE size %u not supported",
				       xsave_size);
		s->xsave = calloc(1, xsave_size);
		if (!s->xsave)
			return err_set(e, -ENOMEM, "vcpu state: out of memory");
		s->xsave_len = xsave_size;
		s->has_xsave = true;
		/* KVM_GET_XSAVE refuses areas larger than struct kvm_xsave */
		if (xsave_size > VCPU_STATE_XSAVE_MIN) {
			ret = kvm_ioctl(vcpufd, KVM_GET_XSAVE2, s->xsave);
			if (ret < 0)
				return vcpu_ioctl_err(e, ret, "KVM_GET_XSAVE2");
		} else {
			ret = kvm_ioctl(vcpufd, KVM_GET_XSAVE, s->xsave);
			if (ret < 0)
				return vcpu_ioctl_err(e, ret, "KVM_GET_XSAVE");
		}
		ret = kvm_ioctl(vcpufd, KVM_GET_XCRS, &s->xcrs);
		if (ret < 0)
			return vcpu_ioctl_err(e, ret, "KVM_GET_XCRS");
		if (s->xcrs.nr_xcrs > KVM_MAX_XCRS)
			return err_set(e, -EIO, "vcpu state: KVM_GET_XCRS returned %u XCRs",
				       s->xcrs.nr_xcrs);
	} else {
		ret = kvm_ioctl(vcpufd, KVM_GET_FPU, &s->fpu);
		if (ret < 0)
			return vcpu_ioctl_err(e, ret, "KVM_GET_FPU");
	}
	ret = vcpu_msrs_read(vcpufd, msr_indices, nmsrs, s, e);
	if (ret < 0)
		return ret;
	ret = kvm_ioctl(vcpufd, KVM_GET_LAPIC, &s->lapic);
	if (ret < 0)
		return vcpu_ioctl_err(e, ret, "KVM_GET_LAPIC");
	ret = kvm_ioctl(vcpufd, KVM_GET_VCPU_EVENTS, &s->events);
	if (ret < 0)
		return vcpu_ioctl_err(e, ret, "KVM_GET_VCPU_EVENTS");
	ret = kvm_ioctl(vcpufd, KVM_GET_DEBUGREGS, &s->debugregs);
	if (ret < 0)
		return vcpu_ioctl_err(e, ret, "KVM_GET_DEBUGREGS");
	ret = kvm_ioctl(vcpufd, KVM_GET_MP_STATE, &s->mp_state);
	if (ret < 0)
		return vcpu_ioctl_err(e, ret, "KVM_GET_MP_STATE");
	return 0;
}

int vcpu_state_get(int vcpufd, const uint32_t *msr_indices, uint32_t nmsrs, uint32_t xsave_size,
		   struct vcpu_state *s, struct errbuf *e)
{
	int ret;

	memset(s, 0, sizeof(*s));
	ret = vcpu_state_read(vcpufd, msr_indices, nmsrs, xsave_size, s, e);
	if (ret < 0)
		vcpu_state_free(s);
	return ret;
}

/*
 * KVM_SET_XSAVE reads as many bytes as this host's KVM uses for the vCPU, which may
 * exceed the saved area (a destination with dynamic features enabled). The area is
 * passed zero-padded to the largest size the CPU can need (CPUID 0xD.0 ECX), so KVM
 * never reads past the buffer; the zero tail is "component not saved" by XSTATE_BV.
 */
static uint32_t vcpu_xsave_host_max(void)
{
	uint32_t a = 0, b, c, d;

	/* (<cpuid.h> is shadowed by arch/x86/cpuid.h in this directory) */
	__asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(0u), "c"(0u));
	if (a < 0xd)
		return 0;
	__asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(0xdu), "c"(0u));
	return c;
}

static int vcpu_xsave_write(int vcpufd, const void *area, uint32_t len, struct errbuf *e)
{
	uint32_t size = len, host_max = vcpu_xsave_host_max();
	struct kvm_xsave *x;
	int ret;

	if (host_max > size && host_max <= VCPU_STATE_XSAVE_MAX)
		size = ALIGN_UP(host_max, 4u);
	x = calloc(1, size);
	if (!x)
		return err_set(e, -ENOMEM, "vcpu state: out of memory");
	memcpy(x, area, len);
	ret = kvm_ioctl(vcpufd, KVM_SET_XSAVE, x);
	free(x);
	if (ret < 0)
		return vcpu_ioctl_err(e, ret, "KVM_SET_XSAVE");
	return 0;
}

/*
 * The FPU form is restored as an XSAVE area holding only the legacy (FXSAVE) region
 * with XSTATE_BV = x87 | SSE. KVM_SET_FPU would be the mirror of KVM_GET_FPU, but on a
 * host with XSAVE it writes the legacy region without marking x87/SSE present in the
 * header, and the SSE registers come back as zeros whenever KVM next reloads the
 * guest FPU (seen here). KVM_SET_XSAVE takes this form on hosts with and without XSAVE.
 */
static int vcpu_fpu_write(int vcpufd, const struct kvm_fpu *f, struct errbuf *e)
{
	uint8_t *x = calloc(1, VCPU_STATE_XSAVE_MIN);
	int ret;

	if (!x)
		return err_set(e, -ENOMEM, "vcpu state: out of memory");
	x[0] = (uint8_t)f->fcw;
	x[1] = (uint8_t)(f->fcw >> 8);
	x[2] = (uint8_t)f->fsw;
	x[3] = (uint8_t)(f->fsw >> 8);
	x[4] = f->ftwx;
	x[6] = (uint8_t)f->last_opcode;
	x[7] = (uint8_t)(f->last_opcode >> 8);
	le_put64(x + 8, f->last_ip);
	le_put64(x + 16, f->last_dp);
	le_put32(x + 24, f->mxcsr);
	memcpy(x + 32, f->fpr, sizeof(f->fpr));
	memcpy(x + XSAVE_LEGACY_XMM, f->xmm, sizeof(f->xmm));
	le_put64(x + XSAVE_HDR_XSTATE_BV, XSTATE_X87 | XSTATE_SSE);
	ret = vcpu_xsave_write(vcpufd, x, VCPU_STATE_XSAVE_MIN, e);
	free(x);
	return ret;
}

/*
 * Writes the TSC deadline MSR (deadline) or all the others. KVM_SET_MSRS stops at the
 * first MSR it refuses and returns how many it wrote.
 */
static int vcpu_msrs_write(int vcpufd, const struct kvm_msrs *m, bool deadline,
			   struct errbuf *e)
{
	struct kvm_msrs *req;
	uint32_t n = 0;
	int ret;

	if (!m || !m->nmsrs)
		return 0;
	req = vcpu_msrs_alloc(m->nmsrs);
	if (!req)
		return err_set(e, -ENOMEM, "vcpu state: out of memory");
	for (uint32_t i = 0; i < m->nmsrs; i++)
		if ((m->entries[i].index == MSR_IA32_TSC_DEADLINE) == deadline)
			req->entries[n++] = m->entries[i];
	req->nmsrs = n;
	ret = n ? kvm_ioctl(vcpufd, KVM_SET_MSRS, req) : 0;
	if (ret < 0)
		ret = vcpu_ioctl_err(e, ret, "KVM_SET_MSRS");
	else if ((uint32_t)ret < n)
		ret = err_set(e, -EINVAL, "vcpu state: KVM_SET_MSRS refused MSR 0x%x = 0x%llx",
			      req->entries[ret].index,
			      (unsigned long long)req->entries[ret].data);
	else
		ret = 0;
	free(req);
	return ret;
}

int vcpu_state_set(int vcpufd, const struct vcpu_state *s, struct errbuf *e)
{
	struct kvm_vcpu_events ev;
	int ret;

	/* CPUID before any other state (it decides which MSRs and XSAVE features exist) */
	if (s->cpuid) {
		ret = kvm_ioctl(vcpufd, KVM_SET_CPUID2, s->cpuid);
		if (ret < 0)
			return vcpu_ioctl_err(e, ret, "KVM_SET_CPUID2");
	}
	/* the const structs are only read by these _IOW ioctls */
	ret = kvm_ioctl(vcpufd, KVM_SET_SREGS, (void *)&s->sregs);
	if (ret < 0)
		return vcpu_ioctl_err(e, ret, "KVM_SET_SREGS");
	ret = kvm_ioctl(vcpufd, KVM_SET_REGS, (void *)&s->regs);
	if (ret < 0)
		return vcpu_ioctl_err(e, ret, "KVM_SET_REGS");
	if (s->has_xsave) {
		ret = vcpu_xsave_write(vcpufd, s->xsave, s->xsave_len, e);
		if (ret < 0)
			return ret;
		if (s->xcrs.nr_xcrs) {
			ret = kvm_ioctl(vcpufd, KVM_SET_XCRS, (void *)&s->xcrs);
			if (ret < 0)
				return vcpu_ioctl_err(e, ret, "KVM_SET_XCRS");
		}
	} else {
		ret = vcpu_fpu_write(vcpufd, &s->fpu, e);
		if (ret < 0)
			return ret;
	}
	ret = vcpu_msrs_write(vcpufd, s->msrs, false, e);
	if (ret < 0)
		return ret;
	/* SET_LAPIC restarts the LAPIC timer from the saved current count */
	ret = kvm_ioctl(vcpufd, KVM_SET_LAPIC, (void *)&s->lapic);
	if (ret < 0)
		return vcpu_ioctl_err(e, ret, "KVM_SET_LAPIC");
	/* KVM ignores a TSC deadline unless the LVT timer is in TSC-deadline mode: after LAPIC */
	ret = vcpu_msrs_write(vcpufd, s->msrs, true, e);
	if (ret < 0)
		return ret;
	/*
	 * Carry what the saved flags say is valid (SMM, exception payload, triple fault:
	 * the destination must have the same capabilities enabled, or KVM refuses), and
	 * always the pending NMI, SIPI vector and interrupt shadow, which KVM otherwise
	 * leaves as they are on the destination.
	 */
	ev = s->events;
	ev.flags = (s->events.flags & VCPU_EVENTS_KNOWN_FLAGS) | KVM_VCPUEVENT_VALID_NMI_PENDING |
		   KVM_VCPUEVENT_VALID_SIPI_VECTOR | KVM_VCPUEVENT_VALID_SHADOW;
	ret = kvm_ioctl(vcpufd, KVM_SET_VCPU_EVENTS, &ev);
	if (ret < 0)
		return vcpu_ioctl_err(e, ret, "KVM_SET_VCPU_EVENTS");
	ret = kvm_ioctl(vcpufd, KVM_SET_MP_STATE, (void *)&s->mp_state);
	if (ret < 0)
		return vcpu_ioctl_err(e, ret, "KVM_SET_MP_STATE");
	ret = kvm_ioctl(vcpufd, KVM_SET_DEBUGREGS, (void *)&s->debugregs);
	if (ret < 0)
		return vcpu_ioctl_err(e, ret, "KVM_SET_DEBUGREGS");
	return 0;
}

/* ---- encoding ---- */

static void vcpu_seg_put(struct buf *b, const struct kvm_segment *sg)
{
	buf_put_u64(b, sg->base);
	buf_put_u32(b, sg->limit);
	buf_put_u16(b, sg->selector);
	buf_put_u8(b, sg->type);
	buf_put_u8(b, sg->present);
	buf_put_u8(b, sg->dpl);
	buf_put_u8(b, sg->db);
	buf_put_u8(b, sg->s);
	buf_put_u8(b, sg->l);
	buf_put_u8(b, sg->g);
	buf_put_u8(b, sg->avl);
	buf_put_u8(b, sg->unusable);
}

static void vcpu_dtable_put(struct buf *b, const struct kvm_dtable *t)
{
	buf_put_u64(b, t->base);
	buf_put_u16(b, t->limit);
}

static void vcpu_regs_put(struct buf *b, const struct kvm_regs *r)
{
	const uint64_t v[] = { r->rax, r->rbx, r->rcx, r->rdx, r->rsi, r->rdi,
			       r->rsp, r->rbp, r->r8,  r->r9,  r->r10, r->r11,
			       r->r12, r->r13, r->r14, r->r15, r->rip, r->rflags };

	for (size_t i = 0; i < ARRAY_SIZE(v); i++)
		buf_put_u64(b, v[i]);
}

static void vcpu_sregs_put(struct buf *b, const struct kvm_sregs *sr)
{
	for (unsigned i = 0; i < ARRAY_SIZE(vcpu_seg_names); i++)
		vcpu_seg_put(b, vcpu_seg_const(sr, i));
	vcpu_dtable_put(b, &sr->gdt);
	vcpu_dtable_put(b, &sr->idt);
	buf_put_u64(b, sr->cr0);
	buf_put_u64(b, sr->cr2);
	buf_put_u64(b, sr->cr3);
	buf_put_u64(b, sr->cr4);
	buf_put_u64(b, sr->cr8);
	buf_put_u64(b, sr->efer);
	buf_put_u64(b, sr->apic_base);
	for (size_t i = 0; i < ARRAY_SIZE(sr->interrupt_bitmap); i++)
		buf_put_u64(b, sr->interrupt_bitmap[i]);
}

static void vcpu_fpu_put(struct buf *b, const struct kvm_fpu *f)
{
	buf_put_bytes(b, f->fpr, sizeof(f->fpr));
	buf_put_u16(b, f->fcw);
	buf_put_u16(b, f->fsw);
	buf_put_u8(b, f->ftwx);
	buf_put_u16(b, f->last_opcode);
	buf_put_u64(b, f->last_ip);
	buf_put_u64(b, f->last_dp);
	buf_put_bytes(b, f->xmm, sizeof(f->xmm));
	buf_put_u32(b, f->mxcsr);
}

static void vcpu_events_put(struct buf *b, const struct kvm_vcpu_events *ev)
{
	buf_put_u8(b, ev->exception.injected);
	buf_put_u8(b, ev->exception.nr);
	buf_put_u8(b, ev->exception.has_error_code);
	buf_put_u8(b, ev->exception.pending);
	buf_put_u32(b, ev->exception.error_code);
	buf_put_u8(b, ev->interrupt.injected);
	buf_put_u8(b, ev->interrupt.nr);
	buf_put_u8(b, ev->interrupt.soft);
	buf_put_u8(b, ev->interrupt.shadow);
	buf_put_u8(b, ev->nmi.injected);
	buf_put_u8(b, ev->nmi.pending);
	buf_put_u8(b, ev->nmi.masked);
	buf_put_u32(b, ev->sipi_vector);
	buf_put_u32(b, ev->flags);
	buf_put_u8(b, ev->smi.smm);
	buf_put_u8(b, ev->smi.pending);
	buf_put_u8(b, ev->smi.smm_inside_nmi);
	buf_put_u8(b, ev->smi.latched_init);
	buf_put_u8(b, ev->triple_fault.pending);
	buf_put_u8(b, ev->exception_has_payload);
	buf_put_u64(b, ev->exception_payload);
}

static bool vcpu_msr_time_varying(uint32_t index)
{
	return index == MSR_IA32_TSC || index == HV_X64_MSR_TIME_REF_COUNT;
}

static int vcpu_state_put(const struct vcpu_state *s, struct buf *b, bool digest)
{
	uint32_t nmsrs = s->msrs ? s->msrs->nmsrs : 0;

	buf_put_u32(b, s->has_xsave ? VCPU_STATE_F_XSAVE : 0);
	vcpu_regs_put(b, &s->regs);
	vcpu_sregs_put(b, &s->sregs);
	if (s->has_xsave)
		buf_put_blob(b, s->xsave, s->xsave_len);
	else
		vcpu_fpu_put(b, &s->fpu);
	buf_put_u32(b, s->xcrs.nr_xcrs);
	buf_put_u32(b, s->xcrs.flags);
	for (uint32_t i = 0; i < s->xcrs.nr_xcrs && i < KVM_MAX_XCRS; i++) {
		buf_put_u32(b, s->xcrs.xcrs[i].xcr);
		buf_put_u64(b, s->xcrs.xcrs[i].value);
	}
	buf_put_u32(b, nmsrs);
	for (uint32_t i = 0; i < nmsrs; i++) {
		const struct kvm_msr_entry *m = &s->msrs->entries[i];

		buf_put_u32(b, m->index);
		buf_put_u64(b, digest && vcpu_msr_time_varying(m->index) ? 0 : m->data);
	}
	if (digest) {
		uint8_t page[KVM_APIC_REG_SIZE];

		memcpy(page, s->lapic.regs, sizeof(page));
		le_put32(page + APIC_TMCCT, 0);
		buf_put_blob(b, page, sizeof(page));
	} else {
		buf_put_blob(b, s->lapic.regs, sizeof(s->lapic.regs));
	}
	vcpu_events_put(b, &s->events);
	for (unsigned i = 0; i < 4; i++)
		buf_put_u64(b, s->debugregs.db[i]);
	buf_put_u64(b, s->debugregs.dr6);
	buf_put_u64(b, s->debugregs.dr7);
	buf_put_u64(b, s->debugregs.flags);
	buf_put_u32(b, s->mp_state.mp_state);
	buf_put_u32(b, s->cpuid ? s->cpuid->nent : 0);
	for (uint32_t i = 0; s->cpuid && i < s->cpuid->nent; i++) {
		const struct kvm_cpuid_entry2 *c = &s->cpuid->entries[i];

		buf_put_u32(b, c->function);
		buf_put_u32(b, c->index);
		buf_put_u32(b, c->flags);
		buf_put_u32(b, c->eax);
		buf_put_u32(b, c->ebx);
		buf_put_u32(b, c->ecx);
		buf_put_u32(b, c->edx);
	}
	return buf_status(b);
}

int vcpu_state_encode(const struct vcpu_state *s, struct buf *out)
{
	return vcpu_state_put(s, out, false);
}

int vcpu_state_encode_digest(const struct vcpu_state *s, struct buf *out)
{
	return vcpu_state_put(s, out, true);
}

/* ---- decoding ---- */

static void vcpu_seg_get(struct buf_reader *r, struct kvm_segment *sg)
{
	sg->base = buf_get_u64(r);
	sg->limit = buf_get_u32(r);
	sg->selector = buf_get_u16(r);
	sg->type = buf_get_u8(r);
	sg->present = buf_get_u8(r);
	sg->dpl = buf_get_u8(r);
	sg->db = buf_get_u8(r);
	sg->s = buf_get_u8(r);
	sg->l = buf_get_u8(r);
	sg->g = buf_get_u8(r);
	sg->avl = buf_get_u8(r);
	sg->unusable = buf_get_u8(r);
}

static void vcpu_dtable_get(struct buf_reader *r, struct kvm_dtable *t)
{
	t->base = buf_get_u64(r);
	t->limit = buf_get_u16(r);
}

static void vcpu_regs_get(struct buf_reader *r, struct kvm_regs *g)
{
	__u64 *v[] = { &g->rax, &g->rbx, &g->rcx, &g->rdx, &g->rsi, &g->rdi,
			  &g->rsp, &g->rbp, &g->r8,  &g->r9,  &g->r10, &g->r11,
			  &g->r12, &g->r13, &g->r14, &g->r15, &g->rip, &g->rflags };

	for (size_t i = 0; i < ARRAY_SIZE(v); i++)
		*v[i] = buf_get_u64(r);
}

static void vcpu_sregs_get(struct buf_reader *r, struct kvm_sregs *sr)
{
	for (unsigned i = 0; i < ARRAY_SIZE(vcpu_seg_names); i++)
		vcpu_seg_get(r, vcpu_seg(sr, i));
	vcpu_dtable_get(r, &sr->gdt);
	vcpu_dtable_get(r, &sr->idt);
	sr->cr0 = buf_get_u64(r);
	sr->cr2 = buf_get_u64(r);
	sr->cr3 = buf_get_u64(r);
	sr->cr4 = buf_get_u64(r);
	sr->cr8 = buf_get_u64(r);
	sr->efer = buf_get_u64(r);
	sr->apic_base = buf_get_u64(r);
	for (size_t i = 0; i < ARRAY_SIZE(sr->interrupt_bitmap); i++)
		sr->interrupt_bitmap[i] = buf_get_u64(r);
}

static void vcpu_fpu_get(struct buf_reader *r, struct kvm_fpu *f)
{
	buf_get_bytes(r, f->fpr, sizeof(f->fpr));
	f->fcw = buf_get_u16(r);
	f->fsw = buf_get_u16(r);
	f->ftwx = buf_get_u8(r);
	f->last_opcode = buf_get_u16(r);
	f->last_ip = buf_get_u64(r);
	f->last_dp = buf_get_u64(r);
	buf_get_bytes(r, f->xmm, sizeof(f->xmm));
	f->mxcsr = buf_get_u32(r);
}

static void vcpu_events_get(struct buf_reader *r, struct kvm_vcpu_events *ev)
{
	ev->exception.injected = buf_get_u8(r);
	ev->exception.nr = buf_get_u8(r);
	ev->exception.has_error_code = buf_get_u8(r);
	ev->exception.pending = buf_get_u8(r);
	ev->exception.error_code = buf_get_u32(r);
	ev->interrupt.injected = buf_get_u8(r);
	ev->interrupt.nr = buf_get_u8(r);
	ev->interrupt.soft = buf_get_u8(r);
	ev->interrupt.shadow = buf_get_u8(r);
	ev->nmi.injected = buf_get_u8(r);
	ev->nmi.pending = buf_get_u8(r);
	ev->nmi.masked = buf_get_u8(r);
	ev->sipi_vector = buf_get_u32(r);
	ev->flags = buf_get_u32(r);
	ev->smi.smm = buf_get_u8(r);
	ev->smi.pending = buf_get_u8(r);
	ev->smi.smm_inside_nmi = buf_get_u8(r);
	ev->smi.latched_init = buf_get_u8(r);
	ev->triple_fault.pending = buf_get_u8(r);
	ev->exception_has_payload = buf_get_u8(r);
	ev->exception_payload = buf_get_u64(r);
}

static int vcpu_bool_check(const char *what, uint8_t v, struct errbuf *e)
{
	if (v > 1)
		return err_set(e, -EINVAL, "vcpu state: %s %u is not 0 or 1", what, v);
	return 0;
}

static int vcpu_seg_check(unsigned i, const struct kvm_segment *sg, struct errbuf *e)
{
	const struct {
		const char *name;
		uint8_t v;
	} flags[] = { { "present", sg->present }, { "db", sg->db },   { "s", sg->s },
		      { "l", sg->l },             { "g", sg->g },     { "avl", sg->avl },
		      { "unusable", sg->unusable } };

	if (sg->type > 15)
		return err_set(e, -EINVAL, "vcpu state: segment %s: type %u out of range",
			       vcpu_seg_names[i], sg->type);
	if (sg->dpl > 3)
		return err_set(e, -EINVAL, "vcpu state: segment %s: dpl %u out of range",
			       vcpu_seg_names[i], sg->dpl);
	for (size_t k = 0; k < ARRAY_SIZE(flags); k++)
		if (flags[k].v > 1)
			return err_set(e, -EINVAL, "vcpu state: segment %s: %s %u is not 0 or 1",
				       vcpu_seg_names[i], flags[k].name, flags[k].v);
	return 0;
}

static int vcpu_sregs_check(const struct kvm_sregs *sr, struct errbuf *e)
{
	int ret;

	for (unsigned i = 0; i < ARRAY_SIZE(vcpu_seg_names); i++) {
		ret = vcpu_seg_check(i, vcpu_seg_const(sr, i), e);
		if (ret < 0)
			return ret;
	}
	if (sr->cr8 > 15)
		return err_set(e, -EINVAL, "vcpu state: cr8 %llu out of range",
			       (unsigned long long)sr->cr8);
	/* bits 0-7 and 9 of IA32_APIC_BASE are reserved */
	if (sr->apic_base & 0x2ffull)
		return err_set(e, -EINVAL, "vcpu state: apic base 0x%llx has reserved bits set",
			       (unsigned long long)sr->apic_base);
	return 0;
}

/* KVM_SET_XSAVE takes the standard (not compacted) format with a clean header */
static int vcpu_xsave_check(const struct vcpu_state *s, struct errbuf *e)
{
	const uint8_t *x = (const uint8_t *)s->xsave;

	if (le_get64(x + XSAVE_HDR_XCOMP_BV))
		return err_set(e, -EINVAL, "vcpu state: xsave area is in compacted format");
	for (unsigned i = XSAVE_HDR_RESERVED; i < XSAVE_HDR_END; i++)
		if (x[i])
			return err_set(e, -EINVAL, "vcpu state: xsave header byte %u not zero", i);
	return 0;
}

static int vcpu_xcrs_check(const struct kvm_xcrs *x, struct errbuf *e)
{
	if (x->flags)
		return err_set(e, -EINVAL, "vcpu state: xcrs flags 0x%x not zero", x->flags);
	for (uint32_t i = 0; i < x->nr_xcrs; i++) {
		for (uint32_t k = 0; k < i; k++)
			if (x->xcrs[k].xcr == x->xcrs[i].xcr)
				return err_set(e, -EINVAL, "vcpu state: XCR%u appears twice",
					       x->xcrs[i].xcr);
		if (x->xcrs[i].xcr == 0 && !(x->xcrs[i].value & 1))
			return err_set(e, -EINVAL, "vcpu state: XCR0 0x%llx lacks x87",
				       (unsigned long long)x->xcrs[i].value);
	}
	return 0;
}

static int vcpu_msrs_check(const struct kvm_msrs *m, struct errbuf *e)
{
	for (uint32_t i = 0; i < m->nmsrs; i++)
		for (uint32_t k = 0; k < i; k++)
			if (m->entries[k].index == m->entries[i].index)
				return err_set(e, -EINVAL, "vcpu state: MSR 0x%x appears twice",
					       m->entries[i].index);
	return 0;
}

static int vcpu_events_check(const struct kvm_vcpu_events *ev, struct errbuf *e)
{
	const struct {
		const char *name;
		uint8_t v;
	} flags[] = {
		{ "exception.injected", ev->exception.injected },
		{ "exception.has_error_code", ev->exception.has_error_code },
		{ "exception.pending", ev->exception.pending },
		{ "interrupt.injected", ev->interrupt.injected },
		{ "interrupt.soft", ev->interrupt.soft },
		{ "nmi.injected", ev->nmi.injected },
		{ "nmi.pending", ev->nmi.pending },
		{ "nmi.masked", ev->nmi.masked },
		{ "smi.smm", ev->smi.smm },
		{ "smi.pending", ev->smi.pending },
		{ "smi.smm_inside_nmi", ev->smi.smm_inside_nmi },
		{ "smi.latched_init", ev->smi.latched_init },
		{ "triple_fault.pending", ev->triple_fault.pending },
		{ "exception_has_payload", ev->exception_has_payload },
	};
	int ret;

	for (size_t i = 0; i < ARRAY_SIZE(flags); i++) {
		ret = vcpu_bool_check(flags[i].name, flags[i].v, e);
		if (ret < 0)
			return ret;
	}
	if ((ev->exception.injected || ev->exception.pending) &&
	    (ev->exception.nr > 31 || ev->exception.nr == 2))
		return err_set(e, -EINVAL, "vcpu state: exception vector %u not an exception",
			       ev->exception.nr);
	if (ev->interrupt.shadow & ~(KVM_X86_SHADOW_INT_MOV_SS | KVM_X86_SHADOW_INT_STI))
		return err_set(e, -EINVAL, "vcpu state: interrupt shadow 0x%x unknown",
			       ev->interrupt.shadow);
	if (ev->flags & ~VCPU_EVENTS_KNOWN_FLAGS)
		return err_set(e, -EINVAL, "vcpu state: event flags 0x%x unknown", ev->flags);
	return 0;
}

static int vcpu_debugregs_check(const struct kvm_debugregs *d, struct errbuf *e)
{
	if (d->flags)
		return err_set(e, -EINVAL, "vcpu state: debug register flags 0x%llx not zero",
			       (unsigned long long)d->flags);
	if (d->dr6 >> 32 || d->dr7 >> 32)
		return err_set(e, -EINVAL, "vcpu state: dr6 0x%llx or dr7 0x%llx out of range",
			       (unsigned long long)d->dr6, (unsigned long long)d->dr7);
	return 0;
}

static int vcpu_mp_state_check(uint32_t mp, struct errbuf *e)
{
	switch (mp) {
	case KVM_MP_STATE_RUNNABLE:
	case KVM_MP_STATE_UNINITIALIZED:
	case KVM_MP_STATE_INIT_RECEIVED:
	case KVM_MP_STATE_HALTED:
	case KVM_MP_STATE_SIPI_RECEIVED:
	case KVM_MP_STATE_AP_RESET_HOLD:
		return 0;
	default:
		return err_set(e, -EINVAL, "vcpu state: mp state %u unknown", mp);
	}
}

static int vcpu_cpuid_check(const struct kvm_cpuid2 *c, struct errbuf *e)
{
	for (uint32_t i = 0; c && i < c->nent; i++) {
		const struct kvm_cpuid_entry2 *a = &c->entries[i];

		if (a->flags & ~(uint32_t)KVM_CPUID_FLAG_SIGNIFCANT_INDEX)
			return err_set(e, -EINVAL, "vcpu state: CPUID leaf 0x%x.%u has unknown "
						   "flags 0x%x", a->function, a->index, a->flags);
		for (uint32_t k = 0; k < i; k++)
			if (c->entries[k].function == a->function && c->entries[k].index == a->index)
				return err_set(e, -EINVAL, "vcpu state: CPUID leaf 0x%x.%u appears "
							   "twice", a->function, a->index);
	}
	return 0;
}

static int vcpu_state_check(const struct vcpu_state *s, struct errbuf *e)
{
	int ret;

	ret = vcpu_cpuid_check(s->cpuid, e);
	if (!ret)
		ret = vcpu_sregs_check(&s->sregs, e);
	if (!ret && s->has_xsave)
		ret = vcpu_xsave_check(s, e);
	if (!ret)
		ret = vcpu_xcrs_check(&s->xcrs, e);
	if (!ret)
		ret = vcpu_msrs_check(s->msrs, e);
	if (!ret)
		ret = vcpu_events_check(&s->events, e);
	if (!ret)
		ret = vcpu_debugregs_check(&s->debugregs, e);
	if (!ret)
		ret = vcpu_mp_state_check(s->mp_state.mp_state, e);
	return ret;
}

static int vcpu_truncated(struct errbuf *e, size_t len)
{
	return err_set(e, -EINVAL, "vcpu state: payload truncated (%zu bytes)", len);
}

static int vcpu_state_parse(const void *p, size_t len, uint32_t version, struct vcpu_state *s,
			    struct errbuf *e)
{
	struct buf_reader r;
	uint32_t flags, n;

	if (version != VCPU_STATE_VERSION)
		return err_set(e, -EINVAL,
			       "vcpu state: version %u not supported (this build reads %u)", version,
			       VCPU_STATE_VERSION);
	buf_reader_init(&r, p, len);
	flags = buf_get_u32(&r);
	if (!buf_reader_ok(&r))
		return vcpu_truncated(e, len);
	if (flags & ~VCPU_STATE_F_XSAVE)
		return err_set(e, -EINVAL, "vcpu state: unknown flags 0x%x", flags);
	vcpu_regs_get(&r, &s->regs);
	vcpu_sregs_get(&r, &s->sregs);
	if (flags & VCPU_STATE_F_XSAVE) {
		n = buf_get_u32(&r);
		if (!buf_reader_ok(&r))
			return vcpu_truncated(e, len);
		if (n > VCPU_STATE_XSAVE_MAX)
			return err_set(e, -EINVAL, "vcpu state: xsave size %u exceeds %u", n,
				       VCPU_STATE_XSAVE_MAX);
		if (n < VCPU_STATE_XSAVE_MIN || n % 4)
			return err_set(e, -EINVAL,
				       "vcpu state: xsave size %u: not %u or more in 4-byte words", n,
				       VCPU_STATE_XSAVE_MIN);
		if (n > buf_reader_left(&r))
			return vcpu_truncated(e, len);
		s->xsave = malloc(n);
		if (!s->xsave)
			return err_set(e, -ENOMEM, "vcpu state: out of memory");
		buf_get_bytes(&r, s->xsave, n);
		s->xsave_len = n;
		s->has_xsave = true;
	} else {
		vcpu_fpu_get(&r, &s->fpu);
	}

	n = buf_get_u32(&r);
	s->xcrs.flags = buf_get_u32(&r);
	if (!buf_reader_ok(&r))
		return vcpu_truncated(e, len);
	if (n > KVM_MAX_XCRS)
		return err_set(e, -EINVAL, "vcpu state: %u XCRs exceed %u", n, KVM_MAX_XCRS);
	if (n && !s->has_xsave)
		return err_set(e, -EINVAL, "vcpu state: XCRs without an XSAVE area");
	s->xcrs.nr_xcrs = n;
	for (uint32_t i = 0; i < n; i++) {
		s->xcrs.xcrs[i].xcr = buf_get_u32(&r);
		s->xcrs.xcrs[i].value = buf_get_u64(&r);
	}

	n = buf_get_u32(&r);
	if (!buf_reader_ok(&r))
		return vcpu_truncated(e, len);
	if (n > VCPU_STATE_MAX_MSRS)
		return err_set(e, -EINVAL, "vcpu state: MSR count %u exceeds %u", n,
			       VCPU_STATE_MAX_MSRS);
	if ((size_t)n * MSR_ENTRY_LEN > buf_reader_left(&r))
		return vcpu_truncated(e, len);
	s->msrs = vcpu_msrs_alloc(n);
	if (!s->msrs)
		return err_set(e, -ENOMEM, "vcpu state: out of memory");
	for (uint32_t i = 0; i < n; i++) {
		s->msrs->entries[i].index = buf_get_u32(&r);
		s->msrs->entries[i].data = buf_get_u64(&r);
	}

	n = buf_get_u32(&r);
	if (!buf_reader_ok(&r))
		return vcpu_truncated(e, len);
	if (n != KVM_APIC_REG_SIZE)
		return err_set(e, -EINVAL, "vcpu state: LAPIC page of %u bytes, expected %u", n,
			       KVM_APIC_REG_SIZE);
	buf_get_bytes(&r, s->lapic.regs, KVM_APIC_REG_SIZE);
	vcpu_events_get(&r, &s->events);
	for (unsigned i = 0; i < 4; i++)
		s->debugregs.db[i] = buf_get_u64(&r);
	s->debugregs.dr6 = buf_get_u64(&r);
	s->debugregs.dr7 = buf_get_u64(&r);
	s->debugregs.flags = buf_get_u64(&r);
	s->mp_state.mp_state = buf_get_u32(&r);
	if (!buf_reader_ok(&r))
		return vcpu_truncated(e, len);
	n = buf_get_u32(&r);
	if (!buf_reader_ok(&r))
		return vcpu_truncated(e, len);
	if (n < 1 || n > VCPU_STATE_MAX_CPUID)
		return err_set(e, -EINVAL, "vcpu state: %u CPUID entries (1 to %u)", n,
			       VCPU_STATE_MAX_CPUID);
	if ((size_t)n * CPUID_ENTRY_LEN > buf_reader_left(&r))
		return vcpu_truncated(e, len);
	s->cpuid = vcpu_cpuid_alloc(n);
	if (!s->cpuid)
		return err_set(e, -ENOMEM, "vcpu state: out of memory");
	for (uint32_t i = 0; i < n; i++) {
		struct kvm_cpuid_entry2 *c = &s->cpuid->entries[i];

		c->function = buf_get_u32(&r);
		c->index = buf_get_u32(&r);
		c->flags = buf_get_u32(&r);
		c->eax = buf_get_u32(&r);
		c->ebx = buf_get_u32(&r);
		c->ecx = buf_get_u32(&r);
		c->edx = buf_get_u32(&r);
	}
	if (buf_reader_left(&r))
		return err_set(e, -EINVAL, "vcpu state: %zu bytes after the end of the payload",
			       buf_reader_left(&r));
	return vcpu_state_check(s, e);
}

int vcpu_state_decode(const void *p, size_t len, uint32_t version, struct vcpu_state *s,
		      struct errbuf *e)
{
	int ret;

	memset(s, 0, sizeof(*s));
	ret = vcpu_state_parse(p, len, version, s, e);
	if (ret < 0)
		vcpu_state_free(s);
	return ret;
}
