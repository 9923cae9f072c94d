"""Argument checks shared by the Python side of every op: the references, the
fake kernels and the Triton launchers.  The C++ kernels make the same checks
with the same messages; errors are ValueError (shapes, values, devices) or
TypeError (dtypes), naming what was expected and what came."""
from __future__ import annotations

import torch

# The activations the fused kernels apply, by name; a kernel's activation code is
# the index in this tuple (C++: enum class Act and kActNames in
# csrc/program_table.h; Triton: ACT_CODES), checked by the tests.
ACTIVATIONS = ("none", "relu", "hswish")
KERNEL_SIZES = (3, 5)
STRIDES = (1, 2)
DILATIONS = (1, 2)
CPU_DTYPES = (torch.float32, torch.float64, torch.bfloat16)
GPU_DTYPES = CPU_DTYPES + (torch.float16,)
# The new Triton kernels (GEMM, stem, SE gate) compute in fp32 at most: on CUDA their ops run
# float64 through the reference.
TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def supported_dtypes(device: torch.device) -> tuple:
    """The dtypes the kernels handle on a device: fp16 only on the GPU."""
    return CPU_DTYPES if device.type == "cpu" else GPU_DTYPES


def _shape(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def check_floating(op: str, name: str, t: torch.Tensor, dtypes: tuple | None = None) -> None:
    dtypes = dtypes or supported_dtypes(t.device)
    if t.dtype not in dtypes:
        names = [str(d).replace("torch.", "") for d in dtypes]
        allowed = ", ".join(names[:-1]) + " or " + names[-1]
        if dtypes == GPU_DTYPES:
            where = ""
        elif dtypes == TRITON_DTYPES:
            where = " in a Triton kernel"
        else:
            where = f" on the {t.device.type.upper()}"
        raise TypeError(f"{op}: expected {name} to be {allowed}{where}, got {t.dtype}")


def check_same(op: str, x: torch.Tensor, name: str, t: torch.Tensor, x_name: str = "x") -> None:
    if t.device != x.device:
        raise ValueError(f"{op}: expected {name} on the same device as {x_name} ({x.device}), got {t.device}")
    if t.dtype != x.dtype:
        raise TypeError(f"{op}: expected {name} to have the same dtype as {x_name} ({x.dtype}), got {t.dtype}")


def check_rank4(op: str, x: torch.Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"{op}: expected x to be a 4-D (N, C, H, W) tensor, got a {x.dim()}-D tensor of shape {_shape(x)}")


def check_act(op: str, act: str) -> None:
    if act not in ACTIVATIONS:
        raise ValueError(f"{op}: expected act to be one of 'none', 'relu', 'hswish', got {act!r}")


def output_memory_format(x: torch.Tensor) -> torch.memory_format:
    """The layout rule every op follows (and the C++ kernels too): an input that
    is channels_last-contiguous but not plain-contiguous gives a channels_last
    output; anything else an NCHW-contiguous one."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def conv_output_size(size: int, k: int, stride: int, padding: int, dilation: int = 1) -> int:
    return (size + 2 * padding - dilation * (k - 1) - 1) // stride + 1


def check_dw_conv_args(x, weight, bias, stride, padding, dilation, act, dtypes=None) -> tuple[int, int]:
    """Validates mnv3::dw_conv_bn_act's arguments; returns the output (Ho, Wo)."""
    op = "mnv3::dw_conv_bn_act"
    check_rank4(op, x)
    check_floating(op, "x", x, dtypes)
    check_same(op, x, "weight", weight)
    C = x.shape[1]
    if not (weight.dim() == 4 and weight.shape[0] == C and weight.shape[1] == 1 and weight.shape[2] == weight.shape[3]):
        raise ValueError(
            f"{op}: expected weight of shape ({C}, 1, k, k) for an input with {C} channels, got {_shape(weight)}"
        )
    k = weight.shape[2]
    if k not in KERNEL_SIZES:
        raise ValueError(f"{op}: expected a 3x3 or 5x5 kernel, got {k}x{k}")
    if stride not in STRIDES:
        raise ValueError(f"{op}: expected stride 1 or 2, got {stride}")
    if dilation not in DILATIONS:
        raise ValueError(f"{op}: expected dilation 1 or 2, got {dilation}")
    max_padding = dilation * (k - 1)
    if not 0 <= padding <= max_padding:
        raise ValueError(f"{op}: expected 0 <= padding <= {max_padding} (dilation * (k - 1)) for a {k}x{k} kernel "
                         f"with dilation {dilation}, got {padding}")
    if bias is not None:
        check_same(op, x, "bias", bias)
        if not (bias.dim() == 1 and bias.shape[0] == C):
            raise ValueError(f"{op}: expected bias of shape ({C}), got {_shape(bias)}")
    check_act(op, act)
    H, W = x.shape[2], x.shape[3]
    Ho = conv_output_size(H, k, stride, padding, dilation)
    Wo = conv_output_size(W, k, stride, padding, dilation)
    if Ho <= 0 or Wo <= 0:
        raise ValueError(
            f"{op}: input of spatial size {H}x{W} is too small for a {k}x{k} kernel "
            f"with padding {padding} and dilation {dilation}"
        )
    return Ho, Wo


def _check_matrix(op, name, w, rows, cols):
    ok = (w.dim() == 2 or (w.dim() == 4 and w.shape[2] == 1 and w.shape[3] == 1)) and tuple(w.shape[:2]) == (rows, cols)
    if not ok:
        raise ValueError(f"{op}: expected {name} of shape ({rows}, {cols}) or ({rows}, {cols}, 1, 1), got {_shape(w)}")


def check_se_args(x, w1, b1, w2, b2, dtypes=None) -> int:
    """Validates mnv3::squeeze_excite's arguments; returns the squeeze width S."""
    op = "mnv3::squeeze_excite"
    check_rank4(op, x)
    check_floating(op, "x", x, dtypes)
    for name, t in (("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2)):
        check_same(op, x, name, t)
    return _check_se_weights(op, w1, b1, w2, b2, x.shape[1])


def _check_se_weights(op, w1, b1, w2, b2, C) -> int:
    """The SE's FC shapes for C channels; returns the squeeze width S."""
    if w1.dim() < 1:
        raise ValueError(f"{op}: expected w1 of shape (S, {C}), got {_shape(w1)}")
    S = w1.shape[0]
    _check_matrix(op, "w1", w1, S, C)
    _check_matrix(op, "w2", w2, C, S)
    if not (b1.dim() == 1 and b1.shape[0] == S):
        raise ValueError(f"{op}: expected b1 of shape ({S}), got {_shape(b1)}")
    if not (b2.dim() == 1 and b2.shape[0] == C):
        raise ValueError(f"{op}: expected b2 of shape ({C}), got {_shape(b2)}")
    return S


def _check_optional_vector(op, x, name, t, size, x_name="x"):
    if t is not None:
        check_same(op, x, name, t, x_name)
        if not (t.dim() == 1 and t.shape[0] == size):
            raise ValueError(f"{op}: expected {name} of shape ({size}), got {_shape(t)}")


def check_pw_args(x, weight, bias, act, residual=None, gate=None, dtypes=None) -> int:
    """Validates mnv3::pw_conv_bn_act's arguments; returns the output channels."""
    op = "mnv3::pw_conv_bn_act"
    check_rank4(op, x)
    check_floating(op, "x", x, dtypes)
    check_same(op, x, "weight", weight)
    N, C, H, W = x.shape
    if weight.dim() < 1:
        raise ValueError(f"{op}: expected weight of shape (Cout, {C}) or (Cout, {C}, 1, 1), got {_shape(weight)}")
    cout = weight.shape[0]
    _check_matrix(op, "weight", weight, cout, C)
    _check_optional_vector(op, x, "bias", bias, cout)
    check_act(op, act)
    if residual is not None:
        check_same(op, x, "residual", residual)
        if tuple(residual.shape) != (N, cout, H, W):
            raise ValueError(f"{op}: expected residual of shape ({N}, {cout}, {H}, {W}) (the output's), "
                             f"got {_shape(residual)}")
    if gate is not None:
        if gate.device != x.device:
            raise ValueError(f"{op}: expected gate on the same device as x ({x.device}), got {gate.device}")
        if gate.dtype not in (torch.float32, x.dtype):
            raise TypeError(f"{op}: expected gate to be float32 or x's dtype ({x.dtype}), got {gate.dtype}")
        if tuple(gate.shape) != (N, C):
            raise ValueError(f"{op}: expected gate of shape ({N}, {C}) (one scale per image and input channel), "
                             f"got {_shape(gate)}")
    return cout


MAX_STEM_CHANNELS = 4  # the stem conv keeps every input channel's taps unrolled


def check_stem_args(x, weight, bias, stride, padding, act, dtypes=None) -> tuple[int, int]:
    """Validates mnv3::stem_conv's arguments; returns the output (Ho, Wo)."""
    op = "mnv3::stem_conv"
    check_rank4(op, x)
    check_floating(op, "x", x, dtypes)
    check_same(op, x, "weight", weight)
    C = x.shape[1]
    if C > MAX_STEM_CHANNELS:
        raise ValueError(f"{op}: expected an image with at most {MAX_STEM_CHANNELS} channels, got {C}")
    if not (weight.dim() == 4 and weight.shape[1] == C and weight.shape[2] == weight.shape[3]):
        raise ValueError(f"{op}: expected weight of shape (Cout, {C}, k, k) for an input with {C} channels, "
                         f"got {_shape(weight)}")
    k = weight.shape[2]
    if k not in KERNEL_SIZES:
        raise ValueError(f"{op}: expected a 3x3 or 5x5 kernel, got {k}x{k}")
    if stride not in STRIDES:
        raise ValueError(f"{op}: expected stride 1 or 2, got {stride}")
    if padding < 0:
        raise ValueError(f"{op}: expected padding >= 0, got {padding}")
    _check_optional_vector(op, x, "bias", bias, weight.shape[0])
    check_act(op, act)
    H, W = x.shape[2], x.shape[3]
    Ho, Wo = conv_output_size(H, k, stride, padding), conv_output_size(W, k, stride, padding)
    if Ho <= 0 or Wo <= 0:
        raise ValueError(f"{op}: input of spatial size {H}x{W} is too small for a {k}x{k} kernel with padding {padding}")
    return Ho, Wo


def check_se_gate_args(sums, w1, b1, w2, b2, count, dtypes=None) -> int:
    """Validates mnv3::se_gate's arguments; returns the squeeze width S."""
    op = "mnv3::se_gate"
    if sums.dim() not in (2, 3):
        raise ValueError(f"{op}: expected sums of shape (N, C) or (N, blocks, C), got {_shape(sums)}")
    if sums.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{op}: expected sums to be float32 (or float64), got {sums.dtype}")
    check_floating(op, "w1", w1, dtypes)
    for name, t in (("b1", b1), ("w2", w2), ("b2", b2)):
        check_same(op, w1, name, t, "w1")
    if w1.device != sums.device:
        raise ValueError(f"{op}: expected w1 on the same device as sums ({sums.device}), got {w1.device}")
    S = _check_se_weights(op, w1, b1, w2, b2, sums.shape[-1])
    if count <= 0:
        raise ValueError(f"{op}: expected count (the pixels summed) > 0, got {count}")
    return S


def check_head_args(pooled, w1, b1, w2, b2, act, dtypes=None) -> tuple[int, int]:
    """Validates mnv3::classifier_head's arguments; returns (hidden, classes)."""
    op = "mnv3::classifier_head"
    if pooled.dim() != 2:
        raise ValueError(f"{op}: expected pooled to be a 2-D (N, C) tensor, got a {pooled.dim()}-D tensor "
                         f"of shape {_shape(pooled)}")
    check_floating(op, "pooled", pooled, dtypes)
    check_same(op, pooled, "w1", w1, "pooled")
    check_same(op, pooled, "w2", w2, "pooled")
    C = pooled.shape[1]
    if w1.dim() < 1 or w2.dim() < 1:
        raise ValueError(f"{op}: expected w1 of shape (hidden, {C}) and w2 of shape (classes, hidden), "
                         f"got {_shape(w1)} and {_shape(w2)}")
    hidden, classes = w1.shape[0], w2.shape[0]
    _check_matrix(op, "w1", w1, hidden, C)
    _check_matrix(op, "w2", w2, classes, hidden)
    _check_optional_vector(op, pooled, "b1", b1, hidden, "pooled")
    _check_optional_vector(op, pooled, "b2", b2, classes, "pooled")
    check_act(op, act)
    return hidden, classes
