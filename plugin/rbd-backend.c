/* subpage: the Ceph RBD backend.
 *
 * Notes on the design.
 *
 * What it does: the struct backend of rbd=POOL/IMAGE (backend.h): the
 * cache core's backend operations (cache.h, struct cache_backend_ops)
 * over an RBD image through librbd's C API, and an asynchronous write
 * for the write-back server (rb_aio_pwrite, wbserver.h's aio_pwrite).
 * Every operation returns 0 or -errno and is safe to call from several
 * threads at once (librbd's image handle is).
 *
 * Fork.  librados starts threads (messenger, timers, finishers) at
 * rados_connect and librbd more at rbd_open, and nbdkit forks after
 * .get_ready (unless -f): those threads would not exist in the child,
 * and the handles would hang there.  So rbd_backend_open (.get_ready,
 * where an error still reaches the user and makes nbdkit exit
 * non-zero) only probes: it connects, opens the image, checks its
 * features, takes the exclusive lock (waiting for a dead owner's watch
 * to expire), reads the size, then releases the lock, closes and shuts
 * down.  The backend's start (.after_fork) connects again and takes the
 * lock for good, in the process that serves.  Between the two, another
 * client may take the lock; start then fails, naming the owner (seen
 * on the terminal with -f; in daemon mode nbdkit's parent has already
 * exited 0, so the message goes to the log).  The probe has
 * rados_osd_op_timeout set, so nothing in it waits for ever for an OSD;
 * the serving connection has not (I/O waits as long as the cluster
 * takes, as librbd expects; a bound on I/O is not this file's).
 * Connecting, in both, is bounded by client_mount_timeout, which is
 * capped at RB_CONNECT_TIMEOUT (a ceph.conf may set less), and monitor
 * commands by rados_mon_op_timeout.  Calls that can create librados
 * threads run with every signal blocked, so that those threads never
 * take nbdkit's signals (thread.h says why).
 *
 * Settings made on every connection (rados_conf_set, after ceph.conf):
 * rbd_cache=false (the plugin is the cache: with librbd's write-back
 * cache a completed write would not be durable until rbd_flush, and two
 * caches would hold dirty data), rbd_skip_partial_discard=false (a trim
 * zeroes the whole range, also inside an object, so the data the cache
 * drops is not replaced by older data), the timeouts above.
 *
 * Fencing (rbd-exclusive=true, the default).  The image must have the
 * exclusive-lock feature.  rbd_lock_acquire switches the image to
 * librbd's "standard" lock policy: the lock is taken now and never
 * handed to a peer that asks for it (the peer gets EROFS), and librbd
 * never takes it again by itself.  What librbd does on lock_acquire
 * (measured with the test cluster, docs/ceph-tests.md):
 *   - another live client holding it with the standard policy (another
 *     subpage): -EROFS at once.  The probe fails, naming the owners
 *     (rbd_lock_get_owners).
 *   - an owner that died: the call blocks until the OSD drops the dead
 *     owner's watch (osd_client_watch_timeout, 30 s by default), then
 *     blocklists it, breaks its lock and returns 0.  EBUSY, EAGAIN and
 *     ETIMEDOUT are retried until RB_LOCK_WAIT has passed.
 *   - a live client with librbd's default ("automatic") policy (qemu, a
 *     python client that just wrote): it is asked for the lock and
 *     hands it over, as librbd clients do between themselves; it gets
 *     EROFS on its next write, since this one never gives it back.
 * Losing the lock: another client that breaks it (`rbd lock rm`,
 * rbd_lock_break) blocklists this client first (rbd_blocklist_on_break
 * _lock, default true), and from then on the OSDs refuse its requests
 * and librbd fails every call with -ESHUTDOWN (EBLOCKLISTED); a write
 * after losing the lock under the standard policy fails with -EROFS.
 * Either error marks the backend fenced: logged once, and every later
 * operation fails with -EIO without reaching librbd, so write-back
 * fails, the data stays dirty in the cache and flushes fail (the
 * cache's invariant 7), and nothing is written behind the new owner.
 * A flush also asks rbd_is_exclusive_lock_owner (one OSD round trip:
 * it asserts the lock on the header object) before rbd_flush, which
 * catches a lock broken without blocklisting; writes in between are
 * not fenced then (an operator who turned blocklisting off chose that).
 *
 * Asynchronous writes: rbd_aio_write with a completion whose callback
 * runs in a librbd thread; it only queues the command for this
 * backend's completion thread, which calls the done function with no
 * librbd lock held (done may submit the next write, and a librbd
 * callback must not block).  Any number are in flight; the cache's
 * write-back buffer cap bounds them.
 *
 * Flags: FUA needs nothing (with librbd's cache off a completed write
 * is on the OSDs' stable storage), flush is rbd_flush.  Zero is
 * rbd_write_zeroes, which may deallocate; without CACHE_MAY_TRIM it is
 * asked to keep the range allocated (RBD_WRITE_ZEROES_FLAG_THICK_
 * PROVISION).  CACHE_FAST_ZERO fails with -ENOTSUP: librbd cannot
 * promise a zero is fast.  Trim is rbd_discard.
 *
 * Extents: rbd_diff_iterate2 from the image's creation (no snapshot,
 * parent included, per extent, not whole objects), whose answers are
 * data and the rest holes that read as zeroes.  Without the
 * object-map and fast-diff features it asks each object of the range
 * for its extents (one OSD request per 4 MiB object); nbdkit clients
 * ask block status in pieces and the plugin stops after 32 runs per
 * request, and a copy that skips holes saves far more than it costs.
 *
 * Journal claim.  A journal (journal=) holds writes acknowledged and
 * not yet on the image, and its replay at start writes them; replayed
 * onto an image that another instance has written since, it would put
 * older data over newer.  So the image says which journal may hold its
 * unwritten data: the image metadata key subpage.journal (RB_CLAIM_KEY),
 * whose value is that journal's id in hex (32 digits, as subpage-
 * journal check prints it).  rb_claim, at start after the lock is taken
 * and before the replay: with a journal, an absent key or our own id is
 * set to our id and the start goes on; another id refuses the start,
 * naming both.  Without a journal, any key refuses (our writes would be
 * overwritten when that journal is replayed).  rb_unclaim, at a clean
 * stop once the final drain succeeded (everything written back and
 * flushed, the journal's tail written), removes the key if it still
 * names us, before the lock is released: the image can go to another
 * host.  A crash, a failed drain or a fenced instance leaves it.  The
 * probe reads the key too, so that the plugin can refuse in .get_ready,
 * where the user sees it (rb_claim with CHECK); the check that counts is
 * the one made under the serving connection's lock.  With
 * rbd-exclusive=false the key is still read, set and removed, but
 * without the lock nothing orders this against another client: a best
 * effort, and a failure to read or write it is logged, not fatal.  What
 * the key does not catch: an operator who removed it (declaring the
 * journal lost) and later starts on that journal again; that journal
 * then claims the image afresh and is replayed.
 *
 * What it does not do: snapshots, namespaces, reconnection after
 * being blocklisted (the instance is fenced for good: restart it),
 * a timeout on I/O.
 */

