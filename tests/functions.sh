# tests/functions.sh: sourced by every tests/e2e/test-*.sh (bash only).
#
# Conventions (see STYLE.md "Test layout"):
#  - exit 77 means "skipped": only for a prerequisite that is genuinely
#    missing on this machine (a command, root, /dev/fuse, a loop device);
#  - register a cleanup with cleanup_fn BEFORE creating the thing it
#    removes; cleanups run on exit, in reverse order of registration, and
#    a cleanup that fails turns a passing test into a failing one (a test
#    must not leave a server, a mount or a loop device behind);
#  - every server listens on a unix socket only and is stopped by its
#    PID, never by name;
#  - each test keeps its files in its own directory, named after $0
#    (make_tmpdir).
#
# Environment, set by tests/meson.build.  The defaults let a test run by
# hand from the source tree after `meson setup build && ninja -C build`:
#   SRCDIR               the source tree
#   BUILDDIR             the build tree
#   PLUGIN               full path of the built nbdkit-subpage-plugin.so
#   NBDKIT_PRELOAD       library to LD_PRELOAD into nbdkit, and only into
#                        nbdkit (the ASan runtime: nbdkit itself is not
#                        instrumented, so the runtime must come first)
#   NBDKIT_ASAN_OPTIONS  ASAN_OPTIONS for nbdkit only
#   NBDKIT_UBSAN_OPTIONS UBSAN_OPTIONS for nbdkit only
#   NBDKIT_TSAN_OPTIONS  TSAN_OPTIONS for nbdkit only

: "${SRCDIR:=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
: "${BUILDDIR:=$SRCDIR/build}"
: "${PLUGIN:=$BUILDDIR/plugin/nbdkit-subpage-plugin.so}"
export SRCDIR BUILDDIR PLUGIN

# ---- cleanup -------------------------------------------------------------

_cleanup_cmds=()

# cleanup_fn CMD [ARGS...]: run CMD ARGS when the test exits.
cleanup_fn ()
{
  local q
  printf -v q '%q ' "$@"
  _cleanup_cmds+=("$q")
}

