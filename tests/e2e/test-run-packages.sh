#!/usr/bin/env bash
# scripts/run installs only what building and serving need (issue 17,
# item 1): the run list (scripts/packages-run.txt, through
# `scripts/deps --list run`), with everything it depends on, holds no
# kernel, qemu, debootstrap or test-only package, and
# `apt-get -s install` of it on this machine would install none either.
# scripts/deps test still lists every package of both lists.
set -euo pipefail
source "$(dirname "$0")/../functions.sh"
requires apt-get apt-cache dpkg-query

deps=$SRCDIR/scripts/deps
mapfile -t run < <("$deps" --list run)
mapfile -t test < <("$deps" --list test)
[ ${#run[@]} -gt 0 ] || { echo "$0: empty run list" >&2; exit 1; }
echo "run list (${#run[@]}): ${run[*]}"

# Packages scripts/run must never install, by name.
forbidden='^(linux-image|linux-headers|qemu|debootstrap|busybox|libcmocka|clang|libclang|fio|xfsprogs|btrfs-progs|nbd-client|socat|cpio|zstd|systemd$)'
fail=0
# One string to search (grep -q at the end of a pipe under pipefail
# can fail the pipe with SIGPIPE when it stops reading early).
test_text=$(printf '%s\n' "${test[@]}")

# 1. The lists themselves.
bad=$(printf '%s\n' "${run[@]}" | grep -E "$forbidden" || :)
if [ -n "$bad" ]; then
  echo "$0: in the run list: $bad" >&2
  fail=1
fi
for p in "${run[@]}"; do
  grep -qxF "$p" <<< "$test_text" ||
    { echo "$0: $p is in the run list but not in scripts/deps test" >&2; fail=1; }
done
for p in libcmocka-dev clang qemu-system-x86 linux-image-amd64 debootstrap; do
  grep -qxF "$p" <<< "$test_text" ||
    { echo "$0: scripts/deps test does not list $p" >&2; fail=1; }
done

# 2. Everything the run list depends on (Depends and Pre-Depends,
# recursively; no Recommends, as scripts/deps installs without them),
# whatever is installed here: what a fresh machine could get.
closure=$(apt-cache depends --recurse --no-recommends --no-suggests \
            --no-conflicts --no-breaks --no-replaces --no-enhances \
            "${run[@]}" | grep -v '^ ' | sort -u)
echo "dependency closure: $(wc -l <<<"$closure") packages"
bad=$(grep -E "$forbidden" <<<"$closure" || :)
if [ -n "$bad" ]; then
  echo "$0: the run list pulls in:" $bad >&2
  fail=1
fi

# 3. What apt-get would do here, as scripts/deps does it.
sim=$(apt-get -s -q install --no-install-recommends "${run[@]}" 2>&1) || {
  echo "$0: apt-get -s install failed:" >&2
  echo "$sim" >&2
  exit 1
}
installs=$(awk '$1 == "Inst" { print $2 }' <<<"$sim")
echo "apt-get -s would install or upgrade: ${installs:-(nothing)}" | tr '\n' ' '
echo
bad=$(grep -E "$forbidden" <<<"$installs" || :)
if [ -n "$bad" ]; then
  echo "$0: apt-get -s install of the run list would install:" $bad >&2
  fail=1
fi
exit "$fail"
