"""The folded plan: what an eval-mode MobileNetV3 computes, with every BatchNorm
folded into the conv before it, as plain tensors and hyperparameters.

Every backend runs from this plan (the generic per-op path directly, the CPU
backend after packing it for oneDNN, the CUDA backend after laying it out for
its kernels).  Building it reads the model's modules; nothing here runs a
forward.  The fold is differentiable, so a plan built with grad enabled carries
gradients to the conv and BN parameters (frozen-BN fine-tuning).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import nn

from ..reference import model as ref
from .fold_bn import bn_affine, fold_bn


class ConvStep(NamedTuple):
    """A conv with its BN folded in (or a plain conv with bias), then an activation."""

    weight: torch.Tensor
    bias: Optional[torch.Tensor]
    stride: int
    padding: int
    act: str


class DwStep(NamedTuple):
    weight: torch.Tensor
    bias: Optional[torch.Tensor]
    stride: int
    padding: int
    dilation: int
    act: str


class SeStep(NamedTuple):
    w1: torch.Tensor
    b1: torch.Tensor
    w2: torch.Tensor
    b2: torch.Tensor


class BlockPlan(NamedTuple):
    expand: Optional[ConvStep]
    depthwise: DwStep
    se: Optional[SeStep]
    project: ConvStep
    residual: bool


class LastStagePlan(NamedTuple):
    conv: ConvStep
    se: Optional[SeStep]  # the seed SMALL's SE sits between the conv and its BN
    bn_scale: Optional[torch.Tensor]
    bn_shift: Optional[torch.Tensor]
    act: str


class Plan(NamedTuple):
    stem: ConvStep
    blocks: tuple
    last: LastStagePlan
    head: ConvStep
    classifier: ConvStep


class UnsupportedModule(TypeError):
    """A module the fused plan has no kernel for (the reference backend runs such a model)."""


def act_name(module: Optional[nn.Module]) -> str:
    """The fused kernels' name for an activation module."""
    if module is None or isinstance(module, nn.Identity):
        return "none"
    if type(module) is nn.ReLU:
        return "relu"
    if type(module) in (ref.HSwish, nn.Hardswish):
        return "hswish"
    raise UnsupportedModule(f"no fused kernel for the activation {type(module).__name__}")


def _conv_step(seq: nn.Sequential) -> ConvStep:
    """[conv, BN, act?] -> one ConvStep with the BN folded in."""
    conv = seq[0]
    weight, bias = fold_bn(conv, seq[1])
    return ConvStep(weight, bias, conv.stride[0], conv.padding[0], act_name(seq[2] if len(seq) > 2 else None))


def _dw_step(seq: nn.Sequential) -> DwStep:
    conv = seq[0]
    weight, bias = fold_bn(conv, seq[1])
    return DwStep(weight, bias, conv.stride[0], conv.padding[0], conv.dilation[0],
                  act_name(seq[2] if len(seq) > 2 else None))


def _check_se(se: nn.Module) -> None:
    """The fused SE computes hsigmoid(fc2(relu(fc1(pool(x))))): its activations must be those."""
    if isinstance(se, ref.SqueezeExcite):
        inner, gate = se.relu, se.gate
    elif isinstance(se, ref.SeedSqueezeBlock):
        inner, gate = se.dense[1], se.dense[3]
    else:
        raise UnsupportedModule(f"no fused kernel for the squeeze-excite module {type(se).__name__}")
    if act_name(inner) != "relu" or type(gate) not in (ref.HSigmoid, nn.Hardsigmoid):
        raise UnsupportedModule(f"the fused squeeze-excite computes ReLU and hard-sigmoid, but this one has "
                                f"{type(inner).__name__} and {type(gate).__name__}")


def se_step(se: Optional[nn.Module]) -> Optional[SeStep]:
    if se is None:
        return None
    _check_se(se)
    fc1, fc2 = se.fcs()
    return SeStep(fc1.weight, fc1.bias, fc2.weight, fc2.bias)


def check_supported(model: ref.MobileNetV3) -> None:
    """Raises UnsupportedModule if a layer is one no fused kernel computes (an activation
    replaced by another kind, say), reading only module types: the same checks as
    `build_plan`, without folding, so that the train-mode path can make them too."""
    act_name(model.init_conv[2])
    for block in model.block:
        expand, depthwise, se, project = block.parts()
        for seq in (expand, depthwise, project):
            if seq is not None and len(seq) > 2:
                act_name(seq[2])
        if se is not None:
            _check_se(se)
    stage = model.out_conv1
    if isinstance(stage[1], ref.SeedSqueezeBlock):
        _check_se(stage[1])
    act_name(stage[-1])
    act_name(model.out_conv2[1])


def _plain_conv_step(conv: nn.Conv2d, act: str) -> ConvStep:
    return ConvStep(conv.weight, conv.bias, conv.stride[0], conv.padding[0], act)


def _block_plan(block: ref.MobileBlock) -> BlockPlan:
    expand, depthwise, se, project = block.parts()
    return BlockPlan(None if expand is None else _conv_step(expand), _dw_step(depthwise), se_step(se),
                     _conv_step(project), block.use_residual)


def build_plan(model: ref.MobileNetV3) -> Plan:
    """Folds every BN of an eval-mode model into the conv before it (differentiably).
    Raises UnsupportedModule for a layer no fused kernel computes."""
    stage = model.out_conv1
    if isinstance(stage[1], ref.SeedSqueezeBlock):  # seed SMALL: conv -> SE -> BN -> act
        scale, shift = bn_affine(stage[2])
        last = LastStagePlan(_plain_conv_step(stage[0], "none"), se_step(stage[1]), scale, shift, act_name(stage[3]))
    else:
        last = LastStagePlan(_conv_step(stage), None, None, None, "none")
    return Plan(
        stem=_conv_step(model.init_conv),
        blocks=tuple(_block_plan(b) for b in model.block),
        last=last,
        head=_plain_conv_step(model.out_conv2[0], act_name(model.out_conv2[1])),
        classifier=_plain_conv_step(model.out_conv2[3], "none"),
    )


def cast_plan(plan, dtype: torch.dtype):
    """The plan (or any step of it) with its floating tensors in `dtype`."""
    if isinstance(plan, torch.Tensor):
        return plan.to(dtype) if plan.is_floating_point() else plan
    if isinstance(plan, tuple) and hasattr(plan, "_fields"):
        return type(plan)(*(cast_plan(v, dtype) for v in plan))
    if isinstance(plan, tuple):
        return tuple(cast_plan(v, dtype) for v in plan)
    return plan


def step_like(step, x: torch.Tensor):
    """`step` with its tensors in x's dtype (autocast may change an activation's dtype mid-network)."""
    return step if step[0].dtype == x.dtype else cast_plan(step, x.dtype)
