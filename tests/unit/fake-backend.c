/* subpage unit tests: a fake backend over an in-memory disk.
 *
 * Design: one struct fake holds the disk (calloc'd), the counters, the
 * event log, the fault and gate settings and the captured runs, all
 * under one mutex (f->lock) with one condition variable (f->cond) for
 * the hold gates.  Every backend call goes through do_call(): it waits
 * at the gate of its operation if that gate is closed, then decides the
 * call's fault, applies it to the disk, counts it and logs it, all in
 * one critical section, so the log order is the order in which the
 * calls took effect on the disk.
 *
 * It does not simulate a volatile write cache: data is "durable" as
 * soon as a write is applied.  Tests that care about durability check
 * the log order instead (a flush after the writes it covers).
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fake-backend.h"

struct capture {
  struct cache_run *run;
  struct fake_capture info;
};

struct fake {
  pthread_mutex_t lock;
  pthread_cond_t cond;
  unsigned char *disk;
  uint64_t size, cap; /* cap: bytes allocated */
  bool resized;       /* fake_resize was called */

  struct fake_counts counts;
  struct fake_event *log;
  size_t nlog, log_cap;

  /* Faults. */
  unsigned nth[FAKE_NR_OPS]; /* countdown; 0 = none */
  int nth_err[FAKE_NR_OPS];
  int all_err[FAKE_NR_OPS];

  /* Gates. */
  bool hold[FAKE_NR_OPS];
  unsigned tokens[FAKE_NR_OPS];
  unsigned held[FAKE_NR_OPS];

  /* Captured runs. */
  struct capture *caps;
  size_t ncaps, caps_cap;
  size_t npending;
};

static const char *
fake_op_name (enum fake_op op)
{
  switch (op) {
  case FAKE_READ: return "read";
  case FAKE_WRITE: return "write";
  case FAKE_FLUSH: return "flush";
  case FAKE_TRIM: return "trim";
  case FAKE_ZERO: return "zero";
  default: abort ();
  }
}

static void
lock (struct fake *f)
{
  if (pthread_mutex_lock (&f->lock) != 0)
    abort ();
}

static void
unlock (struct fake *f)
{
  if (pthread_mutex_unlock (&f->lock) != 0)
    abort ();
}

struct fake *
fake_new (uint64_t size)
{
  struct fake *f = calloc (1, sizeof *f);

  if (!f)
    abort ();
  f->disk = calloc (1, size ? size : 1);
  if (!f->disk)
    abort ();
  f->size = f->cap = size;
  pthread_mutex_init (&f->lock, NULL);
  pthread_cond_init (&f->cond, NULL);
  return f;
}

void
fake_free (struct fake *f)
{
  if (!f)
    return;
  pthread_cond_destroy (&f->cond);
  pthread_mutex_destroy (&f->lock);
  free (f->caps);
  free (f->log);
  free (f->disk);
  free (f);
}

uint64_t
fake_size (struct fake *f)
{
  uint64_t size;

  lock (f);
  size = f->size;
  unlock (f);
  return size;
}

void
fake_resize (struct fake *f, uint64_t size)
{
  lock (f);
  if (size > f->cap) {
    f->disk = realloc (f->disk, size);
    if (!f->disk)
      abort ();
    memset (f->disk + f->cap, 0, size - f->cap);
    f->cap = size;
  }
  if (size < f->size) /* what a shrink cuts off is gone */
    memset (f->disk + size, 0, f->size - size);
  f->size = size;
  f->resized = true;
  unlock (f);
}

static bool
in_range (struct fake *f, uint64_t off, size_t n)
{
  return off <= f->size && n <= f->size - off;
}

void
fake_disk_read (struct fake *f, void *buf, size_t n, uint64_t off)
{
  lock (f);
  if (!in_range (f, off, n))
    abort ();
  memcpy (buf, f->disk + off, n);
  unlock (f);
}

void
fake_disk_write (struct fake *f, const void *buf, size_t n, uint64_t off)
{
  lock (f);
  if (!in_range (f, off, n))
    abort ();
  memcpy (f->disk + off, buf, n);
  unlock (f);
}

bool
fake_disk_equals (struct fake *f, const void *buf, size_t n, uint64_t off)
{
  bool r;

  lock (f);
  if (!in_range (f, off, n))
    abort ();
  r = memcmp (f->disk + off, buf, n) == 0;
  unlock (f);
  return r;
}

bool
fake_disk_is_byte (struct fake *f, unsigned char byte, size_t n, uint64_t off)
{
  bool r = true;

  lock (f);
  if (!in_range (f, off, n))
    abort ();
  for (size_t i = 0; i < n; i++)
    if (f->disk[off + i] != byte) {
      r = false;
      break;
    }
  unlock (f);
  return r;
}

void
fake_get_counts (struct fake *f, struct fake_counts *out)
{
  lock (f);
  *out = f->counts;
  unlock (f);
}

void
fake_reset_counts (struct fake *f)
{
  lock (f);
  f->counts = (struct fake_counts){ 0 };
  f->nlog = 0;
  unlock (f);
}

