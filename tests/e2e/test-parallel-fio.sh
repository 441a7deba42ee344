#!/usr/bin/env bash
# Parallel requests through real nbdkit, driven by fio's nbd engine (one
# NBD connection per fio job), with every block checked by crc32c.
#
# Part 1: eviction and write-back under load.  A 256 MiB sparse image
# through cache-size=8M.  Four jobs on disjoint 16 MiB regions
# (offset_increment) write every block of their region once, in random
# order, at iodepth 32, with mixed block sizes (512, 4k, 64k and 1m, and
# 1000 and 7000 bytes, which leave requests that are not whole
# sectors); verify_backlog reads blocks back during the run, and the
# rest are read back at the end.  fio must exit 0, report no error and
# have read back every byte it wrote.  Then a flush, SIGTERM, and the
# same jobs run again with --verify_only, regenerating every block from
# the same seeds and checking its crc32c:
#   - against the image file itself (psync, no nbdkit): what was
#     persisted;
#   - through a fresh subpage server on the same image: the cold read
#     path after a restart.
#
# Part 2: multi-conn + parallel.  The same jobs (8 MiB each) through
# cache-size=128M with dirty-expire-ms an hour and the dirty ratios at
# 90/95 %, so nothing reaches the image before the flush (checked: the
# image must still be all zeroes, or the test proves nothing).  One
# flush on a fifth connection must make the writes of all four
# durable: the image file is verified while the server still runs
# (SIGTERM drains, so checking only after the stop would hide a flush
# that missed other connections' data), and again after SIGTERM.
#
# Checked by hand: a verify pass fails on data that never reached the
# image (killing nbdkit instead of flush + SIGTERM, or leaving out the
# flush in part 2: its blocks read as zeroes, "bad magic header 0") and
# on one flipped byte in the image (crc32c mismatch).  --verify_only
# runs without verify_backlog: with it, fio 3.33 read every block back
# over psync but missed a flipped byte in the third job's region.

source "$(dirname "$0")/../functions.sh"
set -euo pipefail

requires_plugin
requires_nbdsh
requires fio
make_tmpdir

img=$tmpdir/disk.img
sock=$tmpdir/nbd.sock
pid=$tmpdir/nbdkit.pid

# fio_job FILE ENGINE-LINES SIZE EXTRA-LINES: write a job file.  Every
# run over one image must use the same geometry and seeds, so that
# --verify_only regenerates exactly the blocks that were written.
fio_job ()
{
  cat > "$1" <<EOF
[global]
$2
rw=randwrite
bssplit=512/20:1000/10:4k/35:7000/10:64k/20:1m/5
numjobs=4
size=$3
offset_increment=64m
randrepeat=1
verify=crc32c
verify_fatal=1
verify_state_save=0
group_reporting=1
$4

[parallel]
EOF
}

# run_fio NAME JOBFILE [fio options...]: run fio with JSON output in
# $tmpdir/NAME.json, and fail unless it exits 0 and reports no error.
# Prints "WRITTEN READ" (bytes).
run_fio ()
{
  local name=$1 job=$2 status=0
  shift 2
  # In $tmpdir: fio may leave files in its working directory.
  (cd "$tmpdir" &&
     fio --output-format=json --output="$tmpdir/$name.json" "$@" "$job" \
         2> "$tmpdir/$name.err") || status=$?
  if [ "$status" -ne 0 ]; then
    echo "$0: fio $name exited with status $status" >&2
    grep -v '^fio: connected to NBD server' "$tmpdir/$name.err" | head -20 >&2
    return 1
  fi
  # Warnings may precede the JSON in the output file.
  /usr/bin/python3 - "$tmpdir/$name.json" <<'EOF'
import json, sys
text = open(sys.argv[1]).read()
d = json.loads(text[text.index("{"):])
jobs = d["jobs"]
errs = [j["error"] for j in jobs if j["error"] != 0]
assert not errs, "fio reports errors: %r" % errs
print(sum(j["write"]["io_bytes"] for j in jobs),
      sum(j["read"]["io_bytes"] for j in jobs))
EOF
}

