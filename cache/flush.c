/* subpage: cache_flush and group commit of backend flushes.
 *
 * A flush takes T = the current epoch and opens a new one (see
 * internal.h).  Every write that returned before the flush started
 * carries a tag <= T; writes that start later carry tags > T.  The
 * flush then
 *   1. collects pages whose DIRTY data is tagged <= T (background
 *      write-back may be collecting others at the same time; the flush
 *      waits for it rather than competing for the page),
 *   2. waits until no tag <= T is alive anywhere: not on a page, not in
 *      a run in flight (including runs background write-back submitted
 *      before the flush began) and not in data that redirtied a run in
 *      flight (which becomes DIRTY again, and is collected, when that
 *      run completes).
 *      A collect can find nothing to take for a while (buffers full,
 *      pages being collected by another thread or inside a TRIM or
 *      ZERO); the flush then sleeps only until collect progress is
 *      counted after that collect (internal.h), never past it,
 *   3. asks the backend to flush, sharing one backend flush among all
 *      flushes that are ready for it at the time (group commit), with
 *      up to GC_MAX_RUNNING backend flushes at once.
 * Each step follows the last completion it depends on, so the backend
 * flush comes after every sub-page write it covers.
 *
 * Errors: a run that fails leaves its data DIRTY (tag kept) and records
 * the errno.  A flush that sees a new error stops collecting, waits for
 * its runs in flight and returns the first error not yet reported; the
 * error is reported once (the next flush retries the data).  Memory is
 * never traded for an error: nothing is dropped.
 *
 * What it does not do: it does not write data newer than T unless that
 * data shares a page range with older data, so a stream of writes
 * cannot starve a flush.
 */
#define _GNU_SOURCE /* strerrordesc_np, see errstr.h */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "errstr.h"
#include "internal.h"
#include "util.h"

/* Backend flushes that may run at once.  With one at a time, a flush
 * that becomes ready while another's backend flush runs waits for that
 * one and then runs its own, so flushes queue behind each other; a few
 * at once let the backend (fdatasync, or a remote) overlap them
 * (docs/benchmarks.md, flush every 32 writes).
 */
#define GC_MAX_RUNNING 4

/* Ticket T is covered by a backend flush that started after T was
 * handed out, i.e. one whose target (the last ticket handed out when it
 * started) is >= T.  A flush that finds one already started for it
 * waits for it; otherwise it starts its own, unless GC_MAX_RUNNING are
 * running, in which case it waits for one to end and looks again.  Every
 * waiter takes the result of the first flush covering it to end.
 */
static int
group_commit (struct cache *c)
{
  struct gc_waiter w = { .done = false };

  lock_take (&c->gc_lock);
  w.ticket = ++c->gc_requested;
  w.next = c->gc_waiters;
  c->gc_waiters = &w;
  while (!w.done) {
    if (c->gc_started < w.ticket && c->gc_running < GC_MAX_RUNNING) {
      uint64_t target = c->gc_requested;
      int r;

      c->gc_started = target;
      c->gc_running++;
      lock_drop (&c->gc_lock);
      r = c->ops->flush (c->bopaque);
      atomic_fetch_add (&c->ctr.backend_flushes, 1);
      lock_take (&c->gc_lock);
      c->gc_running--;
      for (struct gc_waiter **pp = &c->gc_waiters; *pp;) {
        if ((*pp)->ticket <= target) {
          (*pp)->done = true;
          (*pp)->err = r;
          *pp = (*pp)->next;
        }
        else
          pp = &(*pp)->next;
      }
      pthread_cond_broadcast (&c->gc_cv);
    }
    else {
      atomic_fetch_add (&c->w_flush, 1);
      lock_wait (&c->gc_lock, &c->gc_cv);
      atomic_fetch_sub (&c->w_flush, 1);
    }
  }
  lock_drop (&c->gc_lock);
  return w.err;
}

static int flush_body (struct cache *c, bool force);

int
cache_flush (struct cache *c)
{
  return flush_body (c, false);
}

/* The shutdown drain: the same as a flush, in every mode (unsafe mode
 * ignores only the client's flushes).
 */
int
cache_drain (struct cache *c)
{
  return flush_body (c, true);
}

static int
flush_body (struct cache *c, bool force)
{
  uint64_t t0 = report_now_ns (), t, gen0, pages, runs, ticket = 0;
  bool collected_nothing = false, quiet = false;
  int err = 0;

  if (c->cfg.mode == CACHE_MODE_UNSAFE && !force)
    return 0;
  atomic_fetch_add (&c->ctr.flushes, 1);
  if (c->jnl) {
    /* The journal is what must be durable (rule 12); the drain at
     * shutdown also writes it all back.
     */
    err = jnl_flush (c);
    if (!err && force)
      err = jnl_drain_all (c);
    goto done;
  }

  lock_take (&c->wb_lock);
  t = dirty_new_epoch (c);
  gen0 = c->wb_err_gen;
  for (;;) {
    dirty_live_tags (c, t, &pages, &runs);
    if (pages == 0 && runs == 0)
      break;
    if (c->wb_err_gen != gen0) {
      if (runs == 0)
        break; /* failed; nothing more in flight */
    }
    else if (pages > 0 &&
             !(collected_nothing && atomic_load (&c->progress) == ticket)) {
      int n;
      lock_drop (&c->wb_lock);
      n = wb_collect (c, PICK_FLUSH, t, &ticket);
      CACHE_PARK (c, "flush.collected");
      lock_take (&c->wb_lock);
      if (n < 0) {
        err = n;
        break;
      }
      collected_nothing = n == 0;
      continue;
    }
    /* Wait for a run to complete, or, if the last collect found
     * nothing to take, for collect progress since (internal.h).
     */
    atomic_fetch_add (&c->w_flush, 1);
    lock_wait (&c->wb_lock, &c->wb_cv);
    atomic_fetch_sub (&c->w_flush, 1);
    collected_nothing = false;
  }
  if (!err) {
    err = c->wb_err; /* reported once */
    quiet = c->wb_err_quiet;
    c->wb_err = 0;
  }
  /* Stopped with data of epoch <= t still dirty: whoever consumed the
   * recorded error, this flush must not succeed.
   */
  if (!err && (pages > 0 || runs > 0)) {
    err = c->wb_last_err ? c->wb_last_err : -EIO;
    quiet = c->wb_last_quiet;
  }
  lock_drop (&c->wb_lock);

  if (!err)
    err = group_commit (c);
done:
  if (err) {
    atomic_fetch_add (&c->ctr.flush_errors, 1);
    /* Data past the image's end: the resize logged it once (resize.c). */
    report_logf (c, quiet ? CACHE_LOG_DEBUG : CACHE_LOG_ERROR,
                 "flush failed: %s%s", errstr (-err),
                 quiet ? " (data past the image's end)" : "");
  }
  report_latency (&c->hist.flush_latency, report_now_ns () - t0);
  return err;
}
