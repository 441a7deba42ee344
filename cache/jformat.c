/* subpage: the journal's on-disk format (jformat.h; docs/journal.md).
 *
 * What is here: CRC32C, the superblock and record header encodings, the
 * placement rule of records in the ring, the scan that finds the log
 * from the superblock's tail, and the file/block-device jdev.  Nothing
 * here decides when to write or sync, and nothing keeps state between
 * calls except the CRC tables: the runtime (write path, recovery) owns
 * that.
 *
 * Encoding: every field is written byte by byte, little-endian, by the
 * put_*()/get_*() helpers at fixed offsets (the SB_* and HDR_* offsets
 * below), never by copying a struct, so the format does not depend on
 * the compiler's layout or the host's byte order.
 *
 * CRC32C: slicing-by-8 (eight 256-entry tables, built once under
 * pthread_once), portable C: about 1.4 GB/s at -O2 on x86-64, six times
 * less at -O0.  (SSE4.2's crc32 instruction would be faster; not worth
 * a second implementation yet.)  The CRC is the usual one: initial and
 * final value inverted, so crc32c (crc32c (0, a), b) == crc32c (0, ab).
 *
 * The scan trusts nothing it reads: a record follows only if every
 * check passes (magic, known type, salt, lsn, seq, epoch, fits before
 * the ring's end, CRC of header and payload), and it never consumes
 * more than data_size bytes of ring, so a corrupt ring cannot make it
 * loop or read outside the record area.
 */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <linux/fs.h> /* BLKGETSIZE64 */

#include "jformat.h"
#include "util.h"

/* ---------------------------------------------------------------- */
/* CRC32C */

#define CRC32C_POLY 0x82F63B78u /* Castagnoli, reflected */

