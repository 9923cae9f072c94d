"""Lowering a folded plan to a CPU program: the 1x1 convs and the head packed for
oneDNN, then the whole network encoded for `mnv3::run_cpu_program`.

The 1x1 convs (expand, project, last stage) run on oneDNN, with weights
pre-packed once, the activation and the residual add fused in:
* as PWCONV, a loop over output tiles in csrc/pointwise_conv.cpp (float32, and
  bfloat16 with AMX; tiles on our AMX micro-kernel, our fp32 register tiles on
  AVX-512, or oneDNN's brgemm micro-kernel through ATen's cpublas): no per-call
  conv wrapper, which at batch 1 cost about as much as the convs' arithmetic;
* else as CONV, oneDNN convolutions (the ATen ops torch.compile's CPU backend
  uses), weights in oneDNN's blocked layout.
ATen's own conv2d picks a slow fallback for many of MobileNetV3's 1x1 shapes in
channels_last, and re-packs the weights on every call.  Everything runs
channels_last.  The instruction set is `mnv3_fast.ops.cpu_program`'s.
"""
from __future__ import annotations

import math
import os
from typing import NamedTuple, Optional

import torch

from ...ops import cpu_program as isa
from ...ops._library import EXTENSION_ERROR
from ...ops._checks import conv_output_size
from ...plan import ConvStep, DwStep, LastStagePlan, Plan, SeStep

if EXTENSION_ERROR is None:
    from ... import _C
else:
    _C = None

HAS_ONEDNN = torch.backends.mkldnn.is_available() and all(
    hasattr(torch.ops.mkldnn, op) for op in ("_convolution_pointwise", "_reorder_convolution_weight",
                                             "_linear_pointwise", "_reorder_linear_weight"))


def _onednn_bf16() -> bool:
    """Whether oneDNN runs bf16 convolutions on this CPU: it needs AVX512-BW/VL/DQ or AVX-NE-CONVERT
    (an AVX2-only CPU, e.g. AMD Zen 3, has neither, and packing bf16 weights raises there)."""
    supported = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return HAS_ONEDNN and supported is not None and bool(supported())
    except RuntimeError:
        return False


HAS_ONEDNN_BF16 = _onednn_bf16()


def _pointwise_dtypes() -> tuple:
    """The dtypes whose 1x1 convs run as PWCONV (tile loops, without ATen's per-call conv wrapper): what
    the extension reports for this build and CPU (float32 where torch has the fp32 brgemm; bfloat16 with
    AMX).  MNV3_CPU_PWCONV=0 keeps every 1x1 conv on oneDNN's convolution."""
    if _C is None or os.environ.get("MNV3_CPU_PWCONV", "1") == "0":
        return ()
    return tuple(getattr(torch, name) for name in _C.POINTWISE_DTYPES)


POINTWISE_DTYPES = _pointwise_dtypes()


class PackedConv(NamedTuple):
    weight: torch.Tensor  # pre-packed for one input size (oneDNN), or for PWCONV
    bias: Optional[torch.Tensor]
    stride: int
    padding: int
    act: str  # "none", "relu" or "hswish" (applied before the residual add, if any)
    pointwise: bool = False  # a PWCONV (weight from _C.pack_pointwise, bias float32 and never None)


class PackedBlock(NamedTuple):
    expand: Optional[PackedConv]
    depthwise: DwStep
    se: Optional[SeStep]
    project: PackedConv
    residual: bool


class PackedLinear(NamedTuple):
    weight: torch.Tensor  # mkldnn-packed for one batch size, or packed as PWCONV's
    bias: Optional[torch.Tensor]
    act: str
    out_features: int


class PackedPlan(NamedTuple):
    stem: ConvStep  # not packed: run_cpu_program computes it directly (3 input channels)
    blocks: tuple
    last: LastStagePlan  # for what follows its conv (SE, BN affine, activation); the conv is last_conv
    last_conv: PackedConv
    head: PackedLinear  # on the pooled features the head's 1x1 convs are matrix products
    classifier: PackedLinear


class CpuProgram(NamedTuple):
    """A packed plan encoded for `mnv3::run_cpu_program`."""

    tensors: list
    program: list
    stages: int  # MARKs: the stem, each block, the last stage


def conv_shapes(plan: Plan, shape: list):
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


def pack_plan(plan: Plan, shape: list, params: Optional[Plan] = None) -> PackedPlan:
    """The oneDNN-packed plan of a folded plan, for inputs of `shape` (N, 3, H, W).  `params`: the
    same plan in float32, whose depthwise parameters and biases a bf16 program uses (the kernels take
    them as they are: no conversion on every call, and more precise).  The SE matrices stay in the
    plan's dtype: at batch 1 the SE mostly reads them, and in bf16 it reads half (Large bf16 b1 on a
    Xeon, the 960-channel SE: 82 -> 59 us)."""
    params = params or plan
    input_shape = {id(step): in_shape for step, in_shape, _ in conv_shapes(plan, list(shape))}

    def pack(step: ConvStep, fp32_step: ConvStep) -> PackedConv:
        p, s = step.padding, step.stride
        if pointwise(step):
            return PackedConv(_C.pack_pointwise(step.weight), pointwise_bias(fp32_step), s, p, step.act, True)
        weight = torch.ops.mkldnn._reorder_convolution_weight(step.weight, [p, p], [s, s], [1, 1], 1,
                                                              input_shape[id(step)])
        return PackedConv(weight, step.bias, s, p, step.act)

    def linear(step: ConvStep, fp32_step: ConvStep) -> PackedLinear:
        return pack_linear(step, shape[0], fp32_step)

    def se(step: Optional[SeStep], fp32_step: Optional[SeStep]) -> Optional[SeStep]:
        return None if step is None else SeStep(step.w1, fp32_step.b1.float(), step.w2, fp32_step.b2.float())

    blocks = tuple(PackedBlock(None if b.expand is None else pack(b.expand, p.expand), p.depthwise,
                               se(b.se, p.se), pack(b.project, p.project), b.residual)
                   for b, p in zip(plan.blocks, params.blocks))
    last = plan.last._replace(se=se(plan.last.se, params.last.se))
    return PackedPlan(plan.stem, blocks, last, pack(plan.last.conv, params.last.conv),
                      linear(plan.head, params.head), linear(plan.classifier, params.classifier))


