/* subpage: the NBD backend's connections.
 *
 * Notes on the design.
 *
 * What it does: the machinery under the operations of nbd-backend.c:
 * N connections to the remote, commands issued on them with libnbd's
 * asynchronous API, a reader thread per connection, and the loss of a
 * connection.  nbd-backend.c decides what to send (splitting, flags,
 * emulations) and this file how it reaches the remote.
 *
 * Representation: N connections ("conns"), each one libnbd handle
 * connected at nbd_backend_open (.get_ready, so a connection error is
 * seen at startup and a relative socket path means what the user
 * meant) to the same URI, and one reader thread per connection started
 * by nb_conns_start (.after_fork: threads do not survive nbdkit's
 * fork).  Any thread issues commands on any connection with nbd_aio_*,
 * so many requests are in flight per connection; the reader polls the
 * socket and drives libnbd's state machine (nbd_aio_notify_read/write),
 * like nbdkit's own nbd plugin.  A thread that issued a command which
 * left output pending kicks the reader through a pipe, so the reader
 * also polls for POLLOUT.  Asynchronous writes are not issued by the
 * thread that submits them but queued (conn->sq) for the reader, which
 * keeps at most NB_CONN_INFLIGHT of them in flight.
 *
 * Completions.  libnbd calls a command's completion callback with the
 * handle's lock held, where calling libnbd on that handle would
 * deadlock.  So the callback only records the result: for a
 * synchronous operation it marks the command done and wakes the
 * waiting thread (conn->lock, conn->cv); for an asynchronous write it
 * queues the command on conn->done, and the reader calls its done
 * function after nbd_aio_notify_* has returned, with no libnbd lock
 * held (the done function may then issue more commands).  If libnbd
 * runs a callback in another thread (the connection dying while some
 * thread issues a command aborts every command in flight there), the
 * queue is still drained: that thread kicks the reader.  A block
 * status command's extent callback runs there as well, before its
 * completion: it adds the remote's extents straight to the nbdkit
 * request's list (struct nb_extents), which the waiting thread does
 * not touch until the completion has marked the command done.
 *
 * Lost connections: a connection that died (server killed, socket
 * closed) is dead for good: libnbd fails its commands in flight
 * (ENOTCONN) and refuses new ones, and every request that found it
 * dead fails with -EIO (no retry on another connection); the loss is
 * logged once.  The dead connection is then retired: no new command
 * picks it, so if the remote is still there the other connections
 * carry on; the last connection is never retired, and when it is dead
 * every request fails at once with -EIO.
 *
 * Timeouts (backend-timeout=, nb->timeout_ns; none by default).
 * libnbd has no timeout, and neither it nor the NBD protocol can
 * cancel a command: a remote that was only slow (or stopped, then
 * continued) still carries out a write it received, however late.  So
 * a late command is not given up on but waited out: every command in
 * flight is tracked, oldest first, on conn->fl_head (only when there
 * is a timeout), and the reader, whose poll sleeps no longer than
 * until the oldest is due, makes each one that is due late
 * (nb_reader_timeout): it moves to nb->late, its caller gets -EIO at
 * once (a synchronous caller wakes and leaves, an asynchronous write's
 * fn is called; the cache keeps the data dirty), and the command stays
 * in flight in libnbd until the remote answers it or the connection
 * dies.  Until then:
 *
 *  - a new write, trim or zero that overlaps a late write, trim or
 *    zero fails with -EIO without being sent (nb_fenced), so nothing
 *    newer reaches those sectors before the late command is done: a
 *    flush covering them fails, and the first after the late reply
 *    writes the newer data over it;
 *  - the command owns its memory: with a timeout, reads and writes go
 *    through a buffer of the command's own (cmd->bounce), a
 *    synchronous command is allocated (not on its caller's stack) and
 *    freed by whichever of caller and completion comes last
 *    (cmd->abandoned), and a block status callback adds nothing once
 *    its command is late;
 *  - its connection is down (conn->down): nb_pick skips it and
 *    nb_conn_get refuses it, so requests go to another connection or
 *    fail with -EIO at once, and queued writes fail unsent.  When the
 *    remote has answered every late command (conn->nlate 0) the reader
 *    brings it back up.  If instead it dies, libnbd completes its
 *    commands with ENOTCONN and the reader connects again,
 *    one attempt a second, each bounded by the timeout, until one
 *    succeeds or nbdkit stops; the new handle must see what the first
 *    saw.  A connection the remote closed without a timeout is still
 *    dead for good.
 *
 * A late write, trim or zero whose connection closes before the remote
 * answered it is not known to be gone: the socket's peer may be a proxy
 * or a front end while the storage behind it still holds the write.  It
 * stays on nb->late for good (an orphan: nb_late_unlink_locked), so its
 * sectors stay fenced until nbdkit stops, and the dirty data with them.
 *
 * A completion that comes just as the deadline passes is either seen
 * first (the command leaves fl_head under conn->lock before the reader
 * looks) or not (the command is late, and the completion ends it).
 * The event is logged once while any connection is down (nb->ndown),
 * not per request.  Before the readers start (.get_ready: connecting
 * and probing, which only read) the thread that waits drives the
 * handle (nbd_poll) and shuts the connection down when late
 * (nb_conn_kill); connecting is bounded the same way.
 *
 * What it does not do: cancel one command; reconnect a connection
 * the remote closed; bound how long a remote that never answers (a
 * host gone without a reset) keeps a late command's sectors fenced.
 */

#ifndef _GNU_SOURCE
#define _GNU_SOURCE \
  1 /* strerrordesc_np, pipe2,
                                     * pthread_setname_np */
#endif
#define NBDKIT_API_VERSION 2

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <time.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>

#include <libnbd.h>
#include <nbdkit-plugin.h>

#include "backend.h"
#include "errstr.h"
#include "nbd-internal.h"
#include "pool.h"
#include "thread.h"
#include "util.h"

/* In a reader thread: its connection (NULL in every other thread). */
static __thread struct nb_conn *nb_reader_conn;

static void
nb_kick (struct nb_conn *conn)
{
  char c = 0;
  ssize_t r;

  /* A full pipe already holds a wake-up: EAGAIN is fine. */
  do
    r = write (conn->kick[1], &c, 1);
  while (r == -1 && errno == EINTR);
}

/* A connection for a new command.  Connection 0 carries the synchronous
 * operations (reads of missing data, flushes, FUA, trim, zero) and the
 * others the asynchronous write-back, round robin, so that a flush or a
 * read is not queued at the remote behind hundreds of write-back
 * requests.  With one connection, or when those are retired, any
 * connection that is not retired does.
 */
