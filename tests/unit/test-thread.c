/* subpage unit tests: common/thread.h, thread_start_nosignals.
 *
 * The new thread must have every signal blocked that a thread can block
 * (SIGKILL and SIGSTOP cannot be, and glibc keeps the two real-time
 * signals below SIGRTMIN, which it uses itself, out of every mask), and
 * the caller's own mask must be unchanged afterwards.
 */
#undef NDEBUG

#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "thread.h"

static void *
report_mask (void *arg)
{
  sigset_t *mask = arg;

  pthread_sigmask (SIG_SETMASK, NULL, mask);
  return NULL;
}

static void
test_new_thread_blocks_signals (void **state)
{
  sigset_t mask;
  pthread_t t;

  (void) state;
  sigemptyset (&mask);
  assert_int_equal (thread_start_nosignals (&t, report_mask, &mask), 0);
  assert_int_equal (pthread_join (t, NULL), 0);
  for (int sig = 1; sig < 32; sig++) { /* the standard signals */
    if (sig == SIGKILL || sig == SIGSTOP)
      continue;
    if (!sigismember (&mask, sig))
      fail_msg ("signal %d is not blocked in the new thread", sig);
  }
  for (int sig = SIGRTMIN; sig <= SIGRTMAX; sig++)
    assert_true (sigismember (&mask, sig));
}

static void
test_caller_mask_unchanged (void **state)
{
  sigset_t before, after, mask;
  pthread_t t;

  (void) state;
  /* A caller with a mask of its own: exactly SIGUSR1 blocked. */
  sigemptyset (&before);
  sigaddset (&before, SIGUSR1);
  pthread_sigmask (SIG_SETMASK, &before, NULL);

  assert_int_equal (thread_start_nosignals (&t, report_mask, &mask), 0);
  assert_int_equal (pthread_join (t, NULL), 0);

  pthread_sigmask (SIG_SETMASK, NULL, &after);
  for (int sig = 1; sig <= SIGRTMAX; sig++)
    assert_int_equal (sigismember (&after, sig), sigismember (&before, sig));

  sigemptyset (&before);
  pthread_sigmask (SIG_SETMASK, &before, NULL);
}

int
main (void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test (test_new_thread_blocks_signals),
    cmocka_unit_test (test_caller_mask_unchanged),
  };

  return cmocka_run_group_tests (tests, NULL, NULL);
}
