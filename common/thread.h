/* subpage: start a thread with every signal blocked, header-only.
 *
 * Every thread the plugin creates (write-back loop and workers, the
 * metrics endpoint, the NBD backend's readers, the shutdown watcher)
 * blocks all signals, so that SIGTERM and SIGINT keep reaching nbdkit's
 * main thread, which owns them.  A new thread inherits its creator's
 * signal mask, so the mask is set around pthread_create and the
 * caller's own mask restored afterwards, whatever happened.
 * Tested by tests/unit/test-thread.c.
 */
#ifndef SUBPAGE_THREAD_H
#define SUBPAGE_THREAD_H

#include <pthread.h>
#include <signal.h>

/* pthread_create (thread, NULL, fn, arg) with all signals blocked in the
 * new thread.  Returns 0 or pthread_create's error number.
 */
static inline int
thread_start_nosignals (pthread_t *thread, void *(*fn) (void *), void *arg)
{
  sigset_t all, saved;
  int r;

  sigfillset (&all);
  pthread_sigmask (SIG_SETMASK, &all, &saved);
  r = pthread_create (thread, NULL, fn, arg);
  pthread_sigmask (SIG_SETMASK, &saved, NULL);
  return r;
}

#endif /* SUBPAGE_THREAD_H */