struct nb_conn *
nb_pick (struct nbd_backend *nb, bool async)
{
  unsigned first = async && nb->n > 1 ? 1 : 0;
  unsigned span = async ? nb->n - first : 1;
  unsigned start = async ? atomic_fetch_add (&nb->next, 1) : 0;

  for (unsigned k = 0; k < span; k++) {
    struct nb_conn *conn = &nb->conns[first + (start + k) % span];

    if (!atomic_load (&conn->retired) && !atomic_load (&conn->down))
      return conn;
  }
  start = atomic_fetch_add (&nb->next, 1);
  for (unsigned k = 0; k < nb->n; k++) {
    struct nb_conn *conn = &nb->conns[(start + k) % nb->n];

    if (!atomic_load (&conn->retired) && !atomic_load (&conn->down))
      return conn;
  }
  /* All are down (or retired but the last): the caller fails. */
  return &nb->conns[0];
}

static uint64_t
nb_now (void)
{
  struct timespec ts;

  clock_gettime (CLOCK_MONOTONIC, &ts);
  return (uint64_t) ts.tv_sec * 1000000000 + (uint64_t) ts.tv_nsec;
}

/* Milliseconds from NOW until DEADLINE, rounded up (for poll). */
static int
nb_ms_until (uint64_t deadline, uint64_t now)
{
  uint64_t ms = deadline > now ? (deadline - now + 999999) / 1000000 : 0;

  return ms > INT32_MAX ? INT32_MAX : (int) ms;
}

static const char *
nb_op_name (enum nb_op op)
{
  switch (op) {
  case NB_READ: return "read";
  case NB_WRITE: return "write";
  case NB_FLUSH: return "flush";
  case NB_TRIM: return "trim";
  case NB_ZERO: return "zero";
  case NB_BLOCK_STATUS: return "block status";
  default: abort ();
  }
}

/* CONN's handle for a thread other than its reader, or NULL when CONN
 * is down (or reconnecting): the handle stays open until nb_conn_put.
 */
static struct nbd_handle *
nb_conn_get (struct nb_conn *conn)
{
  struct nbd_handle *h = NULL;

  pthread_mutex_lock (&conn->lock);
  if (conn->h != NULL && !atomic_load (&conn->down)) {
    h = conn->h;
    conn->users++;
  }
  pthread_mutex_unlock (&conn->lock);
  return h;
}

static void
nb_conn_put (struct nb_conn *conn)
{
  pthread_mutex_lock (&conn->lock);
  assert (conn->users > 0);
  if (--conn->users == 0)
    pthread_cond_broadcast (&conn->cv);
  pthread_mutex_unlock (&conn->lock);
}

/* CONN goes down: its command OP is late (or CONN was killed).
 * Logged once per outage.
 */
static void
nb_conn_down (struct nb_conn *conn, enum nb_op op)
{
  struct nbd_backend *nb = conn->nb;

  if (atomic_exchange (&conn->down, true))
    return;
  if (atomic_fetch_add (&nb->ndown, 1) == 0)
    nbdkit_error ("subpage: uri=%s: a %s request got no answer within "
                  "backend-timeout=%s: it fails with EIO, and connection %u "
                  "takes no new requests until the remote answers (NBD "
                  "cannot cancel a request: nothing is written over a late "
                  "write's sectors, and flushes covering them fail, until "
                  "the remote has answered it)",
                  nb->uri, nb_op_name (op), nb->timeout_str, conn->idx);
  else
    nbdkit_debug ("subpage: uri=%s: a %s request got no answer within "
                  "backend-timeout=%s: connection %u is down",
                  nb->uri, nb_op_name (op), nb->timeout_str, conn->idx);
}

/* CONN is up again: the remote answered its late commands, or it was
 * connected again (RECONNECTED).  Logged when the outage ends.
 */
static void
nb_conn_up (struct nb_conn *conn, bool reconnected)
{
  struct nbd_backend *nb = conn->nb;
  const char *how = reconnected ? "is connected again"
                                : "has its late requests answered";

  if (!atomic_exchange (&conn->down, false))
    return;
  if (atomic_fetch_sub (&nb->ndown, 1) == 1)
    nbdkit_error ("subpage: uri=%s: the remote answers again: "
                  "connection %u %s",
                  nb->uri, conn->idx, how);
  else
    nbdkit_debug ("subpage: uri=%s: connection %u %s", nb->uri, conn->idx, how);
}

/* Before the readers start, CONN's command OP is late: shut the
 * connection down (see "Timeouts").  Called by the thread that drives
 * the handle.
 */
static void
nb_conn_kill (struct nb_conn *conn, enum nb_op op)
{
  struct nbd_backend *nb = conn->nb;

  if (atomic_exchange (&conn->killed, true))
    return;
  nb_conn_down (conn, op);
  if (conn->sock >= 0 && shutdown (conn->sock, SHUT_RDWR) == -1)
    nbdkit_debug ("subpage: uri=%s: connection %u: shutdown: %s", nb->uri,
                  conn->idx, errstr (errno));
}

static bool
nb_op_changes (enum nb_op op)
{
  return op == NB_WRITE || op == NB_TRIM || op == NB_ZERO;
}

/* Would command OP over [OFF, OFF+COUNT) change sectors that a late
 * command may still change (see "Timeouts")?
 */
static bool
nb_fenced (struct nbd_backend *nb, enum nb_op op, uint64_t off, uint32_t count)
{
  bool hit = false;

  if (nb->timeout_ns == 0 || !nb_op_changes (op))
    return false;
  pthread_mutex_lock (&nb->late_lock);
  for (struct nb_cmd *c = nb->late_head; c != NULL && !hit; c = c->late_next)
    hit = nb_op_changes (c->op) && c->off < off + count &&
          off < c->off + c->count;
  pthread_mutex_unlock (&nb->late_lock);
  return hit;
}

/* conn->lock held: CMD completed with ERR (errno, 0 if answered or
 * never issued).  If it was late (cmd->late stays set) it leaves
 * nb->late, unless it changes the image and its connection closed
 * before the remote answered it (ENOTCONN): whatever is at the other
 * end (a proxy, a server still running it) may still carry it out, so
 * it stays on nb->late as an orphan, fencing its sectors until nbdkit
 * stops (freed by nb_conns_close).  Returns true for an orphan, which
 * the caller must not free.  Called once per command.
 */
