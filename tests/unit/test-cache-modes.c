/* subpage unit tests: FUA (invariant 9) and the cache modes.
 *
 * FUA is durable on reply without flushing the rest of the cache: the
 * fake must see a FUA write covering the written sectors before
 * cache_write returns, no backend flush, and other dirty data must stay
 * dirty.  WRITETHROUGH writes reach the backend before the reply;
 * UNSAFE never writes or flushes on flush or FUA, but cache_drain (the
 * shutdown drain) writes everything in every mode.  The FUA-waits-for-
 * write-back case needs a thread and is in test-cache-idle.c.
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

/* Some successful FUA write in the log covers [off, off+len) entirely. */
static bool
fua_write_covers (struct tcache *t, uint64_t off, uint64_t len)
{
  size_t n = fake_nr_events (t->f);
  struct fake_event ev;

  for (size_t i = 0; i < n; i++) {
    assert_true (fake_event (t->f, i, &ev));
    if (ev.op == FAKE_WRITE && ev.err == 0 && (ev.flags & CACHE_FUA) &&
        ev.off <= off && off + len <= ev.off + ev.len)
      return true;
  }
  return false;
}

static void
test_fua_write (void **state)
{
  struct tcache *t = *state;
  struct cache_config cfg = test_config ();

  tc_open (t, &cfg);
  fill_disk (t, 1);
  /* Earlier dirty data elsewhere. */
  assert_int_equal (write_pattern (t, 3 * PG, 8 * KiB, 2, 0), 0);
  assert_int_equal (write_pattern (t, 20 * PG + 100, 50, 2, 0), 0);

  assert_int_equal (write_pattern (t, 10 * PG + 8 * KiB, 4 * KiB, 3, CACHE_FUA),
                    0);
  assert_true (fua_write_covers (t, 10 * PG + 8 * KiB, 4 * KiB));
  assert_true (disk_is_pattern (t, 10 * PG + 8 * KiB, 4 * KiB, 3));
  assert_int_equal (counts (t).fua_writes, 1);
  assert_int_equal (counts (t).flushes, 0);
  assert_int_equal (counts (t).write_bytes, 4 * KiB);
  /* The rest of the cache was not written. */
  assert_int_equal (fake_log_first (t->f, FAKE_WRITE, 3 * PG, 8 * KiB), -1);
  assert_int_equal (fake_log_first (t->f, FAKE_WRITE, 20 * PG, PG), -1);
  assert_true (sectors_are (t, 3 * PG, 8 * KiB, V | D));
  assert_int_equal (cache_debug_sector (t->c, 20 * PG + 100), V | D);
  assert_true (disk_is_pattern (t, 3 * PG, 8 * KiB, 1));
  /* The FUA sectors are clean, and nothing keeps their page pinned. */
  assert_true (sectors_are (t, 10 * PG + 8 * KiB, 4 * KiB, V));
  assert_int_equal (cache_debug_refs (t->c, 10 * PG), 0);
  assert_int_equal (stats (t->c).dirty_bytes, 8 * KiB + SS);
}

/* An unaligned FUA write over a partly dirty sector: the backend gets
 * the whole merged sector, durable, before the reply.
 */
static void
test_fua_unaligned_over_dirty (void **state)
{
  struct tcache *t = *state;
  struct cache_config cfg = test_config ();
  unsigned char want[2 * SS];
  const uint64_t s = 6 * PG + 40 * SS;

  tc_open (t, &cfg);
  fill_disk (t, 1);
  assert_int_equal (write_pattern (t, s + 10, 100, 2, 0), 0); /* dirty */
  assert_int_equal (write_pattern (t, s + 300, 400, 3, CACHE_FUA), 0);
  assert_true (fua_write_covers (t, s, 2 * SS));
  pattern (want, 2 * SS, s, 1);
  pattern (want + 10, 100, s + 10, 2);
  pattern (want + 300, 400, s + 300, 3);
  assert_true (fake_disk_equals (t->f, want, 2 * SS, s));
  assert_true (sectors_are (t, s, 2 * SS, V));
  assert_int_equal (counts (t).flushes, 0);
  assert_int_equal (stats (t->c).dirty_bytes, 0);
}

