// mnv3::dw_conv_bn_act: depthwise kxk conv + folded inference BatchNorm
// (the scale lives in `weight`, the shift in `bias`) + activation, in one pass.
//
// Two layouts, each vectorized along its contiguous axis:
//  * NCHW: one (n, c) plane per task.  The plane is copied once into a
//    zero-padded fp32/fp64 scratch, split into `stride` column phases, so every
//    tap of every output row is a contiguous, bounds-check-free vector load
//    (stride 2 reads the even or the odd phase).
//  * NHWC (channels_last): one output row per task, vectorized along C with
//    the weights repacked tap-major as (k*k, C).
#include "common.h"
#include "ops.h"

#include <vector>

namespace mnv3 {
namespace {

constexpr const char* kOp = "mnv3::dw_conv_bn_act";

struct Geometry {
  int64_t N, C, H, W, K, stride, pad, dil, Ho, Wo;
};

// Output vectors (NCHW) or pixels (NHWC) computed together: independent FMA
// chains hide the FMA latency and share each weight load.
constexpr int kBlock = 4;
// NHWC: blocks of output pixels per segment; every channel chunk runs over one segment of the row before
// the next, so the segment's input (a few KB per kernel row) stays in L1 across the chunks.
constexpr int64_t kSegment = 4;
constexpr int64_t kNarrowPlane = 8;  // NCHW outputs at most this wide go through the NHWC kernel

// ------------------------------------------------------------------ NCHW

template <int K, int S, Act A, typename scalar_t>
void dw_nchw(const Tensor& x, const at::opmath_type<scalar_t>* wp, const at::opmath_type<scalar_t>* bp, Tensor& out,
             const Geometry& g) {  // weights (C, K*K)
  using IO = VecIO<scalar_t>;
  using acc_t = typename IO::acc_t;
  using Vec = typename IO::Vec;
  constexpr int64_t V = IO::kSize;
  const int64_t d = g.dil, pad = g.pad;
  const int64_t Wo_round = (g.Wo + V - 1) / V * V;
  const int64_t Hp = (g.Ho - 1) * S + (K - 1) * d + 1;  // rows any output reads
  const int64_t Wq = Wo_round + ((K - 1) * d) / S + 1;  // columns per phase, rounded for full vectors
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  scalar_t* op = out.mutable_data_ptr<scalar_t>();
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, g.Ho * g.Wo * K * K));

  // Offset of each tap in the phase-split scratch, relative to the output row's first input row.
  int64_t tap_off[K * K];
  for (int kh = 0; kh < K; ++kh)
    for (int kw = 0; kw < K; ++kw) tap_off[kh * K + kw] = ((kw * d) % S * Hp + kh * d) * Wq + (kw * d) / S;

