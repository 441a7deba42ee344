/* subpage: write-back, flush and the flush accounting.
 *
 * What it does.  Collects DIRTY sectors (D and not W) into batches,
 * snapshots them and submits one backend write ("run") per contiguous
 * range, merging ranges that continue across page boundaries; completes
 * runs in any order; answers flushes once every write acknowledged
 * before them is on the backend and a backend flush has followed; and
 * writes ranges back synchronously for FUA and write-through.
 *
 * Representation.  A batch owns one buffer, its runs and their
 * fragments (struct frag: one sector range of one page).  A page's
 * in-flight fragments hang off page->frags, so a write to a WRITEBACK
 * sector finds the fragment it redirties.  Epoch tags (see internal.h)
 * make flush exact and bounded: a flush waits for tags <= its epoch and
 * for nothing newer.
 *
 * Invariants.
 *  - Snapshot, then clear (4): a sector's data is copied into the batch
 *    buffer and its D bit cleared (sect_wb_start) in one critical
 *    section under the page lock.  Writers never wait: they redirty.
 *  - Mark all before submitting any (5): a collector marks W on every
 *    sector of every run of a batch before it submits the first run; a
 *    batch holds a bias on its pending count until all its runs are
 *    submitted.  Completion clears only its own fragments' W bits and
 *    wakes waiters on a page only when that page's W bitmap is empty.
 *  - One write per sector in flight (3): collectors take only D&~W
 *    sectors; FUA waits for W to clear before snapshotting.
 *  - Errors keep data (7): a failed run sets D again on its sectors,
 *    re-tags them with their old epoch and records the errno, which the
 *    next flush reports (once, like Linux's errseq).  A flush that sees
 *    a new error stops retrying, waits for its in-flight runs, and fails.
 *  - Flush (6): see cache_flush below.  Concurrent flushes share backend
 *    flushes (group commit).
 *
 * What it deliberately does not do: it never holds a page lock, shard
 * lock or clock_lock across backend I/O or allocation, and it never
 * waits while holding W bits it has not yet submitted (wb_sync_range
 * submits what it has before it waits), so FUA, flush and discard
 * cannot deadlock on each other.
 */
#define _GNU_SOURCE /* strerrordesc_np, see errstr.h */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "errstr.h"
#include "internal.h"
#include "util.h"

#define MAX_PICK 256

void
wb_init (struct cache *c)
{
  lock_init (&c->wb_lock);
  pthread_cond_init (&c->wb_cv, NULL);
  lock_init (&c->gc_lock);
  pthread_cond_init (&c->gc_cv, NULL);
  c->epoch = 1;
  c->ebase = 1;
}

/* ---- epoch tags (wb_lock held) ---- */

enum ec_kind { EC_PAGE, EC_RUN };

/* The counter of live tags of epoch E (internal.h). */
static uint64_t *
ec_slot (struct cache *c, enum ec_kind k, uint64_t e)
{
  LOCK_ASSERT_HELD (&c->wb_lock);
  if (e < c->ebase)
    return k == EC_PAGE ? &c->efloor_page : &c->efloor_run;
  CACHE_ASSERT (e - c->ebase < EPOCH_RING);
  return &(k == EC_PAGE ? c->ecount_page : c->ecount_run)[e % EPOCH_RING];
}

/* Returns true if the count of epoch E dropped to zero. */
static bool
ec_add (struct cache *c, enum ec_kind k, uint64_t e, int delta)
{
  uint64_t *slot;

  if (e == SEQ_NONE)
    return false;
  slot = ec_slot (c, k, e);
  CACHE_ASSERT (delta > 0 || *slot >= (uint64_t) -delta);
  *slot += (uint64_t) (int64_t) delta;
  return delta < 0 && *slot == 0;
}

uint64_t
wb_new_epoch (struct cache *c)
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
wb_live_tags (struct cache *c, uint64_t t, uint64_t *pages, uint64_t *runs)
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
static bool
wb_cv_waiters (struct cache *c)
{
  LOCK_ASSERT_HELD (&c->wb_lock);
  return atomic_load (&c->w_flush) + atomic_load (&c->w_throttle) +
         atomic_load (&c->w_idle) > 0;
}

