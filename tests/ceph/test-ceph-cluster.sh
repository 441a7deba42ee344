#!/usr/bin/env bash
# The Ceph test cluster itself (tests/ceph/cluster.sh, docs/ceph-tests.md),
# before any test of subpage relies on it:
#   - it comes up (one monitor, one OSD, pool rbd of size 1, every PG
#     active+clean), HEALTH_OK, and its daemons listen on 127.0.0.1 only;
#   - an image with exclusive-lock is created; data written with
#     `rbd bench` and `rbd import` reads back (`rbd export`) with the
#     same checksums;
#   - after an OSD restart (SIGTERM, start on the same BlueStore file)
#     both images still read back the same, also to a fresh librbd
#     client (python3-rbd);
#   - a live librbd client keeps its watch (and its exclusive lock)
#     across several watch timeouts; once it is killed with SIGKILL its
#     watch is gone within osd_client_watch_timeout (+ 3 s), and a fresh
#     client then writes the image (breaking the dead owner's lock) at
#     once; killed again and written to at once, the fresh client's
#     write waits for the watch to expire and no longer;
#   - `cluster.sh stop` stops both daemons by PID.
# Prints how long bring-up, the OSD restart and the watch expiry took.
# Skips only if the Ceph packages are missing and cannot be installed.

source "$(dirname "$0")/../functions.sh"
source "$(dirname "$0")/ceph-functions.sh"
set -euo pipefail

# (python3-rbd brings python3: ask for the packages first.)
ceph_require
requires /usr/bin/python3 sha256sum timeout
make_tmpdir

hold=$SRCDIR/tests/ceph/rbd-hold.py
watch_timeout=${CEPH_WATCH_TIMEOUT:-5}
fail () { echo "FAIL: $*" >&2; exit 1; }

# ---- bring-up -----------------------------------------------------------
ceph_start_cluster
echo "cluster up in $ceph_start_seconds s ($ceph_dir)"
"$ceph_cluster" status "$ceph_dir"
health=$(timeout 60 ceph health)
[ "$health" = HEALTH_OK ] || fail "health after start: $health"
grep -qx "osd_client_watch_timeout = $watch_timeout" "$CEPH_CONF" ||
  fail "ceph.conf does not set osd_client_watch_timeout = $watch_timeout"
pool=$(timeout 60 ceph osd pool ls detail)
grep -q "'rbd' replicated size 1 min_size 1 .*application rbd" <<<"$pool" ||
  fail "pool rbd is not size 1, min_size 1, application rbd: $pool"

# Every listening TCP socket of both daemons is on 127.0.0.1.
mon_pid=$(cat "$ceph_dir/run/mon.a.pid")
osd_pid=$(cat "$ceph_dir/run/osd.0.pid")
/usr/bin/python3 - "$mon_pid" "$osd_pid" <<'EOF'
import os, sys
inodes = {}
for pid in sys.argv[1:]:
    for fd in os.listdir("/proc/%s/fd" % pid):
        try:
            link = os.readlink("/proc/%s/fd/%s" % (pid, fd))
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes[link[8:-1]] = pid
listening = []
for table in ("/proc/net/tcp", "/proc/net/tcp6"):
    with open(table) as f:
        next(f)
        for line in f:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:       # LISTEN
                listening.append((inodes[inode], table, local))
if not listening:
    sys.exit("FAIL: the daemons listen on no TCP socket")
for pid, table, local in listening:
    addr, port = local.split(":")
    print("PID %s listens on %s port %d" % (pid, addr, int(port, 16)))
    if table != "/proc/net/tcp" or addr != "0100007F":
        sys.exit("FAIL: PID %s listens on %s, not 127.0.0.1" % (pid, local))
EOF

# ---- data ---------------------------------------------------------------
timeout 60 rbd create --size 64M --image-feature layering,exclusive-lock rbd/bench
features=$(timeout 60 rbd info rbd/bench | awk '/features:/ { $1 = ""; print }')
[ "$features" = " layering, exclusive-lock" ] ||
  fail "rbd/bench has features '$features'"
timeout 120 rbd bench --io-type write --io-size 64K --io-total 32M \
  --io-pattern rand rbd/bench >/dev/null
head -c $((48 * 1024 * 1024)) /dev/urandom > "$tmpdir/data"
truncate -s 64M "$tmpdir/data"        # 16 MiB hole at the end
timeout 120 rbd import --no-progress \
  --image-feature layering,exclusive-lock "$tmpdir/data" rbd/data

data_sum=$(sha256sum < "$tmpdir/data")
export_sum ()
{
  rm -f "$tmpdir/export"
  timeout 120 rbd export --no-progress "$1" "$tmpdir/export" >/dev/null
  sha256sum < "$tmpdir/export"
}
bench_sum=$(export_sum rbd/bench)
[ "$(export_sum rbd/data)" = "$data_sum" ] ||
  fail "rbd/data exported differs from what was imported"
[ "$bench_sum" != "$(sha256sum < <(head -c 64M /dev/zero))" ] ||
  fail "rbd bench wrote nothing"

