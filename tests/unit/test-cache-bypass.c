/* subpage unit tests: large sequential writes around the journal
 * (sequential-cutoff=, cache/bypass.c) over the fake backend and the
 * fake journal device.
 *
 * What is checked: a stream past the cutoff goes to the backend and
 * leaves only markers in the journal, other writes do not; the write
 * is a barrier (every earlier epoch on the backend and flushed before
 * it); no older journaled data comes back over it, in memory, on the
 * backend after write-back, or after a crash and a replay, with writes
 * of the range in flight around it; a flush after it flushes the
 * backend; a failed backend write returns its error and leaves no
 * marker.
 */
#include <errno.h>
#include <pthread.h>
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
#include "journal.h" /* BARRIER_CHEAP_RECORDS */

#define JSIZE (JNL_DATA_OFFSET + 4 * MiB)
#define IDENT "file:/test/image"
#define CUTOFF (128 * KiB)
#define CHUNK (64 * KiB)

struct bt {
  struct tcache t;
  struct fake_jdev *j;
  struct cache_stream *s;
};

/* A cache over a backend holding DISK (NULL: zeroes) with journal J
 * (taken over), recovered, with a cutoff of CUTOFF.
 */
static void
bt_open_disk (struct bt *x, struct fake_jdev *j, bool created,
              const unsigned char *disk)
{
  struct cache_config cfg = test_config ();

  cfg.cache_size = 2 * MiB;
  tc_open (&x->t, &cfg);
  cache_set_kick (x->t.c, NULL, NULL); /* write-back in the caller */
  if (disk)
    fake_disk_write (x->t.f, disk, cfg.size, 0);
  x->j = j;
  assert_int_equal (
    cache_journal_open (x->t.c, fake_jdev_dev (j), IDENT, created), 0);
  assert_int_equal (cache_journal_recover (x->t.c), 0);
  cache_journal_sequential_cutoff (x->t.c, CUTOFF);
  x->s = cache_stream_new ();
  assert_non_null (x->s);
}

static void
bt_open (struct bt *x)
{
  bt_open_disk (x, fake_jdev_new (JSIZE), true, NULL);
}

static void
bt_close (struct bt *x)
{
  cache_stream_free (x->s);
  tc_close (&x->t);
  fake_jdev_free (x->j);
}

/* Writes pattern SEED at [off, off+n) through the stream of X. */
static int
swrite (struct bt *x, uint64_t off, uint32_t n, unsigned seed, uint32_t flags)
{
  unsigned char *buf = malloc (n);
  int r;

  assert_non_null (buf);
  pattern (buf, n, off, seed);
  r = cache_write_stream (x->t.c, x->s, buf, n, off, flags);
  free (buf);
  return r;
}

/* Starts a run at OFF - 2 * CHUNK (journaled: the run is below the
 * cutoff) so that the stream's next write, at OFF, goes around the
 * journal.
 */
static void
start_run (struct bt *x, uint64_t off, unsigned seed)
{
  uint64_t before = stats (x->t.c).journal_bypass_writes;

  assert_int_equal (swrite (x, off - 2 * CHUNK, CHUNK, seed, 0), 0);
  assert_int_equal (swrite (x, off - CHUNK, CHUNK, seed, 0), 0);
  assert_int_equal (stats (x->t.c).journal_bypass_writes, before);
}

/* Records of each type in the log from the durable tail (the device's
 * latest contents).
 */
static void
log_types (struct bt *x, uint64_t n[6])
{
  const struct jdev *dev = fake_jdev_dev (x->j);
  struct jsb sb;
  struct jscan s;
  struct jrec r;

  memset (n, 0, 6 * sizeof n[0]);
  assert_int_equal (jsb_read (dev, &sb), 0);
  jscan_init (&s, dev, &sb);
  while (jscan_next (&s, &r) == 1)
    n[r.type < 6 ? r.type : 0]++;
  jscan_free (&s);
}

/* Recovers a copy of the backend as it is now with the journal as a
 * crash now could leave it (SEED), and returns the cache (to read).
 */
static void
bt_crash (struct bt *x, uint64_t seed, struct bt *y)
{
  uint64_t size = test_config ().size;
  unsigned char *disk = malloc (size);
  uint8_t *img = fake_jdev_crash (x->j, seed);

  assert_non_null (disk);
  fake_disk_read (x->t.f, disk, size, 0);
  bt_open_disk (y, fake_jdev_from_image (img, JSIZE), false, disk);
  fake_jdev_free_image (img);
  free (disk);
}

/* Crash images of X with seeds 0 .. NSEEDS-1 (bt_crash): in how many
 * does [off, off+n) not read back as pattern SEED after recovery?  Each
 * one is printed.
 */
