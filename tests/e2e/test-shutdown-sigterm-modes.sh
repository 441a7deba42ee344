#!/usr/bin/env bash
# Shutdown drains in every mode (DESIGN.md invariant 11, docs/guarantees.md
# "SIGTERM" and "Modes"): for mode=writeback, writethrough and unsafe, a
# client writes 16 MiB without any flush or FUA and disconnects; nbdkit
# gets SIGTERM, exits with status 0, and the image then holds every
# byte.  In unsafe mode flush and FUA do nothing, but SIGTERM must still
# drain (issue 13, bug 4: it wrote nothing).
#
# dirty-expire-ms is an hour and the dirty thresholds are far above
# 16 MiB, so in writeback and unsafe mode the data must still be only in
# the cache when SIGTERM is sent; the test checks that first (otherwise
# it would prove nothing).  In writethrough mode each write is on the
# image before its reply, which is checked instead.

source "$(dirname "$0")/../functions.sh"
set -euo pipefail

requires_plugin
requires_nbdsh
make_tmpdir

img=$tmpdir/disk.img
sock=$tmpdir/nbd.sock
pid=$tmpdir/nbdkit.pid
expect=$tmpdir/expect.img
export IMG=$img EXPECT=$expect

for mode in writeback writethrough unsafe; do
    echo "== mode=$mode"

    # A pattern (not zeroes), so that a partial-sector write that lost
    # its read-modify-write shows up.
    /usr/bin/python3 -c '
import sys
sys.stdout.buffer.write(bytes(range(256)) * (40 * 1024 * 1024 // 256))
' > "$img"
    cp "$img" "$expect"

    start_nbdkit -P "$pid" -U "$sock" "$PLUGIN" file="$img" mode="$mode" \
                 cache-size=64M page-size=64K dirty-expire-ms=3600000 \
                 dirty-background-ratio=80 dirty-ratio=90

    MODE=$mode nbdsh_py -u "$(nbd_uri "$sock")" -c - <<'EOF'
import os, random

img = os.environ["IMG"]
mode = os.environ["MODE"]
KiB = 1024
MiB = 1024 * KiB

# 16 MiB in 1 MiB requests at an odd offset (every request starts and
# ends inside a sector), then whole pages, whole sectors, sub-sector
# pieces, a run over a page boundary and the very last byte.
writes = [(4 * MiB + 7 + i * MiB, MiB) for i in range(16)]
writes += [
    (0, 64 * KiB),
    (1 * MiB + 512, 4096),
    (2 * MiB + 100, 300),
    (3 * MiB - 1000, 70 * KiB),
    (40 * MiB - 1, 1),
]
rng = random.Random(mode)
with open(os.environ["EXPECT"], "r+b") as f:
    for off, count in writes:
        data = rng.randbytes(count)
        h.pwrite(data, off)
        os.pwrite(f.fileno(), data, off)

with open(os.environ["EXPECT"], "rb") as f:
    expect = f.read()
with open(img, "rb") as f:
    before = f.read()
if mode == "writethrough":
    assert before == expect, "writethrough: a write not on the image " \
        "at its reply"
else:
    for off, count in writes:
        assert before[off:off + count] != expect[off:off + count], \
            "%d bytes at %d already in the image before any flush: " \
            "not cached dirty" % (count, off)
# Reads come from the cache.
for off in range(0, len(expect), MiB):
    assert h.pread(MiB, off) == expect[off:off + MiB], off

# An idle connected client keeps nbdkit 1.32 from exiting: disconnect.
h.shutdown()
print("ok: %s: written without flush, disconnected" % mode)
EOF

    # SIGTERM by PID; nbdkit must exit with status 0 ...
    stop_nbdkit_ok "$pid" 60

    # ... after writing back every dirty byte.
    MODE=$mode /usr/bin/python3 - <<'EOF'
import os, sys
with open(os.environ["EXPECT"], "rb") as f:
    expect = f.read()
with open(os.environ["IMG"], "rb") as f:
    got = f.read()
if got != expect:
    MiB = 1 << 20
    bad = sum(1 for off in range(0, len(expect), MiB)
              if got[off:off + MiB] != expect[off:off + MiB])
    sys.exit("FAIL: mode=%s: after SIGTERM the image differs from what "
             "was written in %d of its %d MiB" %
             (os.environ["MODE"], bad, len(expect) // MiB))
print("ok: mode=%s: every byte on the image after SIGTERM"
      % os.environ["MODE"])
EOF
done
echo ok
