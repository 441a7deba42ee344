/* subpage: the metrics endpoint.
 *
 * Notes on the design.
 *
 * What it does: listens on an AF_UNIX stream socket and answers every
 * connection with the cache's statistics in the Prometheus text
 * exposition format 0.0.4 (HELP and TYPE lines; counters end in
 * _total, and every name carries its unit), then closes it.  Two kinds
 * of client:
 *   plain  connects and reads (socat, nc -U, a script): it gets the
 *          text alone;
 *   HTTP   sends a request first (curl --unix-socket, a Prometheus
 *          scrape through a socket proxy): GET /metrics gets an
 *          HTTP/1.0 200 response with Content-Type text/plain;
 *          version=0.0.4 and Content-Length, HEAD /metrics the same
 *          without the body, another path 404, another method 405.
 * Which one it is is decided by the first bytes the client sends: "GET "
 * or "HEAD " means HTTP; another upper-case word and a space means HTTP
 * if the first line ends in " HTTP/1.x" (the answer goes out once the
 * request's headers are in, "\r\n\r\n"); anything else, end of file
 * (the client shut down its side), or nothing within METRICS_GRACE_S
 * means plain.  So a plain client that just reads waits
 * METRICS_GRACE_S; one that shuts down its writing side first gets the
 * text at once.
 *
 * Threads: one thread of our own running its own libev loop (one loop
 * per thread), so neither a slow client nor a scrape can delay the
 * write-back loop in server/wbserver.c, and nothing here can be delayed
 * by write-back.  The thread blocks every signal.  Watchers:
 *   listen_w  ev_io on the listening socket: accept4 (non-blocking)
 *             until EAGAIN;
 *   per connection: io (read, then write) and timer (the grace period,
 *             then the connection's deadline);
 *   stop_w    ev_async from metrics_stop: break the loop.
 * Every socket is non-blocking; a connection's answer is rendered into
 * a buffer of its own (a few KiB) when it is decided, written as the
 * socket accepts it, and the connection is dropped when it has not
 * finished within METRICS_DEADLINE_S.  At most METRICS_MAX_CONNS
 * connections are served at once; beyond that a new one is closed at
 * once.  A connection costs two mallocs (its state, its answer);
 * nothing else is allocated after the start.  If accept4 fails for
 * want of descriptors or memory, listening pauses for a second.
 *
 * Data: the statistics come from cache_get_stats (thread-safe, takes no
 * lock a request needs), read once per answer, so one answer is one
 * snapshot (approximate while requests run, like the stats themselves).
 * Latencies are histograms (CACHE_HISTOGRAMS in cache.h: the core
 * counts observations per bucket, this file makes them cumulative).
 *
 * The socket file: created by metrics_start with the requested mode
 * (bind, chmod, then listen, so no client can connect before the mode
 * is set), removed by metrics_stop.  A leftover socket file at the path
 * that no one listens on (a crashed earlier run) is replaced; any other
 * existing file makes bind fail with EADDRINUSE.
 *
 * What it does not do: keep-alive, HTTP methods other than GET and
 * HEAD, TLS, authentication (that is the socket file's mode and
 * directory).
 */

#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1 /* accept4, pthread_setname_np */
#endif

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <ev.h>

#include "cache.h"
#include "metrics.h"
#include "thread.h"

#define METRICS_MAX_CONNS 16   /* served at once; more are closed */
#define METRICS_BACKLOG 64     /* waiting to be accepted */
#define METRICS_GRACE_S 0.05   /* wait this long for an HTTP request */
#define METRICS_DEADLINE_S 5.0 /* then drop the connection */
#define METRICS_REQ_MAX 4096   /* HTTP request headers we read */

#define METRICS_HTTP_HEAD_MAX 256 /* our status line and headers */

enum mconn_state {
  MCONN_READING, /* deciding plain or HTTP */
  MCONN_WRITING, /* answer rendered, being written */
};

struct mconn {
  struct metrics *m;
  struct mconn *prev, *next; /* m->conns */
  int fd;
  enum mconn_state state;
  ev_io io;
  ev_timer timer;
  bool grace_over;
  char *out; /* answer: [outpos, outlen) still to go */
  size_t outlen, outpos;
  size_t reqlen;
  char req[METRICS_REQ_MAX]; /* last: not cleared by listen_cb */
};

