/* SPDX-License-Identifier: MIT */
/*
 * Guest console output that never blocks the guest. A vCPU thread writes the bytes the
 * guest transmits straight to a pipe, socket or terminal that poll() says can take them
 * and nothing is queued; otherwise (a regular file, a busy sink) they go to a bounded
 * buffer that a writer thread of its own drains with ordinary blocking writes, so no file
 * flag is changed on a descriptor the VMM shares with its parent (a terminal, a pipe). A
 * reader that stalls only fills the buffer; from then on new output is counted and
 * dropped, never waited for, so a pause never waits on the console.
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
/*
 * Writes guest output at once if the sink can take it, else queues it; never blocks. What
 * does not fit is counted and dropped. Any thread.
 */
void console_write(struct console *c, const uint8_t *p, size_t n);
/* Bytes dropped so far because the buffer was full (the reader did not keep up). */
uint64_t console_dropped(struct console *c);
/*
 * Writes out what is buffered, waiting at most about a second for a stalled reader,
 * then stops the writer thread and frees everything. NULL is a no-op.
 */
void console_destroy(struct console *c);

#endif
