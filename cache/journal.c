/* subpage: the journal's runtime (journal.h has the model, jformat.h
 * the format, docs/journal.md the rules and what each crash recovers
 * to).
 *
 * Space.  The ring holds the records between the durable tail (the
 * superblock's tail_lsn, dtail) and the head.  A writer first takes a
 * credit for its record (jnl_credit, waiting with no lock held while
 * the ring is full), then places the record under its page lock
 * (jnl_reserve).  A credit is granted only while
 *     (head - dtail) + credited + size + slack <= data_size,
 * slack being the largest record: the padding a wrap wastes is at most
 * that, and only one wrap can happen before the tail moves, so placed
 * records never overrun the durable tail (rule 14).
 *
 * Durability.  Records are written in any order by their writers; the
 * pending list holds the ones placed and not yet written, in sequence
 * order, so its head bounds the prefix of the log that is written.  A
 * sync waits until that prefix reaches its target, syncs the device
 * once for every waiter whose target it covers (group commit), and
 * moves synced_seq.  A write that failed stays on the list (the
 * journal owns its buffer) and the next sync writes it again first:
 * the log never has a hole below synced_seq.  A failed device sync is
 * sticky (after a failed fdatasync the kernel may have dropped the
 * pages it could not write; nothing written before it can be trusted
 * as durable): every later sync, and so every flush, fails with it.
 *
 * Epochs.  A client flush closes the current epoch (records placed
 * after it carry the next); records carry their epoch, and the drainer
 * never puts records of two epochs in one batch, flushing the backend
 * after each batch (rule 13).
 *
 * Tail writes.  After a batch the drainer writes the new tail into the
 * superblock but does not sync it: the next sync of the device, whoever
 * makes it (a client flush's group commit, usually), covers it, and
 * dev_sync then moves dtail, which frees the space.  A writer waiting
 * for space syncs a written tail itself.  Two rules keep this safe:
 *  - batch m's writes start only once the tail written after batch m-2
 *    is durable (drain_locked syncs when no one else has), so a crash
 *    re-drains at most the epochs of batches m-1 and m; writing m-1's
 *    records again over a partly written epoch m leaves every epoch up
 *    to m-1 whole plus a subset of m, a state rule 13 allows;
 *  - what needs the tail on the device (a barrier before a write around
 *    the journal, the set bypass flag, the final drain) syncs it.
 */
#define _GNU_SOURCE /* strerrordesc_np, see errstr.h */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "errstr.h"
#include "internal.h"
#include "journal.h"
#include "util.h"

/* Ring bytes written back per drain step, at most (one record may pass
 * it).
 */
#define DRAIN_BATCH (8u * 1024 * 1024)
/* Backend writes of one batch in flight at once, and the largest write
 * that contiguous DATA records of a batch are merged into.
 */
#define DRAIN_INFLIGHT 64
#define DRAIN_MERGE (4u * 1024 * 1024)

/* One backend operation of a drain batch: one record, or contiguous
 * DATA records merged.  Writes of a batch run in parallel (the jio
 * hook's threads) except where they overlap: one that overlaps a write
 * in flight waits for it, so a sector's records still land in log
 * order.
 */
struct cache_jio {
  struct cache *c;
  uint16_t type; /* enum jrec_type */
  uint64_t off, count;
  uint8_t *buf; /* DATA: count bytes */
  size_t cap;
};

struct journal {
  struct jdev dev;
  char *path;

  struct lock lock;
  pthread_cond_t cv; /* records written, syncs done, space freed */
  uint64_t head_lsn, next_seq, epoch;
  uint64_t credited;
  unsigned space_waiters; /* writers waiting in jnl_credit */
  uint64_t slack;
  uint64_t dtail_lsn; /* the superblock's tail: space */
  /* The tail in the superblock last written to the device (durable
   * once dtail_lsn has reached it), and how many superblock writes
   * were done (sbw_gen) and covered by a completed sync (sbs_gen): at
   * most one is not (the other slot must hold a durable copy).  See
   * "Tail writes".
   */
  uint64_t sbw_lsn, sbw_gen, sbs_gen;
  /* The sequence numbers of those tails: every record below dtail_seq
   * is behind the durable tail (a recovery never applies it again).
   */
  uint64_t sbw_seq, dtail_seq;
  bool tail_failed;  /* the last superblock write or its sync failed */
  bool tail_syncing; /* a writer waiting for space syncs the tail */
  struct jbuf *pend_head, *pend_tail;
  uint64_t synced_seq; /* records <= this are durable */
  bool syncing;
  int sync_err;                  /* sticky */
  uint64_t mtail_lsn, mtail_seq; /* drained and flushed, not yet in sb */
  uint64_t mtail_prev_lsn;       /* mtail before the last batch */
  /* The last batch wrote some byte twice: writing it again over the
   * next batch would put back a value its epoch overwrote, so the next
   * batch waits for the last one's tail to be durable ("Tail writes").
   */
  bool last_overlap;
  uint64_t mtail_epoch;
  bool drain_failing;
  int drain_err;
  bool order_any; /* journal-order=any: batches may span epochs */
  /* Writes around the journal (sequential-cutoff=, jnl_hold): the last
   * record of the epochs a flush closed, the newest TRIM record, the
   * ranges held (j->lock; nholds read without it as a hint), the
   * cutoff, bypassed writes done and those a backend flush covered,
   * and whether the superblock on the device has JSB_F_BYPASS.
   */
  uint64_t closed_seq, trim_seq;
  uint64_t data_seq; /* the newest record placed that is not a marker */
  /* A write around the journal found its barrier too dear
   * (jnl_barrier_cheap): a drain step is due until mtail_seq is past
   * this, or only markers are left (which jnl_drain leaves for later).
   */
  uint64_t bypass_want;
  /* The newest record of a page that left RAM (jnl_page_evict): its
   * jseq is gone, and its drained records may not be behind the
   * durable tail yet (jnl_evicted_seq, the barrier's NEED).
   */
  atomic_uint_fast64_t evicted_seq;
  struct jhold *holds;
  atomic_uint nholds;
  uint64_t cutoff;
  atomic_uint_fast64_t bypass_done, bypass_flushed;
  atomic_bool bypass_flag;
  /* Growths of an image whose end cut a sector (jnl_note_growth):
   * records placed before SEQ hold that sector with the zeroes a fill
   * put past OLD, not what the growth brought there, so the drainer
   * writes them only up to OLD.  Dropped once drained past.
   */
#define JNL_CUTS 8
  struct {
    uint64_t seq, old;
  } cuts[JNL_CUTS];
  unsigned ncuts;
  uint64_t replay_log_ms; /* recovery: when progress was last logged */
  /* The log recovery read into the index, [rec_from, rec_end) (rec_end
   * 0: none, or written back), while the drainer writes it back: when
   * that began and when its progress was last logged (drain_lock).
   */
  uint64_t rec_from, rec_end, rec_t0, rec_logged;

  /* When records were placed, sampled at most every AGE_STEP_MS, for
   * the age of the oldest record not written back: (seq, ms) pairs in
   * order, those below the drained tail dropped; when full, every other
   * one is dropped (coarser, still covering the whole log).
   */
#define AGE_SAMPLES 512
#define AGE_STEP_MS 10
  struct {
    uint64_t seq, ms;
  } age[AGE_SAMPLES];
  unsigned nage;

  /* The writes of the batch being drained (io_lock, a leaf). */
  struct lock io_lock;
  pthread_cond_t io_cv;
  struct cache_jio *inflight[DRAIN_INFLIGHT];
  unsigned ninflight;
  int io_err;

  /* Drainer (drain_lock). */
  struct lock drain_lock;
  struct jsb sb; /* as last written */
  struct jrange {
    uint64_t off, count;
  } * ranges;
  size_t nranges, ranges_cap;
  struct jrange *bat; /* every write of the batch, TRIMs too */
  size_t nbat, bat_cap;

  /* Copies of mtail_lsn and synced_seq for readers without j->lock. */
  atomic_uint_fast64_t drained_lsn, synced_atomic;

  /* The index of nodes that left RAM (journal.h; idx_lock, a leaf). */
  struct lock idx_lock;
  struct jnode **idx_buckets;
  uint64_t idx_mask;
  struct jnode *idx_head, *idx_tail;
  atomic_uint_fast64_t idx_nodes;
  atomic_uint_fast64_t node_bytes; /* every node, in RAM or indexed */
  uint64_t node_max;               /* dirty pages leave RAM only below */
  atomic_bool indexed;             /* a node was ever indexed */
};

static uint32_t
random_u32 (void)
{
  uint32_t v = 0;

  if (getrandom (&v, sizeof v, 0) != sizeof v)
    v = (uint32_t) report_now_ns ();
  return v;
}

/* Syncs the journal device.  Every failure is sticky (see above): the
 * kernel reports a write-back error of the file once, so a later sync
 * of the same file may succeed although pages were lost.
 */
static int
dev_sync (struct cache *c, struct journal *j)
{
  uint64_t gen, lsn, seq;
  int r;

  /* A superblock write done before the sync starts is covered by it. */
  lock_take (&j->lock);
  gen = j->sbw_gen;
  lsn = j->sbw_lsn;
  seq = j->sbw_seq;
  lock_drop (&j->lock);
  r = j->dev.ops->sync (j->dev.opaque);
  atomic_fetch_add (&c->ctr.journal_syncs, 1);
  lock_take (&j->lock);
  if (r < 0) {
    if (!j->sync_err)
      j->sync_err = r;
    pthread_cond_broadcast (&j->cv);
  }
  else if (gen > j->sbs_gen) {
    j->sbs_gen = gen;
    if (seq > j->dtail_seq)
      j->dtail_seq = seq;
    if (lsn > j->dtail_lsn) {
      j->dtail_lsn = lsn; /* space */
      pthread_cond_broadcast (&j->cv);
    }
  }
  lock_drop (&j->lock);
  return r;
}

static int write_tail (struct cache *c, struct journal *j, bool sync);

/* Drainer (drain_lock held): the drained tail (mtail) written to the
 * superblock and synced, unless it is.
 */
static int
tail_sync_locked (struct cache *c, struct journal *j)
{
  bool written, synced;

  lock_take (&j->lock);
  written = j->sbw_lsn == j->mtail_lsn && !j->tail_failed;
  synced = j->dtail_lsn == j->sbw_lsn;
  lock_drop (&j->lock);
  if (!written)
    return write_tail (c, j, true);
  return synced ? 0 : dev_sync (c, j);
}

static int
tail_sync (struct cache *c, struct journal *j)
{
  int r;

  lock_take (&j->drain_lock);
  r = tail_sync_locked (c, j);
  lock_drop (&j->drain_lock);
  return r;
}

/* ---- opening ---- */

static bool
all_zero (const uint8_t *b, size_t n)
{
  for (size_t i = 0; i < n; i++)
    if (b[i])
      return false;
  return true;
}

