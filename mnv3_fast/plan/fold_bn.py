"""Folding an inference BatchNorm into the conv before it."""
from __future__ import annotations

import torch
from torch import nn


def bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) of an eval-mode BN: bn(x) = x * scale + shift (not detached)."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift


def fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (weight, bias) of a conv equivalent to bn(conv(x)) with bn in eval mode.

    weight = W * s and bias = (b - running_mean) * s + beta, where
    s = gamma / sqrt(running_var + eps).  Works for convs with or without a
    bias and BNs with or without affine parameters.  The result is not
    detached: gradients flow to the conv and BN parameters (frozen-BN
    fine-tuning).
    """
    if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.BatchNorm2d):
        raise TypeError(f"fold_bn: expected (nn.Conv2d, nn.BatchNorm2d), got ({type(conv).__name__}, {type(bn).__name__})")
    if bn.num_features != conv.out_channels:
        raise ValueError(f"fold_bn: the BN has {bn.num_features} features but the conv {conv.out_channels} output channels")
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("fold_bn: the BN has no running statistics (track_running_stats=False), so it cannot be folded")
    scale, shift = bn_affine(bn)
    if conv.bias is not None:
        shift = shift + conv.bias * scale
    weight = conv.weight * scale.reshape(-1, 1, 1, 1).to(conv.weight.dtype)
    return weight, shift.to(conv.weight.dtype)
