/* subpage: the cache core's public interface.
 *
 * The cache serves reads and writes of a flat disk image from pages of
 * page_size bytes held in memory, tracking every sector_size sector
 * inside each page (valid, dirty, under write-back; see sector.h).  It
 * reaches storage only through struct cache_backend_ops and knows
 * nothing of nbdkit or libev: every function returns 0 (or a count) on
 * success and -errno on failure, and logs through a callback.
 *
 * Ranges are half-open: [off, off + count).
 *
 * Threads: every cache_* function below may be called from any number
 * of threads at once, except cache_create/cache_destroy.  None of them
 * holds a lock across a backend call, an allocation or a sleep.
 *
 * Write-back: dirty data is written to the backend by "runs", each one
 * contiguous backend write holding a snapshot of one or more sector
 * ranges (possibly spanning several pages).  Runs are produced by
 * cache_writeback() (background, called by server/ or tests) and by
 * cache_flush() (which drives write-back itself), and are handed to the
 * submit hook.  Whoever performs the I/O calls cache_run_done() once,
 * with 0 or -errno, in any order relative to other runs.
 */
#ifndef SUBPAGE_CACHE_H
#define SUBPAGE_CACHE_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct cache;
struct cache_run;

/* Request and backend flags. */
#define CACHE_FUA 0x1u       /* durable on return (write, zero, trim) */
#define CACHE_MAY_TRIM 0x2u  /* zero: backend may punch a hole */
#define CACHE_FAST_ZERO 0x4u /* zero: fail with -ENOTSUP unless fast */

/* How the cache reaches storage.  All return 0 or -errno and must be
 * safe to call from several threads at once.  trim and zero may be
 * NULL: a TRIM is then a no-op (it is advisory: the cache keeps its
 * data, and the backend keeps what it holds), and a ZERO writes zeroes
 * through the cache (a FAST_ZERO fails with -ENOTSUP).  trim returns 1
 * when it did nothing (the backend cannot trim that range): the cache
 * then keeps its data of the range too, dirty sectors included.
 */
struct cache_backend_ops {
  int (*pread) (void *opaque, void *buf, uint32_t count, uint64_t off);
  int (*pwrite) (void *opaque, const void *buf, uint32_t count, uint64_t off,
                 uint32_t flags);
  int (*flush) (void *opaque);
  int (*trim) (void *opaque, uint32_t count, uint64_t off, uint32_t flags);
  int (*zero) (void *opaque, uint32_t count, uint64_t off, uint32_t flags);
  /* The image's size now, in bytes, or -errno.  NULL: the size never
   * changes.  Asked by cache_refresh_size (cache.c has when); pread
   * returns -ERANGE when the image ends before the range does (it
   * shrank), which also makes the cache ask.
   */
  int64_t (*get_size) (void *opaque);
};

enum cache_mode {
  CACHE_MODE_WRITEBACK,    /* writes stay dirty until write-back/flush */
  CACHE_MODE_WRITETHROUGH, /* writes reach the backend before reply */
  CACHE_MODE_UNSAFE,       /* like writeback, but flush and FUA are no-ops */
};

struct cache_config {
  uint64_t size;        /* export size in bytes */
  uint64_t cache_size;  /* bytes of page memory */
  uint32_t page_size;   /* power of 2, 4K..2M */
  uint32_t sector_size; /* power of 2, 512..page_size */
  enum cache_mode mode;
  /* Thresholds on dirty memory: pages holding any dirty or in-flight
   * sector, counted at their full size (such a page cannot be reclaimed).
   */
  unsigned dirty_background_ratio; /* % of cache_size: kick write-back */
  unsigned dirty_ratio;            /* % of cache_size: writers are throttled */
  uint32_t batch_bytes;            /* write-back buffer per batch; 0 = 1 MiB.
                             * At most 4 batches' worth of buffers are
                             * in flight (FUA buffers aside). */
};

/* The geometry cache_create accepts: page_size and sector_size powers
 * of 2 in these bounds (sector_size at most page_size), and a cache of
 * at least CACHE_MIN_PAGES pages.
 */
