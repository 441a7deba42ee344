/* subpage unit tests: races and ordering bugs found by a review of the
 * journal (cache/journal.c, cache/request.c's journaled paths).  Each
 * test forces its interleaving with the fake backend's hold gates, the
 * fake journal device's gates and the cache's park points; none sleeps.
 * The comment above each test gives the interleaving and the promise
 * (docs/guarantees.md) it broke before the fix (fits_now checked again
 * at each write; wb_end as the limit; jnl_note_growth).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "fake-jdev.h"
#include "helpers.h"
#include "jformat.h"

#define JSIZE (JNL_DATA_OFFSET + 4 * MiB)
#define IDENT "file:/test/image"

struct jt {
  struct tcache t;
  struct fake_jdev *j;
};

static struct cache_config
jconfig (void)
{
  struct cache_config cfg = test_config ();

  cfg.cache_size = 2 * MiB;
  return cfg;
}

/* A cache over a fresh backend with journal device J (freed by
 * jt_close); write-back runs in the caller (no kick hook).
 */
static void
jt_open_cfg (struct jt *x, const struct cache_config *cfg, struct fake_jdev *j)
{
  tc_open (&x->t, cfg);
  cache_set_kick (x->t.c, NULL, NULL);
  x->j = j;
  assert_int_equal (cache_journal_open (x->t.c, fake_jdev_dev (j), IDENT, true),
                    0);
  assert_int_equal (cache_journal_recover (x->t.c), 0);
}

static void
jt_open (struct jt *x)
{
  struct cache_config cfg = jconfig ();

  jt_open_cfg (x, &cfg, fake_jdev_new (JSIZE));
}

static void
jt_close (struct jt *x)
{
  tc_close (&x->t);
  fake_jdev_free (x->j);
  x->j = NULL;
}

static void *
drain_thread (void *c)
{
  cache_journal_drain (c);
  return NULL;
}

/* ---- 1: a shrink between the drainer's end check and its write ----
 *
 * drain_locked checks each record against the image's end once, as the
 * step found it (end = ROUND_UP (size_now) after cache_refresh_size),
 * and then hands it to io_add.  The write itself runs later (io_issue,
 * after the writes before it have been issued, possibly after waiting
 * for an overlapping one or for a jio worker), and apply() clips the
 * record to size_now() AT THAT TIME: "if (r->offset >= size) return 0;
 * count = MIN (count, size - r->offset)".  So a shrink that lands
 * between the check and the write makes apply() write nothing (or a
 * part) and report success.  The step then counts the record as
 * drained: mtail moves past it, clean_pages clears the page's D bits
 * (resize_locked had just kept them as "past the end, not written
 * back"), and write_tail frees its journal space.  The data is now
 * nowhere: not on the image (it was never written), not in the journal
 * (the tail moved past it), not dirty in memory (cleaned; the next
 * resize drops the CLEAN sectors past the old end).
 *
 * Threads: T1 = drainer (cache_journal_drain), T2 = test thread acting
 * as the backend shrinking + any thread calling cache_refresh_size (a
 * new connection's get_size, a write-back step).
 *   T1  refresh: size 4 MiB; end = 4 MiB; scan: rec A (page 0) ok,
 *       rec B (3 MiB) ok against end; io_add (B) issues A: pwrite held
 *   T2  the image is truncated to 2 MiB; cache_refresh_size: B's page
 *       stays dirty ("not written back yet"), size_now = 2 MiB
 *   T1  A written; B issued: apply sees offset 3 MiB >= 2 MiB, returns
 *       0 without writing; backend flush; mtail past B; page of B
 *       cleaned; superblock written: B's record is gone
 *   T2  the image grows back to 4 MiB: 3 MiB reads as zeroes
 *
 * Broken promise (guarantees.md, "A change of the image's size", with
 * journal=): "data acknowledged past the new end is likewise neither
 * written nor dropped: it stays in the journal (and dirty in memory),
 * write-back from the journal stops at it until the image grows back";
 * and rule 14 (journal space reused only after the writes it holds are
 * on the image).  The write was covered by a flush, so this is data
 * loss of flushed data.
 */
static void
test_shrink_between_end_check_and_apply (void **state)
{
  struct jt x = { .j = NULL };
  pthread_t th;
  struct cache_stats st;
  (void) state;

  jt_open (&x);
  tc_quiet_errors = true;
  assert_int_equal (write_pattern (&x.t, 0, 4096, 1, 0), 0);
  assert_int_equal (write_pattern (&x.t, 3 * MiB, 4096, 2, 0), 0);
  assert_int_equal (cache_flush (x.t.c), 0);

  fake_hold (x.t.f, FAKE_WRITE, true);
  assert_int_equal (pthread_create (&th, NULL, drain_thread, x.t.c), 0);
  /* Record A's write is held: record B has passed the end check. */
  WAIT_FOR (fake_held (x.t.f, FAKE_WRITE) == 1);
  fake_resize (x.t.f, 2 * MiB);
  assert_int_equal (cache_refresh_size (x.t.c), 2 * MiB);
  /* resize_locked kept B's sectors: dirty, past the end. */
  assert_true (sectors_are (&x.t, 3 * MiB, 4096, V | D));
  fake_hold (x.t.f, FAKE_WRITE, false);
  pthread_join (th, NULL);

  st = stats (x.t.c);
  fprintf (stderr,
           "  after the drain: journal pending %llu bytes; 3 MiB dirty: %s\n",
           (unsigned long long) st.journal_pending_bytes,
           sectors_are (&x.t, 3 * MiB, 4096, V | D) ? "yes" : "no");
  /* The image grows back; write-back resumes. */
  fake_resize (x.t.f, 4 * MiB);
  assert_int_equal (cache_refresh_size (x.t.c), 4 * MiB);
  while (cache_journal_drain (x.t.c) > 0)
    ;
  assert_true (read_is_pattern (&x.t, 0, 4096, 1));
  /* FAILS: the flushed write at 3 MiB is lost (reads as zeroes). */
  assert_true (read_is_pattern (&x.t, 3 * MiB, 4096, 2));
  assert_true (disk_is_pattern (&x.t, 3 * MiB, 4096, 2));
  tc_quiet_errors = false;
  jt_close (&x);
}

