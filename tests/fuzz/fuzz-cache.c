/* subpage: libFuzzer target for the cache core.
 *
 * What it does.  Each input is decoded into a cache configuration (a
 * small disk, page and sector size, cache size, mode, dirty ratios,
 * write-back batch size, backend with or without trim/zero) and a
 * sequence of operations: reads, writes, FUA writes, trims, zeroes,
 * prefetches, flushes, background write-back, completions of captured
 * write-back runs (ok or failed, in any order), faults armed on the
 * backend, and requests started on one of two worker threads that race
 * with everything the main thread does until the input joins them.
 * After every operation the cache is checked against a flat reference
 * model of the disk and against the flush contract; any mismatch calls
 * abort(), which libFuzzer reports as a crash.
 *
 * Representation.
 *  - model[]/st[]/alt[]: what a read must return.  st[] is DEF (the
 *    byte is model[]), EITHER (model[] or alt[]: two requests that
 *    overlapped in time wrote it, in an order nobody can know) or UNDEF
 *    (any value: after a TRIM of its sector, a failed request, or three
 *    concurrent writers).  The first read of an EITHER or UNDEF byte
 *    that no request in flight touches defines it (later reads agree).
 *  - modseq[]: the sequence number of the last change of each byte made
 *    while some request was in flight, so that a request ending can
 *    tell which of its bytes another request changed meanwhile.
 *  - the backend is tests/unit/fake-backend.c (disk, counters, one-shot
 *    faults), wrapped by w_* below, which also keeps durable[]: the disk
 *    as of the last successful backend flush, plus FUA writes.  The fake
 *    has no volatile cache of its own; durable[] is what survives a crash.
 *  - held[]: write-back runs captured by the submit hook, completed only
 *    when the input says so (copying the data to the fake disk first, or
 *    with an injected -EIO/-ENOSPC).
 *  - jobs[]: slot 0 runs a request of the main sequence, slots 1 and 2
 *    are the workers.  Each slot has its own thread.  A job's backend
 *    calls (read, write, trim/zero, flush; chosen by the input when a
 *    worker starts) can be parked in the w_* wrapper until the input
 *    releases them: that is how a request is stopped between its passes
 *    (a read between listing its missing sectors and installing them,
 *    a write filling a partial sector, a FUA write's backend write, a
 *    TRIM's backend call, a flush's backend flush).
 *
 * Scheduling, without sleeps.  After every step the main thread waits
 * (sched_yield polling, bounded) until each running job has finished
 * or is blocked: parked here, or asleep in a condition wait of the core
 * that no broadcast has ended yet (see "Who sleeps": exact, where
 * cache_get_stats' waiting_* counters keep a woken thread counted until
 * it runs; they name what a job waits for in traces and hang reports).
 * A job seen throttled or waiting for a frame then gets the kick's
 * write-back from the main thread.  A request of the main sequence runs on the main thread when no job is
 * running (completing first, as before, the held runs its sectors wait
 * for), otherwise on slot 0, and then it and a "join worker k" step
 * resolve: while the job is blocked, complete a held run (which, and ok
 * or failed: from the input), else release a parked call, else (a
 * throttled writer or one waiting for a frame) write everything back;
 * if nothing is left to give and the job stays blocked, that is a hang:
 * abort.  A flush, settle or full-disk read of the main sequence joins
 * both workers first.  The kick hook does work only on the main thread
 * (a kick from a job thread is left to the resolver).
 *
 * The model of concurrency.  A request spans from its start step to the
 * step at which the main thread sees it finished.  At its end a write
 * or zero sets its bytes, except that a byte another request changed
 * during its span becomes EITHER (both values) or UNDEF (more).  A read
 * accepts, at a byte that some request changed or was changing during
 * its span, the value at its start, the value of any such request (a
 * trim or a failed request: anything) or the value now; elsewhere the
 * value of the model.  A FUA write or zero must be in durable[] at its
 * reply, and a write-through one on the disk, at every byte of its range
 * that no other request touched during its span or is touching now; a
 * flush that returns 0, at every byte that nobody changed since the
 * flush started and no request in flight touches.
 *
 * Checks.
 *  - every read as above;
 *  - cache_flush returning 0: durable[] equals the model at every
 *    defined byte (main sequence; a worker's flush as above), and the
 *    disk equals durable[]; it must return an error if a write-back
 *    error happened since the previous flush (reported once; unless a
 *    worker's flush may have taken it), and it may fail only if one did
 *    or the backend flush failed; after a failure every byte still
 *    reads back equal to the model, and with faults off a later flush
 *    succeeds and makes the disk equal;
 *  - a FUA write (or zero) that returns 0 is durable on return; in
 *    write-through mode every write is on the disk on return;
 *  - requests fail only when a fault fired during them (or write-back
 *    was failing: a throttled writer then gets its error);
 *  - no two runs in flight overlap (invariant 3), no backend write, trim
 *    or zero overlaps a run in flight or another such call in progress
 *    (3, 8), no access outside the disk;
 *  - no job stays blocked once nothing is left that could wake it;
 *  - cache_debug_check after every step; with no job running,
 *    statistics: D and W bytes each within the V bytes, V bytes within
 *    the resident pages, resident pages within the total (D + W may pass
 *    the cache size: REDIRTIED counts twice), write-back bytes equal to
 *    the held runs, runs in flight equal to the held runs, nobody
 *    waiting;
 *  - at the end, with faults off: flush (or, in unsafe mode, write-back
 *    until nothing is dirty), nothing left dirty, the disk equals the model.
 *
 * With no job running nothing may block the main thread: every wait in
 * the core is for a run that only this thread can complete.  So
 *  - before cache_flush every held run is completed, and flush runs with
 *    the default synchronous submit (cache_set_submit (c, NULL, NULL));
 *  - before a FUA or write-through write, a trim or a zero on the main
 *    thread, the held runs overlapping its sectors are completed;
 *  - the kick hook, which the core calls when a writer is throttled or
 *    no frame can be evicted, writes everything back synchronously (or,
 *    when armed by the input and only for throttling, fails it all, so
 *    that the throttled writer gets the error).
 *
 * What it does not do: timing (expired write-back uses expire_ms = 0
 * only), or partial backend I/O.  FUZZ_TRACE=1 in the environment prints
 * every operation, which turns a crash input into a readable reproducer.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cache.h"
#include "cache-debug.h"
#include "fake-backend.h"

/* Linked with -Wl,--wrap=pthread_cond_wait etc.: see "Who sleeps". */
int __real_pthread_cond_wait (pthread_cond_t *cv, pthread_mutex_t *m);
int __real_pthread_cond_timedwait (pthread_cond_t *cv, pthread_mutex_t *m,
                                   const struct timespec *ts);
int __real_pthread_cond_broadcast (pthread_cond_t *cv);
int __real_pthread_cond_signal (pthread_cond_t *cv);
int __wrap_pthread_cond_wait (pthread_cond_t *cv, pthread_mutex_t *m);
int __wrap_pthread_cond_timedwait (pthread_cond_t *cv, pthread_mutex_t *m,
                                   const struct timespec *ts);
int __wrap_pthread_cond_broadcast (pthread_cond_t *cv);
int __wrap_pthread_cond_signal (pthread_cond_t *cv);

/* The model's byte loops are not what is being fuzzed: without this,
 * their comparisons dominate the run time and flood libFuzzer's
 * comparison tables.  Not inlined: in an instrumented caller they would
 * be instrumented again.
 */
#ifdef __clang__
#define NO_COVERAGE __attribute__ ((no_sanitize ("coverage"), noinline))
#else
#define NO_COVERAGE
#endif

#define KiB 1024u
#define MAX_OPS 400
#define MAX_HELD 4096
#define MAX_REQ (256 * KiB)     /* longest request of pick_range */
#define NSLOTS 3                /* 0: main sequence; 1, 2: workers */
#define MAX_EV 16               /* changes a racing read remembers */
#define MAX_IO 16               /* backend calls in progress */
#define MAX_PARKED 8

enum { UNDEF = 0, DEF = 1, EITHER = 2 };

/* ---- input decoding ---- */

static const uint8_t *in_p;
static size_t in_n;

static uint8_t
in_u8 (void)
{
  if (in_n == 0)
    return 0;
  in_n--;
  return *in_p++;
}

static uint32_t
in_u16 (void)
{
  uint32_t v = in_u8 ();
  return v | (uint32_t) in_u8 () << 8;
}

static uint32_t
in_u32 (void)
{
  uint32_t v = in_u16 ();
  return v | in_u16 () << 16;
}

/* ---- state ---- */

enum jkind { J_READ, J_WRITE, J_ZERO, J_TRIM, J_FLUSH, J_PREFETCH };
static const char *const jkind_name[] = {
  "read", "write", "zero", "trim", "flush", "prefetch",
};

/* A value some request wrote (or is writing) over part of a read. */
enum ev_kind { EV_DATA, EV_ZERO, EV_WILD };
struct ev {
  uint64_t off;
  uint32_t len;
  enum ev_kind kind;
  uint8_t *data;                /* EV_DATA: len bytes, malloc'd */
};

