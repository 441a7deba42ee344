/* subpage: the journal's drainer thread (server/jdrain.c).
 *
 * With journal=, write-back comes from the journal, in epoch order
 * (cache.h, cache_journal_drain), not from the write-back server: one
 * thread calls cache_journal_drain while it finds records and a step is
 * due (journal-background-ratio=), and waits for a kick (the cache's
 * kick hook) or the interval otherwise; a pool
 * of workers runs the backend writes of each batch (the jio hook).  After
 * a failed step it waits the interval before retrying, so a failing
 * backend is not hammered.
 */
#ifndef SUBPAGE_JDRAIN_H
#define SUBPAGE_JDRAIN_H

#include "cache.h"

struct jdrain;

/* Starts the thread, and WORKERS threads that run the backend writes of
 * each batch in parallel (cache_set_jio), and installs the kick and jio
 * hooks on C.  The thread drains only while a step is due
 * (cache_journal_drain_due with EXPIRE_MS and RATIO; RATIO 0: always).
 * NULL and *ERR (-errno) on failure.
 */
struct jdrain *jdrain_start (struct cache *c, unsigned interval_ms,
                             uint64_t expire_ms, unsigned ratio,
                             unsigned workers, int *err);
/* Stops the thread after its current step and removes the kick hook;
 * the pool stays, so the caller's cache_drain still writes each batch
 * in parallel.  NULL is a no-op.
 */
void jdrain_stop (struct jdrain *d);
/* jdrain_stop if not done, then removes the jio hook, stops the pool
 * and frees D (after cache_drain).  NULL is a no-op.
 */
void jdrain_close (struct jdrain *d);
/* Shutdown: from now on every step is due, whatever
 * journal-background-ratio= says, and the thread runs one at once.
 */
void jdrain_hurry (struct jdrain *d);

/* The kick hook: wakes the thread.  Never blocks for long. */
void jdrain_kick (void *opaque);

#endif /* SUBPAGE_JDRAIN_H */
