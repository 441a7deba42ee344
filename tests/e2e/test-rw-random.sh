#!/usr/bin/env bash
# Data integrity under eviction and write-back: random reads, writes and
# zeroes of 1 byte to 1 MiB at any alignment, overlapping one another,
# over a 64 MiB image of random data through a 4 MiB cache, checked
# against a Python model of the disk:
#  - every read, during the run and of the whole export at the end;
#  - the image file after a FUA write (that range only), after
#    h.flush() (all of it) and after the server has exited;
#  - a fresh server (cold cache) reading the image.
# SEED=N reproduces a run (the seed is printed).

source "$(dirname "$0")/../functions.sh"
set -euo pipefail

requires_plugin
requires_nbdsh
make_tmpdir

img=$tmpdir/disk.img
sock=$tmpdir/nbd.sock
pid=$tmpdir/nbdkit.pid
model=$tmpdir/model.bin

# Random initial contents: a partial-sector write must merge with what
# the image holds, not with zeroes.
head -c 64M /dev/urandom > "$img"

start_nbdkit -P "$pid" -U "$sock" "$PLUGIN" file="$img" \
             cache-size=4M page-size=64K sector-size=512

export IMG=$img MODEL=$model SEED=${SEED:-$RANDOM$RANDOM}
echo "SEED=$SEED"
nbdsh_py -u "$(nbd_uri "$sock")" -c - <<'EOF'
import os, random

img = os.environ["IMG"]
rng = random.Random(int(os.environ["SEED"]))
MiB = 1024 * 1024

with open(img, "rb") as f:
    model = bytearray(f.read())
size = len(model)
assert h.get_size() == size, (h.get_size(), size)
assert not h.is_read_only()
fua = h.can_fua()
zero = h.can_zero()
print("can_fua=%s can_zero=%s" % (fua, zero))

def check_range(what, got, off):
    want = model[off:off + len(got)]
    if got != want:
        i = next(i for i in range(len(got)) if got[i] != want[i])
        raise AssertionError("%s: mismatch at byte %d (offset %d of %d-byte "
                             "range at %d): got %d, want %d"
                             % (what, off + i, i, len(got), off, got[i],
                                want[i]))

def check_file(what, off, count):
    with open(img, "rb") as f:
        check_range(what, os.pread(f.fileno(), count, off), off)

def random_size():
    c = rng.random()
    if c < 0.35:
        return rng.randint(1, 4096)         # sub-sector and small
    if c < 0.65:
        return rng.randint(4097, 64 * 1024) # up to a page
    if c < 0.90:
        return rng.randint(64 * 1024 + 1, 256 * 1024)
    return rng.randint(256 * 1024 + 1, MiB) # spans many pages

def random_offset(count):
    c = rng.random()
    if c < 0.3:                             # sector-aligned
        return rng.randrange(0, (size - count) // 512 + 1) * 512
    if c < 0.4:                             # page-aligned
        return rng.randrange(0, (size - count) // 65536 + 1) * 65536
    if c < 0.5:                             # straddles a page boundary
        b = rng.randrange(1, size // 65536) * 65536
        return max(0, min(size - count, b - rng.randint(1, count)))
    return rng.randrange(0, size - count + 1)

# Overlaps come from the spread of offsets and from "hot" ranges that are
# written again and again.
hot = [rng.randrange(0, size - MiB) for _ in range(4)]

written = 0
ops = {"write": 0, "fua": 0, "zero": 0, "read": 0}
for n in range(1500):
    count = random_size()
    off = random_offset(count)
    if rng.random() < 0.2:
        off = min(size - count, rng.choice(hot) + rng.randrange(0, 4096))
    c = rng.random()
    if c < 0.25:
        ops["read"] += 1
        check_range("read #%d" % n, h.pread(count, off), off)
    elif c < 0.30 and zero:
        ops["zero"] += 1
        h.zero(count, off)
        model[off:off + count] = bytes(count)
    else:
        buf = rng.randbytes(count)
        model[off:off + count] = buf
        written += count
        if c < 0.33 and fua:
            ops["fua"] += 1
            h.pwrite(buf, off, nbd.CMD_FLAG_FUA)
            check_file("image after FUA write #%d" % n, off, count)
        else:
            ops["write"] += 1
            h.pwrite(buf, off)
print("ops:", ops, "bytes written: %d" % written)

# Everything reads back through the cache ...
for off in range(0, size, MiB):
    check_range("final read", h.pread(MiB, off), off)

# ... and after a flush the image file holds it all.
h.flush()
for off in range(0, size, MiB):
    check_file("image after flush", off, MiB)
with open(os.environ["MODEL"], "wb") as f:
    f.write(model)
print("ok")
EOF

# Nothing stale lands after the flush or during shutdown ...
stop_nbdkit "$pid"
cmp "$img" "$model"

# ... and a cold cache reads the same.
start_nbdkit -P "$pid" -U "$sock" "$PLUGIN" file="$img" \
             cache-size=4M page-size=64K
nbdsh_py -u "$(nbd_uri "$sock")" -c - <<'EOF'
import os
with open(os.environ["MODEL"], "rb") as f:
    want = f.read()
MiB = 1024 * 1024
for off in range(0, len(want), MiB):
    assert h.pread(MiB, off) == want[off:off + MiB], off
print("ok")
EOF
stop_nbdkit "$pid"
