"""The CUDA backend's CPU-side logic, on CPU tensors: the whole network on its Triton kernels under
the interpreter (the backend's device check widened to "cpu" for these tests only) against the
reference model, its reasons, its cache, the CUDA-graph wrapper (with a stand-in CUDA API), and
importing mnv3_fast on a CUDA machine without triton.  tests/test_cuda.py runs it on a GPU."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import assert_close_rel, randn

import mnv3_fast
from mnv3_fast import backends, reference
from mnv3_fast.testing import calibrate_bn_

INTERPRETER = os.environ.get("TRITON_INTERPRET") == "1"
needs_interpreter = pytest.mark.skipif(not INTERPRETER, reason="runs the kernels on CPU tensors under the Triton "
                                                               "interpreter (on a GPU machine: tests/test_cuda.py)")
CL = torch.channels_last


@pytest.fixture
def cuda_backend_on_cpu(monkeypatch):
    """The CUDA backend first for CPU inputs too: its kernels run on CPU tensors under the interpreter."""
    pytest.importorskip("triton")
    monkeypatch.setattr(backends.CUDA, "device_types", ("cuda", "cpu"))
    monkeypatch.setitem(backends.PRIORITY, "cpu", (backends.CUDA,) + backends.PRIORITY["cpu"])
    return backends.CUDA


def make(mode, multiplier, variant="paper", seed=0):
    torch.manual_seed(seed)
    ref = calibrate_bn_(reference.MobileNetV3(mode, multiplier=multiplier, variant=variant))
    return ref, mnv3_fast.convert(ref).eval()


@needs_interpreter
@pytest.mark.parametrize("mode,dtype,memory_format", [("SMALL", torch.float32, torch.contiguous_format),
                                                      ("SMALL", torch.float16, CL), ("LARGE", torch.float32, CL),
                                                      ("SMALL", torch.bfloat16, CL)])
def test_whole_network_matches_the_reference(cuda_backend_on_cpu, mode, dtype, memory_format):
    """Small at multiplier 0.5 and Large at 0.35, 32x32: every kernel family in one forward (stem
    from NCHW and NHWC, expand/project GEMMs with residual and SE gate, dw with pool sums, SE
    gate, pooled last stage, head), against the float64 reference model."""
    ref, fast = make(mode, 0.5 if mode == "SMALL" else 0.35)
    x = randn(1, 3, 32, 32, memory_format=memory_format, seed=1)
    with torch.no_grad():
        expected = ref.double()(x.double())
        fast = fast.to(dtype)
        assert fast.explain(x.to(dtype)).backend == "cuda"
        out = fast(x.to(dtype))
    assert out.dtype == dtype and out.shape == (x.shape[0], 1000)
    # fp16/bf16: every layer's output is rounded once (the float64 reference's is not); eager PyTorch
    # in fp16 or bf16 is 1.5% off here.  The interpreter rounds bf16 by truncation (the GPU to
    # nearest), a bias that compounds over the layers: 5% here, so bf16 gets a loose bound on the
    # CPU; the per-kernel tests (test_triton_kernels.py) and tests/test_cuda.py are tight.
    assert_close_rel(out, expected, {torch.float32: 1e-5, torch.float16: 2e-2, torch.bfloat16: 8e-2}[dtype])


@needs_interpreter
def test_feature_maps_head_and_the_seed_variant(cuda_backend_on_cpu):
    """The stages (feature_maps / forward_features: the last stage's map, not pooled) and
    forward_head; the seed SMALL's last stage (conv -> SE -> BN -> act) through its op tail."""
    ref, fast = make("SMALL", 0.5)
    x = randn(1, 3, 32, 32, seed=2, memory_format=CL)
    with torch.no_grad():
        maps, expected = fast.half().feature_maps(x.half()), ref.double().feature_maps(x.double())
        assert [m.shape for m in maps] == [e.shape for e in expected]
        for m, e in zip(maps, expected):
            assert m.is_contiguous(memory_format=CL) and m.dtype == torch.float16
            assert_close_rel(m, e, 2e-2)
        assert_close_rel(fast.forward_head(maps[-1]), ref(x.double()), 2e-2)
    ref, fast = make("SMALL", 0.35, variant="seed")
    with torch.no_grad():
        assert fast.explain(x).backend == "cuda"
        assert_close_rel(fast(x), ref.double()(x.double()), 1e-5)


def test_reasons(cuda_backend_on_cpu):
    _, fast = make("SMALL", 0.5)
    x = randn(1, 3, 32, 32)
    assert fast.explain(x).passed_over["cuda"] == [  # (grad mode on, trainable weights)
        "gradients are needed (grad mode is on and the input or a weight requires grad), and the CUDA program "
        "has no autograd"]
    with torch.no_grad():
        assert fast.explain(x).backend == "cuda"
        assert fast.double().explain(x.double()).passed_over["cuda"] == [
            "float64: the Triton kernels compute in float16, bfloat16 or float32 (the generic path runs it)"]
        fast.float().train()
        assert fast.explain(x).passed_over["cuda"] == ["the model is in train mode (the CUDA program is inference "
                                                       "only)"]
        fast.eval()
        assert fast.explain(x[:0]).passed_over["cuda"] == ["the batch is empty"]
        fast.init_conv[0].stride = (3, 3)  # a stem the stem kernel does not take
        (reason,) = fast.explain(x).passed_over["cuda"]
        assert "the stem kernel takes <= 4 input channels, 3x3 or 5x5, stride 1 or 2" in reason
    call = backends.make_call(fast, x)._replace(tracing="torch.compile", view=None)
    assert backends.CUDA.not_supported_reasons(fast, call)[0].startswith("torch.compile: the CUDA program's")


def test_not_chosen_for_cpu_tensors_by_default():
    _, fast = make("SMALL", 0.5)
    with torch.no_grad():
        explanation = fast.explain(randn(1, 3, 32, 32))
    assert explanation.backend == "cpu_program" and "cuda" not in explanation.passed_over
    call = backends.make_call(fast, randn(1, 3, 32, 32))
    assert backends.CUDA.not_supported_reasons(fast, call) == ["the input is on cpu, not a CUDA device"]


def stand_in_forward(program, x):
    """For the caching tests: no kernels, but an output that depends on the prepared weights."""
    return program.blocks[0].depthwise.weight.sum().expand(x.shape[0], 1) + x.mean()


def test_program_prepared_once_per_dtype_and_rebuilt_when_a_weight_changes(cuda_backend_on_cpu, monkeypatch):
    from mnv3_fast.backends.cuda import program as P

    built = []
    prepare = P.prepare
    monkeypatch.setattr(P, "prepare", lambda plan, dtype: built.append(dtype) or prepare(plan, dtype))
    monkeypatch.setattr(P, "forward", stand_in_forward)
    _, fast = make("SMALL", 0.35)
    x = randn(1, 3, 24, 24)
    with torch.no_grad():
        first = fast(x)
        torch.testing.assert_close(fast(randn(1, 3, 16, 16)).shape, first.shape)  # another shape: same program
        assert built == [torch.float32]
        fast.block[0].depthwise_conv[1].running_var.mul_(2)  # an in-place write: the cache sees its version
        second = fast(x)
    assert built == [torch.float32, torch.float32]
    assert not torch.equal(first, second)


class FakeCuda:
    """The few torch.cuda calls CapturedForward makes, recording them; replay does nothing (what a
    replay computes is checked on a GPU, tests/test_cuda.py)."""

    def __init__(self):
        self.events = []

    def Stream(self, device=None):  # noqa: N802 (torch.cuda's name)
        fake = self

        class Stream:
            def wait_stream(self, other):
                fake.events.append("side waits")
        return Stream()

    def current_stream(self, device=None):
        fake = self

        class Current:
            def wait_stream(self, other):
                fake.events.append("main waits")
        return Current()

    def stream(self, s):
        return self._context("side stream")

    def graph(self, g):
        return self._context("capture")

    def CUDAGraph(self):  # noqa: N802
        fake = self

        class Graph:
            def replay(self):
                fake.events.append("replay")
        return Graph()

    def _context(self, name):
        fake = self

        class Context:
            def __enter__(self):
                fake.events.append(f"enter {name}")

            def __exit__(self, *exc):
                fake.events.append(f"exit {name}")
        return Context()


def test_graph_capture_logic(monkeypatch):
    """Warm-up on a side stream, then one capture from the static input; a call copies its input
    into that buffer and returns the same static output each time; one graph per shape and strides."""
    from mnv3_fast.backends.cuda.graphs import CapturedForward, graph_key

    fake = FakeCuda()
    monkeypatch.setattr(CapturedForward, "cuda", fake)
    runs = []

    def run(t):
        runs.append(t)
        fake.events.append("forward")
        return t.sum(dim=(1, 2, 3))

    x = randn(2, 3, 8, 8)
    graphed = CapturedForward(run, x)
    assert fake.events == ["side waits", "enter side stream", "forward", "forward", "exit side stream", "main waits",
                           "enter capture", "forward", "exit capture"]
    assert all(t is graphed.static_input for t in runs) and torch.equal(graphed.static_input, x)
    y = randn(2, 3, 8, 8, seed=5)
    out = graphed(y)
    assert out is graphed.static_output and graphed(x) is out  # the same buffer: a replay overwrites it
    assert torch.equal(graphed.static_input, x) and fake.events[-1] == "replay"
    assert graph_key(x, torch.float16) != graph_key(x.contiguous(memory_format=CL), torch.float16)
    assert graph_key(x, torch.float16) != graph_key(x[:1], torch.float16)


def test_model_cuda_graphs_cached_per_shape_and_dropped_with_the_weights(cuda_backend_on_cpu, monkeypatch):
    from mnv3_fast.backends.cuda import graphs, program

    monkeypatch.setattr(program, "forward", stand_in_forward)

    captured = []
    monkeypatch.setattr(graphs.CapturedForward, "cuda", FakeCuda())
    monkeypatch.setattr(graphs, "WARMUP", 0)
    original = graphs.CapturedForward.__init__

    def init(self, run, example, warmup=0):
        captured.append(tuple(example.shape))
        original(self, run, example, warmup)
    monkeypatch.setattr(graphs.CapturedForward, "__init__", init)
    _, fast = make("SMALL", 0.35)
    assert fast.cuda_graphs() is fast and fast.use_cuda_graphs
    x = randn(1, 3, 16, 16)
    with torch.no_grad():
        out = fast(x)
        assert fast(x) is out  # replayed: the static output
        fast(randn(2, 3, 16, 16))
        assert captured == [(1, 3, 16, 16), (2, 3, 16, 16)]
        fast.out_conv2[3].bias.add_(1)
        fast(x)
        assert captured == [(1, 3, 16, 16), (2, 3, 16, 16), (1, 3, 16, 16)]
        fast.cuda_graphs(False)
        assert fast(x) is not fast(x)


IMPORT_WITHOUT_TRITON = textwrap.dedent(
    """
    import sys, warnings
    sys.modules["triton"] = None  # import triton -> ImportError, as where it is not installed
    import torch
    torch.cuda.is_available = lambda: True  # a CUDA machine (nothing below touches the GPU)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import mnv3_fast
        from mnv3_fast import backends, ops
    assert ops.TRITON_ERROR and "triton" in ops.TRITON_ERROR, ops.TRITON_ERROR
    assert any("PyTorch references on CUDA" in str(w.message) for w in caught)
    model = mnv3_fast.mobilenet_v3_small().eval()
    x = torch.randn(1, 3, 32, 32)
    call = backends.make_call(model, x)._replace(device_type="cuda")
    assert backends.CUDA.not_supported_reasons(model, call) == [
        ops.TRITON_ERROR + "; the mnv3 ops would run their PyTorch references"]
    assert backends.explain(model, call).backend == "generic"
    for op, args in [(ops.pw_conv_bn_act, (x, torch.randn(4, 3), None, "relu")), (ops.stem_conv, (x, torch.randn(8, 3, 3, 3)))]:
        assert op(*args).shape[1] in (4, 8)  # the new ops exist and run their references
    print("no triton ok")
    """
)


def test_import_on_a_cuda_machine_without_triton():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", IMPORT_WITHOUT_TRITON], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "no triton ok" in result.stdout
