/* subpage: the nbdkit plugin (callbacks, parameters, wiring).
 *
 * Notes on the design.
 *
 * What it does: parses the parameters, opens the image through one
 * struct backend (backend.h): the file backend (file-backend.c, file=)
 * or the remote NBD backend (nbd-backend.c, uri=), chosen once in
 * .get_ready and not asked about again, creates one cache (cache/cache.h)
 * shared by every connection, starts the write-back server
 * (server/wbserver.h) after nbdkit forks, and maps each NBD request to
 * one cache_* call.  Flags map one to one: NBDKIT_FLAG_FUA ->
 * CACHE_FUA, NBDKIT_FLAG_MAY_TRIM -> CACHE_MAY_TRIM,
 * NBDKIT_FLAG_FAST_ZERO -> CACHE_FAST_ZERO.  The cache returns -errno,
 * which becomes nbdkit_set_error + nbdkit_error + -1 here.
 *
 * Lifecycle:
 *   .config, .config_complete  parameters (one strcmp chain; cross-checks
 *                              in config_complete).
 *   .get_ready                 opens the image read-only (uri=: connects
 *                              to the remote) and creates the cache
 *                              (errors here are seen by the user).
 *   .after_fork                applies io-flusher= and mlock= (see
 *                              subpage_same_host), then starts the
 *                              write-back server, the shutdown watcher
 *                              thread and, with metrics-socket=, the
 *                              metrics endpoint (server/metrics.h).
 *   .open                      a writable connection makes the backend
 *                              writable if it can be (file=: the first
 *                              one opens the image for writing, so -r
 *                              never does).
 *   .cleanup                   stops the metrics endpoint (removing its
 *                              socket), the watcher and the server,
 *                              drains the cache (cache_drain: writes
 *                              back everything and flushes the backend,
 *                              in every mode), frees everything.
 * nbdkit 1.32 does not call .close on SIGTERM, so nothing is done there.
 *
 * Shutdown watcher.  Dirty data must start draining as soon as nbdkit
 * begins to shut down, not at .cleanup: an idle connected client keeps
 * nbdkit 1.32 from reaching .cleanup until it disconnects.  nbdkit 1.32
 * gives plugins no shutdown callback, but nbdkit_nanosleep (server/
 * public.c) ppolls nbdkit's internal quit pipe as well as the sleep,
 * also from a thread nbdkit did not create (it then has no connection,
 * so only the quit pipe is watched).  Verified with nbdkit 1.32.5: a
 * thread looping on nbdkit_nanosleep (1, 0) gets -1 with errno
 * ESHUTDOWN within a millisecond of SIGTERM, while .cleanup ran only
 * when the idle client left.  The side effect is one
 * "nbdkit: error: aborting sleep because of server shut down" line,
 * printed by nbdkit itself.  The watcher then calls wbs_begin_drain and
 * exits.  .cleanup stops it with a flag (checked every second).
 *
 * What it does not do: extents, multiple exports.
 */

#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1               /* strerrordesc_np, pthread_setname_np */
#endif
#define NBDKIT_API_VERSION 2

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/mman.h>
#include <sys/prctl.h>

#include <nbdkit-plugin.h>

#include "backend.h"
#include "cache.h"
#include "errstr.h"
#include "file-backend.h"
#include "metrics.h"
#include "nbd-backend.h"
#include "thread.h"
#include "util.h"
#include "wbserver.h"

#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL

#ifndef SUBPAGE_VERSION
#define SUBPAGE_VERSION "unknown"
#endif

/* -D subpage.verbose=1: the cache logs its state decisions. */
NBDKIT_DLL_PUBLIC int subpage_debug_verbose = 0;
/* -D subpage.writeback=1: the write-back server logs its decisions. */
NBDKIT_DLL_PUBLIC int subpage_debug_writeback = 0;
/* -D subpage.metrics=1: the metrics endpoint logs each client. */
NBDKIT_DLL_PUBLIC int subpage_debug_metrics = 0;

#define KiB 1024ULL
#define MiB (1024ULL * 1024)

/* The largest request the plugin advertises (and the cache accepts). */
#define SUBPAGE_MAX_REQUEST (32 * MiB)

/* Parameters, with their defaults (mirrored in config_help and the man
 * page).
 */
