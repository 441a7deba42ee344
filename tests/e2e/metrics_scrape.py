# tests/e2e/metrics_scrape.py: read and check subpage's metrics endpoint
# (metrics-socket=); imported by tests/e2e/test-metrics.sh.
#
# scrape(path, how) connects to the unix socket, reads the whole answer
# and returns parse(text): {"name" or 'name{labels}': float}.  how:
#   "plain"     connect and read (the server waits a moment for an HTTP
#               request, then sends the text);
#   "shutdown"  connect, shut down the writing side, read;
#   "http"      send an HTTP/1.0 GET; the answer must be a 200 with the
#               exposition format's Content-Type and the body's
#               Content-Length.
# parse() checks every line against the text exposition format 0.0.4
# and raises AssertionError on anything that a Prometheus server would
# reject; then it parses the text again with Prometheus' own parser
# (prometheus_client.parser.text_string_to_metric_families, Debian's
# python3-prometheus-client) and checks the conventions on its families
# (conventions()): counters end in _total, names carry their unit,
# histograms have cumulative buckets up to +Inf = _count, build_info.
# families(text) returns that parser's families by name.
# http_request(path, request) sends REQUEST and returns (status line,
# headers, body).

import math
import re
import socket

from prometheus_client.parser import text_string_to_metric_families

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r"[a-zA-Z_][a-zA-Z0-9_]*"
LABEL_VALUE = r'"(?:[^"\\\n]|\\[\\"n])*"'
LABELS = r"\{(?:%s=%s(?:,%s=%s)*,?)?\}" % (LABEL, LABEL_VALUE,
                                            LABEL, LABEL_VALUE)
FLOAT = r"[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|Inf|NaN)"
SAMPLE_RE = re.compile(r"^(%s)(%s)? (%s)(?: -?\d+)?$" % (NAME, LABELS, FLOAT))
HELP_RE = re.compile(r"^# HELP (%s) ((?:[^\\\n]|\\[\\n])*)$" % NAME)
TYPE_RE = re.compile(r"^# TYPE (%s) (counter|gauge|histogram|summary|untyped)$"
                     % NAME)

HTTP_HEAD = b"HTTP/1.0 200 OK\r\n"
CONTENT_TYPE = "text/plain; version=0.0.4"

# Gauges and counters that count things other than bytes and seconds
# (pages, threads, runs, requests, events): the thing is in the name.
# Anything else ends in its unit: _bytes or _seconds (before _total).
COUNTS = """
pages_capacity pages_resident pages_dirty waiting_threads
writeback_runs_in_flight client_reads client_writes client_zeroes
client_trims backend_reads backend_writes backend_flushes writeback_runs
writeback_errors evictions throttled_writers flushes flush_errors
writeback_past_end_runs image_size_changes
journal_records journal_syncs journal_drained_records
journal_replayed_records journal_epochs_waiting journal_spilled_pages
journal_bypassed_writes
""".split()
# Names of earlier versions, renamed (the man page says so).
GONE = ["subpage_hits_total", "subpage_misses_total",
        "subpage_flush_seconds_total"]


def families(text):
    return {f.name: f for f in text_string_to_metric_families(text)}


def conventions(fams):
    """Checks the conventions on the parsed families; returns them."""
    for name, f in fams.items():
        assert name.startswith("subpage_"), "no subpage_ prefix: " + name
        base = name[len("subpage_"):]
        assert f.documentation, "no HELP: " + name
        assert f.samples, "no samples: " + name
        if f.type == "counter":
            # The parser strips _total from the family's name.
            for smp in f.samples:
                assert smp.name == name + "_total", \
                    "counter sample %s" % smp.name
        if f.type == "histogram":
            assert base.endswith("_seconds"), "histogram unit: " + name
            buckets = [(smp.labels["le"], smp.value) for smp in f.samples
                       if smp.name == name + "_bucket"]
            other = {smp.name: smp.value for smp in f.samples
                     if smp.name != name + "_bucket"}
            assert set(other) == {name + "_sum", name + "_count"}, other
            les = [float(le) for le, v in buckets]
            assert les == sorted(les) and len(set(les)) == len(les), les
            assert math.isinf(les[-1]), "no +Inf bucket: " + name
            counts = [v for le, v in buckets]
            assert counts == sorted(counts), \
                "buckets not cumulative: %s %r" % (name, counts)
            assert counts[-1] == other[name + "_count"], \
                "+Inf bucket != _count: %s" % name
            assert other[name + "_sum"] >= 0
            assert len(les) >= 10 and les[0] <= 0.001 and les[-2] >= 10, \
                "buckets too coarse for p99: %r" % les
        elif base == "build_info":
            assert f.type == "gauge", f.type
            assert len(f.samples) == 1 and f.samples[0].value == 1, f.samples
            labels = f.samples[0].labels
            assert set(labels) == {"version", "mode", "backend"}, labels
            assert labels["version"] and labels["version"] != "unknown", \
                labels
            assert labels["mode"] in ("writeback", "writethrough",
                                      "unsafe"), labels
            assert labels["backend"] in ("file", "nbd"), labels
        elif base not in COUNTS:
            assert base.endswith("_bytes") or base.endswith("_seconds"), \
                "name without its unit: %s (%s)" % (name, f.type)
        else:
            assert "bytes" not in base and "seconds" not in base, name
        assert f.type in ("counter", "gauge", "histogram"), \
            "%s: %s" % (name, f.type)
    for gone in GONE:
        assert gone not in fams and gone[:-len("_total")] not in fams, \
            "renamed metric still there: " + gone
    return fams


