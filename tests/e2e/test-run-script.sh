#!/usr/bin/env bash
# scripts/run's arguments (issue 17, items 6 and 7): --help, --dry-run
# (the nbdkit command it would run, for the unix socket and --tcp),
# bad options; then two real runs of a copy of scripts/run in a
# scratch git checkout, with SUBPAGE_PLUGIN (no install, no build):
# a missing IMAGE is created with --size and git ignores it, the
# printed nbdsh command works even with another python3 first on PATH,
# and --tcp serves on 127.0.0.1.  Each server is stopped by its PID.
set -euo pipefail
source "$(dirname "$0")/../functions.sh"
requires_plugin
requires_nbdsh
requires git nbdinfo
make_tmpdir

run=$SRCDIR/scripts/run
fail ()
{
  echo "$0: FAIL: $*" >&2
  exit 1
}

# ---- --help, --dry-run, bad arguments ------------------------------------

"$run" --help > "$tmpdir/help"
for w in --size --tcp --dry-run IMAGE 127.0.0.1 ssh; do
  grep -qe "$w" "$tmpdir/help" || fail "--help does not mention $w"
done

# dry IMAGE-AND-OPTIONS...: the nbdkit command line --dry-run prints.
dry ()
{
  SUBPAGE_SOCKET=$tmpdir/dry.sock "$run" --dry-run "$@" > "$tmpdir/dry"
  grep '^would run: nbdkit ' "$tmpdir/dry" | sed 's/^would run: //'
}
cmd=$(cd "$tmpdir" && dry)
[[ $cmd == "nbdkit -f -U $tmpdir/dry.sock "*"/plugin/nbdkit-subpage-plugin.so file=$SRCDIR/demo.img" ]] ||
  fail "default: $cmd"
grep -q "would run: scripts/deps run" "$tmpdir/dry" || fail "no scripts/deps run"
grep -q "Dtests=false\|ninja -C build" "$tmpdir/dry" || fail "no build step"
cmd=$(cd "$tmpdir" && dry --size 4G new.img cache-size=8M)
grep -q "would create $tmpdir/new.img (sparse, 4G)" "$tmpdir/dry" ||
  fail "--size 4G: $(cat "$tmpdir/dry")"
[[ $cmd == *" file=$tmpdir/new.img cache-size=8M" ]] || fail "IMAGE: $cmd"
[ ! -e "$tmpdir/new.img" ] || fail "--dry-run created the image"
cmd=$(dry --tcp 10809 "$tmpdir/x.img")
[[ $cmd == "nbdkit -f -i 127.0.0.1 -p 10809 "* ]] || fail "--tcp 10809: $cmd"
grep -q "nbd://127.0.0.1:10809" "$tmpdir/dry" || fail "--tcp: no nbd:// URI"
grep -q "ssh -N -L" "$tmpdir/dry" || fail "--tcp: no ssh tunnel"
cmd=$(dry --tcp=0.0.0.0:2000 "$tmpdir/x.img")
[[ $cmd == "nbdkit -f -i 0.0.0.0 -p 2000 "* ]] || fail "--tcp 0.0.0.0:2000: $cmd"
grep -q WARNING "$tmpdir/dry" || fail "no warning for 0.0.0.0"
cmd=$(dry --tcp '[::1]:2001' "$tmpdir/x.img")
[[ $cmd == "nbdkit -f -i ::1 -p 2001 "* ]] || fail "--tcp [::1]:2001: $cmd"
grep -q "nbd://\[::1\]:2001" "$tmpdir/dry" || fail "--tcp [::1]: URI"
for bad in "--tcp x" "--tcp 1.2.3.4:99999" "--size 3Q" "--bogus" "--tcp"; do
  # shellcheck disable=SC2086
  if "$run" --dry-run $bad > "$tmpdir/bad" 2>&1; then
    fail "scripts/run $bad succeeded"
  fi
  grep -q "^scripts/run: " "$tmpdir/bad" || fail "$bad: no message"
done

# ---- real runs -----------------------------------------------------------

# A scratch checkout holding scripts/run and .gitignore, so that images
# are created there and not in the source tree.
repo=$tmpdir/repo
mkdir -p "$repo/scripts"
cp "$run" "$repo/scripts/run"
cp "$SRCDIR/.gitignore" "$repo/.gitignore"
git -C "$repo" init -q
git -C "$repo" add .
git -C "$repo" -c user.name=t -c user.email=t@t commit -q -m init

