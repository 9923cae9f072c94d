"""The drop-in fast MobileNetV3: the reference model's modules and weights, a
fused forward.

`MobileNetV3` subclasses `mnv3_fast.reference.MobileNetV3`, so it has the same
constructor, parameters, buffers and state_dict keys; only the forward differs.

* eval(): every BatchNorm is folded into the conv before it; the depthwise conv,
  its BN and activation run as one `mnv3::dw_conv_bn_act`; Squeeze-and-Excite
  runs as one `mnv3::squeeze_excite`.  The folded weights are computed once and
  cached (see `_FoldCache`).  On the CPU the folded network is further packed for
  oneDNN and encoded as one `mnv3::run_cpu_program` call (see below), run on
  cache-sized chunks of the batch.
* train(): BN needs batch statistics, so it stays a module; the depthwise conv,
  the activations and SE still run as mnv3 ops, through their autograd.
* eval() with trainable weights and grad enabled (frozen-BN fine-tuning): the
  folds are recomputed each call, differentiably, so gradients reach the conv
  and BN parameters.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from . import ops
from .ops import cpu_program
from .ops._checks import conv_output_size
from .ops.activations import activation as _activation
from .ops.fold_bn import bn_affine
from .reference import model as ref

# The op overloads, resolved once: at batch 1 the per-call Python cost matters.
_squeeze_excite = torch.ops.mnv3.squeeze_excite.default
_run_cpu_program = torch.ops.mnv3.run_cpu_program.default


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
        scale, shift = bn_affine(stage[2])
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


def _last_stage_tail(y: torch.Tensor, last: LastStagePlan) -> torch.Tensor:
    """What follows the last stage's conv: [SE, BN affine] (seed SMALL), activation."""
    if last.se is not None:
        y = _squeeze_excite(y, *_like(last.se, y))
    if last.bn_scale is not None:
        y = y * last.bn_scale.to(y.dtype)[:, None, None] + last.bn_shift.to(y.dtype)[:, None, None]
    return _activation(y, last.act)


def _run_last_stage(x: torch.Tensor, last: LastStagePlan) -> torch.Tensor:
    return _last_stage_tail(_run_conv(x, last.conv), last)


# ---------------------------------------------------------------- CPU inference: oneDNN convs

# On the CPU the 1x1 convs (expand, project, last stage) run as oneDNN
# convolutions with weights pre-packed once into oneDNN's blocked layout, the
# activation and the residual add fused in as post-ops (the same ATen ops
# torch.compile's CPU backend uses).  ATen's own conv2d picks a slow fallback
# for many of MobileNetV3's 1x1 shapes in channels_last, and re-packs the
# weights on every call.  Everything runs channels_last.  The packed plan is
# encoded as one `mnv3::run_cpu_program` call (mnv3_fast/ops/cpu_program.py).


class OneDnnConv(NamedTuple):
    weight: torch.Tensor  # pre-packed for one input size
    bias: Optional[torch.Tensor]
    padding: list
    stride: list
    act: str  # "none", "relu" or "hswish" (applied before the residual add, if any)


class OneDnnBlock(NamedTuple):
    expand: Optional[OneDnnConv]
    depthwise: DwStep
    se: Optional[SeStep]
    project: OneDnnConv
    residual: bool


class OneDnnLinear(NamedTuple):
    weight: torch.Tensor  # pre-packed for one batch size
    bias: Optional[torch.Tensor]
    act: str


class OneDnnPlan(NamedTuple):
    stem: ConvStep  # not packed: run_cpu_program computes it directly (3 input channels)
    blocks: tuple
    last: LastStagePlan  # for what follows its conv (SE, BN affine, activation); the conv is last_conv
    last_conv: OneDnnConv
    head: OneDnnLinear  # on the pooled features the head's 1x1 convs are matrix products
    classifier: OneDnnLinear


_HAS_ONEDNN = torch.backends.mkldnn.is_available() and all(
    hasattr(torch.ops.mkldnn, op) for op in ("_convolution_pointwise", "_reorder_convolution_weight",
                                             "_linear_pointwise", "_reorder_linear_weight"))


