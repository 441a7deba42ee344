/* subpage unit tests: cache/jformat.c, the journal's on-disk format.
 *
 *  - CRC32C against published vectors and a bitwise reference at every
 *    alignment and length up to 64 bytes;
 *  - the superblock: its byte layout, roundtrip, every check of
 *    jsb_decode, and jsb_read's choice between the two slots (torn or
 *    corrupt newest slot, both bad, none, newer version);
 *  - records: the header's byte layout, decode checks, CRC coverage,
 *    jnl_place;
 *  - the scan over logs built here the way the runtime will build them
 *    (struct tlog: records placed by jnl_place, a WRAP record written
 *    when one fits, the tail moved on with a superblock write and a
 *    sync before space is reused), across several laps of a small ring,
 *    and each way a record can fail to follow;
 *  - crash states: fake_jdev_crash images taken after every append,
 *    under many seeds; each must scan to a prefix of what was written
 *    that holds every record written before the last sync;
 *  - fake_jdev itself, briefly.
 */
#undef NDEBUG
/* cmocka.h would swap malloc/free for its leak checker (see
 * test-sector.c); the fake allocates with the real ones.
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
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "fake-jdev.h"
#include "jformat.h"

#define RING 8192u /* the record area of the small test journals */
#define DEVSIZE (JNL_DATA_OFFSET + RING)

/* ---------------------------------------------------------------- */
/* Helpers */

static uint64_t
rnd (uint64_t *state)
{
  uint64_t z = (*state += UINT64_C (0x9E3779B97F4A7C15));

  z = (z ^ (z >> 30)) * UINT64_C (0xBF58476D1CE4E5B9);
  z = (z ^ (z >> 27)) * UINT64_C (0x94D049BB133111EB);
  return z ^ (z >> 31);
}

static void
le32 (uint8_t *p, uint32_t v)
{
  for (int i = 0; i < 4; i++)
    p[i] = (uint8_t) (v >> (8 * i));
}

static uint64_t
get64 (const uint8_t *p)
{
  uint64_t v = 0;

  for (int i = 7; i >= 0; i--)
    v = v << 8 | p[i];
  return v;
}

static uint32_t
get32 (const uint8_t *p)
{
  return (uint32_t) get64 ((const uint8_t[8]){ p[0], p[1], p[2], p[3] });
}

/* Recomputes a superblock slot's CRC after a test changed a field. */
static void
reseal (uint8_t *slot)
{
  le32 (slot + JNL_SB_SIZE - 4, crc32c (0, slot, JNL_SB_SIZE - 4));
}

static struct jsb
make_sb (uint32_t salt)
{
  struct jsb sb = {
    .version = JNL_VERSION,
    .sector_size = 4096,
    .journal_size = DEVSIZE,
    .data_size = RING,
    .salt = salt,
    .tail_lsn = 0,
    .tail_seq = 0,
    .tail_epoch = 0,
    .image_size = UINT64_C (1) << 40,
  };

  for (int i = 0; i < 16; i++)
    sb.id[i] = (uint8_t) (0xA0 + i);
  strcpy (sb.ident, "file:/var/lib/images/disk.img");
  return sb;
}

static void
assert_sb_equal (const struct jsb *a, const struct jsb *b)
{
  assert_int_equal (a->version, b->version);
  assert_int_equal (a->sector_size, b->sector_size);
  assert_memory_equal (a->id, b->id, 16);
  assert_int_equal (a->generation, b->generation);
  assert_int_equal (a->journal_size, b->journal_size);
  assert_int_equal (a->data_size, b->data_size);
  assert_int_equal (a->salt, b->salt);
  assert_int_equal (a->flags, b->flags);
  assert_int_equal (a->tail_lsn, b->tail_lsn);
  assert_int_equal (a->tail_seq, b->tail_seq);
  assert_int_equal (a->tail_epoch, b->tail_epoch);
  assert_int_equal (a->image_size, b->image_size);
  assert_string_equal (a->ident, b->ident);
}

/* The payload of the record with sequence number SEQ. */
static uint8_t
pattern (uint64_t seq, uint64_t i)
{
  return (uint8_t) (seq * 131 + i * 7 + (i >> 8) + 1);
}

/* ---------------------------------------------------------------- */
/* A log built as the runtime will build it */

#define MAXREC 4096

struct tlog {
  struct jsb sb; /* sb.tail_* is the tail */
  const struct jdev *dev;
  uint64_t lsn, seq, epoch; /* the next record's */
  uint64_t seq0;            /* recs[i] has seq seq0 + i */
  struct jrec recs[MAXREC]; /* every record written, WRAPs included */
  size_t n;
  size_t tail;                         /* index in recs of the tail */
  uint64_t synced_seq;                 /* every record below it was synced */
  bool persist_tail;                   /* moving the tail: jsb_write + sync */
  bool sb_unsynced;                    /* a superblock write not synced yet */
  uint64_t written_tail, durable_tail; /* tail_lsn of the last sb write,
                                        * of the last one synced */
  unsigned wraps, skips;
};

static void
tlog_init (struct tlog *l, const struct jdev *dev, uint32_t salt, uint64_t lsn,
           uint64_t seq, uint64_t epoch)
{
  memset (l, 0, sizeof *l);
  l->sb = make_sb (salt);
  l->sb.tail_lsn = lsn;
  l->sb.tail_seq = seq;
  l->sb.tail_epoch = epoch;
  l->dev = dev;
  l->lsn = lsn;
  l->seq = l->seq0 = l->synced_seq = seq;
  l->written_tail = l->durable_tail = lsn;
  l->epoch = epoch;
}

static void
tlog_sync (struct tlog *l)
{
  assert_int_equal (l->dev->ops->sync (l->dev->opaque), 0);
  l->synced_seq = l->seq;
  l->sb_unsynced = false;
  l->durable_tail = l->written_tail;
}

/* Writes the superblock.  The one before must be durable first: two
 * unsynced writes go to both slots, and a crash could tear both.
 */
static void
tlog_write_sb (struct tlog *l)
{
  if (l->sb_unsynced)
    tlog_sync (l);
  assert_int_equal (jsb_write (l->dev, &l->sb), 0);
  l->sb_unsynced = true;
  l->written_tail = l->sb.tail_lsn;
}

/* Writes R (seq, lsn, salt filled in here) and its payload. */
static void
tlog_put (struct tlog *l, struct jrec *r)
{
  uint64_t payload = r->type == JREC_DATA ? r->count : 0;
  uint64_t size = jrec_size (payload);
  uint8_t *buf = calloc (1, size);

  assert_non_null (buf);
  r->salt = l->sb.salt;
  r->seq = l->seq++;
  r->lsn = l->lsn;
  for (uint64_t i = 0; i < payload; i++)
    buf[JNL_HDR_SIZE + i] = pattern (r->seq, i);
  jrec_encode (r, buf + JNL_HDR_SIZE, buf);
  assert_int_equal (l->dev->ops->pwrite (l->dev->opaque, buf, size,
                                         jnl_phys (&l->sb, r->lsn)),
                    0);
  free (buf);
  assert_true (l->n < MAXREC);
  l->recs[l->n++] = *r;
  l->lsn += size;
}

/* Moves the tail on by one record (the runtime does so once the
 * backend has the record and flushed it).
 */
static void
tlog_tail_step (struct tlog *l)
{
  l->tail++;
  assert_true (l->tail < l->n);
  l->sb.tail_lsn = l->recs[l->tail].lsn;
  l->sb.tail_seq = l->recs[l->tail].seq;
  l->sb.tail_epoch = l->recs[l->tail - 1].epoch;
}

/* Appends a record, first moving the tail on if the ring is full and
 * writing a WRAP record if it would cross the ring's end.
 */
static void
tlog_append (struct tlog *l, uint16_t type, uint64_t offset, uint64_t count,
             uint64_t epoch)
{
  uint64_t size = jrec_size (type == JREC_DATA ? count : 0);
  bool wrap;
  uint64_t at = jnl_place (&l->sb, l->lsn, size, &wrap);
  bool moved = false;

  assert_true (epoch >= l->epoch);
  while (at + size - l->sb.tail_lsn > l->sb.data_size) {
    tlog_tail_step (l);
    moved = true;
  }
  /* The space is reused only once a superblock that frees it is
   * durable (a tail moved earlier may be written and not synced yet).
   */
  if (l->persist_tail && at + size - l->durable_tail > l->sb.data_size) {
    if (moved)
      tlog_write_sb (l);
    tlog_sync (l);
    assert_int_equal (l->durable_tail, l->sb.tail_lsn);
  }

  l->epoch = epoch;
  if (wrap) {
    struct jrec w = { .type = JREC_WRAP, .epoch = epoch };
    tlog_put (l, &w);
    l->wraps++;
  }
  else if (at != l->lsn)
    l->skips++;
  l->lsn = at;

  struct jrec r = {
    .type = type, .epoch = epoch, .offset = offset, .count = count
  };
  tlog_put (l, &r);
}

