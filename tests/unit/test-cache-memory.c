/* subpage unit tests: pin before use (invariant 1) and bounded memory
 * (invariant 10), with threads.
 *
 * A tiny cache (CACHE_MIN_PAGES = 8 pages) is flooded with reads: clean
 * pages are evicted, but dirty, pinned and in-flight pages stay,
 * intact, and the resident count never passes the frame count.  When
 * no page can be evicted a reader waits (stats.waiting_page) until a
 * run completes or a page is unpinned.  When dirty + write-back data
 * reaches dirty_ratio, a writer waits (stats.waiting_throttle) until
 * write-back makes progress, after the kick hook was asked for it.
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
#include <unistd.h>
#include <cmocka.h>

#include "helpers.h"

static struct cache_config
tiny_config (void)
{
  struct cache_config cfg = test_config ();

  cfg.cache_size = CACHE_MIN_PAGES * PG;
  cfg.dirty_ratio = 100;
  return cfg;
}

static void
test_eviction_spares_dirty_pinned_inflight (void **state)
{
  struct tcache *t = *state;
  struct cache_config cfg = tiny_config ();
  unsigned char *buf = malloc (PG);
  uint64_t reads_before;

  assert_non_null (buf);
  tc_open (t, &cfg);
  fill_disk (t, 1);
  cache_set_submit (t->c, fake_capture_submit, t->f);
  assert_int_equal (stats (t->c).pages_total, CACHE_MIN_PAGES);

  /* Page 3: in flight (W, held).  Pages 0, 1: dirty.  Page 2: pinned,
   * clean, fully valid.
   */
  assert_int_equal (write_pattern (t, 3 * PG, PG, 3, 0), 0);
  assert_int_equal (cache_writeback (t->c, CACHE_WB_BACKGROUND, 0), 1);
  assert_int_equal (write_pattern (t, 0, 4 * KiB, 2, 0), 0);
  assert_int_equal (write_pattern (t, PG + 1000, 100, 2, 0), 0);
  assert_int_equal (cache_debug_pin (t->c, 2 * PG), 0);
  assert_true (read_is_pattern (t, 2 * PG, PG, 1));
  assert_true (cache_debug_refs (t->c, 2 * PG) >= 1);

  for (uint64_t p = 10; p < 60; p++) {
    assert_int_equal (cache_read (t->c, buf, PG, p * PG), 0);
    assert_int_equal (pattern_mismatch (buf, PG, p * PG, 1), -1);
    assert_true (stats (t->c).pages_resident <= CACHE_MIN_PAGES);
    assert_true (cache_debug_resident (t->c, p * PG));
  }
  assert_true (stats (t->c).evictions >= 50 - 4);
  assert_true (cache_debug_check (t->c));

  /* The four survived, with their state and data. */
  for (uint64_t p = 0; p < 4; p++)
    assert_true (cache_debug_resident (t->c, p * PG));
  assert_true (sectors_are (t, 3 * PG, PG, V | W));
  assert_true (sectors_are (t, 0, 4 * KiB, V | D));
  assert_int_equal (cache_debug_sector (t->c, PG + 1000), V | D);
  assert_true (sectors_are (t, 2 * PG, PG, V));
  reads_before = counts (t).reads;
  assert_true (read_is_pattern (t, 3 * PG, PG, 3));
  assert_true (read_is_pattern (t, 0, 4 * KiB, 2));
  assert_true (read_is_pattern (t, PG + 1000, 100, 2));
  assert_true (read_is_pattern (t, 2 * PG, PG, 1));
  assert_int_equal (counts (t).reads, reads_before); /* all from memory */
  assert_true (disk_is_pattern (t, 3 * PG, PG, 1));  /* still held */

  /* Unpinned and written back, they become evictable like any other. */
  cache_debug_unpin (t->c, 2 * PG);
  assert_int_equal (cache_debug_refs (t->c, 2 * PG), 0);
  assert_int_equal (fake_complete (t->f, t->c, 0, 0), 0);
  cache_set_submit (t->c, NULL, NULL);
  assert_int_equal (cache_flush (t->c), 0);
  for (uint64_t p = 10; p < 30; p++)
    assert_int_equal (cache_read (t->c, buf, PG, p * PG), 0);
  for (uint64_t p = 0; p < 4; p++)
    assert_false (cache_debug_resident (t->c, p * PG));
  assert_true (disk_is_pattern (t, 3 * PG, PG, 3));
  assert_true (disk_is_pattern (t, 0, 4 * KiB, 2));
  assert_true (disk_is_pattern (t, PG + 1000, 100, 2));
  free (buf);
}

