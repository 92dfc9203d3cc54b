#!/usr/bin/env bash
# The first device call after session 15 (its device time ran out): the changes made after its
# last call, measured and verified on a GPU, then the 2,000-case sweep until the deadline.
#   1. the README's check from a cold Triton cache with the default profile's palette of 8 sizes
#      per row (issue 24: under 45 s on one H100?), and mutate --profile default with it (every
#      mutant still killed?);
#   2. ep_gather (session 15's kernel) at the large preset: int64 row offsets past 2**31 elements,
#      and its int32 mutant;
#   3. the packed masked post-quant launch at T=64 and 4096 (issue 26: 85% of the copy rate), on its
#      flat grid and on the float-scale kernel's grid over experts (packed_expert_grid=1);
#   4. where a row's seconds still go (tools/row_profile.py, cold cache, ep_moe_forward);
#   5. the sweep of what tools/sweep_remaining.py says is left, until the deadline.
# Logs under $OUT (8 files at most).
set -u
cd "$(dirname "$0")/.."
P=${1:-1}
source tools/gpu_call_lib.sh
cold_check 100
timeout 170 python -m harness mutate --profile default --quiet --json $OUT/${P}_mutate.json > /dev/null 2>&1
echo "mutate rc=$? $(since)"
unset TRITON_CACHE_DIR
timeout 120 python -m harness check --op ep_gather --preset large --impl ours --cases 2 > $OUT/${P}_large.log 2>&1
echo "large rc=$? $(since)"
MOE_CHECK_VALUES=0 timeout 100 python tools/explore_launch.py --op silu_and_mul_masked_post_quant_packed_fwd \
  --tokens 64 4096 --set packed_expert_grid=0,1 --set num_warps=1,2,4 --set packed_programs=1024,4096 \
  --set tile_elements=512,1024 > $OUT/${P}_explore.log 2>&1
echo "explore packed rc=$? $(since)"
[ $(left) -gt 100 ] && timeout 80 python tools/row_profile.py --op ep_moe_forward --dtype bfloat16 --top 25 \
  > $OUT/${P}_rows.log 2>&1; echo "rows rc=$? $(since)"
# the rows still missing, one check per group of (ops, dtypes); ep_scatter's earlier rows predate
# session 15's whole-row tile, so they are swept again
[ -n "${SWEEP:-}" ] && sweep_left --stale ep_scatter
grep -E "cases in" $OUT/${P}_check.log; grep -E "FAILED|CRASHED" $OUT/${P}_check.log | head -5 | cut -c1-200
mutate_summary $OUT/${P}_mutate.json
grep -E "^ep_gather|cases in" $OUT/${P}_large.log | cut -c1-200
grep -E '"us"' $OUT/${P}_explore.log | cut -c1-200
grep -E "^==" $OUT/${P}_rows.log | cut -c1-300
exit 0
