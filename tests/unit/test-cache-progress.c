/* subpage unit tests: what counts as collect progress (internal.h).
 *
 * Two flushes wait on one TRIM (held in the backend) that covers their
 * only dirty page, while write-back buffers are within one batch of
 * their cap (background runs in flight).  A collect must not pick the
 * busy page: allocating a batch for it would take the buffers to the
 * cap, and freeing it, empty, would bring them back under it, which
 * batch_put counts as progress.  Each flush would count its own free as
 * its own event but wake the other, and the two would collect in turn
 * for as long as the TRIM runs.  With busy pages left out of the pick,
 * a flush's empty collect counts nothing and both sleep until the TRIM
 * ends.
 *
 * White box: the test includes internal.h to read c->progress, the
 * count the flushes' tickets compare with.
 */
#undef NDEBUG
#undef UNIT_TESTING

#include <errno.h>
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "helpers.h"
#include "internal.h"

/* Batches of one page (wb_buf_max = 4 pages).  Pages 0-2: one
 * background run each, captured (in flight): 3 pages of buffers.
 * Page 5: wholly dirty, so a collect that picks it sizes a batch of one
 * page, which reaches the cap.  A TRIM of part of page 5 is held in the
 * backend.
 */
static void
two_flushes_setup (struct tcache *t)
{
  struct cache_config cfg = test_config ();

  cfg.batch_bytes = PG;
  tc_open (t, &cfg);
  fill_disk (t, 1);
  cache_set_submit (t->c, fake_capture_submit, t->f);
  for (unsigned pg = 0; pg < 3; pg++) {
    assert_int_equal (write_pattern (t, pg * PG, PG, 2, 0), 0);
    assert_int_equal (cache_writeback (t->c, CACHE_WB_BACKGROUND, 0), 1);
  }
  assert_int_equal (stats (t->c).writeback_buffer_bytes, 3 * PG);
  assert_int_equal (write_pattern (t, 5 * PG, PG, 3, 0), 0);
}

/* The deterministic check: flush 1 sleeps after its empty collect
 * (its ticket is the progress count P0).  Flush 2 collects, finds
 * nothing (the page is busy) and is parked right after.  Its collect
 * must not have counted progress: the TRIM has not ended, no run has
 * completed, no buffer was freed that anyone else allocated.
 */
static void
test_empty_collect_on_busy_page_is_not_progress (void **state)
{
  struct tcache *t = *state;
  struct stops st;
  struct async *tr, *f1, *f2;
  uint64_t p0, p1;
  unsigned picks;

  two_flushes_setup (t);
  stops_init (&st);
  stops_add (&st, "flush.collected", 2);      /* 0: flush 2's collect */
  stops_add (&st, "collect.picked", 1000000); /* 1: counts picks */

  fake_hold (t->f, FAKE_TRIM, true);
  tr = async_start (t, ASYNC_TRIM, NULL, 8 * SS, 5 * PG + 8 * SS, 0);
  WAIT_FOR (fake_held (t->f, FAKE_TRIM) == 1);
  cache_debug_set_park (t->c, stops_hook, &st);

  f1 = async_start (t, ASYNC_FLUSH, NULL, 0, 0, 0);
  WAIT_FOR (stats (t->c).waiting_flush == 1); /* asleep on its ticket */
  assert_true (stops_seen (&st, 1) <= 1);
  p0 = atomic_load (&t->c->progress);

  f2 = async_start (t, ASYNC_FLUSH, NULL, 0, 0, 0);
  WAIT_FOR (stops_parked (&st, 0)); /* flush 2 collected */
  p1 = atomic_load (&t->c->progress);

  /* Let the two run while the TRIM is still held, and count collects:
   * with the bug they wake each other in turn without end.
   */
  stops_release (&st, 0);
  if (p1 != p0) {
    uint64_t t0 = now_ms ();
    WAIT_FOR (stops_seen (&st, 1) >= 10000);
    fprintf (stderr,
             "review2: while the TRIM was held, the two flushes "
             "collected %u times in %" PRIu64 " ms (progress %" PRIu64
             " -> %" PRIu64 " at flush 2's first collect)\n",
             stops_seen (&st, 1), now_ms () - t0, p0, p1);
  }
  picks = stops_seen (&st, 1);

  fake_hold (t->f, FAKE_TRIM, false);
  assert_int_equal (async_join (tr), 0);
  /* One flush collects page 5 (two runs, around the trimmed sectors). */
  WAIT_FOR (fake_nr_captured (t->f) == 5);
  fake_complete_all (t->f, t->c, 0);
  assert_int_equal (async_join (f1), 0);
  assert_int_equal (async_join (f2), 0);
  cache_debug_set_park (t->c, NULL, NULL);
  cache_set_submit (t->c, NULL, NULL);
  assert_true (disk_is_pattern (t, 5 * PG, 8 * SS, 3));

  assert_int_equal (p1, p0);
  assert_true (picks <= 3);
  stops_destroy (&st);
}

int
main (void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test_setup_teardown (
      test_empty_collect_on_busy_page_is_not_progress, tc_setup, tc_teardown),
  };

  return cmocka_run_group_tests (tests, NULL, NULL);
}