static unsigned
crashes_lose (struct bt *x, unsigned nseeds, uint64_t off, uint32_t n,
              unsigned seed)
{
  unsigned lost = 0;

  for (uint64_t k = 0; k < nseeds; k++) {
    struct bt y = { .s = NULL };

    bt_crash (x, k, &y);
    if (!read_is_pattern (&y.t, off, n, seed)) {
      lost++;
      print_message ("crash seed %llu: older data over %llu+%u after "
                     "recovery\n",
                     (unsigned long long) k, (unsigned long long) off, n);
    }
    bt_close (&y);
  }
  return lost;
}

static void
drain_all (struct bt *x)
{
  while (cache_journal_drain (x->t.c) > 0)
    ;
}

/* ---- tests ---- */

/* A stream past the cutoff: its writes reach the backend, the journal
 * holds only their markers, and the bytes journaled are a small part
 * of the stream.
 */
static void
test_stream_bypasses (void **state)
{
  struct bt x = { .s = NULL };
  uint64_t n[6];
  struct cache_stats st;
  struct fake_jdev_counts jc0, jc;
  (void) state;

  bt_open (&x);
  fake_jdev_get_counts (x.j, &jc0);
  for (unsigned k = 0; k < 32; k++) /* 2 MiB */
    assert_int_equal (swrite (&x, k * CHUNK, CHUNK, 1, 0), 0);
  st = stats (x.t.c);
  /* The first two writes make the run reach the cutoff. */
  assert_int_equal (st.journal_bypass_writes, 30);
  assert_int_equal (st.journal_bypass_bytes, 30 * CHUNK);
  assert_int_equal (st.client_writes, 32);
  assert_int_equal (st.client_write_bytes, 2 * MiB);
  assert_true (st.journal_bytes < 2 * CHUNK + 64 * KiB);
  assert_true (disk_is_pattern (&x.t, 2 * CHUNK, 30 * CHUNK, 1));
  assert_true (read_is_pattern (&x.t, 0, 2 * MiB, 1));
  log_types (&x, n);
  assert_int_equal (n[JREC_BYPASS], 30);
  assert_int_equal (n[JREC_DATA], 2);
  /* No journal sync on the way but the superblock's, for its flag. */
  fake_jdev_get_counts (x.j, &jc);
  assert_int_equal (jc.syncs, jc0.syncs + 1);
  /* A misaligned write of the run: its partial sectors are journaled,
   * its whole sectors are not.
   */
  assert_int_equal (swrite (&x, 2 * MiB, CHUNK + 100, 2, 0), 0);
  assert_int_equal (stats (x.t.c).journal_bypass_bytes, 31 * CHUNK);
  assert_int_equal (swrite (&x, 2 * MiB + CHUNK + 100, 1000, 2, 0), 0);
  assert_true (disk_is_pattern (&x.t, 2 * MiB + CHUNK + 512, 512, 2));
  assert_true (read_is_pattern (&x.t, 2 * MiB, CHUNK + 1100, 2));
  drain_all (&x);
  assert_true (disk_is_pattern (&x.t, 0, 2 * MiB, 1));
  assert_true (disk_is_pattern (&x.t, 2 * MiB, CHUNK + 1100, 2));
  bt_close (&x);
}

/* Writes that do not continue each other, or without a stream, or
 * with the cutoff off, go through the journal.
 */
static void
test_not_sequential_not_bypassed (void **state)
{
  struct bt x = { .s = NULL };
  uint64_t n[6];
  (void) state;

  bt_open (&x);
  for (unsigned k = 0; k < 16; k++) /* every other chunk */
    assert_int_equal (swrite (&x, 2 * k * CHUNK, CHUNK, 1, 0), 0);
  for (unsigned k = 0; k < 8; k++) /* backwards */
    assert_int_equal (swrite (&x, 2 * MiB - (k + 1) * CHUNK, CHUNK, 2, 0), 0);
  for (unsigned k = 0; k < 8; k++) /* no stream */
    assert_int_equal (write_pattern (&x.t, 2 * MiB + k * CHUNK, CHUNK, 3, 0),
                      0);
  cache_journal_sequential_cutoff (x.t.c, 0);
  for (unsigned k = 0; k < 8; k++) /* cutoff 0 */
    assert_int_equal (swrite (&x, 3 * MiB + k * CHUNK, CHUNK, 4, 0), 0);
  assert_int_equal (stats (x.t.c).journal_bypass_writes, 0);
  log_types (&x, n);
  assert_int_equal (n[JREC_BYPASS], 0);
  bt_close (&x);
}

/* Writes of a stream that reach it out of order (requests run in
 * parallel): a write that overtook the one before it is journaled, and
 * the run goes on once the write it overtook arrives.
 */
