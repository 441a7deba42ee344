/* subpage unit tests: backend errors (invariant 7, errors keep data).
 *
 * A failed backend write sets D again on its sectors and records the
 * errno; the next flush fails with it (once, like Linux's errseq);
 * nothing is dropped, and a later flush retries and succeeds.  Memory
 * pressure never discards a dirty sector, even one whose write failed.
 * Backend flush and read errors are reported too.  No threads.
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
persistent_write_error (struct tcache *t, int err)
{
  struct cache_config cfg = test_config ();

  tc_open (t, &cfg);
  fill_disk (t, 1);
  assert_int_equal (write_pattern (t, 3 * PG + 4 * KiB, 8 * KiB, 2, 0), 0);
  assert_int_equal (write_pattern (t, 9 * PG + 100, 300, 2, 0), 0);
  fake_fail_all (t->f, FAKE_WRITE, err);

  assert_int_equal (cache_flush (t->c), err);
  assert_true (counts (t).write_errors > 0); /* it did try */
  assert_int_equal (counts (t).writes, 0);
  /* Kept dirty, not under write-back, and the data is intact. */
  assert_true (sectors_are (t, 3 * PG + 4 * KiB, 8 * KiB, V | D));
  assert_int_equal (cache_debug_sector (t->c, 9 * PG + 100), V | D);
  assert_true (read_is_pattern (t, 3 * PG + 4 * KiB, 8 * KiB, 2));
  assert_true (read_is_pattern (t, 9 * PG + 100, 300, 2));
  assert_true (disk_is_pattern (t, 3 * PG, PG, 1));
  assert_true (disk_is_pattern (t, 9 * PG, PG, 1));
  assert_int_equal (stats (t->c).dirty_bytes, 8 * KiB + SS);
  assert_int_equal (stats (t->c).writeback_bytes, 0);
  assert_true (stats (t->c).wb_errors > 0);
  assert_true (stats (t->c).flush_errors > 0);
  assert_true (cache_debug_check (t->c));

  /* Fault cleared: the next flush writes everything and succeeds. */
  fake_fail_all (t->f, FAKE_WRITE, 0);
  assert_int_equal (cache_flush (t->c), 0);
  assert_true (disk_is_pattern (t, 3 * PG + 4 * KiB, 8 * KiB, 2));
  assert_true (disk_is_pattern (t, 9 * PG + 100, 300, 2));
  assert_true (disk_is_pattern (t, 9 * PG, 100, 1));
  assert_true (sectors_are (t, 3 * PG + 4 * KiB, 8 * KiB, V));
  assert_int_equal (stats (t->c).dirty_bytes, 0);
  assert_true (fake_log_last (t->f, FAKE_WRITE, 0, 0) <
               fake_log_last (t->f, FAKE_FLUSH, 0, 0));
  assert_int_equal (cache_flush (t->c), 0);
}

static void
test_persistent_eio (void **state)
{
  persistent_write_error (*state, -EIO);
}

static void
test_persistent_enospc (void **state)
{
  persistent_write_error (*state, -ENOSPC);
}

/* A background run fails once; the next flush retries it successfully
 * but still reports the error (it happened to a write the client was
 * told had succeeded); the flush after that is clean.
 */
static void
test_background_failure_reported_once (void **state)
{
  struct tcache *t = *state;
  struct cache_config cfg = test_config ();

  tc_open (t, &cfg);
  fill_disk (t, 1);
  cache_set_submit (t->c, fake_capture_submit, t->f);
  assert_int_equal (write_pattern (t, 5 * PG, 16 * KiB, 2, 0), 0);
  assert_int_equal (cache_writeback (t->c, CACHE_WB_BACKGROUND, 0), 1);
  assert_true (sectors_are (t, 5 * PG, 16 * KiB, V | W));
  assert_int_equal (fake_complete (t->f, t->c, 0, -EIO), -EIO);
  assert_true (sectors_are (t, 5 * PG, 16 * KiB, V | D));
  assert_true (disk_is_pattern (t, 5 * PG, 16 * KiB, 1));
  assert_true (read_is_pattern (t, 5 * PG, 16 * KiB, 2));
  assert_int_equal (counts (t).writes, 0);

  cache_set_submit (t->c, NULL, NULL);
  assert_int_equal (cache_flush (t->c), -EIO);
  assert_true (disk_is_pattern (t, 5 * PG, 16 * KiB, 2));
  assert_true (sectors_are (t, 5 * PG, 16 * KiB, V));
  assert_int_equal (cache_flush (t->c), 0);
  assert_int_equal (cache_flush (t->c), 0);
}

