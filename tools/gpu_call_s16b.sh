#!/usr/bin/env bash
# Session 16's last device call: the masked post-quant kernel now serves the packed layout on the
# float-scale kernel's grid over experts (the flat kernel removed after call 1's explorer run):
#   1. both post-quant ops against SGLang 0.5.23 and a copy of the same bytes (T = 1, 64, 4096);
#   2. their default-profile check rows, then 500 cases each (the packed layout's exact verdicts);
#   3. their mutants with the default profile.
set -u
cd "$(dirname "$0")/.."
P=${1:-3}
source tools/gpu_call_lib.sh
OPS="silu_and_mul_masked_post_quant_fwd silu_and_mul_masked_post_quant_packed_fwd"
MOE_CHECK_VALUES=0 timeout 100 python -m harness bench --op $OPS --tokens 1 64 4096 --impl ours sglang==0.5.23 \
  --json $OUT/${P}_bench.json > $OUT/${P}_bench.log 2>&1
echo "bench rc=$? $(since)"
timeout 60 python -m harness check --op $OPS --json $OUT/${P}_check.json > $OUT/${P}_check.log 2>&1
echo "check rc=$? $(since)"
timeout 60 python -m harness mutate --op $OPS --profile default --quiet --json $OUT/${P}_mutate.json > /dev/null 2>&1
echo "mutate rc=$? $(since)"
[ $(left) -gt 40 ] && timeout $(( $(left) - 10 )) python -m harness check --op $OPS --cases 500 --no-shrink \
  --json $OUT/${P}_check500.json > $OUT/${P}_check500.log 2>&1; echo "check500 rc=$? $(since)"
grep -E "^silu|cases in" $OUT/${P}_check.log $OUT/${P}_check500.log | cut -c1-160
grep -vE "^\[" $OUT/${P}_bench.log | tail -20 | cut -c1-200
mutate_summary $OUT/${P}_mutate.json
exit 0
