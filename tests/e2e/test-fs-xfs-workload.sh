#!/usr/bin/env bash
# xfs under a file-system workload through a small cache: see
# fs-workload.sh (shared with the other test-fs-*-workload.sh).
source "$(dirname "$0")/../functions.sh"
FS=xfs
source "$(dirname "$0")/fs-workload.sh"
