"""The CUDA backend's Triton kernels on CPU tensors under the Triton interpreter, against the
float64 references: the pointwise GEMM (bias, activation, residual, SE-gate prologue, pooled
output), the stem conv, the depthwise conv with its deterministic pool sums, the SE gate from
pool sums, the classifier head; and the launcher regressions of issue 14 item 20.

conftest.py turns the interpreter on before triton is imported (machines without an NVIDIA
GPU); on a GPU machine tests/test_cuda.py checks the compiled kernels instead.  Shapes are
tiny but chosen to cross every tile edge: odd channel counts (masked tiles), more rows than
one M block, more K than one K block, more Cout than one N block, more images than one SE
gate program.  Outputs are poisoned (NaN-filled allocations) so a skipped element fails.
"""
import importlib
import os

import pytest
import torch
from conftest import assert_close, randn

from mnv3_fast.ops import reference_ops

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("the Triton interpreter is off (a GPU machine): tests/test_cuda.py covers the kernels",
                allow_module_level=True)

import mnv3_fast.ops.triton as tt  # noqa: E402

dw_module = importlib.import_module("mnv3_fast.ops.triton.dw_conv_bn_act")
se_gate_module = importlib.import_module("mnv3_fast.ops.triton.se_gate")

pytestmark = pytest.mark.usefixtures("poison_outputs")

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
ACTS = ("none", "relu", "hswish")
CL = torch.channels_last


def d(t):
    return None if t is None else t.double()


def rounded(t, dtype):
    """t rounded to dtype as a kernel's intermediate is: the interpreter (triton 3.6-3.8) casts
    fp32 to bf16 by truncation, where the GPU rounds to nearest (fp16 rounds to nearest in both)."""
    if dtype == torch.bfloat16:
        bits = t.float().view(torch.int32) & -65536  # keep sign, exponent and the top 7 mantissa bits
        return bits.view(torch.float32).to(dtype)
    return t.to(dtype)


# ---------------------------------------------------------------- pointwise GEMM

# (N, Cin, H, W, Cout, memory format): one M block and several; K within one block and over
# two (70 > 64, masked); Cout masked, exact, and over one N block (130 > 128).
PW_SHAPES = [(1, 17, 5, 7, 9, CL), (3, 24, 7, 7, 40, CL), (3, 70, 6, 9, 130, torch.contiguous_format),
             (1, 33, 12, 12, 21, torch.contiguous_format)]
PW_MODES = ["plain", "residual", "gate", "gate+residual", "pool", "pool+gate+residual"]


def pw_inputs(N, C, H, W, cout, memory_format, dtype, mode, seed=0):
    x = randn(N, C, H, W, dtype=dtype, memory_format=memory_format, seed=seed, scale=2)
    w = randn(cout, C, 1, 1, dtype=dtype, seed=seed + 1, scale=C**-0.5)
    b = randn(cout, dtype=dtype, seed=seed + 2)
    res = randn(N, cout, H, W, dtype=dtype, memory_format=memory_format, seed=seed + 3) if "residual" in mode else None
    gate = torch.rand(N, C, generator=torch.Generator().manual_seed(seed + 4)) if "gate" in mode else None
    return x, w, b, res, gate


def pw_expected(x, w, b, act, res, gate, pool):
    if gate is not None:  # the kernel rounds the gated input to x's dtype, as a separate SE op's output is
        x = rounded(x.double() * gate.double()[:, :, None, None], x.dtype)
    return reference_ops.pw_conv_bn_act(d(x), d(w), d(b), act, d(res), None, pool)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("mode", PW_MODES)
def test_pw_conv_bn_act(mode, act, dtype):
    pool = "pool" in mode
    for i, shape in enumerate(PW_SHAPES):
        x, w, b, res, gate = pw_inputs(*shape, dtype, mode, seed=i)
        bias = None if i == 2 else b
        out = tt.pw_conv_bn_act(x, w if i % 2 else w.flatten(1), bias, act, res, gate, pool)
        expected = pw_expected(x, w, bias, act, res, gate, pool)
        if pool:
            assert out.shape == (shape[0], shape[4])
        else:
            assert out.is_contiguous(memory_format=shape[5])
        assert_close(out, expected, dtype)


