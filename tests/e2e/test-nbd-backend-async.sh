#!/usr/bin/env bash
# The remote NBD backend's asynchronous write-back (aio_pwrite): many
# writes in flight at the remote at once, and a remote that dies while
# they are.
#
# 1. Parallel: the remote delays every write by 100 ms (delay filter,
#    with the log filter outside it, so a write is logged when it
#    arrives and again when it returns).  64 scattered 4 KiB writes
#    (dirty-expire-ms is an hour and the dirty pages, 4 MiB, are below
#    the background threshold: nothing is written before the flush),
#    then one flush: it takes well under 64 x 100 ms (< 2 s), the remote
#    then holds every write (read over a connection of its own), and its
#    log shows at least 8 writes in flight at once.  Written one after
#    another (one per write-back thread, the synchronous path) it would
#    take 6.4 s.
# 2. Remote killed mid-flush: the remote delays every write by 2 s.
#    16 scattered writes, a flush started (aio_flush), and once the
#    remote's log shows 8 writes arrived and none returned, the remote is
#    killed (SIGKILL, by PID).  The flush fails with EIO within 5 s of
#    the kill (a hang, or writes retried one by one, would take 2 s x 16;
#    every client call runs under `timeout` as well); the cached data is
#    still read back; a second flush fails with EIO too; after SIGTERM
#    subpage exits within 30 s with status 0 (see
#    test-fault-remote-gone.sh for why 0).

source "$(dirname "$0")/../functions.sh"
set -euo pipefail

requires_plugin
requires_nbdsh
requires timeout
make_tmpdir

bsock=$tmpdir/backend.sock
bpid=$tmpdir/backend.pid
blog=$tmpdir/backend.log
sock=$tmpdir/nbd.sock
pid=$tmpdir/nbdkit.pid
log=$tmpdir/subpage.log

show_logs () {
  [ -e "$tmpdir/passed" ] && return 0
  echo "--- subpage's log:"; cat "$log" 2>/dev/null || :
  echo "--- the remote's log (last 40 lines):"; tail -n 40 "$blog" 2>/dev/null || :
} >&2
cleanup_fn show_logs

# ---- 1. writes go out in parallel ------------------------------------

start_nbdkit -P "$bpid" -U "$bsock" --filter=log --filter=delay \
             memory 64M wdelay=100ms logfile="$blog"
export BURI=$(nbd_uri "$bsock") URI=$(nbd_uri "$sock") BLOG=$blog
start_nbdkit -P "$pid" -U "$sock" "$PLUGIN" uri="$BURI" \
             cache-size=32M dirty-expire-ms=3600000 dirty-background-ratio=50 dirty-ratio=80 2>"$log"

timeout 60 /usr/bin/env PATH=/usr/bin:$PATH nbdsh -n -c - <<'PY'
import os, random, re, time

KiB, MiB = 1024, 1024 * 1024
rng = random.Random(1)
h = nbd.NBD()
h.connect_uri(os.environ["URI"])
data = {}
for i in range(64):
    off = i * 512 * KiB + 8 * KiB          # every other 256 KiB: scattered
    data[off] = rng.randbytes(4 * KiB)
    h.pwrite(data[off], off)

def writes_logged():
    with open(os.environ["BLOG"]) as f:
        return [l for l in f if re.search(r" Write id=\d+ ", l)]
assert writes_logged() == [], "writes reached the remote before the flush"

t = time.monotonic()
h.flush()
dt = time.monotonic() - t
print("flush of 64 writes at 100 ms each: %.2f s" % dt)
assert dt < 2.0, "flush took %.2f s: the writes were not in flight together" % dt

# The remote holds every write.
r = nbd.NBD()
r.connect_uri(os.environ["BURI"])
for off, d in data.items():
    assert r.pread(len(d), off) == d, "remote lacks the write at %d" % off
r.shutdown()

