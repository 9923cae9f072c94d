// mnv3::squeeze_excite: y = x * hsigmoid(W2 relu(W1 mean_hw(x) + b1) + b2).
// One op, two passes over x: a vectorized pool, the two small matrix products over the batch's
// pooled vectors (in fp32, or fp64 for fp64 inputs), then the gated scale.
#include "common.h"
#include "ops.h"

#include <vector>

namespace mnv3 {
namespace {

constexpr const char* kOp = "mnv3::squeeze_excite";

// a (weights: T, or bf16 read as fp32) . b (T).
template <typename T, typename W = T>
T dot(const W* a, const T* b, int64_t n) {
  using IO = VecIO<W>;
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t V = Vec::size();
  Vec acc0(T(0)), acc1(T(0));
  int64_t i = 0;
  for (; i + 2 * V <= n; i += 2 * V) {
    acc0 = at::vec::fmadd(IO::load(a + i), Vec::loadu(b + i), acc0);
    acc1 = at::vec::fmadd(IO::load(a + i + V), Vec::loadu(b + i + V), acc1);
  }
  for (; i + V <= n; i += V) acc0 = at::vec::fmadd(IO::load(a + i), Vec::loadu(b + i), acc0);
  if (i < n) acc1 = at::vec::fmadd(IO::load(a + i, n - i), Vec::loadu(b + i, n - i), acc1);  // zero-filled tail
  return hsum(acc0 + acc1);
}

// a (weights) . b_j for the NB vectors b_j = b + j * ldb: each weight vector is loaded (and converted from
// bf16) once for all NB samples.
template <int NB, typename T, typename W>
void dots(const W* a, const T* b, int64_t ldb, int64_t n, T* out) {
  if constexpr (NB == 1) {
    out[0] = dot<T>(a, b, n);  // (two accumulators: one chain would wait on the FMA latency)
  } else {
    using IO = VecIO<W>;
    using Vec = at::vec::Vectorized<T>;
    constexpr int64_t V = Vec::size();
    Vec acc[NB];
    for (int j = 0; j < NB; ++j) acc[j] = Vec(T(0));
    int64_t i = 0;
    for (; i + V <= n; i += V) {
      const Vec av = IO::load(a + i);
      for (int j = 0; j < NB; ++j) acc[j] = at::vec::fmadd(av, Vec::loadu(b + j * ldb + i), acc[j]);
    }
    if (i < n) {  // zero-filled tail
      const Vec av = IO::load(a + i, n - i);
      for (int j = 0; j < NB; ++j) acc[j] = at::vec::fmadd(av, Vec::loadu(b + j * ldb + i, n - i), acc[j]);
    }
    for (int j = 0; j < NB; ++j) out[j] = hsum(acc[j]);
  }
}

// out[j * ldo] = a . b_j for samples j < nb, in blocks of up to 4 samples.
template <typename T, typename W>
void dots(const W* a, const T* b, int64_t ldb, int64_t nb, int64_t n, T* out, int64_t ldo) {
  for (int64_t j0 = 0; j0 < nb; j0 += 4) {
    T d[4];
    switch (std::min<int64_t>(4, nb - j0)) {
      case 4: dots<4>(a, b + j0 * ldb, ldb, n, d); break;
      case 3: dots<3>(a, b + j0 * ldb, ldb, n, d); break;
      case 2: dots<2>(a, b + j0 * ldb, ldb, n, d); break;
      default: dots<1>(a, b + j0 * ldb, ldb, n, d); break;
    }
    for (int64_t j = j0; j < std::min<int64_t>(nb, j0 + 4); ++j) out[j * ldo] = d[j - j0];
  }
}

// A (rows, cols) matrix, or its (rows, cols, 1, 1) 1x1-conv form (the same values in the same order).
void check_matrix(const Tensor& w, const char* name, int64_t rows, int64_t cols) {
  const bool ok = (w.dim() == 2 || (w.dim() == 4 && w.size(2) == 1 && w.size(3) == 1)) && w.size(0) == rows &&
                  w.size(1) == cols;
  TORCH_CHECK_VALUE(ok, kOp, ": expected ", name, " of shape (", rows, ", ", cols, ") or (", rows, ", ", cols,
              ", 1, 1), got ", shape_str(w));
}

// Per-(sample, channel) means of x's planes, in acc_t, into `means` (N * C).
// In: how x is loaded (VecIO<x's dtype>, or U8IO: the means of the raw codes).
template <typename In>
void channel_means(const Tensor& x, bool channels_last, typename In::acc_t* means, const In& in_io = In()) {
  using scalar_t = typename In::scalar_t;
  using acc_t = typename In::acc_t;
  using Vec = typename In::Vec;
  constexpr int64_t V = In::kSize;
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  if (!channels_last) {
    at::parallel_for(0, N * C, std::max<int64_t>(1, 32768 / HW), [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        const scalar_t* src = xp + p * HW;
        Vec acc(acc_t(0));
        int64_t i = 0;
        for (; i + V <= HW; i += V) acc = acc + in_io.load(src + i);
        acc_t sum = hsum(acc);
        for (; i < HW; ++i) sum += static_cast<acc_t>(src[i]);
        means[p] = sum / static_cast<acc_t>(HW);
      }
    });
    return;
  }
  // Rows of C channels per pixel; tasks are (sample, channel block) pairs, each
  // summing its block of kVecs vectors over every pixel, in registers.
  constexpr int64_t kVecs = 4, kBlock = kVecs * V;
  const int64_t blocks = (C + kBlock - 1) / kBlock;
  at::parallel_for(0, N * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / blocks, c0 = (task % blocks) * kBlock, cn = std::min(kBlock, C - c0);
      Vec acc[kVecs];
      MNV3_UNROLL(4)
      for (int64_t j = 0; j < kVecs; ++j) acc[j] = Vec(acc_t(0));
      const scalar_t* src = xp + n * HW * C + c0;
      if (cn == kBlock) {
        for (int64_t pix = 0; pix < HW; ++pix, src += C) {
          MNV3_UNROLL(4)
          for (int64_t j = 0; j < kVecs; ++j) acc[j] = acc[j] + in_io.load(src + j * V);
        }
      } else {
        for (int64_t pix = 0; pix < HW; ++pix, src += C) {
          for (int64_t j = 0; j * V < cn; ++j) acc[j] = acc[j] + in_io.load(src + j * V, std::min(V, cn - j * V));
        }
      }
      const Vec scale(acc_t(1) / static_cast<acc_t>(HW));
      for (int64_t j = 0; j * V < cn; ++j) {
        (acc[j] * scale).store(means + n * C + c0 + j * V, std::min(V, cn - j * V));
      }
    }
  });
}

