/* subpage: the write-back server.
 *
 * Notes on the design.
 *
 * Threads.  One libev loop thread (its own loop from ev_loop_new: one
 * loop per thread) owns the scheduling decisions, and cfg->threads
 * worker threads do the work.  Every thread we create blocks all
 * signals, so nbdkit's main thread keeps receiving SIGTERM/SIGINT.
 *
 * The loop has four watchers:
 *   tick_w   ev_timer every interval_ms: if the cache holds dirty data,
 *            ask for a CACHE_WB_EXPIRED collect, and a
 *            CACHE_WB_BACKGROUND one if the cache is over its background
 *            threshold (or we are draining).
 *   kick_w   ev_async sent by wbs_kick (the cache's kick hook, called
 *            from request threads): ask for a background collect while
 *            cache_over_background().
 *   done_w   ev_async sent after a run completed, when the loop may
 *            have something to schedule: an error (back-off), expired
 *            data left (the last EXPIRED collect found some), background
 *            write-back (over the threshold, or draining); and after a
 *            collect that found data.
 *   drain_w  ev_async sent by wbs_begin_drain; stop_w breaks the loop.
 * ev_async_send never blocks (it writes an eventfd at most) and several
 * sends before the loop wakes collapse into one callback.
 *
 * Jobs.  The queue (s->lock + s->work_cond) holds two kinds of job:
 *   IO(run)          a FIFO list of runs handed over by the submit hook
 *                    (with cfg.aio_pwrite, the runs it declined); the
 *                    worker calls cache_run_io (backend write, then
 *                    cache_run_done).
 *   COLLECT(reason)  not a list but one "pending" flag per reason; the
 *                    worker calls cache_writeback (c, reason, expire_ms),
 *                    which snapshots a batch and submits its runs.
 * Own runs: with a synchronous backend the submit hook does not queue a
 * collect's runs; the collecting worker keeps them (wbs_own) and, once
 * its collect is over and the collect flag cleared (so another worker
 * may take the next batch meanwhile), writes them itself one after
 * another.  Queueing each run would cost a lock round and often a
 * wake-up per run; write-back is parallel across batches instead, up
 * to one per worker (and the cache's buffer cap).
 * Ordering guarantees: workers always take an IO job before a collect,
 * and write their own runs before taking any job, so a burst of
 * collecting cannot starve writes, and dirty data is not snapshotted
 * faster than it can be written.  Runs start in the order they were
 * submitted, per worker (they may complete in any order; the cache
 * allows that).  Runs a flush collects in a request thread are not
 * queued when the backend is synchronous: that thread writes them
 * (cache_run_io) and goes on waiting, with no wake-up in between.
 * At most one collect per reason runs at a time, and there is never
 * more than one queued collect per reason.  A collect
 * never re-arms itself: the loop asks for the next one, after each
 * completion (EXPIRED while the last one found data, and BACKGROUND
 * while over the threshold or draining) unless write-back errors
 * increased, and on every timer tick.  A collect that re-armed itself
 * would retry a failing backend in a tight loop (the failed data is
 * dirty again at once).
 *
 * Asynchronous writes (cfg.aio_pwrite, the NBD backend): the submit hook
 * hands each run straight to aio_pwrite instead of queueing an IO job,
 * counting it in aio_inflight (wbs_stop waits for those too); the
 * backend calls wbs_aio_done from its own thread, which accounts the
 * write, calls cache_run_done and signals the loop like a worker would.
 * Runs it declines (returns 1) are queued as IO jobs.  Workers then
 * only collect, and any number of runs are in flight.
 *
 * Completions are processed by the worker, not by the loop: the worker
 * calls cache_run_io, which calls cache_run_done (thread-safe), and
 * then only signals the loop through done_w.  The loop thread never
 * touches cache data beyond asking for statistics and thresholds.
 *
 * Error back-off: once write-back errors increase, neither completions
 * nor kicks ask for a collect until the next timer tick, which retries
 * (one round per interval), so a failing backend is not
 * hammered in a tight loop (the failed sectors are dirty again and the
 * next flush reports the error; see cache.h).
 *
 * Job nodes for IO come from a pool (common/pool.h: preallocated nodes
 * under a leaf lock of its own, a malloc when they are all in use); if
 * even that fails the run is written synchronously in the submitting
 * thread.  A worker's
 * own-run list grows by realloc, also with no lock held (the same
 * fallback if it fails), and is kept for the thread's life, so steady
 * write-back allocates nothing here.  Nothing is allocated and no
 * cache function is called while s->lock is held.
 *
 * Lock order: cache locks (inside cache_*) and s->lock are never held
 * together: the cache calls our hooks with no lock held, and we call
 * cache_* functions only after dropping s->lock.
 *
 * Debug log (cfg->debug, -D subpage.writeback=1 in the plugin): every
 * decision above is logged through cfg->log: each tick that finds dirty
 * data (and which collects it asks for), kicks that ask for a
 * background collect, the drain, back-offs, the result of every collect
 * (reason, runs, bytes: the bytes are counted by the submit hook, which
 * cache_writeback calls in the collecting worker's own thread, through
 * a thread-local counter), and every failed run.
 *
 * What it does not do: it does not flush the backend (cache_flush does
 * that) and it does not write back during wbs_stop beyond finishing
 * jobs already queued; the caller then drains the cache with
 * cache_drain (which, unlike cache_flush, also writes in mode=unsafe).
 */

