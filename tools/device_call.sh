#!/usr/bin/env bash
# One device call: run a shell snippet of gpu_sweep.sh phases under one time limit, then pack
# everything under $OUT into $OUT/run.tgz (the device returns at most 8 files), also when the
# snippet is cut short. Stop work by time limits (timeout), never by pkill -f: a pattern that
# matches the call's own command line kills the packing step too (it did once).
# Usage: OUT=... bash tools/device_call.sh 'CUDA_VISIBLE_DEVICES=3 OUT=$OUT/g3 bash tools/gpu_sweep.sh large & OUT=$OUT/a bash tools/gpu_sweep.sh bench; wait'
set -u
cd "$(dirname "$0")/.."
# The device's copy of the tree may carry stale git metadata (the working files are current, the
# commits are not), so each call records what ran by content in $OUT/tree.txt; `--tree` prints the
# same hash for this checkout, to match a record with a commit.
# (neither git nor the locale's collation: a first version hashed git's file list in locale order
# and the device gave another hash for what should have been the same files; cause not confirmed)
tree_hash() {
  find optimized harness reference -name '*.py' -not -path '*/__pycache__/*' | LC_ALL=C sort | xargs sha1sum \
    | sha1sum | cut -c1-12
}
if [ "${1:-}" = "--tree" ]; then tree_hash; exit 0; fi
: "${OUT:?set OUT}"
export OUT
pack() {
  cd "$OUT" || return
  tar czf /tmp/run.tgz --exclude run.tgz . 2>/dev/null && find . -mindepth 1 ! -name run.tgz -delete && mv /tmp/run.tgz .
  ls -la "$OUT"
}
trap pack EXIT
echo "tree $(tree_hash) (sha1 of the .py files of optimized/, harness/, reference/ as run)" | tee "$OUT/tree.txt"
timeout --kill-after=10 "${CALL_LIMIT:-560}" bash -c "$1"
echo "snippet exit status $?"
