/* subpage unit tests: block status (cache_next_unflushed, cache/extent.c,
 * merged with the backend's extents as plugin/subpage.c's
 * subpage_extents does) against resizes, write-back and ZERO running
 * beside it.
 *
 * The plugin cannot be linked here (it needs nbdkit), so merge()
 * below is subpage_extents as of 67de340, line for line: ask the cache
 * for its first unflushed run in [pos, end), then the backend for the
 * gap before it, add the run, go on from its end.  The backend's
 * extents are the fake disk's, one sector at a time (all zero bytes:
 * HOLE|ZERO, as a file's hole; else data), and nothing past its size
 * (a file's lseek SEEK_DATA there fails with ENXIO, which
 * file-backend.c reports as a hole).  Hooks run where another thread
 * could run in the plugin: before the cache is asked, and between the
 * cache's answer and the backend's.  No sleeps.
 *
 * The promise checked (docs/design.md "Block status", cache.h): no
 * byte that a write acknowledged before the request made non-zero is
 * reported as ZERO.
 */
#undef NDEBUG
#undef UNIT_TESTING

#include <errno.h>
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "helpers.h"
#include "util.h"

#define X_HOLE 1u /* NBDKIT_EXTENT_HOLE */
#define X_ZERO 2u /* NBDKIT_EXTENT_ZERO */
#define MAX_X 512
#define EXTENT_RUNS 32 /* SUBPAGE_EXTENT_RUNS */

struct xt {
  uint64_t off, len;
  uint32_t type;
};

/* An nbdkit_extents: contiguous, ascending, coalesced. */
struct xlist {
  struct xt x[MAX_X];
  unsigned n;
  uint64_t next;
};

static void
xadd (struct xlist *l, uint64_t off, uint64_t len, uint32_t type)
{
  assert_int_equal (off, l->next); /* nbdkit_add_extent's rule */
  l->next = off + len;
  if (len == 0)
    return;
  if (l->n > 0 && l->x[l->n - 1].type == type) {
    l->x[l->n - 1].len += len;
    return;
  }
  assert_true (l->n < MAX_X);
  l->x[l->n++] = (struct xt){ off, len, type };
}

/* file-backend.c's fb_extents, over the fake disk: sectors of zero
 * bytes are holes, nothing past the disk's size is data.
 */
static void
fake_extents (struct tcache *t, uint64_t off, uint64_t count, struct xlist *l)
{
  uint64_t end = off + count, size = fake_size (t->f);
  unsigned char b[SS];

  while (off < end) {
    uint64_t s = off / SS * SS, next = MIN (s + SS, end);
    bool zero = true;

    if (s < size) {
      uint64_t n = MIN ((uint64_t) SS, size - s);
      fake_disk_read (t->f, b, n, s);
      for (uint64_t i = 0; i < n; i++)
        zero = zero && b[i] == 0;
    }
    xadd (l, off, next - off, zero ? X_HOLE | X_ZERO : 0);
    off = next;
  }
}

struct hooks {
  void (*before) (struct tcache *t);  /* before the first cache query */
  void (*between) (struct tcache *t); /* after a query, before the backend */
};

/* plugin/subpage.c, subpage_extents (67de340). */
static void
merge (struct tcache *t, uint64_t offset, uint32_t count, bool req_one,
       const struct hooks *h, struct xlist *l)
{
  uint64_t pos = offset, end = offset + count;

  memset (l, 0, sizeof *l);
  l->next = offset;
  if (h && h->before)
    h->before (t);
  for (unsigned n = 0; pos < end && n < EXTENT_RUNS; n++) {
    uint64_t s, e;
    bool zero = false;

    if (!cache_next_unflushed (t->c, pos, end, &s, &e, &zero))
      s = e = end;
    if (h && h->between)
      h->between (t);
    if (s > pos)
      fake_extents (t, pos, s - pos, l);
    if (e > s)
      xadd (l, s, e - s, zero ? X_ZERO : 0);
    pos = e;
    if (req_one)
      break;
  }
}

static void
xdump (const char *what, const struct xlist *l)
{
  fprintf (stderr, "%s:", what);
  for (unsigned i = 0; i < l->n; i++)
    fprintf (stderr, " [%" PRIu64 "+%" PRIu64 " %s]", l->x[i].off, l->x[i].len,
             l->x[i].type == 0        ? "data"
             : l->x[i].type == X_ZERO ? "zero"
             : l->x[i].type == X_HOLE ? "hole"
                                      : "hole|zero");
  fprintf (stderr, "\n");
}

/* Bytes of [off, off+n) that L reports as ZERO. */
static uint64_t
zero_bytes_in (const struct xlist *l, uint64_t off, uint64_t n)
{
  uint64_t z = 0;

  for (unsigned i = 0; i < l->n; i++) {
    uint64_t a = MAX (l->x[i].off, off);
    uint64_t b = MIN (l->x[i].off + l->x[i].len, off + n);
    if (a < b && (l->x[i].type & X_ZERO))
      z += b - a;
  }
  return z;
}