#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1 /* pthread_setname_np */
#endif

#include <errno.h>
#include <pthread.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

#include <ev.h>

#include "cache.h"
#include "pool.h"
#include "thread.h"
#include "wbserver.h"

/* Preallocated IO job nodes; more are malloc'd when these are in use. */
#define WBS_POOL_JOBS 1024

#define WBS_NR_REASONS 2 /* enum cache_wb_reason */

struct wbs_job {
  struct wbs_job *next;
  struct cache_run *run;
  struct wbs *s; /* for asynchronous completions */
};

struct wbs {
  struct cache *c;
  struct wbs_config cfg;

  /* The loop.  Watchers are started before the loop thread exists;
   * afterwards only the loop thread touches them, except that any
   * thread may ev_async_send.
   */
  struct ev_loop *loop;
  ev_timer tick_w;
  ev_async kick_w, done_w, drain_w, stop_w;
  pthread_t loop_thread;
  bool loop_started;
  uint64_t last_wb_errors; /* loop thread only */
  bool backoff;            /* loop thread only: errors seen since
                                 * the last tick, so only the timer
                                 * retries */

  atomic_bool draining;
  /* The last EXPIRED collect found data: completions ask for the next
   * one.  Once one finds nothing, only the timer asks (asking after
   * every completion would wake a worker for an empty collect on every
   * write).
   */
  atomic_bool expired_more;

  /* Everything below is guarded by lock. */
  pthread_mutex_t lock;
  pthread_cond_t work_cond; /* workers: a job is available, or quit */
  pthread_cond_t idle_cond; /* wbs_stop: nothing queued or running */
  struct wbs_job *io_head, *io_tail;
  bool collect_pending[WBS_NR_REASONS];
  bool collect_running[WBS_NR_REASONS];
  /* pending || running, readable without the lock: while a collect is
   * armed, completions and kicks need not wake the loop to ask for one
   * (a collect that finds data signals done_w itself).
   */
  atomic_bool armed[WBS_NR_REASONS];
  unsigned busy;         /* workers executing a job */
  unsigned aio_inflight; /* runs handed to cfg.aio_pwrite */
  bool stopping;         /* refuse collects; signal idle_cond */
  bool quit;             /* workers exit when the queue is empty */

  pthread_t *workers;
  unsigned nworkers; /* started so far */

  struct pool jobs; /* IO job nodes (its own lock) */
};

/* Bytes of the runs submitted by the collect running in this thread
 * (NULL outside a collect), for the debug log.  Non-NULL also tells the
 * submit hook that the run belongs to this worker's collect.
 */
static __thread uint64_t *wbs_collect_bytes;

