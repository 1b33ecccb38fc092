/* SPDX-License-Identifier: MIT */
/* VM-wide x86 state in KVM (PIC, IOAPIC, PIT, kvmclock) as explicit little-endian sections. */
#include "arch/x86/vm_state.h"
#include "kvm/kvm.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#define PIT_RW_STATE_MAX 4      /* RW_STATE_LSB, _MSB, _WORD0, _WORD1 */
#define PIT_MODE_UNSET 0xff     /* a channel never programmed since reset */
#define PIT_KNOWN_FLAGS (KVM_PIT_FLAGS_HPET_LEGACY | KVM_PIT_FLAGS_SPEAKER_DATA_ON)
#define CLOCK_KNOWN_FLAGS (KVM_CLOCK_TSC_STABLE | KVM_CLOCK_REALTIME | KVM_CLOCK_HOST_TSC)

const char *vm_state_irqchip_name(uint32_t chip_id)
{
	switch (chip_id) {
	case KVM_IRQCHIP_PIC_MASTER: return "pic master";
	case KVM_IRQCHIP_PIC_SLAVE: return "pic slave";
	case KVM_IRQCHIP_IOAPIC: return "ioapic";
	}
	return "irqchip ?";
}

static int vm_state_version_check(const char *what, uint32_t version, uint32_t want,
				  struct errbuf *e)
{
	if (version != want)
		return err_set(e, -EINVAL,
			       "%s state: version %u not supported (this build reads %u)", what,
			       version, want);
	return 0;
}

static int vm_state_len_check(const char *what, size_t len, size_t want, struct errbuf *e)
{
	if (len != want)
		return err_set(e, -EINVAL, "%s state: length %zu, expected %zu", what, len, want);
	return 0;
}

static int vm_state_u8_check(const char *what, const char *field, uint8_t v, uint8_t max,
			     struct errbuf *e)
{
	if (v > max)
		return err_set(e, -EINVAL, "%s state: %s %u exceeds %u", what, field, v, max);
	return 0;
}

/* ---- PIC and IOAPIC ---- */

static void vm_pic_put(struct buf *b, const struct kvm_pic_state *p)
{
	const uint8_t v[VM_STATE_PIC_LEN] = {
		p->last_irr,	 p->irr,	    p->imr,
		p->isr,		 p->priority_add,   p->irq_base,
		p->read_reg_select, p->poll,	    p->special_mask,
		p->init_state,	 p->auto_eoi,	    p->rotate_on_auto_eoi,
		p->special_fully_nested_mode, p->init4, p->elcr,
		p->elcr_mask,
	};

	buf_put_bytes(b, v, sizeof(v));
}

static void vm_ioapic_put(struct buf *b, const struct kvm_ioapic_state *s)
{
	buf_put_u64(b, s->base_address);
	buf_put_u32(b, s->ioregsel);
	buf_put_u32(b, s->id);
	buf_put_u32(b, s->irr);
	for (unsigned i = 0; i < KVM_IOAPIC_NUM_PINS; i++)
		buf_put_u64(b, s->redirtbl[i].bits);
}

int vm_state_irqchip_encode(const struct kvm_irqchip *c, struct buf *out)
{
	if (c->chip_id == KVM_IRQCHIP_IOAPIC)
		vm_ioapic_put(out, &c->chip.ioapic);
	else
		vm_pic_put(out, &c->chip.pic);
	return buf_status(out);
}

static int vm_pic_parse(const char *what, const uint8_t *v, struct kvm_pic_state *p,
			struct errbuf *e)
{
	const struct {
		const char *name;
		uint8_t val, max;
	} limits[] = {
		{ "priority_add", v[4], 7 },
		{ "read_reg_select", v[6], 1 },
		{ "poll", v[7], 1 },
		{ "special_mask", v[8], 1 },
		{ "init_state", v[9], 3 },
		{ "auto_eoi", v[10], 1 },
		{ "rotate_on_auto_eoi", v[11], 1 },
		{ "special_fully_nested_mode", v[12], 1 },
		{ "init4", v[13], 1 },
	};
	int ret;

	for (size_t i = 0; i < ARRAY_SIZE(limits); i++) {
		ret = vm_state_u8_check(what, limits[i].name, limits[i].val, limits[i].max, e);
		if (ret < 0)
			return ret;
	}
	/* ICW2 gives the vector base in bits 3-7 */
	if (v[5] & 7)
		return err_set(e, -EINVAL, "%s state: irq_base 0x%x not a multiple of 8", what,
			       v[5]);
	p->last_irr = v[0];
	p->irr = v[1];
	p->imr = v[2];
	p->isr = v[3];
	p->priority_add = v[4];
	p->irq_base = v[5];
	p->read_reg_select = v[6];
	p->poll = v[7];
	p->special_mask = v[8];
	p->init_state = v[9];
	p->auto_eoi = v[10];
	p->rotate_on_auto_eoi = v[11];
	p->special_fully_nested_mode = v[12];
	p->init4 = v[13];
	p->elcr = v[14];
	p->elcr_mask = v[15];
	return 0;
}

