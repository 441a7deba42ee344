/* subpage: libFuzzer target for the cache core.
 *
 * What it does.  Each input is decoded into a cache configuration (a
 * small disk, page and sector size, cache size, mode, dirty ratios,
 * write-back batch size, backend with or without trim/zero) and a
 * sequence of operations: reads, writes, FUA writes, trims, zeroes,
 * prefetches, flushes, background write-back, completions of captured
 * write-back runs (ok or failed, in any order), and faults armed on the
 * backend.  After every operation the cache is checked against a flat
 * reference model of the disk and against the flush contract; any
 * mismatch calls abort(), which libFuzzer reports as a crash.
 *
 * Representation.
 *  - model[]/defined[]: what a read must return.  A byte is undefined
 *    after a TRIM of its sector or after a failed request that covered
 *    it (NBD leaves such data unspecified); any value is accepted there,
 *    and the first read of it defines it (later reads must agree).
 *  - the backend is tests/unit/fake-backend.c (disk, counters, one-shot
 *    faults), wrapped by w_* below, which also keeps durable[]: the disk
 *    as of the last successful backend flush, plus FUA writes.  The fake
 *    has no volatile cache of its own; durable[] is what survives a crash.
 *  - held[]: write-back runs captured by the submit hook, completed only
 *    when the input says so (copying the data to the fake disk first, or
 *    with an injected -EIO/-ENOSPC).
 *
 * Checks.
 *  - every read equals the model at defined bytes;
 *  - cache_flush returning 0: durable[] equals the model at every defined
 *    byte, and the disk equals durable[]; it must return an error if a
 *    write-back error happened since the previous flush (reported once),
 *    and it may fail only if one did or the backend flush failed; after a
 *    failure every byte still reads back equal to the model, and with
 *    faults off a later flush succeeds and makes the disk equal;
 *  - a FUA write (or zero) that returns 0 is durable on return; in
 *    write-through mode every write is on the disk on return;
 *  - requests fail only when a fault fired during them;
 *  - no two runs in flight overlap (invariant 3), no backend write, trim
 *    or zero overlaps a run in flight (3, 8), no access outside the disk;
 *  - cache_debug_check after every step; statistics: D and W bytes each
 *    within the V bytes, V bytes within the resident pages, resident pages
 *    within the total (D + W may pass the cache size: REDIRTIED counts twice),
 *    write-back bytes equal to the held runs, runs in flight equal to the
 *    held runs, nobody waiting;
 *  - at the end, with faults off: flush (or, in unsafe mode, write-back
 *    until nothing is dirty), nothing left dirty, the disk equals the model.
 *
 * Nothing may block: this is single-threaded, and every wait in the core
 * is for a run that only this thread can complete.  So
 *  - before cache_flush every held run is completed, and flush runs with
 *    the default synchronous submit (cache_set_submit (c, NULL, NULL));
 *  - before a FUA or write-through write, a trim or a zero, the held runs
 *    overlapping its sectors are completed (those are what it waits for);
 *  - the kick hook, which the core calls when a writer is throttled or
 *    no frame can be evicted, writes everything back synchronously (or,
 *    when armed by the input and only for throttling, fails it all, so
 *    that the throttled writer gets the error).
 *
 * What it does not do: threads (see tests/unit/test-cache-threads.c and
 * the TSan build), timing (expired write-back uses expire_ms = 0 only),
 * or partial backend I/O.  FUZZ_TRACE=1 in the environment prints every
 * operation, which turns a crash input into a readable reproducer.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache.h"
#include "fake-backend.h"

/* The model's byte loops are not what is being fuzzed: without this,
 * their comparisons dominate the run time and flood libFuzzer's
 * comparison tables.
 */
#ifdef __clang__
#define NO_COVERAGE __attribute__ ((no_sanitize ("coverage")))
#else
#define NO_COVERAGE
#endif

#define KiB 1024u
#define MAX_OPS 400
#define MAX_HELD 4096

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

