#!/usr/bin/env bash
# Session 14, call 3 (the last of its device budget): after the changes of calls 1-2 (the float-scale
# masked post-quant's prefill launch, the bench verifying a case whose shapes follow the seed on its
# rebuild, the default profile's repeat probes on a row's first 10 cases on a GPU, 16 jobs): the bench
# of the four ops against SGLang 0.5.23 at T = 1, 64, 4096; the README's check from a cold Triton
# cache; mutate with the default profile. Logs under $OUT.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 PYTHONPYCACHEPREFIX=/tmp/pycache MOE_HARNESS_SGLANG_CACHE=.whl/sglang-cache
P=${1:-3}
START=$(date +%s)
since() { echo "$(( $(date +%s) - START ))s"; }
python -c "import torch, triton, harness.ops, harness.runner, optimized, reference" > /dev/null   # bytecode, as installed
MOE_CHECK_VALUES=0 timeout 130 python -m harness bench --op silu_and_mul_masked_post_quant_fwd \
  silu_and_mul_masked_post_quant_packed_fwd ep_scatter ep_gather --tokens 1 64 4096 --impl ours sglang==0.5.23 \
  --json $OUT/${P}_bench.json > $OUT/${P}_bench.log 2>&1
echo "bench rc=$? $(since)"
export TRITON_CACHE_DIR=$(mktemp -d)    # cold: nothing compiled yet
t0=$(date +%s.%N)
timeout 110 python -m harness check --json $OUT/${P}_check.json > $OUT/${P}_check.log 2>&1
echo "check cold rc=$? $(python -c "print(round($(date +%s.%N) - $t0, 1))")s"
timeout ${MUTATE_LIMIT:-200} python -m harness mutate --profile default --quiet --json $OUT/${P}_mutate.json \
  > $OUT/${P}_mutate.log 2>&1
echo "mutate rc=$? $(since)"
grep -E "FAILED|CRASHED|cases in" $OUT/${P}_check.log | cut -c1-160
grep -vE "KILLED|^\s" $OUT/${P}_mutate.log | tail -8 | cut -c1-200
python - $OUT/${P}_mutate.json <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print(d["summary"], "pending", d.get("pending"))
for m in d["mutants"]:
    if m["verdict"] != "KILLED":
        print(m["name"], m["verdict"], m["reason"][:200])
PY
grep -E "^(ep_|silu)|copy kernel" $OUT/${P}_bench.log | cut -c1-230
exit 0