enum { J_IDLE, J_RUN, J_DONE };

struct job {
  /* Set before the job starts. */
  enum jkind kind;
  uint64_t off;
  uint32_t len;
  uint32_t flags;
  unsigned park;                /* backend calls to park: 1 << fake_op */
  uint8_t *data;                /* write data or read buffer, MAX_REQ */

  /* Handoff with the slot's thread. */
  _Atomic int state;
  int result;
  pthread_cond_t go;
  pthread_t th;
  bool has_thread;

  /* Model bookkeeping (main thread only). */
  bool active;                  /* between job_begin and job_end */
  bool conc;                    /* another job was active meanwhile */
  uint64_t seq0;                /* F.seq at the start */
  uint64_t fe;                  /* fault count at the start */
  bool pend0;                   /* flush: error pending at the start */
  bool snapped;                 /* read: snap_* hold the start state */
  uint8_t *snap_model, *snap_alt, *snap_st;
  struct ev ev[MAX_EV];
  unsigned nev;
  bool ev_overflow;
};

/* A backend call in progress (for the overlap checks). */
struct io {
  bool used;
  bool write;                   /* else a trim or zero */
  uint64_t off;
  uint32_t len;
};

struct parked {
  int slot;
  enum fake_op op;
  uint64_t off;
  uint32_t len;
  bool go;
};

struct fz {
  struct cache *c;
  struct fake *f;
  struct cache_config cfg;
  struct cache_backend_ops ops;
  uint64_t size;
  uint32_t ss, ps;
  uint64_t dirty_limit;

  uint8_t *model, *st, *alt, *durable, *buf, *disk;

  /* Shared with the job threads: under mu. */
  struct cache_run *held[MAX_HELD];
  size_t nheld;
  struct io io[MAX_IO];
  struct parked *parked[MAX_PARKED];
  unsigned nparked;
  bool sync_submit;           /* submit hook completes runs in place */
  int sync_err;               /* ... with this error (0: real write) */
  uint64_t fail_events;       /* injected failures that fired */
  uint64_t flush_fails;       /* backend flushes that failed */
  bool err_pending;           /* write-back error since the last flush */
  bool wb_failing;            /* the last run failed */

  bool in_kick;
  int kick_fail;              /* armed: next throttling kick fails */
  bool err_maybe;             /* a worker's flush may have taken an error */

  unsigned nactive;           /* jobs between job_begin and job_end */
  uint64_t last_off;          /* of the previous request, for overlaps */

  unsigned step;
  unsigned full_reads;        /* full-disk read ops so far */
  const char *what;
  bool trace;
  bool verbose;
};

static struct fz F;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t park_cv = PTHREAD_COND_INITIALIZER;
static struct job jobs[NSLOTS];
/* Global across inputs, never reset: a stale modseq[] is always older
 * than any job that starts later.
 */
static uint64_t seq = 1;
static uint64_t *modseq;
static uint64_t *blkseq;        /* max of modseq[] per 4 KiB block */
#define BLK_SHIFT 12
static _Thread_local int tl_slot;  /* 0: main thread; k + 1: slot k */

static void __attribute__ ((noreturn, format (printf, 1, 2)))
die (const char *fmt, ...)
{
  va_list ap;

  fprintf (stderr, "fuzz-cache: step %u (%s)%s: ", F.step,
           F.what ? F.what : "-", tl_slot ? " [job thread]" : "");
  va_start (ap, fmt);
  vfprintf (stderr, fmt, ap);
  va_end (ap);
  fprintf (stderr, "\n  config: size=%" PRIu64 " page=%u sector=%u "
           "cache=%" PRIu64 " mode=%d ratios=%u/%u batch=%u trim/zero=%d\n",
           F.size, F.ps, F.ss, F.cfg.cache_size, (int) F.cfg.mode,
           F.cfg.dirty_background_ratio, F.cfg.dirty_ratio,
           F.cfg.batch_bytes, F.ops.trim != NULL);
  for (int k = 0; k < NSLOTS; k++)
    if (jobs[k].active)
      fprintf (stderr, "  job %d: %s %" PRIu64 "+%u flags=%#x state=%d\n", k,
               jkind_name[jobs[k].kind], jobs[k].off, jobs[k].len,
               jobs[k].flags, atomic_load (&jobs[k].state));
  abort ();
}

#define CHECK(cond, ...) do { if (!(cond)) die (__VA_ARGS__); } while (0)

static void
trace (const char *fmt, ...)
{
  va_list ap;

  if (!F.trace)
    return;
  va_start (ap, fmt);
  fprintf (stderr, "  [%u] ", F.step);
  vfprintf (stderr, fmt, ap);
  fprintf (stderr, "\n");
  va_end (ap);
}

static void
log_fn (void *opaque, enum cache_log_level level, const char *fmt, va_list ap)
{
  (void) opaque;
  /* Failed write-back and flushes are what the input asked for. */
  if (!F.verbose && (level == CACHE_LOG_DEBUG ||
                     strncmp (fmt, "write-back of", 13) == 0 ||
                     strncmp (fmt, "flush failed", 12) == 0))
    return;
  fprintf (stderr, "subpage: ");
  vfprintf (stderr, fmt, ap);
  fprintf (stderr, "\n");
}

static bool
overlaps (uint64_t a, uint64_t an, uint64_t b, uint64_t bn)
{
  return a < b + bn && b < a + an;
}

/* mu held.  Index of a held run overlapping [off, off+n), or -1. */
static long
held_overlapping (uint64_t off, uint64_t n)
{
  for (size_t i = 0; i < F.nheld; i++)
    if (overlaps (off, n, cache_run_offset (F.held[i]),
                  cache_run_length (F.held[i])))
      return (long) i;
  return -1;
}

/* ---- backend: the fake, plus durable[], overlap checks, parking ---- */

/* mu held.  Registers a backend write, trim or zero in progress; it
 * must not overlap a run in flight, nor a write another one (invariants
 * 3, 8).  Two trims or zeroes may: the client sent both at once, and
 * either order is right.
 */
static int
io_begin (const char *what, uint64_t off, uint32_t n)
{
  bool write = what[0] == 'w';

  CHECK (held_overlapping (off, n) < 0,
         "backend %s %" PRIu64 "+%u overlaps a run in flight", what, off, n);
  for (int i = 0; i < MAX_IO; i++)
    CHECK (!F.io[i].used || (!write && !F.io[i].write) ||
           !overlaps (off, n, F.io[i].off, F.io[i].len),
           "backend %s %" PRIu64 "+%u overlaps a backend %s in progress at %"
           PRIu64 "+%u", what, off, n, F.io[i].write ? "write" : "trim/zero",
           F.io[i].off, F.io[i].len);
  for (int i = 0; i < MAX_IO; i++)
    if (!F.io[i].used) {
      F.io[i] = (struct io) { .used = true, .write = write, .off = off,
                              .len = n };
      return i;
    }
  die ("too many backend calls in progress");
}

/* mu held.  Parks the calling job thread if its job asked for it. */
static void
maybe_park (enum fake_op op, uint64_t off, uint32_t n)
{
  struct parked pk = { .slot = tl_slot - 1, .op = op, .off = off, .len = n };
  struct job *J;

  if (tl_slot == 0)
    return;
  J = &jobs[tl_slot - 1];
  if (!(J->park & (1u << op)) || F.nparked == MAX_PARKED)
    return;
  J->park &= ~(1u << op);
  F.parked[F.nparked++] = &pk;
  while (!pk.go)
    __real_pthread_cond_wait (&park_cv, &mu);
}

static int
w_pread (void *o, void *buf, uint32_t count, uint64_t off)
{
  int r;

  pthread_mutex_lock (&mu);
  maybe_park (FAKE_READ, off, count);
  r = fake_ops.pread (o, buf, count, off);
  if (r)
    F.fail_events++;
  pthread_mutex_unlock (&mu);
  return r;
}

static int
w_pwrite (void *o, const void *buf, uint32_t count, uint64_t off,
          uint32_t flags)
{
  int r, k;

  pthread_mutex_lock (&mu);
  k = io_begin ("write", off, count);
  maybe_park (FAKE_WRITE, off, count);
  r = fake_ops.pwrite (o, buf, count, off, flags);
  F.io[k].used = false;
  if (r) {
    F.fail_events++;
    F.err_pending = true;     /* every backend write is a run: recorded */
  }
  else if (flags & CACHE_FUA)
    memcpy (F.durable + off, buf, count);
  F.wb_failing = r != 0;
  pthread_mutex_unlock (&mu);
  return r;
}

static int
w_flush (void *o)
{
  int r;

  pthread_mutex_lock (&mu);
  maybe_park (FAKE_FLUSH, 0, 0);
  r = fake_ops.flush (o);
  if (r) {
    F.fail_events++;
    F.flush_fails++;
  }
  else
    fake_disk_read (F.f, F.durable, F.size, 0);
  pthread_mutex_unlock (&mu);
  return r;
}