def test_pw_conv_gate_in_x_dtype_strided_weight_and_sliced_input():
    x, w, b, res, gate = pw_inputs(2, 24, 9, 8, 40, CL, torch.float16, "gate+residual")
    out = tt.pw_conv_bn_act(x, w, b, "hswish", res, gate.half())
    assert_close(out, pw_expected(x, w, b, "hswish", res, gate.half(), False), torch.float16)
    w_t = w.flatten(1).t().contiguous().t()  # the CUDA backend's layout: a (Cin, Cout) matrix, transposed
    assert_close(tt.pw_conv_bn_act(x, w_t, b, "relu"), pw_expected(x, w, b, "relu", None, None, False), torch.float16)
    sliced = randn(2, 24, 12, 12, seed=5)[:, :, 1::2, 2:10]
    assert_close(tt.pw_conv_bn_act(sliced, w.float(), b.float(), "none"),
                 reference_ops.pw_conv_bn_act(d(sliced), d(w), d(b), "none"), torch.float32)


def test_pw_conv_nan_in_nan_out_and_deterministic_pool():
    x, w, b, _, _ = pw_inputs(3, 24, 7, 7, 40, CL, torch.float16, "plain")
    x[1, 5, 2, 3] = float("nan")
    out = tt.pw_conv_bn_act(x, w, b, "relu")
    assert out[1, :, 2, 3].isnan().all()
    out[1, :, 2, 3] = 0
    assert not out.isnan().any()
    pooled = tt.pw_conv_bn_act(x, w, b, "hswish", pool=True)
    assert pooled[1].isnan().all() and not pooled[[0, 2]].isnan().any()
    x[1, 5, 2, 3] = 1.0
    first = tt.pw_conv_bn_act(x, w, b, "hswish", pool=True)
    assert torch.equal(first, tt.pw_conv_bn_act(x, w, b, "hswish", pool=True))


def test_pw_conv_edge_sizes():
    x, w, b, _, _ = pw_inputs(2, 8, 3, 3, 5, CL, torch.float32, "plain")
    assert tt.pw_conv_bn_act(x[:0], w, b, "relu").shape == (0, 5, 3, 3)
    no_channels = tt.pw_conv_bn_act(x[:, :0], w[:, :0], b, "hswish")  # the conv is its bias
    assert_close(no_channels, reference_ops.hswish(d(b))[None, :, None, None].expand(2, 5, 3, 3), torch.float32)


