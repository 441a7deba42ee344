/* subpage: the remote NBD backend.
 *
 * Notes on the design.
 *
 * What it does: the cache core's backend operations (cache.h, struct
 * cache_backend_ops) over a remote NBD export, with libnbd's
 * synchronous API.  Every operation returns 0 or -errno and is safe to
 * call from several threads at once.
 *
 * Representation: a pool of N libnbd handles, all connected at
 * nbd_backend_open (.get_ready, so a connection error is seen at
 * startup and a relative socket path means what the user meant) to the
 * same URI.  A handle is used by one thread at a time: an operation
 * takes a free handle from the pool (waiting on a condition variable
 * when all are busy), makes one or more synchronous calls on it, and
 * gives it back.  So up to N backend requests are in flight at once,
 * whether they come from write-back workers or from request threads
 * reading misses.  No lock is held across a libnbd call.
 *
 * Flush.  The cache calls the backend flush only after every write it
 * covers has completed, possibly on other handles.  An NBD flush covers
 * writes completed on other connections only if the server advertises
 * multi-conn, so without it N is 1 (said in the debug output).  With a
 * remote that cannot flush at all, flush is a no-op (and FUA is plain
 * writing): there is nothing more the client can ask for.
 *
 * Flags (CACHE_*): FUA becomes LIBNBD_CMD_FLAG_FUA when the remote can
 * FUA, otherwise a flush on the same handle after the command.  Zero
 * without CACHE_MAY_TRIM sends NO_HOLE; CACHE_FAST_ZERO sends
 * FAST_ZERO, or fails with -ENOTSUP at once when the remote cannot
 * fast-zero.  A remote that cannot zero gets zeroes written (or
 * -ENOTSUP for a fast zero); one that cannot trim makes trim a no-op
 * (trim is advisory).  Requests are split at the remote's maximum block
 * size (32 MiB when it advertises none).
 *
 * Errors: an error the remote returns keeps its errno (EIO, ENOSPC,
 * ...).  A handle whose connection died (server killed, socket closed)
 * is dead for good: libnbd fails its commands at once (ENOTCONN, then
 * EINVAL for "invalid state"), and this backend returns -EIO for the
 * request that found it dead (no retry on another handle) and logs the
 * loss of the connection once.  The dead handle is then retired from
 * the pool, so if the remote is still there the other connections
 * carry on; the last handle is never retired, and when it is dead every
 * request fails at once with -EIO.  Nothing hangs on a closed
 * connection; a remote that stops answering without closing the socket
 * is waited for (libnbd has no request timeout).
 *
 * What it does not do: reconnect, TLS settings beyond what the URI
 * says, extents, several exports.
 */

#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1               /* strerrordesc_np */
#endif
#define NBDKIT_API_VERSION 2

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <libnbd.h>
#include <nbdkit-plugin.h>

#include "cache.h"
#include "errstr.h"
#include "nbd-backend.h"
#include "util.h"

/* Largest single request sent when the remote advertises no maximum. */
#define NB_MAX_REQUEST (32u * 1024 * 1024)

struct nbd_backend {
  char *uri;                    /* for messages */
  unsigned n;                   /* handles in the pool */
  struct nbd_handle **h;        /* [n] */
  atomic_bool *dead_logged;     /* [n]: loss of handle i logged */

  pthread_mutex_t lock;         /* protects free_idx, nfree */
  pthread_cond_t cond;          /* a handle was given back */
  unsigned *free_idx;           /* stack of free handle indexes */
  unsigned nfree;
  unsigned nlive;               /* handles not retired */

  /* What the remote advertised (read once, at open). */
  uint64_t size;
  uint32_t max_request;
  bool read_only, can_flush, can_fua, can_trim, can_zero, can_fast_zero;
  bool can_multi_conn;
};

/* Zeroes written when the remote cannot zero, from .bss. */
static char zero_buf[256 * 1024];

static unsigned
nb_get (struct nbd_backend *nb)
{
  unsigned i;

  pthread_mutex_lock (&nb->lock);
  while (nb->nfree == 0)
    pthread_cond_wait (&nb->cond, &nb->lock);
  i = nb->free_idx[--nb->nfree];
  pthread_mutex_unlock (&nb->lock);
  return i;
}

/* Gives handle I back.  A dead handle is retired instead, unless it is
 * the last one (which then fails every request with EIO).
 */
static void
nb_put (struct nbd_backend *nb, unsigned i)
{
  bool dead = nbd_aio_is_dead (nb->h[i]) || nbd_aio_is_closed (nb->h[i]);

  pthread_mutex_lock (&nb->lock);
  if (dead && nb->nlive > 1)
    nb->nlive--;
  else {
    nb->free_idx[nb->nfree++] = i;
    pthread_cond_signal (&nb->cond);
  }
  pthread_mutex_unlock (&nb->lock);
}

