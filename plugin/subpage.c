/* subpage: the nbdkit plugin (callbacks and wiring).
 *
 * Notes on the design.
 *
 * What it does: takes the parameters (params.c), opens the image through one
 * struct backend (backend.h): the file backend (file-backend.c, file=),
 * the remote NBD backend (nbd-backend.c, uri=) or the Ceph RBD backend
 * (rbd-backend.c, rbd=, when built with librbd), chosen once in
 * .get_ready and not asked about again, creates one cache (cache/cache.h)
 * shared by every connection, starts the write-back server
 * (server/wbserver.h) after nbdkit forks, and maps each NBD request to
 * one cache_* call.  Flags map one to one: NBDKIT_FLAG_FUA ->
 * CACHE_FUA, NBDKIT_FLAG_MAY_TRIM -> CACHE_MAY_TRIM,
 * NBDKIT_FLAG_FAST_ZERO -> CACHE_FAST_ZERO.  The cache returns -errno,
 * which becomes nbdkit_set_error + nbdkit_error + -1 here.
 *
 * Lifecycle:
 *   .config, .config_complete  parameters (params.c).
 *   .get_ready                 opens the image read-only (uri=: connects
 *                              to the remote; rbd=: probes the image and
 *                              its lock), creates the cache, sets
 *                              io-flusher= and checks mlock= (see
 *                              subpage_same_host_check), and says once
 *                              on stderr if the image cannot be written
 *                              (errors here are seen by the user: nbdkit
 *                              has not forked).  nbdkit 1.32 has no
 *                              info level (nbdkit_debug needs -v,
 *                              nbdkit_error is for errors), hence stderr.
 *   .after_fork                applies mlock= (see subpage_same_host),
 *                              then starts the
 *                              write-back server, the shutdown watcher
 *                              thread and, with metrics-socket=, the
 *                              metrics endpoint (server/metrics.h).
 *   .open                      a writable connection makes the backend
 *                              writable if it can be (file=: the first
 *                              one opens the image for writing, so -r
 *                              never does); with journal= and
 *                              sequential-cutoff=, its handle is its
 *                              stream of writes (cache_write_stream).
 *   .close                     frees that stream.
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
 * gives plugins no shutdown callback and no way to ask whether it is
 * shutting down: its flag (quit) and pipe-to-self (quit_fd, server/
 * quit.c) are internal, and server/nbdkit.syms exports neither.  The
 * one public function that sees them, nbdkit_nanosleep (server/
 * public.c), logs "aborting sleep because of server shut down" with
 * nbdkit_error when it does, so every stop would log an error.
 * Instead the plugin chains nbdkit's own handlers: nbdkit installs them
 * for SIGINT, SIGQUIT, SIGTERM and SIGHUP in start_serving (set_up_
 * signals, server/signals.c) before it calls .after_fork, and these
 * signals are how a stop reaches it (systemctl stop, kill, Ctrl-C, and
 * --run, whose parent sends SIGTERM when the command exits: server/
 * captive.c).  In .after_fork the plugin replaces each handler with
 * one that calls nbdkit's handler first, unchanged, then writes a
 * byte to a pipe; the watcher thread (all signals blocked) reads it
 * and calls wbs_begin_drain.  A shutdown that nbdkit starts without a
 * signal (nbdkit_shutdown from a filter such as exitlast or exitwhen)
 * is not seen early; those filters shut down only once no client is
 * connected, so .cleanup follows at once and drains.  .cleanup puts
 * nbdkit's handlers back before anything else (the plugin is unloaded
 * after it), then wakes the watcher with another byte and joins it.
 *
 * Extents (.extents, when the backend has an extents operation): the
 * cache is asked first for the runs it holds newer than the backend
 * (cache_next_unflushed), the backend for what lies between; those
 * runs are data whatever the backend says.  In that order a run written
 * back meanwhile is already on the backend when the backend is asked.
 * At most SUBPAGE_EXTENT_RUNS runs per request (each cache query may
 * look at every frame); the client asks again for the rest.
 *
 * What it does not do: multiple exports.
 */