void
wb_progress (struct cache *c)
{
  LOCK_ASSERT_HELD (&c->wb_lock);
  atomic_fetch_add (&c->wb_progress, 1);
  if (wb_cv_waiters (c))
    pthread_cond_broadcast (&c->wb_cv);
}

/* Gives P's DIRTY sectors tag T (the older of T and the current tag). */
static void
page_tag (struct cache *c, struct page *p, uint64_t t)
{
  LOCK_ASSERT_HELD (&c->wb_lock);
  LOCK_ASSERT_HELD (&p->lock);
  if (t == SEQ_NONE)
    return;
  if (p->dseq == SEQ_NONE || t < p->dseq) {
    ec_add (c, EC_PAGE, p->dseq, -1);
    p->dseq = t;
    ec_add (c, EC_PAGE, t, 1);
  }
}

static void
page_untag (struct cache *c, struct page *p)
{
  LOCK_ASSERT_HELD (&c->wb_lock);
  ec_add (c, EC_PAGE, p->dseq, -1);
  p->dseq = SEQ_NONE;
}

static bool
page_has_dirty_idle (struct cache *c, struct page *p)
{
  return sect_find_dirty_idle (&p->sb, 0, c->nsect) < c->nsect;
}

/* The clock of dirty-page ages (cache_debug_set_clock). */
static uint64_t
wb_now_ms (struct cache *c)
{
  cache_clock_fn fn = atomic_load_explicit (&c->clock, memory_order_relaxed);

  return fn ? fn (atomic_load (&c->clock_opaque)) : cache_now_ms ();
}

/* Lists P on the dirty list (it must already be pinned by the caller). */
static void
list_page (struct cache *c, struct page *p)
{
  LOCK_ASSERT_HELD (&c->wb_lock);
  if (p->listed)
    return;
  page_pin_more (p);
  p->listed = true;
  p->dirtied_ms = wb_now_ms (c);
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
list_remove (struct cache *c, struct page *p)
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
static void
unlist_page (struct cache *c, struct page *p)
{
  unsigned old;

  LOCK_ASSERT_HELD (&c->wb_lock);
  if (!p->listed)
    return;
  list_remove (c, p);
  p->listed = false;
  c->ndirty_pages--;
  old = atomic_fetch_sub (&p->refs, 1);
  CACHE_ASSERT (old > 1);
}

void
wb_note_write (struct cache *c, struct page *p, uint32_t first, uint32_t n)
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
    page_tag (c, p, c->epoch);
  for (struct frag *f = p->frags; f; f = f->pnext)
    if (f->first < end && first < f->first + f->n && f->rseq == SEQ_NONE) {
      f->rseq = c->epoch;
      ec_add (c, EC_RUN, f->rseq, 1);
    }
  list_page (c, p);
  lock_drop (&c->wb_lock);
}

void
wb_note_drop (struct cache *c, struct page *p)
{
  LOCK_ASSERT_HELD (&p->lock);
  lock_take (&c->wb_lock);
  if (!page_has_dirty_idle (c, p))
    page_untag (c, p);
  if (p->nd == 0)
    unlist_page (c, p);
  pthread_cond_broadcast (&c->wb_cv);
  lock_drop (&c->wb_lock);
}

/* ---- batches and runs ---- */

static struct batch *
batch_new (struct cache *c, uint32_t cap, uint32_t maxfrags)
{
  struct batch *b = calloc (1, sizeof *b);

  if (!b)
    return NULL;
  b->cap = cap;
  b->maxfrags = b->maxruns = maxfrags;
  b->buf = malloc (cap);
  b->frags = malloc (maxfrags * sizeof *b->frags);  /* set when used */
  b->runs = malloc (maxfrags * sizeof *b->runs);
  if (!b->buf || !b->frags || !b->runs) {
    free (b->buf);
    free (b->frags);
    free (b->runs);
    free (b);
    return NULL;
  }
  b->c = c;
  atomic_fetch_add (&c->wb_buf_bytes, cap);
  atomic_store (&b->pending, 1);        /* the submitter's bias */
  return b;
}