/* Fills all 8 frames with pages that cannot be evicted: page 0 in
 * flight (capture 0), page 1 pinned, pages 2..7 dirty.
 */
static void
fill_unevictable (struct tcache *t)
{
  struct cache_config cfg = tiny_config ();

  tc_open (t, &cfg);
  fill_disk (t, 1);
  cache_set_submit (t->c, fake_capture_submit, t->f);
  assert_int_equal (write_pattern (t, 0, PG, 2, 0), 0);
  assert_int_equal (cache_writeback (t->c, CACHE_WB_BACKGROUND, 0), 1);
  assert_int_equal (cache_debug_pin (t->c, PG), 0);
  for (uint64_t p = 2; p < 8; p++)
    assert_int_equal (write_pattern (t, p * PG, PG, 2, 0), 0);
  assert_int_equal (stats (t->c).pages_resident, CACHE_MIN_PAGES);
}

static void
test_reader_waits_for_run_completion (void **state)
{
  struct tcache *t = *state;
  struct async *r;
  unsigned kicks;

  fill_unevictable (t);
  kicks = atomic_load (&t->kicks);
  r = async_start (t, ASYNC_READ, NULL, PG, 20 * PG, 0);
  WAIT_FOR (stats (t->c).waiting_page == 1);
  assert_false (async_done (r));
  assert_true (atomic_load (&t->kicks) > kicks); /* it asked for write-back */
  assert_int_equal (stats (t->c).pages_resident, CACHE_MIN_PAGES);

  assert_int_equal (fake_complete (t->f, t->c, 0, 0), 0);
  assert_int_equal (async_join (r), 0);
  assert_int_equal (pattern_mismatch (r->buf, PG, 20 * PG, 1), -1);
  /* Page 0, now clean, was the one evicted. */
  assert_false (cache_debug_resident (t->c, 0));
  assert_true (cache_debug_resident (t->c, PG));
  for (uint64_t p = 2; p < 8; p++)
    assert_true (sectors_are (t, p * PG, PG, V | D));
  assert_true (disk_is_pattern (t, 0, PG, 2));
  cache_debug_unpin (t->c, PG);
}

static void
test_reader_waits_for_unpin (void **state)
{
  struct tcache *t = *state;
  struct async *r;

  fill_unevictable (t);
  r = async_start (t, ASYNC_READ, NULL, 100, 20 * PG + 5, 0);
  WAIT_FOR (stats (t->c).waiting_page == 1);
  assert_false (async_done (r));

  cache_debug_unpin (t->c, PG);
  assert_int_equal (async_join (r), 0);
  assert_int_equal (pattern_mismatch (r->buf, 100, 20 * PG + 5, 1), -1);
  /* Page 1 went; page 0 is still in flight and resident. */
  assert_false (cache_debug_resident (t->c, PG));
  assert_true (sectors_are (t, 0, PG, V | W));
  assert_int_equal (stats (t->c).pages_resident, CACHE_MIN_PAGES);
}

/* Dirty limit = 2 pages.  With write-back held, a writer dirtying a
 * third page waits until the held runs complete, and is woken by the
 * completion that takes dirty memory under the limit (completions wake
 * throttled writers only then): it must not sit out its 1 s re-kick
 * timeout.
 */