/* ---- 2: the sector cut by a shrunk end ----
 *
 * Not a race: the drainer's end check rounds the image's end UP to a
 * sector (end = ROUND_UP (size_now, sector)), so a record of the
 * sector that a new, unaligned end cuts passes, and apply() clips it
 * to size_now: the bytes of that sector past the end are neither
 * written nor kept.  The record is drained, the sector cleaned, and
 * when the image grows back those bytes read as zeroes.  Without a
 * journal, resize_locked keeps exactly this sector dirty (cut_held,
 * "unless it held data written before this change, which may reach past
 * the end"); the journal's drainer ignores that.  jnl_replay has the
 * same rounding (and jrec_apply the same clip), so recovery drops
 * them too and then starts a new log.
 *
 * Broken promise: as in test 1 ("neither written nor dropped").
 */
static void
test_cut_sector_bytes_past_end_dropped (void **state)
{
  struct jt x = { .j = NULL };
  (void) state;

  jt_open (&x);
  tc_quiet_errors = true;
  assert_int_equal (write_pattern (&x.t, 2 * MiB, 512, 3, 0), 0);
  assert_int_equal (cache_flush (x.t.c), 0);
  fake_resize (x.t.f, 2 * MiB + 100);
  (void) cache_journal_drain (x.t.c);
  fake_resize (x.t.f, 4 * MiB);
  assert_int_equal (cache_refresh_size (x.t.c), 4 * MiB);
  while (cache_journal_drain (x.t.c) > 0)
    ;
  assert_true (read_is_pattern (&x.t, 2 * MiB, 100, 3));
  /* FAILS: bytes 100..511 of the sector, flushed, read as zeroes. */
  assert_true (read_is_pattern (&x.t, 2 * MiB + 100, 412, 3));
  tc_quiet_errors = false;
  jt_close (&x);
}

/* ---- 3: a growth between a cut-sector write and its drain ----
 *
 * The image is 4 MiB - 24 bytes: its last sector is cut by the end.  A
 * client writes that sector's 488 bytes; the record's payload is the
 * whole sector as memory had it at the write, so its last 24 bytes are
 * the zeroes a fill put past the end.  Then the image grows (another
 * program appended to the file: bytes X past the old end), and
 * cache_refresh_size -> resize_locked -> patch_cut_sector copies X from
 * the image into the cached sector, so reads return X there ("What the
 * cache held past an old end is read again after a growth").  The
 * drainer then writes the record captured BEFORE the growth: the whole
 * sector, its last 24 bytes zeroes, over X on the image, and cleans the
 * page.  Memory says X, the image says zeroes; once the page is evicted
 * reads return zeroes that no request wrote.  Without a journal the
 * write-back copies the sector from memory at write-back time (X), so
 * the image and memory agree.
 *
 * Interleaving: T1 client write (record placed, payload = sector with
 * zeroes past the old end); T2 growth + cache_refresh_size (patch into
 * memory only); T3 drainer: apply (record) writes the stale tail bytes
 * over the image's; clean_pages.
 *
 * Broken promise (guarantees.md, "Requests that run at the same time"):
 * a read returns "the value of a write, zero or trim ... or the image's
 * earlier content; never bytes that no request wrote"; and "A change of
 * the image's size": what the image holds past an old end is read after
 * a growth.
 */
static void
test_growth_then_drain_of_cut_sector (void **state)
{
  struct jt x = { .j = NULL };
  struct cache_config cfg = jconfig ();
  const uint64_t old = 4 * MiB - 24;
  unsigned char *buf = malloc (3 * MiB);
  (void) state;

  assert_non_null (buf);
  cfg.size = old;
  jt_open_cfg (&x, &cfg, fake_jdev_new (JSIZE));
  /* The cut sector's 488 bytes, written and flushed (in the journal). */
  assert_int_equal (write_pattern (&x.t, 4 * MiB - 512, 488, 4, 0), 0);
  assert_int_equal (cache_flush (x.t.c), 0);
  /* Another program appends 24 bytes of X: the image grows. */
  fake_resize (x.t.f, 4 * MiB);
  pattern (buf, 24, old, 5);
  fake_disk_write (x.t.f, buf, 24, old);
  assert_int_equal (cache_refresh_size (x.t.c), 4 * MiB);
  assert_true (read_is_pattern (&x.t, old, 24, 5)); /* patched: X */
  /* Write-back of the journal. */
  while (cache_journal_drain (x.t.c) > 0)
    ;
  assert_true (read_is_pattern (&x.t, 4 * MiB - 512, 488, 4));
  /* Evict it: read 3 MiB of other pages through the 2 MiB cache. */
  assert_int_equal (cache_read (x.t.c, buf, (uint32_t) (3 * MiB), 0), 0);
  /* FAILS: the image holds zeroes where X was; reads now return them. */
  assert_true (read_is_pattern (&x.t, old, 24, 5));
  assert_true (disk_is_pattern (&x.t, old, 24, 5));
  jt_close (&x);
  free (buf);
}

int
main (void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test (test_shrink_between_end_check_and_apply),
    cmocka_unit_test (test_cut_sector_bytes_past_end_dropped),
    cmocka_unit_test (test_growth_then_drain_of_cut_sector),
  };

  return cmocka_run_group_tests (tests, NULL, NULL);
}
