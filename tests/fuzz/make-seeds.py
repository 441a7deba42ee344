#!/usr/bin/env python3
"""Writes the seed corpus of fuzz-cache into corpus/ (see docs/fuzzing.md).

Each seed is a configuration header, decoded by setup() in fuzz-cache.c,
followed by pseudo-random operation bytes from a fixed seed, so running
this again gives the same files.  The headers cover the three modes,
4K..64K pages, 512..page-size sectors, a disk size that is not a multiple
of the sector size, a backend without trim/zero, tiny and large dirty
ratios and small write-back batches.
"""
import os
import random
import sys

# (name, header): size byte, [u16 size cut if size byte & 8], page shift,
# sector shift, cache pages - 8, mode, dirty ratio - 1, background ratio
# byte, batch byte (& 0x80: no trim/zero), data seed.  Check what a header
# decodes to with FUZZ_TRACE=1 fuzz-cache corpus/seed-NAME.
SEEDS = [
    # 256K disk, 4K pages, 512 B sectors, 8 pages, write-back, 10/40.
    ("wb-4k-512", [0x02, 0, 0, 0, 0, 39, 9, 0x01, 1]),
    # 1M disk, 16K pages, 4K sectors, 16 pages, write-back, small batches.
    ("wb-16k-4k-batch", [0x06, 2, 3, 8, 0, 49, 4, 0x02, 2]),
    # 1M disk, 64K pages, 8K sectors, 8 pages, write-through.
    ("wt-64k", [0x06, 4, 4, 0, 1, 39, 9, 0x01, 3]),
    # 128K disk, 8K pages, 1K sectors, 20 pages (cache > disk), unsafe.
    ("unsafe-8k", [0x01, 1, 1, 12, 2, 59, 19, 0x01, 4]),
    # Disk size not a multiple of the sector size (256K - 3002), 4K
    # sectors, backend without trim/zero, ratios 10/30.
    ("odd-size-no-trim", [0x0c, 0xb9, 0x0b, 0, 3, 0, 0, 29, 9, 0x81, 5]),
    # Dirty ratio 1%: writers are throttled all the time.
    ("throttle", [0x02, 0, 0, 0, 0, 0, 0, 0x01, 6]),
    # 2M disk, 4K pages, 32 pages, ratios 100/100.
    ("wb-2m-full", [0x07, 0, 0, 24, 0, 99, 99, 0x01, 7]),
    # Write-through, 8K pages, 13 pages, 2-page batches, 256K - 17.
    ("wt-odd", [0x0a, 0x10, 0x00, 1, 0, 5, 1, 69, 30, 0x02, 8]),
]


def main():
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
    os.makedirs(out, exist_ok=True)
    for i, (name, header) in enumerate(SEEDS):
        rnd = random.Random(i)
        body = bytes(rnd.randrange(256) for _ in range(rnd.randrange(300, 900)))
        with open(os.path.join(out, "seed-" + name), "wb") as f:
            f.write(bytes(header) + body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
