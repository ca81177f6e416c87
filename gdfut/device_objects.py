"""Device objects in the worker that made them (the worker side of the device tier).

A task or actor method that holds a GPU and returns a device array — an
object with ``__cuda_array_interface__`` or a CUDA DLPack capsule on a real
GPU; a numpy array or Arrow table on an emulated GPU (CPU mode) — also
inside tuples, lists and dicts, keeps the value here instead of copying it
into the host store. The node keeps the books (``node_device.DeviceTier``,
budget ``device_store_memory`` per GPU) and asks for a host copy when the
device tier needs room or a reader in another process wants the object
(``DEVICE_SPILL``), or drops the copy (``DEVICE_DELETE``). A reader in this
process gets the value itself, pinned for the running task.

The value entry of a device object is ``[STORE, node_id, host size, gpu]``:
the host size (what its host copy takes) is known before the copy is made,
since the copy is serialized from a host twin whose layout depends only on
shapes and dtypes.
"""
from __future__ import annotations

import concurrent.futures
import logging
import threading

import numpy as np

from . import protocol as P
from . import serialization as ser

log = logging.getLogger("gdfut.device")

# Values with fewer device bytes than this travel as before (inline or the
# host store): a device object costs round trips a small value never repays.
DEVICE_MIN_BYTES = ser.INLINE_LIMIT
MAX_DEPTH = 4               # containers looked into for device arrays
MOVE_THREADS = 2            # host copies written at once by this worker
_DLPACK_CUDA = 2            # kDLCUDA


def gpu_usable() -> bool:
    """A real GPU (cupy sees one, and GDFUT_CPU_MODE is not set)."""
    from .kernels.dispatch import gpu_usable as usable
    return usable()


REAL, EMULATED = "real", "emulated"
_MODE: list = []


def device_mode() -> str | None:
    """``real``: cupy sees a GPU (device arrays are cupy/DLPack CUDA
    objects); ``emulated``: CPU mode (``GDFUT_CPU_MODE=1``) or a machine
    without NVIDIA GPUs, where numpy arrays and Arrow tables of GPU tasks
    are device objects; None: real GPUs but no usable cupy here, so there
    is no device array to keep (numpy results take the host path, rather
    than filling this process's memory up to the GPU's budget)."""
    if not _MODE:
        from .kernels.dispatch import cpu_mode
        from .node import detect_gpus
        if gpu_usable():
            _MODE.append(REAL)
        elif cpu_mode() or detect_gpus()[0] == 0:
            _MODE.append(EMULATED)
        else:
            log.warning("this machine has GPUs but cupy cannot use them here: results of GPU "
                        "tasks are stored in the host tier")
            _MODE.append(None)
    return _MODE[0]


def real_gpu() -> bool:
    return device_mode() == REAL


def array_module():
    """The array module code should use: cupy on a real GPU, else numpy."""
    from .kernels.dispatch import array_module as module
    return module()


def is_device_value(x, real: bool) -> bool:
    if real:
        # on the instance: a CPU torch tensor's type has the property too,
        # but reading it raises, so hasattr is False for it
        if hasattr(x, "__cuda_array_interface__"):
            return True
        dev = getattr(x, "__dlpack_device__", None)
        if dev is not None:
            try:
                return dev()[0] == _DLPACK_CUDA
            except Exception:
                return False
        return False
    if isinstance(x, np.ndarray):
        return True
    pa = _pyarrow()
    return pa is not None and isinstance(x, pa.Table)


def _pyarrow():
    import sys
    return sys.modules.get("pyarrow")   # an Arrow table exists only if pyarrow was imported


def device_bytes(value, real: bool, depth: int = 0) -> int:
    """Bytes of the device arrays in ``value`` (top level, or in tuples,
    lists and dict values a few levels deep)."""
    if is_device_value(value, real):
        return int(value.nbytes) if hasattr(value, "nbytes") else _dlpack_nbytes(value)
    if depth >= MAX_DEPTH:
        return 0
    if type(value) is tuple or isinstance(value, list):
        return sum(device_bytes(v, real, depth + 1) for v in value)
    if isinstance(value, dict):
        return sum(device_bytes(v, real, depth + 1) for v in value.values())
    return 0


def _dlpack_nbytes(x) -> int:
    import cupy
    return int(cupy.from_dlpack(x).nbytes)


def map_leaves(value, leaf, depth: int = 0):
    """``value`` with ``leaf(x)`` put for every ``x`` in it, looking into
    tuples, lists and dicts up to MAX_DEPTH; ``leaf`` returns ``DESCEND`` for
    what is not a leaf (a container is then rebuilt, anything else kept)."""
    out = leaf(value)
    if out is not DESCEND:
        return out
    if depth >= MAX_DEPTH:
        return value
    if type(value) is tuple:
        return tuple(map_leaves(v, leaf, depth + 1) for v in value)
    if isinstance(value, list):
        return [map_leaves(v, leaf, depth + 1) for v in value]
    if isinstance(value, dict):
        return {k: map_leaves(v, leaf, depth + 1) for k, v in value.items()}
    return value


