"""Identifiers.

Ids are plain ``bytes`` on the wire and inside the pure state machines (cheap to
hash, msgpack-native). The small wrappers here only add a readable ``hex``
form for logs, errors and the memory view.

An object id is its task id plus a 4-byte return index, so an owner can tell
which task (lineage) made an object without a lookup. ``put`` objects use a
fresh random "task" id with index 0xFFFFFFFF.

A generator task (Ray's streaming or dynamic generators) has one fixed return,
index 0 (it resolves when the task ends), and item i of what it yields is the
object at index i + 1: the owner and the executor derive the same ids.
"""
from __future__ import annotations

import os
import struct

TASK_ID_LEN = 16
OBJECT_ID_LEN = TASK_ID_LEN + 4
PUT_INDEX = 0xFFFFFFFF
MAX_GENERATOR_ITEMS = PUT_INDEX - 1   # item indexes 0 .. MAX-1 map to returns 1 .. PUT_INDEX-1


def new_task_id() -> bytes:
    return os.urandom(TASK_ID_LEN)


def new_id(n: int = 16) -> bytes:
    return os.urandom(n)


def object_id_for_return(task_id: bytes, index: int) -> bytes:
    assert len(task_id) == TASK_ID_LEN, task_id
    return task_id + struct.pack(">I", index)


def object_id_for_yield(task_id: bytes, index: int) -> bytes:
    """Id of the object holding the ``index``-th value a generator task yields."""
    if not 0 <= index < MAX_GENERATOR_ITEMS:
        raise ValueError(f"generator item index {index} out of range")
    return object_id_for_return(task_id, index + 1)


def object_id_for_put() -> bytes:
    return object_id_for_return(new_task_id(), PUT_INDEX)


def task_of(object_id: bytes) -> bytes:
    assert len(object_id) == OBJECT_ID_LEN, object_id
    return object_id[:TASK_ID_LEN]


def return_index(object_id: bytes) -> int:
    return struct.unpack(">I", object_id[TASK_ID_LEN:])[0]


def is_put_object(object_id: bytes) -> bool:
    return return_index(object_id) == PUT_INDEX


def short(id_bytes: bytes | None) -> str:
    """Short hex for logs and messages (first 8 bytes)."""
    if id_bytes is None:
        return "None"
    return id_bytes[:8].hex()
