/* subpage: the journal's on-disk format (docs/journal.md specifies it;
 * this header and jformat.c are its one implementation).
 *
 * A journal is a regular file or a block device:
 *
 *   [0, 4096)          superblock slot 0
 *   [4096, 8192)       superblock slot 1
 *   [8192, 8192 + data_size)   the record area, a ring
 *
 * Superblock.  Written to slot (generation % 2), so a torn write of one
 * slot leaves the other; the valid slot (magic, CRC32C) with the higher
 * generation is the superblock.  It names the journal (a random id), the
 * image it belongs to (ident, sector size), the ring's geometry, the
 * salt every record of this generation of the log carries, and the
 * tail: the first record not yet on the backend and flushed there.
 *
 * Records.  Positions in the ring are log sequence numbers (LSN): a byte
 * count that only grows; the byte of LSN l lives at data_offset +
 * (l % data_size).  A record never straddles the end of the ring: a
 * writer that would cross it first writes a WRAP record (if at least a
 * header fits before the end), and the next record starts at the next
 * multiple of data_size.  Each record is a 64-byte header and, for DATA
 * records, `count' bytes of payload, padded to a multiple of 8 bytes.
 *
 * All integers are little-endian.  Every function returns 0 or -errno.
 */
#ifndef SUBPAGE_JFORMAT_H
#define SUBPAGE_JFORMAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define JNL_VERSION 1
#define JNL_SB_SIZE 4096u
#define JNL_DATA_OFFSET 8192u
#define JNL_HDR_SIZE 64u
#define JNL_IDENT_MAX 256u /* bytes of ident, NUL included */
/* A journal smaller than this is refused (journal-size=). */
#define JNL_MIN_SIZE (JNL_DATA_OFFSET + 1024u * 1024u)

/* How the journal reaches its device: a file or block device
 * (jdev_file_open), or a fake in the unit tests.  Thread-safe; pread and
 * pwrite transfer everything or fail.
 */
struct jdev_ops {
  int (*pread) (void *opaque, void *buf, size_t count, uint64_t off);
  int (*pwrite) (void *opaque, const void *buf, size_t count, uint64_t off);
  int (*sync) (void *opaque); /* fdatasync */
  /* NULL, or a hint that [off, off + count) will be read soon (it may
   * start reading it in the background).
   */
  void (*willneed) (void *opaque, uint64_t off, uint64_t count);
};

struct jdev {
  const struct jdev_ops *ops;
  void *opaque;
  uint64_t size; /* bytes */
};

enum jrec_type {
  JREC_DATA = 1, /* payload: the sectors [offset, offset+count) */
  JREC_ZERO = 2, /* [offset, offset+count) reads as zeroes */
  JREC_TRIM = 3, /* [offset, offset+count) discarded (reads unspecified) */
  JREC_WRAP = 4, /* the rest of this lap is padding */
  /* [offset, offset+count) was written around the journal, straight to
   * the image (sequential-cutoff=); no payload.  Replay and the drainer
   * do nothing for it: the data is on the image, and no older record of
   * the range follows the tail when it is placed (journal.c).
   */
  JREC_BYPASS = 5,
};

/* Superblock flags.  A reader refuses a journal with a flag it does not
 * know: JSB_F_BYPASS is set while the log may hold JREC_BYPASS records,
 * which an older reader would take for the end of the log.
 */
#define JSB_F_BYPASS 0x1u
/* JSB_F_SPLIT: the log changed salts at salt_lsn (a log recovered and
 * continued, jsb_continue_log): its records at LSNs below salt_lsn
 * carry prev_salt, the rest salt.  An older reader would take the
 * first record of the new salt for the end of the log.
 */
#define JSB_F_SPLIT 0x2u
#define JSB_F_KNOWN (JSB_F_BYPASS | JSB_F_SPLIT)

