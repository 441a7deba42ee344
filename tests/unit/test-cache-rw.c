/* subpage unit tests: reads and writes through the cache.
 *
 * Invariant 2 (no read for a full-sector write; a partial sector that
 * is not V is read, and only it; a read fills only non-V sectors,
 * coalesced), the 4 KiB-into-64 KiB write-back cost, configuration
 * checks, an export whose size is not sector-aligned, and a seeded
 * random test of unaligned I/O (1 byte .. 200 KiB, mixed with
 * write-back, flush, zero and trim) against a flat reference model in
 * a cache small enough to evict.  No threads.
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
test_config_checks (void **state)
{
  static const struct {
    uint64_t cache_size;
    uint32_t page_size, sector_size;
  } bad[] = {
    { 1 * MiB, 3000, 512 },           /* not a power of 2 */
    { 1 * MiB, 2048, 512 },           /* page below 4K */
    { 64 * MiB, 4 * MiB, 512 },       /* page above 2M */
    { 1 * MiB, 64 * KiB, 256 },       /* sector below 512 */
    { 1 * MiB, 64 * KiB, 1000 },      /* sector not a power of 2 */
    { 1 * MiB, 64 * KiB, 128 * KiB }, /* sector above page */
    { 7 * 64 * KiB, 64 * KiB, 512 },  /* fewer than CACHE_MIN_PAGES */
  };
  struct tcache *t = *state;
  struct fake *f = fake_new (4 * MiB);

  for (unsigned i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    struct cache_config cfg = test_config ();
    int err = 0;
    struct cache *c;

    cfg.cache_size = bad[i].cache_size;
    cfg.page_size = bad[i].page_size;
    cfg.sector_size = bad[i].sector_size;
    c = cache_create (&cfg, &fake_ops, f, NULL, NULL, &err);
    if (c) {
      cache_destroy (c);
      fake_free (f);
      fail_msg ("config %u accepted", i);
    }
    assert_int_equal (err, -EINVAL);
  }
  fake_free (f);

  /* The smallest legal cache works, and has exactly 8 pages. */
  {
    struct cache_config cfg = test_config ();
    cfg.cache_size = CACHE_MIN_PAGES * cfg.page_size;
    tc_open (t, &cfg);
    assert_int_equal (stats (t->c).pages_total, CACHE_MIN_PAGES);
    assert_int_equal (stats (t->c).pages_resident, 0);
  }
}

static void
test_full_sector_write_no_read (void **state)
{
  struct tcache *t = *state;
  struct cache_config cfg = test_config ();

  tc_open (t, &cfg);
  fill_disk (t, 1);

  /* 4 KiB, sector-aligned, inside page 2. */
  assert_int_equal (write_pattern (t, 2 * PG + 8 * KiB, 4 * KiB, 2, 0), 0);
  assert_int_equal (counts (t).reads, 0);
  assert_true (sectors_are (t, 2 * PG + 8 * KiB, 4 * KiB, V | D));
  /* Neighbours are not V: nothing was read for them. */
  assert_int_equal (cache_debug_sector (t->c, 2 * PG + 8 * KiB - 1), 0);
  assert_int_equal (cache_debug_sector (t->c, 2 * PG + 12 * KiB), 0);

  /* One sector, a whole page, and two pages across a boundary. */
  assert_int_equal (write_pattern (t, 5 * PG + 7 * SS, SS, 2, 0), 0);
  assert_int_equal (write_pattern (t, 6 * PG, PG, 2, 0), 0);
  assert_int_equal (write_pattern (t, 8 * PG - 3 * SS, 6 * SS, 2, 0), 0);
  assert_int_equal (counts (t).reads, 0);
  assert_int_equal (counts (t).read_bytes, 0);
  assert_true (sectors_are (t, 6 * PG, PG, V | D));
  assert_true (sectors_are (t, 8 * PG - 3 * SS, 6 * SS, V | D));
  assert_int_equal (stats (t->c).backend_reads, 0);
  assert_int_equal (stats (t->c).dirty_bytes, 4 * KiB + SS + PG + 6 * SS);

  /* Reading back what was written needs no backend read either. */
  assert_true (read_is_pattern (t, 2 * PG + 8 * KiB, 4 * KiB, 2));
  assert_true (read_is_pattern (t, 6 * PG, PG, 2));
  assert_int_equal (counts (t).reads, 0);
  assert_true (cache_debug_check (t->c));
}

