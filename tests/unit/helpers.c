/* subpage unit tests: shared helpers (see helpers.h). */
#undef UNIT_TESTING /* keep libc malloc: see the test files */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <cmocka.h>

#include "helpers.h"

struct cache_config
test_config (void)
{
  return (struct cache_config){
    .size = 4 * MiB,
    .cache_size = 1 * MiB,
    .page_size = 64 * KiB,
    .sector_size = 512,
    .mode = CACHE_MODE_WRITEBACK,
    .dirty_background_ratio = 10,
    .dirty_ratio = 40,
    .batch_bytes = 0,
  };
}

uint64_t
now_ms (void)
{
  struct timespec ts;

  clock_gettime (CLOCK_MONOTONIC, &ts);
  return (uint64_t) ts.tv_sec * 1000 + (uint64_t) ts.tv_nsec / 1000000;
}

void
sleep_ms (unsigned ms)
{
  struct timespec ts = { .tv_sec = ms / 1000,
                         .tv_nsec = (long) (ms % 1000) * 1000000 };

  while (nanosleep (&ts, &ts) == -1 && errno == EINTR)
    ;
}

bool
wait_until (bool (*pred) (void *), void *arg, unsigned timeout_ms)
{
  uint64_t t0 = now_ms ();

  while (!pred (arg)) {
    if (now_ms () - t0 > timeout_ms)
      return false;
    sleep_ms (1);
  }
  return true;
}

atomic_bool tc_quiet_errors;
atomic_uint tc_error_lines;

static void
test_log (void *opaque, enum cache_log_level level, const char *fmt, va_list ap)
{
  (void) opaque;
  if (level == CACHE_LOG_ERROR)
    atomic_fetch_add (&tc_error_lines, 1);
  if (level == CACHE_LOG_DEBUG && !getenv ("SUBPAGE_TEST_DEBUG"))
    return;
  if (level == CACHE_LOG_ERROR && atomic_load (&tc_quiet_errors))
    return;
  fprintf (stderr, "cache %s: ",
           level == CACHE_LOG_ERROR  ? "error"
           : level == CACHE_LOG_INFO ? "info"
                                     : "debug");
  vfprintf (stderr, fmt, ap);
  fputc ('\n', stderr);
}

static void
test_kick (void *opaque)
{
  struct tcache *t = opaque;

  atomic_fetch_add (&t->kicks, 1);
}

int
tc_setup (void **state)
{
  struct tcache *t = calloc (1, sizeof *t);

  if (!t)
    return -1;
  atomic_init (&t->kicks, 0);
  *state = t;
  return 0;
}

int
tc_teardown (void **state)
{
  struct tcache *t = *state;

  tc_close (t);
  free (t);
  *state = NULL;
  return 0;
}

void
tc_open_ops (struct tcache *t, const struct cache_config *cfg,
             const struct cache_backend_ops *ops)
{
  int err = 0;

  assert_null (t->c);
  t->cfg = *cfg;
  t->f = fake_new (cfg->size);
  t->c = cache_create (cfg, ops, t->f, test_log, NULL, &err);
  if (!t->c)
    fail_msg ("cache_create: %s", strerror (-err));
  cache_set_kick (t->c, test_kick, t);
  if (getenv ("SUBPAGE_TEST_DEBUG"))
    cache_set_debug (t->c, true);
  atomic_store (&t->kicks, 0);
}

void
tc_open (struct tcache *t, const struct cache_config *cfg)
{
  tc_open_ops (t, cfg, &fake_ops);
}

void
tc_close (struct tcache *t)
{
  uint64_t t0 = now_ms ();
  struct fake_counts fc;
  bool ok, pins_ok;

  if (!t->c)
    return;

  /* Let everything blocked in the fake or on a captured run finish. */
  for (int op = 0; op < FAKE_NR_OPS; op++)
    fake_hold (t->f, op, false);
  for (;;) {
    bool all = true;

    fake_complete_all (t->f, t->c, 0);
    for (struct async *a = t->asyncs; a; a = a->next)
      if (!atomic_load (&a->done))
        all = false;
    if (all)
      break;
    if (now_ms () - t0 > WAIT_TIMEOUT_MS) {
      fprintf (stderr, "teardown: a test thread is stuck in the cache\n");
      abort ();
    }
    sleep_ms (1);
  }
  while (t->asyncs) {
    struct async *a = t->asyncs;
    t->asyncs = a->next;
    if (!a->joined)
      pthread_join (a->th, NULL);
    free (a->buf);
    free (a);
  }
  fake_complete_all (t->f, t->c, 0);

  ok = cache_debug_check (t->c);
  pins_ok = no_stray_pins (t);
  fake_get_counts (t->f, &fc);
  cache_destroy (t->c);
  fake_free (t->f);
  t->c = NULL;
  t->f = NULL;
  assert_true (ok);
  assert_true (pins_ok);
  assert_int_equal (fc.bad, 0);
}

