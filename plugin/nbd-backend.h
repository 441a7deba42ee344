/* subpage: the remote NBD backend (plugin/nbd-backend.c).
 *
 * struct cache_backend_ops over a remote NBD export reached with libnbd
 * (uri=), through a small pool of connections so that write-back
 * workers and request threads reach the remote in parallel.  A flush is
 * the remote's flush; with more than one connection that is correct
 * only if the remote advertises multi-conn, so without it one
 * connection is used.  A dead connection makes every request that
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

uint64_t nbd_backend_size (struct nbd_backend *nb);
/* False when the remote export is read-only. */
bool nbd_backend_writable (struct nbd_backend *nb);

/* Disconnects and frees NB (NULL is fine). */
void nbd_backend_close (struct nbd_backend *nb);

#endif /* SUBPAGE_NBD_BACKEND_H */
