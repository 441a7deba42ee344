/* subpage: the Ceph RBD backend (plugin/rbd-backend.c).
 *
 * The struct backend (backend.h) of rbd=POOL/IMAGE: an RBD image
 * reached with librbd's C API, librbd's own cache off.  The image's
 * exclusive lock is taken at start and kept (fencing: a second
 * instance cannot start; an instance whose lock was broken writes
 * nothing more).  librados threads do not survive nbdkit's fork, so
 * rbd_backend_open only probes the image (connects, opens, checks,
 * takes and releases the lock, disconnects) and the backend's start
 * (.after_fork) connects for good.  With journal=, the image's metadata
 * (subpage.journal) names the journal that may hold its unwritten data
 * (the backend's claim and unclaim; rbd-backend.c, "Journal claim").
 * Built only when librbd and librados are found (meson option rbd).
 */
#ifndef SUBPAGE_RBD_BACKEND_H
#define SUBPAGE_RBD_BACKEND_H

#include <stdbool.h>

#include "backend.h"

struct rbd_backend_config {
  const char *spec;    /* POOL/IMAGE */
  const char *conf;    /* ceph.conf, absolute */
  const char *id;      /* client id, without "client." */
  const char *keyring; /* absolute; NULL: the one ceph.conf names */
  bool exclusive;      /* take and keep the exclusive lock */
  uint32_t timeout_ms; /* backend-timeout=: 0, none */
};

/* Probes the image of CFG and fills in *BE (value: CFG->spec).  Fails
 * (and logs, naming rbd=) when the cluster cannot be reached within
 * its bound, the pool or image does not exist, the image lacks the
 * exclusive-lock feature (with CFG->exclusive), or another live client
 * holds its lock.  Returns 0 or -errno.
 */
int rbd_backend_open (const struct rbd_backend_config *cfg, struct backend *be);

#endif /* SUBPAGE_RBD_BACKEND_H */
