"""The CUDA backend: the whole eval forward on the mnv3 Triton kernels (program.py), optionally
as CUDA graphs (graphs.py, `model.cuda_graphs(True)`).

Prepared once per (dtype, device) from the folded plan and cached with it (the plan cache's
"cuda_program" entries): the weights cast and laid out for the kernels.  Each kernel's tiles
follow from the input shape by a fixed rule, so nothing else is per shape, except a captured
graph ("cuda_graph" entries, per dtype, input shape, strides and device).  Everything is
invalidated with the folded plan, by the cache's rules (any weight, buffer, hyperparameter or
submodule change).

It runs inference only: training, gradients, tracing (torch.compile, export) and float64 go to
the generic per-op path (whose new ops are triton_ops, so torch.compile sees their kernels).
Without triton (a CUDA machine where it is not installed) it says so and the generic path runs
the ops' references.
"""
from __future__ import annotations

import torch

from ... import ops
from ..base import Backend, dtype_name, folded_plan, inference_reasons, layer_reasons, model_reasons

DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _program_module():
    from . import program  # (imports triton: only once the backend is known to be usable)

    return program


class CudaBackend(Backend):
    name = "cuda"

    #: The device types it runs on.  The CPU tests add "cpu" to run the program's kernels on CPU
    #: tensors under the Triton interpreter; nothing else should.
    device_types = ("cuda",)

    def not_supported_reasons(self, model, call):
        if call.tracing:  # (first: under tracing the other checks would be traced too)
            return [f"{call.tracing}: the CUDA program's prepared weights and graphs are not traceable (the "
                    "generic path is, and its mnv3 ops show torch.compile their Triton kernels)"]
        if call.device_type not in self.device_types:
            return [f"the input is on {call.device_type}, not a CUDA device"]
        if ops.TRITON_ERROR is not None:
            return [f"{ops.TRITON_ERROR}; the mnv3 ops would run their PyTorch references"]
        reasons = []
        if call.dtype not in DTYPES:
            reasons.append(f"{dtype_name(call.dtype)}: the Triton kernels compute in float16, bfloat16 or float32 "
                           "(the generic path runs it)")
        reasons += inference_reasons(call, "the CUDA program")
        if call.empty:
            reasons.append("the batch is empty")
        if reasons:
            return reasons
        return model_reasons(model, call) + layer_reasons(model, call) + self._program_reasons(model, call)

    def _program_reasons(self, model, call) -> list[str]:
        return call.view.get_or_build("checks", "cuda_layers",
                                      lambda: _program_module().unsupported(folded_plan(model, call)))

    def program(self, model, call, device: torch.device):
        """The prepared program for the call's dtype (cached with the folded plan)."""
        def build():
            with torch.no_grad():
                return _program_module().prepare(folded_plan(model, call), call.dtype)

        return call.view.get_or_build("cuda_program", (call.dtype, device.type, device.index), build)

    def forward(self, model, x, call):
        P = _program_module()
        program = self.program(model, call, x.device)
        x = x.to(call.dtype)  # (the stem reads any layout)
        if not model.use_cuda_graphs:
            return P.forward(program, x)
        from .graphs import CapturedForward, graph_key

        graphed = call.view.get_or_build("cuda_graph", graph_key(x, call.dtype),
                                         lambda: CapturedForward(lambda t: P.forward(program, t), x))
        return graphed(x)

    def stages(self, model, x, call):
        program = self.program(model, call, x.device)
        yield from _program_module().stages(program, x.to(call.dtype))

    def head(self, model, features, call):
        program = self.program(model, call, features.device)
        return _program_module().head(program, features.to(call.dtype).mean(dim=(2, 3)))
