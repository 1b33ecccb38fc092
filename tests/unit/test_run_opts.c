/* SPDX-License-Identifier: MIT */
/* `godwit run` option parsing and the migration URI parser: accepted forms and one-line errors. */
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

static void expect_error(int ret, const struct errbuf *e, const char *want)
{
	assert_int_equal(ret, -EINVAL);
	if (!strstr(e->msg, want))
		fail_msg("error \"%s\" lacks \"%s\"", e->msg, want);
	assert_null(strchr(e->msg, '\n'));
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

	expect_error(PARSE(&o, &e, "--memory", "lots", "--kernel", "k", "--api-socket", "s"), &e,
		     "--memory lots");
	expect_error(PARSE(&o, &e, "--memory", "1000", "--kernel", "k", "--api-socket", "s"), &e,
		     "--memory 1000");
	expect_error(PARSE(&o, &e, "--memory", "3M", "--kernel", "k", "--api-socket", "s"), &e,
		     "16M to 256G");
	expect_error(PARSE(&o, &e, "--memory", "65M", "--kernel", "k", "--api-socket", "s"), &e,
		     "multiple of 2M");
	expect_error(PARSE(&o, &e, "--memory", "1T", "--kernel", "k", "--api-socket", "s"), &e,
		     "--memory 1T");
	expect_error(PARSE(&o, &e, "--memory", "64M", "--cpus", "65", "--kernel", "k",
			   "--api-socket", "s"), &e, "--cpus 65: must be a number from 1 to 64");
	expect_error(PARSE(&o, &e, "--memory", "64M", "--cpus", "-1", "--kernel", "k",
			   "--api-socket", "s"), &e, "--cpus -1");
	expect_error(PARSE(&o, &e, "--memory", "64M", "--kernel", "k", "--api-socket", "s",
			   "--serial", "tcp"), &e, "--serial tcp");
	expect_error(PARSE(&o, &e, "--memory", "64M", "--kernel", "k", "--api-socket", "s",
			   "--serial", "file:"), &e, "--serial file:");
	expect_error(PARSE(&o, &e, "--memory", "64M", "--kernel", "k"), &e, "--api-socket");
	expect_error(PARSE(&o, &e, "--memory", "64M", "--api-socket", "s"), &e, "--kernel");
	expect_error(PARSE(&o, &e, "--kernel", "k", "--api-socket", "s"), &e, "--memory SIZE");
	expect_error(PARSE(&o, &e, "--memory", "64M", "--kernel", "k", "--api-socket", "s",
			   "--bogus"), &e, "unknown option --bogus");
	expect_error(PARSE(&o, &e, "--memory", "64M", "--kernel", "k", "--api-socket", "s",
			   "extra"), &e, "unexpected argument 'extra'");
	expect_error(PARSE(&o, &e, "--memory", "64M", "--kernel", "k", "--api-socket"), &e,
		     "needs a value");
	expect_error(PARSE(&o, &e, "--restore", "d", "--kernel", "k", "--api-socket", "s"), &e,
		     "conflicts");
	expect_error(PARSE(&o, &e, "--restore", "d", "--memory", "64M", "--api-socket", "s"), &e,
		     "--memory conflicts");
	expect_error(PARSE(&o, &e, "--restore", "d", "--cpus", "2", "--api-socket", "s"), &e,
		     "--cpus conflicts");
	expect_error(PARSE(&o, &e, "--restore", "d", "--initrd", "rd", "--api-socket", "s"), &e,
		     "--initrd conflicts with --restore");
	expect_error(PARSE(&o, &e, "--incoming", "unix:x", "--initrd", "rd", "--api-socket", "s"),
		     &e, "--initrd conflicts with --incoming");
	expect_error(PARSE(&o, &e, "--memory", "64M", "--kernel", "k", "--api-socket", "s",
			   "--initrd", ""), &e, "--initrd: empty path");
	expect_error(PARSE(&o, &e, "--incoming", "tcp:h:1", "--kernel", "k", "--api-socket", "s"),
		     &e, "conflicts");
	expect_error(PARSE(&o, &e, "--incoming", "http://x", "--api-socket", "s"), &e,
		     "tcp:HOST:PORT or unix:PATH");
	expect_error(PARSE(&o, &e, "--memory", "64M", "--kernel", "k", "--api-socket", "s",
			   "--restore-mode", "eager"), &e, "--restore-mode needs --restore");
	expect_error(PARSE(&o, &e, "--restore", "d", "--api-socket", "s", "--restore-mode",
			   "fast"), &e, "--restore-mode fast");
	expect_error(PARSE(&o, &e, "--memory", "64M", "--kernel", "k", "--api-socket", "s",
			   "--paused"), &e, "--paused");
	expect_error(PARSE(&o, &e, "--memory", "64M", "--kernel", "k", "--api-socket", "s",
			   "--dirty-tracking", "log"), &e, "--dirty-tracking log");
	expect_error(PARSE(&o, &e, "--memory", "64M", "--kernel", "k", "--api-socket", "s",
			   "--name", ""), &e, "--name");
	/* the state format's rule: a name it would refuse at snapshot or migration time */
	expect_error(PARSE(&o, &e, "--memory", "64M", "--kernel", "k", "--api-socket", "s",
			   "--name", "caf\xc3\xa9"), &e, "--name: machine name has a byte 0xc3");
	expect_error(PARSE(&o, &e, "--memory", "64M", "--kernel", "k", "--api-socket", "s",
			   "--name", "tab\there"), &e, "byte 0x09");
	expect_error(PARSE(&o, &e, "--memory", "64M", "--kernel", "k", "--api-socket", "s",
			   "--name", "x234567890123456789012345678901234567890123456789012345678901234"),
		     &e, "--name");
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
	expect_error(PARSE(&o, &e, "--memory", "64M", "--kernel", "k", "--api-socket", "s",
			   "--disk", "path=/a,aio=posix"), &e, "aio=posix: use thread or uring");

	expect_error(PARSE(&o, &e, "--memory", "64M", "--kernel", "k", "--api-socket", "s",
			   "--disk", "readonly=on"), &e, "path=FILE is required");
	expect_error(PARSE(&o, &e, "--memory", "64M", "--kernel", "k", "--api-socket", "s",
			   "--disk", "path=/a,readonly=yes"), &e, "readonly=yes");
	expect_error(PARSE(&o, &e, "--memory", "64M", "--kernel", "k", "--api-socket", "s",
			   "--disk", "path=/a,format=qcow2"), &e, "unknown key 'format'");
	expect_error(PARSE(&o, &e, "--memory", "64M", "--kernel", "k", "--api-socket", "s",
			   "--disk", "path=/a,id=a b"), &e, "id 'a b'");
	expect_error(PARSE(&o, &e, "--memory", "64M", "--kernel", "k", "--api-socket", "s",
			   "--disk", "/a.img"), &e, "not KEY=VALUE");
	expect_error(PARSE(&o, &e, "--memory", "64M", "--kernel", "k", "--api-socket", "s",
			   "--disk", "path=/a", "--disk", "path=/b,id=disk0"), &e,
		     "two disks are called disk0");
	expect_error(PARSE(&o, &e, "--memory", "64M", "--kernel", "k", "--api-socket", "s",
			   "--disk", "path=/a", "--disk", "path=/a", "--disk", "path=/a",
			   "--disk", "path=/a", "--disk", "path=/a", "--disk", "path=/a",
			   "--disk", "path=/a", "--disk", "path=/a", "--disk", "path=/a"), &e,
		     "at most 8");
	expect_error(PARSE(&o, &e, "--restore", "d", "--api-socket", "s", "--disk", "path=/a"), &e,
		     "--disk needs --kernel");
	expect_error(PARSE(&o, &e, "--memory", "64M", "--kernel", "k", "--api-socket", "s",
			   "--disk-override", "id=disk0,path=/a"), &e, "needs --restore");
	expect_error(PARSE(&o, &e, "--incoming", "unix:/x", "--api-socket", "s",
			   "--disk-override", "id=disk0"), &e, "id=NAME,path=FILE");
	expect_error(PARSE(&o, &e, "--incoming", "unix:/x", "--api-socket", "s",
			   "--disk-override", "id=d,path=/a", "--disk-override", "id=d,path=/b"), &e,
		     "given twice");
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

	expect_error(PARSE(&o, &e, "--memory", "64M", "--kernel", "k", "--api-socket", "s",
			   "--net", "id=x"), &e, "tap=NAME is required");
	expect_error(PARSE(&o, &e, "--memory", "64M", "--kernel", "k", "--api-socket", "s",
			   "--net", "tap=a,mac=ff:ff:ff:ff:ff:ff"), &e, "unicast");
	expect_error(PARSE(&o, &e, "--memory", "64M", "--kernel", "k", "--api-socket", "s",
			   "--net", "tap=a-very-long-tap-name"), &e, "at most 15");
	expect_error(PARSE(&o, &e, "--memory", "64M", "--kernel", "k", "--api-socket", "s",
			   "--net", "tap=a", "--net", "tap=a"), &e, "tap a is given twice");
	expect_error(PARSE(&o, &e, "--memory", "64M", "--kernel", "k", "--api-socket", "s",
			   "--net", "tap=a", "--net", "tap=b", "--net", "tap=c", "--net", "tap=d",
			   "--net", "tap=e"), &e, "at most 4 NICs");
	expect_error(PARSE(&o, &e, "--memory", "64M", "--kernel", "k", "--api-socket", "s",
			   "--net", "tap=a,id=x", "--disk", "path=/a,id=x"), &e,
		     "a disk and a NIC are both called x");
	expect_error(PARSE(&o, &e, "--memory", "64M", "--kernel", "k", "--api-socket", "s",
			   "--disk", "path=/a", "--disk", "path=/a", "--disk", "path=/a",
			   "--disk", "path=/a", "--disk", "path=/a", "--disk", "path=/a",
			   "--disk", "path=/a", "--net", "tap=a", "--net", "tap=b"), &e,
		     "at most 8 devices in all");
	expect_error(PARSE(&o, &e, "--restore", "d", "--api-socket", "s", "--net", "tap=a"), &e,
		     "--net needs --kernel");
	expect_error(PARSE(&o, &e, "--memory", "64M", "--kernel", "k", "--api-socket", "s",
			   "--net-override", "id=n,tap=a"), &e, "--net-override needs --restore");
	expect_error(PARSE(&o, &e, "--restore", "d", "--api-socket", "s", "--net-override",
			   "id=n,path=/a"), &e, "unknown key 'path' (id, tap)");
	expect_error(PARSE(&o, &e, "--restore", "d", "--api-socket", "s", "--announce",
			   "rounds=x"), &e, "rounds=x");
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
	expect_error(PARSE(&o, &e, "--memory", "64M", "--kernel", "k", "--api-socket", "s",
			   "--tls-dir", "d"), &e, "--tls-dir needs --incoming");
	expect_error(PARSE(&o, &e, "--incoming", "tcp:h:1", "--api-socket", "s", "--tls-dir", "d",
			   "--tls-psk", "p"), &e, "--tls-dir conflicts with --tls-psk");
	expect_error(PARSE(&o, &e, "--incoming", "tcp:h:1", "--api-socket", "s", "--tls-psk", "p",
			   "--insecure"), &e, "--insecure conflicts with --tls-psk");
	expect_error(PARSE(&o, &e, "--incoming", "tcp:h:1", "--api-socket", "s", "--tls-dir", ""),
		     &e, "--tls-dir");
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
