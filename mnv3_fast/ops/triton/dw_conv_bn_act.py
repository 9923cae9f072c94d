"""mnv3::dw_conv_bn_act on Triton: depthwise conv + folded BN + activation.

One kernel for every layout: a program computes a tile of BLOCK_P output
pixels x BLOCK_C channels of one image, addressing the input, the weights,
the bias and the output through their strides, so NCHW, channels_last, sliced
inputs and strided parameters need no copy.  The tile shape follows the layout
(a documented heuristic, not autotuning): channels_last tiles along C
(contiguous there), NCHW along the pixels.  Accumulation is fp32 for every
input dtype.

Registers (the old kernel spilled 1-3.6 KB a thread at 255 registers in its
channels_last 32x64 fp16 tile, sm_80/sm_90): the taps are a runtime loop over
kernel rows with the columns unrolled (all K*K unrolled let the compiler hoist
every load); a tile is 16 bytes of output a thread at 8 warps; offsets are
int32 from one int64 per-image base; and C and the strides come in units of
an alignment (see the kernel), so the loads along C are 16-byte vectors (the
old kernel's were scalar for widths like 72).  `tests/test_triton_aot.py`
checks that every variant the CUDA backend launches compiles without spills.

Optionally the kernel also writes the per-(image, pixel block, channel) sums
of the activated output, as stored (fp32, shape (N, pixel blocks, C)): the
first stage of Squeeze-and-Excite's pooling.  Each program writes its own
slot, so the sums are deterministic (no atomics); the second stage, the sum
over pixel blocks in a fixed order, is in the SE gate kernel (`se_gate.py`),
or a torch sum in `dw_conv_bn_act(..., return_sums=True)`.
"""
import torch
import triton
import triton.language as tl

from .._checks import GPU_DTYPES, check_dw_conv_args, output_memory_format
from ._common import ACT_CODES, apply_act, effective_strides, stride_alignment


# Sizes and the strides that scale with them are not specialised on (a compiled variant per
# divisibility pattern, per layer and batch size); ALIGN carries what the compiler needs instead.
@triton.jit(do_not_specialize=["C_a", "H", "W", "Ho", "Wo", "sxn_a", "sxh_a", "sxw_a", "son_a", "soh_a", "sow_a",
                               "swh_a", "sww_a"])
