/* subpage: internal structures of the cache core (not for callers).
 *
 * Lock order, in precedence order: never take an earlier lock in this
 * list while holding a later one.
 *
 *   1. c->clock_lock      frame allocation and CLOCK eviction
 *   2. shard->lock        page index (hash chains), pinning from zero
 *   3. page->lock         sector bits, page data, page->frags
 *   4. c->wb_lock         dirty list, epoch counters, discard ranges,
 *                         write-back error, throttling
 *   (c->gc_lock)          group commit of backend flushes: a leaf,
 *                         never held with any other lock
 *
 * Nothing below performs backend I/O, allocates memory or sleeps while
 * holding clock_lock, a shard lock or a page lock, except waiting on a
 * condition variable (which releases the lock it waits with).
 *
 * Flush accounting ("epochs").  c->epoch counts flushes.  Every piece
 * of dirty data carries a tag: the epoch in which it was written (the
 * oldest one, when data of several epochs is merged).  Tags live in
 * three places: page->dseq (the DIRTY sectors of a page, D and not W),
 * frag->seq (a snapshot in flight) and frag->rseq (sectors written
 * again while that snapshot is in flight: REDIRTIED).  A flush takes
 * T = epoch and bumps it; it is done when no tag <= T is alive.  New
 * data gets tags > T, so a flush cannot be starved by later writes.
 *
 * Live tags are counted per epoch: ecount_*[e % EPOCH_RING] for epochs
 * e in [ebase, epoch], and efloor_* for all epochs below ebase
 * together.  ebase moves up past empty slots, and past full ones (whose
 * counts then go to the floor) so that epoch - ebase < EPOCH_RING: no
 * two live epochs share a slot however long old data stays dirty (a
 * backend failing for thousands of flushes).  A flush with T >= ebase
 * counts exactly its own epochs (the floor's are all older); only a
 * flush that EPOCH_RING later flushes overtook counts the whole floor.
 * All tag changes happen under wb_lock (and the owning page's lock).
 *
 * Collect progress.  c->progress counts events after which a collect
 * that found nothing to take may find something: batch buffers freed
 * down under their cap, a collector done with a page that another one
 * skipped because it was being collected (page->skipped: the event is
 * that page's, reported by its collector), a TRIM or ZERO ended, data
 * put back on a page by a run's completion.  A collect that merely
 * found nothing is not one: two flushes waiting on one TRIM would
 * otherwise wake each other in turn.  Each is counted under wb_lock,
 * with a broadcast on wb_cv.  A flush whose collect returned nothing
 * sleeps only while the count is what that collect accounts for (its
 * ticket: the count it saw, plus the events it reported itself), so
 * none of those events can be missed between the collect and the
 * sleep.
 */
#ifndef SUBPAGE_INTERNAL_H
#define SUBPAGE_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "cache-assert.h"
#include "cache.h"
#include "cache-debug.h"
#include "lock.h"
#include "sector.h"

#define SEQ_NONE UINT64_MAX
#define PAGE_NONE UINT64_MAX
#define EPOCH_RING 4096
#define NR_SHARDS 64

struct page;
struct batch;

/* One contiguous range of sectors of one page inside a run. */
struct frag {
  struct page *page;
  struct frag *pnext; /* page->frags list (page lock) */
  struct cache_run *run;
  uint32_t first, n; /* sectors within the page */
  uint64_t seq;      /* tag of the data it carries, or SEQ_NONE */
  uint64_t rseq;     /* tag of redirtying writes, or SEQ_NONE */
};

struct cache_run {
  struct batch *batch;
  uint64_t off;
  uint32_t len;   /* whole sectors */
  uint32_t blen;  /* len cut at the end of the disk */
  uint32_t flags; /* CACHE_FUA */
  char *data;
  struct frag *frags; /* frags[0..nfrags) in disk order */
  uint32_t nfrags;
  uint64_t t0_ns; /* submitted (report_now_ns), for backend_write_latency */
  bool past_end;  /* not written: the image ends before it (resize.c) */
};

