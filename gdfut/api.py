"""The public API, with Ray's names and semantics."""
from __future__ import annotations

import atexit
import hashlib
import inspect
import os
import threading


from . import cluster, runtime_context
from . import serialization as ser
from .exceptions import (AuthenticationError, ClusterConnectionError, InvalidAddressError,
                         NotInitializedError, SessionNotFoundError)
from .object_ref import ObjectRef
from .signature import CallChecker, signature_of

_lock = threading.RLock()
_state: dict = {}

_TASK_OPTIONS = {"num_returns", "num_cpus", "num_gpus", "resources", "max_retries", "name",
                 "max_concurrency", "scheduling_strategy", "memory", "retry_exceptions",
                 "lifetime", "namespace", "max_restarts", "max_task_retries",
                 "_generator_backpressure_num_objects"}
DEFAULT_MAX_RETRIES = 3

# Ray options accepted so that Ray code runs, but whose behaviour gdfut does
# not have yet: a warning says so, once per name (none at present).
_NOT_YET: dict = {}
_warned: set = set()


def warn_not_yet(options: dict) -> None:
    import warnings
    for name, what in _NOT_YET.items():
        value = options.get(name)
        if value in (None, 0, False, "non_detached") or name in _warned:
            continue
        _warned.add(name)
        warnings.warn(f"option {name}={value!r} is accepted for Ray compatibility but not "
                      f"supported yet: {what}", stacklevel=3)


# ------------------------------------------------------------------ cluster
def init(address: str | None = None, *, num_cpus: float | None = None,
         num_gpus: float | None = None, resources: dict | None = None,
         object_store_memory: int | None = None, ignore_reinit_error: bool = False,
         session_dir: str | None = None, log_to_driver: bool = True,
         spill_dir: str | None = None, max_lineage_bytes: int | None = None,
         namespace: str | None = None, device_store_memory: int | None = None,
         **ray_options):
    """Start an embedded cluster (head + one node) or join ``address``.

    ``log_to_driver``: print what tasks print here, labelled "(fn pid=N)".
    ``spill_dir``: where the node spills objects that do not fit in
    ``object_store_memory`` (default: ``spill/`` in the session directory).
    ``device_store_memory``: bytes of the device tier per GPU, where objects
    returned by GPU tasks stay (default: half of each GPU's memory; on the
    emulated GPUs of CPU mode, 1 GiB or half the host store, the smaller).
    ``max_lineage_bytes``: how many bytes of task specs this driver keeps to
    re-make lost objects (oldest evicted first; default 256 MiB).
    ``namespace``: where this job's named actors are registered and looked
    up (Ray's semantics; default: an anonymous namespace of this job).
    Ray options gdfut has no use for (``runtime_env``,
    ``include_dashboard``...) are accepted with a warning; others are an error.
    """
    _check_ray_options(ray_options)
    from .head_state import check_namespace
    check_namespace(namespace, "init(namespace=...)")
    if max_lineage_bytes is not None and (not isinstance(max_lineage_bytes, int) or isinstance(
            max_lineage_bytes, bool) or max_lineage_bytes < 0):
        raise ValueError(f"max_lineage_bytes must be an int >= 0, got {max_lineage_bytes!r}")
    from .tier_options import check_bytes
    check_bytes(object_store_memory, "object_store_memory")
    check_bytes(device_store_memory, "device_store_memory", allow_zero=True)
    with _lock:
        if runtime_context.current() is not None:
            if ignore_reinit_error:
                return _context()
            raise RuntimeError("gdfut.init() was already called; call gdfut.shutdown() first "
                               "or pass ignore_reinit_error=True")
        if address not in (None, "local"):
            _check_join_options(num_cpus=num_cpus, num_gpus=num_gpus, resources=resources,
                                object_store_memory=object_store_memory)
        if spill_dir is not None and address not in (None, "local"):
            raise ValueError("spill_dir= applies to the cluster init() starts; a running "
                             "cluster's nodes take it from `gdfut start --spill-dir`")
        if device_store_memory is not None and address not in (None, "local"):
            raise ValueError("device_store_memory= applies to the cluster init() starts; a "
                             "running cluster's nodes take it from `gdfut start "
                             "--device-store-memory`")
        if address in (None, "local"):
            from .tier_options import check_store_options
            _check_node_resources(num_cpus, num_gpus, resources)
            tiers = check_store_options(object_store_memory, device_store_memory, spill_dir,
                                        num_gpus)
            _start_embedded(num_cpus, num_gpus, resources, tiers["object_store_memory"],
                            tiers["spill_dir"], max_lineage_bytes, namespace,
                            tiers["device_store_memory"])
        else:
            _join(address, session_dir, max_lineage_bytes, namespace)
        rt = runtime_context.require()
        if rt.job_id is None:
            where = "{}:{}".format(*rt.head_addr) if rt.head_addr else "(unknown address)"
            shutdown()
            raise ClusterConnectionError(f"this driver could not register with the gdfut "
                                         f"head at {where}; is the head running?")
        rt.log_to_driver = bool(log_to_driver)
        atexit.register(shutdown)
        return _context()


