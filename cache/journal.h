/* subpage: the journal's runtime inside the cache (journal.c).  The
 * format is jformat.h's; docs/journal.md says what each rule buys.
 *
 * With a journal, the RAM cache is never written back by itself: every
 * client write, zero and trim is also a record in the journal, taken
 * under the page lock of the page it changes (so records of a sector
 * are in the same order as its changes in memory), and the drainer
 * (jnl_drain) writes records to the backend in log order, one epoch at
 * a time, flushing the backend at the end of each batch.  A page's D
 * bits are cleared (sect_clean) once every record of the page is on the
 * backend and flushed: until then the page is listed, hence pinned,
 * and reads find the newest data in memory.
 *
 * Locks: j->lock is a leaf, taken under a page lock (jnl_reserve) and
 * never held across I/O or a wait on anything but j->cv.  drain_lock
 * makes the drainer one thread at a time; it is taken with no other
 * lock held.
 */
#ifndef SUBPAGE_JOURNAL_H
#define SUBPAGE_JOURNAL_H

#include <stdbool.h>
#include <stdint.h>

#include "jformat.h"

struct cache;
struct page;

/* One record on its way to the journal: allocated before any lock,
 * filled (payload) under the page lock, placed by jnl_reserve, written
 * by jnl_write.  A record whose write failed stays with the journal,
 * which writes it again before its next sync.
 */
struct jbuf {
  struct jbuf *next, *prev; /* j->pend, in seq order */
  struct jrec rec;
  bool wrap; /* a WRAP record goes first, at wrap_lsn */
  uint64_t wrap_lsn, wrap_seq;
  bool failed;      /* written and failed: the journal owns it */
  uint64_t size;    /* ring bytes: jrec_size (payload) */
  uint8_t *payload; /* points into data, after the header */
  uint8_t data[];   /* JNL_HDR_SIZE header, then the payload */
};

/* Opens the journal on DEV for the image IDENT: reads and checks its
 * superblock, or formats DEV if it holds none and is new (CREATED) or
 * zeroed where a superblock would be.  A journal of another image,
 * sector size or format version is refused with a message naming both.
 * No backend I/O: recovery is jnl_recover's.
 */
int jnl_open (struct cache *c, const struct jdev *dev, const char *ident,
              bool created);
void jnl_free (struct cache *c);

/* Replays every record the journal holds onto the backend, in log
 * order, flushing the backend before each new epoch and at the end,
 * then starts a new log (new salt).  Before any request.
 */
int jnl_recover (struct cache *c);

/* The write path.  jnl_credit waits (no lock held) until SIZE ring
 * bytes can be promised; jnl_uncredit returns a promise not used.
 */
struct jbuf *jnl_buf_new (uint64_t payload);
int jnl_credit (struct cache *c, uint64_t size);
void jnl_uncredit (struct cache *c, uint64_t size);
/* jnl_buf_new and jnl_credit for it: NULL with *ERR set on failure. */
struct jbuf *jnl_buf_credited (struct cache *c, uint64_t payload, int *err);
/* Page lock held (or none for a TRIM).  Places B (type T, range [off,
 * off+count)) in the log: LSN, sequence number, epoch.  Uses B's
 * credit.  Returns its sequence number.
 */
uint64_t jnl_reserve (struct cache *c, struct jbuf *b, enum jrec_type t,
                      uint64_t off, uint64_t count);
/* No lock held.  Writes B and frees it (or keeps it for a retry, and
 * returns the error).
 */
int jnl_write (struct cache *c, struct jbuf *b);

/* Makes every record up to sequence number UPTO durable: waits for
 * their writes, then one device sync shared by every caller ready at
 * the time.  0 or -errno.
 */
int jnl_sync (struct cache *c, uint64_t upto);
/* A client flush: closes the epoch and syncs every record reserved
 * before it; flushes the backend if a write went around the journal
 * since the last such flush.
 */
int jnl_flush (struct cache *c);

/* size_lock held.  The image grows from OLD, which cuts a sector:
 * records placed until now hold zeroes past OLD in that sector, which
 * the drainer must not write over what the growth brought there.
 */
