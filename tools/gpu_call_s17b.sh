#!/usr/bin/env bash
# Session 17, call 2: data for two CPU-side changes before they are made:
#   1. where the check's first seconds go on a GPU host (tools/child_start_times.py: the parent's
#      imports and CUDA start, 16 children made ready by "spawn" against a forkserver that has
#      imported torch);
#   2. the norm of the fp8 GEMM's error against the precision's own, ||c - r|| / ||l - r||, for
#      ours and for the kernel that rounds its running sum to bfloat16 after every K block
#      (tools/fp8_accumulation_errors.py; call 1's default mutate let that mutant survive).
set -u
cd "$(dirname "$0")/.."
P=${1:-2}
source tools/gpu_call_lib.sh
timeout 90 python tools/child_start_times.py --children 16 > $OUT/${P}_start.log 2>&1
echo "start rc=$? $(since)"; cat $OUT/${P}_start.log
timeout 240 python tools/fp8_accumulation_errors.py --cases ${CASES:-60} --json $OUT/${P}_fp8_acc.json > $OUT/${P}_fp8_acc.log 2>&1
echo "fp8 rc=$? $(since)"
tail -30 $OUT/${P}_fp8_acc.log | grep -v '^{"dtype"' | cut -c1-400
exit 0
