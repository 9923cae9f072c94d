"""mnv3::pw_conv_bn_act on Triton: a 1x1 conv as a tensor-core GEMM with its epilogue.

The activations are the rows of A = [N*H*W, Cin] (channels_last makes each row
contiguous; any layout works, every operand is addressed through its strides),
the weights B = [Cin, Cout]; `tl.dot` accumulates in fp32 (fp32 inputs are
multiplied exactly, not in TF32).

* prologue: an optional per-(image, input channel) gate (Squeeze-and-Excite's
  scale) multiplied into each A tile as it loads, rounded to the input dtype
  as a separate SE op's output would be, so the SE block's project conv reads
  the depthwise output once and no scaled copy is written;
* epilogue: the folded-BN bias, the activation, an optional residual add
  (after the activation), one rounding to the output dtype;
* pooled mode (the last stage): one program per (image, Cout block) walks the
  image's rows and writes only the per-image mean of the activated output
  (N, Cout); the means are of the values as the map would store them, and the
  reduction order is fixed (no atomics), so runs are bit-identical.

The head's two linears run through the same kernel (rows = images).
"""
import torch
import triton
import triton.language as tl

from .._checks import TRITON_DTYPES, check_head_args, check_pw_args, output_memory_format
from ._common import ACT_CODES, apply_act, dot, dot_precision, effective_strides, stride_alignment, traceable, widen_dot


@triton.jit
def _rows(m, HW, W, sn_a, sh_a, sw_a, ALIGN: tl.constexpr):
    """Offsets of rows m = (image, h, w) of a 4-D tensor (strides in units of ALIGN elements,
    so the compiler knows every row starts aligned), and the image index."""
    img = m // HW
    p = m - img * HW
    h = p // W
    return (img.to(tl.int64) * sn_a + h * sh_a + (p - h * W) * sw_a) * ALIGN, img


