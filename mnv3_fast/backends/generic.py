"""The generic backend: the network op by op on the mnv3 ops, on any device
and in any dtype the ops take.  It is what runs under `torch.compile`,
`torch.export` and `torch.jit.trace` (the BN folds are traced, so the traced
graph follows later weight updates), when gradients are needed (every mnv3 op
has autograd), and in train mode.

eval(): the folded plan: each conv with its BN folded in, then its
activation; the depthwise conv + BN + activation as `mnv3::dw_conv_bn_act`;
Squeeze-and-Excite as `mnv3::squeeze_excite`.
train(): BN stays a module (batch statistics, running-stat updates); the
depthwise conv, the activations and SE still run as mnv3 ops.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import ops
from ..ops._checks import supported_dtypes
from ..ops.activations import activation
from ..plan import BlockPlan, ConvStep, LastStagePlan, act_name, se_step, step_like
from ..reference import model as ref
from .base import Backend, dtype_name, folded_plan, layer_reasons, model_reasons


def run_conv(x: torch.Tensor, s: ConvStep) -> torch.Tensor:
    s = step_like(s, x)
    return activation(F.conv2d(x, s.weight, s.bias, s.stride, s.padding), s.act)


def run_block(x: torch.Tensor, b: BlockPlan) -> torch.Tensor:
    y = x if b.expand is None else run_conv(x, b.expand)
    y = ops.dw_conv_bn_act(y, *step_like(b.depthwise, y))
    if b.se is not None:
        y = ops.squeeze_excite(y, *step_like(b.se, y))
    y = run_conv(y, b.project)
    return x + y if b.residual else y


def last_stage_tail(y: torch.Tensor, last: LastStagePlan) -> torch.Tensor:
    """What follows the last stage's conv: [SE, BN affine] (seed SMALL), activation."""
    if last.se is not None:
        y = ops.squeeze_excite(y, *step_like(last.se, y))
    if last.bn_scale is not None:
        y = y * last.bn_scale.to(y.dtype)[:, None, None] + last.bn_shift.to(y.dtype)[:, None, None]
    return activation(y, last.act)


def train_block(block: ref.MobileBlock, x: torch.Tensor) -> torch.Tensor:
    """A block in train mode: BN on batch statistics, the rest through mnv3 ops."""
    expand, dw, se, project = block.parts()
    y = x
    if expand is not None:
        y = activation(expand[1](expand[0](y)), act_name(expand[2]))
    conv = dw[0]
    # (Under autocast the activations may be in a lower precision than the weights: the ops want one
    # dtype, so the weights are cast, differentiably, as autocast casts a conv's.)
    weight, bias = (None if t is None else t.to(y.dtype) for t in (conv.weight, conv.bias))
    y = ops.dw_conv_bn_act(y, weight, bias, conv.stride[0], conv.padding[0], conv.dilation[0], "none")
    y = activation(dw[1](y), act_name(dw[2] if len(dw) > 2 else None))
    if se is not None:
        y = ops.squeeze_excite(y, *step_like(se_step(se), y))
    y = activation(project[1](project[0](y)), act_name(project[2] if len(project) > 2 else None))
    return x + y if block.use_residual else y


class GenericBackend(Backend):
    name = "generic"

    def not_supported_reasons(self, model, call):
        reasons = []
        if call.tracing == "ONNX export":
            reasons.append("exporting to ONNX, which has no mnv3 ops (the reference graph is exported)")
        device_dtypes = supported_dtypes(torch.device(call.device_type))
        if call.dtype not in device_dtypes:
            reasons.append(f"{dtype_name(call.dtype)} on {call.device_type}: the mnv3 ops there take "
                           + ", ".join(dtype_name(d) for d in device_dtypes))
        return reasons + model_reasons(model, call) + layer_reasons(model, call)

    def stages(self, model, x, call):
        x = x.to(call.dtype)
        if call.training:
            yield from self._train_stages(model, x)
            return
        plan = folded_plan(model, call)
        x = run_conv(x, plan.stem)
        yield x, plan.stem.stride
        for b in plan.blocks:
            x = run_block(x, b)
            yield x, b.depthwise.stride
        yield last_stage_tail(run_conv(x, plan.last.conv), plan.last), 1

    @staticmethod
    def _train_stages(model, x):
        x = activation(model.init_conv[1](model.init_conv[0](x)), act_name(model.init_conv[2]))
        yield x, 2
        for block in model.block:
            x = train_block(block, x)
            yield x, block.config.stride
        stage = model.out_conv1
        y = stage[0](x)
        if isinstance(stage[1], ref.SeedSqueezeBlock):
            y = stage[2](ops.squeeze_excite(y, *step_like(se_step(stage[1]), y)))
        else:
            y = stage[1](y)
        yield activation(y, act_name(stage[-1])), 1

    def head(self, model, features, call):
        if call.training:
            return ref.MobileNetV3.forward_head(model, features)  # dropout is active in training
        plan = folded_plan(model, call)
        # On the pooled 1x1 map the head's 1x1 convs are matrix products.
        pooled = features.to(call.dtype).mean(dim=(2, 3))
        head, classifier = step_like(plan.head, pooled), step_like(plan.classifier, pooled)
        hidden = activation(F.linear(pooled, head.weight.flatten(1), head.bias), head.act)
        return F.linear(hidden, classifier.weight.flatten(1), classifier.bias)
