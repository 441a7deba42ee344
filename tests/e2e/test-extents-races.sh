#!/usr/bin/env bash
# Block status (issue 17 item 3) against what runs beside it, through the
# real plugin.  No sleeps: the remote's extents wait on FIFOs.
#  1. file=: the image is truncated under subpage (2 MiB of 4) while a
#     client's write at 3 MiB is still dirty in the cache, and subpage
#     follows (a new connection's .get_size).  A client connected
#     before asks for block status at 3 MiB: reads there fail (EIO), the
#     data stays in the cache, and it is back when the image grows
#     again.  Block status must not say "zero" for it (an error or data
#     are both fine): a copy that trusted a HOLE|ZERO there would skip
#     acknowledged data without an error (the backend's lseek past the
#     end of the file answers ENXIO, a hole; the cache must say data).
#  2. uri=: the remote dies (SIGKILL) while subpage waits for its answer
#     to a block status (parked in the remote's extents script): the
#     client gets EIO, subpage neither hangs nor crashes, and stops
#     cleanly.

source "$(dirname "$0")/../functions.sh"
set -euo pipefail

requires_plugin
requires_nbdsh
make_tmpdir

sock=$tmpdir/nbd.sock
pid=$tmpdir/nbdkit.pid
rsock=$tmpdir/remote.sock
rpid=$tmpdir/remote.pid
uri=$(nbd_uri "$sock")
MiB=$((1024 * 1024))
fail=0

# ---- 1. file=: a shrink hides dirty data from block status ---------------

img=$tmpdir/disk.img
truncate -s 4M "$img"
start_nbdkit -P "$pid" -U "$sock" "$PLUGIN" file="$img" \
             cache-size=4M page-size=64K sector-size=512 \
             dirty-expire-ms=3600000
export IMG=$img URI=$uri
status=0
timeout 60 /usr/bin/env PATH=/usr/bin:$PATH nbdsh -c - <<'EOF' || status=$?
import os, sys
img, uri = os.environ["IMG"], os.environ["URI"]
MiB = 1 << 20
w = 3 * MiB

def connect():
    h = nbd.NBD()
    h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    h.connect_uri(uri)
    return h

h = connect()
assert h.get_size() == 4 * MiB
h.pwrite(b"x" * 4096, w)                 # acknowledged, dirty

os.truncate(img, 2 * MiB)                # someone shrinks the image
h2 = connect()                           # .get_size: subpage follows
assert h2.get_size() == 2 * MiB, h2.get_size()
h2.shutdown()

try:
    h.pread(512, w)
    read = "ok"
except nbd.Error as e:
    read = e.string
got, bs = [], "ok"
def cb(meta, off, entries, err):
    if meta == nbd.CONTEXT_BASE_ALLOCATION:
        got.extend(entries)
try:
    h.block_status(64 * 1024, w, cb)
except nbd.Error as e:
    bs = "error: " + e.string

os.truncate(img, 4 * MiB)                # and grows it back
h3 = connect()
assert h3.get_size() == 4 * MiB
h3.shutdown()
back = h.pread(4096, w) == b"x" * 4096

print("read while short:", read)
print("block status while short:", bs, got)
print("the write is back after the growth:", back)
assert back
if bs == "ok":
    # The extent that covers w: never ZERO, the bytes are 'x'.
    flags = got[1] if got else None
    if flags is None or flags & nbd.STATE_ZERO:
        print("FAIL: block status reported the acknowledged write at "
              "3 MiB as %s (HOLE|ZERO = 3) while the cache holds it"
              % flags, file=sys.stderr)
        sys.exit(1)
print("ok")
EOF
if [ "$status" -eq 124 ]; then
  echo "FAIL: part 1 hung" >&2
  exit 1
elif [ "$status" -ne 0 ]; then
  echo "part 1 FAILED (status $status)" >&2
  fail=1
fi
stop_nbdkit_ok "$pid" 60
# The drain wrote the write back: the image has it.
python3 -c '
import sys
d = open(sys.argv[1], "rb").read()
assert d[3 << 20:(3 << 20) + 4096] == b"x" * 4096, "not on the image"
' "$img"

# ---- 2. uri=: the remote dies while it holds a block status -------------

entered=$tmpdir/entered
go=$tmpdir/go
mkfifo "$entered" "$go"
# Releases a parked extents script if one is left (O_RDWR never blocks).
release () { exec {fd}<>"$go"; echo go >&"$fd"; exec {fd}>&-; }
cleanup_fn release
rimg=$tmpdir/remote.img
start_file_remote "$rpid" "$rsock" "$rimg" -- \
  can_write="exit 0" can_flush="exit 0" flush="exit 0" \
  can_extents="exit 0" \
  extents="echo in > $entered; read -r x < $go; echo \$4 \$3 3"
remote_pid=$nbdkit_pid
log=$tmpdir/subpage.log
start_nbdkit -P "$pid" -U "$sock" "$PLUGIN" uri="$(nbd_uri "$rsock")" \
             2>"$log"
subpage_pid=$nbdkit_pid

out=$tmpdir/bs.out
timeout 60 /usr/bin/env PATH=/usr/bin:$PATH nbdsh -c '
h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h.connect_uri("'"$uri"'")
try:
    h.block_status(1 << 20, 0, lambda *a: 0)
except nbd.Error as e:
    print("block status failed:", e.string, e.errno)
    assert e.errno == "EIO", e
else:
    raise AssertionError("block status answered without the remote")
' >"$out" 2>&1 &
client=$!
read -r _ < "$entered"          # subpage's block status is at the remote
kill -KILL "$remote_pid"
reap_killed "$remote_pid"
status=0
wait "$client" || status=$?
cat "$out"
check_client "$status"
kill -0 "$subpage_pid"
stop_nbdkit_ok "$pid" 60
if grep -q "AddressSanitizer\|runtime error" "$log"; then
  cat "$log"
  exit 1
fi

[ "$fail" -eq 0 ] || exit 1
echo ok
