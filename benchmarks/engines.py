"""The engines benchmarks/run.py compares, per precision.  Every engine runs the
same weights: the eager reference (random, with BatchNorm statistics calibrated
by mnv3_fast.testing.calibrate_bn_ so that the logits depend on the input) is
the source; the fast model comes by conversion, torchvision by copying its
parameters, ONNX Runtime and OpenVINO from one ONNX export of it, the int8
engines from one set of calibration batches.

`build(key, models, precision, threads)` returns an Engine, raises
EngineUnavailable with a one-line reason (package missing, precision not
supported: run.py reports it in the table and carries on), or returns None
when the engine has no such precision at all (torchvision int8).

    key          fp32                      bf16                          int8
    eager        eager NCHW                model.to(bf16)                eager fp32 (the speed-up baseline)
    eager_cl     eager channels_last       model.to(bf16), channels_last -
    fast         mnv3_fast NCHW            bf16 autocast (CPU; CUDA:     mnv3_fast.quantize(model, calibration)
                                           model.to(bf16))
    fast_cl      mnv3_fast channels_last   the same, channels_last       the same, channels_last input
    compile      torch.compile             torch.compile, bf16 autocast  PT2E: X86InductorQuantizer + torch.compile
    onnxruntime  ONNX Runtime              (no bf16 CPU kernels)         static QDQ model (quantize_static)
    openvino     OpenVINO, f32 hint        bf16 hint                     the same QDQ model
    openvino_default  OpenVINO at its default precision, where that is not the cell's (bf16 on AMX CPUs)
    torchvision  torchvision's model       model.to(bf16)                -
"""
from __future__ import annotations

import copy
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch

import mnv3_fast
from mnv3_fast import reference
from mnv3_fast.testing import calibrate_bn_

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
CPU_PRECISIONS = ("fp32", "bf16", "int8")
CUDA_PRECISIONS = ("fp32", "fp16", "bf16")
ALL_ENGINES = ("eager", "eager_cl", "fast", "fast_cl", "fast_graphs", "compile", "compile_max", "onnxruntime",
               "openvino", "openvino_default", "torchvision")
#: The engines a plain `run.py` runs (fast_graphs and compile_max are for CUDA: gpu_check.sh names them).
DEFAULT_ENGINES = tuple(e for e in ALL_ENGINES if e not in ("fast_graphs", "compile_max"))
#: Engines whose first call compiles (minutes on a small CPU): --quick and --no-compile skip them.
COMPILING = ("compile", "compile_max")


class EngineUnavailable(Exception):
    pass


@dataclass
class Engine:
    name: str
    run: Callable[[torch.Tensor], torch.Tensor]  # images (NCHW, fp32) -> logits
    precision: str  # what it computes in, as the table names it
    threads: Optional[int] = None  # CPU threads it runs on (None on CUDA)
    setup_s: float = 0.0  # export / quantization / session time, reported apart from the run time
    notes: list = field(default_factory=list)
    #: said while the first call runs, when that call takes long (compilation: a minute or more)
    first_call_message: Optional[str] = None
    #: called before each timed sample, outside the timing (torch's thread count)
    prepare: Optional[Callable[[], None]] = None
    #: the first call, where it differs from run (compile-time settings)
    first_call: Optional[Callable[[torch.Tensor], torch.Tensor]] = None


def randomized_reference(arch: str, size: int = 64, seed: int = 0) -> reference.MobileNetV3:
    """Random weights with calibrated-then-perturbed BN statistics, so logits depend on the input."""
    torch.manual_seed(seed)
    model = reference.MobileNetV3(arch.upper())
    return calibrate_bn_(model, seed=seed, size=size)


