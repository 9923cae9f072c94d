"""mnv3::run_cpu_program: a whole CPU inference forward as one op.

At batch 1 a MobileNetV3 forward is ~60 small ops, and running them one by one
from Python costs about as much as the arithmetic (measured: ~1 ms of a 3-4 ms
MobileNetV3-Small forward on 2 cores).  The model therefore encodes its folded,
pre-packed network as a *program*: a flat list of ints over a list of tensors,
built once and cached with the folded weights.  The C++ kernel
(csrc/cpu_program.cpp) runs the program in one call: the regular convs as
oneDNN convolutions (ATen's `mkldnn::_convolution_pointwise` ops, weights
packed by `mkldnn::_reorder_convolution_weight`), the depthwise convs and SE as
the mnv3 kernels.  `interpret` below is the same machine in Python: the op's
reference (used when the extension is missing), and the stage-by-stage runner
behind `MobileNetV3.feature_maps`.

Instructions (opcode, then its arguments; tensor arguments index `tensors`,
-1 for "no bias"; an activation code is an index into ACTIVATIONS: 0 none,
1 relu, 2 hswish).  The table `OPCODES` below is the instruction set's source
of truth:

    SAVE                                   keep the current value (a residual)
    CONV   weight bias stride pad act res  conv, act; res=1 adds the saved value
    DW     weight bias stride pad dil act  mnv3::dw_conv_bn_act (weight, bias: x's dtype, or
                                           float32 for a bfloat16 x)
    SE     w1 b1 w2 b2                     mnv3::squeeze_excite (likewise)
    AFFINE scale shift                     per-channel x * scale + shift
    ACT    act
    MARK   stride                          a stage ends here (for feature maps)
    POOL                                   global average pool: (N, C, H, W) -> (N, C);
                                           after it only ACT and LINEAR
    LINEAR weight bias act out_features    on pooled features; the program ends with one
    STEM   weight bias stride pad act      a conv over few input channels (the image),
                                           computed directly; any input layout in,
                                           channels_last out

Inference only: no autograd (the weights are packed copies).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from ._checks import ACTIVATIONS, check_floating, check_rank4
from .activations import activation
from ._library import EXTENSION_ERROR, LIB, define

OP = "mnv3::run_cpu_program"


class Opcode(NamedTuple):
    name: str
    num_args: int
    act_arg: int  # which argument is an activation code (-1: none)
    tensor_args: tuple  # which arguments index `tensors`
    optional_args: tuple = ()  # of those, which may be -1 (no bias)


# The instruction set: the source of truth.  The C++ runner has its own copy
# (csrc/program_table.h, exported as mnv3_fast._C.PROGRAM_TABLE); a test checks
# that the two agree.  An opcode is its index here.
OPCODES = (
    Opcode("SAVE", 0, -1, ()),
    Opcode("CONV", 6, 4, (0, 1), (1,)),
    Opcode("DW", 6, 5, (0, 1), (1,)),
    Opcode("SE", 4, -1, (0, 1, 2, 3)),
    Opcode("AFFINE", 2, -1, (0, 1)),
    Opcode("ACT", 1, 0, ()),
    Opcode("MARK", 1, -1, ()),
    Opcode("POOL", 0, -1, ()),
    Opcode("LINEAR", 4, 2, (0, 1), (1,)),
    Opcode("STEM", 5, 4, (0, 1), (1,)),
)
SAVE, CONV, DW, SE, AFFINE, ACT, MARK, POOL, LINEAR, STEM = range(len(OPCODES))
ACTS = ACTIVATIONS  # an activation code is the index of its name
# oneDNN's ReLU post-op turns NaN into 0 (hiding a bad input); its hard-swish
# keeps NaN.  So ReLU runs after the conv, in place.
ONEDNN_ATTR = ("none", "none", "hardswish")
_ON_POOLED = (ACT, LINEAR)  # the instructions that take the pooled (N, C) value


def decode(program: list, tensors: list) -> list:
    """[(opcode, args)] of a program, checked: known opcodes, whole instructions,
    tensor indices in range, known activations, a SAVE before each residual,
    4-D instructions before the POOL and a LINEAR after it, a LINEAR's declared
    size matching its weight, a LINEAR last."""
    out, i, saved, pooled_at = [], 0, False, None
    num_tensors = len(tensors)
    while i < len(program):
        op = program[i]
        if not 0 <= op < len(OPCODES):
            raise ValueError(f"{OP}: unknown opcode {op} at position {i} (expected 0..{len(OPCODES) - 1})")
        info = OPCODES[op]
        args = list(program[i + 1 : i + 1 + info.num_args])
        if len(args) != info.num_args:
            raise ValueError(f"{OP}: {info.name} at position {i} needs {info.num_args} arguments, got {len(args)}")
        for k in info.tensor_args:
            if not (-1 if k in info.optional_args else 0) <= args[k] < num_tensors:
                raise ValueError(f"{OP}: {info.name} at position {i} names tensor {args[k]}, "
                                 f"but there are {num_tensors} tensors")
        if info.act_arg >= 0 and not 0 <= args[info.act_arg] < len(ACTS):
            raise ValueError(f"{OP}: {info.name} at position {i} has activation code {args[info.act_arg]} "
                             f"(expected 0 none, 1 relu or 2 hswish)")
        if pooled_at is not None and op not in _ON_POOLED:
            raise ValueError(f"{OP}: {info.name} at position {i} needs a 4-D value, but the value was pooled "
                             f"at position {pooled_at}")
        if op == LINEAR and pooled_at is None:
            raise ValueError(f"{OP}: LINEAR at position {i} needs pooled (N, C) features: put a POOL before it")
        pooled_at = i if op == POOL else pooled_at
        saved = saved or op == SAVE
        if op == CONV and args[5] and not saved:
            raise ValueError(f"{OP}: CONV at position {i} adds a residual, but no SAVE comes before it")
        if op == LINEAR and (tensors[args[0]].dim() != 2 or tensors[args[0]].shape[0] != args[3]):
            raise ValueError(f"{OP}: LINEAR at position {i} declares {args[3]} output features, "
                             f"but its weight has shape {list(tensors[args[0]].shape)}")
        out.append((op, args))
        i += 1 + info.num_args
    if not out or out[-1][0] != LINEAR:
        raise ValueError(f"{OP}: expected the program to end with a LINEAR instruction")
    return out


def _check(x: torch.Tensor, tensors: list, program: list) -> list:
    check_rank4(OP, x)
    if x.device.type != "cpu":
        raise ValueError(f"{OP}: runs on the CPU only, got x on {x.device}")
    check_floating(OP, "x", x, (torch.float32, torch.bfloat16))
    return decode(program, tensors)


def interpret(x: torch.Tensor, tensors: list, program: list):
    """Runs the program on x step by step, yielding (value, stride) at every MARK;
    returns (StopIteration.value) the logits."""
    mk = torch.ops.mkldnn

    def tensor(i):
        return None if i < 0 else tensors[i]

    saved = None
    for op, a in _check(x, tensors, program):
        if op == SAVE:
            saved = x
        elif op == CONV:
            weight, bias, stride, pad, act, residual = a
            pads, strides = [pad, pad], [stride, stride]
            if residual and act == 0:  # conv + residual in one pass
                x = mk._convolution_pointwise.binary(x, saved, tensors[weight], tensor(bias), pads, strides, [1, 1], 1,
                                                     "add", None, None, [], None)
                continue
            x = mk._convolution_pointwise(x, tensors[weight], tensor(bias), pads, strides, [1, 1], 1,
                                          ONEDNN_ATTR[act], [], "")
            if act == 1:
                x = x.relu_()
            if residual:  # the seed variant adds after the activation
                x = x.add_(saved)
        elif op == STEM:
            weight, bias, stride, pad, act = a
            x = F.conv2d(x, tensors[weight], tensor(bias), stride, pad).contiguous(memory_format=torch.channels_last)
            x = activation(x, ACTS[act])
        elif op == DW:
            weight, bias, stride, pad, dilation, act = a
            weight, bias = (None if t is None else t.to(x.dtype) for t in (tensors[weight], tensor(bias)))
            x = torch.ops.mnv3.dw_conv_bn_act(x, weight, bias, stride, pad, dilation, ACTS[act])
        elif op == SE:
            x = torch.ops.mnv3.squeeze_excite(x, *(tensors[i].to(x.dtype) for i in a))
        elif op == AFFINE:
            x = x * tensors[a[0]][:, None, None] + tensors[a[1]][:, None, None]
        elif op == ACT:
            x = activation(x, ACTS[a[0]])
        elif op == MARK:
            yield x, a[0]
        elif op == POOL:
            x = x.mean(dim=(2, 3))
        elif op == LINEAR:
            weight, bias, act, _ = a
            x = mk._linear_pointwise(x, tensors[weight], tensor(bias), ONEDNN_ATTR[act], [], "")
            if act == 1:
                x = x.relu_()
    return x


def run_cpu_program_reference(x: torch.Tensor, tensors: list, program: list) -> torch.Tensor:
    if x.shape[0] == 0 and x.dim() == 4:  # (oneDNN rejects empty inputs)
        return _fake(x, tensors, program)
    stages = interpret(x, tensors, program)
    while True:
        try:
            next(stages)
        except StopIteration as done:
            return done.value


def _fake(x, tensors, program):
    instructions = _check(x, tensors, program)
    return x.new_empty(x.shape[0], instructions[-1][1][3])


RUN_CPU_PROGRAM = define("run_cpu_program(Tensor x, Tensor[] tensors, int[] program) -> Tensor",
                         run_cpu_program_reference, _fake)
if EXTENSION_ERROR is not None:  # the packed weights are oneDNN (MkldnnCPU) tensors, which select that key
    LIB.impl("run_cpu_program", run_cpu_program_reference, "MkldnnCPU")


def run_cpu_program(x: torch.Tensor, tensors: list, program: list) -> torch.Tensor:
    """Runs an encoded inference forward (see the module docstring) on x: (N, C, H, W)
    float32 or bfloat16, channels_last for speed.  Returns (N, out_features)."""
    return torch.ops.mnv3.run_cpu_program(x, tensors, program)
