/* subpage: the cache's request paths: read, write, zero, trim and
 * prefetch.
 *
 * Requests are split per page (ranges half-open, [off, off+count)).
 *
 * Reads (invariant 2): a read pins up to a chunk of pages, copies what
 * is valid, and only if some sector is missing lists the missing
 * sectors (copying the valid ones again under the same lock, so every
 * byte of the buffer is filled even if a TRIM or ZERO drops a sector
 * before the end) and reads them from the backend, coalesced into as
 * few backend reads as possible (across page boundaries too), with no
 * page lock held.  It then re-locks each page and installs what it read
 * into sectors that are still ABSENT, unless a TRIM or ZERO began in the
 * meantime (the discard generation changed), in which case it only
 * returns the data.  Sectors that became valid meanwhile are newer than
 * the backend's, so those are what the reader returns.
 *
 * Writes (invariant 2): whole sectors are copied in and marked DIRTY
 * with no backend read.  Only a partial sector that is not valid is
 * read first (one sector), with the page lock dropped; both partial
 * sectors are then re-checked, since a TRIM or ZERO may have dropped
 * the other one meanwhile, until both are valid under the lock.
 * Writers never wait for write-back (invariant 4): a sector in flight
 * becomes REDIRTIED.  Writers are throttled before they dirty anything
 * when dirty data passes dirty_ratio (invariant 10), holding no lock.
 *
 * TRIM and ZERO (invariant 8): register the range as busy (so no new
 * write-back of it starts), wait until no sector of it is in flight
 * (dropping the page lock while waiting, re-checking in a loop), apply
 * the backend operation, then drop the cached sectors; a ZERO's partial
 * head and tail sectors are then written as zeroes through the cache.
 * A failed backend operation (ENOTSUP for a FAST_ZERO included) leaves
 * the cache untouched.
 *
 * Each request pins at most one chunk of pages at a time, and only a
 * thread that holds no pin waits for a free frame, so requests cannot
 * deadlock on cache memory.
 */
#define _GNU_SOURCE /* strerrordesc_np, see errstr.h */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "util.h"

#define ZBUF_SIZE (1024 * 1024)

struct read_seg {
  uint64_t off;
  uint32_t len;
  uint64_t jpos; /* journal=: read from the ring here; or JPOS_NONE */
};
#define JPOS_NONE UINT64_MAX

/* Reads from the backend; the part past the end of the disk (the tail
 * of a last sector that the disk only partly covers) reads as zeroes.
 * A read the image ends before (it shrank: -ERANGE) makes the cache
 * follow the new size (resize.c) and is tried once more with it, if it
 * still starts inside; callers check their range against the size
 * again afterwards (the zeroes past a new end are not data).
 */
static int
backend_pread (struct cache *c, void *buf, uint32_t count, uint64_t off)
{
  uint64_t size = size_now (c);
  uint32_t n;
  int r = 0;

  for (int tries = 0;; tries++) {
    n = off >= size ? 0 : (uint32_t) MIN ((uint64_t) count, size - off);
    if (n == 0)
      break;
    r = c->ops->pread (c->bopaque, buf, n, off);
    atomic_fetch_add (&c->ctr.backend_reads, 1);
    atomic_fetch_add (&c->ctr.backend_read_bytes, n);
    if (r != -ERANGE || tries > 0)
      break;
    if (cache_refresh_size (c) == size)
      break;
    size = size_now (c);
    if (off >= size)
      break;
  }
  if (r == 0 && n < count)
    memset ((char *) buf + n, 0, count - n);
  return r;
}

/* ---- reads ---- */

/* Sectors [*s0, *s0 + *n) of page PI that [lo, hi) covers. */
static void
page_span (struct cache *c, uint64_t pi, uint64_t lo, uint64_t hi, uint32_t *s0,
           uint32_t *n)
{
  uint64_t poff = pi << c->page_shift;

  *s0 = (uint32_t) ((lo - poff) >> c->sector_shift);
  *n = (uint32_t) ((hi - lo) >> c->sector_shift);
}

