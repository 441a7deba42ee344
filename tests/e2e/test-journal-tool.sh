#!/usr/bin/env bash
# subpage-journal (tools/subpage-journal.c, docs/subpage-journal.pod):
# check, dump and drain a journal the plugin left behind.
#
# 1. file=: the plugin with journal= and no write-back for a minute
#    writes, zeroes and trims over three epochs (a flush after each),
#    then is killed with SIGKILL: the image is unchanged, the writes
#    are only in the journal.
# 2. check and dump show the superblock (ident file:IMAGE) and the
#    records, by type, with their epochs.
# 3. drain onto another image is refused and changes neither it nor the
#    journal; drain --force onto an image too small for the records is
#    refused too and changes nothing.
# 4. drain --file=IMAGE puts every write on the image (compared with a
#    model, byte for byte, the trimmed range aside); a second drain
#    finds nothing and leaves the journal as it is; the plugin started
#    again replays nothing and serves the model.
# 5. uri=: the same against an `nbdkit file' remote on a unix socket:
#    drain --uri with another URI, or --file, is refused; drain
#    --uri=URI puts the writes on the remote's file.
# 6. A control for "replays nothing": a journal left by SIGKILL makes
#    the plugin say "replayed" when it starts.
# 7. A corrupt superblock (both slots) and one of a newer version:
#    check exits 1 and says so (naming the version); usage errors exit
#    2.

source "$(dirname "$0")/../functions.sh"
set -euo pipefail

requires_plugin
requires_nbdsh
requires cmp truncate
: "${SUBPAGE_JOURNAL:=$BUILDDIR/tools/subpage-journal}"
if [ ! -x "$SUBPAGE_JOURNAL" ]; then
  echo "$0: subpage-journal not found: $SUBPAGE_JOURNAL (build it first)" >&2
  exit 1
fi
make_tmpdir

tool () { "$SUBPAGE_JOURNAL" "$@"; }
fail () { echo "FAIL: $*" >&2; exit 1; }

MiB=$((1 << 20))
img=$tmpdir/disk.img
orig=$tmpdir/orig.img
model=$tmpdir/model.img
jnl=$tmpdir/disk.journal
sock=$tmpdir/nbd.sock
pid=$tmpdir/nbdkit.pid
log=$tmpdir/nbdkit.log

