/* subpage: the plugin's parameters.
 *
 * Notes on the design.
 *
 * What it does: .config and .config_complete (params_config,
 * params_config_complete), which fill in the one struct params that
 * the rest of the plugin reads, and the help text (PARAMS_HELP in
 * params.h).  Each parameter is checked as it comes (one strcmp
 * chain); what depends on several (one of file=, uri=, rbd=; the
 * ceph-* parameters only with rbd=; sector-size against
 * page-size, cache-size against page-size and RAM, dirty-ratio against
 * dirty-background-ratio, backend-timeout= not with file=) is checked
 * in params_config_complete.  A bad
 * value fails with a message naming the parameter and the accepted
 * range; tests/e2e/test-config-bad-params.sh checks those messages.
 *
 * What it does not do: open anything (metrics-socket= is only checked
 * here, created in .after_fork), or know which backend will be used.
 */

#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1 /* strerrordesc_np */
#endif
#define NBDKIT_API_VERSION 2

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <nbdkit-plugin.h>

#include "cache.h"
#include "errstr.h"
#include "jformat.h"
#include "params.h"
#include "util.h"

#define KiB 1024ULL
#define MiB (1024ULL * 1024)

/* The defaults, mirrored in PARAMS_HELP and the man page. */
struct params params = {
  .connections = 4,
  .rbd_exclusive = true,
  .cache_size = 256 * MiB,
  .page_size = 64 * KiB,
  .sector_size = 512,
  .mode = CACHE_MODE_WRITEBACK,
  .dirty_expire_ms = 5000,
  .dirty_writeback_ms = 500,
  .dirty_background_ratio = 10,
  .dirty_ratio = 40,
  .writeback_threads = 4,
  .sequential_cutoff = 4 * MiB,
};

const char *
params_mode_name (enum cache_mode m)
{
  switch (m) {
  case CACHE_MODE_WRITEBACK: return "writeback";
  case CACHE_MODE_WRITETHROUGH: return "writethrough";
  case CACHE_MODE_UNSAFE: return "unsafe";
  default: abort ();
  }
}

/* Formats a size as nbdkit_parse_size would accept it (64K, 1M, 1000). */
const char *
params_size_str (uint64_t v, char *buf, size_t n)
{
  static const char suffix[] = "KMGTPE";
  int i = -1;

  while (v != 0 && v % 1024 == 0 && i + 1 < (int) sizeof suffix - 1) {
    v /= 1024;
    i++;
  }
  if (i >= 0)
    snprintf (buf, n, "%" PRIu64 "%c", v, suffix[i]);
  else
    snprintf (buf, n, "%" PRIu64, v);
  return buf;
}

/* Parses a size as nbdkit_parse_size does (blanks, an optional "+",
 * decimal digits, an optional suffix b, k, m, g, t, p or e in either
 * case, for powers of 1024), but prints nothing: the caller's message,
 * which names the parameter, is the only one (nbdkit_parse_size would
 * print its own first).  Returns 0, or -1 when VALUE is not a size or
 * does not fit in an int64_t.
 */
static int
parse_size_quiet (const char *value, uint64_t *out)
{
  static const char suffix[] = "bkmgtpe";
  const char *p = value, *s;
  uint64_t v = 0;
  int shift;

  while (*p == ' ' || *p == '\t')
    p++;
  if (*p == '+')
    p++;
  if (*p < '0' || *p > '9')
    return -1;
  for (; *p >= '0' && *p <= '9'; p++) {
    if (v > (INT64_MAX - (uint64_t) (*p - '0')) / 10)
      return -1;
    v = v * 10 + (uint64_t) (*p - '0');
  }
  if (*p != '\0') {
    char c = *p >= 'A' && *p <= 'Z' ? *p - 'A' + 'a' : *p;

    s = strchr (suffix, c);
    if (c == '\0' || s == NULL || p[1] != '\0')
      return -1;
    shift = 10 * (int) (s - suffix);
    if (shift > 0 && v > ((uint64_t) INT64_MAX >> shift))
      return -1;
    v <<= shift;
  }
  *out = v;
  return 0;
}

