#!/usr/bin/env bash
# journal=: a file system on the cache survives SIGKILL of nbdkit, with
# the write-back journal replayed at the next start.  For ext4, then xfs:
#
#   1. A slow remote: nbdkit's file plugin on a 512 MiB sparse image,
#      behind --filter=delay (rdelay=1ms wdelay=1ms), on a unix socket.
#      subpage in front of it with uri=, journal= on local disk,
#      cache-size=64M and a metrics socket.  nbdfuse -> loop device ->
#      mkfs, mount.
#   2. A tree of files (tests/make-tree.py: 600 files, ~19 MiB), `sync -f`; the
#      sha256 of every file is recorded.
#   3. A workload in the background: new files (another directory),
#      one fsync every 8 files, without end.  Once it has written
#      4 MiB, the remote is stopped (SIGSTOP): nothing reaches it any
#      more and the journal cannot be emptied.  With the workload paused
#      (so that what the sync pushes stays below dirty-ratio, which the
#      frozen remote could never bring down), a second tree (~5 MiB) is
#      written and `sync -f` must succeed: a flush needs only the
#      journal.  Its checksums are recorded too; those files are then
#      only in the journal.  The workload goes on; once it has written
#      1 MiB more, nbdkit is killed with SIGKILL, by PID, and the remote
#      continued (SIGCONT).
#   4. The dead mount, loop device and FUSE mount are torn down (lazy
#      unmount: they get I/O errors; the loop device is detached by
#      name and must be freed).  subpage-journal check counts the
#      records the journal holds: more than 0, with at least the bytes
#      of the second tree as data (they cannot be anywhere else).  Once
#      the remote has closed every connection of the dead nbdkit (their
#      requests still in its socket buffers would otherwise race the
#      replay), subpage is started again on the same journal and
#      remote: its stderr must say "journal: replayed N records (B bytes
#      of journal)" with N and B what the tool counted, and
#      journal_replayed_records_total must be N too.
#   5. Attach again; the file system's own journal is recovered (ext4:
#      e2fsck -E journal_only; xfs: mount and umount), then its checker
#      in no-modify mode must find it clean (fsck_clean; xfs_repair -n),
#      then mount: every file of both synced trees reads back with its
#      checksum.
#   6. umount, SIGTERM (status 0: the final drain); the journal then
#      holds no record, and the remote's image file alone (stopped too)
#      is a clean file system holding every synced file (checked on a
#      read-only loop device on the image file).
#
# 20 to 40 s on 2 cores.
#
# A skip of xfs (no mkfs.xfs or xfs_repair, or no xfs in the kernel)
# does not let the test pass: it fails after ext4 instead.  Missing
# prerequisites of the whole test (root, FUSE, loop devices, ext4
# tools) skip it (77).

source "$(dirname "$0")/../functions.sh"
set -euo pipefail

requires_plugin
requires_root
requires_dev /dev/fuse /dev/loop-control
requires nbdfuse fusermount3 losetup mkfs.ext4 e2fsck dumpe2fs mount umount \
         mountpoint sha256sum truncate
: "${SUBPAGE_JOURNAL:=$BUILDDIR/tools/subpage-journal}"
if [ ! -x "$SUBPAGE_JOURNAL" ]; then
  echo "$0: subpage-journal not found: $SUBPAGE_JOURNAL (build it first)" >&2
  exit 1
fi
losetup --find >/dev/null 2>&1 || _skip "no free loop device"
make_tmpdir

fail ()
{
  local f
  echo "FAIL: $FS: $*" >&2
  for f in "$tmpdir/$FS"/nbdkit*.log; do
    [ -s "$f" ] || continue
    echo "--- last lines of $f:" >&2
    tail -n 20 "$f" >&2
  done
  exit 1
}
# signal_if_running SIG PID: a cleanup that may find PID gone already.
signal_if_running () { kill "-$1" "$2" 2>/dev/null || :; }
SECONDS=0
say () { echo "$FS: $* (${SECONDS}s)"; }

# wait_for SECONDS WHAT CMD...: poll CMD until it succeeds; fail after
# SECONDS.
wait_for ()
{
  local secs=$1 what=$2 i
  shift 2
  for (( i = 0; i < secs * 10; i++ )); do
    "$@" && return 0
    sleep 0.1
  done
  fail "timed out after ${secs}s waiting for: $what"
}

