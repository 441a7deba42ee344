/* subpage: the journal's drainer thread (see jdrain.h). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1 /* pthread_setname_np */
#endif

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <time.h>

#include "jdrain.h"

struct jdrain {
  struct cache *c;
  unsigned interval_ms;
  uint64_t expire_ms; /* dirty-expire-ms= */
  unsigned ratio;     /* journal-background-ratio= */
  pthread_t thread;
  pthread_mutex_t lock;
  pthread_cond_t cv;
  /* Written under lock; jdrain_kick reads kicked without it first, to
   * return at once while a kick is pending.  holdoff: the thread looked
   * after a kick and found nothing due, and waits out KICK_HOLDOFF_MS
   * before it looks again; kicks meanwhile are kept, not signalled.
   */
  _Atomic bool kicked;
  bool holdoff, stop;
  bool hurry; /* jdrain_hurry: every step is due (shutdown) */
  /* The wait after jdrain_hurry has ended once, even after a failed
   * step (whose wait backs off the interval, kicks or not).
   */
  bool hurry_taken;
  bool stopped; /* jdrain_stop has joined the thread */

  /* The pool that runs a batch's backend writes (cache_set_jio). */
  unsigned nworkers;
  pthread_t *workers;
  pthread_mutex_t qlock;
  pthread_cond_t qcv;
  struct qnode {
    struct qnode *next;
    struct cache_jio *io;
  } * qhead, **qtail;
  bool qstop;
};

static void *
jdrain_worker (void *arg)
{
  struct jdrain *d = arg;

  pthread_mutex_lock (&d->qlock);
  for (;;) {
    struct qnode *n;

    while (!d->qhead && !d->qstop)
      pthread_cond_wait (&d->qcv, &d->qlock);
    if (!d->qhead)
      break;
    n = d->qhead;
    d->qhead = n->next;
    if (!d->qhead)
      d->qtail = &d->qhead;
    pthread_mutex_unlock (&d->qlock);
    cache_jio_run (n->io);
    free (n);
    pthread_mutex_lock (&d->qlock);
  }
  pthread_mutex_unlock (&d->qlock);
  return NULL;
}

/* The jio hook: queues IO for a worker (or runs it here if no node can
 * be had).
 */
static void
jdrain_jio (void *opaque, struct cache_jio *io)
{
  struct jdrain *d = opaque;
  struct qnode *n = malloc (sizeof *n);

  if (!n) {
    cache_jio_run (io);
    return;
  }
  n->io = io;
  n->next = NULL;
  pthread_mutex_lock (&d->qlock);
  *d->qtail = n;
  d->qtail = &n->next;
  pthread_cond_signal (&d->qcv);
  pthread_mutex_unlock (&d->qlock);
}

static void
deadline (struct timespec *ts, unsigned ms)
{
  clock_gettime (CLOCK_MONOTONIC, ts); /* d->cv's clock */
  ts->tv_sec += ms / 1000;
  ts->tv_nsec += (long) (ms % 1000) * 1000000L;
  if (ts->tv_nsec >= 1000000000L) {
    ts->tv_sec++;
    ts->tv_nsec -= 1000000000L;
  }
}

/* How long the thread, having looked after a kick and found no step
 * due, lets further kicks wait before it looks again: writers over
 * dirty-background-ratio kick on every write, and each look would be
 * a wake-up and a context switch.  The longest a writer waiting for
 * journal space waits beyond what the step takes.
 */
#define KICK_HOLDOFF_MS 10

static bool
before (const struct timespec *a, const struct timespec *b)
{
  return a->tv_sec < b->tv_sec ||
         (a->tv_sec == b->tv_sec && a->tv_nsec < b->tv_nsec);
}

static void *
jdrain_thread (void *arg)
{
  struct jdrain *d = arg;

  pthread_mutex_lock (&d->lock);
  while (!d->stop) {
    bool due;
    int r = 0;

    d->kicked = false;
    due = d->hurry;
    pthread_mutex_unlock (&d->lock);
    if (!due)
      due = cache_journal_drain_due (d->c, d->expire_ms, d->ratio);
    if (due)
      r = cache_journal_drain (d->c);
    pthread_mutex_lock (&d->lock);
    if (r > 0 || d->stop)
      continue; /* more, at once */
    /* Nothing to do, or it failed: wait for a kick (not after a
     * failure: back off the interval), or the interval.  Nothing due
     * (journal-background-ratio=): a kick makes the thread look again
     * whether a step is due, and run it at once if one is: a writer
     * waiting for journal space, or for the index's room, kicks, and
     * must not wait for the interval.  After a look that finds nothing
     * due, kicks wait KICK_HOLDOFF_MS.
     */
    {
      struct timespec ts, hold;

      deadline (&ts, d->interval_ms);
      while (!d->stop) {
        if (d->hurry && !d->hurry_taken) {
          d->hurry_taken = true;
          break;
        }
        if (r >= 0 && d->kicked) {
          if (due)
            break;
          d->kicked = false;
          pthread_mutex_unlock (&d->lock);
          due = cache_journal_drain_due (d->c, d->expire_ms, d->ratio);
          pthread_mutex_lock (&d->lock);
          if (due || d->hurry)
            break;
          deadline (&hold, KICK_HOLDOFF_MS);
          if (before (&ts, &hold))
            hold = ts;
          d->holdoff = true;
          while (!d->stop && !d->hurry)
            if (pthread_cond_timedwait (&d->cv, &d->lock, &hold) == ETIMEDOUT)
              break;
          d->holdoff = false;
          if (!before (&hold, &ts))
            break; /* the interval is over */
          continue;
        }
        if (pthread_cond_timedwait (&d->cv, &d->lock, &ts) == ETIMEDOUT)
          break;
      }
    }
  }
  pthread_mutex_unlock (&d->lock);
  return NULL;
}