/* Set in worker threads.  Runs submitted by any other thread come from
 * cache_flush in a request thread: without cfg.aio_pwrite that thread
 * writes them itself (see wbs_submit).
 */
static __thread bool wbs_in_worker;

/* A worker's own runs: those of the batch its collect just submitted,
 * when the backend is synchronous.  The worker writes them itself once
 * the collect is over (see wbs_worker), so it is empty between
 * collects.  Grown with realloc, with no lock held, and kept for the
 * thread's life.
 */
struct wbs_own {
  struct cache_run **runs;
  size_t n, cap;
};
static __thread struct wbs_own wbs_own;

static const char *
wbs_reason_name (enum cache_wb_reason why)
{
  switch (why) {
  case CACHE_WB_EXPIRED: return "expired";
  case CACHE_WB_BACKGROUND: return "background";
  default: abort ();
  }
}

static void __attribute__ ((format (printf, 2, 3)))
wbs_debug (struct wbs *s, const char *fmt, ...)
{
  va_list ap;

  if (!s->cfg.debug || s->cfg.log == NULL)
    return;
  va_start (ap, fmt);
  s->cfg.log (s->cfg.log_opaque, CACHE_LOG_DEBUG, fmt, ap);
  va_end (ap);
}

/* s->lock held.  Wakes wbs_stop when nothing is queued or running. */
static void
wbs_check_idle_locked (struct wbs *s)
{
  if (s->stopping && s->io_head == NULL && s->busy == 0 && s->aio_inflight == 0)
    pthread_cond_broadcast (&s->idle_cond);
}

/* s->lock held, after collect_pending/collect_running[WHY] changed. */
static void
wbs_armed_update_locked (struct wbs *s, enum cache_wb_reason why)
{
  atomic_store (&s->armed[why],
                s->collect_pending[why] || s->collect_running[why]);
}

/* Any thread, s->lock not held.  Arms a collect job for WHY. */
static void
wbs_request_collect (struct wbs *s, enum cache_wb_reason why)
{
  pthread_mutex_lock (&s->lock);
  if (!s->stopping && !s->collect_pending[why]) {
    s->collect_pending[why] = true;
    wbs_armed_update_locked (s, why);
    pthread_cond_signal (&s->work_cond);
  }
  pthread_mutex_unlock (&s->lock);
}

/* s->lock held.  A collect reason that is pending and not already
 * running, or -1.  Background first: it is the one writers wait for.
 */
static int
wbs_pick_collect_locked (struct wbs *s)
{
  static const enum cache_wb_reason order[] = {
    CACHE_WB_BACKGROUND,
    CACHE_WB_EXPIRED,
  };
  size_t i;

  if (s->stopping)
    return -1;
  for (i = 0; i < sizeof order / sizeof order[0]; ++i)
    if (s->collect_pending[order[i]] && !s->collect_running[order[i]])
      return order[i];
  return -1;
}

static bool
wbs_background_applies (struct wbs *s)
{
  return atomic_load (&s->draining) || cache_over_background (s->c);
}

/* After a run completed with R: wake the loop (done_w) if it has
 * something to decide: an error (back-off), or a collect to ask for
 * (expired data left, or background write-back to continue) that is not
 * already pending or running.  Otherwise the eventfd write, the loop's
 * wake-up and its statistics pass would be spent on every run.
 */
static void
wbs_signal_done (struct wbs *s, int r)
{
  if (r < 0 ||
      (atomic_load (&s->expired_more) &&
       !atomic_load (&s->armed[CACHE_WB_EXPIRED])) ||
      (!atomic_load (&s->armed[CACHE_WB_BACKGROUND]) &&
       wbs_background_applies (s)))
    ev_async_send (s->loop, &s->done_w);
}

/* A worker writes RUN (cache_run_io: the backend write, then
 * cache_run_done) and tells the loop if it has something to decide.
 */
