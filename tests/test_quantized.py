"""int8 (issue 13): the int8 instructions of mnv3::run_cpu_program against their plain-PyTorch
reference, `mnv3_fast.quantize`, and the accuracy of bf16 and int8 on a trained network."""
import os
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import randn

import mnv3_fast
from mnv3_fast import reference
from mnv3_fast.backends.cpu import int8
from mnv3_fast.backends.cpu import program as cpu_program
from mnv3_fast.ops import cpu_program as cp
from mnv3_fast.ops import reference_ops
from mnv3_fast.plan import ConvStep
from mnv3_fast.testing import calibrate_bn_, synthetic_shapes

pytestmark = pytest.mark.skipif(not hasattr(torch.ops.onednn, "qconv2d_pointwise"), reason="no oneDNN int8 ops")

N, C, H = 2, 24, 11
STEM = [randn(C, 3, 3, 3, seed=1, scale=0.3), randn(C, seed=2)]
IN = (0.05, 100)  # the stem's output quantization (scale, zero point)


def qp(*values):
    return torch.tensor(values, dtype=torch.float64)


def run_both(program, tensors, x=None):
    """The program on the C++ op and on its Python interpreter."""
    x = randn(N, 3, H, H, seed=0) if x is None else x
    return cp.run_cpu_program(x, tensors, program), cp.run_cpu_program_reference(x, tensors, program)


def stem_codes(x):
    """What QSTEM writes, computed independently: the stem conv, hard-swish, uint8 codes."""
    y = F.hardswish(F.conv2d(x.double(), STEM[0].double(), STEM[1].double(), 2, 1))
    return torch.clamp(torch.round(y / IN[0]) + IN[1], 0, 255)


def test_quantize_and_dequantize_helpers():
    x = torch.tensor([-1.0, 0.0, 0.026, 0.075, 20.0])
    q = cp.quantize(x, 0.05, 100)
    assert q.dtype == torch.uint8 and q.tolist() == [80, 100, 101, 102, 255]  # (0.075/0.05 = 1.5: half to even)
    torch.testing.assert_close(cp.dequantize(q, 0.05, 100), torch.tensor([-1.0, 0.0, 0.05, 0.1, 7.75]))


def test_qstem_and_qpool(poison_outputs):
    x = randn(N, 3, H, H, seed=0)
    tensors = [*STEM, qp(*IN), qp(*IN), torch.eye(C)]
    program = [cp.QSTEM, 0, 1, 2, 1, 2, 2, cp.QPOOL, 3, cp.LINEAR, 4, -1, 0, C]
    out, ref = run_both(program, tensors, x)
    expected = ((stem_codes(x) - IN[1]) * IN[0]).mean(dim=(2, 3))
    # (a code may differ by one where float32 and float64 round a value at a half-code boundary)
    for o in (out, ref):
        torch.testing.assert_close(o.double(), expected, rtol=0, atol=IN[0] / 4)


@pytest.mark.parametrize("k,stride,dilation", [(3, 1, 1), (3, 2, 1), (5, 1, 1), (5, 2, 1), (3, 1, 2)])
@pytest.mark.parametrize("quantized_out", [True, False], ids=["uint8_out", "float32_out"])
@pytest.mark.parametrize("act", [0, 1, 2])
def test_qdw_against_the_interpreter(k, stride, dilation, quantized_out, act, poison_outputs):
    """The depthwise conv on uint8 codes (a zero point of 100: the padding must read as 0.0)."""
    w, b = randn(C, 1, k, k, seed=3, scale=0.3), randn(C, seed=4)
    out_q = (0.07, 90) if quantized_out else (0.0, 0)
    tensors = [*STEM, qp(*IN), w, b, qp(*IN, *out_q), qp(*out_q), torch.eye(C)]
    pool = [cp.QPOOL, 6] if quantized_out else [cp.POOL]
    program = [cp.QSTEM, 0, 1, 2, 1, 2, 2, cp.QDW, 3, 4, stride, (k - 1) // 2 * dilation, dilation, act, 5,
               *pool, cp.LINEAR, 7, -1, 0, C]
    out, ref = run_both(program, tensors)
    # (codes may differ by one where float32 sums round differently at a half-code boundary: here
    # in the stem's output, or in the QDW's)
    tolerance = out_q[0] / 4 if quantized_out else IN[0] / 20
    torch.testing.assert_close(out, ref, rtol=0, atol=tolerance)


