#!/usr/bin/env bash
# Multi-connection stress of the plugin under ThreadSanitizer (suite
# 'concurrency', registered only in a -Db_sanitize=thread build, which
# scripts/test runs).  nbdkit is not instrumented, but the TSan runtime
# preloaded into it (NBDKIT_PRELOAD, set by tests/meson.build to gcc's
# libtsan.so) sees every lock and thread of the process, so races in the
# instrumented plugin, cache and write-back server are reported.
#
# tests/crash/crash-check --no-kill drives it: 4 connections x 4
# requests in flight, random writes (1 byte to 1 MiB, overlapping),
# TRIM, ZERO, FUA writes, reads and flushes for a few seconds, through a 2 MiB cache with fast expiry so
# that background write-back, throttling and eviction all run beside
# the requests; then a final flush, SIGTERM (nbdkit must exit 0) and a
# check of every byte of the image.  With
# TSAN_OPTIONS="halt_on_error=1 exitcode=66" (and tests/tsan.supp) the first report stops
# nbdkit; the test also fails on any report in nbdkit's log.  Over the
# file backend, and over an NBD backend (uri=).

source "$(dirname "$0")/../functions.sh"
set -euo pipefail

requires_plugin
: "${CRASH_CHECK:=$BUILDDIR/tests/crash/crash-check}"
if [ ! -x "$CRASH_CHECK" ]; then
  echo "$0: $CRASH_CHECK not found (build it first)" >&2
  exit 1
fi
case ${NBDKIT_PRELOAD:-} in
  *libtsan*) ;;
  *) echo "$0: NBDKIT_PRELOAD does not name libtsan.so" \
          "(this test belongs to a -Db_sanitize=thread build)" >&2
     exit 1 ;;
esac
: "${NBDKIT_TSAN_OPTIONS:=halt_on_error=1 exitcode=66 suppressions=$SRCDIR/tests/tsan.supp}"
export NBDKIT_TSAN_OPTIONS
make_tmpdir

# stress NAME ARGS...
stress ()
{
  local name=$1 log=$tmpdir/nbdkit-$1.log status=0
  shift
  : > "$log"
  TMPDIR=$tmpdir "$CRASH_CHECK" --plugin "$PLUGIN" --no-kill --size 8M \
    --min-ms 5000 --max-ms 5000 --server-log "$log" "$@" -- \
    cache-size=2M page-size=64K sector-size=512 dirty-expire-ms=50 \
    dirty-writeback-ms=20 dirty-ratio=30 writeback-threads=4 || status=$?
  if grep -q 'ThreadSanitizer' "$log"; then
    echo "$0: ThreadSanitizer report in nbdkit's log ($name):" >&2
    cat "$log" >&2
    return 1
  fi
  if [ "$status" -ne 0 ]; then
    echo "$0: crash-check ($name) failed with status $status; nbdkit's log:" >&2
    cat "$log" >&2
    return 1
  fi
  echo "$name: no ThreadSanitizer report"
}

stress file --backend file
stress nbd --backend nbd
