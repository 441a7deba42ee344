/* subpage: per-sector state machine (see sector.h for the diagram).
 *
 * Representation: three sub-bitmaps (V, D, W) of nsect bits each, in
 * 64-bit words, owned by the page.  The functions here touch bits only:
 * they never copy data, never block and never take a lock; the caller
 * holds the page lock.  Each transition function checks, sector by
 * sector, that the edge it performs is in sect_edges[] (by asserting
 * the "from" states it accepts), so an illegal edge fails CACHE_ASSERT
 * instead of silently corrupting state.
 *
 * Range operations work a word at a time where they can: a 64 KiB page
 * of 512 B sectors is two words per bitmap.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache-assert.h"
#include "sector.h"
#include "util.h"

/* clang-format off */
const struct sect_edge sect_edges[] = {
  { SECT_ABSENT,    SECT_OP_FILL_DONE,  SECT_CLEAN,     "sect_fill_done" },
  { SECT_ABSENT,    SECT_OP_WRITE,      SECT_DIRTY,     "sect_write" },
  { SECT_CLEAN,     SECT_OP_WRITE,      SECT_DIRTY,     "sect_write" },
  { SECT_DIRTY,     SECT_OP_WRITE,      SECT_DIRTY,     "sect_write" },
  { SECT_WRITEBACK, SECT_OP_WRITE,      SECT_REDIRTIED, "sect_write" },
  { SECT_REDIRTIED, SECT_OP_WRITE,      SECT_REDIRTIED, "sect_write" },
  { SECT_DIRTY,     SECT_OP_WB_START,   SECT_WRITEBACK, "sect_wb_start" },
  { SECT_CLEAN,     SECT_OP_WB_START,   SECT_WRITEBACK, "sect_wb_start" },
  { SECT_WRITEBACK, SECT_OP_WB_END_OK,  SECT_CLEAN,     "sect_wb_end" },
  { SECT_WRITEBACK, SECT_OP_WB_END_ERR, SECT_DIRTY,     "sect_wb_end" },
  { SECT_REDIRTIED, SECT_OP_WB_END_OK,  SECT_DIRTY,     "sect_wb_end" },
  { SECT_REDIRTIED, SECT_OP_WB_END_ERR, SECT_DIRTY,     "sect_wb_end" },
  { SECT_CLEAN,     SECT_OP_DROP,       SECT_ABSENT,    "sect_drop" },
  { SECT_DIRTY,     SECT_OP_DROP,       SECT_ABSENT,    "sect_drop" },
  { SECT_ABSENT,    SECT_OP_DROP,       SECT_ABSENT,    "sect_drop" },
  { SECT_DIRTY,     SECT_OP_CLEAN,      SECT_CLEAN,     "sect_clean" },
  { SECT_CLEAN,     SECT_OP_CLEAN,      SECT_CLEAN,     "sect_clean" },
};
/* clang-format on */
const unsigned sect_nr_edges = sizeof sect_edges / sizeof sect_edges[0];

const char *
sect_state_name (enum sect_state s)
{
  switch (s) {
  case SECT_ABSENT: return "ABSENT";
  case SECT_CLEAN: return "CLEAN";
  case SECT_DIRTY: return "DIRTY";
  case SECT_WRITEBACK: return "WRITEBACK";
  case SECT_REDIRTIED: return "REDIRTIED";
  case SECT_ILLEGAL: return "ILLEGAL";
  default: abort ();
  }
}

const char *
sect_op_name (enum sect_op op)
{
  switch (op) {
  case SECT_OP_FILL_DONE: return "fill_done";
  case SECT_OP_WRITE: return "write";
  case SECT_OP_WB_START: return "wb_start";
  case SECT_OP_WB_END_OK: return "wb_end(ok)";
  case SECT_OP_WB_END_ERR: return "wb_end(err)";
  case SECT_OP_DROP: return "drop";
  case SECT_OP_CLEAN: return "clean";
  default: abort ();
  }
}

static inline uint64_t *
bm_words (const struct sect_bits *sb, enum sect_bitmap bm)
{
  return sb->bits + (size_t) bm * sb->words;
}

bool
sect_test (const struct sect_bits *sb, enum sect_bitmap bm, uint32_t i)
{
  CACHE_ASSERT (i < sb->nsect);
  return (bm_words (sb, bm)[i / 64] >> (i % 64)) & 1;
}

