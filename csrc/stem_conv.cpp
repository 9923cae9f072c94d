// The network's first conv (3 input channels, 3x3, stride 2) computed
// directly, for run_cpu_program's STEM instruction.
//
// Why not oneDNN: with 3 input channels its convolution reaches ~30 GFMA/s on
// two cores here, a tenth of what the same FMAs give when every output pixel
// is one vector of output channels (measured: the stem was ~9% of a
// MobileNetV3-Small forward).  Reading the input through its strides also
// saves the NCHW -> channels_last copy of the image.
#include "common.h"
#include "ops.h"

namespace mnv3 {
namespace {

constexpr const char* kOp = "mnv3::run_cpu_program (STEM)";
constexpr int kPixels = 8;  // output pixels per step: independent FMA chains

struct StemGeometry {
  int64_t N, Ci, H, W, Co, CoPadded, K, stride, padding, Ho, Wo;
  int64_t sN, sC, sH, sW;  // input strides, in elements
};

enum class Layout { Strided, Nchw, Nhwc };  // NCHW/NHWC: contiguous, so the pixel stride is a constant

// Weights repacked to [ky][kx][ci][co], co padded to whole vectors with zeros.
// K_, S_, CI_: the kernel size, stride and input channels when known at
// compile time (0: read from g), so that the MobileNetV3 stem (3, 2, 3) gets
// constant offsets and fully unrolled taps.
// x: fp32 (a bf16 image is converted first).  Out: how the output is stored (x's dtype, or U8IO for the
// int8 program).
template <Act A, int K_, int S_, int CI_, Layout L, typename Out>
void stem_kernel(const float* x, const float* w, const float* b, typename Out::scalar_t* out,
                 const StemGeometry& g, const Out& out_io) {
  using Vec = at::vec::Vectorized<float>;
  constexpr int64_t V = Vec::size();
  const int64_t K = K_ ? K_ : g.K, S = S_ ? S_ : g.stride, Ci = CI_ ? CI_ : g.Ci;
  const int64_t sW = L == Layout::Nchw ? 1 : L == Layout::Nhwc ? Ci : g.sW;
  const int64_t sC = L == Layout::Nhwc ? 1 : g.sC;
  at::parallel_for(0, g.N * g.Ho, 4, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / g.Ho, oy = row % g.Ho;
      const float* xn = x + n * g.sN;
      typename Out::scalar_t* out_row = out + row * g.Wo * g.Co;
      for (int64_t ox0 = 0; ox0 < g.Wo; ox0 += kPixels) {
        const int64_t np = std::min<int64_t>(kPixels, g.Wo - ox0);
        const int64_t ix0 = ox0 * S - g.padding;
        const bool interior = np == kPixels && ix0 >= 0 && ix0 + (kPixels - 1) * S + K - 1 < g.W;
        for (int64_t c0 = 0; c0 < g.Co; c0 += V) {
          Vec acc[kPixels];
          const Vec bias = Vec::loadu(b + c0);
          MNV3_UNROLL(8)
          for (int j = 0; j < kPixels; ++j) acc[j] = bias;
          for (int64_t ky = 0; ky < K; ++ky) {
            const int64_t iy = oy * S - g.padding + ky;
            if (iy < 0 || iy >= g.H) continue;
            const float* wk = w + ky * K * Ci * g.CoPadded + c0;
            const float* xr = xn + iy * g.sH;
            if (interior) {
              MNV3_UNROLL(5)
              for (int64_t kx = 0; kx < K; ++kx) {
                MNV3_UNROLL(4)
                for (int64_t ci = 0; ci < Ci; ++ci) {
                  const Vec wv = Vec::loadu(wk + (kx * Ci + ci) * g.CoPadded);
                  const float* xp = xr + ci * sC + (ix0 + kx) * sW;
                  MNV3_UNROLL(8)
                  for (int j = 0; j < kPixels; ++j)
                    acc[j] = at::vec::fmadd(Vec(xp[j * S * sW]), wv, acc[j]);
                }
              }
            } else {
              for (int64_t kx = 0; kx < K; ++kx)
                for (int64_t ci = 0; ci < Ci; ++ci) {
                  const Vec wv = Vec::loadu(wk + (kx * Ci + ci) * g.CoPadded);
                  for (int j = 0; j < np; ++j) {
                    const int64_t ix = ix0 + j * S + kx;
                    if (ix >= 0 && ix < g.W)
                      acc[j] = at::vec::fmadd(Vec(xr[ci * sC + ix * sW]), wv, acc[j]);
                  }
                }
            }
          }
          const int64_t lanes = std::min<int64_t>(V, g.Co - c0);
          for (int j = 0; j < np; ++j) {
            typename Out::scalar_t* o = out_row + (ox0 + j) * g.Co + c0;
            lanes == V ? out_io.store(o, apply_act<A>(acc[j])) : out_io.store(o, apply_act<A>(acc[j]), lanes);
          }
        }
      }
    }
  });
}

}  // namespace

