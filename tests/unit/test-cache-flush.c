/* subpage unit tests: flush (invariant 6), with threads.
 *
 * A flush replies only after every write acknowledged before it is on
 * the backend (all its sub-page runs completed, including runs that
 * background write-back started earlier) and the backend flush has
 * succeeded after those completions.  Concurrent flushes share backend
 * flushes (group commit).  Writes that arrive after the flush need not
 * be covered, and must not hold it up.  Also invariant 3 under flush:
 * a sector redirtied while its run is in flight is not submitted again
 * until that run completes.
 *
 * Threads are used only to have a flush blocked while the test looks;
 * the test waits until the flush has REACHED its blocking point
 * (stats.waiting_flush, fake_held) before asserting.
 */
#undef NDEBUG
/* cache_test_dep defines UNIT_TESTING for cache-assert.h; here it would
 * make cmocka.h swap malloc/free for its leak-checking allocator, which
 * is not thread-safe and flags buffers freed by the teardown.
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

static void
test_flush_waits_for_background_runs (void **state)
{
  struct tcache *t = *state;
  struct cache_config cfg = test_config ();
  struct async *fl;
  size_t n;
  long last_write, flush_idx;

  tc_open (t, &cfg);
  fill_disk (t, 1);
  cache_set_submit (t->c, fake_capture_submit, t->f);
  assert_int_equal (write_pattern (t, 2 * PG + 8 * SS, 8 * SS, 2, 0), 0);
  assert_int_equal (write_pattern (t, 2 * PG + 40 * SS, 8 * SS, 2, 0), 0);
  assert_int_equal (write_pattern (t, 6 * PG, PG, 2, 0), 0);
  assert_int_equal (cache_writeback (t->c, CACHE_WB_BACKGROUND, 0), 3);
  n = fake_nr_captured (t->f);

  fl = async_start (t, ASYNC_FLUSH, NULL, 0, 0, 0);
  WAIT_FOR (stats (t->c).waiting_flush == 1);
  /* Blocked on the held runs: no backend flush, no reply, and nothing
   * submitted twice.
   */
  assert_false (async_done (fl));
  assert_int_equal (counts (t).flushes, 0);
  assert_int_equal (fake_nr_captured (t->f), n);

  for (size_t i = 0; i < n; i++) {
    assert_false (async_done (fl));
    assert_int_equal (counts (t).flushes, 0);
    assert_int_equal (fake_complete (t->f, t->c, i, 0), 0);
  }
  assert_int_equal (async_join (fl), 0);
  assert_int_equal (counts (t).flushes, 1);
  last_write = fake_log_last (t->f, FAKE_WRITE, 0, 0);
  flush_idx = fake_log_last (t->f, FAKE_FLUSH, 0, 0);
  assert_true (last_write >= 0);
  assert_true (flush_idx > last_write);
  assert_true (disk_is_pattern (t, 2 * PG + 8 * SS, 8 * SS, 2));
  assert_true (disk_is_pattern (t, 2 * PG + 40 * SS, 8 * SS, 2));
  assert_true (disk_is_pattern (t, 6 * PG, PG, 2));
}

/* The flush drives write-back itself (through the submit hook) and
 * waits for those runs too.
 */
static void
test_flush_submits_and_waits (void **state)
{
  struct tcache *t = *state;
  struct cache_config cfg = test_config ();
  struct async *fl;

  tc_open (t, &cfg);
  cache_set_submit (t->c, fake_capture_submit, t->f);
  assert_int_equal (write_pattern (t, 9 * PG + 100, 5000, 2, 0), 0);
  fl = async_start (t, ASYNC_FLUSH, NULL, 0, 0, 0);
  WAIT_FOR (stats (t->c).waiting_flush == 1);
  assert_int_equal (fake_nr_captured (t->f), 1);
  assert_int_equal (fake_nr_pending (t->f), 1);
  assert_int_equal (counts (t).flushes, 0);
  assert_false (async_done (fl));
  assert_int_equal (fake_complete (t->f, t->c, 0, 0), 0);
  assert_int_equal (async_join (fl), 0);
  assert_int_equal (counts (t).flushes, 1);
  assert_true (fake_log_last (t->f, FAKE_WRITE, 0, 0) <
               fake_log_last (t->f, FAKE_FLUSH, 0, 0));
  assert_true (disk_is_pattern (t, 9 * PG + 100, 5000, 2));
}

/* Group commit with up to 4 backend flushes at once (GC_MAX_RUNNING in
 * flush.c).  Backend flushes are held.  Four flushes each start their
 * own (none had been started after they asked); four more then wait in
 * the cache, not in the backend.  When one backend flush ends, those
 * four must not complete on it (it started before they asked): one new
 * backend flush covers all four of them.  Eight flushes, five backend
 * flushes in all.
 */