static int
format (struct cache *c, struct journal *j, const char *ident)
{
  struct jsb *sb = &j->sb;
  int r = 0;

  memset (sb, 0, sizeof *sb);
  sb->version = JNL_VERSION;
  sb->sector_size = c->cfg.sector_size;
  if (getrandom (sb->id, sizeof sb->id, 0) != sizeof sb->id)
    return -EIO;
  sb->journal_size = j->dev.size;
  sb->data_size = ROUND_DOWN (j->dev.size - JNL_DATA_OFFSET, (uint64_t) 4096);
  sb->salt = random_u32 () | 1;
  sb->tail_lsn = 0;
  sb->tail_seq = 1;
  sb->tail_epoch = 0;
  sb->image_size = size_now (c);
  snprintf (sb->ident, sizeof sb->ident, "%s", ident);
  /* Both slots, each synced before the next is written (jformat.h): a
   * torn write then leaves the other one.
   */
  for (int k = 0; k < 2 && r == 0; k++) {
    r = jsb_write (&j->dev, sb);
    if (r == 0)
      r = dev_sync (c, j);
  }
  return r;
}

int
jnl_open (struct cache *c, const struct jdev *dev, const char *ident,
          bool created)
{
  struct journal *j;
  int r;

  if (c->cfg.mode != CACHE_MODE_WRITEBACK) {
    report_logf (c, CACHE_LOG_ERROR, "journal: needs mode=writeback");
    return -EINVAL;
  }
  if (dev->size < JNL_MIN_SIZE) {
    report_logf (c, CACHE_LOG_ERROR,
                 "journal: %" PRIu64 " bytes is too small (at least %u)",
                 dev->size, JNL_MIN_SIZE);
    return -EINVAL;
  }
  j = calloc (1, sizeof *j);
  if (!j)
    return -ENOMEM;
  j->dev = *dev;
  lock_init (&j->lock);
  lock_init (&j->drain_lock);
  lock_init (&j->io_lock);
  pthread_cond_init (&j->io_cv, NULL);
  pthread_cond_init (&j->cv, NULL);

  j->slack = jrec_size (c->cfg.page_size);
  r = jsb_read (dev, &j->sb);
  if (r == -ENOENT && ROUND_DOWN (dev->size - JNL_DATA_OFFSET,
                                  (uint64_t) 4096) < 4 * j->slack) {
    report_logf (c, CACHE_LOG_ERROR,
                 "journal: %" PRIu64 " bytes are too few for page-size=%" PRIu32
                 " (at least %" PRIu64 "): give a larger journal-size= or a "
                 "smaller page-size=",
                 dev->size, c->cfg.page_size, JNL_DATA_OFFSET + 4 * j->slack);
    r = -EINVAL;
  }
  else if (r == -ENOENT) {
    uint8_t *head = malloc (JNL_DATA_OFFSET);

    if (!head)
      r = -ENOMEM;
    else if ((r = dev->ops->pread (dev->opaque, head, JNL_DATA_OFFSET, 0)) ==
             0) {
      if (created || all_zero (head, JNL_DATA_OFFSET))
        r = format (c, j, ident);
      else {
        report_logf (c, CACHE_LOG_ERROR,
                     "journal: the device holds no subpage journal and is "
                     "not empty: refusing to overwrite it (give a new file, "
                     "or zero its first 8 KiB)");
        r = -EINVAL;
      }
    }
    free (head);
    if (r == 0)
      report_logf (c, CACHE_LOG_INFO,
                   "journal: new journal of %" PRIu64 " bytes for %s",
                   dev->size, ident);
  }
  else if (r == -EINVAL)
    report_logf (c, CACHE_LOG_ERROR,
                 "journal: the superblock is corrupt (both copies fail "
                 "their checksum): refusing to use it");
  else if (r == -EPROTONOSUPPORT)
    report_logf (c, CACHE_LOG_ERROR,
                 "journal: written by a newer subpage (format version "
                 "newer than %d): refusing to use it",
                 JNL_VERSION);
  else if (r == 0) {
    if (j->sb.sector_size != c->cfg.sector_size ||
        strcmp (j->sb.ident, ident) != 0) {
      report_logf (c, CACHE_LOG_ERROR,
                   "journal: it belongs to %s with sector-size=%" PRIu32
                   ", not to %s with sector-size=%" PRIu32 ": refusing to "
                   "use it",
                   j->sb.ident, j->sb.sector_size, ident, c->cfg.sector_size);
      r = -EINVAL;
    }
    else if (j->sb.journal_size > dev->size) {
      report_logf (c, CACHE_LOG_ERROR,
                   "journal: the device has %" PRIu64 " bytes, but the "
                   "journal on it was made with %" PRIu64
                   " (truncated?): refusing to use it",
                   dev->size, j->sb.journal_size);
      r = -EINVAL;
    }
  }
  else
    report_logf (c, CACHE_LOG_ERROR, "journal: reading the superblock: %s",
                 errstr (-r));
  if (r < 0) {
    pthread_cond_destroy (&j->cv);
    pthread_cond_destroy (&j->io_cv);
    lock_destroy (&j->lock);
    lock_destroy (&j->drain_lock);
    lock_destroy (&j->io_lock);
    free (j);
    return r;
  }

  if (j->sb.data_size < 4 * j->slack) {
    report_logf (c, CACHE_LOG_ERROR,
                 "journal: its %" PRIu64 " bytes of records are too few for "
                 "page-size=%" PRIu32 " (at least %" PRIu64 "): give a larger "
                 "journal-size= or a smaller page-size=",
                 j->sb.data_size, c->cfg.page_size, 4 * j->slack);
    pthread_cond_destroy (&j->cv);
    pthread_cond_destroy (&j->io_cv);
    lock_destroy (&j->lock);
    lock_destroy (&j->drain_lock);
    lock_destroy (&j->io_lock);
    free (j);
    return -EINVAL;
  }
  j->head_lsn = j->dtail_lsn = j->mtail_lsn = j->sb.tail_lsn;
  j->sbw_lsn = j->mtail_prev_lsn = j->sb.tail_lsn;
  j->sbw_seq = j->dtail_seq = j->sb.tail_seq;
  j->last_overlap = false;
  j->next_seq = j->mtail_seq = j->sb.tail_seq;
  j->synced_seq = j->next_seq - 1;
  j->epoch = j->mtail_epoch = j->sb.tail_epoch;
  atomic_store (&j->drained_lsn, j->mtail_lsn);
  atomic_store (&j->synced_atomic, j->synced_seq);
  /* The index: dirty pages leave RAM while every node together takes
   * at most a quarter of cache-size (docs/journal.md).
   */
  j->node_max = c->cfg.cache_size / 4;
  {
    uint64_t nb = 1024;

    while (nb < j->node_max / 256)
      nb <<= 1;
    j->idx_buckets = calloc (nb, sizeof *j->idx_buckets);
    if (!j->idx_buckets) {
      pthread_cond_destroy (&j->cv);
      pthread_cond_destroy (&j->io_cv);
      lock_destroy (&j->lock);
      lock_destroy (&j->drain_lock);
      lock_destroy (&j->io_lock);
      free (j);
      return -ENOMEM;
    }
    j->idx_mask = nb - 1;
  }
  lock_init (&j->idx_lock);
  c->jnl = j;
  return 0;
}

void
jnl_free (struct cache *c)
{
  struct journal *j = c->jnl;

  if (!j)
    return;
  while (j->pend_head) {
    struct jbuf *b = j->pend_head;
    j->pend_head = b->next;
    free (b);
  }
  while (j->idx_head) {
    struct jnode *n = j->idx_head;
    j->idx_head = n->lnext;
    free (n);
  }
  free (j->idx_buckets);
  lock_destroy (&j->idx_lock);
  pthread_cond_destroy (&j->cv);
  pthread_cond_destroy (&j->io_cv);
  lock_destroy (&j->lock);
  lock_destroy (&j->drain_lock);
  lock_destroy (&j->io_lock);
  free (j->ranges);
  free (j->bat);
  free (j);
  c->jnl = NULL;
}

/* ---- applying records to the backend (recovery and drain) ---- */

/* Can a record of [off, off+count) be written now?  Only up to where
 * write-back stops (wb_end: the size rounded up to a sector, or, after
 * a shrink that cut a sector holding data written before it, the size
 * rounded down): the rest is kept (rule 14), neither written, which
 * would extend the image again, nor dropped.  Read in run_fits' order
 * (writeback.c): the size first, then wb_end.
 */
static bool
fits_now (struct cache *c, uint64_t off, uint64_t count, uint64_t *size)
{
  uint64_t wbe;

  *size = size_now (c);
  wbe = size_wb_end (c);
  return off <= wbe && count <= wbe - off;
}

static int
backend_flush (struct cache *c)
{
  int r = c->ops->flush (c->bopaque);

  atomic_fetch_add (&c->ctr.backend_flushes, 1);
  return r;
}

/* ---- recovery ---- */

/* The image, for jnl_replay: the backend, counted. */
static int
rp_size (void *opaque, uint64_t *size)
{
  *size = size_now (opaque);
  return 0;
}

static int
rp_pwrite (void *opaque, const void *buf, uint32_t count, uint64_t off)
{
  struct cache *c = opaque;

  atomic_fetch_add (&c->ctr.backend_writes, 1);
  atomic_fetch_add (&c->ctr.backend_write_bytes, count);
  return c->ops->pwrite (c->bopaque, buf, count, off, 0);
}

static int
rp_zero (void *opaque, uint32_t count, uint64_t off)
{
  struct cache *c = opaque;

  if (!c->ops->zero)
    return -ENOTSUP;
  return c->ops->zero (c->bopaque, count, off, 0); /* allocated */
}

static int
rp_trim (void *opaque, uint32_t count, uint64_t off)
{
  struct cache *c = opaque;

  return c->ops->trim ? c->ops->trim (c->bopaque, count, off, 0) : 1;
}

static int
rp_flush (void *opaque)
{
  return backend_flush (opaque);
}

static void
rp_progress (void *opaque, const struct jscan *s)
{
  struct cache *c = opaque;
  struct journal *j = c->jnl;

  if (report_now_ms () - j->replay_log_ms >= 2000) {
    j->replay_log_ms = report_now_ms ();
    report_logf (c, CACHE_LOG_INFO,
                 "journal: replay: %" PRIu64 " records, %" PRIu64
                 " bytes of journal so far",
                 s->nrecords, s->nbytes);
  }
}

/* The backend as recovery (jnl_replay) and the drainer (apply) write
 * records to it.
 */
static const struct jreplay_ops image_ops = {
  .size = rp_size,
  .pwrite = rp_pwrite,
  .zero = rp_zero,
  .trim = rp_trim,
  .flush = rp_flush,
  .progress = rp_progress,
};

/* The drainer's write of record R (PAYLOAD for DATA): -EIO, writing
 * nothing, if the image now ends before it (it shrank since the step
 * looked); the part of a last sector past the size is not written.
 */
static int
apply (struct cache *c, const struct jrec *r, const void *payload)
{
  uint64_t size;

  if (!fits_now (c, r->offset, r->count, &size))
    return -EIO;
  return jrec_apply (&image_ops, c, r, payload, size);
}

