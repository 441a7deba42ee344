/* subpage unit tests: background write-back (cache_writeback) and runs.
 *
 * Uses the fake's capture submit hook, so runs stay in flight until the
 * test completes them, in any order.  Covers how runs are cut (merged
 * across pages, split by gaps), batch size and age order, invariant 3
 * (one write per sector in flight: a REDIRTIED sector is not submitted
 * again), invariant 4 (snapshot then clear D; writers never wait),
 * invariant 5 (W set on the whole batch before the first submission;
 * a completion clears only its own sectors, in every completion order).
 * The thread-side of invariant 5 (a trim/zero waiter wakes only at the
 * last completion) is in test-cache-idle.c.  Expiry ages are read from a
 * fake clock (cache_debug_set_clock).  No threads here.
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

static struct fake_capture
cap (struct tcache *t, size_t i)
{
  struct fake_capture ci;

  assert_true (fake_capture_info (t->f, i, &ci));
  return ci;
}

/* Index of the capture with this offset and length, failing if none. */
static size_t
find_cap (struct tcache *t, uint64_t off, uint32_t len)
{
  size_t n = fake_nr_captured (t->f);

  for (size_t i = 0; i < n; i++) {
    struct fake_capture ci = cap (t, i);
    if (ci.off == off && ci.len == len)
      return i;
  }
  fail_msg ("no run off=%llu len=%u among %zu", (unsigned long long) off, len,
            n);
  return 0;
}

static void
open_capture (struct tcache *t, struct cache_config *cfg)
{
  tc_open (t, cfg);
  cache_set_submit (t->c, fake_capture_submit, t->f);
}

static void
test_no_writeback_without_trigger (void **state)
{
  struct tcache *t = *state;
  struct cache_config cfg = test_config ();

  tc_open (t, &cfg);
  assert_int_equal (cache_writeback (t->c, CACHE_WB_BACKGROUND, 0), 0);
  assert_int_equal (write_pattern (t, 0, 64 * KiB, 2, 0), 0);
  assert_int_equal (write_pattern (t, 3 * PG + 100, 5000, 2, 0), 0);
  assert_int_equal (counts (t).writes, 0);
  assert_int_equal (counts (t).flushes, 0);
  assert_true (sectors_are (t, 0, PG, V | D));
  /* Not old enough for an expiry pass of an hour. */
  assert_int_equal (cache_writeback (t->c, CACHE_WB_EXPIRED, 3600 * 1000), 0);
  assert_int_equal (counts (t).writes, 0);
  assert_true (sectors_are (t, 0, PG, V | D));
  /* A background pass writes it, synchronously (no submit hook). */
  assert_true (cache_writeback (t->c, CACHE_WB_BACKGROUND, 0) > 0);
  assert_true (sectors_are (t, 0, PG, V));
  assert_true (disk_is_pattern (t, 0, PG, 2));
  assert_int_equal (counts (t).flushes, 0); /* write-back is not flush */
  assert_int_equal (stats (t->c).dirty_bytes, 0);
}

static void
test_runs_merge_across_pages (void **state)
{
  struct tcache *t = *state;
  struct cache_config cfg = test_config ();
  struct fake_capture ci;
  struct cache_run *run;

  open_capture (t, &cfg);
  /* 8 KiB across the page 0/1 boundary, and 3 whole pages 4..6. */
  assert_int_equal (write_pattern (t, PG - 4 * KiB, 8 * KiB, 2, 0), 0);
  assert_int_equal (write_pattern (t, 4 * PG, 3 * PG, 2, 0), 0);
  assert_int_equal (cache_writeback (t->c, CACHE_WB_BACKGROUND, 0), 2);
  assert_int_equal (fake_nr_captured (t->f), 2);
  ci = cap (t, find_cap (t, PG - 4 * KiB, 8 * KiB));
  assert_int_equal (ci.flags & CACHE_FUA, 0);
  find_cap (t, 4 * PG, 3 * PG);
  run = fake_capture_run (t->f, find_cap (t, PG - 4 * KiB, 8 * KiB));
  assert_int_equal (
    pattern_mismatch (cache_run_data (run), 8 * KiB, PG - 4 * KiB, 2), -1);
  assert_true (sectors_are (t, PG - 4 * KiB, 8 * KiB, V | W));
  assert_true (sectors_are (t, 4 * PG, 3 * PG, V | W));
  assert_int_equal (stats (t->c).runs_in_flight, 2);
  assert_int_equal (stats (t->c).writeback_bytes, 8 * KiB + 3 * PG);
  assert_int_equal (stats (t->c).dirty_bytes, 0);
  /* Nothing reached the backend yet. */
  assert_int_equal (counts (t).writes, 0);
  assert_true (cache_debug_check (t->c));

  assert_int_equal (fake_complete_all (t->f, t->c, 0), 2);
  assert_int_equal (counts (t).write_bytes, 8 * KiB + 3 * PG);
  assert_true (sectors_are (t, PG - 4 * KiB, 8 * KiB, V));
  assert_true (sectors_are (t, 4 * PG, 3 * PG, V));
  assert_true (disk_is_pattern (t, PG - 4 * KiB, 8 * KiB, 2));
  assert_true (disk_is_pattern (t, 4 * PG, 3 * PG, 2));
  assert_int_equal (stats (t->c).runs_in_flight, 0);
  assert_int_equal (stats (t->c).writeback_bytes, 0);
  assert_int_equal (cache_writeback (t->c, CACHE_WB_BACKGROUND, 0), 0);
}

