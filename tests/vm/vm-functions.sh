# tests/vm/vm-functions.sh: helpers for the VM tests (suite 'vm'),
# sourced after tests/functions.sh.  A VM test boots Debian's kernel
# (linux-image-amd64) under qemu-system-x86_64 and drives the plugin from
# the guest's own NBD client (nbd-client, the kernel's nbd driver), so
# the plugin meets the requests a real kernel sends: flushes from
# filesystems, discards from mkfs, multi-connection.
#
#   vm_find_kernel             set $vm_kernel, $vm_kver, $vm_moddir
#   vm_copy_bin ROOT BIN...    copy binaries and the libraries they load
#   vm_copy_modules ROOT MOD.. copy modules and their dependencies, and
#                              write ROOT/etc/vm-modules (insmod order)
#   vm_make_initramfs ROOT OUT an uncompressed newc cpio of ROOT
#   vm_debian_rootfs PKG...    a cached debootstrap'd bookworm (minbase +
#                              PKG...) as a tarball: $vm_rootfs_tar
#   vm_start LOG SECONDS ARGS  start qemu in the background, bounded by
#                              timeout; vm_wait waits for it
#   vm_expect FILE STRING...   every STRING must be a line of FILE
#
# The guest's network (when a test gives it one) is qemu's user-mode
# stack with restrict=on: the guest reaches nothing but the guestfwd
# rules the test sets up, each of which runs a command on the host that
# connects to a unix socket of the test's own nbdkit.

# vm_find_kernel: the newest /boot/vmlinuz-* whose modules are installed.
# No kernel is a missing prerequisite (linux-image-amd64 is in
# scripts/packages-test.txt).  Sets $vm_kernel, $vm_kver and $vm_moddir.
vm_find_kernel ()
{
  local k v
  vm_kernel=
  for k in $(ls -1 /boot/vmlinuz-* 2>/dev/null | sort -V); do
    v=${k#/boot/vmlinuz-}
    if [ -r "$k" ] && [ -f "/lib/modules/$v/modules.dep" ]; then
      vm_kernel=$k
      vm_kver=$v
    fi
  done
  [ -n "$vm_kernel" ] ||
    _skip "no readable /boot/vmlinuz-* with its /lib/modules (install linux-image-amd64)"
  vm_moddir=/lib/modules/$vm_kver
  echo "kernel: $vm_kernel"
}

# vm_root_dirs ROOT: the skeleton of a merged-/usr root (as on Debian).
vm_root_dirs ()
{
  local root=$1
  mkdir -p "$root"/usr/bin "$root"/usr/sbin "$root"/usr/lib \
           "$root"/usr/lib64 "$root"/etc "$root"/proc "$root"/sys \
           "$root"/dev "$root"/run "$root"/tmp "$root"/mnt
  ln -sfn usr/bin "$root/bin"
  ln -sfn usr/sbin "$root/sbin"
  ln -sfn usr/lib "$root/lib"
  ln -sfn usr/lib64 "$root/lib64"
}

# _vm_copy_file ROOT PATH: copy PATH (following symlinks) to the same
# name under ROOT, with its directory resolved: /lib/x86_64-linux-gnu/
# libc.so.6 lands in ROOT/usr/lib/x86_64-linux-gnu/libc.so.6.
_vm_copy_file ()
{
  local root=$1 path=$2 dir
  dir=$(realpath "$(dirname "$path")")
  mkdir -p "$root$dir"
  cp -L "$path" "$root$dir/$(basename "$path")"
}

# vm_copy_bin ROOT BIN...: copy each BIN (a name on PATH or a path) into
# ROOT at its real path, with every shared library ldd names.
vm_copy_bin ()
{
  local root=$1 b path lib
  shift
  for b in "$@"; do
    path=$(command -v "$b") || { echo "$0: $b not found" >&2; return 1; }
    _vm_copy_file "$root" "$path"
    # "libx.so.1 => /lib/.../libx.so.1 (0x...)" or "/lib64/ld-linux... (0x...)"
    for lib in $(ldd "$path" 2>/dev/null |
                 awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'); do
      [ -e "$root$(realpath "$(dirname "$lib")")/$(basename "$lib")" ] ||
        _vm_copy_file "$root" "$lib"
    done
  done
}

# vm_copy_modules ROOT MODULE...: copy the modules and everything they
# depend on from $vm_moddir to ROOT/lib/modules/$vm_kver (decompressed:
# busybox insmod cannot read .ko.xz/.ko.zst), and list them, in the
# order modprobe would load them, one "insmod PATH [PARAMS]" per line,
# in ROOT/etc/vm-modules.
vm_copy_modules ()
{
  local root=$1 m cmd path params dest
  local -A seen=()
  shift
  : > "$root/etc/vm-modules"
  for m in "$@"; do
    while read -r cmd path params; do
      [ "$cmd" = insmod ] || continue     # "builtin NAME"
      [ -z "${seen[$path]:-}" ] || continue
      seen[$path]=1
      dest=${path%.xz}
      dest=${dest%.zst}
      dest=$root/usr${dest#/usr}          # /lib/modules -> usr/lib/modules
      mkdir -p "$(dirname "$dest")"
      case "$path" in
        *.xz)  xz -dc "$path" > "$dest" ;;
        *.zst) zstd -q -dc "$path" > "$dest" ;;
        *)     cp "$path" "$dest" ;;
      esac
      echo "insmod ${dest#"$root"/usr} $params" >> "$root/etc/vm-modules"
    done < <(modprobe -S "$vm_kver" --show-depends "$m")
  done
}

