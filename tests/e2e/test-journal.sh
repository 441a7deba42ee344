#!/usr/bin/env bash
# journal= and journal-size= end to end (docs/journal.md): the journal,
# not the image, makes a write durable, and a journal that does not fit
# is refused at start-up and left as it was.
#
# 1. Flush, then SIGKILL: with dirty-writeback-ms=60000 the drainer has
#    not written the image (checked: it still holds its initial
#    pattern).  A server restarted on the same journal replays it: every
#    byte written before the flush (writes, a zero, unaligned ranges,
#    an overwrite) reads back through it (served from the journal, the
#    log says, while the drainer writes it back); after a clean stop (SIGTERM)
#    the image file itself equals the model (cmp), and the log says the
#    recovered log was written back.
# 2. A FUA write, no flush, then SIGKILL: the same, for the FUA write
#    (a write after it without FUA or flush is not checked).
# 3. Refusals at start-up: nbdkit exits non-zero, its message names
#    journal= and says why (key words checked), and the journal file is
#    byte for byte and in size what it was (cmp with a copy):
#      a journal of another image; the same image with another
#      sector-size=; a superblock corrupted in both slots; an existing
#      non-journal file (2 MiB of random bytes, and a 6-byte one), with
#      and without journal-size=; a journal of another image given with a
#      larger journal-size=; journal-size= too small; journal= with
#      mode=writethrough; journal-size= without journal=.
# 4. An image shrunk below journaled data: SIGKILL with journaled data
#    near the end, truncate the image, restart: refused ("shrunk"), the
#    journal unchanged.
# 5. Drain steps across epochs whose first record is larger than the
#    last one's (12 x: 512-byte write, flush, 256 KiB write, flush; then
#    a clean stop): nbdkit must not abort, and the image holds them all.

source "$(dirname "$0")/../functions.sh"
set -euo pipefail

requires_plugin
requires_nbdsh
requires truncate cmp
make_tmpdir

sock=$tmpdir/nbd.sock
pid=$tmpdir/nbdkit.pid
log=$tmpdir/nbdkit.log
uri=$(nbd_uri "$sock")
MiB=$((1 << 20))
fail=0