  at::parallel_for(0, g.N * g.C, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> scratch(S * Hp * Wq);
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t c = plane % g.C;
      const scalar_t* src = xp + plane * g.H * g.W;
      // Fill the padded, phase-split copy: phase q holds padded columns q, q+S, ...
      for (int64_t q = 0; q < S; ++q) {
        // Columns j of phase q that map inside the image: iw = j * S + q - pad in [0, W).
        const int64_t j_lo = std::min<int64_t>(Wq, std::max<int64_t>(0, (pad - q + S - 1) / S));
        const int64_t j_hi = std::max<int64_t>(j_lo, std::min<int64_t>(Wq, (g.W - 1 + pad - q) / S + 1));
        for (int64_t r = 0; r < Hp; ++r) {
          acc_t* row = scratch.data() + (q * Hp + r) * Wq;
          const int64_t ih = r - pad;
          if (ih < 0 || ih >= g.H) {
            std::fill(row, row + Wq, acc_t(0));
            continue;
          }
          const scalar_t* srow = src + ih * g.W + q - pad;
          std::fill(row, row + j_lo, acc_t(0));
          for (int64_t j = j_lo; j < j_hi; ++j) row[j] = static_cast<acc_t>(srow[j * S]);
          std::fill(row + j_hi, row + Wq, acc_t(0));
        }
      }
      Vec wv[K * K];
      for (int t = 0; t < K * K; ++t) wv[t] = Vec(wp[c * K * K + t]);
      const Vec bias(bp[c]);
      scalar_t* dst = op + plane * g.Ho * g.Wo;
      for (int64_t oh = 0; oh < g.Ho; ++oh) {
        const acc_t* in_row = scratch.data() + oh * S * Wq;
        scalar_t* out_row = dst + oh * g.Wo;
        int64_t ow = 0;
        for (; ow + kBlock * V <= g.Wo; ow += kBlock * V) {
          Vec acc[kBlock];
          for (int j = 0; j < kBlock; ++j) acc[j] = bias;
          MNV3_UNROLL(25)
          for (int t = 0; t < K * K; ++t)
            MNV3_UNROLL(4)
            for (int j = 0; j < kBlock; ++j)
              acc[j] = at::vec::fmadd(Vec::loadu(in_row + tap_off[t] + ow + j * V), wv[t], acc[j]);
          for (int j = 0; j < kBlock; ++j) IO::store(out_row + ow + j * V, apply_act<A>(acc[j]));
        }
        for (; ow < g.Wo; ow += V) {
          Vec acc = bias;
          MNV3_UNROLL(25)
          for (int t = 0; t < K * K; ++t) acc = at::vec::fmadd(Vec::loadu(in_row + tap_off[t] + ow), wv[t], acc);
          const int64_t n = std::min<int64_t>(V, g.Wo - ow);
          if (n == V)
            IO::store(out_row + ow, apply_act<A>(acc));
          else
            IO::store(out_row + ow, apply_act<A>(acc), n);
        }
      }
    }
  });
}

// ------------------------------------------------------------------ NHWC

// What both NHWC kernels share: rows of output pixels per parallel task (~16K MACs each), and `pad` as a
// vector of the input (what a tap in the padding reads).
template <int K>
int64_t nhwc_row_grain(const Geometry& g) {
  return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, g.Wo * g.C * K * K));
}

template <typename In>
typename In::Vec padding_vector(const In& in_io, typename In::scalar_t pad) {
  typename In::scalar_t padding[In::kSize];
  std::fill(padding, padding + In::kSize, pad);
  return in_io.load(padding);
}

