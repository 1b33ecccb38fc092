/* SPDX-License-Identifier: MIT */
/*
 * The client side of the control socket: one request line out, one response line
 * back. Used by the `godwit status|pause|...` subcommands; knows nothing about JSON.
 */
#ifndef GODWIT_API_CLIENT_H
#define GODWIT_API_CLIENT_H

#include "base/util.h"

/* Longest request line the server accepts, not counting the newline. */
#define API_LINE_MAX (64 * 1024)
/* Longest response line a client accepts, not counting the newline. */
#define API_RESPONSE_MAX (1024 * 1024)

/*
 * Connects to the control socket at path, sends request_line (a newline is added;
 * the line itself must not contain one) and reads one response line within
 * timeout_ms. On success *response_line is a malloc'd NUL-terminated string
 * without the newline.
 */
int __must_check api_client_call(const char *path, const char *request_line,
				 char **response_line, int timeout_ms, struct errbuf *e);

#endif