/* A random record, as the runtime would write them (sector-aligned
 * ranges) unless ODD, then DATA counts of any size.
 */
static void
tlog_append_random (struct tlog *l, uint64_t *st, bool odd)
{
  uint64_t x = rnd (st);
  uint16_t type = x % 10 < 7 ? JREC_DATA : x % 10 < 9 ? JREC_ZERO : JREC_TRIM;
  uint64_t count;

  if (type == JREC_DATA)
    count = odd ? 1 + rnd (st) % 1500 : 512 * (1 + rnd (st) % 3);
  else
    count = 512 * (1 + rnd (st) % 1000);
  tlog_append (l, type, 512 * (rnd (st) % 100000), count,
               l->epoch + (rnd (st) % 4 == 0));
}

/* Re-encodes record I of the log with the change a test made to it,
 * with a valid CRC: only the check of that field can refuse it.
 */
static void
tlog_rewrite (struct tlog *l, size_t i, const struct jrec *changed)
{
  const struct jrec *r = &l->recs[i];
  uint64_t payload = changed->type == JREC_DATA ? changed->count : 0;
  uint8_t *buf = malloc (payload + 1);
  uint8_t hdr[JNL_HDR_SIZE];

  assert_non_null (buf);
  for (uint64_t k = 0; k < payload; k++)
    buf[k] = pattern (r->seq, k);
  jrec_encode (changed, buf, hdr);
  assert_int_equal (l->dev->ops->pwrite (l->dev->opaque, hdr, JNL_HDR_SIZE,
                                         jnl_phys (&l->sb, r->lsn)),
                    0);
  free (buf);
}

/* Flips one bit of the device at OFF. */
static void
flip (const struct jdev *dev, uint64_t off)
{
  uint8_t b;

  assert_int_equal (dev->ops->pread (dev->opaque, &b, 1, off), 0);
  b ^= 0x10;
  assert_int_equal (dev->ops->pwrite (dev->opaque, &b, 1, off), 0);
}

/* Scans DEV from SB and checks every record returned against L's
 * records (from the one with SB's tail seq on, WRAPs skipped), its
 * payload included.  Returns the number of records returned; *END gets
 * the scan's final state.
 */
static uint64_t
scan_check (const struct jdev *dev, const struct jsb *sb, const struct tlog *l,
            struct jscan *end)
{
  struct jscan s;
  struct jrec r;
  uint64_t n = 0;
  size_t i;
  int ret;

  assert_true (sb->tail_seq >= l->seq0);
  i = sb->tail_seq - l->seq0;
  jscan_init (&s, dev, sb);
  while ((ret = jscan_next (&s, &r)) == 1) {
    while (i < l->n && l->recs[i].type == JREC_WRAP)
      i++;
    assert_true (i < l->n); /* never a record that was not written */
    const struct jrec *w = &l->recs[i++];
    assert_int_equal (r.type, w->type);
    assert_int_equal (r.salt, w->salt);
    assert_int_equal (r.seq, w->seq);
    assert_int_equal (r.epoch, w->epoch);
    assert_int_equal (r.offset, w->offset);
    assert_int_equal (r.count, w->count);
    assert_int_equal (r.lsn, w->lsn);
    if (r.type == JREC_DATA)
      for (uint64_t k = 0; k < r.count; k++)
        if (s.buf[k] != pattern (r.seq, k))
          fail_msg ("record %llu: payload byte %llu differs",
                    (unsigned long long) r.seq, (unsigned long long) k);
    n++;
  }
  assert_int_equal (ret, 0);
  assert_int_equal (s.nrecords, n);
  assert_true (s.nbytes <= sb->data_size);
  if (end)
    *end = s;
  jscan_free (&s);
  return n;
}

/* Records other than WRAP in L from index FROM on. */
static uint64_t
count_records (const struct tlog *l, size_t from)
{
  uint64_t n = 0;

  for (size_t i = from; i < l->n; i++)
    n += l->recs[i].type != JREC_WRAP;
  return n;
}

/* Where the scan of L from its tail ends: the head, or the next lap's
 * start if no header fits before the end of the lap (and the ring has
 * room for the skip).
 */
static uint64_t
next_lsn (const struct tlog *l)
{
  uint64_t left = l->sb.data_size - l->lsn % l->sb.data_size;

  if (left < JNL_HDR_SIZE && l->lsn + left - l->sb.tail_lsn <= RING)
    return l->lsn + left;
  return l->lsn;
}

/* ---------------------------------------------------------------- */
/* CRC32C */

static uint32_t
crc_ref (uint32_t crc, const uint8_t *p, size_t n)
{
  crc = ~crc;
  while (n--) {
    crc ^= *p++;
    for (int k = 0; k < 8; k++)
      crc = (crc >> 1) ^ (0x82F63B78u & -(crc & 1));
  }
  return ~crc;
}

static void
test_crc32c_vectors (void **state)
{
  uint8_t buf[32];

  (void) state;
  assert_int_equal (crc32c (0, "123456789", 9), 0xE3069283);
  assert_int_equal (crc32c_tables (0, "123456789", 9), 0xE3069283);
  assert_int_equal (crc32c (0, "", 0), 0);
  /* RFC 3720 (iSCSI), B.4. */
  memset (buf, 0, sizeof buf);
  assert_int_equal (crc32c (0, buf, 32), 0x8A9136AA);
  memset (buf, 0xff, sizeof buf);
  assert_int_equal (crc32c (0, buf, 32), 0x62A8AB43);
  for (int i = 0; i < 32; i++)
    buf[i] = (uint8_t) i;
  assert_int_equal (crc32c (0, buf, 32), 0x46DD794E);
  for (int i = 0; i < 32; i++)
    buf[i] = (uint8_t) (31 - i);
  assert_int_equal (crc32c (0, buf, 32), 0x113FDB5C);
}

static void
test_crc32c_reference (void **state)
{
  uint8_t buf[256];
  uint64_t st = 1;

  (void) state;
  for (size_t i = 0; i < sizeof buf; i++)
    buf[i] = (uint8_t) rnd (&st);
  /* Every start alignment and length, and chaining at every split. */
  for (size_t off = 0; off < 16; off++)
    for (size_t len = 0; len <= 200; len++) {
      uint32_t want = crc_ref (0, buf + off, len);
      assert_int_equal (crc32c (0, buf + off, len), want);
      assert_int_equal (crc32c_tables (0, buf + off, len), want);
      size_t cut = len / 3;
      assert_int_equal (
        crc32c (crc32c (0, buf + off, cut), buf + off + cut, len - cut), want);
      assert_int_equal (crc32c_tables (crc32c (0, buf + off, cut),
                                       buf + off + cut, len - cut),
                        want);
    }
}

/* ---------------------------------------------------------------- */
/* Superblock */

static void
test_sb_roundtrip (void **state)
{
  struct jsb sb = make_sb (0x12345678), out;
  uint8_t slot[JNL_SB_SIZE];

  (void) state;
  sb.generation = 7;
  sb.tail_lsn = UINT64_C (0x0102030405060708);
  sb.tail_seq = 99;
  sb.tail_epoch = 5;
  jsb_encode (&sb, slot);
  memset (&out, 0x55, sizeof out);
  assert_int_equal (jsb_decode (slot, &out), 0);
  assert_sb_equal (&sb, &out);

  /* The longest ident, 255 bytes. */
  memset (sb.ident, 'x', JNL_IDENT_MAX - 1);
  sb.ident[JNL_IDENT_MAX - 1] = '\0';
  jsb_encode (&sb, slot);
  assert_int_equal (jsb_decode (slot, &out), 0);
  assert_sb_equal (&sb, &out);
  /* The empty one. */
  sb.ident[0] = '\0';
  jsb_encode (&sb, slot);
  assert_int_equal (jsb_decode (slot, &out), 0);
  assert_sb_equal (&sb, &out);
}

