/* subpage: a schedule explorer for the cache core.
 *
 * What it does.  It runs two or three requests against the cache core
 * at once, each in its own thread, and explores their interleavings
 * systematically, the way CHESS, loom or Coyote do: only one thread
 * runs at a time, and at every scheduling point the explorer decides
 * which one runs next.  The scheduling points are every mutex
 * acquisition and condition-variable wait of the core (its own build of
 * cache/, with shim.h force-included, routes pthreads here), every
 * backend call's start and completion, the core's named park points
 * (CACHE_PARK) and the start of each request.  An execution is fully
 * determined by its list of choices, so the explorer enumerates them
 * depth-first, replaying a prefix and trying the next choice at the
 * deepest point that still has one, within a preemption bound:
 * switching away from a thread that could go on costs 1 at a backend
 * call or park point and 2 at a mutex acquisition (1 with SUBPAGE_DEEP),
 * switching when the running thread blocks or ends is free.  A point
 * where no switch fits in the bound is passed without a decision (so a
 * schedule is numbered within its bound).  Iterative bounding: for 40%
 * of the time, scenario after scenario is explored completely within
 * bound 1; then, from the first scenario again, within bound 2, up to
 * 3000 schedules each (all of them for most scenarios).  The requests
 * run in three worker threads that live for the whole run.
 *
 * Scenarios.  A small disk (10 pages of 4 KiB, 1 KiB sectors, so 4
 * sectors a page; 512 B sectors in some scenarios), a cache of 8 pages,
 * and a prelude that puts page 0 and 1 in a mixed state (sectors
 * absent, clean and dirty side by side) before the threads start.  The
 * requests are drawn, from a seeded generator, by role (a write, a
 * TRIM or ZERO near it, and a third request of any kind, in most
 * scenarios), among: aligned,
 * unaligned and sub-sector writes, FUA writes, reads, TRIM, ZERO (with
 * and without MAY_TRIM (NO_HOLE) and FAST_ZERO), flush, the shutdown
 * drain (cache_drain), background write-back (cache_writeback: collect,
 * submit, complete, in that thread) and reclaim (a read of 8 other
 * pages, which evicts), over a small set of ranges that cross the
 * sectors and pages of the prelude in every way.  Modes writeback,
 * writethrough and unsafe; a backend with or without trim/zero and fast
 * zero; and a backend write that fails (-EIO) in some scenarios.
 *
 * The model.  Every request's data is one byte value repeated (values
 * differ between requests and from the initial disk, 0xE5), and every
 * range is a multiple of a 256-byte granule, inside which nothing can
 * be torn.  Each request has a start and an end on the explorer's
 * logical clock.  For a granule and an interval [s, e], the values a
 * read may return are: the initial value, unless some modifying request
 * completed before s; the value of every write, zero (0) or trim (0, or
 * any value allowed just before or during it) of the granule that
 * started before e and that no request completed before s superseded
 * (started after it ended).  A failed request may have landed (never
 * supersedes); a fast zero refused with ENOTSUP has no effect.  The
 * backend has a volatile part and a durable part (what a backend flush
 * or a FUA write made durable).  Checks:
 *  - a read returns, for each granule, one uniform value the model
 *    allows over the read's interval (never bytes nobody wrote, such as
 *    the 0xCC the explorer fills read buffers with);
 *  - at the reply of a FUA write (of every write in writethrough mode,
 *    to the volatile part there), the backend holds the write's value
 *    or that of a request concurrent with it;
 *  - at the reply of a successful flush (not in unsafe mode) or drain,
 *    the durable backend holds, for every granule, a value the model
 *    allows over the flush's interval;
 *  - no thread is left waiting with nobody to wake it (a lost wake-up
 *    or a deadlock), and no execution runs forever;
 *  - after the requests, with faults off, cache_drain succeeds and the
 *    durable backend and reads through the cache hold only values the
 *    model allows at the end; nothing is dirty; nobody waits; every
 *    page passes page_check (the drain and the read run in a worker
 *    under the scheduler too, so a drain that never returns is found);
 *  - a request fails only if some backend call failed before its reply
 *    (a refused fast zero aside);
 *  - any CACHE_ASSERT of the core (assert()) aborts the run.
 *
 * RBD modes (issue 16).  Asynchronous completions (--aio 1): the submit
 * hook hands each write-back run to a completion slot, a thread the
 * scheduler runs like a request's, which lands the write, stops at a
 * scheduling point and calls cache_run_done: runs complete in any
 * order, relative to each other and to the requests.  A lost lock
 * (--lost-lock 1): one more thread, runnable from the start, whose one
 * step loses the image's lock; from then on every backend call fails
 * with -ESHUTDOWN (librbd's EBLOCKLISTED) and a write that takes effect
 * fails the run.  Then also: a flush, drain, FUA write or write-through
 * write that started after the loss must fail (a write-through write
 * that a concurrent TRIM or ZERO, done on the backend before the loss,
 * wholly discarded aside: discarded_under); at the end two drains
 * must fail, no run is in flight, every granule the cache holds reads
 * back a value the model allows and every other one is on the backend.
 * In every mode a sector the cache holds CLEAN at the end equals the
 * backend.  The four modes (synchronous or not, lock kept or lost)
 * each explore a stream of scenarios of their own and share the time.
 * On a failure it prints the scenario, the schedule (the choices, which
 * --replay takes) and the steps of the failing execution, and exits 1.
 *
 * Usage: explore [--seconds N] [--seed N] [--scenarios N]
 *                [--only-bound2] [--ops KIND[:OFF+LEN],...]
 *                [--aio 0|1] [--lost-lock 0|1]
 *                [--replay BOUND:SEED:CHOICES]
 * --ops replaces the drawn requests (kinds as printed: write,
 * write+fua, read, trim, zero, flush, drain, writeback, reclaim); --aio
 * and --lost-lock explore only that mode (a replay takes the mode from
 * them: without them, synchronous with the lock kept); a failure prints
 * the line that runs its schedule again.
 * Environment: EXPLORE_SECONDS (default 60), SUBPAGE_DEEP=1 (then
 * EXPLORE_DEEP_SECONDS, default 600; preemptions at mutexes cost 1,
 * bound 3 in the second pass, up to 20000 schedules a scenario),
 * EXPLORE_VERBOSE (a line per scenario), EXPLORE_TRACE (every point).
 *
 * What it does not do: partial-order reduction (equivalent schedules are
 * run again), or threads of server/ or the plugin (the core only: the
 * aio mode stands for wbs_submit and wbs_aio_done).  Without --aio 1,
 * runs complete in the thread that submitted them, with a scheduling
 * point before and after the backend write.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <malloc.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cache.h"
#include "cache-debug.h"
#include "fake-jdev.h"
#include "jformat.h"

#define PAGE 4096u
#define NPAGES 10u
#define DISK (NPAGES * PAGE)
#define HOT (2 * PAGE)              /* the pages the prelude and ops use */
#define GRAN 256u
#define NGRAN (DISK / GRAN)
#define INITIAL 0xE5
#define POISON 0xCC
#define MAXT 3                      /* request threads */
#define NCQ 16                      /* completion slots: aio runs in flight */
#define LOSS (MAXT + NCQ)           /* the thread that loses the lock */
#define NTH (LOSS + 1)              /* every scheduled thread */
#define MAXOPS 10                   /* prelude + concurrent */
#define MAXDEC 20000
#define JSIZE JNL_MIN_SIZE          /* the journal device (--journal 1) */
#define JIDENT "file:/explore/image"

/* ---- threads and the scheduler ---- */

enum xstate { XS_NEW, XS_RUN, XS_MUTEX, XS_COND, XS_DONE };

struct op;

/* What a scheduled thread does: a request, one aio completion (a slot
 * is idle, XS_DONE with no run, until the submit hook gives it a run),
 * or the loss of the image's lock.
 */
enum xkind { XK_REQ, XK_CQ, XK_LOSS };

struct xthread {
  pthread_t th;
  unsigned id;
  enum xkind kind;
  struct cache_run *run;        /* XK_CQ: the run it completes */
  enum xstate st;
  const void *obj;              /* mutex or condvar waited on */
  bool timed, timedout;
  sem_t go;
  const char *where;            /* last scheduling point */
  bool major;                   /* ... and whether it was a major one */
  struct op *op;
};

static struct xthread xt[NTH];
static unsigned nxt;
static __thread struct xthread *self;
static sem_t back;
static uint64_t clk;                /* logical clock: scheduling steps */

static struct { const void *m; struct xthread *owner; } held[64];
static unsigned nheld;

struct decision {
  uint8_t nopt, chosen, spent;
  uint8_t opt[NTH], cost[NTH];
  uint8_t who;                      /* thread that ran */
  const char *where;                /* where the previous thread stopped */
};
static struct decision trace[MAXDEC];
static unsigned ntrace;
static uint8_t prefix[MAXDEC];
static unsigned nprefix;
static unsigned minor_cost = 2;

static char failure[2048];
static const char *ops_arg;          /* --ops, for the replay line */          /* first failure of this execution */

static void
fail (const char *fmt, ...)
{
  va_list ap;

  if (failure[0])
    return;
  va_start (ap, fmt);
  vsnprintf (failure, sizeof failure, fmt, ap);
  va_end (ap);
}

static unsigned bound;               /* of the current exploration */
static unsigned spent;               /* preemption cost spent so far */

/* A scheduling point.  A running thread that could not be preempted
 * here within the bound goes on without a decision being recorded (so
 * schedules are numbered per bound: --replay takes the bound).
 */
static bool trace_points;            /* EXPLORE_TRACE: print every point */
static bool verbose;                 /* EXPLORE_VERBOSE: a line a scenario */

static void
yield (const char *where, bool major)
{
  self->where = where;
  self->major = major;
  if (trace_points)
    fprintf (stderr, "  t%u: %s\n", self->id, where);
  if (self->st == XS_RUN && spent + (major ? 1 : minor_cost) > bound)
    return;
  sem_post (&back);
  sem_wait (&self->go);
}

static struct xthread *
owner_of (const void *m)
{
  for (unsigned i = 0; i < nheld; i++)
    if (held[i].m == m)
      return held[i].owner;
  return NULL;
}

static void
held_add (const void *m)
{
  if (nheld == sizeof held / sizeof held[0])
    abort ();
  held[nheld].m = m;
  held[nheld].owner = self;
  nheld++;
}

