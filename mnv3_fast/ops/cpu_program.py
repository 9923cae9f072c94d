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
                                           (weight: mkldnn-packed (out, in), or packed as
                                           PWCONV's with its float32 bias required; such a
                                           LINEAR runs in its weight's dtype, converting its
                                           input: the int8 program's head runs in bf16)
    STEM   weight bias stride pad act      a conv over few input channels (the image),
                                           computed directly; any input layout in,
                                           channels_last out, in the weight's dtype (a
                                           float32 image may enter a bfloat16 program;
                                           the logits come back in x's dtype)
    PWCONV weight bias act res             a 1x1 conv, stride 1 (csrc/pointwise_conv.cpp:
                                           AMX tiles for bf16, register tiles for fp32 on
                                           AVX-512, oneDNN's brgemm otherwise): act, then
                                           res=1 adds the saved value; weight packed by
                                           mnv3_fast._C.pack_pointwise (see `unpack_pointwise`),
                                           the bias (required) gives the output channels

int8 (mnv3_fast.quantize): activations flow as uint8 with per-tensor (scale,
zero point) pairs, q = clamp(round(x / scale) + zp, 0, 255); `qp` names a
float64 tensor of such values:

    QSTEM  weight bias stride pad act qp   STEM with a uint8 output, qp = [out s, zp]
    QCONV  weight w_scale w_zp bias stride pad act res qp
                                           onednn::qconv2d_pointwise: uint8 in, int8
                                           weights per output channel (qconv_prepack),
                                           act, res=1 adds the saved uint8 value;
                                           qp = [in s, zp, out s, zp, res s, zp], out s = 0
                                           for a float32 output
    QDW    weight bias stride pad dil act qp
                                           depthwise conv on a uint8 input, float32 weights,
                                           qp = [in s, zp, out s, zp], out s = 0: float32 out
    QSE    w1 b1 w2 b2 qp                  SE on a float32 input, uint8 out, qp = [out s, zp]
                                           (w1, w2: float32, or bf16 as quantize stores them)
    QPOOL  qp                              a uint8 map's float32 means, qp = [in s, zp]
    QPWCONV weight params act res qp       a 1x1 conv, stride 1, on AMX-INT8 tiles:
                                           uint8 in, int8 weights packed by
                                           _C.pack_pointwise, params = float32 rows (scale,
                                           shift) of shape (2, N): y = acc * scale + shift
                                           (the input's scale and zero point folded in), then
                                           act, res=1 adds the saved uint8 value; qp as QCONV's

Inference only: no autograd (the weights are packed copies).
"""
from __future__ import annotations

from typing import Optional, NamedTuple

import torch
import torch.nn.functional as F

from . import reference_ops
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
    # The int8 program's (see "int8" below); `qparams` index a float64 tensor of scales and zero points.
    Opcode("QSTEM", 6, 4, (0, 1, 5), (1,)),
    Opcode("QCONV", 9, 6, (0, 1, 2, 3, 8), (3,)),
    Opcode("QDW", 7, 5, (0, 1, 6), (1,)),
    Opcode("QSE", 5, -1, (0, 1, 2, 3, 4)),
    Opcode("QPOOL", 1, -1, (0,)),
    Opcode("PWCONV", 4, 2, (0, 1)),
    Opcode("QPWCONV", 5, 2, (0, 1, 4)),
)
(SAVE, CONV, DW, SE, AFFINE, ACT, MARK, POOL, LINEAR, STEM, QSTEM, QCONV, QDW, QSE, QPOOL, PWCONV,
 QPWCONV) = range(len(OPCODES))
# For each int8 opcode: which argument is its qparams tensor, and how many values it holds.
QPARAMS = {QSTEM: (5, 2), QCONV: (8, 6), QDW: (6, 4), QSE: (4, 2), QPOOL: (0, 2), QPWCONV: (4, 6)}
ACTS = ACTIVATIONS  # an activation code is the index of its name
# oneDNN's ReLU post-op turns NaN into 0 (hiding a bad input); its hard-swish
# keeps NaN.  So ReLU runs after the conv, in place.
ONEDNN_ATTR = ("none", "none", "hardswish")
_ON_POOLED = (ACT, LINEAR)  # the instructions that take the pooled (N, C) value
_RESIDUAL_ARG = {CONV: 5, QCONV: 7, PWCONV: 3, QPWCONV: 3}
# The packed 1x1 convs' second tensor: its rank and what it is.
_PACKED_1X1 = {PWCONV: (1, "a bias (N)"), QPWCONV: (2, "(scale, shift) rows (2, N)")}


def unpack_pointwise(packed: torch.Tensor, out_channels: int) -> torch.Tensor:
    """The (N, K) matrix of a PWCONV weight.  mnv3_fast._C.pack_pointwise stores blocks of 32 output
    channels, (blocks, K, 32), zero past N; bfloat16 and int8 in VNNI order: pairs (fours for int8) of K
    interleaved, (blocks, K / 2, 32, 2), as the AMX micro-kernel reads them."""
    blocks, k, width = packed.shape
    if packed.dtype in (torch.bfloat16, torch.int8):  # K in groups of 2 (bf16) or 4 (int8)
        g = 2 if packed.dtype == torch.bfloat16 else 4
        packed = packed.view(blocks, k // g, width, g).transpose(2, 3).reshape(blocks, k, width)
    return packed.permute(1, 0, 2).reshape(k, blocks * width)[:, :out_channels].t()


def _linear_features(tensors: list, args: list) -> Optional[int]:
    """A LINEAR's output features: its matrix's rows, or for a PWCONV-packed weight its bias's size."""
    weight, bias = tensors[args[0]], (tensors[args[1]] if args[1] >= 0 else None)
    if weight.dim() == 2:
        return weight.shape[0]
    packed = weight.dim() == 3 and bias is not None and bias.dim() == 1
    return bias.shape[0] if packed and -(-bias.shape[0] // weight.shape[2]) == weight.shape[0] else None


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
        pooled_at = i if op in (POOL, QPOOL) else pooled_at
        saved = saved or op == SAVE
        if op in _RESIDUAL_ARG and args[_RESIDUAL_ARG[op]] and not saved:
            raise ValueError(f"{OP}: {info.name} at position {i} adds a residual, but no SAVE comes before it")
        if op in QPARAMS:
            k, count = QPARAMS[op]
            t = tensors[args[k]]
            if not (t.dtype == torch.float64 and t.dim() == 1 and t.shape[0] == count):
                raise ValueError(f"{OP}: {info.name} at position {i} needs its quantization parameters as a "
                                 f"float64 tensor of {count} values, got {t.dtype} of shape {list(t.shape)}")
        if op in _PACKED_1X1:
            dim, what = _PACKED_1X1[op]
            if tensors[args[0]].dim() != 3 or tensors[args[1]].dim() != dim:
                raise ValueError(f"{OP}: {info.name} at position {i} needs a packed weight (blocks, K, 32) and "
                                 f"{what}, got shapes {list(tensors[args[0]].shape)} and "
                                 f"{list(tensors[args[1]].shape)}")
        if op == LINEAR and _linear_features(tensors, args) != args[3]:
            raise ValueError(f"{OP}: LINEAR at position {i} declares {args[3]} output features, "
                             f"but its weight has shape {list(tensors[args[0]].shape)} (a packed one needs "
                             f"a bias of that size)")
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

    saved, x_in = None, x
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
        elif op == PWCONV:  # in fp32, rounded once to x's dtype, as the kernel does
            weight, bias, act, residual = a
            w = unpack_pointwise(tensors[weight], tensors[bias].shape[0]).float()
            y = activation(F.conv2d(x.float(), w[:, :, None, None], tensors[bias].float()), ACTS[act])
            if residual:
                y = y + saved.float()
            x = y.to(x.dtype).contiguous(memory_format=torch.channels_last)
        elif op == STEM:
            weight, bias, stride, pad, act = a
            w = tensors[weight]
            if x.dtype != w.dtype:  # a float32 image into a bfloat16 program: in float32, rounded once
                y = activation(F.conv2d(x, w.float(), _float(tensor(bias)), stride, pad), ACTS[act])
                x = y.to(w.dtype).contiguous(memory_format=torch.channels_last)
                continue
            x = F.conv2d(x, w, tensor(bias), stride, pad).contiguous(memory_format=torch.channels_last)
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
            weight, bias, act, out_features = a
            if tensors[weight].dim() == 3:  # PWCONV's packing: in the weight's dtype, fp32 inside (as PWCONV)
                dtype = tensors[weight].dtype
                w = unpack_pointwise(tensors[weight], out_features).float()
                x = activation(F.linear(x.to(dtype).float(), w, tensors[bias].float()), ACTS[act]).to(dtype)
                continue
            x = mk._linear_pointwise(x, tensors[weight], tensor(bias), ONEDNN_ATTR[act], [], "")
            if act == 1:
                x = x.relu_()
        elif op == QSTEM:
            weight, bias, stride, pad, act, qp = a
            s, zp = tensors[qp].tolist()
            x = quantize(activation(F.conv2d(x.float(), tensors[weight].float(), _float(tensor(bias)), stride, pad),
                                    ACTS[act]), s, zp)
        elif op == QCONV:
            weight, w_scale, w_zp, bias, stride, pad, act, residual, qp = a
            if residual and any(saved.untyped_storage().data_ptr() == t.untyped_storage().data_ptr()
                                for t in (x_in, x)):
                saved = saved.clone()  # (it receives the output: never the caller's input or the conv's own)
            x = qconv(x, tensors[weight], tensors[w_scale], tensors[w_zp], tensor(bias), stride, pad, act,
                      tensors[qp].tolist(), saved if residual else None)
        elif op == QPWCONV:  # in float32, as the kernel does
            weight, params, act, residual, qp = a
            _, _, out_s, out_zp, res_s, res_zp = tensors[qp].tolist()
            scale, shift = tensors[params].float()
            w = unpack_pointwise(tensors[weight], scale.shape[0]).float()
            y = F.conv2d(x.float(), w[:, :, None, None]) * scale[:, None, None] + shift[:, None, None]
            y = activation(y, ACTS[act])
            if residual:
                y = y + dequantize(saved, res_s, res_zp)
            x = quantize(y, out_s, out_zp) if out_s else y.contiguous(memory_format=torch.channels_last)
        elif op == QDW:
            weight, bias, stride, pad, dilation, act, qp = a
            in_s, in_zp, out_s, out_zp = tensors[qp].tolist()
            y = F.conv2d(dequantize(x, in_s, in_zp), tensors[weight].float(), _float(tensor(bias)), stride, pad,
                         dilation, groups=x.shape[1])
            y = activation(y, ACTS[act])
            x = quantize(y, out_s, out_zp) if out_s else y.contiguous(memory_format=torch.channels_last)
        elif op == QSE:
            s, zp = tensors[a[4]].tolist()
            x = quantize(reference_ops.squeeze_excite(x, *(tensors[i].float() for i in a[:4])), s, zp)
        elif op == QPOOL:
            s, zp = tensors[a[0]].tolist()
            x = dequantize(x, s, zp).mean(dim=(2, 3))
    return x if x.dtype == x_in.dtype else x.to(x_in.dtype)  # (the logits in x's dtype)


# ---------------------------------------------------------------- int8 helpers


def _float(t):
    return None if t is None else t.float()


def quantize(x: torch.Tensor, scale: float, zero_point: float) -> torch.Tensor:
    """uint8 codes clamp(round(x / scale) + zp, 0, 255) (half to even), channels_last."""
    q = torch.clamp(torch.round(x.float() / scale) + zero_point, 0, 255).to(torch.uint8)
    return q.contiguous(memory_format=torch.channels_last) if q.dim() == 4 else q


def dequantize(q: torch.Tensor, scale: float, zero_point: float) -> torch.Tensor:
    return (q.float() - zero_point) * scale


QATTR = ("none", "relu", "hardswish")  # oneDNN's int8 post-ops (no NaN to hide in uint8)


def qconv(x, weight, w_scale, w_zp, bias, stride, pad, act, qp, residual=None):
    """onednn::qconv2d_pointwise (.binary with a residual, which it writes into) as QCONV runs it."""
    in_s, in_zp, out_s, out_zp, res_s, res_zp = qp
    float_out = out_s == 0
    out_dtype, out_s, out_zp = (torch.float32, 1.0, 0) if float_out else (None, out_s, int(out_zp))
    od = torch.ops.onednn
    if residual is None:
        return od.qconv2d_pointwise(x, in_s, int(in_zp), weight, w_scale, w_zp, bias, [stride] * 2, [pad] * 2,
                                    [1, 1], 1, out_s, out_zp, out_dtype, QATTR[act], [], "")
    return od.qconv2d_pointwise.binary(x, in_s, int(in_zp), weight, w_scale, w_zp, residual, bias, [stride] * 2,
                                       [pad] * 2, [1, 1], 1, out_s, out_zp, out_dtype, res_s, int(res_zp), "sum",
                                       1.0, QATTR[act], [], "")


def _check_threads(threads: int) -> None:
    if threads < 0:
        raise ValueError(f"{OP}: expected threads >= 0 (0: the current setting), got {threads}")


def run_cpu_program_reference(x: torch.Tensor, tensors: list, program: list, threads: int = 0) -> torch.Tensor:
    _check_threads(threads)
    if x.shape[0] == 0 and x.dim() == 4:  # (oneDNN rejects empty inputs)
        return _fake(x, tensors, program)
    stages = interpret(x, tensors, program)
    while True:
        try:
            next(stages)
        except StopIteration as done:
            return done.value


def _fake(x, tensors, program, threads=0):
    _check_threads(threads)
    instructions = _check(x, tensors, program)
    return x.new_empty(x.shape[0], instructions[-1][1][3])


RUN_CPU_PROGRAM = define("run_cpu_program(Tensor x, Tensor[] tensors, int[] program, int threads=0) -> Tensor",
                         run_cpu_program_reference, _fake)
if EXTENSION_ERROR is not None:  # the packed weights are oneDNN (MkldnnCPU) tensors, which select that key
    LIB.impl("run_cpu_program", run_cpu_program_reference, "MkldnnCPU")


def run_cpu_program(x: torch.Tensor, tensors: list, program: list, threads: int = 0) -> torch.Tensor:
    """Runs an encoded inference forward (see the module docstring) on x: (N, C, H, W)
    float32 or bfloat16, channels_last for speed.  Returns (N, out_features).  `threads`: the
    OpenMP threads its parallel regions use (this call only; 0: torch's setting)."""
    return torch.ops.mnv3.run_cpu_program(x, tensors, program, threads)
