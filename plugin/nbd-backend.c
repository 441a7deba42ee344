/* subpage: the remote NBD backend.
 *
 * Notes on the design.
 *
 * What it does: the cache core's backend operations (cache.h, struct
 * cache_backend_ops) over a remote NBD export, with libnbd's
 * asynchronous API, plus an asynchronous write for the write-back
 * server (nbd_backend_aio_pwrite, wbserver.h's aio_pwrite).  Every
 * operation returns 0 or -errno and is safe to call from several
 * threads at once.
 *
 * Representation: N connections ("conns"), each one libnbd handle
 * connected at nbd_backend_open (.get_ready, so a connection error is
 * seen at startup and a relative socket path means what the user
 * meant) to the same URI, and one reader thread per connection started
 * by nbd_backend_start (.after_fork: threads do not survive nbdkit's
 * fork).  Any thread issues commands on any connection with nbd_aio_*
 * (round robin), so many requests are in flight per connection; the
 * reader polls the socket and drives libnbd's state machine
 * (nbd_aio_notify_read/write), like nbdkit's own nbd plugin.  A thread
 * that issued a command which left output pending kicks the reader
 * through a pipe, so the reader also polls for POLLOUT.
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
 * queue is still drained: that thread kicks the reader.
 *
 * Flush.  The cache calls the backend flush only after every write it
 * covers has completed, possibly on other connections.  An NBD flush
 * covers writes completed on other connections only if the server
 * advertises multi-conn, so without it N is 1 (said in the debug
 * output).  That holds for a remote that cannot flush as well: the NBD
 * spec says a client SHOULD NOT multiplex its commands over several
 * connections to a server without multi-conn (a read on one need not
 * see a write completed on another).  With a remote that cannot flush
 * at all, flush is a no-op (and FUA is plain writing): there is
 * nothing more the client can ask for.
 *
 * Flags (CACHE_*): FUA becomes LIBNBD_CMD_FLAG_FUA when the remote can
 * FUA, otherwise a flush after the command.  Zero without
 * CACHE_MAY_TRIM sends NO_HOLE; CACHE_FAST_ZERO sends FAST_ZERO, or
 * fails with -ENOTSUP at once when the remote cannot fast-zero.  A
 * remote that cannot zero gets zeroes written (or -ENOTSUP for a fast
 * zero); one that cannot trim makes trim a no-op (trim is advisory).
 * Requests are split at the remote's maximum block size (32 MiB when it
 * advertises none).  The asynchronous write takes neither a request
 * above that size nor FUA the remote cannot carry: it returns 1 and the
 * write-back server writes such a run synchronously.
 *
 * Errors: an error the remote returns keeps its errno (EIO, ENOSPC,
 * ...).  A connection that died (server killed, socket closed) is dead
 * for good: libnbd fails its commands in flight (ENOTCONN) and refuses
 * new ones, and this backend returns -EIO for every request that found
 * it dead (no retry on another connection) and logs the loss of the
 * connection once.  The dead connection is then retired: no new
 * command picks it, so if the remote is still there the other
 * connections carry on; the last connection is never retired, and when
 * it is dead every request fails at once with -EIO.  Nothing hangs on a
 * closed connection; a remote that stops answering without closing the
 * socket is waited for (libnbd has no request timeout).
 *
 * What it does not do: reconnect, TLS settings beyond what the URI
 * says, extents, several exports.
 */

#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1               /* strerrordesc_np, pipe2,
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

#include "cache.h"
#include "errstr.h"
#include "nbd-backend.h"
#include "thread.h"
#include "util.h"

/* Largest single request sent when the remote advertises no maximum. */
#define NB_MAX_REQUEST (32u * 1024 * 1024)

/* Preallocated commands for asynchronous writes; more are malloc'd. */
#define NB_POOL_CMDS 1024

/* Asynchronous writes in flight per connection; more wait in its queue
 * (sq) until some complete.  A few times what a remote serves at once
 * (nbdkit: 16 threads per connection), so the remote never idles, while
 * libnbd's per-command memory and the remote's queue stay small.
 */
#define NB_CONN_INFLIGHT 64

struct nb_conn;

enum nb_op { NB_READ, NB_WRITE, NB_FLUSH, NB_TRIM, NB_ZERO };