// InA: an activation applied to each input as it is loaded (ReLU or None),
// so that a preceding conv's ReLU needs no pass of its own (run_cpu_program).
// In / Out: how x is loaded and the output stored (VecIO<float/bf16/double>, or
// U8IO for the int8 program); `pad`: the value the padding reads as (0, or a
// uint8 input's zero point, whose scale and offset the caller folded into the
// weights and bias).
template <int K, int S, Act A, Act InA, typename In, typename Out>
void dw_nhwc(const typename In::scalar_t* xp, const typename In::acc_t* wp, const typename In::acc_t* bp,
             typename Out::scalar_t* op, const Geometry& g, const In& in_io, const Out& out_io,
             typename In::scalar_t pad) {  // weights tap-major (K*K, C); x (N, H, W, C) in memory
  using scalar_t = typename In::scalar_t;
  using acc_t = typename In::acc_t;
  using Vec = typename In::Vec;
  constexpr int64_t V = In::kSize;
  const int64_t C = g.C, d = g.dil;
  const int64_t pad_px = g.pad;
  const int64_t grain = nhwc_row_grain<K>(g);

  // Dilated convs (dilation 1 runs dw_nhwc_d1).  Output pixels go kBlock at a
  // time: for each (pixel, kernel column) the input column's offset, or
  // -1 where it falls in the padding (or past the last pixel) and a zero
  // vector (the padding value) is read instead.  Same for every row.
  const int64_t blocks = (g.Wo + kBlock - 1) / kBlock;
  std::vector<int64_t> col(blocks * kBlock * K);
  std::vector<char> interior(blocks);  // every column of the block inside the image
  for (int64_t b = 0; b < blocks; ++b) {
    bool all = true;
    for (int j = 0; j < kBlock; ++j)
      for (int kw = 0; kw < K; ++kw) {
        const int64_t ow = b * kBlock + j, iw = ow * S - pad_px + kw * d;
        const bool ok = ow < g.Wo && iw >= 0 && iw < g.W;
        col[(b * kBlock + j) * K + kw] = ok ? iw * C : -1;
        all = all && ok;
      }
    interior[b] = all;
  }
  const Vec pad_vec = padding_vector(in_io, pad);
  const bool pad_reads_nonzero = pad != scalar_t(0);

  at::parallel_for(0, g.N * g.Ho, grain, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / g.Ho, oh = row % g.Ho;
      const int64_t ih0 = oh * S - pad_px;
      int kh_lo = 0, kh_hi = K;  // the kernel rows inside the image
      while (kh_lo < K && ih0 + kh_lo * d < 0) ++kh_lo;
      while (kh_hi > kh_lo && ih0 + (kh_hi - 1) * d >= g.H) --kh_hi;
      const scalar_t* in_img = xp + n * g.H * g.W * C;
      typename Out::scalar_t* out_row = op + row * g.Wo * C;

      for (int64_t b0 = 0; b0 < blocks; b0 += kSegment)
      for (int64_t c = 0; c < C; c += V) {
        const int64_t m = std::min<int64_t>(V, C - c);
        // The chunk's weights stay in registers (K=5 fits AVX-512's 32) across the segment.
        Vec wv[K * K];
        for (int t = 0; t < K * K; ++t) wv[t] = Vec::loadu(wp + t * C + c, m);
        const Vec bias = Vec::loadu(bp + c, m);
        for (int64_t b = b0; b < std::min(blocks, b0 + kSegment); ++b) {
          const int64_t* cb = col.data() + b * kBlock * K;
          Vec acc[kBlock];
          for (int j = 0; j < kBlock; ++j) acc[j] = bias;
          // Loops with compile-time trip counts, fully unrolled, so wv and acc
          // are indexed by constants and live in registers.
          MNV3_UNROLL(5)
          for (int kh = 0; kh < K; ++kh) {
            if (kh < kh_lo || kh >= kh_hi) {  // a row of padding: it reads as `pad`
              if (pad_reads_nonzero) {
                MNV3_UNROLL(5)
                for (int kw = 0; kw < K; ++kw)
                  MNV3_UNROLL(4)
                  for (int j = 0; j < kBlock; ++j) acc[j] = at::vec::fmadd(pad_vec, wv[kh * K + kw], acc[j]);
              }
              continue;
            }
            const scalar_t* in = in_img + (ih0 + kh * d) * g.W * C + c;
            if (interior[b] && m == V) {
              MNV3_UNROLL(5)
              for (int kw = 0; kw < K; ++kw)
                MNV3_UNROLL(4)
                for (int j = 0; j < kBlock; ++j)
                  acc[j] = at::vec::fmadd(apply_act<InA>(in_io.load(in + cb[j * K + kw])), wv[kh * K + kw], acc[j]);
            } else {
              MNV3_UNROLL(5)
              for (int kw = 0; kw < K; ++kw)
                MNV3_UNROLL(4)
                for (int j = 0; j < kBlock; ++j) {
                  const int64_t off = cb[j * K + kw];
                  const Vec xi = off >= 0 ? in_io.load(in + off, m) : pad_vec;  // (lanes past m: not stored)
                  acc[j] = at::vec::fmadd(apply_act<InA>(xi), wv[kh * K + kw], acc[j]);
                }
            }
          }
          for (int j = 0; j < kBlock && b * kBlock + j < g.Wo; ++j) {
            typename Out::scalar_t* o = out_row + (b * kBlock + j) * C + c;
            m == V ? out_io.store(o, apply_act<A>(acc[j])) : out_io.store(o, apply_act<A>(acc[j]), m);
          }
        }
      }
    }
  });
}

