"""The per-model cache of folded plans and of what backends prepare from them.

Validity.  Every entry was computed from the model's modules, parameters and
buffers as they were; it is valid while nothing the fold reads has changed.
A cached answer must never be stale, so on every call `PlanCache.view` checks
the model's state and drops every entry if it changed.  The state covers:

* the module tree: every module object, its class, its train/eval flag, the
  hyperparameters the fold reads (conv stride/padding/dilation/groups, BN
  eps/affine/track_running_stats), so replaced submodules (activations
  included), `functional_call` and `bn.eps = ...` are seen;
* every parameter and buffer, read from the modules' own dicts (so direct
  `module._parameters[...] = t` assignments are seen): its identity, version
  counter, storage address, shape, dtype and requires_grad;
* their content, for CPU tensors: read whole up to 4 KiB (BN statistics and
  affine parameters, biases), else 8 samples spread over the tensor.  This is
  what catches writes that bypass the version counter: through `tensor.data`,
  or by fused optimizer kernels (`torch.optim.AdamW(..., fused=True)` does not
  bump versions).

What cannot be seen cheaply: a write that bypasses the version counter and
changes none of the sampled elements of a large weight (a few elements of a
conv weight written through `.data`), and such writes to CUDA tensors (their
content is not read: that would synchronize).  After those, call
`model.clear_fused_cache()`.

How it is checked.  A walk over the module tree (`read_state`) hashes all of
the above into the cache key; it runs in C++ (`mnv3_fast._C.model_state`, ~10x
faster than `read_state_python`, its Python twin, which runs without the
extension and reads no content).  The C++ walk also leaves a snapshot of what
it read, and later calls only re-check that (`_C.state_unchanged`): each
module's type and __dict__, whether any of the walked dicts (module __dict__s,
_parameters, _buffers, _modules, hook dicts) was modified since (dict version
tags up to Python 3.11, dict watchers on 3.12), and each tensor's digest as
above.  That is flat loops instead of a chain of dict lookups: right after a
batch-1 forward on a 2-vCPU Xeon, 50-80 us instead of 135-210.  A changed
state falls back to the walk.  On Python 3.13+ an attribute set writes the
object's inline values without telling the dict's watchers, so there is no
snapshot and every call walks.

Bounds.  Each kind of entry has its own bound (`BOUNDS`), least recently used
first out, so that many input shapes (programs) cannot push out the folded
plans.  A CPU program holds a copy of the weights packed for its input shape
(~10 MB for Small, ~22 MB for Large in fp32), so at most 8 are kept.  The
cache belongs to the model and goes with it; when programs are evicted or
dropped, the freed memory is handed back to the OS (glibc keeps it otherwise:
measured, 200 input sizes left +240 MiB of RSS for Small, +56 MiB after
trimming and deleting the model, the rest being oneDNN's own process-wide
primitive cache, which eager PyTorch fills too).  It is thread-safe:
concurrent forwards on one model may build an entry twice, never corrupt it.
"""
from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from typing import Any, Callable, NamedTuple, Optional

import torch
from torch import nn
from torch.nn.modules import module as _module

from ..ops._library import EXTENSION_ERROR

if EXTENSION_ERROR is None:
    from .. import _C
else:
    _C = None


def _malloc_trim():
    """glibc's malloc_trim, or nothing where there is none."""
    try:
        import ctypes

        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return lambda: None
    return lambda: trim(0)


release_memory = _malloc_trim()  # hands freed heap memory back to the OS
# The attributes of each module type that the fold reads (beyond its parameters and buffers).
HYPERPARAMETERS = {
    nn.Conv2d: ("stride", "padding", "dilation", "groups", "padding_mode"),
    nn.BatchNorm2d: ("eps", "affine", "track_running_stats"),
}
_HYPERPARAMETERS_BY_NAME = {kind: tuple(sys.intern(n) for n in names) for kind, names in HYPERPARAMETERS.items()}
# The module types whose output depends on train/eval mode (an activation left in train mode is harmless).
MODE_SENSITIVE = {nn.BatchNorm2d: True, nn.Dropout: True}
_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


