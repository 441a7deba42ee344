#!/usr/bin/env bash
# The remote NBD backend (uri=): subpage in front of `nbdkit memory`.
#
# 1. Random reads, writes and zeroes (unaligned, sub-sector, across
#    pages) through a cache much smaller than the export, against a
#    Python model: every read; after a FUA write the remote (read over a
#    connection of its own) holds it; after a flush the whole remote
#    equals the model.  The remote's log (log filter) shows subpage's
#    4 connections, requests in flight on several at once, and FUA
#    writes sent as FUA.
# 2. Multi-conn: two client connections write disjoint regions; nothing
#    reaches the remote before the flush (dirty-expire-ms is an hour),
#    one flush on the first connection puts both on the remote and
#    sends the remote a flush.
# 3. A remote without multi-conn: subpage uses one connection, and
#    writes and flush still work.
# 4. A read-only remote: the export is read-only, reads work, writes
#    fail.
# 5. Configuration: file= and uri= together, and a remote that does not
#    answer, fail at startup naming the parameter.

source "$(dirname "$0")/../functions.sh"
set -euo pipefail

requires_plugin
requires_nbdsh
make_tmpdir

bsock=$tmpdir/backend.sock
bpid=$tmpdir/backend.pid
blog=$tmpdir/backend.log
sock=$tmpdir/nbd.sock
pid=$tmpdir/nbdkit.pid

# ---- 1. random I/O vs a model ------------------------------------------
start_nbdkit -P "$bpid" -U "$bsock" --filter=log memory 64M \
             logfile="$blog"
export BURI=$(nbd_uri "$bsock") URI=$(nbd_uri "$sock") BLOG=$blog
export SEED=${SEED:-$RANDOM}
echo "SEED=$SEED"

# Random initial contents, so that lost read-modify-writes show.
nbdsh_py -u "$BURI" -c '
import random
rng = random.Random(int(os.environ["SEED"]))
for off in range(0, h.get_size(), 1 << 22):
    h.pwrite(rng.randbytes(1 << 22), off)
h.flush()
'

start_nbdkit -P "$pid" -U "$sock" "$PLUGIN" uri="$BURI" \
             cache-size=4M page-size=64K writeback-threads=4

nbdsh_py -n -c - <<'EOF'
import os, random

rng = random.Random(int(os.environ["SEED"]) + 1)
KiB, MiB = 1024, 1024 * 1024

h = nbd.NBD()
h.connect_uri(os.environ["URI"])
r = nbd.NBD()                   # the remote, directly
r.connect_uri(os.environ["BURI"])
size = h.get_size()
assert size == r.get_size() == 64 * MiB, size
assert not h.is_read_only()
assert h.can_flush() and h.can_fua() and h.can_multi_conn()

model = bytearray()
for off in range(0, size, 4 * MiB):
    model += r.pread(4 * MiB, off)

def rand_range():
    count = rng.choice([1, 7, 511, 512, 513, 4096, 65536, 65537,
                        rng.randint(1, 300 * KiB), rng.randint(1, 2 * MiB)])
    if rng.random() < 0.3:      # cluster on a few hot pages
        off = rng.randrange(0, 4) * 64 * KiB + rng.randrange(0, 64 * KiB)
    else:
        off = rng.randrange(0, size)
    return off, min(count, size - off)

def check_remote(what):
    for off in range(0, size, 4 * MiB):
        got = r.pread(4 * MiB, off)
        if got != model[off:off + 4 * MiB]:
            bad = next(i for i in range(len(got))
                       if got[i] != model[off + i])
            raise AssertionError("%s: remote differs at %d" % (what, off + bad))