#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1 /* strerrordesc_np, pthread_setname_np */
#endif
#define NBDKIT_API_VERSION 2

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>

#include <nbdkit-plugin.h>

#include "backend.h"
#include "cache.h"
#include "errstr.h"
#include "file-backend.h"
#include "jdrain.h"
#include "jformat.h"
#include "metrics.h"
#include "nbd-backend.h"
#include "params.h"
#ifdef SUBPAGE_HAVE_RBD
#include "rbd-backend.h"
#endif
#include "thread.h"
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

/* The largest request the plugin advertises (and the cache accepts). */
#define SUBPAGE_MAX_REQUEST (32 * 1024 * 1024)

/* Global state, set up once and shared by every connection. */
static struct backend backend; /* file= or uri= */
static struct cache *cache;
static struct wbs *wbs;
static struct metrics *metrics;
/* journal=: its device and drainer (instead of wbs). */
static struct jdev journal_dev;
static bool journal_open;
/* journal=: its id (superblock), and whether the file was created by
 * this start.
 */
static uint8_t journal_id[16];
static bool journal_created;
/* The backend's claim (backend.h) is taken and, with a journal, the
 * journal replayed: a clean stop may drop it.
 */
static bool backend_claimed;
static struct jdrain *jdrain;

/* A new journal file's size when journal-size= is not given. */
#define SUBPAGE_JOURNAL_DEFAULT_SIZE (UINT64_C (1) << 30)
static pthread_t watcher;
static bool watcher_started;

/* The cache core's log callback. */
static void
subpage_log (void *opaque, enum cache_log_level level, const char *fmt,
             va_list ap)
{
  (void) opaque;
  switch (level) {
  case CACHE_LOG_DEBUG: nbdkit_vdebug (fmt, ap); break;
  case CACHE_LOG_INFO: /* no info level in nbdkit 1.32: see get_ready */
    fputs ("nbdkit: subpage: ", stderr);
    vfprintf (stderr, fmt, ap);
    fputc ('\n', stderr);
    break;
  case CACHE_LOG_ERROR: nbdkit_verror (fmt, ap); break;
  default: abort ();
  }
}

/* Same-host safety, the part that can fail, done in .get_ready: nbdkit
 * 1.32 calls it before it opens its sockets, writes the pidfile,
 * changes user (-u) and forks (server/main.c: "This must be called
 * before we change user, fork, or open any sockets"), so a failure
 * here makes nbdkit exit non-zero with the message on the terminal,
 * in daemon mode too; a failure in .after_fork would leave the parent
 * exiting 0 with a pidfile and a socket and no server.
 *
 * io-flusher=true: PR_SET_IO_FLUSHER is set here, on nbdkit's main
 * thread, the one that then forks and calls .after_fork: the flags it
 * sets (PF_MEMALLOC_NOIO, PF_LOCAL_THROTTLE) are kept across fork and
 * inherited by every thread created later, so .after_fork only checks
 * them (PR_GET_IO_FLUSHER), even after -u dropped the capability.
 *
 * mlock=true: the locks of mlockall are not kept across fork, so the
 * real call stays in .after_fork.  Here mlockall (MCL_CURRENT |
 * MCL_ONFAULT) makes the kernel's own permission check (CAP_IPC_LOCK,
 * or everything mapped now within RLIMIT_MEMLOCK) without faulting
 * anything in, and munlockall undoes it.  It is made with syscall(2):
 * AddressSanitizer's mlockall and munlockall do nothing, and the check
 * must also run in the sanitizer builds the tests use.  Not covered:
 * nbdkit -u to a user that lacks the privilege (the check runs before
 * the change of user), which still fails only in .after_fork.
 */
