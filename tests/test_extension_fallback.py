"""Without the C++ extension the package still imports, warns once, and the ops give reference results."""
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import torch
        import mnv3_fast
        from mnv3_fast import ops
    ours = [w for w in caught if "mnv3_fast" in str(w.message)]
    assert len(ours) == 1, [str(w.message) for w in caught]
    assert "MNV3_DISABLE_EXTENSION" in str(ours[0].message) and "PyTorch references" in str(ours[0].message)
    assert not ops.HAS_CPU_KERNELS
    x = torch.randn(2, 8, 7, 7).to(memory_format=torch.channels_last)
    w, b = torch.randn(8, 1, 3, 3), torch.randn(8)
    y = ops.dw_conv_bn_act(x, w, b, stride=2, act="hswish")
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, ops.reference_ops.dw_conv_bn_act(x, w, b, 2, 1, 1, "hswish"))
    w1, b1, w2, b2 = torch.randn(4, 8), torch.randn(4), torch.randn(8, 4), torch.randn(8)
    torch.testing.assert_close(ops.squeeze_excite(x, w1, b1, w2, b2), ops.reference_ops.squeeze_excite(x, w1, b1, w2, b2))
    torch.testing.assert_close(ops.hswish(x), torch.nn.functional.hardswish(x))
    torch.library.opcheck(torch.ops.mnv3.hswish.default, (x,))
    try:
        ops.dw_conv_bn_act(x, w, b, act="gelu")
    except ValueError as e:
        assert "gelu" in str(e)
    else:
        raise AssertionError("no error for an unknown activation")
    print("fallback ok")
    """
)


def test_import_and_ops_without_the_extension():
    env = dict(os.environ, MNV3_DISABLE_EXTENSION="1")
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "fallback ok" in result.stdout
