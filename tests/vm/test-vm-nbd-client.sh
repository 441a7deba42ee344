#!/usr/bin/env bash
# The kernel's NBD client on the cache: a VM (Debian's kernel, a busybox
# initramfs with nbd-client, e2fsprogs, xfsprogs and btrfs-progs) attaches
# exports of the plugin with nbd-client and puts ext4, xfs and btrfs on
# them, first over one connection, then over two (-C 2, multi-conn).
# The guest's script is tests/vm/guest-nbd-client.sh; for each filesystem
# and round it makes the filesystem, writes files (made on the host by
# tests/vm/make-data.py, ~22 MiB, then patched in place at unaligned
# offsets), prints their checksums, unmounts, runs fsck, detaches,
# re-attaches on fresh connections and checks every checksum, printing
# a marker a step.
#
# The host serves one 1 GiB image per filesystem through an 8 MiB cache
# (one nbdkit each, on a unix socket).  The guest reaches them only
# through qemu's user network with restrict=on: each guestfwd rule runs
# tests/vm's wrapper, which logs the connection and joins it to the
# socket with socat.  The test passes when
#   - the VM powered off by itself, every marker is there and none says
#     FAIL, and the checksums the guest printed are the host's;
#   - each round opened the expected number of connections (round 1: 2
#     per filesystem, round 2: 4);
#   - while nbdkit still runs (so only what the guest's flushes made
#     durable counts), each image is a clean filesystem to the host's
#     fsck, and the round-2 files of ext4 (debugfs rdump) and btrfs
#     (btrfs restore), read from the image file, have the expected
#     checksums; xfs's too when a loop device is free (mounted
#     read-only);
#   - every nbdkit exits with status 0 after SIGTERM.

source "$(dirname "$0")/../functions.sh"
source "$(dirname "$0")/vm-functions.sh"
set -euo pipefail

requires_plugin
requires /usr/bin/python3 qemu-system-x86_64 socat cpio modprobe ldd timeout \
         nbd-client mkfs.ext4 e2fsck debugfs mkfs.xfs xfs_repair \
         mkfs.btrfs btrfs sha256sum
[ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1 ||
  _skip "/bin/busybox missing or not static (install busybox-static)"
vm_find_kernel
vm_accel
make_tmpdir

fslist="ext4 xfs btrfs"
root=$tmpdir/root
results=$tmpdir/results.log     # guest's ttyS1: the markers
console=$tmpdir/console.log     # guest's ttyS0: kernel and commands
# The ends of the guest's logs go to the test's output (the meson log)
# unless the test got to its end; VM_LOG_DIR=DIR keeps them whole.
passed=
cleanup_fn vm_show_logs

# ---- the servers and the guest's way to them -----------------------------
netdev="user,id=n0,restrict=on"
port=10809
for fs in $fslist; do
  truncate -s 1G "$tmpdir/$fs.img"
  start_nbdkit -P "$tmpdir/$fs.pid" -U "$tmpdir/$fs.sock" \
    "$PLUGIN" file="$tmpdir/$fs.img" cache-size=8M
  for round in 1 2; do
    # One port per round and filesystem, so that the connections of each
    # can be counted.  qemu runs the command once per guest connection,
    # with the connection on its stdin and stdout.
    fwd=$tmpdir/fwd-r$round-$fs.sh
    cat > "$fwd" <<EOF
#!/bin/sh
echo "\$\$" >> '$tmpdir/conn-r$round-$fs.log'
exec socat STDIO UNIX-CONNECT:'$tmpdir/$fs.sock' 2>> '$tmpdir/socat.log'
EOF
    chmod +x "$fwd"
    netdev+=",guestfwd=tcp:10.0.2.100:$port-cmd:$fwd"
    echo "PORT_${round}_$fs=$port" >> "$tmpdir/vmtest.env"
    port=$((port + 1))
  done
done
echo "SERVER=10.0.2.100" >> "$tmpdir/vmtest.env"
echo "FSLIST='$fslist'" >> "$tmpdir/vmtest.env"

# ---- the initramfs -------------------------------------------------------
vm_root_dirs "$root"
cp /bin/busybox "$root/usr/bin/busybox"
vm_copy_bin "$root" nbd-client mkfs.ext4 e2fsck mkfs.xfs xfs_repair \
            mkfs.btrfs btrfs
vm_copy_modules "$root" virtio_pci virtio_net nbd crc32c_generic \
                crc32c-intel ext4 xfs btrfs
# nbd: a few devices are enough (the guest uses nbd0)
sed -i 's|\(/nbd\.ko\).*|\1 nbds_max=4|' "$root/etc/vm-modules"
cp "$tmpdir/vmtest.env" "$root/etc/vmtest.env"
# 16 MiB of big file: twice the cache
/usr/bin/python3 "$SRCDIR/tests/vm/make-data.py" "$root/data" 16 > "$tmpdir/expected.sums"
nfiles=$(wc -l < "$tmpdir/expected.sums")
cp "$SRCDIR/tests/vm/guest-nbd-client.sh" "$root/init"
chmod +x "$root/init"
vm_make_initramfs "$root" "$tmpdir/initrd.cpio"
echo "initramfs: $(du -h "$tmpdir/initrd.cpio" | cut -f1)"

# ---- boot ----------------------------------------------------------------
vm_start "$tmpdir/qemu.log" 500 \
  -m 1024 -smp 2 \
  -kernel "$vm_kernel" -initrd "$tmpdir/initrd.cpio" \
  -append "console=ttyS0 loglevel=4 panic=-1 rdinit=/init" \
  -serial "file:$console" -serial "file:$results" \
  -netdev "$netdev" -device virtio-net-pci,netdev=n0,romfile=
vm_finish

# sums_of ROUND FS: the checksums the guest printed for ROUND (r1, r2)
# and FS, sorted.
sums_of ()
{
  tr -d '\r' < "$results" | sed -n "s/^VMTEST SUM $1 $2 //p" | LC_ALL=C sort -k2
}

expected=("VMTEST BOOT OK kernel $vm_kver")
for round in 1 2; do
  for fs in $fslist; do
    expected+=("VMTEST ATTACH r$round $fs OK conns=$round"
               "VMTEST MKFS r$round $fs OK"
               "VMTEST FSCK r$round $fs OK"
               "VMTEST REATTACH r$round $fs OK conns=$round")
    expected+=("VMTEST WRITE r$round $fs OK files=$nfiles"
               "VMTEST VERIFY r$round $fs OK files=$nfiles")
  done
done
expected+=("VMTEST DONE")
vm_expect "$results" "${expected[@]}"

# What the guest wrote (its checksums, from its page cache) is what the
# host meant it to write.
for round in 1 2; do
  for fs in $fslist; do
    if ! sums_of "r$round" "$fs" | cmp -s - "$tmpdir/expected.sums"; then
      echo "$0: the guest's checksums for r$round $fs differ from the host's:" >&2
      sums_of "r$round" "$fs" | diff "$tmpdir/expected.sums" - >&2 || :
      exit 1
    fi
  done
done
echo "guest checksums: as the host expected ($nfiles files per filesystem and round)"

# ---- connections: one per attach, two with -C 2 --------------------------
for round in 1 2; do
  for fs in $fslist; do
    n=$(wc -l < "$tmpdir/conn-r$round-$fs.log")
    want=$((2 * round))
    if [ "$n" -ne "$want" ]; then
      echo "$0: round $round, $fs: $n connections, expected $want" >&2
      exit 1
    fi
  done
done
echo "connections: as expected (round 1: 2 per filesystem, round 2: 4)"

# ---- the images, read by the host while nbdkit still runs ----------------
# They hold round 2's filesystems.

e2fsck -fn "$tmpdir/ext4.img"
mkdir "$tmpdir/ext4-files"
debugfs -R "rdump /t $tmpdir/ext4-files" "$tmpdir/ext4.img"
(cd "$tmpdir/ext4-files" && sha256sum --check --quiet "$tmpdir/expected.sums")
echo "ext4 image: clean, $nfiles files match"

xfs_repair -n -f "$tmpdir/xfs.img"
if losetup --find >/dev/null 2>&1; then
  attach_loop "$tmpdir/xfs.img" --read-only
  mount_fs "$loopdev" "$tmpdir/xfs-mnt" -o ro,norecovery
  (cd "$tmpdir/xfs-mnt" && sha256sum --check --quiet "$tmpdir/expected.sums")
  umount "$tmpdir/xfs-mnt"
  detach_loops "$tmpdir/xfs.img"
  echo "xfs image: clean, $nfiles files match"
else
  echo "xfs image: clean (files not checked on the host: no free loop device)"
fi

btrfs check --readonly "$tmpdir/btrfs.img"
mkdir "$tmpdir/btrfs-files"
btrfs restore "$tmpdir/btrfs.img" "$tmpdir/btrfs-files" > /dev/null
(cd "$tmpdir/btrfs-files" && sha256sum --check --quiet "$tmpdir/expected.sums")
echo "btrfs image: clean, $nfiles files match"

for fs in $fslist; do
  stop_nbdkit "$tmpdir/$fs.pid"
done
passed=1
echo "ok: ext4, xfs and btrfs over nbd-client, 1 and 2 connections"
