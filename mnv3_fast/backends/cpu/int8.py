"""int8 on the CPU: static post-training quantization of a folded plan, lowered
to an int8 CPU program (the QSTEM/QCONV/QDW/QSE/QPOOL instructions of
`mnv3_fast.ops.cpu_program`).

* Weights of the 1x1 convs (expand, project, last stage): int8, symmetric, one
  scale per output channel, run by oneDNN's int8 convolution
  (`onednn::qconv2d_pointwise`: VNNI / AMX-INT8 where the CPU has them) with
  the activation and the residual add fused.
* Activations between layers: uint8, one (scale, zero point) per tensor,
  observed over the calibration batches.  The depthwise conv and SE read and
  write uint8 but compute in fp32 with fp32 weights (depthwise int8 arithmetic
  gains little: it is memory-bound, and uint8 I/O already quarters its traffic);
  the SE's two matrices are stored in bf16 (at batch 1 the SE mostly reads them).
* Stem (3 input channels) in fp32 with a uint8 output; the head (pooled
  features, two small matrix products) in bf16 where PWCONV runs bf16 (AMX),
  else in fp32.  At batch 1 the head streams its weights (2.5M for Large): in
  fp32 that was 10 MB and 11-15% of the int8 forward on a Xeon.

Quantization points, per block: the expand conv's output, the depthwise conv's
(or, with SE, the SE's) output, and the block's output (after the residual
add); the stem's and the last stage's outputs.

Without VNNI (AVX2-only CPUs such as AMD Zen 3), oneDNN multiplies uint8 by
int8 with an instruction whose pairwise sums saturate at 16 bits, so full-range
weights give wrong results (measured with oneDNN held to AVX2: a 24-channel
conv up to 146 output codes off).  There the weights use 7 bits ([-63, 63]), as
oneDNN's documentation advises and ONNX Runtime's `reduce_range` does.
"""
from __future__ import annotations

import os
from typing import Iterable, NamedTuple, Optional

import torch
import torch.nn.functional as F

from ... import ops
from ...ops import cpu_program as isa
from ...ops._library import cpu_has
from ...ops.activations import activation
from ...plan import Plan
from . import program
from .program import CpuProgram, ProgramWriter, conv_shapes, pack_linear, pointwise


class Observer:
    """The range of the values seen at one quantization point.

    `percentile` < 100 clips the range to that percentile of |values| on each
    side (from a sample of every batch), so that a few outliers don't spend the
    256 codes; 100 is the plain min/max."""

    SAMPLE = 65536  # values kept per batch for the percentile

    def __init__(self, percentile: float):
        self.percentile = percentile
        self.low, self.high = [], []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.detach().float().flatten()
        if self.percentile >= 100:
            self.low.append(flat.min().item())
            self.high.append(flat.max().item())
            return x
        if flat.numel() > self.SAMPLE:
            flat = flat[torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(0))[: self.SAMPLE]]
        q = torch.tensor([1 - self.percentile / 100, self.percentile / 100], dtype=flat.dtype)
        low, high = torch.quantile(flat, q).tolist()
        self.low.append(low)
        self.high.append(high)
        return x

    def qparams(self) -> tuple[float, int]:
        """(scale, zero point) of uint8 codes covering the range (and 0, exactly)."""
        if not self.low:
            raise ValueError("mnv3_fast.quantize: a quantization point saw no data (empty calibration batches?)")
        low = min(min(self.low), 0.0)
        high = max(max(self.high), 0.0)
        scale = max(high - low, 1e-8) / 255
        return scale, int(min(255, max(0, round(-low / scale))))


class BlockRanges(NamedTuple):
    expand: Optional[Observer]
    depthwise: Optional[Observer]  # without SE
    se: Optional[Observer]
    out: Observer


class Ranges(NamedTuple):
    stem: Observer
    blocks: tuple
    last: Observer


def check_quantizable(plan: Plan) -> None:
    if plan.last.se is not None or plan.last.bn_scale is not None:
        raise ValueError("mnv3_fast.quantize: the seed variant's last stage (SE between the conv and its BN) is "
                         "not supported in int8; quantize a paper-variant model (torchvision / timm layout)")
    for i, b in enumerate(plan.blocks):
        if b.project.act != "none":
            raise ValueError(f"mnv3_fast.quantize: block {i} has an activation after its projection (the seed "
                             "variant); int8 supports the paper variant (torchvision / timm layout)")


