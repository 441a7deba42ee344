#!/usr/bin/env bash
# Crash consistency on the RBD backend (rbd=POOL/IMAGE): the crash
# checker (tests/crash/crash-check.c, --backend rbd) runs kill cycles
# over a 32 MiB image, as tests/e2e/test-crash-consistency.sh does over
# a file: racing writes, zeroes, trims, reads and flushes through 4
# connections for 100 ms to 1 s, SIGKILL, with random cache parameters
# per cycle.  After each kill a fresh librbd client (rbd-check.py dump,
# librbd's cache off; not subpage) reads the whole image, which must
# hold everything covered by the last successful flush or a FUA reply
# (and, for the rest, only data some request wrote).  Each cycle's
# nbdkit starts while the killed one still holds the exclusive lock:
# it serves once the dead owner's watch has expired (5 s on the test
# cluster, docs/ceph-tests.md), having broken the lock and blocklisted
# the dead owner (checked: CYCLES - 1 clients blocklisted at the end).
# CYCLES=N (default 10) and SEED=N replay or extend a run.
# CRASH_PLUGIN_PARAMS="mode=unsafe ..." replaces the random cache
# parameters (mode=unsafe must make it fail: flush does nothing there).

source "$(dirname "$0")/../functions.sh"
source "$(dirname "$0")/ceph-functions.sh"
set -euo pipefail

ceph_require
requires_plugin
: "${CRASH_CHECK:=$BUILDDIR/tests/crash/crash-check}"
if [ ! -x "$CRASH_CHECK" ]; then
  echo "$0: $CRASH_CHECK not found (build it first)" >&2
  exit 1
fi
make_tmpdir

seed=${SEED:-$(( $(date +%s) % 100000 ))}
cycles=${CYCLES:-10}
read -r -a params <<< "${CRASH_PLUGIN_PARAMS:-}"

ceph_start_cluster
echo "cluster up in $ceph_start_seconds s"
timeout 60 rbd create --size 32M --image-feature layering,exclusive-lock rbd/crash

status=0
t0=$(date +%s%N)
TMPDIR=$tmpdir "$CRASH_CHECK" --plugin "$PLUGIN" --size 32M \
  --backend rbd --rbd rbd/crash --rbd-check "$SRCDIR/tests/ceph/rbd-check.py" \
  --cycles "$cycles" --seed "$seed" --min-ms 100 --max-ms 1000 \
  --server-log "$tmpdir/nbdkit.log" ${params[@]+-- "${params[@]}"} || status=$?
echo "crash-check took $(ceph_elapsed "$t0") s"
# A skip (77) is a failure too: the plugin was built with rbd= if the
# Ceph tests are registered.
if [ "$status" -ne 0 ]; then
  echo "$0: crash-check (rbd) failed with status $status (SEED=$seed);" \
       "last lines of nbdkit's log:" >&2
  tail -n 30 "$tmpdir/nbdkit.log" >&2 || :
  exit 1
fi
# Each cycle after the first started while the killed nbdkit held the
# lock: taking it blocklisted the dead owner (cycle N+1 broke cycle N's).
n=$(timeout 60 ceph osd blocklist ls 2>/dev/null | grep -c '^127\.0\.0\.1:' || :)
echo "$n clients blocklisted"
[ "$n" -ge $((cycles - 1)) ] ||
  { echo "$0: $n dead owners blocklisted, expected at least $((cycles - 1))" >&2; exit 1; }
echo "ok"
