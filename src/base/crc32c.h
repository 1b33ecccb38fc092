/* SPDX-License-Identifier: MIT */
/*
 * CRC32C (Castagnoli, reflected polynomial 0x82F63B78), the checksum of every state record
 * and of snapshot memory. Uses the SSE4.2 crc32 instruction when the CPU has it (checked at
 * run time), a slicing-by-8 table otherwise; both give identical results.
 */
#ifndef GODWIT_BASE_CRC32C_H
#define GODWIT_BASE_CRC32C_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * Returns the CRC32C of p[0..len) continuing from crc, the value a previous call returned
 * (0 to start). Initial and final inversion are handled here, so chaining works:
 * crc32c(crc32c(0, a, n), b, m) == crc32c(0, a || b, n + m), and
 * crc32c(0, "123456789", 9) == 0xE3069283.
 */
uint32_t crc32c(uint32_t crc, const void *p, size_t len);

/* The two implementations behind crc32c(), exported so tests can compare them. */
uint32_t crc32c_sw(uint32_t crc, const void *p, size_t len);
/* Only valid when crc32c_hw_available() returns true. */
uint32_t crc32c_hw(uint32_t crc, const void *p, size_t len);
bool crc32c_hw_available(void);

#endif
