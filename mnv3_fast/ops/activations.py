"""mnv3::hswish and mnv3::hsigmoid: the elementwise activations.

CPU kernel: csrc/activations.cpp.  The derivatives are ATen's, kinks included
(x = -3 and x = 3), except that hard-sigmoid's is computed here: ATen's
hardsigmoid_backward multiplies by an fp32 1/6 in every dtype, which leaves
float64 gradients accurate to only ~3e-8.
"""
from __future__ import annotations

import torch

from . import reference_ops
from ._library import define


def _fake(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


def _same_layout(fn):
    """Wraps an elementwise reference so its output has empty_like(x)'s strides, as the kernels'."""

    def impl(x):
        return torch.empty_like(x).copy_(fn(x))

    return impl


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])  # the raw input is all the backward needs


def _hswish_backward(ctx, grad):
    return torch.ops.aten.hardswish_backward(grad, ctx.saved_tensors[0])


def hsigmoid_backward(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """d hsigmoid(x) / dx * grad: 1/6 on the open interval (-3, 3), else 0 (as ATen's at the kinks),
    in the dtype's own precision."""
    return torch.where((x > -3) & (x < 3), grad / 6, torch.zeros_like(grad))


def _hsigmoid_backward(ctx, grad):
    return hsigmoid_backward(grad, ctx.saved_tensors[0])


HSWISH = define("hswish(Tensor x) -> Tensor", _same_layout(reference_ops.hswish), _fake)
HSIGMOID = define("hsigmoid(Tensor x) -> Tensor", _same_layout(reference_ops.hsigmoid), _fake)
torch.library.register_autograd(HSWISH, _hswish_backward, setup_context=_setup_context)
torch.library.register_autograd(HSIGMOID, _hsigmoid_backward, setup_context=_setup_context)


def hswish(x: torch.Tensor) -> torch.Tensor:
    """Hard swish, x * relu6(x + 3) / 6, as the fused `mnv3::hswish` op."""
    return torch.ops.mnv3.hswish(x)


def hsigmoid(x: torch.Tensor) -> torch.Tensor:
    """Hard sigmoid, relu6(x + 3) / 6, as the fused `mnv3::hsigmoid` op."""
    return torch.ops.mnv3.hsigmoid(x)


def activation(x: torch.Tensor, act: str) -> torch.Tensor:
    """The activation the ops name by `act` ("none", "relu" or "hswish"), as a separate op."""
    if act == "relu":
        return torch.relu(x)
    if act == "hswish":
        return hswish(x)
    return x
