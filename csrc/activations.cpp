// mnv3::hswish and mnv3::hsigmoid: elementwise, vectorized, parallel over
// large tensors, for any strides and memory format.
#include "common.h"
#include "ops.h"

namespace mnv3 {
namespace {

constexpr int64_t kGrain = 32768;  // elements per task; below this, one thread

template <typename VecFn, typename ScalarFn>
Tensor unary_cpu(const char* op, const Tensor& x, VecFn vec_fn, ScalarFn scalar_fn) {
  TORCH_CHECK_VALUE(x.device().is_cpu(), op, ": expected a CPU tensor, got one on ", x.device());
  check_floating(op, "x", x);
  // empty_like keeps a dense tensor's exact strides (NCHW, channels_last or any
  // permutation), so input and output can be walked as flat arrays together.
  // A non-dense input (a slice, an expand) is first copied into that layout.
  Tensor out = at::empty_like(x);
  Tensor src = x.is_non_overlapping_and_dense() ? x : at::empty_like(x).copy_(x);
  const int64_t n = x.numel();
  MNV3_DISPATCH_FLOATING(x.scalar_type(), "mnv3_unary", [&] {
    using IO = VecIO<scalar_t>;
    using acc_t = typename IO::acc_t;
    const scalar_t* in = src.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
      int64_t i = begin;
      for (; i + IO::kSize <= end; i += IO::kSize) IO::store(o + i, vec_fn(IO::load(in + i)));
      for (; i < end; ++i) o[i] = static_cast<scalar_t>(scalar_fn(static_cast<acc_t>(in[i])));
    });
  });
  return out;
}

}  // namespace

Tensor hswish_cpu(const Tensor& x) {
  return unary_cpu(
      "mnv3::hswish", x, [](auto v) { return apply_act<Act::HSwish>(v); },
      [](auto v) { return apply_act_scalar<Act::HSwish>(v); });
}

Tensor hsigmoid_cpu(const Tensor& x) {
  return unary_cpu(
      "mnv3::hsigmoid", x, [](auto v) { return hsigmoid_vec(v); }, [](auto v) { return hsigmoid_scalar(v); });
}

TORCH_LIBRARY_IMPL(mnv3, CPU, m) {
  m.impl("hswish", &hswish_cpu);
  m.impl("hsigmoid", &hsigmoid_cpu);
}

}  // namespace mnv3