struct fz {
  struct cache *c;
  struct fake *f;
  struct cache_config cfg;
  struct cache_backend_ops ops;
  uint64_t size;
  uint32_t ss, ps;
  uint64_t dirty_limit;

  uint8_t *model, *defined, *durable, *buf, *disk;

  struct cache_run *held[MAX_HELD];
  size_t nheld;

  bool sync_submit;           /* submit hook completes runs in place */
  int sync_err;               /* ... with this error (0: real write) */
  bool in_kick;
  int kick_fail;              /* armed: next throttling kick fails */

  uint64_t fail_events;       /* injected failures that fired */
  uint64_t flush_fails;       /* backend flushes that failed */
  bool err_pending;           /* write-back error since the last flush */

  unsigned step;
  unsigned full_reads;        /* full-disk read ops so far */
  const char *what;
  bool trace;
  bool verbose;
};

static struct fz F;

static void __attribute__ ((noreturn, format (printf, 1, 2)))
die (const char *fmt, ...)
{
  va_list ap;

  fprintf (stderr, "fuzz-cache: step %u (%s): ", F.step,
           F.what ? F.what : "-");
  va_start (ap, fmt);
  vfprintf (stderr, fmt, ap);
  va_end (ap);
  fprintf (stderr, "\n  config: size=%" PRIu64 " page=%u sector=%u "
           "cache=%" PRIu64 " mode=%d ratios=%u/%u batch=%u trim/zero=%d\n",
           F.size, F.ps, F.ss, F.cfg.cache_size, (int) F.cfg.mode,
           F.cfg.dirty_background_ratio, F.cfg.dirty_ratio,
           F.cfg.batch_bytes, F.ops.trim != NULL);
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

/* Index of a held run overlapping [off, off+n), or -1. */
static long
held_overlapping (uint64_t off, uint64_t n)
{
  for (size_t i = 0; i < F.nheld; i++)
    if (overlaps (off, n, cache_run_offset (F.held[i]),
                  cache_run_length (F.held[i])))
      return (long) i;
  return -1;
}

/* ---- backend: the fake, plus durable[] and overlap checks ---- */

static int
w_pread (void *o, void *buf, uint32_t count, uint64_t off)
{
  int r = fake_ops.pread (o, buf, count, off);

  if (r)
    F.fail_events++;
  return r;
}

static int
w_pwrite (void *o, const void *buf, uint32_t count, uint64_t off,
          uint32_t flags)
{
  int r;

  CHECK (held_overlapping (off, count) < 0,
         "backend write %" PRIu64 "+%u overlaps a run in flight", off, count);
  r = fake_ops.pwrite (o, buf, count, off, flags);
  if (r) {
    F.fail_events++;
    F.err_pending = true;     /* every backend write is a run: recorded */
  }
  else if (flags & CACHE_FUA)
    memcpy (F.durable + off, buf, count);
  return r;
}

static int
w_flush (void *o)
{
  int r = fake_ops.flush (o);

  if (r) {
    F.fail_events++;
    F.flush_fails++;
  }
  else
    fake_disk_read (F.f, F.durable, F.size, 0);
  return r;
}

static int
w_discard (void *o, uint32_t count, uint64_t off, uint32_t flags, bool zero)
{
  int r;

  CHECK (held_overlapping (off, count) < 0,
         "backend %s %" PRIu64 "+%u overlaps a run in flight",
         zero ? "zero" : "trim", off, count);
  r = zero ? fake_ops.zero (o, count, off, flags)
           : fake_ops.trim (o, count, off, flags);
  if (r)
    F.fail_events++;
  else if (flags & CACHE_FUA)
    fake_disk_read (F.f, F.durable + off, count, off);
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

  (void) opaque;
  CHECK (len > 0 && off < F.size && len <= F.size - off && off % F.ss == 0,
         "bad run %" PRIu64 "+%u", off, len);
  if (F.sync_submit) {
    if (F.sync_err) {
      F.fail_events++;
      F.err_pending = true;
      cache_run_done (c, run, F.sync_err);
    }
    else
      cache_run_io (c, run);
    return;
  }
  CHECK (held_overlapping (off, len) < 0,
         "run %" PRIu64 "+%u overlaps a run in flight (invariant 3)", off, len);
  CHECK (F.nheld < MAX_HELD, "too many runs in flight");
  F.held[F.nheld++] = run;
}

/* Completes held run I: ERR injected, or the real write (which may hit
 * an armed fault).
 */
static void
complete (size_t i, int err)
{
  struct cache_run *run = F.held[i];

  memmove (&F.held[i], &F.held[i + 1], (F.nheld - i - 1) * sizeof F.held[0]);
  F.nheld--;
  trace ("complete run %" PRIu64 "+%u err=%d", cache_run_offset (run),
         cache_run_length (run), err);
  if (err) {
    F.fail_events++;
    F.err_pending = true;
  }
  else
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

  while ((i = held_overlapping (off, n)) >= 0)
    complete ((size_t) i, pick_err (in_u8 ()));
}

static void
complete_all_input (void)
{
  while (F.nheld > 0) {
    uint8_t b = in_u8 ();
    complete (b % F.nheld, pick_err (in_u8 ()));
  }
}

/* Writes everything back, synchronously, retrying runs that hit a fault. */
static void
drain (void)
{
  bool save = F.sync_submit;
  unsigned i;

  while (F.nheld > 0)
    complete (0, 0);
  F.sync_submit = true;
  for (i = 0; i < 100000; i++) {
    int n = cache_writeback (F.c, CACHE_WB_BACKGROUND, 0);
    CHECK (n >= 0, "cache_writeback: %d", n);
    if (n == 0)
      break;
  }
  CHECK (i < 100000, "write-back does not converge");
  F.sync_submit = save;
}

static void
kick (void *opaque)
{
  struct cache_stats st;
  bool full, over, save;

  (void) opaque;
  if (F.in_kick)
    return;
  cache_get_stats (F.c, &st);
  full = st.pages_resident == st.pages_total;
  /* The throttle's test: pages holding a D or W sector, at full size. */
  over = st.dirty_pages * F.ps >= F.dirty_limit;
  if (!full && !over)
    return;                     /* background hint: held runs stay held */
  F.in_kick = true;
  save = F.sync_submit;
  if (!full && F.kick_fail) {
    /* Throttled writer while write-back fails: it must get the error. */
    int err = F.kick_fail;
    trace ("kick: fail write-back with %d", err);
    F.kick_fail = 0;
    while (F.nheld > 0)
      complete (0, err);
    F.sync_submit = true;
    F.sync_err = err;
    cache_writeback (F.c, CACHE_WB_BACKGROUND, 0);
    F.sync_err = 0;
    F.sync_submit = save;
  }
  else {
    trace ("kick: drain (full=%d over=%d)", full, over);
    drain ();
  }
  F.in_kick = false;
}

/* ---- model ---- */

static void NO_COVERAGE
gen_data (uint8_t *p, uint32_t n, uint64_t seed)
{
  uint64_t x = seed * UINT64_C (0x9E3779B97F4A7C15) + 1;
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

static void
model_set (uint64_t off, const void *data, uint64_t n)
{
  memcpy (F.model + off, data, n);
  memset (F.defined + off, 1, n);
}

static void
model_undefine (uint64_t off, uint64_t n)
{
  memset (F.defined + off, 0, n);
}

/* Length of the span of [off, off+n) whose bytes are all defined (D
 * true) or all undefined (D false).
 */
static uint64_t NO_COVERAGE
span (uint64_t off, uint64_t n, bool d)
{
  const uint8_t *p = F.defined + off;
  uint64_t i = 0, w;

  if (d) {
    const uint8_t *z = memchr (p, 0, n);
    return z ? (uint64_t) (z - p) : n;
  }
  while (i + 8 <= n && (memcpy (&w, p + i, 8), w == 0))
    i += 8;
  while (i < n && p[i] == 0)
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

/* Compares BUF (what the cache returned for [off, off+n)) with the
 * model; undefined bytes become defined with what was read.
 */
static void NO_COVERAGE
model_check_read (const uint8_t *buf, uint64_t off, uint64_t n, const char *src)
{
  for (uint64_t i = 0, k; i < n; i += k) {
    bool d = F.defined[off + i];
    k = span (off + i, n - i, d);
    if (!d)
      model_set (off + i, buf + i, k);
    else if (memcmp (buf + i, F.model + off + i, k) != 0) {
      uint64_t j = i + first_diff (buf + i, F.model + off + i, k);
      die ("%s: byte %" PRIu64 " is %#x, model says %#x", src, off + j,
           buf[j], F.model[off + j]);
    }
  }
}

/* Does IMG (a whole-disk image) equal the model at every defined byte
 * of [off, off+n)?
 */
static void NO_COVERAGE
check_image (const uint8_t *img, uint64_t off, uint64_t n, const char *what)
{
  for (uint64_t i = off, k; i < off + n; i += k) {
    bool d = F.defined[i];
    k = span (i, off + n - i, d);
    if (d && memcmp (img + i, F.model + i, k) != 0) {
      uint64_t j = i + first_diff (img + i, F.model + i, k);
      die ("%s: byte %" PRIu64 " is %#x, model says %#x", what, j, img[j],
           F.model[j]);
    }
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

/* ---- per-step invariants ---- */

static void
check_step (void)
{
  struct cache_stats st;
  struct fake_counts fc;
  uint64_t held_bytes = 0;

  CHECK (cache_debug_check (F.c), "cache_debug_check failed");
  cache_get_stats (F.c, &st);
  /* A REDIRTIED sector is both D and W, so dirty + write-back bytes may
   * pass the cache size; each alone stays within the valid bytes, and
   * those within the resident pages.
   */
  CHECK (st.cached_bytes <= st.pages_resident * st.page_size &&
         st.pages_resident * st.page_size <= st.cache_size,
         "cached %" PRIu64 " bytes in %" PRIu64 " resident pages, cache %"
         PRIu64, st.cached_bytes, st.pages_resident, st.cache_size);
  CHECK (st.pages_resident <= st.pages_total, "resident %" PRIu64
         " > total %" PRIu64, st.pages_resident, st.pages_total);
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
  fake_get_counts (F.f, &fc);
  CHECK (fc.bad == 0, "backend access outside the disk");
}

/* ---- operations ---- */

/* A request range, aligned or not, short or long. */
static void
pick_range (uint64_t *offp, uint32_t *lenp)
{
  uint8_t k = in_u8 ();
  uint64_t off = in_u32 () % F.size;
  uint32_t max, len;

  switch (k & 3) {
  case 0: max = 2 * F.ss; break;
  case 1: max = 2 * F.ps; break;
  case 2: max = 8 * F.ps; break;
  default: max = 256 * KiB; break;
  }
  len = 1 + in_u32 () % max;
  if (k & 4) {                  /* sector-aligned */
    off -= off % F.ss;
    len = (len + F.ss - 1) / F.ss * F.ss;
  }
  else if (k & 8) {             /* page-aligned */
    off -= off % F.ps;
    len = (len + F.ps - 1) / F.ps * F.ps;
  }
  if (len > F.size - off)
    len = (uint32_t) (F.size - off);
  *offp = off;
  *lenp = len;
}

static bool
fua_checked (uint32_t flags)
{
  return (flags & CACHE_FUA) && F.cfg.mode != CACHE_MODE_UNSAFE;
}

static void
op_write (uint32_t flags)
{
  uint64_t off, seed, fe;
  uint32_t len;
  int r;

  pick_range (&off, &len);
  seed = in_u16 () | (uint64_t) F.step << 16;
  trace ("write %" PRIu64 "+%u flags=%#x", off, len, flags);
  gen_data (F.buf, len, seed);
  if ((flags & CACHE_FUA) || F.cfg.mode == CACHE_MODE_WRITETHROUGH)
    complete_overlapping (off - off % F.ss,
                          (off + len + F.ss - 1) / F.ss * F.ss - off
                          + off % F.ss);
  fe = F.fail_events;
  r = cache_write (F.c, F.buf, len, off, flags);
  if (r) {
    CHECK (F.fail_events > fe, "write failed (%d) with no fault", r);
    CHECK (r == -EIO || r == -ENOSPC, "write: unexpected error %d", r);
    model_undefine (off, len);
    return;
  }
  model_set (off, F.buf, len);
  if (fua_checked (flags))
    check_image (F.durable, off, len, "FUA write not durable");
  if (F.cfg.mode == CACHE_MODE_WRITETHROUGH) {
    fake_disk_read (F.f, F.disk + off, len, off);
    check_image (F.disk, off, len, "write-through write not on disk");
  }
}

static void
op_read (void)
{
  uint64_t off, fe;
  uint32_t len;
  int r;

  pick_range (&off, &len);
  trace ("read %" PRIu64 "+%u", off, len);
  fe = F.fail_events;
  r = cache_read (F.c, F.buf, len, off);
  if (r) {
    CHECK (F.fail_events > fe, "read failed (%d) with no fault", r);
    return;
  }
  model_check_read (F.buf, off, len, "read");
}

static void
op_prefetch (void)
{
  uint64_t off, fe;
  uint32_t len;
  int r;

  pick_range (&off, &len);
  trace ("prefetch %" PRIu64 "+%u", off, len);
  fe = F.fail_events;
  r = cache_prefetch (F.c, len, off);
  CHECK (r == 0 || F.fail_events > fe, "prefetch failed (%d) with no fault",
         r);
}

static void
op_discard (bool zero)
{
  uint64_t off, fe, a, e, end;
  uint32_t len, flags = 0;
  uint8_t fb = in_u8 ();
  int r;

  pick_range (&off, &len);
  if (fb & 1)
    flags |= CACHE_FUA;
  if (zero && (fb & 2))
    flags |= CACHE_MAY_TRIM;
  if (zero && (fb & 4))
    flags |= CACHE_FAST_ZERO;
  end = off + len;
  trace ("%s %" PRIu64 "+%u flags=%#x", zero ? "zero" : "trim", off, len,
         flags);
  complete_overlapping (off - off % F.ss,
                        (end + F.ss - 1) / F.ss * F.ss - off + off % F.ss);
  fe = F.fail_events;
  r = zero ? cache_zero (F.c, len, off, flags)
           : cache_trim (F.c, len, off, flags);

  if (r == -ENOTSUP) {
    CHECK (zero && (flags & CACHE_FAST_ZERO) && !F.ops.zero,
           "zero: -ENOTSUP without fast zero");
    return;                     /* nothing changed */
  }
  if (r) {
    CHECK (F.fail_events > fe, "%s failed (%d) with no fault",
           zero ? "zero" : "trim", r);
    CHECK (r == -EIO || r == -ENOSPC, "unexpected error %d", r);
    model_undefine (off, len);
    return;
  }
  if (zero) {
    memset (F.model + off, 0, len);
    memset (F.defined + off, 1, len);
    if (fua_checked (flags))
      check_image (F.durable, off, len, "FUA zero not durable");
    if (F.cfg.mode == CACHE_MODE_WRITETHROUGH) {
      fake_disk_read (F.f, F.disk + off, len, off);
      check_image (F.disk, off, len, "write-through zero not on disk");
    }
    return;
  }
  /* TRIM: the whole sectors in the range (and a partial last sector of
   * the disk) become undefined.
   */
  a = (off + F.ss - 1) / F.ss * F.ss;
  e = end == F.size ? F.size : end / F.ss * F.ss;
  if (a < e)
    model_undefine (a, e - a);
}

/* Flush and check the contract. */
static void
do_flush (const char *why)
{
  uint64_t ff;
  bool pending;
  int r;

  complete_all_input ();
  cache_set_submit (F.c, NULL, NULL);
  ff = F.flush_fails;
  r = cache_flush (F.c);
  cache_set_submit (F.c, submit, NULL);
  trace ("flush (%s): %d", why, r);

  if (F.cfg.mode == CACHE_MODE_UNSAFE) {
    CHECK (r == 0, "unsafe flush returned %d", r);
    return;
  }
  /* A write-back error before or during this flush, not yet reported. */
  pending = F.err_pending;
  F.err_pending = false;
  if (r == 0) {
    CHECK (!pending, "flush succeeded after a write-back error that no "
           "flush has reported");
    check_image (F.durable, 0, F.size, "after flush, durable image");
    fake_disk_read (F.f, F.disk, F.size, 0);
    CHECK (memcmp (F.disk, F.durable, F.size) == 0,
           "after flush, disk differs from the durable image");
    return;
  }
  CHECK (r == -EIO || r == -ENOSPC, "flush: unexpected error %d", r);
  CHECK (pending || F.flush_fails > ff,
         "flush failed (%d) with no write-back or flush error", r);
  /* Errors keep data: everything still reads back. */
  read_all_check ("read after failed flush");
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
  while (F.nheld > 0)
    complete (0, 0);
  if (F.cfg.mode == CACHE_MODE_UNSAFE)
    drain ();
  else {
    bool pending = F.err_pending;
    do_flush (why);
    if (pending)                /* that one reported the old error */
      do_flush (why);
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

/* ---- setup ---- */

#define MAX_DISK (2 * 1024 * KiB)
static uint8_t *model_buf, *defined_buf, *durable_buf, *disk_buf, *read_buf;

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
  if (!model_buf) {
    model_buf = malloc (MAX_DISK);
    defined_buf = malloc (MAX_DISK);
    durable_buf = malloc (MAX_DISK);
    disk_buf = malloc (MAX_DISK);
    read_buf = malloc (MAX_DISK);
    if (!model_buf || !defined_buf || !durable_buf || !disk_buf || !read_buf)
      abort ();
  }
  F.model = model_buf;
  F.defined = defined_buf;
  F.durable = durable_buf;
  F.disk = disk_buf;
  F.buf = read_buf;
  gen_data (F.model, (uint32_t) F.size, in_u8 ());
  memset (F.defined, 1, F.size);
  memcpy (F.durable, F.model, F.size);
  F.f = fake_new (F.size);
  fake_disk_write (F.f, F.model, F.size, 0);

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

    switch (op % 16) {
    case 0: case 1: case 2:
      F.what = "write";
      op_write (0);
      break;
    case 3:
      F.what = "FUA write";
      op_write (CACHE_FUA);
      break;
    case 4: case 5:
      F.what = "read";
      op_read ();
      break;
    case 6:
      F.what = "trim";
      op_discard (false);
      break;
    case 7:
      F.what = "zero";
      op_discard (true);
      break;
    case 8:
      F.what = "flush";
      do_flush ("op");
      break;
    case 9:
      F.what = "write-back";
      trace ("writeback background");
      cache_writeback (F.c, CACHE_WB_BACKGROUND, 0);
      break;
    case 10:
      F.what = "write-back expired";
      trace ("writeback expired");
      cache_writeback (F.c, CACHE_WB_EXPIRED, 0);
      break;
    case 11: case 12:
      F.what = "complete run";
      if (F.nheld > 0) {
        uint8_t i = in_u8 ();
        complete (i % F.nheld, pick_err (in_u8 ()));
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
      op_prefetch ();
      break;
    case 15:
      /* A full read of up to 2 MiB through a cache of 32 KiB or more
       * is costly: a few per input are enough.
       */
      F.what = (op & 0x10) ? "full read" : "settle";
      if ((op & 0x10) && F.full_reads < 3) {
        F.full_reads++;
        trace ("full read");
        read_all_check ("full read");
      }
      else if (op & 0x10) {
        F.what = "read";
        op_read ();
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
