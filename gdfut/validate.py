"""Shapes of the messages peers send, checked before a handler touches state.

Every message a daemon (node, head) or a process handles from a peer has a
schema here: one entry per message type listing its fields after the type,
each a small check of type, size and range. ``problem(message)`` returns
what is wrong (a sentence naming the message, the field and the value) or
None; handlers answer a bad request with an ERROR reply and drop a bad
one-way message, so a buggy or hostile peer can never raise inside a handler
half-way through a state change (one bad frame once killed the head's
watcher). Pure: no I/O.

Schemas are strict about what a handler reads and bounded everywhere; a
message may carry extra trailing fields only where its schema says so
(``extra=True``), for messages whose later fields other code may grow.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from . import protocol as P

MAX_ID_BYTES = 64               # ids are 16-20 bytes; some slack, never megabytes
MAX_NAME = 1024                 # resource names, actor names, kinds, reasons
MAX_NAMESPACE_LEN = 256        # head_state.MAX_NAMESPACE_LEN
MAX_TEXT = 64 * 1024            # error texts, free-form strings
MAX_ITEMS = 100_000             # lists of ids in one message
MAX_RESOURCES = 256             # distinct resources of one request or node
MAX_QUANTITY = 2 ** 62          # a resource quantity (bytes of memory fit)
MAX_INT = 2 ** 63 - 1


class Check:
    """One field's check: ``problem(value)`` is None when the value is fine."""

    def problem(self, value) -> str | None:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass(frozen=True)
class Anything(Check):
    """Opaque payload (a pickled spec, a reply): the frame limit bounds it."""

    def problem(self, value):
        return None


@dataclass(frozen=True)
class Int(Check):
    lo: int = 0
    hi: int = MAX_INT

    def problem(self, value):
        if type(value) is not int:
            return f"must be an integer, got {_show(value)}"
        if not self.lo <= value <= self.hi:
            return f"must be in [{self.lo}, {self.hi}], got {value}"
        return None


@dataclass(frozen=True)
class Number(Check):
    lo: float = 0
    hi: float = MAX_QUANTITY

    def problem(self, value):
        if type(value) not in (int, float):
            return f"must be a number, got {_show(value)}"
        if isinstance(value, float) and not math.isfinite(value):
            return f"must be finite, got {value}"
        if not self.lo <= value <= self.hi:
            return f"must be in [{self.lo}, {self.hi}], got {value}"
        return None


@dataclass(frozen=True)
class Bool(Check):
    """A flag: True/False (0/1 accepted, msgpack peers may send either)."""

    def problem(self, value):
        if type(value) is bool or (type(value) is int and value in (0, 1)):
            return None
        return f"must be a boolean, got {_show(value)}"


@dataclass(frozen=True)
class Bytes(Check):
    min_len: int = 1
    max_len: int = MAX_ID_BYTES

    def problem(self, value):
        if type(value) is not bytes:
            return f"must be bytes, got {_show(value)}"
        if not self.min_len <= len(value) <= self.max_len:
            return f"must be {self.min_len}-{self.max_len} bytes, got {len(value)}"
        return None


@dataclass(frozen=True)
class Str(Check):
    max_len: int = MAX_NAME
    min_len: int = 0

    def problem(self, value):
        if type(value) is not str:
            return f"must be a string, got {_show(value)}"
        if not self.min_len <= len(value) <= self.max_len:
            return f"must be a string of {self.min_len}-{self.max_len} characters, got {len(value)}"
        return None


@dataclass(frozen=True)
class OneOf(Check):
    values: tuple

    def problem(self, value):
        if isinstance(value, (str, int)) and not isinstance(value, bool) and value in self.values:
            return None
        return f"must be one of {list(self.values)}, got {_show(value)}"


@dataclass(frozen=True)
class Nullable(Check):
    inner: Check

    def problem(self, value):
        return None if value is None else self.inner.problem(value)


