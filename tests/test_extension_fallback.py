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


SHADOW_SCRIPT = textwrap.dedent(
    """
    import sys
    import warnings
    # An editable install (this suite's own environment) maps mnv3_fast's submodules to its checkout
    # through a finder after the path search; drop it so that only the faked layout below is seen.
    sys.meta_path[:] = [f for f in sys.meta_path if "Editable" not in getattr(f, "__name__", type(f).__name__)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import mnv3_fast
    ours = [str(w.message) for w in caught if "mnv3_fast" in str(w.message)]
    print(mnv3_fast.__file__)
    print("WARNING:", ours)
    """
)


def _source_tree_and_site(tmp_path, installed_build: bool):
    """A checkout's mnv3_fast without a build (tmp/src) and, optionally, an installed
    distribution with a compiled _C elsewhere on sys.path (tmp/site)."""
    import importlib.machinery
    import shutil

    package = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "mnv3_fast")
    src = tmp_path / "src"
    shutil.copytree(package, src / "mnv3_fast", ignore=shutil.ignore_patterns("_C*", "_build_info.py", "__pycache__"))
    site = tmp_path / "site"
    (site / "mnv3_fast").mkdir(parents=True)
    if installed_build:
        so = "_C" + importlib.machinery.EXTENSION_SUFFIXES[0]
        (site / "mnv3_fast" / so).write_bytes(b"")  # never loaded: the source tree wins the import
        info = site / "mnv3_fast-0.1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mnv3_fast\nVersion: 0.1.0\n")
        (info / "RECORD").write_text(f"mnv3_fast/{so},,\nmnv3_fast-0.1.0.dist-info/METADATA,,\n")
    return src, site


def _import_from(cwd, site):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MNV3_")}
    env["PYTHONPATH"] = str(site)
    result = subprocess.run([sys.executable, "-c", SHADOW_SCRIPT], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_source_tree_shadowing_an_installed_build_says_so(tmp_path):
    src, site = _source_tree_and_site(tmp_path, installed_build=True)
    out = _import_from(src, site)  # python -c from the checkout root: '' (the cwd) comes first on sys.path
    assert str(src / "mnv3_fast") in out.splitlines()[0]
    message = out.split("WARNING:", 1)[1]
    assert "hides the installed build" in message and str(site / "mnv3_fast") in message, message
    assert "run from another directory" in message and "pip install -e ." in message, message
    assert "was not built" not in message and "no compiler" not in message, message


def test_source_tree_without_any_build_still_says_not_built(tmp_path):
    src, site = _source_tree_and_site(tmp_path, installed_build=False)
    message = _import_from(src, site).split("WARNING:", 1)[1]
    assert "was not built" in message and "hides the installed build" not in message, message