struct metrics {
  struct cache *c;
  struct metrics_config cfg;
  char *path; /* our copy of cfg.path */
  int lfd;
  bool bound; /* the socket file is ours to remove */
  struct ev_loop *loop;
  ev_io listen_w;
  ev_timer retry_w; /* restarts listen_w after EMFILE etc. */
  ev_async stop_w;
  pthread_t thread;
  bool started;
  struct mconn *conns; /* loop thread only */
  unsigned nconns;
  uint64_t served; /* loop thread only: answers written */
};

static void
mlog (struct metrics *m, const char *fmt, ...)
{
  va_list ap;

  if (!m->cfg.debug || m->cfg.log == NULL)
    return;
  va_start (ap, fmt);
  m->cfg.log (m->cfg.log_opaque, CACHE_LOG_DEBUG, fmt, ap);
  va_end (ap);
}

/* ---- rendering ---------------------------------------------------------- */

struct out {
  char *buf;
  size_t len, pos;
};

static void __attribute__ ((format (printf, 2, 3)))
out_printf (struct out *o, const char *fmt, ...)
{
  va_list ap;
  char *dst = NULL;
  size_t room = 0;
  int n;

  if (o->buf != NULL && o->pos < o->len) {
    dst = o->buf + o->pos;
    room = o->len - o->pos;
  }
  va_start (ap, fmt);
  n = vsnprintf (dst, room, fmt, ap);
  va_end (ap);
  if (n > 0)
    o->pos += n;
}

static void
family (struct out *o, const char *name, const char *type, const char *help)
{
  out_printf (o, "# HELP subpage_%s %s\n# TYPE subpage_%s %s\n", name, help,
              name, type);
}

/* Label value V, escaped as the text format wants. */
static void
label_value (struct out *o, const char *v)
{
  if (v == NULL)
    v = "unknown";
  for (; *v; v++) {
    if (*v == '\\' || *v == '"')
      out_printf (o, "\\%c", *v);
    else if (*v == '\n')
      out_printf (o, "\\n");
    else
      out_printf (o, "%c", *v);
  }
}

static void
gauge (struct out *o, const char *name, const char *help, uint64_t v)
{
  family (o, name, "gauge", help);
  out_printf (o, "subpage_%s %" PRIu64 "\n", name, v);
}

/* NAME ends in _total. */
static void
counter (struct out *o, const char *name, const char *help, uint64_t v)
{
  family (o, name, "counter", help);
  out_printf (o, "subpage_%s %" PRIu64 "\n", name, v);
}

/* Nanoseconds as exact decimal seconds. */
#define SECONDS_FMT "%" PRIu64 ".%09" PRIu64
#define SECONDS_ARG(ns) \
  (uint64_t) ((ns) / 1000000000), (uint64_t) ((ns) % 1000000000)

/* NAME ends in _seconds; H counts nanoseconds per bucket. */
static void
histogram (struct out *o, const char *name, const char *help,
           const struct cache_histogram *h)
{
  uint64_t cum = 0;

  family (o, name, "histogram", help);
  for (unsigned i = 0; i < CACHE_HIST_BUCKETS; i++) {
    cum += h->bucket[i];
    out_printf (o, "subpage_%s_bucket{le=\"%g\"} %" PRIu64 "\n", name,
                (double) cache_histogram_bounds_ns[i] / 1e9, cum);
  }
  cum += h->bucket[CACHE_HIST_BUCKETS];
  out_printf (o, "subpage_%s_bucket{le=\"+Inf\"} %" PRIu64 "\n", name, cum);
  out_printf (o, "subpage_%s_sum " SECONDS_FMT "\n", name,
              SECONDS_ARG (h->sum_ns));
  out_printf (o, "subpage_%s_count %" PRIu64 "\n", name, cum);
}

/* The families, in the order of the text, in four groups. */

