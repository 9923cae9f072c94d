#!/usr/bin/env bash
# The prepared GPU check, for a lent GPU machine (H100/H200, torch 2.11, triton 3.6,
# nothing downloadable): one command, about 5 minutes, everything under $OUT.
#
#   OUT=/some/dir bash benchmarks/gpu_check.sh
#
# 1. builds and installs the package against the machine's torch (no build isolation, no deps);
# 2. runs the CUDA tests (tests/test_cuda.py: the Triton kernels at full size vs the references);
# 3. times each op against its eager chain at MobileNetV3-Large shapes, batch 1 and 256, fp16 and
#    fp32, channels_last (benchmarks/ops.py --device cuda), with the copy-bandwidth fraction;
# 4. runs the model speed table on CUDA (benchmarks/run.py --device cuda).
# Writes gpu_check.log, ops.json/.md and results.json/.md/.png to $OUT.  Commit them under
# benchmarks/results/.
set -uo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${OUT:-$REPO/benchmarks/results/gpu-check}"
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
export PYTHONUNBUFFERED=1
status=0
step() {  # step NAME TIMEOUT_S CMD...: run, log, remember failure, carry on
    local name=$1 limit=$2
    shift 2
    echo "=== $name ($(date -u +%H:%M:%S))" | tee -a "$LOG"
    timeout "$limit" "$@" 2>&1 | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    echo "=== $name: exit $rc" | tee -a "$LOG"
    [ "$rc" -eq 0 ] || status=1
}

cd "$REPO"
step "machine" 30 bash -c 'nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; python3 -c "import torch, triton, sys; print(sys.version.split()[0], torch.__version__, triton.__version__, torch.cuda.get_device_name())"'
step "install" 300 env MAX_JOBS=16 MNV3_REQUIRE_EXTENSION=1 python3 -m pip install --no-build-isolation --no-deps -q -e .
step "cuda tests" 240 python3 -m pytest -q -m cuda -p no:cacheprovider tests/test_cuda.py
step "op benchmark" 150 python3 benchmarks/ops.py --device cuda --batch 1,256 --dtype fp16,fp32 --formats channels_last --repeats 10 --out "$OUT"
step "model benchmark" 150 python3 benchmarks/run.py --device cuda --no-compile --batch 1,256 --repeats 5 --engines eager,eager_cl,fast,fast_cl,torchvision --out "$OUT"
echo "gpu_check: $([ $status -eq 0 ] && echo ok || echo FAILED)" | tee -a "$LOG"
exit $status
