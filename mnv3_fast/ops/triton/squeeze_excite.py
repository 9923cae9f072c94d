"""mnv3::squeeze_excite on Triton, in two launches.

1. `_gate_kernel`, one program per sample: the global average pool (kept in
   registers, C <= 4096), then relu(W1 p + b1) (written to a small scratch,
   since the second product needs all of it), then hsigmoid(W2 h + b2): the
   fp32 (N, C) gates.  Given pooling sums from the depthwise kernel
   (`dw_conv_bn_act(..., return_sums=True)`), the pool is skipped.
2. `_scale_kernel`: y = x * gate[n, c], tiled like the depthwise kernel and
   addressed through strides, so every layout works without a copy.
"""
import torch
import triton
import triton.language as tl

from .._checks import GPU_DTYPES, check_se_args, output_memory_format
from ._common import hsigmoid_f32
from .dw_conv_bn_act import block_sizes

MAX_CHANNELS = 4096  # the pooled vector lives in one program's registers


@triton.jit
def _gate_kernel(x_ptr, sums_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, hidden_ptr, gate_ptr,
                 C, S, HW, W, sxn, sxc, sxh, sxw, inv_hw,
                 HAVE_SUMS: tl.constexpr, BLOCK_CF: tl.constexpr, BLOCK_P: tl.constexpr,
                 BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_SF: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    cf = tl.arange(0, BLOCK_CF)
    cf_ok = cf < C
    # Pool.
    if HAVE_SUMS:
        pooled = tl.load(sums_ptr + n * C + cf, mask=cf_ok, other=0.0) * inv_hw
    else:
        total = tl.zeros((BLOCK_CF,), dtype=tl.float32)
        for p0 in range(0, HW, BLOCK_P):
            p = p0 + tl.arange(0, BLOCK_P)
            ptrs = x_ptr + n * sxn + cf[None, :] * sxc + (p // W)[:, None] * sxh + (p % W)[:, None] * sxw
            tile = tl.load(ptrs, mask=(p < HW)[:, None] & cf_ok[None, :], other=0.0)
            total += tl.sum(tile.to(tl.float32), axis=0)
        pooled = total * inv_hw
    # Squeeze: hidden = relu(W1 pooled + b1), BLOCK_S rows at a time.
    for s0 in range(0, S, BLOCK_S):
        s = s0 + tl.arange(0, BLOCK_S)
        s_ok = s < S
        w1 = tl.load(w1_ptr + s[:, None] * C + cf[None, :], mask=s_ok[:, None] & cf_ok[None, :], other=0.0)
        h = tl.sum(w1.to(tl.float32) * pooled[None, :], axis=1) + tl.load(b1_ptr + s, mask=s_ok, other=0.0).to(tl.float32)
        tl.store(hidden_ptr + n * S + s, tl.maximum(h, 0.0, propagate_nan=tl.PropagateNan.ALL), mask=s_ok)
    tl.debug_barrier()  # every thread's part of `hidden` is written before it is read
    sf = tl.arange(0, BLOCK_SF)
    sf_ok = sf < S
    hidden = tl.load(hidden_ptr + n * S + sf, mask=sf_ok, other=0.0)
    # Excite: gate = hsigmoid(W2 hidden + b2), BLOCK_C rows at a time.
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        c_ok = c < C
        w2 = tl.load(w2_ptr + c[:, None] * S + sf[None, :], mask=c_ok[:, None] & sf_ok[None, :], other=0.0)
        g = tl.sum(w2.to(tl.float32) * hidden[None, :], axis=1) + tl.load(b2_ptr + c, mask=c_ok, other=0.0).to(tl.float32)
        tl.store(gate_ptr + n * C + c, hsigmoid_f32(g), mask=c_ok)


@triton.jit
def _scale_kernel(x_ptr, gate_ptr, out_ptr, C, HW, W, sxn, sxc, sxh, sxw, son, soc, soh, sow,
                  BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    n = tl.program_id(2).to(tl.int64)
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = (p < HW)[:, None] & (c < C)[None, :]
    h, w = p // W, p % W
    x = tl.load(x_ptr + n * sxn + c[None, :] * sxc + h[:, None] * sxh + w[:, None] * sxw, mask=mask, other=0.0)
    gate = tl.load(gate_ptr + n * C + c, mask=c < C, other=0.0)
    y = x.to(tl.float32) * gate[None, :]
    tl.store(out_ptr + n * son + c[None, :] * soc + h[:, None] * soh + w[:, None] * sow,
             y.to(out_ptr.dtype.element_ty), mask=mask)


def squeeze_excite(x, w1, b1, w2, b2, pool_sums=None) -> torch.Tensor:
    """Squeeze-and-Excite on Triton; arguments as `mnv3::squeeze_excite`.

    `pool_sums`: optional fp32 (N, C) spatial sums of x (from
    `dw_conv_bn_act(..., return_sums=True)`), which replace the pooling pass.
    """
    S = check_se_args(x, w1, b1, w2, b2, GPU_DTYPES)
    N, C, H, W = x.shape
    if C > MAX_CHANNELS:
        raise ValueError(f"mnv3::squeeze_excite (Triton): expected at most {MAX_CHANNELS} channels, got {C}")
    out = torch.empty_like(x, memory_format=output_memory_format(x))
    if out.numel() == 0:
        return out
    gate = torch.empty((N, C), device=x.device, dtype=torch.float32)
    hidden = torch.empty((N, S), device=x.device, dtype=torch.float32)
    block_cf = triton.next_power_of_2(C)
    have_sums = pool_sums is not None
    _gate_kernel[(N,)](
        x, pool_sums if have_sums else gate, w1.reshape(S, C).contiguous(), b1.contiguous(),
        w2.reshape(C, S).contiguous(), b2.contiguous(), hidden, gate,
        C, S, H * W, W, *x.stride(), 1.0 / (H * W),
        HAVE_SUMS=have_sums, BLOCK_CF=block_cf, BLOCK_P=max(1, min(16, 4096 // block_cf)),
        BLOCK_S=max(1, min(16, 8192 // block_cf)), BLOCK_C=max(1, min(64, 8192 // triton.next_power_of_2(S))),
        BLOCK_SF=triton.next_power_of_2(S), num_warps=4,
    )
    block_p, block_c, warps = block_sizes(x, C, H * W)
    grid = (triton.cdiv(H * W, block_p), triton.cdiv(C, block_c), N)
    _scale_kernel[grid](x, gate, out, C, H * W, W, *x.stride(), *out.stride(),
                        BLOCK_P=block_p, BLOCK_C=block_c, num_warps=warps)
    return out
