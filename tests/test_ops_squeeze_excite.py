"""mnv3::squeeze_excite against the eager pool / conv / relu / conv / hardsigmoid / mul chain, on every
target (the C++ kernels, the Triton kernels under the interpreter, on CUDA: see `target` in conftest.py)."""
import pytest
import torch
import torch.nn.functional as F
from conftest import MEMORY_FORMATS, assert_close, randn

from mnv3_fast import ops
from mnv3_fast.ops import reference_ops

# (channels, squeeze channels) of every SE in MobileNetV3-Large and -Small (paper variant).
SE_SHAPES = [(72, 24), (120, 32), (480, 120), (672, 168), (960, 240), (16, 8), (96, 24), (240, 64), (144, 40),
             (288, 72), (576, 144)]


def make_args(N, C, S, H, W, dtype=torch.float32, memory_format=torch.contiguous_format, conv_shapes=False, seed=0):
    x = randn(N, C, H, W, dtype=dtype, memory_format=memory_format, seed=seed)
    w1 = randn(S, C, dtype=dtype, seed=seed + 1, scale=C**-0.5 * 4)
    w2 = randn(C, S, dtype=dtype, seed=seed + 2, scale=S**-0.5 * 4)  # gates spread over all of hsigmoid's range
    b1, b2 = randn(S, dtype=dtype, seed=seed + 3), randn(C, dtype=dtype, seed=seed + 4)
    if conv_shapes:
        w1, w2 = w1[:, :, None, None], w2[:, :, None, None]
    return x, w1, b1, w2, b2


def check(args, op=None):
    """`op` (default: torch.ops.mnv3's) against the float64 reference, in x's layout."""
    out = (op or torch.ops.mnv3.squeeze_excite)(*args)
    expected = reference_ops.squeeze_excite(*(t.double() for t in args))
    assert out.shape == args[0].shape
    assert out.is_contiguous(memory_format=reference_ops.output_memory_format(args[0]))
    assert_close(out, expected, args[0].dtype)
    return out


def check_on(target, args):
    return check([target.to(t) for t in args], op=target.ops.squeeze_excite)


def test_reference_matches_the_eager_chain():
    x, w1, b1, w2, b2 = make_args(2, 24, 8, 7, 9, torch.float64, conv_shapes=True)
    pooled = F.adaptive_avg_pool2d(x, 1)
    gate = F.hardsigmoid(F.conv2d(F.relu(F.conv2d(pooled, w1, b1)), w2, b2))
    torch.testing.assert_close(reference_ops.squeeze_excite(x, w1, b1, w2, b2), x * gate)


@pytest.mark.parametrize("memory_format", MEMORY_FORMATS)
@pytest.mark.parametrize("C,S", SE_SHAPES)
def test_mobilenet_layer_shapes(target, dtype, poison_outputs, C, S, memory_format):
    """Every SE's widths; on CUDA also at the largest map an SE sees (28x28) and batch 8; on the CPU batch 6
    (its matrix products take samples in blocks of 4: one block and a tail)."""
    if target.tiny and C > 144:
        pytest.skip("the interpreter runs the wide layers too slowly; the cuda target covers them")
    sizes = [(1, 7, 7), (3, 9, 13)] + ([(8, 28, 28)] if target.device == "cuda" else
                                       [(6, 5, 3)] if not target.tiny else [])
    for N, H, W in sizes:
        check_on(target, make_args(N, C, S, H, W, dtype, memory_format, conv_shapes=C % 2 == 0, seed=C))


@pytest.mark.parametrize("memory_format", MEMORY_FORMATS)
def test_odd_and_large_sizes(target, poison_outputs, memory_format):
    shapes = [(2, 13, 5, 11, 9), (1, 20, 5, 1, 1), (5, 3, 1, 3, 2)] if target.tiny else [
        (2, 13, 5, 11, 9), (1, 200, 9, 1, 1), (2, 72, 24, 57, 56), (5, 3, 1, 3, 2)]
    for N, C, S, H, W in shapes:
        check_on(target, make_args(N, C, S, H, W, memory_format=memory_format))


