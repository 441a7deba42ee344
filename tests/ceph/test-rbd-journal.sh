#!/usr/bin/env bash
# A journal belongs to its image (rbd=, journal=; docs/ceph-tests.md):
# the image metadata key subpage.journal names the journal that may
# hold unwritten data of the image, and a start that would write the
# image behind that journal's back is refused.
#  1. nbdkit with journal J1 writes and flushes, and is killed (SIGKILL,
#     by PID): the key names J1's id.  A start without journal=, and one
#     with a new journal J2, are refused, naming J1 and the way out (J2's
#     file, created for the refused start, is removed again); a start
#     with J1 replays it and serves the data; its clean stop removes the
#     key.
#  2. Handoff: A (journal J1) writes, flushes and stops cleanly; B
#     (journal J2, another path) starts, serves A's data, and the key
#     names J2 until B stops.
#  3. A journal given up for lost: after a kill the key names J2, and
#     `rbd image-meta remove` lets a start without journal= proceed.
#  4. rbd-exclusive=false (an image without exclusive-lock) still sets
#     and removes the key.

source "$(dirname "$0")/../functions.sh"
source "$(dirname "$0")/ceph-functions.sh"
set -euo pipefail

ceph_require
requires_plugin
requires_nbdsh
: "${SUBPAGE_JOURNAL:=$BUILDDIR/tools/subpage-journal}"
if [ ! -x "$SUBPAGE_JOURNAL" ]; then
  echo "$0: subpage-journal not found: $SUBPAGE_JOURNAL (build it first)" >&2
  exit 1
fi
make_tmpdir

check=$SRCDIR/tests/ceph/rbd-check.py
sock=$tmpdir/nbd.sock
pid=$tmpdir/nbdkit.pid
err=$tmpdir/err.txt
j1=$tmpdir/j1.journal
j2=$tmpdir/other/j2.journal
mkdir "$tmpdir/other"
fail () { echo "FAIL: $*" >&2; exit 1; }

# The key's value on IMAGE ("" when absent).
meta () { timeout 60 rbd image-meta get "$1" subpage.journal 2>/dev/null || :; }
# A journal's id, as subpage-journal check prints it.
jid () { "$SUBPAGE_JOURNAL" check "$1" | awk '$1 == "id:" { print $2 }'; }
# write BYTE OFF: 64 KiB of BYTE at OFF through the server, flushed.
write ()
{
  nbdsh_py -u "$(nbd_uri "$sock")" \
    -c "h.pwrite(bytes([$1]) * 65536, $2); h.flush()"
}
# served BYTE OFF: the server reads 64 KiB of BYTE at OFF.
served ()
{
  nbdsh_py -u "$(nbd_uri "$sock")" \
    -c "assert h.pread(65536, $2) == bytes([$1]) * 65536, 'not $1 at $2'"
}
# on_image IMAGE BYTE OFF: a fresh librbd client reads 64 KiB of BYTE.
on_image ()
{
  head -c 65536 /dev/zero | tr '\0' "\\$(printf '%03o' "$2")" > "$tmpdir/expect"
  timeout 60 "$check" dump "$1" "$tmpdir/dump"
  dd if="$tmpdir/dump" of="$tmpdir/got" bs=65536 skip=$(( $3 / 65536 )) \
    count=1 status=none
  cmp -s "$tmpdir/got" "$tmpdir/expect" || fail "$1 does not hold $2 at $3"
}
# refused PATTERN ARGS...: nbdkit exits non-zero and says PATTERN.
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

ceph_start_cluster
echo "cluster up in $ceph_start_seconds s"
t0=$(date +%s%N)
timeout 60 rbd create --size 16M --image-feature layering,exclusive-lock rbd/disk
timeout 60 rbd create --size 16M --image-feature layering rbd/nolock

echo "== 1. a killed instance's journal claims the image"
start_nbdkit -P "$pid" -U "$sock" "$PLUGIN" rbd=rbd/disk journal="$j1" \
  journal-size=8M