/* The layout of docs/journal.md, byte by byte. */
static void
test_sb_layout (void **state)
{
  struct jsb sb = make_sb (0xAABBCCDD);
  uint8_t slot[JNL_SB_SIZE];
  size_t len = strlen (sb.ident);

  (void) state;
  sb.generation = 0x1122334455667788;
  sb.tail_lsn = 0x100;
  sb.tail_seq = 0x200;
  sb.tail_epoch = 0x300;
  jsb_encode (&sb, slot);
  assert_memory_equal (slot, "SUBPGJNL", 8);
  assert_int_equal (get32 (slot + 8), JNL_VERSION);
  assert_int_equal (get32 (slot + 12), 4096);
  assert_memory_equal (slot + 16, sb.id, 16);
  assert_int_equal (slot[32], 0x88); /* little-endian */
  assert_int_equal (get64 (slot + 32), sb.generation);
  assert_int_equal (get64 (slot + 40), DEVSIZE);
  assert_int_equal (get64 (slot + 48), RING);
  assert_int_equal (get32 (slot + 56), 0xAABBCCDD);
  assert_int_equal (get32 (slot + 60), 0);
  assert_int_equal (get64 (slot + 64), 0x100);
  assert_int_equal (get64 (slot + 72), 0x200);
  assert_int_equal (get64 (slot + 80), 0x300);
  assert_int_equal (get64 (slot + 88), UINT64_C (1) << 40);
  assert_int_equal (slot[96] | slot[97] << 8, len);
  assert_memory_equal (slot + 98, sb.ident, len);
  for (size_t i = 98 + len; i < JNL_SB_SIZE - 4; i++)
    assert_int_equal (slot[i], 0);
  assert_int_equal (get32 (slot + JNL_SB_SIZE - 4),
                    crc32c (0, slot, JNL_SB_SIZE - 4));
  /* A split log: flags bit 1, prev_salt at 360, salt_lsn at 368. */
  sb.flags = JSB_F_SPLIT;
  sb.prev_salt = 0x01020304;
  sb.salt_lsn = 0x1122334455;
  jsb_encode (&sb, slot);
  assert_int_equal (get32 (slot + 60), 2);
  assert_int_equal (get32 (slot + 360), 0x01020304);
  assert_int_equal (get64 (slot + 368), 0x1122334455);
  for (size_t i = 98 + len; i < 360; i++)
    assert_int_equal (slot[i], 0);
  for (size_t i = 376; i < JNL_SB_SIZE - 4; i++)
    assert_int_equal (slot[i], 0);
}

static void
test_sb_decode_checks (void **state)
{
  struct jsb sb = make_sb (1), out;
  uint8_t good[JNL_SB_SIZE], slot[JNL_SB_SIZE];

  (void) state;
  jsb_encode (&sb, good);

  /* Magic, with a valid CRC. */
  memcpy (slot, good, sizeof slot);
  slot[0] = 'X';
  reseal (slot);
  assert_int_equal (jsb_decode (slot, &out), -EINVAL);
  /* CRC: any byte of the slot, padding and the CRC itself included. */
  for (size_t off = 0; off < JNL_SB_SIZE; off += 97) {
    memcpy (slot, good, sizeof slot);
    slot[off] ^= 1;
    assert_int_equal (jsb_decode (slot, &out), -EINVAL);
  }
  /* A newer version: refused as such once the CRC is good, as corrupt
   * before.
   */
  memcpy (slot, good, sizeof slot);
  le32 (slot + 8, JNL_VERSION + 1);
  assert_int_equal (jsb_decode (slot, &out), -EINVAL);
  reseal (slot);
  assert_int_equal (jsb_decode (slot, &out), -EPROTONOSUPPORT);
  /* Version 0, an unknown flag. */
  memcpy (slot, good, sizeof slot);
  le32 (slot + 8, 0);
  reseal (slot);
  assert_int_equal (jsb_decode (slot, &out), -EINVAL);
  memcpy (slot, good, sizeof slot);
  le32 (slot + 60, 4);
  reseal (slot);
  assert_int_equal (jsb_decode (slot, &out), -EPROTONOSUPPORT);
  /* JSB_F_SPLIT is known, and brings its two fields; without it they
   * are not read.
   */
  memcpy (slot, good, sizeof slot);
  le32 (slot + 60, JSB_F_SPLIT);
  le32 (slot + 360, 0x1234567);
  slot[368] = 0x40;
  reseal (slot);
  assert_int_equal (jsb_decode (slot, &out), 0);
  assert_int_equal (out.flags, JSB_F_SPLIT);
  assert_int_equal (out.prev_salt, 0x1234567);
  assert_int_equal (out.salt_lsn, 0x40);
  le32 (slot + 60, 0);
  reseal (slot);
  assert_int_equal (jsb_decode (slot, &out), 0);
  assert_int_equal (out.prev_salt, 0);
  assert_int_equal (out.salt_lsn, 0);
  /* JSB_F_BYPASS is known. */
  memcpy (slot, good, sizeof slot);
  le32 (slot + 60, JSB_F_BYPASS);
  reseal (slot);
  assert_int_equal (jsb_decode (slot, &out), 0);
  assert_int_equal (out.flags, JSB_F_BYPASS);

  /* The geometry. */
  static const uint32_t bad_sectors[] = { 0, 256, 511, 1000, 4097 };
  for (size_t i = 0; i < sizeof bad_sectors / sizeof bad_sectors[0]; i++) {
    sb = make_sb (1);
    sb.sector_size = bad_sectors[i];
    jsb_encode (&sb, slot);
    assert_int_equal (jsb_decode (slot, &out), -EINVAL);
  }
  sb = make_sb (1);
  sb.sector_size = 512;
  jsb_encode (&sb, slot);
  assert_int_equal (jsb_decode (slot, &out), 0);

  static const uint64_t bad_data[] = { 0, 4095, 4096 + 512, RING + 4096 };
  for (size_t i = 0; i < sizeof bad_data / sizeof bad_data[0]; i++) {
    sb = make_sb (1);
    sb.data_size = bad_data[i];
    jsb_encode (&sb, slot);
    assert_int_equal (jsb_decode (slot, &out), -EINVAL);
  }
  sb = make_sb (1);
  sb.journal_size = 4096; /* smaller than the superblocks */
  jsb_encode (&sb, slot);
  assert_int_equal (jsb_decode (slot, &out), -EINVAL);
  sb = make_sb (1);
  sb.journal_size = DEVSIZE + 12345; /* room to spare is fine */
  jsb_encode (&sb, slot);
  assert_int_equal (jsb_decode (slot, &out), 0);

  /* An ident length of 256 (one byte too many for the NUL). */
  memcpy (slot, good, sizeof slot);
  slot[96] = 0;
  slot[97] = 1;
  reseal (slot);
  assert_int_equal (jsb_decode (slot, &out), -EINVAL);
  /* 255, but with a NUL inside: not what jsb_encode writes. */
  slot[96] = 255;
  slot[97] = 0;
  reseal (slot);
  assert_int_equal (jsb_decode (slot, &out), -EINVAL);
  memset (slot + 98, 'a', 255);
  reseal (slot);
  assert_int_equal (jsb_decode (slot, &out), 0);
  assert_int_equal (strlen (out.ident), 255);
}

