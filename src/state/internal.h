/* SPDX-License-Identifier: MIT */
/* Helpers shared by the state/ files only; not part of the layer's interface. */
#ifndef GODWIT_STATE_INTERNAL_H
#define GODWIT_STATE_INTERNAL_H

#include "state/snapshot.h"

#include <stdio.h>

/*
 * Reads all of dir/name (dfd open on dir) into a malloc'ed buffer, refusing anything but a
 * regular file of at most max bytes. -ENOENT is returned without a message.
 */
int __must_check state_file_read_at(int dfd, const char *dir, const char *name, uint64_t max,
				    uint8_t **out, size_t *len, struct errbuf *e);
/* The memory file's size must be the one the index gives. */
int __must_check snapshot_memory_check_size(int fd, const struct snapshot_memory *m,
					    struct errbuf *e);
/* snapshot_memory_verify() on an fd and a decoded index; *problems counts what was found. */
int __must_check snapshot_memory_verify_fd(int fd, const struct snapshot_memory *m, FILE *report,
					   uint64_t *problems, struct errbuf *e);

#endif
