/* subpage: large sequential writes around the journal
 * (sequential-cutoff=; docs/journal.md, "Writes around the journal").
 *
 * Streams.  A struct cache_stream is one client connection's writes:
 * its recent runs of writes, each starting where the previous one
 * ended, with the bytes written in each.  A write that continues no
 * run starts a new one.  Once a run has reached the cutoff, its
 * further writes go around the journal: their whole sectors straight
 * to the backend, their partial sectors (a misaligned head or tail)
 * through the cache and the journal as any write.  Only with a
 * journal: without one, a write does not go through a journal twice
 * anyway.  Writes of one connection run in parallel and may reach the
 * stream in another order than the client sent them: a write that
 * overtook the ones before it is part of their run if that run is
 * past the cutoff and at most STREAM_AHEAD writes behind; else it
 * starts a run (and is journaled), which takes over the bytes of the
 * run before it when the write between them arrives.
 * Writes backwards, or with gaps, continue no run.
 *
 * A write around the journal of sector-aligned [a, e) (bypass):
 *   1. takes the credit for its marker (a BYPASS record, no payload)
 *      first: once its data is on the backend, nothing may wait for
 *      journal space;
 *   2. holds [a, e) (jnl_hold): no record overlapping the range can be
 *      placed until step 8, and no other write around the journal of
 *      an overlapping range runs;
 *   3. fences each resident page of the range (fence): under its lock,
 *      takes its jseq, the newest record of the page (every record of
 *      the range placed before the hold is at most the largest), and
 *      waits for write-back of the range in flight (rule 8; with a
 *      journal no W bit is ever set, the drainer's writes are waited
 *      for by step 4);
 *   4. jnl_barrier: every record up to the newest found, and with
 *      journal-order=epoch every record of the epochs before this one,
 *      is on the backend, flushed, and behind the durable tail: neither
 *      the drainer nor a replay will write it again (rule 13: the write
 *      is a barrier).  If that is more than BARRIER_CHEAP_RECORDS
 *      records to drain (jnl_barrier_cheap), the write goes through the
 *      journal instead and asks for the drain;
 *   5. makes the range busy (dirty_busy_begin): a read or fill that
 *      read the backend before the write does not install what it read;
 *   6. writes the backend (with FUA if asked);
 *   7. drops the cached sectors of the range, even after a failed
 *      write (the backend may hold part of it): reads come from the
 *      backend, which holds the newest data;
 *   8. places the marker (only if the write succeeded), ends the hold,
 *      and writes the marker.
 * A later record of the range is placed after the marker and applied
 * after the write, as its change in memory came after it.  The next
 * flush flushes the backend (jnl_bypass_written, jnl_flush).  If the
 * barrier fails (write-back is failing), the write goes through the
 * journal instead.  A failed backend write returns its error and
 * leaves no marker; the journal and the cache are as before, the range
 * uncached.
 */
#define _GNU_SOURCE /* strerrordesc_np, see errstr.h */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>

#include "internal.h"
#include "util.h"

/* Runs of one stream, as bcache keeps its recent I/Os: a write that
 * starts where a run ends continues it; the least recently used run
 * makes room for a new one.  A write that overtook the one before it
 * (requests of a connection run in parallel) starts a run of its own,
 * which takes over the bytes of the run it follows once the write
 * between them arrives; if that run has reached the cutoff already,
 * the overtaking write is part of it at once.
 */
#define STREAM_RUNS 16
/* How far ahead of a run, in writes of its size, a write that
 * overtook the ones between them may start (nbdkit runs 16 requests of
 * a connection at once by default).
 */
#define STREAM_AHEAD 16

struct cache_stream {
  struct lock lock;
  struct {
    uint64_t start, end; /* bytes the run covers: [start, end) */
    uint64_t bytes;      /* written in it */
    uint64_t used;       /* when last continued (tick) */
  } runs[STREAM_RUNS];
  uint64_t tick;
};

