/* subpage unit tests: the journal (cache/journal.c) over the fake
 * backend and the fake journal device (fake-jdev.h), whose crash images
 * are the power cuts: rules 12 to 15 of DESIGN.md.
 *
 * Crash checking: every client write puts pattern (off, seed) with a
 * seed of its own; a model keeps, per sector, the seeds written in
 * order and how many of them a successful flush covered.  After a crash
 * and a recovery, each sector must hold the last covered value or a
 * later one (a write not covered may or may not survive), and a zeroed
 * or trimmed sector may also read as zeroes.
 */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "fake-jdev.h"
#include "helpers.h"
#include "jformat.h"
#include "journal.h" /* jnl_spilled */

#define JSIZE (JNL_DATA_OFFSET + 4 * MiB)
#define IDENT "file:/test/image"
#define NSECT_MODEL (4 * MiB / SS)
#define MAXV 64

/* CLOCK_MONOTONIC, which the cache's clock (report_now_ms) reads, runs
 * clock_skew_ms ahead of the real one: a test moves it forward (never
 * back) to age records without sleeping.  Other clocks are the real
 * ones (the condition variables' timeouts use CLOCK_REALTIME).
 */
static atomic_uint_fast64_t clock_skew_ms;

int
clock_gettime (clockid_t id, struct timespec *ts)
{
  int r = (int) syscall (SYS_clock_gettime, id, ts);
  uint64_t skew = atomic_load (&clock_skew_ms);

  if (r == 0 && id == CLOCK_MONOTONIC && skew > 0) {
    ts->tv_sec += (time_t) (skew / 1000);
    ts->tv_nsec += (long) (skew % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
      ts->tv_sec++;
      ts->tv_nsec -= 1000000000L;
    }
  }
  return r;
}

/* Seed 0 means zeroes (a ZERO, or a TRIM's possible outcome). */
struct sect_model {
  unsigned seeds[MAXV];
  unsigned n;       /* values written */
  unsigned covered; /* values a successful flush covered */
  bool trimmed;     /* a TRIM since the last covered value: anything old */
};

struct jt {
  struct tcache t;
  struct fake_jdev *j;
  struct sect_model *m;
  unsigned next_seed;
};

static struct cache_config
jconfig (void)
{
  struct cache_config cfg = test_config ();

  cfg.cache_size = 2 * MiB;
  return cfg;
}

/* Opens a cache with journal device J (taken over: freed by jt_close)
 * over a backend holding DISK (NULL: zeroes), and recovers.
 */
static void
jt_open_disk (struct jt *x, struct fake_jdev *j, bool created, int want,
              const unsigned char *disk)
{
  struct cache_config cfg = jconfig ();
  int r;

  tc_open (&x->t, &cfg);
  cache_set_kick (x->t.c, NULL, NULL); /* write-back in the caller */
  if (disk)
    fake_disk_write (x->t.f, disk, cfg.size, 0);
  x->j = j;
  r = cache_journal_open (x->t.c, fake_jdev_dev (j), IDENT, created);
  assert_int_equal (r, want);
  if (r == 0)
    assert_int_equal (cache_journal_recover (x->t.c), 0);
}

static void
jt_open_dev (struct jt *x, struct fake_jdev *j, bool created, int want)
{
  jt_open_disk (x, j, created, want, NULL);
}

static void
jt_open (struct jt *x)
{
  jt_open_dev (x, fake_jdev_new (JSIZE), true, 0);
  x->m = calloc (NSECT_MODEL, sizeof *x->m);
  assert_non_null (x->m);
  x->next_seed = 1;
}

static void
jt_close (struct jt *x)
{
  tc_close (&x->t);
  fake_jdev_free (x->j);
  x->j = NULL;
}

static void
model_set (struct jt *x, uint64_t off, uint64_t n, unsigned seed, bool trim)
{
  for (uint64_t s = off / SS; s < (off + n) / SS; s++) {
    struct sect_model *m = &x->m[s];

    if (trim) {
      m->trimmed = true;
      continue;
    }
    if (m->n == MAXV) { /* keep the covered one and the newest */
      memmove (m->seeds, m->seeds + MAXV / 2, sizeof m->seeds / 2);
      m->n -= MAXV / 2;
      m->covered = m->covered > MAXV / 2 ? m->covered - MAXV / 2 : 0;
    }
    m->seeds[m->n++] = seed;
  }
}

/* A FUA write: durable on reply. */
static void
model_covered (struct jt *x, uint64_t off, uint64_t n)
{
  for (uint64_t s = off / SS; s < (off + n) / SS; s++) {
    x->m[s].covered = x->m[s].n;
    x->m[s].trimmed = false;
  }
}

static void
model_flushed (struct jt *x)
{
  for (uint64_t s = 0; s < NSECT_MODEL; s++) {
    x->m[s].covered = x->m[s].n;
    x->m[s].trimmed = false;
  }
}

static bool
sector_is (const unsigned char *buf, uint64_t soff, unsigned seed)
{
  if (seed == 0) {
    for (unsigned i = 0; i < SS; i++)
      if (buf[i])
        return false;
    return true;
  }
  return pattern_mismatch (buf, SS, soff, seed) == -1;
}

/* Does sector S (read as BUF) hold a value the model allows after a
 * crash?
 */
static bool
model_allows (struct jt *x, uint64_t s, const unsigned char *buf)
{
  struct sect_model *m = &x->m[s];
  unsigned from = m->covered ? m->covered - 1 : 0;

  if (m->covered == 0 || m->trimmed) {
    if (sector_is (buf, s * SS, 0))
      return true; /* the disk started as zeroes; a trim may zero */
    if (m->trimmed)
      from = 0;
  }
  for (unsigned k = from; k < m->n; k++)
    if (sector_is (buf, s * SS, m->seeds[k]))
      return true;
  return false;
}

static int
jwrite (struct jt *x, uint64_t off, uint32_t n, uint32_t flags)
{
  unsigned seed = x->next_seed++;
  int r = write_pattern (&x->t, off, n, seed, flags);

  if (r == 0)
    model_set (x, off, n, seed, false);
  return r;
}

static int
jzero (struct jt *x, uint64_t off, uint32_t n)
{
  int r = cache_zero (x->t.c, n, off, 0);

  if (r == 0)
    model_set (x, off, n, 0, false);
  return r;
}

static int
jtrim (struct jt *x, uint64_t off, uint32_t n)
{
  int r = cache_trim (x->t.c, n, off, 0);

  if (r == 0)
    model_set (x, off, n, 0, true);
  return r;
}

static int
jflush (struct jt *x)
{
  int r = cache_flush (x->t.c);

  if (r == 0)
    model_flushed (x);
  return r;
}

/* Y's backend, once Y has written back everything, holds BUF (what Y
 * read).  DISK: room for the image.
 */
static void
drain_gives (struct jt *y, const unsigned char *buf, unsigned char *disk)
{
  uint64_t size = jconfig ().size;

  assert_int_equal (cache_drain (y->t.c), 0);
  fake_disk_read (y->t.f, disk, size, 0);
  assert_memory_equal (disk, buf, size);
}

/* A crash of the server that recovered (Y, which read BEFORE): the log
 * it continued is recovered again.  Y first writes back all of the old
 * log, one batch of it or none (K % 3: the second recovery then finds
 * the split behind the tail, maybe at it, or ahead of it), then writes
 * W1 and flushes, then writes W2 and crashes (power cut K).  The third
 * server reads BEFORE but W1, and W2 or BEFORE there (one record,
 * whole or not at all), and its backend, drained, reads the same.  A
 * sector under a TRIM that X's flushes did not cover may read as
 * zeroes instead (the TRIM applied since).
 */
static void
check_second_crash (struct jt *x, struct jt *y, const unsigned char *before,
                    unsigned k, const char *what)
{
  struct jt z = { .m = NULL };
  uint64_t size = jconfig ().size, npg = size / PG;
  uint64_t a1 = (k * 37 % npg) * PG + 512 * (k % 8),
           a2 = ((k * 37 + 5) % npg) * PG + 1024;
  unsigned s1 = 50000 + k, s2 = 60000 + k;
  unsigned char *buf = malloc (size), *disk = malloc (size);
  uint8_t *img;

  assert_non_null (buf);
  assert_non_null (disk);
  if (k % 3 == 1)
    assert_int_equal (cache_drain (y->t.c), 0);
  else if (k % 3 == 2)
    assert_true (cache_journal_drain (y->t.c) >= 0);
  assert_int_equal (write_pattern (&y->t, a1, 2048, s1, 0), 0);
  assert_int_equal (cache_flush (y->t.c), 0);
  assert_int_equal (write_pattern (&y->t, a2, 4096, s2, 0), 0);
  img = fake_jdev_crash (y->j, k);
  fake_disk_read (y->t.f, disk, size, 0);
  jt_open_disk (&z, fake_jdev_from_image (img, JSIZE), false, 0, disk);
  fake_jdev_free_image (img);
  /* Y wrote its whole recovered log back: the split was cleared, and Z
   * reads the log into the index too, writing nothing first.
   */
  if (k % 3 == 1)
    assert_int_equal (counts (&z.t).writes, 0);
  assert_int_equal (cache_read (z.t.c, buf, (uint32_t) size, 0), 0);
  if (pattern_mismatch (buf + a1, 2048, a1, s1) != -1)
    fail_msg ("%s, second crash %u: W1, flushed, is lost", what, k);
  if (pattern_mismatch (buf + a2, 4096, a2, s2) != -1 &&
      memcmp (buf + a2, before + a2, 4096) != 0)
    fail_msg ("%s, second crash %u: W2 is neither written nor not", what, k);
  memcpy (buf + a1, before + a1, 2048);
  memcpy (buf + a2, before + a2, 4096);
  for (uint64_t s = 0; s < size / SS; s++)
    if (memcmp (buf + s * SS, before + s * SS, SS) != 0 &&
        !(x->m[s].trimmed && sector_is (buf + s * SS, s * SS, 0)))
      fail_msg ("%s, second crash %u: sector %llu changed", what, k,
                (unsigned long long) s);
  assert_int_equal (cache_read (z.t.c, buf, (uint32_t) size, 0), 0);
  drain_gives (&z, buf, disk);
  jt_close (&z);
  free (buf);
  free (disk);
}

/* Recovers a copy of the backend as it is now with journal image IMG,
 * and checks every sector of the image against the model, then that
 * the backend, drained, reads the same; with K, also a crash of the
 * recovered server (check_second_crash).
 */
static void
check_crash_state_k (struct jt *x, const uint8_t *img, const char *what,
                     unsigned k)
{
  struct jt y = { .m = NULL };
  uint64_t size = jconfig ().size;
  unsigned char *buf = malloc (size), *disk = malloc (size);

  assert_non_null (buf);
  assert_non_null (disk);
  fake_disk_read (x->t.f, disk, size, 0);
  jt_open_disk (&y, fake_jdev_from_image (img, JSIZE), false, 0, disk);
  assert_int_equal (cache_read (y.t.c, buf, (uint32_t) size, 0), 0);
  /* Served from the journal: recovery wrote nothing to the backend (a
   * log of one run is never split, and its index fits).
   */
  assert_int_equal (counts (&y.t).writes, 0);
  assert_int_equal (counts (&y.t).flushes, 0);
  for (uint64_t s = 0; s < size / SS; s++)
    if (!model_allows (x, s, buf + s * SS))
      fail_msg ("%s: sector %llu holds a value no allowed write put there",
                what, (unsigned long long) s);
  if (k > 0)
    check_second_crash (x, &y, buf, k, what);
  else
    drain_gives (&y, buf, disk); /* recovery leaves it to the drainer */
  jt_close (&y);
  free (buf);
  free (disk);
}

static void
check_crash_state (struct jt *x, const uint8_t *img, const char *what)
{
  check_crash_state_k (x, img, what, 0);
}

/* ---- tests ---- */

/* Rule 12: a flush needs the journal, not the backend. */
static void
test_flush_needs_only_the_journal (void **state)
{
  struct jt x = { .m = NULL };
  struct fake_jdev_counts jc;
  (void) state;

  jt_open (&x);
  fake_reset_counts (x.t.f);
  assert_int_equal (jwrite (&x, 4096, 8192, 0), 0);
  assert_int_equal (jwrite (&x, 65536 + 512, 512, 0), 0);
  assert_int_equal (jflush (&x), 0);
  assert_int_equal (counts (&x.t).writes, 0);
  assert_int_equal (counts (&x.t).flushes, 0);
  fake_jdev_get_counts (x.j, &jc);
  assert_int_equal (jc.pending, 0);
  assert_true (sectors_are (&x.t, 4096, 8192, V | D));
  {
    struct cache_stats st = stats (x.t.c);

    assert_int_equal (st.journal_records, 2);
    assert_int_equal (st.journal_pending_bytes,
                      jrec_size (8192) + jrec_size (512));
    assert_int_equal (st.journal_used_bytes, st.journal_pending_bytes);
    assert_int_equal (st.journal_epochs_waiting, 2);
    assert_int_equal (st.journal_size, 4 * MiB);
  }
  /* Drained: on the backend, flushed, and the pages clean; the batch
   * wrote the tail without a sync, the idle step after it syncs it.
   */
  assert_true (cache_journal_drain (x.t.c) > 0);
  assert_int_equal (stats (x.t.c).journal_used_bytes,
                    jrec_size (8192) + jrec_size (512));
  assert_int_equal (cache_journal_drain (x.t.c), 0);
  {
    struct cache_stats st = stats (x.t.c);

    assert_int_equal (st.journal_pending_bytes, 0);
    assert_int_equal (st.journal_used_bytes, 0);
    assert_int_equal (st.journal_drained_records, 2);
    assert_int_equal (st.journal_epochs_waiting, 0);
  }
  assert_true (disk_is_pattern (&x.t, 4096, 8192, 1));
  assert_true (disk_is_pattern (&x.t, 65536 + 512, 512, 2));
  assert_true (counts (&x.t).flushes >= 1);
  assert_true (sectors_are (&x.t, 4096, 8192, V));
  assert_int_equal (cache_journal_drain (x.t.c), 0);
  jt_close (&x);
  free (x.m);
}

/* An idle flush costs nothing; a second flush with nothing new syncs
 * nothing.
 */
static void
test_idle_flush_syncs_nothing (void **state)
{
  struct jt x = { .m = NULL };
  struct fake_jdev_counts a, b;
  (void) state;

  jt_open (&x);
  assert_int_equal (jwrite (&x, 0, 4096, 0), 0);
  assert_int_equal (jflush (&x), 0);
  fake_jdev_get_counts (x.j, &a);
  assert_int_equal (jflush (&x), 0);
  fake_jdev_get_counts (x.j, &b);
  assert_int_equal (a.syncs, b.syncs);
  jt_close (&x);
  free (x.m);
}

