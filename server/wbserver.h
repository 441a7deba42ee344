/* subpage: the write-back server (server/wbserver.c).
 *
 * What runs beside requests: one libev loop thread that owns scheduling
 * (a periodic timer for dirty expiry, ev_async wake-ups from request
 * threads when dirty data passes the background threshold, and a drain
 * request at shutdown), and a small pool of worker threads that take
 * jobs from one queue (mutex + condition variable): "collect a batch"
 * (cache_writeback), after which the worker writes that batch's runs
 * itself when the backend is synchronous, and "write this run"
 * (cache_run_io, for runs an asynchronous backend declined).  The
 * server installs itself as the cache's submit and kick hooks.
 *
 * Knows nothing of nbdkit.  Start it after fork (nbdkit's .after_fork).
 */
#ifndef SUBPAGE_WBSERVER_H
#define SUBPAGE_WBSERVER_H

#include <stdbool.h>
#include <stdint.h>

#include "cache.h"

struct cache;
struct wbs;

struct wbs_config {
  unsigned threads;     /* worker threads, >= 1 */
  uint64_t interval_ms; /* timer period (dirty-writeback-ms) */
  uint64_t expire_ms; /* age at which dirty data is written (dirty-expire-ms) */
  /* Debug log of every scheduling decision (tick, kick, drain, collect
   * results with runs and bytes, failed runs), when debug is set and
   * log is not NULL.  Called from the loop thread and the workers.
   */
  cache_log_fn log;
  void *log_opaque;
  bool debug;
  /* Optional asynchronous backend write (the NBD backend).  When set,
   * the submit hook hands each run to it instead of queueing it for a
   * worker, so that any number of runs are in flight at once (bounded
   * by the cache's write-back buffer cap), not one per worker.
   * aio_pwrite starts writing [buf, buf+count) at off and returns 0,
   * and later calls done (arg, err) exactly once, err 0 or -errno, from
   * any thread (possibly before it returns); or returns 1 without
   * starting anything when it cannot take this write (too large, or a
   * flag it cannot carry): a worker then writes the run synchronously.
   * It must not block waiting for the backend.
   */
  int (*aio_pwrite) (void *opaque, const void *buf, uint32_t count,
                     uint64_t off, uint32_t flags,
                     void (*done) (void *arg, int err), void *arg);
  void *aio_opaque;
};

/* Starts the loop and workers and hooks them into C.  Returns NULL and
 * sets *err (-errno) on failure.
 */
struct wbs *wbs_start (struct cache *c, const struct wbs_config *cfg, int *err);
/* Wakes the loop (thread-safe, never blocks). */
void wbs_kick (struct wbs *s);
/* From now on write back everything, as fast as the workers can,
 * regardless of age (shutdown has begun).  Thread-safe.
 */
void wbs_begin_drain (struct wbs *s);
/* Stops the loop and the workers once every queued job and in-flight
 * run has finished, unhooks the cache (its submit hook goes back to
 * synchronous) and frees S.  Dirty data may remain (a pending drain
 * is not finished): the caller then calls cache_drain, which writes it
 * in every mode (cache_flush does nothing in mode=unsafe).
 */
void wbs_stop (struct wbs *s);

#endif /* SUBPAGE_WBSERVER_H */
