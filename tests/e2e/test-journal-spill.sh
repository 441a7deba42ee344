#!/usr/bin/env bash
# Dirty data beyond memory with journal= (man page, "Dirty data beyond
# memory"; docs/journal.md): a remote that does not answer, and three
# times cache-size of writes.
#
# 1. The remote (nbdkit file behind --filter=delay) is stopped
#    (SIGSTOP): nothing can be written back.  A client writes the whole
#    32 MiB image (1 MiB writes, so that no partial write below needs
#    to read the stopped remote), then 24 MiB more (random 4 KiB and
#    64 KiB pieces, a flush after each MiB, a zero, an unaligned piece)
#    through subpage cache-size=8M journal-size=128M (sequential-cutoff=0:
#    the first 32 MiB would otherwise go around the journal, to the
#    stopped remote).  Every write and flush must succeed (flushes need
#    only the journal), which a cache bounded by memory could not do:
#    dirty pages must have left memory (subpage_journal_spilled_pages_total
#    > 0, subpage_journal_index_bytes > 0), and no byte was drained
#    (subpage_journal_drained_records_total == 0).
# 2. Every byte reads back right while the remote is still stopped:
#    what left memory comes from the journal
#    (subpage_journal_read_bytes_total > 0).
# 3. Partial-sector writes over data that left memory (their fill reads
#    it from the journal), a flush, then SIGKILL by PID; the remote
#    continued; a server restarted on the journal replays it, and every
#    byte reads back right; after a clean stop the remote's image file
#    equals the model.

source "$(dirname "$0")/../functions.sh"
set -euo pipefail

requires_plugin
requires_nbdsh
requires truncate cmp
make_tmpdir

MiB=$((1 << 20))
rimg=$tmpdir/remote.img rsock=$tmpdir/remote.sock rpid=$tmpdir/remote.pid
sock=$tmpdir/nbd.sock pid=$tmpdir/nbdkit.pid log=$tmpdir/nbdkit.log
jnl=$tmpdir/spill.journal msock=$tmpdir/metrics.sock
model=$tmpdir/model.img
uri=$(nbd_uri "$sock")

# signal_if_running SIG PID: a cleanup that may find PID gone already.
signal_if_running () { kill "-$1" "$2" 2>/dev/null || :; }

serve ()
{
  start_nbdkit -P "$pid" -U "$sock" "$PLUGIN" uri="$(nbd_uri "$rsock")" \
               journal="$jnl" journal-size=128M cache-size=8M sequential-cutoff=0 \
               metrics-socket="$msock" "$@" 2>>"$log"
}

readback ()
{
  PHASE=$1 MODEL=$model nbdsh_py -u "$uri" -c '
import os
want = open(os.environ["MODEL"], "rb").read()
got = bytearray()
for off in range(0, len(want), 1 << 20):
    got += h.pread(1 << 20, off)
if got != want:
    bad = next(i for i in range(len(want)) if got[i] != want[i])
    raise SystemExit("FAIL: %s: byte %d reads %d, wrote %d" %
                     (os.environ["PHASE"], bad, got[bad], want[bad]))
'
}

# start_remote: (re)starts the remote on $rimg.
start_remote ()
{
  start_nbdkit -P "$rpid" -U "$rsock" --filter=delay file "$rimg" \
               rdelay=1ms wdelay=1ms
  remote_pid=$nbdkit_pid
  remote_base=$(find "/proc/$remote_pid/fd" -lname 'socket:*' | wc -l)
}

# remote_settled: the remote closed the killed plugin's connections, or
# died, and was then started again on its image (which holds all it
# acknowledged): nbdkit 1.32's server can abort in raw_send_socket when
# a delayed reply meets a connection its killed client closed (see
# test-fs-journal.sh).  Polls for at most 60 s.
remote_settled ()
{
  local i n
  for (( i = 0; i < 600; i++ )); do
    if ! kill -0 "$remote_pid" 2>/dev/null; then
      echo "the remote (PID $remote_pid) died: started again"
      reap_killed "$remote_pid"
      start_remote
      return 0
    fi
    # find fails when an fd closes while it lists them: count again.
    n=$(find "/proc/$remote_pid/fd" -lname 'socket:*' 2>/dev/null | wc -l) ||
      n=$((remote_base + 1))
    [ "$n" -le "$remote_base" ] && return 0
    sleep 0.1
  done
  echo "FAIL: the remote kept the killed plugin's connections for 60 s" >&2
  exit 1
}

