/* SPDX-License-Identifier: MIT */
/* `godwit run` option parsing and the migration URI parser: accepted forms and one-line errors. */
#include "base/util.h"
#include "cli/run_opts.h"
#include "migration/proto.h"

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#define ARGV(...) ((char *[]){ "run", __VA_ARGS__, NULL })
#define ARGC(...) ((int)(sizeof((char *[]){ "run", __VA_ARGS__ }) / sizeof(char *)))
#define PARSE(o, e, ...) run_opts_parse(ARGC(__VA_ARGS__), ARGV(__VA_ARGS__), o, e)

/* The options every boot needs, before the ones a case is about */
#define BOOT "--memory", "64M", "--kernel", "k", "--api-socket", "s"
#define DISK "--disk", "path=/a"

/* Arguments after "run" that must be refused, and a part of the one-line error. */
struct bad_args {
	const char *args[28];
	const char *want;
};

/* `run` as a whole: sizes, counts, required and conflicting options, names */
static const struct bad_args run_errors[] = {
	{ { "--memory", "lots", "--kernel", "k", "--api-socket", "s" }, "--memory lots" },
	{ { "--memory", "1000", "--kernel", "k", "--api-socket", "s" }, "--memory 1000" },
	{ { "--memory", "3M", "--kernel", "k", "--api-socket", "s" }, "16M to 256G" },
	{ { "--memory", "65M", "--kernel", "k", "--api-socket", "s" }, "multiple of 2M" },
	{ { "--memory", "1T", "--kernel", "k", "--api-socket", "s" }, "--memory 1T" },
	{ { "--memory", "64M", "--cpus", "65", "--kernel", "k", "--api-socket", "s" },
	  "--cpus 65: must be a number from 1 to 64" },
	{ { "--memory", "64M", "--cpus", "-1", "--kernel", "k", "--api-socket", "s" },
	  "--cpus -1" },
	{ { BOOT, "--serial", "tcp" }, "--serial tcp" },
	{ { BOOT, "--serial", "file:" }, "--serial file:" },
	{ { "--memory", "64M", "--kernel", "k" }, "--api-socket" },
	{ { "--memory", "64M", "--api-socket", "s" }, "--kernel" },
	{ { "--kernel", "k", "--api-socket", "s" }, "--memory SIZE" },
	{ { BOOT, "--bogus" }, "unknown option --bogus" },
	{ { BOOT, "extra" }, "unexpected argument 'extra'" },
	{ { "--memory", "64M", "--kernel", "k", "--api-socket" }, "needs a value" },
	{ { "--restore", "d", "--kernel", "k", "--api-socket", "s" }, "conflicts" },
	{ { "--restore", "d", "--memory", "64M", "--api-socket", "s" }, "--memory conflicts" },
	{ { "--restore", "d", "--cpus", "2", "--api-socket", "s" }, "--cpus conflicts" },
	{ { "--restore", "d", "--initrd", "rd", "--api-socket", "s" },
	  "--initrd conflicts with --restore" },
	{ { "--incoming", "unix:x", "--initrd", "rd", "--api-socket", "s" },
	  "--initrd conflicts with --incoming" },
	{ { BOOT, "--initrd", "" }, "--initrd: empty path" },
	{ { "--incoming", "tcp:h:1", "--kernel", "k", "--api-socket", "s" }, "conflicts" },
	{ { "--incoming", "http://x", "--api-socket", "s" }, "tcp:HOST:PORT or unix:PATH" },
	{ { BOOT, "--restore-mode", "eager" }, "--restore-mode needs --restore" },
	{ { "--restore", "d", "--api-socket", "s", "--restore-mode", "fast" },
	  "--restore-mode fast" },
	{ { BOOT, "--paused" }, "--paused" },
	{ { BOOT, "--dirty-tracking", "log" }, "--dirty-tracking log" },
	{ { BOOT, "--name", "" }, "--name" },
	/* the state format's rule: a name it would refuse at snapshot or migration time */
	{ { BOOT, "--name", "caf\xc3\xa9" }, "--name: machine name has a byte 0xc3" },
	{ { BOOT, "--name", "tab\there" }, "byte 0x09" },
	{ { BOOT, "--name", "x234567890123456789012345678901234567890123456789012345678901234" },
	  "--name" },
};

