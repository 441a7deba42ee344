/* subpage: the write-back state under wb_lock: the dirty list, epoch
 * tags, TRIM and ZERO ranges, collect progress.
 *
 * The dirty list holds every page with a D bit, oldest first (each
 * listed page holds one pin, so reclaim never frees it).  A collect
 * that leaves a page dirty moves it to the tail with its old date, so
 * the list is roughly, not strictly, in date order.
 *
 * Epoch tags and their counts, and collect progress, are described in
 * internal.h.  Every function here runs with wb_lock held (asserted),
 * except dirty_busy_wait, dirty_busy_begin/end, dirty_note_write and
 * dirty_note_drop, which take it, and dirty_mem, which reads an atomic.
 *
 * A busy range is a TRIM or ZERO in progress: collectors and FUA leave
 * its pages alone until it ends (invariant 8), and a fill that read the
 * backend while one ran does not install what it read.
 */
#include <errno.h>
#include <stdlib.h>

#include "internal.h"
#include "util.h"

void
dirty_init (struct cache *c)
{
  c->epoch = 1;
  c->ebase = 1;
}

/* The counter of live tags of epoch E (internal.h). */
static uint64_t *
dirty_slot (struct cache *c, enum dirty_kind k, uint64_t e)
{
  LOCK_ASSERT_HELD (&c->wb_lock);
  if (e < c->ebase)
    return k == DIRTY_ON_PAGE ? &c->efloor_page : &c->efloor_run;
  CACHE_ASSERT (e - c->ebase < EPOCH_RING);
  return &(k == DIRTY_ON_PAGE ? c->ecount_page : c->ecount_run)[e % EPOCH_RING];
}

/* Returns true if the count of epoch E dropped to zero. */
bool
dirty_count (struct cache *c, enum dirty_kind k, uint64_t e, int delta)
{
  uint64_t *slot;

  if (e == SEQ_NONE)
    return false;
  slot = dirty_slot (c, k, e);
  CACHE_ASSERT (delta > 0 || *slot >= (uint64_t) -delta);
  *slot += (uint64_t) (int64_t) delta;
  return delta < 0 && *slot == 0;
}

uint64_t
dirty_new_epoch (struct cache *c)
{
  uint64_t t = c->epoch++;

  LOCK_ASSERT_HELD (&c->wb_lock);
  /* Past empty slots for free; past full ones into the floor, so that
   * epochs [ebase, epoch] never share a slot.
   */
  while (c->ebase < c->epoch) {
    uint64_t *pg = &c->ecount_page[c->ebase % EPOCH_RING];
    uint64_t *rn = &c->ecount_run[c->ebase % EPOCH_RING];

    if (*pg + *rn > 0) {
      if (c->epoch - c->ebase < EPOCH_RING)
        break;
      c->efloor_page += *pg;
      c->efloor_run += *rn;
      *pg = *rn = 0;
    }
    c->ebase++;
  }
  return t;
}

void
dirty_live_tags (struct cache *c, uint64_t t, uint64_t *pages, uint64_t *runs)
{
  LOCK_ASSERT_HELD (&c->wb_lock);
  *pages = c->efloor_page;
  *runs = c->efloor_run;
  for (uint64_t e = c->ebase; e <= t; e++) {
    *pages += c->ecount_page[e % EPOCH_RING];
    *runs += c->ecount_run[e % EPOCH_RING];
  }
}

/* wb_lock held.  Is anyone waiting on wb_cv?  Every waiter counts
 * itself in w_flush, w_throttle or w_idle under wb_lock before it
 * sleeps, so a broadcast skipped when this is false wakes nobody.
 * (w_flush also counts flushes waiting on gc_cv: an extra broadcast at
 * worst.)
 */
bool
dirty_waiters (struct cache *c)
{
  LOCK_ASSERT_HELD (&c->wb_lock);
  return atomic_load (&c->w_flush) + atomic_load (&c->w_throttle) +
           atomic_load (&c->w_idle) >
         0;
}

void
dirty_progress (struct cache *c)
{
  LOCK_ASSERT_HELD (&c->wb_lock);
  atomic_fetch_add (&c->progress, 1);
  if (dirty_waiters (c))
    pthread_cond_broadcast (&c->wb_cv);
}

