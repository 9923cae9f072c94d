"""What every backend shares: the facts about one call (`Call`), the backend
interface (`Backend`), and the checks every fused backend makes.

A backend decides for itself whether it can run a call: `not_supported_reasons`
returns the reasons it cannot, in words a user can act on (an empty list: it
can).  The model asks the backends of the input's device in priority order
(`mnv3_fast.backends.PRIORITY`) and runs the first with no reasons;
`model.explain(x)` shows the choice and the reasons of every backend passed over.
"""
from __future__ import annotations

from typing import Iterator, NamedTuple, Optional

import torch

from ..plan import Plan, UnsupportedModule, build_plan, cast_plan, check_supported
from ..plan.cache import CacheView, build_without_grad, module_path
from ..reference import model as ref


class Call(NamedTuple):
    """The facts about one forward call that decide which backend runs it."""

    device_type: str
    empty: bool  # the input has no elements
    dtype: torch.dtype  # what the layers compute in: the weights' dtype, or autocast's
    tracing: Optional[str]  # "torch.compile", "torch.jit.trace", "ONNX export" or None
    training: bool  # the model is in train mode
    grad: bool  # autograd must flow through this call (to the input or to a weight)
    weights_need_grad: bool  # ... to a weight: folds must be recomputed differentiably
    # (last: backends.run_shortcut rebuilds a remembered call from the fields before it and its own view)
    view: Optional[CacheView]  # the cache, as valid for this call (None while tracing: nothing is cached)


def _tracing() -> Optional[str]:
    # (Two cheap checks first: this runs on every call.  The dynamo ONNX exporter traces with
    # torch.export, which is_compiling() covers, the TorchScript one with torch.jit.trace.)
    if torch.compiler.is_compiling():
        return "ONNX export" if torch.onnx.is_in_onnx_export() else "torch.compile"
    if torch._C._is_tracing():  # (torch.jit.is_tracing without its Python layer)
        return "ONNX export" if torch.onnx.is_in_onnx_export() else "torch.jit.trace"
    return None


def compute_dtype(model: ref.MobileNetV3, x: torch.Tensor, weight: Optional[torch.Tensor] = None) -> torch.dtype:
    """The dtype the layers compute in; a clear error where eager PyTorch would raise a dtype mismatch.
    `weight`: the stem conv's weight, when the caller has it at hand."""
    weight = model.init_conv[0].weight if weight is None else weight
    if weight.device.type != x.device.type or (x.device.index is not None and weight.device != x.device):
        raise ValueError(f"MobileNetV3: the input is on {x.device} but the model's weights are on {weight.device}; "
                         f"move one of them (x.to({str(weight.device)!r}) or model.to({str(x.device)!r}))")
    if weight.dtype == torch.float32 and torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)  # as eager: the convs run in autocast's dtype
    if x.dtype != weight.dtype:
        raise TypeError(f"MobileNetV3: the input is {str(x.dtype).replace('torch.', '')} but the model's weights are "
                        f"{str(weight.dtype).replace('torch.', '')}; convert one of them (x.to({weight.dtype}) or "
                        f"model.to({x.dtype})), or run under torch.autocast")
    return weight.dtype


def make_call(model, x: torch.Tensor, view: Optional[CacheView] = None) -> Call:
    """The facts about calling `model(x)`; `view`: the cache as read for this call, where the caller
    has read it (the read costs ~0.1 ms at batch 1)."""
    tracing = _tracing()
    if tracing:
        view = None
    elif view is None:
        view = model._plans.view(model, validate=model.validate_cache)
    grad_mode = torch.is_grad_enabled()
    if view is not None:
        weights_grad = grad_mode and view.state.requires_grad
    else:
        weights_grad = grad_mode and any(p.requires_grad for p in model.parameters())
    return Call(x.device.type, x.numel() == 0, compute_dtype(model, x, view and view.state.first_parameter), tracing, model.training,
                weights_grad or (grad_mode and x.requires_grad), weights_grad, view)


def model_reasons(model, call: Call) -> list[str]:
    """Why no fused path can run this model as it is (hooks, a submodule in train mode), from the
    state the cache read; nothing while tracing (nothing was read)."""
    if call.view is None:
        return []
    reasons = []
    state = call.view.state
    if state.hooked is not None:
        reasons.append(f"{module_path(model, state.hooked)} has forward or backward hooks, which only the "
                       "module-by-module reference path calls")
    if state.training is not None and not call.training:
        reasons.append(f"{module_path(model, state.training)} is in train mode while the model is in eval mode "
                       "(folding assumes eval-mode BatchNorm)")
    return reasons


def inference_reasons(call: Call, program: str) -> list[str]:
    """Why an inference-only program (one without autograd) cannot run this call."""
    reasons = []
    if call.training:
        reasons.append(f"the model is in train mode ({program} is inference only)")
    if call.grad:
        reasons.append("gradients are needed (grad mode is on and the input or a weight requires grad), "
                       f"and {program} has no autograd")
    return reasons


def folded_plan(model, call: Call) -> Plan:
    """The BN-folded plan in the call's dtype: cached, except while tracing (the folds are traced) or
    when gradients must reach the weights (the folds are recomputed differentiably)."""
    if call.view is None or call.weights_need_grad:
        plan = build_plan(model)
        return plan if plan.stem.weight.dtype == call.dtype else cast_plan(plan, call.dtype)
    return call.view.get_or_build("folded", call.dtype,
                                  build_without_grad(lambda: cast_plan(build_plan(model), call.dtype)))


def _unsupported(model) -> str:
    try:
        check_supported(model)
    except UnsupportedModule as exc:
        return str(exc)
    return ""


def layer_reasons(model, call: Call) -> list[str]:
    """Why the fused kernels cannot compute the model's layers (an activation no kernel applies, say);
    checked once per model state.  Nothing while tracing: build_plan then raises itself, if it must."""
    if call.view is None:
        return []
    reason = call.view.get_or_build("checks", "layers", lambda: _unsupported(model))
    return [reason] if reason else []


class Backend:
    """A way to run the model.  Subclasses say why they cannot run a call and run it."""

    name = "backend"
    #: Whether the model may skip choosing (`mnv3_fast.backends.run_shortcut`) for a call like one this
    #: backend ran: true only where the choice, and what the backend prepares, depend on nothing but the
    #: model's state (the cache key) and `call_signature`.
    remembers_calls = False

    def not_supported_reasons(self, model, call: Call) -> list[str]:
        raise NotImplementedError

    def stages(self, model, x: torch.Tensor, call: Call) -> Iterator[tuple[torch.Tensor, int]]:
        """Yields (output, stride) after the stem, each block and the last stage."""
        raise NotImplementedError

    def head(self, model, features: torch.Tensor, call: Call) -> torch.Tensor:
        """Pooling and the classifier on `forward_features`' output."""
        raise NotImplementedError

    def forward(self, model, x: torch.Tensor, call: Call) -> torch.Tensor:
        for features, _ in self.stages(model, x, call):
            pass
        return self.head(model, features, call)

    def __repr__(self):
        return f"<mnv3_fast backend {self.name!r}>"


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


__all__ = ["Backend", "Call", "compute_dtype", "dtype_name", "folded_plan", "inference_reasons", "make_call",
           "model_reasons", "layer_reasons"]
