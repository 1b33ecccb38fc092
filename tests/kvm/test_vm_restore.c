/* SPDX-License-Identifier: MIT */
/*
 * A VM's state moved into a new VM through the VMM's own save/load (vm_sections_save,
 * vm_create_restore, vm_sections_load), on real KVM with the guest kit on 2 vCPUs:
 *  - each vCPU gets its own saved CPUID back: vCPU 1's APIC IDs (leaf 1 EBX[31:24], leaf
 *    0xB EDX) say 1, as its LAPIC does, and every entry equals the source vCPU's;
 *  - the state digests (CPUID included) of source and copy are equal;
 *  - the TSC frequency is carried: the copy runs at the source's kHz, one KVM cannot give
 *    is refused before anything is loaded, and so is an XSAVE area larger than this host's;
 *  - nothing is applied unless every section is valid: with a broken device payload last,
 *    the load fails and the target VM's irqchips, PIT, clock and vCPUs are untouched.
 * Usage: test_vm_restore GUEST_ELF
 */
#include "kvm_test.h"
#include "vmm/vm.h"
#include "vmm/vm_impl.h"

#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

#define MAX_SECS 32

struct saved {
	struct vm_section secs[MAX_SECS];
	size_t n;
};

static int save_cb(void *opaque, const struct vm_section *s, struct errbuf *e)
{
	struct saved *sv = opaque;
	void *data = malloc(s->len);

	TEST_ASSERT(sv->n < MAX_SECS && data, "too many sections");
	memcpy(data, s->data, s->len);
	sv->secs[sv->n++] = (struct vm_section){ strdup(s->name), strdup(s->instance), s->version,
						 data, s->len };
	return 0;
}

static int concat_cb(void *opaque, const struct vm_section *s, struct errbuf *e)
{
	buf_put_bytes(opaque, s->data, s->len);
	return 0;
}

/* Every section of vm in its digest form, back to back. */
static void state_bytes(struct vm *vm, struct buf *b)
{
	struct errbuf e;

	buf_reset(b);
	TEST_OK(vm_sections_save(vm, true, concat_cb, b, &e));
}

static int cpuid_get(struct vcpu *v, void *arg)
{
	struct kvm_cpuid2 *c = arg;

	c->nent = 256;
	return kvm_ioctl(v->fd, KVM_GET_CPUID2, c);
}

static struct kvm_cpuid2 *vcpu_cpuid(struct vm *vm, unsigned i)
{
	struct kvm_cpuid2 *c = calloc(1, sizeof(*c) + 256 * sizeof(c->entries[0]));

	TEST_ASSERT(c, "calloc");
	TEST_ASSERT(vcpu_call(&vm->vcpus[i], cpuid_get, c) == 0, "KVM_GET_CPUID2 on vCPU %u", i);
	return c;
}

static const struct kvm_cpuid_entry2 *leaf(const struct kvm_cpuid2 *c, uint32_t fn, uint32_t idx)
{
	for (uint32_t i = 0; i < c->nent; i++)
		if (c->entries[i].function == fn && c->entries[i].index == idx)
			return &c->entries[i];
	return NULL;
}

/* A new VM from src's machine description, with tsc_khz and xsave_size as given. */
static int restore_vm(struct vm *src, struct evloop *loop, uint32_t tsc_khz, uint32_t xsave_size,
		      struct vm **out, struct errbuf *e)
{
	struct vm_machine m;
	struct vm_restore_config rc = { .name = "copy", .serial = VM_SERIAL_NONE };

	vm_machine_get(src, &m);
	rc.nvcpus = m.nvcpus;
	rc.memory = m.memory;
	rc.cpuid = m.cpuid;
	rc.tsc_khz = tsc_khz;
	rc.xsave_size = xsave_size;
	return vm_create_restore(out, loop, &rc, e);
}

