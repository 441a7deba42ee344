/* subpage: the file backend.
 *
 * Notes on the design.
 *
 * What it does: the struct backend of file= (backend.h): the cache
 * core's backend operations (cache.h, struct cache_backend_ops) over a
 * regular file or a block device, with plain buffered I/O.  Every
 * operation returns 0 or -errno, reports the failing syscall with
 * nbdkit_error, and is safe to call from several threads at once
 * (request threads reading misses, write-back workers writing runs,
 * flushes).
 *
 * Representation: up to three descriptors on the same image.
 *   rfd   O_RDONLY, opened by file_backend_open (at .get_ready); reads.
 *   wfd   O_RDWR, opened by fb_open_write (struct backend's open_write)
 *         when the first writable connection opens; writes, fallocate,
 *         ioctls, flush.
 *   sfd   O_RDWR|O_DSYNC, opened with wfd; FUA writes, which are then
 *         durable when pwrite returns, without flushing the whole file.
 * wfd and sfd are set once, under lock, before any write can reach the
 * backend (writes only follow a writable .open), and read atomically.
 * Opening for writing lazily is how "nbdkit -r" keeps the image opened
 * read-only: nbdkit 1.32 tells a plugin about -r only through .open's
 * readonly flag, after .get_ready.
 *
 * Zeroing, fastest first (flags are the cache's CACHE_*):
 *   1. fallocate ZERO_RANGE|KEEP_SIZE (regular files);
 *   2. with CACHE_MAY_TRIM: fallocate PUNCH_HOLE|KEEP_SIZE (regular
 *      files and, since Linux 4.9, block devices, where the kernel
 *      guarantees zeroes or fails);
 *   3. with CACHE_FAST_ZERO: -ENOTSUP (BLKZEROOUT and writing zeroes
 *      may both be slow: the kernel falls back to writing zeroes);
 *   4. block devices: ioctl BLKZEROOUT;
 *   5. pwrite of zeroes in chunks.
 * On a block device 1-4 need whole logical blocks, so the unaligned
 * head and tail of the range (under a block each) are written instead.
 * A method that fails with EOPNOTSUPP (or ENOTTY, ENOSYS) is not tried
 * again.  Trim is advisory: PUNCH_HOLE (regular files) or BLKDISCARD
 * (block devices, range shrunk to the logical block size), and 0 when
 * the backend cannot.  CACHE_FUA on zero and trim is an fdatasync after.
 *
 * Extents (regular files only): lseek SEEK_DATA/SEEK_HOLE on rfd, holes
 * reported as NBDKIT_EXTENT_HOLE|NBDKIT_EXTENT_ZERO.  A block device
 * has no extents operation: the plugin then offers none, and clients
 * see all data.
 *
 * What it does not do: no O_DIRECT, no cache of its own.
 */

#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1 /* fallocate, strerrordesc_np */
#endif
#define NBDKIT_API_VERSION 2

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nbdkit-plugin.h>

#include "cache.h"
#include "backend.h"
#include "errstr.h"
#include "file-backend.h"
#include "util.h"

struct file_backend {
  char *path; /* for messages */
  int rfd;
  atomic_int wfd, sfd;  /* -1 until opened for writing */
  pthread_mutex_t lock; /* serializes fb_open_write */
  bool write_tried;     /* under lock */
  bool is_block;
  uint64_t size;
  uint32_t lbs; /* block devices: logical block size */
  /* Cleared when the kernel says a method is unsupported. */
  atomic_bool can_zero_range, can_punch, can_discard, can_zeroout;
};

static bool
is_unsupported (int err)
{
  return err == EOPNOTSUPP || err == ENOTSUP || err == ENOSYS || err == ENOTTY;
}

