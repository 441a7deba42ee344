#!/usr/bin/python3
# make-data.py DIR [BIG-MIB]: the files a VM test's guest writes, made on
# the host (random data is slow to make in an emulated guest, and the
# host then knows every checksum in advance).
#
#   DIR/t/edges/f<size>    sizes at and around sector (512, 4096) and
#                          page (64 KiB) boundaries
#   DIR/t/tree/d<n>/s<i>   150 small files in 7 directories
#   DIR/t/big              BIG-MIB MiB (default 16, at least 4), larger
#                          than the test's cache
#   DIR/patch              bytes to write over parts of those files
#   DIR/patches            "PATH OFFSET LENGTH PATCH-OFFSET" a line: the
#                          guest writes patch[PATCH-OFFSET:+LENGTH] at
#                          OFFSET of t/PATH, in place, after copying t/
#
# Prints on stdout the sha256sum lines ("HASH  t/PATH", sorted by path)
# of the files as they are once patched.
import hashlib
import os
import random
import sys

out = sys.argv[1]
big_mib = int(sys.argv[2]) if len(sys.argv) > 2 else 16
assert big_mib >= 4
rng = random.Random(20261122)
files = {}

for size in (0, 1, 511, 512, 513, 4095, 4096, 4097, 65535, 65536, 65537,
             1048579):
    files["t/edges/f%d" % size] = bytearray(rng.randbytes(size))
for i in range(1, 151):
    files["t/tree/d%d/s%d" % (i % 7, i)] = bytearray(rng.randbytes(i * 397))
files["t/big"] = bytearray(rng.randbytes(big_mib << 20))

for path, data in files.items():
    full = os.path.join(out, path)
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "wb") as f:
        f.write(data)

# Unaligned overwrites: inside one page across sectors, across a 64 KiB
# page boundary, and near the end of a file of 64 KiB + 1.
patches = [("big", (3 << 20) + 12345, 2331), ("big", 5 * 65536 - 300, 1000),
           ("edges/f65537", 65000, 100)]
patch = rng.randbytes(sum(p[2] for p in patches))
with open(os.path.join(out, "patch"), "wb") as f:
    f.write(patch)
with open(os.path.join(out, "patches"), "w") as f:
    poff = 0
    for path, off, length in patches:
        f.write("%s %d %d %d\n" % (path, off, length, poff))
        # inside the file: dd would leave a hole before a write past
        # its end, a slice assignment would not
        assert off + length <= len(files["t/" + path])
        files["t/" + path][off:off + length] = patch[poff:poff + length]
        poff += length

for path in sorted(files):
    print("%s  %s" % (hashlib.sha256(files[path]).hexdigest(), path))
