import numpy as np
import pytest

from gdfut.kernels import partition_ids


def test_partition_ids_match_definition():
    rng = np.random.default_rng(0)
    recs = rng.integers(0, 256, size=(1000, 100), dtype=np.uint8)
    pids = partition_ids(recs, 16)
    expect = [((int(r[0]) << 8 | int(r[1])) * 16) >> 16 for r in recs]
    assert pids.tolist() == expect
    assert pids.min() >= 0 and pids.max() < 16


def test_partition_ids_bad_input():
    with pytest.raises(ValueError, match="2-D uint8"):
        partition_ids(np.zeros(10), 4)
    with pytest.raises(ValueError, match="num_partitions"):
        partition_ids(np.zeros((2, 10), dtype=np.uint8), 0)