static int vm_ioapic_parse(const void *p, size_t len, struct kvm_ioapic_state *s,
			   struct errbuf *e)
{
	struct buf_reader r;

	buf_reader_init(&r, p, len);
	s->base_address = buf_get_u64(&r);
	s->ioregsel = buf_get_u32(&r);
	s->id = buf_get_u32(&r);
	s->irr = buf_get_u32(&r);
	for (unsigned i = 0; i < KVM_IOAPIC_NUM_PINS; i++)
		s->redirtbl[i].bits = buf_get_u64(&r);
	if (!buf_reader_done(&r))
		return err_set(e, -EINVAL, "ioapic state: malformed payload");
	if (s->base_address != VM_STATE_IOAPIC_BASE)
		return err_set(e, -EINVAL, "ioapic state: base address 0x%llx, KVM's is 0x%llx",
			       (unsigned long long)s->base_address, VM_STATE_IOAPIC_BASE);
	if (s->id > 15)
		return err_set(e, -EINVAL, "ioapic state: id %u exceeds 15", s->id);
	if (s->irr >> KVM_IOAPIC_NUM_PINS)
		return err_set(e, -EINVAL, "ioapic state: irr 0x%x beyond %u pins", s->irr,
			       KVM_IOAPIC_NUM_PINS);
	return 0;
}

int vm_state_irqchip_decode(uint32_t chip_id, const void *p, size_t len, uint32_t version,
			    struct kvm_irqchip *c, struct errbuf *e)
{
	const char *what = vm_state_irqchip_name(chip_id);
	int ret;

	memset(c, 0, sizeof(*c));
	if (chip_id >= KVM_NR_IRQCHIPS)
		return err_set(e, -EINVAL, "irqchip state: chip id %u unknown", chip_id);
	ret = vm_state_version_check(what, version, VM_STATE_IRQCHIP_VERSION, e);
	if (ret < 0)
		return ret;
	c->chip_id = chip_id;
	if (chip_id == KVM_IRQCHIP_IOAPIC) {
		ret = vm_state_len_check(what, len, VM_STATE_IOAPIC_LEN, e);
		if (ret < 0)
			return ret;
		return vm_ioapic_parse(p, len, &c->chip.ioapic, e);
	}
	ret = vm_state_len_check(what, len, VM_STATE_PIC_LEN, e);
	if (ret < 0)
		return ret;
	return vm_pic_parse(what, p, &c->chip.pic, e);
}

static int vm_irqchip_read(int vmfd, uint32_t chip_id, struct kvm_irqchip *c, struct errbuf *e)
{
	int ret;

	if (chip_id >= KVM_NR_IRQCHIPS)
		return err_set(e, -EINVAL, "irqchip state: chip id %u unknown", chip_id);
	memset(c, 0, sizeof(*c));
	c->chip_id = chip_id;
	ret = kvm_ioctl(vmfd, KVM_GET_IRQCHIP, c);
	if (ret < 0)
		return err_set(e, ret, "%s state: KVM_GET_IRQCHIP: %s",
			       vm_state_irqchip_name(chip_id), strerror(-ret));
	return 0;
}

int vm_state_irqchip_get(int vmfd, uint32_t chip_id, struct buf *out, struct errbuf *e)
{
	struct kvm_irqchip c;
	int ret = vm_irqchip_read(vmfd, chip_id, &c, e);

	if (ret < 0)
		return ret;
	ret = vm_state_irqchip_encode(&c, out);
	if (ret < 0)
		return err_set(e, ret, "%s state: out of memory", vm_state_irqchip_name(chip_id));
	return 0;
}

int vm_state_irqchip_digest(int vmfd, uint32_t chip_id, struct buf *out, struct errbuf *e)
{
	return vm_state_irqchip_get(vmfd, chip_id, out, e);
}

int vm_state_irqchip_apply(int vmfd, const struct kvm_irqchip *c, struct errbuf *e)
{
	int ret = kvm_ioctl(vmfd, KVM_SET_IRQCHIP, (void *)c);

	if (ret < 0)
		return err_set(e, ret, "%s state: KVM_SET_IRQCHIP: %s",
			       vm_state_irqchip_name(c->chip_id), strerror(-ret));
	return 0;
}

int vm_state_irqchip_set(int vmfd, uint32_t chip_id, const void *p, size_t len,
			 uint32_t version, struct errbuf *e)
{
	struct kvm_irqchip c;
	int ret;

	ret = vm_state_irqchip_decode(chip_id, p, len, version, &c, e);
	if (ret < 0)
		return ret;
	return vm_state_irqchip_apply(vmfd, &c, e);
}

