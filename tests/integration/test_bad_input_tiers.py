"""Bad store options given to gdfut.init, `gdfut start` and the node daemon:
a clear error that names the option, at once, and nothing left running."""
import os
import time

import pytest

import gdfut
from gdfut import cli, cluster
from helpers import assert_no_leaks, child_processes

TB = 1 << 40


def assert_refused_at_once(match, **kwargs):
    t0 = time.monotonic()
    with pytest.raises(ValueError, match=match):
        gdfut.init(num_cpus=1, **kwargs)
    assert time.monotonic() - t0 < 5, "the error should come before any daemon starts"
    assert not gdfut.is_initialized()
    assert not child_processes()


@pytest.mark.parametrize("kwargs, match", [
    ({"object_store_memory": 0}, "object_store_memory must be > 0"),
    ({"object_store_memory": -1}, "object_store_memory must be > 0"),
    ({"object_store_memory": "1G"}, "object_store_memory must be a number of bytes"),
    ({"object_store_memory": 64 * TB}, "object_store_memory=.*(memory|/dev/shm)"),
    ({"device_store_memory": 1 << 20, "num_gpus": 0}, "device_store_memory=.*num_gpus=0"),
    ({"device_store_memory": 64 * TB, "num_gpus": 1}, "device_store_memory=.*more than"),
    ({"spill_dir": 3}, "spill_dir must be a path"),
])
def test_init_refuses_bad_store_options(monkeypatch, kwargs, match):
    monkeypatch.setenv("GDFUT_CPU_MODE", "1")
    assert_refused_at_once(match, **kwargs)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"num_gpus": -1}, ValueError, "init\\(\\): resource 'GPU' must be >= 0"),
    ({"num_cpus": float("nan")}, ValueError, "resource 'CPU' must be finite"),
    ({"num_gpus": "2"}, TypeError, "num_gpus=...\\) must be a number"),
    ({"resources": "x"}, TypeError, "resources=...\\) must be a dict"),
    ({"resources": {"CPU": 3}}, ValueError, "use num_cpus= instead"),
])
def test_init_refuses_bad_node_resources_before_starting_it(kwargs, error, match):
    t0 = time.monotonic()
    with pytest.raises(error, match=match):
        gdfut.init(**kwargs)
    assert time.monotonic() - t0 < 5 and not child_processes()


def test_init_refuses_a_spill_dir_that_cannot_be_used(tmp_path):
    afile = tmp_path / "file"
    afile.write_text("not a directory")
    assert_refused_at_once("spill_dir .* is not a directory", spill_dir=str(afile))
    assert_refused_at_once("spill_dir .* not a writable directory", spill_dir=str(afile / "sub"))


def test_init_joining_a_cluster_refuses_node_options():
    # as Ray: the running cluster's nodes have their own resources and store
    with pytest.raises(ValueError, match="object_store_memory must not be provided"):
        gdfut.init(address="127.0.0.1:1", object_store_memory=1 << 30)
    with pytest.raises(ValueError, match="num_cpus and num_gpus must not be provided"):
        gdfut.init(address="127.0.0.1:1", num_cpus=2, num_gpus=1)
    assert not gdfut.is_initialized()


@pytest.mark.parametrize("flags, match", [
    (["--object-store-memory", str(64 * TB)], "--object-store-memory=.*(memory|/dev/shm)"),
    (["--device-store-memory", "1048576", "--num-gpus", "0"], "--num-gpus=0"),
    (["--spill-dir", "FILE"], "--spill-dir .* is not a directory"),
])
def test_gdfut_start_refuses_bad_store_options(tmp_path, capsys, flags, match):
    import re
    afile = tmp_path / "file"
    afile.write_text("x")
    session = tmp_path / "session"
    flags = [str(afile) if f == "FILE" else f for f in flags]
    try:
        code = cli.main(["start", "--head", "--num-cpus", "1", "--session-dir", str(session),
                         *flags])
    finally:
        if (session / "pids").exists():     # it started a cluster after all: stop it
            cli.main(["stop", "--session-dir", str(session)])
    err = capsys.readouterr().err
    assert code == 1 and re.search(match, err), err
    assert "Traceback" not in err
    assert not session.exists()             # refused before a session (or daemon) started
    assert not child_processes()


def test_a_node_that_fails_to_start_says_why(tmp_path):
    """A node started with a bad option (by hand, or an older driver) exits at
    once, and the starter's error carries its reason, not only its exit code."""
    afile = tmp_path / "file"
    afile.write_text("x")
    session = cluster.new_session_dir(root=str(tmp_path / "root"))
    node = cluster.spawn_node(session, None, 1, object_store_memory=32 << 20,
                              spill_dir=str(afile))
    try:
        with pytest.raises(RuntimeError, match="exit code 2.*--spill-dir .* is not a directory"):
            node.wait_ready(timeout=30)
    finally:
        node.stop()
    assert not child_processes()
    assert os.path.exists(node.err_path)


@gdfut.remote(max_retries=0)
def make_bytes(n):
    import numpy as np
    return np.ones(n, dtype=np.uint8)


def test_an_object_larger_than_all_tiers_names_sizes_and_spill_dir(tmp_path, monkeypatch):
    """64 MiB host + a 16 MiB disk quota: a 100 MiB put, and a task returning
    100 MiB, fail with ObjectStoreFullError naming the sizes and where the
    disk tier is; nothing is left."""
    import numpy as np
    from gdfut.exceptions import ObjectStoreFullError
    monkeypatch.setenv("GDFUT_SPILL_CAPACITY", str(16 << 20))
    spill = str(tmp_path / "spill")
    info = gdfut.init(num_cpus=1, object_store_memory=64 << 20, spill_dir=spill)
    try:
        for attempt in (lambda: gdfut.put(np.zeros(100 << 20, dtype=np.uint8)),
                        lambda: gdfut.get(make_bytes.remote(100 << 20), timeout=60)):
            with pytest.raises(ObjectStoreFullError) as err:
                attempt()
            text = str(err.value)
            assert "larger than all tiers together" in text and str(64 << 20) in text
            assert str(16 << 20) in text and spill in text, text
        assert gdfut.get(make_bytes.remote(1 << 20)).sum() == 1 << 20   # still works
    finally:
        gdfut.shutdown()
    assert_no_leaks(info["session_dir"], spill)