static int
w_discard (void *o, uint32_t count, uint64_t off, uint32_t flags, bool zero)
{
  int r, k;

  pthread_mutex_lock (&mu);
  k = io_begin (zero ? "zero" : "trim", off, count);
  maybe_park (zero ? FAKE_ZERO : FAKE_TRIM, off, count);
  r = zero ? fake_ops.zero (o, count, off, flags)
           : fake_ops.trim (o, count, off, flags);
  F.io[k].used = false;
  if (r)
    F.fail_events++;
  else if (flags & CACHE_FUA)
    fake_disk_read (F.f, F.durable + off, count, off);
  pthread_mutex_unlock (&mu);
  return r;
}

static int
w_trim (void *o, uint32_t count, uint64_t off, uint32_t flags)
{
  return w_discard (o, count, off, flags, false);
}

static int
w_zero (void *o, uint32_t count, uint64_t off, uint32_t flags)
{
  return w_discard (o, count, off, flags, true);
}

/* ---- runs ---- */

static void
submit (void *opaque, struct cache *c, struct cache_run *run)
{
  uint64_t off = cache_run_offset (run);
  uint32_t len = cache_run_length (run);
  bool sync;
  int err;

  (void) opaque;
  CHECK (len > 0 && off < F.size && len <= F.size - off && off % F.ss == 0,
         "bad run %" PRIu64 "+%u", off, len);
  pthread_mutex_lock (&mu);
  sync = F.sync_submit;
  err = F.sync_err;
  if (sync && err) {
    F.fail_events++;
    F.err_pending = true;
    F.wb_failing = true;
  }
  if (!sync) {
    CHECK (held_overlapping (off, len) < 0,
           "run %" PRIu64 "+%u overlaps a run in flight (invariant 3)", off,
           len);
    for (int i = 0; i < MAX_IO; i++)
      CHECK (!F.io[i].used || !overlaps (off, len, F.io[i].off, F.io[i].len),
             "run %" PRIu64 "+%u overlaps a backend write, trim or zero in "
             "progress", off, len);
    CHECK (F.nheld < MAX_HELD, "too many runs in flight");
    F.held[F.nheld++] = run;
  }
  pthread_mutex_unlock (&mu);
  if (sync) {
    if (err)
      cache_run_done (c, run, err);
    else
      cache_run_io (c, run);
  }
}

static size_t
nheld (void)
{
  size_t n;

  pthread_mutex_lock (&mu);
  n = F.nheld;
  pthread_mutex_unlock (&mu);
  return n;
}

/* Completes held run I: ERR injected, or the real write (which may hit
 * an armed fault).
 */
static void
complete (size_t i, int err)
{
  struct cache_run *run;

  pthread_mutex_lock (&mu);
  if (i >= F.nheld) {
    pthread_mutex_unlock (&mu);
    return;
  }
  run = F.held[i];
  memmove (&F.held[i], &F.held[i + 1], (F.nheld - i - 1) * sizeof F.held[0]);
  F.nheld--;
  if (err) {
    F.fail_events++;
    F.err_pending = true;
    F.wb_failing = true;
  }
  pthread_mutex_unlock (&mu);
  trace ("complete run %" PRIu64 "+%u err=%d", cache_run_offset (run),
         cache_run_length (run), err);
  if (!err)
    err = w_pwrite (F.f, cache_run_data (run), cache_run_length (run),
                    cache_run_offset (run), cache_run_flags (run));
  cache_run_done (F.c, run, err);
}

static int
pick_err (uint8_t b)
{
  switch (b & 7) {
  case 1: return -EIO;
  case 2: return -ENOSPC;
  default: return 0;
  }
}

/* Completes the held runs overlapping [off, off+n), in an order and with
 * results chosen by the input.
 */
static void
complete_overlapping (uint64_t off, uint64_t n)
{
  long i;

  for (;;) {
    pthread_mutex_lock (&mu);
    i = held_overlapping (off, n);
    pthread_mutex_unlock (&mu);
    if (i < 0)
      break;
    complete ((size_t) i, pick_err (in_u8 ()));
  }
}

static void
complete_all_input (void)
{
  size_t n;

  while ((n = nheld ()) > 0) {
    uint8_t b = in_u8 ();
    complete (b % n, pick_err (in_u8 ()));
  }
}

/* Writes everything back, synchronously, retrying runs that hit a fault. */
static void
drain (void)
{
  bool save;
  unsigned i;

  while (nheld () > 0)
    complete (0, 0);
  pthread_mutex_lock (&mu);
  save = F.sync_submit;
  F.sync_submit = true;
  pthread_mutex_unlock (&mu);
  for (i = 0; i < 100000; i++) {
    int n = cache_writeback (F.c, CACHE_WB_BACKGROUND, 0);
    CHECK (n >= 0, "cache_writeback: %d", n);
    if (n == 0)
      break;
  }
  CHECK (i < 100000, "write-back does not converge");
  pthread_mutex_lock (&mu);
  F.sync_submit = save;
  pthread_mutex_unlock (&mu);
}

/* What the kick hook does on the main thread: write everything back
 * (or fail it, when armed and FULL is false).
 */
static void
kick_work (bool full, bool over)
{
  bool save;

  F.in_kick = true;
  if (!full && F.kick_fail) {
    /* Throttled writer while write-back fails: it must get the error. */
    int err = F.kick_fail;
    trace ("kick: fail write-back with %d", err);
    F.kick_fail = 0;
    while (nheld () > 0)
      complete (0, err);
    pthread_mutex_lock (&mu);
    save = F.sync_submit;
    F.sync_submit = true;
    F.sync_err = err;
    pthread_mutex_unlock (&mu);
    cache_writeback (F.c, CACHE_WB_BACKGROUND, 0);
    pthread_mutex_lock (&mu);
    F.sync_err = 0;
    F.sync_submit = save;
    pthread_mutex_unlock (&mu);
  }
  else {
    trace ("kick: drain (full=%d over=%d)", full, over);
    drain ();
  }
  F.in_kick = false;
}

static void
kick (void *opaque)
{
  struct cache_stats st;
  bool full, over;

  (void) opaque;
  if (F.in_kick || tl_slot != 0)
    return;                     /* a job's kick: the resolver's business */
  cache_get_stats (F.c, &st);
  full = st.pages_resident == st.pages_total;
  /* The throttle's test: pages holding a D or W sector, at full size. */
  over = st.dirty_pages * F.ps >= F.dirty_limit;
  if (!full && !over)
    return;                     /* background hint: held runs stay held */
  kick_work (full, over);
}

/* ---- model ---- */

static void NO_COVERAGE
gen_data (uint8_t *p, uint32_t n, uint64_t s)
{
  uint64_t x = s * UINT64_C (0x9E3779B97F4A7C15) + 1;
  uint32_t i;

  for (i = 0; i < n; i += 8) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    if (n - i >= 8)
      memcpy (p + i, &x, 8);
    else
      memcpy (p + i, &x, n - i);
  }
}

/* Number of leading bytes of P[0..n) equal to V. */
static uint64_t NO_COVERAGE
span_eq (const uint8_t *p, uint64_t n, uint8_t v)
{
  uint64_t i = 0, w, vv = v * UINT64_C (0x0101010101010101);

  while (i + 8 <= n && (memcpy (&w, p + i, 8), w == vv))
    i += 8;
  while (i < n && p[i] == v)
    i++;
  return i;
}

/* First byte where A and B (N bytes) differ; they must differ. */
static uint64_t NO_COVERAGE
first_diff (const uint8_t *a, const uint8_t *b, uint64_t n)
{
  uint64_t i = 0;

  while (i < n && a[i] == b[i])
    i++;
  return i;
}

/* Does the state (st, model, alt) accept value X? */
static inline __attribute__ ((always_inline)) bool
accepts (uint8_t s, uint8_t m, uint8_t a, uint8_t x)
{
  return s == UNDEF || x == m || (s == EITHER && x == a);
}

/* Compares BUF (what the cache returned for [off, off+n)) with the
 * model; EITHER and UNDEF bytes become defined with what was read.
 */
static void NO_COVERAGE
model_check_read (const uint8_t *buf, uint64_t off, uint64_t n, const char *src)
{
  for (uint64_t i = 0, k; i < n; i += k) {
    uint8_t s = F.st[off + i];
    k = span_eq (F.st + off + i, n - i, s);
    if (s == DEF) {
      if (memcmp (buf + i, F.model + off + i, k) != 0) {
        uint64_t j = i + first_diff (buf + i, F.model + off + i, k);
        die ("%s: byte %" PRIu64 " is %#x, model says %#x", src, off + j,
             buf[j], F.model[off + j]);
      }
      continue;
    }
    if (s == EITHER)
      for (uint64_t j = i; j < i + k; j++)
        CHECK (accepts (s, F.model[off + j], F.alt[off + j], buf[j]),
               "%s: byte %" PRIu64 " is %#x, model says %#x or %#x", src,
               off + j, buf[j], F.model[off + j], F.alt[off + j]);
    memcpy (F.model + off + i, buf + i, k);
    memset (F.st + off + i, DEF, k);
  }
}

