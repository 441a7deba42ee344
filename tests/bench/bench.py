#!/usr/bin/python3
"""subpage benchmark against its peers (docs/benchmarks.md).

Runs each server on the same backing image, one at a time, on a unix
socket, drives it with fio's nbd engine (or, where fio cannot do it
exactly, tests/bench/flushload.c, built with the project, and
tests/bench/nbdload.py), and prints markdown tables of medians with
min-max spread, p99 latency, backend bytes per client byte, and ratios
of subpage to each peer.  Above each table: the exact command lines.

  /usr/bin/python3 tests/bench/bench.py --plugin BUILD/plugin/nbdkit-subpage-plugin.so
  ... --quick                  runtime 3 s, 1 repetition (smoke test)
  ... --only randwrite4k,slow  some workloads or sections only

Two builds against each other, interleaved run by run, with a
"new / old" ratio row (docs/benchmarks.md, "Comparing two builds"):

  ... --plugin old=OLD/plugin/nbdkit-subpage-plugin.so \
      --plugin new=NEW/plugin/nbdkit-subpage-plugin.so \
      --servers old,new --only randwrite4k,flush32 --reps 5

Block status (section "sparse", workloads sparse8g and sparse8g-cold):
the wall time of `nbdcopy URI null:` over a sparse 8 GiB image (16 MiB
of data) through subpage file= and uri= against nbdkit's file and nbd
plugins:

  ... --only sparse

With a persistent journal (section "journal", workloads journal-*):
subpage uri= with and without journal= in front of SLOW_BACKEND
against nbdkit's nbd plugin and its file plugin on a local image, the
journal on the same disk as the image; a 1 MiB sequential write with
file=; and the replay of a full 1 GiB journal after kill -9 against a
cold sequential read of the journal file:

  ... --only journal --runtime 12 --reps 3

Not part of the test suite.  Needs fio, nbdkit (file, memory, null, nbd
plugins; cache, stats, delay filters), qemu-nbd (qemu-utils), nbdcopy
(libnbd-bin) and python3-libnbd.
"""

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import nbd

HERE = os.path.dirname (os.path.abspath (__file__))
NBDLOAD = os.path.join (HERE, "nbdload.py")
PY = "/usr/bin/python3"
GiB = 1 << 30
MiB = 1 << 20

NBD_REQ = 28        # NBD request header (client -> server)
NBD_SIMPLE = 16     # simple reply header (server -> client)

# ---------------------------------------------------------------- servers

def plugins_of (a):
  """[(name, path)] of the subpage builds under test: one "subpage" for
  --plugin PATH, or one NAME per --plugin NAME=PATH, in the order given.
  (An --report of a JSON file written before --plugin NAME=PATH has only
  a.plugin.)"""
  return getattr (a, "plugins", None) or [("subpage", a.plugin)]


def subpage_names (a):
  """Server names that run a subpage build (NAME and NAME-4k)."""
  return set (n + x for n, _ in plugins_of (a) for x in ("", "-4k"))


def local_servers (a):
  """name -> (argv template, kind).  Each subpage build is two servers,
  NAME and NAME-4k (sector-size=4096), before the peers.  No
  cache-max-size for the cache filter: in nbdkit 1.32.5 its reclaim
  drops dirty blocks (a 512 MiB write through cache=writeback
  cache-max-size=64M left 50 MiB of it in the image after a flush), see
  docs/benchmarks.md.  {sock}, {img}, {size}, {stats} are substituted
  per run.  kind: 'nbdkit' (reads the socket with read(2), writes it
  with send(2)), 'qemu' (recvmsg/sendmsg: neither is counted in
  /proc/PID/io) -- see docs/benchmarks.md."""
  d = {}
  for name, path in plugins_of (a):
    sp = ["nbdkit", "-f", "-v", "-D", "nbdkit.backend.datapath=0",
          "-U", "{sock}", path, "file={img}"]
    d[name] = (sp, "nbdkit")
    d[name + "-4k"] = (sp + ["sector-size=4096"], "nbdkit")
  return dict (d, **{
    "cache": (["nbdkit", "-f", "-U", "{sock}", "--filter=cache",
               "--filter=stats", "file", "{img}", "cache=writeback",
               "statsfile={stats}"], "nbdkit"),
    "file": (["nbdkit", "-f", "-U", "{sock}", "file", "{img}"], "nbdkit"),
    "qemu-nbd": (["qemu-nbd", "-f", "raw", "--cache=writeback",
                  "--aio=threads", "-t", "-e", "16", "-k", "{sock}",
                  "{img}"], "qemu"),
    "memory": (["nbdkit", "-f", "-U", "{sock}", "memory", "{size}"],
               "nbdkit"),
    # No storage at all (writes dropped, reads zero): what nbdkit's
    # protocol path and the client cost by themselves, the ceiling of
    # any nbdkit plugin.
    "null": (["nbdkit", "-f", "-U", "{sock}", "null", "{size}"],
             "nbdkit"),
  })


def probe_servers (a):
  d = {name: (["nbdkit", "-f", "-v", "-D", "nbdkit.backend.datapath=0",
               "-U", "{sock}", path, "file={img}", "cache-size=2G"],
              "nbdkit")
       for name, path in plugins_of (a)}
  return dict (d, **{
    "cache": (["nbdkit", "-f", "-U", "{sock}", "--filter=cache", "file",
               "{img}", "cache=writeback", "cache-on-read=true"],
              "nbdkit"),
    "file": (["nbdkit", "-f", "-U", "{sock}", "file", "{img}"], "nbdkit"),
    "qemu-nbd": (["qemu-nbd", "-f", "raw", "--cache=writeback",
                  "--aio=threads", "-t", "-e", "16", "-k", "{sock}",
                  "{img}"], "qemu"),
  })


SLOW_BACKEND = ["nbdkit", "-f", "-U", "{bsock}", "--filter=stats",
                "--filter=delay", "memory", "{size}", "rdelay=1ms",
                "wdelay=1ms", "statsfile={stats}"]


def slow_servers (a):
  burl = "nbd+unix:///?socket={bsock}"
  d = {name: (["nbdkit", "-f", "-v", "-D", "nbdkit.backend.datapath=0",
               "-U", "{sock}", path, "uri=" + burl], "nbdkit")
       for name, path in plugins_of (a)}
  return dict (d, **{
    "cache": (["nbdkit", "-f", "-U", "{sock}", "--filter=cache", "nbd",
               "socket={bsock}", "cache=writeback", "cache-on-read=true"],
              "nbdkit"),
    "nbd": (["nbdkit", "-f", "-U", "{sock}", "nbd", "socket={bsock}"],
            "nbdkit"),
    "qemu-nbd": (["qemu-nbd", "-f", "raw", "--cache=writeback",
                  "--aio=threads", "-t", "-e", "16", "-k", "{sock}",
                  burl], "qemu"),
    # No server: the client on the remote itself, for its ceiling
    # (workload slow-remote-8x16 only).
    "remote": (None, "direct"),
  })

# The remote of section "sparse": nbdkit's file plugin on the sparse
# image, fresh for every run.
SPARSE_BACKEND = ["nbdkit", "-f", "-U", "{bsock}", "file", "{simg}"]

# sparse8g: workloads.  sparse8g first reads SPARSE_WARM (holes, as much
# as subpage's default cache-size); sparse8g-cold does not.
SPARSE_WORKLOADS = ("sparse8g", "sparse8g-cold")
SPARSE_WARM = (7700 * MiB, 7956 * MiB)


def sparse_servers (a):
  """name -> (argv template, backend argv or None) of section "sparse":
  each subpage build with file= (NAME) and with uri= in front of
  SPARSE_BACKEND (NAME-uri), nbdkit's file plugin on the image and its
  nbd plugin in front of the same remote."""
  burl = "nbd+unix:///?socket={bsock}"
  d = {}
  for name, path in plugins_of (a):
    d[name] = (["nbdkit", "-f", "-U", "{sock}", path, "file={simg}"], None)
    d[name + "-uri"] = (["nbdkit", "-f", "-U", "{sock}", path,
                         "uri=" + burl], SPARSE_BACKEND)
  d["file"] = (["nbdkit", "-f", "-U", "{sock}", "file", "{simg}"], None)
  d["nbd"] = (["nbdkit", "-f", "-U", "{sock}", "nbd", "socket={bsock}"],
              SPARSE_BACKEND)
  return d

