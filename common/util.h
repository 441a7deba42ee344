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

#define MIN(a, b)            \
  __extension__({            \
    __typeof__ (a) _a = (a); \
    __typeof__ (b) _b = (b); \
    _a < _b ? _a : _b;       \
  })
#define MAX(a, b)            \
  __extension__({            \
    __typeof__ (a) _a = (a); \
    __typeof__ (b) _b = (b); \
    _a > _b ? _a : _b;       \
  })

static inline bool
is_power_of_2 (uint64_t v)
{
  return v != 0 && (v & (v - 1)) == 0;
}

#define IS_ALIGNED(x, a) (assert (is_power_of_2 (a)), ((x) & ((a) -1)) == 0)
#define ROUND_DOWN(x, a) \
  (assert (is_power_of_2 (a)), (x) & ~((__typeof__ (x)) (a) -1))
#define ROUND_UP(x, a) \
  (assert (is_power_of_2 (a)), ((x) + (a) -1) & ~((__typeof__ (x)) (a) -1))
#define DIV_ROUND_UP(n, d) (((n) + (d) -1) / (d))

/* Bits set in v.  __builtin_popcountll is one instruction only where
 * the target has POPCNT (-mpopcnt, not in the x86-64 baseline);
 * otherwise GCC calls libgcc's __popcountdi2, which cost more than the
 * bit operations around it in the sector bitmaps.  The portable
 * version is the usual SWAR sum, inline.
 */
static inline unsigned
popcount64 (uint64_t v)
{
#ifdef __POPCNT__
  return (unsigned) __builtin_popcountll (v);
#else
  v = v - ((v >> 1) & UINT64_C (0x5555555555555555));
  v = (v & UINT64_C (0x3333333333333333)) +
      ((v >> 2) & UINT64_C (0x3333333333333333));
  v = (v + (v >> 4)) & UINT64_C (0x0f0f0f0f0f0f0f0f);
  return (unsigned) ((v * UINT64_C (0x0101010101010101)) >> 56);
#endif
}

/* log2 of a power of 2. */
static inline unsigned
log2_u64 (uint64_t v)
{
  assert (is_power_of_2 (v));
  return (unsigned) __builtin_ctzll (v);
}

#endif /* SUBPAGE_UTIL_H */