/* Configuration and memory. */
static void
render_memory (struct out *o, const struct metrics_config *cfg,
               const struct cache_stats *st)
{
  /* Configuration. */
  family (o, "build_info", "gauge",
          "Always 1; the labels say the version, mode= and the backend "
          "(file: file=, nbd: uri=).");
  out_printf (o, "subpage_build_info{version=\"");
  label_value (o, cfg != NULL ? cfg->version : NULL);
  out_printf (o, "\",mode=\"");
  label_value (o, cfg != NULL ? cfg->cache_mode : NULL);
  out_printf (o, "\",backend=\"");
  label_value (o, cfg != NULL ? cfg->backend : NULL);
  out_printf (o, "\"} 1\n");
  gauge (o, "export_size_bytes", "Size of the served image.", st->size);
  gauge (o, "cache_size_bytes", "Memory for cached pages (cache-size).",
         st->cache_size);
  gauge (o, "page_size_bytes", "Cache page size (page-size).", st->page_size);
  gauge (o, "sector_size_bytes",
         "Granularity of the per-sector state (sector-size).", st->sector_size);

  /* Memory. */
  gauge (o, "pages_capacity",
         "Pages the cache can hold (cache-size / page-size).", st->pages_total);
  gauge (o, "pages_resident", "Pages in memory now.", st->pages_resident);
  gauge (o, "pages_dirty",
         "Pages holding dirty data or data being written back; "
         "dirty-background-ratio and dirty-ratio count these pages.",
         st->dirty_pages);
  gauge (o, "cached_bytes", "Bytes of valid data in the cache, clean or dirty.",
         st->cached_bytes);
  gauge (o, "dirty_bytes",
         "Bytes newer in memory than on the image, not yet being "
         "written back.",
         st->dirty_bytes);
  gauge (o, "writeback_bytes", "Bytes being written to the image now.",
         st->writeback_bytes);
  gauge (o, "writeback_buffer_bytes",
         "Memory for snapshots of data being written back, on top of "
         "cache_size_bytes.",
         st->writeback_buffer_bytes);
  gauge (o, "metadata_bytes",
         "Memory for the cache's bookkeeping, on top of cache_size_bytes.",
         st->metadata_bytes);
}

/* The cache's counters (CACHE_COUNTERS in cache.h: one list for the
 * core, cache_stats and this endpoint), then what is derived from them.
 */
static void
render_counters (struct out *o, const struct cache_stats *st)
{
#define RENDER_COUNTER(f, metric, help) \
  if (metric != NULL)                   \
    counter (o, metric, help, st->f);
  CACHE_COUNTERS (RENDER_COUNTER)
#undef RENDER_COUNTER
  counter (o, "hit_bytes_total",
           "Bytes read by clients that were in the cache.",
           st->hits * st->sector_size);
  counter (o, "miss_bytes_total",
           "Bytes read from the image because they were not in the cache.",
           st->misses * st->sector_size);
  gauge (o, "journal_size_bytes",
         "Bytes of the journal's record area (0: no journal=).",
         st->journal_size);
  gauge (o, "journal_used_bytes",
         "Journal bytes holding records not yet on the image and flushed.",
         st->journal_used_bytes);
  gauge (o, "journal_free_bytes", "Journal bytes free for new records.",
         st->journal_size - st->journal_used_bytes);
  gauge (o, "journal_pending_bytes",
         "Journal bytes whose records are not yet written back.",
         st->journal_pending_bytes);
  gauge (o, "journal_epochs_waiting",
         "Flush epochs with records not yet written back.",
         st->journal_epochs_waiting);
  gauge (o, "journal_oldest_age_seconds",
         "Age of the oldest record not yet written back (per epoch).",
         st->journal_oldest_age_ms / 1000);
  gauge (o, "journal_index_bytes",
         "Bytes of RAM the index of journaled data takes (at most a "
         "quarter of cache-size while dirty pages leave RAM).",
         st->journal_index_bytes);
  gauge (o, "writeback_runs_in_flight",
         "Write-back runs started and not yet completed.", st->runs_in_flight);
}

