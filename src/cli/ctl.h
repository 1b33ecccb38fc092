/* SPDX-License-Identifier: MIT */
/* The control-socket client subcommands: godwit status|pause|resume|stop. */
#ifndef GODWIT_CLI_CTL_H
#define GODWIT_CLI_CTL_H

/*
 * argv[0] is the subcommand. Returns the process exit code: 0 done, 1 the VMM
 * answered with an error or could not be reached, 2 bad usage.
 */
int cli_ctl_main(int argc, char **argv);

#endif