# vm_make_initramfs ROOT OUT: pack ROOT as an uncompressed newc cpio
# (the kernel unpacks it straight into its rootfs).
vm_make_initramfs ()
{
  (cd "$1" && find . -print0 | cpio --null -o -H newc --quiet) > "$2"
}

# vm_accel: the qemu accelerator and CPU, in $vm_accel_args.  KVM when
# it really runs a guest, else TCG (slower; the tests must pass with it
# too).  /dev/kvm can exist and still not work: nested under another
# hypervisor, qemu may abort on "-cpu host" (an MSR it cannot set) or
# the guest may hang in early boot.  So a probe boots the kernel with
# KVM and no root filesystem: it must reach its panic ("VFS: Unable to
# mount root fs") and power off within 20 s.  VM_ACCEL=kvm or tcg
# skips the probe.
vm_accel ()
{
  local accel=${VM_ACCEL:-} probe
  if [ -z "$accel" ]; then
    accel=tcg
    if [ -r /dev/kvm ] && [ -w /dev/kvm ]; then
      probe=$(mktemp)
      # (in a subshell, whose stderr also takes the shell's "Aborted")
      (timeout --kill-after=5 20 \
         qemu-system-x86_64 -machine q35,accel=kvm -cpu host -m 256 \
           -nodefaults -no-user-config -display none -no-reboot \
           -kernel "$vm_kernel" -append "console=ttyS0 panic=-1" \
           -serial "file:$probe" < /dev/null; exit $?) > /dev/null 2>&1 || :
      if grep -q 'Kernel panic' "$probe"; then
        accel=kvm
      else
        echo "KVM probe: the guest did not boot under KVM; using TCG"
      fi
      rm -f "$probe"
    fi
  fi
  case $accel in
    kvm) vm_accel_args=(-machine q35,accel=kvm -cpu host) ;;
    tcg) vm_accel_args=(-machine q35,accel=tcg -cpu max) ;;
    *)   echo "$0: VM_ACCEL=$accel: expected kvm or tcg" >&2; return 1 ;;
  esac
  vm_accel_name=$accel
  echo "accelerator: $accel"
}