static void
test_sb_read_slots (void **state)
{
  struct fake_jdev *f = fake_jdev_new (DEVSIZE);
  const struct jdev *dev = fake_jdev_dev (f);
  struct jsb sb = make_sb (9), out;
  uint8_t slot[JNL_SB_SIZE];

  (void) state;
  /* A new device. */
  assert_int_equal (jsb_read (dev, &out), -ENOENT);

  /* Generation 1 in slot 1, then 2 in slot 0. */
  sb.tail_lsn = 111;
  assert_int_equal (jsb_write (dev, &sb), 0);
  assert_int_equal (sb.generation, 1);
  assert_int_equal (jsb_read (dev, &out), 0);
  assert_sb_equal (&sb, &out);
  sb.tail_lsn = 222;
  assert_int_equal (jsb_write (dev, &sb), 0);
  assert_int_equal (sb.generation, 2);
  assert_int_equal (jsb_read (dev, &out), 0);
  assert_int_equal (out.generation, 2);
  assert_int_equal (out.tail_lsn, 222);
  dev->ops->pread (dev->opaque, slot, JNL_SB_SIZE, 0);
  assert_memory_equal (slot, "SUBPGJNL", 8); /* slot 0 */
  /* 3 goes to slot 1 again and wins. */
  sb.tail_lsn = 333;
  assert_int_equal (jsb_write (dev, &sb), 0);
  assert_int_equal (jsb_read (dev, &out), 0);
  assert_int_equal (out.generation, 3);
  assert_int_equal (out.tail_lsn, 333);

  /* The newest (slot 1) torn: only its first sector written over
   * generation 1's image.  Slot 0 (generation 2) wins.
   */
  struct jsb old = sb;
  uint8_t newer[JNL_SB_SIZE];
  old.generation = 0;
  old.tail_lsn = 111;
  assert_int_equal (jsb_write (dev, &old), 0); /* generation 1, slot 1 */
  dev->ops->pread (dev->opaque, slot, JNL_SB_SIZE, JNL_SB_SIZE);
  sb.tail_lsn = 444;
  sb.generation = 3;
  jsb_encode (&sb, newer);
  memcpy (slot, newer, 512);
  dev->ops->pwrite (dev->opaque, slot, JNL_SB_SIZE, JNL_SB_SIZE);
  assert_int_equal (jsb_read (dev, &out), 0);
  assert_int_equal (out.generation, 2);
  assert_int_equal (out.tail_lsn, 222);

  /* Both corrupt. */
  flip (dev, 100);
  assert_int_equal (jsb_read (dev, &out), -EINVAL);
  /* Slot 1 whole again: generation 3 wins. */
  dev->ops->pwrite (dev->opaque, newer, JNL_SB_SIZE, JNL_SB_SIZE);
  assert_int_equal (jsb_read (dev, &out), 0);
  assert_int_equal (out.generation, 3);
  assert_int_equal (out.tail_lsn, 444);

  fake_jdev_free (f);
}

static void
test_sb_read_magic_version (void **state)
{
  struct fake_jdev *f = fake_jdev_new (DEVSIZE);
  const struct jdev *dev = fake_jdev_dev (f);
  struct jsb sb = make_sb (9), out;
  uint8_t slot[JNL_SB_SIZE];

  (void) state;
  assert_int_equal (jsb_write (dev, &sb), 0); /* 1, slot 1 */
  assert_int_equal (jsb_write (dev, &sb), 0); /* 2, slot 0 */

  /* Slot 0 with a bad magic (and a good CRC): slot 1 wins. */
  dev->ops->pread (dev->opaque, slot, JNL_SB_SIZE, 0);
  slot[3] = 'X';
  reseal (slot);
  dev->ops->pwrite (dev->opaque, slot, JNL_SB_SIZE, 0);
  assert_int_equal (jsb_read (dev, &out), 0);
  assert_int_equal (out.generation, 1);
  /* Neither has the magic: a foreign file. */
  dev->ops->pread (dev->opaque, slot, JNL_SB_SIZE, JNL_SB_SIZE);
  slot[0] = 0;
  dev->ops->pwrite (dev->opaque, slot, JNL_SB_SIZE, JNL_SB_SIZE);
  assert_int_equal (jsb_read (dev, &out), -ENOENT);

  /* The newest slot written by a newer version: refused, although the
   * older slot is valid.
   */
  sb.generation = 0;
  assert_int_equal (jsb_write (dev, &sb), 0); /* 1, slot 1 */
  struct jsb nv = sb;
  nv.generation = 2;
  jsb_encode (&nv, slot);
  le32 (slot + 8, JNL_VERSION + 1);
  reseal (slot);
  dev->ops->pwrite (dev->opaque, slot, JNL_SB_SIZE, 0);
  assert_int_equal (jsb_read (dev, &out), -EPROTONOSUPPORT);
  /* A newer version in the older slot only: the newest, valid, wins. */
  nv.generation = 4;
  jsb_encode (&nv, slot);
  dev->ops->pwrite (dev->opaque, slot, JNL_SB_SIZE, 0);
  dev->ops->pread (dev->opaque, slot, JNL_SB_SIZE, JNL_SB_SIZE);
  le32 (slot + 8, JNL_VERSION + 1);
  reseal (slot);
  dev->ops->pwrite (dev->opaque, slot, JNL_SB_SIZE, JNL_SB_SIZE);
  assert_int_equal (jsb_read (dev, &out), 0);
  assert_int_equal (out.generation, 4);
  /* A newer version with a bad CRC is just corrupt: slot 0 wins. */
  nv.generation = 5;
  jsb_encode (&nv, slot);
  le32 (slot + 8, JNL_VERSION + 1);
  dev->ops->pwrite (dev->opaque, slot, JNL_SB_SIZE, JNL_SB_SIZE);
  assert_int_equal (jsb_read (dev, &out), 0);
  assert_int_equal (out.generation, 4);

  /* A slot holding a generation of the other parity is not valid. */
  nv.generation = 7;
  jsb_encode (&nv, slot);
  dev->ops->pwrite (dev->opaque, slot, JNL_SB_SIZE, 0);
  assert_int_equal (jsb_read (dev, &out), -EINVAL);

  fake_jdev_free (f);
}

static void
test_sb_write_error (void **state)
{
  struct fake_jdev *f = fake_jdev_new (DEVSIZE);
  const struct jdev *dev = fake_jdev_dev (f);
  struct jsb sb = make_sb (9), out;

  (void) state;
  assert_int_equal (jsb_write (dev, &sb), 0);
  assert_int_equal (jsb_write (dev, &sb), 0);
  fake_jdev_fail_next (f, FAKE_JDEV_PWRITE, EIO, 0);
  assert_int_equal (jsb_write (dev, &sb), -EIO);
  /* Unchanged: the next write goes to the same slot (1), not over the
   * last good one.
   */
  assert_int_equal (sb.generation, 2);
  assert_int_equal (jsb_write (dev, &sb), 0);
  assert_int_equal (sb.generation, 3);
  assert_int_equal (jsb_read (dev, &out), 0);
  assert_int_equal (out.generation, 3);

  fake_jdev_fail_next (f, FAKE_JDEV_PREAD, EIO, 1);
  assert_int_equal (jsb_read (dev, &out), -EIO);
  fake_jdev_free (f);
}

/* ---------------------------------------------------------------- */
/* Records */

static void
test_rec_layout (void **state)
{
  struct jrec r = {
    .type = JREC_DATA,
    .salt = 0x01020304,
    .seq = 0x1111,
    .epoch = 0x2222,
    .offset = 0x3333,
    .count = 5,
    .lsn = 0x4444,
  }, out;
  uint8_t hdr[JNL_HDR_SIZE], z[JNL_HDR_SIZE];

  (void) state;
  jrec_encode (&r, "hello", hdr);
  assert_memory_equal (hdr, "SPJR", 4);
  assert_int_equal (hdr[4] | hdr[5] << 8, JREC_DATA);
  assert_int_equal (hdr[6] | hdr[7], 0);
  assert_int_equal (get32 (hdr + 8), 0x01020304);
  assert_int_equal (get32 (hdr + 12), 0);
  assert_int_equal (get64 (hdr + 16), 0x1111);
  assert_int_equal (get64 (hdr + 24), 0x2222);
  assert_int_equal (get64 (hdr + 32), 0x3333);
  assert_int_equal (get64 (hdr + 40), 5);
  assert_int_equal (get64 (hdr + 48), 0x4444);
  assert_int_equal (get32 (hdr + 60), 0);
  memcpy (z, hdr, sizeof z);
  le32 (z + 56, 0);
  assert_int_equal (get32 (hdr + 56), crc32c (crc32c (0, z, 64), "hello", 5));

  assert_int_equal (jrec_decode (hdr, &out), 0);
  assert_int_equal (out.type, r.type);
  assert_int_equal (out.salt, r.salt);
  assert_int_equal (out.seq, r.seq);
  assert_int_equal (out.epoch, r.epoch);
  assert_int_equal (out.offset, r.offset);
  assert_int_equal (out.count, r.count);
  assert_int_equal (out.lsn, r.lsn);
  assert_true (jrec_check (hdr, "hello", 5));
  assert_false (jrec_check (hdr, "hellO", 5));
  assert_false (jrec_check (hdr, "hello", 4));
  for (size_t i = 0; i < JNL_HDR_SIZE; i++) {
    memcpy (z, hdr, sizeof z);
    z[i] ^= 0x40;
    assert_false (jrec_check (z, "hello", 5));
  }

  /* No payload for the other types: the CRC covers the header only. */
  r.type = JREC_ZERO;
  r.count = 1 << 30;
  jrec_encode (&r, NULL, hdr);
  assert_int_equal (jrec_decode (hdr, &out), 0);
  assert_true (jrec_check (hdr, NULL, 0));
  memcpy (z, hdr, sizeof z);
  le32 (z + 56, 0);
  assert_int_equal (get32 (hdr + 56), crc32c (0, z, 64));
}

