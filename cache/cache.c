/* subpage: creating and destroying a cache, and its hooks.
 *
 * cache_create checks the configuration, derives the geometry (page and
 * sector shifts, sectors per page, frames, dirty limits) and builds the
 * frame table (page.c) and the write-back state (writeback.c, dirty.c).
 * The request paths are in request.c, flush in flush.c, what the core
 * reports (statistics, log, clock) in report.c, and what only tests use
 * in debug.c.
 */
#define _GNU_SOURCE /* strerrordesc_np, see errstr.h */
#include <errno.h>
#include <stdlib.h>

#include "errstr.h"
#include "internal.h"
#include "util.h"

static int
check_config (const struct cache_config *cfg, const char **what)
{
  if (!is_power_of_2 (cfg->page_size) || cfg->page_size < CACHE_MIN_PAGE_SIZE ||
      cfg->page_size > CACHE_MAX_PAGE_SIZE) {
    *what = "page_size must be a power of 2 between 4K and 2M";
    return -EINVAL;
  }
  if (!is_power_of_2 (cfg->sector_size) ||
      cfg->sector_size < CACHE_MIN_SECTOR_SIZE ||
      cfg->sector_size > cfg->page_size) {
    *what = "sector_size must be a power of 2 between 512 and page_size";
    return -EINVAL;
  }
  if (cfg->cache_size / cfg->page_size < CACHE_MIN_PAGES) {
    *what = "cache_size must hold at least 8 pages";
    return -EINVAL;
  }
  if (cfg->cache_size / cfg->page_size > UINT32_MAX / 2) {
    *what = "cache_size holds too many pages (at most 2^31)";
    return -EINVAL;
  }
  if (cfg->dirty_ratio < 1 || cfg->dirty_ratio > 100 ||
      cfg->dirty_background_ratio < 1 ||
      cfg->dirty_background_ratio > cfg->dirty_ratio) {
    *what = "need 1 <= dirty_background_ratio <= dirty_ratio <= 100";
    return -EINVAL;
  }
  if (cfg->size == 0) {
    *what = "the disk is empty";
    return -EINVAL;
  }
  if (cfg->mode != CACHE_MODE_WRITEBACK &&
      cfg->mode != CACHE_MODE_WRITETHROUGH && cfg->mode != CACHE_MODE_UNSAFE) {
    *what = "unknown mode";
    return -EINVAL;
  }
  return 0;
}

struct cache *
cache_create (const struct cache_config *cfg,
              const struct cache_backend_ops *ops, void *backend_opaque,
              cache_log_fn log, void *log_opaque, int *err)
{
  struct cache *c;
  const char *what = NULL;
  int r;

  c = calloc (1, sizeof *c);
  if (!c) {
    *err = -ENOMEM;
    return NULL;
  }
  c->log = log;
  c->log_opaque = log_opaque;
  r = check_config (cfg, &what);
  if (r < 0) {
    report_logf (c, CACHE_LOG_ERROR, "cache_create: %s", what);
    free (c);
    *err = r;
    return NULL;
  }
  c->cfg = *cfg;
  if (c->cfg.batch_bytes == 0)
    c->cfg.batch_bytes = 1024 * 1024;
  c->cfg.batch_bytes = MAX (ROUND_UP (c->cfg.batch_bytes, cfg->sector_size),
                            cfg->page_size);
  c->ops = ops;
  c->bopaque = backend_opaque;
  c->page_shift = log2_u64 (cfg->page_size);
  c->sector_shift = log2_u64 (cfg->sector_size);
  c->nsect = cfg->page_size / cfg->sector_size;
  c->words = DIV_ROUND_UP (c->nsect, 64);
  c->nframes = (uint32_t) (cfg->cache_size / cfg->page_size);
  c->dirty_limit = (uint64_t) c->nframes * cfg->page_size * cfg->dirty_ratio /
                   100;
  c->bg_limit = (uint64_t) c->nframes * cfg->page_size *
                cfg->dirty_background_ratio / 100;
  c->dirty_limit = MAX (c->dirty_limit, (uint64_t) cfg->page_size);
  c->wb_buf_max = 4 * (uint64_t) c->cfg.batch_bytes;
  size_init (c);
  wb_init (c);
  r = page_table_init (c);
  if (r < 0) {
    report_logf (c, CACHE_LOG_ERROR, "cache_create: %s", errstr (-r));
    cache_destroy (c);
    *err = r;
    return NULL;
  }
  return c;
}

void
cache_destroy (struct cache *c)
{
  if (!c)
    return;
  CACHE_ASSERT (atomic_load (&c->runs_in_flight) == 0);
  jnl_free (c);
  page_table_free (c);
  lock_destroy (&c->wb_lock);
  pthread_cond_destroy (&c->wb_cv);
  lock_destroy (&c->gc_lock);
  size_destroy (c);
  pthread_cond_destroy (&c->gc_cv);
  free (c);
}

void
cache_set_submit (struct cache *c, cache_submit_fn fn, void *opaque)
{
  atomic_store (&c->submit_opaque, opaque);
  atomic_store (&c->submit, fn);
}

void
cache_set_kick (struct cache *c, cache_kick_fn fn, void *opaque)
{
  atomic_store (&c->kick_opaque, opaque);
  atomic_store (&c->kick, fn);
}

void
cache_set_debug (struct cache *c, bool verbose)
{
  atomic_store (&c->verbose, verbose);
}

int
cache_journal_open (struct cache *c, const struct jdev *dev, const char *ident,
                    bool created)
{
  CACHE_ASSERT (c->jnl == NULL);
  return jnl_open (c, dev, ident, created);
}

int
cache_journal_recover (struct cache *c)
{
  CACHE_ASSERT (c->jnl != NULL);
  return jnl_recover (c);
}

int
cache_journal_drain (struct cache *c)
{
  return c->jnl ? jnl_drain (c) : 0;
}

bool
cache_journal_drain_due (struct cache *c, uint64_t expire_ms, unsigned ratio)
{
  return c->jnl ? jnl_drain_due (c, expire_ms, ratio) : true;
}

bool
cache_has_journal (const struct cache *c)
{
  return c->jnl != NULL;
}

void
cache_set_jio (struct cache *c, cache_jio_fn fn, void *opaque)
{
  atomic_store (&c->jio_opaque, opaque);
  atomic_store (&c->jio, fn);
}

void
cache_set_jio_aio (struct cache *c, cache_aio_pwrite_fn fn, void *opaque)
{
  atomic_store (&c->jio_aio_opaque, opaque);
  atomic_store (&c->jio_aio, fn);
}

void
cache_journal_order_any (struct cache *c, bool any)
{
  CACHE_ASSERT (c->jnl != NULL);
  jnl_order_any (c, any);
}

void
cache_journal_sequential_cutoff (struct cache *c, uint64_t bytes)
{
  CACHE_ASSERT (c->jnl != NULL);
  jnl_set_cutoff (c, bytes);
}
