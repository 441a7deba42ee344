#!/usr/bin/env bash
# backend-timeout= under uri=: late commands of every kind while subpage
# runs on and when it stops (run it in the ASan build too: a late
# command's memory is freed by whichever of caller, completion and
# close comes last).
#
# The remote's pwrite, pread or extents blocks on a FIFO the test holds
# (armed per operation, first call only).  Cases, connections=1 and 4:
#  - write: a flush's write-back is held and becomes late (EIO); subpage
#    is stopped (SIGTERM) while the remote still holds it: it exits
#    cleanly within 60 s; then the remote is released;
#  - read: a read of data not cached is held and becomes late (EIO); the
#    remote is released and answers the late read after its caller left;
#    reads work again; subpage stops cleanly;
#  - extents: block status of data not cached is held and becomes late
#    (EIO); the remote is released and its extents reply comes after the
#    caller left (the callback must not touch the caller's list); block
#    status works again; subpage stops cleanly.

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
mkfifo "$fifo"
truncate -s 4M "$img"

release () { timeout 5 sh -c "echo go > '$fifo'" 2>/dev/null || :; }
hold="if [ -e $tmpdir/arm-\$1 ] && mkdir $tmpdir/held-\$1 2>/dev/null; then read x < $fifo; : > $tmpdir/done-\$1; fi"
start_remote -P "$bpid" -U "$bsock" --threads=1 eval \
  thread_model='echo parallel' \
  get_size="echo $((4 * 1024 * 1024))" \
  can_write='exit 0' can_flush='exit 0' can_multi_conn='exit 0' \
  can_extents='exit 0' can_fua='echo native' \
  flush='sync' \
  pread="$hold; env -u LD_PRELOAD dd if=$img skip=\$4 count=\$3 iflag=skip_bytes,count_bytes status=none" \
  pwrite="$hold; env -u LD_PRELOAD dd of=$img seek=\$4 oflag=seek_bytes conv=notrunc status=none" \
  extents="$hold; echo \$4 \$3 0"
cleanup_fn release
export BURI=$(nbd_uri "$bsock") TMP=$tmpdir FIFO=$fifo

run_case ()
{
  local conns=$1 op=$2 sock=$tmpdir/nbd.sock pid=$tmpdir/nbdkit.pid
  local log=$tmpdir/subpage-$1-$2.log status=0 i
  rm -rf "$tmpdir"/arm-* "$tmpdir"/held-* "$tmpdir"/done-*
  start_nbdkit -P "$pid" -U "$sock" "$PLUGIN" uri="$BURI" backend-timeout=1 \
               connections="$conns" cache-size=16M dirty-expire-ms=3600000 2>"$log"
  touch "$tmpdir/arm-$op"
  export URI=$(nbd_uri "$sock") OP=$op
  timeout 120 /usr/bin/env PATH=/usr/bin:$PATH nbdsh -n -c - <<'PY' || status=$?
import os, time
tmp, op = os.environ["TMP"], os.environ["OP"]
h = nbd.NBD()
h.add_meta_context("base:allocation")
h.connect_uri(os.environ["URI"])
def late():
    if op == "pwrite":
        h.pwrite(b"\xaa" * 4096, 0)
        h.flush()
    elif op == "pread":
        h.pread(4096, 65536)
    else:
        h.block_status(65536, 1024 * 1024, lambda *a: 0)
try:
    late()
    raise AssertionError(op + " succeeded while the remote holds it")
except nbd.Error as e:
    assert e.errno == "EIO", e.errno
assert os.path.exists(tmp + "/held-" + op), "the remote never got the " + op
assert not os.path.exists(tmp + "/done-" + op)
print("ok: %s: late, EIO" % op)
if op != "pwrite":
    with open(os.environ["FIFO"], "w") as f:
        f.write("go\n")
    deadline = time.monotonic() + 30
    while not os.path.exists(tmp + "/done-" + op):
        assert time.monotonic() < deadline, "the remote never answered"
        time.sleep(0.05)
    # The late reply reaches subpage; then it works again.
    deadline = time.monotonic() + 30
    while True:
        try:
            late(); break
        except nbd.Error as e:
            assert e.errno == "EIO", e.errno
            assert time.monotonic() < deadline, "no %s succeeded" % op
            time.sleep(0.2)
    print("ok: %s: the late reply came; %s works again" % (op, op))
h.shutdown()
PY
  check_client "$status"
  status=0
  stop_nbdkit "$pid" 60 || status=$?
  if [ "$op" = pwrite ]; then release; fi
  if [ "$status" -ne 0 ] || grep -Eq 'Assertion|AddressSanitizer|runtime error' "$log"; then
    echo "FAIL: connections=$conns $op: subpage exited with $status" >&2
    cat "$log" >&2
    return 1
  fi
  echo "ok: connections=$conns $op: subpage stopped cleanly"
}

rc=0
for conns in 1 4; do
  for op in pwrite pread extents; do
    run_case "$conns" "$op" || rc=1
  done
done
exit $rc
