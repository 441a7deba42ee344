/* subpage: per-sector state of one cache page.
 *
 * This header is the single source of truth for the sector state
 * machine; docs/ links here instead of copying it.
 *
 * 1. Bit layout.  Each page carries three sub-bitmaps of nsect bits
 *    (one bit per sector), stored one after the other in 64-bit words:
 *
 *      |v|v|...|v|  |d|d|...|d|  |w|w|...|w|
 *       SECT_BM_V    SECT_BM_D    SECT_BM_W     (words_per_bitmap each)
 *
 * 2. States.
 *
 *      name        V D W   meaning
 *      ABSENT      0 0 0   no data in memory; the backend holds it
 *      CLEAN       1 0 0   memory == backend
 *      DIRTY       1 1 0   memory newer than backend; must reach it by
 *                          the next flush
 *      WRITEBACK   1 0 1   a backend write of a snapshot is in flight
 *      REDIRTIED   1 1 1   written again while its snapshot is in flight
 *      (D or W without V is illegal.)
 *
 * 3. Diagram.
 *
 *      ABSENT <----drop----- CLEAN <-------wb_end(ok)--------+
 *        | ^  \               |  ^ \                          |
 *        | |   +-fill_done----+  |  +---wb_start (FUA)--+     |
 *        | |                     |                      v     |
 *        | +----drop------ DIRTY +------------------ WRITEBACK
 *        |                 ^  |  \--wb_start-------->  ^  |
 *        +-----write-------+  |                        |  | write
 *                             +<-----wb_end(err)-------+  v
 *                             +<-----wb_end------------ REDIRTIED
 *
 * 4. Transitions, and the only function that performs each:
 *      ABSENT    -> CLEAN      [sect_fill_done]
 *      ABSENT    -> DIRTY      [sect_write]   whole-sector write, no read
 *      CLEAN     -> DIRTY      [sect_write]
 *      DIRTY     -> DIRTY      [sect_write]
 *      WRITEBACK -> REDIRTIED  [sect_write]   writers never wait
 *      REDIRTIED -> REDIRTIED  [sect_write]
 *      DIRTY     -> WRITEBACK  [sect_wb_start] data copied in the same
 *                                              critical section
 *      CLEAN     -> WRITEBACK  [sect_wb_start] FUA/write-through rewrite
 *      WRITEBACK -> CLEAN      [sect_wb_end ok]
 *      WRITEBACK -> DIRTY      [sect_wb_end err]  data kept, retried later
 *      REDIRTIED -> DIRTY      [sect_wb_end ok or err]
 *      CLEAN     -> ABSENT     [sect_drop]    eviction, trim, zero
 *      DIRTY     -> ABSENT     [sect_drop]    trim, zero (data superseded)
 *      ABSENT    -> ABSENT     [sect_drop]
 *      DIRTY     -> CLEAN      [sect_clean]   journal=: every record
 *                                             of the page is on the
 *                                             backend and flushed
 *      CLEAN     -> CLEAN      [sect_clean]
 *    Every other edge is illegal and fails CACHE_ASSERT: in particular
 *    wb_start of a WRITEBACK or REDIRTIED sector (two writes of one
 *    sector in flight could land in either order: invariant 3), drop of
 *    a sector under W (an old write-back would land after a trim:
 *    invariant 8), and write of an ABSENT sector that is only partly
 *    covered (the caller must fill it first: sect_write takes whole
 *    sectors).
 *
 * 5. Locking and invariants.  The caller holds the owning page's lock
 *    for every sect_* call (page_lock, in cache/internal.h); these functions
 *    touch bits only, never data, and never block.  sect_check()
 *    verifies: no D or W bit without V; no bit at or past nsect.
 *    Writers never wait for write-back: a write to a WRITEBACK sector
 *    makes it REDIRTIED and the in-flight snapshot stays as it was.
 */
#ifndef SUBPAGE_SECTOR_H
#define SUBPAGE_SECTOR_H

#include <stdbool.h>
#include <stdint.h>

enum sect_bitmap { SECT_BM_V, SECT_BM_D, SECT_BM_W, SECT_NR_BITMAPS };

enum sect_state {
  SECT_ABSENT,
  SECT_CLEAN,
  SECT_DIRTY,
  SECT_WRITEBACK,
  SECT_REDIRTIED,
  SECT_ILLEGAL, /* D or W without V: never valid */
};