def _check_node_resources(num_cpus, num_gpus, resources) -> None:
    """What the node would refuse at its start (a negative, non-finite or
    1.5 GPU count, CPU in resources=...), refused here, before it starts."""
    import numbers
    from .sched.resources import ResourceSet
    for name, value in (("num_cpus", num_cpus), ("num_gpus", num_gpus)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
            raise TypeError(f"init({name}=...) must be a number, got {value!r}")
    if resources is not None and not isinstance(resources, dict):
        raise TypeError(f"init(resources=...) must be a dict of resource name to amount, "
                        f"got {type(resources).__name__}")
    try:
        ResourceSet.from_options(num_cpus, num_gpus, resources)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"init(): {exc}") from None


def _check_join_options(**given) -> None:
    """As Ray: a running cluster's resources and store are its nodes' own."""
    named = [name for name, value in given.items() if value is not None]
    if named:
        raise ValueError(f"When connecting to an existing cluster, {' and '.join(named)} "
                         f"must not be provided: they are set where its nodes start "
                         f"(`gdfut start --num-cpus/--num-gpus/--resources/"
                         f"--object-store-memory`)")


_RAY_OPTIONS_IGNORED = {"runtime_env", "logging_level", "logging_format",
                        "include_dashboard", "dashboard_host", "dashboard_port",
                        "configure_logging", "job_config", "_temp_dir", "_system_config",
                        "_node_ip_address", "storage"}


def _check_ray_options(options: dict) -> None:
    unknown = sorted(set(options) - _RAY_OPTIONS_IGNORED)
    if unknown:
        raise TypeError(f"gdfut.init() got unknown argument(s) {unknown}")
    if options:
        import warnings
        warnings.warn(f"gdfut.init(): {sorted(options)} accepted for Ray compatibility and "
                      f"ignored", stacklevel=3)


def _start_embedded(num_cpus, num_gpus, resources, object_store_memory, spill_dir=None,
                    max_lineage_bytes=None, namespace=None, device_store_memory=None):
    from .core_worker import CoreWorker
    session_dir = cluster.new_session_dir()
    cpus = num_cpus if num_cpus is not None else (os.cpu_count() or 1)
    store = object_store_memory or cluster.default_object_store_memory()
    head = cluster.spawn_head(session_dir, embedded=True)
    node = cluster.spawn_node(session_dir, None, cpus, num_gpus, resources, store,
                              embedded=True, spill_dir=spill_dir,
                              device_store_memory=device_store_memory)
    daemons = [head, node]
    try:
        info = node.wait_ready()
        token = open(os.path.join(session_dir, "token"), "rb").read()
        rt = CoreWorker(mode="driver", node_host="127.0.0.1", node_port=info["port"],
                        token=token, session_dir=session_dir, head_addr=None,
                        max_lineage_bytes=max_lineage_bytes)
        _set_namespace(rt, namespace)
        rt.start()
    except BaseException:
        for d in daemons:
            d.stop()
        raise
    _state.update(rt=rt, daemons=daemons, session_dir=session_dir)
    runtime_context.set_runtime(rt)


def _set_namespace(rt, namespace) -> None:
    from .head_state import anonymous_namespace
    rt.namespace = namespace or anonymous_namespace(rt.wid)


def _join(address, session_dir, max_lineage_bytes=None, namespace=None):
    from .core_worker import CoreWorker
    if address != "auto":
        _join_address(address, None)          # a bad address is named before a missing token
    session_dir, token = _session_token(session_dir)
    head_addr = _join_address(address, session_dir)
    node = _local_node(session_dir, head_addr, token)
    rt = CoreWorker(mode="driver", node_host=node[0], node_port=node[1], token=token,
                    session_dir=session_dir, head_addr=head_addr,
                    max_lineage_bytes=max_lineage_bytes)
    _set_namespace(rt, namespace)
    rt.start()
    _state.update(rt=rt, daemons=[], session_dir=session_dir)
    runtime_context.set_runtime(rt)