id1=$(jid "$j1")
[ "${#id1}" -eq 32 ] || fail "no journal id in $j1 ('$id1')"
# A request is served after .after_fork, which set the key.
write 0xa1 0
[ "$(meta rbd/disk)" = "$id1" ] || fail "key '$(meta rbd/disk)', expected J1 $id1"
kill -KILL "$nbdkit_pid"
reap_killed "$nbdkit_pid"
[ "$(meta rbd/disk)" = "$id1" ] || fail "key '$(meta rbd/disk)' after the kill"

refused "rbd=rbd/disk: the image is claimed by journal $id1 \(image metadata subpage.journal\) and this instance has no journal=.*'rbd image-meta remove rbd/disk subpage.journal'" \
  rbd=rbd/disk
refused "rbd=rbd/disk: the image is claimed by journal $id1 \(image metadata subpage.journal\), not by this instance's journal \(id [0-9a-f]{32}\).*Start subpage with that journal.*'rbd image-meta remove rbd/disk subpage.journal'" \
  rbd=rbd/disk journal="$j2" journal-size=8M
[ ! -e "$j2" ] || fail "the refused start left $j2 behind"
[ "$(meta rbd/disk)" = "$id1" ] || fail "a refused start changed the key"

start_nbdkit -P "$pid" -U "$sock" "$PLUGIN" rbd=rbd/disk journal="$j1"
served 0xa1 0
[ "$(meta rbd/disk)" = "$id1" ] || fail "key '$(meta rbd/disk)' while J1 serves"
stop_nbdkit_ok "$pid" 120
[ -z "$(meta rbd/disk)" ] || fail "a clean stop left the key ('$(meta rbd/disk)')"
on_image rbd/disk 0xa1 0

echo "== 2. handoff: A (J1) stops cleanly, B (J2) takes the image"
start_nbdkit -P "$pid" -U "$sock" "$PLUGIN" rbd=rbd/disk journal="$j1"
write 0xb2 65536
stop_nbdkit_ok "$pid" 120
[ -z "$(meta rbd/disk)" ] || fail "A's clean stop left the key"
start_nbdkit -P "$pid" -U "$sock" "$PLUGIN" rbd=rbd/disk journal="$j2" \
  journal-size=8M
id2=$(jid "$j2")
[ "$id2" != "$id1" ] || fail "J1 and J2 have the same id"
served 0xa1 0
served 0xb2 65536
[ "$(meta rbd/disk)" = "$id2" ] || fail "key '$(meta rbd/disk)', expected J2 $id2"

echo "== 3. a journal given up for lost: rbd image-meta remove"
write 0xc3 131072
kill -KILL "$nbdkit_pid"
reap_killed "$nbdkit_pid"
[ "$(meta rbd/disk)" = "$id2" ] || fail "key '$(meta rbd/disk)' after killing B"
refused "the image is claimed by journal $id2 .*has no journal=" rbd=rbd/disk
timeout 60 rbd image-meta remove rbd/disk subpage.journal
start_nbdkit -P "$pid" -U "$sock" "$PLUGIN" rbd=rbd/disk
write 0xd4 196608
[ -z "$(meta rbd/disk)" ] || fail "an instance without journal= set the key"
stop_nbdkit_ok "$pid" 120
on_image rbd/disk 0xd4 196608

echo "== 4. rbd-exclusive=false: the key is still kept"
rm -f "$j2"
start_nbdkit -P "$pid" -U "$sock" "$PLUGIN" rbd=rbd/nolock rbd-exclusive=false \
  journal="$j2" journal-size=8M
id3=$(jid "$j2")
write 0xe5 0
[ "$(meta rbd/nolock)" = "$id3" ] || fail "rbd/nolock key '$(meta rbd/nolock)', expected $id3"
stop_nbdkit_ok "$pid" 120
[ -z "$(meta rbd/nolock)" ] || fail "rbd/nolock: a clean stop left the key"
on_image rbd/nolock 0xe5 0

echo "tests took $(ceph_elapsed "$t0") s after the cluster"
echo "ok"
