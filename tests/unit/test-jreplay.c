/* subpage unit tests: the parts of cache/jformat.c that recovery and the
 * offline tool (tools/subpage-journal) share:
 *
 *  - jsb_slots: what each superblock slot holds (none, torn, valid,
 *    newer version, wrong parity);
 *  - jsb_restart_log: a new salt (odd, not the old one), the tail at LSN
 *    0 with the given seq and epoch, written and synced; records of the
 *    old log no longer follow; a failed write leaves *sb as it was;
 *  - jnl_replay: the exact sequence of image operations for a log of
 *    several epochs (a flush before each record of a new epoch, none
 *    before the first, one at the end, none for an empty log), the
 *    image contents, zero's fallbacks (no zero op, -ENOTSUP), trim's
 *    advice (ignored errors, -EIO counts, no trim op), clipping to an
 *    image whose size is not a multiple of the sector size, a record
 *    past the end (refused before it is applied), errors of the image
 *    and of the device, progress, and where the scan ends;
 *  - jdev_file_open_ro.
 */
#undef NDEBUG
/* The fake allocates with the real malloc (see test-jformat.c). */
#undef UNIT_TESTING

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "fake-jdev.h"
#include "jformat.h"

#define RING (64u * 1024)
#define DEVSIZE (JNL_DATA_OFFSET + RING)
#define IMG (64u * 1024)

/* ---------------------------------------------------------------- */
/* A journal built here */

struct tj {
  struct fake_jdev *f;
  const struct jdev *dev;
  struct jsb sb;
  uint64_t lsn, seq;
};

static void
tj_init (struct tj *t, uint64_t tail_seq, uint64_t tail_epoch)
{
  memset (t, 0, sizeof *t);
  t->f = fake_jdev_new (DEVSIZE);
  t->dev = fake_jdev_dev (t->f);
  t->sb = (struct jsb){
    .version = JNL_VERSION,
    .sector_size = 512,
    .journal_size = DEVSIZE,
    .data_size = RING,
    .salt = 0x1234567u,
    .tail_seq = tail_seq,
    .tail_epoch = tail_epoch,
    .image_size = IMG,
  };
  strcpy (t->sb.ident, "file:/images/disk.img");
  for (int k = 0; k < 2; k++) {
    assert_int_equal (jsb_write (t->dev, &t->sb), 0);
    assert_int_equal (t->dev->ops->sync (t->dev->opaque), 0);
  }
  t->seq = tail_seq;
}

/* Appends a record (no wrap: the tests' logs are small); DATA's payload
 * is FILL repeated.
 */
static void
tj_put (struct tj *t, uint16_t type, uint64_t epoch, uint64_t off,
        uint64_t count, uint8_t fill)
{
  uint64_t payload = type == JREC_DATA ? count : 0;
  uint64_t size = jrec_size (payload);
  uint8_t *buf = calloc (1, size);
  struct jrec r = {
    .type = type,
    .salt = t->sb.salt,
    .seq = t->seq++,
    .epoch = epoch,
    .offset = off,
    .count = count,
    .lsn = t->lsn,
  };

  assert_non_null (buf);
  assert_true (t->lsn + size <= RING);
  memset (buf + JNL_HDR_SIZE, fill, payload);
  jrec_encode (&r, buf + JNL_HDR_SIZE, buf);
  assert_int_equal (t->dev->ops->pwrite (t->dev->opaque, buf, size,
                                         jnl_phys (&t->sb, t->lsn)),
                    0);
  free (buf);
  t->lsn += size;
}

static void
tj_free (struct tj *t)
{
  struct fake_jdev_counts c;

  fake_jdev_get_counts (t->f, &c);
  assert_int_equal (c.bad, 0);
  fake_jdev_free (t->f);
}

/* ---------------------------------------------------------------- */
/* An image that records what is done to it */

