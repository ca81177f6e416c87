"""Packaging: the test suite runs without the GPU stack; CI still tests ucx
(issue 7, point 16)."""
import os
import re
import tomllib

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GPU_STACK = re.compile(r"cu1\d|cupy|ucx|nvidia|numba-cuda", re.I)   # numba alone runs on CPU


def _extras():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["project"]["optional-dependencies"]


def test_test_extra_pulls_no_gpu_stack():
    heavy = [d for d in _extras()["test"] if GPU_STACK.search(d)]
    assert not heavy, f"the 'test' extra must not need CUDA libraries: {heavy}"


def test_test_ucx_extra_adds_ucxx_to_the_test_extra():
    deps = _extras()["test-ucx"]
    assert "gdfut[test]" in deps
    assert any(d.startswith("ucxx-cu12") for d in deps)


def test_ci_installs_the_ucx_extra():
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        script = f.read()
    assert '".[test-ucx]"' in script


@pytest.mark.skipif(os.environ.get("CI") != "true", reason="only CI must test the ucx backend")
def test_ci_has_ucxx_so_ucx_tests_run():
    from gdfut.transport.ucx import import_ucxx
    import_ucxx()      # raises with an install hint when ucxx is absent


def test_every_package_is_listed_for_setuptools():
    # A package missing from the explicit list works in an editable install
    # and is silently absent from a wheel.
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        listed = set(tomllib.load(f)["tool"]["setuptools"]["packages"])
    found = set()
    for dirpath, _dirs, files in os.walk(os.path.join(ROOT, "gdfut")):
        if "__init__.py" in files and "__pycache__" not in dirpath:
            rel = os.path.relpath(dirpath, ROOT)
            found.add(rel.replace(os.sep, "."))
    assert found - listed == set(), f"packages missing from pyproject.toml: {found - listed}"
