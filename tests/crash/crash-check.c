/* crash-check: crash-consistency checker for the subpage plugin.
 *
 * What it proves.  The flush contract (DESIGN.md invariant 6), FUA
 * (invariant 9) and what docs/guarantees.md promises for ZERO, TRIM and
 * reads: once a FLUSH has succeeded, every write, zero and trim whose
 * reply arrived before that flush was sent is in the backend; a write
 * or zero with FUA is there from its reply on; a read returns, byte by
 * byte, what some order of the requests allows, never bytes nobody
 * wrote.  Each cycle starts nbdkit with the plugin on an image file
 * (the one the previous cycle left), opens several connections (one
 * thread and one libnbd handle each, several requests in flight per
 * handle), and races on overlapping ranges across connections (85% of
 * the requests fall into a 256 KiB hot range picked per cycle):
 *   writes    1 byte to 1 MiB, unaligned, some with FUA;
 *   zeroes    NBD_CMD_WRITE_ZEROES, same sizes, with and without
 *             NO_HOLE, with and without FAST_ZERO, some with FUA;
 *   trims     NBD_CMD_TRIM, same sizes, some with FUA;
 *   reads     same sizes, each checked when the cycle ends;
 *   flushes   now and then.
 * Then it kills the server with SIGKILL at a random moment and checks
 * every byte of the image file.  SIGKILL does not lose the kernel's
 * page cache, so this checks that acknowledged and flushed data reached
 * the backend file, which is exactly the cache's promise; power loss
 * (fdatasync) is not tested here.
 *
 * Ordering.  One logical clock (an atomic counter) stamps events:
 *   x->issue  taken before the request is handed to libnbd (earlier
 *             than the real send),
 *   x->reply  taken in the completion callback (later than the real
 *             reply), with the reply's error; NOREPLY if no reply came
 *             (in flight at the kill),
 *   f->sent   taken before a flush is handed to libnbd.
 * Both errors of the stamps only ever widen the set of accepted values,
 * so the check has no false alarms.  F is the largest f->sent of the
 * flushes that succeeded.
 *
 * What each request may leave in a byte b it touches (its "value"):
 *   write   its payload byte;
 *   zero    0;
 *   trim    0, or nothing (b keeps what it held): docs/guarantees.md
 *           promises that a trimmed range reads as zeroes or as the data
 *           it held before.  So a trim adds 0 to the accepted values and
 *           never supersedes anything;
 *   a fast zero that failed with ENOTSUP: nothing at all (it must not
 *           have changed any byte); a request libnbd refused to send:
 *           nothing; any other failed request: its value may be there
 *           (it may have done part of its work), but it supersedes
 *           nothing.
 * A request SUPERSEDES the older ones when it is a write or a zero that
 * succeeded.
 *
 * The rule after the kill, per byte b of the image: a request is
 * COVERED when it succeeded and its reply came before F (any
 * connection: the plugin advertises multi-conn), or when it had FUA and
 * succeeded (durable on reply, without a flush).  M = the covered
 * superseding request touching b with the largest issue stamp.
 * Accepted: the initial content of b (what the image held at the start
 * of the cycle) if there is no M; the value of any request X touching b
 * that M did not supersede (X->reply > M->issue: M itself, requests in
 * flight when M was issued, and every request not covered, since those
 * may have reached the image or not).
 *
 * The rule for a read R, per byte b it returned: Mr = the superseding
 * request touching b whose reply came before R was issued, with the
 * largest issue stamp.  Accepted: the initial content of b if there is
 * no Mr; the value of any request X touching b, issued before R's
 * reply, that Mr did not supersede (X->reply > Mr->issue).  A read
 * that returns bytes no such request wrote (stale data, another
 * request's buffer, uninitialised memory) is an inconsistency.
 *
 * Anything else is an inconsistency, printed with the offset, what was
 * found, M (or Mr) and every request touching the byte with its kind,
 * flags, stamps and whether it is accepted.
 *
 * Payload.  Every byte is traceable: a write's payload is cut into
 * 16-byte records aligned on absolute image offsets, and the record at
 * offset R written by write ID from connection C is
 *   bytes 0-7   R ^ (ID * golden ratio)    (le64)
 *   bytes 8-11  ID                          (le32)
 *   byte  12    C
 *   bytes 13-15 a hash of R, ID and C
 * so a record found intact names its write, and any byte's expected
 * value under a given write is computable.  Request ids are unique over
 * the whole run (the initial pattern is ID 0, connection 0xff).
 *
 * Bookkeeping.  covm[b] (uint32 per byte) holds 1 + the index of M in
 * the covered superseding requests sorted by issue stamp, painted in
 * that order; zok[b] says whether a zero or trim not superseded by M
 * touches b (0 is then accepted).  Most bytes match M, zok or the
 * initial content; the rest are decoded from their record, or checked
 * against the requests that start within 1 MiB before them (binary
 * search in the requests sorted by offset).  A read gets the same maps
 * over its own range.
 *
 * Modes: --cycles N (kill cycles), --soak (until SIGINT, or --seconds),
 * --no-kill (one cycle, no SIGKILL: drain, final flush, SIGTERM; the
 * stress run for ThreadSanitizer), --backend file|nbd|rbd (nbd: the
 * plugin's uri= in front of an nbdkit file plugin serving the image;
 * skips with exit 77 if the plugin has no uri= parameter; rbd: below).  The request mix is set
 * by --read-pct, --zero-pct, --trim-pct, --fua-pct, --flush-pct and
 * --hot-pct; --align N aligns writes, zeroes and trims to N bytes;
 * --cache-pages N forces a cache of N pages (with random page sizes).
 *
 * The rbd backend.  --backend rbd --rbd POOL/IMAGE gives the plugin
 * rbd=POOL/IMAGE (the cluster from $CEPH_CONF, which nbdkit inherits);
 * the image must exist, with the exclusive-lock feature, and be at
 * least --size bytes.  The image file (--image, or the default) is then
 * only a local copy: the initial pattern is written there and loaded
 * into the image, and every read of the image (the initial content of
 * each cycle and the check after the kill) is a fresh librbd client,
 * librbd's cache off, that dumps the image into the file:
 * `RBD-CHECK load|dump POOL/IMAGE FILE` (tests/ceph/rbd-check.py,
 * --rbd-check PATH).  Nothing of the killed nbdkit is read through
 * subpage.  The next cycle's nbdkit waits for the dead one's watch to
 * expire before it takes the lock and blocklists it (the connection is
 * retried meanwhile); the cycle line says how long that took.  A write
 * of the dead process that its OSD applies only after the dump could
 * only be a request without a reply, so it is accepted in this cycle's
 * check; it could make the next cycle's initial content stale, but
 * its bytes were in the OSD's socket before the process exited, long
 * before the dump (a new librbd client connects first) reads them.
 *
 * The journal.  --journal PATH gives the plugin journal=PATH (a new
 * journal, journal-size= from --journal-size) with the run's sector
 * size (a journal refuses another).  After each kill a server is
 * restarted on the same journal (new random cache parameters): it
 * replays the journal, and the whole image is read through it and
 * checked by the rule above (so the flush and FUA promises are kept by
 * the journal, whatever the drainer had written).  That server serves
 * the next cycle (the content it read is the next initial content);
 * every 5th cycle, and at the end, it is stopped with SIGTERM and the
 * image file must then equal what it returned.  The restarted server
 * serves the journal's records while the drainer writes them back, and
 * a TRIM among them may turn what it read to zeroes later (base_z).
 *
 * The image alone.  --image-only-pct N: at N% of kills, before the
 * restart, the image file alone (the journal ignored, as if lost) is
 * checked against the flush-epoch order: for some k, every request of
 * an epoch before k plus any subset of epoch k, nothing later.  So
 * that epochs are exact, flushes become barriers (every connection
 * waits for its requests, one flush is sent and waits, all go on), and
 * writes, zeroes and trims cover whole sectors.  Per sector, the set
 * of k consistent with its content (sector_ks) is intersected over the
 * image; empty is an inconsistency.  --wrong-model moves the requests
 * with odd ids to epoch 0 (later writes taken as earlier): the check
 * must then fail (it does, at every kill, with the drainer running).
 * The image at a cycle's start must hold the initial content, so with
 * this check every restarted server is stopped cleanly after its read
 * (it writes back what it recovered) and a new one serves the cycle.
 *
 * Errors.  A request that fails before the kill (other than a fast zero
 * with ENOTSUP) is reported and fails the run: nothing here should fail.
 * With --backend nbd, the backend nbdkit (1.32) sometimes aborts on its
 * own assertion in raw_send_socket when its client, the killed server,
 * goes away; that is noted (from the server log) and the cycle goes on.
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
#define MAX_WRITE MiB /* the largest request of any kind */
#define REC 16u
#define NOREPLY UINT64_MAX
#define NOT_SENT (-1) /* err of a request libnbd refused */
#define INIT_ID 0u
#define INIT_CONN 0xffu

/* ---- options ------------------------------------------------------- */