DESCEND = object()      # map_leaves: "not a leaf"


def host_twin(value, real: bool, dry: bool = False):
    """``value`` with its device arrays as host (numpy) arrays: what the host
    copy holds. ``dry``: empty arrays of the same shapes (no copy), to learn
    the host copy's size. In CPU mode the arrays are host arrays already."""
    if not real:
        return value

    def leaf(x):
        if not is_device_value(x, real):
            return DESCEND
        import cupy
        arr = x if hasattr(x, "__cuda_array_interface__") else cupy.from_dlpack(x)
        if not isinstance(arr, cupy.ndarray):
            arr = cupy.asarray(arr)
        if dry:
            return np.empty(arr.shape, arr.dtype)
        return np.ascontiguousarray(cupy.asnumpy(arr))
    return map_leaves(value, leaf)


def private_copy(value):
    """A copy of ``value`` in this process's memory (an emulated GPU's device
    copy of an object read through host memory): numpy arrays copied once
    (writable), Arrow tables through their buffers, containers looked into."""
    def leaf(x):
        if isinstance(x, np.ndarray):
            return np.array(x, copy=True)
        if type(x) is tuple or isinstance(x, (list, dict)):
            return DESCEND
        if is_device_value(x, False):     # an Arrow table (immutable)
            import pickle
            s = ser.serialize(x, "a device object")
            return pickle.loads(s.pickle_bytes, buffers=[bytearray(b) for b in s.buffers])
        return x
    return map_leaves(value, leaf)


def to_device(value):
    """numpy arrays in ``value`` as cupy arrays (a driver's ``get`` of a
    device object on a real GPU)."""
    import cupy
    return map_leaves(value, lambda x: cupy.asarray(x) if isinstance(x, np.ndarray) else DESCEND)


class _Held:
    __slots__ = ("value", "gpu", "owner", "host_size", "export")

    def __init__(self, value, gpu, owner, host_size):
        self.value, self.gpu, self.owner, self.host_size = value, gpu, owner, host_size
        self.export = None      # what readers on the same GPU map (DEVICE_EXPORT's answer)


