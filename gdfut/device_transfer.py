"""A device object read by a GPU task on another node, moved GPU to GPU over ucx.

Without this, such a read goes through host memory: the holder writes a host
copy, the nodes' data plane moves host bytes, the reader restores them onto
its device (``node_device``, ``object_transfer``). With it, where the
transport is ucx, both ends have a real GPU with cupy, and UCX was built with
CUDA (its ``cuda_copy`` transport is active), the holding *worker* (device
memory lives in the process that made it, not in the node) sends the device
arrays and the reader receives them into cupy arrays it allocates on its own
GPU: no host copy is written on either node.

* **The decision** (``choose_path``, pure): from the facts -- the transport,
  a device object, the reader's GPU, UCX's CUDA support, whether the holder
  serves device pulls, and ``GDFUT_DEVICE_TRANSFER`` (``auto`` (default),
  ``device``, ``host``) -- it answers ``device``, ``host``, or ``ask`` (the
  local facts allow it; ask the holder's node whether the holder serves). A
  forced ``device`` where a fact is missing raises ``DevicePathUnavailable``
  naming it. ``serves_device_pulls`` decides the same for the holder.
* **The holder** (``DeviceServer``): a worker with a real GPU whose node uses
  ucx starts a ucx data listener with its first device object and tells its
  node (``DEVICE_SERVE``). A pull (``["device_pull", oid]``) pins the device
  copy through the node (``DEVICE_PIN``, so it cannot be moved or dropped
  meanwhile), answers the value's structure and one flat byte buffer per
  device array, then unpins.
* **The reader** (``fetch``): asks its node where the holder serves
  (``NODE_DEVICE_SOURCE``; the node asks the holder's node over the data
  plane), connects there over ucx and receives. Anything failing on the way
  (the holder gone, the copy moved down, a connection error) falls back to
  the host path with a warning. The received value is the reading task's own
  copy; it is not registered in the reader node's device tier (a second
  reader there fetches again).

The GPU half (cupy arrays handed to ucxx) has never run here (no GPU); the
same code moves numpy arrays in the tests, and ``bench/gpu_check.py`` checks
it on a GPU machine.
"""
from __future__ import annotations

import asyncio
import logging
import os
import pickle

import numpy as np

from . import protocol as P
from . import serialization as ser

log = logging.getLogger("gdfut.device")

DEVICE, HOST, ASK = "device", "host", "ask"
ENV = "GDFUT_DEVICE_TRANSFER"
MODES = ("auto", DEVICE, HOST)
PULL, VALUE, GONE = "device_pull", "value", "gone"
MAX_ARRAYS = 4096                     # device arrays in one value (a container of them)
CONNECT_TIMEOUT_S = 10.0


class DevicePathUnavailable(RuntimeError):
    """GDFUT_DEVICE_TRANSFER=device, but the device-to-device path cannot be used."""


def forced_mode(env=None) -> str:
    mode = (env if env is not None else os.environ).get(ENV, "auto").strip().lower() or "auto"
    if mode not in MODES:
        raise ValueError(f"{ENV}={mode!r}: choose one of {', '.join(MODES)}")
    return mode


def _missing(transport, device_object, reader_gpu, ucx_cuda) -> list[str]:
    why = []
    if not device_object:
        why.append("the object is not a device object")
    if transport != "ucx":
        why.append(f"the transport is {transport!r}, not 'ucx'")
    if not reader_gpu:
        why.append("the reader has no usable GPU (cupy on a real GPU)")
    if not ucx_cuda:
        why.append("UCX here has no CUDA support (no active cuda_copy transport)")
    return why


