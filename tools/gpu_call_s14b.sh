#!/usr/bin/env bash
# The first device call after session 14 (its budget ran out before it): the changes made after
# session 14's call 2, checked on a GPU, then the sweep continued. Logs under $OUT (8 files at most).
#   1. the bench of the masked post-quant kernels (new prefill launch) and ep_scatter / ep_gather
#      (verified on the rebuilt case) against SGLang 0.5.23 at T = 1, 64, 4096;
#   2. the README's check from a cold Triton cache: the default profile now gives the repeat
#      probes and the graph capture to a row's first 10 cases, with up to 16 children (issue 24:
#      under 45 s on one H100?); its rows also check the new launch and the graph-probe notes;
#   3. mutate with the default profile (every mutant still killed with that setting?);
#   4. where a case's host time goes on a GPU: cProfile of two rows in this process;
#   5. the 2,000-case sweep of what tools/sweep_remaining.py says is left, until the deadline.
set -u
cd "$(dirname "$0")/.."
P=${1:-1}
source tools/gpu_call_lib.sh
MOE_CHECK_VALUES=0 timeout 120 python -m harness bench --op silu_and_mul_masked_post_quant_fwd \
  silu_and_mul_masked_post_quant_packed_fwd ep_scatter ep_gather --tokens 1 64 4096 --impl ours sglang==0.5.23 \
  --json $OUT/${P}_bench.json > $OUT/${P}_bench.log 2>&1
echo "bench rc=$? $(since)"
cold_check 110
timeout ${MUTATE_LIMIT:-200} python -m harness mutate --profile default --quiet --json $OUT/${P}_mutate.json \
  > $OUT/${P}_mutate.log 2>&1
echo "mutate rc=$? $(since)"
unset TRITON_CACHE_DIR
timeout 60 python -m cProfile -o /tmp/case.prof -m harness check --op ep_scatter moe_permute --dtype bfloat16 \
  --profile thorough --cases 40 --no-isolate --quiet --no-shrink > /dev/null 2>&1
python -c "import pstats; s=pstats.Stats('/tmp/case.prof'); s.sort_stats('cumtime').print_stats(60)" \
  > $OUT/${P}_profile.log 2>&1
echo "profile $(since)"
if [ -n "${SWEEP:-}" ]; then
  OPS=$(python tools/sweep_remaining.py --impl ${SWEEP_IMPL:-ours} results/*/*_sweep.json)
  left=$(( ${DEADLINE:-575} - $(date +%s) + START ))
  timeout -s INT -k 10 $left python -m harness check --impl ${SWEEP_IMPL:-ours} --op $OPS --cases 2000 --chunk 250 \
    --no-shrink --jobs 16 --json $OUT/${P}_sweep.json > /dev/null 2>&1
  echo "sweep rc=$? $(since) (limit ${left}s)"
fi
grep -E "FAILED|CRASHED|cases in" $OUT/${P}_check.log | cut -c1-160
mutate_summary $OUT/${P}_mutate.json
grep -E "^(ep_|silu)|copy kernel" $OUT/${P}_bench.log | cut -c1-230
grep -E "harness/|fuzz|runner" $OUT/${P}_profile.log | head -25 | cut -c1-160
exit 0
