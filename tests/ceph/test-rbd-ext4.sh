#!/usr/bin/env bash
# A real filesystem on the RBD backend: ext4 on a 256 MiB RBD image
# served with rbd= through a 16 MiB cache (so the copy evicts and
# writes back all the time), reached by the kernel as nbdfuse file ->
# loop device (the pattern of tests/e2e/test-fs-ext4.sh):
#   1. mkfs.ext4, mount (nobarrier: ext4 sends no flush, and the cache
#      expires nothing for 10 minutes and writes back in the background
#      only above 80% of its 16 MiB dirty, so what the cache holds dirty
#      reaches the image only through the stop), copy a tree of ~800
#      files of random sizes (sha256 of each kept), sync, umount,
#      detach, and stop nbdkit with SIGTERM (status 0: the stop drains
#      what was dirty, its amount printed from the metrics and required
#      to be more than 0); nobody holds the image's exclusive lock
#      after;
#   2. a fresh librbd client (rbd-check.py dump, cache off; not
#      subpage) copies the image to a file: e2fsck -fn finds it clean,
#      and its journal needs no recovery;
#   3. nbdkit started again on the image, read-only nbdfuse and loop
#      device: e2fsck -fn clean again (no recovery), mount read-only, every file's
#      sha256sum matches and no file is missing.

source "$(dirname "$0")/../functions.sh"
source "$(dirname "$0")/ceph-functions.sh"
set -euo pipefail

ceph_require
requires_plugin
requires_root
requires_dev /dev/fuse /dev/loop-control
requires nbdfuse fusermount3 losetup mkfs.ext4 e2fsck mount umount \
         mountpoint sha256sum curl dumpe2fs
make_tmpdir

check=$SRCDIR/tests/ceph/rbd-check.py
sock=$tmpdir/nbd.sock
pid=$tmpdir/nbdkit.pid
src=$tmpdir/src
sums=$tmpdir/sha256sums
fail () { echo "FAIL: $*" >&2; exit 1; }

losetup --find >/dev/null 2>&1 || _skip "no free loop device"


# The tree: nested directories, empty files, sizes at and around sector
# and page boundaries, a few files of a few MiB.
/usr/bin/python3 "$SRCDIR/tests/make-tree.py" "$src" 800 23 4 $((3 * 1024 * 1024)) 20261206
(cd "$src" && find . -type f -print0 | sort -z | xargs -0 sha256sum) > "$sums"
nfiles=$(wc -l < "$sums")
echo "tree: $nfiles files, $(du -sh "$src" | cut -f1)"

ceph_start_cluster
echo "cluster up in $ceph_start_seconds s"
timeout 60 rbd create --size 256M --image-feature layering,exclusive-lock rbd/fs

# ---- 1. make the filesystem and fill it ----------------------------------
t0=$(date +%s%N)
start_nbdkit -P "$pid" -U "$sock" "$PLUGIN" rbd=rbd/fs cache-size=16M \
             dirty-expire-ms=600000 dirty-background-ratio=80 dirty-ratio=90 \
             metrics-socket="$tmpdir/metrics.sock"
start_nbdfuse "$tmpdir/fuse1" "$sock"
attach_loop "$nbdfuse_file"
mkfs.ext4 -q -F "$loopdev"
mount_fs "$loopdev" "$tmpdir/mnt1" -o nobarrier
cp -a "$src" "$tmpdir/mnt1/tree"
sync -f "$tmpdir/mnt1"
umount "$tmpdir/mnt1"
detach_loops "$nbdfuse_file"
stop_nbdfuse "$tmpdir/fuse1"
dirty=$(curl -sf --unix-socket "$tmpdir/metrics.sock" http://localhost/metrics |
        awk '$1 ~ /dirty_bytes$/ { print $2 }')
echo "dirty in the cache at the stop: ${dirty:-?} bytes"
[ "${dirty:-0}" -gt 0 ] || fail "nothing dirty at the stop: it drains nothing"
# What is still dirty in the cache must reach the image before nbdkit
# exits, with status 0.
stop_nbdkit_ok "$pid" 120
echo "mkfs, copy, stop: $(ceph_elapsed "$t0") s"
left=$(timeout 60 "$check" owners rbd/fs)
[ -z "$left" ] || fail "after the stop the exclusive lock is still held by $left"

# ---- 2. the image, read by a fresh librbd client, is a clean ext4 ---------
timeout 120 "$check" dump rbd/fs "$tmpdir/dump.img"
fsck_clean "$tmpdir/dump.img"
rm -f "$tmpdir/dump.img"

# ---- 3. serve it again, fsck and mount read-only, verify every file -------
start_nbdkit -P "$pid" -U "$sock" "$PLUGIN" rbd=rbd/fs cache-size=16M
start_nbdfuse "$tmpdir/fuse2" "$sock" -r
attach_loop "$nbdfuse_file" --read-only
fsck_clean "$loopdev"
mount_fs "$loopdev" "$tmpdir/mnt2" -o ro
(cd "$tmpdir/mnt2/tree" && sha256sum --check --quiet "$sums") ||
  fail "checksums differ after the restart"
found=$(find "$tmpdir/mnt2/tree" -type f | wc -l)
[ "$found" -eq "$nfiles" ] ||
  fail "$found files on the filesystem after the restart, expected $nfiles"
umount "$tmpdir/mnt2"
detach_loops "$nbdfuse_file"
stop_nbdfuse "$tmpdir/fuse2"
stop_nbdkit_ok "$pid" 120
echo "ok: $nfiles files verified"