/* Crash states at each flush and between: hundreds of journal images,
 * each recovered onto a copy of the backend as it was.
 */
static void
test_crash_states (void **state)
{
  struct jt x = { .m = NULL };
  unsigned states = 0;
  unsigned seeds = getenv ("SUBPAGE_DEEP") ? 100 : 6; /* 3000 states */
  (void) state;

  jt_open (&x);
  srand (7);
  for (int step = 0; step < 120; step++) {
    uint64_t off = (uint64_t) (rand () % (4 * 1024 * 1024 / 512 - 64)) * 512;
    uint32_t n = (uint32_t) (1 + rand () % 24) * 512;
    int op = rand () % 10;

    if (op < 6)
      assert_int_equal (jwrite (&x, off, n, op == 0 ? CACHE_FUA : 0), 0);
    else if (op == 6)
      assert_int_equal (jzero (&x, off, n), 0);
    else if (op == 7)
      assert_int_equal (jtrim (&x, off, n), 0);
    else if (op == 8)
      assert_int_equal (jflush (&x), 0);
    else
      assert_true (cache_journal_drain (x.t.c) >= 0);
    if (op == 0) /* FUA: durable on reply */
      model_covered (&x, off, n);
    if (step % 4 == 3) {
      for (unsigned s = 0; s < seeds; s++) {
        uint8_t *img = fake_jdev_crash (x.j, s);
        char what[64];

        snprintf (what, sizeof what, "step %d seed %u", step, s);
        /* Every other state: a second crash after recovery. */
        check_crash_state_k (&x, img, what, s % 2 ? states + 1 : 0);
        fake_jdev_free_image (img);
        states++;
      }
    }
  }
  assert_true (states >= 150);
  jt_close (&x);
  free (x.m);
}

/* Recovery's index is bounded like the index of pages that left RAM
 * (cache-size / 4): a log whose index would pass it is written back
 * before serving instead, and reads the same.  Every other sector of
 * every page is written, each its own record: 64 extents a page.
 */
static void
test_recovery_index_bound (void **state)
{
  struct jt x = { .m = NULL }, y = { .m = NULL };
  struct cache_config cfg = jconfig ();
  uint64_t size = cfg.size;
  unsigned char *disk = malloc (size), *want = malloc (size),
                *buf = malloc (size);
  uint8_t *img;
  (void) state;

  assert_non_null (disk);
  assert_non_null (want);
  assert_non_null (buf);
  jt_open (&x);
  for (uint64_t off = 0; off < size; off += 2 * SS)
    assert_int_equal (jwrite (&x, off, SS, 0), 0);
  assert_int_equal (jflush (&x), 0);
  assert_int_equal (cache_read (x.t.c, want, (uint32_t) size, 0), 0);
  img = fake_jdev_crash (x.j, 0);
  fake_disk_read (x.t.f, disk, size, 0);

  /* The index fits in 2 MiB / 4: served from the journal. */
  jt_open_disk (&y, fake_jdev_from_image (img, JSIZE), false, 0, disk);
  assert_int_equal (counts (&y.t).writes, 0);
  assert_true (stats (y.t.c).journal_index_bytes > 64 * KiB);
  assert_int_equal (cache_read (y.t.c, buf, (uint32_t) size, 0), 0);
  assert_memory_equal (buf, want, size);
  jt_close (&y);

  /* With page-size=4K and cache-size=64K it would take more than
   * 16 KiB (four extents in each of 1024 pages): written back first,
   * with nothing left in the index.
   */
  cfg.page_size = 4 * KiB;
  cfg.cache_size = 64 * KiB;
  tc_open (&y.t, &cfg);
  cache_set_kick (y.t.c, NULL, NULL);
  fake_disk_write (y.t.f, disk, size, 0);
  y.j = fake_jdev_from_image (img, JSIZE);
  assert_int_equal (
    cache_journal_open (y.t.c, fake_jdev_dev (y.j), IDENT, false), 0);
  assert_int_equal (cache_journal_recover (y.t.c), 0);
  assert_true (counts (&y.t).writes > 0);
  assert_true (disk_is_pattern (&y.t, 0, SS, 1));
  assert_int_equal (stats (y.t.c).journal_index_bytes, 0);
  assert_int_equal (stats (y.t.c).journal_pending_bytes, 0);
  assert_false (jnl_spilled (y.t.c)); /* block status stays fast */
  assert_int_equal (cache_read (y.t.c, buf, (uint32_t) size, 0), 0);
  assert_memory_equal (buf, want, size);
  jt_close (&y);

  fake_jdev_free_image (img);
  jt_close (&x);
  free (x.m);
  free (disk);
  free (want);
  free (buf);
}

/* FUA: once it returns, its record survives a crash even without a
 * flush.
 */
static void
test_fua_durable (void **state)
{
  struct jt x = { .m = NULL };
  struct jt y = { .m = NULL };
  uint8_t *img;
  (void) state;

  jt_open (&x);
  assert_int_equal (jwrite (&x, 8192, 4096, 0), 0);
  assert_int_equal (jwrite (&x, 65536, 4096, CACHE_FUA), 0);
  img = fake_jdev_crash (x.j, 0); /* only what was synced */
  jt_open_dev (&y, fake_jdev_from_image (img, JSIZE), false, 0);
  /* The FUA write and everything before it in the log. */
  assert_true (read_is_pattern (&y.t, 65536, 4096, 2));
  assert_true (read_is_pattern (&y.t, 8192, 4096, 1));
  jt_close (&y);
  fake_jdev_free_image (img);
  jt_close (&x);
  free (x.m);
}

/* Writes epochs FIRST to LAST: six writes in the 64 KiB at E * 64 KiB,
 * then a flush; every fifth epoch the drainer catches up (some epochs
 * drain together).
 */
static void
write_epochs (struct jt *x, unsigned first, unsigned last)
{
  for (unsigned e = first; e <= last; e++) {
    for (int k = 0; k < 6; k++) {
      uint64_t off = e * 65536 + (uint64_t) ((k * 7 + e) % 120) * 512;
      assert_int_equal (jwrite (x, off, 512 * (1 + k % 3), 0), 0);
    }
    assert_int_equal (jflush (x), 0);
    if (e % 5 == 0)
      while (cache_journal_drain (x->t.c) > 0)
        ;
  }
}

/* The backend's writes, by epoch (offset / 64 KiB), never older than
 * what a flush already closed, and one epoch per flush interval.
 */
static void
assert_epoch_order (struct tcache *t)
{
  unsigned floor = 0, cur = 0;
  bool any = false;

  for (size_t i = 0; i < fake_nr_events (t->f); i++) {
    struct fake_event ev;
    unsigned e;

    assert_true (fake_event (t->f, i, &ev));
    if (ev.op == FAKE_FLUSH) {
      if (any)
        floor = cur;
      continue;
    }
    if (ev.op != FAKE_WRITE)
      continue;
    e = (unsigned) (ev.off / 65536);
    assert_true (e >= floor);
    if (any && e != cur)
      assert_true (cur <= floor && e > cur);
    cur = e;
    any = true;
  }
}

/* Rule 13, the backend alone: the drainer never writes a record of an
 * epoch before every record of the epochs before it is written and the
 * backend flushed.  Epoch E writes only in its own 64 KiB region, so
 * the backend's log says which epoch each write belongs to.
 */
static void
test_epoch_order_on_backend (void **state)
{
  struct jt x = { .m = NULL };
  (void) state;

  jt_open (&x);
  write_epochs (&x, 1, 12);
  while (cache_journal_drain (x.t.c) > 0)
    ;
  assert_epoch_order (&x.t);
  jt_close (&x);
  free (x.m);
}

/* Rule 13 across a restart: a server that recovered a log (epochs 1 to
 * 6, the first ones already drained) writes it back before anything of
 * its own epochs (7 to 12), which start after the last recovered one
 * (the crash ended it), and its backend sees them in order.
 */
static void
test_epoch_order_after_recovery (void **state)
{
  struct jt x = { .m = NULL }, y = { .m = NULL };
  uint64_t size = jconfig ().size;
  unsigned char *disk = malloc (size);
  uint8_t *img;
  (void) state;

  assert_non_null (disk);
  jt_open (&x);
  write_epochs (&x, 1, 6);
  img = fake_jdev_crash (x.j, 0);
  fake_disk_read (x.t.f, disk, size, 0);
  jt_open_disk (&y, fake_jdev_from_image (img, JSIZE), false, 0, disk);
  fake_jdev_free_image (img);
  assert_int_equal (counts (&y.t).writes, 0);
  y.m = x.m;
  y.next_seed = x.next_seed;
  write_epochs (&y, 7, 12);
  while (cache_journal_drain (y.t.c) > 0)
    ;
  assert_epoch_order (&y.t);
  y.m = NULL;
  jt_close (&y);
  jt_close (&x);
  free (x.m);
  free (disk);
}
/* Tail writes (journal.c): the drainer writes its tail without a sync,
 * but starts no batch before the tail of the batch two before is
 * durable.  Otherwise a crash leaves the durable tail epochs back, and
 * the recovered server's re-drain writes an old epoch's data over a
 * newer epoch's on the backend: with the journal lost then, the image
 * would hold epoch 3's write without all of epoch 2's (rule 13).
 */
static void
test_redrain_keeps_epoch_order (void **state)
{
  struct jt x = { .m = NULL }, y = { .m = NULL };
  uint64_t size = jconfig ().size;
  unsigned char *disk = malloc (size);
  uint8_t *img;
  (void) state;

  assert_non_null (disk);
  jt_open (&x);
  /* Epoch 1: X = 1; epoch 2: X = 2, Y = 2; epoch 3: Z = 3. */
  assert_int_equal (write_pattern (&x.t, 0, 4096, 1, 0), 0);
  assert_int_equal (cache_flush (x.t.c), 0);
  assert_int_equal (write_pattern (&x.t, 0, 4096, 2, 0), 0);
  assert_int_equal (write_pattern (&x.t, PG, 4096, 2, 0), 0);
  assert_int_equal (cache_flush (x.t.c), 0);
  assert_int_equal (write_pattern (&x.t, 2 * PG, 4096, 3, 0), 0);
  assert_int_equal (cache_flush (x.t.c), 0);
  /* One batch per epoch, and no client sync between them. */
  for (int b = 0; b < 3; b++)
    assert_true (cache_journal_drain (x.t.c) > 0);
  assert_true (disk_is_pattern (&x.t, 2 * PG, 4096, 3));
  /* A crash keeps only what was synced; the next server, over the
   * backend as it is, writes back one batch.
   */
  img = fake_jdev_crash (x.j, 0);
  fake_disk_read (x.t.f, disk, size, 0);
  jt_open_disk (&y, fake_jdev_from_image (img, JSIZE), false, 0, disk);
  fake_jdev_free_image (img);
  assert_int_equal (counts (&y.t).writes, 0);
  assert_true (cache_journal_drain (y.t.c) > 0);
  /* The journal lost now: Z of epoch 3 is there, so all of epoch 2. */
  assert_true (disk_is_pattern (&y.t, 2 * PG, 4096, 3));
  assert_true (disk_is_pattern (&y.t, 0, 4096, 2));
  assert_true (disk_is_pattern (&y.t, PG, 4096, 2));
  while (cache_journal_drain (y.t.c) > 0)
    ;
  jt_close (&y);
  jt_close (&x);
  free (x.m);
  free (disk);
}

/* A crash leaves the durable tail two batches back (the batch's tail
 * write was skipped: the one before it was not synced yet).  The
 * re-drain rewrites the older batch over the newer one; if the older
 * batch writes a sector twice, its first value goes back onto the
 * backend while the newer epoch's writes are still there.  The journal
 * lost at that moment: Z of epoch 3 is on the backend but X holds a
 * value epoch 2 overwrote (rule 13: epoch 3 present means every write
 * of epoch 2).
 */
struct redrain_arg {
  struct cache *c;
  atomic_bool done;
};

/* One drain step, then DONE. */
static void *
redrain_thread (void *p)
{
  struct redrain_arg *a = p;

  cache_journal_drain (a->c);
  atomic_store (&a->done, true);
  return NULL;
}

static void
test_redrain_double_write_keeps_epoch_order (void **state)
{
  struct jt x = { .m = NULL }, y = { .m = NULL };
  uint64_t size = jconfig ().size;
  unsigned char *disk = malloc (size);
  uint8_t *img;
  pthread_t dth;
  struct redrain_arg ra;
  bool bad = false;
  (void) state;

  assert_non_null (disk);
  jt_open (&x);
  /* Epoch 1: W = 1; epoch 2: X = 21, X = 22, Y = 2; epoch 3: X = 3,
   * Z = 3.
   */
  assert_int_equal (write_pattern (&x.t, 3 * PG, 4096, 1, 0), 0);
  assert_int_equal (cache_flush (x.t.c), 0);
  assert_int_equal (write_pattern (&x.t, 0, 4096, 21, 0), 0);
  assert_int_equal (write_pattern (&x.t, 0, 4096, 22, 0), 0);
  assert_int_equal (write_pattern (&x.t, PG, 4096, 2, 0), 0);
  assert_int_equal (cache_flush (x.t.c), 0);
  assert_int_equal (write_pattern (&x.t, 0, 4096, 3, 0), 0);
  assert_int_equal (write_pattern (&x.t, 2 * PG, 4096, 3, 0), 0);
  assert_int_equal (cache_flush (x.t.c), 0);
  /* One batch per epoch, and no client sync between them. */
  for (int b = 0; b < 3; b++)
    assert_true (cache_journal_drain (x.t.c) > 0);
  assert_true (disk_is_pattern (&x.t, 0, 4096, 3));
  assert_true (disk_is_pattern (&x.t, 2 * PG, 4096, 3));
  img = fake_jdev_crash (x.j, 0);
  fake_disk_read (x.t.f, disk, size, 0);
  jt_open_disk (&y, fake_jdev_from_image (img, JSIZE), false, 0, disk);
  fake_jdev_free_image (img);
  assert_int_equal (counts (&y.t).writes, 0);
  /* The re-drain, one backend write at a time; after each, the backend
   * alone must be a rule 13 state.
   */
  fake_hold (y.t.f, FAKE_WRITE, true);
  ra.c = y.t.c;
  atomic_init (&ra.done, false);
  assert_int_equal (pthread_create (&dth, NULL, redrain_thread, &ra), 0);
  for (unsigned w = 0;; w++) {
    WAIT_FOR (fake_held (y.t.f, FAKE_WRITE) == 1 || atomic_load (&ra.done));
    if (fake_held (y.t.f, FAKE_WRITE) == 0)
      break;
    if (disk_is_pattern (&y.t, 2 * PG, 4096, 3) &&
        !(disk_is_pattern (&y.t, 0, 4096, 22) ||
          disk_is_pattern (&y.t, 0, 4096, 3)) &&
        !bad) {
      print_message ("after %u writes of the re-drain: Z of epoch 3 on "
                     "the backend, X not at its epoch 2 value\n",
                     w);
      bad = true;
    }
    fake_release (y.t.f, FAKE_WRITE, 1);
    WAIT_FOR (counts (&y.t).writes == w + 1);
  }
  fake_hold (y.t.f, FAKE_WRITE, false);
  pthread_join (dth, NULL);
  while (cache_journal_drain (y.t.c) > 0)
    ;
  assert_true (disk_is_pattern (&y.t, 0, 4096, 3));
  assert_false (bad);
  jt_close (&y);
  jt_close (&x);
  free (x.m);
  free (disk);
}