static void
test_separate_ranges_separate_runs (void **state)
{
  struct tcache *t = *state;
  struct cache_config cfg = test_config ();

  open_capture (t, &cfg);
  assert_int_equal (write_pattern (t, 2 * PG + 0 * SS, 8 * SS, 2, 0), 0);
  assert_int_equal (write_pattern (t, 2 * PG + 20 * SS, 8 * SS, 2, 0), 0);
  assert_int_equal (write_pattern (t, 2 * PG + 100 * SS, 8 * SS, 2, 0), 0);
  assert_int_equal (cache_writeback (t->c, CACHE_WB_EXPIRED, 0), 3);
  assert_int_equal (fake_nr_captured (t->f), 3);
  find_cap (t, 2 * PG + 0 * SS, 8 * SS);
  find_cap (t, 2 * PG + 20 * SS, 8 * SS);
  find_cap (t, 2 * PG + 100 * SS, 8 * SS);
  /* The gaps are not part of any run. */
  assert_false (fake_capture_overlaps (t->f, 0, 2 * PG + 8 * SS, 12 * SS));
  assert_false (fake_capture_overlaps (t->f, 0, 2 * PG + 28 * SS, 72 * SS));
  assert_int_equal (cache_debug_sector (t->c, 2 * PG + 8 * SS), 0);
  assert_int_equal (fake_complete_all (t->f, t->c, 0), 3);
  assert_int_equal (counts (t).write_bytes, 24 * SS);
  assert_int_equal (counts (t).read_bytes, 0);
}

/* Invariant 5, first half: W is set on every sector of the batch before
 * the first run is submitted.  The submit hook looks at all of them
 * when it receives the first run.
 */
struct mark_check {
  struct tcache *t;
  unsigned calls;
  bool all_marked_at_first;
  bool any_dirty_at_first;
};

static const uint64_t mark_ranges[][2] = {
  { 1 * PG + 0 * SS, 8 * SS },   { 1 * PG + 20 * SS, 8 * SS },
  { 1 * PG + 100 * SS, 8 * SS }, { 9 * PG, 2 * PG },
  { 13 * PG + 5 * SS, SS },
};
#define NR_MARK (sizeof mark_ranges / sizeof mark_ranges[0])

static void
mark_check_submit (void *opaque, struct cache *c, struct cache_run *run)
{
  struct mark_check *mc = opaque;

  if (mc->calls++ == 0) {
    mc->all_marked_at_first = true;
    for (unsigned r = 0; r < NR_MARK; r++)
      for (uint64_t o = mark_ranges[r][0];
           o < mark_ranges[r][0] + mark_ranges[r][1]; o += SS) {
        unsigned s = cache_debug_sector (c, o);
        if (!(s & W))
          mc->all_marked_at_first = false;
        if (s & D)
          mc->any_dirty_at_first = true;
      }
  }
  fake_capture_submit (mc->t->f, c, run);
}