# metric SOCKET NAME: the value of subpage_NAME (empty if unreachable).
metric ()
{
  /usr/bin/python3 - "$1" "subpage_$2" <<'EOF' 2>/dev/null || :
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(10)
s.connect(sys.argv[1])
s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
data = b""
while True:
    b = s.recv(65536)
    if not b:
        break
    data += b
for line in data.decode().splitlines():
    f = line.split()
    if len(f) == 2 and f[0] == sys.argv[2]:
        print(int(float(f[1])))
EOF
}

journal_has_records () { [ "$(metric "$msock" journal_used_bytes)" -gt 0 ] 2>/dev/null; }

# The sockets the remote has open (its listening socket, and one per
# connection).
remote_sockets () { find "/proc/$remote_pid/fd" -lname 'socket:*' | wc -l; }
remote_idle () { [ "$(remote_sockets)" -le "$remote_base" ]; }

workload_at () { [ "$(cat "$progress" 2>/dev/null || echo 0)" -ge "$1" ]; }

# The background workload: files of 0 to 256 KiB under ROOT, an fsync
# every 8 files, its byte count in PROGRESS after each file.
cat > "$tmpdir/workload.py" <<'EOF'
import os, random, sys
root, progress = sys.argv[1], sys.argv[2]
rng = random.Random(99)
total = 0
for i in range(1000000):
    d = os.path.join(root, "w%02d" % (i % 16))
    os.makedirs(d, exist_ok=True)
    data = rng.randbytes(rng.choice([rng.randint(0, 16384),
                                     rng.randint(0, 256 * 1024)]))
    with open(os.path.join(d, "f%06d" % i), "wb") as f:
        f.write(data)
        if i % 8 == 0:
            f.flush()
            os.fsync(f.fileno())
    total += len(data)
    with open(progress + ".tmp", "w") as p:
        p.write("%d\n" % total)
    os.replace(progress + ".tmp", progress)
EOF

# teardown_dead MNT LOOPDEV FUSEDIR FUSEPID WORKLOADPID: after nbdkit
# was killed, kill the workload (it keeps the file system busy), then
# lazy unmount, detach the loop device by name (its FUSE file cannot be
# looked up any more, so detach_loops would not find it, and a lazy
# FUSE unmount would leave it attached to a deleted file for ever), wait
# until it is free, lazy FUSE unmount, wait for nbdfuse to exit.
teardown_dead ()
{
  local mnt=$1 dev=$2 fdir=$3 fpid=$4 wpid=$5
  kill -KILL "$wpid" 2>/dev/null || :
  wait_for 60 "the workload (PID $wpid) to exit" eval '! _pid_running '"$wpid"
  wait "$wpid" 2>/dev/null || :
  umount -l "$mnt" 2>/dev/null || :
  losetup --detach "$dev" 2>/dev/null || :
  wait_for 60 "$dev to be detached" \
    eval '[ ! -e /sys/block/'"${dev#/dev/}"'/loop/backing_file ]'
  fusermount3 -u -z "$fdir" 2>/dev/null || :
  wait_for 60 "nbdfuse (PID $fpid) to exit" eval '! _pid_running '"$fpid"
  wait "$fpid" 2>/dev/null || :
}

