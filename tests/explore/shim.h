/* subpage schedule explorer: the core's view of pthreads.
 *
 * Force-included (-include) into the explorer's own build of cache/, so
 * that every mutex and condition variable operation of the core goes
 * through the explorer's scheduler (explore.c), which decides which
 * thread runs at each of them.  The rest of the project never sees
 * this file.
 */
#ifndef SUBPAGE_EXPLORE_SHIM_H
#define SUBPAGE_EXPLORE_SHIM_H

/* First of all the core's includes: the feature macro its files set. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <pthread.h>
#include <time.h>

int x_mutex_lock (pthread_mutex_t *m);
int x_mutex_unlock (pthread_mutex_t *m);
int x_cond_wait (pthread_cond_t *cv, pthread_mutex_t *m);
int x_cond_timedwait (pthread_cond_t *cv, pthread_mutex_t *m,
                      const struct timespec *abstime);
int x_cond_broadcast (pthread_cond_t *cv);
int x_cond_signal (pthread_cond_t *cv);

#define pthread_mutex_lock x_mutex_lock
#define pthread_mutex_unlock x_mutex_unlock
#define pthread_cond_wait x_cond_wait
#define pthread_cond_timedwait x_cond_timedwait
#define pthread_cond_broadcast x_cond_broadcast
#define pthread_cond_signal x_cond_signal

#endif /* SUBPAGE_EXPLORE_SHIM_H */