/* Parses an unsigned decimal number (digits only) without printing. */
static int
parse_unsigned_quiet (const char *value, unsigned *out)
{
  unsigned long long v = 0;
  const char *p = value;

  if (*p == '\0')
    return -1;
  for (; *p != '\0'; p++) {
    if (*p < '0' || *p > '9')
      return -1;
    v = v * 10 + (unsigned) (*p - '0');
    if (v > UINT_MAX)
      return -1;
  }
  *out = v;
  return 0;
}

/* Parses a number of seconds with up to three decimals ("30",
 * "2.5", "0.25") into milliseconds, at most MAX_S seconds, without
 * printing.  Returns 0 or -1.
 */
static int
parse_seconds_quiet (const char *value, unsigned max_s, unsigned *out_ms)
{
  const char *p = value;
  unsigned long long ms = 0;
  unsigned frac = 0;

  if (*p < '0' || *p > '9')
    return -1;
  for (; *p >= '0' && *p <= '9'; p++) {
    ms = ms * 10 + (unsigned) (*p - '0');
    if (ms > max_s)
      return -1;
  }
  ms *= 1000;
  if (*p == '.') {
    unsigned scale = 100;

    p++;
    if (*p < '0' || *p > '9')
      return -1;
    for (; *p >= '0' && *p <= '9'; p++, scale /= 10) {
      if (scale == 0)
        return -1; /* finer than a millisecond */
      frac += scale * (unsigned) (*p - '0');
    }
  }
  if (*p != '\0' || ms + frac > (unsigned long long) max_s * 1000)
    return -1;
  *out_ms = (unsigned) (ms + frac);
  return 0;
}

/* Parses a boolean as nbdkit_parse_bool does, without its message:
 * 1, true, t, yes, y, on, or 0, false, f, no, n, off, in any case.
 * Returns 1, 0, or -1.
 */
static int
parse_bool_quiet (const char *value)
{
  static const char *const yes[] = { "1", "true", "t", "yes", "y", "on" };
  static const char *const no[] = { "0", "false", "f", "no", "n", "off" };
  size_t i;

  for (i = 0; i < sizeof yes / sizeof yes[0]; i++) {
    if (strcasecmp (value, yes[i]) == 0)
      return 1;
    if (strcasecmp (value, no[i]) == 0)
      return 0;
  }
  return -1;
}

/* Parses a size parameter that must be a power of 2 in [min, max].
 * The message names the range "MIN and MAX", or "MIN and UPPER (at
 * most MAX)" when UPPER (another parameter) is the real upper bound.
 */
static int
parse_pow2_size (const char *key, const char *value, uint64_t min, uint64_t max,
                 const char *upper, uint32_t *out)
{
  uint64_t r = 0;
  char b1[32], b2[32];

  if (parse_size_quiet (value, &r) == -1 || r < min || r > max ||
      !is_power_of_2 (r)) {
    params_size_str (min, b1, sizeof b1);
    params_size_str (max, b2, sizeof b2);
    if (upper != NULL)
      nbdkit_error ("subpage: %s=%s: must be a power of 2 between %s and "
                    "%s (at most %s)",
                    key, value, b1, upper, b2);
    else
      nbdkit_error ("subpage: %s=%s: must be a power of 2 between %s and "
                    "%s",
                    key, value, b1, b2);
    return -1;
  }
  *out = r;
  return 0;
}

/* Parses an unsigned decimal parameter in [min, max]. */
static int
parse_uint (const char *key, const char *value, unsigned min, unsigned max,
            unsigned *out)
{
  unsigned u;

  if (parse_unsigned_quiet (value, &u) == -1 || u < min || u > max) {
    nbdkit_error ("subpage: %s=%s: must be an integer between %u and %u", key,
                  value, min, max);
    return -1;
  }
  *out = u;
  return 0;
}

/* metrics-socket=PATH: made absolute (nbdkit changes directory before
 * .after_fork, where the socket is created), and checked now, so that a
 * bad path fails at startup, in the foreground.
 */
