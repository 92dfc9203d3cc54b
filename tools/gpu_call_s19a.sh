#!/usr/bin/env bash
# The first device call after session 18, whose sweeps left no op or dtype unswept (sessions 19 and 20 got no
# machine in 11 tries each to start one; still the next call to make, with DEADLINE lowered if device time is short):
#   1. the two large-preset int32 mutants that have never run to a verdict on a GPU
#      (ep_scatter_int32_row_offset, ep_gather_int32_row_offset: issue 26's int32 overflow class;
#      every mutate run so far reached its limit before them, since large mutants run last);
#      (each kills at its first large case if at all: tools/mutant_draws.py gives every
#      dtype's first case all 256 experts local, 320,000 rows of 7,168, past 2**31 elements; the
#      control then runs our kernel on that case, the first float32 verdict of our ep_scatter at
#      the large preset since session 16 changed its tile);
#   2. our ep_scatter at the large preset in its other dtypes, one case each; SGLang 0.5.23's three ops
#      whose verdicts harness/machine_limits.py changed (session 18, CPU only: on the GPU only the
#      packed group quantiser should move, FAILED to NOT_COMPUTABLE for want of deep_gemm);
#   3. if time is left (DEADLINE, default 570 s: a scarce device gets a lower one), the README's
#      check from a cold Triton cache (sessions 17-18: 44.2 s, 39.9 s): a third sample; then
#   4. the five other large-preset int32 mutants (killed on a GPU in sessions 3 to 13), within
#      what is left, for one record of all seven under the current code.
# Logs under $OUT (8 files at most: the device returns the first 8 by name).
set -u
cd "$(dirname "$0")/.."
P=${1:-1}
source tools/gpu_call_lib.sh
timeout $(cap 300) python -m harness mutate --mutant ep_scatter_int32_row_offset ep_gather_int32_row_offset --no-shrink \
  --json $OUT/${P}_mutate_large_ep.json > $OUT/${P}_mutate_large_ep.log 2>&1
echo "mutate large ep rc=$? $(since)"
mutate_summary $OUT/${P}_mutate_large_ep.json
[ $(left) -gt 60 ] || exit 0
timeout $(cap 200) python -m harness check --op ep_scatter --preset large --impl ours --dtype bfloat16 fp8 fp8_ue8m0 \
  --cases 1 > $OUT/${P}_large.log 2>&1
echo "large rc=$? $(since)"; grep -E "^ep_scatter|cases in" $OUT/${P}_large.log | cut -c1-200
[ $(left) -gt 60 ] || exit 0
timeout $(cap 120) python -m harness check --impl sglang==0.5.23 --op sglang_per_token_group_quant_fp8 \
  compute_cutlass_w4a8_moe_input_scale moe_ep_deepgemm_preprocess > $OUT/${P}_sglang_limits.log 2>&1
echo "sglang limits rc=$? $(since)"; grep -E "^(sglang_per|compute_c|moe_ep)|cases in" $OUT/${P}_sglang_limits.log | cut -c1-250
[ $(left) -gt 110 ] && cold_check 100
[ $(left) -gt 120 ] || exit 0
mutate_large_rest
exit 0