static int
fb_pread (void *opaque, void *buf, uint32_t count, uint64_t off)
{
  struct file_backend *fb = opaque;
  char *p = buf;

  while (count > 0) {
    ssize_t r = pread (fb->rfd, p, count, off);

    if (r == -1) {
      int err = errno;

      if (err == EINTR)
        continue;
      nbdkit_error ("pread: %s: offset %" PRIu64 ": %s", fb->path, off,
                    errstr (err));
      return -err;
    }
    if (r == 0) /* it shrank: the cache follows, and says so once */
      return -ERANGE;
    p += r;
    count -= r;
    off += r;
  }
  return 0;
}

/* pwrite all of [buf, buf+count) to FD, retrying short writes. */
static int
fb_pwrite_fd (struct file_backend *fb, int fd, const void *buf, uint32_t count,
              uint64_t off)
{
  const char *p = buf;

  if (fd == -1)
    return -EROFS; /* no writable .open: cannot happen */
  while (count > 0) {
    ssize_t r = pwrite (fd, p, count, off);

    if (r == -1) {
      int err = errno;

      if (err == EINTR)
        continue;
      nbdkit_error ("pwrite: %s: offset %" PRIu64 ": %s", fb->path, off,
                    errstr (err));
      return -err;
    }
    if (r == 0) {
      nbdkit_error ("pwrite: %s: no progress at offset %" PRIu64, fb->path,
                    off);
      return -EIO;
    }
    p += r;
    count -= r;
    off += r;
  }
  return 0;
}

static int
fb_pwrite (void *opaque, const void *buf, uint32_t count, uint64_t off,
           uint32_t flags)
{
  struct file_backend *fb = opaque;
  int fd = (flags & CACHE_FUA) ? atomic_load (&fb->sfd)
                               : atomic_load (&fb->wfd);

  return fb_pwrite_fd (fb, fd, buf, count, off);
}

static int
fb_flush (void *opaque)
{
  struct file_backend *fb = opaque;
  int fd = atomic_load (&fb->wfd);

  if (fd == -1)
    fd = fb->rfd;
  if (fdatasync (fd) == -1) {
    int err = errno;

    nbdkit_error ("fdatasync: %s: %s", fb->path, errstr (err));
    return -err;
  }
  return 0;
}

/* After a zero or trim with CACHE_FUA. */
static int
fb_fua (struct file_backend *fb, uint32_t flags, int r)
{
  if (r == 0 && (flags & CACHE_FUA))
    r = fb_flush (fb);
  return r;
}

/* fallocate on wfd.  Returns 0, 1 if the method is unsupported (and
 * clears *CAN), or -errno (logged).
 */
static int
fb_fallocate (struct file_backend *fb, atomic_bool *can, int mode,
              const char *what, uint32_t count, uint64_t off)
{
  int fd = atomic_load (&fb->wfd);
  int r;

  if (!atomic_load (can))
    return 1;
  if (fd == -1)
    return -EROFS;
  do
    r = fallocate (fd, mode, off, count);
  while (r == -1 && errno == EINTR);
  if (r == 0)
    return 0;
  if (is_unsupported (errno)) {
    nbdkit_debug ("subpage: %s: fallocate %s not supported, not trying "
                  "again",
                  fb->path, what);
    atomic_store (can, false);
    return 1;
  }
  r = errno;
  nbdkit_error ("fallocate: %s: %s: offset %" PRIu64 " count %" PRIu32 ": %s",
                fb->path, what, off, count, errstr (r));
  return -r;
}

/* ioctl REQ with a [start, length] range on wfd; same returns. */
static int
fb_range_ioctl (struct file_backend *fb, atomic_bool *can, unsigned long req,
                const char *what, uint64_t start, uint64_t length)
{
  uint64_t range[2] = { start, length };
  int fd = atomic_load (&fb->wfd);
  int r;

  if (!atomic_load (can))
    return 1;
  if (fd == -1)
    return -EROFS;
  if (length == 0)
    return 0;
  do
    r = ioctl (fd, req, range);
  while (r == -1 && errno == EINTR);
  if (r == 0)
    return 0;
  if (is_unsupported (errno)) {
    nbdkit_debug ("subpage: %s: %s not supported, not trying again", fb->path,
                  what);
    atomic_store (can, false);
    return 1;
  }
  r = errno;
  nbdkit_error ("ioctl %s: %s: offset %" PRIu64 " count %" PRIu64 ": %s", what,
                fb->path, start, length, errstr (r));
  return -r;
}

