#!/usr/bin/env bash
# Session 14's device calls. Usage: OUT=... bash tools/gpu_call_s14a.sh PREFIX [measure] [sweep]
#   measure: issue 26's float-scale masked post-quant launch sweep at T=4096 and ep_scatter/ep_gather
#            against SGLang 0.5.23 at T = 1, 64, 4096 (with the in-run copy rate), on a quiet machine;
#            then issue 24's README check from a cold Triton cache and warm, and mutate with the
#            default profile.
#   sweep:   the 2,000-case false-alarm sweep (issues 23, 26, 27) of $SWEEP_OPS (default: every op)
#            for $SWEEP_IMPL (default: reference ours; references first, they are cheap) until
#            $DEADLINE seconds after the call's start (default 585); the JSON keeps every finished
#            chunk of 250 cases if the deadline cuts the run.
# At most 8 files come back from $OUT: PREFIX_{bench,explore,check,mutate}.log, _bench.json,
# _mutate.json, _sweep.json, _sweep.log.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 PYTHONPYCACHEPREFIX=/tmp/pycache MOE_HARNESS_SGLANG_CACHE=.whl/sglang-cache
P=$1; shift
START=$(date +%s)
since() { echo "$(( $(date +%s) - START ))s"; }
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
# Python bytecode as an install leaves it (the image's site-packages have none)
python -c "import torch, triton, harness.ops, harness.runner, optimized, reference" > /dev/null
if [[ " $* " == *" measure "* ]]; then
  MOE_CHECK_VALUES=0 timeout 100 python tools/explore_masked_quant.py --tokens 4096 --warps 1 2 4 \
    --row-programs 64 128 256 512 --tile 512 1024 --stages 1 3 6 > $OUT/${P}_explore.log 2>&1
  echo "explore rc=$? $(since)"
  MOE_CHECK_VALUES=0 timeout 90 python -m harness bench --op ep_scatter ep_gather --tokens 1 64 4096 \
    --impl ours sglang==0.5.23 --json $OUT/${P}_bench.json > $OUT/${P}_bench.log 2>&1
  echo "bench rc=$? $(since)"
  export TRITON_CACHE_DIR=$(mktemp -d)    # cold: nothing compiled yet
  t0=$(date +%s.%N)
  timeout 120 python -m harness check > $OUT/${P}_check.log 2>&1
  echo "check cold rc=$? $(python -c "print(round($(date +%s.%N) - $t0, 1))")s"
  t0=$(date +%s.%N)
  echo "=== warm" >> $OUT/${P}_check.log
  timeout 60 python -m harness check >> $OUT/${P}_check.log 2>&1
  echo "check warm rc=$? $(python -c "print(round($(date +%s.%N) - $t0, 1))")s"
  timeout 220 python -m harness mutate --profile default --quiet --json $OUT/${P}_mutate.json \
    > $OUT/${P}_mutate.log 2>&1
  echo "mutate rc=$? $(since)"
  unset TRITON_CACHE_DIR
fi
if [[ " $* " == *" sweep "* ]]; then
  left=$(( ${DEADLINE:-585} - $(date +%s) + START ))
  OPS=${SWEEP_OPS:-$(python -c 'from harness.ops import REGISTRY; print(*REGISTRY)')}
  timeout -s INT -k 10 $left python -m harness check --impl ${SWEEP_IMPL:-reference ours} --op $OPS --cases 2000 \
    --chunk 250 --no-shrink --jobs ${SWEEP_JOBS:-16} --json $OUT/${P}_sweep.json > $OUT/${P}_sweep.log 2>&1
  echo "sweep rc=$? $(since) (limit ${left}s)"
fi
[ -f $OUT/${P}_check.log ] && grep -E "FAILED|CRASHED|cases in|warm" $OUT/${P}_check.log | cut -c1-160
[ -f $OUT/${P}_mutate.log ] && grep -vE "KILLED|^\s" $OUT/${P}_mutate.log | tail -12 | cut -c1-200
[ -f $OUT/${P}_explore.log ] && python - $OUT/${P}_explore.log <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
for r in sorted(rows, key=lambda r: r["us"])[:6] + [r for r in rows if r["impl"] != "ours"]:
    print(r)
PY
[ -f $OUT/${P}_bench.log ] && grep -E "^ep_|copy kernel" $OUT/${P}_bench.log | cut -c1-230
[ -f $OUT/${P}_sweep.json ] && python - $OUT/${P}_sweep.json <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
rows = d["rows"]
bad = [r for r in rows if r["status"] not in ("passed",)]
print("sweep complete", d["complete"], "rows", len(rows), "cases", sum(r["run"] or 0 for r in rows),
      "failed", sum(r["failed"] or 0 for r in rows))
full = sum(1 for r in rows if (r["run"] or 0) >= 2000)
print("rows with >= 2000 cases", full)
for r in bad[:30]:
    print(r["impl"], r["op"], r["dtype"], r["run"], r["status"], (r.get("reason") or "")[:150])
PY
exit 0