static void
test_rec_decode_checks (void **state)
{
  struct jrec r = { .type = JREC_DATA, .count = 512 }, out;
  uint8_t hdr[JNL_HDR_SIZE], payload[512] = { 0 };

  (void) state;
  jrec_encode (&r, payload, hdr);
  assert_int_equal (jrec_decode (hdr, &out), 0);
  hdr[0] ^= 1;
  assert_int_equal (jrec_decode (hdr, &out), -EINVAL);

  static const uint16_t bad_types[] = { 0, 6, 0x100, 0xffff };
  for (size_t i = 0; i < sizeof bad_types / sizeof bad_types[0]; i++) {
    r.type = bad_types[i];
    jrec_encode (&r, NULL, hdr);
    assert_int_equal (jrec_decode (hdr, &out), -EINVAL);
  }
  r.type = JREC_DATA;
  r.count = 0;
  jrec_encode (&r, NULL, hdr);
  assert_int_equal (jrec_decode (hdr, &out), -EINVAL);
  uint8_t *big = calloc (1, (32u << 20) + 1);
  assert_non_null (big);
  r.count = (32u << 20) + 1;
  jrec_encode (&r, big, hdr);
  assert_int_equal (jrec_decode (hdr, &out), -EINVAL);
  r.count = 32u << 20;
  jrec_encode (&r, big, hdr);
  free (big);
  assert_int_equal (jrec_decode (hdr, &out), 0);
  /* ZERO, TRIM and WRAP of any count decode (the scan checks ZERO and
   * TRIM counts).
   */
  r.type = JREC_WRAP;
  r.count = 0;
  jrec_encode (&r, NULL, hdr);
  assert_int_equal (jrec_decode (hdr, &out), 0);
  r.type = JREC_BYPASS; /* no payload, like ZERO */
  r.count = 1u << 30;
  jrec_encode (&r, NULL, hdr);
  assert_int_equal (jrec_decode (hdr, &out), 0);
  assert_int_equal (out.type, JREC_BYPASS);
  assert_true (jrec_check (hdr, NULL, 0));
}

static void
test_place (void **state)
{
  struct jsb sb = make_sb (1);
  bool wrap = true;

  (void) state;
  assert_int_equal (jrec_size (0), 64);
  assert_int_equal (jrec_size (1), 72);
  assert_int_equal (jrec_size (8), 72);
  assert_int_equal (jrec_size (512), 576);

  assert_int_equal (jnl_place (&sb, 0, 64, &wrap), 0);
  assert_false (wrap);
  /* Fits exactly. */
  assert_int_equal (jnl_place (&sb, RING - 576, 576, &wrap), RING - 576);
  assert_false (wrap);
  assert_int_equal (jnl_place (&sb, 3 * RING - 64, 64, &wrap), 3 * RING - 64);
  assert_false (wrap);
  /* Crosses: a WRAP fits (64 bytes left) or not (56). */
  assert_int_equal (jnl_place (&sb, RING - 64, 72, &wrap), RING);
  assert_true (wrap);
  wrap = true;
  assert_int_equal (jnl_place (&sb, 2 * RING - 56, 64, &wrap), 2 * RING);
  assert_false (wrap);
  assert_int_equal (jnl_place (&sb, 5 * RING + 8, RING, &wrap), 6 * RING);
  assert_true (wrap);
  assert_int_equal (jnl_place (&sb, 5 * RING, RING, &wrap), 5 * RING);
  assert_false (wrap);
}

/* ---------------------------------------------------------------- */
/* Scan */

static void
test_scan_empty (void **state)
{
  struct fake_jdev *f = fake_jdev_new (DEVSIZE);
  struct tlog *l = calloc (1, sizeof *l);
  struct jscan s;
  struct jrec r;

  (void) state;
  assert_non_null (l);
  tlog_init (l, fake_jdev_dev (f), 5, 3 * RING + 128, 40, 7);
  jscan_init (&s, fake_jdev_dev (f), &l->sb);
  assert_int_equal (jscan_next (&s, &r), 0);
  assert_int_equal (s.lsn, 3 * RING + 128);
  assert_int_equal (s.seq, 40);
  assert_int_equal (s.epoch, 7);
  assert_int_equal (s.nrecords, 0);
  assert_int_equal (s.nbytes, 0);
  jscan_free (&s);
  free (l);
  fake_jdev_free (f);
}

/* Several laps of the ring, the tail following the head; after every
 * append the scan returns exactly the records from the tail on.
 */
static void
test_scan_laps (void **state)
{
  struct fake_jdev *f = fake_jdev_new (DEVSIZE);
  const struct jdev *dev = fake_jdev_dev (f);
  struct tlog *l = calloc (1, sizeof *l);
  struct fake_jdev_counts c;
  struct jscan end;
  uint64_t st = 42;

  (void) state;
  assert_non_null (l);
  tlog_init (l, dev, 0xC0FFEE, 0, 0, 0);
  for (int odd = 0; odd < 2; odd++)
    for (int i = 0; i < 150; i++) {
      tlog_append_random (l, &st, odd);
      uint64_t n = scan_check (dev, &l->sb, l, &end);
      assert_int_equal (n, count_records (l, l->tail));
      assert_int_equal (end.lsn, next_lsn (l));
      assert_int_equal (end.seq, l->seq);
      assert_int_equal (end.epoch, l->epoch);
      assert_int_equal (end.nbytes, next_lsn (l) - l->sb.tail_lsn);
    }
  assert_true (l->lsn > 10 * RING);
  assert_true (l->wraps > 0);
  fake_jdev_get_counts (f, &c);
  assert_int_equal (c.bad, 0);
  free (l);
  fake_jdev_free (f);
}

/* One lap of records of 576 bytes and a tail at seq 1: the fixture of
 * the tests where record K does not follow.
 */
static struct tlog *
small_log (struct fake_jdev **fp)
{
  struct fake_jdev *f = fake_jdev_new (DEVSIZE);
  struct tlog *l = calloc (1, sizeof *l);

  assert_non_null (l);
  tlog_init (l, fake_jdev_dev (f), 77, 2 * RING, 0, 1);
  for (int i = 0; i < 10; i++)
    tlog_append (l, i % 4 == 3 ? JREC_TRIM : JREC_DATA, 4096 * i, 512,
                 1 + i / 3);
  l->sb.tail_lsn = l->recs[1].lsn;
  l->sb.tail_seq = 1;
  l->sb.tail_epoch = l->recs[0].epoch;
  assert_int_equal (scan_check (fake_jdev_dev (f), &l->sb, l, NULL), 9);
  *fp = f;
  return l;
}

static void
free_log (struct fake_jdev *f, struct tlog *l)
{
  struct fake_jdev_counts c;

  fake_jdev_get_counts (f, &c);
  assert_int_equal (c.bad, 0);
  free (l);
  fake_jdev_free (f);
}

static void
test_scan_stops_crc (void **state)
{
  struct fake_jdev *f;
  struct tlog *l = small_log (&f);
  const struct jdev *dev = fake_jdev_dev (f);
  struct jscan end;

  (void) state;
  /* Record 6's last payload byte: the scan ends before it, and there is
   * where the next record would go.
   */
  flip (dev, jnl_phys (&l->sb, l->recs[6].lsn) + JNL_HDR_SIZE + 511);
  assert_int_equal (scan_check (dev, &l->sb, l, &end), 5);
  assert_int_equal (end.lsn, l->recs[6].lsn);
  assert_int_equal (end.seq, 6);
  assert_int_equal (end.epoch, l->recs[5].epoch);
  /* Record 4's header (its offset field). */
  flip (dev, jnl_phys (&l->sb, l->recs[4].lsn) + 33);
  assert_int_equal (scan_check (dev, &l->sb, l, NULL), 3);
  /* Record 3 (TRIM, no payload): its header. */
  flip (dev, jnl_phys (&l->sb, l->recs[3].lsn) + 41);
  assert_int_equal (scan_check (dev, &l->sb, l, NULL), 2);
  free_log (f, l);
}

/* Each field that makes a record follow, changed alone in record 5
 * with a valid CRC.
 */