#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1 /* strerrordesc_np, pthread_setname_np */
#endif
#define NBDKIT_API_VERSION 2

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <nbdkit-plugin.h>
#include <rados/librados.h>
#include <rbd/features.h>
#include <rbd/librbd.h>

#include "backend.h"
#include "cache.h"
#include "errstr.h"
#include "pool.h"
#include "rbd-backend.h"
#include "thread.h"
#include "util.h"

/* Seconds: the most connecting may take (client_mount_timeout, capped),
 * and monitor commands (rados_mon_op_timeout).
 */
#define RB_CONNECT_TIMEOUT 30
/* Seconds: each OSD request of the probe (rados_osd_op_timeout). */
#define RB_PROBE_OP_TIMEOUT 30
/* Seconds: how long the lock is asked for again while librbd says it is
 * busy (a dead owner whose watch has not expired).
 */
#define RB_LOCK_WAIT 60
/* Milliseconds a flush waits for librbd to hold the lock again before
 * it takes "not owner" for a lock that another client broke.
 */
#define RB_LOCK_SETTLE_MS 10000
/* Preallocated asynchronous writes; more are malloc'd. */
#define RB_POOL_CMDS 1024
/* Owners listed in a message. */
#define RB_MAX_OWNERS 8
/* The image metadata key of the journal claim, and the room for its
 * value (32 hex digits; anything longer is shown cut).
 */
#define RB_CLAIM_KEY "subpage.journal"
#define RB_CLAIM_MAX 128

/* One connection: cluster, pool, image. */
struct rb_conn {
  rados_t cluster;
  rados_ioctx_t io;
  rbd_image_t img;
};

/* An asynchronous write. */
struct rb_cmd {
  struct rb_cmd *next; /* the pool's link while free; done list */
  struct rbd_backend *rb;
  void (*fn) (void *arg, int err);
  void *arg;
  uint64_t off;
  uint32_t count;
  ssize_t ret;
};

struct rbd_backend {
  char *spec; /* POOL/IMAGE */
  char *pool, *image, *conf, *id, *keyring;
  bool exclusive;
  /* backend-timeout= (0: none): librados fails an operation past it
   * with ETIMEDOUT, which is reported as EIO, logged once per outage
   * (timing_out, cleared by the next backend flush that succeeds).
   */
  uint32_t timeout_ms;
  atomic_bool timing_out;
  uint64_t size; /* at open */

  struct rb_conn c; /* the serving connection, from rb_start */
  bool started;

  /* Fenced: the lock is lost; every operation fails with -EIO. */
  atomic_bool lost;

  /* Journal claim: the key's value the probe read ("" absent, NULL
   * unknown); ours in hex once rb_claim set it (claimed).
   */
  char probe_claim_buf[RB_CLAIM_MAX];
  const char *probe_claim;
  char claim_id[33];
  bool claimed;

  /* The completion thread and its list (lock, cv). */
  struct pool cmds;
  pthread_mutex_t lock;
  pthread_cond_t cv;
  struct rb_cmd *done; /* newest first */
  bool quit;
  pthread_t completer;
  bool completer_started;
};

/* ---- connecting -------------------------------------------------------- */

/* rados_conf_set, logged on failure. */
static int
rb_set (struct rbd_backend *rb, rados_t cluster, const char *key,
        const char *value)
{
  int r = rados_conf_set (cluster, key, value);

  if (r < 0)
    nbdkit_error ("subpage: rbd=%s: cannot set %s=%s: %s", rb->spec, key, value,
                  errstr (-r));
  return r;
}

/* The owners of the image's lock, comma separated, in BUF. */
static const char *
rb_owners (rbd_image_t img, char *buf, size_t n)
{
  char *owners[RB_MAX_OWNERS];
  size_t max = RB_MAX_OWNERS, len = 0;
  rbd_lock_mode_t mode;
  int r;

  r = rbd_lock_get_owners (img, &mode, owners, &max);
  if (r == -ENOENT || (r == 0 && max == 0))
    snprintf (buf, n, "no owner now");
  else if (r < 0)
    snprintf (buf, n, "owner unknown: %s", errstr (-r));
  else {
    buf[0] = '\0';
    for (size_t i = 0; i < max && len < n; i++)
      len += snprintf (buf + len, n - len, "%s%s", i ? ", " : "", owners[i]);
    rbd_lock_get_owners_cleanup (owners, max);
  }
  return buf;
}

