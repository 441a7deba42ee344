#!/usr/bin/env bash
# Block status (issue 17 item 3): a sparse 64 MiB image served with
# file= shows its holes and its data in nbdinfo --map and in
# h.block_status; data written through subpage into a hole, not yet
# written back (dirty-expire-ms=3600000, no flush), is reported as data
# while the image file still has the hole there; after a flush too;
# zeroes written and not yet written back are reported as zero;
# nbdcopy of the export is identical to the image (and to what was
# written).

source "$(dirname "$0")/../functions.sh"
set -euo pipefail

requires_plugin
requires_nbdsh
requires nbdinfo nbdcopy
make_tmpdir
source "$(dirname "$0")/extents-functions.sh"

img=$tmpdir/disk.img
sock=$tmpdir/nbd.sock
pid=$tmpdir/nbdkit.pid
copy=$tmpdir/copy.img

make_sparse_image "$img"

start_nbdkit -P "$pid" -U "$sock" "$PLUGIN" file="$img" \
             cache-size=4M page-size=64K sector-size=512 \
             dirty-expire-ms=3600000

uri=$(nbd_uri "$sock")
nbdinfo --map "$uri" | tee "$tmpdir/map1"
check_map "$tmpdir/map1" "$IMG_MAP"

export IMG=$img URI=$uri
nbdsh_py -c - <<'EOF'
import os
import blockstatus
img = os.environ["IMG"]
MiB = 1 << 20
h = nbd.NBD()
h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h.connect_uri(os.environ["URI"])
assert h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION)

def extents(off, count):
    return blockstatus.extents(h, off, count)

def file_hole_at(off):
    return blockstatus.file_hole_at(img, off)

HZ = nbd.STATE_HOLE | nbd.STATE_ZERO
assert extents(0, MiB) == [(0, MiB, HZ)], extents(0, MiB)

# A write into the hole at 32 MiB, 3 sectors from an unaligned offset:
# dirty in the cache, still a hole in the file.
w = 32 * MiB + 1000
h.pwrite(b"x" * 1500, w)
assert file_hole_at(32 * MiB), "written back already?"
e = extents(31 * MiB, 2 * MiB)
print(e)
# Data from the sector holding w to the one holding its last byte.
s0, s1 = w // 512 * 512, (w + 1500 + 511) // 512 * 512
assert e == [(31 * MiB, s0 - 31 * MiB, HZ), (s0, s1 - s0, 0),
             (s1, 33 * MiB - s1, HZ)], e
# Asked from inside the dirty run, and with req_one.
assert extents(w, 1)[0][2] == 0
got = []
h.block_status(MiB, s0, lambda m, o, ent, err: got.extend(ent),
               nbd.CMD_FLAG_REQ_ONE)
assert got[1] == 0 and got[0] >= 512, got

# The rest of the map is unchanged.
assert extents(0, 32 * MiB)[-1] == (11 * MiB, 21 * MiB, HZ)

# After a flush the file holds it: still data.
h.flush()
assert not file_hole_at(32 * MiB)
e2 = extents(31 * MiB, 2 * MiB)
assert any(o <= w and w < o + n and t == 0 for o, n, t in e2), e2
# Zeroes written into a hole, not yet written back: cached data that
# reads as zero (zero, not hole), between the image's holes.
z = 40 * MiB
h.pwrite(bytes(8192), z)
assert file_hole_at(z), "written back already?"
e3 = extents(z - 4096, 16384)
assert e3 == [(z - 4096, 4096, HZ), (z, 8192, nbd.STATE_ZERO),
              (z + 8192, 4096, HZ)], e3
print("block status ok")
EOF

# One more write into a hole, left dirty, then copy everything.
nbdsh_py -u "$uri" -c 'h.pwrite(b"y" * 4096, 48 * 1024 * 1024)'
nbdinfo --map "$uri" | grep -E "^ *50331648 " | grep -q data
nbdcopy "$uri" "$copy"
python3 - "$img" "$copy" <<'EOF'
import sys
MiB = 1 << 20
a = bytearray(open(sys.argv[1], "rb").read())
a[48 * MiB:48 * MiB + 4096] = b"y" * 4096   # not yet in the image
b = open(sys.argv[2], "rb").read()
assert a == b, "copy differs"
print("copy ok")
EOF

stop_nbdkit_ok "$pid" 60
# The drain wrote it back: the image is the copy.
cmp "$img" "$copy"
echo ok