def choose_path(transport: str, device_object: bool, reader_gpu: bool, ucx_cuda: bool,
                holder_serves: bool | None, mode: str = "auto") -> str:
    """``device``, ``host`` or ``ask`` (``holder_serves`` is not known yet and
    every other fact allows the device path). ``mode`` ``device`` raises
    ``DevicePathUnavailable`` where a fact is missing; ``host`` always
    answers ``host``."""
    if mode == HOST:
        return HOST
    why = _missing(transport, device_object, reader_gpu, ucx_cuda)
    if holder_serves is False:
        why.append("the holder does not serve device pulls (no real GPU, no ucx with "
                   "CUDA there, or the device copy is gone)")
    if why:
        if mode == DEVICE:
            raise DevicePathUnavailable(f"{ENV}=device, but the device-to-device path "
                                        f"cannot be used: {'; '.join(why)}")
        return HOST
    return ASK if holder_serves is None else DEVICE


def serves_device_pulls(transport: str, holder_gpu: bool, ucx_cuda: bool,
                        mode: str = "auto") -> bool:
    """Whether a worker holding device objects starts a device listener."""
    return mode != HOST and not _missing(transport, True, holder_gpu, ucx_cuda)


_UCX_CUDA: list = []


def ucx_has_cuda() -> bool:
    """ucxx imports and UCX's ``cuda_copy`` transport is active (UCX was
    built with CUDA and found a GPU). Cached; starts ucxx's context."""
    if not _UCX_CUDA:
        try:
            from .transport.ucx import import_ucxx
            _UCX_CUDA.append("cuda_copy" in import_ucxx().get_active_transports())
        except Exception as exc:
            log.info("ucx device transfers unavailable: %s", exc)
            _UCX_CUDA.append(False)
    return _UCX_CUDA[0]


# -- the wire: a value's structure, then one flat byte buffer per device array --

def _flat_bytes(arr):
    """A C-contiguous 1-D uint8 view (cupy and numpy alike)."""
    xp = _module_of(arr)
    arr = xp.ascontiguousarray(arr)
    return arr.reshape(-1).view(xp.uint8)


def _module_of(arr):
    if isinstance(arr, np.ndarray):
        return np
    import cupy
    return cupy


def pack(value, real: bool):
    """(header, buffers): the value with each device array replaced by a
    slot, the arrays' shapes and dtypes, and their bytes. ``real``: device
    arrays are CUDA arrays (as cupy); else numpy arrays (tests)."""
    from .device_ipc import _Slot, _as_cupy
    from .device_objects import DESCEND, is_device_value, map_leaves
    descs, bufs = [], []

    def leaf(x):
        if real and is_device_value(x, True):
            arr = _as_cupy(x)
        elif not real and isinstance(x, np.ndarray) and x.dtype != object:
            arr = x
        else:
            return DESCEND
        descs.append([list(arr.shape), arr.dtype.str])
        bufs.append(_flat_bytes(arr))
        return _Slot(len(descs) - 1)
    skeleton = map_leaves(value, leaf)
    if len(descs) > MAX_ARRAYS:
        raise ValueError(f"{len(descs)} device arrays in one value (at most {MAX_ARRAYS})")
    if real:
        import cupy
        cupy.cuda.Device().synchronize()    # every stream: the producer's kernels have written it
    return [VALUE, ser.serialize_inline(skeleton).pickle_bytes, descs], bufs


def _check_header(msg) -> list:
    if (len(msg) != 3 or not isinstance(msg[1], bytes) or not isinstance(msg[2], list)
            or len(msg[2]) > MAX_ARRAYS):
        raise ValueError(f"bad device value header {msg!r:.80}")
    out = []
    for desc in msg[2]:
        shape, dtype = desc
        dt = np.dtype(dtype)
        if dt.hasobject or not all(isinstance(n, int) and n >= 0 for n in shape):
            raise ValueError(f"bad device array {desc!r:.80}")
        out.append((tuple(shape), dt, int(np.prod(shape, dtype=np.int64)) * dt.itemsize))
    return out


async def send_value(ep, value, real: bool) -> None:
    header, bufs = await asyncio.to_thread(pack, value, real)   # a GPU sync may wait
    await ep.send_frame(header)
    for buf in bufs:
        await ep.send_buffer(_wire(buf))


