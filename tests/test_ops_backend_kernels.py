"""The ops the CUDA backend runs (mnv3::pw_conv_bn_act, stem_conv, se_gate, classifier_head) on
the CPU: their references against the eager modules they replace, opcheck, the argument errors,
and that torch.compile's tracing sees into them (triton_op) rather than an opaque call.
On the CPU their kernels are the references; the Triton kernels are checked under the
interpreter in test_triton_kernels.py and compiled for sm_80/sm_90 in test_triton_aot.py."""
import pytest
import torch
import torch.nn.functional as F
from conftest import TOLERANCES, randn

import mnv3_fast  # noqa: F401  (registers the ops)
from mnv3_fast import ops

CL = torch.channels_last


def test_pw_reference_is_the_eager_chain():
    """pw_conv_bn_act == hswish(conv1x1(x * gate) + b) + residual, and its pooled form the mean of that."""
    x = randn(3, 10, 5, 7, dtype=torch.float64, memory_format=CL)
    conv = torch.nn.Conv2d(10, 6, 1).double()
    res, gate = randn(3, 6, 5, 7, dtype=torch.float64, seed=1), torch.rand(3, 10, dtype=torch.float64)
    with torch.no_grad():
        expected = F.hardswish(conv(x * gate[:, :, None, None])) + res
        out = ops.pw_conv_bn_act(x, conv.weight, conv.bias, "hswish", res, gate)
        torch.testing.assert_close(out, expected)
        assert out.is_contiguous(memory_format=CL)
        torch.testing.assert_close(ops.pw_conv_bn_act(x, conv.weight, conv.bias, "hswish", res, gate, pool=True),
                                   expected.mean(dim=(2, 3)))


def test_stem_se_gate_and_head_references_are_the_eager_chains():
    x = randn(2, 3, 11, 9, dtype=torch.float64)
    conv = torch.nn.Conv2d(3, 16, 3, stride=2, padding=1).double()
    with torch.no_grad():
        out = ops.stem_conv(x, conv.weight, conv.bias, 2, 1, "hswish")
        torch.testing.assert_close(out, F.hardswish(conv(x)))
        assert out.is_contiguous(memory_format=CL)
        # SE gate from (partial) sums == the gate the SE module computes from the map
        y = randn(2, 12, 4, 5, dtype=torch.float64, seed=3)
        fc1, fc2 = torch.nn.Conv2d(12, 4, 1).double(), torch.nn.Conv2d(4, 12, 1).double()
        expected = F.hardsigmoid(fc2(F.relu(fc1(y.mean(dim=(2, 3), keepdim=True))))).flatten(1)
        partial = torch.stack([y[:, :, :2].sum(dim=(2, 3)), y[:, :, 2:].sum(dim=(2, 3))], dim=1)
        for sums in (y.sum(dim=(2, 3)), partial):
            torch.testing.assert_close(ops.se_gate(sums, fc1.weight, fc1.bias, fc2.weight, fc2.bias, 20), expected)
        # head == Linear -> Hardswish -> Linear
        lin1, lin2 = torch.nn.Linear(12, 7).double(), torch.nn.Linear(7, 5).double()
        pooled = randn(3, 12, dtype=torch.float64, seed=4)
        torch.testing.assert_close(ops.classifier_head(pooled, lin1.weight, lin1.bias, lin2.weight, lin2.bias, "hswish"),
                                   lin2(F.hardswish(lin1(pooled))))


def opcheck_args(dtype):
    x = randn(2, 6, 5, 4, dtype=dtype, memory_format=CL)
    w, b = randn(5, 6, 1, 1, dtype=dtype, seed=1), randn(5, dtype=dtype, seed=2)
    res, gate = randn(2, 5, 5, 4, dtype=dtype, memory_format=CL, seed=3), torch.rand(2, 6)
    img = randn(1, 3, 9, 8, dtype=dtype, seed=4)
    sums = randn(2, 3, 6, seed=5)
    w1, b1, w2, b2 = randn(3, 6, dtype=dtype), randn(3, dtype=dtype), randn(6, 3, dtype=dtype), randn(6, dtype=dtype)
    return [
        (torch.ops.mnv3.pw_conv_bn_act.default, (x, w, b, "hswish", res, gate, False)),
        (torch.ops.mnv3.pw_conv_bn_act.default, (x.contiguous(), w.flatten(1), None, "relu", None, None, True)),
        (torch.ops.mnv3.stem_conv.default, (img, randn(8, 3, 3, 3, dtype=dtype), randn(8, dtype=dtype), 2, 1, "hswish")),
        (torch.ops.mnv3.se_gate.default, (sums, w1, b1, w2, b2, 20)),
        (torch.ops.mnv3.classifier_head.default, (x[:, :, 0, 0], w1, b1, w2, None, "relu")),
    ]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_opcheck(dtype):
    for op, args in opcheck_args(dtype):
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_dtypes_match_float64(dtype):
    for op, args in opcheck_args(dtype):
        out = op(*args)
        wide = [a.double() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]
        expected = op(*wide)
        # se_gate is float32 for float32 sums (its rounding: fp32's); the rest round once to dtype
        tol = TOLERANCES[torch.float32 if op is torch.ops.mnv3.se_gate.default else dtype]
        torch.testing.assert_close(out.double(), expected, **{k: 4 * v for k, v in tol.items()})