@torch.no_grad()
def observe(plan: Plan, batches: Iterable[torch.Tensor], percentile: float) -> Ranges:
    """Runs the float32 plan over the calibration batches, recording each quantization point's range."""
    def new():
        return Observer(percentile)

    ranges = Ranges(new(), tuple(BlockRanges(new() if b.expand else None, None if b.se else new(),
                                             new() if b.se else None, new()) for b in plan.blocks), new())
    seen = 0
    for x in batches:
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"mnv3_fast.quantize: calibration batches must be (N, 3, H, W) tensors, got "
                             f"{type(x).__name__ if not isinstance(x, torch.Tensor) else list(x.shape)}")
        seen += 1
        x = x.float()
        s = plan.stem
        y = ranges.stem(activation(F.conv2d(x, s.weight, s.bias, s.stride, s.padding), s.act))
        for b, r in zip(plan.blocks, ranges.blocks):
            h = y
            if b.expand is not None:
                e = b.expand
                h = r.expand(activation(F.conv2d(h, e.weight, e.bias, e.stride, e.padding), e.act))
            h = ops.reference_ops.dw_conv_bn_act(h, *b.depthwise)
            if b.se is not None:
                h = r.se(ops.reference_ops.squeeze_excite(h, *b.se))
            else:
                r.depthwise(h)
            p = b.project
            h = F.conv2d(h, p.weight, p.bias, p.stride, p.padding)
            y = r.out(y + h if b.residual else h)
        c = plan.last.conv
        ranges.last(activation(F.conv2d(y, c.weight, c.bias, c.stride, c.padding), c.act))
    if not seen:
        raise ValueError("mnv3_fast.quantize: calibration_batches yielded no batch")
    return ranges


class Int8Conv(NamedTuple):
    weight: torch.Tensor  # packed by onednn::qconv_prepack
    scale: torch.Tensor  # float32, per output channel
    zero_point: torch.Tensor  # int32 zeros (symmetric)
    bias: Optional[torch.Tensor]
    stride: int
    padding: int
    act: str


_NO_VNNI_ISAS = {"SSE41", "AVX", "AVX2", "AVX512_CORE"}  # ONEDNN_MAX_CPU_ISA values below VNNI


def onednn_has_vnni() -> bool:
    """Whether oneDNN's int8 convolutions run on VNNI (AVX512-VNNI or AMX) here: the CPU has it and
    ONEDNN_MAX_CPU_ISA (or DNNL_MAX_CPU_ISA) does not hold oneDNN below it."""
    for var in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        if os.environ.get(var, "").upper() in _NO_VNNI_ISAS:
            return False
    check = getattr(torch.cpu, "_is_vnni_supported", None) or getattr(torch.cpu, "_is_avx512_vnni_supported", None)
    if check is not None:
        return bool(check())
    return cpu_has({"avx512_vnni"}, unknown=False) or cpu_has({"amx_int8"}, unknown=False)


#: The largest weight code: 127 with VNNI, 63 without (see the module docstring).
WEIGHT_MAX = 127 if onednn_has_vnni() else 63


