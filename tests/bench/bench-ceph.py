#!/usr/bin/python3
"""subpage in front of Ceph against the peers a Ceph user would pick
(issue 16; docs/benchmarks.md, "In front of Ceph (issue 16)").

Starts its own single-node cluster (tests/ceph/cluster.sh), makes one
RBD image, prefills it, and runs each workload on every server in turn
(interleaved, a fresh server per run), then stops the cluster:

  qemu-none    qemu-nbd --cache=none rbd:rbd/IMG
  qemu-wb      qemu-nbd --cache=writeback rbd:rbd/IMG (librbd's cache)
  nbd          nbdkit nbd socket=Q, Q a qemu-nbd --cache=none
  nbd-cache    the same with --filter=cache cache=writeback
  subpage-uri  subpage uri=nbd+unix:///?socket=Q
  subpage-rbd  subpage rbd=rbd/IMG
  subpage-rbd-j  the same with journal=DIR/rbd.jnl journal-size=2G
  fio-rbd      no server: fio's own rbd engine (librbd, rbd_cache=false),
               the cluster's ceiling

  /usr/bin/python3 tests/bench/bench-ceph.py \\
      --plugin build-rel/plugin/nbdkit-subpage-plugin.so > ceph.md

Builds nothing; not part of the test suite.  Needs what bench.py
needs, the Ceph packages of scripts/packages-test.txt, fio with the
nbd and rbd engines, and qemu-block-extra (qemu-nbd's rbd driver).
"""

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert (0, os.path.dirname (os.path.abspath (__file__)))
import bench                    # noqa: E402  (helpers: Server, wait_socket)
import nbd                      # noqa: E402

MiB = 1 << 20
TOP = os.path.dirname (os.path.dirname (os.path.dirname (
  os.path.abspath (__file__))))
POOL = "rbd"
IMAGE = "bench"

SERVERS = ["qemu-none", "qemu-wb", "nbd", "nbd-cache", "subpage-uri",
           "subpage-rbd", "subpage-rbd-j", "fio-rbd"]
WORKLOADS = ["randwrite4k", "flush32", "qd1flush", "seqwrite1m"]


def qemu_cmd (mode, sock, conf):
  return ["qemu-nbd", "-f", "raw", "--cache=" + mode, "-t", "-e", "16",
          "-k", sock, "rbd:%s/%s:conf=%s" % (POOL, IMAGE, conf)]


def journal_path (sock):
  return os.path.join (os.path.dirname (sock), "rbd.jnl")


def server_cmds (a, sock, bsock, conf):
  """name -> (server argv, backend argv or None)."""
  q = qemu_cmd ("none", bsock, conf)
  cmds = {
    "qemu-none": (qemu_cmd ("none", sock, conf), None),
    "qemu-wb": (qemu_cmd ("writeback", sock, conf), None),
    "nbd": (["nbdkit", "-f", "-U", sock, "nbd", "socket=" + bsock], q),
    "nbd-cache": (["nbdkit", "-f", "-U", sock, "--filter=cache", "nbd",
                   "socket=" + bsock, "cache=writeback"], q),
  }
  for tag, plugin in (("", a.plugin), ("@base", a.base)):
    if plugin:
      for s, (argv, back) in subpage_cmds (plugin, sock, bsock, conf, q).items ():
        cmds[s + tag] = (argv, back)
  return cmds


def subpage_cmds (plugin, sock, bsock, conf, q):
  sp = ["nbdkit", "-f", "-v", "-D", "nbdkit.backend.datapath=0", "-U", sock,
        plugin]
  return {
    "subpage-uri": (sp + ["uri=nbd+unix:///?socket=" + bsock], q),
    "subpage-rbd": (sp + ["rbd=%s/%s" % (POOL, IMAGE), "ceph-conf=" + conf],
                    None),
    # With a journal next to the sockets (deleted before each run): a
    # flush syncs the journal, not the OSDs; the stop drains it.
    "subpage-rbd-j": (sp + ["rbd=%s/%s" % (POOL, IMAGE), "ceph-conf=" + conf,
                            "journal=" + journal_path (sock),
                            "journal-size=2G"], None),
  }