static void
test_mark_all_before_submit (void **state)
{
  struct tcache *t = *state;
  struct cache_config cfg = test_config ();
  struct mark_check mc = { .t = t };

  tc_open (t, &cfg);
  cache_set_submit (t->c, mark_check_submit, &mc);
  for (unsigned r = 0; r < NR_MARK; r++)
    assert_int_equal (
      write_pattern (t, mark_ranges[r][0], mark_ranges[r][1], 2, 0), 0);
  assert_int_equal (cache_writeback (t->c, CACHE_WB_BACKGROUND, 0), NR_MARK);
  assert_int_equal (mc.calls, NR_MARK);
  assert_true (mc.all_marked_at_first);
  assert_false (mc.any_dirty_at_first);
  assert_int_equal (fake_complete_all (t->f, t->c, 0), NR_MARK);
  for (unsigned r = 0; r < NR_MARK; r++)
    assert_true (disk_is_pattern (t, mark_ranges[r][0], mark_ranges[r][1], 2));
}

/* Invariant 5, second half: three runs in flight on one page complete
 * in every order; each completion cleans only its own sectors, and the
 * page leaves write-back only after the last.
 */

static void
test_completion_any_order (void **state)
{
  struct tcache *t = *state;

  for (int p = 0; p < 6; p++) {
    struct cache_config cfg = test_config ();
    size_t idx[3];

    open_capture (t, &cfg);
    for (int r = 0; r < 3; r++)
      assert_int_equal (write_pattern (t, three_ranges[r][0],
                                       three_ranges[r][1], (unsigned) (10 + r),
                                       0),
                        0);
    assert_int_equal (cache_writeback (t->c, CACHE_WB_BACKGROUND, 0), 3);
    for (int r = 0; r < 3; r++)
      idx[r] = find_cap (t, three_ranges[r][0], (uint32_t) three_ranges[r][1]);
    /* While runs are in flight the page holds pins for them. */
    assert_true (cache_debug_refs (t->c, 3 * PG) >= 1);

    for (int k = 0; k < 3; k++) {
      int r = perms3[p][k];
      assert_int_equal (fake_complete (t->f, t->c, idx[r], 0), 0);
      for (int q = 0; q < 3; q++) {
        bool done = false;
        for (int j = 0; j <= k; j++)
          done |= perms3[p][j] == q;
        assert_true (sectors_are (t, three_ranges[q][0], three_ranges[q][1],
                                  done ? V : V | W));
      }
      assert_int_equal (stats (t->c).writeback_bytes, (2 - k) * 8 * SS);
      assert_true (cache_debug_check (t->c));
    }
    for (int r = 0; r < 3; r++)
      assert_true (disk_is_pattern (t, three_ranges[r][0], three_ranges[r][1],
                                    (unsigned) (10 + r)));
    assert_int_equal (stats (t->c).runs_in_flight, 0);
    /* Out of write-back and clean: the page can be dropped now. */
    assert_int_equal (cache_debug_refs (t->c, 3 * PG), 0);
    tc_close (t);
  }
}

