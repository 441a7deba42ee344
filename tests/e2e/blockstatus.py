"""Block status for the extents tests (test-extents.sh,
test-extents-uri.sh): asking an NBD handle, looking at the image file,
reading what `nbdinfo --map` printed.  Imported with PYTHONPATH set to
this directory (extents-functions.sh)."""

import os


def extents(h, off, count):
    """The extents of [off, off+count) as [(off, len, flags)], merged,
    asked of handle H (connected with base:allocation) as often as its
    answers fall short."""
    import nbd
    out = []
    while count > 0:
        got = []

        def cb(meta, o, entries, err):
            if meta == nbd.CONTEXT_BASE_ALLOCATION:
                got.extend(entries)
        h.block_status(count, off, cb)
        o = off
        for i in range(0, len(got), 2):
            n = min(got[i], count - (o - off))
            if out and out[-1][2] == got[i + 1] and out[-1][0] + out[-1][1] == o:
                out[-1] = (out[-1][0], out[-1][1] + n, got[i + 1])
            else:
                out.append((o, n, got[i + 1]))
            o += n
            if o - off >= count:
                break
        count -= o - off
        off = o
    return out


def file_hole_at(path, off):
    """Whether the file PATH has a hole at OFF."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.lseek(fd, off, os.SEEK_DATA) > off
    except OSError:
        return True
    finally:
        os.close(fd)


def read_map(path):
    """What `nbdinfo --map` printed into PATH: [(offset, length, type)]."""
    got = []
    for line in open(path):
        f = line.split()
        got.append((int(f[0]), int(f[1]), int(f[2])))
    return got
