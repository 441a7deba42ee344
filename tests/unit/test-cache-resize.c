/* subpage unit tests: the image's size changes while it is served
 * (cache.h, cache_refresh_size; cache/resize.c).
 *
 * The fake backend's disk is resized as a truncate does (bytes cut off
 * are gone; a read past the end fails with -ERANGE), and the cache is
 * asked to follow, or finds out by itself before a write-back batch.
 * What must hold:
 *  - growth: requests reach the new end, and what the cache held past
 *    the old end (the zeroes a read saw there) is read again;
 *  - shrink: data clients wrote past the new end stays dirty and is
 *    never written (the fake counts a write past its end as bad), every
 *    flush fails with -EIO and the cache logs one error line for the
 *    change, not one per flush; after the image grows back, a flush
 *    writes it;
 *  - a read that fetched data before a shrink and a growth does not
 *    install it afterwards (it would be older than the zeroes now
 *    there), and neither does a clean page cached before them survive.
 * Interleavings use park points, never sleeps.
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

/* Growth: the new end can be written and read, and the last sector of
 * an image whose size is not a multiple of the sector size, cached with
 * zeroes past the old end, is read again from the grown image.
 */
static void
test_growth (void **state)
{
  struct tcache *t = *state;
  struct cache_config cfg = test_config ();
  const uint64_t old = 4 * MiB - 200, grown = 6 * MiB;
  unsigned char buf[SS];

  cfg.size = old;
  tc_open (t, &cfg);
  fill_disk (t, 1);
  /* The last sector, cut at the old end: cached, zeroes past it. */
  assert_int_equal (cache_read (t->c, buf, 100, old - 100), 0);
  assert_true (sectors_are (t, old - 100, 100, V));

  fake_resize (t->f, grown);
  {
    unsigned char pat[2 * SS];
    pattern (pat, sizeof pat, old - 312, 2); /* past the old end too */
    fake_disk_write (t->f, pat + 312, sizeof pat - 312, old);
  }
  assert_int_equal (cache_write (t->c, buf, SS, grown - SS, 0), -ERANGE);
  assert_int_equal (cache_refresh_size (t->c), grown);
  assert_int_equal (stats (t->c).size, grown);

  /* The sector that held the old end: the grown image's bytes. */
  assert_int_equal (cache_read (t->c, buf, SS, old - 312), 0);
  assert_int_equal (pattern_mismatch (buf + 312, SS - 312, old, 2), -1);
  assert_true (disk_is_pattern (t, old - 312, 312, 1));
  assert_true (read_is_pattern (t, old - 312, 312, 1));

  assert_int_equal (write_pattern (t, grown - 64 * KiB, 64 * KiB, 3, 0), 0);
  assert_int_equal (cache_flush (t->c), 0);
  assert_true (disk_is_pattern (t, grown - 64 * KiB, 64 * KiB, 3));
  assert_int_equal (stats (t->c).resizes, 1);
}

/* Shrink below dirty data, then grow back. */
static void
test_shrink_keeps_dirty_data (void **state)
{
  struct tcache *t = *state;
  struct cache_config cfg = test_config ();
  unsigned char buf[SS];
  unsigned lines;

  tc_open (t, &cfg);
  assert_int_equal (write_pattern (t, 1 * MiB, 64 * KiB, 1, 0), 0);
  assert_int_equal (write_pattern (t, 3 * MiB, 64 * KiB, 2, 0), 0);
  /* A dirty run across the new end: the part before it is written. */
  assert_int_equal (write_pattern (t, 2 * MiB - 4 * KiB, 8 * KiB, 3, 0), 0);

  fake_resize (t->f, 2 * MiB);
  lines = atomic_load (&tc_error_lines);
  for (int i = 0; i < 5; i++)
    assert_int_equal (cache_flush (t->c), -EIO);
  /* One line for the change; none per flush or per run. */
  assert_int_equal (atomic_load (&tc_error_lines), lines + 1);
  assert_int_equal (counts (t).bad, 0); /* never written past the end */
  assert_int_equal (fake_size (t->f), 2 * MiB);
  assert_true (disk_is_pattern (t, 1 * MiB, 64 * KiB, 1));
  assert_true (disk_is_pattern (t, 2 * MiB - 4 * KiB, 4 * KiB, 3));
  assert_true (sectors_are (t, 3 * MiB, 64 * KiB, V | D));
  assert_true (sectors_are (t, 2 * MiB, 4 * KiB, V | D));
  assert_true (stats (t->c).wb_past_end > 0);

  /* Requests past the new end: -ERANGE, nothing logged. */
  assert_int_equal (cache_read (t->c, buf, SS, 3 * MiB), -ERANGE);
  assert_int_equal (cache_write (t->c, buf, SS, 3 * MiB, 0), -ERANGE);
  assert_int_equal (cache_zero (t->c, 64 * KiB, 3 * MiB, 0), -ERANGE);
  assert_int_equal (cache_read (t->c, buf, SS, 2 * MiB - SS), 0);
  assert_int_equal (atomic_load (&tc_error_lines), lines + 1);

  fake_resize (t->f, 4 * MiB);
  assert_int_equal (cache_refresh_size (t->c), 4 * MiB);
  assert_int_equal (cache_flush (t->c), 0);
  assert_true (disk_is_pattern (t, 3 * MiB, 64 * KiB, 2));
  assert_true (disk_is_pattern (t, 2 * MiB - 4 * KiB, 8 * KiB, 3));
  assert_int_equal (counts (t).bad, 0);
  assert_int_equal (atomic_load (&tc_error_lines), lines + 1);
}

