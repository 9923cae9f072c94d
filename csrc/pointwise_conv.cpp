// The CPU program's 1x1 convs (PWCONV, and QPWCONV for int8) as loops over output tiles.  A tile is
// computed by our own AMX micro-kernel for bf16 and int8 (amx_tiles.h), by our own register tiles for fp32
// on AVX-512 (run_register_tiles says why), and otherwise (fp32 on AVX2; MNV3_CPU_AMX_TILES=0) by oneDNN's
// batch-reduce GEMM micro-kernel, reached through ATen's at::native::cpublas::brgemm.
//
// Why not oneDNN's convolution (mkldnn::_convolution_pointwise, the CONV instruction)?  At batch 1 a
// MobileNetV3 1x1 conv computes for 10-60 us, and ATen's wrapper around each call (ideep tensors,
// primitive-cache lookup, attribute objects, allocations) adds ~20-40 us.  Here each call is a loop over
// output tiles: a cached micro-kernel per tile shape, and the bias, activation, residual add and dtype
// conversion applied while the tile is still in L1.
//
// Layout: x is NHWC, i.e. an (M = N*H*W, K) row-major matrix; the weight is packed once into blocks of
// kBlockN output channels, (blocks, K, kBlockN) for fp32 and the same bytes in VNNI order (pairs of K
// interleaved: (blocks, K/2, kBlockN, 2)) for bf16, fours for int8.  mnv3_fast/ops/cpu_program.py unpacks the same format.
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>

#include "amx_tiles.h"
#include "common.h"
#include "ops.h"