def quantize_weight(weight: torch.Tensor, weight_max: int = WEIGHT_MAX) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 codes and fp32 per-output-channel scales, symmetric: w ~ q * scale, q in [-weight_max,
    weight_max] (127, or 63 where oneDNN's int8 convs have no VNNI)."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=tuple(range(1, w.dim()))).clamp_min(1e-12) / weight_max
    q = torch.clamp(torch.round(w / scale.reshape(-1, *([1] * (w.dim() - 1)))), -weight_max, weight_max)
    return q.to(torch.int8), scale


def int8_conv(step, in_qparams: tuple[float, int], in_shape: Optional[list] = None) -> Int8Conv:
    """`in_shape`: the input's (N, C, H, W), for which oneDNN picks the weights' layout (without it, a
    layout for a default shape that the conv, at run time, may re-pack on every call)."""
    q, scale = quantize_weight(step.weight)
    packed = torch.ops.onednn.qconv_prepack(q.contiguous(memory_format=torch.channels_last), scale,
                                            in_qparams[0], in_qparams[1], [step.stride] * 2, [step.padding] * 2,
                                            [1, 1], 1, None if in_shape is None else list(in_shape))
    bias = None if step.bias is None else step.bias.detach().float()
    return Int8Conv(packed, scale, torch.zeros(scale.shape[0], dtype=torch.int32), bias, step.stride, step.padding,
                    step.act)


#: QPWCONV for batches of at most this many images; oneDNN's int8 convolution (QCONV) above.  Measured
#: on a 2-vCPU Xeon (AMX), 2 threads, against QCONV: Large 20-25% and Small 33% faster at batch 1 (ATen's
#: per-call qconv wrapper is gone), about even at 4 and 8, but 7-12% slower at batch 32 (Large), even
#: with only its convs over at most 32K pixels on QPWCONV: there oneDNN's own int8 kernels win.
QPWCONV_MAX_BATCH = 8


def pointwise_int8(step, in_shape: list) -> bool:
    """Whether a conv runs as QPWCONV (AMX-INT8 tiles, without ATen's per-call qconv
    wrapper): where `program.pointwise` allows int8, for a batch of at most QPWCONV_MAX_BATCH."""
    return program.pointwise(step, torch.int8) and in_shape[0] <= QPWCONV_MAX_BATCH


def qpwconv_weights(step, in_qparams: tuple[float, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """QPWCONV's packed int8 weight and its float32 (scale, shift) rows: with x = s (q - zp) and
    w = q_w * w_scale, conv(x) + b = acc * (s w_scale) + (b - s w_scale zp sum(q_w)), acc = sum(q q_w)."""
    q, w_scale = quantize_weight(step.weight)
    s, zp = in_qparams
    scale = s * w_scale.double()
    bias = step.bias.detach().double() if step.bias is not None else torch.zeros_like(scale)
    shift = bias - scale * zp * q.flatten(1).sum(1).double()
    return program._C.pack_pointwise(q), torch.stack([scale, shift]).float().contiguous()


def qparams_tensor(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


@torch.no_grad()
def encode_int8_program(plan: Plan, ranges: Ranges, shape: list) -> CpuProgram:
    """The int8 program of a float32 plan with observed ranges, its weights packed for inputs of
    `shape` (N, 3, H, W) on the current number of threads (see threads.py)."""
    w = ProgramWriter()
    tensor, act = w.tensor, w.act
    input_shape = {id(step): in_shape for step, in_shape, _ in conv_shapes(plan, list(shape))}
    batch = shape[0]

    def qconv(step, q_in, q_out, q_res=None):
        qp = qparams_tensor(*q_in, *q_out, *(q_res or (0.0, 0)))
        if pointwise_int8(step, input_shape[id(step)]):
            weight, params = qpwconv_weights(step, q_in)
            w.emit(isa.QPWCONV, tensor(weight), tensor(params), act(step.act), int(q_res is not None), tensor(qp))
            return
        c = int8_conv(step, q_in, input_shape[id(step)])
        w.emit(isa.QCONV, tensor(c.weight), tensor(c.scale), tensor(c.zero_point), tensor(c.bias), c.stride,
               c.padding, act(c.act), int(q_res is not None), tensor(qp))

    s = plan.stem
    q = ranges.stem.qparams()
    w.emit(isa.QSTEM, tensor(_floats(s.weight)), tensor(_floats(s.bias)), s.stride, s.padding, act(s.act),
           tensor(qparams_tensor(*q)))
    w.emit(isa.MARK, s.stride)
    for b, r in zip(plan.blocks, ranges.blocks):
        q_in = q
        if b.residual:
            w.emit(isa.SAVE)
        if b.expand is not None:
            q_e = r.expand.qparams()
            qconv(b.expand, q, q_e)
            q = q_e
        dw = b.depthwise
        q_dw = (0.0, 0) if b.se is not None else r.depthwise.qparams()  # (SE reads the dw output as float32)
        w.emit(isa.QDW, tensor(_floats(dw.weight)), tensor(_floats(dw.bias)), dw.stride, dw.padding, dw.dilation,
               act(dw.act), tensor(qparams_tensor(*q, *q_dw)))
        q = q_dw
        if b.se is not None:
            q = r.se.qparams()
            w1, b1, w2, b2 = b.se  # (the matrices in bf16: at batch 1 the SE mostly reads them)
            w.emit(isa.QSE, tensor(_bf16(w1)), tensor(_floats(b1)), tensor(_bf16(w2)), tensor(_floats(b2)),
                   tensor(qparams_tensor(*q)))
        q_out = r.out.qparams()
        qconv(b.project, q, q_out, q_in if b.residual else None)
        q = q_out
        w.emit(isa.MARK, dw.stride)
    q_last = ranges.last.qparams()
    qconv(plan.last.conv, q, q_last)
    w.emit(isa.MARK, 1)
    w.emit(isa.QPOOL, tensor(qparams_tensor(*q_last)))
    w.linear(head_linear(plan.head, batch))
    w.linear(head_linear(plan.classifier, batch))
    return w.done(len(plan.blocks) + 2)


def _floats(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.detach().float()


def _bf16(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.bfloat16).contiguous()


def head_linear(step, batch: int):
    """One of the head's matrix products for the int8 program: bf16 weights (and a float32 bias) where
    PWCONV runs bf16, the pooled features converted as the LINEAR starts; else float32."""
    fp32 = step._replace(weight=_floats(step.weight), bias=_floats(step.bias))
    bf16 = fp32._replace(weight=_bf16(fp32.weight))
    if pointwise(bf16):
        return pack_linear(bf16, batch, fp32_step=fp32)
    return pack_linear(fp32, batch)