static uint32_t crc_table[8][256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;
static uint32_t (*crc_update) (uint32_t crc, const uint8_t *p, size_t len);

static inline uint32_t
get_le32 (const uint8_t *p)
{
  return (uint32_t) p[0] | (uint32_t) p[1] << 8 | (uint32_t) p[2] << 16 |
         (uint32_t) p[3] << 24;
}

/* The CRC register (not inverted) over [p, p + len), by tables (slicing
 * by 8).
 */
static uint32_t
crc_update_tables (uint32_t crc, const uint8_t *p, size_t len)
{
  /* Bytes up to an 8-byte boundary, then 8 at a time. */
  while (len > 0 && ((uintptr_t) p & 7) != 0) {
    crc = (crc >> 8) ^ crc_table[0][(crc ^ *p++) & 0xff];
    len--;
  }
  while (len >= 8) {
    uint32_t lo = get_le32 (p) ^ crc;
    uint32_t hi = get_le32 (p + 4);
    crc = crc_table[7][lo & 0xff] ^ crc_table[6][(lo >> 8) & 0xff] ^
          crc_table[5][(lo >> 16) & 0xff] ^ crc_table[4][lo >> 24] ^
          crc_table[3][hi & 0xff] ^ crc_table[2][(hi >> 8) & 0xff] ^
          crc_table[1][(hi >> 16) & 0xff] ^ crc_table[0][hi >> 24];
    p += 8;
    len -= 8;
  }
  while (len > 0) {
    crc = (crc >> 8) ^ crc_table[0][(crc ^ *p++) & 0xff];
    len--;
  }
  return crc;
}

#if defined(__x86_64__)
/* The same with SSE 4.2's crc32 instruction (CRC32C, reflected, like
 * the tables), 8 bytes per instruction: what recovery's scan of a large
 * journal and every record's checksum cost.
 */
__attribute__ ((target ("sse4.2"))) static uint32_t
crc_update_sse42 (uint32_t crc, const uint8_t *p, size_t len)
{
  uint64_t c = crc;

  while (len > 0 && ((uintptr_t) p & 7) != 0) {
    c = __builtin_ia32_crc32qi ((uint32_t) c, *p++);
    len--;
  }
  while (len >= 8) {
    uint64_t v;

    memcpy (&v, p, 8); /* little-endian, as the tables read it */
    c = __builtin_ia32_crc32di (c, v);
    p += 8;
    len -= 8;
  }
  while (len > 0) {
    c = __builtin_ia32_crc32qi ((uint32_t) c, *p++);
    len--;
  }
  return (uint32_t) c;
}
#endif

static void
crc_init (void)
{
  for (unsigned i = 0; i < 256; i++) {
    uint32_t c = i;
    for (unsigned k = 0; k < 8; k++)
      c = (c >> 1) ^ (CRC32C_POLY & -(c & 1));
    crc_table[0][i] = c;
  }
  for (unsigned i = 0; i < 256; i++)
    for (unsigned t = 1; t < 8; t++)
      crc_table[t][i] = (crc_table[t - 1][i] >> 8) ^
                        crc_table[0][crc_table[t - 1][i] & 0xff];
  crc_update = crc_update_tables;
#if defined(__x86_64__)
  __builtin_cpu_init ();
  if (__builtin_cpu_supports ("sse4.2"))
    crc_update = crc_update_sse42;
#endif
}

uint32_t
crc32c (uint32_t crc, const void *buf, size_t len)
{
  if (pthread_once (&crc_once, crc_init) != 0)
    abort ();
  return ~crc_update (~crc, buf, len);
}

uint32_t
crc32c_tables (uint32_t crc, const void *buf, size_t len)
{
  if (pthread_once (&crc_once, crc_init) != 0)
    abort ();
  return ~crc_update_tables (~crc, buf, len);
}

/* ---------------------------------------------------------------- */
/* Little-endian field helpers */

static inline void
put_le16 (uint8_t *p, uint16_t v)
{
  p[0] = v & 0xff;
  p[1] = v >> 8;
}

static inline void
put_le32 (uint8_t *p, uint32_t v)
{
  for (unsigned i = 0; i < 4; i++)
    p[i] = (v >> (8 * i)) & 0xff;
}

static inline void
put_le64 (uint8_t *p, uint64_t v)
{
  for (unsigned i = 0; i < 8; i++)
    p[i] = (v >> (8 * i)) & 0xff;
}

static inline uint16_t
get_le16 (const uint8_t *p)
{
  return (uint16_t) (p[0] | p[1] << 8);
}

static inline uint64_t
get_le64 (const uint8_t *p)
{
  return (uint64_t) get_le32 (p) | (uint64_t) get_le32 (p + 4) << 32;
}

/* ---------------------------------------------------------------- */
/* Superblock */

static const uint8_t sb_magic[8] = { 'S', 'U', 'B', 'P', 'G', 'J', 'N', 'L' };

/* Byte offsets of the fields in a slot. */
enum {
  SB_MAGIC = 0,
  SB_VERSION = 8,
  SB_SECTOR_SIZE = 12,
  SB_ID = 16,
  SB_GENERATION = 32,
  SB_JOURNAL_SIZE = 40,
  SB_DATA_SIZE = 48,
  SB_SALT = 56,
  SB_FLAGS = 60,
  SB_TAIL_LSN = 64,
  SB_TAIL_SEQ = 72,
  SB_TAIL_EPOCH = 80,
  SB_IMAGE_SIZE = 88,
  SB_IDENT_LEN = 96,
  SB_IDENT = 98,
  SB_PREV_SALT = 360,
  SB_SALT_LSN = 368,
  SB_CRC = JNL_SB_SIZE - 4,
};
_Static_assert(SB_IDENT + JNL_IDENT_MAX - 1 <= SB_PREV_SALT, "ident fits");

void
jsb_encode (const struct jsb *sb, uint8_t out[JNL_SB_SIZE])
{
  size_t len = strnlen (sb->ident, JNL_IDENT_MAX);

  assert (len < JNL_IDENT_MAX);
  memset (out, 0, JNL_SB_SIZE);
  memcpy (out + SB_MAGIC, sb_magic, sizeof sb_magic);
  put_le32 (out + SB_VERSION, sb->version);
  put_le32 (out + SB_SECTOR_SIZE, sb->sector_size);
  memcpy (out + SB_ID, sb->id, sizeof sb->id);
  put_le64 (out + SB_GENERATION, sb->generation);
  put_le64 (out + SB_JOURNAL_SIZE, sb->journal_size);
  put_le64 (out + SB_DATA_SIZE, sb->data_size);
  put_le32 (out + SB_SALT, sb->salt);
  put_le32 (out + SB_FLAGS, sb->flags);
  put_le64 (out + SB_TAIL_LSN, sb->tail_lsn);
  put_le64 (out + SB_TAIL_SEQ, sb->tail_seq);
  put_le64 (out + SB_TAIL_EPOCH, sb->tail_epoch);
  put_le64 (out + SB_IMAGE_SIZE, sb->image_size);
  put_le16 (out + SB_IDENT_LEN, (uint16_t) len);
  memcpy (out + SB_IDENT, sb->ident, len);
  if (sb->flags & JSB_F_SPLIT) {
    put_le32 (out + SB_PREV_SALT, sb->prev_salt);
    put_le64 (out + SB_SALT_LSN, sb->salt_lsn);
  }
  put_le32 (out + SB_CRC, crc32c (0, out, SB_CRC));
}

static bool
sb_has_magic (const uint8_t in[JNL_SB_SIZE])
{
  return memcmp (in + SB_MAGIC, sb_magic, sizeof sb_magic) == 0;
}

static bool
sb_crc_ok (const uint8_t in[JNL_SB_SIZE])
{
  return get_le32 (in + SB_CRC) == crc32c (0, in, SB_CRC);
}

int
jsb_decode (const uint8_t in[JNL_SB_SIZE], struct jsb *sb)
{
  struct jsb s = { 0 };
  size_t len;

  if (!sb_has_magic (in) || !sb_crc_ok (in))
    return -EINVAL;
  s.version = get_le32 (in + SB_VERSION);
  if (s.version > JNL_VERSION)
    return -EPROTONOSUPPORT;
  s.flags = get_le32 (in + SB_FLAGS);
  if (s.flags & ~JSB_F_KNOWN)
    return -EPROTONOSUPPORT;
  s.sector_size = get_le32 (in + SB_SECTOR_SIZE);
  memcpy (s.id, in + SB_ID, sizeof s.id);
  s.generation = get_le64 (in + SB_GENERATION);
  s.journal_size = get_le64 (in + SB_JOURNAL_SIZE);
  s.data_size = get_le64 (in + SB_DATA_SIZE);
  s.salt = get_le32 (in + SB_SALT);
  s.tail_lsn = get_le64 (in + SB_TAIL_LSN);
  s.tail_seq = get_le64 (in + SB_TAIL_SEQ);
  s.tail_epoch = get_le64 (in + SB_TAIL_EPOCH);
  s.image_size = get_le64 (in + SB_IMAGE_SIZE);
  len = get_le16 (in + SB_IDENT_LEN);
  if (s.flags & JSB_F_SPLIT) {
    s.prev_salt = get_le32 (in + SB_PREV_SALT);
    s.salt_lsn = get_le64 (in + SB_SALT_LSN);
  }

  if (s.version == 0)
    return -EINVAL;
  if (s.sector_size < 512 || !is_power_of_2 (s.sector_size))
    return -EINVAL;
  if (s.data_size == 0 || s.data_size % 4096 != 0 ||
      s.journal_size < JNL_DATA_OFFSET ||
      s.data_size > s.journal_size - JNL_DATA_OFFSET)
    return -EINVAL;
  if (len >= JNL_IDENT_MAX || memchr (in + SB_IDENT, 0, len))
    return -EINVAL;
  memcpy (s.ident, in + SB_IDENT, len);
  s.ident[len] = '\0';

  *sb = s;
  return 0;
}

int
jsb_read (const struct jdev *dev, struct jsb *sb)
{
  uint8_t slot[2][JNL_SB_SIZE];
  struct jsb dec[2];
  int rc[2];
  bool magic[2], crc_ok[2];
  int newest_crc = -1, newest_valid = -1;

  for (int i = 0; i < 2; i++) {
    int r = dev->ops->pread (dev->opaque, slot[i], JNL_SB_SIZE,
                             (uint64_t) i * JNL_SB_SIZE);
    if (r < 0)
      return r;
    magic[i] = sb_has_magic (slot[i]);
    crc_ok[i] = magic[i] && sb_crc_ok (slot[i]);
    rc[i] = jsb_decode (slot[i], &dec[i]);
    /* A slot holds only generations of its parity (jsb_write). */
    if (rc[i] == 0 && dec[i].generation % 2 != (uint64_t) i)
      rc[i] = -EINVAL;
  }
  if (!magic[0] && !magic[1])
    return -ENOENT;

  /* The newest slot that is intact (magic and CRC), whatever its
   * version, and the newest that is valid.
   */
  for (int i = 0; i < 2; i++) {
    uint64_t gen = get_le64 (slot[i] + SB_GENERATION);
    if (crc_ok[i] &&
        (newest_crc < 0 || gen > get_le64 (slot[newest_crc] + SB_GENERATION)))
      newest_crc = i;
    if (rc[i] == 0 && (newest_valid < 0 || gen > dec[newest_valid].generation))
      newest_valid = i;
  }
  if (newest_crc >= 0 && rc[newest_crc] == -EPROTONOSUPPORT)
    return -EPROTONOSUPPORT;
  if (newest_valid < 0)
    return -EINVAL;
  *sb = dec[newest_valid];
  return 0;
}

int
jsb_write (const struct jdev *dev, struct jsb *sb)
{
  uint8_t out[JNL_SB_SIZE];
  int r;

  sb->generation++;
  jsb_encode (sb, out);
  r = dev->ops->pwrite (dev->opaque, out, JNL_SB_SIZE,
                        (sb->generation % 2) * JNL_SB_SIZE);
  /* The slot may be torn now: the next write must go to the same slot
   * again, not over the other one, which holds the last good copy.
   */
  if (r < 0)
    sb->generation--;
  return r;
}

/* ---------------------------------------------------------------- */
/* Records */

#define JREC_MAGIC 0x524A5053u    /* "SPJR" */
#define JREC_MAX_DATA (32u << 20) /* the largest DATA payload */

/* Byte offsets of the fields in a record header. */
enum {
  HDR_MAGIC = 0,
  HDR_TYPE = 4,
  HDR_PAD0 = 6,
  HDR_SALT = 8,
  HDR_PAD1 = 12,
  HDR_SEQ = 16,
  HDR_EPOCH = 24,
  HDR_OFFSET = 32,
  HDR_COUNT = 40,
  HDR_LSN = 48,
  HDR_CRC = 56,
  HDR_PAD2 = 60,
};
_Static_assert(HDR_PAD2 + 4 == JNL_HDR_SIZE, "header layout");

uint64_t
jnl_place (const struct jsb *sb, uint64_t lsn, uint64_t size, bool *wrap)
{
  uint64_t left = sb->data_size - lsn % sb->data_size;

  assert (size <= sb->data_size);
  *wrap = false;
  if (size <= left)
    return lsn;
  *wrap = left >= JNL_HDR_SIZE;
  return lsn + left;
}

/* The record's CRC: the header with its CRC field zeroed, then the
 * payload.
 */
static uint32_t
rec_crc (const uint8_t hdr[JNL_HDR_SIZE], const void *payload, uint64_t count)
{
  uint8_t h[JNL_HDR_SIZE];
  uint32_t crc;

  memcpy (h, hdr, JNL_HDR_SIZE);
  put_le32 (h + HDR_CRC, 0);
  crc = crc32c (0, h, JNL_HDR_SIZE);
  if (count > 0)
    crc = crc32c (crc, payload, count);
  return crc;
}

void
jrec_encode (const struct jrec *r, const void *payload,
             uint8_t hdr[JNL_HDR_SIZE])
{
  memset (hdr, 0, JNL_HDR_SIZE);
  put_le32 (hdr + HDR_MAGIC, JREC_MAGIC);
  put_le16 (hdr + HDR_TYPE, r->type);
  put_le32 (hdr + HDR_SALT, r->salt);
  put_le64 (hdr + HDR_SEQ, r->seq);
  put_le64 (hdr + HDR_EPOCH, r->epoch);
  put_le64 (hdr + HDR_OFFSET, r->offset);
  put_le64 (hdr + HDR_COUNT, r->count);
  put_le64 (hdr + HDR_LSN, r->lsn);
  put_le32 (hdr + HDR_CRC,
            rec_crc (hdr, payload, r->type == JREC_DATA ? r->count : 0));
}

int
jrec_decode (const uint8_t hdr[JNL_HDR_SIZE], struct jrec *r)
{
  struct jrec d;

  if (get_le32 (hdr + HDR_MAGIC) != JREC_MAGIC)
    return -EINVAL;
  /* Version 1 writes zeroes in the padding fields. */
  if (get_le16 (hdr + HDR_PAD0) != 0 || get_le32 (hdr + HDR_PAD1) != 0 ||
      get_le32 (hdr + HDR_PAD2) != 0)
    return -EINVAL;
  d.type = get_le16 (hdr + HDR_TYPE);
  d.salt = get_le32 (hdr + HDR_SALT);
  d.seq = get_le64 (hdr + HDR_SEQ);
  d.epoch = get_le64 (hdr + HDR_EPOCH);
  d.offset = get_le64 (hdr + HDR_OFFSET);
  d.count = get_le64 (hdr + HDR_COUNT);
  d.lsn = get_le64 (hdr + HDR_LSN);
  switch (d.type) {
  case JREC_DATA:
    if (d.count == 0 || d.count > JREC_MAX_DATA)
      return -EINVAL;
    break;
  case JREC_ZERO:
  case JREC_TRIM:
  case JREC_WRAP:
  case JREC_BYPASS: break;
  default: return -EINVAL;
  }
  *r = d;
  return 0;
}

bool
jrec_check (const uint8_t hdr[JNL_HDR_SIZE], const void *payload,
            uint64_t count)
{
  return get_le32 (hdr + HDR_CRC) == rec_crc (hdr, payload, count);
}

/* ---------------------------------------------------------------- */
/* Scan */

void
jscan_init (struct jscan *s, const struct jdev *dev, const struct jsb *sb)
{
  *s = (struct jscan){
    .dev = dev,
    .sb = sb,
    .lsn = sb->tail_lsn,
    .seq = sb->tail_seq,
    .epoch = sb->tail_epoch,
  };
}

static void scan_ahead_stop (struct jscan *s);

void
jscan_free (struct jscan *s)
{
  scan_ahead_stop (s);
  free (s->win);
  s->win = NULL;
  s->buf = NULL;
  s->wincap = s->wlen = s->wnext = 0;
}

/* Prefetching for a scan of the whole log (s->ahead): a thread asks
 * the device for the ring (willneed, 1 MiB at a time; it may block
 * there, the scan does not) up to JSCAN_AHEAD past the scan's window,
 * never past the tail's LSN plus the ring's size (a scan reads no
 * further), so the device reads while the scan checks records.
 */
struct jscan_ahead {
  pthread_t th;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  const struct jdev *dev;
  const struct jsb *sb;
  uint64_t at, done, limit; /* the scan's window end; hinted; the end */
  bool stop;
};

static void *
ahead_thread (void *arg)
{
  struct jscan_ahead *a = arg;

  pthread_mutex_lock (&a->mu);
  while (!a->stop && a->done < a->limit) {
    uint64_t from = a->done, n;

    if (from >= a->at + JSCAN_AHEAD) {
      pthread_cond_wait (&a->cv, &a->mu);
      continue;
    }
    n = MIN (MIN ((uint64_t) JSCAN_WINDOW, a->limit - from),
             a->sb->data_size - from % a->sb->data_size);
    pthread_mutex_unlock (&a->mu);
    a->dev->ops->willneed (a->dev->opaque, jnl_phys (a->sb, from), n);
    pthread_mutex_lock (&a->mu);
    a->done = from + n;
  }
  pthread_mutex_unlock (&a->mu);
  return NULL;
}

/* The scan's window now ends at AT: starts the thread (once; without
 * one the scan only goes slower), or lets it go on.
 */
static void
scan_ahead (struct jscan *s, uint64_t at)
{
  struct jscan_ahead *a = s->pf;

  if (!s->ahead || !s->dev->ops->willneed)
    return;
  if (!a) {
    a = calloc (1, sizeof *a);
    if (!a) {
      s->ahead = false;
      return;
    }
    pthread_mutex_init (&a->mu, NULL);
    pthread_cond_init (&a->cv, NULL);
    a->dev = s->dev;
    a->sb = s->sb;
    a->at = a->done = at;
    a->limit = s->sb->tail_lsn + s->sb->data_size;
    if (pthread_create (&a->th, NULL, ahead_thread, a) != 0) {
      pthread_cond_destroy (&a->cv);
      pthread_mutex_destroy (&a->mu);
      free (a);
      s->ahead = false;
      return;
    }
    s->pf = a;
    return;
  }
  pthread_mutex_lock (&a->mu);
  a->at = at;
  pthread_cond_signal (&a->cv);
  pthread_mutex_unlock (&a->mu);
}

static void
scan_ahead_stop (struct jscan *s)
{
  struct jscan_ahead *a = s->pf;

  if (!a)
    return;
  pthread_mutex_lock (&a->mu);
  a->stop = true;
  pthread_cond_signal (&a->cv);
  pthread_mutex_unlock (&a->mu);
  pthread_join (a->th, NULL);
  pthread_cond_destroy (&a->cv);
  pthread_mutex_destroy (&a->mu);
  free (a);
  s->pf = NULL;
}

/* Points *P at ring bytes [lsn, lsn + n), which do not cross the ring's
 * end, reading ahead (64 KiB, doubling with each read up to
 * JSCAN_WINDOW; never past the ring's end) when they
 * are not in the window: a scan reads the ring in large reads, not two
 * per record.  Bytes read ahead past the records the scan returns are
 * never trusted: each record is checked (salt, lsn, seq, CRC) when it
 * is reached, and a window is read again from that record on if the
 * record lies past it.
 */
static int
scan_bytes (struct jscan *s, uint64_t lsn, uint64_t n, const uint8_t **p)
{
  const struct jsb *sb = s->sb;
  uint64_t lap_left = sb->data_size - lsn % sb->data_size, len;
  int err;

  if (s->win && lsn >= s->wlsn && lsn + n <= s->wlsn + s->wlen) {
    *p = s->win + (lsn - s->wlsn);
    return 0;
  }
  /* Ramps up like read-ahead: a scan of a few records reads little. */
  s->wnext = s->wnext ? MIN (2 * s->wnext, (uint64_t) JSCAN_WINDOW) : 65536;
  len = MIN (MAX (n, s->wnext), lap_left);
  assert (len >= n);
  if (len > s->wincap) {
    uint8_t *nb = realloc (s->win, len);
    if (!nb)
      return -ENOMEM;
    s->win = nb;
    s->wincap = len;
  }
  s->wlen = 0;
  err = s->dev->ops->pread (s->dev->opaque, s->win, len, jnl_phys (sb, lsn));
  if (err < 0)
    return err;
  s->wlsn = lsn;
  s->wlen = len;
  *p = s->win;
  scan_ahead (s, lsn + len);
  return 0;
}

/* Moves the scan SIZE bytes on, if the ring has that many bytes left
 * that the scan has not consumed yet.
 */
static bool
scan_consume (struct jscan *s, uint64_t size)
{
  if (size > s->sb->data_size - s->nbytes)
    return false;
  s->lsn += size;
  s->nbytes += size;
  return true;
}

int
jscan_next (struct jscan *s, struct jrec *r)
{
  const struct jsb *sb = s->sb;
  const uint8_t *hdr, *pl = NULL;
  struct jrec rec;
  uint64_t left, payload, size;
  int err;

  for (;;) {
    left = sb->data_size - s->lsn % sb->data_size;
    if (left < JNL_HDR_SIZE) { /* no header fits: the next lap */
      if (!scan_consume (s, left))
        return 0;
      continue;
    }
    if (s->nbytes + JNL_HDR_SIZE > sb->data_size)
      return 0;

    err = scan_bytes (s, s->lsn, JNL_HDR_SIZE, &hdr);
    if (err < 0)
      return err;
    if (jrec_decode (hdr, &rec) < 0 || rec.salt != jsb_salt_at (sb, s->lsn) ||
        rec.lsn != s->lsn || rec.seq != s->seq || rec.epoch < s->epoch)
      return 0;

    if (rec.type == JREC_WRAP) {
      if (!jrec_check (hdr, NULL, 0) || !scan_consume (s, left))
        return 0;
      s->seq++;
      s->epoch = rec.epoch;
      continue;
    }

    payload = rec.type == JREC_DATA ? rec.count : 0;
    if (rec.type != JREC_DATA && rec.count == 0)
      return 0;
    size = jrec_size (payload);
    if (size > left || size > sb->data_size - s->nbytes)
      return 0;
    if (payload > 0) {
      /* The header stays valid: it is copied before the window moves. */
      uint8_t h[JNL_HDR_SIZE];

      memcpy (h, hdr, JNL_HDR_SIZE);
      err = scan_bytes (s, s->lsn + JNL_HDR_SIZE, payload, &pl);
      if (err < 0)
        return err;
      if (!jrec_check (h, pl, payload))
        return 0;
    }
    else if (!jrec_check (hdr, NULL, 0))
      return 0;
    s->buf = pl;

    scan_consume (s, size);
    s->seq++;
    s->epoch = rec.epoch;
    s->nrecords++;
    *r = rec;
    return 1;
  }
}

/* ---------------------------------------------------------------- */
/* A journal on a file or block device */

struct jfile {
  int fd;
};

static int
jfile_pread (void *opaque, void *buf, size_t count, uint64_t off)
{
  struct jfile *jf = opaque;
  uint8_t *p = buf;

  while (count > 0) {
    ssize_t n = pread (jf->fd, p, count, (off_t) off);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      return -errno;
    }
    if (n == 0) /* past the end: the device is smaller than it says */
      return -EIO;
    p += n;
    count -= (size_t) n;
    off += (uint64_t) n;
  }
  return 0;
}