static void
test_group_commit (void **state)
{
  struct tcache *t = *state;
  struct cache_config cfg = test_config ();
  struct async *fl[8];

  tc_open (t, &cfg);
  assert_int_equal (write_pattern (t, 0, 4 * KiB, 2, 0), 0);
  fake_hold (t->f, FAKE_FLUSH, true);
  for (int i = 0; i < 4; i++) {
    fl[i] = async_start (t, ASYNC_FLUSH, NULL, 0, 0, 0);
    WAIT_FOR (fake_held (t->f, FAKE_FLUSH) == (unsigned) i + 1);
  }
  for (int i = 4; i < 8; i++)
    fl[i] = async_start (t, ASYNC_FLUSH, NULL, 0, 0, 0);
  /* The four are waiting in the cache (not in the backend). */
  WAIT_FOR (stats (t->c).waiting_flush >= 4);
  sleep_ms (20); /* an extra only: the counts decide */
  assert_int_equal (fake_held (t->f, FAKE_FLUSH), 4);
  for (int i = 0; i < 8; i++)
    assert_false (async_done (fl[i]));

  /* One backend flush ends: its own flush returns, the four waiting
   * ones start exactly one new backend flush (held) and wait for it.
   */
  fake_release (t->f, FAKE_FLUSH, 1);
  WAIT_FOR (fake_held (t->f, FAKE_FLUSH) == 4 && counts (t).flushes == 1);
  sleep_ms (20);
  assert_int_equal (fake_held (t->f, FAKE_FLUSH), 4);
  for (int i = 4; i < 8; i++)
    assert_false (async_done (fl[i]));

  fake_hold (t->f, FAKE_FLUSH, false);
  for (int i = 0; i < 8; i++)
    assert_int_equal (async_join (fl[i]), 0);
  assert_int_equal (counts (t).flushes, 5);
  assert_true (disk_is_pattern (t, 0, 4 * KiB, 2));
}

/* A flush covers the writes completed before it started: after it
 * returns the backend holds them (and its flush came after them).  A
 * write made while the flush is in progress returns at once.
 */
static void
test_flush_covers_prior_writes (void **state)
{
  struct tcache *t = *state;
  struct cache_config cfg = test_config ();
  struct async *fl;

  tc_open (t, &cfg);
  fill_disk (t, 1);
  assert_int_equal (write_pattern (t, 3 * PG, 8 * KiB, 2, 0), 0);
  assert_int_equal (write_pattern (t, 30 * PG + 7, 77, 2, 0), 0);
  fake_hold (t->f, FAKE_FLUSH, true);
  fl = async_start (t, ASYNC_FLUSH, NULL, 0, 0, 0);
  WAIT_FOR (fake_held (t->f, FAKE_FLUSH) == 1);
  /* The prior writes are on the backend before its flush starts. */
  assert_true (disk_is_pattern (t, 3 * PG, 8 * KiB, 2));
  assert_true (disk_is_pattern (t, 30 * PG + 7, 77, 2));
  /* Writers do not wait for a flush. */
  assert_int_equal (write_pattern (t, 3 * PG, 4 * KiB, 3, 0), 0);
  assert_false (async_done (fl));
  fake_hold (t->f, FAKE_FLUSH, false);
  assert_int_equal (async_join (fl), 0);
  assert_int_equal (counts (t).flushes, 1);
  /* The later write is covered by the next flush. */
  assert_int_equal (cache_flush (t->c), 0);
  assert_true (disk_is_pattern (t, 3 * PG, 4 * KiB, 3));
  assert_true (disk_is_pattern (t, 3 * PG + 4 * KiB, 4 * KiB, 2));
  assert_true (fake_log_last (t->f, FAKE_WRITE, 3 * PG, 4 * KiB) <
               fake_log_last (t->f, FAKE_FLUSH, 0, 0));
}

/* Writes that arrive after a flush began, and are held in write-back,
 * do not hold the flush up.
 */
static void
test_flush_not_held_by_later_writes (void **state)
{
  struct tcache *t = *state;
  struct cache_config cfg = test_config ();
  struct async *fl;

  tc_open (t, &cfg);
  cache_set_submit (t->c, fake_capture_submit, t->f);
  assert_int_equal (write_pattern (t, 1 * PG, 4 * KiB, 2, 0), 0);
  fl = async_start (t, ASYNC_FLUSH, NULL, 0, 0, 0);
  WAIT_FOR (stats (t->c).waiting_flush == 1);
  assert_int_equal (fake_nr_captured (t->f), 1);
  /* A later write, written back and held. */
  assert_int_equal (write_pattern (t, 12 * PG, 4 * KiB, 3, 0), 0);
  assert_int_equal (cache_writeback (t->c, CACHE_WB_BACKGROUND, 0), 1);
  assert_int_equal (fake_nr_captured (t->f), 2);
  assert_int_equal (fake_complete (t->f, t->c, 0, 0), 0);
  /* Capture 1 is still held, yet the flush returns. */
  assert_int_equal (async_join (fl), 0);
  assert_int_equal (fake_nr_pending (t->f), 1);
  assert_int_equal (counts (t).flushes, 1);
  assert_true (disk_is_pattern (t, 1 * PG, 4 * KiB, 2));
  assert_true (sectors_are (t, 12 * PG, 4 * KiB, V | W));
  assert_int_equal (fake_complete (t->f, t->c, 1, 0), 0);
}

