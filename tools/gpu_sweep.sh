#!/usr/bin/env bash
# The whole GPU check-and-bench sweep in one device call; logs and JSON go under $OUT.
# Usage: bash tools/gpu_sweep.sh STAGE...   (stages: env tests check large external bench benchfp8 benchmoe gemm500
#        selftest mutate int32mutants falsealarm epworld profile scaling; "all" = every stage). Each stage has its own
# time limit so one slow stage cannot eat the call; a summary line per stage ends the log.
set -u
cd "$(dirname "$0")/.."
# PYTHONPYCACHEPREFIX: the image's site-packages keep no bytecode, and every child process of a
# sweep would recompile torch._dynamo & co. from source (~7 s each) without a writable cache.
export PYTHONPYCACHEPREFIX=${PYTHONPYCACHEPREFIX:-/tmp/pycache}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
OUT=${OUT:-/tmp/moe-out}; mkdir -p "$OUT"
CASES=${CASES:-100}
PY=python3
summary=()
stage() {  # stage NAME LIMIT_S CMD...
  local name=$1 limit=$2; shift 2
  local override="LIMIT_${name}"; limit=${!override:-$limit}  # e.g. LIMIT_bench=150
  local t0=$(date +%s)
  echo "=== $name: $*" | tee -a "$OUT/sweep.log"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  tail -n 60 "$OUT/$name.log" >> "$OUT/sweep.log"
  summary+=("$name rc=$rc $(( $(date +%s) - t0 ))s")
}
want() { [[ " $STAGES " == *" $1 "* || " $STAGES " == *" all "* ]]; }
STAGES=" $* "
want env && { $PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name(), 'x', torch.cuda.device_count())" > "$OUT/env.log" 2>&1; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv >> "$OUT/env.log" 2>&1; cat "$OUT/env.log"; }
want tests && stage tests ${TESTS_LIMIT:-420} $PY -m pytest -q -p no:cacheprovider --cases 5 -n ${TEST_WORKERS:-2} tests
want check && stage check ${CHECK_LIMIT:-540} $PY -m harness check --cases "$CASES" --gpus all --jobs ${JOBS:-2} --quiet --json "$OUT/check.json"
want large && stage large ${LARGE_LIMIT:-540} $PY -m harness check --preset large --cases ${LARGE_CASES:-1} --quiet --no-shrink --json "$OUT/large.json"
want gemm500 && stage gemm500 540 $PY -m harness check --op grouped_gemm ep_moe_forward --cases 500 --chunk 50 --no-shrink --gpus all --jobs ${FA_JOBS:-18} --quiet --json "$OUT/gemm500.json"
want external && stage external 300 bash -c "$PY -m harness check --impl sglang:tests/fixtures/sglang_style_kernels.py sglang:tests.fixtures.sglang_style_kernels --cases 10 --quiet --jobs 2 --json $OUT/external.json; $PY -m harness check --impl sglang:tests/fixtures/sglang_style_kernels.py,sglang:tests/fixtures/sglang_oob.py --cases 5 --quiet --jobs 2 --json $OUT/oob.json"
want selftest && stage selftest 300 $PY -m harness bench --selftest --json "$OUT/selftest.json"
want bench && stage bench 420 $PY -m harness bench --impl ours torch torch_grouped_mm --json "$OUT/bench.json"
# fp8 against bf16 on every GEMM shape; the EP-rank forward and its parts at T = 1, 64, 4096 (issue 8).
want benchfp8 && stage benchfp8 240 $PY -m harness bench --op grouped_gemm --dtype bfloat16 fp8_tensor fp8_block --modes graph --json "$OUT/benchfp8.json"
want benchmoe && stage benchmoe 300 $PY -m harness bench --preset deepseek-v3 --routing uniform --tokens 1 64 4096 --op ep_preprocess pre_reorder grouped_gemm silu_and_mul post_reorder ep_moe_forward --impl ours torch --json "$OUT/benchmoe.json"
want mutate && stage mutate 420 $PY -m harness mutate --cases ${MUTANT_CASES:-30} --quiet --json "$OUT/mutate.json"
# 2,000 cases per op and dtype in chunks of 250 (8 children per row, spread over the visible GPUs).
want falsealarm && stage falsealarm 560 $PY -m harness check --impl ${FA_IMPL:-ours reference} --op ${FA_OPS:-$($PY -c 'from harness.specs import SPECS; print(*SPECS)')} --cases 2000 --chunk 250 --no-shrink --gpus all --jobs ${FA_JOBS:-40} --quiet --json "$OUT/falsealarm.json"
want int32mutants && stage int32mutants 300 $PY -m harness mutate --mutant silu_int32_row_offset pre_reorder_int32_row_offset --cases 3 --no-shrink --json "$OUT/int32mutants.json"
want epworld && stage epworld 300 bash -c "$PY -m harness ep-world --ranks 2 --impl ours --json $OUT/epworld.json; $PY -m harness ep-world --ranks 2 --impl ours --dtype fp8_block"
# Where the harness and the launchers spend host time (profiles of one child's sweep).
want profile && stage hostoverhead 120 $PY tools/host_overhead.py
want profile && stage profile 300 bash -c "for op in silu_and_mul:bfloat16:100 grouped_gemm:bfloat16:30 ep_moe_forward:bfloat16:15; do IFS=: read o d n <<< \$op; $PY -m cProfile -o $OUT/\$o.prof -m harness check --op \$o --dtype \$d --cases \$n --no-isolate --quiet --no-shrink; $PY -c \"import pstats,sys; s=pstats.Stats(sys.argv[1]); s.sort_stats('tottime').print_stats(30); s.sort_stats('cumtime').print_stats(40)\" $OUT/\$o.prof; done"
# The same sweep on 1 GPU and on 2: cases per minute for the record (issue 9).
want scaling && stage scalewarm 200 $PY -m harness check --op silu_and_mul gelu_and_mul post_reorder pre_reorder --cases ${SCALE_CASES:-40} --gpus all --quiet  # fills the compile caches, not recorded
want scaling && stage scaling1 200 $PY -m harness check --op silu_and_mul gelu_and_mul post_reorder pre_reorder --cases ${SCALE_CASES:-40} --gpus 1 --jobs 1 --quiet --json "$OUT/scaling1.json"
want scaling && stage scaling2 200 $PY -m harness check --op silu_and_mul gelu_and_mul post_reorder pre_reorder --cases ${SCALE_CASES:-40} --gpus 2 --jobs 2 --quiet --json "$OUT/scaling2.json"
want scaling && [ "$($PY -c 'import torch; print(torch.cuda.device_count())')" -ge 4 ] && stage scaling4 200 $PY -m harness check --op silu_and_mul gelu_and_mul post_reorder pre_reorder --cases ${SCALE_CASES:-40} --gpus 4 --jobs 4 --quiet --json "$OUT/scaling4.json"
printf '%s\n' "${summary[@]}" | tee -a "$OUT/sweep.log"
