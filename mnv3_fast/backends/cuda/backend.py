"""The CUDA backend.  For now it is the generic per-op path on CUDA tensors,
where the mnv3 ops run as their Triton kernels (mnv3_fast/ops/triton) beside
cuDNN's convolutions; it needs triton.  Without triton the generic backend
runs the same network on the ops' PyTorch references."""
from __future__ import annotations

from ... import ops
from ..generic import GenericBackend


class CudaBackend(GenericBackend):
    name = "cuda"

    def not_supported_reasons(self, model, call):
        reasons = []
        if call.device_type != "cuda":
            reasons.append(f"the input is on {call.device_type}, not a CUDA device")
        elif ops.TRITON_ERROR is not None:
            reasons.append(f"{ops.TRITON_ERROR}; the mnv3 ops would run their PyTorch references")
        return reasons + super().not_supported_reasons(model, call)