static void
wbs_run_io (struct wbs *s, struct cache_run *run)
{
  uint64_t off = 0;
  uint32_t len = 0;
  int r;

  if (s->cfg.debug) {
    off = cache_run_offset (run);
    len = cache_run_length (run);
  }
  r = cache_run_io (s->c, run);
  if (r < 0)
    wbs_debug (s,
               "writeback: run of %" PRIu32 " bytes at %" PRIu64
               " failed (errno %d): its data is dirty again",
               len, off, -r);
  wbs_signal_done (s, r);
}

static void *
wbs_worker (void *arg)
{
  struct wbs *s = arg;

  wbs_in_worker = true;
  pthread_setname_np (pthread_self (), "subpage-wb");
  pthread_mutex_lock (&s->lock);
  for (;;) {
    struct wbs_job *job = s->io_head;
    int why;

    if (job != NULL) {
      struct cache_run *run = job->run;

      s->io_head = job->next;
      if (s->io_head == NULL)
        s->io_tail = NULL;
      s->busy++;
      pthread_mutex_unlock (&s->lock);

      pool_put (&s->jobs, job);
      wbs_run_io (s, run);

      pthread_mutex_lock (&s->lock);
      s->busy--;
      wbs_check_idle_locked (s);
      continue;
    }

    why = wbs_pick_collect_locked (s);
    if (why >= 0) {
      uint64_t bytes = 0;
      int r;

      s->collect_pending[why] = false;
      s->collect_running[why] = true;
      wbs_armed_update_locked (s, why);
      s->busy++;
      pthread_mutex_unlock (&s->lock);

      wbs_collect_bytes = &bytes;
      r = cache_writeback (s->c, why, s->cfg.expire_ms);
      wbs_collect_bytes = NULL;
      if (why == CACHE_WB_EXPIRED)
        atomic_store (&s->expired_more, r > 0);
      if (r != 0)
        wbs_debug (s, "writeback: collect %s: %d runs, %" PRIu64 " bytes",
                   wbs_reason_name (why), r, bytes);

      pthread_mutex_lock (&s->lock);
      s->collect_running[why] = false;
      wbs_armed_update_locked (s, why);
      if (s->collect_pending[why])
        pthread_cond_signal (&s->work_cond);
      pthread_mutex_unlock (&s->lock);

      /* Found data: the loop may ask for the next batch now, not only
       * when a run completes (with asynchronous writes the worker is
       * free at once, and waiting for a completion would keep only one
       * batch in flight).  The collect is over, so another worker may
       * take the next one while this one writes its own runs.  The cache's
       * buffer cap still bounds what is in flight.
       */
      if (r > 0)
        ev_async_send (s->loop, &s->done_w);
      for (size_t k = 0; k < wbs_own.n; ++k)
        wbs_run_io (s, wbs_own.runs[k]);
      wbs_own.n = 0;

      pthread_mutex_lock (&s->lock);
      s->busy--;
      wbs_check_idle_locked (s);
      continue;
    }

    if (s->quit)
      break;
    pthread_cond_wait (&s->work_cond, &s->lock);
  }
  pthread_mutex_unlock (&s->lock);
  free (wbs_own.runs);
  return NULL;
}

/* cfg.aio_pwrite's completion: any thread, no lock held. */
static void
wbs_aio_done (void *arg, int err)
{
  struct wbs_job *job = arg;
  struct wbs *s = job->s;
  struct cache_run *run = job->run;

  if (err < 0)
    wbs_debug (s,
               "writeback: run of %" PRIu32 " bytes at %" PRIu64
               " failed (errno %d): its data is dirty again",
               cache_run_length (run), cache_run_offset (run), -err);
  cache_run_account (s->c, run);
  cache_run_done (s->c, run, err);
  wbs_signal_done (s, err);
  /* Before aio_inflight drops: from then on wbs_stop may free S. */
  pool_put (&s->jobs, job);

  pthread_mutex_lock (&s->lock);
  s->aio_inflight--;
  wbs_check_idle_locked (s);
  pthread_mutex_unlock (&s->lock);
}

/* The cache's submit hook: start RUN through cfg.aio_pwrite, or queue
 * it for a worker.  Called from request threads (cache_flush) and
 * workers (cache_writeback), no lock held.
 */
