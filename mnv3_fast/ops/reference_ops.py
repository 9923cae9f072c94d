"""Plain-PyTorch references of every mnv3 op, with the ops' exact arguments,
checks and output layout.  They are the ground truth for the tests, the
fallback kernels when the C++ extension is missing, and the place to start
when debugging a kernel."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._checks import (check_dw_conv_args, check_head_args, check_pw_args, check_se_args, check_se_gate_args,
                      check_stem_args, output_memory_format)


def hsigmoid(x: torch.Tensor) -> torch.Tensor:
    """relu6(x + 3) / 6."""
    return (x + 3).clamp(0, 6) / 6


def hswish(x: torch.Tensor) -> torch.Tensor:
    """x * relu6(x + 3) / 6."""
    return x * (x + 3).clamp(0, 6) / 6  # ATen's order of operations


def activation(x: torch.Tensor, act: str) -> torch.Tensor:
    if act == "relu":
        return torch.relu(x)
    if act == "hswish":
        return hswish(x)
    return x


def dw_conv_bn_act(x, weight, bias, stride: int, padding: int, dilation: int, act: str) -> torch.Tensor:
    """Depthwise conv with the BN scale folded into `weight` and the shift in
    `bias`, then the activation.  Equivalent to
    act(batch_norm(conv2d(x, w, groups=C))) for an inference BatchNorm."""
    check_dw_conv_args(x, weight, bias, stride, padding, dilation, act)
    y = F.conv2d(x, weight, bias, stride=stride, padding=padding, dilation=dilation, groups=x.shape[1])
    return activation(y, act).contiguous(memory_format=output_memory_format(x))


def squeeze_excite(x, w1, b1, w2, b2) -> torch.Tensor:
    """x * hsigmoid(W2 relu(W1 mean_hw(x) + b1) + b2); W1/W2 may be (S, C)/(C, S)
    matrices or their (S, C, 1, 1)/(C, S, 1, 1) 1x1-conv forms."""
    S = check_se_args(x, w1, b1, w2, b2)
    C = x.shape[1]
    pooled = x.mean(dim=(2, 3))
    hidden = torch.relu(pooled @ w1.reshape(S, C).t() + b1)
    gate = hsigmoid(hidden @ w2.reshape(C, S).t() + b2)
    return (x * gate[:, :, None, None]).contiguous(memory_format=output_memory_format(x))


def pw_conv_bn_act(x, weight, bias, act: str, residual=None, gate=None, pool: bool = False) -> torch.Tensor:
    """1x1 conv with folded BN, then the activation, then `residual` added.  `gate` (N, Cin)
    scales x per image and input channel first (Squeeze-and-Excite's scale, rounded to x's
    dtype as a separate SE op's output is); `pool` returns the per-image spatial mean of the
    result (N, Cout) instead of the map."""
    cout = check_pw_args(x, weight, bias, act, residual, gate)
    if gate is not None:
        wide = torch.promote_types(x.dtype, gate.dtype)
        x = (x.to(wide) * gate.to(wide)[:, :, None, None]).to(x.dtype)
    y = activation(F.conv2d(x, weight.reshape(cout, x.shape[1], 1, 1), bias), act)
    if residual is not None:
        y = y + residual
    if pool:
        return y.mean(dim=(2, 3))
    return y.contiguous(memory_format=output_memory_format(x))


def stem_conv(x, weight, bias, stride: int, padding: int, act: str) -> torch.Tensor:
    """The first conv (few input channels) with folded BN and the activation; the output is
    channels_last whatever the input's layout."""
    check_stem_args(x, weight, bias, stride, padding, act)
    y = activation(F.conv2d(x, weight, bias, stride=stride, padding=padding), act)
    return y.contiguous(memory_format=torch.channels_last)


def se_gate(sums, w1, b1, w2, b2, count: int) -> torch.Tensor:
    """Squeeze-and-Excite's gate from spatial sums: hsigmoid(W2 relu(W1 (sums / count) + b1) + b2),
    float32 (N, C) (float64 for float64 inputs).  `sums` is (N, C), or (N, blocks, C) partial sums,
    added over the blocks."""
    S = check_se_gate_args(sums, w1, b1, w2, b2, count)
    if sums.dim() == 3:
        sums = sums.sum(dim=1)
    C = sums.shape[1]
    wide = torch.promote_types(sums.dtype, w1.dtype)
    pooled = sums.to(wide) / count
    hidden = torch.relu(pooled @ w1.reshape(S, C).to(wide).t() + b1.to(wide))
    return hsigmoid(hidden @ w2.reshape(C, S).to(wide).t() + b2.to(wide))


def classifier_head(pooled, w1, b1, w2, b2, act: str) -> torch.Tensor:
    """The classifier on pooled features: linear, activation, linear (w1/w2 as matrices or 1x1 convs)."""
    hidden, classes = check_head_args(pooled, w1, b1, w2, b2, act)
    h = activation(F.linear(pooled, w1.reshape(hidden, -1), b1), act)
    return F.linear(h, w2.reshape(classes, hidden), b2)