_run_cleanups ()
{
  local status=$? i
  set +e
  trap '' INT TERM
  for (( i = ${#_cleanup_cmds[@]} - 1; i >= 0; i-- )); do
    if ! eval "${_cleanup_cmds[i]}"; then
      echo "$0: cleanup failed: ${_cleanup_cmds[i]}" >&2
      [ "$status" -eq 0 ] && status=1
    fi
  done
  exit "$status"
}
trap _run_cleanups EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- prerequisites -------------------------------------------------------

_skip ()
{
  echo "$0: SKIP: $*" >&2
  exit 77
}

# requires CMD...: skip unless every CMD is on PATH.
requires ()
{
  local c
  for c in "$@"; do
    command -v "$c" >/dev/null 2>&1 || _skip "$c not found"
  done
}

requires_root ()
{
  [ "$(id -u)" -eq 0 ] || _skip "needs root"
}

# requires_dev PATH...: skip unless every device node exists.
requires_dev ()
{
  local d
  for d in "$@"; do
    [ -e "$d" ] || _skip "$d does not exist"
  done
}

# The nbd Python module (python3-libnbd) is installed for Debian's
# python3; another python3 may come first on PATH.
requires_nbdsh ()
{
  requires nbdkit
  PATH=/usr/bin:$PATH command -v nbdsh >/dev/null 2>&1 || _skip "nbdsh not found"
  /usr/bin/python3 -c 'import nbd' 2>/dev/null ||
    _skip "Python module nbd (python3-libnbd) not found"
}

# The plugin is built by the same `meson test` run: if it is missing, the
# build is broken, which is a failure, not a skip.
requires_plugin ()
{
  requires nbdkit
  if [ ! -f "$PLUGIN" ]; then
    echo "$0: plugin not found: $PLUGIN (build it first)" >&2
    exit 1
  fi
}

# ---- files ---------------------------------------------------------------

# make_tmpdir: create $tmpdir, named after the test, removed on exit.
make_tmpdir ()
{
  tmpdir="${TMPDIR:-/tmp}/subpage-$(basename "$0" .sh).$$"
  # --one-file-system: never descend into a mount left behind by accident.
  cleanup_fn rm -rf --one-file-system "$tmpdir"
  mkdir "$tmpdir"
}

# ---- nbdkit --------------------------------------------------------------

# The environment nbdkit (and only nbdkit) runs with.
_nbdkit_env=()
if [ -n "${NBDKIT_PRELOAD:-}" ]; then
  _nbdkit_env+=("LD_PRELOAD=$NBDKIT_PRELOAD")
fi
if [ -n "${NBDKIT_ASAN_OPTIONS:-}" ]; then
  _nbdkit_env+=("ASAN_OPTIONS=$NBDKIT_ASAN_OPTIONS")
fi
if [ -n "${NBDKIT_UBSAN_OPTIONS:-}" ]; then
  _nbdkit_env+=("UBSAN_OPTIONS=$NBDKIT_UBSAN_OPTIONS")
fi
if [ -n "${NBDKIT_TSAN_OPTIONS:-}" ]; then
  _nbdkit_env+=("TSAN_OPTIONS=$NBDKIT_TSAN_OPTIONS")
fi

declare -A _nbdkit_pid=()     # pidfile -> PID
_nbdkit_stopped=" "           # PIDs already stopped and reaped

# nbdkit_cmd ARGS...: run nbdkit in the foreground of the caller, with
# the sanitizer environment applied to nbdkit only, for at most 120 s
# (status 124 after that).  Use it for servers that exit by themselves
# (--run, or a configuration error).
nbdkit_cmd ()
{
  timeout 120 env "${_nbdkit_env[@]}" nbdkit "$@"
}

# _pid_running PID: the process exists and is not a zombie.
_pid_running ()
{
  local state
  kill -0 "$1" 2>/dev/null || return 1
  state=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) || return 1
  [ "$state" != Z ]
}

# _wait_pid PID SECONDS: wait until PID has exited; 1 on timeout.
_wait_pid ()
{
  local pid=$1 i
  for (( i = 0; i < $2 * 10; i++ )); do
    _pid_running "$pid" || return 0
    sleep 0.1
  done
  return 1
}

# start_nbdkit -P PIDFILE -U SOCKET ARGS...: start nbdkit in the
# background (-f, so it stays our child and `wait` can give its exit
# status), wait until it has written PIDFILE and created SOCKET, and
# register a cleanup that kills exactly that PID.  ARGS usually start
# with "$PLUGIN".  Sets $nbdkit_pid.
start_nbdkit ()
{
  if [ $# -lt 4 ] || [ "$1" != -P ] || [ "$3" != -U ]; then
    echo "usage: start_nbdkit -P PIDFILE -U SOCKET ARGS..." >&2
    return 1
  fi
  local pidfile=$2 sock=$4 pid i status
  shift 4
  rm -f "$pidfile" "$sock"    # nbdkit leaves its socket behind

  # A simple command run in the background is exec'd by the forked
  # shell, and env execs nbdkit: $! is nbdkit's own PID.
  env "${_nbdkit_env[@]}" \
      nbdkit -f --exit-with-parent -P "$pidfile" -U "$sock" "$@" &
  pid=$!
  cleanup_fn _kill_nbdkit "$pid"

  for (( i = 0; i < 600; i++ )); do
    if ! _pid_running "$pid"; then
      status=0
      wait "$pid" || status=$?
      _nbdkit_stopped+="$pid "
      echo "$0: nbdkit exited with status $status before it was ready" >&2
      return 1
    fi
    [ -s "$pidfile" ] && [ -S "$sock" ] && break
    sleep 0.1
  done
  if [ "$i" -eq 600 ]; then
    echo "$0: nbdkit (PID $pid) not ready after 60 s" >&2
    return 1
  fi
  if [ "$(cat "$pidfile")" != "$pid" ]; then
    echo "$0: $pidfile holds $(cat "$pidfile"), expected $pid" >&2
    return 1
  fi
  _nbdkit_pid[$pidfile]=$pid
  nbdkit_pid=$pid
}

# stop_nbdkit PIDFILE [SECONDS]: send SIGTERM to the nbdkit started with
# PIDFILE, wait for it to exit (60 s by default) and return its exit
# status (124 if it had to be killed), saying so when it is not 0.
stop_nbdkit ()
{
  local pid=${_nbdkit_pid[$1]:-} status=0
  if [ -z "$pid" ]; then
    echo "$0: stop_nbdkit: no nbdkit was started with $1" >&2
    return 1
  fi
  kill -TERM "$pid"
  if ! _wait_pid "$pid" "${2:-60}"; then
    echo "$0: nbdkit (PID $pid) still running ${2:-60} s after SIGTERM" >&2
    kill -KILL "$pid"
    status=124
  fi
  if [ "$status" -eq 0 ]; then
    wait "$pid" || status=$?
  else
    wait "$pid" || :
  fi
  _nbdkit_stopped+="$pid "
  if [ "$status" -ne 0 ]; then
    echo "$0: nbdkit (PID $pid) exited with status $status after SIGTERM" >&2
  fi
  return "$status"
}

# stop_nbdkit_ok PIDFILE SECONDS: stop_nbdkit, and fail the test unless
# nbdkit exited with status 0 within SECONDS.
stop_nbdkit_ok ()
{
  local status=0
  stop_nbdkit "$1" "$2" || status=$?
  if [ "$status" -ne 0 ]; then
    echo "FAIL: subpage exited with status $status after SIGTERM" >&2
    exit 1
  fi
}

# reap_killed PID: wait for an nbdkit started with start_nbdkit that the
# test killed itself (SIGKILL), quietly (bash reports "Killed").
reap_killed ()
{
  { wait "$1"; } 2>/dev/null || :
  _nbdkit_stopped+="$1 "
}

# Cleanup of start_nbdkit: the same as stop_nbdkit, unless already done.
_kill_nbdkit ()
{
  local pid=$1
  case "$_nbdkit_stopped" in *" $pid "*) return 0 ;; esac
  _nbdkit_stopped+="$pid "
  if _pid_running "$pid"; then
    kill -TERM "$pid"
    if ! _wait_pid "$pid" 30; then
      echo "$0: nbdkit (PID $pid) ignored SIGTERM, killing it" >&2
      kill -KILL "$pid"
    fi
  fi
  wait "$pid" 2>/dev/null || :
}

# ---- clients -------------------------------------------------------------

# check_client STATUS: STATUS of a client run as `timeout 60 CLIENT ||
# status=$?`.  On failure, exit the test: with 1 and "the client hung"
# for 124 (timeout), else with STATUS.
check_client ()
{
  if [ "$1" -eq 124 ]; then
    echo "FAIL: the client hung (killed after 60 s)" >&2
    exit 1
  elif [ "$1" -ne 0 ]; then
    exit "$1"
  fi
}

# dump_stacks PID...: print every thread's stack of each PID (nbdkit
# processes a test found hung) to stderr, before the cleanup continues
# or stops anything, so that a hang seen once shows where it waited.
# Bounded: a gdb that cannot attach gives up within 60 s.
dump_stacks ()
{
  local p
  for p in "$@"; do
    echo "--- threads of PID $p:" >&2
    if ! command -v gdb > /dev/null; then
      echo "(no gdb: scripts/packages-test.txt lists it)" >&2
      continue
    fi
    timeout 60 gdb -q -batch -p "$p" -ex 'thread apply all bt' \
      < /dev/null 2>&1 | grep -v '^\[New LWP\|^Download' >&2 || true
  done
}

# start_remote ARGS...: start_nbdkit for a remote the plugin talks to
# (not the plugin), without the sanitizer runtime and options: the
# shell scripts of nbdkit's eval plugin crash under the TSan runtime.
start_remote ()
{
  local saved=("${_nbdkit_env[@]}") status=0
  _nbdkit_env=()
  start_nbdkit "$@" || status=$?
  _nbdkit_env=("${saved[@]}")
  return "$status"
}

# start_held_remote PIDFILE SOCK IMG FIFO: a remote (start_remote) that
# serves IMG (made 4 MiB here) with nbdkit's eval plugin, multi-conn,
# flush and no FUA, one thread per connection (--threads=1: nbdkit
# 1.32's raw_send_socket assertion, see test-backend-timeout.sh).  Its
# first pwrite creates $tmpdir/held, blocks until the test writes a
# line to FIFO (made here), then writes its data and creates
# $tmpdir/late-done.  A cleanup releases it, so a failing test ends
# quickly.
start_held_remote ()
{
  local pidfile=$1 sock=$2 img=$3 fifo=$4
  mkfifo "$fifo"
  truncate -s 4M "$img"
  start_remote -P "$pidfile" -U "$sock" --threads=1 eval \
    thread_model='echo parallel' \
    get_size="echo $((4 * 1024 * 1024))" \
    can_write='exit 0' can_flush='exit 0' can_multi_conn='exit 0' \
    can_fua='echo none' \
    flush='sync' \
    pread="env -u LD_PRELOAD dd if=$img skip=\$4 count=\$3 iflag=skip_bytes,count_bytes status=none" \
    pwrite="held=; if mkdir $tmpdir/held 2>/dev/null; then held=1; read x < $fifo; fi; env -u LD_PRELOAD dd of=$img seek=\$4 oflag=seek_bytes conv=notrunc status=none; if [ -n \"\$held\" ]; then : > $tmpdir/late-done; fi"
  cleanup_fn _release_held "$fifo"
}

_release_held ()
{
  timeout 5 sh -c "echo go > '$1'" 2>/dev/null || :
}

# nbdsh_py ARGS...: nbdsh with Debian's python3 (which has the nbd module).
# start_file_remote PIDFILE SOCK IMAGE [FILTER-ARGS...] -- [EVAL-ARGS...]:
# writes a 4 MiB IMAGE (bytes 0..255 repeated) and serves it as a remote
# with nbdkit's eval plugin, which advertises only what EVAL-ARGS say
# (can_write, can_flush, can_trim, can_multi_conn, ...) and a filter's
# parameters (logfile=).  Arguments before "--" go to nbdkit before the
# plugin name (--filter=log).  dd
# runs without the sanitizer runtime that start_nbdkit preloads into
# nbdkit (ASan rejects an aligned_alloc that dd makes).
start_file_remote ()
{
  local pidfile=$1 sock=$2 img=$3 pre=()
  shift 3
  while [ $# -gt 0 ] && [ "$1" != -- ]; do pre+=("$1"); shift; done
  [ $# -gt 0 ] && shift
  /usr/bin/python3 -c '
import sys
sys.stdout.buffer.write(bytes(range(256)) * (4 * 1024 * 1024 // 256))
' > "$img"
  start_nbdkit -P "$pidfile" -U "$sock" "${pre[@]}" eval \
    get_size="echo $((4 * 1024 * 1024))" \
    pread="env -u LD_PRELOAD dd if=$img skip=\$4 count=\$3 iflag=skip_bytes,count_bytes status=none" \
    pwrite="env -u LD_PRELOAD dd of=$img seek=\$4 oflag=seek_bytes conv=notrunc status=none" \
    "$@"
}

nbdsh_py ()
{
  PATH=/usr/bin:$PATH nbdsh "$@"
}

# metric SOCKET NAME: the value of subpage_NAME from metrics-socket=SOCKET,
# as an integer (empty if the socket does not answer or has no such
# metric).
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

# nbd_uri SOCKET: the NBD URI of a server on a unix socket.
nbd_uri ()
{
  echo "nbd+unix:///?socket=$1"
}

# ---- FUSE and loop devices (root) ----------------------------------------

declare -A _nbdfuse_pid=()    # mount directory -> PID

# start_nbdfuse DIR SOCKET [nbdfuse options...]: expose the export on
# SOCKET as the file DIR/disk (set in $nbdfuse_file).  The cleanup
# unmounts DIR with fusermount3 -u and waits for nbdfuse to exit.
start_nbdfuse ()
{
  local dir=$1 sock=$2 pid i
  shift 2
  mkdir -p "$dir"
  rm -f "$dir.pid"
  nbdfuse -P "$dir.pid" "$@" "$dir/disk" --unix "$sock" &
  pid=$!
  _nbdfuse_pid[$dir]=$pid
  cleanup_fn _stop_nbdfuse "$dir" "$pid"
  for (( i = 0; i < 300; i++ )); do
    if ! _pid_running "$pid"; then
      echo "$0: nbdfuse exited before it was ready" >&2
      return 1
    fi
    [ -s "$dir.pid" ] && [ -e "$dir/disk" ] && break
    sleep 0.1
  done
  if [ "$i" -eq 300 ]; then
    echo "$0: nbdfuse (PID $pid) not ready after 30 s" >&2
    return 1
  fi
  nbdfuse_file=$dir/disk
}

# stop_nbdfuse DIR: unmount DIR now and wait for nbdfuse to exit (which
# closes its connections: an idle client keeps nbdkit from exiting).
stop_nbdfuse ()
{
  _stop_nbdfuse "$1" "${_nbdfuse_pid[$1]}"
}

_stop_nbdfuse ()
{
  local dir=$1 pid=$2 i
  # A loop device just detached may still hold the file for a moment.
  for (( i = 0; i < 100; i++ )); do
    grep -qF " $dir fuse" /proc/self/mounts || break
    fusermount3 -u "$dir" 2>/dev/null && break
    sleep 0.1
  done
  if grep -qF " $dir fuse" /proc/self/mounts; then
    fusermount3 -u "$dir"       # once more, to show the error
    return 1
  fi
  if ! _wait_pid "$pid" 30; then
    echo "$0: nbdfuse (PID $pid) still running after unmount" >&2
    return 1
  fi
  wait "$pid" 2>/dev/null || :
}

# attach_loop FILE [losetup options...]: attach FILE to a free loop
# device and set $loopdev.  The cleanup detaches every loop device
# backed by FILE, so it can be registered before the device exists.
attach_loop ()
{
  local file=$1
  shift
  cleanup_fn detach_loops "$file"
  loopdev=$(losetup --find --show "$@" "$file")
}

# detach_loops FILE: detach every loop device backed by FILE.  (When FILE
# is gone, e.g. its FUSE mount is unmounted, nothing can be backed by it:
# a mount with an attached loop device cannot be unmounted.)
detach_loops ()
{
  local dev
  [ -e "$1" ] || return 0
  for dev in $(losetup --noheadings --output NAME --associated "$1"); do
    losetup --detach "$dev" || return 1
  done
}

# fsck_clean DEV: e2fsck -fn finds nothing to fix, and the journal needs
# no recovery (e2fsck -fn skips the recovery of a filesystem that was
# not unmounted cleanly, and its check of what is left can pass: seen
# with nbdkit killed instead of stopped, the copied tree then missing).
fsck_clean ()
{
  local out status=0
  out=$(e2fsck -fn "$1" 2>&1) || status=$?
  echo "$out"
  if [ "$status" -ne 0 ]; then
    echo "FAIL: e2fsck -fn $1: status $status" >&2
    exit 1
  fi
  if grep -qi "journal recovery" <<< "$out" ||
     dumpe2fs -h "$1" 2>/dev/null | grep -q "^Filesystem features:.*needs_recovery"; then
    echo "FAIL: $1: the journal needs recovery (not unmounted cleanly, or data lost)" >&2
    exit 1
  fi
}

# mount_fs DEV DIR [mount options...]: mount DEV on DIR; the cleanup
# unmounts DIR if it is still mounted.
mount_fs ()
{
  local dev=$1 dir=$2
  shift 2
  mkdir -p "$dir"
  cleanup_fn umount_if_mounted "$dir"
  mount "$@" "$dev" "$dir"
}

umount_if_mounted ()
{
  if mountpoint -q "$1"; then
    umount "$1"
  fi
}