static int recover_indexed (struct cache *c, struct journal *j);

/* Recovery: the log is read into the index and continued
 * (recover_indexed); when it cannot be, it is written back onto the
 * backend (jnl_replay) and a new log started before serving.
 */
int
jnl_recover (struct cache *c)
{
  struct journal *j = c->jnl;
  struct jreplay out;
  uint64_t t0 = report_now_ms ();
  int r;

  j->replay_log_ms = t0;
  jsb_split_settle (&j->sb); /* every old-salt record drained */
  if (!(j->sb.flags & JSB_F_SPLIT)) {
    r = recover_indexed (c, j);
    if (r <= 0)
      return r;
  }
  else
    report_logf (c, CACHE_LOG_INFO,
                 "journal: the records of the last recovery are not all "
                 "written back yet: writing the log back before serving");
  r = jnl_replay (&j->dev, &j->sb, &image_ops, c, &out);
  if (r < 0) {
    if (out.past_end)
      report_logf (c, CACHE_LOG_ERROR,
                   "journal: holds data at %" PRIu64 "+%" PRIu64
                   ", past the end of the image (%" PRIu64
                   " bytes): was it shrunk? refusing to replay the rest",
                   out.rec.offset, out.rec.count, out.image_size);
    else
      report_logf (c, CACHE_LOG_ERROR, "journal: replay failed: %s",
                   errstr (-r));
    return r;
  }
  atomic_fetch_add (&c->ctr.journal_replayed_records, out.scan.nrecords);
  atomic_fetch_add (&c->ctr.journal_replayed_bytes, out.scan.nbytes);
  if (out.scan.nrecords > 0)
    report_logf (c, CACHE_LOG_INFO,
                 "journal: replayed %" PRIu64 " records (%" PRIu64
                 " bytes of journal) in %" PRIu64 " ms",
                 out.scan.nrecords, out.scan.nbytes, report_now_ms () - t0);

  /* A new log: records of the old one no longer follow (new salt). */
  j->sb.image_size = size_now (c);
  r = jsb_restart_log (&j->dev, &j->sb, out.scan.seq, out.scan.epoch + 1);
  if (r < 0) {
    lock_take (&j->lock);
    if (!j->sync_err)
      j->sync_err = r;
    lock_drop (&j->lock);
    report_logf (c, CACHE_LOG_ERROR, "journal: writing the superblock: %s",
                 errstr (-r));
    return r;
  }
  j->head_lsn = j->dtail_lsn = j->mtail_lsn = j->sb.tail_lsn;
  j->sbw_lsn = j->mtail_prev_lsn = j->sb.tail_lsn;
  j->sbw_seq = j->dtail_seq = j->sb.tail_seq;
  j->last_overlap = false;
  j->next_seq = j->mtail_seq = j->sb.tail_seq;
  j->synced_seq = j->next_seq - 1;
  j->epoch = j->mtail_epoch = j->sb.tail_epoch;
  atomic_store (&j->drained_lsn, j->mtail_lsn);
  atomic_store (&j->synced_atomic, j->synced_seq);
  return 0;
}

/* ---- the write path ---- */

struct jbuf *
jnl_buf_new (uint64_t payload)
{
  uint64_t size = jrec_size (payload);
  struct jbuf *b = malloc (sizeof *b + size);

  if (!b)
    return NULL;
  memset (b, 0, sizeof *b);
  b->size = size;
  b->payload = b->data + JNL_HDR_SIZE;
  return b;
}

/* j->lock held.  Ring bytes in use, placed records and padding. */
static uint64_t
used (struct journal *j)
{
  return j->head_lsn - j->dtail_lsn;
}

int
jnl_credit (struct cache *c, uint64_t size)
{
  struct journal *j = c->jnl;
  bool counted = false;
  int r = 0;

  lock_take (&j->lock);
  while (used (j) + j->credited + size + j->slack > j->sb.data_size) {
    struct timespec ts;

    if (j->drain_failing && j->drain_err) {
      /* Write-back cannot free space: like a throttled writer whose
       * write-back keeps failing (wb_throttle), fail rather than wait
       * for a backend that may not come back.
       */
      r = j->drain_err;
      break;
    }
    if (j->sync_err) {
      r = j->sync_err;
      break;
    }
    if (j->dtail_lsn < j->sbw_lsn && !j->tail_syncing) {
      /* The drainer freed space but left its sync to the next one. */
      j->tail_syncing = true;
      lock_drop (&j->lock);
      r = dev_sync (c, j);
      lock_take (&j->lock);
      j->tail_syncing = false;
      pthread_cond_broadcast (&j->cv);
      if (r < 0)
        break;
      continue;
    }
    if (!counted)
      j->space_waiters++; /* the drain is due (jnl_drain_due) */
    lock_drop (&j->lock);
    if (!counted)
      atomic_fetch_add (&c->ctr.throttled, 1);
    counted = true;
    wb_kick (c);
    lock_take (&j->lock);
    if (used (j) + j->credited + size + j->slack <= j->sb.data_size)
      break;
    clock_gettime (CLOCK_REALTIME, &ts);
    ts.tv_sec += 1;
    lock_timedwait (&j->lock, &j->cv, &ts);
  }
  if (counted)
    j->space_waiters--;
  if (r == 0)
    j->credited += size;
  lock_drop (&j->lock);
  return r;
}

struct jbuf *
jnl_buf_credited (struct cache *c, uint64_t payload, int *err)
{
  struct jbuf *b = jnl_buf_new (payload);

  if (!b) {
    *err = -ENOMEM;
    return NULL;
  }
  *err = jnl_credit (c, b->size);
  if (*err < 0) {
    free (b);
    return NULL;
  }
  return b;
}

void
jnl_uncredit (struct cache *c, uint64_t size)
{
  struct journal *j = c->jnl;

  lock_take (&j->lock);
  CACHE_ASSERT (j->credited >= size);
  j->credited -= size;
  pthread_cond_broadcast (&j->cv);
  lock_drop (&j->lock);
}

/* j->lock held.  Notes that record SEQ is placed now (see age[]). */
static void
age_sample (struct journal *j, uint64_t seq)
{
  uint64_t now;

  if (j->nage > 0 && j->age[j->nage - 1].seq >= j->mtail_seq) {
    now = report_now_ms ();
    if (now - j->age[j->nage - 1].ms < AGE_STEP_MS)
      return;
  }
  else
    now = report_now_ms ();
  if (j->nage == AGE_SAMPLES) {
    /* Every other one, but the first two stay: they date the oldest
     * record pending (drain_locked keeps one sample at or below the
     * tail, the next is past it).  Dropping them would make the oldest
     * record look younger at each halving, and under a steady stream of
     * writes never reach dirty-expire-ms (jnl_drain_due).
     */
    for (unsigned k = 2; k <= AGE_SAMPLES / 2; k++)
      j->age[k] = j->age[2 * k - 1];
    j->nage = AGE_SAMPLES / 2 + 1;
  }
  j->age[j->nage].seq = seq;
  j->age[j->nage].ms = now;
  j->nage++;
}

static uint64_t reserve_locked (struct journal *j, struct jbuf *b,
                                enum jrec_type t, uint64_t off, uint64_t count);

uint64_t
jnl_reserve (struct cache *c, struct jbuf *b, enum jrec_type t, uint64_t off,
             uint64_t count)
{
  struct journal *j = c->jnl;
  uint64_t seq;

  lock_take (&j->lock);
  seq = reserve_locked (j, b, t, off, count);
  lock_drop (&j->lock);
  return seq;
}

/* j->lock held.  jnl_reserve's work. */
static uint64_t
reserve_locked (struct journal *j, struct jbuf *b, enum jrec_type t,
                uint64_t off, uint64_t count)
{
  bool wrap;
  uint64_t lsn;

  LOCK_ASSERT_HELD (&j->lock);
  CACHE_ASSERT (j->credited >= b->size);
  j->credited -= b->size;
  lsn = jnl_place (&j->sb, j->head_lsn, b->size, &wrap);
  b->wrap = wrap;
  if (wrap) {
    b->wrap_lsn = j->head_lsn;
    b->wrap_seq = j->next_seq++;
  }
  b->rec.type = (uint16_t) t;
  b->rec.salt = j->sb.salt;
  b->rec.seq = j->next_seq++;
  b->rec.epoch = j->epoch;
  age_sample (j, b->rec.seq);
  b->rec.offset = off;
  b->rec.count = count;
  b->rec.lsn = lsn;
  j->head_lsn = lsn + b->size;
  CACHE_ASSERT (used (j) <= j->sb.data_size);
  b->next = NULL;
  b->prev = j->pend_tail;
  if (j->pend_tail)
    j->pend_tail->next = b;
  else
    j->pend_head = b;
  j->pend_tail = b;
  if (t == JREC_TRIM)
    j->trim_seq = b->rec.seq;
  if (t != JREC_BYPASS)
    j->data_seq = b->rec.seq;
  return b->rec.seq;
}

static uint64_t
first_seq (const struct jbuf *b)
{
  return b->wrap ? b->wrap_seq : b->rec.seq;
}

/* Writes B's records to the device; no lock held. */
static int
write_records (struct journal *j, struct jbuf *b)
{
  const uint8_t *payload = b->rec.type == JREC_DATA ? b->payload : NULL;
  int r = 0;

  if (b->wrap) {
    struct jrec w = {
      .type = JREC_WRAP,
      .salt = b->rec.salt,
      .seq = b->wrap_seq,
      .epoch = b->rec.epoch,
      .lsn = b->wrap_lsn,
    };
    uint8_t hdr[JNL_HDR_SIZE];

    jrec_encode (&w, NULL, hdr);
    r = j->dev.ops->pwrite (j->dev.opaque, hdr, JNL_HDR_SIZE,
                            jnl_phys (&j->sb, b->wrap_lsn));
  }
  if (r == 0) {
    jrec_encode (&b->rec, payload, b->data);
    r = j->dev.ops->pwrite (j->dev.opaque, b->data, b->size,
                            jnl_phys (&j->sb, b->rec.lsn));
  }
  return r;
}

/* j->lock held. */
static void
unlink_buf (struct journal *j, struct jbuf *b)
{
  if (b->prev)
    b->prev->next = b->next;
  else
    j->pend_head = b->next;
  if (b->next)
    b->next->prev = b->prev;
  else
    j->pend_tail = b->prev;
}

int
jnl_write (struct cache *c, struct jbuf *b)
{
  struct journal *j = c->jnl;
  int r = write_records (j, b);

  lock_take (&j->lock);
  if (r == 0) {
    unlink_buf (j, b);
    atomic_fetch_add (&c->ctr.journal_records, 1);
    atomic_fetch_add (&c->ctr.journal_bytes, b->size);
  }
  else
    b->failed = true; /* the next sync writes it again */
  pthread_cond_broadcast (&j->cv);
  lock_drop (&j->lock);
  if (r == 0)
    free (b);
  else
    report_logf (c, CACHE_LOG_ERROR, "journal: write failed: %s", errstr (-r));
  return r;
}