# run_fs FS: the whole scenario for one file system.
run_fs ()
{
  FS=$1
  local mkfs status dir=$tmpdir/$1
  case "$FS" in
    ext4) mkfs=(mkfs.ext4 -q -F -N 16384) ;;
    xfs)  mkfs=(mkfs.xfs -q -f) ;;
  esac
  mkdir "$dir"
  local rimg=$dir/remote.img rsock=$dir/remote.sock rpid=$dir/remote.pid
  local jnl=$dir/fs.journal sock=$dir/nbd.sock pid=$dir/nbdkit.pid
  local log=$dir/nbdkit.log sums=$dir/sha256sums
  msock=$dir/metrics.sock
  progress=$dir/progress

  truncate -s 512M "$rimg"
  start_nbdkit -P "$rpid" -U "$rsock" --filter=delay file "$rimg" \
               rdelay=1ms wdelay=1ms
  remote_pid=$nbdkit_pid
  remote_base=$(remote_sockets)
  local uri
  uri=$(nbd_uri "$rsock")
  local args=("$PLUGIN" uri="$uri" journal="$jnl" journal-size=256M
              cache-size=64M metrics-socket="$msock")

  # ---- 1, 2. mkfs, mount, a synced tree ----------------------------------
  start_nbdkit -P "$pid" -U "$sock" "${args[@]}" 2>"$dir/nbdkit-1.log"
  local subpage_pid=$nbdkit_pid
  start_nbdfuse "$dir/fuse1" "$sock"
  local fuse1_pid=${_nbdfuse_pid[$dir/fuse1]}
  attach_loop "$nbdfuse_file"
  "${mkfs[@]}" "$loopdev"
  mount_fs "$loopdev" "$dir/mnt1"
  say "mkfs and mount done"
  /usr/bin/python3 "$SRCDIR/tests/make-tree.py" "$dir/mnt1/synced" 600 13 4 \
    $((1024 * 1024)) 20250101
  sync -f "$dir/mnt1"
  (cd "$dir/mnt1" && find synced -type f -print0 | sort -z | xargs -0 sha256sum) > "$sums"
  local nfiles
  nfiles=$(wc -l < "$sums")
  say "$nfiles files synced, $(du -sh "$dir/mnt1/synced" | cut -f1)"

  # ---- 3. a workload, the remote stopped, SIGKILL -------------------------
  /usr/bin/python3 "$tmpdir/workload.py" "$dir/mnt1/after" "$progress" \
    2>/dev/null &
  local wpid=$!
  cleanup_fn signal_if_running KILL "$wpid"
  wait_for 120 "the workload to write 4 MiB" workload_at $((4 << 20))
  kill -STOP "$remote_pid"
  cleanup_fn signal_if_running CONT "$remote_pid"
  # The remote is frozen: nothing more reaches it, and the journal cannot
  # be emptied.  The workload pauses while a second tree is written and
  # synced (so that the dirty data the sync pushes into the cache stays
  # below dirty-ratio, which the frozen remote could never bring down):
  # the sync needs only the journal.
  kill -STOP "$wpid"
  local t=$SECONDS
  /usr/bin/python3 "$SRCDIR/tests/make-tree.py" "$dir/mnt1/frozen" 200 7 3 \
    $((256 * 1024)) 20250102
  timeout 120 sync -f "$dir/mnt1" ||
    fail "sync with the remote stopped: status $? (needs only the journal)"
  (cd "$dir/mnt1" && find frozen -type f -print0 | sort -z | xargs -0 sha256sum) >> "$sums"
  local frozen_bytes
  frozen_bytes=$(find "$dir/mnt1/frozen" -type f -printf '%s\n' | awk '{ n += $1 } END { print n + 0 }')
  say "$(grep -c ' frozen/' "$sums") more files ($frozen_bytes bytes) synced in $((SECONDS - t))s with the remote stopped"
  local at
  at=$(cat "$progress")
  kill -CONT "$wpid"
  wait_for 60 "the workload to go on" workload_at $((at + (1 << 20)))
  wait_for 60 "the journal to hold records" journal_has_records
  _pid_running "$wpid" || fail "the workload ended before the kill"
  say "journal holds $(metric "$msock" journal_used_bytes) bytes; SIGKILL"
  kill -KILL "$subpage_pid"
  reap_killed "$subpage_pid"
  kill -CONT "$remote_pid"
  nfiles=$(wc -l < "$sums")
  say "killed after $(cat "$progress") bytes of workload"

  # ---- 4. tear down, check the journal, restart (replay) -----------------
  teardown_dead "$dir/mnt1" "$loopdev" "$dir/fuse1" "$fuse1_pid" "$wpid"
  local out nrec
  out=$("$SUBPAGE_JOURNAL" check "$jnl") || fail "subpage-journal check exited $?"
  echo "$out"
  local nbytes
  nrec=$(sed -n 's/^records: *\([0-9]*\) .*/\1/p' <<<"$out")
  nbytes=$(sed -n 's/^bytes: *\([0-9]*\) of ring .*/\1/p' <<<"$out")
  [ -n "$nrec" ] && [ "$nrec" -gt 0 ] || fail "the journal holds no record after the kill"
  # What was synced with the remote stopped can only be in the journal.
  local data
  data=$(sed -n 's/^bytes: .*; \([0-9]*\) of data, .*/\1/p' <<<"$out")
  [ -n "$data" ] && [ "$data" -ge "$frozen_bytes" ] ||
    fail "the journal holds '$data' bytes of data, less than the $frozen_bytes synced with the remote stopped"
  wait_for 60 "the remote to close the dead nbdkit's connections" remote_idle
  say "teardown done, the journal holds $nrec records"

  start_nbdkit -P "$pid" -U "$sock" "${args[@]}" 2>"$log"
  subpage_pid=$nbdkit_pid
  # The replay runs after nbdkit forks, while clients wait: the socket
  # may be there before the summary line.
  wait_for 120 "the 'journal: replayed' line" grep -q "journal: replayed" "$log"
  grep "journal: replayed" "$log"
  grep -q "journal: replayed $nrec records ($nbytes bytes of journal)" "$log" || {
    cat "$log" >&2
    fail "the replay did not replay the $nrec records ($nbytes bytes) of the journal"
  }
  local replayed
  replayed=$(metric "$msock" journal_replayed_records_total)
  [ "$replayed" = "$nrec" ] ||
    fail "journal_replayed_records_total is '$replayed', expected $nrec"
  say "replayed $nrec records"

  # ---- 5. recover the file system's journal, check, verify ---------------
  start_nbdfuse "$dir/fuse2" "$sock"
  attach_loop "$nbdfuse_file"
  case "$FS" in
    ext4)
      e2fsck -E journal_only -y "$loopdev" || {
        status=$?
        [ "$status" -le 1 ] || fail "e2fsck -E journal_only: status $status"
      }
      fsck_clean "$loopdev" ;;
    xfs)
      mount_fs "$loopdev" "$dir/mnt2"   # replays the log
      umount "$dir/mnt2"
      xfs_repair -n "$loopdev" || fail "xfs_repair -n after the replay: status $?" ;;
  esac
  say "clean after the recovery"
  mount_fs "$loopdev" "$dir/mnt2"
  (cd "$dir/mnt2" && sha256sum --check --quiet "$sums") ||
    fail "synced files differ after the replay"
  [ "$(find "$dir/mnt2/synced" "$dir/mnt2/frozen" -type f | wc -l)" -eq "$nfiles" ] ||
    fail "not $nfiles files after the replay"
  say "$nfiles synced files verified"

  # ---- 6. stop cleanly; the remote's image alone -------------------------
  umount "$dir/mnt2"
  detach_loops "$nbdfuse_file"
  stop_nbdfuse "$dir/fuse2"
  stop_nbdkit_ok "$pid" 120
  out=$("$SUBPAGE_JOURNAL" check "$jnl") || fail "subpage-journal check exited $?"
  grep -qx 'records: *0 .*' <<<"$out" || {
    echo "$out"
    fail "the journal holds records after a clean stop"
  }
  stop_nbdkit_ok "$rpid" 60
  case "$FS" in
    ext4) fsck_clean "$rimg" ;;
    xfs)  xfs_repair -n -f "$rimg" || fail "xfs_repair -n on the image: status $?" ;;
  esac
  attach_loop "$rimg" --read-only
  mount_fs "$loopdev" "$dir/mnt3" -o ro
  (cd "$dir/mnt3" && sha256sum --check --quiet "$sums") ||
    fail "synced files differ on the remote's image"
  [ "$(find "$dir/mnt3/synced" "$dir/mnt3/frozen" -type f | wc -l)" -eq "$nfiles" ] ||
    fail "not $nfiles files on the remote's image"
  umount "$dir/mnt3"
  detach_loops "$rimg"
  say "ok: the remote's image is clean and holds the $nfiles files"
}

run_fs ext4

FS=xfs
xfs_missing=
for c in mkfs.xfs xfs_repair; do
  command -v "$c" >/dev/null 2>&1 || xfs_missing="$c not found"
done
if [ -z "$xfs_missing" ]; then
  grep -qw xfs /proc/filesystems || modprobe xfs 2>/dev/null ||
    xfs_missing="the kernel has no xfs"
fi
if [ -n "$xfs_missing" ]; then
  echo "FAIL: xfs not tested ($xfs_missing): a skipped half is not a pass" >&2
  exit 1
fi
run_fs xfs
echo "ok: ext4 and xfs (${SECONDS}s)"