size_t
fake_nr_events (struct fake *f)
{
  size_t n;

  lock (f);
  n = f->nlog;
  unlock (f);
  return n;
}

bool
fake_event (struct fake *f, size_t i, struct fake_event *out)
{
  bool r = false;

  lock (f);
  if (i < f->nlog) {
    *out = f->log[i];
    r = true;
  }
  unlock (f);
  return r;
}

static bool
event_matches (const struct fake_event *e, enum fake_op op, uint64_t off,
               uint32_t len)
{
  if (e->op != op || e->err != 0)
    return false;
  if (len == 0 || op == FAKE_FLUSH)
    return true;
  return e->off < off + len && off < e->off + e->len;
}

long
fake_log_first (struct fake *f, enum fake_op op, uint64_t off, uint32_t len)
{
  long r = -1;

  lock (f);
  for (size_t i = 0; i < f->nlog; i++)
    if (event_matches (&f->log[i], op, off, len)) {
      r = (long) i;
      break;
    }
  unlock (f);
  return r;
}

long
fake_log_last (struct fake *f, enum fake_op op, uint64_t off, uint32_t len)
{
  long r = -1;

  lock (f);
  for (size_t i = f->nlog; i-- > 0;)
    if (event_matches (&f->log[i], op, off, len)) {
      r = (long) i;
      break;
    }
  unlock (f);
  return r;
}

void
fake_log_dump (struct fake *f)
{
  lock (f);
  for (size_t i = 0; i < f->nlog; i++) {
    const struct fake_event *e = &f->log[i];
    fprintf (stderr, "fake log %zu: %s off=%llu len=%u flags=%#x err=%d\n", i,
             fake_op_name (e->op), (unsigned long long) e->off, e->len,
             e->flags, e->err);
  }
  unlock (f);
}

void
fake_fail_nth (struct fake *f, enum fake_op op, unsigned n, int err)
{
  lock (f);
  f->nth[op] = n;
  f->nth_err[op] = err;
  unlock (f);
}

void
fake_fail_all (struct fake *f, enum fake_op op, int err)
{
  lock (f);
  f->all_err[op] = err;
  unlock (f);
}

void
fake_hold (struct fake *f, enum fake_op op, bool on)
{
  lock (f);
  f->hold[op] = on;
  f->tokens[op] = 0;
  pthread_cond_broadcast (&f->cond);
  unlock (f);
}

void
fake_release (struct fake *f, enum fake_op op, unsigned n)
{
  lock (f);
  f->tokens[op] += n;
  pthread_cond_broadcast (&f->cond);
  unlock (f);
}

unsigned
fake_held (struct fake *f, enum fake_op op)
{
  unsigned n;

  lock (f);
  n = f->held[op];
  unlock (f);
  return n;
}

/* Called with f->lock held. */
static void
log_event (struct fake *f, enum fake_op op, uint64_t off, uint32_t len,
           uint32_t flags, int err)
{
  if (f->nlog == f->log_cap) {
    f->log_cap = f->log_cap ? 2 * f->log_cap : 256;
    f->log = realloc (f->log, f->log_cap * sizeof *f->log);
    if (!f->log)
      abort ();
  }
  f->log[f->nlog] = (struct fake_event){
    .op = op,
    .off = off,
    .len = len,
    .flags = flags,
    .err = err,
    .seq = f->nlog,
  };
  f->nlog++;
}

/* The one path of every backend call. */
static int
do_call (struct fake *f, enum fake_op op, void *rbuf, const void *wbuf,
         uint32_t count, uint64_t off, uint32_t flags)
{
  int err = 0;

  lock (f);

  /* Gate. */
  if (f->hold[op]) {
    f->held[op]++;
    while (f->hold[op] && f->tokens[op] == 0)
      pthread_cond_wait (&f->cond, &f->lock);
    if (f->hold[op])
      f->tokens[op]--;
    f->held[op]--;
  }

  /* Faults. */
  if (f->nth[op] > 0 && --f->nth[op] == 0)
    err = f->nth_err[op];
  if (err == 0 && f->all_err[op] != 0)
    err = f->all_err[op];
  if (err == 0 && op == FAKE_READ && f->resized && count > 0 &&
      !in_range (f, off, count))
    err = -ERANGE; /* as the file backend: it ends early */
  if (err == 0 && op != FAKE_FLUSH &&
      (count == 0 || !in_range (f, off, count))) {
    f->counts.bad++;
    err = -EIO;
  }

  /* Effect. */
  if (err == 0) {
    switch (op) {
    case FAKE_READ:
      memcpy (rbuf, f->disk + off, count);
      f->counts.reads++;
      f->counts.read_bytes += count;
      break;
    case FAKE_WRITE:
      memcpy (f->disk + off, wbuf, count);
      f->counts.writes++;
      f->counts.write_bytes += count;
      if (flags & CACHE_FUA)
        f->counts.fua_writes++;
      break;
    case FAKE_FLUSH: f->counts.flushes++; break;
    case FAKE_TRIM:
      /* A trimmed range reads as zeroes, so tests can check it. */
      memset (f->disk + off, 0, count);
      f->counts.trims++;
      break;
    case FAKE_ZERO:
      memset (f->disk + off, 0, count);
      f->counts.zeroes++;
      break;
    default: abort ();
    }
  }
  else if (op == FAKE_WRITE)
    f->counts.write_errors++;
  else if (op == FAKE_FLUSH)
    f->counts.flush_errors++;
  else
    f->counts.other_errors++;

  log_event (f, op, op == FAKE_FLUSH ? 0 : off, op == FAKE_FLUSH ? 0 : count,
             flags, err);
  unlock (f);
  return err;
}

