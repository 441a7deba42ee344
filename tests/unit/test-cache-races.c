/* subpage unit tests: races between requests, one test per race that
 * reached the code, each forced into its bad interleaving without a
 * sleep.  A thread is held where it has dropped every lock (in a
 * backend call behind a fake-backend gate, or at a named park point,
 * cache_debug_set_park), the racing request runs to completion in the
 * test's thread, then the held thread is let go and the outcome is
 * checked against what every valid order of the two requests allows.
 *
 *  - an unaligned write whose partial sector is being filled while a
 *    ZERO drops its other partial sector (pre-ZERO bytes must not come
 *    back);
 *  - a FUA write racing a TRIM or ZERO of part of its range (the rest
 *    must still be durable at the reply);
 *  - a read racing a TRIM of sectors it had found valid (it must not
 *    return bytes it never filled);
 *  - a flush whose collect found nothing to take because a TRIM held
 *    the page, and the TRIM ends before the flush sleeps (no lost
 *    wake-up);
 *  - a flush after 100,000 failed flushes (it must not wait for writes
 *    that arrived after it);
 *  - a FUA write waiting for write-back of its own sector while another
 *    sector of the page stays in flight (it must go on when its sector
 *    is done, not when the whole page is);
 *  - a FUA write whose first run fails before it waits for write-back
 *    of its next page (it must still submit the rest);
 *  - a flush that skipped a page another collector had, and found
 *    nothing elsewhere (it must hear when that page is free again);
 *  - a flush whose one picked page a FUA write wrote back meanwhile (it
 *    must pick again);
 * and one that is not a race: a FAST_ZERO that the backend refuses
 * changes nothing, its partial head and tail sectors included.
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

/* Was [off, off+len) made durable with FUA, or by a backend flush
 * after the write that put it on the disk?
 */
static bool
durable_in_log (struct tcache *t, uint64_t off, uint32_t len)
{
  long w = fake_log_last (t->f, FAKE_WRITE, off, len);
  struct fake_event ev;

  if (w < 0 || !fake_event (t->f, (size_t) w, &ev))
    return false;
  return (ev.flags & CACHE_FUA) || fake_log_last (t->f, FAKE_FLUSH, 0, 0) > w;
}

/* An unaligned write [x+100, x+2*SS+100) of page 2: its head sector 1
 * is valid (CLEAN), its tail sector 3 is absent and being filled from
 * the backend (held).  Meanwhile a ZERO of sector 1 drops it and a
 * whole-sector write makes sector 3 valid.  In either order of the
 * write and the ZERO, bytes [x, x+100) of sector 1 read as zero; the
 * write must not mark sector 1 dirty over the stale bytes its page
 * still holds there.
 */
static void
test_unaligned_write_racing_zero (void **state)
{
  struct tcache *t = *state;
  struct cache_config cfg = test_config ();
  const uint64_t x = 2 * PG + SS; /* sector 1 of page 2 */
  unsigned char buf[2 * SS], tmp[SS];
  struct async *w;

  tc_open (t, &cfg);
  fill_disk (t, 1);
  assert_int_equal (cache_read (t->c, tmp, SS, x), 0);
  assert_true (sectors_are (t, x, SS, V));
  assert_true (sectors_are (t, x + 2 * SS, SS, 0));

  fake_hold (t->f, FAKE_READ, true);
  pattern (buf, sizeof buf, x + 100, 2);
  w = async_start (t, ASYNC_WRITE, buf, sizeof buf, x + 100, 0);
  WAIT_FOR (fake_held (t->f, FAKE_READ) == 1); /* filling sector 3 */

  assert_int_equal (cache_zero (t->c, SS, x, 0), 0);
  assert_true (sectors_are (t, x, SS, 0));
  assert_int_equal (write_pattern (t, x + 2 * SS, SS, 3, 0), 0);
  fake_hold (t->f, FAKE_READ, false);
  assert_int_equal (async_join (w), 0);

  assert_true (read_is_byte (t, x, 100, 0));
  assert_true (read_is_pattern (t, x + 100, 2 * SS - 100, 2));
  assert_int_equal (cache_flush (t->c), 0);
  assert_true (fake_disk_is_byte (t->f, 0, 100, x));
  assert_true (disk_is_pattern (t, x + 100, 2 * SS - 100, 2));
}

