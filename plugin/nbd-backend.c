/* subpage: the remote NBD backend.
 *
 * Notes on the design.
 *
 * What it does: the struct backend of uri= (backend.h): the cache
 * core's backend operations (cache.h, struct cache_backend_ops) over a
 * remote NBD export, plus an asynchronous write for the write-back
 * server (nb_aio_pwrite, wbserver.h's aio_pwrite).  Every operation
 * returns 0 or -errno and is safe to call from several threads at once.
 * This file decides what to send; the connections that carry it (N
 * libnbd handles, a reader thread each, lost connections) are in
 * nbd-conn.c, and the structures both share in nbd-internal.h.
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
 * ...); a request that finds its connection dead fails with -EIO
 * (nbd-conn.c, "Lost connections").  Nothing hangs on a closed
 * connection; a remote that stops answering without closing the
 * socket is waited for, unless backend-timeout= is set: then every
 * request (and connecting) fails with -EIO past it, while the command
 * itself stays in flight until the remote answers it, and nothing is
 * written over a late write's sectors until then (nbd-conn.c,
 * "Timeouts").
 *
 * Extents: when the remote negotiated base:allocation (asked for on
 * every connection), block status is the remote's NBD_CMD_BLOCK_STATUS
 * on a synchronous connection, its HOLE and ZERO flags passed on as
 * NBDKIT_EXTENT_HOLE and NBDKIT_EXTENT_ZERO.  The remote may answer
 * for less than was asked, so the range is asked again from where the
 * answer ended until all of it is covered.  A remote without
 * base:allocation gets no extents operation, so the plugin offers
 * none and nbdkit reports everything as data, as nbdkit's nbd plugin
 * does in front of such a remote.
 *
 * What it does not do: reconnect a connection the remote closed, TLS settings beyond what the URI
 * says, other meta contexts than base:allocation, several exports.
 */

#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1 /* strerrordesc_np */
#endif
#define NBDKIT_API_VERSION 2

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <libnbd.h>
#include <nbdkit-plugin.h>

#include "backend.h"
#include "cache.h"
#include "errstr.h"
#include "nbd-backend.h"
#include "nbd-internal.h"
#include "pool.h"
#include "util.h"

/* Largest single request sent when the remote advertises no maximum. */
#define NB_MAX_REQUEST (32u * 1024 * 1024)

/* Preallocated commands for asynchronous writes; more are malloc'd. */
#define NB_POOL_CMDS 1024

/* A synchronous operation over [off, off+count), split at max_request
 * (at most BACKEND_ZEROES_SIZE per piece when BUF is backend_zeroes).
 */
