/* subpage: write-back: batches, runs and their completion.
 *
 * What it does.  Collects DIRTY sectors (D and not W) into batches,
 * snapshots them and submits one backend write ("run") per contiguous
 * range, merging ranges that continue across page boundaries; completes
 * runs in any order; writes ranges back synchronously for FUA and
 * write-through; throttles writers over the dirty limit.  The state
 * under wb_lock that this works on (the dirty list, epoch tags, TRIM and
 * ZERO ranges, collect progress) is dirty.c's; flush is flush.c's.
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
 *    submitted.  Completion clears only its own fragments' W bits; the
 *    page leaves write-back when its W bitmap is empty, and every
 *    completion wakes the page's waiters to re-check their own range.
 *  - One write per sector in flight (3): collectors take only D&~W
 *    sectors; FUA waits for W to clear before snapshotting.
 *  - Errors keep data (7): a failed run sets D again on its sectors,
 *    re-tags them with their old epoch and records the errno, which the
 *    next flush reports (once, like Linux's errseq).  A flush that sees
 *    a new error stops retrying, waits for its in-flight runs, and fails.
 *  - Flush (6): see flush.c.
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

static void wb_want_frames (struct cache *c);

void
wb_init (struct cache *c)
{
  lock_init (&c->wb_lock);
  pthread_cond_init (&c->wb_cv, NULL);
  lock_init (&c->gc_lock);
  pthread_cond_init (&c->gc_cv, NULL);
  dirty_init (c);
  c->want_writeback = wb_want_frames;
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
  b->frags = malloc (maxfrags * sizeof *b->frags); /* set when used */
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
  atomic_store (&b->pending, 1); /* the submitter's bias */
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
      dirty_progress (c); /* a collector may use the room */
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
  report_account (c, p, &d);
  f->page = p;
  f->first = first;
  f->n = n;
  f->seq = f->rseq = SEQ_NONE;
  f->pnext = p->frags;
  p->frags = f;
  page_pin_more (p); /* the fragment's pin */
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
      dirty_count (c, DIRTY_IN_RUN, p->dseq, 1);
    }
  }
  if (!dirty_idle (c, p))
    dirty_untag (c, p);
  if (p->nd == 0)
    dirty_unlist (c, p);
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

/* Sets RUN's backend length (cut at the end of the image), or marks it
 * past the end when it reaches past wb_end or starts past the size: it
 * is then not written (resize.c).  Reads size before wb_end, the
 * reverse of the order resize_locked stores them in.
 */
static bool
run_fits (struct cache *c, struct cache_run *run)
{
  uint64_t size = size_now (c), wb_end = size_wb_end (c);

  run->past_end = run->off >= size || run->off + run->len > wb_end;
  run->blen =
    run->past_end ? 0 : (uint32_t) MIN ((uint64_t) run->len, size - run->off);
  return !run->past_end;
}

/* Completes RUN, which is past the image's end, as failed, with no I/O
 * (resize.c).
 */
static void
run_past_end (struct cache *c, struct cache_run *run)
{
  report_debug (c,
                "writeback: run %" PRIu64 "+%u is past the end (%" PRIu64
                "): not written",
                run->off, run->len, size_now (c));
  atomic_fetch_add (&c->ctr.wb_past_end, 1);
  cache_run_done (c, run, -EIO);
}

/* A new run of B at disk offset OFF, its data at DATA, its first
 * fragment F (runs are contiguous on disk and in B's buffer).
 */
static struct cache_run *
run_new (struct batch *b, uint64_t off, char *data, struct frag *f,
         uint32_t flags)
{
  struct cache_run *run = &b->runs[b->nruns++];

  run->batch = b;
  run->off = off;
  run->len = 0;
  run->flags = flags;
  run->data = data;
  run->frags = f;
  run->nfrags = 0;
  run->past_end = false;
  return run;
}

/* One collect: the pages it picked and what it saw of progress. */
struct collect {
  struct page *picked[MAX_PICK];
  unsigned npicked;
  uint64_t est;        /* bytes of D sectors when picked */
  uint64_t seen;       /* c->progress when it picked */
  unsigned own_events; /* progress events it reported itself */
  bool vanished;       /* a picked page, not in a TRIM or ZERO,
                                 * had nothing left to take */
};

/* Adds P, which K has marked `collecting' and holds a pin of, to K's
 * picks.
 */
