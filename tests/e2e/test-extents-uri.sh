#!/usr/bin/env bash
# Block status with uri= (issue 17 item 3): subpage in front of a remote
# NBD export passes on the remote's base:allocation extents, merged with
# what its cache holds unwritten.
#  1. Remote `nbdkit file` of a sparse 64 MiB image: nbdinfo --map shows
#     its holes and data; a write into a hole, not yet written back
#     (dirty-expire-ms=3600000, no flush), is data while the image still
#     has the hole there, and after a flush too; nbdcopy of the export
#     is identical to the image plus what was written (one write still
#     dirty), and after the stop the image is the copy.
#  2. A remote that answers each block status with one extent of at
#     most 1 MiB (nbdkit's eval plugin): subpage asks again until the
#     range it needs is covered, so the map is the image's, with a
#     dirty write in a hole as data; nbdcopy copies it.
#  3. A remote without structured replies (nbdkit --no-sr) cannot
#     negotiate base:allocation: subpage offers no extents, and the map
#     is all data.
#  4. The remote dies (SIGKILL): block status fails with EIO, subpage
#     keeps running and stops cleanly.

source "$(dirname "$0")/../functions.sh"
set -euo pipefail

requires_plugin
requires_nbdsh
requires nbdinfo nbdcopy
make_tmpdir
source "$(dirname "$0")/extents-functions.sh"

img=$tmpdir/disk.img
rsock=$tmpdir/remote.sock
rpid=$tmpdir/remote.pid
sock=$tmpdir/nbd.sock
pid=$tmpdir/nbdkit.pid
copy=$tmpdir/copy.img
MiB=$((1024 * 1024))

make_sparse_image "$img"

# ---- 1. remote nbdkit file ---------------------------------------------

start_nbdkit -P "$rpid" -U "$rsock" file "$img"
start_nbdkit -P "$pid" -U "$sock" "$PLUGIN" uri="$(nbd_uri "$rsock")" \
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
# Ranges that start and end inside the remote's extents.
assert extents(MiB + 4096, 8192) == [(MiB + 4096, 8192, 0)]
assert extents(10 * MiB - 512, 1024) == [(10 * MiB - 512, 512, HZ),
                                         (10 * MiB, 512, 0)]

# A write into the hole at 32 MiB, 3 sectors from an unaligned offset:
# dirty in the cache, still a hole on the remote.
w = 32 * MiB + 1000
h.pwrite(b"x" * 1500, w)
assert file_hole_at(32 * MiB), "written back already?"
e = extents(31 * MiB, 2 * MiB)
print(e)
s0, s1 = w // 512 * 512, (w + 1500 + 511) // 512 * 512
assert e == [(31 * MiB, s0 - 31 * MiB, HZ), (s0, s1 - s0, 0),
             (s1, 33 * MiB - s1, HZ)], e
got = []
h.block_status(MiB, s0, lambda m, o, ent, err: got.extend(ent),
               nbd.CMD_FLAG_REQ_ONE)
assert got[1] == 0 and got[0] >= 512, got

# After a flush the remote holds it: still data.
h.flush()
assert not file_hole_at(32 * MiB)
e2 = extents(31 * MiB, 2 * MiB)
assert any(o <= w and w < o + n and t == 0 for o, n, t in e2), e2
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
a[48 * MiB:48 * MiB + 4096] = b"y" * 4096   # not yet on the remote
a[32 * MiB + 1000:32 * MiB + 2500] = b"x" * 1500
b = open(sys.argv[2], "rb").read()
assert a == b, "copy differs"
print("copy ok")
EOF

stop_nbdkit_ok "$pid" 60
stop_nbdkit_ok "$rpid" 60
# The drain wrote it back: the image is the copy.
cmp "$img" "$copy"

# ---- 2. a remote that answers short --------------------------------------