static int
nb_sync (struct nb_conn *conn, enum nb_op op, const char *what, void *buf,
         uint32_t count, uint64_t off, uint32_t nbd_flags)
{
  struct nbd_backend *nb = conn->nb;
  bool zeroes = buf == backend_zeroes; /* the same zeroes for each piece */
  char *p = buf;
  int r = 0;

  do {
    uint32_t n = MIN (count, nb->max_request);

    if (zeroes)
      n = MIN (n, (uint32_t) BACKEND_ZEROES_SIZE);

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
    return 1; /* trim is advisory: not done */
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
    r = nb_sync (conn, NB_WRITE, "pwrite", backend_zeroes, count, off,
                 nb_fua_flag (nb, flags));
  return nb_emulate_fua (conn, flags, r);
}

/* struct backend's extents (backend.h): the remote's block status
 * over [off, off+count), asked again from where each answer ended.
 */
static int
nb_extents (void *opaque, uint32_t count, uint64_t off,
            struct nbdkit_extents *ex)
{
  struct nbd_backend *nb = opaque;
  uint64_t end = off + count;

  while (off < end) {
    struct nb_conn *conn = nb_pick (nb, false);
    struct nb_extents xt = { .ex = ex, .start = off, .end = end, .next = off };
    int r;

    r = nb_sync_on (conn, NB_BLOCK_STATUS, "block status", &xt,
                    (uint32_t) (end - off), off, 0);
    if (r < 0)
      return r;
    if (xt.next == off) {
      nbdkit_error ("block status: uri=%s: offset %" PRIu64 " count %" PRIu64
                    ": the remote's answer covers none of it",
                    nb->uri, off, end - off);
      return -EIO;
    }
    off = xt.next;
  }
  return 0;
}

static const struct cache_backend_ops nb_ops = {
  .pread = nb_pread,
  .pwrite = nb_pwrite,
  .flush = nb_flush,
  .trim = nb_trim,
  .zero = nb_zero,
};

/* struct backend's aio_pwrite (wbserver.h): 0 when started (DONE
 * follows, called by a reader thread or, if issuing failed, before
 * this returns), 1 when declined (before the readers start, larger
 * than the remote's maximum request, FUA the remote cannot carry, or
 * no memory): the write-back server then writes the run synchronously.
 */
static int
nb_aio_pwrite (void *opaque, const void *buf, uint32_t count, uint64_t off,
               uint32_t flags, void (*done) (void *arg, int err), void *arg)
{
  struct nbd_backend *nb = opaque;
  struct nb_cmd *cmd;

  if (!nb->started || count > nb->max_request ||
      ((flags & CACHE_FUA) && !nb->can_fua && nb->can_flush))
    return 1;
  cmd = pool_get (&nb->cmds);
  if (cmd == NULL)
    return 1; /* the synchronous path reports it */
  memset (cmd, 0, sizeof *cmd);
  if (nb->timeout_ns != 0) {
    /* A late write stays in flight after the run is done with: it
     * needs its own copy (nbd-conn.c, "Timeouts").
     */
    cmd->bounce = malloc (count ? count : 1);
    if (cmd->bounce == NULL) {
      pool_put (&nb->cmds, cmd);
      return 1;
    }
    memcpy (cmd->bounce, buf, count);
    buf = cmd->bounce;
  }
  cmd->fn = done;
  cmd->arg = arg;
  cmd->buf = buf;
  cmd->off = off;
  cmd->count = count;
  cmd->nbd_flags = nb_fua_flag (nb, flags);
  if (nb_conn_submit (nb_pick (nb, true), cmd) != 0) {
    nb_cmd_free (nb, cmd);
    return 1; /* the synchronous path reports it */
  }
  return 0;
}

/* struct backend's start: the reader threads. */
static int
nb_start (void *opaque)
{
  return nb_conns_start (opaque);
}

static bool
nb_can_write (void *opaque)
{
  struct nbd_backend *nb = opaque;

  return !nb->read_only;
}

/* Frees NB; no command may be in flight. */
static void
nb_close (void *opaque)
{
  struct nbd_backend *nb = opaque;

  nb_conns_close (nb);
  pool_destroy (&nb->cmds);
  pthread_mutex_destroy (&nb->late_lock);
  free (nb->timeout_str);
  free (nb->uri);
  free (nb);
}

/* A can_* answer of handle H: -1 (an error, logged) counts as false. */
static bool
nb_can (int r)
{
  return r == 1;
}

/* What the remote advertises on H0 (size, block sizes, flags) into NB.
 * Returns 0, or -errno (logged) when the size cannot be had or the
 * remote's minimum block size is larger than SECTOR_SIZE.
 */
static int
nb_probe (struct nbd_backend *nb, struct nbd_handle *h0, uint32_t sector_size)
{
  int64_t size, bmin, bmax;

  size = nbd_get_size (h0);
  if (size == -1) {
    nbdkit_error ("subpage: uri=%s: get size: %s", nb->uri, nbd_get_error ());
    return -(nbd_get_errno () ? nbd_get_errno () : EIO);
  }
  bmin = nbd_get_block_size (h0, LIBNBD_SIZE_MINIMUM);
  bmax = nbd_get_block_size (h0, LIBNBD_SIZE_MAXIMUM);
  if (bmin > (int64_t) sector_size) {
    nbdkit_error ("subpage: uri=%s: the remote's minimum block size "
                  "(%" PRIi64 ") is larger than sector-size (%" PRIu32
                  "): set sector-size to at least %" PRIi64,
                  nb->uri, bmin, sector_size, bmin);
    return -EINVAL;
  }
  nb->size = size;
  nb->max_request = bmax > 0 && bmax < NB_MAX_REQUEST ? bmax : NB_MAX_REQUEST;
  nb->read_only = nbd_is_read_only (h0) != 0;
  nb->can_flush = nb_can (nbd_can_flush (h0));
  nb->can_fua = nb_can (nbd_can_fua (h0));
  nb->can_trim = nb_can (nbd_can_trim (h0));
  nb->can_zero = nb_can (nbd_can_zero (h0));
  nb->can_fast_zero = nb_can (nbd_can_fast_zero (h0));
  nb->can_multi_conn = nb_can (nbd_can_multi_conn (h0));
  nb->can_extents =
    nb_can (nbd_can_meta_context (h0, LIBNBD_CONTEXT_BASE_ALLOCATION));
  return 0;
}

/* The debug lines of a successful open. */
static void
nb_log_open (struct nbd_backend *nb, unsigned connections)
{
  if (nb->n < connections)
    nbdkit_debug ("subpage: uri=%s: the remote does not advertise "
                  "multi-conn: using 1 connection, not %u (a flush or "
                  "read on one connection need not cover or see writes "
                  "on another)",
                  nb->uri, connections);
  nbdkit_debug ("subpage: uri=%s: size %" PRIu64 ", %u connection%s, "
                "%s, flush %d, fua %d, trim %d, zero %d, fast zero %d, "
                "multi-conn %d, extents %d, max request %" PRIu32,
                nb->uri, nb->size, nb->n, nb->n == 1 ? "" : "s",
                nb->read_only ? "read-only" : "writable", nb->can_flush,
                nb->can_fua, nb->can_trim, nb->can_zero, nb->can_fast_zero,
                nb->can_multi_conn, nb->can_extents, nb->max_request);
  if (!nb->can_flush)
    nbdkit_debug ("subpage: uri=%s: the remote cannot flush: a flush "
                  "only writes back (the remote decides durability)",
                  nb->uri);
}

int
nbd_backend_open (const char *uri, unsigned connections, uint32_t sector_size,
                  unsigned timeout_ms, const char *timeout_str,
                  struct backend *be)
{
  struct nbd_backend *nb;
  struct nbd_handle *h0;
  int err = 0;

  nb = calloc (1, sizeof *nb);
  if (nb == NULL || (nb->uri = strdup (uri)) == NULL ||
      (nb->timeout_str = strdup (timeout_str ? timeout_str : "0")) == NULL) {
    err = -errno;
    nbdkit_error ("calloc: %s", errstr (-err));
    if (nb != NULL)
      free (nb->uri);
    free (nb);
    return err;
  }
  nb->timeout_ns = (uint64_t) timeout_ms * 1000000;
  atomic_init (&nb->ndown, 0);
  atomic_init (&nb->norphans, 0);
  pthread_mutex_init (&nb->late_lock, NULL);
  /* The pool first: from here on nb_close undoes everything. */
  if ((err = pool_init (&nb->cmds, sizeof (struct nb_cmd), NB_POOL_CMDS)) < 0) {
    nbdkit_error ("calloc: %s", errstr (-err));
    goto err_close;
  }
  h0 = nb_connect (nb, NULL, &err);
  if (h0 == NULL)
    goto err_close;
  if ((err = nb_probe (nb, h0, sector_size)) < 0) {
    nbd_close (h0);
    goto err_close;
  }

  /* Without multi-conn a flush on one connection need not cover writes
   * completed on another, nor a read see them, whether or not the
   * remote can flush (the NBD spec: a client SHOULD NOT use several
   * connections then): use one connection.
   */
  nb->n = nb->can_multi_conn ? connections : 1;
  if ((err = nb_conns_open (nb, h0)) < 0)
    goto err_close;

  nb_log_open (nb, connections);
  *be = (struct backend){
    .read_only_why = nb->read_only ? "the remote export is read-only" : NULL,
    .param = "uri",
    .value = nb->uri,
    .ops = &nb_ops,
    .handle = nb,
    .size = nb->size,
    .can_write = nb_can_write,
    .start = nb_start,
    .aio_pwrite = nb_aio_pwrite,
    .extents = nb->can_extents ? nb_extents : NULL,
    .close = nb_close,
  };
  return 0;

err_close:
  nb_close (nb);
  return err;
}