/* Invariants 3 and 4: snapshot, redirty, one write per sector. */
static void
test_redirty_while_in_flight (void **state)
{
  struct tcache *t = *state;
  struct cache_config cfg = test_config ();
  const uint64_t a = 7 * PG + 10 * SS;
  struct cache_run *run0;
  size_t n;

  open_capture (t, &cfg);
  fill_disk (t, 1);
  /* X = pattern 2 on sector A (and its neighbour, for a wider run). */
  assert_int_equal (write_pattern (t, a, 2 * SS, 2, 0), 0);
  assert_int_equal (cache_writeback (t->c, CACHE_WB_BACKGROUND, 0), 1);
  assert_int_equal (cap (t, 0).off, a);
  assert_int_equal (cap (t, 0).len, 2 * SS);
  assert_int_equal (cache_debug_sector (t->c, a), V | W);
  run0 = fake_capture_run (t->f, 0);

  /* Y = pattern 3 on sector A only: returns at once (we are the only
   * thread, so waiting would hang), and redirties.
   */
  assert_int_equal (write_pattern (t, a, SS, 3, 0), 0);
  assert_int_equal (cache_debug_sector (t->c, a), V | D | W);
  assert_int_equal (cache_debug_sector (t->c, a + SS), V | W);
  assert_true (read_is_pattern (t, a, SS, 3));
  /* The snapshot in flight still holds X. */
  assert_int_equal (pattern_mismatch (cache_run_data (run0), 2 * SS, a, 2), -1);
  assert_int_equal (stats (t->c).dirty_bytes, SS);

  /* A second pass must not submit A while the first write is out. */
  n = fake_nr_captured (t->f);
  assert_int_equal (cache_writeback (t->c, CACHE_WB_BACKGROUND, 0), 0);
  assert_int_equal (fake_nr_captured (t->f), n);
  assert_false (fake_capture_overlaps (t->f, n, a, SS));
  assert_true (cache_debug_check (t->c));

  /* Not even when the page has other dirty data to collect: B, two
   * sectors before A (so a run of B that ran on into A would be
   * contiguous), goes out alone.
   */
  assert_int_equal (write_pattern (t, a - 2 * SS, 2 * SS, 4, 0), 0);
  assert_int_equal (cache_writeback (t->c, CACHE_WB_BACKGROUND, 0), 1);
  assert_int_equal (fake_nr_captured (t->f), n + 1);
  assert_int_equal (cap (t, n).off, a - 2 * SS);
  assert_int_equal (cap (t, n).len, 2 * SS);
  assert_false (fake_capture_overlaps (t->f, n, a, SS));
  assert_int_equal (cache_debug_sector (t->c, a), V | D | W);
  assert_int_equal (fake_complete (t->f, t->c, n, 0), 0);
  assert_true (disk_is_pattern (t, a - 2 * SS, 2 * SS, 4));
  n++;

  /* The first write lands: A is DIRTY (Y still to go), A+1 CLEAN. */
  assert_int_equal (fake_complete (t->f, t->c, 0, 0), 0);
  assert_true (disk_is_pattern (t, a, 2 * SS, 2));
  assert_int_equal (cache_debug_sector (t->c, a), V | D);
  assert_int_equal (cache_debug_sector (t->c, a + SS), V);

  /* Now A goes out again, with Y. */
  assert_int_equal (cache_writeback (t->c, CACHE_WB_BACKGROUND, 0), 1);
  assert_int_equal (fake_nr_captured (t->f), n + 1);
  assert_int_equal (cap (t, n).off, a);
  assert_int_equal (cap (t, n).len, SS);
  assert_int_equal (
    pattern_mismatch (cache_run_data (fake_capture_run (t->f, n)), SS, a, 3),
    -1);
  assert_int_equal (fake_complete (t->f, t->c, n, 0), 0);
  assert_true (disk_is_pattern (t, a, SS, 3)); /* newest wins */
  assert_true (disk_is_pattern (t, a + SS, SS, 2));
  assert_int_equal (cache_debug_sector (t->c, a), V);
  assert_int_equal (stats (t->c).dirty_bytes, 0);
}

/* Capture, no throttling, batches of BATCH bytes. */
static void
open_batches (struct tcache *t, uint32_t batch)
{
  struct cache_config cfg = test_config ();

  cfg.batch_bytes = batch;
  cfg.dirty_ratio = 100;
  open_capture (t, &cfg);
}

/* Batches: up to batch_bytes, oldest pages first. */
static void
test_batch_size_and_age_order (void **state)
{
  struct tcache *t = *state;
  static const unsigned order[4] = { 6, 4, 2, 0 }; /* oldest first */
  uint64_t total = 0;
  size_t n;

  open_batches (t, 2 * PG);
  for (int i = 0; i < 4; i++)
    assert_int_equal (write_pattern (t, order[i] * PG, PG, 2, 0), 0);
  assert_true (cache_writeback (t->c, CACHE_WB_BACKGROUND, 0) > 0);
  n = fake_nr_captured (t->f);
  for (size_t i = 0; i < n; i++)
    total += cap (t, i).len;
  assert_int_equal (total, 2 * PG);
  /* The two oldest pages, 6 and 4. */
  assert_true (sectors_are (t, 6 * PG, PG, V | W));
  assert_true (sectors_are (t, 4 * PG, PG, V | W));
  assert_true (sectors_are (t, 2 * PG, PG, V | D));
  assert_true (sectors_are (t, 0, PG, V | D));
  /* The next pass takes the rest. */
  assert_true (cache_writeback (t->c, CACHE_WB_BACKGROUND, 0) > 0);
  assert_true (sectors_are (t, 2 * PG, PG, V | W));
  assert_true (sectors_are (t, 0, PG, V | W));
  assert_int_equal (cache_writeback (t->c, CACHE_WB_BACKGROUND, 0), 0);
  fake_complete_all (t->f, t->c, 0);
  for (int i = 0; i < 4; i++)
    assert_true (disk_is_pattern (t, order[i] * PG, PG, 2));
}