void
jdrain_hurry (struct jdrain *d)
{
  pthread_mutex_lock (&d->lock);
  d->hurry = true;
  d->kicked = true;
  pthread_cond_signal (&d->cv);
  pthread_mutex_unlock (&d->lock);
}

void
jdrain_kick (void *opaque)
{
  struct jdrain *d = opaque;

  if (atomic_load (&d->kicked)) /* pending: the thread will see it */
    return;
  pthread_mutex_lock (&d->lock);
  d->kicked = true;
  if (!d->holdoff)
    pthread_cond_signal (&d->cv);
  pthread_mutex_unlock (&d->lock);
}

static void
stop_workers (struct jdrain *d)
{
  pthread_mutex_lock (&d->qlock);
  d->qstop = true;
  pthread_cond_broadcast (&d->qcv);
  pthread_mutex_unlock (&d->qlock);
  for (unsigned k = 0; k < d->nworkers; k++)
    pthread_join (d->workers[k], NULL);
  d->nworkers = 0;
}

static void
jdrain_free (struct jdrain *d)
{
  pthread_mutex_destroy (&d->lock);
  pthread_cond_destroy (&d->cv);
  pthread_mutex_destroy (&d->qlock);
  pthread_cond_destroy (&d->qcv);
  free (d->workers);
  free (d);
}

struct jdrain *
jdrain_start (struct cache *c, unsigned interval_ms, uint64_t expire_ms,
              unsigned ratio, unsigned workers, int *err)
{
  struct jdrain *d = calloc (1, sizeof *d);
  sigset_t all, old;
  int r = 0;

  if (!d ||
      !(d->workers = calloc (workers ? workers : 1, sizeof *d->workers))) {
    free (d);
    *err = -ENOMEM;
    return NULL;
  }
  d->c = c;
  d->interval_ms = interval_ms ? interval_ms : 500;
  d->expire_ms = expire_ms;
  d->ratio = ratio;
  pthread_mutex_init (&d->lock, NULL);
  {
    /* The thread's deadlines are on the monotonic clock: a step of the
     * wall clock must not stretch a hold-off or an interval.
     */
    pthread_condattr_t ca;

    pthread_condattr_init (&ca);
    pthread_condattr_setclock (&ca, CLOCK_MONOTONIC);
    pthread_cond_init (&d->cv, &ca);
    pthread_condattr_destroy (&ca);
  }
  pthread_mutex_init (&d->qlock, NULL);
  pthread_cond_init (&d->qcv, NULL);
  d->qtail = &d->qhead;
  /* Signals stay with nbdkit's threads. */
  sigfillset (&all);
  pthread_sigmask (SIG_SETMASK, &all, &old);
  for (unsigned k = 0; k < workers && r == 0; k++) {
    r = pthread_create (&d->workers[k], NULL, jdrain_worker, d);
    if (r == 0) {
      pthread_setname_np (d->workers[k], "subpage-jio");
      d->nworkers++;
    }
  }
  if (r == 0)
    r = pthread_create (&d->thread, NULL, jdrain_thread, d);
  pthread_sigmask (SIG_SETMASK, &old, NULL);
  if (r != 0) {
    stop_workers (d);
    jdrain_free (d);
    *err = -r;
    return NULL;
  }
  pthread_setname_np (d->thread, "subpage-jdrain");
  if (d->nworkers > 0)
    cache_set_jio (c, jdrain_jio, d);
  cache_set_kick (c, jdrain_kick, d);
  return d;
}

void
jdrain_stop (struct jdrain *d)
{
  if (!d || d->stopped)
    return;
  pthread_mutex_lock (&d->lock);
  d->stop = true;
  pthread_cond_signal (&d->cv);
  pthread_mutex_unlock (&d->lock);
  pthread_join (d->thread, NULL);
  cache_set_kick (d->c, NULL, NULL);
  d->stopped = true;
}

void
jdrain_close (struct jdrain *d)
{
  if (!d)
    return;
  jdrain_stop (d);
  /* No batch runs now: the drainer thread has stopped, and the caller's
   * cache_drain has returned.
   */
  cache_set_jio (d->c, NULL, NULL);
  stop_workers (d);
  jdrain_free (d);
}
