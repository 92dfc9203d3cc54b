#!/usr/bin/env bash
# Session 17, call 3 (after call 1): the children fork from a forkserver that has imported torch,
# and fp8 products get the tolerance's statistical test (the error's norm against the precision's own).
#   1. the README's check from a cold Triton cache (call 1: 51.1 s with spawned children);
#   2. tools/fp8_accumulation_errors.py: ||c - r|| / ||l - r|| of ours and of the kernel that
#      rounds its running sum to bfloat16 after every K block;
#   3. mutate --profile default (call 1: gemm_fp8_tensor_partial_sums_bf16 survived);
#   4. 2,000 cases per row of grouped_gemm fp8_tensor and fp8_block, ours and the reference,
#      under the new test, until the deadline.
set -u
cd "$(dirname "$0")/.."
P=${1:-3}
source tools/gpu_call_lib.sh
cold_check 100
grep -E "cases in" $OUT/${P}_check.log; grep -E "FAILED|CRASHED" $OUT/${P}_check.log | head -5 | cut -c1-300
grep -E "part 1/|\[ +[0-9]\.[0-9]s\]|\[ +1[0-9]\.[0-9]s\]" $OUT/${P}_check.log | head -4 | cut -c1-120
timeout 100 python tools/fp8_accumulation_errors.py --cases ${CASES:-30} --json $OUT/${P}_fp8_acc.json > $OUT/${P}_fp8_acc.log 2>&1
echo "fp8 rc=$? $(since)"
tail -30 $OUT/${P}_fp8_acc.log | grep -v '^{"dtype"' | cut -c1-600
timeout 200 python -m harness mutate --profile default --quiet --json $OUT/${P}_mutate.json > /dev/null 2>&1
echo "mutate rc=$? $(since)"
mutate_summary $OUT/${P}_mutate.json
unset TRITON_CACHE_DIR
n=0
for impl in ours reference; do
  [ $(left) -gt 60 ] || break
  n=$((n + 1))
  timeout -s INT -k 15 $(( $(left) - 15 )) python -m harness check --impl $impl --op grouped_gemm \
    --dtype fp8_tensor fp8_block --cases 2000 --chunk 250 --no-shrink --json $OUT/${P}_gemm$n.json \
    > $OUT/${P}_gemm$n.log 2>&1
  echo "gemm $impl rc=$? $(since)"; grep -E "^grouped_gemm|cases in" $OUT/${P}_gemm$n.log | cut -c1-200
done
exit 0