struct jsb {
  uint32_t version;
  uint32_t sector_size;
  uint8_t id[16];            /* random, set at creation, never changed */
  uint64_t generation;       /* +1 at each write; slot = generation % 2 */
  uint64_t journal_size;     /* bytes of the device used */
  uint64_t data_size;        /* bytes of the ring: a multiple of 4096 */
  uint32_t salt;             /* records of this log carry it */
  uint32_t flags;            /* JSB_F_* */
  uint64_t tail_lsn;         /* first record not on the backend and flushed */
  uint64_t tail_seq;         /* its sequence number */
  uint64_t tail_epoch;       /* the epoch of the record before it */
  uint64_t image_size;       /* the image's size when this was written */
  char ident[JNL_IDENT_MAX]; /* "file:/abs/path", "uri:URI", "rbd:pool/img" */
  /* With JSB_F_SPLIT (else 0): records at LSNs below salt_lsn carry
   * prev_salt instead of salt.
   */
  uint32_t prev_salt;
  uint64_t salt_lsn;
};

/* The salt a record at LSN must carry. */
static inline uint32_t
jsb_salt_at (const struct jsb *sb, uint64_t lsn)
{
  return (sb->flags & JSB_F_SPLIT) && lsn < sb->salt_lsn ? sb->prev_salt
                                                         : sb->salt;
}

struct jrec {
  uint16_t type; /* enum jrec_type */
  uint32_t salt;
  uint64_t seq;           /* +1 per record, WRAP included */
  uint64_t epoch;         /* client flushes before this record */
  uint64_t offset, count; /* the image range, sector-aligned */
  uint64_t lsn;           /* where this record starts */
};

/* CRC32C (Castagnoli), as used by ext4, btrfs and iSCSI: crc32c (0,
 * "123456789", 9) == 0xE3069283.
 */
uint32_t crc32c (uint32_t crc, const void *buf, size_t len);
/* The same by tables only: crc32c uses the CPU's instruction where it
 * has one (x86-64 with SSE 4.2); the tests check both.
 */
uint32_t crc32c_tables (uint32_t crc, const void *buf, size_t len);

/* The superblock <-> its 4096-byte slot image (CRC in the last 4 bytes).
 * jsb_decode: -EINVAL if the magic or CRC is wrong, -EPROTONOSUPPORT if
 * the version is newer than JNL_VERSION.
 */
void jsb_encode (const struct jsb *sb, uint8_t out[JNL_SB_SIZE]);
int jsb_decode (const uint8_t in[JNL_SB_SIZE], struct jsb *sb);
/* Reads both slots and returns the newest valid one (a slot holds
 * only generations of its own parity).  -ENOENT if
 * neither slot holds a superblock magic (a new or foreign file),
 * -EINVAL if one does but none is valid, -EPROTONOSUPPORT if the newest
 * slot with a valid CRC has a newer version, or an I/O error.
 */
int jsb_read (const struct jdev *dev, struct jsb *sb);
/* Increments sb->generation and writes slot (generation % 2).  Does not
 * sync.  On failure sb->generation is as before, so the next write goes
 * to the same (maybe torn) slot, not over the last good one.  The
 * caller syncs each write before the next one: two unsynced writes
 * cover both slots, and a crash could tear both.
 */
int jsb_write (const struct jdev *dev, struct jsb *sb);

/* Bytes a record with PAYLOAD bytes of payload takes in the ring. */
static inline uint64_t
jrec_size (uint64_t payload)
{
  return JNL_HDR_SIZE + ((payload + 7) & ~(uint64_t) 7);
}

/* The device offset of LSN. */
static inline uint64_t
jnl_phys (const struct jsb *sb, uint64_t lsn)
{
  return JNL_DATA_OFFSET + lsn % sb->data_size;
}

/* Where a record of SIZE bytes that would start at LSN starts: LSN, or
 * the next lap's start if it would cross the ring's end.  *WRAP is set
 * when a WRAP record must be written at LSN first (at least a header
 * fits before the end).
 */
uint64_t jnl_place (const struct jsb *sb, uint64_t lsn, uint64_t size,
                    bool *wrap);

/* Fills HDR (JNL_HDR_SIZE bytes) for R, with the CRC32C of the header
 * and PAYLOAD (r->count bytes for JREC_DATA, else none).
 */