# vm_start LOG SECONDS QEMU-ARGS...: start qemu-system-x86_64 in the
# background with its own output in LOG, killed after SECONDS (status
# 124 from vm_wait).  The cleanup stops exactly this process (by PID).
# Sets $vm_pid.
vm_start ()
{
  local log=$1 secs=$2
  shift 2
  # timeout runs qemu as its child and passes SIGTERM on to it.
  timeout --kill-after=10 "$secs" \
    qemu-system-x86_64 "${vm_accel_args[@]}" -nodefaults -no-user-config \
      -display none -no-reboot "$@" > "$log" 2>&1 < /dev/null &
  vm_pid=$!
  cleanup_fn _vm_kill "$vm_pid"
  vm_started=$(date +%s)
}

# vm_wait: wait for the VM started last; its exit status (124: timed out).
vm_wait ()
{
  local status=0
  wait "$vm_pid" || status=$?
  echo "VM ran $(( $(date +%s) - vm_started )) s, exit status $status"
  return "$status"
}

_vm_kill ()
{
  local pid=$1
  if _pid_running "$pid"; then
    echo "$0: stopping the VM (PID $pid)" >&2
    kill -TERM "$pid"
    _wait_pid "$pid" 30 || kill -KILL "$pid"
  fi
  wait "$pid" 2>/dev/null || :
}

# vm_expect FILE STRING...: fail unless every STRING is a whole line of
# FILE (carriage returns stripped: guest serial output has them).
vm_expect ()
{
  local file=$1 s missing=0 lines
  shift
  # (not tr | grep -q: grep's early exit would fail tr with SIGPIPE)
  lines=$(tr -d '\r' < "$file")
  for s in "$@"; do
    if ! grep -qxF -- "$s" <<< "$lines"; then
      echo "$0: missing in $(basename "$file"): $s" >&2
      # a line that holds it with something else (shown with cat -v)
      grep -aF -- "$s" "$file" | cat -v >&2 || :
      missing=1
    fi
  done
  return "$missing"
}

# ---- a Debian root filesystem --------------------------------------------

# vm_debian_mirror: the Debian mirror apt uses here (the first URI ending
# in /debian in /etc/apt/sources.list*), or $SUBPAGE_VM_MIRROR.
vm_debian_mirror ()
{
  local m
  if [ -n "${SUBPAGE_VM_MIRROR:-}" ]; then
    echo "$SUBPAGE_VM_MIRROR"
    return
  fi
  m=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
          /etc/apt/sources.list.d/*.sources 2>/dev/null |
      grep -oE '(https?|file):[^ ]*/debian/?( |$)' | sed -n '1s/ //p' || :)
  echo "${m:-http://deb.debian.org/debian}"
}

