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

#include <vector>

namespace mnv3 {
namespace {

constexpr const char* kOp = "mnv3::dw_conv_bn_act";

struct Geometry {
  int64_t N, C, H, W, K, stride, pad, dil, Ho, Wo;
};

// ------------------------------------------------------------------ NCHW

template <int K, int S, Act A, typename scalar_t>
void dw_nchw(const Tensor& x, const Tensor& w_acc, const Tensor& b_acc, Tensor& out, const Geometry& g) {
  using IO = VecIO<scalar_t>;
  using acc_t = typename IO::acc_t;
  using Vec = typename IO::Vec;
  constexpr int64_t V = IO::kSize;
  const int64_t d = g.dil, pad = g.pad;
  const int64_t Wo_round = (g.Wo + V - 1) / V * V;
  const int64_t Hp = (g.Ho - 1) * S + (K - 1) * d + 1;  // rows any output reads
  const int64_t Wq = Wo_round + ((K - 1) * d) / S + 1;  // columns per phase, rounded for full vectors
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  const acc_t* wp = w_acc.const_data_ptr<acc_t>();
  const acc_t* bp = b_acc.const_data_ptr<acc_t>();
  scalar_t* op = out.mutable_data_ptr<scalar_t>();
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, g.Ho * g.Wo * K * K));

  at::parallel_for(0, g.N * g.C, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> scratch(S * Hp * Wq);
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t c = plane % g.C;
      const scalar_t* src = xp + plane * g.H * g.W;
      // Fill the padded, phase-split copy: phase q holds padded columns q, q+S, ...
      for (int64_t q = 0; q < S; ++q) {
        for (int64_t r = 0; r < Hp; ++r) {
          acc_t* row = scratch.data() + (q * Hp + r) * Wq;
          const int64_t ih = r - pad;
          if (ih < 0 || ih >= g.H) {
            std::fill(row, row + Wq, acc_t(0));
            continue;
          }
          const scalar_t* srow = src + ih * g.W;
          for (int64_t j = 0; j < Wq; ++j) {
            const int64_t iw = j * S + q - pad;
            row[j] = (iw >= 0 && iw < g.W) ? static_cast<acc_t>(srow[iw]) : acc_t(0);
          }
        }
      }
      Vec wv[K * K];
      for (int t = 0; t < K * K; ++t) wv[t] = Vec(wp[c * K * K + t]);
      const Vec bias(bp[c]);
      scalar_t* dst = op + plane * g.Ho * g.Wo;
      for (int64_t oh = 0; oh < g.Ho; ++oh) {
        for (int64_t ow = 0; ow < g.Wo; ow += V) {
          Vec acc = bias;
          for (int kh = 0; kh < K; ++kh) {
            const int64_t r = oh * S + kh * d;
            for (int kw = 0; kw < K; ++kw) {
              const int64_t col = kw * d;
              const acc_t* in = scratch.data() + ((col % S) * Hp + r) * Wq + col / S + ow;
              acc = at::vec::fmadd(Vec::loadu(in), wv[kh * K + kw], acc);
            }
          }
          acc = apply_act<A>(acc);
          const int64_t n = std::min<int64_t>(V, g.Wo - ow);
          if (n == V)
            IO::store(dst + oh * g.Wo + ow, acc);
          else
            IO::store(dst + oh * g.Wo + ow, acc, n);
        }
      }
    }
  });
}

// ------------------------------------------------------------------ NHWC

template <int K, Act A, typename scalar_t>
void dw_nhwc(const Tensor& x, const Tensor& w_taps, const Tensor& b_acc, Tensor& out, const Geometry& g) {
  using IO = VecIO<scalar_t>;
  using acc_t = typename IO::acc_t;
  using Vec = typename IO::Vec;
  constexpr int64_t V = IO::kSize;
  const int64_t C = g.C;
  const scalar_t* xp = x.const_data_ptr<scalar_t>();  // (N, H, W, C) in memory
  const acc_t* wp = w_taps.const_data_ptr<acc_t>();    // (K*K, C)
  const acc_t* bp = b_acc.const_data_ptr<acc_t>();
  scalar_t* op = out.mutable_data_ptr<scalar_t>();
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, g.Wo * C * K * K));

  at::parallel_for(0, g.N * g.Ho, grain, [&](int64_t begin, int64_t end) {
    int64_t in_off[K * K], w_off[K * K];
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / g.Ho, oh = row % g.Ho;
      for (int64_t ow = 0; ow < g.Wo; ++ow) {
        // The taps that land inside the image; padding contributes zero.
        int taps = 0;
        for (int kh = 0; kh < K; ++kh) {
          const int64_t ih = oh * g.stride - g.pad + kh * g.dil;
          if (ih < 0 || ih >= g.H) continue;
          for (int kw = 0; kw < K; ++kw) {
            const int64_t iw = ow * g.stride - g.pad + kw * g.dil;
            if (iw < 0 || iw >= g.W) continue;
            in_off[taps] = ((n * g.H + ih) * g.W + iw) * C;
            w_off[taps] = (kh * K + kw) * C;
            ++taps;
          }
        }
        scalar_t* dst = op + (row * g.Wo + ow) * C;
        int64_t c = 0;
        for (; c + 2 * V <= C; c += 2 * V) {  // two independent accumulators
          Vec a0 = Vec::loadu(bp + c), a1 = Vec::loadu(bp + c + V);
          for (int t = 0; t < taps; ++t) {
            a0 = at::vec::fmadd(IO::load(xp + in_off[t] + c), Vec::loadu(wp + w_off[t] + c), a0);
            a1 = at::vec::fmadd(IO::load(xp + in_off[t] + c + V), Vec::loadu(wp + w_off[t] + c + V), a1);
          }
          IO::store(dst + c, apply_act<A>(a0));
          IO::store(dst + c + V, apply_act<A>(a1));
        }
        for (; c < C; c += V) {
          const int64_t m = std::min<int64_t>(V, C - c);
          Vec a = Vec::loadu(bp + c, m);
          for (int t = 0; t < taps; ++t)
            a = at::vec::fmadd(IO::load(xp + in_off[t] + c, m), Vec::loadu(wp + w_off[t] + c, m), a);
          IO::store(dst + c, apply_act<A>(a), m);
        }
      }
    }
  });
}