class Models:
    """Per (arch, device, size): the source weights, the calibration batches, the ONNX and QDQ
    exports and the PT2E-quantized module, each built once and shared by every cell."""

    def __init__(self, arch: str, device: str, size: int = 224, calibration_batches: int = 4,
                 calibration_batch_size: int = 8):
        self.arch, self.device, self.size = arch, device, size
        self.reference = randomized_reference(arch, size=min(size, 128)).to(device)
        g = torch.Generator().manual_seed(1234)
        #: the same calibration data for every int8 engine
        self.calibration = [torch.randn(calibration_batch_size, 3, size, size, generator=g)
                            for _ in range(calibration_batches)]
        self._cache: dict = {}

    def cpu_reference(self) -> torch.nn.Module:
        return copy.deepcopy(self.reference).cpu().float().eval()

    def once(self, key: str, make: Callable):
        """make() the first time (returning its result and how long it took), the cached result
        and 0.0 s after; a failure is cached too, so it is reported once per cell, not rebuilt."""
        if key not in self._cache:
            start = time.perf_counter()
            try:
                self._cache[key] = (make(), time.perf_counter() - start, None)
            except Exception as exc:  # noqa: BLE001: re-raised for every engine that needs it
                self._cache[key] = (None, 0.0, exc)
            value, seconds, exc = self._cache[key]
        else:
            (value, _, exc), seconds = self._cache[key], 0.0
        if exc is not None:
            raise exc
        return value, seconds

    def onnx_path(self) -> tuple[str, float]:
        """The fp32 ONNX export of the reference (dynamic batch) and, the first time only, its cost."""

        def export():
            try:
                import onnx  # noqa: F401
                import onnxscript  # noqa: F401
            except ImportError as exc:
                raise EngineUnavailable(f"ONNX export needs onnx and onnxscript ({exc.name} missing)")
            path = os.path.join(tempfile.mkdtemp(prefix="mnv3_bench_"), f"{self.arch}.onnx")
            batch = torch.export.Dim("batch", min=1, max=1024)
            torch.onnx.export(self.cpu_reference(), (torch.randn(2, 3, self.size, self.size),), path,
                              dynamic_shapes=({0: batch},), dynamo=True, verbose=False, external_data=False)
            return path

        return self.once("onnx", export)

    def qdq_path(self) -> tuple[str, float]:
        """ONNX Runtime's static int8 quantization of the export: QDQ format, per-channel int8
        weights, uint8 activations, MinMax-calibrated on self.calibration."""

        def quantize():
            try:
                from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                                      quant_pre_process, quantize_static)
            except ImportError:
                raise EngineUnavailable("onnxruntime is not installed (its quantizer makes the int8 QDQ model)")
            src, _ = self.onnx_path()
            folder = os.path.dirname(src)
            pre = os.path.join(folder, f"{self.arch}-pre.onnx")
            quant_pre_process(src, pre)  # shape inference + graph clean-up, as ORT's quantization guide asks
            input_name = _onnx_input_name(pre)
            batches = [b.numpy() for b in self.calibration]

            class Reader(CalibrationDataReader):
                def __init__(self):
                    self.it = iter(batches)

                def get_next(self):
                    b = next(self.it, None)
                    return None if b is None else {input_name: b}

            path = os.path.join(folder, f"{self.arch}-int8-qdq.onnx")
            quantize_static(pre, path, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
            return path

        return self.once("qdq", quantize)


def _onnx_input_name(path: str) -> str:
    import onnx

    return onnx.load(path, load_external_data=False).graph.input[0].name


def _cast(model, dtype, memory_format):
    """A copy of `model` in dtype and memory format (Module.to works in place)."""
    return copy.deepcopy(model).to(dtype=dtype, memory_format=memory_format)


def _torch_threads(threads):
    return (lambda: torch.set_num_threads(threads)) if threads else None


def _torch_engine(name, model, dtype, memory_format, precision, threads, notes=(), autocast=False):
    """`model` on the images in dtype and memory_format (autocast: under CPU bf16 autocast)."""
    def run(x):
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=autocast):
            return model(x.to(dtype=dtype, memory_format=memory_format))

    return Engine(name, run, precision, threads, notes=list(notes), prepare=_torch_threads(threads))


def eager(models, precision, threads, memory_format=torch.contiguous_format, name="eager"):
    if precision == "int8":  # the speed-up baseline of the int8 cells: PyTorch has no eager int8 CPU path here
        if memory_format != torch.contiguous_format:
            return None
        precision = "fp32"
    dtype = DTYPES[precision]
    return _torch_engine(name, _cast(models.reference, dtype, memory_format), dtype, memory_format, precision, threads)


