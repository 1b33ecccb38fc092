/* SPDX-License-Identifier: MIT */
/*
 * The migration channel's TLS 1.3 layer (OpenSSL 3): mutual X.509 authentication with
 * QEMU's credential file layout, or an external pre-shared key. Credentials are loaded and
 * checked when a migration or a listener is set up, so mistakes are reported at once; the
 * handshake runs on a connected socket under a deadline and yields a channel
 * (base/channel.h) for the record reader and writer. Kernel TLS is used for sending when
 * the kernel offers it, userspace OpenSSL otherwise.
 */
#ifndef GODWIT_MIGRATION_TLS_H
#define GODWIT_MIGRATION_TLS_H

#include "base/channel.h"
#include "base/util.h"
#include "migration/migrate.h"

#include <stdbool.h>
#include <stdint.h>

struct mig_tls;

/* True if o asks for TLS at all. */
bool mig_tls_wanted(const struct mig_tls_opts *o);
/*
 * Loads and checks the credentials: the files exist, private keys and PSK files are not
 * accessible by group or others, certificate and key match. server: the destination.
 */
int __must_check mig_tls_create(struct mig_tls **tp, const struct mig_tls_opts *o, bool server,
				struct errbuf *e);
void mig_tls_free(struct mig_tls *t);

/*
 * Runs the TLS handshake on connected socket fd, giving up at deadline_ns (monotonic; 0:
 * none here, the caller's watchdog cuts the connection instead).
 * host: the name or IP address the server's certificate must carry (client, X.509 only).
 * On success *ch is a channel over fd (the fd stays the caller's) and info says what was
 * negotiated and who the peer is.
 */
int __must_check mig_tls_handshake(struct mig_tls *t, int fd, const char *host,
				   uint64_t deadline_ns, struct channel **ch,
				   struct mig_tls_info *info, struct errbuf *e);

/* The TLS layer's reason for the last failed read or write on ch, or NULL. */
const char *mig_tls_channel_error(struct channel *ch);

#endif