/* Latencies and threads waiting now. */
static void
render_waits (struct out *o, const struct cache_stats *st)
{
#define RENDER_HIST(f, metric, help) histogram (o, metric, help, &st->f);
  CACHE_HISTOGRAMS (RENDER_HIST)
#undef RENDER_HIST

  /* Waiting now. */
  family (o, "waiting_threads", "gauge",
          "Threads waiting now: on=flush (a flush waiting for write-back "
          "or a sync), throttle (a writer over dirty-ratio), page (a "
          "request waiting for a free page), idle (trim, zero or FUA "
          "waiting for write-back of its range).");
  out_printf (o, "subpage_waiting_threads{on=\"flush\"} %" PRIu64 "\n",
              st->waiting_flush);
  out_printf (o, "subpage_waiting_threads{on=\"throttle\"} %" PRIu64 "\n",
              st->waiting_throttle);
  out_printf (o, "subpage_waiting_threads{on=\"page\"} %" PRIu64 "\n",
              st->waiting_page);
  out_printf (o, "subpage_waiting_threads{on=\"idle\"} %" PRIu64 "\n",
              st->waiting_idle);
}

size_t
metrics_render (const struct metrics_config *cfg, const struct cache_stats *st,
                char *buf, size_t len)
{
  struct out o = { .buf = buf, .len = len, .pos = 0 };

  if (buf != NULL && len > 0)
    buf[0] = '\0';
  render_memory (&o, cfg, st);
  render_counters (&o, st);
  render_waits (&o, st);
  return o.pos;
}

/* ---- connections ---------------------------------------------------------- */

static void
mconn_close (struct mconn *mc)
{
  struct metrics *m = mc->m;

  ev_io_stop (m->loop, &mc->io);
  ev_timer_stop (m->loop, &mc->timer);
  close (mc->fd);
  if (mc->prev != NULL)
    mc->prev->next = mc->next;
  else
    m->conns = mc->next;
  if (mc->next != NULL)
    mc->next->prev = mc->prev;
  m->nconns--;
  free (mc->out);
  free (mc);
}

/* The word of the request starting at *P, which ends at a space, the
 * end of the line or END; *P moves past it and one space.
 */
static size_t
req_word (const char **p, const char *end, const char **word)
{
  const char *s = *p;

  while (s < end && *s != ' ' && *s != '\r' && *s != '\n')
    s++;
  *word = *p;
  *p = s < end && *s == ' ' ? s + 1 : s;
  return s - *word;
}

static bool
word_is (const char *w, size_t n, const char *lit)
{
  return n == strlen (lit) && memcmp (w, lit, n) == 0;
}

/* The HTTP status line and headers for the request in MC->req (a body
 * of BODYLEN bytes follows unless *HEAD_ONLY), into HEAD; returns their
 * length.  *STATUS: 200, 404 or 405.
 */
static size_t
http_head (struct mconn *mc, char *head, size_t bodylen, bool *head_only,
           int *status)
{
  const char *p = mc->req, *end = mc->req + mc->reqlen, *method, *path;
  size_t mlen = req_word (&p, end, &method);
  size_t plen = req_word (&p, end, &path);
  const char *q = memchr (path, '?', plen);
  int n;

  if (q != NULL)
    plen = q - path; /* ?name[]=... : the whole text regardless */
  *head_only = word_is (method, mlen, "HEAD");
  if (!*head_only && !word_is (method, mlen, "GET"))
    *status = 405;
  else if (!word_is (path, plen, "/metrics"))
    *status = 404;
  else
    *status = 200;
  n = snprintf (head, METRICS_HTTP_HEAD_MAX,
                "HTTP/1.0 %s\r\n"
                "Content-Type: %s\r\n"
                "Content-Length: %zu\r\n"
                "%s"
                "Connection: close\r\n"
                "\r\n",
                *status == 200   ? "200 OK"
                : *status == 404 ? "404 Not Found"
                                 : "405 Method Not Allowed",
                *status == 200 ? "text/plain; version=0.0.4; charset=utf-8"
                               : "text/plain; charset=utf-8",
                bodylen, *status == 405 ? "Allow: GET, HEAD\r\n" : "");
  return n > 0 && n < METRICS_HTTP_HEAD_MAX ? (size_t) n : 0;
}

static const char body_404[] = "404 Not Found: the metrics are at /metrics\n";
static const char body_405[] = "405 Method Not Allowed: use GET or HEAD\n";

