/* SPDX-License-Identifier: MIT */
/* virtio-blk on virtio-mmio over a raw file: see virtio_blk.c. */
#ifndef GODWIT_DEVICES_VIRTIO_BLK_H
#define GODWIT_DEVICES_VIRTIO_BLK_H

#include "devices/device.h"

#define VIRTIO_BLK_STATE_VERSION 1u
#define VIRTIO_BLK_TYPE "virtio-blk"

extern const struct device_type virtio_blk_type;

#endif
