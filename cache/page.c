/* subpage: pages, the page index, pinning and reclaim.
 *
 * Representation.  The cache owns a fixed array of frames (struct page),
 * one per page_size bytes of cache_size, whose data lives in one
 * anonymous mapping (touched lazily, so RSS grows with use and never
 * passes cache_size).  A frame is free (index == PAGE_NONE, on the free
 * stack) or holds one page of the disk, found through one of NR_SHARDS
 * hash tables keyed by page number.
 *
 * Pinning (invariant 1).  page->refs counts everyone who may touch the
 * page: requests between lookup and the end of their use, the dirty
 * list (one pin while listed) and every write-back fragment in flight.
 * A pin is taken from zero only under the shard lock, and reclaim frees
 * a frame only under the same shard lock after seeing refs == 0, so a
 * found page can never be freed or reused between lookup and use.
 *
 * Reclaim (invariant 10).  CLOCK over the frames: a hit sets
 * `referenced' (an atomic store, no lock); the hand clears it and evicts
 * a page only if it has no pins, no D and no W.  Dirty pages are always
 * listed, hence pinned, so memory pressure never discards dirty data.
 * With a journal, a dirty page whose records are all durable in it may
 * go too (held only by the list's pin): where its data is in the
 * journal stays in the index (journal.h), which reads of it consult.
 * Its frame must be free of every other pin, checked under the shard
 * lock, under which no pin can be taken from the list's one.
 * When nothing can be evicted a thread waits on frame_cv, but only if it
 * holds no pin itself (page_get(wait=false) otherwise), after asking for
 * write-back.
 *
 * Frames are taken before the shard lock and returned if another thread
 * inserted the page first: no allocation happens under a lock.
 */
#include <errno.h>
#include <inttypes.h>
#include <time.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "internal.h"
#include "util.h"

static struct shard *
shard_of (struct cache *c, uint64_t index)
{
  return &c->shards[(index * UINT64_C (0x9E3779B97F4A7C15)) >> 58];
}

static uint32_t
bucket_of (struct shard *s, uint64_t index)
{
  uint64_t h = index * UINT64_C (0xC2B2AE3D27D4EB4F);
  return (uint32_t) (h >> 32) & s->mask;
}