def _session_token(session_dir: str | None) -> tuple[str, bytes]:
    """The session directory to join and its cluster token."""
    latest = os.path.join(cluster.DEFAULT_ROOT, "session_latest")
    path = os.path.realpath(session_dir or latest)
    try:
        with open(os.path.join(path, "token"), "rb") as f:
            return path, f.read()
    except OSError as exc:
        where = (f"session_dir {session_dir!r}" if session_dir else
                 f"the latest session ({latest})")
        raise SessionNotFoundError(
            f"gdfut.init(address=...) needs the cluster token, but {where} has no readable "
            f"token file ({exc.strerror}); pass session_dir= of the cluster "
            f"(`gdfut start --head` printed it)") from None


def _join_address(address: str, session_dir: str | None) -> tuple[str, int]:
    if address == "auto":
        from .node import read_head_addr
        addr = read_head_addr(session_dir)
        if addr is None:
            raise ClusterConnectionError(f"address='auto': session {session_dir} names no "
                                         f"running head; give address='HOST:PORT'")
        return addr[0], int(addr[1])
    if not isinstance(address, str):
        raise InvalidAddressError(f"address must be a 'HOST:PORT' string, got "
                                  f"{type(address).__name__}")
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidAddressError(f"address {address!r} is not HOST:PORT (e.g. "
                                  f"'127.0.0.1:6379', as `gdfut start --head` prints), "
                                  f"'auto' or 'local'")
    return host.strip("[]"), int(port)


def _local_node(session_dir, head_addr, token):
    """Address of a node daemon on this host (asks the head)."""
    from .cli import head_request
    from . import protocol as P
    where = "{}:{}".format(*head_addr)
    try:
        nodes = head_request(head_addr, token, P.HEAD_LIST_NODES)
    except AuthenticationError:
        raise AuthenticationError(
            f"authentication failed at the gdfut head at {where}: the token in "
            f"{os.path.join(session_dir, 'token')} is not that cluster's token; pass "
            f"session_dir= of the cluster at {where}") from None
    alive = [n for n in nodes if n["state"] == "ALIVE"]
    if not alive:
        raise ClusterConnectionError(f"the cluster at {where} has no alive node")
    return tuple(alive[0]["addr"])


def _context():
    rt = runtime_context.require()
    return {"session_dir": rt.session_dir, "node_id": rt.node_id.hex(),
            "address": "{}:{}".format(*rt.head_addr) if rt.head_addr else None}


def is_initialized() -> bool:
    return runtime_context.current() is not None


def shutdown():
    """Stop this driver's runtime and every process ``init`` started."""
    with _lock:
        rt = _state.pop("rt", None)
        runtime_context.set_runtime(None)
        if rt is not None:
            rt.shutdown()
        for d in reversed(_state.pop("daemons", [])):
            d.stop()
        _state.clear()


# ------------------------------------------------------------------ objects
def put(value) -> ObjectRef:
    return runtime_context.require().put(value)


def get(refs, *, timeout: float | None = None, device: str | None = None):
    """The values of ``refs``. An object made on a GPU (device tier) comes
    back as a cupy array on a machine with a real GPU, numpy in CPU mode;
    ``device="cpu"`` always gives numpy."""
    if device not in (None, "cpu", "gpu", "cuda"):
        raise ValueError(f"get(device=...) takes None, 'cpu' or 'cuda' (or its alias 'gpu'), "
                         f"got {device!r}: device objects come back on the device that "
                         f"is current in this process; 'cpu' gives numpy")
    return runtime_context.require().get(refs, timeout, device=device)


def array_module():
    """The array module for new arrays: ``cupy`` where a real GPU is usable
    (and ``GDFUT_CPU_MODE`` is not set), else ``numpy``. Code written against
    it runs unchanged on a GPU host and in CPU mode."""
    from .device_objects import array_module as module
    return module()


def wait(refs, *, num_returns: int = 1, timeout: float | None = None, fetch_local: bool = True):
    return runtime_context.require().wait(refs, num_returns, timeout, fetch_local)


