import glob
import os
import shutil

# On a machine without an NVIDIA GPU the Triton kernels are tested on CPU
# tensors under Triton's interpreter, which must be on before triton is first
# imported (triton.language itself is decorated differently), so here, before
# anything imports torch or triton.  With a GPU, Triton compiles for real.
HAS_NVIDIA_GPU = bool(shutil.which("nvidia-smi") or glob.glob("/dev/nvidia[0-9]*"))
if not HAS_NVIDIA_GPU:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from mnv3_fast.backends.cpu.program import HAS_ONEDNN_BF16  # noqa: E402

# Tolerances for comparing a kernel's output with a float64 reference computed
# from the same (already rounded) inputs.  fp32: sums of <= 25 products or
# means of <= a few hundred values lose a few ulps (~1e-6 relative).  bf16: the
# kernels accumulate in fp32 and round once at the store, an error of at most
# half a bf16 ulp (2**-9 relative); 2**-7 leaves a 4x margin.
TOLERANCES = {
    torch.float64: dict(rtol=1e-12, atol=1e-12),
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.bfloat16: dict(rtol=2**-7, atol=2**-7),
    torch.float16: dict(rtol=2**-9, atol=2**-9),
}

CPU_DTYPES = (torch.float32, torch.bfloat16, torch.float64)
MEMORY_FORMATS = (torch.contiguous_format, torch.channels_last)


def assert_close(out: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    """A kernel's output against its float64 reference, at the tolerance of `dtype` (TOLERANCES)."""
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), expected.double(), **TOLERANCES[dtype])


def assert_close_rel(out: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-4) -> None:
    """A whole network's output: the largest absolute difference, relative to the largest |expected|."""
    scale = expected.abs().max().clamp_min(1e-12)
    err = ((out.double() - expected.double()).abs().max() / scale).item()
    assert err <= rtol, f"relative error {err:.3g} > {rtol}"


def randn(*shape, dtype=torch.float32, memory_format=torch.contiguous_format, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    t = (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)
    return t.contiguous(memory_format=memory_format) if t.dim() == 4 else t


@pytest.fixture
def poison_outputs():
    """Every uninitialized allocation (the kernels' outputs included) is filled with NaN,
    so a kernel that skips an element fails the comparison."""
    old_det, old_fill = torch.are_deterministic_algorithms_enabled(), torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    yield
    torch.use_deterministic_algorithms(old_det)
    torch.utils.deterministic.fill_uninitialized_memory = old_fill


def extension_required() -> bool:
    return os.environ.get("MNV3_ALLOW_FALLBACK") != "1"


# ---------------------------------------------------------------- where the op tests run
#
# Each op test is written once and runs on every target (in the spirit of extension-cpp's
# sample_inputs(device)):
#   "cpu":    torch.ops.mnv3 on CPU tensors (the C++ kernels);
#   "triton": the Triton launchers (mnv3_fast.ops.triton) on CPU tensors under Triton's interpreter,
#             on machines without a GPU: ~20-40 ms per program, so `target.tiny` asks for small shapes;
#   "cuda":   torch.ops.mnv3 on CUDA tensors (the Triton kernels, compiled), marked `cuda`.
# A test that takes both `target` and `dtype` gets every dtype its target supports.


class Target:
    def __init__(self, name: str):
        self.name = name
        self.device = "cuda" if name == "cuda" else "cpu"
        self.tiny = name == "triton"
        if name == "triton":
            import mnv3_fast.ops.triton as ops
        else:
            ops = torch.ops.mnv3
        self.ops = ops
        self.dtypes = _target_dtypes(name)

    def __repr__(self):
        return self.name

    def to(self, t):
        return None if t is None else t.to(self.device)


INTERPRETER = os.environ.get("TRITON_INTERPRET") == "1"
TARGETS = [
    pytest.param("cpu", id="cpu"),
    pytest.param("triton", id="triton", marks=pytest.mark.skipif(
        not INTERPRETER, reason="the Triton interpreter is off (a GPU machine): the cuda target runs the kernels")),
    pytest.param("cuda", id="cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA GPU (run by benchmarks/gpu_check.sh)")]),
]


@pytest.fixture
def target(request) -> Target:
    if request.param == "triton":
        pytest.importorskip("triton")
    return Target(request.param)


def _target_dtypes(name):
    return CPU_DTYPES if name == "cpu" else (torch.float32, torch.float16, torch.bfloat16)


def pytest_generate_tests(metafunc):
    if "target" not in metafunc.fixturenames:
        return
    if "dtype" in metafunc.fixturenames and "dtype" not in {m.args[0] for m in metafunc.definition.iter_markers(
            "parametrize")}:
        params = [pytest.param(p.values[0], d, id=f"{p.id}-{str(d).replace('torch.', '')}", marks=p.marks)
                  for p in TARGETS for d in _target_dtypes(p.values[0])]
        metafunc.parametrize(("target", "dtype"), params, indirect=["target"])
    else:
        metafunc.parametrize("target", TARGETS, indirect=True)


#: The CPU program's bf16 path needs oneDNN's bf16 convolutions (AVX512-BW/VL/DQ or AVX-NE-CONVERT): an
#: AVX2-only CPU (AMD Zen 3) has none, and there the model refuses the program (tested in test_model.py).
needs_onednn_bf16 = pytest.mark.skipif(not HAS_ONEDNN_BF16, reason="oneDNN has no bf16 convolutions on this CPU")


#: How far a float32 output may be from float64, as a multiple of the eager float32 model's own error,
#: where calibrated BN statistics make the network amplify rounding.  The fused path rounds in another
#: order (folded BN, oneDNN's blocking): within 3x eager's error with oneDNN's AVX-512 kernels, 4x
#: with its AVX2 ones (an AVX2-only CPU, emulated with ONEDNN_MAX_CPU_ISA=AVX2).  A wrong result is
#: off by orders of magnitude more.
EAGER_ERROR_FACTOR = 6