/* --disk and --disk-override */
static const struct bad_args disk_errors[] = {
	{ { BOOT, "--disk", "readonly=on" }, "path=FILE is required" },
	{ { BOOT, "--disk", "path=/a,readonly=yes" }, "readonly=yes" },
	{ { BOOT, "--disk", "path=/a,format=qcow2" }, "unknown key 'format'" },
	{ { BOOT, "--disk", "path=/a,id=a b" }, "id 'a b'" },
	{ { BOOT, "--disk", "/a.img" }, "not KEY=VALUE" },
	{ { BOOT, "--disk", "path=/a,aio=posix" }, "aio=posix: use thread or uring" },
	{ { BOOT, "--disk", "path=/a", "--disk", "path=/b,id=disk0" },
	  "two disks are called disk0" },
	{ { BOOT, DISK, DISK, DISK, DISK, DISK, DISK, DISK, DISK, DISK }, "at most 8" },
	{ { "--restore", "d", "--api-socket", "s", "--disk", "path=/a" }, "--disk needs --kernel" },
	{ { BOOT, "--disk-override", "id=disk0,path=/a" }, "needs --restore" },
	{ { "--incoming", "unix:/x", "--api-socket", "s", "--disk-override", "id=disk0" },
	  "id=NAME,path=FILE" },
	{ { "--incoming", "unix:/x", "--api-socket", "s", "--disk-override", "id=d,path=/a",
	    "--disk-override", "id=d,path=/b" }, "given twice" },
};

/* --net, --net-override and --announce */
static const struct bad_args net_errors[] = {
	{ { BOOT, "--net", "id=x" }, "tap=NAME is required" },
	{ { BOOT, "--net", "tap=a,mac=ff:ff:ff:ff:ff:ff" }, "unicast" },
	{ { BOOT, "--net", "tap=a-very-long-tap-name" }, "at most 15" },
	{ { BOOT, "--net", "tap=a", "--net", "tap=a" }, "tap a is given twice" },
	{ { BOOT, "--net", "tap=a", "--net", "tap=b", "--net", "tap=c", "--net", "tap=d", "--net",
	    "tap=e" }, "at most 4 NICs" },
	{ { BOOT, "--net", "tap=a,id=x", "--disk", "path=/a,id=x" },
	  "a disk and a NIC are both called x" },
	{ { BOOT, DISK, DISK, DISK, DISK, DISK, DISK, DISK, "--net", "tap=a", "--net", "tap=b" },
	  "at most 8 devices in all" },
	{ { "--restore", "d", "--api-socket", "s", "--net", "tap=a" }, "--net needs --kernel" },
	{ { BOOT, "--net-override", "id=n,tap=a" }, "--net-override needs --restore" },
	{ { "--restore", "d", "--api-socket", "s", "--net-override", "id=n,path=/a" },
	  "unknown key 'path' (id, tap)" },
	{ { "--restore", "d", "--api-socket", "s", "--announce", "rounds=x" }, "rounds=x" },
};

/* TLS options */
static const struct bad_args tls_errors[] = {
	{ { BOOT, "--tls-dir", "d" }, "--tls-dir needs --incoming" },
	{ { "--incoming", "tcp:h:1", "--api-socket", "s", "--tls-dir", "d", "--tls-psk", "p" },
	  "--tls-dir conflicts with --tls-psk" },
	{ { "--incoming", "tcp:h:1", "--api-socket", "s", "--tls-psk", "p", "--insecure" },
	  "--insecure conflicts with --tls-psk" },
	{ { "--incoming", "tcp:h:1", "--api-socket", "s", "--tls-dir", "" }, "--tls-dir" },
};

