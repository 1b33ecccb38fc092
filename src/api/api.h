/* SPDX-License-Identifier: MIT */
/*
 * The control socket in the VMM process: a unix stream socket (mode 0600) carrying one
 * JSON object per line. A request is {"cmd": "<name>", ...arguments}; every request
 * gets exactly one response line, {"ok": true, ...} or {"ok": false, "error": "..."},
 * in order. Blank lines are ignored and a trailing \r is accepted.
 *
 *   status [digest: bool]  name, state, memory (bytes), vcpus, uptime_ms, paused_ms, pid
 *   pause                  returns once every vCPU is out of KVM_RUN
 *   resume
 *   stop                   answers, then asks the main loop to stop (godwit run exits 0)
 *
 * A bad request (malformed JSON, not an object, missing or unknown "cmd", an unknown or
 * mistyped argument) gets an error and the connection stays usable. A line longer than
 * API_LINE_MAX gets an error and the connection is closed; beyond API_CLIENTS_MAX
 * clients, a new one is told so and closed. Requests already sent by a client that
 * hangs up still run. Everything here runs on the main (event loop) thread; another
 * thread reaches it through evloop_call().
 */
#ifndef GODWIT_API_API_H
#define GODWIT_API_API_H

#include "base/evloop.h"
#include "base/util.h"

#include <jansson.h>
#include <stddef.h>

/* Connected clients at once; more are told so and closed. */
#define API_CLIENTS_MAX 16

struct api_server;
struct api_client;
struct vm;

/*
 * Listens on path and serves requests for vm on loop. A stale socket file (nobody
 * listening) is replaced; a live one, a non-socket file or a missing directory is
 * refused. path may be NULL: then nothing listens and requests only arrive through
 * api_request_handle() (unit tests).
 */
int __must_check api_server_create(struct api_server **out, struct evloop *loop, const char *path,
				   struct vm *vm, struct errbuf *e);
/*
 * Closes every client and unlinks the socket (if it is still ours). A handler that
 * promised a later reply must have replied, or been cancelled, before this.
 */
void api_server_destroy(struct api_server *s);

/*
 * Runs one request line (without its newline) as if a client had sent it and returns
 * the response line (without newline), to be released with free(). NULL only when out
 * of memory. Commands that need a connected client to reply later are refused.
 */
char *api_request_handle(struct api_server *s, const char *line, size_t len);

/*
 * For command handlers (in api.c) that answer later: they return API_REPLY_LATER and
 * keep the client pointer; this completes the client's outstanding request. fields
 * (may be NULL) is merged after "ok": true and its reference is stolen. The client
 * stops reading requests until this is called; if it disconnected meanwhile, the reply
 * is dropped and the client freed here.
 */
void api_client_reply(struct api_client *c, json_t *fields);
void api_client_reply_error(struct api_client *c, const char *msg);

#endif
