#!/usr/bin/env bash
# The recording run in one device call: correctness stages in parallel (they share the GPUs
# and the 32 host cores), then the timing stages alone on the machine, then the 2-rank EP
# world. Everything is packed into $OUT/record.tgz at the end (the device returns 8 files).
set -u
cd "$(dirname "$0")/.."
export LIMIT_check=225 LIMIT_mutate=225 LIMIT_large=200 LIMIT_external=200 LIMIT_tests=225
export LIMIT_selftest=60 LIMIT_bench=170 LIMIT_epworld=55
timeout 505 bash -c '
  bash tools/gpu_sweep.sh env
  CASES=500 JOBS=14 bash tools/gpu_sweep.sh check &
  MUTANT_CASES=15 bash tools/gpu_sweep.sh mutate &
  CUDA_VISIBLE_DEVICES=1 bash tools/gpu_sweep.sh large &
  bash tools/gpu_sweep.sh external &
  TEST_WORKERS=4 bash tools/gpu_sweep.sh tests &
  wait
  bash tools/gpu_sweep.sh selftest bench epworld
'
cd "$OUT" && tar czf /tmp/record.tgz --exclude record.tgz . && find . -type f ! -name sweep.log -delete && mv /tmp/record.tgz . && ls -la
