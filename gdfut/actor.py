"""Actor classes and handles (Ray's ``@remote`` class semantics)."""
from __future__ import annotations

import functools
import hashlib
import inspect


from . import runtime_context
from . import serialization as ser
from .serialization import record_nested
from .ids import new_id, short
from .signature import CallChecker, from_wire, signature_of, to_wire
from .head_state import anonymous_namespace, check_lifetime, check_namespace

_ACTOR_OPTIONS = {"num_cpus", "num_gpus", "resources", "name", "max_concurrency", "namespace",
                  "lifetime", "max_restarts", "max_task_retries", "scheduling_strategy",
                  "memory", "get_if_exists"}


def current_namespace(rt) -> str:
    """The namespace names are looked up and registered in when none is
    given: the driver's job's (``init(namespace=)``, else its anonymous
    one); in a worker, the job's of the task or actor it runs."""
    return rt.namespace or anonymous_namespace(rt.wid)


def check_lifetime_options(options: dict) -> None:
    check_lifetime(options.get("lifetime"))
    check_namespace(options.get("namespace"))


class ActorClassInheritanceException(TypeError):
    """``class B(A)`` where ``A`` is a remote class (Ray's name)."""


class ActorExitRequest(SystemExit):
    """Raised by ``exit_actor()``: the worker ends the actor once this call
    unwinds. A SystemExit, so ``except Exception`` in user code lets it pass."""


def exit_actor():
    """End the calling actor (Ray's ``ray.actor.exit_actor``). The call that
    invokes it and every queued call fail with ``ActorDiedError``, later calls
    too; atexit handlers run and the worker process exits with status 0."""
    rt = runtime_context.current()
    if rt is None or rt.mode != "worker" or rt.current_actor_id is None:
        mode = "the driver" if rt is None or rt.mode != "worker" else "a task"
        raise TypeError(f"exit_actor() was called in {mode}, not in an actor; call it inside "
                        f"an actor method to end that actor (use gdfut.kill(handle) to end "
                        f"an actor from outside)")
    raise ActorExitRequest(0)


# --------------------------------------------------------- argument checks
# Ray checks the arguments of ``.remote()`` against the signature at the call,
# so a wrong call fails where it is made, not later inside the actor. The
# signature travels with handles (to other processes, through the head for
# named actors) as plain lists: [[name, kind, has_default], ...].

def _class_signatures(cls) -> dict:
    """name -> wire params, for the constructor ("__init__") and each method."""
    sigs = {"__init__": to_wire(signature_of(cls))}
    for name, member in inspect.getmembers(cls, callable):
        if name.startswith("__") or inspect.isclass(member):
            continue
        plain = inspect.isfunction(inspect.getattr_static(cls, name, None))
        # static and class methods keep all their parameters
        sigs[name] = to_wire(signature_of(member, skip_self=plain))
    return sigs


def method(*, num_returns=1):
    """Decorate an actor method with call options (Ray's ``@ray.method``):
    ``num_returns`` an int, ``"streaming"`` or ``"dynamic"``."""
    from .submitter import check_num_returns
    check_num_returns(num_returns)

    def mark(fn):
        fn.__gdfut_num_returns__ = num_returns
        return fn
    return mark