static int
subpage_same_host_check (void)
{
  if (params.io_flusher && prctl (PR_SET_IO_FLUSHER, 1, 0, 0, 0) == -1) {
    int e = errno;

    nbdkit_error ("subpage: io-flusher=true: prctl PR_SET_IO_FLUSHER: %s%s",
                  errstr (e),
                  e == EPERM    ? " (needs CAP_SYS_RESOURCE)"
                  : e == EINVAL ? " (needs Linux >= 5.6)"
                                : "");
    return -1;
  }
  if (params.mlock_memory) {
    if (syscall (SYS_mlockall, MCL_CURRENT | MCL_ONFAULT) == -1) {
      int e = errno;

      nbdkit_error ("subpage: mlock=true: mlockall: %s (needs "
                    "CAP_IPC_LOCK, or RLIMIT_MEMLOCK (ulimit -l) larger "
                    "than cache-size plus nbdkit's own memory)",
                    errstr (e));
      return -1;
    }
    syscall (SYS_munlockall);
  }
  return 0;
}

/* A journal file created for a start that is refused: ours, just made,
 * so it is not left behind for the next start.
 */
static void
subpage_journal_remove (void)
{
  jdev_file_close (&journal_dev);
  journal_open = false;
  unlink (params.journal);
  nbdkit_error ("subpage: journal=%s: not used (the line above says why); "
                "the file created for it was removed",
                params.journal);
}

/* journal=: opens the device (creating a file of journal-size=, or 1G,
 * if there is none) and checks its superblock against the image, before
 * nbdkit forks, so a wrong journal is refused where the user sees it.
 * Replay needs the backend writable and waits for .after_fork.
 */
static int
subpage_journal_open (void)
{
  uint64_t size = params.journal_size;
  char ident[JNL_IDENT_MAX];
  struct stat st;
  bool created = false;
  int err;

  if (backend.read_only_why != NULL) {
    nbdkit_error ("subpage: journal=%s: the image cannot be written (%s), "
                  "and a journal needs to write it",
                  params.journal, backend.read_only_why);
    return -1;
  }
  /* journal-size= sizes a new file only: an existing one (a journal,
   * or something refused below) is never changed here.
   */
  if (stat (params.journal, &st) == 0)
    size = 0;
  else if (errno == ENOENT && size == 0)
    size = SUBPAGE_JOURNAL_DEFAULT_SIZE;
  err = jdev_file_open (params.journal, size, &journal_dev, &created);
  if (err < 0) {
    nbdkit_error ("subpage: journal=%s: %s%s", params.journal, errstr (-err),
                  err == -EBUSY    ? " (another process uses this journal)"
                  : err == -ENOENT ? " (its directory does not exist)"
                                   : "");
    return -1;
  }
  journal_open = true;
  if ((size_t) snprintf (ident, sizeof ident, "%s:%s", backend.param,
                         backend.value) >= sizeof ident) {
    nbdkit_error ("subpage: journal=%s: the image's name is too long for a "
                  "journal (%zu bytes at most): %s=%s",
                  params.journal, sizeof ident - 1, backend.param,
                  backend.value);
    return -1;
  }
  err = cache_journal_open (cache, &journal_dev, ident, created);
  if (err == 0) {
    cache_journal_order_any (cache, params.journal_order_any);
    cache_journal_sequential_cutoff (cache, params.sequential_cutoff);
  }
  if (err < 0 && created) {
    subpage_journal_remove ();
    return -1;
  }
  if (err < 0) {
    nbdkit_error ("subpage: journal=%s: not used (the line above says why); "
                  "nothing was written to it",
                  params.journal);
    return -1;
  }
  /* The id, for the backend's claim (it never changes). */
  {
    struct jsb sb;

    err = jsb_read (&journal_dev, &sb);
    if (err < 0) {
      nbdkit_error ("subpage: journal=%s: cannot read its superblock back: "
                    "%s",
                    params.journal, errstr (-err));
      return -1;
    }
    memcpy (journal_id, sb.id, sizeof journal_id);
  }
  journal_created = created;
  return 0;
}

