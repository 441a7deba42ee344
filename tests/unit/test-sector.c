/* subpage unit tests: cache/sector.c, the per-sector state machine.
 *
 * The main test is table-driven: for every state (including the illegal
 * ones) and every operation, either sect_edges[] has the edge and
 * applying it yields its "to" state (and the right counter delta, and
 * no other sector changes), or the operation fails CACHE_ASSERT
 * (expect_assert_failure).  A second test pins the table to the
 * transition list documented in sector.h, so neither can drift.  The
 * rest covers the search and count helpers against a naive model on
 * random bitmaps (128 and 4096 sectors) and sect_check.
 */
#undef NDEBUG
/* cache_test_dep defines UNIT_TESTING for cache-assert.h; here it would
 * make cmocka.h swap malloc/free for its leak-checking allocator, which
 * is not thread-safe and flags buffers freed by the teardown.
 */
#undef UNIT_TESTING

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "sector.h"

/* Every V|D|W combination, as the state sect_get reports for it. */
static const struct {
  bool v, d, w;
  enum sect_state s;
} combos[] = {
  { 0, 0, 0, SECT_ABSENT },    { 1, 0, 0, SECT_CLEAN },
  { 1, 1, 0, SECT_DIRTY },     { 1, 0, 1, SECT_WRITEBACK },
  { 1, 1, 1, SECT_REDIRTIED }, { 0, 1, 0, SECT_ILLEGAL },
  { 0, 0, 1, SECT_ILLEGAL },   { 0, 1, 1, SECT_ILLEGAL },
};
#define NR_COMBOS (sizeof combos / sizeof combos[0])

struct bm {
  struct sect_bits sb;
  uint64_t store[SECT_NR_BITMAPS * 64]; /* up to 4096 sectors */
};

static void
bm_init (struct bm *b, uint32_t nsect)
{
  memset (b, 0, sizeof *b);
  assert_true (nsect <= 4096);
  b->sb.bits = b->store;
  b->sb.nsect = nsect;
  b->sb.words = (nsect + 63) / 64;
}

static uint64_t *
word_of (struct bm *b, enum sect_bitmap bm, uint32_t i)
{
  return &b->store[bm * b->sb.words + i / 64];
}

static void
set_bit (struct bm *b, enum sect_bitmap bm, uint32_t i, bool on)
{
  uint64_t m = UINT64_C (1) << (i % 64);

  if (on)
    *word_of (b, bm, i) |= m;
  else
    *word_of (b, bm, i) &= ~m;
}

static bool
get_bit (struct bm *b, enum sect_bitmap bm, uint32_t i)
{
  return (*word_of (b, bm, i) >> (i % 64)) & 1;
}

static void
set_combo (struct bm *b, uint32_t i, unsigned k)
{
  set_bit (b, SECT_BM_V, i, combos[k].v);
  set_bit (b, SECT_BM_D, i, combos[k].d);
  set_bit (b, SECT_BM_W, i, combos[k].w);
}

/* A legal state, as a combo index 0..4. */
static void
set_state (struct bm *b, uint32_t i, enum sect_state s)
{
  for (unsigned k = 0; k < NR_COMBOS; k++)
    if (combos[k].s == s) {
      set_combo (b, i, k);
      return;
    }
  fail_msg ("no combo for state %d", s);
}

static const struct sect_edge *
find_edge (enum sect_state from, enum sect_op op)
{
  const struct sect_edge *r = NULL;

  for (unsigned e = 0; e < sect_nr_edges; e++)
    if (sect_edges[e].from == from && sect_edges[e].op == op) {
      assert_null (r); /* the machine is deterministic */
      r = &sect_edges[e];
    }
  return r;
}