/* ---- PIT ---- */

static void vm_pit_put(struct buf *b, const struct kvm_pit_state2 *pit, bool digest)
{
	for (unsigned i = 0; i < 3; i++) {
		const struct kvm_pit_channel_state *c = &pit->channels[i];
		const uint8_t v[10] = { c->count_latched, c->status_latched, c->status,
					c->read_state,	  c->write_state,    c->write_latch,
					c->rw_mode,	  c->mode,	     c->bcd,
					c->gate };

		buf_put_u32(b, c->count);
		buf_put_u16(b, c->latched_count);
		buf_put_bytes(b, v, sizeof(v));
		buf_put_u64(b, digest ? 0 : (uint64_t)c->count_load_time);
	}
	buf_put_u32(b, pit->flags);
}

int vm_state_pit_encode(const struct kvm_pit_state2 *pit, struct buf *out)
{
	vm_pit_put(out, pit, false);
	return buf_status(out);
}

static int vm_pit_channel_check(unsigned i, const struct kvm_pit_channel_state *c,
				struct errbuf *e)
{
	const struct {
		const char *name;
		uint8_t val, max;
	} limits[] = {
		{ "count_latched", c->count_latched, PIT_RW_STATE_MAX },
		{ "status_latched", c->status_latched, 1 },
		{ "read_state", c->read_state, PIT_RW_STATE_MAX },
		{ "write_state", c->write_state, PIT_RW_STATE_MAX },
		{ "rw_mode", c->rw_mode, 3 },
		{ "bcd", c->bcd, 1 },
		{ "gate", c->gate, 1 },
	};
	char what[32];
	int ret;

	snprintf(what, sizeof(what), "pit channel %u", i);
	if (c->count > 0x10000)
		return err_set(e, -EINVAL, "pit state: channel %u count %u exceeds 65536", i,
			       c->count);
	/* modes 6 and 7 are stored as 2 and 3 */
	if (c->mode > 5 && c->mode != PIT_MODE_UNSET)
		return err_set(e, -EINVAL, "pit state: channel %u mode %u unknown", i, c->mode);
	for (size_t k = 0; k < ARRAY_SIZE(limits); k++) {
		ret = vm_state_u8_check(what, limits[k].name, limits[k].val, limits[k].max, e);
		if (ret < 0)
			return ret;
	}
	return 0;
}

int vm_state_pit_decode(const void *p, size_t len, uint32_t version, struct kvm_pit_state2 *pit,
			struct errbuf *e)
{
	struct buf_reader r;
	int ret;

	memset(pit, 0, sizeof(*pit));
	ret = vm_state_version_check("pit", version, VM_STATE_PIT_VERSION, e);
	if (!ret)
		ret = vm_state_len_check("pit", len, VM_STATE_PIT_LEN, e);
	if (ret < 0)
		return ret;
	buf_reader_init(&r, p, len);
	for (unsigned i = 0; i < 3; i++) {
		struct kvm_pit_channel_state *c = &pit->channels[i];

		c->count = buf_get_u32(&r);
		c->latched_count = buf_get_u16(&r);
		c->count_latched = buf_get_u8(&r);
		c->status_latched = buf_get_u8(&r);
		c->status = buf_get_u8(&r);
		c->read_state = buf_get_u8(&r);
		c->write_state = buf_get_u8(&r);
		c->write_latch = buf_get_u8(&r);
		c->rw_mode = buf_get_u8(&r);
		c->mode = buf_get_u8(&r);
		c->bcd = buf_get_u8(&r);
		c->gate = buf_get_u8(&r);
		c->count_load_time = (int64_t)buf_get_u64(&r);
	}
	pit->flags = buf_get_u32(&r);
	if (!buf_reader_done(&r))
		return err_set(e, -EINVAL, "pit state: malformed payload");
	for (unsigned i = 0; i < 3; i++) {
		ret = vm_pit_channel_check(i, &pit->channels[i], e);
		if (ret < 0)
			return ret;
	}
	if (pit->flags & ~PIT_KNOWN_FLAGS)
		return err_set(e, -EINVAL, "pit state: flags 0x%x unknown", pit->flags);
	return 0;
}

static int vm_pit_read(int vmfd, struct buf *out, bool digest, struct errbuf *e)
{
	struct kvm_pit_state2 pit;
	int ret;

	memset(&pit, 0, sizeof(pit));
	ret = kvm_ioctl(vmfd, KVM_GET_PIT2, &pit);
	if (ret < 0)
		return err_set(e, ret, "pit state: KVM_GET_PIT2: %s", strerror(-ret));
	vm_pit_put(out, &pit, digest);
	ret = buf_status(out);
	if (ret < 0)
		return err_set(e, ret, "pit state: out of memory");
	return 0;
}

