/* subpage unit tests: idle before unmap (invariant 8), the waiter side
 * of invariant 5, and FUA over data in flight (invariant 9), with
 * threads.
 *
 * TRIM and ZERO first wait until no W is set in their range, so no
 * older write-back can land after them: with a run held, the trim or
 * zero must not reach the backend, and must not return, until the run
 * completes; the log then shows the held write BEFORE the zero/trim.
 * A page's waiters wake only when its last run completes, in whatever
 * order runs complete.  A FUA write over a sector in flight waits for
 * it and lands after it.  Dirty data (not in flight) under a ZERO or
 * TRIM is discarded, never written after it.
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

static size_t
find_cap (struct tcache *t, uint64_t off, uint32_t len)
{
  size_t n = fake_nr_captured (t->f);
  struct fake_capture ci;

  for (size_t i = 0; i < n; i++) {
    assert_true (fake_capture_info (t->f, i, &ci));
    if (ci.off == off && ci.len == len)
      return i;
  }
  fail_msg ("no run off=%llu len=%u", (unsigned long long) off, len);
  return 0;
}

/* ZERO or TRIM over a range whose data is held in write-back. */
static void
discard_waits_for_writeback (struct tcache *t, enum async_op op)
{
  struct cache_config cfg = test_config ();
  const uint64_t x = 5 * PG + 10 * SS;
  enum fake_op fop = op == ASYNC_ZERO ? FAKE_ZERO : FAKE_TRIM;
  struct async *z;
  long wi, zi;

  tc_open (t, &cfg);
  fill_disk (t, 1);
  cache_set_submit (t->c, fake_capture_submit, t->f);
  assert_int_equal (write_pattern (t, x, 8 * SS, 2, 0), 0);
  assert_int_equal (cache_writeback (t->c, CACHE_WB_BACKGROUND, 0), 1);
  assert_true (sectors_are (t, x, 8 * SS, V | W));

  z = async_start (t, op, NULL, PG, 5 * PG, 0);
  WAIT_FOR (stats (t->c).waiting_idle == 1);
  assert_false (async_done (z));
  assert_int_equal (counts (t).zeroes, 0);
  assert_int_equal (counts (t).trims, 0);
  assert_int_equal (counts (t).writes, 0);
  /* While the range is busy, write-back leaves it alone. */
  assert_true (disk_is_pattern (t, 5 * PG, PG, 1));

  assert_int_equal (fake_complete (t->f, t->c, 0, 0), 0);
  assert_int_equal (async_join (z), 0);
  wi = fake_log_first (t->f, FAKE_WRITE, x, 8 * SS);
  zi = fake_log_last (t->f, fop, 5 * PG, PG);
  assert_true (wi >= 0);
  assert_true (zi > wi);
  /* Nothing wrote the range after the zero/trim. */
  assert_true (fake_log_last (t->f, FAKE_WRITE, 5 * PG, PG) < zi);
  assert_true (fake_disk_is_byte (t->f, 0, PG, 5 * PG));
  /* Reads through the cache see what the backend holds. */
  assert_true (read_is_byte (t, 5 * PG, PG, 0));
  assert_true (sectors_are (t, 5 * PG, PG, V));
  /* And a flush does not bring the old data back. */
  cache_set_submit (t->c, NULL, NULL);
  assert_int_equal (cache_flush (t->c), 0);
  assert_true (fake_disk_is_byte (t->f, 0, PG, 5 * PG));
}

static void
test_zero_waits_for_writeback (void **state)
{
  discard_waits_for_writeback (*state, ASYNC_ZERO);
}

static void
test_trim_waits_for_writeback (void **state)
{
  discard_waits_for_writeback (*state, ASYNC_TRIM);
}

