/* subpage unit tests: many threads at once (pin before use, idle before
 * unmap and flush under load; mainly a target for ThreadSanitizer).
 *
 * Four workers each own a disjoint 1 MiB region of the image and run a
 * seeded random mix of unaligned reads, writes (some FUA), zeroes,
 * trims and flushes in it, checking every read against their own flat
 * model; a background thread runs cache_writeback in a loop, as the
 * write-back server would.  The cache has 16 pages for a 4 MiB image,
 * so pages are evicted and reused all the time, and the dirty limit
 * throttles writers.  Outcomes do not depend on timing: each worker's
 * region is changed only by that worker, so its model is exact
 * whatever the interleaving (a trim zeroes the whole sectors it covers,
 * because the fake's trim zeroes and the trim waits for write-back of
 * the range first).  At the end a flush must leave every model on the
 * fake disk.
 */
#undef NDEBUG
/* cache_test_dep defines UNIT_TESTING for cache-assert.h; here it would
 * make cmocka.h swap malloc/free for its leak-checking allocator, which
 * is not thread-safe and flags buffers freed by the teardown.
 */
#undef UNIT_TESTING

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "helpers.h"

#define NWORKERS 4
#define REGION (1 * MiB)
#define OPS 1500

struct worker {
  struct tcache *t;
  pthread_t th;
  unsigned id;
  uint64_t base;
  unsigned char *model;
  unsigned seed;
  unsigned nops[6];
  atomic_bool failed;
  char msg[256];
};

static atomic_bool stop_bg;
static atomic_uint bg_passes;

static void
worker_fail (struct worker *w, const char *what, uint64_t off, uint32_t len,
             int r)
{
  if (!atomic_load (&w->failed)) {
    snprintf (w->msg, sizeof w->msg, "worker %u: %s off=%llu len=%u r=%d",
              w->id, what, (unsigned long long) off, len, r);
    atomic_store (&w->failed, true);
  }
}

static void *
worker_main (void *arg)
{
  struct worker *w = arg;
  struct cache *c = w->t->c;
  unsigned char *buf = malloc (PG);

  if (!buf) {
    worker_fail (w, "malloc", 0, 0, -ENOMEM);
    return NULL;
  }
  for (unsigned i = 0; i < OPS && !atomic_load (&w->failed); i++) {
    unsigned op = (unsigned) rand_r (&w->seed) % 100;
    uint32_t len = 1 + (uint32_t) rand_r (&w->seed) %
                         (rand_r (&w->seed) % 2 ? 4096 : PG);
    uint64_t rel = (uint64_t) rand_r (&w->seed) % (REGION - len + 1);
    uint64_t off = w->base + rel;
    int r;

    if (rand_r (&w->seed) % 3 == 0) {
      rel -= rel % SS;
      off = w->base + rel;
    }
    if (op < 35) {
      uint32_t flags = rand_r (&w->seed) % 10 == 0 ? CACHE_FUA : 0;
      pattern (buf, len, off, 1000 * w->id + i);
      r = cache_write (c, buf, len, off, flags);
      if (r != 0)
        worker_fail (w, "write", off, len, r);
      memcpy (w->model + rel, buf, len);
      w->nops[0]++;
    }
    else if (op < 75) {
      r = cache_read (c, buf, len, off);
      if (r != 0)
        worker_fail (w, "read", off, len, r);
      else if (memcmp (buf, w->model + rel, len) != 0)
        worker_fail (w, "read: data differs from the model", off, len, 0);
      w->nops[1]++;
    }
    else if (op < 85) {
      r = cache_zero (c, len, off, rand_r (&w->seed) % 2 ? CACHE_MAY_TRIM : 0);
      if (r != 0)
        worker_fail (w, "zero", off, len, r);
      memset (w->model + rel, 0, len);
      w->nops[2]++;
    }
    else if (op < 95) {
      uint64_t a = (rel + SS - 1) / SS * SS, e = (rel + len) / SS * SS;
      r = cache_trim (c, len, off, 0);
      if (r != 0)
        worker_fail (w, "trim", off, len, r);
      if (a < e)
        memset (w->model + a, 0, e - a);
      w->nops[3]++;
    }
    else {
      r = cache_flush (c);
      if (r != 0)
        worker_fail (w, "flush", 0, 0, r);
      w->nops[4]++;
    }
  }
  free (buf);
  return NULL;
}

static void *
bg_main (void *arg)
{
  struct tcache *t = arg;
  unsigned n = 0;

  while (!atomic_load (&stop_bg)) {
    int r = cache_writeback (t->c,
                             n++ % 4 ? CACHE_WB_BACKGROUND : CACHE_WB_EXPIRED,
                             0);
    atomic_fetch_add (&bg_passes, 1);
    if (r <= 0)
      sleep_ms (1);
  }
  return NULL;
}

static void
test_parallel_regions (void **state)
{
  struct tcache *t = *state;
  struct cache_config cfg = test_config ();
  struct worker w[NWORKERS];
  pthread_t bg;
  struct cache_stats st;

  cfg.cache_size = 16 * PG;
  cfg.dirty_ratio = 40;
  assert_true (cfg.size == NWORKERS * REGION);
  tc_open (t, &cfg);
  fill_disk (t, 7);
  atomic_store (&stop_bg, false);
  atomic_store (&bg_passes, 0);
  assert_int_equal (pthread_create (&bg, NULL, bg_main, t), 0);

  for (unsigned i = 0; i < NWORKERS; i++) {
    memset (&w[i], 0, sizeof w[i]);
    w[i].t = t;
    w[i].id = i;
    w[i].base = i * REGION;
    w[i].seed = 12345 + i;
    w[i].model = malloc (REGION);
    assert_non_null (w[i].model);
    pattern (w[i].model, REGION, w[i].base, 7);
    atomic_init (&w[i].failed, false);
    assert_int_equal (pthread_create (&w[i].th, NULL, worker_main, &w[i]), 0);
  }
  for (unsigned i = 0; i < NWORKERS; i++)
    assert_int_equal (pthread_join (w[i].th, NULL), 0);
  atomic_store (&stop_bg, true);
  assert_int_equal (pthread_join (bg, NULL), 0);

  for (unsigned i = 0; i < NWORKERS; i++)
    if (atomic_load (&w[i].failed))
      fail_msg ("%s", w[i].msg);

  assert_int_equal (cache_flush (t->c), 0);
  for (unsigned i = 0; i < NWORKERS; i++) {
    if (!fake_disk_equals (t->f, w[i].model, REGION, w[i].base))
      fail_msg ("region %u: disk differs from the model after flush", i);
    /* Each worker did a real mix. */
    assert_true (w[i].nops[0] > 300 && w[i].nops[1] > 300);
    assert_true (w[i].nops[2] > 50 && w[i].nops[3] > 50 && w[i].nops[4] > 20);
    free (w[i].model);
  }
  st = stats (t->c);
  assert_true (st.evictions > 100);
  assert_true (st.wb_runs > 0);
  assert_true (atomic_load (&bg_passes) > 0);
  assert_int_equal (st.dirty_bytes, 0);
  assert_int_equal (st.runs_in_flight, 0);
  assert_true (cache_debug_check (t->c));
}

int
main (void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test_setup_teardown (test_parallel_regions, tc_setup,
                                     tc_teardown),
  };

  return cmocka_run_group_tests (tests, NULL, NULL);
}