static char *filename;
static char *uri;                   /* the NBD backend, instead of file= */
static unsigned connections = 4;    /* uri=: connections to the remote */
static uint64_t cache_size = 256 * MiB;
static uint32_t page_size = 64 * KiB;
static uint32_t sector_size = 512;
static enum cache_mode mode = CACHE_MODE_WRITEBACK;
static unsigned dirty_expire_ms = 5000;
static unsigned dirty_writeback_ms = 500;
static unsigned dirty_background_ratio = 10;
static unsigned dirty_ratio = 40;
static unsigned writeback_threads = 4;
static char *metrics_socket;        /* absolute; NULL: no metrics */
static bool io_flusher;             /* see SAME-HOST CLIENTS */
static bool mlock_memory;

/* Global state, set up once and shared by every connection. */
static struct backend backend;            /* file= or uri= */
static struct cache *cache;
static struct wbs *wbs;
static struct metrics *metrics;
static pthread_t watcher;
static bool watcher_started;
static atomic_bool watcher_stop;

static const char *
mode_name (enum cache_mode m)
{
  switch (m) {
  case CACHE_MODE_WRITEBACK: return "writeback";
  case CACHE_MODE_WRITETHROUGH: return "writethrough";
  case CACHE_MODE_UNSAFE: return "unsafe";
  default: abort ();
  }
}

/* Formats a size as nbdkit_parse_size would accept it (64K, 1M, 1000). */
static const char *
size_str (uint64_t v, char *buf, size_t n)
{
  static const char suffix[] = "KMGTPE";
  int i = -1;

  while (v != 0 && v % 1024 == 0 && i + 1 < (int) sizeof suffix - 1) {
    v /= 1024;
    i++;
  }
  if (i >= 0)
    snprintf (buf, n, "%" PRIu64 "%c", v, suffix[i]);
  else
    snprintf (buf, n, "%" PRIu64, v);
  return buf;
}

/* Parses a size parameter that must be a power of 2 in [min, max]. */
static int
parse_pow2_size (const char *key, const char *value,
                 uint64_t min, uint64_t max, const char *range,
                 uint32_t *out)
{
  int64_t r = nbdkit_parse_size (value);

  if (r == -1 || r < (int64_t) min || r > (int64_t) max ||
      !is_power_of_2 (r)) {
    nbdkit_error ("subpage: %s=%s: must be a power of 2 between %s",
                  key, value, range);
    return -1;
  }
  *out = r;
  return 0;
}

/* Parses an unsigned decimal parameter in [min, max]. */
static int
parse_uint (const char *key, const char *value,
            unsigned min, unsigned max, unsigned *out)
{
  unsigned u;

  if (nbdkit_parse_unsigned (key, value, &u) == -1 ||
      u < min || u > max) {
    nbdkit_error ("subpage: %s=%s: must be an integer between %u and %u",
                  key, value, min, max);
    return -1;
  }
  *out = u;
  return 0;
}

/* metrics-socket=PATH: made absolute (nbdkit changes directory before
 * .after_fork, where the socket is created), and checked now, so that a
 * bad path fails at startup, in the foreground.
 */
static int
set_metrics_socket (const char *value)
{
  const size_t max = sizeof ((struct sockaddr_un *) NULL)->sun_path - 1;
  struct stat sb;
  const char *dir;
  char *path, *slash;
  int e;

  if (value[0] == '\0') {
    nbdkit_error ("subpage: metrics-socket=: the path is empty");
    return -1;
  }
  path = nbdkit_absolute_path (value);
  if (path == NULL)
    return -1;
  if (strlen (path) > max) {
    nbdkit_error ("subpage: metrics-socket=%s: the path is too long "
                  "(%zu bytes once absolute, at most %zu)",
                  value, strlen (path), max);
    goto err;
  }
  if (lstat (path, &sb) == 0 && !S_ISSOCK (sb.st_mode)) {
    nbdkit_error ("subpage: metrics-socket=%s: exists and is not a socket",
                  value);
    goto err;
  }
  slash = strrchr (path, '/');
  *slash = '\0';
  dir = slash == path ? "/" : path;
  e = stat (dir, &sb) == -1 ? errno : S_ISDIR (sb.st_mode) ? 0 : ENOTDIR;
  if (e != 0) {
    nbdkit_error ("subpage: metrics-socket=%s: directory %s: %s", value,
                  dir, errstr (e));
    goto err;
  }
  *slash = '/';
  free (metrics_socket);
  metrics_socket = path;
  return 0;

 err:
  free (path);
  return -1;
}