namespace mnv3 {
namespace {

constexpr const char* kOp = "mnv3::run_cpu_program (PWCONV)";
constexpr int64_t kBlockN = 32;  // output channels per packed block (two AVX-512 vectors, an AMX tile's width x2)
constexpr int64_t kBlockM = 64;  // output pixels per tile: the fp32 tile (8 KB) stays in L1 for the epilogue

// torch announces its brgemm entry points with these macros (2.7 and later; older versions run CONV).
#if defined(CPUBLAS_BRGEMM_F32F32F32) && defined(CPUBLAS_BRGEMM_BF16BF16F32)
#define MNV3_HAS_BRGEMM 1
#endif

#ifdef MNV3_HAS_BRGEMM
// The tile loop every PWCONV and QPWCONV runs: `kernel(m0, n0, rows, acc)` computes each (kBlockM x kBlockN)
// output tile into `acc` (fp32, or int32 for int8), then `epilogue(acc, m0, n0, rows, nv)` stores it while
// it is in L1.  Tiles go row-major: consecutive tiles share their rows of x (in L1), every tile reads all
// of w (in L2).  kernel.start() and kernel.finish() bracket each thread's share (AMX tile state).
template <typename Acc, typename Kernel, typename Epilogue>
void for_each_tile(int64_t M, int64_t N, const Kernel& kernel, const Epilogue& epilogue) {
  const int64_t m_tiles = (M + kBlockM - 1) / kBlockM, n_tiles = (N + kBlockN - 1) / kBlockN;
  at::parallel_for(0, m_tiles * n_tiles, 1, [&](int64_t begin, int64_t end) {
    kernel.start();
    alignas(64) Acc acc[kBlockM * kBlockN];
    for (int64_t t = begin; t < end; ++t) {
      const int64_t m0 = t / n_tiles * kBlockM, n0 = t % n_tiles * kBlockN;
      const int64_t rows = std::min(kBlockM, M - m0);
      kernel(m0, n0, rows, acc);
      epilogue(acc, m0, n0, rows, std::min(kBlockN, N - n0));
    }
    kernel.finish();
  });
}

// A tile by ATen's brgemm (oneDNN's micro-kernel).  vnni: the weight in VNNI order, i.e. AMX, whose tile
// state each thread releases afterwards.
template <typename X, typename W>
struct BrgemmTiles {
  const X* x;
  const W* w;
  int64_t K;
  bool vnni;
  void start() const {}
  template <typename Acc>
  void operator()(int64_t m0, int64_t n0, int64_t rows, Acc* acc) const {
    at::native::cpublas::brgemm(rows, kBlockN, K, K, kBlockN, kBlockN, false, x + m0 * K, w + n0 * K, acc, vnni);
  }
  void finish() const {
    if (vnni) at::native::cpublas::brgemm_release(/*is_vnni=*/true);
  }
};

#ifdef MNV3_HAS_AMX_TILES
// A bfloat16 or int8 tile on our AMX micro-kernel (amx_tiles.h says why).  x has at least 16 rows
// (amx_input pads a shorter one).
template <typename X>
struct AmxTiles {
  const X* x;
  const typename amx::Types<X>::W* w;
  int64_t M, K;
  void start() const { amx::configure<X>(K); }
  void operator()(int64_t m0, int64_t n0, int64_t rows, typename amx::Types<X>::Acc* acc) const {
    amx::tile(x, M, K, m0, rows, w + n0 * K, acc);
  }
  void finish() const { amx::release(); }
};

// AmxTiles for x (M, K), fewer than 16 pixels (the head's products at batch 1) copied into `padded`
// first, zero rows below.
template <typename X>
AmxTiles<X> amx_input(const X* x, const typename amx::Types<X>::W* w, int64_t M, int64_t K, std::vector<X>& padded) {
  if (M >= amx::kRows) return {x, w, M, K};
  padded.assign(amx::kRows * K, X(0));
  std::copy(x, x + M * K, padded.begin());
  return {padded.data(), w, amx::kRows, K};
}
#endif

// The tile loop of a weight in VNNI order (bf16, int8): our AMX tiles where they run, else ATen's brgemm.
template <typename Acc, typename X, typename W, typename Epilogue>
void for_each_vnni_tile(const X* x, const W* w, int64_t M, int64_t N, int64_t K, const Epilogue& epilogue) {
#ifdef MNV3_HAS_AMX_TILES
  if (amx::tiles_enabled<X>()) {
    std::vector<X> padded;
    return for_each_tile<Acc>(M, N, amx_input(x, w, M, K, padded), epilogue);
  }
#endif
  for_each_tile<Acc>(M, N, BrgemmTiles<X, W>{x, w, K, true}, epilogue);
}

#if defined(CPU_CAPABILITY_AVX512)
// float32 on AVX-512: our own register tiles instead of brgemm.  A micro-tile is R pixels x NV vectors of
// 16 output channels, accumulated in R * NV zmm registers over all of K, then biased, activated, added to
// the residual and stored straight from the registers.  brgemm writes each fp32 tile to memory and the
// epilogue reads it back, which at MobileNetV3's small K (16-120 input channels) costs as much as the
// FMAs: measured per conv at batch 1 on a Xeon (AMX), these tiles were 1.1-1.6x faster for K <= 480,
// and 0.94-1.06x at 7x7 pixels with K = 672-960.
constexpr int kRegRows = 6;           // 6 pixels x 4 vectors = 24 accumulators, of the 32 zmm registers
constexpr int64_t kRegChannels = 64;  // output channels per tile: 4 vectors of 16

template <int R, int NV, Act A>
inline void register_tile(const float* __restrict x, int64_t K, const float* __restrict w, int64_t w_block,
                          const float* __restrict bias, const float* __restrict res, float* __restrict y,
                          int64_t N, int64_t n_valid) {
  __m512 acc[R][NV];
  for (int i = 0; i < R; ++i)
    for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    __m512 wv[NV];  // vectors v of the tile: block v / 2 of the packed weight, its half v % 2
    for (int v = 0; v < NV; ++v) wv[v] = _mm512_loadu_ps(w + (v / 2) * w_block + k * kBlockN + (v % 2) * 16);
    for (int i = 0; i < R; ++i) {
      const __m512 xb = _mm512_set1_ps(x[i * K + k]);
      for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_fmadd_ps(xb, wv[v], acc[i][v]);
    }
  }
  using Vec = at::vec::Vectorized<float>;
  for (int v = 0; v < NV; ++v) {  // (the padded weight blocks are zero beyond N: only the stores are masked)
    const int64_t n = std::min<int64_t>(16, n_valid - v * 16);
    const __mmask16 mask = static_cast<__mmask16>((1u << n) - 1);
    const __m512 b = _mm512_maskz_loadu_ps(mask, bias + v * 16);
    for (int i = 0; i < R; ++i) {
      __m512 out = apply_act<A>(Vec(_mm512_add_ps(acc[i][v], b)));
      if (res) out = _mm512_add_ps(out, _mm512_maskz_loadu_ps(mask, res + i * N + v * 16));
      _mm512_mask_storeu_ps(y + i * N + v * 16, mask, out);
    }
  }
}

// One micro-tile of `rows` (1..kRegRows) pixels and NV vectors from output channel n0.
template <int NV, Act A>
void register_tile_rows(int64_t rows, const float* x, int64_t K, const float* w, const float* bias,
                        const float* res, float* y, int64_t N, int64_t n0) {
  const int64_t w_block = K * kBlockN;
  const float* wb = w + n0 / kBlockN * w_block;
  const float* r = res ? res + n0 : nullptr;
  const int64_t n_valid = std::min<int64_t>(NV * 16, N - n0);
  switch (rows) {
#define MNV3_REGISTER_TILE(R) \
  case R: return register_tile<R, NV, A>(x, K, wb, w_block, bias + n0, r, y + n0, N, n_valid);
    MNV3_REGISTER_TILE(6) MNV3_REGISTER_TILE(5) MNV3_REGISTER_TILE(4) MNV3_REGISTER_TILE(3)
    MNV3_REGISTER_TILE(2) MNV3_REGISTER_TILE(1)
#undef MNV3_REGISTER_TILE
  }
}

template <Act A>
void run_register_tiles(const float* x, const float* w, const float* bias, const float* res, float* y, int64_t M,
                        int64_t N, int64_t K) {
  const int64_t m_tiles = (M + kRegRows - 1) / kRegRows, n_groups = (N + kRegChannels - 1) / kRegChannels;
  auto tile = [&](int64_t mt, int64_t ng) {
    const int64_t m0 = mt * kRegRows, rows = std::min<int64_t>(kRegRows, M - m0), n0 = ng * kRegChannels;
    const int64_t left = N - n0;
    const float* xr = x + m0 * K;
    const float* rr = res ? res + m0 * N : nullptr;
    float* yr = y + m0 * N;
    if (left > 48) register_tile_rows<4, A>(rows, xr, K, w, bias, rr, yr, N, n0);
    else if (left > 32) register_tile_rows<3, A>(rows, xr, K, w, bias, rr, yr, N, n0);
    else if (left > 16) register_tile_rows<2, A>(rows, xr, K, w, bias, rr, yr, N, n0);
    else register_tile_rows<1, A>(rows, xr, K, w, bias, rr, yr, N, n0);
  };
  if (M >= N && m_tiles >= 4 * at::get_num_threads()) {
    // More pixels than output channels: threads take ranges of pixels.  A split of the flat tile range
    // gave one thread the 64-channel groups and the other a remainder of 8 (24 -> 72 channels ran slower
    // on 2 threads than on 1), and both threads wrote into the same output rows.
    // A thread's tiles go pixel-major (all of w read per pixel tile) or channel-major (all of its x read
    // per group of channels), whichever reads fewer bytes in total.
    const bool channel_major = K * N * m_tiles + M * K > M * K * n_groups + K * N;
    at::parallel_for(0, m_tiles, 1, [&](int64_t begin, int64_t end) {
      if (channel_major) {
        for (int64_t ng = 0; ng < n_groups; ++ng)
          for (int64_t mt = begin; mt < end; ++mt) tile(mt, ng);
      } else {
        for (int64_t mt = begin; mt < end; ++mt)
          for (int64_t ng = 0; ng < n_groups; ++ng) tile(mt, ng);
      }
    });
    return;
  }
  // Fewer pixels than channels (7x7 maps, the head's products): threads take ranges of channel groups,
  // each reading its part of w only.
  at::parallel_for(0, n_groups * m_tiles, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) tile(t % m_tiles, t / m_tiles);
  });
}
#endif