/* A FUA write of sectors 0-15 of page 3 while a TRIM or ZERO of
 * sectors 8-15 is in the backend (held): the write lands in the cache,
 * waits for the busy range, and the discard then drops sectors 8-15.
 * Sectors 0-7 were not touched by the discard: at the FUA write's reply
 * they must be durable on the backend.
 */
static void
fua_write_racing_discard (struct tcache *t, enum async_op op)
{
  struct cache_config cfg = test_config ();
  const uint64_t x = 3 * PG;
  enum fake_op fop = op == ASYNC_ZERO ? FAKE_ZERO : FAKE_TRIM;
  unsigned char buf[16 * SS];
  struct async *d, *w;

  tc_open (t, &cfg);
  fill_disk (t, 1);
  fake_hold (t->f, fop, true);
  d = async_start (t, op, NULL, 8 * SS, x + 8 * SS, 0);
  WAIT_FOR (fake_held (t->f, fop) == 1);

  pattern (buf, sizeof buf, x, 2);
  w = async_start (t, ASYNC_WRITE, buf, sizeof buf, x, CACHE_FUA);
  WAIT_FOR (stats (t->c).waiting_idle == 1); /* for the busy range */
  assert_false (async_done (w));
  fake_hold (t->f, fop, false);
  assert_int_equal (async_join (d), 0);
  assert_int_equal (async_join (w), 0);

  assert_true (disk_is_pattern (t, x, 8 * SS, 2));
  assert_true (durable_in_log (t, x, 8 * SS));
  assert_true (sectors_are (t, x, 8 * SS, V));
}

static void
test_fua_write_racing_trim (void **state)
{
  fua_write_racing_discard (*state, ASYNC_TRIM);
}

static void
test_fua_write_racing_zero (void **state)
{
  fua_write_racing_discard (*state, ASYNC_ZERO);
}

/* A read of sectors 0-3 of page 4, where 0-1 are valid (dirty) and 2-3
 * absent: while it reads 2-3 from the backend (held), a TRIM drops 0-1.
 * Each of sectors 0-1 must come back as the data before the trim or as
 * zeroes (what the fake's trim leaves), never as the bytes the read's
 * buffer held before the call.
 */
static void
test_read_racing_trim (void **state)
{
  struct tcache *t = *state;
  struct cache_config cfg = test_config ();
  const uint64_t x = 4 * PG;
  unsigned char poison[4 * SS], want[SS];
  const unsigned char *got;
  struct async *r;

  tc_open (t, &cfg);
  fill_disk (t, 1);
  assert_int_equal (write_pattern (t, x, 2 * SS, 2, 0), 0);

  fake_hold (t->f, FAKE_READ, true);
  memset (poison, 0xcc, sizeof poison);
  r = async_start (t, ASYNC_READ, poison, sizeof poison, x, 0);
  WAIT_FOR (fake_held (t->f, FAKE_READ) == 1);
  assert_int_equal (cache_trim (t->c, 2 * SS, x, 0), 0);
  assert_true (sectors_are (t, x, 2 * SS, 0));
  fake_hold (t->f, FAKE_READ, false);
  assert_int_equal (async_join (r), 0);

  got = r->buf;
  for (unsigned s = 0; s < 2; s++) {
    const unsigned char *g = got + s * SS;
    bool zero = true;

    pattern (want, SS, x + s * SS, 2);
    for (unsigned i = 0; i < SS; i++)
      zero = zero && g[i] == 0;
    if (!zero && memcmp (g, want, SS) != 0)
      fail_msg ("sector %u: neither the data before the trim nor zeroes "
                "(first byte %#x)",
                s, g[0]);
  }
  assert_int_equal (pattern_mismatch (got + 2 * SS, 2 * SS, x + 2 * SS, 1), -1);
}