/* A write-back batch: one buffer, several runs, freed when the last
 * run completes.
 */
struct batch {
  struct cache *c;
  char *buf;
  uint32_t cap, used;
  struct cache_run *runs;
  uint32_t nruns, maxruns;
  struct frag *frags;
  uint32_t nfrags, maxfrags;
  atomic_uint pending; /* runs not yet done */
};

struct page {
  struct lock lock;
  pthread_cond_t cv; /* broadcast when W bits clear */
  char *data;
  struct sect_bits sb;

  /* Identity: written under the shard lock (and clock_lock when freed). */
  _Atomic uint64_t index; /* page number, PAGE_NONE if frame free;
                               * read without the shard lock only as a
                               * hint (try_evict re-checks under it) */
  struct page *hnext;     /* shard hash chain */
  atomic_uint refs;       /* pins; see page.c */
  atomic_bool referenced; /* CLOCK bit */

  /* Page lock. */
  uint32_t nv, nw;     /* counts of V and W sectors */
  atomic_uint nd;      /* count of D sectors; written under the
                               * page lock, read without it by collectors
                               * sizing a batch */
  struct frag *frags;  /* snapshots in flight */
  uint64_t jseq;       /* journal=: the newest record of this page */
  struct jnode *jnode; /* journal=: where its records are (journal.h) */
  unsigned nwaiters;   /* threads waiting on cv */

  /* wb_lock (read also under the page lock by writers, who take wb_lock
   * to change them).
   */
  bool listed;                /* on c->dirty (holds one pin) */
  bool collecting;            /* picked by a collector right now */
  bool skipped;               /* another collector skipped it meanwhile:
                               * its collector reports progress */
  uint64_t dseq;              /* tag of DIRTY sectors, or SEQ_NONE */
  uint64_t dirtied_ms;        /* when listed */
  struct page *dnext, *dprev; /* c->dirty */
};

struct shard {
  struct lock lock;
  struct page **buckets;
  uint32_t mask;
};

/* A TRIM or ZERO in progress: collectors and FUA leave its range alone. */
struct busy_range {
  uint64_t first_page, last_page; /* inclusive */
  struct busy_range *next;
};

/* One of CACHE_HISTOGRAMS: the core's side of struct cache_histogram
 * (report.c).
 */
struct report_hist {
  atomic_uint_fast64_t bucket[CACHE_HIST_BUCKETS + 1];
  atomic_uint_fast64_t sum_ns;
};

struct journal;

struct cache {
  struct cache_config cfg;
  struct journal *jnl; /* journal=, or NULL (journal.h) */
  const struct cache_backend_ops *ops;
  void *bopaque;
  cache_log_fn log;
  void *log_opaque;
  /* Hooks: read with atomic loads on hot paths, set only while no
   * request or write-back runs (cache.h).
   */
  _Atomic (cache_submit_fn) submit;
  _Atomic (void *) submit_opaque;
  _Atomic (cache_kick_fn) kick;
  _Atomic (void *) kick_opaque;
  _Atomic (cache_jio_fn) jio;
  _Atomic (void *) jio_opaque;
  _Atomic (cache_aio_pwrite_fn) jio_aio;
  _Atomic (void *) jio_aio_opaque;
  atomic_bool verbose;
  /* The core's one upcall: page.c, under write-back in the layering,
   * asks it for clean frames through this (wb_kick, set by wb_init)
   * when nothing can be evicted, rather than calling it by name.
   */
  void (*want_writeback) (struct cache *c);
  _Atomic (cache_park_fn) park;
  _Atomic (void *) park_opaque;
  _Atomic (cache_clock_fn) clock;
  _Atomic (void *) clock_opaque;

  /* Geometry. */
  uint32_t page_shift, sector_shift, nsect, words;