/* Does IMG (a whole-disk image) hold what the model allows at every
 * byte of [off, off+n)?
 */
static void NO_COVERAGE
check_image (const uint8_t *img, uint64_t off, uint64_t n, const char *what)
{
  for (uint64_t i = off, k; i < off + n; i += k) {
    uint8_t s = F.st[i];
    k = span_eq (F.st + i, off + n - i, s);
    if (s == DEF && memcmp (img + i, F.model + i, k) != 0) {
      uint64_t j = i + first_diff (img + i, F.model + i, k);
      die ("%s: byte %" PRIu64 " is %#x, model says %#x", what, j, img[j],
           F.model[j]);
    }
    if (s == EITHER)
      for (uint64_t j = i; j < i + k; j++)
        CHECK (accepts (s, F.model[j], F.alt[j], img[j]),
               "%s: byte %" PRIu64 " is %#x, model says %#x or %#x", what, j,
               img[j], F.model[j], F.alt[j]);
  }
}

static void
read_all_check (const char *why)
{
  uint64_t fe = F.fail_events;
  int r = cache_read (F.c, F.buf, (uint32_t) F.size, 0);

  CHECK (r == 0 || F.fail_events > fe, "full read (%s): %d with no fault",
         why, r);
  if (r == 0)
    model_check_read (F.buf, 0, F.size, why);
}

/* ---- jobs: the model's side ---- */

static bool
is_modifier (enum jkind k)
{
  return k == J_WRITE || k == J_ZERO || k == J_TRIM;
}

static bool
is_reader (enum jkind k)
{
  return k == J_READ;
}

/* Records in read job R that [off, off+len) takes (or took) the value
 * of KIND (DATA: data, from offset off).  The first record snapshots
 * the state of R's range: nothing changed it since R started.
 */
static void NO_COVERAGE
ev_add (struct job *R, uint64_t off, uint32_t len, enum ev_kind kind,
        const uint8_t *data)
{
  uint64_t lo = off > R->off ? off : R->off;
  uint64_t hi = off + len < R->off + R->len ? off + len : R->off + R->len;
  struct ev *e;

  if (lo >= hi)
    return;
  if (!R->snapped) {
    memcpy (R->snap_model, F.model + R->off, R->len);
    memcpy (R->snap_alt, F.alt + R->off, R->len);
    memcpy (R->snap_st, F.st + R->off, R->len);
    R->snapped = true;
  }
  if (R->nev == MAX_EV) {
    R->ev_overflow = true;      /* then anything goes where it overlaps */
    kind = EV_WILD;
    e = &R->ev[MAX_EV - 1];
    if (e->kind == EV_DATA)
      free (e->data);
    lo = lo < e->off ? lo : e->off;
    hi = hi > e->off + e->len ? hi : e->off + e->len;
    *e = (struct ev) { .off = lo, .len = (uint32_t) (hi - lo),
                       .kind = EV_WILD };
    return;
  }
  e = &R->ev[R->nev++];
  *e = (struct ev) { .off = lo, .len = (uint32_t) (hi - lo), .kind = kind };
  if (kind == EV_DATA) {
    e->data = malloc (hi - lo);
    if (!e->data)
      abort ();
    memcpy (e->data, data + (lo - off), hi - lo);
  }
}

/* What modifier job M writes, as an event for reader R. */
static void
ev_from_job (struct job *R, const struct job *M)
{
  switch (M->kind) {
  case J_WRITE: ev_add (R, M->off, M->len, EV_DATA, M->data); break;
  case J_ZERO: ev_add (R, M->off, M->len, EV_ZERO, NULL); break;
  default: ev_add (R, M->off, M->len, EV_WILD, NULL); break;
  }
}

static void
ev_clear (struct job *R)
{
  for (unsigned i = 0; i < R->nev; i++)
    if (R->ev[i].kind == EV_DATA)
      free (R->ev[i].data);
  R->nev = 0;
  R->snapped = false;
  R->ev_overflow = false;
}

/* The ranges of the active modifiers other than J, into LO[]/HI[]. */
static int
active_ranges (const struct job *J, uint64_t *lo, uint64_t *hi)
{
  int n = 0;

  for (int k = 0; k < NSLOTS; k++) {
    const struct job *M = &jobs[k];
    if (M != J && M->active && is_modifier (M->kind)) {
      lo[n] = M->off;
      hi[n] = M->off + M->len;
      n++;
    }
  }
  return n;
}

static inline __attribute__ ((always_inline)) bool
in_ranges (uint64_t b, int n, const uint64_t *lo, const uint64_t *hi)
{
  for (int i = 0; i < n; i++)
    if (b >= lo[i] && b < hi[i])
      return true;
  return false;
}

static void
job_begin (struct job *J)
{
  J->seq0 = ++seq;
  pthread_mutex_lock (&mu);
  J->fe = F.fail_events - (F.wb_failing ? 1 : 0);
  J->pend0 = F.err_pending;
  pthread_mutex_unlock (&mu);
  J->conc = false;
  ev_clear (J);
  for (int k = 0; k < NSLOTS; k++) {
    struct job *O = &jobs[k];
    if (O == J || !O->active)
      continue;
    O->conc = J->conc = true;
    if (is_reader (O->kind) && is_modifier (J->kind))
      ev_from_job (O, J);
    if (is_reader (J->kind) && is_modifier (O->kind))
      ev_from_job (J, O);
  }
  J->active = true;
  F.nactive++;
  F.last_off = J->off;
}

/* Applies the successful write or zero J (SRC: its data, NULL: zeroes)
 * to the model and checks FUA and write-through on the way.
 */
static void NO_COVERAGE
apply_value (struct job *J, const uint8_t *src)
{
  uint64_t off = J->off, n = J->len, now = ++seq;
  bool fua = (J->flags & CACHE_FUA) && F.cfg.mode != CACHE_MODE_UNSAFE;
  bool wt = F.cfg.mode == CACHE_MODE_WRITETHROUGH;
  const char *what = J->kind == J_ZERO ? "zero" : "write";
  uint64_t lo[NSLOTS], hi[NSLOTS];
  int na;

  if (wt)
    fake_disk_read (F.f, F.disk + off, n, off);
  if (!J->conc) {
    if (src)
      memcpy (F.model + off, src, n);
    else
      memset (F.model + off, 0, n);
    memset (F.st + off, DEF, n);
    pthread_mutex_lock (&mu);
    if (fua)
      check_image (F.durable, off, n, J->kind == J_ZERO ?
                   "FUA zero not durable" : "FUA write not durable");
    pthread_mutex_unlock (&mu);
    if (wt)
      check_image (F.disk, off, n, J->kind == J_ZERO ?
                   "write-through zero not on disk" :
                   "write-through write not on disk");
    return;
  }
  na = active_ranges (J, lo, hi);
  pthread_mutex_lock (&mu);
  for (uint64_t i = 0; i < n; i++) {
    uint64_t b = off + i;
    uint8_t v = src ? src[i] : 0;
    bool other = modseq[b] > J->seq0;

    if (!other && !in_ranges (b, na, lo, hi)) {
      CHECK (!fua || F.durable[b] == v, "FUA %s not durable: byte %"
             PRIu64 " is %#x, the %s's is %#x", what, b, F.durable[b], what,
             v);
      CHECK (!wt || F.disk[b] == v, "write-through %s not on disk: byte %"
             PRIu64 " is %#x, the %s's is %#x", what, b, F.disk[b], what, v);
    }
    if (!other || (F.st[b] == DEF && F.model[b] == v)) {
      F.model[b] = v;
      F.st[b] = DEF;
    }
    else if (F.st[b] == DEF) {
      F.alt[b] = F.model[b];
      F.model[b] = v;
      F.st[b] = EITHER;
    }
    else
      F.st[b] = UNDEF;
    if (F.nactive > 0)
      modseq[b] = blkseq[b >> BLK_SHIFT] = now;
  }
  pthread_mutex_unlock (&mu);
}

static void NO_COVERAGE
model_undefine (uint64_t off, uint64_t n)
{
  memset (F.st + off, UNDEF, n);
  if (F.nactive > 0) {
    uint64_t now = ++seq;
    for (uint64_t i = off; i < off + n; i++)
      modseq[i] = blkseq[i >> BLK_SHIFT] = now;
  }
}

