#!/usr/bin/env bash
# The first device call after session 17, whose last change (the fp8 statistical bound growing as
# 1.5 sqrt(1 + L / 2048) instead of a flat 1.5) ran on no GPU:
#   1. mutate --profile default on grouped_gemm's mutants (the only op whose rows the bound
#      touches): is gemm_fp8_tensor_partial_sums_bf16 still killed?
#   2. the README's check from a cold Triton cache again (session 17 call 3: 44.2 s; issue 24's
#      target is 45 s): one more sample of the same command;
#   3. ep_gather at the large preset in bfloat16, one case (session 17: about 80 s a case with the
#      float64 reference on the host; since then it runs on the GPU when the GPU's free memory holds
#      it, harness/runner.py F64_FOOTPRINT: how long now?);
#   4. tools/child_start_times.py: the parent's imports and CUDA start (call 3 spent 6.6 s of its
#      44.2 s outside the check's own clock), spawned against forked children;
#   5. the 2,000-case sweep of what tools/sweep_remaining.py lists (ours, then SWEEP_IMPL=reference
#      in a later call), until the deadline.
# Logs under $OUT (8 files at most: mutate, check x2, large, sweeps).
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
timeout 200 python -m harness check --op ep_gather --preset large --impl ours --dtype bfloat16 --cases 1 \
  > $OUT/${P}_large.log 2>&1
echo "large rc=$? $(since)"; grep -E "^ep_gather|cases in" $OUT/${P}_large.log | cut -c1-200
timeout 60 python tools/child_start_times.py --children 16   # the parent's own start, printed only
[ -n "${SWEEP:-}" ] && sweep_left --stale ep_scatter@s15-h100
exit 0
