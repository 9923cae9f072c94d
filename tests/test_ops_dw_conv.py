"""mnv3::dw_conv_bn_act against F.conv2d(groups=C) + batch_norm + activation, on every target (the
C++ kernels, the Triton kernels under the interpreter, on CUDA: see `target` in conftest.py)."""
import itertools

import pytest
import torch
import torch.nn.functional as F
from conftest import MEMORY_FORMATS, assert_close, randn
from torch import nn

from mnv3_fast import fold_bn, ops
from mnv3_fast.ops import reference_ops

ACTS = ("none", "relu", "hswish")

# (channels, kernel, stride, input size at 224x224) of every depthwise layer in MobileNetV3-Large and -Small.
LARGE_LAYERS = [(16, 3, 1, 112), (64, 3, 2, 112), (72, 3, 1, 56), (72, 5, 2, 56), (120, 5, 1, 28), (240, 3, 2, 28),
                (200, 3, 1, 14), (184, 3, 1, 14), (480, 3, 1, 14), (672, 3, 1, 14), (672, 5, 2, 14), (960, 5, 1, 7)]
SMALL_LAYERS = [(16, 3, 2, 112), (72, 3, 2, 56), (88, 3, 1, 28), (96, 5, 2, 28), (240, 5, 1, 14), (120, 5, 1, 14),
                (144, 5, 1, 14), (288, 5, 2, 14), (576, 5, 1, 7)]


def make_args(N, C, H, W, k, dtype=torch.float32, memory_format=torch.contiguous_format, seed=0, with_bias=True):
    x = randn(N, C, H, W, dtype=dtype, memory_format=memory_format, seed=seed)
    weight = randn(C, 1, k, k, dtype=dtype, seed=seed + 1, scale=0.3)
    bias = randn(C, dtype=dtype, seed=seed + 2) if with_bias else None
    return x, weight, bias


def check(x, weight, bias, stride, dilation, act, padding=None, op=None):
    """`op` (default: torch.ops.mnv3's) against the float64 reference, in x's layout."""
    op = op or torch.ops.mnv3.dw_conv_bn_act
    k = weight.shape[-1]
    padding = (k - 1) // 2 * dilation if padding is None else padding
    out = op(x, weight, bias, stride, padding, dilation, act)
    b64 = None if bias is None else bias.double()
    expected = reference_ops.dw_conv_bn_act(x.double(), weight.double(), b64, stride, padding, dilation, act)
    assert out.shape == expected.shape
    assert out.is_contiguous(memory_format=reference_ops.output_memory_format(x))
    assert_close(out, expected, x.dtype)
    return out


def check_on(target, x, weight, bias, stride, dilation, act, padding=None):
    return check(*(target.to(t) for t in (x, weight, bias)), stride, dilation, act, padding,
                 op=target.ops.dw_conv_bn_act)


@pytest.mark.parametrize("memory_format", MEMORY_FORMATS)
@pytest.mark.parametrize("layer", LARGE_LAYERS + SMALL_LAYERS, ids=lambda l: f"C{l[0]}k{l[1]}s{l[2]}")
def test_mobilenet_layer_shapes(target, dtype, poison_outputs, layer, memory_format):
    """Every layer's channels and kernel; on CUDA at its real size (batch 1 and 8), elsewhere on 11x9 maps."""
    C, k, s, size = layer
    if target.tiny and C > 96:
        pytest.skip("the interpreter runs the wide layers too slowly; the cuda target covers them")
    act = ACTS[C % 3]
    for N, H, W in [(1, size, size), (8, size, size)] if target.device == "cuda" else [(2, 11, 9)]:
        x, w, b = make_args(N, C, H, W, k, dtype, memory_format, seed=C)
        check_on(target, x, w, b, s, 1, act)


@pytest.mark.parametrize("memory_format", MEMORY_FORMATS)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("k,stride,dilation", list(itertools.product((3, 5), (1, 2), (1, 2))))
def test_every_configuration(target, dtype, poison_outputs, k, stride, dilation, act, memory_format):
    if target.tiny and dtype != torch.float32 and (act != "hswish" or k != 5):
        pytest.skip("the interpreter: half precisions on one configuration per layout (the tiles are the same)")
    sizes = [(1, 8, 7, 13), (3, 13, 12, 9)]  # batch 1 and > 1, odd sizes, C not a multiple of 8
    if not target.tiny:
        sizes.append((1, 20, 3, 61))  # rows of several blocks and segments (the CPU kernel's units), a partial last
    for N, C, H, W in sizes:
        x, w, b = make_args(N, C, H, W, k, dtype, memory_format, seed=N + k)
        check_on(target, x, w, b, stride, dilation, act)


