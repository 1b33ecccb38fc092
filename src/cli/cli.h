/* SPDX-License-Identifier: MIT */
/* Entry points of the godwit subcommands; argv[0] is the subcommand name. */
#ifndef GODWIT_CLI_CLI_H
#define GODWIT_CLI_CLI_H

int cli_run_main(int argc, char **argv);
int cli_snapshot_main(int argc, char **argv);
int cli_inspect_main(int argc, char **argv);
int cli_migrate_main(int argc, char **argv);
int cli_migrate_ctl_main(int argc, char **argv);

#endif