static void
test_scan_stops_fields (void **state)
{
  struct fake_jdev *f;
  struct tlog *l = small_log (&f);
  const struct jdev *dev = fake_jdev_dev (f);
  struct jrec r;

  (void) state;
  r = l->recs[5];
  r.salt++;
  tlog_rewrite (l, 5, &r);
  assert_int_equal (scan_check (dev, &l->sb, l, NULL), 4);

  r = l->recs[5]; /* as if from the previous lap */
  r.lsn -= RING;
  tlog_rewrite (l, 5, &r);
  assert_int_equal (scan_check (dev, &l->sb, l, NULL), 4);

  r = l->recs[5]; /* a gap in seq */
  r.seq++;
  tlog_rewrite (l, 5, &r);
  assert_int_equal (scan_check (dev, &l->sb, l, NULL), 4);
  r = l->recs[5];
  r.seq--;
  tlog_rewrite (l, 5, &r);
  assert_int_equal (scan_check (dev, &l->sb, l, NULL), 4);

  r = l->recs[5]; /* epoch 1 after 2 (an equal one follows: 3 to 5) */
  assert_int_equal (l->recs[4].epoch, 2);
  r.epoch = 1;
  tlog_rewrite (l, 5, &r);
  assert_int_equal (scan_check (dev, &l->sb, l, NULL), 4);
  tlog_rewrite (l, 5, &l->recs[5]);
  assert_int_equal (scan_check (dev, &l->sb, l, NULL), 9);

  /* The tail's epoch counts too: record 1 is epoch 1. */
  l->sb.tail_epoch = 2;
  assert_int_equal (scan_check (dev, &l->sb, l, NULL), 0);
  l->sb.tail_epoch = 1;

  r = l->recs[3]; /* a TRIM of nothing */
  assert_int_equal (r.type, JREC_TRIM);
  r.count = 0;
  tlog_rewrite (l, 3, &r);
  assert_int_equal (scan_check (dev, &l->sb, l, NULL), 2);
  free_log (f, l);
}

/* A newer log (another salt) over an older one with records of the
 * same sizes at the same places and seqs: only the salt ends it.
 */
static void
test_scan_stops_salt (void **state)
{
  struct fake_jdev *f = fake_jdev_new (DEVSIZE);
  const struct jdev *dev = fake_jdev_dev (f);
  struct tlog *l = calloc (1, sizeof *l);

  (void) state;
  assert_non_null (l);
  tlog_init (l, dev, 1000, 0, 0, 0);
  for (int i = 0; i < 7; i++)
    tlog_append (l, JREC_DATA, 0, 1024, 0);
  assert_int_equal (scan_check (dev, &l->sb, l, NULL), 7);
  tlog_init (l, dev, 1001, 0, 0, 0);
  for (int i = 0; i < 4; i++)
    tlog_append (l, JREC_DATA, 0, 1024, 0);
  assert_int_equal (scan_check (dev, &l->sb, l, NULL), 4);
  free (l);
  fake_jdev_free (f);
}

/* A log recovered and continued (jsb_continue_log): the old records
 * up to where the scan stopped keep their salt, the new ones after it
 * carry another, and old records past that point, with the seq and LSN
 * a new record would have, never follow: only the split tells them
 * apart.
 */
static void
test_scan_split (void **state)
{
  struct fake_jdev *f = fake_jdev_new (DEVSIZE);
  const struct jdev *dev = fake_jdev_dev (f);
  struct tlog *l = calloc (1, sizeof *l);
  struct fake_jdev_counts c;
  struct jsb rd;
  uint32_t old;

  (void) state;
  assert_non_null (l);
  tlog_init (l, dev, 1000, 0, 0, 0);
  for (int i = 0; i < 7; i++)
    tlog_append (l, JREC_DATA, 0, 1024, 0);
  tlog_write_sb (l);
  tlog_sync (l);
  /* Recovery found records 0 to 2 (3 was torn, say): the log goes on
   * at record 3's place, and 3 to 6 stay on the device.
   */
  l->n = 3;
  l->seq = 3;
  l->lsn = l->recs[3].lsn;
  old = l->sb.salt;
  assert_int_equal (jsb_continue_log (dev, &l->sb, l->lsn), 0);
  fake_jdev_get_counts (f, &c);
  assert_int_equal (c.pending, 0); /* synced */
  assert_int_equal (l->sb.flags & JSB_F_SPLIT, JSB_F_SPLIT);
  assert_int_equal (l->sb.prev_salt, old);
  assert_true (l->sb.salt != old);
  assert_int_equal (l->sb.salt_lsn, l->recs[3].lsn);
  assert_int_equal (l->sb.tail_lsn, 0);
  assert_int_equal (scan_check (dev, &l->sb, l, NULL), 3);
  /* Two new records of the same sizes, at the places and with the seqs
   * of old 3 and 4: old 5 and 6 still follow them in all but salt.
   */
  for (int i = 0; i < 2; i++)
    tlog_append (l, JREC_DATA, 4096, 1024, 1);
  assert_int_equal (jsb_read (dev, &rd), 0);
  assert_int_equal (rd.flags & JSB_F_SPLIT, JSB_F_SPLIT);
  assert_int_equal (rd.prev_salt, old);
  assert_int_equal (rd.salt_lsn, l->recs[3].lsn);
  assert_int_equal (scan_check (dev, &rd, l, NULL), 5);
  /* Without the split the old records do not follow the new salt. */
  rd.flags &= ~JSB_F_SPLIT;
  assert_int_equal (scan_check (dev, &rd, l, NULL), 0);
  /* A scan from a tail past the split sees the new salt only. */
  l->sb.tail_lsn = l->recs[3].lsn;
  l->sb.tail_seq = 3;
  assert_int_equal (scan_check (dev, &l->sb, l, NULL), 2);
  /* Starting a new log ends the split. */
  assert_int_equal (jsb_restart_log (dev, &l->sb, 5, 2), 0);
  assert_int_equal (l->sb.flags & JSB_F_SPLIT, 0);
  assert_int_equal (l->sb.prev_salt, 0);
  assert_int_equal (l->sb.salt_lsn, 0);
  /* An empty log continues with a new salt and no split. */
  old = l->sb.salt;
  assert_int_equal (jsb_continue_log (dev, &l->sb, l->sb.tail_lsn), 0);
  assert_int_equal (l->sb.flags & JSB_F_SPLIT, 0);
  assert_true (l->sb.salt != old);
  free (l);
  fake_jdev_free (f);
}

/* The end of a lap: a record that ends with fewer than 64 bytes left
 * (the next starts on the next lap, no WRAP), then one that leaves
 * room for a WRAP only.
 */
static void
test_scan_wraps (void **state)
{
  struct fake_jdev *f = fake_jdev_new (DEVSIZE);
  const struct jdev *dev = fake_jdev_dev (f);
  struct tlog *l = calloc (1, sizeof *l);
  struct jscan end;

  (void) state;
  assert_non_null (l);
  tlog_init (l, dev, 3, 0, 0, 0);
  /* 7 * 1160 + 64 = 8184: then 8 bytes left. */
  for (int i = 0; i < 7; i++)
    tlog_append (l, JREC_DATA, 0, 1093, 0); /* 3 bytes of padding */
  tlog_append (l, JREC_TRIM, 0, 512, 0);
  assert_int_equal (l->lsn, RING - 8);
  tlog_append (l, JREC_ZERO, 0, 512, 1);
  assert_int_equal (l->skips, 1);
  assert_int_equal (l->wraps, 0);
  assert_int_equal (l->recs[8].lsn, RING);
  assert_int_equal (l->tail, 1); /* record 0 made room for it */
  assert_int_equal (scan_check (dev, &l->sb, l, &end), 8);
  assert_int_equal (end.nbytes, RING + 64 - 1160);
  assert_int_equal (end.lsn, RING + 64);

  /* A log that ends with the padding: the next record goes on the next
   * lap.
   */
  struct jsb sb = l->sb;
  sb.tail_lsn = l->recs[7].lsn;
  sb.tail_seq = 7;
  flip (dev, jnl_phys (&sb, RING) + 20); /* record 8 torn */
  assert_int_equal (scan_check (dev, &sb, l, &end), 1);
  assert_int_equal (end.lsn, RING);
  assert_int_equal (end.seq, 8);
  assert_int_equal (end.nbytes, 72);
  flip (dev, jnl_phys (&sb, RING) + 20);

  /* An explicit WRAP: fill the lap up to 64 bytes before its end, then
   * a record that does not fit.
   */
  for (int i = 0; i < 6; i++)
    tlog_append (l, JREC_DATA, 0, 1200, 1); /* 1264 each */
  tlog_append (l, JREC_DATA, 0, 416, 1);    /* 480 */
  assert_int_equal (l->lsn, 2 * RING - 64);
  assert_int_equal (l->wraps, 0);
  tlog_append (l, JREC_DATA, 0, 512, 2);
  assert_int_equal (l->wraps, 1);
  size_t w = l->n - 2;
  assert_int_equal (l->recs[w].type, JREC_WRAP);
  assert_int_equal (l->recs[w].lsn, 2 * RING - 64);
  assert_int_equal (l->recs[w + 1].lsn, 2 * RING);
  assert_int_equal (scan_check (dev, &l->sb, l, &end),
                    count_records (l, l->tail));
  assert_int_equal (end.nrecords, count_records (l, l->tail));
  assert_int_equal (end.seq, l->seq);
  assert_int_equal (end.lsn, l->lsn);
  assert_int_equal (end.nbytes, l->lsn - l->sb.tail_lsn);

  /* A log that ends with a WRAP: the next record would go on the next
   * lap, with the seq after the WRAP's.
   */
  flip (dev, jnl_phys (&l->sb, 2 * RING) + 20);
  assert_int_equal (scan_check (dev, &l->sb, l, &end),
                    count_records (l, l->tail) - 1);
  assert_int_equal (end.lsn, 2 * RING);
  assert_int_equal (end.seq, l->recs[w].seq + 1);
  assert_int_equal (end.epoch, 2);
  flip (dev, jnl_phys (&l->sb, 2 * RING) + 20);
  /* A torn WRAP ends the log before it. */
  flip (dev, jnl_phys (&l->sb, 2 * RING - 64) + 33);
  assert_int_equal (scan_check (dev, &l->sb, l, &end),
                    count_records (l, l->tail) - 1);
  assert_int_equal (end.lsn, 2 * RING - 64);
  assert_int_equal (end.seq, l->recs[w].seq);
  free_log (f, l);
}