/* The transition list of sector.h, section 4, copied by hand. */
static const struct {
  enum sect_state from;
  enum sect_op op;
  enum sect_state to;
  const char *fn;
} documented[] = {
  { SECT_ABSENT, SECT_OP_FILL_DONE, SECT_CLEAN, "sect_fill_done" },
  { SECT_ABSENT, SECT_OP_WRITE, SECT_DIRTY, "sect_write" },
  { SECT_CLEAN, SECT_OP_WRITE, SECT_DIRTY, "sect_write" },
  { SECT_DIRTY, SECT_OP_WRITE, SECT_DIRTY, "sect_write" },
  { SECT_WRITEBACK, SECT_OP_WRITE, SECT_REDIRTIED, "sect_write" },
  { SECT_REDIRTIED, SECT_OP_WRITE, SECT_REDIRTIED, "sect_write" },
  { SECT_DIRTY, SECT_OP_WB_START, SECT_WRITEBACK, "sect_wb_start" },
  { SECT_CLEAN, SECT_OP_WB_START, SECT_WRITEBACK, "sect_wb_start" },
  { SECT_WRITEBACK, SECT_OP_WB_END_OK, SECT_CLEAN, "sect_wb_end" },
  { SECT_WRITEBACK, SECT_OP_WB_END_ERR, SECT_DIRTY, "sect_wb_end" },
  { SECT_REDIRTIED, SECT_OP_WB_END_OK, SECT_DIRTY, "sect_wb_end" },
  { SECT_REDIRTIED, SECT_OP_WB_END_ERR, SECT_DIRTY, "sect_wb_end" },
  { SECT_CLEAN, SECT_OP_DROP, SECT_ABSENT, "sect_drop" },
  { SECT_DIRTY, SECT_OP_DROP, SECT_ABSENT, "sect_drop" },
  { SECT_ABSENT, SECT_OP_DROP, SECT_ABSENT, "sect_drop" },
  { SECT_DIRTY, SECT_OP_CLEAN, SECT_CLEAN, "sect_clean" },
  { SECT_CLEAN, SECT_OP_CLEAN, SECT_CLEAN, "sect_clean" },
};
#define NR_DOCUMENTED (sizeof documented / sizeof documented[0])

static void
test_table_matches_header (void **state)
{
  (void) state;
  assert_int_equal (sect_nr_edges, NR_DOCUMENTED);
  for (unsigned k = 0; k < NR_DOCUMENTED; k++) {
    const struct sect_edge *e = find_edge (documented[k].from,
                                           documented[k].op);
    assert_non_null (e);
    assert_int_equal (e->to, documented[k].to);
    assert_string_equal (e->fn, documented[k].fn);
  }
  /* No edge leaves or enters ILLEGAL. */
  for (unsigned e = 0; e < sect_nr_edges; e++) {
    assert_int_not_equal (sect_edges[e].from, SECT_ILLEGAL);
    assert_int_not_equal (sect_edges[e].to, SECT_ILLEGAL);
  }
  /* The invariants that rely on missing edges (sector.h, section 4). */
  assert_null (find_edge (SECT_WRITEBACK, SECT_OP_WB_START)); /* inv. 3 */
  assert_null (find_edge (SECT_REDIRTIED, SECT_OP_WB_START)); /* inv. 3 */
  assert_null (find_edge (SECT_WRITEBACK, SECT_OP_DROP));     /* inv. 8 */
  assert_null (find_edge (SECT_REDIRTIED, SECT_OP_DROP));     /* inv. 8 */
}

static void
test_names (void **state)
{
  (void) state;
  for (int s = SECT_ABSENT; s <= SECT_ILLEGAL; s++) {
    assert_non_null (sect_state_name (s));
    for (int t = SECT_ABSENT; t < s; t++)
      assert_string_not_equal (sect_state_name (s), sect_state_name (t));
  }
  for (int op = 0; op < SECT_NR_OPS; op++) {
    assert_non_null (sect_op_name (op));
    for (int p = 0; p < op; p++)
      assert_string_not_equal (sect_op_name (op), sect_op_name (p));
  }
}

static void
test_get (void **state)
{
  struct bm b;

  (void) state;
  bm_init (&b, 128);
  for (unsigned k = 0; k < NR_COMBOS; k++) {
    set_combo (&b, 70, k);
    assert_int_equal (sect_get (&b.sb, 70), combos[k].s);
    assert_int_equal (sect_test (&b.sb, SECT_BM_V, 70), combos[k].v);
    assert_int_equal (sect_test (&b.sb, SECT_BM_D, 70), combos[k].d);
    assert_int_equal (sect_test (&b.sb, SECT_BM_W, 70), combos[k].w);
    assert_int_equal (sect_get (&b.sb, 69), SECT_ABSENT);
    assert_int_equal (sect_get (&b.sb, 71), SECT_ABSENT);
  }
}