struct timg {
  uint8_t data[IMG];
  uint64_t size;
  char log[4096]; /* "W off+count" "Z ..." "T ..." "F" */
  bool no_zero_op, zero_notsup;
  int trim_result;
  int fail_pwrite_at; /* fail the Nth pwrite (1-based) with -EIO, 0 never */
  int fail_flush;     /* fail every flush with this */
  unsigned pwrites, zero_calls, progress_calls;
  uint64_t last_progress_records;
};

static void
logf_ (struct timg *im, const char *fmt, ...)
{
  size_t n = strlen (im->log);
  va_list ap;

  va_start (ap, fmt);
  vsnprintf (im->log + n, sizeof im->log - n, fmt, ap);
  va_end (ap);
}

static int
t_size (void *opaque, uint64_t *size)
{
  struct timg *im = opaque;

  *size = im->size;
  return 0;
}

static int
t_pwrite (void *opaque, const void *buf, uint32_t count, uint64_t off)
{
  struct timg *im = opaque;

  im->pwrites++;
  if (im->fail_pwrite_at && (int) im->pwrites == im->fail_pwrite_at)
    return -EIO;
  assert_true (off + count <= im->size);
  memcpy (im->data + off, buf, count);
  logf_ (im, "W%lu+%lu ", (unsigned long) off, (unsigned long) count);
  return 0;
}

static int
t_zero (void *opaque, uint32_t count, uint64_t off)
{
  struct timg *im = opaque;

  im->zero_calls++;
  if (im->zero_notsup)
    return -ENOTSUP;
  assert_true (off + count <= im->size);
  memset (im->data + off, 0, count);
  logf_ (im, "Z%lu+%lu ", (unsigned long) off, (unsigned long) count);
  return 0;
}

static int
t_trim (void *opaque, uint32_t count, uint64_t off)
{
  struct timg *im = opaque;

  logf_ (im, "T%lu+%lu ", (unsigned long) off, (unsigned long) count);
  return im->trim_result;
}

static int
t_flush (void *opaque)
{
  struct timg *im = opaque;

  logf_ (im, "F ");
  return im->fail_flush;
}

static void
t_progress (void *opaque, const struct jscan *s)
{
  struct timg *im = opaque;

  im->progress_calls++;
  assert_int_equal (s->nrecords, im->last_progress_records + 1);
  im->last_progress_records = s->nrecords;
}

static struct jreplay_ops
t_ops (const struct timg *im)
{
  return (struct jreplay_ops){
    .size = t_size,
    .pwrite = t_pwrite,
    .zero = im->no_zero_op ? NULL : t_zero,
    .trim = t_trim,
    .flush = t_flush,
    .progress = t_progress,
  };
}

static struct timg *
timg_new (uint64_t size, uint8_t fill)
{
  struct timg *im = calloc (1, sizeof *im);

  assert_non_null (im);
  im->size = size;
  memset (im->data, fill, sizeof im->data);
  return im;
}

/* ---------------------------------------------------------------- */
/* jsb_slots */

