// Shared helpers for the mnv3 CPU kernels: argument checks, the memory-format
// rule every op follows, activations, and vector load/store in the
// accumulation type (bf16 is widened to fp32, fp64 stays fp64 for gradcheck).
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <sstream>
#include <string>
#include <vector>

#include "program_table.h"

// Full unrolling of a loop with a compile-time trip count, so that small
// arrays of vectors indexed by the loop variable stay in registers.
#define MNV3_PRAGMA(x) _Pragma(#x)
#if defined(__clang__)
#define MNV3_UNROLL(n) MNV3_PRAGMA(unroll)
#elif defined(__GNUC__)
#define MNV3_UNROLL(n) MNV3_PRAGMA(GCC unroll n)
#else
#define MNV3_UNROLL(n)
#endif

#define MNV3_DISPATCH_FLOATING(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, TYPE, NAME, __VA_ARGS__)

namespace mnv3 {

using at::Tensor;

// ---------------------------------------------------------------- checks

inline std::string shape_str(const Tensor& t) {
  std::ostringstream s;
  s << t.sizes();
  return s.str();
}

inline void check_floating(const char* op, const char* name, const Tensor& t) {
  auto dt = t.scalar_type();
  TORCH_CHECK_TYPE(dt == at::kFloat || dt == at::kDouble || dt == at::kBFloat16, op, ": expected ", name,
              " to be float32, float64 or bfloat16 on the CPU, got ", dt);
}

inline void check_device(const char* op, const Tensor& x, const char* name, const Tensor& t) {
  TORCH_CHECK_VALUE(t.device() == x.device(), op, ": expected ", name, " on the same device as x (", x.device(), "), got ",
              t.device());
}

inline void check_same(const char* op, const Tensor& x, const char* name, const Tensor& t) {
  check_device(op, x, name, t);
  TORCH_CHECK_TYPE(t.scalar_type() == x.scalar_type(), op, ": expected ", name, " to have the same dtype as x (",
              x.scalar_type(), "), got ", t.scalar_type());
}

inline void check_rank4(const char* op, const Tensor& x) {
  TORCH_CHECK_VALUE(x.dim() == 4, op, ": expected x to be a 4-D (N, C, H, W) tensor, got a ", x.dim(),
              "-D tensor of shape ", shape_str(x));
}

// A conv's output size along one axis (0 when the padded input is smaller than
// the dilated kernel).  Callers bound padding first, so nothing overflows.
inline int64_t conv_output_size(int64_t size, int64_t k, int64_t stride, int64_t padding, int64_t dilation = 1) {
  const int64_t span = dilation * (k - 1) + 1, padded = size + 2 * padding;
  return padded < span ? 0 : (padded - span) / stride + 1;
}

// The memory-format rule shared by every op (and by the Python fake kernels):
// a tensor that is channels_last-contiguous but not plain-contiguous is
// computed and returned as channels_last; everything else as NCHW.
inline bool is_channels_last(const Tensor& x) {
  return x.dim() == 4 && !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
}

// ---------------------------------------------------------------- activations

// The activation codes: the order of kActNames (program_table.h).
enum class Act { None, ReLU, HSwish };
static_assert(kNumActs == 3, "enum class Act must list every activation of kActNames");

inline Act parse_act(const char* op, c10::string_view name) {
  for (int64_t code = 0; code < kNumActs; ++code) {
    if (name == kActNames[code]) return static_cast<Act>(code);
  }
  TORCH_CHECK_VALUE(false, op, ": expected act to be one of 'none', 'relu', 'hswish', got '", std::string(name), "'");
}

// hsigmoid(x) = min(max(x + 3, 0), 6) / 6 and hswish(x) = x * hsigmoid(x),
// evaluated in the accumulation type (fp32 results are within an ulp of ATen's).
template <typename T>
inline T hsigmoid_scalar(T x) {
  return std::min(std::max(x + T(3), T(0)), T(6)) / T(6);
}

// x / 6, correctly rounded like the division, without a vector divide: that costs ~10 cycles, more
// than a 3x3 depthwise conv's nine FMAs, and was the depthwise kernel's bottleneck.  Markstein's
// correction: q = x * r with r = RN(1/6); then x - 6q is exact in one FMA, and q + r (x - 6q) is RN(x / 6).
// For finite x only (hsigmoid's x is in [0, 6], or NaN); only where fmadd is fused (the generic vectors divide).
template <typename V>
inline V div6(V x) {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  using T = typename V::value_type;
  const V r(T(1) / T(6));
  const V q = x * r;
  return at::vec::fmadd(at::vec::fmadd(q, V(T(-6)), x), r, q);
#else
  return x / V(6);
#endif
}

template <typename V>
inline V hsigmoid_vec(V x) {
  // (at::vec::clamp keeps a NaN in two instructions; minimum/maximum test for it separately)
  return div6(at::vec::clamp(x + V(3), V(0), V(6)));
}

template <Act A, typename V>
inline V apply_act(V x) {
  // (clamp_min keeps a NaN in one instruction, the constant first; maximum tests for it separately)
  if constexpr (A == Act::ReLU) return at::vec::clamp_min(x, V(0));
  if constexpr (A == Act::HSwish) return x * hsigmoid_vec(x);
  return x;
}

template <Act A, typename T>
inline T apply_act_scalar(T x) {
  if constexpr (A == Act::ReLU) return std::max(x, T(0));
  if constexpr (A == Act::HSwish) return x * hsigmoid_scalar(x);
  return x;
}

// Calls f.template operator()<A>() with the activation as a compile-time constant.
template <typename F>
inline void dispatch_act(Act act, F&& f) {
  switch (act) {
    case Act::None: f(std::integral_constant<Act, Act::None>{}); break;
    case Act::ReLU: f(std::integral_constant<Act, Act::ReLU>{}); break;
    case Act::HSwish: f(std::integral_constant<Act, Act::HSwish>{}); break;
  }
}

// ---------------------------------------------------------------- vector I/O

// Loads and stores scalar_t memory as vectors of the accumulation type.
template <typename scalar_t_>
struct VecIO {
  using scalar_t = scalar_t_;
  using acc_t = at::opmath_type<scalar_t>;
  using Vec = at::vec::Vectorized<acc_t>;
  static constexpr int64_t kSize = Vec::size();

