/* subpage: the NBD backend's internals, shared by plugin/nbd-backend.c
 * (the operations) and plugin/nbd-conn.c (the connections).
 *
 * Nothing outside those two files includes this header; the plugin
 * sees only nbd-backend.h.  Lock order: libnbd's lock on a handle,
 * then conn->lock (a completion callback takes conn->lock under the
 * handle's lock, so conn->lock is never held across a libnbd call),
 * then nb->late_lock; the lock of nb->cmds is a leaf.
 *
 * conn->h is replaced only by the connection's reader (after a
 * timeout, nbd-conn.c "Timeouts"), under conn->lock and only while no
 * other thread uses it: a thread other than the reader uses conn->h
 * only between nb_conn_get and nb_conn_put.
 */
#ifndef SUBPAGE_NBD_INTERNAL_H
#define SUBPAGE_NBD_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <libnbd.h>

#include "pool.h"

/* Asynchronous writes in flight per connection; more wait in its queue
 * (sq) until some complete.  A few times what a remote serves at once
 * (nbdkit: 16 threads per connection), so the remote never idles, while
 * libnbd's per-command memory and the remote's queue stay small.
 */
#define NB_CONN_INFLIGHT 64

struct nb_conn;

enum nb_op { NB_READ, NB_WRITE, NB_FLUSH, NB_TRIM, NB_ZERO, NB_BLOCK_STATUS };

struct nbdkit_extents; /* nbdkit-plugin.h */

/* A block status command's result: the extent callback (in whichever
 * thread drives the handle) adds the remote's base:allocation extents
 * to EX from START up to END at most, clipped to END, and records how
 * far it got; the thread that waits for the command reads it after
 * the command completed (conn->lock orders the two).
 */
struct nb_extents {
  struct nbdkit_extents *ex;
  uint64_t start, end;
  uint64_t next; /* [start, next) added */
  bool seen;     /* the base:allocation reply came */
};

struct nb_cmd {
  struct nb_cmd *next; /* conn->sq_head or conn->done */
  struct nb_conn *conn;
  /* With a timeout: conn->fl_head's list of commands in flight, oldest
   * first, and when this one is late (CLOCK_MONOTONIC, ns).
   */
  struct nb_cmd *fl_prev, *fl_next;
  uint64_t deadline;
  bool tracked; /* on that list */
  /* Past its deadline and still in flight (nbd-conn.c, "Timeouts"):
   * on nb->late until libnbd completes it; its caller already had
   * -EIO (an asynchronous write's fn was called).
   */
  bool late;
  /* Nobody waits for the result any more (a late synchronous
   * command's caller left, a late asynchronous write's fn was called):
   * the completion frees the command.
   */
  bool abandoned;
  struct nb_cmd *fn_next; /* the reader's list of fns to call */
  /* Late, changing the image, and its connection closed unanswered:
   * kept on nb->late for good (nbd-conn.c, nb_late_unlink_locked).
   */
  bool orphan;
  struct nb_cmd *late_prev, *late_next;
  enum nb_op op;
  int err;   /* errno from the completion, 0 if ok */
  bool done; /* synchronous: completed */
  /* Asynchronous write: called by the reader (NULL: synchronous). */
  void (*fn) (void *arg, int err);
  void *arg;
  const void *buf; /* as issued (for block status: its nb_extents) */
  void *bounce;    /* with a timeout: the command's own copy, freed with it */
  uint64_t off;
  uint32_t count;
  uint32_t nbd_flags;
};

struct nb_conn {
  struct nbd_backend *nb;
  unsigned idx;
  struct nbd_handle *h; /* NULL while reconnecting */
  int sock;             /* dup of h's socket (nb_conn_kill), or -1 */
  int kick[2];          /* pipe: wakes the reader */
  pthread_t reader;
  bool reader_started;
  atomic_bool quit;        /* nb_conns_close: reader exits */
  atomic_bool dead_logged; /* loss of this connection logged */
  atomic_bool retired;     /* dead: new commands go elsewhere */
  atomic_bool killed;      /* shut down before the readers started */
  /* A command on it is late (or it was killed): no new commands until
   * the remote has answered every late one (nlate 0, the connection
   * alive) or it is connected again.
   */
  atomic_bool down;