struct nb_cmd {
  struct nb_cmd *next;          /* conn->done, or the free list */
  struct nb_conn *conn;
  int err;                      /* errno from the completion, 0 if ok */
  bool done;                    /* synchronous: completed */
  bool heap;                    /* malloc'd, not pooled */
  /* Asynchronous write: called by the reader (NULL: synchronous). */
  void (*fn) (void *arg, int err);
  void *arg;
  const void *buf;
  uint64_t off;
  uint32_t count;
  uint32_t nbd_flags;
};

struct nb_conn {
  struct nbd_backend *nb;
  unsigned idx;
  struct nbd_handle *h;
  int kick[2];                  /* pipe: wakes the reader */
  pthread_t reader;
  bool reader_started;
  atomic_bool quit;             /* nbd_backend_close: reader exits */
  atomic_bool dead_logged;      /* loss of this connection logged */
  atomic_bool retired;          /* dead: new commands go elsewhere */

  pthread_mutex_t lock;         /* sq, done, reader_exited, cmd->done */
  pthread_cond_t cv;            /* a synchronous command completed */
  struct nb_cmd *sq_head, *sq_tail; /* async writes for the reader to issue */
  unsigned inflight;            /* reader only: async writes issued */
  struct nb_cmd *done;          /* async completions for the reader */
  bool reader_exited;           /* sq is closed */
};

struct nbd_backend {
  char *uri;                    /* for messages */
  unsigned n;                   /* connections */
  struct nb_conn *conns;        /* [n] */
  atomic_uint next;             /* round robin */
  atomic_uint nlive;            /* connections not retired */
  bool started;                 /* readers running */

  pthread_mutex_t pool_lock;    /* free_cmds */
  struct nb_cmd *free_cmds;
  struct nb_cmd *pool;          /* [NB_POOL_CMDS] */

  /* What the remote advertised (read once, at open). */
  uint64_t size;
  uint32_t max_request;
  bool read_only, can_flush, can_fua, can_trim, can_zero, can_fast_zero;
  bool can_multi_conn;
};

/* Zeroes written when the remote cannot zero, from .bss. */
static char zero_buf[256 * 1024];

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
static struct nb_conn *
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
  return &nb->conns[0];         /* unreachable: the last is kept */
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
nb_fail (struct nb_conn *conn, const char *what, uint64_t off,
         uint64_t count, int err, const char *msg)
{
  if (nb_is_dead (conn) || err == ENOTCONN) {
    nb_conn_lost (conn, msg);
    return -EIO;
  }
  if (err == 0)
    err = EIO;
  nbdkit_error ("%s: uri=%s: offset %" PRIu64 " count %" PRIu64 ": %s",
                what, conn->nb->uri, off, count, msg);
  return -err;
}

/* The libnbd call that issues a command failed. */
static int
nb_issue_error (struct nb_conn *conn, const char *what, uint64_t off,
                uint64_t count)
{
  return nb_fail (conn, what, off, count, nbd_get_errno (),
                  nbd_get_error ());
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
  return 1;                     /* retire the command */
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
  if (nb_reader_conn != conn)   /* the reader drains after each poll */
    nb_kick (conn);
  return 1;
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
  case NB_FLUSH:
    r = nbd_aio_flush (conn->h, cb, nbd_flags);
    break;
  case NB_TRIM:
    r = nbd_aio_trim (conn->h, count, off, cb, nbd_flags);
    break;
  case NB_ZERO:
    r = nbd_aio_zero (conn->h, count, off, cb, nbd_flags);
    break;
  default:
    abort ();
  }
  /* Output still queued (the socket was full, or the state machine was
   * busy with a reply): the reader must poll for POLLOUT.
   */
  if (r != -1 &&
      (nbd_aio_get_direction (conn->h) & LIBNBD_AIO_DIRECTION_WRITE))
    nb_kick (conn);
  return r;
}

/* One synchronous command on CONN: issues it and waits for it.
 * Returns 0 or -errno (logged, naming WHAT).  A fast zero that would
 * not be fast fails with -ENOTSUP, not logged.
 */
static int
nb_sync_on (struct nb_conn *conn, enum nb_op op, const char *what,
            void *buf, uint32_t count, uint64_t off, uint32_t nbd_flags)
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

/* A synchronous operation over [off, off+count), split at max_request
 * (at most sizeof zero_buf per piece when BUF is zero_buf).
 */