/* Takes the image's exclusive lock on IMG, asking again while librbd
 * says it is busy, for at most RB_LOCK_WAIT seconds.  Returns 0 or
 * -errno (logged).
 */
static int
rb_take_lock (struct rbd_backend *rb, rbd_image_t img)
{
  time_t deadline = time (NULL) + RB_LOCK_WAIT;
  char owners[512];
  int r, owner = 0;

  for (;;) {
    r = rbd_lock_acquire (img, RBD_LOCK_MODE_EXCLUSIVE);
    if (r == 0)
      break;
    if ((r == -EBUSY || r == -EAGAIN || r == -ETIMEDOUT) &&
        time (NULL) < deadline) {
      nbdkit_debug ("subpage: rbd=%s: exclusive lock busy (%s), held by "
                    "%s: asking again",
                    rb->spec, errstr (-r),
                    rb_owners (img, owners, sizeof owners));
      sleep (1);
      continue;
    }
    if (r == -EROFS)
      nbdkit_error ("subpage: rbd=%s: the image's exclusive lock is held by "
                    "another live client (%s), which keeps it: is another "
                    "subpage serving this image? Only one may write it",
                    rb->spec, rb_owners (img, owners, sizeof owners));
    else
      nbdkit_error ("subpage: rbd=%s: cannot take the image's exclusive "
                    "lock (held by %s): %s",
                    rb->spec, rb_owners (img, owners, sizeof owners),
                    errstr (-r));
    return r;
  }
  r = rbd_is_exclusive_lock_owner (img, &owner);
  if (r < 0 || !owner) {
    nbdkit_error ("subpage: rbd=%s: took the exclusive lock but does not "
                  "own it (held by %s)%s%s",
                  rb->spec, rb_owners (img, owners, sizeof owners),
                  r < 0 ? ": " : "", r < 0 ? errstr (-r) : "");
    return r < 0 ? r : -EBUSY;
  }
  return 0;
}

/* Closes what C holds (any part may be unset). */
static void
rb_disconnect (struct rb_conn *c)
{
  if (c->img != NULL)
    rbd_close (c->img);
  if (c->io != NULL)
    rados_ioctx_destroy (c->io);
  if (c->cluster != NULL)
    rados_shutdown (c->cluster);
  memset (c, 0, sizeof *c);
}

/* Connects to the cluster, opens the image and, with rb->exclusive,
 * checks its exclusive-lock feature and takes the lock.  PROBE: every
 * OSD request is bounded too.  Returns 0 or -errno (logged); on error
 * C holds nothing.
 */
static int
rb_connect_locked (struct rbd_backend *rb, bool probe, struct rb_conn *c)
{
  char buf[32];
  uint64_t features = 0;
  long mount_timeout;
  int r;

  memset (c, 0, sizeof *c);
  r = rados_create (&c->cluster, rb->id);
  if (r < 0) {
    nbdkit_error ("subpage: rbd=%s: rados_create (ceph-id=%s): %s", rb->spec,
                  rb->id, errstr (-r));
    c->cluster = NULL;
    return r;
  }
  r = rados_conf_read_file (c->cluster, rb->conf);
  if (r < 0) {
    nbdkit_error ("subpage: rbd=%s: ceph-conf=%s: cannot read it: %s", rb->spec,
                  rb->conf, errstr (-r));
    goto err;
  }
  /* CEPH_ARGS, as every Ceph client honours it. */
  rados_conf_parse_env (c->cluster, NULL);
  if (rb->keyring != NULL &&
      (r = rb_set (rb, c->cluster, "keyring", rb->keyring)) < 0)
    goto err;
  /* Bounded connect: backend-timeout= if given, else ceph.conf's
   * value, but never more than RB_CONNECT_TIMEOUT.
   */
  mount_timeout = RB_CONNECT_TIMEOUT;
  if (rados_conf_get (c->cluster, "client_mount_timeout", buf, sizeof buf) ==
        0 &&
      atof (buf) > 0 && atof (buf) < RB_CONNECT_TIMEOUT)
    mount_timeout = (long) atof (buf) > 0 ? (long) atof (buf) : 1;
  /* librados takes whole seconds: backend-timeout= rounded up. */
  if (rb->timeout_ms > 0)
    mount_timeout = (long) DIV_ROUND_UP (rb->timeout_ms, 1000);
  snprintf (buf, sizeof buf, "%ld", mount_timeout);
  if ((r = rb_set (rb, c->cluster, "client_mount_timeout", buf)) < 0 ||
      (r = rb_set (rb, c->cluster, "rados_mon_op_timeout", buf)) < 0 ||
      (r = rb_set (rb, c->cluster, "rbd_cache", "false")) < 0 ||
      (r = rb_set (rb, c->cluster, "rbd_skip_partial_discard", "false")) < 0)
    goto err;
  /* Each OSD request: backend-timeout= while serving; the probe's own
   * bound when none is given.
   */
  if (rb->timeout_ms > 0 || probe) {
    snprintf (buf, sizeof buf, "%ld",
              rb->timeout_ms > 0 ? mount_timeout : (long) RB_PROBE_OP_TIMEOUT);
    if ((r = rb_set (rb, c->cluster, "rados_osd_op_timeout", buf)) < 0)
      goto err;
  }

  r = rados_connect (c->cluster);
  if (r < 0) {
    char hint[128] = "";

    if (r == -ETIMEDOUT)
      snprintf (hint, sizeof hint,
                ": no monitor answered within %ld s (is the cluster up, "
                "and mon_host in ceph.conf right?)",
                mount_timeout);
    else if (r == -EACCES || r == -EPERM || r == -ENOENT || r == -EINVAL)
      snprintf (hint, sizeof hint,
                " (authentication failed: check ceph-id= and the keyring)");
    nbdkit_error ("subpage: rbd=%s: cannot connect to the cluster "
                  "(ceph-conf=%s ceph-id=%s%s%s): %s%s",
                  rb->spec, rb->conf, rb->id,
                  rb->keyring ? " ceph-keyring=" : "",
                  rb->keyring ? rb->keyring : "", errstr (-r), hint);
    goto err;
  }
  r = rados_ioctx_create (c->cluster, rb->pool, &c->io);
  if (r < 0) {
    c->io = NULL;
    if (r == -ENOENT)
      nbdkit_error ("subpage: rbd=%s: pool %s does not exist", rb->spec,
                    rb->pool);
    else
      nbdkit_error ("subpage: rbd=%s: cannot open pool %s: %s", rb->spec,
                    rb->pool, errstr (-r));
    goto err;
  }
  r = rbd_open (c->io, rb->image, &c->img, NULL);
  if (r < 0) {
    c->img = NULL;
    if (r == -ENOENT)
      nbdkit_error ("subpage: rbd=%s: image %s does not exist in pool %s",
                    rb->spec, rb->image, rb->pool);
    else
      nbdkit_error ("subpage: rbd=%s: cannot open the image: %s", rb->spec,
                    errstr (-r));
    goto err;
  }
  if (!rb->exclusive)
    return 0;

  r = rbd_get_features (c->img, &features);
  if (r < 0) {
    nbdkit_error ("subpage: rbd=%s: cannot read the image's features: %s",
                  rb->spec, errstr (-r));
    goto err;
  }
  if (!(features & RBD_FEATURE_EXCLUSIVE_LOCK)) {
    nbdkit_error ("subpage: rbd=%s: the image does not have the "
                  "exclusive-lock feature, which keeps a second writer "
                  "out: enable it with 'rbd feature enable %s "
                  "exclusive-lock', or give rbd-exclusive=false (unsafe "
                  "if two clients write the image)",
                  rb->spec, rb->spec);
    r = -EINVAL;
    goto err;
  }
  if ((r = rb_take_lock (rb, c->img)) < 0)
    goto err;
  return 0;

err:
  rb_disconnect (c);
  return r;
}

