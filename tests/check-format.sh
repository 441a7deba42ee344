#!/usr/bin/env bash
# The C sources of cache/, plugin/, server/, tools/ and common/ follow the
# committed .clang-format: clang-format reports every line it would
# change, and any such line fails the test.  To fix: clang-format -i on
# the files it names.
set -euo pipefail
cd "${SRCDIR:-$(dirname "$0")/..}"

if ! command -v clang-format >/dev/null; then
  echo "$0: clang-format is not installed (scripts/deps installs it)" >&2
  exit 1
fi
mapfile -t files < <(ls cache/*.[ch] plugin/*.[ch] server/*.[ch] tools/*.c common/*.h)
clang-format --dry-run --Werror "${files[@]}"
echo "ok: ${#files[@]} files follow .clang-format"
