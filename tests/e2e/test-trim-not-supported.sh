#!/usr/bin/env bash
# A TRIM that the backend cannot do changes nothing (docs/guarantees.md,
# "TRIM and ZERO"): the cache keeps its data of the range, dirty sectors
# included, so the range never reads as data older than the trim.  The
# backend is a remote (uri=) that does not advertise trim: nbdkit's eval
# plugin over a file (start_file_remote).  Data written through subpage and not yet flushed
# is trimmed; reads must still return it, and after a flush the remote
# must hold it (the remote's own, older bytes must not come back).

source "$(dirname "$0")/../functions.sh"
set -euo pipefail

requires_plugin
requires_nbdsh
requires dd
make_tmpdir

bimg=$tmpdir/remote.img
bsock=$tmpdir/backend.sock
bpid=$tmpdir/backend.pid
sock=$tmpdir/nbd.sock
pid=$tmpdir/nbdkit.pid
export BIMG=$bimg URI=$(nbd_uri "$sock")

start_file_remote "$bpid" "$bsock" "$bimg" -- \
    can_write="exit 0" can_flush="exit 0" flush="sync" can_trim="exit 3"
start_nbdkit -P "$pid" -U "$sock" "$PLUGIN" uri="$(nbd_uri "$bsock")" \
             cache-size=16M page-size=64K dirty-expire-ms=3600000 \
             dirty-background-ratio=50 dirty-ratio=60

nbdsh_py -u "$URI" -c - <<'EOF'
import os

KiB = 1024
with open(os.environ["BIMG"], "rb") as f:
    old = f.read()
new = b"\xab" * (192 * KiB)
# Dirty data over whole pages and partial ones (far under the background
# threshold, so none of it is written back yet), then a trim of all of
# it and more (sectors the cache holds clean, and sectors it does not
# hold).
h.pwrite(new, 100 * KiB)
h.pread(64 * KiB, 512 * KiB)            # clean in the cache
assert h.can_trim()
h.trim(1024 * KiB, 0)
got = h.pread(192 * KiB, 100 * KiB)
assert got == new, "trimmed dirty data read back as older data"
assert h.pread(64 * KiB, 512 * KiB) == old[512 * KiB:576 * KiB]
h.flush()
with open(os.environ["BIMG"], "rb") as f:
    remote = f.read()
assert remote[100 * KiB:292 * KiB] == new, "the remote lost the data"
assert remote[:100 * KiB] == old[:100 * KiB]
h.shutdown()
print("ok: a trim the remote cannot do kept the cache's data")
EOF
stop_nbdkit_ok "$pid" 60
