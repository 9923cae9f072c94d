// The CPU kernels of the mnv3 ops, for C++ callers (the whole-forward runner in
// cpu_program.cpp calls them directly, without going through the dispatcher).
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace mnv3 {

at::Tensor hswish_cpu(const at::Tensor& x);
at::Tensor hsigmoid_cpu(const at::Tensor& x);
at::Tensor dw_conv_bn_act_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                              int64_t stride, int64_t padding, int64_t dilation, c10::string_view act);
// relu_input: computes dw_conv_bn_act(relu(x), ...) without a pass for the ReLU (on NHWC inputs).
// fp32_params: weight and bias may be fp32 for a bf16 x (as the CPU program keeps them).
at::Tensor dw_conv_bn_act_cpu_impl(const at::Tensor& x, const at::Tensor& weight,
                                   const std::optional<at::Tensor>& bias, int64_t stride, int64_t padding,
                                   int64_t dilation, c10::string_view act, bool relu_input, bool fp32_params);
// The int8 program's depthwise conv: a uint8 input (in_scale, in_zp), float32 weights and bias, the
// activation, and a uint8 output (out_scale, out_zp), or float32 where out_scale is 0.
at::Tensor qdw_conv_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                        int64_t stride, int64_t padding, int64_t dilation, int64_t act, double in_scale, int64_t in_zp,
                        double out_scale, int64_t out_zp);
at::Tensor squeeze_excite_cpu(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
                              const at::Tensor& b2);
at::Tensor squeeze_excite_cpu_impl(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1,
                                   const at::Tensor& w2, const at::Tensor& b2, bool fp32_params);
// The int8 program's SE: a float32 input, a uint8 output (out_scale, out_zp).
at::Tensor qse_cpu(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
                   const at::Tensor& b2, double out_scale, int64_t out_zp);
// The int8 program's POOL: a uint8 map (in_scale, in_zp) to its float32 (N, C) means.
at::Tensor qpool_cpu(const at::Tensor& x, double in_scale, int64_t in_zp);
// Global average pool of an (N, C, H, W) map to (N, C), accumulated in fp32 (or fp64).
at::Tensor global_avg_pool_cpu(const at::Tensor& x);
// The first conv of the network (few input channels), directly; output channels_last.  act: an
// activation code (program_table.h).  out_scale > 0: a uint8 output (out_scale, out_zp) for the int8 program.
at::Tensor stem_conv_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                         int64_t stride, int64_t padding, int64_t act, double out_scale = 0, int64_t out_zp = 0);

// The CPU program's 1x1 convs on oneDNN's brgemm micro-kernel (pointwise_conv.cpp).  Whether this
// build and CPU run them in `dtype` (float32: torch with the fp32 brgemm; bfloat16: AMX).
bool pointwise_supported(at::ScalarType dtype);
// A 1x1 conv weight (N, K[, 1, 1]) packed for pointwise_conv_cpu (float32, bfloat16) or
// pointwise_conv_int8_cpu (int8 codes): (ceil(N / 32), K, 32).
at::Tensor pack_pointwise_weight(const at::Tensor& weight);
// Whether this build and CPU run the int8 program's 1x1 convs as QPWCONV (AMX-INT8).
bool pointwise_int8_supported();
// act(conv1x1(x) + bias) (+ residual), x channels_last in float32 or bfloat16; the bias (N) gives the output
// channels; act: an activation code.
at::Tensor pointwise_conv_cpu(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& bias, int64_t act,
                              const at::Tensor* residual);
// The int8 1x1 conv: uint8 x, the weight from pack_pointwise_weight(int8), params (2, N) float32: y = acc *
// params[0] + params[1]; then act, + the dequantized uint8 residual; qp = [in s, zp, out s, zp, res s, zp],
// out s = 0 for a float32 output.
at::Tensor pointwise_conv_int8_cpu(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& params,
                                   int64_t act, const at::Tensor* residual, const double* qp);

}  // namespace mnv3