/* Fills every sector of b with a pseudo-random legal state. */
static void
random_legal (struct bm *b, unsigned *seed)
{
  for (uint32_t i = 0; i < b->sb.nsect; i++)
    set_combo (b, i, (unsigned) rand_r (seed) % 5);
}

/* In its own function so that the setjmp inside expect_assert_failure
 * cannot clobber the caller's loop variables.
 */
static void __attribute__ ((noinline))
expect_illegal (struct sect_bits *sb, enum sect_op op, uint32_t i,
                struct sect_delta *delta)
{
  expect_assert_failure (sect_apply (sb, op, i, delta));
}

/* The table walk: every (state, op) pair, at sectors on and off word
 * boundaries, with neighbours in random legal states that must not
 * change.
 */
static void
test_edges_table_driven (void **state)
{
  static const uint32_t positions[] = { 0, 1, 63, 64, 65, 100, 127 };
  unsigned seed = 1;
  unsigned legal = 0, illegal = 0;

  (void) state;
  for (unsigned p = 0; p < sizeof positions / sizeof positions[0]; p++)
    for (unsigned k = 0; k < NR_COMBOS; k++)
      for (int op = 0; op < SECT_NR_OPS; op++) {
        uint32_t i = positions[p];
        struct bm b, before;
        const struct sect_edge *e = find_edge (combos[k].s, op);
        struct sect_delta delta = { 0, 0, 0 };

        bm_init (&b, 128);
        random_legal (&b, &seed);
        set_combo (&b, i, k);
        before = b;
        before.sb.bits = before.store;

        if (e) {
          sect_apply (&b.sb, op, i, &delta);
          assert_int_equal (sect_get (&b.sb, i), e->to);
          /* Delta: net change of each bitmap at sector i. */
          assert_int_equal (delta.v, (int) get_bit (&b, SECT_BM_V, i) -
                                       (int) get_bit (&before, SECT_BM_V, i));
          assert_int_equal (delta.d, (int) get_bit (&b, SECT_BM_D, i) -
                                       (int) get_bit (&before, SECT_BM_D, i));
          assert_int_equal (delta.w, (int) get_bit (&b, SECT_BM_W, i) -
                                       (int) get_bit (&before, SECT_BM_W, i));
          /* NULL delta works too and gives the same state. */
          set_combo (&b, i, k);
          sect_apply (&b.sb, op, i, NULL);
          assert_int_equal (sect_get (&b.sb, i), e->to);
          legal++;
        }
        else {
          expect_illegal (&b.sb, op, i, &delta);
          illegal++;
          /* An illegal op leaves sector i as it was. */
          assert_int_equal (get_bit (&b, SECT_BM_V, i), combos[k].v);
          assert_int_equal (get_bit (&b, SECT_BM_D, i), combos[k].d);
          assert_int_equal (get_bit (&b, SECT_BM_W, i), combos[k].w);
          set_combo (&b, i, k);
        }
        /* Neighbours untouched. */
        for (uint32_t j = 0; j < 128; j++)
          if (j != i)
            for (int m = 0; m < SECT_NR_BITMAPS; m++)
              assert_int_equal (get_bit (&b, m, j), get_bit (&before, m, j));
      }
  /* Not vacuous: every table edge and the rest of the 8 x 6 grid. */
  assert_int_equal (legal, 7 * sect_nr_edges);
  assert_int_equal (illegal, 7 * (NR_COMBOS * SECT_NR_OPS - sect_nr_edges));
}

/* Range transitions: sect_write over a mixed range moves each sector
 * along its own edge; wb_start/drop over a range holding one W sector
 * fail (invariants 3 and 8 at the bit level).
 */