/* Gives P's DIRTY sectors tag T (the older of T and the current tag). */
void
dirty_tag (struct cache *c, struct page *p, uint64_t t)
{
  LOCK_ASSERT_HELD (&c->wb_lock);
  LOCK_ASSERT_HELD (&p->lock);
  if (t == SEQ_NONE)
    return;
  if (p->dseq == SEQ_NONE || t < p->dseq) {
    dirty_count (c, DIRTY_ON_PAGE, p->dseq, -1);
    p->dseq = t;
    dirty_count (c, DIRTY_ON_PAGE, t, 1);
  }
}

void
dirty_untag (struct cache *c, struct page *p)
{
  LOCK_ASSERT_HELD (&c->wb_lock);
  dirty_count (c, DIRTY_ON_PAGE, p->dseq, -1);
  p->dseq = SEQ_NONE;
}

bool
dirty_idle (struct cache *c, struct page *p)
{
  return sect_find_dirty_idle (&p->sb, 0, c->nsect) < c->nsect;
}

/* The clock of dirty-page ages (cache_debug_set_clock). */
uint64_t
dirty_now_ms (struct cache *c)
{
  cache_clock_fn fn = atomic_load_explicit (&c->clock, memory_order_relaxed);

  return fn ? fn (atomic_load (&c->clock_opaque)) : report_now_ms ();
}

/* Lists P on the dirty list (it must already be pinned by the caller). */
void
dirty_list (struct cache *c, struct page *p)
{
  LOCK_ASSERT_HELD (&c->wb_lock);
  if (p->listed)
    return;
  page_pin_more (p);
  p->listed = true;
  p->dirtied_ms = dirty_now_ms (c);
  p->dnext = NULL;
  p->dprev = c->dirty_tail;
  if (c->dirty_tail)
    c->dirty_tail->dnext = p;
  else
    c->dirty_head = p;
  c->dirty_tail = p;
  c->ndirty_pages++;
}

static void
dirty_list_remove (struct cache *c, struct page *p)
{
  LOCK_ASSERT_HELD (&c->wb_lock);
  if (p->dprev)
    p->dprev->dnext = p->dnext;
  else
    c->dirty_head = p->dnext;
  if (p->dnext)
    p->dnext->dprev = p->dprev;
  else
    c->dirty_tail = p->dprev;
  p->dnext = p->dprev = NULL;
}

/* Takes P off the dirty list.  The caller holds another pin, so the
 * list's pin can be dropped without reaching zero.
 */
void
dirty_unlist (struct cache *c, struct page *p)
{
  unsigned old;

  LOCK_ASSERT_HELD (&c->wb_lock);
  if (!p->listed)
    return;
  dirty_list_remove (c, p);
  p->listed = false;
  c->ndirty_pages--;
  old = atomic_fetch_sub (&p->refs, 1);
  CACHE_ASSERT (old > 1);
}

void
dirty_evict (struct cache *c, struct page *p)
{
  unsigned old;

  LOCK_ASSERT_HELD (&p->lock);
  lock_take (&c->wb_lock);
  if (p->dseq != SEQ_NONE)
    dirty_untag (c, p);
  if (p->listed) {
    dirty_list_remove (c, p);
    p->listed = false;
    c->ndirty_pages--;
    old = atomic_fetch_sub (&p->refs, 1);
    CACHE_ASSERT (old == 1);
  }
  pthread_cond_broadcast (&c->wb_cv);
  lock_drop (&c->wb_lock);
}

void
dirty_note_write (struct cache *c, struct page *p, uint32_t first, uint32_t n)
{
  bool idle = sect_count (&p->sb, SECT_BM_W, first, n) < n;
  bool need = !p->listed || (idle && p->dseq == SEQ_NONE);
  uint32_t end = first + n;

  LOCK_ASSERT_HELD (&p->lock);
  for (struct frag *f = p->frags; f && !need; f = f->pnext)
    if (f->first < end && first < f->first + f->n && f->rseq == SEQ_NONE)
      need = true;
  if (!need)
    return;

  lock_take (&c->wb_lock);
  if (idle && p->dseq == SEQ_NONE)
    dirty_tag (c, p, c->epoch);
  for (struct frag *f = p->frags; f; f = f->pnext)
    if (f->first < end && first < f->first + f->n && f->rseq == SEQ_NONE) {
      f->rseq = c->epoch;
      dirty_count (c, DIRTY_IN_RUN, f->rseq, 1);
    }
  dirty_list (c, p);
  lock_drop (&c->wb_lock);
}