/* Dirty (not in flight) data under a ZERO or TRIM is superseded. */
static void
discard_drops_dirty (struct tcache *t, bool zero)
{
  struct cache_config cfg = test_config ();
  long di;

  tc_open (t, &cfg);
  fill_disk (t, 1);
  assert_int_equal (write_pattern (t, 7 * PG, 2 * PG, 2, 0), 0);
  if (zero)
    assert_int_equal (cache_zero (t->c, PG, 7 * PG + PG / 2, 0), 0);
  else
    assert_int_equal (cache_trim (t->c, PG, 7 * PG + PG / 2, 0), 0);
  assert_true (read_is_byte (t, 7 * PG + PG / 2, PG, 0));
  assert_true (read_is_pattern (t, 7 * PG, PG / 2, 2));
  assert_true (read_is_pattern (t, 8 * PG + PG / 2, PG / 2, 2));
  assert_int_equal (cache_flush (t->c), 0);
  assert_true (fake_disk_is_byte (t->f, 0, PG, 7 * PG + PG / 2));
  assert_true (disk_is_pattern (t, 7 * PG, PG / 2, 2));
  assert_true (disk_is_pattern (t, 8 * PG + PG / 2, PG / 2, 2));
  di = fake_log_last (t->f, zero ? FAKE_ZERO : FAKE_TRIM, 7 * PG + PG / 2, PG);
  assert_true (di >= 0);
  assert_true (fake_log_last (t->f, FAKE_WRITE, 7 * PG + PG / 2, PG) < di);
  assert_int_equal (stats (t->c).dirty_bytes, 0);
}

static void
test_zero_discards_dirty (void **state)
{
  discard_drops_dirty (*state, true);
}

static void
test_trim_discards_dirty (void **state)
{
  discard_drops_dirty (*state, false);
}

/* A backend trim that did nothing (returns 1: a remote without trim, a
 * file system without hole punching, a range that is not made of the
 * device's logical blocks).  The cache must keep its dirty data of the
 * range: dropping it would make the range read as older data.
 */
static int
trim_not_done (void *opaque, uint32_t count, uint64_t off, uint32_t flags)
{
  (void) opaque;
  (void) count;
  (void) off;
  (void) flags;
  return 1;
}

static void
test_trim_not_done_keeps_data (void **state)
{
  struct tcache *t = *state;
  struct cache_config cfg = test_config ();
  struct cache_backend_ops ops = fake_ops;

  ops.trim = trim_not_done;
  tc_open_ops (t, &cfg, &ops);
  fill_disk (t, 1);
  assert_int_equal (write_pattern (t, 3 * PG, PG, 2, 0), 0);
  assert_int_equal (cache_trim (t->c, PG, 3 * PG, 0), 0);
  assert_true (sectors_are (t, 3 * PG, PG, V | D));
  assert_true (read_is_pattern (t, 3 * PG, PG, 2));
  assert_int_equal (cache_flush (t->c), 0);
  assert_true (disk_is_pattern (t, 3 * PG, PG, 2));
}

/* Invariant 5, waiter side: three runs in flight on one page; a TRIM
 * (even permutations) or ZERO (odd) over the page waits, and returns
 * only after the LAST completion, in every completion order.
 */

static void
test_waiter_wakes_after_last_completion (void **state)
{
  struct tcache *t = *state;

  for (int p = 0; p < 6; p++) {
    struct cache_config cfg = test_config ();
    enum async_op op = p % 2 ? ASYNC_ZERO : ASYNC_TRIM;
    enum fake_op fop = p % 2 ? FAKE_ZERO : FAKE_TRIM;
    struct async *z;
    size_t idx[3];
    long di;

    tc_open (t, &cfg);
    fill_disk (t, 1);
    cache_set_submit (t->c, fake_capture_submit, t->f);
    for (int r = 0; r < 3; r++)
      assert_int_equal (write_pattern (t, three_ranges[r][0],
                                       three_ranges[r][1], (unsigned) (10 + r),
                                       0),
                        0);
    assert_int_equal (cache_writeback (t->c, CACHE_WB_BACKGROUND, 0), 3);
    for (int r = 0; r < 3; r++)
      idx[r] = find_cap (t, three_ranges[r][0], (uint32_t) three_ranges[r][1]);

    z = async_start (t, op, NULL, PG, 3 * PG, 0);
    WAIT_FOR (stats (t->c).waiting_idle == 1);
    for (int k = 0; k < 3; k++) {
      int r = perms3[p][k];

      assert_false (async_done (z));
      assert_int_equal (counts (t).trims + counts (t).zeroes, 0);
      assert_int_equal (fake_complete (t->f, t->c, idx[r], 0), 0);
      if (k < 2) {
        /* Completed sectors are clean; the others still in flight. */
        for (int q = 0; q < 3; q++) {
          bool done = false;
          for (int j = 0; j <= k; j++)
            done |= perms3[p][j] == q;
          assert_true (sectors_are (t, three_ranges[q][0], three_ranges[q][1],
                                    done ? V : V | W));
        }
        /* An extra chance for a wrongly woken waiter to show itself;
         * the assertion holds whatever the timing.
         */
        sleep_ms (5);
        assert_false (async_done (z));
      }
    }
    assert_int_equal (async_join (z), 0);
    di = fake_log_last (t->f, fop, 3 * PG, PG);
    assert_true (di >= 0);
    for (int r = 0; r < 3; r++)
      assert_true (fake_log_last (t->f, FAKE_WRITE, three_ranges[r][0],
                                  (uint32_t) three_ranges[r][1]) < di);
    assert_true (fake_disk_is_byte (t->f, 0, PG, 3 * PG));
    assert_true (read_is_byte (t, 3 * PG, PG, 0));
    tc_close (t);
  }
}

