/* subpage-journal: the offline tool for a subpage journal (journal=PATH;
 * docs/subpage-journal.pod is its manual, docs/journal.md the format).
 *
 *   check JOURNAL     the superblock and a summary of the log
 *   dump JOURNAL      one line per record, then the summary
 *   drain JOURNAL --file=IMG | --uri=URI [--force]
 *                     replays the log onto the image, as the plugin does
 *                     at start-up (jnl_replay in cache/jformat.c: the
 *                     same order and flush points), then starts a new
 *                     log (jsb_restart_log), so the plugin does not
 *                     replay it again
 *
 * check and dump open the journal read-only and change nothing.  Exit
 * status: 0 done, 1 failed (a message on stderr says why), 2 usage.
 */
#define _GNU_SOURCE /* strerrordesc_np (errstr.h), getopt_long */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <linux/falloc.h>
#include <linux/fs.h> /* BLKGETSIZE64 */

#include <libnbd.h>

#include "errstr.h"
#include "jformat.h"
#include "util.h"

#define PROG "subpage-journal"

#ifndef SUBPAGE_VERSION
#define SUBPAGE_VERSION "unknown"
#endif

enum { EXIT_OK = 0, EXIT_FAIL = 1, EXIT_USAGE = 2 };

static void __attribute__ ((format (printf, 1, 2))) fail (const char *fmt, ...)
{
  va_list ap;

  fprintf (stderr, PROG ": ");
  va_start (ap, fmt);
  vfprintf (stderr, fmt, ap);
  va_end (ap);
  fputc ('\n', stderr);
}

static void
usage (FILE *f)
{
  fprintf (f,
           "usage: " PROG " check JOURNAL\n"
           "       " PROG " dump JOURNAL\n"
           "       " PROG " drain JOURNAL --file=IMAGE | --uri=URI [--force]\n"
           "       " PROG " --help | --version\n"
           "See " PROG "(1).\n");
}

static uint64_t
now_ms (void)
{
  struct timespec ts;

  clock_gettime (CLOCK_MONOTONIC, &ts);
  return (uint64_t) ts.tv_sec * 1000 + (uint64_t) ts.tv_nsec / 1000000;
}

static const char *
rec_type_name (uint16_t t)
{
  switch (t) {
  case JREC_DATA: return "DATA";
  case JREC_ZERO: return "ZERO";
  case JREC_TRIM: return "TRIM";
  case JREC_WRAP: return "WRAP";
  case JREC_BYPASS: return "BYPASS";
  default: return "?";
  }
}

/* ---- the superblock ---- */

static void
describe_slot (const struct jsb_slot *s, char *buf, size_t len)
{
  if (!s->magic)
    snprintf (buf, len, "no superblock (no magic)");
  else if (!s->crc_ok)
    snprintf (buf, len, "corrupt (wrong checksum)");
  else if (s->valid == -EPROTONOSUPPORT && s->version > JNL_VERSION)
    snprintf (buf, len,
              "generation %" PRIu64 ", format version %" PRIu32
              " (newer than %d)",
              s->generation, s->version, JNL_VERSION);
  else if (s->valid == -EPROTONOSUPPORT)
    snprintf (buf, len, "generation %" PRIu64 ", unknown flags 0x%" PRIx32,
              s->generation, s->flags);
  else if (s->valid < 0)
    snprintf (buf, len,
              "generation %" PRIu64 ", invalid (its fields do not "
              "hold: geometry, ident or slot parity)",
              s->generation);
  else
    snprintf (buf, len, "generation %" PRIu64 ", valid", s->generation);
}

/* Reads the superblock of the journal on DEV (named PATH in messages)
 * into *SB; on failure says why and returns -1.
 */
static int
read_sb (const char *path, const struct jdev *dev, struct jsb *sb,
         struct jsb_slot slots[2])
{
  char d0[128], d1[128];
  int r;