def cancel(ref: ObjectRef, *, force: bool = False, recursive: bool = True):
    """Cancel the task that makes ``ref`` (Ray's ``cancel``).

    A task not yet running is dropped and never runs. A running task gets
    KeyboardInterrupt in its code (a ``get`` or ``wait`` it is blocked in
    raises TaskCancelledError); ``force=True`` kills its worker instead. An
    async actor method's asyncio task is cancelled; a sync actor method is
    not interrupted (the actor has state) but sees
    ``get_runtime_context().is_canceled()``; ``force=True`` is refused for
    actor calls (ValueError). ``recursive``: the tasks the cancelled task
    submitted are cancelled too. ``get`` then raises TaskCancelledError.
    A finished task: nothing happens. A ref this process borrowed: its owner
    cancels the task."""
    from .object_ref import ObjectRefGenerator
    if isinstance(ref, ObjectRefGenerator):   # cancels the generator task, as in Ray
        ref = ref.completed()
    if not isinstance(ref, ObjectRef):
        raise TypeError(f"cancel() takes an ObjectRef, got {type(ref).__name__}")
    runtime_context.require().cancel(ref, bool(force), bool(recursive))


def kill(actor, *, no_restart: bool = True):
    """Kill an actor at once (Ray's ``ray.kill``). When this returns, the
    actor's name (if any) is free again and calls through any handle in this
    process fail with ActorDiedError; its worker has been told to die.
    ``no_restart=False``: only its worker is killed, and the actor restarts
    if its ``max_restarts`` allows (its owner decides, as on any death)."""
    from .actor import ActorHandle
    if not isinstance(actor, ActorHandle):
        raise TypeError(f"kill() takes an actor handle, got {type(actor).__name__}")
    rt = runtime_context.require()
    rt.actors.kill(actor._actor_id, actor._owner_wid, actor._owner_addr, actor._class_name,
                   bool(no_restart))


def get_actor(name: str, namespace: str | None = None):
    """A handle to the actor registered as ``name`` in ``namespace`` (None:
    the current job's namespace). ValueError when there is none."""
    from .actor import ActorHandle, current_namespace
    from .head_state import check_namespace
    from . import protocol as P
    from .transport.tcp import RemoteError
    if not isinstance(name, str) or not name:
        raise ValueError(f"get_actor() needs a non-empty actor name, got {name!r}")
    rt = runtime_context.require()
    namespace = check_namespace(namespace, "get_actor(namespace=...)") or current_namespace(rt)
    try:
        actor_id, owner_wid, owner_addr, meta = rt.head_request(P.HEAD_LOOKUP_ACTOR, name,
                                                                 namespace)
    except RemoteError as exc:
        raise ValueError(str(exc)) from None
    return ActorHandle(actor_id, owner_wid, tuple(owner_addr), meta["class_name"],
                       meta["methods"], rt, meta.get("signatures"))


def memory_summary() -> list[dict]:
    """Live objects of every owner on this node: id, owner, size, state, refs,
    call site, and where the bytes are: ``node`` (hex id) and ``tier``
    (``"device"``, ``"host"`` or ``"disk"``; values small enough to live in their owner's
    memory count as ``"host"`` of the owner's node)."""
    from . import protocol as P
    rt = runtime_context.require()
    own_rows = rt.io.run(_own_rows(rt), timeout=30)
    others = rt.node_request(P.NODE_MEMORY, timeout=30)
    rows = own_rows + others["owners"]
    _add_tiers(rows, others["store"], others["node_id"])
    return rows


def _add_tiers(rows: list[dict], store: list[dict], node_id: bytes) -> None:
    """Each row's ``node`` and ``tier``: this node's store listing where the
    object is here, else the first location its owner recorded."""
    here = {o["object_id"]: o["tier"] for o in store}
    for row in rows:
        oid = row.get("oid")
        located = [loc for loc in row.get("locations") or () if loc != ["inline"]]
        if oid in here:
            row["node"], row["tier"] = node_id.hex(), here[oid]
        elif located:
            row["node"], row["tier"] = bytes(located[0][0]).hex(), str(located[0][1])
        elif row.get("owned", True):
            row["node"], row["tier"] = node_id.hex(), "host"
        else:
            row["node"], row["tier"] = None, None      # borrowed: the owner knows


async def _own_rows(rt):
    return rt.memory_rows()