/* The end of read job J that returned BUF: see the header. */
static void NO_COVERAGE
check_racing_read (struct job *J, const uint8_t *buf)
{
  uint64_t off = J->off;
  uint8_t *cov = calloc (J->len, 1);

  if (!cov)
    abort ();
  for (unsigned e = 0; e < J->nev; e++)
    memset (cov + (J->ev[e].off - off), 1, J->ev[e].len);
  for (uint64_t i = 0, k; i < J->len; i += k) {
    bool c = cov[i];
    k = span_eq (cov + i, J->len - i, c);
    if (!c) {                   /* nobody touched these bytes */
      model_check_read (buf + i, off + i, k, "read");
      continue;
    }
    for (uint64_t j = i; j < i + k; j++) {
      uint64_t b = off + j;
      uint8_t x = buf[j];
      bool ok = accepts (J->snap_st[j], J->snap_model[j], J->snap_alt[j], x)
        || accepts (F.st[b], F.model[b], F.alt[b], x);
      for (unsigned e = 0; e < J->nev && !ok; e++) {
        const struct ev *v = &J->ev[e];
        if (b < v->off || b >= v->off + v->len)
          continue;
        ok = v->kind == EV_WILD || (v->kind == EV_ZERO && x == 0) ||
          (v->kind == EV_DATA && x == v->data[b - v->off]);
      }
      if (!ok) {
        fprintf (stderr, "racing read %" PRIu64 "+%u, byte %" PRIu64
                 ": at the start %#x (state %d, alt %#x), now %#x (state %d,"
                 " alt %#x); values of requests racing it:\n", off, J->len,
                 b, J->snap_model[j], J->snap_st[j], J->snap_alt[j],
                 F.model[b], F.st[b], F.alt[b]);
        for (unsigned e = 0; e < J->nev; e++) {
          const struct ev *v = &J->ev[e];
          if (b >= v->off && b < v->off + v->len)
            fprintf (stderr, "  %" PRIu64 "+%u %s %#x\n", v->off, v->len,
                     v->kind == EV_ZERO ? "zero" : "data",
                     v->kind == EV_DATA ? v->data[b - v->off] : 0);
        }
        die ("read racing other requests: byte %" PRIu64 " is %#x, which "
             "no order of them allows", b, x);
      }
    }
  }
  free (cov);
}

/* The end of flush job J (result 0): every byte nobody changed since J
 * started, and that no request in flight touches, is durable.
 */
static void NO_COVERAGE
check_flushed (struct job *J)
{
  uint64_t lo[NSLOTS], hi[NSLOTS];
  int na = active_ranges (J, lo, hi);

  pthread_mutex_lock (&mu);
  for (uint64_t b = 0, e; b < F.size; b = e) {
    e = ((b >> BLK_SHIFT) + 1) << BLK_SHIFT;
    if (e > F.size)
      e = F.size;
    if (blkseq[b >> BLK_SHIFT] <= J->seq0 &&
        !in_ranges (b, na, lo, hi) && !in_ranges (e - 1, na, lo, hi)) {
      bool inside = false;      /* a short range inside the block? */
      for (int i = 0; i < na; i++)
        inside |= lo[i] < e && b < hi[i];
      if (!inside) {
        check_image (F.durable, b, e - b,
                     "after a worker's flush, durable image");
        continue;
      }
    }
    for (uint64_t i = b; i < e; i++) {
      if (F.st[i] == UNDEF || modseq[i] > J->seq0 ||
          in_ranges (i, na, lo, hi))
        continue;
      CHECK (accepts (F.st[i], F.model[i], F.alt[i], F.durable[i]),
             "after a worker's flush, durable image: byte %" PRIu64
             " is %#x, model says %#x", i, F.durable[i], F.model[i]);
    }
  }
  pthread_mutex_unlock (&mu);
}

static void
job_end (struct job *J)
{
  int r = J->result;
  bool failed_ok;
  uint64_t fe;

  J->active = false;
  F.nactive--;
  pthread_mutex_lock (&mu);
  fe = F.fail_events;
  failed_ok = fe > J->fe || F.wb_failing;
  pthread_mutex_unlock (&mu);
  trace ("end of %s %" PRIu64 "+%u flags=%#x: %d", jkind_name[J->kind],
         J->off, J->len, J->flags, r);

  if (is_modifier (J->kind) && r != 0 &&
      !(r == -ENOTSUP && J->kind == J_ZERO))
    /* Failed: racing reads may have seen anything. */
    for (int k = 0; k < NSLOTS; k++)
      if (jobs[k].active && is_reader (jobs[k].kind))
        ev_add (&jobs[k], J->off, J->len, EV_WILD, NULL);

  switch (J->kind) {
  case J_READ:
  case J_PREFETCH:
    if (r) {
      CHECK (failed_ok, "%s failed (%d) with no fault", jkind_name[J->kind],
             r);
      break;
    }
    if (J->kind == J_PREFETCH)
      break;
    if (J->snapped)
      check_racing_read (J, J->data);
    else
      model_check_read (J->data, J->off, J->len, "read");
    break;

  case J_WRITE:
    if (r) {
      CHECK (failed_ok, "write failed (%d) with no fault", r);
      CHECK (r == -EIO || r == -ENOSPC, "write: unexpected error %d", r);
      model_undefine (J->off, J->len);
      break;
    }
    apply_value (J, J->data);
    break;

  case J_ZERO:
  case J_TRIM:
    if (r == -ENOTSUP) {
      CHECK (J->kind == J_ZERO && (J->flags & CACHE_FAST_ZERO) && !F.ops.zero,
             "zero: -ENOTSUP without fast zero");
      break;                    /* nothing changed */
    }
    if (r) {
      CHECK (failed_ok, "%s failed (%d) with no fault", jkind_name[J->kind],
             r);
      CHECK (r == -EIO || r == -ENOSPC, "unexpected error %d", r);
      model_undefine (J->off, J->len);
      break;
    }
    if (J->kind == J_ZERO)
      apply_value (J, NULL);
    else {
      /* TRIM: the whole sectors in the range (and a partial last sector
       * of the disk) become undefined.
       */
      uint64_t end = J->off + J->len;
      uint64_t a = (J->off + F.ss - 1) / F.ss * F.ss;
      uint64_t e = end == F.size ? F.size : end / F.ss * F.ss;
      if (a < e)
        model_undefine (a, e - a);
    }
    break;

  case J_FLUSH:
    /* Which of several flushes reports an error is not fixed. */
    pthread_mutex_lock (&mu);
    F.err_pending = false;
    pthread_mutex_unlock (&mu);
    if (F.cfg.mode == CACHE_MODE_UNSAFE) {
      CHECK (r == 0, "unsafe flush returned %d", r);
      break;
    }
    if (r == 0) {
      CHECK (!J->pend0 || J->conc || F.err_maybe, "flush succeeded after a "
             "write-back error that no flush has reported");
      check_flushed (J);
    }
    else {
      CHECK (r == -EIO || r == -ENOSPC, "flush: unexpected error %d", r);
      CHECK (J->pend0 || failed_ok || F.err_maybe,
             "flush failed (%d) with no write-back or flush error", r);
    }
    F.err_maybe = true;
    break;
  }
  ev_clear (J);
}

/* ---- jobs: threads and scheduling ---- */

/* Who sleeps, exactly.  The target is linked with
 * -Wl,--wrap=pthread_cond_wait (and timedwait, broadcast, signal), so
 * every condition wait of a job thread inside the core passes here: a
 * job thread counts as asleep from just before its wait until a
 * broadcast of that condition variable (or its own return, for a
 * timeout).  The core broadcasts only under the waiter's mutex, so a
 * registered sleeper is inside the wait when the broadcast comes, and
 * a woken thread counts as runnable from the broadcast on, not from
 * whenever the scheduler lets it run.  cache_get_stats' waiting_*
 * counters say the same, except in that window.
 */

static pthread_mutex_t slmu = PTHREAD_MUTEX_INITIALIZER;
static struct { pthread_cond_t *cv; bool asleep; } sleeper[NSLOTS];
static _Atomic unsigned nsleeping;

static void
sleep_begin (pthread_cond_t *cv)
{
  pthread_mutex_lock (&slmu);
  sleeper[tl_slot - 1].cv = cv;
  sleeper[tl_slot - 1].asleep = true;
  atomic_fetch_add (&nsleeping, 1);
  pthread_mutex_unlock (&slmu);
}

static void
sleep_end (void)
{
  pthread_mutex_lock (&slmu);
  if (sleeper[tl_slot - 1].asleep) {    /* timeout or spurious */
    sleeper[tl_slot - 1].asleep = false;
    atomic_fetch_sub (&nsleeping, 1);
  }
  pthread_mutex_unlock (&slmu);
}

int
__wrap_pthread_cond_wait (pthread_cond_t *cv, pthread_mutex_t *m)
{
  int r;

  if (tl_slot == 0)
    return __real_pthread_cond_wait (cv, m);
  sleep_begin (cv);
  r = __real_pthread_cond_wait (cv, m);
  sleep_end ();
  return r;
}

int
__wrap_pthread_cond_timedwait (pthread_cond_t *cv, pthread_mutex_t *m,
                               const struct timespec *ts)
{
  int r;

  if (tl_slot == 0)
    return __real_pthread_cond_timedwait (cv, m, ts);
  sleep_begin (cv);
  r = __real_pthread_cond_timedwait (cv, m, ts);
  sleep_end ();
  return r;
}