static bool
nb_late_unlink_locked (struct nb_conn *conn, struct nb_cmd *cmd, int err)
{
  struct nbd_backend *nb = conn->nb;

  if (!cmd->late)
    return false;
  assert (conn->nlate > 0);
  conn->nlate--;
  if (err == ENOTCONN && nb_op_changes (cmd->op)) {
    cmd->orphan = true;
    free (cmd->bounce);
    cmd->bounce = NULL;
    if (atomic_fetch_add (&nb->norphans, 1) == 0)
      nbdkit_error ("subpage: uri=%s: connection %u closed before the "
                    "remote answered a late %s (offset %" PRIu64
                    " count %" PRIu32 "): the remote may still carry it "
                    "out, so the sectors of such requests stay fenced "
                    "(writes over them, and flushes covering them, fail "
                    "with EIO; the data stays dirty) until nbdkit restarts",
                    nb->uri, conn->idx, nb_op_name (cmd->op), cmd->off,
                    cmd->count);
    else
      nbdkit_debug ("subpage: uri=%s: connection %u closed before the "
                    "remote answered a late %s (offset %" PRIu64
                    " count %" PRIu32 "): fenced until nbdkit restarts",
                    nb->uri, conn->idx, nb_op_name (cmd->op), cmd->off,
                    cmd->count);
    return true;
  }
  pthread_mutex_lock (&nb->late_lock);
  if (cmd->late_prev != NULL)
    cmd->late_prev->late_next = cmd->late_next;
  else
    nb->late_head = cmd->late_next;
  if (cmd->late_next != NULL)
    cmd->late_next->late_prev = cmd->late_prev;
  pthread_mutex_unlock (&nb->late_lock);
  return false;
}

void
nb_cmd_free (struct nbd_backend *nb, struct nb_cmd *cmd)
{
  free (cmd->bounce);
  pool_put (&nb->cmds, cmd);
}

/* With a timeout, CMD (about to be issued) joins CONN's list of
 * commands in flight; its completion or a failure to issue it takes it
 * off (nb_untrack).  Deadlines are taken under the lock, so the list is
 * in deadline order.
 */
static void
nb_track (struct nb_conn *conn, struct nb_cmd *cmd)
{
  if (conn->nb->timeout_ns == 0)
    return;
  pthread_mutex_lock (&conn->lock);
  cmd->deadline = nb_now () + conn->nb->timeout_ns;
  cmd->fl_next = NULL;
  cmd->fl_prev = conn->fl_tail;
  if (conn->fl_tail != NULL)
    conn->fl_tail->fl_next = cmd;
  else
    conn->fl_head = cmd;
  conn->fl_tail = cmd;
  cmd->tracked = true;
  pthread_mutex_unlock (&conn->lock);
}

/* conn->lock held. */
static void
nb_untrack_locked (struct nb_conn *conn, struct nb_cmd *cmd)
{
  if (!cmd->tracked)
    return;
  if (cmd->fl_prev != NULL)
    cmd->fl_prev->fl_next = cmd->fl_next;
  else
    conn->fl_head = cmd->fl_next;
  if (cmd->fl_next != NULL)
    cmd->fl_next->fl_prev = cmd->fl_prev;
  else
    conn->fl_tail = cmd->fl_prev;
  cmd->tracked = false;
}

static bool
nb_is_dead (struct nb_conn *conn)
{
  return nbd_aio_is_dead (conn->h) || nbd_aio_is_closed (conn->h);
}

/* CONN is dead: log it once and retire it unless it is the last. */
static void
nb_conn_lost (struct nb_conn *conn, const char *why)
{
  struct nbd_backend *nb = conn->nb;

  if (!atomic_exchange (&conn->dead_logged, true)) {
    nbdkit_error ("subpage: uri=%s: connection %u to the remote is lost "
                  "(%s): its requests fail with EIO from now on",
                  nb->uri, conn->idx, why);
    /* Keep at least one: nlive never drops below 1. */
    unsigned live = atomic_load (&nb->nlive);
    while (live > 1 &&
           !atomic_compare_exchange_weak (&nb->nlive, &live, live - 1))
      ;
    if (live > 1)
      atomic_store (&conn->retired, true);
  }
}

/* A command on CONN failed with ERR (errno, 0 if unknown): returns
 * -errno, logged.  A dead connection gives -EIO, logged once.
 */
static int
nb_fail (struct nb_conn *conn, const char *what, uint64_t off, uint64_t count,
         int err, const char *msg)
{
  if (nb_is_dead (conn) || err == ENOTCONN) {
    if (atomic_load (&conn->down))
      nbdkit_debug ("%s: uri=%s: offset %" PRIu64 " count %" PRIu64
                    ": connection %u closed while down after a timeout",
                    what, conn->nb->uri, off, count, conn->idx);
    else
      nb_conn_lost (conn, msg);
    return -EIO;
  }
  if (err == 0)
    err = EIO;
  nbdkit_error ("%s: uri=%s: offset %" PRIu64 " count %" PRIu64 ": %s", what,
                conn->nb->uri, off, count, msg);
  return -err;
}

/* The libnbd call that issues a command failed. */
static int
nb_issue_error (struct nb_conn *conn, const char *what, uint64_t off,
                uint64_t count)
{
  return nb_fail (conn, what, off, count, nbd_get_errno (), nbd_get_error ());
}

/* Completion callbacks (libnbd's lock on conn->h held). */
static int
nb_complete_sync (void *user_data, int *error)
{
  struct nb_cmd *cmd = user_data;
  struct nb_conn *conn = cmd->conn;
  bool orphan;

  pthread_mutex_lock (&conn->lock);
  nb_untrack_locked (conn, cmd);
  orphan = nb_late_unlink_locked (conn, cmd, *error);
  cmd->err = *error;
  if (cmd->abandoned) {
    pthread_mutex_unlock (&conn->lock);
    nbdkit_debug ("subpage: uri=%s: connection %u: a late %s completed: %s",
                  conn->nb->uri, conn->idx, nb_op_name (cmd->op),
                  *error ? errstr (*error) : "ok");
    if (!orphan)
      nb_cmd_free (conn->nb, cmd);
    return 1;
  }
  cmd->done = true;
  pthread_cond_broadcast (&conn->cv);
  pthread_mutex_unlock (&conn->lock);
  return 1; /* retire the command */
}

static int
nb_complete_async (void *user_data, int *error)
{
  struct nb_cmd *cmd = user_data;
  struct nb_conn *conn = cmd->conn;

  cmd->err = *error;
  pthread_mutex_lock (&conn->lock);
  nb_untrack_locked (conn, cmd);
  nb_late_unlink_locked (conn, cmd, cmd->err);
  cmd->next = conn->done;
  conn->done = cmd;
  pthread_mutex_unlock (&conn->lock);
  if (nb_reader_conn != conn) /* the reader drains after each poll */
    nb_kick (conn);
  return 1;
}