Tensor stem_conv_cpu(const Tensor& x, const Tensor& weight, const std::optional<Tensor>& bias, int64_t stride,
                     int64_t padding, int64_t act, double out_scale, int64_t out_zp) {
  check_rank4(kOp, x);
  // The output takes the weight's dtype: a float32 image may enter a bfloat16 program (autocast), read as
  // it is, which saves converting it twice (to bfloat16 before the program, back to float32 here).
  const bool float_image = x.scalar_type() == at::kFloat && weight.scalar_type() == at::kBFloat16;
  check_device(kOp, x, "weight", weight);
  TORCH_CHECK_TYPE(float_image || weight.scalar_type() == x.scalar_type(), kOp,
                   ": expected weight to have the same dtype as x (", x.scalar_type(),
                   ", or bfloat16 for a float32 x), got ", weight.scalar_type());
  const int64_t Ci = x.size(1);
  TORCH_CHECK_VALUE(weight.dim() == 4 && weight.size(1) == Ci && weight.size(2) == weight.size(3), kOp,
                    ": expected weight of shape (C_out, ", Ci, ", k, k) for an input with ", Ci, " channels, got ",
                    shape_str(weight));
  const int64_t K = weight.size(2);
  TORCH_CHECK_VALUE(stride >= 1 && padding >= 0 && padding < K, kOp,
                    ": expected stride >= 1 and 0 <= padding < k, got stride ", stride, " and padding ", padding);
  // A bf16 image is read as fp32: the kernel broadcasts every input value, which from bf16 takes four
  // instructions instead of one, and made the bf16 stem twice as slow as the fp32 one (Xeon, Large b1:
  // 240 vs 121 us); the conversion costs a tenth of that.
  const Tensor xf = x.scalar_type() == at::kBFloat16 ? x.to(at::kFloat) : x;  // (keeps the memory format)
  StemGeometry g{x.size(0), Ci, x.size(2), x.size(3), weight.size(0), 0, K, stride, padding, 0, 0,
                 xf.stride(0), xf.stride(1), xf.stride(2), xf.stride(3)};
  g.Ho = conv_output_size(g.H, K, stride, padding);
  g.Wo = conv_output_size(g.W, K, stride, padding);
  TORCH_CHECK_VALUE(g.Ho > 0 && g.Wo > 0, kOp, ": input of spatial size ", g.H, "x", g.W, " is too small for a ", K,
                    "x", K, " kernel with padding ", padding);
  if (bias.has_value()) {
    check_device(kOp, x, "bias", *bias);
    TORCH_CHECK_TYPE(bias->scalar_type() == weight.scalar_type(), kOp, ": expected bias to have the weight's dtype (",
                     weight.scalar_type(), "), got ", bias->scalar_type());
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == g.Co, kOp, ": expected bias of shape (", g.Co, "), got ",
                      shape_str(*bias));
  }
  TORCH_CHECK_VALUE(out_scale >= 0 && out_zp >= 0 && out_zp <= 255, kOp, ": bad output quantization (scale ",
                    out_scale, ", zero point ", out_zp, ")");
  const bool quantized_out = out_scale > 0;  // the int8 program's QSTEM: a uint8 output
  Tensor out = at::empty({g.N, g.Co, g.Ho, g.Wo}, x.options()
                                                     .dtype(quantized_out ? at::kByte : weight.scalar_type())
                                                     .memory_format(at::MemoryFormat::ChannelsLast));
  if (out.numel() == 0) return out;

  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16, kOp,
                   ": expected float32 or bfloat16, got ", x.scalar_type());
  auto run = [&](auto type_tag) {
    using scalar_t = decltype(type_tag);  // the output's (unless quantized)
    constexpr int64_t V = VecIO<scalar_t>::kSize;
    g.CoPadded = (g.Co + V - 1) / V * V;
    const Tensor wf = weight.to(at::kFloat).contiguous();
    const float* ws = wf.const_data_ptr<float>();
    std::vector<float> w(g.K * g.K * Ci * g.CoPadded, 0.f), b(g.CoPadded, 0.f);
    for (int64_t co = 0; co < g.Co; ++co)
      for (int64_t ci = 0; ci < Ci; ++ci)
        for (int64_t t = 0; t < g.K * g.K; ++t) w[(t * Ci + ci) * g.CoPadded + co] = ws[(co * Ci + ci) * g.K * g.K + t];
    if (bias.has_value()) {
      const Tensor bf = bias->to(at::kFloat).contiguous();
      std::copy(bf.const_data_ptr<float>(), bf.const_data_ptr<float>() + g.Co, b.begin());
    }
    const float* xp = xf.const_data_ptr<float>();
    const bool mobilenet_stem = g.K == 3 && stride == 2 && Ci == 3;
    auto with_output = [&](auto* op, const auto& out_io) {
      dispatch_act(static_cast<Act>(act), [&](auto a) {
        constexpr Act kAct = decltype(a)::value;
        if (mobilenet_stem && xf.is_contiguous())
          stem_kernel<kAct, 3, 2, 3, Layout::Nchw>(xp, w.data(), b.data(), op, g, out_io);
        else if (mobilenet_stem && xf.is_contiguous(at::MemoryFormat::ChannelsLast))
          stem_kernel<kAct, 3, 2, 3, Layout::Nhwc>(xp, w.data(), b.data(), op, g, out_io);
        else
          stem_kernel<kAct, 0, 0, 0, Layout::Strided>(xp, w.data(), b.data(), op, g, out_io);
      });
    };
    if (quantized_out)
      with_output(out.mutable_data_ptr<uint8_t>(),
                  U8IO{static_cast<float>(1.0 / out_scale), static_cast<float>(out_zp)});
    else
      with_output(out.mutable_data_ptr<scalar_t>(), VecIO<scalar_t>());
  };
  if (weight.scalar_type() == at::kFloat) run(float());
  else run(at::BFloat16());
  return out;
}

}  // namespace mnv3
