/* subpage: the image's backend, whichever it is (plugin/backend.c).
 *
 * The plugin serves the image through one struct backend, which the
 * backend's open function fills in: file_backend_open for file=
 * (file-backend.h), nbd_backend_open for uri= (nbd-backend.h).  The
 * plugin chooses the open function from its parameters once, in
 * .get_ready; from then on it never asks which backend it has.  A new
 * backend is one more open function that fills in these fields.
 *
 * The cache reaches the image through OPS with HANDLE as their opaque
 * argument (cache.h, struct cache_backend_ops); the plugin uses the rest.
 */
#ifndef SUBPAGE_BACKEND_H
#define SUBPAGE_BACKEND_H

#include <stdbool.h>
#include <stdint.h>

#include "cache.h"

struct nbdkit_extents; /* nbdkit-plugin.h */

struct backend {
  /* The parameter that named the image and its value, as the user gave
   * them ("file" and the absolute path, "uri" and the URI), for
   * messages.  VALUE is owned by the backend.
   */
  const char *param;
  const char *value;

  const struct cache_backend_ops *ops;
  void *handle;

  uint64_t size; /* bytes, as found at open */

  /* Why the image cannot be written, as far as the open function can
   * tell (a static string, for a message), or NULL when it may be.
   * Known at .get_ready, before nbdkit forks, so the plugin can say so
   * where the user sees it (subpage.c, subpage_get_ready).
   */
  const char *read_only_why;

  /* Can the image be written now (.can_write)? */
  bool (*can_write) (void *handle);

  /* .open of a connection that may write: make the image writable if
   * it can be (not being able to is not an error: can_write says so).
   * Returns 0 or -errno (logged).  NULL: nothing to do.
   */
  int (*open_write) (void *handle);

  /* .after_fork, before the write-back server starts: start what
   * cannot survive nbdkit's fork (threads).  Returns 0 or -errno
   * (logged).  NULL: nothing to do.
   */
  int (*start) (void *handle);

  /* Which journal may hold unwritten data of the image (rbd=: the
   * image's metadata, rbd-backend.c "Journal claim").  JOURNAL_ID is
   * this instance's journal's id (jformat.h, struct jsb), NULL without
   * journal=.  Refuses, logging why (-errno), when another journal
   * claims the image.  CHECK: .get_ready, an early check against what
   * the backend's open found, nothing written; else .after_fork, after
   * start and before the journal's replay: checks again and, with a
   * journal, records the claim.  NULL: the backend keeps no claim.
   */
  int (*claim) (void *handle, const uint8_t *journal_id, bool check);

  /* .cleanup, after a final drain that succeeded (the image holds
   * everything, flushed): drops this instance's claim, so that another
   * may take the image.  Logs a failure.  NULL: nothing to do.
   */
  void (*unclaim) (void *handle);

  /* The write-back server's asynchronous write (wbserver.h, struct
   * wbs_config, aio_pwrite; its opaque argument is HANDLE).  NULL: the
   * backend is synchronous, and write-back workers call OPS->pwrite.
   */
  int (*aio_pwrite) (void *opaque, const void *buf, uint32_t count,
                     uint64_t off, uint32_t flags,
                     void (*done) (void *arg, int err), void *arg);

  /* Block status (.extents): adds, with nbdkit_add_extent, extents
   * that cover all of [OFF, OFF+COUNT) in order, holes and zeroes as
   * NBDKIT_EXTENT_HOLE|NBDKIT_EXTENT_ZERO, the rest as data.  Returns 0
   * or -errno (logged).  The plugin asks the cache before and reports
   * what the cache holds unwritten as data (subpage.c, subpage_extents).
   * NULL: the backend cannot tell, and the plugin offers no extents.
   */
  int (*extents) (void *handle, uint32_t count, uint64_t off,
                  struct nbdkit_extents *ex);

  /* Closes the image and frees HANDLE (and VALUE). */
  void (*close) (void *handle);
};

/* Closes BE if it is open (OPS set), and clears it. */
void backend_close (struct backend *be);

/* Zeroes for backends that write zeroes themselves, in .bss; never
 * written.
 */
#define BACKEND_ZEROES_SIZE (256 * 1024)
extern char backend_zeroes[BACKEND_ZEROES_SIZE];

#endif /* SUBPAGE_BACKEND_H */
