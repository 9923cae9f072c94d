"""The Triton kernels on CPU tensors under the Triton interpreter, against the references.

conftest.py turns the interpreter on (TRITON_INTERPRET=1) before anything
imports triton, on machines without an NVIDIA GPU; on a GPU machine these
tests are skipped and tests/test_cuda.py checks the compiled kernels.  The
interpreter runs ~20-40 ms per program, so the shapes are tiny (N=2,
C=8..24, H=W=7..13).
"""
import os

import pytest
import torch

from mnv3_fast.ops import reference_ops

from conftest import MEMORY_FORMATS, TOLERANCES, randn

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("the Triton interpreter is off (a GPU machine): tests/test_cuda.py covers the kernels",
                allow_module_level=True)

import mnv3_fast.ops.triton as tt  # noqa: E402

# The GPU's dtypes.  The interpreter computes fp16 through numpy, so its
# tolerance is the fp16 one (one rounding of the output).
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
ACTS = ("none", "relu", "hswish")


def assert_close(out, expected, dtype):
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), expected.double(), **TOLERANCES[dtype])


@pytest.mark.parametrize("name", ["hswish", "hsigmoid"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_activations(name, dtype):
    base = randn(2, 9, 11, 7, dtype=dtype, scale=4)
    for x in (base, base.to(memory_format=torch.channels_last), base[:, ::2, 1:], base[0, 0, :, 3]):
        out = getattr(tt, name)(x)
        assert out.shape == x.shape
        assert_close(out, getattr(reference_ops, name)(x.double()), dtype)
    nan = torch.tensor([float("nan"), 1.0], dtype=dtype)
    assert getattr(tt, name)(nan)[0].isnan()


def dw_args(N, C, H, W, k, dtype, memory_format, seed=0):
    x = randn(N, C, H, W, dtype=dtype, memory_format=memory_format, seed=seed)
    return x, randn(C, 1, k, k, dtype=dtype, seed=seed + 1, scale=0.3), randn(C, dtype=dtype, seed=seed + 2)


def check_dw(x, w, b, stride, dilation, act):
    pad = (w.shape[-1] - 1) // 2 * dilation
    out = tt.dw_conv_bn_act(x, w, b, stride, pad, dilation, act)
    expected = reference_ops.dw_conv_bn_act(x.double(), w.double(), None if b is None else b.double(), stride, pad, dilation, act)
    assert out.is_contiguous(memory_format=reference_ops.output_memory_format(x))
    assert_close(out, expected, x.dtype)
    return out


@pytest.mark.parametrize("memory_format", MEMORY_FORMATS)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("k,stride,dilation", [(3, 1, 1), (3, 2, 1), (5, 1, 1), (5, 2, 1), (3, 1, 2), (5, 2, 2)])
def test_dw_conv_every_configuration(k, stride, dilation, act, memory_format):
    check_dw(*dw_args(2, 12, 9, 11, k, torch.float32, memory_format, seed=k), stride, dilation, act)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("memory_format", MEMORY_FORMATS)
def test_dw_conv_half_precision(dtype, memory_format):
    check_dw(*dw_args(2, 24, 13, 13, 5, dtype, memory_format), 2, 1, "hswish")


def test_dw_conv_batch1_sliced_no_bias_and_empty():
    x, w, b = dw_args(3, 8, 12, 12, 3, torch.float32, torch.contiguous_format)
    check_dw(x[:1], w, None, 1, 1, "relu")
    check_dw(x[:, :, 1:, ::2], w, b, 1, 1, "hswish")
    check_dw(x.to(memory_format=torch.channels_last)[:, :, 2:-1], w, b, 2, 1, "none")
    assert tt.dw_conv_bn_act(x[:0], w, b, 1, 1, 1, "relu").shape == (0, 8, 12, 12)


@pytest.mark.parametrize("memory_format", MEMORY_FORMATS)
def test_dw_conv_pool_sums_feed_squeeze_excite(memory_format):
    x, w, b = dw_args(2, 16, 9, 9, 3, torch.float32, memory_format)
    out, sums = tt.dw_conv_bn_act(x, w, b, 1, 1, 1, "hswish", return_sums=True)
    torch.testing.assert_close(sums, out.double().sum(dim=(2, 3)).float(), rtol=1e-5, atol=1e-4)
    w1, b1, w2, b2 = randn(8, 16, seed=5), randn(8, seed=6), randn(16, 8, seed=7), randn(16, seed=8)
    fused = tt.squeeze_excite(out, w1, b1, w2, b2, pool_sums=sums)
    assert_close(fused, reference_ops.squeeze_excite(out.double(), w1.double(), b1.double(), w2.double(), b2.double()),
                 torch.float32)


def se_args(N, C, S, H, W, dtype, memory_format, seed=0):
    x = randn(N, C, H, W, dtype=dtype, memory_format=memory_format, seed=seed)
    w1 = randn(S, C, dtype=dtype, seed=seed + 1, scale=C**-0.5 * 4)
    w2 = randn(C, S, 1, 1, dtype=dtype, seed=seed + 2, scale=S**-0.5 * 4)
    return x, w1, randn(S, dtype=dtype, seed=seed + 3), w2, randn(C, dtype=dtype, seed=seed + 4)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("memory_format", MEMORY_FORMATS)
@pytest.mark.parametrize("N,C,S,H,W", [(1, 8, 8, 7, 7), (2, 24, 8, 9, 13), (2, 20, 5, 11, 10)])
def test_squeeze_excite(N, C, S, H, W, memory_format, dtype):
    args = se_args(N, C, S, H, W, dtype, memory_format, seed=C)
    out = tt.squeeze_excite(*args)
    assert out.is_contiguous(memory_format=reference_ops.output_memory_format(args[0]))
    assert_close(out, reference_ops.squeeze_excite(*(a.double() for a in args)), dtype)


def test_squeeze_excite_sliced_and_empty():
    x, w1, b1, w2, b2 = se_args(2, 16, 8, 10, 12, torch.float32, torch.contiguous_format)
    sliced = x[:, :, 1::2, 3:]
    assert_close(tt.squeeze_excite(sliced, w1, b1, w2, b2),
                 reference_ops.squeeze_excite(sliced.double(), w1.double(), b1.double(), w2.double(), b2.double()),
                 torch.float32)
    assert tt.squeeze_excite(x[:0], w1, b1, w2, b2).shape == (0, 16, 10, 12)


def test_launchers_check_their_arguments():
    x, w, b = dw_args(2, 8, 6, 6, 3, torch.float32, torch.contiguous_format)
    with pytest.raises(ValueError, match="'none', 'relu', 'hswish', got 'gelu'"):
        tt.dw_conv_bn_act(x, w, b, 1, 1, 1, "gelu")
    with pytest.raises(ValueError, match=r"weight of shape \(8, 1, k, k\)"):
        tt.dw_conv_bn_act(x, w[:3], b, 1, 1, 1, "relu")
    with pytest.raises(TypeError, match="float32, float64, bfloat16 or float16, got torch.int64"):
        tt.hswish(torch.arange(4))