static void
test_stream_out_of_order (void **state)
{
  static const unsigned order[] = { 0, 1, 3,  2,  4,  5,  7,  6,
                                    8, 9, 11, 10, 12, 13, 15, 14 };
  static const unsigned late[] = { 48, 50, 49, 51 };
  struct bt x = { .s = NULL };
  (void) state;

  bt_open (&x);
  for (unsigned k = 0; k < 16; k++)
    assert_int_equal (swrite (&x, order[k] * CHUNK, CHUNK, 1, 0), 0);
  /* Journaled: 0 and 1 (below the cutoff); each overtaking write is
   * part of the run, which is past the cutoff.
   */
  assert_int_equal (stats (x.t.c).journal_bypass_writes, 14);
  /* A run that starts where the stream will pass (an older write of its
   * own) does not stop the stream when it writes there again.
   */
  assert_int_equal (swrite (&x, 20 * CHUNK, CHUNK, 2, 0), 0);
  for (unsigned k = 16; k < 24; k++)
    assert_int_equal (swrite (&x, k * CHUNK, CHUNK, 1, 0), 0);
  /* 20 too: a little ahead of the run, which is past the cutoff. */
  assert_int_equal (stats (x.t.c).journal_bypass_writes, 23);
  /* Overtaken before the cutoff (far from the run): 50 starts a run of
   * its own (journaled), which takes over the run's bytes when 49
   * arrives, so 51 goes around.
   */
  for (unsigned k = 0; k < 4; k++)
    assert_int_equal (swrite (&x, late[k] * CHUNK, CHUNK, 3, 0), 0);
  assert_int_equal (stats (x.t.c).journal_bypass_writes, 24);
  assert_true (read_is_pattern (&x.t, 48 * CHUNK, 4 * CHUNK, 3));
  assert_true (read_is_pattern (&x.t, 0, 24 * CHUNK, 1));
  assert_int_equal (cache_flush (x.t.c), 0);
  drain_all (&x);
  assert_true (disk_is_pattern (&x.t, 0, 24 * CHUNK, 1));
  bt_close (&x);
}

/* Rule 13: with an earlier epoch's records not drained, the write
 * around the journal reaches the backend only after them and a backend
 * flush.  Epoch 0 writes [0, 64K), epoch 1 the stream at 1 MiB.
 */
static void
test_barrier_order (void **state)
{
  struct bt x = { .s = NULL };
  long w0, f, b;
  (void) state;

  bt_open (&x);
  assert_int_equal (write_pattern (&x.t, 0, CHUNK, 1, 0), 0);
  assert_int_equal (cache_flush (x.t.c), 0);
  assert_int_equal (counts (&x.t).writes, 0); /* only in the journal */
  start_run (&x, MiB, 2);
  fake_reset_counts (x.t.f);
  assert_int_equal (swrite (&x, MiB, CHUNK, 2, 0), 0);
  assert_int_equal (stats (x.t.c).journal_bypass_writes, 1);
  w0 = fake_log_last (x.t.f, FAKE_WRITE, 0, CHUNK);
  b = fake_log_first (x.t.f, FAKE_WRITE, MiB, CHUNK);
  assert_true (w0 >= 0);
  assert_true (b > w0);
  /* A flush between them. */
  for (f = w0 + 1; f < b; f++) {
    struct fake_event ev;

    assert_true (fake_event (x.t.f, (size_t) f, &ev));
    if (ev.op == FAKE_FLUSH && ev.err == 0)
      break;
  }
  if (f >= b) {
    fake_log_dump (x.t.f);
    fail_msg ("no backend flush between epoch 0 and the bypassed write");
  }
  /* The journaled writes of the run's current epoch were not drained
   * first (they do not overlap): only epoch 0.
   */
  assert_int_equal (
    fake_log_first (x.t.f, FAKE_WRITE, MiB - 2 * CHUNK, 2 * CHUNK), -1);
  /* journal-order=any: no barrier for an earlier epoch. */
  cache_journal_order_any (x.t.c, true);
  assert_int_equal (write_pattern (&x.t, 3 * MiB, CHUNK, 3, 0), 0);
  assert_int_equal (cache_flush (x.t.c), 0);
  fake_reset_counts (x.t.f);
  assert_int_equal (swrite (&x, MiB + CHUNK, CHUNK, 2, 0), 0);
  assert_int_equal (stats (x.t.c).journal_bypass_writes, 2);
  assert_int_equal (fake_log_first (x.t.f, FAKE_WRITE, 3 * MiB, CHUNK), -1);
  assert_int_equal (counts (&x.t).flushes, 0);
  bt_close (&x);
}