static void
test_partial_sector_write_reads_that_sector (void **state)
{
  struct tcache *t = *state;
  struct cache_config cfg = test_config ();
  struct fake_event ev;
  unsigned char buf[3 * SS];

  tc_open (t, &cfg);
  fill_disk (t, 1);

  /* 100 bytes inside sector 3 of page 1. */
  assert_int_equal (write_pattern (t, PG + 3 * SS + 10, 100, 2, 0), 0);
  assert_int_equal (counts (t).reads, 1);
  assert_int_equal (counts (t).read_bytes, SS);
  assert_true (fake_event (t->f, 0, &ev));
  assert_int_equal (ev.op, FAKE_READ);
  assert_int_equal (ev.off, PG + 3 * SS);
  assert_int_equal (ev.len, SS);
  assert_int_equal (cache_debug_sector (t->c, PG + 3 * SS), V | D);
  assert_int_equal (cache_debug_sector (t->c, PG + 2 * SS), 0);
  assert_int_equal (cache_debug_sector (t->c, PG + 4 * SS), 0);
  /* The sector holds the old data around the new bytes. */
  assert_int_equal (cache_read (t->c, buf, SS, PG + 3 * SS), 0);
  assert_int_equal (pattern_mismatch (buf, 10, PG + 3 * SS, 1), -1);
  assert_int_equal (pattern_mismatch (buf + 10, 100, PG + 3 * SS + 10, 2), -1);
  assert_int_equal (
    pattern_mismatch (buf + 110, SS - 110, PG + 3 * SS + 110, 1), -1);

  /* Now V: another partial write to it reads nothing. */
  fake_reset_counts (t->f);
  assert_int_equal (write_pattern (t, PG + 3 * SS + 300, 7, 3, 0), 0);
  assert_int_equal (counts (t).reads, 0);

  /* 30 bytes straddling sectors 5 and 6: both read (one sector each). */
  fake_reset_counts (t->f);
  assert_int_equal (write_pattern (t, PG + 6 * SS - 12, 30, 2, 0), 0);
  assert_int_equal (counts (t).read_bytes, 2 * SS);
  assert_true (counts (t).reads >= 1 && counts (t).reads <= 2);
  assert_true (sectors_are (t, PG + 5 * SS, 2 * SS, V | D));

  /* Head of sector 9 partial, 10 whole, tail of 11 partial: 9 and 11
   * are read, 10 is not.
   */
  fake_reset_counts (t->f);
  assert_int_equal (write_pattern (t, PG + 9 * SS + 100, 2 * SS + 10, 2, 0), 0);
  assert_int_equal (counts (t).reads, 2);
  assert_int_equal (counts (t).read_bytes, 2 * SS);
  assert_int_equal (fake_log_first (t->f, FAKE_READ, PG + 10 * SS, SS), -1);
  assert_true (fake_log_first (t->f, FAKE_READ, PG + 9 * SS, SS) >= 0);
  assert_true (fake_log_first (t->f, FAKE_READ, PG + 11 * SS, SS) >= 0);
  assert_true (sectors_are (t, PG + 9 * SS, 3 * SS, V | D));
  assert_int_equal (cache_read (t->c, buf, 3 * SS, PG + 9 * SS), 0);
  assert_int_equal (pattern_mismatch (buf, 100, PG + 9 * SS, 1), -1);
  assert_int_equal (
    pattern_mismatch (buf + 100, 2 * SS + 10, PG + 9 * SS + 100, 2), -1);
  assert_int_equal (
    pattern_mismatch (buf + 2 * SS + 110, SS - 110, PG + 11 * SS + 110, 1), -1);

  /* After flush the backend holds the merged sectors. */
  assert_int_equal (cache_flush (t->c), 0);
  assert_true (disk_is_pattern (t, PG + 9 * SS, 100, 1));
  assert_true (disk_is_pattern (t, PG + 9 * SS + 100, 2 * SS + 10, 2));
  assert_true (disk_is_pattern (t, PG + 11 * SS + 110, SS - 110, 1));
  assert_true (cache_debug_check (t->c));
}