static int
nb_sync (struct nb_conn *conn, enum nb_op op, const char *what,
         void *buf, uint32_t count, uint64_t off, uint32_t nbd_flags)
{
  struct nbd_backend *nb = conn->nb;
  bool zeroes = buf == zero_buf;    /* the same zeroes for every piece */
  char *p = buf;
  int r = 0;

  do {
    uint32_t n = MIN (count, nb->max_request);

    if (zeroes)
      n = MIN (n, (uint32_t) sizeof zero_buf);

    r = nb_sync_on (conn, op, what, p, n, off, nbd_flags);
    if (p != NULL && !zeroes)
      p += n;
    off += n;
    count -= n;
  } while (r == 0 && count > 0);
  return r;
}

static int
nb_pread (void *opaque, void *buf, uint32_t count, uint64_t off)
{
  struct nbd_backend *nb = opaque;

  return nb_sync (nb_pick (nb, false), NB_READ, "pread", buf, count, off, 0);
}

/* LIBNBD_CMD_FLAG_FUA if CACHE_FUA and the remote can FUA. */
static uint32_t
nb_fua_flag (struct nbd_backend *nb, uint32_t flags)
{
  return (flags & CACHE_FUA) && nb->can_fua ? LIBNBD_CMD_FLAG_FUA : 0;
}

/* After a command with CACHE_FUA that could not carry the FUA flag:
 * flush instead, on the same connection.
 */
static int
nb_emulate_fua (struct nb_conn *conn, uint32_t flags, int r)
{
  struct nbd_backend *nb = conn->nb;

  if (r == 0 && (flags & CACHE_FUA) && !nb->can_fua && nb->can_flush)
    r = nb_sync_on (conn, NB_FLUSH, "flush", NULL, 0, 0, 0);
  return r;
}

static int
nb_pwrite (void *opaque, const void *buf, uint32_t count, uint64_t off,
           uint32_t flags)
{
  struct nbd_backend *nb = opaque;
  struct nb_conn *conn = nb_pick (nb, false);
  int r;

  r = nb_sync (conn, NB_WRITE, "pwrite", (void *) buf, count, off,
               nb_fua_flag (nb, flags));
  return nb_emulate_fua (conn, flags, r);
}

static int
nb_flush (void *opaque)
{
  struct nbd_backend *nb = opaque;

  if (!nb->can_flush)
    return 0;
  return nb_sync_on (nb_pick (nb, false), NB_FLUSH, "flush", NULL, 0, 0, 0);
}

static int
nb_trim (void *opaque, uint32_t count, uint64_t off, uint32_t flags)
{
  struct nbd_backend *nb = opaque;
  struct nb_conn *conn;
  int r;

  if (!nb->can_trim)
    return 1;                   /* trim is advisory: not done */
  conn = nb_pick (nb, false);
  r = nb_sync (conn, NB_TRIM, "trim", NULL, count, off,
               nb_fua_flag (nb, flags));
  return nb_emulate_fua (conn, flags, r);
}

static int
nb_zero (void *opaque, uint32_t count, uint64_t off, uint32_t flags)
{
  struct nbd_backend *nb = opaque;
  uint32_t nbd_flags = nb_fua_flag (nb, flags);
  struct nb_conn *conn;
  int r;

  if ((flags & CACHE_FAST_ZERO) && (!nb->can_zero || !nb->can_fast_zero))
    return -ENOTSUP;
  if (!(flags & CACHE_MAY_TRIM))
    nbd_flags |= LIBNBD_CMD_FLAG_NO_HOLE;
  if (flags & CACHE_FAST_ZERO)
    nbd_flags |= LIBNBD_CMD_FLAG_FAST_ZERO;

  conn = nb_pick (nb, false);
  if (nb->can_zero)
    r = nb_sync (conn, NB_ZERO, "zero", NULL, count, off, nbd_flags);
  else
    r = nb_sync (conn, NB_WRITE, "pwrite", zero_buf, count, off,
                 nb_fua_flag (nb, flags));
  return nb_emulate_fua (conn, flags, r);
}

static struct nb_cmd *
nb_cmd_get (struct nbd_backend *nb)
{
  struct nb_cmd *cmd;

  pthread_mutex_lock (&nb->pool_lock);
  cmd = nb->free_cmds;
  if (cmd != NULL)
    nb->free_cmds = cmd->next;
  pthread_mutex_unlock (&nb->pool_lock);
  if (cmd == NULL) {
    cmd = malloc (sizeof *cmd);
    if (cmd != NULL)
      cmd->heap = true;
  }
  return cmd;
}