def parse(text):
    assert text.endswith("\n"), "text does not end with a newline"
    types, helps, values = {}, {}, {}
    done = set()           # families whose samples are over
    current = None         # family of the last sample
    for n, line in enumerate(text[:-1].split("\n"), 1):
        where = "line %d %r" % (n, line)
        if line == "":
            continue
        m = HELP_RE.match(line)
        if m:
            assert m.group(1) not in helps, "second HELP: " + where
            assert m.group(1) not in done, "HELP after samples: " + where
            helps[m.group(1)] = m.group(2)
            continue
        m = TYPE_RE.match(line)
        if m:
            name, typ = m.groups()
            assert name not in types, "second TYPE: " + where
            assert name not in done and name != current, \
                "TYPE after samples: " + where
            if typ == "counter":
                assert name.endswith("_total"), \
                    "counter not ending in _total: " + where
            types[name] = typ
            continue
        assert not line.startswith("#") or line.startswith("# "), \
            "bad comment: " + where
        if line.startswith("#"):
            continue
        m = SAMPLE_RE.match(line)
        assert m, "not a sample line: " + where
        name, labels, value = m.group(1), m.group(2) or "", m.group(3)
        family = name
        if name not in types:
            for suffix in ("_sum", "_count", "_bucket"):
                if name.endswith(suffix) and \
                   types.get(name[:-len(suffix)]) in ("summary", "histogram"):
                    family = name[:-len(suffix)]
        assert family in types, "sample without a TYPE line: " + where
        assert family in helps, "sample without a HELP line: " + where
        assert family not in done, "family not contiguous: " + where
        if current is not None and current != family:
            done.add(current)
        current = family
        key = name + labels
        assert key not in values, "duplicate sample: " + where
        v = float(value)
        if types[family] == "counter":
            assert v >= 0, "negative counter: " + where
        values[key] = v
    assert values, "no samples"
    # Prometheus' parser reads the same samples.
    fams = conventions(families(text))
    theirs = {}
    for f in fams.values():
        for smp in f.samples:
            theirs[smp.name + ("{%s}" % ",".join(
                '%s="%s"' % kv for kv in smp.labels.items())
                if smp.labels else "")] = smp.value
    assert theirs.keys() == values.keys(), \
        "the parsers disagree: %r" % (theirs.keys() ^ values.keys())
    for k, v in values.items():
        assert theirs[k] == v or (math.isnan(v) and math.isnan(theirs[k])), \
            "%s: %r and %r" % (k, v, theirs[k])
    return values


def read_all(s):
    data = b""
    while True:
        b = s.recv(65536)
        if not b:
            return data
        data += b


def http_request(path, request, timeout=10):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
        s.sendall(request)
        data = read_all(s)
    finally:
        s.close()
    head, sep, body = data.partition(b"\r\n\r\n")
    assert sep, "no end of HTTP headers: %r" % data[:200]
    lines = head.decode().split("\r\n")
    headers = {}
    for h in lines[1:]:
        k, _, v = h.partition(":")
        headers[k.strip().lower()] = v.strip()
    return lines[0], headers, body


def scrape(path, how="shutdown", timeout=10):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
        if how == "http":
            s.sendall(b"GET /metrics HTTP/1.0\r\nHost: subpage\r\n"
                      b"Accept: text/plain\r\n\r\n")
        elif how == "shutdown":
            s.shutdown(socket.SHUT_WR)
        else:
            assert how == "plain", how
        data = read_all(s)
    finally:
        s.close()
    if how == "http":
        assert data.startswith(HTTP_HEAD), "bad status line: %r" % data[:80]
        head, sep, body = data.partition(b"\r\n\r\n")
        assert sep, "no end of HTTP headers"
        headers = {}
        for h in head.decode().split("\r\n")[1:]:
            k, _, v = h.partition(":")
            headers[k.strip().lower()] = v.strip()
        assert headers.get("content-type", "").startswith(CONTENT_TYPE), \
            "bad Content-Type: %r" % headers
        assert headers.get("content-length") == str(len(body)), \
            "bad Content-Length: %r for %d bytes" % (headers, len(body))
        data = body
    else:
        assert not data.startswith(b"HTTP/"), "HTTP answer to a plain client"
    return parse(data.decode())