enum sect_state
sect_get (const struct sect_bits *sb, uint32_t i)
{
  bool v = sect_test (sb, SECT_BM_V, i);
  bool d = sect_test (sb, SECT_BM_D, i);
  bool w = sect_test (sb, SECT_BM_W, i);

  if (!v)
    return d || w ? SECT_ILLEGAL : SECT_ABSENT;
  if (d)
    return w ? SECT_REDIRTIED : SECT_DIRTY;
  return w ? SECT_WRITEBACK : SECT_CLEAN;
}

/* Mask of the bits of word w that lie in [first, first+n). */
static inline uint64_t
range_mask (uint32_t w, uint32_t first, uint32_t end)
{
  uint32_t lo = w * 64, hi = lo + 64;
  uint32_t a = MAX (lo, first), b = MIN (hi, end);
  uint64_t m;

  if (a >= b)
    return 0;
  m = (b - a == 64) ? ~UINT64_C (0) : ((UINT64_C (1) << (b - a)) - 1);
  return m << (a - lo);
}

#define FOR_EACH_WORD(sb, first, n, w, mask)                              \
  for (uint32_t w = (first) / 64, _end = (first) + (n);                   \
       w < DIV_ROUND_UP (_end, 64); w++)                                  \
    for (uint64_t mask = range_mask (w, (first), _end), _once = 1; _once; \
         _once = 0)

uint32_t
sect_count (const struct sect_bits *sb, enum sect_bitmap bm, uint32_t first,
            uint32_t n)
{
  const uint64_t *b = bm_words (sb, bm);
  uint32_t c = 0;

  CACHE_ASSERT (first + n <= sb->nsect);
  FOR_EACH_WORD (sb, first, n, w, mask)
    c += popcount64 (b[w] & mask);
  return c;
}

bool
sect_any (const struct sect_bits *sb, enum sect_bitmap bm)
{
  const uint64_t *b = bm_words (sb, bm);

  for (uint32_t w = 0; w < sb->words; w++)
    if (b[w])
      return true;
  return false;
}

void
sect_totals (const struct sect_bits *sb, uint32_t *nv, uint32_t *nd,
             uint32_t *nw)
{
  const uint64_t *v = bm_words (sb, SECT_BM_V);
  const uint64_t *d = bm_words (sb, SECT_BM_D);
  const uint64_t *wb = bm_words (sb, SECT_BM_W);

  *nv = *nd = *nw = 0;
  for (uint32_t w = 0; w < sb->words; w++) {
    *nv += popcount64 (v[w]);
    *nd += popcount64 (d[w]);
    *nw += popcount64 (wb[w]);
  }
}

/* Find the first sector in [from, end) whose bit in (a & ~b) is set,
 * where a and b are whole-bitmap words (b may be NULL) and the bits
 * of a are inverted first if !want.
 */
static uint32_t
find_bits (const uint64_t *a, bool want, const uint64_t *b, uint32_t from,
           uint32_t end)
{
  if (from >= end)
    return end;
  for (uint32_t w = from / 64; w < DIV_ROUND_UP (end, 64); w++) {
    uint64_t x = want ? a[w] : ~a[w];
    if (b)
      x &= ~b[w];
    x &= range_mask (w, from, end);
    if (x)
      return w * 64 + (uint32_t) __builtin_ctzll (x);
  }
  return end;
}

uint32_t
sect_find (const struct sect_bits *sb, enum sect_bitmap bm, bool want,
           uint32_t from, uint32_t end)
{
  CACHE_ASSERT (end <= sb->nsect);
  return find_bits (bm_words (sb, bm), want, NULL, from, end);
}

uint32_t
sect_find_dirty_idle (const struct sect_bits *sb, uint32_t from, uint32_t end)
{
  CACHE_ASSERT (end <= sb->nsect);
  return find_bits (bm_words (sb, SECT_BM_D), true, bm_words (sb, SECT_BM_W),
                    from, end);
}

/* Sectors of word w whose state is in the bit set ALLOWED (1 << state):
 * sector.h's table of states as bit operations on the three bitmaps.
 */
