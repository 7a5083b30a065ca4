/*
 * Little-endian integers in byte buffers: the one codec for every on-disk and
 * on-wire field of spate (shuffle files, block store, control and transport
 * messages, job records). Each function reads or writes exactly 2, 4 or 8
 * bytes at p, which need not be aligned; the byte order is the same on every
 * host. Compilers turn these into single loads and stores where the target
 * allows.
 */
#ifndef SPATE_COMMON_BYTES_H
#define SPATE_COMMON_BYTES_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

static inline void sp__le_put_u16(unsigned char *p, uint16_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
}

static inline void sp__le_put_u32(unsigned char *p, uint32_t v)
{
    for (unsigned i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static inline void sp__le_put_u64(unsigned char *p, uint64_t v)
{
    for (unsigned i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static inline uint16_t sp__le_get_u16(const unsigned char *p)
{
    return (uint16_t)((unsigned)p[0] | (unsigned)p[1] << 8);
}

static inline uint32_t sp__le_get_u32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint64_t sp__le_get_u64(const unsigned char *p)
{
    return (uint64_t)sp__le_get_u32(p) | (uint64_t)sp__le_get_u32(p + 4) << 32;
}

#ifdef __cplusplus
}
#endif

#endif /* SPATE_COMMON_BYTES_H */
