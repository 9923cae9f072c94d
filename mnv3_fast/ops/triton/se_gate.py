"""mnv3::se_gate on Triton: Squeeze-and-Excite's two small FCs in one kernel, from pool sums.

gate = hsigmoid(W2 relu(W1 (sums / count) + b1) + b2), fp32 (N, C).

`sums` are the spatial sums of the SE input, either (N, C) or (N, blocks, C)
partial sums as the depthwise kernel writes them (`dw_conv_bn_act.launch`
with partials): this kernel adds the blocks in a fixed order (the second,
deterministic stage of the pooling), so no pooling pass over the map and no
atomics are needed.  A program takes BLOCK_I images, so each weight tile is
loaded once for all of them and both FCs are tl.dot products over chunks of
C (fp32 operands, multiplied exactly); the hidden vector stays in registers.
"""
import torch
import triton
import triton.language as tl

from .._checks import TRITON_DTYPES, check_se_gate_args
from ._common import dot, hsigmoid_f32, traceable

BLOCK_I = 16  # images per program (tl.dot's smallest M)


@triton.jit
def _se_gate_kernel(sums_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, gate_ptr,
                    N, B, C, S, inv_count,
                    ssn, ssb, ssc, sw1s, sw1c, sb1, sw2c, sw2s, sb2, sgn, sgc,
                    BLOCK_I: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr):
    i = tl.program_id(0) * BLOCK_I + tl.arange(0, BLOCK_I)
    i_ok = i < N
    s = tl.arange(0, BLOCK_S)
    s_ok = s < S
    sums_img = sums_ptr + i.to(tl.int64)[:, None] * ssn
    hidden = tl.zeros((BLOCK_I, BLOCK_S), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        c_ok = c < C
        mask = i_ok[:, None] & c_ok[None, :]
        pooled = tl.zeros((BLOCK_I, BLOCK_C), dtype=tl.float32)
        for b in range(B):
            pooled += tl.load(sums_img + b * ssb + (c * ssc)[None, :], mask=mask, other=0.0)
        w1t = tl.load(w1_ptr + (c * sw1c)[:, None] + (s * sw1s)[None, :], mask=c_ok[:, None] & s_ok[None, :],
                      other=0.0)
        hidden = dot(pooled * inv_count, w1t.to(tl.float32), hidden, "ieee", False)
    b1 = tl.load(b1_ptr + s * sb1, mask=s_ok, other=0.0).to(tl.float32)
    hidden = tl.maximum(hidden + b1[None, :], 0.0, propagate_nan=tl.PropagateNan.ALL)
    # Padding columns are 0 * NaN when a sum is NaN: keep them out of the second product.
    hidden = tl.where(s_ok[None, :], hidden, 0.0)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        c_ok = c < C
        w2t = tl.load(w2_ptr + (s * sw2s)[:, None] + (c * sw2c)[None, :], mask=s_ok[:, None] & c_ok[None, :],
                      other=0.0)
        g = dot(hidden, w2t.to(tl.float32), tl.zeros((BLOCK_I, BLOCK_C), dtype=tl.float32), "ieee", False)
        g += tl.load(b2_ptr + c * sb2, mask=c_ok, other=0.0).to(tl.float32)[None, :]
        tl.store(gate_ptr + i.to(tl.int64)[:, None] * sgn + (c * sgc)[None, :], hsigmoid_f32(g),
                 mask=i_ok[:, None] & c_ok[None, :])


def tile(C: int, S: int) -> tuple[int, int, int]:
    """(BLOCK_C, BLOCK_S, num_warps): all of S at once (the hidden vector), C in chunks so a
    weight tile is at most 8192 values (64 fp32 registers a thread at 4 warps)."""
    block_s = max(16, triton.next_power_of_2(S))
    block_c = max(16, min(64, 8192 // block_s, triton.next_power_of_2(C)))
    return block_c, block_s, 4


def launch(sums, w1, b1, w2, b2, gate, count: int, kernel=_se_gate_kernel):
    """Runs the kernel into a preallocated fp32 (N, C) `gate`; `w1` a (S, C) and `w2` a (C, S)
    matrix view, `sums` (N, blocks, C); no argument checks (the callers make them)."""
    N, B, C = sums.shape
    S = w1.shape[0]
    block_c, block_s, warps = tile(C, S)
    kernel[(triton.cdiv(N, BLOCK_I),)](
        sums, w1, b1, w2, b2, gate, N, B, C, S, 1.0 / count,
        *sums.stride(), *w1.stride(), b1.stride(0), *w2.stride(), b2.stride(0), *gate.stride(),
        BLOCK_I=BLOCK_I, BLOCK_C=block_c, BLOCK_S=block_s, num_warps=warps,
    )


def se_gate(sums, w1, b1, w2, b2, count: int) -> torch.Tensor:
    """The SE gate on Triton; arguments as `mnv3::se_gate`."""
    S = check_se_gate_args(sums, w1, b1, w2, b2, count, TRITON_DTYPES)
    if sums.dtype != torch.float32:
        raise TypeError(f"mnv3::se_gate: expected sums to be float32 in a Triton kernel, got {sums.dtype}")
    sums3 = sums if sums.dim() == 3 else sums[:, None, :]
    N, C = sums3.shape[0], sums3.shape[2]
    gate = torch.empty((N, C), device=sums.device, dtype=torch.float32)
    if gate.numel():
        launch(sums3, w1.reshape(S, C), b1, w2.reshape(C, S), b2, gate, count, traceable(_se_gate_kernel))
    return gate
