#!/usr/bin/env bash
# uri= opens one connection to a remote that does not advertise
# multi-conn, whether or not the remote can flush (issue 13: a remote
# with neither flush nor multi-conn got connections=N of them; the NBD
# spec says a client SHOULD NOT multiplex its commands over several
# connections to such a server).  test-nbd-backend-rw.sh covers a
# remote that can flush but lacks multi-conn.
#
# The remote is nbdkit's eval plugin over a file, which advertises
# flush and multi-conn only when told to:
#  1. neither flush nor multi-conn, connections=4: the remote sees one
#     connection, and writes, a flush (which then only writes back)
#     and reads still work;
#  2. multi-conn without flush, connections=4: four connections (the
#     count the test reads from the remote's log is the real one).

source "$(dirname "$0")/../functions.sh"
set -euo pipefail

requires_plugin
requires_nbdsh
requires dd
make_tmpdir

bimg=$tmpdir/remote.img
bsock=$tmpdir/backend.sock
bpid=$tmpdir/backend.pid
blog=$tmpdir/backend.log
sock=$tmpdir/nbd.sock
pid=$tmpdir/nbdkit.pid
export BIMG=$bimg URI=$(nbd_uri "$sock")

# run_case MULTI_CONN(0|1) WANT_CONNECTIONS
run_case ()
{
    local mc=$1 want=$2 nconn
    local mc_exit=3                     # eval: exit 3 is "false"
    [ "$mc" -eq 1 ] && mc_exit=0

    rm -f "$blog"
    start_file_remote "$bpid" "$bsock" "$bimg" --filter=log -- \
        logfile="$blog" can_write="exit 0" can_flush="exit 3" \
        can_multi_conn="exit $mc_exit"
    start_nbdkit -P "$pid" -U "$sock" "$PLUGIN" uri="$(nbd_uri "$bsock")" \
                 connections=4 cache-size=1M page-size=64K \
                 dirty-expire-ms=3600000

    MC=$mc nbdsh_py -u "$URI" -c - <<'EOF'
import os, random

rng = random.Random(int(os.environ["MC"]))
with open(os.environ["BIMG"], "rb") as f:
    model = bytearray(f.read())
assert h.get_size() == len(model)
assert h.can_multi_conn()       # subpage's one cache is shared anyway
for i in range(60):
    off = rng.randrange(0, len(model) - 70000)
    data = rng.randbytes(rng.randint(1, 70000))
    h.pwrite(data, off)
    model[off:off + len(data)] = data
# The remote cannot flush: a flush writes everything back.
h.flush()
with open(os.environ["BIMG"], "rb") as f:
    assert f.read() == model, "remote differs after flush"
assert h.pread(len(model), 0) == model
h.shutdown()
print("ok: writes, flush and reads with multi-conn=%s on the remote"
      % os.environ["MC"])
EOF
    stop_nbdkit_ok "$pid" 60
    stop_nbdkit_ok "$bpid" 60

    grep -q ' flush=0 ' "$blog" || {
        echo "FAIL: the remote advertised flush" >&2; exit 1; }
    nconn=$(grep -c ' Connect ' "$blog" || :)
    if [ "$nconn" -ne "$want" ]; then
        echo "FAIL: multi-conn=$mc, no flush, connections=4: the remote" \
             "saw $nconn connections from subpage, expected $want" >&2
        exit 1
    fi
    echo "ok: multi-conn=$mc, no flush: $nconn connection(s)"
}

# ---- 1. neither flush nor multi-conn: one connection --------------------
run_case 0 1

# ---- 2. multi-conn without flush: connections=4 -------------------------
run_case 1 4

echo ok