static int
fb_trim (void *opaque, uint32_t count, uint64_t off, uint32_t flags)
{
  struct file_backend *fb = opaque;
  int r;

  if (!fb->is_block)
    r = fb_fallocate (fb, &fb->can_punch,
                      FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, "PUNCH_HOLE",
                      count, off);
  else {
    /* BLKDISCARD wants whole logical blocks: a range that is not made
     * of them is not trimmed at all (the cache keeps its data of the
     * whole range, so discarding only the blocks inside would leave
     * cached sectors that differ from the device).
     */
    if (!IS_ALIGNED (off, (uint64_t) fb->lbs) ||
        !IS_ALIGNED ((uint64_t) count, (uint64_t) fb->lbs))
      r = 1;
    else
      r = fb_range_ioctl (fb, &fb->can_discard, BLKDISCARD, "BLKDISCARD", off,
                          count);
  }
  /* 1: not done (trim is advisory); the cache keeps the range. */
  return r == 1 ? 1 : fb_fua (fb, flags, r);
}

static int
fb_zero_by_writing (struct file_backend *fb, uint32_t count, uint64_t off,
                    uint32_t flags)
{
  int fd = (flags & CACHE_FUA) ? atomic_load (&fb->sfd)
                               : atomic_load (&fb->wfd);

  while (count > 0) {
    uint32_t n = MIN (count, (uint32_t) BACKEND_ZEROES_SIZE);
    int r = fb_pwrite_fd (fb, fd, backend_zeroes, n, off);

    if (r < 0)
      return r;
    count -= n;
    off += n;
  }
  return 0;
}

/* The method chain of the design note on [off, off+count), which must
 * be whole logical blocks on a block device.
 */
static int
fb_zero_range (struct file_backend *fb, uint32_t count, uint64_t off,
               uint32_t flags)
{
  int r = 1;

  if (!fb->is_block)
    r = fb_fallocate (fb, &fb->can_zero_range,
                      FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, "ZERO_RANGE",
                      count, off);
  if (r == 1 && (flags & CACHE_MAY_TRIM))
    r = fb_fallocate (fb, &fb->can_punch,
                      FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, "PUNCH_HOLE",
                      count, off);
  if (r == 1 && (flags & CACHE_FAST_ZERO))
    return -ENOTSUP;
  if (r == 1 && fb->is_block)
    r = fb_range_ioctl (fb, &fb->can_zeroout, BLKZEROOUT, "BLKZEROOUT", off,
                        count);
  if (r == 1)
    return fb_zero_by_writing (fb, count, off, flags);
  return fb_fua (fb, flags, r);
}

static int
fb_zero (void *opaque, uint32_t count, uint64_t off, uint32_t flags)
{
  struct file_backend *fb = opaque;
  uint64_t start = off, end = off + count;
  int r = 0;

  /* A block device zeroes (and punches) whole logical blocks only:
   * the unaligned head and tail, at most a block each, are written.
   */
  if (fb->is_block) {
    start = ROUND_UP (off, (uint64_t) fb->lbs);
    end = ROUND_DOWN (off + count, (uint64_t) fb->lbs);
    if (start >= end)
      start = end = off + count; /* no whole block: write it all */
  }
  if (start < end)
    r = fb_zero_range (fb, end - start, start, flags);
  if (r == 0 && start > off)
    r = fb_zero_by_writing (fb, start - off, off, flags);
  if (r == 0 && end < off + count)
    r = fb_zero_by_writing (fb, off + count - end, end, flags);
  return r;
}