  r = jsb_slots (dev, slots);
  if (r == 0)
    r = jsb_read (dev, sb);
  if (r == 0) {
    if (sb->journal_size > dev->size) {
      fail ("%s: the file has %" PRIu64 " bytes, but the journal on it was "
            "made with %" PRIu64 " (truncated?)",
            path, dev->size, sb->journal_size);
      return -1;
    }
    return 0;
  }
  switch (r) {
  case -ENOENT:
    fail ("%s: not a subpage journal (neither superblock slot has the "
          "magic)",
          path);
    break;
  case -EINVAL:
    describe_slot (&slots[0], d0, sizeof d0);
    describe_slot (&slots[1], d1, sizeof d1);
    fail ("%s: the superblock is corrupt: no valid copy (slot 0: %s; "
          "slot 1: %s)",
          path, d0, d1);
    break;
  case -EPROTONOSUPPORT: {
    /* The newest intact slot is the one refused. */
    int i = 0;

    if (slots[1].crc_ok &&
        (!slots[0].crc_ok || slots[1].generation > slots[0].generation))
      i = 1;
    if (slots[i].version > JNL_VERSION)
      fail ("%s: written by a newer subpage: format version %" PRIu32
            " (this tool knows version %d and older)",
            path, slots[i].version, JNL_VERSION);
    else
      fail ("%s: written by a newer subpage: flags 0x%" PRIx32
            " that format version %d does not define",
            path, slots[i].flags, JNL_VERSION);
    break;
  }
  default: fail ("%s: reading the superblock: %s", path, errstr (-r)); break;
  }
  return -1;
}

static void
print_sb (const char *path, const struct jdev *dev, const struct jsb *sb,
          const struct jsb_slot slots[2])
{
  unsigned slot = (unsigned) (sb->generation % 2);
  char other[128];

  describe_slot (&slots[1 - slot], other, sizeof other);
  printf ("journal:      %s (%" PRIu64 " bytes)\n", path, dev->size);
  printf ("superblock:   slot %u, generation %" PRIu64
          ", format version %" PRIu32 " (other slot: %s)\n",
          slot, sb->generation, sb->version, other);
  printf ("id:           ");
  for (size_t i = 0; i < sizeof sb->id; i++)
    printf ("%02x", sb->id[i]);
  printf ("\n");
  printf ("ident:        %s\n", sb->ident);
  printf ("sector size:  %" PRIu32 "\n", sb->sector_size);
  printf ("journal size: %" PRIu64 "\n", sb->journal_size);
  printf ("ring:         %" PRIu64 " bytes at offset %u\n", sb->data_size,
          JNL_DATA_OFFSET);
  printf ("image size:   %" PRIu64 " (when the superblock was written)\n",
          sb->image_size);
  printf ("salt:         0x%08" PRIx32 "\n", sb->salt);
  if (sb->flags & JSB_F_SPLIT)
    printf ("split:        records before lsn %" PRIu64
            " carry salt 0x%08" PRIx32 " (a log recovered and continued)\n",
            sb->salt_lsn, sb->prev_salt);
  printf ("tail:         lsn %" PRIu64 ", seq %" PRIu64 ", epoch %" PRIu64 "\n",
          sb->tail_lsn, sb->tail_seq, sb->tail_epoch);
}

/* ---- the log ---- */

struct summary {
  uint64_t n[6];           /* records by type */
  uint64_t data_bytes;     /* DATA payload */
  uint64_t range_bytes[6]; /* image bytes by type */
  uint64_t first_epoch, last_epoch, epochs;
  uint64_t max_end; /* the highest image byte touched, + 1 */
};