static int
subpage_get_ready (void)
{
  struct cache_config cfg;
  char b1[32], b2[32], b3[32];
  int err;

  /* The one place that knows which backend there is. */
  if (params.uri != NULL)
    err = nbd_backend_open (params.uri, params.connections, params.sector_size,
                            params.backend_timeout_ms,
                            params.backend_timeout_str, &backend);
  else if (params.rbd != NULL) {
#ifdef SUBPAGE_HAVE_RBD
    struct rbd_backend_config rcfg = {
      .spec = params.rbd,
      .conf = params.ceph_conf,
      .id = params.ceph_id,
      .keyring = params.ceph_keyring,
      .exclusive = params.rbd_exclusive,
      .timeout_ms = params.backend_timeout_ms,
    };

    err = rbd_backend_open (&rcfg, &backend);
#else
    nbdkit_error ("subpage: rbd=%s: this build of subpage has no RBD "
                  "backend (build it with librbd-dev and librados-dev "
                  "installed, meson option -Drbd=enabled)",
                  params.rbd);
    err = -ENOTSUP;
#endif
  }
  else
    err = file_backend_open (params.filename, &backend);
  if (err < 0)
    return -1;

  if (backend.size == 0) {
    nbdkit_error ("subpage: %s=%s: the image is empty (size 0)", backend.param,
                  backend.value);
    return -1;
  }

  memset (&cfg, 0, sizeof cfg);
  cfg.size = backend.size;
  cfg.cache_size = params.cache_size;
  cfg.page_size = params.page_size;
  cfg.sector_size = params.sector_size;
  cfg.mode = params.mode;
  cfg.dirty_background_ratio = params.dirty_background_ratio;
  cfg.dirty_ratio = params.dirty_ratio;
  cfg.batch_bytes = 0; /* the core's default */

  cache = cache_create (&cfg, backend.ops, backend.handle, subpage_log, NULL,
                        &err);
  if (cache == NULL) {
    nbdkit_error ("subpage: cannot create the cache (cache-size=%s "
                  "page-size=%s sector-size=%s): %s",
                  params_size_str (params.cache_size, b1, sizeof b1),
                  params_size_str (params.page_size, b2, sizeof b2),
                  params_size_str (params.sector_size, b3, sizeof b3),
                  errstr (-err));
    return -1;
  }
  cache_set_debug (cache, subpage_debug_verbose != 0);

  if (params.journal != NULL && subpage_journal_open () == -1)
    return -1;
  /* Another journal's claim on the image: refused here, where the user
   * sees it (the check that counts is in .after_fork).
   */
  if (backend.claim != NULL &&
      backend.claim (backend.handle, params.journal ? journal_id : NULL, true) <
        0) {
    if (journal_created)
      subpage_journal_remove ();
    return -1;
  }

  /* After cache_create: mlock=true's check counts the cache's memory. */
  if (subpage_same_host_check () == -1)
    return -1;

  /* Said once, at normal verbosity, on stderr (see the design note). */
  if (backend.read_only_why != NULL)
    fprintf (stderr,
             "nbdkit: subpage: %s=%s: the image cannot be written (%s): "
             "serving it read-only\n",
             backend.param, backend.value, backend.read_only_why);

  nbdkit_debug ("subpage: %s=%s size=%" PRIu64 " cache-size=%s "
                "page-size=%s sector-size=%s mode=%s "
                "dirty-expire-ms=%u dirty-writeback-ms=%u "
                "dirty-background-ratio=%u dirty-ratio=%u "
                "writeback-threads=%u",
                backend.param, backend.value, cfg.size,
                params_size_str (params.cache_size, b1, sizeof b1),
                params_size_str (params.page_size, b2, sizeof b2),
                params_size_str (params.sector_size, b3, sizeof b3),
                params_mode_name (params.mode), params.dirty_expire_ms,
                params.dirty_writeback_ms, params.dirty_background_ratio,
                params.dirty_ratio, params.writeback_threads);
  return 0;
}

/* The shutdown watcher (see the design note above).  Its pipe gets
 * 's' from the signal handler (nbdkit is shutting down) or 'q' from
 * .cleanup (stop watching).
 */
static int watcher_pipe[2] = { -1, -1 };
static const int watcher_signals[] = { SIGINT, SIGQUIT, SIGTERM, SIGHUP };
#define WATCHER_NSIGNALS (sizeof watcher_signals / sizeof watcher_signals[0])
static struct sigaction watcher_saved[WATCHER_NSIGNALS];
static bool watcher_hooked[WATCHER_NSIGNALS];

