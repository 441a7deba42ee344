#!/usr/bin/env bash
# backend-timeout= under uri=: a synchronous command that becomes late
# before libnbd has taken it, and then cannot be issued.
#
# nb_issue tracks a command (nb_track, its deadline) before the libnbd
# call that issues it.  If the reader makes it late in between (it joins
# nb->late, conn->nlate counts it, the connection goes down) and the
# libnbd call then fails (the connection died meanwhile), no completion
# will ever come, yet nb_issue only untracks a command that is still
# tracked: the late command stays on nb->late and in conn->nlate while
# nb_sync_held frees it (a dangling entry that nb_fenced walks), and
# the reader's nb_conn_drop asserts conn->nlate == 0 before connecting
# again.
#
# Deterministic, with a park point in libnbd (tests/nbd-park-shim.c,
# preloaded into subpage's nbdkit only):
#  1. a client reads offset 0 (not cached): subpage's request thread
#     tracks the read and parks inside nbd_aio_pread;
#  2. backend-timeout=1 passes: the reader makes the read late (logged);
#  3. the test kills the remote (SIGKILL by PID); the shim lets the
#     read go on once the handle is dead: nbd_aio_pread fails;
#  4. the client's read fails with EIO; the remote is started again on
#     the same socket and reads through subpage work again within 30 s;
#     subpage stops cleanly.

source "$(dirname "$0")/../functions.sh"
set -euo pipefail

requires_plugin
requires_nbdsh
requires timeout
make_tmpdir

: "${PARK_SHIM:=$BUILDDIR/tests/nbd-park-shim.so}"
if [ ! -e "$PARK_SHIM" ]; then
  echo "$0: $PARK_SHIM not built" >&2
  exit 1
fi

bsock=$tmpdir/backend.sock
bpid=$tmpdir/backend.pid
sock=$tmpdir/nbd.sock
pid=$tmpdir/nbdkit.pid
log=$tmpdir/subpage.log
park=$tmpdir/park
mkdir "$park"

start_remote -P "$bpid" -U "$bsock" memory 4M
backend_pid=$nbdkit_pid

saved_env=("${_nbdkit_env[@]}")
preload=$PARK_SHIM
for e in "${_nbdkit_env[@]}"; do
  case "$e" in LD_PRELOAD=*) preload="${e#LD_PRELOAD=}:$PARK_SHIM" ;; esac
done
_nbdkit_env=()
for e in "${saved_env[@]}"; do
  case "$e" in LD_PRELOAD=*) ;; *) _nbdkit_env+=("$e") ;; esac
done
_nbdkit_env+=("LD_PRELOAD=$preload" "SUBPAGE_PARK_DIR=$park")
start_nbdkit -P "$pid" -U "$sock" "$PLUGIN" uri="$(nbd_uri "$bsock")" \
             backend-timeout=1 connections=1 cache-size=16M 2>"$log"
subpage_pid=$nbdkit_pid
_nbdkit_env=("${saved_env[@]}")
show_log () { [ -e "$tmpdir/passed" ] || { echo "--- $log:"; cat "$log"; } >&2; }
cleanup_fn show_log
# Never leave the request thread parked.
cleanup_fn touch "$park/go"
uri=$(nbd_uri "$sock")

wait_for ()
{
  local i
  for (( i = 0; i < 600; i++ )); do
    eval "$1" && return 0
    if ! kill -0 "$subpage_pid" 2>/dev/null; then
      echo "FAIL: subpage died while waiting for: $2" >&2
      exit 1
    fi
    sleep 0.1
  done
  echo "FAIL: timed out waiting for: $2" >&2
  exit 1
}

# 1. The read parks in nbd_aio_pread, tracked.
touch "$park/arm"
timeout 120 /usr/bin/env PATH=/usr/bin:$PATH nbdsh -u "$uri" -c '
try:
    h.pread(4096, 0)
    print("read-ok")
except nbd.Error as e:
    print("read-" + str(e.errno))
' > "$tmpdir/read1.out" 2>&1 &
reader=$!
wait_for '[ -d "$park/parked" ]' "the read to park"
# 2. The reader makes it late.
wait_for 'grep -q "got no answer within backend-timeout=1" "$log"' \
  "the read to become late"
# 3. The remote dies; the parked read goes on once the handle is dead.
kill -KILL "$backend_pid"
reap_killed "$backend_pid"
touch "$park/go"
status=0
wait "$reader" || status=$?
echo "first read: $(cat "$tmpdir/read1.out")"
if ! grep -q '^read-EIO$' "$tmpdir/read1.out"; then
  echo "FAIL: the read made late before it was issued did not fail with EIO" >&2
  exit 1
fi
# 4. The remote is back: subpage connects again and reads work.
start_remote -P "$bpid" -U "$bsock" memory 4M
status=0
timeout 120 /usr/bin/env PATH=/usr/bin:$PATH nbdsh -u "$uri" -c '
import time
deadline = time.monotonic() + 30
while True:
    try:
        h.pread(4096, 8192); break
    except nbd.Error as e:
        assert e.errno == "EIO", e.errno
        assert time.monotonic() < deadline, "no read succeeded after the remote came back"
        time.sleep(0.2)
print("ok: a read succeeds after the remote came back")
' || status=$?
if ! kill -0 "$subpage_pid" 2>/dev/null; then
  echo "FAIL: subpage died (see its log: an assertion or a crash)" >&2
  exit 1
fi
check_client "$status"
stop_nbdkit_ok "$pid" 60
if grep -Eq 'Assertion|AddressSanitizer|runtime error' "$log"; then
  echo "FAIL: subpage reported an assertion or a sanitizer error" >&2
  exit 1
fi
touch "$tmpdir/passed"
