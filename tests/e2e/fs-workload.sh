# tests/e2e/fs-workload.sh: a filesystem workload on the cache, shared
# by test-fs-{ext4,xfs,btrfs}-workload.sh, which set FS and source this
# file (so $0, and the test's directory, stay the test's own).
#
# A 512 MiB image (xfs needs ~300 MiB) served through a 16 MiB cache,
# reached by the kernel as nbdfuse file -> loop device, so write-back and
# eviction run during the whole workload:
#   1. mkfs, mount, then: 3000 small files (0..12 KiB, sizes around
#      sector and page edges) in 40 directories; one 128 MiB file
#      written with dd; in-place overwrites with dd conv=notrunc (small
#      files and the large one, aligned and unaligned); truncations
#      (shrink, grow, to 0); renames; deletions; os.fsync on some files
#      and `sync -f` at the end.
#   2. umount, detach the loop device and restart nbdfuse (so nothing
#      is left in the kernel's caches), mount again: every file reads
#      back as it was (through the small cache, from the image), then a
#      second round: 1000 new files, overwrites, truncations, deletions
#      of old files, dd into the large file.  Record the sha256 of every
#      file left.
#   3. umount, detach, stop nbdfuse, SIGTERM nbdkit (status 0).
#   4. The image file itself passes the filesystem's checker in
#      no-modify mode (e2fsck -fn, xfs_repair -n, btrfs check
#      --readonly).
#   5. Serve it again, mount read-only the same way: the same files,
#      every checksum matches, deleted files are gone.
#
# Set by the caller: FS (ext4, xfs or btrfs).  Each file system runs
# with different cache geometry, to cover more of it:
#   ext4   page-size=64K sector-size=4096 (4 KiB blocks, no partial sector)
#   xfs    page-size=64K sector-size=512  (512 B log writes)
#   btrfs  page-size=16K sector-size=4096

set -euo pipefail

case "$FS" in
  ext4)  mkfs=(mkfs.ext4 -q -F);  fsck=(e2fsck -fn)
         geometry=(page-size=64K sector-size=4096) ;;
  xfs)   mkfs=(mkfs.xfs -q -f);   fsck=(xfs_repair -n -f)
         geometry=(page-size=64K sector-size=512) ;;
  btrfs) mkfs=(mkfs.btrfs -q -f); fsck=(btrfs check --readonly)
         geometry=(page-size=16K sector-size=4096) ;;
  *) echo "$0: FS=$FS: unknown file system" >&2; exit 1 ;;
esac

requires_plugin
requires_root
requires_dev /dev/fuse /dev/loop-control
requires nbdfuse fusermount3 losetup mount umount mountpoint sha256sum \
         dd sync truncate "${mkfs[0]}" "${fsck[0]}"
grep -qw "$FS" /proc/filesystems || modprobe "$FS" 2>/dev/null ||
  _skip "the kernel has no $FS file system"
make_tmpdir

img=$tmpdir/disk.img
sock=$tmpdir/nbd.sock
pid=$tmpdir/nbdkit.pid
sums=$tmpdir/sha256sums
gone=$tmpdir/deleted
args=(file="$img" cache-size=16M "${geometry[@]}")

losetup --find >/dev/null 2>&1 || _skip "no free loop device"

truncate -s 512M "$img"
SECONDS=0

# ---- 1. make the file system and run the workload ------------------------
start_nbdkit -P "$pid" -U "$sock" "$PLUGIN" "${args[@]}"
start_nbdfuse "$tmpdir/fuse1" "$sock"
attach_loop "$nbdfuse_file"
"${mkfs[@]}" "$loopdev"
mnt=$tmpdir/mnt1
mount_fs "$loopdev" "$mnt"
echo "$FS: mkfs and mount done at ${SECONDS}s"

# Small files, overwrites, truncations, renames, deletions and fsyncs,
# in Python (fast, and the seeds replay it).  Round 1 makes the tree,
# round 2 changes it after a remount.
workload=$tmpdir/workload.py
cat > "$workload" <<'EOF'
import os, random, sys
root, gone, rnd = sys.argv[1], sys.argv[2], int(sys.argv[3])
rng = random.Random(4242 + rnd)
if rnd == 2:
    old = sorted(os.path.join(dp, f)
                 for dp, _, fs in os.walk(os.path.join(root, "small"))
                 for f in fs)
    rng.shuffle(old)
    for p in old[:300]:
        size = os.path.getsize(p)
        with open(p, "r+b") as f:
            f.seek(rng.randint(0, size + 100))
            f.write(rng.randbytes(rng.choice([1, 512, 4096, 9000])))
    for p in old[300:400]:
        os.truncate(p, rng.randint(0, 20000))
    with open(gone, "a") as g:
        for p in old[400:700]:
            os.unlink(p)
            g.write(os.path.relpath(p, root) + "\n")
    for i in range(1000):
        d = os.path.join(root, "small", "n%02d" % (i % 20))
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "g%04d" % i), "wb") as f:
            f.write(rng.randbytes(rng.randint(0, 12 * 1024)))
    os.sync()
    sys.exit(0)