#define CACHE_MIN_PAGE_SIZE 4096u
#define CACHE_MAX_PAGE_SIZE (2u * 1024 * 1024)
#define CACHE_MIN_SECTOR_SIZE 512u
#define CACHE_MIN_PAGES 8

/* INFO: progress a user wants to see without -v (journal replay). */
enum cache_log_level { CACHE_LOG_DEBUG, CACHE_LOG_INFO, CACHE_LOG_ERROR };
typedef void (*cache_log_fn) (void *opaque, enum cache_log_level level,
                              const char *fmt, va_list ap);

/* Submit hook: performs or queues the backend write of RUN and later
 * calls cache_run_done (c, run, err) exactly once.  Called with no
 * cache lock held.  The default (NULL) performs the write synchronously
 * in the calling thread (cache_run_io).
 */
typedef void (*cache_submit_fn) (void *opaque, struct cache *c,
                                 struct cache_run *run);

/* Kick hook: asks for background write-back (dirty data passed the
 * background threshold, or a writer is throttled).  Called with no
 * cache lock held, from request threads; must not block.
 */
typedef void (*cache_kick_fn) (void *opaque);

/* Returns NULL and sets *err (-errno) on failure; the message has been
 * logged through LOG (which may be NULL).
 */
struct cache *cache_create (const struct cache_config *cfg,
                            const struct cache_backend_ops *ops,
                            void *backend_opaque, cache_log_fn log,
                            void *log_opaque, int *err);
/* Frees everything.  Dirty data is NOT written: call cache_drain first.
 * No run may be in flight.
 */
void cache_destroy (struct cache *c);

/* Hooks take effect for calls that start after these return; a call to
 * the old hook that started before may still be running.  Reset them
 * only when no request and no write-back is running (server/'s wbs_stop
 * does so after its workers have stopped, at .cleanup).
 */
void cache_set_submit (struct cache *c, cache_submit_fn fn, void *opaque);
void cache_set_kick (struct cache *c, cache_kick_fn fn, void *opaque);
void cache_set_debug (struct cache *c, bool verbose);

/* The journal (journal=, docs/journal.md).  DEV is an open journal
 * device (jformat.h: jdev_file_open), which the cache uses until
 * cache_destroy and does not close; IDENT names the image ("file:PATH",
 * "nbd:URI", "rbd:POOL/IMAGE"), CREATED says DEV was created just now.
 *
 * cache_journal_open reads the superblock (or formats a new journal)
 * and refuses, logging both sides, a journal of another image or
 * sector size, a corrupt one or one of a newer format: no backend I/O,
 * so it can run before nbdkit forks.  cache_journal_recover then
 * replays what the journal holds onto the backend (which must be
 * writable) and starts a new log; call it before any request.
 *
 * With a journal: writes, zeroes and trims are records in the journal;
 * cache_flush syncs the journal and does not wait for the backend; a
 * FUA write is durable once its record is; the cache is written back
 * only from the journal, in epoch order (cache_writeback and the kick
 * hook drive cache_journal_drain), and cache_drain writes back
 * everything.  Only CACHE_MODE_WRITEBACK.
 */
struct jdev;
int cache_journal_open (struct cache *c, const struct jdev *dev,
                        const char *ident, bool created);
int cache_journal_recover (struct cache *c);
/* One step of write-back from the journal: the number of records
 * written (0: nothing to do) or -errno.
 */
int cache_journal_drain (struct cache *c);
/* journal-background-ratio=RATIO (percent, 0: always): is a step of
 * cache_journal_drain due?  Yes while the journal holds more than RATIO
 * percent of its space, when its oldest record pending is EXPIRE_MS old,
 * when a writer waits for room in it or the index of pages that left
 * memory is full, after a failed step (to retry), and when nothing is
 * pending (the step then only syncs the tail it left).  No journal:
 * always.
 */
bool cache_journal_drain_due (struct cache *c, uint64_t expire_ms,
                              unsigned ratio);