// Dilation 1 (every MobileNetV3 depthwise conv): kBlockD1 output pixels of a row at a time, their
// accumulators in registers, with only the current kernel row's K weight vectors (reloaded per kernel
// row, from L1).  Keeping all 25 weights of a 5x5 kernel in registers as well spilled: measured per layer
// at batch 1 on a Xeon, this is 1.2-1.5x faster for the 5x5 convs and about even for the 3x3 ones.  Each
// input column of the block is loaded once per kernel row and used by every output pixel that reads it.
constexpr int kBlockD1 = 7;  // (MobileNetV3's maps at 224x224 are 112, 56, 28, 14 and 7 wide: whole blocks)
constexpr int64_t kSegmentInputPixels = 28;  // about how many input columns a segment of blocks spans

// Input column i of a block's kernel row, xi, into the accumulators of the outputs that read it
// (output j reads columns j * S .. j * S + K - 1).
template <int K, int S, int B, typename Vec>
inline void dw_column(int i, const Vec& xi, const Vec* w, Vec* acc) {
  MNV3_UNROLL(8)
  for (int j = 0; j < B; ++j) {
    const int kw = i - j * S;
    if (kw >= 0 && kw < K) acc[j] = at::vec::fmadd(xi, w[kw], acc[j]);
  }
}

// One kernel row of a block: acc[j] += sum over kw of w[kw] * x[column j * S + kw], for the block's
// (B - 1) * S + K input columns from `in` on.  The common case, a block inside the image with a whole
// vector of channels, has a branch-free body of its own, walking a pointer along the row: written
// with the edge tests folded in, it kept flags and per-column addresses in spilled registers (up to
// 1.2x slower on the 14x14 and 28x28 maps).
template <int K, int S, int B, Act InA, typename In>
inline void dw_row_interior(const typename In::scalar_t* in, int64_t C, const typename In::Vec* w,
                            typename In::Vec* acc, const In& in_io) {
  MNV3_UNROLL(24)
  for (int i = 0; i < (B - 1) * S + K; ++i, in += C) {
    dw_column<K, S, B>(i, apply_act<InA>(in_io.load(in)), w, acc);
  }
}

// The same at the image's edges or for a partial vector of m channels: columns outside [0, W), and
// whole rows outside the image, read as `pad_vec`.
template <int K, int S, int B, Act InA, typename In>
inline void dw_row_edge(const typename In::scalar_t* in, int64_t C, int64_t col0, int64_t W, bool row_inside,
                        int64_t m, const typename In::Vec& pad_vec, const typename In::Vec* w,
                        typename In::Vec* acc, const In& in_io) {
  constexpr int64_t V = In::kSize;
  MNV3_UNROLL(24)
  for (int i = 0; i < (B - 1) * S + K; ++i, in += C) {
    const bool inside = row_inside && col0 + i >= 0 && col0 + i < W;
    const typename In::Vec xi =
        !inside ? pad_vec : apply_act<InA>(m == V ? in_io.load(in) : in_io.load(in, m));
    dw_column<K, S, B>(i, xi, w, acc);
  }
}

