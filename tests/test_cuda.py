"""The CUDA side at full MobileNetV3 sizes: the backend's kernels, the whole network, CUDA graphs,
torch.compile.  (The mnv3 ops themselves are checked on every target, CUDA included, by
tests/test_ops_*.py.)

Marked `cuda`: skipped on machines without a GPU, run by benchmarks/gpu_check.sh.
"""
import pytest
import torch
from conftest import assert_close, assert_close_rel

import mnv3_fast
from mnv3_fast import ops, reference
from mnv3_fast.ops import reference_ops
from mnv3_fast.testing import calibrate_bn_

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run by benchmarks/gpu_check.sh)"),
]

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
FORMATS = (torch.contiguous_format, torch.channels_last)


def gen(*shape, dtype=torch.float32, scale=1.0, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return (torch.randn(*shape, device="cuda", generator=g) * scale).to(dtype)


def test_triton_kernels_are_registered():
    assert ops.TRITON_ERROR is None, ops.TRITON_ERROR
    from mnv3_fast.ops._library import CUDA_KERNELS, TRITON_OPS

    assert set(CUDA_KERNELS) == set(TRITON_OPS)


def test_opcheck_on_cuda():
    x = gen(2, 16, 9, 9).contiguous(memory_format=torch.channels_last)
    w, b = gen(16, 1, 3, 3), gen(16)
    torch.library.opcheck(torch.ops.mnv3.dw_conv_bn_act.default, (x, w, b, 2, 1, 1, "hswish"))
    torch.library.opcheck(torch.ops.mnv3.squeeze_excite.default, (x, gen(8, 16), gen(8), gen(16, 8), gen(16)))
    torch.library.opcheck(torch.ops.mnv3.hswish.default, (x,))


def _models(mode):
    torch.manual_seed(0)
    ref = calibrate_bn_(reference.MobileNetV3(mode))
    return ref.cuda(), mnv3_fast.convert(ref).cuda()


@pytest.mark.parametrize("mode", ["LARGE", "SMALL"])
def test_model_fp32_and_fp16_channels_last(mode):
    ref, fast = _models(mode)
    x = gen(4, 3, 224, 224)
    with torch.no_grad():
        expected = ref(x).double()
        scale = expected.abs().max()
        out = fast.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
        assert (out.double() - expected).abs().max() / scale < 1e-3  # TF32 convs in cuDNN
        half = fast.half()(x.half().contiguous(memory_format=torch.channels_last))
        assert half.dtype == torch.float16
        assert (half.double() - expected).abs().max() / scale < 5e-2
        fast.float()
        with torch.autocast("cuda", dtype=torch.float16):
            auto = fast(x)
        assert (auto.double() - expected).abs().max() / scale < 5e-2


def test_model_compiles_on_cuda():
    ref, fast = _models("SMALL")
    x = gen(2, 3, 128, 128)
    with torch.no_grad():
        compiled = torch.compile(fast, fullgraph=True)
        torch.testing.assert_close(compiled(x), fast(x), rtol=1e-3, atol=1e-3)


# ---------------------------------------------------------------- the CUDA backend's kernels and the backend (issue 12)

CL = torch.channels_last
# (Cin, H, Cout, act, residual, gate, pool): MobileNetV3-Large's GEMM kinds at 224x224.
LARGE_PW = [(16, 112, 64, "relu", False, False, False), (72, 28, 40, "none", False, True, False),
            (120, 28, 40, "none", True, True, False), (80, 14, 200, "hswish", False, False, False),
            (672, 7, 160, "none", False, True, False), (160, 7, 960, "hswish", False, False, True)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("Cin,H,Cout,act,residual,gate,pool", LARGE_PW)
def test_pw_conv_bn_act(Cin, H, Cout, act, residual, gate, pool, dtype):
    for N in (1, 8):
        x = gen(N, Cin, H, H, dtype=dtype, seed=Cin, scale=2).contiguous(memory_format=CL)
        w, b = gen(Cout, Cin, dtype=dtype, scale=Cin**-0.5, seed=1), gen(Cout, dtype=dtype, seed=2)
        res = gen(N, Cout, H, H, dtype=dtype, seed=3).contiguous(memory_format=CL) if residual else None
        g = torch.rand(N, Cin, device="cuda") if gate else None
        out = torch.ops.mnv3.pw_conv_bn_act(x, w, b, act, res, g, pool)
        xg = x if g is None else (x.double() * g.double()[:, :, None, None]).to(dtype)  # the documented rounding
        expected = reference_ops.pw_conv_bn_act(xg.double(), w.double(), b.double(), act,
                                                None if res is None else res.double(), None, pool)
        assert_close(out, expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_stem_dw_partials_se_gate_and_head(dtype):
    import mnv3_fast.ops.triton as tt

    for N in (1, 8):
        img = gen(N, 3, 224, 224, dtype=dtype, seed=N)
        w, b = gen(16, 3, 3, 3, dtype=dtype, scale=0.3, seed=1), gen(16, dtype=dtype, seed=2)
        for x in (img, img.contiguous(memory_format=CL)):
            out = torch.ops.mnv3.stem_conv(x, w, b, 2, 1, "hswish")
            assert out.is_contiguous(memory_format=CL)
            assert_close(out, reference_ops.stem_conv(x.double(), w.double(), b.double(), 2, 1, "hswish"), dtype)
        for C, H, k, stride, S in [(72, 56, 5, 2, 24), (672, 14, 5, 1, 168), (960, 7, 5, 1, 240)]:
            x = gen(N, C, H, H, dtype=dtype, seed=C).contiguous(memory_format=CL)
            wd, bd = gen(C, 1, k, k, dtype=dtype, scale=0.3, seed=3), gen(C, dtype=dtype, seed=4)
            out, sums = tt.dw_conv_bn_act(x, wd, bd, stride, k // 2, 1, "hswish", return_sums=True)
            again, sums2 = tt.dw_conv_bn_act(x, wd, bd, stride, k // 2, 1, "hswish", return_sums=True)
            assert torch.equal(out, again) and torch.equal(sums, sums2)  # deterministic: no atomics
            torch.testing.assert_close(sums.double(), out.double().sum(dim=(2, 3)), rtol=1e-5, atol=1e-2)
            se = (gen(S, C, dtype=dtype, scale=C**-0.5 * 4, seed=5), gen(S, dtype=dtype, seed=6),
                  gen(C, S, dtype=dtype, scale=S**-0.5 * 4, seed=7), gen(C, dtype=dtype, seed=8))
            gate = torch.ops.mnv3.se_gate(sums, *se, out.shape[2] * out.shape[3])
            torch.testing.assert_close(gate.double(), reference_ops.se_gate(sums.double(), *(t.double() for t in se),
                                                                            out.shape[2] * out.shape[3]),
                                       rtol=1e-5, atol=1e-5)
        pooled = gen(N, 960, dtype=dtype, seed=9)
        w1, b1 = gen(1280, 960, dtype=dtype, scale=960**-0.5, seed=10), gen(1280, dtype=dtype, seed=11)
        w2, b2 = gen(1000, 1280, dtype=dtype, scale=1280**-0.5, seed=12), gen(1000, dtype=dtype, seed=13)
        h = reference_ops.activation(torch.nn.functional.linear(pooled.double(), w1.double(), b1.double()), "hswish")
        expected = torch.nn.functional.linear(h.to(dtype).double(), w2.double(), b2.double())
        assert_close(torch.ops.mnv3.classifier_head(pooled, w1, b1, w2, b2, "hswish"), expected, dtype)


def test_new_ops_opcheck_and_compile_on_cuda():
    x = gen(2, 16, 9, 9).contiguous(memory_format=CL)
    w, b, g = gen(24, 16), gen(24), torch.rand(2, 16, device="cuda")
    torch.library.opcheck(torch.ops.mnv3.pw_conv_bn_act.default, (x, w, b, "hswish", None, g, False))
    torch.library.opcheck(torch.ops.mnv3.pw_conv_bn_act.default, (x, w, b, "relu", None, None, True))
    torch.library.opcheck(torch.ops.mnv3.stem_conv.default, (gen(2, 3, 17, 17), gen(16, 3, 3, 3), gen(16), 2, 1, "hswish"))
    torch.library.opcheck(torch.ops.mnv3.se_gate.default, (gen(2, 3, 16), gen(4, 16), gen(4), gen(16, 4), gen(16), 81))
    torch.library.opcheck(torch.ops.mnv3.classifier_head.default, (gen(2, 16), gen(8, 16), gen(8), gen(5, 8), None, "relu"))
    fn = torch.compile(lambda x, w, b, g: torch.ops.mnv3.pw_conv_bn_act(x, w, b, "hswish", None, g, False), fullgraph=True)
    torch.testing.assert_close(fn(x, w, b, g), torch.ops.mnv3.pw_conv_bn_act(x, w, b, "hswish", None, g, False))


def _fast(mode, dtype):
    torch.manual_seed(0)
    ref = calibrate_bn_(reference.MobileNetV3(mode)).cuda()
    return ref, mnv3_fast.convert(ref).to(dtype).to(memory_format=CL).eval()


@pytest.mark.parametrize("mode", ["LARGE", "SMALL"])
def test_cuda_backend_whole_network(mode):
    """The whole forward on the backend's kernels (fp32, fp16, bf16; NCHW and NHWC input), its
    feature maps, determinism, against the reference model in float64."""
    x = gen(2, 3, 224, 224, seed=4)
    for dtype, tol in ((torch.float32, 1e-4), (torch.float16, 3e-2), (torch.bfloat16, 6e-2)):
        ref, fast = _fast(mode, dtype)
        with torch.no_grad():
            expected = ref.double()(x.double())
            for inp in (x.to(dtype), x.to(dtype).contiguous(memory_format=CL)):
                assert fast.explain(inp).backend == "cuda", str(fast.explain(inp))
                out = fast(inp)
                assert_close_rel(out, expected, tol)
                assert torch.equal(out, fast(inp))  # bit-identical runs
            maps, ref_maps = fast.feature_maps(x.to(dtype)), ref.feature_maps(x.double())
            for m, e in zip(maps, ref_maps):
                assert_close_rel(m, e, tol)


def test_cuda_graphs_replay_overwrites_the_output():
    ref, fast = _fast("SMALL", torch.float16)
    x, y = gen(4, 3, 224, 224, dtype=torch.float16, seed=1), gen(4, 3, 224, 224, dtype=torch.float16, seed=2)
    with torch.no_grad():
        plain_x, plain_y = fast(x), fast(y)
        fast.cuda_graphs(True)
        out_x = fast(x)
        kept = out_x.clone()
        assert torch.equal(out_x, plain_x)  # the same kernels, replayed
        out_y = fast(y)
        assert out_y is out_x and torch.equal(out_x, plain_y)  # the replay overwrote the first result
        assert torch.equal(kept, plain_x)  # a clone keeps it
        assert fast(x[:1]).shape == (1, 1000)  # another shape: another graph
        fast.out_conv2[3].bias.data.add_(1.0)  # (invisible to the cache: documented) ...
        fast.clear_fused_cache()  # ... so drop it explicitly
        assert not torch.equal(fast(x), plain_x)