// Whether the SE's matrices can be read as they are in bf16 (the CPU programs store them so: at batch 1
// the SE mostly reads them, and bf16 halves that).
bool bf16_matrices(const Tensor& w1, const Tensor& w2) {
  return w1.scalar_type() == at::kBFloat16 && w2.scalar_type() == at::kBFloat16 && w1.is_contiguous() &&
         w2.is_contiguous();
}

// Out: how the output is stored (x's own dtype, or U8IO for the int8 program).  W: the matrices' dtype
// (the accumulation type, or bf16 for a bf16 x: at batch 1 the SE is reading its matrices, and bf16
// halves that).
template <typename scalar_t, typename Out = VecIO<scalar_t>, typename W = at::opmath_type<scalar_t>>
void se_kernel(const Tensor& x, const W* w1p, const at::opmath_type<scalar_t>* b1p, const W* w2p,
               const at::opmath_type<scalar_t>* b2p, int64_t S, Tensor& out, bool channels_last,
               const Out& out_io = Out()) {  // w1 (S, C), w2 (C, S)
  using IO = VecIO<scalar_t>;
  using acc_t = typename IO::acc_t;
  using Vec = typename IO::Vec;
  constexpr int64_t V = IO::kSize;
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  typename Out::scalar_t* op = out.mutable_data_ptr<typename Out::scalar_t>();
  std::vector<acc_t> gate(N * C);  // first the pooled means, then the gates

  // 1. Pool.
  channel_means<VecIO<scalar_t>>(x, channels_last, gate.data());

  // 2. The excitation: two small matrix products, W1 (S, C) and W2 (C, S) times the N samples.  Threads
  // take ranges of rows, and each row meets all samples while it is loaded: W1 and W2 are read once,
  // however large the batch (per sample, in batch-sized tasks, they were read N times and were most of
  // the SE's time at batch 8).
  std::vector<acc_t> hidden(N * S);
  auto grain = [N](int64_t row) { return std::max<int64_t>(1, 4096 / std::max<int64_t>(1, row * N)); };  // ~4K MACs
  at::parallel_for(0, S, grain(C), [&](int64_t s0, int64_t s1) {
    for (int64_t s = s0; s < s1; ++s) {
      dots(w1p + s * C, gate.data(), C, N, C, hidden.data() + s, S);
      for (int64_t n = 0; n < N; ++n) hidden[n * S + s] = std::max(hidden[n * S + s] + b1p[s], acc_t(0));
    }
  });
  at::parallel_for(0, C, grain(S), [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      dots(w2p + c * S, hidden.data(), S, N, S, gate.data() + c, C);
      for (int64_t n = 0; n < N; ++n) gate[n * C + c] = hsigmoid_scalar(gate[n * C + c] + b2p[c]);
    }
  });

  // 3. Scale.
  if (!channels_last) {
    at::parallel_for(0, N * C, std::max<int64_t>(1, 32768 / HW), [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        const scalar_t* src = xp + p * HW;
        typename Out::scalar_t* dst = op + p * HW;
        const Vec gv(gate[p]);
        int64_t i = 0;
        for (; i + V <= HW; i += V) out_io.store(dst + i, IO::load(src + i) * gv);
        if (i < HW) out_io.store(dst + i, IO::load(src + i, HW - i) * gv, HW - i);
      }
    });
  } else {
    at::parallel_for(0, N * HW, std::max<int64_t>(1, 32768 / C), [&](int64_t begin, int64_t end) {
      for (int64_t pix = begin; pix < end; ++pix) {
        const acc_t* g = gate.data() + (pix / HW) * C;
        const scalar_t* src = xp + pix * C;
        typename Out::scalar_t* dst = op + pix * C;
        int64_t c = 0;
        for (; c + V <= C; c += V) out_io.store(dst + c, IO::load(src + c) * Vec::loadu(g + c));
        if (c < C) out_io.store(dst + c, IO::load(src + c, C - c) * Vec::loadu(g + c, C - c), C - c);
      }
    });
  }
}

}  // namespace