for i in range(1200):
    op = rng.choices(["read", "write", "fua", "zero", "flush"],
                     [40, 40, 5, 10, 5])[0]
    off, count = rand_range()
    if op == "read":
        got = h.pread(count, off)
        assert got == model[off:off + count], \
            "op %d: read %d at %d differs" % (i, count, off)
    elif op in ("write", "fua"):
        data = rng.randbytes(count)
        h.pwrite(data, off, nbd.CMD_FLAG_FUA if op == "fua" else 0)
        model[off:off + count] = data
        if op == "fua":
            assert r.pread(count, off) == data, \
                "op %d: FUA write of %d at %d not on the remote" % (i, count, off)
    elif op == "zero":
        h.zero(count, off, rng.choice([0, nbd.CMD_FLAG_NO_HOLE]))
        model[off:off + count] = bytes(count)
    else:
        h.flush()
        check_remote("op %d: after flush" % i)

h.flush()
check_remote("final flush")
# And everything reads back through the cache as well.
for off in range(0, size, 4 * MiB):
    assert h.pread(4 * MiB, off) == model[off:off + 4 * MiB], off
h.shutdown()
r.shutdown()
print("ok: random I/O matches the model, remote equal after flush")
EOF
stop_nbdkit "$pid"

# The remote saw subpage connect 4 times (the default connections=4),
# between the test's fill connection and its direct reader.
nconn=$(grep -c ' Connect ' "$blog" || :)
if [ "$nconn" -ne 6 ]; then
  echo "FAIL: the remote saw $nconn connections, expected 1 + 4 + 1" >&2
  exit 1
fi
subconns=$(grep ' Connect ' "$blog" | sed -n 2,5p |
           grep -oE 'connection=[0-9]+' | tr '\n' ' ')
