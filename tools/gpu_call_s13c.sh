#!/usr/bin/env bash
# Session 13, call 6 (the last of its device budget): the new families' rows after the H100 findings of
# calls 2-5, the release matrix from the slim cache (.whl/sglang-cache, made by
# `moe-harness releases --export-cache .whl/sglang-cache`), the bench of the two masked post-quant
# kernels. Logs under $OUT.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 PYTHONPYCACHEPREFIX=/tmp/pycache MOE_HARNESS_SGLANG_CACHE=.whl/sglang-cache
NEW=$(python -c "
from harness.ops import REGISTRY
old = {'ep_preprocess','deepep_preprocess','pre_reorder','post_reorder','silu_and_mul','gelu_and_mul','grouped_gemm',
       'ep_moe_forward','ep_scatter','ep_scatter_from_psum','fill_m_indices_from_psum','ep_gather','post_reorder_deepgemm'}
print(*[op for op in REGISTRY if op not in old])")
t0=$(date +%s)
timeout 150 python -m harness.cli check --op $NEW --impl ours reference sglang==0.5.23 --cases 20 \
  --jobs 10 --quiet --json $OUT/6_check.json > $OUT/6_check.log 2>&1; echo "check rc=$? $(( $(date +%s) - t0 ))s"
MOE_CHECK_VALUES=0 timeout 50 python -m harness.cli bench --op silu_and_mul_masked_post_quant_fwd \
  silu_and_mul_masked_post_quant_packed_fwd --impl ours sglang==0.5.23 --json $OUT/6_bench.json \
  > $OUT/6_bench.log 2>&1; echo "bench rc=$? $(( $(date +%s) - t0 ))s"
timeout 170 python -m harness.cli --backend cuda releases --cases 3 --jobs 10 --quiet --json $OUT/6_matrix.json \
  > $OUT/6_matrix.txt 2> $OUT/6_matrix_progress.log; echo "matrix rc=$? $(( $(date +%s) - t0 ))s"
grep -E "FAILED|CRASHED|UNBINDABLE|cases in" $OUT/6_check.log | grep -v "^  " | cut -c1-170 | head -30
grep -E "ours|sglang" $OUT/6_bench.log | grep -v "^  " | cut -c1-150
head -40 $OUT/6_matrix.txt | cut -c1-200
