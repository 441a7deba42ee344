#!/usr/bin/env bash
# Bounded memory under write pressure (DESIGN.md invariant 10).  A
# client writes 512 MiB of random data through cache-size=8M, faster
# than the backend takes it; nbdkit's resident memory must stay within
#
#   bound = baseline + cache-size + writeback-threads x 1 MiB + margin
#
# and after the client's flush the image must be exactly what was
# written (cmp).  The derivation ("memory overhead" in docs/design.md):
#  - baseline: the peak RSS (VmHWM) of nbdkit with the plugin and the
#    smallest cache (8 pages of 64K: 512K) under the same client (the
#    same nbdcopy settings, 64 MiB), measured for each backend (the NBD
#    backend's libnbd handles and reader threads are fixed costs).  It holds nbdkit, the libraries,
#    thread stacks, nbdkit's request buffers (at most connections x 16
#    nbdkit threads x request size, here 2 x 16 x 256K = 8 MiB) and,
#    under ASan, the sanitizer's own memory.  Measured, not guessed, so
#    the same test holds in plain and sanitized builds.
#  - cache-size: the page memory (one mapping of cache-size bytes),
#    which the baseline holds only 512K of.
#  - write-back buffers: each write-back batch holds a snapshot of up to
#    1 MiB (batch_bytes); with writeback-threads=4 workers, 4 MiB.
#  - margin: 8 MiB for per-page metadata, malloc arenas of the extra
#    threads' work and measurement noise (RSS is sampled by pages).
# A cache that grew with the data written would need up to 512 MiB and
# fail by far; one that dropped data fails the cmp.
#
# Two backends: file= (the image on the local filesystem; it is fast,
# so pressure comes from the 512 MiB stream against an 8 MiB cache), and
# uri= in front of nbdkit's file plugin behind the rate filter (rate=1G:
# 1 Gbit/s, ~125 MB/s, bursts of 0.1 s), which is certainly slower than
# the client: writers must be throttled.  The number of throttled
# writers is read from metrics-socket= and printed; for the slow backend
# it must be non-zero.
#
# VmRSS is sampled every 50 ms into the log; the assertion uses VmHWM
# (the kernel's exact peak) read just before nbdkit is stopped.

# Under ASan, freed memory sits in the allocator's quarantine (256 MiB
# by default) before it is reused, and each size class keeps the pages
# of its own high-water mark until a release pass every 5 s (write-back
# buffers of many sizes, many in flight with the NBD backend's
# asynchronous writes, add up to twice glibc's figure): that would
# measure ASan, not the cache.  Turn the quarantine off and release
# free pages every 10 ms for this test's nbdkit.
if [ -n "${NBDKIT_ASAN_OPTIONS:-}" ]; then
  NBDKIT_ASAN_OPTIONS+=:quarantine_size_mb=0:thread_local_quarantine_size_kb=0
  NBDKIT_ASAN_OPTIONS+=:allocator_release_to_os_interval_ms=10
fi

source "$(dirname "$0")/../functions.sh"
set -euo pipefail

requires_plugin
requires nbdcopy cmp
make_tmpdir

src=$tmpdir/random.bin
img=$tmpdir/disk.img
sock=$tmpdir/nbd.sock
pid=$tmpdir/nbdkit.pid
bsock=$tmpdir/backend.sock
bpid=$tmpdir/backend.pid
msock=$tmpdir/metrics.sock
MiB=$((1024 * 1024))

head -c 512M /dev/urandom > "$src"

# Client settings shared by the baseline and the runs.
copy ()
{
  nbdcopy --connections=2 --requests=16 --request-size=262144 --flush \
    "$@"
}

kib () { awk '/^'"$2"':/ { print $2 }' "/proc/$1/status"; }

# sample PID FILE: append VmRSS (KiB) every 50 ms until PID exits.
sample ()
{
  while kill -0 "$1" 2>/dev/null; do
    kib "$1" VmRSS >> "$2" 2>/dev/null || break
    sleep 0.05
  done
}

