# shellcheck shell=bash
# tests/ceph/ceph-functions.sh: sourced by tests/ceph/test-*.sh after
# tests/functions.sh.  A throw-away cluster per test, made by
# tests/ceph/cluster.sh (docs/ceph-tests.md).

ceph_cluster=$SRCDIR/tests/ceph/cluster.sh
# The Debian packages the Ceph tests need (also in scripts/packages-test.txt).
ceph_packages=(ceph-mon ceph-osd ceph-common python3-rbd)

_ceph_have_all ()
{
  local c
  for c in ceph-mon ceph-osd ceph ceph-authtool monmaptool rbd rados timeout; do
    command -v "$c" >/dev/null 2>&1 || return 1
  done
  /usr/bin/python3 -c 'import rados, rbd' 2>/dev/null
}

# ceph_require: the Ceph programs and python3-rbd are there, or are
# installed now with apt-get (root or sudo; installing them starts no
# daemon, see docs/ceph-tests.md).  Skips only when they are missing and
# cannot be installed.
ceph_require ()
{
  local sudo=()
  _ceph_have_all && return 0
  if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1 || ! sudo -n true 2>/dev/null; then
      _skip "Ceph packages missing (${ceph_packages[*]}) and neither root nor sudo to install them"
    fi
    sudo=(sudo -n)
  fi
  command -v apt-get >/dev/null 2>&1 ||
    _skip "Ceph packages missing (${ceph_packages[*]}) and no apt-get"
  echo "$0: installing ${ceph_packages[*]}"
  if ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
         apt-get install -y -q --no-install-recommends "${ceph_packages[@]}" &&
     ! { "${sudo[@]}" apt-get update -q &&
         "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
           apt-get install -y -q --no-install-recommends "${ceph_packages[@]}"; }
  then
    _skip "could not install ${ceph_packages[*]}"
  fi
  _ceph_have_all || { echo "$0: Ceph still incomplete after installing" >&2; exit 1; }
}

# _odirect_ok DIR: DIR's file system takes O_DIRECT writes, which
# BlueStore needs (tmpfs before Linux 6.6 does not).
_odirect_ok ()
{
  local f=$1/.odirect-probe.$$ ok=0
  dd if=/dev/zero of="$f" bs=4096 count=1 oflag=direct status=none 2>/dev/null || ok=1
  rm -f "$f"
  return "$ok"
}

# ceph_start_cluster: a fresh cluster in $ceph_dir, under $tmpdir if
# its file system takes O_DIRECT, else under /var/tmp; stopped by PID on
# exit, its logs shown first if the test failed (and by cluster.sh's
# watchdog if the test is killed before its cleanup runs).  Exports
# CEPH_CONF.
# Sets $ceph_start_seconds.
ceph_start_cluster ()
{
  local base=$tmpdir t0
  if ! _odirect_ok "$base"; then
    base=/var/tmp/subpage-$(basename "$0" .sh).$$
    cleanup_fn rm -rf --one-file-system "$base"
    mkdir "$base"
    _odirect_ok "$base" ||
      { echo "$0: neither $tmpdir nor $base take O_DIRECT (BlueStore needs it)" >&2; return 1; }
  fi
  ceph_dir=$base/ceph
  cleanup_fn _ceph_stop_cluster "$ceph_dir"
  t0=$(date +%s%N)
  CEPH_CLUSTER_OWNER=$$ "$ceph_cluster" start "$ceph_dir" >/dev/null
  ceph_start_seconds=$(( ($(date +%s%N) - t0) / 1000000 ))
  ceph_start_seconds=$(printf '%d.%03d' $((ceph_start_seconds / 1000)) $((ceph_start_seconds % 1000)))
  export CEPH_CONF=$ceph_dir/ceph.conf
}

# Cleanup: stop the daemons by PID (cluster.sh stop).  When the test
# fails ($status is _run_cleanups' exit status), show the end of the
# daemons' logs first.
_ceph_stop_cluster ()
{
  local f
  [ -d "$1" ] || return 0
  if [ "${status:-0}" -ne 0 ] && [ -d "$1/log" ]; then
    for f in "$1/log/cluster.sh.log" "$1/log/mon.a.log" "$1/log/osd.0.log"; do
      [ -f "$f" ] || continue
      echo "---- $f (last 30 lines)" >&2
      tail -n 30 "$f" >&2
    done
  fi
  "$ceph_cluster" stop "$1"
}

# ceph_elapsed T0: seconds since T0 (from `date +%s%N`), as N.NNN.
ceph_elapsed ()
{
  local ms=$(( ($(date +%s%N) - $1) / 1000000 ))
  printf '%d.%03d' $((ms / 1000)) $((ms % 1000))
}
