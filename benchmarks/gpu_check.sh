#!/usr/bin/env bash
# The prepared GPU check, for a lent GPU machine (H100/H200, torch 2.11, triton 3.6, 16 cores,
# nothing downloadable): one command, about 8 minutes (each step has a time cap; the caps add up
# to 9.5 minutes), everything under $OUT (7 files).
#
#   OUT=/some/dir bash benchmarks/gpu_check.sh          # DRY_RUN=1: only the steps that need no GPU
#
# 1. machine: GPU, driver, versions;
# 2. install: builds the package against the machine's torch (no build isolation, no deps);
# 3. cuda tests: pytest -m cuda at full size (every op test's `cuda` target, tests/test_cuda.py and
#    test_cuda_backend.py: every Triton kernel, the CUDA backend's whole forward, CUDA graphs,
#    opcheck and torch.compile on CUDA);
# 4. traffic model: benchmarks/gpu_model.py (CPU only) -> model.txt;
# 5. kernels: benchmarks/gpu_kernels.py, each launch of the backend's forward (Large and Small,
#    batch 256, fp16) timed by the profiler against the model's bytes -> kernels.md/.json;
# 6. model benchmark, interleaved, Large and Small x batch 1 and 256 x fp16 and bf16: eager NCHW
#    and channels_last (eager also replayed from a CUDA graph at batch 1), torch.compile default
#    and max-autotune (max-autotune at batch 256 only, all compiling within a 150 s budget: what
#    does not fit is listed as not measured), this backend with and without its CUDA graphs
#    -> results.md/.json/.png.
# Writes gpu_check.log, model.txt, kernels.md, kernels.json, results.md, results.json, results.png
# to $OUT.  Commit them under benchmarks/results/.
set -uo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${OUT:-$REPO/benchmarks/results/gpu-check}"
DRY_RUN="${DRY_RUN:-0}"
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
export PYTHONUNBUFFERED=1
status=0
step() {  # step NAME TIMEOUT_S CMD...: run, log, remember failure, carry on
    local name=$1 limit=$2
    shift 2
    echo "=== $name ($(date -u +%H:%M:%S), at most ${limit}s)" | tee -a "$LOG"
    timeout "$limit" "$@" 2>&1 | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    echo "=== $name: exit $rc" | tee -a "$LOG"
    [ "$rc" -eq 0 ] || status=1
}
gpu_step() {  # as step, skipped (and said so) in a dry run
    if [ "$DRY_RUN" = 1 ]; then
        echo "=== $1: skipped (DRY_RUN=1; would run: ${*:3})" | tee -a "$LOG"
    else
        step "$@"
    fi
}

cd "$REPO"
gpu_step "machine" 30 bash -c 'nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; python3 -c "import torch, triton, sys; print(sys.version.split()[0], torch.__version__, triton.__version__, torch.cuda.get_device_name())"'
gpu_step "install" 150 env MAX_JOBS=16 MNV3_REQUIRE_EXTENSION=1 python3 -m pip install --no-build-isolation --no-deps -q -e .
gpu_step "cuda tests" 150 python3 -m pytest -q -m cuda -p no:cacheprovider --maxfail=10 tests/
step "traffic model" 30 bash -c "python3 benchmarks/gpu_model.py --batch 1,256 > '$OUT/model.txt' && python3 benchmarks/gpu_model.py --per-launch --model large --batch 256 >> '$OUT/model.txt' && cat '$OUT/model.txt'"
gpu_step "kernels" 60 python3 benchmarks/gpu_kernels.py --model large,small --batch 256 --dtype fp16 --iterations 5 --out "$OUT"
gpu_step "model benchmark" 180 python3 benchmarks/run.py --device cuda --arch large,small --batch 1,256 --dtype fp16,bf16 \
    --engines eager,eager_cl,compile,compile_max,fast_cl,fast_graphs --compile-budget-s 150 --max-autotune-batches 256 \
    --repeats 5 --out "$OUT"
echo "gpu_check: $([ $status -eq 0 ] && echo ok || echo FAILED)" | tee -a "$LOG"
exit $status
