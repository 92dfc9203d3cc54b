#!/usr/bin/env bash
# Session 15's second device call: ep_gather (new kernel: scalar slot loads and a uniform branch)
# against SGLang 0.5.23 (tools/explore_launch.py); the README's check from a cold Triton cache (25
# fuzzed cases per row, the costliest rows started first) and mutate with that default profile;
# ep_scatter's launch settings; ep_gather at the large preset (int64 offsets); where a check row's
# seconds go on a GPU (tools/row_profile.py) with the time left. Logs under $OUT (8 files at most).
set -u
cd "$(dirname "$0")/.."
P=${1:-1}
source tools/gpu_call_lib.sh
MOE_CHECK_VALUES=0 timeout 60 python tools/explore_launch.py --op ep_gather --set gather_warps=1,2,4,8 \
  --set gather_block_h=512,1024,2048 > $OUT/${P}_explore.log 2>&1
echo "explore gather rc=$? $(since)"
cold_check 90
timeout 150 python -m harness mutate --profile default --quiet --json $OUT/${P}_mutate.json > /dev/null 2>&1
echo "mutate rc=$? $(since)"
unset TRITON_CACHE_DIR
[ $(left) -gt 50 ] && timeout 45 python -m harness check --op ep_gather --preset large --impl ours > $OUT/${P}_large.log 2>&1
echo "large rc=$? $(since)"
[ $(left) -gt 30 ] && MOE_CHECK_VALUES=0 timeout $(( $(left) - 5 )) python tools/explore_launch.py --op ep_scatter \
  --set scatter_warps=4,8,16 --set scatter_block_h=1024,2048,4096,8192 >> $OUT/${P}_explore.log 2>&1
echo "explore scatter rc=$? $(since)"
python - $OUT/${P}_explore.log <<'PY'
import json, sys, collections
best = collections.defaultdict(list)
for line in open(sys.argv[1]):
    if line.startswith("{"):
        d = json.loads(line)
        best[(d.get("op", ""), d["case"])].append(d)
for case, lines in best.items():
    up = [d for d in lines if d["impl"] != "ours"]
    ours = sorted((d for d in lines if d["impl"] == "ours" and "us" in d), key=lambda d: d["us"])
    print(case[1][:50], "upstream", up[0]["us"] if up else None, "| best ours:",
          [(d["us"], {k: v for k, v in d.items() if k not in ("case", "impl", "us", "op")}) for d in ours[:3]])
print("incorrect variants:", sum(1 for ls in best.values() for l in ls if l.get("correct") is False),
      "errors:", [l for ls in best.values() for l in ls if "error" in l][:3])
PY
grep -E "cases in" $OUT/${P}_check.log; grep -E "FAILED|CRASHED" $OUT/${P}_check.log | head -5 | cut -c1-200
grep -E "ep_gather" $OUT/${P}_large.log | cut -c1-200
mutate_summary $OUT/${P}_mutate.json
exit 0
