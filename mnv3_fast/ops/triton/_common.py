"""Helpers shared by the Triton kernels."""
import os

import torch
import triton
import triton.language as tl

from .._checks import ACTIVATIONS

# Activation codes passed to kernels as constexpr: the index in the one table
# of activation names (_checks.ACTIVATIONS), never a second literal mapping.
ACT_CODES = {name: code for code, name in enumerate(ACTIVATIONS)}
RELU = tl.constexpr(ACT_CODES["relu"])
HSWISH = tl.constexpr(ACT_CODES["hswish"])

try:  # torch >= 2.6: kernels called inside a torch.library.triton_op are traced, not opaque
    from torch.library import wrap_triton as _wrap_triton
except ImportError:  # pragma: no cover - older torch
    _wrap_triton = None


def traceable(kernel):
    """`kernel` wrapped so that torch.compile/export see the launch (`torch.library.wrap_triton`),
    for the launchers that implement a `torch.library.triton_op` (in its eager calls the wrapper
    is a no-op); the kernel itself where torch lacks it or where it cannot be wrapped (the
    interpreter's kernels).  Launchers of `define`d ops (dw, SE) and the CUDA backend launch raw
    kernels."""
    if _wrap_triton is None or not isinstance(kernel, triton.runtime.jit.JITFunction):
        return kernel
    return _wrap_triton(kernel)


@triton.jit
def hsigmoid_f32(x):
    # NaN must come out NaN (PTX max/min would return the other operand).
    return tl.minimum(tl.maximum(x + 3.0, 0.0, propagate_nan=tl.PropagateNan.ALL), 6.0,
                      propagate_nan=tl.PropagateNan.ALL) / 6.0


@triton.jit
def apply_act(x, ACT: tl.constexpr):
    if ACT == RELU:
        x = tl.maximum(x, 0.0, propagate_nan=tl.PropagateNan.ALL)
    elif ACT == HSWISH:
        x = x * hsigmoid_f32(x)
    return x


# Triton's interpreter (3.6-3.8) multiplies bf16 tiles in tl.dot as their raw uint16 bits;
# under it bf16 operands are widened to fp32 first, which is exact (a bf16 product fits fp32).
_INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"


def widen_dot(dtype: torch.dtype) -> bool:
    """Whether kernels should widen tl.dot's bf16 operands (only under the interpreter)."""
    return _INTERPRETING and dtype == torch.bfloat16


@triton.jit
def dot(a, b, acc, PRECISION: tl.constexpr, WIDEN: tl.constexpr):
    """acc + a @ b (fp32 accumulator); WIDEN (interpreter, bf16): the operands in fp32."""
    if WIDEN:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=PRECISION)


def dot_precision(dtype: torch.dtype) -> str:
    """tl.dot's input precision: fp32 operands are multiplied exactly ("ieee": the fp32 path is
    the correctness reference, TF32 would lose 13 mantissa bits); fp16/bf16 use the tensor cores."""
    return "ieee" if dtype == torch.float32 else "tf32"


def stride_alignment(strides, cap: int = 8) -> int:
    """The largest power of two (<= cap) dividing every stride (or size), for kernels that take
    them in units of it: Triton only detects divisibility by 16 itself.  8 elements are 16
    bytes in fp16/bf16, the widest vector load; a larger cap would only add compiled variants."""
    align = cap
    while align > 1 and any(s % align for s in strides):
        align //= 2
    return align


def effective_strides(t: torch.Tensor) -> tuple:
    """t's strides, 0 along size-1 dimensions (never stepped along, so they need no alignment)."""
    return tuple(0 if size == 1 else stride for size, stride in zip(t.shape, t.stride()))