static void
wbs_submit (void *opaque, struct cache *c, struct cache_run *run)
{
  struct wbs *s = opaque;
  struct wbs_job *job;

  if (wbs_collect_bytes != NULL)
    *wbs_collect_bytes += cache_run_length (run);

  /* A flush's runs with a synchronous backend: written by the flushing
   * thread itself.  Handing each to a worker would cost two wake-ups
   * per run (worker, then the flush again) and leave the flush asleep
   * meanwhile; concurrent flushes still write in parallel, each its own
   * runs.
   */
  if (s->cfg.aio_pwrite == NULL && !wbs_in_worker) {
    cache_run_io (c, run);
    return;
  }

  /* A background collect's runs with a synchronous backend: kept by the
   * collecting worker, which writes them once its collect is over.
   * Queueing each for the pool would cost a lock round and often a
   * wake-up per run; parallelism is across batches instead (other workers
   * collect and write the next ones meanwhile).  If the list cannot
   * grow, the run is written here and now.
   */
  if (s->cfg.aio_pwrite == NULL && wbs_collect_bytes != NULL) {
    if (wbs_own.n == wbs_own.cap) {
      size_t cap = wbs_own.cap ? 2 * wbs_own.cap : 256;
      struct cache_run **v = realloc (wbs_own.runs, cap * sizeof *v);

      if (v == NULL) {
        wbs_run_io (s, run);
        return;
      }
      wbs_own.runs = v;
      wbs_own.cap = cap;
    }
    wbs_own.runs[wbs_own.n++] = run;
    return;
  }

  job = pool_get (&s->jobs);
  if (job == NULL) {
    /* Out of memory: do it here rather than lose the run. */
    cache_run_io (c, run);
    return;
  }
  job->run = run;
  job->s = s;
  job->next = NULL;

  if (s->cfg.aio_pwrite != NULL) {
    int r;

    if (!cache_run_start (c, run)) { /* the image shrank: not written */
      pool_put (&s->jobs, job);
      wbs_signal_done (s, -ERANGE);
      return;
    }
    pthread_mutex_lock (&s->lock);
    s->aio_inflight++;
    pthread_mutex_unlock (&s->lock);
    r = s->cfg.aio_pwrite (s->cfg.aio_opaque, cache_run_data (run),
                           cache_run_length (run), cache_run_offset (run),
                           cache_run_flags (run), wbs_aio_done, job);
    if (r == 0)
      return; /* wbs_aio_done follows */
    /* Not taken: a worker writes it. */
    pthread_mutex_lock (&s->lock);
    s->aio_inflight--;
    pthread_mutex_unlock (&s->lock);
  }

  pthread_mutex_lock (&s->lock);
  if (s->io_tail != NULL)
    s->io_tail->next = job;
  else
    s->io_head = job;
  s->io_tail = job;
  pthread_cond_signal (&s->work_cond);
  pthread_mutex_unlock (&s->lock);
}

/* The cache kicks after every write while over the background
 * threshold; a background collect already armed will be followed by
 * another if it finds data, so the loop need not wake.
 */
static void
wbs_kick_hook (void *opaque)
{
  struct wbs *s = opaque;

  if (!atomic_load (&s->armed[CACHE_WB_BACKGROUND]))
    wbs_kick (s);
}

/* Loop thread callbacks. */

static void
wbs_tick_cb (struct ev_loop *loop, ev_timer *w, int revents)
{
  struct wbs *s = ev_userdata (loop);
  struct cache_stats st;

  (void) w;
  (void) revents;
  cache_get_stats (s->c, &st);
  s->last_wb_errors = st.wb_errors;
  s->backoff = false; /* the tick is the retry */
  if (st.dirty_bytes == 0)
    return;
  wbs_request_collect (s, CACHE_WB_EXPIRED);
  if (wbs_background_applies (s)) {
    wbs_request_collect (s, CACHE_WB_BACKGROUND);
    wbs_debug (s,
               "writeback: tick: %" PRIu64 " bytes dirty, %" PRIu64
               " under write-back%s: collect expired and background",
               st.dirty_bytes, st.writeback_bytes,
               atomic_load (&s->draining) ? ", draining"
                                          : ", over the background threshold");
  }
  else
    wbs_debug (s,
               "writeback: tick: %" PRIu64 " bytes dirty, %" PRIu64
               " under write-back: collect expired",
               st.dirty_bytes, st.writeback_bytes);
}