static void
summary_add (struct summary *sum, const struct jrec *r)
{
  uint64_t total = 0;

  for (int i = 0; i < 6; i++)
    total += sum->n[i];
  if (total == 0) {
    sum->first_epoch = r->epoch;
    sum->epochs = 1;
  }
  else if (r->epoch != sum->last_epoch)
    sum->epochs++;
  sum->last_epoch = r->epoch;
  if (r->type < 6)
    sum->n[r->type]++;
  sum->range_bytes[r->type < 6 ? r->type : 0] += r->count;
  if (r->type == JREC_DATA)
    sum->data_bytes += r->count;
  if (r->offset + r->count > sum->max_end)
    sum->max_end = r->offset + r->count;
}

static void
print_summary (const struct jsb *sb, const struct jscan *s,
               const struct summary *sum)
{
  printf ("records:      %" PRIu64 " (DATA %" PRIu64 ", ZERO %" PRIu64
          ", TRIM %" PRIu64 ", BYPASS %" PRIu64 ")\n",
          s->nrecords, sum->n[JREC_DATA], sum->n[JREC_ZERO], sum->n[JREC_TRIM],
          sum->n[JREC_BYPASS]);
  printf ("bytes:        %" PRIu64 " of ring (of %" PRIu64 "); %" PRIu64
          " of data, %" PRIu64 " zeroed, %" PRIu64 " trimmed, %" PRIu64
          " written around the journal\n",
          s->nbytes, sb->data_size, sum->data_bytes,
          sum->range_bytes[JREC_ZERO], sum->range_bytes[JREC_TRIM],
          sum->range_bytes[JREC_BYPASS]);
  if (s->nrecords > 0) {
    printf ("epochs:       %" PRIu64 " (%" PRIu64 " to %" PRIu64 ")\n",
            sum->epochs, sum->first_epoch, sum->last_epoch);
    printf ("image range:  up to byte %" PRIu64 "\n", sum->max_end);
  }
  else
    printf ("epochs:       0 (the log is empty: nothing to replay)\n");
  printf ("log end:      lsn %" PRIu64 " (next record: seq %" PRIu64
          ", epoch >= %" PRIu64 ")\n",
          s->lsn, s->seq, s->epoch);
}

/* Scans the log of SB; prints each record when DUMP.  0, or -1 on an
 * I/O error (said).
 */
static int
scan_log (const char *path, const struct jdev *dev, const struct jsb *sb,
          bool dump)
{
  struct summary sum = { 0 };
  struct jscan s;
  struct jrec r;
  int rc;

  jscan_init (&s, dev, sb);
  s.ahead = true;
  while ((rc = jscan_next (&s, &r)) == 1) {
    summary_add (&sum, &r);
    if (dump)
      printf ("seq %" PRIu64 " epoch %" PRIu64 " %s offset %" PRIu64
              " count %" PRIu64 " lsn %" PRIu64 "\n",
              r.seq, r.epoch, rec_type_name (r.type), r.offset, r.count, r.lsn);
  }
  jscan_free (&s);
  if (rc < 0) {
    fail ("%s: reading the log at lsn %" PRIu64 ": %s", path, s.lsn,
          errstr (-rc));
    return -1;
  }
  print_summary (sb, &s, &sum);
  return 0;
}

static int
cmd_check (const char *path, bool dump)
{
  struct jdev dev;
  struct jsb sb;
  struct jsb_slot slots[2];
  int r, status = EXIT_OK;

  r = jdev_file_open_ro (path, &dev);
  if (r < 0) {
    fail ("%s: %s", path,
          r == -EINVAL ? "not a file or block device" : errstr (-r));
    return EXIT_FAIL;
  }
  if (dev.size < 2 * JNL_SB_SIZE) {
    fail ("%s: %" PRIu64 " bytes: too small for a journal", path, dev.size);
    status = EXIT_FAIL;
  }
  else if (read_sb (path, &dev, &sb, slots) < 0)
    status = EXIT_FAIL;
  else {
    print_sb (path, &dev, &sb, slots);
    if (scan_log (path, &dev, &sb, dump) < 0)
      status = EXIT_FAIL;
  }
  jdev_file_close (&dev);
  return status;
}

/* ---- drain: the image ---- */