static void
held_del (const void *m)
{
  for (unsigned i = 0; i < nheld; i++)
    if (held[i].m == m) {
      held[i] = held[--nheld];
      return;
    }
  abort ();                         /* unlock of a mutex not held */
}

static void
acquire (pthread_mutex_t *m)
{
  while (owner_of (m)) {
    self->st = XS_MUTEX;
    self->obj = m;
    yield ("mutex.wait", false);
  }
  held_add (m);
  pthread_mutex_lock (m);           /* free: cannot block */
}

int
x_mutex_lock (pthread_mutex_t *m)
{
  if (!self)
    return pthread_mutex_lock (m);
  yield ("mutex.lock", false);
  acquire (m);
  return 0;
}

int
x_mutex_unlock (pthread_mutex_t *m)
{
  if (!self)
    return pthread_mutex_unlock (m);
  held_del (m);
  pthread_mutex_unlock (m);
  for (unsigned i = 0; i < nxt; i++)
    if (xt[i].st == XS_MUTEX && xt[i].obj == m)
      xt[i].st = XS_RUN;
  return 0;
}

static int
cond_wait (pthread_cond_t *cv, pthread_mutex_t *m, bool timed)
{
  x_mutex_unlock (m);
  self->st = XS_COND;
  self->obj = cv;
  self->timed = timed;
  self->timedout = false;
  yield ("cond.wait", true);
  acquire (m);
  return self->timedout ? ETIMEDOUT : 0;
}

int
x_cond_wait (pthread_cond_t *cv, pthread_mutex_t *m)
{
  if (!self)
    return pthread_cond_wait (cv, m);
  return cond_wait (cv, m, false);
}

int
x_cond_timedwait (pthread_cond_t *cv, pthread_mutex_t *m,
                  const struct timespec *abstime)
{
  if (!self)
    return pthread_cond_timedwait (cv, m, abstime);
  return cond_wait (cv, m, true);
}

static void
wake (const void *cv, bool all)
{
  for (unsigned i = 0; i < nxt; i++)
    if (xt[i].st == XS_COND && xt[i].obj == cv) {
      xt[i].st = XS_RUN;
      if (!all)
        return;
    }
}

int
x_cond_broadcast (pthread_cond_t *cv)
{
  wake (cv, true);
  return pthread_cond_broadcast (cv);
}

int
x_cond_signal (pthread_cond_t *cv)
{
  wake (cv, false);
  return pthread_cond_signal (cv);
}

static bool
runnable (const struct xthread *t)
{
  return t->st == XS_NEW || t->st == XS_RUN;
}

/* Runs the threads to the end, one step at a time.  Returns false on a
 * deadlock or a runaway execution (failure set).
 */
static bool
schedule (void)
{
  struct xthread *cur = NULL;
  const char *where = "start";

  for (;;) {
    struct decision *d;
    struct xthread *t;
    bool any = false;

    if (ntrace == MAXDEC) {
      fail ("execution longer than %u steps (livelock?)", MAXDEC);
      return false;
    }
    d = &trace[ntrace];
    d->nopt = 0;
    d->spent = ntrace ? trace[ntrace - 1].spent
      + trace[ntrace - 1].cost[trace[ntrace - 1].chosen] : 0;
    if (cur && runnable (cur)) {
      d->opt[d->nopt] = (uint8_t) cur->id;
      d->cost[d->nopt++] = 0;
    }
    for (unsigned i = 0; i < nxt; i++) {
      if (&xt[i] == cur || !runnable (&xt[i]))
        continue;
      d->opt[d->nopt] = (uint8_t) i;
      d->cost[d->nopt++] = (uint8_t) (cur && runnable (cur)
                                      ? (cur->major ? 1 : minor_cost) : 0);
    }
    if (d->nopt == 0) {
      for (unsigned i = 0; i < nxt; i++)
        if (xt[i].st != XS_DONE)
          any = true;
      if (!any)
        return true;
      /* Time passes only when nobody can run: a timed wait expires. */
      for (unsigned i = 0; i < nxt; i++)
        if (xt[i].st == XS_COND && xt[i].timed) {
          xt[i].st = XS_RUN;
          xt[i].timedout = true;
          any = false;
          break;
        }
      if (!any)
        continue;
      {
        char buf[1024];
        size_t n = 0;
        buf[0] = 0;
        for (unsigned i = 0; i < nxt && n < sizeof buf; i++)
          if (xt[i].st != XS_DONE)
            n += (size_t) snprintf (buf + n, sizeof buf - n,
                                    " thread %u at %s;", i, xt[i].where);
        fail ("no thread can run, and some never returned (lost wake-up "
              "or deadlock):%s", buf);
      }
      return false;
    }
    if (ntrace < nprefix) {
      if (prefix[ntrace] >= d->nopt) {
        fail ("replay diverged at step %u", ntrace);
        return false;
      }
      d->chosen = prefix[ntrace];
    }
    else
      d->chosen = 0;
    spent = d->spent + d->cost[d->chosen];
    t = &xt[d->opt[d->chosen]];
    d->who = (uint8_t) t->id;
    d->where = where;
    ntrace++;
    clk++;
    if (t->st == XS_NEW)
      t->st = XS_RUN;
    cur = t;
    sem_post (&t->go);
    sem_wait (&back);
    where = t->where;
  }
}

/* The next schedule to try within BOUND, as a new prefix; false when
 * every schedule has been tried.
 */
static bool
next_schedule (unsigned bound)
{
  for (unsigned d = ntrace; d-- > 0; ) {
    for (unsigned j = trace[d].chosen + 1u; j < trace[d].nopt; j++)
      if (trace[d].spent + trace[d].cost[j] <= bound) {
        for (unsigned k = 0; k < d; k++)
          prefix[k] = trace[k].chosen;
        prefix[d] = (uint8_t) j;
        nprefix = d + 1;
        return true;
      }
  }
  return false;
}

/* ---- the backend: volatile and durable copies of the disk ---- */

static unsigned char mem[DISK], durable[DISK];
static unsigned nwrites, fail_nth;
static bool fast_zero_ok;

/* The image's exclusive lock (RBD): lost at the step the loss thread
 * runs (lost_at, on the clock).  From then on every backend call fails
 * with -ESHUTDOWN (librbd's EBLOCKLISTED), reads too (a blocklisted
 * client reaches no OSD), and no write may take effect: disk_apply
 * records one that does as a failure.
 */
static bool lock_lost;
static uint64_t lost_at;
#define LOST_ERR (-ESHUTDOWN)
/* Backend calls that failed in this execution (a refused fast zero
 * aside): while there are none, no request may fail.
 */
static unsigned backend_errors;
static uint64_t jdev_errors (void);
static void epoch_check (const unsigned char *buf, uint32_t n, uint64_t off);
static void quiet_log (void *opaque, enum cache_log_level lvl,
                       const char *fmt, va_list ap);

static void
io_point (const char *where)
{
  if (self)
    yield (where, true);
}

/* Every change of the backend's disk goes through here. */
static void
disk_apply (const void *buf, int byte, uint32_t n, uint64_t off, bool fua)
{
  if (lock_lost)
    fail ("backend %s of %" PRIu64 "+%u took effect after the lock was "
          "lost (writing behind the new owner)", buf ? "write" : "discard",
          off, n);
  if (buf)
    memcpy (mem + off, buf, n);
  else
    memset (mem + off, byte, n);
  if (fua)
    memcpy (durable + off, mem + off, n);
}

static int
xb_pread (void *o, void *buf, uint32_t n, uint64_t off)
{
  (void) o;
  if (off + n > DISK) abort ();
  io_point ("io.read");
  if (lock_lost) {
    backend_errors++;
    return LOST_ERR;
  }
  memcpy (buf, mem + off, n);
  io_point ("io.read.done");
  return 0;
}

static int
xb_pwrite (void *o, const void *buf, uint32_t n, uint64_t off, uint32_t fl)
{
  (void) o;
  if (off + n > DISK || n % GRAN || off % GRAN) abort ();
  io_point ("io.write");
  if (lock_lost) {
    backend_errors++;
    io_point ("io.write.failed");
    return LOST_ERR;
  }
  if (++nwrites == fail_nth) {
    backend_errors++;
    io_point ("io.write.failed");
    return -EIO;
  }
  epoch_check (buf, n, off);
  disk_apply (buf, 0, n, off, fl & CACHE_FUA);
  io_point ("io.write.done");
  return 0;
}

static int
xb_flush (void *o)
{
  (void) o;
  io_point ("io.flush");
  if (lock_lost) {
    backend_errors++;
    return LOST_ERR;
  }
  memcpy (durable, mem, DISK);
  io_point ("io.flush.done");
  return 0;
}

static void note_discard (uint32_t off, uint32_t n);

static int
xb_discard (uint32_t n, uint64_t off, uint32_t fl, const char *what)
{
  if (off + n > DISK) abort ();
  io_point (what);
  if (lock_lost) {
    backend_errors++;
    return LOST_ERR;
  }
  epoch_check (NULL, n, off);
  disk_apply (NULL, 0, n, off, fl & CACHE_FUA);
  note_discard (off, n);
  io_point ("io.discard.done");
  return 0;
}

static int
xb_trim (void *o, uint32_t n, uint64_t off, uint32_t fl)
{
  (void) o;
  return xb_discard (n, off, fl, "io.trim");
}

static int
xb_zero (void *o, uint32_t n, uint64_t off, uint32_t fl)
{
  (void) o;
  if ((fl & CACHE_FAST_ZERO) && !fast_zero_ok)
    return -ENOTSUP;
  return xb_discard (n, off, fl, "io.zero");
}

static const struct cache_backend_ops xb_ops = {
  .pread = xb_pread, .pwrite = xb_pwrite, .flush = xb_flush,
  .trim = xb_trim, .zero = xb_zero,
};
static const struct cache_backend_ops xb_ops_plain = {
  .pread = xb_pread, .pwrite = xb_pwrite, .flush = xb_flush,
};

/* The asynchronous backend (aio mode), as the RBD backend uses librbd's
 * aio: the submit hook checks the run (cache_run_start, as wbs_submit
 * does right before aio_pwrite) and hands it to an idle completion
 * slot, a thread of its own that the scheduler runs like a request's:
 * so completions are delivered in any order, relative to each other and
 * to every step of the requests, and only after the submitter has gone
 * on (or while it waits).  A slot, when it runs, lands the write on the
 * disk (or fails it: the lock is lost, or it is the write fail_nth
 * picks), stops at a scheduling point (aio.landed: the lock may be
 * lost, other runs may complete, between the write taking effect and
 * its callback), and then calls cache_run_account and cache_run_done
 * with the result, as wbs_aio_done does.
 */
