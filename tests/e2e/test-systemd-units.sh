#!/usr/bin/env bash
# The systemd units (systemd/): checked without a systemd PID 1.
#   1. `systemd-analyze verify` of subpage@test.service and
#      subpage@test.socket prints nothing and succeeds.  The units name
#      the installed plugin (nbdkit's plugindir), which need not exist
#      yet, so a temporary copy points at the built plugin; nbdkit's
#      path is the one meson found and must exist (verify checks that
#      ExecStart is executable).
#   2. `systemd-analyze security --offline=true` rates the service at
#      most MAX_EXPOSURE (the figure recorded in docs/operations.md).
#   3. The unit's own ExecStart line, expanded the way systemd does
#      with a conf file like /etc/subpage/NAME.conf, runs under
#      `systemd-socket-activate` (LISTEN_FDS/LISTEN_PID, nbdkit started
#      on the first connection, as by subpage@.socket), as user nobody
#      with no capabilities, no new privileges and umask 077 (what
#      DynamicUser=, CapabilityBoundingSet=, NoNewPrivileges= and
#      UMask= give), in a network namespace of its own (PrivateNetwork=,
#      with `unshare --net`) and with the kernel's memory-deny-write-
#      execute (prctl PR_SET_MDWE, Linux >= 6.3, the in-kernel form of
#      MemoryDenyWriteExecute=) when the kernel has them: nbdinfo sees
#      the export with the parameters of SUBPAGE_ARGS, a write and flush
#      reach the image, and SIGTERM ends it with status 0.
# What this cannot check without PID 1: the other sandbox options
# (SystemCallFilter=, ProtectSystem=, PrivateUsers=, ...); see
# docs/operations.md.

source "$(dirname "$0")/../functions.sh"
set -euo pipefail

# The exposure level reached by systemd/subpage@.service (systemd 252):
# it must not get worse.  Keep docs/operations.md in step.
MAX_EXPOSURE=0.2

requires_plugin
requires_nbdsh
requires systemd-analyze systemd-socket-activate nbdinfo setpriv
make_tmpdir

service=$BUILDDIR/systemd/subpage@.service
socket=$SRCDIR/systemd/subpage@.socket
for f in "$service" "$socket"; do
  if [ ! -f "$f" ]; then
    echo "$0: $f not found (the build makes the service)" >&2
    exit 1
  fi
done

# ---- 1. verify -----------------------------------------------------------
units=$tmpdir/units
mkdir "$units"
cp "$socket" "$units/"
installed=$(sed -n 's|^ExecStart=.* \(/[^ ]*/nbdkit-subpage-plugin\.so\) .*|\1|p' \
              "$service")
if [ -z "$installed" ]; then
  echo "$0: no plugin path in the ExecStart of $service" >&2
  exit 1
fi
sed "s|$installed|$PLUGIN|" "$service" > "$units/subpage@.service"
grep '^ExecStart=' "$units/subpage@.service"

out=$tmpdir/verify.out
status=0
systemd-analyze verify --man=no "$units/subpage@test.service" \
  "$units/subpage@test.socket" > "$out" 2>&1 || status=$?
cat "$out"
if [ "$status" -ne 0 ] || [ -s "$out" ]; then
  echo "$0: systemd-analyze verify: status $status, output above" >&2
  exit 1
fi
echo "systemd-analyze verify: clean"

# ---- 2. exposure level ---------------------------------------------------
out=$tmpdir/security.out
systemd-analyze security --offline=true "$units/subpage@test.service" \
  > "$out" 2>&1 || :
grep -E '^✗' "$out" || :
level=$(sed -n 's/.*Overall exposure level for subpage@test\.service: \([0-9.]*\).*/\1/p' "$out")
if [ -z "$level" ]; then
  cat "$out"
  echo "$0: no overall exposure level in the output above" >&2
  exit 1
fi
echo "exposure level: $level (at most $MAX_EXPOSURE)"
if ! awk -v l="$level" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(l <= m) }'; then
  echo "$0: exposure level $level is above $MAX_EXPOSURE" >&2
  exit 1
fi

# ---- 3. ExecStart under socket activation --------------------------------
img=$tmpdir/disk.img
sock=$tmpdir/run/test.sock
conf=$tmpdir/test.conf
log=$tmpdir/nbdkit.log
truncate -s 64M "$img"
mkdir -m 755 "$tmpdir/run"
chmod 755 "$tmpdir"

# A conf file in the EnvironmentFile syntax of systemd/example.conf.
cat > "$conf" <<EOF
# test instance
SUBPAGE_FILE=$img
SUBPAGE_ARGS=cache-size=16M sector-size=4096  dirty-expire-ms=3600000
NBDKIT_ARGS=-v
EOF

# The argv systemd would run: Environment= defaults, then the conf
# (which overrides them); in ExecStart, a word that is exactly $VAR
# becomes the value split at whitespace (no words when empty), and
# ${VAR} is replaced inside its word.
argv=$tmpdir/argv
/usr/bin/python3 - "$units/subpage@.service" "$conf" > "$argv" <<'EOF'
import re, shlex, sys
unit, conf = sys.argv[1], sys.argv[2]
env, cmd = {}, None
for line in open(unit):
    line = line.strip()
    if line.startswith("Environment="):
        for w in shlex.split(line[len("Environment="):]):
            k, _, v = w.partition("=")
            env[k] = v
    elif line.startswith("ExecStart="):
        cmd = line[len("ExecStart="):]
for line in open(conf):
    line = line.strip()
    if line and not line.startswith("#"):
        k, _, v = line.partition("=")
        env[k.strip()] = v.strip()
