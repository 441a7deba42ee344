/* subpage unit tests: the metrics endpoint (server/metrics.c) over a
 * cache on the fake backend.
 *
 *   render    metrics_render gives every metric from struct cache_stats
 *             with the right value (the flush histogram cumulative, +Inf
 *             equal to _count; build_info's labels escaped), follows
 *             snprintf's contract when the buffer is short, and every
 *             line is HELP, TYPE or a sample;
 *   clients   a plain client (waiting, or shutting down its side), an
 *             HTTP GET of /metrics and a client that sends other bytes
 *             all get the current numbers, matching a fresh
 *             metrics_render; HEAD gets the headers alone, another path
 *             404, another method 405;
 *   stuck     clients that never read or never finish their request do
 *             not delay another client; more clients than the server
 *             serves at once do not hang it;
 *   socket    the socket has the mode asked for and is gone after
 *             metrics_stop; a stale socket file is replaced; a regular
 *             file or a missing directory fails in bind.
 *
 * Threads: the server runs its own thread; the test's clients are
 * plain blocking sockets with a receive timeout, in the test thread.
 */
#undef NDEBUG
/* As in test-wbserver.c: cmocka's leak-checking allocator is not
 * thread-safe, and the server allocates in its own thread.
 */
#undef UNIT_TESTING

#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>
#include <cmocka.h>

#include "helpers.h"
#include "metrics.h"

struct tmetrics {
  struct tcache t;
  struct metrics *m;
  char dir[64];
  char path[128];
};

static int
tm_setup (void **state)
{
  struct tmetrics *tm = calloc (1, sizeof *tm);

  if (!tm)
    return -1;
  atomic_init (&tm->t.kicks, 0);
  strcpy (tm->dir, "/tmp/subpage-test-metrics.XXXXXX");
  if (mkdtemp (tm->dir) == NULL) {
    free (tm);
    return -1;
  }
  snprintf (tm->path, sizeof tm->path, "%s/m.sock", tm->dir);
  *state = tm;
  return 0;
}

static int
tm_teardown (void **state)
{
  struct tmetrics *tm = *state;

  metrics_stop (tm->m);
  if (tm->t.c)
    tc_close (&tm->t);
  unlink (tm->path);
  rmdir (tm->dir);
  free (tm);
  *state = NULL;
  return 0;
}

/* The endpoint's configuration in these tests. */
static struct metrics_config
test_mcfg (const char *path)
{
  return (struct metrics_config){ .path = path,
                                  .mode = 0640,
                                  .version = "1.2.3",
                                  .cache_mode = "writeback",
                                  .backend = "file" };
}

static void
start (struct tmetrics *tm)
{
  struct metrics_config cfg = test_mcfg (tm->path);
  const char *what = NULL;
  int err = 0;

  tm->m = metrics_start (tm->t.c, &cfg, &err, &what);
  if (tm->m == NULL)
    fail_msg ("metrics_start: %s: %s", what, strerror (-err));
}

/* The value of sample NAME (the whole name with labels) in TEXT; fails
 * the test if it is missing.
 */
static double
value_of (const char *text, const char *name)
{
  size_t n = strlen (name);
  const char *p = text;

  while ((p = strstr (p, name)) != NULL) {
    if ((p == text || p[-1] == '\n') && p[n] == ' ')
      return strtod (p + n + 1, NULL);
    p += n;
  }
  fail_msg ("metric %s missing", name);
  return -1;
}

/* Every line is "# HELP subpage_...", "# TYPE subpage_... TYPE" or a
 * sample "subpage_NAME[{...}] VALUE"; counters end in _total.
 */