static int
subpage_config (const char *key, const char *value)
{
  if (strcmp (key, "file") == 0) {
    free (filename);
    /* Absolute: nbdkit changes directory before .after_fork/.open. */
    filename = nbdkit_absolute_path (value);
    if (filename == NULL)
      return -1;
  }
  else if (strcmp (key, "uri") == 0) {
    free (uri);
    uri = strdup (value);
    if (uri == NULL) {
      nbdkit_error ("strdup: %s", errstr (errno));
      return -1;
    }
  }
  else if (strcmp (key, "connections") == 0) {
    if (parse_uint (key, value, 1, 64, &connections) == -1)
      return -1;
  }
  else if (strcmp (key, "cache-size") == 0) {
    int64_t r = nbdkit_parse_size (value);

    if (r <= 0) {
      nbdkit_error ("subpage: cache-size=%s: must be a size such as 256M "
                    "(at least %d x page-size)", value, CACHE_MIN_PAGES);
      return -1;
    }
    cache_size = r;
  }
  else if (strcmp (key, "page-size") == 0) {
    if (parse_pow2_size (key, value, 4 * KiB, 2 * MiB, "4K and 2M",
                         &page_size) == -1)
      return -1;
  }
  else if (strcmp (key, "sector-size") == 0) {
    /* The upper bound, page-size, is checked in config_complete. */
    if (parse_pow2_size (key, value, 512, 2 * MiB,
                         "512 and page-size (at most 2M)",
                         &sector_size) == -1)
      return -1;
  }
  else if (strcmp (key, "mode") == 0) {
    if (strcmp (value, "writeback") == 0)
      mode = CACHE_MODE_WRITEBACK;
    else if (strcmp (value, "writethrough") == 0)
      mode = CACHE_MODE_WRITETHROUGH;
    else if (strcmp (value, "unsafe") == 0)
      mode = CACHE_MODE_UNSAFE;
    else {
      nbdkit_error ("subpage: mode=%s: must be writeback, writethrough "
                    "or unsafe", value);
      return -1;
    }
  }
  else if (strcmp (key, "dirty-expire-ms") == 0) {
    if (parse_uint (key, value, 0, 3600000, &dirty_expire_ms) == -1)
      return -1;
  }
  else if (strcmp (key, "dirty-writeback-ms") == 0) {
    if (parse_uint (key, value, 10, 60000, &dirty_writeback_ms) == -1)
      return -1;
  }
  else if (strcmp (key, "dirty-background-ratio") == 0) {
    if (parse_uint (key, value, 1, 100, &dirty_background_ratio) == -1)
      return -1;
  }
  else if (strcmp (key, "dirty-ratio") == 0) {
    if (parse_uint (key, value, 1, 100, &dirty_ratio) == -1)
      return -1;
  }
  else if (strcmp (key, "writeback-threads") == 0) {
    if (parse_uint (key, value, 1, 64, &writeback_threads) == -1)
      return -1;
  }
  else if (strcmp (key, "io-flusher") == 0 || strcmp (key, "mlock") == 0) {
    int r = nbdkit_parse_bool (value);

    if (r == -1) {
      nbdkit_error ("subpage: %s=%s: must be true or false", key, value);
      return -1;
    }
    if (strcmp (key, "io-flusher") == 0)
      io_flusher = r;
    else
      mlock_memory = r;
  }
  else if (strcmp (key, "metrics-socket") == 0) {
    if (set_metrics_socket (value) == -1)
      return -1;
  }
  else {
    nbdkit_error ("subpage: unknown parameter '%s'", key);
    return -1;
  }
  return 0;
}

