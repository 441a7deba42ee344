/* subpage: small arithmetic helpers, header-only.
 *
 * MIN/MAX evaluate each argument once.  ROUND_UP/ROUND_DOWN and
 * IS_ALIGNED take a power-of-two alignment (asserted).  Tested by
 * tests/unit/test-util.c.
 */
#ifndef SUBPAGE_UTIL_H
#define SUBPAGE_UTIL_H

#include <assert.h>
#include <stdbool.h>
#include <stdint.h>

#define MIN(a, b) __extension__ ({             \
      __typeof__ (a) _a = (a);                  \
      __typeof__ (b) _b = (b);                  \
      _a < _b ? _a : _b; })
#define MAX(a, b) __extension__ ({             \
      __typeof__ (a) _a = (a);                  \
      __typeof__ (b) _b = (b);                  \
      _a > _b ? _a : _b; })

static inline bool
is_power_of_2 (uint64_t v)
{
  return v != 0 && (v & (v - 1)) == 0;
}

#define IS_ALIGNED(x, a) (assert (is_power_of_2 (a)), ((x) & ((a) - 1)) == 0)
#define ROUND_DOWN(x, a) (assert (is_power_of_2 (a)), (x) & ~((__typeof__ (x)) (a) - 1))
#define ROUND_UP(x, a) (assert (is_power_of_2 (a)), \
                        ((x) + (a) - 1) & ~((__typeof__ (x)) (a) - 1))
#define DIV_ROUND_UP(n, d) (((n) + (d) - 1) / (d))

/* log2 of a power of 2. */
static inline unsigned
log2_u64 (uint64_t v)
{
  assert (is_power_of_2 (v));
  return (unsigned) __builtin_ctzll (v);
}

#endif /* SUBPAGE_UTIL_H */