/* A flush must wait for every record placed before it, even one whose
 * writer is still writing it, and the log's order of a sector's records
 * is the order of its changes in memory.
 */
static void
test_flush_waits_for_placed_record (void **state)
{
  struct jt x = { .m = NULL };
  struct jt y = { .m = NULL };
  struct stops st;
  struct async *a, *f;
  unsigned k;
  char *buf = malloc (4096);
  uint8_t *img;
  (void) state;

  jt_open (&x);
  stops_init (&st);
  k = stops_add (&st, "journal.placed", 1);
  cache_debug_set_park (x.t.c, stops_hook, &st);
  pattern (buf, 4096, 0, 11);
  a = async_start (&x.t, ASYNC_WRITE, buf, 4096, 0, 0);
  WAIT_FOR (stops_parked (&st, k));
  /* A newer write of the same sector, placed after it. */
  assert_int_equal (write_pattern (&x.t, 0, 4096, 12, 0), 0);
  f = async_start (&x.t, ASYNC_FLUSH, NULL, 0, 0, 0);
  assert_false (async_done (f));
  stops_release (&st, k);
  assert_int_equal (async_join (a), 0);
  assert_int_equal (async_join (f), 0);
  assert_true (read_is_pattern (&x.t, 0, 4096, 12));
  img = fake_jdev_crash (x.j, 0);
  jt_open_dev (&y, fake_jdev_from_image (img, JSIZE), false, 0);
  assert_true (read_is_pattern (&y.t, 0, 4096, 12));
  jt_close (&y);
  fake_jdev_free_image (img);
  cache_debug_set_park (x.t.c, NULL, NULL);
  stops_destroy (&st);
  jt_close (&x);
  free (x.m);
  free (buf);
}

/* One drain step. */
static void *
drain_thread (void *c)
{
  cache_journal_drain (c);
  return NULL;
}

/* Drains until idle: the idle step syncs the tail the batches wrote
 * (journal.c, "Tail writes").
 */
static void *
drain_idle_thread (void *c)
{
  while (cache_journal_drain (c) > 0)
    ;
  return NULL;
}

/* A page written again while the drainer writes its older record stays
 * dirty: the backend does not hold the newer data yet.
 */
static void
test_drain_keeps_newer_data_dirty (void **state)
{
  struct jt x = { .m = NULL };
  (void) state;

  jt_open (&x);
  assert_int_equal (write_pattern (&x.t, 0, 4096, 1, 0), 0);
  assert_int_equal (cache_flush (x.t.c), 0);
  fake_hold (x.t.f, FAKE_WRITE, true);
  {
    /* The drain, in a thread of its own. */
    pthread_t th;

    assert_int_equal (pthread_create (&th, NULL, drain_thread, x.t.c), 0);
    WAIT_FOR (fake_held (x.t.f, FAKE_WRITE) == 1);
    assert_int_equal (write_pattern (&x.t, 512, 512, 2, 0), 0);
    fake_hold (x.t.f, FAKE_WRITE, false);
    pthread_join (th, NULL);
  }
  assert_true (disk_is_pattern (&x.t, 0, 4096, 1));
  assert_true (sectors_are (&x.t, 512, 512, V | D));
  assert_true (sectors_are (&x.t, 0, 512, V | D));
  assert_true (read_is_pattern (&x.t, 512, 512, 2));
  while (cache_journal_drain (x.t.c) > 0)
    ;
  assert_true (disk_is_pattern (&x.t, 512, 512, 2));
  assert_true (sectors_are (&x.t, 0, 4096, V));
  jt_close (&x);
  free (x.m);
}

/* The drainer's writes run in parallel (the jio hook), but a write
 * that overlaps one in flight waits for it: captured writes completed
 * in reverse order still leave the newest record's data.
 */
struct jio_capture {
  pthread_mutex_t lock;
  struct cache_jio *io[16];
  unsigned n;
};

static void
capture_jio (void *opaque, struct cache_jio *io)
{
  struct jio_capture *k = opaque;

  pthread_mutex_lock (&k->lock);
  assert_true (k->n < 16);
  k->io[k->n++] = io;
  pthread_mutex_unlock (&k->lock);
}

/* *N, read under LOCK (the capture hooks' counts). */
static unsigned
locked_count (pthread_mutex_t *lock, const unsigned *n)
{
  unsigned v;

  pthread_mutex_lock (lock);
  v = *n;
  pthread_mutex_unlock (lock);
  return v;
}

static unsigned
captured (struct jio_capture *k)
{
  return locked_count (&k->lock, &k->n);
}

/* Records 1 at 0, 2 at 64 KiB, then 3 at 0 (over 1), flushed: the
 * drain's first two writes can be in flight at once, the third waits
 * for the first.
 */
static void
write_three_overlapping (struct jt *x)
{
  assert_int_equal (write_pattern (&x->t, 0, 4096, 1, 0), 0);
  assert_int_equal (write_pattern (&x->t, 65536, 4096, 2, 0), 0);
  assert_int_equal (write_pattern (&x->t, 0, 4096, 3, 0), 0); /* overlaps 1 */
  assert_int_equal (cache_flush (x->t.c), 0);
}

/* After write_three_overlapping and its drain: the newest data, clean. */
static void
check_three_overlapping (struct jt *x)
{
  assert_true (disk_is_pattern (&x->t, 0, 4096, 3));
  assert_true (disk_is_pattern (&x->t, 65536, 4096, 2));
  assert_true (sectors_are (&x->t, 0, 4096, V));
  assert_true (sectors_are (&x->t, 65536, 4096, V));
}

static void
test_parallel_drain_keeps_log_order (void **state)
{
  struct jt x = { .m = NULL };
  struct jio_capture k = { .n = 0 };
  pthread_t th;
  (void) state;

  pthread_mutex_init (&k.lock, NULL);
  jt_open (&x);
  write_three_overlapping (&x);
  cache_set_jio (x.t.c, capture_jio, &k);
  assert_int_equal (pthread_create (&th, NULL, drain_thread, x.t.c), 0);
  /* The first two are in flight; the third waits for the first. */
  WAIT_FOR (captured (&k) == 2);
  cache_jio_run (k.io[1]);
  cache_jio_run (k.io[0]);
  WAIT_FOR (captured (&k) == 3);
  cache_jio_run (k.io[2]);
  pthread_join (th, NULL);
  check_three_overlapping (&x);
  cache_set_jio (x.t.c, NULL, NULL);
  jt_close (&x);
  pthread_mutex_destroy (&k.lock);
  free (x.m);
}

/* The drainer's asynchronous hook (cache_set_jio_aio: uri=, rbd=): the
 * test is the backend.  It keeps each write it is given, puts it on the
 * fake disk and answers when the test says, in any order, from the test
 * thread: a write that overlaps one in flight is not given before that
 * one is answered; an error fails the batch and keeps the data dirty
 * and journaled; a write the hook declines goes the synchronous way.
 */
struct aio_capture {
  pthread_mutex_t lock;
  struct fake *f;
  struct {
    const void *buf;
    uint32_t count;
    uint64_t off;
    void (*done) (void *, int);
    void *arg;
  } w[16];
  unsigned n;
  bool decline;
};

static int
capture_aio (void *opaque, const void *buf, uint32_t count, uint64_t off,
             uint32_t flags, void (*done) (void *, int), void *arg)
{
  struct aio_capture *k = opaque;

  assert_int_equal (flags, 0);
  pthread_mutex_lock (&k->lock);
  if (k->decline) {
    pthread_mutex_unlock (&k->lock);
    return 1;
  }
  assert_true (k->n < 16);
  k->w[k->n].buf = buf;
  k->w[k->n].count = count;
  k->w[k->n].off = off;
  k->w[k->n].done = done;
  k->w[k->n].arg = arg;
  k->n++;
  pthread_mutex_unlock (&k->lock);
  return 0;
}

static unsigned
aio_captured (struct aio_capture *k)
{
  return locked_count (&k->lock, &k->n);
}

/* Answers captured write I with ERR (written to the disk if 0). */
static void
aio_answer (struct aio_capture *k, unsigned i, int err)
{
  if (err == 0)
    fake_disk_write (k->f, k->w[i].buf, k->w[i].count, k->w[i].off);
  k->w[i].done (k->w[i].arg, err);
}

static void
test_async_drain (void **state)
{
  struct jt x = { .m = NULL };
  struct aio_capture k = { .n = 0 };
  pthread_t th;
  (void) state;

  pthread_mutex_init (&k.lock, NULL);
  jt_open (&x);
  k.f = x.t.f;
  write_three_overlapping (&x);
  cache_set_jio_aio (x.t.c, capture_aio, &k);
  assert_int_equal (pthread_create (&th, NULL, drain_thread, x.t.c), 0);
  /* The first two are in flight; the third waits for the first. */
  WAIT_FOR (aio_captured (&k) == 2);
  assert_int_equal (k.w[0].off, 0);
  assert_int_equal (k.w[1].off, 65536);
  aio_answer (&k, 1, 0);
  aio_answer (&k, 0, 0);
  WAIT_FOR (aio_captured (&k) == 3);
  assert_int_equal (k.w[2].off, 0);
  aio_answer (&k, 2, 0);
  pthread_join (th, NULL);
  check_three_overlapping (&x);

  /* An error: the batch fails, the data stays dirty and journaled. */
  tc_quiet_errors = true;
  k.n = 0;
  assert_int_equal (write_pattern (&x.t, 8192, 4096, 4, 0), 0);
  assert_int_equal (cache_flush (x.t.c), 0);
  assert_int_equal (pthread_create (&th, NULL, drain_thread, x.t.c), 0);
  WAIT_FOR (aio_captured (&k) == 1);
  aio_answer (&k, 0, -EIO);
  pthread_join (th, NULL);
  assert_true (sectors_are (&x.t, 8192, 4096, V | D));
  assert_false (disk_is_pattern (&x.t, 8192, 4096, 4));
  assert_true (read_is_pattern (&x.t, 8192, 4096, 4));

  /* Declined: written the synchronous way, by the same step. */
  pthread_mutex_lock (&k.lock);
  k.decline = true;
  pthread_mutex_unlock (&k.lock);
  while (cache_journal_drain (x.t.c) > 0)
    ;
  tc_quiet_errors = false;
  assert_true (disk_is_pattern (&x.t, 8192, 4096, 4));
  assert_true (sectors_are (&x.t, 8192, 4096, V));
  cache_set_jio_aio (x.t.c, NULL, NULL);
  jt_close (&x);
  pthread_mutex_destroy (&k.lock);
  free (x.m);
}

/* A journal smaller than what is written: writers wait for write-back
 * to free space, and nothing is lost.
 */
static void
test_full_journal_throttles (void **state)
{
  struct jt x = { .m = NULL };
  struct cache_config cfg = jconfig ();
  (void) state;

  /* Memory for all of it: the journal is what fills. */
  cfg.cache_size = 8 * MiB;
  cfg.dirty_background_ratio = 90;
  cfg.dirty_ratio = 95;
  tc_open (&x.t, &cfg);
  cache_set_kick (x.t.c, NULL, NULL);
  x.j = fake_jdev_new (JNL_MIN_SIZE);
  assert_int_equal (
    cache_journal_open (x.t.c, fake_jdev_dev (x.j), IDENT, true), 0);
  assert_int_equal (cache_journal_recover (x.t.c), 0);
  for (unsigned i = 0; i < 64; i++) /* 4 MiB through a 1 MiB ring */
    assert_int_equal (write_pattern (&x.t, i * 65536, 65536, 100 + i, 0), 0);
  assert_int_equal (cache_flush (x.t.c), 0);
  for (unsigned i = 0; i < 64; i++)
    assert_true (read_is_pattern (&x.t, i * 65536, 65536, 100 + i));
  assert_true (stats (x.t.c).throttled > 0);
  assert_int_equal (cache_drain (x.t.c), 0);
  for (unsigned i = 0; i < 64; i++)
    assert_true (disk_is_pattern (&x.t, i * 65536, 65536, 100 + i));
  jt_close (&x);
}

static void
noop_kick (void *opaque)
{
  (void) opaque;
}

struct waiter {
  struct tcache *t;
  atomic_bool finished;
  int r;
};

static void *
write_past_room (void *arg)
{
  struct waiter *w = arg;

  /* 1 MiB: more than the ring has free. */
  w->r = write_pattern (w->t, 32 * 65536, 16 * 65536, 99, 0);
  atomic_store (&w->finished, true);
  return NULL;
}

/* journal-background-ratio=: when a step of the drainer is due.  Never
 * while the journal holds little and its oldest record is young; always
 * with ratio 0, an age limit reached, the ratio passed, or a writer
 * waiting for room (here below the ratio: 90 %), and when idle.
 */