/* A FUA zero is durable on reply too. */
static void
test_fua_zero (void **state)
{
  struct tcache *t = *state;
  struct cache_config cfg = test_config ();
  long z, f, w;

  tc_open (t, &cfg);
  fill_disk (t, 1);
  assert_int_equal (write_pattern (t, 4 * PG, PG, 2, 0), 0);
  assert_int_equal (cache_zero (t->c, PG, 4 * PG, CACHE_FUA), 0);
  assert_true (fake_disk_is_byte (t->f, 0, PG, 4 * PG));
  assert_true (read_is_byte (t, 4 * PG, PG, 0));
  /* Durable: a FUA zero/write of the range, or a flush after it. */
  z = fake_log_last (t->f, FAKE_ZERO, 4 * PG, PG);
  w = fake_log_last (t->f, FAKE_WRITE, 4 * PG, PG);
  f = fake_log_last (t->f, FAKE_FLUSH, 0, 0);
  if (z >= 0) {
    struct fake_event ev;
    assert_true (fake_event (t->f, (size_t) z, &ev));
    assert_true ((ev.flags & CACHE_FUA) || f > z);
  }
  else {
    struct fake_event ev;
    assert_true (w >= 0);
    assert_true (fake_event (t->f, (size_t) w, &ev));
    assert_true ((ev.flags & CACHE_FUA) || f > w);
  }
}

static void
test_writethrough (void **state)
{
  struct tcache *t = *state;
  struct cache_config cfg = test_config ();

  cfg.mode = CACHE_MODE_WRITETHROUGH;
  tc_open (t, &cfg);
  fill_disk (t, 1);
  assert_int_equal (write_pattern (t, 2 * PG + 4 * KiB, 4 * KiB, 2, 0), 0);
  assert_true (disk_is_pattern (t, 2 * PG + 4 * KiB, 4 * KiB, 2));
  assert_true (sectors_are (t, 2 * PG + 4 * KiB, 4 * KiB, V));
  /* Unaligned. */
  assert_int_equal (write_pattern (t, 7 * PG + 1000, 3000, 3, 0), 0);
  assert_true (disk_is_pattern (t, 7 * PG + 1000, 3000, 3));
  assert_true (disk_is_pattern (t, 7 * PG, 1000, 1));
  assert_true (sectors_are (t, 7 * PG + 1000, 3000, V));
  /* Zero. */
  assert_int_equal (cache_zero (t->c, 8 * KiB, 2 * PG, 0), 0);
  assert_true (fake_disk_is_byte (t->f, 0, 8 * KiB, 2 * PG));
  assert_int_equal (stats (t->c).dirty_bytes, 0);
  assert_int_equal (cache_flush (t->c), 0);
  assert_true (read_is_byte (t, 2 * PG, 8 * KiB, 0));
}

/* Write-through in a tiny cache: every written page is clean when the
 * write returns, so it can be evicted; writing far more pages than the
 * cache holds must go on working.
 */
static void
test_writethrough_pages_evictable (void **state)
{
  struct tcache *t = *state;
  struct cache_config cfg = test_config ();

  cfg.mode = CACHE_MODE_WRITETHROUGH;
  cfg.cache_size = CACHE_MIN_PAGES * PG;
  tc_open (t, &cfg);
  for (uint64_t p = 0; p < 4 * CACHE_MIN_PAGES; p++) {
    assert_int_equal (write_pattern (t, p * PG + SS, 4 * KiB, 2, 0), 0);
    assert_true (sectors_are (t, p * PG + SS, 4 * KiB, V));
    /* Checked before the cache fills, so a leak fails here rather
     * than hanging the next write.
     */
    assert_int_equal (cache_debug_refs (t->c, p * PG), 0);
  }
  assert_true (stats (t->c).evictions > 0);
  for (uint64_t p = 0; p < 4 * CACHE_MIN_PAGES; p++)
    assert_true (disk_is_pattern (t, p * PG + SS, 4 * KiB, 2));
}

