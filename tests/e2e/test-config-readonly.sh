#!/usr/bin/env bash
# A read-only export (nbdkit -r): the client sees it read-only, reads
# work through the cache, writes and zeroes fail, and the image file is
# left exactly as it was.  (chmod 0444 would not do: root, who runs the
# tests, can write to it anyway.)

source "$(dirname "$0")/../functions.sh"
set -euo pipefail

requires_plugin
requires_nbdsh
make_tmpdir

img=$tmpdir/disk.img
orig=$tmpdir/orig.img
sock=$tmpdir/nbd.sock
pid=$tmpdir/nbdkit.pid

head -c 8M /dev/urandom > "$img"
cp "$img" "$orig"

start_nbdkit -P "$pid" -U "$sock" -r "$PLUGIN" file="$img" cache-size=1M

export IMG=$img
nbdsh_py -u "$(nbd_uri "$sock")" -c - <<'EOF'
import os

with open(os.environ["IMG"], "rb") as f:
    want = f.read()
assert h.is_read_only(), "export is not read-only under nbdkit -r"
assert h.get_size() == len(want)

# Reads of any alignment, including more than the 1 MiB cache holds.
for off, count in [(0, 8 << 20), (1, 1), (4095, 70000), (len(want) - 3, 3)]:
    assert h.pread(count, off) == want[off:off + count], (off, count)

def must_fail(what, fn):
    try:
        fn()
    except nbd.Error as e:
        print("ok: %s failed: %s" % (what, e))
    else:
        raise AssertionError("%s succeeded on a read-only export" % what)

must_fail("pwrite", lambda: h.pwrite(b"x" * 4096, 0))
must_fail("unaligned pwrite", lambda: h.pwrite(b"y", 12345))
must_fail("zero", lambda: h.zero(65536, 0))
must_fail("trim", lambda: h.trim(65536, 0))

# The connection is still usable, and the data unchanged.
assert h.pread(4096, 0) == want[:4096]
h.shutdown()
EOF

stop_nbdkit "$pid"
cmp "$img" "$orig"
echo ok