/* One chunk of a read: up to 32 pinned pages, and for page k the part
 * [lo[k], hi[k]) of the request it holds.  BUF is the caller's buffer
 * for [off, ...).
 */
struct read_chunk {
  struct cache *c;
  char *buf;
  uint64_t off;
  struct page *pages[32];
  uint64_t lo[32], hi[32];
  unsigned np;
};

/* Pass 1: pins pages from *POS on (waiting for a frame only for the
 * first), copying the ones that are wholly valid.  Returns whether
 * some sector was missing; *ERR is set only if no page could be had.
 */
static bool
read_pin (struct read_chunk *ch, uint64_t *pos, uint64_t end,
          unsigned chunk_pages, int *err)
{
  struct cache *c = ch->c;
  bool miss = false;

  while (*pos < end && ch->np < chunk_pages) {
    uint64_t pi = *pos >> c->page_shift;
    struct page *p = page_get (c, pi, ch->np == 0, err);
    unsigned k = ch->np;
    uint32_t s0, n, hits;

    if (!p)
      break;
    ch->pages[k] = p;
    ch->lo[k] = *pos;
    ch->hi[k] = MIN (end, (pi + 1) << c->page_shift);
    page_span (c, pi, ch->lo[k], ch->hi[k], &s0, &n);
    page_lock (p);
    hits = sect_count (&p->sb, SECT_BM_V, s0, n);
    if (hits == n)
      memcpy (ch->buf + (ch->lo[k] - ch->off), sect_data (c, p, s0),
              (size_t) n << c->sector_shift);
    else
      miss = true;
    page_unlock (p);
    atomic_fetch_add (&c->ctr.hits, hits);
    atomic_fetch_add (&c->ctr.misses, n - hits);
    *pos = ch->hi[k];
    ch->np++;
  }
  return miss;
}

/* Appends [off, off+len) to SEGS, merged with the last one if they
 * are contiguous on the backend, or in the ring.
 */
static unsigned
add_seg (struct read_seg *segs, unsigned nsegs, size_t maxsegs, uint64_t off,
         uint32_t len, uint64_t jpos)
{
  struct read_seg *l = nsegs > 0 ? &segs[nsegs - 1] : NULL;

  if (l && l->off + l->len == off &&
      ((jpos == JPOS_NONE && l->jpos == JPOS_NONE) ||
       (jpos != JPOS_NONE && l->jpos != JPOS_NONE && !(jpos & JEXT_ZERO) &&
        !(l->jpos & JEXT_ZERO) && l->jpos + l->len == jpos))) {
    l->len += len;
    return nsegs;
  }
  CACHE_ASSERT (nsegs < maxsegs);
  segs[nsegs].off = off;
  segs[nsegs].len = len;
  segs[nsegs].jpos = jpos;
  return nsegs + 1;
}

/* Page locked.  Lists missing sectors [i, e) of P: from the journal
 * where a live extent of P's node says their newest data is, from the
 * backend elsewhere.
 */
static unsigned
list_journaled (struct cache *c, struct page *p, uint32_t i, uint32_t e,
                struct read_seg *segs, unsigned nsegs, size_t maxsegs)
{
  uint64_t poff = page_offset (c, p);

  while (i < e) {
    uint64_t soff = poff + ((uint64_t) i << c->sector_shift), pos;
    uint32_t n;

    if (jnl_node_find (c, p, i, &pos, &n)) {
      n = MIN (n, e - i);
      nsegs = add_seg (segs, nsegs, maxsegs, soff, n << c->sector_shift, pos);
    }
    else {
      n = 1;
      nsegs = add_seg (segs, nsegs, maxsegs, soff, 1u << c->sector_shift,
                       JPOS_NONE);
    }
    i += n;
  }
  return nsegs;
}