/* nb_extent_cb, the command not late. */
static int
nb_extents_add (struct nb_extents *xt, const char *metacontext, uint64_t offset,
                uint32_t *entries, size_t nr_entries, int *error)
{
  if (strcmp (metacontext, LIBNBD_CONTEXT_BASE_ALLOCATION) != 0 || xt->seen)
    return 0;
  xt->seen = true;
  if (offset != xt->start)
    return 0; /* not what was asked: nothing added, which fails it */
  for (size_t i = 0; i + 1 < nr_entries && xt->next < xt->end; i += 2) {
    uint64_t len = MIN ((uint64_t) entries[i], xt->end - xt->next);
    uint32_t type = 0;

    if (len == 0)
      break;
    if (entries[i + 1] & LIBNBD_STATE_HOLE)
      type |= NBDKIT_EXTENT_HOLE;
    if (entries[i + 1] & LIBNBD_STATE_ZERO)
      type |= NBDKIT_EXTENT_ZERO;
    if (nbdkit_add_extent (xt->ex, xt->next, len, type) == -1) {
      *error = errno ? errno : ENOMEM;
      return -1;
    }
    xt->next += len;
  }
  return 0;
}

/* Extent callback of block status command USER_DATA (libnbd's lock on
 * conn->h held): adds the base:allocation extents to the nbdkit
 * request's list, from where the command started, clipped to its end,
 * unless the command is late (its caller left with -EIO; conn->lock
 * keeps the two apart).  A second reply for the context (the NBD spec
 * allows only one) is ignored, and so is a zero-length extent and all
 * after it: the waiting thread sees how far the answer went (xt->next)
 * and asks again from there.
 */
static int
nb_extent_cb (void *user_data, const char *metacontext, uint64_t offset,
              uint32_t *entries, size_t nr_entries, int *error)
{
  struct nb_cmd *cmd = user_data;
  struct nb_conn *conn = cmd->conn;
  struct nb_extents *xt = (struct nb_extents *) cmd->buf;
  int r = 0;

  pthread_mutex_lock (&conn->lock);
  if (!cmd->late)
    r = nb_extents_add (xt, metacontext, offset, entries, nr_entries, error);
  pthread_mutex_unlock (&conn->lock);
  return r;
}

/* Issues one command on CONN for CMD.  Returns the cookie or -1. */
static int64_t
nb_issue (struct nb_conn *conn, enum nb_op op, void *buf, uint32_t count,
          uint64_t off, uint32_t nbd_flags, struct nb_cmd *cmd)
{
  nbd_completion_callback cb = {
    .callback = cmd->fn != NULL ? nb_complete_async : nb_complete_sync,
    .user_data = cmd,
  };
  int64_t r;

  cmd->conn = conn;
  cmd->done = false;
  cmd->err = 0;
  cmd->op = op;
  cmd->buf = buf;
  cmd->off = off;
  cmd->count = count;
  cmd->tracked = false;
  cmd->late = false;
  cmd->abandoned = false;
  cmd->orphan = false;
  nb_track (conn, cmd);
  switch (op) {
  case NB_READ:
    r = nbd_aio_pread (conn->h, buf, count, off, cb, nbd_flags);
    break;
  case NB_WRITE:
    r = nbd_aio_pwrite (conn->h, buf, count, off, cb, nbd_flags);
    break;
  case NB_FLUSH: r = nbd_aio_flush (conn->h, cb, nbd_flags); break;
  case NB_TRIM: r = nbd_aio_trim (conn->h, count, off, cb, nbd_flags); break;
  case NB_ZERO: r = nbd_aio_zero (conn->h, count, off, cb, nbd_flags); break;
  case NB_BLOCK_STATUS: {
    nbd_extent_callback xcb = { .callback = nb_extent_cb, .user_data = cmd };
    r = nbd_aio_block_status (conn->h, count, off, xcb, cb, nbd_flags);
    break;
  }
  default: abort ();
  }
  if (r == -1 && conn->nb->timeout_ns != 0) {
    /* Not issued: no callback will come.  The reader may have made it
     * late since nb_track (another thread's command): it leaves
     * nb->late and conn->nlate here, as a completion would take it.
     */
    pthread_mutex_lock (&conn->lock);
    nb_untrack_locked (conn, cmd);
    nb_late_unlink_locked (conn, cmd, 0); /* never reached the remote */
    pthread_mutex_unlock (&conn->lock);
  }
  /* Output still queued (the socket was full, or the state machine was
   * busy with a reply): the reader must poll for POLLOUT.
   */
  if (r != -1 && (nbd_aio_get_direction (conn->h) & LIBNBD_AIO_DIRECTION_WRITE))
    nb_kick (conn);
  return r;
}

/* A command for nb_sync_held that may outlive its caller (with a
 * timeout, once the readers run: see "Timeouts"), with its own copy of
 * BUF for a read or a write (not of backend_zeroes, which never
 * changes).  NULL if out of memory.
 */
static struct nb_cmd *
nb_cmd_own (struct nbd_backend *nb, enum nb_op op, const void *buf,
            uint32_t count)
{
  struct nb_cmd *cmd = pool_get (&nb->cmds);

  if (cmd == NULL)
    return NULL;
  memset (cmd, 0, sizeof *cmd);
  if ((op == NB_READ || op == NB_WRITE) && buf != backend_zeroes) {
    cmd->bounce = malloc (count ? count : 1);
    if (cmd->bounce == NULL) {
      pool_put (&nb->cmds, cmd);
      return NULL;
    }
    if (op == NB_WRITE)
      memcpy (cmd->bounce, buf, count);
  }
  return cmd;
}

