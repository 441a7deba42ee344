#!/bin/busybox sh
# shellcheck shell=dash
# /init of the guest of tests/vm/test-vm-nbd-client.sh (busybox sh).
#
# Reads /etc/vmtest.env (written by the host test): SERVER, FSLIST, and
# PORT_<round>_<fs>, one guestfwd port per round and filesystem (each
# reaches its own nbdkit, and the host counts the connections on each).
# Round 1 attaches with one connection, round 2 with -C 2.  For every
# filesystem in each round:
#   attach, mkfs, mount, write files (the host's /data, see
#   make-data.py: sizes around sector and page boundaries, a small tree,
#   a file larger than the host's cache, unaligned overwrites), print
#   their checksums, sync, umount, fsck, detach; attach on fresh connections, mount read-only, check every
#   checksum, umount, detach.
# Results go to /dev/ttyS1 (the host's results log), one marker a line:
#   VMTEST <WHAT> <round> <fs> OK ...     a step that passed
#   VMTEST SUM <round> <fs> <sha256>  <path>
#   VMTEST FAIL <step>: <why>             the first step that failed
#   VMTEST DONE                           every step passed
# Everything else (commands' output) goes to the console, ttyS0.

export PATH=/usr/sbin:/usr/bin:/sbin:/bin

/bin/busybox mkdir -p /proc /sys /dev /run /tmp /mnt
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox mount -t devtmpfs dev /dev
# busybox applets for what the initramfs does not carry as real programs
/bin/busybox --install -s /usr/bin 2>/dev/null
exec > /dev/console 2>&1

# the results port stays open: one writer, no open/close per line
exec 3> /dev/ttyS1
say ()
{
  echo "$*" >&3
  echo "*** [$(cut -d' ' -f1 /proc/uptime)s] $*"
}

finish ()
{
  sync
  echo "*** powering off"
  poweroff -f
  sleep 10
}

fail ()
{
  say "VMTEST FAIL $*"
  # Leave the devices alone: the host decides from the markers.
  finish
}

# run STEP CMD...: run CMD, or fail the test naming STEP.
run ()
{
  local step=$1
  shift
  echo "+ $*"
  "$@" || fail "$step: '$*' exited with status $?"
}

. /etc/vmtest.env

# ---- modules, network ----------------------------------------------------
while read -r _ path params; do
  # shellcheck disable=SC2086
  insmod "$path" $params || echo "warning: insmod $path failed"
done < /etc/vm-modules
for fs in $FSLIST; do
  grep -qw "$fs" /proc/filesystems || fail "boot: no $fs in /proc/filesystems"
done
[ -b /dev/nbd0 ] || fail "boot: no /dev/nbd0 (nbd module not loaded)"
run net ip link set lo up
run net ip link set eth0 up
run net ip addr add 10.0.2.15/24 dev eth0
say "VMTEST BOOT OK kernel $(uname -r)"

# ---- helpers -------------------------------------------------------------

# nbd_wait_size DEV: wait until the kernel sees the export's size.
nbd_wait_size ()
{
  local i=0 name=${1#/dev/}
  while [ "$(cat "/sys/block/$name/size" 2>/dev/null || echo 0)" = 0 ]; do
    i=$((i + 1))
    [ "$i" -le 100 ] || return 1
    sleep 0.1
  done
}

# nbd_wait_free DEV: wait until DEV is disconnected (after nbd-client -d
# the kernel tears the device down asynchronously).
nbd_wait_free ()
{
  local i=0
  while nbd-client -c "$1" >/dev/null 2>&1; do
    i=$((i + 1))
    [ "$i" -le 100 ] || return 1
    sleep 0.1
  done
}

# attach ROUND FS CONNS
attach ()
{
  local port conns=$3
  eval "port=\$PORT_$1_$2"
  if [ "$conns" -gt 1 ]; then
    run "attach $1 $2" nbd-client "$SERVER" "$port" /dev/nbd0 -b 4096 -N '' -C "$conns"
  else
    run "attach $1 $2" nbd-client "$SERVER" "$port" /dev/nbd0 -b 4096 -N ''
  fi
  nbd_wait_size /dev/nbd0 || fail "attach $1 $2: /dev/nbd0 has no size after attach"
}

detach ()
{
  run "detach $1 $2" nbd-client -d /dev/nbd0
  nbd_wait_free /dev/nbd0 || fail "detach $1 $2: /dev/nbd0 still connected 10 s after nbd-client -d"
}

mkfs_fs ()
{
  case $1 in
    ext4)  mkfs.ext4 -q -F /dev/nbd0 ;;
    xfs)   mkfs.xfs -q -f /dev/nbd0 ;;
    btrfs) mkfs.btrfs -q -f /dev/nbd0 ;;
  esac
}

