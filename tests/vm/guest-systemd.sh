#!/bin/bash
# The guest side of tests/vm/test-vm-systemd.sh: runs as vmtest.service
# in a Debian guest booted with systemd, with the repository's
# subpage@.service and subpage@.socket installed and
# /etc/subpage/test.conf serving /var/lib/subpage/test.img.
#
#   1. systemctl enable --now subpage@test.socket;
#   2. nbd-client -unix /run/subpage/test.sock (socket activation starts
#      subpage@test.service), mkfs.ext4, copy /data/t (from the host's
#      make-data.py) and patch it in place, print the checksums, umount,
#      e2fsck, detach;
#   3. systemctl stop subpage@test.service: the drain must end with
#      status 0 and log no error (issue 17), and the image file itself
#      must then hold a clean filesystem with every file (debugfs, no
#      mount);
#   4. systemctl start subpage@test.socket, attach again (a new
#      service), mount read-only, check every checksum, detach, stop;
#      that stop logs no error either.
# Markers go to /dev/ttyS1 (the host's results log), as in
# guest-nbd-client.sh: "VMTEST <STEP> OK ...", "VMTEST SUM <sha>  <path>",
# "VMTEST FAIL <step>: <why>", "VMTEST DONE".  Then the guest powers off.

export PATH=/usr/sbin:/usr/bin:/sbin:/bin
exec 3> /dev/ttyS1

say ()
{
  echo "$*" >&3
  echo "*** [$(cut -d' ' -f1 /proc/uptime)s] $*"
}

finish ()
{
  echo "---- journal of subpage@test"
  journalctl --no-pager -o short-monotonic -u subpage@test.socket \
    -u subpage@test.service || :
  systemctl --no-block poweroff
  exit 0
}

fail ()
{
  say "VMTEST FAIL $*"
  finish
}

# no_errors STEP: the service's journal has no line at error priority
# or above, and none that says "error" (nbdkit's stderr reaches the
# journal at the default priority, info, so its "nbdkit: error: ..."
# lines are found by their text).
no_errors ()
{
  local lines
  lines=$( { journalctl --no-pager -o cat -p err -u "$unit.service"
             journalctl --no-pager -o cat -u "$unit.service" |
               grep -i 'error'; } 2>&1) || :
  [ -z "$lines" ] ||
    fail "$1: the journal of $unit.service has error lines: $lines"
  say "VMTEST $1 LOG OK"
}

run ()
{
  local step=$1
  shift
  echo "+ $*"
  "$@" || fail "$step: '$*' exited with status $?"
}

unit=subpage@test
img=/var/lib/subpage/test.img
sock=/run/subpage/test.sock

# expect_state UNIT STATE: systemctl is-active UNIT prints STATE
expect_state ()
{
  local state
  state=$(systemctl is-active "$1")
  [ "$state" = "$2" ] || fail "state: $1 is $state, expected $2"
}

attach ()
{
  run "attach" nbd-client -unix "$sock" /dev/nbd0 -b 4096
  local i
  for (( i = 0; i < 100; i++ )); do
    [ "$(cat /sys/block/nbd0/size)" != 0 ] && return 0
    sleep 0.1
  done
  fail "attach: /dev/nbd0 has no size after nbd-client"
}

detach ()
{
  run "detach" nbd-client -d /dev/nbd0
  local i
  for (( i = 0; i < 100; i++ )); do
    nbd-client -c /dev/nbd0 > /dev/null 2>&1 || return 0
    sleep 0.1
  done
  fail "detach: /dev/nbd0 still connected 10 s after nbd-client -d"
}

say "VMTEST BOOT OK systemd $(systemctl --version | head -1 | cut -d' ' -f2)"
systemctl --no-pager status subpage@test.socket || :

# ---- 1. the socket ---------------------------------------------------------
run "image" mkdir -p /var/lib/subpage
run "image" truncate -s 512M "$img"
run "enable" systemctl enable --now "$unit.socket"
expect_state "$unit.socket" active
expect_state "$unit.service" inactive
[ -S "$sock" ] || fail "socket: $sock is not a socket"
say "VMTEST SOCKET OK"

# ---- 2. first service: make the filesystem, write ------------------------
attach
expect_state "$unit.service" active
say "VMTEST ATTACH OK"
run "mkfs" mkfs.ext4 -q -F /dev/nbd0
run "mount" mount /dev/nbd0 /mnt
run "write" cp -a /data/t /mnt/t
run "write" sync
while read -r path off len poff; do
  run "patch" dd if=/data/patch of="/mnt/t/$path" bs=1 skip="$poff" \
    seek="$off" count="$len" conv=notrunc status=none
done < /data/patches
(cd /mnt && find t -type f | LC_ALL=C sort | xargs sha256sum) > /tmp/sums ||
  fail "sha256sum"
while read -r line; do
  echo "VMTEST SUM $line" >&3
done < /tmp/sums
say "VMTEST WRITE OK files=$(wc -l < /tmp/sums)"
run "umount" umount /mnt
run "fsck" e2fsck -fn /dev/nbd0
say "VMTEST FSCK OK"
detach

# ---- 3. drain: stop the service ------------------------------------------
run "stop" systemctl stop "$unit.service"
expect_state "$unit.service" inactive
result=$(systemctl show -P Result "$unit.service")
status=$(systemctl show -P ExecMainStatus "$unit.service")
[ "$result" = success ] && [ "$status" = 0 ] ||
  fail "stop: $unit.service ended with Result=$result ExecMainStatus=$status"
say "VMTEST STOP OK result=$result status=$status"
no_errors STOP
# DynamicUser=: the state directory is /var/lib/private/subpage, with
# /var/lib/subpage a link to it; the file is the one the service wrote.
run "image-fsck" e2fsck -fn "$img"
rm -rf /tmp/files
mkdir /tmp/files
run "image-read" debugfs -R "rdump /t /tmp/files" "$img"
(cd /tmp/files && sha256sum --check --quiet /tmp/sums) ||
  fail "image: the image file after the drain does not hold the files"
say "VMTEST IMAGE OK"

# ---- 4. socket again, second service: verify -----------------------------
run "restart" systemctl start "$unit.socket"
expect_state "$unit.socket" active
attach
expect_state "$unit.service" active
say "VMTEST REATTACH OK"
run "mount-ro" mount -o ro /dev/nbd0 /mnt
(cd /mnt && sha256sum --check --quiet /tmp/sums) ||
  fail "verify: checksums differ after re-attach"
say "VMTEST VERIFY OK files=$(wc -l < /tmp/sums)"
run "umount-ro" umount /mnt
detach
run "stop-all" systemctl stop "$unit.socket" "$unit.service"
result=$(systemctl show -P Result "$unit.service")
[ "$result" = success ] || fail "stop-all: $unit.service ended with Result=$result"
no_errors STOP-ALL
say "VMTEST DONE"
finish