out = []
for w in cmd.split():
    m = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", w)
    if m:
        out += env.get(m.group(1), "").split()
    else:
        out.append(re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}",
                          lambda m: env.get(m.group(1), ""), w))
sys.stdout.write("\0".join(out) + "\0")
EOF
mapfile -d '' cmd < "$argv"
echo "ExecStart expands to: ${cmd[*]}"

# Run as nobody (DynamicUser=) when nobody can read the build.
as_user=()
chown nobody "$img"
if setpriv --reuid=nobody --regid=nogroup --clear-groups test -r "$PLUGIN"
then
  as_user=(setpriv --reuid=nobody --regid=nogroup --clear-groups
           --no-new-privs --inh-caps=-all --bounding-set=-all)
else
  echo "note: nobody cannot read $PLUGIN: running ExecStart as root"
fi

# PrivateNetwork= and MemoryDenyWriteExecute=, where this machine can.
sandbox=()
if unshare --net true 2>/dev/null; then
  sandbox+=(unshare --net)
else
  echo "note: unshare --net not possible here: network not isolated"
fi
cat > "$tmpdir/mdwe.py" <<'EOF'
# Exec argv[1:] with PR_SET_MDWE(PR_MDWE_REFUSE_EXEC_GAIN), which is
# kept across execve: no mapping can become writable and executable.
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:
    sys.exit("prctl PR_SET_MDWE: " + os.strerror(ctypes.get_errno()))
os.execvp(sys.argv[1], sys.argv[1:])
EOF
if /usr/bin/python3 "$tmpdir/mdwe.py" true 2>/dev/null; then
  sandbox+=(/usr/bin/python3 "$tmpdir/mdwe.py")
else
  echo "note: no PR_SET_MDWE in this kernel: W^X not enforced"
fi

# systemd-socket-activate listens, waits for the first connection, and
# then execs the command in its own process (LISTEN_PID is its PID),
# so $! is nbdkit's PID from then on; unshare, python, setpriv and env
# exec too.
( umask 077
  exec systemd-socket-activate -l "$sock" "${sandbox[@]}" "${as_user[@]}" \
    env "${_nbdkit_env[@]}" "${cmd[@]}" ) > "$log" 2>&1 &
pid=$!
cleanup_fn _kill_nbdkit "$pid"
for (( i = 0; i < 100; i++ )); do
  [ -S "$sock" ] && break
  _pid_running "$pid" || { cat "$log"; echo "$0: systemd-socket-activate exited" >&2; exit 1; }
  sleep 0.1
done
[ -S "$sock" ] || { echo "$0: $sock not created" >&2; exit 1; }
if [ "$(cat "/proc/$pid/comm")" = nbdkit ]; then
  echo "$0: nbdkit started before any connection" >&2
  exit 1
fi

# The first connection starts nbdkit, which must take over the socket.
info=$(nbdinfo --json "$(nbd_uri "$sock")")
echo "$info" | /usr/bin/python3 -c '
import json, sys
i = json.load(sys.stdin)
e = i["exports"][0]
assert e["export-size"] == 64 * 1024 * 1024, e["export-size"]
assert e["block_size_preferred"] == 4096, e["block_size_preferred"]
assert e["can_multi_conn"] and e["can_flush"] and e["can_fua"], e
print("nbdinfo: size", e["export-size"], "preferred block size",
      e["block_size_preferred"])
'
[ "$(cat "/proc/$pid/comm")" = nbdkit ] ||
  { echo "$0: PID $pid is not nbdkit" >&2; exit 1; }
tr '\0' '\n' < "/proc/$pid/environ" | grep -qx "LISTEN_PID=$pid" ||
  { echo "$0: nbdkit has no LISTEN_PID=$pid" >&2; exit 1; }
if [ "${sandbox[0]:-}" = unshare ] &&
   [ "$(readlink "/proc/$pid/ns/net")" = "$(readlink /proc/self/ns/net)" ]; then
  echo "$0: nbdkit is not in a network namespace of its own" >&2
  exit 1
fi
if [ ${#as_user[@]} -gt 0 ]; then
  uid=$(awk '/^Uid:/ { print $2 }' "/proc/$pid/status")
  caps=$(awk '/^CapEff:/ { print $2 }' "/proc/$pid/status")
  echo "nbdkit runs as uid $uid, CapEff $caps"
  [ "$uid" = "$(id -u nobody)" ] && [ "$caps" = 0000000000000000 ] ||
    { echo "$0: nbdkit is not unprivileged" >&2; exit 1; }
fi

# A write and a flush through the socket-activated server reach the
# image (with dirty-expire-ms at an hour only the flush sends it).
nbdsh_py -u "$(nbd_uri "$sock")" -c '
h.pwrite(b"\xa5" * 8192, 1048576)
h.flush()
'
/usr/bin/python3 - "$img" <<'EOF'
import sys
with open(sys.argv[1], "rb") as f:
    f.seek(1048576)
    assert f.read(8192) == b"\xa5" * 8192, "flushed data not in the image"
EOF

kill -TERM "$pid"
if ! _wait_pid "$pid" 60; then
  echo "$0: nbdkit (PID $pid) still running 60 s after SIGTERM" >&2
  exit 1
fi
status=0
wait "$pid" || status=$?
_nbdkit_stopped+="$pid "
grep -E 'socket activation|subpage: file=' "$log" || :
if [ "$status" -ne 0 ]; then
  cat "$log"
  echo "$0: nbdkit exited with status $status after SIGTERM" >&2
  exit 1
fi
grep -q 'subpage: file=.* cache-size=16M .*sector-size=4K' "$log" ||
  { cat "$log"; echo "$0: SUBPAGE_ARGS did not reach the plugin" >&2; exit 1; }
echo ok