/* Each case is refused with -EINVAL and one line naming what was wrong. */
static void expect_errors(const struct bad_args *cases, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		char *argv[ARRAY_SIZE(cases[i].args) + 2] = { "run" };
		struct run_opts o;
		struct errbuf e;
		int argc = 1, ret;

		/* getopt may permute argv: each case gets its own copy */
		for (size_t k = 0; k < ARRAY_SIZE(cases[i].args) && cases[i].args[k]; k++)
			argv[argc++] = (char *)cases[i].args[k];
		ret = run_opts_parse(argc, argv, &o, &e);
		if (ret != -EINVAL || !strstr(e.msg, cases[i].want) || strchr(e.msg, '\n'))
			fail_msg("case %zu (run %s %s ...): %d \"%s\", expected -EINVAL and \"%s\"",
				 i, cases[i].args[0], cases[i].args[1] ? cases[i].args[1] : "", ret,
				 e.msg, cases[i].want);
	}
}

static void test_boot_ok(void **state)
{
	struct run_opts o;
	struct errbuf e;

	assert_int_equal(PARSE(&o, &e, "--memory", "1G", "--cpus", "8", "--kernel", "k",
			       "--cmdline", "workload=idle", "--serial", "file:/tmp/x", "--api-socket",
			       "s", "--name", "vm1", "--dirty-tracking", "ring", "--initrd", "rd"), 0);
	assert_string_equal(o.initrd, "rd");
	assert_int_equal(o.memory, 1ull << 30);
	assert_int_equal(o.cpus, 8);
	assert_string_equal(o.kernel, "k");
	assert_string_equal(o.cmdline, "workload=idle");
	assert_int_equal(o.serial, RUN_SERIAL_FILE);
	assert_string_equal(o.serial_path, "/tmp/x");
	assert_string_equal(o.name, "vm1");
	assert_true(o.dirty_ring);

	assert_int_equal(PARSE(&o, &e, "--memory", "64M", "--cpus", "64", "--kernel", "k",
			       "--api-socket", "s"), 0);
	assert_int_equal(o.cpus, 64);
	assert_int_equal(PARSE(&o, &e, "--memory", "64M", "--kernel", "k", "--api-socket", "s"), 0);
	assert_int_equal(o.cpus, 1);
	assert_null(o.initrd);
	assert_int_equal(o.serial, RUN_SERIAL_STDIO);
	assert_false(o.dirty_ring);
	assert_int_equal(PARSE(&o, &e, "--memory", "8G", "--kernel", "k", "--api-socket", "s",
			       "--serial", "none"), 0);
	assert_int_equal(o.serial, RUN_SERIAL_NONE);
}

static void test_restore_incoming_ok(void **state)
{
	struct run_opts o;
	struct errbuf e;

	assert_int_equal(PARSE(&o, &e, "--restore", "d", "--api-socket", "s", "--paused",
			       "--restore-mode", "eager"), 0);
	assert_string_equal(o.restore, "d");
	assert_true(o.paused);
	assert_true(o.restore_eager);
	assert_int_equal(PARSE(&o, &e, "--incoming", "tcp:10.0.0.1:4444", "--api-socket", "s"), 0);
	assert_string_equal(o.incoming, "tcp:10.0.0.1:4444");
	assert_int_equal(PARSE(&o, &e, "--incoming", "unix:/x", "--api-socket", "s", "--paused"), 0);
	assert_false(o.memory_set);
	/* a destination may reserve its RAM ahead of the move */
	assert_int_equal(PARSE(&o, &e, "--incoming", "unix:/x", "--memory", "200G",
			       "--api-socket", "s"), 0);
	assert_true(o.memory_set);
	assert_int_equal(o.memory, 200 * GiB);
}

static void test_errors(void **state)
{
	struct run_opts o;
	struct errbuf e;

	expect_errors(run_errors, ARRAY_SIZE(run_errors));
	assert_int_equal(PARSE(&o, &e, "--memory", "64M", "--kernel", "k", "--api-socket", "s",
			       "--name", "web 1 (blue)"), 0);
}

