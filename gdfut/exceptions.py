"""Errors a user of gdfut can catch. Names follow Ray's where Ray has one."""
from __future__ import annotations


class GdfutError(Exception):
    """Base class of every gdfut error."""


class NotInitializedError(GdfutError):
    pass


class GetTimeoutError(GdfutError, TimeoutError):
    pass


class ObjectStoreFullError(GdfutError, MemoryError):
    pass


class WorkerCrashedError(GdfutError):
    pass


class ActorDiedError(GdfutError):
    pass


class OwnerDiedError(GdfutError):
    pass


class ObjectLostError(GdfutError):
    pass


class TaskCancelledError(GdfutError):
    pass


class UnschedulableError(GdfutError):
    pass


class NodeDiedError(GdfutError):
    pass


class AuthenticationError(GdfutError):
    """A daemon refused this process's cluster token (it is another cluster's)."""


class ClusterConnectionError(GdfutError, ConnectionError):
    """The head cannot be reached (wrong address, not running, died), or the
    address names something other than a gdfut head."""


class InvalidAddressError(GdfutError, ValueError):
    """An address that is not HOST:PORT."""


class SessionNotFoundError(GdfutError, FileNotFoundError):
    """A session directory that is missing or has no cluster token."""


class ProtocolError(GdfutError):
    pass


class SerializationError(GdfutError, TypeError):
    pass


def load_error(data: bytes) -> BaseException:
    """The exception a task's error entry holds; a GdfutError saying so when
    it cannot be unpickled here (``get`` must raise an error, never a
    pickling failure)."""
    import pickle
    try:
        err = pickle.loads(data)
    except Exception as exc:
        return GdfutError(f"the task failed, but its error could not be unpickled here: "
                          f"{type(exc).__name__}: {exc}")
    if not isinstance(err, BaseException):
        return GdfutError(f"the task failed with a non-exception error value {err!r:.200}")
    return err


class TaskError(GdfutError):
    """A task or actor method raised. ``get`` raises an instance of a subclass
    that is also an instance of the original exception's class, so
    ``except ValueError`` works as it would locally. Where no such subclass can
    be made (a class that cannot be subclassed or instantiated without its own
    arguments) or the original cannot be unpickled here, ``get`` raises a plain
    TaskError that names the class and carries the remote traceback.

    Attributes: ``cause`` (the original exception, when it could be
    unpickled, else None), ``cause_cls_name``, ``cause_message`` (its text),
    ``remote_traceback`` (text), ``function``.
    """

    def __init__(self, function: str, remote_traceback: str, cause: BaseException | None,
                 cause_cls_name: str, cause_message: str | None = None):
        self.function = function
        self.remote_traceback = remote_traceback
        self.cause = cause
        self.cause_cls_name = cause_cls_name
        self.cause_message = _text_of(cause) if cause_message is None else cause_message
        self.args = (self._message(),)

    def _message(self) -> str:
        return (f"task {self.function} raised {self.cause_cls_name}: {self.cause_message}\n"
                f"--- remote traceback ---\n{self.remote_traceback.rstrip()}")

    def __str__(self) -> str:
        return self._message()

    def __reduce__(self):
        # The cause travels as its own pickle, so a cause that cannot be
        # pickled here or unpickled there loses only itself, not the error.
        return (_rebuild_task_error, (self.function, self.remote_traceback,
                                      _pack_cause(self.cause), self.cause_cls_name,
                                      self.cause_message))

    def as_instanceof_cause(self) -> "TaskError":
        """An error of a class deriving from both TaskError and the cause's
        class (so ``except CauseClass`` catches it), or self where that class
        cannot be made or instantiated."""
        cause = self.cause
        if cause is None or isinstance(self, type(cause)):
            return self
        derived = _derived_class(type(cause))
        err = _new_instance(derived, cause) if derived is not None else None
        if err is None:
            return self
        TaskError.__init__(err, self.function, self.remote_traceback, cause,
                           self.cause_cls_name, self.cause_message)
        return err


def _text_of(exc: BaseException | None) -> str:
    if exc is None:
        return ""
    try:
        return str(exc)
    except Exception:   # a broken __str__ must not hide the error itself
        return f"<{type(exc).__name__}: str() failed>"


def _pack_cause(cause: BaseException | None) -> tuple | None:
    """The cause as separately pickled parts: the whole exception, and its
    class, args and attributes, so the other side can rebuild it even when
    the whole does not unpickle (an ``__init__`` that takes other arguments
    than ``.args``) or did not pickle (an attribute holding a lock)."""
    if cause is None:
        return None
    state = getattr(cause, "__dict__", None) or {}
    attrs = {k: v for k, v in ((k, _dumps_or_none(v)) for k, v in state.items()) if v is not None}
    return (_dumps_or_none(cause), _dumps_or_none(type(cause)),
            _dumps_or_none(cause.args), attrs)


