/* subpage: the remote NBD backend (plugin/nbd-backend.c).
 *
 * struct cache_backend_ops over a remote NBD export reached with libnbd
 * (uri=), through a small set of connections with many requests in
 * flight on each (libnbd's asynchronous API, one reader thread per
 * connection), so that write-back and request threads reach the remote
 * in parallel.  A flush is
 * the remote's flush; with more than one connection that is correct
 * only if the remote advertises multi-conn, so without it one
 * connection is used (also when the remote cannot flush: the NBD spec
 * says a client SHOULD NOT use several connections then).  A dead connection makes every request that
 * needs it fail with EIO; there is no reconnection.
 */
#ifndef SUBPAGE_NBD_BACKEND_H
#define SUBPAGE_NBD_BACKEND_H

#include <stdbool.h>
#include <stdint.h>

#include "cache.h"

struct nbd_backend;

/* The operations; their opaque argument is the struct nbd_backend. */
extern const struct cache_backend_ops nbd_backend_ops;

/* Connects up to CONNECTIONS handles to URI (one if the remote does not
 * advertise multi-conn).  Fails (and logs naming uri=) if the remote
 * cannot be reached, or if its minimum block size is larger than
 * SECTOR_SIZE.  Returns 0 or -errno.
 */
int nbd_backend_open (const char *uri, unsigned connections,
                      uint32_t sector_size, struct nbd_backend **nbp);

/* Starts one reader thread per connection (after nbdkit's fork).
 * Until then operations drive the connection in the calling thread and
 * nbd_backend_aio_pwrite declines every write.  Returns 0 or -errno
 * (logged).
 */
int nbd_backend_start (struct nbd_backend *nb);

/* The write-back server's asynchronous write (wbserver.h, aio_pwrite;
 * OPAQUE is the struct nbd_backend): 0 when started (DONE follows,
 * called by a reader thread or, if issuing failed, before this
 * returns), 1 when declined (before nbd_backend_start, larger than the
 * remote's maximum request, FUA the remote cannot carry).
 */
int nbd_backend_aio_pwrite (void *opaque, const void *buf, uint32_t count,
                            uint64_t off, uint32_t flags,
                            void (*done) (void *arg, int err), void *arg);

uint64_t nbd_backend_size (struct nbd_backend *nb);
/* False when the remote export is read-only. */
bool nbd_backend_writable (struct nbd_backend *nb);

/* Disconnects and frees NB (NULL is fine). */
void nbd_backend_close (struct nbd_backend *nb);

#endif /* SUBPAGE_NBD_BACKEND_H */