# ---------------------------------------------------------------- stem

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("layout", ["nchw", "nhwc", "sliced"])
def test_stem_conv(layout, act, dtype):
    for N, H, W, cout, k, stride in [(1, 11, 9, 16, 3, 2), (3, 8, 13, 13, 3, 2), (1, 7, 7, 8, 5, 1)]:
        x = randn(N, 3, H + 2, W + 1, dtype=dtype, seed=H, scale=2)
        x = {"nchw": x, "nhwc": x.contiguous(memory_format=CL), "sliced": x}[layout]
        x = x[:, :, 1:-1, 1:] if layout == "sliced" else x[:, :, :H, :W]
        w, b = randn(cout, 3, k, k, dtype=dtype, seed=1, scale=0.3), randn(cout, dtype=dtype, seed=2)
        out = tt.stem_conv(x, w, b, stride, k // 2, act)
        assert out.is_contiguous(memory_format=CL)
        assert_close(out, reference_ops.stem_conv(d(x), d(w), d(b), stride, k // 2, act), dtype)


def test_stem_conv_nan_and_no_bias():
    x = randn(1, 3, 9, 9, dtype=torch.float16)
    x[0, 1, 4, 4] = float("nan")
    w = randn(16, 3, 3, 3, dtype=torch.float16, scale=0.3)
    out = tt.stem_conv(x, w, None, 2, 1, "hswish")
    nan = out.isnan()
    assert nan[0, :, 2, 2].all() and nan.sum() == 16  # only the one output pixel whose window holds it
    x[0, 1, 4, 4] = 0.5
    assert_close(tt.stem_conv(x, w, None, 2, 1, "relu"), reference_ops.stem_conv(d(x), d(w), None, 2, 1, "relu"),
                 torch.float16)


# ---------------------------------------------------------------- depthwise (spill-free tiles, pool sums)

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("C,k,stride", [(24, 3, 1), (72, 5, 2), (12, 5, 1), (40, 3, 2)])
def test_dw_conv_channels_last_tiles_and_partial_sums(C, k, stride, dtype):
    """Channel counts that give the even (unmasked, vectorized) and the masked tile, the weights
    in the CUDA backend's (k, k, C) layout, and the first-stage pool sums: each equal to the sum
    of the stored output over its pixel block, their total the per-channel sum."""
    N, H = (3, 9) if C < 50 else (1, 11)
    x = randn(N, C, H, H, dtype=dtype, memory_format=CL, seed=C, scale=2)
    w = randn(C, 1, k, k, dtype=dtype, seed=1, scale=0.3)
    w_kkc = w.permute(2, 3, 1, 0).contiguous().permute(3, 2, 0, 1)  # (C, 1, k, k) view of a (k, k, 1, C) tensor
    b = randn(C, dtype=dtype, seed=2)
    Ho = (H + 2 * (k // 2) - k) // stride + 1
    out = torch.empty(N, C, Ho, Ho, dtype=dtype, memory_format=CL)
    partials = dw_module.new_partials(out)
    dw_module.launch(x, w_kkc, b, out, partials, stride, k // 2, 1, "hswish")
    assert_close(out, reference_ops.dw_conv_bn_act(d(x), d(w), d(b), stride, k // 2, 1, "hswish"), dtype)
    block_p = dw_module.tile(out)[0]
    flat = out.double().flatten(2)  # (N, C, pixels)
    pad = partials.shape[1] * block_p - flat.shape[2]
    blocks = torch.nn.functional.pad(flat, (0, pad)).unflatten(2, (partials.shape[1], block_p)).sum(3)
    torch.testing.assert_close(partials.double(), blocks.transpose(1, 2), rtol=1e-6, atol=1e-4)
    again = dw_module.new_partials(out)
    dw_module.launch(x, w_kkc, b, out, again, stride, k // 2, 1, "hswish")
    assert torch.equal(partials, again)  # deterministic: no atomics


def test_dw_conv_strided_bias_is_read_through_its_stride():
    """Issue 14 item 20: the launcher read a strided bias as if contiguous (max error 2.16)."""
    x = randn(2, 4, 7, 7, memory_format=CL)
    w = randn(4, 1, 3, 3, seed=1, scale=0.3)
    bias = torch.randn(8, generator=torch.Generator().manual_seed(3))[::2]
    assert not bias.is_contiguous()
    for inp in (x, x.contiguous()):
        assert_close(tt.dw_conv_bn_act(inp, w, bias, 1, 1, 1, "relu"),
                     reference_ops.dw_conv_bn_act(d(inp), d(w), d(bias), 1, 1, 1, "relu"), torch.float32)


def test_dw_conv_return_sums_and_nan():
    x = randn(2, 16, 9, 9, memory_format=CL)
    w, b = randn(16, 1, 3, 3, seed=1, scale=0.3), randn(16, seed=2)
    out, sums = tt.dw_conv_bn_act(x, w, b, 1, 1, 1, "hswish", return_sums=True)
    torch.testing.assert_close(sums.double(), out.double().sum(dim=(2, 3)), rtol=1e-6, atol=1e-4)
    x[1, 3, 4, 4] = float("nan")
    out, sums = tt.dw_conv_bn_act(x, w, b, 1, 1, 1, "relu", return_sums=True)
    assert out[1, 3, 3:6, 3:6].isnan().all() and out.isnan().sum() == 9
    assert sums[1, 3].isnan() and sums.isnan().sum() == 1


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, CL])
def test_dw_conv_pool_sums_feed_squeeze_excite(memory_format):
    """The generic path's fusion: the depthwise kernel's pool sums replace SE's pooling pass."""
    x = randn(2, 16, 9, 9, memory_format=memory_format)
    w, b = randn(16, 1, 3, 3, seed=1, scale=0.3), randn(16, seed=2)
    out, sums = tt.dw_conv_bn_act(x, w, b, 1, 1, 1, "hswish", return_sums=True)
    w1, b1, w2, b2 = randn(8, 16, seed=5), randn(8, seed=6), randn(16, 8, seed=7), randn(16, seed=8)
    fused = tt.squeeze_excite(out, w1, b1, w2, b2, pool_sums=sums)
    assert_close(fused, reference_ops.squeeze_excite(d(out), d(w1), d(b1), d(w2), d(b2)), torch.float32)


# ---------------------------------------------------------------- SE gate from pool sums

def se_weights(C, S, dtype, seed=0):
    return (randn(S, C, dtype=dtype, seed=seed, scale=C**-0.5 * 4), randn(S, dtype=dtype, seed=seed + 1),
            randn(C, S, 1, 1, dtype=dtype, seed=seed + 2, scale=max(S, 1)**-0.5 * 4), randn(C, dtype=dtype, seed=seed + 3))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,B,C,S", [(1, 1, 8, 8), (3, 4, 20, 5), (17, 2, 72, 24), (2, 3, 160, 40)])
def test_se_gate(N, B, C, S, dtype):
    """More images than one program (17 > 16), C over several chunks, odd C and S, (N, C) and
    (N, blocks, C) sums."""
    sums = randn(N, B, C, seed=C, scale=30)
    args = se_weights(C, S, dtype, seed=S)
    gate = tt.se_gate(sums, *args, 49)
    assert gate.dtype == torch.float32 and gate.shape == (N, C)
    torch.testing.assert_close(gate.double(), reference_ops.se_gate(d(sums), *(d(a) for a in args), 49),
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tt.se_gate(sums.sum(1), *args, 49), gate, rtol=1e-5, atol=1e-6)


def test_se_gate_nan_and_zero_squeeze_width():
    sums = randn(3, 2, 24, scale=10)
    sums[1, 0, 5] = float("nan")
    gate = tt.se_gate(sums, *se_weights(24, 6, torch.float32), 9)
    assert gate[1].isnan().all() and not gate[[0, 2]].isnan().any()
    w1, b1, w2, b2 = se_weights(24, 0, torch.float32)  # S = 0: the gate is hsigmoid(b2)
    torch.testing.assert_close(tt.se_gate(sums, w1, b1, w2, b2, 9), reference_ops.hsigmoid(b2).expand(3, 24))


def test_squeeze_excite_zero_squeeze_width():
    """Issue 14 item 20: S = 0 raised ZeroDivisionError; the C++ kernel and the reference give x * hsigmoid(b2)."""
    x = randn(2, 8, 5, 5, memory_format=CL)
    w1, b1, w2, b2 = se_weights(8, 0, torch.float32)
    out = tt.squeeze_excite(x, w1, b1, w2, b2)
    assert_close(out, reference_ops.squeeze_excite(d(x), d(w1), d(b1), d(w2), d(b2)), torch.float32)


# ---------------------------------------------------------------- classifier head

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ACTS)
def test_classifier_head(act, dtype):
    for N, C, hidden, classes in [(1, 40, 37, 10), (3, 96, 130, 17)]:
        pooled = randn(N, C, dtype=dtype, seed=C, scale=2)
        w1, b1 = randn(hidden, C, 1, 1, dtype=dtype, seed=1, scale=C**-0.5), randn(hidden, dtype=dtype, seed=2)
        w2, b2 = randn(classes, hidden, dtype=dtype, seed=3, scale=hidden**-0.5), randn(classes, dtype=dtype, seed=4)
        out = tt.classifier_head(pooled, w1, b1, w2, None if N == 1 else b2, act)
        # The hidden activations are rounded to the dtype between the two linears, as in the reference model.
        h = rounded(reference_ops.activation(torch.nn.functional.linear(d(pooled), d(w1).flatten(1), d(b1)), act), dtype)
        expected = torch.nn.functional.linear(d(h), d(w2), None if N == 1 else d(b2))
        assert_close(out, expected, dtype)
    pooled[0, 3] = float("nan")
    out = tt.classifier_head(pooled, w1, b1, w2, b2, act)
    assert out[0].isnan().all() and not out[1:].isnan().any()


def test_launchers_check_their_arguments():
    x = randn(2, 8, 6, 6)
    with pytest.raises(TypeError, match="float32, bfloat16 or float16 in a Triton kernel, got torch.float64"):
        tt.pw_conv_bn_act(x.double(), randn(4, 8).double(), None, "relu")
    with pytest.raises(ValueError, match=r"expected residual of shape \(2, 4, 6, 6\)"):
        tt.pw_conv_bn_act(x, randn(4, 8), None, "relu", residual=randn(2, 4, 6, 5))
    with pytest.raises(ValueError, match=r"expected gate of shape \(2, 8\)"):
        tt.pw_conv_bn_act(x, randn(4, 8), None, "relu", gate=randn(2, 4))
    with pytest.raises(ValueError, match="at most 4 channels, got 8"):
        tt.stem_conv(x, randn(16, 8, 3, 3), None, 2, 1, "hswish")
    with pytest.raises(TypeError, match="expected sums to be float32 in a Triton kernel"):
        tt.se_gate(randn(2, 8).double(), *se_weights(8, 2, torch.float32), 4)
    with pytest.raises(ValueError, match="'none', 'relu', 'hswish', got 'gelu'"):
        tt.classifier_head(randn(2, 8), randn(4, 8), None, randn(3, 4), None, "gelu")
