#!/usr/bin/env bash
# The OSD dies with dirty data in the cache (issue 16, faults against the
# real cluster), rbd= with backend-timeout=3:
#  - with the OSD killed (SIGKILL), a flush fails with EIO, and returns
#    (the test fails if it is still waiting after 60 s: behaviour, not a
#    benchmark); so does a read of data that is not cached; the dirty
#    data still reads back through subpage; the timeout is logged once,
#    however many requests timed out;
#  - the OSD is started again: a flush succeeds (retried for at most
#    60 s while the OSD peers), and a fresh librbd client reads every
#    byte that was written, the ones acknowledged before the outage
#    and the ones written during it;
#  - nbdkit stops cleanly.

source "$(dirname "$0")/../functions.sh"
source "$(dirname "$0")/ceph-functions.sh"
set -euo pipefail

ceph_require
requires_plugin
requires_nbdsh
make_tmpdir

check=$SRCDIR/tests/ceph/rbd-check.py
cluster=$SRCDIR/tests/ceph/cluster.sh
sock=$tmpdir/nbd.sock
pid=$tmpdir/nbdkit.pid
log=$tmpdir/nbdkit.log
fail () { echo "FAIL: $*" >&2; exit 1; }

ceph_start_cluster
head -c 16M /dev/urandom > "$tmpdir/init.bin"
timeout 60 rbd import --no-progress --image-feature layering,exclusive-lock \
  "$tmpdir/init.bin" rbd/disk

start_nbdkit -P "$pid" -U "$sock" "$PLUGIN" rbd=rbd/disk backend-timeout=3 \
             cache-size=64M dirty-expire-ms=600000 dirty-background-ratio=50 \
             dirty-ratio=90 2>"$log" || { cat "$log" >&2; exit 1; }

export TMPDIR_T=$tmpdir CLUSTER=$cluster CEPH_DIR=$ceph_dir
cleanup_fn cat "$log"
timeout 400 /usr/bin/python3 - "$(nbd_uri "$sock")" <<'EOF'
import os, subprocess, sys, time
import nbd

MiB = 1 << 20
h = nbd.NBD()
h.connect_uri(sys.argv[1])
model = bytearray(open(os.environ["TMPDIR_T"] + "/init.bin", "rb").read())

def write(data, off):
    h.pwrite(data, off)
    model[off:off + len(data)] = data

write(b"\x11" * MiB, 0)
h.flush()                                   # on the OSDs
write(b"\x22" * (2 * MiB), 4 * MiB)         # dirty in the cache only

cl, cd = os.environ["CLUSTER"], os.environ["CEPH_DIR"]
subprocess.run([cl, "kill-osd", cd], check=True, timeout=60)

def fails(what, f, *args):
    t0 = time.monotonic()
    try:
        f(*args)
    except nbd.Error as e:
        assert e.errno == "EIO", "%s: %s" % (what, e)
        print("%s failed with EIO after %.1f s" % (what, time.monotonic() - t0))
        return
    raise AssertionError(what + " succeeded with the OSD down")

fails("flush", h.flush)
write(b"\x33" * 65536, 8 * MiB)             # accepted into the cache
fails("flush", h.flush)
fails("read of uncached data", h.pread, 65536, 12 * MiB)
assert h.pread(2 * MiB, 4 * MiB) == b"\x22" * (2 * MiB), "dirty data lost"

subprocess.run([cl, "start-osd", cd], check=True, timeout=120)
deadline = time.monotonic() + 60
while True:
    try:
        h.flush()
        break
    except nbd.Error as e:
        if time.monotonic() > deadline:
            raise
        print("flush after the restart failed (%s); again" % e)
        time.sleep(1)
print("flush ok after the OSD came back")
h.shutdown()
open(os.environ["TMPDIR_T"] + "/model.bin", "wb").write(model)
EOF
timeout 120 "$check" cmp rbd/disk "$tmpdir/model.bin" ||
  fail "the image is not what was written"
stop_nbdkit_ok "$pid" 60
cat "$log"
n=$(grep -c "got no answer within backend-timeout" "$log" || true)
[ "$n" -eq 1 ] || fail "the timeout was logged $n times, not once"
echo "$0: ok"
