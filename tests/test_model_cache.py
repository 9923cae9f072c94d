"""The fast model's cache of folded weights and programs never serves a stale answer, is safe
under concurrent forwards, stays bounded, and goes with the model (issue 14, items 15, 17, 18).

Each test warms the cache, changes the model in one of the ways users do, and checks the next
eval output against the reference changed the same way."""
import copy
import gc
import threading
import weakref

import pytest
import torch
import torch.nn.utils.prune as prune
from conftest import assert_close_rel, randn
from torch import nn

import mnv3_fast
from mnv3_fast import reference
from mnv3_fast.plan.cache import PlanCache, read_state, read_state_python
from mnv3_fast.testing import calibrate_bn_


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    ref = calibrate_bn_(reference.MobileNetV3("SMALL", multiplier=0.75))
    return ref, mnv3_fast.convert(ref)


def fresh(models):
    ref, fast = models
    return copy.deepcopy(ref), copy.deepcopy(fast)


X = randn(2, 3, 64, 64, seed=11)


def bn_modules(model):
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


def _fused_adamw_step(model):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    for k, p in enumerate(model.parameters()):  # (the same gradients in both models)
        p.grad = randn(*p.shape, seed=k, dtype=p.dtype)
    optimizer.step()  # (fused kernels do not bump the parameters' version counters)


def _set_eps(model):
    for bn in bn_modules(model):
        bn.eps = 0.5


def _replace_parameter_directly(model):
    conv = model.block[3].expand_conv[0]
    conv._parameters["weight"] = nn.Parameter(conv.weight.detach() * 1.5)


def _replace_buffer_directly(model):
    bn = model.block[3].depthwise_conv[1]
    bn._buffers["running_mean"] = bn.running_mean + 0.5


def _data_write_whole(model):
    for bn in bn_modules(model):
        bn.running_var.data.mul_(3)


def _data_write_one_bn_element(model):
    model.block[4].depthwise_conv[1].running_mean.data[5] += 3


def _data_write_conv_weight(model):
    model.block[4].expand_conv[0].weight.data.mul_(1.5)


def _replace_activation(model):
    model.init_conv[2] = nn.ReLU()  # a parameter-free submodule


def _replace_conv(model):
    model.out_conv2[3] = copy.deepcopy(model.out_conv2[3]).requires_grad_(False)
    with torch.no_grad():
        model.out_conv2[3].weight.mul_(-1)


class _DoubledHSwish(reference.HSwish):
    def forward(self, x):
        return 2 * super().forward(x)


def _swap_class(model):
    model.init_conv[2].__class__ = _DoubledHSwish  # (no attribute set: only the object's type changes)


def _set_data(model):
    conv = model.block[4].expand_conv[0]
    conv.weight.data = conv.weight.data * 1.5  # (new storage, same tensor object and version)


def _one_bn_in_train_mode(model):
    model.block[2].depthwise_conv[1].train()


MUTATIONS = {
    "fused AdamW step in eval mode": _fused_adamw_step,
    "bn.eps changed": _set_eps,
    "module._parameters[...] assigned": _replace_parameter_directly,
    "module._buffers[...] assigned": _replace_buffer_directly,
    "whole tensors written through .data": _data_write_whole,
    "one BN statistic written through .data": _data_write_one_bn_element,
    "a conv weight scaled through .data": _data_write_conv_weight,
    "parameter-free submodule replaced": _replace_activation,
    "submodule replaced": _replace_conv,
    "a submodule's __class__ assigned": _swap_class,
    "weight.data assigned": _set_data,
    "one BN in train mode": _one_bn_in_train_mode,
}


@pytest.mark.parametrize("mutate", MUTATIONS.values(), ids=MUTATIONS.keys())
def test_no_stale_answer_after(models, mutate):
    ref, fast = fresh(models)
    with torch.no_grad():
        before = fast(X)
    for model in (ref, fast):
        torch.manual_seed(0)
        mutate(model)
    with torch.no_grad():
        expected = ref(X)
        assert (expected - before).abs().max() > 1e-3 * expected.abs().max()  # (the change matters)
        assert_close_rel(fast(X), expected)


def test_functional_call_uses_the_given_parameters(models):
    ref, fast = fresh(models)
    new = {name: p.detach() * 1.05 for name, p in fast.named_parameters()}
    for grad_mode in (torch.no_grad, torch.inference_mode):
        with grad_mode():
            fast(X)
            out = torch.func.functional_call(fast, new, (X,))
            expected = torch.func.functional_call(ref, new, (X,))
            assert_close_rel(out, expected, 1e-3)
            assert not torch.allclose(out, fast(X))  # and the module's own weights again afterwards


