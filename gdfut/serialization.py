"""Values <-> bytes.

cloudpickle with pickle protocol 5. Large buffers (numpy, Arrow, bytes-like)
go out of band, so a value bound for the shared-memory store is written
exactly once (straight into its arena slot) and read back as read-only views.
Small values are pickled in band and travel inline in messages.

While pickling, every ObjectRef met is recorded (``nested``) so the owner can
count refs held inside other objects.

Store layout of one object:
    u32 header_len | msgpack [pickle_len, [[offset, length], ...]] | pickle | buffers
Buffers start at 64-byte aligned offsets relative to the object start.
"""
from __future__ import annotations

import pickle
import struct
import threading
from dataclasses import dataclass, field

import cloudpickle
import msgpack

from . import parallel_copy
from .exceptions import SerializationError

INLINE_LIMIT = 100 * 1024        # values this size and under travel inline
OOB_MIN_BUFFER = 16 * 1024       # smaller buffers stay in band
ALIGN = 64
_U32 = struct.Struct("<I")

_context = threading.local()


def record_nested(entry) -> None:
    """Called by ObjectRef/ActorHandle.__reduce__ while a value is pickled."""
    stack = getattr(_context, "stack", None)
    if stack:
        stack[-1].append(entry)


@dataclass
class Serialized:
    pickle_bytes: bytes
    buffers: list = field(default_factory=list)      # list[memoryview] (out of band)
    nested: list = field(default_factory=list)       # ObjectRefs met while pickling

    @property
    def inline(self) -> bool:
        return not self.buffers and len(self.pickle_bytes) <= INLINE_LIMIT

    def store_layout(self) -> tuple[bytes, list[int], int]:
        """(header, buffer offsets, total size) for writing into the store."""
        lengths = [b.nbytes for b in self.buffers]
        # header length depends on offsets; offsets depend on header length:
        # size the header with worst-case offsets first, then fill in.
        guess = msgpack.packb([len(self.pickle_bytes), [[2**63, n] for n in lengths]])
        start = _align(4 + len(guess) + len(self.pickle_bytes))
        offsets = []
        pos = start
        for n in lengths:
            offsets.append(pos)
            pos = _align(pos + n)
        header = msgpack.packb([len(self.pickle_bytes), [[o, n] for o, n in zip(offsets, lengths)]])
        assert len(header) <= len(guess)
        total = max(pos, 4 + len(header) + len(self.pickle_bytes))
        return header, offsets, total


def _align(n: int) -> int:
    return (n + ALIGN - 1) & ~(ALIGN - 1)


def serialize(value, what: str = "value") -> Serialized:
    buffers: list = []

    def take_buffer(pb: pickle.PickleBuffer):
        raw = pb.raw()
        if raw.nbytes < OOB_MIN_BUFFER:
            return True          # keep small buffers in band
        buffers.append(raw)
        return False

    stack = getattr(_context, "stack", None)
    if stack is None:
        stack = _context.stack = []
    stack.append([])
    try:
        data = cloudpickle.dumps(value, protocol=5, buffer_callback=take_buffer)
    except Exception as exc:
        raise SerializationError(f"could not serialize {what}: {type(exc).__name__}: {exc}") from exc
    finally:
        nested = stack.pop()
    return Serialized(data, buffers, nested)


def serialize_inline(value, what: str = "value") -> Serialized:
    """Pickle everything in band (for messages that must be self-contained)."""
    stack = getattr(_context, "stack", None)
    if stack is None:
        stack = _context.stack = []
    stack.append([])
    try:
        data = cloudpickle.dumps(value, protocol=5)
    except Exception as exc:
        raise SerializationError(f"could not serialize {what}: {type(exc).__name__}: {exc}") from exc
    finally:
        nested = stack.pop()
    return Serialized(data, [], nested)