/* j->lock held.  The highest sequence number below which every record
 * is written.
 */
static uint64_t
written_seq (struct journal *j)
{
  return j->pend_head ? first_seq (j->pend_head) - 1 : j->next_seq - 1;
}

int
jnl_sync (struct cache *c, uint64_t upto)
{
  struct journal *j = c->jnl;
  int r = 0;

  lock_take (&j->lock);
  for (;;) {
    struct jbuf *b;
    uint64_t target;

    if (j->sync_err) {
      r = j->sync_err;
      break;
    }
    if (j->synced_seq >= upto)
      break;
    if (j->syncing) {
      lock_wait (&j->lock, &j->cv);
      continue;
    }
    /* Records that failed to write: write them again first, in order. */
    for (b = j->pend_head; b && !b->failed; b = b->next)
      ;
    if (b && first_seq (b) <= upto) {
      j->syncing = true;
      lock_drop (&j->lock);
      r = write_records (j, b);
      lock_take (&j->lock);
      j->syncing = false;
      pthread_cond_broadcast (&j->cv);
      if (r < 0)
        break;
      unlink_buf (j, b);
      atomic_fetch_add (&c->ctr.journal_records, 1);
      atomic_fetch_add (&c->ctr.journal_bytes, b->size);
      free (b);
      continue;
    }
    if (written_seq (j) < upto) {
      lock_wait (&j->lock, &j->cv); /* a writer is writing it */
      continue;
    }
    target = written_seq (j);
    j->syncing = true;
    lock_drop (&j->lock);
    r = dev_sync (c, j);
    lock_take (&j->lock);
    j->syncing = false;
    if (r == 0 && target > j->synced_seq) {
      j->synced_seq = target;
      atomic_store (&j->synced_atomic, target);
    }
    pthread_cond_broadcast (&j->cv);
    if (r < 0)
      break;
  }
  lock_drop (&j->lock);
  return r;
}

static int bypass_flush (struct cache *c, uint64_t done);

int
jnl_flush (struct cache *c)
{
  struct journal *j = c->jnl;
  uint64_t upto, done = atomic_load (&j->bypass_done);
  int r;

  lock_take (&j->lock);
  upto = j->next_seq - 1;
  j->epoch++;
  j->closed_seq = upto;
  lock_drop (&j->lock);
  r = jnl_sync (c, upto);
  if (r == 0)
    r = bypass_flush (c, done);
  return r;
}

/* ---- write-back from the journal ---- */

/* Appends [off, off+count) to the list *V of *N ranges (room for *CAP). */
static int
jrange_add (struct jrange **v, size_t *n, size_t *cap, uint64_t off,
            uint64_t count)
{
  if (*n == *cap) {
    size_t c = *cap ? 2 * *cap : 64;
    void *p = realloc (*v, c * sizeof **v);
    if (!p)
      return -ENOMEM;
    *v = p;
    *cap = c;
  }
  (*v)[*n].off = off;
  (*v)[*n].count = count;
  (*n)++;
  return 0;
}

static int
jrange_cmp (const void *a, const void *b)
{
  const struct jrange *x = a, *y = b;

  return x->off < y->off ? -1 : x->off > y->off;
}

/* Did two writes of the batch touch the same byte?  Empties the list. */
static bool
bat_overlaps (struct journal *j)
{
  uint64_t end = 0;
  bool o = false;

  qsort (j->bat, j->nbat, sizeof *j->bat, jrange_cmp);
  for (size_t k = 0; k < j->nbat && !o; k++) {
    o = k > 0 && j->bat[k].off < end;
    end = MAX (end, j->bat[k].off + j->bat[k].count);
  }
  j->nbat = 0;
  return o;
}

/* Every record up to LAST is on the backend and flushed: pages none of
 * whose records is newer lose their D bits.
 */
static void
clean_pages (struct cache *c, struct journal *j, uint64_t last)
{
  for (size_t k = 0; k < j->nranges; k++) {
    uint64_t a = j->ranges[k].off, e = a + j->ranges[k].count;

    for (uint64_t pi = a >> c->page_shift; pi <= (e - 1) >> c->page_shift;
         pi++) {
      struct page *p = page_find (c, pi);

      if (!p)
        continue;
      page_lock (p);
      if (p->jseq <= last && p->nd > 0) {
        struct sect_delta d = { 0 };

        for (uint32_t i = sect_find (&p->sb, SECT_BM_D, true, 0, c->nsect), e;
             i < c->nsect;
             i = sect_find (&p->sb, SECT_BM_D, true, e, c->nsect)) {
          e = sect_find (&p->sb, SECT_BM_D, false, i, c->nsect);
          sect_clean (&p->sb, i, e - i, &d);
        }
        report_account (c, p, &d);
        dirty_note_drop (c, p);
        CACHE_ASSERT (page_check (c, p));
      }
      page_unlock (p);
      page_unpin (c, p);
    }
  }
  j->nranges = 0;
}

static void
drain_failed (struct cache *c, struct journal *j, int r)
{
  lock_take (&j->lock);
  j->drain_failing = true;
  j->drain_err = r;
  pthread_cond_broadcast (&j->cv);
  lock_drop (&j->lock);
  lock_take (&c->wb_lock);
  if (!c->wb_failing || !atomic_load (&c->wb_fail_logged))
    report_logf (c, CACHE_LOG_ERROR, "journal: write-back failed: %s",
                 errstr (-r));
  atomic_store (&c->wb_fail_logged, true);
  c->wb_failing = true;
  c->wb_last_err = r;
  if (!c->wb_err)
    c->wb_err = r; /* what throttled writers return (wb_throttle) */
  c->wb_err_gen++;
  atomic_fetch_add (&c->ctr.wb_errors, 1);
  pthread_cond_broadcast (&c->wb_cv);
  lock_drop (&c->wb_lock);
}

static bool
io_overlaps (struct journal *j, const struct cache_jio *io)
{
  for (unsigned k = 0; k < j->ninflight; k++) {
    const struct cache_jio *o = j->inflight[k];
    if (o->off < io->off + io->count && io->off < o->off + o->count)
      return true;
  }
  return false;
}

/* IO is done with E (0 or -errno): it leaves the batch's writes in
 * flight, and is freed.  Any thread, no lock held.
 */
static void
jio_finish (struct cache_jio *io, int e)
{
  struct cache *c = io->c;
  struct journal *j = c->jnl;

  lock_take (&j->io_lock);
  for (unsigned k = 0; k < j->ninflight; k++)
    if (j->inflight[k] == io) {
      j->inflight[k] = j->inflight[--j->ninflight];
      break;
    }
  if (e < 0 && j->io_err == 0)
    j->io_err = e;
  pthread_cond_broadcast (&j->io_cv);
  lock_drop (&j->io_lock);
  free (io->buf);
  free (io);
}

void
cache_jio_run (struct cache_jio *io)
{
  struct jrec r = {
    .type = io->type,
    .offset = io->off,
    .count = io->count,
  };

  jio_finish (io, apply (io->c, &r, io->buf));
}

static void
jio_aio_done (void *arg, int err)
{
  jio_finish (arg, err < 0 ? err : 0);
}

/* IO, a DATA write, through the asynchronous hook: true if it took it
 * (or IO is done: the image ends before it), with apply's checks.
 * IO may be freed before this returns.
 */
static bool
io_aio (struct cache *c, struct cache_jio *io)
{
  cache_aio_pwrite_fn aio = atomic_load (&c->jio_aio);
  uint64_t size, count;

  if (!aio || io->type != JREC_DATA)
    return false;
  if (!fits_now (c, io->off, io->count, &size)) {
    jio_finish (io, -EIO); /* as apply */
    return true;
  }
  if (io->off >= size) {
    jio_finish (io, 0);
    return true;
  }
  count = MIN (io->count, size - io->off);
  if (aio (atomic_load (&c->jio_aio_opaque), io->buf, (uint32_t) count, io->off,
           0, jio_aio_done, io) != 0)
    return false; /* declined: the jio hook writes it */
  atomic_fetch_add (&c->ctr.backend_writes, 1);
  atomic_fetch_add (&c->ctr.backend_write_bytes, count);
  return true;
}

/* Starts IO once no write in flight overlaps it (and there is room). */
static void
io_issue (struct cache *c, struct journal *j, struct cache_jio *io)
{
  cache_jio_fn fn = atomic_load (&c->jio);

  lock_take (&j->io_lock);
  while (j->ninflight == DRAIN_INFLIGHT || io_overlaps (j, io))
    lock_wait (&j->io_lock, &j->io_cv);
  j->inflight[j->ninflight++] = io;
  lock_drop (&j->io_lock);
  if (io_aio (c, io))
    return;
  if (fn)
    fn (atomic_load (&c->jio_opaque), io);
  else
    cache_jio_run (io);
}

/* Waits for every write of the batch; returns the first error. */
static int
io_wait_all (struct journal *j)
{
  int r;

  lock_take (&j->io_lock);
  while (j->ninflight > 0)
    lock_wait (&j->io_lock, &j->io_cv);
  r = j->io_err;
  j->io_err = 0;
  lock_drop (&j->io_lock);
  return r;
}

/* Adds record R (payload P) to the batch: merged into *CUR if it is a
 * DATA record that continues it, else *CUR is issued and R becomes the
 * new *CUR (a DATA record, held back for merging) or is issued at once.
 */
static int
io_add (struct cache *c, struct journal *j, struct cache_jio **cur,
        const struct jrec *r, const void *p)
{
  struct cache_jio *io = *cur;

  /* A marker of a range written around the journal: its data is on the
   * backend already, and no older record of the range is in the log
   * (jnl_hold), so there is nothing to write or to order.
   */
  if (r->type == JREC_BYPASS)
    return 0;
  if (io && r->type == JREC_ZERO && io->type == JREC_ZERO &&
      io->off + io->count == r->offset && io->count + r->count <= (1u << 30)) {
    io->count += r->count;
    return 0;
  }
  if (io && r->type == JREC_DATA && io->type == JREC_DATA &&
      io->off + io->count == r->offset && io->count + r->count <= DRAIN_MERGE) {
    if (io->count + r->count > io->cap) {
      size_t cap = MAX (io->cap * 2, io->count + r->count);
      uint8_t *b = realloc (io->buf, cap);
      if (!b)
        return -ENOMEM;
      io->buf = b;
      io->cap = cap;
    }
    memcpy (io->buf + io->count, p, r->count);
    io->count += r->count;
    return 0;
  }
  if (io) {
    io_issue (c, j, io);
    *cur = NULL;
  }
  io = calloc (1, sizeof *io);
  if (!io)
    return -ENOMEM;
  io->c = c;
  io->type = r->type;
  io->off = r->offset;
  io->count = r->count;
  if (r->type == JREC_DATA) {
    io->cap = r->count;
    io->buf = malloc (io->cap);
    if (!io->buf) {
      free (io);
      return -ENOMEM;
    }
    memcpy (io->buf, p, r->count);
    *cur = io;
  }
  else if (r->type == JREC_ZERO)
    *cur = io; /* held back for merging too */
  else
    io_issue (c, j, io);
  return 0;
}

