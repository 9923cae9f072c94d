"""mnv3::squeeze_excite: y = x * hsigmoid(W2 relu(W1 mean_hw(x) + b1) + b2), one op.

CPU kernel: csrc/squeeze_excite.cpp (a pool pass and a scale pass over x).
The backward is written out with ATen ops: the gate's gradient flows through
the two small matrix products to the weights and back into x via the pool.
"""
from __future__ import annotations

import torch

from . import reference_ops
from ._checks import check_se_args, output_memory_format
from ._library import define
from .activations import hsigmoid_backward


def _fake(x, w1, b1, w2, b2):
    check_se_args(x, w1, b1, w2, b2)
    return torch.empty_like(x, memory_format=output_memory_format(x))


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad):
    x, w1, b1, w2, b2 = ctx.saved_tensors
    N, C, H, W = x.shape
    S = w1.shape[0]
    W1, W2 = w1.reshape(S, C), w2.reshape(C, S)
    # Recompute the small forward intermediates (N x C and N x S: cheap).
    pooled = x.mean(dim=(2, 3))
    hidden_pre = pooled @ W1.t() + b1
    hidden = torch.relu(hidden_pre)
    gate_pre = hidden @ W2.t() + b2
    gate = reference_ops.hsigmoid(gate_pre)

    grad_gate = (grad * x).sum(dim=(2, 3))
    grad_gate_pre = hsigmoid_backward(grad_gate, gate_pre)
    grad_w2 = grad_gate_pre.t() @ hidden
    grad_b2 = grad_gate_pre.sum(0)
    grad_hidden_pre = torch.ops.aten.threshold_backward(grad_gate_pre @ W2, hidden_pre, 0)
    grad_w1 = grad_hidden_pre.t() @ pooled
    grad_b1 = grad_hidden_pre.sum(0)
    grad_pooled = grad_hidden_pre @ W1
    grad_x = grad * gate[:, :, None, None] + (grad_pooled / max(H * W, 1))[:, :, None, None]
    return grad_x, _like_param(grad_w1, w1), grad_b1, _like_param(grad_w2, w2), grad_b2


def _like_param(grad: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """`grad` in the parameter's shape and strides (a channels_last model's (C, S, 1, 1) weights are
    channels_last; DDP warns when a gradient's strides differ from its parameter's)."""
    grad = grad.reshape(param.shape)
    return grad if grad.stride() == param.stride() else torch.empty_like(param).copy_(grad)


SQUEEZE_EXCITE = define(
    "squeeze_excite(Tensor x, Tensor w1, Tensor b1, Tensor w2, Tensor b2) -> Tensor",
    reference_ops.squeeze_excite,
    _fake,
)
torch.library.register_autograd(SQUEEZE_EXCITE, _backward, setup_context=_setup_context)


def squeeze_excite(x, w1, b1, w2, b2) -> torch.Tensor:
    """Squeeze-and-Excite as one op (`mnv3::squeeze_excite`).

    x: (N, C, H, W); w1: (S, C) or (S, C, 1, 1); b1: (S,); w2: (C, S) or
    (C, S, 1, 1); b2: (C,).  The output keeps x's memory format.
    """
    return torch.ops.mnv3.squeeze_excite(x, w1, b1, w2, b2)