static int
aio_land (struct cache_run *run)
{
  uint64_t off = cache_run_offset (run);
  uint32_t n = cache_run_length (run);

  if (off + n > DISK || n % GRAN || off % GRAN) abort ();
  if (lock_lost) {
    backend_errors++;
    return LOST_ERR;
  }
  if (++nwrites == fail_nth) {
    backend_errors++;
    return -EIO;
  }
  disk_apply (cache_run_data (run), 0, n, off,
              cache_run_flags (run) & CACHE_FUA);
  return 0;
}

static void
aio_complete (struct cache *c, struct cache_run *run)
{
  int err = aio_land (run);

  io_point (err ? "aio.failed" : "aio.landed");
  cache_run_account (c, run);
  cache_run_done (c, run, err);
}

static bool aio_used;                /* a run went through xb_submit */

static void
xb_submit (void *opaque, struct cache *c, struct cache_run *run)
{
  (void) opaque;
  aio_used = true;
  if (!cache_run_start (c, run))
    return;
  for (unsigned i = MAXT; i < MAXT + NCQ; i++)
    if (xt[i].st == XS_DONE && xt[i].run == NULL) {
      xt[i].run = run;
      xt[i].st = XS_NEW;
      xt[i].where = "start";
      xt[i].major = true;
      return;
    }
  fail ("more than %u write-back runs in flight", NCQ);
  aio_complete (c, run);
}

/* ---- scenarios ---- */

enum kind {
  K_WRITE, K_WRITE_FUA, K_READ, K_TRIM, K_ZERO, K_FLUSH, K_DRAIN, K_WB,
  K_RECLAIM, K_JDRAIN, K_NR
};
static const char *const kind_name[K_NR] = {
  "write", "write+fua", "read", "trim", "zero", "flush", "drain",
  "writeback", "reclaim", "jdrain",
};

struct op {
  enum kind k;
  uint32_t off, len, flags;
  unsigned char val;
  int ret;
  uint64_t start, end;              /* end UINT64_MAX while running */
  bool noop;                        /* refused without effect */
  bool stream;                      /* journal: a K_WRITE as two writes of
                                     * one stream, the second around the
                                     * journal (sequential-cutoff=1) */
  uint32_t dis_off, dis_len;        /* a TRIM's or ZERO's backend call
                                     * took effect on this range */
  unsigned char buf[DISK];          /* a read's data */
};

struct scenario {
  uint64_t seed;
  enum cache_mode mode;
  uint32_t sector_size;
  bool trim_zero, fast_zero_ok;
  unsigned fail_nth;
  unsigned prelude;
  unsigned nops;
  struct op ops[MAXT];
  bool aio;                         /* runs complete asynchronously */
  bool lost_lock;                   /* the image's lock is lost */
  bool journal;                     /* --journal 1: a fake-jdev journal */
  bool low_dirty;                   /* journal: dirty_ratio 10, so that
                                     * writers drain (wb_kick, no hook) */
  bool spill;                       /* journal: no background drain, and
                                     * the prelude fills the cache so that
                                     * pages 0 and 1 leave RAM dirty */
  unsigned jfail;                   /* journal: 1 a journal pwrite fails,
                                     * 2 a journal sync (sticky) */
  unsigned jfail_skip;              /* ... after this many calls */
};

/* --aio, --lost-lock: 0 or 1 for every scenario; -1: both (the
 * exploration runs one stream of scenarios per mode; make_scenario
 * takes -1 as 0).
 */
static int force_aio = -1, force_lost = -1;
/* --journal 1: every scenario has a journal (its own stream). */
static int force_journal = 0;
static struct fake_jdev *jd;        /* the journal device, journal mode */
static struct fake_jdev *rjd;       /* a crash image of it, recovered */

static struct op events[MAXOPS];    /* prelude ops, then the scenario's */
static unsigned nevents;
static struct cache *cache;
static struct scenario scn;

/* Ranges over pages 0 and 1, crossing the prelude's sector states
 * (1 KiB sectors: page 0 is clean, absent, dirty, absent after prelude
 * 0).  Writes: partial head and tail sectors, inside one sector, a
 * whole page, across the page boundary.  Discards: whole sectors, and
 * partial ones (ZERO writes those through the cache, TRIM skips them).
 */
static const uint32_t wranges[][2] = {
  { 512, 1024 }, { 1536, 1024 }, { 1280, 256 }, { 0, 4096 }, { 2560, 2048 },
  { 1024, 1024 },
};
static const uint32_t dranges[][2] = {
  { 0, 1024 }, { 1024, 1024 }, { 2048, 1024 }, { 0, 2048 }, { 512, 1024 },
  { 2048, 4096 },
};
#define NWRANGES (sizeof wranges / sizeof wranges[0])
#define NDRANGES (sizeof dranges / sizeof dranges[0])

static uint64_t
rnd (uint64_t *s)
{
  uint64_t z = (*s += UINT64_C (0x9e3779b97f4a7c15));
  z = (z ^ (z >> 30)) * UINT64_C (0xbf58476d1ce4e5b9);
  z = (z ^ (z >> 27)) * UINT64_C (0x94d049bb133111eb);
  return z ^ (z >> 31);
}

/* Draws a request of role ROLE: 'w' a write, 'd' a TRIM or ZERO, 'x'
 * anything.
 */
static void
make_op (uint64_t *r, char role, struct op *o)
{
  static const enum kind xkinds[] = {
    K_READ, K_READ, K_WRITE, K_WRITE_FUA, K_FLUSH, K_FLUSH, K_DRAIN, K_WB,
    K_WB, K_RECLAIM, K_TRIM, K_ZERO,
  };
  const uint32_t *rg;

  switch (role) {
  case 'w': o->k = rnd (r) % 5 < 3 ? K_WRITE : K_WRITE_FUA; break;
  case 'd': o->k = rnd (r) % 4 == 0 ? K_TRIM : K_ZERO; break;
  default: o->k = xkinds[rnd (r) % (sizeof xkinds / sizeof xkinds[0])];
  }
  rg = o->k == K_TRIM || o->k == K_ZERO || (o->k == K_READ && rnd (r) % 2)
    ? dranges[rnd (r) % NDRANGES] : wranges[rnd (r) % NWRANGES];
  o->off = rg[0];
  o->len = rg[1];
  if (o->k == K_ZERO) {
    if (rnd (r) % 2)
      o->flags |= CACHE_MAY_TRIM;
    if (rnd (r) % 4 == 0)
      o->flags |= CACHE_FAST_ZERO;
  }
}

/* Journal mode (--journal 1): writeback mode only (the journal needs
 * it); requests by role as below, plus 'j' a drainer (the journal's
 * drain step, cache_journal_drain, or cache_writeback, which is the
 * same in journal mode, or the shutdown drain) and 'f' a flush or a FUA
 * write; in a third of the scenarios dirty_ratio is 10%, so that
 * writers throttle and drain the journal themselves (wb_kick without a
 * kick hook).
 */
static void
make_jscenario (uint64_t *r, struct scenario *s)
{
  static const char *const roles2[] = { "wj", "wf", "dj", "wd", "wx", "fj" };
  static const char *const roles3[] = { "wjf", "wdj", "wwj", "wfj", "djf",
                                        "wjx", "wdf", "xjx" };
  const char *roles;

  s->mode = CACHE_MODE_WRITEBACK;
  s->journal = true;
  s->low_dirty = rnd (r) % 3 == 0;
  s->spill = !s->low_dirty && rnd (r) % 2 == 0;
  if (rnd (r) % 4 == 0) {
    s->jfail = 1 + (unsigned) (rnd (r) % 2);
    s->jfail_skip = (unsigned) (rnd (r) % 3);
  }
  s->nops = rnd (r) % 5 < 2 ? 2 : 3;
  roles = s->nops == 2 ? roles2[rnd (r) % 6] : roles3[rnd (r) % 8];
  for (unsigned i = 0; i < s->nops; i++) {
    struct op *o = &s->ops[i];

    switch (roles[i]) {
    case 'j': {
      static const enum kind jk[] = { K_JDRAIN, K_JDRAIN, K_WB, K_DRAIN };
      o->k = jk[rnd (r) % 4];
      break;
    }
    case 'f':
      if (rnd (r) % 2) {
        o->k = K_FLUSH;
        break;
      }
      make_op (r, 'w', o);
      o->k = K_WRITE_FUA;
      break;
    default:
      make_op (r, roles[i], o);
      o->stream = o->k == K_WRITE && rnd (r) % 2 == 0;
    }
    s->ops[i].val = (unsigned char) (0x30 + i);
  }
}

/* Scenario SEED.  Requests are drawn by role, so that most scenarios
 * pair a write with a TRIM or ZERO near it (where the races of the
 * past were), plus a third request of any kind.
 */
static void
make_scenario (uint64_t seed, struct scenario *s)
{
  static const char *const roles2[] = { "wd", "wd", "wd", "wx", "dx", "xx" };
  static const char *const roles3[] = { "wdx", "wdx", "wdx", "wdx", "wwd",
                                        "xxx" };
  uint64_t r = seed * UINT64_C (0x2545F4914F6CDD1D);
  const char *roles;

  memset (s, 0, sizeof *s);
  s->seed = seed;
  switch (rnd (&r) % 10) {
  case 0: s->mode = CACHE_MODE_WRITETHROUGH; break;
  case 1: s->mode = CACHE_MODE_UNSAFE; break;
  default: s->mode = CACHE_MODE_WRITEBACK;
  }
  s->sector_size = rnd (&r) % 6 == 0 ? 512 : 1024;
  s->trim_zero = rnd (&r) % 8 != 0;
  s->fast_zero_ok = rnd (&r) % 2;
  s->fail_nth = rnd (&r) % 8 == 0 ? 1 + (unsigned) (rnd (&r) % 3) : 0;
  s->prelude = (unsigned) (rnd (&r) % 5) % 4;   /* 0 twice as often */
  if (force_journal > 0)
    make_jscenario (&r, s);
  else {
    s->nops = rnd (&r) % 5 < 2 ? 2 : 3;
    roles = s->nops == 2 ? roles2[rnd (&r) % 6] : roles3[rnd (&r) % 6];
    for (unsigned i = 0; i < s->nops; i++) {
      make_op (&r, roles[i], &s->ops[i]);
      s->ops[i].val = (unsigned char) (0x30 + i);
    }
  }
  /* The RBD modes are not drawn: each mode has a stream of scenarios
   * of its own (main), and a replay names its mode.
   */
  s->aio = force_aio > 0;
  s->lost_lock = force_lost > 0;
}

