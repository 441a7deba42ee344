/* subpage: CACHE_ASSERT.
 *
 * The core's consistency assertions.  Normally plain assert(); under
 * -DUNIT_TESTING they call cmocka's mock_assert(), so a unit test can
 * drive an illegal transition inside expect_assert_failure() and see it
 * refused.  Assertions stay on in every build (the project does not
 * define NDEBUG): a wrong state here means lost data.
 */
#ifndef SUBPAGE_ASSERT_H
#define SUBPAGE_ASSERT_H

#ifdef UNIT_TESTING
extern void mock_assert (const int result, const char *const expression,
                         const char *const file, const int line);
#define CACHE_ASSERT(expr) \
  mock_assert ((int) !!(expr), #expr, __FILE__, __LINE__)
#else
#include <assert.h>
#define CACHE_ASSERT(expr) assert (expr)
#endif

#endif /* SUBPAGE_ASSERT_H */
