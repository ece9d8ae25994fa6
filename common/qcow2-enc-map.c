/* SPDX-License-Identifier: BSD-3-Clause */
/* A bit per guest cluster with a rank index, for the encoder: see
 * qcow2-enc.h.  The index holds the number of set bits before every
 * block of 8 words (512 bits), so rank is one lookup and at most 8
 * popcounts, and select a binary search over the index: 1 TiB of 64 KiB
 * clusters is 2 MiB of bits and 256 KiB of index.
 */
#include <config.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "qc-error.h"
#include "qcow2-enc.h"

#define BLOCK_WORDS 8

int
qc_enc_map_init (struct qc_enc_map *m, uint64_t nbits)
{
  uint64_t nwords = (nbits + 63) / 64;

  memset (m, 0, sizeof *m);
  m->nbits = nbits;
  m->words = calloc (nwords ? nwords : 1, sizeof *m->words);
  m->rank = calloc (nwords / BLOCK_WORDS + 2, sizeof *m->rank);
  if (!m->words || !m->rank) {
    qc_error ("cannot allocate the cluster map (%llu clusters): %m",
              (unsigned long long) nbits);
    qc_enc_map_free (m);
    errno = ENOMEM;
    return -1;
  }
  return 0;
}

void
qc_enc_map_free (struct qc_enc_map *m)
{
  free (m->words);
  free (m->rank);
  memset (m, 0, sizeof *m);
}

void
qc_enc_map_set_range (struct qc_enc_map *m, uint64_t from, uint64_t to)
{
  if (to > m->nbits)
    to = m->nbits;
  while (from < to) {
    uint64_t w = from / 64, bit = from % 64;
    uint64_t n = to - from < 64 - bit ? to - from : 64 - bit;
    uint64_t mask = (n == 64 ? ~0ULL : ((1ULL << n) - 1)) << bit;

    __atomic_fetch_or (&m->words[w], mask, __ATOMIC_RELAXED);
    from += n;
  }
}

void
qc_enc_map_clear (struct qc_enc_map *m, uint64_t i)
{
  __atomic_fetch_and (&m->words[i / 64], ~(1ULL << (i % 64)),
                      __ATOMIC_RELAXED);
}

void
qc_enc_map_finish (struct qc_enc_map *m)
{
  uint64_t nwords = (m->nbits + 63) / 64, w, n = 0;

  if (!m->words)
    return;
  /* Bits past nbits were never set: set_range clips. */
  for (w = 0; w < nwords; w++) {
    if (w % BLOCK_WORDS == 0)
      m->rank[w / BLOCK_WORDS] = n;
    n += __builtin_popcountll (m->words[w]);
  }
  m->rank[(nwords + BLOCK_WORDS - 1) / BLOCK_WORDS] = n;
  m->count = n;
}

uint64_t
qc_enc_map_rank (const struct qc_enc_map *m, uint64_t i)
{
  uint64_t w = i / 64, k, n;

  if (!m->words)
    return 0;
  if (i >= m->nbits)
    return m->count;
  n = m->rank[w / BLOCK_WORDS];
  for (k = w - w % BLOCK_WORDS; k < w; k++)
    n += __builtin_popcountll (m->words[k]);
  if (i % 64)
    n += __builtin_popcountll (m->words[w] & ((1ULL << (i % 64)) - 1));
  return n;
}

uint64_t
qc_enc_map_select (const struct qc_enc_map *m, uint64_t r)
{
  uint64_t nwords = (m->nbits + 63) / 64, w, word;
  /* The last block whose count before it is <= r. */
  uint64_t lo = qc_enc_last_le (m->rank, (nwords + BLOCK_WORDS - 1) /
                                BLOCK_WORDS ? : 1, r);

  r -= m->rank[lo];
  for (w = lo * BLOCK_WORDS; w < nwords; w++) {
    unsigned c = __builtin_popcountll (m->words[w]);
    if (r < c)
      break;
    r -= c;
  }
  if (w >= nwords)
    return m->nbits;
  word = m->words[w];
  while (r--)
    word &= word - 1;           /* drop the lowest set bit */
  return w * 64 + __builtin_ctzll (word);
}

uint64_t
qc_enc_map_next (const struct qc_enc_map *m, uint64_t i)
{
  uint64_t nwords = (m->nbits + 63) / 64, w, word;

  if (!m->words || i >= m->nbits)
    return m->nbits;
  w = i / 64;
  word = qc_enc_map_word (m, w) & (~0ULL << (i % 64));
  while (!word) {
    if (++w >= nwords)
      return m->nbits;
    word = qc_enc_map_word (m, w);
  }
  i = w * 64 + __builtin_ctzll (word);
  return i < m->nbits ? i : m->nbits;
}

bool
qc_enc_map_any (const struct qc_enc_map *m, uint64_t from, uint64_t to)
{
  uint64_t i = m->words ? qc_enc_map_next (m, from) : m->nbits;

  return i < to && i < m->nbits;
}