template <int K, int S, Act A, Act InA, typename In, typename Out>
void dw_nhwc_d1(const typename In::scalar_t* xp, const typename In::acc_t* wp, const typename In::acc_t* bp,
                typename Out::scalar_t* op, const Geometry& g, const In& in_io, const Out& out_io,
                typename In::scalar_t pad) {
  using scalar_t = typename In::scalar_t;
  using Vec = typename In::Vec;
  constexpr int B = kBlockD1;
  constexpr int64_t V = In::kSize;
  const int64_t C = g.C, pad_px = g.pad;
  const int64_t grain = nhwc_row_grain<K>(g);
  const int64_t blocks = (g.Wo + B - 1) / B;
  // Blocks per segment: every channel chunk runs over a segment before the next, so the segment's input
  // (K rows of (segment * B - 1) * S + K pixels) stays in L1 across the chunks.
  const int64_t segment = std::max<int64_t>(1, kSegmentInputPixels / (B * S));
  const Vec pad_vec = padding_vector(in_io, pad);
  const bool pad_reads_nonzero = pad != scalar_t(0);

  at::parallel_for(0, g.N * g.Ho, grain, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / g.Ho, oh = row % g.Ho;
      const int64_t ih0 = oh * S - pad_px;
      const scalar_t* in_img = xp + n * g.H * g.W * C;
      typename Out::scalar_t* out_row = op + row * g.Wo * C;
      for (int64_t b0 = 0; b0 < blocks; b0 += segment)
      for (int64_t c = 0; c < C; c += V) {
        const int64_t m = std::min<int64_t>(V, C - c);
        const Vec bias = Vec::loadu(bp + c, m);
        for (int64_t b = b0; b < std::min(blocks, b0 + segment); ++b) {
          const int64_t col0 = b * B * S - pad_px;  // the block's first input column
          const bool interior = m == V && col0 >= 0 && col0 + (B - 1) * S + K <= g.W && (b + 1) * B <= g.Wo;
          Vec acc[B];
          for (int j = 0; j < B; ++j) acc[j] = bias;
          MNV3_UNROLL(5)
          for (int kh = 0; kh < K; ++kh) {
            const int64_t ih = ih0 + kh;
            const bool row_inside = ih >= 0 && ih < g.H;
            if (!row_inside && !pad_reads_nonzero) continue;
            Vec w[K];
            for (int kw = 0; kw < K; ++kw) w[kw] = Vec::loadu(wp + (kh * K + kw) * C + c, m);
            const scalar_t* row_in = in_img + ih * g.W * C + c + col0 * C;
            if (interior && row_inside)
              dw_row_interior<K, S, B, InA>(row_in, C, w, acc, in_io);
            else
              dw_row_edge<K, S, B, InA>(row_in, C, col0, g.W, row_inside, m, pad_vec, w, acc, in_io);
          }
          for (int j = 0; j < B && b * B + j < g.Wo; ++j) {
            typename Out::scalar_t* o = out_row + (b * B + j) * C + c;
            m == V ? out_io.store(o, apply_act<A>(acc[j])) : out_io.store(o, apply_act<A>(acc[j]), m);
          }
        }
      }
    }
  });
}

template <Act A, Act InA, typename In, typename Out>
void run_dw_nhwc(const typename In::scalar_t* xp, const typename In::acc_t* wp, const typename In::acc_t* bp,
                 typename Out::scalar_t* op, const Geometry& g, const In& in_io, const Out& out_io,
                 typename In::scalar_t pad) {
  auto run = [&](auto kernel, auto stride) {
    constexpr int K = decltype(kernel)::value, S = decltype(stride)::value;
    if (g.dil == 1)
      dw_nhwc_d1<K, S, A, InA>(xp, wp, bp, op, g, in_io, out_io, pad);
    else
      dw_nhwc<K, S, A, InA>(xp, wp, bp, op, g, in_io, out_io, pad);
  };
  using Three = std::integral_constant<int, 3>;
  using Five = std::integral_constant<int, 5>;
  using One = std::integral_constant<int, 1>;
  using Two = std::integral_constant<int, 2>;
  if (g.K == 3)
    g.stride == 1 ? run(Three{}, One{}) : run(Three{}, Two{});
  else
    g.stride == 1 ? run(Five{}, One{}) : run(Five{}, Two{});
}