static void
test_slots (void **state)
{
  struct tj t;
  struct jsb_slot s[2];
  uint8_t slot[JNL_SB_SIZE];

  (void) state;
  t.f = fake_jdev_new (DEVSIZE);
  t.dev = fake_jdev_dev (t.f);
  assert_int_equal (jsb_slots (t.dev, s), 0);
  for (int i = 0; i < 2; i++) {
    assert_false (s[i].magic);
    assert_false (s[i].crc_ok);
    assert_int_equal (s[i].valid, -EINVAL);
  }
  fake_jdev_free (t.f);

  tj_init (&t, 1, 0); /* generations 1 (slot 1) and 2 (slot 0) */
  assert_int_equal (jsb_slots (t.dev, s), 0);
  assert_true (s[0].magic && s[0].crc_ok && s[1].magic && s[1].crc_ok);
  assert_int_equal (s[0].valid, 0);
  assert_int_equal (s[1].valid, 0);
  assert_int_equal (s[0].generation, 2);
  assert_int_equal (s[1].generation, 1);
  assert_int_equal (s[0].version, JNL_VERSION);

  /* Slot 1 torn: magic, wrong CRC. */
  assert_int_equal (
    t.dev->ops->pread (t.dev->opaque, slot, JNL_SB_SIZE, JNL_SB_SIZE), 0);
  slot[100] ^= 1;
  assert_int_equal (
    t.dev->ops->pwrite (t.dev->opaque, slot, JNL_SB_SIZE, JNL_SB_SIZE), 0);
  assert_int_equal (jsb_slots (t.dev, s), 0);
  assert_true (s[1].magic);
  assert_false (s[1].crc_ok);
  assert_int_equal (s[1].valid, -EINVAL);
  assert_int_equal (s[1].generation, 0);

  /* Slot 1: a newer version, intact. */
  slot[100] ^= 1;
  slot[8] = JNL_VERSION + 1;
  {
    uint32_t crc = crc32c (0, slot, JNL_SB_SIZE - 4);
    for (int i = 0; i < 4; i++)
      slot[JNL_SB_SIZE - 4 + i] = (uint8_t) (crc >> (8 * i));
  }
  assert_int_equal (
    t.dev->ops->pwrite (t.dev->opaque, slot, JNL_SB_SIZE, JNL_SB_SIZE), 0);
  assert_int_equal (jsb_slots (t.dev, s), 0);
  assert_true (s[1].crc_ok);
  assert_int_equal (s[1].valid, -EPROTONOSUPPORT);
  assert_int_equal (s[1].version, JNL_VERSION + 1);
  assert_int_equal (s[1].generation, 1);

  /* Slot 0 holding an odd generation: intact, not valid. */
  t.sb.generation = 2; /* the next write: 3, to slot 1 */
  assert_int_equal (jsb_write (t.dev, &t.sb), 0);
  assert_int_equal (
    t.dev->ops->pread (t.dev->opaque, slot, JNL_SB_SIZE, JNL_SB_SIZE), 0);
  assert_int_equal (t.dev->ops->pwrite (t.dev->opaque, slot, JNL_SB_SIZE, 0),
                    0);
  assert_int_equal (jsb_slots (t.dev, s), 0);
  assert_true (s[0].crc_ok);
  assert_int_equal (s[0].generation, 3);
  assert_int_equal (s[0].valid, -EINVAL);
  assert_int_equal (s[1].valid, 0);

  fake_jdev_fail_next (t.f, FAKE_JDEV_PREAD, EIO, 0);
  assert_int_equal (jsb_slots (t.dev, s), -EIO);
  tj_free (&t);
}

/* ---------------------------------------------------------------- */
/* jsb_restart_log */