struct cache_stats
stats (struct cache *c)
{
  struct cache_stats st;

  memset (&st, 0, sizeof st);
  cache_get_stats (c, &st);
  return st;
}

unsigned char
pattern_byte (uint64_t off, unsigned seed)
{
  uint64_t x = off * UINT64_C (0x9e3779b97f4a7c15) +
               (uint64_t) (seed + 1) * UINT64_C (0xbf58476d1ce4e5b9);

  x ^= x >> 31;
  x *= UINT64_C (0x94d049bb133111eb);
  x ^= x >> 29;
  return (unsigned char) (x >> 56);
}

void
pattern (void *buf, size_t n, uint64_t off, unsigned seed)
{
  unsigned char *p = buf;

  for (size_t i = 0; i < n; i++)
    p[i] = pattern_byte (off + i, seed);
}

long
pattern_mismatch (const void *buf, size_t n, uint64_t off, unsigned seed)
{
  const unsigned char *p = buf;

  for (size_t i = 0; i < n; i++)
    if (p[i] != pattern_byte (off + i, seed))
      return (long) i;
  return -1;
}

void
fill_disk (struct tcache *t, unsigned seed)
{
  size_t n = t->cfg.size;
  unsigned char *buf = malloc (n);

  assert_non_null (buf);
  pattern (buf, n, 0, seed);
  fake_disk_write (t->f, buf, n, 0);
  free (buf);
}

int
write_pattern (struct tcache *t, uint64_t off, size_t n, unsigned seed,
               uint32_t flags)
{
  unsigned char *buf = malloc (n);
  int r;

  assert_non_null (buf);
  pattern (buf, n, off, seed);
  r = cache_write (t->c, buf, (uint32_t) n, off, flags);
  free (buf);
  return r;
}

bool
read_is_pattern (struct tcache *t, uint64_t off, size_t n, unsigned seed)
{
  unsigned char *buf = malloc (n);
  int r;
  long bad = -1;

  assert_non_null (buf);
  r = cache_read (t->c, buf, (uint32_t) n, off);
  if (r == 0)
    bad = pattern_mismatch (buf, n, off, seed);
  if (r != 0 || bad >= 0)
    fprintf (stderr,
             "read_is_pattern: off=%llu n=%zu seed=%u: r=%d, "
             "first mismatch at +%ld\n",
             (unsigned long long) off, n, seed, r, bad);
  free (buf);
  return r == 0 && bad < 0;
}

bool
read_is_byte (struct tcache *t, uint64_t off, size_t n, unsigned char b)
{
  unsigned char *buf = malloc (n);
  bool ok;

  assert_non_null (buf);
  memset (buf, b ^ 0xff, n);
  ok = cache_read (t->c, buf, (uint32_t) n, off) == 0;
  for (size_t i = 0; ok && i < n; i++)
    ok = buf[i] == b;
  free (buf);
  return ok;
}

bool
disk_is_pattern (struct tcache *t, uint64_t off, size_t n, unsigned seed)
{
  unsigned char *buf = malloc (n);
  long bad;

  assert_non_null (buf);
  fake_disk_read (t->f, buf, n, off);
  bad = pattern_mismatch (buf, n, off, seed);
  if (bad >= 0)
    fprintf (stderr,
             "disk_is_pattern: off=%llu n=%zu seed=%u: "
             "first mismatch at +%ld\n",
             (unsigned long long) off, n, seed, bad);
  free (buf);
  return bad < 0;
}

bool
sectors_are (struct tcache *t, uint64_t off, uint64_t n, unsigned want)
{
  uint64_t ss = t->cfg.sector_size;

  for (uint64_t o = off - off % ss; o < off + n; o += ss) {
    unsigned got = cache_debug_sector (t->c, o);
    if (got != want) {
      fprintf (stderr,
               "sectors_are: sector at %llu has %s%s%s (%#x), "
               "want %#x\n",
               (unsigned long long) o, got & CACHE_SECT_V ? "V" : "-",
               got & CACHE_SECT_D ? "D" : "-", got & CACHE_SECT_W ? "W" : "-",
               got, want);
      return false;
    }
  }
  return true;
}

bool
no_stray_pins (struct tcache *t)
{
  uint64_t ps = t->cfg.page_size, ss = t->cfg.sector_size;
  bool ok = true;

  for (uint64_t off = 0; off < t->cfg.size; off += ps) {
    unsigned refs, bits = 0;

    if (!cache_debug_resident (t->c, off))
      continue;
    refs = cache_debug_refs (t->c, off);
    if (refs == 0)
      continue;
    for (uint64_t o = off; o < off + ps && o < t->cfg.size; o += ss)
      bits |= cache_debug_sector (t->c, o);
    if (!(bits & (CACHE_SECT_D | CACHE_SECT_W))) {
      fprintf (stderr,
               "no_stray_pins: page at %llu has %u reference(s) "
               "but no D or W sector\n",
               (unsigned long long) off, refs);
      ok = false;
    }
  }
  return ok;
}