static int
set_metrics_socket (const char *value)
{
  const size_t max = sizeof ((struct sockaddr_un *) NULL)->sun_path - 1;
  struct stat sb;
  const char *dir;
  char *path, *slash;
  int e;

  if (value[0] == '\0') {
    nbdkit_error ("subpage: metrics-socket=: the path is empty");
    return -1;
  }
  path = nbdkit_absolute_path (value);
  if (path == NULL)
    return -1;
  if (strlen (path) > max) {
    nbdkit_error ("subpage: metrics-socket=%s: the path is too long "
                  "(%zu bytes once absolute, at most %zu)",
                  value, strlen (path), max);
    goto err;
  }
  if (lstat (path, &sb) == 0 && !S_ISSOCK (sb.st_mode)) {
    nbdkit_error ("subpage: metrics-socket=%s: exists and is not a socket",
                  value);
    goto err;
  }
  slash = strrchr (path, '/');
  *slash = '\0';
  dir = slash == path ? "/" : path;
  e = stat (dir, &sb) == -1 ? errno : S_ISDIR (sb.st_mode) ? 0 : ENOTDIR;
  if (e != 0) {
    nbdkit_error ("subpage: metrics-socket=%s: directory %s: %s", value, dir,
                  errstr (e));
    goto err;
  }
  *slash = '/';
  free (params.metrics_socket);
  params.metrics_socket = path;
  return 0;

err:
  free (path);
  return -1;
}