# pattern FILE SIZE: FILE holds SIZE bytes of 0..250 repeated (never all
# zero, never a journal).
pattern ()
{
  /usr/bin/python3 -c '
import sys
n = int(sys.argv[2])
p = bytes(range(251)) * (n // 251 + 1)
open(sys.argv[1], "wb").write(p[:n])
' "$1" "$2"
}

# serve IMAGE JOURNAL ARGS...: start nbdkit on IMAGE with journal=JOURNAL.
serve ()
{
  local img=$1 jnl=$2
  shift 2
  start_nbdkit -P "$pid" -U "$sock" "$PLUGIN" file="$img" journal="$jnl" \
               cache-size=16M page-size=64K "$@" 2>>"$log"
}

# crash: SIGKILL the server started last, by PID.
crash ()
{
  kill -KILL "$nbdkit_pid"
  reap_killed "$nbdkit_pid"
}

# ---- 1. flush, SIGKILL, replay ------------------------------------------

img=$tmpdir/disk.img
jnl=$tmpdir/disk.jnl
model=$tmpdir/model.img
pattern "$img" $((16 * MiB))
cp "$img" "$model"
cp "$img" "$tmpdir/initial.img"

serve "$img" "$jnl" journal-size=8M dirty-writeback-ms=60000
MODEL=$model nbdsh_py -u "$uri" -c '
import os
MiB = 1 << 20
model = open(os.environ["MODEL"], "r+b")
def w(data, off, fua=False):
    h.pwrite(data, off, nbd.CMD_FLAG_FUA if fua else 0)
    model.seek(off); model.write(data)
def z(n, off):
    h.zero(n, off)
    model.seek(off); model.write(bytes(n))
w(b"A" * 4096, 0)
w(b"B" * 100, 5000)                       # unaligned, inside a sector
w(bytes(range(256)) * 1024, 3 * MiB)      # 256 KiB
w(b"C" * 65536, 3 * MiB + 4096)           # overwrites part of it
z(128 * 1024, 8 * MiB + 512)
w(b"D" * 7, 16 * MiB - 7)                 # the last bytes of the image
h.flush()
model.close()
'
crash
# The drainer waited 60 s: the image must not have been written yet, or
# this test proves nothing about the journal.
if ! cmp -s "$img" "$tmpdir/initial.img"; then
  echo "FAIL: 1: the image was written before the kill (drainer ran): the" \
       "test cannot tell the journal from the image" >&2
  exit 1
fi
serve "$img" "$jnl" dirty-writeback-ms=60000
# The replay runs in .after_fork, while clients wait: the socket may be
# there before its summary line, so the line is looked for after a
# client got through.
MODEL=$model nbdsh_py -u "$uri" -c '
import os
want = open(os.environ["MODEL"], "rb").read()
got = bytearray()
for off in range(0, len(want), 1 << 20):
    got += h.pread(1 << 20, off)
assert len(got) == len(want)
if got != want:
    bad = next(i for i in range(len(want)) if got[i] != want[i])
    raise SystemExit("FAIL: 1: after replay, byte %d reads %d, wrote %d" %
                     (bad, got[bad], want[bad]))
print("1: every byte flushed before SIGKILL read back after replay")
'
grep -q "journal: replayed" "$log" || {
  echo "FAIL: 1: no 'journal: replayed' line in the log" >&2; fail=1; }
# Served from the journal, not written to the image first (its drainer
# writes it back at once, in the background; the unit tests check that
# recovery itself writes nothing).
grep -q "journal: replayed .* into the index: serving them from the journal" "$log" || {
  echo "FAIL: 1: the restart did not serve from the journal" >&2; fail=1; }
stop_nbdkit_ok "$pid" 60
if ! cmp "$img" "$model"; then
  echo "FAIL: 1: after a clean stop the image file differs from the model" >&2
  exit 1
fi
grep -q "journal: the recovered log is written back" "$log" || {
  echo "FAIL: 1: no 'the recovered log is written back' line" >&2; fail=1; }
echo "1: ok: served from the journal; the image file equals the model after a clean stop"

# ---- 2. FUA without flush ----------------------------------------------

cp "$img" "$tmpdir/before2.img"
serve "$img" "$jnl" dirty-writeback-ms=60000
MODEL=$model nbdsh_py -u "$uri" -c '
import os
MiB = 1 << 20
model = open(os.environ["MODEL"], "r+b")
data = bytes((i * 7 + 3) % 256 for i in range(200000))
h.pwrite(data, 5 * MiB + 12345, nbd.CMD_FLAG_FUA)
model.seek(5 * MiB + 12345); model.write(data)
h.zero(4096, 9 * MiB, nbd.CMD_FLAG_FUA)
model.seek(9 * MiB); model.write(bytes(4096))
model.close()
'
crash
if ! cmp -s "$img" "$tmpdir/before2.img"; then
  echo "FAIL: 2: the image was written before the kill (drainer ran)" >&2
  exit 1
fi
serve "$img" "$jnl" dirty-writeback-ms=60000
MODEL=$model nbdsh_py -u "$uri" -c '
import os
want = open(os.environ["MODEL"], "rb").read()
got = bytearray()
for off in range(0, len(want), 1 << 20):
    got += h.pread(1 << 20, off)
if got != want:
    bad = next(i for i in range(len(want)) if got[i] != want[i])
    raise SystemExit("FAIL: 2: after replay, byte %d reads %d, wrote %d" %
                     (bad, got[bad], want[bad]))
print("2: the FUA write and zero read back after SIGKILL and replay")
'
stop_nbdkit_ok "$pid" 60
cmp "$img" "$model" || { echo "FAIL: 2: image file != model" >&2; exit 1; }
echo "2: ok"

# ---- 3. refusals ---------------------------------------------------------

# refused NAME JOURNAL KEYWORDS-REGEX ARGS...: nbdkit ARGS must exit
# non-zero, its output must name journal= (or journal-size=) and match
# KEYWORDS-REGEX (grep -E, case-insensitive), and JOURNAL (if not "-")
# must be unchanged: same bytes, same size, or still absent.
refused ()
{
  local name=$1 j=$2 re=$3 status=0 out
  shift 3
  if [ "$j" != - ] && [ -e "$j" ]; then
    cp "$j" "$tmpdir/jcopy"
  else
    rm -f "$tmpdir/jcopy"
  fi
  rm -f "$sock"
  out=$(nbdkit_cmd -f -U "$sock" "$PLUGIN" "$@" 2>&1) || status=$?
  echo "  [$name] status $status: $out" | tr '\n' ' '
  echo
  if [ "$status" -eq 0 ] || [ "$status" -eq 124 ]; then
    echo "FAIL: 3: $name: nbdkit exited with status $status, not refused" >&2
    fail=1
  fi
  if ! grep -q "journal" <<< "$out"; then
    echo "FAIL: 3: $name: the message does not name journal=" >&2
    fail=1
  fi
  if ! grep -qiE "$re" <<< "$out"; then
    echo "FAIL: 3: $name: the message does not say why (/$re/)" >&2
    fail=1
  fi
  if [ "$j" != - ]; then
    if [ -e "$tmpdir/jcopy" ]; then
      if ! cmp "$j" "$tmpdir/jcopy"; then
        echo "FAIL: 3: $name: the journal file was changed" \
             "($(stat -c %s "$tmpdir/jcopy") -> $(stat -c %s "$j") bytes)" >&2
        fail=1
      fi
    elif [ -e "$j" ]; then
      echo "FAIL: 3: $name: a journal file was created" >&2
      fail=1
    fi
  fi
}

img2=$tmpdir/other.img
pattern "$img2" $((16 * MiB))
# A journal with records in it: of $img, killed with data not drained.
jnl=$tmpdir/j3.jnl
serve "$img" "$jnl" journal-size=4M dirty-writeback-ms=60000
nbdsh_py -u "$uri" -c 'h.pwrite(b"R" * 65536, 1 << 20); h.flush()'
crash
cp "$jnl" "$tmpdir/j3.orig"

refused "another image" "$jnl" "belongs to file:$img.*not to file:$img2" \
        file="$img2" journal="$jnl"
refused "another image, larger journal-size=" "$jnl" "belongs to" \
        file="$img2" journal="$jnl" journal-size=8M
refused "another sector-size" "$jnl" "sector-size=4096" \
        file="$img" journal="$jnl" sector-size=4096

jc=$tmpdir/corrupt.jnl
cp "$tmpdir/j3.orig" "$jc"
# Bytes inside both superblock slots (offsets 0 and 4096).
printf 'CORRUPTED' | dd of="$jc" bs=1 seek=40 conv=notrunc status=none
printf 'CORRUPTED' | dd of="$jc" bs=1 seek=$((4096 + 40)) conv=notrunc status=none
refused "corrupt superblock" "$jc" "corrupt" file="$img" journal="$jc"

jf=$tmpdir/foreign.bin
head -c $((2 * MiB)) /dev/urandom > "$jf"
refused "not a journal" "$jf" "no subpage journal|not a journal" \
        file="$img" journal="$jf"
refused "not a journal, journal-size=" "$jf" "no subpage journal|not a journal" \
        file="$img" journal="$jf" journal-size=8M
jt=$tmpdir/tiny.txt
echo hello > "$jt"
refused "small non-journal file" "$jt" "no subpage journal|not a journal|too small" \
        file="$img" journal="$jt"
# journal-size= never changes an existing file: still too small.
refused "small non-journal file, journal-size=" "$jt" \
        "no subpage journal|not a journal|too small" \
        file="$img" journal="$jt" journal-size=8M

refused "journal-size too small" "$tmpdir/new.jnl" "at least|too small" \
        file="$img" journal="$tmpdir/new.jnl" journal-size=4K
refused "mode=writethrough" "$tmpdir/new.jnl" "mode=writeback" \
        file="$img" journal="$tmpdir/new.jnl" mode=writethrough
refused "journal-size without journal" - "needs journal=" \
        file="$img" journal-size=8M

# The journal still works on its own image after all that.
serve "$img" "$jnl" dirty-writeback-ms=60000
nbdsh_py -u "$uri" -c 'assert h.pread(65536, 1 << 20) == b"R" * 65536'
stop_nbdkit_ok "$pid" 60
echo "3: refusals checked"

# ---- 4. an image shrunk below journaled data -------------------------------

img4=$tmpdir/shrink.img
jnl4=$tmpdir/shrink.jnl
pattern "$img4" $((16 * MiB))
serve "$img4" "$jnl4" journal-size=4M dirty-writeback-ms=60000
nbdsh_py -u "$uri" -c '
h.pwrite(b"E" * 65536, (16 << 20) - 65536)
h.flush()
'
crash
truncate -s 8M "$img4"
refused "shrunk image" "$jnl4" "shrunk|past the end" \
        file="$img4" journal="$jnl4"
[ "$(stat -c %s "$img4")" -eq $((8 * MiB)) ] || {
  echo "FAIL: 4: the refused start changed the image's size" >&2; fail=1; }
echo "4: shrunk image checked"

# ---- 5. drain steps across epochs whose first record is larger ------------
# One drain step scans the records of one epoch and stops at the first
# record of the next (cache/journal.c, drain_locked).  12 times: a
# 512-byte write, flush, a 256 KiB write, flush (the journal fills up,
# so the drainer runs even with dirty-writeback-ms=60000), then a clean
# stop.  Every request must succeed, nbdkit exit 0, the image hold all.

img5=$tmpdir/epochs.img
pattern "$img5" $((16 * MiB))
serve "$img5" "$tmpdir/epochs.jnl" journal-size=8M dirty-writeback-ms=60000
status=0
timeout 60 /usr/bin/python3 - "$uri" <<'EOF' || status=$?
import nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
for i in range(12):
    h.pwrite(b"a" * 512, i * 4096)
    h.flush()
    h.pwrite(b"b" * (1 << 18), (4 << 20) + (i << 18))
    h.flush()
h.shutdown()
EOF
[ "$status" -eq 0 ] || {
  echo "FAIL: 5: the client failed (status $status)" >&2; fail=1; }
status=0
if _pid_running "$nbdkit_pid"; then
  stop_nbdkit "$pid" 60 || status=$?
else
  wait "$nbdkit_pid" || status=$?
  _nbdkit_stopped+="$nbdkit_pid "
fi
if [ "$status" -ne 0 ]; then
  echo "FAIL: 5: nbdkit exited with status $status (134: abort) draining" \
       "epochs; its log:" >&2
  tail -n 3 "$log" >&2
  fail=1
else
  /usr/bin/python3 - "$img5" <<'EOF' || fail=1
import sys
with open(sys.argv[1], "rb") as f:
    img = f.read()
for i in range(12):
    assert img[i * 4096:i * 4096 + 512] == b"a" * 512, "FAIL: 5: write %d" % i
    o = (4 << 20) + (i << 18)
    assert img[o:o + (1 << 18)] == b"b" * (1 << 18), "FAIL: 5: write %d" % i
print("5: every epoch drained")
EOF
fi

if [ "$fail" -ne 0 ]; then
  echo "$0: FAILED (see FAIL lines above)" >&2
  exit 1
fi
echo "$0: ok"