_VNNI_GROUP = {torch.bfloat16: 2, torch.int8: 4}  # input channels AMX takes together


def pointwise(step: ConvStep, dtype: Optional[torch.dtype] = None) -> bool:
    """Whether a conv runs as PWCONV in `dtype` (default: its weight's; QPWCONV for int8): 1x1, stride 1,
    a dtype of POINTWISE_DTYPES, and for bfloat16 and int8 input channels in whole VNNI groups."""
    w, dtype = step.weight, dtype or step.weight.dtype
    return (dtype in POINTWISE_DTYPES and w.shape[2:] == (1, 1) and step.stride == 1 and step.padding == 0
            and w.shape[1] % _VNNI_GROUP.get(dtype, 1) == 0)


def pointwise_bias(step: ConvStep) -> torch.Tensor:
    """A PWCONV's bias: float32, and zeros where the step has none (PWCONV requires one)."""
    return torch.zeros(step.weight.shape[0]) if step.bias is None else step.bias.float()


def pack_linear(step: ConvStep, batch: int, fp32_step: Optional[ConvStep] = None) -> PackedLinear:
    """A head 1x1 conv as a matrix product on pooled features: packed as PWCONV's where PWCONV runs
    (at batch 1 a product streams the weight once, and PWCONV's tiles did so 1.6-1.9x faster than
    oneDNN's linear on a Xeon), otherwise for oneDNN's linear at `batch` rows."""
    out_features = step.weight.shape[0]
    if pointwise(step):
        return PackedLinear(_C.pack_pointwise(step.weight), pointwise_bias(fp32_step or step), step.act,
                            out_features)
    weight = torch.ops.mkldnn._reorder_linear_weight(step.weight.flatten(1), batch)
    return PackedLinear(weight, step.bias, step.act, out_features)


def activation_peak(plan: Plan, shape: list) -> int:
    """The most elements (per image) any one conv reads plus writes, for inputs of `shape` (C, H, W)."""
    return max(math.prod(i[1:]) + math.prod(o[1:]) for _, i, o in conv_shapes(plan, [1] + list(shape)))


def tap_major(weight: torch.Tensor) -> torch.Tensor:
    """A depthwise weight (C, 1, k, k) with its memory laid out (k, k, C), as the channels_last kernel
    reads it: the kernel then takes it as it is, instead of reordering it on every call."""
    return weight.permute(2, 3, 1, 0).contiguous().permute(3, 2, 0, 1)


class ProgramWriter:
    """Writes a program: instructions, and the tensors their arguments index."""

    def __init__(self):
        self.tensors: list = []
        self.program: list = []

    def tensor(self, t: Optional[torch.Tensor]) -> int:
        if t is None:
            return -1
        self.tensors.append(t)
        return len(self.tensors) - 1

    def emit(self, opcode: int, *args: int) -> None:
        self.program.extend([opcode, *args])

    @staticmethod
    def act(name: str) -> int:
        return isa.ACTS.index(name)

    def linear(self, lin: PackedLinear) -> None:
        self.emit(isa.LINEAR, self.tensor(lin.weight), self.tensor(lin.bias), self.act(lin.act), lin.out_features)

    def done(self, stages: int) -> CpuProgram:
        return CpuProgram(self.tensors, self.program, stages)


def encode_program(plan: PackedPlan) -> CpuProgram:
    w = ProgramWriter()
    tensor, act = w.tensor, w.act

    def conv(c: PackedConv, residual: bool = False):
        if c.pointwise:
            w.emit(isa.PWCONV, tensor(c.weight), tensor(c.bias), act(c.act), int(residual))
        else:
            w.emit(isa.CONV, tensor(c.weight), tensor(c.bias), c.stride, c.padding, act(c.act), int(residual))

    def se(s: Optional[SeStep]):
        if s is not None:
            w.emit(isa.SE, *(tensor(t) for t in s))

    stem = plan.stem
    w.emit(isa.STEM, tensor(stem.weight), tensor(stem.bias), stem.stride, stem.padding, act(stem.act))
    w.emit(isa.MARK, stem.stride)
    for b in plan.blocks:
        if b.residual:
            w.emit(isa.SAVE)
        if b.expand is not None:
            conv(b.expand)
        dw = b.depthwise
        w.emit(isa.DW, tensor(tap_major(dw.weight)), tensor(dw.bias), dw.stride, dw.padding, dw.dilation,
               act(dw.act))
        se(b.se)
        conv(b.project, b.residual)
        w.emit(isa.MARK, dw.stride)
    conv(plan.last_conv)
    last = plan.last
    se(last.se)
    if last.bn_scale is not None:
        w.emit(isa.AFFINE, tensor(last.bn_scale), tensor(last.bn_shift))
    w.emit(isa.ACT, act(last.act))
    w.emit(isa.MARK, 1)
    w.emit(isa.POOL)
    w.linear(plan.head)
    w.linear(plan.classifier)
    return w.done(len(plan.blocks) + 2)