def onednn_usable(x: torch.Tensor) -> bool:
    """Whether the CPU oneDNN path can run this input."""
    return (_HAS_ONEDNN and x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16)
            and x.dim() == 4 and x.numel() > 0)


def _conv_shapes(plan: Plan, shape: list):
    """Yields (step, input shape, output shape) of every conv in network order (the stem, each
    block's expand, depthwise and project convs, the last stage's conv), for inputs of `shape`."""
    def conv(step):
        nonlocal shape
        k, dilation = step.weight.shape[-1], getattr(step, "dilation", 1)
        out = shape[:1] + [step.weight.shape[0]] + [
            conv_output_size(v, k, step.stride, step.padding, dilation) for v in shape[2:]]
        yield step, shape, out
        shape = out

    yield from conv(plan.stem)
    for b in plan.blocks:
        if b.expand is not None:
            yield from conv(b.expand)
        yield from conv(b.depthwise)
        yield from conv(b.project)
    yield from conv(plan.last.conv)


def pack_plan(plan: Plan, shape: list) -> OneDnnPlan:
    """The oneDNN plan of a folded plan, for inputs of `shape` (N, 3, H, W)."""
    input_shape = {id(step): in_shape for step, in_shape, _ in _conv_shapes(plan, list(shape))}

    def pack(step: ConvStep) -> OneDnnConv:
        p, s = step.padding, step.stride
        weight = torch.ops.mkldnn._reorder_convolution_weight(step.weight, [p, p], [s, s], [1, 1], 1,
                                                              input_shape[id(step)])
        return OneDnnConv(weight, step.bias, [p, p], [s, s], step.act)

    def linear(step: ConvStep) -> OneDnnLinear:
        weight = torch.ops.mkldnn._reorder_linear_weight(step.weight.flatten(1), shape[0])
        return OneDnnLinear(weight, step.bias, step.act)

    blocks = tuple(OneDnnBlock(None if b.expand is None else pack(b.expand), b.depthwise, b.se, pack(b.project),
                               b.residual) for b in plan.blocks)
    return OneDnnPlan(plan.stem, blocks, plan.last, pack(plan.last.conv), linear(plan.head), linear(plan.classifier))


def activation_peak(plan: Plan, shape: list) -> int:
    """The most elements (per image) any one conv reads plus writes, for inputs of `shape` (C, H, W)."""
    return max(math.prod(i[1:]) + math.prod(o[1:]) for _, i, o in _conv_shapes(plan, [1] + list(shape)))


class CpuProgram(NamedTuple):
    """A packed plan encoded for `mnv3::run_cpu_program` (see mnv3_fast/ops/cpu_program.py)."""

    tensors: list
    program: list
    stages: int  # MARKs: the stem, each block, the last stage


def encode_program(plan: OneDnnPlan) -> CpuProgram:
    tensors, program = [], []

    def ref(t: Optional[torch.Tensor]) -> int:
        if t is None:
            return -1
        tensors.append(t)
        return len(tensors) - 1

    def act(name: str) -> int:
        return cpu_program.ACTS.index(name)

    def conv(c: OneDnnConv, residual: bool = False):
        program.extend([cpu_program.CONV, ref(c.weight), ref(c.bias), c.stride[0], c.padding[0], act(c.act),
                        int(residual)])

    def se(s: Optional[SeStep]):
        if s is not None:
            program.extend([cpu_program.SE, *(ref(t) for t in s)])

    def linear(lin: OneDnnLinear):
        program.extend([cpu_program.LINEAR, ref(lin.weight), ref(lin.bias), act(lin.act), lin.weight.shape[0]])

    stem = plan.stem
    program.extend([cpu_program.STEM, ref(stem.weight), ref(stem.bias), stem.stride, stem.padding, act(stem.act),
                    cpu_program.MARK, stem.stride])
    for b in plan.blocks:
        if b.residual:
            program.append(cpu_program.SAVE)
        if b.expand is not None:
            conv(b.expand)
        dw = b.depthwise
        program.extend([cpu_program.DW, ref(dw.weight), ref(dw.bias), dw.stride, dw.padding, dw.dilation, act(dw.act)])
        se(b.se)
        conv(b.project, b.residual)
        program.extend([cpu_program.MARK, dw.stride])
    conv(plan.last_conv)
    last = plan.last
    se(last.se)
    if last.bn_scale is not None:
        program.extend([cpu_program.AFFINE, ref(last.bn_scale), ref(last.bn_shift)])
    program.extend([cpu_program.ACT, act(last.act), cpu_program.MARK, 1, cpu_program.POOL])
    linear(plan.head)
    linear(plan.classifier)
    return CpuProgram(tensors, program, len(plan.blocks) + 2)