@dataclass(frozen=True)
class Either(Check):
    choices: tuple

    def problem(self, value):
        problems = [c.problem(value) for c in self.choices]
        if any(p is None for p in problems):
            return None
        return " or ".join(problems)


@dataclass(frozen=True)
class ListOf(Check):
    item: Check
    max_len: int = MAX_ITEMS
    min_len: int = 0

    def problem(self, value):
        if type(value) is not list:
            return f"must be a list, got {_show(value)}"
        if not self.min_len <= len(value) <= self.max_len:
            return f"must have {self.min_len}-{self.max_len} items, got {len(value)}"
        for i, v in enumerate(value):
            p = self.item.problem(v)
            if p is not None:
                return f"item {i} {p}"
        return None


@dataclass(frozen=True)
class Tuple(Check):
    """A fixed-length list: ``[host, port]``, ``[oid, count]``."""

    items: tuple

    def problem(self, value):
        if type(value) is not list or len(value) != len(self.items):
            return f"must be a list of {len(self.items)}, got {_show(value)}"
        for i, (check, v) in enumerate(zip(self.items, value)):
            p = check.problem(v)
            if p is not None:
                return f"item {i} {p}"
        return None


@dataclass(frozen=True)
class DictOf(Check):
    key: Check
    value: Check
    max_len: int = MAX_ITEMS

    def problem(self, value):
        if type(value) is not dict:
            return f"must be a map, got {_show(value)}"
        if len(value) > self.max_len:
            return f"must have at most {self.max_len} entries, got {len(value)}"
        for k, v in value.items():
            p = self.key.problem(k)
            if p is not None:
                return f"key {_show(k)} {p}"
            p = self.value.problem(v)
            if p is not None:
                return f"entry {_show(k)} {p}"
        return None


@dataclass(frozen=True)
class Record(Check):
    """A map with known keys; keys not listed are allowed (bounded by
    ``max_len``, their values checked by ``rest``) unless ``closed``."""

    required: tuple = ()        # ((key, check), ...)
    optional: tuple = ()
    max_len: int = 64
    closed: bool = False
    rest: Check = Anything()

    def problem(self, value):
        if type(value) is not dict:
            return f"must be a map, got {_show(value)}"
        if len(value) > self.max_len:
            return f"must have at most {self.max_len} entries, got {len(value)}"
        for key, check in self.required:
            if key not in value:
                return f"lacks {key!r}"
            p = check.problem(value[key])
            if p is not None:
                return f"{key!r} {p}"
        for key, check in self.optional:
            if key in value:
                p = check.problem(value[key])
                if p is not None:
                    return f"{key!r} {p}"
        known = {k for k, _ in self.required} | {k for k, _ in self.optional}
        for k in value:
            if k in known:
                continue
            if self.closed:
                return f"has unknown key {_show(k)}"
            p = self.rest.problem(value[k])
            if p is not None:
                return f"{_show(k)} {p}"
        return None


@dataclass(frozen=True)
class Json(Check):
    """Plain data the head stores as JSON: maps with string keys, lists,
    strings, finite numbers, booleans and None, nested at most ``depth``."""

    depth: int = 8

    def problem(self, value):
        return _json_problem(value, self.depth)


