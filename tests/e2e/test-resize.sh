#!/usr/bin/env bash
# The image's size changes while it is served (issue 17 item 4; man
# page, RESIZING THE IMAGE).  subpage file= over a 16 MiB image, with
# no background write-back (dirty-expire-ms an hour, nothing near the
# thresholds), so what is dirty stays dirty until a flush:
#
# 1. Growth to 24 MiB (truncate): a new connection sees 24 MiB and can
#    write and read at the new end; a flush puts it in the file.
# 2. Shrink to 8 MiB with data written past 8 MiB not yet flushed (on a
#    connection opened before the shrink): a new connection sees 8 MiB;
#    the old connection's flushes fail (three times), and so do its
#    reads and writes past the new end; the file stays 8 MiB (never
#    extended by a write-back); data before the new end that was dirty
#    reaches the file; the log has exactly one error line about the
#    shrink and no "unexpected end of file" or per-request errors.
# 3. Growth back to 24 MiB: the next flush succeeds and the file holds
#    every byte the client wrote, past the old 8 MiB end included; the
#    bytes the shrink cut off and nobody wrote since read as zeroes.

source "$(dirname "$0")/../functions.sh"
set -euo pipefail

requires_plugin
requires_nbdsh
requires nbdinfo truncate
make_tmpdir

img=$tmpdir/disk.img
sock=$tmpdir/nbd.sock
pid=$tmpdir/nbdkit.pid
log=$tmpdir/nbdkit.log

truncate -s 16M "$img"
start_nbdkit -P "$pid" -U "$sock" "$PLUGIN" file="$img" \
             cache-size=8M page-size=64K sector-size=512 \
             dirty-expire-ms=3600000 2>"$log"
uri=$(nbd_uri "$sock")

[ "$(nbdinfo --size "$uri")" -eq $((16 << 20)) ]

# 1. Growth.
truncate -s 24M "$img"
[ "$(nbdinfo --size "$uri")" -eq $((24 << 20)) ]
nbdsh_py -u "$uri" -c '
MiB = 1 << 20
assert h.get_size() == 24 * MiB
h.pwrite(b"g" * 65536, 24 * MiB - 65536)
assert h.pread(65536, 24 * MiB - 65536) == b"g" * 65536
h.flush()
'
python3 - "$img" <<'EOF'
import sys
MiB = 1 << 20
with open(sys.argv[1], "rb") as f:
    f.seek(24 * MiB - 65536)
    assert f.read(65536) == b"g" * 65536, "growth: not in the file"
print("growth ok")
EOF

# 2 and 3: one connection across the shrink and the growth back.
IMG=$img URI=$uri nbdsh_py -u "$uri" -c '
import os, subprocess
MiB = 1 << 20
img = os.environ["IMG"]
assert h.get_size() == 24 * MiB

# Dirty, not flushed: before the new end, across it, and past it.
h.pwrite(b"a" * 65536, 4 * MiB)
h.pwrite(b"b" * 8192, 8 * MiB - 4096)
h.pwrite(b"c" * 65536, 12 * MiB)

subprocess.run(["truncate", "-s", "8M", img], check=True)
assert os.path.getsize(img) == 8 * MiB

def fails(what, f, *args):
    try:
        f(*args)
    except nbd.Error as e:
        return e.errno
    raise AssertionError(what + " succeeded past the end")

for i in range(3):
    e = fails("flush", h.flush)
    assert e == "EIO", e
assert fails("read", h.pread, 4096, 12 * MiB) == "EIO"
assert fails("write", h.pwrite, b"d" * 4096, 16 * MiB) == "ENOSPC"
# A new connection sees the new size.
h2 = nbd.NBD()
h2.connect_uri(os.environ["URI"])
assert h2.get_size() == 8 * MiB, h2.get_size()
assert h2.pread(65536, 4 * MiB) == b"a" * 65536
h2.shutdown()
assert os.path.getsize(img) == 8 * MiB, "extended by a write-back"
with open(img, "rb") as f:
    f.seek(4 * MiB)
    assert f.read(65536) == b"a" * 65536, "data before the end not written"
    f.seek(8 * MiB - 4096)
    assert f.read() == b"b" * 4096, "the part before the end not written"
print("shrink ok")

# 3. Back to 24 MiB: the flush writes what was kept.
subprocess.run(["truncate", "-s", "24M", img], check=True)
h2 = nbd.NBD()
h2.connect_uri(os.environ["URI"])
assert h2.get_size() == 24 * MiB
h2.flush()
h2.shutdown()
h.flush()
with open(img, "rb") as f:
    f.seek(8 * MiB - 4096)
    assert f.read(8192) == b"b" * 8192
    f.seek(12 * MiB)
    assert f.read(65536) == b"c" * 65536
    f.seek(24 * MiB - 65536)
    assert f.read(65536) == bytes(65536), "cut off, then read back"
assert h.pread(65536, 12 * MiB) == b"c" * 65536
print("growth back ok")
'

stop_nbdkit_ok "$pid" 60
cat "$log"
n=$(grep -c "error" "$log" || true)
if [ "$n" -ne 1 ] || ! grep -q "size changed from 25165824 to 8388608" "$log"; then
  echo "$0: expected exactly one error line, about the shrink; got $n" >&2
  exit 1
fi
if grep -q "unexpected end of file" "$log"; then
  echo "$0: the backend logged its end of file" >&2
  exit 1
fi
echo "$0: ok"
