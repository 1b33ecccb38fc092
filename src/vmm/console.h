/* SPDX-License-Identifier: MIT */
/*
 * Guest console output that never blocks the guest. vCPU threads append the bytes the
 * guest transmits to a bounded buffer; a writer thread of its own drains it into the
 * sink (stdout or a file) with ordinary blocking writes, so no file flag is changed on a
 * descriptor the VMM shares with its parent (a terminal, a pipe). A reader that stalls
 * only fills the buffer; from then on new output is counted and dropped, never waited
 * for, so a pause never waits on the console.
 */
#ifndef GODWIT_VMM_CONSOLE_H
#define GODWIT_VMM_CONSOLE_H

#include "base/util.h"

#include <stddef.h>
#include <stdint.h>

#define CONSOLE_BUF_SIZE (64u * 1024)

struct console;

/* fd stays the caller's: console_destroy() does not close it. */
int __must_check console_create(struct console **out, int fd, struct errbuf *e);
/* Queues guest output; never blocks. What does not fit is counted and dropped. Any thread. */
void console_write(struct console *c, const uint8_t *p, size_t n);
/* Bytes dropped so far because the buffer was full (the reader did not keep up). */
uint64_t console_dropped(struct console *c);
/*
 * Writes out what is buffered, waiting at most about a second for a stalled reader,
 * then stops the writer thread and frees everything. NULL is a no-op.
 */
void console_destroy(struct console *c);

#endif