# Section "journal": name -> (argv template, backend argv or None).
# {jnl} is a journal file in --image-dir (on the image's disk), removed
# before and after every run so that each run starts with an empty
# journal; {msock} a metrics socket, scraped after the client's final
# flush.
JOURNAL_WORKLOADS = ("journal-burst", "journal-sustained",
                     "journal-randwrite4k", "journal-seqwrite1m",
                     "journal-replay")


def journal_servers (a):
  burl = "nbd+unix:///?socket={bsock}"
  path = plugins_of (a)[0][1]
  sp = ["nbdkit", "-f", "-v", "-D", "nbdkit.backend.datapath=0",
        "-U", "{sock}", path, "metrics-socket={msock}"]
  jn = ["journal={jnl}", "journal-size=2G"]
  return {
    "subpage-uri": (sp + ["uri=" + burl], SLOW_BACKEND),
    "subpage-uri-j": (sp + ["uri=" + burl] + jn, SLOW_BACKEND),
    # The same with room in memory for the whole burst (dirty data
    # leaves memory only once the drainer has written it back, so with
    # the default cache-size the memory's dirty-ratio, not the journal,
    # is what a burst fills).
    "subpage-uri-j-4g": (sp + ["uri=" + burl] + jn + [
      "cache-size=4G", "dirty-background-ratio=60", "dirty-ratio=80"],
                         SLOW_BACKEND),
    # subpage-uri-j's drainer, by default, waits until the journal is
    # half full or its records are 30 s old (journal-background-ratio=
    # 50, dirty-expire-ms=30000): a burst that fits in the journal is
    # drained after it, at the stop here.  This one drains at once.
    "subpage-uri-j-eager": (sp + ["uri=" + burl] + jn + [
      "journal-background-ratio=0"], SLOW_BACKEND),
    "subpage-uri-j256": (sp + ["uri=" + burl, "journal={jnl}",
                               "journal-size=256M"], SLOW_BACKEND),
    "subpage-uri-j256-4g": (sp + ["uri=" + burl, "journal={jnl}",
                                  "journal-size=256M", "cache-size=4G",
                                  "dirty-background-ratio=60",
                                  "dirty-ratio=80"], SLOW_BACKEND),
    "nbd": (["nbdkit", "-f", "-U", "{sock}", "nbd", "socket={bsock}"],
            SLOW_BACKEND),
    "file": (["nbdkit", "-f", "-U", "{sock}", "file", "{img}"], None),
    "subpage-file": (sp + ["file={img}"], None),
    "subpage-file-j": (sp + ["file={img}"] + jn, None),
  }


def journal_workloads (size, runtime):
  """name -> workload (as in local_workloads, plus servers: the servers
  of section "journal" that run it)."""
  return {
    # 512 MiB of 4 KiB random writes, a flush every 32: fits in a 2 GiB
    # journal (4160 bytes of journal per write: 520 MiB).  At most
    # --runtime seconds: a slower server writes less of it.
    "journal-burst": dict (kind="flushload", write=True, bs=4096, size=size,
                           bytes=512 * MiB, servers=[
                             "subpage-uri-j", "subpage-uri-j-eager",
                             "subpage-uri-j-4g", "subpage-uri", "nbd",
                             "file"]),
    # The same past a 256 MiB journal's size: 1 GiB or 2 x --runtime,
    # whichever ends first, writes/s per 5 s.
    "journal-sustained": dict (kind="flushload", write=True, bs=4096,
                               size=size, bytes=GiB, runtime=2 * runtime,
                               interval=5, servers=[
                                 "subpage-uri-j256", "subpage-uri-j256-4g",
                                 "subpage-uri"]),
    "journal-randwrite4k": dict (kind="flushload", write=True, bs=4096,
                                 size=size, every=0, servers=[
                                   "subpage-uri-j", "subpage-uri-j-eager",
                                   "subpage-uri"]),
    "journal-seqwrite1m": dict (kind="fio", write=True, metric="mibs", opts=[
      "--rw=write", "--bs=1M", "--iodepth=8", "--size=%d" % size],
                                servers=["subpage-file-j", "subpage-file",
                                         "file"]),
  }


def scrape_metrics (path):
  """name{labels} -> float from a metrics-socket= snapshot."""
  import socket
  s = socket.socket (socket.AF_UNIX, socket.SOCK_STREAM)
  s.settimeout (10)
  s.connect (path)
  buf = b""
  while True:
    x = s.recv (65536)
    if not x:
      break
    buf += x
  s.close ()
  out = {}
  for line in buf.decode ().splitlines ():
    if line.startswith ("#") or " " not in line:
      continue
    k, v = line.rsplit (" ", 1)
    try:
      out[k] = float (v)
    except ValueError:
      pass
  return out

# -------------------------------------------------------------- workloads

def fio_cmd (uri, name, opts, runtime):
  return (["fio", "--name=" + name, "--ioengine=nbd", "--uri=" + uri,
           "--time_based", "--runtime=%d" % runtime, "--norandommap",
           "--group_reporting", "--output-format=json"] + opts)


# name -> dict(kind=fio|flushload, opts, write=bool, warm=bytes or 0,
#                metric=iops|mibs)
def local_workloads (size):
  return {
    "randwrite4k": dict (kind="fio", write=True, opts=[
      "--rw=randwrite", "--bs=4k", "--iodepth=32", "--size=%d" % size]),
    "flush32": dict (kind="flushload", write=True, bs=4096, size=size),
    "randwrite512": dict (kind="fio", write=True, opts=[
      "--rw=randwrite", "--bs=512", "--iodepth=32", "--size=%d" % size]),
    "randread-hot": dict (kind="fio", warm=128 * MiB, opts=[
      "--rw=randread", "--bs=4k", "--iodepth=32", "--size=%d" % (128 * MiB)]),
    "randread-cold": dict (kind="fio", opts=[
      "--rw=randread", "--bs=4k", "--iodepth=32", "--size=%d" % size]),
    "seqwrite1m": dict (kind="fio", write=True, metric="mibs", opts=[
      "--rw=write", "--bs=1M", "--iodepth=8", "--size=%d" % size]),
    "randrw4k": dict (kind="fio", write=True, opts=[
      "--rw=randrw", "--rwmixread=70", "--bs=4k", "--iodepth=32",
      "--size=%d" % size]),
    "randwrite4k-4conn": dict (kind="fio", write=True, opts=[
      "--rw=randwrite", "--bs=4k", "--iodepth=8", "--numjobs=4",
      "--size=%d" % size]),
    # The same pair (1 connection x 32, 4 x 8) from the C client, one
    # thread for all connections: the client's own cost no longer grows
    # with the connections (fio runs one process per connection).
    "randwrite4k-c1": dict (kind="flushload", write=True, bs=4096,
                            size=size, qd=32, every=0, conns=1),
    "randwrite4k-c4": dict (kind="flushload", write=True, bs=4096,
                            size=size, qd=8, every=0, conns=4),
  }


def slow_workloads (size):
  return {
    "slow-flush32": dict (kind="flushload", write=True, bs=4096, size=size),
    "slow-seqwrite1m": dict (kind="fio", write=True, metric="mibs", opts=[
      "--rw=write", "--bs=1M", "--iodepth=8", "--size=%d" % size]),
    "slow-randread-hot": dict (kind="fio", warm=64 * MiB, opts=[
      "--rw=randread", "--bs=4k", "--iodepth=32", "--size=%d" % (64 * MiB)]),
    # The remote's own ceiling for 4 KiB writes: the C client straight on
    # it, 8 connections x 16 in flight, no flush (the remote serves 16
    # requests at a time per connection; 4, 8 or 16 connections give the
    # same figure on 2 cores, 32 less).  No cache in front of it can get
    # more than this into it, which bounds slow-flush32 for every server.
    "slow-remote-8x16": dict (kind="flushload", write=True, only=["remote"],
                              bs=4096, size=size, qd=16, every=0, conns=8),
  }

# ---------------------------------------------------------------- helpers

def log (*msg):
  print ("#", *msg, file=sys.stderr, flush=True)


def drop_image_cache (img):
  """Write back and drop the host page cache of IMG only (not the whole
  machine's: other work runs here)."""
  fd = os.open (img, os.O_RDONLY)
  try:
    os.fsync (fd)
    os.posix_fadvise (fd, 0, 0, os.POSIX_FADV_DONTNEED)
  finally:
    os.close (fd)


def proc_rss (pid):
  with open ("/proc/%d/status" % pid) as f:
    for line in f:
      if line.startswith ("VmRSS:"):
        return int (line.split ()[1]) * 1024
  return 0