def _json_problem(value, depth) -> str | None:
    if value is None or type(value) in (bool, str, int):
        return None
    if type(value) is float:
        return None if math.isfinite(value) else f"must be finite, got {value}"
    if depth <= 0:
        return "is nested too deeply"
    if type(value) is list:
        items = value
    elif type(value) is dict:
        if not all(type(k) is str for k in value):
            return "must have string keys"
        items = value.values()
    else:
        return f"must be plain data (JSON), got {type(value).__name__}"
    for v in items:
        p = _json_problem(v, depth - 1)
        if p is not None:
            return p
    return None


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --- field vocabulary --------------------------------------------------------------------
MAX_BUNDLES = 1000              # bundles of one placement group (sched.placement_groups)
PG_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
REQ_ID = Int(1, MAX_INT)              # a request id (0 means "no reply wanted" where allowed)
ID = Bytes()
COUNT = Int(1, MAX_INT)
ADDR = Tuple((Str(255, 1), Int(0, 65535)))
RESOURCES = DictOf(Str(MAX_NAME, 1), Number(), MAX_RESOURCES)
BUNDLE_INDEX = Int(0, MAX_BUNDLES - 1)
LEASE_HINTS = Record(optional=(
    ("arg_bytes", DictOf(ID, Int(), MAX_ITEMS)),
    ("strategy", Nullable(Either((Str(), ListOf(Anything(), 16))))),
    ("spilled", Bool()),
))
# What a node reports about itself: every field placement reads is checked,
# so one bad registration cannot break scheduling for the whole cluster.
NODE_INFO = Record(required=(
    ("node_id", ID),
    ("addr", ADDR),
    ("resources", RESOURCES),
), optional=(
    ("pid", Int()),
    ("session_dir", Str(4096)),
    ("arena", Str(255)),
    ("object_store_memory", Int()),
    ("data_addr", Nullable(ADDR)),
    ("transport", Str(64)),
), rest=Either((Bytes(0, MAX_TEXT), Json())))    # the head stores it as JSON
NODE_STATS = Record(optional=(
    ("resources_total", RESOURCES),
    ("resources_available", RESOURCES),
    ("leases", Record(optional=(("queued_requests", Int()),), max_len=256)),
), max_len=256)


@dataclass(frozen=True)
class Schema:
    name: str
    fields: tuple                 # ((field name, Check), ...) after the type
    optional: tuple = ()          # trailing fields that may be absent
    extra: bool = False           # more trailing fields allowed (unchecked)

    def __post_init__(self):
        # (index in the message, field name, check) of fields that need a
        # check at all: owner-plane messages are on the task path
        checks = tuple((i, name, check.problem) for i, (name, check)
                       in enumerate(self.fields + self.optional, 1)
                       if not isinstance(check, Anything))
        object.__setattr__(self, "checks", checks)
        object.__setattr__(self, "min_fields", len(self.fields))
        object.__setattr__(self, "max_fields", len(self.fields) + len(self.optional))

    @property
    def has_req_id(self) -> bool:
        return bool(self.fields) and self.fields[0][0] == "req_id"


def _schema(name, *fields, optional=(), extra=False):
    return Schema(name, tuple(fields), tuple(optional), extra)