def _dw_kernel(x_ptr, w_ptr, b_ptr, out_ptr, part_ptr,
               C_a, H, W, Ho, Wo, padding,
               sxn_a, sxc, sxh_a, sxw_a, son_a, soc, soh_a, sow_a, swc, swh_a, sww_a, sb,
               K: tl.constexpr, STRIDE: tl.constexpr, DIL: tl.constexpr, ACT: tl.constexpr,
               HAS_BIAS: tl.constexpr, WRITE_PARTIALS: tl.constexpr,
               BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, ALIGN: tl.constexpr,
               W_ALIGN: tl.constexpr):
    # C and the image and pixel strides come in units of ALIGN elements (the weights' tap strides
    # in units of W_ALIGN): Triton only learns divisibility by 16 from the arguments, and with
    # widths like 72 or 120 (multiples of 8) the loads and stores along C would not vectorize
    # without knowing that rows start aligned and the channel mask is constant over ALIGN.
    C = C_a * ALIGN
    sxn = sxn_a * ALIGN
    sxh = sxh_a * ALIGN
    sxw = sxw_a * ALIGN
    son = son_a * ALIGN
    soh = soh_a * ALIGN
    sow = sow_a * ALIGN
    swh = swh_a * W_ALIGN
    sww = sww_a * W_ALIGN
    pid_p = tl.program_id(0)
    n = tl.program_id(2).to(tl.int64)
    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)  # flattened (oh, ow)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    p_ok = p < Ho * Wo
    c_ok = c < C
    oh = p // Wo
    ow = p % Wo
    x_img = x_ptr + n * sxn  # the only 64-bit offset; within an image int32 suffices
    x_c = (c * sxc)[None, :]
    w_c = w_ptr + c * swc
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    ih0 = oh * STRIDE - padding
    iw0 = ow * STRIDE - padding
    for kh in range(K):
        ih = ih0 + kh * DIL
        row_ok = p_ok & (ih >= 0) & (ih < H)
        x_row = x_img + (ih * sxh)[:, None] + x_c
        for kw in tl.static_range(K):
            iw = iw0 + kw * DIL
            ok = row_ok & (iw >= 0) & (iw < W)
            xv = tl.load(x_row + (iw * sxw)[:, None], mask=ok[:, None] & c_ok[None, :], other=0.0)
            wv = tl.load(w_c + kh * swh + kw * sww, mask=c_ok, other=0.0)
            acc += xv.to(tl.float32) * wv.to(tl.float32)[None, :]
    if HAS_BIAS:
        acc += tl.load(b_ptr + c * sb, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    y = apply_act(acc, ACT).to(out_ptr.dtype.element_ty)
    mask = p_ok[:, None] & c_ok[None, :]
    tl.store(out_ptr + n * son + (c * soc)[None, :] + (oh * soh + ow * sow)[:, None], y, mask=mask)
    if WRITE_PARTIALS:
        # The sums of the values as stored (rounded), so that a gate computed from them
        # is the gate of the map a separate pooling pass would read.
        partial = tl.sum(tl.where(mask, y.to(tl.float32), 0.0), axis=0)
        tl.store(part_ptr + (n * tl.num_programs(0) + pid_p) * C + c, partial, mask=c_ok)


def block_sizes(channels_last: bool, C: int, pixels: int, element_size: int = 2) -> tuple[int, int, int]:
    """(BLOCK_P, BLOCK_C, num_warps) of the tile: channels_last tiles along C, NCHW along the pixels.

    16 bytes of output a thread (8 fp16/bf16 or 4 fp32 values, one vector) at 8 warps: with a
    kernel row of input taps in flight this compiles without spills for sm_80 and sm_90 (32
    bytes a thread spilled a few bytes in some 5x5 fp32 configurations, and 16 a thread at 4
    warps in some fp16 ones)."""
    elements = 256 * 16 // element_size
    if channels_last:
        # The widest power of two <= 64 that divides C (MobileNet widths are multiples of 8), so
        # no lane is wasted on masked channels; other C get a masked 64-wide tile.
        block_c = next((b for b in (64, 32, 16, 8) if C % b == 0), min(64, triton.next_power_of_2(C)))
        block_p = min(max(16, elements // block_c), triton.next_power_of_2(pixels))
    else:
        block_c = min(4, triton.next_power_of_2(C))
        block_p = min(elements // 4, triton.next_power_of_2(pixels))
    return block_p, block_c, 8


def tile(out: torch.Tensor) -> tuple[int, int, int]:
    """The tile for an output tensor (channels_last when its channels are the contiguous dimension)."""
    return block_sizes(out.stride(1) == 1 and out.shape[1] > 1, out.shape[1], out.shape[2] * out.shape[3],
                       out.element_size())


def new_partials(out: torch.Tensor) -> torch.Tensor:
    """The (N, pixel blocks, C) fp32 buffer of first-stage pool sums for an output tensor."""
    N, C, Ho, Wo = out.shape
    return torch.empty((N, triton.cdiv(Ho * Wo, tile(out)[0]), C), device=out.device, dtype=torch.float32)


def launch(x, weight, bias, out, partials, stride: int, padding: int, dilation: int, act: str, kernel=_dw_kernel):
    """Runs the kernel into preallocated `out` (and `partials` from `new_partials(out)`, or None);
    no argument checks (the callers make them)."""
    N, C, H, W = x.shape
    Ho, Wo = out.shape[2], out.shape[3]
    block_p, block_c, warps = tile(out)
    grid = (triton.cdiv(Ho * Wo, block_p), triton.cdiv(C, block_c), N)
    has_bias = bias is not None
    xs, os_, ws = effective_strides(x), effective_strides(out), effective_strides(weight)
    align = stride_alignment([C, xs[0], xs[2], xs[3], os_[0], os_[2], os_[3]])
    w_align = stride_alignment([ws[2], ws[3]])
    kernel[grid](
        x, weight, bias if has_bias else weight, out, partials if partials is not None else out,
        C // align, H, W, Ho, Wo, padding, xs[0] // align, xs[1], xs[2] // align, xs[3] // align,
        os_[0] // align, os_[1], os_[2] // align, os_[3] // align, ws[0], ws[2] // w_align, ws[3] // w_align,
        bias.stride(0) if has_bias else 0,
        K=weight.shape[-1], STRIDE=stride, DIL=dilation, ACT=ACT_CODES[act], HAS_BIAS=has_bias,
        WRITE_PARTIALS=partials is not None, BLOCK_P=block_p, BLOCK_C=block_c, ALIGN=align, W_ALIGN=w_align, num_warps=warps,
    )


def dw_conv_bn_act(x, weight, bias, stride: int, padding: int, dilation: int, act: str, return_sums: bool = False):
    """Depthwise conv + folded BN + activation on Triton; arguments as `mnv3::dw_conv_bn_act`.

    With `return_sums=True` also returns the fp32 (N, C) spatial sums of the output (as stored),
    reduced deterministically in two stages.
    """
    Ho, Wo = check_dw_conv_args(x, weight, bias, stride, padding, dilation, act, GPU_DTYPES)
    N, C = x.shape[:2]
    out = torch.empty((N, C, Ho, Wo), device=x.device, dtype=x.dtype, memory_format=output_memory_format(x))
    partials = new_partials(out) if return_sums else None
    if out.numel():
        launch(x, weight, bias, out, partials, stride, padding, dilation, act)
    if not return_sums:
        return out
    return out, partials.sum(dim=1) if out.numel() else torch.zeros((N, C), device=x.device, dtype=torch.float32)