/* Pass 2: lists the missing sectors of the chunk in SEGS, coalesced
 * across pages, and copies the valid ones.  Every sector of the buffer
 * is then filled (here or by the backend reads), so a sector that a
 * TRIM or ZERO drops before pass 3 returns the data it held here: a
 * value it had during the read.  Returns the number of segments.
 */
static unsigned
read_list_missing (struct read_chunk *ch, struct read_seg *segs, size_t maxsegs)
{
  struct cache *c = ch->c;
  unsigned nsegs = 0;

  for (unsigned k = 0; k < ch->np; k++) {
    struct page *p = ch->pages[k];
    uint64_t poff = page_offset (c, p);
    char *dst = ch->buf + (ch->lo[k] - ch->off);
    uint32_t s0, n, j;

    page_span (c, p->index, ch->lo[k], ch->hi[k], &s0, &n);
    page_lock (p);
    for (uint32_t i = s0; i < s0 + n; i = j) {
      bool v = sect_test (&p->sb, SECT_BM_V, i);
      uint64_t soff = poff + ((uint64_t) i << c->sector_shift);
      uint32_t len;

      j = sect_find (&p->sb, SECT_BM_V, !v, i, s0 + n);
      len = (j - i) << c->sector_shift;
      if (v) {
        memcpy (dst + ((size_t) (i - s0) << c->sector_shift),
                sect_data (c, p, i), len);
        continue;
      }
      if (p->jnode) { /* newest data may be in the journal */
        nsegs = list_journaled (c, p, i, j, segs, nsegs, maxsegs);
        continue;
      }
      nsegs = add_seg (segs, nsegs, maxsegs, soff, len, JPOS_NONE);
    }
    page_unlock (p);
  }
  return nsegs;
}

/* Pass 3: installs what the backend returned into sectors still
 * missing, unless a TRIM or ZERO ran since pass 2 (INSTALL false), and
 * returns what became valid meanwhile, which is newer.
 */
static void
read_install (struct read_chunk *ch, bool stable, uint64_t gen)
{
  struct cache *c = ch->c;

  for (unsigned k = 0; k < ch->np; k++) {
    struct page *p = ch->pages[k];
    char *dst = ch->buf + (ch->lo[k] - ch->off);
    uint32_t s0, n, j;
    bool install;

    page_span (c, p->index, ch->lo[k], ch->hi[k], &s0, &n);
    page_lock (p);
    install = stable && atomic_load (&c->discard_started) == gen;
    for (uint32_t i = s0; i < s0 + n; i = j) {
      bool v = sect_test (&p->sb, SECT_BM_V, i);
      size_t bytes;
      char *b = dst + ((size_t) (i - s0) << c->sector_shift);

      j = sect_find (&p->sb, SECT_BM_V, !v, i, s0 + n);
      bytes = (size_t) (j - i) << c->sector_shift;
      if (v)
        memcpy (b, sect_data (c, p, i), bytes);
      else if (install) {
        struct sect_delta d = { 0 };
        memcpy (sect_data (c, p, i), b, bytes);
        sect_fill_done (&p->sb, i, j - i, &d);
        report_account (c, p, &d);
      }
    }
    CACHE_ASSERT (page_check (c, p));
    page_unlock (p);
  }
}

/* Reads sector-aligned [off, off+count) into buf, a chunk of pages at a
 * time: copy what is valid (pass 1); if some sector is missing, list the
 * missing ones (pass 2), read them from the backend with no lock held,
 * straight into BUF, and install them (pass 3).
 */