static void
collect_take (struct cache *c, struct collect *k, struct page *p)
{
  k->picked[k->npicked++] = p;
  k->est += (uint64_t) atomic_load_explicit (&p->nd, memory_order_relaxed)
            << c->sector_shift;
}

/* wb_lock held.  May a collect of HOW (with ARG, at NOW) take P, which
 * no collector has?
 */
static bool
pick_ok (struct cache *c, struct page *p, enum wb_pick how, uint64_t arg,
         uint64_t now)
{
  LOCK_ASSERT_HELD (&c->wb_lock);
  if (p->dseq == SEQ_NONE)
    return false;
  /* A page inside a TRIM or ZERO can give nothing now, and picking it
   * would cost a batch whose free wakes other flushes for nothing;
   * the range's end is progress (dirty_busy_end).
   */
  if (dirty_busy_overlaps_locked (c, p->index, p->index))
    return false;
  if (how == PICK_EXPIRED && p->dirtied_ms + arg > now)
    return false;
  if (how == PICK_FLUSH && p->dseq > arg)
    return false;
  return true;
}

/* Picks, under wb_lock, the oldest pages HOW selects (PICK_EXPIRED:
 * dirty for ARG ms; PICK_FLUSH: tag <= ARG) until their dirty data
 * fills a batch, and marks them `collecting' (with a pin each).  A page
 * another collector has is skipped, and marked so that its collector
 * reports when it is done with it.
 */
static void
collect_pick (struct cache *c, struct collect *k, enum wb_pick how,
              uint64_t arg)
{
  uint64_t now = dirty_now_ms (c);

  lock_take (&c->wb_lock);
  k->seen = atomic_load (&c->progress);
  for (struct page *p = c->dirty_head;
       p && k->npicked < MAX_PICK && k->est < c->cfg.batch_bytes;
       p = p->dnext) {
    if (p->dseq == SEQ_NONE)
      continue;
    if (p->collecting) {
      p->skipped = true; /* its collector will tell us */
      continue;
    }
    /* Not a break when HOW refuses it: a collect that leaves a page
     * dirty moves it to the tail with its old date, so the list is not
     * in date order.
     */
    if (!pick_ok (c, p, how, arg, now))
      continue;
    p->collecting = true;
    page_pin_more (p); /* the collector's pin */
    collect_take (c, k, p);
  }
  lock_drop (&c->wb_lock);
}

/* wb_lock held.  K is done with P, which it had marked `collecting'
 * (its pin is dropped by the caller, after wb_lock).
 */
static void
unpick_locked (struct cache *c, struct collect *k, struct page *p)
{
  LOCK_ASSERT_HELD (&c->wb_lock);
  p->collecting = false;
  if (p->skipped) { /* someone wanted it meanwhile */
    p->skipped = false;
    dirty_progress (c);
    k->own_events++;
  }
}

/* Trades the youngest picks of K for the pages that follow the oldest
 * ones on disk.  Writers side by side (a sequential stream at queue
 * depth 8) interleave their pages in the dirty list, so the oldest
 * pages alone make runs of a few pages each.  Walking up the disk from
 * each pick in age order, and taking the next page while HOW would
 * take it, fills the batch with long runs instead, as the kernel's
 * write-back clusters a file's pages.  No lock held: a page is looked
 * up with page_find, whose pin becomes the collector's.
 */
