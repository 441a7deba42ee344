#!/usr/bin/env bash
# SIGTERM with journal= starts the drain at once, while a client stays
# connected (man page, SHUTDOWN; docs/guarantees.md): the shutdown
# watcher hurries the drainer (jdrain_hurry), whatever
# journal-background-ratio= says.
#
# A: journal-background-ratio=0 (eager), B: the defaults (50, and
#    dirty-expire-ms=30000 with a journal); both dirty-writeback-ms=60000
#    (no wake-up by the interval).  A client writes and flushes 1 MiB
#    (young, in a 64 MiB journal: no step is due under B), then stays
#    connected; nbdkit gets SIGTERM; within 10 s records must be
#    drained (in milliseconds when it happens); the client then leaves,
#    nbdkit exits with status 0 and the image holds the MiB.  B fails
#    when the watcher only kicks the drainer.
# C: A, in front of a remote (uri=, nbdkit file with the error filter)
#    whose writes fail: cache-size=1M makes the 1 MiB kick the drainer,
#    whose step fails ("journal: write-back failed" in the log) and
#    which then backs off the 60 s interval; the errors stop, SIGTERM:
#    the drain must start within 10 s all the same.
# No sleep makes the interleaving: the test polls a metric and files.

source "$(dirname "$0")/../functions.sh"
set -euo pipefail

requires_plugin
requires_nbdsh
make_tmpdir

MiB=$((1 << 20))
img=$tmpdir/disk.img sock=$tmpdir/nbd.sock pid=$tmpdir/nbdkit.pid
jnl=$tmpdir/j.journal msock=$tmpdir/metrics.sock uri=$(nbd_uri "$sock")
fail () { echo "FAIL: $*" >&2; exit 1; }

# run NAME BACKEND IMAGE ARGS...: the scenario with BACKEND (file= or
# uri=), whose data lands in IMAGE; the function named in $PRE, if any,
# runs (with NAME) just before the SIGTERM.
run ()
{
  local name=$1 backend=$2 image=$3 d i
  local ready=$tmpdir/ready.$1 release=$tmpdir/release.$1
  shift 3
  rm -f "$jnl"
  # dirty-writeback-ms=60000: no interval wake-up during the test; the
  # 1 MiB is far below dirty-background-ratio, so no writer kicks.
  start_nbdkit -P "$pid" -U "$sock" "$PLUGIN" "$backend" \
               journal="$jnl" journal-size=64M sequential-cutoff=0 \
               metrics-socket="$msock" "$@" \
               2>>"$tmpdir/log.$name"
  READY=$ready RELEASE=$release nbdsh_py -u "$uri" -c '
import os, time
h.pwrite(b"\xa7" * (1 << 20), 8 << 20)
h.flush()
open(os.environ["READY"], "w").close()
while not os.path.exists(os.environ["RELEASE"]):
    time.sleep(0.05)   # only polls for the release, creates no race
h.shutdown()
' &
  local client=$!
  for ((i = 0; i < 600; i++)); do [ -e "$ready" ] && break; sleep 0.1; done
  [ -e "$ready" ] || fail "$name: the client did not write"
  d=$(metric "$msock" journal_drained_records_total)
  [ "$d" -eq 0 ] || fail "$name: drained before SIGTERM ($d): proves nothing"
  [ -z "${PRE:-}" ] || "$PRE" "$name"
  kill -TERM "$nbdkit_pid"
  for ((i = 0; i < 100; i++)); do
    d=$(metric "$msock" journal_drained_records_total)
    [ -n "$d" ] && [ "$d" -gt 0 ] && break
    sleep 0.1
  done
  echo "$name: drained records 10 s after SIGTERM (client connected): ${d:-none}"
  touch "$release"
  wait "$client"
  stop_nbdkit_ok "$pid" 60
  cmp -n $MiB <(tail -c +$((8 * MiB + 1)) "$image") \
      <(head -c $MiB /dev/zero | tr '\0' '\247') ||
    fail "$name: the image after the stop"
  [ -n "$d" ] && [ "$d" -gt 0 ] ||
    fail "$name: SIGTERM with a client connected started no drain in 10 s"
}

truncate -s 64M "$img"
run A file="$img" "$img" journal-background-ratio=0 dirty-writeback-ms=60000
rm -f "$img"
truncate -s 64M "$img"
run B file="$img" "$img" dirty-writeback-ms=60000

rimg=$tmpdir/remote.img rsock=$tmpdir/remote.sock rpid=$tmpdir/remote.pid
inject=$tmpdir/inject
truncate -s 64M "$rimg"
touch "$inject"
start_nbdkit -P "$rpid" -U "$rsock" --filter=error file "$rimg" \
             error-pwrite=EIO error-pwrite-rate=100% error-pwrite-file="$inject"
# failed_then_healed NAME: waits for the drainer's failed step, then
# stops the errors.
failed_then_healed ()
{
  local i
  for ((i = 0; i < 300; i++)); do
    grep -q 'journal: write-back failed' "$tmpdir/log.$1" && break
    sleep 0.1
  done
  grep -q 'journal: write-back failed' "$tmpdir/log.$1" ||
    fail "$1: no failed write-back step before the SIGTERM: proves nothing"
  rm -f "$inject"
}
PRE=failed_then_healed run C uri="$(nbd_uri "$rsock")" "$rimg" \
  journal-background-ratio=0 dirty-writeback-ms=60000 cache-size=1M
stop_nbdkit "$rpid"
echo ok