static void
check_lines (const char *text)
{
  char *copy = strdup (text), *save = NULL, *line;
  unsigned samples = 0;

  assert_non_null (copy);
  assert_true (strlen (text) > 0 && text[strlen (text) - 1] == '\n');
  for (line = strtok_r (copy, "\n", &save); line;
       line = strtok_r (NULL, "\n", &save)) {
    if (strncmp (line, "# HELP subpage_", 15) == 0)
      continue;
    if (strncmp (line, "# TYPE subpage_", 15) == 0) {
      const char *type = strrchr (line, ' ') + 1;
      size_t namelen = type - 1 - (line + 7);

      assert_true (strcmp (type, "counter") == 0 ||
                   strcmp (type, "gauge") == 0 ||
                   strcmp (type, "histogram") == 0);
      if (strcmp (type, "counter") == 0)
        assert_true (namelen > 6 &&
                     strncmp (line + 7 + namelen - 6, "_total", 6) == 0);
      continue;
    }
    if (strncmp (line, "subpage_", 8) != 0)
      fail_msg ("bad line: %s", line);
    {
      const char *sp = strrchr (line, ' ');
      char *end;

      assert_non_null (sp);
      strtod (sp + 1, &end);
      if (*end != '\0' || end == sp + 1)
        fail_msg ("bad value: %s", line);
      bool quoted = false;

      for (const char *c = line; c < sp; c++) {
        if (quoted) { /* a label value: anything, \ escapes */
          if (*c == '\\')
            c++;
          else if (*c == '"')
            quoted = false;
          continue;
        }
        if (*c == '"')
          quoted = true;
        else if (!((*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') ||
                   *c == '_' || *c == '{' || *c == '}' || *c == '=' ||
                   *c == ','))
          fail_msg ("bad name: %s", line);
      }
    }
    samples++;
  }
  assert_true (samples >= 30);
  free (copy);
}

static char *
render_now (struct tmetrics *tm)
{
  struct cache_stats st;
  size_t n;
  struct metrics_config mcfg = test_mcfg (tm->path);
  char *buf;

  cache_get_stats (tm->t.c, &st);
  n = metrics_render (&mcfg, &st, NULL, 0);
  buf = malloc (n + 1);
  assert_non_null (buf);
  assert_int_equal (metrics_render (&mcfg, &st, buf, n + 1), n);
  assert_int_equal (strlen (buf), n);
  return buf;
}

static void
test_render (void **state)
{
  struct tmetrics *tm = *state;
  struct cache_config cfg = test_config ();
  struct metrics_config mcfg = test_mcfg (tm->path);
  struct cache_stats st;
  char small[100], *text;
  size_t n;

  tc_open (&tm->t, &cfg);
  /* 8 KiB dirty, 64 KiB missed then hit, one flush. */
  assert_int_equal (write_pattern (&tm->t, 0, 8 * KiB, 1, 0), 0);
  {
    char *buf = malloc (PG);
    assert_int_equal (cache_read (tm->t.c, buf, PG, 2 * PG), 0);
    assert_int_equal (cache_read (tm->t.c, buf, PG, 2 * PG), 0);
    free (buf);
  }
  text = render_now (tm);
  check_lines (text);
  assert_true (value_of (text, "subpage_dirty_bytes") == 8 * KiB);
  assert_true (value_of (text, "subpage_miss_bytes_total") == PG);
  assert_true (value_of (text, "subpage_hit_bytes_total") == PG);
  /* Renamed: only the byte counts are exported. */
  assert_null (strstr (text, "subpage_hits_total"));
  assert_null (strstr (text, "subpage_misses_total"));
  assert_null (strstr (text, "subpage_flush_seconds_total"));
  assert_non_null (strstr (text, "\nsubpage_build_info{version=\"1.2.3\","
                                 "mode=\"writeback\",backend=\"file\"} 1\n"));
  assert_true (value_of (text, "subpage_backend_read_bytes_total") == PG);
  assert_true (value_of (text, "subpage_flushes_total") == 0);
  free (text);

  assert_int_equal (cache_flush (tm->t.c), 0);
  text = render_now (tm);
  cache_get_stats (tm->t.c, &st);
  assert_true (value_of (text, "subpage_dirty_bytes") == 0);
  assert_true (value_of (text, "subpage_flushes_total") == 1);
  assert_true (value_of (text, "subpage_flush_duration_seconds_count") == 1);
  assert_true (
    value_of (text, "subpage_flush_duration_seconds_bucket{le=\"+Inf\"}") == 1);
  assert_true (
    value_of (text, "subpage_flush_duration_seconds_bucket{le=\"10\"}") == 1);
  assert_true (value_of (text, "subpage_flush_duration_seconds_sum") > 0);
  /* The flush wrote its data back in one run at least; no FUA write, no
   * writer throttled.
   */
  assert_true (
    value_of (text, "subpage_backend_write_duration_seconds_count") >= 1);
  assert_true (
    value_of (text, "subpage_backend_write_duration_seconds_count") ==
    value_of (text, "subpage_writeback_runs_total"));
  assert_true (value_of (text, "subpage_fua_write_duration_seconds_count") ==
               0);
  assert_true (value_of (text, "subpage_throttle_wait_seconds_count") == 0);
  assert_true (value_of (text, "subpage_backend_written_bytes_total") ==
               8 * KiB);
  assert_true (value_of (text, "subpage_backend_flushes_total") == 1);
  assert_true (value_of (text, "subpage_cache_size_bytes") == cfg.cache_size);
  assert_true (value_of (text, "subpage_page_size_bytes") == PG);
  assert_true (value_of (text, "subpage_sector_size_bytes") == SS);
  assert_true (value_of (text, "subpage_export_size_bytes") == cfg.size);
  assert_true (value_of (text, "subpage_pages_capacity") == st.pages_total);
  assert_true (value_of (text, "subpage_pages_resident") == st.pages_resident);
  assert_true (value_of (text, "subpage_metadata_bytes") == st.metadata_bytes);
  assert_true (value_of (text, "subpage_waiting_threads{on=\"flush\"}") == 0);
  assert_true (value_of (text, "subpage_waiting_threads{on=\"idle\"}") == 0);

  /* snprintf's contract: the length is the whole text's; a short
   * buffer gets a NUL-terminated prefix.
   */
  n = strlen (text);
  memset (small, 'x', sizeof small);
  assert_int_equal (metrics_render (&mcfg, &st, small, sizeof small), n);
  assert_int_equal (strlen (small), sizeof small - 1);
  assert_memory_equal (small, text, sizeof small - 1);
  assert_int_equal (metrics_render (&mcfg, &st, small, 0), n);
  free (text);

  /* Exact seconds, cumulative buckets, +Inf = _count. */
  memset (&st.flush_latency, 0, sizeof st.flush_latency);
  st.flush_latency.sum_ns = UINT64_C (12) * 1000000000 + 345;
  st.flush_latency.bucket[0] = 1;                  /* <= 100 us */
  st.flush_latency.bucket[5] = 2;                  /* <= 5 ms */
  st.flush_latency.bucket[CACHE_HIST_BUCKETS] = 3; /* > 10 s */
  st.flush_latency.count = 6;
  text = malloc (n + 100);
  metrics_render (&mcfg, &st, text, n + 100);
  assert_non_null (strstr (text, "\nsubpage_flush_duration_seconds_sum "
                                 "12.000000345\n"));
  assert_non_null (strstr (text, "\nsubpage_flush_duration_seconds_bucket"
                                 "{le=\"0.0001\"} 1\n"));
  assert_non_null (strstr (text, "\nsubpage_flush_duration_seconds_bucket"
                                 "{le=\"0.0025\"} 1\n"));
  assert_non_null (strstr (text, "\nsubpage_flush_duration_seconds_bucket"
                                 "{le=\"0.005\"} 3\n"));
  assert_non_null (strstr (text, "\nsubpage_flush_duration_seconds_bucket"
                                 "{le=\"10\"} 3\n"));
  assert_non_null (strstr (text, "\nsubpage_flush_duration_seconds_bucket"
                                 "{le=\"+Inf\"} 6\n"));
  assert_non_null (strstr (text, "\nsubpage_flush_duration_seconds_count "
                                 "6\n"));
  free (text);

  /* Label values are escaped; no configuration: "unknown". */
  mcfg.version = "a\"b\\c\nd";
  n = metrics_render (&mcfg, &st, NULL, 0);
  text = malloc (n + 1);
  metrics_render (&mcfg, &st, text, n + 1);
  check_lines (text);
  assert_non_null (strstr (text, "{version=\"a\\\"b\\\\c\\nd\","));
  free (text);
  n = metrics_render (NULL, &st, NULL, 0);
  text = malloc (n + 1);
  metrics_render (NULL, &st, text, n + 1);
  assert_non_null (strstr (text, "\nsubpage_build_info{version=\"unknown\","
                                 "mode=\"unknown\",backend=\"unknown\"} 1\n"));
  free (text);

  /* One FUA write: one FUA observation, its data written back in one
   * run more at least.
   */
  {
    double runs;

    text = render_now (tm);
    runs = value_of (text, "subpage_writeback_runs_total");
    free (text);
    assert_int_equal (write_pattern (&tm->t, 3 * PG, 4 * KiB, 2, CACHE_FUA), 0);
    text = render_now (tm);
    check_lines (text);
    assert_true (value_of (text, "subpage_fua_write_duration_seconds_count") ==
                 1);
    assert_true (
      value_of (text,
                "subpage_fua_write_duration_seconds_bucket{le=\"+Inf\"}") == 1);
    assert_true (value_of (text, "subpage_fua_write_duration_seconds_sum") > 0);
    assert_true (value_of (text, "subpage_writeback_runs_total") > runs);
    assert_true (
      value_of (text, "subpage_backend_write_duration_seconds_count") ==
      value_of (text, "subpage_writeback_runs_total"));
    assert_true (value_of (text, "subpage_throttle_wait_seconds_count") == 0);
    free (text);
  }
}

static int
connect_to (const char *path)
{
  struct sockaddr_un addr = { .sun_family = AF_UNIX };
  struct timeval tv = { .tv_sec = 10 };
  int fd = socket (AF_UNIX, SOCK_STREAM, 0);

  assert_true (fd >= 0);
  strcpy (addr.sun_path, path);
  if (connect (fd, (struct sockaddr *) &addr, sizeof addr) == -1)
    fail_msg ("connect %s: %s", path, strerror (errno));
  setsockopt (fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  return fd;
}

/* Reads until EOF; fails on a timeout.  Returns a malloc'd string. */
static char *
read_all (int fd)
{
  size_t len = 0, cap = 65536;
  char *buf = malloc (cap + 1);
  ssize_t r;

  assert_non_null (buf);
  while ((r = read (fd, buf + len, cap - len)) > 0) {
    len += r;
    assert_true (len < cap);
  }
  if (r < 0)
    fail_msg ("read: %s", strerror (errno));
  buf[len] = '\0';
  close (fd);
  return buf;
}

static char *
scrape (const char *path, const char *send_first, bool shut)
{
  int fd = connect_to (path);

  if (send_first)
    assert_int_equal (write (fd, send_first, strlen (send_first)),
                      (ssize_t) strlen (send_first));
  if (shut)
    shutdown (fd, SHUT_WR);
  return read_all (fd);
}

static void
test_clients (void **state)
{
  struct tmetrics *tm = *state;
  struct cache_config cfg = test_config ();
  static const char http_head[] =
    "HTTP/1.0 200 OK\r\n"
    "Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n";
  char *want, *got, *body;

  tc_open (&tm->t, &cfg);
  assert_int_equal (write_pattern (&tm->t, 3 * PG, 4 * KiB, 2, 0), 0);
  start (tm);
  want = render_now (tm); /* nothing runs: stats are stable */

  got = scrape (tm->path, NULL, true);
  assert_string_equal (got, want);
  free (got);

  got = scrape (tm->path, NULL, false); /* after the grace period */
  assert_string_equal (got, want);
  free (got);

  got = scrape (tm->path, "hello\n", false); /* not HTTP: plain */
  assert_string_equal (got, want);
  free (got);

  got = scrape (tm->path, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", false);
  assert_memory_equal (got, http_head, strlen (http_head));
  body = strstr (got, "\r\n\r\n");
  assert_non_null (body);
  assert_string_equal (body + 4, want);
  free (got);

  /* A GET whose headers never end, cut short by EOF: still answered. */
  got = scrape (tm->path, "GET /metrics?x=1 HTTP/1.0\r\n", true);
  assert_memory_equal (got, http_head, strlen (http_head));
  free (got);

  /* HEAD: the same headers, with the body's length, and no body. */
  got = scrape (tm->path, "HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n", false);
  assert_memory_equal (got, http_head, strlen (http_head));
  {
    char cl[64];

    snprintf (cl, sizeof cl, "\r\nContent-Length: %zu\r\n", strlen (want));
    assert_non_null (strstr (got, cl));
  }
  body = strstr (got, "\r\n\r\n");
  assert_non_null (body);
  assert_string_equal (body + 4, "");
  free (got);
  free (want);

  /* Another path: 404; another method: 405; neither gets the metrics. */
  got = scrape (tm->path, "GET / HTTP/1.1\r\nHost: x\r\n\r\n", false);
  assert_memory_equal (got, "HTTP/1.0 404 Not Found\r\n", 24);
  assert_null (strstr (got, "subpage_"));
  free (got);
  got = scrape (tm->path, "HEAD /metricsx HTTP/1.1\r\n\r\n", false);
  assert_memory_equal (got, "HTTP/1.0 404 Not Found\r\n", 24);
  body = strstr (got, "\r\n\r\n");
  assert_non_null (body);
  assert_string_equal (body + 4, "");
  free (got);
  got = scrape (tm->path, "POST /metrics HTTP/1.1\r\n\r\n", false);
  assert_memory_equal (got, "HTTP/1.0 405 Method Not Allowed\r\n", 33);
  assert_non_null (strstr (got, "\r\nAllow: GET, HEAD\r\n"));
  assert_null (strstr (got, "subpage_"));
  free (got);

  /* The numbers follow the cache. */
  assert_int_equal (cache_flush (tm->t.c), 0);
  got = scrape (tm->path, NULL, true);
  assert_true (value_of (got, "subpage_dirty_bytes") == 0);
  assert_true (value_of (got, "subpage_backend_written_bytes_total") ==
               4 * KiB);
  free (got);
}

static void
test_stuck (void **state)
{
  struct tmetrics *tm = *state;
  struct cache_config cfg = test_config ();
  int idle[4], stuck, burst[40];
  unsigned answered = 0;
  uint64_t t0;
  char *got;

  tc_open (&tm->t, &cfg);
  start (tm);
  for (unsigned i = 0; i < 4; i++)
    idle[i] = connect_to (tm->path);
  stuck = connect_to (tm->path);
  assert_int_equal (write (stuck, "GE", 2), 2);

  t0 = now_ms ();
  got = scrape (tm->path, NULL, true);
  /* Answered at once, not after the stuck client's 5 s deadline. */
  assert_true (now_ms () - t0 < 4000);
  assert_non_null (strstr (got, "subpage_dirty_bytes 0\n"));
  free (got);

  /* More at once than the server serves (16): each is answered or
   * closed, none hangs (read_all fails on a 10 s timeout).
   */
  for (unsigned i = 0; i < 40; i++) {
    burst[i] = connect_to (tm->path);
    shutdown (burst[i], SHUT_WR);
  }
  for (unsigned i = 0; i < 40; i++) {
    got = read_all (burst[i]);
    answered += strncmp (got, "# HELP", 6) == 0;
    free (got);
  }
  assert_true (answered >= 1);

  for (unsigned i = 0; i < 4; i++)
    close (idle[i]);
  close (stuck);
  got = scrape (tm->path, NULL, true);
  assert_non_null (strstr (got, "# TYPE subpage_hit_bytes_total counter\n"));
  free (got);
}

static void
test_socket (void **state)
{
  struct tmetrics *tm = *state;
  struct cache_config cfg = test_config ();
  struct metrics_config mc = { .path = tm->path, .mode = 0600 };
  struct stat sb;
  const char *what = NULL;
  char other[160];
  int err = 0, fd;

  tc_open (&tm->t, &cfg);
  start (tm); /* mode 0640 */
  assert_int_equal (lstat (tm->path, &sb), 0);
  assert_true (S_ISSOCK (sb.st_mode));
  assert_int_equal (sb.st_mode & 0777, 0640);

  /* Someone listens there: a second server refuses the path. */
  assert_null (metrics_start (tm->t.c, &mc, &err, &what));
  assert_int_equal (err, -EADDRINUSE);
  assert_string_equal (what, "bind");

  metrics_stop (tm->m);
  tm->m = NULL;
  assert_int_equal (lstat (tm->path, &sb), -1);
  assert_int_equal (errno, ENOENT);

  /* A stale socket file (no listener) is replaced. */
  {
    struct sockaddr_un addr = { .sun_family = AF_UNIX };

    fd = socket (AF_UNIX, SOCK_STREAM, 0);
    strcpy (addr.sun_path, tm->path);
    assert_int_equal (bind (fd, (struct sockaddr *) &addr, sizeof addr), 0);
    close (fd);
  }
  start (tm);
  free (scrape (tm->path, NULL, true));
  metrics_stop (tm->m);
  tm->m = NULL;

  /* A regular file is never replaced. */
  fd = open (tm->path, O_CREAT | O_WRONLY, 0600);
  assert_true (fd >= 0);
  close (fd);
  assert_null (metrics_start (tm->t.c, &mc, &err, &what));
  assert_int_equal (err, -EADDRINUSE);
  assert_string_equal (what, "bind");
  assert_int_equal (lstat (tm->path, &sb), 0);
  assert_true (S_ISREG (sb.st_mode));
  unlink (tm->path);

  /* A missing directory. */
  snprintf (other, sizeof other, "%s/nodir/m.sock", tm->dir);
  mc.path = other;
  assert_null (metrics_start (tm->t.c, &mc, &err, &what));
  assert_int_equal (err, -ENOENT);
  assert_string_equal (what, "bind");
}

int
main (void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test_setup_teardown (test_render, tm_setup, tm_teardown),
    cmocka_unit_test_setup_teardown (test_clients, tm_setup, tm_teardown),
    cmocka_unit_test_setup_teardown (test_stuck, tm_setup, tm_teardown),
    cmocka_unit_test_setup_teardown (test_socket, tm_setup, tm_teardown),
  };

  return cmocka_run_group_tests (tests, NULL, NULL);
}
