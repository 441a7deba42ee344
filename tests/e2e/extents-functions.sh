# Shared by the extents tests (test-extents.sh, test-extents-uri.sh);
# source it after functions.sh and make_tmpdir.

export PYTHONPATH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export PYTHONDONTWRITEBYTECODE=1    # no __pycache__ in the source tree

# make_sparse_image IMG: a sparse 64 MiB IMG with random data at 1 MiB
# (64 KiB), at 10 MiB (1 MiB) and in the last 64 KiB (IMG_MAP below is
# its map).  Skips the test (77) where the file system keeps no holes.
make_sparse_image ()
{
  truncate -s 64M "$1"
  dd if=/dev/urandom of="$1" bs=64K seek=16 count=1 conv=notrunc status=none
  dd if=/dev/urandom of="$1" bs=1M seek=10 count=1 conv=notrunc status=none
  dd if=/dev/urandom of="$1" bs=64K seek=1023 count=1 conv=notrunc \
     status=none
  if ! python3 -c '
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
sys.exit(0 if os.lseek(fd, 0, os.SEEK_DATA) > 0 else 1)' "$1"; then
    echo "$0: SKIP: $(dirname "$1") keeps no holes"
    exit 77
  fi
}

# make_sparse_image's map, merged as nbdinfo prints it: offset, length,
# type.
IMG_MAP='[(0, MiB, 3), (MiB, 64 << 10, 0),
          (MiB + (64 << 10), 9 * MiB - (64 << 10), 3),
          (10 * MiB, MiB, 0), (11 * MiB, 53 * MiB - (64 << 10), 3),
          (64 * MiB - (64 << 10), 64 << 10, 0)]'

# check_map FILE WANT: the map nbdinfo printed into FILE is WANT, a
# Python list of (offset, length, type) that may use MiB.
check_map ()
{
  python3 - "$1" "$2" <<'PYEOF'
import sys
from blockstatus import read_map
MiB = 1 << 20
want = eval(sys.argv[2])
got = read_map(sys.argv[1])
assert got == want, (got, want)
print("map ok")
PYEOF
}