static void
test_dirty_throttle (void **state)
{
  struct tcache *t = *state;
  struct cache_config cfg = tiny_config ();
  unsigned char *buf = malloc (PG);
  struct async *w;

  assert_non_null (buf);
  cfg.dirty_ratio = 25; /* 25% of 8 pages = 2 pages */
  cfg.dirty_background_ratio = 10;
  tc_open (t, &cfg);
  cache_set_submit (t->c, fake_capture_submit, t->f);
  assert_int_equal (write_pattern (t, 0, PG, 2, 0), 0);
  assert_true (cache_over_background (t->c));
  assert_true (atomic_load (&t->kicks) > 0); /* past the background ratio */
  assert_int_equal (write_pattern (t, 4 * PG, PG, 2, 0), 0);
  assert_int_equal (stats (t->c).waiting_throttle, 0);
  assert_int_equal (stats (t->c).throttled, 0);
  assert_int_equal (stats (t->c).throttle_latency.count, 0);
  assert_true (cache_writeback (t->c, CACHE_WB_BACKGROUND, 0) > 0);
  assert_true (fake_nr_pending (t->f) > 0);
  assert_int_equal (stats (t->c).writeback_bytes, 2 * PG);

  pattern (buf, PG, 2 * PG, 3);
  w = async_start (t, ASYNC_WRITE, buf, PG, 2 * PG, 0);
  WAIT_FOR (stats (t->c).waiting_throttle == 1);
  assert_false (async_done (w));
  assert_int_equal (stats (t->c).throttled, 1);

  {
    uint64_t t0 = now_ms ();

    /* One of the two runs: one dirty page left, under the limit, and
     * the other run still in flight (so only the throttle rule wakes
     * the writer).
     */
    assert_int_equal (fake_nr_pending (t->f), 2);
    assert_int_equal (fake_complete (t->f, t->c, 0, 0), 0);
    assert_int_equal (async_join (w), 0);
    /* Woken, not timed out (the timeout is 1000 ms). */
    assert_true (now_ms () - t0 < 500);
    /* The wait is one throttle observation, of some time. */
    assert_int_equal (stats (t->c).throttle_latency.count, 1);
    assert_true (stats (t->c).throttle_latency.sum_ns > 0);
    /* The completed run is one backend write observation. */
    assert_int_equal (stats (t->c).backend_write_latency.count, 1);
    assert_int_equal (fake_nr_pending (t->f), 1);
    fake_complete_all (t->f, t->c, 0);
  }
  assert_true (sectors_are (t, 2 * PG, PG, V | D));
  assert_int_equal (stats (t->c).waiting_throttle, 0);

  cache_set_submit (t->c, NULL, NULL);
  assert_int_equal (cache_flush (t->c), 0);
  assert_true (disk_is_pattern (t, 0, PG, 2));
  assert_true (disk_is_pattern (t, 4 * PG, PG, 2));
  assert_true (disk_is_pattern (t, 2 * PG, PG, 3));
  free (buf);
}

/* Write-back buffers in flight are capped at 4 batches: with runs held,
 * collection stops once 4 batch buffers are alive (the data stays
 * dirty), and a flush waits for room instead of allocating more; each
 * completion makes room again.
 */
static void
test_writeback_buffers_capped (void **state)
{
  struct tcache *t = *state;
  struct cache_config cfg = test_config ();
  struct async *fl;
  int n;

  cfg.batch_bytes = 2 * PG; /* cap: 4 x 128 KiB */
  cfg.dirty_ratio = 100;
  tc_open (t, &cfg);
  cache_set_submit (t->c, fake_capture_submit, t->f);
  for (uint64_t p = 0; p < 12; p++) /* 12 separate dirty pages */
    assert_int_equal (write_pattern (t, 2 * p * PG, PG, 2, 0), 0);

  for (int i = 0; i < 4; i++)
    assert_true (cache_writeback (t->c, CACHE_WB_BACKGROUND, 0) > 0);
  assert_int_equal (stats (t->c).writeback_buffer_bytes, 4 * 2 * PG);
  n = (int) fake_nr_captured (t->f);
  assert_int_equal (cache_writeback (t->c, CACHE_WB_BACKGROUND, 0), 0);
  assert_int_equal ((int) fake_nr_captured (t->f), n);
  assert_int_equal (stats (t->c).dirty_bytes, 4 * PG); /* kept dirty */

  /* A flush cannot collect either: it waits for room. */
  fl = async_start (t, ASYNC_FLUSH, NULL, 0, 0, 0);
  WAIT_FOR (stats (t->c).waiting_flush == 1);
  assert_false (async_done (fl));
  assert_true (stats (t->c).writeback_buffer_bytes <= 4 * 2 * PG);

  /* Completing held runs makes room; the flush then collects the rest
   * (captured too) and finishes once everything is complete.
   */
  while (!async_done (fl)) {
    fake_complete_all (t->f, t->c, 0);
    assert_true (stats (t->c).writeback_buffer_bytes <= 4 * 2 * PG);
    usleep (1000);
  }
  assert_int_equal (async_join (fl), 0);
  for (uint64_t p = 0; p < 12; p++)
    assert_true (disk_is_pattern (t, 2 * p * PG, PG, 2));
  assert_int_equal (stats (t->c).writeback_buffer_bytes, 0);
}

/* Dirty memory counts pages, not bytes: a page with one dirty sector
 * cannot be reclaimed.  Small writes scattered over many pages must
 * cross the background threshold and throttle writers, or they would
 * pin every page while staying under both thresholds (and readers and
 * writers needing a page would starve).
 */
