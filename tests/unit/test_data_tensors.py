"""iter_torch_batches' column conversion (gdfut/data/tensors.py) without
torch: numpy's from_dlpack goes through the same DLPack protocol."""
import numpy as np
import pytest

from gdfut.data.tensors import check_device, column_tensor


class FakeDeviceArray:
    """A device array as gdfut.kernels sees one (``__cuda_array_interface__``)
    whose memory is a numpy array's, exported through DLPack."""

    def __init__(self, arr):
        self.arr = arr
        self.__cuda_array_interface__ = {"shape": arr.shape, "typestr": arr.dtype.str,
                                         "data": (arr.ctypes.data, False), "version": 3}

    def __dlpack__(self, **kwargs):
        return self.arr.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self.arr.__dlpack_device__()


def no_copy(_):
    raise AssertionError("a device column must not go through as_tensor (a host copy)")


def test_device_column_goes_through_dlpack_sharing_its_memory():
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    out = column_tensor(FakeDeviceArray(arr), device="cuda", from_dlpack=np.from_dlpack,
                        as_tensor=no_copy)
    assert np.shares_memory(out, arr) and out.shape == (3, 4)
    arr[0, 0] = 99
    assert out[0, 0] == 99


def test_device_column_without_dlpack_is_a_clear_error():
    class NoDlpack:
        __cuda_array_interface__ = {}
    with pytest.raises(TypeError, match="no __dlpack__.*without a host copy"):
        column_tensor(NoDlpack(), device="cuda", from_dlpack=np.from_dlpack, as_tensor=no_copy)


def test_host_column_is_wrapped_and_a_read_only_view_copied_for_cpu():
    arr = np.arange(5)
    arr.flags.writeable = False
    out = column_tensor(arr, device="cpu", from_dlpack=None, as_tensor=lambda a: a)
    assert out.flags.writeable and not np.shares_memory(out, arr)
    moved = column_tensor(np.arange(3), device="cpu", from_dlpack=None, as_tensor=lambda a: a,
                          to=lambda t, dev, dtype: (dev, dtype, list(t)))
    assert moved == ("cpu", None, [0, 1, 2])


def test_cuda_without_cuda_names_the_problem():
    with pytest.raises(RuntimeError, match=r"device='cuda'.*no CUDA device.*device='cpu'"):
        check_device("cuda", cuda_available=False)
    check_device("cuda:0", cuda_available=True)
    check_device("cpu", cuda_available=False)