static int
subpage_config_complete (void)
{
  char b1[32], b2[32], b3[32];
  uint64_t phys;

  if (filename == NULL && uri == NULL) {
    nbdkit_error ("subpage: the file= parameter is required "
                  "(a regular file or block device), or uri= "
                  "(a remote NBD export)");
    return -1;
  }
  if (filename != NULL && uri != NULL) {
    nbdkit_error ("subpage: file=%s and uri=%s: give exactly one of "
                  "file= and uri=", filename, uri);
    return -1;
  }
  if (sector_size > page_size) {
    nbdkit_error ("subpage: sector-size=%s: must be a power of 2 "
                  "between 512 and page-size (%s)",
                  size_str (sector_size, b1, sizeof b1),
                  size_str (page_size, b2, sizeof b2));
    return -1;
  }
  if (cache_size < (uint64_t) CACHE_MIN_PAGES * page_size) {
    nbdkit_error ("subpage: cache-size=%s: must be at least %d x "
                  "page-size (%s), that is %s",
                  size_str (cache_size, b1, sizeof b1), CACHE_MIN_PAGES,
                  size_str (page_size, b2, sizeof b2),
                  size_str ((uint64_t) CACHE_MIN_PAGES * page_size,
                            b3, sizeof b3));
    return -1;
  }
  /* A cache larger than RAM is a typo (and would overflow the core's
   * frame count long before it is useful).
   */
  phys = (uint64_t) sysconf (_SC_PHYS_PAGES) * sysconf (_SC_PAGESIZE);
  if (phys > 0 && cache_size > phys) {
    nbdkit_error ("subpage: cache-size=%s: must be at most the physical "
                  "memory (%s)", size_str (cache_size, b1, sizeof b1),
                  size_str (phys, b2, sizeof b2));
    return -1;
  }
  if (dirty_ratio < dirty_background_ratio) {
    nbdkit_error ("subpage: dirty-ratio=%u: must be between "
                  "dirty-background-ratio (%u) and 100",
                  dirty_ratio, dirty_background_ratio);
    return -1;
  }
  return 0;
}

#define subpage_config_help \
  "file=<FILENAME>     (required, or uri=) Disk image: regular file or\n" \
  "                    block device.\n" \
  "uri=<URI>           Remote NBD export instead of file=, for example\n" \
  "                    nbd+unix:///?socket=/run/remote.sock.\n" \
  "connections=<N>     uri=: connections to the remote, 1..64 (default 4;\n" \
  "                    1 if it does not advertise multi-conn).\n" \
  "cache-size=<SIZE>   Memory for cached pages (default 256M).\n" \
  "page-size=<SIZE>    Cache page size, power of 2, 4K..2M (default 64K).\n" \
  "sector-size=<SIZE>  Tracking granularity, power of 2, 512..page-size\n" \
  "                    (default 512).\n" \
  "mode=writeback|writethrough|unsafe  (default writeback).\n" \
  "dirty-expire-ms=<MS>         Write back data dirty this long,\n" \
  "                             0..3600000 (default 5000).\n" \
  "dirty-writeback-ms=<MS>      Write-back timer period, 10..60000\n" \
  "                             (default 500).\n" \
  "dirty-background-ratio=<PCT> Start background write-back when dirty\n" \
  "                             data passes this % of cache-size,\n" \
  "                             1..100 (default 10).\n" \
  "dirty-ratio=<PCT>            Throttle writers when dirty data passes\n" \
  "                             this % of cache-size,\n" \
  "                             dirty-background-ratio..100 (default 40).\n" \
  "writeback-threads=<N>        Write-back worker threads, 1..64\n" \
  "                             (default 4).\n" \
  "io-flusher=true|false        Same-host clients: mark nbdkit as an I/O\n" \
  "                             flusher (needs CAP_SYS_RESOURCE; default\n" \
  "                             false).\n" \
  "mlock=true|false             Same-host clients: lock nbdkit's memory\n" \
  "                             (needs CAP_IPC_LOCK or RLIMIT_MEMLOCK;\n" \
  "                             default false).\n" \
  "metrics-socket=<PATH>        Serve statistics (Prometheus text format)\n" \
  "                             on this unix socket (default: none)."

/* The cache core's log callback. */
static void
subpage_log (void *opaque, enum cache_log_level level,
             const char *fmt, va_list ap)
{
  (void) opaque;
  switch (level) {
  case CACHE_LOG_DEBUG: nbdkit_vdebug (fmt, ap); break;
  case CACHE_LOG_ERROR: nbdkit_verror (fmt, ap); break;
  default: abort ();
  }
}