def test_jit_trace_follows_later_weight_updates(models):
    ref, fast = fresh(models)
    with torch.no_grad():
        fast(X)  # (warm: a trace must not bake in the cached, packed weights)
        traced = torch.jit.trace(fast, (X,), check_trace=False)
        for model in (ref, fast):
            model.init_conv[0].weight.mul_(1.3)
        assert_close_rel(traced(X), ref(X))


def test_python_walk_sees_what_the_cpp_walk_sees(models):
    """read_state_python is the fallback (no extension): same structural decisions, same hooks."""
    _, fast = fresh(models)
    for k, read in enumerate((read_state, read_state_python)):
        key = read(fast).key
        assert read(fast).key == key
        fast.block[2].depthwise_conv[1].eps = 0.2 + k
        assert read(fast).key != key
        key = read(fast).key
        fast.init_conv[2] = nn.ReLU()
        assert read(fast).key != key
        key = read(fast).key
        with torch.no_grad():
            fast.init_conv[0].weight.add_(1)
        assert read(fast).key != key
        handle = fast.block[1].register_forward_hook(lambda *a: None)
        assert read(fast).hooked is fast.block[1]
        handle.remove()
        assert read(fast).hooked is None
        fast.init_conv[2] = reference.HSwish()


def _register_hook(model):
    model.block[1].register_forward_pre_hook(lambda *a: None)


RECHECKED = {**MUTATIONS, "forward hook registered": _register_hook,
             "requires_grad_ turned off": lambda model: model.block[0].project_conv[0].weight.requires_grad_(False),
             "buffer registered": lambda model: model.block[0].register_buffer("extra", torch.ones(3)),
             "submodule deleted": lambda model: delattr(model.block[5], "se") if hasattr(model.block[5], "se") else
             model.block[5]._modules.popitem(),
             "model-level attribute set": lambda model: setattr(model, "training", True)}


@pytest.mark.parametrize("mutate", RECHECKED.values(), ids=RECHECKED.keys())
def test_recheck_sees_every_change(models, mutate):
    """The per-call re-check (_C.state_unchanged) against the snapshot the last walk took: true while
    nothing changed (reads included), false after each change."""
    _, fast = fresh(models)
    state = read_state(fast)
    if state.snapshot is None:
        pytest.skip("no snapshot on this Python (3.13+: attribute sets do not reach dict watchers); every call walks")
    check = lambda: mnv3_fast._C.state_unchanged(fast, state.snapshot)  # noqa: E731
    with torch.no_grad():
        fast(X)
    _ = fast.block[1].training, fast.block[1].__dict__, list(fast.named_parameters())
    assert check()
    torch.manual_seed(0)
    mutate(fast)
    assert not check()


class TestHooks:
    def test_pruning_gives_the_pruned_output(self, models):
        ref, fast = fresh(models)
        with torch.no_grad():
            fast(X)
        for model in (ref, fast):
            prune.l1_unstructured(model.block[4].expand_conv[0], "weight", amount=0.5)
        assert "forward or backward hooks" in str(fast.explain(X))
        with torch.no_grad():
            assert_close_rel(fast(X), ref(X))

    @pytest.mark.parametrize("method", ["forward", "forward_features", "feature_maps"])
    def test_forward_hooks_fire(self, models, method):
        ref, fast = fresh(models)
        seen = {}
        for name, model in (("ref", ref), ("fast", fast)):
            model.block[5].register_forward_pre_hook(lambda m, args, name=name: seen.update({name + " pre": 1}))
            model.block[5].register_forward_hook(lambda m, args, out, name=name: seen.update({name: out.clone()}))
        with torch.no_grad():
            getattr(fast, method)(X), getattr(ref, method)(X)
        assert set(seen) == {"ref", "fast", "ref pre", "fast pre"}
        assert_close_rel(seen["fast"], seen["ref"])

    def test_global_hooks_are_honoured(self, models):
        _, fast = fresh(models)
        calls = []
        handle = nn.modules.module.register_module_forward_hook(lambda m, i, o: calls.append(type(m)))
        try:
            with torch.no_grad():
                assert "global module hooks" in str(fast.explain(X))
                fast(X)
        finally:
            handle.remove()
        assert nn.Conv2d in calls
        with torch.no_grad():
            assert fast.explain(X).backend == "cpu_program"