# The image: bytes i % 251.  A copy is the original to compare with.
/usr/bin/python3 -c '
import sys
sys.stdout.buffer.write(bytes(i % 251 for i in range(251)) * (16 * 1024 * 1024 // 251 + 1))
' | head -c $((16 * MiB)) > "$img"
cp "$img" "$orig"

# The writes: three epochs, a flush after each.  The same function
# builds the model from the original, so both agree.  The trim at 12 MiB
# reads unspecified: the comparisons skip it.
cat > "$tmpdir/writes.py" <<'EOF'
import random
MiB = 1 << 20
TRIM = (12 * MiB, 65536)

def writes():
    rnd = random.Random(7)
    yield ("pwrite", b"A" * 65536, 0)
    yield ("pwrite", b"B" * 4096, 5 * MiB + 512)
    yield ("flush",)
    yield ("pwrite", rnd.randbytes(MiB), 2 * MiB)
    yield ("zero", 131072, 8 * MiB)
    yield ("trim", TRIM[1], TRIM[0])
    yield ("flush",)
    yield ("pwrite", b"C" * 512, 0)
    yield ("pwrite", b"D" * 8192, 8 * MiB + 4096)
    yield ("flush",)

def apply_to(h):
    for w in writes():
        if w[0] == "pwrite":
            h.pwrite(w[1], w[2])
        elif w[0] == "zero":
            h.zero(w[1], w[2])
        elif w[0] == "trim":
            h.trim(w[1], w[2])
        else:
            h.flush()

def model(data):
    data = bytearray(data)
    for w in writes():
        if w[0] == "pwrite":
            data[w[2]:w[2] + len(w[1])] = w[1]
        elif w[0] == "zero":
            data[w[2]:w[2] + w[1]] = bytes(w[1])
    return data

def same(a, b):
    """a and b equal outside the trimmed range."""
    off, n = TRIM
    return len(a) == len(b) and a[:off] == b[:off] and a[off + n:] == b[off + n:]
EOF
/usr/bin/python3 - "$tmpdir" "$orig" "$model" <<'EOF'
import sys
sys.path.insert(0, sys.argv[1])
import writes
open(sys.argv[3], "wb").write(writes.model(open(sys.argv[2], "rb").read()))
EOF

# same_as_model FILE: FILE holds the model (outside the trimmed range).
same_as_model ()
{
  /usr/bin/python3 - "$tmpdir" "$1" "$model" <<'EOF'
import sys
sys.path.insert(0, sys.argv[1])
import writes
a = open(sys.argv[2], "rb").read()
b = open(sys.argv[3], "rb").read()
if not writes.same(a, b):
    bad = next(i for i in range(min(len(a), len(b))) if a[i] != b[i])
    sys.exit("%s differs from the model at byte %d" % (sys.argv[2], bad))
EOF
}

# write_and_crash ARGS...: the plugin with ARGS (the image and journal=)
# gets the writes, then SIGKILL.
write_and_crash ()
{
  start_nbdkit -P "$pid" -U "$sock" "$PLUGIN" "$@" \
               dirty-writeback-ms=60000 dirty-expire-ms=3600000 2>"$log"
  local status=0
  WRITES_DIR=$tmpdir timeout 60 env PATH="/usr/bin:$PATH" nbdsh \
    -u "$(nbd_uri "$sock")" -c '
import os, sys
sys.path.insert(0, os.environ["WRITES_DIR"])
import writes
writes.apply_to(h)
' || status=$?
  check_client "$status"
  kill -KILL "$nbdkit_pid"
  reap_killed "$nbdkit_pid"
}

# ---- 1. a journal the plugin left behind ----------------------------------

write_and_crash file="$img" journal="$jnl" journal-size=16M
cmp "$img" "$orig" || fail "the image changed before the drain: write-back ran"

# ---- 2. check and dump -----------------------------------------------------

out=$(tool check "$jnl") || fail "check exited $?"
echo "$out"
grep -qxF "ident:        file:$img" <<<"$out" || fail "check: no ident file:$img"
grep -qx 'superblock:   slot [01], generation [0-9]*, format version 1 .*' \
  <<<"$out" || fail "check: no superblock line"
# The plugin makes one record per page a request touches, so the
# records are counted, and their bytes checked: 1 MiB + 64 KiB + 4 KiB +
# 8 KiB + 512 of data, 128 KiB zeroed, 64 KiB trimmed.
nrec=$(sed -n 's/^records: *\([0-9]*\) (DATA [0-9]*, ZERO [0-9]*, TRIM 1, BYPASS 0)$/\1/p' <<<"$out")
if [ -z "$nrec" ] || [ "$nrec" -lt 7 ]; then
  fail "check: not the records written"
fi
grep -qx "bytes: .*; 1126912 of data, 131072 zeroed, 65536 trimmed, 0 written around the journal" <<<"$out" ||
  fail "check: not the bytes written"
grep -qx 'epochs:       3 .*' <<<"$out" || fail "check: not 3 epochs"

out=$(tool dump "$jnl") || fail "dump exited $?"
echo "$out"
[ "$(grep -c '^seq [0-9]* epoch [0-9]* \(DATA\|ZERO\|TRIM\) offset' <<<"$out")" -eq "$nrec" ] ||
  fail "dump: not $nrec record lines"
# Per type, the bytes in [2 MiB, 3 MiB), [8 MiB, 8 MiB + 128 KiB) and
# [12 MiB, 12 MiB + 64 KiB); seqs follow each other, epochs never
# decrease.
sums=$(awk -v M=$MiB '
  /^seq / {
    if (n++ > 0 && ($2 != seq + 1 || $4 < epoch)) bad = 1
    seq = $2; epoch = $4
    if ($5 == "DATA" && $7 >= 2 * M && $7 < 3 * M) d += $9
    if ($5 == "ZERO" && $7 >= 8 * M && $7 < 8 * M + 131072) z += $9
    if ($5 == "TRIM" && $7 == 12 * M) t += $9
  }
  END { print (bad ? "disorder" : "ok"), d, z, t }' <<<"$out")
[ "$sums" = "ok $MiB 131072 65536" ] || fail "dump: records do not add up: $sums"

# ---- 3. refusals that change nothing --------------------------------------

cp "$jnl" "$tmpdir/journal.before"
other=$tmpdir/other.img
cp "$orig" "$other"
status=0
tool drain "$jnl" --file="$other" 2>"$tmpdir/err" || status=$?
cat "$tmpdir/err"
[ "$status" -eq 1 ] || fail "drain onto another image: status $status, not 1"
grep -q "belongs to file:$img, not to file:$other" "$tmpdir/err" ||
  fail "drain onto another image: no clear message"
cmp "$other" "$orig" || fail "drain onto another image changed it"
cmp "$jnl" "$tmpdir/journal.before" || fail "a refused drain changed the journal"

small=$tmpdir/small.img
head -c "$MiB" "$orig" > "$small"
status=0
tool drain "$jnl" --file="$small" --force 2>"$tmpdir/err" || status=$?
cat "$tmpdir/err"
[ "$status" -eq 1 ] || fail "drain --force onto a small image: status $status"
grep -q "past the end of file=$small" "$tmpdir/err" ||
  fail "drain onto a small image: no clear message"
cmp "$small" <(head -c "$MiB" "$orig") || fail "drain onto a small image changed it"
cmp "$jnl" "$tmpdir/journal.before" || fail "a refused drain changed the journal"

# ---- 4. drain, drain again, start the plugin --------------------------------

tool drain "$jnl" --file="$img" 2>"$tmpdir/err" || {
  cat "$tmpdir/err"
  fail "drain exited $?"
}
cat "$tmpdir/err"
grep -q "replayed $nrec records" "$tmpdir/err" || fail "drain: no summary on stderr"
grep -q "drain: $nrec of $nrec records" "$tmpdir/err" || fail "drain: no progress"
same_as_model "$img"

cp "$jnl" "$tmpdir/journal.drained"
out=$(tool check "$jnl") || fail "check after the drain exited $?"
grep -qx 'records:      0 (DATA 0, ZERO 0, TRIM 0, BYPASS 0)' <<<"$out" ||
  fail "check after the drain: records left"
tool drain "$jnl" --file="$img" 2>"$tmpdir/err" || fail "second drain exited $?"
cat "$tmpdir/err"
grep -q 'nothing to replay' "$tmpdir/err" || fail "second drain: found something"
cmp "$jnl" "$tmpdir/journal.drained" || fail "second drain changed the journal"
same_as_model "$img"

start_nbdkit -P "$pid" -U "$sock" "$PLUGIN" file="$img" journal="$jnl" \
             dirty-writeback-ms=60000 2>"$log"
MODEL=$model timeout 60 env PATH="/usr/bin:$PATH" nbdsh \
  -u "$(nbd_uri "$sock")" -c '
import os
m = open(os.environ["MODEL"], "rb").read()
MiB = 1 << 20
for off in range(0, 16 * MiB, 4 * MiB):
    d = h.pread(4 * MiB, off)
    for i in range(0, 4 * MiB, 65536):
        if off + i == 12 * MiB:
            continue          # trimmed
        assert d[i:i + 65536] == m[off + i:off + i + 65536], off + i
' || fail "the plugin after the drain does not serve the model"
stop_nbdkit_ok "$pid" 60
cat "$log"
if grep -q 'replayed' "$log"; then
  fail "the plugin replayed the drained journal again"
fi
same_as_model "$img"

# ---- 5. uri= ----------------------------------------------------------------

rimg=$tmpdir/remote.img
rsock=$tmpdir/remote.sock
rpid=$tmpdir/remote.pid
rjnl=$tmpdir/remote.journal
cp "$orig" "$rimg"
start_nbdkit -P "$rpid" -U "$rsock" file "$rimg"
ruri=$(nbd_uri "$rsock")

write_and_crash uri="$ruri" journal="$rjnl" journal-size=16M
cmp "$rimg" "$orig" || fail "uri=: the remote changed before the drain"
out=$(tool check "$rjnl") || fail "check (uri=) exited $?"
grep -qxF "ident:        uri:$ruri" <<<"$out" || fail "check: no ident uri:$ruri"

cp "$rjnl" "$tmpdir/journal.before"
for wrong in --uri="$ruri&x=1" --file="$rimg"; do
  status=0
  tool drain "$rjnl" "$wrong" 2>"$tmpdir/err" || status=$?
  cat "$tmpdir/err"
  [ "$status" -eq 1 ] || fail "drain $wrong: status $status, not 1"
  grep -q "belongs to uri:$ruri" "$tmpdir/err" || fail "drain $wrong: no message"
  cmp "$rjnl" "$tmpdir/journal.before" || fail "drain $wrong changed the journal"
  cmp "$rimg" "$orig" || fail "drain $wrong changed the image"
done

tool drain "$rjnl" --uri="$ruri" 2>"$tmpdir/err" || {
  cat "$tmpdir/err"
  fail "drain --uri exited $?"
}
cat "$tmpdir/err"
grep -q "replayed $nrec records" "$tmpdir/err" || fail "drain --uri: no summary"
stop_nbdkit_ok "$rpid" 60
same_as_model "$rimg"
status=0
tool drain "$rjnl" --file="$rimg" --force 2>"$tmpdir/err" || status=$?
grep -q 'nothing to replay' "$tmpdir/err" || fail "second drain (uri=): found something"

# ---- 6. control: the plugin says "replayed" when there is something -------

cp "$orig" "$img"
rm -f "$jnl"
write_and_crash file="$img" journal="$jnl" journal-size=16M
start_nbdkit -P "$pid" -U "$sock" "$PLUGIN" file="$img" journal="$jnl" \
             dirty-writeback-ms=60000 2>"$log"
stop_nbdkit_ok "$pid" 60
grep -q "replayed $nrec records" "$log" || {
  cat "$log"
  fail "control: the plugin did not say it replayed the journal"
}
same_as_model "$img"

# ---- 7. a corrupt superblock, a newer version, usage errors ----------------

bad=$tmpdir/bad.journal
cp "$jnl" "$bad"
printf 'XX' | dd of="$bad" bs=1 seek=200 conv=notrunc status=none
printf 'XX' | dd of="$bad" bs=1 seek=$((4096 + 200)) conv=notrunc status=none
status=0
tool check "$bad" >/dev/null 2>"$tmpdir/err" || status=$?
cat "$tmpdir/err"
[ "$status" -eq 1 ] || fail "check of a corrupt superblock: status $status"
grep -q 'the superblock is corrupt' "$tmpdir/err" || fail "corrupt: no message"

# Both slots say version 7, with a right CRC32C.
cp "$jnl" "$bad"
/usr/bin/python3 - "$bad" <<'EOF'
import struct, sys
def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xFFFFFFFF
with open(sys.argv[1], "r+b") as f:
    for slot in (0, 4096):
        f.seek(slot)
        s = bytearray(f.read(4096))
        s[8:12] = struct.pack("<I", 7)
        s[4092:4096] = struct.pack("<I", crc32c(bytes(s[:4092])))
        f.seek(slot)
        f.write(s)
EOF
status=0
tool check "$bad" >/dev/null 2>"$tmpdir/err" || status=$?
cat "$tmpdir/err"
[ "$status" -eq 1 ] || fail "check of a newer version: status $status"
grep -q 'newer subpage: format version 7' "$tmpdir/err" ||
  fail "newer version: the message does not name it"

status=0
tool check "$tmpdir/orig.img" 2>"$tmpdir/err" || status=$?
if [ "$status" -ne 1 ] || ! grep -q 'not a subpage journal' "$tmpdir/err"; then
  fail "check of a non-journal: status $status"
fi

for args in "" "check" "frob $jnl" "drain $jnl" "check $jnl --file=$img" \
            "drain $jnl --file=$img --uri=$ruri" "check $jnl $jnl"; do
  status=0
  # shellcheck disable=SC2086
  tool $args >/dev/null 2>&1 || status=$?
  [ "$status" -eq 2 ] || fail "'$args': status $status, not 2"
done
tool --help | grep -q '^usage:' || fail "--help"

echo "ok"