int
__wrap_pthread_cond_broadcast (pthread_cond_t *cv)
{
  pthread_mutex_lock (&slmu);
  for (int k = 0; k < NSLOTS; k++)
    if (sleeper[k].asleep && sleeper[k].cv == cv) {
      sleeper[k].asleep = false;
      atomic_fetch_sub (&nsleeping, 1);
    }
  pthread_mutex_unlock (&slmu);
  return __real_pthread_cond_broadcast (cv);
}

/* The core never signals; a signal wakes one waiter, not known which:
 * count them all as runnable (a sleeper left asleep would then make
 * quiesce() report a spinning job).
 */
int
__wrap_pthread_cond_signal (pthread_cond_t *cv)
{
  pthread_mutex_lock (&slmu);
  for (int k = 0; k < NSLOTS; k++)
    if (sleeper[k].asleep && sleeper[k].cv == cv) {
      sleeper[k].asleep = false;
      atomic_fetch_sub (&nsleeping, 1);
    }
  pthread_mutex_unlock (&slmu);
  return __real_pthread_cond_signal (cv);
}

static pthread_mutex_t jmu = PTHREAD_MUTEX_INITIALIZER;

static int
do_job (struct job *J)
{
  switch (J->kind) {
  case J_READ: return cache_read (F.c, J->data, J->len, J->off);
  case J_WRITE: return cache_write (F.c, J->data, J->len, J->off, J->flags);
  case J_ZERO: return cache_zero (F.c, J->len, J->off, J->flags);
  case J_TRIM: return cache_trim (F.c, J->len, J->off, J->flags);
  case J_FLUSH: return cache_flush (F.c);
  case J_PREFETCH: return cache_prefetch (F.c, J->len, J->off);
  }
  abort ();
}

static void *
slot_thread (void *arg)
{
  struct job *J = arg;

  tl_slot = (int) (J - jobs) + 1;
  for (;;) {
    pthread_mutex_lock (&jmu);
    while (atomic_load (&J->state) != J_RUN)
      __real_pthread_cond_wait (&J->go, &jmu);
    pthread_mutex_unlock (&jmu);
    J->result = do_job (J);
    atomic_store (&J->state, J_DONE);
  }
  return NULL;
}

static void
post (int k)
{
  struct job *J = &jobs[k];

  if (!J->has_thread) {
    pthread_cond_init (&J->go, NULL);
    if (pthread_create (&J->th, NULL, slot_thread, J) != 0)
      abort ();
    J->has_thread = true;
  }
  pthread_mutex_lock (&jmu);
  atomic_store (&J->state, J_RUN);
  __real_pthread_cond_signal (&J->go);
  pthread_mutex_unlock (&jmu);
}

static unsigned
nrunning (void)
{
  unsigned n = 0;

  for (int k = 0; k < NSLOTS; k++)
    n += atomic_load (&jobs[k].state) == J_RUN;
  return n;
}

/* Job threads asleep in the core, or parked here. */
static unsigned
nblocked (void)
{
  unsigned n;

  pthread_mutex_lock (&mu);
  n = F.nparked;
  pthread_mutex_unlock (&mu);
  return n + atomic_load (&nsleeping);
}

static uint64_t
now_ms (void)
{
  struct timespec ts;

  clock_gettime (CLOCK_MONOTONIC, &ts);
  return (uint64_t) ts.tv_sec * 1000 + (uint64_t) ts.tv_nsec / 1000000;
}

/* Ends the jobs that finished (in slot order). */
static void
reap (void)
{
  for (int k = 0; k < NSLOTS; k++)
    if (atomic_load (&jobs[k].state) == J_DONE) {
      atomic_store (&jobs[k].state, J_IDLE);
      job_end (&jobs[k]);
    }
}

/* Waits until every running job has finished or is blocked; a bounded
 * wait, polled.  A job that stays runnable for 10 s spins: abort.
 */
static void
quiesce_once (void)
{
  uint64_t t0 = 0;

  for (unsigned i = 0; nrunning () > nblocked (); i++) {
    if (i % 1024 == 1023) {
      if (t0 == 0)
        t0 = now_ms ();
      else if (now_ms () - t0 > 10000)
        die ("a job neither finishes nor blocks");
    }
    sched_yield ();
  }
}

/* The same, and then a job that is throttled or waits for a frame gets
 * what its kick asked for (the kick hook does nothing on a job thread):
 * everything written back, as the main thread's kick does, until it
 * runs or that no longer helps.
 */
static void
quiesce (void)
{
  for (int i = 0; i < 8; i++) {
    struct cache_stats st;

    quiesce_once ();
    if (nrunning () == 0)
      break;
    cache_get_stats (F.c, &st);
    if (st.waiting_throttle + st.waiting_page == 0)
      break;
    if (i > 0 && nheld () == 0 && st.dirty_bytes == 0)
      break;                    /* nothing more to write back */
    kick_work (st.waiting_page > 0, true);
  }
  reap ();
}

/* Releases parked call I. */
static void
release (unsigned i)
{
  pthread_mutex_lock (&mu);
  if (i < F.nparked) {
    struct parked *pk = F.parked[i];
    trace ("release parked %s %" PRIu64 "+%u of job %d",
           pk->op == FAKE_READ ? "read" : pk->op == FAKE_WRITE ? "write" :
           pk->op == FAKE_FLUSH ? "flush" : pk->op == FAKE_TRIM ? "trim" :
           "zero", pk->off, pk->len, pk->slot);
    pk->go = true;
    memmove (&F.parked[i], &F.parked[i + 1],
             (F.nparked - i - 1) * sizeof F.parked[0]);
    F.nparked--;
    __real_pthread_cond_broadcast (&park_cv);
  }
  pthread_mutex_unlock (&mu);
}

/* Runs the main thread's side until job K has ended: see the header. */
static void
join (int k)
{
  uint64_t t0 = 0;

  quiesce ();
  while (atomic_load (&jobs[k].state) == J_RUN) {
    struct cache_stats st;
    size_t n = nheld ();
    unsigned np;

    if (n > 0) {
      uint8_t b = in_u8 ();
      complete (b % n, pick_err (in_u8 ()));
      quiesce ();
      continue;
    }
    pthread_mutex_lock (&mu);
    np = F.nparked;
    pthread_mutex_unlock (&mu);
    if (np > 0) {
      release (0);
      quiesce ();
      continue;
    }
    cache_get_stats (F.c, &st);
    if (st.waiting_throttle + st.waiting_page > 0 &&
        (t0 == 0 || now_ms () - t0 < 5000)) {
      if (t0 == 0)
        t0 = now_ms ();
      kick_work (st.pages_resident == st.pages_total, true);
      quiesce ();
      continue;
    }
    /* Nothing left to give.  A blocked job here waits for a wake-up
     * that will never come; give a runnable one time (bounded).
     */
    if (t0 == 0)
      t0 = now_ms ();
    if (now_ms () - t0 > 5000) {
      cache_get_stats (F.c, &st);
      die ("hang: job %d (%s %" PRIu64 "+%u) waits with no run held and "
           "no backend call parked (waiting: idle %" PRIu64 " flush %"
           PRIu64 " throttle %" PRIu64 " page %" PRIu64 ")", k,
           jkind_name[jobs[k].kind], jobs[k].off, jobs[k].len,
           st.waiting_idle, st.waiting_flush, st.waiting_throttle,
           st.waiting_page);
    }
    sched_yield ();
    reap ();
  }
  reap ();
}

static void
join_all (void)
{
  for (int k = 1; k < NSLOTS; k++)
    if (jobs[k].active)
      join (k);
}

static bool
jobs_running (void)
{
  reap ();
  for (int k = 1; k < NSLOTS; k++)
    if (jobs[k].active)
      return true;
  return false;
}

/* Runs a request of the main sequence, set up in jobs[0]: on this
 * thread when no worker has a job (completing first what it would wait
 * for), otherwise on slot 0's thread.
 */
static void
request (void)
{
  struct job *J = &jobs[0];

  J->park = 0;
  if (!jobs_running ()) {
    bool sync = J->kind == J_ZERO || J->kind == J_TRIM ||
      (J->kind == J_WRITE && ((J->flags & CACHE_FUA) ||
                              F.cfg.mode == CACHE_MODE_WRITETHROUGH));
    if (sync) {
      uint64_t a = J->off - J->off % F.ss;
      uint64_t e = (J->off + J->len + F.ss - 1) / F.ss * F.ss;
      complete_overlapping (a, e - a);
    }
    job_begin (J);
    J->result = do_job (J);
    job_end (J);
    return;
  }
  job_begin (J);
  post (0);
  join (0);
}

/* ---- per-step invariants ---- */