static void
test_restart_log (void **state)
{
  struct tj t;
  struct jsb sb, got, before;
  struct jscan s;
  struct jrec r;
  uint8_t *durable;
  struct fake_jdev *g;

  (void) state;
  tj_init (&t, 10, 3);
  tj_put (&t, JREC_DATA, 3, 0, 512, 'a');
  tj_put (&t, JREC_DATA, 4, 512, 512, 'b');
  sb = t.sb;
  assert_int_equal (jsb_restart_log (t.dev, &sb, 12, 5), 0);
  assert_int_equal (sb.generation, t.sb.generation + 1);
  assert_int_not_equal (sb.salt, t.sb.salt);
  assert_true (sb.salt & 1);
  assert_int_equal (sb.tail_lsn, 0);
  assert_int_equal (sb.tail_seq, 12);
  assert_int_equal (sb.tail_epoch, 5);
  assert_memory_equal (sb.id, t.sb.id, sizeof sb.id);
  assert_string_equal (sb.ident, t.sb.ident);

  /* Synced: the durable image holds it. */
  durable = fake_jdev_crash (t.f, 0);
  g = fake_jdev_from_image (durable, DEVSIZE);
  fake_jdev_free_image (durable);
  assert_int_equal (jsb_read (fake_jdev_dev (g), &got), 0);
  assert_int_equal (got.generation, sb.generation);
  assert_int_equal (got.salt, sb.salt);
  assert_int_equal (got.tail_seq, 12);
  fake_jdev_free (g);

  /* The old records do not follow the new tail, even with the seq the
   * old log's first record had.
   */
  jscan_init (&s, t.dev, &sb);
  assert_int_equal (jscan_next (&s, &r), 0);
  jscan_free (&s);
  got = sb;
  got.tail_seq = 10;
  jscan_init (&s, t.dev, &got);
  assert_int_equal (jscan_next (&s, &r), 0);
  jscan_free (&s);

  /* Restarts in a row: each salt odd and not the one before (the
   * retry for an equal draw itself is not reached by chance).
   */
  for (int i = 0; i < 200; i++) {
    uint32_t old = sb.salt;
    assert_int_equal (jsb_restart_log (t.dev, &sb, 12, 5), 0);
    assert_int_not_equal (sb.salt, old);
    assert_true (sb.salt & 1);
  }

  /* A failed write: *sb as before. */
  before = sb;
  fake_jdev_fail_next (t.f, FAKE_JDEV_PWRITE, EIO, 0);
  assert_int_equal (jsb_restart_log (t.dev, &sb, 99, 99), -EIO);
  assert_memory_equal (&sb, &before, sizeof sb);
  /* A failed sync: the new superblock, which may be on the device. */
  fake_jdev_fail_next (t.f, FAKE_JDEV_SYNC, EIO, 0);
  assert_int_equal (jsb_restart_log (t.dev, &sb, 99, 98), -EIO);
  assert_int_equal (sb.generation, before.generation + 1);
  assert_int_equal (sb.tail_seq, 99);
  assert_int_equal (jsb_read (t.dev, &got), 0);
  assert_int_equal (got.tail_seq, 99);
  tj_free (&t);
}

/* ---------------------------------------------------------------- */
/* jnl_replay */

static void
test_replay_epochs (void **state)
{
  struct tj t;
  struct timg *im = timg_new (IMG, 0xEE);
  struct jreplay_ops ops = t_ops (im);
  struct jreplay out;

  (void) state;
  /* Tail epoch 2; the first record's epoch 3 differs from it, but there
   * is no flush before the first record.
   */
  tj_init (&t, 7, 2);
  tj_put (&t, JREC_DATA, 3, 0, 1024, 'a');
  tj_put (&t, JREC_ZERO, 3, 4096, 2048, 0);
  tj_put (&t, JREC_TRIM, 5, 8192, 512, 0);
  tj_put (&t, JREC_DATA, 5, 512, 512, 'b');
  tj_put (&t, JREC_DATA, 6, 16384, 4096, 'c');
  tj_put (&t, JREC_DATA, 6, 16384, 512, 'd');

  assert_int_equal (jnl_replay (t.dev, &t.sb, &ops, im, &out), 0);
  assert_string_equal (im->log, "W0+1024 Z4096+2048 F T8192+512 W512+512 F "
                                "W16384+4096 W16384+512 F ");
  assert_int_equal (out.flushes, 3);
  assert_false (out.past_end);
  assert_int_equal (out.scan.nrecords, 6);
  assert_int_equal (out.scan.seq, 13);
  assert_int_equal (out.scan.epoch, 6);
  assert_int_equal (out.scan.lsn, t.lsn);
  assert_int_equal (out.scan.nbytes, t.lsn);
  assert_null (out.scan.buf);
  assert_int_equal (out.rec.seq, 12);
  assert_int_equal (out.image_size, IMG);
  assert_int_equal (im->progress_calls, 6);

  for (unsigned i = 0; i < IMG; i++) {
    uint8_t want = 0xEE;
    if (i < 512)
      want = 'a';
    else if (i < 1024)
      want = 'b';
    else if (i >= 4096 && i < 6144)
      want = 0;
    else if (i >= 16384 && i < 16384 + 512)
      want = 'd';
    else if (i >= 16384 + 512 && i < 16384 + 4096)
      want = 'c';
    if (im->data[i] != want)
      fail_msg ("byte %u: %02x, want %02x", i, im->data[i], want);
  }

  /* Replaying again does the same (the tail did not move). */
  im->log[0] = '\0';
  im->last_progress_records = 0;
  assert_int_equal (jnl_replay (t.dev, &t.sb, &ops, im, &out), 0);
  assert_int_equal (out.flushes, 3);
  tj_free (&t);
  free (im);
}