/* W, a flush, then B around the journal over W's range, and a crash:
 * recovery gives B (W is not replayed over it), for every crash image;
 * the same with W not flushed (same epoch), and with W only partly
 * overlapping B.
 */
static void
test_replay_keeps_bypassed_data (void **state)
{
  (void) state;

  for (int variant = 0; variant < 3; variant++) {
    struct bt x = { .s = NULL };
    uint64_t boff = MiB;

    bt_open (&x);
    if (variant == 2)
      assert_int_equal (write_pattern (&x.t, boff + CHUNK - 4096, 8192, 1, 0),
                        0);
    else
      assert_int_equal (write_pattern (&x.t, boff, CHUNK, 1, 0), 0);
    if (variant != 1)
      assert_int_equal (cache_flush (x.t.c), 0);
    start_run (&x, boff, 2);
    assert_int_equal (swrite (&x, boff, CHUNK, 2, 0), 0);
    assert_int_equal (stats (x.t.c).journal_bypass_writes, 1);
    assert_true (read_is_pattern (&x.t, boff, CHUNK, 2));
    assert_int_equal (cache_flush (x.t.c), 0);
    for (uint64_t seed = 0; seed < 8; seed++) {
      struct bt y = { .s = NULL };

      bt_crash (&x, seed, &y);
      if (!read_is_pattern (&y.t, boff, CHUNK, 2))
        fail_msg ("variant %d seed %llu: older data over the bypassed "
                  "range after recovery",
                  variant, (unsigned long long) seed);
      assert_true (disk_is_pattern (&y.t, boff, CHUNK, 2));
      if (variant == 2)
        assert_true (read_is_pattern (&y.t, boff + CHUNK, 4096, 1));
      bt_close (&y);
    }
    drain_all (&x);
    assert_true (disk_is_pattern (&x.t, boff, CHUNK, 2));
    assert_true (read_is_pattern (&x.t, boff, CHUNK, 2));
    bt_close (&x);
  }
}

/* The barrier waits for the durable tail, not only the drained one.
 * Two epochs are drained one batch each with no journal sync between
 * them: the first batch's tail is written and left for the next sync,
 * so the second's is not written at all (one unsynced superblock write
 * at a time), and the tail on the device is still before W.  B around
 * the journal over W's range, a flush, a crash: a barrier that took
 * "drained" for "durable" let the replay put W back over B.
 */
static void
test_barrier_needs_durable_tail (void **state)
{
  struct bt x = { .s = NULL };
  uint64_t boff = MiB;
  (void) state;

  bt_open (&x);
  /* A first write around the journal sets the log's BYPASS flag (a
   * superblock write, synced, with the tail as it is then).
   */
  start_run (&x, 2 * MiB, 4);
  assert_int_equal (swrite (&x, 2 * MiB, CHUNK, 4, 0), 0);
  assert_int_equal (write_pattern (&x.t, 3 * MiB, CHUNK, 1, 0), 0);
  assert_int_equal (cache_flush (x.t.c), 0);
  assert_int_equal (write_pattern (&x.t, boff, CHUNK, 2, 0), 0);
  assert_int_equal (cache_flush (x.t.c), 0);
  /* One batch per epoch, no idle step (it would sync the tail). */
  assert_true (cache_journal_drain (x.t.c) > 0);
  assert_true (cache_journal_drain (x.t.c) > 0);
  assert_true (disk_is_pattern (&x.t, boff, CHUNK, 2));
  start_run (&x, boff, 3);
  assert_int_equal (swrite (&x, boff, CHUNK, 3, 0), 0);
  assert_int_equal (stats (x.t.c).journal_bypass_writes, 2);
  assert_int_equal (cache_flush (x.t.c), 0);
  if (crashes_lose (&x, 4, boff, CHUNK, 3) > 0)
    fail_msg ("the replay put the drained record back over the write "
              "around the journal");
  bt_close (&x);
}

/* The barrier's NEED names a record through its page's jseq; a page
 * whose records were all drained may leave RAM clean (its node
 * dropped, jnl_page_evict), and then nothing names them.  R at BOFF in
 * the current epoch is drained, its tail written but not synced; its
 * page is evicted; B around the journal over BOFF, with FUA: NEED is
 * only closed_seq, which the durable tail already passed, so the
 * barrier returns at once.  A crash that keeps the tail before R
 * replays R over the acknowledged FUA write B.  (Before a690b4e the
 * barrier waited for the whole drained tail to be durable.)
 */