struct cache_stream *
cache_stream_new (void)
{
  struct cache_stream *s = calloc (1, sizeof *s);

  if (s)
    lock_init (&s->lock);
  return s;
}

void
cache_stream_free (struct cache_stream *s)
{
  if (!s)
    return;
  lock_destroy (&s->lock);
  free (s);
}

/* Counts a write of [off, off+count) in S; true if the run it continues
 * had reached CUTOFF before it.
 */
static bool
stream_past_cutoff (struct cache_stream *s, uint64_t off, uint32_t count,
                    uint64_t cutoff)
{
  bool past = false;
  unsigned k, lru = 0;

  lock_take (&s->lock);
  s->tick++;
  for (k = 0; k < STREAM_RUNS; k++) {
    if (s->runs[k].bytes > 0 && s->runs[k].end == off)
      break;
    if (s->runs[k].used < s->runs[lru].used)
      lru = k;
  }
  if (k < STREAM_RUNS) {
    past = s->runs[k].bytes >= cutoff;
    s->runs[k].bytes += count;
    s->runs[k].end = off + count;
    /* A run that starts where this one now ends may have overtaken
     * it: it continues this one.  This one stays too (that run may be
     * older data the stream now writes again).
     */
    for (unsigned f = 0; f < STREAM_RUNS; f++)
      if (f != k && s->runs[f].bytes > 0 && s->runs[f].start == s->runs[k].end)
        s->runs[f].bytes += s->runs[k].bytes;
  }
  else {
    uint64_t bytes = count;

    /* A write a little ahead of a run past the cutoff overtook the
     * writes between them: it is part of that run.  (A run that is
     * not past the cutoff yet lends nothing: writes with gaps from the
     * start are no stream.)
     */
    for (unsigned e = 0; e < STREAM_RUNS; e++)
      if (s->runs[e].bytes >= cutoff && s->runs[e].end < off &&
          off - s->runs[e].end <= STREAM_AHEAD * (uint64_t) count) {
        past = true;
        bytes += s->runs[e].bytes;
        break;
      }
    k = lru;
    s->runs[k].start = off;
    s->runs[k].end = off + count;
    s->runs[k].bytes = bytes;
  }
  s->runs[k].used = s->tick;
  lock_drop (&s->lock);
  return past;
}

/* Step 3: the newest record of the resident pages of [a, e), once no
 * sector of the range is under write-back.
 */
static uint64_t
fence (struct cache *c, uint64_t a, uint64_t e)
{
  uint64_t newest = 0;

  for (uint64_t pi = a >> c->page_shift; pi <= (e - 1) >> c->page_shift; pi++) {
    struct page_part pp = page_part (c, pi, a, e);
    bool indexed;
    struct page *p = page_find_indexed (c, pi, &indexed);

    /* A page that left RAM dirty (its node indexed), or came back with
     * its node, has records that its jseq does not name (reset when it
     * left): then everything placed so far must be written back first.
     * The hold keeps new records of the range from being placed.
     */
    if (!p) {
      if (indexed)
        newest = MAX (newest, jnl_placed_seq (c));
      /* A page that left RAM clean: its records are drained, but maybe
       * not behind the durable tail (the shard lock orders the
       * eviction's store before this lookup's miss).
       */
      newest = MAX (newest, jnl_evicted_seq (c));
      continue;
    }
    page_lock (p);
    while (sect_count (&p->sb, SECT_BM_W, pp.s0, pp.n) > 0)
      page_wait (c, p, &c->w_idle);
    newest = MAX (newest, p->jseq);
    if (jnl_node_live (c, p))
      newest = MAX (newest, jnl_placed_seq (c));
    page_unlock (p);
    page_unpin (c, p);
  }
  return newest;
}