# vm_debian_rootfs PKG...: a Debian bookworm root filesystem
# (debootstrap --variant=minbase --include=PKG,...) as a zstd tarball,
# made once and kept in ${SUBPAGE_VM_CACHE:-/var/cache/subpage-vm}
# under a name derived from the package list; sets $vm_rootfs_tar.  The
# first run downloads ~100 MB from the Debian mirror apt uses and takes
# a few minutes; later runs reuse the tarball.  A mirror that cannot be
# reached is a missing prerequisite (skip); any other debootstrap
# failure fails the test.  Concurrent runs wait for each other (flock).
vm_debian_rootfs ()
{
  local cache=${SUBPAGE_VM_CACHE:-/var/cache/subpage-vm} key mirror tmp lock
  local status=0
  key=$(echo "bookworm minbase v1 $*" | sha256sum | cut -c1-12)
  vm_rootfs_tar=$cache/rootfs-bookworm-$key.tar.zst
  [ -f "$vm_rootfs_tar" ] && return 0

  mkdir -p "$cache"
  exec {lock}> "$cache/.lock"
  flock -w 1000 "$lock" || { echo "$0: $cache/.lock held for 1000 s" >&2; return 1; }
  if [ -f "$vm_rootfs_tar" ]; then
    exec {lock}>&-
    return 0
  fi
  mirror=$(vm_debian_mirror)
  # Under the lock, any tmp.* is left over from a run that was killed.
  rm -rf --one-file-system "$cache"/tmp.* 2>/dev/null || :
  tmp=$cache/tmp.$$
  echo "debootstrap: bookworm minbase + $* from $mirror into $tmp (first run"
  echo "only: downloads ~100 MB; log in $cache/debootstrap.log)"
  timeout 900 debootstrap --variant=minbase --include="$(IFS=,; echo "$*")" \
    bookworm "$tmp" "$mirror" > "$cache/debootstrap.log" 2>&1 || status=$?
  if [ "$status" -ne 0 ]; then
    tail -n 20 "$cache/debootstrap.log" >&2
    # debootstrap may leave /proc or /sys mounted in the target
    umount -R "$tmp/proc" "$tmp/sys" 2>/dev/null || :
    rm -rf --one-file-system "$tmp"
    exec {lock}>&-
    if grep -qE 'Failed getting release file|Couldn.t download|Failure trying to run:.*(wget|curl)|Could not resolve|Connection (refused|timed out)' \
         "$cache/debootstrap.log"; then
      _skip "debootstrap could not download from $mirror (status $status): see $cache/debootstrap.log"
    fi
    echo "$0: debootstrap failed with status $status (see $cache/debootstrap.log)" >&2
    return 1
  fi
  # apt's downloaded .debs are not needed in the image
  rm -rf "$tmp"/var/cache/apt/archives/*.deb "$tmp"/var/lib/apt/lists/*_*
  tar -C "$tmp" --zstd -cf "$vm_rootfs_tar.tmp" . &&
    mv "$vm_rootfs_tar.tmp" "$vm_rootfs_tar" || status=$?
  rm -rf --one-file-system "$tmp"
  exec {lock}>&-
  [ "$status" -eq 0 ] || return "$status"
  echo "debootstrap: cached $vm_rootfs_tar ($(du -h "$vm_rootfs_tar" | cut -f1))"
}

# vm_packages_of FILE...: the Debian packages that hold the shared
# libraries FILE... load (what a guest needs to run them).
vm_packages_of ()
{
  local lib
  for lib in $(ldd "$@" | awk '$2 == "=>" && $3 ~ /^\// { print $3 }' | sort -u); do
    dpkg -S "$(realpath "$lib")" 2>/dev/null || dpkg -S "$lib" 2>/dev/null || :
  done | cut -d: -f1 | sort -u
}

# On exit: with VM_LOG_DIR=DIR, keep the guest's logs as
# DIR/<test>.<log>; if the test did not set passed=1, print the last
# lines of each.  Uses the test's $console, $results and $tmpdir.
# Register with: passed=; cleanup_fn vm_show_logs
vm_show_logs ()
{
  if [ -n "${VM_LOG_DIR:-}" ]; then
    mkdir -p "$VM_LOG_DIR"
    for f in "$console" "$results" "$tmpdir"/qemu.log; do
      [ -f "$f" ] && cp "$f" "$VM_LOG_DIR/$(basename "$0" .sh).$(basename "$f")"
    done
  fi
  if [ -z "$passed" ]; then
    for f in "$console" "$results" "$tmpdir"/qemu.log; do
      [ -f "$f" ] || continue
      echo "---- last 100 lines of $(basename "$f")"
      tail -n 100 "$f" | tr -d '\r'
    done
  fi
  return 0
}

# Waits for the VM started by vm_start, prints the guest's markers from
# $results (without the checksum lines), and exits the test with a
# failure if the guest reported one or qemu did not end cleanly.
vm_finish ()
{
  local vm_status=0

  vm_wait || vm_status=$?
  echo "---- markers (results.log)"
  grep -av '^VMTEST SUM ' "$results" | tr -d '\r' || :

  if grep -q '^VMTEST FAIL' "$results"; then
    echo "$0: the guest reported a failure" >&2
    exit 1
  fi
  if [ "$vm_status" -ne 0 ]; then
    echo "$0: qemu exited with status $vm_status (124: the VM did not finish in time)" >&2
    exit 1
  fi
}