def test_qse_against_the_reference(poison_outputs):
    S = 8
    w, b = randn(C, 1, 3, 3, seed=3, scale=0.3), randn(C, seed=4)
    se = [randn(S, C, seed=5, scale=0.3), randn(S, seed=6), randn(C, S, seed=7, scale=0.3), randn(C, seed=8)]
    tensors = [*STEM, qp(*IN), w, b, qp(*IN, 0.0, 0), *se, qp(0.06, 80), qp(0.06, 80), torch.eye(C)]
    program = [cp.QSTEM, 0, 1, 2, 1, 2, 2, cp.QDW, 3, 4, 1, 1, 1, 2, 5, cp.QSE, 6, 7, 8, 9, 10, cp.QPOOL, 11,
               cp.LINEAR, 12, -1, 0, C]
    x = randn(N, 3, H, H, seed=0)
    out, ref = run_both(program, tensors, x)
    y = F.hardswish(F.conv2d((stem_codes(x) - IN[1]) * IN[0], w.double(), b.double(), 1, 1, groups=C))
    y = reference_ops.squeeze_excite(y, *(t.double() for t in se))
    expected = ((torch.clamp(torch.round(y / 0.06) + 80, 0, 255) - 80) * 0.06).mean(dim=(2, 3))
    for o in (out, ref):
        torch.testing.assert_close(o.double(), expected, rtol=0, atol=0.06 / 4)


@pytest.mark.parametrize("residual", [False, True])
def test_qconv_against_float_arithmetic(residual, poison_outputs):
    """QCONV (oneDNN's int8 conv) against the same arithmetic in float64 on the dequantized codes."""
    Co = C if residual else 40
    weight, bias = randn(Co, C, 1, 1, seed=9, scale=0.2), randn(Co, seed=10)
    conv = int8.int8_conv(ConvStep(weight, bias, 1, 0, "none" if residual else "hswish"), IN)
    out_q = (0.08, 120)
    tensors = [*STEM, qp(*IN), conv.weight, conv.scale, conv.zero_point, conv.bias,
               qp(*IN, *out_q, *(IN if residual else (0.0, 0))), qp(*out_q), torch.eye(Co)]
    program = [cp.QSTEM, 0, 1, 2, 1, 2, 2] + ([cp.SAVE] if residual else []) + [
        cp.QCONV, 3, 4, 5, 6, 1, 0, 0 if residual else 2, int(residual), 7, cp.QPOOL, 8, cp.LINEAR, 9, -1, 0, Co]
    x = randn(N, 3, H, H, seed=0)
    out, ref = run_both(program, tensors, x)
    q_weight, w_scale = int8.quantize_weight(weight)
    xq = (stem_codes(x) - IN[1]) * IN[0]
    y = F.conv2d(xq, q_weight.double() * w_scale.double()[:, None, None, None], bias.double())
    y = y + xq if residual else F.hardswish(y)
    expected = ((torch.clamp(torch.round(y / out_q[0]) + out_q[1], 0, 255) - out_q[1]) * out_q[0]).mean(dim=(2, 3))
    for o in (out, ref):
        torch.testing.assert_close(o.double(), expected, rtol=0, atol=out_q[0] / 2)


@pytest.mark.parametrize("run", [cp.run_cpu_program, cp.run_cpu_program_reference], ids=["op", "interpreter"])
def test_qconv_residual_never_writes_into_the_callers_input(run):
    """QCONV writes its output into the residual's buffer: a residual SAVEd from the caller's input
    (here a float32 one, added to a float32 output) must be copied first, not overwritten."""
    weight, bias = randn(3, C, 1, 1, seed=9, scale=0.2), randn(3, seed=10)
    conv = int8.int8_conv(ConvStep(weight, bias, 1, 0, "none"), IN)
    tensors = [*STEM, qp(*IN), conv.weight, conv.scale, conv.zero_point, conv.bias, qp(*IN, 0.0, 0, 1.0, 0),
               torch.eye(3)]
    program = [cp.SAVE, cp.QSTEM, 0, 1, 1, 1, 2, 2, cp.QCONV, 3, 4, 5, 6, 1, 0, 0, 1, 7, cp.POOL,
               cp.LINEAR, 8, -1, 0, 3]
    x = randn(N, 3, H, H, seed=0, memory_format=torch.channels_last)
    before = x.clone()
    run(x, tensors, program)
    assert torch.equal(x, before)