  static Vec load(const scalar_t* p) { return Vec::loadu(p); }
  static Vec load(const scalar_t* p, int64_t n) { return Vec::loadu(p, n); }
  static void store(scalar_t* p, const Vec& v) { v.store(p); }
  static void store(scalar_t* p, const Vec& v, int64_t n) { v.store(p, n); }
};

#if defined(CPU_CAPABILITY_AVX512)
// fp32 -> bf16, round to nearest even: one instruction where the build has AVX512-BF16 (setup.py's
// avx512_bf16 target), ATen's eight-instruction integer rounding otherwise.  (The instruction also
// flushes fp32 denormals, below 1.2e-38, to zero.)
inline __m256i to_bf16(__m512 v) {
#if defined(__AVX512BF16__)
  return reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(v));
#else
  return at::vec::cvtfp32_bf16(v);
#endif
}
#endif

// bf16 memory as fp32 vectors: converted in registers (a widening shift in,
// round-to-nearest-even out), not element by element through a buffer, which
// made the bf16 kernels slower than the fp32 ones.
template <>
struct VecIO<c10::BFloat16> {
  using scalar_t = c10::BFloat16;
  using acc_t = float;
  using Vec = at::vec::Vectorized<float>;
  static constexpr int64_t kSize = Vec::size();

  static Vec load(const scalar_t* p) {
    Vec v;
    at::vec::load_fp32_from_bf16(p, v);
    return v;
  }
  // The partial loads and stores are masked on AVX-512 (a channel count such as 72 or 120
  // ends in a partial vector, and an element-by-element copy there made bf16 slower than fp32).
  static Vec load(const scalar_t* p, int64_t n) {
#if defined(CPU_CAPABILITY_AVX512)
    const __m256i bits = _mm256_maskz_loadu_epi16(static_cast<__mmask16>((1u << n) - 1), p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
#else
    scalar_t tmp[kSize] = {};
    std::copy(p, p + n, tmp);
    return load(tmp);
#endif
  }
  static void store(scalar_t* p, const Vec& v) {
#if defined(CPU_CAPABILITY_AVX512)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), to_bf16(__m512(v)));
#elif defined(CPU_CAPABILITY_AVX2)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), at::vec::cvtfp32_bf16(__m256(v)));
#else
    float tmp[kSize];
    v.store(tmp);
    for (int64_t i = 0; i < kSize; ++i) p[i] = static_cast<scalar_t>(tmp[i]);
#endif
  }
  static void store(scalar_t* p, const Vec& v, int64_t n) {
#if defined(CPU_CAPABILITY_AVX512)
    _mm256_mask_storeu_epi16(p, static_cast<__mmask16>((1u << n) - 1), to_bf16(__m512(v)));
#else
    scalar_t tmp[kSize];
    store(tmp, v);
    std::copy(tmp, tmp + n, p);
#endif
  }
};

// uint8 memory with a quantization (scale, zero point) as fp32 vectors, for
// the int8 CPU program.  `load` gives the raw codes q as floats: the kernels
// fold the input scale into their weights and the zero point into their bias
// (and pad with the zero point), so nothing is subtracted per element.
// `store` quantizes real values: clamp(round(v / scale) + zp, 0, 255), rounding
// half to even as torch.round does.
struct U8IO {
  using scalar_t = uint8_t;
  using acc_t = float;
  using Vec = at::vec::Vectorized<float>;
  static constexpr int64_t kSize = Vec::size();
  float inv_scale = 1.f, zero_point = 0.f;