/* Drainer.  Writes the drained tail (mtail) to the superblock, and
 * with SYNC syncs it; its space is used again only once a sync covers
 * the write (dev_sync moves dtail; rule 14).  No further batch is
 * drained until the write has succeeded, and none past the next until
 * it is synced ("Tail writes").
 */
static int
write_tail (struct cache *c, struct journal *j, bool sync)
{
  uint64_t lsn, seq;
  bool unsynced;
  int r;

  /* The superblock alternates between two slots: a second write before
   * the first is synced could leave neither durable and whole.  Without
   * SYNC it waits for a later sync (drain_locked); with it, syncs first.
   */
  lock_take (&j->lock);
  unsynced = j->sbs_gen < j->sbw_gen;
  lock_drop (&j->lock);
  if (unsynced) {
    if (!sync)
      return 0;
    if ((r = dev_sync (c, j)) < 0) {
      report_logf (c, CACHE_LOG_ERROR, "journal: writing the superblock: %s",
                   errstr (-r));
      return r;
    }
  }
  lock_take (&j->lock);
  lsn = j->mtail_lsn;
  seq = j->mtail_seq;
  j->sb.tail_lsn = lsn;
  j->sb.tail_seq = seq;
  j->sb.tail_epoch = j->mtail_epoch;
  jsb_split_settle (&j->sb); /* one salt again once the tail passed it */
  r = j->sync_err;
  lock_drop (&j->lock);
  if (r < 0)
    return r; /* after a failed sync nothing is written any more */
  j->sb.image_size = size_now (c);
  r = jsb_write (&j->dev, &j->sb);
  if (r == 0) {
    lock_take (&j->lock);
    j->sbw_lsn = lsn;
    j->sbw_seq = seq;
    j->sbw_gen++;
    pthread_cond_broadcast (&j->cv); /* a writer waiting may sync it */
    lock_drop (&j->lock);
    if (sync)
      r = dev_sync (c, j);
  }
  lock_take (&j->lock);
  j->tail_failed = r < 0;
  lock_drop (&j->lock);
  if (r < 0) {
    report_logf (c, CACHE_LOG_ERROR, "journal: writing the superblock: %s",
                 errstr (-r));
    return r;
  }
  return 0;
}

/* Write-back succeeded again: writers stop failing. */
static void
drain_recovered (struct cache *c)
{
  lock_take (&c->wb_lock);
  c->wb_failing = false;
  c->wb_err = 0;
  atomic_store (&c->wb_fail_logged, false);
  dirty_progress (c);
  lock_drop (&c->wb_lock);
}

static void clip_at_growth (struct journal *j, struct jrec *r);
static void idx_reap (struct cache *c, struct journal *j);

/* drain_lock held.  The drained tail is at AT: logs how far the
 * write-back of the log recovery found is, every 2 s, and when it is
 * done.
 */
static void
recovered_progress (struct cache *c, struct journal *j, uint64_t at)
{
  uint64_t now, total = j->rec_end - j->rec_from, done = at - j->rec_from;

  if (j->rec_end == 0)
    return;
  now = report_now_ms ();
  if (at >= j->rec_end) {
    report_logf (c, CACHE_LOG_INFO,
                 "journal: the recovered log is written back: %" PRIu64
                 " bytes of journal in %" PRIu64 " ms",
                 total, now - j->rec_t0);
    j->rec_end = 0;
  }
  else if (now - j->rec_logged >= 2000) {
    j->rec_logged = now;
    report_logf (c, CACHE_LOG_INFO,
                 "journal: writing back the recovered log: %" PRIu64
                 " of %" PRIu64 " bytes of journal (%" PRIu64 "%%)",
                 done, total, done * 100 / total);
  }
}

static int
drain_locked (struct cache *c, struct journal *j)
{
  struct cache_jio *cur = NULL;
  struct jsb from;
  struct jscan s;
  struct jrec rec;
  uint64_t limit, last = 0, epoch = 0, nrec = 0, nwrites = 0, end;
  bool tail_behind, two_back, prev_written;
  uint64_t need;
  int r = 0;

  lock_take (&j->lock);
  tail_behind = j->tail_failed;
  /* The tail after the batch before the last must be durable before
   * this batch writes anything ("Tail writes"): a sync, if a written
   * tail covers it, else a write and a sync.  The tail after the last
   * batch, if it wrote a byte twice: writing it again over this batch
   * would put back a value of its epoch that its epoch overwrote.
   */
  need = j->last_overlap ? j->mtail_lsn : j->mtail_prev_lsn;
  two_back = j->dtail_lsn < need;
  prev_written = j->sbw_lsn >= need;
  lock_drop (&j->lock);
  if (two_back && !tail_behind &&
      (r = prev_written ? dev_sync (c, j) : write_tail (c, j, true)) < 0) {
    drain_failed (c, j, r);
    return r;
  }
  if (tail_behind) {
    if ((r = write_tail (c, j, true)) < 0) {
      drain_failed (c, j, r);
      return r;
    }
    lock_take (&j->lock);
    j->drain_failing = false;
    j->drain_err = 0;
    lock_drop (&j->lock);
    drain_recovered (c);
  }
  /* Follow the image's size (it may have grown or shrunk): records
   * past where write-back stops are not written, and stop write-back
   * (below; apply checks again when it writes).
   */
  cache_refresh_size (c);

  lock_take (&j->lock);
  limit = j->next_seq - 1;
  if (j->mtail_seq > limit) {
    lock_drop (&j->lock);
    /* Nothing journaled past the tail: idle, so the tail's sync left
     * to the next one is made now (the space, and a restart that has
     * nothing to write again).
     */
    if ((r = tail_sync_locked (c, j)) < 0)
      drain_failed (c, j, r);
    return r;
  }
  from = j->sb;
  from.tail_lsn = j->mtail_lsn;
  from.tail_seq = j->mtail_seq;
  from.tail_epoch = j->mtail_epoch;
  /* Records a flush or FUA write made durable already are drained
   * without a sync of the drainer's own; it syncs only when none is.
   */
  if (j->synced_seq >= j->mtail_seq)
    limit = j->synced_seq;
  if (j->synced_seq < limit) {
    lock_drop (&j->lock);
    r = jnl_sync (c, limit); /* drain only what a crash would keep */
    if (r < 0) {
      drain_failed (c, j, r);
      return r;
    }
  }
  else
    lock_drop (&j->lock);

  jscan_init (&s, &j->dev, &from);
  for (;;) {
    struct jscan before = s;

    if (s.seq > limit || s.nbytes >= DRAIN_BATCH)
      break;
    r = jscan_next (&s, &rec);
    if (r == 0 && s.seq <= limit) {
      report_logf (c, CACHE_LOG_ERROR,
                   "journal: record %" PRIu64 " does not read back", s.seq);
      r = -EIO;
    }
    if (r <= 0)
      break;
    /* Never past what a crash would keep: the log never ends at a WRAP
     * whose record is not durable (write_records writes both, and
     * recovery ends a log before a WRAP alone).
     */
    CACHE_ASSERT (rec.seq <= limit);
    if (nrec > 0 && rec.epoch != epoch && !j->order_any) {
      /* The next batch, after a backend flush: back to before this
       * record (the buffer stays the scan's own).
       */
      s.lsn = before.lsn;
      s.seq = before.seq;
      s.epoch = before.epoch;
      s.nrecords = before.nrecords;
      s.nbytes = before.nbytes;
      break;
    }
    if (rec.type != JREC_BYPASS && /* writes nothing */
        !fits_now (c, rec.offset, rec.count, &end)) {
      /* The image shrank below journaled data: writing it would extend
       * the image again, dropping it would lose it.  Kept, and write-back
       * stops here until the image grows back.
       */
      report_logf (c, j->drain_failing ? CACHE_LOG_DEBUG : CACHE_LOG_ERROR,
                   "journal: holds data at %" PRIu64 "+%" PRIu64
                   ", past the image's end (%" PRIu64 " bytes): kept, not "
                   "written",
                   rec.offset, rec.count, size_now (c));
      r = -EIO;
      break;
    }
    epoch = rec.epoch;
    {
      struct jrec w = rec;

      clip_at_growth (j, &w);
      r = io_add (c, j, &cur, &w, s.buf);
    }
    if (r == 0 && rec.type != JREC_TRIM && rec.type != JREC_BYPASS)
      r = jrange_add (&j->ranges, &j->nranges, &j->ranges_cap, rec.offset,
                      rec.count);
    if (r == 0 && rec.type != JREC_BYPASS)
      r = jrange_add (&j->bat, &j->nbat, &j->bat_cap, rec.offset, rec.count);
    if (r < 0)
      break;
    last = rec.seq;
    nrec++;
    if (rec.type != JREC_BYPASS)
      nwrites++;
  }
  if (cur)
    io_issue (c, j, cur);
  {
    int e = io_wait_all (j);
    if (r >= 0 && e < 0)
      r = e;
  }
  /* A batch of BYPASS markers only wrote nothing: no flush (the data
   * they mark is flushed by the client's next flush, jnl_flush).
   */
  if (r >= 0 && nwrites > 0)
    r = backend_flush (c);
  if (r < 0) {
    j->nranges = 0;
    j->nbat = 0;
    jscan_free (&s);
    drain_failed (c, j, r);
    return r;
  }
  if (nrec == 0) {
    jscan_free (&s);
    return 0;
  }

  atomic_fetch_add (&c->ctr.journal_drained_records, nrec);
  atomic_fetch_add (&c->ctr.journal_drained_bytes, s.lsn - from.tail_lsn);
  {
    bool o = bat_overlaps (j);

    lock_take (&j->lock);
    j->last_overlap = o;
  }
  j->mtail_prev_lsn = j->mtail_lsn;
  j->mtail_lsn = s.lsn;
  atomic_store (&j->drained_lsn, s.lsn);
  j->mtail_seq = s.seq;
  j->mtail_epoch = epoch;
  {
    unsigned k = 0;

    while (k + 1 < j->nage && j->age[k + 1].seq <= s.seq)
      k++;
    memmove (j->age, j->age + k, (j->nage - k) * sizeof j->age[0]);
    j->nage -= k;
  }
  j->drain_failing = false;
  j->drain_err = 0;
  lock_drop (&j->lock);
  jscan_free (&s);

  clean_pages (c, j, last);
  idx_reap (c, j);
  drain_recovered (c);
  recovered_progress (c, j, s.lsn);

  r = write_tail (c, j, false);
  if (r < 0) {
    drain_failed (c, j, r);
    return r;
  }
  return (int) MIN (nrec, (uint64_t) INT32_MAX);
}

/* One drain step, even if the log holds only BYPASS markers. */
static int
drain_step (struct cache *c)
{
  struct journal *j = c->jnl;
  int r;

  lock_take (&j->drain_lock);
  r = drain_locked (c, j);
  lock_drop (&j->drain_lock);
  return r;
}