static void
test_thresholds_count_pages (void **state)
{
  struct tcache *t = *state;
  struct cache_config cfg = test_config (); /* 16 pages */
  unsigned char buf[4096];
  struct async *w;
  unsigned kicks;

  cfg.dirty_background_ratio = 25; /* 4 pages */
  cfg.dirty_ratio = 50;            /* 8 pages */
  tc_open (t, &cfg);
  cache_set_submit (t->c, fake_capture_submit, t->f);
  for (uint64_t p = 0; p < 4; p++)
    assert_int_equal (write_pattern (t, p * PG, SS, 2, 0), 0);
  assert_false (cache_over_background (t->c));
  kicks = atomic_load (&t->kicks);
  assert_int_equal (write_pattern (t, 4 * PG, SS, 2, 0), 0);
  assert_true (cache_over_background (t->c)); /* 5 x 512 bytes dirty */
  assert_true (atomic_load (&t->kicks) > kicks);
  assert_int_equal (stats (t->c).dirty_bytes, 5 * SS);
  assert_int_equal (stats (t->c).dirty_pages, 5);

  for (uint64_t p = 5; p < 8; p++)
    assert_int_equal (write_pattern (t, p * PG, SS, 2, 0), 0);
  /* 8 pages hold 4 KiB of dirty data: the ninth page's writer waits. */
  pattern (buf, SS, 8 * PG, 2);
  w = async_start (t, ASYNC_WRITE, buf, SS, 8 * PG, 0);
  WAIT_FOR (stats (t->c).waiting_throttle == 1);
  assert_false (async_done (w));
  assert_true (cache_writeback (t->c, CACHE_WB_BACKGROUND, 0) > 0);
  fake_complete_all (t->f, t->c, 0);
  assert_int_equal (async_join (w), 0);
  cache_set_submit (t->c, NULL, NULL);
  assert_int_equal (cache_flush (t->c), 0);
  for (uint64_t p = 0; p < 9; p++)
    assert_true (disk_is_pattern (t, p * PG, SS, 2));
}

/* Every page dirty and the backend failing every write: a request that
 * needs another page must fail with the write-back error, not wait for
 * ever for a page no write-back will free (writers over dirty_ratio get
 * the error the same way).  Once the backend recovers, everything
 * written is on the disk.
 */
static void
test_no_page_while_writeback_fails (void **state)
{
  struct tcache *t = *state;
  struct cache_config cfg = tiny_config (); /* 8 pages */
  unsigned char buf[SS];

  cfg.dirty_background_ratio = 100; /* no throttle first */
  cfg.dirty_ratio = 100;
  tc_open (t, &cfg);
  cache_set_kick (t->c, NULL, NULL); /* waiting threads write back */
  fake_fail_all (t->f, FAKE_WRITE, -EIO);
  for (uint64_t p = 0; p < CACHE_MIN_PAGES; p++)
    assert_int_equal (write_pattern (t, p * PG, SS, 2, 0), 0);
  assert_int_equal (stats (t->c).dirty_pages, CACHE_MIN_PAGES);

  /* A ninth page: a write and a read both fail, and quickly (within
   * the test's timeout, not after a backend that never recovers).
   */
  assert_int_equal (write_pattern (t, 9 * PG, SS, 2, 0), -EIO);
  assert_int_equal (cache_read (t->c, buf, SS, 10 * PG), -EIO);
  assert_true (stats (t->c).wb_errors > 0);
  /* Nothing was lost: the eight pages still hold their data. */
  for (uint64_t p = 0; p < CACHE_MIN_PAGES; p++)
    assert_true (read_is_pattern (t, p * PG, SS, 2));

  fake_fail_all (t->f, FAKE_WRITE, 0);
  assert_int_equal (cache_flush (t->c), -EIO); /* reported once */
  assert_int_equal (cache_flush (t->c), 0);
  assert_int_equal (write_pattern (t, 9 * PG, SS, 2, 0), 0);
  assert_int_equal (cache_flush (t->c), 0);
  for (uint64_t p = 0; p < CACHE_MIN_PAGES; p++)
    assert_true (disk_is_pattern (t, p * PG, SS, 2));
  assert_true (disk_is_pattern (t, 9 * PG, SS, 2));
}

int
main (void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test_setup_teardown (test_eviction_spares_dirty_pinned_inflight,
                                     tc_setup, tc_teardown),
    cmocka_unit_test_setup_teardown (test_reader_waits_for_run_completion,
                                     tc_setup, tc_teardown),
    cmocka_unit_test_setup_teardown (test_reader_waits_for_unpin, tc_setup,
                                     tc_teardown),
    cmocka_unit_test_setup_teardown (test_dirty_throttle, tc_setup,
                                     tc_teardown),
    cmocka_unit_test_setup_teardown (test_writeback_buffers_capped, tc_setup,
                                     tc_teardown),
    cmocka_unit_test_setup_teardown (test_thresholds_count_pages, tc_setup,
                                     tc_teardown),
    cmocka_unit_test_setup_teardown (test_no_page_while_writeback_fails,
                                     tc_setup, tc_teardown),
  };

  return cmocka_run_group_tests (tests, NULL, NULL);
}