/* nb_sync_on, CONN's handle held. */
static int
nb_sync_held (struct nb_conn *conn, enum nb_op op, const char *what, void *buf,
              uint32_t count, uint64_t off, uint32_t nbd_flags)
{
  struct nbd_backend *nb = conn->nb;
  struct nb_cmd local = { .fn = NULL }, *cmd = &local;
  bool own = nb->timeout_ns != 0 && nb->started;
  int err;

  if (own) {
    if (nb_fenced (nb, op, off, count)) {
      nbdkit_debug ("%s: uri=%s: offset %" PRIu64 " count %" PRIu32
                    ": a late request over these sectors is not answered "
                    "yet: not sent",
                    what, nb->uri, off, count);
      return -EIO;
    }
    cmd = nb_cmd_own (nb, op, buf, count);
    if (cmd == NULL) {
      nbdkit_error ("%s: uri=%s: offset %" PRIu64 " count %" PRIu32
                    ": out of memory",
                    what, nb->uri, off, count);
      return -ENOMEM;
    }
  }
  if (nb_issue (conn, op, cmd->bounce != NULL ? cmd->bounce : buf, count, off,
                nbd_flags, cmd) == -1) {
    err = nb_issue_error (conn, what, off, count);
    if (own)
      nb_cmd_free (nb, cmd);
    return err;
  }
  if (!nb->started) {
    /* Before nbd_backend_start (one thread, nothing else in flight):
     * drive the handle here, and kill it when the command is late (the
     * kill makes libnbd complete it).
     */
    uint64_t deadline = nb->timeout_ns ? nb_now () + nb->timeout_ns : 0;

    while (!cmd->done && !nb_is_dead (conn)) {
      int ms = -1;

      if (deadline != 0 && !atomic_load (&conn->killed)) {
        uint64_t now = nb_now ();

        if (now >= deadline)
          nb_conn_kill (conn, op);
        else
          ms = nb_ms_until (deadline, now);
      }
      if (nbd_poll (conn->h, ms) == -1)
        break;
    }
    if (!cmd->done)
      return nb_issue_error (conn, what, off, count);
  }
  pthread_mutex_lock (&conn->lock);
  while (!cmd->done && !cmd->late)
    pthread_cond_wait (&conn->cv, &conn->lock);
  if (cmd->late) {
    /* Whatever the remote answers now, this caller has -EIO (nb->late
     * fences the sectors of a write until the answer).
     */
    bool done = cmd->done, orphan = cmd->orphan;

    if (!done)
      cmd->abandoned = true; /* the completion frees it */
    pthread_mutex_unlock (&conn->lock);
    if (done && !orphan)
      nb_cmd_free (nb, cmd);
    nbdkit_debug ("%s: uri=%s: offset %" PRIu64 " count %" PRIu32
                  ": no answer within backend-timeout=%s",
                  what, nb->uri, off, count, nb->timeout_str);
    return -EIO;
  }
  pthread_mutex_unlock (&conn->lock);
  err = cmd->err;
  if (own) {
    if (err == 0 && op == NB_READ)
      memcpy (buf, cmd->bounce, count);
    nb_cmd_free (nb, cmd);
  }
  if (err == 0)
    return 0;
  if (op == NB_ZERO && (nbd_flags & LIBNBD_CMD_FLAG_FAST_ZERO) &&
      err == ENOTSUP && !nb_is_dead (conn))
    return -ENOTSUP;
  return nb_fail (conn, what, off, count, err, errstr (err));
}

/* One synchronous command (nbd-internal.h). */
int
nb_sync_on (struct nb_conn *conn, enum nb_op op, const char *what, void *buf,
            uint32_t count, uint64_t off, uint32_t nbd_flags)
{
  int r;

  if (nb_conn_get (conn) == NULL) {
    nbdkit_debug ("%s: uri=%s: offset %" PRIu64 " count %" PRIu32
                  ": connection %u is down after a timeout",
                  what, conn->nb->uri, off, count, conn->idx);
    return -EIO;
  }
  r = nb_sync_held (conn, op, what, buf, count, off, nbd_flags);
  nb_conn_put (conn);
  return r;
}

/* Reader thread: the result of asynchronous command CMD. */
static void
nb_finish_async (struct nb_cmd *cmd)
{
  struct nb_conn *conn = cmd->conn;
  void (*fn) (void *, int) = cmd->fn;
  void *arg = cmd->arg;
  int r = 0;

  conn->inflight--;
  if (cmd->abandoned) {
    /* Late: fn had -EIO at the deadline. */
    nbdkit_debug ("subpage: uri=%s: connection %u: a late write completed: "
                  "%s",
                  conn->nb->uri, conn->idx,
                  cmd->err ? errstr (cmd->err) : "ok");
    if (!cmd->orphan) /* an orphan stays on nb->late */
      nb_cmd_free (conn->nb, cmd);
    return;
  }
  if (cmd->err != 0)
    r = nb_fail (conn, "pwrite", cmd->off, cmd->count, cmd->err,
                 errstr (cmd->err));
  nb_cmd_free (conn->nb, cmd);
  fn (arg, r);
}

/* Calls the done functions of CONN's completed asynchronous commands,
 * oldest first, with no lock held.
 */
static void
nb_drain (struct nb_conn *conn)
{
  struct nb_cmd *list, *rev = NULL;

  pthread_mutex_lock (&conn->lock);
  list = conn->done;
  conn->done = NULL;
  pthread_mutex_unlock (&conn->lock);
  while (list != NULL) {
    struct nb_cmd *next = list->next;
    list->next = rev;
    rev = list;
    list = next;
  }
  while (rev != NULL) {
    struct nb_cmd *next = rev->next;
    nb_finish_async (rev);
    rev = next;
  }
}

int
nb_conn_submit (struct nb_conn *conn, struct nb_cmd *cmd)
{
  bool was_empty;

  /* The reader issues it: libnbd calls from the submitting threads
   * would contend with the reader for the handle's lock (measured: 50
   * us per write, against a few us from the reader).
   */
  cmd->next = NULL;
  pthread_mutex_lock (&conn->lock);
  if (conn->reader_exited) {
    pthread_mutex_unlock (&conn->lock);
    return 1;
  }
  was_empty = conn->sq_head == NULL;
  if (was_empty)
    conn->sq_head = cmd;
  else
    conn->sq_tail->next = cmd;
  conn->sq_tail = cmd;
  pthread_mutex_unlock (&conn->lock);
  if (was_empty)
    nb_kick (conn);
  return 0;
}

/* Reader thread: issues queued asynchronous writes while fewer than
 * NB_CONN_INFLIGHT are in flight; when FAIL is set (the reader is
 * exiting) fails every queued one instead and closes the queue; while
 * CONN is down fails every queued one unsent, and one that would
 * overlap a late write (nb_fenced).
 */
static void
nb_issue_queued (struct nb_conn *conn, bool fail)
{
  struct nb_cmd *cmd, *last;
  /* A connection that is down refuses them all, however many late
   * ones still count as in flight.
   */
  bool down = atomic_load (&conn->down);
  unsigned room = fail || down ? UINT32_MAX : NB_CONN_INFLIGHT - conn->inflight;

  if (room == 0)
    return;
  pthread_mutex_lock (&conn->lock);
  cmd = last = conn->sq_head;
  for (unsigned k = 1; last != NULL && k < room; k++)
    last = last->next;
  if (last == NULL || last->next == NULL)
    conn->sq_head = conn->sq_tail = NULL;
  else {
    conn->sq_head = last->next;
    last->next = NULL;
  }
  if (fail)
    conn->reader_exited = true;
  pthread_mutex_unlock (&conn->lock);

  while (cmd != NULL) {
    struct nb_cmd *next = cmd->next;
    int r;

    if (fail)
      r = nb_fail (conn, "pwrite", cmd->off, cmd->count, ENOTCONN,
                   "the connection is closed");
    else if (down || nb_fenced (conn->nb, NB_WRITE, cmd->off, cmd->count)) {
      /* Not sent: see "Timeouts". */
      nbdkit_debug ("pwrite: uri=%s: offset %" PRIu64 " count %" PRIu32
                    ": %s: not sent",
                    conn->nb->uri, cmd->off, cmd->count,
                    down ? "the connection is down after a timeout"
                         : "a late request over these sectors is not answered "
                           "yet");
      r = -EIO;
    }
    else if (nb_issue (conn, NB_WRITE, (void *) cmd->buf, cmd->count, cmd->off,
                       cmd->nbd_flags, cmd) != -1) {
      conn->inflight++;
      cmd = next;
      continue;
    }
    else
      r = nb_issue_error (conn, "pwrite", cmd->off, cmd->count);

    void (*fn) (void *, int) = cmd->fn;
    void *arg = cmd->arg;

    nb_cmd_free (conn->nb, cmd);
    fn (arg, r);
    cmd = next;
  }
}