  pthread_mutex_t lock; /* sq, done, reader_exited, cmd->done, h, users,
                         * the fl list */
  pthread_cond_t cv;    /* a synchronous command completed, users fell */
  unsigned users;       /* threads between nb_conn_get and nb_conn_put */
  unsigned nlate;       /* its commands on nb->late */
  struct nb_cmd *fl_head, *fl_tail; /* in flight, with a timeout */
  struct nb_cmd *sq_head, *sq_tail; /* async writes for the reader to issue */
  unsigned inflight;                /* reader only: async writes issued */
  struct nb_cmd *done;              /* async completions for the reader */
  bool reader_exited;               /* sq is closed */
};

struct nbd_backend {
  char *uri;             /* for messages */
  unsigned n;            /* connections */
  struct nb_conn *conns; /* [n] */
  atomic_uint next;      /* round robin */
  atomic_uint nlive;     /* connections not retired */
  bool started;          /* readers running */
  uint64_t timeout_ns;   /* backend-timeout=, 0: none */
  char *timeout_str;     /* as given, for messages */
  atomic_uint ndown;     /* connections down (conn->down) */
  /* Late commands of every connection, not yet completed: a new
   * write, trim or zero that overlaps a late one that changes the
   * image fails at once (nbd-conn.c, "Timeouts").  A leaf lock.
   */
  pthread_mutex_t late_lock;
  struct nb_cmd *late_head;
  atomic_uint norphans; /* orphans (logged once) */

  struct pool cmds; /* asynchronous writes (its own lock) */

  /* What the remote advertised (read once, at open). */
  uint64_t size;
  uint32_t max_request;
  bool read_only, can_flush, can_fua, can_trim, can_zero, can_fast_zero;
  bool can_multi_conn;
  bool can_extents; /* base:allocation negotiated on every connection */
};

/* ---- nbd-conn.c ---------------------------------------------------------- */

/* Creates a handle, asks for the base:allocation meta context (block
 * status) and connects it to NB's URI, within NB's timeout if it has
 * one.  CONN: the reader reconnecting CONN (its quit stops the attempt,
 * failures are logged as debug messages); NULL at startup.  Returns
 * NULL (logged, *err set to -errno) on failure.
 */
struct nbd_handle *nb_connect (struct nbd_backend *nb, struct nb_conn *conn,
                               int *err);

/* Sets up NB's nb->n connections: the first is H0 (already connected;
 * owned by NB from now on, even on failure), the others are connected
 * to nb->uri and must see nb->size.  Returns 0 or -errno (logged); on
 * failure nb_conns_close undoes what was done.
 */
int nb_conns_open (struct nbd_backend *nb, struct nbd_handle *h0);

/* Starts one reader thread per connection (after nbdkit's fork).  Until
 * then commands are driven by the thread that waits for them.  Returns
 * 0 or -errno (logged).
 */
int nb_conns_start (struct nbd_backend *nb);

/* Stops the readers, disconnects and frees the connections.  No command
 * may be in flight but late ones (freed here).
 */
void nb_conns_close (struct nbd_backend *nb);

/* A connection for a new command (ASYNC: an asynchronous write). */
struct nb_conn *nb_pick (struct nbd_backend *nb, bool async);

/* One synchronous command on CONN: issues it and waits for it.
 * Returns 0 or -errno (logged, naming WHAT).  A fast zero that would
 * not be fast fails with -ENOTSUP, not logged.  For NB_BLOCK_STATUS
 * BUF is a struct nb_extents (start = OFF, end = OFF + COUNT), which
 * says how much of the range the remote answered.
 */
int nb_sync_on (struct nb_conn *conn, enum nb_op op, const char *what,
                void *buf, uint32_t count, uint64_t off, uint32_t nbd_flags);

/* Hands asynchronous write CMD (fn set) to CONN's reader, which issues
 * it and later calls cmd->fn.  Returns 0, or 1 when the reader has
 * exited (CMD is untouched: the caller takes another way).
 */

/* Frees CMD (from nb->cmds) and its bounce buffer. */
void nb_cmd_free (struct nbd_backend *nb, struct nb_cmd *cmd);
int nb_conn_submit (struct nb_conn *conn, struct nb_cmd *cmd);

#endif /* SUBPAGE_NBD_INTERNAL_H */
