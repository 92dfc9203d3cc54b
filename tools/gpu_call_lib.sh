# Sourced by the device-call scripts (tools/gpu_call_*.sh) after setting P (the call's number, the
# prefix of its files under $OUT): the environment every harness command there needs, the clock
# (since: seconds since the start; left: seconds to ${DEADLINE:-570}; cap N: N or what is left), the versions line, the
# README's check from a cold Triton cache, the summary of a mutate JSON, the five other large
# int32 mutants (mutate_large_rest) and the 2,000-case sweep
# of what is left (sweep_left). Run from the repository root.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 PYTHONPYCACHEPREFIX=/tmp/pycache MOE_HARNESS_SGLANG_CACHE=.whl/sglang-cache
START=$(date +%s)
since() { echo "$(( $(date +%s) - START ))s"; }
left() { echo $(( ${DEADLINE:-570} - $(date +%s) + START )); }
cap() { local l=$(( $(left) - 5 )); l=$(( l < $1 ? l : $1 )); echo $(( l < 1 ? 1 : l )); }   # a step's limit: $1 s, or
                    # what is left; never below 1 (timeout reads 0 as no limit at all)
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
python -c "import torch, triton, harness.ops, harness.runner, optimized, reference" > /dev/null   # bytecode, as installed

cold_check() {   # the README's check, timed, from a fresh Triton cache (kept exported: the steps after
                 # it, e.g. mutate, reuse what it compiled), then its count line and first failures;
                 # $1: its time limit in seconds
  export TRITON_CACHE_DIR=$(mktemp -d)
  local t0=$(date +%s.%N)
  timeout "$1" python -m harness check --json $OUT/${P}_check.json > $OUT/${P}_check.log 2>&1
  echo "check cold rc=$? $(python -c "print(round($(date +%s.%N) - $t0, 1))")s $(since)"
  grep -E "cases in" $OUT/${P}_check.log; grep -E "FAILED|CRASHED" $OUT/${P}_check.log | head -5 | cut -c1-300
}

mutate_summary() {   # the verdict line, what was pending, and every mutant not KILLED
  python - "$1" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print(d["summary"], "pending", d.get("pending"))
for m in d["mutants"]:
    if m["verdict"] != "KILLED":
        print(m["name"], m["verdict"], m["reason"][:200])
PY
}

mutate_large_rest() {   # the five large-preset int32 mutants other than ep_scatter's and ep_gather's
                        # (killed on a GPU in sessions 3 to 13), until 10 s before the deadline
  timeout $(( $(left) - 10 )) python -m harness mutate --no-shrink --json $OUT/${P}_mutate_large_rest.json \
    --mutant silu_int32_row_offset moe_permute_int32_row_offset moe_unpermute_int32_row_offset \
    moe_ep_deepgemm_preprocess_int32_row_offset pre_reorder_cutlass_int32_row_offset > /dev/null 2>&1
  echo "mutate large rest rc=$? $(since)"
  mutate_summary $OUT/${P}_mutate_large_rest.json
}

sweep_left() {   # the 2,000-case sweep of what tools/sweep_remaining.py lists for ${SWEEP_IMPL:-ours}
                 # (one check per group of ops and dtypes, on every card) until 60 s before the
                 # deadline; $@: sweep_remaining's --stale arguments. Partial JSON under $OUT, named after the
                 # implementation (numbered per call of this function: a second sweep in the same call
                 # must not overwrite the first's files).
  local n=0
  python tools/sweep_remaining.py --groups --impl ${SWEEP_IMPL:-ours} "$@" results/*/*_sweep*.json |
  while IFS='|' read -r ops dtypes; do
    [ $(left) -gt 60 ] || break
    n=$((n + 1))
    timeout -s INT -k 15 $(( $(left) - 15 )) python -m harness check --impl ${SWEEP_IMPL:-ours} --op $ops \
      ${dtypes:+--dtype $dtypes} --cases 2000 --chunk 250 --no-shrink --gpus all --json $OUT/${P}_sweep_${SWEEP_IMPL:-ours}$n.json \
      > /dev/null 2>&1
    echo "sweep $n rc=$? $(since)"
  done
}
