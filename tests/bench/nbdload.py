#!/usr/bin/python3
"""nbdload: small libnbd clients for tests/bench/bench.py.

fio 3.33's nbd engine sends more flushes than fsync=N asks for (fixed
upstream in fio commit 673159e6), so the flush-latency probes use this client
instead (the flush-every-32 load itself is tests/bench/flushload.c,
which costs the server's CPU less than Python does).  Every mode prints
one JSON object on stdout.

  dirty      write COUNT distinct random BS-aligned blocks over
             [0, SIZE) at QD (no flush), then time one flush.
  fill       read [0, SIZE) sequentially in 1 MiB requests at QD 8 (to
             fill a cache), then time one flush, then REPEAT more.
  flush      connect, flush once, disconnect (used after a write
             workload so that all dirty data reaches the image before
             the byte counters are read).
  read       read [0, SIZE) sequentially in 1 MiB requests at QD 8.

Latencies are measured in Python from submission to completion
callback, so they include the client's own overhead (the same for every
server).  The memory plugin row shows the client's ceiling.
"""

import argparse
import json
import os
import random
import sys
import time

import nbd


def pct (sorted_ns, p):
  if not sorted_ns:
    return 0
  i = min (len (sorted_ns) - 1, int (round (p / 100.0 * (len (sorted_ns) - 1))))
  return sorted_ns[i]


def connect (uri):
  h = nbd.NBD ()
  h.connect_uri (uri)
  return h


def drain (h, state):
  while state["inflight"] > 0:
    h.poll (-1)


def seqread (h, size, qd=8, bs=1 << 20):
  st = {"inflight": 0}
  bufs = [nbd.Buffer (bs) for _ in range (qd)]
  free = list (range (qd))

  def done (i, err):
    st["inflight"] -= 1
    free.append (i)
    if err.value != 0:
      sys.exit ("read failed: %s" % err.value)
    return 1

  off = 0
  while off < size:
    while free and off < size:
      i = free.pop ()
      n = min (bs, size - off)
      b = bufs[i] if n == bs else nbd.Buffer (n)
      h.aio_pread (b, off, completion=lambda err, i=i: done (i, err))
      st["inflight"] += 1
      off += n
    h.poll (-1)
  drain (h, st)


def timed_flush (h):
  t0 = time.perf_counter_ns ()
  h.flush ()
  return time.perf_counter_ns () - t0


def dirty (a):
  h = connect (a.uri)
  rng = random.Random (a.seed)
  offs = rng.sample (range (a.size // a.bs), a.count)
  buf = nbd.Buffer.from_bytearray (bytearray (os.urandom (a.bs)))
  st = {"inflight": 0}

  def done (err):
    st["inflight"] -= 1
    if err.value != 0:
      sys.exit ("write failed: %s" % err.value)
    return 1

  t0 = time.perf_counter ()
  for blk in offs:
    while st["inflight"] >= a.qd:
      h.poll (-1)
    h.aio_pwrite (buf, blk * a.bs, completion=done)
    st["inflight"] += 1
  drain (h, st)
  wtime = time.perf_counter () - t0
  f = timed_flush (h)
  h.shutdown ()
  print (json.dumps ({"mode": "dirty", "dirty_bytes": a.count * a.bs,
                      "write_s": wtime, "flush_ns": f}))


def fill (a):
  h = connect (a.uri)
  t0 = time.perf_counter ()
  seqread (h, a.size)
  rtime = time.perf_counter () - t0
  first = timed_flush (h)
  more = sorted (timed_flush (h) for _ in range (a.repeat))
  h.shutdown ()
  print (json.dumps ({"mode": "fill", "read_bytes": a.size, "read_s": rtime,
                      "flush_ns": first,
                      "flush_more_median_ns": pct (more, 50)}))


def main ():
  p = argparse.ArgumentParser (description=__doc__,
                               formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument ("mode", choices=["dirty", "fill", "flush", "read"])
  p.add_argument ("--uri", required=True)
  p.add_argument ("--size", type=int, default=2 << 30)
  p.add_argument ("--bs", type=int, default=4096)
  p.add_argument ("--qd", type=int, default=32)
  p.add_argument ("--count", type=int, default=16384)
  p.add_argument ("--repeat", type=int, default=10)
  p.add_argument ("--seed", type=int, default=1)
  a = p.parse_args ()
  if a.mode == "dirty":
    dirty (a)
  elif a.mode == "fill":
    fill (a)
  elif a.mode == "read":
    h = connect (a.uri)
    seqread (h, a.size)
    h.shutdown ()
    print (json.dumps ({"mode": "read", "read_bytes": a.size}))
  else:
    h = connect (a.uri)
    f = timed_flush (h)
    h.shutdown ()
    print (json.dumps ({"mode": "flush", "flush_ns": f}))


if __name__ == "__main__":
  main ()