void jnl_note_growth (struct cache *c, uint64_t old);

/* The index of journaled data (docs/journal.md, "Dirty data beyond
 * RAM").  A page that has had a journaled write carries a jnode: for
 * the sectors whose newest change is a record not yet written back,
 * where that record's data is in the ring (pos: the LSN of the first
 * sector's bytes, or JEXT_ZERO | LSN for a ZERO record).  An extent is
 * live while its record is not drained (pos >= the drained tail);
 * dead ones are dropped as the node changes.  A dirty page whose
 * records are durable may leave RAM: its node then goes to the index
 * (a hash by page number, and a list in the order nodes came, which the
 * drainer frees from the front once every extent of a node is drained),
 * and a page that comes back takes its node back.  Reads of sectors a
 * page does not hold come from the ring where a live extent says so.
 * Resident nodes are the page lock's; indexed ones the index lock's.
 */
#define JEXT_ZERO (UINT64_C (1) << 63)
struct jext {
  uint32_t s0, n; /* sectors of the page */
  uint64_t pos;   /* ring LSN of sector s0's data, or JEXT_ZERO | LSN */
};
struct jnode {
  uint64_t index;              /* page number */
  struct jnode *hnext;         /* index hash chain */
  struct jnode *lnext, *lprev; /* index list, oldest first */
  uint64_t maxlsn;             /* end of the newest record's data */
  uint32_t n, cap;             /* ext[0..n) */
  struct jext ext[];           /* not overlapping, any order */
};

/* Page locked, journal= only.  Makes room in P's node for the extents
 * of one more record: 0, or 1 if the caller must drop the page lock and
 * call jnl_node_grow (then start over), or -ENOMEM.
 */
int jnl_node_room (struct cache *c, struct page *p);
/* No lock held; P pinned.  Gives P a node with room (see above). */
int jnl_node_grow (struct cache *c, struct page *p);
/* Page locked, after jnl_reserve of record R (payload at R's lsn +
 * JNL_HDR_SIZE) covering sectors [s0, s0+n) of P: R is now their
 * newest change.
 */
void jnl_node_note (struct cache *c, struct page *p, const struct jrec *r,
                    uint32_t s0, uint32_t n);
/* clock, shard and page locks held: may P leave RAM?  A page with D
 * sectors only once every record of it is durable, and while the
 * index is under its bound.
 */
bool jnl_page_evictable (struct cache *c, struct page *p);
/* Same locks: P leaves RAM.  Its node goes to the index if it has a
 * live extent; otherwise it is returned, to be freed once the locks
 * are dropped.
 */
struct jnode *jnl_page_evict (struct cache *c, struct page *p);
/* Shard lock held: a new page P takes back the node of its page number
 * from the index, if any.
 */
void jnl_page_attach (struct cache *c, struct page *p);
/* Page locked: whether sector I of P has a live extent; if so *POS is
 * where sector I's data is and *SECTORS how many sectors from I on it
 * covers.
 */
bool jnl_node_find (struct cache *c, struct page *p, uint32_t i, uint64_t *pos,
                    uint32_t *sectors);
/* No lock held.  Reads COUNT bytes of ring data at POS into BUF (zeroes
 * for a ZERO extent).  Returns 0, 1 if the record was drained meanwhile
 * and its space reused or released (the backend holds it, read that
 * instead), or -errno.
 */
int jnl_read (struct cache *c, void *buf, uint32_t count, uint64_t pos);
/* Whether the index holds a node with a live extent for page INDEX
 * (no lock held, or its shard lock), or resident P (locked) has a live
 * extent, for a sector it holds or not (one it holds may be CLEAN in
 * the page, read back from the journal, and not on the backend yet).
 */
bool jnl_index_has (struct cache *c, uint64_t index);
bool jnl_node_live (struct cache *c, struct page *p);
/* Whether the index holds a live extent for sector I of page INDEX (no
 * lock held, or its shard lock).
 */