/* Sectors 0-7 of page 5 are dirty.  A TRIM of sectors 8-15 is in the
 * backend (held), so the page is busy.  A flush collects: the page is
 * skipped and the collect returns 0.  The flush is parked there, the
 * TRIM ends (its wake-ups find nobody waiting), then the flush goes on.
 * It must notice that the page can now be collected, rather than sleep
 * until background write-back (which this cache has none of).
 */
static void
test_flush_after_skipped_collect (void **state)
{
  struct tcache *t = *state;
  struct cache_config cfg = test_config ();
  const uint64_t x = 5 * PG;
  struct stops st;
  struct async *d, *fl;

  tc_open (t, &cfg);
  fill_disk (t, 1);
  assert_int_equal (write_pattern (t, x, 8 * SS, 2, 0), 0);

  fake_hold (t->f, FAKE_TRIM, true);
  d = async_start (t, ASYNC_TRIM, NULL, 8 * SS, x + 8 * SS, 0);
  WAIT_FOR (fake_held (t->f, FAKE_TRIM) == 1);

  stops_init (&st);
  stops_add (&st, "flush.collected", 1);
  cache_debug_set_park (t->c, stops_hook, &st);
  fl = async_start (t, ASYNC_FLUSH, NULL, 0, 0, 0);
  WAIT_FOR (stops_parked (&st, 0));
  assert_int_equal (counts (t).writes, 0); /* the page was skipped */

  fake_hold (t->f, FAKE_TRIM, false);
  assert_int_equal (async_join (d), 0);
  stops_release (&st, 0);
  assert_int_equal (async_join (fl), 0);
  cache_debug_set_park (t->c, NULL, NULL);
  stops_destroy (&st);

  assert_true (disk_is_pattern (t, x, 8 * SS, 2));
  assert_true (durable_in_log (t, x, 8 * SS));
}

/* Write-back of one sector fails 100,000 flushes in a row (a backend at
 * ENOSPC for hours while a client keeps flushing), then the backend
 * recovers.  The next flush holds that sector's write in the backend;
 * meanwhile a client writes another page.  That write arrived after the
 * flush: the flush must return once the old sector is written, without
 * waiting for the new one.
 */
static void
test_flush_after_100000_failed_flushes (void **state)
{
  struct tcache *t = *state;
  struct cache_config cfg = test_config ();
  struct async *fl;

  tc_open (t, &cfg);
  fill_disk (t, 1);
  assert_int_equal (write_pattern (t, 0, SS, 2, 0), 0);

  atomic_store (&tc_quiet_errors, true);
  fake_fail_all (t->f, FAKE_WRITE, -ENOSPC);
  for (unsigned i = 0; i < 100000; i++) {
    int r = cache_flush (t->c);
    if (r != -ENOSPC) {
      atomic_store (&tc_quiet_errors, false);
      fail_msg ("failed flush %u returned %d, not -ENOSPC", i, r);
    }
  }
  fake_fail_all (t->f, FAKE_WRITE, 0);
  atomic_store (&tc_quiet_errors, false);

  fake_hold (t->f, FAKE_WRITE, true);
  fl = async_start (t, ASYNC_FLUSH, NULL, 0, 0, 0);
  WAIT_FOR (fake_held (t->f, FAKE_WRITE) == 1);
  assert_int_equal (write_pattern (t, 7 * PG, SS, 3, 0), 0);
  fake_release (t->f, FAKE_WRITE, 1);
  assert_int_equal (async_join (fl), 0);
  fake_hold (t->f, FAKE_WRITE, false);

  assert_true (disk_is_pattern (t, 0, SS, 2));
  assert_true (sectors_are (t, 7 * PG, SS, V | D));
}

/* Two runs in flight on page 6: sector 0 and sector 8.  A FUA write of
 * sector 8 waits for its run.  When that run completes, the FUA write
 * must go on although sector 0's run is still in flight.
 */