/* rb_connect_locked with every signal blocked, so that the threads
 * librados and librbd start now never take nbdkit's signals.
 */
static int
rb_connect (struct rbd_backend *rb, bool probe, struct rb_conn *c)
{
  sigset_t all, saved;
  int r;

  sigfillset (&all);
  pthread_sigmask (SIG_SETMASK, &all, &saved);
  r = rb_connect_locked (rb, probe, c);
  pthread_sigmask (SIG_SETMASK, &saved, NULL);
  return r;
}

/* ---- fencing ----------------------------------------------------------- */

/* The lock is lost: log it once; from now on everything fails. */
static void
rb_fence (struct rbd_backend *rb, const char *why)
{
  if (!atomic_exchange (&rb->lost, true))
    nbdkit_error ("subpage: rbd=%s: this client no longer holds the "
                  "image's exclusive lock (%s): another client may own "
                  "the image now, so nothing more is written; requests, "
                  "write-back and flushes fail with EIO and unwritten data "
                  "stays in the cache until nbdkit stops",
                  rb->spec, why);
}

/* Before an operation: -EIO when fenced or not started, else 0. */
static int
rb_ready (struct rbd_backend *rb)
{
  if (!rb->started || atomic_load (&rb->lost))
    return -EIO;
  return 0;
}

/* A librbd call for WHAT over [OFF, OFF+COUNT) failed with R (-errno):
 * returns the -errno to report, logged.  Being blocklisted, or a write
 * refused for want of the lock, fences the backend (-EIO).
 */
static int
rb_fail (struct rbd_backend *rb, const char *what, uint64_t off, uint64_t count,
         int r)
{
  if (r == -ESHUTDOWN) { /* EBLOCKLISTED */
    rb_fence (rb, "blocklisted by the cluster: another client broke the "
                  "lock");
    return -EIO;
  }
  if (r == -EROFS && rb->exclusive) {
    rb_fence (rb, "librbd refuses to write without it");
    return -EIO;
  }
  if (atomic_load (&rb->lost))
    return -EIO;
  if (r == -ETIMEDOUT && rb->timeout_ms > 0) {
    if (!atomic_exchange (&rb->timing_out, true))
      nbdkit_error ("subpage: rbd=%s: a %s got no answer within "
                    "backend-timeout (%.3f s): requests fail with EIO, and "
                    "unwritten data stays in the cache, until the cluster "
                    "answers again",
                    rb->spec, what, rb->timeout_ms / 1000.0);
    return -EIO;
  }
  nbdkit_error ("%s: rbd=%s: offset %" PRIu64 " count %" PRIu64 ": %s", what,
                rb->spec, off, count, errstr (-r));
  return r;
}

/* ---- operations -------------------------------------------------------- */

static int64_t
rb_get_size (void *opaque)
{
  struct rbd_backend *rb = opaque;
  uint64_t size;
  int r;

  if ((r = rb_ready (rb)) < 0)
    return r;
  r = rbd_get_size (rb->c.img, &size);
  if (r < 0)
    return rb_fail (rb, "get size", 0, 0, r);
  return (int64_t) size;
}