bool cache_has_journal (const struct cache *c);
/* journal-order=any: the drainer may merge records across flush epochs
 * (no backend flush between them): faster, but the image alone is
 * consistent only once everything is written back.  Set before any
 * request.
 */
void cache_journal_order_any (struct cache *c, bool any);
/* sequential-cutoff=: with a journal, once a stream's writes (see
 * cache_write_stream) add up to BYTES, its further writes go straight
 * to the backend instead of the journal (docs/journal.md, "Writes
 * around the journal").  0: never.  Set before any request.
 */
void cache_journal_sequential_cutoff (struct cache *c, uint64_t bytes);
/* The drainer's backend writes: each batch's are handed to FN, which
 * must run cache_jio_run (IO) once, in another thread (a pool), so that
 * the writes of a batch run in parallel; without FN the drainer runs
 * them itself, one after another.  Set like the submit hook.
 */
struct cache_jio;
typedef void (*cache_jio_fn) (void *opaque, struct cache_jio *io);
void cache_set_jio (struct cache *c, cache_jio_fn fn, void *opaque);
void cache_jio_run (struct cache_jio *io);
/* Asynchronous backend writes for the drainer (uri=, rbd=): FN starts
 * writing [buf, buf+count) at off and returns 0, and calls DONE (ARG,
 * err) once, from any thread with no lock of the cache held, when the
 * backend has answered (err 0 or -errno); or it returns 1 when it
 * cannot, and the write goes to the jio hook.  A batch's DATA writes
 * then take no pool thread each.  The write-back server's aio_pwrite
 * has this shape.  Set like the jio hook.
 */
typedef int (*cache_aio_pwrite_fn) (void *opaque, const void *buf,
                                    uint32_t count, uint64_t off,
                                    uint32_t flags,
                                    void (*done) (void *arg, int err),
                                    void *arg);
void cache_set_jio_aio (struct cache *c, cache_aio_pwrite_fn fn, void *opaque);

/* Requests.  count may be anything from 1 byte up to 32 MiB, at any
 * alignment.  flags: CACHE_FUA for write/zero/trim, CACHE_MAY_TRIM and
 * CACHE_FAST_ZERO for zero.  A request that reaches past the image's
 * size now (it shrank after the client learned the size) returns
 * -ERANGE and logs nothing: the shrink was logged once, when the cache
 * saw it (cache_refresh_size).
 */
int cache_read (struct cache *c, void *buf, uint32_t count, uint64_t off);
int cache_write (struct cache *c, const void *buf, uint32_t count, uint64_t off,
                 uint32_t flags);
/* cache_write for one stream of writes (a client connection: the
 * caller owns one struct cache_stream per connection).  A run of
 * writes, each starting where the previous one ended, that has reached
 * the journal's sequential cutoff writes its whole sectors around the
 * journal, straight to the backend; its partial sectors, and every
 * other write, go through the cache as cache_write.  S NULL, no
 * journal or no cutoff: cache_write.  A stream may be used by several
 * threads at once.
 */
struct cache_stream;
struct cache_stream *cache_stream_new (void);
void cache_stream_free (struct cache_stream *s);
int cache_write_stream (struct cache *c, struct cache_stream *s,
                        const void *buf, uint32_t count, uint64_t off,
                        uint32_t flags);
int cache_zero (struct cache *c, uint32_t count, uint64_t off, uint32_t flags);
int cache_trim (struct cache *c, uint32_t count, uint64_t off, uint32_t flags);
/* Brings [off, off+count) into the cache (NBD_CMD_CACHE). */
int cache_prefetch (struct cache *c, uint32_t count, uint64_t off);

/* Block status: the first run of bytes in [off, end) that the cache
 * holds newer than the backend (sectors DIRTY, WRITEBACK or REDIRTIED),
 * as [*start, *stop), clipped to [off, end) and to one page, and cut
 * where its sectors change from all zero bytes to not (*zero says
 * which: a ZERO the cache holds, or zeroes a client wrote, read as
 * zero); false if there is none.  A snapshot taken under each page's lock, no I/O.  Ask
 * it before the backend: a run written back in between is then on the
 * backend when the backend is asked, so a hole the backend reports for
 * the rest is a hole for every write that returned before the call.
 */