static int
read_aligned (struct cache *c, char *buf, uint64_t off, uint64_t count)
{
  const uint32_t chunk_pages = MAX (1u, MIN (32u, (2u << 20) >> c->page_shift));
  /* With a journal every sector may come from its own place. */
  const size_t maxsegs = (size_t) chunk_pages *
                         (c->jnl ? c->nsect : c->nsect / 2 + 1);
  struct read_seg *segs = NULL;
  uint64_t end = off + count, pos = off;
  int err = 0;

  while (pos < end && !err) {
    struct read_chunk ch = { .c = c, .buf = buf, .off = off, .np = 0 };

    if (read_pin (&ch, &pos, end, chunk_pages, &err)) {
      uint64_t gen = atomic_load (&c->discard_started);
      bool stable = atomic_load (&c->nbusy) == 0;
      unsigned nsegs;

      if (!segs && !(segs = malloc (maxsegs * sizeof *segs)))
        err = -ENOMEM;
      nsegs = err ? 0 : read_list_missing (&ch, segs, maxsegs);
      CACHE_PARK (c, "read.listed");
      for (unsigned k = 0; k < nsegs && !err; k++) {
        char *b = buf + (segs[k].off - off);

        if (segs[k].jpos != JPOS_NONE) {
          /* 1: written back meanwhile and its space released: the
           * backend holds it now (or newer data, which the page then
           * holds too: installing skips it).
           */
          err = jnl_read (c, b, segs[k].len, segs[k].jpos);
          if (err != 1)
            continue;
        }
        err = backend_pread (c, b, segs[k].len, segs[k].off);
      }
      CACHE_PARK (c, "read.fetched");
      if (!err)
        read_install (&ch, stable, gen);
    }
    for (unsigned k = 0; k < ch.np; k++)
      page_unpin (c, ch.pages[k]);
  }
  free (segs);
  return err;
}

int
cache_read (struct cache *c, void *buf, uint32_t count, uint64_t off)
{
  uint64_t a, e;
  char *bounce;
  int r;

  if (count == 0)
    return 0;
  if (!size_covers (c, off, count))
    return -ERANGE;
  a = ROUND_DOWN (off, (uint64_t) c->cfg.sector_size);
  e = ROUND_UP (off + count, (uint64_t) c->cfg.sector_size);
  if (a == off && e == off + count)
    r = read_aligned (c, buf, off, count);
  else {
    bounce = malloc (e - a);
    if (!bounce)
      return -ENOMEM;
    r = read_aligned (c, bounce, a, e - a);
    if (r == 0)
      memcpy (buf, bounce + (off - a), count);
    free (bounce);
  }
  /* It shrank meanwhile: what was read past the new end is not data. */
  if (r == 0 && !size_covers (c, off, count))
    r = -ERANGE;
  if (r == 0)
    report_request (&c->ctr.client_reads, &c->ctr.client_read_bytes, count);
  return r;
}

int
cache_prefetch (struct cache *c, uint32_t count, uint64_t off)
{
  uint32_t chunk = MIN (count, (uint32_t) ZBUF_SIZE);
  char *buf;
  int r = 0;

  if (count == 0)
    return 0;
  buf = malloc (chunk);
  if (!buf)
    return -ENOMEM;
  while (count > 0 && r == 0) {
    uint32_t n = MIN (count, chunk);
    r = cache_read (c, buf, n, off);
    off += n;
    count -= n;
  }
  free (buf);
  return r;
}

/* ---- writes ---- */

/* Reads sector I of P (page locked on entry and exit, dropped while
 * reading) and installs it if it is still ABSENT.  Returns 0, 1 if a
 * TRIM or ZERO interfered (the caller retries), or -errno.
 */
static int
fill_sector (struct cache *c, struct page *p, uint32_t i, char *tmp)
{
  uint64_t gen = atomic_load (&c->discard_started);
  bool stable = atomic_load (&c->nbusy) == 0;
  uint64_t soff = page_offset (c, p) + ((uint64_t) i << c->sector_shift);
  uint64_t jpos;
  uint32_t n;
  bool journaled;
  int r;

  LOCK_ASSERT_HELD (&p->lock);
  /* Its newest data may be in the journal (the page left RAM). */
  journaled = jnl_node_find (c, p, i, &jpos, &n);
  page_unlock (p);
  r = journaled ? jnl_read (c, tmp, c->cfg.sector_size, jpos) : 1;
  if (r == 1) /* not journaled, or written back meanwhile */
    r = backend_pread (c, tmp, c->cfg.sector_size, soff);
  atomic_fetch_add (&c->ctr.misses, 1);
  page_lock (p);
  if (r < 0)
    return r;
  if (sect_test (&p->sb, SECT_BM_V, i))
    return 0; /* written meanwhile: newer */
  if (!stable || atomic_load (&c->discard_started) != gen)
    return 1;
  {
    struct sect_delta d = { 0 };
    memcpy (sect_data (c, p, i), tmp, c->cfg.sector_size);
    sect_fill_done (&p->sb, i, 1, &d);
    report_account (c, p, &d);
  }
  return 0;
}

