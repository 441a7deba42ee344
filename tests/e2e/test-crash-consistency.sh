#!/usr/bin/env bash
# Crash consistency under SIGKILL: tests/crash/crash-check runs kill
# cycles, each one starting nbdkit with the plugin on the image the
# previous cycle left, racing requests on overlapping ranges (4
# connections x 4 requests in flight; 85% of them in a 256 KiB hot
# range): writes (1 byte to 1 MiB, unaligned, 20% with FUA), zeroes
# (with and without NO_HOLE and FAST_ZERO), trims, reads and flushes for
# a random time (100 ms to 1 s), killing nbdkit with SIGKILL by PID, and
# checking every byte of the image and of every read (see crash-check.c
# for the exact rule): the image must hold what the last successful
# flush and every FUA reply cover, or data of a request they did not
# cover; a trimmed byte reads as 0 or as what it held before the trim; a
# fast zero that failed with ENOTSUP changed nothing; a read returns
# only bytes some order of the requests allows.  A request that fails
# (other than a fast zero with ENOTSUP) fails the test.  Each cycle picks
# random cache parameters (cache size, page and sector size, expiry,
# write-back threads, dirty ratio).
#
# Three runs: over the file backend (file=); over an NBD backend (uri=
# in front of nbdkit's file plugin on the same image); and over the file
# backend with a tiny cache of 8 pages (the least the plugin accepts), so
# that eviction and writers waiting for write-back race the rest.
# SIGKILL does not lose the kernel's page cache: this checks that
# flushed data reached the backend, not power-loss durability.
#
# CYCLES=N (default 20 per run) and SEED=N replay or extend a run.  About
# 2.5 minutes under ASan (60 cycles).

source "$(dirname "$0")/../functions.sh"
set -euo pipefail

requires_plugin
: "${CRASH_CHECK:=$BUILDDIR/tests/crash/crash-check}"
if [ ! -x "$CRASH_CHECK" ]; then
  echo "$0: $CRASH_CHECK not found (build it first)" >&2
  exit 1
fi
make_tmpdir

seed=${SEED:-$(( $(date +%s) % 100000 ))}
cycles=${CYCLES:-20}

# run_checker NAME ARGS...: run crash-check, show nbdkit's log on failure.
run_checker ()
{
  local name=$1 status=0
  shift
  TMPDIR=$tmpdir "$CRASH_CHECK" --plugin "$PLUGIN" --size 32M \
    --cycles "$cycles" --seed "$seed" --min-ms 100 --max-ms 1000 \
    --server-log "$tmpdir/nbdkit-$name.log" "$@" || status=$?
  # Every run must happen: a skip (77) of any is a failure here.
  if [ "$status" -ne 0 ]; then
    echo "$0: crash-check ($name) failed with status $status" \
         "(SEED=$seed); last lines of nbdkit's log:" >&2
    tail -n 30 "$tmpdir/nbdkit-$name.log" >&2 || :
    return 1
  fi
}

status=0
run_checker file --backend file || status=1
run_checker nbd --backend nbd || status=1
run_checker tiny --backend file --cache-pages 8 || status=1
exit $status