static int
jfile_pwrite (void *opaque, const void *buf, size_t count, uint64_t off)
{
  struct jfile *jf = opaque;
  const uint8_t *p = buf;

  while (count > 0) {
    ssize_t n = pwrite (jf->fd, p, count, (off_t) off);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      return -errno;
    }
    if (n == 0)
      return -EIO;
    p += n;
    count -= (size_t) n;
    off += (uint64_t) n;
  }
  return 0;
}

static int
jfile_sync (void *opaque)
{
  struct jfile *jf = opaque;

  if (fdatasync (jf->fd) < 0)
    return -errno;
  return 0;
}

static void
jfile_willneed (void *opaque, uint64_t off, uint64_t count)
{
  struct jfile *jf = opaque;

  /* Only a hint: an error changes nothing. */
  (void) posix_fadvise (jf->fd, (off_t) off, (off_t) count,
                        POSIX_FADV_WILLNEED);
}

static const struct jdev_ops jfile_ops = {
  .pread = jfile_pread,
  .pwrite = jfile_pwrite,
  .sync = jfile_sync,
  .willneed = jfile_willneed,
};

/* Makes sure [0, SIZE) of a regular file is allocated, where the file
 * system can say so.
 */
static int
jfile_allocate (int fd, uint64_t size)
{
  int r = posix_fallocate (fd, 0, (off_t) size);

  if (r != 0 && r != EOPNOTSUPP)
    return -r;
  return 0;
}

