/* subpage: the journal's drainer thread (see jdrain.h). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1 /* pthread_setname_np */
#endif

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdlib.h>
#include <time.h>

#include "jdrain.h"

struct jdrain {
  struct cache *c;
  unsigned interval_ms;
  pthread_t thread;
  pthread_mutex_t lock;
  pthread_cond_t cv;
  bool kicked, stop;
};

static void
deadline (struct timespec *ts, unsigned ms)
{
  clock_gettime (CLOCK_REALTIME, ts);
  ts->tv_sec += ms / 1000;
  ts->tv_nsec += (long) (ms % 1000) * 1000000L;
  if (ts->tv_nsec >= 1000000000L) {
    ts->tv_sec++;
    ts->tv_nsec -= 1000000000L;
  }
}

static void *
jdrain_thread (void *arg)
{
  struct jdrain *d = arg;

  pthread_mutex_lock (&d->lock);
  while (!d->stop) {
    int r;

    d->kicked = false;
    pthread_mutex_unlock (&d->lock);
    r = cache_journal_drain (d->c);
    pthread_mutex_lock (&d->lock);
    if (r > 0 || d->stop)
      continue; /* more, at once */
    /* Nothing to do, or it failed: wait for a kick (not after a
     * failure: back off the interval), or the interval.
     */
    {
      struct timespec ts;

      deadline (&ts, d->interval_ms);
      while (!d->stop && (r < 0 || !d->kicked))
        if (pthread_cond_timedwait (&d->cv, &d->lock, &ts) == ETIMEDOUT)
          break;
    }
  }
  pthread_mutex_unlock (&d->lock);
  return NULL;
}

void
jdrain_kick (void *opaque)
{
  struct jdrain *d = opaque;

  pthread_mutex_lock (&d->lock);
  d->kicked = true;
  pthread_cond_signal (&d->cv);
  pthread_mutex_unlock (&d->lock);
}

struct jdrain *
jdrain_start (struct cache *c, unsigned interval_ms, int *err)
{
  struct jdrain *d = calloc (1, sizeof *d);
  sigset_t all, old;
  int r;

  if (!d) {
    *err = -ENOMEM;
    return NULL;
  }
  d->c = c;
  d->interval_ms = interval_ms ? interval_ms : 500;
  pthread_mutex_init (&d->lock, NULL);
  pthread_cond_init (&d->cv, NULL);
  /* Signals stay with nbdkit's threads. */
  sigfillset (&all);
  pthread_sigmask (SIG_SETMASK, &all, &old);
  r = pthread_create (&d->thread, NULL, jdrain_thread, d);
  pthread_sigmask (SIG_SETMASK, &old, NULL);
  if (r != 0) {
    pthread_mutex_destroy (&d->lock);
    pthread_cond_destroy (&d->cv);
    free (d);
    *err = -r;
    return NULL;
  }
  pthread_setname_np (d->thread, "subpage-jdrain");
  cache_set_kick (c, jdrain_kick, d);
  return d;
}

void
jdrain_stop (struct jdrain *d)
{
  if (!d)
    return;
  pthread_mutex_lock (&d->lock);
  d->stop = true;
  pthread_cond_signal (&d->cv);
  pthread_mutex_unlock (&d->lock);
  pthread_join (d->thread, NULL);
  cache_set_kick (d->c, NULL, NULL);
  pthread_mutex_destroy (&d->lock);
  pthread_cond_destroy (&d->cv);
  free (d);
}
