/* subpage unit tests: a FUA write whose first run fails before it waits.
 *
 * A FUA write spanning two pages submits the first page's run before
 * it waits for the second page (its sector in flight, or the page
 * inside a TRIM): it never waits holding W bits it has not submitted.
 * When that run fails, the run it then builds for the second page must
 * still be submitted; otherwise its sectors stay under W with no run in
 * flight, its fragment points into the freed batch and its epoch tag
 * stays counted, so every later flush, FUA write, TRIM or ZERO of the
 * sector waits for ever.  Each case is forced without a sleep: a held
 * background run or a held TRIM, and a backend write failed on demand.
 */
#undef NDEBUG
/* See test-cache-idle.c: cmocka's leak-checking allocator is not
 * thread-safe.
 */
#undef UNIT_TESTING

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "helpers.h"

/* The cache is left with a sector under W and a fragment that points
 * into a freed batch: teardown's page_check would read freed memory and
 * a flush would never return.  Free it without looking at it (nothing
 * is in flight, so cache_destroy does not touch the fragments) and
 * fail.
 */
static void
abandon_and_fail (struct tcache *t, const char *why)
{
  struct cache_stats st = stats (t->c);

  while (t->asyncs) {
    struct async *a = t->asyncs;
    t->asyncs = a->next;
    if (!a->joined)
      pthread_join (a->th, NULL);
    free (a->buf);
    free (a);
  }
  cache_destroy (t->c);
  fake_free (t->f);
  t->c = NULL;
  t->f = NULL;
  fail_msg ("%s (writeback_bytes=%llu, runs_in_flight=%llu)", why,
            (unsigned long long) st.writeback_bytes,
            (unsigned long long) st.runs_in_flight);
}

/* After a FUA write that failed: nothing may be left under W once no
 * run is in flight, a flush then reports the error at most once, the
 * next one succeeds, and the image holds the FUA write's data.
 */
static void
check_after_failed_fua (struct tcache *t, uint64_t off, uint32_t len,
                        unsigned seed)
{
  struct cache_stats st = stats (t->c);
  int r;

  if (st.runs_in_flight == 0 && st.writeback_bytes != 0)
    abandon_and_fail (t, "a FUA write returned leaving sectors under W "
                         "with no run in flight: a run it built was never "
                         "submitted");
  r = cache_flush (t->c);
  assert_true (r == 0 || r == -EIO);
  assert_int_equal (cache_flush (t->c), 0);
  assert_true (disk_is_pattern (t, off, len, seed));
  assert_true (read_is_pattern (t, off, len, seed));
  assert_int_equal (stats (t->c).dirty_bytes, 0);
}

/* Page 2's last two sectors and page 3's first two: [x, x+4*SS).
 * Page 3's are under write-back (a captured run, pending); page 2's
 * are dirty.  A FUA write of all four snapshots page 2's into a run,
 * finds page 3's in flight, submits page 2's run first, which fails
 * (EIO), and waits.  When page 3's run completes, it snapshots page 3's
 * sectors into a second run, which must be written too.
 */
static void
test_fua_failed_run_then_wait_inflight (void **state)
{
  struct tcache *t = *state;
  struct cache_config cfg = test_config ();
  const uint64_t x = 3 * PG - 2 * SS;
  unsigned char buf[4 * SS];
  struct fake_capture ci;
  struct async *w;

  tc_open (t, &cfg);
  fill_disk (t, 1);
  cache_set_submit (t->c, fake_capture_submit, t->f);
  assert_int_equal (write_pattern (t, 3 * PG, 2 * SS, 2, 0), 0);
  assert_int_equal (cache_writeback (t->c, CACHE_WB_BACKGROUND, 0), 1);
  assert_int_equal (fake_nr_pending (t->f), 1);
  assert_true (fake_capture_info (t->f, 0, &ci));
  assert_true (ci.off == 3 * PG && ci.len == 2 * SS);
  assert_int_equal (write_pattern (t, x, 2 * SS, 2, 0), 0);
  assert_true (sectors_are (t, x, 2 * SS, V | D));
  assert_true (sectors_are (t, 3 * PG, 2 * SS, V | W));

  fake_fail_nth (t->f, FAKE_WRITE, 1, -EIO); /* page 2's FUA run */
  atomic_store (&tc_quiet_errors, true);
  pattern (buf, sizeof buf, x, 3);
  w = async_start (t, ASYNC_WRITE, buf, sizeof buf, x, CACHE_FUA);
  WAIT_FOR (stats (t->c).waiting_idle == 1);     /* on page 3's run */
  assert_int_equal (counts (t).write_errors, 1); /* page 2's run failed */
  assert_false (async_done (w));
  assert_int_equal (fake_complete (t->f, t->c, 0, 0), 0);
  assert_int_equal (async_join (w), -EIO);
  atomic_store (&tc_quiet_errors, false);
  cache_set_submit (t->c, NULL, NULL); /* nothing is captured now */

  check_after_failed_fua (t, x, 4 * SS, 3);
}

/* The same with page 3 inside a TRIM (of sectors 8-15, held in the
 * backend) instead of under write-back: the FUA write submits page 2's
 * run (which fails) before it waits for the TRIM to end.
 */
static void
test_fua_failed_run_then_wait_busy (void **state)
{
  struct tcache *t = *state;
  struct cache_config cfg = test_config ();
  const uint64_t x = 3 * PG - 2 * SS;
  unsigned char buf[4 * SS];
  struct async *d, *w;

  tc_open (t, &cfg);
  fill_disk (t, 1);
  assert_int_equal (write_pattern (t, x, 4 * SS, 2, 0), 0);

  fake_hold (t->f, FAKE_TRIM, true);
  d = async_start (t, ASYNC_TRIM, NULL, 8 * SS, 3 * PG + 8 * SS, 0);
  WAIT_FOR (fake_held (t->f, FAKE_TRIM) == 1);

  fake_fail_nth (t->f, FAKE_WRITE, 1, -EIO); /* page 2's FUA run */
  atomic_store (&tc_quiet_errors, true);
  pattern (buf, sizeof buf, x, 3);
  w = async_start (t, ASYNC_WRITE, buf, sizeof buf, x, CACHE_FUA);
  WAIT_FOR (stats (t->c).waiting_idle == 1); /* for the TRIM */
  assert_int_equal (counts (t).write_errors, 1);
  assert_false (async_done (w));
  fake_hold (t->f, FAKE_TRIM, false);
  assert_int_equal (async_join (d), 0);
  assert_int_equal (async_join (w), -EIO);
  atomic_store (&tc_quiet_errors, false);

  check_after_failed_fua (t, x, 4 * SS, 3);
}

int
main (void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test_setup_teardown (test_fua_failed_run_then_wait_inflight,
                                     tc_setup, tc_teardown),
    cmocka_unit_test_setup_teardown (test_fua_failed_run_then_wait_busy,
                                     tc_setup, tc_teardown),
  };

  return cmocka_run_group_tests (tests, NULL, NULL);
}