static void
test_drain_due (void **state)
{
  struct jt x = { .m = NULL };
  struct cache_config cfg = jconfig ();
  struct cache_stats st;
  struct waiter w = { .t = &x.t };
  const uint64_t never = 3600000;
  pthread_t th;
  time_t t0;
  unsigned i = 0;
  (void) state;

  cfg.cache_size = 8 * MiB;
  cfg.dirty_background_ratio = 90;
  cfg.dirty_ratio = 95;
  tc_open (&x.t, &cfg);
  cache_set_kick (x.t.c, noop_kick, NULL); /* only the test drains */
  x.j = fake_jdev_new (JNL_MIN_SIZE);
  assert_int_equal (
    cache_journal_open (x.t.c, fake_jdev_dev (x.j), IDENT, true), 0);
  assert_int_equal (cache_journal_recover (x.t.c), 0);

  assert_true (cache_journal_drain_due (x.t.c, never, 50)); /* idle */
  assert_int_equal (write_pattern (&x.t, 0, 4096, 1, 0), 0);
  assert_false (cache_journal_drain_due (x.t.c, never, 50));
  assert_true (cache_journal_drain_due (x.t.c, 0, 50));
  assert_true (cache_journal_drain_due (x.t.c, never, 0));
  do {
    i++;
    assert_int_equal (write_pattern (&x.t, i * 65536, 65536, 1 + i, 0), 0);
    st = stats (x.t.c);
  } while (st.journal_used_bytes * 100 <= 50 * st.journal_size);
  assert_true (st.journal_used_bytes * 100 < 90 * st.journal_size);
  assert_true (cache_journal_drain_due (x.t.c, never, 50));
  assert_false (cache_journal_drain_due (x.t.c, never, 90));

  atomic_init (&w.finished, false);
  assert_int_equal (pthread_create (&th, NULL, write_past_room, &w), 0);
  t0 = time (NULL);
  while (!cache_journal_drain_due (x.t.c, never, 90) &&
         !atomic_load (&w.finished) && time (NULL) < t0 + 10)
    sched_yield ();
  assert_false (atomic_load (&w.finished)); /* it waited for room */
  assert_true (cache_journal_drain_due (x.t.c, never, 90));
  while (!atomic_load (&w.finished))
    if (cache_journal_drain (x.t.c) <= 0)
      sched_yield ();
  pthread_join (th, NULL);
  assert_int_equal (w.r, 0);
  assert_int_equal (cache_drain (x.t.c), 0);
  assert_true (disk_is_pattern (&x.t, 32 * 65536, 16 * 65536, 99));
  jt_close (&x);
}

/* A journal write that fails: the write succeeds from memory, the
 * record is written again by the next flush, and survives.
 */
static void
test_journal_write_error_retried (void **state)
{
  struct jt x = { .m = NULL };
  struct jt y = { .m = NULL };
  uint8_t *img;
  (void) state;

  jt_open (&x);
  tc_quiet_errors = true;
  fake_jdev_fail_next (x.j, FAKE_JDEV_PWRITE, EIO, 0);
  assert_int_equal (jwrite (&x, 0, 4096, 0), 0);
  assert_int_equal (jwrite (&x, 8192, 4096, 0), 0);
  assert_int_equal (jflush (&x), 0);
  img = fake_jdev_crash (x.j, 0);
  jt_open_dev (&y, fake_jdev_from_image (img, JSIZE), false, 0);
  assert_true (read_is_pattern (&y.t, 0, 4096, 1));
  assert_true (read_is_pattern (&y.t, 8192, 4096, 2));
  jt_close (&y);
  fake_jdev_free_image (img);
  /* Failing again at the flush's retry: the flush fails. */
  fake_jdev_fail_next (x.j, FAKE_JDEV_PWRITE, EIO, 0);
  assert_int_equal (jwrite (&x, 0, 4096, 0), 0);
  fake_jdev_fail_next (x.j, FAKE_JDEV_PWRITE, ENOSPC, 0);
  assert_int_equal (cache_flush (x.t.c), -ENOSPC);
  assert_int_equal (cache_flush (x.t.c), 0);
  tc_quiet_errors = false;
  jt_close (&x);
  free (x.m);
}

/* A failed journal sync fails the flush, and every later one: nothing
 * is acknowledged as durable that may not be.  Reads and writes go on.
 */
static void
test_journal_sync_error_sticky (void **state)
{
  struct jt x = { .m = NULL };
  (void) state;

  jt_open (&x);
  tc_quiet_errors = true;
  assert_int_equal (jwrite (&x, 0, 4096, 0), 0);
  fake_jdev_fail_next (x.j, FAKE_JDEV_SYNC, EIO, 0);
  assert_int_equal (cache_flush (x.t.c), -EIO);
  assert_int_equal (jwrite (&x, 4096, 4096, 0), 0);
  assert_int_equal (cache_flush (x.t.c), -EIO);
  assert_true (read_is_pattern (&x.t, 4096, 4096, 2));
  tc_quiet_errors = false;
  jt_close (&x);
  free (x.m);
}

/* The superblock's sync is a journal sync like any other: when it
 * fails, every later flush fails too.  Found by the schedule explorer
 * (explore --journal 1, seed 2005: a drain whose superblock sync failed,
 * then a drain that succeeded).  Here with Linux's fdatasync semantics
 * (fake_jdev_set_sync_drops): the drainer, stopped at its backend
 * flush, lets a write put its record in the journal's page cache; the
 * drainer's superblock sync fails and takes that record with it (the
 * kernel marks the pages clean and reports the error once); the next
 * flush's sync then succeeds with nothing to write.  A flush that
 * returned 0 there acknowledged a write that a crash loses.
 */
static void
test_superblock_sync_error_sticky (void **state)
{
  struct jt x = { .m = NULL };
  pthread_t th;
  int r;
  (void) state;

  jt_open (&x);
  tc_quiet_errors = true;
  fake_jdev_set_sync_drops (x.j, true);
  assert_int_equal (jwrite (&x, 0, 4096, 0), 0);
  assert_int_equal (jflush (&x), 0);
  /* The drainer: the first record on the backend, held at the flush. */
  fake_hold (x.t.f, FAKE_FLUSH, true);
  assert_int_equal (pthread_create (&th, NULL, drain_idle_thread, x.t.c), 0);
  WAIT_FOR (fake_held (x.t.f, FAKE_FLUSH) == 1);
  /* A write: its record written, not synced. */
  assert_int_equal (jwrite (&x, 8192, 4096, 0), 0);
  /* The drainer's next journal sync (its superblock's) fails. */
  fake_jdev_fail_next (x.j, FAKE_JDEV_SYNC, EIO, 0);
  fake_hold (x.t.f, FAKE_FLUSH, false);
  pthread_join (th, NULL);
  {
    struct fake_jdev_counts jc;

    fake_jdev_get_counts (x.j, &jc);
    assert_int_equal (jc.errors, 1); /* it was the superblock's sync */
  }
  r = cache_flush (x.t.c);
  if (r == 0) {
    /* Acknowledged as durable: a crash now must keep it. */
    uint8_t *img = fake_jdev_crash (x.j, 0);

    model_flushed (&x);
    check_crash_state (&x, img, "after the flush");
    fake_jdev_free_image (img);
  }
  assert_int_equal (r, -EIO);
  assert_int_equal (cache_flush (x.t.c), -EIO);
  tc_quiet_errors = false;
  jt_close (&x);
  free (x.m);
}

static void
kick_none (void *opaque)
{
  (void) opaque;
}

#define BIGJ (JNL_DATA_OFFSET + 16 * MiB)

/* Writes N bytes at OFF, random, to the cache and to WANT. */
static void
shadow_write (struct tcache *t, unsigned char *want, uint64_t off, uint32_t n)
{
  for (uint32_t i = 0; i < n; i++)
    want[off + i] = (unsigned char) (rand () | 1);
  assert_int_equal (cache_write (t->c, want + off, n, off, 0), 0);
}

static void
shadow_check (struct tcache *t, const unsigned char *want, uint64_t size)
{
  unsigned char *got = malloc (65536);

  assert_non_null (got);
  for (uint64_t off = 0; off < size; off += 65536) {
    assert_int_equal (cache_read (t->c, got, 65536, off), 0);
    assert_memory_equal (got, want + off, 65536);
  }
  free (got);
}

/* Dirty data beyond RAM: with no write-back at all (a kick hook that
 * does nothing), twice the cache's size of dirty data is written; pages
 * whose records are durable leave RAM, and every read, and every
 * partial write's fill, finds the newest data in the journal.  After a
 * drain the image holds it all, and the index is empty again.
 */
static void
test_dirty_beyond_ram (void **state)
{
  struct jt x = { .m = NULL };
  struct cache_config cfg = jconfig ();
  unsigned char *want = calloc (1, cfg.size);
  struct cache_stats st;
  (void) state;

  assert_non_null (want);
  srand (7);
  jt_open_dev (&x, fake_jdev_new (BIGJ), true, 0);
  cache_set_kick (x.t.c, kick_none, NULL);
  /* Every page: a 4 KiB write, a sector, and a ZERO of two sectors. */
  for (uint64_t pg = 0; pg < cfg.size / PG; pg++) {
    uint64_t base = pg * PG;

    shadow_write (&x.t, want, base + (pg % 7) * 4096, 4096);
    shadow_write (&x.t, want, base + 60 * SS, SS);
    assert_int_equal (cache_zero (x.t.c, 2 * SS, base + 100 * SS, 0), 0);
    memset (want + base + 100 * SS, 0, 2 * SS);
  }
  st = stats (x.t.c);
  assert_true (st.journal_spilled_pages > 0);
  assert_true (st.journal_index_bytes > 0);
  assert_int_equal (st.journal_drained_records, 0);
  assert_true (fake_disk_is_byte (x.t.f, 0, cfg.size, 0));
  /* Block status: every page holds data the backend does not, in RAM
   * or only in the journal.
   */
  for (uint64_t pg = 0; pg < cfg.size / PG; pg++) {
    uint64_t a, b;
    bool z;

    assert_true (
      cache_next_unflushed (x.t.c, pg * PG, (pg + 1) * PG, &a, &b, &z));
    assert_true (a >= pg * PG && b <= (pg + 1) * PG && a < b);
  }
  /* Partial sectors over data that left RAM: their fill reads it back
   * from the journal.
   */
  for (uint64_t pg = 0; pg < cfg.size / PG; pg += 3)
    shadow_write (&x.t, want, pg * PG + (pg % 7) * 4096 + 100, 37);
  shadow_check (&x.t, want, cfg.size);
  st = stats (x.t.c);
  assert_true (st.journal_read_bytes > 0);

  assert_int_equal (cache_flush (x.t.c), 0);
  assert_int_equal (cache_drain (x.t.c), 0);
  assert_true (fake_disk_equals (x.t.f, want, cfg.size, 0));
  shadow_check (&x.t, want, cfg.size);
  jt_close (&x);
  free (want);
}

/* journal-background-ratio=: the age limit under a steady stream of
 * writes.  One record, then 3100 more, one every 10 ms of the cache's
 * clock, all into one page (little of the journal: below any ratio),
 * nothing drained: after 31 s the first record is older than
 * dirty-expire-ms=30000, so a step is due and the metrics say so.
 */
static void
test_drain_due_old_record_in_stream (void **state)
{
  struct jt x = { .m = NULL };
  struct cache_stats st;
  const uint64_t expire = 30000;
  (void) state;

  jt_open_dev (&x, fake_jdev_new (BIGJ), true, 0);
  cache_set_kick (x.t.c, kick_none, NULL); /* only the test drains */
  assert_int_equal (write_pattern (&x.t, 0, SS, 1, 0), 0); /* the oldest */
  for (unsigned i = 0; i < 3100; i++) {
    atomic_fetch_add (&clock_skew_ms, 10);
    assert_int_equal (write_pattern (&x.t, SS, SS, 2 + i % 200, 0), 0);
  }
  st = stats (x.t.c);
  print_message ("oldest record: %llu ms old by the metrics (31000 really), "
                 "journal %llu of %llu bytes\n",
                 (unsigned long long) st.journal_oldest_age_ms,
                 (unsigned long long) st.journal_used_bytes,
                 (unsigned long long) st.journal_size);
  assert_true (st.journal_used_bytes * 100 < 50 * st.journal_size);
  assert_true (st.journal_oldest_age_ms >= expire);
  assert_true (cache_journal_drain_due (x.t.c, expire, 50));
  assert_int_equal (cache_drain (x.t.c), 0);
  assert_true (disk_is_pattern (&x.t, 0, SS, 1));
  jt_close (&x);
}

/* A writer of every other sector of each page of a 64 MiB image
 * through a journal (test_throttled_writer_makes_drain_due,
 * test_index_bounded): scattered 512-byte writes, a page's index node
 * at its largest (64 extents).  WANT is what the image must hold.
 */
struct sw {
  struct tcache t;
  struct fake_jdev *j;
  unsigned char *want;
  uint64_t npages;
  atomic_uint_fast64_t written;   /* writes done */
  atomic_uint_fast64_t max_index; /* the index's largest, after each page */
  atomic_bool done;
};

/* X's cache: CFG with a 64 MiB image, a new journal with JBYTES for
 * records, and the kick hook KICK (OPAQUE).
 */
static void
sw_open (struct sw *x, struct cache_config *cfg, uint64_t jbytes,
         cache_kick_fn kick, void *opaque)
{
  cfg->size = 64 * MiB;
  x->npages = cfg->size / PG;
  x->want = calloc (1, cfg->size);
  assert_non_null (x->want);
  x->j = fake_jdev_new (JNL_DATA_OFFSET + jbytes);
  tc_open (&x->t, cfg);
  cache_set_kick (x->t.c, kick, opaque);
  assert_int_equal (
    cache_journal_open (x->t.c, fake_jdev_dev (x->j), IDENT, true), 0);
  assert_int_equal (cache_journal_recover (x->t.c), 0);
}

static void
sw_close (struct sw *x)
{
  tc_close (&x->t);
  fake_jdev_free (x->j);
  free (x->want);
}

static void *
sw_writer (void *opaque)
{
  struct sw *x = opaque;
  unsigned char buf[SS];

  for (uint64_t pg = 0; pg < x->npages; pg++) {
    uint64_t ib;

    for (uint64_t s = 0; s < PG / SS; s += 2) {
      uint64_t off = pg * PG + s * SS;

      memset (buf, (int) (pg * 7 + s) | 1, SS);
      memcpy (x->want + off, buf, SS);
      if (cache_write (x->t.c, buf, SS, off, 0) != 0)
        abort ();
      atomic_fetch_add (&x->written, 1);
    }
    ib = stats (x->t.c).journal_index_bytes;
    if (ib > atomic_load (&x->max_index))
      atomic_store (&x->max_index, ib);
  }
  atomic_store (&x->done, true);
  return NULL;
}

/* The writer finished, or waits: throttled, or for a frame. */
static bool
sw_blocked_or_done (void *opaque)
{
  struct sw *x = opaque;
  struct cache_stats st = stats (x->t.c);

  return atomic_load (&x->done) || st.waiting_throttle > 0 ||
         st.waiting_page > 0;
}