def test_sliced_non_contiguous_and_empty(target, poison_outputs):
    x, w1, b1, w2, b2 = make_args(4, 16, 8, 10, 12)
    for sliced in (x[:, :, 1::2, 3:], x[1:3].transpose(2, 3), x.to(memory_format=torch.channels_last)[:, :, 2:-1]):
        check_on(target, (sliced, w1, b1, w2, b2))
    check_on(target, (x, torch.randn(16, 8).t(), b1, w2.t().contiguous().t(), b2))  # non-contiguous weights
    check_on(target, (x[:0], w1, b1, w2, b2))
    check_on(target, (x[:, :, :0], w1, b1, w2, b2))  # no pixels: an empty output, not a division by zero
    check_on(target, (x, w1[:0], b1[:0], w2[:, :0], b2))  # S = 0 (issue 14: a ZeroDivisionError in Triton)


def test_nan_in_nan_out(target):
    x, w1, b1, w2, b2 = make_args(2, 16, 8, 5, 5)
    x[1, 3, 2, 2] = float("nan")
    out = target.ops.squeeze_excite(*(target.to(t) for t in (x, w1, b1, w2, b2))).cpu()
    assert out[1].isnan().any() and not out[0].isnan().any()


@pytest.mark.parametrize("memory_format", MEMORY_FORMATS)
@pytest.mark.parametrize("conv_shapes", [False, True])
def test_gradcheck(memory_format, conv_shapes):
    args = make_args(2, 6, 3, 4, 5, torch.float64, memory_format, conv_shapes)
    assert torch.autograd.gradcheck(torch.ops.mnv3.squeeze_excite, [t.requires_grad_() for t in args])


@pytest.mark.parametrize(
    "memory_format,dtype,conv_shapes",
    [(torch.contiguous_format, torch.float32, False), (torch.channels_last, torch.float32, True),
     (torch.channels_last, torch.float64, False), (torch.contiguous_format, torch.bfloat16, True)],
)
def test_opcheck(memory_format, dtype, conv_shapes):
    args = make_args(2, 16, 8, 5, 7, dtype, memory_format, conv_shapes)
    torch.library.opcheck(torch.ops.mnv3.squeeze_excite.default, args)
    if dtype != torch.bfloat16:
        torch.library.opcheck(torch.ops.mnv3.squeeze_excite.default, [t.clone().requires_grad_() for t in args])


def test_compiles_fullgraph():
    x, w1, b1, w2, b2 = make_args(2, 16, 8, 5, 7)
    f = lambda x: ops.squeeze_excite(ops.hswish(x), w1, b1, w2, b2)  # noqa: E731
    torch.testing.assert_close(torch.compile(f, fullgraph=True, backend="aot_eager")(x), f(x))


BAD_INPUTS = [
    (lambda x, w1, b1, w2, b2: (x[0], w1, b1, w2, b2), ValueError, r"4-D \(N, C, H, W\).*3-D"),
    (lambda x, w1, b1, w2, b2: (x, w1[:, :5], b1, w2, b2), ValueError, r"w1 of shape \(4, 8\).*\[4, 5\]"),
    (lambda x, w1, b1, w2, b2: (x, w1, b1, w2.t(), b2), ValueError, r"w2 of shape \(8, 4\).*\[4, 8\]"),
    (lambda x, w1, b1, w2, b2: (x, w1, b1[:2], w2, b2), ValueError, r"b1 of shape \(4\)"),
    (lambda x, w1, b1, w2, b2: (x, w1, b1, w2, b2[:, None]), ValueError, r"b2 of shape \(8\)"),
    (lambda x, w1, b1, w2, b2: (x, w1[:, :, None], b1, w2, b2), ValueError, r"\(4, 8, 1, 1\)"),
    (lambda x, w1, b1, w2, b2: (x, w1.double(), b1, w2, b2), TypeError, "w1 to have the same dtype"),
    (lambda x, w1, b1, w2, b2: (x.half(), w1.half(), b1.half(), w2.half(), b2.half()), TypeError, "bfloat16 on the CPU"),
    (lambda x, w1, b1, w2, b2: (x, w1, b1, w2, b2.to("meta")), ValueError, "b2 on the same device"),
]


@pytest.mark.parametrize("make_bad,error,match", BAD_INPUTS)
def test_bad_input_gets_a_clear_error(make_bad, error, match):
    args = make_bad(*make_args(2, 8, 4, 5, 5))
    with pytest.raises(error, match=match):
        torch.ops.mnv3.squeeze_excite(*args)
    with pytest.raises(error, match=match):
        reference_ops.squeeze_excite(*args)