static void
check_step (void)
{
  struct cache_stats st;
  struct fake_counts fc;
  uint64_t held_bytes = 0;
  bool busy = F.nactive > 0;

  CHECK (cache_debug_check (F.c), "cache_debug_check failed");
  cache_get_stats (F.c, &st);
  fake_get_counts (F.f, &fc);
  CHECK (fc.bad == 0, "backend access outside the disk");
  CHECK (st.pages_resident <= st.pages_total, "resident %" PRIu64
         " > total %" PRIu64, st.pages_resident, st.pages_total);
  if (busy)
    return;                     /* the figures move while jobs run */
  /* A REDIRTIED sector is both D and W, so dirty + write-back bytes may
   * pass the cache size; each alone stays within the valid bytes, and
   * those within the resident pages.
   */
  CHECK (st.cached_bytes <= st.pages_resident * st.page_size &&
         st.pages_resident * st.page_size <= st.cache_size,
         "cached %" PRIu64 " bytes in %" PRIu64 " resident pages, cache %"
         PRIu64, st.cached_bytes, st.pages_resident, st.cache_size);
  CHECK (st.dirty_bytes <= st.cached_bytes &&
         st.writeback_bytes <= st.cached_bytes,
         "D or W bytes beyond V bytes");
  CHECK (st.runs_in_flight == F.nheld, "runs in flight %" PRIu64
         ", held %zu", st.runs_in_flight, F.nheld);
  for (size_t i = 0; i < F.nheld; i++) {
    uint64_t len = cache_run_length (F.held[i]);
    held_bytes += (len + F.ss - 1) / F.ss * F.ss;
  }
  CHECK (st.writeback_bytes == held_bytes, "write-back bytes %" PRIu64
         ", held runs cover %" PRIu64, st.writeback_bytes, held_bytes);
  CHECK (st.dirty_pages <= st.pages_resident, "dirty pages %" PRIu64
         " > resident %" PRIu64, st.dirty_pages, st.pages_resident);
  CHECK ((st.dirty_bytes + st.writeback_bytes == 0) == (st.dirty_pages == 0),
         "dirty pages %" PRIu64 " with %" PRIu64 " D and %" PRIu64
         " W bytes", st.dirty_pages, st.dirty_bytes, st.writeback_bytes);
  CHECK (F.nheld > 0 || st.writeback_buffer_bytes == 0, "%" PRIu64
         " bytes of write-back buffers alive with no run in flight",
         st.writeback_buffer_bytes);
  CHECK (st.waiting_flush == 0 && st.waiting_throttle == 0 &&
         st.waiting_page == 0 && st.waiting_idle == 0, "someone waits");
}

/* ---- operations ---- */

/* A request range, aligned or not, short or long, sometimes near the
 * previous request's (so that racing requests overlap).
 */
static void
pick_range (uint64_t *offp, uint32_t *lenp)
{
  uint8_t k = in_u8 ();
  uint64_t off = in_u32 () % F.size;
  uint32_t max, len;

  if ((k & 0x30) == 0x30) {     /* within two sectors of the last one */
    int64_t o = (int64_t) F.last_off - 2 * (int64_t) F.ss
      + (int64_t) (off % (4 * F.ss));
    off = o < 0 ? 0 : (uint64_t) o >= F.size ? F.size - 1 : (uint64_t) o;
  }
  switch (k & 3) {
  case 0: max = 2 * F.ss; break;
  case 1: max = 2 * F.ps; break;
  case 2: max = 8 * F.ps; break;
  default: max = MAX_REQ; break;
  }
  if (max > MAX_REQ)
    max = MAX_REQ;
  len = 1 + in_u32 () % max;
  if (k & 4) {                  /* sector-aligned */
    off -= off % F.ss;
    len = (len + F.ss - 1) / F.ss * F.ss;
  }
  else if (k & 8) {             /* page-aligned */
    off -= off % F.ps;
    len = (len + F.ps - 1) / F.ps * F.ps;
  }
  if (len > MAX_REQ)
    len = MAX_REQ;
  if (len > F.size - off)
    len = (uint32_t) (F.size - off);
  *offp = off;
  *lenp = len;
}

/* Fills job J with a request of KIND from the input. */
static void
setup_job (struct job *J, enum jkind kind, uint32_t flags)
{
  J->kind = kind;
  J->flags = flags;
  J->off = J->len = 0;
  if (kind == J_FLUSH)
    return;
  pick_range (&J->off, &J->len);
  if (kind == J_ZERO || kind == J_TRIM) {
    uint8_t fb = in_u8 ();
    if (fb & 1)
      J->flags |= CACHE_FUA;
    if (kind == J_ZERO && (fb & 2))
      J->flags |= CACHE_MAY_TRIM;
    if (kind == J_ZERO && (fb & 4))
      J->flags |= CACHE_FAST_ZERO;
  }
  if (kind == J_WRITE)
    gen_data (J->data, J->len, in_u16 () | (uint64_t) F.step << 16);
  if (kind == J_READ)           /* bytes a read never filled show */
    memset (J->data, 0xa5, J->len);
}

static void
op_request (enum jkind kind, uint32_t flags)
{
  struct job *J = &jobs[0];

  setup_job (J, kind, flags);
  trace ("%s %" PRIu64 "+%u flags=%#x", jkind_name[kind], J->off, J->len,
         J->flags);
  request ();
}

/* Starts a request on worker K (if it has none). */
static void
op_start (int k, enum jkind kind, uint32_t flags)
{
  struct job *J = &jobs[k];

  reap ();
  if (J->active) {
    trace ("worker %d busy", k);
    return;
  }
  setup_job (J, kind, flags);
  J->park = in_u8 () & ((1u << FAKE_READ) | (1u << FAKE_WRITE) |
                        (1u << FAKE_FLUSH) | (1u << FAKE_TRIM) |
                        (1u << FAKE_ZERO));
  trace ("worker %d: start %s %" PRIu64 "+%u flags=%#x park=%#x", k,
         jkind_name[kind], J->off, J->len, J->flags, J->park);
  job_begin (J);
  post (k);
  quiesce ();
  if (F.trace && atomic_load (&J->state) == J_RUN) {
    struct cache_stats st;
    cache_get_stats (F.c, &st);
    trace ("worker %d blocked (waiting: idle %" PRIu64 " flush %" PRIu64
           " throttle %" PRIu64 " page %" PRIu64 "; parked %u)", k,
           st.waiting_idle, st.waiting_flush, st.waiting_throttle,
           st.waiting_page, F.nparked);
  }
}

/* Flush and check the contract.  Returns the flush's result. */
static int
do_flush (const char *why)
{
  uint64_t ff;
  bool pending, maybe;
  int r;

  join_all ();
  complete_all_input ();
  cache_set_submit (F.c, NULL, NULL);
  ff = F.flush_fails;
  r = cache_flush (F.c);
  cache_set_submit (F.c, submit, NULL);
  trace ("flush (%s): %d", why, r);

  if (F.cfg.mode == CACHE_MODE_UNSAFE) {
    CHECK (r == 0, "unsafe flush returned %d", r);
    return r;
  }
  /* A write-back error before or during this flush, not yet reported. */
  pending = F.err_pending;
  maybe = F.err_maybe;
  F.err_pending = false;
  F.err_maybe = false;
  if (r == 0) {
    CHECK (!pending || maybe, "flush succeeded after a write-back error "
           "that no flush has reported");
    check_image (F.durable, 0, F.size, "after flush, durable image");
    fake_disk_read (F.f, F.disk, F.size, 0);
    CHECK (memcmp (F.disk, F.durable, F.size) == 0,
           "after flush, disk differs from the durable image");
    return r;
  }
  CHECK (r == -EIO || r == -ENOSPC, "flush: unexpected error %d", r);
  CHECK (pending || maybe || F.flush_fails > ff,
         "flush failed (%d) with no write-back or flush error", r);
  /* Errors keep data: everything still reads back. */
  read_all_check ("read after failed flush");
  return r;
}

static void
disarm (void)
{
  for (int op = 0; op < FAKE_NR_OPS; op++)
    fake_fail_nth (F.f, (enum fake_op) op, 0, 0);
  F.kick_fail = 0;
}

/* Faults off, everything out; the disk must then equal the model. */
static void
settle (const char *why)
{
  struct cache_stats st;

  disarm ();
  join_all ();
  while (nheld () > 0)
    complete (0, 0);
  if (F.cfg.mode == CACHE_MODE_UNSAFE)
    drain ();
  else {
    bool pending = F.err_pending || F.err_maybe;
    if (do_flush (why) != 0 && pending)
      do_flush (why);           /* that one reported the old error */
    /* do_flush checked the result; it must have been a success now. */
    fake_disk_read (F.f, F.disk, F.size, 0);
    CHECK (memcmp (F.disk, F.durable, F.size) == 0,
           "%s: flush with faults off did not succeed", why);
  }
  cache_get_stats (F.c, &st);
  CHECK (st.dirty_bytes == 0 && st.writeback_bytes == 0,
         "%s: %" PRIu64 " dirty and %" PRIu64 " write-back bytes left", why,
         st.dirty_bytes, st.writeback_bytes);
  fake_disk_read (F.f, F.disk, F.size, 0);
  check_image (F.disk, 0, F.size, why);
}