  /* The image's size (resize.c): stored under size_lock, read with
   * atomic loads.  wb_end is where write-back stops: the size, or, while
   * the image is smaller than the largest size seen (size_max), the
   * size rounded down to a sector, since a sector cut by a shrink may
   * hold data written past the new end.
   */
  struct lock size_lock;
  atomic_uint_fast64_t size, size_max, wb_end;
  /* Pages holding DIRTY or WRITEBACK sectors at or past wb_end when the
   * size last changed: they cannot be written, so dirty_mem leaves
   * them out (writers would otherwise wait for them for ever).
   */
  atomic_uint_fast64_t past_end_pages;
  /* Under size_lock: the sector cut by the size held data written
   * before the shrink to it, which may reach past the end.
   */
  bool cut_held;
  uint64_t dirty_limit, bg_limit; /* bytes */

  /* Frames. */
  uint32_t nframes;
  struct page *frames;
  uint64_t *bits;
  char *mem;
  size_t mem_len;

  struct lock clock_lock;
  pthread_cond_t frame_cv;
  uint32_t hand;
  uint32_t *free_stack;
  uint32_t nfree;
  atomic_uint frame_waiters;

  struct shard shards[NR_SHARDS];

  /* wb_lock */
  struct lock wb_lock;
  pthread_cond_t wb_cv; /* progress: runs done, collect done, discard done */
  struct page *dirty_head, *dirty_tail;
  uint64_t ndirty_pages;
  uint64_t epoch, ebase;
  uint64_t ecount_page[EPOCH_RING], ecount_run[EPOCH_RING];
  uint64_t efloor_page, efloor_run;
  atomic_uint_fast64_t progress; /* written under wb_lock */

  struct busy_range *busy;
  atomic_uint nbusy;
  int wb_err;          /* first write-back error not yet reported */
  int wb_last_err;     /* most recent write-back error */
  bool wb_err_quiet;   /* wb_err, wb_last_err: from a run past the end, */
  bool wb_last_quiet;  /* which the resize already logged */
  uint64_t wb_err_gen; /* write-back errors ever */
  bool wb_failing;     /* the last run completed with an error */
  /* A failed run was logged as an error since the last run that
   * succeeded: further failures are logged at debug level only, so a
   * backend that keeps failing (a full disk, a lost RBD lock) logs one
   * line per outage, not one per retried run.
   */
  atomic_bool wb_fail_logged;

  /* Discard generation: fills installed only if unchanged. */
  atomic_uint_fast64_t discard_started;

  /* Group commit of backend flushes. */
  struct lock gc_lock;
  pthread_cond_t gc_cv;
  uint64_t gc_requested; /* tickets handed out */
  uint64_t gc_started;   /* highest ticket a started flush covers */
  unsigned gc_running;   /* backend flushes in progress */
  struct gc_waiter *gc_waiters;

  /* Statistics. */
  atomic_uint_fast64_t st_v, st_d, st_w, st_resident;
  atomic_uint_fast64_t st_dpages; /* pages holding a D or W sector */
  struct {                        /* CACHE_COUNTERS, as atomics */
#define CACHE_CTR_FIELD(f, metric, help) atomic_uint_fast64_t f;
    CACHE_COUNTERS (CACHE_CTR_FIELD)
#undef CACHE_CTR_FIELD
  } ctr;
  struct { /* CACHE_HISTOGRAMS, as atomics */
#define CACHE_HIST_FIELD(f, metric, help) struct report_hist f;
    CACHE_HISTOGRAMS (CACHE_HIST_FIELD)
#undef CACHE_HIST_FIELD
  } hist;
  atomic_uint_fast64_t w_flush, w_throttle, w_page, w_idle;
  atomic_uint_fast64_t runs_in_flight;

  /* Bytes of write-back buffers alive (batches not yet freed), and the
   * cap background and flush collection respect (FUA and write-through
   * buffers, one request's size, are not capped).
   */
  atomic_uint_fast64_t wb_buf_bytes;
  uint64_t wb_buf_max;
};

