#!/usr/bin/env bash
# A read-only export (nbdkit -r): the client sees it read-only, reads
# work through the cache, writes and zeroes fail, and the image file is
# left exactly as it was.  (chmod 0444 would not do: root, who runs the
# tests, can write to it anyway.)

source "$(dirname "$0")/../functions.sh"
set -euo pipefail

requires_plugin
requires_nbdsh
make_tmpdir

img=$tmpdir/disk.img
orig=$tmpdir/orig.img
sock=$tmpdir/nbd.sock
pid=$tmpdir/nbdkit.pid

head -c 8M /dev/urandom > "$img"
cp "$img" "$orig"

start_nbdkit -P "$pid" -U "$sock" -r "$PLUGIN" file="$img" cache-size=1M

export IMG=$img
nbdsh_py -u "$(nbd_uri "$sock")" -c - <<'EOF'
import os

with open(os.environ["IMG"], "rb") as f:
    want = f.read()
assert h.is_read_only(), "export is not read-only under nbdkit -r"
assert h.get_size() == len(want)

# Reads of any alignment, including more than the 1 MiB cache holds.
for off, count in [(0, 8 << 20), (1, 1), (4095, 70000), (len(want) - 3, 3)]:
    assert h.pread(count, off) == want[off:off + count], (off, count)

def must_fail(what, fn):
    try:
        fn()
    except nbd.Error as e:
        print("ok: %s failed: %s" % (what, e))
    else:
        raise AssertionError("%s succeeded on a read-only export" % what)

must_fail("pwrite", lambda: h.pwrite(b"x" * 4096, 0))
must_fail("unaligned pwrite", lambda: h.pwrite(b"y", 12345))
must_fail("zero", lambda: h.zero(65536, 0))
must_fail("trim", lambda: h.trim(65536, 0))

# The connection is still usable, and the data unchanged.
assert h.pread(4096, 0) == want[:4096]
h.shutdown()
EOF

stop_nbdkit "$pid"
cmp "$img" "$orig"

# An image the server cannot write is served read-only, and nbdkit says
# so once at normal verbosity (no -v), on stderr, not as an error.  Root
# without CAP_DAC_OVERRIDE cannot write its own 0444 file.  A writable
# image, with or without -r, gets no such line.
log=$tmpdir/stderr
notice="file=$img: the image cannot be written (Permission denied): serving it read-only"
if command -v setpriv >/dev/null && [ "$(id -u)" -eq 0 ]; then
  chmod 0444 "$img"
  timeout 120 setpriv --bounding-set=-dac_override \
    env "${_nbdkit_env[@]}" nbdkit -U - "$PLUGIN" file="$img" \
    --run 'nbdinfo --is read-only "$uri"' 2>"$log"
  cat "$log"
  n=$(grep -cF -- "$notice" "$log" || true)
  [ "$n" -eq 1 ] ||
    { echo "$0: the read-only notice appears $n times, expected once" >&2; exit 1; }
  ! grep -q 'error' "$log" ||
    { echo "$0: the read-only image logged an error" >&2; exit 1; }
  chmod 0644 "$img"
else
  _skip "the read-only notice needs root and setpriv (util-linux)"
fi
for ro in "" -r; do
  nbdkit_cmd -U - $ro "$PLUGIN" file="$img" --run 'exit 0' 2>"$log"
  ! grep -qF "serving it read-only" "$log" ||
    { echo "$0: writable image ($ro): read-only notice printed" >&2; cat "$log" >&2; exit 1; }
done
cmp "$img" "$orig"
echo ok