static void
test_barrier_evicted_page (void **state)
{
  struct bt x = { .s = NULL };
  uint64_t boff = MiB;
  (void) state;

  bt_open (&x);
  /* The log's BYPASS flag set, an epoch closed, everything drained and
   * the tail durable (the idle step syncs it).
   */
  start_run (&x, 3 * MiB, 4);
  assert_int_equal (swrite (&x, 3 * MiB, CHUNK, 4, 0), 0);
  assert_int_equal (write_pattern (&x.t, 3 * MiB + 2 * CHUNK, CHUNK, 1, 0), 0);
  assert_int_equal (cache_flush (x.t.c), 0);
  drain_all (&x);
  /* R, current epoch: one batch (the drainer syncs R itself), its tail
   * written and left for the next sync.
   */
  assert_int_equal (write_pattern (&x.t, boff, CHUNK, 2, 0), 0);
  assert_true (cache_journal_drain (x.t.c) > 0);
  assert_true (disk_is_pattern (&x.t, boff, CHUNK, 2));
  /* R's page, clean now, leaves RAM: read every other page. */
  {
    uint64_t ev = stats (x.t.c).evictions;

    unsigned char b[512];

    for (int pass = 0; pass < 2; pass++)
      for (uint64_t off = 0; off < 4 * MiB; off += CHUNK)
        if (off != boff)
          assert_int_equal (cache_read (x.t.c, b, sizeof b, off), 0);
    assert_true (stats (x.t.c).evictions > ev);
  }
  start_run (&x, boff, 3);
  assert_int_equal (swrite (&x, boff, CHUNK, 3, CACHE_FUA), 0);
  assert_int_equal (stats (x.t.c).journal_bypass_writes, 2);
  assert_true (disk_is_pattern (&x.t, boff, CHUNK, 3));
  bool lost = crashes_lose (&x, 8, boff, CHUNK, 3) > 0;
  bt_close (&x);
  if (lost)
    fail_msg ("an acknowledged FUA write around the journal was undone by "
              "a replay of a drained record of an evicted page");
}

struct bypass_call {
  struct bt *x;
  uint64_t off;
  unsigned seed;
  int r;
};

static void *
bypass_thread (void *arg)
{
  struct bypass_call *b = arg;

  b->r = swrite (b->x, b->off, CHUNK, b->seed, 0);
  return NULL;
}

/* Writes of the range in flight around a write B around the journal:
 * W1 placed in the log, not yet written, when B starts (B waits for it:
 * serial order W1, B); W2 started while B's backend write is in flight
 * (W2 waits for B's marker: serial order B, W2).  Memory, the backend
 * after write-back and a recovery all agree.
 */
static void
test_concurrent_writes (void **state)
{
  struct bt x = { .s = NULL };
  struct stops st;
  struct async *w1, *w2;
  struct bypass_call bc;
  pthread_t th;
  unsigned k;
  char *buf = malloc (4096);
  (void) state;

  bt_open (&x);
  start_run (&x, MiB, 5);
  stops_init (&st);
  k = stops_add (&st, "journal.placed", 1);
  cache_debug_set_park (x.t.c, stops_hook, &st);
  pattern (buf, 4096, MiB + 4096, 11);
  w1 = async_start (&x.t, ASYNC_WRITE, buf, 4096, MiB + 4096, 0);
  WAIT_FOR (stops_parked (&st, k));
  bc = (struct bypass_call){ .x = &x, .off = MiB, .seed = 12 };
  assert_int_equal (pthread_create (&th, NULL, bypass_thread, &bc), 0);
  /* B cannot reach the backend before W1's record is written. */
  assert_false (async_done (w1));
  assert_int_equal (counts (&x.t).writes, 0);
  stops_release (&st, k);
  assert_int_equal (async_join (w1), 0);
  pthread_join (th, NULL);
  assert_int_equal (bc.r, 0);
  assert_int_equal (stats (x.t.c).journal_bypass_writes, 1);
  assert_true (read_is_pattern (&x.t, MiB, CHUNK, 12));

  /* W2 while B2's backend write is held. */
  fake_hold (x.t.f, FAKE_WRITE, true);
  bc = (struct bypass_call){ .x = &x, .off = MiB + CHUNK, .seed = 13 };
  assert_int_equal (pthread_create (&th, NULL, bypass_thread, &bc), 0);
  WAIT_FOR (fake_held (x.t.f, FAKE_WRITE) == 1);
  pattern (buf, 4096, MiB + CHUNK + 8192, 14);
  w2 = async_start (&x.t, ASYNC_WRITE, buf, 4096, MiB + CHUNK + 8192, 0);
  assert_false (async_done (w2));
  fake_hold (x.t.f, FAKE_WRITE, false);
  pthread_join (th, NULL);
  assert_int_equal (bc.r, 0);
  assert_int_equal (async_join (w2), 0);
  assert_int_equal (stats (x.t.c).journal_bypass_writes, 2);
  assert_true (read_is_pattern (&x.t, MiB + CHUNK, 8192, 13));
  assert_true (read_is_pattern (&x.t, MiB + CHUNK + 8192, 4096, 14));
  assert_true (read_is_pattern (&x.t, MiB + CHUNK + 12288, CHUNK - 12288, 13));
  assert_int_equal (cache_flush (x.t.c), 0);

  for (uint64_t seed = 0; seed < 6; seed++) {
    struct bt y = { .s = NULL };

    bt_crash (&x, seed, &y);
    assert_true (read_is_pattern (&y.t, MiB, CHUNK, 12));
    assert_true (read_is_pattern (&y.t, MiB + CHUNK, 8192, 13));
    assert_true (read_is_pattern (&y.t, MiB + CHUNK + 8192, 4096, 14));
    bt_close (&y);
  }
  drain_all (&x);
  assert_true (disk_is_pattern (&x.t, MiB, CHUNK, 12));
  assert_true (disk_is_pattern (&x.t, MiB + CHUNK, 8192, 13));
  assert_true (disk_is_pattern (&x.t, MiB + CHUNK + 8192, 4096, 14));
  cache_debug_set_park (x.t.c, NULL, NULL);
  stops_destroy (&st);
  bt_close (&x);
  free (buf);
}