# ---- OSD restart ----------------------------------------------------------
t0=$(date +%s%N)
"$ceph_cluster" restart-osd "$ceph_dir"
restart_seconds=$(ceph_elapsed "$t0")
echo "OSD restarted in $restart_seconds s"
[ "$(cat "$ceph_dir/run/osd.0.pid")" != "$osd_pid" ] ||
  fail "the OSD has the same PID after restart-osd"
[ "$(export_sum rbd/data)" = "$data_sum" ] ||
  fail "rbd/data differs after the OSD restart"
[ "$(export_sum rbd/bench)" = "$bench_sum" ] ||
  fail "rbd/bench differs after the OSD restart"
# A fresh librbd client reads the image.
/usr/bin/python3 - "$tmpdir/data" <<'EOF'
import hashlib, os, sys
import rados, rbd
with open(sys.argv[1], "rb") as f:
    want = hashlib.sha256(f.read()).hexdigest()
cluster = rados.Rados(conffile=os.environ["CEPH_CONF"])
cluster.connect()
ioctx = cluster.open_ioctx("rbd")
with rbd.Image(ioctx, "data", read_only=True) as image:
    h = hashlib.sha256()
    size = image.size()
    for off in range(0, size, 4 << 20):
        h.update(image.read(off, min(4 << 20, size - off)))
ioctx.close()
cluster.shutdown()
if h.hexdigest() != want:
    sys.exit("FAIL: a fresh librbd client reads other data after the restart")
print("fresh librbd client read rbd/data: same sha256")
EOF

# ---- watch expiry -----------------------------------------------------------
# start_holder: rbd-hold.py holds rbd/bench open with its exclusive lock.
holder_pid=
start_holder ()
{
  local i
  /usr/bin/python3 "$hold" rbd/bench > "$tmpdir/holder.out" 2>&1 &
  holder_pid=$!
  for (( i = 0; i < 300; i++ )); do
    grep -q '^holding$' "$tmpdir/holder.out" && return 0
    _pid_running "$holder_pid" || break
    sleep 0.1
  done
  cat "$tmpdir/holder.out" >&2
  fail "rbd-hold.py did not start"
}
kill_holder ()
{
  [ -n "$holder_pid" ] || return 0
  kill -KILL "$holder_pid" 2>/dev/null || :
  { wait "$holder_pid"; } 2>/dev/null || :
  holder_pid=
}
cleanup_fn kill_holder
watchers () { timeout 60 rbd status rbd/bench | grep -c 'watcher=' || :; }
lockers () { timeout 60 rbd lock ls rbd/bench | grep -c '^client\.' || :; }

start_holder
[ "$(watchers)" -eq 1 ] || fail "no watcher while rbd-hold.py holds the image"
[ "$(lockers)" -eq 1 ] || fail "rbd-hold.py holds no exclusive lock"
# Alive, it keeps its watch over more than two watch timeouts.
end=$(( $(date +%s) + 2 * watch_timeout + 2 ))
while [ "$(date +%s)" -lt "$end" ]; do
  [ "$(watchers)" -eq 1 ] || fail "a live client lost its watch"
  sleep 0.5
done
! grep -q 'watch failed\|handle_error' "$tmpdir/holder.out" ||
  fail "the live client's watch failed: $(cat "$tmpdir/holder.out")"

kill_holder
t0=$(date +%s%N)
while [ "$(watchers)" -ne 0 ]; do
  [ $(( ($(date +%s%N) - t0) / 1000000000 )) -le $((watch_timeout + 3)) ] ||
    fail "the killed client's watch still there after $((watch_timeout + 3)) s"
  sleep 0.2
done
expiry_seconds=$(ceph_elapsed "$t0")
echo "watch of the killed client gone after $expiry_seconds s (osd_client_watch_timeout $watch_timeout)"
[ "$(lockers)" -eq 1 ] || fail "the dead client's lock went away by itself"
out=$(timeout 60 /usr/bin/python3 "$hold" --write rbd/bench 5a)
echo "fresh client after the watch expired: $out"
[ "$(lockers)" -eq 0 ] || fail "a lock is left after the fresh client closed"
timeout 60 ceph osd blocklist ls 2>&1 | grep -q 'listed 1 entries' ||
  fail "the dead client was not blocklisted when its lock was broken"

# Killed and written to at once: the write waits for the watch to expire.
start_holder
kill_holder
out=$(timeout 60 /usr/bin/python3 "$hold" --write rbd/bench 3c)
echo "fresh client right after the kill: $out"
took=$(awk '{ print $2 }' <<<"$out")
awk -v t="$took" -v m="$((watch_timeout + 3))" 'BEGIN { exit !(t <= m) }' ||
  fail "the fresh client waited $took s for the lock"

# ---- stop -----------------------------------------------------------------
osd_pid=$(cat "$ceph_dir/run/osd.0.pid")
"$ceph_cluster" stop "$ceph_dir"
for pid in "$mon_pid" "$osd_pid"; do
  ! _pid_running "$pid" || fail "PID $pid still runs after cluster.sh stop"
done
echo "timings: bring-up $ceph_start_seconds s, OSD restart $restart_seconds s, watch expiry $expiry_seconds s"
