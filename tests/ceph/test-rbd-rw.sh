#!/usr/bin/env bash
# The RBD backend (rbd=POOL/IMAGE) end to end, against a single-node
# Ceph cluster of its own (docs/ceph-tests.md):
#  - random reads, writes and zeroes of 1 byte to 1 MiB at any alignment
#    over a 32 MiB image of random data through a 2 MiB cache, checked
#    against a Python model: every read; the image, read by a fresh
#    librbd client (cache off), after a FUA write (that range) and after
#    h.flush() (all of it);
#  - handoff: writes left dirty, then SIGTERM: nbdkit drains them and
#    releases the image's exclusive lock (nobody holds it after); the
#    image holds the model; a second nbdkit started on the same image
#    takes the lock and reads the model;
#  - block status: on a fresh sparse image, a flushed write is data and
#    the untouched rest is a hole;
#  - growth: the image grown with rbd resize while served, a new
#    connection sees the new size and writes at its end.
# SEED=N reproduces a run (the seed is printed).

source "$(dirname "$0")/../functions.sh"
source "$(dirname "$0")/ceph-functions.sh"
set -euo pipefail

ceph_require
requires_plugin
requires_nbdsh
make_tmpdir

check=$SRCDIR/tests/ceph/rbd-check.py
sock=$tmpdir/nbd.sock
pid=$tmpdir/nbdkit.pid
model=$tmpdir/model.bin
fail () { echo "FAIL: $*" >&2; exit 1; }

ceph_start_cluster
echo "cluster up in $ceph_start_seconds s"

head -c 32M /dev/urandom > "$tmpdir/init.bin"
timeout 60 rbd import --no-progress --image-feature layering,exclusive-lock \
  "$tmpdir/init.bin" rbd/disk

# ---- random I/O, checked through librbd ---------------------------------
start_nbdkit -P "$pid" -U "$sock" "$PLUGIN" rbd=rbd/disk \
             cache-size=2M page-size=64K sector-size=512
owner=$(timeout 60 "$check" owners rbd/disk)
[ -n "$owner" ] || fail "nbdkit runs but nobody holds the exclusive lock"

export INIT=$tmpdir/init.bin MODEL=$model SEED=${SEED:-$RANDOM$RANDOM}
echo "SEED=$SEED"
nbdsh_py -u "$(nbd_uri "$sock")" -c - <<'EOF'
import os, random
import rados, rbd

rng = random.Random(int(os.environ["SEED"]))
MiB = 1024 * 1024
with open(os.environ["INIT"], "rb") as f:
    model = bytearray(f.read())
size = len(model)
assert h.get_size() == size, (h.get_size(), size)
assert h.can_fua() and h.can_zero() and h.can_flush()

# A second librbd client, cache off: what the cluster holds.
cluster = rados.Rados(conffile=os.environ["CEPH_CONF"],
                      conf={"rbd_cache": "false"})
cluster.connect(timeout=30)
ioctx = cluster.open_ioctx("rbd")
image = rbd.Image(ioctx, "disk", read_only=True)

def check_range(what, got, off):
    want = model[off:off + len(got)]
    if got != want:
        i = next(i for i in range(len(got)) if got[i] != want[i])
        raise AssertionError("%s: mismatch at byte %d: got %d, want %d"
                             % (what, off + i, got[i], want[i]))

def check_image(what, off, count):
    check_range(what, image.read(off, count), off)

def random_size():
    c = rng.random()
    if c < 0.35:
        return rng.randint(1, 4096)
    if c < 0.65:
        return rng.randint(4097, 64 * 1024)
    if c < 0.90:
        return rng.randint(64 * 1024 + 1, 256 * 1024)
    return rng.randint(256 * 1024 + 1, MiB)