/* A libnbd call on handle I failed: returns -errno, logged.  A dead
 * connection gives -EIO, and is logged once per handle.
 */
static int
nb_error (struct nbd_backend *nb, unsigned i, const char *what,
          uint64_t off, uint64_t count)
{
  struct nbd_handle *h = nb->h[i];
  int err = nbd_get_errno ();

  if (nbd_aio_is_dead (h) || nbd_aio_is_closed (h)) {
    if (!atomic_exchange (&nb->dead_logged[i], true))
      nbdkit_error ("subpage: uri=%s: connection %u to the remote is lost "
                    "(%s): its requests fail with EIO from now on",
                    nb->uri, i, nbd_get_error ());
    return -EIO;
  }
  if (err == 0)
    err = EIO;
  nbdkit_error ("%s: uri=%s: offset %" PRIu64 " count %" PRIu64 ": %s",
                what, nb->uri, off, count, nbd_get_error ());
  return -err;
}

static int
nb_pread (void *opaque, void *buf, uint32_t count, uint64_t off)
{
  struct nbd_backend *nb = opaque;
  unsigned i = nb_get (nb);
  char *p = buf;
  int r = 0;

  while (count > 0) {
    uint32_t n = MIN (count, nb->max_request);

    if (nbd_pread (nb->h[i], p, n, off, 0) == -1) {
      r = nb_error (nb, i, "pread", off, n);
      break;
    }
    p += n;
    off += n;
    count -= n;
  }
  nb_put (nb, i);
  return r;
}

/* Flush on handle I (already taken). */
static int
nb_flush_on (struct nbd_backend *nb, unsigned i)
{
  if (!nb->can_flush)
    return 0;
  if (nbd_flush (nb->h[i], 0) == -1)
    return nb_error (nb, i, "flush", 0, 0);
  return 0;
}

/* LIBNBD_CMD_FLAG_FUA if CACHE_FUA and the remote can FUA. */
static uint32_t
nb_fua_flag (struct nbd_backend *nb, uint32_t flags)
{
  return (flags & CACHE_FUA) && nb->can_fua ? LIBNBD_CMD_FLAG_FUA : 0;
}

/* After a command on handle I with CACHE_FUA that could not carry the
 * FUA flag: flush instead.
 */
static int
nb_emulate_fua (struct nbd_backend *nb, unsigned i, uint32_t flags, int r)
{
  if (r == 0 && (flags & CACHE_FUA) && !nb->can_fua)
    r = nb_flush_on (nb, i);
  return r;
}

/* Writes [buf, buf+count) at OFF on handle I, in chunks. */
static int
nb_pwrite_on (struct nbd_backend *nb, unsigned i, const void *buf,
              uint32_t count, uint64_t off, uint32_t nbd_flags)
{
  const char *p = buf;

  while (count > 0) {
    uint32_t n = MIN (count, nb->max_request);

    if (nbd_pwrite (nb->h[i], p, n, off, nbd_flags) == -1)
      return nb_error (nb, i, "pwrite", off, n);
    p += n;
    off += n;
    count -= n;
  }
  return 0;
}

static int
nb_pwrite (void *opaque, const void *buf, uint32_t count, uint64_t off,
           uint32_t flags)
{
  struct nbd_backend *nb = opaque;
  unsigned i = nb_get (nb);
  int r;

  r = nb_pwrite_on (nb, i, buf, count, off, nb_fua_flag (nb, flags));
  r = nb_emulate_fua (nb, i, flags, r);
  nb_put (nb, i);
  return r;
}

static int
nb_flush (void *opaque)
{
  struct nbd_backend *nb = opaque;
  unsigned i;
  int r;

  if (!nb->can_flush)
    return 0;
  i = nb_get (nb);
  r = nb_flush_on (nb, i);
  nb_put (nb, i);
  return r;
}

static int
nb_trim (void *opaque, uint32_t count, uint64_t off, uint32_t flags)
{
  struct nbd_backend *nb = opaque;
  unsigned i;
  int r = 0;

  if (!nb->can_trim)
    return 0;                   /* trim is advisory */
  i = nb_get (nb);
  while (count > 0) {
    uint32_t n = MIN (count, nb->max_request);

    if (nbd_trim (nb->h[i], n, off, nb_fua_flag (nb, flags)) == -1) {
      r = nb_error (nb, i, "trim", off, n);
      break;
    }
    off += n;
    count -= n;
  }
  r = nb_emulate_fua (nb, i, flags, r);
  nb_put (nb, i);
  return r;
}

