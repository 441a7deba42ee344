/* subpage unit tests: races and orderings around a change of the
 * image's size (cache/resize.c), found in review of 8631aef.
 *
 * Each test asserts what the change promises (cache.h,
 * cache_refresh_size; docs/operations.md "Resizing") and fails while
 * the bug it is named after is there.  Interleavings use park points,
 * the fake's hold gates and waiting counters, never sleeps.
 */
#undef NDEBUG
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

/* 1. A shrink to a size that is not a multiple of the sector size,
 * with nothing dirty: wb_end becomes ROUND_DOWN (size) because the size
 * is below size_max, so the new last sector can never be written back.
 * A client that writes the last bytes of the image (inside it) gets a
 * success, and then every flush fails with EIO, logged at debug level
 * only (the resize found no dirty data, so it logged nothing either).
 * The data never reaches the image, not even at shutdown (drain).
 */
static void
test_unaligned_shrink_last_sector_never_flushed (void **state)
{
  struct tcache *t = *state;
  struct cache_config cfg = test_config ();
  const uint64_t cut = 3 * MiB + 100;
  unsigned lines;
  int r1, r2, rd;

  tc_open (t, &cfg);
  fake_resize (t->f, cut);
  assert_int_equal (cache_refresh_size (t->c), cut);
  lines = atomic_load (&tc_error_lines);

  /* Inside the image: [3 MiB, 3 MiB + 100). */
  assert_int_equal (write_pattern (t, 3 * MiB, 100, 5, 0), 0);
  r1 = cache_flush (t->c);
  r2 = cache_flush (t->c);
  rd = cache_drain (t->c);
  fprintf (stderr,
           "unaligned shrink: flush %d, flush %d, drain %d, disk has the "
           "write: %d, error lines logged since the resize: %u\n",
           r1, r2, rd, disk_is_pattern (t, 3 * MiB, 100, 5),
           atomic_load (&tc_error_lines) - lines);
  assert_int_equal (counts (t).bad, 0);
  assert_int_equal (r1, 0);
  assert_int_equal (r2, 0);
  assert_int_equal (rd, 0);
  assert_true (disk_is_pattern (t, 3 * MiB, 100, 5));
}

/* 2a. Growth while a write-back run of the sector that holds the old
 * end (a size that is not a multiple of the sector size) is in flight.
 * The sector holds the client's bytes up to the old end and the zeroes
 * a fill saw past it.  resize_locked drops only CLEAN sectors, so it
 * skips this one (W); the run then completes and makes it CLEAN, and
 * the cache serves those zeroes for [old end, sector end) forever,
 * while the grown image holds other bytes there.
 */
static void
test_growth_during_writeback_of_cut_sector_serves_zeroes (void **state)
{
  struct tcache *t = *state;
  struct cache_config cfg = test_config ();
  const uint64_t old = 4 * MiB - 200, grown = 6 * MiB;
  const uint64_t s = old - old % SS; /* the cut sector */
  unsigned char pat[200];
  struct async *a;

  cfg.size = old;
  tc_open (t, &cfg);
  fill_disk (t, 1);
  assert_int_equal (write_pattern (t, s, old - s, 2, 0), 0); /* 312 bytes */
  assert_true (sectors_are (t, s, SS, V | D));

  fake_hold (t->f, FAKE_WRITE, true);
  a = async_start (t, ASYNC_FLUSH, NULL, 0, 0, 0);
  WAIT_FOR (fake_held (t->f, FAKE_WRITE) == 1);
  assert_true (sectors_are (t, s, SS, V | W));

  /* The image grows; the grown part holds data (seed 3). */
  fake_resize (t->f, grown);
  pattern (pat, sizeof pat, old, 3);
  fake_disk_write (t->f, pat, sizeof pat, old);
  assert_int_equal (cache_refresh_size (t->c), grown);

  fake_hold (t->f, FAKE_WRITE, false);
  assert_int_equal (async_join (a), 0);
  assert_true (disk_is_pattern (t, s, old - s, 2));
  assert_true (disk_is_pattern (t, old, 200, 3));
  /* What the image holds past the old end, not the fill's zeroes. */
  assert_true (read_is_pattern (t, old, 200, 3));
}

/* 2b. The same without a race: the cut sector is DIRTY at the growth
 * (kept, as "what clients wrote"), but its bytes past the old end are
 * zeroes the fill invented.  Reads return them instead of the grown
 * image's bytes, and the next flush writes them over the image.
 */
