"""The fast model against the eager reference: parity, cache, training, compile, export, bad input."""
import copy

import pytest
import torch

import mnv3_fast
from mnv3_fast import reference
from mnv3_fast import backends
from mnv3_fast.backends.cpu.program import activation_peak
from mnv3_fast.plan import build_plan

from conftest import randn

RTOL = 1e-4  # fp32 CPU logits: max-abs difference over the reference's max-abs


def assert_close_rel(out, expected, rtol=RTOL):
    scale = expected.abs().max().clamp_min(1e-12)
    err = ((out.double() - expected.double()).abs().max() / scale).item()
    assert err <= rtol, f"relative error {err:.3g} > {rtol}"


def assert_grads_close(fast, ref, rtol=RTOL):
    """Per-parameter gradients within rtol relative; gradients that are zero in exact arithmetic
    (a BN shift followed by a train-mode BN) hold only rounding noise, so the floor of the
    tolerance is rtol of the largest gradient in the model."""
    floor = max(p.grad.abs().max() for p in ref.parameters() if p.grad is not None)
    for (name, p_ref), p_fast in zip(ref.named_parameters(), fast.parameters()):
        assert p_fast.grad is not None, name
        err = (p_fast.grad - p_ref.grad).abs().max() / max(p_ref.grad.abs().max(), floor)
        assert err <= rtol, f"{name}: gradient relative error {err:.3g}"