int
page_table_init (struct cache *c)
{
  uint32_t nb;

  c->frames = calloc (c->nframes, sizeof *c->frames);
  c->bits = calloc ((size_t) c->nframes * SECT_NR_BITMAPS * c->words,
                    sizeof (uint64_t));
  c->free_stack = malloc (c->nframes * sizeof *c->free_stack);
  if (!c->frames || !c->bits || !c->free_stack)
    return -ENOMEM;
  c->mem_len = (size_t) c->nframes << c->page_shift;
  c->mem = mmap (NULL, c->mem_len, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (c->mem == MAP_FAILED) {
    c->mem = NULL;
    return -errno;
  }

  for (uint32_t i = 0; i < c->nframes; i++) {
    struct page *p = &c->frames[i];
    lock_init (&p->lock);
    pthread_cond_init (&p->cv, NULL);
    p->data = c->mem + ((size_t) i << c->page_shift);
    p->sb.bits = c->bits + (size_t) i * SECT_NR_BITMAPS * c->words;
    p->sb.nsect = c->nsect;
    p->sb.words = c->words;
    p->index = PAGE_NONE;
    p->dseq = SEQ_NONE;
    c->free_stack[i] = c->nframes - 1 - i;
  }
  c->nfree = c->nframes;

  /* Buckets: about two frames' worth per shard, a power of 2. */
  nb = 1;
  while (nb < 2 * DIV_ROUND_UP (c->nframes, NR_SHARDS))
    nb <<= 1;
  for (unsigned i = 0; i < NR_SHARDS; i++) {
    lock_init (&c->shards[i].lock);
    c->shards[i].buckets = calloc (nb, sizeof (struct page *));
    if (!c->shards[i].buckets)
      return -ENOMEM;
    c->shards[i].mask = nb - 1;
  }
  lock_init (&c->clock_lock);
  pthread_cond_init (&c->frame_cv, NULL);
  return 0;
}

void
page_table_free (struct cache *c)
{
  if (c->frames) {
    for (uint32_t i = 0; i < c->nframes; i++) {
      free (c->frames[i].jnode);
      lock_destroy (&c->frames[i].lock);
      pthread_cond_destroy (&c->frames[i].cv);
    }
  }
  for (unsigned i = 0; i < NR_SHARDS; i++) {
    free (c->shards[i].buckets);
    if (c->shards[i].buckets)
      lock_destroy (&c->shards[i].lock);
  }
  if (c->mem)
    munmap (c->mem, c->mem_len);
  free (c->frames);
  free (c->bits);
  free (c->free_stack);
  lock_destroy (&c->clock_lock);
  pthread_cond_destroy (&c->frame_cv);
}

void
page_lock (struct page *p)
{
  lock_take (&p->lock);
}

void
page_unlock (struct page *p)
{
  lock_drop (&p->lock);
}

void
page_wait (struct cache *c, struct page *p, atomic_uint_fast64_t *counter)
{
  (void) c;
  p->nwaiters++;
  if (counter)
    atomic_fetch_add (counter, 1);
  lock_wait (&p->lock, &p->cv);
  if (counter)
    atomic_fetch_sub (counter, 1);
  p->nwaiters--;
}

void
page_wake (struct page *p)
{
  if (p->nwaiters)
    pthread_cond_broadcast (&p->cv);
}

/* Shard lock held. */
static struct page *
shard_lookup (struct shard *s, uint64_t index)
{
  LOCK_ASSERT_HELD (&s->lock);
  for (struct page *p = s->buckets[bucket_of (s, index)]; p; p = p->hnext)
    if (p->index == index)
      return p;
  return NULL;
}

static void
shard_remove (struct shard *s, struct page *p)
{
  struct page **pp = &s->buckets[bucket_of (s, p->index)];

  while (*pp != p)
    pp = &(*pp)->hnext;
  *pp = p->hnext;
  p->hnext = NULL;
}

struct page *
page_find (struct cache *c, uint64_t index)
{
  struct shard *s = shard_of (c, index);
  struct page *p;

  lock_take (&s->lock);
  p = shard_lookup (s, index);
  if (p)
    atomic_fetch_add (&p->refs, 1);
  lock_drop (&s->lock);
  return p;
}

struct page *
page_find_indexed (struct cache *c, uint64_t index, bool *indexed)
{
  struct shard *s = shard_of (c, index);
  struct page *p;

  *indexed = false;
  lock_take (&s->lock);
  p = shard_lookup (s, index);
  if (p)
    atomic_fetch_add (&p->refs, 1);
  else /* under the shard lock no page comes back nor leaves (attach) */
    *indexed = jnl_index_has (c, index);
  lock_drop (&s->lock);
  return p;
}

bool
page_sector_journaled (struct cache *c, uint64_t off)
{
  uint64_t index = off >> c->page_shift;
  uint32_t i = (uint32_t) ((off & (c->cfg.page_size - 1)) >> c->sector_shift);
  struct shard *s = shard_of (c, index);
  struct page *p;
  uint64_t pos;
  uint32_t n;
  bool live;

  if (!c->jnl)
    return false;
  lock_take (&s->lock);
  p = shard_lookup (s, index);
  if (p) {
    page_lock (p);
    live = jnl_node_find (c, p, i, &pos, &n);
    page_unlock (p);
  }
  else
    live = jnl_index_sector (c, index, i);
  lock_drop (&s->lock);
  return live;
}

void
page_pin_more (struct page *p)
{
  CACHE_ASSERT (atomic_load (&p->refs) > 0);
  atomic_fetch_add (&p->refs, 1);
}

void
page_unpin (struct cache *c, struct page *p)
{
  unsigned old = atomic_fetch_sub (&p->refs, 1);

  CACHE_ASSERT (old > 0);
  if (old == 1 && atomic_load (&c->frame_waiters) > 0) {
    lock_take (&c->clock_lock);
    pthread_cond_broadcast (&c->frame_cv);
    lock_drop (&c->clock_lock);
  }
}

/* clock_lock held.  Tries to evict frame P: takes its shard lock, then
 * its page lock.  Returns true if P is now a free frame owned by the
 * caller.
 */
static bool
try_evict (struct cache *c, struct page *p)
{
  uint64_t index = p->index;
  /* With a journal a dirty page holds only the dirty list's pin. */
  unsigned pins = c->jnl ? 1 : 0;
  struct jnode *dead = NULL;
  struct shard *s;
  bool ok = false;

  LOCK_ASSERT_HELD (&c->clock_lock);
  if (index == PAGE_NONE || atomic_load (&p->refs) > pins)
    return false;
  s = shard_of (c, index);
  lock_take (&s->lock);
  /* Under the shard lock no pin can be taken from the list's one. */
  if (p->index == index && atomic_load (&p->refs) <= pins) {
    page_lock (p);
    if (atomic_load (&p->refs) != (p->listed ? 1u : 0u))
      ; /* a request's pin: not now */
    else if (c->jnl
               ? p->nw == 0 && p->frags == NULL && jnl_page_evictable (c, p)
               : p->nd == 0 && p->nw == 0 && !p->listed && p->frags == NULL) {
      struct sect_delta d = { .v = -(int32_t) p->nv, .d = -(int32_t) p->nd };
      CACHE_ASSERT (page_check (c, p));
      shard_remove (s, p);
      memset (p->sb.bits, 0, SECT_NR_BITMAPS * c->words * sizeof (uint64_t));
      report_account (c, p, &d);
      if (c->jnl) {
        /* Dirty sectors are durable in the journal, which the reads of
         * them come from until they are written back (journal.h).
         */
        dirty_evict (c, p);
        dead = jnl_page_evict (c, p);
      }
      p->index = PAGE_NONE;
      p->dseq = SEQ_NONE;
      atomic_store (&p->referenced, false);
      ok = true;
    }
    else if (!c->jnl)
      page_dump (c, p, "unpinned page with D or W");
    /* else: with a journal, not yet durable, or the index is full */
    page_unlock (p);
  }
  lock_drop (&s->lock);
  free (dead); /* a node none of whose records is pending */
  if (ok) {
    atomic_fetch_sub (&c->st_resident, 1);
    atomic_fetch_add (&c->ctr.evictions, 1);
  }
  return ok;
}

/* Takes a free frame, evicting if needed.  Returns NULL if none can be
 * had and !wait.
 */
static struct page *
frame_get (struct cache *c, bool wait, int *err)
{
  struct page *p = NULL;
  bool kicked = false;

  lock_take (&c->clock_lock);
  for (;;) {
    /* Register as a waiter before scanning: page_unpin drops its ref and
     * then reads frame_waiters (both seq_cst), so either the scan sees
     * the page unpinned or the unpin sees us and broadcasts under
     * clock_lock, which it cannot take until we are in cond_wait.
     */
    if (wait)
      atomic_fetch_add (&c->frame_waiters, 1);
    if (c->nfree > 0)
      p = &c->frames[c->free_stack[--c->nfree]];
    for (uint32_t scanned = 0; !p && scanned < 2 * c->nframes; scanned++) {
      struct page *q = &c->frames[c->hand];
      c->hand = (c->hand + 1) % c->nframes;
      if (atomic_load (&q->refs) > (c->jnl ? 1u : 0u))
        continue;
      if (atomic_exchange (&q->referenced, false))
        continue;
      if (try_evict (c, q))
        p = q;
    }
    if (p || !wait) {
      if (wait)
        atomic_fetch_sub (&c->frame_waiters, 1);
      break;
    }
    /* Nothing evictable: every page is pinned, dirty or in flight.
     * First ask for write-back (outside the lock; we hold no pin) and
     * scan again; if that fails too, sleep until an unpin.  Sleeping
     * always follows a scan made under clock_lock while registered, so
     * no wake-up is lost; the timeout is only a safety net.
     */
    if (!kicked) {
      atomic_fetch_sub (&c->frame_waiters, 1);
      lock_drop (&c->clock_lock);
      c->want_writeback (c); /* the upcall: internal.h */
      lock_take (&c->clock_lock);
      kicked = true;
      continue;
    }
    /* Every page is dirty or in flight and write-back keeps failing,
     * with nothing in flight that could free one: fail the request
     * with the write-back error, as a throttled writer does, rather
     * than wait for a backend that may never come back.
     */
    lock_take (&c->wb_lock);
    if (c->wb_failing && atomic_load (&c->runs_in_flight) == 0)
      *err = c->wb_last_err ? c->wb_last_err : -EIO;
    lock_drop (&c->wb_lock);
    if (*err) {
      atomic_fetch_sub (&c->frame_waiters, 1);
      break;
    }
    /* Still registered since the scan, and clock_lock held since: an
     * unpin from here on broadcasts to us.
     */
    {
      struct timespec ts;
      clock_gettime (CLOCK_REALTIME, &ts);
      ts.tv_sec += 1;
      atomic_fetch_add (&c->w_page, 1);
      lock_timedwait (&c->clock_lock, &c->frame_cv, &ts);
      atomic_fetch_sub (&c->w_page, 1);
    }
    atomic_fetch_sub (&c->frame_waiters, 1);
    kicked = false;
  }
  lock_drop (&c->clock_lock);
  return p;
}

static void
frame_put (struct cache *c, struct page *p)
{
  lock_take (&c->clock_lock);
  c->free_stack[c->nfree++] = (uint32_t) (p - c->frames);
  if (atomic_load (&c->frame_waiters) > 0)
    pthread_cond_broadcast (&c->frame_cv);
  lock_drop (&c->clock_lock);
}

struct page *
page_get (struct cache *c, uint64_t index, bool wait, int *err)
{
  struct shard *s = shard_of (c, index);
  struct page *p, *frame;

  *err = 0;
  CACHE_ASSERT (index < DIV_ROUND_UP (atomic_load (&c->size_max),
                                      (uint64_t) c->cfg.page_size));
  p = page_find (c, index);
  if (p) {
    if (!atomic_load_explicit (&p->referenced, memory_order_relaxed))
      atomic_store_explicit (&p->referenced, true, memory_order_relaxed);
    return p;
  }

  frame = frame_get (c, wait, err); /* before the shard lock */
  if (!frame)
    return NULL;

  lock_take (&s->lock);
  p = shard_lookup (s, index);
  if (p) { /* another thread inserted it */
    atomic_fetch_add (&p->refs, 1);
    lock_drop (&s->lock);
    frame_put (c, frame);
    return p;
  }
  CACHE_ASSERT (frame->nv == 0 && frame->nd == 0 && frame->nw == 0);
  CACHE_ASSERT (!frame->listed && frame->frags == NULL);
  frame->index = index;
  jnl_page_attach (c, frame);
  atomic_store (&frame->refs, 1);
  atomic_store (&frame->referenced, true);
  frame->hnext = s->buckets[bucket_of (s, index)];
  s->buckets[bucket_of (s, index)] = frame;
  lock_drop (&s->lock);
  atomic_fetch_add (&c->st_resident, 1);
  return frame;
}

/* Page lock held.  Checks the invariants of sector.h plus the page's
 * own counters.
 */
bool
page_check (struct cache *c, struct page *p)
{
  uint32_t nv, nd, nw, fw = 0;

  LOCK_ASSERT_HELD (&p->lock);
  sect_totals (&p->sb, &nv, &nd, &nw);
  for (struct frag *f = p->frags; f; f = f->pnext)
    fw += f->n;
  if (!sect_check (&p->sb) || nv != p->nv || nd != p->nd || nw != p->nw ||
      fw != nw) {
    page_dump (c, p, "page_check failed");
    return false;
  }
  return true;
}

void
page_dump (struct cache *c, struct page *p, const char *why)
{
  char buf[512];

  sect_dump (&p->sb, buf, sizeof buf);
  report_logf (c, CACHE_LOG_ERROR,
               "%s: page %" PRIu64 " refs=%u nv=%u nd=%u nw=%u listed=%d %s",
               why, p->index, atomic_load (&p->refs), p->nv, p->nd, p->nw,
               p->listed, buf);
}
