/* subpage: the file backend (plugin/file-backend.c).
 *
 * The struct backend (backend.h) of file=: a regular file or a block
 * device.  The image is opened read-only by file_backend_open and for
 * writing only when a writable connection first asks (the backend's
 * open_write, from .open): in nbdkit 1.32 the -r option reaches a
 * plugin only as .open's readonly argument, so this is how "nbdkit -r"
 * never opens the image for writing.
 */
#ifndef SUBPAGE_FILE_BACKEND_H
#define SUBPAGE_FILE_BACKEND_H

#include "backend.h"

/* Opens PATH read-only and fills in *BE (value: PATH).  Fails (and logs
 * naming file=) unless PATH is a readable regular file or block device.
 * Returns 0 or -errno.
 */
int file_backend_open (const char *path, struct backend *be);

#endif /* SUBPAGE_FILE_BACKEND_H */