static int
fb_extents (void *handle, uint32_t count, uint64_t off,
            struct nbdkit_extents *ex)
{
  struct file_backend *fb = handle;
  uint64_t end = off + count;

  while (off < end) {
    off_t d, h;
    uint64_t next;

    d = lseek (fb->rfd, (off_t) off, SEEK_DATA);
    if (d == -1 && errno != ENXIO)
      goto err;
    if (d == -1 || (uint64_t) d > off) {
      /* A hole up to D, or up to the end of the file (ENXIO). */
      next = d == -1 || (uint64_t) d > end ? end : (uint64_t) d;
      if (nbdkit_add_extent (ex, off, next - off,
                             NBDKIT_EXTENT_HOLE | NBDKIT_EXTENT_ZERO) == -1)
        return -(errno ? errno : EIO);
      off = next;
      continue;
    }
    h = lseek (fb->rfd, (off_t) off, SEEK_HOLE);
    if (h == -1)
      goto err;
    next = (uint64_t) h > end || (uint64_t) h <= off ? end : (uint64_t) h;
    if (nbdkit_add_extent (ex, off, next - off, 0) == -1)
      return -(errno ? errno : EIO);
    off = next;
  }
  return 0;

err:;
  int err = errno;
  nbdkit_error ("subpage: file=%s: lseek: %s", fb->path, errstr (err));
  return -err;
}

/* The size now: fstat for a file, BLKGETSIZE64 for a block device. */
static int64_t
fb_get_size (void *opaque)
{
  struct file_backend *fb = opaque;
  struct stat st;
  uint64_t size;

  if (fb->is_block) {
    if (ioctl (fb->rfd, BLKGETSIZE64, &size) == -1)
      return -errno;
    return (int64_t) size;
  }
  if (fstat (fb->rfd, &st) == -1)
    return -errno;
  return st.st_size;
}

static const struct cache_backend_ops fb_ops = {
  .get_size = fb_get_size,
  .pread = fb_pread,
  .pwrite = fb_pwrite,
  .flush = fb_flush,
  .trim = fb_trim,
  .zero = fb_zero,
};

/* struct backend's open_write: reopens the image read-write (and a
 * second descriptor with O_DSYNC for FUA writes).  If the image cannot
 * be opened for writing (EACCES, EROFS, EPERM) it stays read-only,
 * which is logged as debug and is not an error.  Thread-safe and
 * idempotent.
 */
static int
fb_open_write (void *opaque)
{
  struct file_backend *fb = opaque;
  int wfd, sfd, err = 0;

  pthread_mutex_lock (&fb->lock);
  if (fb->write_tried)
    goto out_unlock;

  wfd = open (fb->path, O_RDWR | O_CLOEXEC);
  if (wfd == -1) {
    err = errno;
    goto out_failed;
  }
  sfd = open (fb->path, O_RDWR | O_DSYNC | O_CLOEXEC);
  if (sfd == -1) {
    err = errno;
    close (wfd);
    goto out_failed;
  }
  atomic_store (&fb->sfd, sfd);
  atomic_store (&fb->wfd, wfd);
  fb->write_tried = true;
  goto out_unlock;

out_failed:
  if (err == EACCES || err == EROFS || err == EPERM) {
    nbdkit_debug ("subpage: file=%s: cannot open for writing (%s): "
                  "serving read-only",
                  fb->path, errstr (err));
    fb->write_tried = true;
    err = 0;
  }
  else
    nbdkit_error ("subpage: file=%s: open for writing: %s", fb->path,
                  errstr (err));
out_unlock:
  pthread_mutex_unlock (&fb->lock);
  return -err;
}

static bool
fb_can_write (void *opaque)
{
  struct file_backend *fb = opaque;

  return atomic_load (&fb->wfd) != -1;
}