static void
collect_cluster (struct cache *c, struct collect *k, enum wb_pick how,
                 uint64_t arg)
{
  struct page *seeds[MAX_PICK];
  bool taken[MAX_PICK] = { false };
  unsigned nseeds = k->npicked, left = 0;
  uint64_t now = dirty_now_ms (c);

  memcpy (seeds, k->picked, nseeds * sizeof seeds[0]);
  k->npicked = 0;
  k->est = 0;
  for (unsigned s = 0; s < nseeds; s++) {
    /* The walks may have filled K's picks (MAX_PICK) before the batch:
     * the picks left are given back below.
     */
    if (taken[s] || k->est >= c->cfg.batch_bytes || k->npicked >= MAX_PICK)
      continue;
    taken[s] = true;
    collect_take (c, k, seeds[s]);
    for (uint64_t idx = seeds[s]->index + 1;
         k->est < c->cfg.batch_bytes && k->npicked < MAX_PICK; idx++) {
      struct page *q = page_find (c, idx);
      bool busy, ok = false;
      unsigned t = 0;

      if (!q)
        break;
      lock_take (&c->wb_lock);
      busy = q->collecting;
      if (!busy && pick_ok (c, q, how, arg, now))
        ok = q->collecting = true;
      lock_drop (&c->wb_lock);
      if (ok) {
        collect_take (c, k, q); /* page_find's pin is the collector's */
        continue;
      }
      page_unpin (c, q);
      if (!busy)
        break;
      /* A younger pick of K's own continues the run; another
       * collector's page ends it.
       */
      while (t < nseeds && seeds[t] != q)
        t++;
      if (t == nseeds || taken[t])
        break;
      taken[t] = true;
      collect_take (c, k, q);
    }
  }
  for (unsigned s = 0; s < nseeds; s++) {
    if (taken[s])
      continue;
    if (left++ == 0)
      lock_take (&c->wb_lock);
    unpick_locked (c, k, seeds[s]);
  }
  if (left == 0)
    return;
  lock_drop (&c->wb_lock);
  for (unsigned s = 0; s < nseeds; s++)
    if (!taken[s])
      page_unpin (c, seeds[s]);
}

/* Page locked.  Snapshots P's DIRTY sectors into B as far as its room
 * goes, continuing *RUN where it is contiguous on disk (B's buffer is
 * filled in disk order, so the run is then contiguous in memory too).
 * Fills PF and TOOK (for snap_finish); returns how many fragments.
 */
static unsigned
collect_page (struct cache *c, struct batch *b, struct page *p,
              struct cache_run **run, struct frag **pf, bool *took)
{
  uint64_t poff = page_offset (c, p), wb_end = size_wb_end (c);
  /* The sector of P where write-back stops, if it is in P: runs end
   * there, so that the data before it is written (run_fits).
   */
  uint32_t es = wb_end <= poff
                  ? 0
                  : (uint32_t) MIN ((wb_end - poff) >> c->sector_shift,
                                    (uint64_t) c->nsect);
  unsigned nf = 0;
  uint32_t i = 0;

  LOCK_ASSERT_HELD (&p->lock);
  while (nf < 64 && b->nfrags < b->maxfrags && b->used < b->cap &&
         (i = sect_find_dirty_idle (&p->sb, i, c->nsect)) < c->nsect) {
    uint32_t j = sect_find (&p->sb, SECT_BM_D, false, i, c->nsect);
    uint32_t wj = sect_find (&p->sb, SECT_BM_W, true, i, c->nsect);
    uint32_t room = (b->cap - b->used) >> c->sector_shift;
    uint64_t off = poff + ((uint64_t) i << c->sector_shift);
    struct frag *f = &b->frags[b->nfrags];

    j = MIN (MIN (j, wj), i + room);
    if (i < es)
      j = MIN (j, es);
    if (j == i)
      break;
    if (!*run || (*run)->off + (*run)->len != off || off == wb_end)
      *run = run_new (b, off, b->buf + b->used, f, 0);
    took[nf] = snap_range (c, p, i, j - i, f, b->buf + b->used);
    f->run = *run;
    pf[nf++] = f;
    b->nfrags++;
    (*run)->nfrags++;
    (*run)->len += (j - i) << c->sector_shift;
    b->used += (j - i) << c->sector_shift;
    i = j;
  }
  return nf;
}

/* Snapshots every picked page into B (in disk order, so neighbours
 * merge into one run), and gives the pages back.
 */
static void
collect_pages (struct cache *c, struct collect *k, struct batch *b)
{
  struct cache_run *run = NULL;

  qsort (k->picked, k->npicked, sizeof k->picked[0], cmp_page_index);
  for (unsigned n = 0; n < k->npicked; n++) {
    struct page *p = k->picked[n];
    struct frag *pf[64];
    bool took[64];
    unsigned nf = 0;

    page_lock (p);
    if (!dirty_busy_overlaps (c, p->index, p->index)) {
      nf = collect_page (c, b, p, &run, pf, took);
      if (nf == 0 && b->used < b->cap)
        k->vanished = true; /* written back meanwhile */
    }
    lock_take (&c->wb_lock);
    snap_finish (c, p, pf, took, nf);
    unpick_locked (c, k, p);
    dirty_rotate (c, p); /* let other pages go next */
    lock_drop (&c->wb_lock);
    CACHE_ASSERT (page_check (c, p));
    page_unlock (p);
  }
  for (unsigned n = 0; n < k->npicked; n++)
    page_unpin (c, k->picked[n]);
}