int main(int argc, char **argv)
{
	char dm1[17], ds1[17], dm2[17], ds2[17];
	struct saved sv = { .n = 0 };
	struct vm_machine m1, m2;
	struct test_guest g;
	struct evloop *loop;
	struct errbuf e = { { 0 } };
	struct vm *vm, *copy, *bad;
	int ret;

	test_guest_create(&g, argc, argv, "restore-test", 2, "workload=idle");
	test_guest_start(&g);
	vm = g.vm;
	loop = g.loop;
	TEST_OK(vm_pause(vm, &e));
	TEST_OK(vm_sections_save(vm, false, save_cb, &sv, &e));
	TEST_OK(vm_digest(vm, dm1, ds1, &e));
	vm_machine_get(vm, &m1);
	printf("source: TSC %u kHz, XSAVE %u bytes\n", m1.tsc_khz, m1.xsave_size);

	TEST_OK(restore_vm(vm, loop, m1.tsc_khz, m1.xsave_size, &copy, &e));
	for (unsigned r = 0; r < vm->mem.nregions; r++)
		memcpy(copy->mem.regions[r].host, vm->mem.regions[r].host, vm->mem.regions[r].size);
	TEST_OK(vm_sections_load(copy, sv.secs, sv.n, &e));
	for (unsigned i = 0; i < 2; i++) {
		struct kvm_cpuid2 *a = vcpu_cpuid(vm, i), *b = vcpu_cpuid(copy, i);
		const struct kvm_cpuid_entry2 *l1 = leaf(b, 1, 0), *lb = leaf(b, 0xb, 0);

		TEST_ASSERT(l1, "no leaf 1");
		TEST_ASSERT_EQ(l1->ebx >> 24, i);
		if (lb)
			TEST_ASSERT_EQ(lb->edx, i);
		TEST_ASSERT_EQ(a->nent, b->nent);
		for (uint32_t k = 0; k < a->nent; k++)
			TEST_ASSERT(!memcmp(&a->entries[k], &b->entries[k], sizeof(a->entries[k])),
				    "vCPU %u CPUID leaf 0x%x.%u differs after restore", i,
				    a->entries[k].function, a->entries[k].index);
		free(a);
		free(b);
	}
	vm_start_paused(copy);
	TEST_OK(vm_digest(copy, dm2, ds2, &e));
	TEST_ASSERT(!strcmp(dm1, dm2) && !strcmp(ds1, ds2), "digests differ: %s %s / %s %s", dm1,
		    ds1, dm2, ds2);
	vm_machine_get(copy, &m2);
	TEST_ASSERT_EQ(m2.tsc_khz, m1.tsc_khz);
	vm_destroy(copy);

	/* a device payload that fails validation, after everything else: nothing is applied */
	{
		struct buf before, after;
		struct vm_section *ser = NULL;
		uint8_t *bad_payload;

		for (size_t i = 0; i < sv.n; i++)
			if (!strcmp(sv.secs[i].name, "serial8250"))
				ser = &sv.secs[i];
		TEST_ASSERT(ser && ser->len > 2, "no serial section");
		bad_payload = (uint8_t *)ser->data;
		bad_payload[2] |= 0xf0; /* IER reserved bits */
		TEST_OK(restore_vm(vm, loop, m1.tsc_khz, m1.xsave_size, &bad, &e));
		buf_init(&before);
		buf_init(&after);
		state_bytes(bad, &before);
		ret = vm_sections_load(bad, sv.secs, sv.n, &e);
		TEST_ASSERT(ret < 0 && strstr(e.msg, "serial8250@io:3f8") && strstr(e.msg, "IER"),
			    "a bad serial payload: %d %s", ret, e.msg);
		printf("refused: %s\n", e.msg);
		state_bytes(bad, &after);
		TEST_ASSERT(before.len == after.len && !memcmp(before.data, after.data, before.len),
			    "a refused load changed the VM's state");
		buf_free(&before);
		buf_free(&after);
		vm_destroy(bad);
		bad_payload[2] &= 0x0f;
	}

	/* a TSC rate KVM cannot give: refused while building, before any state is loaded */
	ret = restore_vm(vm, loop, 1, m1.xsave_size, &bad, &e);
	TEST_ASSERT(ret < 0 && strstr(e.msg, "TSC"), "1 kHz TSC: %d %s", ret, e.msg);
	printf("refused: %s\n", e.msg);
	/* another rate: given exactly, or refused naming the TSC */
	ret = restore_vm(vm, loop, m1.tsc_khz / 2 * 3, m1.xsave_size, &bad, &e);
	if (ret == 0) {
		vm_machine_get(bad, &m2);
		TEST_ASSERT_EQ(m2.tsc_khz, m1.tsc_khz / 2 * 3);
		printf("TSC scaled to %u kHz\n", m2.tsc_khz);
		vm_destroy(bad);
	} else {
		TEST_ASSERT(strstr(e.msg, "TSC"), "%s", e.msg);
		printf("refused: %s\n", e.msg);
	}
	/* an XSAVE area this host's vCPUs cannot hold */
	ret = restore_vm(vm, loop, m1.tsc_khz, m1.xsave_size + 4096, &bad, &e);
	TEST_ASSERT(ret < 0 && strstr(e.msg, "XSAVE"), "XSAVE %u: %d %s", m1.xsave_size + 4096,
		    ret, e.msg);
	printf("refused: %s\n", e.msg);

	for (size_t i = 0; i < sv.n; i++) {
		free((void *)sv.secs[i].name);
		free((void *)sv.secs[i].instance);
		free((void *)sv.secs[i].data);
	}
	test_guest_destroy(&g);
	printf("PASS\n");
	return 0;
}
