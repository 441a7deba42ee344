/* subpage: the metrics endpoint (server/metrics.c).
 *
 * Serves the cache's statistics (struct cache_stats) in the Prometheus
 * text exposition format (version 0.0.4) on a listening AF_UNIX stream
 * socket.  A client connects and reads: the server writes the whole
 * text and closes.  A client that sends an HTTP request ("GET " first)
 * gets an HTTP/1.0 response instead (200 for GET or HEAD of /metrics,
 * 404 for another path, 405 for another method), so
 *   curl --unix-socket PATH http://localhost/metrics
 * works too.  Runs in a thread of its own (one libev loop); a slow
 * client never blocks it, and it never blocks a request.
 *
 * Knows nothing of nbdkit.  Start it after fork (nbdkit's .after_fork).
 */
#ifndef SUBPAGE_METRICS_H
#define SUBPAGE_METRICS_H

#include <stdbool.h>
#include <stddef.h>

#include "cache.h"

struct metrics;

struct metrics_config {
  const char *path; /* socket path; absolute, < 108 bytes */
  unsigned mode;    /* file mode of the socket, e.g. 0660 */
  cache_log_fn log; /* debug log (may be NULL) */
  void *log_opaque;
  bool debug; /* log every connection */
  /* subpage_build_info's labels (NULL: "unknown"): the plugin's
   * version, mode= and backend ("file" or "nbd").
   */
  const char *version, *cache_mode, *backend;
};

/* Creates the socket (replacing a stale socket file at PATH that no one
 * listens on, but nothing else), and starts the thread.  Returns NULL on
 * failure, with *err = -errno and *what = the call that failed (a
 * static string: "socket", "bind", "chmod", ...).
 */
struct metrics *metrics_start (struct cache *c,
                               const struct metrics_config *cfg, int *err,
                               const char **what);
/* Stops the thread, closes every connection and the socket, removes the
 * socket file and frees M (NULL is fine).
 */
void metrics_stop (struct metrics *m);

/* Formats ST (and CFG's build information; CFG may be NULL) as
 * exposition text into BUF (at most LEN bytes including
 * the final NUL, like snprintf).  Returns the length of the whole text,
 * which may be >= LEN.
 */
size_t metrics_render (const struct metrics_config *cfg,
                       const struct cache_stats *st, char *buf, size_t len);

#endif /* SUBPAGE_METRICS_H */
