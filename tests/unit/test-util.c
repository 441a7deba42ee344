/* subpage unit tests: common/util.h, the header-only arithmetic helpers.
 *
 * Each helper gets its own test.  The power-of-2 assertions inside
 * ROUND_UP/ROUND_DOWN/IS_ALIGNED/log2_u64 are plain assert() (util.h is
 * also used outside the cache core), so they are checked by running the
 * offending expression in a forked child and expecting SIGABRT.
 */
#undef NDEBUG
/* cache_test_dep defines UNIT_TESTING for cache-assert.h; here it would
 * make cmocka.h swap malloc/free for its leak-checking allocator, which
 * is not thread-safe and flags buffers freed by the teardown.
 */
#undef UNIT_TESTING

#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <fcntl.h>
#include <unistd.h>
#include <sys/wait.h>
#include <cmocka.h>

#include "util.h"

static int calls;

static int
counted (int v)
{
  calls++;
  return v;
}

static void
test_min_max_evaluate_once (void **state)
{
  int i = 0, j = 10;

  (void) state;
  assert_int_equal (MIN (i++, j++), 0);
  assert_int_equal (i, 1);
  assert_int_equal (j, 11);
  assert_int_equal (MAX (i++, j++), 11);
  assert_int_equal (i, 2);
  assert_int_equal (j, 12);

  calls = 0;
  assert_int_equal (MIN (counted (3), counted (-4)), -4);
  assert_int_equal (calls, 2);
  calls = 0;
  assert_int_equal (MAX (counted (3), counted (-4)), 3);
  assert_int_equal (calls, 2);
}

static void
test_min_max_values (void **state)
{
  uint64_t big = UINT64_C (0xffffffff00000000);

  (void) state;
  assert_int_equal (MIN (5, 5), 5);
  assert_int_equal (MAX (-1, -2), -1);
  assert_true (MIN (big, UINT64_C (1)) == 1);
  assert_true (MAX (big, UINT64_C (1)) == big);
  assert_true (MIN (UINT64_MAX, big) == big);
}

static void
test_is_power_of_2 (void **state)
{
  (void) state;
  assert_false (is_power_of_2 (0));
  assert_true (is_power_of_2 (1));
  assert_true (is_power_of_2 (2));
  assert_false (is_power_of_2 (3));
  assert_true (is_power_of_2 (4096));
  assert_false (is_power_of_2 (4097));
  assert_false (is_power_of_2 (6144));
  assert_true (is_power_of_2 (UINT64_C (1) << 63));
  assert_false (is_power_of_2 (UINT64_MAX));
  for (unsigned b = 0; b < 64; b++) {
    assert_true (is_power_of_2 (UINT64_C (1) << b));
    if (b > 1)
      assert_false (is_power_of_2 ((UINT64_C (1) << b) + 1));
  }
}

static void
test_round_up (void **state)
{
  uint64_t x = (UINT64_C (1) << 40) + 1;

  (void) state;
  assert_int_equal (ROUND_UP (0, 512), 0);
  assert_int_equal (ROUND_UP (1, 512), 512);
  assert_int_equal (ROUND_UP (511, 512), 512);
  assert_int_equal (ROUND_UP (512, 512), 512);
  assert_int_equal (ROUND_UP (513, 512), 1024);
  assert_int_equal (ROUND_UP (7, 1), 7);
  /* 64-bit values keep their high bits. */
  assert_true (ROUND_UP (x, 65536) == (UINT64_C (1) << 40) + 65536);
  assert_true (ROUND_UP (UINT64_C (0xfffffffff000), 4096) ==
               UINT64_C (0xfffffffff000));
  assert_true (ROUND_UP (UINT64_C (0xfffffffff001), 4096) ==
               UINT64_C (0x1000000000000));
}

static void
test_round_down (void **state)
{
  uint64_t x = UINT64_C (0xfedcba9876543210);

  (void) state;
  assert_int_equal (ROUND_DOWN (0, 512), 0);
  assert_int_equal (ROUND_DOWN (511, 512), 0);
  assert_int_equal (ROUND_DOWN (512, 512), 512);
  assert_int_equal (ROUND_DOWN (1023, 512), 512);
  assert_int_equal (ROUND_DOWN (7, 1), 7);
  /* The mask must be as wide as x, even for an int alignment. */
  assert_true (ROUND_DOWN (x, 4096) == UINT64_C (0xfedcba9876543000));
  assert_true (ROUND_DOWN (x, 65536) == UINT64_C (0xfedcba9876540000));
  assert_true (ROUND_DOWN (UINT64_MAX, 2) == UINT64_MAX - 1);
}

static void
test_is_aligned (void **state)
{
  (void) state;
  assert_true (IS_ALIGNED (0, 512));
  assert_true (IS_ALIGNED (512, 512));
  assert_false (IS_ALIGNED (513, 512));
  assert_false (IS_ALIGNED (256, 512));
  assert_true (IS_ALIGNED (UINT64_C (1) << 40, 65536));
  assert_false (IS_ALIGNED ((UINT64_C (1) << 40) + 4096, 65536));
  assert_true (IS_ALIGNED (12345, 1));
}