struct gc_waiter {
  uint64_t ticket;
  bool done;
  int err;
  struct gc_waiter *next;
};

/* Named park points (cache_debug_set_park):
 *   "flush.collected"   cache_flush, after a collect, before it decides
 *                       whether to wait for write-back progress
 *   "collect.picked"    wb_collect, after marking the pages it picked
 *                       `collecting', before it snapshots them
 *   "fua.written"       a FUA or write-through write, after its data is
 *                       in the cache, before writing it back
 *   "read.listed"       a read, after it listed the missing sectors
 *                       (and where the journal holds them), before it
 *                       reads them
 *   "read.fetched"      a read, after its backend reads, before it
 *                       installs what they returned
 *   "journal.placed"    a journaled write, after its record of one page
 *                       is placed in the log, before it is written
 *   "extent.absent"     block status once pages left RAM dirty, after
 *                       finding a page not resident (and whether the
 *                       journal's index holds its node), before using
 *                       that answer
 *   "bypass.held"       a write around the journal, after it holds its
 *                       range, before the barrier (bypass.c)
 *   "bypass.written"    a write around the journal, after its backend
 *                       write succeeded, before its marker is placed
 * No lock is held at any of them.
 */
#ifdef CACHE_PARK_POINTS
#define CACHE_PARK(c, name)                            \
  do {                                                 \
    cache_park_fn _park = atomic_load (&(c)->park);    \
    if (_park)                                         \
      _park (atomic_load (&(c)->park_opaque), (name)); \
  } while (0)
#else
#define CACHE_PARK(c, name) ((void) 0)
#endif

/* report.c: statistics, the log, the clock. */
void report_logf (struct cache *c, enum cache_log_level lvl, const char *fmt,
                  ...) __attribute__ ((format (printf, 3, 4)));
#define report_debug(c, ...)                                        \
  do {                                                              \
    if (atomic_load_explicit (&(c)->verbose, memory_order_relaxed)) \
      report_logf ((c), CACHE_LOG_DEBUG, __VA_ARGS__);              \
  } while (0)
uint64_t report_now_ms (void);
uint64_t report_now_ns (void);
/* Page locked.  Adds sector changes D to P's counters and the cache's. */
void report_account (struct cache *c, struct page *p,
                     const struct sect_delta *d);
/* Adds one observation of NS nanoseconds to H (a field of c->hist). */
void report_latency (struct report_hist *h, uint64_t ns);
/* Counts one client request of COUNT bytes that succeeded. */
void report_request (atomic_uint_fast64_t *n, atomic_uint_fast64_t *bytes,
                     uint32_t count);

/* page.c: frames, index, pinning, eviction. */
int page_table_init (struct cache *c);
void page_table_free (struct cache *c);
/* Returns the pinned page for INDEX, creating it if absent.  If WAIT is
 * false and no frame can be had at once, returns NULL with *err 0.  If
 * WAIT is true it waits for write-back to free a frame, unless
 * write-back keeps failing: then it returns NULL with *err set to the
 * write-back error.  Page memory is taken before the shard lock, never
 * under it.
 */
struct page *page_get (struct cache *c, uint64_t index, bool wait, int *err);
/* The pinned page if resident, else NULL. */
struct page *page_find (struct cache *c, uint64_t index);
/* journal=: page_find, and if the page is not resident, whether the
 * journal's index holds a live node for it (*INDEXED), both under the
 * shard lock, so that a page coming back or leaving in between (its
 * node moves between page and index under that lock) is seen in one
 * place or the other.
 */
struct page *page_find_indexed (struct cache *c, uint64_t index, bool *indexed);
/* journal=: whether the sector at OFF has a record not yet written
 * back, by its page's node (resident, the sector held or not) or by
 * the index (the page left RAM dirty).  Shard lock, then the page's.
 */