/* Drops one reference to B; the last one frees it.  No lock held:
 * freeing a buffer lowers wb_buf_bytes, which collectors refused for
 * lack of room (flush, throttled writers) must hear about: when the
 * free brings it under wb_buf_max, that is collect progress, and the
 * function returns true.
 */
static bool
batch_put (struct batch *b)
{
  struct cache *c = b->c;
  uint32_t cap = b->cap;

  CACHE_ASSERT (!lock_held (&b->c->wb_lock));
  if (atomic_fetch_sub (&b->pending, 1) == 1) {
    bool room;

    free (b->buf);
    free (b->frags);
    free (b->runs);
    free (b);
    lock_take (&c->wb_lock);
    room = atomic_fetch_sub (&c->wb_buf_bytes, cap) >= c->wb_buf_max &&
      atomic_load (&c->wb_buf_bytes) < c->wb_buf_max;
    if (room)
      wb_progress (c);                  /* a collector may use the room */
    lock_drop (&c->wb_lock);
    return room;
  }
  return false;
}

/* Page locked.  Snapshots sectors [first, first+n) of P into DST and
 * marks them W (DIRTY or CLEAN -> WRITEBACK), filling in fragment F.
 * Returns whether any of them was DIRTY.  Tags are settled afterwards
 * by snap_finish, under wb_lock.
 */
static bool
snap_range (struct cache *c, struct page *p, uint32_t first, uint32_t n,
            struct frag *f, char *dst)
{
  struct sect_delta d = { 0 };

  LOCK_ASSERT_HELD (&p->lock);
  CACHE_ASSERT (page_check (c, p));
  memcpy (dst, sect_data (c, p, first), (size_t) n << c->sector_shift);
  sect_wb_start (&p->sb, first, n, &d);
  cache_account (c, p, &d);
  f->page = p;
  f->first = first;
  f->n = n;
  f->seq = f->rseq = SEQ_NONE;
  f->pnext = p->frags;
  p->frags = f;
  page_pin_more (p);                    /* the fragment's pin */
  return d.d < 0;
}

/* Page locked, wb_lock held, P pinned by the caller.  Tags fragments
 * frags[0..k) of P (those that took DIRTY data inherit the page's tag),
 * releases the page's tag if it has no DIRTY sector left, and takes it
 * off the dirty list if it has no D bit left.
 */
static void
snap_finish (struct cache *c, struct page *p, struct frag **frags,
             bool *took_dirty, unsigned k)
{
  LOCK_ASSERT_HELD (&p->lock);
  LOCK_ASSERT_HELD (&c->wb_lock);
  for (unsigned i = 0; i < k; i++) {
    if (took_dirty[i]) {
      CACHE_ASSERT (p->dseq != SEQ_NONE);
      frags[i]->seq = p->dseq;
      ec_add (c, EC_RUN, p->dseq, 1);
    }
  }
  if (!page_has_dirty_idle (c, p))
    page_untag (c, p);
  if (p->nd == 0)
    unlist_page (c, p);
}

/* wb_lock held. */
static bool
busy_overlaps_locked (struct cache *c, uint64_t first_page, uint64_t last_page)
{
  LOCK_ASSERT_HELD (&c->wb_lock);
  for (struct busy_range *b = c->busy; b; b = b->next)
    if (b->first_page <= last_page && first_page <= b->last_page)
      return true;
  return false;
}

static bool
busy_overlaps (struct cache *c, uint64_t first_page, uint64_t last_page)
{
  bool r;

  if (atomic_load (&c->nbusy) == 0)
    return false;
  lock_take (&c->wb_lock);
  r = busy_overlaps_locked (c, first_page, last_page);
  lock_drop (&c->wb_lock);
  return r;
}

/* No lock held.  Waits until no TRIM or ZERO covers the pages. */
static void
busy_wait (struct cache *c, uint64_t first_page, uint64_t last_page)
{
  CACHE_ASSERT (!lock_held (&c->wb_lock));
  lock_take (&c->wb_lock);
  while (busy_overlaps_locked (c, first_page, last_page)) {
    atomic_fetch_add (&c->w_idle, 1);
    lock_wait (&c->wb_lock, &c->wb_cv);
    atomic_fetch_sub (&c->w_idle, 1);
  }
  lock_drop (&c->wb_lock);
}