  Vec load(const uint8_t* p) const {
#if defined(CPU_CAPABILITY_AVX512)
    return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
#elif defined(CPU_CAPABILITY_AVX2)
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
#else
    float tmp[kSize];
    for (int64_t i = 0; i < kSize; ++i) tmp[i] = p[i];
    return Vec::loadu(tmp);
#endif
  }
  // The partial loads and stores are masked on AVX-512, as VecIO<bf16>'s are (channel counts such as 72,
  // 120 and 200 end in a partial vector).
  Vec load(const uint8_t* p, int64_t n) const {
#if defined(CPU_CAPABILITY_AVX512)
    const __m128i bytes = _mm_maskz_loadu_epi8(static_cast<__mmask16>((1u << n) - 1), p);
    return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(bytes));
#else
    uint8_t tmp[kSize] = {};
    std::copy(p, p + n, tmp);
    return load(tmp);
#endif
  }
  // v / scale + zp, clamped to [0, 255] (rounded by the conversion to integers that follows).
  Vec quantize(const Vec& v) const {
    return at::vec::minimum(at::vec::maximum(at::vec::fmadd(v, Vec(inv_scale), Vec(zero_point)), Vec(0.f)),
                            Vec(255.f));
  }
  void store(uint8_t* p, const Vec& v) const {
    const Vec q = quantize(v);
#if defined(CPU_CAPABILITY_AVX512)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm512_cvtusepi32_epi8(_mm512_cvtps_epi32(q)));
#elif defined(CPU_CAPABILITY_AVX2)
    const __m256i i = _mm256_cvtps_epi32(q);
    const __m128i w16 = _mm_packus_epi32(_mm256_castsi256_si128(i), _mm256_extracti128_si256(i, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(p), _mm_packus_epi16(w16, w16));
#else
    float tmp[kSize];
    q.store(tmp);
    for (int64_t i = 0; i < kSize; ++i) p[i] = static_cast<uint8_t>(std::nearbyint(tmp[i]));
#endif
  }
  void store(uint8_t* p, const Vec& v, int64_t n) const {
#if defined(CPU_CAPABILITY_AVX512)
    _mm512_mask_cvtusepi32_storeu_epi8(p, static_cast<__mmask16>((1u << n) - 1), _mm512_cvtps_epi32(quantize(v)));
#else
    uint8_t tmp[kSize];
    store(tmp, v);
    std::copy(tmp, tmp + n, p);
#endif
  }
};

// Sum of a vector's lanes.
template <typename T>
inline T hsum(const at::vec::Vectorized<T>& v) {
  T lanes[at::vec::Vectorized<T>::size()];
  v.store(lanes);
  T sum = 0;
  for (int64_t i = 0; i < at::vec::Vectorized<T>::size(); ++i) sum += lanes[i];
  return sum;
}

// A tensor's values in the accumulation type, without tensor ops (they cost
// more than the work at batch 1): its own data when it already is contiguous
// acc_t, else a converted copy kept in `storage`.  (The CPU program keeps the
// depthwise and SE parameters in fp32 for bf16 activations: no conversion.)
template <typename acc_t>
const acc_t* acc_data(const Tensor& t, std::vector<acc_t>& storage) {
  if (t.scalar_type() == c10::CppTypeToScalarType<acc_t>::value && t.is_contiguous()) return t.const_data_ptr<acc_t>();
  const Tensor c = t.contiguous();
  storage.resize(c.numel());
  MNV3_DISPATCH_FLOATING(c.scalar_type(), "acc_data", [&] {
    const scalar_t* p = c.const_data_ptr<scalar_t>();
    for (int64_t i = 0; i < c.numel(); ++i) storage[i] = static_cast<acc_t>(p[i]);
  });
  return storage.data();
}

// The parameters of an op may be x's dtype, or fp32 when x is bf16 (the CPU
// program's choice: more precise, and no conversion on every call).
inline void check_param(const char* op, const Tensor& x, const char* name, const Tensor& t, bool fp32_params) {
  if (fp32_params && x.scalar_type() == at::kBFloat16 && t.scalar_type() == at::kFloat) {
    check_device(op, x, name, t);
    return;
  }
  check_same(op, x, name, t);
}


}  // namespace mnv3