/* ---- 1. a shrink and a growth back around the cache query ------------ */

/* The image (a file) is truncated to 2 MiB and grown back to 4 MiB by
 * someone else, and subpage follows each change (cache_refresh_size:
 * a new connection's .get_size, a write-back batch).  While the image
 * is short, the dirty data the client wrote at 3 MiB is past the end;
 * if the cache query left it out (clipped to the size now), the backend,
 * asked after the growth, would report the grown file's hole there:
 * HOLE|ZERO for 4 KiB that a write acknowledged before the request made
 * non-zero, while reads return it before, during (EIO while short) and
 * after.  The cache query must report it as data.
 */
static void
shrink_to_2m (struct tcache *t)
{
  fake_resize (t->f, 2 * MiB);
  assert_int_equal (cache_refresh_size (t->c), 2 * MiB);
}

static void
grow_to_4m_once (struct tcache *t)
{
  if (fake_size (t->f) == 4 * MiB)
    return;
  fake_resize (t->f, 4 * MiB);
  assert_int_equal (cache_refresh_size (t->c), 4 * MiB);
}

static void
test_resize_around_query_reports_dirty_data_as_hole (void **state)
{
  struct tcache *t = *state;
  struct cache_config cfg = test_config ();
  const uint64_t w = 3 * MiB;
  const struct hooks h = { .before = shrink_to_2m, .between = grow_to_4m_once };
  struct xlist l;
  uint64_t z;

  tc_open (t, &cfg);
  /* The image: zeroes (a sparse file).  The client's write, acked. */
  assert_int_equal (write_pattern (t, w, 4 * KiB, 7, 0), 0);
  assert_true (sectors_are (t, w, 4 * KiB, V | D));

  merge (t, w - 64 * KiB, 256 * KiB, false, &h, &l);
  xdump ("resize around the query", &l);

  /* Before, during and after: the write is there. */
  assert_true (read_is_pattern (t, w, 4 * KiB, 7));
  assert_true (sectors_are (t, w, 4 * KiB, V | D));
  z = zero_bytes_in (&l, w, 4 * KiB);
  fprintf (stderr,
           "bytes of the acknowledged write reported as zero: %" PRIu64
           " of 4096\n",
           z);
  assert_int_equal (z, 0);
}

/* The same without any race: only the shrink, before the request.  The
 * client connected while the image was 4 MiB, so nbdkit lets its block
 * status through; reads of the range fail (-ERANGE: EIO), but block
 * status says HOLE|ZERO, success, for the dirty data the cache still
 * holds and brings back when the image grows again.  A copy (nbdcopy)
 * that trusts it skips the range without an error.
 */
static void
test_shrunk_dirty_data_reported_as_hole (void **state)
{
  struct tcache *t = *state;
  struct cache_config cfg = test_config ();
  const uint64_t w = 3 * MiB;
  unsigned char b[SS];
  uint64_t s, e;
  bool zero, found;
  struct xlist l;

  tc_open (t, &cfg);
  assert_int_equal (write_pattern (t, w, 4 * KiB, 7, 0), 0);
  shrink_to_2m (t);
  assert_int_equal (cache_read (t->c, b, SS, w), -ERANGE);
  assert_true (sectors_are (t, w, 4 * KiB, V | D)); /* kept, unwritable */

  found = cache_next_unflushed (t->c, w, w + 64 * KiB, &s, &e, &zero);
  merge (t, w, 64 * KiB, false, NULL, &l);
  xdump ("shrunk", &l);
  fprintf (stderr,
           "cache_next_unflushed over the dirty sectors past the end: %d\n",
           found);
  /* cache.h: "the first run of bytes in [off, end) that the cache
   * holds newer than the backend (sectors DIRTY, ...)".
   */
  assert_true (found);
  assert_int_equal (zero_bytes_in (&l, w, 4 * KiB), 0);
}

/* ---- 2. what holds ------------------------------------------------------ */

/* Write-back completing (W -> CLEAN) between the cache's answer and the
 * backend's: the run the cache reported is data, and runs written back
 * before the query are on the disk when the backend is asked.  Both
 * query paths (page lookup: a 256 KiB range; frame scan: the image).
 */
static void
complete_runs (struct tcache *t)
{
  fake_complete_all (t->f, t->c, 0);
}