static int
subpage_get_ready (void)
{
  struct cache_config cfg;
  char b1[32], b2[32], b3[32];
  int err;

  /* The one place that knows which backend there is. */
  if (uri != NULL)
    err = nbd_backend_open (uri, connections, sector_size, &backend);
  else
    err = file_backend_open (filename, &backend);
  if (err < 0)
    return -1;

  if (backend.size == 0) {
    nbdkit_error ("subpage: %s=%s: the image is empty (size 0)",
                  backend.param, backend.value);
    return -1;
  }

  memset (&cfg, 0, sizeof cfg);
  cfg.size = backend.size;
  cfg.cache_size = cache_size;
  cfg.page_size = page_size;
  cfg.sector_size = sector_size;
  cfg.mode = mode;
  cfg.dirty_background_ratio = dirty_background_ratio;
  cfg.dirty_ratio = dirty_ratio;
  cfg.batch_bytes = 0;          /* the core's default */

  cache = cache_create (&cfg, backend.ops, backend.handle,
                        subpage_log, NULL, &err);
  if (cache == NULL) {
    nbdkit_error ("subpage: cannot create the cache (cache-size=%s "
                  "page-size=%s sector-size=%s): %s",
                  size_str (cache_size, b1, sizeof b1),
                  size_str (page_size, b2, sizeof b2),
                  size_str (sector_size, b3, sizeof b3), errstr (-err));
    return -1;
  }
  cache_set_debug (cache, subpage_debug_verbose != 0);

  nbdkit_debug ("subpage: %s=%s size=%" PRIu64 " cache-size=%s "
                "page-size=%s sector-size=%s mode=%s "
                "dirty-expire-ms=%u dirty-writeback-ms=%u "
                "dirty-background-ratio=%u dirty-ratio=%u "
                "writeback-threads=%u",
                backend.param, backend.value, cfg.size,
                size_str (cache_size, b1, sizeof b1),
                size_str (page_size, b2, sizeof b2),
                size_str (sector_size, b3, sizeof b3),
                mode_name (mode), dirty_expire_ms, dirty_writeback_ms,
                dirty_background_ratio, dirty_ratio, writeback_threads);
  return 0;
}

/* The shutdown watcher (see the design note above). */
static void *
subpage_watcher (void *arg)
{
  (void) arg;
  pthread_setname_np (pthread_self (), "subpage-watch");
  while (!atomic_load (&watcher_stop)) {
    if (nbdkit_nanosleep (1, 0) == -1) {
      nbdkit_debug ("subpage: server is shutting down: "
                    "draining dirty data");
      wbs_begin_drain (wbs);
      break;
    }
  }
  return NULL;
}

/* Same-host safety (man page, SAME-HOST CLIENTS).  Called in
 * .after_fork on nbdkit's main thread, before any thread that serves
 * requests or writes back is created: the PF_MEMALLOC_NOIO flag that
 * PR_SET_IO_FLUSHER sets is per thread and inherited by new threads,
 * and mlockall's locks are not inherited across nbdkit's fork.
 */
static int
subpage_same_host (void)
{
  if (io_flusher) {
    if (prctl (PR_SET_IO_FLUSHER, 1, 0, 0, 0) == -1) {
      int e = errno;

      nbdkit_error ("subpage: io-flusher=true: prctl PR_SET_IO_FLUSHER: "
                    "%s%s", errstr (e),
                    e == EPERM ? " (needs CAP_SYS_RESOURCE)" :
                    e == EINVAL ? " (needs Linux >= 5.6)" : "");
      return -1;
    }
    nbdkit_debug ("subpage: io-flusher: PR_SET_IO_FLUSHER set");
  }
  if (mlock_memory) {
    /* Lock what is mapped now (the cache's pages, which this faults
     * in), then lock later mappings (thread stacks, buffers) only as
     * they are touched, so unused stack is not pinned.
     */
    if (mlockall (MCL_CURRENT) == -1 ||
        mlockall (MCL_FUTURE | MCL_ONFAULT) == -1) {
      int e = errno;

      nbdkit_error ("subpage: mlock=true: mlockall: %s (needs "
                    "CAP_IPC_LOCK, or RLIMIT_MEMLOCK (ulimit -l) larger "
                    "than cache-size plus nbdkit's own memory)",
                    errstr (e));
      return -1;
    }
    nbdkit_debug ("subpage: mlock: memory locked");
  }
  return 0;
}