struct image {
  const char *name; /* for messages: "file=..." or "uri=..." */
  uint64_t size;
  /* file= */
  int fd;
  bool is_block;
  /* uri= */
  struct nbd_handle *nbd;
  bool can_zero, can_trim, can_flush;
  /* progress */
  uint64_t total_records, last_report_ms;
};

static int
img_size (void *opaque, uint64_t *size)
{
  struct image *im = opaque;

  *size = im->size;
  return 0;
}

static int
nbd_err (struct image *im, const char *what)
{
  int e = nbd_get_errno ();

  fail ("%s: %s: %s", im->name, what, nbd_get_error ());
  return e > 0 ? -e : -EIO;
}

static int
file_pwrite (void *opaque, const void *buf, uint32_t count, uint64_t off)
{
  struct image *im = opaque;
  const char *p = buf;

  while (count > 0) {
    ssize_t n = pwrite (im->fd, p, count, (off_t) off);

    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0) {
      int e = n < 0 ? errno : EIO;

      fail ("%s: writing %" PRIu32 " bytes at %" PRIu64 ": %s", im->name, count,
            off, errstr (e));
      return -e;
    }
    p += n;
    count -= (uint32_t) n;
    off += (uint64_t) n;
  }
  return 0;
}

/* Zeroes with fallocate; -ENOTSUP (zeroes are then written) when the
 * file system or device cannot, or not for this range.
 */
static int
file_zero (void *opaque, uint32_t count, uint64_t off)
{
  struct image *im = opaque;
  const int modes[2] = {
    FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE,
    FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
  };

  for (int i = 0; i < 2; i++) {
    if (fallocate (im->fd, modes[i], (off_t) off, (off_t) count) == 0)
      return 0;
    if (errno == EIO) {
      fail ("%s: zeroing %" PRIu32 " bytes at %" PRIu64 ": %s", im->name, count,
            off, errstr (errno));
      return -EIO;
    }
  }
  return -ENOTSUP;
}

static int
file_trim (void *opaque, uint32_t count, uint64_t off)
{
  struct image *im = opaque;

  if (im->is_block) /* discarding a block device is not worth the risk */
    return 1;
  if (fallocate (im->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                 (off_t) off, (off_t) count) == 0)
    return 0;
  return -errno;
}

static int
file_flush (void *opaque)
{
  struct image *im = opaque;

  if (fsync (im->fd) < 0) {
    int e = errno;

    fail ("%s: fsync: %s", im->name, errstr (e));
    return -e;
  }
  return 0;
}

static int
uri_pwrite (void *opaque, const void *buf, uint32_t count, uint64_t off)
{
  struct image *im = opaque;

  if (nbd_pwrite (im->nbd, buf, count, off, 0) == -1)
    return nbd_err (im, "pwrite");
  return 0;
}

static int
uri_zero (void *opaque, uint32_t count, uint64_t off)
{
  struct image *im = opaque;

  if (!im->can_zero)
    return -ENOTSUP;
  if (nbd_zero (im->nbd, count, off, 0) == -1)
    return nbd_err (im, "zero");
  return 0;
}

static int
uri_trim (void *opaque, uint32_t count, uint64_t off)
{
  struct image *im = opaque;

  if (nbd_trim (im->nbd, count, off, 0) == -1) {
    int e = nbd_get_errno ();

    return e > 0 ? -e : -EIO;
  }
  return 0;
}

static int
uri_flush (void *opaque)
{
  struct image *im = opaque;

  if (!im->can_flush)
    return 0; /* the server has no flush: its writes are durable */
  if (nbd_flush (im->nbd, 0) == -1)
    return nbd_err (im, "flush");
  return 0;
}

static void
progress (void *opaque, const struct jscan *s)
{
  struct image *im = opaque;
  uint64_t now = now_ms ();

  if (now - im->last_report_ms < 1000 && s->nrecords < im->total_records)
    return;
  im->last_report_ms = now;
  fprintf (stderr,
           PROG ": drain: %" PRIu64 " of %" PRIu64 " records, %" PRIu64
                " bytes of journal\n",
           s->nrecords, im->total_records, s->nbytes);
}