def randomize(model, seed=0):
    """Non-trivial BN statistics and affine parameters, and non-zero biases, so folding errors show."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            elif isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and m.bias is not None:
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) * 0.2 - 0.1)
    return model


def pair(mode="SMALL", variant="paper", multiplier=1.0, **kw):
    ref = randomize(reference.MobileNetV3(mode, multiplier=multiplier, variant=variant, **kw)).eval()
    fast = mnv3_fast.MobileNetV3(mode, multiplier=multiplier, variant=variant, **kw)
    fast.load_state_dict(ref.state_dict())
    return ref, fast.eval()


@pytest.mark.parametrize("multiplier", [0.5, 0.75, 1.0])
@pytest.mark.parametrize("variant", ["paper", "seed"])
@pytest.mark.parametrize("mode", ["LARGE", "SMALL"])
def test_eval_parity_with_reference(mode, variant, multiplier):
    ref, fast = pair(mode, variant, multiplier)
    with torch.no_grad():
        for batch, size in [(1, 224), (3, 97)]:
            x = randn(batch, 3, size, size, seed=batch)
            assert_close_rel(fast(x), ref(x))


def test_same_parameters_buffers_and_keys_both_ways():
    for variant in ("paper", "seed"):
        ref = reference.MobileNetV3("LARGE", variant=variant)
        fast = mnv3_fast.MobileNetV3("LARGE", variant=variant)
        assert list(ref.state_dict()) == list(fast.state_dict())
        assert [p.shape for p in ref.parameters()] == [p.shape for p in fast.parameters()]
        fast.load_state_dict(ref.state_dict())
        ref.load_state_dict(fast.state_dict())
    assert isinstance(mnv3_fast.mobilenet_v3_large(), mnv3_fast.MobileNetV3)
    assert mnv3_fast.mobilenet_v3_small(num_classes=10).config.num_classes == 10


def test_channels_last_and_nchw_agree():
    ref, fast = pair("LARGE")
    x = randn(2, 3, 97, 97)
    with torch.no_grad():
        expected = ref(x)
        assert_close_rel(fast(x.contiguous(memory_format=torch.channels_last)), expected)
        fast_cl = copy.deepcopy(fast).to(memory_format=torch.channels_last)
        assert_close_rel(fast_cl(x.contiguous(memory_format=torch.channels_last)), expected)
        assert_close_rel(fast_cl(x), expected)


@pytest.mark.parametrize("images_per_chunk, chunks", [(1, 7), (3, 3), (0, 1)])  # 0: the whole batch
def test_cpu_batch_chunks_give_the_whole_batch_result(images_per_chunk, chunks):
    ref, fast = pair("SMALL")
    x = randn(7, 3, 61, 61)
    with torch.no_grad():
        peak_bytes = activation_peak(build_plan(fast), [3, 61, 61]) * x.element_size()
        fast.cpu_chunk_bytes = images_per_chunk * peak_bytes
        assert backends.CPU_PROGRAM.chunks(fast, x, backends.make_call(fast, x)) == chunks
        assert_close_rel(fast(x), ref(x))
        assert_close_rel(fast(x[:1]), ref(x[:1]))


class TestCacheInvalidation:
    def test_in_place_running_mean_change(self):
        ref, fast = pair()
        x = randn(1, 3, 64, 64)
        with torch.no_grad():
            before = fast(x)
            for model in (ref, fast):
                model.block[3].depthwise_conv[1].running_mean.add_(0.5)
            after = fast(x)
            assert not torch.allclose(before, after)
            assert_close_rel(after, ref(x))

    def test_in_place_weight_change_load_state_dict_and_to(self):
        ref, fast = pair()
        x = randn(1, 3, 64, 64)
        with torch.no_grad():
            fast(x)
            ref.init_conv[0].weight.mul_(1.5)
            fast.init_conv[0].weight.mul_(1.5)
            assert_close_rel(fast(x), ref(x))
            ref2, _ = pair("SMALL")
            randomize(ref2, seed=7)
            fast.load_state_dict(ref2.state_dict())
            assert_close_rel(fast(x), ref2(x))
            fast64 = fast.double()
            assert fast64(x.double()).dtype == torch.float64
            assert_close_rel(fast64(x.double()), ref2.double()(x.double()), rtol=1e-10)

    def test_replaced_parameter_and_submodule(self):
        ref, fast = pair()
        x = randn(1, 3, 64, 64)
        with torch.no_grad():
            fast(x)
            new_gamma = torch.rand(ref.block[4].depthwise_conv[1].num_features) + 0.5
            for model in (ref, fast):  # a new Parameter object, not an in-place write
                model.block[4].depthwise_conv[1].weight = torch.nn.Parameter(new_gamma.clone())
            assert_close_rel(fast(x), ref(x))
            head = torch.nn.Conv2d(1024, 1000, 1)
            for model in (ref, fast):  # a new submodule
                model.out_conv2[3] = copy.deepcopy(head)
            assert_close_rel(fast(x), ref(x))

    def test_train_then_eval_uses_new_statistics(self):
        ref, fast = pair()
        x = randn(4, 3, 64, 64)
        with torch.no_grad():
            fast(x)
            for model in (ref, fast):
                model.train()(x)  # running stats move
                model.eval()
            assert_close_rel(fast(x), ref(x))

    def test_clear_fused_cache_after_data_writes(self):
        ref, fast = pair()
        x = randn(1, 3, 64, 64)
        with torch.no_grad():
            fast(x)
            for model in (ref, fast):
                model.out_conv1[1].running_var.data.mul_(3)  # bypasses the version counter
            fast.clear_fused_cache()
            assert_close_rel(fast(x), ref(x))


@pytest.mark.parametrize("variant", ["paper", "seed"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_train_mode_outputs_gradients_and_running_stats(variant, dtype):
    # float64 pins the gradients tightly.  In float32 a rounding difference in the forward now and
    # then moves a value across a kink of ReLU or hard-swish, which changes its gradient outright
    # (the likely cause of a rare failure at 1e-4), so there the gradients only get a looser check.
    ref, fast = (m.to(dtype) for m in pair("SMALL", variant))
    ref.train(), fast.train()
    x = randn(4, 3, 64, 64, dtype=dtype)
    torch.manual_seed(0)
    out_ref = ref(x)
    torch.manual_seed(0)  # the same dropout mask
    out_fast = fast(x)
    assert_close_rel(out_fast, out_ref, rtol=1e-10 if dtype == torch.float64 else RTOL)
    grad = randn(*out_ref.shape, seed=5, dtype=dtype)
    out_ref.backward(grad)
    out_fast.backward(grad)
    assert_grads_close(fast, ref, rtol=1e-7 if dtype == torch.float64 else 1e-3)
    for (name, b_ref), b_fast in zip(ref.named_buffers(), fast.buffers()):
        assert torch.allclose(b_fast.double(), b_ref.double(), rtol=1e-5, atol=1e-6), name


def test_frozen_bn_fine_tuning_gradients():
    """eval() (BN on running statistics) with trainable weights: folded weights must carry gradients."""
    ref, fast = pair("SMALL")
    x = randn(2, 3, 64, 64).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    out_fast, out_ref = fast(x), ref(x_ref)
    assert_close_rel(out_fast, out_ref)
    grad = randn(*out_ref.shape, seed=3)
    out_fast.backward(grad)
    out_ref.backward(grad)
    assert_close_rel(x.grad, x_ref.grad)
    assert_grads_close(fast, ref)


def test_compile_fullgraph_eval_and_train():
    ref, fast = pair("SMALL")
    x = randn(2, 3, 64, 64)
    with torch.no_grad():
        compiled = torch.compile(fast, fullgraph=True)
        assert_close_rel(compiled(x), ref(x))
    fast.train(), ref.train()
    compiled_train = torch.compile(fast, fullgraph=True, backend="aot_eager")
    torch.manual_seed(0)
    out = compiled_train(x)
    torch.manual_seed(0)
    assert_close_rel(out, ref(x))
    out.sum().backward()


def test_torch_export():
    ref, fast = pair("SMALL")
    x = randn(2, 3, 64, 64)
    exported = torch.export.export(fast, (x,))
    targets = {str(n.target) for n in exported.graph.nodes}
    assert any("mnv3.dw_conv_bn_act" in t for t in targets)
    with torch.no_grad():
        assert_close_rel(exported.module()(x), ref(x))


def test_onnx_export_runs_in_onnxruntime(tmp_path):
    import onnxruntime

    ref, fast = pair("SMALL")
    x = randn(2, 3, 64, 64)
    path = tmp_path / "mnv3.onnx"
    torch.onnx.export(fast, (x,), str(path))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        assert_close_rel(torch.from_numpy(out), ref(x))


def test_backbone_api():
    ref, fast = pair("LARGE")
    x = randn(1, 3, 97, 97)
    with torch.no_grad():
        maps_fast, maps_ref = fast.feature_maps(x), ref.feature_maps(x)
        assert [m.shape[-1] for m in maps_fast] == [49, 25, 13, 7, 4]
        for a, b in zip(maps_fast, maps_ref):
            assert_close_rel(a, b)
        assert_close_rel(fast.forward_features(x), ref.forward_features(x))
    fast.reset_classifier(7)
    assert fast(x).shape == (1, 7)


def test_bfloat16_and_autocast_on_cpu():
    ref, fast = pair("SMALL")
    x = randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = ref(x)
        out_bf16 = copy.deepcopy(fast).bfloat16()(x.bfloat16())
        assert out_bf16.dtype == torch.bfloat16
        assert_close_rel(out_bf16.float(), expected, rtol=0.1)  # ~20 layers of bf16 rounding
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out_autocast = fast(x)
        assert_close_rel(out_autocast.float(), expected, rtol=0.1)


class TestBadInput:
    def test_wrong_channels_and_rank(self):
        _, fast = pair()
        with pytest.raises(ValueError, match="3 input channels.*got 4"):
            fast(randn(1, 4, 32, 32))
        with pytest.raises(ValueError, match="4-D input.*3-D"):
            fast(randn(3, 32, 32))

    def test_empty_batch(self):
        _, fast = pair()
        with torch.no_grad():
            assert fast(randn(0, 3, 64, 64)).shape == (0, 1000)

    def test_input_smaller_than_total_stride(self):
        ref, fast = pair("LARGE")
        with torch.no_grad():
            for size in (16, 1):
                x = randn(2, 3, size, size)
                assert_close_rel(fast(x), ref(x))

    def test_nan_in_nan_out(self):
        _, fast = pair()
        x = randn(2, 3, 64, 64)
        x[1, 0, 10, 10] = float("nan")
        with torch.no_grad():
            out = fast(x)
        assert out[1].isnan().all() and not out[0].isnan().any()