static void
test_read_fills_only_invalid_sectors (void **state)
{
  struct tcache *t = *state;
  struct cache_config cfg = test_config ();
  unsigned char *buf = malloc (PG);
  struct fake_event ev[3];

  assert_non_null (buf);
  tc_open (t, &cfg);
  fill_disk (t, 1);
  /* Sectors 3 and 10 of page 0 are V (written, data 2). */
  assert_int_equal (write_pattern (t, 3 * SS, SS, 2, 0), 0);
  assert_int_equal (write_pattern (t, 10 * SS, SS, 2, 0), 0);
  assert_int_equal (counts (t).reads, 0);

  assert_int_equal (cache_read (t->c, buf, PG, 0), 0);
  /* Exactly three reads: [0,3), [4,10), [11,128) in sectors. */
  assert_int_equal (counts (t).reads, 3);
  assert_int_equal (counts (t).read_bytes, PG - 2 * SS);
  for (int i = 0; i < 3; i++)
    assert_true (fake_event (t->f, (size_t) i, &ev[i]));
  /* In whatever order they were issued. */
  {
    bool seen[3] = { false, false, false };
    for (int i = 0; i < 3; i++) {
      assert_int_equal (ev[i].op, FAKE_READ);
      if (ev[i].off == 0 && ev[i].len == 3 * SS)
        seen[0] = true;
      else if (ev[i].off == 4 * SS && ev[i].len == 6 * SS)
        seen[1] = true;
      else if (ev[i].off == 11 * SS && ev[i].len == PG - 11 * SS)
        seen[2] = true;
      else
        fail_msg ("unexpected read off=%llu len=%u",
                  (unsigned long long) ev[i].off, ev[i].len);
    }
    assert_true (seen[0] && seen[1] && seen[2]);
  }
  /* The data: old everywhere but sectors 3 and 10. */
  assert_int_equal (pattern_mismatch (buf, 3 * SS, 0, 1), -1);
  assert_int_equal (pattern_mismatch (buf + 3 * SS, SS, 3 * SS, 2), -1);
  assert_int_equal (pattern_mismatch (buf + 4 * SS, 6 * SS, 4 * SS, 1), -1);
  assert_int_equal (pattern_mismatch (buf + 10 * SS, SS, 10 * SS, 2), -1);
  assert_int_equal (pattern_mismatch (buf + 11 * SS, PG - 11 * SS, 11 * SS, 1),
                    -1);
  assert_true (sectors_are (t, 0, 3 * SS, V));
  assert_int_equal (cache_debug_sector (t->c, 3 * SS), V | D);

  /* Everything is V now: a second read goes nowhere. */
  fake_reset_counts (t->f);
  assert_int_equal (cache_read (t->c, buf, PG, 0), 0);
  assert_int_equal (counts (t).reads, 0);
  free (buf);
}

static void
test_read_two_pages_one_backend_read (void **state)
{
  struct tcache *t = *state;
  struct cache_config cfg = test_config ();
  struct fake_event ev;

  tc_open (t, &cfg);
  fill_disk (t, 1);
  assert_true (read_is_pattern (t, 1 * MiB, 2 * PG, 1));
  assert_int_equal (counts (t).reads, 1);
  assert_int_equal (counts (t).read_bytes, 2 * PG);
  assert_true (fake_event (t->f, 0, &ev));
  assert_int_equal (ev.off, 1 * MiB);
  assert_int_equal (ev.len, 2 * PG);
  assert_true (cache_debug_resident (t->c, 1 * MiB));
  assert_true (cache_debug_resident (t->c, 1 * MiB + PG));
  assert_true (sectors_are (t, 1 * MiB, 2 * PG, V));
  assert_int_equal (stats (t->c).cached_bytes, 2 * PG);
  assert_int_equal (stats (t->c).backend_read_bytes, 2 * PG);
}

