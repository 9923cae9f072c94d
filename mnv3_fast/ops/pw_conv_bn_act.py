"""mnv3::pw_conv_bn_act: 1x1 conv + folded BN + activation, with the CUDA backend's fusions.

Optional: a residual added after the activation; an SE gate (N, Cin) applied
to the input first; `pool=True` returns the per-image spatial mean (N, Cout)
instead of the map (the last stage, whose map the classifier never needs).
CUDA kernel: a Triton GEMM (mnv3_fast/ops/triton/pw_conv_bn_act.py); on other
devices, and for float64, the reference.  Inference only: no autograd.
"""
from __future__ import annotations

import torch

from . import reference_ops
from ._checks import check_pw_args, output_memory_format
from ._library import define_triton


def _fake(x, weight, bias, act, residual=None, gate=None, pool=False):
    cout = check_pw_args(x, weight, bias, act, residual, gate)
    if pool:
        return x.new_empty((x.shape[0], cout))
    return x.new_empty((x.shape[0], cout, x.shape[2], x.shape[3])).contiguous(memory_format=output_memory_format(x))


PW_CONV_BN_ACT = define_triton(
    "pw_conv_bn_act(Tensor x, Tensor weight, Tensor? bias, str act, Tensor? residual=None, Tensor? gate=None, "
    "bool pool=False) -> Tensor",
    reference_ops.pw_conv_bn_act,
    _fake,
)


def pw_conv_bn_act(x, weight, bias=None, act: str = "none", residual=None, gate=None, pool: bool = False):
    """1x1 conv + folded BN + activation in one pass (`mnv3::pw_conv_bn_act`).

    weight: (Cout, Cin) or (Cout, Cin, 1, 1) with the BN scale folded in; bias: (Cout,) or None;
    act in {"none", "relu", "hswish"}; residual: (N, Cout, H, W), added after the activation;
    gate: (N, Cin), float32 or x's dtype, multiplies x first (rounded to x's dtype);
    pool: return the (N, Cout) spatial mean instead of the map.  The map keeps x's memory format.
    """
    return torch.ops.mnv3.pw_conv_bn_act(x, weight, bias, act, residual, gate, pool)