static int
rb_pread (void *opaque, void *buf, uint32_t count, uint64_t off)
{
  struct rbd_backend *rb = opaque;
  ssize_t r;
  uint64_t size;

  if ((r = rb_ready (rb)) < 0)
    return r;
  r = rbd_read (rb->c.img, off, count, buf);
  if (r == (ssize_t) count)
    return 0;
  /* Short, or past the end: the image shrank (the cache follows). */
  if (r >= 0 || (r == -EINVAL && rbd_get_size (rb->c.img, &size) == 0 &&
                 off + count > size))
    return -ERANGE;
  return rb_fail (rb, "pread", off, count, (int) r);
}

static int
rb_pwrite (void *opaque, const void *buf, uint32_t count, uint64_t off,
           uint32_t flags)
{
  struct rbd_backend *rb = opaque;
  ssize_t r;

  (void) flags; /* FUA: a completed write is durable (cache off) */
  if ((r = rb_ready (rb)) < 0)
    return r;
  r = rbd_write (rb->c.img, off, count, buf);
  if (r == (ssize_t) count)
    return 0;
  return rb_fail (rb, "pwrite", off, count, r < 0 ? (int) r : -EIO);
}

static int
rb_flush (void *opaque)
{
  struct rbd_backend *rb = opaque;
  int r, owner = 0;

  if ((r = rb_ready (rb)) < 0)
    return r;
  /* A lock broken without blocklisting this client (one OSD round
   * trip; a flush is group-committed by the cache).
   */
  if (rb->exclusive) {
    /* librbd gives the lock up for a moment when it takes it again after
     * its watch failed (an OSD that was down came back): asked then, it
     * says "not owner" while nobody else is.  Only an answer that stays
     * so for RB_LOCK_SETTLE_MS fences.
     */
    for (unsigned ms = 0;; ms += 100) {
      r = rbd_is_exclusive_lock_owner (rb->c.img, &owner);
      if (r < 0)
        return rb_fail (rb, "flush", 0, 0, r);
      if (owner)
        break;
      if (ms >= RB_LOCK_SETTLE_MS) {
        rb_fence (rb, "another client holds it");
        return -EIO;
      }
      nanosleep (&(struct timespec){ .tv_nsec = 100 * 1000 * 1000 }, NULL);
    }
  }
  r = rbd_flush (rb->c.img);
  if (r < 0)
    return rb_fail (rb, "flush", 0, 0, r);
  if (atomic_load_explicit (&rb->timing_out, memory_order_relaxed) &&
      atomic_exchange (&rb->timing_out, false))
    nbdkit_error ("subpage: rbd=%s: the cluster answers again", rb->spec);
  return 0;
}

static int
rb_trim (void *opaque, uint32_t count, uint64_t off, uint32_t flags)
{
  struct rbd_backend *rb = opaque;
  int r;

  (void) flags;
  if ((r = rb_ready (rb)) < 0)
    return r;
  r = rbd_discard (rb->c.img, off, count);
  if (r < 0)
    return rb_fail (rb, "trim", off, count, r);
  return 0;
}

static int
rb_zero (void *opaque, uint32_t count, uint64_t off, uint32_t flags)
{
  struct rbd_backend *rb = opaque;
  ssize_t r;

  if (flags & CACHE_FAST_ZERO)
    return -ENOTSUP;
  if ((r = rb_ready (rb)) < 0)
    return r;
  r = rbd_write_zeroes (
    rb->c.img, off, count,
    (flags & CACHE_MAY_TRIM) ? 0 : RBD_WRITE_ZEROES_FLAG_THICK_PROVISION, 0);
  if (r < 0)
    return rb_fail (rb, "zero", off, count, (int) r);
  return 0;
}

static const struct cache_backend_ops rb_ops = {
  .get_size = rb_get_size,
  .pread = rb_pread,
  .pwrite = rb_pwrite,
  .flush = rb_flush,
  .trim = rb_trim,
  .zero = rb_zero,
};

/* ---- asynchronous writes ----------------------------------------------- */

/* librbd's completion callback, in a librbd thread: queue CMD for the
 * completion thread, nothing else.
 */
static void
rb_aio_cb (rbd_completion_t comp, void *arg)
{
  struct rb_cmd *cmd = arg;
  struct rbd_backend *rb = cmd->rb;

  cmd->ret = rbd_aio_get_return_value (comp);
  rbd_aio_release (comp);
  pthread_mutex_lock (&rb->lock);
  cmd->next = rb->done;
  rb->done = cmd;
  pthread_cond_signal (&rb->cv);
  pthread_mutex_unlock (&rb->lock);
}

/* Calls CMD's done function with its result and frees CMD. */
static void
rb_finish (struct rb_cmd *cmd)
{
  struct rbd_backend *rb = cmd->rb;
  void (*fn) (void *, int) = cmd->fn;
  void *arg = cmd->arg;
  int r = 0;

  if (cmd->ret < 0)
    r = rb_fail (rb, "pwrite", cmd->off, cmd->count, (int) cmd->ret);
  else if (atomic_load (&rb->lost))
    r = -EIO; /* completed, but after the lock was found lost */
  pool_put (&rb->cmds, cmd);
  fn (arg, r);
}

/* The completion thread: calls done functions, oldest first, with no
 * lock held.
 */