/* A record that claims to cross the ring's end is not read past it
 * (here the end of the device).
 */
static void
test_scan_stops_crossing (void **state)
{
  struct fake_jdev *f = fake_jdev_new (DEVSIZE);
  const struct jdev *dev = fake_jdev_dev (f);
  struct tlog *l = calloc (1, sizeof *l);
  struct jrec r;

  (void) state;
  assert_non_null (l);
  tlog_init (l, dev, 3, 4096, 0, 0);
  for (int i = 0; i < 3; i++)
    tlog_append (l, JREC_DATA, 0, 1096, 0);
  tlog_append (l, JREC_DATA, 0, 8, 0);
  assert_int_equal (l->lsn, RING - 544);
  r = l->recs[3];
  r.count = 1096;
  tlog_rewrite (l, 3, &r);
  assert_int_equal (scan_check (dev, &l->sb, l, NULL), 3);
  free_log (f, l);
}

/* A ring full to the last byte: every record, and no more. */
static void
test_scan_full_ring (void **state)
{
  struct fake_jdev *f = fake_jdev_new (DEVSIZE);
  const struct jdev *dev = fake_jdev_dev (f);
  struct tlog *l = calloc (1, sizeof *l);
  struct jscan end;

  (void) state;
  assert_non_null (l);
  tlog_init (l, dev, 3, 5 * RING + 1024, 100, 0);
  for (int i = 0; i < 8; i++)
    tlog_append (l, JREC_DATA, 0, 960, 0);
  assert_int_equal (l->tail, 0);
  assert_int_equal (l->lsn - l->sb.tail_lsn, RING);
  assert_int_equal (scan_check (dev, &l->sb, l, &end), 8);
  assert_int_equal (end.nbytes, RING);
  free_log (f, l);
}

/* A scan of the whole log (ahead) hints the ring to the device from a
 * thread, inside the device and never past the ring's size from the
 * tail; it returns the same records; a scan without it hints nothing.
 */
static void
test_scan_ahead (void **state)
{
  struct fake_jdev *f = fake_jdev_new (DEVSIZE);
  const struct jdev *dev = fake_jdev_dev (f);
  struct tlog *l = calloc (1, sizeof *l);
  struct fake_jdev_counts c;
  struct jscan s;
  struct jrec r;
  int n = 0;

  (void) state;
  assert_non_null (l);
  tlog_init (l, dev, 3, 5 * RING + 1024, 100, 0);
  for (int i = 0; i < 8; i++)
    tlog_append (l, JREC_DATA, 0, 960, 0);
  assert_int_equal (scan_check (dev, &l->sb, l, NULL), 8);
  fake_jdev_get_counts (f, &c);
  assert_int_equal (c.willneeds, 0);
  jscan_init (&s, dev, &l->sb);
  s.ahead = true;
  while (jscan_next (&s, &r) == 1) {
    assert_int_equal (r.seq, l->recs[n].seq);
    assert_int_equal (r.lsn, l->recs[n].lsn);
    n++;
  }
  assert_int_equal (n, 8);
  /* The first window ends at the lap's end: the thread hints the rest,
   * the 1024 bytes from there to the tail plus the ring's size, and
   * no more.
   */
  for (int k = 0; k < 5000; k++) {
    fake_jdev_get_counts (f, &c);
    if (c.willneed_bytes >= 1024)
      break;
    usleep (1000);
  }
  jscan_free (&s);
  assert_null (s.pf);
  fake_jdev_get_counts (f, &c);
  assert_int_equal (c.willneed_bytes, 1024);
  free_log (f, l); /* no hint outside the device */
}

static void
test_scan_io_error (void **state)
{
  struct fake_jdev *f;
  struct tlog *l = small_log (&f);
  struct jscan s;
  struct jrec r;

  (void) state;
  /* The scan reads ahead (JSCAN_WINDOW): its first read fails. */
  jscan_init (&s, fake_jdev_dev (f), &l->sb);
  fake_jdev_fail_next (f, FAKE_JDEV_PREAD, EIO, 0);
  assert_int_equal (jscan_next (&s, &r), -EIO);
  /* Once read, the records come from the window: no further read. */
  assert_int_equal (jscan_next (&s, &r), 1);
  fake_jdev_fail_next (f, FAKE_JDEV_PREAD, EIO, 0);
  assert_int_equal (jscan_next (&s, &r), 1);
  jscan_free (&s);
  free_log (f, l);
}

/* ---------------------------------------------------------------- */
/* Crash states */

/* Records appended with a sync after every Kth, and a superblock
 * written and synced whenever the tail must move to make room; now and
 * then the tail also moves on by a record with a superblock write that
 * is not synced (it may be lost or torn).  After each append, crash
 * images under several seeds.  Each must hold a superblock, and scan to
 * a prefix of the records written from its tail on that reaches at
 * least every record synced.
 */
static void
test_crash_prefix (void **state)
{
  unsigned images = 0, longer = 0, older = 0;

  (void) state;
  for (unsigned run = 0; run < 24; run++) {
    struct fake_jdev *f = fake_jdev_new (DEVSIZE);
    const struct jdev *dev = fake_jdev_dev (f);
    struct tlog *l = calloc (1, sizeof *l);
    unsigned k = 1 + run % 6;
    uint64_t st = 1000 + run;

    assert_non_null (l);
    tlog_init (l, dev, (uint32_t) rnd (&st), 0, 0, 0);
    l->persist_tail = true;
    tlog_write_sb (l);
    tlog_sync (l);

    for (unsigned i = 0; i < 60; i++) {
      tlog_append_random (l, &st, run % 2);
      if ((i + 1) % k == 0)
        tlog_sync (l);
      if (rnd (&st) % 4 == 0 && l->tail + 1 < l->n) {
        tlog_tail_step (l);
        tlog_write_sb (l);
      }
      for (unsigned c = 0; c < 8; c++) {
        uint64_t seed = (uint64_t) run << 32 | i << 8 | (c + 1);
        uint8_t *img = fake_jdev_crash (f, seed);
        struct fake_jdev *g = fake_jdev_from_image (img, DEVSIZE);
        struct jsb sb;
        struct jscan end;

        free (img);
        assert_int_equal (jsb_read (fake_jdev_dev (g), &sb), 0);
        assert_int_equal (sb.salt, l->sb.salt);
        scan_check (fake_jdev_dev (g), &sb, l, &end);
        if (end.seq < l->synced_seq)
          fail_msg ("run %u append %u seed %llx: scan ends at seq %llu, "
                    "synced up to %llu",
                    run, i, (unsigned long long) seed,
                    (unsigned long long) end.seq,
                    (unsigned long long) l->synced_seq);
        longer += end.seq > l->synced_seq;
        older += sb.generation < l->sb.generation;
        images++;
        fake_jdev_free (g);
      }
    }
    assert_true (l->lsn > 3 * RING);
    free (l);
    fake_jdev_free (f);
  }
  /* Some crash images kept unsynced records, and some lost the last
   * superblock write: the test saw those cases.
   */
  assert_true (longer > 0);
  assert_true (older > 0);
  assert_true (images == 24 * 60 * 8);
}