@triton.jit
def _gemm_tile(a_ptr, w_ptr, gate_ptr, a_rows, g_rows, m_ok, n, n_ok, K, sak, sw_row, sgk,
               W_KN: tl.constexpr, HAS_GATE: tl.constexpr, PRECISION: tl.constexpr,
               WIDEN: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < K
        a_mask = m_ok[:, None] & k_ok[None, :]
        a = tl.load(a_ptr + a_rows[:, None] + (k * sak)[None, :], mask=a_mask, other=0.0)
        if HAS_GATE:
            g = tl.load(gate_ptr + g_rows[:, None] + (k * sgk)[None, :], mask=a_mask, other=0.0)
            a = (a.to(tl.float32) * g.to(tl.float32)).to(a.dtype)
        if W_KN:  # weights stored (Cin, Cout): rows of B contiguous
            b_off = (k * sw_row)[:, None] + n[None, :]
        else:  # stored (Cout, Cin), as conv weights are
            b_off = k[:, None] + (n * sw_row)[None, :]
        b = tl.load(w_ptr + b_off, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        acc = dot(a, b, acc, PRECISION, WIDEN)
    return acc


@triton.jit
def _epilogue(acc, b_ptr, res_ptr, r_rows, m_ok, n, n_ok, sb, src, out_ty,
              ACT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr):
    if HAS_BIAS:
        acc += tl.load(b_ptr + n * sb, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    y = apply_act(acc, ACT)
    if HAS_RES:
        r = tl.load(res_ptr + r_rows[:, None] + (n * src)[None, :], mask=m_ok[:, None] & n_ok[None, :], other=0.0)
        y += r.to(tl.float32)
    return y.to(out_ty)


# Sizes and the strides that scale with them are not specialised on (Triton would compile a
# variant per divisibility-by-16 pattern: per batch size and layer); ALIGN carries what the
# compiler needs to know instead.  Unit strides stay specialised (they are the contiguous dims).
@triton.jit(do_not_specialize=["M", "K_a", "NO_a", "HW", "W", "san_a", "sah_a", "saw_a", "sw_row_a", "son_a",
                               "soh_a", "sow_a", "srn_a", "srh_a", "srw_a", "sgn_a"])
def _pw_kernel(a_ptr, w_ptr, b_ptr, res_ptr, gate_ptr, out_ptr,
               M, K_a, NO_a, HW, W,
               san_a, sac, sah_a, saw_a, sw_row_a, sb, son_a, soc, soh_a, sow_a, srn_a, src, srh_a, srw_a, sgn_a, sgk,
               ACT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, HAS_GATE: tl.constexpr,
               POOL: tl.constexpr, ALIGN: tl.constexpr,
               W_KN: tl.constexpr, PRECISION: tl.constexpr, WIDEN: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # Every size and non-unit stride below is a multiple of ALIGN (passed divided by it), so the
    # compiler knows that rows start aligned and that masks along C are constant over ALIGN
    # channels: loads and stores along C vectorize.
    K = K_a * ALIGN
    NO = NO_a * ALIGN
    sw_row = sw_row_a * ALIGN
    out_ty = out_ptr.dtype.element_ty
    if POOL:
        # One image, one Cout block: the image's rows in order, summed as stored.
        pid_n = tl.program_id(0)
        img = tl.program_id(1)
        n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = n < NO
        total = tl.zeros((BLOCK_N,), dtype=tl.float32)
        for m0 in range(0, HW, BLOCK_M):
            m = img * HW + m0 + tl.arange(0, BLOCK_M)
            m_ok = (m0 + tl.arange(0, BLOCK_M)) < HW
            a_rows, _ = _rows(m, HW, W, san_a, sah_a, saw_a, ALIGN)
            r_rows, _ = _rows(m, HW, W, srn_a, srh_a, srw_a, ALIGN)
            acc = _gemm_tile(a_ptr, w_ptr, gate_ptr, a_rows, img.to(tl.int64) * sgn_a * ALIGN, m_ok, n, n_ok, K, sac,
                             sw_row, sgk, W_KN, HAS_GATE, PRECISION, WIDEN, BLOCK_M, BLOCK_N, BLOCK_K)
            y = _epilogue(acc, b_ptr, res_ptr, r_rows, m_ok, n, n_ok, sb, src, out_ty, ACT, HAS_BIAS, HAS_RES)
            total += tl.sum(tl.where(m_ok[:, None], y.to(tl.float32), 0.0), axis=0)
        tl.store(out_ptr + img.to(tl.int64) * son_a * ALIGN + n * soc, (total / HW).to(out_ty), mask=n_ok)
    else:
        # Cout blocks vary fastest, so the programs sharing an A tile run together (L2 reuse).
        num_n = tl.cdiv(NO, BLOCK_N)
        pid_m = tl.program_id(0) // num_n
        pid_n = tl.program_id(0) % num_n
        m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        m_ok = m < M
        n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = n < NO
        a_rows, img = _rows(m, HW, W, san_a, sah_a, saw_a, ALIGN)
        acc = _gemm_tile(a_ptr, w_ptr, gate_ptr, a_rows, img.to(tl.int64) * sgn_a * ALIGN, m_ok, n, n_ok, K, sac,
                         sw_row, sgk, W_KN, HAS_GATE, PRECISION, WIDEN, BLOCK_M, BLOCK_N, BLOCK_K)
        r_rows, _ = _rows(m, HW, W, srn_a, srh_a, srw_a, ALIGN)
        y = _epilogue(acc, b_ptr, res_ptr, r_rows, m_ok, n, n_ok, sb, src, out_ty, ACT, HAS_BIAS, HAS_RES)
        o_rows, _ = _rows(m, HW, W, son_a, soh_a, sow_a, ALIGN)
        tl.store(out_ptr + o_rows[:, None] + (n * soc)[None, :], y, mask=m_ok[:, None] & n_ok[None, :])


def _block(size: int, cap: int) -> int:
    """The block along a GEMM dimension: the whole size (power-of-two padded, >= 16, tl.dot's
    minimum) up to `cap`; beyond, `cap` if it divides the size, else cap / 2 (masked at the end)."""
    if size <= cap:
        return max(16, triton.next_power_of_2(size))
    return cap if size % cap == 0 else cap // 2


def tiles(M: int, K: int, NO: int, HW: int, dtype: torch.dtype, pool: bool, gate: bool = False
          ) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps), a fixed heuristic (no autotuning, so nothing is
    timed during a CUDA graph capture and the AOT check sees exactly what runs).

    These GEMMs are memory-bound (K and Cout are 16-960): for fp16/bf16 the tile covers up to
    128 output channels, so A is read once for most layers (wider layers re-read A tiles from
    L2); 128 rows x 128 channels of fp32 accumulator is 64 registers a thread at 8 warps.
    fp32 (the correctness reference) multiplies exactly on the FMA units, whose dot holds a
    whole K slice of both operands in registers: 64 x 64 tiles with K steps of 16 (wider ones
    spilled on sm_80).  A gated A tile passes through registers (scaled, rounded) before the
    dot: K steps of 32 there keep it below the register file (64 reached 255 on sm_80)."""
    rows = HW if pool else M
    if dtype == torch.float32:
        block_m = min(64, max(16, triton.next_power_of_2(rows)))
        return block_m, _block(NO, 64), 16, 4
    block_m = min(128, max(16, triton.next_power_of_2(rows)))
    block_n = _block(NO, 128)
    block_k = _block(K, 32 if gate else 64)
    warps = 8 if block_m * block_n >= 128 * 64 else 4
    return block_m, block_n, block_k, warps


def _weight_layout(w: torch.Tensor) -> tuple:
    """(weights, stored (Cin, Cout)?, row stride): one of the two strides must be 1 (else a copy)."""
    if w.shape[1] == 1 or w.stride(1) == 1:
        return w, False, w.stride(0)
    if w.shape[0] == 1 or w.stride(0) == 1:
        return w, True, w.stride(1)
    w = w.contiguous()
    return w, False, w.stride(0)


def launch(x, weight2d, bias, out, act: str, residual=None, gate=None, pool: bool = False, kernel=_pw_kernel):
    """Runs the kernel into preallocated `out` ((N, Cout, H, W) map, or (N, Cout) when `pool`).
    `weight2d` is any (Cout, Cin) view (the CUDA backend keeps it as the transpose of a
    contiguous (Cin, Cout) matrix); no argument checks (the callers make them)."""
    N, K, H, W = x.shape
    NO = weight2d.shape[0]
    M, HW = N * H * W, H * W
    block_m, block_n, block_k, warps = tiles(M, K, NO, HW, x.dtype, pool, gate is not None)
    out4 = out[:, :, None, None] if pool else out
    res = residual if residual is not None else out4
    w, w_kn, w_row = _weight_layout(weight2d)
    g_row, g_col = (gate.stride(0), gate.stride(1)) if gate is not None else (0, 0)
    # The common alignment of the sizes and the non-unit strides (8 for MobileNet's channels_last
    # activations, whose widths are multiples of 8; 1 for NCHW, whose pixel stride is 1).
    xs, os_, rs = effective_strides(x), effective_strides(out4), effective_strides(res) if residual is not None else (0, 0, 0, 0)
    pixel = [xs[0], xs[2], xs[3], os_[0], rs[0], rs[2], rs[3]] + ([] if pool else [os_[2], os_[3]])
    align = stride_alignment(pixel + [K, NO, w_row, g_row])
    if pool:
        grid = (triton.cdiv(NO, block_n), N)
    else:
        grid = (triton.cdiv(M, block_m) * triton.cdiv(NO, block_n),)

    def units(st):  # image, channel, h, w strides with the scaled ones in units of align
        return st[0] // align, st[1], st[2] // align, st[3] // align

    kernel[grid](
        x, w, bias if bias is not None else w, res, gate if gate is not None else w, out,
        M, K // align, NO // align, HW, W,
        *units(xs), w_row // align, bias.stride(0) if bias is not None else 0,
        *units(os_ if not pool else (os_[0], os_[1], 0, 0)), *units(rs),
        g_row // align, g_col,
        ACT=ACT_CODES[act], HAS_BIAS=bias is not None, HAS_RES=residual is not None, HAS_GATE=gate is not None,
        POOL=pool, ALIGN=align, W_KN=w_kn,
        PRECISION=dot_precision(x.dtype), WIDEN=widen_dot(x.dtype), BLOCK_M=block_m, BLOCK_N=block_n,
        BLOCK_K=block_k, num_warps=warps,
    )


def pw_conv_bn_act(x, weight, bias, act: str, residual=None, gate=None, pool: bool = False) -> torch.Tensor:
    """1x1 conv + folded BN + activation (+ residual, SE gate, pooled output) on Triton;
    arguments as `mnv3::pw_conv_bn_act`."""
    cout = check_pw_args(x, weight, bias, act, residual, gate, TRITON_DTYPES)
    N, C, H, W = x.shape
    if pool:
        out = torch.empty((N, cout), device=x.device, dtype=x.dtype)
    else:
        out = torch.empty((N, cout, H, W), device=x.device, dtype=x.dtype, memory_format=output_memory_format(x))
    if out.numel():  # (Cin = 0 runs too: no K step, the output is the bias; a pooled empty map is NaN)
        launch(x, weight.reshape(cout, C), bias, out, act, residual, gate, pool, traceable(_pw_kernel))
    return out


def classifier_head(pooled, w1, b1, w2, b2, act: str) -> torch.Tensor:
    """linear + activation + linear on Triton (the pointwise GEMM kernel, one row per image);
    arguments as `mnv3::classifier_head`."""
    hidden, classes = check_head_args(pooled, w1, b1, w2, b2, act, TRITON_DTYPES)
    N, C = pooled.shape
    h = torch.empty((N, hidden), device=pooled.device, dtype=pooled.dtype)
    out = torch.empty((N, classes), device=pooled.device, dtype=pooled.dtype)
    if N:
        kernel = traceable(_pw_kernel)
        launch(pooled[:, :, None, None], w1.reshape(hidden, C), b1, h[:, :, None, None], act, kernel=kernel)
        launch(h[:, :, None, None], w2.reshape(classes, hidden), b2, out[:, :, None, None], "none", kernel=kernel)
    return out