int
jnl_drain (struct cache *c)
{
  struct journal *j = c->jnl;
  bool markers_only;

  /* Past the tail only markers of writes around the journal, in less
   * than half the ring: nothing to write back, and draining them would
   * cost a journal sync and a superblock write for nothing.  They go
   * with the next records, a barrier (jnl_barrier) or the final drain.
   */
  lock_take (&j->lock);
  markers_only = j->data_seq < j->mtail_seq && !j->tail_failed &&
                 2 * used (j) < j->sb.data_size;
  lock_drop (&j->lock);
  if (markers_only)
    return tail_sync (c, j); /* idle: see drain_locked */
  return drain_step (c);
}

int
jnl_drain_all (struct cache *c)
{
  struct journal *j = c->jnl;
  uint64_t upto, from, to, t0 = report_now_ms (), logged = t0;
  int r;

  lock_take (&j->lock);
  upto = j->next_seq - 1;
  from = j->mtail_lsn;
  to = j->head_lsn;
  lock_drop (&j->lock);
  for (;;) {
    uint64_t at, now;
    bool done;

    lock_take (&j->lock);
    done = j->mtail_seq > upto;
    at = j->mtail_lsn;
    lock_drop (&j->lock);
    /* A long drain (a stop with much in the journal) says how far it
     * is, every 2 s.
     */
    now = report_now_ms ();
    if (now - logged >= 2000 && to > from) {
      logged = now;
      report_logf (c, CACHE_LOG_INFO,
                   "journal: writing back: %" PRIu64 " of %" PRIu64
                   " bytes of journal (%" PRIu64 "%%) in %" PRIu64 " s",
                   MIN (at, to) - from, to - from,
                   (MIN (at, to) - from) * 100 / (to - from),
                   (now - t0) / 1000);
    }
    if (done)
      return tail_sync (c, j); /* a restart has nothing to write again */
    r = drain_step (c);
    if (r < 0)
      return r;
  }
}

/* j->lock held, a record pending (mtail_seq < next_seq).  How long ago
 * the oldest record pending was placed, in ms: it was placed at or
 * before the first sample at or past it, and after the one before.
 */
static uint64_t
oldest_age_ms (struct journal *j)
{
  unsigned k = 0;

  while (k < j->nage && j->age[k].seq < j->mtail_seq)
    k++;
  if (k < j->nage)
    return report_now_ms () - j->age[k].ms;
  if (j->nage > 0) /* placed after the last sample: at most */
    return report_now_ms () - j->age[j->nage - 1].ms;
  return 0;
}

bool
jnl_drain_due (struct cache *c, uint64_t expire_ms, unsigned ratio)
{
  struct journal *j = c->jnl;
  bool due;

  if (ratio == 0 || !jnl_index_room (c))
    return true;
  lock_take (&j->lock);
  due = j->mtail_seq >= j->next_seq /* idle: the tail's sync, if left */ ||
        j->tail_failed || j->drain_failing || j->space_waiters > 0 ||
        (j->mtail_seq <= j->bypass_want && j->data_seq >= j->mtail_seq) ||
        used (j) * 100 > (uint64_t) ratio * j->sb.data_size ||
        oldest_age_ms (j) >= expire_ms;
  lock_drop (&j->lock);
  return due;
}

void
jnl_get_stats (struct cache *c, struct cache_stats *st)
{
  struct journal *j = c->jnl;

  lock_take (&j->lock);
  st->journal_size = j->sb.data_size;
  st->journal_used_bytes = used (j);
  st->journal_pending_bytes = j->head_lsn - j->mtail_lsn;
  st->journal_index_bytes = atomic_load (&j->node_bytes);
  if (j->mtail_seq < j->next_seq) {
    st->journal_epochs_waiting = j->epoch - j->mtail_epoch + 1;
    st->journal_oldest_age_ms = oldest_age_ms (j);
  }
  lock_drop (&j->lock);
}

void
jnl_order_any (struct cache *c, bool any)
{
  c->jnl->order_any = any;
}

void
jnl_note_growth (struct cache *c, uint64_t old)
{
  struct journal *j = c->jnl;
  unsigned k = 0;

  lock_take (&j->lock);
  for (unsigned i = 0; i < j->ncuts; i++) /* keep those not drained */
    if (j->cuts[i].seq > j->mtail_seq)
      j->cuts[k++] = j->cuts[i];
  j->ncuts = k;
  if (j->ncuts == JNL_CUTS) { /* the oldest goes: at worst as before */
    memmove (j->cuts, j->cuts + 1, (JNL_CUTS - 1) * sizeof j->cuts[0]);
    j->ncuts--;
  }
  j->cuts[j->ncuts].seq = j->next_seq;
  j->cuts[j->ncuts].old = old;
  j->ncuts++;
  lock_drop (&j->lock);
}

/* Drainer.  Cuts DATA record R at a growth's old end if R was placed
 * before that growth (see cuts[]).
 */
static void
clip_at_growth (struct journal *j, struct jrec *r)
{
  if (r->type != JREC_DATA)
    return;
  lock_take (&j->lock);
  for (unsigned i = 0; i < j->ncuts; i++) {
    uint64_t old = j->cuts[i].old;

    if (r->seq < j->cuts[i].seq && r->offset < old &&
        old < r->offset + r->count)
      r->count = old - r->offset;
  }
  lock_drop (&j->lock);
}

/* ---- the index of journaled data (journal.h) ---- */

static size_t
node_size (uint32_t cap)
{
  return sizeof (struct jnode) + (size_t) cap * sizeof (struct jext);
}

static uint64_t
ext_lsn (const struct jext *e)
{
  return e->pos & ~JEXT_ZERO;
}

/* Drops the extents of N whose records are drained. */
static void
node_gc (struct journal *j, struct jnode *n)
{
  uint64_t dl = atomic_load (&j->drained_lsn);
  uint32_t k = 0;

  for (uint32_t i = 0; i < n->n; i++)
    if (ext_lsn (&n->ext[i]) >= dl)
      n->ext[k++] = n->ext[i];
  n->n = k;
}

int
jnl_node_room (struct cache *c, struct page *p)
{
  struct jnode *n = p->jnode;

  LOCK_ASSERT_HELD (&p->lock);
  if (!n)
    return 1;
  if (n->n + 2 > n->cap)
    node_gc (c->jnl, n);
  return n->n + 2 <= n->cap ? 0 : 1;
}

int
jnl_node_grow (struct cache *c, struct page *p)
{
  struct journal *j = c->jnl;

  for (;;) {
    struct jnode *old, *nn;
    uint32_t want;

    page_lock (p);
    if (jnl_node_room (c, p) == 0) {
      page_unlock (p);
      return 0;
    }
    want = p->jnode ? 2 * (p->jnode->n + 2) : 4;
    page_unlock (p);
    nn = malloc (node_size (want));
    if (!nn)
      return -ENOMEM;
    page_lock (p);
    old = p->jnode;
    if (old && old->n + 2 > want) { /* grew meanwhile: again */
      page_unlock (p);
      free (nn);
      continue;
    }
    memset (nn, 0, sizeof *nn);
    nn->index = p->index;
    nn->cap = want;
    if (old) {
      nn->n = old->n;
      memcpy (nn->ext, old->ext, old->n * sizeof old->ext[0]);
    }
    p->jnode = nn;
    atomic_fetch_add (&j->node_bytes, node_size (want));
    if (old)
      atomic_fetch_sub (&j->node_bytes, node_size (old->cap));
    page_unlock (p);
    free (old);
    return 0;
  }
}

/* Sectors [s0, s0 + cnt) of N's page now hold the data at POS (an
 * extent's pos): the extents they overlap are cut, and the new one
 * goes last.  N has room for two more extents (a split adds one).
 */
static void
node_put (struct jnode *n, uint32_t s0, uint32_t cnt, uint64_t pos, uint64_t ss)
{
  uint32_t end = s0 + cnt, orig = n->n, k = 0;

  CACHE_ASSERT (n->n + 2 <= n->cap);
  for (uint32_t i = 0; i < orig; i++) {
    struct jext *e = &n->ext[i];
    uint32_t a = e->s0, b = e->s0 + e->n;

    if (b <= s0 || a >= end)
      continue;
    if (a < s0 && b > end) { /* split: the right part goes last */
      struct jext *rt = &n->ext[n->n++];

      rt->s0 = end;
      rt->n = b - end;
      rt->pos = e->pos & JEXT_ZERO ? e->pos : e->pos + (end - a) * ss;
      e->n = s0 - a;
    }
    else if (a < s0)
      e->n = s0 - a;
    else if (b > end) {
      if (!(e->pos & JEXT_ZERO))
        e->pos += (end - a) * ss;
      e->s0 = end;
      e->n = b - end;
    }
    else
      e->n = 0;
  }
  for (uint32_t i = 0; i < n->n; i++)
    if (n->ext[i].n > 0)
      n->ext[k++] = n->ext[i];
  n->n = k;
  n->ext[n->n].s0 = s0;
  n->ext[n->n].n = cnt;
  n->ext[n->n].pos = pos;
  n->n++;
}

/* The extent pos of sector S0 of record R (DATA or ZERO) that starts
 * at image offset OFF.
 */
static uint64_t
rec_pos (const struct jrec *r, uint64_t off)
{
  return r->type == JREC_ZERO ? JEXT_ZERO | r->lsn
                              : r->lsn + JNL_HDR_SIZE + (off - r->offset);
}

void
jnl_node_note (struct cache *c, struct page *p, const struct jrec *r,
               uint32_t s0, uint32_t cnt)
{
  LOCK_ASSERT_HELD (&p->lock);
  CACHE_ASSERT (p->jnode);
  node_put (p->jnode, s0, cnt,
            rec_pos (r,
                     page_offset (c, p) + ((uint64_t) s0 << c->sector_shift)),
            c->cfg.sector_size);
}

/* The live extent of N holding sector I, or NULL. */
static const struct jext *
node_ext (struct journal *j, const struct jnode *n, uint32_t i)
{
  uint64_t dl = atomic_load (&j->drained_lsn);

  for (uint32_t k = 0; k < n->n; k++) {
    const struct jext *e = &n->ext[k];

    if (e->s0 <= i && i < e->s0 + e->n && ext_lsn (e) >= dl)
      return e;
  }
  return NULL;
}

bool
jnl_node_find (struct cache *c, struct page *p, uint32_t i, uint64_t *pos,
               uint32_t *sectors)
{
  const struct jext *e;

  LOCK_ASSERT_HELD (&p->lock);
  if (!c->jnl || !p->jnode || !(e = node_ext (c->jnl, p->jnode, i)))
    return false;
  *sectors = e->s0 + e->n - i;
  *pos = e->pos & JEXT_ZERO
           ? e->pos
           : e->pos + ((uint64_t) (i - e->s0) << c->sector_shift);
  return true;
}

bool
jnl_page_evictable (struct cache *c, struct page *p)
{
  struct journal *j = c->jnl;

  LOCK_ASSERT_HELD (&p->lock);
  if (p->nd == 0)
    return true;
  /* Every D sector has its record in the node (write_page). */
  return p->jnode && p->jseq <= atomic_load (&j->synced_atomic) &&
         jnl_index_room (c) &&
         page_offset (c, p) + c->cfg.page_size <= size_wb_end (c);
}