static void test_disks(void **state)
{
	struct run_opts o;
	struct errbuf e;

	(void)state;
	assert_int_equal(PARSE(&o, &e, "--memory", "64M", "--kernel", "k", "--api-socket", "s",
			       "--disk", "path=/a.img", "--disk", "id=data,path=/b.img,readonly=on",
			       "--disk", "path=/c.img,readonly=off"), 0);
	assert_int_equal(o.ndisks, 3);
	assert_string_equal(o.disks[0].type, "virtio-blk");
	assert_string_equal(o.disks[0].id, "disk0");
	assert_string_equal(o.disks[0].path, "/a.img");
	assert_false(o.disks[0].readonly);
	assert_string_equal(o.disks[1].id, "data");
	assert_string_equal(o.disks[1].path, "/b.img");
	assert_true(o.disks[1].readonly);
	assert_string_equal(o.disks[2].id, "disk2");
	assert_int_equal(PARSE(&o, &e, "--restore", "d", "--api-socket", "s", "--disk-override",
			       "id=disk0,path=/x.img", "--disk-override", "path=/y.img,id=data"), 0);
	assert_int_equal(o.noverrides, 2);
	assert_string_equal(o.overrides[0].id, "disk0");
	assert_string_equal(o.overrides[0].path, "/x.img");
	assert_string_equal(o.overrides[1].id, "data");
	assert_string_equal(o.overrides[1].path, "/y.img");
	/* aio: per disk, and on restore or incoming without moving the file */
	assert_int_equal(PARSE(&o, &e, "--memory", "64M", "--kernel", "k", "--api-socket", "s",
			       "--disk", "path=/a.img,aio=uring", "--disk", "path=/b.img"), 0);
	assert_true(o.disks[0].aio == DEV_AIO_URING && o.disks[1].aio == DEV_AIO_DEFAULT);
	assert_int_equal(PARSE(&o, &e, "--incoming", "unix:/x", "--api-socket", "s",
			       "--disk-override", "id=disk0,aio=thread"), 0);
	assert_true(o.overrides[0].aio == DEV_AIO_THREAD && !o.overrides[0].path);

	expect_errors(disk_errors, ARRAY_SIZE(disk_errors));
}

static void test_nets(void **state)
{
	struct run_opts o;
	struct errbuf e;

	(void)state;
	assert_int_equal(PARSE(&o, &e, "--memory", "64M", "--kernel", "k", "--api-socket", "s",
			       "--disk", "path=/a.img", "--net", "tap=tap0",
			       "--net", "id=up,tap=tap1,mac=52:54:00:aa:bb:cc"), 0);
	assert_int_equal(o.nnets, 2);
	assert_string_equal(o.nets[0].type, "virtio-net");
	assert_string_equal(o.nets[0].id, "net0");
	assert_string_equal(o.nets[0].path, "tap0");
	assert_false(o.nets[0].mac_set);
	assert_string_equal(o.nets[1].id, "up");
	assert_true(o.nets[1].mac_set);
	assert_int_equal(o.nets[1].mac[5], 0xcc);
	/* what the VM builds: disks, then NICs */
	assert_int_equal(o.ndevices, 3);
	assert_string_equal(o.devices[0].type, "virtio-blk");
	assert_string_equal(o.devices[2].id, "up");
	assert_int_equal(o.announce.rounds, 5);
	assert_int_equal(PARSE(&o, &e, "--incoming", "unix:/x", "--api-socket", "s",
			       "--net-override", "id=net0,tap=tapb", "--disk-override",
			       "id=disk0,path=/b", "--announce", "rounds=2,initial=10"), 0);
	assert_int_equal(o.noverrides, 2);
	assert_string_equal(o.overrides[0].type, "virtio-net");
	assert_string_equal(o.overrides[0].path, "tapb");
	assert_string_equal(o.overrides[1].type, "virtio-blk");
	assert_int_equal(o.announce.rounds, 2);
	assert_int_equal(o.announce.initial_ms, 10);

	expect_errors(net_errors, ARRAY_SIZE(net_errors));
}