def fast(models, precision, threads, memory_format=torch.contiguous_format, name="mnv3_fast", graphs=False):
    notes = [] if mnv3_fast.ops.HAS_CPU_KERNELS or models.device != "cpu" else [
        f"C++ kernels missing ({mnv3_fast.ops.EXTENSION_ERROR}): PyTorch fallbacks"]
    if graphs:
        if models.device != "cuda":
            raise EngineUnavailable("CUDA graphs need a CUDA device")
        notes.append("model.cuda_graphs(True): the backend's own graph per input shape")
    if precision == "int8":
        quantize = getattr(mnv3_fast, "quantize", None)
        if quantize is None:
            raise EngineUnavailable("mnv3_fast.quantize not available (no int8 path in this version)")
        model, quantize_s = models.once("mnv3_fast.quantize", lambda: quantize(
            mnv3_fast.convert(models.reference).eval(), [b.to(models.device) for b in models.calibration]))
        model = model.to(memory_format=memory_format) if memory_format != torch.contiguous_format else model
        engine = _torch_engine(name, model, torch.float32, memory_format, "int8", threads,
                               notes + ["mnv3_fast.quantize on the shared calibration batches"])
        engine.setup_s = quantize_s
        return engine
    if precision == "bf16" and models.device == "cpu":
        # bf16 on the CPU as autocast runs it: the float32 model and image (OpenVINO's engine is given the
        # same float32 image).  The program's stem reads the float32 image; model.to(bf16) with x.to(bf16)
        # per call was 3-20% slower (Xeon, AMX, 2026-11-30: the image converted twice).
        model = _cast(mnv3_fast.convert(models.reference), torch.float32, memory_format)
        return _torch_engine(name, model, torch.float32, memory_format, "bf16 autocast", threads, notes,
                             autocast=True)
    dtype = DTYPES[precision]
    model = _cast(mnv3_fast.convert(models.reference), dtype, memory_format).cuda_graphs(graphs)
    return _torch_engine(name, model, dtype, memory_format, precision, threads, notes)


def compiled(models, precision, threads, mode=None, name="torch.compile"):
    """Inductor on the reference in channels_last (its faster CPU layout).  Inductor specialises its
    CPU kernels on the thread count at compile time, so each thread count is its own compile."""
    if precision == "int8":
        return pt2e_int8(models, threads)
    cl = torch.channels_last
    autocast = precision == "bf16" and models.device == "cpu"
    # bf16 on the CPU: the fp32 model under bf16 autocast (how torch.compile users run bf16 there).
    model = _cast(models.reference, torch.float32 if autocast else DTYPES[precision], cl)
    dtype = torch.float32 if autocast else DTYPES[precision]
    fn = torch.compile(model, mode=mode)

    def run(x):
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=autocast):
            return fn(x.to(dtype=dtype, memory_format=cl))

    label = "bf16 autocast" if autocast else precision
    return Engine(name, run, label, threads, prepare=_torch_threads(threads),
                  notes=["channels_last" + (f", mode={mode}" if mode else "")],
                  first_call_message=f"compiling {name} ({label})")


def _pt2e_api():
    """PyTorch's export quantization (PT2E): in torchao since torch 2.10 removed torch.ao's copy."""
    try:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq
        return prepare_pt2e, convert_pt2e, xiq
    except ImportError:
        pass
    try:  # older torch
        from torch.ao.quantization.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torch.ao.quantization.quantizer import x86_inductor_quantizer as xiq
        return prepare_pt2e, convert_pt2e, xiq
    except ImportError:
        raise EngineUnavailable(f"PT2E int8 needs torchao with torch {torch.__version__.split('+')[0]} "
                                "(pip install torchao; the bench extra brings it)")