/* Renders the answer and switches to writing it. */
static void
mconn_answer (struct mconn *mc, bool http)
{
  struct metrics *m = mc->m;
  struct cache_stats st;
  char head[METRICS_HTTP_HEAD_MAX];
  size_t headlen = 0, n = 0;
  bool head_only = false;
  int status = 200;

  if (http) {
    /* The status first (it depends on the request only), then the
     * body's length for Content-Length.
     */
    http_head (mc, head, 0, &head_only, &status);
  }
  if (status == 200) {
    cache_get_stats (m->c, &st);
    n = metrics_render (&m->cfg, &st, NULL, 0);
  }
  else
    n = status == 404 ? sizeof body_404 - 1 : sizeof body_405 - 1;
  if (http)
    headlen = http_head (mc, head, n, &head_only, &status);
  mc->out = malloc (headlen + n + 1);
  if (mc->out == NULL) {
    mconn_close (mc);
    return;
  }
  memcpy (mc->out, head, headlen);
  if (status == 200)
    metrics_render (&m->cfg, &st, mc->out + headlen, n + 1);
  else
    memcpy (mc->out + headlen, status == 404 ? body_404 : body_405, n + 1);
  mc->outlen = headlen + (head_only ? 0 : n);
  mc->outpos = 0;
  mc->state = MCONN_WRITING;
  if (http)
    mlog (m, "metrics: answering an HTTP client: %d (%zu bytes)", status,
          mc->outlen);
  else
    mlog (m, "metrics: answering a plain client (%zu bytes)", mc->outlen);

  ev_io_stop (m->loop, &mc->io);
  ev_io_set (&mc->io, mc->fd, EV_WRITE);
  ev_io_start (m->loop, &mc->io);
  /* The grace timer may still be pending: from now on only the
   * deadline counts.
   */
  if (!mc->grace_over) {
    mc->grace_over = true;
    ev_timer_stop (m->loop, &mc->timer);
    ev_timer_set (&mc->timer, METRICS_DEADLINE_S, 0.);
    ev_timer_start (m->loop, &mc->timer);
  }
}

/* Whether the request so far can still be PREFIX: 1 it starts with it,
 * 0 it cannot, -1 too short to say.
 */
static int
starts_with (const struct mconn *mc, const char *prefix)
{
  size_t len = strlen (prefix), n = mc->reqlen < len ? mc->reqlen : len;

  if (memcmp (mc->req, prefix, n) != 0)
    return 0;
  return n == len ? 1 : -1;
}

/* Whether the first line (complete) ends in " HTTP/1.x". */
static bool
first_line_is_http (const struct mconn *mc)
{
  const char *nl = memchr (mc->req, '\n', mc->reqlen);
  size_t n;

  if (nl == NULL)
    return false;
  n = nl - mc->req;
  if (n > 0 && mc->req[n - 1] == '\r')
    n--;
  return n >= 9 && memcmp (mc->req + n - 9, " HTTP/1.", 8) == 0;
}

/* What the request so far says: 1 HTTP (complete), 0 plain, -1 wait. */
static int
mconn_classify (struct mconn *mc, bool eof)
{
  int get = starts_with (mc, "GET "), head = starts_with (mc, "HEAD ");
  bool known = get == 1 || head == 1, word = true;
  size_t i;

  /* Another method: an upper-case word, then a space. */
  for (i = 0; i < mc->reqlen && mc->req[i] != ' '; i++)
    if (mc->req[i] < 'A' || mc->req[i] > 'Z')
      word = false;
  if (i == mc->reqlen) /* no space yet */
    return get == -1 || head == -1 || (word && i < 16) ? (eof ? 0 : -1) : 0;
  if (!known && !(word && i > 0))
    return 0;
  if (memmem (mc->req, mc->reqlen, "\r\n\r\n", 4) != NULL ||
      memmem (mc->req, mc->reqlen, "\n\n", 2) != NULL ||
      mc->reqlen == sizeof mc->req || eof)
    return known || first_line_is_http (mc) ? 1 : 0;
  return -1;
}

static void
mconn_read (struct mconn *mc)
{
  bool eof = false;
  int kind;

  while (mc->reqlen < sizeof mc->req) {
    ssize_t r = read (mc->fd, mc->req + mc->reqlen,
                      sizeof mc->req - mc->reqlen);

    if (r > 0) {
      mc->reqlen += r;
      continue;
    }
    if (r == 0) {
      eof = true;
      break;
    }
    if (errno == EINTR)
      continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK)
      break;
    mconn_close (mc); /* ECONNRESET and the like */
    return;
  }
  kind = mconn_classify (mc, eof);
  if (kind >= 0)
    mconn_answer (mc, kind == 1);
}