static void
test_fua_waiter_wakes_when_its_range_is_idle (void **state)
{
  struct tcache *t = *state;
  struct cache_config cfg = test_config ();
  const uint64_t x = 6 * PG;
  unsigned char buf[SS];
  struct fake_capture ci;
  size_t a = SIZE_MAX, b = SIZE_MAX;
  struct async *w;

  tc_open (t, &cfg);
  fill_disk (t, 1);
  cache_set_submit (t->c, fake_capture_submit, t->f);
  assert_int_equal (write_pattern (t, x, SS, 2, 0), 0);
  assert_int_equal (write_pattern (t, x + 8 * SS, SS, 3, 0), 0);
  assert_int_equal (cache_writeback (t->c, CACHE_WB_BACKGROUND, 0), 2);
  for (size_t i = 0; i < fake_nr_captured (t->f); i++) {
    assert_true (fake_capture_info (t->f, i, &ci));
    if (ci.off == x)
      a = i;
    else if (ci.off == x + 8 * SS)
      b = i;
  }
  assert_true (a != SIZE_MAX && b != SIZE_MAX);

  pattern (buf, SS, x + 8 * SS, 4);
  w = async_start (t, ASYNC_WRITE, buf, SS, x + 8 * SS, CACHE_FUA);
  WAIT_FOR (stats (t->c).waiting_idle == 1);
  assert_int_equal (fake_complete (t->f, t->c, b, 0), 0);
  assert_true (sectors_are (t, x, SS, V | W));
  WAIT_FOR (async_done (w));
  assert_int_equal (async_join (w), 0);
  assert_true (disk_is_pattern (t, x + 8 * SS, SS, 4));
  assert_true (durable_in_log (t, x + 8 * SS, SS));
  assert_int_equal (fake_complete (t->f, t->c, a, 0), 0);
}

/* A FAST_ZERO over [x+SS/2, x+3*SS+SS/2) of dirty data, refused by the
 * backend with ENOTSUP: the client will write zeroes itself, so the
 * cache must be as it was, its partial head and tail sectors included.
 */
static void
test_fast_zero_refused_changes_nothing (void **state)
{
  struct tcache *t = *state;
  struct cache_config cfg = test_config ();
  const uint64_t x = 7 * PG;

  tc_open (t, &cfg);
  fill_disk (t, 1);
  assert_int_equal (write_pattern (t, x, 4 * SS, 2, 0), 0);
  fake_fail_nth (t->f, FAKE_ZERO, 1, -ENOTSUP);
  assert_int_equal (cache_zero (t->c, 3 * SS, x + SS / 2,
                                CACHE_FAST_ZERO | CACHE_MAY_TRIM),
                    -ENOTSUP);
  assert_true (read_is_pattern (t, x, 4 * SS, 2));
  assert_true (sectors_are (t, x, 4 * SS, V | D));
  assert_int_equal (cache_flush (t->c), 0);
  assert_true (disk_is_pattern (t, x, 4 * SS, 2));
}

/* A FUA write over the last sector of page 3 and the first of page 4,
 * whose page-4 sector is in flight (a held background run).  The FUA
 * write submits its page-3 run before it waits (it never waits holding
 * W bits it has not submitted), and that run fails.  When the held run
 * completes, the FUA write must still submit its page-4 run: it returns
 * the error, and leaves no sector under W and no run behind.
 */