static void
test_replay_empty (void **state)
{
  struct tj t;
  struct timg *im = timg_new (IMG, 0);
  struct jreplay_ops ops = t_ops (im);
  struct jreplay out;

  (void) state;
  tj_init (&t, 40, 9);
  assert_int_equal (jnl_replay (t.dev, &t.sb, &ops, im, &out), 0);
  assert_string_equal (im->log, "");
  assert_int_equal (out.flushes, 0);
  assert_int_equal (out.scan.nrecords, 0);
  assert_int_equal (out.scan.seq, 40);
  assert_int_equal (out.scan.epoch, 9);
  assert_int_equal (out.scan.lsn, 0);
  tj_free (&t);
  free (im);
}

static void
test_replay_zero_fallback (void **state)
{
  struct tj t;
  struct timg *im = timg_new (IMG, 0xEE);
  struct jreplay_ops ops;
  struct jreplay out;

  (void) state;
  tj_init (&t, 1, 0);
  tj_put (&t, JREC_ZERO, 0, 1024, 8192, 0);

  /* No zero op: zeroes written. */
  im->no_zero_op = true;
  ops = t_ops (im);
  assert_int_equal (jnl_replay (t.dev, &t.sb, &ops, im, &out), 0);
  assert_string_equal (im->log, "W1024+8192 F ");
  for (unsigned i = 1024; i < 1024 + 8192; i++)
    assert_int_equal (im->data[i], 0);
  assert_int_equal (im->data[1023], 0xEE);
  assert_int_equal (im->data[1024 + 8192], 0xEE);

  /* -ENOTSUP: zeroes written. */
  memset (im->data, 0xEE, sizeof im->data);
  im->log[0] = '\0';
  im->last_progress_records = 0;
  im->no_zero_op = false;
  im->zero_notsup = true;
  ops = t_ops (im);
  assert_int_equal (jnl_replay (t.dev, &t.sb, &ops, im, &out), 0);
  assert_int_equal (im->zero_calls, 1);
  assert_string_equal (im->log, "W1024+8192 F ");
  for (unsigned i = 1024; i < 1024 + 8192; i++)
    assert_int_equal (im->data[i], 0);
  tj_free (&t);
  free (im);
}

static void
test_replay_trim (void **state)
{
  struct tj t;
  struct timg *im = timg_new (IMG, 0);
  struct jreplay_ops ops = t_ops (im);
  struct jreplay out;

  (void) state;
  tj_init (&t, 1, 0);
  tj_put (&t, JREC_TRIM, 0, 0, 4096, 0);
  tj_put (&t, JREC_DATA, 0, 0, 512, 'x');

  /* Errors other than -EIO, and "not done", are ignored. */
  const int ignored[] = { -EINVAL, -ENOTSUP, -EOPNOTSUPP, -EPERM, 1 };
  for (size_t k = 0; k < sizeof ignored / sizeof ignored[0]; k++) {
    im->log[0] = '\0';
    im->last_progress_records = 0;
    im->trim_result = ignored[k];
    assert_int_equal (jnl_replay (t.dev, &t.sb, &ops, im, &out), 0);
    assert_string_equal (im->log, "T0+4096 W0+512 F ");
  }

  /* -EIO stops the replay, with no flush. */
  im->log[0] = '\0';
  im->last_progress_records = 0;
  im->trim_result = -EIO;
  assert_int_equal (jnl_replay (t.dev, &t.sb, &ops, im, &out), -EIO);
  assert_string_equal (im->log, "T0+4096 ");

  /* No trim op: nothing done for it. */
  im->log[0] = '\0';
  im->last_progress_records = 0;
  ops.trim = NULL;
  assert_int_equal (jnl_replay (t.dev, &t.sb, &ops, im, &out), 0);
  assert_string_equal (im->log, "W0+512 F ");
  tj_free (&t);
  free (im);
}