static void
test_range_ops (void **state)
{
  struct bm b;
  struct sect_delta delta = { 0, 0, 0 };

  (void) state;
  bm_init (&b, 128);
  /* 60..69: ABSENT CLEAN DIRTY WRITEBACK REDIRTIED, twice. */
  for (uint32_t i = 60; i < 70; i++)
    set_state (&b, i, (enum sect_state) ((i - 60) % 5));
  sect_write (&b.sb, 60, 10, &delta);
  for (uint32_t i = 60; i < 70; i++) {
    enum sect_state from = (enum sect_state) ((i - 60) % 5);
    assert_int_equal (sect_get (&b.sb, i), find_edge (from, SECT_OP_WRITE)->to);
  }
  assert_int_equal (delta.v, 2); /* the two ABSENT sectors */
  assert_int_equal (delta.d, 6); /* ABSENT, CLEAN, WRITEBACK twice */
  assert_int_equal (delta.w, 0);
  assert_int_equal (sect_get (&b.sb, 59), SECT_ABSENT);
  assert_int_equal (sect_get (&b.sb, 70), SECT_ABSENT);

  /* wb_start over 0..127 with one WRITEBACK sector at 127. */
  bm_init (&b, 128);
  sect_write (&b.sb, 0, 128, NULL);
  sect_wb_start (&b.sb, 127, 1, NULL);
  expect_assert_failure (sect_wb_start (&b.sb, 0, 128, NULL));
  /* ... and a REDIRTIED one at 0. */
  bm_init (&b, 128);
  sect_write (&b.sb, 0, 128, NULL);
  sect_wb_start (&b.sb, 0, 1, NULL);
  sect_write (&b.sb, 0, 1, NULL);
  assert_int_equal (sect_get (&b.sb, 0), SECT_REDIRTIED);
  expect_assert_failure (sect_wb_start (&b.sb, 0, 128, NULL));
  expect_assert_failure (sect_drop (&b.sb, 0, 128, NULL));
  expect_assert_failure (sect_fill_done (&b.sb, 0, 128, NULL));

  /* wb_start of a whole range, then wb_end of part of it clears only
   * that part (invariant 5 at the bit level).
   */
  bm_init (&b, 128);
  sect_write (&b.sb, 0, 128, NULL);
  memset (&delta, 0, sizeof delta);
  sect_wb_start (&b.sb, 0, 128, &delta);
  assert_int_equal (delta.d, -128);
  assert_int_equal (delta.w, 128);
  memset (&delta, 0, sizeof delta);
  sect_wb_end (&b.sb, 60, 10, true, &delta);
  assert_int_equal (delta.w, -10);
  assert_int_equal (delta.d, 0);
  assert_int_equal (sect_count (&b.sb, SECT_BM_W, 0, 128), 118);
  assert_int_equal (sect_get (&b.sb, 59), SECT_WRITEBACK);
  assert_int_equal (sect_get (&b.sb, 60), SECT_CLEAN);
  assert_int_equal (sect_get (&b.sb, 69), SECT_CLEAN);
  assert_int_equal (sect_get (&b.sb, 70), SECT_WRITEBACK);
  memset (&delta, 0, sizeof delta);
  sect_wb_end (&b.sb, 0, 60, false, &delta);
  assert_int_equal (delta.d, 60);
  assert_int_equal (delta.w, -60);
  assert_int_equal (sect_get (&b.sb, 0), SECT_DIRTY);
  /* wb_end of a sector not under W is illegal. */
  expect_assert_failure (sect_wb_end (&b.sb, 65, 1, true, NULL));

  /* Drop of a mixed ABSENT/CLEAN/DIRTY range. */
  bm_init (&b, 128);
  set_state (&b, 1, SECT_CLEAN);
  set_state (&b, 2, SECT_DIRTY);
  memset (&delta, 0, sizeof delta);
  sect_drop (&b.sb, 0, 3, &delta);
  assert_int_equal (delta.v, -2);
  assert_int_equal (delta.d, -1);
  assert_false (sect_any (&b.sb, SECT_BM_V));
  assert_false (sect_any (&b.sb, SECT_BM_D));

  /* Ranges past nsect or empty are refused. */
  expect_assert_failure (sect_write (&b.sb, 120, 9, NULL));
  expect_assert_failure (sect_write (&b.sb, 0, 0, NULL));
}

/* Naive models. */
static uint32_t
naive_count (struct bm *b, enum sect_bitmap bm, uint32_t first, uint32_t n)
{
  uint32_t c = 0;

  for (uint32_t i = first; i < first + n; i++)
    c += get_bit (b, bm, i);
  return c;
}

static uint32_t
naive_find (struct bm *b, enum sect_bitmap bm, bool want, uint32_t from,
            uint32_t end)
{
  for (uint32_t i = from; i < end; i++)
    if (get_bit (b, bm, i) == want)
      return i;
  return end;
}

