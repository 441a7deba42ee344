/* subpage unit tests: cache_next_unflushed (cache/extent.c), the runs
 * the cache holds newer than the backend, for block status.
 *
 * A seeded random sequence of writes (left dirty), reads (clean pages),
 * write-back runs captured in flight (W), their completions and
 * flushes, in a 1 MiB cache (16 frames) over a 4 MiB image (64 pages),
 * so pages are evicted and the ranges asked about hold more pages than
 * the cache has frames as well as fewer.  After each step, for random
 * ranges (one sector .. the whole image, both the page-by-page lookup
 * and the frame scan), the answer is checked against the sector states
 * (cache_debug_sector): the first run of D or W sectors in the range,
 * clipped to it and to its page.  No threads.
 */
#undef NDEBUG
/* As in test-cache-rw.c: cmocka's allocator is not for this. */
#undef UNIT_TESTING

#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "helpers.h"

/* Whether the cached sector at S (D or W, so valid: the read changes
 * no state) holds only zero bytes.
 */
static bool
model_zero (struct cache *c, uint64_t s)
{
  unsigned char b[SS];

  assert_int_equal (cache_read (c, b, SS, s), 0);
  for (unsigned i = 0; i < SS; i++)
    if (b[i])
      return false;
  return true;
}

/* The expected answer, from the sector states and the data. */
static bool
model_next (struct cache *c, uint64_t size, uint64_t off, uint64_t end,
            uint64_t *start, uint64_t *stop, bool *zero)
{
  uint64_t s;

  if (end > size)
    end = size;
  for (s = off / SS * SS; s < end; s += SS)
    if (cache_debug_sector (c, s) & (D | W))
      break;
  if (s >= end)
    return false;
  *start = s < off ? off : s;
  /* Clipped to the page (cache.h). */
  if (end > (s / PG + 1) * PG)
    end = (s / PG + 1) * PG;
  *zero = model_zero (c, s);
  while (s < end && (cache_debug_sector (c, s) & (D | W)) &&
         model_zero (c, s) == *zero)
    s += SS;
  *stop = s < end ? s : end;
  return true;
}

static void
check_range (struct cache *c, uint64_t size, uint64_t off, uint64_t end)
{
  uint64_t ws = 0, we = 0, gs = 0, ge = 0;
  bool wz = false, gz = false;
  bool want = model_next (c, size, off, end, &ws, &we, &wz);
  bool got = cache_next_unflushed (c, off, end, &gs, &ge, &gz);

  if (want != got || (want && (ws != gs || we != ge || wz != gz)))
    fail_msg ("[%" PRIu64 ", %" PRIu64 "): want %d %" PRIu64 "-%" PRIu64
              " zero %d, got %d %" PRIu64 "-%" PRIu64 " zero %d",
              off, end, want, ws, we, wz, got, gs, ge, gz);
}

static void
test_random (void **state)
{
  struct tcache *t = *state;
  struct cache_config cfg = test_config ();
  uint64_t size;
  unsigned seed = 17;
  char *buf = malloc (256 * KiB);

  assert_non_null (buf);
  memset (buf, 0x5a, 256 * KiB);
  cfg.dirty_ratio = 100;
  cfg.dirty_background_ratio = 100;
  tc_open (t, &cfg);
  cache_set_submit (t->c, fake_capture_submit, t->f);
  size = cfg.size;

  for (unsigned step = 0; step < 400; step++) {
    unsigned op = (unsigned) rand_r (&seed) % 10;
    uint64_t off = (uint64_t) rand_r (&seed) % size;
    uint32_t n = 1 + (uint32_t) rand_r (&seed) % (24 * KiB);

    if (off + n > size)
      n = (uint32_t) (size - off);
    if (op < 4) {
      /* Keep dirty pages well below the frames, or writes would wait. */
      if (stats (t->c).dirty_pages < 6)
        assert_int_equal (cache_write (t->c, buf, n, off, 0), 0);
    }
    else if (op < 7)
      assert_int_equal (cache_read (t->c, buf, n, off), 0);
    else if (op == 7)
      assert_true (cache_writeback (t->c, CACHE_WB_BACKGROUND, 0) >= 0);
    else if (op == 8)
      fake_complete_all (t->f, t->c, 0);
    else {
      fake_complete_all (t->f, t->c, 0);
      assert_true (cache_writeback (t->c, CACHE_WB_BACKGROUND, 0) >= 0);
    }

    check_range (t->c, size, 0, size);
    for (unsigned k = 0; k < 8; k++) {
      uint64_t a = (uint64_t) rand_r (&seed) % size;
      uint64_t len = k < 4 ? 1 + (uint64_t) rand_r (&seed) % (2 * PG)
                           : 1 + (uint64_t) rand_r (&seed) % size;
      check_range (t->c, size, a, a + len);
    }
  }
  fake_complete_all (t->f, t->c, 0);
  check_range (t->c, size, 0, size);
  free (buf);
}

int
main (void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test_setup_teardown (test_random, tc_setup, tc_teardown),
  };

  return cmocka_run_group_tests (tests, NULL, NULL);
}