/* Closes the descriptors and frees FB. */
static void
fb_close (void *opaque)
{
  struct file_backend *fb = opaque;
  int fd;

  if ((fd = atomic_load (&fb->sfd)) != -1)
    close (fd);
  if ((fd = atomic_load (&fb->wfd)) != -1)
    close (fd);
  close (fb->rfd);
  pthread_mutex_destroy (&fb->lock);
  free (fb->path);
  free (fb);
}

/* Why the image cannot be opened for writing, without opening it for
 * writing (-r must never do that): the effective user's permission, a
 * read-only filesystem or an immutable file (faccessat AT_EACCESS:
 * EACCES, EROFS, EPERM), or a block device set read-only (BLKROGET).
 * NULL when it looks writable; fb_open_write has the last word.
 */
static const char *
fb_read_only_why (struct file_backend *fb)
{
  int ro = 0;

  if (faccessat (AT_FDCWD, fb->path, W_OK, AT_EACCESS) == -1)
    return errstr (errno);
  if (fb->is_block && ioctl (fb->rfd, BLKROGET, &ro) == 0 && ro != 0)
    return "the block device is read-only";
  return NULL;
}

int
file_backend_open (const char *path, struct backend *be)
{
  struct file_backend *fb;
  struct stat st;
  int err;

  fb = calloc (1, sizeof *fb);
  if (fb == NULL || (fb->path = strdup (path)) == NULL) {
    err = errno;
    nbdkit_error ("calloc: %s", errstr (err));
    goto err_free;
  }
  atomic_init (&fb->wfd, -1);
  atomic_init (&fb->sfd, -1);
  atomic_init (&fb->can_zero_range, true);
  atomic_init (&fb->can_punch, true);
  atomic_init (&fb->can_discard, true);
  atomic_init (&fb->can_zeroout, true);
  pthread_mutex_init (&fb->lock, NULL);

  fb->rfd = open (path, O_RDONLY | O_CLOEXEC);
  if (fb->rfd == -1) {
    err = errno;
    nbdkit_error ("subpage: file=%s: open: %s", path, errstr (err));
    goto err_lock;
  }
  if (fstat (fb->rfd, &st) == -1) {
    err = errno;
    nbdkit_error ("subpage: file=%s: fstat: %s", path, errstr (err));
    goto err_close;
  }
  if (S_ISREG (st.st_mode))
    fb->size = st.st_size;
  else if (S_ISBLK (st.st_mode)) {
    int lbs;

    fb->is_block = true;
    if (ioctl (fb->rfd, BLKGETSIZE64, &fb->size) == -1) {
      err = errno;
      nbdkit_error ("subpage: file=%s: ioctl BLKGETSIZE64: %s", path,
                    errstr (err));
      goto err_close;
    }
    if (ioctl (fb->rfd, BLKSSZGET, &lbs) == -1 || lbs <= 0 ||
        !is_power_of_2 (lbs))
      lbs = 4096; /* only used to align discards */
    fb->lbs = lbs;
  }
  else {
    err = EINVAL;
    nbdkit_error ("subpage: file=%s: not a regular file or block device", path);
    goto err_close;
  }

  nbdkit_debug ("subpage: file=%s: %s of %" PRIu64 " bytes", path,
                fb->is_block ? "block device" : "regular file", fb->size);
  *be = (struct backend){
    .read_only_why = fb_read_only_why (fb),
    .param = "file",
    .value = fb->path,
    .ops = &fb_ops,
    .handle = fb,
    .size = fb->size,
    .can_write = fb_can_write,
    .open_write = fb_open_write,
    .extents = fb->is_block ? NULL : fb_extents,
    .close = fb_close,
  };
  return 0;

err_close:
  close (fb->rfd);
err_lock:
  pthread_mutex_destroy (&fb->lock);
err_free:
  if (fb != NULL)
    free (fb->path);
  free (fb);
  return -err;
}
