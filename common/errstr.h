/* subpage: error strings for the plugin's messages.
 *
 * errstr (err) returns glibc's untranslated description of ERR
 * (strerrordesc_np), and the plugin uses it instead of strerror or %m.
 * Why: with the AddressSanitizer runtime preloaded into nbdkit 1.32
 * (how the e2e tests run an ASan build of the plugin; nbdkit itself is
 * not instrumented), one strerror call, which goes through gettext,
 * leaves glibc's setlocale lock corrupted, and nbdkit then hangs for
 * ever at exit in p11-kit's destructor (freelocale).  Reproduced with a
 * ten-line plugin that calls strerror once in .get_ready; the same
 * plugin with strerrordesc_np exits normally.  Messages are in English
 * either way, like nbdkit's own.
 */
#ifndef SUBPAGE_ERRSTR_H
#define SUBPAGE_ERRSTR_H

#ifndef _GNU_SOURCE
#error "define _GNU_SOURCE before any include (strerrordesc_np)"
#endif

#include <string.h>

static inline const char *
errstr (int err)
{
  const char *s = strerrordesc_np (err);

  return s != NULL ? s : "Unknown error";
}

#endif /* SUBPAGE_ERRSTR_H */