def test_traced_into_not_opaque():
    """triton_op: under torch.compile's functional tracing the op is replaced by its implementation
    (on the CPU the reference's aten ops; on CUDA the Triton launches, see test_triton_aot.py)."""
    if not hasattr(torch.library, "triton_op"):
        pytest.skip("torch.library.triton_op needs torch >= 2.6")
    from functorch.compile import aot_function

    graphs = []

    def compiler(gm, inputs):
        graphs.append(gm.code)
        return gm

    x, w = randn(2, 6, 5, 4, memory_format=CL), randn(5, 6)
    aot_function(lambda x, w: ops.pw_conv_bn_act(x, w, None, "relu", pool=True), fw_compiler=compiler)(x, w)
    assert "mnv3" not in graphs[0] and "aten.convolution" in graphs[0]


def test_errors_name_what_was_expected():
    x = randn(2, 6, 5, 4)
    w = randn(5, 6)
    cases = [
        (ValueError, r"expected weight of shape \(Cout, 6\) or \(Cout, 6, 1, 1\), got \[\]",
         lambda: ops.pw_conv_bn_act(x, torch.tensor(1.0), None, "relu")),
        (ValueError, r"expected weight of shape \(5, 6\) or \(5, 6, 1, 1\), got \[5, 7\]",
         lambda: ops.pw_conv_bn_act(x, randn(5, 7), None, "relu")),
        (ValueError, r"expected bias of shape \(5\), got \[6\]", lambda: ops.pw_conv_bn_act(x, w, randn(6), "relu")),
        (TypeError, r"expected gate to be float32 or x's dtype \(torch.bfloat16\), got torch.float64",
         lambda: ops.pw_conv_bn_act(x.bfloat16(), w.bfloat16(), None, "relu", gate=torch.rand(2, 6).double())),
        (ValueError, r"expected act to be one of 'none', 'relu', 'hswish', got 'gelu'",
         lambda: ops.pw_conv_bn_act(x, w, None, "gelu")),
        (ValueError, r"4-D \(N, C, H, W\) tensor, got a 3-D", lambda: ops.pw_conv_bn_act(x[0], w, None, "relu")),
        (TypeError, r"expected weight to have the same dtype as x \(torch.float32\), got torch.float64",
         lambda: ops.stem_conv(randn(1, 3, 8, 8), randn(8, 3, 3, 3).double())),
        (ValueError, r"expected stride 1 or 2, got 3", lambda: ops.stem_conv(randn(1, 3, 8, 8), randn(8, 3, 3, 3), stride=3)),
        (ValueError, r"too small for a 5x5 kernel", lambda: ops.stem_conv(randn(1, 3, 2, 2), randn(8, 3, 5, 5), padding=0)),
        (ValueError, r"expected sums of shape \(N, C\) or \(N, blocks, C\)",
         lambda: ops.se_gate(randn(6), randn(3, 6), randn(3), randn(6, 3), randn(6), 4)),
        (ValueError, r"expected count \(the pixels summed\) > 0, got 0",
         lambda: ops.se_gate(randn(2, 6), randn(3, 6), randn(3), randn(6, 3), randn(6), 0)),
        (ValueError, r"expected b2 of shape \(6\), got \[3\]",
         lambda: ops.se_gate(randn(2, 6), randn(3, 6), randn(3), randn(6, 3), randn(3), 4)),
        (ValueError, r"expected w2 of shape \(4, 7\) or \(4, 7, 1, 1\), got \[4, 6\]",
         lambda: ops.classifier_head(randn(2, 6), randn(7, 6), None, randn(4, 6), None, "hswish")),
        (TypeError, r"expected w1 to have the same dtype as pooled \(torch.float32\)",
         lambda: ops.classifier_head(randn(2, 6), randn(7, 6).double(), None, randn(4, 7), None, "hswish")),
    ]
    for exc, message, call in cases:
        with pytest.raises(exc, match=message):
            call()
        with pytest.raises(exc, match=message), torch._subclasses.FakeTensorMode(allow_non_fake_inputs=True):
            call()  # the fake kernels make the same checks
