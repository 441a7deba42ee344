/* subpage: the image's size, which may change while it is served
 * (cache.h, cache_refresh_size).
 *
 * The size starts as cfg.size.  cache_refresh_size asks the backend
 * (ops->get_size) under size_lock, so that two refreshes never apply
 * their answers out of order, and follows a change:
 *
 *   1. discard_started goes up first, so a read that was at the backend
 *      meanwhile does not install what it read (it may be from before
 *      the change; request.c, read_install);
 *   2. wb_end, then size, take their new values (write-back reads them
 *      in the other order: writeback.c, run_fits);
 *   3. every cached page that reaches past the smaller of the two sizes
 *      loses its CLEAN sectors from the sector holding that end on: past
 *      an old end they hold the zeroes a read saw there, and past a new
 *      end what the image no longer has.  DIRTY and WRITEBACK sectors
 *      stay: they are what clients wrote.
 *
 * Dirty data at or past wb_end is never written: write-back fails its
 * runs (run_fits) without I/O and without a log line each, so flushes
 * fail with -EIO until the image grows back.  The change itself is
 * logged once, as an error when it leaves such data.
 *
 * Lock order: size_lock, then a page's lock (then wb_lock, in
 * report_account's callees).  Callers hold no lock.
 */
#define _GNU_SOURCE

#include <errno.h>
#include <inttypes.h>

#include "cache.h"
#include "errstr.h"
#include "internal.h"
#include "util.h"

void
size_init (struct cache *c)
{
  lock_init (&c->size_lock);
  atomic_init (&c->size, c->cfg.size);
  atomic_init (&c->size_max, c->cfg.size);
  atomic_init (&c->wb_end,
               ROUND_UP (c->cfg.size, (uint64_t) c->cfg.sector_size));
}

void
size_destroy (struct cache *c)
{
  lock_destroy (&c->size_lock);
}

/* Page P pinned and locked.  Drops its CLEAN sectors at or past byte
 * FROM (sector-aligned); adds to *NDIRTY the bytes of its DIRTY or
 * WRITEBACK sectors at or past byte END, and raises *DEND to the end of
 * the last of them.
 */
static void
page_past (struct cache *c, struct page *p, uint64_t from, uint64_t end,
           uint64_t *ndirty, uint64_t *dend)
{
  uint64_t base = page_offset (c, p), ss = c->cfg.sector_size;
  uint32_t i = from <= base ? 0 : (uint32_t) ((from - base) >> c->sector_shift);
  struct sect_delta d = { 0 };

  LOCK_ASSERT_HELD (&p->lock);
  for (; i < c->nsect; i++) {
    uint64_t soff = base + ((uint64_t) i << c->sector_shift);

    switch (sect_get (&p->sb, i)) {
    case SECT_ABSENT: break;
    case SECT_CLEAN: sect_drop (&p->sb, i, 1, &d); break;
    default:
      if (soff >= end) {
        *ndirty += ss;
        *dend = MAX (*dend, soff + ss);
      }
    }
  }
  report_account (c, p, &d);
  CACHE_ASSERT (page_check (c, p));
}

/* size_lock held.  Follows the image from its size now to SIZE. */
static void
resize_locked (struct cache *c, uint64_t size)
{
  uint64_t ss = c->cfg.sector_size, old = size_now (c);
  uint64_t max = MAX (atomic_load (&c->size_max), size);
  uint64_t end = size == max ? ROUND_UP (size, ss) : ROUND_DOWN (size, ss);
  uint64_t from = ROUND_DOWN (MIN (old, size), ss);
  uint64_t ndirty = 0, dend = 0;

  LOCK_ASSERT_HELD (&c->size_lock);
  atomic_fetch_add (&c->discard_started, 1);
  atomic_store (&c->size_max, max);
  atomic_store (&c->wb_end, end);
  atomic_store (&c->size, size);
  atomic_fetch_add (&c->ctr.resizes, 1);

  for (uint32_t f = 0; f < c->nframes; f++) {
    uint64_t pi = atomic_load (&c->frames[f].index);
    struct page *p;

    if (pi == PAGE_NONE || ((pi + 1) << c->page_shift) <= from)
      continue;
    p = page_find (c, pi);
    if (!p)
      continue;
    page_lock (p);
    page_past (c, p, from, end, &ndirty, &dend);
    page_unlock (p);
    page_unpin (c, p);
  }

  if (ndirty > 0)
    report_logf (c, CACHE_LOG_ERROR,
                 "the image's size changed from %" PRIu64 " to %" PRIu64
                 " bytes, and %" PRIu64 " bytes that clients wrote past "
                 "its end are not written back yet: they stay in the cache "
                 "unwritten, and every flush fails with EIO until the image "
                 "is at least %" PRIu64 " bytes again",
                 old, size, ndirty, dend);
  else
    report_debug (c,
                  "the image's size changed from %" PRIu64 " to %" PRIu64
                  " bytes",
                  old, size);
}

uint64_t
cache_refresh_size (struct cache *c)
{
  uint64_t size;
  int64_t r;

  if (!c->ops->get_size)
    return size_now (c);
  lock_take (&c->size_lock);
  r = c->ops->get_size (c->bopaque);
  if (r < 0)
    report_debug (c, "the image's size: %s (kept as it was)", errstr (-r));
  else if ((uint64_t) r != size_now (c))
    resize_locked (c, (uint64_t) r);
  size = size_now (c);
  lock_drop (&c->size_lock);
  return size;
}
