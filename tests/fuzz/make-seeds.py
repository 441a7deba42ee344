#!/usr/bin/env python3
"""Writes the seed corpus of fuzz-cache into corpus/ (see docs/fuzzing.md).

Each seed is a configuration header, decoded by setup() in fuzz-cache.c,
followed by operation bytes, so running this again gives the same files.
SEEDS: pseudo-random operations from a fixed seed; the headers cover the
three modes, 4K..64K pages, 512..page-size sectors, a disk size that is
not a multiple of the sector size, a backend without trim/zero, tiny and
large dirty ratios and small write-back batches.  RACES: scripted
scenarios in which a request on a worker thread is blocked (waiting for a
held write-back run, or parked in a backend call) while other requests
change its range, then a random tail.  Check what a seed does with
FUZZ_TRACE=1 fuzz-cache corpus/seed-NAME.
"""
import os
import random
import struct
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


# The operation encoding of fuzz-cache.c (LLVMFuzzerTestOneInput,
# op_worker, pick_range, setup_job, op_start).
FAKE_READ, FAKE_WRITE, FAKE_FLUSH, FAKE_TRIM, FAKE_ZERO = range(5)
FUA, MAY_TRIM, FAST_ZERO = 1, 2, 4


def rng(off, length):
    """pick_range: an exact, unaligned range (size class 3, no rounding)."""
    return bytes([0x03]) + struct.pack("<II", off, length - 1)


def write(off, length, seed=1, fua=False):
    return bytes([0x03 if fua else 0x00]) + rng(off, length) + \
        struct.pack("<H", seed)


def read(off, length):
    return bytes([0x04]) + rng(off, length)


def zero(off, length, flags=0):
    return bytes([0x07]) + rng(off, length) + bytes([flags])


def trim(off, length, flags=0):
    return bytes([0x06]) + rng(off, length) + bytes([flags])


WRITEBACK = bytes([0x09])
SETTLE = bytes([0x0f])


def complete(i, err=0):
    """Completes held run I (err 0: ok, 1: EIO, 2: ENOSPC)."""
    return bytes([0x0b, i, err])


def park(*ops):
    return bytes([sum(1 << op for op in ops)])


def worker(k, what, *args, parked=()):
    """Starts WHAT on worker K (1 or 2), its backend calls PARKED."""
    sub = {"fua": 0, "write": 1, "zero": 2, "trim": 3, "flush": 4,
           "read": 5}[what]
    op = bytes([0xc0 | (k - 1) << 3 | sub])
    if what in ("fua", "write"):
        body = rng(args[0], args[1]) + struct.pack("<H", 7)
    elif what in ("zero", "trim"):
        body = rng(args[0], args[1]) + bytes([args[2] if len(args) > 2
                                              else 0])
    elif what == "read":
        body = rng(args[0], args[1])
    else:
        body = b""
    return op + body + park(*parked)


def join(k):
    return bytes([0xc6 | (k - 1) << 3])


def release(i=0):
    return bytes([0xc7, i])


# 256K disk, 4K pages, 512 B sectors, 24 pages, write-back, ratios
# 40/90: nobody is throttled, so held runs stay held until completed
# (complete() of a run that a kick wrote back would shift the script).
WB = [0x02, 0, 0, 16, 0, 89, 39, 0x01, 1]
# The same in write-through mode.
WT = [0x02, 0, 0, 16, 1, 89, 39, 0x01, 1]

RACES = [
    # A read parked in its backend read (after listing the sectors it
    # misses) while a ZERO drops sectors that were valid: the read must
    # return old data or zeroes there (issue 13, bug 3).
    ("race-read-zero", WB,
     write(0, 2048) + worker(1, "read", 0, 4096, parked=[FAKE_READ])
     + zero(0, 2048) + release() + join(1) + read(0, 4096) + SETTLE),
    # A FUA write waiting for write-back of its first page while a ZERO
    # drops part of its second: the rest must still be durable (bug 2).
    ("race-fua-zero", WB,
     write(0, 4096) + WRITEBACK + write(4096, 4096, 2)
     + worker(1, "fua", 0, 8192) + zero(5120, 1024) + complete(0)
     + join(1) + SETTLE),
    # The same for a write-through write and a TRIM parked in the backend.
    ("race-wt-trim", WT,
     write(0, 4096) + worker(2, "trim", 6144, 4096, parked=[FAKE_TRIM])
     + worker(1, "write", 0, 8192) + release() + join(1)
     + join(2) + SETTLE),
    # An unaligned write filling its tail sector (parked read) while a
    # ZERO drops its head sector and another write fills the tail: the
    # head's uncovered bytes must read as zeroes (bug 1).
    ("race-write-fill-zero", WB,
     write(0, 512) + worker(1, "write", 256, 512, parked=[FAKE_READ])
     + zero(0, 512) + write(512, 512, 3) + release() + join(1)
     + read(0, 1024) + SETTLE),
    # A flush whose pages are inside a ZERO parked in the backend, then
    # more write-back: it must not miss the wake-up (bug 6).
    ("race-flush-zero", WB,
     write(0, 16384) + worker(2, "zero", 0, 16384, 0,
                              parked=[FAKE_ZERO])
     + worker(1, "flush") + release() + join(1) + join(2)
     + write(0, 65536, 4) + WRITEBACK + worker(1, "flush") + complete(0)
     + write(100, 5000, 5) + complete(0) + join(1) + SETTLE),
    # ZERO with and without MAY_TRIM, with FAST_ZERO and FUA, over
    # overlapping unaligned ranges, racing a write and a trim.
    ("race-zero-flags", WB,
     write(1000, 20000) + WRITEBACK
     + worker(1, "zero", 1500, 9000, MAY_TRIM, parked=[FAKE_ZERO])
     + worker(2, "zero", 3000, 7001, FAST_ZERO | FUA)
     + write(2000, 3000, 6) + complete(0) + trim(4000, 9000)
     + read(0, 16384) + release() + join(1) + join(2)
     + zero(777, 12345, FAST_ZERO) + worker(1, "zero", 700, 5000)
     + zero(900, 3000, MAY_TRIM | FUA) + join(1) + read(0, 16384)
     + SETTLE),
]


def main():
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
    os.makedirs(out, exist_ok=True)
    for i, (name, header) in enumerate(SEEDS):
        rnd = random.Random(i)
        body = bytes(rnd.randrange(256) for _ in range(rnd.randrange(300, 900)))
        with open(os.path.join(out, "seed-" + name), "wb") as f:
            f.write(bytes(header) + body)
    for i, (name, header, script) in enumerate(RACES):
        rnd = random.Random(100 + i)
        tail = bytes(rnd.randrange(256) for _ in range(rnd.randrange(200, 400)))
        with open(os.path.join(out, "seed-" + name), "wb") as f:
            f.write(bytes(header) + script + tail)
    return 0


if __name__ == "__main__":
    sys.exit(main())
