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


# ---------------------------------------------------------------- a dataset to train on

#: The classes of `synthetic_shapes`, in label order.
SHAPES = ("disc", "square", "triangle", "cross", "ring", "hbars", "vbars", "diagonal", "checker", "dots")


def synthetic_shapes(n: int, size: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` images of one of ten shapes each (`SHAPES`), with random position, size, colours and noise:
    a classification task a small MobileNetV3 learns in minutes on a CPU, generated from `seed` (no
    download), for measuring how much accuracy lower precisions lose on a trained network.
    Returns (images (n, 3, size, size) float32, normalised; labels (n,) int64)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(len(SHAPES), (n,), generator=g)
    u = lambda *shape: torch.rand(*shape, generator=g)  # noqa: E731
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    cy, cx = (0.3 + 0.4 * u(n, 1, 1)) * size, (0.3 + 0.4 * u(n, 1, 1)) * size
    r = (0.15 + 0.15 * u(n, 1, 1)) * size
    dy, dx = ys - cy, xs - cx
    period = (0.08 + 0.06 * u(n, 1, 1)) * size
    inside = {
        0: dy ** 2 + dx ** 2 < r ** 2,
        1: (dy.abs() < r) & (dx.abs() < r),
        2: (dy < r) & (dy > -r) & (dx.abs() < (dy + r) / 2),
        3: ((dy.abs() < r / 4) & (dx.abs() < r)) | ((dx.abs() < r / 4) & (dy.abs() < r)),
        4: ((dy ** 2 + dx ** 2).sqrt() - r * 0.7).abs() < r * 0.25,
        5: (torch.remainder(ys, period) < period / 2) & (dx.abs() < r * 1.5) & (dy.abs() < r * 1.5),
        6: (torch.remainder(xs, period) < period / 2) & (dx.abs() < r * 1.5) & (dy.abs() < r * 1.5),
        7: ((dy - dx).abs() < r / 3) & (dx.abs() < r * 1.2),
        8: ((torch.remainder(ys, period) < period / 2) ^ (torch.remainder(xs, period) < period / 2))
           & (dx.abs() < r * 1.3) & (dy.abs() < r * 1.3),
        9: (torch.remainder(ys, period) - period / 2).abs().lt(period / 5)
           & (torch.remainder(xs, period) - period / 2).abs().lt(period / 5) & (dx.abs() < r * 1.4)
           & (dy.abs() < r * 1.4),
    }
    mask = torch.zeros(n, size, size, dtype=torch.bool)
    for label, m in inside.items():
        mask |= m & (labels == label)[:, None, None]
    background, foreground = u(n, 3, 1, 1), u(n, 3, 1, 1)
    images = torch.where(mask[:, None], foreground, background) + 0.15 * torch.randn(n, 3, size, size, generator=g)
    return (images - 0.5) / 0.3, labels