/* --ops KIND[:OFF+LEN][,...] over scenario SEED's other settings. */
static void
parse_ops (const char *arg, struct scenario *s)
{
  char *copy = strdup (arg), *save = NULL;

  s->nops = 0;
  for (char *tok = strtok_r (copy, ",", &save); tok && s->nops < MAXT;
       tok = strtok_r (NULL, ",", &save)) {
    struct op *o = &s->ops[s->nops];
    char *colon = strchr (tok, ':');
    unsigned k;

    if (colon)
      *colon = 0;
    for (k = 0; k < K_NR && strcmp (tok, kind_name[k]); k++)
      ;
    if (k == K_NR) {
      fprintf (stderr, "explore: unknown op kind %s\n", tok);
      exit (2);
    }
    memset (o, 0, sizeof *o);
    o->k = (enum kind) k;
    o->val = (unsigned char) (0x30 + s->nops);
    if (colon && sscanf (colon + 1, "%u+%u", &o->off, &o->len) != 2) {
      fprintf (stderr, "explore: bad range in %s\n", colon + 1);
      exit (2);
    }
    s->nops++;
  }
  free (copy);
}

static void
describe (const struct scenario *s, char *buf, size_t len)
{
  size_t n = (size_t) snprintf (buf, len,
    "seed=%" PRIu64 " mode=%s sector=%u trim/zero=%s fast-zero=%s "
    "fail-write=%u prelude=%u aio=%s lost-lock=%s journal=%s%s%s:",
    s->seed, s->mode == CACHE_MODE_WRITEBACK ? "writeback"
    : s->mode == CACHE_MODE_WRITETHROUGH ? "writethrough" : "unsafe",
    s->sector_size, s->trim_zero ? "yes" : "no",
    s->fast_zero_ok ? "yes" : "no", s->fail_nth, s->prelude,
    s->aio ? "yes" : "no", s->lost_lock ? "yes" : "no",
    s->journal ? "yes" : "no", s->low_dirty ? " dirty-ratio=10" : "",
    s->spill ? " spill" : "");
  if (s->jfail && n < len)
    n += (size_t) snprintf (buf + n, len - n, " journal-%s-fails=%u",
                            s->jfail == 1 ? "pwrite" : "sync",
                            s->jfail_skip + 1);

  for (unsigned i = 0; i < s->nops && n < len; i++) {
    const struct op *o = &s->ops[i];
    n += (size_t) snprintf (buf + n, len - n, " [t%u %s%s", i,
                            kind_name[o->k], o->stream ? "+stream" : "");
    if (o->k <= K_ZERO && n < len)
      n += (size_t) snprintf (buf + n, len - n, " %u+%u", o->off, o->len);
    if (o->k <= K_WRITE_FUA && n < len)
      n += (size_t) snprintf (buf + n, len - n, " =%#x", o->val);
    if ((o->flags & CACHE_MAY_TRIM) && n < len)
      n += (size_t) snprintf (buf + n, len - n, " may-trim");
    if ((o->flags & CACHE_FAST_ZERO) && n < len)
      n += (size_t) snprintf (buf + n, len - n, " fast");
    if (n < len)
      n += (size_t) snprintf (buf + n, len - n, "]");
  }
}

/* ---- the model ---- */

typedef struct { uint64_t w[4]; } vset;

static void
vadd (vset *s, unsigned v)
{
  s->w[v / 64] |= UINT64_C (1) << (v % 64);
}

static bool
vhas (const vset *s, unsigned v)
{
  return s->w[v / 64] >> (v % 64) & 1;
}

static bool
modifies (const struct op *e, unsigned g)
{
  uint32_t a = g * GRAN;

  if (e->noop || (e->k != K_WRITE && e->k != K_WRITE_FUA &&
                  e->k != K_TRIM && e->k != K_ZERO))
    return false;
  return a >= e->off && a < e->off + e->len;
}

static bool
completed_ok_before (const struct op *e, uint64_t t)
{
  return e->end != UINT64_MAX && e->end < t && e->ret == 0;
}

/* Which requests have taken effect for good: those that completed OK
 * before S; or, for a crash (journal mode), those that a successful
 * flush or drain started after covers, and FUA writes that returned 0
 * (rules 12 and 13: durable in the journal).
 */
struct eff {
  bool crash;
  uint64_t s;                       /* crash: the last successful flush's
                                     * start (0: none) */
};

static bool
effective (const struct op *y, const struct eff *f)
{
  if (!f->crash)
    return completed_ok_before (y, f->s);
  if (y->end == UINT64_MAX || y->ret != 0)
    return false;
  return y->end < f->s || y->k == K_WRITE_FUA;
}

/* Values granule G may hold for a read over [s, e] (F: s, or a crash);
 * EXCL is skipped.
 */
static void
allowed_eff (unsigned g, const struct eff *f, uint64_t e,
             const struct op *excl, vset *out, int depth)
{
  bool initial = true;

  for (unsigned i = 0; i < nevents; i++)
    if (&events[i] != excl && modifies (&events[i], g) &&
        effective (&events[i], f))
      initial = false;
  if (initial)
    vadd (out, INITIAL);
  for (unsigned i = 0; i < nevents; i++) {
    const struct op *x = &events[i];
    bool superseded = false;

    if (x == excl || !modifies (x, g) || x->start >= e)
      continue;
    for (unsigned j = 0; j < nevents && !superseded; j++) {
      const struct op *y = &events[j];
      if (y != excl && y != x && modifies (y, g) && x->end != UINT64_MAX &&
          y->start > x->end && effective (y, f))
        superseded = true;
    }
    if (superseded)
      continue;
    switch (x->k) {
    case K_WRITE: case K_WRITE_FUA: vadd (out, x->val); break;
    case K_ZERO: vadd (out, 0); break;
    case K_TRIM:
      vadd (out, 0);
      if (depth < 4) {
        struct eff fx = { .crash = f->crash, .s = f->crash ? f->s : x->start };
        allowed_eff (g, &fx, x->end, x, out, depth + 1);
      }
      break;
    default: abort ();
    }
  }
}

static void
allowed (unsigned g, uint64_t s, uint64_t e, const struct op *excl,
         vset *out, int depth)
{
  struct eff f = { .crash = false, .s = s };

  allowed_eff (g, &f, e, excl, out, depth);
}

/* The uniform value of granule G of BUF (at disk offset g*GRAN), or
 * -1 if torn.
 */
static int
gran_value (const unsigned char *buf)
{
  for (unsigned i = 1; i < GRAN; i++)
    if (buf[i] != buf[0])
      return -1;
  return buf[0];
}

static bool
check_gran (const char *what, const struct op *o, unsigned g,
            const unsigned char *data, const vset *ok)
{
  int v = gran_value (data);

  if (v >= 0 && vhas (ok, (unsigned) v))
    return true;
  {
    char list[256];
    size_t n = 0;
    list[0] = 0;
    for (unsigned x = 0; x < 256 && n < sizeof list - 8; x++)
      if (vhas (ok, x))
        n += (size_t) snprintf (list + n, sizeof list - n, " %#x", x);
    if (v < 0)
      fail ("%s (%s): granule at %u is torn (first byte %#x)",
            what, o ? kind_name[o->k] : "end", g * GRAN, data[0]);
    else
      fail ("%s (%s): granule at %u holds %#x; allowed:%s",
            what, o ? kind_name[o->k] : "end", g * GRAN, v, list);
  }
  return false;
}

/* Does O need the backend to succeed, so that with the lock lost
 * before it started it must fail?  A flush (not in unsafe mode) and the
 * drain always ask for a backend flush; a FUA write writes or flushes;
 * in write-through mode every write reaches the backend.
 */
static bool
needs_backend (const struct op *o)
{
  switch (o->k) {
  case K_FLUSH: case K_WRITE_FUA: return scn.mode != CACHE_MODE_UNSAFE;
  case K_DRAIN: return true;
  case K_WRITE: return scn.mode == CACHE_MODE_WRITETHROUGH;
  default: return false;
  }
}

/* The request running in this thread (a TRIM's or ZERO's) has just
 * discarded [off, off+n) on the backend.
 */
static void
note_discard (uint32_t off, uint32_t n)
{
  if (self && self->kind == XK_REQ) {
    self->op->dis_off = off;
    self->op->dis_len = n;
  }
}

/* Did a TRIM or ZERO concurrent with write O (still running when O
 * started) discard every granule of O on the backend?  Then the core
 * may order O before it: the discard drops the sectors O put in the
 * cache (its range is busy, so O's write-through waits for it rather
 * than write them), and the write-through then finds nothing to write
 * and, without FUA, nothing to flush.
 * O returns 0 without a backend call, which is right (the discard's
 * value, already on the backend, supersedes O's), even with the lock
 * lost before O started: the discard took effect before the loss
 * (after it, the backend call fails), and nothing of O lands.
 */
static bool
discarded_under (const struct op *o)
{
  for (unsigned g = o->off / GRAN; g < (o->off + o->len) / GRAN; g++) {
    bool covered = false;

    for (unsigned i = 0; i < nevents && !covered; i++) {
      const struct op *x = &events[i];

      covered = (x->k == K_TRIM || x->k == K_ZERO) && x->dis_len > 0 &&
                x->start < o->end &&
                (x->end == UINT64_MAX || x->end > o->start) &&
                g * GRAN >= x->dis_off && g * GRAN < x->dis_off + x->dis_len;
    }
    if (!covered)
      return false;
  }
  return true;
}

/* ---- journal mode: crashes and the epoch order ---- */

static struct cache_config
xconfig (void)
{
  struct cache_config cfg = {
    .size = DISK, .cache_size = 8 * PAGE, .page_size = PAGE,
    .sector_size = scn.sector_size, .mode = scn.mode,
    .dirty_background_ratio = 10, .dirty_ratio = scn.low_dirty ? 10 : 40,
    .batch_bytes = PAGE,
  };

  return cfg;
}

/* The disk a crash image is recovered onto: a copy of the backend's
 * volatile or durable contents, no scheduling points.
 */
static unsigned char rdisk[DISK];

static int
rb_pread (void *o, void *buf, uint32_t n, uint64_t off)
{
  (void) o;
  memcpy (buf, rdisk + off, n);
  return 0;
}