// A brgemm tile's epilogue: y[i, j] = act(acc[i, j] + bias[j]) (+ res[i, j]) for `rows` x `nv` outputs
// (rows of y and res `ld` apart, of acc kBlockN apart), a vector of channels at a time over all rows, its
// bias loaded once.  (A plain function, not the tile loop's lambda: there every row reloaded the captured
// pointers, since the stores may alias them; that made the epilogue cost 2/3 as much as the AMX kernel.)
template <typename T, Act A>
inline void store_tile(const float* __restrict acc, int64_t rows, int64_t nv, const float* __restrict bias,
                       const T* __restrict res, T* __restrict y, int64_t ld) {
  using IO = VecIO<T>;
  using Vec = typename IO::Vec;
  constexpr int64_t V = IO::kSize;
  for (int64_t j = 0; j < nv; j += V) {
    const int64_t n = std::min(V, nv - j);
    const Vec b = Vec::loadu(bias + j, n);
    for (int64_t i = 0; i < rows; ++i) {
      Vec v = apply_act<A>(Vec::loadu(acc + i * kBlockN + j) + b);
      if (res) v = v + (n == V ? IO::load(res + i * ld + j) : IO::load(res + i * ld + j, n));
      n == V ? IO::store(y + i * ld + j, v) : IO::store(y + i * ld + j, v, n);
    }
  }
}