/* Clustering: two streams whose pages interleave in the dirty list
 * (0, 8, 1, 9, 2, 10, 3, 11) go back as two runs of four pages, not as
 * four runs of two: the batch walks up the disk from its oldest page.
 */
static void
test_batch_follows_oldest_page_on_disk (void **state)
{
  struct tcache *t = *state;

  open_batches (t, 4 * PG);
  for (unsigned i = 0; i < 4; i++) {
    assert_int_equal (write_pattern (t, i * PG, PG, 2, 0), 0);
    assert_int_equal (write_pattern (t, (8 + i) * PG, PG, 3, 0), 0);
  }
  assert_int_equal (cache_writeback (t->c, CACHE_WB_BACKGROUND, 0), 1);
  assert_int_equal (fake_nr_captured (t->f), 1);
  (void) find_cap (t, 0, 4 * PG);
  assert_true (sectors_are (t, 0, 4 * PG, V | W));
  assert_true (sectors_are (t, 8 * PG, 4 * PG, V | D));
  assert_int_equal (cache_writeback (t->c, CACHE_WB_BACKGROUND, 0), 1);
  (void) find_cap (t, 8 * PG, 4 * PG);
  assert_int_equal (cache_writeback (t->c, CACHE_WB_BACKGROUND, 0), 0);
  fake_complete_all (t->f, t->c, 0);
  assert_true (disk_is_pattern (t, 0, 4 * PG, 2));
  assert_true (disk_is_pattern (t, 8 * PG, 4 * PG, 3));
}

/* The walk never takes more than a collect can hold (MAX_PICK, 256
 * pages).  With 4 KiB pages holding one dirty sector each, 256 pages
 * are 128 KiB, far under a 1 MiB batch: the pick stops at 256 (pages
 * 0, 2, ..., 510, oldest first), and the walk from page 0 takes page 1
 * (written last) and then meets page 2, its own pick.  A batch of 257
 * pages would overflow the collect's picks; the walk must give back the
 * youngest pick instead (page 510, collected by the next batch).
 */
static void
test_cluster_stops_at_max_pick (void **state)
{
  struct tcache *t = *state;
  struct cache_config cfg = test_config ();
  const uint64_t pg = 4 * KiB, ss = 512;
  size_t nruns;

  cfg.page_size = pg;
  cfg.cache_size = 4 * MiB;
  cfg.batch_bytes = 1 * MiB;
  cfg.dirty_ratio = 100;
  open_capture (t, &cfg);
  for (uint64_t i = 0; i < 256; i++)
    assert_int_equal (write_pattern (t, 2 * i * pg, ss, 2, 0), 0);
  assert_int_equal (write_pattern (t, pg, ss, 2, 0), 0);
  /* One run per page (the sectors are not contiguous): pages 0, 1, 2,
   * then 4 .. 508; page 510 is left for the next batch.
   */
  assert_int_equal (cache_writeback (t->c, CACHE_WB_BACKGROUND, 0), 256);
  nruns = fake_nr_captured (t->f);
  assert_int_equal (nruns, 256);
  (void) find_cap (t, pg, ss);
  (void) find_cap (t, 508 * pg, ss);
  assert_true (sectors_are (t, 510 * pg, ss, V | D));
  assert_int_equal (cache_writeback (t->c, CACHE_WB_BACKGROUND, 0), 1);
  (void) find_cap (t, 510 * pg, ss);
  assert_int_equal (cache_writeback (t->c, CACHE_WB_BACKGROUND, 0), 0);
  fake_complete_all (t->f, t->c, 0);
  assert_true (disk_is_pattern (t, pg, ss, 2));
  for (uint64_t i = 0; i < 256; i++)
    assert_true (disk_is_pattern (t, 2 * i * pg, ss, 2));
  assert_true (no_stray_pins (t));
}

static uint64_t fake_now;

static uint64_t
fake_clock (void *opaque)
{
  (void) opaque;
  return fake_now;
}

/* The walk up the disk takes only what the collect would take itself:
 * at 60 ms with a 50 ms expiry, page 0 (dirty since 0 ms) goes back and
 * its neighbour, page 1 (dirty since 20 ms), stays dirty.
 */