static int
subpage_after_fork (void)
{
  struct wbs_config wcfg = {
    .threads = writeback_threads,
    .interval_ms = dirty_writeback_ms,
    .expire_ms = dirty_expire_ms,
    .log = subpage_log,
    .debug = subpage_debug_writeback != 0,
  };
  int err;

  if (subpage_same_host () == -1)
    return -1;

  if (backend.start != NULL && backend.start (backend.handle) < 0)
    return -1;
  /* An asynchronous backend (uri=) takes write-back runs itself: many
   * in flight per connection, not one per worker.
   */
  wcfg.aio_pwrite = backend.aio_pwrite;
  wcfg.aio_opaque = backend.handle;

  wbs = wbs_start (cache, &wcfg, &err);
  if (wbs == NULL) {
    nbdkit_error ("subpage: cannot start write-back threads: %s",
                  errstr (-err));
    return -1;
  }

  err = thread_start_nosignals (&watcher, subpage_watcher, NULL);
  if (err != 0) {
    nbdkit_error ("subpage: cannot start the shutdown watcher: %s",
                  errstr (err));
    return -1;                  /* .cleanup stops wbs */
  }
  watcher_started = true;

  if (metrics_socket != NULL) {
    struct metrics_config mcfg = {
      .path = metrics_socket,
      .mode = 0660,
      .log = subpage_log,
      .debug = subpage_debug_metrics != 0,
    };
    const char *what = "";

    metrics = metrics_start (cache, &mcfg, &err, &what);
    if (metrics == NULL) {
      nbdkit_error ("subpage: metrics-socket=%s: %s: %s", metrics_socket,
                    what, errstr (-err));
      return -1;                /* .cleanup stops the rest */
    }
  }
  return 0;
}

static void
subpage_cleanup (void)
{
  metrics_stop (metrics);
  metrics = NULL;
  free (metrics_socket);
  metrics_socket = NULL;
  if (watcher_started) {
    atomic_store (&watcher_stop, true);
    pthread_join (watcher, NULL);
    watcher_started = false;
  }
  wbs_stop (wbs);
  wbs = NULL;

  if (cache != NULL) {
    struct cache_stats st;
    /* cache_drain, not cache_flush: mode=unsafe ignores the client's
     * flushes, but shutdown drains in every mode.
     */
    int r = cache_drain (cache);

    if (r < 0)
      nbdkit_error ("subpage: final flush failed, unwritten data is "
                    "lost: %s", errstr (-r));
    cache_get_stats (cache, &st);
    nbdkit_debug ("subpage: exit: backend reads %" PRIu64 " (%" PRIu64
                  " bytes), writes %" PRIu64 " (%" PRIu64 " bytes), "
                  "flushes %" PRIu64 ", write-back errors %" PRIu64,
                  st.backend_reads, st.backend_read_bytes,
                  st.backend_writes, st.backend_write_bytes,
                  st.backend_flushes, st.wb_errors);
    cache_destroy (cache);
    cache = NULL;
  }
  backend_close (&backend);
  free (filename);
  filename = NULL;
  free (uri);
  uri = NULL;
}

static void *
subpage_open (int readonly)
{
  if (!readonly && backend.open_write != NULL &&
      backend.open_write (backend.handle) < 0)
    return NULL;
  return NBDKIT_HANDLE_NOT_NEEDED;
}

static int64_t
subpage_get_size (void *handle)
{
  (void) handle;
  return backend.size;
}

static int
subpage_block_size (void *handle, uint32_t *minimum, uint32_t *preferred,
                    uint32_t *maximum)
{
  (void) handle;
  *minimum = 1;
  *preferred = sector_size;
  *maximum = SUBPAGE_MAX_REQUEST;
  return 0;
}

static int
subpage_can_write (void *handle)
{
  (void) handle;
  return backend.can_write (backend.handle);
}

static int
subpage_can_flush (void *handle)
{
  (void) handle;
  return 1;                     /* .flush; 1.32 has no NBDKIT_FLUSH_NATIVE */
}

static int
subpage_can_fua (void *handle)
{
  (void) handle;
  return NBDKIT_FUA_NATIVE;
}

static int
subpage_can_multi_conn (void *handle)
{
  (void) handle;
  return 1;                     /* one cache; a flush covers all of it */
}