/* Runs in whichever nbdkit thread takes the signal: only
 * async-signal-safe calls.
 */
static void
subpage_watcher_signal (int sig, siginfo_t *info, void *ucontext)
{
  int saved_errno = errno;
  char c = 's';
  size_t i;

  for (i = 0; i < WATCHER_NSIGNALS; i++) {
    if (watcher_signals[i] == sig) {
      const struct sigaction *sa = &watcher_saved[i];

      if (sa->sa_flags & SA_SIGINFO)
        sa->sa_sigaction (sig, info, ucontext);
      else
        sa->sa_handler (sig);
      break;
    }
  }
  if (write (watcher_pipe[1], &c, 1) == -1) {
    /* Full (it cannot be: one byte per signal, read at once): nothing
     * to do in a signal handler.
     */
  }
  errno = saved_errno;
}

static void *
subpage_watcher (void *arg)
{
  char c = 'q';
  ssize_t r;

  (void) arg;
  pthread_setname_np (pthread_self (), "subpage-watch");
  do
    r = read (watcher_pipe[0], &c, 1);
  while (r == -1 && errno == EINTR);
  if (r == 1 && c == 's') {
    nbdkit_debug ("subpage: server is shutting down: draining dirty data");
    if (wbs != NULL)
      wbs_begin_drain (wbs);
    if (jdrain != NULL)
      jdrain_hurry (jdrain);
  }
  return NULL;
}

/* Puts nbdkit's signal handlers back (before the plugin is unloaded). */
static void
subpage_watcher_unhook (void)
{
  size_t i;

  for (i = 0; i < WATCHER_NSIGNALS; i++) {
    if (watcher_hooked[i]) {
      sigaction (watcher_signals[i], &watcher_saved[i], NULL);
      watcher_hooked[i] = false;
    }
  }
}

/* Called in .after_fork, after nbdkit installed its handlers. */
static int
subpage_watcher_start (void)
{
  size_t i, hooked = 0;
  int err;

  if (pipe2 (watcher_pipe, O_CLOEXEC) == -1 ||
      fcntl (watcher_pipe[1], F_SETFL, O_NONBLOCK) == -1)
    return errno;
  err = thread_start_nosignals (&watcher, subpage_watcher, NULL);
  if (err != 0)
    return err;
  watcher_started = true;

  for (i = 0; i < WATCHER_NSIGNALS; i++) {
    struct sigaction sa;

    if (sigaction (watcher_signals[i], NULL, &watcher_saved[i]) == -1)
      continue;
    /* Chain only a real handler: under SIG_DFL the signal ends the
     * process, under SIG_IGN it does not stop nbdkit.
     */
    if (!(watcher_saved[i].sa_flags & SA_SIGINFO) &&
        (watcher_saved[i].sa_handler == SIG_DFL ||
         watcher_saved[i].sa_handler == SIG_IGN))
      continue;
    memset (&sa, 0, sizeof sa);
    sa.sa_sigaction = subpage_watcher_signal;
    sa.sa_mask = watcher_saved[i].sa_mask;
    sa.sa_flags = (watcher_saved[i].sa_flags & SA_RESTART) | SA_SIGINFO;
    if (sigaction (watcher_signals[i], &sa, NULL) == 0) {
      watcher_hooked[i] = true;
      hooked++;
    }
  }
  nbdkit_debug ("subpage: shutdown watcher: %zu of %zu stop signals "
                "chained",
                hooked, WATCHER_NSIGNALS);
  return 0;
}

