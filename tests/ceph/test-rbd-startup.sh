#!/usr/bin/env bash
# The RBD backend refuses to start, with a message naming the image
# and the cause, and never hangs (docs/ceph-tests.md):
#  - a missing pool, a missing image;
#  - a wrong keyring (cephx is on), an unknown client id;
#  - an image without the exclusive-lock feature (the message says how
#    to enable it), which rbd-exclusive=false then serves;
#  - a second nbdkit on an image a first one serves (the message names
#    the owner of the lock, as librbd lists it);
#  - a cluster that does not answer (ceph-conf= a conf whose monitor
#    port is closed and which sets no timeout): fails once the plugin's
#    bound on connecting (30 s) has passed, not librados's 300 s;
#  - CEPH_CONF is what the plugin reads when ceph-conf= is not given;
#    rbd= with file=, and ceph-id= without rbd=, are refused.

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
err=$tmpdir/err.txt
fail () { echo "FAIL: $*" >&2; exit 1; }

# refused PATTERN ARGS...: nbdkit with the plugin and ARGS exits non-zero
# (not killed by the timeout) and its error line matches PATTERN.
refused ()
{
  local pat=$1 status=0
  shift
  nbdkit_cmd -U - "$PLUGIN" "$@" --run true 2>"$err" || status=$?
  echo "--- $* -> status $status"
  cat "$err"
  [ "$status" -ne 0 ] || fail "nbdkit started with $*"
  [ "$status" -ne 124 ] || fail "nbdkit hung with $*"
  grep '^nbdkit: error: ' "$err" | grep -qE -- "$pat" ||
    fail "no error matching '$pat' for $*"
}

# Without the cluster: parameter checks.
refused 'give exactly one of file=, uri= and rbd=' rbd=rbd/x file=/dev/null
refused 'only apply to rbd=' file=/dev/null ceph-id=admin
refused 'rbd=nopool: must be POOL/IMAGE' rbd=nopool

ceph_start_cluster
echo "cluster up in $ceph_start_seconds s"
timeout 60 rbd create --size 16M --image-feature layering,exclusive-lock rbd/disk
timeout 60 rbd create --size 16M --image-feature layering rbd/nolock

refused 'rbd=nopool/disk: pool nopool does not exist' rbd=nopool/disk
refused 'rbd=rbd/nothere: image nothere does not exist in pool rbd' rbd=rbd/nothere

ceph-authtool --create-keyring "$tmpdir/bad.keyring" --gen-key -n client.admin >/dev/null
refused 'rbd=rbd/disk: cannot connect to the cluster .*authentication failed' \
  rbd=rbd/disk ceph-keyring="$tmpdir/bad.keyring"
refused 'rbd=rbd/disk: cannot connect to the cluster .*ceph-id=nobody' \
  rbd=rbd/disk ceph-id=nobody

refused "rbd=rbd/nolock: the image does not have the exclusive-lock feature.*rbd feature enable rbd/nolock exclusive-lock.*rbd-exclusive=false" \
  rbd=rbd/nolock
nbdkit_cmd -U - "$PLUGIN" rbd=rbd/nolock rbd-exclusive=false \
  --run 'PATH=/usr/bin:$PATH nbdsh -u "$uri" -c "h.pwrite(b\"x\" * 512, 0); h.flush()"' ||
  fail "rbd-exclusive=false does not serve an image without exclusive-lock"

# CEPH_CONF is read when ceph-conf= is not given: pointing it elsewhere
# makes the plugin fail to read it.
CEPH_CONF=$tmpdir/none.conf refused "ceph-conf=$tmpdir/none.conf: cannot read it" \
  rbd=rbd/disk

# A second instance while the first one serves.
start_nbdkit -P "$pid" -U "$sock" "$PLUGIN" rbd=rbd/disk
owner=$(timeout 60 "$check" owners rbd/disk)
[ -n "$owner" ] || fail "the first nbdkit holds no lock"
refused "rbd=rbd/disk: the image's exclusive lock is held by another live client \\($owner\\)" \
  rbd=rbd/disk
# ... and the first still serves and still holds the lock.
nbdsh_py -u "$(nbd_uri "$sock")" -c 'h.pwrite(b"y" * 512, 0); h.flush()'
[ "$(timeout 60 "$check" owners rbd/disk)" = "$owner" ] ||
  fail "the first nbdkit lost its lock to the refused second one"
stop_nbdkit_ok "$pid" 120

# A cluster that does not answer: its monitor's port is closed.
port=$(/usr/bin/python3 -c '
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])')
cat > "$tmpdir/dead.conf" <<EOF
[global]
mon_host = v2:127.0.0.1:$port
auth_client_required = cephx
keyring = $ceph_dir/keyring
EOF
refused "rbd=rbd/disk: cannot connect to the cluster .*no monitor answered within 30 s" \
  rbd=rbd/disk ceph-conf="$tmpdir/dead.conf"
echo "ok"
