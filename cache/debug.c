/* subpage: what only tests and debugging use (cache-debug.h).
 *
 * Each function takes the locks it needs, like a request: it may be
 * called while requests run, and its answer is then a snapshot.
 */
#include <errno.h>

#include "cache-debug.h"
#include "internal.h"

void
cache_debug_set_park (struct cache *c, cache_park_fn fn, void *opaque)
{
  atomic_store (&c->park_opaque, opaque);
  atomic_store (&c->park, fn);
}

void
cache_debug_set_clock (struct cache *c, cache_clock_fn fn, void *opaque)
{
  atomic_store (&c->clock_opaque, opaque);
  atomic_store (&c->clock, fn);
}

unsigned
cache_debug_sector (struct cache *c, uint64_t off)
{
  struct page *p = page_find (c, off >> c->page_shift);
  uint32_t i;
  unsigned r = 0;

  if (!p)
    return 0;
  i = (uint32_t) ((off & (c->cfg.page_size - 1)) >> c->sector_shift);
  page_lock (p);
  if (sect_test (&p->sb, SECT_BM_V, i))
    r |= CACHE_SECT_V;
  if (sect_test (&p->sb, SECT_BM_D, i))
    r |= CACHE_SECT_D;
  if (sect_test (&p->sb, SECT_BM_W, i))
    r |= CACHE_SECT_W;
  page_unlock (p);
  page_unpin (c, p);
  return r;
}

bool
cache_debug_resident (struct cache *c, uint64_t off)
{
  struct page *p = page_find (c, off >> c->page_shift);

  if (!p)
    return false;
  page_unpin (c, p);
  return true;
}

unsigned
cache_debug_refs (struct cache *c, uint64_t off)
{
  struct page *p = page_find (c, off >> c->page_shift);
  unsigned r;

  if (!p)
    return 0;
  r = atomic_load (&p->refs) - 1; /* not counting our own */
  page_unpin (c, p);
  return r;
}

int
cache_debug_pin (struct cache *c, uint64_t off)
{
  if (off >= size_now (c))
    return -EINVAL;
  int err;

  return page_get (c, off >> c->page_shift, true, &err) ? 0 : err;
}

void
cache_debug_unpin (struct cache *c, uint64_t off)
{
  struct page *p = page_find (c, off >> c->page_shift);

  CACHE_ASSERT (p != NULL);
  page_unpin (c, p); /* page_find's pin */
  page_unpin (c, p); /* cache_debug_pin's pin */
}

bool
cache_debug_check (struct cache *c)
{
  bool ok = true;

  for (uint32_t i = 0; i < c->nframes; i++) {
    struct page *p = page_find (c, c->frames[i].index);
    if (c->frames[i].index == PAGE_NONE || !p)
      continue;
    page_lock (p);
    if (!page_check (c, p))
      ok = false;
    page_unlock (p);
    page_unpin (c, p);
  }
  return ok;
}
