"""Triton's real compiler, no GPU needed: every kernel variant the CUDA backend launches compiles
for sm_80 and sm_90 without a register spill, with the installed triton and with triton 3.6 (the
GPU machine's).  `pytest -k aot` selects these.

The variants are not a list kept here: mnv3_fast/backends/cuda/variants.py runs the backend's
own program (forward and stages) for Large and Small at 224x224, batch 1 and 256, in fp16, bf16
and fp32, on CPU tensors behind a stand-in driver, so each launch compiles for the target with
exactly the tiles, constexprs and argument specialisation the backend picks, and nothing runs.
Registers, stack (spill) bytes and shared memory are read off each cubin with cuobjdump.  It
runs in a subprocess, since the Triton interpreter (on for the rest of the CPU test run) must be
off there.  Triton 3.6 is pip-installed once into ~/.cache/mnv3_fast/triton-3.6.0 (or found at
$MNV3_TRITON_3_6_DIR).  Compiled kernels are cached by triton (~/.triton/cache): the first run
takes about 1.5 minutes per triton on two cores, later runs seconds.
"""
import json
import os
import subprocess
import sys

import pytest

from mnv3_fast.backends.cuda import variants

KERNELS = {"_stem_kernel", "_pw_kernel", "_dw_kernel", "_se_gate_kernel"}
MAX_SHARED = {80: 163 * 1024, 90: 227 * 1024}  # opt-in shared memory per block

triton = pytest.importorskip("triton")


def check_rows(result: dict, version: str):
    assert result["triton"] == version
    rows = result["rows"]
    for arch in (80, 90):
        mine = [r for r in rows if r["arch"] == arch]
        assert {r["kernel"] for r in mine} == KERNELS
        for case in (f"{m} b{b} {d}" for m in ("large", "small") for b in (1, 256) for d in ("fp16", "bf16", "fp32")):
            assert any(case in r["cases"] for r in mine), f"no kernel compiled for {case} on sm_{arch}"
        spilled = [r for r in mine if r["spill_bytes"]]
        assert not spilled, f"register spills with triton {version} on sm_{arch}:\n" + variants.table(spilled, version)
        assert all(r["shared_bytes"] <= MAX_SHARED[arch] for r in mine)
        assert all(0 < r["registers"] <= 255 for r in mine)


@pytest.fixture(scope="module")
def triton36():
    return variants.triton_dir(variants.GPU_MACHINE_TRITON)


def test_aot_backend_variants_installed_triton():
    check_rows(variants.run_subprocess(None, ["--arch", "80,90"]), triton.__version__)


def test_aot_backend_variants_triton36(triton36):
    check_rows(variants.run_subprocess(triton36, ["--arch", "80,90"]), variants.GPU_MACHINE_TRITON)


TRACE_SCRIPT = r"""
import json, torch
import mnv3_fast
from mnv3_fast.ops import _library
from mnv3_fast.ops.triton import aot
from functorch.compile import aot_function
from torch._subclasses.fake_tensor import FakeTensorMode

assert _library.register_triton_kernels() is None
graphs = []
def compiler(gm, inputs):
    graphs.append(gm.code)
    return gm

def f(x, w, b, gate, sums, w1, b1, w2, b2):
    g = torch.ops.mnv3.se_gate(sums, w1, b1, w2, b2, 25)
    return torch.ops.mnv3.pw_conv_bn_act(x, w, b, "hswish", None, g, False)

# Fake CUDA tensors: nothing runs; the stand-in driver lets torch read the kernels' TTIR to see what
# each launch writes.
with aot.compile_only(90), FakeTensorMode():
    cl = torch.channels_last
    x = torch.empty(2, 8, 5, 5, device="cuda", dtype=torch.float16).contiguous(memory_format=cl)
    args = (x, torch.empty(16, 8, device="cuda", dtype=torch.float16), torch.empty(16, device="cuda", dtype=torch.float16),
            None, torch.empty(2, 8, device="cuda"), *(torch.empty(s, device="cuda", dtype=torch.float16)
                                                      for s in [(4, 8), (4,), (8, 4), (8,)]))
    aot_function(f, fw_compiler=compiler)(*args)
print(json.dumps(graphs))
"""


def test_aot_triton_ops_trace_to_their_kernels():
    """On CUDA tensors torch.compile's tracing sees the Triton launches inside the ops (triton_op +
    wrap_triton), not an opaque call: the graph holds the kernels and no mnv3 op."""
    if not hasattr(__import__("torch").library, "triton_op"):
        pytest.skip("torch.library.triton_op needs torch >= 2.6")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, env.get("PYTHONPATH")) if p)
    proc = subprocess.run([sys.executable, "-c", TRACE_SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    (graph,) = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "mnv3" not in graph
    assert graph.count("triton_kernel_wrapper_functional(") == 2
