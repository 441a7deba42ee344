#!/usr/bin/env bash
# tests/ceph/cluster.sh: a throw-away single-node Ceph cluster for the
# tests, from Debian's ceph-mon, ceph-osd and ceph-common (docs/ceph-tests.md).
#
#   cluster.sh start DIR        a fresh cluster under DIR (must not exist or
#                               be empty): one monitor and one OSD on
#                               127.0.0.1, cephx, BlueStore on a sparse
#                               file, pool 'rbd' (size 1); returns when
#                               every PG of the pool is active+clean and
#                               prints the environment (also in DIR/env)
#   cluster.sh stop DIR         stop the OSD, then the monitor, by the PIDs
#                               in DIR/run/*.pid (SIGTERM, SIGKILL after
#                               30 s), and wait until both have exited
#   cluster.sh restart-osd DIR  stop the OSD (SIGTERM) and start it again on
#                               the same BlueStore file; returns when the
#                               PGs are active+clean again
#   cluster.sh kill-osd DIR     SIGKILL the OSD and wait until it is gone
#   cluster.sh start-osd DIR    start a stopped OSD and wait for the PGs
#   cluster.sh status DIR       which daemons run, the health, the PGs
#   cluster.sh env DIR          print the environment (CEPH_CONF=...)
#
# Clients find the cluster with CEPH_CONF=DIR/ceph.conf (or -c); the
# conf names the admin keyring, so `rbd`, `rados`, `ceph` and librbd
# need nothing else.  No daemon is ever found or stopped by name.
#
# Tunables (environment):
#   CEPH_OSD_SIZE        size of the sparse BlueStore file (default 4G)
#   CEPH_PG_NUM          PGs of pool rbd (default 8)
#   CEPH_WATCH_TIMEOUT   osd_client_watch_timeout, seconds (default 5):
#                        a client that dies loses its watches (and so
#                        its exclusive lock can be broken) after this
#   CEPH_READY_TIMEOUT   seconds to wait for the daemons and the PGs
#                        (default 120)
#   CEPH_CLUSTER_OWNER   with start: a PID (the test's); a watchdog stops
#                        the cluster once that process has exited, even
#                        if it was killed before it could stop it
set -euo pipefail
trap 'exit 143' TERM
trap 'exit 130' INT

usage ()
{
  sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//' >&2
  exit 2
}

die ()
{
  echo "cluster.sh: $*" >&2
  exit 1
}