bool cache_next_unflushed (struct cache *c, uint64_t off, uint64_t end,
                           uint64_t *start, uint64_t *stop, bool *zero);

/* The image's size: asks the backend (ops->get_size) and follows a
 * change, and returns the size now.  The cache also asks before each
 * write-back batch and FUA write, and when a backend read ends early.
 *
 * Growth: requests may reach the new end; cached sectors that were
 * past the old end are re-read.  Shrink: requests past the new end
 * return -ERANGE; data clients wrote past the new end stays dirty and
 * is never written (that would extend the image again), so every flush
 * fails with -EIO until the image grows back.  Logged once per change:
 * an error when a shrink leaves data unwritable, else at debug level.
 * On a get_size error the size stays as it was.
 */
uint64_t cache_refresh_size (struct cache *c);

/* Returns only when every write that returned before the call is on
 * the backend and the backend's flush has succeeded afterwards (or the
 * first error).  Concurrent flushes share backend flushes.
 * In CACHE_MODE_UNSAFE it returns 0 at once and writes nothing.
 */
int cache_flush (struct cache *c);
/* The shutdown drain: cache_flush in every mode, CACHE_MODE_UNSAFE
 * included (the mode ignores the client's flushes, not shutdown).
 * Writes back everything written before the call and then flushes the
 * backend; returns 0 or the first error.
 */
int cache_drain (struct cache *c);

/* Background write-back: collects one batch of dirty data and submits
 * its runs.  Returns the number of runs submitted (0: nothing to do) or
 * -errno (-ENOMEM).  Never waits for a run to complete (with the default
 * synchronous submit hook it performs them itself), so a single worker
 * thread can call it.
 */
enum cache_wb_reason {
  CACHE_WB_EXPIRED,    /* pages dirty for at least expire_ms */
  CACHE_WB_BACKGROUND, /* oldest dirty pages, regardless of age */
};
int cache_writeback (struct cache *c, enum cache_wb_reason why,
                     uint64_t expire_ms);
/* True when dirty memory (pages holding a D or W sector, at their full
 * size: write-back in flight counts, like in Linux) passes the
 * background threshold.
 */
bool cache_over_background (struct cache *c);

/* Runs.  The data stays valid until cache_run_done. */
uint64_t cache_run_offset (const struct cache_run *run);
uint32_t cache_run_length (const struct cache_run *run);
const void *cache_run_data (const struct cache_run *run);
uint32_t cache_run_flags (const struct cache_run *run);
/* Writes RUN to the backend and calls cache_run_done.  Returns the
 * backend's result (0 or -errno); RUN is gone by then.
 */
int cache_run_io (struct cache *c, struct cache_run *run);
/* For submit hooks that write RUN themselves: call it right before the
 * write, which then uses cache_run_length as it is now.  False when the
 * image now ends before RUN (it shrank since RUN was built): RUN is
 * then completed, kept dirty, and gone (cache_run_io does this too).
 */
bool cache_run_start (struct cache *c, struct cache_run *run);
/* For submit hooks that write RUN themselves instead of calling
 * cache_run_io (e.g. asynchronously): counts RUN's backend write in the
 * statistics.  Call it once per run, before cache_run_done.
 */
void cache_run_account (struct cache *c, const struct cache_run *run);
/* Completes RUN: 0 marks its sectors clean (unless written again
 * meanwhile); -errno marks them dirty again and records the error for
 * the next flush.
 */
void cache_run_done (struct cache *c, struct cache_run *run, int err);

/* The cache's counters, one list for every place that names them: each
 * is a field of struct cache_stats, an atomic counter of the core
 * (report.c), and a Prometheus counter of the metrics endpoint (its
 * name, "subpage_" first, and help; NULL: the endpoint shows it another
 * way: hits and misses count sectors, it exports them in bytes).
 * X (field, metric, help).
 */