class DeviceObjects:
    """The device copies this worker holds, and the task pins on them."""

    def __init__(self, rt):
        self.rt = rt
        self.held: dict[bytes, _Held] = {}
        self.lock = threading.Lock()
        self.task_pins: dict[bytes, list] = {}     # task id -> oids pinned for it
        self.pool: concurrent.futures.ThreadPoolExecutor | None = None
        rt.dispatch[P.DEVICE_SPILL] = self.on_spill
        rt.dispatch[P.DEVICE_DELETE] = self.on_delete
        rt.dispatch[P.DEVICE_EXPORT] = self.on_export
        from .device_transfer import DevicePulls, DeviceServer
        self.server = DeviceServer(rt, self)     # device pulls from other nodes (ucx, real GPU)
        self.pulls = DevicePulls(rt)             # ... and this process's pulls from them

    # -- producing -------------------------------------------------------------
    def store(self, oid: bytes, value, owner: bytes) -> list | None:
        """Keep ``value`` as a device object of this worker's GPU: its entry,
        or None when it is not one (no GPU held, no device arrays, too small,
        or the device tier has no room: the caller stores it on the host)."""
        gpus = self.rt.gpu_ids
        if not gpus:
            return None
        mode = device_mode()
        if mode is None:
            return None
        real = mode == REAL
        nbytes = device_bytes(value, real)
        if nbytes < DEVICE_MIN_BYTES:
            return None
        try:
            s = ser.serialize(host_twin(value, real, dry=True))
        except Exception:       # it does not pickle: the host path reports that
            return None
        if s.nested or s.inline:  # refs inside: counted by the host path, written once
            return None
        layout = s.store_layout()
        gpu = int(gpus[0])
        if real:
            self.server.ensure()
        with self.lock:         # held before asking: a DEVICE_SPILL may follow the grant at once
            self.held[oid] = _Held(value, gpu, owner, layout[2])
        reply = self.rt.node_request(P.DEVICE_CREATE, oid, nbytes, layout[2], gpu, owner)
        if not reply.get("ok"):
            with self.lock:
                self.held.pop(oid, None)
            return None
        from .submitter import STORE
        return [STORE, self.rt.node_id, layout[2], gpu]

    # -- reading in this process -----------------------------------------------
    def local_value(self, oid: bytes, task_id: bytes | None):
        """(True, value) when this worker holds oid's device copy and the node
        pinned it for the running task; (False, None) otherwise."""
        with self.lock:
            held = self.held.get(oid)
        if held is None or task_id is None:
            return False, None
        if not self.rt.node_request(P.DEVICE_PIN, oid):
            return False, None
        with self.lock:
            self.task_pins.setdefault(task_id, []).append(oid)
        return True, held.value

    def _pin_for_task(self, oid: bytes, task_id: bytes | None) -> None:
        with self.lock:
            self.task_pins.setdefault(task_id, []).append(oid)

    def restore(self, oid: bytes, value, host_size: int, owner: bytes | None,
                task_id: bytes | None):
        """A GPU task read ``value`` (a device object that was moved down to
        host or disk, or lives on another node) through host memory: put it
        onto this worker's device (a copy; cupy on a real GPU), accounted in
        the device tier and evictable again (its host copy stays, so moving
        it down writes nothing). Returns the device value, or ``value``
        itself when the device tier has no room (or another copy of it is on
        a device of this node already)."""
        gpus = self.rt.gpu_ids
        mode = device_mode()
        if not gpus or mode is None:
            return value
        real = mode == REAL
        try:
            dev = to_device(value) if real else private_copy(value)
        except Exception as exc:   # out of device memory: the host copy serves
            log.warning("object %s not restored onto the device: %s", oid.hex()[:12], exc)
            return value
        nbytes = device_bytes(dev, real)
        if nbytes < DEVICE_MIN_BYTES:     # nothing worth a device copy (e.g. Arrow on a GPU)
            return value
        gpu = int(gpus[0])
        with self.lock:
            if oid in self.held:
                return value
            self.held[oid] = _Held(dev, gpu, owner or self.rt.wid, host_size)
        reply = self.rt.node_request(P.DEVICE_CREATE, oid, nbytes, host_size,
                                     gpu, owner or self.rt.wid, True)
        if not reply.get("ok"):
            with self.lock:
                self.held.pop(oid, None)
            return value
        if task_id is not None and self.rt.node_request(P.DEVICE_PIN, oid):
            self._pin_for_task(oid, task_id)
        return dev

    def release_task(self, task_id: bytes) -> None:
        if not self.task_pins:       # the common case, without the lock: only this
            return                   # task's own thread adds pins for it
        with self.lock:
            oids = self.task_pins.pop(task_id, None)
        if oids:
            self.rt.io.post(self._send_unpins, oids)

    def _send_unpins(self, oids):
        conn = self.rt.node_conn
        if conn is not None and not conn.closed:
            counts: dict = {}
            for oid in oids:
                counts[oid] = counts.get(oid, 0) + 1
            conn.send([P.DEVICE_UNPIN, [[o, n] for o, n in counts.items()]])

    # -- node requests (io thread) -----------------------------------------------
    def on_spill(self, conn, m):
        _, req_id, oid = m
        if self.pool is None:
            self.pool = concurrent.futures.ThreadPoolExecutor(MOVE_THREADS, "gdfut-device-move")
        self.pool.submit(self._write_host_copy, conn, req_id, oid)

    def _write_host_copy(self, conn, req_id, oid):
        with self.lock:
            held = self.held.get(oid)
        try:
            if held is None:
                raise KeyError(f"object {oid.hex()[:12]} is not held by this worker")
            s = ser.serialize(host_twin(held.value, real_gpu()), "a device object")
            entry = self.rt.store_serialized(oid, s, owner=held.owner)
            assert entry[2] == held.host_size, (entry, held.host_size)
            reply = {"ok": True}
        except Exception as exc:
            log.warning("host copy of device object %s failed: %s", oid.hex()[:12], exc)
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        self.rt.io.post(conn.reply, req_id, reply)

    def on_delete(self, conn, m):
        with self.lock:
            for oid in m[1]:
                self.held.pop(oid, None)

    def on_export(self, conn, m):
        """The node asks to share a device copy with a reader on the same GPU."""
        _, req_id, oid, name = m
        if self.pool is None:
            self.pool = concurrent.futures.ThreadPoolExecutor(MOVE_THREADS, "gdfut-device-move")
        self.pool.submit(self._export, conn, req_id, oid, name)

    def _export(self, conn, req_id, oid, name):
        from . import device_ipc
        try:
            with self.lock:
                held = self.held.get(oid)
            if held is None:
                raise KeyError(f"object {oid.hex()[:12]} is not held by this worker")
            with self.lock:
                export = held.export
            if export is None:
                if real_gpu():
                    export = device_ipc.cuda_export(held.value, held.gpu)
                else:   # process memory cannot be mapped by others: the copy moves to shm
                    export, value = device_ipc.shm_export(held.value, name)
                    with self.lock:
                        held.value = value
                with self.lock:
                    held.export = export
            reply = export
        except Exception as exc:
            log.warning("device object %s not shared: %s", oid.hex()[:12], exc)
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        self.rt.io.post(conn.reply, req_id, reply)

    # -- exit ----------------------------------------------------------------------
    def evacuate(self, timeout: float = 30.0) -> None:
        """Before this worker exits: the node has every device object moved
        to the host tier (answers once done)."""
        with self.lock:
            if not self.held:
                return
        try:
            self.rt.node_request(P.DEVICE_EVACUATE, timeout=timeout)
        except Exception as exc:     # the node is going too: nothing to keep them in
            log.warning("device objects not moved to host before exit: %s", exc)