void
wb_busy_begin (struct cache *c, struct busy_range *r)
{
  lock_take (&c->wb_lock);
  r->next = c->busy;
  c->busy = r;
  atomic_fetch_add (&c->nbusy, 1);
  atomic_fetch_add (&c->discard_started, 1);
  lock_drop (&c->wb_lock);
}

void
wb_busy_end (struct cache *c, struct busy_range *r)
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
  wb_progress (c);
  lock_drop (&c->wb_lock);
}

static void
submit_run (struct cache *c, struct cache_run *run)
{
  cache_submit_fn fn = atomic_load (&c->submit);

  if (fn)
    fn (atomic_load (&c->submit_opaque), c, run);
  else
    cache_run_io (c, run);
}

static int
cmp_page_index (const void *a, const void *b)
{
  const struct page *p = *(struct page *const *) a;
  const struct page *q = *(struct page *const *) b;
  return p->index < q->index ? -1 : p->index > q->index;
}

/* Collects one batch and submits its runs.  Returns the number of runs
 * (0: nothing collected) or -ENOMEM.
 */
int
wb_collect (struct cache *c, enum wb_pick how, uint64_t arg,
            uint64_t *ticket)
{
  struct page *picked[MAX_PICK];
  unsigned npicked = 0;
  uint64_t est = 0;
  struct batch *b;
  struct cache_run *run = NULL;
  uint64_t now = wb_now_ms (c);
  uint32_t cap, maxfrags;
  uint64_t seen = atomic_load (&c->wb_progress);
  unsigned own_events = 0;

  /* An empty collect accounts for the progress counted before it
   * looked (read first here, then under wb_lock when picking), plus its
   * own event at the end.
   */
  if (ticket)
    *ticket = seen;
  /* Bounded memory: while wb_buf_max bytes of snapshots are in flight,
   * collect nothing; the data stays dirty (writers are throttled by
   * dirty_ratio) and completions wake whoever waits for progress.
   */
  if (atomic_load (&c->wb_buf_bytes) >= c->wb_buf_max)
    return 0;

  /* Pick the oldest pages whose dirty data fills the batch, then sort
   * them by position so that neighbours merge into one run.
   */
  lock_take (&c->wb_lock);
  seen = atomic_load (&c->wb_progress);
  for (struct page *p = c->dirty_head;
       p && npicked < MAX_PICK && est < c->cfg.batch_bytes; p = p->dnext) {
    if (p->dseq == SEQ_NONE)
      continue;
    if (p->collecting) {
      c->wb_contended = true;           /* its collector will tell us */
      continue;
    }
    /* Not a break: pages that a collect left dirty are moved to the
     * tail below with their old date, so the list is not in date order.
     */
    if (how == PICK_EXPIRED && p->dirtied_ms + arg > now)
      continue;
    if (how == PICK_FLUSH && p->dseq > arg)
      continue;
    p->collecting = true;
    page_pin_more (p);                  /* the collector's pin */
    picked[npicked++] = p;
    est += (uint64_t) atomic_load_explicit (&p->nd, memory_order_relaxed)
      << c->sector_shift;
  }
  lock_drop (&c->wb_lock);
  if (ticket)
    *ticket = seen;
  if (npicked == 0)
    return 0;                           /* no batch, nobody to wake */

  /* Size the batch for what was picked (the pages are ours while
   * `collecting' is set), with no lock held.  Data dirtied since the
   * estimate that does not fit stays dirty for the next batch.
   */
  cap = (uint32_t) MIN (MAX (est, (uint64_t) c->cfg.sector_size),
                        (uint64_t) c->cfg.batch_bytes);
  maxfrags = (uint32_t) MIN ((uint64_t) npicked * 64,
                             (est >> c->sector_shift) + npicked);
  maxfrags = MAX (maxfrags, 1u);
  b = batch_new (c, cap, maxfrags);
  if (!b) {
    lock_take (&c->wb_lock);
    for (unsigned k = 0; k < npicked; k++)
      picked[k]->collecting = false;
    wb_progress (c);
    lock_drop (&c->wb_lock);
    for (unsigned k = 0; k < npicked; k++)
      page_unpin (c, picked[k]);
    return -ENOMEM;
  }

  qsort (picked, npicked, sizeof picked[0], cmp_page_index);

  for (unsigned k = 0; k < npicked; k++) {
    struct page *p = picked[k];
    struct frag *pf[64];
    bool took[64];
    unsigned nf = 0;
    uint64_t poff = page_offset (c, p);

    page_lock (p);
    if (!busy_overlaps (c, p->index, p->index)) {
      uint32_t i = 0;
      while (nf < 64 && b->nfrags < b->maxfrags && b->used < b->cap &&
             (i = sect_find_dirty_idle (&p->sb, i, c->nsect)) < c->nsect) {
        uint32_t j = sect_find (&p->sb, SECT_BM_D, false, i, c->nsect);
        uint32_t wj = sect_find (&p->sb, SECT_BM_W, true, i, c->nsect);
        uint32_t room = (b->cap - b->used) >> c->sector_shift;
        uint64_t off;
        struct frag *f;

        j = MIN (MIN (j, wj), i + room);
        if (j == i)
          break;
        off = poff + ((uint64_t) i << c->sector_shift);
        f = &b->frags[b->nfrags];
        if (!run || run->off + run->len != off) {
          run = &b->runs[b->nruns++];
          run->batch = b;
          run->off = off;
          run->len = 0;
          run->flags = 0;
          run->data = b->buf + b->used;
          run->frags = f;
          run->nfrags = 0;
        }
        took[nf] = snap_range (c, p, i, j - i, f, b->buf + b->used);
        f->run = run;
        pf[nf++] = f;
        b->nfrags++;
        run->nfrags++;
        run->len += (j - i) << c->sector_shift;
        b->used += (j - i) << c->sector_shift;
        i = j;
      }
    }
    lock_take (&c->wb_lock);
    snap_finish (c, p, pf, took, nf);
    p->collecting = false;
    if (p->listed && p->dnext) {   /* rotate: let others go next */
      list_remove (c, p);
      p->dprev = c->dirty_tail;
      c->dirty_tail->dnext = p;
      c->dirty_tail = p;
    }
    lock_drop (&c->wb_lock);
    CACHE_ASSERT (page_check (c, p));
    page_unlock (p);
    /* A run continues into the next page only if it is contiguous on
     * disk (checked when the next fragment is added); the batch buffer
     * is filled in order, so it is then contiguous in memory too.
     */
  }

  for (unsigned k = 0; k < npicked; k++)
    page_unpin (c, picked[k]);

  lock_take (&c->wb_lock);
  if (c->wb_contended) {                /* collecting flags cleared */
    c->wb_contended = false;
    wb_progress (c);
    own_events++;
  }
  lock_drop (&c->wb_lock);

  /* Every W bit of the batch is set: now submit. */
  atomic_fetch_add (&b->pending, b->nruns);
  atomic_fetch_add (&c->runs_in_flight, b->nruns);
  atomic_fetch_add (&c->st_runs, b->nruns);
  {
    unsigned nruns = b->nruns;
    for (unsigned r = 0; r < nruns; r++) {
      struct cache_run *run = &b->runs[r];
      run->blen = (uint32_t) MIN ((uint64_t) run->len, c->cfg.size - run->off);
      cache_debug (c, "writeback: run %" PRIu64 "+%u (%u frags)",
                   b->runs[r].off, b->runs[r].len, b->runs[r].nfrags);
      submit_run (c, &b->runs[r]);
    }
    /* Drop the bias.  The collect's own progress events (the one
     * above, and the batch's free if it happens here) are part of what
     * an empty collect accounts for.
     */
    own_events += batch_put (b);
    if (ticket)
      *ticket = seen + own_events;
    return (int) nruns;
  }
}