# ---------------------------------------------------------------- the cache


# Bumped whenever any module anywhere registers a parameter, buffer or submodule
# (assignment included), so a cache can keep its list of tensors until then
# instead of walking the module tree on every call.
_STRUCTURE_EPOCH = [0]


def _structure_changed(*args):
    _STRUCTURE_EPOCH[0] += 1


torch.nn.modules.module.register_module_parameter_registration_hook(_structure_changed)
torch.nn.modules.module.register_module_buffer_registration_hook(_structure_changed)
torch.nn.modules.module.register_module_module_registration_hook(_structure_changed)


class _FoldCache:
    """Folded (and, on the CPU, pre-packed) plans, valid while no parameter or buffer changes.

    Entries: the folded plan per dtype; on the CPU, the encoded program per
    (dtype, input shape) and the activation peak per image shape.  The
    validity key is every parameter's and buffer's storage address and version
    counter (and the set of tensors itself): any in-place write (optimizer
    steps, `copy_`, BN running stats), `load_state_dict`, `.to()`, or a
    replaced tensor or submodule changes it.  The one thing it cannot see is
    a write through `tensor.data`, which PyTorch gives its own version
    counter; after such writes call `model.clear_fused_cache()`.
    """

    MAX_ENTRIES = 16  # plans for this many (dtype, input shape) pairs; the oldest go first

    def __init__(self):
        self.key = None
        self.plans: dict = {}
        self.tensors: list = []
        self.epoch = None

    def _key(self, model: nn.Module):
        if self.epoch != _STRUCTURE_EPOCH[0]:
            self.tensors, self.epoch = list(model._tracked_tensors()), _STRUCTURE_EPOCH[0]
        try:
            return tuple([t._version for t in self.tensors] + [t.data_ptr() for t in self.tensors])
        except RuntimeError:  # inference tensors have no version counter: don't cache
            return None

    def refresh(self, model) -> None:
        """Drops the entries if any tensor changed since the last call.  Computing
        the key walks every parameter (~40 us for Small), so a forward calls this
        once and then uses `get` and `put`."""
        key = self._key(model)
        if key is None or key != self.key:
            self.key, self.plans = key, {}

    def get(self, entry):
        return self.plans.get(entry)

    def put(self, entry, plan):
        if self.key is None:
            return
        if len(self.plans) >= self.MAX_ENTRIES:
            self.plans.pop(next(iter(self.plans)))
        self.plans[entry] = plan

    def clear(self):
        self.key, self.plans, self.epoch = None, {}, None

    def __reduce__(self):  # copies and pickles of the model start with an empty cache
        return (_FoldCache, ())


# ---------------------------------------------------------------- the model