# Each block status answer: one extent, up to the next MiB boundary
# (the answer does not change when data is written).  Data in MiB 1 and
# 10 of a new sparse image.  A dirty write at 5 MiB makes subpage ask
# the remote for [0, 5 MiB) before it adds the cache's run: the answer
# must be completed to 5 MiB first.
img2=$tmpdir/short.img
truncate -s 64M "$img2"
dd if=/dev/urandom of="$img2" bs=1M seek=1 count=1 conv=notrunc status=none
dd if=/dev/urandom of="$img2" bs=1M seek=10 count=1 conv=notrunc status=none
start_nbdkit -P "$rpid" -U "$rsock" eval \
  get_size="echo $((64 * MiB))" \
  pread="env -u LD_PRELOAD dd if=$img2 skip=\$4 count=\$3 iflag=skip_bytes,count_bytes status=none" \
  pwrite="env -u LD_PRELOAD dd of=$img2 seek=\$4 oflag=seek_bytes conv=notrunc status=none" \
  can_write="exit 0" can_flush="exit 0" flush="sync" \
  can_extents="exit 0" \
  extents='c=$(($4 / 1048576)); e=$(((c + 1) * 1048576));
           case $c in 1|10) t=0 ;; *) t=3 ;; esac; echo $4 $((e - $4)) $t'
start_nbdkit -P "$pid" -U "$sock" "$PLUGIN" uri="$(nbd_uri "$rsock")" \
             dirty-expire-ms=3600000
nbdinfo --map "$uri" | tee "$tmpdir/map2"
check_map "$tmpdir/map2" \
  '[(0, MiB, 3), (MiB, MiB, 0), (2 * MiB, 8 * MiB, 3), (10 * MiB, MiB, 0),
    (11 * MiB, 53 * MiB, 3)]'
nbdsh_py -u "$uri" -c 'h.pwrite(b"z" * 4096, 5 * 1024 * 1024)'
nbdinfo --map "$uri" | tee "$tmpdir/map2w"
check_map "$tmpdir/map2w" \
  '[(0, MiB, 3), (MiB, MiB, 0), (2 * MiB, 3 * MiB, 3), (5 * MiB, 4096, 0),
    (5 * MiB + 4096, 5 * MiB - 4096, 3), (10 * MiB, MiB, 0),
    (11 * MiB, 53 * MiB, 3)]'
rm -f "$copy"
nbdcopy "$uri" "$copy"
stop_nbdkit_ok "$pid" 60
stop_nbdkit_ok "$rpid" 60
# The copy saw the dirty write, and the drain wrote it to the image.
cmp "$img2" "$copy"
python3 -c '
import sys
d = open(sys.argv[1], "rb").read()
assert d[5 << 20:(5 << 20) + 4096] == b"z" * 4096' "$copy"

# ---- 3. a remote without base:allocation -------------------------------

start_nbdkit -P "$rpid" -U "$rsock" --no-sr file "$img"
start_nbdkit -P "$pid" -U "$sock" "$PLUGIN" uri="$(nbd_uri "$rsock")"
nbdinfo --map "$uri" | tee "$tmpdir/map3"
check_map "$tmpdir/map3" '[(0, 64 * MiB, 0)]'
stop_nbdkit_ok "$pid" 60
stop_nbdkit_ok "$rpid" 60

# ---- 4. the remote dies ----------------------------------------------------

log=$tmpdir/subpage.log
start_nbdkit -P "$rpid" -U "$rsock" file "$img"
remote_pid=$nbdkit_pid
start_nbdkit -P "$pid" -U "$sock" "$PLUGIN" uri="$(nbd_uri "$rsock")" \
             2>"$log"
subpage_pid=$nbdkit_pid
kill -KILL "$remote_pid"
reap_killed "$remote_pid"
status=0
timeout 60 /usr/bin/env PATH=/usr/bin:$PATH nbdsh -c '
h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h.connect_uri("'"$uri"'")
try:
    h.block_status(1 << 20, 0, lambda *a: 0)
except nbd.Error as e:
    assert e.errno == "EIO", e
    print("block status failed:", e.string)
else:
    raise AssertionError("block status without the remote")
' || status=$?
check_client "$status"
kill -0 "$subpage_pid"
stop_nbdkit_ok "$pid" 60
grep -q "block status\|is lost" "$log" || { cat "$log"; exit 1; }
if grep -q "AddressSanitizer\|runtime error" "$log"; then
  cat "$log"
  exit 1
fi
echo ok