/* FD's size: a block device's, or a regular file's (*REG set); -EINVAL
 * for anything else.
 */
static int
jfile_size (int fd, uint64_t *size, bool *reg)
{
  struct stat st;

  if (fstat (fd, &st) < 0)
    return -errno;
  *reg = S_ISREG (st.st_mode);
  if (S_ISBLK (st.st_mode))
    return ioctl (fd, BLKGETSIZE64, size) < 0 ? -errno : 0;
  if (!*reg)
    return -EINVAL;
  *size = (uint64_t) st.st_size;
  return 0;
}

/* Makes DEV the journal on open FD of SIZE bytes. */
static int
jfile_dev (int fd, uint64_t size, struct jdev *dev)
{
  struct jfile *jf = malloc (sizeof *jf);

  if (!jf)
    return -ENOMEM;
  jf->fd = fd;
  *dev = (struct jdev){ .ops = &jfile_ops, .opaque = jf, .size = size };
  return 0;
}

int
jdev_file_open (const char *path, uint64_t size, struct jdev *dev,
                bool *created)
{
  uint64_t devsize;
  bool reg;
  int fd, err;

  *created = false;
  for (;;) {
    fd = open (path, O_RDWR | O_CLOEXEC);
    if (fd >= 0 || errno != ENOENT || size == 0)
      break;
    fd = open (path, O_RDWR | O_CLOEXEC | O_CREAT | O_EXCL, 0600);
    if (fd >= 0) {
      *created = true;
      break;
    }
    if (errno != EEXIST) /* else created meanwhile: open it */
      break;
  }
  if (fd < 0)
    return -errno;
  /* One user at a time: two servers appending to one journal would
   * each replay the other's records over newer data.
   */
  if (flock (fd, LOCK_EX | LOCK_NB) < 0) {
    err = errno == EWOULDBLOCK ? -EBUSY : -errno;
    goto err_close;
  }

  err = jfile_size (fd, &devsize, &reg);
  if (err < 0)
    goto err_close;
  if (reg && size > devsize) { /* new, or smaller than asked: grow it */
    if (ftruncate (fd, (off_t) size) < 0)
      goto err_errno;
    err = jfile_allocate (fd, size);
    if (err < 0)
      goto err_close;
    devsize = size;
  }

  if (*created) {
    /* The new name, durable before anything is journaled in it. */
    char *dir = strdup (path), *slash = dir ? strrchr (dir, '/') : NULL;
    int dfd;

    if (!dir) {
      err = -ENOMEM;
      goto err_close;
    }
    if (slash == dir)
      slash[1] = '\0';
    else if (slash)
      *slash = '\0';
    dfd = open (slash ? dir : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    free (dir);
    if (dfd < 0 || fsync (dfd) < 0) {
      err = -errno;
      if (dfd >= 0)
        close (dfd);
      goto err_close;
    }
    close (dfd);
  }

  err = jfile_dev (fd, devsize, dev);
  if (err == 0)
    return 0;
  goto err_close;

err_errno:
  err = -errno;
err_close:
  if (*created)
    unlink (path);
  *created = false;
  close (fd);
  return err;
}

void
jdev_file_close (struct jdev *dev)
{
  struct jfile *jf = dev->opaque;

  if (jf) {
    close (jf->fd);
    free (jf);
  }
  *dev = (struct jdev){ 0 };
}

/* ---------------------------------------------------------------- */
/* For recovery and the offline tool */

int
jsb_slots (const struct jdev *dev, struct jsb_slot out[2])
{
  uint8_t slot[JNL_SB_SIZE];

  for (int i = 0; i < 2; i++) {
    struct jsb dec;
    int r = dev->ops->pread (dev->opaque, slot, JNL_SB_SIZE,
                             (uint64_t) i * JNL_SB_SIZE);

    if (r < 0)
      return r;
    out[i] = (struct jsb_slot){ 0 };
    out[i].magic = sb_has_magic (slot);
    out[i].crc_ok = out[i].magic && sb_crc_ok (slot);
    if (out[i].crc_ok) {
      out[i].version = get_le32 (slot + SB_VERSION);
      out[i].flags = get_le32 (slot + SB_FLAGS);
      out[i].generation = get_le64 (slot + SB_GENERATION);
    }
    out[i].valid = jsb_decode (slot, &dec);
    if (out[i].valid == 0 && dec.generation % 2 != (uint64_t) i)
      out[i].valid = -EINVAL;
  }
  return 0;
}

static uint32_t
new_salt (uint32_t old)
{
  uint32_t v;

  do {
    if (getrandom (&v, sizeof v, 0) != sizeof v) {
      struct timespec ts;

      clock_gettime (CLOCK_MONOTONIC, &ts);
      v = (uint32_t) ts.tv_nsec ^ (uint32_t) ts.tv_sec ^ (old << 7);
    }
    v |= 1;
  } while (v == old);
  return v;
}

int
jsb_restart_log (const struct jdev *dev, struct jsb *sb, uint64_t next_seq,
                 uint64_t next_epoch)
{
  struct jsb old = *sb;
  int r;

  sb->salt = new_salt (old.salt);
  sb->flags &= ~(JSB_F_BYPASS | JSB_F_SPLIT);
  sb->prev_salt = 0;
  sb->salt_lsn = 0;
  sb->tail_lsn = 0;
  sb->tail_seq = next_seq;
  sb->tail_epoch = next_epoch;
  r = jsb_write (dev, sb);
  if (r < 0) {
    *sb = old;
    return r;
  }
  return dev->ops->sync (dev->opaque);
}

int
jsb_continue_log (const struct jdev *dev, struct jsb *sb, uint64_t end_lsn)
{
  struct jsb old = *sb;
  int r;

  assert (!(sb->flags & JSB_F_SPLIT) && end_lsn >= sb->tail_lsn);
  sb->salt = new_salt (old.salt);
  if (end_lsn > sb->tail_lsn) {
    sb->flags |= JSB_F_SPLIT;
    sb->prev_salt = old.salt;
    sb->salt_lsn = end_lsn;
  }
  r = jsb_write (dev, sb);
  if (r < 0) {
    *sb = old;
    return r;
  }
  return dev->ops->sync (dev->opaque);
}

void
jsb_split_settle (struct jsb *sb)
{
  if ((sb->flags & JSB_F_SPLIT) && sb->tail_lsn >= sb->salt_lsn) {
    sb->flags &= ~JSB_F_SPLIT;
    sb->prev_salt = 0;
    sb->salt_lsn = 0;
  }
}

/* One record onto the image of SIZE bytes (the range is inside it,
 * rounded up to a sector: jnl_replay checked).
 */
int
jrec_apply (const struct jreplay_ops *ops, void *opaque, const struct jrec *r,
            const void *payload, uint64_t size)
{
  uint64_t off = r->offset, count = r->count;

  if (off >= size)
    return 0;
  count = MIN (count, size - off);
  switch (r->type) {
  case JREC_DATA: return ops->pwrite (opaque, payload, (uint32_t) count, off);
  case JREC_ZERO: {
    static const char zeroes[256 * 1024];
    int e = 0;

    while (count > 0 && e == 0) {
      uint32_t n = (uint32_t) MIN (count, (uint64_t) 1 << 30);

      if (ops->zero)
        e = ops->zero (opaque, n, off);
      if (!ops->zero || e == -ENOTSUP || e == -EOPNOTSUPP) {
        n = (uint32_t) MIN (count, (uint64_t) sizeof zeroes);
        e = ops->pwrite (opaque, zeroes, n, off);
      }
      off += n;
      count -= n;
    }
    return e;
  }
  case JREC_TRIM:
    /* Advisory: only an I/O error counts. */
    while (count > 0 && ops->trim) {
      uint32_t n = (uint32_t) MIN (count, (uint64_t) 1 << 30);

      if (ops->trim (opaque, n, off) == -EIO)
        return -EIO;
      off += n;
      count -= n;
    }
    return 0;
  case JREC_BYPASS: return 0; /* the data is on the image already */
  default: return -EIO;
  }
}

int
jnl_replay (const struct jdev *dev, const struct jsb *sb,
            const struct jreplay_ops *ops, void *opaque, struct jreplay *out)
{
  struct jscan s;
  struct jrec rec;
  uint64_t epoch = sb->tail_epoch;
  bool any = false;
  int r;

  *out = (struct jreplay){ 0 };
  jscan_init (&s, dev, sb);
  s.ahead = true;
  while ((r = jscan_next (&s, &rec)) == 1) {
    uint64_t size, end;

    out->rec = rec;
    r = ops->size (opaque, &size);
    if (r < 0)
      break;
    out->image_size = size;
    end = ROUND_UP (size, (uint64_t) sb->sector_size);
    if (rec.type != JREC_BYPASS && /* writes nothing */
        (rec.offset > end || rec.count > end - rec.offset)) {
      out->past_end = true;
      r = -EINVAL;
      break;
    }
    if (any && rec.epoch != epoch) {
      out->flushes++;
      r = ops->flush (opaque);
      if (r < 0)
        break;
    }
    epoch = rec.epoch;
    any = true;
    r = jrec_apply (ops, opaque, &rec, s.buf, size);
    if (r < 0)
      break;
    if (ops->progress)
      ops->progress (opaque, &s);
  }
  if (r == 0 && any) {
    out->flushes++;
    r = ops->flush (opaque);
  }
  jscan_free (&s);
  out->scan = s;
  return r;
}

int
jdev_file_open_ro (const char *path, struct jdev *dev)
{
  uint64_t devsize;
  bool reg;
  int fd, err;

  fd = open (path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return -errno;
  err = jfile_size (fd, &devsize, &reg);
  if (err == 0)
    err = jfile_dev (fd, devsize, dev);
  if (err < 0)
    close (fd);
  return err;
}
