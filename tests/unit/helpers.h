/* subpage unit tests: shared helpers for the cache tests.
 *
 *  - struct tcache: one cache over one fake backend, opened by a test
 *    with the config it needs and closed by the group's teardown, which
 *    also checks that every page passes page_check and that the core
 *    never sent the fake an out-of-range request;
 *  - test_config(): the default geometry (4 MiB image, 64 KiB pages,
 *    512 B sectors, 1 MiB cache, write-back, ratios 10/40);
 *  - pattern(): deterministic data, a function of (absolute offset,
 *    seed), so any byte can be checked without keeping a copy;
 *  - WAIT_FOR(cond): polls every millisecond, fails the test after 10 s.
 *    Use it only to wait until another thread has REACHED a blocking
 *    point (a waiting_* counter, a held count), then assert;
 *  - async_*(): run one cache call in a thread and see when it returns.
 *
 * cmocka's assertions work only in the test's own thread: threads
 * started here never assert, they record the return value and set an
 * atomic done flag.
 */
#ifndef SUBPAGE_TEST_HELPERS_H
#define SUBPAGE_TEST_HELPERS_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cache.h"
#include "cache-debug.h"
#include "fake-backend.h"

#define KiB (UINT64_C (1) << 10)
#define MiB (UINT64_C (1) << 20)

#define WAIT_TIMEOUT_MS 10000

/* The default geometry's page and sector size, and short names for the
 * sector state bits of cache_debug_sector().
 */
#define PG (64 * KiB)
#define SS 512
#define V CACHE_SECT_V
#define D CACHE_SECT_D
#define W CACHE_SECT_W

struct async;

struct tcache {
  struct cache *c;
  struct fake *f;
  struct cache_config cfg;
  atomic_uint kicks;          /* calls of the kick hook */
  struct async *asyncs;       /* threads started by async_* */
};

struct cache_config test_config (void);

/* While true, the caches' error messages are not printed (for tests
 * that fail write-back on purpose thousands of times).
 */
extern atomic_bool tc_quiet_errors;
/* Error-level lines the caches have logged (quiet or not). */
extern atomic_uint tc_error_lines;

/* cmocka group/test setup and teardown: *state is a struct tcache. */
int tc_setup (void **state);
int tc_teardown (void **state);

/* Creates the fake (cfg->size bytes) and the cache; asserts success. */
void tc_open (struct tcache *t, const struct cache_config *cfg);
void tc_open_ops (struct tcache *t, const struct cache_config *cfg,
                  const struct cache_backend_ops *ops);
/* Opens the gates, completes pending captures, joins threads, checks
 * the cache and frees it all.  Called by tc_teardown; a test may call
 * it itself to reopen with another config.
 */
void tc_close (struct tcache *t);

struct cache_stats stats (struct cache *c);
/* Three separate 8-sector ranges in page 3 (several runs in flight for
 * one page), and the six orders in which three runs can complete.
 */
extern const uint64_t three_ranges[3][2];
extern const int perms3[6][3];

/* The fake backend's counters. */
struct fake_counts counts (struct tcache *t);
uint64_t now_ms (void);
void sleep_ms (unsigned ms);

/* Polls PRED (ARG) every millisecond until true (returns true) or
 * TIMEOUT_MS pass (returns false).
 */
bool wait_until (bool (*pred) (void *), void *arg, unsigned timeout_ms);

#define WAIT_FOR(cond)                                                  \
  do {                                                                  \
    uint64_t _wf_t0 = now_ms ();                                        \
    while (!(cond)) {                                                   \
      if (now_ms () - _wf_t0 > WAIT_TIMEOUT_MS)                         \
        fail_msg ("%s:%d: timed out waiting for %s",                    \
                  __FILE__, __LINE__, #cond);                           \
      sleep_ms (1);                                                     \
    }                                                                   \
  } while (0)

/* Deterministic data. */
unsigned char pattern_byte (uint64_t off, unsigned seed);
void pattern (void *buf, size_t n, uint64_t off, unsigned seed);
/* Index of the first byte of BUF that differs from the pattern, or -1. */
long pattern_mismatch (const void *buf, size_t n, uint64_t off, unsigned seed);
/* Fills the whole fake disk with pattern SEED. */
void fill_disk (struct tcache *t, unsigned seed);
/* Writes pattern SEED over [off, off+n) through the cache. */
int write_pattern (struct tcache *t, uint64_t off, size_t n, unsigned seed,
                   uint32_t flags);
/* Reads [off, off+n) through the cache and compares it with pattern
 * SEED; true if equal (and the read returned 0).
 */
bool read_is_pattern (struct tcache *t, uint64_t off, size_t n, unsigned seed);
bool read_is_byte (struct tcache *t, uint64_t off, size_t n, unsigned char b);
bool disk_is_pattern (struct tcache *t, uint64_t off, size_t n, unsigned seed);

/* Every sector in [off, off+n) has exactly the bits WANT (V|D|W). */
bool sectors_are (struct tcache *t, uint64_t off, uint64_t n, unsigned want);

/* In a quiescent cache (no request running, no test pin), every page
 * that holds a reference must hold a D or W sector: the dirty list and
 * runs in flight are the only other holders.  Returns false (and
 * prints the page) on a stray pin, which would keep a clean page from
 * ever being evicted.  tc_close checks it.
 */
bool no_stray_pins (struct tcache *t);

/* Runs one cache call in a thread.  For ASYNC_WRITE the data is copied
 * from BUF at start; for ASYNC_READ, a->buf starts as a copy of BUF
 * (zeroes if BUF is NULL: pass a poison pattern to see bytes the read
 * did not fill) and holds the data read after async_join.  Teardown joins and frees them.
 */
enum async_op {
  ASYNC_READ, ASYNC_WRITE, ASYNC_ZERO, ASYNC_TRIM, ASYNC_FLUSH,
};
struct async {
  struct async *next;
  pthread_t th;
  struct tcache *t;
  enum async_op op;
  void *buf;
  uint32_t count;
  uint64_t off;
  uint32_t flags;
  atomic_int ret;
  atomic_bool done;
  bool joined;
};
struct async *async_start (struct tcache *t, enum async_op op, void *buf,
                           uint32_t count, uint64_t off, uint32_t flags);
bool async_done (struct async *a);
/* Joins the thread (which must be done or about to be) and returns its
 * result.  Fails the test if it does not finish within the timeout.
 */
int async_join (struct async *a);

/* Park points (cache_debug_set_park): install with
 *   cache_debug_set_park (t->c, stops_hook, &st);
 * Stop K holds the Nth thread (from 1) to reach its point until the test
 * releases it; every arrival at a point is counted, held or not.
 */
#define MAX_STOPS 4
struct stops {
  pthread_mutex_t lock;
  pthread_cond_t cv;
  unsigned n;
  struct {
    const char *point;
    unsigned nth, seen;
    bool parked, go;
  } s[MAX_STOPS];
};
void stops_init (struct stops *st);
void stops_destroy (struct stops *st);
/* Adds a stop; returns its index K. */
unsigned stops_add (struct stops *st, const char *point, unsigned nth);
void stops_hook (void *opaque, const char *point);
bool stops_parked (struct stops *st, unsigned k);
unsigned stops_seen (struct stops *st, unsigned k);
void stops_release (struct stops *st, unsigned k);

#endif /* SUBPAGE_TEST_HELPERS_H */
