"""mnv3::squeeze_excite on Triton, in three launches.

1. `_pool_kernel`: the spatial sums of x per (image, pixel block, channel),
   each program writing its own slot (deterministic; the dw kernel can emit
   the same partial sums itself, see `pool_sums` below);
2. the SE gate kernel (`se_gate.py`): the sums over the pixel blocks, then
   hsigmoid(W2 relu(W1 mean + b1) + b2), fp32 (N, C);
3. `_scale_kernel`: y = x * gate[n, c].
Tiles follow the depthwise kernel's, and every tensor is addressed through its
strides, so every layout works without a copy.
"""
import torch
import triton
import triton.language as tl

from .._checks import GPU_DTYPES, check_se_args, output_memory_format
from .dw_conv_bn_act import block_sizes
from .se_gate import launch as launch_gate


@triton.jit
def _pool_kernel(x_ptr, part_ptr, C, HW, W, sxn, sxc, sxh, sxw,
                 BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    pid_p = tl.program_id(0)
    n = tl.program_id(2).to(tl.int64)
    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    h, w = p // W, p % W
    x = tl.load(x_ptr + n * sxn + c[None, :] * sxc + h[:, None] * sxh + w[:, None] * sxw,
                mask=(p < HW)[:, None] & (c < C)[None, :], other=0.0)
    tl.store(part_ptr + (n * tl.num_programs(0) + pid_p) * C + c, tl.sum(x.to(tl.float32), axis=0), mask=c < C)


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

    `pool_sums`: optional fp32 spatial sums of x, (N, C) or the (N, blocks, C) partial sums
    of the depthwise kernel, which replace the pooling pass.
    """
    S = check_se_args(x, w1, b1, w2, b2, GPU_DTYPES)
    N, C, H, W = x.shape
    out = torch.empty_like(x, memory_format=output_memory_format(x))
    if out.numel() == 0:
        return out
    block_p, block_c, warps = block_sizes(output_memory_format(x) == torch.channels_last, C, H * W, x.element_size())
    grid = (triton.cdiv(H * W, block_p), triton.cdiv(C, block_c), N)
    if pool_sums is None:
        pool_sums = torch.empty((N, grid[0], C), device=x.device, dtype=torch.float32)
        _pool_kernel[grid](x, pool_sums, C, H * W, W, *x.stride(), BLOCK_P=block_p, BLOCK_C=block_c, num_warps=warps)
    elif pool_sums.dim() == 2:
        pool_sums = pool_sums[:, None, :]
    gate = torch.empty((N, C), device=x.device, dtype=torch.float32)
    launch_gate(pool_sums, w1.reshape(S, C), b1, w2.reshape(C, S), b2, gate, H * W)
    _scale_kernel[grid](x, gate, out, C, H * W, W, *x.stride(), *out.stride(),
                       BLOCK_P=block_p, BLOCK_C=block_c, num_warps=warps)
    return out