static void
test_cluster_only_what_collect_would_take (void **state)
{
  struct tcache *t = *state;

  open_batches (t, 4 * PG);
  cache_debug_set_clock (t->c, fake_clock, NULL);
  fake_now = 0;
  assert_int_equal (write_pattern (t, 0, PG, 2, 0), 0);
  fake_now = 20;
  assert_int_equal (write_pattern (t, PG, PG, 3, 0), 0);
  fake_now = 60;
  assert_int_equal (cache_writeback (t->c, CACHE_WB_EXPIRED, 50), 1);
  (void) find_cap (t, 0, PG);
  assert_true (sectors_are (t, PG, PG, V | D));
  fake_complete_all (t->f, t->c, 0);
  fake_now = 70;
  assert_int_equal (cache_writeback (t->c, CACHE_WB_EXPIRED, 50), 1);
  fake_complete_all (t->f, t->c, 0);
  assert_true (disk_is_pattern (t, 0, PG, 2));
  assert_true (disk_is_pattern (t, PG, PG, 3));
  cache_debug_set_clock (t->c, NULL, NULL);
}

/* Expiry when the list is out of date order.  Page 1 (dirty since 0 ms)
 * is collected at 11 ms except for a sector written again while in
 * flight, so it stays listed and goes to the tail, behind page 3
 * (dirty since 10 ms).  At 55 ms with a 50 ms expiry, page 1 is expired
 * and page 3 is not: the expired pass must still find page 1.  The
 * cache's clock is a variable here, so no test waits for time to pass.
 */
static void
test_expired_page_behind_younger_one (void **state)
{
  struct tcache *t = *state;

  open_batches (t, PG);
  cache_debug_set_clock (t->c, fake_clock, NULL);
  fake_now = 0;
  assert_int_equal (write_pattern (t, PG, SS, 2, 0), 0);
  assert_int_equal (cache_writeback (t->c, CACHE_WB_BACKGROUND, 0), 1);
  assert_int_equal (write_pattern (t, PG, PG, 3, 0), 0); /* sector 0: D+W */
  fake_now = 10;
  assert_int_equal (write_pattern (t, 3 * PG, SS, 4, 0), 0);
  fake_now = 11;
  assert_int_equal (cache_writeback (t->c, CACHE_WB_BACKGROUND, 0), 1);
  assert_true (sectors_are (t, PG, SS, V | D | W));
  assert_true (sectors_are (t, PG + SS, PG - SS, V | W));
  assert_true (sectors_are (t, 3 * PG, SS, V | D));
  fake_complete_all (t->f, t->c, 0);
  assert_true (sectors_are (t, PG, SS, V | D));

  fake_now = 55;
  assert_int_equal (cache_writeback (t->c, CACHE_WB_EXPIRED, 50), 1);
  assert_true (sectors_are (t, PG, SS, V | W));
  assert_true (sectors_are (t, 3 * PG, SS, V | D));
  fake_complete_all (t->f, t->c, 0);
  assert_true (disk_is_pattern (t, PG, PG, 3));
  cache_debug_set_clock (t->c, NULL, NULL);
}

int
main (void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test_setup_teardown (test_no_writeback_without_trigger,
                                     tc_setup, tc_teardown),
    cmocka_unit_test_setup_teardown (test_runs_merge_across_pages, tc_setup,
                                     tc_teardown),
    cmocka_unit_test_setup_teardown (test_separate_ranges_separate_runs,
                                     tc_setup, tc_teardown),
    cmocka_unit_test_setup_teardown (test_mark_all_before_submit, tc_setup,
                                     tc_teardown),
    cmocka_unit_test_setup_teardown (test_completion_any_order, tc_setup,
                                     tc_teardown),
    cmocka_unit_test_setup_teardown (test_redirty_while_in_flight, tc_setup,
                                     tc_teardown),
    cmocka_unit_test_setup_teardown (test_batch_size_and_age_order, tc_setup,
                                     tc_teardown),
    cmocka_unit_test_setup_teardown (test_expired_page_behind_younger_one,
                                     tc_setup, tc_teardown),
    cmocka_unit_test_setup_teardown (test_batch_follows_oldest_page_on_disk,
                                     tc_setup, tc_teardown),
    cmocka_unit_test_setup_teardown (test_cluster_only_what_collect_would_take,
                                     tc_setup, tc_teardown),
    cmocka_unit_test_setup_teardown (test_cluster_stops_at_max_pick, tc_setup,
                                     tc_teardown),
  };

  return cmocka_run_group_tests (tests, NULL, NULL);
}
