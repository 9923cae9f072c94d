"""mnv3::stem_conv: the first conv (an image's few channels) + folded BN + activation.

Reads NCHW or NHWC images without a copy and writes channels_last.  CUDA
kernel: a direct Triton conv (mnv3_fast/ops/triton/stem_conv.py); on other
devices, and for float64, the reference.  (The CPU program has its own stem,
csrc/stem_conv.cpp, inside mnv3::run_cpu_program.)  Inference only: no autograd.
"""
from __future__ import annotations

import torch

from . import reference_ops
from ._checks import check_stem_args
from ._library import define_triton


def _fake(x, weight, bias, stride, padding, act):
    Ho, Wo = check_stem_args(x, weight, bias, stride, padding, act)
    return x.new_empty((x.shape[0], weight.shape[0], Ho, Wo)).contiguous(memory_format=torch.channels_last)


STEM_CONV = define_triton(
    "stem_conv(Tensor x, Tensor weight, Tensor? bias, int stride, int padding, str act) -> Tensor",
    reference_ops.stem_conv,
    _fake,
)


def stem_conv(x, weight, bias=None, stride: int = 2, padding: int | None = None, act: str = "hswish"):
    """The stem conv (`mnv3::stem_conv`): weight (Cout, Cin <= 4, k, k), k in {3, 5}, stride 1 or 2,
    padding default (k - 1) // 2.  The output is channels_last."""
    if padding is None:
        padding = (weight.shape[-1] - 1) // 2
    return torch.ops.mnv3.stem_conv(x, weight, bias, stride, padding, act)