static int
rb_pwrite (void *o, const void *buf, uint32_t n, uint64_t off, uint32_t fl)
{
  (void) o; (void) fl;
  memcpy (rdisk + off, buf, n);
  return 0;
}

static int
rb_flush (void *o)
{
  (void) o;
  return 0;
}

static int
rb_discard (void *o, uint32_t n, uint64_t off, uint32_t fl)
{
  (void) o; (void) fl;
  memset (rdisk + off, 0, n);
  return 0;
}

static const struct cache_backend_ops rb_ops = {
  .pread = rb_pread, .pwrite = rb_pwrite, .flush = rb_flush,
  .trim = rb_discard, .zero = rb_discard,
};

/* Calls of the journal device that failed (injected). */
static uint64_t
jdev_errors (void)
{
  struct fake_jdev_counts jc;

  if (!jd)
    return 0;
  fake_jdev_get_counts (jd, &jc);
  return jc.errors;
}

/* The start of the last flush or drain that returned 0 (0: none). */
static uint64_t
last_flush_start (void)
{
  uint64_t s = 0;

  for (unsigned i = 0; i < nevents; i++) {
    const struct op *f = &events[i];

    if ((f->k == K_FLUSH || f->k == K_DRAIN) && f->end != UINT64_MAX &&
        f->ret == 0 && f->start > s)
      s = f->start;
  }
  return s;
}

static unsigned long ncrash;         /* crash states recovered and checked */
/* Under TSan every byte the crash checks read (CRCs, granules) costs
 * 50 times more: its run, there for data races, checks crashes only
 * after the requests, two images.
 */
#if defined(__SANITIZE_THREAD__)
#define CRASH_LIGHT 1
#else
#define CRASH_LIGHT 0
#endif

/* A power cut now: the journal device's crash image SEED (0: exactly
 * its durable part; else each pending write kept, dropped or torn) and
 * the backend's volatile (DURABLE false) or durable contents, both
 * possible states of a disk with a volatile cache.  Recovered into a
 * new cache (outside the scheduler: self is NULL meanwhile, so its
 * locks are plain ones), every granule must hold a value the crash
 * model allows: every write acknowledged before the last successful
 * flush started, and every FUA write that returned, is there (or what
 * superseded it); nothing holds a value no request wrote.
 */
static void
crash_check (const char *when, uint64_t seed, bool use_durable)
{
  struct cache_config cfg = xconfig ();
  struct xthread *me = self;
  struct fake_jdev *f;
  struct cache *rc;
  static unsigned char buf[HOT];
  struct eff ef = { .crash = true, .s = last_flush_start () };
  int err = 0, r;
  char what[160];

  if (failure[0])
    return;
  self = NULL;
  /* Both devices live for the whole run (reset, not allocated: a
   * 1 MiB allocation costs TSan's shadow memory dearly).
   */
  if (!rjd)
    rjd = fake_jdev_new (JSIZE);
  fake_jdev_crash_to (jd, seed, rjd);
  f = rjd;
  memcpy (rdisk, use_durable ? durable : mem, DISK);
  rc = cache_create (&cfg, &rb_ops, NULL, quiet_log, NULL, &err);
  if (!rc) {
    fprintf (stderr, "explore: cache_create: %s\n", strerror (-err));
    exit (2);
  }
  r = cache_journal_open (rc, fake_jdev_dev (f), JIDENT, false);
  if (r == 0)
    r = cache_journal_recover (rc);
  if (r == 0) {
    /* The pages past HOT no request writes: the final checks of the
     * explorer's own cache cover them.
     */
    memset (buf, POISON, HOT);
    r = cache_read (rc, buf, HOT, 0);
  }
  cache_destroy (rc);
  self = me;
  ncrash++;
  snprintf (what, sizeof what, "after a crash %s (journal crash image %"
            PRIu64 ", the backend's %s contents), recovered", when, seed,
            use_durable ? "durable" : "volatile");
  if (r < 0) {
    fail ("%s: recovery or read failed: %s", what, strerror (-r));
    return;
  }
  for (unsigned g = 0; g < HOT / GRAN; g++) {
    vset ok = { { 0 } };

    allowed_eff (g, &ef, UINT64_MAX, NULL, &ok, 0);
    if (!check_gran (what, NULL, g, buf + g * GRAN, &ok))
      return;
  }
}

/* The backend is about to receive BUF (NULL: a zero or trim of the
 * range) at OFF.  Rule 13: never a write of epoch e+1 before every
 * write of epochs <= e is on the backend and flushed.  The explorer
 * cannot see records, but it knows the requests: data of a request O2
 * that started after a successful flush F returned is of a later epoch
 * than every request acknowledged before F started (jnl_flush closes
 * the epoch at its start, placement orders records by epoch).  So when
 * such data reaches the backend, the durable backend must already hold
 * what F promised: for every granule, a value allowed over [F.start,
 * now] (everything acknowledged before F started, or what replaced
 * it).  The data is recognised by value: a granule of BUF holding a
 * write's value (nonzero, one request's own) comes from that write's
 * record or from a later record of the same page, of the same epoch or
 * later; a zero or trim call comes from a record of a ZERO or TRIM
 * request covering the range, and counts only if every such request
 * started after F returned.  Zeroes in BUF are not attributed (a
 * partial sector's record carries its other bytes from memory).  The
 * latest such F is checked (an earlier flush promises less).
 */
static void
epoch_check (const unsigned char *buf, uint32_t n, uint64_t off)
{
  uint64_t o2start = 0;
  const struct op *fl = NULL;

  if (!scn.journal || failure[0])
    return;
  if (buf) {
    for (uint32_t a = 0; a < n; a += GRAN) {
      unsigned v = buf[a];

      if (v == 0)
        continue;
      for (unsigned i = 0; i < nevents; i++) {
        const struct op *x = &events[i];

        if ((x->k == K_WRITE || x->k == K_WRITE_FUA) && x->val == v &&
            x->start != UINT64_MAX && x->start > o2start)
          o2start = x->start;
      }
    }
  }
  else {
    uint64_t first = UINT64_MAX;

    for (unsigned i = 0; i < nevents; i++) {
      const struct op *x = &events[i];

      if ((x->k == K_ZERO || x->k == K_TRIM) && x->start != UINT64_MAX &&
          x->off <= off && off + n <= x->off + x->len && x->start < first)
        first = x->start;
    }
    if (first != UINT64_MAX)
      o2start = first;
  }
  if (o2start == 0)
    return;
  for (unsigned i = 0; i < nevents; i++) {
    const struct op *f = &events[i];

    if ((f->k == K_FLUSH || f->k == K_DRAIN) && f->ret == 0 &&
        f->end != UINT64_MAX && f->end < o2start &&
        (!fl || f->start > fl->start))
      fl = f;
  }
  if (!fl)
    return;
  for (unsigned g = 0; g < HOT / GRAN; g++) {
    vset ok = { { 0 } };
    char what[200];

    allowed (g, fl->start, clk + 1, NULL, &ok, 0);
    snprintf (what, sizeof what, "epoch order: the backend receives %s at %"
              PRIu64 "+%u (of a request that started at %" PRIu64
              ", after the flush of [%" PRIu64 ", %" PRIu64 "] returned) "
              "while the durable backend", buf ? "data" : "a zero/trim",
              off, n, o2start, fl->start, fl->end);
    if (!check_gran (what, NULL, g, durable + g * GRAN, &ok))
      return;
  }
}

/* Was granule G trimmed by a request of the scenario?  With a journal
 * the cache keeps what it holds under a TRIM (advisory) while the
 * backend is trimmed when the record is drained: the two may differ.
 */
static bool
trimmed (unsigned g)
{
  for (unsigned i = 0; i < nevents; i++)
    if (events[i].k == K_TRIM && modifies (&events[i], g))
      return true;
  return false;
}

/* At the reply of O (in its thread, holding the baton). */
static void
check_reply (struct op *o)
{
  if (o->ret != 0) {
    if (backend_errors == 0 && jdev_errors () == 0 && !o->noop)
      fail ("%s failed (%s) although no backend call had failed",
            kind_name[o->k], strerror (-o->ret));
    return;
  }
  if (lock_lost && o->start > lost_at && needs_backend (o) &&
      !(o->k == K_WRITE && discarded_under (o))) {
    fail ("%s started after the lock was lost and returned 0",
          kind_name[o->k]);
    return;
  }
  switch (o->k) {
  case K_READ:
    for (unsigned g = o->off / GRAN; g < (o->off + o->len) / GRAN; g++) {
      vset ok = { { 0 } };
      allowed (g, o->start, o->end, NULL, &ok, 0);
      if (!check_gran ("read returned", o, g,
                       o->buf + (g * GRAN - o->off), &ok))
        return;
    }
    break;
  case K_WRITE: case K_WRITE_FUA: {
    bool fua = o->k == K_WRITE_FUA && scn.mode != CACHE_MODE_UNSAFE;
    const unsigned char *disk;

    if (scn.journal)
      break; /* durable in the journal: the crash checks */
    if (!fua && scn.mode != CACHE_MODE_WRITETHROUGH)
      break;
    disk = fua ? durable : mem;
    for (unsigned g = o->off / GRAN; g < (o->off + o->len) / GRAN; g++) {
      vset ok = { { 0 } };
      vadd (&ok, o->val);
      for (unsigned i = 0; i < nevents; i++) {
        const struct op *x = &events[i];
        if (x == o || !modifies (x, g) || x->start >= o->end ||
            (x->end != UINT64_MAX && x->end <= o->start))
          continue;
        vadd (&ok, x->k == K_WRITE || x->k == K_WRITE_FUA ? x->val : 0);
      }
      if (!check_gran (fua ? "durable at FUA reply"
                           : "backend at write-through reply",
                       o, g, disk + g * GRAN, &ok))
        return;
    }
    break;
  }
  case K_FLUSH: case K_DRAIN:
    if (o->k == K_FLUSH && (scn.mode == CACHE_MODE_UNSAFE || scn.journal))
      break; /* journal: a flush syncs the journal only (the crash checks) */
    for (unsigned g = 0; g < NGRAN; g++) {
      vset ok = { { 0 } };
      allowed (g, o->start, o->end, NULL, &ok, 0);
      if (!check_gran ("durable at flush reply", o, g, durable + g * GRAN,
                       &ok))
        return;
    }
    break;
  default:
    break;
  }
}

