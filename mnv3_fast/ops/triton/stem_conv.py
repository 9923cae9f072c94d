"""mnv3::stem_conv on Triton: the network's first conv (3 input channels) + folded BN + activation.

A direct conv: with 3 input channels a GEMM formulation would be mostly
padding.  A program computes BLOCK_P output pixels x all output channels (16
in MobileNetV3) of one image, the Cin x k x k taps unrolled, each tap one
gathered load per pixel and one weight vector.  The input is read through its
strides, so NCHW and NHWC images need no copy; the output is written
channels_last, as the rest of the network wants it, in full rows of Cout
contiguous values.
"""
import torch
import triton
import triton.language as tl

from .._checks import TRITON_DTYPES, check_stem_args
from ._common import ACT_CODES, apply_act, traceable


@triton.jit(do_not_specialize=["H", "W", "Ho", "Wo", "sxn", "sxc", "sxh", "sxw", "son", "soh", "sow"])
def _stem_kernel(x_ptr, w_ptr, b_ptr, out_ptr,
                 H, W, Ho, Wo, CO, padding,
                 sxn, sxc, sxh, sxw, son, soc, soh, sow, swo, swi, swh, sww, sb,
                 CIN: tl.constexpr, K: tl.constexpr, STRIDE: tl.constexpr, ACT: tl.constexpr,
                 HAS_BIAS: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_CO: tl.constexpr):
    n = tl.program_id(1).to(tl.int64)
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    co = tl.arange(0, BLOCK_CO)
    p_ok = p < Ho * Wo
    co_ok = co < CO
    oh = p // Wo
    ow = p % Wo
    x_img = x_ptr + n * sxn
    acc = tl.zeros((BLOCK_P, BLOCK_CO), dtype=tl.float32)
    for ci in range(CIN):  # a runtime loop: all CIN x K x K taps unrolled kept every load in flight (spills)
        for kh in tl.static_range(K):
            ih = oh * STRIDE - padding + kh
            row_ok = p_ok & (ih >= 0) & (ih < H)
            for kw in tl.static_range(K):
                iw = ow * STRIDE - padding + kw
                ok = row_ok & (iw >= 0) & (iw < W)
                xv = tl.load(x_img + ci * sxc + ih * sxh + iw * sxw, mask=ok, other=0.0)
                wv = tl.load(w_ptr + co * swo + ci * swi + kh * swh + kw * sww, mask=co_ok, other=0.0)
                acc += xv.to(tl.float32)[:, None] * wv.to(tl.float32)[None, :]
    if HAS_BIAS:
        acc += tl.load(b_ptr + co * sb, mask=co_ok, other=0.0).to(tl.float32)[None, :]
    y = apply_act(acc, ACT).to(out_ptr.dtype.element_ty)
    out = out_ptr + n * son + (oh * soh + ow * sow)[:, None] + (co * soc)[None, :]
    tl.store(out, y, mask=p_ok[:, None] & co_ok[None, :])


def tile(cout: int, pixels: int) -> tuple[int, int, int]:
    """(BLOCK_P, BLOCK_CO, num_warps): all output channels, 2048 outputs a program (16 a thread)."""
    block_co = triton.next_power_of_2(cout)
    block_p = min(max(16, 2048 // block_co), triton.next_power_of_2(pixels))
    return block_p, block_co, 4


def launch(x, weight, bias, out, stride: int, padding: int, act: str, kernel=_stem_kernel):
    """Runs the kernel into preallocated `out` (any strides; the ops allocate it channels_last)."""
    N, C, H, W = x.shape
    cout, Ho, Wo = out.shape[1], out.shape[2], out.shape[3]
    block_p, block_co, warps = tile(cout, Ho * Wo)
    has_bias = bias is not None
    kernel[(triton.cdiv(Ho * Wo, block_p), N)](
        x, weight, bias if has_bias else weight, out, H, W, Ho, Wo, cout, padding,
        *x.stride(), *out.stride(), *weight.stride(), bias.stride(0) if has_bias else 0,
        CIN=C, K=weight.shape[-1], STRIDE=stride, ACT=ACT_CODES[act], HAS_BIAS=has_bias,
        BLOCK_P=block_p, BLOCK_CO=block_co, num_warps=warps,
    )


def stem_conv(x, weight, bias, stride: int, padding: int, act: str) -> torch.Tensor:
    """The stem conv on Triton; arguments as `mnv3::stem_conv` (the output is channels_last)."""
    Ho, Wo = check_stem_args(x, weight, bias, stride, padding, act, TRITON_DTYPES)
    out = torch.empty((x.shape[0], weight.shape[0], Ho, Wo), device=x.device, dtype=x.dtype,
                      memory_format=torch.channels_last)
    if out.numel():
        launch(x, weight, bias, out, stride, padding, act, traceable(_stem_kernel))
    return out
