#!/usr/bin/env bash
# journal-background-ratio= (man page, "Write-back order"): the drainer
# writes back only while the journal is over the ratio, or its oldest
# record is dirty-expire-ms old.
#
# 1. The defaults with journal= (journal-background-ratio=50,
#    dirty-expire-ms=30000), dirty-writeback-ms=50: 1 MiB written and
#    flushed into a 64 MiB journal stays there, through 20 wake-ups of
#    the drainer (with journal-background-ratio=0 it is drained at the
#    first), and reads back.
# 2. The same journal over half full: the drainer writes back until it
#    is not, without a kick from anyone.
# 3. dirty-expire-ms=300: 1 MiB, young, is drained once it is old.
# 4. journal-background-ratio=90, dirty-writeback-ms=60000: 70 MiB
#    into the 64 MiB journal go through well within the interval, the
#    writer that waits for space waking the drainer (a drainer that
#    looks only every interval leaves it waiting 60 s; the deadline is
#    40 s).
# Each time the remote's image file holds what was drained, after a
# clean stop all of it.

source "$(dirname "$0")/../functions.sh"
set -euo pipefail

requires_plugin
requires_nbdsh
requires truncate cmp
make_tmpdir

MiB=$((1 << 20))
rimg=$tmpdir/remote.img rsock=$tmpdir/remote.sock rpid=$tmpdir/remote.pid
sock=$tmpdir/nbd.sock pid=$tmpdir/nbdkit.pid log=$tmpdir/nbdkit.log
jnl=$tmpdir/bg.journal msock=$tmpdir/metrics.sock
uri=$(nbd_uri "$sock")
fail () { echo "FAIL: $*" >&2; exit 1; }

truncate -s 128M "$rimg"
start_nbdkit -P "$rpid" -U "$rsock" file "$rimg"

serve ()
{
  rm -f "$jnl"
  start_nbdkit -P "$pid" -U "$sock" "$PLUGIN" uri="$(nbd_uri "$rsock")" \
               journal="$jnl" journal-size=64M sequential-cutoff=0 \
               dirty-writeback-ms=50 metrics-socket="$msock" "$@" 2>>"$log"
}

# write_mib FROM N BYTE: N MiB of BYTE from MiB FROM, then a flush.
write_mib ()
{
  FROM=$1 N=$2 BYTE=$3 nbdsh_py -u "$uri" -c '
import os
f, n, b = int(os.environ["FROM"]), int(os.environ["N"]), int(os.environ["BYTE"])
for i in range(f, f + n):
    h.pwrite(bytes([b]) * (1 << 20), i << 20)
h.flush()
'
}

# wait_metric NAME OP VALUE SECS: until subpage_NAME OP VALUE, or fail.
wait_metric ()
{
  local v i
  for ((i = 0; i < $4 * 10; i++)); do
    v=$(metric "$msock" "$1")
    [ -n "$v" ] && [ "$v" "$2" "$3" ] && return 0
    sleep 0.1
  done
  fail "$1 is ${v:-none}, not $2 $3, after $4 s"
}

# ---- 1. under the ratio, young: stays in the journal -------------------------
serve
write_mib 0 1 161
sleep 1   # 20 wake-ups of the drainer: eager, it drains at the first
d=$(metric "$msock" journal_drained_records_total)
p=$(metric "$msock" journal_pending_bytes)
echo "1: drained records $d, pending bytes $p"
[ "$d" = 0 ] || fail "1: drained $d records under the ratio"
[ "$p" -gt "$MiB" ] || fail "1: $p bytes pending, not the 1 MiB written"
cmp -n "$MiB" "$rimg" /dev/zero >/dev/null || fail "1: the remote changed"

# ---- 2. over half full: drained down to the ratio -----------------------------
write_mib 1 40 162
wait_metric journal_drained_records_total -gt 0 30
wait_metric journal_used_bytes -le $((32 * MiB)) 60
u=$(metric "$msock" journal_used_bytes)
echo "2: used $u bytes after the drain"
stop_nbdkit "$pid"
head -c $MiB /dev/zero | tr '\0' '\241' > "$tmpdir/want"
head -c $((40 * MiB)) /dev/zero | tr '\0' '\242' >> "$tmpdir/want"
cmp -n $((41 * MiB)) "$rimg" "$tmpdir/want" || fail "2: the remote after the stop"

# ---- 3. dirty-expire-ms: drained once old -------------------------------------
serve journal-background-ratio=50 dirty-expire-ms=300
write_mib 50 1 163
wait_metric journal_pending_bytes -eq 0 30
cmp -n "$MiB" <(tail -c +$((50 * MiB + 1)) "$rimg") <(head -c $MiB /dev/zero | tr '\0' '\243') ||
  fail "3: the remote does not hold the expired MiB"
echo "3: drained once old"
stop_nbdkit "$pid"

# ---- 4. a writer waiting for space wakes the drainer --------------------------
serve journal-background-ratio=90 dirty-expire-ms=600000 dirty-writeback-ms=60000
# The drainer's first look finds nothing pending; from then on it waits
# 60 s unless a kick makes it look again.
timeout 40 env PATH=/usr/bin:$PATH FROM=56 N=70 BYTE=164 nbdsh -u "$uri" -c '
import os
f, n, b = int(os.environ["FROM"]), int(os.environ["N"]), int(os.environ["BYTE"])
for i in range(f, f + n):
    h.pwrite(bytes([b]) * (1 << 20), i << 20)
h.flush()
' || fail "4: 70 MiB into a 64 MiB journal did not go through in 40 s"
d=$(metric "$msock" journal_drained_records_total)
echo "4: drained records $d"
[ "$d" -gt 0 ] || fail "4: nothing drained"
stop_nbdkit "$pid"
cmp -n $((70 * MiB)) <(tail -c +$((56 * MiB + 1)) "$rimg") \
    <(head -c $((70 * MiB)) /dev/zero | tr '\0' '\244') ||
  fail "4: the remote after the stop"
stop_nbdkit "$rpid"
echo ok
