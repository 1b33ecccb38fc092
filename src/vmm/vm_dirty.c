/* SPDX-License-Identifier: MIT */
/*
 * Dirty page tracking for the VM: the KVM tracker (kvm/dirty.h, bitmap or ring) OR-ed
 * with the VMM's own bitmap of pages it wrote itself (device emulation), which KVM
 * cannot see. Pages are numbered in flat RAM order (region after region).
 */
#include "base/log.h"
#include "kvm/dirty.h"
#include "vmm/vm_impl.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

enum vm_dirty_mode vm_dirty_mode_get(struct vm *vm)
{
	return vm->dirty_mode;
}

const char *vm_dirty_mode_name(enum vm_dirty_mode m)
{
	return m == VM_DIRTY_RING ? "ring" : "bitmap";
}

uint64_t vm_pages(struct vm *vm)
{
	return guest_mem_pages(&vm->mem);
}

uint8_t *vm_page_host(struct vm *vm, uint64_t page, uint64_t *gpa)
{
	uint64_t off = page * GUEST_PAGE_SIZE;

	for (unsigned i = 0; i < vm->mem.nregions; i++) {
		struct guest_mem_region *r = &vm->mem.regions[i];

		if (off >= r->offset && off - r->offset < r->size) {
			*gpa = r->gpa + (off - r->offset);
			return r->host + (off - r->offset);
		}
	}
	*gpa = 0;
	return NULL;
}

unsigned vm_memslots(struct vm *vm, struct dirty_slot *slots)
{
	unsigned n = 0;

	for (unsigned i = 0; i < vm->mem.nregions; i++) {
		struct guest_mem_region *r = &vm->mem.regions[i];

		for (uint64_t off = 0; off < r->size; off += VM_SLOT_BYTES) {
			slots[n] = (struct dirty_slot){
				.slot = n,
				.gpa = r->gpa + off,
				.npages = MIN(VM_SLOT_BYTES, r->size - off) / GUEST_PAGE_SIZE,
				.host = r->host + off,
				.first_page = (r->offset + off) / GUEST_PAGE_SIZE,
			};
			n++;
		}
	}
	return n;
}

/* The tracker's question about a slot nobody may have touched: see kvm/dirty.h. */
static int64_t vm_dirty_touched(void *opaque, const void *host, uint64_t npages,
				uint64_t *bitmap)
{
	struct vm *vm = opaque;

	return guest_mem_touched_pages(&vm->mem, host, npages, bitmap);
}

/* Creates the tracker at VM build time (ring mode: before the vCPUs exist). */
int vm_dirty_setup(struct vm *vm, unsigned nvcpus, struct errbuf *e)
{
	struct dirty_config cfg = {
		.mode = vm->dirty_mode == VM_DIRTY_RING ? DIRTY_MODE_RING : DIRTY_MODE_BITMAP,
		.vmfd = vm->fd,
		.ring_bytes = VM_DIRTY_RING_BYTES,
		.nvcpus = nvcpus,
		/*
		 * Starting write-protects what is mapped now, at once (cheap for the
		 * untouched bulk of a big guest) instead of leaving every page reported
		 * and re-arming it all in round 0 (measured: ~10 ms per idle 4 GiB).
		 */
		.no_initially_set = true,
		.touched = vm_dirty_touched,
		.touched_opaque = vm,
	};
	struct dirty_slot *slots;
	int ret;

	if (vm->dirty_mode == VM_DIRTY_RING) {
		ret = dirty_ring_enable(vm->fd, VM_DIRTY_RING_BYTES, e);
		if (ret < 0)
			return err_prefix(e, ret, "--dirty-tracking ring");
	}
	slots = calloc(VM_SLOTS_MAX, sizeof(*slots));
	if (!slots)
		return err_set(e, -ENOMEM, "out of memory");
	cfg.slots = slots;
	cfg.nslots = vm_memslots(vm, slots);
	ret = dirty_tracker_create(&vm->dirty, &cfg, e);
	free(slots);
	return ret;
}

int vm_dirty_vcpu_setup(struct vm *vm, struct vcpu *v, struct errbuf *e)
{
	return dirty_tracker_vcpu_add(vm->dirty, v->index, v->fd, e);
}

int vm_dirty_start(struct vm *vm, struct errbuf *e)
{
	uint64_t words = (guest_mem_pages(&vm->mem) + 63) / 64;

	/*
	 * VMM writes from before the start are covered by round 0: drop their bits, only
	 * where the summary says there are some (every word of a big guest's bitmap would
	 * cost its size, and storing into them all would fault every page of it in).
	 */
	for (uint64_t j = 0; j < (words + 63) / 64; j++) {
		if (!atomic_exchange(&vm->mem.vmm_dirty_sum[j], 0))
			continue;
		for (uint64_t w = j * 64; w < MIN(words, j * 64 + 64); w++)
			atomic_store(&vm->mem.vmm_dirty[w], 0);
	}
	return dirty_tracker_start(vm->dirty, e);
}

int vm_dirty_sync(struct vm *vm, uint64_t *bitmap, uint64_t *span, struct errbuf *e)
{
	int ret = dirty_tracker_sync_span(vm->dirty, bitmap, span, e);

	if (ret < 0)
		return ret;
	/* through the summary: the final sync runs in the downtime */
	dirty_bitmap_take(bitmap, vm->mem.vmm_dirty, vm->mem.vmm_dirty_sum,
			  guest_mem_pages(&vm->mem), span);
	return 0;
}

int vm_dirty_harvest(struct vm *vm, struct errbuf *e)
{
	return dirty_tracker_harvest(vm->dirty, e);
}

int vm_dirty_clear(struct vm *vm, uint64_t first_page, uint64_t npages, struct errbuf *e)
{
	return dirty_tracker_clear(vm->dirty, first_page, npages, e);
}

void vm_dirty_stop(struct vm *vm)
{
	struct errbuf e;

	if (dirty_tracker_stop(vm->dirty, &e) < 0)
		log_warn("stopping dirty tracking: %s", e.msg);
}

/* A vCPU's dirty ring is full: harvest it so the vCPU can go on. */
int vm_dirty_ring_full(struct vm *vm, struct vcpu *v)
{
	struct errbuf e;
	int ret = dirty_tracker_ring_full(vm->dirty, v->index, &e);

	if (ret < 0)
		log_err("vCPU %u: dirty ring full: %s", v->index, e.msg);
	return ret;
}