SCHEMAS: dict[int, Schema] = {
    # --- process <-> node daemon -------------------------------------------------------
    P.REGISTER_WORKER: _schema("REGISTER_WORKER", ("req_id", REQ_ID), ("worker_id", ID),
                               ("pid", Int()), ("listen_addr", ADDR), ("kind", Str(64))),
    P.REGISTER_CLIENT: _schema("REGISTER_CLIENT", ("req_id", REQ_ID), ("worker_id", ID),
                               ("pid", Int()), ("listen_addr", ADDR), ("kind", Str(64))),
    P.REQUEST_LEASE: _schema("REQUEST_LEASE", ("req_id", REQ_ID),
                             ("resources", Nullable(RESOURCES)), ("is_actor", Bool()),
                             ("actor_id", Nullable(ID)), ("hints", LEASE_HINTS)),
    P.RETURN_LEASE: _schema("RETURN_LEASE", ("lease_id", Int()), ("worker_died", Bool())),
    P.WORKER_BLOCKED: _schema("WORKER_BLOCKED"),
    P.WORKER_UNBLOCKED: _schema("WORKER_UNBLOCKED"),
    P.STORE_CREATE: _schema("STORE_CREATE", ("req_id", REQ_ID), ("object_id", ID),
                            ("size", Int()), ("primary", Bool()), ("owner", ID)),
    P.STORE_SEAL: _schema("STORE_SEAL", ("req_id", REQ_ID), ("object_id", ID)),
    P.STORE_ABORT: _schema("STORE_ABORT", ("object_id", ID)),
    P.STORE_PIN: _schema("STORE_PIN", ("req_id", REQ_ID), ("object_id", ID),
                         optional=(("gpus", ListOf(Int(0, 1 << 16))),)),
    P.STORE_UNPIN: _schema("STORE_UNPIN", ("pins", ListOf(Tuple((ID, COUNT))))),
    P.STORE_FREE: _schema("STORE_FREE", ("object_ids", ListOf(ID))),
    P.DEVICE_CREATE: _schema("DEVICE_CREATE", ("req_id", REQ_ID), ("object_id", ID),
                             ("size", Int()), ("host_size", Int()), ("gpu", Int(0, 1 << 16)),
                             ("owner", ID), optional=(("restored", Bool()),)),
    P.DEVICE_PIN: _schema("DEVICE_PIN", ("req_id", REQ_ID), ("object_id", ID)),
    P.DEVICE_UNPIN: _schema("DEVICE_UNPIN", ("pins", ListOf(Tuple((ID, COUNT))))),
    P.DEVICE_EVACUATE: _schema("DEVICE_EVACUATE", ("req_id", REQ_ID)),
    P.DEVICE_SPILL: _schema("DEVICE_SPILL", ("req_id", REQ_ID), ("object_id", ID)),
    P.DEVICE_DELETE: _schema("DEVICE_DELETE", ("object_ids", ListOf(ID))),
    P.DEVICE_EXPORT: _schema("DEVICE_EXPORT", ("req_id", REQ_ID), ("object_id", ID),
                             ("shm_name", Str(255))),
    P.DEVICE_SERVE: _schema("DEVICE_SERVE", ("addr", ADDR)),
    P.NODE_DEVICE_SOURCE: _schema("NODE_DEVICE_SOURCE", ("req_id", REQ_ID), ("object_id", ID),
                                  ("source_node", ID)),
    P.KILL_WORKER: _schema("KILL_WORKER", ("req_id", Int()), ("worker_id", ID),
                           ("reason", Str(MAX_TEXT))),
    P.NODE_STATUS: _schema("NODE_STATUS", ("req_id", REQ_ID)),
    P.NODE_MEMORY: _schema("NODE_MEMORY", ("req_id", REQ_ID)),
    P.NODE_PULL: _schema("NODE_PULL", ("req_id", REQ_ID), ("object_id", ID), ("size", Int()),
                         ("source_node", ID)),
    P.NODE_CLUSTER_VIEW: _schema("NODE_CLUSTER_VIEW", ("req_id", REQ_ID)),
    P.DETACH_LEASE: _schema("DETACH_LEASE", ("lease_id", Int())),
    # --- node / driver <-> head -------------------------------------------------------
    P.HEAD_REGISTER_NODE: _schema("HEAD_REGISTER_NODE", ("req_id", REQ_ID), ("info", NODE_INFO)),
    P.HEAD_HEARTBEAT: _schema("HEAD_HEARTBEAT", ("node_id", ID), ("stats", NODE_STATS)),
    P.HEAD_LIST_NODES: _schema("HEAD_LIST_NODES", ("req_id", REQ_ID)),
    P.HEAD_REGISTER_ACTOR: _schema("HEAD_REGISTER_ACTOR", ("req_id", REQ_ID), ("name", Str()),
                                   ("namespace", Str(MAX_NAMESPACE_LEN, 1)), ("actor_id", ID),
                                   ("owner_wid", ID), ("owner_addr", ADDR), ("meta", Json()),
                                   ("detached", Bool())),
    P.HEAD_LOOKUP_ACTOR: _schema("HEAD_LOOKUP_ACTOR", ("req_id", REQ_ID), ("name", Str()),
                                 ("namespace", Str(MAX_NAMESPACE_LEN, 1))),
    P.HEAD_ACTOR_PLACED: _schema("HEAD_ACTOR_PLACED", ("req_id", REQ_ID), ("actor_id", ID),
                                 ("worker_wid", ID), ("worker_addr", ADDR)),
    P.HEAD_REMOVE_ACTOR: _schema("HEAD_REMOVE_ACTOR", ("req_id", REQ_ID), ("actor_id", ID)),
    P.HEAD_ACTOR_SPEC: _schema("HEAD_ACTOR_SPEC", ("req_id", REQ_ID), ("actor_id", ID),
                               ("worker_wid", ID), ("worker_addr", ADDR), ("node_id", ID),
                               ("spec", DictOf(Str(), Anything(), max_len=64))),
    P.HEAD_ACTOR_LOCATION: _schema("HEAD_ACTOR_LOCATION", ("req_id", REQ_ID), ("actor_id", ID),
                                   ("dead_worker", Nullable(ID))),
    P.HEAD_STATUS: _schema("HEAD_STATUS", ("req_id", REQ_ID)),
    P.HEAD_REGISTER_JOB: _schema("HEAD_REGISTER_JOB", ("req_id", REQ_ID),
                                 ("info", DictOf(Str(), Either((Bytes(0, MAX_TEXT), Json())),
                                                 max_len=64))),
    P.HEAD_SHUTDOWN: _schema("HEAD_SHUTDOWN", ("req_id", REQ_ID)),
    P.HEAD_PROCESSES_DIED: _schema("HEAD_PROCESSES_DIED", ("worker_ids", ListOf(ID))),
    P.HEAD_DEAD_PROCESSES: _schema("HEAD_DEAD_PROCESSES", ("req_id", REQ_ID), ("since_seq", Int())),
    P.HEAD_PROCESSES_STARTED: _schema("HEAD_PROCESSES_STARTED", ("node_id", ID),
                                      ("worker_ids", ListOf(ID)),
                                      optional=(("snapshot", Bool()),)),
    # --- placement groups: driver/node <-> head, head -> node --------------------------
    P.HEAD_PG_CREATE: _schema("HEAD_PG_CREATE", ("req_id", REQ_ID), ("pg_id", ID),
                              ("name", Str()), ("bundles", ListOf(RESOURCES, MAX_BUNDLES, 1)),
                              ("strategy", OneOf(PG_STRATEGIES)), ("detached", Bool())),
    P.HEAD_PG_REMOVE: _schema("HEAD_PG_REMOVE", ("req_id", REQ_ID), ("pg_id", ID)),
    P.HEAD_PG_WAIT: _schema("HEAD_PG_WAIT", ("req_id", REQ_ID), ("pg_id", ID),
                            ("timeout", Nullable(Number()))),
    P.HEAD_PG_TABLE: _schema("HEAD_PG_TABLE", ("req_id", REQ_ID), ("pg_id", Nullable(ID))),
    P.HEAD_PG_LOOKUP: _schema("HEAD_PG_LOOKUP", ("req_id", REQ_ID), ("name", Str())),
    P.NODE_PREPARE_BUNDLES: _schema("NODE_PREPARE_BUNDLES", ("req_id", REQ_ID),
                                    ("group", Str(MAX_NAME, 1)),
                                    ("bundles", ListOf(Tuple((BUNDLE_INDEX, RESOURCES)),
                                                       MAX_BUNDLES))),
    P.NODE_COMMIT_BUNDLES: _schema("NODE_COMMIT_BUNDLES", ("req_id", REQ_ID),
                                   ("group", Str(MAX_NAME, 1)),
                                   ("indexes", ListOf(BUNDLE_INDEX, MAX_BUNDLES))),
    P.NODE_RETURN_BUNDLES: _schema("NODE_RETURN_BUNDLES", ("req_id", REQ_ID),
                                   ("group", Str(MAX_NAME, 1)),
                                   ("indexes", Nullable(ListOf(BUNDLE_INDEX, MAX_BUNDLES)))),
    # --- any process <-> owner (fields other code may grow stay open) ------------------
    P.GET_OBJECT: _schema("GET_OBJECT", ("req_id", REQ_ID), ("object_id", ID), extra=True),
    P.ADD_BORROWER: _schema("ADD_BORROWER", ("req_id", REQ_ID), ("object_id", ID),
                            ("borrower", ID), ("n", COUNT),
                            optional=(("via", ID), ("borrower_host", Str(255, 1)),
                                      ("borrower_port", Int(0, 65535)))),
    P.CONFIRM_BORROWER: _schema("CONFIRM_BORROWER", ("object_id", ID), ("borrower", ID),
                                ("via", ID)),
    P.SETTLE_BORROWER: _schema("SETTLE_BORROWER", ("object_id", ID), ("owner", ID), ("via", ID)),
    P.BORROWER_SETTLED: _schema("BORROWER_SETTLED", ("object_id", ID), ("borrower", ID),
                                ("via", ID)),
    P.REMOVE_BORROWER: _schema("REMOVE_BORROWER", ("object_id", ID), ("borrower", ID),
                               ("n", COUNT)),
    P.ACTOR_LOCATION: _schema("ACTOR_LOCATION", ("req_id", REQ_ID), ("actor_id", ID),
                              optional=(("dead_worker", ID),)),
    P.KILL_ACTOR: _schema("KILL_ACTOR", ("req_id", REQ_ID), ("actor_id", ID),
                          ("no_restart", Bool())),
    P.OWNER_MEMORY: _schema("OWNER_MEMORY", ("req_id", REQ_ID)),
    P.GENERATOR_ACK: _schema("GENERATOR_ACK", ("task_id", ID), ("consumed", Int(-1, MAX_INT))),
    P.CANCEL_OWNED_TASK: _schema("CANCEL_OWNED_TASK", ("req_id", REQ_ID), ("task_id", ID),
                                 ("force", Bool()), ("recursive", Bool())),
    P.ADD_LOCATION: _schema("ADD_LOCATION", ("object_id", ID), ("node_id", ID)),
    P.TASK_DONE: _schema("TASK_DONE", ("task_id", ID), ("status", Anything()),
                         ("returns", Anything()), extra=True),
}