// float32 / bfloat16: y = act(acc + bias) (+ residual).
template <typename T, Act A>
void run_tiles(const T* x, const T* w, const float* bias, const T* res, T* y, int64_t M, int64_t N, int64_t K) {
  constexpr bool vnni = !std::is_same_v<T, float>;  // bf16: AMX, the weight in VNNI order
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (!vnni) return run_register_tiles<A>(x, w, bias, res, y, M, N, K);
#endif
  auto epilogue = [&](const float* acc, int64_t m0, int64_t n0, int64_t rows, int64_t nv) {
    store_tile<T, A>(acc, rows, nv, bias + n0, res ? res + m0 * N + n0 : nullptr, y + m0 * N + n0, N);
  };
  if constexpr (vnni) {
    for_each_vnni_tile<float>(x, w, M, N, K, epilogue);
  } else {
    for_each_tile<float>(M, N, BrgemmTiles<T, T>{x, w, K, false}, epilogue);
  }
}

// int32 lanes as fp32, the first n of them.
inline at::vec::Vectorized<float> int32_as_float(const int32_t* p, int64_t n) {
#if defined(CPU_CAPABILITY_AVX512)
  return _mm512_cvtepi32_ps(_mm512_maskz_loadu_epi32(static_cast<__mmask16>((1u << n) - 1), p));
#else
  using Vec = at::vec::Vectorized<float>;
  float tmp[Vec::size()] = {};
  for (int64_t i = 0; i < n; ++i) tmp[i] = static_cast<float>(p[i]);
  return Vec::loadu(tmp);
#endif
}

// store_tile's int8 twin: y = act(acc * scale + shift) (+ the dequantized residual), stored through `out`.
template <Act A, typename Out>
inline void store_tile_int8(const int32_t* __restrict acc, int64_t rows, int64_t nv, const float* __restrict scale,
                            const float* __restrict shift, const uint8_t* __restrict res, float res_scale,
                            float res_zp, typename Out::scalar_t* __restrict y, int64_t ld, const Out out) {
  using Vec = at::vec::Vectorized<float>;
  constexpr int64_t V = Vec::size();
  const U8IO res_io;
  for (int64_t j = 0; j < nv; j += V) {
    const int64_t n = std::min(V, nv - j);
    const Vec s = Vec::loadu(scale + j, n), b = Vec::loadu(shift + j, n);
    for (int64_t i = 0; i < rows; ++i) {
      Vec v = apply_act<A>(at::vec::fmadd(int32_as_float(acc + i * kBlockN + j, n), s, b));
      const uint8_t* r = res ? res + i * ld + j : nullptr;
      if (r) v = at::vec::fmadd((n == V ? res_io.load(r) : res_io.load(r, n)) - Vec(res_zp), Vec(res_scale), v);
      n == V ? out.store(y + i * ld + j, v) : out.store(y + i * ld + j, v, n);
    }
  }
}

// int8: x uint8 codes, the weight int8 in VNNI-4 order, int32 tiles.  The epilogue dequantizes with
// y = acc * scale[n] + shift[n] (the input's scale and zero point folded in at packing), applies the
// activation, adds the dequantized residual, and stores through `out` (uint8 codes, or float32).
template <Act A, typename Out>
void run_tiles_int8(const uint8_t* x, const int8_t* w, const float* scale, const float* shift, const uint8_t* res,
                    float res_scale, float res_zp, typename Out::scalar_t* y, int64_t M, int64_t N, int64_t K,
                    const Out& out) {
  auto epilogue = [&](const int32_t* acc, int64_t m0, int64_t n0, int64_t rows, int64_t nv) {
    store_tile_int8<A>(acc, rows, nv, scale + n0, shift + n0, res ? res + m0 * N + n0 : nullptr, res_scale, res_zp,
                       y + m0 * N + n0, N, out);
  };
  for_each_vnni_tile<int32_t>(x, w, M, N, K, epilogue);
}
#endif

