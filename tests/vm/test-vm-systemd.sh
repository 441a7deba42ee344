#!/usr/bin/env bash
# The systemd units on a real systemd: a Debian bookworm guest (minbase,
# made once with debootstrap and cached, see vm_debian_rootfs in
# vm-functions.sh) boots Debian's kernel with systemd as PID 1, with the
# built plugin in nbdkit's plugindir, the repository's subpage@.service
# (as meson configured it) and subpage@.socket in /etc/systemd/system,
# and /etc/subpage/test.conf.  Its vmtest.service runs
# tests/vm/guest-systemd.sh: enable the socket, attach with
# nbd-client -unix (socket activation), ext4 with files, stop the
# service (drain, status 0, the image file holds the files), start the
# socket again, attach, verify, stop; a marker a step on ttyS1.
#
# The guest has no network.  Its root is an ext4 image made with
# mkfs.ext4 -d (no loop device), on virtio-blk; a busybox initramfs
# loads the modules (virtio, ext4, nbd) and switches to it.  After the
# guest has powered off, the host reads the export's image out of the
# root image (debugfs) and checks it too: e2fsck clean, every file with
# the checksum the host expected.
#
# The first run downloads ~100 MB from the Debian mirror apt uses (a few
# minutes); later runs take the cached tarball.  If the mirror cannot be
# reached the test is skipped.

source "$(dirname "$0")/../functions.sh"
source "$(dirname "$0")/vm-functions.sh"
set -euo pipefail

requires_plugin
requires /usr/bin/python3 qemu-system-x86_64 debootstrap cpio modprobe \
         ldd timeout flock zstd tar mkfs.ext4 e2fsck debugfs sha256sum
[ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1 ||
  _skip "/bin/busybox missing or not static (install busybox-static)"
requires_root

# The units: subpage@.service is made by meson from subpage@.service.in
# (nbdkit's and the plugin's paths filled in).
service_unit=$BUILDDIR/systemd/subpage@.service
socket_unit=$SRCDIR/systemd/subpage@.socket
for u in "$service_unit" "$socket_unit"; do
  [ -f "$u" ] || _skip "systemd unit $u not found (not written or not built yet)"
done
plugindir=$(nbdkit --dump-config | sed -n 's/^plugindir=//p')
[ -n "$plugindir" ] || { echo "$0: nbdkit --dump-config names no plugindir" >&2; exit 1; }
grep -qF "$plugindir/nbdkit-subpage-plugin.so" "$service_unit" || {
  echo "$0: $service_unit does not run $plugindir/nbdkit-subpage-plugin.so" >&2
  exit 1
}

vm_find_kernel
vm_accel
make_tmpdir

results=$tmpdir/results.log
console=$tmpdir/console.log
passed=
cleanup_fn vm_show_logs

# ---- the root filesystem -------------------------------------------------
mapfile -t libpkgs < <(vm_packages_of "$PLUGIN")
vm_debian_rootfs systemd systemd-sysv udev kmod nbdkit nbd-client \
                 e2fsprogs "${libpkgs[@]}"

rootfs=$tmpdir/rootfs
mkdir "$rootfs"
tar -C "$rootfs" --zstd -xf "$vm_rootfs_tar"

install -D -m 0755 "$PLUGIN" "$rootfs$plugindir/nbdkit-subpage-plugin.so"
install -m 0644 "$service_unit" "$socket_unit" "$rootfs/etc/systemd/system/"
mkdir -p "$rootfs/etc/subpage"
cat > "$rootfs/etc/subpage/test.conf" <<'EOF'
# written by tests/vm/test-vm-systemd.sh (see systemd/example.conf)
SUBPAGE_FILE=/var/lib/subpage/test.img
SUBPAGE_ARGS=cache-size=4M page-size=64K sector-size=4096
NBDKIT_ARGS=
EOF
install -D -m 0755 "$SRCDIR/tests/vm/guest-systemd.sh" "$rootfs/usr/local/sbin/vmtest"
cat > "$rootfs/etc/systemd/system/vmtest.service" <<'EOF'
[Unit]
Description=subpage VM test (tests/vm/guest-systemd.sh)
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/vmtest
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=infinity

[Install]
WantedBy=multi-user.target
EOF
ln -s /etc/systemd/system/vmtest.service \
  "$rootfs/etc/systemd/system/multi-user.target.wants/vmtest.service"
# Nothing on the serial ports but the console and the markers.
for u in serial-getty@ttyS0.service serial-getty@ttyS1.service \
         getty@tty1.service; do
  ln -sfn /dev/null "$rootfs/etc/systemd/system/$u"
done
echo vmtest > "$rootfs/etc/hostname"
: > "$rootfs/etc/fstab"
# The files the guest writes: an 8 MiB big file, twice the cache.
/usr/bin/python3 "$SRCDIR/tests/vm/make-data.py" "$rootfs/data" 8 > "$tmpdir/expected.sums"
nfiles=$(wc -l < "$tmpdir/expected.sums")

truncate -s 2G "$tmpdir/root.img"
mkfs.ext4 -q -F -L vmroot -d "$rootfs" "$tmpdir/root.img"
rm -rf --one-file-system "$rootfs"

# ---- the initramfs: modules, then switch to /dev/vda ---------------------
initroot=$tmpdir/initramfs
vm_root_dirs "$initroot"
cp /bin/busybox "$initroot/usr/bin/busybox"
vm_copy_modules "$initroot" virtio_pci virtio_blk crc32c_generic \
                crc32c-intel ext4 nbd
cat > "$initroot/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /usr/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
while read -r cmd path params; do
  insmod "$path" $params || echo "initramfs: insmod $path failed"
done < /etc/vm-modules
for i in $(seq 100); do [ -b /dev/vda ] && break; sleep 0.1; done
mkdir -p /newroot
mount -t ext4 -o rw /dev/vda /newroot || { echo "initramfs: cannot mount /dev/vda"; poweroff -f; }
umount /proc /sys
mount --move /dev /newroot/dev 2>/dev/null || umount /dev
exec switch_root /newroot /sbin/init
EOF
chmod +x "$initroot/init"
vm_make_initramfs "$initroot" "$tmpdir/initrd.cpio"

# ---- boot ----------------------------------------------------------------
vm_start "$tmpdir/qemu.log" 480 \
  -m 1024 -smp 2 \
  -kernel "$vm_kernel" -initrd "$tmpdir/initrd.cpio" \
  -append "console=ttyS0 loglevel=4 panic=-1 systemd.show_status=1" \
  -drive "file=$tmpdir/root.img,if=none,id=root,format=raw,cache=unsafe" \
  -device virtio-blk-pci,drive=root \
  -serial "file:$console" -serial "file:$results"
vm_finish
vm_expect "$results" \
  "VMTEST SOCKET OK" "VMTEST ATTACH OK" "VMTEST WRITE OK files=$nfiles" \
  "VMTEST FSCK OK" "VMTEST STOP OK result=success status=0" \
  "VMTEST STOP LOG OK" \
  "VMTEST IMAGE OK" "VMTEST REATTACH OK" "VMTEST VERIFY OK files=$nfiles" \
  "VMTEST STOP-ALL LOG OK" "VMTEST DONE"
tr -d '\r' < "$results" | sed -n 's/^VMTEST SUM //p' | LC_ALL=C sort -k2 > "$tmpdir/guest.sums"
if ! cmp -s "$tmpdir/guest.sums" "$tmpdir/expected.sums"; then
  echo "$0: the guest's checksums differ from the host's:" >&2
  diff "$tmpdir/expected.sums" "$tmpdir/guest.sums" >&2 || :
  exit 1
fi

# ---- the export's image, out of the powered-off guest's root -------------
# (the guest shut down cleanly, so its root filesystem is consistent)
e2fsck -fn "$tmpdir/root.img" > "$tmpdir/root-fsck.log" 2>&1 || {
  cat "$tmpdir/root-fsck.log" >&2
  echo "$0: the guest's root filesystem is not clean after poweroff" >&2
  exit 1
}
debugfs -R "dump /var/lib/private/subpage/test.img $tmpdir/test.img" "$tmpdir/root.img"
e2fsck -fn "$tmpdir/test.img"
mkdir "$tmpdir/files"
debugfs -R "rdump /t $tmpdir/files" "$tmpdir/test.img"
(cd "$tmpdir/files" && sha256sum --check --quiet "$tmpdir/expected.sums")
passed=1
echo "ok: subpage@test.socket/.service under systemd: $nfiles files written, drained, verified"
