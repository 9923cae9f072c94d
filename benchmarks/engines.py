"""The engines benchmarks/run.py compares.  Each builder returns an Engine that
runs the same weights: the eager reference is the source, every other engine
is made from it (fast model by conversion, torchvision by copying its
parameters, ONNX Runtime and OpenVINO from one ONNX export of it).

A builder raises EngineUnavailable with a one-line reason when its package or
device is missing; run.py reports that and carries on with the rest.
"""
from __future__ import annotations

import copy
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

import mnv3_fast
from mnv3_fast import reference

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class EngineUnavailable(Exception):
    pass


@dataclass
class Engine:
    name: str
    run: Callable[[torch.Tensor], torch.Tensor]  # images (NCHW, fp32) -> logits
    setup_s: float = 0.0  # compile / export time, reported separately from the run time
    notes: list = field(default_factory=list)


def _randomized_reference(arch: str, seed: int = 0) -> reference.MobileNetV3:
    """Random weights with realistic BN statistics, so logits are non-trivial."""
    torch.manual_seed(seed)
    model = reference.MobileNetV3(arch.upper())
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


class Models:
    """Per (arch, device): the source weights and the ONNX export, built once and shared."""

    def __init__(self, arch: str, device: str, threads: int, size: int = 224):
        self.arch, self.device, self.threads, self.size = arch, device, threads, size
        self.reference = _randomized_reference(arch).to(device)
        self._onnx_path = None

    def onnx_path(self) -> tuple[str, float]:
        """The ONNX export of the reference and, the first time only, how long it took."""
        if self._onnx_path is not None:
            return self._onnx_path[0], 0.0
        try:
            import onnx  # noqa: F401
            import onnxscript  # noqa: F401
        except ImportError as exc:
            raise EngineUnavailable(f"ONNX export needs onnx and onnxscript ({exc.name} missing)")
        start = time.perf_counter()
        path = os.path.join(tempfile.mkdtemp(prefix="mnv3_bench_"), f"{self.arch}.onnx")
        model = _randomized_reference(self.arch)  # on the CPU, fp32
        example = torch.randn(2, 3, self.size, self.size)
        batch = torch.export.Dim("batch", min=1, max=1024)
        torch.onnx.export(model, (example,), path, dynamic_shapes=({0: batch},), dynamo=True,
                          verbose=False, external_data=False)
        self._onnx_path = (path, time.perf_counter() - start)
        return self._onnx_path


def _cast(model, dtype, memory_format):
    """A copy of `model` in dtype and memory format (Module.to works in place)."""
    return copy.deepcopy(model).to(dtype=dtype, memory_format=memory_format)


def eager(models: Models, dtype: torch.dtype, memory_format=torch.contiguous_format, name="eager") -> Engine:
    model = _cast(models.reference, dtype, memory_format)

    def run(x):
        with torch.inference_mode():
            return model(x.to(dtype=dtype, memory_format=memory_format))

    return Engine(name, run)


def fast(models: Models, dtype: torch.dtype, memory_format=torch.contiguous_format, name="mnv3_fast",
         graphs: bool = False) -> Engine:
    if graphs and models.device != "cuda":
        raise EngineUnavailable("CUDA graphs need a CUDA device")
    model = _cast(mnv3_fast.convert(models.reference), dtype, memory_format).cuda_graphs(graphs)
    notes = [] if mnv3_fast.ops.HAS_CPU_KERNELS or models.device != "cpu" else [
        f"C++ kernels missing ({mnv3_fast.ops.EXTENSION_ERROR}): PyTorch fallbacks"]
    if graphs:
        notes.append("model.cuda_graphs(True): the backend's own graph per input shape")

    def run(x):
        with torch.inference_mode():
            return model(x.to(dtype=dtype, memory_format=memory_format))

    return Engine(name, run, notes=notes)


def compiled(models: Models, dtype: torch.dtype, memory_format=torch.channels_last, mode=None,
             name="torch.compile") -> Engine:
    model = _cast(models.reference, dtype, memory_format)
    fn = torch.compile(model, mode=mode)

    def run(x):
        with torch.inference_mode():
            return fn(x.to(dtype=dtype, memory_format=memory_format))

    return Engine(name, run, notes=[f"memory format {'channels_last' if memory_format == torch.channels_last else 'NCHW'}"
                                    + (f", mode={mode}" if mode else "")])