static inline uint64_t
allowed_mask (const struct sect_bits *sb, uint32_t w, unsigned allowed)
{
  uint64_t v = bm_words (sb, SECT_BM_V)[w];
  uint64_t d = bm_words (sb, SECT_BM_D)[w];
  uint64_t wb = bm_words (sb, SECT_BM_W)[w];
  uint64_t ok = 0;

  /* clang-format off */
  if (allowed & (1u << SECT_ABSENT))    ok |= ~v & ~d & ~wb;
  if (allowed & (1u << SECT_CLEAN))     ok |= v & ~d & ~wb;
  if (allowed & (1u << SECT_DIRTY))     ok |= v & d & ~wb;
  if (allowed & (1u << SECT_WRITEBACK)) ok |= v & ~d & wb;
  if (allowed & (1u << SECT_REDIRTIED)) ok |= v & d & wb;
  /* clang-format on */
  if (allowed & (1u << SECT_ILLEGAL))
    ok |= ~v & (d | wb);
  return ok;
}

/* Checks that every sector in the range is in one of the states in the
 * bit set ALLOWED (1 << state), a word (64 sectors) at a time.  Reports
 * the first offender.
 */
static void
assert_from (const struct sect_bits *sb, uint32_t first, uint32_t n,
             unsigned allowed)
{
  CACHE_ASSERT (n > 0 && first + n <= sb->nsect);
  FOR_EACH_WORD (sb, first, n, w, mask) {
    uint64_t bad = mask & ~allowed_mask (sb, w, allowed);
    if (bad) {
      uint32_t i = w * 64 + (uint32_t) __builtin_ctzll (bad);
      enum sect_state s = sect_get (sb, i);
      fprintf (stderr,
               "subpage: illegal transition from sector %u in state %s\n", i,
               sect_state_name (s));
      CACHE_ASSERT (((allowed >> s) & 1) && "illegal sector transition");
      return;
    }
  }
}

#define ST(s) (1u << (s))

static inline void
add_delta (struct sect_delta *delta, int v, int d, int w)
{
  if (delta) {
    delta->v += v;
    delta->d += d;
    delta->w += w;
  }
}

void
sect_fill_done (struct sect_bits *sb, uint32_t first, uint32_t n,
                struct sect_delta *delta)
{
  uint64_t *v = bm_words (sb, SECT_BM_V);

  assert_from (sb, first, n, ST (SECT_ABSENT));
  FOR_EACH_WORD (sb, first, n, w, mask)
    v[w] |= mask;
  add_delta (delta, (int) n, 0, 0);
}

void
sect_write (struct sect_bits *sb, uint32_t first, uint32_t n,
            struct sect_delta *delta)
{
  uint64_t *v = bm_words (sb, SECT_BM_V), *d = bm_words (sb, SECT_BM_D);
  int nv = 0, nd = 0;

  assert_from (sb, first, n,
               ST (SECT_ABSENT) | ST (SECT_CLEAN) | ST (SECT_DIRTY) |
                 ST (SECT_WRITEBACK) | ST (SECT_REDIRTIED));
  FOR_EACH_WORD (sb, first, n, w, mask) {
    nv += popcount64 (mask & ~v[w]);
    nd += popcount64 (mask & ~d[w]);
    v[w] |= mask;
    d[w] |= mask;
  }
  add_delta (delta, nv, nd, 0);
}

void
sect_wb_start (struct sect_bits *sb, uint32_t first, uint32_t n,
               struct sect_delta *delta)
{
  uint64_t *d = bm_words (sb, SECT_BM_D), *wb = bm_words (sb, SECT_BM_W);
  int nd = 0;

  assert_from (sb, first, n, ST (SECT_DIRTY) | ST (SECT_CLEAN));
  FOR_EACH_WORD (sb, first, n, w, mask) {
    nd += popcount64 (mask & d[w]);
    d[w] &= ~mask;
    wb[w] |= mask;
  }
  add_delta (delta, 0, -nd, (int) n);
}

void
sect_wb_end (struct sect_bits *sb, uint32_t first, uint32_t n, bool ok,
             struct sect_delta *delta)
{
  uint64_t *d = bm_words (sb, SECT_BM_D), *wb = bm_words (sb, SECT_BM_W);
  int nd = 0;

  assert_from (sb, first, n, ST (SECT_WRITEBACK) | ST (SECT_REDIRTIED));
  FOR_EACH_WORD (sb, first, n, w, mask) {
    wb[w] &= ~mask;
    if (!ok) {
      nd += popcount64 (mask & ~d[w]);
      d[w] |= mask;
    }
  }
  add_delta (delta, 0, nd, -(int) n);
}