edges = [0, 1, 511, 512, 513, 4095, 4096, 4097, 8191, 8192, 12288]
files = []
for i in range(3000):
    d = os.path.join(root, "small", "d%02d" % (i % 40))
    os.makedirs(d, exist_ok=True)
    size = edges[i] if i < len(edges) else rng.randint(0, 12 * 1024)
    p = os.path.join(d, "f%04d" % i)
    with open(p, "wb") as f:
        f.write(rng.randbytes(size))
        if i % 100 == 0:
            f.flush()
            os.fsync(f.fileno())
    files.append(p)
rng.shuffle(files)
# In-place overwrites of 400 files (like dd conv=notrunc), some past
# the end, some unaligned.
for p in files[:400]:
    size = os.path.getsize(p)
    off = rng.randint(0, size + 100)
    with open(p, "r+b") as f:
        f.seek(off)
        f.write(rng.randbytes(rng.choice([1, 100, 512, 4096, 5000])))
# Truncations: shrink, grow (a hole), to zero.
for p in files[400:700]:
    size = os.path.getsize(p)
    os.truncate(p, rng.choice([0, size // 2, size + 10000]))
# Renames across directories.
for j, p in enumerate(files[700:900]):
    q = os.path.join(root, "small", "d%02d" % (j % 40), "r%04d" % j)
    os.rename(p, q)
# Deletions.
with open(gone, "w") as g:
    for p in files[900:1500]:
        os.unlink(p)
        g.write(os.path.relpath(p, root) + "\n")
# fsync a sample of what is left, and a directory.
for p in files[1500:1600]:
    fd = os.open(p, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
fd = os.open(os.path.join(root, "small"), os.O_RDONLY)
os.fsync(fd)
os.close(fd)
EOF
: > "$gone"
/usr/bin/python3 "$workload" "$mnt" "$gone" 1
echo "$FS: small files done at ${SECONDS}s"

# One large file, then in-place overwrites in it with dd.
dd if=/dev/urandom of="$mnt/large" bs=1M count=128 status=none
for off in 0 1 4095 65536 1000000 33554432 134217000; do
  dd if=/dev/urandom of="$mnt/large" bs=1000 count=3 seek="$off" \
     oflag=seek_bytes conv=notrunc status=none
done
dd if=/dev/urandom of="$mnt/large" bs=64K count=16 seek=100 \
   conv=notrunc,fsync status=none
truncate -s 100M "$mnt/large"
sync -f "$mnt"
echo "$FS: large file done at ${SECONDS}s"
(cd "$mnt" && find . -type f -print0 | sort -z | xargs -0 sha256sum) > "$sums"

# ---- 2. remount with cold kernel caches, check, second round -------------
umount "$mnt"
detach_loops "$nbdfuse_file"
stop_nbdfuse "$tmpdir/fuse1"
start_nbdfuse "$tmpdir/fuse1" "$sock"
attach_loop "$nbdfuse_file"
mount_fs "$loopdev" "$mnt"
(cd "$mnt" && sha256sum --check --quiet "$sums")
echo "$FS: $(wc -l < "$sums") files read back after remount at ${SECONDS}s"
/usr/bin/python3 "$workload" "$mnt" "$gone" 2
for off in 7 50000 99999999; do
  dd if=/dev/urandom of="$mnt/large" bs=4096 count=5 seek="$off" \
     oflag=seek_bytes conv=notrunc status=none
done
sync -f "$mnt"
echo "$FS: second round done at ${SECONDS}s"

(cd "$mnt" && find . -type f -print0 | sort -z | xargs -0 sha256sum) > "$sums"
nfiles=$(wc -l < "$sums")
echo "$FS: $nfiles files, $(du -sh "$mnt" | cut -f1) used"

# ---- 3. unmount and stop the server --------------------------------------
umount "$mnt"
detach_loops "$nbdfuse_file"
stop_nbdfuse "$tmpdir/fuse1"
stop_nbdkit "$pid" 120
echo "$FS: stopped at ${SECONDS}s"

# ---- 4. the image is a clean file system ---------------------------------
"${fsck[@]}" "$img"
echo "$FS: ${fsck[*]} clean at ${SECONDS}s"

# ---- 5. serve it again and verify ----------------------------------------
start_nbdkit -P "$pid" -U "$sock" "$PLUGIN" "${args[@]}"
start_nbdfuse "$tmpdir/fuse2" "$sock" -r
attach_loop "$nbdfuse_file" --read-only
mnt=$tmpdir/mnt2
mount_fs "$loopdev" "$mnt" -o ro
(cd "$mnt" && sha256sum --check --quiet "$sums")
found=$(find "$mnt" -type f | wc -l)
if [ "$found" -ne "$nfiles" ]; then
  echo "$0: $found files on the file system, expected $nfiles" >&2
  exit 1
fi
while read -r p; do
  if [ -e "$mnt/$p" ]; then
    echo "$0: deleted file $p is back" >&2
    exit 1
  fi
done < "$gone"
umount "$mnt"
detach_loops "$nbdfuse_file"
stop_nbdfuse "$tmpdir/fuse2"
stop_nbdkit "$pid"
echo "ok: $FS: $nfiles files verified in ${SECONDS}s"