/* Invariant 9 over a sector in flight: the FUA write waits for the
 * held run, and its FUA pwrite lands after it, with the new data.
 */
static void
test_fua_waits_for_writeback (void **state)
{
  struct tcache *t = *state;
  struct cache_config cfg = test_config ();
  const uint64_t a = 11 * PG + 64 * SS;
  unsigned char buf[SS];
  struct async *w;
  long wi, fi;
  struct fake_event ev;

  tc_open (t, &cfg);
  fill_disk (t, 1);
  cache_set_submit (t->c, fake_capture_submit, t->f);
  assert_int_equal (write_pattern (t, a, 4 * SS, 2, 0), 0);
  assert_int_equal (cache_writeback (t->c, CACHE_WB_BACKGROUND, 0), 1);

  pattern (buf, SS, a + SS, 3);
  w = async_start (t, ASYNC_WRITE, buf, SS, a + SS, CACHE_FUA);
  WAIT_FOR (stats (t->c).waiting_idle == 1);
  assert_false (async_done (w));
  assert_int_equal (counts (t).writes, 0);
  /* The data itself is already in the cache (writers never wait). */
  assert_int_equal (cache_debug_sector (t->c, a + SS), V | D | W);

  assert_int_equal (fake_complete (t->f, t->c, 0, 0), 0);
  assert_int_equal (async_join (w), 0);
  wi = fake_log_first (t->f, FAKE_WRITE, a, 4 * SS);
  fi = fake_log_last (t->f, FAKE_WRITE, a + SS, SS);
  assert_true (wi >= 0);
  assert_true (fi > wi);
  assert_true (fake_event (t->f, (size_t) fi, &ev));
  assert_true (ev.flags & CACHE_FUA);
  assert_true (ev.off <= a + SS && a + 2 * SS <= ev.off + ev.len);
  assert_true (disk_is_pattern (t, a + SS, SS, 3));
  assert_true (disk_is_pattern (t, a, SS, 2));
  assert_true (disk_is_pattern (t, a + 2 * SS, 2 * SS, 2));
  assert_int_equal (counts (t).flushes, 0);
  assert_int_equal (cache_debug_sector (t->c, a + SS), V);
}

int
main (void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test_setup_teardown (test_trim_not_done_keeps_data, tc_setup,
                                     tc_teardown),
    cmocka_unit_test_setup_teardown (test_zero_waits_for_writeback, tc_setup,
                                     tc_teardown),
    cmocka_unit_test_setup_teardown (test_trim_waits_for_writeback, tc_setup,
                                     tc_teardown),
    cmocka_unit_test_setup_teardown (test_zero_discards_dirty, tc_setup,
                                     tc_teardown),
    cmocka_unit_test_setup_teardown (test_trim_discards_dirty, tc_setup,
                                     tc_teardown),
    cmocka_unit_test_setup_teardown (test_waiter_wakes_after_last_completion,
                                     tc_setup, tc_teardown),
    cmocka_unit_test_setup_teardown (test_fua_waits_for_writeback, tc_setup,
                                     tc_teardown),
  };

  return cmocka_run_group_tests (tests, NULL, NULL);
}