int
params_config (const char *key, const char *value)
{
  if (strcmp (key, "file") == 0) {
    free (params.filename);
    /* Absolute: nbdkit changes directory before .after_fork/.open. */
    params.filename = nbdkit_absolute_path (value);
    if (params.filename == NULL)
      return -1;
  }
  else if (strcmp (key, "uri") == 0) {
    free (params.uri);
    params.uri = strdup (value);
    if (params.uri == NULL) {
      nbdkit_error ("strdup: %s", errstr (errno));
      return -1;
    }
  }
  else if (strcmp (key, "rbd") == 0) {
    const char *slash = strchr (value, '/');

    if (slash == NULL || slash == value || slash[1] == '\0' ||
        strchr (slash + 1, '/') != NULL) {
      nbdkit_error ("subpage: rbd=%s: must be POOL/IMAGE, for example "
                    "rbd=rbd/disk",
                    value);
      return -1;
    }
    free (params.rbd);
    params.rbd = strdup (value);
    if (params.rbd == NULL) {
      nbdkit_error ("strdup: %s", errstr (errno));
      return -1;
    }
  }
  else if (strcmp (key, "ceph-conf") == 0 ||
           strcmp (key, "ceph-keyring") == 0) {
    char **p = strcmp (key, "ceph-conf") == 0 ? &params.ceph_conf
                                              : &params.ceph_keyring;

    if (value[0] == '\0') {
      nbdkit_error ("subpage: %s=: the path is empty", key);
      return -1;
    }
    free (*p);
    /* Absolute: librados reads them in .after_fork, after nbdkit has
     * changed directory.
     */
    *p = nbdkit_absolute_path (value);
    if (*p == NULL)
      return -1;
    params.ceph_given = true;
  }
  else if (strcmp (key, "ceph-id") == 0) {
    if (value[0] == '\0' || strncmp (value, "client.", 7) == 0) {
      nbdkit_error ("subpage: ceph-id=%s: must be a client id without "
                    "\"client.\", for example ceph-id=admin",
                    value);
      return -1;
    }
    free (params.ceph_id);
    params.ceph_id = strdup (value);
    if (params.ceph_id == NULL) {
      nbdkit_error ("strdup: %s", errstr (errno));
      return -1;
    }
    params.ceph_given = true;
  }
  else if (strcmp (key, "rbd-exclusive") == 0) {
    int r = parse_bool_quiet (value);

    if (r == -1) {
      nbdkit_error ("subpage: %s=%s: must be true or false", key, value);
      return -1;
    }
    params.rbd_exclusive = r;
    params.ceph_given = true;
  }
  else if (strcmp (key, "journal") == 0) {
    free (params.journal);
    params.journal = nbdkit_absolute_path (value);
    if (params.journal == NULL)
      return -1;
  }
  else if (strcmp (key, "journal-order") == 0) {
    if (strcmp (value, "epoch") == 0)
      params.journal_order_any = false;
    else if (strcmp (value, "any") == 0)
      params.journal_order_any = true;
    else {
      nbdkit_error ("subpage: journal-order=%s: must be epoch or any", value);
      return -1;
    }
    params.journal_order_given = true;
  }
  else if (strcmp (key, "journal-background-ratio") == 0) {
    if (parse_uint (key, value, 0, 90, &params.journal_background_ratio) == -1)
      return -1;
    params.journal_background_ratio_given = true;
  }
  else if (strcmp (key, "sequential-cutoff") == 0) {
    uint64_t r = 0;

    if (parse_size_quiet (value, &r) == -1 || r > (UINT64_C (1) << 50)) {
      nbdkit_error ("subpage: sequential-cutoff=%s: must be a size such as "
                    "4M, or 0 to journal every write",
                    value);
      return -1;
    }
    params.sequential_cutoff = r;
    params.sequential_cutoff_given = true;
  }
  else if (strcmp (key, "journal-size") == 0) {
    uint64_t r = 0;

    if (parse_size_quiet (value, &r) == -1 || r < JNL_MIN_SIZE ||
        r > (UINT64_C (1) << 50)) {
      char b1[32];
      nbdkit_error ("subpage: journal-size=%s: must be a size such as 1G, "
                    "at least %s",
                    value, params_size_str (JNL_MIN_SIZE, b1, sizeof b1));
      return -1;
    }
    params.journal_size = r;
  }
  else if (strcmp (key, "connections") == 0) {
    if (parse_uint (key, value, 1, 64, &params.connections) == -1)
      return -1;
    params.connections_given = true;
  }
  else if (strcmp (key, "cache-size") == 0) {
    uint64_t r = 0;

    if (parse_size_quiet (value, &r) == -1 || r == 0) {
      nbdkit_error ("subpage: cache-size=%s: must be a size such as 256M "
                    "(at least %d x page-size)",
                    value, CACHE_MIN_PAGES);
      return -1;
    }
    params.cache_size = r;
  }
  else if (strcmp (key, "page-size") == 0) {
    if (parse_pow2_size (key, value, CACHE_MIN_PAGE_SIZE, CACHE_MAX_PAGE_SIZE,
                         NULL, &params.page_size) == -1)
      return -1;
  }
  else if (strcmp (key, "sector-size") == 0) {
    /* The upper bound, page-size, is checked in config_complete. */
    if (parse_pow2_size (key, value, CACHE_MIN_SECTOR_SIZE, CACHE_MAX_PAGE_SIZE,
                         "page-size", &params.sector_size) == -1)
      return -1;
  }
  else if (strcmp (key, "mode") == 0) {
    if (strcmp (value, "writeback") == 0)
      params.mode = CACHE_MODE_WRITEBACK;
    else if (strcmp (value, "writethrough") == 0)
      params.mode = CACHE_MODE_WRITETHROUGH;
    else if (strcmp (value, "unsafe") == 0)
      params.mode = CACHE_MODE_UNSAFE;
    else {
      nbdkit_error ("subpage: mode=%s: must be writeback, writethrough "
                    "or unsafe",
                    value);
      return -1;
    }
  }
  else if (strcmp (key, "dirty-expire-ms") == 0) {
    if (parse_uint (key, value, 0, 3600000, &params.dirty_expire_ms) == -1)
      return -1;
    params.dirty_expire_ms_given = true;
  }
  else if (strcmp (key, "dirty-writeback-ms") == 0) {
    if (parse_uint (key, value, 10, 60000, &params.dirty_writeback_ms) == -1)
      return -1;
  }
  else if (strcmp (key, "dirty-background-ratio") == 0) {
    if (parse_uint (key, value, 1, 100, &params.dirty_background_ratio) == -1)
      return -1;
  }
  else if (strcmp (key, "dirty-ratio") == 0) {
    if (parse_uint (key, value, 1, 100, &params.dirty_ratio) == -1)
      return -1;
  }
  else if (strcmp (key, "writeback-threads") == 0) {
    if (parse_uint (key, value, 1, 64, &params.writeback_threads) == -1)
      return -1;
  }
  else if (strcmp (key, "io-flusher") == 0 || strcmp (key, "mlock") == 0) {
    int r = parse_bool_quiet (value);

    if (r == -1) {
      nbdkit_error ("subpage: %s=%s: must be true or false", key, value);
      return -1;
    }
    if (strcmp (key, "io-flusher") == 0)
      params.io_flusher = r;
    else
      params.mlock_memory = r;
  }
  else if (strcmp (key, "backend-timeout") == 0) {
    if (parse_seconds_quiet (value, 3600, &params.backend_timeout_ms) == -1) {
      nbdkit_error ("subpage: %s=%s: must be a number of seconds between 0 "
                    "and 3600 with at most three decimals (2, 2.5; 0: no "
                    "limit)",
                    key, value);
      return -1;
    }
    free (params.backend_timeout_str);
    params.backend_timeout_str = strdup (value);
    if (params.backend_timeout_str == NULL) {
      nbdkit_error ("strdup: %s", errstr (errno));
      return -1;
    }
  }
  else if (strcmp (key, "metrics-socket") == 0) {
    if (set_metrics_socket (value) == -1)
      return -1;
  }
  else {
    nbdkit_error ("subpage: unknown parameter '%s'", key);
    return -1;
  }
  return 0;
}