bool jnl_index_sector (struct cache *c, uint64_t index, uint32_t i);
/* Whether the nodes, in RAM or indexed, are within their bound (a
 * quarter of cache-size): dirty pages may leave RAM only then.
 */
bool jnl_index_room (struct cache *c);
/* Whether the index ever held a node: a page left RAM dirty, or
 * recovery indexed the log (block status then looks at the index too).
 */
bool jnl_spilled (struct cache *c);
/* The sequence number of the newest record placed so far (j->lock, a
 * leaf: callable under a page lock).
 */
uint64_t jnl_placed_seq (struct cache *c);
/* The newest record of any page that left RAM (its jseq is lost). */
uint64_t jnl_evicted_seq (struct cache *c);
/* Makes every record placed so far durable (for frames: page.c). */
int jnl_sync_all (struct cache *c);

/* journal-order=any (cache.h). */
void jnl_order_any (struct cache *c, bool any);

/* Fills the journal_* gauges of ST. */
struct cache_stats;
void jnl_get_stats (struct cache *c, struct cache_stats *st);

/* One step of write-back from the journal: records the log holds
 * durably, from the tail, of one epoch, up to a batch; the backend
 * flushed after them; pages cleaned; the tail moved and written.
 * Returns the number of records (0: nothing to do) or -errno.
 */
int jnl_drain (struct cache *c);
/* cache_journal_drain_due. */
bool jnl_drain_due (struct cache *c, uint64_t expire_ms, unsigned ratio);
/* Everything journaled before the call is on the backend. */
int jnl_drain_all (struct cache *c);

/* Writes around the journal (sequential-cutoff=, bypass.c; journal.c
 * has why this is enough).  A hold of [a, e) (bytes, sector-aligned)
 * keeps records overlapping it from being placed until jnl_unhold,
 * and waits for other holds overlapping it to end.  jnl_hold sets
 * NEED: records up to it must be drained before the range is written
 * around the journal (jnl_barrier): with journal-order=epoch, the last
 * of the epochs a flush closed, and the newest TRIM.
 */
struct jhold {
  uint64_t a, e;
  uint64_t need;
  struct jhold *next;
};
/* No lock held. */
void jnl_hold (struct cache *c, struct jhold *h);
void jnl_unhold (struct cache *c, struct jhold *h);
/* Page lock held (or none).  Does a hold overlap [a, e)? */
bool jnl_held (struct cache *c, uint64_t a, uint64_t e);
/* No lock held.  Waits until no hold overlaps [a, e). */
void jnl_wait_unheld (struct cache *c, uint64_t a, uint64_t e);
/* No lock held.  jnl_reserve once no hold overlaps [off, off+count)
 * (a TRIM: it has no page lock to order it).
 */
uint64_t jnl_reserve_unheld (struct cache *c, struct jbuf *b, enum jrec_type t,
                             uint64_t off, uint64_t count);
/* No lock held.  Drains until every record up to NEED is on the
 * backend, flushed, and behind the durable tail; first sets
 * JSB_F_BYPASS in the superblock if this log does not have it yet.
 */
int jnl_barrier (struct cache *c, uint64_t need);
/* No lock held.  Would jnl_barrier (NEED) drain at most
 * BARRIER_CHEAP_RECORDS records, or only markers?  If not, asks for a
 * drain past NEED
 * (jnl_drain_due says one is due until one has gone past it) and kicks
 * write-back: the write goes through the journal instead, and a later
 * write of its stream finds the barrier cheap.
 */
#define BARRIER_CHEAP_RECORDS 64
bool jnl_barrier_cheap (struct cache *c, uint64_t need);
/* A write around the journal reached the backend: the next jnl_flush
 * flushes the backend too.
 */
void jnl_bypass_written (struct cache *c);
/* sequential-cutoff=, in bytes (0: none); jnl_cutoff is 0 without a
 * journal.
 */
void jnl_set_cutoff (struct cache *c, uint64_t bytes);
uint64_t jnl_cutoff (struct cache *c);

#endif /* SUBPAGE_JOURNAL_H */