/* The headline cost: 4 KiB into a 64 KiB page costs 4 KiB of backend
 * write and no read.
 */
static void
test_4k_write_then_flush (void **state)
{
  struct tcache *t = *state;
  struct cache_config cfg = test_config ();

  tc_open (t, &cfg);
  fill_disk (t, 1);
  assert_int_equal (write_pattern (t, 5 * PG + 8 * KiB, 4 * KiB, 2, 0), 0);
  /* Nothing reaches the backend before a flush or write-back. */
  assert_int_equal (counts (t).writes, 0);
  assert_true (disk_is_pattern (t, 5 * PG + 8 * KiB, 4 * KiB, 1));

  assert_int_equal (cache_flush (t->c), 0);
  assert_int_equal (counts (t).read_bytes, 0);
  assert_int_equal (counts (t).write_bytes, 4 * KiB);
  assert_int_equal (counts (t).writes, 1);
  assert_int_equal (counts (t).flushes, 1);
  assert_true (fake_log_last (t->f, FAKE_WRITE, 0, 0) <
               fake_log_last (t->f, FAKE_FLUSH, 0, 0));
  assert_true (disk_is_pattern (t, 5 * PG + 8 * KiB, 4 * KiB, 2));
  assert_true (disk_is_pattern (t, 5 * PG, 8 * KiB, 1));
  assert_true (sectors_are (t, 5 * PG + 8 * KiB, 4 * KiB, V));
  assert_int_equal (stats (t->c).dirty_bytes, 0);
  assert_int_equal (stats (t->c).writeback_bytes, 0);

  /* A second flush with nothing dirty writes nothing. */
  assert_int_equal (cache_flush (t->c), 0);
  assert_int_equal (counts (t).writes, 1);
}

static void
test_prefetch (void **state)
{
  struct tcache *t = *state;
  struct cache_config cfg = test_config ();

  tc_open (t, &cfg);
  fill_disk (t, 1);
  assert_int_equal (cache_prefetch (t->c, PG, 3 * PG), 0);
  assert_int_equal (counts (t).read_bytes, PG);
  assert_true (sectors_are (t, 3 * PG, PG, V));
  assert_true (read_is_pattern (t, 3 * PG + 100, 1000, 1));
  assert_int_equal (counts (t).reads, 1);
}

/* An export whose size is not a multiple of the sector (or page) size:
 * the core must never ask the backend for bytes past the end (the fake
 * counts those as bad), and the tail must read and write correctly.
 */
static void
test_unaligned_export_size (void **state)
{
  struct tcache *t = *state;
  struct cache_config cfg = test_config ();
  uint64_t size;

  cfg.size = 4 * MiB - 1000;
  size = cfg.size;
  tc_open (t, &cfg);
  fill_disk (t, 1);
  assert_true (read_is_pattern (t, size - 3000, 3000, 1));
  assert_int_equal (write_pattern (t, size - 700, 700, 2, 0), 0);
  assert_int_equal (write_pattern (t, size - 1, 1, 3, 0), 0);
  assert_true (read_is_pattern (t, size - 700, 699, 2));
  assert_true (read_is_pattern (t, size - 1, 1, 3));
  assert_int_equal (cache_flush (t->c), 0);
  assert_true (disk_is_pattern (t, size - 3000, 2300, 1));
  assert_true (disk_is_pattern (t, size - 700, 699, 2));
  assert_true (disk_is_pattern (t, size - 1, 1, 3));
  assert_int_equal (cache_zero (t->c, 1000, size - 1000, 0), 0);
  assert_true (read_is_byte (t, size - 1000, 1000, 0));
  assert_int_equal (cache_flush (t->c), 0);
  assert_true (fake_disk_is_byte (t->f, 0, 1000, size - 1000));
  assert_int_equal (counts (t).bad, 0);
}

