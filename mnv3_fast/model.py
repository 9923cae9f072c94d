"""The drop-in fast MobileNetV3: the reference model's modules and weights, a
fused forward.

`MobileNetV3` subclasses `mnv3_fast.reference.MobileNetV3`, so it has the same
constructor, parameters, buffers and state_dict keys; only the forward differs.

* eval(): every BatchNorm is folded into the conv before it; the depthwise conv,
  its BN and activation run as one `mnv3::dw_conv_bn_act`; Squeeze-and-Excite
  runs as one `mnv3::squeeze_excite`.  The folded weights are computed once and
  cached (see `_FoldCache`).
* train(): BN needs batch statistics, so it stays a module; the depthwise conv,
  the activations and SE still run as mnv3 ops, through their autograd.
* eval() with trainable weights and grad enabled (frozen-BN fine-tuning): the
  folds are recomputed each call, differentiably, so gradients reach the conv
  and BN parameters.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from . import ops
from .reference import model as ref


# ---------------------------------------------------------------- the fused plan


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


def _act_name(module: Optional[nn.Module]) -> str:
    if module is None or isinstance(module, nn.Identity):
        return "none"
    if isinstance(module, nn.ReLU):
        return "relu"
    if isinstance(module, (ref.HSwish, nn.Hardswish)):
        return "hswish"
    raise TypeError(f"mnv3_fast: no fused kernel for activation {type(module).__name__}")


def _activation(x: torch.Tensor, act: str) -> torch.Tensor:
    if act == "relu":
        return torch.relu(x)
    if act == "hswish":
        return ops.hswish(x)
    return x


def _bn_affine(bn: nn.BatchNorm2d):
    """(scale, shift) of an eval-mode BN: bn(x) = x * scale + shift."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift


def _conv_step(seq: nn.Sequential, act: Optional[str] = None) -> ConvStep:
    """[conv, BN, act?] -> one ConvStep with the BN folded in."""
    conv, bn = seq[0], seq[1]
    weight, bias = ops.fold_bn(conv, bn)
    act = act if act is not None else _act_name(seq[2] if len(seq) > 2 else None)
    return ConvStep(weight, bias, conv.stride[0], conv.padding[0], act)


def _dw_step(seq: nn.Sequential) -> DwStep:
    conv = seq[0]
    weight, bias = ops.fold_bn(conv, seq[1])
    act = _act_name(seq[2] if len(seq) > 2 else None)
    return DwStep(weight, bias, conv.stride[0], conv.padding[0], conv.dilation[0], act)


def _se_step(se: Optional[nn.Module]) -> Optional[SeStep]:
    if se is None:
        return None
    if isinstance(se, ref.SqueezeExcite):
        return SeStep(se.reduce.weight, se.reduce.bias, se.expand.weight, se.expand.bias)
    return SeStep(se.dense[0].weight, se.dense[0].bias, se.dense[2].weight, se.dense[2].bias)  # seed: Linear layers


def _plain_conv_step(conv: nn.Conv2d, act: str) -> ConvStep:
    return ConvStep(conv.weight, conv.bias, conv.stride[0], conv.padding[0], act)


def _block_plan(block: ref.MobileBlock) -> BlockPlan:
    if block.variant == "paper":
        expand = None if block.expand_conv is None else _conv_step(block.expand_conv)
        return BlockPlan(expand, _dw_step(block.depthwise_conv), _se_step(block.squeeze_excite),
                         _conv_step(block.project_conv), block.use_residual)
    return BlockPlan(_conv_step(block.conv), _dw_step(block.depth_conv), _se_step(block.squeeze_block),
                     _conv_step(block.point_conv), block.use_residual)


def build_plan(model: ref.MobileNetV3) -> Plan:
    """Folds every BN of an eval-mode model into the conv before it (differentiably)."""
    stage = model.out_conv1
    if isinstance(stage[1], ref.SeedSqueezeBlock):  # seed SMALL: conv -> SE -> BN -> act
        scale, shift = _bn_affine(stage[2])
        last = LastStagePlan(_plain_conv_step(stage[0], "none"), _se_step(stage[1]), scale, shift, _act_name(stage[3]))
    else:
        last = LastStagePlan(_conv_step(stage), None, None, None, "none")
    return Plan(
        stem=_conv_step(model.init_conv),
        blocks=tuple(_block_plan(b) for b in model.block),
        last=last,
        head=_plain_conv_step(model.out_conv2[0], _act_name(model.out_conv2[1])),
        classifier=_plain_conv_step(model.out_conv2[3], "none"),
    )