Tensor squeeze_excite_cpu(const Tensor& x_in, const Tensor& w1_in, const Tensor& b1, const Tensor& w2_in,
                          const Tensor& b2) {
  return squeeze_excite_cpu_impl(x_in, w1_in, b1, w2_in, b2, false);
}

Tensor squeeze_excite_cpu_impl(const Tensor& x_in, const Tensor& w1_in, const Tensor& b1, const Tensor& w2_in,
                               const Tensor& b2, bool fp32_params) {
  check_rank4(kOp, x_in);
  TORCH_CHECK_VALUE(x_in.device().is_cpu(), kOp, ": expected x on the CPU, got ", x_in.device());
  check_floating(kOp, "x", x_in);
  check_param(kOp, x_in, "w1", w1_in, fp32_params);
  check_param(kOp, x_in, "b1", b1, fp32_params);
  check_param(kOp, x_in, "w2", w2_in, fp32_params);
  check_param(kOp, x_in, "b2", b2, fp32_params);
  const int64_t C = x_in.size(1);
  TORCH_CHECK_VALUE(w1_in.dim() >= 1, kOp, ": expected w1 of shape (S, ", C, "), got ", shape_str(w1_in));
  const int64_t S = w1_in.size(0);
  check_matrix(w1_in, "w1", S, C);
  check_matrix(w2_in, "w2", C, S);
  TORCH_CHECK_VALUE(b1.dim() == 1 && b1.size(0) == S, kOp, ": expected b1 of shape (", S, "), got ", shape_str(b1));
  TORCH_CHECK_VALUE(b2.dim() == 1 && b2.size(0) == C, kOp, ": expected b2 of shape (", C, "), got ", shape_str(b2));

  const bool channels_last = is_channels_last(x_in);
  const auto format = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const Tensor x = x_in.contiguous(format);
  Tensor out = at::empty(x.sizes(), x.options().memory_format(format));
  if (out.numel() == 0) return out;

  MNV3_DISPATCH_FLOATING(x.scalar_type(), kOp, [&] {
    using acc_t = at::opmath_type<scalar_t>;
    std::vector<acc_t> w1s, b1s, w2s, b2s;  // used only for inputs that need converting
    // The CPU program's bf16 SE: bf16 matrices (read as they are), fp32 biases.
    if constexpr (std::is_same_v<scalar_t, at::BFloat16>) {
      if (fp32_params && bf16_matrices(w1_in, w2_in)) {
        se_kernel<scalar_t, VecIO<scalar_t>, scalar_t>(x, w1_in.const_data_ptr<scalar_t>(), acc_data<acc_t>(b1, b1s),
                                                       w2_in.const_data_ptr<scalar_t>(), acc_data<acc_t>(b2, b2s), S,
                                                       out, channels_last);
        return;
      }
    }
    se_kernel<scalar_t>(x, acc_data<acc_t>(w1_in, w1s), acc_data<acc_t>(b1, b1s),
                        acc_data<acc_t>(w2_in, w2s), acc_data<acc_t>(b2, b2s), S, out,
                        channels_last);
  });
  return out;
}