/* Invariant 3 under flush: A was written (X), its run is held, A is
 * written again (Y).  The flush must not submit A again until the
 * first run completes; then it writes Y, and Y is what the backend
 * ends up with.
 */
static void
test_flush_redirtied_in_flight (void **state)
{
  struct tcache *t = *state;
  struct cache_config cfg = test_config ();
  const uint64_t a = 4 * PG + 16 * SS;
  struct async *fl;
  struct cache_run *run;

  tc_open (t, &cfg);
  cache_set_submit (t->c, fake_capture_submit, t->f);
  assert_int_equal (write_pattern (t, a, 4 * SS, 2, 0), 0);
  assert_int_equal (cache_writeback (t->c, CACHE_WB_BACKGROUND, 0), 1);
  assert_int_equal (write_pattern (t, a, SS, 3, 0), 0);
  assert_int_equal (cache_debug_sector (t->c, a), V | D | W);
  /* Other dirty data right before A on the same page, so the flush
   * has something to collect there now.
   */
  assert_int_equal (write_pattern (t, a - 2 * SS, 2 * SS, 4, 0), 0);

  fl = async_start (t, ASYNC_FLUSH, NULL, 0, 0, 0);
  WAIT_FOR (stats (t->c).waiting_flush == 1);
  assert_int_equal (fake_nr_captured (t->f), 2);
  assert_false (fake_capture_overlaps (t->f, 1, a, SS));
  assert_false (async_done (fl));
  assert_int_equal (fake_complete (t->f, t->c, 1, 0), 0);
  assert_true (disk_is_pattern (t, a - 2 * SS, 2 * SS, 4));
  WAIT_FOR (stats (t->c).waiting_flush == 1);
  assert_int_equal (fake_nr_captured (t->f), 2);
  assert_false (async_done (fl));

  assert_int_equal (fake_complete (t->f, t->c, 0, 0), 0);
  WAIT_FOR (fake_nr_captured (t->f) == 3);
  run = fake_capture_run (t->f, 2);
  assert_non_null (run);
  assert_int_equal (cache_run_offset (run), a);
  assert_int_equal (cache_run_length (run), SS);
  assert_int_equal (pattern_mismatch (cache_run_data (run), SS, a, 3), -1);
  WAIT_FOR (stats (t->c).waiting_flush == 1);
  assert_false (async_done (fl));
  assert_int_equal (counts (t).flushes, 0);
  assert_int_equal (fake_complete (t->f, t->c, 2, 0), 0);
  assert_int_equal (async_join (fl), 0);
  assert_true (disk_is_pattern (t, a, SS, 3));
  assert_true (disk_is_pattern (t, a + SS, 3 * SS, 2));
  assert_int_equal (cache_debug_sector (t->c, a), V);
  assert_int_equal (counts (t).flushes, 1);
}

/* A run that fails while a flush waits for it: the flush fails with its
 * errno, the data stays dirty, and the next flush writes it.
 */
static void
test_flush_sees_run_failure (void **state)
{
  struct tcache *t = *state;
  struct cache_config cfg = test_config ();
  struct async *fl;

  tc_open (t, &cfg);
  fill_disk (t, 1);
  cache_set_submit (t->c, fake_capture_submit, t->f);
  assert_int_equal (write_pattern (t, 8 * PG, 4 * KiB, 2, 0), 0);
  assert_int_equal (cache_writeback (t->c, CACHE_WB_BACKGROUND, 0), 1);
  fl = async_start (t, ASYNC_FLUSH, NULL, 0, 0, 0);
  WAIT_FOR (stats (t->c).waiting_flush == 1);
  assert_int_equal (fake_complete (t->f, t->c, 0, -ENOSPC), -ENOSPC);
  assert_int_equal (async_join (fl), -ENOSPC);
  assert_true (sectors_are (t, 8 * PG, 4 * KiB, V | D));
  assert_true (disk_is_pattern (t, 8 * PG, 4 * KiB, 1));
  cache_set_submit (t->c, NULL, NULL);
  assert_int_equal (cache_flush (t->c), 0);
  assert_true (disk_is_pattern (t, 8 * PG, 4 * KiB, 2));
}

int
main (void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test_setup_teardown (test_flush_waits_for_background_runs,
                                     tc_setup, tc_teardown),
    cmocka_unit_test_setup_teardown (test_flush_submits_and_waits, tc_setup,
                                     tc_teardown),
    cmocka_unit_test_setup_teardown (test_group_commit, tc_setup, tc_teardown),
    cmocka_unit_test_setup_teardown (test_flush_covers_prior_writes, tc_setup,
                                     tc_teardown),
    cmocka_unit_test_setup_teardown (test_flush_not_held_by_later_writes,
                                     tc_setup, tc_teardown),
    cmocka_unit_test_setup_teardown (test_flush_redirtied_in_flight, tc_setup,
                                     tc_teardown),
    cmocka_unit_test_setup_teardown (test_flush_sees_run_failure, tc_setup,
                                     tc_teardown),
  };

  return cmocka_run_group_tests (tests, NULL, NULL);
}
