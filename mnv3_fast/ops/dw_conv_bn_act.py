"""mnv3::dw_conv_bn_act: depthwise kxk conv + folded inference BatchNorm + activation.

CPU kernel: csrc/dw_conv_bn_act.cpp.  The backward is ATen's convolution
backward applied to the activation's derivative, so frozen-BN fine-tuning
(eval-mode BN, trainable weights) trains through the fused op.
"""
from __future__ import annotations

import torch

from . import reference_ops
from ._checks import check_dw_conv_args, output_memory_format
from ._library import define


def _fake(x, weight, bias, stride, padding, dilation, act):
    Ho, Wo = check_dw_conv_args(x, weight, bias, stride, padding, dilation, act)
    return x.new_empty((x.shape[0], x.shape[1], Ho, Wo)).contiguous(memory_format=output_memory_format(x))


def _setup_context(ctx, inputs, output):
    x, weight, bias, stride, padding, dilation, act = inputs
    ctx.geometry = (stride, padding, dilation)
    ctx.act = act
    ctx.has_bias = bias is not None
    # ReLU's derivative is readable off the output; h-swish's needs the pre-activation, recomputed in backward.
    ctx.save_for_backward(x, weight, bias, output if act == "relu" else None)


def _backward(ctx, grad):
    x, weight, bias, output = ctx.saved_tensors
    stride, padding, dilation = ctx.geometry
    if ctx.act == "relu":
        grad = torch.ops.aten.threshold_backward(grad, output, 0)
    elif ctx.act == "hswish":
        pre_activation = torch.ops.mnv3.dw_conv_bn_act(x, weight, bias, stride, padding, dilation, "none")
        grad = torch.ops.aten.hardswish_backward(grad, pre_activation)
    need_x, need_w, need_b = ctx.needs_input_grad[:3]
    grad_x, grad_w, _ = torch.ops.aten.convolution_backward(
        grad, x, weight, None, [stride, stride], [padding, padding], [dilation, dilation],
        False, [0, 0], x.shape[1], [need_x, need_w, False],
    )
    grad_b = grad.sum(dim=(0, 2, 3)) if (ctx.has_bias and need_b) else None
    return grad_x, grad_w, grad_b, None, None, None, None


DW_CONV_BN_ACT = define(
    "dw_conv_bn_act(Tensor x, Tensor weight, Tensor? bias, int stride, int padding, int dilation, str act) -> Tensor",
    reference_ops.dw_conv_bn_act,
    _fake,
)
torch.library.register_autograd(DW_CONV_BN_ACT, _backward, setup_context=_setup_context)


def dw_conv_bn_act(x, weight, bias=None, stride: int = 1, padding: int | None = None, dilation: int = 1,
                   act: str = "none") -> torch.Tensor:
    """Depthwise conv + folded BN + activation in one pass (`mnv3::dw_conv_bn_act`).

    weight: (C, 1, k, k) with the BN scale folded in (see `mnv3_fast.fold_bn`);
    bias: (C,) folded shift or None; k in {3, 5}; stride and dilation in {1, 2};
    padding defaults to "same" for stride 1, (k - 1) // 2 * dilation;
    act in {"none", "relu", "hswish"}.  The output keeps x's memory format.
    """
    if padding is None:
        padding = (weight.shape[-1] - 1) // 2 * dilation
    return torch.ops.mnv3.dw_conv_bn_act(x, weight, bias, stride, padding, dilation, act)
