"""mnv3::run_cpu_program (a whole CPU forward in one call) against plain PyTorch in float64,
against its Python interpreter, and on bad programs."""
import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import extension_required, needs_onednn_bf16, randn

import mnv3_fast
from mnv3_fast import backends, ops
from mnv3_fast.ops import cpu_program as cp
from mnv3_fast.ops import reference_ops

needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")
pytestmark = needs_onednn


def every_instruction(N=2, C=12, H=11, W=9, dtype=torch.float32, layout="channels_last"):
    """A program that uses every opcode and both residual forms, its input and its float64 result."""
    tensors = [
        randn(C, 3, 3, 3, seed=1, scale=0.3), randn(C, seed=2),            # 0, 1: stem (act hswish)
        randn(C, 1, 5, 5, seed=3, scale=0.3), randn(C, seed=4),            # 2, 3: depthwise (act relu)
        randn(4, C, seed=5), randn(4, seed=6), randn(C, 4, seed=7), randn(C, seed=8),  # 4-7: SE
        randn(C, C, 1, 1, seed=9, scale=0.3),                              # 8: 1x1 conv, no bias (+ residual)
        randn(C, C, 1, 1, seed=10, scale=0.3), randn(C, seed=11),          # 9, 10: 1x1 conv, relu, then + residual
        randn(C, seed=12), randn(C, seed=13),                              # 11, 12: affine
        randn(6, C, seed=14), randn(6, seed=15),                           # 13, 14: linear, hswish
        randn(5, 6, seed=16), randn(5, seed=17),                           # 15, 16: linear, relu
        randn(C, C, 1, 1, seed=18, scale=0.3), randn(C, seed=19),          # 17, 18: 1x1 conv, relu, then a DW
        randn(C, C, 1, 1, seed=20, scale=0.3), randn(C, seed=21),          # 19, 20: 1x1 conv, relu, then a DW
        randn(C, 1, 3, 3, seed=22, scale=0.3), randn(C, seed=23),          # 21, 22: depthwise s2 (act hswish)
    ]
    tensors = [t.to(dtype) for t in tensors]
    program = [
        cp.STEM, 0, 1, 2, 1, 2, cp.MARK, 2,
        cp.SAVE, cp.CONV, 17, 18, 1, 0, 1, 0,  # (the DW applies this ReLU as it loads, in C++)
        cp.DW, 2, 3, 1, 2, 1, 1, cp.SE, 4, 5, 6, 7, cp.CONV, 8, -1, 1, 0, 0, 1, cp.MARK, 1,
        cp.SAVE, cp.CONV, 9, 10, 1, 0, 1, 1, cp.AFFINE, 11, 12, cp.ACT, 2, cp.ACT, 1, cp.ACT, 0, cp.MARK, 1,
        cp.CONV, 19, 20, 1, 0, 1, 0, cp.DW, 21, 22, 2, 1, 1, 2, cp.MARK, 2,  # (a ReLU the DW can't take)
        cp.POOL, cp.LINEAR, 13, 14, 2, 6, cp.LINEAR, 15, 16, 1, 5,
    ]
    if layout == "sliced":  # non-contiguous, with an offset
        x = randn(N, 3, H + 3, W + 2, dtype=dtype, seed=0)[:, :, 2:-1, 1:-1]
    else:
        x = randn(N, 3, H, W, dtype=dtype, seed=0,
                  memory_format=torch.channels_last if layout == "channels_last" else torch.contiguous_format)

    t = [v.double() for v in tensors]
    y = F.hardswish(F.conv2d(x.double(), t[0], t[1], 2, 1))
    saved = y
    y = F.relu(F.conv2d(y, t[17], t[18]))
    y = F.relu(F.conv2d(y, t[2], t[3], 1, 2, groups=C))
    y = reference_ops.squeeze_excite(y, t[4], t[5], t[6], t[7])
    y = F.conv2d(y, t[8]) + saved
    saved = y
    y = F.relu(F.conv2d(y, t[9], t[10])) + saved
    y = F.relu(F.hardswish(y * t[11][:, None, None] + t[12][:, None, None]))
    y = F.relu(F.conv2d(y, t[19], t[20]))
    y = F.hardswish(F.conv2d(y, t[21], t[22], 2, 1, groups=C))
    y = F.hardswish(F.linear(y.mean(dim=(2, 3)), t[13], t[14]))
    expected = F.relu(F.linear(y, t[15], t[16]))
    return x, tensors, program, expected


