"""mnv3::dw_conv_bn_act on Triton: depthwise conv + folded BN + activation.

One kernel for every layout: a program computes a tile of BLOCK_P output
pixels x BLOCK_C channels of one image, addressing the input and output
through their strides, so NCHW, channels_last and sliced inputs need no copy.
The tile shape follows the layout (a documented heuristic, not autotuning):
channels_last tiles along C (contiguous there), NCHW along the pixels.
Accumulation is fp32 for every input dtype.

Optionally the kernel also returns the per-(n, c) spatial sums of the
activated output (an fp32 (N, C) tensor), accumulated with atomics, so a
following Squeeze-and-Excite can skip its own pooling pass.
"""
import torch
import triton
import triton.language as tl

from .._checks import GPU_DTYPES, check_dw_conv_args, output_memory_format
from ._common import ACT_CODES, apply_act


@triton.jit
def _dw_kernel(x_ptr, w_ptr, b_ptr, out_ptr, sums_ptr,
               C, H, W, Ho, Wo, padding,
               sxn, sxc, sxh, sxw, son, soc, soh, sow,
               K: tl.constexpr, STRIDE: tl.constexpr, DIL: tl.constexpr, ACT: tl.constexpr,
               HAS_BIAS: tl.constexpr, WRITE_SUMS: tl.constexpr,
               BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    n = tl.program_id(2).to(tl.int64)
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)  # flattened (oh, ow)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    p_ok = p < Ho * Wo
    c_ok = c < C
    oh = p // Wo
    ow = p % Wo
    x_img = x_ptr + n * sxn + c[None, :] * sxc
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for kh in tl.static_range(K):
        ih = oh * STRIDE - padding + kh * DIL
        row_ok = p_ok & (ih >= 0) & (ih < H)
        for kw in tl.static_range(K):
            iw = ow * STRIDE - padding + kw * DIL
            ok = row_ok & (iw >= 0) & (iw < W)
            xv = tl.load(x_img + ih[:, None] * sxh + iw[:, None] * sxw, mask=ok[:, None] & c_ok[None, :], other=0.0)
            wv = tl.load(w_ptr + c * (K * K) + (kh * K + kw), mask=c_ok, other=0.0)
            acc += xv.to(tl.float32) * wv.to(tl.float32)[None, :]
    if HAS_BIAS:
        acc += tl.load(b_ptr + c, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    acc = apply_act(acc, ACT)
    mask = p_ok[:, None] & c_ok[None, :]
    out = out_ptr + n * son + c[None, :] * soc + oh[:, None] * soh + ow[:, None] * sow
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=mask)
    if WRITE_SUMS:
        partial = tl.sum(tl.where(mask, acc, 0.0), axis=0)
        tl.atomic_add(sums_ptr + n * C + c, partial, mask=c_ok)


def block_sizes(x: torch.Tensor, C: int, pixels: int) -> tuple[int, int, int]:
    """(BLOCK_P, BLOCK_C, num_warps): channels_last tiles along C, NCHW along the pixels."""
    if output_memory_format(x) == torch.channels_last:
        block_c = min(64, triton.next_power_of_2(C))
        block_p = min(64, max(16, 2048 // block_c), triton.next_power_of_2(pixels))
    else:
        block_c = min(4, triton.next_power_of_2(C))
        block_p = min(256, triton.next_power_of_2(pixels))
    return block_p, block_c, 4


def dw_conv_bn_act(x, weight, bias, stride: int, padding: int, dilation: int, act: str, return_sums: bool = False):
    """Depthwise conv + folded BN + activation on Triton; arguments as `mnv3::dw_conv_bn_act`.

    With `return_sums=True` also returns the fp32 (N, C) spatial sums of the output.
    """
    Ho, Wo = check_dw_conv_args(x, weight, bias, stride, padding, dilation, act, GPU_DTYPES)
    N, C, H, W = x.shape
    K = weight.shape[-1]
    out = torch.empty((N, C, Ho, Wo), device=x.device, dtype=x.dtype, memory_format=output_memory_format(x))
    sums = torch.zeros((N, C), device=x.device, dtype=torch.float32) if return_sums else out
    if out.numel():
        block_p, block_c, warps = block_sizes(x, C, Ho * Wo)
        grid = (triton.cdiv(Ho * Wo, block_p), triton.cdiv(C, block_c), N)
        _dw_kernel[grid](
            x, weight.contiguous(), bias if bias is not None else weight, out, sums,
            C, H, W, Ho, Wo, padding, *x.stride(), *out.stride(),
            K=K, STRIDE=stride, DIL=dilation, ACT=ACT_CODES[act], HAS_BIAS=bias is not None,
            WRITE_SUMS=return_sums, BLOCK_P=block_p, BLOCK_C=block_c, num_warps=warps,
        )
    return (out, sums) if return_sums else out