async def recv_value(ep, header, alloc):
    """The value whose ``header`` came in: ``alloc(nbytes)`` gives a flat
    uint8 array (cupy on the reader's GPU) each array's bytes land in."""
    from .device_ipc import _Slot
    from .device_objects import DESCEND, map_leaves
    arrays = []
    for shape, dtype, nbytes in _check_header(header):
        flat = alloc(nbytes)
        await ep.recv_into(_wire(flat))
        arrays.append(flat.view(dtype).reshape(shape))
    return map_leaves(pickle.loads(header[1]),
                      lambda x: arrays[x.index] if isinstance(x, _Slot) else DESCEND)


def _wire(arr):
    """What a data endpoint takes: device arrays as they are (ucx), host
    arrays as memoryviews."""
    return arr if hasattr(arr, "__cuda_array_interface__") else memoryview(arr)


def cupy_alloc(nbytes: int):
    import cupy
    return cupy.empty(nbytes, cupy.uint8)


# -- the holder ------------------------------------------------------------------

async def serve_pulls(ep, lookup, pin, unpin, real: bool) -> None:
    """One connection of the holder's device listener: ``lookup(oid)`` is
    the held value or None; ``await pin(oid)`` pins it through the node
    (False: it is moving down or gone); ``unpin(oid)`` lets go."""
    while True:
        msg = await ep.recv_frame()
        if len(msg) != 2 or msg[0] != PULL or not isinstance(msg[1], bytes):
            return
        oid = msg[1]
        value = lookup(oid)
        if value is None or not await pin(oid):
            await ep.send_frame([GONE])
            continue
        try:
            await send_value(ep, value, real)
        finally:
            unpin(oid)


class DeviceServer:
    """The holder's device listener (a worker with a real GPU, on ucx)."""

    def __init__(self, rt, device_objects):
        self.rt = rt
        self.objects = device_objects
        self.listener = None
        self._starting = None

    def wanted(self) -> bool:
        from .device_objects import real_gpu
        transport = (getattr(self.rt, "node_info", None) or {}).get("transport")
        try:
            mode = forced_mode()
        except ValueError:
            return False
        return transport == "ucx" and real_gpu() and serves_device_pulls(
            transport, True, ucx_has_cuda(), mode)

    def ensure(self) -> None:
        """Any thread but the io thread: start the listener once, if wanted
        (decided on the io thread, where ucxx runs). A failure to start is
        logged once; the host path then serves other nodes."""
        if self._starting is None or not self._starting.done():
            try:
                self.rt.io.run(self._start())
            except Exception as exc:
                log.warning("not serving device pulls over ucx: %s: %s", type(exc).__name__, exc)

    async def _start(self):
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._listen())
        await asyncio.shield(self._starting)

    async def _listen(self):
        if not self.wanted():
            return
        from .transport.base import get_backend
        host = self.rt.addr[0]
        self.listener = await get_backend("ucx").listen(host, 0, self.rt.token, self._serve)
        self.rt.node_conn.send([P.DEVICE_SERVE, list(self.listener.address)])
        log.info("serving device pulls over ucx at %s", self.listener.address)

    async def _serve(self, ep):
        from .transport.tcp import ConnectionLost

        def lookup(oid):
            with self.objects.lock:
                held = self.objects.held.get(oid)
            return held.value if held is not None else None

        async def pin(oid):
            return bool(await self.rt.node_conn.request(P.DEVICE_PIN, oid))

        def unpin(oid):
            if not self.rt.node_conn.closed:
                self.rt.node_conn.send([P.DEVICE_UNPIN, [[oid, 1]]])
        try:
            await serve_pulls(ep, lookup, pin, unpin, real=True)
        except (ConnectionLost, ConnectionError, EOFError, OSError,
                asyncio.IncompleteReadError):
            return

    async def close(self):
        if self.listener is not None:
            await self.listener.close()
            self.listener = None


# -- the reader ----------------------------------------------------------------------

