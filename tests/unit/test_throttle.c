/* SPDX-License-Identifier: MIT */
/*
 * The throttle's schedule (vm.h): at every level a vCPU's sleep ends before the next kick,
 * so it still runs (100-pct)% of the time, and it never stops for longer than one period.
 * godwit's old sleep, 10 ms * pct/(100-pct) against a kick every 10 ms, outlasted the
 * period from 50% on: the vCPU slept again at its very next exit, and a heartbeat line of
 * 8 bytes took 80 ms to print at 50%; QEMU's schedule (the same sleep, kicked after it)
 * stops the guest for 990 ms at a time at 99%.
 */
#include "vmm/vm.h"

#include <stdint.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

static void test_sleep_within_period(void **state)
{
	(void)state;
	assert_int_equal(vm_throttle_sleep_ns(0), 0);
	for (unsigned pct = 1; pct <= 99; pct++) {
		uint64_t sleep = vm_throttle_sleep_ns(pct);

		/* over before the next kick: the vCPU gets its share every period */
		assert_true(sleep < VM_THROTTLE_PERIOD_NS);
		/* and that share is what was asked for */
		assert_int_equal(sleep * 100, (uint64_t)pct * VM_THROTTLE_PERIOD_NS);
	}
}

static void test_clamped(void **state)
{
	(void)state;
	/* vm_throttle_set() clamps to 99: so does the schedule */
	assert_int_equal(vm_throttle_sleep_ns(100), vm_throttle_sleep_ns(99));
	assert_int_equal(vm_throttle_sleep_ns(250), vm_throttle_sleep_ns(99));
	assert_true(vm_throttle_sleep_ns(99) < VM_THROTTLE_PERIOD_NS);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_sleep_within_period),
		cmocka_unit_test(test_clamped),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
