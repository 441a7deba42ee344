#!/usr/bin/env bash
# backend-timeout= under uri=: a late write whose connection dies.
#
# A closed connection does not mean its late write is gone: the process
# at the other end of the socket need not be the one that writes the
# image.  Here the remote is reached through a proxy (nbdkit's nbd
# plugin: a network hop, a front end restarted while the storage still
# holds the write):
#
#  1. the client writes A (0xAA) at offset 0 and flushes; write-back of A
#     goes through the proxy to the storage remote, whose pwrite blocks
#     on a FIFO the test holds; backend-timeout=1 passes: EIO, A dirty;
#  2. the proxy dies (SIGKILL by PID) and a new one is started on the
#     same socket: subpage's connection dies (the late write completes
#     with ENOTCONN) and is connected again (the test waits for the log
#     line); the storage still holds the old write of A;
#  3. the client writes B (0xBB) over A: three flushes fail with EIO
#     (the late write's sectors stay fenced), a read returns B, and the
#     image does not hold B; subpage logged why, once;
#  4. the test opens the FIFO: the storage carries out the old write of
#     A; a flush still fails (nothing tells subpage the write is done),
#     so B was never acknowledged as flushed and A on the image breaks
#     no promise.
# The promise (docs/guarantees.md, "A failed flush"): an older write
# that landed late never ends up over newer data that a successful
# flush covered.  An earlier version lifted the fence when the
# connection closed: a flush of B then succeeded, and A landed over it.

source "$(dirname "$0")/../functions.sh"
set -euo pipefail

requires_plugin
requires_nbdsh
requires timeout
make_tmpdir

img=$tmpdir/remote.img
esock=$tmpdir/storage.sock
epid=$tmpdir/storage.pid
psock=$tmpdir/proxy.sock
ppid=$tmpdir/proxy.pid
sock=$tmpdir/nbd.sock
pid=$tmpdir/nbdkit.pid
log=$tmpdir/subpage.log
fifo=$tmpdir/hold.fifo

# The storage remote: its first pwrite blocks on the FIFO (marks held,
# then late-done).
start_held_remote "$epid" "$esock" "$img" "$fifo"
start_remote -P "$ppid" -U "$psock" nbd socket="$esock"
proxy_pid=$nbdkit_pid

start_nbdkit -P "$pid" -U "$sock" "$PLUGIN" uri="$(nbd_uri "$psock")" \
             backend-timeout=1 connections=1 cache-size=16M \
             dirty-expire-ms=3600000 2>"$log"
show_log () { [ -e "$tmpdir/passed" ] || { echo "--- $log:"; cat "$log"; } >&2; }
cleanup_fn show_log
export URI=$(nbd_uri "$sock") IMG=$img TMP=$tmpdir FIFO=$fifo

py ()
{
  local status=0
  timeout 120 /usr/bin/env PATH=/usr/bin:$PATH nbdsh -n -c - || status=$?
  check_client "$status"
}

# 1. A's write-back is held by the storage and becomes late.
py <<'PY'
import os
h = nbd.NBD()
h.connect_uri(os.environ["URI"])
h.pwrite(b"\xaa" * 4096, 0)
try:
    h.flush()
    raise AssertionError("flush of A succeeded while the storage holds it")
except nbd.Error as e:
    assert e.errno == "EIO", e.errno
assert os.path.exists(os.environ["TMP"] + "/held"), "the storage never got A"
print("ok: step 1: flush of A failed with EIO (the storage holds A's pwrite)")
h.shutdown()
PY

# 2. The proxy dies and comes back; the storage still holds A.
kill -KILL "$proxy_pid"
reap_killed "$proxy_pid"
start_remote -P "$ppid" -U "$psock" nbd socket="$esock"
# Until subpage has connected again (one attempt a second), requests
# fail at once whatever the fence: wait for it, so that step 3 tests the
# fence.
for (( i = 0; i < 200; i++ )); do
  grep -q 'is connected again' "$log" && break
  sleep 0.1
done
grep -q 'is connected again' "$log" || {
  echo "FAIL: subpage did not connect again to the new proxy" >&2; exit 1; }

# 3. B over A: no flush covering it succeeds while A may still land.
py <<'PY'
import os, time
B = b"\xbb" * 4096
def image0():
    with open(os.environ["IMG"], "rb") as f:
        return f.read(4096)
h = nbd.NBD()
h.connect_uri(os.environ["URI"])
h.pwrite(B, 0)
for i in range(3):
    try:
        h.flush()
        raise AssertionError("a flush covering B succeeded while the storage "
                             "may still carry out the old write of A")
    except nbd.Error as e:
        assert e.errno == "EIO", e.errno
assert h.pread(4096, 0) == B
assert not os.path.exists(os.environ["TMP"] + "/late-done")
assert image0() != B, "B reached the image while A's write was pending"
print("ok: step 3: three flushes covering B failed with EIO; B reads back "
      "and is not on the image")

# 4. The storage carries out the old write of A; still fenced.
with open(os.environ["FIFO"], "w") as f:
    f.write("go\n")
deadline = time.monotonic() + 30
while not os.path.exists(os.environ["TMP"] + "/late-done"):
    assert time.monotonic() < deadline, "the storage never finished A"
    time.sleep(0.05)
try:
    h.flush()
    raise AssertionError("a flush covering B succeeded")
except nbd.Error as e:
    assert e.errno == "EIO", e.errno
assert h.pread(4096, 0) == B
print("ok: step 4: the old write of A landed; a flush covering B still "
      "fails, B still reads back")
h.shutdown()
PY
n=$(grep -c 'closed before the remote answered a late write' "$log" || true)
if [ "$n" -ne 1 ]; then
  echo "FAIL: the fenced late write was logged $n times, expected once" >&2
  exit 1
fi
# B was never flushed: stopping loses it (the status says so), and
# ends within the bound.
status=0
stop_nbdkit "$pid" 60 || status=$?
if [ "$status" -eq 124 ]; then
  echo "FAIL: subpage did not stop within 60 s of SIGTERM" >&2
  exit 1
fi
echo "ok: subpage stopped (status $status) with B fenced and unflushed"
touch "$tmpdir/passed"
