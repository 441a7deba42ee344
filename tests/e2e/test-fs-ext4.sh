#!/usr/bin/env bash
# A real filesystem on the cache: ext4 on a 512 MiB image served through
# a 16 MiB cache (so the copy below evicts and writes back all the
# time), reached by the kernel as nbdfuse file -> loop device.
#   1. mkfs.ext4, mount, copy a tree of ~1500 files of random sizes,
#      sync, umount, detach, and stop nbdkit with SIGTERM (status 0);
#   2. e2fsck -fn on the image file itself must find it clean;
#   3. serve the image again, mount it read-only the same way, and check
#      every file's sha256sum.

source "$(dirname "$0")/../functions.sh"
set -euo pipefail

requires_plugin
requires_root
requires_dev /dev/fuse /dev/loop-control
requires nbdfuse fusermount3 losetup mkfs.ext4 e2fsck dumpe2fs mount umount \
         mountpoint sha256sum
make_tmpdir

img=$tmpdir/disk.img
sock=$tmpdir/nbd.sock
pid=$tmpdir/nbdkit.pid
src=$tmpdir/src
sums=$tmpdir/sha256sums

# Some kernels or containers have no free loop device: that is a missing
# prerequisite, not a failure.
losetup --find >/dev/null 2>&1 || _skip "no free loop device"

truncate -s 512M "$img"

# The tree to copy: nested directories, empty files, sizes at and around
# sector and page boundaries, and a few files of several MiB.
/usr/bin/python3 "$SRCDIR/tests/make-tree.py" "$src" 1500 37 5 $((4 * 1024 * 1024)) 20240501
(cd "$src" && find . -type f -print0 | sort -z | xargs -0 sha256sum) > "$sums"
nfiles=$(wc -l < "$sums")
echo "tree: $nfiles files, $(du -sh "$src" | cut -f1)"

# ---- 1. make the filesystem and fill it ----------------------------------
start_nbdkit -P "$pid" -U "$sock" "$PLUGIN" file="$img" cache-size=16M
start_nbdfuse "$tmpdir/fuse1" "$sock"
attach_loop "$nbdfuse_file"
mkfs.ext4 -q -F "$loopdev"
mount_fs "$loopdev" "$tmpdir/mnt1"
cp -a "$src" "$tmpdir/mnt1/tree"
sync -f "$tmpdir/mnt1"
umount "$tmpdir/mnt1"
detach_loops "$nbdfuse_file"
stop_nbdfuse "$tmpdir/fuse1"

# Data still dirty in the cache must reach the image before nbdkit
# exits, with status 0.
stop_nbdkit "$pid" 120

# ---- 2. the image file is a clean filesystem -----------------------------
fsck_clean "$img"

# ---- 3. serve it again, mount read-only, verify every file ---------------
start_nbdkit -P "$pid" -U "$sock" "$PLUGIN" file="$img" cache-size=16M
start_nbdfuse "$tmpdir/fuse2" "$sock" -r
attach_loop "$nbdfuse_file" --read-only
mount_fs "$loopdev" "$tmpdir/mnt2" -o ro
(cd "$tmpdir/mnt2/tree" && sha256sum --check --quiet "$sums")
found=$(find "$tmpdir/mnt2/tree" -type f | wc -l)
if [ "$found" -ne "$nfiles" ]; then
  echo "$0: $found files on the filesystem, expected $nfiles" >&2
  exit 1
fi
umount "$tmpdir/mnt2"
detach_loops "$nbdfuse_file"
stop_nbdfuse "$tmpdir/fuse2"
stop_nbdkit "$pid"
echo "ok: $nfiles files verified"
