#!/usr/bin/env bash
# Fencing with the image's exclusive lock (docs/ceph-tests.md):
#  - after SIGKILL of nbdkit A, nbdkit B started on the same image at
#    once comes up (once A's watch has expired, which the test cluster
#    shortens to 5 s), holds the lock, has blocklisted A, and reads
#    what A had flushed;
#  - lock lost: while B holds dirty data, another client breaks B's
#    lock (blocklisting B, as `rbd lock rm` does) and writes a marker
#    as the new owner.  B's flush fails (EIO), again and again; nothing
#    of B's reaches the image, neither then nor at B's stop (the
#    marker and the old data are intact, checked by a fresh librbd
#    client); B logs the loss once.

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
fail () { echo "FAIL: $*" >&2; exit 1; }
MiB=$((1024 * 1024))

ceph_start_cluster
echo "cluster up in $ceph_start_seconds s"
head -c 16M /dev/urandom > "$tmpdir/init.bin"
timeout 60 rbd import --no-progress --image-feature layering,exclusive-lock \
  "$tmpdir/init.bin" rbd/disk
cp "$tmpdir/init.bin" "$tmpdir/model.bin"

# ---- A: write, flush, SIGKILL ---------------------------------------------
start_nbdkit -P "$pid" -U "$sock" "$PLUGIN" rbd=rbd/disk
a_pid=$nbdkit_pid
a_owner=$(timeout 60 "$check" owners rbd/disk)
[ -n "$a_owner" ] || fail "A holds no lock"
nbdsh_py -u "$(nbd_uri "$sock")" -c "h.pwrite(b'\\xa1' * $MiB, 0); h.flush()"
/usr/bin/python3 - "$tmpdir/model.bin" "$MiB" <<'EOF'
import sys
with open(sys.argv[1], "r+b") as f:
    f.write(b"\xa1" * int(sys.argv[2]))
EOF
kill -KILL "$a_pid"
reap_killed "$a_pid"

# ---- B takes over once A's watch has expired -------------------------------
start_nbdkit -P "$pid" -U "$sock" "$PLUGIN" rbd=rbd/disk \
             cache-size=64M dirty-expire-ms=600000 dirty-background-ratio=50 dirty-ratio=90 \
             2>"$tmpdir/b.err" || { cat "$tmpdir/b.err" >&2; exit 1; }
b_owner=$(timeout 60 "$check" owners rbd/disk)
[ -n "$b_owner" ] && [ "$b_owner" != "$a_owner" ] ||
  fail "B does not hold the lock (owner '$b_owner', A was '$a_owner')"
timeout 60 ceph osd blocklist ls 2>/dev/null | grep -qF "$a_owner" ||
  fail "A ($a_owner) was not blocklisted when B broke its lock"
timeout 120 "$check" cmp rbd/disk "$tmpdir/model.bin" ||
  fail "the image is not what A flushed"

# ---- B loses the lock with dirty data ---------------------------------------
export MiB
nbdsh_py -u "$(nbd_uri "$sock")" -c - <<'EOF'
import errno, os, subprocess
MiB = int(os.environ["MiB"])
h.pwrite(b"\xb2" * (2 * MiB), 2 * MiB)      # region S: dirty, B only
h.pwrite(b"\xb3" * 65536, 8 * MiB)          # region R: the new owner writes it too
breaker = subprocess.run([os.environ["SRCDIR"] + "/tests/ceph/rbd-check.py",
                          "break-and-write", "rbd/disk", str(8 * MiB),
                          "65536", "c4"],
                         check=True, timeout=60, capture_output=True, text=True)
print("broke the lock of", breaker.stdout.strip())
for i in range(3):
    try:
        h.flush()
    except nbd.Error as e:
        assert e.errnum == errno.EIO, e
        print("flush %d failed as it should: %s" % (i, e))
    else:
        raise AssertionError("flush %d succeeded after the lock was lost" % i)
EOF
/usr/bin/python3 - "$tmpdir/model.bin" "$MiB" <<'EOF'
import sys
MiB = int(sys.argv[2])
with open(sys.argv[1], "r+b") as f:
    f.seek(8 * MiB)
    f.write(b"\xc4" * 65536)
EOF
timeout 120 "$check" cmp rbd/disk "$tmpdir/model.bin" ||
  fail "B wrote behind the new owner (before its stop)"

status=0
stop_nbdkit "$pid" 120 || status=$?
[ "$status" -ne 124 ] || fail "B hung at its stop"
timeout 120 "$check" cmp rbd/disk "$tmpdir/model.bin" ||
  fail "B wrote behind the new owner (at its stop)"

cat "$tmpdir/b.err"
n=$(grep -c "rbd=rbd/disk: this client no longer holds the image's exclusive lock" "$tmpdir/b.err" || :)
[ "$n" -eq 1 ] || fail "B logged the loss of the lock $n times, not once"
echo "ok"