/* Page locked.  Does a write around the journal hold sectors [sh, st]
 * of the page at POFF?
 */
static bool
held (struct cache *c, uint64_t poff, uint32_t sh, uint32_t st)
{
  return jnl_held (c, poff + ((uint64_t) sh << c->sector_shift),
                   poff + ((uint64_t) (st + 1) << c->sector_shift));
}

/* Writes [off, off+len) (inside page PI) from src.  With a journal,
 * JB (credited) becomes the record of the sectors written, of type JT,
 * placed in the log under the page lock, after the data is in the page:
 * so the records of a sector are in the order of its changes in memory.
 * *SEQ is its sequence number, 0 if it was not placed (the caller then
 * returns its credit).
 */
static int
write_page (struct cache *c, uint64_t pi, const char *src, uint64_t off,
            uint64_t len, char *tmp, struct jbuf *jb, enum jrec_type jt,
            uint64_t *seq)
{
  uint64_t poff = pi << c->page_shift;
  uint32_t ss = c->cfg.sector_size;
  uint32_t sh = (uint32_t) ((off - poff) >> c->sector_shift);
  uint32_t st = (uint32_t) ((off + len - 1 - poff) >> c->sector_shift);
  bool head_partial = !IS_ALIGNED (off, (uint64_t) ss);
  bool tail_partial = !IS_ALIGNED (off + len, (uint64_t) ss);
  struct sect_delta d = { 0 };
  struct page *p;
  int r = 0;

  p = page_get (c, pi, true, &r);
  if (!p)
    return r;
again:
  page_lock (p);
  for (;;) {
    /* Each fill drops the page lock: a TRIM or ZERO may meanwhile have
     * dropped the other partial sector, filled or valid before.  Both
     * are re-checked under the lock that the write then keeps.
     */
    bool head_ok = !head_partial || sect_test (&p->sb, SECT_BM_V, sh);
    bool tail_ok = !tail_partial || sect_test (&p->sb, SECT_BM_V, st);

    if (jb && held (c, poff, sh, st)) {
      /* A write around the journal holds these sectors: wait until its
       * marker is placed, so this record follows it (bypass.c).
       */
      page_unlock (p);
      jnl_wait_unheld (c, poff + ((uint64_t) sh << c->sector_shift),
                       poff + ((uint64_t) (st + 1) << c->sector_shift));
      page_lock (p);
      continue;
    }
    if (head_ok && tail_ok)
      break;
    r = fill_sector (c, p, head_ok ? st : sh, tmp);
    if (r < 0)
      break;
    if (r == 0)
      continue;
    /* A TRIM or ZERO raced with the fill: wait for it, then again. */
    page_unlock (p);
    dirty_busy_wait (c, 0, UINT64_MAX);
    page_lock (p);
    r = 0;
  }
  /* The image may have shrunk since the caller looked: checked under
   * the page lock, after the size is stored and before resize_locked
   * looks at this page, so data written past the new end is counted
   * (and logged) there, or refused here.
   */
  if (r == 0 && !size_covers (c, off, len))
    r = -ERANGE;
  /* The page's node must have room for this record's extents: growing
   * it drops the lock, after which everything above is checked again.
   */
  if (r == 0 && jb && jnl_node_room (c, p) != 0) {
    page_unlock (p);
    r = jnl_node_grow (c, p);
    if (r == 0)
      goto again;
    page_unpin (c, p);
    return r;
  }
  if (r == 0) {
    memcpy (p->data + (off - poff), src, len);
    sect_write (&p->sb, sh, st - sh + 1, &d);
    report_account (c, p, &d);
    dirty_note_write (c, p, sh, st - sh + 1);
    if (jb) {
      size_t n = (size_t) (st - sh + 1) << c->sector_shift;

      if (jt == JREC_DATA)
        memcpy (jb->payload, sect_data (c, p, sh), n);
      *seq = jnl_reserve (c, jb, jt, poff + ((uint64_t) sh << c->sector_shift),
                          n);
      p->jseq = *seq;
      jnl_node_note (c, p, &jb->rec, sh, st - sh + 1);
    }
    CACHE_ASSERT (page_check (c, p));
  }
  page_unlock (p);
  page_unpin (c, p);
  return r;
}