# Requests from subpage's connections overlapped on the remote: the
# most reads and writes in flight at once across them.
maxpar=$(awk -v conns=" $subconns" '
  index(conns, " " $3 " ") == 0 { next }
  $4 ~ /^(Read|Write)$/ { n++; if (n > max) max = n }
  $4 ~ /^\.\.\.(Read|Write)$/ { n-- }
  END { print max + 0 }' "$blog")
if [ "$maxpar" -lt 2 ]; then
  echo "FAIL: at most $maxpar requests in flight on the remote at once" >&2
  exit 1
fi
echo "ok: 4 connections to the remote, up to $maxpar requests in flight"
# FUA writes reached the remote as FUA writes (it can FUA).
if ! grep -qE 'Write id=.* fua=1' "$blog"; then
  echo "FAIL: no FUA write reached the remote" >&2
  exit 1
fi

# ---- 2. multi-conn flush ------------------------------------------------
start_nbdkit -P "$pid" -U "$sock" "$PLUGIN" uri="$BURI" \
             cache-size=64M dirty-expire-ms=3600000
nbdsh_py -n -c - <<'EOF'
import os, random

rng = random.Random(2)
KiB, MiB = 1024, 1024 * 1024
h1, h2, r = nbd.NBD(), nbd.NBD(), nbd.NBD()
h1.connect_uri(os.environ["URI"])
h2.connect_uri(os.environ["URI"])
r.connect_uri(os.environ["BURI"])
assert h1.can_multi_conn() and h2.can_multi_conn()

written = []
for h, base in ((h1, 1 * MiB), (h2, 9 * MiB + 77)):
    pos = base
    while pos < base + 2 * MiB:
        count = min(rng.choice([1, 511, 512, 4096, 65536,
                                rng.randint(1, 100 * KiB)]),
                    base + 2 * MiB - pos)
        data = rng.randbytes(count)
        h.pwrite(data, pos)
        written.append((h, pos, data))
        pos += count

early = [(off, len(d)) for _, off, d in written
         if len(d) >= 8 and r.pread(len(d), off) == d]
assert not early, "on the remote before any flush: %r" % early[:5]

def remote_flushes():
    with open(os.environ["BLOG"]) as f:
        return sum(1 for line in f if " Flush " in line)

before = remote_flushes()
h1.flush()
assert remote_flushes() > before, "client flush sent no flush to the remote"
for h, off, data in written:
    assert r.pread(len(data), off) == data, \
        "write of %d at %d on %s not on the remote after h1.flush()" \
        % (len(data), off, "h1" if h is h1 else "h2")
for h in (h1, h2, r):
    h.shutdown()
print("ok: one flush made the writes of 2 connections durable")
EOF
stop_nbdkit "$pid"
stop_nbdkit "$bpid"

# ---- 3. a remote without multi-conn: one connection --------------------
rm -f "$blog"
start_nbdkit -P "$bpid" -U "$bsock" --filter=multi-conn --filter=log \
             memory 16M multi-conn-mode=disable logfile="$blog"
start_nbdkit -P "$pid" -U "$sock" "$PLUGIN" uri="$BURI" connections=8 \
             cache-size=1M dirty-expire-ms=3600000
nbdsh_py -n -c - <<'EOF'
import os, random

rng = random.Random(3)
h, r = nbd.NBD(), nbd.NBD()
h.connect_uri(os.environ["URI"])
r.connect_uri(os.environ["BURI"])
assert not r.can_multi_conn()
assert h.can_multi_conn()       # subpage's one cache is still shared
model = bytearray(16 << 20)
for i in range(300):
    off = rng.randrange(0, len(model) - 70000)
    data = rng.randbytes(rng.randint(1, 70000))
    h.pwrite(data, off)
    model[off:off + len(data)] = data
h.flush()
assert r.pread(len(model), 0) == model, "remote differs after flush"
assert h.pread(len(model), 0) == model
h.shutdown()
r.shutdown()
print("ok: without multi-conn on the remote")
EOF
stop_nbdkit "$pid"
nconn=$(grep -c ' Connect ' "$blog" || :)
if [ "$nconn" -ne 2 ]; then
  echo "FAIL: remote without multi-conn saw $nconn connections," \
       "expected 1 from subpage + 1 from the test" >&2
  exit 1
fi
echo "ok: one connection to a remote without multi-conn"
stop_nbdkit "$bpid"

# ---- 4. a read-only remote ----------------------------------------------
start_nbdkit -P "$bpid" -U "$bsock" -r pattern 8M
start_nbdkit -P "$pid" -U "$sock" "$PLUGIN" uri="$BURI" cache-size=1M
nbdsh_py -n -c - <<'EOF'
import os

h, r = nbd.NBD(), nbd.NBD()
h.connect_uri(os.environ["URI"])
r.connect_uri(os.environ["BURI"])
assert h.is_read_only(), "read-only remote served writable"
assert h.pread(8 << 20, 0) == r.pread(8 << 20, 0)
for what, fn in (("pwrite", lambda: h.pwrite(b"x" * 512, 0)),
                 ("zero", lambda: h.zero(4096, 0))):
    try:
        fn()
    except nbd.Error as e:
        print("ok: %s failed: %s" % (what, e))
    else:
        raise AssertionError("%s succeeded on a read-only remote" % what)
h.shutdown()
r.shutdown()
EOF
stop_nbdkit "$pid"
stop_nbdkit "$bpid"

# ---- 5. configuration errors --------------------------------------------
truncate -s 1M "$tmpdir/disk.img"
err=$tmpdir/stderr
status=0
nbdkit_cmd -U - "$PLUGIN" file="$tmpdir/disk.img" uri="$BURI" \
           --run 'exit 0' 2>"$err" || status=$?
if [ "$status" -eq 0 ] || ! grep -q 'file=.*uri=.*exactly one' "$err"; then
  echo "FAIL: file= with uri= (status $status):" >&2
  cat "$err" >&2
  exit 1
fi
status=0
nbdkit_cmd -U - "$PLUGIN" uri="nbd+unix:///?socket=$tmpdir/nothing.sock" \
           --run 'exit 0' 2>"$err" || status=$?
if [ "$status" -eq 0 ] || ! grep -q 'uri=.*cannot connect' "$err"; then
  echo "FAIL: unreachable remote (status $status):" >&2
  cat "$err" >&2
  exit 1
fi
echo "ok: configuration errors"