/* Requests past the end fail and change nothing. */
static void
test_out_of_range (void **state)
{
  struct tcache *t = *state;
  struct cache_config cfg = test_config ();
  unsigned char buf[1024];

  tc_open (t, &cfg);
  memset (buf, 0xaa, sizeof buf);
  assert_true (cache_read (t->c, buf, 1024, 4 * MiB - 512) < 0);
  assert_true (cache_write (t->c, buf, 1024, 4 * MiB - 512, 0) < 0);
  assert_true (cache_write (t->c, buf, 1, 4 * MiB, 0) < 0);
  assert_int_equal (stats (t->c).dirty_bytes, 0);
  assert_int_equal (counts (t).bad, 0);
}

/* ---- Random unaligned I/O against a flat model. ---- */

static uint64_t rng_state;

static uint64_t
rng (void)
{
  /* xorshift64*: deterministic, independent of libc. */
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  return rng_state * UINT64_C (2685821657736338717);
}

static uint64_t
rng_below (uint64_t n)
{
  return rng () % n;
}

/* A length from 1 byte to 200 KiB, biased towards small and aligned. */
static uint32_t
rand_len (void)
{
  switch (rng_below (4)) {
  case 0: return 1 + (uint32_t) rng_below (64);
  case 1: return 1 + (uint32_t) rng_below (4096);
  case 2: return (1 + (uint32_t) rng_below (16)) * SS;
  default: return 1 + (uint32_t) rng_below (200 * KiB);
  }
}

static uint64_t
rand_off (uint64_t size, uint32_t len)
{
  uint64_t off = rng_below (size - len + 1);

  if (rng_below (3) == 0)
    off -= off % SS;
  return off;
}

/* Pages touched by [off, off+len): a bitmask over the 64 pages. */
static uint64_t
pages_of (uint64_t off, uint32_t len)
{
  uint64_t m = 0;

  for (uint64_t p = off / PG; p <= (off + len - 1) / PG; p++)
    m |= UINT64_C (1) << p;
  return m;
}

