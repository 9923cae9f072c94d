"""Backends: the ways to run a MobileNetV3, side by side, each deciding for itself.

    reference model --fold--> plan --> backend (cpu_program | cuda | generic | reference) --> model

Each backend (base.Backend) says why it cannot run a call
(`not_supported_reasons`: a list of reasons in words; empty means it can),
prepares what it needs once through the model's cache, and runs the forward,
the stages (`forward_features`, `feature_maps`) and the head.  Per device,
`PRIORITY` lists them fastest first; the model runs the first with no
reasons, and `model.explain(x)` shows the choice and why the faster ones
passed.

To add a backend: write it in its own module or folder (a `Backend` subclass
with a `name`), and put an instance into `PRIORITY` for its device.

Choosing costs Python time: at batch 1 on the CPU, ~0.15 ms of a 1.5-2.5 ms
forward once a forward has cooled the caches.  So a backend that says so
(`remembers_calls`) has its choice remembered per `call_signature` in the
model's cache (dropped with everything else when the model changes), and the
next call like it runs that backend at once (`run_shortcut`).
"""
from __future__ import annotations

import logging
from typing import NamedTuple, Optional

import torch

from ..ops._library import EXTENSION_ERROR
from .base import Backend, Call, _tracing, make_call
from .cpu import CpuProgramBackend
from .cuda import CudaBackend
from .generic import GenericBackend
from .reference import ReferenceBackend

if EXTENSION_ERROR is None:
    from .. import _C
else:
    _C = None

CPU_PROGRAM = CpuProgramBackend()
CUDA = CudaBackend()
GENERIC = GenericBackend()
REFERENCE = ReferenceBackend()

#: Backends by device type, fastest first.  The reference backend runs anything, so it ends each list.
PRIORITY = {
    "cpu": (CPU_PROGRAM, GENERIC, REFERENCE),
    "cuda": (CUDA, GENERIC, REFERENCE),
}
DEFAULT_PRIORITY = (GENERIC, REFERENCE)

_log = logging.getLogger("mnv3_fast")


class Explanation(NamedTuple):
    """Which backend runs a call, and why every faster one passed."""

    backend: str
    passed_over: dict  # backend name -> its reasons

    def __str__(self):
        lines = [f"runs on the {self.backend!r} backend"]
        for name, reasons in self.passed_over.items():
            lines.append(f"  not {name!r}:")
            lines += [f"    - {reason}" for reason in reasons]
        return "\n".join(lines)


def select(model, call: Call) -> Backend:
    """The first backend of the call's device that can run it."""
    candidates = PRIORITY.get(call.device_type, DEFAULT_PRIORITY)
    for i, backend in enumerate(candidates):
        reasons = backend.not_supported_reasons(model, call)
        if not reasons:
            if i and not call.tracing and _log.isEnabledFor(logging.DEBUG):
                _log.debug("mnv3_fast: %s", explain(model, call))
            return backend
    raise AssertionError("the reference backend runs anything")  # (unreachable: REFERENCE has no reasons)


def _call_key(x: torch.Tensor, weights_require_grad: bool) -> tuple:
    """What of the input and of the thread's state the choice depends on (the extension's `call_key`
    reads the same in one call)."""
    device = x.device.type
    autocast = torch.is_autocast_enabled(device)
    return (x.shape, x.dtype, x.device, torch.is_grad_enabled() and (x.requires_grad or weights_require_grad),
            autocast and torch.get_autocast_dtype(device), torch.get_num_threads())


call_key = _call_key if _C is None else _C.call_key


def call_signature(model, x: torch.Tensor, state, device: Optional[str] = None) -> tuple:
    """Everything besides the model's state (the cache key) that the choice of a backend, and what the
    CPU backend prepares, depend on: the input's shape, dtype and device, grad, autocast, torch's thread
    count (`call_key`), the model's CPU settings, hooks (not part of the key) and the priority list
    itself.  `device`: x's device type, where the caller has it."""
    return (call_key(x, state.requires_grad), model.cpu_chunk_bytes, model.cpu_adaptive_threads,
            state.hooked is None, PRIORITY.get(device or x.device.type, DEFAULT_PRIORITY))


def run_shortcut(model, x) -> tuple[Optional[torch.Tensor], Optional[object]]:
    """`model(x)` on the backend that ran the last call like it, if the model has not changed since;
    returns (the output or None, the cache view this call read, for the full path to reuse)."""
    if type(x) is not torch.Tensor or _tracing():
        return None, None  # (the full path says what is wrong with an odd input)
    device = x.device.type
    if device not in PRIORITY:
        return None, None
    view = model._plans.view(model, validate=model.validate_cache)
    if view.state.key is None:
        return None, view
    found = view.lookup("shortcut", call_signature(model, x, view.state, device))
    if found is None:
        return None, view
    backend, facts = found
    return backend.forward(model, x, Call(*facts, view)), view


def remember(model, x: torch.Tensor, call: Call, backend: Backend) -> None:
    """Lets later calls like this one run `backend` at once (where it says they may)."""
    if backend.remembers_calls and call.view is not None and call.view.state.key is not None:
        call.view.remember("shortcut", call_signature(model, x, call.view.state), (backend, call[:-1]))


def explain(model, call: Call) -> Explanation:
    passed = {}
    for backend in PRIORITY.get(call.device_type, DEFAULT_PRIORITY):
        reasons = backend.not_supported_reasons(model, call)
        if not reasons:
            return Explanation(backend.name, passed)
        passed[backend.name] = reasons
    raise AssertionError("the reference backend runs anything")


__all__ = ["Backend", "Call", "Explanation", "PRIORITY", "DEFAULT_PRIORITY", "CPU_PROGRAM", "CUDA", "GENERIC",
           "REFERENCE", "call_signature", "explain", "make_call", "remember", "run_shortcut", "select"]