bool page_sector_journaled (struct cache *c, uint64_t off);
void page_pin_more (struct page *p); /* caller already holds a pin */
void page_unpin (struct cache *c, struct page *p);
void page_lock (struct page *p);
void page_unlock (struct page *p);
/* Waits on p->cv (page lock held; released while waiting). */
void page_wait (struct cache *c, struct page *p, atomic_uint_fast64_t *counter);
void page_wake (struct page *p);
bool page_check (struct cache *c, struct page *p);
void page_dump (struct cache *c, struct page *p, const char *why);
static inline uint64_t
page_offset (struct cache *c, struct page *p)
{
  return p->index << c->page_shift;
}
/* The part of [a, e) (sector-aligned) in page PI: bytes [lo, hi) and
 * sectors [s0, s0 + n) of the page.
 */
struct page_part {
  uint64_t lo, hi;
  uint32_t s0, n;
};
static inline struct page_part
page_part (struct cache *c, uint64_t pi, uint64_t a, uint64_t e)
{
  uint64_t poff = pi << c->page_shift;
  struct page_part pp;

  pp.lo = a > poff ? a : poff;
  pp.hi = e < poff + c->cfg.page_size ? e : poff + c->cfg.page_size;
  pp.s0 = (uint32_t) ((pp.lo - poff) >> c->sector_shift);
  pp.n = (uint32_t) ((pp.hi - pp.lo) >> c->sector_shift);
  return pp;
}
/* The image's size now, and where write-back stops (resize.c). */
static inline uint64_t
size_now (struct cache *c)
{
  return atomic_load (&c->size);
}

static inline uint64_t
size_wb_end (struct cache *c)
{
  return atomic_load (&c->wb_end);
}

/* resize.c */
void size_init (struct cache *c);
void size_destroy (struct cache *c);
/* Whether [off, off+count) lies inside the image as it is now. */
static inline bool
size_covers (struct cache *c, uint64_t off, uint64_t count)
{
  uint64_t size = size_now (c);

  return off <= size && count <= size - off;
}

static inline char *
sect_data (struct cache *c, struct page *p, uint32_t i)
{
  return p->data + ((size_t) i << c->sector_shift);
}

/* dirty.c: the dirty list, epoch tags, busy ranges, collect progress.
 * "wb_lock held" functions assert it.
 */
enum dirty_kind { DIRTY_ON_PAGE, DIRTY_IN_RUN };
void dirty_init (struct cache *c);
/* wb_lock held.  Adds DELTA to the count of live tags of epoch E (none
 * if E is SEQ_NONE) of kind K; true if that count dropped to zero.
 */
bool dirty_count (struct cache *c, enum dirty_kind k, uint64_t e, int delta);
/* wb_lock held.  Opens a new epoch and returns the one it closes. */
uint64_t dirty_new_epoch (struct cache *c);
/* wb_lock held.  Live tags of epochs <= T, on pages and in runs. */
void dirty_live_tags (struct cache *c, uint64_t t, uint64_t *pages,
                      uint64_t *runs);
/* wb_lock held.  Is anyone counted as waiting on wb_cv? */
bool dirty_waiters (struct cache *c);
/* wb_lock held.  Counts a collect progress event and wakes wb_cv. */
void dirty_progress (struct cache *c);
/* Page locked and wb_lock held.  Gives P's DIRTY sectors tag T (the
 * older of T and the current one) / releases P's tag.
 */
void dirty_tag (struct cache *c, struct page *p, uint64_t t);
void dirty_untag (struct cache *c, struct page *p);
/* Page locked.  Does P hold a DIRTY (D and not W) sector? */
bool dirty_idle (struct cache *c, struct page *p);
/* The clock of dirty-page ages, in ms (cache_debug_set_clock). */
uint64_t dirty_now_ms (struct cache *c);
/* wb_lock held.  Lists P (pinned by the caller; the list takes a pin of
 * its own) / takes it off (the caller holds another pin) / moves it to
 * the tail, so that other pages go first.
 */