static void *
rb_completer (void *arg)
{
  struct rbd_backend *rb = arg;

  pthread_setname_np (pthread_self (), "subpage-rbdcmp");
  pthread_mutex_lock (&rb->lock);
  for (;;) {
    struct rb_cmd *list, *rev = NULL;

    while (rb->done == NULL && !rb->quit)
      pthread_cond_wait (&rb->cv, &rb->lock);
    if (rb->done == NULL)
      break; /* quit, nothing left */
    list = rb->done;
    rb->done = NULL;
    pthread_mutex_unlock (&rb->lock);
    while (list != NULL) {
      struct rb_cmd *next = list->next;
      list->next = rev;
      rev = list;
      list = next;
    }
    while (rev != NULL) {
      struct rb_cmd *next = rev->next;
      rb_finish (rev);
      rev = next;
    }
    pthread_mutex_lock (&rb->lock);
  }
  pthread_mutex_unlock (&rb->lock);
  return NULL;
}

/* struct backend's aio_pwrite (wbserver.h): 0 when started or failed
 * at once (DONE called), 1 when declined (not started, no memory):
 * the write-back server then writes the run synchronously.
 */
static int
rb_aio_pwrite (void *opaque, const void *buf, uint32_t count, uint64_t off,
               uint32_t flags, void (*done) (void *arg, int err), void *arg)
{
  struct rbd_backend *rb = opaque;
  rbd_completion_t comp;
  struct rb_cmd *cmd;
  int r;

  (void) flags; /* FUA: see rb_pwrite */
  if (!rb->started)
    return 1;
  if (atomic_load (&rb->lost)) {
    done (arg, -EIO);
    return 0;
  }
  cmd = pool_get (&rb->cmds);
  if (cmd == NULL)
    return 1;
  cmd->rb = rb;
  cmd->fn = done;
  cmd->arg = arg;
  cmd->off = off;
  cmd->count = count;
  cmd->ret = 0;
  r = rbd_aio_create_completion (cmd, rb_aio_cb, &comp);
  if (r < 0) {
    pool_put (&rb->cmds, cmd);
    return 1;
  }
  r = rbd_aio_write (rb->c.img, off, count, buf, comp);
  if (r < 0) {
    rbd_aio_release (comp);
    cmd->ret = r;
    rb_finish (cmd);
  }
  return 0;
}

/* ---- extents ----------------------------------------------------------- */

struct rb_extent {
  uint64_t off, len;
};

struct rb_extents {
  struct rb_extent *v;
  size_t n, cap;
  int err;
};

static int
rb_diff_cb (uint64_t off, size_t len, int exists, void *arg)
{
  struct rb_extents *xs = arg;

  if (!exists || len == 0)
    return 0; /* discarded: a hole */
  if (xs->n == xs->cap) {
    size_t cap = xs->cap ? 2 * xs->cap : 64;
    struct rb_extent *v = realloc (xs->v, cap * sizeof *v);

    if (v == NULL) {
      xs->err = -ENOMEM;
      return -ENOMEM;
    }
    xs->v = v;
    xs->cap = cap;
  }
  xs->v[xs->n++] = (struct rb_extent){ .off = off, .len = len };
  return 0;
}

static int
rb_extent_cmp (const void *a, const void *b)
{
  const struct rb_extent *x = a, *y = b;

  return x->off < y->off ? -1 : x->off > y->off;
}

/* Adds [off, off+len) as data or hole to EX. */
static int
rb_add (struct nbdkit_extents *ex, uint64_t off, uint64_t len, bool data)
{
  if (len == 0)
    return 0;
  if (nbdkit_add_extent (
        ex, off, len, data ? 0 : NBDKIT_EXTENT_HOLE | NBDKIT_EXTENT_ZERO) == -1)
    return -(errno ? errno : ENOMEM);
  return 0;
}

/* struct backend's extents: what rbd_diff_iterate2 reports is data,
 * the rest of [off, off+count) holes.
 */
static int
rb_extents (void *opaque, uint32_t count, uint64_t off,
            struct nbdkit_extents *ex)
{
  struct rbd_backend *rb = opaque;
  struct rb_extents xs = { .v = NULL };
  uint64_t pos = off, end = off + count;
  int r;

  if ((r = rb_ready (rb)) < 0)
    return r;
  r = rbd_diff_iterate2 (rb->c.img, NULL, off, count, 1, 0, rb_diff_cb, &xs);
  if (r < 0) {
    free (xs.v);
    return rb_fail (rb, "block status", off, count, xs.err ? xs.err : r);
  }
  qsort (xs.v, xs.n, sizeof *xs.v, rb_extent_cmp);
  for (size_t i = 0; i < xs.n && r == 0 && pos < end; i++) {
    uint64_t s = MAX (xs.v[i].off, pos);
    uint64_t e = MIN (xs.v[i].off + xs.v[i].len, end);

    if (e <= s)
      continue;
    r = rb_add (ex, pos, s - pos, false);
    if (r == 0)
      r = rb_add (ex, s, e - s, true);
    pos = e;
  }
  if (r == 0)
    r = rb_add (ex, pos, end - pos, false);
  free (xs.v);
  if (r < 0)
    nbdkit_error ("block status: rbd=%s: %s", rb->spec, errstr (-r));
  return r;
}

/* ---- journal claim (see "Journal claim" above) -------------------------- */

/* Reads the claim of IMG into BUF: 1 and the value, 0 and "" when there
 * is none, or -errno (logged as debug; BUF "").
 */
static int
rb_claim_read (struct rbd_backend *rb, rbd_image_t img, char *buf, size_t n)
{
  size_t len = n;
  int r = rbd_metadata_get (img, RB_CLAIM_KEY, buf, &len);

  if (r == -ERANGE) {
    /* Longer than any id of ours: keep its beginning. */
    char *big = malloc (len);

    r = big ? rbd_metadata_get (img, RB_CLAIM_KEY, big, &len) : -ENOMEM;
    if (r >= 0)
      snprintf (buf, n, "%s", big);
    free (big);
  }
  if (r == -ENOENT) {
    buf[0] = '\0';
    return 0;
  }
  if (r < 0) {
    buf[0] = '\0';
    nbdkit_debug ("subpage: rbd=%s: cannot read the image metadata %s: %s",
                  rb->spec, RB_CLAIM_KEY, errstr (-r));
    return r;
  }
  buf[n - 1] = '\0';
  return buf[0] != '\0';
}