/* Called in .cleanup. */
static void
subpage_watcher_stop (void)
{
  char c = 'q';

  subpage_watcher_unhook ();
  if (watcher_started) {
    /* Fails only if the pipe is full, and then the watcher wakes
     * anyway (any byte ends it).
     */
    if (write (watcher_pipe[1], &c, 1) == -1)
      nbdkit_debug ("subpage: shutdown watcher: pipe full");
    pthread_join (watcher, NULL);
    watcher_started = false;
  }
  /* The pipe stays open: a handler that began before the unhook, on
   * another thread, may still write to it, and a closed descriptor
   * could by then be reused.  nbdkit exits after .cleanup.
   */
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
  if (params.io_flusher) {
    /* Set in .get_ready (subpage_same_host_check) and kept across the
     * fork: set again only if it is not (it always is on Linux).
     */
    if (prctl (PR_GET_IO_FLUSHER, 0, 0, 0, 0) != 1 &&
        prctl (PR_SET_IO_FLUSHER, 1, 0, 0, 0) == -1) {
      int e = errno;

      nbdkit_error ("subpage: io-flusher=true: prctl PR_SET_IO_FLUSHER: "
                    "%s%s",
                    errstr (e),
                    e == EPERM    ? " (needs CAP_SYS_RESOURCE)"
                    : e == EINVAL ? " (needs Linux >= 5.6)"
                                  : "");
      return -1;
    }
    nbdkit_debug ("subpage: io-flusher: PR_SET_IO_FLUSHER set");
  }
  if (params.mlock_memory) {
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
    .threads = params.writeback_threads,
    .interval_ms = params.dirty_writeback_ms,
    .expire_ms = params.dirty_expire_ms,
    .log = subpage_log,
    .debug = subpage_debug_writeback != 0,
  };
  int err;

  if (subpage_same_host () == -1)
    return -1;

  if (backend.start != NULL && backend.start (backend.handle) < 0)
    return -1;
  /* Before the replay: a journal must not be replayed onto an image
   * that another instance may have written since (backend.h).
   */
  if (backend.claim != NULL &&
      backend.claim (backend.handle, params.journal ? journal_id : NULL,
                     false) < 0)
    return -1;
  /* An asynchronous backend (uri=) takes write-back runs itself: many
   * in flight per connection, not one per worker.
   */
  wcfg.aio_pwrite = backend.aio_pwrite;
  wcfg.aio_opaque = backend.handle;

  if (params.journal != NULL) {
    /* Replay before serving, onto an image opened for writing now. */
    if (backend.open_write != NULL && backend.open_write (backend.handle) < 0)
      return -1;
    if (!backend.can_write (backend.handle)) {
      nbdkit_error ("subpage: journal=%s: the image cannot be written, "
                    "and a journal needs to write it",
                    params.journal);
      return -1;
    }
    if (cache_journal_recover (cache) < 0) {
      nbdkit_error ("subpage: journal=%s: recovery failed (the line above "
                    "says why); the journal is kept as it was",
                    params.journal);
      return -1;
    }
    /* Four writes in flight per write-back thread: the journal's
     * writes are small records, each its own backend request.
     */
    /* uri=, rbd=: a batch's writes go straight to the backend, many
     * in flight, without a pool thread each.
     */
    if (backend.aio_pwrite != NULL)
      cache_set_jio_aio (cache, backend.aio_pwrite, backend.handle);
    jdrain = jdrain_start (cache, params.dirty_writeback_ms,
                           params.dirty_expire_ms,
                           params.journal_background_ratio,
                           4 * params.writeback_threads, &err);
    if (jdrain == NULL) {
      nbdkit_error ("subpage: cannot start the journal's drainer: %s",
                    errstr (-err));
      return -1;
    }
  }
  else
    wbs = wbs_start (cache, &wcfg, &err);
  backend_claimed = true; /* and the journal, if any, replayed */
  if (params.journal == NULL && wbs == NULL) {
    nbdkit_error ("subpage: cannot start write-back threads: %s",
                  errstr (-err));
    return -1;
  }

  err = subpage_watcher_start ();
  if (err != 0) {
    nbdkit_error ("subpage: cannot start the shutdown watcher: %s",
                  errstr (err));
    return -1; /* .cleanup stops wbs */
  }

  if (params.metrics_socket != NULL) {
    struct metrics_config mcfg = {
      .path = params.metrics_socket,
      .mode = 0660,
      .log = subpage_log,
      .debug = subpage_debug_metrics != 0,
      .version = SUBPAGE_VERSION,
      .cache_mode = params_mode_name (params.mode),
      .backend = params.uri != NULL   ? "nbd"
                 : params.rbd != NULL ? "rbd"
                                      : "file",
    };
    const char *what = "";

    metrics = metrics_start (cache, &mcfg, &err, &what);
    if (metrics == NULL) {
      nbdkit_error ("subpage: metrics-socket=%s: %s: %s", params.metrics_socket,
                    what, errstr (-err));
      return -1; /* .cleanup stops the rest */
    }
  }
  return 0;
}