def local_facts(rt) -> dict:
    """This reader's facts for ``choose_path`` (ucxx is asked only where
    the others allow the device path)."""
    from .device_objects import real_gpu
    transport = (getattr(rt, "node_info", None) or {}).get("transport")
    reader_gpu = bool(rt.gpu_ids) and real_gpu()
    ucx_cuda = transport == "ucx" and reader_gpu and ucx_has_cuda()
    return dict(transport=transport, device_object=True, reader_gpu=reader_gpu,
                ucx_cuda=ucx_cuda)


def local_path(rt) -> str:
    """The decision before asking the holder (``ask`` or ``host``; raises
    when forced and unavailable)."""
    return choose_path(**local_facts(rt), holder_serves=None, mode=forced_mode())


class DevicePulls:
    """The reader's ucx endpoints to holders, kept for the next pull (a ucx
    connection costs a handshake and a UCX endpoint; closing one can block
    the loop up to ``ucx.CLOSE_PERIOD_NS``): at most ``IDLE_PER_HOLDER``
    idle per holder, ``MAX_HOLDERS`` holders (the oldest closed)."""

    IDLE_PER_HOLDER = 2
    MAX_HOLDERS = 32

    def __init__(self, rt):
        self.rt = rt
        self.idle: dict[tuple, list] = {}
        self.received_objects = 0          # values received GPU to GPU (bench/gpu_check.py)
        self.received_bytes = 0

    async def take(self, addr: tuple):
        eps = self.idle.get(addr)
        while eps:
            ep = eps.pop()
            if not ep.closed:
                return ep
        from .transport.base import get_backend
        return await asyncio.wait_for(get_backend("ucx").connect(addr, self.rt.token),
                                      CONNECT_TIMEOUT_S)

    async def give_back(self, addr: tuple, ep) -> None:
        eps = self.idle.setdefault(addr, [])
        if ep.closed or len(eps) >= self.IDLE_PER_HOLDER:
            await ep.close()
            return
        eps.append(ep)
        while len(self.idle) > self.MAX_HOLDERS:
            for old in self.idle.pop(next(iter(self.idle))):
                await old.close()

    async def close(self) -> None:
        idle, self.idle = self.idle, {}
        for eps in idle.values():
            for ep in eps:
                await ep.close()


async def fetch(rt, oid: bytes, source_node: bytes, alloc=cupy_alloc):
    """The device object ``oid`` (held on ``source_node``) received onto this
    reader's GPU, or None: take the host path."""
    facts, mode = local_facts(rt), forced_mode()
    if choose_path(**facts, holder_serves=None, mode=mode) != ASK:
        return None
    from .ids import short
    addr = await rt.node_conn.request(P.NODE_DEVICE_SOURCE, oid, source_node)
    if choose_path(**facts, holder_serves=addr is not None, mode=mode) != DEVICE:
        return None
    pulls, addr, ep = rt.device.pulls, tuple(addr), None
    try:
        ep = await pulls.take(addr)
        await ep.send_frame([PULL, oid])
        header = await ep.recv_frame()
        if header[:1] == [GONE]:
            log.info("device object %s left its holder's GPU: reading it through host "
                     "memory", short(oid))
            return None
        value = await recv_value(ep, header, alloc)
        pulls.received_objects += 1
        pulls.received_bytes += sum(n for _, _, n in _check_header(header))
        return value
    except (OSError, ConnectionError, EOFError, asyncio.TimeoutError, ValueError,
            MemoryError) as exc:       # (cupy's OutOfMemoryError is a MemoryError)
        if ep is not None:
            await ep.close()
        log.warning("device object %s not received over ucx (%s: %s): reading it through "
                    "host memory", short(oid), type(exc).__name__, exc)
        return None
    except BaseException:          # cancelled mid-transfer: the pair is out of step
        if ep is not None:
            await ep.close()
        raise
    finally:
        if ep is not None and not ep.closed:
            await pulls.give_back(addr, ep)
