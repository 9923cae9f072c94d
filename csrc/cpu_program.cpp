// mnv3::run_cpu_program: a whole CPU inference forward in one call.  The
// instruction set is documented in mnv3_fast/ops/cpu_program.py, whose
// `interpret` is the same machine in Python (and this op's reference).
//
// Why: at batch 1, calling ~60 small ops one by one from Python costs about
// as much as their arithmetic.  Here each instruction is a direct call: the
// mnv3 kernels as C++ functions, the oneDNN convolutions through the
// dispatcher (boxed, so that this file depends only on their schemas).
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/record_function.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "common.h"
#include "ops.h"

namespace mnv3 {
namespace {

constexpr const char* kOp = "mnv3::run_cpu_program";

// What the profiler shows for each instruction (the oneDNN ops also show as themselves).
constexpr const char* kProfileNames[kNumOpcodes] = {
    "mnv3::program::SAVE",  "mnv3::program::CONV",  "mnv3::program::DW",   "mnv3::program::SE",
    "mnv3::program::AFFINE", "mnv3::program::ACT",  "mnv3::program::MARK", "mnv3::program::POOL",
    "mnv3::program::LINEAR", "mnv3::program::STEM", "mnv3::program::QSTEM", "mnv3::program::QCONV",
    "mnv3::program::QDW",   "mnv3::program::QSE",   "mnv3::program::QPOOL", "mnv3::program::PWCONV",
    "mnv3::program::QPWCONV"};
// oneDNN's ReLU post-op turns NaN into 0, so a conv's ReLU runs after it, in
// place (or in the depthwise conv that follows, as it loads).
constexpr const char* kOneDnnAttr[kNumActs] = {"none", "none", "hardswish"};

using Stack = std::vector<c10::IValue>;

c10::IValue ints2(int64_t v) { return c10::IValue(c10::List<int64_t>({v, v})); }
c10::IValue no_scalars() { return c10::IValue(c10::List<std::optional<c10::Scalar>>()); }

Tensor pop_result(const c10::OperatorHandle& op, Stack& stack) {
  op.callBoxed(&stack);
  return stack[0].toTensor();
}

// mkldnn::_convolution_pointwise(X, W, B?, padding, stride, dilation, groups, attr, scalars, algorithm)
Tensor conv(const Tensor& x, const Tensor& w, const std::optional<Tensor>& bias, int64_t stride, int64_t pad,
            int64_t act) {
  static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_convolution_pointwise", "");
  Stack s{x, w, bias, ints2(pad), ints2(stride), ints2(1), int64_t(1), std::string(kOneDnnAttr[act]),
          no_scalars(), std::string()};
  return pop_result(op, s);
}

// mkldnn::_convolution_pointwise.binary(X, other, W, B?, padding, stride, dilation, groups, "add", ...): conv + other
Tensor conv_add(const Tensor& x, const Tensor& other, const Tensor& w, const std::optional<Tensor>& bias,
                int64_t stride, int64_t pad) {
  static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_convolution_pointwise", "binary");
  Stack s{x, other, w, bias, ints2(pad), ints2(stride), ints2(1), int64_t(1), std::string("add"),
          c10::IValue(), c10::IValue(), no_scalars(), c10::IValue()};
  return pop_result(op, s);
}

// A LINEAR's output features: its matrix's rows, or for a PWCONV-packed weight (blocks, K, 32) its bias's
// size (-1 where they disagree).
int64_t linear_features(const Tensor& w, const Tensor* bias) {
  if (w.dim() == 2) return w.size(0);
  const bool packed = w.dim() == 3 && bias && bias->dim() == 1;
  return packed && (bias->size(0) + w.size(2) - 1) / w.size(2) == w.size(0) ? bias->size(0) : -1;
}

// mkldnn::_linear_pointwise(X, W, B?, attr, scalars, algorithm)
Tensor linear(const Tensor& x, const Tensor& w, const std::optional<Tensor>& bias, int64_t act) {
  static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_linear_pointwise", "");
  Stack s{x, w, bias, std::string(kOneDnnAttr[act]), no_scalars(), std::string()};
  return pop_result(op, s);
}

// The int8 program's convs: onednn::qconv2d_pointwise on a uint8 input, the weights int8 per output
// channel (packed by onednn::qconv_prepack), the activation fused, and a uint8 output (out_scale,
// out_zp), or float32 where out_scale is 0.  With a residual, .binary adds the saved uint8 value,
// whose buffer it writes the output into (nothing reads it afterwards).
constexpr const char* kQAttr[kNumActs] = {"none", "relu", "hardswish"};

Tensor qconv(const Tensor& x, const Tensor& w, const Tensor& w_scale, const Tensor& w_zp,
             const std::optional<Tensor>& bias, int64_t stride, int64_t pad, int64_t act, const double* qp,
             const Tensor* residual) {
  const bool float_out = qp[2] == 0;
  const c10::IValue out_dtype = float_out ? c10::IValue(at::ScalarType::Float) : c10::IValue();
  const double out_scale = float_out ? 1.0 : qp[2];
  const int64_t out_zp = float_out ? 0 : static_cast<int64_t>(qp[3]);
  if (residual == nullptr) {
    static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("onednn::qconv2d_pointwise", "");
    Stack s{x, qp[0], static_cast<int64_t>(qp[1]), w, w_scale, w_zp, bias, ints2(stride), ints2(pad), ints2(1),
            int64_t(1), out_scale, out_zp, out_dtype, std::string(kQAttr[act]), no_scalars(), std::string()};
    return pop_result(op, s);
  }
  static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("onednn::qconv2d_pointwise", "binary");
  Stack s{x, qp[0], static_cast<int64_t>(qp[1]), w, w_scale, w_zp, *residual, bias, ints2(stride), ints2(pad),
          ints2(1), int64_t(1), out_scale, out_zp, out_dtype, qp[4], static_cast<int64_t>(qp[5]), std::string("sum"),
          c10::IValue(1.0), std::string(kQAttr[act]), no_scalars(), std::string()};
  return pop_result(op, s);
}

Tensor activate(const Tensor& x, int64_t act) {
  switch (static_cast<Act>(act)) {
    case Act::ReLU: return at::relu(x);  // (not in place: x may be the saved residual or the caller's input)
    case Act::HSwish: return hswish_cpu(x);
    default: return x;
  }
}

// Which argument of an instruction says "add the saved value" (-1: none), as _RESIDUAL_ARG in
// mnv3_fast/ops/cpu_program.py.
int64_t residual_arg(int64_t op) {
  switch (op) {
    case kConv: return 5;
    case kQConv: return 7;
    case kPwConv:
    case kQPwConv: return 3;
    default: return -1;
  }
}

// Checks the whole program before any of it runs (the same checks, with the
// same messages, as `decode` in mnv3_fast/ops/cpu_program.py); returns the
// logits' width.
int64_t validate(at::TensorList tensors, at::IntArrayRef program) {
  const int64_t num_tensors = static_cast<int64_t>(tensors.size());
  int64_t last = -1, out_features = 0, pooled_at = -1;
  bool saved_any = false;
  for (size_t i = 0; i < program.size();) {
    const int64_t op = program[i];
    TORCH_CHECK_VALUE(op >= 0 && op < kNumOpcodes, kOp, ": unknown opcode ", op, " at position ", i, " (expected 0..",
                      kNumOpcodes - 1, ")");
    const OpcodeInfo& info = kOpcodes[op];
    TORCH_CHECK_VALUE(i + 1 + info.num_args <= program.size(), kOp, ": ", info.name, " at position ", i, " needs ",
                      info.num_args, " arguments, got ", program.size() - i - 1);
    const int64_t* a = program.data() + i + 1;
    auto check_tensor = [&](int64_t k, bool optional) {
      TORCH_CHECK_VALUE(a[k] >= (optional ? -1 : 0) && a[k] < num_tensors, kOp, ": ", info.name, " at position ", i,
                        " names tensor ", a[k], ", but there are ", num_tensors, " tensors");
    };
    // Quantization parameters: a float64 tensor of `count` values (scales, zero points).
    auto check_qparams = [&](int64_t k, int64_t count) {
      check_tensor(k, false);
      const Tensor& t = tensors[a[k]];
      TORCH_CHECK_VALUE(t.scalar_type() == at::kDouble && t.dim() == 1 && t.size(0) == count && t.is_contiguous(),
                        kOp, ": ", info.name, " at position ", i, " needs its quantization parameters as a float64 "
                        "tensor of ", count, " values, got ", t.scalar_type(), " of shape ", shape_str(t));
    };
    if (info.act_arg >= 0) {
      const int64_t code = a[info.act_arg];
      TORCH_CHECK_VALUE(code >= 0 && code < kNumActs, kOp, ": ", info.name, " at position ", i,
                        " has activation code ", code, " (expected 0 none, 1 relu or 2 hswish)");
    }
    // After POOL the value is (N, C): only LINEAR and ACT apply to it, and LINEAR to nothing else.
    const bool needs_map = op != kLinear && op != kAct;  // (QPOOL, like POOL, needs the map)
    TORCH_CHECK_VALUE(!(needs_map && pooled_at >= 0), kOp, ": ", info.name, " at position ", i,
                      " needs a 4-D value, but the value was pooled at position ", pooled_at);
    TORCH_CHECK_VALUE(!(op == kLinear && pooled_at < 0), kOp, ": LINEAR at position ", i,
                      " needs pooled (N, C) features: put a POOL before it");
    switch (op) {
      case kConv:
        check_tensor(0, false), check_tensor(1, true);
        break;
      case kPwConv:   // weight bias act residual
      case kQPwConv: {  // weight params act residual qparams
        const bool int8 = op == kQPwConv;
        check_tensor(0, false), check_tensor(1, false);
        if (int8) check_qparams(4, 6);
        TORCH_CHECK_VALUE(tensors[a[0]].dim() == 3 && tensors[a[1]].dim() == (int8 ? 2 : 1), kOp, ": ", info.name,
                          " at position ", i, " needs a packed weight (blocks, K, 32) and ",
                          int8 ? "(scale, shift) rows (2, N)" : "a bias (N)", ", got shapes ",
                          shape_str(tensors[a[0]]), " and ", shape_str(tensors[a[1]]));
        break;
      }
      case kSave: saved_any = true; break;
      case kDw:
      case kStem: check_tensor(0, false), check_tensor(1, true); break;
      case kQStem: check_tensor(0, false), check_tensor(1, true), check_qparams(5, 2); break;
      case kQConv:
        check_tensor(0, false), check_tensor(1, false), check_tensor(2, false), check_tensor(3, true);
        check_qparams(8, 6);
        break;
      case kQDw: check_tensor(0, false), check_tensor(1, true), check_qparams(6, 4); break;
      case kQSe:
        for (int k = 0; k < 4; ++k) check_tensor(k, false);
        check_qparams(4, 2);
        break;
      case kQPool:
        check_qparams(0, 2);
        pooled_at = static_cast<int64_t>(i);
        break;
      case kSe: for (int k = 0; k < 4; ++k) check_tensor(k, false); break;
      case kAffine: check_tensor(0, false), check_tensor(1, false); break;
      case kPool: pooled_at = static_cast<int64_t>(i); break;
      case kLinear:
        check_tensor(0, false), check_tensor(1, true);
        TORCH_CHECK_VALUE(linear_features(tensors[a[0]], a[1] >= 0 ? &tensors[a[1]] : nullptr) == a[3], kOp,
                          ": LINEAR at position ", i, " declares ", a[3], " output features, but its weight has shape ",
                          shape_str(tensors[a[0]]), " (a packed one needs a bias of that size)");
        out_features = a[3];
        break;
      default: break;
    }
    const int64_t res = residual_arg(op);
    TORCH_CHECK_VALUE(res < 0 || !a[res] || saved_any, kOp, ": ", info.name, " at position ", i,
                      " adds a residual, but no SAVE comes before it");
    last = op;
    i += 1 + info.num_args;
  }
  TORCH_CHECK_VALUE(last == kLinear, kOp, ": expected the program to end with a LINEAR instruction");
  return out_features;
}

// Runs a validated program.
Tensor run(const Tensor& x_in, at::TensorList tensors, at::IntArrayRef program) {
  // Optional tensor arguments (biases): index -1 is "none".
  auto optional_tensor = [&](int64_t k) { return k < 0 ? std::nullopt : std::optional<Tensor>(tensors[k]); };
  Tensor x = x_in, saved;
  bool relu_pending = false;  // a CONV's ReLU left for the next DW to apply as it loads
  for (size_t i = 0; i < program.size(); i += 1 + kOpcodes[program[i]].num_args) {
    const int64_t* a = program.data() + i + 1;
    const size_t next = i + 1 + kOpcodes[program[i]].num_args;
    RECORD_FUNCTION(kProfileNames[program[i]], c10::ArrayRef<const c10::IValue>{});
    switch (program[i]) {
      case kSave: saved = x; break;
      case kConv: {  // weight bias stride pad act residual
        if (a[5] && a[4] == 0) {  // conv + residual in one pass
          x = conv_add(x, saved, tensors[a[0]], optional_tensor(a[1]), a[2], a[3]);
          break;
        }
        x = conv(x, tensors[a[0]], optional_tensor(a[1]), a[2], a[3], a[4]);
        // A ReLU before a depthwise conv is applied by it, on load: one pass less
        // over the block's largest activation.
        const bool relu = static_cast<Act>(a[4]) == Act::ReLU;
        relu_pending = relu && !a[5] && next < program.size() && program[next] == kDw;
        if (relu && !relu_pending) x.relu_();
        if (a[5]) x.add_(saved);  // the seed variant adds after the activation
        break;
      }
      case kPwConv: {  // weight bias act residual; the bias (not optional) gives the output channels
        x = pointwise_conv_cpu(x, tensors[a[0]], tensors[a[1]], a[2], a[3] ? &saved : nullptr);
        break;
      }
      case kQPwConv:  // weight params act residual qparams
        x = pointwise_conv_int8_cpu(x, tensors[a[0]], tensors[a[1]], a[2], a[3] ? &saved : nullptr,
                                    tensors[a[4]].const_data_ptr<double>());
        break;
      case kDw: {  // weight bias stride pad dilation act
        x = dw_conv_bn_act_cpu_impl(x, tensors[a[0]], optional_tensor(a[1]), a[2], a[3], a[4], kActNames[a[5]],
                                    relu_pending, /*fp32_params=*/true);
        relu_pending = false;
        break;
      }
      case kStem: {  // weight bias stride pad act
        x = stem_conv_cpu(x, tensors[a[0]], optional_tensor(a[1]), a[2], a[3], a[4]);
        break;
      }
      case kSe:
        x = squeeze_excite_cpu_impl(x, tensors[a[0]], tensors[a[1]], tensors[a[2]], tensors[a[3]], /*fp32_params=*/true);
        break;
      case kAffine: {
        const int64_t C = x.size(1);
        x = x * tensors[a[0]].view({1, C, 1, 1}) + tensors[a[1]].view({1, C, 1, 1});
        break;
      }
      case kQStem: {  // weight bias stride pad act qparams[out_scale, out_zp]
        const double* qp = tensors[a[5]].const_data_ptr<double>();
        x = stem_conv_cpu(x, tensors[a[0]], optional_tensor(a[1]), a[2], a[3], a[4], qp[0], static_cast<int64_t>(qp[1]));
        break;
      }
      case kQConv: {  // weight w_scale w_zp bias stride pad act residual qparams[in s, zp, out s, zp, res s, zp]
        // The residual's buffer receives the output, so it must be a value of the program's own: not the
        // caller's input, and not the conv's own input, which oneDNN may still read after writing some
        // channels (it did on AVX2, for channels past the first 16).
        if (a[7] && (saved.is_alias_of(x_in) || saved.is_alias_of(x))) saved = saved.clone();
        x = qconv(x, tensors[a[0]], tensors[a[1]], tensors[a[2]], optional_tensor(a[3]), a[4], a[5], a[6],
                  tensors[a[8]].const_data_ptr<double>(), a[7] ? &saved : nullptr);
        break;
      }
      case kQDw: {  // weight bias stride pad dilation act qparams[in s, zp, out s, zp]
        const double* qp = tensors[a[6]].const_data_ptr<double>();
        x = qdw_conv_cpu(x, tensors[a[0]], optional_tensor(a[1]), a[2], a[3], a[4], a[5], qp[0],
                         static_cast<int64_t>(qp[1]), qp[2], static_cast<int64_t>(qp[3]));
        break;
      }
      case kQSe: {  // w1 b1 w2 b2 qparams[out s, zp]
        const double* qp = tensors[a[4]].const_data_ptr<double>();
        x = qse_cpu(x, tensors[a[0]], tensors[a[1]], tensors[a[2]], tensors[a[3]], qp[0], static_cast<int64_t>(qp[1]));
        break;
      }
      case kQPool: {  // qparams[in s, zp]
        const double* qp = tensors[a[0]].const_data_ptr<double>();
        x = qpool_cpu(x, qp[0], static_cast<int64_t>(qp[1]));
        break;
      }
      case kAct: x = activate(x, a[0]); break;
      case kMark: break;
      case kPool: x = global_avg_pool_cpu(x); break;
      case kLinear: {  // weight bias act out_features
        if (tensors[a[0]].dim() == 3) {  // packed as PWCONV's: the (N, C) features as N pixels, in its dtype
          const Tensor& w = tensors[a[0]];
          if (x.scalar_type() != w.scalar_type()) x = x.to(w.scalar_type());  // (the int8 program's bf16 head)
          x = pointwise_conv_cpu(x.view({x.size(0), x.size(1), 1, 1}), w, tensors[a[1]], a[2], nullptr)
                  .view({x.size(0), a[3]});
          break;
        }
        x = linear(x, tensors[a[0]], optional_tensor(a[1]), a[2]);
        if (static_cast<Act>(a[2]) == Act::ReLU) x.relu_();
        break;
      }
      default: break;
    }
  }
  // The logits in x's dtype: a float32 image into a bfloat16 program (STEM reads it as it is).
  return x.scalar_type() == x_in.scalar_type() ? x : x.to(x_in.scalar_type());
}

// Runs the program's parallel regions (ours and oneDNN's) on `threads` OpenMP
// threads, in this calling thread only (OpenMP's per-thread setting, put back
// afterwards); 0 keeps the current setting.
class ThreadsGuard {
 public:
  explicit ThreadsGuard(int64_t threads) {
#ifdef _OPENMP
    if (threads > 0) {
      saved_ = omp_get_max_threads();
      omp_set_num_threads(static_cast<int>(threads));
    }
#endif
  }
  ~ThreadsGuard() {
#ifdef _OPENMP
    if (saved_ > 0) omp_set_num_threads(saved_);
#endif
  }

 private:
  int saved_ = 0;
};

Tensor run_cpu_program_cpu(const Tensor& x, at::TensorList tensors, at::IntArrayRef program, int64_t threads) {
  check_rank4(kOp, x);
  TORCH_CHECK_VALUE(x.device().is_cpu(), kOp, ": runs on the CPU only, got x on ", x.device());
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16, kOp,
                   ": expected x to be float32 or bfloat16 on the CPU, got ", x.scalar_type());
  TORCH_CHECK_VALUE(threads >= 0, kOp, ": expected threads >= 0 (0: the current setting), got ", threads);
  const int64_t out_features = validate(tensors, program);
  if (x.size(0) == 0) return at::empty({0, out_features}, x.options());  // (oneDNN rejects empty inputs)
  const ThreadsGuard guard(threads);
  return run(x, tensors, program);
}

}  // namespace

// The packed weights are oneDNN (MkldnnCPU) tensors, which select that key.
TORCH_LIBRARY_IMPL(mnv3, CPU, m) { m.impl("run_cpu_program", &run_cpu_program_cpu); }
TORCH_LIBRARY_IMPL(mnv3, MkldnnCPU, m) { m.impl("run_cpu_program", &run_cpu_program_cpu); }

}  // namespace mnv3