static void
test_fua_write_failing_before_a_wait (void **state)
{
  struct tcache *t = *state;
  struct cache_config cfg = test_config ();
  const uint64_t x = 4 * PG - SS;
  unsigned char buf[2 * SS];
  struct cache_stats st;
  struct async *w;

  tc_open (t, &cfg);
  fill_disk (t, 1);
  cache_set_submit (t->c, fake_capture_submit, t->f);
  assert_int_equal (write_pattern (t, 4 * PG, SS, 2, 0), 0);
  assert_int_equal (cache_writeback (t->c, CACHE_WB_BACKGROUND, 0), 1);

  atomic_store (&tc_quiet_errors, true);
  fake_fail_nth (t->f, FAKE_WRITE, 1, -EIO);
  pattern (buf, sizeof buf, x, 3);
  w = async_start (t, ASYNC_WRITE, buf, sizeof buf, x, CACHE_FUA);
  WAIT_FOR (stats (t->c).waiting_idle == 1);
  assert_int_equal (counts (t).write_errors, 1);
  assert_int_equal (fake_complete (t->f, t->c, 0, 0), 0);
  assert_int_equal (async_join (w), -EIO);

  st = stats (t->c);
  assert_int_equal (st.runs_in_flight, 0);
  assert_int_equal (st.writeback_bytes, 0);
  assert_true (sectors_are (t, x, SS, V | D));
  assert_true (sectors_are (t, 4 * PG, SS, V));
  assert_true (disk_is_pattern (t, 4 * PG, SS, 3));
  cache_set_submit (t->c, NULL, NULL);
  assert_int_equal (cache_flush (t->c), -EIO); /* reported once */
  atomic_store (&tc_quiet_errors, false);
  assert_int_equal (cache_flush (t->c), 0);
  assert_true (disk_is_pattern (t, x, 2 * SS, 3));
}

static uint64_t race_now;

static uint64_t
race_clock (void *opaque)
{
  (void) opaque;
  return race_now;
}

struct expired_job {
  struct cache *c;
  atomic_int ret;
  atomic_bool done;
};

static void *
expired_main (void *arg)
{
  struct expired_job *j = arg;

  atomic_store (&j->ret, cache_writeback (j->c, CACHE_WB_EXPIRED, 50));
  atomic_store (&j->done, true);
  return NULL;
}

/* A flush skips page 2 because background write-back is collecting it,
 * and finds nothing on page 5, the other page it picked (a FUA write
 * wrote it back meanwhile).  The background collect then finishes
 * page 2 with part of it still dirty (sectors written after it sized
 * its batch), and its run completes before the flush sleeps.  The flush
 * must hear that page 2 is free again: the event is page 2's, reported
 * by its collector, not one the flush may count as its own.
 */
static void
test_flush_skipping_a_page_being_collected (void **state)
{
  struct tcache *t = *state;
  struct cache_config cfg = test_config ();
  const uint64_t p2 = 2 * PG, p5 = 5 * PG;
  struct stops st;
  struct expired_job job = { .c = NULL };
  unsigned char buf[4 * SS];
  pthread_t bg;
  struct async *fl;

  tc_open (t, &cfg);
  fill_disk (t, 1);
  stops_init (&st);
  stops_add (&st, "collect.picked", 1);  /* 0: background */
  stops_add (&st, "collect.picked", 2);  /* 1: the flush */
  stops_add (&st, "flush.collected", 1); /* 2: the flush */
  cache_debug_set_clock (t->c, race_clock, NULL);
  race_now = 0;
  assert_int_equal (write_pattern (t, p2, 4 * SS, 2, 0), 0);
  race_now = 100;
  assert_int_equal (write_pattern (t, p5, 4 * SS, 3, 0), 0);
  cache_debug_set_park (t->c, stops_hook, &st);

  /* Background write-back of what is 50 ms old: page 2 only. */
  race_now = 60;
  job.c = t->c;
  assert_int_equal (pthread_create (&bg, NULL, expired_main, &job), 0);
  WAIT_FOR (stops_parked (&st, 0));
  assert_int_equal (write_pattern (t, p2 + 8 * SS, 4 * SS, 4, 0), 0);

  fl = async_start (t, ASYNC_FLUSH, NULL, 0, 0, 0);
  WAIT_FOR (stops_parked (&st, 1)); /* picked page 5 */
  pattern (buf, sizeof buf, p5, 5);
  assert_int_equal (cache_write (t->c, buf, sizeof buf, p5, CACHE_FUA), 0);
  stops_release (&st, 1);
  WAIT_FOR (stops_parked (&st, 2)); /* collected nothing */
  stops_release (&st, 0);
  WAIT_FOR (atomic_load (&job.done));
  assert_int_equal (pthread_join (bg, NULL), 0);
  assert_int_equal (atomic_load (&job.ret), 1);
  assert_true (sectors_are (t, p2 + 8 * SS, 4 * SS, V | D));
  stops_release (&st, 2);
  assert_int_equal (async_join (fl), 0);
  cache_debug_set_park (t->c, NULL, NULL);
  cache_debug_set_clock (t->c, NULL, NULL);

  assert_true (disk_is_pattern (t, p2, 4 * SS, 2));
  assert_true (disk_is_pattern (t, p2 + 8 * SS, 4 * SS, 4));
  assert_true (disk_is_pattern (t, p5, 4 * SS, 5));
  stops_destroy (&st);
}