// ------------------------------------------------------------------ op

Tensor dw_conv_bn_act_cpu(const Tensor& x_in, const Tensor& weight, const std::optional<Tensor>& bias,
                          int64_t stride, int64_t padding, int64_t dilation, c10::string_view act_name) {
  check_rank4(kOp, x_in);
  TORCH_CHECK_VALUE(x_in.device().is_cpu(), kOp, ": expected x on the CPU, got ", x_in.device());
  check_floating(kOp, "x", x_in);
  check_same(kOp, x_in, "weight", weight);
  const int64_t C = x_in.size(1);
  TORCH_CHECK_VALUE(weight.dim() == 4 && weight.size(0) == C && weight.size(1) == 1 && weight.size(2) == weight.size(3),
              kOp, ": expected weight of shape (", C, ", 1, k, k) for an input with ", C, " channels, got ",
              shape_str(weight));
  const int64_t K = weight.size(2);
  TORCH_CHECK_VALUE(K == 3 || K == 5, kOp, ": expected a 3x3 or 5x5 kernel, got ", K, "x", K);
  TORCH_CHECK_VALUE(stride == 1 || stride == 2, kOp, ": expected stride 1 or 2, got ", stride);
  TORCH_CHECK_VALUE(dilation == 1 || dilation == 2, kOp, ": expected dilation 1 or 2, got ", dilation);
  TORCH_CHECK_VALUE(padding >= 0, kOp, ": expected padding >= 0, got ", padding);
  if (bias.has_value()) {
    check_same(kOp, x_in, "bias", *bias);
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == C, kOp, ": expected bias of shape (", C, "), got ",
                shape_str(*bias));
  }
  const Act act = parse_act(kOp, act_name);

  Geometry g{x_in.size(0), C, x_in.size(2), x_in.size(3), K, stride, padding, dilation, 0, 0};
  g.Ho = (g.H + 2 * padding - dilation * (K - 1) - 1) / stride + 1;
  g.Wo = (g.W + 2 * padding - dilation * (K - 1) - 1) / stride + 1;
  TORCH_CHECK_VALUE(g.Ho > 0 && g.Wo > 0, kOp, ": input of spatial size ", g.H, "x", g.W, " is too small for a ", K, "x",
              K, " kernel with padding ", padding, " and dilation ", dilation);

  const bool channels_last = is_channels_last(x_in);
  const auto format = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const Tensor x = x_in.contiguous(format);  // no copy when already in that layout
  Tensor out = at::empty({g.N, C, g.Ho, g.Wo}, x.options().memory_format(format));
  if (out.numel() == 0) return out;

  const auto acc_type = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const Tensor w = weight.to(acc_type).reshape({C, K * K});
  const Tensor b = bias.has_value() ? bias->to(acc_type).contiguous() : at::zeros({C}, x.options().dtype(acc_type));

  MNV3_DISPATCH_FLOATING(x.scalar_type(), kOp, [&] {
    dispatch_act(act, [&](auto a) {
      constexpr Act A = decltype(a)::value;
      if (channels_last) {
        const Tensor taps = w.t().contiguous();  // (K*K, C)
        if (K == 3) dw_nhwc<3, A, scalar_t>(x, taps, b, out, g);
        else dw_nhwc<5, A, scalar_t>(x, taps, b, out, g);
      } else {
        const Tensor wc = w.contiguous();
        if (K == 3 && stride == 1) dw_nchw<3, 1, A, scalar_t>(x, wc, b, out, g);
        else if (K == 3) dw_nchw<3, 2, A, scalar_t>(x, wc, b, out, g);
        else if (stride == 1) dw_nchw<5, 1, A, scalar_t>(x, wc, b, out, g);
        else dw_nchw<5, 2, A, scalar_t>(x, wc, b, out, g);
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(mnv3, CPU, m) { m.impl("dw_conv_bn_act", &dw_conv_bn_act_cpu); }

}  // namespace mnv3