int
params_config_complete (void)
{
  char b1[32], b2[32], b3[32];
  uint64_t phys;

  if (params.filename == NULL && params.uri == NULL && params.rbd == NULL) {
    nbdkit_error ("subpage: the file= parameter is required "
                  "(a regular file or block device), or uri= "
                  "(a remote NBD export), or rbd= (a Ceph RBD image)");
    return -1;
  }
  if ((params.filename != NULL) + (params.uri != NULL) + (params.rbd != NULL) >
      1) {
    char given[3][64];
    int n = 0;

    if (params.filename != NULL)
      snprintf (given[n++], sizeof given[0], "file=%s", params.filename);
    if (params.uri != NULL)
      snprintf (given[n++], sizeof given[0], "uri=%s", params.uri);
    if (params.rbd != NULL)
      snprintf (given[n++], sizeof given[0], "rbd=%s", params.rbd);
    nbdkit_error ("subpage: %s and %s%s%s: give exactly one of file=, uri= "
                  "and rbd=",
                  given[0], given[1], n > 2 ? " and " : "",
                  n > 2 ? given[2] : "");
    return -1;
  }
  if (params.uri == NULL && params.connections_given) {
    nbdkit_error ("subpage: connections=%u: only applies to uri= (a "
                  "remote NBD export); %s=%s has no connections to "
                  "set: remove connections=",
                  params.connections, params.filename ? "file" : "rbd",
                  params.filename ? params.filename : params.rbd);
    return -1;
  }
  if (params.filename != NULL && params.backend_timeout_ms > 0) {
    nbdkit_error ("subpage: backend-timeout=%s: does not apply to file=%s: "
                  "a local read, write or fdatasync cannot be interrupted "
                  "(see the man page, TIMEOUTS): remove backend-timeout=",
                  params.backend_timeout_str, params.filename);
    return -1;
  }
  if (params.journal == NULL && params.journal_size > 0) {
    nbdkit_error ("subpage: journal-size= needs journal=PATH");
    return -1;
  }
  if (params.journal == NULL && params.journal_order_given) {
    nbdkit_error ("subpage: journal-order= needs journal=PATH");
    return -1;
  }
  if (params.journal == NULL && params.journal_background_ratio_given) {
    nbdkit_error ("subpage: journal-background-ratio= needs journal=PATH");
    return -1;
  }
  /* With a journal, dirty data is durable where it waits: write it
   * back lazily, as dm-writecache (high_watermark=50) and bcache
   * (writeback_delay=30) do; the image alone lags further behind.
   * dirty-expire-ms has no other use with a journal.
   */
  if (params.journal != NULL) {
    if (!params.journal_background_ratio_given)
      params.journal_background_ratio = JOURNAL_BACKGROUND_RATIO_DEFAULT;
    if (!params.dirty_expire_ms_given)
      params.dirty_expire_ms = JOURNAL_EXPIRE_MS_DEFAULT;
  }
  if (params.journal == NULL && params.sequential_cutoff_given) {
    nbdkit_error ("subpage: sequential-cutoff= needs journal=PATH (without "
                  "a journal no write goes through one)");
    return -1;
  }
  if (params.journal != NULL && params.mode != CACHE_MODE_WRITEBACK) {
    nbdkit_error ("subpage: journal=%s: needs mode=writeback (mode=%s: "
                  "remove journal= or mode=)",
                  params.journal, params_mode_name (params.mode));
    return -1;
  }
  if (params.rbd == NULL && params.ceph_given) {
    nbdkit_error ("subpage: ceph-conf=, ceph-id=, ceph-keyring= and "
                  "rbd-exclusive= only apply to rbd= (a Ceph RBD image): "
                  "remove them or use rbd=POOL/IMAGE");
    return -1;
  }
  if (params.rbd != NULL) {
    const char *env = getenv ("CEPH_CONF");

    if (params.ceph_conf == NULL) {
      params.ceph_conf = nbdkit_absolute_path (
        env != NULL && env[0] != '\0' ? env : "/etc/ceph/ceph.conf");
      if (params.ceph_conf == NULL)
        return -1;
    }
    if (params.ceph_id == NULL && (params.ceph_id = strdup ("admin")) == NULL) {
      nbdkit_error ("strdup: %s", errstr (errno));
      return -1;
    }
  }
  if (params.sector_size > params.page_size) {
    nbdkit_error ("subpage: sector-size=%s: must be a power of 2 "
                  "between %s and page-size (%s)",
                  params_size_str (params.sector_size, b1, sizeof b1),
                  params_size_str (CACHE_MIN_SECTOR_SIZE, b3, sizeof b3),
                  params_size_str (params.page_size, b2, sizeof b2));
    return -1;
  }
  if (params.cache_size < (uint64_t) CACHE_MIN_PAGES * params.page_size) {
    nbdkit_error (
      "subpage: cache-size=%s: must be at least %d x "
      "page-size (%s), that is %s",
      params_size_str (params.cache_size, b1, sizeof b1), CACHE_MIN_PAGES,
      params_size_str (params.page_size, b2, sizeof b2),
      params_size_str ((uint64_t) CACHE_MIN_PAGES * params.page_size, b3,
                       sizeof b3));
    return -1;
  }
  /* A cache larger than RAM is a typo (and would overflow the core's
   * frame count long before it is useful).
   */
  phys = (uint64_t) sysconf (_SC_PHYS_PAGES) * sysconf (_SC_PAGESIZE);
  if (phys > 0 && params.cache_size > phys) {
    nbdkit_error ("subpage: cache-size=%s: must be at most the physical "
                  "memory (%s)",
                  params_size_str (params.cache_size, b1, sizeof b1),
                  params_size_str (phys, b2, sizeof b2));
    return -1;
  }
  if (params.dirty_ratio < params.dirty_background_ratio) {
    nbdkit_error ("subpage: dirty-ratio=%u: must be between "
                  "dirty-background-ratio (%u) and 100",
                  params.dirty_ratio, params.dirty_background_ratio);
    return -1;
  }
  return 0;
}

void
params_free (void)
{
  free (params.filename);
  params.filename = NULL;
  free (params.uri);
  params.uri = NULL;
  free (params.rbd);
  params.rbd = NULL;
  free (params.ceph_conf);
  params.ceph_conf = NULL;
  free (params.ceph_id);
  params.ceph_id = NULL;
  free (params.ceph_keyring);
  params.ceph_keyring = NULL;
  free (params.metrics_socket);
  params.metrics_socket = NULL;
  free (params.backend_timeout_str);
  params.backend_timeout_str = NULL;
  free (params.journal);
  params.journal = NULL;
}