_WITHOUT_VNNI = r"""
import torch
from mnv3_fast.backends.cpu import int8
from mnv3_fast.backends.cpu import program as cpu_program
from mnv3_fast.plan import ConvStep
assert int8.WEIGHT_MAX == 63, int8.WEIGHT_MAX
torch.manual_seed(0)
N, C, H = 2, 32, 6
x = torch.randint(0, 256, (N, C, H, H), dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
weight = torch.randn(C, C, 1, 1)
weight[:, ::2] = weight[:, ::2].sign() * weight.abs().amax()  # many pairs of full-scale weights
conv = int8.int8_conv(ConvStep(weight, None, 1, 0, "none"), (0.05, 0), [N, C, H, H])
out = torch.ops.onednn.qconv2d_pointwise(x, 0.05, 0, conv.weight, conv.scale, conv.zero_point, None, [1, 1],
                                         [0, 0], [1, 1], 1, 1.0, 0, torch.float32, "none", [], "")
q, scale = int8.quantize_weight(weight)
expected = torch.nn.functional.conv2d(x.double() * 0.05, q.double() * scale.double()[:, None, None, None])
err = ((out.double() - expected).abs().max() / expected.abs().max()).item()
assert err < 1e-5, f"relative error {err:.3g}"
"""


def test_int8_convs_are_exact_without_vnni():
    """Without VNNI (AVX2-only CPUs: AMD Zen 3) oneDNN's uint8 x int8 products are summed in pairs
    that saturate at 16 bits, so quantize keeps the weights to 7 bits there.  Run with oneDNN held to
    AVX2, as on such a CPU: full-range weights gave errors of 100+ output codes."""
    import subprocess
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    proc = subprocess.run([sys.executable, "-c", _WITHOUT_VNNI], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


needs_qpwconv = pytest.mark.skipif(torch.int8 not in cpu_program.POINTWISE_DTYPES,
                                   reason="this torch or CPU has no AMX-INT8 (QPWCONV)")


@needs_qpwconv
@pytest.mark.parametrize("act", [0, 1, 2])
@pytest.mark.parametrize("quantized_out", [True, False])
@pytest.mark.parametrize("residual", [False, True])
def test_qpwconv_against_float_arithmetic(residual, quantized_out, act, poison_outputs):
    """QPWCONV (AMX-INT8 tiles) against the same arithmetic in float64 on the
    dequantized codes; 40 output channels (a block of 32 and a partial one) over 11x11 maps (a partial tile)."""
    Co = C if residual else 40
    weight, bias = randn(Co, C, 1, 1, seed=9, scale=0.2), randn(Co, seed=10)
    packed, params = int8.qpwconv_weights(ConvStep(weight, bias, 1, 0, cp.ACTS[act]), IN)
    out_q = (0.08, 120) if quantized_out else (0.0, 0)
    tensors = [*STEM, qp(*IN), packed, params, qp(*IN, *out_q, *(IN if residual else (0.0, 0))), qp(0.08, 120),
               torch.eye(Co)]
    tail = [cp.QPOOL, 6] if quantized_out else [cp.POOL]
    program = [cp.QSTEM, 0, 1, 2, 1, 2, 2] + ([cp.SAVE] if residual else []) + [
        cp.QPWCONV, 3, 4, act, int(residual), 5] + tail + [cp.LINEAR, 7, -1, 0, Co]
    x = randn(N, 3, H, H, seed=0)
    out, ref = run_both(program, tensors, x)
    q_weight, w_scale = int8.quantize_weight(weight)
    xq = (stem_codes(x) - IN[1]) * IN[0]
    y = F.conv2d(xq, q_weight.double() * w_scale.double()[:, None, None, None], bias.double())
    y = [lambda v: v, F.relu, F.hardswish][act](y)
    y = y + xq if residual else y
    if quantized_out:
        y = (torch.clamp(torch.round(y / out_q[0]) + out_q[1], 0, 255) - out_q[1]) * out_q[0]
    for o in (out, ref):
        torch.testing.assert_close(o.double(), y.mean(dim=(2, 3)), rtol=0, atol=0.08 / 2)


@needs_qpwconv
@pytest.mark.parametrize("K", [4, 24, 64, 68, 200])
def test_qpwconv_tile_shapes(K, poison_outputs):
    """Every output of QPWCONV at the AMX micro-kernel's edges: input channels in whole chunks of 64, a
    chunk and a tail, a tail alone; 1-15 pixels (padded to 16), 16, and partial groups after whole ones.
    1x1 images, so each image is one pixel and the pooled logits are the conv's outputs."""
    stem = [randn(K, 3, 3, 3, seed=K, scale=0.3), randn(K, seed=K + 1)]
    weight, bias = randn(40, K, 1, 1, seed=K + 2, scale=K ** -0.5), randn(40, seed=K + 3)
    packed, params = int8.qpwconv_weights(ConvStep(weight, bias, 1, 0, "hswish"), IN)
    tensors = [*stem, qp(*IN), packed, params, qp(*IN, 0.0, 0, 0.0, 0), torch.eye(40)]
    program = [cp.QSTEM, 0, 1, 2, 1, 2, 2, cp.QPWCONV, 3, 4, 2, 0, 5, cp.POOL, cp.LINEAR, 6, -1, 0, 40]
    q_weight, w_scale = int8.quantize_weight(weight)
    for M in (1, 15, 16, 17, 49, 130):
        x = randn(M, 3, 1, 1, seed=M)
        out, ref = run_both(program, tensors, x)
        codes = torch.clamp(torch.round(F.hardswish(F.conv2d(x.double(), stem[0].double(), stem[1].double(), 2, 1))
                                        / IN[0]) + IN[1], 0, 255)
        y = F.conv2d((codes - IN[1]) * IN[0], q_weight.double() * w_scale.double()[:, None, None, None],
                     bias.double())
        # The interpreter computes QPWCONV apart from the kernel.  QSTEM may round a stem code the other way
        # in the kernel, the interpreter and float64 where its value sits on a tie (7 pixels of 130 at K = 200):
        # within a code step (0.05) everywhere, and exact in all pixels but such ones.
        for o in (ref, F.hardswish(y).flatten(1)):
            torch.testing.assert_close(out.double(), o.double(), rtol=0, atol=IN[0], msg=lambda m: f"M={M} K={K}: {m}")
        differing = int(((out - ref).abs() > 1e-5).any(dim=1).sum())
        assert differing <= max(1, M // 10), f"M={M} K={K}: {differing} pixels differ from the interpreter's"


@needs_qpwconv
def test_qpwconv_pack_round_trip_and_bad_inputs():
    q = torch.randint(-127, 128, (72, 24, 1, 1), dtype=torch.int8)
    packed = cpu_program._C.pack_pointwise(q)
    assert packed.shape == (3, 24, 32) and torch.equal(cp.unpack_pointwise(packed, 72), q[:, :, 0, 0])
    with pytest.raises(ValueError, match="a torch.int8 weight needs a multiple of 4 input channels, got 6|"
                                         "weight needs a multiple of 4 input channels, got 6"):
        cpu_program._C.pack_pointwise(q[:, :6])
    packed, params = int8.qpwconv_weights(ConvStep(randn(C, C, 1, 1), randn(C), 1, 0, "none"), IN)
    tensors = [*STEM, qp(*IN), packed, params, qp(*IN, 0.08, 120, 0.0, 0), qp(0.08, 120), torch.eye(C)]
    program = [cp.QSTEM, 0, 1, 2, 1, 2, 2, cp.QPWCONV, 3, 4, 0, 0, 5, cp.QPOOL, 6, cp.LINEAR, 7, -1, 0, C]
    x = randn(N, 3, H, H, seed=0)
    for run in (cp.run_cpu_program, cp.run_cpu_program_reference):
        with pytest.raises(ValueError, match=r"QPWCONV at position 7 needs a packed weight \(blocks, K, 32\) and "):
            run(x, tensors[:4] + [params[0]] + tensors[5:], program)
    with pytest.raises(ValueError, match=r"expected a packed weight of shape \(1, 24, 32\) for 24 input and 24"):
        cp.run_cpu_program(x, tensors[:3] + [packed[:, :16].contiguous()] + tensors[4:], program)


@pytest.mark.parametrize("run", [cp.run_cpu_program, cp.run_cpu_program_reference], ids=["op", "interpreter"])
def test_bad_int8_programs(run):
    tensors = [*STEM, qp(*IN), qp(*IN), torch.eye(C), qp(1.0)]
    x = randn(N, 3, H, H, seed=0)
    good = [cp.QSTEM, 0, 1, 2, 1, 2, 2, cp.QPOOL, 3, cp.LINEAR, 4, -1, 0, C]
    run(x, tensors, good)
    with pytest.raises(ValueError, match="QSTEM at position 0 needs its quantization parameters as a float64 "
                                         "tensor of 2 values"):
        run(x, tensors, [cp.QSTEM, 0, 1, 2, 1, 2, 5] + good[7:])
    with pytest.raises(ValueError, match="QSTEM at position 0 needs its quantization parameters as a float64"):
        run(x, tensors, [cp.QSTEM, 0, 1, 2, 1, 2, 4] + good[7:])
    with pytest.raises(ValueError, match="CONV at position 7 needs a 4-D value, but the value was pooled at "
                                         "position 7|QPOOL at position 9 needs a 4-D value"):
        run(x, tensors, good[:9] + [cp.QPOOL, 3] + good[9:])


# ---------------------------------------------------------------- mnv3_fast.quantize


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return mnv3_fast.convert(calibrate_bn_(reference.MobileNetV3("SMALL", multiplier=0.5, num_classes=10)))


def batches(n=2, size=48):
    return [randn(4, 3, size, size, seed=100 + i) for i in range(n)]


def test_quantize_gives_a_model_called_like_the_original(small):
    q = mnv3_fast.quantize(small, batches())
    assert isinstance(q, mnv3_fast.QuantizedMobileNetV3)
    for shape in [(1, 3, 48, 48), (3, 3, 61, 53), (0, 3, 48, 48)]:
        x = randn(*shape, seed=7)
        out = q(x)
        assert out.shape == (shape[0], 10) and out.dtype == torch.float32
    assert q(randn(2, 3, 48, 48).to(memory_format=torch.channels_last)).shape == (2, 10)
    assert q(randn(2, 3, 48, 48, dtype=torch.float64)).dtype == torch.float32
    names = q.qparams()
    assert {"stem", "last", "block.0.se", "block.0.out", "block.3.expand"} <= set(names)
    assert all(s > 0 and 0 <= zp <= 255 for s, zp in names.values())


def test_quantize_leaves_the_model_untouched(small):
    before = {k: v.clone() for k, v in small.state_dict().items()}
    small.train()
    mnv3_fast.quantize(small, batches(1))
    assert small.training
    small.eval()
    assert all(torch.equal(v, small.state_dict()[k]) for k, v in before.items())


def test_quantize_errors(small):
    with pytest.raises(TypeError, match="expected a mnv3_fast.MobileNetV3"):
        mnv3_fast.quantize(torch.nn.Linear(2, 2), batches())
    with pytest.raises(ValueError, match="yielded no batch"):
        mnv3_fast.quantize(small, [])
    with pytest.raises(ValueError, match=r"calibration batches must be \(N, 3, H, W\) tensors, got \[4, 3\]"):
        mnv3_fast.quantize(small, [torch.randn(4, 3)])
    with pytest.raises(ValueError, match=r"percentile must be in \(50, 100\], got 101"):
        mnv3_fast.quantize(small, batches(), percentile=101)
    seed = mnv3_fast.MobileNetV3("SMALL", variant="seed", multiplier=0.5)
    with pytest.raises(ValueError, match="seed variant"):
        mnv3_fast.quantize(seed, batches())
    q = mnv3_fast.quantize(small, batches(1))
    with pytest.raises(ValueError, match="3 input channels"):
        q(randn(1, 4, 32, 32))
    with pytest.raises(TypeError, match="floating-point tensor"):
        q(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


def test_int8_program_interpreter_agrees_with_the_op(small):
    """(At batch 2 the 1x1 convs are QPWCONV where the CPU has AMX-INT8; see the next test for QCONV.)"""
    """The whole int8 program: C++ op and Python interpreter within rounding (codes may differ by one
    where float32 sums differ in their last bit, and a network amplifies that a little)."""
    q = mnv3_fast.quantize(small, batches())
    x = randn(2, 3, 48, 48, seed=5)
    program = q._program(tuple(x.shape), torch.get_num_threads())
    out, ref = cp.run_cpu_program(x, program.tensors, program.program), cp.run_cpu_program_reference(
        x, program.tensors, program.program)
    assert ((out - ref).abs().max() / ref.abs().max()).item() < 0.05


def test_int8_program_1x1_convs_by_batch(small, monkeypatch):
    """QPWCONV up to QPWCONV_MAX_BATCH images where the CPU has it, QCONV (oneDNN's int8 conv) otherwise; both
    give the interpreter's logits, and the same logits as each other within int8 rounding."""
    q = mnv3_fast.quantize(small, batches())
    available = torch.int8 in cpu_program.POINTWISE_DTYPES
    x = randn(int8.QPWCONV_MAX_BATCH + 1, 3, 48, 48, seed=5)
    programs = {"small batch": q._program((2, 3, 48, 48), torch.get_num_threads()),
                "large batch": q._program(tuple(x.shape), torch.get_num_threads())}
    monkeypatch.setattr(cpu_program, "POINTWISE_DTYPES", ())
    programs["no QPWCONV"] = mnv3_fast.quantize(small, batches())._program((2, 3, 48, 48), torch.get_num_threads())
    for name, p in programs.items():
        ops_used = {op for op, _ in cp.decode(p.program, p.tensors)}
        uses_q = name == "small batch" and available
        assert (cp.QPWCONV in ops_used) == uses_q and (cp.QCONV in ops_used) == (not uses_q), name
    outs = {}
    for name, p in programs.items():
        xb = x[:2] if p is not programs["large batch"] else x
        out, ref = cp.run_cpu_program(xb, p.tensors, p.program), cp.run_cpu_program_reference(xb, p.tensors, p.program)
        assert ((out - ref).abs().max() / ref.abs().max()).item() < 0.05, name
        outs[name] = out[:2]
    for name in ("large batch", "no QPWCONV"):
        assert ((outs[name] - outs["small batch"]).abs().max() / outs["small batch"].abs().max()).item() < 0.1, name


# ---------------------------------------------------------------- accuracy on a trained network

CHECKPOINT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "data",
                          "shapes_small075.pt")


@pytest.mark.skipif(not os.path.exists(CHECKPOINT), reason="benchmarks/data/shapes_small075.pt not committed")
def test_precisions_keep_the_trained_networks_answers():
    """Issue 13's targets, on the committed trained network and its held-out images: top-1 agreement
    with float32 of at least 99% in bf16 (bf16 weights and images, and bf16 autocast) and 97% in int8
    (calibrated on other images)."""
    sys.path.insert(0, os.path.join(os.path.dirname(CHECKPOINT), ".."))
    from train_shapes import SIZE, TEST_SEED, load  # benchmarks/train_shapes.py

    fast = mnv3_fast.convert(load(CHECKPOINT))
    images, labels = synthetic_shapes(600, SIZE, seed=TEST_SEED)
    calibration = [synthetic_shapes(32, SIZE, seed=50 + i)[0] for i in range(4)]
    with torch.no_grad():
        fp32 = fast(images).argmax(1)
        assert (fp32 == labels).float().mean() > 0.9  # (a trained network: else agreement means little)
        with torch.autocast("cpu", torch.bfloat16):  # (the float32 image read by the bf16 program's stem)
            autocast = fast(images).argmax(1)
        bf16 = fast.bfloat16()(images.bfloat16()).argmax(1)
        fast.float()
        int8_out = mnv3_fast.quantize(fast, calibration)(images).argmax(1)
    assert (bf16 == fp32).float().mean() >= 0.99 and (autocast == fp32).float().mean() >= 0.99
    assert (int8_out == fp32).float().mean() >= 0.97
