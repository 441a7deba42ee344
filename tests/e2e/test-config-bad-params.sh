#!/usr/bin/env bash
# Configuration errors fail at startup: for each bad parameter, nbdkit
# exits non-zero and its message names the parameter.  A few good
# configurations are checked too, so that a harness problem cannot pass
# for a rejected parameter.

source "$(dirname "$0")/../functions.sh"
set -euo pipefail

requires_plugin
make_tmpdir

img=$tmpdir/disk.img
err=$tmpdir/stderr
truncate -s 16M "$img"

# try WANT ARGS...: start nbdkit with the plugin and ARGS; it runs
# `exit 0` as soon as it serves, so a configuration it accepts exits 0.
# WANT is "ok", or the string stderr must contain when nbdkit fails.
failures=0
try ()
{
  local want=$1 status=0
  shift
  nbdkit_cmd -U - "$PLUGIN" "$@" --run 'exit 0' 2>"$err" || status=$?
  if [ "$want" = ok ]; then
    if [ "$status" -ne 0 ]; then
      echo "FAIL: $* rejected (status $status):" >&2
      cat "$err" >&2
      failures=$((failures + 1))
    else
      echo "ok: accepted: $*"
    fi
  elif [ "$status" -eq 0 ]; then
    echo "FAIL: $* accepted" >&2
    failures=$((failures + 1))
  elif [ "$status" -eq 124 ]; then
    echo "FAIL: $* hung" >&2
    failures=$((failures + 1))
  elif ! grep -qF -- "$want" "$err"; then
    echo "FAIL: $* rejected (status $status), but stderr does not name '$want':" >&2
    cat "$err" >&2
    failures=$((failures + 1))
  else
    echo "ok: rejected: $*: $(grep -F -- "$want" "$err" | head -n1)"
  fi
}

# Controls: defaults, and every parameter at a legal value.
try ok file="$img"
try ok file="$img" cache-size=1M page-size=4K sector-size=4K mode=writethrough
try ok file="$img" cache-size=64M page-size=2M sector-size=512 mode=unsafe \
       dirty-expire-ms=1000 dirty-writeback-ms=100 \
       dirty-background-ratio=20 dirty-ratio=50 writeback-threads=1

try page-size       file="$img" page-size=3000     # not a power of two
try page-size       file="$img" page-size=1K       # below 4K
try page-size       file="$img" page-size=4M       # above 2M
try sector-size     file="$img" sector-size=256    # below 512
try sector-size     file="$img" page-size=64K sector-size=128K  # > page
try journal-background-ratio file="$img" journal-background-ratio=50  # no journal
try journal-background-ratio file="$img" journal="$tmpdir/bg1.jnl" \
    journal-background-ratio=91                                  # above 90
try journal-background-ratio file="$img" journal="$tmpdir/bg2.jnl" \
    journal-background-ratio=x
try ok file="$img" journal="$tmpdir/bg3.jnl" journal-background-ratio=50
try cache-size      file="$img" cache-size=100K    # fewer than 8 pages
try mode            file="$img" mode=bogus
try dirty-ratio     file="$img" dirty-ratio=0
try dirty-ratio     file="$img" dirty-ratio=5 dirty-background-ratio=10
try writeback-threads file="$img" writeback-threads=0
try file            cache-size=16M                 # no file=
try /nonexistent    file=/nonexistent
try foo             file="$img" foo=1              # unknown key
try connections     file="$img" connections=8      # only for uri=
try connections     file="$img" connections=abc
try backend-timeout file="$img" backend-timeout=5  # not for file=
try backend-timeout file="$img" backend-timeout=abc
try backend-timeout file="$img" backend-timeout=3601
try backend-timeout file="$img" backend-timeout=1.2345  # below 1 ms
try backend-timeout file="$img" backend-timeout=-1
try backend-timeout file="$img" backend-timeout=2.
try ok              file="$img" backend-timeout=0
try ok              file="$img" backend-timeout=0.000

# one_error ARGS...: nbdkit rejects ARGS with exactly one error line (a
# parser's own message followed by the plugin's would be two).
one_error ()
{
  local n
  nbdkit_cmd -U - "$PLUGIN" "$@" --run 'exit 0' 2>"$err" || true
  n=$(grep -c 'error:' "$err" || true)
  if [ "$n" -ne 1 ]; then
    echo "FAIL: $*: $n error lines, expected 1:" >&2
    cat "$err" >&2
    failures=$((failures + 1))
  else
    echo "ok: one error line: $*"
  fi
}
one_error file="$img" cache-size=abc
one_error file="$img" cache-size=-1
one_error file="$img" page-size=abc
one_error file="$img" connections=abc
one_error file="$img" mlock=maybe
one_error file="$img" backend-timeout=2x

if [ "$failures" -ne 0 ]; then
  echo "$0: $failures case(s) failed" >&2
  exit 1
fi