/* Reader thread: how long poll may sleep, in ms (-1: no limit); with
 * a timeout, every command of CONN past its deadline becomes late (see
 * "Timeouts"): it joins nb->late, its caller gets -EIO, and CONN goes
 * down.  Woken at least once per timeout, so a command issued
 * meanwhile by another thread is looked at no later than it is due.
 */
static int
nb_reader_timeout (struct nb_conn *conn)
{
  struct nbd_backend *nb = conn->nb;
  struct nb_cmd *fns = NULL;
  uint64_t now, deadline;
  enum nb_op op = NB_READ;
  bool late = false;

  if (nb->timeout_ns == 0 || atomic_load (&conn->killed))
    return -1; /* a killed connection wakes the poll by itself */
  now = nb_now ();
  pthread_mutex_lock (&conn->lock);
  while (conn->fl_head != NULL && conn->fl_head->deadline <= now) {
    struct nb_cmd *cmd = conn->fl_head;

    nb_untrack_locked (conn, cmd);
    cmd->late = true;
    conn->nlate++;
    pthread_mutex_lock (&nb->late_lock);
    cmd->late_prev = NULL;
    cmd->late_next = nb->late_head;
    if (nb->late_head != NULL)
      nb->late_head->late_prev = cmd;
    nb->late_head = cmd;
    pthread_mutex_unlock (&nb->late_lock);
    if (cmd->fn != NULL) {
      /* Its fn is called below, once: the completion will not. */
      cmd->abandoned = true;
      cmd->fn_next = fns;
      fns = cmd;
    }
    if (!late)
      op = cmd->op;
    late = true;
  }
  deadline = conn->fl_head != NULL ? conn->fl_head->deadline
                                   : now + nb->timeout_ns;
  if (late)
    pthread_cond_broadcast (&conn->cv); /* synchronous callers leave */
  pthread_mutex_unlock (&conn->lock);
  if (late)
    nb_conn_down (conn, op);
  /* The commands stay in flight; only their callers are answered.  A
   * completion may meanwhile queue one on conn->done (cmd->next), which
   * only this thread drains and frees.
   */
  while (fns != NULL) {
    struct nb_cmd *cmd = fns;
    void (*fn) (void *, int) = cmd->fn;
    void *arg = cmd->arg;

    fns = cmd->fn_next;
    nbdkit_debug ("pwrite: uri=%s: offset %" PRIu64 " count %" PRIu32
                  ": no answer within backend-timeout=%s",
                  nb->uri, cmd->off, cmd->count, nb->timeout_str);
    fn (arg, -EIO);
  }
  return nb_ms_until (deadline, nb_now ());
}

/* Reader thread: CONN is down and the remote has answered every late
 * command on it: it takes requests again.
 */
static void
nb_conn_check_up (struct nb_conn *conn)
{
  bool answered;

  if (!atomic_load (&conn->down) || atomic_load (&conn->killed))
    return;
  pthread_mutex_lock (&conn->lock);
  answered = conn->nlate == 0;
  pthread_mutex_unlock (&conn->lock);
  if (answered && !nb_is_dead (conn))
    nb_conn_up (conn, false);
}

/* Reader thread: drives CONN's handle until it dies or nbdkit stops. */
static void
nb_serve (struct nb_conn *conn)
{
  while (!atomic_load (&conn->quit) && !nb_is_dead (conn)) {
    struct pollfd fds[2] = {
      { .fd = nbd_aio_get_fd (conn->h) },
      { .fd = conn->kick[0], .events = POLLIN },
    };
    unsigned dir;
    int ms;

    nb_issue_queued (conn, false);
    ms = nb_reader_timeout (conn);
    dir = nbd_aio_get_direction (conn->h);

    if (dir & LIBNBD_AIO_DIRECTION_READ)
      fds[0].events |= POLLIN;
    if (dir & LIBNBD_AIO_DIRECTION_WRITE)
      fds[0].events |= POLLOUT;
    if (poll (fds, 2, ms) == -1) {
      if (errno == EINTR)
        continue;
      nbdkit_error ("subpage: uri=%s: connection %u: poll: %s", conn->nb->uri,
                    conn->idx, errstr (errno));
      break;
    }
    /* POLLHUP/POLLERR: let libnbd read and find out. */
    if ((dir & LIBNBD_AIO_DIRECTION_READ) &&
        (fds[0].revents & (POLLIN | POLLHUP | POLLERR)))
      nbd_aio_notify_read (conn->h);
    else if ((dir & LIBNBD_AIO_DIRECTION_WRITE) &&
             (fds[0].revents & (POLLOUT | POLLHUP | POLLERR)))
      nbd_aio_notify_write (conn->h);
    if (fds[1].revents & POLLIN) {
      char buf[64];

      while (read (conn->kick[0], buf, sizeof buf) > 0)
        ;
    }
    nb_drain (conn);
    nb_conn_check_up (conn);
  }
}

/* Reader thread: closes CONN's dead handle once no other thread holds
 * it (nb_conn_get); conn->h is NULL afterwards.
 */
static void
nb_conn_drop (struct nb_conn *conn)
{
  struct nbd_handle *h;
  int sock;

  pthread_mutex_lock (&conn->lock);
  while (conn->users > 0)
    pthread_cond_wait (&conn->cv, &conn->lock);
  h = conn->h;
  sock = conn->sock;
  conn->h = NULL;
  conn->sock = -1;
  assert (conn->fl_head == NULL && conn->nlate == 0);
  pthread_mutex_unlock (&conn->lock);
  assert (conn->inflight == 0);
  nbd_close (h);
  if (sock >= 0)
    close (sock);
}

/* Does H (a new connection for CONN) see what the first connection
 * saw?  Logs why not (at debug level after the first time).
 */