int
cache_writeback (struct cache *c, enum cache_wb_reason why, uint64_t expire_ms)
{
  switch (why) {
  case CACHE_WB_EXPIRED: return wb_collect (c, PICK_EXPIRED, expire_ms, NULL);
  case CACHE_WB_BACKGROUND: return wb_collect (c, PICK_BACKGROUND, 0, NULL);
  default: abort ();
  }
}

/* Dirty memory, for the background threshold and the throttle: pages
 * holding any D or W sector, at their full size.  Such a page cannot be
 * reclaimed, whatever its number of dirty sectors, so counting dirty
 * bytes instead would let scattered small writes pin every page while
 * staying under both thresholds (like Linux, which counts dirty pages).
 */
static uint64_t
dirty_mem (struct cache *c)
{
  return (uint64_t) atomic_load (&c->st_dpages) << c->page_shift;
}

bool
cache_over_background (struct cache *c)
{
  return dirty_mem (c) > c->bg_limit;
}

uint64_t
cache_run_offset (const struct cache_run *run)
{
  return run->off;
}

/* The backend length: whole sectors, except that the last sector of
 * a disk whose size is not a multiple of the sector size is cut at the
 * end of the disk.
 */
uint32_t
cache_run_length (const struct cache_run *run)
{
  return run->blen;
}

