/* subpage: the image's size, which may change while it is served
 * (cache.h, cache_refresh_size).
 *
 * The size starts as cfg.size.  cache_refresh_size asks the backend
 * (ops->get_size); an answer that differs is asked again under
 * size_lock, so that two refreshes never apply their answers out of
 * order, and the cache follows the change:
 *
 *   1. a growth from a size that is not a multiple of the sector size
 *      puts the grown bytes into the cached sector that size cut
 *      (patch_cut_sector, inside a busy range);
 *   2. wb_end (at its lowest), then size, take their new values
 *      (write-back reads them in the other order: writeback.c,
 *      run_fits);
 *   3. discard_started goes up, so a read that was at the backend with
 *      the old size does not install what it read (request.c,
 *      read_install);
 *   4. every cached page that reaches past the smaller of the two sizes
 *      loses its CLEAN sectors from the sector holding that end on: past
 *      an old end they hold the zeroes a read saw there, and past a new
 *      end what the image no longer has.  DIRTY and WRITEBACK sectors
 *      stay: they are what clients wrote;
 *   5. wb_end rises to the end of a sector the new size cuts, unless that
 *      sector held data written before a shrink (cut_held).

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
#include <stdlib.h>
#include <string.h>

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
 * FROM (sector-aligned).  Counts its DIRTY or WRITEBACK sectors at or
 * past byte END (sector-aligned) into *NDIRTY (bytes) and *DEND (the
 * end of the last), except the sector at END when it is cut by the new
 * size (CUT_AT_END) and may be written (CUT_OK): it then only sets
 * *CUT_DIRTY.  Returns whether P holds such counted sectors.
 */
static bool
page_past (struct cache *c, struct page *p, uint64_t from, uint64_t end,
           bool cut_at_end, bool cut_ok, uint64_t *ndirty, uint64_t *dend,
           bool *cut_dirty)
{
  uint64_t base = page_offset (c, p), ss = c->cfg.sector_size;
  uint32_t i = from <= base ? 0 : (uint32_t) ((from - base) >> c->sector_shift);
  struct sect_delta d = { 0 };
  bool counted = false;

  LOCK_ASSERT_HELD (&p->lock);
  for (; i < c->nsect; i++) {
    uint64_t soff = base + ((uint64_t) i << c->sector_shift);

    switch (sect_get (&p->sb, i)) {
    case SECT_ABSENT: break;
    case SECT_CLEAN: sect_drop (&p->sb, i, 1, &d); break;
    default:
      if (soff < end)
        break;
      if (soff == end && cut_at_end) {
        *cut_dirty = true;
        if (cut_ok)
          break;
      }
      *ndirty += ss;
      *dend = MAX (*dend, soff + ss);
      counted = true;
    }
  }
  report_account (c, p, &d);
  CACHE_ASSERT (page_check (c, p));
  return counted;
}

/* size_lock held, growth from OLD, which is not a multiple of the
 * sector size, inside a busy range over its page (so no fill installs
 * meanwhile and no collector takes it).  The sector holding OLD, if
 * valid and not cut_held, holds zeroes past OLD (a fill read them
 * there, and no client could write there): puts the grown image's
 * bytes there instead, so neither a read nor the sector's next
 * write-back invents zeroes.
 */
static void
patch_cut_sector (struct cache *c, uint64_t old, uint64_t size)
{
  uint64_t ss = c->cfg.sector_size, s0 = ROUND_DOWN (old, ss);
  uint32_t n = (uint32_t) (MIN (s0 + ss, size) - old);
  uint32_t i = (uint32_t) ((s0 >> c->sector_shift) & (c->nsect - 1));
  char *tmp = malloc (n);
  struct page *p;
  int r;

  if (!tmp || (r = c->ops->pread (c->bopaque, tmp, n, old)) < 0) {
    report_logf (c, CACHE_LOG_ERROR,
                 "the image grew from %" PRIu64 " bytes, but its bytes "
                 "past that end could not be read (%s): the cache keeps "
                 "zeroes there",
                 old, tmp ? errstr (-r) : "out of memory");
    free (tmp);
    return;
  }
  p = page_find (c, old >> c->page_shift);
  if (p) {
    page_lock (p);
    if (sect_test (&p->sb, SECT_BM_V, i))
      memcpy (p->data + (old & (c->cfg.page_size - 1)), tmp, n);
    page_unlock (p);
    page_unpin (c, p);
  }
  free (tmp);
}

/* size_lock held.  Follows the image from its size now to SIZE. */
static void
resize_locked (struct cache *c, uint64_t size)
{
  uint64_t ss = c->cfg.sector_size, old = size_now (c);
  uint64_t max = MAX (atomic_load (&c->size_max), size);
  uint64_t from = ROUND_DOWN (MIN (old, size), ss);
  uint64_t end = ROUND_DOWN (size, ss), cut = ROUND_UP (size, ss);
  uint64_t ndirty = 0, dend = 0, npast = 0;
  bool cut_dirty = false;
  struct busy_range br = { .first_page = old >> c->page_shift,
                           .last_page = old >> c->page_shift };
  /* Unless the sector cut by OLD kept data written before a shrink to
   * OLD, its bytes past OLD are zeroes a fill put there.
   */
  bool patch = size > old && !IS_ALIGNED (old, ss) && !c->cut_held;

  LOCK_ASSERT_HELD (&c->size_lock);
  if (patch) {
    dirty_busy_begin (c, &br);
    patch_cut_sector (c, old, size);
    if (c->jnl)
      jnl_note_growth (c, old);
  }
  /* wb_end first, and at its lowest: a sector cut by the new end is let
   * through below once it is known to hold nothing written before.
   */
  atomic_store (&c->size_max, max);
  atomic_store (&c->wb_end, end);
  atomic_store (&c->size, size);
  /* A read that loaded the generation before this and the size before
   * the store above does not install; one that loaded it after read
   * with the new size.
   */
  atomic_fetch_add (&c->discard_started, 1);
  if (patch)
    dirty_busy_end (c, &br);
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
    npast += page_past (c, p, from, end, end < cut, size == max, &ndirty, &dend,
                        &cut_dirty);
    page_unlock (p);
    page_unpin (c, p);
  }
  atomic_store (&c->past_end_pages, npast);
  /* journal=: the cut sector may hold data written before whose newest
   * record is not written back while the page does not hold it as D:
   * the page left RAM dirty (its node is in the index) or came back and
   * read it from the journal (CLEAN).  Kept as DIRTY data would be.
   */
  if (c->jnl && end < cut && size < max && !cut_dirty)
    cut_dirty = page_sector_journaled (c, end);
  /* The sector holding a new end that is not a multiple of the sector
   * size is written back (cut at the end) unless it held data written
   * before this change, which may reach past the end.  At the largest
   * size seen nobody can have written past the end.
   */
  c->cut_held = end < cut && size < max && cut_dirty;
  if (end < cut && !c->cut_held)
    atomic_store (&c->wb_end, cut);

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
  /* Unchanged, the usual answer: no lock (this runs before every
   * write-back batch).  A change is asked again under size_lock, so
   * that two refreshes never apply their answers out of order.
   */
  r = c->ops->get_size (c->bopaque);
  if (r >= 0 && (uint64_t) r == size_now (c))
    return (uint64_t) r;
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
