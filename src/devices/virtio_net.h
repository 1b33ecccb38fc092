/* SPDX-License-Identifier: MIT */
/* virtio-net on virtio-mmio over a tap device: see virtio_net.c. */
#ifndef GODWIT_DEVICES_VIRTIO_NET_H
#define GODWIT_DEVICES_VIRTIO_NET_H

#include "devices/device.h"

#define VIRTIO_NET_STATE_VERSION 1u
#define VIRTIO_NET_TYPE "virtio-net"
#define VIRTIO_NET_MAX 4u /* NICs per VM */

extern const struct device_type virtio_net_type;

/*
 * How the host announces a guest that starts on a new host (after an incoming migration or
 * a restore): `rounds` RARP frames per NIC, the first `initial_ms` after the guest starts,
 * each later one `step_ms` further apart than the one before, no gap above `max_ms`.
 * rounds 0: none. Process-wide; set before devices are built.
 */
struct virtio_net_announce {
	unsigned rounds;
	unsigned initial_ms, step_ms, max_ms;
};

#define VIRTIO_NET_ANNOUNCE_DEFAULT { .rounds = 5, .initial_ms = 50, .step_ms = 100, \
				      .max_ms = 550 }

void virtio_net_announce_set(const struct virtio_net_announce *a);
/* Parses "rounds=N,initial=MS,step=MS,max=MS" (any subset) over the defaults. */
int __must_check virtio_net_announce_parse(const char *arg, struct virtio_net_announce *a,
					   struct errbuf *e);

/* A MAC "aa:bb:cc:dd:ee:ff" (unicast, not all zero) into mac; -EINVAL otherwise. */
int __must_check virtio_net_mac_parse(const char *s, uint8_t mac[6]);

/*
 * Builds the device on an already open frame fd that carries a 12-byte virtio_net_hdr
 * before each frame, as a tap with IFF_VNET_HDR does (tests use a SOCK_SEQPACKET pair).
 * Takes the fd. create() opens spec->path as a tap and calls this.
 */
int __must_check virtio_net_create_fd(const struct device_spec *spec,
				      const struct device_env *env, int fd, unsigned mtu,
				      struct device_info *out, struct errbuf *e);

#endif