@pytest.mark.parametrize("run", [cp.run_cpu_program, cp.run_cpu_program_reference], ids=["op", "interpreter"])
@pytest.mark.parametrize("batch", [1, 3])
def test_every_instruction_matches_float64(run, batch, poison_outputs):
    x, tensors, program, expected = every_instruction(N=batch)
    out = run(x, tensors, program)
    assert out.shape == (batch, 5) and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


@needs_onednn_bf16
@pytest.mark.parametrize("fp32_params", [False, True], ids=["bf16_params", "fp32_params"])
@pytest.mark.parametrize("run", [cp.run_cpu_program, cp.run_cpu_program_reference], ids=["op", "interpreter"])
def test_bfloat16(run, fp32_params):
    """bf16 activations; the depthwise and SE parameters bf16, or fp32 as the CPU backend keeps them."""
    x, tensors, program, expected = every_instruction(dtype=torch.bfloat16)
    if fp32_params:
        _, fp32, _, _ = every_instruction()
        tensors = [fp32[i] if i in (2, 3, 4, 5, 6, 7, 21, 22) else t for i, t in enumerate(tensors)]
    out = run(x, tensors, program)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), expected, rtol=0.05, atol=0.05)  # bf16 storage between layers


@needs_onednn_bf16
@pytest.mark.parametrize("run", [cp.run_cpu_program, cp.run_cpu_program_reference], ids=["op", "interpreter"])
def test_float32_image_into_a_bfloat16_program(run, poison_outputs):
    """bf16 autocast hands the program a float32 image: STEM reads it as it is and writes bf16 (computed in
    fp32, rounded once), the rest runs in bf16, and the logits come back in x's dtype."""
    x, tensors, program, expected = every_instruction(dtype=torch.float32, W=41)
    _, bf16, _, _ = every_instruction(dtype=torch.bfloat16)
    out = run(x, bf16, program)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected, rtol=0.05, atol=0.05)
    # STEM alone (an identity LINEAR after the pool): one bf16 rounding of the float32 conv, every pixel.
    C, stem = 12, [cp.STEM, 0, 1, 1, 1, 2, cp.POOL, cp.LINEAR, 2, -1, 0, 12]
    w, b = tensors[0].to(torch.bfloat16), tensors[1].to(torch.bfloat16)
    for image in (x, x.contiguous(), randn(3, 3, 15, 20)[:, :, 2:-1, 3:]):
        conv = F.hardswish(F.conv2d(image.double(), w.double(), b.double(), 1, 1))
        y = run(image, [w, b, torch.eye(C, dtype=torch.bfloat16)], stem)
        torch.testing.assert_close(y.double(), conv.to(torch.bfloat16).double().mean(dim=(2, 3)),
                                   rtol=2**-7, atol=2**-7)
    with pytest.raises(TypeError, match="expected weight to have the same dtype as x"):  # (not the other way)
        cp.run_cpu_program(x.to(torch.bfloat16), tensors, program)


@needs_onednn_bf16
def test_bfloat16_pool_accumulates_in_float32():
    """POOL over a bf16 map: a 1/(H*W) mean of many values, each bf16, summed in fp32 (a bf16 sum
    would lose the small terms)."""
    C, H = 40, 23
    x = (1 + randn(2, C, H, H, scale=1e-2)).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    program = [cp.POOL, cp.LINEAR, 0, -1, 0, C]  # (an identity LINEAR: the output is the pool's)
    out = cp.run_cpu_program(x, [torch.eye(C, dtype=torch.bfloat16)], program)
    torch.testing.assert_close(out.double(), x.double().mean(dim=(2, 3)), rtol=0, atol=2**-8)  # one bf16 rounding


def test_the_op_is_the_cpp_kernel():
    """Otherwise the op-versus-interpreter comparisons below compare the interpreter with itself."""
    if extension_required():
        assert ops.HAS_CPU_KERNELS, ops.EXTENSION_ERROR