def problem(message: list) -> str | None:
    """What is wrong with ``message`` (already ``[int type, ...]``), or None.
    Types without a schema are the handler's business (unknown ones are
    ignored there)."""
    schema = SCHEMAS.get(message[0])
    if schema is None:
        return None
    n = len(message) - 1
    lo, hi = schema.min_fields, schema.max_fields
    if n < lo or (n > hi and not schema.extra):
        want = str(lo) if lo == hi else f"{lo}-{hi}"
        if schema.extra:
            want = f"at least {lo}"
        return f"bad {schema.name} message: {n} fields, expected {want}"
    for i, field, check in schema.checks:
        if i > n:
            break                       # an optional field that is absent
        p = check(message[i])
        if p is not None:
            return f"bad {schema.name} message: {field} {p}"
    return None


def request_id(message: list) -> int | None:
    """The request id of a (possibly malformed) request, if it has a usable one."""
    schema = SCHEMAS.get(message[0])
    if schema is None or not schema.has_req_id or len(message) < 2:
        return None
    rid = message[1]
    return rid if type(rid) is int and 0 < rid <= MAX_INT else None


def admit(conn, message: list, log) -> bool:
    """True when ``message`` may reach its handler. Otherwise a request is
    answered with an ERROR naming the problem and a one-way message is
    dropped (logged): either way only that message is lost."""
    text = problem(message)
    if text is None:
        return True
    log.warning("%s from %s", text, conn.peer or "peer")
    rid = request_id(message)
    if rid is not None:
        conn.reply_error(rid, text)
    return False
