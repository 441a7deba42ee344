#!/usr/bin/env bash
# Write-back errors keep data and fail the flush (DESIGN.md invariant
# 7), through the remote NBD backend: subpage uri= in front of
# `nbdkit --filter=error memory`, whose writes and zeroes fail with EIO
# while a file exists (error-pwrite-file=; nbdkit 1.32's error filter
# cannot fail flushes themselves, so the fault is on write-back).
#
# 1. No background write-back (dirty data far below the thresholds,
#    dirty-expire-ms an hour).  With the fault on: a flush fails with
#    EIO, and so does the next one (the fault lasts); the remote does
#    not hold the data, reads through subpage do; more writes are
#    accepted.  With the fault off: the next flush succeeds (each error
#    was reported to the flush that saw it), and the remote holds
#    exactly what was written.
# 2. Background write-back fails (dirty-expire-ms=0) while no flush
#    runs.  With the fault off again, the first flush still fails with
#    EIO (the error is reported once, to the next flush, even though
#    the data may have been written meanwhile: see the man page), the
#    one after succeeds, and the remote holds exactly what was written.
# A flush that wrongly succeeded, or data dropped after a failed
# write-back, fails the test.

source "$(dirname "$0")/../functions.sh"
set -euo pipefail

requires_plugin
requires_nbdsh
make_tmpdir

bsock=$tmpdir/backend.sock
bpid=$tmpdir/backend.pid
blog=$tmpdir/backend.log
sock=$tmpdir/nbd.sock
pid=$tmpdir/nbdkit.pid
fault=$tmpdir/fault

# The backend's messages go to $blog: phase 2 counts injected errors.
start_nbdkit -P "$bpid" -U "$bsock" --filter=error memory 32M \
             error-pwrite=EIO error-pwrite-rate=100% \
             error-pwrite-file="$fault" \
             error-zero=EIO error-zero-rate=100% error-zero-file="$fault" \
             2>"$blog"
export BURI=$(nbd_uri "$bsock") URI=$(nbd_uri "$sock")
export FAULT=$fault BLOG=$blog COMMON=$tmpdir/common.py

nbdsh_py -u "$BURI" -c '
import random
h.pwrite(random.Random(7).randbytes(32 << 20), 0)
h.flush()
'

# The Python both phases share.
cat > "$COMMON" <<'PY'
import os, random, time

KiB, MiB = 1024, 1024 * 1024
h, r = nbd.NBD(), nbd.NBD()
h.connect_uri(os.environ["URI"])
r.connect_uri(os.environ["BURI"])       # the remote, directly
size = r.get_size()
model = bytearray(r.pread(size, 0))
fault = os.environ["FAULT"]
rng = random.Random(int(os.environ["PHASE"]))

def write(off, count):
    data = rng.randbytes(count)
    h.pwrite(data, off)
    model[off:off + count] = data

def flush_fails(what):
    try:
        h.flush()
    except nbd.Error as e:
        assert e.errno == "EIO", "%s: flush failed with %s, not EIO: %s" \
            % (what, e.errno, e.string)
        print("ok: %s: flush failed: %s" % (what, e.string))
    else:
        raise AssertionError("%s: flush succeeded" % what)

def cache_holds_model(what):
    assert h.pread(size, 0) == model, "%s: data lost from the cache" % what

def remote_holds_model(what):
    got = r.pread(size, 0)
    if got != model:
        bad = next(i for i in range(size) if got[i] != model[i])
        raise AssertionError("%s: remote differs from what was written at %d"
                             % (what, bad))

def injected():
    with open(os.environ["BLOG"]) as f:
        return f.read().count("injecting EIO error")

def some_writes():
    # Unaligned, sub-sector and multi-page writes.
    for off, count in [(0, 64 * KiB), (1 * MiB + 100, 300),
                       (3 * MiB - 7, 70 * KiB), (9 * MiB, 1 * MiB + 13),
                       (size - 1, 1)]:
        write(off, count)
    for _ in range(50):
        write(rng.randrange(0, size - 20 * KiB), rng.randint(1, 20 * KiB))
PY

# ---- 1. faults seen by flushes ------------------------------------------
# No background write-back here (dirty memory counts whole pages; keep
# the scattered writes well below the threshold): only flushes write.
start_nbdkit -P "$pid" -U "$sock" "$PLUGIN" uri="$BURI" \
             cache-size=64M dirty-expire-ms=3600000 \
             dirty-background-ratio=90 dirty-ratio=95
PHASE=1 timeout 120 /usr/bin/env PATH=/usr/bin:$PATH nbdsh -n -c - <<'PY'
exec(open(os.environ["COMMON"]).read())

some_writes()
open(fault, "w").close()        # writes to the remote now fail with EIO
flush_fails("fault on")
cache_holds_model("after the failed flush")
assert r.pread(64 * KiB, 0) != model[:64 * KiB], \
    "the remote holds data whose write-back failed"

# More writes are accepted while the fault lasts, and the next flush
# fails again: the data it covers is still not written.
write(20 * MiB + 5, 100 * KiB)
flush_fails("fault still on")
cache_holds_model("after the second failed flush")

os.unlink(fault)                # the remote works again
h.flush()
print("ok: the first flush after the fault succeeded")
remote_holds_model("phase 1")
cache_holds_model("after the good flush")
h.shutdown()
r.shutdown()
print("ok: the remote holds exactly what was written")
PY
stop_nbdkit "$pid"

# ---- 2. faults seen by background write-back ----------------------------
start_nbdkit -P "$pid" -U "$sock" "$PLUGIN" uri="$BURI" \
             cache-size=64M dirty-expire-ms=0 dirty-writeback-ms=50
PHASE=2 timeout 120 /usr/bin/env PATH=/usr/bin:$PATH nbdsh -n -c - <<'PY'
exec(open(os.environ["COMMON"]).read())

open(fault, "w").close()
some_writes()
# Wait until background write-back has failed after the last write (the
# remote injected an error since), then a little for the failure to be
# recorded.  No flush has seen it yet.
n0 = injected()
deadline = time.monotonic() + 30
while injected() == n0:
    assert time.monotonic() < deadline, "no write-back attempt in 30 s"
    time.sleep(0.05)
time.sleep(0.3)
cache_holds_model("while background write-back fails")
assert r.pread(64 * KiB, 0) != model[:64 * KiB], \
    "the remote holds data whose write-back failed"

os.unlink(fault)
flush_fails("first flush after a background write-back error")
h.flush()
print("ok: the flush after it succeeded")
remote_holds_model("phase 2")
cache_holds_model("after the good flush")
h.shutdown()
r.shutdown()
print("ok: the remote holds exactly what was written")
PY
stop_nbdkit "$pid"
stop_nbdkit "$bpid"