static const char *plugin_path;
static const char *image_path;
static const char *server_log;
static const char *backend = "file";
static const char *rbd_spec;                 /* --rbd POOL/IMAGE */
static const char *rbd_check = "rbd-check.py"; /* --rbd-check PATH */
static bool is_rbd;
static uint64_t image_size = 64 * MiB;
static unsigned cycles = 20;
static unsigned nconns = 4;
static unsigned qdepth = 4;
static unsigned min_ms = 100, max_ms = 1500;
static unsigned flush_pct = 1; /* % of requests that are flushes */
static unsigned read_pct = 15;  /* ... reads */
static unsigned zero_pct = 15;  /* ... zeroes */
static unsigned trim_pct = 15;  /* ... trims (the rest: writes) */
static unsigned fua_pct = 20;   /* % of writes, zeroes, trims with FUA */
static unsigned hot_pct = 85;   /* % of requests in the hot range */
static uint64_t hot_size = 256 * KiB; /* its length */
static uint32_t align = 1;      /* of writes, zeroes and trims */
static unsigned cache_pages;    /* 0: random cache-size */
static unsigned long long seed;
static bool soak, no_kill, verbose;
/* --journal PATH: journal mode (see "The journal" above). */
static const char *journal_path;
static const char *journal_size = "16M";
static unsigned image_only_pct; /* % of kills with the image-only check */
static bool wrong_model;        /* --wrong-model: break the epoch model */
static const char *jsector;     /* the run's sector-size= */
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

enum op_kind { OP_WRITE, OP_ZERO, OP_TRIM };
static const char *const kind_name[] = { "write", "zero", "trim" };

#define OPF_FUA 1u     /* LIBNBD_CMD_FLAG_FUA */
#define OPF_NO_HOLE 2u /* LIBNBD_CMD_FLAG_NO_HOLE (zero) */
#define OPF_FAST 4u    /* LIBNBD_CMD_FLAG_FAST_ZERO (zero) */

/* A write, zero or trim. */
struct wrec {
  uint64_t off;
  uint32_t len;
  uint32_t id;
  uint8_t conn;
  uint8_t kind;
  uint8_t flags;
  uint32_t epoch; /* barrier flushes done when issued (--image-only-pct) */
  uint64_t issue;
  _Atomic uint64_t reply; /* NOREPLY unless a reply came */
  _Atomic int err;        /* the reply's errno (0: success), NOT_SENT */
};

struct rrec {
  uint64_t off;
  uint32_t len;
  uint8_t conn;
  uint64_t issue;
  _Atomic uint64_t reply;
  _Atomic int err;
  uint8_t *buf;
};

struct frec {
  uint64_t sent;
  _Atomic uint64_t done; /* 0: no successful reply */
  _Atomic int err;
  _Atomic uint64_t reply; /* any reply */
};

/* This cycle's requests; slots are claimed atomically. */
static struct wrec *writes; /* writes, zeroes and trims */
static size_t max_writes = 1u << 20;
static _Atomic size_t nwrites;
static struct rrec *reads;
static size_t max_reads = 1u << 17;
static _Atomic size_t nreads;
static _Atomic uint64_t read_bytes; /* held in read buffers */
static uint64_t max_read_bytes = 256 * MiB;
static struct frec *flushes;
static size_t max_flushes = 1u << 18;
static _Atomic size_t nflushes;
static _Atomic uint64_t last_flush; /* F: max sent of successful flushes */
static uint32_t first_id = 1;       /* id of this cycle's writes[0] */
static uint64_t hot_off, hot_len;   /* this cycle's hot range */
static uint64_t kill_stamp;         /* just before the kill */
static atomic_bool stop;

/* Barrier flushes (--image-only-pct): a connection that draws a flush
 * asks for a barrier; every connection stops issuing and waits for its
 * requests in flight; the last one to arrive sends the flush and waits
 * for it; then all go on.  So every write, zero and trim falls in one
 * known epoch: the number of flushes that succeeded before it was
 * issued (cur_epoch), and the server's epochs (one per client flush)
 * are the same.
 */
static bool barrier_mode;
static pthread_mutex_t bar_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t bar_cv = PTHREAD_COND_INITIALIZER;
static unsigned bar_waiting;
static uint64_t bar_gen;
static atomic_bool bar_want;
static _Atomic uint32_t cur_epoch;      /* flushes that succeeded */
static _Atomic uint32_t flush_attempts; /* flushes sent */

/* Run totals. */
static uint64_t t_cycles, t_writes, t_acked, t_covered, t_flushes, t_flushes_ok,
  t_bytes, t_bad_bytes, t_bad_ranges, t_kind[3], t_fua, t_enotsup, t_reads,
  t_read_bytes, t_bad_read_bytes, t_errors;

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

/* If the whole record around OFF lies in BUF, which holds the image's
 * bytes [LO, HI), and is intact, return its write id.
 */