const void *
cache_run_data (const struct cache_run *run)
{
  return run->data;
}

uint32_t
cache_run_flags (const struct cache_run *run)
{
  return run->flags;
}

void
cache_run_account (struct cache *c, const struct cache_run *run)
{
  atomic_fetch_add (&c->st_bwrites, 1);
  atomic_fetch_add (&c->st_bwrite_bytes, run->blen);
}

int
cache_run_io (struct cache *c, struct cache_run *run)
{
  int r = c->ops->pwrite (c->bopaque, run->data, run->blen, run->off,
                          run->flags);

  cache_run_account (c, run);
  cache_run_done (c, run, r);
  return r;
}

void
cache_run_done (struct cache *c, struct cache_run *run, int err)
{
  bool ok = err == 0, wake = false;

  if (!ok) {
    atomic_fetch_add (&c->st_wb_errors, 1);
    cache_logf (c, CACHE_LOG_ERROR,
                "write-back of %" PRIu64 "+%u failed: %s (kept dirty)",
                run->off, run->len, errstr (-err));
  }
  for (uint32_t i = 0; i < run->nfrags; i++) {
    struct frag *f = &run->frags[i];
    struct page *p = f->page;
    struct sect_delta d = { 0 };
    struct frag **pp;
    uint64_t t;

    page_lock (p);
    CACHE_ASSERT (page_check (c, p));
    sect_wb_end (&p->sb, f->first, f->n, ok, &d);
    cache_account (c, p, &d);
    for (pp = &p->frags; *pp != f; pp = &(*pp)->pnext)
      CACHE_ASSERT (*pp != NULL);
    *pp = f->pnext;

    lock_take (&c->wb_lock);
    if (ec_add (c, EC_RUN, f->seq, -1))
      wake = true;
    if (ec_add (c, EC_RUN, f->rseq, -1))
      wake = true;
    if (ok)
      t = f->rseq;                      /* REDIRTIED -> DIRTY */
    else {
      t = MIN (f->seq, f->rseq);        /* everything -> DIRTY */
      if (t == SEQ_NONE)
        t = c->epoch;                   /* a clean rewrite failed */
    }
    if (t != SEQ_NONE) {
      page_tag (c, p, t);
      list_page (c, p);
      wb_progress (c);                  /* a flush may need to collect */
    }
    if (!ok) {
      wake = true;
      if (c->wb_err == 0)
        c->wb_err = err;
      c->wb_last_err = err;
      c->wb_err_gen++;
      c->wb_failing = true;
    }
    else
      c->wb_failing = false;
    lock_drop (&c->wb_lock);

    CACHE_ASSERT (page_check (c, p));
    /* Waiters (TRIM, ZERO, FUA) wait for W to clear in their own range,
     * not in the whole page: each completion wakes them to re-check, so
     * steady write-back of other sectors of the page cannot starve them.
     */
    page_wake (p);
    page_unlock (p);
    page_unpin (c, p);                  /* the fragment's pin */
  }

  /* Wake waiters on wb_cv only when what they wait for may have
   * changed: a flush waits for an epoch's count to reach zero, for data
   * to come back to a page (to collect it) or for an error; throttled
   * writers for dirty memory to drop.  Waking a flush on every one of
   * the runs it waits for would cost a context switch each.
   */
  if (atomic_fetch_sub (&c->runs_in_flight, 1) == 1)
    wake = true;
  /* Throttled writers wait for dirty memory to drop under dirty_limit:
   * waking all of them on every run while it is still over made each
   * run cost a context switch per throttled writer.
   */
  if (wake || (atomic_load (&c->w_throttle) > 0 &&
               dirty_mem (c) < c->dirty_limit)) {
    lock_take (&c->wb_lock);
    pthread_cond_broadcast (&c->wb_cv);
    lock_drop (&c->wb_lock);
  }
  batch_put (run->batch);
}

