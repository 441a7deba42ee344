#!/usr/bin/env bash
# Crash consistency under SIGKILL: tests/crash/crash-check runs kill
# cycles, each one starting nbdkit with the plugin on the image the
# previous cycle left, writing (1 byte to 1 MiB, unaligned, overlapping,
# 4 connections x 4 requests in flight) and flushing for a random time
# (100 ms to 1 s), killing nbdkit with SIGKILL by PID, and checking every
# byte of the image: it must hold what the last successful flush covers,
# or data of a write that flush did not cover (see crash-check.c for
# the exact rule).  Each cycle picks random cache parameters (cache
# size, page and sector size, expiry, write-back threads, dirty ratio).
#
# Over the file backend (file=), then over an
# NBD backend (uri= in front of nbdkit's file plugin on the same image).
# SIGKILL does not lose the kernel's page cache: this checks that
# flushed data reached the backend, not power-loss durability.
#
# CYCLES=N (default 20 per backend) and SEED=N replay or extend a run.

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
  # Both backends must run: a skip (77) of either is a failure here.
  if [ "$status" -ne 0 ]; then
    echo "$0: crash-check ($name) failed with status $status;" \
         "last lines of nbdkit's log:" >&2
    tail -n 30 "$tmpdir/nbdkit-$name.log" >&2 || :
    return 1
  fi
}

run_checker file --backend file

run_checker nbd --backend nbd
