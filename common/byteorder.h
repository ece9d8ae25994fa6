/* SPDX-License-Identifier: BSD-3-Clause */
/* Big-endian field access for on-disk structures. */
#ifndef QC_BYTEORDER_H
#define QC_BYTEORDER_H

#include <endian.h>
#include <stdint.h>
#include <string.h>

static inline uint16_t
get_be16 (const void *p)
{
  uint16_t v;
  memcpy (&v, p, sizeof v);
  return be16toh (v);
}

static inline uint32_t
get_be32 (const void *p)
{
  uint32_t v;
  memcpy (&v, p, sizeof v);
  return be32toh (v);
}

static inline uint64_t
get_be64 (const void *p)
{
  uint64_t v;
  memcpy (&v, p, sizeof v);
  return be64toh (v);
}

static inline void
put_be16 (void *p, uint16_t v)
{
  v = htobe16 (v);
  memcpy (p, &v, sizeof v);
}

static inline void
put_be32 (void *p, uint32_t v)
{
  v = htobe32 (v);
  memcpy (p, &v, sizeof v);
}

static inline void
put_be64 (void *p, uint64_t v)
{
  v = htobe64 (v);
  memcpy (p, &v, sizeof v);
}

#endif /* QC_BYTEORDER_H */