// The checks both convs make of the packed weight, for K input and N output channels.
void check_packed(const char* op, const Tensor& packed, int64_t K, int64_t N) {
  const int64_t blocks = (N + kBlockN - 1) / kBlockN;
  TORCH_CHECK_VALUE(packed.dim() == 3 && packed.size(1) == K && packed.size(2) == kBlockN &&
                        packed.size(0) == blocks && packed.is_contiguous(),
                    op, ": expected a packed weight of shape (", blocks, ", ", K, ", ", kBlockN, ") for ", K,
                    " input and ", N, " output channels, got ", shape_str(packed));
}

// x's output map (N, C, H, W with `channels`), channels_last, and the residual checked against it.
std::pair<Tensor, Tensor> output_and_residual(const char* op, const Tensor& x, int64_t channels,
                                              at::ScalarType dtype, const Tensor* residual) {
  Tensor y = at::empty({x.size(0), channels, x.size(2), x.size(3)},
                       x.options().dtype(dtype).memory_format(at::MemoryFormat::ChannelsLast));
  if (!residual) return {y, Tensor()};
  TORCH_CHECK_VALUE(residual->sizes() == y.sizes() && residual->scalar_type() == x.scalar_type(), op,
                    ": the saved residual is ", residual->scalar_type(), " of shape ", shape_str(*residual),
                    ", the conv's output ", shape_str(y), " (", x.scalar_type(), " expected)");
  return {y, residual->contiguous(at::MemoryFormat::ChannelsLast)};
}

}  // namespace

bool pointwise_supported(at::ScalarType dtype) {
#ifdef MNV3_HAS_BRGEMM
  if (dtype == at::kFloat) return true;
  if (dtype == at::kBFloat16) return at::native::cpublas::could_pack(at::kBFloat16);  // AMX
#endif
  return false;
}

bool pointwise_int8_supported() {
#if defined(MNV3_HAS_BRGEMM) && defined(CPUBLAS_BRGEMM_U8I8I32)
  return at::native::cpublas::could_pack(at::kChar);  // AMX-INT8 (VNNI without AMX stays on QCONV)
#else
  return false;
#endif
}

Tensor pack_pointwise_weight(const Tensor& weight) {
  constexpr const char* op = "mnv3::pack_pointwise_weight";
  const bool shape_ok = weight.dim() == 2 || (weight.dim() == 4 && weight.size(2) == 1 && weight.size(3) == 1);
  TORCH_CHECK_VALUE(shape_ok, op, ": expected a 1x1 conv weight (N, K, 1, 1) or a matrix (N, K), got ",
                    shape_str(weight));
  TORCH_CHECK_VALUE(weight.device().is_cpu(), op, ": expected a CPU weight, got one on ", weight.device());
  const bool int8 = weight.scalar_type() == at::kChar;
  TORCH_CHECK_TYPE(int8 ? pointwise_int8_supported() : pointwise_supported(weight.scalar_type()), op,
                   ": this build and CPU run PWCONV in ",
                   pointwise_supported(at::kBFloat16) ? "float32 and bfloat16" : "float32",
                   pointwise_supported(at::kFloat) ? "" : " (not even that: torch lacks the brgemm micro-kernel)",
                   pointwise_int8_supported() ? ", and QPWCONV in int8" : "", ", got ", weight.scalar_type());
  const int64_t N = weight.size(0), K = weight.size(1), blocks = (N + kBlockN - 1) / kBlockN;
  const bool vnni = weight.scalar_type() != at::kFloat;  // pairs of K (bf16) or fours (int8) interleaved
  const int64_t group = int8 ? 4 : 2;
  TORCH_CHECK_VALUE(!vnni || K % group == 0, op, ": a ", weight.scalar_type(), " weight needs a multiple of ", group,
                    " input channels, got ", K);
  // (K, blocks * kBlockN), zero beyond N, then each block's (K, kBlockN) columns.
  Tensor padded = at::zeros({K, blocks * kBlockN}, weight.options());
  padded.narrow(1, 0, N).copy_(weight.reshape({N, K}).t());
  if (!vnni) return padded.view({K, blocks, kBlockN}).permute({1, 0, 2}).contiguous();
  Tensor packed = at::empty({blocks, K, kBlockN}, weight.options());
#ifdef MNV3_HAS_BRGEMM
  for (int64_t b = 0; b < blocks; ++b) {
    at::native::cpublas::pack(K, kBlockN, blocks * kBlockN, kBlockN, weight.scalar_type(), weight.scalar_type(),
                              static_cast<const char*>(padded.const_data_ptr()) + b * kBlockN * padded.element_size(),
                              packed[b].data_ptr());
  }
#endif
  return packed;
}

