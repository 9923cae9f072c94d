"""The CUDA registrations (Triton kernels) at full MobileNetV3 sizes, against the references.

Marked `cuda`: skipped on machines without a GPU, run by benchmarks/gpu_check.sh.
"""
import pytest
import torch

import mnv3_fast
from mnv3_fast import ops, reference
from mnv3_fast.ops import reference_ops

from conftest import TOLERANCES

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run by benchmarks/gpu_check.sh)"),
]

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
FORMATS = (torch.contiguous_format, torch.channels_last)
# (C, H, k, stride, act) of MobileNetV3-Large's depthwise layers at 224x224.
LARGE_DW = [(16, 112, 3, 1, "relu"), (64, 112, 3, 2, "relu"), (72, 56, 3, 1, "relu"), (72, 56, 5, 2, "relu"),
            (120, 28, 5, 1, "relu"), (240, 28, 3, 2, "hswish"), (200, 14, 3, 1, "hswish"), (480, 14, 3, 1, "hswish"),
            (672, 14, 5, 2, "hswish"), (960, 7, 5, 1, "hswish")]
LARGE_SE = [(72, 24, 28), (120, 32, 28), (480, 120, 14), (672, 168, 14), (672, 168, 7), (960, 240, 7)]


def gen(*shape, dtype=torch.float32, scale=1.0, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return (torch.randn(*shape, device="cuda", generator=g) * scale).to(dtype)


def assert_close(out, expected, dtype):
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), expected.double(), **TOLERANCES[dtype])


def test_triton_kernels_are_registered():
    assert ops.TRITON_ERROR is None, ops.TRITON_ERROR
    from mnv3_fast.ops._library import CUDA_KERNELS

    assert set(CUDA_KERNELS) == {"hswish", "hsigmoid", "dw_conv_bn_act", "squeeze_excite"}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("memory_format", FORMATS)
@pytest.mark.parametrize("C,H,k,stride,act", LARGE_DW)
def test_dw_conv_bn_act(C, H, k, stride, act, memory_format, dtype):
    for N in (1, 8):
        x = gen(N, C, H, H, dtype=dtype, seed=C).contiguous(memory_format=memory_format)
        w, b = gen(C, 1, k, k, dtype=dtype, scale=0.3, seed=1), gen(C, dtype=dtype, seed=2)
        pad = (k - 1) // 2
        out = torch.ops.mnv3.dw_conv_bn_act(x, w, b, stride, pad, 1, act)
        assert out.is_contiguous(memory_format=reference_ops.output_memory_format(x))
        assert_close(out, reference_ops.dw_conv_bn_act(x.double(), w.double(), b.double(), stride, pad, 1, act), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("memory_format", FORMATS)
@pytest.mark.parametrize("C,S,H", LARGE_SE)
def test_squeeze_excite(C, S, H, memory_format, dtype):
    for N in (1, 8):
        x = gen(N, C, H, H, dtype=dtype, seed=C).contiguous(memory_format=memory_format)
        args = (x, gen(S, C, 1, 1, dtype=dtype, scale=C**-0.5 * 4, seed=1), gen(S, dtype=dtype, seed=2),
                gen(C, S, 1, 1, dtype=dtype, scale=S**-0.5 * 4, seed=3), gen(C, dtype=dtype, seed=4))
        out = torch.ops.mnv3.squeeze_excite(*args)
        assert_close(out, reference_ops.squeeze_excite(*(a.double() for a in args)), dtype)


@pytest.mark.parametrize("name", ["hswish", "hsigmoid"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_activations(name, dtype):
    x = gen(8, 96, 33, 65, dtype=dtype, scale=4)
    for t in (x, x.to(memory_format=torch.channels_last), x[:, ::2, 1:]):
        assert_close(getattr(torch.ops.mnv3, name)(t), getattr(reference_ops, name)(t.double()), dtype)


def test_opcheck_on_cuda():
    x = gen(2, 16, 9, 9).contiguous(memory_format=torch.channels_last)
    w, b = gen(16, 1, 3, 3), gen(16)
    torch.library.opcheck(torch.ops.mnv3.dw_conv_bn_act.default, (x, w, b, 2, 1, 1, "hswish"))
    torch.library.opcheck(torch.ops.mnv3.squeeze_excite.default, (x, gen(8, 16), gen(8), gen(16, 8), gen(16)))
    torch.library.opcheck(torch.ops.mnv3.hswish.default, (x,))


def _models(mode):
    ref = reference.MobileNetV3(mode).eval()
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return ref.cuda(), mnv3_fast.convert(ref).cuda()


@pytest.mark.parametrize("mode", ["LARGE", "SMALL"])
def test_model_fp32_and_fp16_channels_last(mode):
    ref, fast = _models(mode)
    x = gen(4, 3, 224, 224)
    with torch.no_grad():
        expected = ref(x).double()
        scale = expected.abs().max()
        out = fast.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
        assert (out.double() - expected).abs().max() / scale < 1e-3  # TF32 convs in cuDNN
        half = fast.half()(x.half().contiguous(memory_format=torch.channels_last))
        assert half.dtype == torch.float16
        assert (half.double() - expected).abs().max() / scale < 5e-2
        fast.float()
        with torch.autocast("cuda", dtype=torch.float16):
            auto = fast(x)
        assert (auto.double() - expected).abs().max() / scale < 5e-2


def test_model_compiles_on_cuda():
    ref, fast = _models("SMALL")
    x = gen(2, 3, 128, 128)
    with torch.no_grad():
        compiled = torch.compile(fast, fullgraph=True)
        torch.testing.assert_close(compiled(x), fast(x), rtol=1e-3, atol=1e-3)
