"""Helpers for checking a MobileNetV3 numerically: weights whose outputs depend on the input.

With default initialisation and untouched BN statistics, MobileNetV3's logits
barely depend on the input (two random images can differ by 2e-7), so a
parity test on such a model passes whatever the kernels compute.
`calibrate_bn_` gives BN real statistics, from forward passes over random
batches, then perturbs them and the affine parameters, so that every fold
matters and the logits move with the input.  Tests, benchmarks and the
accuracy checks all use it.
"""
from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def calibrate_bn_(model: nn.Module, seed: int = 0, batches: int = 2, batch_size: int = 4, size: int = 64,
                  perturb: float = 0.2) -> nn.Module:
    """In place: BN running statistics from `batches` random batches (train-mode passes, cumulative
    averages), then every BN statistic and affine parameter and every conv/linear bias scaled or
    shifted by up to `perturb` at random.  Returns the model, in eval mode."""
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the calibration batches
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    model.train()
    for _ in range(batches):
        model(torch.randn(batch_size, 3, size, size, generator=g).to(device, dtype))
    for bn, momentum in zip(bns, momenta):
        bn.momentum = momentum

    def jitter(t: torch.Tensor, scale: bool):
        noise = (torch.rand(t.shape, generator=g) * 2 - 1).to(t.device, t.dtype) * perturb
        t.mul_(1 + noise) if scale else t.add_(noise)

    for bn in bns:
        jitter(bn.running_var, scale=True)
        jitter(bn.running_mean, scale=False)
        if bn.affine:
            jitter(bn.weight, scale=True)
            jitter(bn.bias, scale=False)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
            jitter(m.bias, scale=False)
    return model.eval()


@torch.no_grad()
def input_sensitivity(model: nn.Module, shape=(2, 3, 64, 64), seed: int = 1) -> float:
    """How much the logits move between two random inputs, relative to their size: near 0 means a
    parity test on this model proves nothing."""
    g = torch.Generator().manual_seed(seed)
    p = next(model.parameters())
    a, b = (model(torch.randn(shape, generator=g).to(p.device, p.dtype)) for _ in range(2))
    return ((a - b).abs().max() / a.abs().max().clamp_min(1e-30)).item()