class ActorClass:
    def __init__(self, cls, options, *subclass_body):
        if subclass_body:   # `class B(A)`: Python calls type(A)("B", bases, namespace)
            raise ActorClassInheritanceException(_inheritance_message(cls, options))
        self._cls = cls
        self._options = dict(options)
        self._pickled = None
        # method name -> num_returns (set with @gdfut.method; else "streaming" for a
        # generator method, 1 for others)
        from .submitter import default_num_returns
        self._methods = {n: getattr(v, "__gdfut_num_returns__", default_num_returns(v))
                         for n, v in inspect.getmembers(cls, callable)
                         if not n.startswith("__") and not inspect.isclass(v)}
        self._signatures = _class_signatures(cls)
        self._init_check = CallChecker(from_wire(self._signatures["__init__"]),
                                       f"{cls.__name__}.remote()")

    def __getattr__(self, name):
        """Class attributes, static and class methods of the class, as on Ray's
        actor classes (``A.X``, ``A.static_fn()`` runs here, locally).

        Not the class's own functions and nested classes themselves: cloudpickle
        pickles a function or class by reference when ``module.A.name`` finds
        it, and ``module.A`` is this remote class, so finding them through it
        would make the class pickle refer to a module workers may not have.
        Functions come back wrapped (a different object); nested classes not."""
        cls = self.__dict__.get("_cls")
        if cls is None or name.startswith("__"):
            raise AttributeError(name)
        value = getattr(cls, name)
        if inspect.isfunction(value):
            return _local_function(value)
        if inspect.isclass(value) and value.__qualname__.startswith(cls.__qualname__ + "."):
            raise AttributeError(f"nested class {name!r} of actor class {cls.__name__} is not "
                                 f"reachable through the remote class")
        return value

    def __call__(self, *a, **k):
        raise TypeError(f"actor class {self._cls.__name__} cannot be instantiated directly; "
                        f"use {self._cls.__name__}.remote()")

    def options(self, **options):
        unknown = set(options) - _ACTOR_OPTIONS
        if unknown:
            raise ValueError(f"unknown actor option(s) {sorted(unknown)}")
        check_lifetime_options(options)
        from .api import warn_not_yet
        warn_not_yet(options)
        clone = ActorClass(self._cls, {**self._options, **options})
        clone._pickled = self._pickled
        return clone

    def __reduce__(self):
        return (ActorClass, (self._cls, self._options))

    def _class_bytes(self):
        if self._pickled is None:
            data = ser.dumps_remote_definition(self._cls, f"actor class {self._cls.__name__}")
            self._pickled = (hashlib.blake2b(data, digest_size=16).digest(), data)
        return self._pickled

    def remote(self, *args, **kwargs) -> "ActorHandle":
        from . import protocol as P
        from .transport.tcp import RemoteError
        rt = runtime_context.require()
        o = self._options
        detached = check_lifetime(o.get("lifetime"))
        namespace = check_namespace(o.get("namespace")) or current_namespace(rt)
        if o.get("get_if_exists") and o.get("name"):
            from .api import get_actor
            try:
                return get_actor(o["name"], namespace=namespace)
            except ValueError:
                pass
        self._init_check(args, kwargs)
        resources = {}
        if o.get("num_cpus") is not None:
            resources["CPU"] = o["num_cpus"]
        if o.get("num_gpus") is not None:
            resources["GPU"] = o["num_gpus"]
        resources.update(o.get("resources") or {})
        if o.get("memory") is not None:
            resources["memory"] = o["memory"]     # bytes, scheduled like any resource
        max_conc = o.get("max_concurrency")
        if max_conc is not None and (not isinstance(max_conc, int) or max_conc < 1):
            raise ValueError(f"max_concurrency must be an int >= 1, got {max_conc!r}")
        from .actor_restarts import check_restart_option
        restarts = {k: o.get(k) or 0 for k in ("max_restarts", "max_task_retries")}
        for option, value in restarts.items():
            check_restart_option(option, value)
        actor_id = new_id()
        name = self._cls.__name__
        if o.get("name"):
            async def register():
                head = await rt.head()
                return await head.request(P.HEAD_REGISTER_ACTOR, o["name"], namespace,
                                          actor_id, rt.wid, list(rt.addr),
                                          {"class_name": name, "methods": self._methods,
                                           "signatures": self._signatures}, detached)
            try:
                rt.io.run(register(), timeout=30)
            except RemoteError as exc:
                raise ValueError(str(exc)) from None
        if hasattr(o.get("scheduling_strategy"), "check_fits"):   # a placement group
            o["scheduling_strategy"].check_fits(resources, f"actor {name}")
        cls_id, cls_bytes = self._class_bytes()
        from .scheduling_strategies import strategy_wire
        rt.actors.create(actor_id, cls_id, cls_bytes, name, args, kwargs,
                         {"resources": resources,
                          "strategy": strategy_wire(o.get("scheduling_strategy")),
                          "actor_options": {"max_concurrency": max_conc,
                                            "namespace": namespace, "detached": detached,
                                            **restarts},
                          **restarts},
                         pinned=bool(o.get("name")) or detached, detached=detached)
        # After create(): the owner's table knows the actor before its first handle.
        return ActorHandle(actor_id, rt.wid, rt.addr, name, self._methods, rt,
                           self._signatures)


def _local_function(fn):
    """``fn`` behind a wrapper of its own (see ``ActorClass.__getattr__``)."""
    @functools.wraps(fn)
    def call(*args, **kwargs):
        return fn(*args, **kwargs)
    return call


