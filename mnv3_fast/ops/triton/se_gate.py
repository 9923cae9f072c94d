"""mnv3::se_gate on Triton: Squeeze-and-Excite's two small FCs in one kernel, from pool sums.

gate = hsigmoid(W2 relu(W1 (sums / count) + b1) + b2), fp32 (N, C).

`sums` are the spatial sums of the SE input, either (N, C) or (N, blocks, C)
partial sums as the depthwise kernel writes them (`dw_conv_bn_act.launch`
with partials): this kernel adds the blocks in a fixed order (the second,
deterministic stage of the pooling), so no pooling pass over the map and no
atomics are needed.  A program takes BLOCK_I images, so each weight tile is
loaded once for all of them; both FCs are tl.dot products over tiles of at
most 64 x 64 (fp32 operands, multiplied exactly).  The hidden layer goes
through a small fp32 scratch (N, S) between the two FCs (a barrier orders
the program's writes before its reads): holding all of it in registers, up
to 256 wide, spilled 1-3 KB a thread on sm_80/sm_90.
"""
import torch
import triton
import triton.language as tl

from .._checks import TRITON_DTYPES, check_se_gate_args
from ._common import dot, hsigmoid_f32, traceable

BLOCK_I = 16  # images per program (tl.dot's smallest M)


@triton.jit(do_not_specialize=["N", "B", "C", "S", "ssn", "ssb", "sw1s", "sw2c", "sgn"])
def _se_gate_kernel(sums_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, hidden_ptr, gate_ptr,
                    N, B, C, S, inv_count,
                    ssn, ssb, ssc, sw1s, sw1c, sb1, sw2c, sw2s, sb2, sgn, sgc,
                    BLOCK_I: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_R: tl.constexpr):
    i = tl.program_id(0) * BLOCK_I + tl.arange(0, BLOCK_I)
    i_ok = i < N
    # int32 offsets (the launcher checks the sizes): pointer tensors live across the loops cost
    # two registers an element and made ptxas spill.
    sums_img = (i * ssn)[:, None]
    hidden_img = (i * S)[:, None]
    # hidden = relu(W1 pooled + b1), BLOCK_S columns at a time (reducing over C in BLOCK_R
    # steps: the FMA dot holds a whole reduction slice of both operands), into the scratch.
    for s0 in range(0, S, BLOCK_S):
        s = s0 + tl.arange(0, BLOCK_S)
        s_ok = s < S
        h = tl.zeros((BLOCK_I, BLOCK_S), dtype=tl.float32)
        for c0 in range(0, C, BLOCK_R):
            c = c0 + tl.arange(0, BLOCK_R)
            c_ok = c < C
            pooled = tl.zeros((BLOCK_I, BLOCK_R), dtype=tl.float32)
            for b in range(B):  # the second stage of the pooling, in a fixed order
                pooled += tl.load(sums_ptr + sums_img + b * ssb + (c * ssc)[None, :], mask=i_ok[:, None] & c_ok[None, :],
                                  other=0.0)
            w1t = tl.load(w1_ptr + (c * sw1c)[:, None] + (s * sw1s)[None, :], mask=c_ok[:, None] & s_ok[None, :],
                          other=0.0)
            h = dot(pooled * inv_count, w1t.to(tl.float32), h, "ieee", False)
        h = tl.maximum(h + tl.load(b1_ptr + s * sb1, mask=s_ok, other=0.0).to(tl.float32)[None, :], 0.0,
                       propagate_nan=tl.PropagateNan.ALL)
        tl.store(hidden_ptr + hidden_img + s[None, :], h, mask=i_ok[:, None] & s_ok[None, :])
    tl.debug_barrier()  # every thread's part of the hidden layer is written before any is read
    # gate = hsigmoid(W2 hidden + b2), BLOCK_C channels at a time.
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        c_ok = c < C
        g = tl.zeros((BLOCK_I, BLOCK_C), dtype=tl.float32)
        for s0 in range(0, S, BLOCK_R):
            s = s0 + tl.arange(0, BLOCK_R)
            s_ok = s < S
            h = tl.load(hidden_ptr + hidden_img + s[None, :], mask=i_ok[:, None] & s_ok[None, :], other=0.0)
            w2t = tl.load(w2_ptr + (s * sw2s)[:, None] + (c * sw2c)[None, :], mask=s_ok[:, None] & c_ok[None, :],
                          other=0.0)
            g = dot(h, w2t.to(tl.float32), g, "ieee", False)
        g += tl.load(b2_ptr + c * sb2, mask=c_ok, other=0.0).to(tl.float32)[None, :]
        tl.store(gate_ptr + (i * sgn)[:, None] + (c * sgc)[None, :], hsigmoid_f32(g),
                 mask=i_ok[:, None] & c_ok[None, :])


def tile(C: int, S: int) -> tuple[int, int, int, int]:
    """(BLOCK_C, BLOCK_S, BLOCK_R, num_warps): outputs in blocks of 64 channels / hidden units,
    reductions in steps of 16 (tl.dot's smallest: the FMA dot holds a whole reduction slice of
    both operands, and wider steps spilled on sm_80/sm_90); one variant for every layer
    (narrower output blocks for small C or S spilled too, on sm_80)."""
    return 64, 64, 16, 4


def launch(sums, w1, b1, w2, b2, gate, count: int, kernel=_se_gate_kernel):
    """Runs the kernel into a preallocated fp32 (N, C) `gate`; `w1` a (S, C) and `w2` a (C, S)
    matrix view, `sums` (N, blocks, C); no argument checks (the callers make them)."""
    N, B, C = sums.shape
    S = w1.shape[0]
    block_c, block_s, block_r, warps = tile(C, S)
    if max(sums.numel(), N * S, gate.numel()) >= 2**31:
        raise ValueError(f"mnv3::se_gate (Triton): {N} images of {C} channels is beyond the kernel's int32 offsets")
    hidden = torch.empty((N, S), device=sums.device, dtype=torch.float32)
    kernel[(triton.cdiv(N, BLOCK_I),)](
        sums, w1, b1, w2, b2, hidden, gate, N, B, C, S, 1.0 / count,
        *sums.stride(), *w1.stride(), b1.stride(0), *w2.stride(), b2.stride(0), *gate.stride(),
        BLOCK_I=BLOCK_I, BLOCK_C=block_c, BLOCK_S=block_s, BLOCK_R=block_r, num_warps=warps,
        num_stages=2,  # (3, the default, made ptxas spill 8 bytes for fp32 weights on sm_80 with triton 3.6)
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
