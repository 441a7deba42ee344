#!/usr/bin/env bash
# Same-host safety parameters (man page, SAME-HOST CLIENTS):
#   io-flusher=true  prctl(PR_SET_IO_FLUSHER) in .after_fork: with
#                    CAP_SYS_RESOURCE the server starts, says so with -v,
#                    and every thread of it has PF_MEMALLOC_NOIO (field 9
#                    of /proc/PID/task/TID/stat, bit 0x00080000, the
#                    flag PR_SET_IO_FLUSHER sets); a server without the
#                    parameter has it on no thread.  Without the
#                    capability (as nobody, and as a root that lacks it)
#                    nbdkit fails at startup naming io-flusher and
#                    CAP_SYS_RESOURCE.
#   mlock=true       mlockall in .after_fork: as root the whole cache is
#                    resident and locked (VmLck, VmRSS >= cache-size,
#                    while a server without it stays far below); as
#                    nobody with a 64 KiB RLIMIT_MEMLOCK nbdkit fails at
#                    startup naming mlock.
#   Both are checked in .get_ready, before nbdkit forks: in daemon mode
#   (no -f) without the privilege (root with an empty bounding set, and
#   RLIMIT_MEMLOCK 0 for mlock) nbdkit exits non-zero naming the
#   parameter, and leaves no server, pidfile or socket.
#   io-flusher=maybe is rejected by name.
# Under AddressSanitizer (NBDKIT_PRELOAD holds libasan) mlockall is
# intercepted and does nothing, so only "starts and logs it" is checked
# for a successful mlock there; the full check runs in a build without
# ASan (meson test -C build).  The failures are checked in every build.

source "$(dirname "$0")/../functions.sh"
set -euo pipefail

requires_plugin
requires_root
requires nbdinfo setpriv prlimit
make_tmpdir

img=$tmpdir/disk.img
sock=$tmpdir/nbd.sock
pid=$tmpdir/nbdkit.pid
log=$tmpdir/nbdkit.log
truncate -s 64M "$img"