static int
open_file_image (struct image *im, const char *path)
{
  struct stat st;

  im->fd = open (path, O_RDWR | O_CLOEXEC);
  if (im->fd < 0 || fstat (im->fd, &st) < 0) {
    fail ("%s: %s", im->name, errstr (errno));
    return -1;
  }
  if (S_ISBLK (st.st_mode)) {
    im->is_block = true;
    if (ioctl (im->fd, BLKGETSIZE64, &im->size) < 0) {
      fail ("%s: BLKGETSIZE64: %s", im->name, errstr (errno));
      return -1;
    }
  }
  else if (S_ISREG (st.st_mode))
    im->size = (uint64_t) st.st_size;
  else {
    fail ("%s: not a regular file or a block device", im->name);
    return -1;
  }
  return 0;
}

static int
open_uri_image (struct image *im, const char *uri)
{
  int64_t size;

  im->nbd = nbd_create ();
  if (!im->nbd) {
    fail ("nbd_create: %s", nbd_get_error ());
    return -1;
  }
  if (nbd_connect_uri (im->nbd, uri) == -1) {
    nbd_err (im, "connecting");
    return -1;
  }
  if (nbd_is_read_only (im->nbd) == 1) {
    fail ("%s: the server serves it read-only", im->name);
    return -1;
  }
  size = nbd_get_size (im->nbd);
  if (size < 0) {
    nbd_err (im, "size");
    return -1;
  }
  im->size = (uint64_t) size;
  im->can_zero = nbd_can_zero (im->nbd) == 1;
  im->can_trim = nbd_can_trim (im->nbd) == 1;
  im->can_flush = nbd_can_flush (im->nbd) == 1;
  return 0;
}

/* Does the journal's IDENT name the image file PATH?  As the plugin
 * spells it (file= made absolute, not resolved: nbdkit_absolute_path),
 * or the same file by its real path.
 */
static bool
ident_is_file (const char *ident, const char *path, char *want, size_t len)
{
  char *real = realpath (path, NULL), *theirs = NULL;
  char *cwd = NULL;
  bool same = false;

  snprintf (want, len, "file:%s", real ? real : path);
  if (strncmp (ident, "file:", 5) != 0) {
    free (real);
    return false;
  }
  if (path[0] == '/')
    same = strcmp (ident + 5, path) == 0;
  else if ((cwd = getcwd (NULL, 0)) != NULL) {
    size_t n = strlen (cwd);

    same = strncmp (ident + 5, cwd, n) == 0 && ident[5 + n] == '/' &&
           strcmp (ident + 5 + n + 1, path) == 0;
  }
  if (!same && real && (theirs = realpath (ident + 5, NULL)) != NULL)
    same = strcmp (theirs, real) == 0;
  free (theirs);
  free (cwd);
  free (real);
  return same;
}