static void
test_replay_clip_and_past_end (void **state)
{
  struct tj t;
  struct timg *im = timg_new (IMG, 0);
  struct jreplay_ops ops = t_ops (im);
  struct jreplay out;

  (void) state;
  /* An image of 10000 bytes: its last sector, [9728, 10240), is partial;
   * records in it are clipped to 10000.
   */
  im->size = 10000;
  tj_init (&t, 1, 0);
  tj_put (&t, JREC_DATA, 0, 9216, 1024, 'p');
  tj_put (&t, JREC_ZERO, 0, 9728, 512, 0);
  tj_put (&t, JREC_TRIM, 0, 9728, 512, 0);
  assert_int_equal (jnl_replay (t.dev, &t.sb, &ops, im, &out), 0);
  assert_string_equal (im->log, "W9216+784 Z9728+272 T9728+272 F ");
  tj_free (&t);

  /* A record past the rounded-up end: refused before it is applied,
   * after the records before it (and no flush after them).
   */
  im->log[0] = '\0';
  im->last_progress_records = 0;
  tj_init (&t, 1, 0);
  tj_put (&t, JREC_DATA, 0, 0, 512, 'q');
  tj_put (&t, JREC_DATA, 1, 512, 512, 'r');
  tj_put (&t, JREC_ZERO, 1, 9728, 1024, 0);
  tj_put (&t, JREC_DATA, 1, 0, 512, 's');
  assert_int_equal (jnl_replay (t.dev, &t.sb, &ops, im, &out), -EINVAL);
  assert_true (out.past_end);
  assert_int_equal (out.rec.seq, 3);
  assert_int_equal (out.rec.offset, 9728);
  assert_int_equal (out.rec.count, 1024);
  assert_int_equal (out.image_size, 10000);
  assert_string_equal (im->log, "W0+512 F W512+512 ");
  tj_free (&t);

  /* Exactly at the rounded-up end: applied, clipped. */
  im->log[0] = '\0';
  im->last_progress_records = 0;
  tj_init (&t, 1, 0);
  tj_put (&t, JREC_DATA, 0, 9728, 512, 'e');
  assert_int_equal (jnl_replay (t.dev, &t.sb, &ops, im, &out), 0);
  assert_string_equal (im->log, "W9728+272 F ");
  tj_free (&t);
  free (im);
}

/* A BYPASS record (a range written straight to the image) writes
 * nothing, even past the image's end (a shrink since), and the records
 * after it are applied in their turn.  jsb_restart_log clears
 * JSB_F_BYPASS: the new log holds no record.
 */
static void
test_replay_bypass (void **state)
{
  struct tj t;
  struct timg *im = timg_new (IMG, 0xEE);
  struct jreplay_ops ops = t_ops (im);
  struct jreplay out;
  struct jsb got;

  (void) state;
  tj_init (&t, 1, 0);
  t.sb.flags = JSB_F_BYPASS;
  assert_int_equal (jsb_write (t.dev, &t.sb), 0);
  assert_int_equal (jsb_read (t.dev, &got), 0);
  assert_int_equal (got.flags, JSB_F_BYPASS);
  tj_put (&t, JREC_DATA, 0, 0, 512, 'a');
  tj_put (&t, JREC_BYPASS, 0, 0, 4096, 0);
  tj_put (&t, JREC_BYPASS, 0, IMG, 4096, 0); /* past the end */
  tj_put (&t, JREC_DATA, 0, 512, 512, 'b');
  assert_int_equal (jnl_replay (t.dev, &t.sb, &ops, im, &out), 0);
  assert_string_equal (im->log, "W0+512 W512+512 F ");
  assert_false (out.past_end);
  assert_int_equal (out.scan.nrecords, 4);
  assert_int_equal (im->data[0], 'a');
  assert_int_equal (im->data[512], 'b');
  assert_int_equal (im->data[1024], 0xEE);
  assert_int_equal (jsb_restart_log (t.dev, &t.sb, out.scan.seq, 1), 0);
  assert_int_equal (t.sb.flags, 0);
  assert_int_equal (jsb_read (t.dev, &got), 0);
  assert_int_equal (got.flags, 0);
  tj_free (&t);
  free (im);
}