/* Rule 12 for a write around the journal: the flush after it flushes
 * the backend (the data is only in the backend's cache otherwise); a
 * flush with no such write since does not.  FUA goes to the backend.
 */
static void
test_flush_after_bypass (void **state)
{
  struct bt x = { .s = NULL };
  struct fake_event ev;
  uint64_t before;
  (void) state;

  bt_open (&x);
  start_run (&x, MiB, 1);
  assert_int_equal (swrite (&x, MiB, CHUNK, 1, 0), 0);
  before = counts (&x.t).flushes;
  assert_int_equal (cache_flush (x.t.c), 0);
  assert_int_equal (counts (&x.t).flushes, before + 1);
  assert_true (fake_log_last (x.t.f, FAKE_FLUSH, 0, 0) >
               fake_log_last (x.t.f, FAKE_WRITE, MiB, CHUNK));
  assert_int_equal (cache_flush (x.t.c), 0);
  assert_int_equal (counts (&x.t).flushes, before + 1);
  /* A failed backend flush fails the flush, and the next one retries. */
  assert_int_equal (swrite (&x, MiB + CHUNK, CHUNK, 1, 0), 0);
  before = counts (&x.t).flushes; /* the barrier drained the last epoch */
  fake_fail_nth (x.t.f, FAKE_FLUSH, 1, -EIO);
  assert_int_equal (cache_flush (x.t.c), -EIO);
  assert_int_equal (cache_flush (x.t.c), 0);
  assert_int_equal (counts (&x.t).flushes, before + 1);
  /* FUA. */
  assert_int_equal (swrite (&x, MiB + 2 * CHUNK, CHUNK, 1, CACHE_FUA), 0);
  assert_true (fake_event (
    x.t.f, (size_t) fake_log_last (x.t.f, FAKE_WRITE, MiB + 2 * CHUNK, CHUNK),
    &ev));
  assert_true (ev.flags & CACHE_FUA);
  assert_int_equal (stats (x.t.c).journal_bypass_writes, 3);
  bt_close (&x);
}

/* A failed backend write: the error is returned, no marker is placed,
 * the cache does not keep stale data of the range, and the journal
 * goes on.
 */
static void
test_bypass_eio (void **state)
{
  struct bt x = { .s = NULL };
  uint64_t n[6];
  unsigned char *disk = malloc (CHUNK), *got = malloc (CHUNK);
  (void) state;

  assert_non_null (disk);
  assert_non_null (got);
  bt_open (&x);
  assert_int_equal (write_pattern (&x.t, MiB, CHUNK, 1, 0), 0);
  start_run (&x, MiB, 2);
  drain_all (&x); /* so that the next backend write is the bypass's */
  assert_true (sectors_are (&x.t, MiB, CHUNK, V));
  fake_fail_nth (x.t.f, FAKE_WRITE, 1, -EIO);
  assert_int_equal (swrite (&x, MiB, CHUNK, 3, 0), -EIO);
  assert_int_equal (stats (x.t.c).journal_bypass_writes, 0);
  log_types (&x, n);
  assert_int_equal (n[JREC_BYPASS], 0);
  /* Reads agree with the backend (the fake wrote nothing: W). */
  fake_disk_read (x.t.f, disk, CHUNK, MiB);
  assert_int_equal (cache_read (x.t.c, got, CHUNK, MiB), 0);
  assert_memory_equal (disk, got, CHUNK);
  assert_true (read_is_pattern (&x.t, MiB, CHUNK, 1));
  /* The stream goes on: the next write goes around the journal. */
  assert_int_equal (swrite (&x, MiB + CHUNK, CHUNK, 4, 0), 0);
  assert_int_equal (stats (x.t.c).journal_bypass_writes, 1);
  assert_int_equal (cache_flush (x.t.c), 0);
  drain_all (&x);
  assert_true (disk_is_pattern (&x.t, MiB, CHUNK, 1));
  assert_true (disk_is_pattern (&x.t, MiB + CHUNK, CHUNK, 4));
  bt_close (&x);
  free (disk);
  free (got);
}

