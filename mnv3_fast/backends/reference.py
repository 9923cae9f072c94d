"""The reference backend: the model's own modules, one by one, as eager PyTorch
runs them.  It can run anything, so it comes last on every device.  It is what
runs for ONNX export (ONNX has no mnv3 ops; the graph is numerically equal),
when a submodule has hooks (prune, Grad-CAM and feature-extraction hooks
fire), for dtypes no mnv3 kernel takes (float16 on the CPU), and for layers
no fused kernel computes."""
from __future__ import annotations

from ..reference import model as ref
from .base import Backend


class ReferenceBackend(Backend):
    name = "reference"

    def not_supported_reasons(self, model, call):
        return []

    def stages(self, model, x, call):
        for module, stride in model._stages_with_strides():
            x = module(x)
            yield x, stride

    def head(self, model, features, call):
        return ref.MobileNetV3.forward_head(model, features)