/* Every W bit of B is set: submits its runs and drops the submitter's
 * bias.  Returns the number of runs.
 */
static unsigned
collect_submit (struct cache *c, struct collect *k, struct batch *b)
{
  unsigned nruns = b->nruns;

  atomic_fetch_add (&b->pending, nruns);
  atomic_fetch_add (&c->runs_in_flight, nruns);
  atomic_fetch_add (&c->ctr.wb_runs, nruns);
  for (unsigned r = 0; r < nruns; r++) {
    struct cache_run *run = &b->runs[r];

    run->t0_ns = report_now_ns ();
    if (!run_fits (c, run)) {
      run_past_end (c, run);
      continue;
    }
    report_debug (c, "writeback: run %" PRIu64 "+%u (%u frags)", run->off,
                  run->len, run->nfrags);
    submit_run (c, run);
  }
  /* The batch's free, if it happens here, is one of the collect's own
   * progress events.
   */
  k->own_events += batch_put (b);
  return nruns;
}

/* Collects one batch and submits its runs.  Returns the number of runs
 * (0: nothing collected) or -ENOMEM.  A collect whose picks were all
 * written back by someone else meanwhile (a FUA write) picks again:
 * the pages it did not pick because of them may be waiting.
 */
int
wb_collect (struct cache *c, enum wb_pick how, uint64_t arg, uint64_t *ticket)
{
  if (c->jnl) /* the journal's drainer writes back, not collectors */
    return 0;
  for (;;) {
    struct collect k = { .npicked = 0 };
    struct batch *b;
    uint32_t cap, maxfrags;
    unsigned nruns;

    /* An empty collect accounts for the progress counted before it
     * looked (read first here, then under wb_lock when picking), plus
     * the events it reported itself.
     */
    k.seen = atomic_load (&c->progress);
    if (ticket)
      *ticket = k.seen;
    /* Bounded memory: while wb_buf_max bytes of snapshots are in
     * flight, collect nothing; the data stays dirty (writers are
     * throttled by dirty_ratio) and completions wake whoever waits.
     */
    if (atomic_load (&c->wb_buf_bytes) >= c->wb_buf_max)
      return 0;
    collect_pick (c, &k, how, arg);
    if (ticket)
      *ticket = k.seen;
    if (k.npicked == 0)
      return 0; /* no batch, nobody to wake */
    collect_cluster (c, &k, how, arg);
    CACHE_PARK (c, "collect.picked");
    cache_refresh_size (c); /* before wb_end cuts the runs */

    /* Size the batch for what was picked (the pages are ours while
     * `collecting' is set), with no lock held.  Data dirtied since the
     * estimate that does not fit stays dirty for the next batch.
     */
    cap = (uint32_t) MIN (MAX (k.est, (uint64_t) c->cfg.sector_size),
                          (uint64_t) c->cfg.batch_bytes);
    maxfrags = (uint32_t) MIN ((uint64_t) k.npicked * 64,
                               (k.est >> c->sector_shift) + k.npicked);
    b = batch_new (c, cap, MAX (maxfrags, 1u));
    if (!b) {
      lock_take (&c->wb_lock);
      for (unsigned n = 0; n < k.npicked; n++)
        k.picked[n]->collecting = k.picked[n]->skipped = false;
      dirty_progress (c);
      lock_drop (&c->wb_lock);
      for (unsigned n = 0; n < k.npicked; n++)
        page_unpin (c, k.picked[n]);
      return -ENOMEM;
    }
    collect_pages (c, &k, b);
    nruns = collect_submit (c, &k, b);
    if (nruns == 0 && k.vanished)
      continue;
    if (ticket)
      *ticket = k.seen + k.own_events;
    return (int) nruns;
  }
}

int
cache_writeback (struct cache *c, enum cache_wb_reason why, uint64_t expire_ms)
{
  if (c->jnl)
    return jnl_drain (c); /* write-back comes from the journal */
  switch (why) {
  case CACHE_WB_EXPIRED: return wb_collect (c, PICK_EXPIRED, expire_ms, NULL);
  case CACHE_WB_BACKGROUND: return wb_collect (c, PICK_BACKGROUND, 0, NULL);
  default: abort ();
  }
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
  atomic_fetch_add (&c->ctr.backend_writes, 1);
  atomic_fetch_add (&c->ctr.backend_write_bytes, run->blen);
}

