/* crash-check: crash-consistency checker for the subpage plugin.
 *
 * What it proves.  The flush contract (DESIGN.md invariant 6): once a
 * FLUSH has succeeded, every write whose reply arrived before that
 * flush was sent is in the backend.  Each cycle starts nbdkit with the
 * plugin on an image file (the one the previous cycle left), opens
 * several connections (one thread and one libnbd handle each, several
 * requests in flight per handle), issues random writes (1 byte to
 * 1 MiB, unaligned, overlapping across connections) and now and then a
 * flush, then kills the server with SIGKILL at a random moment and
 * checks every byte of the image file.  SIGKILL does not lose the
 * kernel's page cache, so this checks that acknowledged and flushed
 * data reached the backend file, which is exactly the cache's promise;
 * power loss (fdatasync) is not tested here.
 *
 * Ordering.  One logical clock (an atomic counter) stamps events:
 *   w->issue  taken before the write is handed to libnbd (earlier than
 *             the real send),
 *   w->ack    taken in the completion callback (later than the real
 *             reply), UNACKED if no successful reply came,
 *   f->sent   taken before the flush is handed to libnbd.
 * Both errors of the stamps only ever widen the set of accepted values,
 * so the check has no false alarms.  F is the largest f->sent of the
 * flushes that succeeded.  A write is COVERED when w->ack < F (any
 * connection: the plugin advertises multi-conn).  Writes issued before
 * F but acknowledged after it are not covered.
 *
 * The rule, per byte b of the image:
 *   M = the covered write touching b with the largest issue stamp.
 *   Accepted values: the initial content of b (what the image held at
 *   the start of the cycle) if no covered write touches b; the value of
 *   any covered write X touching b that M did not supersede (X->ack >
 *   M->issue: M itself and writes in flight when M was issued); the
 *   value of any write touching b that is not covered.
 *   Anything else (older data, zeroes, bytes of a write that never
 *   touched b) is an inconsistency, printed with the offset, the
 *   accepted candidates and what was found.
 *
 * Payload.  Every byte is traceable: a write's payload is cut into
 * 16-byte records aligned on absolute image offsets, and the record at
 * offset R written by write ID from connection C is
 *   bytes 0-7   R ^ (ID * golden ratio)    (le64)
 *   bytes 8-11  ID                          (le32)
 *   byte  12    C
 *   bytes 13-15 a hash of R, ID and C
 * so a record found intact names its write, and any byte's expected
 * value under a given write is computable.  Write ids are unique over
 * the whole run (the initial pattern is ID 0, connection 0xff).
 *
 * Bookkeeping.  covm[b] (uint32 per byte) holds 1 + the index of M in
 * the covered writes sorted by issue stamp, painted in that order.
 * Most bytes match M or the initial content; the rest are decoded from
 * their record, or checked against the writes that start within 1 MiB
 * before them (binary search in the writes sorted by offset).
 *
 * Modes: --cycles N (kill cycles), --soak (until SIGINT, or --seconds),
 * --no-kill (one cycle, no SIGKILL: drain, final flush, SIGTERM; the
 * stress run for ThreadSanitizer), --backend file|nbd (nbd: the plugin's
 * uri= in front of an nbdkit file plugin serving the image; skips with
 * exit 77 if the plugin has no uri= parameter).
 *
 * nbdkit runs with the environment of the caller plus, for nbdkit only,
 * LD_PRELOAD=$NBDKIT_PRELOAD, ASAN_OPTIONS=$NBDKIT_ASAN_OPTIONS,
 * UBSAN_OPTIONS=$NBDKIT_UBSAN_OPTIONS, TSAN_OPTIONS=$NBDKIT_TSAN_OPTIONS
 * (those set), as tests/functions.sh does.
 *
 * Exit status: 0 consistent, 1 inconsistency or error, 77 skipped.
 */

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <libnbd.h>

#define KiB 1024u
#define MiB (1024u * KiB)
#define MAX_WRITE MiB
#define REC 16u
#define UNACKED UINT64_MAX
#define INIT_ID 0u
#define INIT_CONN 0xffu

/* ---- options ------------------------------------------------------- */

static const char *plugin_path;
static const char *image_path;
static const char *server_log;
static const char *backend = "file";
static uint64_t image_size = 64 * MiB;
static unsigned cycles = 20;
static unsigned nconns = 4;
static unsigned qdepth = 4;
static unsigned min_ms = 100, max_ms = 1500;
static unsigned flush_pct = 3; /* % of requests that are flushes */
static unsigned long long seed;
static bool soak, no_kill, verbose;
static unsigned seconds;
static char **fixed_args; /* after "--": plugin parameters */
static int nfixed;

static volatile sig_atomic_t interrupted;

/* ---- logical clock, records ---------------------------------------- */

static _Atomic uint64_t clock_now;

static uint64_t
tick (void)
{
  return atomic_fetch_add (&clock_now, 1) + 1;
}

