#!/usr/bin/env bash
# The first device call after session 21, which killed both ep int32 mutants on an H100 but
# whose ep_scatter_int32_row_offset kill (a crash) had no control: mutate ran none after a crash
# then (harness/mutate.py since d3f14f5 runs it in a fresh child).
#   1. ep_scatter_int32_row_offset again: the first GPU run of that control path; expect KILLED
#      by "crash" with control "passed" (the control is our ep_scatter's first float32 verdict at
#      the large preset since session 16 capped its tile: T = 40000, all 256 experts local);
#   2. tests/test_mutants.py's crash tests on cuda: the wild store (a crash there) and the
#      exiting mutant, both now confirmed by a control;
#   3. the five other large-preset int32 mutants within what is left (killed on a GPU in
#      sessions 3 to 13; session 21 reached its deadline before the first finished).
# Logs under $OUT (8 files at most: the device returns the first 8 by name).
set -u
cd "$(dirname "$0")/.."
P=${1:-1}
source tools/gpu_call_lib.sh
timeout $(cap 240) python -m harness mutate --mutant ep_scatter_int32_row_offset --no-shrink \
  --json $OUT/${P}_mutate_ep_scatter.json > $OUT/${P}_mutate_ep_scatter.log 2>&1
echo "mutate ep_scatter rc=$? $(since)"
mutate_summary $OUT/${P}_mutate_ep_scatter.json
[ $(left) -gt 60 ] || exit 0
timeout $(cap 120) python -m pytest -q -p no:cacheprovider --backend cuda tests/test_mutants.py \
  -k "crash or stores_far" > $OUT/${P}_pytest_crash.log 2>&1
echo "pytest crash rc=$? $(since)"; tail -3 $OUT/${P}_pytest_crash.log
[ $(left) -gt 120 ] || exit 0
mutate_large_rest
exit 0