static bool
nb_same_remote (struct nb_conn *conn, struct nbd_handle *h, bool *told)
{
  struct nbd_backend *nb = conn->nb;
  const char *why = NULL;

  if (nbd_get_size (h) != (int64_t) nb->size)
    why = "its size";
  else if ((nbd_is_read_only (h) != 0) != nb->read_only)
    why = "read-only";
  else if ((nb->can_flush && nbd_can_flush (h) != 1) ||
           (nb->can_fua && nbd_can_fua (h) != 1) ||
           (nb->can_trim && nbd_can_trim (h) != 1) ||
           (nb->can_zero && nbd_can_zero (h) != 1) ||
           (nb->can_fast_zero && nbd_can_fast_zero (h) != 1) ||
           (nb->n > 1 && nbd_can_multi_conn (h) != 1) ||
           (nb->can_extents &&
            nbd_can_meta_context (h, LIBNBD_CONTEXT_BASE_ALLOCATION) != 1))
    why = "what it can do (flush, FUA, trim, zero, multi-conn, extents)";
  if (why == NULL)
    return true;
  if (!*told)
    nbdkit_error ("subpage: uri=%s: connection %u: the remote answers "
                  "again but has changed %s: not using it",
                  nb->uri, conn->idx, why);
  *told = true;
  return false;
}

/* Reader thread: connects CONN again after it died while down, one
 * attempt a second (each bounded by the timeout) until one succeeds
 * (0) or nbdkit stops (-1).
 */
static int
nb_reconnect (struct nb_conn *conn)
{
  struct nbd_backend *nb = conn->nb;
  bool told = false;

  while (!atomic_load (&conn->quit)) {
    struct pollfd kick = { .fd = conn->kick[0], .events = POLLIN };
    struct nbd_handle *h;
    char buf[64];
    int err = 0, sock = -1;

    h = nb_connect (nb, conn, &err);
    if (h != NULL && nb_same_remote (conn, h, &told)) {
      sock = fcntl (nbd_aio_get_fd (h), F_DUPFD_CLOEXEC, 0);
      if (sock == -1)
        nbdkit_debug ("subpage: uri=%s: connection %u: dup: %s", nb->uri,
                      conn->idx, errstr (errno));
    }
    if (sock >= 0) {
      pthread_mutex_lock (&conn->lock);
      conn->h = h;
      conn->sock = sock;
      conn->reader_exited = false;
      atomic_store (&conn->dead_logged, false);
      atomic_store (&conn->killed, false);
      pthread_mutex_unlock (&conn->lock);
      nb_conn_up (conn, true);
      return 0;
    }
    if (h != NULL)
      nbd_close (h);
    if (poll (&kick, 1, 1000) > 0)
      while (read (conn->kick[0], buf, sizeof buf) > 0)
        ;
  }
  return -1;
}

static void *
nb_reader (void *arg)
{
  struct nb_conn *conn = arg;

  nb_reader_conn = conn;
  pthread_setname_np (pthread_self (), "subpage-nbdrd");
  for (;;) {
    nb_serve (conn);
    /* Commands aborted when the connection died, and those queued. */
    nb_drain (conn);
    nb_issue_queued (conn, true);
    if (atomic_load (&conn->quit) || !atomic_load (&conn->down))
      break;
    nb_conn_drop (conn);
    if (nb_reconnect (conn) == -1)
      break;
  }
  return NULL;
}

int
nb_conns_start (struct nbd_backend *nb)
{
  int err = 0;

  for (unsigned i = 0; i < nb->n; i++) {
    struct nb_conn *conn = &nb->conns[i];

    err = thread_start_nosignals (&conn->reader, nb_reader, conn);
    if (err != 0) {
      nbdkit_error ("subpage: uri=%s: cannot start a reader thread: %s",
                    nb->uri, errstr (err));
      err = -err;
      break;
    }
    conn->reader_started = true;
  }
  if (err == 0)
    nb->started = true;
  return err;
}

/* nb_connect: the handshake of H, started by nbd_aio_connect_uri,
 * within DEADLINE (0: none), stopped by CONN's quit.  Returns 0 or
 * -errno, with *WHY set.
 */
static int
nb_handshake (struct nbd_handle *h, uint64_t deadline, struct nb_conn *conn,
              const char **why)
{
  while (nbd_aio_is_connecting (h)) {
    struct pollfd fds[2] = {
      { .fd = nbd_aio_get_fd (h) },
      { .fd = conn != NULL ? conn->kick[0] : -1, .events = POLLIN },
    };
    unsigned dir = nbd_aio_get_direction (h);
    int ms = -1, r;

    if (conn != NULL && atomic_load (&conn->quit)) {
      *why = "stopping";
      return -ECANCELED;
    }
    if (deadline != 0) {
      uint64_t now = nb_now ();

      if (now >= deadline) {
        *why = "no answer within backend-timeout";
        return -ETIMEDOUT;
      }
      ms = nb_ms_until (deadline, now);
    }
    if (dir & LIBNBD_AIO_DIRECTION_READ)
      fds[0].events |= POLLIN;
    if (dir & LIBNBD_AIO_DIRECTION_WRITE)
      fds[0].events |= POLLOUT;
    r = poll (fds, 2, ms);
    if (r == -1 && errno == EINTR)
      continue;
    if (r == -1) {
      *why = "poll failed";
      return -errno;
    }
    r = 0;
    if ((dir & LIBNBD_AIO_DIRECTION_READ) &&
        (fds[0].revents & (POLLIN | POLLHUP | POLLERR)))
      r = nbd_aio_notify_read (h);
    else if ((dir & LIBNBD_AIO_DIRECTION_WRITE) &&
             (fds[0].revents & (POLLOUT | POLLHUP | POLLERR)))
      r = nbd_aio_notify_write (h);
    if (r == -1) {
      *why = nbd_get_error ();
      return -(nbd_get_errno () ? nbd_get_errno () : EIO);
    }
    if (fds[1].revents & POLLIN) {
      char buf[64];

      while (read (fds[1].fd, buf, sizeof buf) > 0)
        ;
    }
  }
  if (!nbd_aio_is_ready (h)) {
    *why = "the handshake failed";
    return -EIO;
  }
  return 0;
}