static uint64_t
idx_bucket (struct journal *j, uint64_t index)
{
  return (index * UINT64_C (0x9E3779B97F4A7C15) >> 20) & j->idx_mask;
}

/* idx_lock held.  Indexes N (not indexed), last in the list. */
static void
idx_insert (struct journal *j, struct jnode *n)
{
  uint64_t b = idx_bucket (j, n->index);

  n->hnext = j->idx_buckets[b];
  j->idx_buckets[b] = n;
  n->lnext = NULL;
  n->lprev = j->idx_tail;
  if (j->idx_tail)
    j->idx_tail->lnext = n;
  else
    j->idx_head = n;
  j->idx_tail = n;
  atomic_fetch_add (&j->idx_nodes, 1);
  atomic_store (&j->indexed, true);
}

struct jnode *
jnl_page_evict (struct cache *c, struct page *p)
{
  struct journal *j = c->jnl;
  struct jnode *n = p->jnode;

  LOCK_ASSERT_HELD (&p->lock);
  {
    uint64_t e = atomic_load (&j->evicted_seq);

    while (p->jseq > e &&
           !atomic_compare_exchange_weak (&j->evicted_seq, &e, p->jseq))
      ;
  }
  p->jnode = NULL;
  p->jseq = 0;
  if (!n)
    return NULL;
  node_gc (j, n);
  if (n->n == 0) {
    atomic_fetch_sub (&j->node_bytes, node_size (n->cap));
    return n;
  }
  n->maxlsn = 0;
  for (uint32_t k = 0; k < n->n; k++)
    n->maxlsn = MAX (n->maxlsn, ext_lsn (&n->ext[k]));
  n->index = p->index;
  lock_take (&j->idx_lock);
  idx_insert (j, n);
  lock_drop (&j->idx_lock);
  atomic_fetch_add (&c->ctr.journal_spilled_pages, 1);
  return NULL;
}

/* idx_lock held.  The indexed node of page INDEX, or NULL. */
static struct jnode *
idx_lookup (struct journal *j, uint64_t index)
{
  struct jnode *n = j->idx_buckets[idx_bucket (j, index)];

  while (n && n->index != index)
    n = n->hnext;
  return n;
}

/* idx_lock held. */
static void
idx_remove (struct journal *j, struct jnode *n)
{
  struct jnode **pp = &j->idx_buckets[idx_bucket (j, n->index)];

  while (*pp != n)
    pp = &(*pp)->hnext;
  *pp = n->hnext;
  if (n->lprev)
    n->lprev->lnext = n->lnext;
  else
    j->idx_head = n->lnext;
  if (n->lnext)
    n->lnext->lprev = n->lprev;
  else
    j->idx_tail = n->lprev;
  n->hnext = n->lnext = n->lprev = NULL;
  atomic_fetch_sub (&j->idx_nodes, 1);
}

void
jnl_page_attach (struct cache *c, struct page *p)
{
  struct journal *j = c->jnl;
  struct jnode *n;

  if (!j || atomic_load (&j->idx_nodes) == 0)
    return;
  lock_take (&j->idx_lock);
  n = idx_lookup (j, p->index);
  if (n)
    idx_remove (j, n);
  lock_drop (&j->idx_lock);
  p->jnode = n;
}

/* Frees the indexed nodes, oldest first, every extent of which is
 * drained.  A node behind a live one waits: it came later, so it is
 * freed at the latest once the drain reaches the log's head as it was
 * when that live one came.
 */
static void
idx_reap (struct cache *c, struct journal *j)
{
  uint64_t dl = atomic_load (&j->drained_lsn);
  struct jnode *dead = NULL;

  (void) c;
  lock_take (&j->idx_lock);
  while (j->idx_head && j->idx_head->maxlsn < dl) {
    struct jnode *n = j->idx_head;

    idx_remove (j, n);
    n->lnext = dead;
    dead = n;
  }
  lock_drop (&j->idx_lock);
  while (dead) {
    struct jnode *n = dead;

    dead = n->lnext;
    atomic_fetch_sub (&j->node_bytes, node_size (n->cap));
    free (n);
  }
}

/* ---- recovery's index ----
 *
 * Recovery reads the log into the index, as if every page it names had
 * left RAM with its records synced: reads of those pages come from the
 * journal at once, and the drainer writes the log back from the tail,
 * as it would have before the crash.
 */

/* idx_lock held.  The indexed node of page INDEX with room for two
 * more extents (made or grown: a grown node goes last in the list), or
 * NULL if out of memory.
 */
static struct jnode *
idx_node_room (struct journal *j, uint64_t index)
{
  struct jnode *n = idx_lookup (j, index), *nn;
  uint32_t want;

  if (n && n->n + 2 <= n->cap)
    return n;
  want = n ? 2 * n->cap : 4;
  nn = malloc (node_size (want));
  if (!nn)
    return NULL;
  memset (nn, 0, sizeof *nn);
  nn->index = index;
  nn->cap = want;
  if (n) {
    nn->n = n->n;
    nn->maxlsn = n->maxlsn;
    memcpy (nn->ext, n->ext, n->n * sizeof n->ext[0]);
    idx_remove (j, n);
    atomic_fetch_sub (&j->node_bytes, node_size (n->cap));
    free (n);
  }
  idx_insert (j, nn);
  atomic_fetch_add (&j->node_bytes, node_size (want));
  return nn;
}

/* idx_lock held.  Frees every indexed node. */
static void
idx_clear (struct journal *j)
{
  while (j->idx_head) {
    struct jnode *n = j->idx_head;

    idx_remove (j, n);
    atomic_fetch_sub (&j->node_bytes, node_size (n->cap));
    free (n);
  }
}

/* The sectors record R (DATA or ZERO) writes, into their pages' nodes:
 * 0, 1 if the index would pass its bound (node_max), or -ENOMEM.  A
 * TRIM leaves the index as it is, as a TRIM leaves the cache (a read
 * may return the older data until the drainer has applied it); a
 * BYPASS marker too: no older record of its range follows the tail.
 */
static int
index_record (struct cache *c, struct journal *j, const struct jrec *r)
{
  uint64_t ps = c->cfg.page_size, end = r->offset + r->count;
  int ret = 0;

  if (r->type != JREC_DATA && r->type != JREC_ZERO)
    return 0;
  lock_take (&j->idx_lock);
  for (uint64_t pi = r->offset >> c->page_shift;
       pi <= (end - 1) >> c->page_shift; pi++) {
    uint64_t pa = MAX (r->offset, pi * ps), pe = MIN (end, (pi + 1) * ps);
    uint64_t pos = rec_pos (r, pa);
    struct jnode *n;

    if (atomic_load (&j->node_bytes) > j->node_max) {
      ret = 1;
      break;
    }
    n = idx_node_room (j, pi);
    if (!n) {
      ret = -ENOMEM;
      break;
    }
    node_put (n, (uint32_t) ((pa - pi * ps) >> c->sector_shift),
              (uint32_t) ((pe - pa) >> c->sector_shift), pos,
              c->cfg.sector_size);
    n->maxlsn = MAX (n->maxlsn, pos & ~JEXT_ZERO);
  }
  lock_drop (&j->idx_lock);
  return ret;
}

/* Reads the log from the tail into the index and continues it
 * (jsb_continue_log): 0, or 1 if it must be written back before
 * serving instead (the index would pass its bound, or there is
 * nothing to index), or -errno (the start fails).
 */
static int
recover_indexed (struct cache *c, struct journal *j)
{
  struct jscan s;
  struct jrec rec;
  uint64_t t0 = report_now_ms (), trim_seq = 0, data_seq = 0;
  uint64_t end_lsn, end_seq, end_epoch;
  int r;

  jscan_init (&s, &j->dev, &j->sb);
  s.ahead = true;
  /* The log ends after its last record, not after a WRAP that follows
   * it: a WRAP and its record are two writes, and a crash may keep the
   * WRAP alone.  Ending after it would leave synced_seq at the WRAP's
   * seq, which no drain step can pass without its record; the next
   * record wraps again from here instead.
   */
  end_lsn = s.lsn;
  end_seq = s.seq;
  end_epoch = s.epoch;
  while ((r = jscan_next (&s, &rec)) == 1) {
    uint64_t size = size_now (c),
             end = ROUND_UP (size, (uint64_t) c->cfg.sector_size);

    if (rec.type != JREC_BYPASS && /* writes nothing */
        (rec.offset > end || rec.count > end - rec.offset)) {
      report_logf (c, CACHE_LOG_ERROR,
                   "journal: holds data at %" PRIu64 "+%" PRIu64
                   ", past the end of the image (%" PRIu64
                   " bytes): was it shrunk? refusing to replay it",
                   rec.offset, rec.count, size);
      r = -EINVAL;
      break;
    }
    r = index_record (c, j, &rec);
    if (r != 0)
      break;
    if (rec.type == JREC_TRIM)
      trim_seq = rec.seq;
    if (rec.type != JREC_BYPASS)
      data_seq = rec.seq;
    end_lsn = s.lsn;
    end_seq = s.seq;
    end_epoch = s.epoch;
    rp_progress (c, &s);
  }
  jscan_free (&s);
  if (r == 1)
    report_logf (c, CACHE_LOG_INFO,
                 "journal: its index would pass cache-size / 4 (%" PRIu64
                 " bytes) at record %" PRIu64 ": writing the log back "
                 "before serving",
                 j->node_max, s.nrecords);
  if (r == 0 && s.nrecords == 0)
    r = 1; /* an empty log: a new one, as after a write-back */
  /* The superblock's sync makes the records it names durable too (a
   * sync covers every write before it: after a SIGKILL they may be in
   * the page cache only), before anything is served from them.  A
   * power cut during it may keep the superblock and lose a record
   * before END: the scan then stops there, as it would have without
   * the restart, and nothing was written after END yet.
   */
  if (r == 0) {
    j->sb.image_size = size_now (c);
    r = jsb_continue_log (&j->dev, &j->sb, end_lsn);
    if (r < 0) {
      lock_take (&j->lock);
      if (!j->sync_err)
        j->sync_err = r;
      lock_drop (&j->lock);
    }
  }
  if (r < 0 && r != -EINVAL)
    report_logf (c, CACHE_LOG_ERROR, "journal: recovery failed: %s",
                 errstr (-r));
  if (r != 0) {
    lock_take (&j->idx_lock);
    idx_clear (j);
    lock_drop (&j->idx_lock);
    atomic_store (&j->indexed, false); /* nothing was served from it */
    return r;
  }

  lock_take (&j->lock);
  j->head_lsn = end_lsn;
  j->next_seq = end_seq;
  j->synced_seq = end_seq - 1;
  j->epoch = end_epoch + 1; /* the crash ended the last epoch */
  j->closed_seq = end_seq - 1;
  j->trim_seq = trim_seq;
  j->data_seq = data_seq;
  j->dtail_lsn = j->mtail_lsn = j->sb.tail_lsn;
  j->sbw_lsn = j->mtail_prev_lsn = j->sb.tail_lsn;
  j->sbw_seq = j->dtail_seq = j->sb.tail_seq;
  j->last_overlap = false;
  j->mtail_seq = j->sb.tail_seq;
  j->mtail_epoch = j->sb.tail_epoch;
  j->nage = 0;
  age_sample (j, j->mtail_seq); /* their age counts from now */
  j->rec_from = j->mtail_lsn;
  j->rec_end = end_lsn;
  j->rec_t0 = j->rec_logged = report_now_ms ();
  atomic_store (&j->drained_lsn, j->mtail_lsn);
  atomic_store (&j->synced_atomic, j->synced_seq);
  lock_drop (&j->lock);
  atomic_store (&j->bypass_flag, (j->sb.flags & JSB_F_BYPASS) != 0);
  atomic_fetch_add (&c->ctr.journal_replayed_records, s.nrecords);
  atomic_fetch_add (&c->ctr.journal_replayed_bytes, s.nbytes);
  report_logf (c, CACHE_LOG_INFO,
               "journal: replayed %" PRIu64 " records (%" PRIu64
               " bytes of journal) in %" PRIu64
               " ms into the index: serving them from the journal, "
               "writing them back in the background",
               s.nrecords, s.nbytes, report_now_ms () - t0);
  return 0;
}