void
sect_drop (struct sect_bits *sb, uint32_t first, uint32_t n,
           struct sect_delta *delta)
{
  uint64_t *v = bm_words (sb, SECT_BM_V), *d = bm_words (sb, SECT_BM_D);
  int nv = 0, nd = 0;

  assert_from (sb, first, n,
               ST (SECT_ABSENT) | ST (SECT_CLEAN) | ST (SECT_DIRTY));
  FOR_EACH_WORD (sb, first, n, w, mask) {
    nv += popcount64 (mask & v[w]);
    nd += popcount64 (mask & d[w]);
    v[w] &= ~mask;
    d[w] &= ~mask;
  }
  add_delta (delta, -nv, -nd, 0);
}

void
sect_clean (struct sect_bits *sb, uint32_t first, uint32_t n,
            struct sect_delta *delta)
{
  uint64_t *d = bm_words (sb, SECT_BM_D);
  int nd = 0;

  assert_from (sb, first, n, ST (SECT_CLEAN) | ST (SECT_DIRTY));
  FOR_EACH_WORD (sb, first, n, w, mask) {
    nd += popcount64 (mask & d[w]);
    d[w] &= ~mask;
  }
  add_delta (delta, 0, -nd, 0);
}

void
sect_apply (struct sect_bits *sb, enum sect_op op, uint32_t i,
            struct sect_delta *delta)
{
  switch (op) {
  case SECT_OP_FILL_DONE: sect_fill_done (sb, i, 1, delta); break;
  case SECT_OP_WRITE: sect_write (sb, i, 1, delta); break;
  case SECT_OP_WB_START: sect_wb_start (sb, i, 1, delta); break;
  case SECT_OP_WB_END_OK: sect_wb_end (sb, i, 1, true, delta); break;
  case SECT_OP_WB_END_ERR: sect_wb_end (sb, i, 1, false, delta); break;
  case SECT_OP_DROP: sect_drop (sb, i, 1, delta); break;
  case SECT_OP_CLEAN: sect_clean (sb, i, 1, delta); break;
  default: abort ();
  }
}

bool
sect_check (const struct sect_bits *sb)
{
  const uint64_t *v = bm_words (sb, SECT_BM_V);
  const uint64_t *d = bm_words (sb, SECT_BM_D);
  const uint64_t *wb = bm_words (sb, SECT_BM_W);
  uint64_t tail = sb->nsect % 64 ? ~((UINT64_C (1) << (sb->nsect % 64)) - 1)
                                 : 0;

  for (uint32_t w = 0; w < sb->words; w++) {
    if ((d[w] | wb[w]) & ~v[w])
      return false;
    if (w == sb->words - 1 && ((v[w] | d[w] | wb[w]) & tail))
      return false;
  }
  return true;
}

/* Appends "name:a-b,c" lists of set sectors for one bitmap. */
static void
dump_bm (const struct sect_bits *sb, enum sect_bitmap bm, const char *name,
         char *buf, unsigned len, unsigned *pos)
{
  uint32_t i = 0;
  bool first = true;

  *pos += (unsigned) snprintf (buf + *pos, *pos < len ? len - *pos : 0,
                               "%s%s:", *pos ? " " : "", name);
  while ((i = sect_find (sb, bm, true, i, sb->nsect)) < sb->nsect) {
    uint32_t j = sect_find (sb, bm, false, i, sb->nsect);
    if (*pos < len)
      *pos += (unsigned) snprintf (buf + *pos, len - *pos, "%s%u-%u",
                                   first ? "" : ",", i, j - 1);
    first = false;
    i = j;
  }
  if (first && *pos < len)
    *pos += (unsigned) snprintf (buf + *pos, len - *pos, "-");
}

void
sect_dump (const struct sect_bits *sb, char *buf, unsigned len)
{
  unsigned pos = 0;

  if (len == 0)
    return;
  buf[0] = '\0';
  dump_bm (sb, SECT_BM_V, "V", buf, len, &pos);
  dump_bm (sb, SECT_BM_D, "D", buf, len, &pos);
  dump_bm (sb, SECT_BM_W, "W", buf, len, &pos);
}
