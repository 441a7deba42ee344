#!/usr/bin/env bash
# backend-timeout= under uri=: NBD cannot cancel a request, so a write
# the remote received and answered late may still be carried out after
# its timeout.  Nothing newer may reach its sectors before that.
#
# Deterministic interleaving (no sleeps as synchronisation):
#  1. the client writes A (0xAA) at offset 0 and flushes; write-back of A
#     reaches the remote, whose pwrite blocks on a FIFO the test holds
#     (the test waits for the marker file the remote's pwrite creates);
#  2. backend-timeout=1 passes: the flush fails with EIO, A stays dirty;
#  3. the client writes B (0xBB) over A and flushes three times: each
#     flush fails with EIO, because writing B now could put it on the
#     image before the remote carries out A; the image does not hold B;
#  4. the test opens the FIFO: the remote's old pwrite of A completes
#     (marker file) and its late reply comes;
#  5. the client flushes until a flush succeeds (within 30 s): the
#     image holds B, written after A; subpage logged the outage once
#     and its end;
#  6. subpage is stopped cleanly and a new instance reads offset 0: B.
# With 4 connections (A and B on different ones) and with 1; and with
# A a FUA write (the remote cannot FUA: subpage writes A synchronously,
# then flushes), whose own reply is the EIO of step 2, and B three FUA
# writes that each fail with EIO in step 3.

source "$(dirname "$0")/../functions.sh"
set -euo pipefail

requires_plugin
requires_nbdsh
requires timeout
make_tmpdir

img=$tmpdir/remote.img
bsock=$tmpdir/backend.sock
bpid=$tmpdir/backend.pid
fifo=$tmpdir/hold.fifo
# Its first pwrite blocks on the FIFO (marks held, then late-done).
start_held_remote "$bpid" "$bsock" "$img" "$fifo"
export BURI=$(nbd_uri "$bsock") IMG=$img TMP=$tmpdir FIFO=$fifo

run_case ()
{
  local conns=$1 mode=${2:-flush} sock=$tmpdir/nbd$1.sock pid=$tmpdir/nbdkit$1.pid
  local log=$tmpdir/subpage$1.log status=0
  rm -rf "$tmpdir/held" "$tmpdir/late-done"
  dd if=/dev/zero of="$img" bs=4096 count=1 conv=notrunc status=none
  start_nbdkit -P "$pid" -U "$sock" "$PLUGIN" uri="$BURI" backend-timeout=1 \
               connections="$conns" cache-size=16M dirty-expire-ms=3600000 2>"$log"
  export URI=$(nbd_uri "$sock") MODE=$mode
  timeout 120 /usr/bin/env PATH=/usr/bin:$PATH nbdsh -n -c - <<'PY' || status=$?
import os, time
tmp = os.environ["TMP"]
A, B = b"\xaa" * 4096, b"\xbb" * 4096
def image0():
    with open(os.environ["IMG"], "rb") as f:
        return f.read(4096)
def wait_for(path, what):
    deadline = time.monotonic() + 30
    while not os.path.exists(path):
        assert time.monotonic() < deadline, "timed out waiting for " + what
        time.sleep(0.05)

h = nbd.NBD()
h.connect_uri(os.environ["URI"])
try:
    if os.environ["MODE"] == "fua":
        h.pwrite(A, 0, nbd.CMD_FLAG_FUA)
        raise AssertionError("the FUA write of A succeeded while the remote holds it")
    h.pwrite(A, 0)
    h.flush()
    raise AssertionError("flush of A succeeded while the remote holds it")
except nbd.Error as e:
    assert e.errno == "EIO", e.errno
    print("ok: step 2: %s of A failed with EIO (remote holds A's pwrite)" % os.environ["MODE"])
assert os.path.exists(tmp + "/held"), "the remote never got A's pwrite"

fua = os.environ["MODE"] == "fua"
if not fua:
    h.pwrite(B, 0)
for i in range(3):
    try:
        if fua:
            h.pwrite(B, 0, nbd.CMD_FLAG_FUA)
            raise AssertionError("a FUA write of B succeeded while the remote "
                                 "still holds the older write of A")
        h.flush()
        raise AssertionError("a flush covering B succeeded while the remote "
                             "still holds the older write of A")
    except nbd.Error as e:
        assert e.errno == "EIO", e.errno
assert not os.path.exists(tmp + "/late-done")
assert image0() != B, "B reached the image while A's write was pending"
print("ok: step 3: three %s covering B failed with EIO; B is not on the image"
      % ("FUA writes" if fua else "flushes"))

with open(os.environ["FIFO"], "w") as f:
    f.write("go\n")
wait_for(tmp + "/late-done", "the remote's late pwrite of A")
print("ok: step 4: the remote carried out the old pwrite of A")
deadline = time.monotonic() + 30
fails = 0
while True:
    try:
        h.flush(); break
    except nbd.Error as e:
        assert e.errno == "EIO", e.errno
        fails += 1
        assert time.monotonic() < deadline, "no flush of B succeeded"
        time.sleep(0.2)
print("ok: step 5: a flush covering B succeeded (after %d EIO)" % fails)
assert image0() == B, "image does not hold B right after the flush"
assert h.pread(4096, 0) == B
print("ok: step 5: the image holds B")
h.shutdown()
PY
  check_client "$status"
  local n
  n=$(grep -c 'got no answer within backend-timeout=1' "$log" || true)
  if [ "$n" -ne 1 ]; then
    echo "FAIL: connections=$conns ($mode): the timeout was logged $n times, expected once" >&2
    cat "$log" >&2
    return 1
  fi
  if ! grep -q 'the remote answers again' "$log"; then
    echo "FAIL: connections=$conns ($mode): the end of the outage was not logged" >&2
    cat "$log" >&2
    return 1
  fi
  stop_nbdkit_ok "$pid" 60
  # A fresh instance: what the client now reads at offset 0.
  start_nbdkit -P "$pid" -U "$sock" "$PLUGIN" uri="$BURI" connections="$conns" 2>>"$log"
  got=$(timeout 60 /usr/bin/env PATH=/usr/bin:$PATH nbdsh -u "$(nbd_uri "$sock")" \
          -c 'print(h.pread(4096, 0)[:1].hex())')
  stop_nbdkit_ok "$pid" 60
  echo "connections=$conns ($mode): a new subpage reads 0x$got at offset 0 (flushed: 0xbb)"
  if [ "$got" != bb ]; then
    echo "FAIL: connections=$conns ($mode): a successful flush covered B, yet the" \
         "remote's late write of A replaced it" >&2
    cat "$log" >&2
    return 1
  fi
}

rc=0
run_case 4 || rc=1
run_case 1 || rc=1
run_case 4 fua || rc=1
exit $rc
