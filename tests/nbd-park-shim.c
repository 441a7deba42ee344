/* tests/nbd-park-shim.c: a park point inside libnbd's nbd_aio_pread,
 * LD_PRELOADed into the subpage nbdkit of an e2e test (and only there).
 *
 * With SUBPAGE_PARK_DIR set, the first nbd_aio_pread called by a thread
 * other than a reader ("subpage-nbdrd") after the test created
 * $SUBPAGE_PARK_DIR/arm parks: it creates $SUBPAGE_PARK_DIR/parked,
 * waits until the test creates $SUBPAGE_PARK_DIR/go and the handle is
 * dead (the test killed the remote and the reader saw it), then calls
 * the real nbd_aio_pread.  Every wait is bounded (60 s).  This holds the
 * window of nb_issue between nb_track and the libnbd call open.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <libnbd.h>

static atomic_bool parked_once;

static bool
exists (const char *dir, const char *name)
{
  char path[4096];

  snprintf (path, sizeof path, "%s/%s", dir, name);
  return access (path, F_OK) == 0;
}

int64_t
nbd_aio_pread (struct nbd_handle *h, void *buf, size_t count,
               uint64_t offset, nbd_completion_callback completion_callback,
               uint32_t flags)
{
  static int64_t (*real) (struct nbd_handle *, void *, size_t, uint64_t,
                          nbd_completion_callback, uint32_t);
  const char *dir = getenv ("SUBPAGE_PARK_DIR");
  char name[32] = "";

  if (real == NULL)
    real = dlsym (RTLD_NEXT, "nbd_aio_pread");
  pthread_getname_np (pthread_self (), name, sizeof name);
  if (dir != NULL && strcmp (name, "subpage-nbdrd") != 0 &&
      exists (dir, "arm") && !atomic_exchange (&parked_once, true)) {
    char path[4096];
    struct timespec ts = { 0, 10 * 1000 * 1000 };

    snprintf (path, sizeof path, "%s/parked", dir);
    mkdir (path, 0700);
    for (int i = 0; i < 6000; i++) {
      if (exists (dir, "go") &&
          (nbd_aio_is_dead (h) == 1 || nbd_aio_is_closed (h) == 1))
        break;
      nanosleep (&ts, NULL);
    }
  }
  return real (h, buf, count, offset, completion_callback, flags);
}
