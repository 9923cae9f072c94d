"""The drop-in fast MobileNetV3: the reference model's modules and weights, run
by the fastest backend that can run each call.

`MobileNetV3` subclasses `mnv3_fast.reference.MobileNetV3`, so it has the same
constructor, parameters, buffers and state_dict keys; only the forward differs.
Each call goes to the first backend of the input's device that can run it
(`mnv3_fast.backends.PRIORITY`): on the CPU the whole eval forward as one
`mnv3::run_cpu_program` call; on CUDA the mnv3 ops' Triton kernels; anywhere
the generic per-op path (also under torch.compile, with gradients, in train
mode); the reference modules for ONNX export, hooks, and what no kernel
computes.  `model.explain(x)` says which and why.

The folded weights and everything a backend prepares from them are cached
per model (`mnv3_fast.plan.cache`), and re-validated on every call, so a
changed weight, buffer, hyperparameter or submodule is never served stale.
"""
from __future__ import annotations

import torch

from . import backends
from .plan import PlanCache
from .reference import model as ref


class MobileNetV3(ref.MobileNetV3):
    """MobileNetV3 on fused kernels; a drop-in for `mnv3_fast.reference.MobileNetV3`.

    Same arguments (`model_mode`, `num_classes`, `multiplier`, `dropout_rate`,
    `variant`, or an explicit `config`), same state_dict.  Use `model.eval()`
    for inference; `model.to(memory_format=torch.channels_last)` with
    channels_last inputs is the fast layout on GPU.  The input must have the
    weights' dtype, or run under `torch.autocast` (as in eager PyTorch).
    """

    #: CPU: a batch runs in chunks whose largest layer (input plus output activations) fits in this
    #: many bytes, so that activations stay in the caches; 0 runs the batch whole.
    cpu_chunk_bytes: int = 20 * 2**20
    #: CPU: each forward runs on all of torch's threads or on one, whichever its recent calls say is
    #: faster (on a machine where another process takes a core, OpenMP threads stall each other; see
    #: mnv3_fast/backends/cpu/threads.py).  False: always torch's setting.
    cpu_adaptive_threads: bool = True
    #: Every call re-checks the model's state (modules, hyperparameters, parameters and buffers: their
    #: identity, version and, on the CPU, content) so that no cached fold is ever stale; measured on a
    #: 2-vCPU Xeon, 0.05-0.1 ms per call after a batch-1 forward has cooled the caches (Small to
    #: Large; Python 3.13+ walks the whole model instead, 0.14-0.21 ms on 3.11).  False skips it: only for a
    #: model that no longer changes (deployment); after a change, call clear_fused_cache().
    validate_cache: bool = True

    #: CUDA: run each eval forward as a captured CUDA graph (see `cuda_graphs`).
    use_cuda_graphs: bool = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._plans = PlanCache()

    def cuda_graphs(self, enabled: bool = True) -> "MobileNetV3":
        """On CUDA, run `model(x)` as a CUDA graph, captured once per (dtype, input shape and strides,
        device) after two warm-up forwards, then replayed: one launch instead of ~50, for small
        batches where launching dominates.  Only the CUDA backend's eval forward (no grad) uses it.

        The result is the graph's own output buffer: the next call with the same input shape
        overwrites it.  Use `model(x).clone()` to keep one.  Replays are not thread-safe.
        Graphs are dropped with the cached weights when a weight changes.  Returns the model."""
        self.use_cuda_graphs = bool(enabled)
        return self

    # -- the cache ----------------------------------------------------------

    def clear_fused_cache(self) -> None:
        """Drops the cached folded weights and programs.  Needed only after a write the cache cannot
        see (see `mnv3_fast.plan.cache`): a few elements of a large weight written through `.data`,
        or CUDA weights written without bumping their version counter."""
        self._plans.clear()

    def train(self, mode: bool = True):
        self._plans.clear()  # (train mode uses none of it; frees the memory)
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):  # .to(), .cuda(), .half(), ...
        self._plans.clear()
        return super()._apply(fn, *args, **kwargs)

    # -- choosing a backend -------------------------------------------------

    def _call(self, x: torch.Tensor, image: bool = True, view=None):
        """The facts that choose a backend for this call, and that backend."""
        if image:
            ref._check_input(x)
        call = backends.make_call(self, x, view)
        return call, backends.select(self, call)

    def explain(self, x: torch.Tensor) -> backends.Explanation:
        """Which backend `model(x)` would run, and why each faster one for x's device would not
        (a list of reasons each).  `print(model.explain(x))` shows it; nothing is computed."""
        ref._check_input(x)
        return backends.explain(self, backends.make_call(self, x))

    # -- forward ------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, view = backends.run_shortcut(self, x)  # (a call like an earlier one, on an unchanged model)
        if out is not None:
            return out
        call, backend = self._call(x, view=view)
        out = backend.forward(self, x, call)
        backends.remember(self, x, call, backend)
        return out

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The feature map before global pooling (the output of `out_conv1`)."""
        call, backend = self._call(x)
        for features, _ in backend.stages(self, x, call):
            pass
        return features

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Global average pooling and the classifier on `forward_features`' output."""
        call, backend = self._call(features, image=False)
        return backend.head(self, features, call)

    def feature_maps(self, x: torch.Tensor) -> list:
        """Features at total strides 2, 4, 8, 16 and 32, as `reference.MobileNetV3.feature_maps`."""
        call, backend = self._call(x)
        by_stride, total = {}, 1
        for out, stride in backend.stages(self, x, call):
            total *= stride
            by_stride[total] = out
        return [by_stride[s] for s in (2, 4, 8, 16, 32) if s in by_stride]


def mobilenet_v3_large(**kwargs) -> MobileNetV3:
    """Fast MobileNetV3-Large; keyword arguments as for `MobileNetV3`."""
    return MobileNetV3(model_mode="LARGE", **kwargs)


def mobilenet_v3_small(**kwargs) -> MobileNetV3:
    """Fast MobileNetV3-Small; keyword arguments as for `MobileNetV3`."""
    return MobileNetV3(model_mode="SMALL", **kwargs)
