/* subpage: the remote NBD backend (plugin/nbd-backend.c, nbd-conn.c).
 *
 * The struct backend (backend.h) of uri=: a remote NBD export reached
 * with libnbd, through a small set of connections with many requests in
 * flight on each (libnbd's asynchronous API, one reader thread per
 * connection, started by the backend's start in .after_fork), so that
 * write-back and request threads reach the remote in parallel.  A
 * flush is the remote's flush; with more than one connection that is
 * correct only if the remote advertises multi-conn, so without it one
 * connection is used (also when the remote cannot flush: the NBD spec
 * says a client SHOULD NOT use several connections then).  A dead
 * connection makes every request that needs it fail with EIO; only one
 * closed after a timeout (backend-timeout=) is connected again.  The
 * backend has an asynchronous write for the
 * write-back server (aio_pwrite).
 */
#ifndef SUBPAGE_NBD_BACKEND_H
#define SUBPAGE_NBD_BACKEND_H

#include <stdint.h>

#include "backend.h"

/* Connects up to CONNECTIONS handles to URI (one if the remote does not
 * advertise multi-conn) and fills in *BE (value: URI).  TIMEOUT_MS
 * (0: none) bounds connecting and every request; TIMEOUT_STR is
 * backend-timeout= as given, for messages.  Fails (and logs naming
 * uri=) if the remote cannot be reached in time, or if its minimum
 * block size is larger than SECTOR_SIZE.  Returns 0 or -errno.
 */
int nbd_backend_open (const char *uri, unsigned connections,
                      uint32_t sector_size, unsigned timeout_ms,
                      const char *timeout_str, struct backend *be);

#endif /* SUBPAGE_NBD_BACKEND_H */
