#!/usr/bin/python3
# tests/ceph/rbd-check.py: a fresh librbd client (python3-rbd) for the
# RBD backend's tests, with librbd's cache off so that every read goes
# to the OSDs.  The cluster comes from $CEPH_CONF.
#
#   rbd-check.py cmp POOL/IMAGE FILE [OFF LEN]
#       the image holds FILE's bytes (or, with OFF LEN, FILE's bytes of
#       that range at that offset); says where it first differs
#   rbd-check.py owners POOL/IMAGE
#       prints the owners of the image's exclusive lock, one a line
#   rbd-check.py break-and-write POOL/IMAGE OFF LEN HEXBYTE
#       breaks the exclusive lock (blocklisting its owner, as `rbd lock
#       rm` does), takes it, writes LEN bytes of HEXBYTE at OFF, flushes,
#       closes (releasing it); prints the owner it broke
#   rbd-check.py dump POOL/IMAGE FILE
#       writes the whole image into FILE (opened read-only: no lock
#       taken or asked for, so it also reads an image whose owner was
#       killed and still holds the lock)
#   rbd-check.py load POOL/IMAGE FILE
#       writes FILE's bytes into the image at offset 0 (which must be
#       at least that large), flushes, closes (librbd takes the
#       exclusive lock for the writes and releases it)
import os
import sys

import rados
import rbd


def open_image(spec, read_only=False):
    pool, name = spec.split("/", 1)
    cluster = rados.Rados(conffile=os.environ["CEPH_CONF"],
                          conf={"rbd_cache": "false"})
    cluster.connect(timeout=30)
    ioctx = cluster.open_ioctx(pool)
    return cluster, ioctx, rbd.Image(ioctx, name, read_only=read_only)


def close(cluster, ioctx, image):
    image.close()
    ioctx.close()
    cluster.shutdown()


def cmp(spec, path, off=None, length=None):
    with open(path, "rb") as f:
        want = f.read()
    if off is not None:
        want = want[off:off + length]
    else:
        off = 0
    handles = open_image(spec)
    image = handles[2]
    chunk = 4 * 1024 * 1024
    for pos in range(0, len(want), chunk):
        n = min(chunk, len(want) - pos)
        got = image.read(off + pos, n)
        if got != want[pos:pos + n]:
            i = next(i for i in range(n) if got[i] != want[pos + i])
            sys.exit("rbd-check.py: %s differs at offset %d: image %d, "
                     "expected %d" % (spec, off + pos + i, got[i],
                                      want[pos + i]))
    if off == 0 and image.size() != len(want):
        sys.exit("rbd-check.py: %s has size %d, expected %d"
                 % (spec, image.size(), len(want)))
    close(*handles)


def owners(spec):
    handles = open_image(spec)
    for o in handles[2].lock_get_owners():
        print(o["owner"])
    close(*handles)


def break_and_write(spec, off, length, byte):
    handles = open_image(spec)
    image = handles[2]
    found = [o["owner"] for o in image.lock_get_owners()]
    if not found:
        sys.exit("rbd-check.py: %s: nobody holds the lock" % spec)
    for o in found:
        image.lock_break(rbd.RBD_LOCK_MODE_EXCLUSIVE, o)
    image.lock_acquire(rbd.RBD_LOCK_MODE_EXCLUSIVE)
    image.write(bytes([byte]) * length, off)
    image.flush()
    close(*handles)
    print("\n".join(found))


CHUNK = 4 * 1024 * 1024


def dump(spec, path):
    handles = open_image(spec, read_only=True)
    image = handles[2]
    size = image.size()
    with open(path, "wb") as f:
        for pos in range(0, size, CHUNK):
            f.write(image.read(pos, min(CHUNK, size - pos)))
    close(*handles)


def load(spec, path):
    with open(path, "rb") as f:
        data = f.read()
    handles = open_image(spec)
    image = handles[2]
    if image.size() < len(data):
        sys.exit("rbd-check.py: %s has size %d, less than %s (%d)"
                 % (spec, image.size(), path, len(data)))
    for pos in range(0, len(data), CHUNK):
        image.write(data[pos:pos + CHUNK], pos)
    image.flush()
    close(*handles)


def main():
    a = sys.argv[1:]
    if len(a) in (3, 5) and a[0] == "cmp":
        cmp(a[1], a[2], *(int(x) for x in a[3:]))
    elif len(a) == 3 and a[0] == "dump":
        dump(a[1], a[2])
    elif len(a) == 3 and a[0] == "load":
        load(a[1], a[2])
    elif len(a) == 2 and a[0] == "owners":
        owners(a[1])
    elif len(a) == 5 and a[0] == "break-and-write":
        break_and_write(a[1], int(a[2]), int(a[3]), int(a[4], 16))
    else:
        sys.exit(__doc__ or "usage: see the header of rbd-check.py")


main()
