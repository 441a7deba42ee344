#!/usr/bin/env bash
# metrics-socket=: the endpoint serves every documented metric in the
# Prometheus text format (checked line by line and by Prometheus' own
# parser, prometheus_client: names carry their unit, counters end in
# _total, the flush histogram's buckets are cumulative and +Inf equals
# _count, subpage_build_info has its labels), and the numbers match
# what the test did.
#
#  1. Before any I/O: configuration gauges, everything else 0; plain,
#     shut-down and HTTP clients (and curl, when installed) all get it;
#     HEAD /metrics gets the headers (Content-Length of the GET's body)
#     and no body, another path 404, another method 405;
#     the socket file has mode 0660.  The plugin's threads carry their
#     names (docs/operations.md): writeback-threads=3 gives three
#     subpage-wb, one subpage-wbloop, subpage-watch and subpage-metric.
#  2. Known I/O, checked exactly: 20 KiB of whole-sector writes (dirty,
#     cached, one dirty page, no backend I/O, no write-back buffers), a
#     64 KiB read of uncached data (misses, backend reads, a second
#     resident page that is not dirty), the same read again and a read
#     of the written data (hits), then one flush (flushes +1, dirty 0,
#     no dirty page, no write-back buffer left, the 20 KiB written to
#     the image, one backend flush, flush time > 0); then 1.5 KiB over
#     three pages (three dirty pages) and another flush.
#     dirty-expire-ms is an hour and this is far below
#     dirty-background-ratio, so nothing is written back before a flush.
#  3. While a background nbdsh loop writes, reads and flushes: repeated
#     scrapes (each must answer within 10 s and parse), with clients
#     that never read and a stalled half request held open meanwhile,
#     and more clients than the server serves at once.  Then background
#     write-back brings the dirty pages under dirty-background-ratio, and
#     once it is idle no write-back buffer is left and the dirty gauges
#     agree with each other.
#  4. -D subpage.metrics=1 and -D subpage.writeback=1 log what they
#     should, the socket file is gone after nbdkit exits, and a bad
#     metrics-socket= fails at startup naming the parameter.

source "$(dirname "$0")/../functions.sh"
set -euo pipefail

requires_plugin
requires_nbdsh
make_tmpdir

img=$tmpdir/disk.img
sock=$tmpdir/nbd.sock
msock=$tmpdir/metrics.sock
pid=$tmpdir/nbdkit.pid
log=$tmpdir/nbdkit.log

truncate -s 64M "$img"
start_nbdkit -P "$pid" -U "$sock" -v \
             -D subpage.metrics=1 -D subpage.writeback=1 \
             "$PLUGIN" file="$img" metrics-socket="$msock" \
             cache-size=64M dirty-expire-ms=3600000 writeback-threads=3 \
             2>"$log"

mode=$(stat -c %a "$msock")
if [ "$mode" != 660 ]; then
  echo "$0: metrics socket has mode $mode, expected 660" >&2
  exit 1
fi

