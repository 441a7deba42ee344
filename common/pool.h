/* subpage: a pool of fixed-size items with a malloc fallback, header-only.
 *
 * For the nodes a hot path takes and gives back at a high rate (the
 * write-back server's queued runs, the NBD backend's asynchronous
 * writes).  pool_init allocates N items at once; pool_get hands them
 * out from a free list under the pool's own mutex, and when all N are
 * out it mallocs one instead; pool_put gives a pooled item back to the
 * list and frees a malloc'd one.  So steady traffic allocates nothing,
 * a burst beyond N still works, and the pool never grows.  Whether an
 * item is pooled is decided by its address (inside the array or not),
 * so items need no flag.
 *
 * A free item's first pointer-sized bytes hold the free-list link; an
 * item that is out belongs to its user entirely.  Items are not
 * cleared.  Nothing is allocated or freed with the mutex held, and
 * the mutex is a leaf: no other lock is taken under it.
 * Tested by tests/unit/test-pool.c.
 */
#ifndef SUBPAGE_POOL_H
#define SUBPAGE_POOL_H

#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct pool {
  pthread_mutex_t lock; /* free */
  void *free;           /* linked through each item's first bytes */
  char *items;          /* [n * size] */
  size_t size, n;
};

/* Item ITEM's link in the free list (memcpy: items are the user's type). */
static inline void *
pool_next (void *item)
{
  void *next;

  memcpy (&next, item, sizeof next);
  return next;
}

static inline void
pool_set_next (void *item, void *next)
{
  memcpy (item, &next, sizeof next);
}

/* N items of SIZE bytes each (SIZE at least a pointer; sizeof of the
 * item's type keeps them aligned).  Returns 0 or -ENOMEM.  Either way
 * pool_destroy may be called after.
 */
static inline int
pool_init (struct pool *p, size_t size, size_t n)
{
  assert (size >= sizeof (void *));
  pthread_mutex_init (&p->lock, NULL);
  p->free = NULL;
  p->size = size;
  p->n = 0;
  p->items = calloc (n, size);
  if (p->items == NULL)
    return -ENOMEM;
  p->n = n;
  for (size_t i = n; i-- > 0;) {
    void *item = p->items + i * size;

    pool_set_next (item, p->free);
    p->free = item;
  }
  return 0;
}

/* Frees the pool.  Every pooled item must be back. */
static inline void
pool_destroy (struct pool *p)
{
  pthread_mutex_destroy (&p->lock);
  free (p->items);
  p->items = NULL;
  p->free = NULL;
  p->n = 0;
}

/* Did ITEM come from P's array (rather than from malloc)? */
static inline bool
pool_owns (const struct pool *p, const void *item)
{
  uintptr_t a = (uintptr_t) item, base = (uintptr_t) p->items;

  return p->items != NULL && a >= base && a < base + p->n * p->size;
}

/* A pooled item, or a malloc'd one when none is free; NULL only if
 * malloc fails.  Thread-safe.
 */
static inline void *
pool_get (struct pool *p)
{
  void *item;

  pthread_mutex_lock (&p->lock);
  item = p->free;
  if (item != NULL)
    p->free = pool_next (item);
  pthread_mutex_unlock (&p->lock);
  if (item == NULL)
    item = malloc (p->size);
  return item;
}

/* Gives back ITEM from pool_get (back to the list, or freed).
 * Thread-safe.
 */
static inline void
pool_put (struct pool *p, void *item)
{
  if (!pool_owns (p, item)) {
    free (item);
    return;
  }
  pthread_mutex_lock (&p->lock);
  pool_set_next (item, p->free);
  p->free = item;
  pthread_mutex_unlock (&p->lock);
}

#endif /* SUBPAGE_POOL_H */