struct wrec {
  uint64_t off;
  uint32_t len;
  uint32_t id;
  uint8_t conn;
  uint64_t issue;
  _Atomic uint64_t ack; /* UNACKED unless a successful reply came */
};

struct frec {
  uint64_t sent;
  _Atomic uint64_t done; /* 0: no successful reply */
};

/* This cycle's writes and flushes; slots are claimed atomically. */
static struct wrec *writes;
static size_t max_writes = 1u << 20;
static _Atomic size_t nwrites;
static struct frec *flushes;
static size_t max_flushes = 1u << 18;
static _Atomic size_t nflushes;
static _Atomic uint64_t last_flush; /* F: max sent of successful flushes */
static uint32_t first_id = 1;       /* id of this cycle's writes[0] */
static atomic_bool stop;

/* Run totals. */
static uint64_t t_cycles, t_writes, t_acked, t_covered, t_flushes, t_flushes_ok,
  t_bytes, t_bad_bytes, t_bad_ranges;

/* ---- payload ------------------------------------------------------- */

static uint64_t
mix64 (uint64_t x)
{
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  x ^= x >> 33;
  return x;
}

static void
make_record (uint8_t rec[REC], uint32_t id, uint8_t conn, uint64_t roff)
{
  uint64_t a = roff ^ ((uint64_t) id * 0x9e3779b97f4a7c15ULL);
  uint64_t h = mix64 (roff * 31 + ((uint64_t) id << 8) + conn);
  int i;

  for (i = 0; i < 8; i++)
    rec[i] = a >> (8 * i);
  for (i = 0; i < 4; i++)
    rec[8 + i] = id >> (8 * i);
  rec[12] = conn;
  rec[13] = h;
  rec[14] = h >> 8;
  rec[15] = h >> 16;
}

/* The value of byte OFF in a write by (ID, CONN). */
static uint8_t
payload_byte (uint32_t id, uint8_t conn, uint64_t off)
{
  uint8_t rec[REC];

  make_record (rec, id, conn, off & ~(uint64_t) (REC - 1));
  return rec[off & (REC - 1)];
}

static void
fill_payload (uint8_t *buf, uint32_t id, uint8_t conn, uint64_t off,
              uint32_t len)
{
  uint64_t r = off & ~(uint64_t) (REC - 1);
  uint8_t rec[REC];

  for (; r < off + len; r += REC) {
    uint64_t s = r < off ? off : r;
    uint64_t e = r + REC > off + len ? off + len : r + REC;

    make_record (rec, id, conn, r);
    memcpy (buf + (s - off), rec + (s - r), e - s);
  }
}

/* If the record around OFF in IMG is intact, return its write id. */
static bool
decode_record (const uint8_t *img, uint64_t off, uint32_t *id, uint8_t *conn)
{
  uint64_t r = off & ~(uint64_t) (REC - 1);
  uint8_t rec[REC];

  if (r + REC > image_size)
    return false;
  *id = img[r + 8] | img[r + 9] << 8 | img[r + 10] << 16 |
        (uint32_t) img[r + 11] << 24;
  *conn = img[r + 12];
  make_record (rec, *id, *conn, r);
  return memcmp (rec, img + r, REC) == 0;
}

/* ---- random numbers (per thread) ----------------------------------- */