static void
run_op (struct op *o)
{
  switch (o->k) {
  case K_WRITE: case K_WRITE_FUA: {
    unsigned char buf[DISK]; /* the spill prelude writes past HOT */
    memset (buf, o->val, o->len);
    if (o->stream) {
      /* A run of two writes: the first (journaled) reaches the cutoff
       * (1 byte), so the whole sectors of the second go around the
       * journal (cache/bypass.c).
       */
      struct cache_stream *st = cache_stream_new ();
      /* Split at a granule (ranges start at one): the model checks
       * granules whole, and a crash between the two writes may keep
       * either part alone.  A range of one granule is one write.
       */
      uint32_t l1 = (o->off + o->len / 2) / GRAN * GRAN - o->off;

      o->ret = st ? 0 : -ENOMEM;
      if (o->ret == 0 && l1 > 0)
        o->ret = cache_write_stream (cache, st, buf, l1, o->off, 0);
      if (o->ret == 0)
        o->ret = cache_write_stream (cache, st, buf + l1, o->len - l1,
                                     o->off + l1, 0);
      cache_stream_free (st);
      break;
    }
    o->ret = cache_write (cache, buf, o->len, o->off,
                          o->k == K_WRITE_FUA ? CACHE_FUA : 0);
    break;
  }
  case K_READ:
    memset (o->buf, POISON, o->len);
    o->ret = cache_read (cache, o->buf, o->len, o->off);
    break;
  case K_TRIM: o->ret = cache_trim (cache, o->len, o->off, 0); break;
  case K_ZERO:
    o->ret = cache_zero (cache, o->len, o->off, o->flags);
    o->noop = o->ret == -ENOTSUP && (o->flags & CACHE_FAST_ZERO);
    break;
  case K_FLUSH: o->ret = cache_flush (cache); break;
  case K_DRAIN: o->ret = cache_drain (cache); break;
  case K_WB: {
    int r = cache_writeback (cache, CACHE_WB_BACKGROUND, 0);
    o->ret = r < 0 ? r : 0;
    break;
  }
  case K_RECLAIM: {
    static __thread unsigned char buf[DISK - HOT];
    o->ret = cache_read (cache, buf, DISK - HOT, HOT);
    break;
  }
  case K_JDRAIN: {
    int r = cache_journal_drain (cache);
    o->ret = r < 0 ? r : 0;
    break;
  }
  default: abort ();
  }
}

/* Journal mode, at the reply of O: a power cut now, two ways (one
 * crash image of the journal's with the volatile backend, the durable
 * journal alone with the durable backend).
 */
static void
reply_crash (const struct op *o)
{
  char when[64];

  if (CRASH_LIGHT)
    return;
  snprintf (when, sizeof when, "at the reply of %s (step %" PRIu64 ")",
            kind_name[o->k], clk);
  crash_check (when, 1 + clk * 7919 + scn.seed, false);
  crash_check (when, 0, true);
}

static bool quit;

/* The workers live for the whole run; each execution hands each of
 * them one request, one run to complete or the loss of the lock (the
 * first sem_wait is its start).
 */
static void *
worker (void *arg)
{
  self = arg;
  for (;;) {
    sem_wait (&self->go);
    if (quit)
      return NULL;
    switch (self->kind) {
    case XK_REQ:
      self->op->start = clk;
      run_op (self->op);
      self->op->end = clk;
      check_reply (self->op);
      if (scn.journal)
        reply_crash (self->op);
      break;
    case XK_CQ:
      aio_complete (cache, self->run);
      self->run = NULL;
      break;
    case XK_LOSS:
      lock_lost = true;
      lost_at = clk;
      break;
    }
    self->st = XS_DONE;
    self->where = "done";
    sem_post (&back);
  }
}

static void
start_workers (void)
{
  for (unsigned i = 0; i < NTH; i++) {
    xt[i].id = i;
    xt[i].kind = i < MAXT ? XK_REQ : i < LOSS ? XK_CQ : XK_LOSS;
    xt[i].st = XS_DONE;
    sem_init (&xt[i].go, 0, 0);
    if (pthread_create (&xt[i].th, NULL, worker, &xt[i]) != 0)
      abort ();
  }
}

static void
stop_workers (void)
{
  quit = true;
  for (unsigned i = 0; i < NTH; i++) {
    sem_post (&xt[i].go);
    pthread_join (xt[i].th, NULL);
    sem_destroy (&xt[i].go);
  }
}

static void
park_hook (void *opaque, const char *point)
{
  (void) opaque;
  if (self)
    yield (point, true);
}

/* The journal device's pwrite and sync, at their start and end. */
static void
jdev_hook (void *opaque, const char *where)
{
  (void) opaque;
  if (self)
    yield (where, true);
}

static void
quiet_log (void *opaque, enum cache_log_level lvl, const char *fmt,
           va_list ap)
{
  (void) opaque; (void) lvl; (void) fmt; (void) ap;
}

/* The kick hook of the spill scenarios: no background write-back. */
static void
kick_none (void *opaque)
{
  (void) opaque;
}

/* Runs one prelude request on the main thread (no scheduling). */
static void
prelude_op (enum kind k, uint32_t off, uint32_t len, unsigned char val)
{
  struct op *o = &events[nevents++];

  memset (o, 0, sizeof *o);
  o->k = k;
  o->off = off;
  o->len = len;
  o->val = val;
  o->start = ++clk;
  o->end = UINT64_MAX; /* running (the journal's checks look) */
  run_op (o);
  o->end = ++clk;
  if (o->ret != 0) {
    fprintf (stderr, "explore: prelude %s failed: %d\n", kind_name[k], o->ret);
    exit (2);
  }
}

static void
prelude (unsigned variant)
{
  switch (variant) {
  case 0: case 2:       /* page 0: clean, absent, dirty, absent; ... */
    prelude_op (K_READ, 0, 1024, 0);
    prelude_op (K_WRITE, 2048, 1024, 0x21);
    prelude_op (K_WRITE, 4096, 2048, 0x22);
    prelude_op (K_READ, 6144, 1024, 0);
    if (variant == 2) /* journal: and all of it on the backend, clean */
      prelude_op (scn.journal ? K_DRAIN : K_FLUSH, 0, 0, 0);
    break;
  case 1:               /* empty cache */
    break;
  case 3:               /* all clean but one dirty sector */
    prelude_op (K_WRITE, 0, HOT, 0x21);
    prelude_op (K_FLUSH, 0, 0, 0);
    prelude_op (K_WRITE, 1024, 1024, 0x22);
    break;
  default: abort ();
  }
  if (scn.journal && scn.spill) {
    /* Durable, then pushed out of RAM by the other pages: the scenario
     * reads and writes pages 0 and 1 back from the journal.
     */
    prelude_op (K_FLUSH, 0, 0, 0);
    prelude_op (K_WRITE, HOT, DISK - HOT, 0x23);
  }
}

/* A request after all of the scenario's have returned, in worker 0
 * under the scheduler (alone, so without choices), outside the model:
 * the final drain, or a read of the whole disk into final.buf.
 */
static struct op final;

static int
final_op (enum kind k, uint32_t off, uint32_t len)
{
  memset (&final, 0, sizeof final);
  final.k = k;
  final.off = off;
  final.len = len;
  final.end = UINT64_MAX;
  nxt = NTH;
  xt[0].st = XS_NEW;
  xt[0].op = &final;
  xt[0].where = "start";
  xt[0].major = true;
  if (!schedule ())
    return -EDEADLK;                    /* failure set */
  nxt = 0;
  return final.ret;
}

/* Granule G's data as the cache holds it, DATA (read through the cache
 * just now): if its sector is CLEAN (valid, neither dirty nor in
 * flight), the backend must hold the same bytes.  A CLEAN sector that
 * differs is data the cache took for written although the write failed
 * (or never happened): it is no longer dirty, a flush will not write
 * it, and eviction drops it.
 */
static void
check_clean (unsigned g, const unsigned char *data)
{
  unsigned b = cache_debug_sector (cache, (uint64_t) g * GRAN);

  if ((b & CACHE_SECT_V) && !(b & (CACHE_SECT_D | CACHE_SECT_W)) &&
      !(scn.journal && trimmed (g)) &&
      memcmp (data, mem + g * GRAN, GRAN) != 0)
    fail ("granule at %u is clean in the cache (%#x) but the backend holds "
          "%#x: data lost from the dirty set", g * GRAN, data[0],
          mem[g * GRAN]);
}

/* The end of a scenario that lost the lock: every backend call fails
 * from now on, so the drain must fail, and fail again (nothing may
 * report it written), no run may be left in flight, and every granule
 * must still be readable through the cache unless the backend already
 * holds a value the model allows for it (then the cache may have let
 * its copy go, and reading it needs the backend, which fails).
 */
static void
end_lost (void)
{
  struct cache_stats st;
  int err;

  for (unsigned i = 0; i < 2 && !failure[0]; i++) {
    err = final_op (K_DRAIN, 0, DISK);
    if (!failure[0] && err == 0)
      fail ("%s drain after the lock was lost succeeded",
            i ? "a second" : "the final");
  }
  if (failure[0])
    return;
  cache_get_stats (cache, &st);
  if (st.writeback_bytes || st.runs_in_flight)
    fail ("runs left in flight after the drains");
  if (st.waiting_flush + st.waiting_throttle + st.waiting_page
      + st.waiting_idle > 0)
    fail ("a thread is still counted as waiting after the drains");
  clk++;
  for (unsigned g = 0; g < NGRAN && !failure[0]; ) {
    unsigned h = g;

    /* A granule the cache does not hold must be on the backend. */
    if (!(cache_debug_sector (cache, (uint64_t) g * GRAN) & CACHE_SECT_V)) {
      vset ok = { { 0 } };
      allowed (g, clk, clk + 1, NULL, &ok, 0);
      check_gran ("backend at the end (the cache does not hold the "
                  "granule)", NULL, g, mem + g * GRAN, &ok);
      g++;
      continue;
    }
    /* Granules it holds are read through it, which needs no backend. */
    while (h < NGRAN &&
           cache_debug_sector (cache, (uint64_t) h * GRAN) & CACHE_SECT_V)
      h++;
    err = final_op (K_READ, g * GRAN, (h - g) * GRAN);
    if (failure[0])
      return;
    if (err) {
      fail ("read of %u+%u, which the cache holds, failed after the lock "
            "was lost: %s", g * GRAN, (h - g) * GRAN, strerror (-err));
      return;
    }
    for (; g < h && !failure[0]; g++) {
      vset ok = { { 0 } };
      const unsigned char *data = final.buf + (g * GRAN - final.off);

      allowed (g, clk, clk + 1, NULL, &ok, 0);
      if (check_gran ("read at the end", NULL, g, data, &ok))
        check_clean (g, data);
    }
  }
}