def proc_io (pid):
  d = {}
  with open ("/proc/%d/io" % pid) as f:
    for line in f:
      k, v = line.split (":")
      d[k] = int (v)
  return d


def proc_cpu_s (pid):
  """User plus system CPU seconds of the whole process (every thread,
  live or exited), from /proc/PID/stat fields 14 and 15."""
  with open ("/proc/%d/stat" % pid) as f:
    fields = f.read ().rsplit (")", 1)[1].split ()
  return (int (fields[11]) + int (fields[12])) / os.sysconf ("SC_CLK_TCK")


def wait_socket (path, proc, timeout=60):
  t = time.time () + timeout
  while time.time () < t:
    if proc.poll () is not None:
      raise RuntimeError ("server exited with %d" % proc.returncode)
    if os.path.exists (path):
      # A full NBD handshake: a bare connect-and-close makes servers
      # log "Broken pipe".
      try:
        h = nbd.NBD ()
        h.connect_unix (path)
        h.shutdown ()
        return
      except nbd.Error:
        pass
    time.sleep (0.05)
  raise RuntimeError ("server did not listen on %s" % path)


class Server:
  def __init__ (self, argv, kind, logpath):
    self.argv = argv
    self.kind = kind
    self.logpath = logpath
    self.logf = open (logpath, "w")
    self.proc = subprocess.Popen (argv, stdin=subprocess.DEVNULL,
                                  stdout=self.logf, stderr=self.logf)
    self.pid = self.proc.pid

  def stop (self):
    """SIGTERM by PID and wait (subpage writes back on exit)."""
    if self.proc.poll () is None:
      os.kill (self.pid, signal.SIGTERM)
      try:
        self.proc.wait (timeout=300)
      except subprocess.TimeoutExpired:
        os.kill (self.pid, signal.SIGKILL)
        self.proc.wait ()
    self.logf.close ()
    with open (self.logpath) as f:
      return f.read ()


def subst (argv, **kw):
  return [x.format (**kw) for x in argv]


def run_json (argv):
  p = subprocess.run (argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                      text=True)
  if p.returncode != 0:
    raise RuntimeError ("%s failed (%d): %s" % (argv[0], p.returncode,
                                                p.stderr[-2000:]))
  s = p.stdout
  return json.loads (s[s.index ("{"):])


def parse_stats_bytes (path):
  """Bytes read/written as logged by nbdkit's stats filter (its sizes are
  printed with 2 decimals, e.g. "132.38 MiB")."""
  units = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30,
           "TiB": 1 << 40}
  out = {"read": 0.0, "write": 0.0, "flush": 0}
  try:
    text = open (path).read ()
  except OSError:
    return None
  for line in text.splitlines ():
    m = re.match (r"(read|write): (\d+) ops, [\d.]+ s, ([\d.]+) (\w+)", line)
    if m:
      out[m.group (1)] = float (m.group (3)) * units[m.group (4)]
    m = re.match (r"flush: (\d+) ops", line)
    if m:
      out["flush"] = int (m.group (1))
  return out


def parse_subpage_exit (text):
  m = re.search (r"subpage: exit: backend reads \d+ \((\d+) bytes\), "
                 r"writes \d+ \((\d+) bytes\), flushes (\d+)", text)
  if not m:
    return None
  return {"read": int (m.group (1)), "write": int (m.group (2)),
          "flush": int (m.group (3))}


def fio_summary (j):
  """Totals over all jobs (group_reporting gives one)."""
  r = {"iops": 0.0, "bw": 0.0, "p99_ns": 0, "wios": 0, "wbytes": 0,
       "rios": 0, "rbytes": 0, "sync": 0}
  for job in j["jobs"]:
    for d in ("read", "write"):
      x = job[d]
      r["iops"] += x["iops"]
      r["bw"] += x["bw_bytes"]
      if x["total_ios"] > 0:
        p = x["clat_ns"].get ("percentile", {}).get ("99.000000", 0)
        r["p99_ns"] = max (r["p99_ns"], p)
      r[d[0] + "ios"] += x["total_ios"]
      r[d[0] + "bytes"] += x["io_bytes"]
    r["sync"] += job.get ("sync", {}).get ("total_ios", 0)
  return r

# ----------------------------------------------------------------- runner