/* The bitmaps of one page.  bits points to SECT_NR_BITMAPS * words
 * uint64_t words, owned by the page.
 */
struct sect_bits {
  uint64_t *bits;
  uint32_t nsect;
  uint32_t words; /* words per bitmap = DIV_ROUND_UP (nsect, 64) */
};

/* Counts of sectors whose bits changed, for the cache's byte counters. */
struct sect_delta {
  int32_t v, d, w;
};

const char *sect_state_name (enum sect_state s);
enum sect_state sect_get (const struct sect_bits *sb, uint32_t i);
bool sect_test (const struct sect_bits *sb, enum sect_bitmap bm, uint32_t i);
/* Number of sectors in [first, first+n) with bitmap BM set. */
uint32_t sect_count (const struct sect_bits *sb, enum sect_bitmap bm,
                     uint32_t first, uint32_t n);
/* Finds the next sector >= from and < end with bitmap BM set (or, if
 * want is false, clear).  Returns end if none.
 */
uint32_t sect_find (const struct sect_bits *sb, enum sect_bitmap bm, bool want,
                    uint32_t from, uint32_t end);
/* Next sector >= from and < end that is DIRTY (D and not W); end if none. */
uint32_t sect_find_dirty_idle (const struct sect_bits *sb, uint32_t from,
                               uint32_t end);
bool sect_any (const struct sect_bits *sb, enum sect_bitmap bm);
/* The number of sectors with V, with D and with W set in the whole
 * page: sect_count of each bitmap in one pass, for page_check.
 */
void sect_totals (const struct sect_bits *sb, uint32_t *nv, uint32_t *nd,
                  uint32_t *nw);

/* Transitions over [first, first+n).  Each asserts that every sector
 * in the range is in a state its edge leaves from, and adds what it
 * changed to *delta (which may be NULL).
 */
void sect_fill_done (struct sect_bits *sb, uint32_t first, uint32_t n,
                     struct sect_delta *delta); /* ABSENT only */
void sect_write (struct sect_bits *sb, uint32_t first, uint32_t n,
                 struct sect_delta *delta);
void sect_wb_start (struct sect_bits *sb, uint32_t first, uint32_t n,
                    struct sect_delta *delta); /* DIRTY or CLEAN */
void sect_wb_end (struct sect_bits *sb, uint32_t first, uint32_t n, bool ok,
                  struct sect_delta *delta); /* W set */
void sect_drop (struct sect_bits *sb, uint32_t first, uint32_t n,
                struct sect_delta *delta); /* W clear */
void sect_clean (struct sect_bits *sb, uint32_t first, uint32_t n,
                 struct sect_delta *delta); /* DIRTY or CLEAN */

/* The transition table, as data: sect_apply performs one edge of it
 * and tests/unit/test-sector.c walks it, applying every op to every
 * state and checking the outcome against the table (and that every edge
 * the table does not list fails CACHE_ASSERT), so the comment above,
 * the code and the tests cannot drift apart.
 */
enum sect_op {
  SECT_OP_FILL_DONE,
  SECT_OP_WRITE,
  SECT_OP_WB_START,
  SECT_OP_WB_END_OK,
  SECT_OP_WB_END_ERR,
  SECT_OP_DROP,
  SECT_OP_CLEAN,
  SECT_NR_OPS
};
struct sect_edge {
  enum sect_state from;
  enum sect_op op;
  enum sect_state to;
  const char *fn;
};
extern const struct sect_edge sect_edges[];
extern const unsigned sect_nr_edges;
const char *sect_op_name (enum sect_op op);
/* Applies OP to sector I (a 1-sector range). */
void sect_apply (struct sect_bits *sb, enum sect_op op, uint32_t i,
                 struct sect_delta *delta);

/* True if the bitmaps are consistent: no D or W bit without V, no bit
 * at or past nsect.  It prints nothing: page_check, its caller, dumps
 * the page through the cache's log (page_dump) when it fails.
 */
bool sect_check (const struct sect_bits *sb);
/* Prints every bitmap as a run-length list into buf. */
void sect_dump (const struct sect_bits *sb, char *buf, unsigned len);

#endif /* SUBPAGE_SECTOR_H */