def _cast_plan(plan, dtype: torch.dtype):
    """The plan's tensors in `dtype` (for autocast and half-precision inputs)."""
    if isinstance(plan, torch.Tensor):
        return plan.to(dtype) if plan.is_floating_point() else plan
    if isinstance(plan, tuple) and hasattr(plan, "_fields"):
        return type(plan)(*(_cast_plan(v, dtype) for v in plan))
    if isinstance(plan, tuple):
        return tuple(_cast_plan(v, dtype) for v in plan)
    return plan


# ---------------------------------------------------------------- running a plan


def _like(step, x: torch.Tensor):
    """`step` with its tensors in x's dtype (under autocast, activations change dtype mid-network)."""
    return step if step[0].dtype == x.dtype else _cast_plan(step, x.dtype)


def _run_conv(x: torch.Tensor, s: ConvStep) -> torch.Tensor:
    s = _like(s, x)
    return _activation(F.conv2d(x, s.weight, s.bias, s.stride, s.padding), s.act)


def _run_block(x: torch.Tensor, b: BlockPlan) -> torch.Tensor:
    y = x if b.expand is None else _run_conv(x, b.expand)
    y = ops.dw_conv_bn_act(y, *_like(b.depthwise, y))
    if b.se is not None:
        y = ops.squeeze_excite(y, *_like(b.se, y))
    y = _run_conv(y, b.project)
    return x + y if b.residual else y


def _run_last_stage(x: torch.Tensor, last: LastStagePlan) -> torch.Tensor:
    y = _run_conv(x, last.conv)
    if last.se is not None:
        y = ops.squeeze_excite(y, *_like(last.se, y))
    if last.bn_scale is not None:
        y = y * last.bn_scale.to(y.dtype)[:, None, None] + last.bn_shift.to(y.dtype)[:, None, None]
    return _activation(y, last.act)


# ---------------------------------------------------------------- the cache


class _FoldCache:
    """The folded plan, per dtype and device, valid while no parameter or buffer changes.

    The key is every parameter's and buffer's identity, storage address and
    version counter: any in-place write (optimizer steps, `copy_`, BN running
    stats), `load_state_dict`, `.to()`, or a replaced tensor changes it.  The
    one thing it cannot see is a write through `tensor.data`, which PyTorch
    gives its own version counter; after such writes call
    `model.clear_fused_cache()`.
    """

    def __init__(self):
        self.key = None
        self.plans: dict = {}

    @staticmethod
    def _key(model: nn.Module):
        try:
            return tuple((id(t), t.data_ptr(), t._version) for t in model._tracked_tensors())
        except RuntimeError:  # inference tensors have no version counter: don't cache
            return None

    def get(self, model, dtype):
        key = self._key(model)
        if key is None:
            return None
        if key != self.key:
            self.key, self.plans = key, {}
        return self.plans.get(dtype)

    def put(self, dtype, plan):
        if self.key is not None:
            self.plans[dtype] = plan

    def clear(self):
        self.key, self.plans = None, {}


# ---------------------------------------------------------------- the model