/* Refuses the start: the image is claimed by the journal CLAIM. */
static int
rb_claim_refuse (struct rbd_backend *rb, const char *claim, const char *ours)
{
  if (ours != NULL)
    nbdkit_error ("subpage: rbd=%s: the image is claimed by journal %s "
                  "(image metadata %s), not by this instance's journal "
                  "(id %s): that journal may hold writes not yet on the "
                  "image, and the image must not be written before they "
                  "are.  Start subpage with that journal on the host that "
                  "has it (it is replayed, and a clean stop releases the "
                  "image), or, if that journal is lost, remove the claim "
                  "with 'rbd image-meta remove %s %s' (its unwritten "
                  "writes are then lost)",
                  rb->spec, claim, RB_CLAIM_KEY, ours, rb->spec, RB_CLAIM_KEY);
  else
    nbdkit_error ("subpage: rbd=%s: the image is claimed by journal %s "
                  "(image metadata %s) and this instance has no journal=: "
                  "that journal may hold writes not yet on the image, "
                  "which its replay would put over anything written now.  "
                  "Start subpage with that journal on the host that has it "
                  "(it is replayed, and a clean stop releases the image), "
                  "or, if that journal is lost, remove the claim with "
                  "'rbd image-meta remove %s %s' (its unwritten writes are "
                  "then lost)",
                  rb->spec, claim, RB_CLAIM_KEY, rb->spec, RB_CLAIM_KEY);
  return -EBUSY;
}

/* struct backend's claim. */
static int
rb_claim (void *opaque, const uint8_t *journal_id, bool check)
{
  struct rbd_backend *rb = opaque;
  char ours[33], buf[RB_CLAIM_MAX];
  const char *claim;
  int r;

  if (journal_id != NULL)
    for (int i = 0; i < 16; i++)
      snprintf (ours + 2 * i, 3, "%02x", journal_id[i]);

  if (check) {
    /* The probe's reading (NULL: it could not read it: see at start). */
    claim = rb->probe_claim;
    if (claim != NULL && claim[0] != '\0' &&
        (journal_id == NULL || strcmp (claim, ours) != 0))
      return rb_claim_refuse (rb, claim, journal_id ? ours : NULL);
    return 0;
  }

  if ((r = rb_ready (rb)) < 0)
    return r;
  r = rb_claim_read (rb, rb->c.img, buf, sizeof buf);
  if (r < 0) {
    if (rb->exclusive) {
      nbdkit_error ("subpage: rbd=%s: cannot read the image metadata %s "
                    "(which journal may hold unwritten data of the image): "
                    "%s",
                    rb->spec, RB_CLAIM_KEY, errstr (-r));
      return r;
    }
    nbdkit_error ("subpage: rbd=%s: cannot read the image metadata %s: "
                  "%s; going on (rbd-exclusive=false: the claim is a best "
                  "effort)",
                  rb->spec, RB_CLAIM_KEY, errstr (-r));
  }
  if (r > 0 && (journal_id == NULL || strcmp (buf, ours) != 0))
    return rb_claim_refuse (rb, buf, journal_id ? ours : NULL);
  if (journal_id == NULL)
    return 0;

  if (r <= 0) {
    r = rbd_metadata_set (rb->c.img, RB_CLAIM_KEY, ours);
    if (r < 0 && rb->exclusive) {
      nbdkit_error ("subpage: rbd=%s: cannot set the image metadata %s=%s "
                    "(which journal may hold unwritten data of the image): "
                    "%s",
                    rb->spec, RB_CLAIM_KEY, ours, errstr (-r));
      return r;
    }
    if (r < 0) {
      nbdkit_error ("subpage: rbd=%s: cannot set the image metadata %s=%s: "
                    "%s; going on (rbd-exclusive=false: the claim is a best "
                    "effort)",
                    rb->spec, RB_CLAIM_KEY, ours, errstr (-r));
      return 0;
    }
  }
  memcpy (rb->claim_id, ours, sizeof ours);
  rb->claimed = true;
  nbdkit_debug ("subpage: rbd=%s: %s=%s: the image is claimed by this "
                "instance's journal%s",
                rb->spec, RB_CLAIM_KEY, ours,
                rb->exclusive ? "" : " (best effort: rbd-exclusive=false)");
  return 0;
}

/* struct backend's unclaim: removes the key if it still names us. */
static void
rb_unclaim (void *opaque)
{
  struct rbd_backend *rb = opaque;
  char buf[RB_CLAIM_MAX];
  int r;

  if (!rb->claimed || rb_ready (rb) < 0)
    return;
  rb->claimed = false;
  r = rb_claim_read (rb, rb->c.img, buf, sizeof buf);
  if (r == 0 || (r > 0 && strcmp (buf, rb->claim_id) != 0)) {
    nbdkit_error ("subpage: rbd=%s: the image metadata %s names %s now, not "
                  "this instance's journal (%s): left as it is",
                  rb->spec, RB_CLAIM_KEY, r > 0 ? buf : "nothing",
                  rb->claim_id);
    return;
  }
  r = r < 0 ? r : rbd_metadata_remove (rb->c.img, RB_CLAIM_KEY);
  if (r < 0)
    nbdkit_error ("subpage: rbd=%s: everything is written back, but the "
                  "image metadata %s (this instance's journal, %s) could "
                  "not be removed: %s; another instance will refuse the "
                  "image until it is ('rbd image-meta remove %s %s', or a "
                  "start and clean stop with this journal)",
                  rb->spec, RB_CLAIM_KEY, rb->claim_id, errstr (-r), rb->spec,
                  RB_CLAIM_KEY);
  else
    nbdkit_debug ("subpage: rbd=%s: %s removed: the image holds everything",
                  rb->spec, RB_CLAIM_KEY);
}

