"""Which backend runs a call, and why: `model.explain(x)` and the backends' reasons (issue 11).
Also: the tables the C++ side keeps agree with their Python source."""
import pytest
import torch
from conftest import randn

import mnv3_fast
from mnv3_fast import backends, ops, reference
from mnv3_fast.ops import cpu_program
from mnv3_fast.ops._checks import ACTIVATIONS
from mnv3_fast.testing import calibrate_bn_


@pytest.fixture
def model():
    torch.manual_seed(0)
    return mnv3_fast.convert(calibrate_bn_(reference.MobileNetV3("SMALL", multiplier=0.5))).requires_grad_(False)


X = randn(1, 3, 32, 32)


def test_float32_inference_runs_the_cpu_program(model):
    explanation = model.explain(X)
    assert explanation.backend == "cpu_program" and explanation.passed_over == {}
    assert str(explanation) == "runs on the 'cpu_program' backend"


def test_float64_on_the_cpu(model):
    explanation = model.double().explain(X.double())
    assert explanation.backend == "generic"
    assert explanation.passed_over == {"cpu_program": ["float64: the CPU program runs float32 and bfloat16"]}
    assert "not 'cpu_program':\n    - float64" in str(explanation)


def test_grad_enabled_eval_with_trainable_weights(model):
    model.requires_grad_(True)
    explanation = model.explain(X)
    assert explanation.backend == "generic"
    (reason,) = explanation.passed_over["cpu_program"]
    assert reason.startswith("gradients are needed")
    with torch.no_grad():
        assert model.explain(X).backend == "cpu_program"


def test_input_that_requires_grad(model):
    assert model.explain(X.clone().requires_grad_()).backend == "generic"


def test_train_mode(model):
    assert model.train().explain(X).passed_over["cpu_program"] == [
        "the model is in train mode (the program is inference only)"]


def test_torch_compile_reports_what_it_ran(model):
    seen = {}

    def spy(m, call):
        seen["explanation"] = backends.explain(m, call)
        return original(m, call)

    original = backends.select
    try:
        backends.select = spy
        compiled = torch.compile(model, fullgraph=True, backend="eager")
        with torch.no_grad():
            compiled(X)
    finally:
        backends.select = original
    explanation = seen["explanation"]
    assert explanation.backend == "generic"
    assert explanation.passed_over["cpu_program"][0].startswith("torch.compile: the program's packed weights")


def test_onnx_export_uses_the_reference(model):
    call = backends.make_call(model, X)._replace(tracing="ONNX export", view=None)
    explanation = backends.explain(model, call)
    assert explanation.backend == "reference"
    assert explanation.passed_over["generic"] == ["exporting to ONNX, which has no mnv3 ops (the reference "
                                                  "graph is exported)"]


def test_a_cuda_tensor_where_triton_is_missing(model, monkeypatch):
    """No GPU is needed: a call on a CUDA device, as the model would make it, with triton missing."""
    monkeypatch.setattr(ops, "TRITON_ERROR", "triton is not available (No module named 'triton')")
    call = backends.make_call(model, X)._replace(device_type="cuda")
    explanation = backends.explain(model, call)
    assert explanation.backend == "generic"
    assert explanation.passed_over == {"cuda": [
        "triton is not available (No module named 'triton'); the mnv3 ops would run their PyTorch references"]}


def test_a_layer_no_kernel_computes(model):
    model.block[1].depthwise_conv[2] = torch.nn.GELU()
    explanation = model.explain(X)
    assert explanation.backend == "reference"
    assert explanation.passed_over["generic"] == ["no fused kernel for the activation GELU"]
    with torch.no_grad():
        torch.testing.assert_close(model(X), reference.MobileNetV3.forward(model, X))


def test_a_submodule_left_in_train_mode(model):
    model.block[2].train()
    reasons = model.explain(X).passed_over["generic"]
    assert reasons == ["block.2.expand_conv.1 is in train mode while the model is in eval mode (folding "
                       "assumes eval-mode BatchNorm)"]
    with torch.no_grad():
        torch.testing.assert_close(model(X), reference.MobileNetV3.forward(model, X))


def test_every_device_ends_with_the_reference():
    for chain in list(backends.PRIORITY.values()) + [backends.DEFAULT_PRIORITY]:
        assert chain[-1] is backends.REFERENCE


@pytest.mark.skipif(not ops.HAS_CPU_KERNELS, reason="the C++ extension is not built")
def test_cpp_tables_agree_with_python():
    from mnv3_fast import _C

    table = _C.PROGRAM_TABLE
    assert table["activations"] == ACTIVATIONS
    assert table["opcodes"] == tuple((op.name, op.num_args, op.act_arg) for op in cpu_program.OPCODES)


def test_triton_activation_codes_follow_the_table():
    pytest.importorskip("triton")
    from mnv3_fast.ops.triton._common import ACT_CODES

    assert ACT_CODES == {name: code for code, name in enumerate(ACTIVATIONS)}
