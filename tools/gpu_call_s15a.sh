#!/usr/bin/env bash
# Session 15's first device call after the bench of gpu_call_s14b.sh: ep_gather (new kernel: scalar
# slot loads and a uniform branch) and ep_scatter launch settings against SGLang 0.5.23; both at
# the large preset (int64 offsets) and their int32 mutants; where a check row's seconds go on a GPU
# (tools/row_profile.py, cold Triton cache); then the 2,000-case sweep until the deadline.
# Logs under $OUT (8 files at most).
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 PYTHONPYCACHEPREFIX=/tmp/pycache MOE_HARNESS_SGLANG_CACHE=.whl/sglang-cache
P=${1:-1}
START=$(date +%s)
since() { echo "$(( $(date +%s) - START ))s"; }
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
export MOE_CHECK_VALUES=0
timeout 90 python tools/explore_launch.py --op ep_gather --set gather_warps=1,2,4,8 \
  --set gather_block_h=256,512,1024,2048 > $OUT/${P}_explore.log 2>&1
echo "explore gather rc=$? $(since)"
timeout 100 python tools/explore_launch.py --op ep_scatter --set scatter_warps=4,8,16 \
  --set scatter_block_h=512,1024,2048,4096 --set segment_warps=4,8 >> $OUT/${P}_explore.log 2>&1
echo "explore scatter rc=$? $(since)"
unset MOE_CHECK_VALUES
timeout 60 python -m harness check --op ep_gather ep_scatter --preset large --impl ours --quiet \
  > $OUT/${P}_large.log 2>&1
echo "large rc=$? $(since)"
timeout 60 python -m harness mutate --mutant ep_gather_int32_row_offset ep_scatter_int32_row_offset --quiet \
  >> $OUT/${P}_large.log 2>&1
echo "large mutants rc=$? $(since)"
timeout 170 python tools/row_profile.py --op ep_moe_forward grouped_gemm ep_preprocess post_reorder_for_cutlass_moe \
  ep_scatter pre_reorder --dtype bfloat16 bfloat16 int32 bfloat16 float32 fp8 --json $OUT/${P}_rows.json \
  > $OUT/${P}_rows.log 2>&1
echo "rows rc=$? $(since)"
OPS=$(python tools/sweep_remaining.py --impl ${SWEEP_IMPL:-ours} results/*/*_sweep.json)
left=$(( ${DEADLINE:-570} - $(date +%s) + START ))
if [ $left -gt 60 ]; then
  timeout -s INT -k 15 $((left - 15)) python -m harness check --impl ${SWEEP_IMPL:-ours} --op $OPS --cases 2000 \
    --chunk 250 --no-shrink --jobs 16 --json $OUT/${P}_sweep.json > /dev/null 2>&1
  echo "sweep rc=$? $(since) (limit ${left}s)"
fi
python - $OUT/${P}_explore.log <<'PY'
import json, sys, collections
best = collections.defaultdict(list)
for line in open(sys.argv[1]):
    if line.startswith("{"):
        d = json.loads(line)
        best[d["case"]].append(d)
for case, lines in best.items():
    up = [d for d in lines if d["impl"] != "ours"]
    ours = sorted((d for d in lines if d["impl"] == "ours"), key=lambda d: d["us"])
    print(case[:60], "upstream", up[0]["us"] if up else None, "| best ours:",
          [(d["us"], {k: v for k, v in d.items() if k not in ("case", "impl", "us")}) for d in ours[:3]])
bad = [l for ls in best.values() for l in ls if l.get("correct") is False]
print("incorrect variants:", len(bad))
PY
grep -E "passed|FAILED|CRASHED|killed|KILLED|SURVIVED" $OUT/${P}_large.log | cut -c1-200
grep -E "^==" $OUT/${P}_rows.log | cut -c1-300
exit 0