class RuntimeContext:
    """Where the calling code runs (Ray's ``get_runtime_context()``)."""

    def __init__(self, rt):
        self._rt = rt

    def get_node_id(self) -> str:
        return self._rt.node_id.hex()

    def get_worker_id(self) -> str:
        return self._rt.wid.hex()

    @property
    def worker_mode(self) -> str:
        return self._rt.mode

    @property
    def namespace(self) -> str | None:
        """The namespace of named actors here (Ray's ``namespace``)."""
        return self._rt.namespace

    def get_job_id(self) -> str | None:
        """The driver's job number from the head (None in workers, or while
        the driver is still registering)."""
        job = self._rt.job_id
        return None if job is None else str(job)

    def get_task_id(self) -> str | None:
        """The running task's id (None in the driver)."""
        tid = self._rt.current_task_id
        return tid.hex() if tid is not None else None

    def get_actor_id(self) -> str | None:
        """This actor's id, in an actor's methods (else None)."""
        aid = self._rt.current_actor_id
        return aid.hex() if aid is not None else None

    def is_canceled(self) -> bool:
        """Whether ``cancel`` was called on the running task or actor method
        (a sync actor method is not interrupted: it checks this to stop).
        RuntimeError in a driver or an async actor, as in Ray."""
        executor = getattr(self._rt, "executor", None)
        if executor is None:
            raise RuntimeError("is_canceled() can only be called from a task or actor method")
        return executor.current_task_cancelled()

    def get_accelerator_ids(self) -> dict:
        """Devices assigned to the running task or actor: {"GPU": ["0", ...]}."""
        return {"GPU": [str(g) for g in self._rt.gpu_ids]}


def get_gpu_ids() -> list[int]:
    """GPU ids assigned to the calling task or actor (empty in the driver and
    for tasks that asked for no GPU). CUDA_VISIBLE_DEVICES names the same."""
    return list(runtime_context.require().gpu_ids)


def cluster_resources() -> dict:
    """Total resources of the alive nodes (Ray's ``cluster_resources``)."""
    return _sum_resources("resources_total")


def available_resources() -> dict:
    """Free resources of the alive nodes, as of their last heartbeat (about 1 s)."""
    return _sum_resources("resources_available")


def _sum_resources(key: str) -> dict:
    total: dict = {}
    for n in nodes():
        if n.get("state") != "ALIVE":
            continue
        stats = n.get("stats") or {}
        amounts = stats.get(key)
        if amounts is None and key == "resources_total":
            amounts = n.get("resources") or {}
        for name, amount in (amounts or {}).items():
            total[name] = total.get(name, 0) + amount
    return total


def get_runtime_context() -> RuntimeContext:
    return RuntimeContext(runtime_context.require())


def nodes() -> list[dict]:
    """One dict per node the head knows, dead ones included: Ray's keys
    (``NodeID`` hex, ``Alive``, ``NodeManagerAddress``, ``NodeManagerPort``,
    ``ObjectManagerPort``, ``Resources`` ...) beside gdfut's own."""
    from . import protocol as P
    return [_ray_node_row(n) for n in runtime_context.require().head_request(P.HEAD_LIST_NODES)]


def _ray_node_row(n: dict) -> dict:
    addr = n.get("addr") or [None, None]
    data_addr = n.get("data_addr") or [None, None]
    alive = n.get("state") == "ALIVE"
    row = {"NodeID": n["node_id"].hex() if isinstance(n.get("node_id"), bytes) else None,
           "Alive": alive, "alive": alive,
           "NodeManagerAddress": addr[0], "NodeManagerHostname": addr[0],
           "NodeManagerPort": addr[1], "ObjectManagerPort": data_addr[1],
           "NodeName": addr[0],
           "Resources": dict(n.get("resources") or {}) if alive else {},
           "ObjectStoreSocketName": n.get("arena")}
    row.update(n)
    return row


# ------------------------------------------------------------------ remote
def remote(*args, **kwargs):
    """``@remote`` or ``@remote(num_cpus=..., ...)`` on a function or class."""
    if len(args) == 1 and not kwargs and callable(args[0]):
        return _make_remote(args[0], {})
    if args or not kwargs:
        raise TypeError("the @gdfut.remote decorator must be applied either with no arguments "
                        "and no parentheses (@gdfut.remote) or with some of the options "
                        f"{sorted(_TASK_OPTIONS)} (e.g. @gdfut.remote(num_cpus=2))")
    _check_options(kwargs)
    warn_not_yet(kwargs)
    return lambda target: _make_remote(target, kwargs)


def _make_remote(target, options):
    if inspect.isclass(target):
        from .actor import ActorClass
        return ActorClass(target, options)
    if not callable(target):
        raise TypeError(f"@remote needs a function or class, got {type(target).__name__}")
    if inspect.iscoroutinefunction(target):
        raise ValueError(f"'async def' should not be used for remote tasks ({target.__name__}): "
                         f"wrap it in a plain function that calls asyncio.run(...), or make it "
                         f"a method of an actor (async actors run async def methods)")
    return RemoteFunction(target, options)