class MobileNetV3(ref.MobileNetV3):
    """MobileNetV3 on fused kernels; a drop-in for `mnv3_fast.reference.MobileNetV3`.

    Same arguments (`model_mode`, `num_classes`, `multiplier`, `dropout_rate`,
    `variant`, or an explicit `config`), same state_dict.  Use
    `model.eval()` for inference; `model.to(memory_format=torch.channels_last)`
    with channels_last inputs is the fast layout on GPU.
    """

    # On the CPU a batch runs in chunks whose largest layer (input plus output
    # activations) fits in this many bytes, so that each layer's activations stay
    # in the caches (L2 + the shared L3) instead of going through DRAM.  Measured
    # on a 2-core EPYC with 32 MiB of L3: Large at batch 32 runs 25-35% faster per
    # image in chunks of 4-8 than whole.  Set to 0 to run the batch whole.
    cpu_chunk_bytes: int = 20 * 2**20

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

    def _cacheable(self) -> bool:
        """Plans may be cached unless compiling (the compiler traces the folds) or
        gradients must flow into the folded weights (frozen-BN fine-tuning)."""
        if torch.compiler.is_compiling():
            return False
        return not (torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()))

    def fused_plan(self, dtype: Optional[torch.dtype] = None) -> Plan:
        """The BN-folded plan the eval forward runs, cast to `dtype` (default: the weights')."""
        use_cache = self._cacheable()
        weight_dtype = self.init_conv[0].weight.dtype
        dtype = dtype or weight_dtype
        if use_cache:
            self._fold_cache.refresh(self)
            plan = self._fold_cache.get(dtype)
            if plan is not None:
                return plan
        with torch.set_grad_enabled(not use_cache and torch.is_grad_enabled()):
            plan = build_plan(self)
            if dtype != weight_dtype:
                plan = _cast_plan(plan, dtype)
        if use_cache:
            self._fold_cache.put(dtype, plan)
        return plan

    def _cpu_program(self, x: torch.Tensor) -> CpuProgram:
        """The encoded, pre-packed forward for inputs of x's shape; call `_fold_cache.refresh` first."""
        entry = ("onednn", x.dtype, tuple(x.shape))
        program = self._fold_cache.get(entry)
        if program is None:
            with torch.no_grad():
                program = encode_program(pack_plan(self.fused_plan(x.dtype), list(x.shape)))
            self._fold_cache.put(entry, program)
        return program

    def _cpu_chunks(self, x: torch.Tensor) -> int:
        """In how many chunks to run the batch on the CPU (see `cpu_chunk_bytes`); call
        `_fold_cache.refresh` first."""
        if not self.cpu_chunk_bytes:
            return 1
        entry = ("peak", tuple(x.shape[1:]))
        peak = self._fold_cache.get(entry)
        if peak is None:
            peak = activation_peak(self.fused_plan(x.dtype), list(x.shape[1:]))
            self._fold_cache.put(entry, peak)
        images = max(1, self.cpu_chunk_bytes // (peak * x.element_size()))
        return -(-x.shape[0] // images)

    # -- forward ------------------------------------------------------------

    def _use_reference(self) -> bool:
        # ONNX has no mnv3 ops: export the (numerically equal) reference graph.
        return torch.onnx.is_in_onnx_export()

    def _onednn_path(self, x: torch.Tensor) -> bool:
        """Whether the eval forward runs as the cached, pre-packed CPU program (never while compiling)."""
        return self._cacheable() and onednn_usable(x)

    def _stages_fused(self, x: torch.Tensor):
        """Yields (output, stride) after the stem, each block and the last stage (eval)."""
        if self._onednn_path(x):
            yield from self._stages_onednn(x)  # (the stem reads any layout; its output is channels_last)
            return
        plan = self.fused_plan(x.dtype)
        x = _run_conv(x, plan.stem)
        yield x, plan.stem.stride
        for b in plan.blocks:
            x = _run_block(x, b)
            yield x, b.depthwise.stride
        yield _run_last_stage(x, plan.last), 1

    def _stages_onednn(self, x: torch.Tensor):
        self._fold_cache.refresh(self)
        program = self._cpu_program(x)
        stages = cpu_program.interpret(x, program.tensors, program.program)
        for _ in range(program.stages):  # (stop before the pooling and the head)
            yield next(stages)

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
        # On the pooled 1x1 map the head's 1x1 convs are matrix products.
        pooled = features.mean(dim=(2, 3))
        head, classifier = _like(plan.head, pooled), _like(plan.classifier, pooled)
        hidden = _activation(F.linear(pooled, head.weight.flatten(1), head.bias), head.act)
        return F.linear(hidden, classifier.weight.flatten(1), classifier.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._use_reference() and not self.training and self._onednn_path(x):
            ref._check_input(x)
            return self._forward_onednn(x)  # (the stem reads any layout; its output is channels_last)
        return self.forward_head(self.forward_features(x))

    def _forward_onednn(self, x: torch.Tensor) -> torch.Tensor:
        self._fold_cache.refresh(self)
        logits = []
        # Near-equal chunks: at most two sizes to pack weights for.
        for part in x.tensor_split(self._cpu_chunks(x)):
            program = self._cpu_program(part)
            logits.append(_run_cpu_program(part, program.tensors, program.program))
        return logits[0] if len(logits) == 1 else torch.cat(logits)

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