static void
mconn_write (struct mconn *mc)
{
  while (mc->outpos < mc->outlen) {
    ssize_t r = send (mc->fd, mc->out + mc->outpos, mc->outlen - mc->outpos,
                      MSG_NOSIGNAL);

    if (r >= 0) {
      mc->outpos += r;
      continue;
    }
    if (errno == EINTR)
      continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK)
      return;         /* wait for EV_WRITE */
    mconn_close (mc); /* EPIPE: the client went away */
    return;
  }
  mc->m->served++;
  shutdown (mc->fd, SHUT_WR);
  mconn_close (mc);
}

static void
mconn_io_cb (struct ev_loop *loop, ev_io *w, int revents)
{
  struct mconn *mc = w->data;

  (void) loop;
  (void) revents;
  if (mc->state == MCONN_READING)
    mconn_read (mc);
  else
    mconn_write (mc);
}

static void
mconn_timer_cb (struct ev_loop *loop, ev_timer *w, int revents)
{
  struct mconn *mc = w->data;

  (void) revents;
  if (!mc->grace_over) {
    /* Grace period over.  Nothing, or not the start of a GET: plain.
     * A GET still arriving gets until the deadline.
     */
    mc->grace_over = true;
    ev_timer_set (&mc->timer, METRICS_DEADLINE_S - METRICS_GRACE_S, 0.);
    ev_timer_start (loop, &mc->timer);
    if (mc->state == MCONN_READING &&
        (mc->reqlen == 0 || mconn_classify (mc, false) == 0))
      mconn_answer (mc, false);
    return;
  }
  mlog (mc->m, "metrics: dropping a client that did not finish in %g s",
        METRICS_DEADLINE_S);
  mconn_close (mc);
}

static void
listen_cb (struct ev_loop *loop, ev_io *w, int revents)
{
  struct metrics *m = ev_userdata (loop);

  (void) w;
  (void) revents;
  for (;;) {
    struct mconn *mc;
    int fd = accept4 (m->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

    if (fd == -1) {
      if (errno == EINTR || errno == ECONNABORTED)
        continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) {
        /* EMFILE, ENFILE, ENOMEM...: the connection stays queued and
         * the socket readable; pause for a second rather than spin.
         */
        mlog (m, "metrics: accept4 failed (errno %d), retrying in 1 s", errno);
        ev_io_stop (loop, &m->listen_w);
        ev_timer_start (loop, &m->retry_w);
      }
      return;
    }
    if (m->nconns >= METRICS_MAX_CONNS || (mc = malloc (sizeof *mc)) == NULL) {
      mlog (m, "metrics: too many clients, closing a new one");
      close (fd);
      continue;
    }
    memset (mc, 0, offsetof (struct mconn, req));
    mc->m = m;
    mc->fd = fd;
    mc->state = MCONN_READING;
    mc->next = m->conns;
    if (m->conns != NULL)
      m->conns->prev = mc;
    m->conns = mc;
    m->nconns++;
    ev_io_init (&mc->io, mconn_io_cb, fd, EV_READ);
    mc->io.data = mc;
    ev_io_start (loop, &mc->io);
    ev_timer_init (&mc->timer, mconn_timer_cb, METRICS_GRACE_S, 0.);
    mc->timer.data = mc;
    ev_timer_start (loop, &mc->timer);
  }
}

static void
retry_cb (struct ev_loop *loop, ev_timer *w, int revents)
{
  struct metrics *m = ev_userdata (loop);

  (void) w;
  (void) revents;
  ev_io_start (loop, &m->listen_w);
}

static void
stop_cb (struct ev_loop *loop, ev_async *w, int revents)
{
  (void) w;
  (void) revents;
  ev_break (loop, EVBREAK_ALL);
}

static void *
metrics_main (void *arg)
{
  struct metrics *m = arg;

  pthread_setname_np (pthread_self (), "subpage-metric");
  ev_run (m->loop, 0);
  return NULL;
}