/* journal-background-ratio=: a writer throttled in wb_throttle (dirty
 * memory over dirty-ratio and the index full).  The test plays a
 * drainer with ratio 90 and dirty-expire-ms an hour that, while no step
 * is due, sleeps out its interval whatever kicks come (the kick hook
 * does nothing: the worst case; jdrain_thread looks again on a kick),
 * and at each wake-up (tick) runs steps while one is due.  The writer writes every other sector of each page of
 * 64 MiB through a 2 MiB cache: pages whose records are synced leave
 * RAM until the index is full, and the writer then waits, for a frame
 * or in wb_throttle.  At the tick the full index makes a step due; it
 * drains the oldest 8 MiB of records, those of pages that left RAM,
 * and the index has room again.  The pages in RAM, over dirty-ratio,
 * hold records not drained: a writer waiting in wb_throttle must then
 * go on (pages may leave RAM again) or make a step due; if it only
 * kicks again and waits, with no step due, nothing changes until its
 * records are dirty-expire-ms old.
 */
struct thr {
  struct sw w;
  atomic_uint kicks;
  atomic_bool expired;
};

static void
thr_tick (struct thr *x)
{
  uint64_t expire = atomic_load (&x->expired) ? 0 : 3600000;

  while (cache_journal_drain_due (x->w.t.c, expire, 90))
    if (cache_journal_drain (x->w.t.c) <= 0)
      break;
}

static void
thr_kick (void *opaque)
{
  struct thr *x = opaque;

  atomic_fetch_add (&x->kicks, 1);
  if (atomic_load (&x->expired)) /* at the end: every step due */
    thr_tick (x);
}

struct thr_mark {
  struct thr *x;
  unsigned kicks;
  uint64_t left, written;
};

/* The throttled writer left wb_throttle (a wait it made is counted when
 * it leaves), or kicked again (it went round its loop: still there).
 */
static bool
thr_left_or_kicked (void *opaque)
{
  struct thr_mark *m = opaque;

  return stats (m->x->w.t.c).throttle_latency.count > m->left ||
         atomic_load (&m->x->kicks) > m->kicks;
}

static bool
thr_moved (void *opaque)
{
  struct thr_mark *m = opaque;

  return atomic_load (&m->x->w.done) ||
         atomic_load (&m->x->w.written) > m->written ||
         stats (m->x->w.t.c).waiting_throttle > 0;
}

static void
test_throttled_writer_makes_drain_due (void **state)
{
  struct thr *x = calloc (1, sizeof *x);
  struct cache_config cfg = jconfig ();
  struct cache_stats st;
  unsigned throttled = 0;
  bool stuck = false;
  pthread_t th;
  (void) state;

  assert_non_null (x);
  sw_open (&x->w, &cfg, 96 * MiB, thr_kick, x);
  assert_int_equal (pthread_create (&th, NULL, sw_writer, &x->w), 0);
  while (!stuck) {
    struct thr_mark m = { .x = x };

    assert_true (wait_until (sw_blocked_or_done, &x->w, 60000));
    if (atomic_load (&x->w.done))
      break;
    st = stats (x->w.t.c);
    m.kicks = atomic_load (&x->kicks);
    m.left = st.throttle_latency.count;
    m.written = atomic_load (&x->w.written);
    thr_tick (x); /* the drainer's wake-up */
    if (st.waiting_throttle > 0) {
      throttled++;
      assert_true (wait_until (thr_left_or_kicked, &m, 60000));
      st = stats (x->w.t.c);
      stuck = st.throttle_latency.count == m.left &&
              !cache_journal_drain_due (x->w.t.c, 3600000, 90);
    }
    else /* waiting for a frame: it goes on, or is throttled */
      assert_true (wait_until (thr_moved, &m, 60000));
  }
  st = stats (x->w.t.c);
  print_message ("writer %s after %u throttled waits: %llu dirty pages of "
                 "%llu, index %llu bytes, journal %llu of %llu bytes, %llu "
                 "records drained, a step %s\n",
                 stuck ? "stuck in wb_throttle" : "done", throttled,
                 (unsigned long long) st.dirty_pages,
                 (unsigned long long) st.pages_total,
                 (unsigned long long) st.journal_index_bytes,
                 (unsigned long long) st.journal_used_bytes,
                 (unsigned long long) st.journal_size,
                 (unsigned long long) st.journal_drained_records,
                 cache_journal_drain_due (x->w.t.c, 3600000, 90) ? "due"
                                                                 : "not due");
  atomic_store (&x->expired, true); /* the records expire: it goes on */
  assert_int_equal (pthread_join (th, NULL), 0);
  assert_false (stuck);
  assert_true (throttled > 0);
  assert_int_equal (cache_flush (x->w.t.c), 0);
  assert_int_equal (cache_drain (x->w.t.c), 0);
  assert_true (fake_disk_equals (x->w.t.f, x->w.want, cfg.size, 0));
  sw_close (&x->w);
  free (x);
}

/* The index's bound: a quarter of cache-size.  Scattered 512-byte
 * writes (every other sector of 1024 pages: a node of 64 extents per
 * page, about 2 KiB) would take 2 MiB of index for a 2 MiB cache.  With
 * no write-back at all (the kick hook does nothing until the test lets
 * it), dirty pages leave RAM until the index holds 512 KiB; then they
 * must stay, and the writer must wait (throttled, or for a frame)
 * instead of growing the index: the index never passes its bound by
 * more than the nodes of the pages in RAM.  Once write-back may run,
 * the writer goes on and every byte is right.
 */
struct ib {
  struct sw w;
  atomic_bool drain_ok;
};

static void
kick_if_allowed (void *opaque)
{
  struct ib *x = opaque;

  if (atomic_load (&x->drain_ok))
    cache_journal_drain (x->w.t.c);
}

static void
test_index_bounded (void **state)
{
  struct ib *x = calloc (1, sizeof *x);
  struct cache_config cfg = jconfig ();
  uint64_t bound;
  pthread_t th;
  (void) state;

  assert_non_null (x);
  sw_open (&x->w, &cfg, 48 * MiB, kick_if_allowed, x);
  /* The bound, plus every frame's node at its largest (2 x (64 + 2)
   * extents): pages in RAM are not held to it.
   */
  bound = cfg.cache_size / 4 +
          (cfg.cache_size / PG + 1) * (48 + 16 * 2 * (PG / SS / 2 + 2));
  assert_int_equal (pthread_create (&th, NULL, sw_writer, &x->w), 0);
  assert_true (wait_until (sw_blocked_or_done, &x->w, 60000));
  print_message ("index: %llu bytes when the writer %s (bound %llu)\n",
                 (unsigned long long) stats (x->w.t.c).journal_index_bytes,
                 atomic_load (&x->w.done) ? "finished" : "waited",
                 (unsigned long long) bound);
  assert_false (atomic_load (&x->w.done));
  assert_true (stats (x->w.t.c).journal_spilled_pages > 0);
  assert_true (stats (x->w.t.c).journal_index_bytes >= cfg.cache_size / 8);
  assert_true (stats (x->w.t.c).journal_index_bytes <= bound);
  /* Write-back may run now: the writer goes on. */
  atomic_store (&x->drain_ok, true);
  assert_int_equal (cache_journal_drain (x->w.t.c) >= 0, true);
  assert_int_equal (pthread_join (th, NULL), 0);
  assert_true (atomic_load (&x->w.max_index) <= bound);
  for (uint64_t off = 0; off < cfg.size; off += PG) {
    unsigned char got[PG];

    assert_int_equal (cache_read (x->w.t.c, got, PG, off), 0);
    assert_memory_equal (got, x->w.want + off, PG);
  }
  assert_int_equal (cache_flush (x->w.t.c), 0);
  assert_int_equal (cache_drain (x->w.t.c), 0);
  assert_true (fake_disk_equals (x->w.t.f, x->w.want, cfg.size, 0));
  sw_close (&x->w);
  free (x);
}

/* A read that found its data in the journal and lost the race with
 * write-back: between listing where the data is and reading it, the
 * records are drained, the tail moves and newer records reuse the
 * space.  It must not return what now lies there (rule 14's space, read
 * by jnl_read): the backend holds the data.
 */
static void
test_read_races_reuse (void **state)
{
  struct jt x = { .m = NULL };
  struct cache_config cfg = jconfig ();
  unsigned char *want = calloc (1, cfg.size);
  struct stops st;
  struct async *a;
  unsigned k;
  (void) state;

  assert_non_null (want);
  srand (8);
  /* The smallest journal the page size allows: reused quickly. */
  jt_open_dev (&x, fake_jdev_new (JNL_DATA_OFFSET + 1 * MiB), true, 0);
  cache_set_kick (x.t.c, kick_none, NULL);
  for (uint64_t pg = 0; pg < 40; pg++)
    shadow_write (&x.t, want, pg * PG, 8192);
  assert_true (stats (x.t.c).journal_spilled_pages > 0);
  /* Page 0 left RAM first. */
  stops_init (&st);
  k = stops_add (&st, "read.listed", 1);
  cache_debug_set_park (x.t.c, stops_hook, &st);
  a = async_start (&x.t, ASYNC_READ, NULL, 8192, 0, 0);
  WAIT_FOR (stops_parked (&st, k));
  cache_debug_set_park (x.t.c, NULL, NULL);
  /* Everything written back, and the whole ring written over. */
  assert_int_equal (cache_flush (x.t.c), 0);
  assert_int_equal (cache_drain (x.t.c), 0);
  for (unsigned round = 0; round < 4; round++) {
    for (uint64_t pg = 40; pg < 56; pg++)
      shadow_write (&x.t, want, pg * PG, 16384);
    assert_int_equal (cache_flush (x.t.c), 0);
    assert_int_equal (cache_drain (x.t.c), 0);
  }
  stops_release (&st, k);
  assert_int_equal (async_join (a), 0);
  assert_memory_equal (a->buf, want, 8192);
  shadow_check (&x.t, want, cfg.size);
  stops_destroy (&st);
  jt_close (&x);
  free (want);
}

/* Opens X with a journal of BIGJ and no write-back, writes page 0 and
 * flushes, then writes every other page (twice the cache): page 0
 * leaves RAM dirty, its data in the journal's index only.  WANT gets
 * what was written.
 */
static void
spill_page0 (struct jt *x, unsigned char *want, unsigned seed)
{
  struct cache_config cfg = jconfig ();

  srand (seed);
  jt_open_dev (x, fake_jdev_new (BIGJ), true, 0);
  cache_set_kick (x->t.c, kick_none, NULL);
  shadow_write (&x->t, want, 0, PG);
  assert_int_equal (cache_flush (x->t.c), 0);
  for (uint64_t pg = 1; pg < cfg.size / PG; pg++)
    shadow_write (&x->t, want, pg * PG, PG);
}

/* Block status of data that lives only in the journal, once read back:
 * page 0 leaves RAM dirty (its records durable, none written back), a
 * read brings it back, installing what it read from the journal as
 * CLEAN sectors; the backend still holds zeroes.  Block status must
 * still call page 0 data (rule: it may call data a hole, never the
 * reverse), but the resident page has no D sector and its node's live
 * extents are all under V sectors, which journaled_unflushed skips.
 */
static void
test_block_status_after_read_back (void **state)
{
  struct jt x = { .m = NULL };
  struct cache_config cfg = jconfig ();
  unsigned char *want = calloc (1, cfg.size);
  unsigned char *got = malloc (PG);
  uint64_t a, b;
  bool z;
  (void) state;

  assert_non_null (want);
  assert_non_null (got);
  spill_page0 (&x, want, 9);
  assert_false (cache_debug_resident (x.t.c, 0));
  assert_true (stats (x.t.c).journal_spilled_pages > 0);
  assert_true (cache_next_unflushed (x.t.c, 0, PG, &a, &b, &z));
  /* Read back from the journal. */
  assert_int_equal (cache_read (x.t.c, got, PG, 0), 0);
  assert_memory_equal (got, want, PG);
  assert_true (cache_debug_resident (x.t.c, 0));
  assert_true (fake_disk_is_byte (x.t.f, 0, PG, 0));
  /* Nothing written back: page 0 is data the backend does not hold. */
  assert_true (cache_next_unflushed (x.t.c, 0, PG, &a, &b, &z));
  assert_true (a < PG && !z);

  assert_int_equal (cache_drain (x.t.c), 0);
  assert_true (fake_disk_equals (x.t.f, want, cfg.size, 0));
  jt_close (&x);
  free (got);
  free (want);
}

/* The park hook of test_block_status_races_attach: at "extent.absent"
 * (block status found page 0 not resident), a write of one sector of
 * page 0 brings the page back, which takes its node from the index.
 */
struct attach_hook {
  struct tcache *t;
  unsigned char *want;
  bool done;
};

static void
attach_hook (void *opaque, const char *point)
{
  struct attach_hook *h = opaque;

  if (h->done || strcmp (point, "extent.absent") != 0)
    return;
  h->done = true;
  shadow_write (h->t, h->want, 0, SS);
}

/* Block status against a page coming back: journaled_unflushed finds
 * page 0 not resident (page_find), then looks for its node in the
 * index (jnl_index_has) with no lock held between the two.  If the page
 * is re-created meanwhile (page_get -> jnl_page_attach), its node has
 * left the index for the page: block status sees neither and calls a
 * page holding journaled data the backend does not have a hole.
 */
static void
test_block_status_races_attach (void **state)
{
  struct jt x = { .m = NULL };
  struct cache_config cfg = jconfig ();
  unsigned char *want = calloc (1, cfg.size);
  struct attach_hook h = { .want = want };
  uint64_t a, b;
  bool z, found;
  (void) state;

  assert_non_null (want);
  spill_page0 (&x, want, 10);
  assert_false (cache_debug_resident (x.t.c, 0));
  assert_true (stats (x.t.c).journal_spilled_pages > 0);

  h.t = &x.t;
  cache_debug_set_park (x.t.c, attach_hook, &h);
  found = cache_next_unflushed (x.t.c, 0, PG, &a, &b, &z);
  cache_debug_set_park (x.t.c, NULL, NULL);
  assert_true (h.done);
  assert_true (cache_debug_resident (x.t.c, 0));
  assert_true (fake_disk_is_byte (x.t.f, 0, PG, 0));
  /* Nothing written back: page 0 is data the backend does not hold. */
  assert_true (found);

  assert_int_equal (cache_drain (x.t.c), 0);
  assert_true (fake_disk_equals (x.t.f, want, cfg.size, 0));
  jt_close (&x);
  free (want);
}

/* A shrink that cuts a sector whose data left RAM, then a growth back.
 * Resident, that sector would be DIRTY at the new end: resize_locked
 * sets cut_held, the growth patches nothing and the drainer writes the
 * whole sector (what the client wrote past the cut survives, as
 * resize.c promises for data written before a shrink).  Spilled, the
 * data is in the index only; resize_locked looks at resident frames
 * (page_past), so cut_held stays false, the growth records a cut
 * (jnl_note_growth) and the drainer clips the record at the old end
 * (clip_at_growth): flushed bytes past it are lost.
 */