# flush_conn SOCKET: one flush on a connection of its own.
flush_conn ()
{
  nbdsh_py -u "$(nbd_uri "$1")" -c 'assert h.can_flush(); h.flush()'
}

# verify_file JOBFILE-NAME SIZE: --verify_only against the image file.
verify_file ()
{
  local job=$tmpdir/$1.fio out
  fio_job "$job" "ioengine=psync
filename=$img" "$2" ""
  out=$(run_fio "$1" "$job" --verify_only)
  echo "$1: $out (written, read back)"
  [ "${out#* }" -eq $(( 4 * $(numfmt --from=iec "${2^^}") )) ] || {
    echo "$0: $1: verified ${out#* } bytes, expected all of them" >&2
    return 1
  }
}

# ---- part 1: eviction and write-back under parallel load -----------------

truncate -s 256M "$img"
start_nbdkit -P "$pid" -U "$sock" "$PLUGIN" file="$img" cache-size=8M

fio_job "$tmpdir/write.fio" "ioengine=nbd
uri=$(nbd_uri "$sock")" 16m "iodepth=32
verify_backlog=64"
out=$(run_fio write "$tmpdir/write.fio")
echo "write: $out (written, read back)"
written=${out% *} readback=${out#* }
[ "$written" -eq $(( 64 * 1024 * 1024 )) ] ||
  { echo "$0: fio wrote $written bytes, expected 64 MiB" >&2; exit 1; }
[ "$readback" -eq "$written" ] ||
  { echo "$0: fio read back $readback of $written bytes" >&2; exit 1; }

flush_conn "$sock"
stop_nbdkit "$pid"

# What the image file holds, without nbdkit.
verify_file verify-file 16m

# The same through a fresh server: every block comes from the image.
start_nbdkit -P "$pid" -U "$sock" "$PLUGIN" file="$img" cache-size=8M
fio_job "$tmpdir/verify-restart.fio" "ioengine=nbd
uri=$(nbd_uri "$sock")" 16m "iodepth=32"
out=$(run_fio verify-restart "$tmpdir/verify-restart.fio" --verify_only)
echo "verify-restart: $out (written, read back)"
[ "${out#* }" -eq $(( 64 * 1024 * 1024 )) ] ||
  { echo "$0: verify after restart read ${out#* } bytes" >&2; exit 1; }
stop_nbdkit "$pid"

# ---- part 2: multi-conn, one flush on another connection -----------------

rm -f "$img"
truncate -s 256M "$img"
start_nbdkit -P "$pid" -U "$sock" "$PLUGIN" file="$img" cache-size=128M \
             dirty-expire-ms=3600000 dirty-background-ratio=90 dirty-ratio=95

fio_job "$tmpdir/mc-write.fio" "ioengine=nbd
uri=$(nbd_uri "$sock")" 8m "iodepth=32
verify_backlog=64"
out=$(run_fio mc-write "$tmpdir/mc-write.fio")
echo "mc-write: $out (written, read back)"
[ "${out% *}" -eq $(( 32 * 1024 * 1024 )) ] ||
  { echo "$0: fio wrote ${out% *} bytes, expected 32 MiB" >&2; exit 1; }

# Nothing may have reached the image yet (see the header).
export IMG=$img
/usr/bin/python3 - <<'EOF'
import os
MiB = 1024 * 1024
with open(os.environ["IMG"], "rb") as f:
    for job in range(4):
        data = os.pread(f.fileno(), 8 * MiB, job * 64 * MiB)
        assert data.count(0) == len(data), \
            "job %d: data in the image before any flush" % job
EOF

flush_conn "$sock"
verify_file mc-verify-flushed 8m
stop_nbdkit "$pid"
verify_file mc-verify-stopped 8m

echo "ok"