static int
nb_zero (void *opaque, uint32_t count, uint64_t off, uint32_t flags)
{
  struct nbd_backend *nb = opaque;
  uint32_t nbd_flags = nb_fua_flag (nb, flags);
  unsigned i;
  int r = 0;

  if ((flags & CACHE_FAST_ZERO) && (!nb->can_zero || !nb->can_fast_zero))
    return -ENOTSUP;
  if (!(flags & CACHE_MAY_TRIM))
    nbd_flags |= LIBNBD_CMD_FLAG_NO_HOLE;
  if (flags & CACHE_FAST_ZERO)
    nbd_flags |= LIBNBD_CMD_FLAG_FAST_ZERO;

  i = nb_get (nb);
  while (count > 0 && r == 0) {
    uint32_t n = MIN (count, nb->max_request);

    if (nb->can_zero) {
      if (nbd_zero (nb->h[i], n, off, nbd_flags) == -1) {
        /* A fast zero that would not be fast: expected, not logged. */
        if ((flags & CACHE_FAST_ZERO) && nbd_get_errno () == ENOTSUP &&
            !nbd_aio_is_dead (nb->h[i]))
          r = -ENOTSUP;
        else
          r = nb_error (nb, i, "zero", off, n);
      }
    }
    else {
      n = MIN (n, (uint32_t) sizeof zero_buf);
      r = nb_pwrite_on (nb, i, zero_buf, n, off,
                        nb_fua_flag (nb, flags));
    }
    off += n;
    count -= n;
  }
  r = nb_emulate_fua (nb, i, flags, r);
  nb_put (nb, i);
  return r;
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
    goto err_nb;
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

  /* Without multi-conn a flush on one connection need not cover writes
   * completed on another: use one connection.
   */
  nb->n = nb->can_multi_conn || !nb->can_flush ? connections : 1;
  nb->h = calloc (nb->n, sizeof *nb->h);
  nb->dead_logged = calloc (nb->n, sizeof *nb->dead_logged);
  nb->free_idx = calloc (nb->n, sizeof *nb->free_idx);
  if (nb->h == NULL || nb->dead_logged == NULL || nb->free_idx == NULL) {
    err = -errno;
    nbdkit_error ("calloc: %s", errstr (-err));
    goto err_nb;
  }
  pthread_mutex_init (&nb->lock, NULL);
  pthread_cond_init (&nb->cond, NULL);

  nb->h[0] = h0;
  h0 = NULL;
  for (i = 1; i < nb->n; i++) {
    int64_t s;

    nb->h[i] = nb_connect (uri, &err);
    if (nb->h[i] == NULL)
      goto err_handles;
    s = nbd_get_size (nb->h[i]);
    if (s != size) {
      err = -EIO;
      nbdkit_error ("subpage: uri=%s: connection %u sees size %" PRIi64
                    ", the first saw %" PRIi64, uri, i, s, size);
      goto err_handles;
    }
  }
  for (i = 0; i < nb->n; i++) {
    atomic_init (&nb->dead_logged[i], false);
    nb->free_idx[i] = nb->n - 1 - i;
  }
  nb->nfree = nb->nlive = nb->n;

  if (nb->n < connections)
    nbdkit_debug ("subpage: uri=%s: the remote does not advertise "
                  "multi-conn: using 1 connection, not %u (a flush on "
                  "one connection need not cover writes on another)",
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

 err_handles:
  nb->n = i + 1;                /* h[0..i], h[i] may be NULL */
  nbd_backend_close (nb);
  return err;
 err_nb:
  if (nb != NULL) {
    free (nb->h);
    free (nb->dead_logged);
    free (nb->free_idx);
    free (nb->uri);
  }
  free (nb);
 err_h0:
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

void
nbd_backend_close (struct nbd_backend *nb)
{
  unsigned i;

  if (nb == NULL)
    return;
  for (i = 0; i < nb->n; i++) {
    struct nbd_handle *h = nb->h[i];

    if (h == NULL)
      continue;
    /* A polite NBD_CMD_DISC when the connection still works. */
    if (!nbd_aio_is_dead (h) && !nbd_aio_is_closed (h))
      nbd_shutdown (h, 0);
    nbd_close (h);
  }
  pthread_cond_destroy (&nb->cond);
  pthread_mutex_destroy (&nb->lock);
  free (nb->h);
  free (nb->dead_logged);
  free (nb->free_idx);
  free (nb->uri);
  free (nb);
}
