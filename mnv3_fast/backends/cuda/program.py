"""The CUDA backend's program: a folded plan laid out for the Triton kernels, and the forward
over it.

Prepared once per dtype (and cached with the folded weights): every weight cast to the
compute dtype and laid out for its kernel:
* 1x1 convs and the head's linears as contiguous (Cin, Cout) matrices (B of the GEMM, rows
  contiguous along Cout, the dimension the tile and the output rows run along);
* depthwise weights as (k, k, C), so a tap's weights for a channel tile are one vector load;
* the stem's and SE's weights as they are (contiguous).

The forward, per block: [expand GEMM + bias + act] -> depthwise + bias + act (+ the first
stage of SE's pooling: per-tile partial sums, no atomics) -> [SE gate: the second stage of
the pooling and both FCs in one kernel] -> project GEMM with the gate applied to its input
tiles as they load, bias, and the residual added in its epilogue.  The last stage's GEMM
writes only the pooled features (the 7x7 map is never stored), then the head's two GEMMs.
Activations stay channels_last throughout; every kernel reads its input through strides, so
the image may come NCHW or NHWC.  Launches a forward: Large 56, Small 45.

The seed SMALL variant's last stage (conv -> SE -> BN -> activation) writes its map and runs
that tail as ops (it is a 7x7 map).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from ...ops import squeeze_excite as _squeeze_excite_op
from ...ops.activations import activation
from ...ops.triton.dw_conv_bn_act import launch as dw_launch, new_partials
from ...ops.triton.pw_conv_bn_act import launch as pw_launch
from ...ops.triton.se_gate import launch as gate_launch
from ...ops.triton.stem_conv import launch as stem_launch

CL = torch.channels_last


class Gemm(NamedTuple):
    weight: torch.Tensor  # (Cout, Cin) view of a contiguous (Cin, Cout) matrix
    bias: Optional[torch.Tensor]
    act: str


class Depthwise(NamedTuple):
    weight: torch.Tensor  # (C, 1, k, k) view of a contiguous (k, k, 1, C) tensor
    bias: Optional[torch.Tensor]
    stride: int
    padding: int
    dilation: int
    act: str


class Gate(NamedTuple):
    w1: torch.Tensor  # (S, C)
    b1: torch.Tensor
    w2: torch.Tensor  # (C, S)
    b2: torch.Tensor


class Block(NamedTuple):
    expand: Optional[Gemm]
    depthwise: Depthwise
    se: Optional[Gate]
    project: Gemm
    residual: bool


class Stem(NamedTuple):
    weight: torch.Tensor
    bias: Optional[torch.Tensor]
    stride: int
    padding: int
    act: str


class Program(NamedTuple):
    stem: Stem
    blocks: tuple
    last: Gemm
    last_tail: Optional[object]  # the folded LastStagePlan when its conv is followed by SE/BN (seed SMALL)
    head: Gemm
    classifier: Gemm
    dtype: torch.dtype


def unsupported(plan) -> list[str]:
    """Why the program cannot be built from this folded plan (layers outside the kernels' range)."""
    reasons = []
    stem = plan.stem
    if stem.weight.shape[1] > 4 or stem.weight.shape[-1] not in (3, 5) or stem.stride not in (1, 2):
        reasons.append(f"the stem conv {tuple(stem.weight.shape)} stride {stem.stride}: the stem kernel takes "
                       "<= 4 input channels, 3x3 or 5x5, stride 1 or 2")
    convs = [("last stage", plan.last.conv)] + [(f"block {i}", c) for i, b in enumerate(plan.blocks)
                                               for c in (b.expand, b.project) if c is not None]
    for where, c in convs:
        if c.weight.shape[-1] != 1 or c.stride != 1 or c.padding != 0:
            reasons.append(f"{where}: a {c.weight.shape[-1]}x{c.weight.shape[-1]} conv with stride {c.stride} and "
                           f"padding {c.padding} where the GEMM kernel takes 1x1, stride 1, no padding")
    return reasons


def _gemm(step, dtype) -> Gemm:
    w = step.weight.detach().to(dtype).flatten(1)  # (Cout, Cin)
    bias = None if step.bias is None else step.bias.detach().to(dtype).contiguous()
    return Gemm(w.t().contiguous().t(), bias, step.act)


def prepare(plan, dtype: torch.dtype) -> Program:
    """The folded plan's weights cast to `dtype` and laid out for the kernels."""
    def vec(t):
        return None if t is None else t.detach().to(dtype).contiguous()

    def depthwise(d) -> Depthwise:
        w = d.weight.detach().to(dtype).permute(2, 3, 1, 0).contiguous().permute(3, 2, 0, 1)
        return Depthwise(w, vec(d.bias), d.stride, d.padding, d.dilation, d.act)

    def gate(se) -> Optional[Gate]:
        if se is None:
            return None
        S, C = se.w1.shape[0], se.w2.shape[0]
        return Gate(vec(se.w1.reshape(S, C)), vec(se.b1), vec(se.w2.reshape(C, S)), vec(se.b2))

    blocks = tuple(Block(None if b.expand is None else _gemm(b.expand, dtype), depthwise(b.depthwise), gate(b.se),
                         _gemm(b.project, dtype), b.residual) for b in plan.blocks)
    last = plan.last
    fused_last = last.se is None and last.bn_scale is None and last.act == "none"
    stem = plan.stem
    return Program(Stem(vec(stem.weight), vec(stem.bias), stem.stride, stem.padding, stem.act), blocks,
                   _gemm(last.conv, dtype), None if fused_last else last, _gemm(plan.head, dtype),
                   _gemm(plan.classifier, dtype), dtype)


def _empty(x: torch.Tensor, channels: int, h: int, w: int) -> torch.Tensor:
    return torch.empty((x.shape[0], channels, h, w), device=x.device, dtype=x.dtype, memory_format=CL)


def _conv_size(size, k, stride, padding, dilation=1):
    return (size + 2 * padding - dilation * (k - 1) - 1) // stride + 1


def _gemm_out(x, g: Gemm, residual=None, gate=None, pool=False) -> torch.Tensor:
    if pool:
        out = torch.empty((x.shape[0], g.weight.shape[0]), device=x.device, dtype=x.dtype)
    else:
        out = _empty(x, g.weight.shape[0], x.shape[2], x.shape[3])
    pw_launch(x, g.weight, g.bias, out, g.act, residual, gate, pool)
    return out


def run_block(x: torch.Tensor, b: Block) -> torch.Tensor:
    y = x if b.expand is None else _gemm_out(x, b.expand)
    d = b.depthwise
    k = d.weight.shape[-1]
    out = _empty(y, y.shape[1], _conv_size(y.shape[2], k, d.stride, d.padding, d.dilation),
                 _conv_size(y.shape[3], k, d.stride, d.padding, d.dilation))
    partials = new_partials(out) if b.se is not None else None
    dw_launch(y, d.weight, d.bias, out, partials, d.stride, d.padding, d.dilation, d.act)
    gate = None
    if b.se is not None:
        gate = torch.empty((out.shape[0], out.shape[1]), device=out.device, dtype=torch.float32)
        gate_launch(partials, b.se.w1, b.se.b1, b.se.w2, b.se.b2, gate, out.shape[2] * out.shape[3])
    return _gemm_out(out, b.project, x if b.residual else None, gate)


def run_stem(x: torch.Tensor, program: Program) -> torch.Tensor:
    s = program.stem
    k = s.weight.shape[-1]
    out = _empty(x, s.weight.shape[0], _conv_size(x.shape[2], k, s.stride, s.padding),
                 _conv_size(x.shape[3], k, s.stride, s.padding))
    stem_launch(x, s.weight, s.bias, out, s.stride, s.padding, s.act)
    return out


def _last_tail(y: torch.Tensor, last) -> torch.Tensor:
    """Seed SMALL: SE, the BN affine and the activation after the last conv (as the generic path)."""
    if last.se is not None:
        se = last.se
        y = _squeeze_excite_op(y, se.w1.to(y.dtype), se.b1.to(y.dtype), se.w2.to(y.dtype), se.b2.to(y.dtype))
    if last.bn_scale is not None:
        y = y * last.bn_scale.to(y.dtype)[:, None, None] + last.bn_shift.to(y.dtype)[:, None, None]
    return activation(y, last.act)


def stages(program: Program, x: torch.Tensor):
    """Yields (output, stride) after the stem, each block and the last stage (its map)."""
    x = run_stem(x, program)
    yield x, program.stem.stride
    for b in program.blocks:
        x = run_block(x, b)
        yield x, b.depthwise.stride
    y = _gemm_out(x, program.last)
    yield (y if program.last_tail is None else _last_tail(y, program.last_tail)), 1


def head(program: Program, pooled: torch.Tensor) -> torch.Tensor:
    """The classifier's two GEMMs on (N, C) pooled features (one row per image)."""
    h = _gemm_out(pooled[:, :, None, None], program.head)
    return _gemm_out(h, program.classifier).flatten(1)


def forward(program: Program, x: torch.Tensor) -> torch.Tensor:
    """Logits; the last stage's GEMM writes only the per-image means of its map."""
    if program.last_tail is not None:
        for features, _ in stages(program, x):
            pass
        return head(program, features.mean(dim=(2, 3)))
    y = run_stem(x, program)
    for b in program.blocks:
        y = run_block(y, b)
    return head(program, _gemm_out(y, program.last, pool=True))