/* ---- kicking and throttling ---- */

void
wb_kick (struct cache *c)
{
  cache_kick_fn fn = atomic_load (&c->kick);

  if (fn)
    fn (atomic_load (&c->kick_opaque));
  else                                  /* no server: write back ourselves */
    wb_collect (c, PICK_BACKGROUND, 0, NULL);
}

int
wb_throttle (struct cache *c)
{
  bool counted = false;
  int r = 0;

  if (dirty_mem (c) < c->dirty_limit)
    return 0;
  while (dirty_mem (c) >= c->dirty_limit) {
    struct timespec ts;

    if (!counted) {
      atomic_fetch_add (&c->st_throttled, 1);
      counted = true;
    }
    wb_kick (c);
    lock_take (&c->wb_lock);
    if (c->wb_failing && atomic_load (&c->runs_in_flight) == 0) {
      r = c->wb_err ? c->wb_err : -EIO;
      lock_drop (&c->wb_lock);
      break;
    }
    /* Counted before the check: cache_run_done lowers dirty memory and
     * then reads w_throttle, so it either sees us or we see the lower
     * figure (sequentially consistent atomics on both sides).
     */
    atomic_fetch_add (&c->w_throttle, 1);
    if (dirty_mem (c) >= c->dirty_limit) {
      clock_gettime (CLOCK_REALTIME, &ts);
      ts.tv_sec += 1;                   /* re-kick at least every second */
      lock_timedwait (&c->wb_lock, &c->wb_cv, &ts);
    }
    atomic_fetch_sub (&c->w_throttle, 1);
    lock_drop (&c->wb_lock);
  }
  return r;
}

/* ---- FUA and write-through ---- */

/* Writes RUN synchronously and completes it; returns its result. */
static int
sync_run_io (struct cache *c, struct cache_run *run)
{
  int r;

  atomic_fetch_add (&run->batch->pending, 1);
  atomic_fetch_add (&c->runs_in_flight, 1);
  atomic_fetch_add (&c->st_runs, 1);
  run->blen = (uint32_t) MIN ((uint64_t) run->len, c->cfg.size - run->off);
  r = c->ops->pwrite (c->bopaque, run->data, run->blen, run->off, run->flags);
  atomic_fetch_add (&c->st_bwrites, 1);
  atomic_fetch_add (&c->st_bwrite_bytes, run->blen);
  cache_run_done (c, run, r);
  return r;
}

/* Writes the runs b->runs[*nsub..nruns) (built, not yet submitted)
 * synchronously; returns the first error.
 */
static int
sync_submit (struct cache *c, struct batch *b, uint32_t *nsub)
{
  int err = 0;

  while (*nsub < b->nruns) {
    int r = sync_run_io (c, &b->runs[(*nsub)++]);
    err = err ? err : r;
  }
  return err;
}

/* Writes [off, off+count) back with FLAGS.  Per page: waits until no
 * sector of the range is in flight and no TRIM or ZERO covers the page
 * (submitting what it has built first: it never waits holding W bits
 * it has not submitted), then snapshots every valid sector of the range
 * (CLEAN or DIRTY -> WRITEBACK).  A sector that is not valid was
 * dropped by a TRIM or ZERO that ran after the write, or its page was
 * written back and evicted: the backend holds what it should, and only
 * a backend flush is needed for it (FUA).
 */
