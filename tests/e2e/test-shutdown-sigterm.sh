#!/usr/bin/env bash
# Shutdown drains (DESIGN.md invariant 11): data that is still dirty in
# the cache when nbdkit gets SIGTERM reaches the image before nbdkit
# exits, and nbdkit exits with status 0.
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

start_nbdkit -P "$pid" -U "$sock" "$PLUGIN" file="$img" \
             cache-size=64M page-size=64K dirty-expire-ms=3600000

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
echo ok