static void
test_growth_with_dirty_cut_sector_overwrites_grown_bytes (void **state)
{
  struct tcache *t = *state;
  struct cache_config cfg = test_config ();
  const uint64_t old = 4 * MiB - 200, grown = 6 * MiB;
  const uint64_t s = old - old % SS;
  unsigned char pat[200];
  bool read_ok, disk_ok;

  cfg.size = old;
  tc_open (t, &cfg);
  fill_disk (t, 1);
  assert_int_equal (write_pattern (t, s, old - s, 2, 0), 0);

  fake_resize (t->f, grown);
  pattern (pat, sizeof pat, old, 3);
  fake_disk_write (t->f, pat, sizeof pat, old);
  assert_int_equal (cache_refresh_size (t->c), grown);

  read_ok = read_is_pattern (t, old, 200, 3);
  assert_int_equal (cache_flush (t->c), 0);
  disk_ok = disk_is_pattern (t, old, 200, 3);
  fprintf (stderr, "dirty cut sector: read ok %d, disk kept %d\n", read_ok,
           disk_ok);
  assert_true (disk_is_pattern (t, s, old - s, 2));
  assert_true (read_ok);
  assert_true (disk_ok);
}

/* 3. A ZERO of the image's last bytes (a size that is not a multiple of
 * the sector size): discard rounds e up to the sector end because
 * end == size at entry, then clips the backend call with size_now()
 * after wait_idle.  If the image grew meanwhile, the backend zero
 * reaches past the client's range and destroys [old end, sector end)
 * of the grown image.
 */
static void
test_zero_racing_growth_zeroes_past_its_range (void **state)
{
  struct tcache *t = *state;
  struct cache_config cfg = test_config ();
  const uint64_t old = 4 * MiB - 200, grown = 6 * MiB;
  const uint64_t s = old - old % SS;
  unsigned char pat[200];
  struct async *fl, *z;

  cfg.size = old;
  tc_open (t, &cfg);
  fill_disk (t, 1);
  assert_int_equal (write_pattern (t, s, old - s, 2, 0), 0);

  /* A run of the cut sector in flight, so that the ZERO waits. */
  fake_hold (t->f, FAKE_WRITE, true);
  fl = async_start (t, ASYNC_FLUSH, NULL, 0, 0, 0);
  WAIT_FOR (fake_held (t->f, FAKE_WRITE) == 1);
  z = async_start (t, ASYNC_ZERO, NULL, (uint32_t) (old - s), s, 0);
  WAIT_FOR (stats (t->c).waiting_idle == 1);

  fake_resize (t->f, grown);
  pattern (pat, sizeof pat, old, 3);
  fake_disk_write (t->f, pat, sizeof pat, old);
  assert_int_equal (cache_refresh_size (t->c), grown);

  fake_hold (t->f, FAKE_WRITE, false);
  assert_int_equal (async_join (fl), 0);
  assert_int_equal (async_join (z), 0);
  assert_true (fake_disk_is_byte (t->f, 0, old - s, s));
  /* Bytes the ZERO did not cover (the grown image's) are intact. */
  assert_true (disk_is_pattern (t, old, 200, 3));
}

/* 4. A write that passed in_image before a shrink installs its data
 * past the new end after it: it returns success (not -ERANGE), the
 * resize counted none of it, so no error line is ever logged, yet every
 * flush fails with EIO (quietly).  The write is held in the partial
 * head sector's fill (a backend read) while the image shrinks.
 */
static void
test_write_racing_shrink_past_end_unlogged (void **state)
{
  struct tcache *t = *state;
  struct cache_config cfg = test_config ();
  const uint64_t off = 2 * MiB - 100;
  const uint32_t count = 100 + 64 * KiB; /* into [2 MiB, 2 MiB + 64 KiB) */
  unsigned char *buf = malloc (count);
  struct async *a;
  unsigned lines;
  int wr, fr;

  assert_non_null (buf);
  tc_open (t, &cfg);
  pattern (buf, count, off, 4);
  fake_hold (t->f, FAKE_READ, true);
  a = async_start (t, ASYNC_WRITE, buf, count, off, 0);
  WAIT_FOR (fake_held (t->f, FAKE_READ) == 1);

  lines = atomic_load (&tc_error_lines);
  fake_resize (t->f, 2 * MiB);
  assert_int_equal (cache_refresh_size (t->c), 2 * MiB);
  fake_hold (t->f, FAKE_READ, false);
  wr = async_join (a);
  fr = cache_flush (t->c);
  fprintf (stderr,
           "write racing shrink: write %d, flush %d, sector at 2 MiB "
           "%#x, error lines %u\n",
           wr, fr, cache_debug_sector (t->c, 2 * MiB),
           atomic_load (&tc_error_lines) - lines);
  free (buf);
  assert_int_equal (counts (t).bad, 0);
  /* Either the write fails (it reaches past the end), or, if it
   * installed data past the end, the shrink is logged once as an error.
   */
  if (wr == 0)
    assert_int_equal (atomic_load (&tc_error_lines), lines + 1);
  else
    assert_int_equal (wr, -ERANGE);
}

/* 5. The cache has not seen a shrink to a size that is not a multiple
 * of the sector size.  A read of the image's last bytes, inside the
 * image, rounds up to the sector, the backend read passes the real end
 * and returns -ERANGE; the cache follows the size but fails the read,
 * which a retry would serve.  Same for a partial write there (the
 * fill).
 */
