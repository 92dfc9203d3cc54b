#!/usr/bin/env bash
# The first device call after session 16 (CPU-only changes since its last call):
#   1. the README's check from a cold Triton cache: the children now end together and costly
#      palette rows (ep_moe_forward, grouped_gemm) run in parts (issue 24: under 45 s on one H100?),
#      and mutate --profile default with the parts (every mutant still killed?);
#   2. ep_gather at the large preset in bfloat16 (float32 passed in session 16);
#   3. the 2,000-case sweep of what tools/sweep_remaining.py says is left (ours, or the
#      references with SWEEP_IMPL=reference), until the deadline, on every card there is (16
#      children per card: on a multi-GPU kind, e.g. nvidia-h100-x8, it runs 8 times as many).
# Logs under $OUT (8 files at most).
set -u
cd "$(dirname "$0")/.."
P=${1:-1}
source tools/gpu_call_lib.sh
cold_check 100
grep -E "part [0-9]/|cases in" $OUT/${P}_check.log | tail -8 | cut -c1-160
timeout 200 python -m harness mutate --profile default --quiet --json $OUT/${P}_mutate.json > /dev/null 2>&1
echo "mutate rc=$? $(since)"
unset TRITON_CACHE_DIR
timeout 120 python -m harness check --op ep_gather --preset large --impl ours --dtype bfloat16 --cases 2 \
  > $OUT/${P}_large.log 2>&1
echo "large rc=$? $(since)"
# ep_scatter's session-15 rows predate its whole-row tile
[ -n "${SWEEP:-}" ] && sweep_left --stale ep_scatter@s15-h100
grep -E "cases in" $OUT/${P}_check.log; grep -E "FAILED|CRASHED" $OUT/${P}_check.log | head -5 | cut -c1-200
mutate_summary $OUT/${P}_mutate.json
grep -E "^ep_gather|cases in" $OUT/${P}_large.log | cut -c1-200
exit 0