def fio_rbd (name, opts, runtime):
  return ["fio", "--name=" + name, "--ioengine=rbd", "--clientname=admin",
          "--pool=" + POOL, "--rbdname=" + IMAGE, "--time_based",
          "--runtime=%d" % runtime, "--norandommap", "--group_reporting",
          "--end_fsync=1", "--output-format=json"] + opts


def client_cmd (a, w, srv, uri):
  size = a.size
  if srv == "fio-rbd":
    opts = {
      "randwrite4k": ["--rw=randwrite", "--bs=4k", "--iodepth=32"],
      # fio's fsync=N: one flush after every N writes *issued*, and it
      # waits for the queue to drain first (not the same as flushload).
      "flush32": ["--rw=randwrite", "--bs=4k", "--iodepth=32", "--fsync=32"],
      "qd1flush": ["--rw=randwrite", "--bs=4k", "--iodepth=1", "--fsync=1"],
      "seqwrite1m": ["--rw=write", "--bs=1M", "--iodepth=8"],
    }[w]
    return fio_rbd (w, opts + ["--size=%d" % size], a.runtime)
  fl = [a.flushload, "--uri", uri, "--bs", "4096", "--size", str (size),
        "--runtime", str (a.runtime)]
  return {
    "randwrite4k": bench.fio_cmd (uri, w, ["--rw=randwrite", "--bs=4k",
                                           "--iodepth=32",
                                           "--size=%d" % size], a.runtime),
    "flush32": fl + ["--qd", "32", "--every", "32"],
    "qd1flush": fl + ["--qd", "1", "--every", "1"],
    "seqwrite1m": bench.fio_cmd (uri, w, ["--rw=write", "--bs=1M",
                                          "--iodepth=8",
                                          "--size=%d" % size], a.runtime),
  }[w]


def cpu (pid):
  try:
    return bench.proc_cpu_s (pid)
  except (FileNotFoundError, ProcessLookupError):
    return 0.0


class Run:
  def __init__ (self, a, d, conf, fioconf, osdpid):
    self.a, self.d, self.conf, self.fioconf = a, d, conf, fioconf
    self.osdpid = osdpid
    self.sock = os.path.join (d, "srv.sock")
    self.bsock = os.path.join (d, "qemu.sock")
    self.cmds = server_cmds (a, self.sock, self.bsock, conf)
    self.shown = set ()
    self.results = []

  def show (self, what, argv):
    if what not in self.shown:
      self.shown.add (what)
      print ("    " + " ".join (shlex.quote (x) for x in argv))

  def one (self, w, srv, rep):
    a = self.a
    r = None
    env = dict (os.environ, CEPH_CONF=self.fioconf)
    procs = []
    for path in (self.sock, self.bsock, journal_path (self.sock)):
      if os.path.exists (path):     # nbdkit -U does not replace a socket
        os.unlink (path)            # (and each run starts a new journal)
    try:
      if srv != "fio-rbd":
        argv, bargv = self.cmds[srv]
        if bargv:
          self.show ("backend", bargv)
          b = bench.Server (bargv, "qemu",
                            os.path.join (self.d, "qemu-%s.log" % srv))
          procs.append (b)
          bench.wait_socket (self.bsock, b.proc)
        self.show (srv, argv)
        s = bench.Server (argv, srv, os.path.join (self.d, srv + ".log"))
        procs.append (s)
        bench.wait_socket (self.sock, s.proc)
      uri = "nbd+unix:///?socket=" + self.sock
      cmd = client_cmd (a, w, srv, uri)
      self.show ("%s %s" % (w, "rbd" if srv == "fio-rbd" else "nbd"), cmd)
      c0 = [cpu (p.pid) for p in procs]
      o0 = cpu (self.osdpid)
      p = subprocess.run (cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, env=env)
      if p.returncode != 0:
        raise RuntimeError ("client failed: " + p.stderr[-1500:])
      out = p.stdout
      j = json.loads (out[out.index ("{"):])
      fl = 0.0
      if srv != "fio-rbd":
        # The final flush, inside the timed run: everything the client
        # wrote is on the OSD before the clock stops.
        t = time.monotonic ()
        h = nbd.NBD ()
        h.connect_uri (uri)
        h.flush ()
        fl = time.monotonic () - t
        h.shutdown ()
      c1 = [cpu (p.pid) for p in procs]
      o1 = cpu (self.osdpid)
      if "jobs" in j:
        job = j["jobs"][0]
        x = job["write"]
        # fio's runtime includes end_fsync (fio-rbd); NBD runs add the
        # harness's flush.
        el = x["runtime"] / 1000.0 + fl
        ops, nbytes = x["total_ios"], x["io_bytes"]
        flushes = job.get ("sync", {}).get ("total_ios", 0)
      else:
        el = j["elapsed_s"] + fl
        ops, nbytes = j["writes"], j["write_bytes"]
        flushes = j["flushes"]
      r = dict (workload=w, server=srv, rep=rep, elapsed=el, ops=ops,
                flushes=flushes, iops=ops / el, mibs=nbytes / el / MiB,
                final_flush_ms=fl * 1000,
                srv_cpu_us=1e6 * sum (c1) - 1e6 * sum (c0),
                osd_cpu_us=1e6 * (o1 - o0))
      r["srv_us_per_req"] = r["srv_cpu_us"] / max (1, ops + flushes)
      r["osd_us_per_req"] = r["osd_cpu_us"] / max (1, ops + flushes)
      bench.log ("%s %s rep%d: %.0f IOPS %.1f MiB/s final flush %.0f ms "
                 "server %.1f us/req osd %.1f us/req" % (
                   srv, w, rep, r["iops"], r["mibs"], r["final_flush_ms"],
                   r["srv_us_per_req"], r["osd_us_per_req"]))
      self.results.append (r)
    except Exception as e:
      bench.log ("FAILED %s %s rep%d: %s" % (srv, w, rep, e))
      r = None
    finally:
      t = time.monotonic ()
      for p in reversed (procs):
        txt = p.stop ()
        if p.proc.returncode not in (0, -15):
          bench.log ("%s exited %s: %s" % (p.argv[0], p.proc.returncode,
                                           txt[-800:]))
      # With a journal the stop writes back what the journal holds.
      if procs and r is not None:
        r["stop_s"] = time.monotonic () - t