// ------------------------------------------------------------------ op

// A (C, 1, k, k) weight whose memory is (k, k, C): the NHWC kernel's layout.
bool is_tap_major(const Tensor& w) {
  const int64_t C = w.size(0), K = w.size(2);
  return w.stride(0) == 1 && w.stride(3) == C && w.stride(2) == K * C;
}

}  // namespace

Tensor dw_conv_bn_act_cpu(const Tensor& x_in, const Tensor& weight, const std::optional<Tensor>& bias,
                          int64_t stride, int64_t padding, int64_t dilation, c10::string_view act_name) {
  return dw_conv_bn_act_cpu_impl(x_in, weight, bias, stride, padding, dilation, act_name, false, false);
}

Tensor dw_conv_bn_act_cpu_impl(const Tensor& x_in, const Tensor& weight, const std::optional<Tensor>& bias,
                               int64_t stride, int64_t padding, int64_t dilation, c10::string_view act_name,
                               bool relu_input, bool fp32_params) {
  check_rank4(kOp, x_in);
  TORCH_CHECK_VALUE(x_in.device().is_cpu(), kOp, ": expected x on the CPU, got ", x_in.device());
  check_floating(kOp, "x", x_in);
  check_param(kOp, x_in, "weight", weight, fp32_params);
  const int64_t C = x_in.size(1);
  TORCH_CHECK_VALUE(weight.dim() == 4 && weight.size(0) == C && weight.size(1) == 1 && weight.size(2) == weight.size(3),
              kOp, ": expected weight of shape (", C, ", 1, k, k) for an input with ", C, " channels, got ",
              shape_str(weight));
  const int64_t K = weight.size(2);
  TORCH_CHECK_VALUE(K == 3 || K == 5, kOp, ": expected a 3x3 or 5x5 kernel, got ", K, "x", K);
  TORCH_CHECK_VALUE(stride == 1 || stride == 2, kOp, ": expected stride 1 or 2, got ", stride);
  TORCH_CHECK_VALUE(dilation == 1 || dilation == 2, kOp, ": expected dilation 1 or 2, got ", dilation);
  TORCH_CHECK_VALUE(padding >= 0 && padding <= dilation * (K - 1), kOp, ": expected 0 <= padding <= ",
                    dilation * (K - 1), " (dilation * (k - 1)) for a ", K, "x", K, " kernel with dilation ", dilation,
                    ", got ", padding);
  if (bias.has_value()) {
    check_param(kOp, x_in, "bias", *bias, fp32_params);
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == C, kOp, ": expected bias of shape (", C, "), got ",
                shape_str(*bias));
  }
  const Act act = parse_act(kOp, act_name);

  Geometry g{x_in.size(0), C, x_in.size(2), x_in.size(3), K, stride, padding, dilation, 0, 0};
  g.Ho = conv_output_size(g.H, K, stride, padding, dilation);
  g.Wo = conv_output_size(g.W, K, stride, padding, dilation);
  TORCH_CHECK_VALUE(g.Ho > 0 && g.Wo > 0, kOp, ": input of spatial size ", g.H, "x", g.W, " is too small for a ", K, "x",
              K, " kernel with padding ", padding, " and dilation ", dilation);

  const bool channels_last = is_channels_last(x_in);
  const auto format = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  // NCHW planes narrower than a few vectors waste most lanes of the NCHW
  // kernel; there the NHWC kernel on a transposed copy is faster, even with
  // the two transposes.  The output keeps the input's (NCHW) layout.
  if (!channels_last && g.Wo <= kNarrowPlane && g.C >= 64) {
    const Tensor x_cl = x_in.contiguous(at::MemoryFormat::ChannelsLast);
    if (is_channels_last(x_cl))  // (not for degenerate shapes such as 1x1 planes, which stay NCHW)
      return dw_conv_bn_act_cpu_impl(x_cl, weight, bias, stride, padding, dilation, act_name, relu_input, fp32_params)
          .contiguous();
  }
  // Only the NHWC kernel of a ReLU layer applies an input ReLU on load (the case
  // of MobileNetV3's ReLU blocks; fewer kernel instances to compile).
  if (relu_input && (!channels_last || act != Act::ReLU || x_in.scalar_type() == at::kDouble))
    return dw_conv_bn_act_cpu_impl(at::relu(x_in), weight, bias, stride, padding, dilation, act_name, false,
                                   fp32_params);
  const Tensor x = x_in.contiguous(format);  // no copy when already in that layout
  Tensor out = at::empty({g.N, C, g.Ho, g.Wo}, x.options().memory_format(format));
  if (out.numel() == 0) return out;

  MNV3_DISPATCH_FLOATING(x.scalar_type(), kOp, [&] {
    // The weights in the accumulation type, laid out for the kernel: per channel
    // (C, K*K) for NCHW, tap-major (K*K, C) for NHWC.  Plain buffers, not
    // tensors: this runs on every call, and at batch 1 tensor ops would cost
    // as much as the convolution.
    using acc_t = at::opmath_type<scalar_t>;
    std::vector<acc_t> w_store, b_store(bias.has_value() ? 0 : C, acc_t(0));  // (zeros when there is no bias)
    const acc_t* wp;
    if (channels_last && weight.scalar_type() == c10::CppTypeToScalarType<acc_t>::value && is_tap_major(weight)) {
      wp = weight.const_data_ptr<acc_t>();  // the CPU program stores its weights this way: no reorder per call
    } else {
      wp = acc_data<acc_t>(weight, w_store);
      if (channels_last) {
        std::vector<acc_t> tap_major(C * K * K);
        for (int64_t t = 0; t < K * K; ++t)
          for (int64_t c = 0; c < C; ++c) tap_major[t * C + c] = wp[c * K * K + t];
        w_store = std::move(tap_major);
        wp = w_store.data();
      }
    }
    const acc_t* bp = bias.has_value() ? acc_data<acc_t>(*bias, b_store) : b_store.data();
    dispatch_act(act, [&](auto a) {
      constexpr Act A = decltype(a)::value;
      if (channels_last) {
        auto nhwc = [&](auto in_act) {
          constexpr Act InA = decltype(in_act)::value;
          run_dw_nhwc<A, InA>(x.const_data_ptr<scalar_t>(), wp, bp, out.mutable_data_ptr<scalar_t>(), g,
                              VecIO<scalar_t>(), VecIO<scalar_t>(), scalar_t(0));
        };
        if constexpr (A == Act::ReLU && !std::is_same_v<scalar_t, double>) {
          if (relu_input) return nhwc(std::integral_constant<Act, Act::ReLU>{});
        }
        nhwc(std::integral_constant<Act, Act::None>{});
      } else {
        if (K == 3 && stride == 1) dw_nchw<3, 1, A, scalar_t>(x, wp, bp, out, g);
        else if (K == 3) dw_nchw<3, 2, A, scalar_t>(x, wp, bp, out, g);
        else if (stride == 1) dw_nchw<5, 1, A, scalar_t>(x, wp, bp, out, g);
        else dw_nchw<5, 2, A, scalar_t>(x, wp, bp, out, g);
      }
    });
  });
  return out;
}

