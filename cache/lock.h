/* subpage: the cache core's mutexes, each with its owner.
 *
 * A struct lock is a pthread mutex that records which thread holds it,
 * in every build, so that a function whose precondition is "wb_lock
 * held" or "page locked" says so in code: LOCK_ASSERT_HELD (&c->wb_lock)
 * on entry, the way Linux uses lockdep_assert_held().  The check is a
 * CACHE_ASSERT, on in every build of the project (it never defines
 * NDEBUG): one relaxed atomic store per take and release, one load per
 * check.  lock_drop also checks that the thread dropping a lock holds
 * it.
 *
 * Waiting on a condition variable goes through lock_wait and
 * lock_timedwait, which clear the owner for the time the mutex is
 * released.  The lock order is in internal.h.
 */
#ifndef SUBPAGE_LOCK_H
#define SUBPAGE_LOCK_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "cache-assert.h"

struct lock {
  pthread_mutex_t m;
  atomic_uintptr_t owner; /* lock_self () of the holder, 0 if free */
};

static inline uintptr_t
lock_self (void)
{
  return (uintptr_t) pthread_self ();
}

static inline void
lock_init (struct lock *l)
{
  pthread_mutex_init (&l->m, NULL);
  atomic_init (&l->owner, 0);
}

static inline void
lock_destroy (struct lock *l)
{
  pthread_mutex_destroy (&l->m);
}

/* Does the calling thread hold L?  (Only the holder can see its own id
 * there, so a relaxed load is exact for the question asked.)
 */
static inline bool
lock_held (struct lock *l)
{
  return atomic_load_explicit (&l->owner, memory_order_relaxed) == lock_self ();
}

#define LOCK_ASSERT_HELD(l) CACHE_ASSERT (lock_held (l))

static inline void
lock_take (struct lock *l)
{
  pthread_mutex_lock (&l->m);
  atomic_store_explicit (&l->owner, lock_self (), memory_order_relaxed);
}

static inline void
lock_drop (struct lock *l)
{
  LOCK_ASSERT_HELD (l);
  atomic_store_explicit (&l->owner, 0, memory_order_relaxed);
  pthread_mutex_unlock (&l->m);
}

/* pthread_cond_wait on CV with L, which the caller holds. */
static inline void
lock_wait (struct lock *l, pthread_cond_t *cv)
{
  LOCK_ASSERT_HELD (l);
  atomic_store_explicit (&l->owner, 0, memory_order_relaxed);
  pthread_cond_wait (cv, &l->m);
  atomic_store_explicit (&l->owner, lock_self (), memory_order_relaxed);
}

static inline int
lock_timedwait (struct lock *l, pthread_cond_t *cv,
                const struct timespec *abstime)
{
  int r;

  LOCK_ASSERT_HELD (l);
  atomic_store_explicit (&l->owner, 0, memory_order_relaxed);
  r = pthread_cond_timedwait (cv, &l->m, abstime);
  atomic_store_explicit (&l->owner, lock_self (), memory_order_relaxed);
  return r;
}

#endif /* SUBPAGE_LOCK_H */