void
dirty_note_drop (struct cache *c, struct page *p)
{
  LOCK_ASSERT_HELD (&p->lock);
  lock_take (&c->wb_lock);
  if (!dirty_idle (c, p))
    dirty_untag (c, p);
  if (p->nd == 0)
    dirty_unlist (c, p);
  pthread_cond_broadcast (&c->wb_cv);
  lock_drop (&c->wb_lock);
}

/* wb_lock held. */
bool
dirty_busy_overlaps_locked (struct cache *c, uint64_t first_page,
                            uint64_t last_page)
{
  LOCK_ASSERT_HELD (&c->wb_lock);
  for (struct busy_range *b = c->busy; b; b = b->next)
    if (b->first_page <= last_page && first_page <= b->last_page)
      return true;
  return false;
}

bool
dirty_busy_overlaps (struct cache *c, uint64_t first_page, uint64_t last_page)
{
  bool r;

  if (atomic_load (&c->nbusy) == 0)
    return false;
  lock_take (&c->wb_lock);
  r = dirty_busy_overlaps_locked (c, first_page, last_page);
  lock_drop (&c->wb_lock);
  return r;
}

/* No lock held.  Waits until no TRIM or ZERO covers the pages. */
void
dirty_busy_wait (struct cache *c, uint64_t first_page, uint64_t last_page)
{
  CACHE_ASSERT (!lock_held (&c->wb_lock));
  lock_take (&c->wb_lock);
  while (dirty_busy_overlaps_locked (c, first_page, last_page)) {
    atomic_fetch_add (&c->w_idle, 1);
    lock_wait (&c->wb_lock, &c->wb_cv);
    atomic_fetch_sub (&c->w_idle, 1);
  }
  lock_drop (&c->wb_lock);
}

void
dirty_busy_begin (struct cache *c, struct busy_range *r)
{
  lock_take (&c->wb_lock);
  r->next = c->busy;
  c->busy = r;
  atomic_fetch_add (&c->nbusy, 1);
  atomic_fetch_add (&c->discard_started, 1);
  lock_drop (&c->wb_lock);
}

void
dirty_busy_end (struct cache *c, struct busy_range *r)
{
  struct busy_range **pp;

  lock_take (&c->wb_lock);
  for (pp = &c->busy; *pp != r; pp = &(*pp)->next)
    CACHE_ASSERT (*pp != NULL);
  *pp = r->next;
  atomic_fetch_sub (&c->nbusy, 1);
  /* Bump again: a fill that read the backend while R was active must
   * not install what it read.
   */
  atomic_fetch_add (&c->discard_started, 1);
  dirty_progress (c);
  lock_drop (&c->wb_lock);
}

/* Dirty memory, for the background threshold and the throttle: pages
 * holding any D or W sector, at their full size.  Such a page cannot be
 * reclaimed, whatever its number of dirty sectors, so counting dirty
 * bytes instead would let scattered small writes pin every page while
 * staying under both thresholds (like Linux, which counts dirty pages).
 */
uint64_t
dirty_mem (struct cache *c)
{
  uint64_t n = atomic_load (&c->st_dpages);
  uint64_t past = atomic_load (&c->past_end_pages); /* resize.c */

  return (n > past ? n - past : 0) << c->page_shift;
}

bool
cache_over_background (struct cache *c)
{
  return dirty_mem (c) > c->bg_limit;
}

void
dirty_rotate (struct cache *c, struct page *p)
{
  LOCK_ASSERT_HELD (&c->wb_lock);
  if (!p->listed || !p->dnext)
    return;
  dirty_list_remove (c, p);
  p->dprev = c->dirty_tail;
  c->dirty_tail->dnext = p;
  c->dirty_tail = p;
}