def test_sliced_strided_bias_no_bias_and_empty(target, poison_outputs):
    x, w, b = make_args(3, 8, 12, 12, 3)
    check_on(target, x[:1], w, None, 1, 1, "relu")
    check_on(target, x[:, :, 1:, ::2], w, b, 1, 1, "hswish")
    check_on(target, x.to(memory_format=torch.channels_last)[:, :, 2:-1], w, b, 2, 1, "none")
    check_on(target, x, w, randn(16)[::2], 1, 1, "relu")  # a strided bias (issue 14: read as contiguous)
    # The CPU program's weight layout, (k, k, C) in memory, which the channels_last kernel uses as it is.
    tap_major = w.permute(2, 3, 1, 0).contiguous().permute(3, 2, 0, 1)
    check_on(target, x.to(memory_format=torch.channels_last), tap_major, b, 1, 1, "hswish")
    check_on(target, x, tap_major, b, 2, 1, "relu")
    assert target.ops.dw_conv_bn_act(*(target.to(t) for t in (x[:0], w, b)), 1, 1, 1, "relu").shape == (0, 8, 12, 12)


def test_nan_in_nan_out(target):
    x, w, b = make_args(2, 8, 9, 9, 3)
    x[1, 3, 4, 4] = float("nan")
    out = target.ops.dw_conv_bn_act(*(target.to(t) for t in (x, w, b)), 1, 1, 1, "relu").cpu()
    assert out[1, 3, 3:6, 3:6].isnan().all() and not out[0].isnan().any() and not out[1, :3].isnan().any()


@pytest.mark.parametrize("memory_format", MEMORY_FORMATS)
def test_padding_and_bias_variants(poison_outputs, memory_format):
    x, w, b = make_args(2, 24, 10, 11, 3, memory_format=memory_format)
    check(x, w, None, 1, 1, "relu")  # bias None
    for padding in (0, 2):  # "valid", "full" (the most the op takes: dilation * (k - 1))
        check(x, w, b, 2, 1, "hswish", padding=padding)


def test_larger_image_runs_in_parallel(poison_outputs):
    for memory_format in MEMORY_FORMATS:
        x, w, b = make_args(2, 40, 56, 57, 5, memory_format=memory_format)
        check(x, w, b, 1, 1, "hswish")


def test_equals_conv_bn_act_modules(poison_outputs):
    """The documented use: fold an eval-mode BN into the depthwise conv, then one op."""
    C = 24
    conv = nn.Conv2d(C, C, 5, 2, 2, groups=C, bias=False).double()
    bn = nn.BatchNorm2d(C, eps=1e-3).double()
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    bn.eval()
    x = randn(2, C, 15, 15, dtype=torch.float64)
    weight, bias = fold_bn(conv, bn)
    out = ops.dw_conv_bn_act(x, weight, bias, stride=2, act="hswish")
    torch.testing.assert_close(out, F.hardswish(bn(conv(x))))


@pytest.mark.parametrize("conv_bias", [False, True])
@pytest.mark.parametrize("affine", [False, True])
def test_fold_bn(conv_bias, affine):
    conv = nn.Conv2d(6, 6, 3, padding=1, groups=6, bias=conv_bias).double()
    bn = nn.BatchNorm2d(6, affine=affine).double()
    bn.train()(conv(randn(4, 6, 5, 5, dtype=torch.float64, seed=3)))  # non-trivial running stats
    bn.eval()
    x = randn(2, 6, 5, 5, dtype=torch.float64)
    weight, bias = fold_bn(conv, bn)
    torch.testing.assert_close(F.conv2d(x, weight, bias, padding=1, groups=6), bn(conv(x)))


def test_fold_bn_rejects_bn_without_running_stats():
    with pytest.raises(ValueError, match="running statistics"):
        fold_bn(nn.Conv2d(4, 4, 3, groups=4), nn.BatchNorm2d(4, track_running_stats=False))


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("memory_format", MEMORY_FORMATS)
@pytest.mark.parametrize("k,stride,dilation", [(3, 1, 1), (5, 2, 1), (3, 2, 2)])
def test_gradcheck(k, stride, dilation, memory_format, act):
    x, w, b = make_args(2, 3, 7, 6, k, torch.float64, memory_format)
    args = [t.requires_grad_() for t in (x, w, b)]
    pad = (k - 1) // 2 * dilation
    fn = lambda x, w, b: torch.ops.mnv3.dw_conv_bn_act(x, w, b, stride, pad, dilation, act)  # noqa: E731
    assert torch.autograd.gradcheck(fn, args)


def test_gradients_without_bias():
    x, w, _ = make_args(1, 4, 6, 6, 3, torch.float64)
    x.requires_grad_(), w.requires_grad_()
    assert torch.autograd.gradcheck(lambda x, w: ops.dw_conv_bn_act(x, w, None, act="hswish"), (x, w))