fsck_fs ()
{
  case $1 in
    ext4)  e2fsck -fn /dev/nbd0 ;;
    xfs)   xfs_repair -n /dev/nbd0 ;;
    btrfs) btrfs check --readonly /dev/nbd0 ;;
  esac
}

# write_files DIR: copy the host's files (/data/t, see make-data.py) to
# DIR, then overwrite parts of them in place (sub-page, unaligned) as
# /data/patches says.
write_files ()
{
  local d=$1 path off len poff
  cp -a /data/t "$d" || return 1
  sync
  while read -r path off len poff; do
    dd if=/data/patch of="$d/$path" bs=1 skip="$poff" seek="$off" \
       count="$len" conv=notrunc 2>/dev/null || return 1
  done < /data/patches
}

# ---- the rounds ----------------------------------------------------------
for round in 1 2; do
  conns=$round                  # round 1: one connection; round 2: -C 2
  for fs in $FSLIST; do
    r=r$round
    echo "==== round $round ($conns connection(s)): $fs"
    attach "$round" "$fs" "$conns"
    say "VMTEST ATTACH $r $fs OK conns=$conns"
    run "mkfs $r $fs" mkfs_fs "$fs"
    say "VMTEST MKFS $r $fs OK"
    run "mount $r $fs" mount -t "$fs" /dev/nbd0 /mnt
    run "write $r $fs" write_files /mnt/t
    (cd /mnt && find t -type f | sort | xargs sha256sum) > "/tmp/sums-$r-$fs" ||
      fail "sha256sum $r $fs"
    nfiles=$(wc -l < "/tmp/sums-$r-$fs")
    while read -r line; do
      echo "VMTEST SUM $r $fs $line" >&3      # not on the console
    done < "/tmp/sums-$r-$fs"
    say "VMTEST WRITE $r $fs OK files=$nfiles"
    run "sync $r $fs" sync
    run "umount $r $fs" umount /mnt
    run "fsck $r $fs" fsck_fs "$fs"
    say "VMTEST FSCK $r $fs OK"
    detach "$round" "$fs"

    # fresh connection(s): everything comes from the server
    attach "$round" "$fs" "$conns"
    say "VMTEST REATTACH $r $fs OK conns=$conns"
    run "mount-ro $r $fs" mount -t "$fs" -o ro /dev/nbd0 /mnt
    (cd /mnt && sha256sum -c "/tmp/sums-$r-$fs" > "/tmp/check-$r-$fs" 2>&1)
    status=$?
    grep -v ': OK$' "/tmp/check-$r-$fs"
    [ "$status" -eq 0 ] || fail "verify $r $fs: checksums differ after re-attach"
    found=$(find /mnt/t -type f | wc -l)
    [ "$found" -eq "$nfiles" ] ||
      fail "verify $r $fs: $found files after re-attach, $nfiles written"
    say "VMTEST VERIFY $r $fs OK files=$nfiles"
    run "umount-ro $r $fs" umount /mnt
    detach "$round" "$fs"
  done
done

say "VMTEST DONE"
finish
