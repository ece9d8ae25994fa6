/* SPDX-License-Identifier: BSD-3-Clause */
/* Run the items of a loop on several threads: the calling thread works
 * through them itself, and idle threads of a small shared pool help.
 * When the pool is busy (other requests compressing), the caller does
 * everything alone, so a server with many requests in flight is never
 * oversubscribed; with as many callers inside as CPUs, the helpers are
 * not even woken.  Used to compress the clusters of one large write in
 * parallel.
 */
#ifndef QC_PARFOR_H
#define QC_PARFOR_H

#include <stddef.h>

/* Call fn (arg, i) for every i in [0, n), in any order and on any
 * thread, and return when all calls have returned.
 */
extern void parfor (void (*fn) (void *arg, size_t i), void *arg, size_t n);

#endif /* QC_PARFOR_H */
