#!/usr/bin/env bash
# Multi-conn: the server advertises it, and a flush on one connection
# makes the writes completed on every connection durable.  Two
# connections write disjoint regions (unaligned, sub-sector pieces
# included); only the first one flushes; the image file must then hold
# both regions.  dirty-expire-ms is an hour and the dirty data stays far
# below dirty-background-ratio, so nothing may reach the image before
# the flush: if it does, the test proves nothing and fails.

source "$(dirname "$0")/../functions.sh"
set -euo pipefail

requires_plugin
requires_nbdsh
make_tmpdir

img=$tmpdir/disk.img
sock=$tmpdir/nbd.sock
pid=$tmpdir/nbdkit.pid

truncate -s 64M "$img"
start_nbdkit -P "$pid" -U "$sock" "$PLUGIN" file="$img" \
             cache-size=64M dirty-expire-ms=3600000

export IMG=$img URI=$(nbd_uri "$sock")
nbdsh_py -n -c - <<'EOF'
import os, random

img = os.environ["IMG"]
rng = random.Random(1)
KiB = 1024
MiB = 1024 * KiB

h1 = nbd.NBD()
h2 = nbd.NBD()
h1.connect_uri(os.environ["URI"])
h2.connect_uri(os.environ["URI"])
assert h1.can_multi_conn(), "server does not advertise multi-conn"
assert h2.can_multi_conn()
assert h1.can_flush()

# Each connection writes pieces of its own region: whole pages, single
# sectors, and unaligned runs of a few bytes to ~100 KiB.
regions = {h1: (1 * MiB, 2 * MiB), h2: (9 * MiB + 77, 2 * MiB)}
written = []  # (off, data) in write order, per region disjoint
for h, (base, length) in regions.items():
    pos = base
    while pos < base + length:
        count = min(rng.choice([1, 511, 512, 4096, 65536, rng.randint(1, 100 * KiB)]),
                    base + length - pos)
        data = rng.randbytes(count)
        h.pwrite(data, pos)
        written.append((h, pos, data))
        pos += count

def file_holds(off, data):
    with open(img, "rb") as f:
        return os.pread(f.fileno(), len(data), off) == data

# Before the flush: nothing written back (see the header).  The image
# starts as zeroes, so skip writes too short to tell from zeroes.
early = [(off, len(d)) for _, off, d in written
         if len(d) >= 8 and file_holds(off, d)]
assert not early, "written back before any flush: %r" % early[:5]

h1.flush()

for h, off, data in written:
    who = "h1" if h is h1 else "h2"
    assert file_holds(off, data), \
        "write of %d bytes at %d on %s not in the image after h1.flush()" \
        % (len(data), off, who)

h1.shutdown()
h2.shutdown()
print("ok: %d writes on 2 connections durable after one flush" % len(written))
EOF

stop_nbdkit "$pid"