def pt2e_int8(models, threads, name="torch.compile PT2E"):
    """PyTorch's own int8 route: torch.export, X86InductorQuantizer (per-channel weights), calibration on
    the shared batches, then torch.compile with freezing (which packs the int8 weights for oneDNN)."""
    if models.device != "cpu":
        raise EngineUnavailable("PT2E int8 with X86InductorQuantizer is a CPU path")
    prepare_pt2e, convert_pt2e, xiq = _pt2e_api()

    def quantize():
        # torchvision's module with the reference's weights: the reference's hard-swish, x * relu6(x + 3) / 6,
        # makes X86InductorQuantizer's conv + add annotator fail (an AssertionError in torchao 0.18), while
        # torchvision's nn.Hardswish quantizes.  Same weights, same function.
        source = torchvision_model(models).cpu()
        batch = torch.export.Dim("batch", min=1, max=1024)
        exported = torch.export.export(source, (models.calibration[0],), dynamic_shapes=({0: batch},)).module()
        quantizer = xiq.X86InductorQuantizer()
        quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
        prepared = prepare_pt2e(exported, quantizer)
        with torch.no_grad():
            for b in models.calibration:
                prepared(b)
        return convert_pt2e(prepared)

    converted, quantize_s = models.once("pt2e", quantize)
    fn = torch.compile(converted)

    def run(x):
        with torch.no_grad():
            return fn(x)

    def first_call(x):
        # Freezing is what lowers the int8 convs to oneDNN's qconv (without it inductor runs them as fp32
        # convolutions between quantize/dequantize).  Set for the compiling call only: as
        # torch.compile(options={"freezing": True}) it fails (UnsupportedOperatorException: qconv_prepack).
        with torch._inductor.config.patch(freezing=True):
            return run(x)

    return Engine(name, run, "int8", threads, setup_s=quantize_s, prepare=_torch_threads(threads),
                  first_call=first_call,
                  notes=["X86InductorQuantizer default config (per-channel int8 weights, uint8 activations), "
                         "freezing, torchvision's module definition"],
                  first_call_message=f"compiling {name} (int8)")


def torchvision_model(models):
    try:
        import torchvision
    except ImportError:
        raise EngineUnavailable("torchvision is not installed")
    model = getattr(torchvision.models, f"mobilenet_v3_{models.arch}")(**getattr(models, "torchvision_kwargs", {}))
    src = list(models.reference.state_dict().values())
    dst = model.state_dict()
    if len(src) != len(dst):
        raise EngineUnavailable("torchvision's layout differs from the reference's")
    model.load_state_dict({k: s.reshape(v.shape) for (k, v), s in zip(dst.items(), src)})
    return model.eval().to(models.device)


def torchvision_eager(models, precision, threads):
    if precision == "int8":
        return None
    dtype = DTYPES[precision]
    return _torch_engine("torchvision", torchvision_model(models).to(dtype), dtype, torch.contiguous_format,
                         precision, threads)


def onnxruntime_engine(models, precision, threads):
    if models.device != "cpu":
        raise EngineUnavailable("benchmarked on the CPU only")
    if precision not in ("fp32", "int8"):
        raise EngineUnavailable(f"no {precision} row: ONNX Runtime's CPU execution provider has no {precision} "
                                "convolution kernels")
    try:
        import onnxruntime as ort
    except ImportError:
        raise EngineUnavailable("onnxruntime is not installed")
    path, export_s = models.onnx_path() if precision == "fp32" else models.qdq_path()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads  # the same thread budget as the torch engines
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: its warnings would break the progress line
    start = time.perf_counter()
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(x):
        return torch.from_numpy(session.run(None, {name: np.ascontiguousarray(x.numpy())})[0])

    what = "static QDQ (quantize_static, per-channel int8 weights, uint8 activations)" if precision == "int8" else ""
    return Engine("onnxruntime", run, precision, threads, setup_s=export_s + time.perf_counter() - start,
                  notes=[f"onnxruntime {ort.__version__}, intra_op_num_threads = the row's threads, ORT_ENABLE_ALL" +
                         (f", {what}" if what else "")])


OV_HINTS = {"fp32": "f32", "bf16": "bf16"}


def _ov_name(hint) -> str:
    """An OpenVINO element type (f32, bf16, f16) as this benchmark names precisions."""
    name = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
    return {"f32": "fp32", "f16": "fp16"}.get(name, name)


def _ov_int8_share(compiled_model) -> str:
    """How many of the compiled model's convolutions really run in int8 (u8/i8)."""
    convs = [op.get_rt_info()["runtimePrecision"].astype(str) for op in compiled_model.get_runtime_model().get_ordered_ops()
             if op.get_rt_info()["layerType"].astype(str) == "Convolution"]
    return f"{sum(p in ('u8', 'i8') for p in convs)} of {len(convs)} convolutions in int8"