Tensor qse_cpu(const Tensor& x_in, const Tensor& w1, const Tensor& b1, const Tensor& w2, const Tensor& b2,
               double out_scale, int64_t out_zp) {
  constexpr const char* op = "mnv3::run_cpu_program (QSE)";
  check_rank4(op, x_in);
  TORCH_CHECK_TYPE(x_in.scalar_type() == at::kFloat, op, ": expected a float32 input, got ", x_in.scalar_type());
  const int64_t C = x_in.size(1), S = w1.size(0);
  check_matrix(w1, "w1", S, C);
  check_matrix(w2, "w2", C, S);
  TORCH_CHECK_VALUE(b1.numel() == S && b2.numel() == C && out_scale > 0 && out_zp >= 0 && out_zp <= 255, op,
                    ": bad biases or quantization parameters");
  const Tensor x = x_in.contiguous(at::MemoryFormat::ChannelsLast);
  Tensor out = at::empty(x.sizes(), x.options().dtype(at::kByte).memory_format(at::MemoryFormat::ChannelsLast));
  if (out.numel() == 0) return out;
  std::vector<float> w1s, b1s, w2s, b2s;
  const U8IO out_io{static_cast<float>(1.0 / out_scale), static_cast<float>(out_zp)};
  if (bf16_matrices(w1, w2)) {  // (the int8 program's)
    se_kernel<float, U8IO, c10::BFloat16>(x, w1.const_data_ptr<c10::BFloat16>(), acc_data<float>(b1, b1s),
                                          w2.const_data_ptr<c10::BFloat16>(), acc_data<float>(b2, b2s), S, out,
                                          /*channels_last=*/true, out_io);
    return out;
  }
  se_kernel<float>(x, acc_data<float>(w1, w1s), acc_data<float>(b1, b1s), acc_data<float>(w2, w2s),
                   acc_data<float>(b2, b2s), S, out, /*channels_last=*/true, out_io);
  return out;
}

Tensor global_avg_pool_cpu(const Tensor& x_in) {
  check_rank4("mnv3::run_cpu_program (POOL)", x_in);
  const bool channels_last = is_channels_last(x_in);
  const Tensor x = x_in.contiguous(channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
  Tensor out = at::empty({x.size(0), x.size(1)}, x.options().memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() == 0 || x.size(2) * x.size(3) == 0) return out.zero_();
  MNV3_DISPATCH_FLOATING(x.scalar_type(), "mnv3::run_cpu_program (POOL)", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    std::vector<acc_t> means(out.numel());
    channel_means<VecIO<scalar_t>>(x, channels_last, means.data());
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    for (int64_t i = 0; i < out.numel(); ++i) op[i] = static_cast<scalar_t>(means[i]);
  });
  return out;
}

Tensor qpool_cpu(const Tensor& x_in, double in_scale, int64_t in_zp) {
  constexpr const char* op = "mnv3::run_cpu_program (QPOOL)";
  check_rank4(op, x_in);
  TORCH_CHECK_TYPE(x_in.scalar_type() == at::kByte, op, ": expected a uint8 input, got ", x_in.scalar_type());
  const bool channels_last = is_channels_last(x_in);
  const Tensor x = x_in.contiguous(channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
  Tensor out = at::empty({x.size(0), x.size(1)}, x.options().dtype(at::kFloat));
  if (out.numel() == 0) return out;
  channel_means<U8IO>(x, channels_last, out.mutable_data_ptr<float>(), U8IO{});
  return out.sub_(static_cast<double>(in_zp)).mul_(in_scale);  // (the means of the codes, dequantized)
}

TORCH_LIBRARY_IMPL(mnv3, CPU, m) { m.impl("squeeze_excite", &squeeze_excite_cpu); }

}  // namespace mnv3