static void
subpage_cleanup (void)
{
  metrics_stop (metrics);
  metrics = NULL;
  subpage_watcher_stop ();
  wbs_stop (wbs);
  wbs = NULL;
  jdrain_stop (jdrain); /* its pool writes the drain below */

  if (cache != NULL) {
    struct cache_stats st;
    /* cache_drain, not cache_flush: mode=unsafe ignores the client's
     * flushes, but shutdown drains in every mode.
     */
    int r = cache_drain (cache);

    if (r < 0 && journal_open)
      nbdkit_error ("subpage: journal=%s: the final write-back failed: "
                    "%s; the journal keeps the data and the next start "
                    "replays it",
                    params.journal, errstr (-r));
    else if (r < 0)
      nbdkit_error ("subpage: final flush failed, unwritten data is "
                    "lost: %s",
                    errstr (-r));
    jdrain_close (jdrain);
    jdrain = NULL;
    /* Everything is on the image and flushed: another may take it. */
    if (r == 0 && backend_claimed && backend.unclaim != NULL)
      backend.unclaim (backend.handle);
    backend_claimed = false;
    cache_get_stats (cache, &st);
    nbdkit_debug ("subpage: exit: backend reads %" PRIu64 " (%" PRIu64
                  " bytes), writes %" PRIu64 " (%" PRIu64 " bytes), "
                  "flushes %" PRIu64 ", write-back errors %" PRIu64,
                  st.backend_reads, st.backend_read_bytes, st.backend_writes,
                  st.backend_write_bytes, st.backend_flushes, st.wb_errors);
    cache_destroy (cache);
    cache = NULL;
  }
  if (journal_open)
    jdev_file_close (&journal_dev);
  journal_open = false;
  backend_close (&backend);
  params_free ();
}

static void *
subpage_open (int readonly)
{
  struct cache_stream *s;

  if (!readonly && backend.open_write != NULL &&
      backend.open_write (backend.handle) < 0)
    return NULL;
  if (readonly || params.journal == NULL || params.sequential_cutoff == 0)
    return NBDKIT_HANDLE_NOT_NEEDED;
  /* The connection's stream of writes (sequential-cutoff=). */
  s = cache_stream_new ();
  if (s == NULL) {
    nbdkit_error ("calloc: %s", errstr (errno));
    return NULL;
  }
  return s;
}

static void
subpage_close (void *handle)
{
  if (handle != NBDKIT_HANDLE_NOT_NEEDED)
    cache_stream_free (handle);
}

static int64_t
subpage_get_size (void *handle)
{
  (void) handle;
  /* Each new connection sees the size now: the cache follows a change
   * (cache.h, cache_refresh_size).
   */
  return (int64_t) cache_refresh_size (cache);
}

static int
subpage_block_size (void *handle, uint32_t *minimum, uint32_t *preferred,
                    uint32_t *maximum)
{
  (void) handle;
  *minimum = 1;
  *preferred = params.sector_size;
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
  return 1; /* .flush; 1.32 has no NBDKIT_FLUSH_NATIVE */
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
  return 1; /* one cache; a flush covers all of it */
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
  return 1; /* native: .zero is always called */
}

static int
subpage_can_fast_zero (void *handle)
{
  (void) handle;
  return 1; /* zero fails with ENOTSUP when slow */
}

static int
subpage_can_cache (void *handle)
{
  (void) handle;
  return NBDKIT_CACHE_NATIVE;
}