bool
jnl_index_has (struct cache *c, uint64_t index)
{
  struct journal *j = c->jnl;
  struct jnode *n;
  uint64_t dl;
  bool live;

  if (!j || atomic_load (&j->idx_nodes) == 0)
    return false;
  dl = atomic_load (&j->drained_lsn);
  lock_take (&j->idx_lock);
  n = idx_lookup (j, index);
  live = n && n->maxlsn >= dl;
  lock_drop (&j->idx_lock);
  return live;
}

bool
jnl_index_sector (struct cache *c, uint64_t index, uint32_t i)
{
  struct journal *j = c->jnl;
  struct jnode *n;
  bool live;

  if (!j || atomic_load (&j->idx_nodes) == 0)
    return false;
  lock_take (&j->idx_lock);
  n = idx_lookup (j, index);
  live = n && node_ext (j, n, i) != NULL;
  lock_drop (&j->idx_lock);
  return live;
}

bool
jnl_node_live (struct cache *c, struct page *p)
{
  uint64_t pos;
  uint32_t n;

  /* Held or not: a sector read back from the journal is CLEAN in the
   * page (read_install, fill_sector) while the backend does not hold
   * it yet.
   */
  LOCK_ASSERT_HELD (&p->lock);
  for (uint32_t i = 0; i < c->nsect; i++)
    if (jnl_node_find (c, p, i, &pos, &n))
      return true;
  return false;
}

bool
jnl_spilled (struct cache *c)
{
  return c->jnl && atomic_load (&c->jnl->indexed);
}

int
jnl_read (struct cache *c, void *buf, uint32_t count, uint64_t pos)
{
  struct journal *j = c->jnl;
  bool kept;
  int r;

  if (pos & JEXT_ZERO) {
    memset (buf, 0, count);
    return 0;
  }
  r = j->dev.ops->pread (j->dev.opaque, buf, count, jnl_phys (&j->sb, pos));
  if (r < 0) {
    report_logf (c, CACHE_LOG_ERROR, "journal: reading data back: %s",
                 errstr (-r));
    return r;
  }
  /* Space is reused only past the durable tail (rule 14): if the tail
   * has not passed POS now, nothing overwrote it during the read.
   */
  lock_take (&j->lock);
  kept = j->dtail_lsn <= pos;
  lock_drop (&j->lock);
  atomic_fetch_add (&c->ctr.journal_read_bytes, count);
  return kept ? 0 : 1;
}

int
jnl_sync_all (struct cache *c)
{
  return jnl_sync (c, jnl_placed_seq (c));
}

bool
jnl_index_room (struct cache *c)
{
  struct journal *j = c->jnl;

  return atomic_load (&j->node_bytes) <= j->node_max;
}

/* ---- writes around the journal (sequential-cutoff=, bypass.c) ----
 *
 * A bypassed write of [a, e) goes to the backend instead of the
 * journal, and leaves a BYPASS marker in the log.  What keeps it from
 * being undone by older journaled data:
 *   - jnl_hold: from here until jnl_unhold, no record overlapping
 *     [a, e) can be placed (write_page waits in jnl_wait_unheld, a TRIM
 *     in jnl_reserve_unheld), and no other hold overlapping it exists;
 *   - jnl_barrier: every record that could overlap [a, e) and was
 *     placed before the hold (bypass.c finds them through the pages'
 *     jseq; a TRIM has none, so the newest TRIM counts) is on the
 *     backend, flushed, and behind the durable tail, so neither the
 *     drainer nor a replay applies it again;
 *   - the marker is placed after the backend write, before jnl_unhold:
 *     any later record of the range follows it in the log, as its
 *     change follows the bypassed write in memory.
 * With journal-order=epoch the barrier also drains every record of the
 * epochs a flush closed (closed_seq): the bypassed write reaches the
 * backend only after every earlier epoch is there and flushed (rule
 * 13), as if it were a record of the current epoch.
 */

static bool
holds_overlap (struct journal *j, uint64_t a, uint64_t e)
{
  for (struct jhold *h = j->holds; h; h = h->next)
    if (h->a < e && a < h->e)
      return true;
  return false;
}

void
jnl_hold (struct cache *c, struct jhold *h)
{
  struct journal *j = c->jnl;

  lock_take (&j->lock);
  while (holds_overlap (j, h->a, h->e))
    lock_wait (&j->lock, &j->cv);
  h->next = j->holds;
  j->holds = h;
  atomic_fetch_add (&j->nholds, 1);
  h->need = MAX (j->order_any ? 0 : j->closed_seq, j->trim_seq);
  lock_drop (&j->lock);
}

void
jnl_unhold (struct cache *c, struct jhold *h)
{
  struct journal *j = c->jnl;
  struct jhold **pp;

  lock_take (&j->lock);
  for (pp = &j->holds; *pp != h; pp = &(*pp)->next)
    CACHE_ASSERT (*pp != NULL);
  *pp = h->next;
  atomic_fetch_sub (&j->nholds, 1);
  pthread_cond_broadcast (&j->cv);
  lock_drop (&j->lock);
}

bool
jnl_held (struct cache *c, uint64_t a, uint64_t e)
{
  struct journal *j = c->jnl;
  bool r;

  if (atomic_load (&j->nholds) == 0)
    return false; /* a hold taken later fences this page's lock first */
  lock_take (&j->lock);
  r = holds_overlap (j, a, e);
  lock_drop (&j->lock);
  return r;
}

void
jnl_wait_unheld (struct cache *c, uint64_t a, uint64_t e)
{
  struct journal *j = c->jnl;

  lock_take (&j->lock);
  while (holds_overlap (j, a, e))
    lock_wait (&j->lock, &j->cv);
  lock_drop (&j->lock);
}

uint64_t
jnl_reserve_unheld (struct cache *c, struct jbuf *b, enum jrec_type t,
                    uint64_t off, uint64_t count)
{
  struct journal *j = c->jnl;
  uint64_t seq;

  lock_take (&j->lock);
  while (holds_overlap (j, off, off + count))
    lock_wait (&j->lock, &j->cv);
  seq = reserve_locked (j, b, t, off, count);
  lock_drop (&j->lock);
  return seq;
}

/* Sets JSB_F_BYPASS in the superblock on the device (once per log):
 * an older reader must refuse a log holding a BYPASS record.
 */
static int
set_bypass_flag (struct cache *c, struct journal *j)
{
  int r = 0;

  if (atomic_load (&j->bypass_flag))
    return 0;
  lock_take (&j->drain_lock);
  if (!(j->sb.flags & JSB_F_BYPASS)) {
    j->sb.flags |= JSB_F_BYPASS;
    r = write_tail (c, j, true);
    if (r < 0)
      j->sb.flags &= ~JSB_F_BYPASS;
  }
  if (r == 0)
    atomic_store (&j->bypass_flag, true);
  lock_drop (&j->drain_lock);
  return r;
}

int
jnl_barrier (struct cache *c, uint64_t need)
{
  struct journal *j = c->jnl;
  int r = set_bypass_flag (c, j);

  while (r == 0) {
    bool past, done;

    /* Record NEED drained, flushed and behind the durable tail: a
     * recovery re-drains only records after it, and with
     * journal-order=epoch (NEED >= closed_seq) only records of the
     * current epoch, which the write joins.  Later records already
     * drained need not be durable behind the tail (jnl_hold).
     */
    lock_take (&j->lock);
    past = j->mtail_seq > need;
    done = j->dtail_seq > need;
    lock_drop (&j->lock);
    if (done)
      break;
    if (past)
      r = tail_sync (c, j); /* a re-drain must not reach behind NEED */
    else
      r = drain_step (c);
    if (r > 0)
      r = 0;
  }
  return r;
}

bool
jnl_barrier_cheap (struct cache *c, uint64_t need)
{
  struct journal *j = c->jnl;
  bool cheap;

  lock_take (&j->lock);
  /* Past the tail only markers (data_seq: the newest record that is
   * not one): a drain of them writes nothing to the backend.
   */
  cheap = j->mtail_seq > need || need - j->mtail_seq < BARRIER_CHEAP_RECORDS ||
          j->data_seq < j->mtail_seq;
  if (!cheap && need > j->bypass_want)
    j->bypass_want = need;
  lock_drop (&j->lock);
  if (!cheap)
    wb_kick (c);
  return cheap;
}

void
jnl_bypass_written (struct cache *c)
{
  atomic_fetch_add (&c->jnl->bypass_done, 1);
}

/* A flush: if a bypassed write done before it (DONE of them) is not yet
 * covered by a backend flush, flushes the backend.
 */
static int
bypass_flush (struct cache *c, uint64_t done)
{
  struct journal *j = c->jnl;
  uint64_t f = atomic_load (&j->bypass_flushed);
  int r;

  if (f >= done)
    return 0;
  r = backend_flush (c);
  if (r < 0) {
    report_logf (c, CACHE_LOG_ERROR,
                 "journal: flushing writes made around it: %s", errstr (-r));
    return r;
  }
  while (f < done &&
         !atomic_compare_exchange_weak (&j->bypass_flushed, &f, done))
    ;
  return 0;
}

void
jnl_set_cutoff (struct cache *c, uint64_t bytes)
{
  c->jnl->cutoff = bytes;
}

uint64_t
jnl_cutoff (struct cache *c)
{
  return c->jnl ? c->jnl->cutoff : 0;
}

uint64_t
jnl_evicted_seq (struct cache *c)
{
  return atomic_load (&c->jnl->evicted_seq);
}

uint64_t
jnl_placed_seq (struct cache *c)
{
  struct journal *j = c->jnl;
  uint64_t seq;

  lock_take (&j->lock);
  seq = j->next_seq - 1;
  lock_drop (&j->lock);
  return seq;
}