void dirty_list (struct cache *c, struct page *p);
void dirty_unlist (struct cache *c, struct page *p);
void dirty_rotate (struct cache *c, struct page *p);
/* Called by a writer after sect_write on [first, first+n) of P (page
 * locked): tags new data, lists the page, marks the fragments in flight
 * that the write redirtied.
 */
void dirty_note_write (struct cache *c, struct page *p, uint32_t first,
                       uint32_t n);
/* Called with P locked after sect_drop: releases the DIRTY tag if no
 * DIRTY sector remains, and the list's pin if no D bit does.
 */
void dirty_note_drop (struct cache *c, struct page *p);
/* journal= only.  P (locked, dropped by its pin-holders but the list:
 * shard and clock locks held) leaves RAM with its data safe in the
 * journal: its tag is released and it leaves the list, whose pin was
 * the last.
 */
void dirty_evict (struct cache *c, struct page *p);
/* TRIM and ZERO: registers R as busy / unregisters it.  Collectors and
 * FUA leave busy pages alone; fills that overlapped a busy range do not
 * install what they read.
 */
void dirty_busy_begin (struct cache *c, struct busy_range *r);
void dirty_busy_end (struct cache *c, struct busy_range *r);
/* wb_lock held.  Does a busy range cover any page of [first_page,
 * last_page]?
 */
bool dirty_busy_overlaps_locked (struct cache *c, uint64_t first_page,
                                 uint64_t last_page);
/* Does a busy range cover any page of [first_page, last_page]? */
bool dirty_busy_overlaps (struct cache *c, uint64_t first_page,
                          uint64_t last_page);
/* wb_lock not held.  Waits until no busy range covers any page of
 * [first_page, last_page] (0, UINT64_MAX: until there is none at all).
 */
void dirty_busy_wait (struct cache *c, uint64_t first_page, uint64_t last_page);
/* Dirty memory: pages holding a D or W sector, at their full size. */
uint64_t dirty_mem (struct cache *c);

/* writeback.c: batches, runs, completion, FUA, throttling. */
void wb_init (struct cache *c);
/* Dirty throttle: waits (no locks held) while dirty data is over the
 * limit.  Returns 0 or -errno when write-back keeps failing.
 */
int wb_throttle (struct cache *c);
/* Writes [off, off+count) back now, with FLAGS (CACHE_FUA), waiting for
 * earlier write-back of the range first.  Returns 0 or -errno.
 */
int wb_sync_range (struct cache *c, uint64_t off, uint64_t count,
                   uint32_t flags);
/* Asks for background write-back: the kick hook, or (without one) a
 * collect in the calling thread.  No lock held.
 */
void wb_kick (struct cache *c);
enum wb_pick { PICK_EXPIRED, PICK_BACKGROUND, PICK_FLUSH };
/* Collects one batch of pages chosen by HOW (PICK_EXPIRED: dirty for
 * ARG ms; PICK_FLUSH: tag <= ARG) and submits its runs.  Returns the
 * number of runs or -ENOMEM.  When it returns 0 and TICKET is not NULL,
 * *TICKET is the value of c->progress that the empty collect accounts
 * for ("Collect progress" above).
 */
int wb_collect (struct cache *c, enum wb_pick how, uint64_t arg,
                uint64_t *ticket);

/* request.c, for bypass.c: cache_write without the request counters
 * (the caller counts the whole request once).
 */
int request_write (struct cache *c, const void *buf, uint32_t count,
                   uint64_t off, uint32_t flags);
/* request.c, for bypass.c too: drops the cached sectors of [a, e),
 * which no write-back has in flight (the range is busy, or fenced and
 * held): the backend now holds them.
 */
void request_drop_range (struct cache *c, uint64_t a, uint64_t e);

#include "journal.h"

#endif /* SUBPAGE_INTERNAL_H */
