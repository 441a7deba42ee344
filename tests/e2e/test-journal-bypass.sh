#!/usr/bin/env bash
# sequential-cutoff= end to end (docs/journal.md, "Writes around the
# journal"): a large sequential write goes to the image, not the
# journal, and a crash after it loses nothing.
#
# 1. A 1 MiB journaled write at 10 MiB, a flush, then a stream of 64 MiB
#    from 0 (sequential 1 MiB writes, over the first write's range), a
#    flush, SIGKILL.  The journal (subpage-journal check) holds at most
#    the first cutoff's worth of data records and the stream's BYPASS
#    markers; the image file already holds the stream past the cutoff
#    (not replayed: the server was killed).  Restarted on the same
#    journal, the server reads back the stream (the older 1 MiB write
#    was not replayed over it); after a clean stop the image file
#    equals the model.
# 2. sequential-cutoff=0: the same stream is journaled (no BYPASS).
# 3. sequential-cutoff= without journal=, and a bad size, are refused
#    at startup, naming the parameter.

source "$(dirname "$0")/../functions.sh"
set -euo pipefail

requires_plugin
requires_nbdsh
requires truncate cmp
make_tmpdir

: "${SUBPAGE_JOURNAL:=$BUILDDIR/tools/subpage-journal}"
if [ ! -x "$SUBPAGE_JOURNAL" ]; then
  echo "$0: subpage-journal not found: $SUBPAGE_JOURNAL (build it first)" >&2
  exit 1
fi

sock=$tmpdir/nbd.sock
pid=$tmpdir/nbdkit.pid
log=$tmpdir/nbdkit.log
uri=$(nbd_uri "$sock")
MiB=$((1 << 20))
fail=0
img=$tmpdir/disk.img
jnl=$tmpdir/disk.jnl
model=$tmpdir/model.img

serve ()
{
  start_nbdkit -P "$pid" -U "$sock" "$PLUGIN" file="$img" journal="$jnl" \
               journal-size=16M cache-size=256M dirty-writeback-ms=60000 \
               "$@" 2>>"$log"
}

crash ()
{
  kill -KILL "$nbdkit_pid"
  reap_killed "$nbdkit_pid"
}

# stream: the journaled write, a flush, the 64 MiB stream, a flush.
stream ()
{
  MODEL=$model nbdsh_py -u "$uri" -c '
import os
MiB = 1 << 20
model = open(os.environ["MODEL"], "r+b")
def w(data, off):
    h.pwrite(data, off)
    model.seek(off); model.write(data)
w(b"X" * MiB, 10 * MiB)
h.flush()
for k in range(64):
    w(os.urandom(MiB), k * MiB)
h.flush()
model.close()
'
}

# records FIELD: FIELD of the "records:" line of subpage-journal check.
check_out=
records ()
{
  sed -n "s/^records: .*$1 \\([0-9]*\\).*/\\1/p" <<<"$check_out"
}

# ---- 1. a stream around the journal, SIGKILL, replay --------------------

truncate -s $((72 * MiB)) "$img"
cp "$img" "$model"
serve
stream
crash
check_out=$("$SUBPAGE_JOURNAL" check "$jnl") || {
  echo "FAIL: 1: subpage-journal check exited $?" >&2; exit 1; }
echo "$check_out"
nbypass=$(records BYPASS)
data=$(sed -n 's/^bytes: .*; \([0-9]*\) of data,.*/\1/p' <<<"$check_out")
echo "1: $nbypass BYPASS records, $data bytes of data in the journal"
if [ -z "$nbypass" ] || [ "$nbypass" -lt 50 ]; then
  echo "FAIL: 1: the stream was not written around the journal" >&2
  fail=1
fi
if [ -z "$data" ] || [ "$data" -gt $((5 * MiB)) ]; then
  echo "FAIL: 1: $data bytes of data journaled (want at most ~4 MiB)" >&2
  fail=1
fi
# On the image already, before any replay: the stream past the cutoff.
if ! cmp -s -i $((8 * MiB)):$((8 * MiB)) -n $((56 * MiB)) "$img" "$model"; then
  echo "FAIL: 1: the image does not hold the stream before replay" >&2
  fail=1
fi

serve
MODEL=$model nbdsh_py -u "$uri" -c '
import os
f = open(os.environ["MODEL"], "rb")
for k in range(72):
    want = f.read(1 << 20)
    got = h.pread(1 << 20, k << 20)
    assert got == want, "MiB %d differs after the replay" % k
' || { echo "FAIL: 1: data after the restart" >&2; fail=1; }
grep -q "journal: replayed" "$log" || {
  echo "FAIL: 1: no replay in the log" >&2; fail=1; }
stop_nbdkit_ok "$pid" 60
cmp "$img" "$model" || { echo "FAIL: 1: image after a clean stop" >&2; fail=1; }

# ---- 2. sequential-cutoff=0: journaled -----------------------------------

rm -f "$jnl"
truncate -s 0 "$img"; truncate -s $((72 * MiB)) "$img"
cp "$img" "$model"
serve sequential-cutoff=0 journal-size=96M
stream
crash
check_out=$("$SUBPAGE_JOURNAL" check "$jnl") || {
  echo "FAIL: 2: subpage-journal check exited $?" >&2; exit 1; }
nbypass=$(records BYPASS)
if [ "$nbypass" != 0 ]; then
  echo "FAIL: 2: $nbypass BYPASS records with sequential-cutoff=0" >&2
  fail=1
fi
serve sequential-cutoff=0 journal-size=96M
stop_nbdkit_ok "$pid" 60
cmp "$img" "$model" || { echo "FAIL: 2: image after replay" >&2; fail=1; }

# ---- 3. refused parameters -----------------------------------------------

for args in "sequential-cutoff=1M" "journal=$jnl sequential-cutoff=4X"; do
  status=0
  # shellcheck disable=SC2086
  nbdkit_cmd -U - "$PLUGIN" file="$img" $args --run 'exit 0' \
    2>"$tmpdir/err" || status=$?
  if [ "$status" -eq 0 ] || ! grep -q "sequential-cutoff=" "$tmpdir/err"; then
    echo "FAIL: 3: $args: status $status:" >&2
    cat "$tmpdir/err" >&2
    fail=1
  fi
done

exit $fail