#define CACHE_COUNTERS(X)                                                      \
  X (hits, NULL, "Sectors read by clients that were in the cache.")            \
  X (misses, NULL,                                                             \
     "Sectors read from the image because they were not in the cache.")        \
  X (client_reads, "client_reads_total", "Read requests served.")              \
  X (client_read_bytes, "client_read_bytes_total", "Bytes read by clients.")   \
  X (client_writes, "client_writes_total", "Write requests served.")           \
  X (client_write_bytes, "client_written_bytes_total",                         \
     "Bytes written by clients (compare backend_written_bytes_total: "         \
     "write amplification).")                                                  \
  X (client_zeroes, "client_zeroes_total", "Zero requests served.")            \
  X (client_zero_bytes, "client_zero_bytes_total", "Bytes zeroed by clients.") \
  X (client_trims, "client_trims_total", "Trim requests served.")              \
  X (client_trim_bytes, "client_trim_bytes_total",                             \
     "Bytes trimmed by clients.")                                              \
  X (backend_reads, "backend_reads_total", "Reads from the image.")            \
  X (backend_read_bytes, "backend_read_bytes_total",                           \
     "Bytes read from the image.")                                             \
  X (backend_writes, "backend_writes_total",                                   \
     "Writes to the image (write-back runs, FUA and write-through "            \
     "writes).")                                                               \
  X (backend_write_bytes, "backend_written_bytes_total",                       \
     "Bytes written to the image.")                                            \
  X (backend_flushes, "backend_flushes_total",                                 \
     "Syncs of the image (fdatasync).")                                        \
  X (wb_runs, "writeback_runs_total",                                          \
     "Write-back runs started (one contiguous write of dirty data "            \
     "each).")                                                                 \
  X (wb_errors, "writeback_errors_total",                                      \
     "Write-back runs that failed (their data stays dirty).")                  \
  X (wb_past_end, "writeback_past_end_runs_total",                             \
     "Write-back runs not written because the image now ends before them "     \
     "(also counted as failed).")                                              \
  X (resizes, "image_size_changes_total",                                      \
     "Changes of the image's size the cache has followed.")                    \
  X (evictions, "evictions_total", "Clean pages evicted to make room.")        \
  X (throttled, "throttled_writers_total",                                     \
     "Writes that waited because dirty data passed dirty-ratio.")              \
  X (flushes, "flushes_total",                                                 \
     "Flushes (client flushes and the final flush at exit).")                  \
  X (flush_errors, "flush_errors_total", "Flushes that failed.")               \
  X (journal_records, "journal_records_total",                                 \
     "Records written to the journal (journal=).")                             \
  X (journal_bytes, "journal_written_bytes_total",                             \
     "Bytes of records written to the journal (compare "                       \
     "client_written_bytes_total: the journal's overhead).")                   \
  X (journal_syncs, "journal_syncs_total",                                     \
     "Syncs of the journal (fdatasync), shared by concurrent flushes.")        \
  X (journal_bypass_writes, "journal_bypassed_writes_total",                   \
     "Writes of a sequential stream written around the journal, straight "     \
     "to the image (sequential-cutoff=).")                                     \
  X (journal_bypass_bytes, "journal_bypassed_bytes_total",                     \
     "Bytes written around the journal, straight to the image.")               \
  X (journal_drained_records, "journal_drained_records_total",                 \
     "Journal records written back to the image.")                             \
  X (journal_drained_bytes, "journal_drained_bytes_total",                     \
     "Journal bytes whose records are on the image and flushed.")              \
  X (journal_spilled_pages, "journal_spilled_pages_total",                     \
     "Dirty pages that left RAM, their data safe in the journal.")             \
  X (journal_read_bytes, "journal_read_bytes_total",                           \
     "Bytes of client reads served from the journal.")                         \
  X (journal_replayed_records, "journal_replayed_records_total",               \
     "Records replayed from the journal at start.")                            \
  X (journal_replayed_bytes, "journal_replayed_bytes_total",                   \
     "Journal bytes replayed at start.")