static int
cmd_drain (const char *path, const char *file, const char *uri, bool force)
{
  struct image im = { .fd = -1 };
  struct jdev dev = { 0 };
  struct jsb sb;
  struct jsb_slot slots[2];
  struct jreplay out;
  struct jreplay_ops ops = { .size = img_size, .progress = progress };
  char name[PATH_MAX + 16], want[PATH_MAX + 16];
  bool created, ours;
  int r, status = EXIT_FAIL;

  snprintf (name, sizeof name, "%s=%s", file ? "file" : "uri",
            file ? file : uri);
  im.name = name;

  /* jdev_file_open locks the journal (flock): a running plugin, or a
   * second drain, holds it.
   */
  r = jdev_file_open (path, 0, &dev, &created);
  if (r < 0) {
    fail ("%s: %s", path,
          r == -EINVAL  ? "not a file or block device"
          : r == -EBUSY ? "in use (a running nbdkit subpage or another "
                          "drain holds it)"
                        : errstr (-r));
    return EXIT_FAIL;
  }
  if (dev.size < 2 * JNL_SB_SIZE) {
    fail ("%s: %" PRIu64 " bytes: too small for a journal", path, dev.size);
    goto out;
  }
  if (read_sb (path, &dev, &sb, slots) < 0)
    goto out;

  if (file)
    ours = ident_is_file (sb.ident, file, want, sizeof want);
  else {
    snprintf (want, sizeof want, "uri:%s", uri);
    ours = strcmp (sb.ident, want) == 0;
  }
  if (!ours && !force) {
    fail ("%s: the journal belongs to %s, not to %s: refusing to replay it "
          "(nothing was written; --force replays it anyway)",
          path, sb.ident, want);
    goto out;
  }
  if (!ours)
    fprintf (stderr,
             PROG ": warning: the journal belongs to %s, not to %s: "
                  "replaying it anyway (--force)\n",
             sb.ident, want);

  if (file ? open_file_image (&im, file) < 0 : open_uri_image (&im, uri) < 0)
    goto out;
  if (file) {
    ops.pwrite = file_pwrite;
    ops.zero = file_zero;
    ops.trim = file_trim;
    ops.flush = file_flush;
  }
  else {
    ops.pwrite = uri_pwrite;
    ops.zero = uri_zero;
    ops.trim = im.can_trim ? uri_trim : NULL;
    ops.flush = uri_flush;
  }

  /* First a scan that writes nothing: every record must fit the image
   * before any is replayed.
   */
  {
    struct jscan s;
    struct jrec rec;
    uint64_t end = ROUND_UP (im.size, (uint64_t) sb.sector_size);

    jscan_init (&s, &dev, &sb);
    s.ahead = true;
    while ((r = jscan_next (&s, &rec)) == 1)
      if (rec.type != JREC_BYPASS && /* writes nothing */
          (rec.offset > end || rec.count > end - rec.offset))
        break;
    jscan_free (&s);
    if (r < 0) {
      fail ("%s: reading the log at lsn %" PRIu64 ": %s", path, s.lsn,
            errstr (-r));
      goto out;
    }
    if (r == 1) {
      fail ("%s: record %" PRIu64 " (%s at %" PRIu64 "+%" PRIu64
            ") is past the end of %s (%" PRIu64
            " bytes): was the image shrunk? refusing to replay (nothing "
            "was written)",
            path, rec.seq, rec_type_name (rec.type), rec.offset, rec.count,
            name, im.size);
      goto out;
    }
    im.total_records = s.nrecords;
    if (s.nrecords == 0) {
      fprintf (stderr,
               PROG ": %s: the log is empty: nothing to replay; the "
                    "journal is unchanged\n",
               path);
      status = EXIT_OK;
      goto out;
    }
    fprintf (stderr,
             PROG ": %s: replaying %" PRIu64 " records (%" PRIu64
                  " bytes of journal, seq %" PRIu64 " to %" PRIu64
                  ") onto %s\n",
             path, s.nrecords, s.nbytes, sb.tail_seq, s.seq - 1, name);
  }

  im.last_report_ms = now_ms ();
  r = jnl_replay (&dev, &sb, &ops, &im, &out);
  if (r < 0) {
    if (out.past_end)
      fail ("%s: record %" PRIu64 " (%s at %" PRIu64 "+%" PRIu64
            ") is past the end of %s (%" PRIu64
            " bytes): the replay stopped there; the journal is unchanged",
            path, out.rec.seq, rec_type_name (out.rec.type), out.rec.offset,
            out.rec.count, name, out.image_size);
    else
      fail ("%s: the replay failed after %" PRIu64 " records: %s; the "
            "journal is unchanged (run the drain again)",
            path, out.scan.nrecords, errstr (-r));
    goto out;
  }
  sb.image_size = im.size;
  r = jsb_restart_log (&dev, &sb, out.scan.seq, out.scan.epoch + 1);
  if (r < 0) {
    fail ("%s: the records are on the image, but writing the superblock "
          "failed: %s; the plugin would replay them again",
          path, errstr (-r));
    goto out;
  }
  fprintf (stderr,
           PROG ": %s: replayed %" PRIu64 " records (%" PRIu64
                " bytes of journal) with %" PRIu64
                " flushes; new log at seq %" PRIu64 ", epoch %" PRIu64 "\n",
           path, out.scan.nrecords, out.scan.nbytes, out.flushes, sb.tail_seq,
           sb.tail_epoch);
  status = EXIT_OK;

out:
  if (im.nbd) {
    if (status == EXIT_OK)
      nbd_shutdown (im.nbd, 0);
    nbd_close (im.nbd);
  }
  if (im.fd >= 0 && close (im.fd) < 0 && status == EXIT_OK) {
    fail ("%s: close: %s", name, errstr (errno));
    status = EXIT_FAIL;
  }
  if (dev.ops)
    jdev_file_close (&dev);
  return status;
}