int vm_state_pit_get(int vmfd, struct buf *out, struct errbuf *e)
{
	return vm_pit_read(vmfd, out, false, e);
}

int vm_state_pit_digest(int vmfd, struct buf *out, struct errbuf *e)
{
	return vm_pit_read(vmfd, out, true, e);
}

int vm_state_pit_apply(int vmfd, const struct kvm_pit_state2 *pit, struct errbuf *e)
{
	/* KVM reloads each channel's count from now: count_load_time is not restored */
	int ret = kvm_ioctl(vmfd, KVM_SET_PIT2, (void *)pit);

	if (ret < 0)
		return err_set(e, ret, "pit state: KVM_SET_PIT2: %s", strerror(-ret));
	return 0;
}

int vm_state_pit_set(int vmfd, const void *p, size_t len, uint32_t version, struct errbuf *e)
{
	struct kvm_pit_state2 pit;
	int ret;

	ret = vm_state_pit_decode(p, len, version, &pit, e);
	if (ret < 0)
		return ret;
	return vm_state_pit_apply(vmfd, &pit, e);
}

/* ---- kvmclock ---- */

static void vm_clock_put(struct buf *b, const struct kvm_clock_data *c, bool digest)
{
	buf_put_u64(b, digest ? 0 : c->clock);
	buf_put_u32(b, digest ? 0 : c->flags);
	buf_put_u64(b, digest ? 0 : c->realtime);
	buf_put_u64(b, digest ? 0 : c->host_tsc);
}

int vm_state_clock_encode(const struct kvm_clock_data *c, struct buf *out)
{
	vm_clock_put(out, c, false);
	return buf_status(out);
}

int vm_state_clock_decode(const void *p, size_t len, uint32_t version, struct kvm_clock_data *c,
			  struct errbuf *e)
{
	struct buf_reader r;
	int ret;

	memset(c, 0, sizeof(*c));
	ret = vm_state_version_check("kvmclock", version, VM_STATE_CLOCK_VERSION, e);
	if (!ret)
		ret = vm_state_len_check("kvmclock", len, VM_STATE_CLOCK_LEN, e);
	if (ret < 0)
		return ret;
	buf_reader_init(&r, p, len);
	c->clock = buf_get_u64(&r);
	c->flags = buf_get_u32(&r);
	c->realtime = buf_get_u64(&r);
	c->host_tsc = buf_get_u64(&r);
	if (!buf_reader_done(&r))
		return err_set(e, -EINVAL, "kvmclock state: malformed payload");
	if (c->flags & ~CLOCK_KNOWN_FLAGS)
		return err_set(e, -EINVAL, "kvmclock state: flags 0x%x unknown", c->flags);
	/* guest time is signed nanoseconds in KVM */
	if (c->clock > INT64_MAX)
		return err_set(e, -EINVAL, "kvmclock state: clock 0x%llx out of range",
			       (unsigned long long)c->clock);
	return 0;
}

static int vm_clock_read(int vmfd, struct buf *out, bool digest, struct errbuf *e)
{
	struct kvm_clock_data c;
	int ret;

	memset(&c, 0, sizeof(c));
	ret = kvm_ioctl(vmfd, KVM_GET_CLOCK, &c);
	if (ret < 0)
		return err_set(e, ret, "kvmclock state: KVM_GET_CLOCK: %s", strerror(-ret));
	vm_clock_put(out, &c, digest);
	ret = buf_status(out);
	if (ret < 0)
		return err_set(e, ret, "kvmclock state: out of memory");
	return 0;
}

int vm_state_clock_get(int vmfd, struct buf *out, struct errbuf *e)
{
	return vm_clock_read(vmfd, out, false, e);
}

int vm_state_clock_digest(int vmfd, struct buf *out, struct errbuf *e)
{
	return vm_clock_read(vmfd, out, true, e);
}

int vm_state_clock_apply(int vmfd, const struct kvm_clock_data *saved, struct errbuf *e)
{
	struct kvm_clock_data c;
	int ret;

	/* the saved guest time, without KVM_CLOCK_REALTIME: see vm_state.h */
	memset(&c, 0, sizeof(c));
	c.clock = saved->clock;
	ret = kvm_ioctl(vmfd, KVM_SET_CLOCK, &c);
	if (ret < 0)
		return err_set(e, ret, "kvmclock state: KVM_SET_CLOCK: %s", strerror(-ret));
	return 0;
}

int vm_state_clock_set(int vmfd, const void *p, size_t len, uint32_t version, struct errbuf *e)
{
	struct kvm_clock_data saved;
	int ret;

	ret = vm_state_clock_decode(p, len, version, &saved, e);
	if (ret < 0)
		return ret;
	return vm_state_clock_apply(vmfd, &saved, e);
}