struct nbd_handle *
nb_connect (struct nbd_backend *nb, struct nb_conn *conn, int *err)
{
  const char *uri = nb->uri, *why = NULL;
  struct nbd_handle *h = nbd_create ();
  uint64_t deadline;

  if (h == NULL) {
    *err = -(nbd_get_errno () ? nbd_get_errno () : ENOMEM);
    nbdkit_error ("subpage: nbd_create: %s", nbd_get_error ());
    return NULL;
  }
  /* Block status (nbd-backend.c, nb_extents); a remote that does not
   * know the context connects all the same.
   */
  if (nbd_add_meta_context (h, LIBNBD_CONTEXT_BASE_ALLOCATION) == -1) {
    *err = -(nbd_get_errno () ? nbd_get_errno () : EIO);
    nbdkit_error ("subpage: nbd_add_meta_context: %s", nbd_get_error ());
    nbd_close (h);
    return NULL;
  }
  deadline = nb->timeout_ns ? nb_now () + nb->timeout_ns : 0;
  if (nbd_aio_connect_uri (h, uri) == -1) {
    *err = -(nbd_get_errno () ? nbd_get_errno () : EIO);
    why = nbd_get_error ();
  }
  else
    *err = nb_handshake (h, deadline, conn, &why);
  if (*err == 0)
    return h;
  if (conn != NULL)
    nbdkit_debug ("subpage: uri=%s: connection %u: cannot connect: %s", uri,
                  conn->idx, why);
  else if (*err == -ETIMEDOUT)
    nbdkit_error ("subpage: uri=%s: cannot connect: the remote did not "
                  "complete the NBD handshake within backend-timeout=%s",
                  uri, nb->timeout_str);
  else
    nbdkit_error ("subpage: uri=%s: cannot connect: %s", uri, why);
  nbd_close (h);
  return NULL;
}

/* Connection I's fields, before anything can fail. */
static void
nb_conn_init (struct nbd_backend *nb, unsigned i)
{
  struct nb_conn *conn = &nb->conns[i];

  conn->nb = nb;
  conn->idx = i;
  conn->kick[0] = conn->kick[1] = -1;
  conn->sock = -1;
  atomic_init (&conn->killed, false);
  atomic_init (&conn->down, false);
  atomic_init (&conn->quit, false);
  atomic_init (&conn->dead_logged, false);
  atomic_init (&conn->retired, false);
  pthread_mutex_init (&conn->lock, NULL);
  pthread_cond_init (&conn->cv, NULL);
}

/* Connects connection I (not the first) and checks that it sees the
 * size the first saw.  Returns 0 or -errno (logged).
 */
static int
nb_conn_connect (struct nb_conn *conn)
{
  struct nbd_backend *nb = conn->nb;
  int64_t s;
  int err = 0;

  conn->h = nb_connect (nb, NULL, &err);
  if (conn->h == NULL)
    return err;
  s = nbd_get_size (conn->h);
  if (s != (int64_t) nb->size) {
    nbdkit_error ("subpage: uri=%s: connection %u sees size %" PRIi64
                  ", the first saw %" PRIi64,
                  nb->uri, conn->idx, s, (int64_t) nb->size);
    return -EIO;
  }
  /* Block status goes to whichever connection nb_pick gives. */
  if (nb->can_extents &&
      nbd_can_meta_context (conn->h, LIBNBD_CONTEXT_BASE_ALLOCATION) != 1) {
    nbdkit_debug ("subpage: uri=%s: connection %u did not negotiate "
                  "base:allocation: no extents",
                  nb->uri, conn->idx);
    nb->can_extents = false;
  }
  return 0;
}

int
nb_conns_open (struct nbd_backend *nb, struct nbd_handle *h0)
{
  unsigned i;
  int err;

  nb->conns = calloc (nb->n, sizeof *nb->conns);
  if (nb->conns == NULL) {
    err = -errno;
    nbdkit_error ("calloc: %s", errstr (-err));
    nb->n = 0;
    nbd_close (h0);
    return err;
  }
  for (i = 0; i < nb->n; i++)
    nb_conn_init (nb, i);

  for (i = 0; i < nb->n; i++) {
    struct nb_conn *conn = &nb->conns[i];

    if (pipe2 (conn->kick, O_CLOEXEC | O_NONBLOCK) == -1) {
      err = -errno;
      nbdkit_error ("subpage: pipe2: %s", errstr (-err));
      if (h0 != NULL)
        nbd_close (h0);
      return err;
    }
    if (i == 0) {
      conn->h = h0;
      h0 = NULL;
    }
    else if ((err = nb_conn_connect (conn)) < 0)
      return err;
    /* For nb_conn_kill: a descriptor libnbd never closes. */
    conn->sock = fcntl (nbd_aio_get_fd (conn->h), F_DUPFD_CLOEXEC, 0);
    if (conn->sock == -1) {
      err = -errno;
      nbdkit_error ("subpage: dup: %s", errstr (-err));
      return err;
    }
  }
  atomic_init (&nb->nlive, nb->n);
  atomic_init (&nb->next, 0);
  return 0;
}

/* Sends NBD_CMD_DISC on CONN and waits for the remote to close, within
 * the timeout if there is one (nbd_shutdown would wait for ever).
 */
static void
nb_disconnect (struct nb_conn *conn)
{
  struct nbd_backend *nb = conn->nb;
  uint64_t deadline;

  if (nb->timeout_ns == 0) {
    nbd_shutdown (conn->h, 0);
    return;
  }
  deadline = nb_now () + nb->timeout_ns;
  if (nbd_aio_disconnect (conn->h, 0) == -1)
    return;
  while (!nb_is_dead (conn)) {
    uint64_t now = nb_now ();

    if (now >= deadline) {
      nbdkit_debug ("subpage: uri=%s: connection %u: no answer to the "
                    "disconnection within backend-timeout=%s",
                    nb->uri, conn->idx, nb->timeout_str);
      return;
    }
    if (nbd_poll (conn->h, nb_ms_until (deadline, now)) == -1)
      return;
  }
}

void
nb_conns_close (struct nbd_backend *nb)
{
  unsigned i;

  for (i = 0; i < nb->n; i++) {
    struct nb_conn *conn = &nb->conns[i];

    if (conn->reader_started) {
      atomic_store (&conn->quit, true);
      nb_kick (conn);
      pthread_join (conn->reader, NULL);
      conn->reader_started = false;
    }
  }
  for (i = 0; i < nb->n; i++) {
    struct nb_conn *conn = &nb->conns[i];

    if (conn->h != NULL) {
      /* A polite NBD_CMD_DISC when the connection still works (not
       * while the remote is not answering: no need to wait for it).
       */
      if (!nb_is_dead (conn) && atomic_load (&nb->ndown) == 0)
        nb_disconnect (conn);
      nbd_close (conn->h);
      conn->h = NULL;
      /* Late writes the remote answered meanwhile. */
      nb_drain (conn);
    }
    if (conn->sock >= 0)
      close (conn->sock);
    if (conn->kick[0] >= 0)
      close (conn->kick[0]);
    if (conn->kick[1] >= 0)
      close (conn->kick[1]);
    pthread_cond_destroy (&conn->cv);
    pthread_mutex_destroy (&conn->lock);
  }
  /* Late commands the remote never answered: nbd_close dropped them
   * without a completion.
   */
  while (nb->late_head != NULL) {
    struct nb_cmd *cmd = nb->late_head;

    nb->late_head = cmd->late_next;
    nb_cmd_free (nb, cmd);
  }
  free (nb->conns);
  nb->conns = NULL;
  nb->n = 0;
}