void jrec_encode (const struct jrec *r, const void *payload,
                  uint8_t hdr[JNL_HDR_SIZE]);
/* Decodes a header: -EINVAL if the magic is wrong or the fields are
 * impossible (unknown type, a DATA count of 0 or over 32 MiB).  The
 * CRC is checked by jrec_check once the payload is read.
 */
int jrec_decode (const uint8_t hdr[JNL_HDR_SIZE], struct jrec *r);
bool jrec_check (const uint8_t hdr[JNL_HDR_SIZE], const void *payload,
                 uint64_t count);

/* Scanning the log from the superblock's tail: each call returns the
 * next record that follows (magic, salt (jsb_salt_at), lsn, seq ==
 * previous + 1,
 * epoch >= previous, CRC), 1 with *r and its payload in s->buf (valid
 * until the next call), 0 at the first record that does not follow (the
 * end of the log), or -errno on an I/O error.  WRAP records are
 * followed, not returned.  After 0, s->lsn, s->seq and s->epoch are
 * where the next record would go.
 */
struct jscan {
  const struct jdev *dev;
  const struct jsb *sb;
  uint64_t lsn, seq, epoch;  /* the next record expected */
  uint64_t nrecords, nbytes; /* records and ring bytes returned so far */
  const uint8_t *buf;        /* the last record's payload (in win) */
  /* Read-ahead: ring bytes [wlsn, wlsn + wlen) are in win (one pread of
   * up to JSCAN_WINDOW, never across the ring's end).
   */
  uint8_t *win;
  size_t wincap;
  uint64_t wlsn, wlen, wnext;
  /* Set by a caller that scans the whole log (recovery, the tool): a
   * thread asks the device (willneed) for the ring up to JSCAN_AHEAD
   * past the window, so that it reads while the scan checks.
   */
  bool ahead;
  struct jscan_ahead *pf;
};
#define JSCAN_WINDOW (1024u * 1024u)
#define JSCAN_AHEAD (16u * 1024u * 1024u)
void jscan_init (struct jscan *s, const struct jdev *dev, const struct jsb *sb);
int jscan_next (struct jscan *s, struct jrec *r);
void jscan_free (struct jscan *s);

/* A journal on a file or block device: opens PATH (creating a file of
 * SIZE bytes if it does not exist and SIZE > 0; a block device's size
 * is its own).  *CREATED says whether it was created.  Errors name
 * nothing: the caller logs them with the path.
 */
int jdev_file_open (const char *path, uint64_t size, struct jdev *dev,
                    bool *created);
void jdev_file_close (struct jdev *dev);

/* ---------------------------------------------------------------- */
/* For recovery and the offline tool (tools/subpage-journal.c) */

/* What each superblock slot holds, for a diagnosis (jsb_read gives the
 * verdict).  MAGIC: the slot starts with the superblock magic; CRC_OK:
 * and its CRC is right (then VERSION, FLAGS and GENERATION are what it
 * says, else 0); VALID: jsb_decode's result with jsb_read's parity
 * check (0, -EINVAL or -EPROTONOSUPPORT).  -errno on an I/O error.
 */
struct jsb_slot {
  bool magic, crc_ok;
  int valid;
  uint32_t version, flags;
  uint64_t generation;
};
int jsb_slots (const struct jdev *dev, struct jsb_slot out[2]);

/* Starts a new log after everything up to the end of the old one is on
 * the backend and flushed (recovery, the offline drain): a new random
 * salt (odd, and not the old one), so that no record of the old log
 * follows the new tail; the tail at LSN 0 with NEXT_SEQ and NEXT_EPOCH;
 * JSB_F_BYPASS cleared (the new log holds no record);
 * the superblock written (jsb_write) and synced.  The other fields,
 * image_size included, are written as SB has them.  If the write fails,
 * *SB is as before; if only the sync fails, *SB is the new superblock
 * (it may be on the device).
 */
int jsb_restart_log (const struct jdev *dev, struct jsb *sb, uint64_t next_seq,
                     uint64_t next_epoch);