static void
test_shrink_cut_spilled (void **state)
{
  struct jt x = { .m = NULL };
  struct cache_config cfg = jconfig ();
  unsigned char *want = calloc (1, cfg.size);
  uint64_t cut = 10 * SS + 100;
  (void) state;

  assert_non_null (want);
  spill_page0 (&x, want, 11);
  assert_int_equal (cache_flush (x.t.c), 0);
  assert_false (cache_debug_resident (x.t.c, 0));

  tc_quiet_errors = true;
  fake_resize (x.t.f, cut);
  assert_int_equal (cache_refresh_size (x.t.c), cut);
  fake_resize (x.t.f, cfg.size);
  assert_int_equal (cache_refresh_size (x.t.c), cfg.size);
  tc_quiet_errors = false;

  assert_int_equal (cache_drain (x.t.c), 0);
  assert_true (fake_disk_equals (x.t.f, want, cfg.size, 0));
  jt_close (&x);
  free (want);
}

/* With room in the index, dirty pages leave RAM instead of throttling
 * writers: after a failed journal sync none of them is durable, so none
 * can leave, and a writer that needs a frame fails with the error once
 * the cache is full of them, rather than waiting for ever.
 */
static void
test_full_cache_after_sync_error (void **state)
{
  struct jt x = { .m = NULL };
  struct cache_config cfg = jconfig ();
  unsigned char *buf = malloc (65536);
  int r = 0;
  unsigned k;
  (void) state;

  assert_non_null (buf);
  memset (buf, 0x5a, 65536);
  jt_open_dev (&x, fake_jdev_new (JSIZE), true, 0); /* no kick hook */
  tc_quiet_errors = true;
  fake_jdev_fail_next (x.j, FAKE_JDEV_SYNC, EIO, 0);
  for (k = 0; k < 2 * (cfg.cache_size / 65536) && r == 0; k++)
    r = cache_write (x.t.c, buf, 65536, (uint64_t) k * 65536, 0);
  assert_int_equal (r, -EIO);
  assert_true (k <= cfg.cache_size / 65536 + 1);
  assert_int_equal (cache_flush (x.t.c), -EIO);
  tc_quiet_errors = false;
  jt_close (&x);
  free (buf);
}

/* Rule 15: another image's journal, another sector size, a corrupt or
 * newer superblock, a device holding something else: refused, and the
 * device is left as it was.
 */
static void
test_wrong_journal_refused (void **state)
{
  struct jt x = { .m = NULL };
  struct tcache t2 = { .c = NULL };
  struct cache_config cfg = jconfig ();
  uint8_t *before, *after, slot[JNL_SB_SIZE];
  struct jsb sb;
  struct fake_jdev *j;
  (void) state;

  jt_open (&x);
  assert_int_equal (jwrite (&x, 0, 4096, 0), 0);
  assert_int_equal (jflush (&x), 0);
  before = fake_jdev_contents (x.j);

  tc_open (&t2, &cfg);
  tc_quiet_errors = true;
  /* Another image. */
  assert_int_equal (cache_journal_open (t2.c, fake_jdev_dev (x.j),
                                        "file:/other", false),
                    -EINVAL);
  tc_close (&t2);
  /* Another sector size. */
  cfg.sector_size = 4096;
  tc_open (&t2, &cfg);
  assert_int_equal (
    cache_journal_open (t2.c, fake_jdev_dev (x.j), IDENT, false), -EINVAL);
  tc_close (&t2);
  cfg = jconfig ();
  after = fake_jdev_contents (x.j);
  assert_memory_equal (before, after, JSIZE);
  fake_jdev_free_image (after);

  /* A newer format version (a valid superblock otherwise). */
  assert_int_equal (jsb_read (fake_jdev_dev (x.j), &sb), 0);
  sb.version = JNL_VERSION + 1;
  jsb_encode (&sb, slot);
  j = fake_jdev_from_image (before, JSIZE);
  fake_jdev_dev (j)->ops->pwrite (fake_jdev_dev (j)->opaque, slot, JNL_SB_SIZE,
                                  (sb.generation % 2) * JNL_SB_SIZE);
  tc_open (&t2, &cfg);
  assert_int_equal (cache_journal_open (t2.c, fake_jdev_dev (j), IDENT, false),
                    -EPROTONOSUPPORT);
  tc_close (&t2);
  fake_jdev_free (j);

  /* Both superblocks corrupt. */
  j = fake_jdev_from_image (before, JSIZE);
  memset (slot, 0, sizeof slot);
  memcpy (slot, "SUBPGJNL", 8);
  fake_jdev_dev (j)->ops->pwrite (fake_jdev_dev (j)->opaque, slot, JNL_SB_SIZE,
                                  0);
  fake_jdev_dev (j)->ops->pwrite (fake_jdev_dev (j)->opaque, slot, JNL_SB_SIZE,
                                  JNL_SB_SIZE);
  tc_open (&t2, &cfg);
  assert_int_equal (cache_journal_open (t2.c, fake_jdev_dev (j), IDENT, false),
                    -EINVAL);
  tc_close (&t2);
  fake_jdev_free (j);

  /* Not a journal at all, and not new: not formatted over. */
  j = fake_jdev_new (JSIZE);
  memset (slot, 'x', sizeof slot);
  fake_jdev_dev (j)->ops->pwrite (fake_jdev_dev (j)->opaque, slot, JNL_SB_SIZE,
                                  0);
  tc_open (&t2, &cfg);
  assert_int_equal (cache_journal_open (t2.c, fake_jdev_dev (j), IDENT, false),
                    -EINVAL);
  tc_close (&t2);
  after = fake_jdev_contents (j);
  assert_memory_equal (after, slot, JNL_SB_SIZE);
  fake_jdev_free_image (after);
  fake_jdev_free (j);
  tc_quiet_errors = false;

  fake_jdev_free_image (before);
  jt_close (&x);
  free (x.m);
}

/* A journal holding data past the end of a (shrunk) image is refused
 * at recovery, and kept.
 */
static void
test_shrunk_image_refused (void **state)
{
  struct jt x = { .m = NULL };
  struct tcache t2 = { .c = NULL };
  struct cache_config cfg = jconfig ();
  struct fake_jdev *j;
  uint8_t *img;
  (void) state;

  jt_open (&x);
  assert_int_equal (jwrite (&x, 3 * MiB, 4096, 0), 0);
  assert_int_equal (jflush (&x), 0);
  img = fake_jdev_crash (x.j, 0);
  cfg.size = 2 * MiB;
  tc_open (&t2, &cfg);
  j = fake_jdev_from_image (img, JSIZE);
  assert_int_equal (cache_journal_open (t2.c, fake_jdev_dev (j), IDENT, false),
                    0);
  tc_quiet_errors = true;
  assert_int_equal (cache_journal_recover (t2.c), -EINVAL);
  tc_quiet_errors = false;
  tc_close (&t2);
  {
    uint8_t *now = fake_jdev_contents (j);
    assert_memory_equal (now, img, JSIZE);
    fake_jdev_free_image (now);
  }
  fake_jdev_free (j);
  fake_jdev_free_image (img);
  jt_close (&x);
  free (x.m);
}

/* A failed sync of the superblock by the drainer is sticky too: the
 * next flush fails, though its own sync might succeed.
 */
static void
test_drainer_sync_error_sticky (void **state)
{
  struct jt x = { .m = NULL };
  (void) state;

  jt_open (&x);
  tc_quiet_errors = true;
  assert_int_equal (jwrite (&x, 0, 4096, 0), 0);
  assert_int_equal (jflush (&x), 0);
  fake_jdev_fail_next (x.j, FAKE_JDEV_SYNC, EIO, 0);
  {
    int r;

    while ((r = cache_journal_drain (x.t.c)) > 0)
      ;
    assert_true (r < 0);
  }
  assert_int_equal (jwrite (&x, 4096, 4096, 0), 0);
  assert_int_equal (cache_flush (x.t.c), -EIO);
  tc_quiet_errors = false;
  jt_close (&x);
  free (x.m);
}

/* A superblock write that fails is written again by the next step, even
 * with nothing new to drain, and only then is the space free.
 */
static void
test_tail_write_retried (void **state)
{
  struct jt x = { .m = NULL };
  (void) state;

  jt_open (&x);
  tc_quiet_errors = true;
  assert_int_equal (jwrite (&x, 0, 4096, 0), 0);
  assert_int_equal (jflush (&x), 0);
  fake_jdev_fail_next (x.j, FAKE_JDEV_PWRITE, EIO, 0); /* the superblock */
  assert_int_equal (cache_journal_drain (x.t.c), -EIO);
  assert_true (disk_is_pattern (&x.t, 0, 4096, 1)); /* written back */
  assert_int_equal (stats (x.t.c).journal_used_bytes, jrec_size (4096));
  assert_int_equal (cache_journal_drain (x.t.c), 0);
  assert_int_equal (stats (x.t.c).journal_used_bytes, 0);
  tc_quiet_errors = false;
  jt_close (&x);
  free (x.m);
}

/* The image shrank below journaled data: the drainer neither writes it
 * (which would extend the image) nor drops it.
 */
static void
test_drain_past_end_kept (void **state)
{
  struct jt x = { .m = NULL };
  (void) state;

  jt_open (&x);
  tc_quiet_errors = true;
  assert_int_equal (jwrite (&x, 3 * MiB, 4096, 0), 0);
  assert_int_equal (jflush (&x), 0);
  fake_resize (x.t.f, 2 * MiB);
  assert_true (cache_journal_drain (x.t.c) < 0);
  assert_int_equal (fake_size (x.t.f), 2 * MiB);
  assert_true (stats (x.t.c).journal_pending_bytes > 0);
  fake_resize (x.t.f, 4 * MiB);
  assert_true (cache_journal_drain (x.t.c) > 0);
  assert_true (disk_is_pattern (&x.t, 3 * MiB, 4096, 1));
  tc_quiet_errors = false;
  jt_close (&x);
  free (x.m);
}

/* A journal too small for the page size is refused, not left to hang
 * every whole-page write.
 */
static void
test_journal_too_small_for_page (void **state)
{
  struct tcache t = { .c = NULL };
  struct cache_config cfg = jconfig ();
  struct fake_jdev *j = fake_jdev_new (JNL_MIN_SIZE);
  (void) state;

  cfg.page_size = 2 * MiB;
  cfg.cache_size = 16 * MiB;
  tc_open (&t, &cfg);
  tc_quiet_errors = true;
  assert_int_equal (cache_journal_open (t.c, fake_jdev_dev (j), IDENT, true),
                    -EINVAL);
  tc_quiet_errors = false;
  tc_close (&t);
  fake_jdev_free (j);
}

/* journal-order=any: one batch may span epochs, with one backend flush
 * at its end; the default drains an epoch per batch.
 */
static void
test_order_any_merges_epochs (void **state)
{
  struct jt x = { .m = NULL };
  (void) state;

  for (int any = 0; any <= 1; any++) {
    jt_open (&x);
    cache_journal_order_any (x.t.c, any);
    for (unsigned e = 0; e < 3; e++) {
      assert_int_equal (jwrite (&x, e * 65536, 4096, 0), 0);
      assert_int_equal (jflush (&x), 0);
    }
    fake_reset_counts (x.t.f);
    assert_int_equal (cache_journal_drain (x.t.c), any ? 3 : 1);
    assert_int_equal (counts (&x.t).flushes, 1);
    while (cache_journal_drain (x.t.c) > 0)
      ;
    for (unsigned e = 0; e < 3; e++)
      assert_true (disk_is_pattern (&x.t, e * 65536, 4096, 1 + e));
    jt_close (&x);
    free (x.m);
    x.m = NULL;
  }
}

/* ---- a recovered log that ends with a WRAP record ----
 *
 * A writer whose record does not fit in what is left of a lap writes a
 * WRAP record (a sequence number of its own) and then its record at the
 * next lap's start: two pwrites.  A power cut may keep the WRAP and
 * lose the record.  Recovery's scan then consumes the WRAP, stops at
 * the lap's start (END), and sets synced_seq = closed_seq = the WRAP's
 * sequence number.  If a drain batch ends right before the WRAP (here:
 * DRAIN_BATCH, 8 MiB after the tail), the next step scans the WRAP,
 * finds nothing at END, and returns 0 without moving mtail past the
 * WRAP (nrec == 0): mtail_seq stays at the WRAP's sequence number for
 * ever, so cache_drain (jnl_drain_all: mtail_seq > upto) and a barrier
 * of a write around the journal (mtail_seq > closed_seq) loop on
 * drain_step, and the split is never cleared.
 *
 * Geometry: a ring of 12 MiB, 64 KiB pages (records of 65600 bytes).
 * 63 records drained first put the tail at 4132800; 128 more (FUA, one
 * epoch) end at X = 12529600, 8396800 bytes past the tail: the first
 * record boundary at or past 8 MiB.  53312 bytes are left in the lap:
 * the next whole-page record needs a WRAP at X.
 */
#define RWRAP_JSIZE (JNL_DATA_OFFSET + 12 * MiB)

static void
rwrap_crash_image (struct jt *x, uint8_t **img, unsigned char *disk)
{
  const struct jdev *dev;
  struct async *a;
  unsigned char *buf = malloc (PG);

  assert_non_null (buf);
  jt_open_disk (x, fake_jdev_new (RWRAP_JSIZE), true, 0, NULL);
  for (unsigned i = 0; i < 63; i++)
    assert_int_equal (write_pattern (&x->t, (i % 16) * PG, PG, 100 + i, 0), 0);
  assert_int_equal (cache_flush (x->t.c), 0);
  while (cache_journal_drain (x->t.c) > 0)
    ;
  assert_int_equal (stats (x->t.c).journal_used_bytes, 0);
  for (unsigned i = 0; i < 128; i++)
    assert_int_equal (
      write_pattern (&x->t, (i % 16) * PG, PG, 200 + i, CACHE_FUA), 0);
  assert_int_equal (stats (x->t.c).journal_used_bytes, 8396800);

  /* The next record: its WRAP is written, the record itself is held. */
  struct fake_jdev_counts jc;
  uint64_t pw;

  fake_jdev_hold (x->j, FAKE_JDEV_PWRITE, true);
  fake_jdev_get_counts (x->j, &jc);
  pw = jc.pwrites;
  pattern (buf, PG, 0, 999);
  a = async_start (&x->t, ASYNC_WRITE, buf, PG, 0, 0);
  WAIT_FOR (fake_jdev_held (x->j, FAKE_JDEV_PWRITE) == 1);
  fake_jdev_release (x->j, FAKE_JDEV_PWRITE, 1); /* the WRAP */
  WAIT_FOR ((fake_jdev_get_counts (x->j, &jc), jc.pwrites == pw + 1) &&
            fake_jdev_held (x->j, FAKE_JDEV_PWRITE) == 1); /* the record */
  /* The kernel writes the WRAP's page back; then the power goes. */
  dev = fake_jdev_dev (x->j);
  assert_int_equal (dev->ops->sync (dev->opaque), 0);
  *img = fake_jdev_crash (x->j, 0);
  fake_disk_read (x->t.f, disk, jconfig ().size, 0);
  fake_jdev_hold (x->j, FAKE_JDEV_PWRITE, false);
  assert_int_equal (async_join (a), 0);
  free (buf);
}