# The unprivileged runs need a socket directory nobody can write, and
# must be able to read the plugin (and the sanitizer libraries).
udir=$tmpdir/u
mkdir -m 1777 "$udir"
chmod 755 "$tmpdir"
chmod 644 "$img"
as_nobody=(setpriv --reuid=nobody --regid=nogroup --clear-groups)
for f in "$PLUGIN" ${NBDKIT_PRELOAD:+${NBDKIT_PRELOAD//:/ }}; do
  "${as_nobody[@]}" test -r "$f" ||
    _skip "user nobody cannot read $f (build outside a private directory)"
done

# has_cap BIT: this shell's effective capability set has BIT.
has_cap ()
{
  local eff
  eff=$(awk '/^CapEff:/ { print $2 }' /proc/self/status)
  (( (16#$eff >> $1) & 1 ))
}
CAP_IPC_LOCK=14
CAP_SYS_RESOURCE=24

asan=false
case "${NBDKIT_PRELOAD:-}" in *libasan*) asan=true ;; esac

# noio_threads PID: prints "N M": threads of PID, and how many of them
# have PF_MEMALLOC_NOIO (0x00080000, include/linux/sched.h).
noio_threads ()
{
  local t n=0 m=0 flags
  for t in /proc/"$1"/task/*; do
    # Field 9 is the flags word; the command name (field 2) is
    # "(nbdkit)", without blanks.
    # (A connection thread may exit while we look: skip it.)
    flags=$(awk '{ print $9 }' "$t/stat" 2>/dev/null) || continue
    [ -n "$flags" ] || continue
    n=$((n + 1))
    (( flags & 0x00080000 )) && m=$((m + 1))
  done
  echo "$n $m"
}

# expect_fail_as_nobody WORD... -- ARGS...: nbdkit run as nobody (with
# the given prlimit options before --) exits non-zero, and its
# messages contain every WORD.
expect_fail_as_nobody ()
{
  local words=() limits=() status=0 w
  while [ "$1" != -- ]; do words+=("$1"); shift; done
  shift
  while [ "$1" != -- ]; do limits+=("$1"); shift; done
  shift
  rm -f "$udir/nbd.sock"
  [ ${#limits[@]} -eq 0 ] || limits=(prlimit "${limits[@]}" --)
  timeout 60 "${limits[@]}" "${as_nobody[@]}" \
    env "${_nbdkit_env[@]}" nbdkit -f -U "$udir/nbd.sock" "$@" \
    > "$log" 2>&1 || status=$?
  cat "$log"
  if [ "$status" -eq 0 ] || [ "$status" -eq 124 ]; then
    echo "$0: nbdkit $* as nobody: status $status, expected a failure" >&2
    exit 1
  fi
  for w in "${words[@]}"; do
    if ! grep -qF -- "$w" "$log"; then
      echo "$0: nbdkit $* as nobody: no '$w' in its messages" >&2
      exit 1
    fi
  done
}

# expect_fail_daemon WORD... -- PRLIMIT_OPTS... -- ARGS...: nbdkit in
# daemon mode (no -f, with a pidfile), as root without any capability
# (setpriv empties the bounding set, so nbdkit gets none at exec) and
# with the given prlimit options, exits non-zero, names every WORD, and
# leaves no server, pidfile or socket: the checks run before the fork.
expect_fail_daemon ()
{
  local words=() limits=() status=0 w p
  local dpid=$tmpdir/daemon.pid dsock=$tmpdir/daemon.sock
  while [ "$1" != -- ]; do words+=("$1"); shift; done
  shift
  while [ "$1" != -- ]; do limits+=("$1"); shift; done
  shift
  rm -f "$dpid" "$dsock"
  [ ${#limits[@]} -eq 0 ] || limits=(prlimit "${limits[@]}" --)
  timeout 60 "${limits[@]}" setpriv --inh-caps=-all --bounding-set=-all \
    env "${_nbdkit_env[@]}" nbdkit -P "$dpid" -U "$dsock" "$@" \
    > "$log" 2>&1 || status=$?
  cat "$log"
  if [ "$status" -eq 0 ] || [ "$status" -eq 124 ]; then
    echo "$0: daemon nbdkit $*: status $status, expected a failure" >&2
    exit 1
  fi
  for w in "${words[@]}"; do
    grep -qF -- "$w" "$log" ||
      { echo "$0: daemon nbdkit $*: no '$w' in its messages" >&2; exit 1; }
  done
  if [ -e "$dpid" ] || [ -e "$dsock" ]; then
    echo "$0: daemon nbdkit $*: left a pidfile or a socket" >&2
    exit 1
  fi
  # No process of ours still has the socket path on its command line.
  for p in /proc/[0-9]*; do
    if tr '\0' ' ' < "$p/cmdline" 2>/dev/null | grep -qF -- "$dsock"; then
      echo "$0: daemon nbdkit $*: a server is left: ${p#/proc/}" >&2
      exit 1
    fi
  done
  echo "ok: daemon mode fails before the fork: $*"
}

# ---- io-flusher ----------------------------------------------------------

# Baseline: without the parameter no thread has the flag.
start_nbdkit -P "$pid" -U "$sock" "$PLUGIN" file="$img" cache-size=16M
nbdinfo --size "$(nbd_uri "$sock")" >/dev/null
read -r n m < <(noio_threads "$nbdkit_pid")
echo "default: $m of $n threads have PF_MEMALLOC_NOIO"
if [ "$m" -ne 0 ]; then
  echo "$0: PF_MEMALLOC_NOIO set without io-flusher=true" >&2
  exit 1
fi
stop_nbdkit "$pid"

if has_cap "$CAP_SYS_RESOURCE"; then
  start_nbdkit -P "$pid" -U "$sock" "$PLUGIN" file="$img" cache-size=16M \
    io-flusher=true -v 2>"$log"
  # A connection starts the request threads, which must inherit it.
  nbdinfo --size "$(nbd_uri "$sock")" >/dev/null
  read -r n m < <(noio_threads "$nbdkit_pid")
  echo "io-flusher=true: $m of $n threads have PF_MEMALLOC_NOIO"
  if [ "$m" -ne "$n" ] || [ "$n" -lt 2 ]; then
    echo "$0: io-flusher=true: PF_MEMALLOC_NOIO on $m of $n threads" >&2
    exit 1
  fi
  stop_nbdkit "$pid"
  grep -F "subpage: io-flusher: PR_SET_IO_FLUSHER set" "$log"
else
  # Some containers drop CAP_SYS_RESOURCE even for root: then root
  # must fail exactly like an unprivileged user.
  echo "root lacks CAP_SYS_RESOURCE here: checking that it fails"
  rm -f "$sock"    # nbdkit leaves its socket behind
  status=0
  nbdkit_cmd -f -U "$sock" "$PLUGIN" file="$img" io-flusher=true \
    > "$log" 2>&1 || status=$?
  cat "$log"
  [ "$status" -ne 0 ] && [ "$status" -ne 124 ] ||
    { echo "$0: io-flusher=true without CAP_SYS_RESOURCE: status $status" >&2; exit 1; }
  grep -qF "io-flusher=true" "$log" && grep -qF "CAP_SYS_RESOURCE" "$log" ||
    { echo "$0: io-flusher=true failure does not name the parameter and capability" >&2; exit 1; }
  rm -f "$sock"
fi

expect_fail_as_nobody "io-flusher=true" "PR_SET_IO_FLUSHER" \
  "CAP_SYS_RESOURCE" -- -- "$PLUGIN" file="$img" cache-size=16M \
  io-flusher=true
expect_fail_daemon "io-flusher=true" "PR_SET_IO_FLUSHER" \
  "CAP_SYS_RESOURCE" -- -- "$PLUGIN" file="$img" cache-size=16M \
  io-flusher=true

# ---- mlock ---------------------------------------------------------------

# kib PID FIELD: a /proc/PID/status field in kB.
kib ()
{
  awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"
}

start_nbdkit -P "$pid" -U "$sock" "$PLUGIN" file="$img" cache-size=64M
rss=$(kib "$nbdkit_pid" VmRSS)
echo "default: VmRSS ${rss} kB, VmLck $(kib "$nbdkit_pid" VmLck) kB"
stop_nbdkit "$pid"
if [ "$rss" -ge 65536 ]; then
  echo "$0: baseline VmRSS $rss kB is already >= cache-size" >&2
  exit 1
fi

if has_cap "$CAP_IPC_LOCK"; then
  start_nbdkit -P "$pid" -U "$sock" "$PLUGIN" file="$img" cache-size=64M \
    mlock=true -v 2>"$log"
  nbdinfo --size "$(nbd_uri "$sock")" >/dev/null
  rss=$(kib "$nbdkit_pid" VmRSS)
  lck=$(kib "$nbdkit_pid" VmLck)
  echo "mlock=true: VmRSS ${rss} kB, VmLck ${lck} kB"
  stop_nbdkit "$pid"
  grep -F "subpage: mlock: memory locked" "$log"
  if $asan; then
    echo "ASan: mlockall is a no-op, VmRSS/VmLck not checked"
  elif [ "$rss" -lt 65536 ] || [ "$lck" -lt 65536 ]; then
    echo "$0: mlock=true: the 64 MiB cache is not resident and locked" >&2
    exit 1
  fi
else
  echo "root lacks CAP_IPC_LOCK here: mlock=true success not checked"
fi

# The check in .get_ready calls the mlockall system call itself, which
# ASan does not intercept: these run in every build.
expect_fail_as_nobody "mlock=true" "mlockall" "CAP_IPC_LOCK" -- \
  --memlock=65536:65536 -- "$PLUGIN" file="$img" cache-size=16M \
  mlock=true
expect_fail_daemon "mlock=true" "mlockall" "CAP_IPC_LOCK" -- \
  --memlock=0:0 -- "$PLUGIN" file="$img" cache-size=16M mlock=true

# ---- bad value -----------------------------------------------------------

rm -f "$sock"    # nbdkit leaves its socket behind
status=0
nbdkit_cmd -f -U "$sock" "$PLUGIN" file="$img" io-flusher=maybe \
  > "$log" 2>&1 || status=$?
cat "$log"
[ "$status" -ne 0 ] && grep -qF "io-flusher=maybe" "$log" ||
  { echo "$0: io-flusher=maybe was not rejected by name" >&2; exit 1; }
rm -f "$sock"
echo ok
