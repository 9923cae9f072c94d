"""mnv3::classifier_head: the classifier on pooled features, linear + activation + linear.

CUDA kernel: the pointwise GEMM kernel twice, one row per image
(mnv3_fast/ops/triton/pw_conv_bn_act.py); on other devices, and for float64,
the reference.  The hidden activations are rounded to the input dtype, as
between two nn.Linear layers.  Inference only: no autograd.
"""
from __future__ import annotations

import torch

from . import reference_ops
from ._checks import check_head_args
from ._library import define_triton


def _fake(pooled, w1, b1, w2, b2, act):
    _, classes = check_head_args(pooled, w1, b1, w2, b2, act)
    return pooled.new_empty((pooled.shape[0], classes))


CLASSIFIER_HEAD = define_triton(
    "classifier_head(Tensor pooled, Tensor w1, Tensor? b1, Tensor w2, Tensor? b2, str act) -> Tensor",
    reference_ops.classifier_head,
    _fake,
)


def classifier_head(pooled, w1, b1, w2, b2, act: str = "hswish") -> torch.Tensor:
    """act(pooled @ w1.T + b1) @ w2.T + b2 (`mnv3::classifier_head`); w1/w2 as matrices or 1x1 convs."""
    return torch.ops.mnv3.classifier_head(pooled, w1, b1, w2, b2, act)
