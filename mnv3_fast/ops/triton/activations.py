"""mnv3::hswish and mnv3::hsigmoid on Triton: one flat, vectorized pass in fp32."""
import torch
import triton
import triton.language as tl

from .._checks import GPU_DTYPES, check_floating
from ._common import hsigmoid_f32

BLOCK = 1024  # elements per program: 4 per thread at 8 warps, so loads are 128-bit


@triton.jit
def _unary_kernel(x_ptr, out_ptr, n, SWISH: tl.constexpr, BLOCK: tl.constexpr):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    x = tl.load(x_ptr + offsets, mask=mask).to(tl.float32)
    y = hsigmoid_f32(x)
    if SWISH:
        y = x * y
    tl.store(out_ptr + offsets, y.to(out_ptr.dtype.element_ty), mask=mask)


def _unary(x: torch.Tensor, swish: bool, name: str) -> torch.Tensor:
    check_floating(f"mnv3::{name}", "x", x, GPU_DTYPES)
    # empty_like keeps a dense tensor's strides (and only a dense tensor's), so
    # input and output are walked as flat arrays together; a non-dense input
    # is first copied to the output's layout.
    out = torch.empty_like(x)
    src = x if out.stride() == x.stride() else torch.empty_like(x).copy_(x)
    n = x.numel()
    if n:
        _unary_kernel[(triton.cdiv(n, BLOCK),)](src, out, n, SWISH=swish, BLOCK=BLOCK, num_warps=8)
    return out


def hswish(x: torch.Tensor) -> torch.Tensor:
    """x * relu6(x + 3) / 6 on Triton (any shape, strides and float dtype)."""
    return _unary(x, True, "hswish")


def hsigmoid(x: torch.Tensor) -> torch.Tensor:
    """relu6(x + 3) / 6 on Triton (any shape, strides and float dtype)."""
    return _unary(x, False, "hsigmoid")