static void
test_read_inside_image_after_unseen_unaligned_shrink (void **state)
{
  struct tcache *t = *state;
  struct cache_config cfg = test_config ();
  const uint64_t cut = 2 * MiB + 100;
  unsigned char buf[100];
  int r;

  tc_open (t, &cfg);
  fill_disk (t, 1);
  fake_resize (t->f, cut); /* the cache is not told */
  r = cache_read (t->c, buf, 100, 2 * MiB);
  fprintf (stderr, "read of [2 MiB, +100) after an unseen shrink to %llu: %d\n",
           (unsigned long long) cut, r);
  assert_int_equal (r, 0);
  assert_int_equal (pattern_mismatch (buf, 100, 2 * MiB, 1), -1);
}

/* 6. Data written past the new end stays dirty for good, and it counts
 * against dirty_ratio: once it is over the limit, every write INSIDE
 * the image is throttled, the throttle's collect fails the past-end
 * runs, and the write fails with EIO (which the plugin logs as an
 * error, per write).  Without the kick hook, as with no write-back
 * server; with the server the writer fails the same way once the
 * server's collect has failed the runs.
 */
static void
test_past_end_dirty_data_fails_writes_inside_the_image (void **state)
{
  struct tcache *t = *state;
  struct cache_config cfg = test_config ();
  int r;

  tc_open (t, &cfg);
  cache_set_kick (t->c, NULL, NULL);
  /* 7 pages: 448 KiB, over dirty_ratio 40% of 1 MiB. */
  assert_int_equal (write_pattern (t, 3 * MiB, 7 * PG, 1, 0), 0);
  fake_resize (t->f, 2 * MiB);
  assert_int_equal (cache_refresh_size (t->c), 2 * MiB);
  r = write_pattern (t, 0, SS, 2, 0);
  fprintf (stderr, "write inside the image: %d\n", r);
  assert_int_equal (r, 0);
}

/* 7. A run submitted before the cache learned of a shrink is written
 * after it: run_fits is checked once, in collect_submit, and
 * cache_run_io (what the write-back server's workers call for the runs
 * they queued or kept, wbs_own, possibly much later) writes run->blen
 * at run->off without looking again.  Here the submit hook keeps the
 * runs, as wbs_submit does for a background collect, and writes them
 * with cache_run_io after the cache has followed the shrink: the write
 * lands past the new end (the fake counts it as bad; a file would grow
 * back).
 */
static struct cache_run *kept_runs[64];
static unsigned nkept;

static void
keep_submit (void *opaque, struct cache *c, struct cache_run *run)
{
  (void) opaque;
  (void) c;
  assert_true (nkept < 64);
  kept_runs[nkept++] = run;
}

static void
test_kept_run_written_after_known_shrink (void **state)
{
  struct tcache *t = *state;
  struct cache_config cfg = test_config ();
  unsigned n;

  tc_open (t, &cfg);
  nkept = 0;
  assert_int_equal (write_pattern (t, 3 * MiB, 64 * KiB, 1, 0), 0);
  cache_set_submit (t->c, keep_submit, NULL);
  assert_true (cache_writeback (t->c, CACHE_WB_BACKGROUND, 0) > 0);
  assert_true (nkept > 0);

  fake_resize (t->f, 2 * MiB);
  assert_int_equal (cache_refresh_size (t->c), 2 * MiB); /* known now */
  n = nkept;
  for (unsigned i = 0; i < n; i++)
    cache_run_io (t->c, kept_runs[i]);
  cache_set_submit (t->c, NULL, NULL);
  {
    uint64_t bad = counts (t).bad;

    fprintf (stderr, "runs written after the shrink was known: %u, bad: %llu\n",
             n, (unsigned long long) bad);
    fake_reset_counts (t->f); /* the teardown's own check: this one */
    assert_int_equal (bad, 0);
  }
  assert_true (sectors_are (t, 3 * MiB, 64 * KiB, V | D));
}

int
main (void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test_setup_teardown (
      test_unaligned_shrink_last_sector_never_flushed, tc_setup, tc_teardown),
    cmocka_unit_test_setup_teardown (
      test_growth_during_writeback_of_cut_sector_serves_zeroes, tc_setup,
      tc_teardown),
    cmocka_unit_test_setup_teardown (
      test_growth_with_dirty_cut_sector_overwrites_grown_bytes, tc_setup,
      tc_teardown),
    cmocka_unit_test_setup_teardown (
      test_zero_racing_growth_zeroes_past_its_range, tc_setup, tc_teardown),
    cmocka_unit_test_setup_teardown (test_write_racing_shrink_past_end_unlogged,
                                     tc_setup, tc_teardown),
    cmocka_unit_test_setup_teardown (
      test_read_inside_image_after_unseen_unaligned_shrink, tc_setup,
      tc_teardown),
    cmocka_unit_test_setup_teardown (
      test_past_end_dirty_data_fails_writes_inside_the_image, tc_setup,
      tc_teardown),
    cmocka_unit_test_setup_teardown (test_kept_run_written_after_known_shrink,
                                     tc_setup, tc_teardown),
  };

  return cmocka_run_group_tests (tests, NULL, NULL);
}