/* ---------------------------------------------------------------- */
/* jdev_file */

static void
test_jdev_file (void **state)
{
  char dir[] = "/tmp/test-jformat-XXXXXX", path[64];
  struct jdev dev;
  struct jsb sb = make_sb (4), out;
  struct stat st;
  bool created;

  (void) state;
  assert_non_null (mkdtemp (dir));
  snprintf (path, sizeof path, "%s/journal", dir);

  /* Not there, and no size to create it with. */
  assert_int_equal (jdev_file_open (path, 0, &dev, &created), -ENOENT);
  assert_false (created);

  assert_int_equal (jdev_file_open (path, DEVSIZE, &dev, &created), 0);
  assert_true (created);
  assert_int_equal (dev.size, DEVSIZE);
  assert_int_equal (jsb_read (&dev, &out), -ENOENT);
  assert_int_equal (jsb_write (&dev, &sb), 0);
  assert_int_equal (dev.ops->sync (dev.opaque), 0);
  assert_int_equal (dev.ops->pread (dev.opaque, &(uint8_t){ 0 }, 1, DEVSIZE),
                    -EIO); /* past the end */
  jdev_file_close (&dev);

  /* Open again: not created, same size, the superblock is there; a
   * larger SIZE grows it, a smaller one does not shrink it.
   */
  assert_int_equal (jdev_file_open (path, 0, &dev, &created), 0);
  assert_false (created);
  assert_int_equal (dev.size, DEVSIZE);
  assert_int_equal (jsb_read (&dev, &out), 0);
  assert_sb_equal (&sb, &out);
  {
    /* One user at a time. */
    struct jdev dev2;
    assert_int_equal (jdev_file_open (path, 0, &dev2, &created), -EBUSY);
  }
  jdev_file_close (&dev);
  assert_int_equal (jdev_file_open (path, DEVSIZE + 4096, &dev, &created), 0);
  assert_false (created);
  assert_int_equal (dev.size, DEVSIZE + 4096);
  jdev_file_close (&dev);
  assert_int_equal (jdev_file_open (path, 4096, &dev, &created), 0);
  assert_int_equal (dev.size, DEVSIZE + 4096);
  jdev_file_close (&dev);
  assert_int_equal (stat (path, &st), 0);
  assert_int_equal (st.st_size, DEVSIZE + 4096);

  /* Neither a file nor a block device. */
  assert_true (jdev_file_open (dir, DEVSIZE, &dev, &created) < 0);
  assert_false (created);

  assert_int_equal (unlink (path), 0);
  assert_int_equal (rmdir (dir), 0);
}

/* ---------------------------------------------------------------- */
/* fake_jdev */

static void
test_fake_jdev (void **state)
{
  struct fake_jdev *f = fake_jdev_new (4096);
  const struct jdev *dev = fake_jdev_dev (f);
  struct fake_jdev_counts c;
  uint8_t buf[4096], *img, *want;

  (void) state;
  assert_int_equal (dev->size, 4096);
  memset (buf, 0xAB, sizeof buf);
  assert_int_equal (dev->ops->pwrite (dev->opaque, buf, 1024, 0), 0);
  assert_int_equal (dev->ops->sync (dev->opaque), 0);
  memset (buf, 0xCD, sizeof buf);
  assert_int_equal (dev->ops->pwrite (dev->opaque, buf, 100, 1000), 0);
  fake_jdev_get_counts (f, &c);
  assert_int_equal (c.pending, 1);
  assert_int_equal (c.syncs, 1);

  /* pread sees the pending write. */
  assert_int_equal (dev->ops->pread (dev->opaque, buf, 4096, 0), 0);
  assert_int_equal (buf[999], 0xAB);
  assert_int_equal (buf[1000], 0xCD);
  assert_int_equal (buf[1099], 0xCD);
  assert_int_equal (buf[1100], 0);
  want = fake_jdev_contents (f);
  assert_memory_equal (want, buf, 4096);
  free (want);

  /* Seed 0: the durable image. */
  img = fake_jdev_crash (f, 0);
  assert_int_equal (img[1000], 0xAB);
  assert_int_equal (img[1023], 0xAB);
  assert_int_equal (img[1024], 0);
  free (img);
  /* Other seeds: each sector of the write (two: [1000, 1024) and
   * [1024, 1100)) kept or not, and both outcomes happen.
   */
  unsigned seen[4] = { 0 };
  for (uint64_t seed = 1; seed < 200; seed++) {
    img = fake_jdev_crash (f, seed);
    assert_true (img[999] == 0xAB && img[1100] == 0);
    for (int i = 1001; i < 1024; i++)
      assert_int_equal (img[i], img[1000]);
    for (int i = 1025; i < 1100; i++)
      assert_int_equal (img[i], img[1024]);
    seen[(img[1000] == 0xCD) * 2 + (img[1024] == 0xCD)]++;
    free (img);
  }
  for (int i = 0; i < 4; i++)
    assert_true (seen[i] > 0);

  /* A failed sync leaves it pending; a failed pwrite writes nothing. */
  fake_jdev_fail_next (f, FAKE_JDEV_SYNC, EIO, 0);
  assert_int_equal (dev->ops->sync (dev->opaque), -EIO);
  fake_jdev_get_counts (f, &c);
  assert_int_equal (c.pending, 1);
  fake_jdev_fail_next (f, FAKE_JDEV_PWRITE, ENOSPC, 1);
  assert_int_equal (dev->ops->pwrite (dev->opaque, buf, 1, 0), 0);
  assert_int_equal (dev->ops->pwrite (dev->opaque, "x", 1, 4095), -ENOSPC);
  assert_int_equal (dev->ops->pread (dev->opaque, buf, 1, 4095), 0);
  assert_int_equal (buf[0], 0);
  assert_int_equal (dev->ops->sync (dev->opaque), 0);
  fake_jdev_get_counts (f, &c);
  assert_int_equal (c.pending, 0);
  assert_int_equal (c.errors, 2);
  img = fake_jdev_crash (f, 12345);
  assert_int_equal (img[1099], 0xCD);
  free (img);

  /* A gate with a token left: the call passes without blocking. */
  fake_jdev_hold (f, FAKE_JDEV_SYNC, true);
  fake_jdev_release (f, FAKE_JDEV_SYNC, 1);
  assert_int_equal (dev->ops->sync (dev->opaque), 0);
  assert_int_equal (fake_jdev_held (f, FAKE_JDEV_SYNC), 0);
  fake_jdev_hold (f, FAKE_JDEV_SYNC, false);

  /* Out of range. */
  assert_int_equal (dev->ops->pread (dev->opaque, buf, 2, 4095), -EIO);
  fake_jdev_get_counts (f, &c);
  assert_int_equal (c.bad, 1);
  fake_jdev_free (f);
}

int
main (void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test (test_crc32c_vectors),
    cmocka_unit_test (test_crc32c_reference),
    cmocka_unit_test (test_sb_roundtrip),
    cmocka_unit_test (test_sb_layout),
    cmocka_unit_test (test_sb_decode_checks),
    cmocka_unit_test (test_sb_read_slots),
    cmocka_unit_test (test_sb_read_magic_version),
    cmocka_unit_test (test_sb_write_error),
    cmocka_unit_test (test_rec_layout),
    cmocka_unit_test (test_rec_decode_checks),
    cmocka_unit_test (test_place),
    cmocka_unit_test (test_scan_empty),
    cmocka_unit_test (test_scan_laps),
    cmocka_unit_test (test_scan_stops_crc),
    cmocka_unit_test (test_scan_stops_fields),
    cmocka_unit_test (test_scan_stops_salt),
    cmocka_unit_test (test_scan_split),
    cmocka_unit_test (test_scan_wraps),
    cmocka_unit_test (test_scan_stops_crossing),
    cmocka_unit_test (test_scan_full_ring),
    cmocka_unit_test (test_scan_ahead),
    cmocka_unit_test (test_scan_io_error),
    cmocka_unit_test (test_crash_prefix),
    cmocka_unit_test (test_jdev_file),
    cmocka_unit_test (test_fake_jdev),
  };

  return cmocka_run_group_tests (tests, NULL, NULL);
}