static void
maybe_kick (struct cache *c)
{
  cache_kick_fn fn;

  if (!cache_over_background (c))
    return;
  fn = atomic_load (&c->kick);
  if (fn)
    fn (atomic_load (&c->kick_opaque));
}

/* One page's part of a journaled write: its record (of type ZERO for
 * whole sectors of zeroes), credited, placed by write_page and written
 * here.  A record that fails to write stays with the journal, which
 * writes it again before its next sync: the write itself succeeds (its
 * data is in memory) unless it is FUA, and the next flush fails if the
 * journal still cannot be written.  *MAXSEQ: the newest record.
 */
static int
write_page_journaled (struct cache *c, uint64_t pi, const char *src,
                      uint64_t off, uint64_t len, char *tmp, bool zero,
                      uint64_t *maxseq)
{
  uint64_t ss = c->cfg.sector_size;
  uint64_t a = ROUND_DOWN (off, ss), e = ROUND_UP (off + len, ss);
  bool aligned = a == off && e == off + len;
  enum jrec_type jt = zero && aligned ? JREC_ZERO : JREC_DATA;
  uint64_t seq = 0;
  int r;
  struct jbuf *jb = jnl_buf_credited (c, jt == JREC_DATA ? e - a : 0, &r);

  if (!jb)
    return r;
  r = write_page (c, pi, src, off, len, tmp, jb, jt, &seq);
  if (seq == 0) {
    jnl_uncredit (c, jb->size);
    free (jb);
    return r;
  }
  *maxseq = MAX (*maxseq, seq);
  CACHE_PARK (c, "journal.placed");
  jnl_write (c, jb); /* on failure kept: the next sync retries */
  return r;
}

static int
do_write_ex (struct cache *c, const void *buf, uint32_t count, uint64_t off,
             uint32_t flags, bool zero)
{
  uint64_t end = off + count, pos = off, maxseq = 0;
  char *tmp = NULL;
  int r = 0;

  if (count == 0)
    return 0;
  if (!size_covers (c, off, count))
    return -ERANGE;
  if (c->cfg.mode == CACHE_MODE_UNSAFE)
    flags &= ~CACHE_FUA;
  if (!IS_ALIGNED (off, (uint64_t) c->cfg.sector_size) ||
      !IS_ALIGNED (end, (uint64_t) c->cfg.sector_size)) {
    tmp = malloc (c->cfg.sector_size); /* before any lock */
    if (!tmp)
      return -ENOMEM;
  }

  while (pos < end && r == 0) {
    uint64_t pi = pos >> c->page_shift;
    uint64_t hi = MIN (end, (pi + 1) << c->page_shift);

    r = wb_throttle (c);
    if (r == 0 && c->jnl)
      r = write_page_journaled (c, pi, (const char *) buf + (pos - off), pos,
                                hi - pos, tmp, zero, &maxseq);
    else if (r == 0)
      r = write_page (c, pi, (const char *) buf + (pos - off), pos, hi - pos,
                      tmp, NULL, 0, NULL);
    pos = hi;
  }
  free (tmp);
  if (r < 0)
    return r;

  if (c->jnl) {
    /* FUA: durable once its records are (rule 12). */
    if (flags & CACHE_FUA) {
      CACHE_PARK (c, "fua.written");
      r = jnl_sync (c, maxseq);
    }
    maybe_kick (c);
    return r;
  }
  if ((flags & CACHE_FUA) || c->cfg.mode == CACHE_MODE_WRITETHROUGH) {
    CACHE_PARK (c, "fua.written");
    r = wb_sync_range (c, off, count, flags & CACHE_FUA);
  }
  maybe_kick (c);
  return r;
}

