/* SPDX-License-Identifier: MIT */
/* godwit: a VMM for moving running guests. Dispatches to the subcommands. */
#include "cli/cli.h"
#include "cli/ctl.h"

#include <stdio.h>
#include <string.h>

static void main_usage(FILE *out)
{
	fputs("usage: godwit COMMAND [OPTIONS]\n"
	      "commands:\n"
	      "  run        boot a guest (or restore one, or wait for a migration)\n"
	      "  status     print the VM's state as JSON\n"
	      "  pause      pause every vCPU\n"
	      "  resume     resume every vCPU\n"
	      "  stop       stop the VM; `godwit run` exits 0\n"
	      "  snapshot   write the VM's complete state to a directory\n"
	      "  inspect    print a snapshot or a captured migration stream\n"
	      "  migrate    move the running guest to another godwit (live or warm)\n"
	      "  migrate-status  print the migration's state as JSON\n"
	      "  migrate-cancel  cancel the outgoing migration; the guest keeps running\n"
	      "run `godwit COMMAND --help` for a command's options\n", out);
}

int main(int argc, char **argv)
{
	static const struct {
		const char *name;
		int (*fn)(int argc, char **argv);
	} cmds[] = {
		{ "run", cli_run_main },
		{ "status", cli_ctl_main },
		{ "pause", cli_ctl_main },
		{ "resume", cli_ctl_main },
		{ "stop", cli_ctl_main },
		{ "snapshot", cli_snapshot_main },
		{ "inspect", cli_inspect_main },
		{ "migrate", cli_migrate_main },
		{ "migrate-status", cli_migrate_ctl_main },
		{ "migrate-cancel", cli_migrate_ctl_main },
	};

	if (argc < 2) {
		main_usage(stderr);
		return 2;
	}
	if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "help")) {
		main_usage(stdout);
		return 0;
	}
	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
		if (!strcmp(argv[1], cmds[i].name))
			return cmds[i].fn(argc - 1, argv + 1);
	fprintf(stderr, "godwit: unknown command '%s' (see godwit --help)\n", argv[1]);
	return 2;
}
