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
 * What it does not do: reconnect, time out (libnbd has none).
 */

#ifndef _GNU_SOURCE
#define _GNU_SOURCE \
  1 /* strerrordesc_np, pipe2,
                                     * pthread_setname_np */
#endif
#define NBDKIT_API_VERSION 2

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <libnbd.h>
#include <nbdkit-plugin.h>

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

    if (!atomic_load (&conn->retired))
      return conn;
  }
  start = atomic_fetch_add (&nb->next, 1);
  for (unsigned k = 0; k < nb->n; k++) {
    struct nb_conn *conn = &nb->conns[(start + k) % nb->n];

    if (!atomic_load (&conn->retired))
      return conn;
  }
  return &nb->conns[0]; /* unreachable: the last is kept */
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

  pthread_mutex_lock (&conn->lock);
  cmd->err = *error;
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
  cmd->next = conn->done;
  conn->done = cmd;
  pthread_mutex_unlock (&conn->lock);
  if (nb_reader_conn != conn) /* the reader drains after each poll */
    nb_kick (conn);
  return 1;
}

/* Extent callback of a block status command (libnbd's lock on conn->h
 * held): adds the base:allocation extents to the nbdkit request's
 * list, from where the command started, clipped to its end.  A second
 * reply for the context (the NBD spec allows only one) is ignored, and so
 * is a zero-length extent and all after it: the waiting thread sees
 * how far the answer went (xt->next) and asks again from there.
 */
static int
nb_extent_cb (void *user_data, const char *metacontext, uint64_t offset,
              uint32_t *entries, size_t nr_entries, int *error)
{
  struct nb_extents *xt = user_data;

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
    nbd_extent_callback xcb = { .callback = nb_extent_cb, .user_data = buf };
    r = nbd_aio_block_status (conn->h, count, off, xcb, cb, nbd_flags);
    break;
  }
  default: abort ();
  }
  /* Output still queued (the socket was full, or the state machine was
   * busy with a reply): the reader must poll for POLLOUT.
   */
  if (r != -1 && (nbd_aio_get_direction (conn->h) & LIBNBD_AIO_DIRECTION_WRITE))
    nb_kick (conn);
  return r;
}

/* One synchronous command (nbd-internal.h). */
int
nb_sync_on (struct nb_conn *conn, enum nb_op op, const char *what, void *buf,
            uint32_t count, uint64_t off, uint32_t nbd_flags)
{
  struct nb_cmd cmd = { .fn = NULL };

  if (nb_issue (conn, op, buf, count, off, nbd_flags, &cmd) == -1)
    return nb_issue_error (conn, what, off, count);
  if (!conn->nb->started) {
    /* Before nbd_backend_start (one thread, nothing else in flight):
     * drive the handle here.
     */
    while (!cmd.done && !nb_is_dead (conn))
      if (nbd_poll (conn->h, -1) == -1)
        break;
    if (!cmd.done)
      return nb_issue_error (conn, what, off, count);
  }
  pthread_mutex_lock (&conn->lock);
  while (!cmd.done)
    pthread_cond_wait (&conn->cv, &conn->lock);
  pthread_mutex_unlock (&conn->lock);
  if (cmd.err == 0)
    return 0;
  if (op == NB_ZERO && (nbd_flags & LIBNBD_CMD_FLAG_FAST_ZERO) &&
      cmd.err == ENOTSUP && !nb_is_dead (conn))
    return -ENOTSUP;
  return nb_fail (conn, what, off, count, cmd.err, errstr (cmd.err));
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
  if (cmd->err != 0)
    r = nb_fail (conn, "pwrite", cmd->off, cmd->count, cmd->err,
                 errstr (cmd->err));
  pool_put (&conn->nb->cmds, cmd);
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
 * exiting) fails every queued one instead and closes the queue.
 */
static void
nb_issue_queued (struct nb_conn *conn, bool fail)
{
  struct nb_cmd *cmd, *last;
  unsigned room = fail ? UINT32_MAX : NB_CONN_INFLIGHT - conn->inflight;

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

    if (!fail && nb_issue (conn, NB_WRITE, (void *) cmd->buf, cmd->count,
                           cmd->off, cmd->nbd_flags, cmd) != -1)
      conn->inflight++;
    else {
      int r = fail ? nb_fail (conn, "pwrite", cmd->off, cmd->count, ENOTCONN,
                              "the connection is closed")
                   : nb_issue_error (conn, "pwrite", cmd->off, cmd->count);
      void (*fn) (void *, int) = cmd->fn;
      void *arg = cmd->arg;

      pool_put (&conn->nb->cmds, cmd);
      fn (arg, r);
    }
    cmd = next;
  }
}

static void *
nb_reader (void *arg)
{
  struct nb_conn *conn = arg;

  nb_reader_conn = conn;
  pthread_setname_np (pthread_self (), "subpage-nbdrd");
  while (!atomic_load (&conn->quit) && !nb_is_dead (conn)) {
    struct pollfd fds[2] = {
      { .fd = nbd_aio_get_fd (conn->h) },
      { .fd = conn->kick[0], .events = POLLIN },
    };
    unsigned dir;

    nb_issue_queued (conn, false);
    dir = nbd_aio_get_direction (conn->h);

    if (dir & LIBNBD_AIO_DIRECTION_READ)
      fds[0].events |= POLLIN;
    if (dir & LIBNBD_AIO_DIRECTION_WRITE)
      fds[0].events |= POLLOUT;
    if (poll (fds, 2, -1) == -1) {
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
  }
  /* Commands aborted when the connection died, and those queued. */
  nb_drain (conn);
  nb_issue_queued (conn, true);
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

struct nbd_handle *
nb_connect (const char *uri, int *err)
{
  struct nbd_handle *h = nbd_create ();

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
  if (nbd_connect_uri (h, uri) == -1) {
    *err = -(nbd_get_errno () ? nbd_get_errno () : EIO);
    nbdkit_error ("subpage: uri=%s: cannot connect: %s", uri, nbd_get_error ());
    nbd_close (h);
    return NULL;
  }
  return h;
}

/* Connection I's fields, before anything can fail. */
static void
nb_conn_init (struct nbd_backend *nb, unsigned i)
{
  struct nb_conn *conn = &nb->conns[i];

  conn->nb = nb;
  conn->idx = i;
  conn->kick[0] = conn->kick[1] = -1;
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

  conn->h = nb_connect (nb->uri, &err);
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
  }
  atomic_init (&nb->nlive, nb->n);
  atomic_init (&nb->next, 0);
  return 0;
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
      /* A polite NBD_CMD_DISC when the connection still works. */
      if (!nb_is_dead (conn))
        nbd_shutdown (conn->h, 0);
      nbd_close (conn->h);
    }
    if (conn->kick[0] >= 0)
      close (conn->kick[0]);
    if (conn->kick[1] >= 0)
      close (conn->kick[1]);
    pthread_cond_destroy (&conn->cv);
    pthread_mutex_destroy (&conn->lock);
  }
  free (nb->conns);
  nb->conns = NULL;
  nb->n = 0;
}
