#!/usr/bin/env bash
# Session 13's device calls: check ours, the references and SGLang 0.5.23 (its wheel carried in .whl/) on
# the ops of the new families, their mutants, and ours against upstream on the hot ones; logs under $OUT.
# Usage: OUT=... bash tools/gpu_call_s13.sh PREFIX "OPS" "BENCH_OPS" [CASES]
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 PYTHONPYCACHEPREFIX=/tmp/pycache
W=.whl/sglang-0.5.23-cp311-cp311-manylinux_2_34_x86_64.whl
P=$1 OPS=$2 BENCH_OPS=$3 CASES=${4:-30}
t0=$(date +%s)
timeout ${CHECK_LIMIT:-200} python -m harness.cli check --op $OPS --impl ours reference sglang==0.5.23 --sglang-wheel $W \
  --cases $CASES --jobs 8 --quiet --json $OUT/${P}_check.json > $OUT/${P}_check.log 2>&1
echo "check rc=$? $(( $(date +%s) - t0 ))s"
timeout ${MUTATE_LIMIT:-150} python -m harness.cli mutate --op $OPS --cases 10 --jobs 4 --quiet \
  --json $OUT/${P}_mutate.json > $OUT/${P}_mutate.log 2>&1
echo "mutate rc=$? $(( $(date +%s) - t0 ))s"
MOE_CHECK_VALUES=0 timeout ${BENCH_LIMIT:-150} python -m harness.cli bench --op $BENCH_OPS --impl ours sglang==0.5.23 \
  --sglang-wheel $W --json $OUT/${P}_bench.json > $OUT/${P}_bench.log 2>&1
echo "bench rc=$? $(( $(date +%s) - t0 ))s"
grep -E "FAILED|CRASHED|UNBINDABLE|cases in" $OUT/${P}_check.log | cut -c1-160 | head -40
tail -3 $OUT/${P}_mutate.log | cut -c1-200
grep -vE "^\s*$" $OUT/${P}_bench.log | tail -30 | cut -c1-200