static void
op_arm_fault (void)
{
  static const enum fake_op ops[] = {
    FAKE_WRITE, FAKE_WRITE, FAKE_FLUSH, FAKE_READ, FAKE_TRIM, FAKE_ZERO,
  };
  uint8_t b = in_u8 ();
  enum fake_op op = ops[b % 6];
  unsigned n = 1 + (b >> 3) % 4;
  int err = (b & 0x80) ? -ENOSPC : -EIO;

  trace ("arm fault: op %d, call %u, err %d", (int) op, n, err);
  fake_fail_nth (F.f, op, n, err);
}

/* Opcodes 0xc0..0xff: the workers.  Bits 0-2 say what, bit 3 which. */
static void
op_worker (uint8_t op)
{
  int k = 1 + ((op >> 3) & 1);

  switch (op & 7) {
  case 0: F.what = "worker FUA write"; op_start (k, J_WRITE, CACHE_FUA); break;
  case 1: F.what = "worker write"; op_start (k, J_WRITE, 0); break;
  case 2: F.what = "worker zero"; op_start (k, J_ZERO, 0); break;
  case 3: F.what = "worker trim"; op_start (k, J_TRIM, 0); break;
  case 4: F.what = "worker flush"; op_start (k, J_FLUSH, 0); break;
  case 5: F.what = "worker read"; op_start (k, J_READ, 0); break;
  case 6:
    F.what = "join worker";
    trace ("join worker %d", k);
    if (jobs[k].active)
      join (k);
    break;
  case 7: {
    unsigned n;
    uint8_t b = in_u8 ();
    F.what = "release";
    pthread_mutex_lock (&mu);
    n = F.nparked;
    pthread_mutex_unlock (&mu);
    if (n > 0) {
      release (b % n);
      quiesce ();
    }
    break;
  }
  }
}

/* ---- setup ---- */

#define MAX_DISK (2 * 1024 * KiB)
static uint8_t *model_buf, *st_buf, *alt_buf, *durable_buf, *disk_buf,
  *read_buf;

static void
alloc_once (void)
{
  if (model_buf)
    return;
  model_buf = malloc (MAX_DISK);
  st_buf = malloc (MAX_DISK);
  alt_buf = malloc (MAX_DISK);
  durable_buf = malloc (MAX_DISK);
  disk_buf = malloc (MAX_DISK);
  read_buf = malloc (MAX_DISK);
  modseq = calloc (MAX_DISK, sizeof *modseq);
  blkseq = calloc (MAX_DISK >> BLK_SHIFT, sizeof *blkseq);
  if (!model_buf || !st_buf || !alt_buf || !durable_buf || !disk_buf ||
      !read_buf || !modseq || !blkseq)
    abort ();
  for (int k = 0; k < NSLOTS; k++) {
    struct job *J = &jobs[k];
    J->data = malloc (MAX_REQ);
    J->snap_model = malloc (MAX_REQ);
    J->snap_alt = malloc (MAX_REQ);
    J->snap_st = malloc (MAX_REQ);
    if (!J->data || !J->snap_model || !J->snap_alt || !J->snap_st)
      abort ();
    memset (J->data, 0, MAX_REQ);
  }
}

static bool
setup (void)
{
  uint8_t b = in_u8 ();
  unsigned pshift, sshift;
  int err;

  memset (&F, 0, sizeof F);
  F.trace = getenv ("FUZZ_TRACE") != NULL;
  F.verbose = getenv ("FUZZ_VERBOSE") != NULL;

  /* 64 KiB .. 2 MiB, mostly small: per-input costs grow with the disk. */
  F.size = (uint64_t) 64 * KiB << ((b & 7) <= 3 ? (b & 7) : (b & 7) - 2);
  if (b & 8)                    /* not a multiple of the sector size */
    F.size -= 1 + in_u16 () % (F.size / 2);
  pshift = in_u8 () % 5;        /* 4K..64K */
  F.ps = 4096u << pshift;
  sshift = in_u8 () % (pshift + 4);   /* 512..page size */
  F.ss = 512u << sshift;
  F.cfg.size = F.size;
  F.cfg.page_size = F.ps;
  F.cfg.sector_size = F.ss;
  F.cfg.cache_size = (uint64_t) F.ps * (8 + in_u8 () % 25);
  F.cfg.mode = (enum cache_mode) (in_u8 () % 3);
  F.cfg.dirty_ratio = 1 + in_u8 () % 100;
  F.cfg.dirty_background_ratio = 1 + in_u8 () % F.cfg.dirty_ratio;
  b = in_u8 ();
  F.cfg.batch_bytes = (b & 1) ? 0 : F.ps * (1 + (b >> 1) % 8);
  F.dirty_limit = F.cfg.cache_size * F.cfg.dirty_ratio / 100;
  if (F.dirty_limit < F.ps)
    F.dirty_limit = F.ps;

  F.ops = (struct cache_backend_ops) {
    .pread = w_pread, .pwrite = w_pwrite, .flush = w_flush,
  };
  if (!(b & 0x80)) {
    F.ops.trim = w_trim;
    F.ops.zero = w_zero;
  }

  /* Allocated once, at the largest size: fresh megabytes per input
   * would cost page faults and ASan quarantine.
   */
  alloc_once ();
  F.model = model_buf;
  F.st = st_buf;
  F.alt = alt_buf;
  F.durable = durable_buf;
  F.disk = disk_buf;
  F.buf = read_buf;
  gen_data (F.model, (uint32_t) F.size, in_u8 ());
  memset (F.st, DEF, F.size);
  memcpy (F.durable, F.model, F.size);
  F.f = fake_new (F.size);
  fake_disk_write (F.f, F.model, F.size, 0);
  for (int k = 0; k < NSLOTS; k++)
    jobs[k].active = false;

  F.c = cache_create (&F.cfg, &F.ops, F.f, log_fn, NULL, &err);
  CHECK (F.c != NULL, "cache_create: %d", err);
  cache_set_submit (F.c, submit, NULL);
  cache_set_kick (F.c, kick, NULL);
  trace ("config: size=%" PRIu64 " page=%u sector=%u cache=%" PRIu64
         " mode=%d ratios=%u/%u batch=%u trim/zero=%d", F.size, F.ps, F.ss,
         F.cfg.cache_size, (int) F.cfg.mode, F.cfg.dirty_background_ratio,
         F.cfg.dirty_ratio, F.cfg.batch_bytes, F.ops.trim != NULL);
  return true;
}

static void
teardown (void)
{
  cache_destroy (F.c);
  fake_free (F.f);
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  in_p = data;
  in_n = size;
  if (size < 8)
    return 0;
  setup ();

  for (F.step = 1; in_n > 0 && F.step <= MAX_OPS; F.step++) {
    uint8_t op = in_u8 ();

    if (op >= 0xc0) {
      op_worker (op);
      check_step ();
      continue;
    }
    switch (op % 16) {
    case 0: case 1: case 2:
      F.what = "write";
      op_request (J_WRITE, 0);
      break;
    case 3:
      F.what = "FUA write";
      op_request (J_WRITE, CACHE_FUA);
      break;
    case 4: case 5:
      F.what = "read";
      op_request (J_READ, 0);
      break;
    case 6:
      F.what = "trim";
      op_request (J_TRIM, 0);
      break;
    case 7:
      F.what = "zero";
      op_request (J_ZERO, 0);
      break;
    case 8:
      F.what = "flush";
      do_flush ("op");
      break;
    case 9:
      F.what = "write-back";
      trace ("writeback background");
      cache_writeback (F.c, CACHE_WB_BACKGROUND, 0);
      quiesce ();
      break;
    case 10:
      F.what = "write-back expired";
      trace ("writeback expired");
      cache_writeback (F.c, CACHE_WB_EXPIRED, 0);
      quiesce ();
      break;
    case 11: case 12:
      F.what = "complete run";
      {
        size_t n = nheld ();
        if (n > 0) {
          uint8_t i = in_u8 ();
          complete (i % n, pick_err (in_u8 ()));
          quiesce ();
        }
      }
      break;
    case 13:
      F.what = "arm fault";
      if (op & 0x10) {
        F.kick_fail = (op & 0x20) ? -ENOSPC : -EIO;
        trace ("arm kick failure %d", F.kick_fail);
      }
      else
        op_arm_fault ();
      break;
    case 14:
      F.what = "prefetch";
      op_request (J_PREFETCH, 0);
      break;
    case 15:
      /* A full read of up to 2 MiB through a cache of 32 KiB or more
       * is costly: a few per input are enough.
       */
      F.what = (op & 0x10) ? "full read" : "settle";
      if ((op & 0x10) && F.full_reads < 3) {
        F.full_reads++;
        join_all ();
        trace ("full read");
        read_all_check ("full read");
      }
      else if (op & 0x10) {
        F.what = "read";
        op_request (J_READ, 0);
      }
      else
        settle ("settle");
      break;
    }
    check_step ();
  }

  F.what = "final";
  settle ("final");
  check_step ();
  read_all_check ("final read");
  teardown ();
  return 0;
}