def _inheritance_message(subclass_name, bases) -> str:
    base = next((b for b in bases if isinstance(b, ActorClass)), None)
    base_name = base._cls.__name__ if base is not None else "?"
    return (f"Attempted to define subclass '{subclass_name}' of actor class '{base_name}'. "
            f"Inheriting from actor classes is not currently supported. You can instead "
            f"inherit from a non-actor base class and make the derived class an actor class "
            f"(with @gdfut.remote).")


class ActorHandle:
    """A handle to an actor. Handles are counted like ObjectRefs, under the
    actor's id, by the actor's owner (its creator): when the last handle
    anywhere is gone (local copies, handles passed to tasks or held inside
    objects), the owner stops the actor once its pending calls are done.
    Named actors are kept until ``kill`` or until their owner exits, since
    ``get_actor`` may hand out new handles at any time; detached ones
    (``lifetime="detached"``) outlive their owner, until ``kill``."""

    def __init__(self, actor_id, owner_wid, owner_addr, class_name, methods, rt=None,
                 signatures=None):
        self._actor_id = actor_id
        self._owner_wid = owner_wid
        self._owner_addr = tuple(owner_addr)
        self._class_name = class_name
        self._methods = dict(methods) if isinstance(methods, dict) else dict.fromkeys(methods, 1)
        self._signatures = dict(signatures or {})   # method -> wire params (unknown: unchecked)
        self._checks: dict = {}
        self._rt = rt
        if rt is not None:
            rt.add_local_ref(self)

    # The attributes reference counting reads, as on ObjectRef.
    @property
    def id(self) -> bytes:
        return self._actor_id

    @property
    def owner_wid(self) -> bytes:
        return self._owner_wid

    @property
    def owner_addr(self) -> tuple:
        return self._owner_addr

    def __del__(self):
        rt = self.__dict__.get("_rt")
        if rt is not None:
            try:
                rt.remove_local_ref(self._actor_id)
            except Exception:  # interpreter shutdown: nothing to tell anyone
                pass

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        if name not in self._methods:
            raise AttributeError(f"actor {self._class_name} has no method {name!r}")
        return ActorMethod(self, name, self._methods[name])

    def _check_call(self, method, args, kwargs):
        check = self._checks.get(method)
        if check is None:
            check = self._checks[method] = CallChecker(
                from_wire(self._signatures.get(method)), f"{self._class_name}.{method}.remote()")
        check(args, kwargs)

    def __reduce__(self):
        record_nested(self)
        return (_rebuild_handle, (self._actor_id, self._owner_wid, self._owner_addr,
                                  self._class_name, self._methods, self._signatures))

    def __repr__(self):
        return f"Actor({self._class_name}, {short(self._actor_id)})"

    def __eq__(self, other):
        return isinstance(other, ActorHandle) and other._actor_id == self._actor_id

    def __hash__(self):
        return hash(self._actor_id)


def _rebuild_handle(actor_id, owner_wid, owner_addr, class_name, methods, signatures=None):
    rt = runtime_context.current()
    if rt is not None and owner_wid != rt.wid:
        rt.borrowed_refs_seen += 1   # get() registers them with the owner
    return ActorHandle(actor_id, owner_wid, owner_addr, class_name, methods, rt, signatures)


class ActorMethod:
    def __init__(self, handle, name, num_returns, backpressure=None):
        self._handle = handle
        self._name = name
        self._num_returns = num_returns
        self._backpressure = backpressure   # Ray's _generator_backpressure_num_objects

    def options(self, **options):
        from .submitter import check_backpressure, check_num_returns
        unknown = set(options) - {"num_returns", "name", "_generator_backpressure_num_objects"}
        if unknown:
            raise ValueError(f"unknown actor method option(s) {sorted(unknown)}")
        n = options.get("num_returns", self._num_returns)
        check_num_returns(n)
        backpressure = options.get("_generator_backpressure_num_objects", self._backpressure)
        check_backpressure(backpressure)
        return ActorMethod(self._handle, self._name, n, backpressure)

    def remote(self, *args, **kwargs):
        from .object_ref import ObjectRefGenerator
        rt = runtime_context.require()
        self._handle._check_call(self._name, args, kwargs)
        n = self._num_returns
        refs = rt.actors.submit(self._handle, self._name, args, kwargs, n, self._backpressure)
        if n == "streaming":
            return ObjectRefGenerator(refs[0], rt)
        if n == 1 or n == "dynamic":
            return refs[0]
        return refs if n > 1 else None

    def __call__(self, *a, **k):
        raise TypeError(f"actor method {self._name} must be called with .remote()")
