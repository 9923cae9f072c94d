"""Plain-PyTorch references of every mnv3 op, with the ops' exact arguments,
checks and output layout.  They are the ground truth for the tests, the
fallback kernels when the C++ extension is missing, and the place to start
when debugging a kernel."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._checks import check_dw_conv_args, check_se_args, output_memory_format


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
