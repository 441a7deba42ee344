#!/usr/bin/env bash
# The remote NBD server dies (SIGKILL by PID) under subpage uri=.
#
# What subpage guarantees, and the test checks (see the man page,
# REMOTE BACKEND):
#  - requests that need the remote fail with EIO, and promptly: a read
#    of data that is not cached, and a flush while data is dirty (every
#    client request here runs under a time limit, and `timeout` bounds
#    the whole client, so a hang fails the test);
#  - data that is in the cache is still served: reads of data read or
#    written before the remote died return it;
#  - writes are still accepted into the cache (below the dirty limits);
#  - subpage keeps serving: a new client connects and gets the same
#    answers;
#  - on SIGTERM subpage exits within a time limit with status 0, and
#    logs that the final flush failed and unwritten data is lost (nbdkit
#    1.32 gives a plugin no way to change its exit status).

source "$(dirname "$0")/../functions.sh"
set -euo pipefail

requires_plugin
requires_nbdsh
requires timeout
make_tmpdir

bsock=$tmpdir/backend.sock
bpid=$tmpdir/backend.pid
sock=$tmpdir/nbd.sock
pid=$tmpdir/nbdkit.pid
log=$tmpdir/subpage.log

start_nbdkit -P "$bpid" -U "$bsock" memory 32M
backend_pid=$nbdkit_pid
export BURI=$(nbd_uri "$bsock") URI=$(nbd_uri "$sock")
export BACKEND_PID=$backend_pid

# subpage's messages go to $log (checked at the end, shown on failure).
start_nbdkit -P "$pid" -U "$sock" "$PLUGIN" uri="$BURI" \
             cache-size=16M dirty-expire-ms=3600000 2>"$log"
subpage_pid=$nbdkit_pid
# shown unless the test got to its end
show_log () { [ -e "$tmpdir/passed" ] || { echo "--- subpage's log:"; cat "$log"; } >&2; }
cleanup_fn show_log

status=0
timeout 60 /usr/bin/env PATH=/usr/bin:$PATH nbdsh -n -c - <<'PY' || status=$?
import os, random, signal, time

KiB, MiB = 1024, 1024 * 1024
rng = random.Random(1)
h = nbd.NBD()
h.connect_uri(os.environ["URI"])

def timed(what, fn, limit=10):
    t = time.monotonic()
    try:
        return fn()
    finally:
        dt = time.monotonic() - t
        assert dt < limit, "%s took %.1f s" % (what, dt)

def fails_eio(what, fn):
    try:
        timed(what, fn)
    except nbd.Error as e:
        assert e.errno == "EIO", "%s failed with %s, not EIO: %s" \
            % (what, e.errno, e.string)
        print("ok: %s failed: %s" % (what, e.string))
    else:
        raise AssertionError("%s succeeded without the remote" % what)

# Before: a write made durable, a region read into the cache, and a
# write left dirty.
a = rng.randbytes(1 * MiB)
h.pwrite(a, 1 * MiB)
h.flush()
b = h.pread(1 * MiB, 8 * MiB)
c = rng.randbytes(300 * KiB + 5)
h.pwrite(c, 12 * MiB + 100)

# The remote dies.
pid = int(os.environ["BACKEND_PID"])
os.kill(pid, signal.SIGKILL)
deadline = time.monotonic() + 10
while True:
    try:
        with open("/proc/%d/stat" % pid) as f:
            if f.read().split()[2] == "Z":
                break
    except FileNotFoundError:
        break
    assert time.monotonic() < deadline, "backend still alive after SIGKILL"
    time.sleep(0.05)
print("ok: remote killed")

# What is cached is still served.
assert timed("cached read", lambda: h.pread(1 * MiB, 1 * MiB)) == a
assert timed("cached read", lambda: h.pread(1 * MiB, 8 * MiB)) == b
assert timed("dirty read", lambda: h.pread(len(c), 12 * MiB + 100)) == c

# What needs the remote fails with EIO, every time.
for i in range(6):
    fails_eio("uncached read %d" % i,
              lambda: h.pread(64 * KiB, 20 * MiB + i * MiB))
fails_eio("flush with dirty data", lambda: h.flush())
fails_eio("flush again", lambda: h.flush())

# Writes are still accepted into the cache, and read back.
d = rng.randbytes(4096)
timed("write", lambda: h.pwrite(d, 1 * MiB))
assert timed("read", lambda: h.pread(4096, 1 * MiB)) == d

# A new client is served too.
h2 = nbd.NBD()
timed("connect", lambda: h2.connect_uri(os.environ["URI"]))
assert timed("cached read", lambda: h2.pread(4096, 1 * MiB)) == d
try:
    timed("uncached read", lambda: h2.pread(4096, 30 * MiB))
except nbd.Error as e:
    assert e.errno == "EIO", e.errno
else:
    raise AssertionError("uncached read on a new client succeeded")
print("ok: a new client is served")

# Idle clients keep nbdkit 1.32 from exiting: disconnect.
h.shutdown()
h2.shutdown()
PY
check_client "$status"

reap_killed "$backend_pid"

# SIGTERM: exits within 30 s, with status 0 (see the header).
stop_nbdkit_ok "$pid" 30
if ! grep -q 'final flush failed, unwritten data is lost' "$log"; then
  echo "FAIL: no 'final flush failed' message in the log" >&2
  exit 1
fi
if ! grep -q 'connection [0-9]* to the remote is lost' "$log"; then
  echo "FAIL: the lost connection was not logged" >&2
  exit 1
fi
echo "ok: subpage exited cleanly after SIGTERM and said data was lost"
touch "$tmpdir/passed"