/* A TRIM of the range waits for the marker too; a journaled ZERO over
 * a bypassed range wins (it came after).
 */
static void
test_zero_after_bypass (void **state)
{
  struct bt x = { .s = NULL };
  (void) state;

  bt_open (&x);
  start_run (&x, MiB, 1);
  assert_int_equal (swrite (&x, MiB, CHUNK, 2, 0), 0);
  assert_int_equal (cache_zero (x.t.c, 4096, MiB, 0), 0);
  assert_int_equal (cache_trim (x.t.c, 4096, MiB + 8192, 0), 0);
  assert_true (read_is_byte (&x.t, MiB, 4096, 0));
  assert_true (read_is_pattern (&x.t, MiB + 4096, 4096, 2));
  assert_int_equal (cache_flush (x.t.c), 0);
  {
    struct bt y = { .s = NULL };

    bt_crash (&x, 0, &y);
    assert_true (read_is_byte (&y.t, MiB, 4096, 0));
    assert_true (read_is_pattern (&y.t, MiB + 4096, 4096, 2));
    assert_true (read_is_pattern (&y.t, MiB + 12288, CHUNK - 12288, 2));
    bt_close (&y);
  }
  bt_close (&x);
}

static void
kick_none (void *opaque)
{
  (void) opaque;
}

/* A write around the journal over a page that left RAM dirty (journal
 * "Dirty data beyond RAM"): the page's record, not yet written back and
 * in the current epoch, is not named by any resident page's jseq; the
 * barrier must still write it back first, or reads after the bypass
 * would find it in the journal's index, over the bypassed data.
 */
static void
test_bypass_over_spilled_page (void **state)
{
  struct bt x = { .s = NULL };
  const uint64_t p = 1 * MiB;
  uint64_t before;
  (void) state;

  bt_open (&x);
  cache_set_kick (x.t.c, kick_none, NULL); /* no background drain */
  assert_int_equal (write_pattern (&x.t, p, 4096, 1, 0), 0);
  /* No flush: other pages push it out (frame pressure syncs the
   * journal, so it may leave RAM).
   */
  /* 40 pages (of a 2 MiB cache: 32), 2.5 MiB of the 4 MiB journal:
   * with no drain a full journal would wait for ever.
   */
  for (uint64_t k = 0; k < 41; k++)
    if (k * 65536 != p)
      assert_int_equal (write_pattern (&x.t, k * 65536, 65536, 10, 0), 0);
  assert_true (stats (x.t.c).journal_spilled_pages > 0);
  before = stats (x.t.c).journal_bypass_writes;
  start_run (&x, p, 2);
  assert_int_equal (swrite (&x, p, CHUNK, 2, 0), 0);
  assert_int_equal (stats (x.t.c).journal_bypass_writes, before + 1);
  assert_true (read_is_pattern (&x.t, p, CHUNK, 2));
  assert_int_equal (cache_flush (x.t.c), 0);
  assert_int_equal (cache_drain (x.t.c), 0);
  assert_true (disk_is_pattern (&x.t, p, CHUNK, 2));
  assert_true (read_is_pattern (&x.t, p, CHUNK, 2));
  bt_close (&x);
}

/* A barrier that would drain more than BARRIER_CHEAP_RECORDS records
 * (a lazy or lagging drainer): the write goes through the journal, not
 * around it, and a drain step is due until one has gone past what the
 * barrier needed; once drained, the stream's next write goes around.
 */