def _dumps_or_none(value) -> bytes | None:
    import cloudpickle
    try:
        return cloudpickle.dumps(value)
    except Exception:   # unpicklable (a lock, a socket...): the text and traceback remain
        return None


def _loads_or_none(data: bytes | None):
    if data is None:
        return None
    import pickle
    try:
        return pickle.loads(data)
    except Exception:   # e.g. __init__ needs other args than .args, or its module is absent
        return None


def _unpack_cause(packed) -> BaseException | None:
    if isinstance(packed, BaseException) or packed is None:
        return packed
    whole, cls_bytes, args_bytes, attrs = packed
    cause = _loads_or_none(whole)
    if isinstance(cause, BaseException):
        return cause
    cls = _loads_or_none(cls_bytes)
    if not (isinstance(cls, type) and issubclass(cls, BaseException)):
        return None
    args = _loads_or_none(args_bytes)
    cause = _bare_instance(cls, args if isinstance(args, tuple) else ())
    if cause is not None:
        for name, data in attrs.items():
            try:
                setattr(cause, name, _loads_or_none(data))
            except Exception:   # a read-only property: keep the rest
                pass
    return cause


def _bare_instance(cls: type, args: tuple):
    """An instance of ``cls`` with ``args``, made by its builtin base alone:
    the class's own __new__ and __init__ (which may want other arguments)
    are not called."""
    builtin = _builtin_base(cls)
    try:
        obj = builtin.__new__(cls, *args)
    except Exception:
        # MemoryError (and so ObjectStoreFullError) refuses ``__new__`` called
        # on a subclass ("not safe"); a plain call still works where the
        # class's own __init__ takes its args
        try:
            return cls(*args)
        except Exception:
            return None
    _init_builtin(builtin, obj, args)
    return obj


def _builtin_base(cls: type) -> type:
    return next(c for c in cls.__mro__ if c.__module__ == "builtins")


def _init_builtin(builtin: type, obj, args: tuple) -> None:
    """Restore the C-level state (errno, ``exceptions``, ``value``...) a
    builtin exception keeps from its args."""
    try:
        builtin.__init__(obj, *args)
    except Exception:   # the args do not fit the builtin's own __init__: keep what we have
        pass


_DERIVED: dict[type, type | None] = {}
_MAX_DERIVED = 1000      # distinct cause classes remembered; a limit on the cache


def _delegate_to_cause(self, name):
    """Attributes the cause has (``e.a`` for ``MyErr(a, b)``) read through the error."""
    cause = self.__dict__.get("cause")
    if cause is None or name.startswith("__"):
        raise AttributeError(name)
    return getattr(cause, name)


def _no_init(self, *args, **kwargs):
    """Instances are set up by as_instanceof_cause, never by the cause's __init__."""


def _derived_class(cause_cls: type) -> type | None:
    if cause_cls in _DERIVED:
        return _DERIVED[cause_cls]
    try:
        derived = type(f"TaskError({cause_cls.__name__})", (TaskError, cause_cls), {
            "__init__": _no_init, "__str__": TaskError.__str__,
            "__reduce__": TaskError.__reduce__, "__getattr__": _delegate_to_cause,
            "__module__": __name__})
    except Exception:   # layout conflicts, final classes, a failing __init_subclass__
        derived = None
    if len(_DERIVED) >= _MAX_DERIVED:
        _DERIVED.clear()
    _DERIVED[cause_cls] = derived
    return derived


def _new_instance(derived: type, cause: BaseException):
    """An instance of ``derived`` made through its own __new__ (whatever C
    layout the cause's class has: ExceptionGroup needs its message and
    exceptions, OSError its own fields), then the builtin base's state (errno,
    ``exceptions``, ``value``...) restored from the cause's args."""
    args = cause.args if isinstance(cause.args, tuple) else ()
    for attempt in (args, ()):
        try:
            err = derived(*attempt)
        except Exception:   # a __new__ of the cause's class that wants other arguments
            continue
        _restore_builtin_state(err, cause, args)
        return err
    try:   # skip that __new__: the builtin base alone makes the instance
        err = _builtin_base(derived).__new__(derived, *args)
    except Exception:
        return None
    _restore_builtin_state(err, cause, args)
    return err


def _restore_builtin_state(err, cause, args) -> None:
    builtin = _builtin_base(type(cause))
    if builtin.__init__ is not BaseException.__init__:
        _init_builtin(builtin, err, args)


def _rebuild_task_error(function, remote_traceback, cause, cause_cls_name,
                        cause_message=None):
    cause = _unpack_cause(cause)
    err = TaskError(function, remote_traceback, cause, cause_cls_name, cause_message)
    return err.as_instanceof_cause()