@pytest.mark.parametrize(
    "k,stride,dilation,act,memory_format,dtype",
    [
        (3, 1, 1, "relu", torch.contiguous_format, torch.float32),
        (5, 2, 1, "hswish", torch.channels_last, torch.float32),
        (3, 2, 2, "none", torch.channels_last, torch.float64),
        (5, 1, 2, "hswish", torch.contiguous_format, torch.float64),
        (3, 2, 1, "hswish", torch.channels_last, torch.bfloat16),
    ],
)
def test_opcheck(k, stride, dilation, act, memory_format, dtype):
    x, w, b = make_args(2, 8, 7, 9, k, dtype, memory_format)
    pad = (k - 1) // 2 * dilation
    torch.library.opcheck(torch.ops.mnv3.dw_conv_bn_act.default, (x, w, b, stride, pad, dilation, act))
    if dtype != torch.bfloat16:
        grads = [t.clone().requires_grad_() for t in (x, w, b)]
        torch.library.opcheck(torch.ops.mnv3.dw_conv_bn_act.default, (*grads, stride, pad, dilation, act))
    torch.library.opcheck(torch.ops.mnv3.dw_conv_bn_act.default, (x, w, None, stride, pad, dilation, act))


def test_compiles_fullgraph():
    x, w, b = make_args(2, 8, 9, 9, 3)
    f = lambda x: ops.dw_conv_bn_act(x, w, b, stride=2, act="hswish")  # noqa: E731
    torch.testing.assert_close(torch.compile(f, fullgraph=True, backend="aot_eager")(x), f(x))


BAD_INPUTS = [
    (lambda x, w, b: (x[0], w, b, 1, 1, 1, "relu"), ValueError, r"4-D \(N, C, H, W\).*3-D"),
    (lambda x, w, b: (x, w[:4], b, 1, 1, 1, "relu"), ValueError, r"weight of shape \(8, 1, k, k\).*\[4, 1, 3, 3\]"),
    (lambda x, w, b: (x, w, b[:3], 1, 1, 1, "relu"), ValueError, r"bias of shape \(8\).*\[3\]"),
    (lambda x, w, b: (x, torch.randn(8, 1, 7, 7), b, 1, 3, 1, "relu"), ValueError, "3x3 or 5x5 kernel, got 7x7"),
    (lambda x, w, b: (x, w, b, 3, 1, 1, "relu"), ValueError, "stride 1 or 2, got 3"),
    (lambda x, w, b: (x, w, b, 1, 1, 3, "relu"), ValueError, "dilation 1 or 2, got 3"),
    (lambda x, w, b: (x, w, b, 1, -1, 1, "relu"), ValueError, r"0 <= padding <= 2 \(dilation \* \(k - 1\)\) .* got -1"),
    (lambda x, w, b: (x, w, b, 1, 3, 1, "relu"), ValueError, r"0 <= padding <= 2 .* got 3"),
    (lambda x, w, b: (x, w, b, 2, 2**63 - 1, 1, "relu"), ValueError, r"0 <= padding <= 2 .* got 9223372036854775807"),
    # (issue 14: C++ division truncated a negative numerator to an output of 1x1)
    (lambda x, w, b: (x[:, :, :2, :2], w, b, 2, 0, 1, "none"), ValueError, "too small"),
    (lambda x, w, b: (x, w, b, 1, 1, 1, "gelu"), ValueError, "'none', 'relu', 'hswish', got '?gelu'?"),
    (lambda x, w, b: (x, w.double(), b, 1, 1, 1, "relu"), TypeError, "weight to have the same dtype as x"),
    (lambda x, w, b: (x.half(), w.half(), b.half(), 1, 1, 1, "relu"), TypeError, "bfloat16 on the CPU, got (Half|torch.float16)"),
    (lambda x, w, b: (x.int(), w.int(), b.int(), 1, 1, 1, "relu"), TypeError, "bfloat16 on the CPU, got (Int|torch.int32)"),
    (lambda x, w, b: (x[:, :, :1, :1], w, b, 1, 0, 1, "relu"), ValueError, "too small"),
    (lambda x, w, b: (x, w.to("meta"), b, 1, 1, 1, "relu"), ValueError, "same device"),
]


@pytest.mark.parametrize("make_bad,error,match", BAD_INPUTS)
def test_bad_input_gets_a_clear_error(make_bad, error, match):
    x, w, b = make_args(2, 8, 6, 6, 3)
    args = make_bad(x, w, b)
    with pytest.raises(error, match=match):
        torch.ops.mnv3.dw_conv_bn_act(*args)
    with pytest.raises(error, match=match):  # the reference (and so the fallback) says the same
        reference_ops.dw_conv_bn_act(*args)


def test_every_target_checks_its_arguments(target):
    x, w, b = (target.to(t) for t in make_args(2, 8, 6, 6, 3))
    op = target.ops.dw_conv_bn_act
    with pytest.raises(ValueError, match="'none', 'relu', 'hswish', got '?gelu'?"):
        op(x, w, b, 1, 1, 1, "gelu")
    with pytest.raises(ValueError, match=r"weight of shape \(8, 1, k, k\)"):
        op(x, w[:3], b, 1, 1, 1, "relu")
    with pytest.raises(ValueError, match=r"0 <= padding <= 2 .* got 3"):
        op(x, w, b, 1, 3, 1, "relu")
    with pytest.raises(ValueError, match="too small"):
        op(x[:, :, :2, :2], w, b, 2, 0, 1, "relu")