static void
wbs_kick_cb (struct ev_loop *loop, ev_async *w, int revents)
{
  struct wbs *s = ev_userdata (loop);

  (void) w;
  (void) revents;
  if (!s->backoff && wbs_background_applies (s)) {
    wbs_debug (s, "writeback: kick: over the background threshold: "
                  "collect background");
    wbs_request_collect (s, CACHE_WB_BACKGROUND);
  }
}

static void
wbs_done_cb (struct ev_loop *loop, ev_async *w, int revents)
{
  struct wbs *s = ev_userdata (loop);
  struct cache_stats st;

  (void) w;
  (void) revents;
  cache_get_stats (s->c, &st);
  if (st.wb_errors != s->last_wb_errors) {
    /* Back off: until the next tick, neither completions nor kicks ask
     * for a collect; the tick retries, once.
     */
    wbs_debug (s,
               "writeback: %" PRIu64 " new write-back errors: "
               "backing off until the next tick",
               st.wb_errors - s->last_wb_errors);
    s->last_wb_errors = st.wb_errors;
    s->backoff = true;
    return;
  }
  if (s->backoff || st.dirty_bytes == 0)
    return;
  if (atomic_load (&s->expired_more))
    wbs_request_collect (s, CACHE_WB_EXPIRED);
  if (wbs_background_applies (s))
    wbs_request_collect (s, CACHE_WB_BACKGROUND);
}

static void
wbs_drain_cb (struct ev_loop *loop, ev_async *w, int revents)
{
  struct wbs *s = ev_userdata (loop);

  (void) w;
  (void) revents;
  wbs_debug (s, "writeback: drain: writing back everything");
  wbs_request_collect (s, CACHE_WB_BACKGROUND);
}

static void
wbs_stop_cb (struct ev_loop *loop, ev_async *w, int revents)
{
  (void) w;
  (void) revents;
  ev_break (loop, EVBREAK_ALL);
}

static void *
wbs_loop_main (void *arg)
{
  struct wbs *s = arg;

  pthread_setname_np (pthread_self (), "subpage-wbloop");
  ev_run (s->loop, 0);
  return NULL;
}

/* Makes the workers exit once the queue is empty, stops the loop, and
 * joins every thread that was started.  Workers go first: they signal
 * the loop, which must still exist then.
 */
static void
wbs_join_threads (struct wbs *s)
{
  unsigned i;

  pthread_mutex_lock (&s->lock);
  s->stopping = true;
  s->quit = true;
  pthread_cond_broadcast (&s->work_cond);
  pthread_mutex_unlock (&s->lock);
  for (i = 0; i < s->nworkers; ++i)
    pthread_join (s->workers[i], NULL);
  s->nworkers = 0;

  if (s->loop_started) {
    ev_async_send (s->loop, &s->stop_w);
    pthread_join (s->loop_thread, NULL);
    s->loop_started = false;
  }
}

/* Frees S and what it owns; threads must be joined. */
static void
wbs_free (struct wbs *s)
{
  if (s->loop != NULL)
    ev_loop_destroy (s->loop);
  pthread_cond_destroy (&s->idle_cond);
  pthread_cond_destroy (&s->work_cond);
  pthread_mutex_destroy (&s->lock);
  pool_destroy (&s->jobs);
  free (s->workers);
  free (s);
}

