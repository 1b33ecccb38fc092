/* SPDX-License-Identifier: MIT */
/*
 * `godwit inspect`: prints a snapshot directory or a captured stream for a human: the header,
 * a config summary, one line per record (sections by name, instance, version, size and CRC
 * status; runs of PAGES records folded into one line) and, for snapshots, memory statistics
 * and a verification of the memory file. Problems are flagged in place and the walk goes on
 * wherever the framing still allows it.
 *
 * Each returns 0 if nothing was wrong, else a negative errno with e naming the number of
 * problems and the first one.
 */
#ifndef GODWIT_STATE_INSPECT_H
#define GODWIT_STATE_INSPECT_H

#include "base/util.h"

#include <stdio.h>

int __must_check state_inspect_dir(const char *dir, FILE *out, struct errbuf *e);
int __must_check state_inspect_stream(int fd, FILE *out, struct errbuf *e);
int __must_check state_inspect_buf(const void *p, size_t len, FILE *out, struct errbuf *e);
/* A directory is inspected as a snapshot, anything else as a captured stream. */
int __must_check state_inspect_path(const char *path, FILE *out, struct errbuf *e);

#endif