/* Y recovers the crash image of rwrap_crash_image. */
static void
rwrap_recover (struct jt *y)
{
  struct jt x = { .m = NULL };
  unsigned char *disk = malloc (jconfig ().size);
  uint8_t *img;

  assert_non_null (disk);
  rwrap_crash_image (&x, &img, disk);
  jt_close (&x);
  jt_open_disk (y, fake_jdev_from_image (img, RWRAP_JSIZE), false, 0, disk);
  fake_jdev_free_image (img);
  free (disk);
}

/* cache_drain after that recovery: every record is written back, and
 * the journal is left empty.
 */
static void
test_recovered_wrap_drains (void **state)
{
  struct jt y = { .m = NULL };
  (void) state;

  rwrap_recover (&y);
  assert_int_equal (counts (&y.t).writes, 0); /* indexed, not replayed */
  /* The drain steps cache_drain would run, bounded: each one either
   * writes records back or finds the log drained.
   */
  for (unsigned k = 0; k < 8; k++) {
    int r = cache_journal_drain (y.t.c);

    print_message ("drain step %u: %d, pending %llu bytes\n", k, r,
                   (unsigned long long) stats (y.t.c).journal_pending_bytes);
  }
  if (stats (y.t.c).journal_pending_bytes != 0)
    fail_msg ("the drainer is stuck before the recovered WRAP: %llu bytes "
              "pending and no step moves the tail (cache_drain and a "
              "bypass barrier would loop on drain_step for ever)",
              (unsigned long long) stats (y.t.c).journal_pending_bytes);
  assert_int_equal (cache_drain (y.t.c), 0);
  jt_close (&y);
}

struct rwrap_drain {
  struct cache *c;
  int r;
  atomic_bool done;
};

static void *
rwrap_drain_thread (void *arg)
{
  struct rwrap_drain *d = arg;

  d->r = cache_drain (d->c);
  atomic_store (&d->done, true);
  return NULL;
}

/* The same seen from cache_drain itself: it runs step after step (each
 * one reads the ring: the device's PREAD gate counts them) and does not
 * return.  A client write then lets it finish.
 */
static void
test_recovered_wrap_cache_drain_spins (void **state)
{
  struct jt y = { .m = NULL };
  struct rwrap_drain d = { .c = NULL };
  pthread_t th;
  bool done = false;
  (void) state;

  rwrap_recover (&y);
  /* The first batch (8 MiB, up to the WRAP). */
  assert_true (cache_journal_drain (y.t.c) > 0);
  fake_jdev_hold (y.j, FAKE_JDEV_PREAD, true);
  /* cache_drain: a flush (nothing to sync), then jnl_drain_all. */
  d.c = y.t.c;
  assert_int_equal (pthread_create (&th, NULL, rwrap_drain_thread, &d), 0);
  for (unsigned k = 0; k < 50 && !done; k++) {
    WAIT_FOR (fake_jdev_held (y.j, FAKE_JDEV_PREAD) == 1 ||
              (done = atomic_load (&d.done)));
    if (!done)
      fake_jdev_release (y.j, FAKE_JDEV_PREAD, 1);
  }
  done = done || atomic_load (&d.done);
  if (!done) {
    /* Unstick it (a new record after the WRAP), then report. */
    fake_jdev_hold (y.j, FAKE_JDEV_PREAD, false);
    assert_int_equal (write_pattern (&y.t, 0, SS, 7, 0), 0);
    pthread_join (th, NULL);
    assert_int_equal (d.r, 0);
    fail_msg ("cache_drain ran 50 drain steps, each reading the ring, "
              "and had not returned (it returns once a new write comes)");
  }
  fake_jdev_hold (y.j, FAKE_JDEV_PREAD, false);
  pthread_join (th, NULL);
  assert_int_equal (d.r, 0);
  jt_close (&y);
}

/* The same recovered log: after the first batch stops before the
 * WRAP, a client write places a new record, written but not synced (no
 * flush, no FUA).  The next drain step must not write it to the
 * backend: "the drainer writes back only records that a crash would
 * keep" (docs/journal.md).  With a log that ended after the WRAP,
 * synced_seq was the WRAP's, and one jscan_next consumed the WRAP and
 * returned the new record, which the drainer wrote and flushed.
 */
static void
test_recovered_wrap_drains_unsynced (void **state)
{
  struct jt y = { .m = NULL };
  struct fake_jdev_counts jc;
  pthread_t th;
  (void) state;

  rwrap_recover (&y);
  assert_true (cache_journal_drain (y.t.c) > 0); /* up to the WRAP */
  assert_int_equal (write_pattern (&y.t, 5 * PG, SS, 4242, 0), 0);
  fake_jdev_get_counts (y.j, &jc);
  assert_true (jc.pending > 0); /* the new record is not durable */
  /* The drain step, held at the journal's first sync after it wrote
   * the backend (write_tail's: the record still not durable).
   */
  fake_jdev_hold (y.j, FAKE_JDEV_SYNC, true);
  assert_int_equal (pthread_create (&th, NULL, drain_thread, y.t.c), 0);
  WAIT_FOR (fake_jdev_held (y.j, FAKE_JDEV_SYNC) == 1);
  if (disk_is_pattern (&y.t, 5 * PG, SS, 4242)) {
    fake_jdev_hold (y.j, FAKE_JDEV_SYNC, false);
    pthread_join (th, NULL);
    jt_close (&y);
    fail_msg ("the backend holds (written and flushed) a record the "
              "journal has not synced: the drainer went past its limit "
              "(synced_seq, the recovered WRAP)");
  }
  fake_jdev_hold (y.j, FAKE_JDEV_SYNC, false);
  pthread_join (th, NULL);
  jt_close (&y);
}

/* ---- the recovered log while the drainer writes it back ----
 *
 * rv_build: a server writes pages 0-7 and 40-47 (seeds 11.., 51..),
 * page 8 (seed 9, written back) then a ZERO over it, flushes and loses
 * its power: IMG (every record durable) and DISK (page 8 only).  EXP:
 * what the image holds.
 */
#define RV_SIZE (4 * MiB)

static void
rv_build (uint8_t **img, unsigned char *disk, unsigned char *exp)
{
  struct jt x = { .m = NULL };

  jt_open_dev (&x, fake_jdev_new (JSIZE), true, 0);
  memset (exp, 0, RV_SIZE);
  assert_int_equal (write_pattern (&x.t, 8 * PG, PG, 9, 0), 0);
  assert_int_equal (cache_drain (x.t.c), 0);
  for (unsigned i = 0; i < 8; i++) {
    assert_int_equal (write_pattern (&x.t, i * PG, PG, 11 + i, 0), 0);
    pattern (exp + i * PG, PG, i * PG, 11 + i);
    assert_int_equal (write_pattern (&x.t, (40 + i) * PG, PG, 51 + i, 0), 0);
    pattern (exp + (40 + i) * PG, PG, (40 + i) * PG, 51 + i);
  }
  assert_int_equal (cache_zero (x.t.c, PG, 8 * PG, 0), 0);
  assert_int_equal (cache_flush (x.t.c), 0);
  *img = fake_jdev_crash (x.j, 0);
  fake_disk_read (x.t.f, disk, RV_SIZE, 0);
  jt_close (&x);
}

/* Y: the server that recovers IMG over DISK; nothing written back. */
static void
rv_recover (struct jt *y, uint8_t *img, const unsigned char *disk)
{
  jt_open_disk (y, fake_jdev_from_image (img, JSIZE), false, 0, disk);
  assert_int_equal (counts (&y->t).writes, 0); /* indexed */
}

/* rv_build, then Y recovers it: *DISK and *EXP (freed by rv_end). */
static void
rv_start (struct jt *y, unsigned char **disk, unsigned char **exp)
{
  uint8_t *img;

  *disk = malloc (RV_SIZE);
  *exp = malloc (RV_SIZE);
  assert_non_null (*disk);
  assert_non_null (*exp);
  rv_build (&img, *disk, *exp);
  rv_recover (y, img, *disk);
  fake_jdev_free_image (img);
}

static void
rv_end (struct jt *y, unsigned char *disk, unsigned char *exp)
{
  jt_close (y);
  free (disk);
  free (exp);
}

/* First sector (or -1) where [off, off+n) of BUF differs from EXP. */
static long
rv_diff (const unsigned char *buf, const unsigned char *exp, uint64_t off,
         uint64_t n)
{
  for (uint64_t s = off / SS; s < (off + n) / SS; s++)
    if (memcmp (buf + s * SS - off, exp + s * SS, SS) != 0)
      return (long) s;
  return -1;
}

/* A crash of Y now (power cut SEED): the next server, over Y's backend
 * as it is, reads EXP, and once drained its backend does too.
 */
static void
rv_check_crash (struct jt *y, uint64_t seed, const unsigned char *exp,
                const char *what)
{
  struct jt z = { .m = NULL };
  unsigned char *disk = malloc (RV_SIZE), *buf = malloc (RV_SIZE);
  uint8_t *img = fake_jdev_crash (y->j, seed);
  long s;

  assert_non_null (disk);
  assert_non_null (buf);
  fake_disk_read (y->t.f, disk, RV_SIZE, 0);
  jt_open_disk (&z, fake_jdev_from_image (img, JSIZE), false, 0, disk);
  fake_jdev_free_image (img);
  assert_int_equal (cache_read (z.t.c, buf, RV_SIZE, 0), 0);
  if ((s = rv_diff (buf, exp, 0, RV_SIZE)) >= 0)
    fail_msg ("%s, crash seed %llu: sector %ld (page %ld) reads wrong after "
              "the second recovery",
              what, (unsigned long long) seed, s, s * SS / (long) PG);
  assert_int_equal (cache_drain (z.t.c), 0);
  fake_disk_read (z.t.f, disk, RV_SIZE, 0);
  if ((s = rv_diff (disk, exp, 0, RV_SIZE)) >= 0)
    fail_msg ("%s, crash seed %llu: sector %ld (page %ld) of the backend "
              "wrong once drained",
              what, (unsigned long long) seed, s, s * SS / (long) PG);
  jt_close (&z);
  free (disk);
  free (buf);
}

static void
rv_check_read (struct jt *y, const unsigned char *exp, const char *what)
{
  unsigned char *buf = malloc (RV_SIZE);
  long s;

  assert_non_null (buf);
  assert_int_equal (cache_read (y->t.c, buf, RV_SIZE, 0), 0);
  if ((s = rv_diff (buf, exp, 0, RV_SIZE)) >= 0)
    fail_msg ("%s: sector %ld (page %ld) reads wrong", what, s,
              s * SS / (long) PG);
  free (buf);
}

static void
rv_check_disk (struct jt *y, const unsigned char *exp, uint64_t off, uint64_t n,
               const char *what)
{
  unsigned char *disk = malloc (RV_SIZE);
  long s;

  assert_non_null (disk);
  fake_disk_read (y->t.f, disk, RV_SIZE, 0);
  if ((s = rv_diff (disk + off, exp, off, n)) >= 0)
    fail_msg ("%s: backend sector %ld (page %ld) wrong", what, s,
              s * SS / (long) PG);
  free (disk);
}

struct rv_stream {
  struct cache *c;
  struct cache_stream *s;
  unsigned seed;
  int r;
};

/* Writes pages 0-7 (seed) as one stream of 64 KiB writes: past the
 * 128 KiB cutoff, pages 2-7 go around the journal.
 */
static void *
rv_stream_thread (void *arg)
{
  struct rv_stream *w = arg;
  unsigned char *buf = malloc (PG);

  w->r = 0;
  for (unsigned i = 0; i < 8 && w->r == 0; i++) {
    pattern (buf, PG, i * PG, w->seed);
    w->r = cache_write_stream (w->c, w->s, buf, PG, i * PG, 0);
  }
  free (buf);
  return NULL;
}

/* (1) A stream over pages 0-7, which recovered records cover, bypasses
 * the journal while the drainer is writing the recovered log back (held
 * at its first backend write); ANY: journal-order=any.  No recovered
 * record may land over the bypassed data: not on the backend, not in a
 * read, not after a crash at any point afterwards.
 */
static void
rv_bypass (bool any)
{
  struct jt y = { .m = NULL };
  unsigned char *disk = malloc (RV_SIZE), *exp = malloc (RV_SIZE);
  uint8_t *img;
  struct rv_stream w = { .seed = 77 };
  pthread_t dth, wth;
  const char *what = any ? "bypass (order any)" : "bypass (order epoch)";

  assert_non_null (disk);
  assert_non_null (exp);
  rv_build (&img, disk, exp);
  rv_recover (&y, img, disk);
  fake_jdev_free_image (img);
  cache_journal_sequential_cutoff (y.t.c, 128 * KiB);
  cache_journal_order_any (y.t.c, any);
  w.c = y.t.c;
  w.s = cache_stream_new ();
  assert_non_null (w.s);

  fake_hold (y.t.f, FAKE_WRITE, true);
  assert_int_equal (pthread_create (&dth, NULL, drain_thread, y.t.c), 0);
  WAIT_FOR (fake_held (y.t.f, FAKE_WRITE) >= 1);
  assert_int_equal (pthread_create (&wth, NULL, rv_stream_thread, &w), 0);
  fake_hold (y.t.f, FAKE_WRITE, false);
  pthread_join (dth, NULL);
  pthread_join (wth, NULL);
  assert_int_equal (w.r, 0);
  assert_int_equal (stats (y.t.c).journal_bypass_writes, 6);
  for (unsigned i = 0; i < 8; i++)
    pattern (exp + i * PG, PG, i * PG, 77);
  rv_check_disk (&y, exp, 2 * PG, 6 * PG, what);
  rv_check_read (&y, exp, what);
  /* Pages 0-1 were journaled and not flushed: flush so that every
   * crash below must keep them.
   */
  assert_int_equal (cache_flush (y.t.c), 0);
  for (uint64_t k = 0; k < 16; k++)
    rv_check_crash (&y, k, exp, what);
  /* One drain step at a time, a crash after each. */
  for (unsigned step = 0; step < 8; step++) {
    int r = cache_journal_drain (y.t.c);

    assert_true (r >= 0);
    rv_check_disk (&y, exp, 2 * PG, 6 * PG, what);
    rv_check_crash (&y, step, exp, what);
    if (r == 0)
      break;
  }
  assert_int_equal (cache_drain (y.t.c), 0);
  rv_check_disk (&y, exp, 0, RV_SIZE, what);
  rv_check_read (&y, exp, what);
  cache_stream_free (w.s);
  rv_end (&y, disk, exp);
}