def openvino_engine(models, precision, threads, default=False):
    if models.device != "cpu":
        raise EngineUnavailable("benchmarked on the CPU only")
    try:
        import openvino as ov
    except ImportError:
        raise EngineUnavailable("openvino is not installed (pip install openvino)")
    core = ov.Core()
    default_precision = _ov_name(core.get_property("CPU", "INFERENCE_PRECISION_HINT"))
    if default:
        if precision == "int8" or default_precision == precision:
            return None  # the openvino row already runs at OpenVINO's default
    elif precision not in OV_HINTS and precision != "int8":
        raise EngineUnavailable(f"no OpenVINO {precision} precision hint on the CPU")
    path, export_s = models.onnx_path() if precision != "int8" else models.qdq_path()
    start = time.perf_counter()
    # LATENCY: one stream, all threads on one request (as the other engines run).  The precision hint
    # is explicit, because OpenVINO's default on CPUs with bf16 (AMX, AVX512-BF16) is bf16: the default
    # gets a row of its own, named as what it is.  int8 reads the QDQ model at the default hint.
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
    if not default and precision in OV_HINTS:
        config["INFERENCE_PRECISION_HINT"] = OV_HINTS[precision]
    compiled_model = core.compile_model(core.read_model(path), "CPU", config)
    request = compiled_model.create_infer_request()
    runs_in = _ov_name(compiled_model.get_property("INFERENCE_PRECISION_HINT"))

    def run(x):
        request.infer({0: x.numpy()})
        return torch.from_numpy(request.get_output_tensor(0).data.copy())

    notes = [f"openvino {ov.__version__.split('-')[0]}, LATENCY hint, INFERENCE_NUM_THREADS = the row's threads, "
             f"INFERENCE_PRECISION_HINT {config.get('INFERENCE_PRECISION_HINT', 'default (' + default_precision + ')')}"]
    if precision == "int8":
        notes.append(f"ONNX Runtime's QDQ model: {_ov_int8_share(compiled_model)}")
        label = "int8"
    else:
        label = runs_in
    if not default and precision == default_precision:
        notes.append(f"{precision} is OpenVINO's default on this CPU")
    return Engine("openvino (default)" if default else "openvino", run, label, threads,
                  setup_s=export_s + time.perf_counter() - start, notes=notes)


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

    return Engine(engine.name + " +cudagraph", run, engine.precision, engine.threads,
                  notes=engine.notes + ["CUDA graph replay"])


def display_name(key: str, precision: str) -> str:
    """How the table names engine `key` (also when it could not be built)."""
    return {"eager": "eager (NCHW)", "eager_cl": "eager (channels_last)", "fast": "mnv3_fast (NCHW)",
            "fast_cl": "mnv3_fast (channels_last)", "openvino_default": "openvino (default)",
            "compile": "torch.compile PT2E" if precision == "int8" else "torch.compile"}.get(key, key)


def build(key: str, models: Models, precision: str, threads: Optional[int] = None,
          compile_mode: Optional[str] = None) -> Optional[Engine]:
    """The engine `key` at `precision` on `threads` CPU threads (None: leave torch's setting)."""
    cl = torch.channels_last
    if key == "eager":
        return eager(models, precision, threads, name="eager (NCHW)")
    if key == "eager_cl":
        return eager(models, precision, threads, cl, name="eager (channels_last)")
    if key == "fast":
        return fast(models, precision, threads, name="mnv3_fast (NCHW)")
    if key == "fast_cl":
        return fast(models, precision, threads, cl, name="mnv3_fast (channels_last)")
    if key == "fast_graphs":
        return fast(models, precision, threads, cl, name="mnv3_fast (channels_last, CUDA graphs)", graphs=True)
    if key == "compile_max":
        return compiled(models, precision, threads, "max-autotune", name="torch.compile (max-autotune)")
    if key == "compile":
        return compiled(models, precision, threads, compile_mode,
                        name="torch.compile" + (f" ({compile_mode})" if compile_mode else ""))
    if key == "onnxruntime":
        return onnxruntime_engine(models, precision, threads)
    if key == "openvino":
        return openvino_engine(models, precision, threads)
    if key == "openvino_default":
        return openvino_engine(models, precision, threads, default=True)
    if key == "torchvision":
        return torchvision_eager(models, precision, threads)
    raise EngineUnavailable(f"unknown engine {key!r}; choose from {', '.join(ALL_ENGINES)}")