Tensor qdw_conv_cpu(const Tensor& x_in, const Tensor& weight, const std::optional<Tensor>& bias, int64_t stride,
                    int64_t padding, int64_t dilation, int64_t act, double in_scale, int64_t in_zp, double out_scale,
                    int64_t out_zp) {
  constexpr const char* op = "mnv3::run_cpu_program (QDW)";
  check_rank4(op, x_in);
  TORCH_CHECK_TYPE(x_in.scalar_type() == at::kByte, op, ": expected a uint8 input, got ", x_in.scalar_type());
  TORCH_CHECK_TYPE(weight.scalar_type() == at::kFloat && (!bias || bias->scalar_type() == at::kFloat), op,
                   ": expected float32 weight and bias");
  const int64_t C = x_in.size(1), K = weight.size(-1);
  TORCH_CHECK_VALUE(weight.dim() == 4 && weight.size(0) == C && weight.size(1) == 1 && weight.size(2) == K &&
                        (K == 3 || K == 5) && (stride == 1 || stride == 2) && (dilation == 1 || dilation == 2) &&
                        padding >= 0 && padding <= dilation * (K - 1) && (!bias || bias->numel() == C),
                    op, ": bad depthwise geometry: weight ", shape_str(weight), " for ", C, " channels, stride ",
                    stride, ", padding ", padding, ", dilation ", dilation);
  TORCH_CHECK_VALUE(in_scale > 0 && in_zp >= 0 && in_zp <= 255 && out_scale >= 0 && out_zp >= 0 && out_zp <= 255, op,
                    ": bad quantization parameters (input scale ", in_scale, ", zero point ", in_zp,
                    "; output scale ", out_scale, ", zero point ", out_zp, ")");
  Geometry g{x_in.size(0), C, x_in.size(2), x_in.size(3), K, stride, padding, dilation, 0, 0};
  g.Ho = conv_output_size(g.H, K, stride, padding, dilation);
  g.Wo = conv_output_size(g.W, K, stride, padding, dilation);
  TORCH_CHECK_VALUE(g.Ho > 0 && g.Wo > 0, op, ": input of spatial size ", g.H, "x", g.W, " is too small");
  const Tensor x = x_in.contiguous(at::MemoryFormat::ChannelsLast);
  const bool quantized_out = out_scale > 0;  // else a float32 output (for an SE that follows)
  Tensor out = at::empty({g.N, C, g.Ho, g.Wo}, x.options().dtype(quantized_out ? at::kByte : at::kFloat)
                                                   .memory_format(at::MemoryFormat::ChannelsLast));
  if (out.numel() == 0) return out;
  // x = in_scale * (q - in_zp): the scale goes into the weights, the zero point into the bias (the
  // padding reads as in_zp, i.e. 0), so the kernel works on the raw codes.
  std::vector<float> w_store, b_store;
  const float* wp = acc_data<float>(weight, w_store);
  std::vector<float> tap_major(C * K * K), shift(C);
  for (int64_t c = 0; c < C; ++c) {
    double sum = 0;
    for (int64_t t = 0; t < K * K; ++t) {
      tap_major[t * C + c] = static_cast<float>(wp[c * K * K + t] * in_scale);
      sum += wp[c * K * K + t];
    }
    shift[c] = static_cast<float>((bias ? bias->const_data_ptr<float>()[c] : 0.f) - in_scale * in_zp * sum);
  }
  const U8IO in_io{1.f, 0.f};
  dispatch_act(static_cast<Act>(act), [&](auto a) {
    constexpr Act A = decltype(a)::value;
    if (quantized_out) {
      run_dw_nhwc<A, Act::None>(x.const_data_ptr<uint8_t>(), tap_major.data(), shift.data(),
                                out.mutable_data_ptr<uint8_t>(), g, in_io,
                                U8IO{static_cast<float>(1.0 / out_scale), static_cast<float>(out_zp)},
                                static_cast<uint8_t>(in_zp));
    } else {
      run_dw_nhwc<A, Act::None>(x.const_data_ptr<uint8_t>(), tap_major.data(), shift.data(),
                                out.mutable_data_ptr<float>(), g, in_io, VecIO<float>(), static_cast<uint8_t>(in_zp));
    }
  });
  return out;
}

TORCH_LIBRARY_IMPL(mnv3, CPU, m) { m.impl("dw_conv_bn_act", &dw_conv_bn_act_cpu); }

}  // namespace mnv3