# nbdkit with the sanitizer environment of this build (functions.sh),
# first on PATH; it execs, so scripts/run's PID stays nbdkit's.
# A python3 without the nbd module comes first too, as pyenv's would.
mkdir "$tmpdir/bin"
real_nbdkit=$(command -v nbdkit)
{
  echo '#!/bin/sh'
  printf 'exec env'
  [ ${#_nbdkit_env[@]} -eq 0 ] || printf ' %q' "${_nbdkit_env[@]}"
  printf ' %q "$@"\n' "$real_nbdkit"
} > "$tmpdir/bin/nbdkit"
printf '#!/bin/sh\necho "fake python3: No module named nbd" >&2\nexit 1\n' \
  > "$tmpdir/bin/python3"
chmod +x "$tmpdir/bin/nbdkit" "$tmpdir/bin/python3"

server_pid=
stop_server ()
{
  local status=0
  [ -n "$server_pid" ] || return 0
  if _pid_running "$server_pid"; then
    kill -TERM "$server_pid"
    _wait_pid "$server_pid" 30 || kill -KILL "$server_pid"
  fi
  wait "$server_pid" || status=$?
  server_pid=
  return "$status"
}
cleanup_fn stop_server

# serve LOG ARGS...: start the copy of scripts/run in the background.
serve ()
{
  local log=$1
  shift
  (cd "$repo" && PATH=$tmpdir/bin:$PATH SUBPAGE_PLUGIN=$PLUGIN \
     SUBPAGE_SOCKET=$tmpdir/run.sock exec scripts/run "$@") > "$log" 2>&1 &
  server_pid=$!
}

# wait_uri URI LOG: until nbdinfo connects (at most 60 s).
wait_uri ()
{
  local i
  for (( i = 0; i < 600; i++ )); do
    nbdinfo --can connect "$1" 2>/dev/null && return 0
    _pid_running "$server_pid" || { cat "$2" >&2; fail "scripts/run exited"; }
    sleep 0.1
  done
  cat "$2" >&2
  fail "no server at $1"
}

# 1. Unix socket; disk.raw does not exist: created with --size, and
# git ignores it although .gitignore does not name it.
serve "$tmpdir/run1.log" --size 64M disk.raw cache-size=8M
uri="nbd+unix:///?socket=$tmpdir/run.sock"
wait_uri "$uri" "$tmpdir/run1.log"
cat "$tmpdir/run1.log"
grep -q "created $repo/disk.raw (sparse, 64M), ignored by git (added to .git/info/exclude)" \
  "$tmpdir/run1.log" || fail "no 'created' line"
[ "$(stat -c %s "$repo/disk.raw")" -eq $((64 << 20)) ] || fail "disk.raw size"
[ -z "$(git -C "$repo" status --porcelain)" ] ||
  fail "git sees: $(git -C "$repo" status --porcelain)"
[ "$(nbdinfo --size "$uri")" -eq $((64 << 20)) ] || fail "export size"
# The printed nbdsh command, as printed, with the fake python3 first.
line=$(grep -- "-m nbd -u '$uri'" "$tmpdir/run1.log") || fail "no nbdsh line"
out=$(PATH=$tmpdir/bin:$PATH eval "$line -c 'print(h.get_size())'") ||
  fail "the printed nbdsh command failed: $line"
[ "$out" -eq $((64 << 20)) ] || fail "nbdsh printed $out"
# ...where a bare nbdsh fails (the fake python3 reproduces issue 17's 6).
if PATH=$tmpdir/bin:$PATH nbdsh -u "$uri" -c 'pass' 2>/dev/null; then
  fail "bare nbdsh worked with the fake python3 first: the check proves nothing"
fi
stop_server || fail "scripts/run (nbdkit) exited non-zero after SIGTERM"

# 2. TCP on 127.0.0.1, demo.img created with the default size (1G),
# ignored by .gitignore's pattern.
port=$(/usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
serve "$tmpdir/run2.log" --tcp "$port"
wait_uri "nbd://127.0.0.1:$port" "$tmpdir/run2.log"
cat "$tmpdir/run2.log"
grep -q "created $repo/demo.img (sparse, 1G), ignored by git (.gitignore)" \
  "$tmpdir/run2.log" || fail "no 'created' line for demo.img"
[ -z "$(git -C "$repo" status --porcelain)" ] || fail "git sees demo.img"
[ "$(nbdinfo --size "nbd://127.0.0.1:$port")" -eq $((1 << 30)) ] || fail "demo size"
grep -q "ssh -N -L 10809:127.0.0.1:$port" "$tmpdir/run2.log" || fail "no ssh line"
# Listening on 127.0.0.1 only.
command -v ss >/dev/null &&
  ss -ltnH "sport = :$port" | awk '{ print $4 }' | grep -vq "^127.0.0.1:$port$" &&
  fail "listening beyond 127.0.0.1: $(ss -ltnH "sport = :$port")"
stop_server || fail "scripts/run --tcp (nbdkit) exited non-zero after SIGTERM"
echo "OK"
