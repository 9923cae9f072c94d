"""mnv3::se_gate: Squeeze-and-Excite's gate from pool sums, the two FCs in one op.

gate = hsigmoid(W2 relu(W1 (sums / count) + b1) + b2), float32 (N, C) (float64
for float64 weights).  `sums` is (N, C) or (N, blocks, C) partial sums (as the
depthwise kernel writes them), added over the blocks in a fixed order.  With
`mnv3::pw_conv_bn_act(..., gate=...)` it replaces `mnv3::squeeze_excite`
without a pass over the map.  CUDA kernel: mnv3_fast/ops/triton/se_gate.py;
on other devices, and for float64, the reference.  Inference only: no autograd.
"""
from __future__ import annotations

import torch

from . import reference_ops
from ._checks import check_se_gate_args
from ._library import define_triton


def _fake(sums, w1, b1, w2, b2, count):
    check_se_gate_args(sums, w1, b1, w2, b2, count)
    dtype = torch.promote_types(sums.dtype, w1.dtype)
    return sums.new_empty((sums.shape[0], sums.shape[-1]), dtype=dtype)


SE_GATE = define_triton(
    "se_gate(Tensor sums, Tensor w1, Tensor b1, Tensor w2, Tensor b2, int count) -> Tensor",
    reference_ops.se_gate,
    _fake,
    dtype_arg=1,
)


def se_gate(sums, w1, b1, w2, b2, count: int) -> torch.Tensor:
    """The SE gate (`mnv3::se_gate`) from fp32 spatial sums over `count` pixels; w1: (S, C) or
    (S, C, 1, 1), b1: (S,), w2: (C, S) or (C, S, 1, 1), b2: (C,)."""
    return torch.ops.mnv3.se_gate(sums, w1, b1, w2, b2, count)