static int
do_write (struct cache *c, const void *buf, uint32_t count, uint64_t off,
          uint32_t flags)
{
  return do_write_ex (c, buf, count, off, flags, false);
}

int
request_write (struct cache *c, const void *buf, uint32_t count, uint64_t off,
               uint32_t flags)
{
  return do_write (c, buf, count, off, flags);
}

int
cache_write (struct cache *c, const void *buf, uint32_t count, uint64_t off,
             uint32_t flags)
{
  /* FUA as honoured: mode=unsafe ignores it (do_write). */
  bool fua = (flags & CACHE_FUA) && c->cfg.mode != CACHE_MODE_UNSAFE;
  uint64_t t0 = fua ? report_now_ns () : 0;
  int r = do_write (c, buf, count, off, flags);

  if (fua)
    report_latency (&c->hist.fua_latency, report_now_ns () - t0);
  if (r == 0)
    report_request (&c->ctr.client_writes, &c->ctr.client_write_bytes, count);
  return r;
}

/* ---- trim and zero ---- */

/* Waits until no sector of [a, e) is under W, page by page. */
static void
wait_idle (struct cache *c, uint64_t a, uint64_t e)
{
  for (uint64_t pi = a >> c->page_shift; pi <= (e - 1) >> c->page_shift; pi++) {
    struct page_part pp = page_part (c, pi, a, e);
    struct page *p = page_find (c, pi);

    if (!p)
      continue;
    page_lock (p);
    while (sect_count (&p->sb, SECT_BM_W, pp.s0, pp.n) > 0)
      page_wait (c, p, &c->w_idle);
    page_unlock (p);
    page_unpin (c, p);
  }
}

void
request_drop_range (struct cache *c, uint64_t a, uint64_t e)
{
  for (uint64_t pi = a >> c->page_shift; pi <= (e - 1) >> c->page_shift; pi++) {
    struct page_part pp = page_part (c, pi, a, e);
    struct page *p = page_find (c, pi);
    struct sect_delta d = { 0 };

    if (!p)
      continue;
    page_lock (p);
    sect_drop (&p->sb, pp.s0, pp.n, &d); /* asserts no W: range is busy */
    report_account (c, p, &d);
    dirty_note_drop (c, p);
    CACHE_ASSERT (page_check (c, p));
    page_unlock (p);
    page_unpin (c, p);
  }
}

static int
write_zeroes (struct cache *c, uint64_t count, uint64_t off, uint32_t flags)
{
  static const char zeroes[ZBUF_SIZE];
  int r = 0;

  while (count > 0 && r == 0) {
    uint32_t n = (uint32_t) MIN (count, (uint64_t) ZBUF_SIZE);
    r = do_write_ex (c, zeroes, n, off, flags, true);
    off += n;
    count -= n;
  }
  return r;
}

/* With a journal: a ZERO is written through the cache as zeroes, its
 * whole sectors as ZERO records (no payload), so reads see it at once
 * and the drainer zeroes the backend in its turn; it is never fast.  A
 * TRIM of whole sectors [a, e) is one TRIM record, applied to the
 * backend when drained; the cache keeps what it holds (a TRIM is
 * advisory: reads of the range may return the old data or zeroes).
 */
