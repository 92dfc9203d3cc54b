#!/usr/bin/env bash
# Session 13, call 6: the new families' rows after the H100 findings of calls 2-5 (check of ours, the
# references and SGLang 0.5.23; the large-preset int32 mutants; SGLang's masked post-quant at the
# T=4096 anchor as one --case; the bench of the two masked post-quant kernels). Logs under $OUT.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 PYTHONPYCACHEPREFIX=/tmp/pycache
W=.whl/sglang-0.5.23-cp311-cp311-manylinux_2_34_x86_64.whl
NEW=$(python -c "
from harness.ops import REGISTRY
old = {'ep_preprocess','deepep_preprocess','pre_reorder','post_reorder','silu_and_mul','gelu_and_mul','grouped_gemm',
       'ep_moe_forward','ep_scatter','ep_scatter_from_psum','fill_m_indices_from_psum','ep_gather','post_reorder_deepgemm'}
print(*[op for op in REGISTRY if op not in old])")
t0=$(date +%s)
timeout 170 python -m harness.cli check --op $NEW --impl ours reference sglang==0.5.23 --sglang-wheel $W --cases 30 \
  --jobs 8 --quiet --json $OUT/6_check.json > $OUT/6_check.log 2>&1; echo "check rc=$? $(( $(date +%s) - t0 ))s"
CASE='{"dtype": "ue8m0", "end_expert": 31, "experts": 256, "hidden": 7168, "index_dtype": "int32", "inter": 2048, "invalid_frac": 0.0, "op": "silu_and_mul_masked_post_quant_fwd", "routing": "uniform", "seed": 0, "start_expert": 0, "tokens": 4096, "topk": 8}'
timeout 60 python -m harness.cli check --impl ours sglang==0.5.23 --sglang-wheel $W --case "$CASE" \
  --json $OUT/6_anchor4096.json > $OUT/6_anchor4096.log 2>&1; echo "anchor rc=$? $(( $(date +%s) - t0 ))s"
timeout 100 python -m harness.cli mutate --mutant moe_ep_deepgemm_preprocess_int32_row_offset moe_permute_int32_row_offset \
  --cases 2 --no-shrink --json $OUT/6_mutate_large.json > $OUT/6_mutate_large.log 2>&1; echo "mutate rc=$? $(( $(date +%s) - t0 ))s"
MOE_CHECK_VALUES=0 timeout 90 python -m harness.cli bench --op silu_and_mul_masked_post_quant_fwd \
  silu_and_mul_masked_post_quant_packed_fwd --impl ours sglang==0.5.23 --sglang-wheel $W --json $OUT/6_bench.json \
  > $OUT/6_bench.log 2>&1; echo "bench rc=$? $(( $(date +%s) - t0 ))s"
grep -E "FAILED|CRASHED|UNBINDABLE|cases in" $OUT/6_check.log | grep -v "^  " | cut -c1-170 | head -30
grep -vE "^\s*$" $OUT/6_anchor4096.log | head -12 | cut -c1-300
tail -4 $OUT/6_mutate_large.log | cut -c1-200
grep -E "ours|sglang" $OUT/6_bench.log | grep -v "^  " | cut -c1-150
