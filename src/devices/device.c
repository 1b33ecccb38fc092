/* SPDX-License-Identifier: MIT */
/* The device model's shared helpers: guest-memory copies and the table of device types. */
#include "devices/device.h"
#include "devices/virtio_blk.h"
#include "devices/virtio_net.h"

#include <errno.h>
#include <string.h>

int dev_mem_read(const struct dev_mem *m, uint64_t gpa, void *p, size_t len)
{
	const void *src = m->translate(m->opaque, gpa, len);

	if (!src)
		return -EFAULT;
	memcpy(p, src, len);
	return 0;
}

int dev_mem_write(const struct dev_mem *m, uint64_t gpa, const void *p, size_t len)
{
	void *dst = m->translate(m->opaque, gpa, len);

	if (!dst)
		return -EFAULT;
	memcpy(dst, p, len);
	m->mark_dirty(m->opaque, gpa, len);
	return 0;
}

static const struct device_type *const device_types[] = {
	&virtio_blk_type,
	&virtio_net_type,
};

const struct device_type *device_type_find(const char *name)
{
	for (size_t i = 0; i < ARRAY_SIZE(device_types); i++)
		if (!strcmp(device_types[i]->name, name))
			return device_types[i];
	return NULL;
}

bool device_id_valid(const char *id)
{
	size_t n = strlen(id);

	if (n < 1 || n > DEV_ID_MAX)
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = id[i];

		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '-' || c == '_'))
			return false;
	}
	return true;
}