# Thread names: the threads start in .after_fork, so wait for them.
want="subpage-metric:1 subpage-watch:1 subpage-wb:3 subpage-wbloop:1"
for (( i = 0; i < 100; i++ )); do
  got=$(cat /proc/"$(cat "$pid")"/task/*/comm | grep '^subpage-' | sort |
        uniq -c | awk '{ printf "%s%s:%s", sep, $2, $1; sep = " " }')
  [ "$got" = "$want" ] && break
  sleep 0.1
done
if [ "$got" != "$want" ]; then
  echo "$0: plugin threads are '$got', expected '$want'" >&2
  exit 1
fi

export IMG=$img MSOCK=$msock URI=$(nbd_uri "$sock")
export PYTHONPATH=$(cd "$(dirname "$0")" && pwd)
export PYTHONDONTWRITEBYTECODE=1    # no __pycache__ in the source tree
export CURL=$(command -v curl || :)
if [ -z "$CURL" ]; then
  echo "$0: curl not found: checking HTTP with a Python client only" >&2
fi

# ---- 1 and 2: known I/O ----------------------------------------------------
nbdsh_py -u "$URI" -c - <<'EOF'
import os, re, subprocess, time
from metrics_scrape import scrape, parse, families, http_request

msock = os.environ["MSOCK"]
KiB = 1024
MiB = 1024 * KiB

EXPECTED = """
export_size_bytes cache_size_bytes page_size_bytes sector_size_bytes
pages_capacity pages_resident pages_dirty cached_bytes dirty_bytes
writeback_bytes writeback_buffer_bytes metadata_bytes hit_bytes_total
miss_bytes_total
client_reads_total client_read_bytes_total client_writes_total
client_written_bytes_total client_zeroes_total client_zero_bytes_total
client_trims_total client_trim_bytes_total
backend_reads_total backend_read_bytes_total backend_writes_total
backend_written_bytes_total backend_flushes_total writeback_runs_total
writeback_errors_total writeback_past_end_runs_total image_size_changes_total
writeback_runs_in_flight evictions_total
throttled_writers_total flushes_total flush_errors_total
flush_duration_seconds_sum flush_duration_seconds_count
fua_write_duration_seconds_sum fua_write_duration_seconds_count
backend_write_duration_seconds_sum backend_write_duration_seconds_count
throttle_wait_seconds_sum throttle_wait_seconds_count
waiting_threads{on="flush"} waiting_threads{on="throttle"}
waiting_threads{on="page"} waiting_threads{on="idle"}
journal_records_total journal_written_bytes_total journal_syncs_total
journal_drained_records_total journal_drained_bytes_total
journal_replayed_records_total journal_replayed_bytes_total
journal_size_bytes journal_used_bytes journal_free_bytes
journal_pending_bytes journal_epochs_waiting journal_oldest_age_seconds
journal_spilled_pages_total journal_read_bytes_total journal_index_bytes
journal_bypassed_writes_total journal_bypassed_bytes_total
""".split()

# Samples with labels checked on their own: the histogram's buckets
# (metrics_scrape.conventions) and build_info (below).
OWN = ("subpage_flush_duration_seconds_bucket{",
       "subpage_fua_write_duration_seconds_bucket{",
       "subpage_backend_write_duration_seconds_bucket{",
       "subpage_throttle_wait_seconds_bucket{", "subpage_build_info{")

def get(how="shutdown"):
    m = scrape(msock, how)
    missing = [k for k in EXPECTED if "subpage_" + k not in m]
    assert not missing, "missing metrics: %r" % missing
    extra = [k for k in m if k[len("subpage_"):] not in EXPECTED and
             not k.startswith(OWN)]
    assert not extra, "undocumented metrics (add them to the test and " \
        "the man page): %r" % extra
    return {k[len("subpage_"):]: v for k, v in m.items()}

def check(m, want, what):
    for k, v in want.items():
        assert m[k] == v, "%s: %s is %r, expected %r" % (what, k, m[k], v)

def delta(a, b, want, what):
    for k, v in want.items():
        assert b[k] - a[k] == v, "%s: %s went from %r to %r, expected +%r" \
            % (what, k, a[k], b[k], v)

def buffers_freed(what):
    # A write-back buffer is freed by the completion of its last run,
    # just after that completion wakes the flush: allow that moment.
    end = time.monotonic() + 5
    while True:
        m = get()
        if m["writeback_buffer_bytes"] == 0:
            return m
        assert time.monotonic() < end, "%s: writeback_buffer_bytes is " \
            "%r, expected 0" % (what, m["writeback_buffer_bytes"])
        time.sleep(0.01)

# 1. Before any I/O.
m0 = get("plain")
check(m0, {
    "export_size_bytes": 64 * MiB, "cache_size_bytes": 64 * MiB,
    "page_size_bytes": 64 * KiB, "sector_size_bytes": 512,
    "pages_capacity": 1024, "pages_resident": 0, "pages_dirty": 0,
    "cached_bytes": 0, "dirty_bytes": 0, "writeback_bytes": 0,
    "writeback_buffer_bytes": 0,
    "hit_bytes_total": 0,
    "miss_bytes_total": 0, "backend_reads_total": 0,
    "client_reads_total": 0, "client_read_bytes_total": 0,
    "client_writes_total": 0, "client_written_bytes_total": 0,
    "client_zeroes_total": 0, "client_zero_bytes_total": 0,
    "client_trims_total": 0, "client_trim_bytes_total": 0,
    "backend_read_bytes_total": 0, "backend_writes_total": 0,
    "backend_written_bytes_total": 0, "backend_flushes_total": 0,
    "writeback_runs_total": 0, "writeback_errors_total": 0,
    "writeback_runs_in_flight": 0, "evictions_total": 0,
    "throttled_writers_total": 0, "flushes_total": 0,
    "flush_errors_total": 0,
    "flush_duration_seconds_sum": 0, "flush_duration_seconds_count": 0,
    'flush_duration_seconds_bucket{le="+Inf"}': 0,
    "fua_write_duration_seconds_count": 0,
    "backend_write_duration_seconds_count": 0,
    "throttle_wait_seconds_count": 0,
    'waiting_threads{on="flush"}': 0, 'waiting_threads{on="throttle"}': 0,
    'waiting_threads{on="page"}': 0, 'waiting_threads{on="idle"}': 0,
}, "before I/O")
assert m0["metadata_bytes"] > 0, "metadata_bytes is 0"
# Every kind of client gets the same numbers while nothing happens.
assert get("shutdown") == m0, "shut-down client got other numbers"
assert get("http") == m0, "HTTP client got other numbers"

# build_info: version, mode= and the backend (file=).
status, hdr, body = http_request(msock, b"GET /metrics HTTP/1.1\r\n"
                                 b"Host: x\r\n\r\n")
assert status == "HTTP/1.0 200 OK", status
fams = families(body.decode())
info = fams["subpage_build_info"].samples[0].labels
assert info["mode"] == "writeback" and info["backend"] == "file", info
assert re.fullmatch(r"\d+\.\d+\.\d+.*", info["version"]), info
print("ok: build_info %r" % info)
# 16 buckets of flush latency and +Inf, 100 us to 10 s.
les = [s.labels["le"] for s in
       fams["subpage_flush_duration_seconds"].samples
       if s.name.endswith("_bucket")]
assert les[0] == "0.0001" and les[-2] == "10" and les[-1] == "+Inf" and \
    len(les) == 17, les

# HEAD: the same status and headers, Content-Length that of GET's body,
# no body.
status, head_hdr, head_body = http_request(
    msock, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
assert status == "HTTP/1.0 200 OK", status
assert head_body == b"", "HEAD got a body: %r" % head_body[:80]
assert head_hdr["content-length"] == str(len(body)), (head_hdr, len(body))
assert head_hdr["content-type"] == hdr["content-type"], head_hdr
# Other paths: 404, other methods: 405; no metrics either way.
for req, want in ((b"GET / HTTP/1.0\r\n\r\n", "404 Not Found"),
                  (b"GET /metricsx HTTP/1.0\r\n\r\n", "404 Not Found"),
                  (b"HEAD /foo HTTP/1.0\r\n\r\n", "404 Not Found"),
                  (b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
                   "405 Method Not Allowed")):
    status, rh, rb = http_request(msock, req)
    assert status == "HTTP/1.0 " + want, (req, status)
    assert b"subpage_" not in rb, (req, rb[:80])
    if req.startswith(b"HEAD"):
        assert rb == b"", (req, rb)  # Content-Length: that of GET's
    else:
        assert rh["content-length"] == str(len(rb)), (req, rh)
print("ok: HEAD, 404 and 405")
if os.environ["CURL"]:
    out = subprocess.run([os.environ["CURL"], "-sS", "--fail", "--max-time",
                          "10", "--unix-socket", msock,
                          "http://localhost/metrics"],
                         check=True, capture_output=True).stdout
    m = {k[len("subpage_"):]: v for k, v in parse(out.decode()).items()}
    assert m == m0, "curl got other numbers"
    # curl --head: HTTP, not an HTTP/0.9 reply; curl -f: 404 fails.
    r = subprocess.run([os.environ["CURL"], "-sS", "--head", "--max-time",
                        "10", "--unix-socket", msock,
                        "http://localhost/metrics"],
                       check=True, capture_output=True)
    assert r.stdout.startswith(b"HTTP/1.0 200 OK\r\n"), r.stdout[:80]
    r = subprocess.run([os.environ["CURL"], "-sS", "--fail", "--max-time",
                        "10", "--unix-socket", msock,
                        "http://localhost/other"], capture_output=True)
    assert r.returncode == 22, r
    print("ok: curl --unix-socket")

# 2. Writes: 20 KiB of whole sectors at 1 MiB + 4 KiB (one page).
N = 20 * KiB
data = bytes((i * 7 + 1) & 0xFF for i in range(N))
h.pwrite(data[:12 * KiB], 1 * MiB + 4 * KiB)
h.pwrite(data[12 * KiB:], 1 * MiB + 16 * KiB)
m1 = get()
check(m1, {"client_writes_total": 2, "client_written_bytes_total": N,
           "client_reads_total": 0,
           "dirty_bytes": N, "cached_bytes": N, "pages_resident": 1,
           "pages_dirty": 1, "writeback_bytes": 0,
           "writeback_buffer_bytes": 0, "backend_written_bytes_total": 0,
           "backend_writes_total": 0, "miss_bytes_total": 0,
           "backend_read_bytes_total": 0, "flushes_total": 0},
      "after writing 20 KiB")
with open(os.environ["IMG"], "rb") as f:
    assert os.pread(f.fileno(), N, 1 * MiB + 4 * KiB) != data, \
        "written back before the flush: the test proves nothing"

# A 64 KiB read of data that is not cached: 128 missed sectors, read
# from the image; then the same read again and a read of the written
# data: hits only.
M = 64 * KiB
assert h.pread(M, 8 * MiB) == bytes(M)
m2 = get()
delta(m1, m2, {"client_reads_total": 1, "client_read_bytes_total": M,
               "miss_bytes_total": M,
               "backend_read_bytes_total": M, "hit_bytes_total": 0,
               "cached_bytes": M, "pages_resident": 1,
               "backend_written_bytes_total": 0}, "after a 64 KiB miss")
assert m2["backend_reads_total"] > m1["backend_reads_total"]
assert h.pread(M, 8 * MiB) == bytes(M)
assert h.pread(N, 1 * MiB + 4 * KiB) == data
m3 = get()
delta(m2, m3, {"client_reads_total": 2, "client_read_bytes_total": M + N,
               "hit_bytes_total": M + N,
               "miss_bytes_total": 0, "backend_reads_total": 0,
               "backend_read_bytes_total": 0}, "after cached reads")
check(m3, {"dirty_bytes": N, "pages_resident": 2, "pages_dirty": 1,
           "writeback_buffer_bytes": 0}, "after cached reads")

# One flush.
h.flush()
m4 = get("http")
check(m4, {"dirty_bytes": 0, "writeback_bytes": 0, "pages_dirty": 0,
           "writeback_runs_in_flight": 0, "flush_errors_total": 0,
           "writeback_errors_total": 0, "cached_bytes": M + N,
           "pages_resident": 2}, "after the flush")
buffers_freed("after the flush")
# Write amplification of this flush: exactly 1 (only dirty sectors).
assert m4["backend_written_bytes_total"] == m4["client_written_bytes_total"]
delta(m3, m4, {"flushes_total": 1, "flush_duration_seconds_count": 1,
               'flush_duration_seconds_bucket{le="+Inf"}': 1,
               "backend_written_bytes_total": N,
               "backend_flushes_total": 1}, "after the flush")
assert m4["writeback_runs_total"] >= 1, "no write-back run counted"
assert m4["backend_writes_total"] >= m4["writeback_runs_total"]
assert m4["flush_duration_seconds_sum"] > 0, "flush took no time"
# Every write-back run is one backend write observation.
assert m4["backend_write_duration_seconds_count"] == \
    m4["writeback_runs_total"], m4
assert m4["backend_write_duration_seconds_sum"] > 0, "runs took no time"
assert m4["fua_write_duration_seconds_count"] == 0, m4

# Dirty pages count pages, not bytes: 1 KiB across a page boundary and
# one sector elsewhere are 1.5 KiB in three dirty pages.
h.pwrite(b"\x5a" * KiB, 16 * MiB + 64 * KiB - 512)
h.pwrite(b"\xa5" * 512, 20 * MiB)
m5 = get()
check(m5, {"dirty_bytes": 3 * 512, "pages_dirty": 3, "pages_resident": 5,
           "writeback_bytes": 0, "writeback_buffer_bytes": 0},
      "after writing 3 sectors in 3 pages")
delta(m4, m5, {"backend_written_bytes_total": 0}, "after writing 3 sectors")
h.flush()
m4 = get()
check(m4, {"dirty_bytes": 0, "pages_dirty": 0, "pages_resident": 5,
           "writeback_runs_in_flight": 0}, "after the second flush")
delta(m5, m4, {"flushes_total": 1, "backend_written_bytes_total": 3 * 512},
      "after the second flush")
m4 = buffers_freed("after the second flush")

# One zero and one trim, counted as what the client asked for.
h.zero(4 * KiB, 2 * MiB)
h.trim(64 * KiB, 4 * MiB)
m4z = get()
delta(m4, m4z, {"client_zeroes_total": 1, "client_zero_bytes_total": 4 * KiB,
                "client_trims_total": 1, "client_trim_bytes_total": 64 * KiB,
                "client_writes_total": 0}, "after a zero and a trim")
m4 = m4z
assert m4["flush_duration_seconds_count"] == m4["flushes_total"]

# One FUA write: one FUA observation; its data written back at once, in
# runs that are backend write observations.
h.pwrite(b"\x3c" * (4 * KiB), 24 * MiB, nbd.CMD_FLAG_FUA)
m4f = get()
delta(m4, m4f, {"fua_write_duration_seconds_count": 1,
                'fua_write_duration_seconds_bucket{le="+Inf"}': 1,
                "backend_written_bytes_total": 4 * KiB,
                "throttle_wait_seconds_count": 0}, "after a FUA write")
assert m4f["fua_write_duration_seconds_sum"] > 0, "FUA write took no time"
assert m4f["backend_write_duration_seconds_count"] == \
    m4f["writeback_runs_total"], m4f
with open(os.environ["IMG"], "rb") as f:
    assert os.pread(f.fileno(), N, 1 * MiB + 4 * KiB) == data, \
        "flushed data not in the image"
print("ok: numbers match the I/O")
EOF

# ---- 3: scrapes while I/O runs -----------------------------------------------
# The loader writes, reads and flushes for at most 8 s or until the stop
# file appears; then it leaves 8 MiB dirty, which is over the background
# threshold.
stop=$tmpdir/stop-loader
# A simple command run in the background is exec'd: $! is nbdsh itself.
PATH=/usr/bin:$PATH nbdsh -u "$URI" -c "
import os, random, time
rng = random.Random(4)
end = time.monotonic() + 8
n = 0
while time.monotonic() < end and not os.path.exists('$stop'):
    off = rng.randrange(0, 60 << 20)
    h.pwrite(rng.randbytes(rng.choice([512, 4096, 65536, 300000])), off)
    h.pread(rng.choice([4096, 65536, 1 << 20]), rng.randrange(0, 60 << 20))
    n += 1
    if n % 10 == 0:
        h.flush()
# 8 MiB dirty, over dirty-background-ratio (10% of 64M): the server
# writes back in the background (and logs it).
for i in range(8):
    h.pwrite(b'\xab' * (1 << 20), (40 + i) << 20)
print('loader: %d rounds' % n)
" &
loader=$!
cleanup_fn stop_loader "$loader"
stop_loader ()
{
  touch "$stop"
  if _pid_running "$1"; then
    _wait_pid "$1" 20 || kill "$1"
  fi
  wait "$1" 2>/dev/null || :
}

/usr/bin/python3 - "$loader" <<'EOF'
import os, socket, sys, time
from metrics_scrape import scrape

msock = os.environ["MSOCK"]
loader = int(sys.argv[1])

def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False

# Clients that never read, and one stuck in the middle of "GET ": the
# server must keep answering others.
idle = []
for i in range(4):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(msock)
    idle.append(s)
stuck = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
stuck.connect(msock)
stuck.sendall(b"GE")
idle.append(stuck)

scrapes, writes, slowest, bufmax = 0, set(), 0.0, 0
deadline = time.monotonic() + 60
while alive(loader) and time.monotonic() < deadline:
    t = time.monotonic()
    m = scrape(msock, ("plain", "shutdown", "http")[scrapes % 3])
    slowest = max(slowest, time.monotonic() - t)
    assert m["subpage_dirty_bytes"] <= m["subpage_cache_size_bytes"]
    assert m["subpage_cached_bytes"] <= m["subpage_cache_size_bytes"]
    assert m["subpage_pages_dirty"] <= m["subpage_pages_capacity"]
    bufmax = max(bufmax, m["subpage_writeback_buffer_bytes"])
    writes.add(m["subpage_backend_written_bytes_total"])
    scrapes += 1
    if scrapes == 5:
        # More clients at once than the server serves (16): some are
        # closed at once, the rest answered; none hangs.
        burst = []
        for i in range(24):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(msock)    # blocking: waits while the backlog is full
            s.settimeout(10)
            s.shutdown(socket.SHUT_WR)
            burst.append(s)
        answered = 0
        for s in burst:
            data = b""
            while True:
                b = s.recv(65536)
                if not b:
                    break
                data += b
            s.close()
            answered += data.startswith(b"# HELP")
        assert answered >= 1, "no client of the burst was answered"
        print("burst: %d of 24 answered" % answered)
    time.sleep(0.05)

assert scrapes >= 10, "only %d scrapes while the loader ran" % scrapes
assert len(writes) >= 2, "backend_written_bytes_total never moved"
for s in idle:
    s.close()
print("ok: %d scrapes during I/O, slowest %.3f s, up to %d bytes of "
      "write-back buffers" % (scrapes, slowest, bufmax))
EOF

status=0
wait "$loader" || status=$?
if [ "$status" -ne 0 ]; then
  echo "$0: the background nbdsh loop failed (status $status)" >&2
  exit 1
fi

# The idle clients are closed by now; scrapes still work, and show
# background write-back bringing dirty data under the threshold (which
# counts dirty pages), then stopping: no run in flight, no write-back
# buffer left, and the dirty gauges agreeing with each other.
/usr/bin/python3 -c '
import os, time
from metrics_scrape import scrape
end = time.monotonic() + 60
while True:
    m = {k[len("subpage_"):]: v
         for k, v in scrape(os.environ["MSOCK"], "http").items()}
    assert m["flushes_total"] >= 1
    limit = m["cache_size_bytes"] // 10
    if m["dirty_bytes"] + m["writeback_bytes"] <= limit and \
       m["pages_dirty"] * m["page_size_bytes"] <= limit and \
       m["writeback_runs_in_flight"] == 0 and \
       m["writeback_buffer_bytes"] == 0:
        break
    assert time.monotonic() < end, "background write-back did not run " \
        "or did not finish: %r" % m
    time.sleep(0.1)
assert m["writeback_bytes"] == 0, m
assert m["pages_dirty"] <= m["pages_resident"], m
assert m["dirty_bytes"] <= m["pages_dirty"] * m["page_size_bytes"], m
assert (m["pages_dirty"] == 0) == (m["dirty_bytes"] == 0), m
print("ok: background write-back: %d bytes dirty in %d pages" %
      (m["dirty_bytes"], m["pages_dirty"]))
'

# ---- 4: debug flags, socket removal, bad paths -----------------------------
stop_nbdkit "$pid"
if [ -e "$msock" ]; then
  echo "$0: $msock still exists after nbdkit exited" >&2
  exit 1
fi
for want in "metrics: serving on $msock" "metrics: answering a plain client" \
            "metrics: answering an HTTP client" \
            "writeback: tick: " \
            "writeback: kick: over the background threshold" \
            "writeback: collect background: "; do
  if ! grep -qF -- "$want" "$log"; then
    echo "$0: '$want' not in the debug log" >&2
    exit 1
  fi
done

err=$tmpdir/stderr
for bad in "$tmpdir/no-such-dir/m.sock" "$img" \
           "$tmpdir/$(printf 'x%.0s' {1..120}).sock"; do
  status=0
  nbdkit_cmd -U - "$PLUGIN" file="$img" metrics-socket="$bad" \
             --run 'exit 0' 2>"$err" || status=$?
  if [ "$status" -eq 0 ] || ! grep -qF "metrics-socket=" "$err"; then
    echo "$0: metrics-socket=$bad: status $status, stderr:" >&2
    cat "$err" >&2
    exit 1
  fi
  echo "ok: rejected: $(grep -F metrics-socket= "$err")"
done
echo "ok"