def write_into(dst: memoryview, ser: Serialized, layout=None) -> None:
    """Write a serialized value into its store slot (``dst`` is that slot)."""
    header, offsets, total = layout or ser.store_layout()
    assert dst.nbytes >= total, (dst.nbytes, total)
    _U32.pack_into(dst, 0, len(header))
    pos = 4
    dst[pos:pos + len(header)] = header
    pos += len(header)
    dst[pos:pos + len(ser.pickle_bytes)] = ser.pickle_bytes
    for off, buf in zip(offsets, ser.buffers):
        _copy(dst[off:off + buf.nbytes], buf)


def _copy(dst: memoryview, src: memoryview) -> None:
    # Large buffers are copied by several threads (parallel_copy): one
    # thread reaches only ~0.9x memcpy speed into the arena.
    parallel_copy.copy_into(dst, src.cast("B"))


def loads_inline(data: bytes):
    return pickle.loads(data)


def loads_from_store(region) -> object:
    """Rebuild a value from its (read-only, pinned) store slot without copying."""
    mv = memoryview(region)
    (hlen,) = _U32.unpack_from(mv, 0)
    pickle_len, bufspec = msgpack.unpackb(mv[4:4 + hlen])
    start = 4 + hlen
    data = mv[start:start + pickle_len]
    buffers = [region[o:o + n] for o, n in bufspec]
    return pickle.loads(data, buffers=buffers)


# --- functions and classes shipped to workers ---------------------------------
# cloudpickle (>= 3.1) replaces co_filename of by-value code with "<dynamic-code>",
# so a remote traceback would lose its source lines. The source file travels
# beside the pickle and is put back on the worker; where the file exists there
# (one host, or the same checkout on every host), tracebacks show the code.

_DYNAMIC_CODE = "<dynamic-code>"


def dumps_callable(obj) -> bytes:
    """Pickle a remote function or actor class with its source file name."""
    return cloudpickle.dumps((obj, _source_file(obj)))


# A remote function or actor class whose pickle is bigger than this captured
# something large (an array in scope): refused, as Ray refuses it (same name
# and default, bytes), since every worker would unpickle it again.
FUNCTION_SIZE_ERROR_THRESHOLD = 10**8


def dumps_remote_definition(obj, what: str) -> bytes:
    """``dumps_callable`` for ``@remote``, refusing oversized definitions."""
    data = dumps_callable(obj)
    if len(data) > FUNCTION_SIZE_ERROR_THRESHOLD:
        raise ValueError(
            f"{what} is too large to send to workers ({len(data) / 2**20:.1f} MiB pickled > "
            f"FUNCTION_SIZE_ERROR_THRESHOLD={FUNCTION_SIZE_ERROR_THRESHOLD / 2**20:.1f} MiB): "
            f"its definition captures a large object from its scope (an array?). Put the "
            f"object in the object store with gdfut.put() and pass the ref as an argument")
    return data


def loads_callable(data: bytes):
    obj, source = cloudpickle.loads(data)
    if source:
        _restore_filenames(obj, source)
    return obj


def _source_file(obj) -> str | None:
    code = getattr(obj, "__code__", None)
    if code is not None:
        return code.co_filename
    for member in vars(obj).values() if isinstance(obj, type) else ():
        code = getattr(_plain_function(member), "__code__", None)
        if code is not None:
            return code.co_filename
    return None


def _plain_function(member):
    if isinstance(member, (staticmethod, classmethod)):
        return member.__func__
    if isinstance(member, property):
        return member.fget
    return member


def _restore_filenames(obj, source: str) -> None:
    functions = [obj] if not isinstance(obj, type) else \
        [_plain_function(m) for m in vars(obj).values()]
    for fn in functions:
        code = getattr(fn, "__code__", None)
        if code is not None and code.co_filename == _DYNAMIC_CODE:
            fn.__code__ = _with_filename(code, source)


def _with_filename(code, source: str):
    consts = tuple(_with_filename(c, source) if hasattr(c, "co_filename") else c
                   for c in code.co_consts)
    return code.replace(co_filename=source, co_consts=consts)