static void
nb_cmd_put (struct nbd_backend *nb, struct nb_cmd *cmd)
{
  if (cmd->heap) {
    free (cmd);
    return;
  }
  pthread_mutex_lock (&nb->pool_lock);
  cmd->next = nb->free_cmds;
  nb->free_cmds = cmd;
  pthread_mutex_unlock (&nb->pool_lock);
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
  nb_cmd_put (conn->nb, cmd);
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
nbd_backend_aio_pwrite (void *opaque, const void *buf, uint32_t count,
                        uint64_t off, uint32_t flags,
                        void (*done) (void *arg, int err), void *arg)
{
  struct nbd_backend *nb = opaque;
  struct nb_conn *conn;
  struct nb_cmd *cmd;
  bool was_empty;

  if (!nb->started || count > nb->max_request ||
      ((flags & CACHE_FUA) && !nb->can_fua && nb->can_flush))
    return 1;
  cmd = nb_cmd_get (nb);
  if (cmd == NULL)
    return 1;                   /* the synchronous path needs no memory */
  cmd->fn = done;
  cmd->arg = arg;
  cmd->buf = buf;
  cmd->off = off;
  cmd->count = count;
  cmd->nbd_flags = nb_fua_flag (nb, flags);
  cmd->next = NULL;
  conn = nb_pick (nb, true);

  /* The reader issues it: libnbd calls from the submitting threads
   * would contend with the reader for the handle's lock (measured: 50
   * us per write, against a few us from the reader).
   */
  pthread_mutex_lock (&conn->lock);
  if (conn->reader_exited) {
    pthread_mutex_unlock (&conn->lock);
    nb_cmd_put (nb, cmd);
    return 1;                   /* the synchronous path reports it */
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
      int r = fail ? nb_fail (conn, "pwrite", cmd->off, cmd->count,
                              ENOTCONN, "the connection is closed")
                   : nb_issue_error (conn, "pwrite", cmd->off, cmd->count);
      void (*fn) (void *, int) = cmd->fn;
      void *arg = cmd->arg;

      nb_cmd_put (conn->nb, cmd);
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
      nbdkit_error ("subpage: uri=%s: connection %u: poll: %s",
                    conn->nb->uri, conn->idx, errstr (errno));
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
nbd_backend_start (struct nbd_backend *nb)
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

const struct cache_backend_ops nbd_backend_ops = {
  .pread = nb_pread,
  .pwrite = nb_pwrite,
  .flush = nb_flush,
  .trim = nb_trim,
  .zero = nb_zero,
};

/* Creates a handle and connects it to URI.  Returns NULL (logged, *err
 * set to -errno) on failure.
 */
static struct nbd_handle *
nb_connect (const char *uri, int *err)
{
  struct nbd_handle *h = nbd_create ();

  if (h == NULL) {
    *err = -(nbd_get_errno () ? nbd_get_errno () : ENOMEM);
    nbdkit_error ("subpage: nbd_create: %s", nbd_get_error ());
    return NULL;
  }
  if (nbd_connect_uri (h, uri) == -1) {
    *err = -(nbd_get_errno () ? nbd_get_errno () : EIO);
    nbdkit_error ("subpage: uri=%s: cannot connect: %s", uri,
                  nbd_get_error ());
    nbd_close (h);
    return NULL;
  }
  return h;
}

/* A can_* answer of handle H: -1 (an error, logged) counts as false. */
static bool
nb_can (int r)
{
  return r == 1;
}

int
nbd_backend_open (const char *uri, unsigned connections,
                  uint32_t sector_size, struct nbd_backend **nbp)
{
  struct nbd_backend *nb;
  struct nbd_handle *h0;
  int64_t size, bmin, bmax;
  unsigned i;
  int err = 0;

  h0 = nb_connect (uri, &err);
  if (h0 == NULL)
    return err;

  size = nbd_get_size (h0);
  if (size == -1) {
    err = -(nbd_get_errno () ? nbd_get_errno () : EIO);
    nbdkit_error ("subpage: uri=%s: get size: %s", uri, nbd_get_error ());
    goto err_h0;
  }
  bmin = nbd_get_block_size (h0, LIBNBD_SIZE_MINIMUM);
  bmax = nbd_get_block_size (h0, LIBNBD_SIZE_MAXIMUM);
  if (bmin > (int64_t) sector_size) {
    err = -EINVAL;
    nbdkit_error ("subpage: uri=%s: the remote's minimum block size "
                  "(%" PRIi64 ") is larger than sector-size (%" PRIu32
                  "): set sector-size to at least %" PRIi64,
                  uri, bmin, sector_size, bmin);
    goto err_h0;
  }

  nb = calloc (1, sizeof *nb);
  if (nb == NULL || (nb->uri = strdup (uri)) == NULL) {
    err = -errno;
    nbdkit_error ("calloc: %s", errstr (-err));
    free (nb);
    goto err_h0;
  }
  nb->size = size;
  nb->max_request = bmax > 0 && bmax < NB_MAX_REQUEST ? bmax
                                                       : NB_MAX_REQUEST;
  nb->read_only = nbd_is_read_only (h0) != 0;
  nb->can_flush = nb_can (nbd_can_flush (h0));
  nb->can_fua = nb_can (nbd_can_fua (h0));
  nb->can_trim = nb_can (nbd_can_trim (h0));
  nb->can_zero = nb_can (nbd_can_zero (h0));
  nb->can_fast_zero = nb_can (nbd_can_fast_zero (h0));
  nb->can_multi_conn = nb_can (nbd_can_multi_conn (h0));
  pthread_mutex_init (&nb->pool_lock, NULL);

  /* Without multi-conn a flush on one connection need not cover writes
   * completed on another, nor a read see them, whether or not the
   * remote can flush (the NBD spec: a client SHOULD NOT use several
   * connections then): use one connection.
   */
  nb->n = nb->can_multi_conn ? connections : 1;
  nb->conns = calloc (nb->n, sizeof *nb->conns);
  nb->pool = calloc (NB_POOL_CMDS, sizeof *nb->pool);
  if (nb->conns == NULL || nb->pool == NULL) {
    err = -errno;
    nbdkit_error ("calloc: %s", errstr (-err));
    nb->n = 0;
    nbd_backend_close (nb);
    goto err_h0;
  }
  for (i = 0; i < NB_POOL_CMDS; i++) {
    nb->pool[i].next = nb->free_cmds;
    nb->free_cmds = &nb->pool[i];
  }
  for (i = 0; i < nb->n; i++) {
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

  for (i = 0; i < nb->n; i++) {
    struct nb_conn *conn = &nb->conns[i];

    if (pipe2 (conn->kick, O_CLOEXEC | O_NONBLOCK) == -1) {
      err = -errno;
      nbdkit_error ("subpage: pipe2: %s", errstr (-err));
      goto err_conns;
    }
    if (i == 0) {
      conn->h = h0;
      h0 = NULL;
    }
    else {
      int64_t s;

      conn->h = nb_connect (uri, &err);
      if (conn->h == NULL)
        goto err_conns;
      s = nbd_get_size (conn->h);
      if (s != size) {
        err = -EIO;
        nbdkit_error ("subpage: uri=%s: connection %u sees size %" PRIi64
                      ", the first saw %" PRIi64, uri, i, s, size);
        goto err_conns;
      }
    }
  }
  atomic_init (&nb->nlive, nb->n);
  atomic_init (&nb->next, 0);

  if (nb->n < connections)
    nbdkit_debug ("subpage: uri=%s: the remote does not advertise "
                  "multi-conn: using 1 connection, not %u (a flush or "
                  "read on one connection need not cover or see writes "
                  "on another)",
                  uri, connections);
  nbdkit_debug ("subpage: uri=%s: size %" PRIu64 ", %u connection%s, "
                "%s, flush %d, fua %d, trim %d, zero %d, fast zero %d, "
                "multi-conn %d, max request %" PRIu32,
                uri, nb->size, nb->n, nb->n == 1 ? "" : "s",
                nb->read_only ? "read-only" : "writable",
                nb->can_flush, nb->can_fua, nb->can_trim, nb->can_zero,
                nb->can_fast_zero, nb->can_multi_conn, nb->max_request);
  if (!nb->can_flush)
    nbdkit_debug ("subpage: uri=%s: the remote cannot flush: a flush "
                  "only writes back (the remote decides durability)",
                  uri);
  *nbp = nb;
  return 0;

 err_conns:
  nbd_backend_close (nb);
 err_h0:
  if (h0 != NULL)
    nbd_close (h0);
  return err;
}

uint64_t
nbd_backend_size (struct nbd_backend *nb)
{
  return nb->size;
}

bool
nbd_backend_writable (struct nbd_backend *nb)
{
  return !nb->read_only;
}

/* Stops the readers; no command may be in flight. */
void
nbd_backend_close (struct nbd_backend *nb)
{
  unsigned i;

  if (nb == NULL)
    return;
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
  pthread_mutex_destroy (&nb->pool_lock);
  free (nb->conns);
  free (nb->pool);
  free (nb->uri);
  free (nb);
}
