/*
 * pfh_bytes.h - big-endian loads, the byte order pf_state_export() writes.
 *
 * Explicit byte loads: no alignment needed, same result on any host.
 */
#ifndef PFH_BYTES_H
#define PFH_BYTES_H

#include <stdint.h>

static inline uint16_t
be16(const uint8_t *p)
{
	return (uint16_t)((p[0] << 8) | p[1]);
}

static inline uint32_t
be32(const uint8_t *p)
{
	return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) |
	    ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

static inline uint64_t
be64(const uint8_t *p)
{
	return ((uint64_t)be32(p) << 32) | be32(p + 4);
}

#endif /* PFH_BYTES_H */
