#!/bin/sh
# Runs the libFuzzer target for a bounded time (see docs/fuzzing.md).
#   run-fuzz.sh FUZZER SEED-CORPUS WORKDIR
# New inputs go to WORKDIR/corpus (never into the seed corpus in the
# source tree) and a crash input to WORKDIR/crash-*.  Exit status is the
# fuzzer's: 0 when it found nothing.  FUZZ_SECONDS sets the time
# (default 60); FUZZ_ARGS adds libFuzzer flags (e.g. -jobs=2).
set -eu
fuzzer=$1 seeds=$2 work=$3

rm -rf "$work"
mkdir -p "$work/corpus"
# UBSan must stop at the first report, or libFuzzer would not see it.
UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
export UBSAN_OPTIONS
echo "fuzz-cache: ${FUZZ_SECONDS:-60} s from $seeds; crash inputs go to $work/"
# libFuzzer's own exit status for a crash is 77, which meson would count
# as a skip: crashes and timeouts exit 1.
# shellcheck disable=SC2086
exec "$fuzzer" -max_total_time="${FUZZ_SECONDS:-60}" -timeout=20 \
  -error_exitcode=1 -timeout_exitcode=1 -max_len=4096 -print_final_stats=1 \
  -artifact_prefix="$work/" ${FUZZ_ARGS:-} "$work/corpus" "$seeds"