class MobileNetV3(ref.MobileNetV3):
    """MobileNetV3 on fused kernels; a drop-in for `mnv3_fast.reference.MobileNetV3`.

    Same arguments (`model_mode`, `num_classes`, `multiplier`, `dropout_rate`,
    `variant`, or an explicit `config`), same state_dict.  Use
    `model.eval()` for inference; `model.to(memory_format=torch.channels_last)`
    with channels_last inputs is the fast layout on GPU.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._fold_cache = _FoldCache()

    # -- the cache ----------------------------------------------------------

    def _tracked_tensors(self):
        yield from self.parameters()
        yield from self.buffers()

    def clear_fused_cache(self) -> None:
        """Drops the cached folded weights (needed only after writes through `tensor.data`)."""
        self._fold_cache.clear()

    def train(self, mode: bool = True):
        self._fold_cache.clear()
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):  # .to(), .cuda(), .half(), ...
        self._fold_cache.clear()
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs):
        self._fold_cache.clear()
        return super()._load_from_state_dict(*args, **kwargs)

    def fused_plan(self, dtype: Optional[torch.dtype] = None) -> Plan:
        """The BN-folded plan the eval forward runs, cast to `dtype` (default: the weights')."""
        compiling = torch.compiler.is_compiling()
        differentiable = torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())
        use_cache = not compiling and not differentiable
        weight_dtype = self.init_conv[0].weight.dtype
        dtype = dtype or weight_dtype
        if use_cache:
            plan = self._fold_cache.get(self, dtype)
            if plan is not None:
                return plan
        with torch.set_grad_enabled(differentiable):
            plan = build_plan(self)
            if dtype != weight_dtype:
                plan = _cast_plan(plan, dtype)
        if use_cache:
            self._fold_cache.put(dtype, plan)
        return plan

    # -- forward ------------------------------------------------------------

    def _use_reference(self) -> bool:
        # ONNX has no mnv3 ops: export the (numerically equal) reference graph.
        return torch.onnx.is_in_onnx_export()

    def _stages_fused(self, x: torch.Tensor):
        """Yields (output, stride) after the stem, each block and the last stage (eval)."""
        plan = self.fused_plan(x.dtype)
        x = _run_conv(x, plan.stem)
        yield x, plan.stem.stride
        for b in plan.blocks:
            x = _run_block(x, b)
            yield x, b.depthwise.stride
        yield _run_last_stage(x, plan.last), 1

    def _stages_modules(self, x: torch.Tensor):
        """Yields (output, stride) like `_stages_fused`, with BN as modules (train mode)."""
        x = _activation(self.init_conv[1](self.init_conv[0](x)), "hswish")
        yield x, 2
        for block in self.block:
            x = _train_block(block, x)
            yield x, block.config.stride
        stage = self.out_conv1
        y = stage[0](x)
        if isinstance(stage[1], ref.SeedSqueezeBlock):
            y = stage[2](ops.squeeze_excite(y, *_se_step(stage[1])))
        else:
            y = stage[1](y)
        yield _activation(y, "hswish"), 1

    def _stages(self, x):
        ref._check_input(x)
        return self._stages_modules(x) if self.training else self._stages_fused(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The feature map before global pooling (the output of `out_conv1`)."""
        if self._use_reference():
            return super().forward_features(x)
        for x, _ in self._stages(x):
            pass
        return x

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        if self._use_reference() or self.training:
            return super().forward_head(features)  # dropout is active in training
        plan = self.fused_plan(features.dtype)
        pooled = features.mean(dim=(2, 3), keepdim=True)
        return _run_conv(_run_conv(pooled, plan.head), plan.classifier).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def feature_maps(self, x: torch.Tensor) -> list:
        """Features at total strides 2, 4, 8, 16 and 32, as `reference.MobileNetV3.feature_maps`."""
        if self._use_reference():
            return super().feature_maps(x)
        by_stride, total = {}, 1
        for out, stride in self._stages(x):
            total *= stride
            by_stride[total] = out
        return [by_stride[s] for s in (2, 4, 8, 16, 32) if s in by_stride]


def _train_block(block: ref.MobileBlock, x: torch.Tensor) -> torch.Tensor:
    """A block in train mode: BN on batch statistics, the rest through mnv3 ops."""
    if block.variant == "paper":
        expand, dw, se, project = block.expand_conv, block.depthwise_conv, block.squeeze_excite, block.project_conv
    else:
        expand, dw, se, project = block.conv, block.depth_conv, block.squeeze_block, block.point_conv
    y = x
    if expand is not None:
        y = _activation(expand[1](expand[0](y)), _act_name(expand[2]))
    conv = dw[0]
    y = ops.dw_conv_bn_act(y, conv.weight, conv.bias, conv.stride[0], conv.padding[0], conv.dilation[0], "none")
    y = _activation(dw[1](y), _act_name(dw[2] if len(dw) > 2 else None))
    if se is not None:
        y = ops.squeeze_excite(y, *_se_step(se))
    y = _activation(project[1](project[0](y)), _act_name(project[2] if len(project) > 2 else None))
    return x + y if block.use_residual else y


def mobilenet_v3_large(**kwargs) -> MobileNetV3:
    """Fast MobileNetV3-Large; keyword arguments as for `MobileNetV3`."""
    return MobileNetV3(model_mode="LARGE", **kwargs)


def mobilenet_v3_small(**kwargs) -> MobileNetV3:
    """Fast MobileNetV3-Small; keyword arguments as for `MobileNetV3`."""
    return MobileNetV3(model_mode="SMALL", **kwargs)