int
wb_sync_range (struct cache *c, uint64_t off, uint64_t count, uint32_t flags)
{
  uint64_t a = ROUND_DOWN (off, (uint64_t) c->cfg.sector_size);
  uint64_t e = ROUND_UP (off + count, (uint64_t) c->cfg.sector_size);
  uint64_t p0 = a >> c->page_shift, p1 = (e - 1) >> c->page_shift;
  uint32_t nsect = (uint32_t) ((e - a) >> c->sector_shift);
  /* At most one run per page, plus one per gap a discard left. */
  uint32_t maxfrags = (uint32_t) MIN ((uint64_t) nsect,
                                      (p1 - p0 + 1) + nsect / 2);
  struct batch *b = batch_new (c, (uint32_t) (e - a), maxfrags);
  struct cache_run *run = NULL;
  uint32_t nsub = 0;
  bool need_flush = false;
  int err = 0;

  if (!b)
    return -ENOMEM;

  for (uint64_t pi = p0; pi <= p1; pi++) {
    uint64_t poff = pi << c->page_shift;
    uint64_t lo = MAX (a, poff), hi = MIN (e, poff + c->cfg.page_size);
    uint32_t s0 = (uint32_t) ((lo - poff) >> c->sector_shift);
    uint32_t n = (uint32_t) ((hi - lo) >> c->sector_shift);
    struct page *p = page_find (c, pi);

    if (!p) {                           /* written back and evicted */
      need_flush = true;
      run = NULL;
      continue;
    }
    page_lock (p);
    for (;;) {
      bool busy = busy_overlaps (c, pi, pi);
      bool inflight = sect_count (&p->sb, SECT_BM_W, s0, n) > 0;
      if (!busy && !inflight)
        break;
      if (nsub < b->nruns) {            /* submit before waiting */
        int r;

        page_unlock (p);
        r = sync_submit (c, b, &nsub);  /* whatever an earlier run did */
        err = err ? err : r;
        run = NULL;
        page_lock (p);
        continue;
      }
      if (inflight)
        page_wait (c, p, &c->w_idle);
      else {
        page_unlock (p);
        busy_wait (c, pi, pi);
        page_lock (p);
      }
    }
    /* The runs of earlier pages may have been submitted while waiting:
     * a run continues only from this page's first sector on.
     */
    if (run && run->off + run->len != lo)
      run = NULL;
    for (uint32_t i = s0, j; i < s0 + n; i = j) {
      bool v = sect_test (&p->sb, SECT_BM_V, i);
      uint64_t soff = poff + ((uint64_t) i << c->sector_shift);
      struct frag *f;
      bool took;

      j = sect_find (&p->sb, SECT_BM_V, !v, i, s0 + n);
      if (!v) {                         /* dropped by a TRIM or ZERO */
        need_flush = true;
        run = NULL;
        continue;
      }
      CACHE_ASSERT (b->nfrags < b->maxfrags);
      f = &b->frags[b->nfrags++];
      if (!run) {
        run = &b->runs[b->nruns++];
        run->batch = b;
        run->off = soff;
        run->len = 0;
        run->flags = flags & CACHE_FUA;
        run->data = b->buf + (soff - a);
        run->frags = f;
        run->nfrags = 0;
      }
      took = snap_range (c, p, i, j - i, f, b->buf + (soff - a));
      f->run = run;
      run->nfrags++;
      run->len += (j - i) << c->sector_shift;
      lock_take (&c->wb_lock);
      snap_finish (c, p, &f, &took, 1);
      lock_drop (&c->wb_lock);
    }
    page_unlock (p);
    page_unpin (c, p);
  }
  {
    int r = sync_submit (c, b, &nsub);  /* every run built is submitted */
    err = err ? err : r;
  }
  batch_put (b);

  if (!err && need_flush && (flags & CACHE_FUA)) {
    err = c->ops->flush (c->bopaque);
    atomic_fetch_add (&c->st_bflushes, 1);
  }
  return err;
}