static uint32_t
naive_dirty_idle (struct bm *b, uint32_t from, uint32_t end)
{
  for (uint32_t i = from; i < end; i++)
    if (get_bit (b, SECT_BM_D, i) && !get_bit (b, SECT_BM_W, i))
      return i;
  return end;
}

/* Sparse random bitmaps: each sector is non-ABSENT with probability
 * 1/density, so finds have to skip whole words.
 */
static void
random_sparse (struct bm *b, unsigned *seed, unsigned density)
{
  for (uint32_t i = 0; i < b->sb.nsect; i++)
    set_combo (b, i,
               rand_r (seed) % density ? 0 : 1 + (unsigned) rand_r (seed) % 4);
}

static void
check_search (uint32_t nsect, unsigned density, unsigned seed)
{
  struct bm b;
  unsigned checks = 0, found = 0;

  bm_init (&b, nsect);
  random_sparse (&b, &seed, density);
  assert_true (sect_check (&b.sb));
  for (unsigned t = 0; t < 2000; t++) {
    uint32_t from = (uint32_t) rand_r (&seed) % (nsect + 1);
    uint32_t end = from + (uint32_t) rand_r (&seed) % (nsect - from + 1);

    for (int m = 0; m < SECT_NR_BITMAPS; m++) {
      uint32_t r = sect_find (&b.sb, m, true, from, end);
      assert_int_equal (r, naive_find (&b, m, true, from, end));
      found += r < end;
      assert_int_equal (sect_find (&b.sb, m, false, from, end),
                        naive_find (&b, m, false, from, end));
      assert_int_equal (sect_count (&b.sb, m, from, end - from),
                        naive_count (&b, m, from, end - from));
      checks++;
    }
    assert_int_equal (sect_find_dirty_idle (&b.sb, from, end),
                      naive_dirty_idle (&b, from, end));
  }
  for (int m = 0; m < SECT_NR_BITMAPS; m++)
    assert_int_equal (sect_any (&b.sb, m), naive_count (&b, m, 0, nsect) > 0);
  {
    uint32_t nv, nd, nw;
    sect_totals (&b.sb, &nv, &nd, &nw);
    assert_int_equal (nv, naive_count (&b, SECT_BM_V, 0, nsect));
    assert_int_equal (nd, naive_count (&b, SECT_BM_D, 0, nsect));
    assert_int_equal (nw, naive_count (&b, SECT_BM_W, 0, nsect));
  }
  assert_true (checks > 0 && found > 0);
}

static void
test_search_128 (void **state)
{
  (void) state;
  check_search (128, 2, 11);
  check_search (128, 40, 12);
}

static void
test_search_4096 (void **state)
{
  (void) state;
  check_search (4096, 3, 21);
  check_search (4096, 500, 22);
}

static void
test_search_crafted (void **state)
{
  struct bm b;

  (void) state;
  bm_init (&b, 4096);
  assert_false (sect_any (&b.sb, SECT_BM_V));
  assert_int_equal (sect_find (&b.sb, SECT_BM_V, true, 0, 4096), 4096);
  assert_int_equal (sect_find (&b.sb, SECT_BM_V, false, 0, 4096), 0);
  assert_int_equal (sect_find_dirty_idle (&b.sb, 0, 4096), 4096);
  /* Only the last sector. */
  set_state (&b, 4095, SECT_DIRTY);
  assert_int_equal (sect_find (&b.sb, SECT_BM_D, true, 0, 4096), 4095);
  assert_int_equal (sect_find (&b.sb, SECT_BM_D, true, 0, 4095), 4095);
  assert_int_equal (sect_find_dirty_idle (&b.sb, 0, 4096), 4095);
  assert_int_equal (sect_count (&b.sb, SECT_BM_D, 0, 4096), 1);
  assert_int_equal (sect_count (&b.sb, SECT_BM_D, 4095, 1), 1);
  assert_int_equal (sect_count (&b.sb, SECT_BM_D, 0, 4095), 0);
  /* from == end finds nothing, even on a set bit. */
  assert_int_equal (sect_find (&b.sb, SECT_BM_D, true, 4095, 4095), 4095);
  /* A dirty sector under write-back (REDIRTIED) is not idle. */
  set_state (&b, 4095, SECT_REDIRTIED);
  set_state (&b, 64, SECT_WRITEBACK);
  set_state (&b, 65, SECT_DIRTY);
  assert_int_equal (sect_find_dirty_idle (&b.sb, 0, 4096), 65);
  assert_int_equal (sect_find_dirty_idle (&b.sb, 66, 4096), 4096);
  assert_int_equal (sect_find (&b.sb, SECT_BM_D, true, 66, 4096), 4095);
  /* Word boundary 63/64. */
  set_state (&b, 63, SECT_CLEAN);
  assert_int_equal (sect_find (&b.sb, SECT_BM_V, true, 0, 4096), 63);
  assert_int_equal (sect_find (&b.sb, SECT_BM_V, false, 63, 4096), 66);
  assert_int_equal (sect_count (&b.sb, SECT_BM_V, 63, 3), 3);
  assert_int_equal (sect_count (&b.sb, SECT_BM_V, 0, 4096), 4);
  /* All set: want=false finds end. */
  bm_init (&b, 128);
  sect_write (&b.sb, 0, 128, NULL);
  assert_int_equal (sect_find (&b.sb, SECT_BM_V, false, 0, 128), 128);
  assert_int_equal (sect_count (&b.sb, SECT_BM_D, 0, 128), 128);
  assert_int_equal (sect_find_dirty_idle (&b.sb, 127, 128), 127);
  /* end past nsect is refused. */
  expect_assert_failure (sect_find (&b.sb, SECT_BM_V, true, 0, 129));
}

