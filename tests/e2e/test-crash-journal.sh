#!/usr/bin/env bash
# Crash consistency of journal= under SIGKILL: tests/crash/crash-check
# --journal (see "The journal" in crash-check.c).  The same racing
# requests as test-crash-consistency.sh (4 connections x 4 in flight,
# writes, zeroes, trims, reads, flushes, FUA), killed with SIGKILL by
# PID; after each kill a server restarted on the same journal (new
# random cache parameters, the same sector size) replays it, and the
# whole image is read THROUGH it and checked: every write acknowledged
# before the last successful flush, and every FUA write, is there; no
# byte holds a value no request could have left.  That server serves the
# next cycle; every 5th cycle and at the end it is stopped with SIGTERM
# and the image file must then equal what it served.
#
# Two runs of CYCLES kills each (default 20):
#   journal     dirty-writeback-ms= random from 10 ms to 60 s;
#   image-only  dirty-writeback-ms=10 (the drainer writes the image
#               during the load), flushes as barriers, whole-sector
#               requests; at every kill the image file ALONE (the
#               journal ignored: as if it were lost) must be a state the
#               flush-epoch order allows: for some k, every request
#               before flush k plus any subset of those between flush k
#               and k+1, and nothing later (checked per sector, the set
#               of k intersected over the image).
# SIGKILL keeps the kernel's page cache: this checks the order and what
# reached the files, not power-loss durability.  SEED=N, CYCLES=N.

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

run_checker ()
{
  local name=$1 status=0
  shift
  TMPDIR=$tmpdir "$CRASH_CHECK" --plugin "$PLUGIN" --size 16M \
    --cycles "$cycles" --seed "$seed" --min-ms 100 --max-ms 500 \
    --journal "$tmpdir/$name.jnl" --journal-size 16M \
    --server-log "$tmpdir/nbdkit-$name.log" "$@" || status=$?
  if [ "$status" -ne 0 ]; then
    echo "$0: crash-check ($name) failed with status $status" \
         "(SEED=$seed); last lines of nbdkit's log:" >&2
    tail -n 30 "$tmpdir/nbdkit-$name.log" >&2 || :
    return 1
  fi
}

status=0
run_checker journal || status=1
run_checker image-only --image-only-pct 100 || status=1
exit $status