if ! { [ $# -eq 2 ] || { [ $# -eq 3 ] && [ "$1" = watchdog ]; }; }; then
  usage
fi
cmd=$1
dir=$2

: "${CEPH_OSD_SIZE:=4G}"
: "${CEPH_PG_NUM:=8}"
: "${CEPH_WATCH_TIMEOUT:=5}"
: "${CEPH_READY_TIMEOUT:=120}"

[ -d "$dir" ] && dir=$(cd "$dir" && pwd)
conf=$dir/ceph.conf
run=$dir/run

# Every command of ours talks to this cluster only, and gives up instead
# of hanging (a dead monitor makes `ceph` wait forever by default).
ceph_cmd ()
{
  timeout 60 ceph -c "$conf" --connect-timeout 20 "$@"
}

now () { date +%s.%N; }
elapsed () { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
t_begin=$(now)

# step MSG: log a step with the time since this command began, in
# DIR/log/cluster.sh.log (and on stderr with CEPH_CLUSTER_VERBOSE=1).
step ()
{
  local line
  line="[$(elapsed "$t_begin") s] $cmd: $*"
  [ -d "$dir/log" ] && echo "$line" >> "$dir/log/cluster.sh.log"
  [ "${CEPH_CLUSTER_VERBOSE:-0}" = 0 ] || echo "cluster.sh: $line" >&2
}

# pid_running PID: the process exists and is not a zombie.
pid_running ()
{
  local state
  kill -0 "$1" 2>/dev/null || return 1
  state=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) || return 1
  [ "$state" != Z ]
}

# daemon_pid NAME: the PID in run/NAME.pid if that process runs
# (and is a ceph daemon of this cluster: its command line names our
# conf), else nothing.
daemon_pid ()
{
  local f=$run/$1.pid pid
  [ -s "$f" ] || return 0
  pid=$(cat "$f")
  pid_running "$pid" || return 0
  tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$conf" ||
    return 0
  echo "$pid"
}

# stop_daemon NAME [SIGNAL]: stop the daemon by its PID file and wait
# until it has exited (SIGKILL after 30 s of SIGTERM).
stop_daemon ()
{
  local name=$1 sig=${2:-TERM} pid i
  pid=$(daemon_pid "$name")
  if [ -z "$pid" ]; then
    rm -f "$run/$name.pid"
    return 0
  fi
  kill -"$sig" "$pid" 2>/dev/null || :
  for (( i = 0; i < 300; i++ )); do
    pid_running "$pid" || break
    sleep 0.1
  done
  if pid_running "$pid"; then
    echo "cluster.sh: $name (PID $pid) still running 30 s after SIG$sig, killing it" >&2
    kill -KILL "$pid" 2>/dev/null || :
    for (( i = 0; i < 100; i++ )); do
      pid_running "$pid" || break
      sleep 0.1
    done
    pid_running "$pid" && die "$name (PID $pid) survived SIGKILL"
  fi
  rm -f "$run/$name.pid"
}

# show_log NAME: the end of a daemon's log, after a failure.
show_log ()
{
  echo "---- last lines of $dir/log/$1.log" >&2
  tail -n 40 "$dir/log/$1.log" >&2 2>/dev/null || :
}

# start_daemon NAME BINARY ARGS...: a Ceph daemon forks into the
# background itself once it is initialised and writes run/NAME.pid.
start_daemon ()
{
  local name=$1 bin=$2 status=0
  shift 2
  [ -z "$(daemon_pid "$name")" ] || die "$name already runs (PID $(daemon_pid "$name"))"
  rm -f "$run/$name.pid"
  # Not with the test's malloc perturbation or preloads (meson sets
  # MALLOC_PERTURB_ for each test).
  timeout "$CEPH_READY_TIMEOUT" env -u MALLOC_PERTURB_ -u LD_PRELOAD \
    "$bin" -c "$conf" "$@" \
    2> "$dir/log/$name.stderr" || status=$?
  if [ "$status" -ne 0 ] || [ -z "$(daemon_pid "$name")" ]; then
    cat "$dir/log/$name.stderr" >&2
    show_log "$name"
    die "$bin $* failed to start (status $status)"
  fi
}

# wait_pgs_clean: every PG of pool rbd is active+clean, asked of the
# OSD (there is no manager, which would otherwise sum up PG states).
wait_pgs_clean ()
{
  local t0 states
  t0=$(now)
  while :; do
    states=$(pg_states 2>/dev/null) || states=
    if [ -n "$states" ] &&
       [ "$(grep -c . <<<"$states")" -eq "$CEPH_PG_NUM" ] &&
       ! grep -qv ' active+clean$' <<<"$states"; then
      step "PGs active+clean"
      return 0
    fi
    if (( $(date +%s) - ${t0%.*} >= CEPH_READY_TIMEOUT )); then
      echo "cluster.sh: PGs not active+clean after $CEPH_READY_TIMEOUT s:" >&2
      echo "${states:-(no answer)}" >&2
      show_log osd.0
      return 1
    fi
    sleep 0.2
  done
}

# pg_states: "PGID STATE" per PG of pool rbd, from the OSD's admin
# socket: the state of each PG's peering state machine, where
# Started/Primary/Active/Clean is what the manager would report as
# active+clean (printed so; any other state as it is).
pg_states ()
{
  local pool
  pool=$(awk '/^pool_id/ { print $2 }' "$dir/env.pool" 2>/dev/null) || return 1
  timeout 20 ceph -c "$conf" --admin-daemon "$run/osd.0.asok" \
      dump_pgstate_history 2>/dev/null |
    /usr/bin/python3 -c '
import json, sys
pool = sys.argv[1]
for pg in json.load(sys.stdin)["pgs"]:
    if pg["pg"].split(".")[0] == pool:
        state = pg["currently"]
        if state == "Started/Primary/Active/Clean":
            state = "active+clean"
        print(pg["pg"], state)
' "$pool"
}

write_conf ()
{
  local fsid=$1 port=$2
  cat > "$conf" <<EOF
# A single-node test cluster made by tests/ceph/cluster.sh
# (docs/ceph-tests.md says why each setting is here).
[global]
fsid = $fsid
mon_host = v2:127.0.0.1:$port
public_addr = 127.0.0.1
cluster_addr = 127.0.0.1
ms_bind_ipv4 = true
ms_bind_ipv6 = false
ms_bind_msgr1 = false
ms_bind_msgr2 = true
ms_bind_port_min = 6800
ms_bind_port_max = 7300
ms_async_op_threads = 2

auth_cluster_required = cephx
auth_service_required = cephx
auth_client_required = cephx
auth_allow_insecure_global_id_reclaim = false
keyring = $dir/keyring

run_dir = $run
admin_socket = $run/\$name.asok
pid_file = $run/\$name.pid
log_file = $dir/log/\$name.log
crash_dir = $dir/crash
log_to_stderr = false
err_to_stderr = true
# no log files outside DIR, no syslog, no journald
log_to_syslog = false
err_to_syslog = false
log_to_journald = false
err_to_journald = false

# One OSD on one host: pools of size 1, CRUSH picks OSDs, not hosts.
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_num = $CEPH_PG_NUM
osd_pool_default_pgp_num = $CEPH_PG_NUM
osd_pool_default_pg_autoscale_mode = off
osd_crush_chooseleaf_type = 0
mon_allow_pool_size_one = true
mon_allow_pool_delete = true

# Health: no warning for what this cluster is on purpose (no replicas,
# no manager, a disk that may be 70% full).
mon_warn_on_pool_no_redundancy = false
mon_mgr_mkfs_grace = 31536000
mon_data_avail_warn = 2
mon_data_avail_crit = 1

# Watches (and so exclusive locks) of a client that died expire after
# osd_client_watch_timeout seconds; a live client pings its watches
# every objecter_tick_interval seconds, which must be well below it.
osd_client_watch_timeout = $CEPH_WATCH_TIMEOUT
objecter_tick_interval = 1

[mon]
# Commit each change at once instead of batching changes for 1 s (every
# pool or OSD map change the set-up makes would wait that long).
paxos_propose_interval = 0.05
mon_data = $dir/mon
mon_osd_report_timeout = 20
mon_cluster_log_file = $dir/log/cluster.log
mon_initial_members = a

[osd]
osd_data = $dir/osd
osd_objectstore = bluestore
bluestore_block_create = true
bluestore_block_size = $CEPH_OSD_SIZE
bluestore_fsck_on_mkfs = false
bluestore_block_db_create = false
bluestore_block_wal_create = false
# A small machine: little memory, few threads.
osd_memory_target = 939524096
osd_op_num_shards = 2
osd_op_num_threads_per_shard = 1
osd_crush_update_on_start = true
# A stopped OSD tells the monitor at once (fast shutdown: no clean
# unmount, BlueStore recovers from its journal at the next start, as
# after a crash); a killed one is marked down by the monitor
# mon_osd_report_timeout ([mon]) after its last beacon.
osd_fast_shutdown = true
osd_fast_shutdown_notify_mon = true
osd_beacon_report_interval = 5
# Never scrub during a test.
osd_scrub_min_interval = 31536000
osd_scrub_max_interval = 31536000
osd_deep_scrub_interval = 31536000

[client]
# A client gives up connecting after 30 s, not 300 (I/O still waits
# for as long as it takes, as librbd expects).
client_mount_timeout = 30
# Each client process its own socket and log, in DIR.
admin_socket = $run/\$name.\$pid.asok
log_file = $dir/log/\$name.\$pid.log
EOF
}

# free_port: a TCP port on 127.0.0.1 that nothing listens on now.
free_port ()
{
  /usr/bin/python3 -c '
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
'
}

write_env ()
{
  cat > "$dir/env" <<EOF
CEPH_CONF=$conf
CEPH_POOL=rbd
EOF
}

do_start ()
{
  local t0 fsid osd_uuid port key pool_id
  t0=$(now)
  for c in ceph-mon ceph-osd ceph ceph-authtool monmaptool rbd; do
    command -v "$c" >/dev/null || die "$c not found (install ceph-mon ceph-osd ceph-common)"
  done
  if [ -e "$dir" ] && [ -n "$(ls -A "$dir")" ]; then
    die "$dir exists and is not empty"
  fi
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  conf=$dir/ceph.conf
  run=$dir/run
  mkdir -p "$dir/mon" "$dir/osd" "$run" "$dir/log" "$dir/crash"
  # A start that fails leaves nothing running.
  trap 'status=$?; [ "$status" -eq 0 ] || do_stop; exit "$status"' EXIT

  fsid=$(cat /proc/sys/kernel/random/uuid)
  osd_uuid=$(cat /proc/sys/kernel/random/uuid)
  port=$(free_port)
  write_conf "$fsid" "$port"

  # One keyring for everything: the monitor imports its entries at mkfs.
  ceph-authtool "$dir/keyring" --create-keyring --gen-key -n mon. \
    --cap mon 'allow *' >/dev/null
  ceph-authtool "$dir/keyring" --gen-key -n client.admin \
    --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' \
    --cap mds 'allow *' >/dev/null
  ceph-authtool "$dir/keyring" --gen-key -n osd.0 \
    --cap mon 'allow profile osd' --cap mgr 'allow profile osd' \
    --cap osd 'allow *' >/dev/null

  step "keyring written"
  monmaptool -c "$conf" --create --fsid "$fsid" \
    --addv a "[v2:127.0.0.1:$port]" "$dir/monmap" >/dev/null
  ceph-mon -c "$conf" --mkfs -i a --monmap "$dir/monmap" \
    --keyring "$dir/keyring" 2> "$dir/log/mon.a.mkfs" ||
    { cat "$dir/log/mon.a.mkfs" >&2; die "ceph-mon --mkfs failed"; }
  step "monitor made"
  start_daemon mon.a ceph-mon -i a
  step "monitor started"
  if [ -n "${CEPH_CLUSTER_OWNER:-}" ]; then
    start_watchdog "$CEPH_CLUSTER_OWNER"
  fi

  # The OSD: its id and key registered with the monitor, then BlueStore
  # made on the sparse file.
  key=$(ceph-authtool -p -n osd.0 "$dir/keyring")
  printf '{"cephx_secret": "%s"}\n' "$key" > "$dir/osd-secret.json"
  [ "$(ceph_cmd osd new "$osd_uuid" 0 -i "$dir/osd-secret.json")" = 0 ] ||
    die "ceph osd new did not give id 0"
  rm -f "$dir/osd-secret.json"
  step "osd.0 registered"
  # (It says on stderr that the file it is about to create is missing.)
  ceph-osd -c "$conf" -i 0 --mkfs --osd-uuid "$osd_uuid" \
      2> "$dir/log/osd.0.mkfs" ||
    { cat "$dir/log/osd.0.mkfs" >&2; die "ceph-osd --mkfs failed"; }
  step "BlueStore made"
  start_daemon osd.0 ceph-osd -i 0
  step "osd.0 started"

  ceph_cmd osd pool create rbd "$CEPH_PG_NUM" "$CEPH_PG_NUM" replicated \
    >/dev/null 2>&1 || die "ceph osd pool create rbd failed"
  step "pool rbd created"
  timeout 60 rbd -c "$conf" pool init rbd
  step "pool rbd initialised"
  pool_id=$(ceph_cmd osd pool ls detail --format=json |
    /usr/bin/python3 -c '
import json, sys
print([p["pool_id"] for p in json.load(sys.stdin) if p["pool_name"] == "rbd"][0])')
  echo "pool_id $pool_id" > "$dir/env.pool"
  wait_pgs_clean || die "cluster not ready"
  write_env
  trap - EXIT
  echo "cluster.sh: cluster up in $dir after $(elapsed "$t0") s" >&2
  cat "$dir/env"
}

do_stop ()
{
  local pid
  [ -d "$dir" ] || return 0
  stop_daemon osd.0
  stop_daemon mon.a
  pid=$(watchdog_pid)
  if [ -n "$pid" ] && [ "$pid" != $$ ]; then
    kill -TERM "$pid" 2>/dev/null || :
  fi
  rm -f "$run/watchdog.pid"
}

# watchdog_pid: the PID in run/watchdog.pid if that is our watchdog.
watchdog_pid ()
{
  local f=$run/watchdog.pid pid
  [ -s "$f" ] || return 0
  pid=$(cat "$f")
  pid_running "$pid" || return 0
  tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null |
    grep -qF -- "cluster.sh watchdog $dir" || return 0
  echo "$pid"
}

# start_watchdog OWNER: a background process (its own session, no
# inherited stdout or stderr, so that it holds no test's pipe open)
# that stops the cluster once OWNER has exited, e.g. a test killed by
# SIGKILL before its cleanup could run.  It ends when the cluster is
# stopped.
start_watchdog ()
{
  setsid "$0" watchdog "$dir" "$1" </dev/null >>"$dir/log/watchdog.log" 2>&1 &
  echo $! > "$run/watchdog.pid"
}

do_watchdog ()
{
  local owner=$1
  trap - EXIT
  while :; do
    [ -n "$(daemon_pid mon.a)$(daemon_pid osd.0)" ] || exit 0
    if ! kill -0 "$owner" 2>/dev/null; then
      step "owner $owner gone: stopping the cluster"
      do_stop
      exit 0
    fi
    sleep 0.5
  done
}

do_start_osd ()
{
  local t0
  t0=$(now)
  start_daemon osd.0 ceph-osd -i 0
  wait_pgs_clean || die "PGs not clean after the OSD started"
  echo "cluster.sh: OSD up and PGs clean after $(elapsed "$t0") s" >&2
}

do_status ()
{
  local name pid
  for name in mon.a osd.0; do
    pid=$(daemon_pid "$name")
    if [ -n "$pid" ]; then
      echo "$name: running, PID $pid"
    else
      echo "$name: not running"
    fi
  done
  [ -n "$(daemon_pid mon.a)" ] || return 1
  ceph_cmd health detail
  ceph_cmd osd stat
  [ -n "$(daemon_pid osd.0)" ] || return 1
  pg_states
}

case "$cmd" in
  start) do_start ;;
  stop) do_stop ;;
  restart-osd)
    t0=$(now)
    stop_daemon osd.0
    echo "cluster.sh: OSD stopped after $(elapsed "$t0") s" >&2
    do_start_osd
    echo "cluster.sh: OSD restarted in $(elapsed "$t0") s" >&2
    ;;
  kill-osd) stop_daemon osd.0 KILL ;;
  start-osd) do_start_osd ;;
  status) do_status ;;
  env) cat "$dir/env" ;;
  watchdog) do_watchdog "${3:?}" ;;
  *) usage ;;
esac