static void *
async_main (void *arg)
{
  struct async *a = arg;
  struct cache *c = a->t->c;
  int r;

  switch (a->op) {
  case ASYNC_READ: r = cache_read (c, a->buf, a->count, a->off); break;
  case ASYNC_WRITE:
    r = cache_write (c, a->buf, a->count, a->off, a->flags);
    break;
  case ASYNC_ZERO: r = cache_zero (c, a->count, a->off, a->flags); break;
  case ASYNC_TRIM: r = cache_trim (c, a->count, a->off, a->flags); break;
  case ASYNC_FLUSH: r = cache_flush (c); break;
  default: abort ();
  }
  atomic_store (&a->ret, r);
  atomic_store (&a->done, true);
  return NULL;
}

struct async *
async_start (struct tcache *t, enum async_op op, void *buf, uint32_t count,
             uint64_t off, uint32_t flags)
{
  struct async *a = calloc (1, sizeof *a);

  assert_non_null (a);
  a->t = t;
  a->op = op;
  if (op == ASYNC_READ || op == ASYNC_WRITE) {
    /* The thread owns its buffer, so a failed test cannot free it
     * under the thread's feet.
     */
    a->buf = calloc (1, count);
    assert_non_null (a->buf);
    if (buf) /* a read's buffer starts as BUF */
      memcpy (a->buf, buf, count);
  }
  a->count = count;
  a->off = off;
  a->flags = flags;
  atomic_init (&a->ret, -1);
  atomic_init (&a->done, false);
  assert_int_equal (pthread_create (&a->th, NULL, async_main, a), 0);
  a->next = t->asyncs;
  t->asyncs = a;
  return a;
}

bool
async_done (struct async *a)
{
  return atomic_load (&a->done);
}

int
async_join (struct async *a)
{
  WAIT_FOR (async_done (a));
  if (!a->joined) {
    assert_int_equal (pthread_join (a->th, NULL), 0);
    a->joined = true;
  }
  return atomic_load (&a->ret);
}

struct fake_counts
counts (struct tcache *t)
{
  struct fake_counts fc;

  fake_get_counts (t->f, &fc);
  return fc;
}

const uint64_t three_ranges[3][2] = {
  { 3 * PG + 0 * SS, 8 * SS },
  { 3 * PG + 20 * SS, 8 * SS },
  { 3 * PG + 100 * SS, 8 * SS },
};

const int perms3[6][3] = {
  { 0, 1, 2 }, { 0, 2, 1 }, { 1, 0, 2 }, { 1, 2, 0 }, { 2, 0, 1 }, { 2, 1, 0 },
};

void
stops_init (struct stops *st)
{
  memset (st, 0, sizeof *st);
  pthread_mutex_init (&st->lock, NULL);
  pthread_cond_init (&st->cv, NULL);
}

void
stops_destroy (struct stops *st)
{
  pthread_cond_destroy (&st->cv);
  pthread_mutex_destroy (&st->lock);
}

unsigned
stops_add (struct stops *st, const char *point, unsigned nth)
{
  assert_true (st->n < MAX_STOPS);
  st->s[st->n].point = point;
  st->s[st->n].nth = nth;
  return st->n++;
}

void
stops_hook (void *opaque, const char *point)
{
  struct stops *st = opaque;
  int park = -1;

  pthread_mutex_lock (&st->lock);
  for (unsigned k = 0; k < st->n; k++) /* count the arrival first */
    if (strcmp (point, st->s[k].point) == 0 && ++st->s[k].seen == st->s[k].nth)
      park = (int) k;
  if (park >= 0) {
    st->s[park].parked = true;
    pthread_cond_broadcast (&st->cv);
    while (!st->s[park].go)
      pthread_cond_wait (&st->cv, &st->lock);
  }
  pthread_mutex_unlock (&st->lock);
}

bool
stops_parked (struct stops *st, unsigned k)
{
  bool r;

  pthread_mutex_lock (&st->lock);
  r = st->s[k].parked;
  pthread_mutex_unlock (&st->lock);
  return r;
}

unsigned
stops_seen (struct stops *st, unsigned k)
{
  unsigned r;

  pthread_mutex_lock (&st->lock);
  r = st->s[k].seen;
  pthread_mutex_unlock (&st->lock);
  return r;
}

void
stops_release (struct stops *st, unsigned k)
{
  pthread_mutex_lock (&st->lock);
  st->s[k].go = true;
  pthread_cond_broadcast (&st->cv);
  pthread_mutex_unlock (&st->lock);
}
