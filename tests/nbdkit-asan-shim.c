/* subpage: preloaded into nbdkit, after the ASan runtime, by the e2e
 * tests of an AddressSanitizer build (see tests/meson.build).
 *
 * Why: nbdkit is not instrumented, so the ASan runtime is preloaded and
 * initialises lazily, at the first malloc.  In nbdkit 1.32 that malloc
 * happens inside libp11-kit's constructor (pulled in by GnuTLS), in
 * newlocale(), which holds glibc's setlocale lock for writing.  ASan's
 * initialisation looks up the optional symbol swift_demangle with
 * dlsym(); the failed lookup formats a dlerror() message through
 * dcgettext(), which takes and releases the same lock and leaves it
 * corrupted.  Nothing shows until the process later calls strerror()
 * (any "%m" message) and then exits: freelocale() in libp11-kit's
 * destructor waits forever on the broken lock, so nbdkit hangs instead
 * of exiting.  (Seen with gcc 12's libasan on Debian bookworm.)
 *
 * Defining swift_demangle makes the lookup succeed, so no dlerror()
 * message is formatted and the lock is never touched.  ASan calls it
 * only to demangle Swift names; returning NULL means "not a Swift name",
 * and ASan falls back to its usual demangling.
 */

#include <stddef.h>

char *swift_demangle (const char *mangled, size_t mangled_len,
                      char *out, size_t *out_len, unsigned flags);

char *
swift_demangle (const char *mangled, size_t mangled_len,
                char *out, size_t *out_len, unsigned flags)
{
  (void) mangled;
  (void) mangled_len;
  (void) out;
  (void) out_len;
  (void) flags;
  return NULL;
}
