#!/usr/bin/python3
"""make-tree.py ROOT COUNT DIRS SUBDIRS BIGGEST SEED: COUNT files of
random data under ROOT (ROOT/dNN/eN/fNNNN, DIRS x SUBDIRS directories):
the sizes at and around sector and page boundaries first, then mostly
small files, some up to 128 KiB and a few up to BIGGEST bytes; the same
tree for the same SEED.  For the filesystem tests (test-fs-ext4.sh,
tests/ceph/test-rbd-ext4.sh)."""

import os
import random
import sys

root = sys.argv[1]
count, dirs, subdirs, biggest, seed = (int(a) for a in sys.argv[2:7])
rng = random.Random(seed)
edges = [0, 1, 511, 512, 513, 4095, 4096, 4097, 65535, 65536, 65537]
for i in range(count):
    d = os.path.join(root, "d%02d" % (i % dirs), "e%d" % (i % subdirs))
    os.makedirs(d, exist_ok=True)
    c = rng.random()
    if i < len(edges):
        size = edges[i]
    elif c < 0.75:
        size = rng.randint(0, 16 * 1024)
    elif c < 0.98:
        size = rng.randint(16 * 1024, 128 * 1024)
    else:
        size = rng.randint(128 * 1024, biggest)
    with open(os.path.join(d, "f%04d" % i), "wb") as f:
        f.write(rng.randbytes(size))
