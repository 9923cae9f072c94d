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
"""
from __future__ import annotations

import logging
from typing import NamedTuple

from .base import Backend, Call, make_call
from .cpu import CpuProgramBackend
from .cuda import CudaBackend
from .generic import GenericBackend
from .reference import ReferenceBackend

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


def explain(model, call: Call) -> Explanation:
    passed = {}
    for backend in PRIORITY.get(call.device_type, DEFAULT_PRIORITY):
        reasons = backend.not_supported_reasons(model, call)
        if not reasons:
            return Explanation(backend.name, passed)
        passed[backend.name] = reasons
    raise AssertionError("the reference backend runs anything")


__all__ = ["Backend", "Call", "Explanation", "PRIORITY", "DEFAULT_PRIORITY", "CPU_PROGRAM", "CUDA", "GENERIC",
           "REFERENCE", "explain", "make_call", "select"]