static void
test_writeback_between_query_and_backend (void **state)
{
  struct tcache *t = *state;
  struct cache_config cfg = test_config ();
  const struct hooks h = { .between = complete_runs };
  const uint64_t ws[3] = { 1 * MiB, 1 * MiB + 128 * KiB, 3 * MiB + 512 };
  struct xlist l;

  cfg.dirty_ratio = 100;
  cfg.dirty_background_ratio = 100;
  tc_open (t, &cfg);
  cache_set_submit (t->c, fake_capture_submit, t->f);
  for (int pass = 0; pass < 2; pass++) {
    for (int k = 0; k < 3; k++)
      assert_int_equal (write_pattern (t, ws[k], 1024, 10 + k, 0), 0);
    assert_true (cache_writeback (t->c, CACHE_WB_BACKGROUND, 0) >= 0);
    assert_true (fake_nr_pending (t->f) > 0);
    if (pass == 0)
      merge (t, 1 * MiB - 4 * KiB, 256 * KiB, false, &h, &l);
    else
      merge (t, 0, 4 * MiB, false, &h, &l);
    xdump (pass == 0 ? "lookup, runs completing" : "scan, runs completing", &l);
    for (int k = 0; k < (pass == 0 ? 2 : 3); k++)
      assert_int_equal (zero_bytes_in (&l, ws[k], 1024), 0);
    fake_complete_all (t->f, t->c, 0);
  }
}

/* A ZERO held at the backend (its sectors still DIRTY in the cache)
 * while block status runs, then completed between the query and the
 * backend's answer: the bytes read as the ZERO's result or the data;
 * never zero for data the ZERO did not cover.
 */
static struct async *zero_req;
static void
finish_zero (struct tcache *t)
{
  if (zero_req && fake_held (t->f, FAKE_ZERO) == 1) {
    fake_hold (t->f, FAKE_ZERO, false);
    assert_int_equal (async_join (zero_req), 0);
    zero_req = NULL;
  }
}

static void
test_zero_completing_between_query_and_backend (void **state)
{
  struct tcache *t = *state;
  struct cache_config cfg = test_config ();
  const struct hooks h = { .between = finish_zero };
  struct xlist l;

  tc_open (t, &cfg);
  /* Data the ZERO covers (1 MiB..+8 KiB) and beside it (+8 KiB..+12). */
  assert_int_equal (write_pattern (t, 1 * MiB, 12 * KiB, 3, 0), 0);
  fake_hold (t->f, FAKE_ZERO, true);
  zero_req = async_start (t, ASYNC_ZERO, NULL, 8 * KiB, 1 * MiB, 0);
  WAIT_FOR (fake_held (t->f, FAKE_ZERO) == 1);
  merge (t, 1 * MiB - 4 * KiB, 64 * KiB, false, &h, &l);
  xdump ("zero completing", &l);
  assert_null (zero_req);
  assert_int_equal (zero_bytes_in (&l, 1 * MiB + 8 * KiB, 4 * KiB), 0);
  assert_true (read_is_byte (t, 1 * MiB, 8 * KiB, 0));
  assert_true (read_is_pattern (t, 1 * MiB + 8 * KiB, 4 * KiB, 3));
}

/* A sector of zeroes written into a non-zero image sector beside a
 * partial last sector: zero where the cache holds zeroes, data where
 * it holds the client's non-zero bytes, for an image whose size is not
 * a multiple of the sector size (the bytes past the end do not make
 * the last sector's data zero).
 */
static void
test_partial_last_sector_zero_detection (void **state)
{
  struct tcache *t = *state;
  struct cache_config cfg = test_config ();
  const uint64_t size = 4 * MiB - 200, s = size - size % SS;
  unsigned char one = 1, zeroes[SS] = { 0 };
  struct xlist l;

  cfg.size = size;
  tc_open (t, &cfg);
  fill_disk (t, 4);
  /* The last sector: all zero in the image except its last byte. */
  assert_int_equal (cache_write (t->c, zeroes, (uint32_t) (size - s), s, 0), 0);
  assert_int_equal (cache_write (t->c, &one, 1, size - 1, 0), 0);
  merge (t, s - SS, (uint32_t) (size - (s - SS)), false, NULL, &l);
  xdump ("partial last sector", &l);
  assert_int_equal (zero_bytes_in (&l, s, size - s), 0);
  /* And with the byte zeroed too: zero. */
  assert_int_equal (cache_write (t->c, zeroes, 1, size - 1, 0), 0);
  merge (t, s, (uint32_t) (size - s), false, NULL, &l);
  xdump ("partial last sector, zeroed", &l);
  assert_int_equal (zero_bytes_in (&l, s, size - s), size - s);
}

int
main (void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test_setup_teardown (
      test_resize_around_query_reports_dirty_data_as_hole, tc_setup,
      tc_teardown),
    cmocka_unit_test_setup_teardown (test_shrunk_dirty_data_reported_as_hole,
                                     tc_setup, tc_teardown),
    cmocka_unit_test_setup_teardown (test_writeback_between_query_and_backend,
                                     tc_setup, tc_teardown),
    cmocka_unit_test_setup_teardown (
      test_zero_completing_between_query_and_backend, tc_setup, tc_teardown),
    cmocka_unit_test_setup_teardown (test_partial_last_sector_zero_detection,
                                     tc_setup, tc_teardown),
  };

  return cmocka_run_group_tests (tests, NULL, NULL);
}