Tensor pointwise_conv_cpu(const Tensor& x, const Tensor& packed, const Tensor& bias, int64_t act,
                          const Tensor* residual) {
  const int64_t K = x.size(1), N = bias.numel();
  TORCH_CHECK_TYPE(pointwise_supported(x.scalar_type()) && packed.scalar_type() == x.scalar_type(), kOp,
                   ": expected x and the packed weight in one dtype this CPU runs PWCONV in, got x ", x.scalar_type(),
                   " and the weight ", packed.scalar_type());
  check_packed(kOp, packed, K, N);
  std::vector<float> bias_store;
  [[maybe_unused]] const float* bp = acc_data<float>(bias, bias_store);  // (unused where torch has no brgemm)
  const Tensor xc = x.contiguous(at::MemoryFormat::ChannelsLast);
  const auto [y, res] = output_and_residual(kOp, xc, N, x.scalar_type(), residual);
  if (y.numel() == 0) return y;
#ifdef MNV3_HAS_BRGEMM
  const int64_t M = xc.numel() / std::max<int64_t>(K, 1);
  auto launch = [&](auto zero) {
    using scalar_t = decltype(zero);
    dispatch_act(static_cast<Act>(act), [&](auto a) {
      run_tiles<scalar_t, decltype(a)::value>(xc.const_data_ptr<scalar_t>(), packed.const_data_ptr<scalar_t>(), bp,
                                              residual ? res.const_data_ptr<scalar_t>() : nullptr,
                                              y.mutable_data_ptr<scalar_t>(), M, N, K);
    });
  };
  x.scalar_type() == at::kFloat ? launch(float{}) : launch(c10::BFloat16{});
#endif
  return y;
}

Tensor pointwise_conv_int8_cpu(const Tensor& x, const Tensor& packed, const Tensor& params, int64_t act,
                               const Tensor* residual, const double* qp) {
  constexpr const char* op = "mnv3::run_cpu_program (QPWCONV)";
  const int64_t K = x.size(1), N = params.size(1);
  TORCH_CHECK_TYPE(x.scalar_type() == at::kByte && packed.scalar_type() == at::kChar, op,
                   ": expected a uint8 input and an int8 packed weight, got ", x.scalar_type(), " and ",
                   packed.scalar_type());
  check_packed(op, packed, K, N);
  TORCH_CHECK_VALUE(params.scalar_type() == at::kFloat && params.dim() == 2 && params.size(0) == 2 &&
                        params.is_contiguous(),
                    op, ": expected float32 (scale, shift) rows of shape (2, N), got ", params.scalar_type(), " ",
                    shape_str(params));
  const bool float_out = qp[2] == 0;
  const Tensor xc = x.contiguous(at::MemoryFormat::ChannelsLast);
  const auto [y, res] = output_and_residual(op, xc, N, float_out ? at::kFloat : at::kByte, residual);
  if (y.numel() == 0) return y;
#if defined(MNV3_HAS_BRGEMM) && defined(CPUBLAS_BRGEMM_U8I8I32)
  TORCH_CHECK_TYPE(pointwise_int8_supported(), op, ": this CPU has no AMX-INT8 (the program needs QCONV here)");
  const int64_t M = xc.numel() / std::max<int64_t>(K, 1);
  const float* scale = params.const_data_ptr<float>();
  const uint8_t* rp = residual ? res.const_data_ptr<uint8_t>() : nullptr;
  const auto res_scale = static_cast<float>(qp[4]), res_zp = static_cast<float>(qp[5]);
  dispatch_act(static_cast<Act>(act), [&](auto a) {
    constexpr Act A = decltype(a)::value;
    if (float_out) {
      run_tiles_int8<A>(xc.const_data_ptr<uint8_t>(), packed.const_data_ptr<int8_t>(), scale, scale + N, rp,
                        res_scale, res_zp, y.mutable_data_ptr<float>(), M, N, K, VecIO<float>());
    } else {
      run_tiles_int8<A>(xc.const_data_ptr<uint8_t>(), packed.const_data_ptr<int8_t>(), scale, scale + N, rp,
                        res_scale, res_zp, y.mutable_data_ptr<uint8_t>(), M, N, K,
                        U8IO{static_cast<float>(1.0 / qp[2]), static_cast<float>(qp[3])});
    }
  });
#else
  TORCH_CHECK_TYPE(false, op, ": this build has no int8 brgemm (the program needs QCONV here)");
#endif
  return y;
}

}  // namespace mnv3
