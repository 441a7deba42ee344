/* subpage: the plugin's parameters (plugin/params.c).
 *
 * The parameters as parsed by .config and checked by .config_complete,
 * with their defaults; read by the rest of the plugin after that.
 */
#ifndef SUBPAGE_PARAMS_H
#define SUBPAGE_PARAMS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cache.h"

struct params {
  char *filename;         /* file=, absolute */
  char *uri;              /* uri=: the NBD backend, instead of file= */
  char *rbd;              /* rbd=POOL/IMAGE: the RBD backend */
  char *ceph_conf;        /* rbd=: ceph-conf=, else $CEPH_CONF, else
                           * /etc/ceph/ceph.conf; absolute */
  char *ceph_id;          /* rbd=: ceph-id= (client name without
                           * "client."), default admin */
  char *ceph_keyring;     /* rbd=: ceph-keyring=, absolute; NULL: the
                           * keyring ceph.conf names */
  bool ceph_given;        /* one of ceph-conf=, ceph-id=, ceph-keyring=
                           * or rbd-exclusive= was given */
  bool rbd_exclusive;     /* rbd=: take the exclusive lock (default) */
  unsigned connections;   /* uri=: connections to the remote */
  bool connections_given; /* connections= was on the command line */
  uint64_t cache_size;
  uint32_t page_size;
  uint32_t sector_size;
  enum cache_mode mode;
  unsigned dirty_expire_ms;
  bool dirty_expire_ms_given;
  unsigned dirty_writeback_ms;
  unsigned dirty_background_ratio;
  unsigned dirty_ratio;
  unsigned writeback_threads;
  char *metrics_socket; /* absolute; NULL: no metrics */
  /* backend-timeout=: how long a backend request may take, in
   * milliseconds; 0: no limit (waited for as long as it takes).
   * BACKEND_TIMEOUT_STR is the value as given, for messages.
   */
  unsigned backend_timeout_ms;
  char *backend_timeout_str;
  char *journal;          /* journal=, absolute; NULL: no journal */
  uint64_t journal_size;  /* journal-size=; 0: not given */
  bool journal_order_any; /* journal-order=any */
  bool journal_order_given;
  unsigned journal_background_ratio; /* 0: drain at once */
  bool journal_background_ratio_given;
  uint64_t sequential_cutoff; /* sequential-cutoff=; 0: off */
  bool sequential_cutoff_given;
  bool io_flusher; /* see SAME-HOST CLIENTS in the man page */
  bool mlock_memory;
};

extern struct params params;

/* With journal=, unless given: journal-background-ratio= and
 * dirty-expire-ms= (which then only dates the journal's records).
 */
#define JOURNAL_BACKGROUND_RATIO_DEFAULT 50
#define JOURNAL_EXPIRE_MS_DEFAULT 30000

/* .config and .config_complete: 0, or -1 with the error logged. */
int params_config (const char *key, const char *value);
int params_config_complete (void);

/* .cleanup: frees the strings. */
void params_free (void);

/* "writeback", "writethrough", "unsafe". */
const char *params_mode_name (enum cache_mode m);

/* V as nbdkit_parse_size would accept it (64K, 1M, 1000), in BUF. */
const char *params_size_str (uint64_t v, char *buf, size_t n);

/* .config_help */
#define PARAMS_HELP                                                          \
  "file=<FILENAME>     (required, or uri= or rbd=) Disk image: regular\n"    \
  "                    file or block device.\n"                              \
  "uri=<URI>           Remote NBD export instead of file=, for example\n"    \
  "                    nbd+unix:///?socket=/run/remote.sock.\n"              \
  "rbd=<POOL>/<IMAGE>  Ceph RBD image instead of file= (through librbd).\n"  \
  "ceph-conf=<PATH>    rbd=: ceph.conf (default $CEPH_CONF, else\n"          \
  "                    /etc/ceph/ceph.conf).\n"                              \
  "ceph-id=<ID>        rbd=: Ceph client id, without client. (default\n"     \
  "                    admin).\n"                                            \
  "ceph-keyring=<PATH> rbd=: keyring (default: the one ceph.conf names).\n"  \
  "rbd-exclusive=true|false  rbd=: take and keep the image's exclusive\n"    \
  "                    lock (default true; false is unsafe with two\n"       \
  "                    writers).\n"                                          \
  "connections=<N>     uri=: connections to the remote, 1..64 (default 4;\n" \
  "                    1 if it does not advertise multi-conn).\n"            \
  "cache-size=<SIZE>   Memory for cached pages (default 256M).\n"            \
  "page-size=<SIZE>    Cache page size, power of 2, 4K..2M (default 64K).\n" \
  "sector-size=<SIZE>  Tracking granularity, power of 2, 512..page-size\n"   \
  "                    (default 512).\n"                                     \
  "mode=writeback|writethrough|unsafe  (default writeback).\n"               \
  "dirty-expire-ms=<MS>         Write back data dirty this long,\n"          \
  "                             0..3600000 (default 5000; 30000 with\n"      \
  "                             journal=).\n"                                \
  "dirty-writeback-ms=<MS>      Write-back timer period, 10..60000\n"        \
  "                             (default 500).\n"                            \
  "dirty-background-ratio=<PCT> Start background write-back when dirty\n"    \
  "                             data passes this % of cache-size,\n"         \
  "                             1..100 (default 10).\n"                      \
  "dirty-ratio=<PCT>            Throttle writers when dirty data passes\n"   \
  "                             this % of cache-size,\n"                     \
  "                             dirty-background-ratio..100 (default 40).\n" \
  "writeback-threads=<N>        Write-back worker threads, 1..64\n"          \
  "                             (default 4).\n"                              \
  "io-flusher=true|false        Same-host clients: mark nbdkit as an I/O\n"  \
  "                             flusher (needs CAP_SYS_RESOURCE; default\n"  \
  "                             false).\n"                                   \
  "mlock=true|false             Same-host clients: lock nbdkit's memory\n"   \
  "                             (needs CAP_IPC_LOCK or RLIMIT_MEMLOCK;\n"    \
  "                             default false).\n"                           \
  "backend-timeout=<SECONDS>    uri=: fail a backend request with EIO\n"     \
  "                             after this long, 0..3600, decimals\n"        \
  "                             allowed (default 0: no limit).\n"            \
  "journal=<PATH>               Persistent write-back journal: a file\n"     \
  "                             or block device on fast local storage\n"     \
  "                             (default: none).\n"                          \
  "journal-size=<SIZE>          Size of a new journal file (default 1G;\n"   \
  "                             a block device's is its own).\n"             \
  "journal-order=epoch|any      Write-back from the journal in flush\n"      \
  "                             order (default epoch: the image alone is\n"  \
  "                             always consistent) or merged (any).\n"       \
  "journal-background-ratio=<PCT> journal=: write back only while the\n"     \
  "                             journal is over this percentage full, or\n"  \
  "                             its oldest record is dirty-expire-ms old,\n" \
  "                             0..90 (default 50; 0: at once).\n"           \
  "sequential-cutoff=<SIZE>     journal=: sequential writes of a\n"          \
  "                             connection past this many bytes go\n"        \
  "                             straight to the image (default 4M;\n"        \
  "                             0: never).\n"                                \
  "metrics-socket=<PATH>        Serve statistics (Prometheus text format)\n" \
  "                             on this unix socket (default: none)."

#endif /* SUBPAGE_PARAMS_H */
