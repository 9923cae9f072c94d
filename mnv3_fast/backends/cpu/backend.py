"""The CPU program backend: a whole eval forward as one `mnv3::run_cpu_program`
call over the packed plan (see program.py), built once per (dtype, input
shape) and cached with the folded weights.  The stem conv reads the image in
any layout; activations stay channels_last.

A large batch runs in chunks whose largest layer (input plus output
activations) fits in `model.cpu_chunk_bytes`, so each layer's activations stay
in the caches instead of going through DRAM (measured on a 2-core EPYC with
32 MiB of L3: Large at batch 32 runs 25-35% faster per image in chunks of 4-8
than whole).  Near-equal chunks: at most two sizes to pack weights for.
"""
from __future__ import annotations

from typing import Optional

import torch

from ...ops import cpu_program as isa
from ..base import Backend, dtype_name, folded_plan, inference_reasons, layer_reasons, model_reasons
from ..generic import GenericBackend
from .program import HAS_ONEDNN, HAS_ONEDNN_BF16, CpuProgram, activation_peak, encode_program, pack_plan
from .threads import ThreadTiming, packed_for, run_timed

_run_cpu_program = torch.ops.mnv3.run_cpu_program.default  # (resolved once: per-call Python cost matters at batch 1)
DTYPES = (torch.float32, torch.bfloat16)


class CpuProgramBackend(Backend):
    name = "cpu_program"
    remembers_calls = True  # (its checks and programs depend on the model's state and call_signature only)

    def not_supported_reasons(self, model, call):
        if call.tracing:  # (first: under tracing the other checks would be traced too)
            return [f"{call.tracing}: the program's packed weights are not traceable "
                    "(the generic path folds the weights in the traced graph instead)"]
        reasons = []
        if call.device_type != "cpu":
            reasons.append(f"the input is on {call.device_type}, not the CPU")
        if not HAS_ONEDNN:
            reasons.append("this torch is built without oneDNN (torch.backends.mkldnn)")
        if call.dtype not in DTYPES:
            reasons.append(f"{dtype_name(call.dtype)}: the CPU program runs float32 and bfloat16")
        elif call.device_type == "cpu" and call.dtype == torch.bfloat16 and HAS_ONEDNN and not HAS_ONEDNN_BF16:
            reasons.append("bfloat16: oneDNN has no bf16 convolutions on this CPU (they need AVX512-BW/VL/DQ or "
                           "AVX-NE-CONVERT); float32 is the fast precision here")
        reasons += inference_reasons(call, "the program")
        if call.empty:
            reasons.append("the batch is empty (oneDNN cannot pack weights for it)")
        if reasons:
            return reasons
        return model_reasons(model, call) + layer_reasons(model, call)

    def program(self, model, x, call, threads: Optional[int] = None) -> CpuProgram:
        """The program for inputs like `x`, packed for running on `threads` threads (default: torch's
        setting; threads.py says why it matters)."""
        threads = threads or torch.get_num_threads()

        def build():
            with torch.no_grad(), packed_for(threads):
                params = folded_plan(model, call._replace(dtype=torch.float32)) if call.dtype != torch.float32 else None
                return encode_program(pack_plan(folded_plan(model, call), list(x.shape), params))

        return call.view.get_or_build("cpu_program", (call.dtype, x.shape, threads), build)

    def chunks(self, model, x, call) -> int:
        """In how many chunks to run the batch (see `MobileNetV3.cpu_chunk_bytes`)."""
        if not model.cpu_chunk_bytes or x.shape[0] <= 1:
            return 1
        peak = call.view.get_or_build("cpu_peak", tuple(x.shape[1:]),
                                      lambda: activation_peak(folded_plan(model, call), list(x.shape[1:])))
        images = max(1, model.cpu_chunk_bytes // (peak * call.dtype.itemsize))
        return -(-x.shape[0] // images)

    def forward(self, model, x, call):
        # The stem reads any layout, and a float32 image as it is (bfloat16 autocast): no conversion pass.
        if x.dtype != call.dtype and x.dtype != torch.float32:
            x = x.to(call.dtype)
        chunks = self.chunks(model, x, call)
        if chunks == 1:
            y = self._run(model, x, call)
        else:
            y = torch.cat([self._run(model, part, call) for part in x.tensor_split(chunks)])
        return y if y.dtype == call.dtype else y.to(call.dtype)  # (the program answers in x's dtype)

    def _run(self, model, x, call):
        timing = call.view.get_or_build("cpu_timing", (call.dtype, x.shape), ThreadTiming)
        return run_timed(timing, lambda threads: self.program(model, x, call, threads),
                         lambda program, threads: _run_cpu_program(x, program.tensors, program.program, threads),
                         model.cpu_adaptive_threads)

    def stages(self, model, x, call):
        x = x.to(call.dtype)
        program = self.program(model, x, call)
        stages = isa.interpret(x, program.tensors, program.program)
        for _ in range(program.stages):  # (stop before the pooling and the head)
            yield next(stages)

    head = GenericBackend.head