class TestShortcut:
    """A call like an earlier one on an unchanged model skips choosing its backend
    (backends.run_shortcut); what else changed between the two calls must still reach the second."""

    def test_the_second_call_skips_choosing(self, models, monkeypatch):
        _, fast = fresh(models)
        chosen = []
        select = mnv3_fast.backends.select
        monkeypatch.setattr(mnv3_fast.backends, "select", lambda *a: chosen.append(1) or select(*a))
        with torch.no_grad():
            first, second = fast(X), fast(X)
            fast(X[:1])  # (another input shape: chosen afresh)
        assert len(chosen) == 2
        torch.testing.assert_close(second, first)

    def test_a_hook_registered_after_fires(self, models):
        ref, fast = fresh(models)
        seen = []
        with torch.no_grad():
            fast(X), fast(X)
            fast.block[5].register_forward_hook(lambda m, args, out: seen.append(out.clone()))
            out = fast(X)
        assert len(seen) == 1
        with torch.no_grad():
            assert_close_rel(out, ref(X))

    def test_a_global_hook_registered_after_fires(self, models):
        _, fast = fresh(models)
        calls = []
        with torch.no_grad():
            fast(X), fast(X)
            handle = nn.modules.module.register_module_forward_hook(lambda m, i, o: calls.append(type(m)))
            try:
                fast(X)
            finally:
                handle.remove()
        assert nn.Conv2d in calls

    def test_gradients_flow_after_a_no_grad_call(self, models):
        _, fast = fresh(models)
        with torch.no_grad():
            fast(X)
        x = X.clone().requires_grad_()
        fast(x).sum().backward()
        assert x.grad is not None and x.grad.abs().sum() > 0

    def test_autocast_after_a_plain_call(self, models):
        ref, fast = fresh(models)
        with torch.no_grad():
            assert fast(X).dtype == torch.float32
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out, expected = fast(X), ref(X)
        assert out.dtype == expected.dtype == torch.bfloat16

    def test_a_changed_priority_list_is_obeyed(self, models, monkeypatch):
        _, fast = fresh(models)
        with torch.no_grad():
            fast(X), fast(X)
            backends = mnv3_fast.backends
            monkeypatch.setitem(backends.PRIORITY, "cpu", (backends.GENERIC, backends.REFERENCE))
            monkeypatch.setattr(type(backends.CPU_PROGRAM), "forward", lambda *a: pytest.fail("CPU program ran"))
            fast(X)


def test_concurrent_forwards_on_one_model(models, monkeypatch):
    """Many threads, many input shapes, a tiny cache: no errors, every answer right (item 17)."""
    ref, fast = fresh(models)
    monkeypatch.setattr(PlanCache, "BOUNDS", {**PlanCache.BOUNDS, "cpu_program": 2, "cpu_peak": 2})
    sizes = [33 + 2 * i for i in range(6)]
    inputs = {s: randn(1, 3, s, s, seed=s) for s in sizes}
    with torch.no_grad():
        expected = {s: ref(inputs[s]) for s in sizes}
    errors = []

    def work(offset):
        try:
            for i in range(24):
                s = sizes[(i + offset) % len(sizes)]
                with torch.no_grad():
                    out = fast(inputs[s])
                assert_close_rel(out, expected[s])
        except Exception as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]


def test_cache_is_bounded_per_kind_and_goes_with_the_model(models):
    _, fast = fresh(models)
    with torch.no_grad():
        for s in range(40, 40 + 2 * 20, 2):
            fast(randn(1, 3, s, s, seed=s))
    sizes = fast._plans.sizes()
    assert sizes["cpu_program"] <= PlanCache.BOUNDS["cpu_program"]
    assert sizes["folded"] == 1  # (programs do not push out the folded plan)
    cache = weakref.ref(fast._plans)
    del fast
    gc.collect()
    assert cache() is None


def test_validate_cache_off_is_the_documented_trade(models):
    """validate_cache = False skips the per-call read: a change is then not seen until
    clear_fused_cache(), exactly as documented (and with it on, it is)."""
    ref, fast = fresh(models)
    fast.validate_cache = False
    with torch.no_grad():
        before = fast(X)
        for model in (ref, fast):
            model.block[2].depthwise_conv[1].running_mean.add_(1.0)
        assert torch.equal(fast(X), before)  # (not re-read: the old fold)
        fast.clear_fused_cache()
        assert_close_rel(fast(X), ref(X))