/* Writes sector-aligned [a, e) from BUF around the journal (above). */
static int
bypass (struct cache *c, const char *buf, uint64_t a, uint64_t e,
        uint32_t flags)
{
  struct jhold h = { .a = a, .e = e };
  struct busy_range br = {
    .first_page = a >> c->page_shift,
    .last_page = (e - 1) >> c->page_shift,
  };
  struct jbuf *jb;
  int r;

  jb = jnl_buf_credited (c, 0, &r);
  if (!jb)
    return r;
  jnl_hold (c, &h);
  h.need = MAX (h.need, fence (c, a, e));
  CACHE_PARK (c, "bypass.held");
  /* A barrier that would drain much (the drainer lags, or with
   * journal-background-ratio= waits to) would stall the request: the
   * write goes through the journal, and the drain is asked for.
   */
  r = jnl_barrier_cheap (c, h.need) ? jnl_barrier (c, h.need) : -EAGAIN;
  if (r < 0) {
    report_debug (c, "bypass %" PRIu64 "+%" PRIu64 ": barrier: %d: journaled",
                  a, e - a, r);
    jnl_unhold (c, &h);
    jnl_uncredit (c, jb->size);
    free (jb);
    return request_write (c, buf, (uint32_t) (e - a), a, flags);
  }

  dirty_busy_begin (c, &br);
  if (!size_covers (c, a, e - a))
    r = -ERANGE; /* it shrank meanwhile */
  else {
    r = c->ops->pwrite (c->bopaque, buf, (uint32_t) (e - a), a,
                        flags & CACHE_FUA);
    atomic_fetch_add (&c->ctr.backend_writes, 1);
    atomic_fetch_add (&c->ctr.backend_write_bytes, e - a);
  }
  if (r == 0)
    jnl_bypass_written (c);
  request_drop_range (c, a, e); /* step 7 */
  dirty_busy_end (c, &br);

  if (r == 0) {
    CACHE_PARK (c, "bypass.written");
    jnl_reserve (c, jb, JREC_BYPASS, a, e - a);
    jnl_unhold (c, &h);
    jnl_write (c, jb); /* on failure kept: the next sync retries */
    atomic_fetch_add (&c->ctr.journal_bypass_writes, 1);
    atomic_fetch_add (&c->ctr.journal_bypass_bytes, e - a);
  }
  else {
    jnl_unhold (c, &h);
    jnl_uncredit (c, jb->size);
    free (jb);
  }
  report_debug (c, "bypass %" PRIu64 "+%" PRIu64 ": %d", a, e - a, r);
  return r;
}

int
cache_write_stream (struct cache *c, struct cache_stream *s, const void *buf,
                    uint32_t count, uint64_t off, uint32_t flags)
{
  uint64_t cutoff = jnl_cutoff (c), ss = c->cfg.sector_size;
  uint64_t end = off + count, a = ROUND_UP (off, ss), e = ROUND_DOWN (end, ss);
  const char *b = buf;
  bool fua;
  uint64_t t0;
  int r = 0;

  if (!s || cutoff == 0 || count == 0 ||
      !stream_past_cutoff (s, off, count, cutoff) || a >= e)
    return cache_write (c, buf, count, off, flags);
  if (!size_covers (c, off, count))
    return -ERANGE;
  if (c->cfg.mode == CACHE_MODE_UNSAFE)
    flags &= ~CACHE_FUA;
  fua = flags & CACHE_FUA;
  t0 = fua ? report_now_ns () : 0;
  if (off < a)
    r = request_write (c, b, (uint32_t) (a - off), off, flags);
  if (r == 0)
    r = bypass (c, b + (a - off), a, e, flags);
  if (r == 0 && e < end)
    r = request_write (c, b + (e - off), (uint32_t) (end - e), e, flags);
  if (fua)
    report_latency (&c->hist.fua_latency, report_now_ns () - t0);
  if (r == 0)
    report_request (&c->ctr.client_writes, &c->ctr.client_write_bytes, count);
  return r;
}