static void test_uri(void **state)
{
	struct mig_uri u;
	struct errbuf e;

	assert_int_equal(mig_uri_parse("tcp:10.1.2.3:4444", &u, &e), 0);
	assert_int_equal(u.kind, MIG_URI_TCP);
	assert_string_equal(u.host, "10.1.2.3");
	assert_string_equal(u.port, "4444");
	assert_int_equal(mig_uri_parse("tcp:[::1]:80", &u, &e), 0);
	assert_string_equal(u.host, "::1");
	assert_int_equal(mig_uri_parse("unix:/run/x.sock", &u, &e), 0);
	assert_int_equal(u.kind, MIG_URI_UNIX);
	assert_string_equal(u.path, "/run/x.sock");
	assert_int_equal(mig_uri_parse("tcp:host:0", &u, &e), -EINVAL);
	assert_non_null(strstr(e.msg, "port"));
	assert_int_equal(mig_uri_parse("tcp:host:70000", &u, &e), -EINVAL);
	assert_int_equal(mig_uri_parse("tcp:host", &u, &e), -EINVAL);
	assert_int_equal(mig_uri_parse("tcp::4444", &u, &e), -EINVAL);
	assert_int_equal(mig_uri_parse("unix:", &u, &e), -EINVAL);
	assert_int_equal(mig_uri_parse("ftp:x", &u, &e), -EINVAL);
	assert_non_null(strstr(e.msg, "tcp:HOST:PORT or unix:PATH"));
}

/* TLS options belong to --incoming, exclude each other, and --insecure excludes both. */
static void test_tls_opts(void **state)
{
	struct run_opts o;
	struct errbuf e;

	assert_int_equal(PARSE(&o, &e, "--incoming", "tcp:10.0.0.1:1", "--api-socket", "s",
			       "--tls-dir", "/etc/pki/godwit"), 0);
	assert_string_equal(o.tls_dir, "/etc/pki/godwit");
	assert_int_equal(PARSE(&o, &e, "--incoming", "tcp:10.0.0.1:1", "--api-socket", "s",
			       "--tls-psk", "keys.psk"), 0);
	assert_string_equal(o.tls_psk, "keys.psk");
	assert_int_equal(PARSE(&o, &e, "--incoming", "tcp:10.0.0.1:1", "--api-socket", "s",
			       "--insecure"), 0);
	assert_true(o.insecure);
	expect_errors(tls_errors, ARRAY_SIZE(tls_errors));
}

/* Only addresses that are all loopback count as loopback. */
static void test_uri_loopback(void **state)
{
	struct mig_uri u;
	struct errbuf e;

	assert_int_equal(mig_uri_parse("tcp:127.0.0.1:4444", &u, &e), 0);
	assert_true(mig_uri_is_loopback(&u));
	assert_int_equal(mig_uri_parse("tcp:127.9.9.9:4444", &u, &e), 0);
	assert_true(mig_uri_is_loopback(&u));
	assert_int_equal(mig_uri_parse("tcp:[::1]:4444", &u, &e), 0);
	assert_true(mig_uri_is_loopback(&u));
	assert_int_equal(mig_uri_parse("tcp:0.0.0.0:4444", &u, &e), 0);
	assert_false(mig_uri_is_loopback(&u));
	assert_int_equal(mig_uri_parse("tcp:10.1.2.3:4444", &u, &e), 0);
	assert_false(mig_uri_is_loopback(&u));
	assert_int_equal(mig_uri_parse("unix:/x", &u, &e), 0);
	assert_false(mig_uri_is_loopback(&u));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_boot_ok),
		cmocka_unit_test(test_restore_incoming_ok),
		cmocka_unit_test(test_errors),
		cmocka_unit_test(test_disks),
		cmocka_unit_test(test_nets),
		cmocka_unit_test(test_uri),
		cmocka_unit_test(test_tls_opts),
		cmocka_unit_test(test_uri_loopback),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
