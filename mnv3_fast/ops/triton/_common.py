"""Helpers shared by the Triton kernels."""
import triton
import triton.language as tl

from .._checks import ACTIVATIONS

# Activation codes passed to kernels as constexpr: the index of the name (apply_act below follows it).
ACT_CODES = {name: code for code, name in enumerate(ACTIVATIONS)}


@triton.jit
def hsigmoid_f32(x):
    # NaN must come out NaN (PTX max/min would return the other operand).
    return tl.minimum(tl.maximum(x + 3.0, 0.0, propagate_nan=tl.PropagateNan.ALL), 6.0,
                      propagate_nan=tl.PropagateNan.ALL) / 6.0


@triton.jit
def apply_act(x, ACT: tl.constexpr):
    if ACT == 1:
        x = tl.maximum(x, 0.0, propagate_nan=tl.PropagateNan.ALL)
    elif ACT == 2:
        x = x * hsigmoid_f32(x)
    return x


def grid_size(n: int, block: int) -> int:
    return triton.cdiv(n, block)
