/* subpage: the file backend (plugin/file-backend.c).
 *
 * struct cache_backend_ops over a regular file or a block device.  The
 * image is opened read-only by file_backend_open and for writing only
 * when a writable connection first asks (file_backend_open_write): in
 * nbdkit 1.32 the -r option reaches a plugin only as .open's readonly
 * argument, so this is how "nbdkit -r" never opens the image for
 * writing.
 */
#ifndef SUBPAGE_FILE_BACKEND_H
#define SUBPAGE_FILE_BACKEND_H

#include <stdbool.h>
#include <stdint.h>

#include "cache.h"

struct file_backend;

/* The operations; their opaque argument is the struct file_backend. */
extern const struct cache_backend_ops file_backend_ops;

/* Opens PATH read-only.  Fails (and logs naming file=) unless PATH is a
 * readable regular file or block device.  Returns 0 or -errno.
 */
int file_backend_open (const char *path, struct file_backend **fbp);

/* Makes FB writable if it can be: reopens the image read-write (and a
 * second descriptor with O_DSYNC for FUA writes).  If the image cannot
 * be opened for writing (EACCES, EROFS, EPERM) FB stays read-only,
 * which is logged as debug and is not an error.  Thread-safe and
 * idempotent.  Returns 0, or -errno on any other failure (logged).
 */
int file_backend_open_write (struct file_backend *fb);

/* Has file_backend_open_write succeeded in making FB writable? */
bool file_backend_writable (struct file_backend *fb);

uint64_t file_backend_size (struct file_backend *fb);
bool file_backend_is_block_device (struct file_backend *fb);

/* Closes the descriptors and frees FB (NULL is fine). */
void file_backend_close (struct file_backend *fb);

#endif /* SUBPAGE_FILE_BACKEND_H */