static int
fake_pread (void *opaque, void *buf, uint32_t count, uint64_t off)
{
  return do_call (opaque, FAKE_READ, buf, NULL, count, off, 0);
}

static int
fake_pwrite (void *opaque, const void *buf, uint32_t count, uint64_t off,
             uint32_t flags)
{
  return do_call (opaque, FAKE_WRITE, NULL, buf, count, off, flags);
}

static int
fake_flush (void *opaque)
{
  return do_call (opaque, FAKE_FLUSH, NULL, NULL, 0, 0, 0);
}

static int
fake_trim (void *opaque, uint32_t count, uint64_t off, uint32_t flags)
{
  return do_call (opaque, FAKE_TRIM, NULL, NULL, count, off, flags);
}

static int
fake_zero (void *opaque, uint32_t count, uint64_t off, uint32_t flags)
{
  return do_call (opaque, FAKE_ZERO, NULL, NULL, count, off, flags);
}

static int64_t
fake_get_size (void *opaque)
{
  return (int64_t) fake_size (opaque);
}

const struct cache_backend_ops fake_ops = {
  .get_size = fake_get_size,
  .pread = fake_pread,
  .pwrite = fake_pwrite,
  .flush = fake_flush,
  .trim = fake_trim,
  .zero = fake_zero,
};

const struct cache_backend_ops fake_ops_no_trim_zero = {
  .pread = fake_pread,
  .pwrite = fake_pwrite,
  .flush = fake_flush,
};

/* Captures. */

void
fake_capture_submit (void *opaque, struct cache *c, struct cache_run *run)
{
  struct fake *f = opaque;

  (void) c;
  lock (f);
  if (f->ncaps == f->caps_cap) {
    f->caps_cap = f->caps_cap ? 2 * f->caps_cap : 64;
    f->caps = realloc (f->caps, f->caps_cap * sizeof *f->caps);
    if (!f->caps)
      abort ();
  }
  f->caps[f->ncaps++] = (struct capture) {
    .run = run,
    .info = {
      .off = cache_run_offset (run),
      .len = cache_run_length (run),
      .flags = cache_run_flags (run),
      .done = false,
    },
  };
  f->npending++;
  unlock (f);
}

size_t
fake_nr_captured (struct fake *f)
{
  size_t n;

  lock (f);
  n = f->ncaps;
  unlock (f);
  return n;
}

size_t
fake_nr_pending (struct fake *f)
{
  size_t n;

  lock (f);
  n = f->npending;
  unlock (f);
  return n;
}

bool
fake_capture_info (struct fake *f, size_t idx, struct fake_capture *out)
{
  bool r = false;

  lock (f);
  if (idx < f->ncaps) {
    *out = f->caps[idx].info;
    r = true;
  }
  unlock (f);
  return r;
}

struct cache_run *
fake_capture_run (struct fake *f, size_t idx)
{
  struct cache_run *run = NULL;

  lock (f);
  if (idx < f->ncaps && !f->caps[idx].info.done)
    run = f->caps[idx].run;
  unlock (f);
  return run;
}

bool
fake_capture_overlaps (struct fake *f, size_t from_idx, uint64_t off,
                       uint32_t len)
{
  bool r = false;

  lock (f);
  for (size_t i = from_idx; i < f->ncaps; i++) {
    const struct fake_capture *ci = &f->caps[i].info;
    if (ci->off < off + len && off < ci->off + ci->len) {
      r = true;
      break;
    }
  }
  unlock (f);
  return r;
}

int
fake_complete (struct fake *f, struct cache *c, size_t idx, int err)
{
  struct cache_run *run;
  struct fake_capture info;

  lock (f);
  if (idx >= f->ncaps || f->caps[idx].info.done) {
    fprintf (stderr, "fake_complete: capture %zu does not exist or is done\n",
             idx);
    abort ();
  }
  f->caps[idx].info.done = true;
  f->npending--;
  run = f->caps[idx].run;
  info = f->caps[idx].info;
  f->caps[idx].run = NULL;
  unlock (f);

  if (err == 0)
    err = fake_pwrite (f, cache_run_data (run), info.len, info.off, info.flags);
  cache_run_done (c, run, err);
  return err;
}

size_t
fake_complete_all (struct fake *f, struct cache *c, int err)
{
  size_t n = 0;

  for (;;) {
    size_t idx;
    bool found = false;

    lock (f);
    for (idx = 0; idx < f->ncaps; idx++)
      if (!f->caps[idx].info.done) {
        found = true;
        break;
      }
    unlock (f);
    if (!found)
      break;
    fake_complete (f, c, idx, err);
    n++;
  }
  return n;
}