/* ---- main ---- */

int
main (int argc, char *argv[])
{
  static const struct option long_opts[] = {
    { "file", required_argument, NULL, 'f' },
    { "uri", required_argument, NULL, 'u' },
    { "force", no_argument, NULL, 'F' },
    { "help", no_argument, NULL, 'h' },
    { "version", no_argument, NULL, 'V' },
    { NULL, 0, NULL, 0 },
  };
  const char *file = NULL, *uri = NULL, *cmd, *journal;
  bool force = false;
  int c;

  while ((c = getopt_long (argc, argv, "+h", long_opts, NULL)) != -1) {
    switch (c) {
    case 'h': usage (stdout); return EXIT_OK;
    case 'V': printf (PROG " (subpage) %s\n", SUBPAGE_VERSION); return EXIT_OK;
    case 'f':
    case 'u':
    case 'F':
      fail ("%s must follow the command (drain)", argv[optind - 1]);
      return EXIT_USAGE;
    default: usage (stderr); return EXIT_USAGE;
    }
  }
  if (optind >= argc) {
    usage (stderr);
    return EXIT_USAGE;
  }
  cmd = argv[optind];
  /* The command's own arguments: options anywhere after it. */
  argc -= optind;
  argv += optind;
  optind = 0; /* glibc: start again from argv[1], state reset */
  while ((c = getopt_long (argc, argv, "h", long_opts, NULL)) != -1) {
    switch (c) {
    case 'f': file = optarg; break;
    case 'u': uri = optarg; break;
    case 'F': force = true; break;
    case 'h': usage (stdout); return EXIT_OK;
    case 'V': printf (PROG " (subpage) %s\n", SUBPAGE_VERSION); return EXIT_OK;
    default: usage (stderr); return EXIT_USAGE;
    }
  }
  if (optind != argc - 1) {
    fail (optind >= argc ? "%s: which journal?" : "%s: one journal only", cmd);
    usage (stderr);
    return EXIT_USAGE;
  }
  journal = argv[optind];

  if (strcmp (cmd, "check") == 0 || strcmp (cmd, "dump") == 0) {
    if (file || uri || force) {
      fail ("%s takes no --file, --uri or --force", cmd);
      return EXIT_USAGE;
    }
    return cmd_check (journal, strcmp (cmd, "dump") == 0);
  }
  if (strcmp (cmd, "drain") == 0) {
    if (!file == !uri) {
      fail ("drain needs the image: --file=IMAGE or --uri=URI (one)");
      return EXIT_USAGE;
    }
    if ((file && !*file) || (uri && !*uri)) {
      fail ("drain: the image's name is empty");
      return EXIT_USAGE;
    }
    return cmd_drain (journal, file, uri, force);
  }
  fail ("unknown command '%s'", cmd);
  usage (stderr);
  return EXIT_USAGE;
}
