#!/usr/bin/python3
# tests/ceph/rbd-hold.py POOL/IMAGE: a librbd client (python3-rbd) that
# opens IMAGE, writes its first 4 KiB (which takes the image's exclusive
# lock, if the image has that feature), prints "holding" and then keeps
# the image open until it is killed.  The cluster comes from $CEPH_CONF.
#
# tests/ceph/rbd-hold.py --write POOL/IMAGE HEXBYTE: a fresh client that
# writes 4 KiB of HEXBYTE at offset 0, reads it back, closes the image
# and prints how long the write took ("write N.NN s").  With the
# exclusive-lock feature the write has to take the lock first, breaking
# a dead owner's lock once the owner's watch has expired.
import os
import sys
import time

import rados
import rbd


def open_image(spec):
    pool, name = spec.split("/", 1)
    cluster = rados.Rados(conffile=os.environ["CEPH_CONF"])
    cluster.connect()
    ioctx = cluster.open_ioctx(pool)
    return cluster, ioctx, rbd.Image(ioctx, name)


def main():
    args = sys.argv[1:]
    if args and args[0] == "--write":
        cluster, ioctx, image = open_image(args[1])
        data = bytes([int(args[2], 16)]) * 4096
        t0 = time.monotonic()
        image.write(data, 0)
        took = time.monotonic() - t0
        if image.read(0, 4096) != data:
            sys.exit("rbd-hold.py: read back something else")
        image.close()
        ioctx.close()
        cluster.shutdown()
        print("write %.2f s" % took, flush=True)
        return
    cluster, ioctx, image = open_image(args[0])
    image.write(b"\xa5" * 4096, 0)
    print("holding", flush=True)
    while True:
        time.sleep(3600)


main()
