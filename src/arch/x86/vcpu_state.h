/* SPDX-License-Identifier: MIT */
/*
 * The complete state of one x86 vCPU: read from KVM in one fixed order, encoded as
 * an explicit little-endian payload, decoded and validated into a staging struct,
 * and written back in the matching order.
 *
 * Read order (vcpu_state_get): CPUID, regs, sregs, XSAVE (or FPU), XCRs, MSRs, LAPIC,
 * vcpu events, debug registers, MP state.
 * Write order (vcpu_state_set): CPUID (KVM accepts a new table until the vCPU first runs,
 * and the same one after), sregs (carries the APIC base), regs, XSAVE, XCRs, MSRs,
 * LAPIC, the TSC deadline MSR, vcpu events, MP state, debug registers. The FPU form is
 * written with KVM_SET_XSAVE too, as a legacy-region-only area (see vcpu_state.c).
 * The VM-wide CPUID must already be set on the vCPU (KVM_SET_CPUID2), and both run on the
 * vCPU's own thread while it is paused with any pending I/O exit completed.
 *
 * Payload, version VCPU_STATE_VERSION; all integers little-endian:
 *   u32 flags                     VCPU_STATE_F_XSAVE: an XSAVE area, else the FPU
 *   regs      18 x u64            rax rbx rcx rdx rsi rdi rsp rbp r8..r15 rip rflags
 *   sregs     8 segments          cs ds es fs gs ss tr ldt, each:
 *                                 u64 base, u32 limit, u16 selector, u8 type, present,
 *                                 dpl, db, s, l, g, avl, unusable
 *             2 tables            gdt idt, each: u64 base, u16 limit
 *             7 x u64             cr0 cr2 cr3 cr4 cr8 efer apic_base
 *             4 x u64             interrupt_bitmap
 *   XSAVE     u32 len + len bytes the hardware-defined (standard format) XSAVE area
 *   or FPU    8 x 16 bytes fpr, u16 fcw, u16 fsw, u8 ftwx, u16 last_opcode,
 *             u64 last_ip, u64 last_dp, 16 x 16 bytes xmm, u32 mxcsr
 *   XCRs      u32 count (<= 16), u32 flags, count x (u32 xcr, u64 value)
 *   MSRs      u32 count (<= VCPU_STATE_MAX_MSRS), count x (u32 index, u64 value)
 *   LAPIC     u32 len (= 1024) + the LAPIC register page
 *   events    u8 exception.injected, nr, has_error_code, pending, u32 error_code,
 *             u8 interrupt.injected, nr, soft, shadow,
 *             u8 nmi.injected, pending, masked, u32 sipi_vector, u32 flags,
 *             u8 smi.smm, pending, smm_inside_nmi, latched_init,
 *             u8 triple_fault.pending, u8 exception_has_payload, u64 exception_payload
 *   debug     4 x u64 db, u64 dr6, u64 dr7, u64 flags
 *   MP state  u32
 *   CPUID     u32 count (1..VCPU_STATE_MAX_CPUID), count x (u32 function, index, flags,
 *             eax, ebx, ecx, edx): this vCPU's own table (KVM_GET_CPUID2 on the vCPU),
 *             APIC IDs included (version 1 had none; it is no longer read)
 *
 * The encoding is deterministic: the same state gives the same bytes.
 */
#ifndef GODWIT_ARCH_X86_VCPU_STATE_H
#define GODWIT_ARCH_X86_VCPU_STATE_H

#include "base/buf.h"
#include "base/util.h"

#include <linux/kvm.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define VCPU_STATE_VERSION 2
#define VCPU_STATE_MAX_MSRS 1024
#define VCPU_STATE_MAX_CPUID 256
/* The XSAVE area is 4096 bytes unless dynamic features (AMX) are enabled: ~11 KiB */
#define VCPU_STATE_XSAVE_MIN 4096u
#define VCPU_STATE_XSAVE_MAX (64u * 1024)

#define VCPU_STATE_F_XSAVE (1u << 0)

struct vcpu_state {
	struct kvm_cpuid2 *cpuid; /* malloc'ed: this vCPU's CPUID, APIC IDs included */
	struct kvm_regs regs;
	struct kvm_sregs sregs;
	bool has_xsave;           /* xsave holds the state, else fpu */
	uint32_t xsave_len;       /* bytes in xsave; a multiple of 4, >= 4096 */
	struct kvm_xsave *xsave;  /* malloc'ed, xsave_len bytes */
	struct kvm_fpu fpu;
	struct kvm_xcrs xcrs;
	struct kvm_msrs *msrs;    /* malloc'ed, msrs->nmsrs entries */
	struct kvm_lapic_state lapic;
	struct kvm_vcpu_events events;
	struct kvm_debugregs debugregs;
	struct kvm_mp_state mp_state;
};

/*
 * The XSAVE area size vCPUs of vmfd use: KVM_CAP_XSAVE2's size (at least 4096), or
 * 0 if the host has no XSAVE, in which case the x87/SSE state goes through KVM_GET_FPU
 * and there are no XCRs. Pass it to vcpu_state_get().
 */
uint32_t vcpu_state_xsave_size(int vmfd);

/*
 * Reads the vCPU's state in the fixed order into s, which the caller releases with
 * vcpu_state_free (on failure s is left empty). msr_indices are KVM_GET_MSR_INDEX_LIST's. An MSR
 * that KVM refuses to read for this vCPU (KVM_GET_MSRS stops at it) is left out of
 * the state with a debug message rather than failing the whole read: KVM lists MSRs
 * the host supports, and some depend on the guest's CPUID. Such an MSR keeps its
 * reset value on restore.
 */
int __must_check vcpu_state_get(int vcpufd, const uint32_t *msr_indices, uint32_t nmsrs,
				uint32_t xsave_size, struct vcpu_state *s, struct errbuf *e);
/* Writes s to the vCPU in the fixed order. Fails naming the first ioctl that failed. */
int __must_check vcpu_state_set(int vcpufd, const struct vcpu_state *s, struct errbuf *e);

/* Appends the payload. 0, or -ENOMEM (the buffer's status). */
int __must_check vcpu_state_encode(const struct vcpu_state *s, struct buf *out);
/*
 * The same layout with the fields that change by themselves while the vCPU is paused
 * set to zero, for digests that compare a saved VM with a restored one: the TSC
 * (MSR 0x10), the Hyper-V reference counter (MSR 0x40000020) and the LAPIC timer's
 * current count (TMCCT). Not loadable as state.
 */
int __must_check vcpu_state_encode_digest(const struct vcpu_state *s, struct buf *out);
/*
 * Decodes and validates a payload of the given version into s, which the caller
 * releases with vcpu_state_free (on failure s is left empty). Touches no vCPU; the
 * caller applies s with vcpu_state_set.
 */
int __must_check vcpu_state_decode(const void *p, size_t len, uint32_t version,
				   struct vcpu_state *s, struct errbuf *e);
/* Releases what s allocated and zeroes it; s may be zeroed or partly filled. */
void vcpu_state_free(struct vcpu_state *s);

#endif
