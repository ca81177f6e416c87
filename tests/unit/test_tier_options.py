"""The store options' checks (gdfut/tier_options.py): each bad value is named
with its problem; good values come back normalised."""
import numpy as np
import pytest

from gdfut.tier_options import (TierOptionError, check_bytes, check_device_store,
                                check_host_store, check_spill_dir)

GIB = 1 << 30


@pytest.mark.parametrize("value, problem", [
    (0, "must be > 0"), (-1, "must be > 0"), ("1G", "number of bytes"), (True, "number of bytes"),
    (1.5, "whole number"), (float("inf"), "whole number"), (float("nan"), "whole number"),
    ([1], "number of bytes")])
def test_bad_byte_counts_are_named(value, problem):
    with pytest.raises(TierOptionError, match=problem) as err:
        check_bytes(value, "object_store_memory")
    assert "object_store_memory" in str(err.value)
    assert isinstance(err.value, ValueError)          # what Ray raises for these


def test_good_byte_counts_are_ints():
    assert check_bytes(None, "x") is None
    assert check_bytes(8e9, "x") == 8_000_000_000 and isinstance(check_bytes(8e9, "x"), int)
    assert check_bytes(np.int64(1 << 20), "x") == 1 << 20
    assert check_bytes(0, "device_store_memory", allow_zero=True) == 0
    with pytest.raises(TierOptionError, match=">= 0"):
        check_bytes(-1, "device_store_memory", allow_zero=True)


def test_host_store_must_fit_shm_and_memory():
    check_host_store(GIB, "object_store_memory", shm_free=2 * GIB, memory_total=8 * GIB)
    with pytest.raises(TierOptionError, match=r"does not fit in /dev/shm \(2147483648 bytes free"):
        check_host_store(3 * GIB, "object_store_memory", shm_free=2 * GIB, memory_total=8 * GIB)
    with pytest.raises(TierOptionError, match="more than this machine's memory"):
        check_host_store(9 * GIB, "--object-store-memory", shm_free=16 * GIB,
                         memory_total=8 * GIB)


def test_device_store_checks():
    kw = dict(memory_total=8 * GIB, emulated=True)
    check_device_store(GIB, "device_store_memory", None, **kw)      # NVML decides: unused if none
    check_device_store(0, "device_store_memory", 0, **kw)           # 0 with no GPU: fine
    with pytest.raises(TierOptionError, match="num_gpus=0"):
        check_device_store(GIB, "device_store_memory", 0, **kw)
    with pytest.raises(TierOptionError, match="x 3 GPU"):           # emulated: host memory
        check_device_store(3 * GIB, "device_store_memory", 3, **kw)
    check_device_store(3 * GIB, "device_store_memory", 2, **kw)
    with pytest.raises(TierOptionError, match="memory of each GPU"):
        check_device_store(20 * GIB, "device_store_memory", 1, memory_total=8 * GIB,
                           emulated=False, gpu_memory_per_gpu=16 * GIB)


def test_spill_dir(tmp_path):
    assert check_spill_dir(None, "spill_dir") is None
    made = tmp_path / "a" / "b"
    assert check_spill_dir(str(made), "spill_dir") == str(made) and made.is_dir()
    assert list(made.iterdir()) == []                          # the probe file is gone
    assert check_spill_dir(made, "spill_dir") == str(made)     # a Path
    afile = tmp_path / "f"
    afile.write_text("x")
    with pytest.raises(TierOptionError, match="spill_dir .* is not a directory"):
        check_spill_dir(str(afile), "spill_dir")
    with pytest.raises(TierOptionError, match="--spill-dir .* not a writable directory"):
        check_spill_dir(str(afile / "sub"), "--spill-dir")
    with pytest.raises(TierOptionError, match="must be a path"):
        check_spill_dir(3, "spill_dir")