bool
cache_run_start (struct cache *c, struct cache_run *run)
{
  if (run_fits (c, run))
    return true;
  run_past_end (c, run);
  return false;
}

int
cache_run_io (struct cache *c, struct cache_run *run)
{
  int r;

  if (!cache_run_start (c, run))
    return -ERANGE;
  r = c->ops->pwrite (c->bopaque, run->data, run->blen, run->off, run->flags);

  cache_run_account (c, run);
  cache_run_done (c, run, r);
  return r;
}

void
cache_run_done (struct cache *c, struct cache_run *run, int err)
{
  bool ok = err == 0, wake = false;

  /* Every path (cache_run_io, sync_run_io, an asynchronous backend)
   * ends here: the run's time from submission to completion.
   */
  report_latency (&c->hist.backend_write_latency,
                  report_now_ns () - run->t0_ns);
  if (!ok) {
    atomic_fetch_add (&c->ctr.wb_errors, 1);
    if (!run->past_end) { /* the resize said so, once */
      bool first = !atomic_exchange (&c->wb_fail_logged, true);
      report_logf (c, first ? CACHE_LOG_ERROR : CACHE_LOG_DEBUG,
                   "write-back of %" PRIu64 "+%u failed: %s (kept dirty%s)",
                   run->off, run->len, errstr (-err),
                   first ? "; more failures are logged at debug level until "
                           "a write-back succeeds"
                         : "");
    }
  }
  else if (atomic_load_explicit (&c->wb_fail_logged, memory_order_relaxed))
    atomic_store (&c->wb_fail_logged, false);
  for (uint32_t i = 0; i < run->nfrags; i++) {
    struct frag *f = &run->frags[i];
    struct page *p = f->page;
    struct sect_delta d = { 0 };
    struct frag **pp;
    uint64_t t;

    page_lock (p);
    CACHE_ASSERT (page_check (c, p));
    sect_wb_end (&p->sb, f->first, f->n, ok, &d);
    report_account (c, p, &d);
    for (pp = &p->frags; *pp != f; pp = &(*pp)->pnext)
      CACHE_ASSERT (*pp != NULL);
    *pp = f->pnext;

    lock_take (&c->wb_lock);
    if (dirty_count (c, DIRTY_IN_RUN, f->seq, -1))
      wake = true;
    if (dirty_count (c, DIRTY_IN_RUN, f->rseq, -1))
      wake = true;
    if (ok)
      t = f->rseq; /* REDIRTIED -> DIRTY */
    else {
      t = MIN (f->seq, f->rseq); /* everything -> DIRTY */
      if (t == SEQ_NONE)
        t = c->epoch; /* a clean rewrite failed */
    }
    if (t != SEQ_NONE) {
      dirty_tag (c, p, t);
      dirty_list (c, p);
      dirty_progress (c); /* a flush may need to collect */
    }
    if (!ok) {
      wake = true;
      if (c->wb_err == 0) {
        c->wb_err = err;
        c->wb_err_quiet = run->past_end;
      }
      c->wb_last_err = err;
      c->wb_last_quiet = run->past_end;
      c->wb_err_gen++;
      /* Not for data past the end: writers and frame waiters would fail
       * for data they cannot help (dirty_mem leaves it out instead).
       */
      if (!run->past_end)
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
    page_unpin (c, p); /* the fragment's pin */
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
   * waking all of them on every run while it is still over would cost
   * each run a context switch per throttled writer.
   */
  if (wake ||
      (atomic_load (&c->w_throttle) > 0 && dirty_mem (c) < c->dirty_limit)) {
    lock_take (&c->wb_lock);
    pthread_cond_broadcast (&c->wb_cv);
    lock_drop (&c->wb_lock);
  }
  batch_put (run->batch);
}

void
wb_kick (struct cache *c)
{
  cache_kick_fn fn = atomic_load (&c->kick);

  if (fn)
    fn (atomic_load (&c->kick_opaque));
  else if (c->jnl) /* no server: write back ourselves */
    jnl_drain (c);
  else
    wb_collect (c, PICK_BACKGROUND, 0, NULL);
}

/* The upcall of page.c when no frame can be evicted.  With a journal,
 * dirty pages may leave RAM once their records are durable: sync them
 * (one group commit) before asking the drainer for more.
 */
static void
wb_want_frames (struct cache *c)
{
  if (c->jnl)
    jnl_sync_all (c); /* a failure is sticky: flushes report it */
  wb_kick (c);
}

int
wb_throttle (struct cache *c)
{
  bool counted = false;
  uint64_t t0 = 0;
  int r = 0;

  while (dirty_mem (c) >= c->dirty_limit) {
    struct timespec ts;

    /* With a journal, dirty pages leave RAM once durable (page.c): the
     * journal's space throttles writers (jnl_credit), not RAM, while
     * the index has room, so the wait is for the index's room.  Once a
     * drain step freed it, pages may leave RAM again; the drainer may
     * find no step due then (journal-background-ratio=), and the pages
     * in RAM stay dirty until their records expire.
     */
    if (c->jnl && jnl_index_room (c))
      break;
    if (!counted) {
      atomic_fetch_add (&c->ctr.throttled, 1);
      t0 = report_now_ns ();
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
    /* A step that frees the index broadcasts after it (dirty_progress,
     * from drain_recovered, under wb_lock).
     */
    if (dirty_mem (c) >= c->dirty_limit && !(c->jnl && jnl_index_room (c))) {
      clock_gettime (CLOCK_REALTIME, &ts);
      ts.tv_sec += 1; /* re-kick at least every second */
      lock_timedwait (&c->wb_lock, &c->wb_cv, &ts);
    }
    atomic_fetch_sub (&c->w_throttle, 1);
    lock_drop (&c->wb_lock);
  }
  if (counted) /* only writers that waited */
    report_latency (&c->hist.throttle_latency, report_now_ns () - t0);
  return r;
}

/* Writes RUN synchronously and completes it; returns its result. */
static int
sync_run_io (struct cache *c, struct cache_run *run)
{
  int r;

  atomic_fetch_add (&run->batch->pending, 1);
  atomic_fetch_add (&c->runs_in_flight, 1);
  atomic_fetch_add (&c->ctr.wb_runs, 1);
  run->t0_ns = report_now_ns ();
  if (!run_fits (c, run)) {
    run_past_end (c, run);
    return -ERANGE;
  }
  r = c->ops->pwrite (c->bopaque, run->data, run->blen, run->off, run->flags);
  cache_run_account (c, run);
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
  cache_refresh_size (c);

  for (uint64_t pi = p0; pi <= p1; pi++) {
    struct page_part pp = page_part (c, pi, a, e);
    uint64_t poff = pi << c->page_shift, lo = pp.lo;
    uint32_t s0 = pp.s0, n = pp.n;
    struct page *p = page_find (c, pi);

    if (!p) { /* written back and evicted */
      need_flush = true;
      run = NULL;
      continue;
    }
    page_lock (p);
    for (;;) {
      bool busy = dirty_busy_overlaps (c, pi, pi);
      bool inflight = sect_count (&p->sb, SECT_BM_W, s0, n) > 0;
      if (!busy && !inflight)
        break;
      if (nsub < b->nruns) { /* submit before waiting */
        int r;

        page_unlock (p);
        r = sync_submit (c, b, &nsub); /* whatever an earlier run did */
        err = err ? err : r;
        run = NULL;
        page_lock (p);
        continue;
      }
      if (inflight)
        page_wait (c, p, &c->w_idle);
      else {
        page_unlock (p);
        dirty_busy_wait (c, pi, pi);
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
      if (!v) { /* dropped by a TRIM or ZERO */
        need_flush = true;
        run = NULL;
        continue;
      }
      CACHE_ASSERT (b->nfrags < b->maxfrags);
      f = &b->frags[b->nfrags++];
      if (!run) {
        run = run_new (b, soff, b->buf + (soff - a), f, flags & CACHE_FUA);
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
    int r = sync_submit (c, b, &nsub); /* every run built is submitted */
    err = err ? err : r;
  }
  batch_put (b);

  if (!err && need_flush && (flags & CACHE_FUA)) {
    err = c->ops->flush (c->bopaque);
    atomic_fetch_add (&c->ctr.backend_flushes, 1);
  }
  return err;
}