static int
subpage_can_trim (void *handle)
{
  (void) handle;
  return 1;
}

static int
subpage_can_zero (void *handle)
{
  (void) handle;
  return 1;                     /* native: .zero is always called */
}

static int
subpage_can_fast_zero (void *handle)
{
  (void) handle;
  return 1;                     /* zero fails with ENOTSUP when slow */
}

static int
subpage_can_cache (void *handle)
{
  (void) handle;
  return NBDKIT_CACHE_NATIVE;
}

/* Turns the cache's -errno into nbdkit's error convention. */
static int
subpage_fail (const char *what, int r)
{
  nbdkit_set_error (-r);
  nbdkit_error ("%s: %s", what, errstr (-r));
  return -1;
}

static uint32_t
subpage_flags (uint32_t flags)
{
  uint32_t f = 0;

  if (flags & NBDKIT_FLAG_FUA)
    f |= CACHE_FUA;
  if (flags & NBDKIT_FLAG_MAY_TRIM)
    f |= CACHE_MAY_TRIM;
  if (flags & NBDKIT_FLAG_FAST_ZERO)
    f |= CACHE_FAST_ZERO;
  return f;
}

static int
subpage_pread (void *handle, void *buf, uint32_t count, uint64_t offset,
               uint32_t flags)
{
  int r;

  (void) handle;
  (void) flags;
  r = cache_read (cache, buf, count, offset);
  return r < 0 ? subpage_fail ("pread", r) : 0;
}

static int
subpage_pwrite (void *handle, const void *buf, uint32_t count,
                uint64_t offset, uint32_t flags)
{
  int r;

  (void) handle;
  r = cache_write (cache, buf, count, offset, subpage_flags (flags));
  return r < 0 ? subpage_fail ("pwrite", r) : 0;
}

static int
subpage_flush (void *handle, uint32_t flags)
{
  int r;

  (void) handle;
  (void) flags;
  r = cache_flush (cache);
  return r < 0 ? subpage_fail ("flush", r) : 0;
}

static int
subpage_trim (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  int r;

  (void) handle;
  r = cache_trim (cache, count, offset, subpage_flags (flags));
  return r < 0 ? subpage_fail ("trim", r) : 0;
}

static int
subpage_zero (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  int r;

  (void) handle;
  r = cache_zero (cache, count, offset, subpage_flags (flags));
  if (r == -ENOTSUP && (flags & NBDKIT_FLAG_FAST_ZERO)) {
    /* Expected: the client asked only for a fast zero. */
    nbdkit_debug ("zero: fast zero not possible here");
    nbdkit_set_error (ENOTSUP);
    return -1;
  }
  return r < 0 ? subpage_fail ("zero", r) : 0;
}

static int
subpage_cache (void *handle, uint32_t count, uint64_t offset,
               uint32_t flags)
{
  int r;

  (void) handle;
  (void) flags;
  r = cache_prefetch (cache, count, offset);
  return r < 0 ? subpage_fail ("cache", r) : 0;
}

static struct nbdkit_plugin plugin = {
  .name              = "subpage",
  .longname          = "nbdkit sub-page write-back cache plugin",
  .version           = SUBPAGE_VERSION,
  .magic_config_key  = "file",
  .config            = subpage_config,
  .config_complete   = subpage_config_complete,
  .config_help       = subpage_config_help,
  .get_ready         = subpage_get_ready,
  .after_fork        = subpage_after_fork,
  .cleanup           = subpage_cleanup,
  .open              = subpage_open,
  .get_size          = subpage_get_size,
  .block_size        = subpage_block_size,
  .can_write         = subpage_can_write,
  .can_flush         = subpage_can_flush,
  .can_fua           = subpage_can_fua,
  .can_multi_conn    = subpage_can_multi_conn,
  .can_trim          = subpage_can_trim,
  .can_zero          = subpage_can_zero,
  .can_fast_zero     = subpage_can_fast_zero,
  .can_cache         = subpage_can_cache,
  .pread             = subpage_pread,
  .pwrite            = subpage_pwrite,
  .flush             = subpage_flush,
  .trim              = subpage_trim,
  .zero              = subpage_zero,
  .cache             = subpage_cache,
  .errno_is_preserved = 0,
};

NBDKIT_REGISTER_PLUGIN (plugin)