static uint64_t
rnd (uint64_t *s)
{
  /* splitmix64 */
  uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

static uint64_t
rnd_range (uint64_t *s, uint64_t lo, uint64_t hi) /* [lo, hi] */
{
  return lo + rnd (s) % (hi - lo + 1);
}

/* 1 byte .. 1 MiB, log-uniform, with extra weight on sector sizes. */
static uint32_t
rnd_len (uint64_t *s)
{
  switch (rnd (s) % 8) {
  case 0: return 512 * rnd_range (s, 1, 8);
  case 1: return rnd_range (s, 1, 16);
  default: {
    unsigned bits = rnd_range (s, 0, 20);
    uint32_t len = (uint32_t) rnd_range (s, 1u << bits >> 1, 1u << bits);
    return len ? len : 1;
  }
  }
}

/* ---- files --------------------------------------------------------- */

static void
die (const char *what)
{
  fprintf (stderr, "crash-check: %s: %s\n", what, strerror (errno));
  exit (1);
}

static void
read_image (uint8_t *buf)
{
  int fd = open (image_path, O_RDONLY);
  uint64_t done = 0;

  if (fd == -1)
    die (image_path);
  while (done < image_size) {
    ssize_t r = pread (fd, buf + done, image_size - done, done);
    if (r == -1)
      die ("pread");
    if (r == 0) {
      fprintf (stderr, "crash-check: %s: shorter than %" PRIu64 "\n",
               image_path, image_size);
      exit (1);
    }
    done += r;
  }
  close (fd);
}

static void
init_image (void)
{
  uint8_t *buf = malloc (MiB);
  int fd = open (image_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  uint64_t off;

  if (fd == -1)
    die (image_path);
  if (buf == NULL)
    die ("malloc");
  for (off = 0; off < image_size; off += MiB) {
    uint32_t len = image_size - off < MiB ? image_size - off : MiB;
    fill_payload (buf, INIT_ID, INIT_CONN, off, len);
    if (pwrite (fd, buf, len, off) != (ssize_t) len)
      die ("pwrite");
  }
  if (close (fd) == -1)
    die ("close");
  free (buf);
}

/* ---- servers ------------------------------------------------------- */

static void
sleep_ms (unsigned ms)
{
  struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
  while (nanosleep (&ts, &ts) == -1 && errno == EINTR && !interrupted)
    ;
}

static double
now_s (void)
{
  struct timespec ts;
  clock_gettime (CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Starts nbdkit with ARGV (NULL-terminated, without "nbdkit") in the
 * foreground, as our child, with the nbdkit-only environment.
 */
static pid_t
spawn_nbdkit_out (char **argv, int out_fd)
{
  static const char *envmap[][2] = {
    { "NBDKIT_PRELOAD", "LD_PRELOAD" },
    { "NBDKIT_ASAN_OPTIONS", "ASAN_OPTIONS" },
    { "NBDKIT_UBSAN_OPTIONS", "UBSAN_OPTIONS" },
    { "NBDKIT_TSAN_OPTIONS", "TSAN_OPTIONS" },
  };
  pid_t pid = fork ();
  size_t i;

  if (pid == -1)
    die ("fork");
  if (pid > 0)
    return pid;

  for (i = 0; i < sizeof envmap / sizeof envmap[0]; i++) {
    const char *v = getenv (envmap[i][0]);
    if (v && *v)
      setenv (envmap[i][1], v, 1);
  }
  if (out_fd >= 0 && dup2 (out_fd, 1) == -1)
    _exit (126);
  if (server_log) {
    int fd = open (server_log, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd == -1 || dup2 (fd, 2) == -1)
      _exit (126);
    close (fd);
  }
  execvp ("nbdkit", argv);
  fprintf (stderr, "crash-check: exec nbdkit: %s\n", strerror (errno));
  _exit (127);
}

static pid_t
spawn_nbdkit (char **argv)
{
  return spawn_nbdkit_out (argv, -1);
}

/* Connects to SOCK, retrying while PID is alive (up to 60 s). */
static struct nbd_handle *
connect_retry (const char *sock, pid_t pid)
{
  double deadline = now_s () + 60;

  for (;;) {
    struct nbd_handle *h = nbd_create ();
    int status;

    if (h == NULL) {
      fprintf (stderr, "crash-check: nbd_create: %s\n", nbd_get_error ());
      exit (1);
    }
    if (nbd_connect_unix (h, sock) == 0)
      return h;
    nbd_close (h);
    if (waitpid (pid, &status, WNOHANG) == pid) {
      fprintf (stderr,
               "crash-check: nbdkit (PID %d) exited before "
               "accepting connections (status 0x%x)\n",
               (int) pid, status);
      exit (1);
    }
    if (now_s () > deadline) {
      fprintf (stderr, "crash-check: cannot connect to %s: %s\n", sock,
               nbd_get_error ());
      kill (pid, SIGKILL);
      waitpid (pid, NULL, 0);
      exit (1);
    }
    sleep_ms (20);
  }
}

/* SIGTERM PID and wait; returns its wait status. */
static int
stop_pid (pid_t pid)
{
  int status;

  kill (pid, SIGTERM);
  if (waitpid (pid, &status, 0) == -1)
    die ("waitpid");
  return status;
}

/* Does the plugin take uri=?  `nbdkit PLUGIN --help` prints its
 * config_help, one parameter per line.  (Run like the server, with the
 * nbdkit-only environment: a sanitized plugin needs its runtime.)
 */
static bool
plugin_has_uri (void)
{
  char *argv[] = { "nbdkit", (char *) plugin_path, "--help", NULL };
  char line[512];
  bool found = false;
  int fds[2], status;
  pid_t pid;
  FILE *p;

  if (pipe (fds) == -1)
    die ("pipe");
  pid = spawn_nbdkit_out (argv, fds[1]);
  close (fds[1]);
  p = fdopen (fds[0], "r");
  if (p == NULL)
    die ("fdopen");
  while (fgets (line, sizeof line, p))
    if (strncmp (line, "uri=", 4) == 0)
      found = true;
  fclose (p);
  if (waitpid (pid, &status, 0) == -1)
    die ("waitpid");
  if (!WIFEXITED (status) || WEXITSTATUS (status) != 0) {
    fprintf (stderr, "crash-check: nbdkit %s --help failed (status 0x%x)\n",
             plugin_path, status);
    exit (1);
  }
  return found;
}

/* ---- clients ------------------------------------------------------- */

struct wctx {
  struct wrec *w;
  void *buf;
};

static int
write_done (void *user_data, int *error)
{
  struct wctx *c = user_data;

  if (*error == 0)
    atomic_store (&c->w->ack, tick ());
  return 1;
}

static void
write_free (void *user_data)
{
  struct wctx *c = user_data;

  free (c->buf);
  free (c);
}

static int
flush_done (void *user_data, int *error)
{
  struct frec *f = user_data;

  if (*error == 0) {
    uint64_t old = atomic_load (&last_flush);

    atomic_store (&f->done, tick ());
    while (old < f->sent &&
           !atomic_compare_exchange_weak (&last_flush, &old, f->sent))
      ;
  }
  return 1;
}

struct conn {
  struct nbd_handle *h;
  unsigned idx;
  uint64_t rng;
  pthread_t thread;
};

/* Issues one request on CN.  Returns false when the handle is dead or
 * the record arrays are full.
 */
static bool
issue (struct conn *cn)
{
  if (rnd (&cn->rng) % 100 < flush_pct) {
    size_t i = atomic_fetch_add (&nflushes, 1);
    struct frec *f;

    if (i >= max_flushes)
      return false;
    f = &flushes[i];
    f->sent = tick ();
    if (nbd_aio_flush (
          cn->h,
          (nbd_completion_callback){ .callback = flush_done, .user_data = f },
          0) == -1)
      return false;
  } else {
    size_t i = atomic_fetch_add (&nwrites, 1);
    struct wctx *c;
    struct wrec *w;

    if (i >= max_writes)
      return false;
    w = &writes[i];
    w->len = rnd_len (&cn->rng);
    w->off = rnd_range (&cn->rng, 0, image_size - w->len);
    w->id = first_id + i;
    w->conn = cn->idx;
    c = malloc (sizeof *c);
    if (c == NULL || (c->buf = malloc (w->len)) == NULL)
      die ("malloc");
    c->w = w;
    fill_payload (c->buf, w->id, w->conn, w->off, w->len);
    w->issue = tick ();
    if (nbd_aio_pwrite (cn->h, c->buf, w->len, w->off,
                        (nbd_completion_callback){ .callback = write_done,
                                                   .user_data = c,
                                                   .free = write_free },
                        0) == -1)
      return false;
  }
  return true;
}

static void *
conn_thread (void *arg)
{
  struct conn *cn = arg;

  while (!atomic_load (&stop)) {
    while (nbd_aio_in_flight (cn->h) < (int) qdepth && !atomic_load (&stop))
      if (!issue (cn))
        return NULL;
    if (nbd_poll (cn->h, -1) == -1)
      return NULL;
  }
  /* Stopped without a kill: let the requests in flight finish. */
  while (nbd_aio_in_flight (cn->h) > 0)
    if (nbd_poll (cn->h, -1) == -1)
      return NULL;
  return NULL;
}

/* ---- verification -------------------------------------------------- */

static uint8_t *base, *found;
static uint32_t *covm;
static struct wrec **cov_sorted, **off_sorted;
static size_t ncov, nw;

static bool
is_covered (const struct wrec *w, uint64_t F)
{
  uint64_t a = atomic_load (&w->ack);
  return a != UNACKED && a < F;
}

static int
cmp_issue (const void *a, const void *b)
{
  const struct wrec *x = *(struct wrec *const *) a;
  const struct wrec *y = *(struct wrec *const *) b;
  return x->issue < y->issue ? -1 : x->issue > y->issue;
}

static int
cmp_off (const void *a, const void *b)
{
  const struct wrec *x = *(struct wrec *const *) a;
  const struct wrec *y = *(struct wrec *const *) b;
  return x->off < y->off ? -1 : x->off > y->off;
}

/* May write X account for byte B?  X touches B. */
static bool
write_allowed (const struct wrec *x, uint64_t b, uint64_t F)
{
  const struct wrec *m;

  if (!is_covered (x, F))
    return true;
  m = cov_sorted[covm[b] - 1]; /* exists: x is covered */
  return atomic_load (&x->ack) > m->issue;
}

static const struct wrec *
write_by_id (uint32_t id)
{
  if (id < first_id || id - first_id >= nw)
    return NULL;
  return &writes[id - first_id];
}

/* Calls FN for each write touching B (those starting within MAX_WRITE
 * before it); stops when FN returns true.
 */
static bool
for_each_touching (uint64_t b,
                   bool (*fn) (const struct wrec *, uint64_t, void *),
                   void *arg)
{
  size_t lo = 0, hi = nw;

  /* first index with off > b */
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    if (off_sorted[mid]->off <= b)
      lo = mid + 1;
    else
      hi = mid;
  }
  while (lo-- > 0) {
    const struct wrec *x = off_sorted[lo];
    if (x->off + MAX_WRITE <= b)
      break;
    if (x->off + x->len > b && fn (x, b, arg))
      return true;
  }
  return false;
}

struct match_arg {
  uint8_t v;
  uint64_t F;
};

static bool
match_fn (const struct wrec *x, uint64_t b, void *arg)
{
  struct match_arg *a = arg;
  return payload_byte (x->id, x->conn, b) == a->v && write_allowed (x, b, a->F);
}

static bool
print_fn (const struct wrec *x, uint64_t b, void *arg)
{
  uint64_t F = *(uint64_t *) arg;
  uint64_t ack = atomic_load (&x->ack);
  char acked[32] = "never";

  if (!write_allowed (x, b, F))
    return false;
  if (ack != UNACKED)
    snprintf (acked, sizeof acked, "%" PRIu64, ack);
  printf ("    write id %" PRIu32 " conn %u [%" PRIu64 ", +%" PRIu32
          ") issued %" PRIu64 " acked %s, %s: 0x%02x\n",
          x->id, x->conn, x->off, x->len, x->issue, acked,
          is_covered (x, F) ? "covered" : "not covered",
          payload_byte (x->id, x->conn, b));
  return false;
}

static void
report (uint64_t b, uint64_t F)
{
  uint32_t id;
  uint8_t conn;

  printf ("crash-check: INCONSISTENT byte at offset %" PRIu64 " (0x%" PRIx64
          "): found 0x%02x",
          b, b, found[b]);
  if (decode_record (found, b, &id, &conn)) {
    const struct wrec *x = write_by_id (id);
    if (id == INIT_ID)
      printf (" (the initial pattern)");
    else if (x)
      printf (" (from write id %" PRIu32 " conn %u [%" PRIu64 ", +%" PRIu32
              ") of this cycle)",
              id, conn, x->off, x->len);
    else
      printf (" (from write id %" PRIu32 " conn %u of an earlier "
              "cycle)",
              id, conn);
  } else
    printf (" (record not intact)");
  printf ("\n  last successful flush sent at %" PRIu64 "; accepted values:\n",
          F);
  if (covm[b] == 0)
    printf ("    initial content (no covered write): 0x%02x\n", base[b]);
  for_each_touching (b, print_fn, &F);
}

/* Returns the number of inconsistent bytes. */
static uint64_t
verify (uint64_t F)
{
  uint64_t b, bad = 0, ranges = 0, printed = 0;
  bool prev_bad = false;
  size_t i;

  nw = atomic_load (&nwrites);
  if (nw > max_writes)
    nw = max_writes;
  ncov = 0;
  for (i = 0; i < nw; i++) {
    off_sorted[i] = &writes[i];
    if (is_covered (&writes[i], F))
      cov_sorted[ncov++] = &writes[i];
  }
  qsort (cov_sorted, ncov, sizeof *cov_sorted, cmp_issue);
  qsort (off_sorted, nw, sizeof *off_sorted, cmp_off);

  memset (covm, 0, image_size * sizeof *covm);
  for (i = 0; i < ncov; i++) {
    const struct wrec *w = cov_sorted[i];
    for (b = w->off; b < w->off + w->len; b++)
      covm[b] = i + 1;
  }

  read_image (found);
  for (b = 0; b < image_size; b++) {
    uint8_t v = found[b];
    bool ok = false;

    if (covm[b] == 0)
      ok = v == base[b];
    else {
      const struct wrec *m = cov_sorted[covm[b] - 1];
      ok = v == payload_byte (m->id, m->conn, b);
    }
    if (!ok) {
      uint32_t id;
      uint8_t conn;
      const struct wrec *x;

      if (decode_record (found, b, &id, &conn) &&
          (x = write_by_id (id)) != NULL && x->off <= b && b < x->off + x->len)
        ok = write_allowed (x, b, F);
    }
    if (!ok) {
      struct match_arg a = { v, F };
      ok = for_each_touching (b, match_fn, &a);
    }
    if (!ok) {
      bad++;
      if (!prev_bad)
        ranges++;
      if (!prev_bad && printed++ < 10)
        report (b, F);
    }
    prev_bad = !ok;
  }
  if (bad)
    printf ("crash-check: %" PRIu64 " inconsistent bytes in %" PRIu64
            " ranges\n",
            bad, ranges);
  t_bad_ranges += ranges;
  return bad;
}

/* ---- cycles -------------------------------------------------------- */

static const char *
pick (uint64_t *s, const char *const *v, size_t n)
{
  return v[rnd (s) % n];
}
#define PICK(s, v) pick (s, v, sizeof v / sizeof v[0])

/* One cycle.  Returns the number of inconsistent bytes. */
static uint64_t
run_cycle (unsigned cycle, const char *dir)
{
  static const char *const caches[] = { "1M", "4M", "16M", "64M" };
  static const char *const pages[] = { "4K", "64K", "64K", "256K" };
  static const char *const sectors[] = { "512", "512", "4K" };
  static const char *const expires[] = { "20", "200", "5000" };
  static const char *const intervals[] = { "10", "100", "500" };
  static const char *const threads[] = { "1", "2", "4" };
  char sock[PATH_MAX], bsock[PATH_MAX], uri[PATH_MAX + 32];
  char a_file[PATH_MAX + 8], a[7][64];
  char *argv[32 + nfixed];
  uint64_t s = seed * 1000003 + cycle, F, bad, nacked = 0;
  struct conn *cn = calloc (nconns, sizeof *cn);
  pid_t pid, bpid = 0;
  unsigned i, ms;
  int n = 0, status;
  size_t k, nf, nf_ok = 0;
  bool killed = false;

  if (cn == NULL)
    die ("calloc");
  snprintf (sock, sizeof sock, "%s/nbd.sock", dir);
  snprintf (bsock, sizeof bsock, "%s/backend.sock", dir);
  unlink (sock);

  read_image (base);
  atomic_store (&nwrites, 0);
  atomic_store (&nflushes, 0);
  atomic_store (&last_flush, 0);
  atomic_store (&stop, false);
  memset (writes, 0, max_writes * sizeof *writes);
  for (k = 0; k < max_writes; k++)
    atomic_store (&writes[k].ack, UNACKED);
  memset (flushes, 0, max_flushes * sizeof *flushes);

  if (strcmp (backend, "nbd") == 0) {
    char *bargv[] = { "nbdkit", "-f", "--exit-with-parent", "-U", bsock, "file",
                      a_file,   NULL };
    unlink (bsock);
    snprintf (a_file, sizeof a_file, "file=%s", image_path);
    bpid = spawn_nbdkit (bargv);
    nbd_close (connect_retry (bsock, bpid));
    snprintf (uri, sizeof uri, "uri=nbd+unix:///?socket=%s", bsock);
  } else
    snprintf (uri, sizeof uri, "file=%s", image_path);

  argv[n++] = "nbdkit";
  argv[n++] = "-f";
  argv[n++] = "--exit-with-parent";
  argv[n++] = "-U";
  argv[n++] = sock;
  argv[n++] = (char *) plugin_path;
  argv[n++] = uri;
  if (nfixed) {
    for (i = 0; i < (unsigned) nfixed; i++)
      argv[n++] = fixed_args[i];
  } else {
    const char *page = PICK (&s, pages);
    const char *sect = PICK (&s, sectors);
    const char *csize = PICK (&s, caches);
    /* The cache must hold 8 pages (CACHE_MIN_PAGES). */
    if (strcmp (page, "256K") == 0 && strcmp (csize, "1M") == 0)
      csize = "4M";
    snprintf (a[0], sizeof a[0], "cache-size=%s", csize);
    snprintf (a[1], sizeof a[1], "page-size=%s", page);
    snprintf (a[2], sizeof a[2], "sector-size=%s", sect);
    snprintf (a[3], sizeof a[3], "dirty-expire-ms=%s", PICK (&s, expires));
    snprintf (a[4], sizeof a[4], "dirty-writeback-ms=%s", PICK (&s, intervals));
    snprintf (a[5], sizeof a[5], "writeback-threads=%s", PICK (&s, threads));
    snprintf (a[6], sizeof a[6], "dirty-ratio=%u",
              (unsigned) rnd_range (&s, 20, 60));
    for (i = 0; i < 7; i++)
      argv[n++] = a[i];
  }
  argv[n] = NULL;

  pid = spawn_nbdkit (argv);
  for (i = 0; i < nconns; i++) {
    cn[i].h = connect_retry (sock, pid);
    cn[i].idx = i;
    cn[i].rng = mix64 (s + i + 1);
  }
  if (!nbd_can_multi_conn (cn[0].h)) {
    fprintf (stderr, "crash-check: the server does not advertise "
                     "multi-conn\n");
    exit (1);
  }
  for (i = 0; i < nconns; i++)
    if (pthread_create (&cn[i].thread, NULL, conn_thread, &cn[i]) != 0)
      die ("pthread_create");

  ms = rnd_range (&s, min_ms, max_ms);
  sleep_ms (ms);
  if (!no_kill) {
    kill (pid, SIGKILL);
    if (waitpid (pid, &status, 0) == -1)
      die ("waitpid");
    killed = WIFSIGNALED (status) && WTERMSIG (status) == SIGKILL;
    /* A ^C of --soak from a terminal reaches nbdkit too. */
    if (!killed && !interrupted) {
      fprintf (stderr,
               "crash-check: nbdkit had already exited (status "
               "0x%x) before SIGKILL\n",
               status);
      exit (1);
    }
  }
  atomic_store (&stop, true);
  for (i = 0; i < nconns; i++)
    pthread_join (cn[i].thread, NULL);

  if (no_kill) {
    /* Everything is acknowledged: one last flush covers it all. */
    struct frec *f = &flushes[atomic_fetch_add (&nflushes, 1)];
    int err = 0;

    f->sent = tick ();
    if (nbd_flush (cn[0].h, 0) == -1) {
      fprintf (stderr, "crash-check: final flush: %s\n", nbd_get_error ());
      exit (1);
    }
    flush_done (f, &err);
    for (i = 0; i < nconns; i++)
      nbd_shutdown (cn[i].h, 0);
  }
  for (i = 0; i < nconns; i++)
    nbd_close (cn[i].h);
  if (no_kill) {
    status = stop_pid (pid);
    if (!WIFEXITED (status) || WEXITSTATUS (status) != 0) {
      fprintf (stderr,
               "crash-check: nbdkit exited with status 0x%x "
               "after SIGTERM\n",
               status);
      exit (1);
    }
  }
  if (bpid) {
    /* The backend may still be writing requests of the dead server. */
    status = stop_pid (bpid);
    if (!WIFEXITED (status) || WEXITSTATUS (status) != 0) {
      fprintf (stderr,
               "crash-check: backend nbdkit exited with status "
               "0x%x\n",
               status);
      exit (1);
    }
  }

  F = atomic_load (&last_flush);
  nf = atomic_load (&nflushes);
  if (nf > max_flushes)
    nf = max_flushes;
  for (k = 0; k < nf; k++)
    nf_ok += atomic_load (&flushes[k].done) != 0;
  bad = verify (F);
  for (k = 0; k < nw; k++)
    nacked += atomic_load (&writes[k].ack) != UNACKED;

  printf ("cycle %u: %s after %u ms: %zu writes (%" PRIu64 " acked, %zu "
          "covered by the last flush), %zu flushes (%zu ok), %" PRIu64
          " bytes verified, %" PRIu64 " inconsistent\n",
          cycle, killed ? "SIGKILL" : "SIGTERM", ms, nw, nacked, ncov, nf,
          nf_ok, image_size, bad);
  if (verbose || bad) {
    printf ("  nbdkit");
    for (i = 1; argv[i]; i++)
      printf (" %s", argv[i]);
    printf ("\n");
  }
  fflush (stdout);

  t_cycles++;
  t_writes += nw;
  t_acked += nacked;
  t_covered += ncov;
  t_flushes += nf;
  t_flushes_ok += nf_ok;
  t_bytes += image_size;
  t_bad_bytes += bad;
  first_id += nw;
  free (cn);
  return bad;
}

/* ---- main ---------------------------------------------------------- */

static uint64_t
parse_size (const char *s)
{
  char *end;
  unsigned long long v = strtoull (s, &end, 0);

  switch (*end) {
  case 'k':
  case 'K':
    v *= KiB;
    end++;
    break;
  case 'm':
  case 'M':
    v *= MiB;
    end++;
    break;
  case 'g':
  case 'G':
    v *= 1024ULL * MiB;
    end++;
    break;
  }
  if (*end || v == 0) {
    fprintf (stderr, "crash-check: bad size: %s\n", s);
    exit (1);
  }
  return v;
}

static void
on_sigint (int sig)
{
  (void) sig;
  interrupted = 1;
}

static void
usage (FILE *f)
{
  fprintf (
    f,
    "usage: crash-check --plugin PATH [options] [-- PLUGIN-PARAMS...]\n"
    "  --plugin PATH      the built nbdkit-subpage-plugin.so (required)\n"
    "  --image PATH       image file (re-created with a known pattern;\n"
    "                     default: a file in a new directory under $TMPDIR)\n"
    "  --size SIZE        image size (default 64M; 4 bytes of "
    "bookkeeping/byte)\n"
    "  --backend file|nbd file= or uri= in front of an nbdkit file plugin\n"
    "  --cycles N         kill cycles (default 20)\n"
    "  --soak             run cycles until SIGINT (or --seconds)\n"
    "  --seconds N        stop starting cycles after N seconds\n"
    "  --no-kill          one cycle without SIGKILL: drain, flush, SIGTERM\n"
    "  --seed S           seed for sizes, offsets, timings and parameters\n"
    "  --conns N          connections (threads), default 4\n"
    "  --qd N             requests in flight per connection, default 4\n"
    "  --min-ms/--max-ms  time between start and kill (default 100..1500)\n"
    "  --flush-pct N      %% of requests that are flushes (default 3)\n"
    "  --server-log PATH  append nbdkit's stderr to PATH\n"
    "  --verbose          print every cycle's nbdkit command line\n"
    "Without PLUGIN-PARAMS each cycle picks random cache parameters.\n");
}

int
main (int argc, char **argv)
{
  enum {
    O_PLUGIN = 256,
    O_IMAGE,
    O_SIZE,
    O_BACKEND,
    O_CYCLES,
    O_SOAK,
    O_SECONDS,
    O_NOKILL,
    O_SEED,
    O_CONNS,
    O_QD,
    O_MINMS,
    O_MAXMS,
    O_FLUSHPCT,
    O_LOG,
    O_VERBOSE,
    O_HELP
  };
  static const struct option opts[] = {
    { "plugin", required_argument, NULL, O_PLUGIN },
    { "image", required_argument, NULL, O_IMAGE },
    { "size", required_argument, NULL, O_SIZE },
    { "backend", required_argument, NULL, O_BACKEND },
    { "cycles", required_argument, NULL, O_CYCLES },
    { "soak", no_argument, NULL, O_SOAK },
    { "seconds", required_argument, NULL, O_SECONDS },
    { "no-kill", no_argument, NULL, O_NOKILL },
    { "seed", required_argument, NULL, O_SEED },
    { "conns", required_argument, NULL, O_CONNS },
    { "qd", required_argument, NULL, O_QD },
    { "min-ms", required_argument, NULL, O_MINMS },
    { "max-ms", required_argument, NULL, O_MAXMS },
    { "flush-pct", required_argument, NULL, O_FLUSHPCT },
    { "server-log", required_argument, NULL, O_LOG },
    { "verbose", no_argument, NULL, O_VERBOSE },
    { "help", no_argument, NULL, O_HELP },
    { NULL, 0, NULL, 0 },
  };
  char dir[PATH_MAX] = "", img[PATH_MAX + 16];
  bool have_seed = false;
  uint64_t bad = 0;
  double start;
  unsigned c;
  int o;

  while ((o = getopt_long (argc, argv, "", opts, NULL)) != -1) {
    switch (o) {
    case O_PLUGIN: plugin_path = optarg; break;
    case O_IMAGE: image_path = optarg; break;
    case O_SIZE: image_size = parse_size (optarg); break;
    case O_BACKEND: backend = optarg; break;
    case O_CYCLES: cycles = atoi (optarg); break;
    case O_SOAK: soak = true; break;
    case O_SECONDS: seconds = atoi (optarg); break;
    case O_NOKILL: no_kill = true; break;
    case O_SEED:
      seed = strtoull (optarg, NULL, 0);
      have_seed = true;
      break;
    case O_CONNS: nconns = atoi (optarg); break;
    case O_QD: qdepth = atoi (optarg); break;
    case O_MINMS: min_ms = atoi (optarg); break;
    case O_MAXMS: max_ms = atoi (optarg); break;
    case O_FLUSHPCT: flush_pct = atoi (optarg); break;
    case O_LOG: server_log = optarg; break;
    case O_VERBOSE: verbose = true; break;
    case O_HELP: usage (stdout); exit (0);
    default: usage (stderr); exit (1);
    }
  }
  fixed_args = argv + optind;
  nfixed = argc - optind;
  if (plugin_path == NULL || nconns < 1 || nconns > 200 || qdepth < 1 ||
      min_ms > max_ms || image_size < MAX_WRITE || image_size % REC ||
      image_size > UINT32_MAX ||
      (strcmp (backend, "file") && strcmp (backend, "nbd"))) {
    usage (stderr);
    exit (1);
  }
  if (strcmp (backend, "nbd") == 0 && !plugin_has_uri ()) {
    printf ("crash-check: SKIP: the plugin has no uri= parameter, so the "
            "nbd backend cannot be tested\n");
    exit (77);
  }
  if (!have_seed)
    seed = (unsigned long long) time (NULL) ^ getpid ();
  printf ("crash-check: seed %llu, backend %s, image %" PRIu64 " bytes, "
          "%u connections x %u in flight\n",
          seed, backend, image_size, nconns, qdepth);

  signal (SIGPIPE, SIG_IGN);
  signal (SIGINT, on_sigint);

  snprintf (dir, sizeof dir, "%s/crash-check.XXXXXX",
            getenv ("TMPDIR") ? getenv ("TMPDIR") : "/tmp");
  if (mkdtemp (dir) == NULL)
    die ("mkdtemp");
  if (image_path == NULL) {
    snprintf (img, sizeof img, "%s/disk.img", dir);
    image_path = img;
  }
  init_image ();

  writes = calloc (max_writes, sizeof *writes);
  flushes = calloc (max_flushes, sizeof *flushes);
  cov_sorted = calloc (max_writes, sizeof *cov_sorted);
  off_sorted = calloc (max_writes, sizeof *off_sorted);
  base = malloc (image_size);
  found = malloc (image_size);
  covm = malloc (image_size * sizeof *covm);
  if (!writes || !flushes || !cov_sorted || !off_sorted || !base || !found ||
      !covm)
    die ("malloc");

  start = now_s ();
  for (c = 1; !interrupted; c++) {
    if (no_kill && c > 1)
      break;
    if (!soak && !no_kill && c > cycles)
      break;
    if (seconds && now_s () - start >= seconds)
      break;
    bad += run_cycle (c, dir);
  }

  printf ("crash-check: %" PRIu64 " %s cycles, %" PRIu64 " writes issued "
          "and checked (%" PRIu64 " acked, %" PRIu64 " covered by a flush), "
          "%" PRIu64 " flushes (%" PRIu64 " ok), %" PRIu64 " bytes verified, "
          "%" PRIu64 " inconsistent bytes in %" PRIu64 " ranges\n",
          t_cycles, no_kill ? "no-kill" : "kill", t_writes, t_acked, t_covered,
          t_flushes, t_flushes_ok, t_bytes, t_bad_bytes, t_bad_ranges);

  if (image_path == img)
    unlink (img);
  {
    char p[PATH_MAX + 16];
    snprintf (p, sizeof p, "%s/nbd.sock", dir);
    unlink (p);
    snprintf (p, sizeof p, "%s/backend.sock", dir);
    unlink (p);
  }
  rmdir (dir);
  return bad ? 1 : 0;
}
