/* subpage unit tests: common/pool.h, the item pool with a malloc
 * fallback.
 *
 * Pooled items come from the array, are distinct and come back; when
 * the array is exhausted pool_get mallocs, and pool_put frees those
 * (LeakSanitizer, in the sanitizer builds, fails the test if one is
 * kept); threads taking and giving back items never share one.
 */
#undef NDEBUG

#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "pool.h"

struct item {
  struct item *link; /* the pool's, while free */
  uint64_t owner;
  char payload[40];
};

#define N 8

static void
test_pooled_then_malloc (void **state)
{
  struct pool p;
  struct item *it[N + 2];

  (void) state;
  assert_int_equal (pool_init (&p, sizeof (struct item), N), 0);
  for (int i = 0; i < N; i++) {
    it[i] = pool_get (&p);
    assert_non_null (it[i]);
    assert_true (pool_owns (&p, it[i]));
    for (int j = 0; j < i; j++)
      assert_ptr_not_equal (it[i], it[j]);
  }
  /* All N are out: the next ones are malloc'd. */
  it[N] = pool_get (&p);
  it[N + 1] = pool_get (&p);
  assert_non_null (it[N]);
  assert_non_null (it[N + 1]);
  assert_false (pool_owns (&p, it[N]));
  assert_false (pool_owns (&p, it[N + 1]));
  /* Given back: freed (a leak would fail the sanitizer build). */
  pool_put (&p, it[N]);
  pool_put (&p, it[N + 1]);

  /* A pooled item given back is handed out again, not malloc'd. */
  pool_put (&p, it[3]);
  assert_ptr_equal (pool_get (&p), it[3]);

  for (int i = 0; i < N; i++)
    pool_put (&p, it[i]);
  pool_destroy (&p);
}

static void
test_items_are_whole (void **state)
{
  struct pool p;
  struct item *a, *b;

  (void) state;
  /* The link lives in a free item only: a user's data survives. */
  assert_int_equal (pool_init (&p, sizeof (struct item), 2), 0);
  a = pool_get (&p);
  b = pool_get (&p);
  memset (a, 0xa5, sizeof *a);
  memset (b, 0x5a, sizeof *b);
  for (size_t i = 0; i < sizeof a->payload; i++) {
    assert_int_equal ((unsigned char) a->payload[i], 0xa5);
    assert_int_equal ((unsigned char) b->payload[i], 0x5a);
  }
  pool_put (&p, a);
  pool_put (&p, b);
  pool_destroy (&p);
}

static void
test_empty_pool_mallocs (void **state)
{
  struct pool p;

  (void) state;
  /* An empty pool: every item is malloc'd. */
  assert_int_equal (pool_init (&p, sizeof (struct item), 0), 0);
  struct item *x = pool_get (&p);
  assert_non_null (x);
  assert_false (pool_owns (&p, x));
  pool_put (&p, x);
  pool_destroy (&p);
}

static struct pool shared;

static void *
hammer (void *arg)
{
  uint64_t me = (uintptr_t) arg;

  for (int k = 0; k < 20000; k++) {
    struct item *it = pool_get (&shared);

    assert_non_null (it);
    it->owner = me;
    if (k % 64 == 0)
      sched_yield ();
    assert_int_equal (it->owner, me); /* no one else has it */
    pool_put (&shared, it);
  }
  return NULL;
}

static void
test_threads_never_share_an_item (void **state)
{
  pthread_t t[4];

  (void) state;
  assert_int_equal (pool_init (&shared, sizeof (struct item), 2), 0);
  for (uintptr_t i = 0; i < 4; i++)
    assert_int_equal (pthread_create (&t[i], NULL, hammer, (void *) (i + 1)),
                      0);
  for (int i = 0; i < 4; i++)
    pthread_join (t[i], NULL);
  pool_destroy (&shared);
}

int
main (void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test (test_pooled_then_malloc),
    cmocka_unit_test (test_items_are_whole),
    cmocka_unit_test (test_empty_pool_mallocs),
    cmocka_unit_test (test_threads_never_share_an_item),
  };

  return cmocka_run_group_tests (tests, NULL, NULL);
}