static void
test_unsafe (void **state)
{
  struct tcache *t = *state;
  struct cache_config cfg = test_config ();

  cfg.mode = CACHE_MODE_UNSAFE;
  tc_open (t, &cfg);
  assert_int_equal (write_pattern (t, 0, 4 * KiB, 2, 0), 0);
  assert_int_equal (write_pattern (t, 5 * PG, 4 * KiB, 2, CACHE_FUA), 0);
  assert_int_equal (cache_flush (t->c), 0);
  assert_int_equal (counts (t).writes, 0);
  assert_int_equal (counts (t).flushes, 0);
  assert_true (sectors_are (t, 0, 4 * KiB, V | D));
  assert_true (sectors_are (t, 5 * PG, 4 * KiB, V | D));
  assert_true (read_is_pattern (t, 0, 4 * KiB, 2));
}

/* The shutdown drain writes in unsafe mode too (issue 13, bug 4: the
 * plugin's .cleanup used cache_flush, which does nothing in unsafe
 * mode, so SIGTERM lost every dirty byte).  cache_drain puts every
 * dirty sector on the backend, then flushes the backend; a client's
 * flush afterwards is still a no-op.
 */
static void
test_unsafe_drain (void **state)
{
  struct tcache *t = *state;
  struct cache_config cfg = test_config ();
  long w1, w2, w3, f;

  cfg.mode = CACHE_MODE_UNSAFE;
  tc_open (t, &cfg);
  fill_disk (t, 1);
  assert_int_equal (write_pattern (t, 0, 4 * KiB, 2, 0), 0);
  assert_int_equal (write_pattern (t, 5 * PG, 4 * KiB, 2, CACHE_FUA), 0);
  assert_int_equal (write_pattern (t, 9 * PG + 100, PG + 300, 3, 0), 0);
  assert_int_equal (cache_flush (t->c), 0);
  assert_int_equal (counts (t).writes, 0);
  assert_true (disk_is_pattern (t, 0, 4 * KiB, 1));

  assert_int_equal (cache_drain (t->c), 0);
  assert_true (disk_is_pattern (t, 0, 4 * KiB, 2));
  assert_true (disk_is_pattern (t, 5 * PG, 4 * KiB, 2));
  assert_true (disk_is_pattern (t, 9 * PG + 100, PG + 300, 3));
  assert_true (disk_is_pattern (t, 9 * PG, 100, 1));
  assert_true (disk_is_pattern (t, 10 * PG + 400, SS - 400, 1));
  assert_int_equal (stats (t->c).dirty_bytes, 0);
  assert_true (sectors_are (t, 0, 4 * KiB, V));
  /* The backend flush comes after the last write. */
  w1 = fake_log_last (t->f, FAKE_WRITE, 0, 4 * KiB);
  w2 = fake_log_last (t->f, FAKE_WRITE, 5 * PG, 4 * KiB);
  w3 = fake_log_last (t->f, FAKE_WRITE, 10 * PG, SS);
  f = fake_log_last (t->f, FAKE_FLUSH, 0, 0);
  assert_true (w1 >= 0 && w2 >= 0 && w3 >= 0);
  assert_true (f > w1 && f > w2 && f > w3);
  assert_int_equal (counts (t).flushes, 1);
  assert_int_equal (counts (t).fua_writes, 0);

  /* Client flushes stay no-ops. */
  assert_int_equal (write_pattern (t, 2 * PG, 4 * KiB, 4, 0), 0);
  assert_int_equal (cache_flush (t->c), 0);
  assert_int_equal (counts (t).flushes, 1);
  assert_true (sectors_are (t, 2 * PG, 4 * KiB, V | D));
}

int
main (void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test_setup_teardown (test_fua_write, tc_setup, tc_teardown),
    cmocka_unit_test_setup_teardown (test_fua_unaligned_over_dirty, tc_setup,
                                     tc_teardown),
    cmocka_unit_test_setup_teardown (test_fua_zero, tc_setup, tc_teardown),
    cmocka_unit_test_setup_teardown (test_writethrough, tc_setup, tc_teardown),
    cmocka_unit_test_setup_teardown (test_writethrough_pages_evictable,
                                     tc_setup, tc_teardown),
    cmocka_unit_test_setup_teardown (test_unsafe, tc_setup, tc_teardown),
    cmocka_unit_test_setup_teardown (test_unsafe_drain, tc_setup, tc_teardown),
  };

  return cmocka_run_group_tests (tests, NULL, NULL);
}