def torchvision_eager(models: Models, dtype: torch.dtype, memory_format=torch.contiguous_format) -> Engine:
    try:
        import torchvision
    except ImportError:
        raise EngineUnavailable("torchvision is not installed")
    builder = getattr(torchvision.models, f"mobilenet_v3_{models.arch}")
    model = builder()
    src = list(models.reference.state_dict().values())
    dst = model.state_dict()
    if len(src) != len(dst):
        raise EngineUnavailable("torchvision's layout differs from the reference's")
    model.load_state_dict({k: s.reshape(v.shape) for (k, v), s in zip(dst.items(), src)})
    model = _cast(model.eval().to(models.device), dtype, memory_format)

    def run(x):
        with torch.inference_mode():
            return model(x.to(dtype=dtype, memory_format=memory_format))

    return Engine("torchvision", run)


def onnxruntime_engine(models: Models, dtype: torch.dtype) -> Engine:
    if models.device != "cpu" or dtype != torch.float32:
        raise EngineUnavailable("benchmarked on the CPU in fp32 only")
    try:
        import onnxruntime as ort
    except ImportError:
        raise EngineUnavailable("onnxruntime is not installed")
    path, export_s = models.onnx_path()
    options = ort.SessionOptions()
    options.intra_op_num_threads = models.threads  # the same thread budget as torch
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    start = time.perf_counter()
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(x):
        return torch.from_numpy(session.run(None, {name: np.ascontiguousarray(x.numpy())})[0])

    return Engine("onnxruntime", run, setup_s=export_s + time.perf_counter() - start,
                  notes=[f"onnxruntime {ort.__version__}, {models.threads} intra-op threads, ORT_ENABLE_ALL"])


def openvino_engine(models: Models, dtype: torch.dtype) -> Engine:
    if models.device != "cpu" or dtype != torch.float32:
        raise EngineUnavailable("benchmarked on the CPU in fp32 only")
    try:
        import openvino as ov
    except ImportError:
        raise EngineUnavailable("openvino is not installed (pip install openvino)")
    path, export_s = models.onnx_path()
    start = time.perf_counter()
    core = ov.Core()
    # LATENCY hint: one stream, all threads on one request (as the other engines run); f32 precision so
    # OpenVINO doesn't silently run bf16 on CPUs that have it.
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": models.threads,
              "INFERENCE_PRECISION_HINT": "f32"}
    compiled_model = core.compile_model(core.read_model(path), "CPU", config)
    request = compiled_model.create_infer_request()

    def run(x):
        request.infer({0: x.numpy()})
        return torch.from_numpy(request.get_output_tensor(0).data.copy())

    return Engine("openvino", run, setup_s=export_s + time.perf_counter() - start,
                  notes=[f"openvino {ov.__version__}, LATENCY hint, {models.threads} threads, f32"])


def cuda_graph(engine: Engine, example: torch.Tensor) -> Engine:
    """Replays `engine.run` from a captured CUDA graph (batch-1 latency without launch overhead)."""
    static_in = example.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            engine.run(static_in)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = engine.run(static_in)

    def run(x):
        static_in.copy_(x)
        graph.replay()
        return static_out

    return Engine(engine.name + " +cudagraph", run, notes=engine.notes + ["CUDA graph replay"])


ALL_ENGINES = ("eager", "eager_cl", "fast", "fast_cl", "fast_graphs", "compile", "compile_max", "onnxruntime", "openvino",
               "torchvision")
COMPILE_ENGINES = ("compile", "compile_max")


def build(key: str, models: Models, dtype: torch.dtype, compile_mode=None) -> Engine:
    cl = torch.channels_last
    if key == "eager":
        return eager(models, dtype, name="eager (NCHW)")
    if key == "eager_cl":
        return eager(models, dtype, cl, name="eager (channels_last)")
    if key == "fast":
        return fast(models, dtype, name="mnv3_fast (NCHW)")
    if key == "fast_cl":
        return fast(models, dtype, cl, name="mnv3_fast (channels_last)")
    if key == "fast_graphs":
        return fast(models, dtype, cl, name="mnv3_fast (channels_last, CUDA graphs)", graphs=True)
    if key == "compile":
        return compiled(models, dtype, cl, compile_mode, name="torch.compile" + (f" ({compile_mode})" if compile_mode else ""))
    if key == "compile_max":
        return compiled(models, dtype, cl, "max-autotune", name="torch.compile (max-autotune)")
    if key == "onnxruntime":
        return onnxruntime_engine(models, dtype)
    if key == "openvino":
        return openvino_engine(models, dtype)
    if key == "torchvision":
        return torchvision_eager(models, dtype)
    raise EngineUnavailable(f"unknown engine {key!r}; choose from {', '.join(ALL_ENGINES)}")