/* The same with a one-shot fault in the fake itself (the 2nd write of
 * a flush fails): the flush fails, the failed range stays dirty, the
 * other is written; the next flush writes the rest and succeeds.
 */
static void
test_nth_write_fails (void **state)
{
  struct tcache *t = *state;
  struct cache_config cfg = test_config ();
  unsigned dirty_after;

  tc_open (t, &cfg);
  fill_disk (t, 1);
  assert_int_equal (write_pattern (t, 1 * PG, 4 * KiB, 2, 0), 0);
  assert_int_equal (write_pattern (t, 3 * PG, 4 * KiB, 3, 0), 0);
  fake_fail_nth (t->f, FAKE_WRITE, 2, -EIO);
  assert_int_equal (cache_flush (t->c), -EIO);
  assert_int_equal (counts (t).write_errors, 1);
  /* At most one range is still dirty (the flush may have retried the
   * failed one itself); whatever is not dirty is on disk.
   */
  dirty_after = (cache_debug_sector (t->c, 1 * PG) == (V | D)) +
                (cache_debug_sector (t->c, 3 * PG) == (V | D));
  assert_true (dirty_after <= 1);
  if (cache_debug_sector (t->c, 1 * PG) == V)
    assert_true (disk_is_pattern (t, 1 * PG, 4 * KiB, 2));
  if (cache_debug_sector (t->c, 3 * PG) == V)
    assert_true (disk_is_pattern (t, 3 * PG, 4 * KiB, 3));
  assert_int_equal (cache_flush (t->c), 0);
  assert_true (disk_is_pattern (t, 1 * PG, 4 * KiB, 2));
  assert_true (disk_is_pattern (t, 3 * PG, 4 * KiB, 3));
}

/* Memory pressure never discards a dirty sector, even after its write
 * failed: read far more pages than the cache holds, then flush.
 */
static void
test_failed_data_survives_eviction (void **state)
{
  struct tcache *t = *state;
  struct cache_config cfg = test_config ();
  unsigned char *buf = malloc (PG);

  assert_non_null (buf);
  cfg.cache_size = CACHE_MIN_PAGES * PG;
  cfg.dirty_ratio = 100;
  tc_open (t, &cfg);
  fill_disk (t, 1);
  assert_int_equal (write_pattern (t, 2 * PG + SS, 3 * SS, 2, 0), 0);
  fake_fail_all (t->f, FAKE_WRITE, -EIO);
  assert_int_equal (cache_flush (t->c), -EIO);
  fake_fail_all (t->f, FAKE_WRITE, 0);
  for (uint64_t p = 10; p < 60; p++) {
    assert_int_equal (cache_read (t->c, buf, PG, p * PG), 0);
    assert_true (stats (t->c).pages_resident <= CACHE_MIN_PAGES);
  }
  assert_true (stats (t->c).evictions > 0);
  assert_true (cache_debug_resident (t->c, 2 * PG));
  assert_true (sectors_are (t, 2 * PG + SS, 3 * SS, V | D));
  assert_int_equal (cache_flush (t->c), 0);
  assert_true (disk_is_pattern (t, 2 * PG + SS, 3 * SS, 2));
  free (buf);
}

static void
test_backend_flush_error (void **state)
{
  struct tcache *t = *state;
  struct cache_config cfg = test_config ();

  tc_open (t, &cfg);
  assert_int_equal (write_pattern (t, 0, 4 * KiB, 2, 0), 0);
  fake_fail_nth (t->f, FAKE_FLUSH, 1, -EIO);
  assert_int_equal (cache_flush (t->c), -EIO);
  assert_int_equal (counts (t).flush_errors, 1);
  /* The data did reach the backend; only durability failed. */
  assert_true (disk_is_pattern (t, 0, 4 * KiB, 2));
  assert_int_equal (cache_flush (t->c), 0);
  assert_int_equal (counts (t).flushes, 1);
}