class ModelState(NamedTuple):
    """What one read of a model found."""

    key: Optional[int]  # equal keys: nothing the fold reads changed; None: don't cache (inference tensors)
    requires_grad: bool  # some parameter or buffer requires grad
    hooked: Optional[nn.Module]  # a submodule with forward/backward hooks (or the model: global hooks)
    training: Optional[nn.Module]  # a submodule in train mode whose output depends on it (BN, dropout)
    keep_alive: list  # every submodule, parameter and buffer: held with the key, so the ids it hashed stay unique
    snapshot: Any = None  # what the C++ walk read, for its cheap re-check (_C.state_unchanged); valid with keep_alive

    @property
    def first_parameter(self) -> Optional[torch.Tensor]:
        """The first parameter in module order (a MobileNetV3's stem conv weight)."""
        return next((t for t in self.keep_alive if isinstance(t, torch.Tensor)), None)


def read_state_python(model: nn.Module) -> ModelState:
    """Walks the module tree once, through the modules' own __dict__s (see the module docstring
    for what it reads).  `read_state` is this walk in C++ when the extension is loaded (~10x
    faster); this one runs without it, and reads no tensor content."""
    structure, tensors, keep = [], [], []
    hooked = training = None
    stack = [model]
    while stack:
        m = stack.pop()
        if m is None:  # (a submodule slot set to None)
            structure.append(None)
            continue
        d = m.__dict__
        kind = type(m)
        if m is not model:  # (the cache the model owns must not keep it alive)
            structure.append(id(m))
            keep.append(m)
        structure += (kind, d["training"])
        names = HYPERPARAMETERS.get(kind)
        if names is not None:
            structure.append(tuple(d.get(name) for name in names))
        for group in (d["_parameters"], d["_buffers"]):
            tensors.extend(group.values())
            structure.append(len(group))
        if m is not model:
            if hooked is None and any(d[name] for name in _HOOK_DICTS):
                hooked = m
            if training is None and d["training"] and kind in MODE_SENSITIVE:
                training = m
        stack.extend(reversed(d["_modules"].values()))  # (visited in module order)
    parts, requires_grad = [], False
    for t in tensors:
        if t is not None:
            if t.is_inference():
                return ModelState(None, False, hooked, training, [])
            requires_grad = requires_grad or t.requires_grad
            parts.append((id(t), t._version, t.requires_grad, t.dtype, tuple(t.shape),
                          t.data_ptr() if t.numel() else 0))
    return ModelState(hash((tuple(structure), tuple(parts))), requires_grad, hooked, training, keep + tensors)


def _read_model(model: nn.Module) -> ModelState:
    """The walk: in C++ when the extension is loaded, else in Python.  Global hooks not included."""
    if _C is None:
        return read_state_python(model)
    key, requires_grad, cacheable, hooked, training, keep, snapshot = _C.model_state(
        model, _HYPERPARAMETERS_BY_NAME, MODE_SENSITIVE)
    return ModelState(key if cacheable else None, requires_grad, hooked, training, keep, snapshot)


def _with_global_hooks(state: ModelState, model: nn.Module) -> ModelState:
    if state.hooked is None and (_module._global_forward_hooks or _module._global_forward_pre_hooks
                                 or _module._global_backward_hooks or _module._global_backward_pre_hooks):
        return state._replace(hooked=model)  # (global module hooks; spelled out: this runs on every call)
    return state


def read_state(model: nn.Module) -> ModelState:
    """One read of everything the fold reads (the C++ walk when the extension is loaded)."""
    return _with_global_hooks(_read_model(model), model)


def module_path(model: nn.Module, target: nn.Module) -> str:
    """The qualified name of `target` inside `model`, for messages."""
    if target is model:
        return "every module (global module hooks are registered)"
    return next((name for name, m in model.named_modules() if m is target), type(target).__name__)


