/* SPDX-License-Identifier: MIT */
/* `godwit run`: build the VM, open the control socket, run the event loop until stopped. */
#include "cli/cli.h"
#include "api/api.h"
#include "base/log.h"
#include "cli/run_opts.h"
#include "migration/migrate.h"
#include "migration/snapshot.h"
#include "vmm/vm.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>

static void run_signal_cb(struct evloop *loop, int fd, uint32_t events, void *opaque)
{
	struct signalfd_siginfo si;

	if (read(fd, &si, sizeof(si)) != sizeof(si))
		return;
	log_info("signal %u: stopping the VM", si.ssi_signo);
	vm_stop_request(opaque);
}

int cli_run_main(int argc, char **argv)
{
	struct vm_config cfg = { 0 };
	struct api_server *api = NULL;
	struct evloop *loop = NULL;
	struct run_opts o;
	struct vm *vm = NULL;
	struct errbuf e = { { 0 } };
	sigset_t sigs;
	int sfd = -1, ret;

	if (run_opts_parse(argc, argv, &o, &e) < 0) {
		fprintf(stderr, "godwit run: %s\n", e.msg);
		return 2;
	}
	if (o.help) {
		run_opts_usage(stdout);
		return 0;
	}

	/* SIGINT/SIGTERM are read through a signalfd by the loop; vCPU threads block them */
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	signal(SIGPIPE, SIG_IGN);

	if (evloop_create(&loop) < 0) {
		fprintf(stderr, "godwit run: out of memory\n");
		return 1;
	}
	if (o.name)
		snprintf(cfg.name, sizeof(cfg.name), "%s", o.name);
	else
		snprintf(cfg.name, sizeof(cfg.name), "godwit-%d", (int)getpid());
	cfg.memory = o.memory;
	cfg.vcpus = o.cpus;
	cfg.kernel = o.kernel;
	cfg.cmdline = o.cmdline;
	cfg.initrd = o.initrd;
	cfg.serial = o.serial == RUN_SERIAL_FILE ? VM_SERIAL_FILE :
		     o.serial == RUN_SERIAL_NONE ? VM_SERIAL_NONE : VM_SERIAL_STDIO;
	cfg.serial_path = o.serial_path;
	/* tests point this elsewhere to check the error for a missing /dev/kvm */
	cfg.kvm_path = getenv("GODWIT_KVM_DEVICE");
	cfg.dirty = o.dirty_ring ? VM_DIRTY_RING : VM_DIRTY_BITMAP;
	cfg.devices = o.devices;
	cfg.ndevices = o.ndevices;
	/* before any NIC is built: how they announce a guest that moved here */
	virtio_net_announce_set(&o.announce);

	if (o.restore) {
		struct vm_restore_opts ro = {
			.name = o.name,
			.eager = o.restore_eager,
			.serial = cfg.serial,
			.serial_path = cfg.serial_path,
			.kvm_path = cfg.kvm_path,
			.dirty = cfg.dirty,
			.overrides = o.overrides,
			.noverrides = o.noverrides,
		};
		uint64_t t0 = time_mono_ns();

		ret = vm_snapshot_restore(&vm, loop, o.restore, &ro, &e);
		if (ret < 0) {
			err_prefix(&e, ret, "restore %s", o.restore);
			goto err;
		}
		log_info("restored %s (%s) in %.1f ms", o.restore, o.restore_eager ? "eager" : "lazy",
			 (double)(time_mono_ns() - t0) / 1e6);
	} else if (o.incoming) {
		ret = vm_incoming_create(&vm, loop, cfg.name, o.memory_set ? o.memory : 0,
					 cfg.kvm_path, &e);
		if (ret < 0)
			goto err;
	} else {
		ret = vm_create(&vm, loop, &cfg, &e);
		if (ret < 0)
			goto err;
	}
	if (o.incoming) {
		/* listen before the control socket appears, so its presence means ready */
		struct mig_incoming_opts io = {
			.serial = cfg.serial,
			.serial_path = cfg.serial_path,
			.kvm_path = cfg.kvm_path,
			.paused = o.paused,
			.dirty = cfg.dirty,
			.overrides = o.overrides,
			.noverrides = o.noverrides,
			.insecure = o.insecure,
		};

		snprintf(io.tls.dir, sizeof(io.tls.dir), "%s", o.tls_dir ? o.tls_dir : "");
		snprintf(io.tls.psk, sizeof(io.tls.psk), "%s", o.tls_psk ? o.tls_psk : "");
		ret = migration_incoming_start(vm, loop, o.incoming, &io, &e);
		if (ret < 0)
			goto err;
	}
	ret = api_server_create(&api, loop, o.api_socket, vm, &e);
	if (ret < 0)
		goto err;
	sfd = signalfd(-1, &sigs, SFD_CLOEXEC | SFD_NONBLOCK);
	if (sfd < 0 || evloop_fd_add(loop, sfd, EPOLLIN, run_signal_cb, vm) < 0) {
		ret = err_set(&e, -errno, "signalfd: %s", strerror(errno));
		goto err;
	}
	/* an incoming VM starts when its migration commits */
	if (o.restore && o.paused) {
		vm_start_paused(vm);
	} else if (!o.incoming) {
		ret = vm_start(vm, &e);
		if (ret < 0)
			goto err;
	}
	ret = evloop_run(loop);
	if (ret < 0)
		log_err("event loop: %s", strerror(-ret));
	migration_shutdown();
	ret = vm_exit_code(vm);
	api_server_destroy(api);
	vm_destroy(vm);
	close(sfd);
	evloop_destroy(loop);
	return ret;

err:
	migration_shutdown();
	fprintf(stderr, "godwit run: %s\n", e.msg);
	if (api)
		api_server_destroy(api);
	vm_destroy(vm);
	if (sfd >= 0)
		close(sfd);
	evloop_destroy(loop);
	return 1;
}