static void
test_dear_barrier_journals (void **state)
{
  struct bt x = { .s = NULL };
  uint64_t before;
  (void) state;

  bt_open (&x);
  cache_set_kick (x.t.c, kick_none, NULL); /* no background drain */
  /* An epoch of BARRIER_CHEAP_RECORDS + 1 records, in one page. */
  for (unsigned k = 0; k <= BARRIER_CHEAP_RECORDS; k++)
    assert_int_equal (write_pattern (&x.t, (k % 8) * 4096, 4096, 1, 0), 0);
  assert_int_equal (cache_flush (x.t.c), 0);
  start_run (&x, MiB, 2);
  assert_false (cache_journal_drain_due (x.t.c, 3600000, 50));
  before = stats (x.t.c).journal_bypass_writes;
  fake_reset_counts (x.t.f);
  assert_int_equal (swrite (&x, MiB, CHUNK, 2, 0), 0);
  assert_int_equal (stats (x.t.c).journal_bypass_writes, before);
  assert_int_equal (counts (&x.t).writes, 0); /* no drain in the request */
  assert_true (cache_journal_drain_due (x.t.c, 3600000, 50));
  assert_true (read_is_pattern (&x.t, MiB - 2 * CHUNK, 3 * CHUNK, 2));
  /* One step drains the closed epoch: no longer due, and the next write
   * of the stream goes around.
   */
  assert_true (cache_journal_drain (x.t.c) > 0);
  assert_false (cache_journal_drain_due (x.t.c, 3600000, 50));
  assert_int_equal (swrite (&x, MiB + CHUNK, CHUNK, 2, 0), 0);
  assert_int_equal (stats (x.t.c).journal_bypass_writes, before + 1);
  assert_true (read_is_pattern (&x.t, MiB - 2 * CHUNK, 4 * CHUNK, 2));
  assert_true (read_is_pattern (&x.t, 0, 8 * 4096, 1));
  drain_all (&x);
  assert_true (disk_is_pattern (&x.t, MiB - 2 * CHUNK, 4 * CHUNK, 2));
  assert_true (disk_is_pattern (&x.t, 0, 8 * 4096, 1));
  bt_close (&x);
}

/* A barrier past an epoch of markers only is cheap.  A stream wrote
 * more than BARRIER_CHEAP_RECORDS writes around the journal since the
 * drained tail (the drainer leaves markers-only logs alone, jnl_drain),
 * then the client flushes.  The next writes' barriers have nothing to
 * write back (no DATA record past the tail): they go around.  Found by
 * a review helper; it fails when jnl_barrier_cheap counts markers.
 */
static void
test_markers_only_barrier_cheap (void **state)
{
  struct bt x = { .s = NULL };
  const uint32_t n = 16 * KiB;
  uint64_t off = MiB, before, jbytes;
  unsigned k, fell_back = 0;
  (void) state;

  bt_open (&x); /* no kick hook: wb_kick drains in the caller */
  start_run (&x, off, 1);
  drain_all (&x); /* the run's two DATA records: the tail is past them */
  before = stats (x.t.c).journal_bypass_writes;
  for (k = 0; k < BARRIER_CHEAP_RECORDS + 6; k++, off += n)
    assert_int_equal (swrite (&x, off, n, 1, 0), 0);
  assert_int_equal (stats (x.t.c).journal_bypass_writes,
                    before + BARRIER_CHEAP_RECORDS + 6);
  assert_int_equal (cache_flush (x.t.c), 0);
  /* The stream goes on: 4 more writes. */
  fake_reset_counts (x.t.f);
  for (k = 0; k < 4; k++, off += n) {
    uint64_t b = stats (x.t.c).journal_bypass_writes;

    jbytes = stats (x.t.c).journal_bytes;
    assert_int_equal (swrite (&x, off, n, 1, 0), 0);
    if (stats (x.t.c).journal_bypass_writes == b) {
      fell_back++;
      print_message (
        "write %u after the flush: journaled (%llu journal "
        "bytes), though only markers were past the tail\n",
        k, (unsigned long long) (stats (x.t.c).journal_bytes - jbytes));
    }
  }
  assert_true (
    read_is_pattern (&x.t, MiB - 2 * CHUNK, off - MiB + 2 * CHUNK, 1));
  assert_int_equal (fell_back, 0);
  bt_close (&x);
}

int
main (void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test (test_stream_bypasses),
    cmocka_unit_test (test_not_sequential_not_bypassed),
    cmocka_unit_test (test_stream_out_of_order),
    cmocka_unit_test (test_barrier_order),
    cmocka_unit_test (test_replay_keeps_bypassed_data),
    cmocka_unit_test (test_barrier_needs_durable_tail),
    cmocka_unit_test (test_barrier_evicted_page),
    cmocka_unit_test (test_concurrent_writes),
    cmocka_unit_test (test_flush_after_bypass),
    cmocka_unit_test (test_bypass_eio),
    cmocka_unit_test (test_zero_after_bypass),
    cmocka_unit_test (test_bypass_over_spilled_page),
    cmocka_unit_test (test_dear_barrier_journals),
    cmocka_unit_test (test_markers_only_barrier_cheap),
  };

  return cmocka_run_group_tests (tests, NULL, NULL);
}