/* One execution of scn under the current prefix.  Returns true if it
 * passed every check.
 */
static bool
execute (void)
{
  struct cache_config cfg = xconfig ();
  struct cache_stats st;
  int err = 0;

  failure[0] = 0;
  ntrace = 0;
  clk = 0;
  nheld = 0;
  memset (mem, INITIAL, DISK);
  memset (durable, INITIAL, DISK);
  nwrites = 0;
  fail_nth = 0;
  fast_zero_ok = scn.fast_zero_ok;
  cache = cache_create (&cfg, scn.trim_zero ? &xb_ops : &xb_ops_plain,
                        NULL, quiet_log, NULL, &err);
  if (!cache) {
    fprintf (stderr, "explore: cache_create: %s\n", strerror (-err));
    exit (2);
  }
  cache_debug_set_park (cache, park_hook, NULL);
  if (scn.journal) {
    if (!jd) {
      jd = fake_jdev_new (JSIZE);
      fake_jdev_set_hook (jd, jdev_hook, NULL);
    }
    else
      fake_jdev_reset (jd);
    if ((err = cache_journal_open (cache, fake_jdev_dev (jd), JIDENT,
                                   true)) != 0 ||
        (err = cache_journal_recover (cache)) != 0) {
      fprintf (stderr, "explore: opening the journal: %s\n",
               strerror (-err));
      exit (2);
    }
    if (scn.spill)
      cache_set_kick (cache, kick_none, NULL);
    cache_journal_sequential_cutoff (cache, 1); /* o->stream writes */
  }
  nevents = 0;
  lock_lost = false;
  lost_at = 0;
  backend_errors = 0;
  prelude (scn.prelude);
  fail_nth = scn.fail_nth;
  if (scn.jfail)
    fake_jdev_fail_next (jd, scn.jfail == 1 ? FAKE_JDEV_PWRITE
                         : FAKE_JDEV_SYNC, EIO, scn.jfail_skip);
  /* After the prelude, which runs on the main thread, unscheduled. */
  if (scn.aio)
    cache_set_submit (cache, xb_submit, NULL);

  for (unsigned i = 0; i < NTH; i++) {
    struct xthread *t = &xt[i];

    t->st = XS_DONE;
    t->run = NULL;
    t->where = "start";
    t->major = true;
    if (t->kind == XK_REQ && i < scn.nops) {
      struct op *o = &events[nevents++];

      *o = scn.ops[i];
      o->start = o->end = UINT64_MAX;
      o->ret = 0;
      o->noop = false;
      o->dis_off = o->dis_len = 0;
      t->st = XS_NEW;
      t->op = o;
    }
    else if (t->kind == XK_LOSS && scn.lost_lock)
      t->st = XS_NEW;
  }
  nxt = NTH;
  spent = 0;
  if (!schedule ()) {
    /* Threads are stuck for good: report and leave. */
    return false;
  }
  nxt = 0;
  /* Every run has completed (its slot ran): the requests after this
   * one write synchronously, one order only.
   */
  cache_set_submit (cache, NULL, NULL);
  if (scn.lost_lock) {
    end_lost ();
    if (!failure[0] && !cache_debug_check (cache))
      fail ("page_check failed at the end");
    cache_destroy (cache);
    cache = NULL;
    return !failure[0];
  }
  /* Journal mode: power cuts after the requests, four crash images of
   * the journal, each with both states of the backend.
   */
  for (uint64_t k = 0; scn.journal && k < (CRASH_LIGHT ? 2 : 4) &&
                      !failure[0]; k++) {
    uint64_t seed = k ? k * 1000003 + clk + scn.seed : 0;

    crash_check ("after the requests", seed, false);
    crash_check ("after the requests", seed, true);
  }

  /* The end: nobody waits; a drain with the fault off succeeds; the
   * durable disk and reads hold what the model allows.
   */
  cache_get_stats (cache, &st);
  if (st.waiting_flush + st.waiting_throttle + st.waiting_page
      + st.waiting_idle > 0)
    fail ("a thread is still counted as waiting after every request "
          "returned");
  fail_nth = 0;
  if (scn.jfail) /* off (as fail_nth below): never reached */
    fake_jdev_fail_next (jd, scn.jfail == 1 ? FAKE_JDEV_PWRITE
                         : FAKE_JDEV_SYNC, EIO, UINT_MAX);
  /* Journal mode: after a failed journal sync every flush fails (the
   * error is sticky), the drain too; the crash checks above were the
   * end.
   */
  if (scn.journal && scn.jfail == 2 && jdev_errors () > 0) {
    if (!failure[0] && (err = final_op (K_DRAIN, 0, DISK)) == 0)
      fail ("the final drain succeeded after a failed journal sync");
    if (failure[0])
      return false;
    cache_destroy (cache);
    cache = NULL;
    return true;
  }
  /* An injected write error that no flush reported yet is reported
   * once, by this drain; the next one must succeed.  The drain runs in
   * a worker, so that a drain that never returns is found too.
   */
  if (!failure[0] && (err = final_op (K_DRAIN, 0, DISK)) != 0 &&
      !(scn.fail_nth && nwrites >= scn.fail_nth && err == -EIO &&
        (err = final_op (K_DRAIN, 0, DISK)) == 0))
    fail ("final drain failed: %s", strerror (-err));
  if (failure[0])
    return false;
  clk++;
  if (!failure[0]) {
    cache_get_stats (cache, &st);
    if (st.dirty_bytes || st.writeback_bytes)
      fail ("dirty data left after the final drain");
  }
  for (unsigned g = 0; g < NGRAN && !failure[0]; g++) {
    vset ok = { { 0 } };
    allowed (g, clk, clk + 1, NULL, &ok, 0);
    check_gran ("durable at the end", NULL, g, durable + g * GRAN, &ok);
  }
  if (!failure[0]) {
    err = final_op (K_READ, 0, DISK);
    if (failure[0])
      return false;
    if (err)
      fail ("final read failed: %s", strerror (-err));
    for (unsigned g = 0; g < NGRAN && !failure[0]; g++) {
      vset ok = { { 0 } };
      allowed (g, clk, clk + 1, NULL, &ok, 0);
      if (check_gran ("read at the end", NULL, g, final.buf + g * GRAN, &ok))
        check_clean (g, final.buf + g * GRAN);
    }
  }
  /* Journal mode: after the drain the backend is the cache, durably
   * (but for TRIMs, which the cache does not apply to what it holds).
   */
  if (scn.journal && !failure[0]) {
    if (memcmp (mem, durable, DISK) != 0)
      fail ("after the final drain the backend is not flushed");
    for (unsigned g = 0; g < NGRAN && !failure[0]; g++)
      if (!trimmed (g) && memcmp (final.buf + g * GRAN, mem + g * GRAN,
                                  GRAN) != 0)
        fail ("after the final drain granule %u reads %#x through the "
              "cache but the backend holds %#x", g * GRAN,
              final.buf[g * GRAN], mem[g * GRAN]);
    crash_check ("after the final drain", 0, true);
  }
  if (!failure[0] && !cache_debug_check (cache))
    fail ("page_check failed at the end");
  cache_destroy (cache);
  cache = NULL;
  return !failure[0];
}

/* ---- reporting ---- */

/* The choices as a list, runs of one choice as C*N (--replay reads it). */
static void
print_schedule (FILE *fp)
{
  fprintf (fp, "%u:%" PRIu64 ":", bound, scn.seed);
  for (unsigned i = 0; i < ntrace; ) {
    unsigned j = i;
    while (j < ntrace && trace[j].chosen == trace[i].chosen)
      j++;
    fprintf (fp, "%s%u", i ? "," : "", trace[i].chosen);
    if (j - i > 1)
      fprintf (fp, "*%u", j - i);
    i = j;
  }
}

/* The cache's state, after a failure: sector states of the hot pages
 * and the counters.  Safe from the main thread only while no worker
 * holds a lock (a deadlock report: everyone is in a wait).
 */
static void
dump_cache (void)
{
  struct cache_stats st;

  if (!cache)
    return;
  for (uint32_t off = 0; off < HOT; off += PAGE) {
    fprintf (stderr, "page %u:", off / PAGE);
    for (uint32_t o = off; o < off + PAGE; o += scn.sector_size) {
      unsigned b = cache_debug_sector (cache, o);
      fprintf (stderr, " %s%s%s", b & CACHE_SECT_V ? "V" : "-",
               b & CACHE_SECT_D ? "D" : "-", b & CACHE_SECT_W ? "W" : "-");
    }
    fprintf (stderr, "\n");
  }
  cache_get_stats (cache, &st);
  fprintf (stderr, "dirty %" PRIu64 " B, writeback %" PRIu64 " B, dirty "
           "pages %" PRIu64 ", runs in flight %" PRIu64 ", waiting: flush "
           "%" PRIu64 " idle %" PRIu64 " throttle %" PRIu64 " page %" PRIu64
           "\n", st.dirty_bytes, st.writeback_bytes, st.dirty_pages,
           st.runs_in_flight, st.waiting_flush, st.waiting_idle,
           st.waiting_throttle, st.waiting_page);
}

static void
report (const char *why)
{
  char desc[1024];
  unsigned from = ntrace > 80 ? ntrace - 80 : 0;

  describe (&scn, desc, sizeof desc);
  fprintf (stderr, "explore: FAILED: %s\n", why);
  fprintf (stderr, "scenario: %s\n", desc);
  if (strstr (why, "no thread can run"))
    dump_cache ();
  fprintf (stderr, "steps (the thread that ran, and where the one before "
           "it stopped)%s:\n", from ? ", the last 80" : "");
  for (unsigned i = from; i < ntrace; i++)
    fprintf (stderr, "  %5u: t%u%s (after %s)\n", i, trace[i].who,
             trace[i].chosen ? " <- switch" : "", trace[i].where);
  fprintf (stderr, "replay: explore%s%s%s%s --aio %d --lost-lock %d "
           "--replay '", ops_arg ? " --ops '" : "", ops_arg ? ops_arg : "",
           ops_arg ? "'" : "", scn.journal ? " --journal 1" : "", scn.aio,
           scn.lost_lock);
  print_schedule (stderr);
  fprintf (stderr, "'\n");
}