def med (rs, key):
  xs = sorted (r[key] for r in rs)
  return xs[len (xs) // 2] if xs else None


def main ():
  ap = argparse.ArgumentParser (description=__doc__.split ("\n")[0])
  ap.add_argument ("--plugin", default=os.path.join (
    TOP, "build/plugin/nbdkit-subpage-plugin.so"))
  ap.add_argument ("--base", help="a second plugin (an older build): its "
                  "servers are named subpage-*@base")
  ap.add_argument ("--flushload")
  ap.add_argument ("--runtime", type=int, default=10)
  ap.add_argument ("--reps", type=int, default=1)
  ap.add_argument ("--size", default="2G")
  ap.add_argument ("--only", help="comma list of workloads")
  ap.add_argument ("--servers", help="comma list of servers")
  ap.add_argument ("--dir", help="work directory (default: new in /var/tmp)")
  ap.add_argument ("--keep", action="store_true")
  ap.add_argument ("--json")
  a = ap.parse_args ()
  a.plugin = os.path.abspath (a.plugin)
  if a.base:
    a.base = os.path.abspath (a.base)
  if not a.flushload:
    a.flushload = os.path.join (os.path.dirname (os.path.dirname (a.plugin)),
                                "tests/bench/flushload")
  a.size = int (a.size[:-1]) << {"K": 10, "M": 20, "G": 30}[a.size[-1]]
  servers = a.servers.split (",") if a.servers else SERVERS
  workloads = a.only.split (",") if a.only else WORKLOADS
  d = a.dir or tempfile.mkdtemp (prefix="bench-ceph.", dir="/var/tmp")
  os.makedirs (d, exist_ok=True)
  cdir = os.path.join (d, "ceph")
  cluster = os.path.join (TOP, "tests/ceph/cluster.sh")
  env = dict (os.environ, CEPH_OSD_SIZE="%dG" % (2 * (a.size >> 30) + 4),
              CEPH_CLUSTER_OWNER=str (os.getpid ()))
  print ("## In front of Ceph\n\n```")
  print ("    " + cluster + " start " + cdir)
  out = subprocess.run ([cluster, "start", cdir], env=env, check=True,
                        stdout=subprocess.PIPE, text=True).stdout
  conf = [l.split ("=", 1)[1] for l in out.splitlines ()
          if l.startswith ("CEPH_CONF=")][0]
  try:
    fioconf = os.path.join (d, "fio-ceph.conf")
    with open (conf) as f, open (fioconf, "w") as g:
      # The last section of cluster.sh's conf is [client].
      g.write (f.read () + "\nrbd_cache = false\n")
    cenv = dict (os.environ, CEPH_CONF=fioconf)
    mk = ["rbd", "create", "--size", "%dM" % (a.size >> 20),
          "--image-feature", "layering,exclusive-lock",
          "%s/%s" % (POOL, IMAGE)]
    print ("    " + " ".join (mk))
    subprocess.run (mk, env=cenv, check=True)
    pre = ["fio", "--name=prefill", "--ioengine=rbd", "--clientname=admin",
           "--pool=" + POOL, "--rbdname=" + IMAGE, "--rw=write", "--bs=1M",
           "--iodepth=8", "--size=%d" % a.size, "--refill_buffers",
           "--end_fsync=1", "--output-format=json"]
    print ("    " + " ".join (pre))
    t = time.monotonic ()
    subprocess.run (pre, env=cenv, check=True, stdout=subprocess.DEVNULL)
    bench.log ("prefill %.1f s" % (time.monotonic () - t))
    with open (os.path.join (cdir, "run/osd.0.pid")) as f:
      osdpid = int (f.read ().strip ())
    run = Run (a, d, conf, fioconf, osdpid)
    for w in workloads:
      for rep in range (a.reps):
        for s in servers:
          run.one (w, s, rep)
    print ("```\n")
    table (run.results, servers, workloads, a)
    if a.json:
      with open (a.json, "w") as f:
        json.dump (dict (args=vars (a), results=run.results), f, indent=1)
  finally:
    subprocess.run ([cluster, "stop", cdir])
    if not a.keep and not a.dir:
      shutil.rmtree (d, ignore_errors=True)
  failed = len (run.results) < len (servers) * len (workloads) * a.reps
  sys.exit (1 if failed else 0)


def table (results, servers, workloads, a):
  def rs (s, w):
    return [r for r in results if r["server"] == s and r["workload"] == w]

  def key (w):
    return "mibs" if w == "seqwrite1m" else "iops"

  def grid (heads, cell):
    """One row per server, one column per workload: cell (s, w)."""
    print ("| server | " + " | ".join (heads) + " |")
    print ("| --- |" + " --- |" * len (workloads))
    for s in servers:
      print ("| %s | %s |" % (s, " | ".join (cell (s, w) for w in workloads)))
    print ()

  def rate (s, w):
    v = med (rs (s, w), key (w))
    return ("-" if v is None else
            ("%.1f" % v if key (w) == "mibs" else "%.0f" % v))

  def costs (s, w):
    x = rs (s, w)
    return "-" if not x else "%.0f / %.1f / %.1f" % (
      med (x, "final_flush_ms"), med (x, "srv_us_per_req"),
      med (x, "osd_us_per_req"))

  def stop (s, w):
    x = [r for r in rs (s, w) if "stop_s" in r]
    return "-" if not x else "%.1f" % med (x, "stop_s")

  base = "qemu-none"

  def ratio (s, w):
    v, b = med (rs (s, w), key (w)), med (rs (base, w), key (w))
    return "-" if not v or not b else "%.2fx" % (v / b)

  unit = {w: "MiB/s" if key (w) == "mibs" else "IOPS" for w in workloads}
  grid (["%s %s" % (w, unit[w]) for w in workloads], rate)
  print ("Final flush ms / server CPU µs per request / OSD CPU µs per "
         "request:\n")
  grid (workloads, costs)
  print ("Stop of the servers, s (with a journal: the drain of what it "
         "holds):\n")
  grid (workloads, stop)
  print ("Ratio to %s:\n" % base)
  grid (workloads, ratio)

if __name__ == "__main__":
  main ()
