/* subpage: the cache core's introspection, for tests and debugging.
 *
 * Nothing here is needed to run a cache; the plugin uses none of it.
 * Declared apart from cache.h so that a reader of the API sees only what
 * a caller needs.  Implemented in debug.c.
 */
#ifndef SUBPAGE_CACHE_DEBUG_H
#define SUBPAGE_CACHE_DEBUG_H

#include <stdbool.h>
#include <stdint.h>

#include "cache.h"

/* Introspection for tests and debug flags. */
#define CACHE_SECT_V 0x1
#define CACHE_SECT_D 0x2
#define CACHE_SECT_W 0x4
/* V|D|W bits of the sector containing byte OFF, 0 if its page is not
 * resident.
 */
unsigned cache_debug_sector (struct cache *c, uint64_t off);
/* Is the page containing OFF resident?  How many references does it
 * hold (pins, the dirty list's and in-flight runs')?
 */
bool cache_debug_resident (struct cache *c, uint64_t off);
unsigned cache_debug_refs (struct cache *c, uint64_t off);
/* Pin/unpin the page containing OFF (creating it if absent), as a
 * request in progress would.  Returns 0 or -errno.
 */
int cache_debug_pin (struct cache *c, uint64_t off);
void cache_debug_unpin (struct cache *c, uint64_t off);
/* Runs page_check() on every resident page; false on any violation
 * (which is dumped through the log).
 */
bool cache_debug_check (struct cache *c);
/* Park points, for deterministic tests of races.  The core calls
 * FN (OPAQUE, NAME) at a few named points where it has dropped every
 * lock and another thread's request can change what it will do next
 * (see CACHE_PARK in internal.h for the list); a test parks the calling
 * thread there until it has run the racing request.  Compiled in only
 * with -DCACHE_PARK_POINTS (the unit tests' and the schedule
 * explorer's builds of the core); elsewhere the hook is never called.
 * Set it only while no request runs.
 */
typedef void (*cache_park_fn) (void *opaque, const char *point);
void cache_debug_set_park (struct cache *c, cache_park_fn fn, void *opaque);
/* The clock that dates dirty pages for CACHE_WB_EXPIRED, in ms: FN
 * (OPAQUE) instead of CLOCK_MONOTONIC (NULL: back to it), so a test can
 * age data without sleeping.  Set it only while no request runs.
 */
typedef uint64_t (*cache_clock_fn) (void *opaque);
void cache_debug_set_clock (struct cache *c, cache_clock_fn fn, void *opaque);

#endif /* SUBPAGE_CACHE_DEBUG_H */