# run NAME BACKEND-PARAM [PLUGIN PARAMS...]: start nbdkit on $sock with
# the plugin, copy $src (or its first $copy_mib MiB) to it, and set
# peak_kib (VmHWM) and max_rss_kib (the largest sample) and throttled.
run ()
{
  local name=$1 spid status=0
  shift
  start_nbdkit -P "$pid" -U "$sock" "$PLUGIN" "$@"
  local npid=$nbdkit_pid
  : > "$tmpdir/rss-$name"
  sample "$npid" "$tmpdir/rss-$name" &
  spid=$!
  cleanup_fn kill_sampler "$spid"
  head -c "$((copy_mib * MiB))" "$src" |
    copy - "$(nbd_uri "$sock")"
  peak_kib=$(kib "$npid" VmHWM)
  throttled=
  if [ -S "$msock" ]; then
    throttled=$(/usr/bin/python3 - "$msock" <<'PY'
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.shutdown(socket.SHUT_WR)
data = b""
while True:
    b = s.recv(65536)
    if not b:
        break
    data += b
for line in data.decode().splitlines():
    if line.startswith("subpage_throttled_writers_total"):
        print(int(float(line.split()[1])))
PY
)
  fi
  kill_sampler "$spid"
  max_rss_kib=$(sort -n "$tmpdir/rss-$name" | tail -n 1)
  echo "$name: VmHWM $((peak_kib / 1024)) MiB, largest VmRSS sample" \
       "$((max_rss_kib / 1024)) MiB ($(wc -l < "$tmpdir/rss-$name") samples)," \
       "throttled writers: ${throttled:-n/a (no metrics-socket=)}"
}

kill_sampler ()
{
  kill "$1" 2>/dev/null || :
  wait "$1" 2>/dev/null || :
}

# verify N: the first N MiB of the image are the source; the rest zero.
verify ()
{
  if ! cmp -n "$(($1 * MiB))" "$src" "$img"; then
    echo "$0: the image differs from the data written" >&2
    return 1
  fi
}

# ---- baseline: the smallest cache, same client -------------------------

metrics=(metrics-socket="$msock")

truncate -s 512M "$img"
copy_mib=64
run baseline file="$img" cache-size=512K page-size=64K
stop_nbdkit "$pid"
verify 64
baseline_kib=$peak_kib

cache_kib=$((8 * 1024))
wb_kib=$((4 * 1024))            # writeback-threads=4 x 1 MiB batches
margin_kib=$((8 * 1024))
bound_kib=$((baseline_kib + cache_kib + wb_kib + margin_kib))
echo "bound: baseline $((baseline_kib / 1024)) MiB + cache-size 8 MiB +" \
     "write-back 4 x 1 MiB + margin 8 MiB = $((bound_kib / 1024)) MiB"

check_bound ()
{
  if [ "$peak_kib" -gt "$bound_kib" ]; then
    echo "$0: $1: peak RSS $peak_kib KiB exceeds the bound $bound_kib KiB" >&2
    return 1
  fi
}

# ---- file backend --------------------------------------------------------

rm -f "$img"
truncate -s 512M "$img"
copy_mib=512
run file file="$img" cache-size=8M writeback-threads=4 "${metrics[@]}"
check_bound file
verify 512
stop_nbdkit "$pid"

# ---- NBD backend behind a rate limit -------------------------------------

rm -f "$img"
truncate -s 512M "$img"
start_nbdkit -P "$bpid" -U "$bsock" --filter=rate file "$img" rate=1G \
  burstiness=0.1
# This backend's own fixed memory (libnbd handles, one reader thread per
# connection) is in its own baseline: the smallest cache, same client.
copy_mib=64
run baseline-nbd uri="$(nbd_uri "$bsock")" cache-size=512K page-size=64K
stop_nbdkit "$pid"
verify 64
if [ "$peak_kib" -gt "$baseline_kib" ]; then
  bound_kib=$((peak_kib + cache_kib + wb_kib + margin_kib))
  echo "bound (NBD backend): baseline $((peak_kib / 1024)) MiB + ..." \
       "= $((bound_kib / 1024)) MiB"
fi
copy_mib=512
run nbd-slow uri="$(nbd_uri "$bsock")" cache-size=8M writeback-threads=4 \
    "${metrics[@]}"
check_bound nbd-slow
if [ -z "$throttled" ] || [ "$throttled" -eq 0 ]; then
  echo "$0: nbd-slow: no writer was throttled: the backend was not slower" \
       "than the client, the test proves nothing" >&2
  exit 1
fi
verify 512
stop_nbdkit "$pid"
stop_nbdkit "$bpid"
