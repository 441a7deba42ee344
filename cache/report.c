/* subpage: what the cache core reports, and the clock it stamps it with.
 *
 * Statistics are atomic counters in struct cache, updated without a
 * lock (report_account runs under the page lock of the page it counts,
 * which keeps that page's own counters exact); cache_get_stats reads
 * them, so its figures are approximate while requests run and exact
 * when the cache is idle.  Log messages go to the caller's callback
 * (cache_create's LOG), or errors to stderr without one.  Every file of
 * the core uses this one; it uses none of them.
 */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "internal.h"

uint64_t
report_now_ns (void)
{
  struct timespec ts;

  clock_gettime (CLOCK_MONOTONIC, &ts);
  return (uint64_t) ts.tv_sec * 1000000000 + (uint64_t) ts.tv_nsec;
}

uint64_t
report_now_ms (void)
{
  return report_now_ns () / 1000000;
}

void
report_logf (struct cache *c, enum cache_log_level lvl, const char *fmt, ...)
{
  va_list ap;

  va_start (ap, fmt);
  if (c->log)
    c->log (c->log_opaque, lvl, fmt, ap);
  else if (lvl == CACHE_LOG_ERROR) {
    fprintf (stderr, "subpage: ");
    vfprintf (stderr, fmt, ap);
    fprintf (stderr, "\n");
  }
  va_end (ap);
}

void
report_account (struct cache *c, struct page *p, const struct sect_delta *d)
{
  bool was_dirty = atomic_load_explicit (&p->nd, memory_order_relaxed) + p->nw >
                   0;
  bool is_dirty;

  LOCK_ASSERT_HELD (&p->lock);
  p->nv = (uint32_t) ((int64_t) p->nv + d->v);
  if (d->d)
    atomic_fetch_add_explicit (&p->nd, (unsigned) d->d, memory_order_relaxed);
  p->nw = (uint32_t) ((int64_t) p->nw + d->w);
  if (d->v)
    atomic_fetch_add (&c->st_v, (uint64_t) (int64_t) d->v);
  if (d->d)
    atomic_fetch_add (&c->st_d, (uint64_t) (int64_t) d->d);
  if (d->w)
    atomic_fetch_add (&c->st_w, (uint64_t) (int64_t) d->w);
  is_dirty = atomic_load_explicit (&p->nd, memory_order_relaxed) + p->nw > 0;
  if (is_dirty != was_dirty)
    atomic_fetch_add (&c->st_dpages, is_dirty ? 1 : (uint64_t) -1);
}

const uint64_t cache_histogram_bounds_ns[CACHE_HIST_BUCKETS] = {
  100000,     250000,     500000,                  /* 100 us .. */
  1000000,    2500000,    5000000,                 /* 1 ms .. */
  10000000,   25000000,   50000000,                /* 10 ms .. */
  100000000,  250000000,  500000000,               /* 100 ms .. */
  1000000000, 2500000000, 5000000000, 10000000000, /* 1 s .. 10 s */
};

void
report_latency (struct report_hist *h, uint64_t ns)
{
  unsigned i = 0;

  while (i < CACHE_HIST_BUCKETS && ns > cache_histogram_bounds_ns[i])
    i++;
  atomic_fetch_add_explicit (&h->bucket[i], 1, memory_order_relaxed);
  atomic_fetch_add_explicit (&h->sum_ns, ns, memory_order_relaxed);
}

static void
hist_copy (struct cache_histogram *dst, struct report_hist *src)
{
  dst->count = 0;
  for (unsigned i = 0; i <= CACHE_HIST_BUCKETS; i++) {
    dst->bucket[i] = atomic_load (&src->bucket[i]);
    dst->count += dst->bucket[i];
  }
  dst->sum_ns = atomic_load (&src->sum_ns);
}

/* Counts one client request of COUNT bytes that succeeded. */
void
report_request (atomic_uint_fast64_t *n, atomic_uint_fast64_t *bytes,
                uint32_t count)
{
  atomic_fetch_add_explicit (n, 1, memory_order_relaxed);
  atomic_fetch_add_explicit (bytes, count, memory_order_relaxed);
}

void
cache_get_stats (struct cache *c, struct cache_stats *st)
{
  uint64_t ss = c->cfg.sector_size;

  memset (st, 0, sizeof *st);
  st->size = size_now (c);
  st->cache_size = (uint64_t) c->nframes * c->cfg.page_size;
  st->page_size = c->cfg.page_size;
  st->sector_size = ss;
  st->pages_total = c->nframes;
  st->pages_resident = atomic_load (&c->st_resident);
  st->cached_bytes = atomic_load (&c->st_v) * ss;
  st->dirty_bytes = atomic_load (&c->st_d) * ss;
  st->writeback_bytes = atomic_load (&c->st_w) * ss;
  st->dirty_pages = atomic_load (&c->st_dpages);
#define CACHE_STATS_COPY(f, metric, help) st->f = atomic_load (&c->ctr.f);
  CACHE_COUNTERS (CACHE_STATS_COPY)
#undef CACHE_STATS_COPY
#define CACHE_STATS_HIST(f, metric, help) hist_copy (&st->f, &c->hist.f);
  CACHE_HISTOGRAMS (CACHE_STATS_HIST)
#undef CACHE_STATS_HIST
  st->waiting_flush = atomic_load (&c->w_flush);
  st->waiting_throttle = atomic_load (&c->w_throttle);
  st->waiting_page = atomic_load (&c->w_page);
  st->waiting_idle = atomic_load (&c->w_idle);
  st->runs_in_flight = atomic_load (&c->runs_in_flight);
  st->writeback_buffer_bytes = atomic_load (&c->wb_buf_bytes);
  if (c->jnl)
    jnl_get_stats (c, st);
  st->metadata_bytes =
    sizeof *c +
    (uint64_t) c->nframes * (sizeof (struct page) + sizeof (uint32_t) +
                             SECT_NR_BITMAPS * c->words * sizeof (uint64_t)) +
    NR_SHARDS * (uint64_t) (c->shards[0].mask + 1) * sizeof (struct page *);
}