static void
on_abort (int sig)
{
  static const char msg[] =
    "explore: the core aborted (CACHE_ASSERT); scenario and schedule:\n";
  (void) sig;
  if (write (2, msg, sizeof msg - 1) < 0) { /* nothing to do */ }
  report ("abort");
  signal (SIGABRT, SIG_DFL);
  abort ();
}

static double
now_s (void)
{
  struct timespec ts;
  clock_gettime (CLOCK_MONOTONIC, &ts);
  return (double) ts.tv_sec + (double) ts.tv_nsec / 1e9;
}

/* Explores scn with BOUND, at most CAP schedules.  Returns the number
 * run, or -1 on a failure (reported).
 */
static long nsched;                  /* of the scenario in progress */

static long
explore_bound (unsigned b, long cap, double deadline, bool *timeout)
{
  long n = 0;

  bound = b;
  nprefix = 0;
  for (;;) {
    if (!execute ()) {
      report (failure);
      nsched = n;
      return -1;
    }
    n++;
    if (n >= cap)
      break;
    if (now_s () > deadline) {
      *timeout = true;
      break;
    }
    if (!next_schedule (bound))
      break;
  }
  return n;
}

/* Does S have a request that collects write-back runs (the ones the
 * aio mode completes asynchronously; FUA and write-through writes are
 * synchronous in every mode)?  Without one an aio scenario runs the
 * same schedules as the synchronous one.
 */
static bool
makes_runs (const struct scenario *s)
{
  for (unsigned i = 0; i < s->nops; i++)
    switch (s->ops[i].k) {
    case K_FLUSH: case K_DRAIN: case K_WB: case K_RECLAIM: return true;
    default: break;
    }
  return false;
}

int
main (int argc, char **argv)
{
  double seconds = 60, t0;
  uint64_t seed = 1;
  long max_scenarios = -1, cap2 = 3000;
  unsigned bound2 = 2;
  const char *replay = NULL, *ops = NULL;
  bool only2 = false;
  double share1 = 0.4;
  /* Time shares of the modes, [aio * 2 + lost lock]: the synchronous
   * mode with the lock kept, which the races of issue 13 were measured
   * with, keeps the largest.
   */
  static const double mode_share[4] = { 0.4, 0.2, 0.2, 0.2 };
  /* Bound 1 explores a scenario completely, but the new modes' choice
   * points (each run's completion, the loss) make a few scenarios run
   * to tens of thousands of schedules, which would take a mode's whole
   * share: they stop at this many.
   */
  const long cap1_new = 5000;
  bool deep = getenv ("SUBPAGE_DEEP") && strcmp (getenv ("SUBPAGE_DEEP"), "0");
  long total = 0, nscen[2] = { 0, 0 };
  /* Scenarios and schedules by mode: [aio][lost lock]. */
  long mscen[2][2] = { { 0 } }, msched[2][2] = { { 0 } };
  double msecs[2][2] = { { 0 } };

  trace_points = getenv ("EXPLORE_TRACE") != NULL;
  verbose = getenv ("EXPLORE_VERBOSE") != NULL;
  if (getenv ("EXPLORE_SECONDS"))
    seconds = atof (getenv ("EXPLORE_SECONDS"));
  if (deep) {
    seconds = getenv ("EXPLORE_DEEP_SECONDS")
      ? atof (getenv ("EXPLORE_DEEP_SECONDS")) : 600;
    minor_cost = 1;
    bound2 = 3;
    cap2 = 20000;
  }
  for (int i = 1; i < argc; i++) {
    if (!strcmp (argv[i], "--seconds") && i + 1 < argc)
      seconds = atof (argv[++i]);
    else if (!strcmp (argv[i], "--seed") && i + 1 < argc)
      seed = strtoull (argv[++i], NULL, 0);
    else if (!strcmp (argv[i], "--scenarios") && i + 1 < argc)
      max_scenarios = atol (argv[++i]);
    else if (!strcmp (argv[i], "--replay") && i + 1 < argc)
      replay = argv[++i];
    else if (!strcmp (argv[i], "--only-bound2"))
      only2 = true;
    else if (!strcmp (argv[i], "--ops") && i + 1 < argc)
      ops = argv[++i];
    else if (!strcmp (argv[i], "--aio") && i + 1 < argc)
      force_aio = atoi (argv[++i]) != 0;
    else if (!strcmp (argv[i], "--lost-lock") && i + 1 < argc)
      force_lost = atoi (argv[++i]) != 0;
    else if (!strcmp (argv[i], "--journal") && i + 1 < argc)
      force_journal = atoi (argv[++i]) != 0;
    else {
      fprintf (stderr, "usage: explore [--seconds N] [--seed N] "
               "[--scenarios N] [--ops KIND[:OFF+LEN],...] "
               "[--aio 0|1] [--lost-lock 0|1] [--journal 0|1] "
               "[--replay BOUND:SEED:c,c,...]\n");
      return 2;
    }
  }
  /* The journal mode is a mode of its own: synchronous completions
   * (its drainer calls the backend directly), the lock kept.
   */
  if (force_journal > 0) {
    force_aio = 0;
    force_lost = 0;
  }
  sem_init (&back, 0, 0);
  signal (SIGABRT, on_abort);
  /* The journal mode allocates a 1 MiB device, and recovers a copy of
   * it, several times an execution: always from fresh zero pages
   * (calloc), never from a heap that would be cleared for it (glibc
   * raises the threshold once such a block is freed).
   */
  mallopt (M_MMAP_THRESHOLD, 256 * 1024);

  ops_arg = ops;
  start_workers ();
  if (replay) {
    char *p;
    bound = (unsigned) strtoul (replay, &p, 10);
    if (*p != ':') {
      fprintf (stderr, "explore: --replay BOUND:SEED:CHOICES\n");
      return 2;
    }
    make_scenario (strtoull (p + 1, &p, 10), &scn);
    if (ops)
      parse_ops (ops, &scn);
    nprefix = 0;
    while (*p == ':' || *p == ',') {
      unsigned long c = strtoul (p + 1, &p, 10), n = 1;
      if (*p == '*')
        n = strtoul (p + 1, &p, 10);
      while (n-- > 0 && nprefix < MAXDEC)
        prefix[nprefix++] = (uint8_t) c;
    }
    if (!execute ()) {
      report (failure);
      return 1;
    }
    printf ("replay passed (%u steps)\n", ntrace);
    stop_workers ();
    return 0;
  }

  /* Iterative bounding: bound 1 over as many scenarios as share1 of the
   * time allows, then bound BOUND2 over the same scenarios from the
   * first.  In each phase the four modes (synchronous or asynchronous
   * completions, lock kept or lost) each explore a stream of scenarios
   * of their own, seed, seed + 1, ... (the same requests in every
   * mode), and share the phase's time by mode_share: the next scenario
   * is always that of the mode furthest behind its share.  Which
   * scenarios a mode reaches depends on the time, as it did before;
   * the sequence of each does not.
   */
  t0 = now_s ();
  for (unsigned phase = only2 ? 1 : 0; phase < 2; phase++) {
    double deadline = t0 + seconds * (phase == 0 ? share1 : 1.0);
    unsigned b = phase == 0 ? 1 : bound2;
    long cap = phase == 0 ? 1000000 : cap2;
    uint64_t next[4] = { 0, 0, 0, 0 };
    double used[4] = { 0, 0, 0, 0 };

    for (long i = 0; max_scenarios < 0 || i < max_scenarios; i++) {
      long n;
      double ts;
      int m = -1;

      if (now_s () > deadline)
        break;
      for (int k = 0; k < 4; k++) {
        if ((force_aio >= 0 && (k >> 1) != force_aio) ||
            (force_lost >= 0 && (k & 1) != force_lost))
          continue;
        if (m < 0 || used[k] / mode_share[k] < used[m] / mode_share[m])
          m = k;
      }
      ts = now_s ();
      {
        int fa = force_aio, fl = force_lost;
        force_aio = m >> 1;
        force_lost = m & 1;
        do {
          make_scenario (seed + next[m]++, &scn);
          if (ops)
            parse_ops (ops, &scn);
        } while (scn.aio && !ops && !makes_runs (&scn));
        force_aio = fa;
        force_lost = fl;
      }
      aio_used = false;
      {
        /* A scenario of a new mode takes at most a quarter of the
         * mode's share of the phase (and of the schedules, cap1_new),
         * so that one large one (most of all under TSan) leaves the
         * mode time for others.
         */
        double len = seconds * (phase == 0 ? share1 : 1.0 - share1);
        double dl = m == 0 ? deadline : ts + len * mode_share[m] / 4;
        bool cut = false;

        n = explore_bound (b, m == 0 ? cap : (cap < cap1_new ? cap : cap1_new),
                           dl < deadline ? dl : deadline, &cut);
      }
      used[m] += now_s () - ts;
      if (verbose)
        fprintf (stderr, "explore: seed %" PRIu64 " aio=%d lost-lock=%d "
                 "bound %u: %ld schedules, %.2f s%s\n", scn.seed, scn.aio,
                 scn.lost_lock, b, n, now_s () - ts,
                 scn.aio && !aio_used ? " (no run went asynchronously)" : "");
      msecs[scn.aio][scn.lost_lock] += now_s () - ts;
      if (n < 0) {
        fprintf (stderr, "explore: found in scenario %" PRIu64 " of mode "
                 "aio=%d lost-lock=%d, bound %u, after %ld schedules in "
                 "all, in %.1f s\n",
                 next[m], scn.aio, scn.lost_lock, b, total + nsched + 1,
                 now_s () - t0);
        return 1;
      }
      total += n;
      nscen[phase]++;
      mscen[scn.aio][scn.lost_lock]++;
      msched[scn.aio][scn.lost_lock] += n;
      nsched = 0;
    }
  }
  for (unsigned a = 0; a < 2; a++)
    for (unsigned l = 0; l < 2; l++)
      printf ("explore: %s completions, %s: %ld scenarios, %ld schedules, "
              "%.1f s\n", a ? "asynchronous" : "synchronous",
              l ? "lock lost" : "lock kept", mscen[a][l], msched[a][l],
              msecs[a][l]);
  printf ("explore: %ld scenarios within bound 1 and %ld within bound %u "
          "(at most %ld schedules each), %ld schedules, %.1f s, "
          "%.0f schedules/s: no failure\n",
          nscen[0], nscen[1], bound2, cap2, total, now_s () - t0,
          (double) total / (now_s () - t0));
  if (force_journal > 0)
    printf ("explore: journal mode: %lu crash states recovered and "
            "checked\n", ncrash);
  stop_workers ();
  return 0;
}