static void
test_recovered_bypass_during_drain (void **state)
{
  (void) state;
  rv_bypass (false);
}

static void
test_recovered_bypass_during_drain_any (void **state)
{
  (void) state;
  rv_bypass (true);
}

/* (2) The image shrinks below recovered data (to 2 MiB + 1000: pages
 * 40-47 lie past it, the recovered log not written back), then grows
 * back: the records past the end are kept (not written, not lost), a
 * crash at each point recovers them.
 */
static void
test_recovered_shrink_grow (void **state)
{
  struct jt y = { .m = NULL };
  unsigned char *disk, *exp;
  (void) state;

  rv_start (&y, &disk, &exp);
  /* Read some of the recovered pages into RAM first (CLEAN from the
   * journal), page 40 among them.
   */
  assert_true (read_is_pattern (&y.t, 40 * PG, PG, 51));
  assert_true (read_is_pattern (&y.t, 3 * PG, PG, 14));

  fake_resize (y.t.f, 2 * MiB + 1000);
  cache_refresh_size (y.t.c);
  for (unsigned k = 0; k < 4; k++)
    assert_true (cache_journal_drain (y.t.c) < 0); /* kept, not written */
  assert_int_equal (fake_size (y.t.f), 2 * MiB + 1000);
  /* A client write below the end, flushed. */
  assert_int_equal (write_pattern (&y.t, 20 * PG, PG, 99, 0), 0);
  pattern (exp + 20 * PG, PG, 20 * PG, 99);
  assert_int_equal (cache_flush (y.t.c), 0);

  /* Grows back, in two steps: first to a size that cuts a sector of
   * page 40's record, then to the whole size.
   */
  fake_resize (y.t.f, 40 * PG + 1000);
  cache_refresh_size (y.t.c);
  (void) cache_journal_drain (y.t.c);
  fake_resize (y.t.f, RV_SIZE);
  cache_refresh_size (y.t.c);
  rv_check_read (&y, exp, "shrink then growth");
  for (uint64_t k = 0; k < 8; k++)
    rv_check_crash (&y, k, exp, "shrink then growth");
  assert_int_equal (cache_drain (y.t.c), 0);
  rv_check_disk (&y, exp, 0, RV_SIZE, "shrink then growth, drained");
  rv_check_read (&y, exp, "shrink then growth, drained");
  rv_end (&y, disk, exp);
}

/* (3) The backend fails a write of the recovered drain; a client writes
 * and flushes; then crashes at several points, the drain retried.
 */
static void
test_recovered_backend_error_then_recover (void **state)
{
  struct jt y = { .m = NULL };
  unsigned char *disk, *exp;
  (void) state;

  rv_start (&y, &disk, &exp);
  fake_fail_nth (y.t.f, FAKE_WRITE, 3, -EIO);
  assert_true (cache_journal_drain (y.t.c) < 0);
  rv_check_read (&y, exp, "after a failed recovered drain");
  assert_int_equal (write_pattern (&y.t, 4 * PG + 512, 1024, 98, 0), 0);
  pattern (exp + 4 * PG + 512, 1024, 4 * PG + 512, 98);
  assert_int_equal (cache_flush (y.t.c), 0);
  for (uint64_t k = 0; k < 8; k++)
    rv_check_crash (&y, k, exp, "failed recovered drain");
  assert_true (cache_journal_drain (y.t.c) >= 0);
  for (uint64_t k = 0; k < 8; k++)
    rv_check_crash (&y, k, exp, "failed recovered drain, retried");
  assert_int_equal (cache_drain (y.t.c), 0);
  rv_check_disk (&y, exp, 0, RV_SIZE, "failed recovered drain, drained");
  rv_end (&y, disk, exp);
}

/* (4) The journal's first sync after recovery fails (a flush of a new
 * write): the recovered data is still read, a crash keeps it.
 */
static void
test_recovered_journal_sync_error (void **state)
{
  struct jt y = { .m = NULL };
  unsigned char *disk = malloc (RV_SIZE), *exp = malloc (RV_SIZE),
                *exp2 = malloc (RV_SIZE);
  uint8_t *img;
  (void) state;

  assert_non_null (disk);
  assert_non_null (exp);
  assert_non_null (exp2);
  rv_build (&img, disk, exp);
  rv_recover (&y, img, disk);
  fake_jdev_free_image (img);
  fake_jdev_set_sync_drops (y.j, true);
  assert_int_equal (write_pattern (&y.t, 5 * PG, PG, 97, 0), 0);
  fake_jdev_fail_next (y.j, FAKE_JDEV_SYNC, EIO, 0);
  assert_true (cache_flush (y.t.c) < 0);
  memcpy (exp2, exp, RV_SIZE);
  pattern (exp2 + 5 * PG, PG, 5 * PG, 97);
  rv_check_read (&y, exp2, "after a failed journal sync");
  /* The drainer may still write back the recovered (synced) log. */
  (void) cache_journal_drain (y.t.c);
  (void) cache_journal_drain (y.t.c);
  rv_check_read (&y, exp2, "after a failed journal sync, drained");
  /* A crash: page 5 may be either; the rest as recovered. */
  for (uint64_t k = 0; k < 8; k++) {
    struct jt z = { .m = NULL };
    unsigned char *buf = malloc (RV_SIZE);
    uint8_t *im = fake_jdev_crash (y.j, k);
    long s;

    fake_disk_read (y.t.f, disk, RV_SIZE, 0);
    jt_open_disk (&z, fake_jdev_from_image (im, JSIZE), false, 0, disk);
    fake_jdev_free_image (im);
    assert_int_equal (cache_read (z.t.c, buf, RV_SIZE, 0), 0);
    if (memcmp (buf + 5 * PG, exp2 + 5 * PG, PG) == 0)
      memcpy (buf + 5 * PG, exp + 5 * PG, PG);
    if ((s = rv_diff (buf, exp, 0, RV_SIZE)) >= 0)
      fail_msg ("sync error after recovery, crash %llu: sector %ld wrong",
                (unsigned long long) k, s);
    jt_close (&z);
    free (buf);
  }
  rv_end (&y, disk, exp);
  free (exp2);
}

/* (5) Block status over the recovered ranges: every recovered page is
 * reported (it is not on the backend yet), before and after its page
 * is read into RAM, and during the drain.
 */
static void
test_recovered_block_status (void **state)
{
  struct jt y = { .m = NULL };
  unsigned char *disk, *exp;
  uint64_t a, b;
  bool z;
  pthread_t th;
  (void) state;

  rv_start (&y, &disk, &exp);
  assert_true (read_is_pattern (&y.t, 2 * PG, PG, 13));
  for (unsigned pass = 0; pass < 2; pass++) {
    for (unsigned i = 0; i < 48; i++) {
      bool want = i < 8 || i >= 40;
      bool found = cache_next_unflushed (y.t.c, i * PG, (i + 1) * PG, &a, &b,
                                         &z);

      if (want && (!found || a != i * PG))
        fail_msg ("pass %u: recovered page %u (on the backend as zeroes) "
                  "is not reported by block status",
                  pass, i);
      if (want && found && z)
        fail_msg ("pass %u: recovered page %u reported as zeroes", pass, i);
    }
    /* Pass 1: with the drainer held at its first backend write. */
    if (pass == 0) {
      fake_hold (y.t.f, FAKE_WRITE, true);
      assert_int_equal (pthread_create (&th, NULL, drain_thread, y.t.c), 0);
      WAIT_FOR (fake_held (y.t.f, FAKE_WRITE) >= 1);
    }
  }
  fake_hold (y.t.f, FAKE_WRITE, false);
  pthread_join (th, NULL);
  assert_int_equal (cache_drain (y.t.c), 0);
  rv_check_disk (&y, exp, 0, RV_SIZE, "block status, drained");
  rv_end (&y, disk, exp);
}

/* (6) Crashes during the recovered drain: held at the backend's first
 * write, at the backend flush, and at the journal sync after the
 * superblock write that clears the split (new records, flushed and
 * not, follow the split).
 */
static void
test_recovered_crash_during_drain (void **state)
{
  struct jt y = { .m = NULL };
  unsigned char *disk, *exp;
  pthread_t th;
  (void) state;

  rv_start (&y, &disk, &exp);
  assert_int_equal (write_pattern (&y.t, 20 * PG, PG, 90, 0), 0);
  pattern (exp + 20 * PG, PG, 20 * PG, 90);
  assert_int_equal (write_pattern (&y.t, 1 * PG, 4096, 91, 0), 0);
  pattern (exp + 1 * PG, 4096, 1 * PG, 91);
  assert_int_equal (cache_flush (y.t.c), 0);

  /* At the backend's writes. */
  fake_hold (y.t.f, FAKE_WRITE, true);
  assert_int_equal (pthread_create (&th, NULL, drain_idle_thread, y.t.c), 0);
  WAIT_FOR (fake_held (y.t.f, FAKE_WRITE) >= 1);
  for (uint64_t k = 0; k < 8; k++)
    rv_check_crash (&y, k, exp, "held at the drain's backend write");
  fake_release (y.t.f, FAKE_WRITE, 3);
  for (uint64_t k = 0; k < 8; k++)
    rv_check_crash (&y, k, exp, "after 3 backend writes of the drain");
  fake_hold (y.t.f, FAKE_FLUSH, true);
  fake_hold (y.t.f, FAKE_WRITE, false);
  WAIT_FOR (fake_held (y.t.f, FAKE_FLUSH) >= 1);
  for (uint64_t k = 0; k < 8; k++)
    rv_check_crash (&y, k, exp, "held at the drain's backend flush");
  /* At the superblock's sync (the split cleared). */
  fake_jdev_hold (y.j, FAKE_JDEV_SYNC, true);
  fake_hold (y.t.f, FAKE_FLUSH, false);
  WAIT_FOR (fake_jdev_held (y.j, FAKE_JDEV_SYNC) >= 1);
  {
    struct jsb sb;
    uint8_t *cur = fake_jdev_contents (y.j);
    struct fake_jdev *cj = fake_jdev_from_image (cur, JSIZE);

    fake_jdev_free_image (cur);
    assert_int_equal (jsb_read (fake_jdev_dev (cj), &sb), 0);
    print_message ("superblock being written: flags %#x tail %llu\n", sb.flags,
                   (unsigned long long) sb.tail_lsn);
    fake_jdev_free (cj);
  }
  for (uint64_t k = 0; k < 32; k++)
    rv_check_crash (&y, k, exp, "held at the superblock sync of the drain");
  fake_jdev_hold (y.j, FAKE_JDEV_SYNC, false);
  pthread_join (th, NULL);
  for (uint64_t k = 0; k < 8; k++)
    rv_check_crash (&y, k, exp, "after the recovered drain");
  /* A new unflushed write past the split, then a crash: either. */
  assert_int_equal (cache_drain (y.t.c), 0);
  rv_check_disk (&y, exp, 0, RV_SIZE, "drained");
  rv_end (&y, disk, exp);
}

int
main (void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test (test_flush_needs_only_the_journal),
    cmocka_unit_test (test_idle_flush_syncs_nothing),
    cmocka_unit_test (test_crash_states),
    cmocka_unit_test (test_recovery_index_bound),
    cmocka_unit_test (test_fua_durable),
    cmocka_unit_test (test_epoch_order_on_backend),
    cmocka_unit_test (test_epoch_order_after_recovery),
    cmocka_unit_test (test_redrain_keeps_epoch_order),
    cmocka_unit_test (test_redrain_double_write_keeps_epoch_order),
    cmocka_unit_test (test_order_any_merges_epochs),
    cmocka_unit_test (test_recovered_wrap_drains),
    cmocka_unit_test (test_recovered_wrap_cache_drain_spins),
    cmocka_unit_test (test_recovered_wrap_drains_unsynced),
    cmocka_unit_test (test_recovered_bypass_during_drain),
    cmocka_unit_test (test_recovered_bypass_during_drain_any),
    cmocka_unit_test (test_recovered_shrink_grow),
    cmocka_unit_test (test_recovered_backend_error_then_recover),
    cmocka_unit_test (test_recovered_journal_sync_error),
    cmocka_unit_test (test_recovered_block_status),
    cmocka_unit_test (test_recovered_crash_during_drain),
    cmocka_unit_test (test_flush_waits_for_placed_record),
    cmocka_unit_test (test_drain_keeps_newer_data_dirty),
    cmocka_unit_test (test_parallel_drain_keeps_log_order),
    cmocka_unit_test (test_async_drain),
    cmocka_unit_test (test_full_journal_throttles),
    cmocka_unit_test (test_drain_due),
    cmocka_unit_test (test_drain_due_old_record_in_stream),
    cmocka_unit_test (test_throttled_writer_makes_drain_due),
    cmocka_unit_test (test_journal_write_error_retried),
    cmocka_unit_test (test_journal_sync_error_sticky),
    cmocka_unit_test (test_drainer_sync_error_sticky),
    cmocka_unit_test (test_tail_write_retried),
    cmocka_unit_test (test_drain_past_end_kept),
    cmocka_unit_test (test_journal_too_small_for_page),
    cmocka_unit_test (test_superblock_sync_error_sticky),
    cmocka_unit_test (test_full_cache_after_sync_error),
    cmocka_unit_test (test_dirty_beyond_ram),
    cmocka_unit_test (test_read_races_reuse),
    cmocka_unit_test (test_index_bounded),
    cmocka_unit_test (test_block_status_after_read_back),
    cmocka_unit_test (test_block_status_races_attach),
    cmocka_unit_test (test_shrink_cut_spilled),
    cmocka_unit_test (test_wrong_journal_refused),
    cmocka_unit_test (test_shrunk_image_refused),
  };

  return cmocka_run_group_tests (tests, NULL, NULL);
}
