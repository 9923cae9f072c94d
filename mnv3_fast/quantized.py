"""int8 MobileNetV3 on the CPU: `mnv3_fast.quantize(model, calibration_batches)`.

Static post-training quantization (see `mnv3_fast.backends.cpu.int8` for the
scheme): per-channel int8 weights for the 1x1 convs, per-tensor uint8
activations whose ranges are observed on the calibration batches, run as one
`mnv3::run_cpu_program` call on oneDNN's int8 convolutions and the mnv3 uint8
kernels.  The result is called like the original model and returns float32
logits.  Inference only, on the CPU.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Iterable

import torch
from torch import nn

from .backends.cpu import int8
from .backends.cpu.program import HAS_ONEDNN
from .backends.cpu.threads import ThreadTiming, packed_for, run_timed
from .plan import build_plan, cast_plan
from .reference import model as ref

_run_cpu_program = torch.ops.mnv3.run_cpu_program.default


class QuantizedMobileNetV3(nn.Module):
    """An int8 MobileNetV3 (made by `mnv3_fast.quantize`); call it like the float model.

    It holds the folded float32 plan and the observed activation ranges; the
    int8 program (quantized, packed weights) is built on first use for each
    input shape and thread count.  `percentile`: the observers' clipping (100: min/max)."""

    MAX_PROGRAMS = 8  # programs kept, one per (input shape, thread count): each holds packed weights
    cpu_adaptive_threads = True  # as MobileNetV3.cpu_adaptive_threads

    def __init__(self, plan, ranges: int8.Ranges, config, percentile: float):
        super().__init__()
        self.config, self.percentile = config, percentile
        self.num_classes = config.num_classes
        self._plan, self._ranges = plan, ranges
        self._programs: OrderedDict = OrderedDict()
        self._timings: dict = {}  # the thread choice per input shape
        self._lock = threading.Lock()

    def extra_repr(self) -> str:
        mode = "LARGE" if len(self.config.blocks) == 15 else "SMALL"
        return f"{mode}, {len(self.config.blocks)} blocks, int8 (uint8 activations, percentile {self.percentile})"

    def _program(self, shape: tuple, threads: int):
        key = (shape, threads)
        with self._lock:
            program = self._programs.get(key)
            if program is not None:
                self._programs.move_to_end(key)
                return program
        with packed_for(threads):
            program = int8.encode_int8_program(self._plan, self._ranges, list(shape))
        with self._lock:
            self._programs[key] = program
            while len(self._programs) > self.MAX_PROGRAMS:
                self._programs.popitem(last=False)
        return program

    def _timing(self, shape: tuple) -> ThreadTiming:
        with self._lock:
            if len(self._timings) >= 64 and shape not in self._timings:
                self._timings.clear()
            return self._timings.setdefault(shape, ThreadTiming())

    def qparams(self) -> dict:
        """The (scale, zero point) of every quantization point, by name."""
        r = self._ranges
        out = {"stem": r.stem.qparams(), "last": r.last.qparams()}
        for i, b in enumerate(r.blocks):
            for name, obs in zip(b._fields, b):
                if obs is not None:
                    out[f"block.{i}.{name}"] = obs.qparams()
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ref._check_input(x)
        if x.device.type != "cpu":
            raise ValueError(f"QuantizedMobileNetV3 runs on the CPU, got an input on {x.device}")
        if x.shape[0] == 0:
            return x.new_empty((0, self.num_classes), dtype=torch.float32)
        x = x.float()
        shape = tuple(x.shape)
        with torch.no_grad():
            return run_timed(self._timing(shape), lambda threads: self._program(shape, threads),
                             lambda program, threads: _run_cpu_program(x, program.tensors, program.program, threads),
                             self.cpu_adaptive_threads)


def quantize(model: nn.Module, calibration_batches: Iterable[torch.Tensor], percentile: float = 99.99
             ) -> QuantizedMobileNetV3:
    """An int8 copy of `model` (a `mnv3_fast.MobileNetV3` or the reference, paper variant), calibrated
    on `calibration_batches` (an iterable of (N, 3, H, W) image batches, preprocessed as the model
    expects).  The model itself is left untouched.

    `percentile`: each activation's range is clipped to this percentile of its values (100: the full
    min/max); 99.99 keeps the rare outliers of the hard-swish layers from spending the 256 codes.
    """
    if not isinstance(model, ref.MobileNetV3):
        raise TypeError(f"mnv3_fast.quantize: expected a mnv3_fast.MobileNetV3 (use mnv3_fast.convert first for "
                        f"torchvision / timm models), got {type(model).__name__}")
    if not HAS_ONEDNN or not hasattr(torch.ops, "onednn") or not hasattr(torch.ops.onednn, "qconv2d_pointwise"):
        raise RuntimeError("mnv3_fast.quantize needs torch's oneDNN int8 ops (onednn::qconv2d_pointwise)")
    if not 50 < percentile <= 100:
        raise ValueError(f"mnv3_fast.quantize: percentile must be in (50, 100], got {percentile}")
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            plan = cast_plan(build_plan(model), torch.float32)
    finally:
        model.train(was_training)
    int8.check_quantizable(plan)
    ranges = int8.observe(plan, calibration_batches, percentile)
    return QuantizedMobileNetV3(plan, ranges, model.config, percentile)