static void
test_div_round_up (void **state)
{
  (void) state;
  assert_int_equal (DIV_ROUND_UP (0, 512), 0);
  assert_int_equal (DIV_ROUND_UP (1, 512), 1);
  assert_int_equal (DIV_ROUND_UP (512, 512), 1);
  assert_int_equal (DIV_ROUND_UP (513, 512), 2);
  assert_int_equal (DIV_ROUND_UP (10, 3), 4); /* any divisor */
  assert_int_equal (DIV_ROUND_UP (9, 3), 3);
  assert_true (DIV_ROUND_UP (UINT64_C (1) << 40, UINT64_C (65536)) ==
               UINT64_C (1) << 24);
  assert_true (DIV_ROUND_UP ((UINT64_C (1) << 40) + 1, UINT64_C (65536)) ==
               (UINT64_C (1) << 24) + 1);
}

static void
test_log2_u64 (void **state)
{
  (void) state;
  assert_int_equal (log2_u64 (1), 0);
  assert_int_equal (log2_u64 (2), 1);
  assert_int_equal (log2_u64 (512), 9);
  assert_int_equal (log2_u64 (65536), 16);
  assert_int_equal (log2_u64 (UINT64_C (1) << 63), 63);
  for (unsigned b = 0; b < 64; b++)
    assert_int_equal (log2_u64 (UINT64_C (1) << b), b);
}

/* popcount64 against a bit-by-bit count: single bits, runs from
 * either end, alternating patterns and a pseudo-random walk.
 */
static unsigned
naive_popcount (uint64_t v)
{
  unsigned n = 0;

  for (unsigned b = 0; b < 64; b++)
    n += (v >> b) & 1;
  return n;
}

static void
test_popcount64 (void **state)
{
  uint64_t x = UINT64_C (0x9e3779b97f4a7c15);

  (void) state;
  assert_int_equal (popcount64 (0), 0);
  assert_int_equal (popcount64 (~UINT64_C (0)), 64);
  assert_int_equal (popcount64 (UINT64_C (0x5555555555555555)), 32);
  assert_int_equal (popcount64 (UINT64_C (0x8000000000000001)), 2);
  for (unsigned b = 0; b < 64; b++) {
    assert_int_equal (popcount64 (UINT64_C (1) << b), 1);
    assert_int_equal (popcount64 ((UINT64_C (1) << b) - 1), b);
    assert_int_equal (popcount64 (~UINT64_C (0) << b), 64 - b);
  }
  for (unsigned k = 0; k < 10000; k++) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17; /* xorshift64 */
    assert_int_equal (popcount64 (x), naive_popcount (x));
  }
}

/* Runs FN in a child; true if the child died of SIGABRT. */
static bool
aborts (void (*fn) (void))
{
  pid_t pid;
  int status;

  fflush (NULL);
  pid = fork ();
  assert_true (pid >= 0);
  if (pid == 0) {
    int fd = open ("/dev/null", O_WRONLY);
    if (fd >= 0)
      dup2 (fd, 2); /* keep the expected assert message quiet */
    signal (SIGABRT, SIG_DFL);
    fn ();
    _exit (0);
  }
  assert_int_equal (waitpid (pid, &status, 0), pid);
  return WIFSIGNALED (status) && WTERMSIG (status) == SIGABRT;
}

static volatile uint64_t sink;
static volatile uint64_t three = 3;

static void
round_up_3 (void)
{
  sink = ROUND_UP (sink, three);
}
static void
round_down_3 (void)
{
  sink = ROUND_DOWN (sink, three);
}
static void
is_aligned_3 (void)
{
  sink = IS_ALIGNED (sink, three);
}
static void
round_up_0 (void)
{
  sink = ROUND_UP (sink, three - 3);
}
static void
log2_3 (void)
{
  sink = log2_u64 (three);
}
static void
log2_0 (void)
{
  sink = log2_u64 (three - 3);
}
static void
round_up_ok (void)
{
  sink = ROUND_UP (sink, three + 1);
}

static void
test_power_of_2_asserted (void **state)
{
  (void) state;
  assert_true (aborts (round_up_3));
  assert_true (aborts (round_down_3));
  assert_true (aborts (is_aligned_3));
  assert_true (aborts (round_up_0));
  assert_true (aborts (log2_3));
  assert_true (aborts (log2_0));
  /* The harness itself: a legal call does not abort. */
  assert_false (aborts (round_up_ok));
}

int
main (void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test (test_min_max_evaluate_once),
    cmocka_unit_test (test_min_max_values),
    cmocka_unit_test (test_is_power_of_2),
    cmocka_unit_test (test_round_up),
    cmocka_unit_test (test_round_down),
    cmocka_unit_test (test_is_aligned),
    cmocka_unit_test (test_div_round_up),
    cmocka_unit_test (test_log2_u64),
    cmocka_unit_test (test_popcount64),
    cmocka_unit_test (test_power_of_2_asserted),
  };

  return cmocka_run_group_tests (tests, NULL, NULL);
}