static void
test_random_unaligned_vs_model (void **state)
{
  struct tcache *t = *state;
  struct cache_config cfg = test_config ();
  const uint64_t size = cfg.size;
  unsigned char *model = malloc (size);
  unsigned char *buf = malloc (256 * KiB);
  unsigned char *disk = malloc (size);
  uint64_t dirty = 0; /* pages that may hold D sectors */
  unsigned nops[8] = { 0 };
  unsigned seed_data = 100;

  assert_non_null (model);
  assert_non_null (buf);
  assert_non_null (disk);
  assert_true (size / PG == 64);
  cfg.cache_size = CACHE_MIN_PAGES * PG; /* 8 pages: eviction happens */
  cfg.dirty_ratio = 100;                 /* no writer thread here */
  tc_open (t, &cfg);
  fill_disk (t, 1);
  pattern (model, size, 0, 1);
  rng_state = UINT64_C (0x5eed5eed12345678);

  for (unsigned i = 0; i < 3000; i++) {
    unsigned op = (unsigned) rng_below (100);
    uint32_t len = rand_len ();
    uint64_t off = rand_off (size, len);
    uint64_t touched = pages_of (off, len);

    /* Keep dirty pages + this request's pages below the frame count:
     * nobody else writes back here, so a cache full of dirty pages
     * would (rightly) block.
     */
    if (__builtin_popcountll (dirty | touched) > CACHE_MIN_PAGES - 1) {
      if (rng_below (2)) {
        assert_true (cache_writeback (t->c, CACHE_WB_BACKGROUND, 0) > 0);
        nops[5]++;
      }
      else {
        assert_int_equal (cache_flush (t->c), 0);
        nops[6]++;
      }
      assert_int_equal (stats (t->c).dirty_bytes, 0);
      dirty = 0;
    }

    if (op < 40) { /* write */
      uint32_t flags = rng_below (10) == 0 ? CACHE_FUA : 0;
      pattern (buf, len, off, ++seed_data);
      assert_int_equal (cache_write (t->c, buf, len, off, flags), 0);
      memcpy (model + off, buf, len);
      dirty |= touched;
      nops[0]++;
    }
    else if (op < 80) { /* read */
      assert_int_equal (cache_read (t->c, buf, len, off), 0);
      if (memcmp (buf, model + off, len) != 0) {
        uint32_t k = 0;
        while (buf[k] == model[off + k])
          k++;
        fail_msg ("op %u: read off=%llu len=%u differs at +%u", i,
                  (unsigned long long) off, len, k);
      }
      nops[1]++;
    }
    else if (op < 87) { /* zero */
      uint32_t flags = rng_below (2) ? CACHE_MAY_TRIM : 0;
      assert_int_equal (cache_zero (t->c, len, off, flags), 0);
      memset (model + off, 0, len);
      dirty |= touched;
      nops[2]++;
    }
    else if (op < 92) { /* trim */
      /* After a trim, reads through the cache of the whole sectors it
       * covers see what the backend holds (partial sectors at either
       * end may keep their data).  The model takes what the cache
       * returns.
       */
      uint64_t a = (off + SS - 1) / SS * SS, b = (off + len) / SS * SS;
      assert_int_equal (cache_trim (t->c, len, off, 0), 0);
      assert_int_equal (cache_read (t->c, buf, len, off), 0);
      if (a < b) {
        fake_disk_read (t->f, disk, b - a, a);
        if (memcmp (buf + (a - off), disk, b - a) != 0)
          fail_msg ("op %u: after trim off=%llu len=%u the cache and the "
                    "backend differ",
                    i, (unsigned long long) off, len);
      }
      memcpy (model + off, buf, len);
      dirty |= touched;
      nops[3]++;
    }
    else if (op < 96) {
      int r = cache_writeback (
        t->c, rng_below (2) ? CACHE_WB_BACKGROUND : CACHE_WB_EXPIRED, 0);
      assert_true (r >= 0);
      assert_int_equal (stats (t->c).dirty_bytes, 0);
      dirty = 0;
      nops[5]++;
    }
    else {
      assert_int_equal (cache_flush (t->c), 0);
      dirty = 0;
      nops[6]++;
    }

    /* A clean page nobody uses must not stay pinned: it could never
     * be evicted, and this single-threaded loop would hang.
     */
    assert_true (no_stray_pins (t));
    if (i % 100 == 0)
      assert_true (cache_debug_check (t->c));
    assert_true (stats (t->c).pages_resident <= CACHE_MIN_PAGES);
  }

  assert_int_equal (cache_flush (t->c), 0);
  fake_disk_read (t->f, disk, size, 0);
  if (memcmp (disk, model, size) != 0) {
    uint64_t k = 0;
    while (disk[k] == model[k])
      k++;
    fail_msg ("after the final flush the disk differs from the model at %llu",
              (unsigned long long) k);
  }
  /* The test exercised what it claims to. */
  assert_true (nops[0] > 500 && nops[1] > 500 && nops[2] > 50 && nops[3] > 50);
  assert_true (nops[5] > 50 && nops[6] > 50);
  assert_true (stats (t->c).evictions > 100);
  assert_true (cache_debug_check (t->c));
  free (disk);
  free (buf);
  free (model);
}

int
main (void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test_setup_teardown (test_config_checks, tc_setup, tc_teardown),
    cmocka_unit_test_setup_teardown (test_full_sector_write_no_read, tc_setup,
                                     tc_teardown),
    cmocka_unit_test_setup_teardown (
      test_partial_sector_write_reads_that_sector, tc_setup, tc_teardown),
    cmocka_unit_test_setup_teardown (test_read_fills_only_invalid_sectors,
                                     tc_setup, tc_teardown),
    cmocka_unit_test_setup_teardown (test_read_two_pages_one_backend_read,
                                     tc_setup, tc_teardown),
    cmocka_unit_test_setup_teardown (test_4k_write_then_flush, tc_setup,
                                     tc_teardown),
    cmocka_unit_test_setup_teardown (test_prefetch, tc_setup, tc_teardown),
    cmocka_unit_test_setup_teardown (test_unaligned_export_size, tc_setup,
                                     tc_teardown),
    cmocka_unit_test_setup_teardown (test_out_of_range, tc_setup, tc_teardown),
    cmocka_unit_test_setup_teardown (test_random_unaligned_vs_model, tc_setup,
                                     tc_teardown),
  };

  return cmocka_run_group_tests (tests, NULL, NULL);
}
