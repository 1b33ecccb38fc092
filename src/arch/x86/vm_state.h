/* SPDX-License-Identifier: MIT */
/*
 * VM-wide x86 state held by KVM: the in-kernel PIC pair and IOAPIC, the PIT, and
 * kvmclock. Each is its own section with a version and an explicit little-endian
 * payload; every field is written out, never a C struct.
 *
 * For each section:
 *   _get     reads it from KVM and appends the payload to out;
 *   _digest  the same layout with the fields that change by themselves while the
 *            VM is paused set to zero, for comparing a saved VM with a restored one;
 *   _set     decodes and validates a payload into a staging struct, then writes it;
 *   _decode  the validation alone (no KVM), so a loader can check every section
 *            before it applies any;
 *   _apply   writes a struct that _decode accepted (the second half of _set);
 *   _encode  the payload of a kernel struct (what _get appends).
 * All return 0 or a negative errno, with a message in e.
 *
 * Payloads (version 1 each, integers little-endian):
 *   PIC (chip 0 master, 1 slave): 16 x u8: last_irr irr imr isr priority_add irq_base
 *     read_reg_select poll special_mask init_state auto_eoi rotate_on_auto_eoi
 *     special_fully_nested_mode init4 elcr elcr_mask
 *   IOAPIC (chip 2): u64 base_address, u32 ioregsel, u32 id, u32 irr,
 *     24 x u64 redirection table entries
 *   PIT: 3 channels of u32 count, u16 latched_count, u8 count_latched status_latched
 *     status read_state write_state write_latch rw_mode mode bcd gate,
 *     u64 count_load_time (host ns); then u32 flags
 *   kvmclock: u64 clock (guest ns), u32 flags, u64 realtime, u64 host_tsc
 *
 * Time-varying fields (zero in the _digest forms): the PIT channels' count_load_time
 * (KVM restarts each count when the PIT is set, so it differs after a restore) and all
 * of kvmclock (it keeps counting while the VM is paused; its flags depend on the host).
 * Nothing in the PIC or IOAPIC changes by itself: their digest equals their payload.
 *
 * kvmclock restore: KVM_SET_CLOCK gets the saved guest time and no KVM_CLOCK_REALTIME
 * flag, so the guest's clock continues from the moment it was paused. It neither jumps
 * forward by the length of the pause or transfer nor goes back; the guest sees the
 * pause as if it had not happened (like a VM stopped and continued), and a guest that
 * keeps wall time corrects it as after any suspend. The saved realtime and host_tsc are
 * kept in the payload for inspection.
 */
#ifndef GODWIT_ARCH_X86_VM_STATE_H
#define GODWIT_ARCH_X86_VM_STATE_H

#include "base/buf.h"
#include "base/util.h"

#include <linux/kvm.h>
#include <stddef.h>
#include <stdint.h>

#define VM_STATE_IRQCHIP_VERSION 1
#define VM_STATE_PIT_VERSION 1
#define VM_STATE_CLOCK_VERSION 1

#define VM_STATE_PIC_LEN 16u
#define VM_STATE_IOAPIC_LEN (8u + 4u + 4u + 4u + 8u * KVM_IOAPIC_NUM_PINS)
#define VM_STATE_PIT_LEN (3u * (4u + 2u + 10u + 8u) + 4u)
#define VM_STATE_CLOCK_LEN (8u + 4u + 8u + 8u)

/* KVM's IOAPIC does not move */
#define VM_STATE_IOAPIC_BASE 0xfec00000ull

/* "pic master", "pic slave", "ioapic", or "irqchip ?" */
const char *vm_state_irqchip_name(uint32_t chip_id);

/* chip_id: KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE or KVM_IRQCHIP_IOAPIC */
int __must_check vm_state_irqchip_get(int vmfd, uint32_t chip_id, struct buf *out,
				      struct errbuf *e);
int __must_check vm_state_irqchip_digest(int vmfd, uint32_t chip_id, struct buf *out,
					 struct errbuf *e);
int __must_check vm_state_irqchip_set(int vmfd, uint32_t chip_id, const void *p, size_t len,
				      uint32_t version, struct errbuf *e);
int __must_check vm_state_irqchip_apply(int vmfd, const struct kvm_irqchip *c,
					struct errbuf *e);
int __must_check vm_state_irqchip_encode(const struct kvm_irqchip *c, struct buf *out);
/* Fills c (chip_id included) from the payload of chip chip_id. */
int __must_check vm_state_irqchip_decode(uint32_t chip_id, const void *p, size_t len,
					 uint32_t version, struct kvm_irqchip *c,
					 struct errbuf *e);

int __must_check vm_state_pit_get(int vmfd, struct buf *out, struct errbuf *e);
int __must_check vm_state_pit_digest(int vmfd, struct buf *out, struct errbuf *e);
int __must_check vm_state_pit_set(int vmfd, const void *p, size_t len, uint32_t version,
				  struct errbuf *e);
int __must_check vm_state_pit_apply(int vmfd, const struct kvm_pit_state2 *pit,
				    struct errbuf *e);
int __must_check vm_state_pit_encode(const struct kvm_pit_state2 *pit, struct buf *out);
int __must_check vm_state_pit_decode(const void *p, size_t len, uint32_t version,
				     struct kvm_pit_state2 *pit, struct errbuf *e);

int __must_check vm_state_clock_get(int vmfd, struct buf *out, struct errbuf *e);
int __must_check vm_state_clock_digest(int vmfd, struct buf *out, struct errbuf *e);
int __must_check vm_state_clock_set(int vmfd, const void *p, size_t len, uint32_t version,
				    struct errbuf *e);
int __must_check vm_state_clock_apply(int vmfd, const struct kvm_clock_data *c,
				      struct errbuf *e);
int __must_check vm_state_clock_encode(const struct kvm_clock_data *c, struct buf *out);
int __must_check vm_state_clock_decode(const void *p, size_t len, uint32_t version,
				       struct kvm_clock_data *c, struct errbuf *e);

#endif
