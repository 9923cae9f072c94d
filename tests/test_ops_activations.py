"""mnv3::hswish and mnv3::hsigmoid against their references and PyTorch's own, on every target (the C++
kernels, the Triton kernels under the interpreter, on CUDA: see `target` in conftest.py)."""
import pytest
import torch
import torch.nn.functional as F
from conftest import MEMORY_FORMATS, assert_close, extension_required, randn

import mnv3_fast
from mnv3_fast import ops
from mnv3_fast.ops import reference_ops

OPS = {"hswish": (ops.hswish, reference_ops.hswish, F.hardswish), "hsigmoid": (ops.hsigmoid, reference_ops.hsigmoid, F.hardsigmoid)}


def test_cpu_kernels_are_loaded():
    # Without this, every other op test would silently test the fallbacks.
    if extension_required():
        assert ops.HAS_CPU_KERNELS, ops.EXTENSION_ERROR


def test_reference_matches_pytorch():
    x = randn(1000, dtype=torch.float64, scale=4)
    torch.testing.assert_close(reference_ops.hswish(x), F.hardswish(x))
    torch.testing.assert_close(reference_ops.hsigmoid(x), F.hardsigmoid(x))


@pytest.mark.parametrize("name", OPS)
@pytest.mark.parametrize("memory_format", MEMORY_FORMATS)
def test_matches_reference(target, dtype, poison_outputs, name, memory_format):
    ref = OPS[name][1]
    # scale 4 puts many values beyond the kinks at -3 and 3; the last shape is big enough to run in parallel
    shapes = [(1, 7, 5, 3), (2, 9, 11, 7)] if target.tiny else [(1, 7, 5, 3), (3, 13, 11, 9), (2, 24, 9, 9),
                                                                 (4, 96, 33, 65)]
    for shape in shapes:
        x = target.to(randn(*shape, dtype=dtype, memory_format=memory_format, scale=4))
        out = getattr(target.ops, name)(x)
        assert out.shape == x.shape and out.stride() == x.stride()
        assert_close(out, ref(x.double()), dtype)


@pytest.mark.parametrize("name", OPS)
def test_any_strides_and_ranks(target, poison_outputs, name):
    op, ref = getattr(target.ops, name), OPS[name][1]
    base = target.to(randn(*((3, 6, 5, 7) if target.tiny else (6, 10, 12, 14)), scale=4))
    cases = [
        base[:, ::2, 1:, ::3],  # sliced, non-contiguous
        base.permute(3, 1, 0, 2),  # permuted but dense
        base[0, 0],  # 2-D
        base.flatten()[5:77],  # 1-D, offset
        target.to(randn(0, 3, 5, 5)),  # empty
        target.to(torch.tensor(2.5)),  # 0-D
        base.expand(2, *base.shape)[:, :, :3],  # 5-D, zero strides
    ]
    for x in cases:
        out = op(x)
        assert out.shape == x.shape
        assert_close(out, ref(x.double()), torch.float32)


@pytest.mark.parametrize("name", OPS)
def test_nan_in_nan_out(target, name):
    for dtype in target.dtypes:
        x = target.to(torch.tensor([float("nan"), 1.0, -4.0], dtype=dtype))
        out = getattr(target.ops, name)(x)
        assert out[0].isnan() and not out[1:].isnan().any()


@pytest.mark.parametrize("name", OPS)
def test_rejects_unsupported_dtype(target, name):
    with pytest.raises(TypeError, match="float32.*bfloat16.*(Long|int64)"):
        getattr(target.ops, name)(target.to(torch.arange(6)))


def test_values_at_the_kinks():
    x = torch.tensor([-4.0, -3.0, -1.5, 0.0, 1.5, 3.0, 4.0])
    torch.testing.assert_close(ops.hswish(x), F.hardswish(x))
    torch.testing.assert_close(ops.hsigmoid(x), F.hardsigmoid(x))


def test_hsigmoid_equals_aten_bit_for_bit():
    """The C++ kernels divide by 6 with a multiply and an FMA correction instead of a divide (it was the
    depthwise kernel's bottleneck); the result must still be the division's: every 61st float32 bit
    pattern in [-3, 3] (35M values) and the vector tails."""
    top = torch.tensor(3.0).view(torch.int32).item()
    bits = torch.arange(0, top + 1, 61, dtype=torch.int32)
    x = torch.cat([bits.view(torch.float32), -bits.view(torch.float32), randn(37)])
    assert torch.equal(ops.hsigmoid(x).view(torch.int32), F.hardsigmoid(x).view(torch.int32))


@pytest.mark.parametrize("name", OPS)
def test_gradient_matches_pytorch_including_kinks(name):
    op, _, torch_fn = OPS[name]
    x = torch.tensor([-4.0, -3.0, -2.0, 0.0, 2.0, 3.0, 4.0], dtype=torch.float64, requires_grad=True)
    (g_ours,) = torch.autograd.grad(op(x).sum(), x)
    (g_torch,) = torch.autograd.grad(torch_fn(x).sum(), x)
    torch.testing.assert_close(g_ours, g_torch)


@pytest.mark.parametrize("name", OPS)
def test_gradcheck(name):
    op = OPS[name][0]
    x = randn(2, 3, 4, 5, dtype=torch.float64, scale=4).requires_grad_()
    assert torch.autograd.gradcheck(op, (x,))


@pytest.mark.parametrize("name", OPS)
@pytest.mark.parametrize("memory_format", MEMORY_FORMATS)
def test_opcheck(name, memory_format):
    x = randn(2, 5, 4, 3, memory_format=memory_format, scale=4)
    torch.library.opcheck(getattr(torch.ops.mnv3, name).default, (x,))
    torch.library.opcheck(getattr(torch.ops.mnv3, name).default, (x.double().requires_grad_(),))


def test_compiles_fullgraph():
    def f(x):
        return ops.hsigmoid(ops.hswish(x) * 2)

    x = randn(2, 8, 5, 5, scale=4)
    torch.testing.assert_close(torch.compile(f, fullgraph=True, backend="aot_eager")(x), f(x))


def test_top_level_exports():
    assert mnv3_fast.fold_bn is mnv3_fast.plan.fold_bn


def test_poison_fixture_poisons_kernel_outputs(poison_outputs):
    # The other tests rely on this: a skipped element stays NaN and fails the comparison.
    assert torch.empty(64).isnan().all()
    assert torch.empty_like(randn(2, 3, 4, 5, memory_format=torch.channels_last)).isnan().all()