/* ---- the socket ----------------------------------------------------------- */

/* Binds S to ADDR; replaces a socket file no one listens on. */
static int
bind_path (int s, const struct sockaddr_un *addr)
{
  struct stat sb;
  int t, r;

  if (bind (s, (const struct sockaddr *) addr, sizeof *addr) == 0)
    return 0;
  if (errno != EADDRINUSE)
    return -1;
  if (lstat (addr->sun_path, &sb) == -1 || !S_ISSOCK (sb.st_mode)) {
    errno = EADDRINUSE;
    return -1;
  }
  t = socket (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (t == -1)
    return -1;
  r = connect (t, (const struct sockaddr *) addr, sizeof *addr);
  close (t);
  if (r == 0 || errno != ECONNREFUSED) {
    errno = EADDRINUSE; /* someone is listening there */
    return -1;
  }
  if (unlink (addr->sun_path) == -1 && errno != ENOENT)
    return -1;
  return bind (s, (const struct sockaddr *) addr, sizeof *addr);
}

static void
metrics_free (struct metrics *m)
{
  while (m->conns != NULL)
    mconn_close (m->conns);
  if (m->lfd >= 0)
    close (m->lfd);
  if (m->bound)
    unlink (m->path);
  if (m->loop != NULL)
    ev_loop_destroy (m->loop);
  free (m->path);
  free (m);
}

struct metrics *
metrics_start (struct cache *c, const struct metrics_config *cfg, int *err,
               const char **what)
{
  struct metrics *m;
  struct sockaddr_un addr;
  int r;

  memset (&addr, 0, sizeof addr);
  addr.sun_family = AF_UNIX;
  if (cfg->path == NULL || cfg->path[0] == '\0' ||
      strlen (cfg->path) >= sizeof addr.sun_path) {
    *err = -ENAMETOOLONG;
    *what = "socket path";
    return NULL;
  }
  strcpy (addr.sun_path, cfg->path);

  m = calloc (1, sizeof *m);
  if (m == NULL) {
    *err = -ENOMEM;
    *what = "malloc";
    return NULL;
  }
  m->c = c;
  m->cfg = *cfg;
  m->lfd = -1;
  m->path = strdup (cfg->path);
  m->loop = ev_loop_new (EVFLAG_AUTO | EVFLAG_NOSIGMASK);
  if (m->path == NULL || m->loop == NULL) {
    r = ENOMEM;
    *what = m->path == NULL ? "malloc" : "ev_loop_new";
    goto err_free;
  }
  m->cfg.path = m->path;

  m->lfd = socket (AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (m->lfd == -1) {
    r = errno;
    *what = "socket";
    goto err_free;
  }
  if (bind_path (m->lfd, &addr) == -1) {
    r = errno;
    *what = "bind";
    goto err_free;
  }
  m->bound = true;
  if (chmod (m->path, cfg->mode) == -1) {
    r = errno;
    *what = "chmod";
    goto err_free;
  }
  if (listen (m->lfd, METRICS_BACKLOG) == -1) {
    r = errno;
    *what = "listen";
    goto err_free;
  }

  ev_set_userdata (m->loop, m);
  ev_io_init (&m->listen_w, listen_cb, m->lfd, EV_READ);
  ev_io_start (m->loop, &m->listen_w);
  ev_timer_init (&m->retry_w, retry_cb, 1., 0.);
  ev_async_init (&m->stop_w, stop_cb);
  ev_async_start (m->loop, &m->stop_w);

  r = thread_start_nosignals (&m->thread, metrics_main, m);
  if (r != 0) {
    *what = "pthread_create";
    goto err_free;
  }
  m->started = true;
  mlog (m, "metrics: serving on %s", m->path);
  return m;

err_free:
  metrics_free (m);
  *err = -r;
  return NULL;
}

void
metrics_stop (struct metrics *m)
{
  if (m == NULL)
    return;
  if (m->started) {
    ev_async_send (m->loop, &m->stop_w);
    pthread_join (m->thread, NULL);
    m->started = false;
  }
  mlog (m, "metrics: %" PRIu64 " answers served, closing %s", m->served,
        m->path);
  metrics_free (m);
}