def random_offset(count):
    c = rng.random()
    if c < 0.3:
        return rng.randrange(0, (size - count) // 512 + 1) * 512
    if c < 0.5:
        b = rng.randrange(1, size // 65536) * 65536
        return max(0, min(size - count, b - rng.randint(1, count)))
    return rng.randrange(0, size - count + 1)

def run(n_ops, tag):
    ops = {"write": 0, "fua": 0, "zero": 0, "read": 0}
    for n in range(n_ops):
        count = random_size()
        off = random_offset(count)
        c = rng.random()
        if c < 0.25:
            ops["read"] += 1
            check_range("%s read #%d" % (tag, n), h.pread(count, off), off)
        elif c < 0.32:
            ops["zero"] += 1
            h.zero(count, off, 0 if rng.random() < 0.5 else nbd.CMD_FLAG_NO_HOLE)
            model[off:off + count] = bytes(count)
        else:
            buf = rng.randbytes(count)
            model[off:off + count] = buf
            if c < 0.36:
                ops["fua"] += 1
                h.pwrite(buf, off, nbd.CMD_FLAG_FUA)
                check_image("image after FUA write #%d" % n, off, count)
            else:
                ops["write"] += 1
                h.pwrite(buf, off)
    print(tag, "ops:", ops)

run(600, "phase 1")
for off in range(0, size, MiB):
    check_range("final read", h.pread(MiB, off), off)
h.flush()
for off in range(0, size, MiB):
    check_image("image after flush", off, MiB)

# Left dirty for the stop to drain (the cache holds 2 MiB, so some of
# it is written back before; what is not must be written at the stop).
run(100, "phase 2 (no flush)")
with open(os.environ["MODEL"], "wb") as f:
    f.write(model)
image.close()
ioctx.close()
cluster.shutdown()
print("ok")
EOF

# ---- handoff: stop (drain, release the lock), start another ------------
stop_nbdkit_ok "$pid" 120
left=$(timeout 60 "$check" owners rbd/disk)
[ -z "$left" ] || fail "after the stop the exclusive lock is still held by $left"
timeout 120 "$check" cmp rbd/disk "$model" || fail "the image after the stop is not the model"

start_nbdkit -P "$pid" -U "$sock" "$PLUGIN" rbd=rbd/disk cache-size=2M
owner2=$(timeout 60 "$check" owners rbd/disk)
[ -n "$owner2" ] && [ "$owner2" != "$owner" ] ||
  fail "the second nbdkit does not hold the lock (owner: '$owner2', first: '$owner')"
nbdsh_py -u "$(nbd_uri "$sock")" -c - <<'EOF'
import os
with open(os.environ["MODEL"], "rb") as f:
    want = f.read()
MiB = 1024 * 1024
for off in range(0, len(want), MiB):
    assert h.pread(MiB, off) == want[off:off + MiB], off
print("second instance reads the model")
EOF
stop_nbdkit_ok "$pid" 120

# ---- block status --------------------------------------------------------
timeout 60 rbd create --size 16M --image-feature layering,exclusive-lock rbd/sparse
start_nbdkit -P "$pid" -U "$sock" "$PLUGIN" rbd=rbd/sparse cache-size=2M
nbdsh_py --base-allocation -u "$(nbd_uri "$sock")" -c - <<'EOF'
MiB = 1024 * 1024
h.pwrite(b"\x5a" * (64 * 1024), 5 * MiB)
h.flush()
ext = []
def cb(meta, off, entries, err):
    if meta == nbd.CONTEXT_BASE_ALLOCATION:
        pos = off
        for i in range(0, len(entries), 2):
            ext.append((pos, entries[i], entries[i + 1]))
            pos += entries[i]
pos = 0
while pos < 16 * MiB:
    n = len(ext)
    h.block_status(16 * MiB - pos, pos, cb)
    pos = ext[-1][0] + ext[-1][1]
def state(off):
    for s, l, f in ext:
        if s <= off < s + l:
            return f
    raise AssertionError("offset %d not covered: %s" % (off, ext))
print(ext)
assert state(5 * MiB) & nbd.STATE_HOLE == 0, "written data reported as a hole"
assert state(5 * MiB + 65535) & nbd.STATE_HOLE == 0
assert state(12 * MiB) & nbd.STATE_HOLE, "an untouched object is not a hole"
assert state(0) & nbd.STATE_HOLE
print("block status ok")
EOF
# ---- growth: rbd resize while served, seen by a new connection ----------
timeout 60 rbd resize --no-progress --size 24M rbd/sparse
nbdsh_py -u "$(nbd_uri "$sock")" -c - <<'EOF'
MiB = 1024 * 1024
assert h.get_size() == 24 * MiB, h.get_size()
h.pwrite(b"\x6b" * 4096, 24 * MiB - 4096)
h.flush()
assert h.pread(4096, 24 * MiB - 4096) == b"\x6b" * 4096
print("growth ok")
EOF
stop_nbdkit_ok "$pid" 120
echo "ok"