struct wbs *
wbs_start (struct cache *c, const struct wbs_config *cfg, int *err)
{
  struct wbs *s;
  unsigned i;
  int r;

  if (cfg->threads < 1 || cfg->interval_ms < 1) {
    *err = -EINVAL;
    return NULL;
  }
  s = calloc (1, sizeof *s);
  if (s == NULL) {
    *err = -ENOMEM;
    return NULL;
  }
  s->c = c;
  s->cfg = *cfg;
  atomic_init (&s->draining, false);
  atomic_init (&s->expired_more, false);
  atomic_init (&s->armed[CACHE_WB_EXPIRED], false);
  atomic_init (&s->armed[CACHE_WB_BACKGROUND], false);
  pthread_mutex_init (&s->lock, NULL);
  pthread_cond_init (&s->work_cond, NULL);
  pthread_cond_init (&s->idle_cond, NULL);
  r = pool_init (&s->jobs, sizeof (struct wbs_job), WBS_POOL_JOBS);

  s->workers = calloc (cfg->threads, sizeof *s->workers);
  s->loop = ev_loop_new (EVFLAG_AUTO | EVFLAG_NOSIGMASK);
  if (r < 0 || s->workers == NULL || s->loop == NULL) {
    r = -ENOMEM;
    goto err_free;
  }
  ev_set_userdata (s->loop, s);
  ev_timer_init (&s->tick_w, wbs_tick_cb, cfg->interval_ms / 1000.,
                 cfg->interval_ms / 1000.);
  ev_timer_start (s->loop, &s->tick_w);
  ev_async_init (&s->kick_w, wbs_kick_cb);
  ev_async_start (s->loop, &s->kick_w);
  ev_async_init (&s->done_w, wbs_done_cb);
  ev_async_start (s->loop, &s->done_w);
  ev_async_init (&s->drain_w, wbs_drain_cb);
  ev_async_start (s->loop, &s->drain_w);
  ev_async_init (&s->stop_w, wbs_stop_cb);
  ev_async_start (s->loop, &s->stop_w);

  for (i = 0; i < cfg->threads; ++i) {
    r = thread_start_nosignals (&s->workers[i], wbs_worker, s);
    if (r != 0)
      goto err_threads;
    s->nworkers++;
  }
  r = thread_start_nosignals (&s->loop_thread, wbs_loop_main, s);
  if (r != 0)
    goto err_threads;
  s->loop_started = true;

  cache_set_submit (c, wbs_submit, s);
  cache_set_kick (c, wbs_kick_hook, s);
  return s;

err_threads:
  r = -r;
  wbs_join_threads (s);
err_free:
  wbs_free (s);
  *err = r;
  return NULL;
}

void
wbs_kick (struct wbs *s)
{
  ev_async_send (s->loop, &s->kick_w);
}

void
wbs_begin_drain (struct wbs *s)
{
  atomic_store (&s->draining, true);
  ev_async_send (s->loop, &s->drain_w);
}

/* Also returns when the queue is empty and no job is running. */
static void
wbs_wait_idle (struct wbs *s)
{
  pthread_mutex_lock (&s->lock);
  s->stopping = true;
  s->collect_pending[CACHE_WB_EXPIRED] = false;
  s->collect_pending[CACHE_WB_BACKGROUND] = false;
  wbs_armed_update_locked (s, CACHE_WB_EXPIRED);
  wbs_armed_update_locked (s, CACHE_WB_BACKGROUND);
  while (s->io_head != NULL || s->busy > 0 || s->aio_inflight > 0)
    pthread_cond_wait (&s->idle_cond, &s->lock);
  pthread_mutex_unlock (&s->lock);
}

void
wbs_stop (struct wbs *s)
{
  if (s == NULL)
    return;

  /* No new collects; wait for queued and running jobs (a running
   * collect may still queue runs, which are then written too).
   */
  wbs_wait_idle (s);

  /* Unhook.  Callers guarantee no request thread is inside the cache
   * any more (nbdkit .cleanup), so after this nothing can reach our
   * queue; wait once more for any run that slipped in meanwhile.
   */
  cache_set_submit (s->c, NULL, NULL);
  cache_set_kick (s->c, NULL, NULL);
  wbs_wait_idle (s);

  wbs_join_threads (s);
  wbs_free (s);
}
