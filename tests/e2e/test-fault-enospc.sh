#!/usr/bin/env bash
# ENOSPC from the image keeps data and fails the flush (DESIGN.md
# invariant 7), with the file backend: the image is a sparse file on a
# small tmpfs that a filler file has filled, so writing back into the
# image's holes fails with ENOSPC.
#
# Data is written (it stays dirty: dirty-expire-ms is an hour and it is
# below the dirty thresholds).  A flush fails with ENOSPC; reads through
# subpage return the new data; the image does not hold it.  The filler
# is deleted; a flush succeeds, and the image holds exactly what was
# written, also after nbdkit exits.  A flush that wrongly succeeded, or
# data dropped after the failed write-back, fails the test.  Needs root
# (to mount the tmpfs).

source "$(dirname "$0")/../functions.sh"
set -euo pipefail

requires_plugin
requires_nbdsh
requires_root
requires mount umount mountpoint
make_tmpdir

mnt=$tmpdir/mnt
img=$mnt/disk.img
filler=$mnt/filler
expect=$tmpdir/expect.img
sock=$tmpdir/nbd.sock
pid=$tmpdir/nbdkit.pid

mount_fs tmpfs "$mnt" -t tmpfs -o size=8M,mode=0700

truncate -s 32M "$img"          # sparse: writing to it needs space
truncate -s 32M "$expect"
# Fill the tmpfs (dd stops at ENOSPC).
dd if=/dev/zero of="$filler" bs=64K 2>/dev/null || :
if dd if=/dev/zero of="$mnt/probe" bs=4K count=1 2>/dev/null; then
  echo "FAIL: the tmpfs is not full" >&2
  exit 1
fi
rm -f "$mnt/probe"

# Dirty memory counts whole pages: ~85 scattered dirty pages must stay
# below the background threshold, or background write-back would fail
# between the two flushes and the second would report that error once.
start_nbdkit -P "$pid" -U "$sock" "$PLUGIN" file="$img" \
             cache-size=64M dirty-expire-ms=3600000 \
             dirty-background-ratio=90 dirty-ratio=95

export IMG=$img EXPECT=$expect FILLER=$filler
timeout 120 /usr/bin/env PATH=/usr/bin:$PATH \
  nbdsh -u "$(nbd_uri "$sock")" -c - <<'PY'
import os, random

KiB, MiB = 1024, 1024 * 1024
rng = random.Random(5)
size = h.get_size()
model = bytearray(size)

def write(off, count):
    data = rng.randbytes(count)
    h.pwrite(data, off)
    model[off:off + count] = data

def image():
    with open(os.environ["IMG"], "rb") as f:
        return f.read()

# About 3 MiB: unaligned, sub-sector and multi-page writes.
for off, count in [(0, 64 * KiB), (1 * MiB + 100, 300),
                   (3 * MiB - 7, 70 * KiB), (9 * MiB, 1 * MiB + 13),
                   (size - 1, 1)]:
    write(off, count)
for _ in range(80):
    write(rng.randrange(0, size - 20 * KiB), rng.randint(1, 20 * KiB))

try:
    h.flush()
except nbd.Error as e:
    assert e.errno == "ENOSPC", "flush failed with %s, not ENOSPC: %s" \
        % (e.errno, e.string)
    print("ok: flush failed: %s" % e.string)
else:
    raise AssertionError("flush succeeded on a full filesystem")

assert h.pread(size, 0) == model, "data lost after the failed flush"
assert image() != model, "the image holds the data although the flush failed"

os.unlink(os.environ["FILLER"])
h.flush()
print("ok: flush succeeded once there was space")
img = image()
if img != model:
    bad = next(i for i in range(size) if img[i] != model[i])
    raise AssertionError("image differs from what was written at %d" % bad)
assert h.pread(size, 0) == model
with open(os.environ["EXPECT"], "wb") as f:
    f.write(model)
h.shutdown()
print("ok: the image holds exactly what was written")
PY

stop_nbdkit "$pid"
cmp "$img" "$expect"
echo ok
