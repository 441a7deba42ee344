#!/usr/bin/env bash
# Shutdown drains (DESIGN.md invariant 11): data that is still dirty in
# the cache when nbdkit gets SIGTERM reaches the image before nbdkit
# exits, and nbdkit exits with status 0.  Then the early drain: with a
# client still connected (which keeps nbdkit 1.32 from exiting), SIGTERM
# alone gets the dirty data onto the image.  A clean stop, by SIGTERM or
# at the end of --run, logs no error line (issue 17).
#
# dirty-expire-ms is an hour and the writes are far below the dirty
# limits, so the data must still be only in the cache when SIGTERM is
# sent.  The test checks that first: if the image already holds the
# data, it would prove nothing, and it fails.

source "$(dirname "$0")/../functions.sh"
set -euo pipefail

requires_plugin
requires_nbdsh
make_tmpdir

img=$tmpdir/disk.img
sock=$tmpdir/nbd.sock
pid=$tmpdir/nbdkit.pid
expect=$tmpdir/expect.img

# Start from a pattern (not zeroes), so that a partial-sector write that
# lost its read-modify-write shows up.
/usr/bin/python3 -c '
import sys
sys.stdout.buffer.write(bytes(range(256)) * (32 * 1024 * 1024 // 256))
' > "$img"
cp "$img" "$expect"

log=$tmpdir/nbdkit.log
start_nbdkit -P "$pid" -U "$sock" "$PLUGIN" file="$img" \
             cache-size=64M page-size=64K dirty-expire-ms=3600000 2>"$log"

export IMG=$img EXPECT=$expect
nbdsh_py -u "$(nbd_uri "$sock")" -c - <<'EOF'
import os

img = os.environ["IMG"]
KiB = 1024
MiB = 1024 * KiB

# Whole pages, whole sectors, a sub-sector piece, an unaligned run over
# a page boundary, and one byte at the very end.
writes = [
    (0, 64 * KiB),
    (1 * MiB + 512, 4096),
    (2 * MiB + 100, 300),
    (3 * MiB - 1000, 70 * KiB),
    (20 * MiB + 7, 1 * MiB + 13),
    (32 * MiB - 1, 1),
]
with open(os.environ["EXPECT"], "r+b") as f:
    for i, (off, count) in enumerate(writes):
        data = bytes([(0xA5 ^ i ^ (j * 7)) & 0xFF for j in range(count)])
        h.pwrite(data, off)
        os.pwrite(f.fileno(), data, off)

        with open(img, "rb") as g:
            assert os.pread(g.fileno(), count, off) != data, \
                "write %d (%d bytes at %d) already in the image before " \
                "any flush: it was not cached dirty" % (i, count, off)

with open(os.environ["EXPECT"], "rb") as f:
    expect = f.read()
with open(img, "rb") as f:
    assert f.read() != expect, "image already up to date before SIGTERM"
# Reads come from the cache.
for off in range(0, len(expect), MiB):
    assert h.pread(MiB, off) == expect[off:off + MiB], off

# An idle connected client keeps nbdkit 1.32 from exiting (DESIGN.md):
# disconnect first.
h.shutdown()
print("ok: dirty data cached, image not yet written")
EOF

# SIGTERM by PID; nbdkit must exit with status 0 ...
stop_nbdkit "$pid"

# ... after writing back every dirty sector.
cmp "$img" "$expect"

# no_error_lines LOG WHAT: a clean stop logs nothing at error level.
no_error_lines ()
{
  if grep -i 'error' "$1"; then
    echo "FAIL: $2 logged the error line(s) above" >&2
    exit 1
  fi
}
no_error_lines "$log" "a SIGTERM stop"
echo "ok: SIGTERM stop: image complete, no error logged"

# ---- early drain: SIGTERM with a client still connected ---------------
cp "$expect" "$img"
/usr/bin/python3 -c '
import sys
sys.stdout.buffer.write(bytes([0x5A]) * (4 * 1024 * 1024))
' > "$tmpdir/new"
log2=$tmpdir/nbdkit2.log
start_nbdkit -P "$pid" -U "$sock" "$PLUGIN" file="$img" \
             cache-size=64M page-size=64K dirty-expire-ms=3600000 2>"$log2"
ready=$tmpdir/client.ready release=$tmpdir/client.release
export NEW=$tmpdir/new READY=$ready RELEASE=$release
nbdsh_py -u "$(nbd_uri "$sock")" -c - <<'EOF' &
import os, time
data = open(os.environ["NEW"], "rb").read()
h.pwrite(data, 4 * 1024 * 1024)
open(os.environ["READY"], "w").close()
# Stay connected, idle, until the test says so.
for _ in range(1200):
    if os.path.exists(os.environ["RELEASE"]):
        break
    time.sleep(0.05)
h.shutdown()
EOF
client=$!
for (( i = 0; i < 600; i++ )); do
  [ -e "$ready" ] && break
  sleep 0.1
done
[ -e "$ready" ] || { echo "FAIL: the client did not write" >&2; exit 1; }
/usr/bin/python3 - "$img" "$tmpdir/new" <<'EOF'
import sys
with open(sys.argv[1], "rb") as f:
    f.seek(4 << 20)
    assert f.read(4 << 20) != open(sys.argv[2], "rb").read(), \
        "the image already holds the data before SIGTERM"
EOF
kill -TERM "$nbdkit_pid"
# The client is still connected: only the early drain can write it.
drained=no
for (( i = 0; i < 300; i++ )); do
  if cmp -s -i $((4 << 20)):0 -n $((4 << 20)) "$img" "$tmpdir/new"; then
    drained=yes
    break
  fi
  sleep 0.1
done
_pid_running "$nbdkit_pid" ||
  { echo "FAIL: nbdkit exited with a client connected" >&2; exit 1; }
[ "$drained" = yes ] || {
  echo "FAIL: 30 s after SIGTERM, with a client connected, the dirty" \
       "data is not on the image (no early drain)" >&2
  exit 1
}
touch "$release"
wait "$client"
# Already signalled: stop_nbdkit's SIGTERM is a second one, which is fine.
stop_nbdkit_ok "$pid" 60
no_error_lines "$log2" "a SIGTERM stop with a client connected"
echo "ok: early drain with a client connected, no error logged"

# ---- --run: nbdkit stops when the command exits -----------------------
log3=$tmpdir/nbdkit3.log
cp "$expect" "$img"
timeout 120 env "${_nbdkit_env[@]}" \
  nbdkit -U - "$PLUGIN" file="$img" cache-size=64M page-size=64K \
         dirty-expire-ms=3600000 \
         --run 'PATH=/usr/bin:$PATH nbdsh -u "$uri" -c "h.pwrite(b\"\\x77\" * 65536, 0)"' \
  2>"$log3"
cmp -s -n 65536 "$img" <(head -c 65536 /dev/zero | tr '\0' '\167') ||
  { echo "FAIL: --run: the write is not on the image" >&2; exit 1; }
no_error_lines "$log3" "a --run exit"
echo "ok: --run exit: written, no error logged"
echo ok