/* Latency histograms, one list like CACHE_COUNTERS: each is a struct
 * cache_histogram in struct cache_stats, atomic bucket counters of the
 * core (report.c), and a Prometheus histogram of the metrics endpoint
 * (its name, "subpage_" first, in seconds, and help).
 * X (field, metric, help).
 */
#define CACHE_HISTOGRAMS(X)                                                 \
  X (flush_latency, "flush_duration_seconds",                               \
     "Time cache_flush took (client flushes and the final flush at exit).") \
  X (fua_latency, "fua_write_duration_seconds",                             \
     "Time a FUA write took, written back included (not in mode=unsafe).")  \
  X (backend_write_latency, "backend_write_duration_seconds",               \
     "Time a write-back run took, from its submission to its completion.")  \
  X (throttle_latency, "throttle_wait_seconds",                             \
     "Time a writer waited because dirty data passed dirty-ratio.")

/* The buckets' upper bounds in nanoseconds: 100 us to 10 s, 1, 2.5 and
 * 5 per decade (cache_histogram_bounds_ns, report.c); a last bucket
 * holds what is above 10 s.
 */
#define CACHE_HIST_BUCKETS 16
extern const uint64_t cache_histogram_bounds_ns[CACHE_HIST_BUCKETS];

struct cache_histogram {
  /* Observations per bucket (not cumulative): bucket[i] those above
   * bound i - 1 and at most bound i; bucket[CACHE_HIST_BUCKETS] those
   * above the last bound.
   */
  uint64_t bucket[CACHE_HIST_BUCKETS + 1];
  uint64_t count;  /* the sum of bucket[], read with them */
  uint64_t sum_ns; /* sum of the observations */
};

/* Statistics (approximate while requests run; exact when idle). */
struct cache_stats {
  uint64_t size, cache_size, page_size, sector_size;
  uint64_t pages_total, pages_resident;
  uint64_t cached_bytes;    /* V sectors */
  uint64_t dirty_bytes;     /* D sectors */
  uint64_t writeback_bytes; /* W sectors */
  uint64_t dirty_pages;     /* pages holding a D or W sector */
  /* The counters above: hits and misses count sectors; the client
   * figures count cache_read/cache_write/cache_zero/cache_trim calls
   * that succeeded (backend_write_bytes / client_write_bytes is the
   * write amplification); throttled counts writers that had to wait.
   */
#define CACHE_STATS_FIELD(f, metric, help) uint64_t f;
  CACHE_COUNTERS (CACHE_STATS_FIELD)
#undef CACHE_STATS_FIELD
#define CACHE_STATS_HIST(f, metric, help) struct cache_histogram f;
  CACHE_HISTOGRAMS (CACHE_STATS_HIST)
#undef CACHE_STATS_HIST
  /* Threads waiting right now (for tests and metrics): waiting_flush
   * counts cache_flush calls blocked on write-back or on a backend flush
   * another flush started; waiting_idle counts TRIM/ZERO/FUA waiting for
   * write-back of their range.
   */
  uint64_t waiting_flush, waiting_throttle, waiting_page, waiting_idle;
  uint64_t runs_in_flight;
  uint64_t writeback_buffer_bytes; /* snapshot buffers alive */
  uint64_t metadata_bytes;
  /* journal= (all 0 without one): the ring's size, the bytes it holds
   * (records not yet written back and flushed, with padding), those of
   * them not yet written back, the epochs they span, and how long ago
   * the oldest of them was written (about: kept per epoch).
   */
  uint64_t journal_size, journal_used_bytes, journal_pending_bytes;
  uint64_t journal_epochs_waiting, journal_oldest_age_ms;
  uint64_t journal_index_bytes; /* the index of journaled data */
};
void cache_get_stats (struct cache *c, struct cache_stats *st);

#endif /* SUBPAGE_CACHE_H */