/* A size that cuts a dirty sector: the sector is not written (its bytes
 * past the new end may be a client's), until the image grows back.
 */
static void
test_shrink_cutting_a_sector (void **state)
{
  struct tcache *t = *state;
  struct cache_config cfg = test_config ();
  const uint64_t cut = 1 * MiB + 100;

  tc_open (t, &cfg);
  assert_int_equal (write_pattern (t, 1 * MiB - 2 * KiB, 4 * KiB, 1, 0), 0);
  fake_resize (t->f, cut);
  assert_int_equal (cache_refresh_size (t->c), cut);
  assert_int_equal (cache_flush (t->c), -EIO);
  assert_int_equal (counts (t).bad, 0);
  assert_true (disk_is_pattern (t, 1 * MiB - 2 * KiB, 2 * KiB, 1));
  assert_true (sectors_are (t, 1 * MiB, SS, V | D));
  assert_true (fake_disk_is_byte (t->f, 0, 100, 1 * MiB));

  fake_resize (t->f, 4 * MiB);
  assert_int_equal (cache_flush (t->c), 0); /* it asks by itself */
  assert_true (disk_is_pattern (t, 1 * MiB - 2 * KiB, 4 * KiB, 1));
}

/* The shrink happens while a background collect has picked the page and
 * nobody told the cache: the collect asks before it builds its runs.
 */
static void
test_collect_asks_for_the_size (void **state)
{
  struct tcache *t = *state;
  struct cache_config cfg = test_config ();
  struct stops st;
  struct async *a;
  unsigned k;

  tc_open (t, &cfg);
  assert_int_equal (write_pattern (t, 3 * MiB, 64 * KiB, 1, 0), 0);
  stops_init (&st);
  k = stops_add (&st, "collect.picked", 1);
  cache_debug_set_park (t->c, stops_hook, &st);
  a = async_start (t, ASYNC_FLUSH, NULL, 0, 0, 0);
  WAIT_FOR (stops_parked (&st, k));
  fake_resize (t->f, 2 * MiB); /* the cache is not told */
  stops_release (&st, k);
  assert_int_equal (async_join (a), -EIO);
  cache_debug_set_park (t->c, NULL, NULL);
  stops_destroy (&st);
  assert_int_equal (counts (t).bad, 0);
  assert_int_equal (fake_size (t->f), 2 * MiB);
  assert_true (sectors_are (t, 3 * MiB, 64 * KiB, V | D));
}

/* A read fetched the old bytes, then the image shrank and grew back
 * (zeroes there now) before it installed them: it must not install
 * them.  And a clean page cached before both is not served after.
 */
static void
test_read_across_shrink_and_growth (void **state)
{
  struct tcache *t = *state;
  struct cache_config cfg = test_config ();
  struct stops st;
  struct async *a;
  unsigned k;

  tc_open (t, &cfg);
  fill_disk (t, 1);
  assert_true (
    read_is_pattern (t, 3 * MiB + 64 * KiB, 4 * KiB, 1)); /* cached */

  stops_init (&st);
  k = stops_add (&st, "read.fetched", 1);
  cache_debug_set_park (t->c, stops_hook, &st);
  a = async_start (t, ASYNC_READ, NULL, 4 * KiB, 3 * MiB, 0);
  WAIT_FOR (stops_parked (&st, k));
  fake_resize (t->f, 2 * MiB);
  assert_int_equal (cache_refresh_size (t->c), 2 * MiB);
  fake_resize (t->f, 4 * MiB);
  assert_int_equal (cache_refresh_size (t->c), 4 * MiB);
  stops_release (&st, k);
  assert_int_equal (async_join (a), 0);
  assert_int_equal (pattern_mismatch (a->buf, 4 * KiB, 3 * MiB, 1), -1);
  cache_debug_set_park (t->c, NULL, NULL);
  stops_destroy (&st);

  assert_true (read_is_byte (t, 3 * MiB, 4 * KiB, 0));
  assert_true (read_is_byte (t, 3 * MiB + 64 * KiB, 4 * KiB, 0));
}

/* The image shrank and the cache has not been told: a read across the
 * new end reads what is inside, finds the end, follows it, and fails
 * rather than return the zeroes its retry put past the end.
 */
static void
test_read_across_an_unseen_shrink (void **state)
{
  struct tcache *t = *state;
  struct cache_config cfg = test_config ();
  unsigned char buf[8 * KiB];

  tc_open (t, &cfg);
  fill_disk (t, 1);
  fake_resize (t->f, 2 * MiB);
  assert_int_equal (cache_read (t->c, buf, sizeof buf, 2 * MiB - 4 * KiB),
                    -ERANGE);
  assert_int_equal (stats (t->c).size, 2 * MiB);
  assert_true (read_is_pattern (t, 2 * MiB - 4 * KiB, 4 * KiB, 1));
}

int
main (void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test_setup_teardown (test_growth, tc_setup, tc_teardown),
    cmocka_unit_test_setup_teardown (test_shrink_keeps_dirty_data, tc_setup,
                                     tc_teardown),
    cmocka_unit_test_setup_teardown (test_shrink_cutting_a_sector, tc_setup,
                                     tc_teardown),
    cmocka_unit_test_setup_teardown (test_collect_asks_for_the_size, tc_setup,
                                     tc_teardown),
    cmocka_unit_test_setup_teardown (test_read_across_shrink_and_growth,
                                     tc_setup, tc_teardown),
    cmocka_unit_test_setup_teardown (test_read_across_an_unseen_shrink,
                                     tc_setup, tc_teardown),
  };

  return cmocka_run_group_tests (tests, NULL, NULL);
}