class PlanCache:
    """Entries by kind, each kind with its own bound; see the module docstring."""

    #: Most entries kept per kind (least recently used first out).  "folded": BN-folded plans, one per
    #: dtype; "cpu_program": packed, encoded CPU programs, one per (dtype, input shape, thread count),
    #: each holding a copy of the weights; "cpu_timing": the thread choice per (dtype, input shape);
    #: "cpu_peak": the activation peak per image shape (a number).
    #: "checks": per-state answers of the backends' checks (strings).
    #: "cuda_program": the CUDA backend's prepared weights, one per (dtype, device); "cuda_graph": its
    #: captured CUDA graphs, one per (dtype, input shape and strides, device), each holding its buffers.
    #: "shortcut": which backend ran a kind of call, per call signature (mnv3_fast.backends.run_shortcut).
    BOUNDS = {"folded": 4, "cpu_program": 8, "cpu_timing": 64, "cpu_peak": 64, "checks": 8, "cuda_program": 4,
              "cuda_graph": 4, "shortcut": 16}
    #: Kinds whose entries are big: memory is handed back to the OS when they go.
    BIG = {"cpu_program"}

    def __init__(self):
        self._lock = threading.Lock()
        self._key = None
        self._state: Optional[ModelState] = None  # the state read last
        self._keep_alive: list = []
        self._entries: dict[str, OrderedDict] = {}

    def view(self, model: nn.Module, validate: bool = True) -> "CacheView":
        """Checks the model's state and returns the entries valid for it: a cheap re-check of what the
        last walk read where the extension has one (`_C.state_unchanged`), else a new walk.
        validate=False reuses the state read last (if any) without checking: see
        MobileNetV3.validate_cache."""
        last = self._state  # (global hooks are not part of it: they are looked at on every call)
        if last is not None and (not validate or (last.snapshot is not None
                                                  and _C.state_unchanged(model, last.snapshot))):
            return CacheView(self, _with_global_hooks(last, model))
        state = _read_model(model)
        with self._lock:
            if state.key is None or state.key != self._key:
                self._key, self._keep_alive, self._entries = state.key, state.keep_alive, {}
            self._state = state if state.key is not None else None
        return CacheView(self, _with_global_hooks(state, model))

    def clear(self) -> None:
        with self._lock:
            held_big = any(self._entries.get(kind) for kind in self.BIG)
            self._key, self._keep_alive, self._entries, self._state = None, [], {}, None
        if held_big:
            release_memory()

    def __del__(self):
        if any(self._entries.get(kind) for kind in self.BIG):
            self._entries = {}
            release_memory()

    def sizes(self) -> dict[str, int]:
        """How many entries of each kind are held."""
        with self._lock:
            return {kind: len(entries) for kind, entries in self._entries.items()}

    def _get(self, key, kind: str, entry):
        with self._lock:
            if key is None or key != self._key:
                return None
            entries = self._entries.get(kind)
            if entries is None or entry not in entries:
                return None
            entries.move_to_end(entry)
            return entries[entry]

    def _put(self, key, kind: str, entry, value) -> None:
        bound = self.BOUNDS.get(kind)
        if bound is None:
            raise KeyError(f"PlanCache: unknown kind {kind!r}; add it to PlanCache.BOUNDS")
        with self._lock:
            if key is None or key != self._key:  # the model changed meanwhile: don't keep it
                return
            entries = self._entries.setdefault(kind, OrderedDict())
            entries[entry] = value
            entries.move_to_end(entry)
            evicted = [entries.popitem(last=False) for _ in range(len(entries) - bound)]
        if evicted and kind in self.BIG:
            del evicted
            release_memory()

    def __reduce__(self):  # copies and pickles of the model start with an empty cache
        return (PlanCache, ())


class CacheView:
    """The cache as valid for one state of the model (one call)."""

    def __init__(self, cache: PlanCache, state: ModelState):
        self._cache, self.state = cache, state

    def lookup(self, kind: str, entry):
        """The cached entry, or None."""
        return self._cache._get(self.state.key, kind, entry)

    def remember(self, kind: str, entry, value) -> None:
        """Caches `value` (unless the model changed meanwhile)."""
        self._cache._put(self.state.key, kind, entry, value)

    def get_or_build(self, kind: str, entry, build: Callable[[], Any]):
        """The cached entry, or `build()` (then cached, unless the model changed meanwhile)."""
        value = self.lookup(kind, entry)
        if value is None:
            value = build()
            self.remember(kind, entry, value)
        return value


def build_without_grad(build: Callable[[], Any]) -> Callable[[], Any]:
    """`build` run under no_grad: cached entries must not hold autograd graphs."""

    def run():
        with torch.no_grad():
            return build()

    return run