static int
subpage_can_extents (void *handle)
{
  (void) handle;
  return backend.extents != NULL;
}

/* Turns the cache's -errno into nbdkit's error convention.  -ERANGE:
 * the request reaches past the end of an image that shrank after the
 * client learned its size; the cache logged the shrink once, so this
 * is not logged again, and the client sees PAST_END_ERR (ENOSPC for a
 * write or a zero, as nbdkit answers a write past the end; EIO else).
 */
static int
subpage_fail_past_end (const char *what, int r, int past_end_err)
{
  if (r == -ERANGE) {
    nbdkit_set_error (past_end_err);
    nbdkit_debug ("%s: past the image's end (it shrank)", what);
    return -1;
  }
  nbdkit_set_error (-r);
  nbdkit_error ("%s: %s", what, errstr (-r));
  return -1;
}

static int
subpage_fail (const char *what, int r)
{
  return subpage_fail_past_end (what, r, EIO);
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
subpage_pwrite (void *handle, const void *buf, uint32_t count, uint64_t offset,
                uint32_t flags)
{
  int r;

  r = cache_write_stream (cache,
                          handle == NBDKIT_HANDLE_NOT_NEEDED ? NULL : handle,
                          buf, count, offset, subpage_flags (flags));
  return r < 0 ? subpage_fail_past_end ("pwrite", r, ENOSPC) : 0;
}

static int
subpage_flush (void *handle, uint32_t flags)
{
  int r;

  (void) handle;
  (void) flags;
  r = cache_flush (cache);
  if (r < 0) {
    nbdkit_set_error (-r); /* cache_flush logged it (once for a shrink) */
    return -1;
  }
  return 0;
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
  return r < 0 ? subpage_fail_past_end ("zero", r, ENOSPC) : 0;
}

static int
subpage_cache (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  int r;

  (void) handle;
  (void) flags;
  r = cache_prefetch (cache, count, offset);
  return r < 0 ? subpage_fail ("cache", r) : 0;
}

#define SUBPAGE_EXTENT_RUNS 32

static int
subpage_extents (void *handle, uint32_t count, uint64_t offset, uint32_t flags,
                 struct nbdkit_extents *ex)
{
  uint64_t pos = offset, end = offset + count;

  (void) handle;
  for (unsigned n = 0; pos < end && n < SUBPAGE_EXTENT_RUNS; n++) {
    uint64_t s, e;
    bool zero = false;
    int r;

    if (!cache_next_unflushed (cache, pos, end, &s, &e, &zero))
      s = e = end;
    if (s > pos) {
      r = backend.extents (backend.handle, (uint32_t) (s - pos), pos, ex);
      if (r < 0) {
        nbdkit_set_error (-r);
        return -1; /* logged */
      }
    }
    if (e > s &&
        nbdkit_add_extent (ex, s, e - s, zero ? NBDKIT_EXTENT_ZERO : 0) == -1)
      return -1;
    pos = e;
    if (flags & NBDKIT_FLAG_REQ_ONE)
      break;
  }
  return 0;
}

/* clang-format off */
static struct nbdkit_plugin plugin = {
  .name              = "subpage",
  .longname          = "nbdkit sub-page write-back cache plugin",
  .version           = SUBPAGE_VERSION,
  .magic_config_key  = "file",
  .config            = params_config,
  .config_complete   = params_config_complete,
  .config_help       = PARAMS_HELP,
  .get_ready         = subpage_get_ready,
  .after_fork        = subpage_after_fork,
  .cleanup           = subpage_cleanup,
  .open              = subpage_open,
  .close             = subpage_close,
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
  .can_extents       = subpage_can_extents,
  .pread             = subpage_pread,
  .pwrite            = subpage_pwrite,
  .flush             = subpage_flush,
  .trim              = subpage_trim,
  .zero              = subpage_zero,
  .cache             = subpage_cache,
  .extents           = subpage_extents,
  .errno_is_preserved = 0,
};
/* clang-format on */

NBDKIT_REGISTER_PLUGIN (plugin)