/* A flush picks page 2 only (its dirty data fills a batch), and while
 * it is parked with its pick, a FUA write writes page 2 back.  The
 * flush then finds nothing on the page it picked: it must pick again
 * and write page 5, which it had left for the next batch, instead of
 * waiting for an event that nothing will produce.
 */
static void
test_flush_whose_pick_was_written_back (void **state)
{
  struct tcache *t = *state;
  struct cache_config cfg = test_config ();
  const uint64_t p2 = 2 * PG, p5 = 5 * PG;
  struct stops st;
  unsigned char *buf = malloc (PG);
  struct async *fl;

  assert_non_null (buf);
  cfg.batch_bytes = PG;
  tc_open (t, &cfg);
  fill_disk (t, 1);
  stops_init (&st);
  stops_add (&st, "collect.picked", 1);
  assert_int_equal (write_pattern (t, p2, PG, 2, 0), 0);
  assert_int_equal (write_pattern (t, p5, SS, 3, 0), 0);
  cache_debug_set_park (t->c, stops_hook, &st);

  fl = async_start (t, ASYNC_FLUSH, NULL, 0, 0, 0);
  WAIT_FOR (stops_parked (&st, 0));
  pattern (buf, PG, p2, 4);
  assert_int_equal (cache_write (t->c, buf, PG, p2, CACHE_FUA), 0);
  assert_true (sectors_are (t, p2, PG, V));
  stops_release (&st, 0);
  assert_int_equal (async_join (fl), 0);
  cache_debug_set_park (t->c, NULL, NULL);

  assert_true (disk_is_pattern (t, p2, PG, 4));
  assert_true (disk_is_pattern (t, p5, SS, 3));
  assert_true (sectors_are (t, p5, SS, V));
  stops_destroy (&st);
  free (buf);
}

int
main (void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test_setup_teardown (test_unaligned_write_racing_zero, tc_setup,
                                     tc_teardown),
    cmocka_unit_test_setup_teardown (test_fua_write_racing_trim, tc_setup,
                                     tc_teardown),
    cmocka_unit_test_setup_teardown (test_fua_write_racing_zero, tc_setup,
                                     tc_teardown),
    cmocka_unit_test_setup_teardown (test_read_racing_trim, tc_setup,
                                     tc_teardown),
    cmocka_unit_test_setup_teardown (test_flush_after_skipped_collect, tc_setup,
                                     tc_teardown),
    cmocka_unit_test_setup_teardown (test_flush_after_100000_failed_flushes,
                                     tc_setup, tc_teardown),
    cmocka_unit_test_setup_teardown (
      test_fua_waiter_wakes_when_its_range_is_idle, tc_setup, tc_teardown),
    cmocka_unit_test_setup_teardown (test_fast_zero_refused_changes_nothing,
                                     tc_setup, tc_teardown),
    cmocka_unit_test_setup_teardown (test_fua_write_failing_before_a_wait,
                                     tc_setup, tc_teardown),
    cmocka_unit_test_setup_teardown (test_flush_skipping_a_page_being_collected,
                                     tc_setup, tc_teardown),
    cmocka_unit_test_setup_teardown (test_flush_whose_pick_was_written_back,
                                     tc_setup, tc_teardown),
  };

  return cmocka_run_group_tests (tests, NULL, NULL);
}