# Most writes in flight at once, from the remote's log (entry, then
# "...Write id=N return").
cur = peak = n = 0
with open(os.environ["BLOG"]) as f:
    for l in f:
        if re.search(r" \.\.\.Write id=\d+ return", l):
            cur -= 1
        elif re.search(r" Write id=\d+ ", l):
            cur += 1
            n += 1
            peak = max(peak, cur)
print("remote: %d writes, at most %d in flight at once" % (n, peak))
assert n == 64, "the remote got %d writes, not 64" % n
assert peak >= 8, "at most %d writes in flight at the remote" % peak
h.shutdown()
PY

stop_nbdkit "$pid" 30
stop_nbdkit "$bpid" 30
echo "ok: 64 writes went out in parallel"

# ---- 2. the remote dies with writes in flight ------------------------

: >"$blog"
start_nbdkit -P "$bpid" -U "$bsock" --filter=log --filter=delay \
             memory 64M wdelay=2 logfile="$blog"
export BACKEND_PID=$nbdkit_pid
backend_pid=$nbdkit_pid
: >"$log"
start_nbdkit -P "$pid" -U "$sock" "$PLUGIN" uri="$BURI" \
             cache-size=32M dirty-expire-ms=3600000 dirty-background-ratio=50 dirty-ratio=80 2>"$log"

status=0
timeout 60 /usr/bin/env PATH=/usr/bin:$PATH nbdsh -n -c - <<'PY' || status=$?
import os, random, re, signal, time

KiB, MiB = 1024, 1024 * 1024
rng = random.Random(2)
h = nbd.NBD()
h.connect_uri(os.environ["URI"])
data = {}
for i in range(16):
    off = i * MiB + 4 * KiB
    data[off] = rng.randbytes(4 * KiB)
    h.pwrite(data[off], off)

def in_flight():
    arrived = returned = 0
    with open(os.environ["BLOG"]) as f:
        for l in f:
            if re.search(r" \.\.\.Write id=\d+ return", l):
                returned += 1
            elif re.search(r" Write id=\d+ ", l):
                arrived += 1
    return arrived, returned

cookie = h.aio_flush()
t0 = time.monotonic()
while True:
    arrived, returned = in_flight()
    if arrived >= 8:
        break
    assert time.monotonic() - t0 < 10, "only %d writes reached the remote" % arrived
    h.poll(10)
assert returned == 0, "%d writes returned before the kill" % returned
assert not h.aio_command_completed(cookie), "flush done with writes in flight"
print("ok: %d writes in flight at the remote, flush pending" % arrived)

pid = int(os.environ["BACKEND_PID"])
os.kill(pid, signal.SIGKILL)
tkill = time.monotonic()
while True:
    try:
        if h.aio_command_completed(cookie):
            raise AssertionError("the flush succeeded without the remote")
    except nbd.Error as e:
        assert e.errno == "EIO", "flush failed with %s, not EIO: %s" \
            % (e.errno, e.string)
        break
    assert time.monotonic() - tkill < 5, "flush still pending 5 s after the kill"
    h.poll(50)
print("ok: the flush failed with EIO %.2f s after the kill"
      % (time.monotonic() - tkill))

# Cached data is still served.
for off, d in data.items():
    t = time.monotonic()
    assert h.pread(len(d), off) == d, "cached data lost at %d" % off
    assert time.monotonic() - t < 5
t = time.monotonic()
try:
    h.flush()
except nbd.Error as e:
    assert e.errno == "EIO", e.errno
else:
    raise AssertionError("second flush succeeded without the remote")
assert time.monotonic() - t < 5, "second flush took %.1f s" % (time.monotonic() - t)
print("ok: cached data served, second flush fails with EIO")
h.shutdown()
PY
check_client "$status"
reap_killed "$backend_pid"

stop_nbdkit_ok "$pid" 30
echo "ok: subpage exited cleanly after SIGTERM"
touch "$tmpdir/passed"