def _check_options(options: dict):
    unknown = set(options) - _TASK_OPTIONS
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)}; valid: {sorted(_TASK_OPTIONS)}")
    from .submitter import check_backpressure, check_num_returns
    check_num_returns(options.get("num_returns", 1))
    check_backpressure(options.get("_generator_backpressure_num_objects"))
    r = options.get("max_retries", DEFAULT_MAX_RETRIES)
    if not isinstance(r, int) or r < -1:
        raise ValueError(f"max_retries must be an int >= -1, got {r!r}")
    retry_exceptions_wire(options.get("retry_exceptions", False))


def retry_exceptions_wire(value) -> bool | tuple:
    """Ray's ``retry_exceptions`` (a bool, or a list of exception classes) as
    the task manager takes it: a bool, or the classes' names."""
    from .task_manager import class_names
    if isinstance(value, bool):
        return value
    if (isinstance(value, (list, tuple)) and value
            and all(isinstance(c, type) and issubclass(c, BaseException) for c in value)):
        return class_names(value)
    raise TypeError(f"retry_exceptions must be either a boolean or a non-empty list of "
                    f"exception classes, got {value!r}")


def resources_of(options: dict, default_cpus: float = 1.0) -> dict:
    from .sched.resources import ResourceSet
    rs = ResourceSet.from_options(options.get("num_cpus"), options.get("num_gpus"),
                                  options.get("resources"), default_cpus=default_cpus,
                                  memory=options.get("memory"))
    return rs.to_dict()


class RemoteFunction:
    def __init__(self, fn, options):
        self._fn = fn
        self._options = dict(options)
        self._name = getattr(fn, "__qualname__", getattr(fn, "__name__", "function"))
        self._pickled: tuple | None = None
        self._resolved: dict | None = None
        self._check_args: CallChecker | None = None
        self.__doc__ = fn.__doc__

    def __call__(self, *args, **kwargs):
        raise TypeError(f"remote function {self._name} cannot be called directly; "
                        f"use {self._name}.remote()")

    def _function_bytes(self):
        if self._pickled is None:
            data = ser.dumps_remote_definition(self._fn, f"remote function {self._name}")
            self._pickled = (hashlib.blake2b(data, digest_size=16).digest(), data)
        return self._pickled

    def _task_options(self):
        if self._resolved is None:
            o = self._options
            from .scheduling_strategies import strategy_wire
            from .submitter import default_num_returns
            self._resolved = {"num_returns": o.get("num_returns", default_num_returns(self._fn)),
                              "backpressure": o.get("_generator_backpressure_num_objects"),
                              "max_retries": o.get("max_retries", DEFAULT_MAX_RETRIES),
                              "retry_exceptions": retry_exceptions_wire(
                                  o.get("retry_exceptions", False)),
                              "resources": resources_of(o),
                              "strategy": strategy_wire(o.get("scheduling_strategy"))}
            if hasattr(o.get("scheduling_strategy"), "check_fits"):   # a placement group
                o["scheduling_strategy"].check_fits(self._resolved["resources"],
                                                    f"task {self._name}")
        return self._resolved

    def options(self, **options):
        _check_options(options)
        warn_not_yet(options)
        clone = RemoteFunction(self._fn, {**self._options, **options})
        clone._pickled = self._pickled
        clone._check_args = self._check_args
        return clone

    def remote(self, *args, **kwargs):
        rt = runtime_context.require()
        check = self._check_args
        if check is None:
            check = self._check_args = CallChecker(signature_of(self._fn),
                                                   f"{self._name}.remote()")
        check(args, kwargs)      # TypeError here, as Ray, not later in a worker
        fn_id, fn_bytes = self._function_bytes()
        opts = self._task_options()
        refs = rt.submitter.submit(fn_id, fn_bytes, self._name, args, kwargs, opts)
        n = opts["num_returns"]
        if n == "streaming":
            from .object_ref import ObjectRefGenerator
            return ObjectRefGenerator(refs[0], rt)
        if n == 1 or n == "dynamic":
            return refs[0]
        return refs if n > 1 else None

    def __reduce__(self):
        return (RemoteFunction, (self._fn, self._options))


__all__ = ["init", "shutdown", "is_initialized", "remote", "get", "put", "wait", "cancel",
           "kill", "get_actor", "memory_summary", "nodes", "get_gpu_ids", "ObjectRef",
           "NotInitializedError"]