static void
test_read_error (void **state)
{
  struct tcache *t = *state;
  struct cache_config cfg = test_config ();
  unsigned char buf[4096];

  tc_open (t, &cfg);
  fill_disk (t, 1);
  fake_fail_nth (t->f, FAKE_READ, 1, -EIO);
  assert_int_equal (cache_read (t->c, buf, sizeof buf, 7 * PG), -EIO);
  /* Nothing was marked valid by the failed read. */
  assert_int_equal (cache_debug_sector (t->c, 7 * PG) & V, 0);
  assert_true (read_is_pattern (t, 7 * PG, 4096, 1));

  /* A partial write needing a read that fails: the write fails and
   * leaves nothing dirty.
   */
  fake_fail_nth (t->f, FAKE_READ, 1, -EIO);
  assert_int_equal (write_pattern (t, 11 * PG + 10, 20, 2, 0), -EIO);
  assert_int_equal (cache_debug_sector (t->c, 11 * PG) & (V | D), 0);
  assert_int_equal (stats (t->c).dirty_bytes, 0);
  assert_int_equal (cache_flush (t->c), 0);
  assert_true (disk_is_pattern (t, 11 * PG, SS, 1));
}

/* A backend that keeps failing logs one write-back error line per
 * outage (then each failed flush), not one per retried run; after a
 * write-back succeeds, the next outage is logged again.
 */
static void
test_write_failures_logged_once_per_outage (void **state)
{
  struct tcache *t = *state;
  struct cache_config cfg = test_config ();
  unsigned lines;

  tc_open (t, &cfg);
  for (int k = 0; k < 4; k++) /* four runs per flush, under dirty-ratio */
    assert_int_equal (write_pattern (t, (uint64_t) k * 2 * PG, 4 * KiB, 2, 0),
                      0);
  fake_fail_all (t->f, FAKE_WRITE, -EIO);
  lines = atomic_load (&tc_error_lines);
  for (int i = 0; i < 5; i++)
    assert_int_equal (cache_flush (t->c), -EIO);
  assert_true (counts (t).write_errors >= 5 * 4);
  /* One write-back line, and one per failed flush. */
  assert_int_equal (atomic_load (&tc_error_lines), lines + 1 + 5);

  fake_fail_all (t->f, FAKE_WRITE, 0);
  assert_int_equal (cache_flush (t->c), 0);
  assert_int_equal (write_pattern (t, 0, 4 * KiB, 3, 0), 0);
  fake_fail_all (t->f, FAKE_WRITE, -EIO);
  lines = atomic_load (&tc_error_lines);
  assert_int_equal (cache_flush (t->c), -EIO);
  assert_int_equal (atomic_load (&tc_error_lines), lines + 2);
  fake_fail_all (t->f, FAKE_WRITE, 0);
  assert_int_equal (cache_flush (t->c), 0);
}

int
main (void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test_setup_teardown (test_persistent_eio, tc_setup,
                                     tc_teardown),
    cmocka_unit_test_setup_teardown (test_persistent_enospc, tc_setup,
                                     tc_teardown),
    cmocka_unit_test_setup_teardown (test_background_failure_reported_once,
                                     tc_setup, tc_teardown),
    cmocka_unit_test_setup_teardown (test_nth_write_fails, tc_setup,
                                     tc_teardown),
    cmocka_unit_test_setup_teardown (test_failed_data_survives_eviction,
                                     tc_setup, tc_teardown),
    cmocka_unit_test_setup_teardown (test_backend_flush_error, tc_setup,
                                     tc_teardown),
    cmocka_unit_test_setup_teardown (test_read_error, tc_setup, tc_teardown),
    cmocka_unit_test_setup_teardown (test_write_failures_logged_once_per_outage,
                                     tc_setup, tc_teardown),
  };

  return cmocka_run_group_tests (tests, NULL, NULL);
}