class Bench:
  def __init__ (self, a):
    self.a = a
    self.results = []         # dicts
    self.commands = {}        # section -> list of lines
    self.dir = a.image_dir
    self.img = os.path.join (self.dir, "bench.img")
    self.sock = os.path.join (self.dir, "s.sock")
    self.bsock = os.path.join (self.dir, "b.sock")
    self.simg = os.path.join (self.dir, "sparse8g.img")
    self.jnl = os.path.join (self.dir, "journal.jnl")
    self.msock = os.path.join (self.dir, "m.sock")
    self.uri = "nbd+unix:///?socket=" + self.sock

  def note (self, section, line):
    lst = self.commands.setdefault (section, [])
    if line not in lst:
      lst.append (line)

  def prefill (self):
    size = self.a.size
    cmd = ["fio", "--name=prefill", "--filename=" + self.img,
           "--rw=write", "--bs=1M", "--size=%d" % size, "--ioengine=psync",
           "--refill_buffers", "--end_fsync=1", "--output-format=terse"]
    self.note ("prefill", " ".join (shlex.quote (x) for x in cmd))
    if (os.path.exists (self.img) and os.path.getsize (self.img) == size
        and not self.a.reprefill):
      log ("reusing", self.img)
      return
    log ("prefill", self.img)
    subprocess.run (cmd, check=True, stdout=subprocess.DEVNULL)

  def start (self, argv, kind, tag, **kw):
    for p in (kw.get ("sock", self.sock),):
      if os.path.exists (p):
        os.unlink (p)
    full = subst (argv, **kw)
    srv = Server (full, kind, os.path.join (self.dir, tag + ".log"))
    try:
      wait_socket (kw.get ("sock", self.sock), srv.proc)
    except Exception:
      log (srv.stop ()[-2000:])
      raise
    return srv

  def client_cmd (self, w, name, uri):
    runtime = w.get ("runtime", self.a.runtime)
    if w["kind"] == "fio":
      return fio_cmd (uri, name, w["opts"], runtime)
    return [self.a.flushload, "--uri", uri, "--bs", str (w["bs"]),
            "--qd", str (w.get ("qd", 32)), "--every",
            str (w.get ("every", 32)), "--conns", str (w.get ("conns", 1)),
            "--size", str (w["size"]), "--runtime", str (runtime)] + (
              ["--bytes", str (w["bytes"])] if w.get ("bytes") else []) + (
                ["--interval", str (w["interval"])] if w.get ("interval")
                else [])

  def measure (self, section, srvname, argv, kind, wname, w, rep,
               backend=None):
    """One cell run on a fresh server."""
    a = self.a
    stats = os.path.join (self.dir, "stats-%s.txt" % srvname)
    bstats = os.path.join (self.dir, "bstats.txt")
    for p in (stats, bstats):
      if os.path.exists (p):
        os.unlink (p)
    kw = dict (sock=self.sock, img=self.img, size=str (a.size), stats=stats,
               bsock=self.bsock, jnl=self.jnl, msock=self.msock)
    for p in (self.jnl, self.msock):
      if os.path.exists (p):
        os.unlink (p)
    metrics = argv is not None and any ("{msock}" in x for x in argv)
    uri = self.uri
    if argv is None:            # the client straight on the remote
      uri = "nbd+unix:///?socket=" + self.bsock
      self.note (section, "server %-10s (none: the client connects to "
                 "BSOCK = %s)" % (srvname, self.bsock))
    else:
      self.note (section, "server %-10s %s" % (srvname, " ".join (
        shlex.quote (x) for x in subst (argv, **dict (kw,
                                                      stats="STATS.txt")))))
    bsrv = None
    if backend is None:
      drop_image_cache (self.img)
    else:
      if os.path.exists (self.bsock):
        os.unlink (self.bsock)
      self.note (section, "backend    " + " ".join (
        shlex.quote (x) for x in subst (backend, **dict (kw, stats="B.txt"))))
      bsrv = Server (subst (backend, **dict (kw, stats=bstats)), "nbdkit",
                     os.path.join (self.dir, "backend.log"))
      try:
        wait_socket (self.bsock, bsrv.proc)
        srv = bsrv if argv is None else self.start (argv, kind, srvname,
                                                     **kw)
      except Exception:
        bsrv.stop ()
        raise
    if bsrv is None:
      srv = self.start (argv, kind, srvname, **kw)
    res = {"section": section, "server": srvname, "workload": wname,
           "rep": rep}
    try:
      if w.get ("warm"):
        wc = [PY, NBDLOAD, "read", "--uri", uri, "--size",
              str (w["warm"])]
        self.note (section, "warm %-14s %s" % (wname, " ".join (
          shlex.quote (x) for x in wc)))
        run_json (wc)
      cmd = self.client_cmd (w, wname, uri)
      self.note (section, "client %-12s %s" % (wname, " ".join (
        shlex.quote (x) for x in cmd)))
      io0, cpu0 = proc_io (srv.pid), proc_cpu_s (srv.pid)
      j = run_json (cmd)
      if w.get ("write"):
        run_json ([PY, NBDLOAD, "flush", "--uri", uri])
      io1, cpu1 = proc_io (srv.pid), proc_cpu_s (srv.pid)
      if metrics:
        res["metrics"] = scrape_metrics (self.msock)
    finally:
      t0 = time.monotonic ()
      out = srv.stop ()
      res["stop_s"] = time.monotonic () - t0
      if bsrv is not None and bsrv is not srv:
        bsrv.stop ()
      if os.path.exists (self.jnl):
        os.unlink (self.jnl)
    if w["kind"] == "fio":
      s = fio_summary (j)
      res.update (iops=s["iops"], mibs=s["bw"] / MiB, p99_ns=s["p99_ns"],
                  cw=s["wbytes"], cr=s["rbytes"], fl=s["sync"])
      nreq = s["wios"] + s["rios"] + s["sync"]
      sock_in = (nreq + 1) * NBD_REQ + s["wbytes"]
    else:
      if "intervals" in j:
        res["intervals"] = j["intervals"]
      res.update (iops=j["iops"], mibs=j["write_bytes"] / MiB / j["elapsed_s"],
                  p99_ns=j["wlat_p99_ns"], flush_p99_ns=j["flat_p99_ns"],
                  cw=j["all_writes"] * w["bs"], cr=0,
                  fl=j["all_flushes"], fpw=j["flushes_per_write"])
      # all_*: including the requests drained after the timed window
      nreq = j["all_writes"] + j["all_flushes"]
      sock_in = (nreq + 1) * NBD_REQ + res["cw"]
    # Server CPU per request: the client run, and for write workloads the
    # final flush, whose write-back belongs to the writes before it.
    if nreq > 0:
      res["cpu_us"] = (cpu1 - cpu0) * 1e6 / nreq
    if w.get ("write") and res["cw"] > 0:
      drc = io1["rchar"] - io0["rchar"]
      dwc = io1["wchar"] - io0["wchar"]
      if kind == "nbdkit":
        drc -= sock_in
      res["bw_wr"] = dwc
      res["bw_rd"] = max (0, drc)
      src = "proc"
      st = None
      if backend is not None:
        st = parse_stats_bytes (bstats)
      elif srvname == "cache":
        st = parse_stats_bytes (stats)
      if st is not None:
        res["bw_wr"], res["bw_rd"] = st["write"], st["read"]
        src = "stats"
      res["src"] = src
      if srvname in subpage_names (a):
        ex = parse_subpage_exit (out)
        if ex:
          res["own_wr"], res["own_rd"] = ex["write"], ex["read"]
    log ("%s %s rep%d: %.0f IOPS %.1f MiB/s p99 %.0f us cpu %.1f us/req%s" % (
      srvname, wname, rep, res["iops"], res["mibs"], res["p99_ns"] / 1000,
      res.get ("cpu_us", 0),
      (" wr/client %.3f rd %.0f" % (res["bw_wr"] / res["cw"], res["bw_rd"]))
      if "bw_wr" in res else ""))
    self.results.append (res)
    return res

  def sparse_image (self):
    """The image of section "sparse": 8 GiB, holes but for 16 extents
    of 1 MiB of random data, one every 512 MiB from 7 MiB on (so they
    start inside nbdcopy's 128 MiB block status requests).  Made once
    in --image-dir and reused."""
    img = self.simg
    size, step, n = 8 * GiB, 512 * MiB, 16
    self.note ("sparse", "image      truncate -s 8G SIMG; 1 MiB of "
               "/dev/urandom at %s" % ", ".join (
                 "%d MiB" % ((i * step + 7 * MiB) // MiB) for i in range (n)))
    if os.path.exists (img) and os.path.getsize (img) == size:
      return
    log ("sparse image", img)
    with open (img, "wb") as f:
      f.truncate (size)
      for i in range (n):
        f.seek (i * step + 7 * MiB)
        f.write (os.urandom (MiB))
      f.flush ()
      os.fsync (f.fileno ())

  def sparse (self, srvname, argv, backend, wname, rep):
    """One run of WNAME: fresh servers; for sparse8g 256 MiB of holes
    read first (a running server's cache is full of other data:
    subpage's 256 MiB cache is then in use and its frames are reused,
    not touched for the first time); the image out of the host page
    cache; then the wall time of one nbdcopy to null:."""
    kw = dict (sock=self.sock, bsock=self.bsock, simg=self.simg)
    self.note ("sparse", "server %-12s %s" % (srvname, " ".join (
      shlex.quote (x) for x in subst (argv, **kw))))
    drop_image_cache (self.simg)
    bsrv = None
    if backend is not None:
      self.note ("sparse", "backend    " + " ".join (
        shlex.quote (x) for x in subst (backend, **kw)))
      if os.path.exists (self.bsock):
        os.unlink (self.bsock)
      bsrv = Server (subst (backend, **kw), "nbdkit",
                     os.path.join (self.dir, "backend.log"))
      try:
        wait_socket (self.bsock, bsrv.proc)
      except Exception:
        bsrv.stop ()
        raise
    try:
      srv = self.start (argv, "nbdkit", srvname, **kw)
    except Exception:
      if bsrv is not None:
        bsrv.stop ()
      raise
    cmd = ["nbdcopy", self.uri, "null:"]
    self.note ("sparse", "client sparse8g*    " + " ".join (cmd))
    try:
      if wname == "sparse8g":
        self.note ("sparse", "warm sparse8g       [%d MiB, %d MiB) of SIMG "
                   "(holes) read through the server in 4 MiB reads" % (
                     SPARSE_WARM[0] // MiB, SPARSE_WARM[1] // MiB))
        h = nbd.NBD ()
        h.connect_unix (self.sock)
        for o in range (SPARSE_WARM[0], SPARSE_WARM[1], 4 * MiB):
          h.pread (4 * MiB, o)
        h.shutdown ()
        drop_image_cache (self.simg)
      cpu0 = proc_cpu_s (srv.pid)
      if bsrv is not None:
        cpu0 += proc_cpu_s (bsrv.pid)
      t0 = time.monotonic ()
      p = subprocess.run (cmd, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
      secs = time.monotonic () - t0
      cpu = proc_cpu_s (srv.pid) - cpu0
      if bsrv is not None:
        cpu += proc_cpu_s (bsrv.pid)
    finally:
      srv.stop ()
      if bsrv is not None:
        bsrv.stop ()
    if p.returncode != 0:
      raise RuntimeError ("nbdcopy failed (%d): %s" % (p.returncode,
                                                       p.stderr[-2000:]))
    log ("%s %s rep%d: %.1f ms, server CPU %.0f ms" % (
      srvname, wname, rep, secs * 1e3, cpu * 1e3))
    self.results.append ({"section": "sparse", "server": srvname,
                          "workload": wname, "rep": rep,
                          "secs": secs, "cpu_s": cpu})

  def journal_replay (self, rep):
    """Workload journal-replay: fills a 1 GiB journal (subpage file=IMG,
    dirty-writeback-ms=60000 and room in memory for all of it, so the
    drainer stays idle: checked in the metrics), flushes, kill -9 by
    PID; the journal and the image out of the host page cache; then
    the time from the start of a new server on the same journal to the
    first NBD handshake that succeeds (the replay runs in .after_fork,
    before nbdkit serves).  Against it: dd of the whole journal file
    to /dev/null, cold (posix_fadvise DONTNEED first)."""
    a = self.a
    path = plugins_of (a)[0][1]
    argv = ["nbdkit", "-f", "-v", "-D", "nbdkit.backend.datapath=0",
            "-U", "{sock}", path, "metrics-socket={msock}", "file={img}",
            "journal={jnl}", "journal-size=1G", "dirty-writeback-ms=60000",
            "journal-background-ratio=0",
            "cache-size=2G", "dirty-background-ratio=80", "dirty-ratio=90"]
    kw = dict (sock=self.sock, img=self.img, jnl=self.jnl, msock=self.msock)
    ring = GiB - 8192
    nwrites = int (0.95 * ring / 4160)
    fill = [a.flushload, "--uri", self.uri, "--bs", "4096", "--qd", "32",
            "--every", "32", "--size", str (GiB), "--bytes",
            str (nwrites * 4096), "--runtime", "50"]
    self.note ("journal", "server replay      " + " ".join (
      shlex.quote (x) for x in subst (argv, **kw)))
    self.note ("journal", "client replay-fill " + " ".join (
      shlex.quote (x) for x in fill) + "; flush; kill -9 PID; "
               "fsync + POSIX_FADV_DONTNEED of IMG and JNL; time the same "
               "server until an NBD handshake succeeds (polled every 5 ms)")
    self.note ("journal", "client replay-seq  POSIX_FADV_DONTNEED of JNL; "
               "dd if=JNL of=/dev/null bs=1M")
    for p in (self.jnl, self.msock):
      if os.path.exists (p):
        os.unlink (p)
    drop_image_cache (self.img)
    res = {"section": "journal", "server": "subpage-file-j",
           "workload": "journal-replay", "rep": rep}
    srv = self.start (argv, "nbdkit", "replay-fill", **kw)
    try:
      j = run_json (fill)
      run_json ([PY, NBDLOAD, "flush", "--uri", self.uri])
      m = scrape_metrics (self.msock)
    except Exception:
      srv.stop ()
      raise
    os.kill (srv.pid, signal.SIGKILL)
    srv.proc.wait ()
    srv.logf.close ()
    res.update (fill_iops=j["iops"],
                fill_used=m.get ("subpage_journal_used_bytes", 0),
                fill_drained=m.get ("subpage_journal_drained_records_total",
                                    0),
                fill_records=m.get ("subpage_journal_records_total", 0))
    for p in (self.img, self.jnl):
      drop_image_cache (p)
    for p in (self.sock, self.msock):
      if os.path.exists (p):
        os.unlink (p)
    t0 = time.monotonic ()
    srv = Server (subst (argv, **kw), "nbdkit",
                  os.path.join (self.dir, "replay.log"))
    try:
      deadline = t0 + 600
      while True:
        if srv.proc.poll () is not None:
          raise RuntimeError ("replay server exited with %d" %
                              srv.proc.returncode)
        if time.monotonic () > deadline:
          raise RuntimeError ("replay server did not serve in 600 s")
        if os.path.exists (self.sock):
          try:
            h = nbd.NBD ()
            h.connect_unix (self.sock)
            h.shutdown ()
            break
          except nbd.Error:
            pass
        time.sleep (0.005)
      res["replay_s"] = time.monotonic () - t0
      m = scrape_metrics (self.msock)
      res["replayed_bytes"] = m.get ("subpage_journal_replayed_bytes_total",
                                     0)
      res["replayed_records"] = m.get (
        "subpage_journal_replayed_records_total", 0)
    finally:
      out = srv.stop ()
    mm = re.search (r"journal: replayed (\d+) records \((\d+) bytes of "
                    r"journal\) in (\d+) ms", out)
    if mm:
      res["replay_log_ms"] = int (mm.group (3))
    drop_image_cache (self.jnl)
    t0 = time.monotonic ()
    subprocess.run (["dd", "if=" + self.jnl, "of=/dev/null", "bs=1M"],
                    check=True, stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL)
    res["seq_s"] = time.monotonic () - t0
    res["seq_bytes"] = os.path.getsize (self.jnl)
    os.unlink (self.jnl)
    res["replay_mibs"] = res["replayed_bytes"] / MiB / res["replay_s"]
    res["seq_mibs"] = res["seq_bytes"] / MiB / res["seq_s"]
    log ("replay rep%d: %.0f MiB of journal (%d records) in %.2f s "
         "(%.0f MiB/s; the log says %s ms); dd %.0f MiB/s; fill drained "
         "%d records" % (rep, res["replayed_bytes"] / MiB,
                         res["replayed_records"], res["replay_s"],
                         res["replay_mibs"], res.get ("replay_log_ms"),
                         res["seq_mibs"], res["fill_drained"]))
    self.results.append (res)

  def probe (self, srvname, argv, kind, which, rep):
    kw = dict (sock=self.sock, img=self.img, size=str (self.a.size),
               stats="", bsock="")
    self.note ("probe", "server %-10s %s" % (srvname, " ".join (
      shlex.quote (x) for x in subst (argv, **kw))))
    drop_image_cache (self.img)
    srv = self.start (argv, kind, srvname, **kw)
    try:
      if which == "dirty64m":
        cmd = [PY, NBDLOAD, "dirty", "--uri", self.uri, "--size",
               str (self.a.size), "--bs", "4096", "--count", "16384"]
      else:
        cmd = [PY, NBDLOAD, "fill", "--uri", self.uri, "--size",
               str (self.a.size)]
      self.note ("probe", "client %-10s %s" % (which, " ".join (
        shlex.quote (x) for x in cmd)))
      rss0 = proc_rss (srv.pid)
      j = run_json (cmd)
      rss1 = proc_rss (srv.pid)
    finally:
      srv.stop ()
    res = {"section": "probe", "server": srvname, "workload": which,
           "rep": rep, "flush_ns": j["flush_ns"],
           "flush_more_ns": j.get ("flush_more_median_ns")}
    if which == "clean2g":
      # Resident memory the server gained while 2 GiB were read through
      # it, minus those 2 GiB: for subpage (cache-size = image size, so
      # all of it is cached) an upper bound of its bookkeeping.
      res["rss_over_ns"] = rss1 - rss0 - self.a.size
    log ("%s %s rep%d: flush %.3f ms" % (srvname, which, rep,
                                         j["flush_ns"] / 1e6))
    self.results.append (res)

# ---------------------------------------------------------------- reports

def med (xs):
  return statistics.median (xs) if xs else None


def fmt_num (x, unit):
  if x is None:
    return "-"
  if unit == "us":
    return "%.0f" % (x / 1000) if x >= 10000 else "%.1f" % (x / 1000)
  if unit == "ms":
    return "%.3f" % (x / 1e6)
  if unit == "cpu":
    return "%.1f" % x
  return "%.0f" % x if x >= 100 else "%.2f" % x


def ordered (lines):
  """Backend and server command lines first, then warm-up and client
  lines, each group in first-use order."""
  rank = {"backend": 0, "server": 1, "warm": 2, "client": 2}
  return sorted (lines, key=lambda l: rank.get (l.split ()[0], 3))


def cell (rs, key, unit=""):
  xs = [r[key] for r in rs if r.get (key) is not None]
  if not xs:
    return "-", None
  m = med (xs)
  if len (xs) == 1:
    return fmt_num (m, unit), m
  return "%s (%s–%s)" % (fmt_num (m, unit), fmt_num (min (xs), unit),
                         fmt_num (max (xs), unit)), m


def section_table (b, section, servers, workloads, peers):
  rs = [r for r in b.results if r["section"] == section]
  if not rs:
    return ""
  out = ["### %s" % section, "", "Commands (SOCK = %s, IMG = %s):" % (
    b.sock, b.img), "", "```"] + ordered (b.commands.get (section, [])) + [
      "```", ""]
  wl = [w for w in workloads if any (r["workload"] == w for r in rs)]
  sv = [s for s in servers if any (r["server"] == s for r in rs)]
  # main figures
  out.append ("| workload | metric | " + " | ".join (sv) + " |")
  out.append ("| --- | --- |" + " --- |" * len (sv))
  meds = {}
  for w in wl:
    unit = "MiB/s" if workloads[w].get ("metric") == "mibs" else "IOPS"
    key = "mibs" if unit == "MiB/s" else "iops"
    row1, row2 = [], []
    for s in sv:
      x = [r for r in rs if r["workload"] == w and r["server"] == s]
      t, m = cell (x, key)
      meds[(w, s)] = m
      row1.append (t)
      row2.append (cell (x, "p99_ns", "us")[0])
    out.append ("| %s | %s | %s |" % (w, unit, " | ".join (row1)))
    out.append ("| | p99 µs | %s |" % " | ".join (row2))
    if any (r.get ("cpu_us") is not None for r in rs if r["workload"] == w):
      row7 = []
      for s in sv:
        x = [r for r in rs if r["workload"] == w and r["server"] == s]
        row7.append (cell (x, "cpu_us", "cpu")[0])
      out.append ("| | server CPU µs/request | %s |" % " | ".join (row7))
    if workloads[w]["kind"] == "flushload" and workloads[w].get ("every",
                                                                  32):
      row3 = []
      row4 = []
      for s in sv:
        x = [r for r in rs if r["workload"] == w and r["server"] == s]
        row3.append (cell (x, "flush_p99_ns", "us")[0])
        row4.append (cell (x, "fpw")[0] if not x or x[0].get ("fpw") is None
                     else "%.4f" % med ([r["fpw"] for r in x]))
      out.append ("| | flush p99 µs | %s |" % " | ".join (row3))
      out.append ("| | flushes/write | %s |" % " | ".join (row4))
    if workloads[w].get ("write"):
      row5, row6 = [], []
      for s in sv:
        x = [r for r in rs if r["workload"] == w and r["server"] == s
             and r.get ("cw")]
        if not x or "bw_wr" not in x[0]:
          row5.append ("-")
          row6.append ("-")
          continue
        wr = med ([r["bw_wr"] / r["cw"] for r in x])
        rd = med ([r["bw_rd"] / r["cw"] for r in x])
        t5 = "%.3f" % wr
        if x[0].get ("own_wr") is not None:
          t5 += " (own %.3f)" % med ([r["own_wr"] / r["cw"] for r in x])
        if x[0].get ("src") == "stats":
          t5 += "ˢ"
        row5.append (t5)
        row6.append ("%.3f" % rd)
      out.append ("| | backend wr/client B | %s |" % " | ".join (row5))
      out.append ("| | backend rd/client B | %s |" % " | ".join (row6))
  out.append ("")
  # ratios: each subpage build against each peer, then each later build
  # against the first (NAME / FIRST, the same sector size)
  spn = subpage_names (b.a)
  subs = [s for s in sv if s in spn]
  pairs = [(s, p) for s in subs for p in peers if p in sv]
  names = [n for n, _ in plugins_of (b.a)]
  pairs += [(n + x, names[0] + x) for n in names[1:] for x in ("", "-4k")
            if n + x in sv and names[0] + x in sv]
  if pairs:
    cols = ["%s / %s" % (s, p) for s, p in pairs]
    out.append ("| workload | " + " | ".join (cols) + " |")
    out.append ("| --- |" + " --- |" * len (cols))
    for w in wl:
      row = []
      for s, p in pairs:
        x, y = meds.get ((w, s)), meds.get ((w, p))
        row.append ("%.2fx" % (x / y) if x and y else "-")
      out.append ("| %s | %s |" % (w, " | ".join (row)))
    out.append ("")
  return "\n".join (out)


def probe_table (b, servers):
  rs = [r for r in b.results if r["section"] == "probe"]
  if not rs:
    return ""
  out = ["### flush-latency probe", "", "Commands:", "", "```"] + \
    ordered (b.commands.get ("probe", [])) + ["```", ""]
  sv = [s for s in servers if any (r["server"] == s for r in rs)]
  out.append ("| probe | " + " | ".join (sv) + " |")
  out.append ("| --- |" + " --- |" * len (sv))
  for w, label in (("dirty64m", "flush, 64 MiB scattered 4K dirty (ms)"),
                   ("clean2g", "flush, nothing dirty, 2 GiB read first (ms)"),
                   ("clean2g-more", "next 10 flushes, median (ms)")):
    key = "flush_more_ns" if w.endswith ("more") else "flush_ns"
    wn = w.replace ("-more", "")
    row = []
    for s in sv:
      x = [r for r in rs if r["workload"] == wn and r["server"] == s]
      row.append (cell (x, key, "ms")[0])
    if any (c != "-" for c in row):
      out.append ("| %s | %s |" % (label, " | ".join (row)))
  row = []
  for s in sv:
    x = [r["rss_over_ns"] for r in rs
         if r["workload"] == "clean2g" and r["server"] == s
         and "rss_over_ns" in r and s in subpage_names (b.a)]
    row.append ("-" if not x else "%+.1f (%+.2f %%)" % (
      med (x) / MiB, 100.0 * med (x) / b.a.size))
  if any (c != "-" for c in row):
    out.append ("| subpage: RSS growth while reading the image, minus its "
                "size (MiB, %% of it) | %s |" % " | ".join (row))
  out.append ("")
  return "\n".join (out)

def sparse_table (b):
  """Section "sparse": nbdcopy wall time per server and workload, and
  the ratios the target names (time: lower is better for subpage;
  subpage / file <= 1.25)."""
  rs = [r for r in b.results if r["section"] == "sparse"]
  if not rs:
    return ""
  sv = [s for s in sparse_servers (b.a) if any (r["server"] == s for r in rs)]
  wl = [w for w in SPARSE_WORKLOADS if any (r["workload"] == w for r in rs)]
  out = ["### sparse8g: nbdcopy of a sparse 8 GiB image", "",
         "Commands (SOCK = %s, BSOCK = %s, SIMG = %s):" % (
           b.sock, b.bsock, b.simg), "", "```"] + \
    ordered (b.commands.get ("sparse", [])) + ["```", ""]
  out.append ("| server | " + " | ".join (
    "%s ms | server CPU ms" % w for w in wl) + " |")
  out.append ("| --- |" + " --- | --- |" * len (wl))
  meds = {}
  for s in sv:
    row = []
    for w in wl:
      x = [r for r in rs if r["server"] == s and r["workload"] == w]
      t, meds[(w, s)] = cell ([dict (r, ms=r["secs"] * 1e3) for r in x],
                              "ms")
      c, _ = cell ([dict (r, cms=r["cpu_s"] * 1e3) for r in x], "cms")
      row += [t, c]
    out.append ("| %s | %s |" % (s, " | ".join (row)))
  out.append ("")
  names = [n for n, _ in plugins_of (b.a)]
  pairs = [(n, "file") for n in names] + \
    [(n + "-uri", "file") for n in names] + \
    [(n + "-uri", "nbd") for n in names] + \
    [(n, names[0]) for n in names[1:]]
  pairs = [(x, y) for x, y in pairs
           if any (meds.get ((w, x)) and meds.get ((w, y)) for w in wl)]
  if pairs:
    out.append ("| time ratio | " + " | ".join (
      "%s / %s" % p for p in pairs) + " |")
    out.append ("| --- |" + " --- |" * len (pairs))
    for w in wl:
      out.append ("| %s | %s |" % (w, " | ".join (
        "%.2fx" % (meds[(w, x)] / meds[(w, y)])
        if meds.get ((w, x)) and meds.get ((w, y)) else "-"
        for x, y in pairs)))
    out.append ("")
  return "\n".join (out)

def journal_table (b):
  """Section "journal": the main figures per workload and server, the
  subpage servers' counters, writes/s per 5 s for journal-sustained, the
  replay, and the targets."""
  rs = [r for r in b.results if r["section"] == "journal"]
  if not rs:
    return ""
  jw = journal_workloads (b.a.size, b.a.runtime)
  sv = [s for s in journal_servers (b.a) if any (r["server"] == s
                                                  for r in rs)]
  out = ["### journal", "", "Commands (SOCK = %s, BSOCK = %s, IMG = %s, "
         "JNL = %s, MSOCK = %s):" % (b.sock, b.bsock, b.img, b.jnl, b.msock),
         "", "```"] + ordered (b.commands.get ("journal", [])) + ["```", ""]
  meds = {}

  def mcell (x, f, fmt="%.0f"):
    xs = [f (r) for r in x]
    xs = [v for v in xs if v is not None]
    if not xs:
      return "-", None
    m = med (xs)
    if len (xs) == 1:
      return fmt % m, m
    return "%s (%s–%s)" % (fmt % m, fmt % min (xs), fmt % max (xs)), m

  def ratio (r, a, b):
    m = r.get ("metrics") or {}
    x, y = m.get (a), m.get (b)
    return x / y if x is not None and y else None

  for w in [w for w in JOURNAL_WORKLOADS if w in jw]:
    ws = [s for s in jw[w]["servers"] if s in sv and any (
      r["workload"] == w and r["server"] == s for r in rs)]
    if not ws:
      continue
    key = "mibs" if jw[w].get ("metric") == "mibs" else "iops"
    out.append ("**%s**" % w)
    out.append ("")
    out.append ("| metric | " + " | ".join (ws) + " |")
    out.append ("| --- |" + " --- |" * len (ws))
    rows = [
      ("MiB/s" if key == "mibs" else "IOPS", lambda r: r.get (key), "%.0f"),
      ("p99 µs", lambda r: r.get ("p99_ns", 0) / 1000, "%.0f"),
      ("flush p99 µs", lambda r: r.get ("flush_p99_ns") / 1000
       if r.get ("flush_p99_ns") else None, "%.0f"),
      ("MiB written by the client", lambda r: r.get ("cw", 0) / MiB, "%.0f"),
      ("server CPU µs/request", lambda r: r.get ("cpu_us"), "%.1f"),
      ("journal B / client B", lambda r: ratio (
        r, "subpage_journal_written_bytes_total",
        "subpage_client_written_bytes_total"), "%.4f"),
      ("journal syncs / client flush", lambda r: ratio (
        r, "subpage_journal_syncs_total", "subpage_flushes_total"), "%.2f"),
      ("throttled writes / client write", lambda r: ratio (
        r, "subpage_throttled_writers_total", "subpage_client_writes_total"),
       "%.3f"),
      ("backend writes / client write", lambda r: ratio (
        r, "subpage_backend_writes_total", "subpage_client_writes_total"),
       "%.3f"),
      ("backend flushes", lambda r: (r.get ("metrics") or {}).get (
        "subpage_backend_flushes_total"), "%.0f"),
      ("stop (drain at exit) s", lambda r: r.get ("stop_s"), "%.1f"),
    ]
    for label, f, fmt in rows:
      cells = []
      for s in ws:
        x = [r for r in rs if r["workload"] == w and r["server"] == s]
        t, m = mcell (x, f, fmt)
        cells.append (t)
        if label in ("IOPS", "MiB/s"):
          meds[(w, s)] = m
      if any (c != "-" for c in cells):
        out.append ("| %s | %s |" % (label, " | ".join (cells)))
    out.append ("")
    if any (r.get ("intervals") for r in rs if r["workload"] == w):
      out.append ("Writes/s per %d s, each run:" % jw[w].get ("interval", 5))
      out.append ("")
      out.append ("| server | run | writes/s per interval |")
      out.append ("| --- | --- | --- |")
      for s in ws:
        for r in [r for r in rs if r["workload"] == w and r["server"] == s]:
          out.append ("| %s | %d | %s |" % (s, r["rep"], " ".join (
            "%.0f" % v for v in r.get ("intervals", []))))
      out.append ("")
  rr = [r for r in rs if r["workload"] == "journal-replay"]
  if rr:
    out.append ("**journal-replay** (1 GiB journal, cold)")
    out.append ("")
    out.append ("| metric | value |")
    out.append ("| --- | --- |")
    for label, f, fmt in (
        ("fill: writes/s", lambda r: r["fill_iops"], "%.0f"),
        ("fill: journal used at kill, MiB", lambda r: r["fill_used"] / MiB,
         "%.0f"),
        ("fill: records drained before the kill", lambda r:
         r["fill_drained"], "%.0f"),
        ("replayed, MiB of journal", lambda r: r["replayed_bytes"] / MiB,
         "%.0f"),
        ("replayed records", lambda r: r["replayed_records"], "%.0f"),
        ("start to first handshake, s", lambda r: r["replay_s"], "%.2f"),
        ("replay as logged, s", lambda r: r.get ("replay_log_ms", 0) / 1e3,
         "%.2f"),
        ("replay MiB/s (journal bytes / start-to-serve)",
         lambda r: r["replay_mibs"], "%.0f"),
        ("dd of the journal file, MiB/s", lambda r: r["seq_mibs"], "%.0f"),
        ("replay / dd", lambda r: r["replay_mibs"] / r["seq_mibs"], "%.2f")):
      t, m = mcell (rr, f, fmt)
      out.append ("| %s | %s |" % (label, t))
      if label == "replay / dd":
        meds[("journal-replay", "ratio")] = m
    out.append ("")
  # targets
  tg = []

  def rat (w, x, y, target, what):
    a_, b_ = meds.get ((w, x)), meds.get ((w, y))
    if a_ and b_:
      v = a_ / b_
      tg.append ((w, "%s / %s" % (x, y), "%.2fx" % v, what,
                  "met" if v >= target else "**missed**"))

  rat ("journal-burst", "subpage-uri-j", "file", 0.8, ">= 0.8x")
  rat ("journal-burst", "subpage-uri-j", "nbd", 5, ">= 5x")
  rat ("journal-burst", "subpage-uri-j-eager", "file", 0.8, ">= 0.8x")
  rat ("journal-burst", "subpage-uri-j-eager", "nbd", 5, ">= 5x")
  rat ("journal-burst", "subpage-uri-j-4g", "file", 0.8, ">= 0.8x")
  rat ("journal-burst", "subpage-uri-j-4g", "nbd", 5, ">= 5x")
  rat ("journal-sustained", "subpage-uri-j256", "subpage-uri", 0.9,
       ">= 0.9x")
  rat ("journal-sustained", "subpage-uri-j256-4g", "subpage-uri", 0.9,
       ">= 0.9x")
  rat ("journal-randwrite4k", "subpage-uri-j", "subpage-uri", 0.9, ">= 0.9x")
  rat ("journal-randwrite4k", "subpage-uri-j-eager", "subpage-uri", 0.9,
       ">= 0.9x")
  rat ("journal-seqwrite1m", "subpage-file-j", "file", 0.9, ">= 0.9x")
  if meds.get (("journal-replay", "ratio")) is not None:
    v = meds[("journal-replay", "ratio")]
    tg.append (("journal-replay", "replay / dd", "%.2fx" % v, ">= 0.5x",
                "met" if v >= 0.5 else "**missed**"))
  for w in ("journal-burst", "journal-randwrite4k"):
    x = [ratio (r, "subpage_journal_written_bytes_total",
                "subpage_client_written_bytes_total") for r in rs
         if r["workload"] == w and r["server"] == "subpage-uri-j"]
    x = [v for v in x if v is not None]
    if x:
      v = med (x)
      tg.append ((w, "journal B / client B", "%.4f" % v, "<= 1.15",
                  "met" if v <= 1.15 else "**missed**"))
  if tg:
    out.append ("| workload | ratio | median | target | |")
    out.append ("| --- | --- | --- | --- | --- |")
    for t in tg:
      out.append ("| %s |" % " | ".join (t))
    out.append ("")
  return "\n".join (out)

# ------------------------------------------------------------------- main

def main ():
  p = argparse.ArgumentParser (description=__doc__,
                               formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument ("--runtime", type=int, default=20)
  p.add_argument ("--reps", type=int, default=3)
  p.add_argument ("--quick", action="store_true",
                  help="runtime 3 s, 1 repetition")
  p.add_argument ("--only", default="",
                  help="comma list of workloads or sections "
                  "(local, probe, slow, sparse, journal)")
  p.add_argument ("--servers", default="",
                  help="comma list of server names to run (default all):\n"
                  "subpage, subpage-4k (or each build's NAME, NAME-4k),\n"
                  "cache, file, qemu-nbd, memory, null, nbd, remote,\n"
                  "NAME-uri (section sparse)")
  p.add_argument ("--image-dir", default=None,
                  help="directory for the image and sockets "
                  "(default: a new temporary directory under /var/tmp)")
  p.add_argument ("--size", default="2G", help="image size (default 2G)")
  p.add_argument ("--reprefill", action="store_true",
                  help="rewrite an existing image in --image-dir")
  p.add_argument ("--keep", action="store_true",
                  help="keep the image and logs")
  p.add_argument ("--plugin", action="append", default=[],
                  metavar="[NAME=]PATH",
                  help="the subpage plugin (default: build/plugin/"
                  "nbdkit-subpage-plugin.so), run as servers subpage and\n"
                  "subpage-4k.  NAME=PATH, repeatable: several builds,\n"
                  "run as servers NAME and NAME-4k, interleaved run by\n"
                  "run, each later build's ratio against the first")
  p.add_argument ("--flushload", default=None,
                  help="the C load client (default: tests/bench/flushload "
                  "in the first plugin's build tree)")
  p.add_argument ("--json", default=None, help="also write raw results here")
  p.add_argument ("--report", default=None, metavar="JSON",
                  help="only print the tables of an earlier --json file")
  a = p.parse_args ()
  if a.report:
    report_from_json (a.report)
    return
  if a.quick:
    a.runtime, a.reps = 3, 1
  a.size = int (a.size[:-1]) << {"K": 10, "M": 20, "G": 30}[a.size[-1]] \
    if a.size[-1] in "KMG" else int (a.size)
  a.plugins = parse_plugins (a.plugin)
  a.plugin = a.plugins[0][1]
  if a.flushload is None:
    a.flushload = os.path.join (os.path.dirname (os.path.dirname (a.plugin)),
                                "tests", "bench", "flushload")
  if not os.access (a.flushload, os.X_OK):
    sys.exit ("bench.py: %s not found: build the project (meson builds "
              "tests/bench/flushload) or pass --flushload" % a.flushload)
  for t in ("fio", "nbdkit", "qemu-nbd"):
    if shutil.which (t) is None:
      sys.exit ("bench.py: %s not found (scripts/packages-test.txt)" % t)
  tmp = None
  if a.image_dir is None:
    tmp = a.image_dir = tempfile.mkdtemp (prefix="subpage-bench-",
                                          dir="/var/tmp")
  os.makedirs (a.image_dir, exist_ok=True)
  a.image_dir = os.path.abspath (a.image_dir)
  only = set (x for x in a.only.split (",") if x)
  want_srv = set (x for x in a.servers.split (",") if x)

  def wanted (section, name):
    return not only or section in only or name in only

  b = Bench (a)
  ok = True
  try:
    lw = local_workloads (a.size)
    ls = local_servers (a)
    if want_srv:
      ls = {k: v for k, v in ls.items () if k in want_srv}
    if any (wanted ("local", w) for w in lw) or wanted ("probe", "probe"):
      b.prefill ()
    for wname, w in lw.items ():
      if not wanted ("local", wname):
        continue
      for rep in range (a.reps):
        for sname, (argv, kind) in ls.items ():
          ok &= cell_ok (b.measure, "local", sname, argv, kind, wname, w,
                         rep)
    if wanted ("probe", "probe"):
      ps = probe_servers (a)
      if want_srv:
        ps = {k: v for k, v in ps.items () if k in want_srv}
      for which in ("dirty64m", "clean2g"):
        for rep in range (a.reps):
          for sname, (argv, kind) in ps.items ():
            ok &= cell_ok (b.probe, sname, argv, kind, which, rep)
    sw = slow_workloads (a.size)
    ss = slow_servers (a)
    if want_srv:
      ss = {k: v for k, v in ss.items () if k in want_srv}
    has_uri = b'"uri"' in open (os.path.join (HERE, "..", "..", "plugin",
                                              "subpage.c"), "rb").read () \
      if os.path.exists (os.path.join (HERE, "..", "..", "plugin",
                                       "subpage.c")) else True
    for wname, w in sw.items ():
      if not wanted ("slow", wname):
        continue
      for rep in range (a.reps):
        for sname, (argv, kind) in ss.items ():
          if (sname == "remote") != ("remote" in w.get ("only", [])):
            continue
          if sname in subpage_names (a) and not has_uri:
            log ("subpage uri=: pending, skipped")
            continue
          ok &= cell_ok (b.measure, "slow", sname, argv, kind, wname, w,
                         rep, backend=SLOW_BACKEND)
    spw = [w for w in SPARSE_WORKLOADS if wanted ("sparse", w)]
    if spw:
      if shutil.which ("nbdcopy") is None:
        sys.exit ("bench.py: nbdcopy not found (libnbd-bin)")
      b.sparse_image ()
      sps = sparse_servers (a)
      if want_srv:
        sps = {k: v for k, v in sps.items () if k in want_srv}
      # Each run is short (tens of ms): 5 runs per --reps.
      for wname in spw:
        for rep in range (5 * a.reps):
          for sname, (argv, backend) in sps.items ():
            ok &= cell_ok (b.sparse, sname, argv, backend, wname, rep)
    jw = journal_workloads (a.size, a.runtime)
    js = journal_servers (a)
    if want_srv:
      js = {k: v for k, v in js.items () if k in want_srv}
    jwanted = [w for w in JOURNAL_WORKLOADS if wanted ("journal", w)]
    if jwanted:
      b.prefill ()
    for wname in jwanted:
      for rep in range (a.reps):
        if wname == "journal-replay":
          ok &= cell_ok (b.journal_replay, rep)
          continue
        w = jw[wname]
        for sname in w["servers"]:
          if sname not in js:
            continue
          argv, backend = js[sname]
          ok &= cell_ok (b.measure, "journal", sname, argv, "nbdkit", wname,
                         w, rep, backend=backend)
  except Exception as e:
    ok = False
    log ("error:", e)
  finally:
    if a.json:
      with open (a.json, "w") as f:
        json.dump ({"args": vars (a), "results": b.results,
                    "commands": b.commands}, f, indent=1)
    report (b, a)
    if tmp is not None and not a.keep:
      shutil.rmtree (tmp, ignore_errors=True)
    elif not a.keep:
      for f in os.listdir (a.image_dir):
        if f.endswith ((".sock", ".log", ".txt")):
          os.unlink (os.path.join (a.image_dir, f))
  sys.exit (0 if ok else 1)


def parse_plugins (args):
  """--plugin values -> [(name, absolute path)].  One PATH is named
  "subpage"; NAME=PATH names a build (letters, digits, '_' and '.', not
  a peer's name).  Exits with a message on a bad value."""
  if not args:
    args = [c for c in ("build/plugin/nbdkit-subpage-plugin.so",)
            if os.path.exists (c)][:1]
  if not args:
    sys.exit ("bench.py: --plugin PATH to nbdkit-subpage-plugin.so")
  peers = {"cache", "file", "qemu-nbd", "memory", "null", "nbd", "remote"}
  out = []
  for x in args:
    m = re.match (r"([A-Za-z0-9_.]+)=(.+)$", x)
    if m and not os.path.exists (x):
      name, path = m.group (1), m.group (2)
    elif len (args) == 1:
      name, path = "subpage", x
    else:
      sys.exit ("bench.py: several --plugin: each one NAME=PATH (%s)" % x)
    if name in peers or name in (n for n, _ in out):
      sys.exit ("bench.py: --plugin %s: %s is a peer's or another "
                "build's name" % (x, name))
    if not os.path.exists (path):
      sys.exit ("bench.py: --plugin %s: %s not found" % (x, path))
    out.append ((name, os.path.abspath (path)))
  return out


def cell_ok (fn, *args, **kw):
  """Runs one cell; a failure is logged and the other cells still run."""
  try:
    fn (*args, **kw)
    return True
  except (RuntimeError, OSError, ValueError, KeyError) as e:
    log ("FAILED %s: %s" % (" ".join (str (x) for x in args
                                       if isinstance (x, (str, int))), e))
    return False


def report (b, a):
  print ("## subpage benchmark (runtime %d s, %d rep%s, image %s)\n" % (
    a.runtime, a.reps, "s" if a.reps > 1 else "", fmt_size (a.size)))
  if "prefill" in b.commands:
    print ("Prefill (once; the image is reused, and before every server "
           "start it is fsynced and dropped from the host page cache "
           "with posix_fadvise DONTNEED):\n\n```\n%s\n```\n" %
           "\n".join (b.commands["prefill"]))
  allw = dict (local_workloads (a.size), **slow_workloads (a.size))
  print (section_table (b, "local", list (local_servers (a)), allw,
                        ["cache", "memory", "file", "qemu-nbd", "null"]))
  print (probe_table (b, list (probe_servers (a))))
  print (section_table (b, "slow", list (slow_servers (a)), allw,
                        ["cache", "nbd", "qemu-nbd"]))
  print (sparse_table (b))
  print (journal_table (b))


def report_from_json (path):
  """--report FILE: print the tables of an earlier run's --json FILE."""
  d = json.load (open (path))
  a = argparse.Namespace (**d["args"])
  b = argparse.Namespace (a=a, results=d["results"], commands=d["commands"],
                          img=os.path.join (a.image_dir, "bench.img"),
                          sock=os.path.join (a.image_dir, "s.sock"),
                          bsock=os.path.join (a.image_dir, "b.sock"),
                          simg=os.path.join (a.image_dir, "sparse8g.img"),
                          jnl=os.path.join (a.image_dir, "journal.jnl"),
                          msock=os.path.join (a.image_dir, "m.sock"))
  report (b, a)


def fmt_size (n):
  for u, s in ((GiB, "GiB"), (MiB, "MiB")):
    if n % u == 0:
      return "%d %s" % (n // u, s)
  return "%d B" % n


if __name__ == "__main__":
  main ()
