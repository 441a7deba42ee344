# tests/e2e/metrics_scrape.py: read and check subpage's metrics endpoint
# (metrics-socket=); imported by tests/e2e/test-metrics.sh.
#
# scrape(path, how) connects to the unix socket, reads the whole answer
# and returns parse(text): {"name" or 'name{labels}': float}.  how:
#   "plain"     connect and read (the server waits a moment for an HTTP
#               request, then sends the text);
#   "shutdown"  connect, shut down the writing side, read;
#   "http"      send an HTTP/1.0 GET; the answer must be a 200 with the
#               exposition format's Content-Type.
# parse() checks every line against the text exposition format 0.0.4
# and raises AssertionError on anything that a Prometheus server would
# reject, or that breaks its conventions (counters end in _total).

import re
import socket

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
    return values


def read_all(s):
    data = b""
    while True:
        b = s.recv(65536)
        if not b:
            return data
        data += b


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
        data = body
    else:
        assert not data.startswith(b"HTTP/"), "HTTP answer to a plain client"
    return parse(data.decode())