static void
test_replay_errors (void **state)
{
  struct tj t;
  struct timg *im = timg_new (IMG, 0);
  struct jreplay_ops ops = t_ops (im);
  struct jreplay out;

  (void) state;
  tj_init (&t, 1, 0);
  tj_put (&t, JREC_DATA, 0, 0, 512, 'a');
  tj_put (&t, JREC_DATA, 1, 512, 512, 'b');
  tj_put (&t, JREC_DATA, 1, 1024, 512, 'c');

  /* The second pwrite fails: stop there, no flush after it. */
  im->fail_pwrite_at = 2;
  assert_int_equal (jnl_replay (t.dev, &t.sb, &ops, im, &out), -EIO);
  assert_string_equal (im->log, "W0+512 F ");
  assert_false (out.past_end);
  assert_int_equal (out.rec.seq, 2);
  im->fail_pwrite_at = 0;

  /* A flush fails: stop there. */
  im->log[0] = '\0';
  im->last_progress_records = 0;
  im->fail_flush = -ENOSPC;
  assert_int_equal (jnl_replay (t.dev, &t.sb, &ops, im, &out), -ENOSPC);
  assert_string_equal (im->log, "W0+512 F ");
  assert_int_equal (out.flushes, 1);
  im->fail_flush = 0;

  /* The device fails a read (the scan's first, which reads ahead). */
  im->log[0] = '\0';
  im->last_progress_records = 0;
  fake_jdev_fail_next (t.f, FAKE_JDEV_PREAD, EIO, 0);
  assert_int_equal (jnl_replay (t.dev, &t.sb, &ops, im, &out), -EIO);
  assert_string_equal (im->log, "");
  assert_int_equal (out.scan.nrecords, 0);
  tj_free (&t);
  free (im);
}

/* ---------------------------------------------------------------- */
/* jdev_file_open_ro */

static void
test_file_open_ro (void **state)
{
  char path[] = "/tmp/test-jreplay.XXXXXX";
  struct jdev dev;
  uint8_t buf[8] = { 0 };
  int fd;

  (void) state;
  fd = mkstemp (path);
  assert_true (fd >= 0);
  assert_int_equal (write (fd, "journal!", 8), 8);
  close (fd);

  assert_int_equal (jdev_file_open_ro (path, &dev), 0);
  assert_int_equal (dev.size, 8);
  assert_int_equal (dev.ops->pread (dev.opaque, buf, 8, 0), 0);
  assert_memory_equal (buf, "journal!", 8);
  assert_int_equal (dev.ops->pwrite (dev.opaque, "x", 1, 0), -EBADF);
  assert_int_equal (dev.ops->pread (dev.opaque, buf, 1, 8), -EIO);
  jdev_file_close (&dev);

  assert_int_equal (unlink (path), 0);
  assert_int_equal (jdev_file_open_ro (path, &dev), -ENOENT);
  assert_int_equal (jdev_file_open_ro ("/tmp", &dev), -EINVAL);
}

int
main (void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test (test_slots),
    cmocka_unit_test (test_restart_log),
    cmocka_unit_test (test_replay_epochs),
    cmocka_unit_test (test_replay_empty),
    cmocka_unit_test (test_replay_zero_fallback),
    cmocka_unit_test (test_replay_trim),
    cmocka_unit_test (test_replay_clip_and_past_end),
    cmocka_unit_test (test_replay_bypass),
    cmocka_unit_test (test_replay_errors),
    cmocka_unit_test (test_file_open_ro),
  };

  return cmocka_run_group_tests (tests, NULL, NULL);
}