/* Continues the log after recovery without writing it back first (the
 * plugin's recovery, which serves the old records from the journal and
 * drains them in the background): the records from the tail up to
 * END_LSN (where the scan stopped) keep their salt, later ones carry a
 * new one (JSB_F_SPLIT, prev_salt, salt_lsn = END_LSN), so that no
 * record of the old log past END_LSN, written but never synced, follows
 * a new record; the tail does not move.  With no record between the
 * tail and END_LSN, only the salt changes.  SB must not be split
 * already (one split at a time: a log that is still split when it is
 * recovered again is written back first).  The superblock is written
 * and synced; on failure as jsb_restart_log.
 */
int jsb_continue_log (const struct jdev *dev, struct jsb *sb, uint64_t end_lsn);
/* Ends SB's split (in memory) once its tail has reached salt_lsn: no
 * record of the old salt follows the tail any more.
 */
void jsb_split_settle (struct jsb *sb);

/* Replaying the log onto the image: what recovery does at start-up, and
 * what `subpage-journal drain' does offline.  The image, through OPS:
 *   size    its size in bytes now (asked before each record);
 *   pwrite  writes COUNT bytes (never more than a DATA record's 32 MiB);
 *   zero    makes [off, off+count) read as zeroes (holes allowed); NULL,
 *           or -ENOTSUP / -EOPNOTSUPP, and the range is written with
 *           pwrite of zeroes instead;
 *   trim    advisory: NULL when the image has none; only -EIO counts,
 *           any other result (an error, or 1: not done) is ignored;
 *   flush   makes what was written durable;
 *   progress  NULL, or called after each record applied.
 * Zero and trim get at most 1 GiB per call; pwrite and zero ranges are
 * clipped to the image's size (the last sector may be partial).
 *
 * The records are applied in log order from SB's tail; the image is
 * flushed before each record whose epoch differs from the previous
 * record's, and after the last one (not at all if there is none).  A
 * record that reaches past the image's size (rounded up to the sector
 * size) stops the replay before it is applied: -EINVAL, with
 * OUT->past_end set and OUT->rec the record.  Else 0, or the first
 * -errno of a device read or of OPS (-ENOMEM).
 *
 * OUT, in every case: OUT->scan is where the scan stopped (nrecords and
 * nbytes the records read; after 0, lsn, seq and epoch are where the
 * next record would go: jsb_restart_log (dev, sb, out->scan.seq,
 * out->scan.epoch + 1) starts the next log), with no buffer.
 */
struct jreplay_ops {
  int (*size) (void *opaque, uint64_t *size);
  int (*pwrite) (void *opaque, const void *buf, uint32_t count, uint64_t off);
  int (*zero) (void *opaque, uint32_t count, uint64_t off);
  int (*trim) (void *opaque, uint32_t count, uint64_t off);
  int (*flush) (void *opaque);
  void (*progress) (void *opaque, const struct jscan *s);
};

struct jreplay {
  struct jscan scan;   /* where the scan stopped; buf is NULL */
  struct jrec rec;     /* the last record read */
  uint64_t image_size; /* ops->size's last answer */
  uint64_t flushes;    /* ops->flush calls */
  bool past_end;       /* rec reaches past the image's end */
};

int jnl_replay (const struct jdev *dev, const struct jsb *sb,
                const struct jreplay_ops *ops, void *opaque,
                struct jreplay *out);

/* Applies one record R (PAYLOAD: its data for JREC_DATA) to an image of
 * SIZE bytes through OPS, as jnl_replay does (and the drainer, record
 * by record): the part past SIZE is not written; a ZERO falls back to
 * writing zeroes; a TRIM is advisory (only -EIO counts).  OPS->size
 * and OPS->flush are not used.
 */
int jrec_apply (const struct jreplay_ops *ops, void *opaque,
                const struct jrec *r, const void *payload, uint64_t size);

/* Opens PATH read-only (a regular file or a block device), for reading
 * a journal without changing it: the jdev's pwrite fails (-EBADF).
 * Closed with jdev_file_close.
 */
int jdev_file_open_ro (const char *path, struct jdev *dev);

#endif /* SUBPAGE_JFORMAT_H */