truncate -s $((32 * MiB)) "$rimg"
truncate -s $((32 * MiB)) "$model"
start_remote
serve
kill -STOP "$remote_pid"
cleanup_fn signal_if_running CONT "$remote_pid"

# ---- 1. 56 MiB through an 8 MiB cache, the remote stopped ---------------

MODEL=$model nbdsh_py -u "$uri" -c '
import os, random
MiB = 1 << 20
rng = random.Random(5)
model = open(os.environ["MODEL"], "r+b")
def w(data, off):
    h.pwrite(data, off)
    model.seek(off); model.write(data)
# First every byte, so that no fill below needs the stopped remote.
for off in range(0, 32 * MiB, MiB):
    w(rng.randbytes(MiB), off)
    if off % (4 * MiB) == 0:
        h.flush()
done = 0
while done < 24 * MiB:
    if rng.random() < 0.5:
        n = 4096; off = rng.randrange(0, 32 * MiB // 4096) * 4096
    else:
        n = 65536; off = rng.randrange(0, 32 * MiB // 65536) * 65536
    w(rng.randbytes(n), off)
    done += n
    if done % MiB < n:
        h.flush()
w(rng.randbytes(1000), 7 * MiB + 333)
h.zero(3 * 65536, 20 * MiB)
model.seek(20 * MiB); model.write(bytes(3 * 65536))
h.flush()
model.close()
'
spilled=$(metric "$msock" journal_spilled_pages_total)
index=$(metric "$msock" journal_index_bytes)
drained=$(metric "$msock" journal_drained_records_total)
echo "1: spilled pages $spilled, index $index bytes, drained records $drained"
[ "$spilled" -gt 0 ] || { echo "FAIL: 1: no page left memory" >&2; exit 1; }
[ "$index" -gt 0 ] || { echo "FAIL: 1: the index is empty" >&2; exit 1; }
[ "$drained" -eq 0 ] || {
  echo "FAIL: 1: records were drained to a stopped remote?" >&2; exit 1; }

# ---- 2. read back from the journal ---------------------------------------

readback 2
jread=$(metric "$msock" journal_read_bytes_total)
echo "2: every byte read back, $jread bytes from the journal"
[ "$jread" -gt 0 ] || { echo "FAIL: 2: nothing read from the journal" >&2; exit 1; }

# ---- 3. fills from the journal, SIGKILL, replay --------------------------

MODEL=$model nbdsh_py -u "$uri" -c '
import os, random
rng = random.Random(6)
model = open(os.environ["MODEL"], "r+b")
for i in range(64):
    off = rng.randrange(0, 32 << 20) | 1
    data = rng.randbytes(rng.randint(1, 700))
    h.pwrite(data, off)
    model.seek(off); model.write(data)
h.flush()
model.close()
'
kill -KILL "$nbdkit_pid"
reap_killed "$nbdkit_pid"
kill -CONT "$remote_pid"
remote_settled
serve
# A client that connects waits for the replay (in .after_fork).
readback 3
grep -q "journal: replayed" "$log" || {
  echo "FAIL: 3: no 'journal: replayed' line in the log" >&2; exit 1; }
stop_nbdkit_ok "$pid" 120
stop_nbdkit_ok "$rpid" 60
if ! cmp "$rimg" "$model"; then
  echo "FAIL: 3: after a clean stop the remote's image differs from the model" >&2
  exit 1
fi
echo "3: every byte read back after SIGKILL and replay; the image equals the model"
echo "$0: ok"