@pytest.mark.parametrize("k,stride,dilation", [(3, 1, 1), (3, 2, 1), (5, 2, 1), (3, 1, 2), (5, 1, 2)])
@pytest.mark.parametrize("residual_act", [1, 2])
def test_relu_applied_by_the_depthwise_conv(k, stride, dilation, residual_act):
    """CONV(relu) then DW(relu): the C++ runner applies the ReLU as the DW loads (every kernel path)."""
    C = 24
    t = [randn(C, 3, 3, 3, seed=1, scale=0.3), randn(C, seed=2), randn(C, C, 1, 1, seed=3, scale=0.3),
         randn(C, seed=4), randn(C, 1, k, k, seed=5, scale=0.3), randn(C, seed=6),
         randn(C, C, 1, 1, seed=7, scale=0.3), randn(C, seed=8), randn(5, C, seed=9), randn(5, seed=10)]
    pad = dilation * (k // 2)
    program = [cp.STEM, 0, 1, 2, 1, 2, cp.CONV, 2, 3, 1, 0, 1, 0, cp.DW, 4, 5, stride, pad, dilation, 1,
               cp.SAVE, cp.CONV, 6, 7, 1, 0, residual_act, 1, cp.POOL, cp.LINEAR, 8, 9, 0, 5]
    x = randn(2, 3, 30, 27, memory_format=torch.channels_last)
    d = [v.double() for v in t]
    y = F.hardswish(F.conv2d(x.double(), d[0], d[1], 2, 1))
    y = F.relu(F.conv2d(F.relu(F.conv2d(y, d[2], d[3])), d[4], d[5], stride, pad, dilation, groups=C))
    z = F.conv2d(y, d[6], d[7])
    y = (F.relu(z) if residual_act == 1 else F.hardswish(z)) + y
    expected = F.linear(y.mean(dim=(2, 3)), d[8], d[9])
    torch.testing.assert_close(cp.run_cpu_program(x, t, program).double(), expected, rtol=1e-5, atol=1e-5)
    x[1, :, 5, 7] = float("nan")  # NaN in, NaN out: the ReLU on load must not turn it into 0
    out = cp.run_cpu_program(x, t, program)
    assert not out[0].isnan().any() and out[1].isnan().all()


def test_stem_general_shapes():
    """STEM beyond MobileNetV3's 3x3 stride-2 stem: 4 input channels, 5x5, stride 1, 20 outputs."""
    w, b, head = randn(20, 4, 5, 5, seed=1, scale=0.2), randn(20, seed=2), randn(3, 20, seed=3)
    program = [cp.STEM, 0, 1, 1, 2, 1, cp.POOL, cp.LINEAR, 2, -1, 0, 3]
    for x in (randn(2, 4, 13, 11), randn(2, 4, 15, 13)[:, :, 1:-1, 2:]):
        expected = F.linear(F.relu(F.conv2d(x.double(), w.double(), b.double(), 1, 2)).mean(dim=(2, 3)), head.double())
        torch.testing.assert_close(cp.run_cpu_program(x, [w, b, head], program).double(), expected,
                                   rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="input of spatial size 2x9 is too small for a 5x5 kernel with padding 1"):
        cp.run_cpu_program(randn(1, 4, 2, 9), [w, b, head], [cp.STEM, 0, 1, 2, 1, 0, cp.POOL,
                                                            cp.LINEAR, 2, -1, 0, 3])


@pytest.mark.parametrize("layout", ["nchw", "sliced"])
def test_input_layouts(layout):
    # W=41: the stem's 8-pixel interior steps run too, not only its edge path.
    x, tensors, program, expected = every_instruction(layout=layout, W=41)
    torch.testing.assert_close(cp.run_cpu_program(x, tensors, program).double(), expected, rtol=1e-5, atol=1e-5)


def test_stage_marks():
    x, tensors, program, expected = every_instruction()
    stages = list(cp.interpret(x, tensors, program))
    assert [(tuple(v.shape), stride) for v, stride in stages] == [((2, 12, 6, 5), 2), ((2, 12, 6, 5), 1),
                                                                  ((2, 12, 6, 5), 1), ((2, 12, 3, 3), 2)]


@pytest.mark.parametrize("mode", ["LARGE", "SMALL"])
@pytest.mark.parametrize("variant", ["paper", "seed"])
def test_model_program_op_equals_interpreter(mode, variant):
    """The model's packed program (oneDNN-blocked weights) gives the same logits in C++ and in Python."""
    model = mnv3_fast.MobileNetV3(mode, variant=variant).eval()
    x = randn(2, 3, 64, 64, memory_format=torch.channels_last)
    with torch.no_grad():
        p = backends.CPU_PROGRAM.program(model, x, backends.make_call(model, x))
        torch.testing.assert_close(cp.run_cpu_program(x, p.tensors, p.program),
                                   cp.run_cpu_program_reference(x, p.tensors, p.program), rtol=1e-5, atol=1e-6)


def test_empty_batch():
    x, tensors, program, _ = every_instruction()
    for run in (cp.run_cpu_program, cp.run_cpu_program_reference):
        assert run(x[:0], tensors, program).shape == (0, 5)


def test_opcheck():
    x, tensors, program, _ = every_instruction()
    torch.library.opcheck(torch.ops.mnv3.run_cpu_program.default, (x, tensors, program),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


@pytest.mark.parametrize("run", [cp.run_cpu_program, cp.run_cpu_program_reference, cp._fake],
                         ids=["op", "interpreter", "fake"])
def test_bad_programs_and_inputs(run):
    x, tensors, program, _ = every_instruction()
    at = {}  # the position of the first instruction of each opcode
    position = 0
    for op, args in cp.decode(program, tensors):
        at.setdefault(op, position)
        if op == cp.CONV and args[5]:
            at.setdefault("residual", position)
        position += 1 + len(args)
    last = position - 5
    bad_programs = {
        "unknown opcode 42 at position 0": [42] + program,
        f"LINEAR at position {last} needs 4 arguments, got 3": program[:-1],
        f"STEM at position 0 names tensor 99, but there are {len(tensors)} tensors": [cp.STEM, 99] + program[2:],
        f"CONV at position {at[cp.CONV]} names tensor -1": program[:at[cp.CONV] + 1] + [-1] + program[at[cp.CONV] + 2:],
        f"DW at position {at[cp.DW]} has activation code 7": program[:at[cp.DW] + 6] + [7] + program[at[cp.DW] + 7:],
        "expected the program to end with a LINEAR instruction": program + [cp.ACT, 0],
        # (issue 14: a LINEAR on an un-pooled 4-D value must raise, not compute something)
        f"LINEAR at position {at[cp.POOL]} needs pooled \\(N, C\\) features: put a POOL before it":
            program[:at[cp.POOL]] + program[at[cp.POOL] + 1:],
        f"DW at position {at[cp.POOL] + 1} needs a 4-D value, but the value was pooled at position {at[cp.POOL]}":
            program[:at[cp.POOL] + 1] + program[at[cp.DW]:at[cp.DW] + 7] + program[at[cp.POOL] + 1:],
        f"CONV at position {at['residual'] - 1} adds a residual, but no SAVE comes before it":
            [v for k, v in enumerate(program) if k != at[cp.SAVE]],
        f"LINEAR at position {last} declares 7 output features, but its weight has shape": program[:-1] + [7],
    }
    for message, bad in bad_programs.items():
        with pytest.raises(ValueError, match=message):
            run(x, tensors, bad)
    with pytest.raises(ValueError, match="expected x to be a 4-D"):
        run(x[0], tensors, program)
    with pytest.raises(TypeError, match="expected x to be float32 or bfloat16 on the CPU, got (torch.float64|Double)"):
        run(x.double(), tensors, program)


# ---------------------------------------------------------------- PWCONV (1x1 convs as tile loops)

from mnv3_fast.backends.cpu import program as cpu_program  # noqa: E402


def needs_pwconv(dtype):
    return pytest.mark.skipif(dtype not in cpu_program.POINTWISE_DTYPES,
                              reason=f"this torch or CPU runs no PWCONV in {dtype} (bfloat16 needs AMX)")


PW_DTYPES = [pytest.param(d, marks=needs_pwconv(d)) for d in (torch.float32, torch.bfloat16)]


def pwconv_case(N, K, C, H, W, act, residual, dtype, seed=0):
    """x, tensors, program (SAVE, PWCONV, POOL, identity LINEAR) and the float64 map before the pool."""
    from mnv3_fast import _C

    x = randn(N, K, H, W, dtype=dtype, seed=seed, memory_format=torch.channels_last)
    w, b = randn(C, K, 1, 1, seed=seed + 1, scale=K ** -0.5), randn(C, seed=seed + 2)
    if residual:  # a saved value of C channels: a first PWCONV (no act) makes one from x
        w0, b0 = randn(C, K, 1, 1, seed=seed + 3, scale=K ** -0.5), randn(C, seed=seed + 4)
        w = randn(C, C, 1, 1, seed=seed + 1, scale=C ** -0.5)
    tensors = [_C.pack_pointwise(w.to(dtype)), b, torch.eye(C, dtype=dtype)]
    program = [cp.PWCONV, 0, 1, act, residual, cp.POOL, cp.LINEAR, 2, -1, 0, C]
    wd = w.to(dtype).double()
    if residual:
        tensors += [_C.pack_pointwise(w0.to(dtype)), b0]
        program = [cp.PWCONV, 3, 4, 0, 0, cp.SAVE] + program
        y = F.conv2d(x.double(), w0.to(dtype).double(), b0.double()).to(dtype).double()  # (stored in dtype)
        expected = F.conv2d(y, wd, b.double())
    else:
        y, expected = None, F.conv2d(x.double(), wd, b.double())
    expected = [lambda v: v, F.relu, F.hardswish][act](expected)
    return x, tensors, program, expected + y if residual else expected


@pytest.mark.parametrize("dtype", PW_DTYPES)
@pytest.mark.parametrize("act", [0, 1, 2])
@pytest.mark.parametrize("residual", [0, 1])
@pytest.mark.parametrize("run", [cp.run_cpu_program, cp.run_cpu_program_reference], ids=["op", "interpreter"])
def test_pwconv_every_pixel(dtype, act, residual, run, poison_outputs):
    """1x1 maps, so the pooled logits are the conv's every output: 67 pixels (a tile of 64 and a partial
    one), 40 and 18 output channels (a block of 32 and a partial one), 24 and 14 input channels."""
    for N, K, C in [(67, 24, 40), (3, 14, 18)]:
        x, tensors, program, expected = pwconv_case(N, K, C, 1, 1, act, residual, dtype)
        out = run(x, tensors, program)
        assert out.dtype == dtype
        tol = 1e-5 if dtype == torch.float32 else 2e-2
        torch.testing.assert_close(out.double(), expected.flatten(1), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", PW_DTYPES)
@pytest.mark.parametrize("K", [2, 16, 32, 40, 72, 200])
def test_pwconv_tile_shapes(dtype, K, poison_outputs):
    """Every output of 1x1 maps at the micro-kernels' edges: input channels in whole chunks of 32, a chunk
    and a tail, a tail alone (the bf16 AMX tiles); 1-15 pixels (padded to a tile of 16), 16, and partial
    groups of 16 after whole ones (computed as the 16 rows that end at the last pixel)."""
    for M in (1, 15, 16, 17, 49, 130):
        x, tensors, program, expected = pwconv_case(M, K, 40, 1, 1, 2, 0, dtype, seed=K + M)
        out = cp.run_cpu_program(x, tensors, program)
        tol = 1e-5 if dtype == torch.float32 else 2e-2
        torch.testing.assert_close(out.double(), expected.flatten(1), rtol=tol, atol=tol, msg=f"M={M} K={K}")


@pytest.mark.parametrize("dtype", PW_DTYPES)
@pytest.mark.parametrize("batch", [1, 2])
def test_pwconv_maps(dtype, batch, poison_outputs):
    """Odd-sized maps (partial tiles), output channels in 1-4 vectors of 16 and partial (the fp32 AVX-512
    register tiles take 64 channels at a time); a skipped pixel is NaN (poison)."""
    for C in (8, 34, 72, 120):
        x, tensors, program, expected = pwconv_case(batch, 16, C, 11, 9, 2, 1, dtype, seed=C)
        out = cp.run_cpu_program(x, tensors, program)
        tol = 1e-5 if dtype == torch.float32 else 2e-2
        torch.testing.assert_close(out.double(), expected.mean(dim=(2, 3)), rtol=tol, atol=tol)
        torch.testing.assert_close(out, cp.run_cpu_program_reference(x, tensors, program), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", PW_DTYPES)
def test_pack_pointwise_round_trip(dtype):
    """`unpack_pointwise` (the interpreter's reading of the format) inverts _C.pack_pointwise."""
    from mnv3_fast import _C

    for C, K in [(13, 14), (32, 16), (72, 24), (960, 160)]:
        w = randn(C, K, 1, 1, seed=C).to(dtype)
        packed = _C.pack_pointwise(w)
        assert packed.shape == ((C + 31) // 32, K, 32)
        assert torch.equal(cp.unpack_pointwise(packed, C), w[:, :, 0, 0])


@needs_pwconv(torch.float32)
def test_pwconv_bad_inputs():
    from mnv3_fast import _C

    x, tensors, program, _ = pwconv_case(2, 24, 40, 3, 3, 0, 0, torch.float32)
    with pytest.raises(ValueError, match=r"expected a packed weight of shape \(2, 16, 32\) for 16 input and 40"):
        cp.run_cpu_program(x[:, :16], tensors, program)
    with pytest.raises(ValueError, match="PWCONV at position 0 needs a packed weight"):
        cp.run_cpu_program(x, [tensors[0][0]] + tensors[1:], program)
    with pytest.raises(ValueError, match="PWCONV at position 0 names tensor -1"):
        cp.run_cpu_program(x, tensors, [cp.PWCONV, 0, -1] + program[3:])
    with pytest.raises(TypeError, match="expected x and the packed weight in one dtype .* got x BFloat16 and the"):
        cp.run_cpu_program(x.bfloat16(), tensors[:2] + [tensors[2].bfloat16()], program)
    with pytest.raises(TypeError, match="pack_pointwise_weight: this build and CPU run PWCONV in float32"):
        _C.pack_pointwise(torch.randn(40, 24, 1, 1, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"expected a 1x1 conv weight \(N, K, 1, 1\) or a matrix \(N, K\), got"):
        _C.pack_pointwise(torch.randn(4, 4, 3, 3))


@pytest.mark.parametrize("dtype", PW_DTYPES)
@pytest.mark.parametrize("act", [0, 1, 2])
@pytest.mark.parametrize("run", [cp.run_cpu_program, cp.run_cpu_program_reference], ids=["op", "interpreter"])
def test_linear_packed_as_pwconv(dtype, act, run, poison_outputs):
    """A LINEAR whose weight is packed as PWCONV's (the head where PWCONV runs) against float64: batches of
    1 and 7 (a partial tile of 6 rows), 70 features (64 and a partial vector), the act after the bias."""
    from mnv3_fast import _C

    for N in (1, 7):
        x = randn(N, 40, 3, 5, dtype=dtype, seed=N, memory_format=torch.channels_last)
        w, b = randn(70, 40, seed=N + 1, scale=40 ** -0.5).to(dtype), randn(70, seed=N + 2)
        program = [cp.POOL, cp.LINEAR, 0, 1, act, 70]
        out = run(x, [_C.pack_pointwise(w), b], program)
        expected = F.linear(x.double().mean(dim=(2, 3)).to(dtype).double(), w.double(), b.double())
        expected = [lambda v: v, F.relu, F.hardswish][act](expected)
        assert out.shape == (N, 70) and out.dtype == dtype
        tol = 1e-5 if dtype == torch.float32 else 2e-2
        torch.testing.assert_close(out.double(), expected, rtol=tol, atol=tol)


@needs_pwconv(torch.float32)
def test_linear_packed_needs_its_bias():
    from mnv3_fast import _C

    x, packed = randn(2, 40, 3, 3), _C.pack_pointwise(randn(70, 40))
    for run in (cp.run_cpu_program, cp.run_cpu_program_reference):
        with pytest.raises(ValueError, match=r"LINEAR at position 1 declares 70 output features, but its weight has "
                                             r"shape \[3, 40, 32\] \(a packed one needs a bias of that size\)"):
            run(x, [packed], [cp.POOL, cp.LINEAR, 0, -1, 0, 70])
        with pytest.raises(ValueError, match="LINEAR at position 1 declares 70 output features"):
            run(x, [packed, randn(100)], [cp.POOL, cp.LINEAR, 0, 1, 0, 70])


@pytest.mark.parametrize("mode", ["LARGE", "SMALL"])
def test_model_program_with_and_without_pwconv(mode, monkeypatch):
    """Both ways of running the 1x1 convs (PWCONV, or oneDNN's convolution: CONV) give the model's logits."""
    model = mnv3_fast.MobileNetV3(mode).eval()
    x = randn(2, 3, 64, 64, memory_format=torch.channels_last)
    outs = {}
    with torch.no_grad():
        for dtypes in (cpu_program.POINTWISE_DTYPES, ()):
            monkeypatch.setattr(cpu_program, "POINTWISE_DTYPES", dtypes)
            fresh = copy.deepcopy(model)  # (programs are cached per model)
            p = backends.CPU_PROGRAM.program(fresh, x, backends.make_call(fresh, x))
            ops_used = {op for op, _ in cp.decode(p.program, p.tensors)}
            assert (cp.PWCONV in ops_used) == (torch.float32 in dtypes) and (cp.CONV in ops_used) != (cp.PWCONV in ops_used)
            outs[dtypes] = cp.run_cpu_program(x, p.tensors, p.program)
    torch.testing.assert_close(*outs.values(), rtol=1e-5, atol=1e-5)
    expected = model.double()(x.double())
    torch.testing.assert_close(outs[()].double(), expected, rtol=1e-4, atol=1e-4)