static bool
decode_record (const uint8_t *buf, uint64_t lo, uint64_t hi, uint64_t off,
               uint32_t *id, uint8_t *conn)
{
  uint64_t r = off & ~(uint64_t) (REC - 1);
  const uint8_t *p = buf + (r - lo);
  uint8_t rec[REC];

  if (r < lo || r + REC > hi)
    return false;
  *id = p[8] | p[9] << 8 | p[10] << 16 | (uint32_t) p[11] << 24;
  *conn = p[12];
  make_record (rec, *id, *conn, r);
  return memcmp (rec, p, REC) == 0;
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

/* A range for a request: in the hot range (HOT_PCT % of requests) or
 * anywhere; ALIGNED: offset and length multiples of --align.
 */
static void
pick_range (uint64_t *s, bool aligned, uint64_t *off, uint32_t *len)
{
  uint64_t lo = 0, span = image_size;
  uint32_t l = rnd_len (s);

  if (rnd (s) % 100 < hot_pct) {
    lo = hot_off;
    span = hot_len;
  }
  if (l > span)
    l = rnd_range (s, 1, span);
  if (aligned && align > 1) {
    /* span and lo are multiples of align, and so is MAX_WRITE */
    l = (l + align - 1) / align * align;
    *off = lo + rnd_range (s, 0, span - l) / align * align;
  } else
    *off = lo + rnd_range (s, 0, span - l);
  *len = l;
}

/* ---- files --------------------------------------------------------- */

static void
die (const char *what)
{
  fprintf (stderr, "crash-check: %s: %s\n", what, strerror (errno));
  exit (1);
}

/* With --backend rbd: `RBD-CHECK CMD POOL/IMAGE FILE`, a fresh librbd
 * client: "dump" copies the image into the image file, "load" the file
 * into the image.  Any failure ends the run.
 */
static void
rbd_check_run (const char *cmd)
{
  char *argv[] = { (char *) rbd_check, (char *) cmd, (char *) rbd_spec,
                   (char *) image_path, NULL };
  int status;
  pid_t pid;

  fflush (stdout);
  pid = fork ();
  if (pid == -1)
    die ("fork");
  if (pid == 0) {
    execvp (rbd_check, argv);
    fprintf (stderr, "crash-check: exec %s: %s\n", rbd_check,
             strerror (errno));
    _exit (127);
  }
  if (waitpid (pid, &status, 0) == -1)
    die ("waitpid");
  if (!WIFEXITED (status) || WEXITSTATUS (status) != 0) {
    fprintf (stderr, "crash-check: %s %s %s %s failed (status 0x%x)\n",
             rbd_check, cmd, rbd_spec, image_path, status);
    exit (1);
  }
}

static void
read_image (uint8_t *buf)
{
  int fd;
  uint64_t done = 0;

  if (is_rbd)
    rbd_check_run ("dump");
  fd = open (image_path, O_RDONLY);
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
  if (is_rbd)
    rbd_check_run ("load");
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

/* The size of the server log (0 if none). */
static off_t
log_size (void)
{
  struct stat st;

  if (server_log == NULL || stat (server_log, &st) == -1)
    return 0;
  return st.st_size;
}

/* Does the server log hold NEEDLE in a line after offset FROM? */
static bool
log_has (off_t from, const char *needle)
{
  char line[1024];
  bool found = false;
  FILE *f;

  if (server_log == NULL || (f = fopen (server_log, "r")) == NULL)
    return false;
  if (fseeko (f, from, SEEK_SET) == 0)
    while (!found && fgets (line, sizeof line, f))
      found = strstr (line, needle) != NULL;
  fclose (f);
  return found;
}

/* Does the plugin take PARAM (e.g. "uri=")?  `nbdkit PLUGIN --help`
 * prints its config_help, one parameter per line.  (Run like the
 * server, with the nbdkit-only environment: a sanitized plugin needs
 * its runtime.)
 */
static bool
plugin_has_param (const char *param)
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
    if (strncmp (line, param, strlen (param)) == 0)
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
op_done (void *user_data, int *error)
{
  struct wrec *w = user_data;

  atomic_store (&w->err, *error);
  atomic_store (&w->reply, tick ());
  return 1;
}

static int
write_done (void *user_data, int *error)
{
  struct wctx *c = user_data;

  return op_done (c->w, error);
}

static void
write_free (void *user_data)
{
  struct wctx *c = user_data;

  free (c->buf);
  free (c);
}

static int
read_done (void *user_data, int *error)
{
  struct rrec *r = user_data;

  atomic_store (&r->err, *error);
  atomic_store (&r->reply, tick ());
  return 1;
}

static int
flush_done (void *user_data, int *error)
{
  struct frec *f = user_data;
  uint64_t t = tick ();

  atomic_store (&f->err, *error);
  atomic_store (&f->reply, t);
  if (*error == 0) {
    uint64_t old = atomic_load (&last_flush);

    atomic_store (&f->done, t);
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

/* libnbd refused a request.  After the kill that is expected (the
 * handle is dead); a request libnbd rejects for its flags or kind is a
 * bug of this program.  Returns false (the thread stops issuing).
 */
static bool
refused (struct conn *cn, const char *what)
{
  int e = nbd_get_errno ();

  if (nbd_aio_is_dead (cn->h) || nbd_aio_is_closed (cn->h))
    return false;
  if (e == EINVAL || e == ENOTSUP || e == EOPNOTSUPP) {
    fprintf (stderr, "crash-check: libnbd refused a %s: %s\n", what,
             nbd_get_error ());
    exit (1);
  }
  return false;
}

static bool
issue_flush (struct conn *cn)
{
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
    return refused (cn, "flush");
  return true;
}

/* Returns false when the read buffers hold enough: write instead. */
static bool
issue_read (struct conn *cn, bool *ok)
{
  size_t i;
  struct rrec *r;
  uint64_t off;
  uint32_t len;

  pick_range (&cn->rng, false, &off, &len);
  if (atomic_fetch_add (&read_bytes, len) + len > max_read_bytes)
    return false;
  i = atomic_fetch_add (&nreads, 1);
  if (i >= max_reads)
    return false;
  r = &reads[i];
  r->off = off;
  r->len = len;
  r->conn = cn->idx;
  r->buf = malloc (len);
  if (r->buf == NULL)
    die ("malloc");
  memset (r->buf, 0xa5, len); /* not 0: bytes never filled show */
  r->issue = tick ();
  if (nbd_aio_pread (cn->h, r->buf, len, off,
                     (nbd_completion_callback){ .callback = read_done,
                                                .user_data = r },
                     0) == -1) {
    atomic_store (&r->err, NOT_SENT);
    *ok = refused (cn, "read");
  } else
    *ok = true;
  return true;
}

static bool
issue_op (struct conn *cn, enum op_kind kind)
{
  size_t i = atomic_fetch_add (&nwrites, 1);
  uint32_t nflags = 0;
  struct wctx *c;
  struct wrec *w;
  int64_t r;

  if (i >= max_writes)
    return false;
  w = &writes[i];
  w->kind = kind;
  pick_range (&cn->rng, true, &w->off, &w->len);
  w->id = first_id + i;
  w->conn = cn->idx;
  w->epoch = atomic_load (&cur_epoch);
  if (rnd (&cn->rng) % 100 < fua_pct)
    w->flags |= OPF_FUA;
  if (kind == OP_ZERO) {
    if (rnd (&cn->rng) % 2)
      w->flags |= OPF_NO_HOLE;
    if (rnd (&cn->rng) % 3 == 0)
      w->flags |= OPF_FAST;
  }
  if (w->flags & OPF_FUA)
    nflags |= LIBNBD_CMD_FLAG_FUA;
  if (w->flags & OPF_NO_HOLE)
    nflags |= LIBNBD_CMD_FLAG_NO_HOLE;
  if (w->flags & OPF_FAST)
    nflags |= LIBNBD_CMD_FLAG_FAST_ZERO;

  switch (kind) {
  case OP_WRITE:
    c = malloc (sizeof *c);
    if (c == NULL || (c->buf = malloc (w->len)) == NULL)
      die ("malloc");
    c->w = w;
    fill_payload (c->buf, w->id, w->conn, w->off, w->len);
    w->issue = tick ();
    r = nbd_aio_pwrite (cn->h, c->buf, w->len, w->off,
                        (nbd_completion_callback){ .callback = write_done,
                                                   .user_data = c,
                                                   .free = write_free },
                        nflags);
    break;
  case OP_ZERO:
    w->issue = tick ();
    r = nbd_aio_zero (cn->h, w->len, w->off,
                      (nbd_completion_callback){ .callback = op_done,
                                                 .user_data = w },
                      nflags);
    break;
  default:
    w->issue = tick ();
    r = nbd_aio_trim (cn->h, w->len, w->off,
                      (nbd_completion_callback){ .callback = op_done,
                                                 .user_data = w },
                      nflags);
    break;
  }
  if (r == -1) {
    atomic_store (&w->err, NOT_SENT);
    return refused (cn, kind_name[kind]);
  }
  return true;
}

/* Issues one request on CN.  Returns false when the handle is dead or
 * the record arrays are full.
 */
static bool
issue (struct conn *cn)
{
  unsigned roll = rnd (&cn->rng) % 100;
  bool ok;

  if (roll < flush_pct) {
    if (barrier_mode) {
      atomic_store (&bar_want, true);
      return true;
    }
    return issue_flush (cn);
  }
  roll -= flush_pct;
  if (roll < read_pct) {
    if (issue_read (cn, &ok))
      return ok;
    return issue_op (cn, OP_WRITE);
  }
  roll -= read_pct;
  if (roll < zero_pct)
    return issue_op (cn, OP_ZERO);
  roll -= zero_pct;
  if (roll < trim_pct)
    return issue_op (cn, OP_TRIM);
  return issue_op (cn, OP_WRITE);
}

/* A barrier (see barrier_mode): false when the handle is dead or the
 * run stops.
 */
static bool
barrier (struct conn *cn)
{
  uint64_t gen;
  bool ok = true;

  while (nbd_aio_in_flight (cn->h) > 0)
    if (nbd_poll (cn->h, -1) == -1)
      return false;
  pthread_mutex_lock (&bar_lock);
  if (atomic_load (&stop)) {
    pthread_mutex_unlock (&bar_lock);
    return false;
  }
  gen = bar_gen;
  if (++bar_waiting == nconns) {
    size_t i = atomic_fetch_add (&nflushes, 1);
    int err = 0;

    if (i >= max_flushes)
      ok = false;
    else {
      struct frec *f = &flushes[i];

      f->sent = tick ();
      atomic_fetch_add (&flush_attempts, 1);
      if (nbd_flush (cn->h, 0) == -1) {
        ok = false;
        if (!nbd_aio_is_dead (cn->h) && !nbd_aio_is_closed (cn->h)) {
          err = nbd_get_errno () ? nbd_get_errno () : EIO;
          flush_done (f, &err);
        }
      } else {
        flush_done (f, &err);
        atomic_fetch_add (&cur_epoch, 1);
      }
    }
    bar_waiting = 0;
    atomic_store (&bar_want, false);
    bar_gen++;
    pthread_cond_broadcast (&bar_cv);
  } else {
    while (bar_gen == gen && !atomic_load (&stop))
      pthread_cond_wait (&bar_cv, &bar_lock);
    ok = !atomic_load (&stop);
  }
  pthread_mutex_unlock (&bar_lock);
  return ok;
}

static void *
conn_thread (void *arg)
{
  struct conn *cn = arg;

  while (!atomic_load (&stop)) {
    if (barrier_mode && atomic_load (&bar_want)) {
      if (!barrier (cn))
        return NULL;
      continue;
    }
    while (nbd_aio_in_flight (cn->h) < (int) qdepth && !atomic_load (&stop) &&
           !(barrier_mode && atomic_load (&bar_want)))
      if (!issue (cn))
        return NULL;
    if (nbd_aio_in_flight (cn->h) > 0 && nbd_poll (cn->h, -1) == -1)
      return NULL;
  }
  /* Stopped without a kill: let the requests in flight finish. */
  while (nbd_aio_in_flight (cn->h) > 0)
    if (nbd_poll (cn->h, -1) == -1)
      return NULL;
  return NULL;
}

/* ---- verification -------------------------------------------------- */

static uint8_t *base, *found, *zok, *rzok;
/* Journal mode: bytes of base (what the restarted server read) that a
 * TRIM may still turn to zeroes: the server serves what the journal
 * holds under a TRIM until the drainer has applied it (a TRIM is
 * advisory), so 0 is accepted there too, until a request of the cycle
 * supersedes base.  next_z: the same for the server just checked.
 */
static uint8_t *base_z, *next_z;
static uint32_t *covm, *rmap, *rzmap, *rnext;
static struct wrec **cov_sorted, **off_sorted, **r_sorted, **rz_sorted;
static size_t ncov, nw;
static bool found_ready; /* found holds the image (journal mode) */

static uint64_t
reply_of (const struct wrec *x)
{
  return atomic_load (&x->reply);
}

static bool
succeeded (const struct wrec *x)
{
  return reply_of (x) != NOREPLY && atomic_load (&x->err) == 0;
}

/* Requests that cannot have changed a byte. */
static bool
never_applied (const struct wrec *x)
{
  int e = atomic_load (&x->err);

  if (e == NOT_SENT)
    return true;
  return x->kind == OP_ZERO && (x->flags & OPF_FAST) &&
         reply_of (x) != NOREPLY && (e == ENOTSUP || e == EOPNOTSUPP);
}

static bool
supersedes (const struct wrec *x)
{
  return x->kind != OP_TRIM && succeeded (x);
}

static bool
is_covered (const struct wrec *x, uint64_t F)
{
  return succeeded (x) && (reply_of (x) < F || (x->flags & OPF_FUA));
}

/* The value X leaves in byte B (a trim: 0, or nothing). */
static uint8_t
op_byte (const struct wrec *x, uint64_t b)
{
  return x->kind == OP_WRITE ? payload_byte (x->id, x->conn, b) : 0;
}

/* One check: the image after the kill (lo = 0, hi = image_size), or one
 * read (its range).  map[b - lo]: 1 + the index in sorted of the
 * superseding request M (Mr) of byte b, 0 if none; z[b - lo]: a zero or
 * trim accepted at b touches it; candidates must be issued before limit.
 */
struct model {
  const uint8_t *buf; /* what was found, bytes [lo, hi) */
  uint64_t lo, hi;
  const uint32_t *map;
  const uint8_t *z;
  struct wrec *const *sorted;
  uint64_t limit;
};

static const struct wrec *
model_m (const struct model *md, uint64_t b)
{
  uint32_t i = md->map[b - md->lo];
  return i ? md->sorted[i - 1] : NULL;
}

/* May X (touching B) account for byte B? */
static bool
cand_ok (const struct model *md, const struct wrec *x, uint64_t b)
{
  const struct wrec *m;

  if (never_applied (x) || x->issue >= md->limit)
    return false;
  m = model_m (md, b);
  return m == NULL || reply_of (x) > m->issue;
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

/* Paints md->map over [lo, hi) with the N requests of sorted (in issue
 * order, so the last one touching a byte wins), then md->z with the
 * zeroes and trims of LIST[0..nl) accepted at each byte.
 */
static void
paint (struct model *md, uint32_t *map, uint8_t *z, size_t n,
       struct wrec *const *list, size_t nl)
{
  size_t i;
  uint64_t b;

  memset (map, 0, (md->hi - md->lo) * sizeof *map);
  memset (z, 0, md->hi - md->lo);
  for (i = 0; i < n; i++) {
    const struct wrec *x = md->sorted[i];
    uint64_t s = x->off < md->lo ? md->lo : x->off;
    uint64_t e = x->off + x->len > md->hi ? md->hi : x->off + x->len;
    for (b = s; b < e; b++)
      map[b - md->lo] = i + 1;
  }
  for (i = 0; i < nl; i++) {
    const struct wrec *x = list[i];
    uint64_t s = x->off < md->lo ? md->lo : x->off;
    uint64_t e = x->off + x->len > md->hi ? md->hi : x->off + x->len;
    if (x->kind == OP_WRITE || never_applied (x) || x->issue >= md->limit)
      continue;
    for (b = s; b < e; b++)
      if (!z[b - md->lo] && cand_ok (md, x, b))
        z[b - md->lo] = 1;
  }
}

static int
cmp_issue_desc (const void *a, const void *b)
{
  return -cmp_issue (a, b);
}

static int
cmp_reply_desc (const void *a, const void *b)
{
  uint64_t x = reply_of (*(struct wrec *const *) a);
  uint64_t y = reply_of (*(struct wrec *const *) b);
  return x > y ? -1 : x < y;
}

/* rnext[i]: the first unpainted index >= i (path halving). */
static uint32_t
next_free (uint32_t i)
{
  while (rnext[i] != i) {
    rnext[i] = rnext[rnext[i]];
    i = rnext[i];
  }
  return i;
}

/* The same as painting LIST[0..n) over [lo, hi) in reverse order (so
 * the first one touching a byte wins), in time linear in hi - lo:
 * each byte is painted once (hi - lo <= MAX_WRITE).
 */
static void
paint_first (uint32_t *map, uint64_t lo, uint64_t hi, struct wrec *const *list,
             size_t n)
{
  uint32_t len = hi - lo, i;
  size_t k;

  memset (map, 0, len * sizeof *map);
  for (i = 0; i <= len; i++)
    rnext[i] = i;
  for (k = 0; k < n; k++) {
    const struct wrec *x = list[k];
    uint32_t s = x->off < lo ? 0 : x->off - lo;
    uint32_t e = x->off + x->len > hi ? len : x->off + x->len - lo;
    for (i = next_free (s); i < e; i = next_free (i + 1)) {
      map[i] = k + 1;
      rnext[i] = i + 1;
    }
  }
}

static const struct wrec *
write_by_id (uint32_t id)
{
  if (id < first_id || id - first_id >= nw)
    return NULL;
  return &writes[id - first_id];
}

/* Index in off_sorted of the first request that may touch B or later
 * bytes (every request is at most MAX_WRITE long).
 */
static size_t
first_near (uint64_t b)
{
  size_t lo = 0, hi = nw;

  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    if (off_sorted[mid]->off + MAX_WRITE <= b)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

/* Calls FN for each request touching B; stops when FN returns true. */
static bool
for_each_touching (uint64_t b,
                   bool (*fn) (const struct wrec *, uint64_t, void *),
                   void *arg)
{
  size_t i;

  for (i = first_near (b); i < nw && off_sorted[i]->off <= b; i++) {
    const struct wrec *x = off_sorted[i];
    if (x->off + x->len > b && fn (x, b, arg))
      return true;
  }
  return false;
}

struct match_arg {
  const struct model *md;
  uint8_t v;
};

static bool
match_fn (const struct wrec *x, uint64_t b, void *arg)
{
  struct match_arg *a = arg;
  return op_byte (x, b) == a->v && cand_ok (a->md, x, b);
}

/* Is V, found at B, accepted?  BASE_V: the initial content of B. */
static bool
check_byte (const struct model *md, uint64_t b, uint8_t v, uint8_t base_v)
{
  const struct wrec *m = model_m (md, b), *x;
  struct match_arg a = { md, v };
  uint32_t id;
  uint8_t conn;

  if (m ? v == op_byte (m, b) : v == base_v)
    return true;
  if (v == 0 && (md->z[b - md->lo] || (!m && base_z[b])))
    return true;
  if (decode_record (md->buf, md->lo, md->hi, b, &id, &conn) &&
      (x = write_by_id (id)) != NULL && x->kind == OP_WRITE &&
      x->off <= b && b < x->off + x->len && cand_ok (md, x, b))
    return true;
  return for_each_touching (b, match_fn, &a);
}

static void
print_op (const struct wrec *x, uint64_t F)
{
  uint64_t r = reply_of (x);
  int e = atomic_load (&x->err);
  char rep[64] = "no reply";

  if (e == NOT_SENT)
    snprintf (rep, sizeof rep, "not sent");
  else if (r != NOREPLY && e == 0)
    snprintf (rep, sizeof rep, "ok at %" PRIu64, r);
  else if (r != NOREPLY)
    snprintf (rep, sizeof rep, "failed (%s) at %" PRIu64, strerror (e), r);
  printf ("%s id %" PRIu32 " conn %u [%" PRIu64 ", +%" PRIu32 ")%s%s%s "
          "issued %" PRIu64 ", %s%s",
          kind_name[x->kind], x->id, x->conn, x->off, x->len,
          x->flags & OPF_FUA ? " FUA" : "",
          x->flags & OPF_NO_HOLE ? " NO_HOLE" : "",
          x->flags & OPF_FAST ? " FAST_ZERO" : "", x->issue, rep,
          F && is_covered (x, F) ? ", covered" : "");
}

struct print_arg {
  const struct model *md;
  uint64_t F;
  const struct wrec *found; /* the write whose record is found, or NULL */
  uint8_t v;                /* the byte found */
  unsigned n, superseded;
};

static bool
print_fn (const struct wrec *x, uint64_t b, void *arg)
{
  struct print_arg *a = arg;
  const struct wrec *m = model_m (a->md, b);

  if (x->issue >= a->md->limit)
    return false;
  if (!cand_ok (a->md, x, b) && !never_applied (x) && x != a->found &&
      op_byte (x, b) != a->v) {
    a->superseded++;
    return false;
  }
  if (a->n++ >= 40) {
    if (a->n == 41)
      printf ("    ...\n");
    return false;
  }
  printf ("    %s ", cand_ok (a->md, x, b)
                     ? "accepted:"
                     : never_applied (x) ? "no effect:"
                                         : "superseded:");
  print_op (x, a->F);
  if (x == m)
    printf (" (M)");
  if (x == a->found)
    printf (" (found)");
  if (x->kind == OP_TRIM)
    printf (": 0 or unchanged\n");
  else
    printf (": 0x%02x\n", op_byte (x, b));
  return false;
}

static void
report_byte (const struct model *md, uint64_t b, uint64_t F)
{
  const struct wrec *m = model_m (md, b);
  uint8_t v = md->buf[b - md->lo];
  struct print_arg pa = { md, F, NULL, v, 0, 0 };
  uint32_t id;
  uint8_t conn;

  printf ("  byte at offset %" PRIu64 " (0x%" PRIx64 "): found 0x%02x", b,
          b, v);
  if (decode_record (md->buf, md->lo, md->hi, b, &id, &conn)) {
    const struct wrec *x = write_by_id (id);
    if (id == INIT_ID && conn == INIT_CONN)
      printf (" (the initial pattern)");
    else if (x && x->kind == OP_WRITE) {
      printf (" (from write id %" PRIu32 " conn %u [%" PRIu64 ", +%" PRIu32
              ") of this cycle)",
              id, conn, x->off, x->len);
      if (x->off <= b && b < x->off + x->len)
        pa.found = x;
    }
    else
      printf (" (from write id %" PRIu32 " conn %u of an earlier cycle)",
              id, conn);
  } else
    printf (" (record not intact)");
  printf ("\n  M: ");
  if (m) {
    print_op (m, F);
    printf ("\n");
  } else
    printf ("none; initial content accepted: 0x%02x\n", base[b]);
  printf ("  the requests touching it%s (superseded: only those whose "
          "value matches):\n",
          md->limit != UINT64_MAX ? " issued before the read's reply" : "");
  for_each_touching (b, print_fn, &pa);
  printf ("  and %u more requests M superseded\n", pa.superseded);
}

/* The image after the kill.  Returns the number of inconsistent bytes. */
static uint64_t
verify (uint64_t F)
{
  struct model md = { found, 0, image_size, covm, zok, NULL, UINT64_MAX };
  uint64_t b, bad = 0, ranges = 0, printed = 0;
  bool prev_bad = false, restarted;
  size_t i;

  ncov = 0;
  for (i = 0; i < nw; i++) {
    off_sorted[i] = &writes[i];
    if (supersedes (&writes[i]) && is_covered (&writes[i], F))
      cov_sorted[ncov++] = &writes[i];
  }
  qsort (cov_sorted, ncov, sizeof *cov_sorted, cmp_issue);
  qsort (off_sorted, nw, sizeof *off_sorted, cmp_off);
  md.sorted = cov_sorted;
  paint (&md, covm, zok, ncov, off_sorted, nw);

  restarted = found_ready;
  if (!found_ready)
    read_image (found);
  found_ready = false;
  for (b = 0; b < image_size; b++) {
    bool ok = check_byte (&md, b, found[b], base[b]);

    if (!ok) {
      bad++;
      if (!prev_bad)
        ranges++;
      if (!prev_bad && printed++ < 10) {
        printf ("crash-check: INCONSISTENT image after the kill; last "
                "successful flush sent at %" PRIu64 "\n",
                F);
        report_byte (&md, b, F);
      }
    }
    prev_bad = !ok;
  }
  if (restarted)
    for (b = 0; b < image_size; b++)
      next_z[b] = zok[b] || (!model_m (&md, b) && base_z[b]);
  if (bad)
    printf ("crash-check: %" PRIu64 " inconsistent bytes in %" PRIu64
            " ranges of the image\n",
            bad, ranges);
  t_bad_ranges += ranges;
  return bad;
}

/* Every read that succeeded.  Call after verify (off_sorted).  Returns
 * the number of inconsistent bytes; *NCHECKED, *NBYTES: reads and bytes.
 */
static uint64_t
verify_reads (size_t *nchecked, uint64_t *nbytes)
{
  size_t nr = atomic_load (&nreads), i, k;
  uint64_t bad = 0, printed = 0;

  if (nr > max_reads)
    nr = max_reads;
  *nchecked = 0;
  *nbytes = 0;
  for (i = 0; i < nr; i++) {
    struct rrec *r = &reads[i];
    uint64_t rep = atomic_load (&r->reply), b, rbad = 0;
    struct model md = { r->buf, r->off, r->off + r->len, rmap, rzok,
                        r_sorted, rep };
    size_t n = 0, nz = 0;
    bool prev_bad = false;

    if (rep == NOREPLY || atomic_load (&r->err) != 0)
      continue;
    /* r_sorted: the superseding requests touching the read whose reply
     * came before it was issued, newest issue first: rmap[b] names Mr.
     * rz_sorted: the zeroes and trims touching it issued before its
     * reply, latest reply first: rzmap[b] names the one that M is the
     * least likely to have superseded.
     */
    for (k = first_near (r->off); k < nw && off_sorted[k]->off < md.hi;
         k++) {
      struct wrec *x = off_sorted[k];
      if (x->off + x->len <= md.lo || never_applied (x))
        continue;
      if (supersedes (x) && reply_of (x) < r->issue)
        r_sorted[n++] = x;
      if (x->kind != OP_WRITE && x->issue < rep)
        rz_sorted[nz++] = x;
    }
    qsort (r_sorted, n, sizeof *r_sorted, cmp_issue_desc);
    qsort (rz_sorted, nz, sizeof *rz_sorted, cmp_reply_desc);
    paint_first (rmap, md.lo, md.hi, r_sorted, n);
    paint_first (rzmap, md.lo, md.hi, rz_sorted, nz);
    for (b = md.lo; b < md.hi; b++) {
      const struct wrec *m = model_m (&md, b);
      uint32_t zi = rzmap[b - md.lo];
      rzok[b - md.lo] =
        zi && (m == NULL || reply_of (rz_sorted[zi - 1]) > m->issue);
    }

    for (b = md.lo; b < md.hi; b++) {
      bool ok = check_byte (&md, b, r->buf[b - md.lo], base[b]);

      if (!ok) {
        rbad++;
        if (!prev_bad && printed++ < 10) {
          printf ("crash-check: INCONSISTENT read [%" PRIu64 ", +%" PRIu32
                  ") conn %u issued %" PRIu64 ", replied %" PRIu64 "\n",
                  r->off, r->len, r->conn, r->issue, rep);
          report_byte (&md, b, 0);
        }
      }
      prev_bad = !ok;
    }
    if (rbad)
      printf ("crash-check: read [%" PRIu64 ", +%" PRIu32 "): %" PRIu64
              " inconsistent bytes\n",
              r->off, r->len, rbad);
    bad += rbad;
    ++*nchecked;
    *nbytes += r->len;
  }
  return bad;
}

/* Requests that failed before the kill (a fast zero may fail with
 * ENOTSUP).  Returns how many, and prints the first few.
 */
static uint64_t
check_errors (void)
{
  size_t nr = atomic_load (&nreads), nf = atomic_load (&nflushes), i;
  uint64_t n = 0;

  if (nr > max_reads)
    nr = max_reads;
  if (nf > max_flushes)
    nf = max_flushes;
  for (i = 0; i < nw; i++) {
    const struct wrec *x = &writes[i];
    int e = atomic_load (&x->err);
    if (e == 0 || e == NOT_SENT || reply_of (x) >= kill_stamp ||
        never_applied (x))
      continue;
    if (n++ < 5) {
      printf ("crash-check: ERROR before the kill: ");
      print_op (x, 0);
      printf ("\n");
    }
  }
  for (i = 0; i < nr; i++) {
    const struct rrec *r = &reads[i];
    int e = atomic_load (&r->err);
    if (e == 0 || e == NOT_SENT || atomic_load (&r->reply) >= kill_stamp)
      continue;
    if (n++ < 5)
      printf ("crash-check: ERROR before the kill: read [%" PRIu64
              ", +%" PRIu32 ") conn %u: %s\n",
              r->off, r->len, r->conn, strerror (e));
  }
  for (i = 0; i < nf; i++) {
    const struct frec *f = &flushes[i];
    int e = atomic_load (&f->err);
    if (e == 0 || atomic_load (&f->reply) == 0 ||
        atomic_load (&f->reply) >= kill_stamp)
      continue;
    if (n++ < 5)
      printf ("crash-check: ERROR before the kill: flush sent at %" PRIu64
              ": %s\n",
              f->sent, strerror (e));
  }
  return n;
}


/* ---- journal mode -------------------------------------------------- */

/* The epoch the model gives X.  --wrong-model: a deliberately wrong
 * one, to show that the image-only check can fail: every request with
 * an odd id is taken to have been issued before the first flush.
 */
static uint32_t
ep (const struct wrec *x)
{
  return wrong_model && (x->id & 1) ? 0 : x->epoch;
}

static int
cmp_epoch_issue (const void *a, const void *b)
{
  const struct wrec *x = *(struct wrec *const *) a;
  const struct wrec *y = *(struct wrec *const *) b;
  if (ep (x) != ep (y))
    return ep (x) < ep (y) ? -1 : 1;
  return cmp_issue (a, b);
}

static bool
all_zero (const uint8_t *p, size_t n)
{
  size_t i;

  for (i = 0; i < n; i++)
    if (p[i])
      return false;
  return true;
}

/* Is the sector at O (S bytes) of IMG consistent with k, for each k in
 * [0, A]?  ok[k] is set; returns the sources found ("base", "zero", a
 * write), *SW the write.  The rule (barrier flushes, so epochs are
 * exact): the image holds, for some k, every request of an epoch < k
 * plus any subset of those of epoch k.  So a sector may hold: the value
 * of any request of epoch k touching it; or a FINAL value of the epochs
 * before k: with L the last epoch < k that has a write or zero touching
 * it that succeeded, the value of each request of epoch L that no such
 * write or zero of epoch L issued after its reply superseded, and 0 for
 * a trim of an epoch in (L, k); the initial content if there is no L
 * (initial content counts as written before flush 0).
 */
static void
sector_ks (const uint8_t *img, uint64_t o, uint32_t S, uint32_t A,
           uint8_t *ok, bool *sbase, bool *szero, const struct wrec **sw,
           size_t *nops)
{
  static uint8_t *tmp;
  struct wrec **ops = r_sorted;
  size_t n = 0, i, j, t, u;
  bool fin_base = true, fin_zero = false, fin_w = false;
  uint32_t id, k;
  uint8_t conn;
  const struct wrec *x;

  if (tmp == NULL && (tmp = malloc (MAX_WRITE)) == NULL)
    die ("malloc");
  *sbase = memcmp (img + o, base + o, S) == 0;
  *szero = all_zero (img + o, S);
  *sw = NULL;
  if (decode_record (img, 0, image_size, o, &id, &conn) &&
      (x = write_by_id (id)) != NULL && x->kind == OP_WRITE &&
      x->off <= o && o + S <= x->off + x->len && x->conn == conn) {
    fill_payload (tmp, id, conn, o, S);
    if (memcmp (tmp, img + o, S) == 0)
      *sw = x;
  }
  for (i = first_near (o); i < nw && off_sorted[i]->off < o + S; i++) {
    x = off_sorted[i];
    if (x->off + x->len > o && !never_applied (x))
      ops[n++] = (struct wrec *) x;
  }
  *nops = n;
  qsort (ops, n, sizeof *ops, cmp_epoch_issue);
  i = 0;
  for (k = 0; k <= A; k++) {
    bool in_all = false, has_sup = false;

    for (j = i; j < n && ep (ops[j]) == k; j++) {
      if (ops[j]->kind != OP_WRITE ? *szero : ops[j] == *sw)
        in_all = true;
      if (supersedes (ops[j]))
        has_sup = true;
    }
    ok[k] = (*sbase && fin_base) || (*szero && fin_zero) ||
            (*sw && fin_w) || in_all;
    /* The finals after epoch k. */
    if (has_sup)
      fin_base = fin_zero = fin_w = false;
    for (t = i; t < j; t++) {
      bool superseded = false;

      for (u = i; u < j && !superseded; u++)
        superseded = supersedes (ops[u]) && ops[u]->issue > reply_of (ops[t]);
      if (superseded)
        continue;
      if (ops[t]->kind != OP_WRITE)
        fin_zero = true;
      else if (ops[t] == *sw)
        fin_w = true;
    }
    i = j;
  }
}

static void
print_ks (const uint8_t *ok, uint32_t A)
{
  uint32_t k, n = 0;

  for (k = 0; k <= A; k++)
    if (ok[k] && (k == 0 || !ok[k - 1])) {
      uint32_t e = k;
      while (e + 1 <= A && ok[e + 1])
        e++;
      printf ("%s%" PRIu32, n++ ? ", " : "", k);
      if (e > k)
        printf ("..%" PRIu32, e);
    }
  if (n == 0)
    printf ("none");
}

/* The image file alone after the kill (the journal ignored): is it a
 * state the ordering rule allows (sector_ks)?  Per sector the set of
 * consistent k, intersected over the image.  Returns the number of
 * sectors that made it empty or hold a value nothing wrote (0: fine);
 * *KLO, *KHI: the smallest and largest k left.
 */
static uint64_t
verify_epochs (const uint8_t *img, uint32_t *klo, uint32_t *khi)
{
  uint32_t A = atomic_load (&flush_attempts), S = align, k;
  uint8_t *alive = malloc (A + 1), *ok = malloc (A + 1);
  uint64_t o, bad = 0;
  size_t i, nops;
  bool sbase, szero;
  const struct wrec *sw;

  if (alive == NULL || ok == NULL)
    die ("malloc");
  memset (alive, 1, A + 1);
  for (i = 0; i < nw; i++)
    off_sorted[i] = &writes[i];
  qsort (off_sorted, nw, sizeof *off_sorted, cmp_off);
  for (o = 0; o < image_size; o += S) {
    bool any = false, was_alive = false;

    sector_ks (img, o, S, A, ok, &sbase, &szero, &sw, &nops);
    for (k = 0; k <= A; k++) {
      was_alive |= alive[k];
      alive[k] &= ok[k];
      any |= alive[k];
    }
    if (!any && was_alive) {
      bad++;
      printf ("crash-check: INCONSISTENT image-only state: no k (flushes "
              "0..%" PRIu32 ") fits every sector; sector at %" PRIu64
              " (%" PRIu32 " bytes) holds %s%s%s",
              A, o, S, sbase ? "its initial content " : "",
              szero ? "zeroes " : "", sw ? "the data of " : "");
      if (sw) {
        print_op (sw, 0);
        printf (" (epoch %" PRIu32 ")", ep (sw));
      }
      if (!sbase && !szero && !sw)
        printf ("a value no request wrote");
      printf ("\n  k consistent with it: ");
      print_ks (ok, A);
      printf ("\n  the requests touching it (%zu):\n", nops);
      for (i = 0; i < nops && i < 20; i++) {
        printf ("    epoch %" PRIu32 ": ", ep (r_sorted[i]));
        print_op (r_sorted[i], 0);
        printf ("\n");
      }
      printf ("  k consistent with the sectors before it: ");
      {
        uint8_t *prev = malloc (A + 1);
        uint64_t p;
        bool b2, z2;
        const struct wrec *w2;
        size_t n2;

        if (prev == NULL)
          die ("malloc");
        memset (prev, 1, A + 1);
        /* Recompute: alive is empty now. */
        for (p = 0; p < o; p += S) {
          sector_ks (img, p, S, A, ok, &b2, &z2, &w2, &n2);
          for (k = 0; k <= A; k++)
            prev[k] &= ok[k];
        }
        print_ks (prev, A);
        printf ("\n");
        free (prev);
      }
    }
  }
  *klo = *khi = UINT32_MAX;
  for (k = 0; k <= A; k++)
    if (alive[k]) {
      if (*klo == UINT32_MAX)
        *klo = k;
      *khi = k;
    }
  free (alive);
  free (ok);
  return bad;
}

/* Reads the whole image through a server on SOCK (PID) into BUF. */
static void
read_through (const char *sock, pid_t pid, uint8_t *buf)
{
  struct nbd_handle *h = connect_retry (sock, pid);
  uint64_t off;

  for (off = 0; off < image_size; off += MiB) {
    uint64_t n = image_size - off < MiB ? image_size - off : MiB;
    if (nbd_pread (h, buf + off, n, off, 0) == -1) {
      fprintf (stderr, "crash-check: read through the restarted server: "
                       "%s\n", nbd_get_error ());
      exit (1);
    }
  }
  nbd_shutdown (h, 0);
  nbd_close (h);
}

/* The server that replayed the last kill's journal, which serves the
 * next cycle (0: none), and its command line.
 */
static pid_t jpid;
static char *jargv[40];
static char jargs[12][PATH_MAX + 32], jfixed[7][PATH_MAX + 32];

/* Stops the journal server cleanly (SIGTERM) and checks that the image
 * file then holds what it served (in found).  Returns the number of
 * bytes that differ (or 1 for a bad exit).
 */
static uint64_t
journal_clean_stop (void)
{
  uint64_t b, diff = 0, first = 0;
  int status;

  if (jpid == 0)
    return 0;
  status = stop_pid (jpid);
  jpid = 0;
  if (!WIFEXITED (status) || WEXITSTATUS (status) != 0) {
    printf ("crash-check: the journal server exited with status 0x%x "
            "after SIGTERM\n", status);
    return 1;
  }
  read_image (base);
  for (b = 0; b < image_size; b++)
    if (base[b] != found[b] && !(base[b] == 0 && next_z[b]) && diff++ == 0)
      first = b;
  if (diff)
    printf ("crash-check: INCONSISTENT image file after a clean stop: %"
            PRIu64 " bytes differ from what the server returned, the first "
            "at %" PRIu64 " (file 0x%02x, server 0x%02x)\n",
            diff, first, base[first], found[first]);
  return diff;
}

/* ---- cycles -------------------------------------------------------- */

static const char *
pick (uint64_t *s, const char *const *v, size_t n)
{
  return v[rnd (s) % n];
}
#define PICK(s, v) pick (s, v, sizeof v / sizeof v[0])

static uint64_t parse_size (const char *s);

/* Appends the cache parameters to ARGV[N..] (random from S, in A):
 * returns the new N.  In journal mode: journal= and journal-size=, the
 * run's sector size (a journal refuses another), and for the drainer
 * dirty-writeback-ms= (10 with --image-only-pct, so that the image is
 * being written at the kill; else 10 ms to 60 s: with 60 s nothing but
 * a full journal or the stop drains), and journal-background-ratio= (0,
 * eager, with --image-only-pct; else 0 or the default's 50, under which
 * dirty-expire-ms= dates the records).
 */
static int
cache_params (uint64_t *s, char **argv, int n, char a[][PATH_MAX + 32])
{
  static const char *const caches[] = { "1M", "4M", "16M", "64M" };
  static const char *const pages[] = { "4K", "64K", "64K", "256K" };
  static const char *const sectors[] = { "512", "512", "4K" };
  static const char *const expires[] = { "20", "200", "5000" };
  static const char *const intervals[] = { "10", "100", "500" };
  static const char *const jintervals[] = { "10", "100", "1000", "60000" };
  static const char *const jratios[] = { "0", "50" };
  static const char *const threads[] = { "1", "2", "4" };
  const char *page = PICK (s, pages);
  const char *sect = PICK (s, sectors);
  const char *csize = PICK (s, caches);
  const char *interval = PICK (s, intervals);
  int i, na = 7;

  if (journal_path) {
    sect = jsector;
    interval = image_only_pct ? "10" : PICK (s, jintervals);
  }
  /* The cache must hold 8 pages (CACHE_MIN_PAGES). */
  if (strcmp (page, "256K") == 0 && strcmp (csize, "1M") == 0)
    csize = "4M";
  if (cache_pages)
    snprintf (a[0], sizeof a[0], "cache-size=%" PRIu64,
              (uint64_t) cache_pages * parse_size (page));
  else
    snprintf (a[0], sizeof a[0], "cache-size=%s", csize);
  snprintf (a[1], sizeof a[1], "page-size=%s", page);
  snprintf (a[2], sizeof a[2], "sector-size=%s", sect);
  snprintf (a[3], sizeof a[3], "dirty-expire-ms=%s", PICK (s, expires));
  snprintf (a[4], sizeof a[4], "dirty-writeback-ms=%s", interval);
  snprintf (a[5], sizeof a[5], "writeback-threads=%s", PICK (s, threads));
  snprintf (a[6], sizeof a[6], "dirty-ratio=%u",
            (unsigned) rnd_range (s, 20, 60));
  if (journal_path) {
    snprintf (a[7], sizeof a[7], "journal=%s", journal_path);
    snprintf (a[8], sizeof a[8], "journal-size=%s", journal_size);
    snprintf (a[9], sizeof a[9], "journal-background-ratio=%s",
              image_only_pct ? "0" : PICK (s, jratios));
    na = 10;
  }
  for (i = 0; i < na; i++)
    argv[n++] = a[i];
  return n;
}

/* One cycle.  Returns the number of inconsistent bytes and errors. */
static uint64_t
run_cycle (unsigned cycle, const char *dir)
{
  char sock[PATH_MAX], bsock[PATH_MAX], uri[PATH_MAX + 32], up[32] = "";
  char a_file[PATH_MAX + 8], a[12][PATH_MAX + 32];
  char *argv[40 + nfixed];
  uint64_t jbad = 0, ebad = 0;
  uint32_t klo = 0, khi = 0;
  bool image_only = false, clean_stop = false;
  char jnote[160] = "";
  uint64_t s = seed * 1000003 + cycle, F, bad, rbad, nacked = 0, nrbytes;
  uint64_t nkind[3] = { 0 }, nfua = 0, nenotsup = 0, nerr;
  struct conn *cn = calloc (nconns, sizeof *cn);
  pid_t pid, bpid = 0;
  off_t blog_from = 0;
  unsigned i, ms;
  int n = 0, status;
  size_t k, nf, nf_ok = 0, nr, nrchecked;
  bool killed = false;

  if (cn == NULL)
    die ("calloc");
  snprintf (sock, sizeof sock, "%s/nbd.sock", dir);
  snprintf (bsock, sizeof bsock, "%s/backend.sock", dir);
  if (!jpid) /* else the replaying server's socket */
    unlink (sock);

  if (jpid) {
    memcpy (base, found, image_size); /* what the replaying server read */
    memcpy (base_z, next_z, image_size);
  } else {
    read_image (base);
    memset (base_z, 0, image_size);
  }
  atomic_store (&nwrites, 0);
  atomic_store (&cur_epoch, 0);
  atomic_store (&flush_attempts, 0);
  atomic_store (&bar_want, false);
  bar_waiting = 0;
  atomic_store (&nreads, 0);
  atomic_store (&read_bytes, 0);
  atomic_store (&nflushes, 0);
  atomic_store (&last_flush, 0);
  atomic_store (&stop, false);
  kill_stamp = UINT64_MAX;
  memset (writes, 0, max_writes * sizeof *writes);
  for (k = 0; k < max_writes; k++)
    atomic_store (&writes[k].reply, NOREPLY);
  memset (reads, 0, max_reads * sizeof *reads);
  for (k = 0; k < max_reads; k++)
    atomic_store (&reads[k].reply, NOREPLY);
  memset (flushes, 0, max_flushes * sizeof *flushes);
  hot_len = image_size < hot_size ? image_size : hot_size;
  hot_off = rnd_range (&s, 0, (image_size - hot_len) / (64 * KiB)) * 64 * KiB;

  if (strcmp (backend, "nbd") == 0) {
    char *bargv[] = { "nbdkit", "-f", "--exit-with-parent", "-U", bsock, "file",
                      a_file,   NULL };
    unlink (bsock);
    snprintf (a_file, sizeof a_file, "file=%s", image_path);
    blog_from = log_size ();
    bpid = spawn_nbdkit (bargv);
    nbd_close (connect_retry (bsock, bpid));
    snprintf (uri, sizeof uri, "uri=nbd+unix:///?socket=%s", bsock);
  } else if (is_rbd)
    snprintf (uri, sizeof uri, "rbd=%s", rbd_spec);
  else
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
  } else
    n = cache_params (&s, argv, n, a);
  argv[n] = NULL;
  if (jpid) {
    /* Journal mode: the server that replayed the last kill serves. */
    for (n = 0; jargv[n]; n++)
      argv[n] = jargv[n];
    argv[n] = NULL;
  }

  {
    double t0 = now_s ();

    pid = jpid ? jpid : spawn_nbdkit (argv);
    jpid = 0;
    for (i = 0; i < nconns; i++) {
      cn[i].h = connect_retry (sock, pid);
      cn[i].idx = i;
      cn[i].rng = mix64 (s + i + 1);
    }
    /* With rbd=, nbdkit serves once it holds the lock: after the
     * previous (killed) one's watch expired.
     */
    if (is_rbd)
      snprintf (up, sizeof up, " (serving after %.1f s)", now_s () - t0);
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
    kill_stamp = tick ();
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
  pthread_mutex_lock (&bar_lock);
  pthread_cond_broadcast (&bar_cv);
  pthread_mutex_unlock (&bar_lock);
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
    if (WIFSIGNALED (status) && WTERMSIG (status) == SIGABRT &&
        log_has (blog_from, "raw_send_socket: Assertion `sock >= 0' failed")) {
      /* nbdkit 1.32's own race: a thread sends a reply on the socket
       * another one closed when the client (our dead server) went
       * away.  The backend had replied to every request the check
       * counts on, so the image is still checked.
       */
      printf ("crash-check: note: the backend nbdkit aborted on its "
              "raw_send_socket assertion after its client died (nbdkit's "
              "race, not the plugin's)\n");
    } else if (!WIFEXITED (status) || WEXITSTATUS (status) != 0) {
      fprintf (stderr,
               "crash-check: backend nbdkit exited with status "
               "0x%x\n",
               status);
      exit (1);
    }
  }

  nw = atomic_load (&nwrites);
  if (nw > max_writes)
    nw = max_writes;
  if (journal_path && killed) {
    uint64_t js = mix64 (s ^ 0x6a6f75726e616cULL); /* the restart's */
    int jn = 0;

    /* 1. The image file alone, before anything replays the journal. */
    image_only = rnd (&js) % 100 < image_only_pct;
    if (image_only) {
      read_image (found);
      ebad = verify_epochs (found, &klo, &khi);
      if (ebad == 0)
        snprintf (jnote, sizeof jnote,
                  "; image alone: consistent with k in [%" PRIu32 ", %" PRIu32
                  "] of %" PRIu32 " flushes",
                  klo, khi, atomic_load (&flush_attempts));
      else
        snprintf (jnote, sizeof jnote, "; image alone: INCONSISTENT");
    }
    /* 2. Restart on the same journal (new cache parameters, the same
     * sector size): it replays; read everything through it.
     */
    for (jn = 0; jn < 7; jn++) {
      if (argv[jn] != jfixed[jn]) /* not this server's own */
        snprintf (jfixed[jn], sizeof jfixed[jn], "%s", argv[jn]);
      jargv[jn] = jfixed[jn];
    }
    unlink (sock);
    jn = cache_params (&js, jargv, jn, jargs);
    jargv[jn] = NULL;
    jpid = spawn_nbdkit (jargv);
    read_through (sock, jpid, found);
    found_ready = true;
    /* The image-only check takes the image file at the cycle's start
     * for the content the restarted server read, which holds only once
     * it has written back what it recovered: with it, a clean stop
     * after every restart.
     */
    clean_stop = cycle % 5 == 0 || image_only_pct > 0;
  }

  F = atomic_load (&last_flush);
  nf = atomic_load (&nflushes);
  if (nf > max_flushes)
    nf = max_flushes;
  for (k = 0; k < nf; k++)
    nf_ok += atomic_load (&flushes[k].done) != 0;
  nw = atomic_load (&nwrites);
  if (nw > max_writes)
    nw = max_writes;
  bad = verify (F);
  rbad = verify_reads (&nrchecked, &nrbytes);
  nerr = check_errors ();
  /* 3. Now and then a clean stop: the image file must hold it all. */
  if (clean_stop)
    jbad = journal_clean_stop ();
  for (k = 0; k < nw; k++) {
    const struct wrec *x = &writes[k];
    nacked += succeeded (x);
    nkind[x->kind]++;
    nfua += (x->flags & OPF_FUA) != 0;
    nenotsup += x->kind == OP_ZERO && never_applied (x);
  }
  nr = atomic_load (&nreads);
  if (nr > max_reads)
    nr = max_reads;
  for (k = 0; k < nr; k++) {
    free (reads[k].buf);
    reads[k].buf = NULL;
  }

  printf ("cycle %u%s: %s after %u ms: %zu requests (%" PRIu64 " writes, %"
          PRIu64 " zeroes of which %" PRIu64 " fast zeroes failed with "
          "ENOTSUP, %" PRIu64 " trims; %" PRIu64 " with FUA; %" PRIu64
          " succeeded, %zu covered), %zu flushes (%zu ok), %zu reads "
          "(%" PRIu64 " bytes) checked, %" PRIu64 " image bytes verified; "
          "%" PRIu64 " inconsistent in the image, %" PRIu64 " in reads, %"
          PRIu64 " errors\n",
          cycle, up, killed ? "SIGKILL" : "SIGTERM", ms, nw, nkind[OP_WRITE],
          nkind[OP_ZERO], nenotsup, nkind[OP_TRIM], nfua, nacked, ncov, nf,
          nf_ok, nrchecked, nrbytes, image_size, bad, rbad, nerr);
  if (journal_path)
    printf ("  journal: %s%s%s\n",
            killed ? "restarted on the journal, image read through it" : "",
            clean_stop ? ", then SIGTERM: image file checked" : "", jnote);
  if (verbose || bad || rbad || nerr || jbad || ebad) {
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
  t_bad_read_bytes += rbad;
  t_errors += nerr;
  for (k = 0; k < 3; k++)
    t_kind[k] += nkind[k];
  t_fua += nfua;
  t_enotsup += nenotsup;
  t_reads += nrchecked;
  t_read_bytes += nrbytes;
  first_id += nw;
  free (cn);
  return bad + rbad + nerr + jbad + ebad;
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
    "  --backend file|nbd|rbd  file=, uri= in front of an nbdkit file\n"
    "                     plugin, or rbd= (with --rbd)\n"
    "  --rbd POOL/IMAGE   the RBD image (exists, exclusive-lock, >= --size;\n"
    "                     the cluster from $CEPH_CONF); read and loaded by\n"
    "                     fresh librbd clients through --rbd-check\n"
    "  --rbd-check PATH   tests/ceph/rbd-check.py (default: rbd-check.py\n"
    "                     in $PATH)\n"
    "  --cycles N         kill cycles (default 20)\n"
    "  --soak             run cycles until SIGINT (or --seconds)\n"
    "  --seconds N        stop starting cycles after N seconds\n"
    "  --no-kill          one cycle without SIGKILL: drain, flush, SIGTERM\n"
    "  --seed S           seed for sizes, offsets, timings and parameters\n"
    "  --conns N          connections (threads), default 4\n"
    "  --qd N             requests in flight per connection, default 4\n"
    "  --min-ms/--max-ms  time between start and kill (default 100..1500)\n"
    "  --flush-pct N      %% of requests that are flushes (default 1)\n"
    "  --read-pct N       %% of requests that are reads (default 15)\n"
    "  --zero-pct N       %% of requests that are zeroes (default 15)\n"
    "  --trim-pct N       %% of requests that are trims (default 15)\n"
    "                     (the rest are writes)\n"
    "  --fua-pct N        %% of writes, zeroes, trims with FUA (default 20)\n"
    "  --hot-pct N        %% of requests in the hot range (default 85)\n"
    "  --hot-size SIZE    its length, a multiple of 64K (default 256K)\n"
    "  --align N          align writes, zeroes and trims to N bytes (a\n"
    "                     power of two up to 64K; default 1)\n"
    "  --cache-pages N    cache-size = N x the (random) page size\n"
    "  --server-log PATH  append nbdkit's stderr to PATH\n"
    "  --verbose          print every cycle's nbdkit command line\n"
    "  --journal PATH     journal mode: the plugin gets journal=PATH (a new\n"
    "                     journal); after each kill a server restarted on\n"
    "                     it replays it, and the image is read through it\n"
    "  --journal-size SIZE  journal-size= (default 16M)\n"
    "  --image-only-pct N at N%% of kills, check the image file alone (the\n"
    "                     journal lost) against the flush-epoch order;\n"
    "                     flushes become barriers, requests whole sectors\n"
    "  --wrong-model      a deliberately wrong epoch model (the image-only\n"
    "                     check must then fail)\n"
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
    O_RBD,
    O_RBDCHECK,
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
    O_READPCT,
    O_ZEROPCT,
    O_TRIMPCT,
    O_FUAPCT,
    O_HOTPCT,
    O_HOTSIZE,
    O_ALIGN,
    O_CACHEPAGES,
    O_LOG,
    O_VERBOSE,
    O_JOURNAL,
    O_JSIZE,
    O_IMAGEONLY,
    O_WRONG,
    O_HELP
  };
  static const struct option opts[] = {
    { "plugin", required_argument, NULL, O_PLUGIN },
    { "image", required_argument, NULL, O_IMAGE },
    { "size", required_argument, NULL, O_SIZE },
    { "backend", required_argument, NULL, O_BACKEND },
    { "rbd", required_argument, NULL, O_RBD },
    { "rbd-check", required_argument, NULL, O_RBDCHECK },
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
    { "read-pct", required_argument, NULL, O_READPCT },
    { "zero-pct", required_argument, NULL, O_ZEROPCT },
    { "trim-pct", required_argument, NULL, O_TRIMPCT },
    { "fua-pct", required_argument, NULL, O_FUAPCT },
    { "hot-pct", required_argument, NULL, O_HOTPCT },
    { "hot-size", required_argument, NULL, O_HOTSIZE },
    { "align", required_argument, NULL, O_ALIGN },
    { "cache-pages", required_argument, NULL, O_CACHEPAGES },
    { "server-log", required_argument, NULL, O_LOG },
    { "verbose", no_argument, NULL, O_VERBOSE },
    { "journal", required_argument, NULL, O_JOURNAL },
    { "journal-size", required_argument, NULL, O_JSIZE },
    { "image-only-pct", required_argument, NULL, O_IMAGEONLY },
    { "wrong-model", no_argument, NULL, O_WRONG },
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
    case O_RBD: rbd_spec = optarg; break;
    case O_RBDCHECK: rbd_check = optarg; break;
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
    case O_READPCT: read_pct = atoi (optarg); break;
    case O_ZEROPCT: zero_pct = atoi (optarg); break;
    case O_TRIMPCT: trim_pct = atoi (optarg); break;
    case O_FUAPCT: fua_pct = atoi (optarg); break;
    case O_HOTPCT: hot_pct = atoi (optarg); break;
    case O_HOTSIZE: hot_size = parse_size (optarg); break;
    case O_ALIGN: align = parse_size (optarg); break;
    case O_CACHEPAGES: cache_pages = atoi (optarg); break;
    case O_LOG: server_log = optarg; break;
    case O_VERBOSE: verbose = true; break;
    case O_JOURNAL: journal_path = optarg; break;
    case O_JSIZE: journal_size = optarg; break;
    case O_IMAGEONLY: image_only_pct = atoi (optarg); break;
    case O_WRONG: wrong_model = true; break;
    case O_HELP: usage (stdout); exit (0);
    default: usage (stderr); exit (1);
    }
  }
  fixed_args = argv + optind;
  nfixed = argc - optind;
  is_rbd = strcmp (backend, "rbd") == 0;
  if (plugin_path == NULL || nconns < 1 || nconns > 200 || qdepth < 1 ||
      min_ms > max_ms || image_size < MAX_WRITE || image_size % REC ||
      image_size > UINT32_MAX ||
      flush_pct + read_pct + zero_pct + trim_pct > 100 || fua_pct > 100 ||
      hot_pct > 100 || hot_size % (64 * KiB) || align > 64 * KiB || (align & (align - 1)) ||
      image_size % (64 * KiB) ||
      (strcmp (backend, "file") && strcmp (backend, "nbd") && !is_rbd) ||
      (is_rbd != (rbd_spec != NULL)) ||
      (rbd_spec && strchr (rbd_spec, '/') == NULL)) {
    usage (stderr);
    exit (1);
  }
  if (strcmp (backend, "nbd") == 0 && !plugin_has_param ("uri=")) {
    printf ("crash-check: SKIP: the plugin has no uri= parameter, so the "
            "nbd backend cannot be tested\n");
    exit (77);
  }
  if (is_rbd && !plugin_has_param ("rbd=")) {
    printf ("crash-check: SKIP: the plugin has no rbd= parameter (built "
            "without librbd), so the rbd backend cannot be tested\n");
    exit (77);
  }
  if (!have_seed)
    seed = (unsigned long long) time (NULL) ^ getpid ();
  if (journal_path || image_only_pct || wrong_model) {
    static const char *const jsectors[] = { "512", "4096" };

    if (!journal_path || strcmp (backend, "file") || no_kill || nfixed ||
        image_only_pct > 100) {
      fprintf (stderr, "crash-check: --journal needs --backend file, kills "
                       "and no PLUGIN-PARAMS; --image-only-pct and "
                       "--wrong-model need --journal\n");
      exit (1);
    }
    jsector = jsectors[seed % 2];
    if (image_only_pct) {
      /* Whole sectors: the image-only check is per sector. */
      barrier_mode = true;
      align = atoi (jsector);
    }
    unlink (journal_path); /* a new journal for the new image */
  }
  printf ("crash-check: seed %llu, backend %s%s%s, image %" PRIu64 " bytes, "
          "%u connections x %u in flight; %% of requests: %u flush, %u read, "
          "%u zero, %u trim, %u write; %u%% FUA, %u%% in %" PRIu64 " hot bytes, "
          "align %" PRIu32
          "%s\n",
          seed, backend, is_rbd ? " " : "", is_rbd ? rbd_spec : "",
          image_size, nconns, qdepth, flush_pct, read_pct,
          zero_pct, trim_pct, 100 - flush_pct - read_pct - zero_pct - trim_pct,
          fua_pct, hot_pct, hot_size, align, cache_pages ? ", tiny cache" : "");

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
  reads = calloc (max_reads, sizeof *reads);
  cov_sorted = calloc (max_writes, sizeof *cov_sorted);
  off_sorted = calloc (max_writes, sizeof *off_sorted);
  r_sorted = calloc (max_writes, sizeof *r_sorted);
  rz_sorted = calloc (max_writes, sizeof *rz_sorted);
  base = malloc (image_size);
  found = malloc (image_size);
  zok = malloc (image_size);
  base_z = calloc (1, image_size);
  next_z = calloc (1, image_size);
  covm = malloc (image_size * sizeof *covm);
  rzok = malloc (MAX_WRITE);
  rmap = malloc (MAX_WRITE * sizeof *rmap);
  rzmap = malloc (MAX_WRITE * sizeof *rzmap);
  rnext = malloc ((MAX_WRITE + 1) * sizeof *rnext);
  if (!writes || !flushes || !reads || !cov_sorted || !off_sorted ||
      !r_sorted || !rz_sorted || !base || !found || !zok || !base_z || !next_z || !covm ||
      !rzok || !rmap || !rzmap || !rnext)
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
  /* Journal mode: the last replaying server stops cleanly, and the
   * image file must then hold what it served.
   */
  if (jpid) {
    uint64_t d = journal_clean_stop ();

    printf ("crash-check: journal: clean stop at the end: the image file %s\n",
            d ? "DIFFERS from what the server returned"
              : "holds what the server returned");
    bad += d;
  }

  printf ("crash-check: %" PRIu64 " %s cycles, %" PRIu64 " requests issued "
          "and checked (%" PRIu64 " writes, %" PRIu64 " zeroes of which %"
          PRIu64 " fast zeroes failed with ENOTSUP, %" PRIu64 " trims; %"
          PRIu64 " with FUA; %" PRIu64 " succeeded, %" PRIu64 " covered), %"
          PRIu64 " flushes (%" PRIu64 " ok), %" PRIu64 " reads (%" PRIu64
          " bytes) checked, %" PRIu64 " image bytes verified; %" PRIu64
          " inconsistent image bytes in %" PRIu64 " ranges, %" PRIu64
          " inconsistent read bytes, %" PRIu64 " errors\n",
          t_cycles, no_kill ? "no-kill" : "kill", t_writes, t_kind[OP_WRITE],
          t_kind[OP_ZERO], t_enotsup, t_kind[OP_TRIM], t_fua, t_acked,
          t_covered, t_flushes, t_flushes_ok, t_reads, t_read_bytes, t_bytes,
          t_bad_bytes, t_bad_ranges, t_bad_read_bytes, t_errors);

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