static void
test_check (void **state)
{
  struct bm b;
  unsigned seed = 5;

  (void) state;
  bm_init (&b, 128);
  assert_true (sect_check (&b.sb));
  random_legal (&b, &seed);
  assert_true (sect_check (&b.sb));

  /* D without V. */
  set_bit (&b, SECT_BM_V, 77, false);
  set_bit (&b, SECT_BM_D, 77, true);
  set_bit (&b, SECT_BM_W, 77, false);
  assert_false (sect_check (&b.sb));
  set_bit (&b, SECT_BM_V, 77, true);
  assert_true (sect_check (&b.sb));
  /* W without V. */
  set_bit (&b, SECT_BM_V, 0, false);
  set_bit (&b, SECT_BM_D, 0, false);
  set_bit (&b, SECT_BM_W, 0, true);
  assert_false (sect_check (&b.sb));
  set_bit (&b, SECT_BM_W, 0, false);
  assert_true (sect_check (&b.sb));

  /* A bit past nsect (nsect not a multiple of 64). */
  bm_init (&b, 100);
  sect_write (&b.sb, 0, 100, NULL);
  assert_true (sect_check (&b.sb));
  b.store[0 * b.sb.words + 1] |= UINT64_C (1) << (100 - 64);
  assert_false (sect_check (&b.sb));
  b.store[0 * b.sb.words + 1] &= ~(UINT64_C (1) << (100 - 64));
  b.store[2 * b.sb.words + 1] |= UINT64_C (1) << 63;
  assert_false (sect_check (&b.sb));
}

static void
test_dump (void **state)
{
  struct bm b;
  char buf[256];

  (void) state;
  bm_init (&b, 128);
  sect_write (&b.sb, 3, 5, NULL);
  sect_wb_start (&b.sb, 4, 2, NULL);
  sect_dump (&b.sb, buf, sizeof buf);
  /* Each bitmap is named and its ranges listed. */
  assert_non_null (strstr (buf, "V:3-7"));
  assert_non_null (strstr (buf, "W:4-5"));
  assert_non_null (strstr (buf, "D:3-3,6-7"));
  /* A short buffer is terminated, not overrun. */
  memset (buf, 'x', sizeof buf);
  sect_dump (&b.sb, buf, 4);
  assert_true (strlen (buf) < 4);
  assert_int_equal (buf[4], 'x');
}

int
main (void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test (test_table_matches_header),
    cmocka_unit_test (test_names),
    cmocka_unit_test (test_get),
    cmocka_unit_test (test_edges_table_driven),
    cmocka_unit_test (test_range_ops),
    cmocka_unit_test (test_search_128),
    cmocka_unit_test (test_search_4096),
    cmocka_unit_test (test_search_crafted),
    cmocka_unit_test (test_check),
    cmocka_unit_test (test_dump),
  };

  return cmocka_run_group_tests (tests, NULL, NULL);
}