/* ---- lifecycle --------------------------------------------------------- */

/* struct backend's start (.after_fork): the serving connection, with
 * the lock, and the completion thread.
 */
static int
rb_start (void *opaque)
{
  struct rbd_backend *rb = opaque;
  uint64_t size;
  int r;

  if ((r = rb_connect (rb, false, &rb->c)) < 0)
    return r;
  if (rbd_get_size (rb->c.img, &size) == 0 && size != rb->size)
    nbdkit_debug ("subpage: rbd=%s: size %" PRIu64 " at start, %" PRIu64
                  " at the probe (the cache follows)",
                  rb->spec, size, rb->size);
  r = thread_start_nosignals (&rb->completer, rb_completer, rb);
  if (r != 0) {
    nbdkit_error ("subpage: rbd=%s: cannot start the completion thread: %s",
                  rb->spec, errstr (r));
    return -r;
  }
  rb->completer_started = true;
  rb->started = true;
  nbdkit_debug ("subpage: rbd=%s: connected%s", rb->spec,
                rb->exclusive ? ", exclusive lock taken" : "");
  return 0;
}

static bool
rb_can_write (void *opaque)
{
  (void) opaque;
  return true;
}

/* Closes the image (releasing the lock) and frees RB.  No write may be
 * in flight (the write-back server has stopped).
 */
static void
rb_close (void *opaque)
{
  struct rbd_backend *rb = opaque;

  if (rb->completer_started) {
    pthread_mutex_lock (&rb->lock);
    rb->quit = true;
    pthread_cond_signal (&rb->cv);
    pthread_mutex_unlock (&rb->lock);
    pthread_join (rb->completer, NULL);
  }
  rb->started = false;
  rb_disconnect (&rb->c);
  pool_destroy (&rb->cmds);
  pthread_cond_destroy (&rb->cv);
  pthread_mutex_destroy (&rb->lock);
  free (rb->spec);
  free (rb->pool);
  free (rb->conf);
  free (rb->id);
  free (rb->keyring);
  free (rb);
}

/* The probe (see "Fork" above): connect, check, lock, size, release. */
static int
rb_probe (struct rbd_backend *rb)
{
  struct rb_conn c;
  int r;

  if ((r = rb_connect (rb, true, &c)) < 0)
    return r;
  r = rbd_get_size (c.img, &rb->size);
  if (r < 0)
    nbdkit_error ("subpage: rbd=%s: cannot read the image's size: %s", rb->spec,
                  errstr (-r));
  if (r == 0 && rb_claim_read (rb, c.img, rb->probe_claim_buf,
                               sizeof rb->probe_claim_buf) >= 0)
    rb->probe_claim = rb->probe_claim_buf;
  if (rb->exclusive)
    rbd_lock_release (c.img);
  rb_disconnect (&c);
  return r;
}

static char *
rb_strdup (const char *s, int *err)
{
  char *d;

  if (s == NULL || *err != 0)
    return NULL;
  d = strdup (s);
  if (d == NULL)
    *err = -errno;
  return d;
}

int
rbd_backend_open (const struct rbd_backend_config *cfg, struct backend *be)
{
  struct rbd_backend *rb;
  int err = 0;
  char *slash;

  rb = calloc (1, sizeof *rb);
  if (rb == NULL) {
    err = -errno;
    nbdkit_error ("calloc: %s", errstr (-err));
    return err;
  }
  pthread_mutex_init (&rb->lock, NULL);
  pthread_cond_init (&rb->cv, NULL);
  atomic_init (&rb->lost, false);
  rb->exclusive = cfg->exclusive;
  rb->timeout_ms = cfg->timeout_ms;
  atomic_init (&rb->timing_out, false);
  rb->spec = rb_strdup (cfg->spec, &err);
  rb->pool = rb_strdup (cfg->spec, &err);
  rb->conf = rb_strdup (cfg->conf, &err);
  rb->id = rb_strdup (cfg->id, &err);
  rb->keyring = rb_strdup (cfg->keyring, &err);
  if (err == 0)
    err = pool_init (&rb->cmds, sizeof (struct rb_cmd), RB_POOL_CMDS);
  if (err < 0) {
    nbdkit_error ("calloc: %s", errstr (-err));
    goto err_close;
  }
  /* params.c checked POOL/IMAGE. */
  slash = strchr (rb->pool, '/');
  *slash = '\0';
  rb->image = slash + 1;

  if ((err = rb_probe (rb)) < 0)
    goto err_close;
  nbdkit_debug ("subpage: rbd=%s: size %" PRIu64 ", ceph-conf=%s "
                "ceph-id=%s, exclusive lock %s",
                rb->spec, rb->size, rb->conf, rb->id,
                rb->exclusive ? "taken and released (probe)" : "not used");
  *be = (struct backend){
    .param = "rbd",
    .value = rb->spec,
    .ops = &rb_ops,
    .handle = rb,
    .size = rb->size,
    .can_write = rb_can_write,
    .start = rb_start,
    .aio_pwrite = rb_aio_pwrite,
    .extents = rb_extents,
    .claim = rb_claim,
    .unclaim = rb_unclaim,
    .close = rb_close,
  };
  return 0;

err_close:
  rb_close (rb);
  return err;
}
