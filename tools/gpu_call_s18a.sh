#!/usr/bin/env bash
# The first device call after session 17, whose last changes ran on no GPU (the fp8 statistical
# bound growing as 1.5 sqrt(1 + L / 2048) instead of a flat 1.5; case_cost of ten ops; a large
# case's float64 reference on the GPU when it fits):
#   1. the README's check from a cold Triton cache (session 17 call 3: 44.2 s; issue 24's target is
#      45 s): one more sample, with the new start order;
#   2. mutate --profile default on grouped_gemm's mutants (the only op whose rows the bound
#      touches): is gemm_fp8_tensor_partial_sums_bf16 still killed?
#   3. the references of silu_and_mul and gelu_and_mul, 2,000 cases per dtype (issue 23's last rows);
#   4. tools/child_start_times.py: the parent's imports and CUDA start (call 3 spent 6.6 s of its
#      44.2 s outside the check's own clock), spawned against forked children (printed only);
#   5. ep_gather at the large preset in bfloat16, one case (session 17: about 80 s a case with the
#      float64 reference on the host; harness/runner.py F64_FOOTPRINT: how long now?);
#   6. with SWEEP=1, the 2,000-case sweep of what tools/sweep_remaining.py lists (ours, or
#      SWEEP_IMPL=reference), until the deadline.
# Logs under $OUT (8 files at most: the device returns the first 8 by name, so logs whose lines
# this script prints stay in /tmp).
set -u
cd "$(dirname "$0")/.."
P=${1:-1}
source tools/gpu_call_lib.sh
cold_check 100
timeout 150 python -m harness mutate --profile default --op grouped_gemm --quiet --json $OUT/${P}_mutate.json \
  > /dev/null 2>&1
echo "mutate rc=$? $(since)"
mutate_summary $OUT/${P}_mutate.json
unset TRITON_CACHE_DIR
timeout 150 python -m harness check --impl reference --op silu_and_mul gelu_and_mul --cases 2000 --chunk 250 \
  --no-shrink --gpus all --json $OUT/${P}_sweep_ref23.json > /tmp/sweep_ref23.log 2>&1
echo "sweep ref23 rc=$? $(since)"; grep -E "cases in|FAILED|CRASHED" /tmp/sweep_ref23.log | head -5
timeout 60 python tools/child_start_times.py --children 16
timeout $(( $(left) > 230 ? 200 : $(left) - 30 )) python -m harness check --op ep_gather --preset large --impl ours \
  --dtype bfloat16 --cases 1 > $OUT/${P}_large.log 2>&1
echo "large rc=$? $(since)"; grep -E "^ep_gather|cases in" $OUT/${P}_large.log | cut -c1-200
[ -n "${SWEEP:-}" ] && sweep_left --stale ep_scatter@s15-h100
exit 0