static int
discard_journaled (struct cache *c, uint64_t a, uint64_t e, uint32_t count,
                   uint64_t off, uint32_t flags, bool zero)
{
  struct jbuf *jb;
  uint64_t seq;
  int r;

  if (zero) {
    if (flags & CACHE_FAST_ZERO)
      return -ENOTSUP;
    return write_zeroes (c, count, off, flags & CACHE_FUA);
  }
  if (a >= e)
    return 0;
  jb = jnl_buf_credited (c, 0, &r);
  if (!jb)
    return r;
  seq = jnl_reserve_unheld (c, jb, JREC_TRIM, a, e - a);
  jnl_write (c, jb);
  if (flags & CACHE_FUA)
    r = jnl_sync (c, seq);
  return r;
}

static int
discard (struct cache *c, uint32_t count, uint64_t off, uint32_t flags,
         bool zero)
{
  uint64_t ss = c->cfg.sector_size, end = off + count, size = size_now (c);
  uint64_t a = ROUND_UP (off, ss), e = ROUND_DOWN (end, ss);
  struct busy_range br;
  int r;

  if (count == 0)
    return 0;
  if (off > size || count > size - off)
    return -ERANGE;
  if (end == size) /* a partial last sector counts */
    e = ROUND_UP (end, ss);
  if (c->cfg.mode == CACHE_MODE_UNSAFE)
    flags &= ~CACHE_FUA;

  if (c->jnl)
    return discard_journaled (c, a, e, count, off, flags, zero);
  if (zero && a >= e) /* inside one sector */
    return write_zeroes (c, count, off, flags & CACHE_FUA);
  if (!zero && (a >= e || !c->ops->trim))
    return 0; /* trim is advisory */
  if (zero && !c->ops->zero) {
    if (flags & CACHE_FAST_ZERO)
      return -ENOTSUP;
    return write_zeroes (c, count, off, flags & CACHE_FUA);
  }
  br.first_page = a >> c->page_shift;
  br.last_page = (e - 1) >> c->page_shift;
  dirty_busy_begin (c, &br);
  wait_idle (c, a, e);
  {
    /* Never past the request (E may be its end rounded up to a sector,
     * and the image may have grown meanwhile), nor past the image (it
     * may have shrunk).
     */
    uint64_t be = MIN (MIN (e, end), size_now (c));
    uint32_t bflags = flags & (CACHE_FUA | CACHE_MAY_TRIM | CACHE_FAST_ZERO);
    if (be <= a)
      r = -ERANGE;
    else if (zero)
      r = c->ops->zero (c->bopaque, (uint32_t) (be - a), a, bflags);
    else
      r = c->ops->trim (c->bopaque, (uint32_t) (be - a), a, bflags);
  }
  if (r == 0)
    request_drop_range (c, a, e);
  dirty_busy_end (c, &br);
  /* A trim the backend did not do (1), or could not do, is a no-op:
   * dropping the cache's dirty sectors would bring back older data.
   */
  if (!zero && (r > 0 || (r < 0 && r != -EIO && r != -ENOSPC)))
    r = 0;
  report_debug (c, "%s %" PRIu64 "+%" PRIu64 ": %d", zero ? "zero" : "trim", a,
                e - a, r);
  /* Partial head and tail sectors, only once the backend's part has
   * succeeded: a refused FAST_ZERO (or a failed one) changes nothing.
   */
  if (zero && r == 0 && off < a)
    r = write_zeroes (c, a - off, off, flags & CACHE_FUA);
  if (zero && r == 0 && e < end)
    r = write_zeroes (c, end - e, e, flags & CACHE_FUA);
  return r;
}

int
cache_zero (struct cache *c, uint32_t count, uint64_t off, uint32_t flags)
{
  int r = discard (c, count, off, flags, true);

  if (r == 0)
    report_request (&c->ctr.client_zeroes, &c->ctr.client_zero_bytes, count);
  return r;
}

int
cache_trim (struct cache *c, uint32_t count, uint64_t off, uint32_t flags)
{
  int r = discard (c, count, off, flags, false);

  if (r == 0)
    report_request (&c->ctr.client_trims, &c->ctr.client_trim_bytes, count);
  return r;
}
